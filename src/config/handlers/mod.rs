//! `[handlers.NAME]`: the handler types' settings. Every type shares one part, the
//! [`HandlerControls`] (`concurrency`, `pause_after`, `probe_interval`, `rate`, `hosts`),
//! declared and checked once here; each type adds its own keys in its own struct and file
//! ([`WebhookConfig`], [`ShellConfig`], [`DrmConfig`], and the brokers' [`AmqpConfig`],
//! [`NatsConfig`], [`RedisConfig`]). Both are written flat in one TOML
//! table, so [`HandlerConfig`] reads the table itself: it splits the keys between the two
//! parts and refuses a key neither knows, naming every key the type takes (serde's
//! `flatten` would accept it silently, or refuse it without the list).
//!
//! A new handler type is a file with a struct implementing [`HandlerType`] (its `type`, its default
//! concurrency, its own checks) and a variant of [`HandlerConfig`], with its arm in each of
//! `HandlerConfig`'s matches (the controls, the attempt timeout, the checks, reading it).

mod broker;
mod drm;
mod shell;
mod webhook;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use figment::value::{Dict, Value};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

pub use self::broker::{as_is, read_password, AmqpConfig, NatsConfig, RedisConfig, Template, TEMPLATE_FIELDS};
pub use self::drm::DrmConfig;
pub use self::shell::ShellConfig;
pub use self::webhook::WebhookConfig;

/// See [`HandlerConfig::attempt_timeout`].
pub const DRM_ATTEMPT_BOUND: Duration = Duration::from_secs(300);

/// The part of `[handlers.NAME]` every handler type shares: how many attempts run at once,
/// the breaker, the rate limit and the hosts that run it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerControls {
    /// Attempts in flight at once (the default is the type's [`HandlerType::DEFAULT_CONCURRENCY`]).
    pub concurrency: usize,
    /// Pause after this many failed attempts in a row (0: never); see `probe_interval`.
    #[serde(default)]
    pub pause_after: u32,
    /// While paused by `pause_after`, attempt one delivery this often; a success resumes.
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Attempts started at most, per second or minute: `50/s`, `300/m` (none: no limit).
    #[serde(default)]
    pub rate: Option<String>,
    /// Only daemons with one of these `node.name`s run its deliveries (none: every daemon).
    #[serde(default)]
    pub hosts: Vec<String>,
}

impl Default for HandlerControls {
    fn default() -> Self {
        HandlerControls {
            concurrency: 4,
            pause_after: 0,
            probe_interval: default_probe_interval(),
            rate: None,
            hosts: Vec::new(),
        }
    }
}

/// The default `probe_interval`.
fn default_probe_interval() -> Duration {
    Duration::from_secs(30)
}

impl HandlerControls {
    /// Problems with these settings, as (key, message).
    fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        if self.concurrency == 0 {
            issues.push(("concurrency".into(), "must be at least 1".into()));
        }
        if self.rate.as_deref().is_some_and(|r| Rate::parse(r).is_none()) {
            issues.push(("rate".into(), "must look like 50/s or 300/m".into()));
        }
        if self.probe_interval < Duration::from_millis(10) {
            issues.push(("probe_interval".into(), "must be at least 10ms (30s is the default)".into()));
        }
        issues
    }

    /// Its `rate`, if set and well-formed.
    pub fn rate(&self) -> Option<Rate> {
        self.rate.as_deref().and_then(Rate::parse)
    }

    /// Whether the daemon named `node` runs it.
    pub fn runs_on(&self, node: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| h == node)
    }
}

/// A handler's `rate`: at most `count` attempts start per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Attempts.
    pub count: u32,
    /// Per this long (a second or a minute).
    pub per: Duration,
}

impl Rate {
    /// Parses `50/s` or `300/m` (at least 1, at most 1,000,000).
    pub fn parse(text: &str) -> Option<Rate> {
        let (count, unit) = text.trim().split_once('/')?;
        let count: u32 = count.trim().parse().ok().filter(|n| (1..=1_000_000).contains(n))?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            _ => return None,
        };
        Some(Rate { count, per })
    }

    /// The time between two attempts at the full rate.
    pub fn interval(self) -> Duration {
        self.per / self.count
    }
}

/// What a handler type's own config tells the shared part.
pub trait HandlerType: DeserializeOwned + Sized {
    /// Its `type = "..."`.
    const TYPE: &'static str;
    /// `concurrency` when the section leaves it out.
    const DEFAULT_CONCURRENCY: usize = 4;
    /// Problems with its own settings, as (key, message).
    fn validate(&self) -> Vec<(String, String)>;
    /// Its shared part.
    fn controls_mut(&mut self) -> &mut HandlerControls;
}

/// `[handlers.NAME]`.
#[derive(Debug, Clone)]
pub enum HandlerConfig {
    /// POST the event to an HTTP endpoint, signed per Standard Webhooks.
    Webhook(WebhookConfig),
    /// Run a local program with the event on stdin.
    Shell(ShellConfig),
    /// Turn the EDKs of task-flow events into data keys via DescribeDrmDataKey.
    Drm(DrmConfig),
    /// Publish to a RabbitMQ exchange (AMQP 0-9-1), done on the publisher confirm.
    Amqp(AmqpConfig),
    /// Publish to a NATS JetStream stream, done on the JetStream ack.
    Nats(NatsConfig),
    /// `XADD` to a Redis stream, done when it returns the entry id.
    Redis(RedisConfig),
}

impl HandlerConfig {
    /// Every `type` there is.
    const TYPES: &'static [&'static str] = &[
        WebhookConfig::TYPE,
        ShellConfig::TYPE,
        DrmConfig::TYPE,
        AmqpConfig::TYPE,
        NatsConfig::TYPE,
        RedisConfig::TYPE,
    ];

    /// The shared part: concurrency, breaker, rate and hosts.
    pub fn controls(&self) -> &HandlerControls {
        match self {
            HandlerConfig::Webhook(c) => &c.controls,
            HandlerConfig::Shell(c) => &c.controls,
            HandlerConfig::Drm(c) => &c.controls,
            HandlerConfig::Amqp(c) => &c.controls,
            HandlerConfig::Nats(c) => &c.controls,
            HandlerConfig::Redis(c) => &c.controls,
        }
    }

    /// How many attempts of this handler may run at once.
    pub fn concurrency(&self) -> usize {
        self.controls().concurrency
    }

    /// Failed attempts in a row that pause it (0: never), and how often it is then probed.
    pub fn breaker(&self) -> (u32, Duration) {
        (self.controls().pause_after, self.controls().probe_interval)
    }

    /// `hosts`: the `node.name`s of the daemons that run it (empty: every daemon).
    pub fn hosts(&self) -> &[String] {
        &self.controls().hosts
    }

    /// Whether the daemon named `node` runs it.
    pub fn runs_on(&self, node: &str) -> bool {
        self.controls().runs_on(node)
    }

    /// Its `rate`, if set and well-formed.
    pub fn rate(&self) -> Option<Rate> {
        self.controls().rate()
    }

    /// The longest one attempt can take. DRM attempts have no timeout of their own: each
    /// DescribeDrmDataKey call times out after `vod.request_timeout`, and an event needs
    /// a few, paced by the rate limit; [`DRM_ATTEMPT_BOUND`] is far above that.
    pub fn attempt_timeout(&self) -> Duration {
        match self {
            HandlerConfig::Webhook(c) => c.timeout,
            HandlerConfig::Shell(c) => c.timeout,
            HandlerConfig::Drm(_) => DRM_ATTEMPT_BOUND,
            HandlerConfig::Amqp(c) => c.timeout,
            HandlerConfig::Nats(c) => c.timeout,
            HandlerConfig::Redis(c) => c.timeout,
        }
    }

    /// Problems with this handler's settings, as (key suffix, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = match self {
            HandlerConfig::Webhook(c) => c.validate(),
            HandlerConfig::Shell(c) => c.validate(),
            HandlerConfig::Drm(c) => c.validate(),
            HandlerConfig::Amqp(c) => c.validate(),
            HandlerConfig::Nats(c) => c.validate(),
            HandlerConfig::Redis(c) => c.validate(),
        };
        issues.extend(self.controls().validate());
        issues
    }
}

impl<'de> Deserialize<'de> for HandlerConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut table = Dict::deserialize(d)?;
        let kind = match table.remove("type") {
            None => return Err(D::Error::missing_field("type")),
            Some(value) => {
                value.into_string().ok_or_else(|| D::Error::custom("`type` must be a string such as \"webhook\""))?
            }
        };
        Ok(match kind.as_str() {
            WebhookConfig::TYPE => HandlerConfig::Webhook(split(table)?),
            ShellConfig::TYPE => HandlerConfig::Shell(split(table)?),
            DrmConfig::TYPE => HandlerConfig::Drm(split(table)?),
            AmqpConfig::TYPE => HandlerConfig::Amqp(split(table)?),
            NatsConfig::TYPE => HandlerConfig::Nats(split(table)?),
            RedisConfig::TYPE => HandlerConfig::Redis(split(table)?),
            other => return Err(D::Error::unknown_variant(other, Self::TYPES)),
        })
    }
}

/// A handler section's keys split between `T`'s own struct and the shared controls; a key
/// neither takes is refused, naming every key `T` takes.
fn split<T: HandlerType, E: serde::de::Error>(table: Dict) -> Result<T, E> {
    let own = keys_of::<T>();
    let shared = keys_of::<HandlerControls>();
    let (mine, mut controls): (Dict, Dict) = table.into_iter().partition(|(key, _)| !shared.contains(&key.as_str()));
    if let Some(unknown) = mine.keys().find(|key| !own.contains(&key.as_str())) {
        return Err(E::unknown_field(unknown, known_keys::<T>()));
    }
    controls.entry("concurrency".into()).or_insert_with(|| Value::from(T::DEFAULT_CONCURRENCY as u64));
    let mut config = T::deserialize(&Value::from(mine)).map_err(relay)?;
    *config.controls_mut() = HandlerControls::deserialize(&Value::from(controls)).map_err(relay)?;
    Ok(config)
}

/// Every key of a `T` section (its own, then the shared ones), made once per type.
fn known_keys<T: HandlerType>() -> &'static [&'static str] {
    static KNOWN: OnceLock<std::sync::Mutex<BTreeMap<&'static str, &'static [&'static str]>>> = OnceLock::new();
    let mut known = KNOWN.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    known.entry(T::TYPE).or_insert_with(|| {
        let all: Vec<&'static str> = keys_of::<T>().iter().chain(keys_of::<HandlerControls>()).copied().collect();
        Vec::leak(all)
    })
}

/// The keys a derived struct takes: the field names serde hands its deserializer.
fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Self::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// A figment error met inside a handler section, as the section's own error (the kind
/// kept, so that a missing key is still named as one).
fn relay<E: serde::de::Error>(e: figment::Error) -> E {
    use figment::error::Kind;
    match e.kind {
        Kind::MissingField(std::borrow::Cow::Borrowed(field)) => E::missing_field(field),
        Kind::UnknownField(field, expected) => E::unknown_field(&field, expected),
        Kind::Message(message) => E::custom(message),
        other => E::custom(other),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use figment::providers::{Format, Toml};
    use figment::Figment;

    use super::*;

    pub(super) fn handler(toml: &str) -> Result<HandlerConfig, Box<figment::Error>> {
        Figment::new().merge(Toml::string(toml)).extract_inner("h").map_err(Box::new)
    }

    #[test]
    fn every_type_takes_the_shared_controls_with_its_own_defaults() {
        let sections =
            [("webhook", "url = \"http://127.0.0.1:1/\"", 4), ("shell", "command = [\"true\"]", 4), ("drm", "", 2)];
        for (kind, own, concurrency) in sections {
            let bare = handler(&format!("[h]\ntype = \"{kind}\"\n{own}\n")).unwrap();
            let c = bare.controls();
            assert_eq!(
                (c.concurrency, c.pause_after, c.probe_interval, c.rate.as_deref(), c.hosts.len()),
                (concurrency, 0, Duration::from_secs(30), None, 0),
                "{kind}: the defaults"
            );
            let set = handler(&format!(
                "[h]\ntype = \"{kind}\"\n{own}\nconcurrency = 7\npause_after = 3\nprobe_interval = \"2s\"\nrate = \"5/s\"\nhosts = [\"a\"]\n"
            ))
            .unwrap();
            assert_eq!(set.concurrency(), 7, "{kind}");
            assert_eq!(set.breaker(), (3, Duration::from_secs(2)), "{kind}");
            assert_eq!(set.rate(), Some(Rate { count: 5, per: Duration::from_secs(1) }), "{kind}");
            assert!(set.runs_on("a") && !set.runs_on("b"), "{kind}");
            let zero = handler(&format!("[h]\ntype = \"{kind}\"\n{own}\nconcurrency = 0\n")).unwrap();
            assert!(zero.validate().iter().any(|(key, _)| key == "concurrency"), "{kind}: concurrency 0 is refused");
        }
    }

    #[test]
    fn a_key_no_part_knows_is_refused_naming_the_type_s_keys() {
        let err = handler("[h]\ntype = \"shell\"\ncommand = [\"true\"]\npause_afer = 3\n").unwrap_err();
        let figment::error::Kind::UnknownField(field, expected) = &err.kind else { panic!("{err}") };
        assert_eq!(field, "pause_afer");
        for key in ["command", "timeout", "working_dir", "concurrency", "pause_after", "rate", "hosts"] {
            assert!(expected.contains(&key), "{key} not in {expected:?}");
        }
        assert!(!expected.contains(&"url"), "another type's key is not offered: {expected:?}");
        let err = handler("[h]\ntype = \"drm\"\ntimeout = \"5s\"\n").unwrap_err();
        assert!(matches!(&err.kind, figment::error::Kind::UnknownField(f, _) if f == "timeout"), "{err}");
        let err = handler("[h]\ntype = \"kafka\"\n").unwrap_err();
        assert!(err.to_string().contains("webhook"), "{err}");
        let err = handler("[h]\ncommand = [\"true\"]\n").unwrap_err();
        assert!(matches!(&err.kind, figment::error::Kind::MissingField(f) if f == "type"), "{err}");
        let err = handler("[h]\ntype = \"shell\"\n").unwrap_err();
        assert!(matches!(&err.kind, figment::error::Kind::MissingField(f) if f == "command"), "{err}");
    }
}
