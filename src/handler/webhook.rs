//! The webhook forwarder: POSTs the event body exactly as Tencent sent it (receivers
//! written for VOD's plain HTTP callbacks work unchanged), signed per Standard Webhooks:
//! `webhook-id` (stable per event and handler), `webhook-timestamp` (this attempt),
//! `webhook-signature` (`v1,<base64 HMAC-SHA256(id.timestamp.body)>`, one per secret for
//! rotation), plus `X-Vod-Source` and `X-Vod-Sub-App-Id` (the source and its app, empty for
//! the default app) and `X-Vod-Event-Type` (percent-encoded where a header cannot carry the
//! type as it is, see [`super::encode_field`]). Redirects are not followed.
//!
//! Outcomes: 2xx done; 408, 429, 5xx, 3xx and network errors or timeouts retry (honouring
//! `Retry-After`); 410 and other 4xx are permanent (410 is also logged as a receiver asking
//! to be disabled).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::Deserialize;

use super::{default_concurrency, Delivery, Failure, Success};

/// Response bytes kept in the attempt record.
const EXCERPT_BYTES: usize = 1024;

/// `type = "webhook"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: String,
    /// A Standard Webhooks signing secret (`whsec_` + base64).
    #[serde(default)]
    pub secret: Option<SecretString>,
    /// More secrets (all sign each request, for rotation).
    #[serde(default)]
    pub secrets: Vec<SecretString>,
    /// A file with one secret per line.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Per-attempt timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra request headers whose values are read from files (for tokens).
    #[serde(default)]
    pub header_files: BTreeMap<String, PathBuf>,
    /// Attempts in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Pause after this many failed attempts in a row (0: never); see `probe_interval`.
    #[serde(default)]
    pub pause_after: u32,
    /// While paused by `pause_after`, attempt one delivery this often; a success resumes.
    #[serde(default = "super::default_probe_interval", with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Attempts started at most, per second or minute: `50/s`, `300/m` (none: no limit).
    #[serde(default)]
    pub rate: Option<String>,
    /// Only daemons with one of these `node.name`s run its deliveries (none: every daemon).
    #[serde(default)]
    pub hosts: Vec<String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

impl WebhookConfig {
    pub(super) fn validate(&self) -> Vec<(String, String)> {
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
        if self.concurrency == 0 {
            issues.push(("concurrency".into(), "must be at least 1".into()));
        }
        if self.timeout.is_zero() {
            issues.push(("timeout".into(), "must be above zero (15s is the default)".into()));
        }
        issues
    }

    fn signing_keys(&self) -> Result<Vec<SecretBox<Vec<u8>>>, String> {
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

    fn header_map(&self) -> Result<HeaderMap, String> {
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

/// A built webhook handler.
pub struct Webhook {
    name: String,
    url: reqwest::Url,
    client: reqwest::Client,
    keys: Vec<SecretBox<Vec<u8>>>,
}

impl Webhook {
    pub(super) fn new(name: &str, config: &WebhookConfig) -> anyhow::Result<Webhook> {
        let keys = config.signing_keys().map_err(|e| anyhow::anyhow!("handlers.{name}.secret: {e}"))?;
        let headers = config.header_map().map_err(|e| anyhow::anyhow!("handlers.{name}.headers: {e}"))?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers)
            .user_agent(concat!("vod-eventd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Webhook { name: name.to_string(), url: reqwest::Url::parse(&config.url)?, client, keys })
    }

    pub(super) async fn handle(&self, d: &Delivery) -> Result<Success, Failure> {
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.as_secs());
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &d.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("X-Vod-Event-Type", super::encode_field(&d.event_type).as_ref())
            .header("X-Vod-Source", d.source.as_str())
            .header("X-Vod-Sub-App-Id", d.sub_app_id.map(|id| id.to_string()).unwrap_or_default());
        if !self.keys.is_empty() {
            let signatures: Vec<String> = self
                .keys
                .iter()
                .map(|k| sign(k.expose_secret(), &d.webhook_id, timestamp, d.body.as_bytes()))
                .collect();
            request = request.header("webhook-signature", signatures.join(" "));
        }
        let mut response = request.body(d.body.clone()).send().await.map_err(|e| network_failure(e, "send"))?;
        let status = response.status();
        let retry_after =
            response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| parse_retry_after(v.to_str().ok()?));
        let excerpt = read_excerpt(&mut response).await;
        let code = Some(i64::from(status.as_u16()));
        if status.is_success() {
            return Ok(Success { status: code, excerpt: Some(excerpt) });
        }
        let retryable = matches!(status.as_u16(), 408 | 429 | 300..=399 | 500..=599);
        if status.as_u16() == 410 {
            tracing::warn!(handler = %self.name, url = %crate::redact::url(self.url.as_str()), "Webhook receiver answered 410 Gone: it asks not to be sent more; the delivery is dead. Check handlers.{}.url.", self.name);
        }
        Err(Failure { retryable, message: format!("HTTP {status}"), status: code, excerpt: Some(excerpt), retry_after })
    }
}

/// `v1,` + base64 HMAC-SHA256 over `id.timestamp.body`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

fn network_failure(e: reqwest::Error, during: &str) -> Failure {
    let kind = if e.is_timeout() { "timed out" } else { "failed" };
    Failure::transient(format!("{during} {kind}: {}", e.without_url()))
}

async fn read_excerpt(response: &mut reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    super::truncate(&String::from_utf8_lossy(&bytes), EXCERPT_BYTES)
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_reference_signature() {
        // The example from the Standard Webhooks specification.
        let key = base64::engine::general_purpose::STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn retry_after_in_seconds_or_http_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let later =
            (chrono::Utc::now() + chrono::Duration::seconds(90)).format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let d = parse_retry_after(&later).unwrap();
        assert!(d > Duration::from_secs(80) && d <= Duration::from_secs(90), "{d:?}");
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn secrets_must_be_whsec_base64() {
        let config = |s: &str| WebhookConfig {
            url: "http://127.0.0.1:1/x".into(),
            secret: Some(SecretString::from(s.to_string())),
            secrets: vec![],
            secret_file: None,
            timeout: default_timeout(),
            headers: BTreeMap::new(),
            header_files: BTreeMap::new(),
            concurrency: 1,
            pause_after: 0,
            probe_interval: std::time::Duration::from_secs(30),
            rate: None,
            hosts: vec![],
        };
        assert!(config("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").validate().is_empty());
        let issues = config("whsec_not base64!").validate();
        assert_eq!(issues.len(), 1);
        assert!(!issues[0].1.contains("not base64!"), "the secret itself is never echoed");
    }
}
