//! The dispatcher: runs due deliveries from the store, never inline with the pull path.
//! Each handler has its own concurrency limit (a semaphore), and only as many deliveries
//! are claimed as it has free permits, so memory stays bounded whatever the backlog. A
//! failing delivery is rescheduled by the retry policy and does not hold back others:
//! there is no head-of-line blocking. Every attempt is recorded with its outcome.
//!
//! On shutdown it stops claiming, gives in-flight attempts `drain_timeout`, then stops
//! them; whatever was still running is put back to pending (and retried later).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng as _;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::api::Client;
use crate::config::Config;
use crate::handler::{AnyHandler, Delivery};
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;
use crate::route::Router;
use crate::store::{now_ms, AttemptRecord, Next, Store};

/// A handler and its concurrency limit.
pub struct Lane {
    /// The handler.
    pub handler: Arc<AnyHandler>,
    /// Attempts in flight at once.
    pub permits: Arc<Semaphore>,
    /// The limit `permits` was made with.
    pub concurrency: usize,
}

/// The part of the configuration a SIGHUP can change: routes, handlers, retry policy.
pub struct Routing {
    /// Which handlers an event type goes to.
    pub router: Router,
    /// Handlers by name.
    pub lanes: BTreeMap<String, Lane>,
    /// Retry policy.
    pub policy: RetryPolicy,
    /// How often to look for deliveries scheduled by another process.
    pub poll_interval: Duration,
}

impl Routing {
    /// Builds routing from a validated config. A handler whose concurrency is unchanged
    /// keeps its semaphore from `previous`, so attempts in flight across a reload still
    /// count against its limit.
    pub fn build(
        config: &Config,
        client: Arc<Client>,
        store: Store,
        previous: Option<&Routing>,
    ) -> anyhow::Result<Routing> {
        let router = Router::new(&config.routes).map_err(anyhow::Error::msg)?;
        let handlers = crate::handler::build_all(&config.handlers, client, store)?;
        let lanes = handlers
            .into_iter()
            .map(|(name, handler)| {
                let concurrency = config.handlers[&name].concurrency();
                let permits = previous
                    .and_then(|p| p.lanes.get(&name))
                    .filter(|lane| lane.concurrency == concurrency)
                    .map(|lane| lane.permits.clone())
                    .unwrap_or_else(|| Arc::new(Semaphore::new(concurrency)));
                (name, Lane { handler, permits, concurrency })
            })
            .collect();
        Ok(Routing { router, lanes, policy: config.dispatch.policy(), poll_interval: config.dispatch.poll_interval })
    }
}

/// Everything the dispatcher needs.
pub struct Dispatcher {
    /// The store.
    pub store: Store,
    /// Routes, handlers and policy; replaced on reload.
    pub routing: watch::Receiver<Arc<Routing>>,
    /// Poked by the puller when new deliveries are stored.
    pub wake: Arc<Notify>,
    /// Counters.
    pub stats: Arc<Metrics>,
}

impl Dispatcher {
    /// Runs until `shutdown`, then drains for at most `drain_timeout`.
    pub async fn run(mut self, shutdown: CancellationToken, drain_timeout: Duration) {
        match self.store.requeue_running().await {
            Ok(0) => {}
            Ok(n) => info!(deliveries = n, "Requeued deliveries that were running when vod-eventd last stopped."),
            Err(e) => error!(error = %e, "Could not requeue interrupted deliveries."),
        }
        let (records, records_rx) = mpsc::channel(RECORD_QUEUE);
        let recorder = tokio::spawn(record_attempts(self.store.clone(), records_rx));
        let mut tasks = JoinSet::new();
        loop {
            let routing = self.routing.borrow_and_update().clone();
            let wake_at = self.claim_and_spawn(&routing, &records, &mut tasks).await;
            let sleep = Duration::from_millis(wake_at.saturating_sub(now_ms()).max(0) as u64);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = self.routing.changed() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        self.drain(tasks, drain_timeout).await;
        // Every attempt task has ended: the recorder writes what is left and stops.
        drop(records);
        let _ = recorder.await;
        if let Err(e) = self.store.requeue_running().await {
            error!(error = %e, "Could not requeue interrupted deliveries; they will be requeued at the next start.");
        }
    }

    /// Claims due deliveries for every handler with free permits and starts them; returns
    /// when (Unix ms) to look again.
    async fn claim_and_spawn(
        &self,
        routing: &Routing,
        records: &mpsc::Sender<AttemptRecord>,
        tasks: &mut JoinSet<()>,
    ) -> i64 {
        let now = now_ms();
        let mut wake_at = now + routing.poll_interval.as_millis() as i64;
        for (name, lane) in &routing.lanes {
            let free = lane.permits.available_permits();
            if free == 0 {
                continue;
            }
            match self.store.claim_due(name.clone(), free, now).await {
                Ok(claimed) => {
                    for delivery in claimed {
                        let permit =
                            lane.permits.clone().try_acquire_owned().expect("claimed no more than the free permits");
                        tasks.spawn(self.attempt(
                            name.clone(),
                            lane.handler.clone(),
                            routing.policy.clone(),
                            delivery,
                            permit,
                            records.clone(),
                        ));
                    }
                }
                Err(e) => error!(error = %e, handler = %name, "Could not claim deliveries from the store; retrying."),
            }
            if lane.permits.available_permits() > 0 {
                if let Ok(Some(due)) = self.store.next_due(name.clone()).await {
                    wake_at = wake_at.min(due);
                }
            }
        }
        wake_at
    }

    fn attempt(
        &self,
        name: String,
        handler: Arc<AnyHandler>,
        policy: RetryPolicy,
        d: Delivery,
        permit: OwnedSemaphorePermit,
        records: mpsc::Sender<AttemptRecord>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let stats = self.stats.clone();
        let span = tracing::info_span!("delivery", id = d.delivery_id, event = d.event_id, handler = %name, attempt = d.attempt);
        async move {
            let started_at = now_ms();
            let clock = Instant::now();
            let result = handler.handle(&d).await;
            let duration = clock.elapsed();
            let record = settle(&policy, &d, result, started_at, duration, &name, &stats);
            // The row stays `running` until the recorder commits, so it cannot be claimed twice.
            let _ = records.send(record).await;
            drop(permit);
        }
        .instrument(span)
    }

    async fn drain(&self, mut tasks: JoinSet<()>, drain_timeout: Duration) {
        let in_flight = tasks.len();
        let drained = tokio::time::timeout(drain_timeout, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(in_flight, timeout = ?drain_timeout, "Handler attempts did not finish in time; stopping them. They will be retried.");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }
}

/// Turns an attempt's result into its record and the delivery's next state.
fn settle(
    policy: &RetryPolicy,
    d: &Delivery,
    result: Result<crate::handler::Success, crate::handler::Failure>,
    started_at: i64,
    duration: Duration,
    handler: &str,
    stats: &Metrics,
) -> AttemptRecord {
    let base = AttemptRecord {
        delivery_id: d.delivery_id,
        attempt: d.attempt,
        started_at,
        duration_ms: duration.as_millis() as i64,
        status: None,
        error: None,
        excerpt: None,
        next: Next::Done,
    };
    match result {
        Ok(ok) => {
            stats.attempt(handler, "done", duration.as_secs_f64());
            debug!(?duration, "Delivered.");
            AttemptRecord { status: ok.status, excerpt: ok.excerpt, ..base }
        }
        Err(failure) => {
            let age = Duration::from_millis(now_ms().saturating_sub(d.created_at).max(0) as u64);
            let delay = if failure.retryable {
                policy.next_delay(d.attempt, age, failure.retry_after, &mut rand::rngs::StdRng::from_entropy())
            } else {
                None
            };
            let next = match delay {
                Some(delay) => {
                    stats.attempt(handler, "retry", duration.as_secs_f64());
                    warn!(error = %failure.message, retry_in = ?delay, "Delivery attempt failed; will retry.");
                    Next::RetryAt(now_ms() + delay.as_millis() as i64)
                }
                None => {
                    stats.attempt(handler, "dead", duration.as_secs_f64());
                    let why = if failure.retryable { "retries exhausted" } else { "permanent failure" };
                    error!(error = %failure.message, webhook_id = %d.webhook_id, "Delivery is dead ({why}); see `vod-eventd deliveries list --state dead --handler {handler}`, then `deliveries retry --dead` once fixed.");
                    Next::Dead
                }
            };
            AttemptRecord {
                status: failure.status,
                error: Some(failure.message),
                excerpt: failure.excerpt,
                next,
                ..base
            }
        }
    }
}

/// Attempt records waiting to be written, at most.
const RECORD_QUEUE: usize = 1024;
/// Attempt records written per transaction, at most.
const RECORD_BATCH: usize = 256;

/// Writes attempt records in batches until every sender is gone. A batch the store
/// refuses is retried for a while; its deliveries stay `running` meanwhile and are
/// requeued at the next start if it never succeeds.
async fn record_attempts(store: Store, mut rx: mpsc::Receiver<AttemptRecord>) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < RECORD_BATCH {
            match rx.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        finish(&store, std::mem::take(&mut batch)).await;
    }
}

async fn finish(store: &Store, records: Vec<AttemptRecord>) {
    let mut rng = rand::rngs::StdRng::from_entropy();
    for attempt in 0..8 {
        match store.finish_attempts(records.clone()).await {
            Ok(()) => return,
            Err(e) => {
                error!(error = %e, "Could not record a delivery attempt; retrying.");
                tokio::time::sleep(crate::backoff::delay(
                    attempt,
                    Duration::from_millis(200),
                    Duration::from_secs(10),
                    &mut rng,
                ))
                .await;
            }
        }
    }
}
