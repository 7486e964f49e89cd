//! Is the daemon healthy? The store must be writable and, for every source, pulls must be
//! succeeding, the last successful pull recent, the credentials accepted and the app in
//! PULL mode (as far as the event-configuration check knows; that one does not stop the
//! watchdog). One unhealthy source makes the daemon unhealthy, naming the source; the
//! others keep running. No source at all (`sources = "all"` found no enabled app, or could
//! not list them yet) is unhealthy too, with the reason. Read by `/healthz`, the systemd watchdog
//! and STATUS= lines.
//!
//! A pull answered with a refused parameter (a wrong `vod.region` or `vod.sub_app_id`) is
//! an answer, so it keeps the watchdog fed; once nothing but refusals has come for
//! `alert.pull_stale_after`, the daemon is unhealthy and says which answer it got.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::now_ms;

/// Health flags, updated by the tasks that know: the store's writers here, the pull side
/// per source ([`SourceHealth`]).
#[derive(Debug, Default)]
pub struct Health {
    /// One bit per [`StoreWriter`] whose latest write failed.
    store_failing: AtomicU8,
    /// How long refusals may last before they make a source unhealthy (0: never).
    refusals_limit_ms: AtomicI64,
    /// Each running source's pull health, by name.
    sources: Mutex<BTreeMap<String, Arc<SourceHealth>>>,
    /// Why there is no source to pull (`sources = "all"` found none, or could not list them).
    no_sources: Mutex<Option<String>>,
}

/// One source's pull health.
#[derive(Debug, Default)]
pub struct SourceHealth {
    last_pull_ok_ms: AtomicI64,
    pull_failing: AtomicBool,
    /// When the source started pulling (it is given `max_pull_age` for its first pull).
    started_ms: AtomicI64,
    /// Refused pulls since the last successful one.
    refusals: Mutex<Option<Refusals>>,
    /// The credentials are refused (the latest answer), until a pull succeeds.
    credentials: Mutex<Option<Refusals>>,
    /// Why the app's event configuration keeps events from the queue (a mode not PULL).
    account: Mutex<Option<String>>,
    /// Pulled events cleared `account`, and no check has answered since.
    account_cleared_by_events: AtomicBool,
    /// A check after pulled events cleared `account` still found the mode not PULL (the
    /// events were queued before the switch): events clear it no more until a check finds
    /// PULL.
    account_events_overruled: AtomicBool,
    /// Asks the source's event-configuration check to check again now.
    account_recheck: tokio::sync::Notify,
}

#[derive(Debug, Clone)]
struct Refusals {
    since_ms: i64,
    latest_ms: i64,
    answer: String,
}

/// Pulls have been answered with nothing but a refused parameter for too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// For how long.
    pub duration: Duration,
    /// The latest answer.
    pub answer: String,
}

/// Who writes to the store. Each reports its own success or failure, so one writer's
/// success never hides another's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreWriter {
    /// The puller storing pulled events.
    Pull = 1,
    /// The dispatcher writing attempt outcomes and claiming deliveries.
    Dispatch = 2,
}

/// A health verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The store accepts writes.
    pub store_ok: bool,
    /// The store accepts pulled events (false: nothing is being confirmed).
    pub events_ok: bool,
    /// Each source's verdict, by name.
    pub sources: Vec<SourceReport>,
    /// Why there is no source to pull, if that is so.
    pub no_sources: Option<String>,
}

/// One source's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceReport {
    /// The source's name.
    pub name: String,
    /// The latest pull succeeded.
    pub pull_ok: bool,
    /// The pull loop got an answer within `max_pull_age` (or started less than that ago).
    pub pull_recent: bool,
    /// Time since the last successful pull (`None` before the first).
    pub last_pull_age: Option<Duration>,
    /// Only refusals for longer than `alert.pull_stale_after`.
    pub refused: Option<Refused>,
    /// The credentials are refused: the latest answer.
    pub credentials_refused: Option<String>,
    /// The app's event configuration keeps its events from the queue.
    pub account: Option<String>,
}

impl SourceReport {
    /// Pulls succeed, recently, and the app's events go to the queue.
    pub fn healthy(&self) -> bool {
        self.pull_ok
            && self.pull_recent
            && self.refused.is_none()
            && self.credentials_refused.is_none()
            && self.account.is_none()
    }

    /// What is wrong with this source, for people.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(answer) = &self.credentials_refused {
            problems.push(format!("its credentials are refused ({answer}); check its secret_id and secret_key"));
        } else if !self.pull_ok {
            problems.push("PullEvent is failing".to_string());
        }
        if let Some(r) = &self.refused {
            problems.push(format!(
                "PullEvent has answered only with a refusal for {}s ({}); check vod.region and vod.sub_app_id",
                r.duration.as_secs(),
                r.answer
            ));
        }
        if let Some(account) = &self.account {
            problems.push(account.clone());
        }
        if !self.pull_recent {
            problems.push(match self.last_pull_age {
                Some(age) => format!("no successful pull for {}s", age.as_secs()),
                None => "no successful pull yet".to_string(),
            });
        }
        problems
    }
}

impl Report {
    /// Healthy for `/healthz`: the store writes and every source is healthy.
    pub fn healthy(&self) -> bool {
        self.store_ok && self.no_sources.is_none() && self.sources.iter().all(SourceReport::healthy)
    }

    /// Healthy enough for the systemd watchdog: the store writes and every source's pull
    /// loop got an answer within `max_pull_age` (refusals are answers: a restart would not
    /// fix them, and one source's refused credentials must not restart the others).
    pub fn alive(&self) -> bool {
        self.store_ok && self.sources.iter().all(|s| s.pull_recent)
    }

    /// The most recent successful pull of any source.
    pub fn last_pull_age(&self) -> Option<Duration> {
        self.sources.iter().filter_map(|s| s.last_pull_age).min()
    }

    /// What is wrong, for people; a source's problems are prefixed with its name.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.events_ok {
            problems.push(
                "the store refuses writes (disk full, read-only or I/O errors); nothing is being confirmed".to_string(),
            );
        } else if !self.store_ok {
            problems.push(
                "the store refuses delivery writes (disk full, read-only or I/O errors); handlers are paused"
                    .to_string(),
            );
        }
        problems.extend(self.no_sources.clone());
        for source in &self.sources {
            problems.extend(source.problems().into_iter().map(|p| format!("source {}: {p}", source.name)));
        }
        problems
    }
}

impl SourceHealth {
    /// A pull succeeded.
    pub fn pull_ok(&self) {
        self.last_pull_ok_ms.store(now_ms(), Ordering::Relaxed);
        self.pull_failing.store(false, Ordering::Relaxed);
        *self.refusals.lock().expect("health mutex poisoned") = None;
        *self.credentials.lock().expect("health mutex poisoned") = None;
    }

    /// A pull was answered with a refused parameter; true if this is the first since the
    /// last success.
    pub fn pull_refused(&self, answer: String) -> bool {
        self.pull_failing.store(false, Ordering::Relaxed);
        streak(&self.refusals, answer)
    }

    /// A pull was answered with refused credentials; true if this is the first since the
    /// last success.
    pub fn credentials_refused(&self, answer: String) -> bool {
        self.pull_failing.store(true, Ordering::Relaxed);
        streak(&self.credentials, answer)
    }

    /// Why the app's events do not reach the queue, or `None` once they do (the
    /// event-configuration check's finding).
    pub fn set_account_problem(&self, problem: Option<String>) {
        let mut account = self.account.lock().expect("health mutex poisoned");
        let after_events = self.account_cleared_by_events.swap(false, Ordering::Relaxed);
        let overruled = after_events || self.account_events_overruled.load(Ordering::Relaxed);
        self.account_events_overruled.store(problem.is_some() && overruled, Ordering::Relaxed);
        *account = problem;
    }

    /// Events were pulled from this source: only an app in PULL mode feeds the queue, so
    /// that proves the mode, and the account problem clears at once (true if it did). The
    /// check is asked to confirm now; if it still finds another mode (events queued before
    /// a switch away from PULL), the problem returns and pulled events no longer clear it
    /// until a check finds PULL.
    pub fn events_pulled(&self) -> bool {
        let mut account = self.account.lock().expect("health mutex poisoned");
        if account.is_none() || self.account_events_overruled.load(Ordering::Relaxed) {
            return false;
        }
        *account = None;
        self.account_cleared_by_events.store(true, Ordering::Relaxed);
        self.account_recheck.notify_one();
        true
    }

    /// Asks the event-configuration check to check again now (not waiting for
    /// `account.check_interval`).
    pub fn request_account_check(&self) {
        self.account_recheck.notify_one();
    }

    /// Resolves when a check was asked for with [`SourceHealth::request_account_check`] or
    /// by [`SourceHealth::events_pulled`] (a request made while nobody waited counts).
    pub async fn account_check_requested(&self) {
        self.account_recheck.notified().await
    }

    /// A pull failed.
    pub fn pull_failed(&self) {
        self.pull_failing.store(true, Ordering::Relaxed);
    }

    /// Unix ms of the last successful pull, 0 if none.
    pub fn last_pull_ok_ms(&self) -> i64 {
        self.last_pull_ok_ms.load(Ordering::Relaxed)
    }

    fn report(&self, name: &str, max_pull_age: Duration, refusals_limit_ms: i64) -> SourceReport {
        let now = now_ms();
        let last = self.last_pull_ok_ms();
        let refusals = self.refusals.lock().expect("health mutex poisoned").clone();
        let credentials = self.credentials.lock().expect("health mutex poisoned").clone();
        // A refusal is an answer: the pull loop is alive.
        let answered =
            [refusals.as_ref(), credentials.as_ref()].into_iter().flatten().fold(last, |a, r| a.max(r.latest_ms));
        let reference = if answered > 0 { answered } else { self.started_ms.load(Ordering::Relaxed) };
        let refused = refusals
            .filter(|r| refusals_limit_ms > 0 && now - r.since_ms > refusals_limit_ms)
            .map(|r| Refused { duration: Duration::from_millis((now - r.since_ms) as u64), answer: r.answer });
        SourceReport {
            name: name.to_string(),
            pull_ok: !self.pull_failing.load(Ordering::Relaxed),
            pull_recent: now - reference <= max_pull_age.as_millis() as i64,
            last_pull_age: (last > 0).then(|| Duration::from_millis((now - last).max(0) as u64)),
            refused,
            credentials_refused: credentials.map(|c| c.answer),
            account: self.account.lock().expect("health mutex poisoned").clone(),
        }
    }
}

/// Records one refusal of a streak; true if it starts the streak.
fn streak(slot: &Mutex<Option<Refusals>>, answer: String) -> bool {
    let now = now_ms();
    let mut slot = slot.lock().expect("health mutex poisoned");
    let since_ms = slot.as_ref().map_or(now, |r| r.since_ms);
    let first = slot.is_none();
    *slot = Some(Refusals { since_ms, latest_ms: now, answer });
    first
}

impl Health {
    /// Refusals lasting longer than this make a source unhealthy (`alert.pull_stale_after`).
    pub fn set_refusals_limit(&self, limit: Duration) {
        self.refusals_limit_ms.store(limit.as_millis() as i64, Ordering::Relaxed);
    }

    /// The health of source `name`, registered (and given `max_pull_age` for its first
    /// pull from now) if it was not.
    pub fn source(&self, name: &str) -> Arc<SourceHealth> {
        let mut sources = self.sources.lock().expect("health mutex poisoned");
        sources
            .entry(name.to_string())
            .or_insert_with(|| {
                let health = SourceHealth::default();
                health.started_ms.store(now_ms(), Ordering::Relaxed);
                Arc::new(health)
            })
            .clone()
    }

    /// Why the daemon has no source to pull, or `None` once it has some.
    pub fn set_no_sources(&self, why: Option<String>) {
        *self.no_sources.lock().expect("health mutex poisoned") = why;
    }

    /// Asks every source's event-configuration check to check again now.
    pub fn request_account_checks(&self) {
        for source in self.sources.lock().expect("health mutex poisoned").values() {
            source.request_account_check();
        }
    }

    /// Forgets a retired source.
    pub fn remove_source(&self, name: &str) {
        self.sources.lock().expect("health mutex poisoned").remove(name);
    }

    /// The store accepted (true) or refused (false) a write by `writer`.
    pub fn store_writable(&self, writer: StoreWriter, ok: bool) {
        if ok {
            self.store_failing.fetch_and(!(writer as u8), Ordering::Relaxed);
        } else {
            self.store_failing.fetch_or(writer as u8, Ordering::Relaxed);
        }
    }

    /// True while the latest write by `writer` failed.
    pub fn store_failing(&self, writer: StoreWriter) -> bool {
        self.store_failing.load(Ordering::Relaxed) & writer as u8 != 0
    }

    /// Unix ms of the last successful pull of any source, 0 if none.
    pub fn last_pull_ok_ms(&self) -> i64 {
        let sources = self.sources.lock().expect("health mutex poisoned");
        sources.values().map(|s| s.last_pull_ok_ms()).max().unwrap_or(0)
    }

    /// The verdict now.
    pub fn report(&self, max_pull_age: Duration) -> Report {
        let limit = self.refusals_limit_ms.load(Ordering::Relaxed);
        let sources: Vec<SourceReport> = {
            let sources = self.sources.lock().expect("health mutex poisoned");
            sources.iter().map(|(name, s)| s.report(name, max_pull_age, limit)).collect()
        };
        let store_failing = self.store_failing.load(Ordering::Relaxed);
        Report {
            store_ok: store_failing == 0,
            events_ok: store_failing & StoreWriter::Pull as u8 == 0,
            sources,
            no_sources: self.no_sources.lock().expect("health mutex poisoned").clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_only_when_pulls_succeed_recently_and_the_store_writes() {
        let minute = Duration::from_secs(60);
        let health = Health::default();
        let h = health.source("default");
        assert!(health.report(minute).healthy(), "a fresh source gets time for its first pull");
        h.pull_ok();
        assert!(health.report(minute).healthy());
        h.pull_failed();
        let r = health.report(minute);
        assert!(!r.healthy() && r.alive(), "one failed pull: unhealthy, but no reason to restart");
        h.pull_ok();
        health.store_writable(StoreWriter::Pull, false);
        health.store_writable(StoreWriter::Dispatch, false);
        let r = health.report(minute);
        assert!(!r.healthy() && !r.alive() && r.problems()[0].contains("nothing is being confirmed"));
        health.store_writable(StoreWriter::Pull, true);
        let r = health.report(minute);
        assert!(
            !r.healthy() && r.problems()[0].contains("handlers are paused"),
            "one writer's success hides no other's failure"
        );
        health.store_writable(StoreWriter::Dispatch, true);
        assert!(health.report(minute).healthy());
        let stale = Health::default();
        stale.source("a").started_ms.store(now_ms() - 120_000, Ordering::Relaxed);
        let r = stale.report(minute);
        assert!(!r.alive() && r.problems()[0] == "source a: no successful pull yet", "{r:?}");
    }

    #[test]
    fn refusals_keep_the_loop_alive_and_turn_unhealthy_only_after_the_limit() {
        let minute = Duration::from_secs(60);
        let health = Health::default();
        let h = health.source("default");
        h.started_ms.store(now_ms() - 120_000, Ordering::Relaxed);
        health.set_refusals_limit(Duration::from_secs(3600));
        assert!(h.pull_refused("4000 (Region)".into()));
        assert!(!h.pull_refused("4000 (Region)".into()), "one streak");
        assert!(health.report(minute).healthy() && health.report(minute).alive(), "a refusal is an answer");
        h.refusals.lock().unwrap().as_mut().unwrap().since_ms -= 3_601_000;
        let r = health.report(minute);
        assert!(!r.healthy() && r.alive(), "{r:?}");
        assert!(r.problems().iter().any(|p| p.contains("4000 (Region)") && p.contains("vod.region")), "{r:?}");
        h.pull_ok();
        assert!(health.report(minute).healthy(), "a success ends the streak");
    }

    #[test]
    fn one_source_with_refused_credentials_is_named_and_restarts_nothing() {
        let minute = Duration::from_secs(60);
        let health = Health::default();
        health.source("prod").pull_ok();
        let bad = health.source("other");
        bad.started_ms.store(now_ms() - 120_000, Ordering::Relaxed);
        assert!(bad.credentials_refused("AuthFailure.SecretIdNotFound".into()));
        let r = health.report(minute);
        assert!(!r.healthy() && r.alive(), "{r:?}");
        assert_eq!(r.problems().len(), 1, "{r:?}");
        assert!(r.problems()[0].starts_with("source other: its credentials are refused (AuthFailure"), "{r:?}");
        bad.pull_ok();
        assert!(health.report(minute).healthy());
        health.remove_source("other");
        assert_eq!(health.report(minute).sources.len(), 1);
    }

    #[test]
    fn no_sources_is_unhealthy_with_the_reason_but_restarts_nothing() {
        let minute = Duration::from_secs(60);
        let health = Health::default();
        health.set_no_sources(Some("no sources: none".into()));
        let r = health.report(minute);
        assert!(!r.healthy() && r.alive() && r.problems() == ["no sources: none"], "{r:?}");
        health.set_no_sources(None);
        assert!(health.report(minute).healthy());
    }

    #[test]
    fn an_app_in_push_mode_is_unhealthy_but_alive_until_it_is_pull() {
        let minute = Duration::from_secs(60);
        let health = Health::default();
        let h = health.source("default");
        h.pull_ok();
        h.set_account_problem(Some("app 1 is in PUSH mode".into()));
        let r = health.report(minute);
        assert!(!r.healthy() && r.alive() && r.problems() == ["source default: app 1 is in PUSH mode"], "{r:?}");
        h.set_account_problem(None);
        assert!(health.report(minute).healthy());
    }

    #[test]
    fn pulled_events_clear_a_push_mode_at_once_unless_a_later_check_overrules_them() {
        let minute = Duration::from_secs(60);
        let health = Health::default();
        let h = health.source("default");
        h.pull_ok();
        assert!(!h.events_pulled(), "nothing to clear");
        h.set_account_problem(Some("app 1 is in PUSH mode".into()));
        assert!(h.events_pulled());
        assert!(health.report(minute).healthy());
        // The check asked for says PUSH still: events queued before the switch.
        h.set_account_problem(Some("app 1 is in PUSH mode".into()));
        assert!(!h.events_pulled(), "overruled");
        assert!(!health.report(minute).healthy());
        // Another check with the same finding keeps it so; one finding PULL ends that.
        h.set_account_problem(Some("app 1 is in PUSH mode".into()));
        assert!(!h.events_pulled());
        h.set_account_problem(None);
        h.set_account_problem(Some("app 1 is in PUSH mode".into()));
        assert!(h.events_pulled(), "a new episode");
    }

    #[tokio::test]
    async fn a_requested_check_is_kept_until_the_check_waits_for_it() {
        let health = Health::default();
        let h = health.source("default");
        health.request_account_checks();
        tokio::time::timeout(Duration::from_secs(5), h.account_check_requested()).await.expect("the request was kept");
    }
}
