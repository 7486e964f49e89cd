//! Alerts as events: the daemon's own operational happenings (a delivery gone dead, pulls
//! stale, credentials refused, the store refusing writes) stored as events of source
//! [`ALERT_SOURCE`] and type `vod-eventd.<what>`, routed like any event (a route with
//! `events = ["vod-eventd.*"]` sends them to a chat webhook or a pager hook).
//!
//! - At most one alert per kind and subject (a handler, a source) is stored per
//!   [`ALERT_HOLD`]; the ones held back are counted in the next one's `held_back`
//!   (`alert_log` in the store, so every daemon sharing the store holds back alike).
//! - Loop protection: a delivery of an alert event that goes dead raises no alert, so an
//!   alert route's own failures never feed themselves.
//! - Bodies carry the type, the time, the subject and a message; never a secret.
//! - An alert that no route takes is not stored.
//!
//! [`AlertLoop`] watches the health flags and the dead deliveries every 5 s while a route
//! takes alerts (with none it sleeps until a reload adds one), and
//! stores what it finds; an alert the store refuses is kept (at most
//! [`PENDING_ALERTS`]) and stored once the store accepts writes again, which is how
//! `vod-eventd.store.refusing_writes` is ever stored.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::dispatch::Routing;
use crate::metrics::Metrics;
use crate::store::Singleton;
use crate::store::{RouteFn, Store};

/// The alert model, shared with the store and the dispatcher (which raise alerts too).
pub use crate::alert_event::{Alert, AlertKind, ALERT_HOLD};
/// The source of every alert event (defined at the bottom, since the config refuses it as a
/// source name and routing keeps it apart).
pub use crate::names::ALERT_SOURCE;
/// Alerts kept while the store refuses writes, at most; older ones are dropped first.
pub const PENDING_ALERTS: usize = 64;
/// How often the health flags and dead deliveries are looked at.
const TICK: Duration = Duration::from_secs(5);
/// A condition that lasts is raised again this often (held back in between).
const REPEAT: Duration = Duration::from_secs(3600);
/// Dead deliveries read per look, at most.
const DEAD_PAGE: i64 = 1000;
/// How far back each look at dead deliveries starts again, for a commit that carried an
/// earlier time than one already seen.
const DEAD_GRACE_MS: i64 = 2000;

fn alert_type(pending: &VecDeque<Alert>) -> &'static str {
    pending.front().map_or("", |a| a.kind.event_type())
}

/// The daemon's alert task.
pub struct AlertLoop {
    /// The store.
    pub store: Store,
    /// Health flags.
    pub metrics: Arc<Metrics>,
    /// Routes alert events (replaced on reload).
    pub routing: watch::Receiver<Arc<Routing>>,
    /// Poked when an alert was routed to a handler.
    pub wake: Arc<Notify>,
    /// `health.max_pull_age`.
    pub max_pull_age: Duration,
    /// `alert.pull_stale_after`.
    pub pull_stale_after: Duration,
}

/// The conditions seen at the last look, and when each was last raised.
#[derive(Default)]
struct Seen {
    raised: HashMap<(AlertKind, String), Instant>,
    pending: VecDeque<Alert>,
    dead_cursor: i64,
    dead_seen: HashMap<i64, i64>,
    /// `Metrics::dead_outcomes` at the last look, and how many more looks for dead
    /// deliveries to make (their outcomes are counted just before they are committed).
    dead_outcomes: u64,
    dead_looks: u32,
}

/// Looks for dead deliveries after a dead outcome was counted: the store is only read while
/// deliveries go dead, not every second of an idle day.
const DEAD_LOOKS: u32 = 5;

impl AlertLoop {
    /// Looks every [`TICK`] until `shutdown`, while a route takes alerts; with none (the
    /// default), an alert would be dropped anyway, so it only waits for a reload.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut seen = Seen { dead_cursor: crate::store::now_ms(), dead_looks: DEAD_LOOKS, ..Seen::default() };
        loop {
            let wanted = self.routing.borrow_and_update().router.takes_alerts();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TICK), if wanted => {}
                changed = self.routing.changed(), if !wanted => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            }
            let routing = self.routing.borrow().clone();
            let route: Arc<RouteFn> = Arc::new(move |event| routing.router.route(event));
            self.check_health(&mut seen);
            self.store_pending(&mut seen, &route).await;
            let dead_outcomes = self.metrics.dead_outcomes.get();
            if dead_outcomes != seen.dead_outcomes {
                seen.dead_outcomes = dead_outcomes;
                seen.dead_looks = DEAD_LOOKS;
            }
            // On a shared store one host scans for dead deliveries (any host's).
            if seen.dead_looks > 0 && self.store.lead(Singleton::Alerts).await {
                seen.dead_looks -= 1;
                self.check_dead(&mut seen, &route).await;
            }
        }
    }

    /// Raises an alert for each condition that started (or lasted [`REPEAT`]) since the
    /// last look, and forgets those that ended.
    fn check_health(&self, seen: &mut Seen) {
        let report = self.metrics.health.report(self.max_pull_age);
        let mut now: Vec<Alert> = Vec::new();
        if !report.store_ok {
            now.push(Alert::new(AlertKind::StoreRefusingWrites, "store", "The store refuses writes (disk full, store.max_size_mb reached, or an I/O error). Events stay at Tencent unconfirmed and no new attempts start: free disk space or raise store.max_size_mb and send SIGHUP."));
        }
        for source in &report.sources {
            if let Some(answer) = &source.credentials_refused {
                let mut alert = Alert::new(AlertKind::CredentialsRefused, &source.name, format!("PullEvent credentials of source {} are refused ({answer}); it pulls nothing until they are fixed. Check its secret_id and secret_key, that the key is enabled, and the clock.", source.name));
                alert.details.insert("answer".into(), answer.clone().into());
                now.push(alert);
            }
            let age = source.last_pull_age;
            if source.refused.is_some() || age.is_some_and(|a| a > self.pull_stale_after) {
                let mut alert = Alert::new(AlertKind::PullsStale, &source.name, format!("No event pulled from source {} for longer than alert.pull_stale_after; Tencent keeps unpulled events for 4 days. See the daemon's log for why pulls fail.", source.name));
                alert.details.insert("last_pull_seconds_ago".into(), json!(age.map(|a| a.as_secs())));
                now.push(alert);
            }
        }
        let active: BTreeSet<(AlertKind, String)> = now.iter().map(|a| (a.kind, a.subject.clone())).collect();
        seen.raised.retain(|key, _| key.0 == AlertKind::DeliveryDead || active.contains(key));
        for alert in now {
            let key = (alert.kind, alert.subject.clone());
            if seen.raised.get(&key).is_none_or(|t| t.elapsed() >= REPEAT) {
                seen.raised.insert(key, Instant::now());
                if seen.pending.len() == PENDING_ALERTS {
                    seen.pending.pop_front();
                }
                seen.pending.push_back(alert);
            }
        }
    }

    /// Stores the alerts waiting, oldest first, until the store refuses one.
    async fn store_pending(&self, seen: &mut Seen, route: &Arc<RouteFn>) {
        while let Some(alert) = seen.pending.front().cloned() {
            match self.store.raise_alert(alert, route.clone()).await {
                Ok(routed) => {
                    seen.pending.pop_front();
                    if routed {
                        self.wake.notify_one();
                    }
                }
                Err(e) => {
                    debug!(error = %e, kind = alert_type(&seen.pending), "Could not store an alert; keeping it until the store accepts writes.");
                    return;
                }
            }
        }
    }

    /// Raises alerts for the deliveries that went dead since the last look.
    async fn check_dead(&self, seen: &mut Seen, route: &Arc<RouteFn>) {
        let from = seen.dead_cursor - DEAD_GRACE_MS;
        let dead = match self.store.dead_since(from, DEAD_PAGE).await {
            Ok(dead) => dead,
            Err(e) => {
                warn!(error = %e, "Could not look for dead deliveries to raise alerts about; trying again in a second.");
                return;
            }
        };
        let new: Vec<i64> = dead.iter().filter(|(id, _)| !seen.dead_seen.contains_key(id)).map(|(id, _)| *id).collect();
        for (id, at) in &dead {
            seen.dead_seen.insert(*id, *at);
            seen.dead_cursor = seen.dead_cursor.max(*at);
        }
        let keep_from = seen.dead_cursor - DEAD_GRACE_MS;
        seen.dead_seen.retain(|_, at| *at >= keep_from);
        if new.is_empty() {
            return;
        }
        match self.store.raise_alerts_for_dead(new, route.clone()).await {
            Ok(0) => {}
            Ok(_) => self.wake.notify_one(),
            Err(e) => warn!(error = %e, "Could not store an alert about dead deliveries."),
        }
    }
}
