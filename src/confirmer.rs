//! The confirmer: receives handles only after their events are committed, and confirms
//! them in batches of up to 16 — when a batch is full, when its oldest handle has waited
//! `confirm.max_delay`, and on shutdown (when the channel closes). A handle is only sent
//! while it is still inside Tencent's 30 s window; one that cannot make it is dropped
//! with a warning (the event will be redelivered and deduplicated). A batch refused with
//! 4000 is split in halves until the still-valid handles go through without the bad one.
//! Confirmed handles are recorded on their rows, through the store writer
//! ([`crate::ingest`], in its next transaction).
//!
//! There is one confirmer per source, with that source's client: a handle is only ever
//! confirmed under the `SubAppId` (and credentials) it was pulled with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng as _;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::api::{Client, ErrorClass};
use crate::backoff;
use crate::config::ConfirmConfig;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::store::now_ms;

/// A handle whose event is committed.
#[derive(Debug, Clone)]
pub struct PendingHandle {
    /// The `msgHandle`.
    pub handle: String,
    /// When the PullEvent answer carrying it arrived.
    pub pulled_at: Instant,
    /// The row its event is stored in.
    pub event_id: i64,
}

/// Capacity of the channel from the puller; a full channel makes the puller wait.
pub const CHANNEL_CAPACITY: usize = 1024;

/// Time kept in reserve before a handle's window closes, for the call to travel (defined
/// with `[confirm]`, whose checks need it).
pub use crate::config::CONFIRM_SAFETY_MARGIN as SAFETY_MARGIN;

/// Batches and confirms handles until `rx` closes, then flushes everything left.
pub async fn run(
    client: Arc<Client>,
    ingest: Ingest,
    mut rx: mpsc::Receiver<PendingHandle>,
    config: ConfirmConfig,
    stats: Arc<Metrics>,
    source: String,
) {
    let source: Arc<str> = source.into();
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let mut calls = JoinSet::new();
    let mut batch: Vec<PendingHandle> = Vec::with_capacity(config.batch_size);
    loop {
        let flush_at = batch.first().map(|h| h.pulled_at + config.max_delay);
        tokio::select! {
            received = rx.recv() => match received {
                Some(h) => {
                    batch.push(h);
                    if batch.len() < config.batch_size {
                        continue;
                    }
                }
                None => break,
            },
            _ = sleep_until(flush_at), if flush_at.is_some() => {}
            Some(_) = calls.join_next(), if !calls.is_empty() => continue,
        }
        let full = std::mem::replace(&mut batch, Vec::with_capacity(config.batch_size));
        spawn_confirm(&mut calls, &permits, (&client, &ingest, &stats, &source), &config, full).await;
    }
    for chunk in batch.chunks(config.batch_size) {
        spawn_confirm(&mut calls, &permits, (&client, &ingest, &stats, &source), &config, chunk.to_vec()).await;
    }
    while calls.join_next().await.is_some() {}
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

async fn spawn_confirm(
    calls: &mut JoinSet<()>,
    permits: &Arc<Semaphore>,
    (client, ingest, stats, source): (&Arc<Client>, &Ingest, &Arc<Metrics>, &Arc<str>),
    config: &ConfirmConfig,
    batch: Vec<PendingHandle>,
) {
    if batch.is_empty() {
        return;
    }
    let permit = permits.clone().acquire_owned().await.expect("semaphore is never closed");
    let (client, ingest, stats, ttl) = (client.clone(), ingest.clone(), stats.clone(), config.handle_ttl);
    let source = source.clone();
    calls.spawn(async move {
        let confirmed = confirm_batch(&client, batch, ttl, &stats, &source).await;
        drop(permit);
        record_confirmed(&ingest, confirmed).await;
    });
}

/// Records which rows had a handle confirmed, so a later identical content is known to be a
/// new occurrence rather than a redelivery. Failing to record it is not fatal: such a
/// content then folds into the row, as a redelivery would.
async fn record_confirmed(ingest: &Ingest, mut ids: Vec<i64>) {
    if ids.is_empty() {
        return;
    }
    ids.sort_unstable();
    ids.dedup();
    ingest.confirmed(ids, now_ms()).await;
}

/// Confirms one batch, retrying transient failures inside the handles' window and
/// splitting a batch refused with 4000. Returns the rows of the handles confirmed.
async fn confirm_batch(
    client: &Client,
    batch: Vec<PendingHandle>,
    ttl: Duration,
    stats: &Metrics,
    source: &str,
) -> Vec<i64> {
    let mut confirmed = Vec::new();
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut work = vec![batch];
    while let Some(mut part) = work.pop() {
        let mut attempt: u32 = 0;
        loop {
            drop_expired(&mut part, ttl, stats, source);
            if part.is_empty() {
                break;
            }
            let handles: Vec<String> = part.iter().map(|h| h.handle.clone()).collect();
            match client.confirm(&handles).await {
                Ok(()) => {
                    stats.confirmed(source, part.len() as u64);
                    for h in &part {
                        stats.pull_to_confirm_seconds.observe(h.pulled_at.elapsed().as_secs_f64());
                    }
                    debug!(handles = part.len(), "Confirmed.");
                    confirmed.extend(part.iter().map(|h| h.event_id));
                    break;
                }
                Err(e) if e.class() == ErrorClass::InvalidParameter => {
                    Metrics::error(&stats.confirm_failures, source, e.label());
                    if part.len() == 1 {
                        stats.expired(source, 1);
                        warn!(error = %e, source, "ConfirmEvent refused a handle as invalid or expired; its event is stored and will be redelivered and deduplicated.");
                    } else {
                        debug!(error = %e, handles = part.len(), "ConfirmEvent refused the batch; splitting it to find the bad handle.");
                        let second = part.split_off(part.len() / 2);
                        work.push(second);
                        work.push(part);
                    }
                    break;
                }
                Err(e) => {
                    Metrics::error(&stats.confirm_failures, source, e.label());
                    let delay = backoff::delay(attempt, Duration::from_millis(100), Duration::from_secs(5), &mut rng);
                    attempt += 1;
                    let oldest = part.iter().map(|h| h.pulled_at).min().expect("non-empty");
                    let remaining = (oldest + ttl).saturating_duration_since(Instant::now());
                    warn!(error = %e, code = %e.label(), source, handles = part.len(), window_left = ?remaining, "ConfirmEvent failed; retrying inside the confirm window.");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
    confirmed
}

/// Removes (with a warning) handles too close to the end of their window to be sent.
fn drop_expired(part: &mut Vec<PendingHandle>, ttl: Duration, stats: &Metrics, source: &str) {
    let now = Instant::now();
    let before = part.len();
    part.retain(|h| h.pulled_at + ttl > now + SAFETY_MARGIN);
    let dropped = before - part.len();
    if dropped > 0 {
        stats.expired(source, dropped as u64);
        warn!(handles = dropped, source, "Dropped handles whose confirm window has passed; their events are stored and will be redelivered and deduplicated.");
    }
}
