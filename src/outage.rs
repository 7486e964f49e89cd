//! One writer's view of a store outage: an ERROR when its writes start failing, an INFO
//! with the number of failed tries and the duration when they succeed again, a growing
//! backoff between tries, and the writer's health flag kept current. Nothing is logged
//! per failed try in between, so an outage of any length costs two lines per writer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng as _;
use tracing::{error, info};

use crate::health::StoreWriter;
use crate::metrics::Metrics;
use crate::store::StoreError;

/// First delay after a refused write; doubles up to [`MAX_DELAY`], with jitter.
const MIN_DELAY: Duration = Duration::from_millis(200);
/// Longest delay between tries: how soon work resumes once the store accepts writes.
const MAX_DELAY: Duration = Duration::from_secs(10);

/// Tracks one writer's failing writes.
pub struct Outage {
    writer: StoreWriter,
    /// What stops while writes fail, and what to do (the ERROR line's message).
    consequence: &'static str,
    metrics: Arc<Metrics>,
    since: Option<Instant>,
    failures: u32,
    delays: (Duration, Duration),
    rng: rand::rngs::StdRng,
}

impl Outage {
    /// No outage yet. `consequence` is logged once when writes start failing.
    pub fn new(writer: StoreWriter, consequence: &'static str, metrics: Arc<Metrics>) -> Outage {
        Outage {
            writer,
            consequence,
            metrics,
            since: None,
            failures: 0,
            delays: (MIN_DELAY, MAX_DELAY),
            rng: rand::rngs::StdRng::from_entropy(),
        }
    }

    /// Backs off from `min` up to `max` instead of the defaults.
    pub fn with_delays(self, min: Duration, max: Duration) -> Outage {
        Outage { delays: (min, max), ..self }
    }

    /// True while the latest write failed.
    pub fn ongoing(&self) -> bool {
        self.since.is_some()
    }

    /// A write failed; returns how long to wait before the next try.
    pub fn failed(&mut self, e: &StoreError) -> Duration {
        if self.since.is_none() {
            error!(error = %e, "{}", self.consequence);
            self.since = Some(Instant::now());
        }
        self.metrics.store_failures.inc();
        self.metrics.health.store_writable(self.writer, false);
        self.failures = self.failures.saturating_add(1);
        crate::backoff::delay(self.failures - 1, self.delays.0, self.delays.1, &mut self.rng)
    }

    /// A write succeeded.
    pub fn succeeded(&mut self) {
        if let Some(since) = self.since.take() {
            info!(failed_tries = self.failures, lasted = ?since.elapsed(), writer = ?self.writer, "The store accepts writes again; resuming.");
        }
        self.failures = 0;
        self.metrics.health.store_writable(self.writer, true);
    }
}
