//! Client-side rate limits per action, so the daemon never exceeds Tencent's quotas and
//! never sees a quota error of its own making: v2 allows 1000 calls per minute per action
//! (DescribeDrmDataKey 100 per minute), API 3.0 100 per second (DescribeDrmDataKey 20).
//!
//! GCRA (`governor`) allows `burst + rate × T` calls in any window `T`; to keep every
//! sliding window within `limit`, the burst is small and the steady rate is
//! `limit - 2 × burst` per window (one burst of margin for network jitter).
//!
//! One limiter per credential (SecretId) and API, shared by every source that uses it
//! ([`LimiterPool`]): Tencent documents these limits per account and action and says
//! nothing of a split per app (sub-application) \[UNCONFIRMED\], so two apps pulled with one
//! key are assumed to spend one budget. The sources of one credential and API must agree on
//! `rate_limit_per_minute` (the config check refuses a config where they differ), so the
//! shared rate is theirs; a reload that changes it restarts every source using it, and the
//! first one started again gets a new limiter at the new rate.
//!
//! DescribeDrmDataKey may be called by two processes on one account, the daemon's `drm`
//! handler and `vod-eventd keyserver` fetching missing keys: then each keeps to half of its
//! limit (`ClientSettings::drm_halved`).
//!
//! Pacing, not bursting, on purpose: a sliding-window budget spent in a burst drains a
//! backlog faster, but under steady load it spends a minute's budget in seconds and then
//! stalls — and a stalled ConfirmEvent budget lets handles pass their 30 s window.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

/// A number of calls allowed per window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    pub calls: u32,
    pub per: Duration,
}

/// v2 DescribeDrmDataKey's own limit.
pub(crate) const V2_DRM_LIMIT: Limit = Limit { calls: 100, per: Duration::from_secs(60) };
/// v3 DescribeDrmDataKey's own limit.
pub(crate) const V3_DRM_LIMIT: Limit = Limit { calls: 20, per: Duration::from_secs(1) };

pub(crate) struct ActionLimiter {
    per_action: DefaultKeyedRateLimiter<&'static str>,
    drm: DefaultDirectRateLimiter,
}

fn quota(limit: Limit) -> Quota {
    let burst = (limit.calls / 100).max(1);
    let steady = limit.calls.saturating_sub(2 * burst).max(1);
    Quota::with_period(limit.per / steady)
        .expect("period is non-zero")
        .allow_burst(NonZeroU32::new(burst).expect("burst >= 1"))
}

impl ActionLimiter {
    pub(crate) fn new(limit: Limit, drm_limit: Limit) -> Self {
        // A configured limit below DescribeDrmDataKey's own applies to it too.
        let drm_limit =
            if limit.calls as f64 / limit.per.as_secs_f64() < drm_limit.calls as f64 / drm_limit.per.as_secs_f64() {
                limit
            } else {
                drm_limit
            };
        ActionLimiter {
            per_action: DefaultKeyedRateLimiter::keyed(quota(limit)),
            drm: DefaultDirectRateLimiter::direct(quota(drm_limit)),
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

/// The limiter a client for `settings` uses when it shares none: v2 counts calls per
/// minute, API 3.0 per second.
pub(crate) fn for_settings(settings: &super::ClientSettings) -> ActionLimiter {
    let share = |l: Limit| match settings.drm_halved {
        true => Limit { calls: (l.calls / 2).max(1), per: l.per },
        false => l,
    };
    match settings.api {
        crate::config::ApiVersion::V2 => ActionLimiter::new(
            Limit { calls: settings.rate_limit_per_minute, per: Duration::from_secs(60) },
            share(V2_DRM_LIMIT),
        ),
        crate::config::ApiVersion::V3 => ActionLimiter::new(
            Limit { calls: (settings.rate_limit_per_minute / 60).max(1), per: Duration::from_secs(1) },
            share(V3_DRM_LIMIT),
        ),
    }
}

/// A limiter's key in the pool: the SecretId and the API.
type LimiterKey = (String, crate::config::ApiVersion);
/// What a pooled limiter was built for: the rate per minute, and a halved DescribeDrmDataKey.
type BuiltFor = (u32, bool);

/// The limiters of the daemon's clients, one per (SecretId, API), shared by every source
/// using that credential.
#[derive(Default)]
pub struct LimiterPool {
    /// By (SecretId, API): the rate (and DescribeDrmDataKey share) it was built for, and the limiter.
    limiters: Mutex<HashMap<LimiterKey, (BuiltFor, Arc<ActionLimiter>)>>,
}

impl LimiterPool {
    /// The limiter for the credential and API of `settings`: the shared one, or a new one
    /// if there is none yet or it was built for another rate (a reload changed it).
    pub(crate) fn get(&self, settings: &super::ClientSettings) -> Arc<ActionLimiter> {
        let key = (settings.secret_id.clone(), settings.api);
        let rate = (settings.rate_limit_per_minute, settings.drm_halved);
        let mut limiters = self.limiters.lock().expect("limiter pool mutex poisoned");
        match limiters.get(&key) {
            Some((built_for, limiter)) if *built_for == rate => limiter.clone(),
            _ => {
                let limiter = Arc::new(for_settings(settings));
                limiters.insert(key, (rate, limiter.clone()));
                limiter
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn one_limiter_per_secret_id_and_api_rebuilt_when_the_rate_changes() {
        let vod = |extra: &str| {
            let text = format!("[vod]\nsecret_id = \"AKID1\"\nsecret_key = \"k\"\n{extra}");
            let config: crate::config::Config = figment::Figment::new()
                .merge(<figment::providers::Toml as figment::providers::Format>::string(&text))
                .extract()
                .unwrap();
            super::super::ClientSettings::from_vod(&config.vod).unwrap()
        };
        let pool = LimiterPool::default();
        let first = pool.get(&vod("sub_app_id = 1\n"));
        assert!(Arc::ptr_eq(&first, &pool.get(&vod("sub_app_id = 2\n"))), "two apps, one credential: shared");
        assert!(!Arc::ptr_eq(&first, &pool.get(&vod("api = \"v3\"\n"))), "another API: its own");
        let slower = pool.get(&vod("rate_limit_per_minute = 300\n"));
        assert!(!Arc::ptr_eq(&first, &slower), "a new rate (a reload): a new limiter");
        assert!(Arc::ptr_eq(&slower, &pool.get(&vod("sub_app_id = 3\nrate_limit_per_minute = 300\n"))));
    }

    #[tokio::test]
    async fn a_halved_drm_limit_is_its_own_limiter_at_half_the_rate() {
        let text = "[vod]\nsecret_id = \"AKID1\"\nsecret_key = \"k\"\napi = \"v3\"\n";
        let config: crate::config::Config = figment::Figment::new()
            .merge(<figment::providers::Toml as figment::providers::Format>::string(text))
            .extract()
            .unwrap();
        let full = super::super::ClientSettings::from_vod(&config.vod).unwrap();
        let halved = super::super::ClientSettings { drm_halved: true, ..full.clone() };
        let pool = LimiterPool::default();
        assert!(!Arc::ptr_eq(&pool.get(&full), &pool.get(&halved)), "a share of its own");
        // 10/s: a burst of 1, then one every 1/8 s.
        let limiter = for_settings(&halved);
        let start = Instant::now();
        for _ in 0..9 {
            limiter.until_ready("DescribeDrmDataKey").await;
        }
        assert!(start.elapsed() >= Duration::from_millis(950), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn never_more_than_the_limit_in_a_window() {
        // 600/min: burst 6, then one call every 60/588 s.
        let limiter = ActionLimiter::new(Limit { calls: 600, per: Duration::from_secs(60) }, V2_DRM_LIMIT);
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
