//! `type = "nats"`: publishes the event body to a JetStream subject with the headers
//! `Nats-Msg-Id` (the delivery's `webhook-id`), `X-Vod-Event-Type`, `X-Vod-Source` and
//! `X-Vod-Sub-App-Id`. The attempt is done on the stream's publish ack; a repeat inside the
//! stream's duplicate window (2 minutes unless the stream says otherwise) is acked as a
//! duplicate and dropped by JetStream itself.
//!
//! The connection is made on first use (and again after a failed connect, spaced by
//! [`super::Link`]); once made, the client reconnects by itself. On connect the `stream` is
//! looked up, so a missing stream is a clear error naming the key. Everything is transient
//! except a body over the stream's maximum message size, which retrying cannot fix.

use std::borrow::Cow;
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use secrecy::ExposeSecret;

use super::{bounded, field_refs, fields, Link, Scrub};
use crate::config::handlers::{read_password, NatsConfig, Template};
use crate::handler::{Delivery, Failure, Success};

/// A built NATS JetStream handler.
pub struct Nats {
    name: String,
    /// The URL without its userinfo (the user and password go in `options`).
    url: String,
    user: Option<(String, secrecy::SecretString)>,
    credentials_file: Option<std::path::PathBuf>,
    stream: String,
    subject: Template,
    timeout: Duration,
    scrub: Scrub,
    link: Link<jetstream::Context>,
}

impl Nats {
    /// Builds it from its section (no I/O: the connection is made on first use).
    pub(in crate::handler) fn new(name: &str, config: &NatsConfig) -> anyhow::Result<Nats> {
        let password = read_password(name, config.password_file.as_ref()).map_err(anyhow::Error::msg)?;
        let scrub = Scrub::new(&config.url, password.as_ref());
        let mut url = reqwest::Url::parse(&config.url).map_err(|e| anyhow::anyhow!("handlers.{name}.url: {e}"))?;
        let user = (!url.username().is_empty()).then(|| {
            let from_url =
                url.password().map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned());
            let password = from_url.map(secrecy::SecretString::from).or(password).unwrap_or_default();
            let user = percent_encoding::percent_decode_str(url.username()).decode_utf8_lossy().into_owned();
            (user, password)
        });
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let subject = Template::parse(&config.subject).map_err(|e| anyhow::anyhow!("handlers.{name}.subject: {e}"))?;
        Ok(Nats {
            name: name.to_string(),
            url: url.to_string(),
            user,
            credentials_file: config.credentials_file.clone(),
            stream: config.stream.clone(),
            subject,
            timeout: config.timeout,
            scrub,
            link: Link::new(),
        })
    }

    /// Connects (if not connected) and finds the stream, so that `config check --online`
    /// and the start find a wrong URL, credentials or stream.
    pub async fn probe(&self) -> Result<(), Failure> {
        bounded(self.timeout, "connecting", self.context()).await.map(drop)
    }

    async fn context(&self) -> Result<jetstream::Context, Failure> {
        self.link.get(|_| true, || self.connect()).await
    }

    async fn connect(&self) -> Result<jetstream::Context, Failure> {
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(self.timeout)
            .name(concat!("vod-eventd/", env!("CARGO_PKG_VERSION")));
        if let Some(file) = &self.credentials_file {
            options = options.credentials_file(file).await.map_err(|e| {
                Failure::transient(format!("handlers.{}.credentials_file {}: {e}", self.name, file.display()))
            })?;
        }
        if let Some((user, password)) = &self.user {
            options = options.user_and_password(user.clone(), password.expose_secret().to_string());
        }
        let client = options.connect(self.url.as_str()).await.map_err(|e| {
            let auth = matches!(e.kind(), async_nats::ConnectErrorKind::AuthorizationViolation);
            let hint = if auth {
                format!(
                    " (check handlers.{0}.url, handlers.{0}.password_file or handlers.{0}.credentials_file)",
                    self.name
                )
            } else {
                String::new()
            };
            Failure::transient(format!(
                "connecting to {} failed: {}{hint}",
                crate::redact::url(&self.url),
                self.scrub.text(e)
            ))
        })?;
        let mut context = jetstream::new(client);
        context.set_timeout(self.timeout);
        context.get_stream(&self.stream).await.map_err(|e| {
            Failure::transient(format!(
                "handlers.{}.stream: the stream `{}` cannot be used: {}",
                self.name,
                self.stream,
                self.scrub.text(e)
            ))
        })?;
        Ok(context)
    }

    /// One attempt: publish and wait for the ack.
    pub(in crate::handler) async fn handle(&self, d: &Delivery) -> Result<Success, Failure> {
        bounded(self.timeout, "publish", async {
            let context = self.context().await?;
            let values = fields(d);
            let subject = self.subject.render(field_refs(&values), subject_token);
            let publish = jetstream::message::PublishMessage::build()
                .payload(d.body.clone().into())
                .message_id(&d.webhook_id)
                .header("X-Vod-Event-Type", crate::handler::encode_field(&d.event_type).as_ref())
                .header("X-Vod-Source", d.source.as_str())
                .header("X-Vod-Sub-App-Id", values[3].as_str());
            let armed = self.link.armed();
            let sent = context.send_publish(subject.clone(), publish).await;
            let acked = match sent {
                Ok(pending) => pending.await,
                Err(e) => Err(e),
            };
            armed.disarm();
            let ack = acked.map_err(|e| self.failure(e))?;
            let duplicate = if ack.duplicate { " (duplicate, dropped by the stream)" } else { "" };
            Ok(Success {
                status: None,
                excerpt: Some(format!("{subject}: {} #{}{duplicate}", ack.stream, ack.sequence)),
            })
        })
        .await
    }

    fn failure(&self, e: PublishError) -> Failure {
        let code = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .map(jetstream::Error::error_code);
        let message = match e.kind() {
            PublishErrorKind::StreamNotFound => {
                format!("publish failed: no stream takes this subject (check handlers.{}.subject against the stream's subjects)", self.name)
            }
            _ => format!("publish failed: {}", self.scrub.text(&e)),
        };
        if code == Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM) {
            Failure::permanent(message)
        } else {
            Failure::transient(message)
        }
    }
}

/// A template value as one subject token: `.`, `*`, `>` and blanks become `_`, and an empty
/// value is `_` (a subject has no empty token).
fn subject_token(value: &str) -> Cow<'_, str> {
    if value.is_empty() {
        return Cow::Borrowed("_");
    }
    if value.contains(|c: char| matches!(c, '.' | '*' | '>') || c.is_whitespace()) {
        return Cow::Owned(
            value.chars().map(|c| if matches!(c, '.' | '*' | '>') || c.is_whitespace() { '_' } else { c }).collect(),
        );
    }
    Cow::Borrowed(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_single_subject_tokens() {
        assert_eq!(subject_token(""), "_");
        assert_eq!(subject_token("a.b *>\tc"), "a_b____c");
        assert_eq!(subject_token("NewFileUpload"), "NewFileUpload");
    }
}
