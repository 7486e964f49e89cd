//! Keeping the store healthy and bounded: the daemon's heartbeat (`daemon_state`),
//! retention pruning with incremental vacuum, the size cap, and the figures `status` and
//! `/metrics` report.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};

/// Events and deliveries pruned per transaction, so pruning never holds the write lock long.
const PRUNE_BATCH: i64 = 1000;

/// The per-handler counts; `state != 'done'` is exactly the partial index's condition,
/// which is what lets SQLite use it.
const HANDLER_COUNTS: &str = "SELECT handler,
        sum(state IN ('pending', 'running')),
        sum(state = 'dead'),
        min(CASE WHEN state IN ('pending', 'running') THEN created_at END)
 FROM deliveries WHERE state != 'done' GROUP BY handler";

/// Pending and dead deliveries of one handler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerCounts {
    /// Pending or running.
    pub pending: i64,
    /// Dead.
    pub dead: i64,
    /// The oldest pending delivery's creation, Unix ms.
    pub oldest_pending_ms: Option<i64>,
}

impl Store {
    /// Records the daemon's heartbeat values.
    pub async fn put_state(&self, values: Vec<(&'static str, String)>) -> Result<(), StoreError> {
        self.run_bookkeeping(move |conn| {
            let tx = conn.transaction()?;
            for (key, value) in &values {
                tx.execute("INSERT INTO daemon_state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value", params![key, value])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The daemon's last heartbeat values.
    pub fn state(&self) -> Result<BTreeMap<String, String>, StoreError> {
        self.run_sync(|conn| {
            let mut stmt = conn.prepare("SELECT key, value FROM daemon_state")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Pending (or running) and dead deliveries per handler. Reads only the rows that
    /// are not done (the partial index `deliveries_not_done`), whatever the history.
    pub async fn handler_counts(&self) -> Result<BTreeMap<String, HandlerCounts>, StoreError> {
        self.run(|conn| {
            let mut stmt = conn.prepare_cached(HANDLER_COUNTS)?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, HandlerCounts { pending: r.get(1)?, dead: r.get(2)?, oldest_pending_ms: r.get(3)? }))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Events received since `since_ms`, by type.
    pub fn events_by_type_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        self.run_sync(|conn| {
            let mut stmt = conn.prepare(
                "SELECT event_type, count(*) FROM events WHERE received_at >= ? GROUP BY event_type ORDER BY 2 DESC",
            )?;
            let rows = stmt.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Bytes on disk: the database file plus its WAL.
    pub fn size_on_disk(&self) -> u64 {
        let wal =
            self.path.with_extension(format!("{}-wal", self.path.extension().and_then(|e| e.to_str()).unwrap_or("")));
        [self.path.clone(), wal].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
    }

    /// Caps the database at about `max_bytes` (0 = no cap): once full, commits fail with
    /// "database or disk is full" and the daemon stops pulling until there is room.
    pub async fn set_max_size(&self, max_bytes: u64) -> Result<(), StoreError> {
        self.run(move |conn| {
            let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages = if max_bytes == 0 { 4_294_967_294 } else { (max_bytes as i64 / page_size).max(1) };
            // max_page_count cannot go below the current size; SQLite then keeps the current size.
            let _: i64 = conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| r.get(0))?;
            Ok(())
        })
        .await
    }

    /// Deletes events received before `before_ms` whose deliveries are all done (with
    /// their deliveries and attempts); with `include_dead`, dead deliveries do not keep an
    /// event either. Pending or running deliveries always keep it. Then returns freed
    /// pages to the file system. Returns the number of events deleted.
    pub async fn prune(&self, before_ms: i64, include_dead: bool) -> Result<usize, StoreError> {
        self.run(move |conn| {
            let keep_states = if include_dead { "('pending', 'running')" } else { "('pending', 'running', 'dead')" };
            let sql = format!(
                "DELETE FROM events WHERE id IN (
                     SELECT id FROM events e WHERE e.received_at < ?1
                       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.state IN {keep_states})
                     LIMIT ?2)"
            );
            let mut total = 0;
            loop {
                let n = conn.execute(&sql, params![before_ms, PRUNE_BATCH])?;
                total += n;
                if (n as i64) < PRUNE_BATCH {
                    break;
                }
            }
            conn.execute_batch("PRAGMA incremental_vacuum;")?;
            Ok(total)
        })
        .await
    }

    /// The oldest event's receive time, if any.
    pub fn oldest_event_ms(&self) -> Result<Option<i64>, StoreError> {
        self.run_sync(|conn| {
            Ok(conn.query_row("SELECT min(received_at) FROM events", [], |r| r.get(0)).optional()?.flatten())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rusqlite::StatementStatus;

    use super::*;
    use crate::event::ReceivedEvent;
    use crate::store::{AttemptRecord, Next};

    #[tokio::test]
    async fn prune_keeps_undelivered_and_dead_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
        let ev = |n: u32| {
            ReceivedEvent::from_content(
                &format!(r#"{{"eventType":"X","data":{{"n":{n}}}}}"#),
                crate::config::ApiVersion::V2,
            )
        };
        let h = vec!["h".to_string()];
        store
            .insert_events(vec![(ev(1), vec![]), (ev(2), h.clone()), (ev(3), h.clone()), (ev(4), h.clone())])
            .await
            .unwrap();
        // ev(2) delivered, ev(3) dead, ev(4) still pending.
        let claimed = store.claim_due("h".into(), 3, crate::store::now_ms(), Duration::from_secs(60)).await.unwrap();
        for (d, next) in claimed.iter().zip([Next::Done, Next::Dead]) {
            let record = AttemptRecord {
                delivery_id: d.delivery_id,
                attempt: 1,
                started_at: 0,
                duration_ms: 1,
                status: None,
                error: None,
                excerpt: None,
                next,
            };
            store.finish_attempt(record).await.unwrap();
        }
        store.requeue_running().await.unwrap();
        let future = crate::store::now_ms() + 1000;
        assert_eq!(store.prune(future, false).await.unwrap(), 2, "the routeless and the delivered event go");
        assert_eq!(store.count_events().unwrap(), 2);
        assert_eq!(store.prune(future, true).await.unwrap(), 1, "with --dead, the dead one goes too");
        assert_eq!(store.count_events().unwrap(), 1, "a pending delivery always keeps its event");
        let counts = store.handler_counts().await.unwrap();
        assert_eq!(counts["h"].pending, 1);
    }

    #[tokio::test]
    async fn handler_counts_read_only_the_rows_not_done() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
        let steps = store
            .run_sync(|c| {
                c.execute_batch(
                    "INSERT INTO events (id, dedupe_key, event_type, content, received_at, last_seen_at)
                         VALUES (1, x'00', 'X', '{}', 0, 0);
                     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000)
                     INSERT INTO deliveries (event_id, handler, webhook_id, state, next_attempt_at, created_at, updated_at)
                         SELECT 1, 'h' || (i % 3), 'w', CASE WHEN i % 10000 = 0 THEN 'dead' WHEN i % 5000 = 0 THEN 'pending' ELSE 'done' END, 0, i, 0 FROM n;
                     ANALYZE;",
                )?;
                let mut stmt = c.prepare(HANDLER_COUNTS)?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?.count();
                assert_eq!(rows, 3);
                Ok(stmt.get_status(StatementStatus::VmStep))
            })
            .unwrap();
        assert!(steps < 500, "{steps} VM steps for 10 rows not done among 50,000");
        let counts = store.handler_counts().await.unwrap();
        assert_eq!(counts.values().map(|c| (c.pending, c.dead)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1)), (5, 5));
    }
}
