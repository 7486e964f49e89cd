//! The dispatcher: runs due deliveries from the store, never inline with the pull path.
//! Each handler has its own concurrency limit (a semaphore), and only as many deliveries
//! are claimed as it has free permits, so memory stays bounded whatever the backlog. A
//! failing delivery is rescheduled by the retry policy and does not hold back others:
//! there is no head-of-line blocking. Every attempt is recorded with its outcome.
//!
//! Group commit: finished attempts hand their outcomes to the dispatcher's loop, which
//! writes them and claims new deliveries for every handler's free permits in one
//! transaction, at most once per `dispatch.batch_window` while work keeps arriving
//! (at once after a quiet spell). A busy outbox therefore costs one transaction per window,
//! not two per delivery. An outcome is written after its attempt finished and before its
//! delivery can be claimed again (the row stays `running` until then); a crash in between
//! runs the attempt again with the same `webhook-id` (at-least-once).
//!
//! Claiming ahead: a handler without a `rate` or a breaker claims up to one round (its
//! concurrency) beyond its free permits; those deliveries wait, claimed, for the next free
//! permit in claim order, so attempts run back to back between steps and each transaction
//! settles and claims about a round and a half instead of half a round. A pause (from the
//! CLI) stops the claims at the next step; what was already claimed, in flight or waiting,
//! still runs. At shutdown the waiting ones do not start and go back to pending.
//!
//! A claim leases the delivery for the handler's attempt timeout (twice that when claimed
//! ahead: at most one timeout waiting, one running) plus `dispatch.lease_margin`
//! ([`LEASE_MARGIN`] by default); every [`SWEEP_INTERVAL`] the dispatcher returns rows whose
//! lease passed to pending. On a shared store (PostgreSQL, several daemons) the sweep runs
//! always, since another host's leases must be swept when it dies. Other hosts' new
//! deliveries, pauses and resumes are announced there ([`crate::store::notices`],
//! `LISTEN`/`NOTIFY`) and wake the loop; an idle dispatcher steps and sweeps only as a
//! fallback, every [`notices::FALLBACK_POLL`] (every `dispatch.poll_interval` while the
//! listening session is down, as without announcements: `data_version` is SQLite's).
//! While the store refuses writes, the loop backs off (one ERROR, one INFO on recovery)
//! and keeps the outcomes it holds until they can be written; its bounded queue then
//! fills and holds the handlers' permits, so no new attempt starts meanwhile.
//!
//! Operator controls per handler. A paused handler (`handlers pause`, or its breaker) is
//! left out of the claim inside the step's transaction, so a pause committed before a step
//! is honoured by it; the CLI's commit changes `data_version`, so the next idle poll steps.
//! The breaker counts failed attempts in a row per handler from the outcomes it receives
//! (a success resets it); at `pause_after` the step pauses the handler and raises
//! `vod-eventd.handler.paused`; the store then hands out one probe every `probe_interval`,
//! and a success resumes it. A `rate` is a GCRA limiter per handler in this loop: a want
//! asks for no more than the limiter allows now, so claimed rows never wait leased while
//! throttled, and the loop steps again when the next attempt may start. A second limiter
//! of the same rate, the lane's [`Pacer`], spaces the attempts where they start: a claim
//! takes as long as the store needs (tens of milliseconds on a loaded PostgreSQL), so
//! attempts started as claimed would bunch whenever one claim is slower than the next.
//!
//! On shutdown it stops claiming, gives in-flight attempts `drain_timeout`, then stops
//! them; whatever was still running is put back to pending (and retried later).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng as _;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::alerts::{Alert, AlertKind};
use crate::api::Clients;
use crate::config::Config;
use crate::handler::{AnyHandler, Delivery, Rate};
use crate::handoff::{FirstAttempt, Handoff, Offer};
use crate::health::StoreWriter;
use crate::metrics::Metrics;
use crate::outage::Outage;
use crate::retry::RetryPolicy;
use crate::route::Router;
use crate::store::notices;
use crate::store::{now_ms, AttemptRecord, BreakerStep, Next, RouteFn, Store, StoreError, Want};

/// The default `dispatch.lease_margin` (defined with `[dispatch]`).
pub use crate::config::LEASE_MARGIN;
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
    /// Failed attempts in a row that pause it (0: never).
    pub pause_after: u32,
    /// While paused by its breaker, one probe this often.
    pub probe_interval: Duration,
    /// With a `rate`: spaces the attempts' starts by it (kept across a reload that keeps
    /// the rate).
    pub pacer: Option<Arc<Pacer>>,
    /// Deliveries claimed beyond the free permits, to start as permits free up (see
    /// [`Lane::claims_ahead`]).
    pub ahead: usize,
    /// Claimed deliveries waiting for a permit now.
    pub waiting: Arc<AtomicUsize>,
}

impl Lane {
    /// Attempts started at most, per period.
    pub fn rate(&self) -> Option<Rate> {
        self.pacer.as_ref().map(|pacer| pacer.rate)
    }

    /// How many deliveries a lane claims beyond its free permits: one round (its
    /// concurrency) for a plain lane, so that its attempts run back to back while each
    /// transaction settles and claims a round's worth; none with a `rate` (a claim asks only
    /// for what the limiter allows now) or a breaker (`pause_after`: after a trip, nothing
    /// claimed should be left to run).
    fn claims_ahead(concurrency: usize, rate: Option<Rate>, pause_after: u32) -> usize {
        if rate.is_none() && pause_after == 0 {
            concurrency
        } else {
            0
        }
    }
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
    /// How long to gather outcomes and free permits into one transaction.
    pub batch_window: Duration,
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
        // A handler pinned to other hosts (`hosts`) is neither built nor given a lane here
        // (its program or key directory may exist only there): its deliveries wait in the
        // shared store for a daemon it runs on.
        let node = config.node.name();
        let here: std::collections::BTreeMap<String, crate::handler::HandlerConfig> =
            config.handlers.iter().filter(|(_, c)| c.runs_on(&node)).map(|(n, c)| (n.clone(), c.clone())).collect();
        let handlers = crate::handler::build_all(&here, clients, store)?;
        let lanes = handlers
            .into_iter()
            .map(|(name, handler)| {
                let concurrency = config.handlers[&name].concurrency();
                let (pause_after, probe_interval) = config.handlers[&name].breaker();
                let rate = config.handlers[&name].rate();
                let ahead = Lane::claims_ahead(concurrency, rate, pause_after);
                // A delivery claimed ahead waits at most one attempt timeout for its permit
                // (every attempt in flight ends within one), then runs for at most another.
                let timeout = config.handlers[&name].attempt_timeout();
                let lease = timeout * if ahead > 0 { 2 } else { 1 } + config.dispatch.lease_margin;
                let before = previous.and_then(|p| p.lanes.get(&name));
                let (permits, waiting) = before
                    .filter(|lane| lane.concurrency == concurrency)
                    .map(|lane| (lane.permits.clone(), lane.waiting.clone()))
                    .unwrap_or_else(|| (Arc::new(Semaphore::new(concurrency)), Arc::default()));
                let pacer = rate.map(|rate| match before.and_then(|lane| lane.pacer.clone()) {
                    Some(pacer) if pacer.rate == rate => pacer,
                    _ => Arc::new(Pacer::new(rate, config.dispatch.batch_window)),
                });
                let lane =
                    Lane { handler, permits, concurrency, lease, pause_after, probe_interval, pacer, ahead, waiting };
                (name, lane)
            })
            .collect();
        Ok(Routing {
            router,
            lanes,
            policy: config.dispatch.policy(),
            poll_interval: config.dispatch.poll_interval,
            batch_window: config.dispatch.batch_window,
        })
    }
}

/// Everything the dispatcher needs.
pub struct Dispatcher {
    /// The store.
    pub store: Store,
    /// Routes, handlers and policy; replaced on reload.
    pub routing: watch::Receiver<Arc<Routing>>,
    /// Poked when new deliveries are left pending (by the ingest writer), or raised.
    pub wake: Arc<Notify>,
    /// Where this dispatcher offers handlers to claim new deliveries for as they are
    /// stored ([`crate::handoff`]).
    pub handoff: Arc<Handoff>,
    /// The deliveries the ingest writer claimed for it.
    pub first_attempts: mpsc::Receiver<Vec<FirstAttempt>>,
    /// Counters.
    pub stats: Arc<Metrics>,
}

/// How a claimed delivery gets its handler's permit.
enum Start {
    /// A permit was free at the claim.
    Now(OwnedSemaphorePermit),
    /// Claimed ahead: waits for the next free permit (the semaphore is fair: in claim
    /// order), unless the daemon stops first.
    Queued { permits: Arc<Semaphore>, waiting: Arc<AtomicUsize> },
}

/// Where a step starts the attempts it claimed.
struct Spawn<'a> {
    /// Where finished attempts send their outcomes.
    records: &'a mpsc::Sender<Finished>,
    /// The attempts running or waiting for a permit.
    tasks: &'a mut JoinSet<()>,
    /// Cancelled at shutdown: attempts still waiting for a permit do not start.
    shutdown: &'a CancellationToken,
}

/// A finished attempt, as the attempt task hands it to the loop.
struct Finished {
    handler: String,
    record: AttemptRecord,
}

/// A GCRA limiter for one handler's `rate`: attempts at least one interval apart, in
/// bursts of at most `burst` (one batch window's worth, at least 1). The interval is the
/// rate's plus 2 %: requests reach the receiver with some jitter, and paced at exactly the
/// rate, `rate + 1` of them could land in one of its seconds.
struct Bucket {
    /// The configured rate (a reload that changes it starts a new bucket).
    rate: Rate,
    interval: Duration,
    burst: u32,
    /// When the next attempt would be due at the full rate.
    tat: Instant,
}

impl Bucket {
    fn new(rate: Rate, batch_window: Duration, now: Instant) -> Bucket {
        let interval = rate.interval() + rate.interval() / 50;
        let burst = (batch_window.as_nanos() / interval.as_nanos().max(1)).max(1) as u32;
        Bucket { rate, interval, burst, tat: now }
    }

    /// How many attempts may start now.
    fn available(&self, now: Instant) -> usize {
        let horizon = now + self.interval * self.burst;
        let from = self.tat.max(now);
        (horizon.saturating_duration_since(from).as_nanos() / self.interval.as_nanos().max(1)) as usize
    }

    fn take(&mut self, n: usize, now: Instant) {
        self.tat = self.tat.max(now) + self.interval * n as u32;
    }

    /// When the next attempt may start.
    fn next_at(&self, now: Instant) -> Instant {
        let ready = self.tat.max(now) + self.interval;
        ready.checked_sub(self.interval * self.burst).unwrap_or(now).max(now)
    }
}

/// Where a rated handler's attempts wait for their turn to start: the loop's [`Bucket`] of
/// the same rate, applied to the moment each attempt starts. Waiters queue in claim order
/// (tokio's mutex is fair).
pub struct Pacer {
    rate: Rate,
    bucket: tokio::sync::Mutex<Bucket>,
}

impl Pacer {
    fn new(rate: Rate, batch_window: Duration) -> Pacer {
        let now = tokio::time::Instant::now().into_std();
        Pacer { rate, bucket: tokio::sync::Mutex::new(Bucket::new(rate, batch_window, now)) }
    }

    /// Returns when the next attempt may start, and counts it as started.
    async fn turn(&self) {
        let mut bucket = self.bucket.lock().await;
        loop {
            // tokio's clock (std's, unless a test pauses it).
            let now = tokio::time::Instant::now().into_std();
            if bucket.available(now) > 0 {
                return bucket.take(1, now);
            }
            tokio::time::sleep_until(bucket.next_at(now).into()).await;
        }
    }
}

/// The breaker's view in the loop: failures in a row, who paused which handler (as of the
/// last step), and the changes for the next step.
#[derive(Default)]
struct Breakers {
    failures: BTreeMap<String, u32>,
    paused: BTreeMap<String, String>,
    next: BTreeMap<String, bool>,
}

impl Breakers {
    /// Counts an outcome; `pause_after` 0 is off.
    fn outcome(&mut self, handler: &str, ok: bool, pause_after: u32) {
        let breaker_paused = self.paused.get(handler).is_some_and(|by| by == "breaker");
        if ok {
            self.failures.remove(handler);
            if breaker_paused {
                self.next.insert(handler.to_string(), true);
            } else {
                self.next.remove(handler);
            }
            return;
        }
        let n = self.failures.entry(handler.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        if pause_after > 0 && *n >= pause_after && !self.paused.contains_key(handler) {
            self.next.insert(handler.to_string(), false);
        } else if breaker_paused {
            // A failed probe keeps it paused, even after a success came in the same window.
            self.next.remove(handler);
        }
    }

    /// The step for `handler`: the change the next step writes, with its alert.
    fn step(&self, handler: &str, lane: &Lane, route: &Arc<RouteFn>) -> Option<BreakerStep> {
        let recovered = *self.next.get(handler)?;
        let with = |alert: Alert| Some((alert, route.clone()));
        Some(if recovered {
            BreakerStep::Recovered {
                alert: with(Alert::new(
                    AlertKind::HandlerResumed,
                    handler,
                    format!("Handler {handler} is resumed: a probe delivery succeeded after its breaker paused it."),
                )),
            }
        } else {
            let n = self.failures.get(handler).copied().unwrap_or(0);
            let reason = format!("{n} failed attempts in a row (pause_after = {})", lane.pause_after);
            BreakerStep::Trip {
                alert: with(Alert::new(AlertKind::HandlerPaused, handler, format!("Handler {handler} is paused by its breaker after {reason}; one delivery is tried every {:?} and the first success resumes it. Its deliveries wait and do not age meanwhile. See `vod-eventd handlers list`; resume by hand with `vod-eventd handlers resume {handler}`.", lane.probe_interval))),
                reason,
            }
        })
    }

    /// Whether `handler` failed its last attempt, is paused, or has a change to write.
    fn unsettled(&self, handler: &str) -> bool {
        self.failures.contains_key(handler) || self.paused.contains_key(handler) || self.next.contains_key(handler)
    }

    /// The step wrote its changes and read the pauses.
    fn stepped(&mut self, paused: BTreeMap<String, String>) {
        for (handler, recovered) in std::mem::take(&mut self.next) {
            if !recovered {
                self.failures.remove(&handler);
            }
        }
        self.paused = paused;
    }
}

/// The loop's per-handler controls: rate limiters and breakers.
#[derive(Default)]
struct Control {
    buckets: BTreeMap<String, Bucket>,
    breakers: Breakers,
}

/// What one step found.
struct Stepped {
    /// When to step again if nothing happens before.
    wake_at: Instant,
    /// When the earliest pending delivery comes due, if any is pending.
    due_at: Option<Instant>,
    /// The handlers that claimed all they asked for: more may be due.
    filled: BTreeSet<String>,
    /// The store's `data_version` as the step read it.
    data_version: i64,
}

/// When expired leases are looked for: every [`SWEEP_INTERVAL`] while this dispatcher may
/// hold leases (until its longest lease has passed since its last claim), then not at all.
/// On a shared store (PostgreSQL) always, since another host's leases must be swept when
/// that host dies: every [`SWEEP_INTERVAL`] too, but while this host holds no lease and
/// other hosts' writes are announced (`live`), when the earliest lease the last sweep saw
/// ends (not sooner than [`SWEEP_INTERVAL`]), or after [`notices::FALLBACK_POLL`] if there
/// was none: an idle store's hosts stay quiet, and a dead host's claims are still swept
/// within a lease.
#[derive(Default)]
struct Sweeps {
    next: Option<Instant>,
    until: Option<Instant>,
    shared: bool,
    live: bool,
}

impl Sweeps {
    fn due(&self) -> bool {
        self.next.is_some_and(|next| Instant::now() >= next)
    }

    fn claimed(&mut self, lease: Duration) {
        let until = Instant::now() + lease + SWEEP_INTERVAL;
        self.until = Some(self.until.map_or(until, |u| u.max(until)));
        let next = Instant::now() + SWEEP_INTERVAL;
        self.next = Some(self.next.map_or(next, |n| n.min(next)));
    }

    fn swept(&mut self, lease_ends_in: Option<Duration>) {
        let next = Instant::now() + SWEEP_INTERVAL;
        if self.shared {
            let leased = self.until.is_some_and(|until| next <= until + SWEEP_INTERVAL);
            let others =
                lease_ends_in.map_or(notices::FALLBACK_POLL, |d| d.clamp(SWEEP_INTERVAL, notices::FALLBACK_POLL));
            self.next = Some(if leased || !self.live { next } else { Instant::now() + others });
            return;
        }
        self.next = self.until.filter(|until| next <= *until + SWEEP_INTERVAL).map(|_| next);
    }
}

impl Dispatcher {
    /// Runs until `shutdown`, then drains for at most `drain_timeout`.
    pub async fn run(mut self, shutdown: CancellationToken, drain_timeout: Duration) {
        match self.store.requeue_running().await {
            Ok(0) => {}
            Ok(n) => info!(deliveries = n, "Requeued deliveries that were running when vod-eventd last stopped."),
            Err(e) => error!(error = %e, "Could not requeue interrupted deliveries."),
        }
        let (records, mut finished) = mpsc::channel(RECORD_QUEUE);
        // Outcomes received and not yet written (at most RECORD_BATCH).
        let mut outcomes: Vec<AttemptRecord> = Vec::new();
        let mut tasks = JoinSet::new();
        let mut outage = Outage::new(
            StoreWriter::Dispatch,
            "Cannot record handler outcomes or claim deliveries: the store refuses writes. The outcomes are kept and written once it accepts them; meanwhile no new attempts start (/healthz says so). Free disk space, or raise store.max_size_mb and send SIGHUP.",
            self.stats.clone(),
        );
        // The next store step, never earlier than this; pushed back while the store refuses writes.
        let mut step_at = Instant::now();
        let mut last_step = Instant::now();
        // Something to do at the next step beyond polling: outcomes, new deliveries, a retry
        // coming due. A poll alone only looks at the store if another process wrote to it.
        let mut work = true;
        // When the earliest pending delivery comes due (as of the last step).
        let mut due_at: Option<Instant> = None;
        let mut seen_version = None;
        let shared = self.store.is_shared();
        let mut sweeps = Sweeps { shared, next: shared.then(Instant::now), ..Sweeps::default() };
        // Other hosts' writes, announced (PostgreSQL): polling becomes the slow fallback.
        let mut notices = self.store.notices();
        let mut heard = notices.as_ref().map(|n| *n.borrow());
        // Handlers that may have due deliveries beyond what they could claim.
        let mut backlog = BTreeSet::new();
        let mut control = Control::default();
        // The handlers last offered to the ingest writer, and the routing they are lanes of.
        let mut offered: (Option<Arc<Routing>>, Vec<String>) = (None, Vec::new());
        loop {
            let routing = self.routing.borrow_and_update().clone();
            let poll_every = notices::poll_every(notices.as_ref(), routing.poll_interval);
            sweeps.live = notices.as_ref().is_some_and(|n| n.borrow().live);
            if due_at.is_some_and(|due| Instant::now() >= due) {
                work = true;
            }
            if Instant::now() >= step_at && !work && !sweeps.due() {
                // A poll: step only if the CLI (or anything else) changed the store meanwhile.
                let version = self.store.data_version();
                work = version.is_none() || version != seen_version;
                seen_version = version;
                if !work {
                    let poll = Instant::now() + poll_every;
                    step_at = due_at.map_or(poll, |due| due.min(poll));
                }
            }
            if Instant::now() >= step_at {
                last_step = Instant::now();
                step_at = match self
                    .step(
                        &routing,
                        &mut outcomes,
                        Spawn { records: &records, tasks: &mut tasks, shutdown: &shutdown },
                        &mut sweeps,
                        &mut control,
                        poll_every,
                    )
                    .await
                {
                    Ok(stepped) => {
                        outage.succeeded();
                        backlog = stepped.filled;
                        due_at = stepped.due_at;
                        work = false;
                        seen_version = Some(stepped.data_version);
                        stepped.wake_at
                    }
                    Err(e) => Instant::now() + outage.failed(&e),
                };
            }
            // A sweep coming due steps too (an idle host's poll may be later).
            if let (Some(sweep), false) = (sweeps.next, outage.ongoing()) {
                step_at = step_at.min(sweep);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {
                    backlog.extend(routing.lanes.keys().cloned());
                    work = true;
                }
                _ = self.routing.changed() => work = true,
                notice = notices::changed(&mut notices) => {
                    // Another host's new deliveries or pause, or the listening session came
                    // or went: look now (announcements name no handler, so every handler may
                    // have work).
                    if heard.is_none_or(|h| h.work != notice.work || h.live != notice.live) {
                        backlog.extend(routing.lanes.keys().cloned());
                        work = true;
                    }
                    heard = Some(notice);
                }
                Some(firsts) = self.first_attempts.recv() => {
                    for first in firsts {
                        sweeps.claimed(first.lease);
                        // A handler removed by a reload meanwhile: its row stays running
                        // until its lease passes, then waits as an orphan.
                        let Some(lane) = routing.lanes.get(&first.handler) else { continue };
                        let mut spawn = Spawn { records: &records, tasks: &mut tasks, shutdown: &shutdown };
                        let (delivery, start) = (first.delivery, Start::Now(first.permit));
                        self.attempt(&mut spawn, first.handler, lane, &routing.policy, delivery, start);
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => work = true,
                Some(done) = finished.recv(), if outcomes.len() < RECORD_BATCH => {
                    let pause_after = routing.lanes.get(&done.handler).map_or(0, |lane| lane.pause_after);
                    control.breakers.outcome(&done.handler, done.record.next == Next::Done, pause_after);
                    outcomes.push(done.record);
                    work = true;
                }
                _ = tokio::time::sleep_until(step_at.into()) => {}
            }
            if !outage.ongoing() && work {
                // Something happened. Step at once if a handler with due work has half its
                // permits free, or many outcomes wait; otherwise gather for one window after
                // the last step (at once after a quiet spell).
                let starved = routing.lanes.iter().any(|(name, lane)| {
                    backlog.contains(name) && lane.permits.available_permits() * 2 >= lane.concurrency
                });
                let gathered = if starved || outcomes.len() >= RECORD_BATCH / 2 {
                    Instant::now()
                } else {
                    (last_step + routing.batch_window).max(Instant::now())
                };
                step_at = step_at.min(gathered);
            }
            // Published only when they change (this runs after every outcome).
            let offer = offered_lanes(&routing, &control, &backlog, outage.ongoing());
            if !offered.0.as_ref().is_some_and(|r| Arc::ptr_eq(r, &routing))
                || !offered.1.iter().eq(offer.iter().copied())
            {
                let to_offer = |name: &&String| {
                    let lane = &routing.lanes[*name];
                    Offer { handler: name.to_string(), permits: lane.permits.clone(), lease: lane.lease }
                };
                self.handoff.offer(offer.iter().map(to_offer).collect());
                offered = (Some(routing.clone()), offer.into_iter().cloned().collect());
            }
        }
        self.handoff.offer(Vec::new());
        self.drain(tasks, drain_timeout).await;
        // Every attempt task has ended: write what they left.
        drop(records);
        while let Some(done) = finished.recv().await {
            outcomes.push(done.record);
        }
        self.flush(outcomes).await;
        if let Err(e) = self.store.requeue_running().await {
            error!(error = %e, "Could not requeue interrupted deliveries; they will be requeued at the next start.");
        }
    }

    /// One group commit: sweeps expired leases when due, writes `outcomes` and claims due
    /// deliveries for every handler with free permits in one transaction, and starts them.
    /// On error `outcomes` is kept.
    async fn step(
        &self,
        routing: &Arc<Routing>,
        outcomes: &mut Vec<AttemptRecord>,
        mut spawn: Spawn<'_>,
        sweeps: &mut Sweeps,
        control: &mut Control,
        poll_every: Duration,
    ) -> Result<Stepped, StoreError> {
        if sweeps.due() {
            let swept = self.store.sweep_expired_leases(crate::clock::due_ms()).await?;
            if swept > 0 {
                warn!(deliveries = swept, "Returned deliveries whose lease passed without a recorded outcome to pending; they will be attempted again.");
            }
            sweeps.swept(self.store.lease_ends_in());
        }
        // Each handler asks for as many deliveries as it has free permits, and its rate
        // allows, plus what it claims ahead; every handler asks, if only to learn whether it
        // is paused.
        let clock = Instant::now();
        let route: Arc<RouteFn> = {
            let routing = routing.clone();
            Arc::new(move |event| routing.router.route(event))
        };
        control.buckets.retain(|name, bucket| routing.lanes.get(name).and_then(Lane::rate) == Some(bucket.rate));
        let lanes: Vec<(&String, &Lane, usize, usize)> = routing
            .lanes
            .iter()
            .map(|(name, lane)| {
                let free = lane.permits.available_permits();
                let allowed = match lane.rate() {
                    Some(rate) => control
                        .buckets
                        .entry(name.clone())
                        .or_insert_with(|| Bucket::new(rate, routing.batch_window, clock))
                        .available(clock),
                    None => free,
                };
                let ahead = lane.ahead.saturating_sub(lane.waiting.load(Ordering::Relaxed));
                (name, lane, free, free.min(allowed) + ahead)
            })
            .collect();
        let wants = lanes
            .iter()
            .map(|(name, lane, _, limit)| Want {
                handler: name.to_string(),
                limit: *limit,
                lease: lane.lease,
                probe_interval: lane.probe_interval,
                breaker: control.breakers.step(name, lane, &route),
            })
            .collect();
        let now = crate::clock::due_ms();
        let batch: Arc<[AttemptRecord]> = std::mem::take(outcomes).into();
        let claimed = match self.store.settle_and_claim(batch.clone(), wants, now).await {
            Ok(claimed) => claimed,
            Err(e) => {
                *outcomes = batch.to_vec();
                return Err(e);
            }
        };
        let mut counts = vec![0; lanes.len()];
        if let Some(lease) = claimed.deliveries.iter().map(|(i, _)| lanes[*i].1.lease).max() {
            sweeps.claimed(lease);
        }
        control.breakers.stepped(claimed.paused.iter().map(|(i, by)| (lanes[*i].0.clone(), by.clone())).collect());
        for (i, delivery) in claimed.deliveries {
            counts[i] += 1;
            let (name, lane, _, _) = lanes[i];
            let start = match lane.permits.clone().try_acquire_owned() {
                Ok(permit) => Start::Now(permit),
                Err(_) => {
                    lane.waiting.fetch_add(1, Ordering::Relaxed);
                    Start::Queued { permits: lane.permits.clone(), waiting: lane.waiting.clone() }
                }
            };
            self.attempt(&mut spawn, name.clone(), lane, &routing.policy, delivery, start);
        }
        // A handler that claimed all it asked for may have more due; one held back by its
        // rate is stepped for when its limiter allows the next attempt.
        let mut refill: Option<Instant> = None;
        let mut filled = BTreeSet::new();
        for ((name, _, free, limit), n) in lanes.iter().zip(counts) {
            if let Some(bucket) = control.buckets.get_mut(*name) {
                bucket.take(n, clock);
                if n == *limit && limit < free {
                    let next = bucket.next_at(Instant::now());
                    refill = Some(refill.map_or(next, |r| r.min(next)));
                    continue;
                }
            }
            if n == *limit && *limit > 0 {
                filled.insert(name.to_string());
            }
        }
        let poll = now + poll_every.as_millis() as i64;
        let wake_at = claimed.next_due.map_or(poll, |due| due.clamp(now, poll));
        let at = |ms: i64| Instant::now() + Duration::from_millis(ms.saturating_sub(now).max(0) as u64);
        let due_at = match (claimed.next_due.map(at), refill) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let due_at = if claimed.alerted { Some(Instant::now()) } else { due_at };
        Ok(Stepped {
            wake_at: due_at.map_or(at(wake_at), |due| due.min(at(wake_at))),
            due_at,
            filled,
            data_version: claimed.data_version,
        })
    }

    /// Writes the outcomes left at shutdown, retrying for at most [`RECORD_FLUSH`].
    async fn flush(&self, outcomes: Vec<AttemptRecord>) {
        if outcomes.is_empty() {
            return;
        }
        let outcomes: Arc<[AttemptRecord]> = outcomes.into();
        let deadline = Instant::now() + RECORD_FLUSH;
        loop {
            match self.store.settle_and_claim(outcomes.clone(), Vec::new(), crate::clock::due_ms()).await {
                Ok(_) => return,
                Err(_) if Instant::now() + FLUSH_RETRY < deadline => tokio::time::sleep(FLUSH_RETRY).await,
                Err(e) => {
                    error!(error = %e, "Some attempt outcomes could not be written before exit: the store refuses writes. Their deliveries stay running and are retried after the next start.");
                    return;
                }
            }
        }
    }

    /// Starts the attempt of `d` on `lane` (handler `name`) once `start` gives it a permit
    /// (and the lane's pacer its turn), in `spawn`'s tasks.
    fn attempt(
        &self,
        spawn: &mut Spawn<'_>,
        name: String,
        lane: &Lane,
        policy: &RetryPolicy,
        d: Delivery,
        start: Start,
    ) {
        let (handler, pacer, policy) = (lane.handler.clone(), lane.pacer.clone(), policy.clone());
        let (records, shutdown) = (spawn.records.clone(), spawn.shutdown.clone());
        let stats = self.stats.clone();
        let span = tracing::info_span!("delivery", id = d.delivery_id, event = d.event_id, handler = %name, attempt = d.attempt);
        let attempt = async move {
            let permit = match start {
                Start::Now(permit) => permit,
                Start::Queued { permits, waiting } => {
                    let permit = tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => None,
                        permit = permits.acquire_owned() => permit.ok(),
                    };
                    waiting.fetch_sub(1, Ordering::Relaxed);
                    // Stopping before it started: the row stays `running` and is put back
                    // to pending as the dispatcher stops (requeue_running), attempt uncounted.
                    let Some(permit) = permit else { return };
                    permit
                }
            };
            if let Some(pacer) = pacer {
                tokio::select! {
                    biased;
                    // As above: back to pending as the dispatcher stops, attempt uncounted.
                    _ = shutdown.cancelled() => return,
                    _ = pacer.turn() => {}
                }
            }
            let started_at = now_ms();
            let clock = Instant::now();
            let result = handler.handle(&d).await;
            let duration = clock.elapsed();
            let record = settle(&policy, &d, result, started_at, duration, &name, &stats);
            // The row stays `running` until its outcome is committed, so it cannot be claimed twice.
            let _ = records.send(Finished { handler: name, record }).await;
            drop(permit);
        };
        spawn.tasks.spawn(attempt.instrument(span));
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

/// The handlers whose new deliveries the ingest writer may claim as it stores them: those
/// a claim would start at once and in order. Not with a rate (the limiter decides each
/// step), a failure in a row or a pause (the breaker and pauses are the steps' to apply),
/// older deliveries possibly due (`backlog`), or claimed deliveries waiting for a permit;
/// none while the store refuses this dispatcher's writes.
fn offered_lanes<'a>(
    routing: &'a Routing,
    control: &Control,
    backlog: &BTreeSet<String>,
    outage: bool,
) -> Vec<&'a String> {
    if outage {
        return Vec::new();
    }
    routing
        .lanes
        .iter()
        .filter(|(name, lane)| {
            lane.rate().is_none()
                && lane.waiting.load(Ordering::Relaxed) == 0
                && !backlog.contains(*name)
                && !control.breakers.unsettled(name)
        })
        .map(|(name, _)| name)
        .collect()
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
        claim_token: d.claim_token,
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
                    Next::RetryAt(crate::clock::due_ms() + delay.as_millis() as i64)
                }
                None => {
                    stats.attempt(handler, "dead", duration.as_secs_f64());
                    stats.dead_outcomes.inc();
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

/// Outcomes waiting to be written, at most (the channel from attempts to the loop).
const RECORD_QUEUE: usize = 1024;
/// Outcomes written per transaction, at most.
const RECORD_BATCH: usize = 256;
/// Pause between tries to write the last outcomes at shutdown.
const FLUSH_RETRY: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use figment::providers::{Format as _, Toml};

    use super::*;

    #[test]
    fn the_bucket_spaces_attempts_at_the_rate() {
        let rate = Rate { count: 20, per: Duration::from_secs(1) };
        let start = Instant::now();
        let mut bucket = Bucket::new(rate, Duration::from_millis(20), start);
        assert_eq!(bucket.available(start), 1);
        bucket.take(1, start);
        assert_eq!(bucket.available(start), 0);
        // 50 ms at 20/s, plus the 2 % margin.
        assert_eq!(bucket.next_at(start), start + Duration::from_millis(51));
        assert_eq!(bucket.available(start + Duration::from_millis(50)), 0);
        assert_eq!(bucket.available(start + Duration::from_millis(51)), 1);
        // A higher rate bursts one batch window's worth (20 ms / 1.02 ms).
        let fast = Bucket::new(Rate { count: 1000, per: Duration::from_secs(1) }, Duration::from_millis(20), start);
        assert_eq!(fast.available(start), 19);
    }

    /// Claims that reach their attempts bunched (a slow claim, then a quick one) still start
    /// one interval apart, in claim order.
    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_bunched_attempts_where_they_start() {
        let pacer = Arc::new(Pacer::new(Rate { count: 20, per: Duration::from_secs(1) }, Duration::from_millis(20)));
        let origin = tokio::time::Instant::now();
        let mut tasks = JoinSet::new();
        for i in 0..5u64 {
            let pacer = pacer.clone();
            // Each arrives a millisecond after the one before, in the order of `i`.
            tasks.spawn(async move {
                tokio::time::sleep(Duration::from_millis(i)).await;
                pacer.turn().await;
                (i, tokio::time::Instant::now() - origin)
            });
        }
        let mut starts = tasks.join_all().await;
        starts.sort();
        let at: Vec<u128> = starts.iter().map(|(_, at)| at.as_millis()).collect();
        // 51 ms apart: 50 ms at 20/s plus the 2 % margin.
        assert_eq!(at, [0, 51, 102, 153, 204]);
    }

    #[test]
    fn the_breaker_trips_at_pause_after_and_a_success_resets_it() {
        let mut b = Breakers::default();
        for _ in 0..4 {
            b.outcome("h", false, 5);
        }
        b.outcome("h", true, 5);
        for _ in 0..4 {
            b.outcome("h", false, 5);
        }
        assert!(b.next.is_empty(), "4 in a row after a success");
        b.outcome("h", false, 5);
        assert_eq!(b.next.get("h"), Some(&false), "trips at 5");
        b.stepped([("h".to_string(), "breaker".to_string())].into());
        b.outcome("h", false, 5);
        assert!(b.next.is_empty(), "a failed probe keeps it paused");
        b.outcome("h", true, 5);
        assert_eq!(b.next.get("h"), Some(&true), "a success resumes");
        b.outcome("other", false, 0);
        assert!(!b.next.contains_key("other"), "pause_after 0 is off");
    }

    async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// An outcome finished while the store refuses writes is kept (the old recorder gave up
    /// after 8 refused tries and left the delivery `running` until the next start), nothing
    /// new starts meanwhile, and it is written once the store accepts writes again.
    #[tokio::test]
    async fn an_outcome_waits_out_refused_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        let go = dir.path().join("go");
        let toml = format!(
            "[vod]\nsecret_id = \"id\"\nsecret_key = \"key\"\n[store]\npath = \"{}\"\n\
             [[routes]]\nevents = [\"*\"]\nhandlers = [\"h\"]\n\
             [handlers.h]\ntype = \"shell\"\ncommand = [\"sh\", \"-c\", \"while [ ! -e {} ]; do sleep 0.01; done\"]\n",
            path.display(),
            go.display()
        );
        let config = crate::config::from_figment(figment::Figment::from(Toml::string(&toml)), &path).unwrap();
        let store = Store::open(&path, Duration::from_millis(1)).unwrap();
        let routing = Routing::build(&config, Arc::default(), store.clone(), None).unwrap();
        let event = |body: &str| crate::event::ReceivedEvent::from_content(body, crate::config::ApiVersion::V2);
        store.insert_events(vec![(event(r#"{"eventType":"X"}"#), vec!["h".into()])]).await.unwrap();
        let stats = Arc::new(Metrics::default());
        let (_routing_tx, routing_rx) = watch::channel(Arc::new(routing));
        let wake = Arc::new(Notify::new());
        let (handoff, first_attempts) = Handoff::new(wake.clone());
        let dispatcher = Dispatcher {
            store: store.clone(),
            routing: routing_rx,
            wake: wake.clone(),
            handoff,
            first_attempts,
            stats: stats.clone(),
        };
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(dispatcher.run(shutdown.clone(), Duration::from_secs(5)));
        let states = || -> Vec<String> { store.deliveries().unwrap().into_iter().map(|d| d.state).collect() };
        wait_for("the delivery to start", || states() == ["running"]).await;

        // Another connection holds the write lock: every write of the dispatcher is refused.
        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        std::fs::write(&go, "").unwrap();
        wait_for("three refused writes", || stats.store_failures.get() >= 3).await;
        assert!(!stats.health.report(Duration::from_secs(3600)).store_ok, "health says the store refuses writes");
        assert_eq!(states(), ["running"], "the outcome is not written yet");
        blocker.execute_batch("COMMIT").unwrap();
        wait_for("the outcome to be written", || states() == ["done"]).await;
        // The commit is visible before the dispatcher task resumes to mark the store healthy.
        wait_for("health to say the store accepts writes", || stats.health.report(Duration::from_secs(3600)).store_ok)
            .await;
        assert_eq!(store.attempts().unwrap().len(), 1, "one attempt, recorded once");
        shutdown.cancel();
        run.await.unwrap();
    }
}
