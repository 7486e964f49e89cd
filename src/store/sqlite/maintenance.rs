//! [`Maintenance`] on SQLite; the contract is in `store/maintenance.rs`.
//!
//! Keeping the store healthy and bounded: the daemon's heartbeat (`daemon_state`),
//! retention pruning with incremental vacuum (in short steps that leave the connection
//! to the pipeline in between), the size cap, and the figures `status` and `/metrics`
//! report.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tokio_util::sync::CancellationToken;

use super::SqliteStore;
use crate::store::{HandlerCounts, Maintenance, Orphans, Singleton, StoreError};

/// Events looked at (and at most deleted, with their deliveries and attempts) per
/// pruning transaction, so pruning never holds the connection or the write lock long.
pub const PRUNE_BATCH: i64 = 1000;

/// Pages given back to the file system per incremental-vacuum step (4 MiB at the
/// default page size; about 15 ms).
pub const VACUUM_PAGES: i64 = 1024;

/// What one pruning step did.
struct PruneStep {
    deleted: usize,
    /// The id to continue after, if older events may remain.
    next: Option<i64>,
}

/// Looks at the next [`PRUNE_BATCH`] events by id after `cursor` and deletes those that
/// retention lets go. Ids grow with `received_at`, so once a batch reaches an event
/// received at or after `before_ms`, nothing further is old enough. Walking by id means
/// events kept (pending or dead deliveries) are looked at once per run, not once per batch.
fn prune_step(conn: &mut Connection, cursor: i64, before_ms: i64, include_dead: bool) -> Result<PruneStep, StoreError> {
    let keep_states = if include_dead { "('pending', 'running')" } else { "('pending', 'running', 'dead')" };
    let tx = conn.transaction()?;
    let (last_id, last_received): (Option<i64>, Option<i64>) = tx
        .query_row(
            "SELECT id, received_at FROM events WHERE id IN
             (SELECT max(id) FROM (SELECT id FROM events WHERE id > ?1 ORDER BY id LIMIT ?2))",
            params![cursor, PRUNE_BATCH],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((None, None));
    let Some(last_id) = last_id else {
        return Ok(PruneStep { deleted: 0, next: None });
    };
    let deleted = tx.execute(
        &format!(
            // `+received_at`: walk the id range, never the received_at index (all of it is old).
            "DELETE FROM events WHERE id > ?1 AND id <= ?2 AND +received_at < ?3
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.state IN {keep_states}
                               AND d.orphaned_reason IS NULL)"
        ),
        params![cursor, last_id, before_ms],
    )?;
    tx.commit()?;
    let more = last_received.is_some_and(|at| at < before_ms);
    Ok(PruneStep { deleted, next: more.then_some(last_id) })
}

/// The per-handler counts, read from the partial index of each state that is not done
/// (each covers the columns read), never from the done history.
const HANDLER_COUNTS: &str = "SELECT handler,
        sum(state IN ('pending', 'running') AND orphaned_reason IS NULL),
        sum(state = 'dead'),
        min(CASE WHEN state IN ('pending', 'running') AND orphaned_reason IS NULL THEN created_at END),
        sum(state IN ('pending', 'running') AND orphaned_reason IS NOT NULL),
        max(CASE WHEN state IN ('pending', 'running') THEN orphaned_reason END)
 FROM (SELECT handler, state, created_at, orphaned_reason FROM deliveries WHERE state = 'pending'
       UNION ALL SELECT handler, state, created_at, orphaned_reason FROM deliveries WHERE state = 'running'
       UNION ALL SELECT handler, state, NULL, NULL FROM deliveries WHERE state = 'dead')
 GROUP BY handler";

#[async_trait::async_trait]
impl Maintenance for SqliteStore {
    fn path(&self) -> &Path {
        &self.path
    }

    fn is_shared(&self) -> bool {
        false
    }

    async fn lead(&self, _what: Singleton) -> bool {
        true
    }

    async fn leading(&self) -> Vec<Singleton> {
        vec![Singleton::Retention, Singleton::Status, Singleton::Alerts]
    }

    fn check_integrity(&self) -> Result<(), StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt { path: self.path.clone(), detail };
        let problems: Vec<String> = self
            .run_sync(|c| {
                let mut stmt = c.prepare("PRAGMA quick_check(10)")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .map_err(|e| corrupt(e.to_string()))?;
        if problems.len() == 1 && problems[0] == "ok" {
            Ok(())
        } else {
            Err(corrupt(problems.join("; ")))
        }
    }

    /// `PRAGMA data_version`. Runs on the calling thread, and only if the connection is
    /// free at once; `None` if it is busy. Reading it takes and drops the file's read
    /// locks, so it is only read when the write-ahead log's size or modification time
    /// changed since the last call (every commit writes to it; a commit that rewrites the
    /// log at the same size within the file system's timestamp tick is seen at the next
    /// change, at the latest with the daemon's own 10 s heartbeat).
    fn data_version(&self) -> Option<i64> {
        let wal = std::fs::metadata(self.wal_path()).ok().map(|m| (m.len(), m.modified().ok()));
        let mut last = self.last_version.lock().expect("store mutex poisoned");
        if let (Some(wal), Some((seen, version))) = (wal, *last) {
            if wal == seen {
                return Some(version);
            }
        }
        let conn = self.conn.try_lock().ok()?;
        let version = conn.prepare_cached("PRAGMA data_version").and_then(|mut s| s.query_row([], |r| r.get(0)));
        let version = version.ok()?;
        *last = wal.map(|wal| (wal, version));
        Some(version)
    }

    async fn put_state(&self, values: Vec<(String, String)>) -> Result<(), StoreError> {
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

    fn state(&self) -> Result<BTreeMap<String, String>, StoreError> {
        self.run_sync(|conn| {
            let mut stmt = conn.prepare("SELECT key, value FROM daemon_state")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    async fn credentials_worked(&self, fingerprint: String) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let key = format!("pull_ok:{fingerprint}");
            Ok(conn.query_row("SELECT 1 FROM daemon_state WHERE key = ?", [key], |_| Ok(())).optional()?.is_some())
        })
        .await
    }

    async fn remember_credentials(&self, fingerprint: String) -> Result<(), StoreError> {
        self.run(move |conn| {
            let key = format!("pull_ok:{fingerprint}");
            conn.execute(
                "INSERT INTO daemon_state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                params![key, crate::store::now_ms().to_string()],
            )?;
            Ok(())
        })
        .await
    }

    async fn sync_orphans(&self, configured: Vec<String>, config_path: String) -> Result<Orphans, StoreError> {
        let configured = serde_json::to_string(&configured).expect("names serialise");
        let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.run(move |conn| {
            let tx = conn.transaction()?;
            // Rows as (handler, state), counted per handler: pending ones, and running ones.
            let per_handler = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Result<[BTreeMap<String, i64>; 2], StoreError> {
                let mut counts = [BTreeMap::new(), BTreeMap::new()];
                let mut stmt = tx.prepare(sql)?;
                let mut rows = stmt.query(params)?;
                while let Some(row) = rows.next()? {
                    let running = row.get::<_, String>(1)? == "running";
                    *counts[usize::from(running)].entry(row.get(0)?).or_default() += 1;
                }
                Ok(counts)
            };
            let [mut resumed, running] = per_handler(
                "UPDATE deliveries SET orphaned_reason = NULL
                 WHERE orphaned_reason IS NOT NULL AND handler IN (SELECT value FROM json_each(?1)) RETURNING handler, state",
                &[&configured],
            )?;
            for (handler, n) in running {
                *resumed.entry(handler).or_default() += n;
            }
            let [orphaned, in_flight] = per_handler(
                "UPDATE deliveries SET orphaned_reason = 'no handler named `' || handler || '` in ' || ?2 || ' since ' || ?3
                 WHERE state IN ('pending', 'running') AND orphaned_reason IS NULL
                   AND handler NOT IN (SELECT value FROM json_each(?1)) RETURNING handler, state",
                &[&configured, &config_path, &since],
            )?;
            tx.commit()?;
            Ok(Orphans { orphaned, in_flight, resumed })
        })
        .await
    }

    async fn handler_counts(&self) -> Result<BTreeMap<String, HandlerCounts>, StoreError> {
        self.run(|conn| {
            let mut stmt = conn.prepare_cached(HANDLER_COUNTS)?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    HandlerCounts {
                        pending: r.get(1)?,
                        dead: r.get(2)?,
                        oldest_pending_ms: r.get(3)?,
                        orphaned: r.get(4)?,
                        orphaned_reason: r.get(5)?,
                    },
                ))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    fn events_by_type_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        self.run_sync(|conn| {
            let mut stmt = conn.prepare(
                "SELECT event_type, count(*) FROM events WHERE received_at >= ? GROUP BY event_type ORDER BY 2 DESC",
            )?;
            let rows = stmt.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    async fn size_on_disk(&self) -> u64 {
        [self.path.clone(), self.wal_path()].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
    }

    async fn set_max_size(&self, max_bytes: u64) -> Result<(), StoreError> {
        self.run(move |conn| {
            let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages = if max_bytes == 0 { 4_294_967_294 } else { (max_bytes as i64 / page_size).max(1) };
            // max_page_count cannot go below the current size; SQLite then keeps the current size.
            let _: i64 = conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| r.get(0))?;
            Ok(())
        })
        .await
    }

    async fn prune(
        &self,
        before_ms: i64,
        include_dead: bool,
        pause: Duration,
        stop: &CancellationToken,
    ) -> Result<usize, StoreError> {
        let mut cursor = 0;
        let mut total = 0;
        loop {
            let step = self.run_bookkeeping(move |conn| prune_step(conn, cursor, before_ms, include_dead)).await?;
            total += step.deleted;
            tokio::time::sleep(pause).await;
            // Vacuum while the free list is short: moving a page searches the free list,
            // so vacuuming after a large prune would cost time per page in proportion to it.
            self.vacuum(pause, stop).await?;
            match step.next {
                Some(next) if !stop.is_cancelled() => cursor = next,
                _ => return Ok(total),
            }
        }
    }

    fn oldest_event_ms(&self) -> Result<Option<i64>, StoreError> {
        self.run_sync(|conn| {
            Ok(conn.query_row("SELECT min(received_at) FROM events", [], |r| r.get(0)).optional()?.flatten())
        })
    }
}

impl SqliteStore {
    /// Gives free pages back to the file system, [`VACUUM_PAGES`] per step.
    async fn vacuum(&self, pause: Duration, stop: &CancellationToken) -> Result<(), StoreError> {
        let mut free_pages = i64::MAX;
        while !stop.is_cancelled() {
            let left = self
                .run(|conn| {
                    // Each step of the statement frees one page: step it to the end.
                    let mut stmt = conn.prepare_cached(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))?;
                    let mut rows = stmt.query([])?;
                    while rows.next()?.is_some() {}
                    Ok(conn.query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))?)
                })
                .await?;
            // Done, or a file without auto_vacuum (created by hand), where nothing moves.
            if left == 0 || left >= free_pages {
                return Ok(());
            }
            free_pages = left;
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;
    use crate::event::ReceivedEvent;
    use crate::store::prelude::*;
    use crate::store::Next;

    #[tokio::test]
    async fn prune_keeps_undelivered_and_dead_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
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
            store
                .finish_attempt(crate::store::sqlite::deliveries::tests::record(d.delivery_id, 1, next))
                .await
                .unwrap();
        }
        store.requeue_running().await.unwrap();
        let future = crate::store::now_ms() + 1000;
        let (pause, stop) = (Duration::ZERO, CancellationToken::new());
        assert_eq!(
            store.prune(future, false, pause, &stop).await.unwrap(),
            2,
            "the routeless and the delivered event go"
        );
        assert_eq!(store.count_events().unwrap(), 2);
        assert_eq!(store.prune(future, true, pause, &stop).await.unwrap(), 1, "with --dead, the dead one goes too");
        assert_eq!(store.count_events().unwrap(), 1, "a pending delivery always keeps its event");
        let counts = store.handler_counts().await.unwrap();
        assert_eq!(counts["h"].pending, 1);
    }

    #[tokio::test]
    async fn orphans_are_counted_apart_resumed_and_keep_their_event_only_until_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
        let ev = |n: u32| {
            ReceivedEvent::from_content(&format!(r#"{{"eventType":"X","n":{n}}}"#), crate::config::ApiVersion::V2)
        };
        let routed = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        store.insert_events(vec![(ev(1), routed(&["gone", "kept"])), (ev(2), routed(&["gone"]))]).await.unwrap();
        let orphans = store.sync_orphans(routed(&["kept"]), "c.toml".into()).await.unwrap();
        assert_eq!(orphans.orphaned, [("gone".to_string(), 2)].into());
        assert_eq!(store.sync_orphans(routed(&["kept"]), "c.toml".into()).await.unwrap(), Orphans::default(), "once");
        let counts = store.handler_counts().await.unwrap();
        assert_eq!((counts["gone"].pending, counts["gone"].orphaned, counts["kept"].pending), (0, 2, 1));
        assert!(counts["gone"]
            .orphaned_reason
            .as_deref()
            .unwrap()
            .starts_with("no handler named `gone` in c.toml since "));

        let resumed = store.sync_orphans(routed(&["gone", "kept"]), "c.toml".into()).await.unwrap();
        assert_eq!(resumed.resumed, [("gone".to_string(), 2)].into());
        assert_eq!(store.handler_counts().await.unwrap()["gone"].pending, 2);

        store.sync_orphans(routed(&["kept"]), "c.toml".into()).await.unwrap();
        let future = crate::store::now_ms() + 1000;
        assert_eq!(
            store.prune(future, false, Duration::ZERO, &CancellationToken::new()).await.unwrap(),
            1,
            "only the event a configured handler still waits for stays"
        );
    }

    #[tokio::test]
    async fn handler_counts_read_only_the_rows_not_done() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
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
        // About 60 steps per row read (five aggregates each); a scan of the 50,000 rows would
        // take well over 100,000.
        assert!(steps < 1_000, "{steps} VM steps for 10 rows not done among 50,000");
        let counts = store.handler_counts().await.unwrap();
        assert_eq!(counts.values().map(|c| (c.pending, c.dead)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1)), (5, 5));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_prune_leaves_the_connection_to_commits_between_steps() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SqliteStore::open(&dir.path().join("e.db"), Duration::from_secs(5)).unwrap());
        store
            .run_sync(|c| {
                Ok(c.execute_batch(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000)
                     INSERT INTO events (dedupe_key, event_type, content, received_at, last_seen_at)
                         SELECT randomblob(32), 'X', '{}', i, i FROM n;",
                )?)
            })
            .unwrap();
        let pruner = store.clone();
        let pruning = tokio::spawn(async move {
            pruner.prune(crate::store::now_ms(), false, Duration::from_millis(5), &CancellationToken::new()).await
        });
        while store.count_events().unwrap() == 30_000 {
            tokio::task::yield_now().await;
        }
        let event = ReceivedEvent::from_content(r#"{"eventType":"New"}"#, crate::config::ApiVersion::V2);
        store.insert_events(vec![(event, vec![])]).await.unwrap();
        assert!(!pruning.is_finished(), "a commit had to wait for the whole prune");
        assert_eq!(pruning.await.unwrap().unwrap(), 30_000);
        assert_eq!(store.count_events().unwrap(), 1);
        let free: i64 = store.run_sync(|c| Ok(c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?)).unwrap();
        assert_eq!(free, 0, "every freed page went back to the file system");
    }
}
