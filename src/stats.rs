//! Counters of what the pipeline did, shared by its tasks (atomics, no locks) and read by
//! the demo, the logs and, later, metrics.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Pipeline counters.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// PullEvent calls that succeeded.
    pub pulls_ok: AtomicU64,
    /// PullEvent calls that failed.
    pub pull_errors: AtomicU64,
    /// Events received (duplicates included).
    pub events_received: AtomicU64,
    /// Events that were already stored.
    pub duplicates: AtomicU64,
    /// Handles confirmed.
    pub handles_confirmed: AtomicU64,
    /// ConfirmEvent calls that succeeded.
    pub confirm_batches: AtomicU64,
    /// ConfirmEvent calls that failed.
    pub confirm_failures: AtomicU64,
    /// Handles dropped because their confirm window passed (the event will be redelivered).
    pub handles_expired: AtomicU64,
    /// Store commits that failed.
    pub store_failures: AtomicU64,
    /// Handler attempts that succeeded.
    pub deliveries_done: AtomicU64,
    /// Handler attempts that failed and were rescheduled.
    pub deliveries_retried: AtomicU64,
    /// Deliveries that went dead.
    pub deliveries_dead: AtomicU64,
    /// Unix ms of the last successful pull.
    pub last_pull_ok_ms: AtomicI64,
}

impl PipelineStats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
