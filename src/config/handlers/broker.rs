//! `type = "amqp"`, `type = "nats"` and `type = "redis"`: where each broker handler publishes
//! (a URL, an exchange, a stream), how its names are made from the event ([`Template`]), where
//! its password comes from, and the attempt timeout, with their checks. Passwords stay out of
//! every message: URLs are shown through [`crate::redact::url`], files only by their path.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::{HandlerControls, HandlerType};
use crate::config::secret;

/// The fields a name template may use.
pub const TEMPLATE_FIELDS: &[&str] = &["event_type", "source", "file_id", "sub_app_id"];

/// A name made from the event: text with `{event_type}`, `{source}`, `{file_id}` and
/// `{sub_app_id}` (empty for the default app / an event without a file id) in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(usize),
}

impl Template {
    /// Parses `text`; the error names the unknown field or the unclosed brace.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or_else(|| format!("`{text}` has a `{{` without its `}}`"))?;
            let name = &rest[open + 1..open + close];
            let index = TEMPLATE_FIELDS.iter().position(|f| *f == name).ok_or_else(|| {
                format!("`{{{name}}}` is not a field; a template may use {{{}}}", TEMPLATE_FIELDS.join("}, {"))
            })?;
            parts.push(Part::Field(index));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The name for an event: each field's value (in [`TEMPLATE_FIELDS`] order) passed
    /// through `fix` (which a broker uses to keep its name rules).
    pub fn render(&self, values: [&str; 4], fix: fn(&str) -> std::borrow::Cow<'_, str>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(i) => out.push_str(&fix(values[*i])),
            }
        }
        out
    }
}

/// A template value as it is (for [`Template::render`]).
pub fn as_is(value: &str) -> std::borrow::Cow<'_, str> {
    std::borrow::Cow::Borrowed(value)
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

fn yes() -> bool {
    true
}

/// Checks shared by the three: the URL's scheme, the timeout, the templates.
fn common_issues(url: &str, schemes: &[&str], timeout: Duration, templates: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut issues = Vec::new();
    match reqwest::Url::parse(url) {
        Ok(u) if schemes.contains(&u.scheme()) && u.has_host() => {}
        _ => issues.push(("url".into(), format!("`{}` is not a {} URL", crate::redact::url(url), schemes.join("/")))),
    }
    if timeout.is_zero() {
        issues.push(("timeout".into(), "must be above zero (15s is the default)".into()));
    }
    for (key, text) in templates {
        if let Err(e) = Template::parse(text) {
            issues.push(((*key).into(), e));
        }
    }
    issues
}

/// `type = "amqp"`: publish to a RabbitMQ (AMQP 0-9-1) exchange; done on the publisher confirm.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:5672/vhost` or `amqps://...`.
    pub url: String,
    /// The password, when the URL has none (a file such as a systemd credential).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The exchange (empty: the default exchange, where the routing key names the queue).
    #[serde(default)]
    pub exchange: String,
    /// The routing key, a [`Template`].
    pub routing_key: String,
    /// Persistent messages (delivery mode 2): kept by a durable queue over a broker restart.
    #[serde(default = "yes")]
    pub persistent: bool,
    /// Per-attempt timeout (connect, publish and confirm).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The controls every handler type shares.
    #[serde(skip)]
    pub controls: HandlerControls,
}

impl HandlerType for AmqpConfig {
    const TYPE: &'static str = "amqp";
    fn validate(&self) -> Vec<(String, String)> {
        common_issues(&self.url, &["amqp", "amqps"], self.timeout, &[("routing_key", &self.routing_key)])
    }
    fn controls_mut(&mut self) -> &mut HandlerControls {
        &mut self.controls
    }
}

/// `type = "nats"`: publish to a NATS JetStream stream; done on the JetStream ack.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://host:4222` (or `nats://user:password@host:4222`, `tls://...`).
    pub url: String,
    /// A NATS credentials file (`.creds`: user JWT and NKey seed).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// A password file, for a user in the URL without a password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The stream the subjects belong to: it must exist (checked on connect).
    pub stream: String,
    /// The subject, a [`Template`] (a value's `.`, `*`, `>` and blanks become `_`).
    pub subject: String,
    /// Per-attempt timeout (connect, publish and ack).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The controls every handler type shares.
    #[serde(skip)]
    pub controls: HandlerControls,
}

impl HandlerType for NatsConfig {
    const TYPE: &'static str = "nats";
    fn validate(&self) -> Vec<(String, String)> {
        let mut issues = common_issues(&self.url, &["nats", "tls"], self.timeout, &[("subject", &self.subject)]);
        if self.stream.is_empty() || self.stream.contains(['.', '*', '>', ' ']) {
            issues.push(("stream".into(), "must be a stream name (no `.`, `*`, `>` or blanks)".into()));
        }
        issues
    }
    fn controls_mut(&mut self) -> &mut HandlerControls {
        &mut self.controls
    }
}

/// `type = "redis"`: `XADD` to a Redis stream; done when `XADD` returns the entry id.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:6379[/db]` or `rediss://...`.
    pub url: String,
    /// The password, when the URL has none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The stream key, a [`Template`].
    pub stream: String,
    /// Trim the stream to about this many entries (`MAXLEN ~`); none: never trimmed.
    #[serde(default)]
    pub maxlen: Option<u64>,
    /// Per-attempt timeout (connect and `XADD`).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The controls every handler type shares.
    #[serde(skip)]
    pub controls: HandlerControls,
}

impl HandlerType for RedisConfig {
    const TYPE: &'static str = "redis";
    fn validate(&self) -> Vec<(String, String)> {
        let mut issues = common_issues(&self.url, &["redis", "rediss"], self.timeout, &[("stream", &self.stream)]);
        if self.maxlen == Some(0) {
            issues.push(("maxlen".into(), "must be at least 1 (leave it out to never trim)".into()));
        }
        issues
    }
    fn controls_mut(&mut self) -> &mut HandlerControls {
        &mut self.controls
    }
}

/// Debug output shows the URL as [`crate::redact::url`] does (never its password).
macro_rules! debug_without_password {
    ($($ty:ident),*) => {$(
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("url", &crate::redact::url(&self.url))
                    .field("timeout", &self.timeout)
                    .field("controls", &self.controls)
                    .finish_non_exhaustive()
            }
        }
    )*};
}

debug_without_password!(AmqpConfig, NatsConfig, RedisConfig);

/// The password from `password_file`, if set, with the key named on error.
pub fn read_password(name: &str, file: Option<&PathBuf>) -> Result<Option<SecretString>, String> {
    let Some(file) = file else { return Ok(None) };
    secret::read_secret(file).map(Some).map_err(|e| format!("handlers.{name}.password_file {}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::super::tests::handler;
    use super::*;

    #[test]
    fn templates_take_the_event_fields_and_refuse_others() {
        let t = Template::parse("vod.{source}.{event_type}.{file_id}").unwrap();
        let name = t.render(["NewFileUpload", "default", "", ""], |v| if v.is_empty() { "-".into() } else { v.into() });
        assert_eq!(name, "vod.default.NewFileUpload.-");
        assert_eq!(Template::parse("plain").unwrap().render(["a", "b", "c", "d"], as_is), "plain");
        assert!(Template::parse("x.{fileId}").unwrap_err().contains("{file_id}"));
        assert!(Template::parse("x.{file_id").is_err());
    }

    #[test]
    fn broker_sections_are_checked_without_showing_passwords() {
        let amqp =
            handler("[h]\ntype = \"amqp\"\nurl = \"http://u:pw-hidden@h/\"\nrouting_key = \"{nope}\"\n").unwrap();
        let issues = amqp.validate();
        let keys: Vec<&str> = issues.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["url", "routing_key"]);
        assert!(!format!("{issues:?}").contains("pw-hidden"));
        assert!(!format!("{amqp:?}").contains("pw-hidden"), "nor in the config's Debug");
        let nats = handler(
            "[h]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nstream = \"a.b\"\nsubject = \"v.{event_type}\"\n",
        )
        .unwrap();
        assert_eq!(nats.validate()[0].0, "stream");
        let redis =
            handler("[h]\ntype = \"redis\"\nurl = \"redis://127.0.0.1/\"\nstream = \"vod\"\nmaxlen = 0\n").unwrap();
        assert_eq!(redis.validate()[0].0, "maxlen");
    }
}
