//! Retry delays: exponential from a minimum to a maximum, with ±20 % jitter so that many
//! daemons (or many retries) do not retry in step. Pure, so it is tested without time.

use std::time::Duration;

use rand::Rng;

/// The delay before retry number `attempt` (0 = first retry).
pub fn delay(attempt: u32, min: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    jitter(exponential(attempt, min, max), rng)
}

/// [`delay`] without the jitter: `min` doubled `attempt` times, at most `max` (a process
/// waiting for its own server at start, where nothing else retries in step with it).
pub fn exponential(attempt: u32, min: Duration, max: Duration) -> Duration {
    min.saturating_mul(2u32.saturating_pow(attempt.min(30))).min(max)
}

/// `d` ±20 %.
pub fn jitter(d: Duration, rng: &mut impl Rng) -> Duration {
    d.mul_f64(rng.gen_range(0.8..=1.2))
}

/// Sleeps for `d` unless `token` is cancelled first; returns false if cancelled.
pub async fn sleep_or_cancel(d: Duration, token: &tokio_util::sync::CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = token.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::mock::StepRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn grows_then_caps_within_jitter() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(3));
        for (attempt, base_ms) in [(0, 100), (1, 200), (3, 800), (5, 3000), (40, 3000)] {
            let d = delay(attempt, min, max, &mut rng).as_millis() as u64;
            assert!(d >= base_ms * 8 / 10 && d <= base_ms * 12 / 10, "attempt {attempt}: {d} ms");
        }
    }

    #[test]
    fn jitter_spans_both_sides() {
        let low = jitter(Duration::from_secs(10), &mut StepRng::new(0, 0));
        let high = jitter(Duration::from_secs(10), &mut StepRng::new(u64::MAX, 0));
        assert!(low >= Duration::from_secs(8) && low < Duration::from_secs(10), "{low:?}");
        assert!(high > Duration::from_secs(10) && high <= Duration::from_secs(12), "{high:?}");
    }
}
