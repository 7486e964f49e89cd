//! [`Ranges`] on SQLite; the contract is in `store/ranges.rs`.
//!
//! Replays and retries by range (`events replay --since`, `deliveries retry --state`): a
//! job row (`range_jobs`) per kind and arguments holds the resolved time window and a
//! cursor, the last event or delivery id handled. Each batch of at most [`RANGE_BATCH`]
//! rows is applied and the cursor advanced in one transaction, so an interrupted run
//! loses at most its uncommitted batch, and a run with the same arguments resumes after
//! the last committed one: nothing is replayed or retried twice. The same on PostgreSQL
//! (`pg/ranges.rs`, same statements).

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::events::route_new_event;
use super::SqliteStore;
use crate::store::{Range, RangeJob, Ranges, StoreError, RANGE_BATCH};

/// Selects the ids of a range after a cursor; `?1` cursor, `?2` since, `?3` until, then
/// the range's own three parameters (`?4` to `?6`, unused ones NULL: every statement takes
/// the same list), and the limit last.
pub(crate) fn select_sql(range: &Range, what: &str) -> String {
    match range {
        Range::Replay { .. } => format!(
            "SELECT {what} FROM events WHERE id > ?1 AND received_at >= ?2 AND received_at < ?3
               AND (?4 IS NULL OR event_type = ?4) AND (?5 IS NULL OR source = ?5)
               AND (?6 IS NULL OR file_id = ?6 OR id IN (SELECT event_id FROM event_files WHERE file_id = ?6))"
        ),
        Range::Retry { .. } => format!(
            "SELECT {what} FROM deliveries WHERE id > ?1 AND updated_at >= ?2 AND updated_at < ?3
               AND state = ?4 AND (?5 IS NULL OR handler = ?5) AND ?6 IS NULL"
        ),
    }
}

pub(crate) fn range_params(range: &Range) -> [Option<&str>; 3] {
    match range {
        Range::Replay { event_type, file_id, source, .. } => {
            [event_type.as_deref(), source.as_deref(), file_id.as_deref()]
        }
        Range::Retry { state, handler } => [Some(state.as_str()), handler.as_deref(), None],
    }
}

fn count(conn: &Connection, range: &Range, after: i64, since: i64, until: i64) -> Result<i64, StoreError> {
    let [a, b, c] = range_params(range);
    Ok(conn.query_row(&select_sql(range, "count(*)"), params![after, since, until, a, b, c], |r| r.get(0))?)
}

fn load_job(conn: &Connection, kind: &str, args: &str) -> Result<Option<RangeJob>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, since_ms, until_ms, cursor, total, done, finished_at FROM range_jobs WHERE kind = ?1 AND args = ?2",
            params![kind, args],
            |r| {
                Ok(RangeJob {
                    id: r.get(0)?,
                    since_ms: r.get(1)?,
                    until_ms: r.get(2)?,
                    cursor: r.get(3)?,
                    total: r.get(4)?,
                    done: r.get(5)?,
                    finished_at: r.get(6)?,
                })
            },
        )
        .optional()?)
}

/// Applies the range to one batch of ids; returns how many rows it changed.
fn apply(tx: &Transaction<'_>, range: &Range, ids: &[i64], now: i64) -> Result<usize, StoreError> {
    match range {
        Range::Replay { handler, .. } => {
            let mut event = tx.prepare_cached("SELECT dedupe_key, occurrence FROM events WHERE id = ?")?;
            let handlers = [handler.clone()];
            for id in ids {
                let (key, occurrence): (Vec<u8>, i64) = event.query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
                route_new_event(tx, *id, &key, occurrence, &handlers, now)?;
            }
            Ok(ids.len())
        }
        Range::Retry { state, .. } => {
            let mut revive = tx.prepare_cached(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = ?2, created_at = ?2, updated_at = ?2, lease_until = NULL
                 WHERE id = ?1 AND state = ?3",
            )?;
            let mut changed = 0;
            for id in ids {
                changed += revive.execute(params![id, now, state])?;
            }
            Ok(changed)
        }
    }
}

fn run_batch(conn: &mut Connection, job: &RangeJob, range: &Range, now: i64) -> Result<RangeJob, StoreError> {
    let tx = conn.transaction()?;
    let ids: Vec<i64> = {
        let [a, b, c] = range_params(range);
        let sql = format!("{} ORDER BY id LIMIT ?7", select_sql(range, "id"));
        let mut stmt = tx.prepare_cached(&sql)?;
        let rows =
            stmt.query_map(params![job.cursor, job.since_ms, job.until_ms, a, b, c, RANGE_BATCH], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let changed = apply(&tx, range, &ids, now)? as i64;
    let cursor = ids.last().copied().unwrap_or(job.cursor);
    let finished = (ids.len() as i64) < RANGE_BATCH;
    tx.execute(
        "UPDATE range_jobs SET cursor = ?2, done = done + ?3, updated_at = ?4,
                finished_at = CASE WHEN ?5 THEN ?4 ELSE NULL END WHERE id = ?1",
        params![job.id, cursor, changed, now, finished],
    )?;
    tx.commit()?;
    Ok(RangeJob { cursor, done: job.done + changed, finished_at: finished.then_some(now), ..job.clone() })
}

#[async_trait::async_trait]
impl Ranges for SqliteStore {
    fn range_job(&self, range: &Range, args: &str) -> Result<Option<RangeJob>, StoreError> {
        self.run_sync(|conn| load_job(conn, range.kind(), args))
    }

    fn range_count(&self, range: &Range, after: i64, since_ms: i64, until_ms: i64) -> Result<i64, StoreError> {
        self.run_sync(|conn| count(conn, range, after, since_ms, until_ms))
    }

    fn start_range_job(&self, range: &Range, args: &str, since_ms: i64, until_ms: i64) -> Result<RangeJob, StoreError> {
        let now = crate::store::now_ms();
        self.run_sync(|conn| {
            let tx = conn.transaction()?;
            let total = count(&tx, range, 0, since_ms, until_ms)?;
            tx.execute("DELETE FROM range_jobs WHERE kind = ?1 AND args = ?2", params![range.kind(), args])?;
            tx.execute(
                "INSERT INTO range_jobs (kind, args, since_ms, until_ms, total, started_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                params![range.kind(), args, since_ms, until_ms, total, now],
            )?;
            let job = load_job(&tx, range.kind(), args)?.expect("just inserted");
            tx.commit()?;
            Ok(job)
        })
    }

    fn range_batch(&self, job: &RangeJob, range: &Range) -> Result<RangeJob, StoreError> {
        let now = crate::store::now_ms();
        self.run_sync(|conn| run_batch(conn, job, range, now))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::event::ReceivedEvent;
    use crate::store::prelude::*;

    #[tokio::test]
    async fn a_job_replays_in_batches_and_resumes_after_its_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
        let events = (0..1200)
            .map(|n| {
                let content = format!(r#"{{"eventType":"{}","data":{{"fileId":"f{n}"}}}}"#, ["A", "B"][n % 2]);
                (ReceivedEvent::from_content(&content, crate::config::ApiVersion::V2), vec![])
            })
            .collect();
        store.insert_events(events).await.unwrap();
        let range = Range::Replay { event_type: Some("A".into()), file_id: None, source: None, handler: "h".into() };
        assert_eq!(store.range_count(&range, 0, 0, i64::MAX).unwrap(), 600);
        let job = store.start_range_job(&range, "args", 0, i64::MAX).unwrap();
        let job = store.range_batch(&job, &range).unwrap();
        assert_eq!((job.done, job.finished_at), (500, None));
        // A second run with the same arguments finds the job where the first left it.
        let job = store.range_job(&range, "args").unwrap().unwrap();
        assert_eq!(job.done, 500);
        let job = store.range_batch(&job, &range).unwrap();
        assert_eq!(job.done, 600);
        assert!(job.finished_at.is_some());
        let (deliveries, distinct): (i64, i64) = store
            .run_sync(|c| {
                Ok(c.query_row("SELECT count(*), count(DISTINCT webhook_id) FROM deliveries", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?)
            })
            .unwrap();
        assert_eq!((deliveries, distinct), (600, 600));
        let only = Range::Replay { file_id: Some("f7".into()), event_type: None, source: None, handler: "h".into() };
        assert_eq!(store.range_count(&only, 0, 0, i64::MAX).unwrap(), 1);
    }
}
