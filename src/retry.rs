//! Handler retry policy, as data plus one pure function: the delay after a failed attempt
//! comes from `dispatch.retry_schedule` (the last step repeats), ±20 % jitter, and is
//! stretched to honour a receiver's `Retry-After` (capped by `dispatch.max_retry_after`).
//! A delivery older than `dispatch.max_age` at its next attempt is dead instead.

use std::time::Duration;

use rand::Rng;

/// Retry settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the 1st, 2nd, ... failed attempt; the last repeats.
    pub schedule: Vec<Duration>,
    /// A delivery is dead once its next attempt would be this long after it was created.
    pub max_age: Duration,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// The delay before the next attempt after `failed_attempts` failures (≥ 1), or `None`
    /// when the delivery should be dead (it would exceed `max_age`, `age` being its age now).
    pub fn next_delay(
        &self,
        failed_attempts: u32,
        age: Duration,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        let index = (failed_attempts.max(1) - 1) as usize;
        let base = *self.schedule.get(index).or(self.schedule.last())?;
        let mut delay = crate::backoff::jitter(base, rng);
        if let Some(wanted) = retry_after {
            delay = delay.max(wanted.min(self.max_retry_after));
        }
        (age + delay <= self.max_age).then_some(delay)
    }
}

/// The default schedule: 5s, 30s, 2m, 10m, 30m, 1h, 2h, 4h, 8h, then every 8h, for 3 days.
pub fn default_schedule() -> Vec<Duration> {
    [5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800].into_iter().map(Duration::from_secs).collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            schedule: default_schedule(),
            max_age: Duration::from_secs(3 * 86400),
            max_retry_after: Duration::from_secs(3600),
        }
    }

    fn within(d: Duration, base: u64) -> bool {
        d >= Duration::from_secs(base).mul_f64(0.8) && d <= Duration::from_secs(base).mul_f64(1.2)
    }

    #[test]
    fn follows_the_schedule_then_repeats_the_last_step() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let p = policy();
        for (failures, base) in [(1, 5), (2, 30), (3, 120), (9, 28800), (15, 28800)] {
            let d = p.next_delay(failures, Duration::ZERO, None, &mut rng).unwrap();
            assert!(within(d, base), "after {failures} failures: {d:?}");
        }
    }

    #[test]
    fn retry_after_stretches_but_is_capped() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let p = policy();
        assert_eq!(
            p.next_delay(1, Duration::ZERO, Some(Duration::from_secs(120)), &mut rng),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            p.next_delay(1, Duration::ZERO, Some(Duration::from_secs(86400)), &mut rng),
            Some(Duration::from_secs(3600))
        );
        let short = p.next_delay(2, Duration::ZERO, Some(Duration::from_secs(1)), &mut rng).unwrap();
        assert!(within(short, 30), "a shorter Retry-After never shortens the schedule: {short:?}");
    }

    #[test]
    fn past_max_age_is_dead() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let p = policy();
        assert_eq!(p.next_delay(12, Duration::from_secs(3 * 86400 - 60), None, &mut rng), None);
        let empty = RetryPolicy { schedule: vec![], ..policy() };
        assert_eq!(empty.next_delay(1, Duration::ZERO, None, &mut rng), None, "no schedule: no retries");
    }
}
