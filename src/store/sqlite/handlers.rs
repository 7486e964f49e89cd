//! [`Handlers`] on SQLite; the contract is in `store/handlers.rs`.
//!
//! Per-handler overview for `handlers list`: deliveries pending, in flight and dead, the
//! last success and the last error. Every query is bounded whatever the history: counts
//! read the partial index of each state not done, the set of handlers is found by index
//! seeks, and the last success and error come from the newest [`RECENT_ATTEMPTS`]
//! attempts, else from one index seek per handler.
//!
//! Pausing: a row in `handler_state` while a handler is paused, by the operator
//! (`handlers pause`) or by its breaker. Resuming deletes it and moves the `created_at` of
//! the handler's deliveries not yet done forward by the time they spent paused, so that
//! `dispatch.max_age` counts only time while not paused.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::SqliteStore;
use crate::store::{HandlerOverview, Handlers, Paused, StoreError, RECENT_ATTEMPTS};

/// Every handler that has deliveries, by index seeks on `deliveries_handler` (one per handler).
const HANDLER_NAMES: &str = "WITH RECURSIVE h(name) AS (
        SELECT min(handler) FROM deliveries
        UNION ALL SELECT (SELECT min(handler) FROM deliveries WHERE handler > h.name) FROM h WHERE h.name IS NOT NULL)
    SELECT name FROM h WHERE name IS NOT NULL";

fn overview(conn: &Connection, configured: &[String]) -> Result<Vec<HandlerOverview>, StoreError> {
    let mut rows: BTreeMap<String, HandlerOverview> = BTreeMap::new();
    fn entry<'a>(rows: &'a mut BTreeMap<String, HandlerOverview>, name: &str) -> &'a mut HandlerOverview {
        rows.entry(name.to_string()).or_insert_with(|| HandlerOverview {
            handler: name.to_string(),
            state: "active".into(),
            ..Default::default()
        })
    }
    for name in configured {
        entry(&mut rows, name).configured = true;
    }
    let names: Vec<String> = conn.prepare(HANDLER_NAMES)?.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    for name in &names {
        entry(&mut rows, name);
    }
    let mut counts = conn.prepare(
        "SELECT handler, state, count(*)
             FROM (SELECT handler, state FROM deliveries WHERE state = 'pending'
                   UNION ALL SELECT handler, state FROM deliveries WHERE state = 'running'
                   UNION ALL SELECT handler, state FROM deliveries WHERE state = 'dead')
             GROUP BY handler, state",
    )?;
    let counted =
        counts.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?;
    for row in counted {
        let (name, state, n) = row?;
        let line = entry(&mut rows, &name);
        match state.as_str() {
            "pending" => line.pending = n,
            "running" => line.running = n,
            _ => line.dead = n,
        }
    }
    let mut paused = conn.prepare("SELECT handler, paused_by, paused_at, reason FROM handler_state")?;
    let found = paused.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, Option<String>>(3)?))
    })?;
    for row in found {
        let (name, by, at, reason) = row?;
        let line = entry(&mut rows, &name);
        line.state = "paused".into();
        (line.paused_by, line.paused_at, line.reason) = (Some(by), Some(at), reason);
    }
    recent_outcomes(conn, &mut rows)?;
    for line in rows.values_mut() {
        older_outcomes(conn, line)?;
    }
    Ok(rows.into_values().collect())
}

/// The last success and failure of each handler among the newest attempts.
fn recent_outcomes(conn: &Connection, rows: &mut BTreeMap<String, HandlerOverview>) -> Result<(), StoreError> {
    let mut stmt = conn.prepare(
        "SELECT d.handler, a.outcome, a.started_at + a.duration_ms, a.error
         FROM (SELECT delivery_id, outcome, started_at, duration_ms, error FROM attempts ORDER BY id DESC LIMIT ?1) a
         JOIN deliveries d ON d.id = a.delivery_id",
    )?;
    let found = stmt.query_map([RECENT_ATTEMPTS], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, Option<String>>(3)?))
    })?;
    for row in found {
        let (name, outcome, at, error) = row?;
        let Some(line) = rows.get_mut(&name) else { continue };
        if outcome == "done" {
            line.last_success_at = Some(line.last_success_at.map_or(at, |t| t.max(at)));
        } else if line.last_error_at.is_none_or(|t| at > t) {
            line.last_error_at = Some(at);
            line.last_error = error;
        }
    }
    Ok(())
}

/// For a handler with no success or failure among the newest attempts: its newest done
/// (dead) delivery, found by walking `deliveries_handler` back from its newest row.
fn older_outcomes(conn: &Connection, line: &mut HandlerOverview) -> Result<(), StoreError> {
    const LATEST: &str = "SELECT updated_at, last_error FROM deliveries
         WHERE handler = ?1 AND state = ?2 ORDER BY id DESC LIMIT 1";
    if line.last_success_at.is_none() {
        line.last_success_at =
            conn.prepare_cached(LATEST)?.query_row(params![line.handler, "done"], |r| r.get(0)).optional()?;
    }
    if line.last_error_at.is_none() {
        let dead: Option<(i64, Option<String>)> = conn
            .prepare_cached(LATEST)?
            .query_row(params![line.handler, "dead"], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((at, error)) = dead {
            line.last_error_at = Some(at);
            line.last_error = error;
        }
    }
    Ok(())
}

/// The handler's pause, if it is paused.
pub(crate) fn paused(conn: &Connection, handler: &str) -> Result<Option<Paused>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT paused_by, paused_at, probe_at FROM handler_state WHERE handler = ?1")?
        .query_row([handler], |r| Ok(Paused { paused_by: r.get(0)?, paused_at: r.get(1)?, probe_at: r.get(2)? }))
        .optional()?)
}

/// Pauses `handler` unless it is paused already (an operator's pause replaces the breaker's,
/// or an earlier operator's reason, keeping its start). Returns who paused it before, if anyone.
pub(crate) fn pause(
    conn: &Connection,
    handler: &str,
    reason: Option<&str>,
    by: &str,
    now: i64,
    probe_at: Option<i64>,
) -> Result<Option<String>, StoreError> {
    let before = paused(conn, handler)?;
    conn.prepare_cached(
        "INSERT INTO handler_state (handler, paused_at, reason, paused_by, probe_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (handler) DO UPDATE SET reason = excluded.reason, paused_by = excluded.paused_by,
             probe_at = excluded.probe_at
         WHERE excluded.paused_by = 'operator'",
    )?
    .execute(params![handler, now, reason, by, probe_at])?;
    Ok(before.map(|p| p.paused_by))
}

/// Resumes `handler` if it is paused (by `only_by`, if given): deletes its pause and moves
/// the `created_at` of its deliveries not done forward by the time they spent paused (at
/// most to `now`). Returns how long it was paused, ms, if it was.
pub(crate) fn resume(
    conn: &Connection,
    handler: &str,
    only_by: Option<&str>,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    let Some(p) = paused(conn, handler)?.filter(|p| only_by.is_none_or(|by| by == p.paused_by)) else {
        return Ok(None);
    };
    conn.prepare_cached("DELETE FROM handler_state WHERE handler = ?1")?.execute([handler])?;
    let paused_for = now.saturating_sub(p.paused_at).max(0);
    // One statement per state, each through that state's partial index (`+handler` keeps
    // the running one off the index of every delivery the handler ever had).
    for sql in [
        "UPDATE deliveries SET created_at = min(created_at + ?2, ?3) WHERE handler = ?1 AND state = 'pending'",
        "UPDATE deliveries SET created_at = min(created_at + ?2, ?3) WHERE +handler = ?1 AND state = 'running'",
    ] {
        conn.prepare_cached(sql)?.execute(params![handler, paused_for, now])?;
    }
    Ok(Some(paused_for))
}

#[async_trait::async_trait]
impl Handlers for SqliteStore {
    fn pause_handler(&self, handler: &str, reason: Option<&str>) -> Result<Option<String>, StoreError> {
        self.run_sync(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let new = pause(&tx, handler, reason, "operator", crate::store::now_ms(), None)?;
            tx.commit()?;
            Ok(new)
        })
    }

    fn resume_handler(&self, handler: &str) -> Result<Option<i64>, StoreError> {
        self.run_sync(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let was = resume(&tx, handler, None, crate::store::now_ms())?;
            tx.commit()?;
            Ok(was)
        })
    }

    fn handler_overview(&self, configured: &[String]) -> Result<Vec<HandlerOverview>, StoreError> {
        self.run_sync(|conn| overview(conn, configured))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::prelude::*;
    use crate::store::sqlite::deliveries::tests::record;
    use crate::store::{now_ms, AttemptRecord, Next};

    #[tokio::test]
    async fn counts_last_success_and_last_error_per_handler() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
        let event = |n: u32| {
            crate::event::ReceivedEvent::from_content(
                &format!(r#"{{"eventType":"X","n":{n}}}"#),
                crate::config::ApiVersion::V2,
            )
        };
        let both = vec!["ok".to_string(), "bad".to_string()];
        store.insert_events((0..3).map(|n| (event(n), both.clone())).collect()).await.unwrap();
        store.insert_events(vec![(event(9), vec!["gone".into()])]).await.unwrap();
        let now = now_ms();
        let ok = store.claim_due("ok".into(), 2, now, Duration::from_secs(60)).await.unwrap();
        store.finish_attempt(record(ok[0].delivery_id, 1, Next::Done)).await.unwrap();
        let bad = store.claim_due("bad".into(), 1, now, Duration::from_secs(60)).await.unwrap();
        let failure = AttemptRecord { error: Some("HTTP 500".into()), ..record(bad[0].delivery_id, 1, Next::Dead) };
        store.finish_attempt(failure).await.unwrap();

        let lines = store.handler_overview(&["ok".into(), "bad".into(), "idle".into()]).unwrap();
        let names: Vec<&str> = lines.iter().map(|l| l.handler.as_str()).collect();
        assert_eq!(names, ["bad", "gone", "idle", "ok"]);
        let line = |name: &str| lines.iter().find(|l| l.handler == name).unwrap().clone();
        let ok = line("ok");
        assert_eq!((ok.pending, ok.running, ok.dead, ok.configured), (1, 1, 0, true));
        assert!(ok.last_success_at.is_some() && ok.last_error.is_none());
        let bad = line("bad");
        assert_eq!((bad.pending, bad.dead), (2, 1));
        assert_eq!(bad.last_error.as_deref(), Some("HTTP 500"));
        assert!(bad.last_success_at.is_none());
        assert_eq!((line("gone").configured, line("gone").pending), (false, 1));
        assert_eq!(
            line("idle"),
            HandlerOverview { handler: "idle".into(), state: "active".into(), configured: true, ..Default::default() }
        );
    }
}

#[cfg(test)]
mod pause_tests {
    use std::time::Duration;

    use super::*;
    use crate::store::prelude::*;
    use crate::store::{now_ms, Want};

    /// A pause committed before a claim is honoured by it; resuming shifts the age of the
    /// handler's waiting deliveries by the time paused, and leaves other handlers alone.
    #[tokio::test]
    async fn a_paused_handler_claims_nothing_and_does_not_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
        let event = crate::event::ReceivedEvent::from_content(r#"{"eventType":"X"}"#, crate::config::ApiVersion::V2);
        store.insert_events(vec![(event, vec!["a".into(), "b".into()])]).await.unwrap();
        let created = |h: &str| -> i64 {
            store
                .run_sync(
                    |c| Ok(c.query_row("SELECT created_at FROM deliveries WHERE handler = ?", [h], |r| r.get(0))?),
                )
                .unwrap()
        };
        store.run_sync(|c| Ok(c.execute("UPDATE deliveries SET created_at = created_at - 10000", [])?)).unwrap();
        let (a0, b0) = (created("a"), created("b"));
        assert_eq!(store.pause_handler("a", Some("why")).unwrap(), None);
        assert_eq!(store.pause_handler("a", None).unwrap().as_deref(), Some("operator"), "paused already");
        let lease = Duration::from_secs(60);
        let claimed = store
            .settle_and_claim(
                Vec::new().into(),
                vec![Want::new("a".into(), 5, lease), Want::new("b".into(), 0, lease)],
                now_ms(),
            )
            .await
            .unwrap();
        assert!(claimed.deliveries.is_empty());
        assert_eq!(claimed.paused.get(&0).map(String::as_str), Some("operator"));
        assert_eq!(claimed.next_due, None, "a paused handler's due deliveries wake nobody");
        store.run_sync(|c| Ok(c.execute("UPDATE handler_state SET paused_at = paused_at - 5000", [])?)).unwrap();
        let paused_for = store.resume_handler("a").unwrap().unwrap();
        assert!(paused_for >= 5000, "{paused_for}");
        assert!(created("a") >= a0 + 5000 && created("a") <= a0 + 6000, "{} vs {a0}", created("a"));
        assert_eq!(created("b"), b0);
        assert_eq!(store.resume_handler("a").unwrap(), None);
        assert_eq!(store.claim_due("a".into(), 5, now_ms(), lease).await.unwrap().len(), 1);
    }
}

#[cfg(test)]
mod bench {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::prelude::*;

    /// `cargo test --release --lib store::handlers::bench -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement: builds a store of a million deliveries"]
    fn overview_of_a_million_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
        store
            .run_sync(|c| {
                c.execute_batch(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 250000)
                     INSERT INTO events (dedupe_key, event_type, content, received_at, last_seen_at)
                       SELECT randomblob(32), 'X', '{}', i, i FROM n;
                     INSERT INTO deliveries (event_id, handler, webhook_id, state, next_attempt_at, created_at, updated_at)
                       SELECT e.id, 'h' || h.k, 'msg', CASE WHEN e.id % 100 = 0 THEN 'dead' WHEN e.id % 50 = 1 THEN 'pending' ELSE 'done' END,
                              e.id, e.id, e.id
                       FROM events e, (SELECT 1 AS k UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4) h;
                     INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome)
                       SELECT id, 1, updated_at, 1, CASE state WHEN 'dead' THEN 'dead' ELSE 'done' END FROM deliveries WHERE id > 900000;",
                )?;
                Ok(())
            })
            .unwrap();
        let start = Instant::now();
        let lines = store.handler_overview(&["h1".into()]).unwrap();
        println!("{} handlers in {:?}: {lines:?}", lines.len(), start.elapsed());
    }
}
