//! The `events` table: idempotent batch insert (one transaction per pulled batch) and the
//! queries the history CLI shares with the daemon.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::event::ReceivedEvent;
use crate::handler::Delivery;
use crate::route::Routed;

use super::StoreError;

/// What happened to one event of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// The row id.
    pub id: i64,
    /// False when the event was already stored (a redelivery or duplicate).
    pub new: bool,
}

/// A stored event.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    /// Row id.
    pub id: i64,
    /// Hex SHA-256 of the canonical content.
    pub dedupe_key: String,
    /// `v2` or `v3`.
    pub api: String,
    /// `eventType`.
    pub event_type: String,
    /// `version`.
    pub version: Option<String>,
    /// File id, if any.
    pub file_id: Option<String>,
    /// Task id, if any.
    pub task_id: Option<String>,
    /// First delivery, Unix ms.
    pub received_at: i64,
    /// Latest delivery, Unix ms.
    pub last_seen_at: i64,
    /// Deliveries seen (redeliveries fold into the row).
    pub times_seen: i64,
    /// Which occurrence of this content the row is (1 unless the content came again after a
    /// handle of an earlier row was confirmed).
    pub occurrence: i64,
    /// When a handle of this row was first confirmed, Unix ms.
    pub confirmed_at: Option<i64>,
    /// The source it was pulled from.
    pub source: String,
    /// The app (`SubAppId`) it was pulled from; none: the default app.
    pub sub_app_id: Option<i64>,
    /// `eventContent` exactly as received.
    pub content: String,
}

/// Filters for [`crate::store::History::list_events`].
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Exact event type.
    pub event_type: Option<String>,
    /// Received at or after, Unix ms.
    pub since_ms: Option<i64>,
    /// Exact file id.
    pub file_id: Option<String>,
    /// Exact source name.
    pub source: Option<String>,
    /// At most this many rows, newest first.
    pub limit: u32,
}

/// Routes a newly stored event: its handlers, and the routes whose filter could not be
/// evaluated for it. Called once per new event, inside the transaction that stores it;
/// never for a redelivery.
pub type RouteFn = dyn Fn(&ReceivedEvent) -> Routed + Send + Sync;

/// One pulled batch for [`crate::store::History::ingest`]: its events and how to route the new ones.
#[derive(Clone)]
pub struct Batch {
    /// The events, in pull order.
    pub events: Arc<[ReceivedEvent]>,
    /// Routes each newly stored event.
    pub route: Arc<RouteFn>,
}

/// What [`History::ingest_claiming`] may claim for one handler.
#[derive(Debug, Clone)]
pub struct FirstClaim {
    /// The handler.
    pub handler: String,
    /// At most this many of its new deliveries (its permits taken for them).
    pub limit: usize,
    /// How long a claimed delivery stays leased.
    pub lease: std::time::Duration,
}

/// What [`History::ingest_claiming`] stored and claimed.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Each batch's rows and routing, as [`History::ingest`] returns them.
    pub rows: Vec<Vec<(Inserted, Routed)>>,
    /// The new deliveries claimed in the same transaction, each with the index of its
    /// [`FirstClaim`].
    pub claimed: Vec<(usize, Delivery)>,
}

impl Ingested {
    /// Whether the transaction created deliveries it did not claim (they wait, pending,
    /// for a dispatcher's claim).
    pub fn left_pending(&self) -> bool {
        let created: usize = self.rows.iter().flatten().filter(|(row, _)| row.new).map(|(_, r)| r.handlers.len()).sum();
        created > self.claimed.len()
    }
}

/// The events operations every backend implements.
#[async_trait]
pub trait History: Send + Sync {
    /// Stores a pulled batch (each event with the handlers it is routed to) durably;
    /// returns once the commit is on disk.
    async fn insert_events(&self, events: Vec<(ReceivedEvent, Vec<String>)>) -> Result<Vec<Inserted>, StoreError>;

    /// Group commit for the pullers: stores several pulled batches in one durable
    /// transaction (each newly stored event routed with its batch's `route`; a redelivery is
    /// not routed again), after recording the rows whose handles were confirmed
    /// (`confirmed`: row id and Unix ms). Recording those
    /// first means an identical content in the same group is already seen as a new
    /// occurrence. Returns once the commit is on disk, with each batch's rows and routing.
    async fn ingest(
        &self,
        batches: Vec<Batch>,
        confirmed: Vec<(i64, i64)>,
    ) -> Result<Vec<Vec<(Inserted, Routed)>>, StoreError> {
        Ok(self.ingest_claiming(batches, confirmed, Vec::new()).await?.rows)
    }

    /// [`History::ingest`], claiming new deliveries in the same transaction, so that the
    /// host that stores an event attempts it first, with no claim of its own: for each of
    /// `wants` (handler, limit, lease), up to `limit` of the deliveries the group creates for
    /// its handler, in pull order, `running` and leased as a claim leaves them (attempt 1);
    /// none for a handler paused (by an operator or its breaker) when the transaction reads
    /// it, whose deliveries stay pending. Each claimed delivery is built from the pulled
    /// event, not read back.
    async fn ingest_claiming(
        &self,
        batches: Vec<Batch>,
        confirmed: Vec<(i64, i64)>,
        wants: Vec<FirstClaim>,
    ) -> Result<Ingested, StoreError>;

    /// Indexes the files of up to `batch` events stored before `event_files` existed; 0
    /// when none are left.
    async fn backfill_files(&self, batch: u32) -> Result<usize, StoreError>;

    /// Every file an event names, with its role.
    fn event_files(&self, id: i64) -> Result<Vec<(String, String)>, StoreError>;

    /// Events matching `filter`, newest first.
    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRow>, StoreError>;

    /// One event by id.
    fn get_event(&self, id: i64) -> Result<Option<EventRow>, StoreError>;

    /// Number of stored events.
    fn count_events(&self) -> Result<i64, StoreError>;

    /// Events with an id above `after`, oldest first (for following new arrivals).
    fn events_after(&self, after: i64, limit: u32) -> Result<Vec<EventRow>, StoreError>;
}
