//! The dispatcher: runs due deliveries from the store, never inline with the pull path.
//! Each handler has its own concurrency limit (a semaphore), and only as many deliveries
//! are claimed as it has free permits, so memory stays bounded whatever the backlog. A
//! failing delivery is rescheduled by the retry policy and does not hold back others:
//! there is no head-of-line blocking. Every attempt is recorded with its outcome.
//!
//! A claim leases the delivery for the handler's attempt timeout plus [`LEASE_MARGIN`];
//! every [`SWEEP_INTERVAL`] the dispatcher returns rows whose lease passed to pending.
//! While the store refuses writes, claims back off (one ERROR, one INFO on recovery) and
//! finished outcomes wait in a bounded queue until they can be written; a full queue
//! holds the handlers' permits, so no new attempt starts meanwhile.
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

use crate::api::Clients;
use crate::config::Config;
use crate::handler::{AnyHandler, Delivery};
use crate::health::StoreWriter;
use crate::metrics::Metrics;
use crate::outage::Outage;
use crate::retry::RetryPolicy;
use crate::route::Router;
use crate::store::{now_ms, AttemptRecord, Next, Store, StoreError};

/// A lease outlasts the handler's attempt timeout by this much, so only an attempt whose
/// outcome was lost (not a slow one) is ever swept back to pending.
pub const LEASE_MARGIN: Duration = Duration::from_secs(120);
/// How often expired leases are looked for.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How long, at shutdown, outcomes still queued may take to be written.
const RECORD_FLUSH: Duration = Duration::from_secs(5);

/// A handler and its concurrency limit.
pub struct Lane {
    /// The handler.
    pub handler: Arc<AnyHandler>,
    /// Attempts in flight at once.
    pub permits: Arc<Semaphore>,
    /// The limit `permits` was made with.
    pub concurrency: usize,
    /// How long a claimed delivery stays leased.
    pub lease: Duration,
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
        clients: Arc<Clients>,
        store: Store,
        previous: Option<&Routing>,
    ) -> anyhow::Result<Routing> {
        let router = Router::new(&config.routes).map_err(anyhow::Error::msg)?;
        let handlers = crate::handler::build_all(&config.handlers, clients, store)?;
        let lanes = handlers
            .into_iter()
            .map(|(name, handler)| {
                let concurrency = config.handlers[&name].concurrency();
                let lease = config.handlers[&name].attempt_timeout() + LEASE_MARGIN;
                let permits = previous
                    .and_then(|p| p.lanes.get(&name))
                    .filter(|lane| lane.concurrency == concurrency)
                    .map(|lane| lane.permits.clone())
                    .unwrap_or_else(|| Arc::new(Semaphore::new(concurrency)));
                (name, Lane { handler, permits, concurrency, lease })
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
        let mut recorder = tokio::spawn(record_attempts(self.store.clone(), records_rx, self.stats.clone()));
        let mut tasks = JoinSet::new();
        let mut outage = Outage::new(
            StoreWriter::Dispatch,
            "Cannot claim deliveries: the store refuses writes. Handlers are paused and claims retried with backoff until it accepts them (/healthz says so). Free disk space, or raise store.max_size_mb and send SIGHUP.",
            self.stats.clone(),
        );
        // No claims before this while the store refuses writes, whatever wakes the loop.
        let mut retry_at = Instant::now();
        let mut next_sweep = Instant::now();
        loop {
            let routing = self.routing.borrow_and_update().clone();
            if Instant::now() >= retry_at {
                retry_at = if self.stats.health.store_failing(StoreWriter::Record) {
                    // Outcomes cannot be written: start nothing whose outcome would only queue up.
                    Instant::now() + routing.poll_interval
                } else {
                    match self.step(&routing, &records, &mut tasks, &mut next_sweep).await {
                        Ok(wake_at) => {
                            outage.succeeded();
                            Instant::now() + Duration::from_millis(wake_at.saturating_sub(now_ms()).max(0) as u64)
                        }
                        Err(e) => Instant::now() + outage.failed(&e),
                    }
                };
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = self.routing.changed() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep_until(retry_at.into()) => {}
            }
            if !outage.ongoing() {
                retry_at = Instant::now();
            }
        }
        self.drain(tasks, drain_timeout).await;
        // Every attempt task has ended: the recorder writes what is left and stops.
        drop(records);
        if tokio::time::timeout(RECORD_FLUSH, &mut recorder).await.is_err() {
            recorder.abort();
            error!("Some attempt outcomes could not be written before exit: the store refuses writes. Their deliveries stay running and are retried after the next start.");
        }
        if let Err(e) = self.store.requeue_running().await {
            error!(error = %e, "Could not requeue interrupted deliveries; they will be requeued at the next start.");
        }
    }

    /// Sweeps expired leases when due, then claims and starts due deliveries; returns
    /// when (Unix ms) to look again.
    async fn step(
        &self,
        routing: &Routing,
        records: &mpsc::Sender<AttemptRecord>,
        tasks: &mut JoinSet<()>,
        next_sweep: &mut Instant,
    ) -> Result<i64, StoreError> {
        if Instant::now() >= *next_sweep {
            let swept = self.store.sweep_expired_leases(now_ms()).await?;
            if swept > 0 {
                warn!(deliveries = swept, "Returned deliveries whose lease passed without a recorded outcome to pending; they will be attempted again.");
            }
            *next_sweep = Instant::now() + SWEEP_INTERVAL;
        }
        self.claim_and_spawn(routing, records, tasks).await
    }

    /// Claims due deliveries for every handler with free permits and starts them; returns
    /// when (Unix ms) to look again.
    async fn claim_and_spawn(
        &self,
        routing: &Routing,
        records: &mpsc::Sender<AttemptRecord>,
        tasks: &mut JoinSet<()>,
    ) -> Result<i64, StoreError> {
        let now = now_ms();
        let mut wake_at = now + routing.poll_interval.as_millis() as i64;
        for (name, lane) in &routing.lanes {
            let free = lane.permits.available_permits();
            if free == 0 {
                continue;
            }
            for delivery in self.store.claim_due(name.clone(), free, now, lane.lease).await? {
                let permit = lane.permits.clone().try_acquire_owned().expect("claimed no more than the free permits");
                tasks.spawn(self.attempt(
                    name.clone(),
                    lane.handler.clone(),
                    routing.policy.clone(),
                    delivery,
                    permit,
                    records.clone(),
                ));
            }
            if lane.permits.available_permits() > 0 {
                if let Some(due) = self.store.next_due(name.clone()).await? {
                    wake_at = wake_at.min(due);
                }
            }
        }
        Ok(wake_at)
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

/// Writes attempt records in batches until every sender is gone. While the store
/// refuses a batch, it is kept and retried with backoff (never dropped); the channel
/// then fills, and attempt tasks wait to hand over their outcome while holding their
/// permits, so memory stays bounded and no new attempts start.
async fn record_attempts(store: Store, mut rx: mpsc::Receiver<AttemptRecord>, stats: Arc<Metrics>) {
    let mut outage = Outage::new(
        StoreWriter::Record,
        "Cannot record handler outcomes: the store refuses writes. The outcomes are kept and written once it accepts them; meanwhile no new attempts start. Free disk space, or raise store.max_size_mb and send SIGHUP.",
        stats,
    );
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(record) => batch.push(record),
                None => return,
            }
        }
        while batch.len() < RECORD_BATCH {
            match rx.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        match store.finish_attempts(batch.clone()).await {
            Ok(()) => {
                outage.succeeded();
                batch.clear();
            }
            Err(e) => tokio::time::sleep(outage.failed(&e)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The old recorder gave up after 8 refused tries (about 33 s) and left the delivery
    /// `running` until the next start. Now the outcome waits, however long the store
    /// refuses writes, and is written once it accepts them.
    #[tokio::test(start_paused = true)]
    async fn an_outcome_waits_out_any_number_of_refused_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        let store = Store::open(&path, Duration::from_millis(1)).unwrap();
        let event = crate::event::ReceivedEvent::from_content(r#"{"eventType":"X"}"#, crate::config::ApiVersion::V2);
        store.insert_events(vec![(event, vec!["h".into()])]).await.unwrap();
        let claimed = store.claim_due("h".into(), 1, now_ms(), Duration::from_secs(600)).await.unwrap();

        // Another connection holds the write lock: every write of the recorder is refused.
        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let stats = Arc::new(Metrics::default());
        let (tx, rx) = mpsc::channel(RECORD_QUEUE);
        let recorder = tokio::spawn(record_attempts(store.clone(), rx, stats.clone()));
        let record = AttemptRecord {
            delivery_id: claimed[0].delivery_id,
            attempt: 1,
            started_at: 0,
            duration_ms: 1,
            status: Some(200),
            error: None,
            excerpt: None,
            next: Next::Done,
        };
        tx.send(record).await.unwrap();
        while stats.store_failures.get() < 12 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(!stats.health.report(Duration::from_secs(3600)).store_ok, "health says the store refuses writes");
        blocker.execute_batch("COMMIT").unwrap();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(60), recorder).await.unwrap().unwrap();
        let state: String =
            store.run_sync(|c| Ok(c.query_row("SELECT state FROM deliveries", [], |r| r.get(0))?)).unwrap();
        assert_eq!(state, "done");
        assert!(stats.health.report(Duration::from_secs(3600)).store_ok);
    }
}
