//! `type = "webhook"`: where to POST, the signing secrets, the request headers and the
//! attempt timeout, with their checks (the shared controls are in the parent module).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::Deserialize;

use super::{HandlerControls, HandlerType};
use crate::config::secret;

/// `type = "webhook"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: String,
    /// A Standard Webhooks signing secret (`whsec_` + base64).
    #[serde(default, deserialize_with = "secret::optional")]
    pub secret: Option<SecretString>,
    /// More secrets (all sign each request, for rotation).
    #[serde(default, deserialize_with = "secret::list")]
    pub secrets: Vec<SecretString>,
    /// A file with one secret per line.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Per-attempt timeout.
    #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra request headers (values may be tokens: never echoed, like secrets).
    #[serde(default, deserialize_with = "secret::text_map")]
    pub headers: BTreeMap<String, String>,
    /// Extra request headers whose values are read from files (for tokens).
    #[serde(default)]
    pub header_files: BTreeMap<String, PathBuf>,
    /// The controls every handler type shares (`concurrency`, `pause_after`, ...).
    #[serde(skip)]
    pub controls: HandlerControls,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(15)
}

impl WebhookConfig {
    fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => issues.push(("url".into(), format!("`{}` is not an http(s) URL", crate::redact::url(&self.url)))),
        }
        if let Err(e) = self.signing_keys() {
            issues.push(("secret".into(), e));
        }
        if let Err(e) = self.header_map() {
            issues.push(("headers".into(), e));
        }
        if self.timeout.is_zero() {
            issues.push(("timeout".into(), "must be above zero (15s is the default)".into()));
        }
        issues
    }

    /// The signing keys: `secret`, `secrets` and the lines of `secret_file`, decoded.
    pub(crate) fn signing_keys(&self) -> Result<Vec<SecretBox<Vec<u8>>>, String> {
        let mut secrets: Vec<String> =
            self.secret.iter().chain(&self.secrets).map(|s| s.expose_secret().to_string()).collect();
        if let Some(file) = &self.secret_file {
            let text = std::fs::read_to_string(file).map_err(|e| format!("secret_file {}: {e}", file.display()))?;
            secrets.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from));
        }
        secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let b64 = s.strip_prefix("whsec_").unwrap_or(s);
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map(|k| SecretBox::new(Box::new(k)))
                    .map_err(|_| format!("secret #{} is not `whsec_` followed by base64", i + 1))
            })
            .collect()
    }

    /// `headers` and `header_files` as request headers (marked sensitive).
    pub(crate) fn header_map(&self) -> Result<HeaderMap, String> {
        let mut map = HeaderMap::new();
        let mut add = |name: &str, value: &str| -> Result<(), String> {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("`{name}` is not a header name"))?;
            let mut value =
                HeaderValue::from_str(value).map_err(|_| format!("the value of {name} is not a valid header value"))?;
            value.set_sensitive(true);
            map.insert(name, value);
            Ok(())
        };
        for (name, value) in &self.headers {
            add(name, value)?;
        }
        for (name, file) in &self.header_files {
            let value =
                std::fs::read_to_string(file).map_err(|e| format!("header_files.{name} {}: {e}", file.display()))?;
            add(name, value.trim_end_matches(['\n', '\r']))?;
        }
        Ok(map)
    }
}

impl HandlerType for WebhookConfig {
    const TYPE: &'static str = "webhook";
    fn validate(&self) -> Vec<(String, String)> {
        WebhookConfig::validate(self)
    }
    fn controls_mut(&mut self) -> &mut HandlerControls {
        &mut self.controls
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::handler;
    use super::super::HandlerConfig;

    #[test]
    fn secrets_must_be_whsec_base64() {
        let config = |s: &str| {
            let HandlerConfig::Webhook(c) =
                handler(&format!("[h]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\nsecret = \"{s}\"\n"))
                    .unwrap()
            else {
                unreachable!()
            };
            c
        };
        assert!(config("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").validate().is_empty());
        let issues = config("whsec_not base64!").validate();
        assert_eq!(issues.len(), 1);
        assert!(!issues[0].1.contains("not base64!"), "the secret itself is never echoed");
    }
}
