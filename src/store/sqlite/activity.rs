//! [`Activity`] on SQLite; the contract is in `store/activity.rs`.
//!
//! The last 24 hours hour by hour, for `status`: events received per hour, and failed
//! handler attempts (outcome `retry` or `dead`) per hour and handler. Both read only the
//! rows of that day, through the `received_at` index and the partial `attempts_failed` index.

use std::collections::BTreeMap;

use super::SqliteStore;
use crate::store::{Activity, Hourly, StoreError, HOURS};

const HOUR_MS: i64 = 3_600_000;

/// Events received per hour (`?1` now, `?2` an hour, `?3` the window, in ms).
/// `(now - t) / hour` is how many whole hours ago `t` was; only `t` in `(now - 24 h, now]` is read.
const EVENTS_PER_HOUR: &str = "SELECT (?1 - received_at) / ?2, count(*) FROM events
 WHERE received_at > ?1 - ?3 AND received_at <= ?1 GROUP BY 1";

/// Failed attempts per handler and hour; `outcome != 'done'` is exactly the partial index's
/// condition, which is what lets SQLite use it.
const FAILURES_PER_HOUR: &str = "SELECT d.handler, (?1 - a.started_at) / ?2, count(*)
 FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
 WHERE a.outcome != 'done' AND a.started_at > ?1 - ?3 AND a.started_at <= ?1 GROUP BY 1, 2";

/// The parameters of both queries.
fn window(now_ms: i64) -> [i64; 3] {
    [now_ms, HOUR_MS, HOUR_MS * HOURS as i64]
}

/// Puts a count `hours_ago` whole hours old into its slot.
fn add(hourly: &mut Hourly, hours_ago: i64, n: i64) {
    if let Ok(ago) = usize::try_from(hours_ago) {
        if ago < HOURS {
            hourly[HOURS - 1 - ago] += n;
        }
    }
}

#[async_trait::async_trait]
impl Activity for SqliteStore {
    fn events_per_hour(&self, now_ms: i64) -> Result<Hourly, StoreError> {
        self.run_sync(|conn| {
            let mut hourly = [0; HOURS];
            let mut stmt = conn.prepare(EVENTS_PER_HOUR)?;
            let mut rows = stmt.query(window(now_ms))?;
            while let Some(row) = rows.next()? {
                add(&mut hourly, row.get(0)?, row.get(1)?);
            }
            Ok(hourly)
        })
    }

    fn failures_per_hour(&self, now_ms: i64) -> Result<BTreeMap<String, Hourly>, StoreError> {
        self.run_sync(|conn| {
            let mut by_handler = BTreeMap::new();
            let mut stmt = conn.prepare(FAILURES_PER_HOUR)?;
            let mut rows = stmt.query(window(now_ms))?;
            while let Some(row) = rows.next()? {
                add(by_handler.entry(row.get(0)?).or_insert([0; HOURS]), row.get(1)?, row.get(2)?);
            }
            Ok(by_handler)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rusqlite::StatementStatus;

    use super::*;
    use crate::store::prelude::*;

    const NOW: i64 = 1_800_000_000_000;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
        (dir, store)
    }

    #[test]
    fn events_fall_into_the_hour_they_were_received_in() {
        let (_dir, store) = store();
        let at = [NOW, NOW - 1, NOW - HOUR_MS + 1, NOW - HOUR_MS, NOW - 23 * HOUR_MS - 1, NOW - 24 * HOUR_MS, NOW + 1];
        store
            .run_sync(|c| {
                for (i, t) in at.iter().enumerate() {
                    c.execute(
                        "INSERT INTO events (dedupe_key, event_type, content, received_at, last_seen_at)
                         VALUES (?1, 'X', '{}', ?2, ?2)",
                        rusqlite::params![vec![i as u8], t],
                    )?;
                }
                Ok(())
            })
            .unwrap();
        let hourly = store.events_per_hour(NOW).unwrap();
        assert_eq!(hourly[23], 3, "now, a moment ago and just under an hour ago");
        assert_eq!(hourly[22], 1, "exactly an hour ago");
        assert_eq!(hourly[0], 1, "just over 23 hours ago");
        assert_eq!(hourly.iter().sum::<i64>(), 5, "24 hours ago and the future are outside: {hourly:?}");
    }

    #[test]
    fn failures_are_counted_per_handler_from_the_failed_attempts_only() {
        let (_dir, store) = store();
        let steps = store
            .run_sync(|c| {
                c.execute_batch(&format!(
                    "INSERT INTO events (id, dedupe_key, event_type, content, received_at, last_seen_at)
                         VALUES (1, x'00', 'X', '{{}}', 0, 0);
                     INSERT INTO deliveries (id, event_id, handler, webhook_id, state, next_attempt_at, created_at, updated_at)
                         VALUES (1, 1, 'a', 'w', 'done', 0, 0, 0), (2, 1, 'b', 'w', 'dead', 0, 0, 0);
                     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
                     INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome)
                         SELECT 1, i, {old} + i, 1, 'done' FROM n;
                     INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome) VALUES
                         (1, 1, {now}, 1, 'retry'), (2, 1, {now} - 3600000, 1, 'retry'),
                         (2, 2, {now} - 3600001, 1, 'dead'), (2, 3, {now} - 90000000, 1, 'retry'),
                         (1, 2, {now} - 10, 1, 'done');
                     ANALYZE;",
                    old = NOW - 10 * HOUR_MS,
                    now = NOW,
                ))?;
                let mut stmt = c.prepare(FAILURES_PER_HOUR)?;
                assert_eq!(stmt.query_map(window(NOW), |_| Ok(()))?.count(), 2);
                Ok(stmt.get_status(StatementStatus::VmStep))
            })
            .unwrap();
        assert!(steps < 1_000, "{steps} VM steps for 4 failed attempts among 20,000 done");
        let failures = store.failures_per_hour(NOW).unwrap();
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert_eq!((failures["a"][23], failures["a"].iter().sum::<i64>()), (1, 1));
        assert_eq!((failures["b"][22], failures["b"].iter().sum::<i64>()), (2, 2), "the one 25 h ago is outside");
    }
}
