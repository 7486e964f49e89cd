//! Replays and retries by range (`events replay --since`, `deliveries retry --state`): a
//! job row (`range_jobs`) per kind and arguments holds the resolved time window and a
//! cursor, the last event or delivery id handled. Each batch of at most [`RANGE_BATCH`]
//! rows is applied and the cursor advanced in one transaction, so an interrupted run
//! loses at most its uncommitted batch, and a run with the same arguments resumes after
//! the last committed one: nothing is replayed or retried twice. Both backends run the
//! same statements (`sqlite/ranges.rs`).

use async_trait::async_trait;
use serde::Serialize;

use super::StoreError;

/// Rows handled per transaction.
pub const RANGE_BATCH: i64 = 500;

/// What a range selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Range {
    /// Events received in the window, delivered again to one handler.
    Replay {
        /// Only this event type.
        event_type: Option<String>,
        /// Only events naming this file.
        file_id: Option<String>,
        /// Only events of this source.
        source: Option<String>,
        /// The handler to deliver to.
        handler: String,
    },
    /// Deliveries that settled (went dead or done) in the window, made pending again.
    Retry {
        /// `dead` or `done`.
        state: String,
        /// Only this handler's.
        handler: Option<String>,
    },
}

impl Range {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Range::Replay { .. } => "replay",
            Range::Retry { .. } => "retry",
        }
    }
}

/// A range job as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RangeJob {
    /// Row id.
    pub id: i64,
    /// Window start (inclusive), Unix ms.
    pub since_ms: i64,
    /// Window end (exclusive), Unix ms.
    pub until_ms: i64,
    /// The last event (replay) or delivery (retry) id handled.
    pub cursor: i64,
    /// How many rows matched when the job started.
    pub total: i64,
    /// How many were handled so far.
    pub done: i64,
    /// When the last batch was handled, if the job is complete.
    pub finished_at: Option<i64>,
}

/// The ranges operations every backend implements.
#[async_trait]
pub trait Ranges: Send + Sync {
    /// The job recorded for these arguments, if any.
    fn range_job(&self, range: &Range, args: &str) -> Result<Option<RangeJob>, StoreError>;

    /// How many rows of `range` in the window lie after `after` (an id).
    fn range_count(&self, range: &Range, after: i64, since_ms: i64, until_ms: i64) -> Result<i64, StoreError>;

    /// Records a new job for these arguments (replacing any earlier one), counting what it
    /// will handle.
    fn start_range_job(&self, range: &Range, args: &str, since_ms: i64, until_ms: i64) -> Result<RangeJob, StoreError>;

    /// Handles the next batch of a job in one transaction; returns the job as it now is.
    fn range_batch(&self, job: &RangeJob, range: &Range) -> Result<RangeJob, StoreError>;
}
