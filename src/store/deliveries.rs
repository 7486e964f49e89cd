//! The `deliveries` and `attempts` tables: the durable outbox the dispatcher works from.
//! A delivery is claimed (`pending` → `running`, or created `running` by the transaction
//! that stores its event, [`crate::store::History::ingest_claiming`]) before its attempt and settled
//! (`done`, `dead`, or `pending` again with a later `next_attempt_at`) in the same
//! transaction that records the attempt. A claim carries a lease: a `running` row whose
//! lease passed without an outcome is returned to `pending` by [`crate::store::Outbox::sweep_expired_leases`],
//! and rows left `running` by a crash are requeued at the next start. An outcome only
//! settles its delivery while no later attempt has claimed it, so a late outcome never
//! overrides a newer one; it is recorded in `attempts` either way.
//!
//! A paused handler (see [`super::handlers`]) gets nothing claimed, in the same transaction
//! that reads its pause, so a pause committed before a step is always honoured; a handler
//! paused by its breaker gets one probe delivery claimed each `probe_interval`.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::handler::Delivery;

use super::{FirstClaim, RouteFn, StoreError};

/// The stable id of an event's delivery to a handler (`webhook-id`, `VOD_EVENT_ID`):
/// derived from the content and the handler name, so it is the same on every retry and
/// replay, even after the event row is pruned and received again.
pub fn webhook_id(dedupe_key: &[u8], occurrence: i64, handler: &str) -> String {
    let mut h = Sha256::new();
    h.update(dedupe_key);
    h.update([0]);
    h.update(handler.as_bytes());
    // The first occurrence keeps the id it had before occurrences were counted.
    if occurrence > 1 {
        h.update([0]);
        h.update(occurrence.to_string().as_bytes());
    }
    format!("msg_{}", &crate::event::hex(&h.finalize())[..32])
}

/// How an attempt ended, for [`crate::store::Outbox::finish_attempt`].
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The delivery.
    pub delivery_id: i64,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The claim's fencing token (PostgreSQL; SQLite fences by `attempt` and ignores it).
    pub claim_token: i64,
    /// Start, Unix ms.
    pub started_at: i64,
    /// Duration, ms.
    pub duration_ms: i64,
    /// HTTP status or exit code.
    pub status: Option<i64>,
    /// Error text (failures only).
    pub error: Option<String>,
    /// Response or output excerpt.
    pub excerpt: Option<String>,
    /// What happens next.
    pub next: Next,
}

/// The delivery's next state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Delivered.
    Done,
    /// Try again at this Unix ms.
    RetryAt(i64),
    /// Give up.
    Dead,
}

/// A delivery as listed.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRow {
    /// Row id.
    pub id: i64,
    /// The event.
    pub event_id: i64,
    /// The event's type.
    pub event_type: String,
    /// Handler name.
    pub handler: String,
    /// Stable id.
    pub webhook_id: String,
    /// `pending`, `running`, `done` or `dead`.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// Next attempt, Unix ms.
    pub next_attempt_at: i64,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Last change, Unix ms.
    pub updated_at: i64,
    /// Last error.
    pub last_error: Option<String>,
    /// Last HTTP status or exit code.
    pub last_status: Option<i64>,
    /// Why it waits for a handler that is no longer configured, if it does.
    pub orphaned_reason: Option<String>,
}

/// An attempt as listed.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    /// Attempt number.
    pub attempt: i64,
    /// Start, Unix ms.
    pub started_at: i64,
    /// Duration, ms.
    pub duration_ms: i64,
    /// `done`, `retry` or `dead`.
    pub outcome: String,
    /// HTTP status or exit code.
    pub status: Option<i64>,
    /// Error text.
    pub error: Option<String>,
    /// Response or output excerpt.
    pub excerpt: Option<String>,
}

/// Filters for [`crate::store::Outbox::list_deliveries`].
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only this state.
    pub state: Option<String>,
    /// Only this handler.
    pub handler: Option<String>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// What the dispatcher asks of one handler in [`crate::store::Outbox::settle_and_claim`].
#[derive(Clone)]
pub struct Want {
    /// The handler.
    pub handler: String,
    /// Claim at most this many (its free permits, fewer while its rate limit allows fewer;
    /// 0 to learn only whether it is paused).
    pub limit: usize,
    /// How long a claimed delivery stays leased.
    pub lease: std::time::Duration,
    /// While paused by its breaker, one delivery is claimed as a probe this often.
    pub probe_interval: std::time::Duration,
    /// A breaker change to write before claiming.
    pub breaker: Option<BreakerStep>,
}

impl Want {
    /// A want with no breaker.
    pub fn new(handler: String, limit: usize, lease: std::time::Duration) -> Want {
        Want { handler, limit, lease, probe_interval: std::time::Duration::ZERO, breaker: None }
    }
}

/// New deliveries claimed in the transaction that creates them
/// ([`crate::store::History::ingest_claiming`]): how many each want may still take, and
/// what was taken. Shared by the backends' inserts.
pub(crate) struct FirstClaims<'a> {
    wants: &'a [FirstClaim],
    left: Vec<usize>,
    /// The claimed deliveries, each with the index of its want.
    pub claimed: Vec<(usize, Delivery)>,
}

impl<'a> FirstClaims<'a> {
    /// Up to each want's limit; none for a handler `paused` says is paused.
    pub fn new(wants: &'a [FirstClaim], paused: impl Fn(&str) -> bool) -> FirstClaims<'a> {
        let left = wants.iter().map(|w| if paused(&w.handler) { 0 } else { w.limit }).collect();
        FirstClaims { wants, left, claimed: Vec::new() }
    }

    /// Nothing to claim.
    pub fn none() -> FirstClaims<'static> {
        FirstClaims { wants: &[], left: Vec::new(), claimed: Vec::new() }
    }

    /// The want that claims a new delivery of `handler`, with its lease, if one may still
    /// (counted as taken).
    pub fn take(&mut self, handler: &str) -> Option<(usize, std::time::Duration)> {
        let i = self.wants.iter().position(|w| w.handler == handler)?;
        self.left[i] = self.left[i].checked_sub(1)?;
        Some((i, self.wants[i].lease))
    }
}

/// The first attempt of a delivery claimed as it is created: built from the pulled event,
/// as a claim would read it back.
pub(crate) fn first_attempt(
    e: &crate::event::ReceivedEvent,
    (delivery_id, event_id): (i64, i64),
    webhook_id: String,
    created_at: i64,
    claim_token: i64,
) -> Delivery {
    Delivery {
        delivery_id,
        event_id,
        webhook_id,
        attempt: 1,
        created_at,
        event_type: e.event_type.clone(),
        file_id: e.file_id.clone(),
        task_id: e.task_id.clone(),
        body: e.content.clone(),
        source: e.source.clone(),
        sub_app_id: e.sub_app_id,
        claim_token,
    }
}

/// An alert to raise with a breaker change, and how to route it.
pub type AlertWith = Option<(crate::alert_event::Alert, Arc<RouteFn>)>;

/// A change of a handler's breaker, written in the step's transaction.
#[derive(Clone)]
pub enum BreakerStep {
    /// Too many attempts failed in a row: pause the handler (unless paused already), first
    /// probe after `probe_interval`, and raise the alert if it was not paused.
    Trip {
        /// Shown by `handlers list`.
        reason: String,
        /// `vod-eventd.handler.paused`.
        alert: AlertWith,
    },
    /// An attempt succeeded: resume the handler if its breaker paused it, and raise the
    /// alert if it did.
    Recovered {
        /// `vod-eventd.handler.resumed`.
        alert: AlertWith,
    },
}

/// What [`crate::store::Outbox::settle_and_claim`] claimed.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The claimed deliveries, each with the index of its [`Want`].
    pub deliveries: Vec<(usize, Delivery)>,
    /// The earliest `next_attempt_at` (Unix ms) of a pending delivery of a handler whose
    /// want was not filled, if any: when to look again.
    pub next_due: Option<i64>,
    /// `PRAGMA data_version` as this transaction read the store: a later value means another
    /// connection (the CLI) committed since, perhaps scheduling deliveries.
    pub data_version: i64,
    /// The wants (by index) whose handler is paused, with who paused it.
    pub paused: std::collections::BTreeMap<usize, String>,
    /// A breaker change raised an alert (new deliveries to claim).
    pub alerted: bool,
}

/// The deliveries operations every backend implements.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Marks up to `limit` due deliveries of `handler` as running, leased until
    /// `now + lease`, and returns them.
    async fn claim_due(
        &self,
        handler: String,
        limit: usize,
        now: i64,
        lease: std::time::Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        let claimed = self.settle_and_claim(Arc::from([]), vec![Want::new(handler, limit, lease)], now).await?;
        Ok(claimed.deliveries.into_iter().map(|(_, d)| d).collect())
    }

    /// Records an attempt and settles its delivery, in one transaction.
    async fn finish_attempt(&self, a: AttemptRecord) -> Result<(), StoreError> {
        self.finish_attempts(vec![a]).await
    }

    /// Records several attempts and settles their deliveries, in one transaction.
    async fn finish_attempts(&self, records: Vec<AttemptRecord>) -> Result<(), StoreError> {
        self.settle_and_claim(records.into(), Vec::new(), super::now_ms()).await.map(drop)
    }

    /// The dispatcher's group commit: records finished attempts and settles their
    /// deliveries, then claims due deliveries for every handler in `wants` (leased until
    /// `now + lease`), all in one transaction with bookkeeping durability. A delivery is
    /// settled only if the attempt is still its latest claim (it may have been swept back
    /// to `pending`, but not claimed again); the attempt is recorded either way. If the
    /// transaction fails, nothing of it happened: the caller keeps the outcomes and tries
    /// again.
    async fn settle_and_claim(
        &self,
        outcomes: Arc<[AttemptRecord]>,
        wants: Vec<Want>,
        now: i64,
    ) -> Result<Claimed, StoreError>;

    /// Puts deliveries left `running` (by a crash or an interrupted shutdown) back to
    /// `pending`; their attempt is retried. Returns how many.
    async fn requeue_running(&self) -> Result<usize, StoreError>;

    /// Returns `running` deliveries whose lease passed before `now` to `pending`, due at
    /// once; the lost attempt still counts. Only reads unless there is something to
    /// sweep. Returns how many.
    async fn sweep_expired_leases(&self, now: i64) -> Result<usize, StoreError>;

    /// How long after the last [`Outbox::sweep_expired_leases`] the earliest lease it left
    /// running (any host's) ends, where the store tells (PostgreSQL): when the next sweep
    /// can find something.
    fn lease_ends_in(&self) -> Option<std::time::Duration> {
        None
    }

    /// Deliveries matching `filter`, newest first.
    fn list_deliveries(&self, f: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError>;

    /// An event's deliveries, each with its attempts.
    fn event_deliveries(&self, event_id: i64) -> Result<Vec<(DeliveryRow, Vec<AttemptRow>)>, StoreError>;

    /// Schedules a fresh delivery of an event (same `webhook-id`) to `handler`, or to
    /// every handler it was delivered to before. Returns the handlers scheduled.
    fn replay(&self, event_id: i64, handler: Option<&str>) -> Result<Vec<String>, StoreError>;

    /// Makes dead deliveries (of one handler, or all) pending again, due now.
    fn retry_dead(&self, handler: Option<&str>) -> Result<usize, StoreError>;
}
