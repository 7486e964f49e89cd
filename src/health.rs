//! Is the daemon healthy? Pulls must be succeeding, the last successful pull recent, the
//! store writable, and the app in PULL mode (as far as the event-configuration check
//! knows; that one does not stop the watchdog). Read by `/healthz`, the systemd watchdog
//! and STATUS= lines.
//!
//! A pull answered with a refused parameter (a wrong `vod.region` or `vod.sub_app_id`) is
//! an answer, so it keeps the watchdog fed; once nothing but refusals has come for
//! `alert.pull_stale_after`, the daemon is unhealthy and says which answer it got.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::store::now_ms;

/// Health flags, updated by the tasks that know.
#[derive(Debug, Default)]
pub struct Health {
    last_pull_ok_ms: AtomicI64,
    pull_failing: AtomicBool,
    /// One bit per [`StoreWriter`] whose latest write failed.
    store_failing: AtomicU8,
    started_ms: AtomicI64,
    /// Refused pulls since the last successful one.
    refusals: Mutex<Option<Refusals>>,
    /// How long refusals may last before they make the daemon unhealthy (0: never).
    refusals_limit_ms: AtomicI64,
    /// Why the app's event configuration keeps events from the queue (a mode not PULL).
    account: Mutex<Option<String>>,
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
    /// The dispatcher claiming deliveries.
    Dispatch = 2,
    /// The dispatcher's recorder writing attempt outcomes.
    Record = 4,
}

/// A health verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The store accepts writes.
    pub store_ok: bool,
    /// The store accepts pulled events (false: nothing is being confirmed).
    pub events_ok: bool,
    /// The latest pull succeeded.
    pub pull_ok: bool,
    /// A pull succeeded within `max_pull_age` (or the daemon started less than that ago).
    pub pull_recent: bool,
    /// Time since the last successful pull (`None` before the first).
    pub last_pull_age: Option<Duration>,
    /// Only refusals for longer than `alert.pull_stale_after`.
    pub refused: Option<Refused>,
    /// The app's event configuration keeps its events from the queue.
    pub account: Option<String>,
}

impl Report {
    /// Healthy for `/healthz`: pulls succeed, recently, the store writes, and the app's
    /// events go to the queue.
    pub fn healthy(&self) -> bool {
        self.store_ok && self.pull_ok && self.pull_recent && self.refused.is_none() && self.account.is_none()
    }

    /// Healthy enough for the systemd watchdog: the pull loop has made progress within
    /// `max_pull_age` and the store writes (one failed pull is not a reason to restart).
    pub fn alive(&self) -> bool {
        self.store_ok && self.pull_recent
    }

    /// What is wrong, for people.
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
        if !self.pull_ok {
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

impl Health {
    /// Records the start time (a fresh daemon is given `max_pull_age` to make its first pull).
    pub fn started(&self) {
        self.started_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Refusals lasting longer than this make the daemon unhealthy (`alert.pull_stale_after`).
    pub fn set_refusals_limit(&self, limit: Duration) {
        self.refusals_limit_ms.store(limit.as_millis() as i64, Ordering::Relaxed);
    }

    /// A pull succeeded.
    pub fn pull_ok(&self) {
        self.last_pull_ok_ms.store(now_ms(), Ordering::Relaxed);
        self.pull_failing.store(false, Ordering::Relaxed);
        *self.refusals.lock().expect("health mutex poisoned") = None;
    }

    /// A pull was answered with a refused parameter; true if this is the first since the
    /// last success.
    pub fn pull_refused(&self, answer: String) -> bool {
        let now = now_ms();
        self.pull_failing.store(false, Ordering::Relaxed);
        let mut refusals = self.refusals.lock().expect("health mutex poisoned");
        let since_ms = refusals.as_ref().map_or(now, |r| r.since_ms);
        let first = refusals.is_none();
        *refusals = Some(Refusals { since_ms, latest_ms: now, answer });
        first
    }

    /// Why the app's events do not reach the queue, or `None` once they do.
    pub fn set_account_problem(&self, problem: Option<String>) {
        *self.account.lock().expect("health mutex poisoned") = problem;
    }

    /// A pull failed.
    pub fn pull_failed(&self) {
        self.pull_failing.store(true, Ordering::Relaxed);
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

    /// Unix ms of the last successful pull, 0 if none.
    pub fn last_pull_ok_ms(&self) -> i64 {
        self.last_pull_ok_ms.load(Ordering::Relaxed)
    }

    /// The verdict now.
    pub fn report(&self, max_pull_age: Duration) -> Report {
        let now = now_ms();
        let last = self.last_pull_ok_ms();
        let refusals = self.refusals.lock().expect("health mutex poisoned").clone();
        // A refusal is an answer: the pull loop is alive.
        let answered = refusals.as_ref().map_or(last, |r| r.latest_ms.max(last));
        let reference = if answered > 0 { answered } else { self.started_ms.load(Ordering::Relaxed) };
        let limit = self.refusals_limit_ms.load(Ordering::Relaxed);
        let refused = refusals
            .filter(|r| limit > 0 && now - r.since_ms > limit)
            .map(|r| Refused { duration: Duration::from_millis((now - r.since_ms) as u64), answer: r.answer });
        let store_failing = self.store_failing.load(Ordering::Relaxed);
        Report {
            store_ok: store_failing == 0,
            events_ok: store_failing & StoreWriter::Pull as u8 == 0,
            pull_ok: !self.pull_failing.load(Ordering::Relaxed),
            pull_recent: now - reference <= max_pull_age.as_millis() as i64,
            last_pull_age: (last > 0).then(|| Duration::from_millis((now - last).max(0) as u64)),
            refused,
            account: self.account.lock().expect("health mutex poisoned").clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_only_when_pulls_succeed_recently_and_the_store_writes() {
        let minute = Duration::from_secs(60);
        let h = Health::default();
        h.started();
        assert!(h.report(minute).healthy(), "a fresh daemon gets time for its first pull");
        h.pull_ok();
        assert!(h.report(minute).healthy());
        h.pull_failed();
        let r = h.report(minute);
        assert!(!r.healthy() && r.alive(), "one failed pull: unhealthy, but no reason to restart");
        h.pull_ok();
        h.store_writable(StoreWriter::Pull, false);
        h.store_writable(StoreWriter::Dispatch, false);
        let r = h.report(minute);
        assert!(!r.healthy() && !r.alive() && r.problems()[0].contains("nothing is being confirmed"));
        h.store_writable(StoreWriter::Pull, true);
        let r = h.report(minute);
        assert!(
            !r.healthy() && r.problems()[0].contains("handlers are paused"),
            "one writer's success hides no other's failure"
        );
        h.store_writable(StoreWriter::Dispatch, true);
        assert!(h.report(minute).healthy());
        let stale = Health::default();
        stale.started_ms.store(now_ms() - 120_000, Ordering::Relaxed);
        let r = stale.report(minute);
        assert!(!r.alive() && r.problems()[0].contains("no successful pull yet"), "{r:?}");
    }

    #[test]
    fn refusals_keep_the_loop_alive_and_turn_unhealthy_only_after_the_limit() {
        let minute = Duration::from_secs(60);
        let h = Health::default();
        h.started_ms.store(now_ms() - 120_000, Ordering::Relaxed);
        h.set_refusals_limit(Duration::from_secs(3600));
        assert!(h.pull_refused("4000 (Region)".into()));
        assert!(!h.pull_refused("4000 (Region)".into()), "one streak");
        assert!(h.report(minute).healthy() && h.report(minute).alive(), "a refusal is an answer");
        h.refusals.lock().unwrap().as_mut().unwrap().since_ms -= 3_601_000;
        let r = h.report(minute);
        assert!(!r.healthy() && r.alive(), "{r:?}");
        assert!(r.problems().iter().any(|p| p.contains("4000 (Region)") && p.contains("vod.region")), "{r:?}");
        h.pull_ok();
        assert!(h.report(minute).healthy(), "a success ends the streak");
    }

    #[test]
    fn an_app_in_push_mode_is_unhealthy_but_alive_until_it_is_pull() {
        let minute = Duration::from_secs(60);
        let h = Health::default();
        h.started();
        h.pull_ok();
        h.set_account_problem(Some("app 1 is in PUSH mode".into()));
        let r = h.report(minute);
        assert!(!r.healthy() && r.alive() && r.problems() == ["app 1 is in PUSH mode"], "{r:?}");
        h.set_account_problem(None);
        assert!(h.report(minute).healthy());
    }
}
