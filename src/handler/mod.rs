//! Handlers: what happens to a stored event after it is confirmed. The set is closed
//! (webhook, shell, drm), selected by `type` in `[handlers.NAME]`, and dispatched
//! statically through [`AnyHandler`]. A handler performs one attempt and classifies its
//! outcome; retries, schedules and the dead state belong to the dispatcher.

mod drm;
mod egress;
mod hls;
mod shell;
pub mod supervise;
mod webhook;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use drm::{drm_info, key_file_name, DrmConfig, DrmInfo};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde::Deserialize;
pub use shell::ShellConfig;
pub use webhook::{sign as sign_webhook, WebhookConfig};

use crate::api::Clients;
use crate::store::Store;

/// See [`HandlerConfig::attempt_timeout`].
pub const DRM_ATTEMPT_BOUND: Duration = Duration::from_secs(300);

/// `[handlers.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum HandlerConfig {
    /// POST the event to an HTTP endpoint, signed per Standard Webhooks.
    Webhook(WebhookConfig),
    /// Run a local program with the event on stdin.
    Shell(ShellConfig),
    /// Turn the EDKs of task-flow events into data keys via DescribeDrmDataKey.
    Drm(DrmConfig),
}

impl HandlerConfig {
    /// How many attempts of this handler may run at once.
    pub fn concurrency(&self) -> usize {
        match self {
            HandlerConfig::Webhook(c) => c.concurrency,
            HandlerConfig::Shell(c) => c.concurrency,
            HandlerConfig::Drm(c) => c.concurrency,
        }
    }

    /// Failed attempts in a row that pause it (0: never), and how often it is then probed.
    pub fn breaker(&self) -> (u32, Duration) {
        match self {
            HandlerConfig::Webhook(c) => (c.pause_after, c.probe_interval),
            HandlerConfig::Shell(c) => (c.pause_after, c.probe_interval),
            HandlerConfig::Drm(c) => (c.pause_after, c.probe_interval),
        }
    }

    /// `hosts`: the `node.name`s of the daemons that run it (empty: every daemon).
    pub fn hosts(&self) -> &[String] {
        match self {
            HandlerConfig::Webhook(c) => &c.hosts,
            HandlerConfig::Shell(c) => &c.hosts,
            HandlerConfig::Drm(c) => &c.hosts,
        }
    }

    /// Whether the daemon named `node` runs it.
    pub fn runs_on(&self, node: &str) -> bool {
        self.hosts().is_empty() || self.hosts().iter().any(|h| h == node)
    }

    /// Its `rate`, if set and well-formed.
    pub fn rate(&self) -> Option<Rate> {
        let text = match self {
            HandlerConfig::Webhook(c) => &c.rate,
            HandlerConfig::Shell(c) => &c.rate,
            HandlerConfig::Drm(c) => &c.rate,
        };
        text.as_deref().and_then(Rate::parse)
    }

    /// The longest one attempt can take. DRM attempts have no timeout of their own: each
    /// DescribeDrmDataKey call times out after `vod.request_timeout`, and an event needs
    /// a few, paced by the rate limit; [`DRM_ATTEMPT_BOUND`] is far above that.
    pub fn attempt_timeout(&self) -> Duration {
        match self {
            HandlerConfig::Webhook(c) => c.timeout,
            HandlerConfig::Shell(c) => c.timeout,
            HandlerConfig::Drm(_) => DRM_ATTEMPT_BOUND,
        }
    }

    /// Problems with this handler's settings, as (key suffix, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = match self {
            HandlerConfig::Webhook(c) => c.validate(),
            HandlerConfig::Shell(c) => c.validate(),
            HandlerConfig::Drm(c) => c.validate(),
        };
        let rate = match self {
            HandlerConfig::Webhook(c) => &c.rate,
            HandlerConfig::Shell(c) => &c.rate,
            HandlerConfig::Drm(c) => &c.rate,
        };
        let (_, probe_interval) = self.breaker();
        if rate.as_deref().is_some_and(|r| Rate::parse(r).is_none()) {
            issues.push(("rate".into(), "must look like 50/s or 300/m".into()));
        }
        if probe_interval < Duration::from_millis(10) {
            issues.push(("probe_interval".into(), "must be at least 10ms (30s is the default)".into()));
        }
        issues
    }
}

/// The default `probe_interval`.
fn default_probe_interval() -> Duration {
    Duration::from_secs(30)
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
        })
    }

    /// The handler kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyHandler::Webhook(_) => "webhook",
            AnyHandler::Shell(_) => "shell",
            AnyHandler::Drm(_) => "drm",
        }
    }

    /// Performs one attempt.
    pub async fn handle(&self, delivery: &Delivery) -> Result<Success, Failure> {
        match self {
            AnyHandler::Webhook(h) => h.handle(delivery).await,
            AnyHandler::Shell(h) => h.handle(delivery).await,
            AnyHandler::Drm(h) => h.handle(delivery).await,
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

fn default_concurrency() -> usize {
    4
}
