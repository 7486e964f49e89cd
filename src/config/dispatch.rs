//! `[dispatch]`: the handler retry policy, the dispatcher's polling and group commit, and
//! claim leases.

use std::time::Duration;

use serde::Deserialize;

/// The default `lease_margin`: a lease outlasts the handler's attempt timeout by this much,
/// so only an attempt whose outcome was lost (not a slow one) is ever swept back to pending.
pub const LEASE_MARGIN: Duration = Duration::from_secs(120);

/// `[dispatch]`: handler retry policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Delays after the 1st, 2nd, ... failed attempt; the last one repeats.
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    /// A delivery still failing this long after it was created is dead.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The longest `Retry-After` a receiver can ask for.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// How often an idle dispatcher looks for work scheduled from outside (`events replay`,
    /// `deliveries retry`, `handlers pause`/`resume`). Each look costs a stat of the
    /// write-ahead log, and a store read only if another process wrote to it. On PostgreSQL
    /// such work is announced (`NOTIFY`), and the look is only the fallback: every 30 s,
    /// or this interval if longer (this interval while the listening session is down).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long the dispatcher gathers finished attempts and free permits before writing
    /// the outcomes and the next claims in one transaction (group commit).
    #[serde(with = "humantime_serde")]
    pub batch_window: Duration,
    /// A claimed delivery's lease outlasts its handler's attempt timeout by this much; a
    /// delivery whose lease passed without an outcome (its host died) is attempted again.
    #[serde(with = "humantime_serde")]
    pub lease_margin: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            retry_schedule: crate::retry::default_schedule(),
            max_age: Duration::from_secs(3 * 86400),
            max_retry_after: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(5),
            batch_window: Duration::from_millis(20),
            lease_margin: LEASE_MARGIN,
        }
    }
}

impl DispatchConfig {
    /// The problems of `[dispatch]`.
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if self.max_age.is_zero() {
            bad("dispatch.max_age", "must be above zero".into());
        }
        if self.poll_interval.is_zero() {
            bad("dispatch.poll_interval", "must be above zero".into());
        }
        if self.batch_window > Duration::from_secs(1) {
            bad(
                "dispatch.batch_window",
                "must be at most 1s (20ms is the default; 0 writes every outcome at once)".into(),
            );
        }
    }

    /// The retry policy these settings describe.
    pub fn policy(&self) -> crate::retry::RetryPolicy {
        crate::retry::RetryPolicy {
            schedule: self.retry_schedule.clone(),
            max_age: self.max_age,
            max_retry_after: self.max_retry_after,
        }
    }
}

fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| humantime::parse_duration(s).map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}"))))
        .collect()
}
