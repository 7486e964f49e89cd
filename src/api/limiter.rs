//! Client-side rate limits per action, so the daemon never exceeds Tencent's quotas
//! (1000 calls/min per action for PullEvent and ConfirmEvent; DescribeDrmDataKey is
//! documented at 100/min) and never sees a 4400 of its own making.
//!
//! GCRA (`governor`) allows `burst + rate × T` calls in any window `T`; to keep every
//! sliding minute within `limit`, the burst is small and the steady rate is
//! `limit - 2 × burst` per minute (one burst of margin for network jitter).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

/// v2 DescribeDrmDataKey's own limit, calls per minute.
pub(crate) const V2_DRM_LIMIT_PER_MINUTE: u32 = 100;
/// v3 DescribeDrmDataKey's own limit (20 per second), calls per minute.
pub(crate) const V3_DRM_LIMIT_PER_MINUTE: u32 = 1200;

pub(crate) struct ActionLimiter {
    per_action: DefaultKeyedRateLimiter<&'static str>,
    drm: DefaultDirectRateLimiter,
}

fn quota(limit_per_minute: u32) -> Quota {
    let burst = (limit_per_minute / 100).max(1);
    let steady = limit_per_minute.saturating_sub(2 * burst).max(1);
    Quota::with_period(Duration::from_secs(60) / steady)
        .expect("period is non-zero")
        .allow_burst(NonZeroU32::new(burst).expect("burst >= 1"))
}

impl ActionLimiter {
    pub(crate) fn new(limit_per_minute: u32, drm_limit_per_minute: u32) -> Self {
        ActionLimiter {
            per_action: DefaultKeyedRateLimiter::keyed(quota(limit_per_minute)),
            drm: DefaultDirectRateLimiter::direct(quota(limit_per_minute.min(drm_limit_per_minute))),
        }
    }

    pub(crate) async fn until_ready(&self, action: &'static str) {
        if action == "DescribeDrmDataKey" {
            self.drm.until_ready().await;
        } else {
            self.per_action.until_key_ready(&action).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn never_more_than_the_limit_in_a_window() {
        // 600/min: burst 6, then one call every 60/588 s.
        let limiter = ActionLimiter::new(600, V2_DRM_LIMIT_PER_MINUTE);
        let start = Instant::now();
        for _ in 0..26 {
            limiter.until_ready("PullEvent").await;
        }
        let elapsed = start.elapsed();
        // 20 calls beyond the burst need at least 19 periods.
        assert!(elapsed >= Duration::from_secs(60) / 588 * 19, "{elapsed:?}");
        // Another action has its own budget.
        let t = Instant::now();
        limiter.until_ready("ConfirmEvent").await;
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
