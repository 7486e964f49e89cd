//! The daemon's clocks. The wall clock ([`crate::store::now_ms`]) stamps what must mean the
//! same after a restart and on other hosts (when an event arrived, when a delivery was
//! created). It can step (NTP, an operator, a VM resumed), so what this process only
//! measures for itself is judged by [`steady_ms`]: the wall clock as it was when the process
//! started, advanced by a monotonic clock, which never steps.

use std::sync::OnceLock;
use std::time::Instant;

/// The wall clock at the first call, and the monotonic instant it was read at.
fn anchor() -> &'static (Instant, i64) {
    static ANCHOR: OnceLock<(Instant, i64)> = OnceLock::new();
    ANCHOR.get_or_init(|| (Instant::now(), crate::store::now_ms()))
}

/// Unix ms that never step: the wall clock at start plus the monotonic time since. Leases
/// this process takes are written and judged by it, so a step of the wall clock neither
/// expires them early nor keeps them late.
pub fn steady_ms() -> i64 {
    let (at, wall) = anchor();
    wall + at.elapsed().as_millis() as i64
}

/// The time due deliveries and retries are judged by: the later of the wall clock and
/// [`steady_ms`]. After a backward step the steady clock carries on, so retries scheduled
/// before it are not held back by the step; after a forward step deliveries stamped by the
/// wall clock (by another process, or before a restart) are due as they should be, and
/// retries at worst come early.
pub fn due_ms() -> i64 {
    steady_ms().max(crate::store::now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_time_follows_the_wall_clock_from_the_start_and_never_goes_back() {
        let first = steady_ms();
        assert!((first - crate::store::now_ms()).abs() < 1_000);
        let later = steady_ms();
        assert!(later >= first);
        assert!(due_ms() >= later);
    }
}
