//! Handlers: what happens to a stored event after it is confirmed. The set is closed
//! (webhook, shell, drm, and the brokers amqp, nats, redis), selected by `type` in `[handlers.NAME]`, and dispatched
//! statically through [`AnyHandler`]. A handler performs one attempt and classifies its
//! outcome; retries, schedules and the dead state belong to the dispatcher.
//!
//! The handlers' settings ([`HandlerConfig`], the shared [`HandlerControls`], each type's
//! own struct) are configuration, kept with the other sections in `crate::config::handlers`
//! and re-exported here.

pub mod broker;
mod drm;
mod egress;
mod hls;
pub mod shell;
pub mod supervise;
mod webhook;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use drm::{drm_info, key_file_name, DrmInfo, HlsError, Playlists};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
pub use webhook::sign as sign_webhook;

use crate::api::Clients;
pub use crate::config::handlers::{
    DrmConfig, HandlerConfig, HandlerControls, HandlerType, Rate, ShellConfig, WebhookConfig, DRM_ATTEMPT_BOUND,
};
use crate::store::Store;

/// What a handler gets for one attempt.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The delivery row id.
    pub delivery_id: i64,
    /// The event row id.
    pub event_id: i64,
    /// The stable id (`webhook-id`): the same on every retry and replay.
    pub webhook_id: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// When the delivery was created (or last revived by `deliveries retry`), Unix ms.
    pub created_at: i64,
    /// `eventType`.
    pub event_type: String,
    /// File id, if any.
    pub file_id: Option<String>,
    /// Task id, if any.
    pub task_id: Option<String>,
    /// The event body to hand on (the `eventContent` as received).
    pub body: String,
    /// The source the event was pulled from.
    pub source: String,
    /// The app (`SubAppId`) it was pulled from; `None`: the default app.
    pub sub_app_id: Option<u64>,
    /// The claim's fencing token, handed back with the outcome (PostgreSQL; 0 on SQLite).
    pub claim_token: i64,
}

/// A successful attempt.
#[derive(Debug, Clone, Default)]
pub struct Success {
    /// HTTP status or exit code.
    pub status: Option<i64>,
    /// The start of the response or output.
    pub excerpt: Option<String>,
}

/// A failed attempt.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Retry later (true) or give up now (false).
    pub retryable: bool,
    /// What went wrong, for the attempt record and logs (never secrets or keys).
    pub message: String,
    /// HTTP status or exit code.
    pub status: Option<i64>,
    /// The start of the response or output.
    pub excerpt: Option<String>,
    /// The receiver asked to wait this long (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Failure {
        Failure { retryable: true, message: message.into(), status: None, excerpt: None, retry_after: None }
    }

    /// A failure retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Failure {
        Failure { retryable: false, ..Failure::transient(message) }
    }
}

/// A built handler.
pub enum AnyHandler {
    /// See [`WebhookConfig`].
    Webhook(webhook::Webhook),
    /// See [`ShellConfig`].
    Shell(shell::Shell),
    /// See [`DrmConfig`].
    Drm(drm::Drm),
    /// See [`AmqpConfig`](crate::config::handlers::AmqpConfig).
    Amqp(broker::amqp::Amqp),
    /// See [`NatsConfig`](crate::config::handlers::NatsConfig).
    Nats(broker::nats::Nats),
    /// See [`RedisConfig`](crate::config::handlers::RedisConfig).
    Redis(broker::redis::Redis),
}

impl AnyHandler {
    /// Builds a handler from its config.
    pub fn build(
        name: &str,
        config: &HandlerConfig,
        clients: Arc<Clients>,
        store: Store,
    ) -> anyhow::Result<AnyHandler> {
        Ok(match config {
            HandlerConfig::Webhook(c) => AnyHandler::Webhook(webhook::Webhook::new(name, c)?),
            HandlerConfig::Shell(c) => AnyHandler::Shell(shell::Shell::new(c)),
            HandlerConfig::Drm(c) => AnyHandler::Drm(drm::Drm::new(c, clients, store)?),
            HandlerConfig::Amqp(c) => AnyHandler::Amqp(broker::amqp::Amqp::new(name, c)?),
            HandlerConfig::Nats(c) => AnyHandler::Nats(broker::nats::Nats::new(name, c)?),
            HandlerConfig::Redis(c) => AnyHandler::Redis(broker::redis::Redis::new(name, c)?),
        })
    }

    /// The handler kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyHandler::Webhook(_) => "webhook",
            AnyHandler::Shell(_) => "shell",
            AnyHandler::Drm(_) => "drm",
            AnyHandler::Amqp(_) => "amqp",
            AnyHandler::Nats(_) => "nats",
            AnyHandler::Redis(_) => "redis",
        }
    }

    /// Performs one attempt.
    pub async fn handle(&self, delivery: &Delivery) -> Result<Success, Failure> {
        match self {
            AnyHandler::Webhook(h) => h.handle(delivery).await,
            AnyHandler::Shell(h) => h.handle(delivery).await,
            AnyHandler::Drm(h) => h.handle(delivery).await,
            AnyHandler::Amqp(h) => h.handle(delivery).await,
            AnyHandler::Nats(h) => h.handle(delivery).await,
            AnyHandler::Redis(h) => h.handle(delivery).await,
        }
    }

    /// Connects to a broker handler's target and checks what it needs there (the exchange,
    /// the stream, the credentials), for `config check --online` and the start; `None` for
    /// the types with nothing to check.
    pub async fn probe(&self) -> Option<Result<(), Failure>> {
        match self {
            AnyHandler::Amqp(h) => Some(h.probe().await),
            AnyHandler::Nats(h) => Some(h.probe().await),
            AnyHandler::Redis(h) => Some(h.probe().await),
            AnyHandler::Webhook(_) | AnyHandler::Shell(_) | AnyHandler::Drm(_) => None,
        }
    }
}

/// Builds every configured handler.
pub fn build_all(
    configs: &BTreeMap<String, HandlerConfig>,
    clients: Arc<Clients>,
    store: Store,
) -> anyhow::Result<BTreeMap<String, Arc<AnyHandler>>> {
    configs
        .iter()
        .map(|(name, c)| Ok((name.clone(), Arc::new(AnyHandler::build(name, c, clients.clone(), store.clone())?))))
        .collect()
}

/// What is percent-encoded when an event's type or ids go into a header
/// (`X-Vod-Event-Type`) or a hook's environment (`VOD_EVENT_TYPE`, `VOD_FILE_ID`,
/// `VOD_TASK_ID`): control characters (NUL, line breaks, ...) and `%` itself, plus every
/// non-ASCII character (as its UTF-8 bytes). Neither a header nor the environment could
/// carry every such value as it is; the body always carries the event exactly.
const FIELD_ENCODED: &AsciiSet = &CONTROLS.add(b'%');

/// `value` as a header or environment value: unchanged unless it holds a control
/// character, `%` or non-ASCII, which become `%XX` (so `New\nType` is `New%0AType`).
pub fn encode_field(value: &str) -> Cow<'_, str> {
    utf8_percent_encode(value, FIELD_ENCODED).into()
}

/// At most `max` bytes of `text` (on a character boundary), marked when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} bytes cut]", &text[..end], text.len() - end)
}
