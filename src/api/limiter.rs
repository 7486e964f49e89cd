//! Client-side rate limits per action, so the daemon never exceeds Tencent's quotas and
//! never sees a quota error of its own making: v2 allows 1000 calls per minute per action
//! (DescribeDrmDataKey 100 per minute), API 3.0 100 per second (DescribeDrmDataKey 20).
//!
//! A sliding-window log per action: a call may go when fewer than the allowed number were
//! made in the last window, otherwise it waits until the oldest leaves the window. This is
//! the strictest reading of "N calls per window" (no window ever holds more), and it still
//! lets a backlog after an outage drain at full speed until the budget is spent, instead of
//! trickling at the average rate. One call in a hundred is kept in reserve for clock and
//! network jitter between our count and Tencent's.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A number of calls allowed per window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    pub calls: u32,
    pub per: Duration,
}

impl Limit {
    /// Calls actually allowed per window: the limit less a 1 % reserve (at least one call).
    fn allowed(self) -> usize {
        (self.calls - (self.calls / 100).max(1).min(self.calls - 1)) as usize
    }

    fn per_second(self) -> f64 {
        f64::from(self.calls) / self.per.as_secs_f64()
    }
}

/// v2 DescribeDrmDataKey's own limit.
pub(crate) const V2_DRM_LIMIT: Limit = Limit { calls: 100, per: Duration::from_secs(60) };
/// v3 DescribeDrmDataKey's own limit.
pub(crate) const V3_DRM_LIMIT: Limit = Limit { calls: 20, per: Duration::from_secs(1) };

pub(crate) struct ActionLimiter {
    limit: Limit,
    drm_limit: Limit,
    calls: Mutex<HashMap<&'static str, VecDeque<Instant>>>,
}

impl ActionLimiter {
    pub(crate) fn new(limit: Limit, drm_limit: Limit) -> Self {
        assert!(limit.calls > 0 && drm_limit.calls > 0, "limits are validated to be positive");
        // A configured limit below DescribeDrmDataKey's own applies to it too.
        let drm_limit = if limit.per_second() < drm_limit.per_second() { limit } else { drm_limit };
        ActionLimiter { limit, drm_limit, calls: Mutex::new(HashMap::new()) }
    }

    /// Waits until `action` may be called, and counts the call.
    pub(crate) async fn until_ready(&self, action: &'static str) {
        let limit = if action == "DescribeDrmDataKey" { self.drm_limit } else { self.limit };
        loop {
            let wait = {
                let mut calls = self.calls.lock().expect("limiter mutex poisoned");
                let window = calls.entry(action).or_default();
                let now = Instant::now();
                while window.front().is_some_and(|t| now.duration_since(*t) >= limit.per) {
                    window.pop_front();
                }
                if window.len() < limit.allowed() {
                    window.push_back(now);
                    return;
                }
                (window[0] + limit.per).saturating_duration_since(now)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_window_ever_holds_more_than_allowed_and_bursts_are_immediate() {
        let per = Duration::from_millis(200);
        let limiter = ActionLimiter::new(Limit { calls: 10, per }, V2_DRM_LIMIT);
        let mut sent = Vec::new();
        for _ in 0..30 {
            limiter.until_ready("PullEvent").await;
            sent.push(Instant::now());
        }
        // 9 allowed per window (one in reserve): call i+9 is at least a window after call i.
        for i in 0..sent.len() - 9 {
            assert!(sent[i + 9] - sent[i] >= per, "calls {i} and {} share a window", i + 9);
        }
        assert!(sent[8] - sent[0] < per, "a burst within the budget does not wait");
        // Another action has its own budget.
        let t = Instant::now();
        limiter.until_ready("ConfirmEvent").await;
        assert!(t.elapsed() < per);
    }

    #[test]
    fn the_reserve_is_one_percent_and_never_everything() {
        assert_eq!(Limit { calls: 1000, per: Duration::from_secs(60) }.allowed(), 990);
        assert_eq!(Limit { calls: 100, per: Duration::from_secs(1) }.allowed(), 99);
        assert_eq!(Limit { calls: 1, per: Duration::from_secs(1) }.allowed(), 1);
    }
}
