//! Is the daemon healthy? Pulls must be succeeding, the last successful pull recent, and
//! the store writable. Read by `/healthz`, the systemd watchdog and STATUS= lines.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use crate::store::now_ms;

/// Health flags, updated by the tasks that know.
#[derive(Debug, Default)]
pub struct Health {
    last_pull_ok_ms: AtomicI64,
    pull_failing: AtomicBool,
    store_failing: AtomicBool,
    started_ms: AtomicI64,
}

/// A health verdict with its reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// True when nothing is wrong.
    pub healthy: bool,
    /// What is wrong, for people.
    pub problems: Vec<String>,
    /// Seconds since the last successful pull (`None` before the first).
    pub last_pull_age: Option<Duration>,
}

impl Health {
    /// Records the start time (a fresh daemon is given `max_pull_age` to make its first pull).
    pub fn started(&self) {
        self.started_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A pull succeeded.
    pub fn pull_ok(&self) {
        self.last_pull_ok_ms.store(now_ms(), Ordering::Relaxed);
        self.pull_failing.store(false, Ordering::Relaxed);
    }

    /// A pull failed.
    pub fn pull_failed(&self) {
        self.pull_failing.store(true, Ordering::Relaxed);
    }

    /// The store accepted (true) or refused (false) a write.
    pub fn store_writable(&self, ok: bool) {
        self.store_failing.store(!ok, Ordering::Relaxed);
    }

    /// Unix ms of the last successful pull, 0 if none.
    pub fn last_pull_ok_ms(&self) -> i64 {
        self.last_pull_ok_ms.load(Ordering::Relaxed)
    }

    /// The verdict: healthy when the last pull succeeded within `max_pull_age` and the
    /// store is writable.
    pub fn report(&self, max_pull_age: Duration) -> Report {
        let now = now_ms();
        let last = self.last_pull_ok_ms();
        let last_pull_age = (last > 0).then(|| Duration::from_millis((now - last).max(0) as u64));
        let mut problems = Vec::new();
        if self.store_failing.load(Ordering::Relaxed) {
            problems.push(
                "the store refuses writes (disk full, read-only or I/O errors); nothing is being confirmed".to_string(),
            );
        }
        if self.pull_failing.load(Ordering::Relaxed) {
            problems.push("PullEvent is failing".to_string());
        }
        let reference = if last > 0 { last } else { self.started_ms.load(Ordering::Relaxed) };
        if now - reference > max_pull_age.as_millis() as i64 {
            problems.push(match last_pull_age {
                Some(age) => format!("no successful pull for {}s", age.as_secs()),
                None => "no successful pull yet".to_string(),
            });
        }
        Report { healthy: problems.is_empty(), problems, last_pull_age }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_only_when_pulls_succeed_recently_and_the_store_writes() {
        let h = Health::default();
        h.started();
        assert!(h.report(Duration::from_secs(60)).healthy, "a fresh daemon gets time for its first pull");
        h.pull_ok();
        assert!(h.report(Duration::from_secs(60)).healthy);
        h.pull_failed();
        assert!(!h.report(Duration::from_secs(60)).healthy);
        h.pull_ok();
        h.store_writable(false);
        let r = h.report(Duration::from_secs(60));
        assert!(!r.healthy && r.problems[0].contains("store"));
        h.store_writable(true);
        assert!(!h.report(Duration::ZERO).healthy || h.report(Duration::ZERO).last_pull_age == Some(Duration::ZERO));
    }
}
