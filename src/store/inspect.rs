//! A small read-only view of the outbox for tests, benchmarks and the demo's summary:
//! every delivery and attempt as plain rows, so that checks read the same facts from any
//! backend without writing SQL.

use async_trait::async_trait;

use super::StoreError;

/// One delivery, with what the checks read of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFact {
    /// Its id.
    pub id: i64,
    /// The event it delivers.
    pub event_id: i64,
    /// The handler.
    pub handler: String,
    /// `pending`, `running`, `done` or `dead`.
    pub state: String,
    /// Attempts started.
    pub attempts: i64,
    /// The stable id receivers deduplicate on.
    pub webhook_id: String,
    /// The last attempt's status, if it had one.
    pub last_status: Option<i64>,
    /// The last attempt's error, if it failed.
    pub last_error: Option<String>,
}

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFact {
    /// The delivery it belongs to.
    pub delivery_id: i64,
    /// That delivery's handler.
    pub handler: String,
    /// When it started, Unix ms.
    pub started_at: i64,
    /// Its error, if it failed.
    pub error: Option<String>,
}

/// The read-only view every backend implements.
#[async_trait]
pub trait Inspect: Send + Sync {
    /// Every delivery, by id.
    fn deliveries(&self) -> Result<Vec<DeliveryFact>, StoreError>;

    /// Every recorded attempt, in the order they were recorded.
    fn attempts(&self) -> Result<Vec<AttemptFact>, StoreError>;

    /// The highest event id (0 with none).
    fn max_event_id(&self) -> Result<i64, StoreError>;
}
