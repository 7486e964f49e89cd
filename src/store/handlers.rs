//! Per-handler overview for `handlers list`: deliveries pending, in flight and dead, the
//! last success and the last error. Every query is bounded whatever the history: counts
//! read the partial index of each state not done, the set of handlers is found by index
//! seeks, and the last success and error come from the newest [`RECENT_ATTEMPTS`]
//! attempts, else from one index seek per handler.
//!
//! Pausing: a row in `handler_state` while a handler is paused, by the operator
//! (`handlers pause`) or by its breaker. Resuming deletes it and moves the `created_at` of
//! the handler's deliveries not yet done forward by the time they spent paused, so that
//! `dispatch.max_age` counts only time while not paused.

use async_trait::async_trait;
use serde::Serialize;

use super::StoreError;

/// How many of the newest attempts are read for the last success and error.
pub const RECENT_ATTEMPTS: i64 = 20_000;

/// One handler's line in `handlers list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HandlerOverview {
    /// The handler name.
    pub handler: String,
    /// `active` or `paused`.
    pub state: String,
    /// Who paused it: `operator` or `breaker`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<String>,
    /// When it was paused, Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<i64>,
    /// Why, as given to `handlers pause --reason` or by the breaker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the config names it (deliveries may outlive a removed handler).
    pub configured: bool,
    /// Deliveries waiting for their (next) attempt.
    pub pending: i64,
    /// Deliveries being attempted now.
    pub running: i64,
    /// Deliveries given up on.
    pub dead: i64,
    /// When a delivery last succeeded, Unix ms.
    pub last_success_at: Option<i64>,
    /// When an attempt last failed, Unix ms.
    pub last_error_at: Option<i64>,
    /// That failure's error.
    pub last_error: Option<String>,
}

/// A paused handler, as `handler_state` holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paused {
    /// `operator` or `breaker`.
    pub paused_by: String,
    /// When, Unix ms.
    pub paused_at: i64,
    /// When the breaker claims its next probe, Unix ms (breaker pauses only).
    pub probe_at: Option<i64>,
}

/// The handlers operations every backend implements.
#[async_trait]
pub trait Handlers: Send + Sync {
    /// Pauses `handler` by hand; who paused it before, if anyone.
    fn pause_handler(&self, handler: &str, reason: Option<&str>) -> Result<Option<String>, StoreError>;

    /// Resumes `handler`, however it was paused; how long it was paused, ms. Its deliveries not yet done have their `created_at` moved forward by the time paused.
    fn resume_handler(&self, handler: &str) -> Result<Option<i64>, StoreError>;

    /// One line per handler: those `configured`, and any other that has deliveries.
    fn handler_overview(&self, configured: &[String]) -> Result<Vec<HandlerOverview>, StoreError>;
}
