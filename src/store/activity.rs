//! The last 24 hours hour by hour, for `status`: events received per hour, and failed
//! handler attempts (outcome `retry` or `dead`) per hour and handler. Both read only the
//! rows of that day, through the `received_at` index and the partial `attempts_failed` index.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::StoreError;

/// Hours in the window `status` draws.
pub const HOURS: usize = 24;

/// Counts per hour over the last [`HOURS`] hours, oldest first: `[HOURS - 1]` is the hour
/// ending now, `[0]` the one that began 24 hours ago.
pub type Hourly = [i64; HOURS];

/// The activity operations every backend implements.
#[async_trait]
pub trait Activity: Send + Sync {
    /// Events received per hour over the 24 hours up to `now_ms`.
    fn events_per_hour(&self, now_ms: i64) -> Result<Hourly, StoreError>;

    /// Failed attempts per hour over the 24 hours up to `now_ms`, per handler that had any.
    fn failures_per_hour(&self, now_ms: i64) -> Result<BTreeMap<String, Hourly>, StoreError>;
}
