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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::header::CONTENT_TYPE;
use secrecy::{ExposeSecret, SecretBox};

use super::{Delivery, Failure, Success, WebhookConfig};

/// Response bytes kept in the attempt record.
const EXCERPT_BYTES: usize = 1024;

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
}
