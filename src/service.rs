//! Being a good systemd service: `sd_notify` messages (READY=1, STATUS= with counts,
//! WATCHDOG=1 only while the daemon is alive, STOPPING=1), a heartbeat in the store for
//! `vod-eventd status` (with each source's pull health), and the data-at-risk alarms:
//! pulls stale for longer than `alert.pull_stale_after` (Tencent keeps unpulled events only
//! 4 days) and dead deliveries that grow.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::config::{AlertConfig, HealthConfig};
use crate::health::{Report, SourceReport};
use crate::metrics::Metrics;
use crate::store::Singleton;
use crate::store::{now_ms, HandlerCounts, Store, StoreError};

/// How often STATUS= and the heartbeat are refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// How often a still-stale pull is reported again.
const STALE_REPEAT: Duration = Duration::from_secs(600);

/// Sends states to systemd when run under it (`NOTIFY_SOCKET`); otherwise does nothing.
pub fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "sd_notify failed.");
    }
}

/// The status, heartbeat and alarm loop.
#[derive(Clone)]
pub struct StatusLoop {
    /// Counters and health.
    pub metrics: Arc<Metrics>,
    /// The store.
    pub store: Store,
    /// Health thresholds.
    pub health: HealthConfig,
    /// Alarm thresholds.
    pub alert: AlertConfig,
    /// `node.name`: on a shared store each host writes a heartbeat of its own under it.
    pub node: String,
}

/// The `daemon_state` key of a host's own heartbeat on a shared store.
pub const HOST_PREFIX: &str = "host.";

/// A host's own heartbeat on a shared store (see [`HOST_PREFIX`]), read by `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostBeat {
    /// Its process id.
    pub pid: u32,
    /// Its vod-eventd version.
    pub version: String,
    /// Its last heartbeat, Unix ms.
    pub heartbeat_ms: i64,
    /// When it stopped, Unix ms (0 while it runs).
    pub stopped_ms: i64,
    /// The singleton tasks it led at its last heartbeat.
    pub leads: Vec<String>,
}

impl StatusLoop {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let started = now_ms().to_string();
        let mut ticker = tokio::time::interval(STATUS_INTERVAL.min(self.alert.check_interval));
        let mut last_alarm_check: Option<Instant> = None;
        let mut stale_reported: BTreeMap<String, Instant> = BTreeMap::new();
        let mut dead_seen: BTreeMap<String, i64> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let report = self.metrics.health.report(self.health.max_pull_age);
            let counts = self.store.handler_counts().await.unwrap_or_default();
            let status = self.status_line(&report, &counts);
            notify(&[NotifyState::Status(&status)]);
            let mut state: Vec<(String, String)> = vec![
                ("pid".into(), std::process::id().to_string()),
                ("version".into(), env!("CARGO_PKG_VERSION").to_string()),
                ("started_ms".into(), started.clone()),
                ("heartbeat_ms".into(), now_ms().to_string()),
                ("stopped_ms".into(), "0".to_string()),
                ("last_pull_ok_ms".into(), self.metrics.health.last_pull_ok_ms().to_string()),
                ("status".into(), status),
            ];
            state.extend(source_state(&report));
            // On a shared store (PostgreSQL) one host writes the shared heartbeat and checks
            // the alarms.
            let (leads, _) = self.write_state(state, 0).await;
            if !leads {
                continue;
            }
            if last_alarm_check.is_some_and(|t| t.elapsed() < self.alert.check_interval) {
                continue;
            }
            last_alarm_check = Some(Instant::now());
            self.check_stale_pulls(&report, &mut stale_reported);
            check_dead_growth(&counts, &mut dead_seen);
        }
    }

    /// Writes the state at exit, once every task has ended (handles confirmed,
    /// deliveries drained), so `status` says the daemon stopped, when, and with the final
    /// counts rather than those of its last heartbeat.
    pub async fn write_final(&self) {
        let report = self.metrics.health.report(self.health.max_pull_age);
        let counts = self.store.handler_counts().await.unwrap_or_default();
        let status = self.status_line(&report, &counts);
        let now = now_ms().to_string();
        let mut state: Vec<(String, String)> =
            vec![("heartbeat_ms".into(), now.clone()), ("stopped_ms".into(), now), ("status".into(), status)];
        state.extend(source_state(&report));
        if let (true, Err(e)) = self.write_state(state, now_ms()).await {
            warn!(error = %e, "Could not write the final status; `vod-eventd status` shows the last heartbeat.");
        }
    }

    /// Writes the heartbeat values in one transaction: `shared` if this host leads the status
    /// task (always, on a store of its own), and on a shared store this host's own entry
    /// (`stopped_ms` 0 while it runs). Returns whether it leads, and how the write went.
    async fn write_state(&self, shared: Vec<(String, String)>, stopped_ms: i64) -> (bool, Result<(), StoreError>) {
        let leads = self.store.lead(Singleton::Status).await;
        let mut values = if leads { shared } else { Vec::new() };
        if self.store.is_shared() {
            values.push(self.host_beat(stopped_ms).await);
        }
        let written = if values.is_empty() { Ok(()) } else { self.store.put_state(values).await };
        (leads, written)
    }

    /// This host's own heartbeat entry.
    async fn host_beat(&self, stopped_ms: i64) -> (String, String) {
        let beat = HostBeat {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            heartbeat_ms: now_ms(),
            stopped_ms,
            leads: self.store.leading().await.iter().map(|s| s.name().to_string()).collect(),
        };
        (format!("{HOST_PREFIX}{}", self.node), serde_json::to_string(&beat).expect("a heartbeat serialises"))
    }

    /// The STATUS= line (also kept in the store for `vod-eventd status`).
    fn status_line(&self, report: &Report, counts: &BTreeMap<String, HandlerCounts>) -> String {
        let (pending, dead, orphaned) =
            counts.values().fold((0, 0, 0), |(p, d, o), c| (p + c.pending, d + c.dead, o + c.orphaned));
        let mut status = format!(
            "{} events stored ({} duplicates), {} handles confirmed; deliveries: {pending} pending, {dead} dead, {orphaned} orphaned; last pull {}",
            self.metrics.received_total.get() - self.metrics.duplicates_total.get(),
            self.metrics.duplicates_total.get(),
            self.metrics.confirmed_total.get(),
            pull_age(report.last_pull_age()),
        );
        if report.sources.len() > 1 {
            let each: Vec<String> = report
                .sources
                .iter()
                .map(|s| {
                    let verdict = if s.healthy() { "ok" } else { "UNHEALTHY" };
                    format!("{} {verdict} (last pull {})", s.name, pull_age(s.last_pull_age))
                })
                .collect();
            status.push_str(&format!("; sources: {}", each.join(", ")));
        }
        if !report.healthy() {
            status.push_str(&format!("; UNHEALTHY: {}", report.problems().join("; ")));
        }
        status
    }

    fn check_stale_pulls(&self, report: &Report, reported: &mut BTreeMap<String, Instant>) {
        reported.retain(|name, _| report.sources.iter().any(|s| &s.name == name));
        for source in &report.sources {
            self.check_stale_source(source, reported);
        }
    }

    fn check_stale_source(&self, report: &SourceReport, reported: &mut BTreeMap<String, Instant>) {
        let age = report.last_pull_age;
        let stale = report.refused.is_some() || age.is_some_and(|a| a > self.alert.pull_stale_after);
        if !stale {
            reported.remove(&report.name);
            return;
        }
        if reported.get(&report.name).is_some_and(|t| t.elapsed() < STALE_REPEAT) {
            return;
        }
        let source = &report.name;
        match &report.refused {
            Some(refused) => error!(
                source,
                answer = %refused.answer,
                refused_for = ?refused.duration,
                "PullEvent has answered only with a refused parameter for longer than alert.pull_stale_after, so no event is being pulled; Tencent keeps unpulled events for 4 days. Check vod.region and vod.sub_app_id (and for v3 the app's SubAppId) against the answer."
            ),
            None => error!(
                source,
                last_success_ago = ?age.unwrap_or_default(),
                "No successful PullEvent for longer than alert.pull_stale_after. Tencent keeps unpulled events for 4 days: find out why pulls fail (see the warnings above) before events are lost."
            ),
        }
        reported.insert(report.name.clone(), Instant::now());
    }
}

/// The `daemon_state` key listing the running sources (comma-separated), for `status`.
pub const SOURCES_KEY: &str = "sources";

/// The `daemon_state` key of a source's last successful pull (unix ms, 0: none yet).
pub fn last_pull_key(source: &str) -> String {
    format!("last_pull_ok_ms.{source}")
}

/// The `daemon_state` key of a source's health verdict (`ok`, or `UNHEALTHY:` and its problems).
pub fn health_key(source: &str) -> String {
    format!("health.{source}")
}

/// Each source's pull health for `status`: which sources run, and for each its last
/// successful pull and its verdict.
fn source_state(report: &Report) -> Vec<(String, String)> {
    let names: Vec<&str> = report.sources.iter().map(|s| s.name.as_str()).collect();
    let mut state = vec![(SOURCES_KEY.to_string(), names.join(","))];
    for source in &report.sources {
        let last = source.last_pull_age.map_or(0, |age| now_ms() - age.as_millis() as i64);
        let verdict =
            if source.healthy() { "ok".to_string() } else { format!("UNHEALTHY: {}", source.problems().join("; ")) };
        state.push((last_pull_key(&source.name), last.to_string()));
        state.push((health_key(&source.name), verdict));
    }
    state
}

fn pull_age(age: Option<Duration>) -> String {
    age.map_or_else(|| "never".to_string(), |a| format!("{}s ago", a.as_secs()))
}

fn check_dead_growth(counts: &BTreeMap<String, HandlerCounts>, seen: &mut BTreeMap<String, i64>) {
    for (handler, c) in counts {
        let before = seen.get(handler).copied().unwrap_or(0);
        if c.dead > before {
            error!(handler = %handler, dead = c.dead, new = c.dead - before, "Dead deliveries are growing. Inspect them with `vod-eventd deliveries list --state dead --handler {handler}`, fix the receiver, then `vod-eventd deliveries retry --dead --handler {handler}`.");
        }
        seen.insert(handler.clone(), c.dead);
    }
}

/// Pings the systemd watchdog (when `WatchdogSec=` is set) only while the daemon is alive:
/// pulls made progress within `max_pull_age` and the store writes.
pub async fn watchdog(metrics: Arc<Metrics>, max_pull_age: Duration, shutdown: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else { return };
    let mut ticker = tokio::time::interval(period / 2);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let report = metrics.health.report(max_pull_age);
        if report.alive() {
            notify(&[NotifyState::Watchdog]);
        } else {
            debug!(problems = ?report.problems(), "Withholding the watchdog ping.");
        }
    }
}
