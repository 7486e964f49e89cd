//! [`Outbox`] on SQLite; the contract is in `store/deliveries.rs`.
//!
//! The `deliveries` and `attempts` tables: the durable outbox the dispatcher works from.
//! A delivery is claimed (`pending` → `running`) before its attempt and settled
//! (`done`, `dead`, or `pending` again with a later `next_attempt_at`) in the same
//! transaction that records the attempt. A claim carries a lease: a `running` row whose
//! lease passed without an outcome is returned to `pending` by [`crate::store::Outbox::sweep_expired_leases`],
//! and rows left `running` by a crash are requeued at the next start. An outcome only
//! settles its delivery while no later attempt has claimed it, so a late outcome never
//! overrides a newer one; it is recorded in `attempts` either way.
//!
//! A paused handler (see [`super::handlers`]) gets nothing claimed, in the same transaction
//! that reads its pause, so a pause committed before a step is always honoured; a handler
//! paused by its breaker gets one probe delivery claimed each `probe_interval`.

use std::sync::Arc;

use rusqlite::{params, Connection, Row};

use super::SqliteStore;
use crate::handler::Delivery;
use crate::store::{
    AttemptRecord, AttemptRow, BreakerStep, Claimed, DeliveryFilter, DeliveryRow, Next, Outbox, StoreError, Want,
};

/// Records `outcomes` and settles their deliveries (see [`crate::store::Outbox::settle_and_claim`]).
fn settle(tx: &Connection, outcomes: &[AttemptRecord], now: i64) -> Result<(), StoreError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome, status, error, excerpt)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut update = tx.prepare_cached(
        "UPDATE deliveries SET state = ?2, next_attempt_at = coalesce(?3, next_attempt_at), updated_at = ?4,
                last_error = ?5, last_status = ?6, lease_until = NULL
         WHERE id = ?1 AND attempts = ?7 AND state IN ('running', 'pending')",
    )?;
    for a in outcomes {
        let (outcome, state, next_at) = match a.next {
            Next::Done => ("done", "done", None),
            Next::RetryAt(at) => ("retry", "pending", Some(at)),
            Next::Dead => ("dead", "dead", None),
        };
        insert.execute(params![
            a.delivery_id,
            a.attempt,
            a.started_at,
            a.duration_ms,
            outcome,
            a.status,
            a.error,
            a.excerpt
        ])?;
        update.execute(params![a.delivery_id, state, next_at, now, a.error, a.status, a.attempt])?;
    }
    Ok(())
}

/// Writes a want's breaker change; true if it raised an alert.
fn breaker(tx: &Connection, want: &Want, now: i64) -> Result<bool, StoreError> {
    let (alert, changed) = match &want.breaker {
        None => return Ok(false),
        Some(BreakerStep::Trip { reason, alert }) => {
            let probe_at = now.saturating_add(want.probe_interval.as_millis() as i64);
            (alert, super::handlers::pause(tx, &want.handler, Some(reason), "breaker", now, Some(probe_at))?.is_none())
        }
        Some(BreakerStep::Recovered { alert }) => {
            (alert, super::handlers::resume(tx, &want.handler, Some("breaker"), now)?.is_some())
        }
    };
    match alert {
        Some((alert, route)) if changed => super::alerts::raise(tx, alert, &**route, now),
        _ => Ok(false),
    }
}

/// How many of `want` to claim now given its pause, recording the pause in `claimed`, and
/// moving a breaker's next probe on when one is claimed; with how long it has been paused
/// (a probe's age leaves that out, as resuming would).
fn claimable(
    tx: &Connection,
    i: usize,
    want: &Want,
    now: i64,
    claimed: &mut Claimed,
) -> Result<(usize, i64), StoreError> {
    let Some(p) = super::handlers::paused(tx, &want.handler)? else {
        return Ok((want.limit, 0));
    };
    let paused_for = now.saturating_sub(p.paused_at).max(0);
    claimed.paused.insert(i, p.paused_by.clone());
    let probe_at = p.probe_at.unwrap_or(now);
    if p.paused_by != "breaker" {
        return Ok((0, paused_for));
    }
    if probe_at > now || want.limit == 0 {
        claimed.next_due = Some(claimed.next_due.map_or(probe_at, |d| d.min(probe_at)));
        return Ok((0, paused_for));
    }
    let next = now.saturating_add(want.probe_interval.as_millis() as i64);
    tx.prepare_cached("UPDATE handler_state SET probe_at = ?2 WHERE handler = ?1")?
        .execute(params![want.handler, next])?;
    claimed.next_due = Some(claimed.next_due.map_or(next, |d| d.min(next)));
    Ok((1, paused_for))
}

/// Claims up to ?3 due deliveries of handler ?2 at ?1, leased until ?4: due first, then
/// oldest, in the order of `deliveries_due` itself (ties in row order), so that no backlog
/// is ever sorted.
const CLAIM: &str =
    "UPDATE deliveries SET state = 'running', attempts = attempts + 1, updated_at = ?1, lease_until = ?4
     WHERE id IN (SELECT id FROM deliveries WHERE handler = ?2 AND state = 'pending' AND next_attempt_at <= ?1
                  ORDER BY next_attempt_at, created_at, orphaned_reason, state LIMIT ?3)
     RETURNING id";

/// Claims due deliveries for each want (see [`crate::store::Outbox::settle_and_claim`]).
fn claim(tx: &Connection, wants: &[Want], now: i64) -> Result<Claimed, StoreError> {
    let mut claimed = Claimed::default();
    for want in wants {
        claimed.alerted |= breaker(tx, want, now)?;
    }
    let mut mark = tx.prepare_cached(CLAIM)?;
    let mut load = tx.prepare_cached(
        "SELECT d.id, d.event_id, d.webhook_id, d.attempts, e.event_type, e.file_id, e.task_id, e.content, d.created_at,
                e.source, e.sub_app_id
         FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.id = ?",
    )?;
    let mut next_due =
        tx.prepare_cached("SELECT min(next_attempt_at) FROM deliveries WHERE handler = ? AND state = 'pending'")?;
    for (i, want) in wants.iter().enumerate() {
        let (limit, paused_for) = claimable(tx, i, want, now, &mut claimed)?;
        if limit == 0 {
            continue;
        }
        // This process's own lease: judged by its steady clock (see `sweep_expired_leases`).
        let lease_until = crate::clock::steady_ms().saturating_add(want.lease.as_millis() as i64);
        let ids = mark.query_map(params![now, want.handler, limit as i64, lease_until], |r| r.get::<_, i64>(0))?;
        let ids: Vec<i64> = ids.collect::<Result<_, _>>()?;
        if ids.len() < limit && !claimed.paused.contains_key(&i) {
            if let Some(due) = next_due.query_row([&want.handler], |r| r.get::<_, Option<i64>>(0))? {
                claimed.next_due = Some(claimed.next_due.map_or(due, |d| d.min(due)));
            }
        }
        for id in ids {
            let delivery = load.query_row([id], |r| {
                Ok(Delivery {
                    claim_token: 0,
                    delivery_id: r.get(0)?,
                    event_id: r.get(1)?,
                    webhook_id: r.get(2)?,
                    attempt: r.get(3)?,
                    event_type: r.get(4)?,
                    file_id: r.get(5)?,
                    task_id: r.get(6)?,
                    body: r.get(7)?,
                    created_at: r.get::<_, i64>(8)?.saturating_add(paused_for).min(now),
                    source: r.get(9)?,
                    sub_app_id: r.get::<_, Option<i64>>(10)?.map(|id| id as u64),
                })
            })?;
            claimed.deliveries.push((i, delivery));
        }
    }
    Ok(claimed)
}

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, e.event_type, d.handler, d.webhook_id, d.state, d.attempts, \
     d.next_attempt_at, d.created_at, d.updated_at, d.last_error, d.last_status, d.orphaned_reason";

fn row_to_delivery(r: &Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.get(0)?,
        event_id: r.get(1)?,
        event_type: r.get(2)?,
        handler: r.get(3)?,
        webhook_id: r.get(4)?,
        state: r.get(5)?,
        attempts: r.get(6)?,
        next_attempt_at: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
        last_error: r.get(10)?,
        last_status: r.get(11)?,
        orphaned_reason: r.get(12)?,
    })
}

#[async_trait::async_trait]
impl Outbox for SqliteStore {
    async fn settle_and_claim(
        &self,
        outcomes: Arc<[AttemptRecord]>,
        wants: Vec<Want>,
        now: i64,
    ) -> Result<Claimed, StoreError> {
        self.run_bookkeeping(move |conn| {
            let tx = conn.transaction()?;
            // First, so that it names the state this transaction reads (see `Claimed`).
            let data_version = tx.prepare_cached("PRAGMA data_version")?.query_row([], |r| r.get(0))?;
            settle(&tx, &outcomes, now)?;
            let claimed = Claimed { data_version, ..claim(&tx, &wants, now)? };
            tx.commit()?;
            Ok(claimed)
        })
        .await
    }

    async fn requeue_running(&self) -> Result<usize, StoreError> {
        self.run(|conn| {
            Ok(conn.execute(
                "UPDATE deliveries SET state = 'pending', attempts = max(attempts - 1, 0), lease_until = NULL
                 WHERE state = 'running'",
                [],
            )?)
        })
        .await
    }

    /// Leases on this store are this process's own (another process's are requeued when it
    /// starts), so they pass only when this process's steady clock agrees as well: a step of
    /// the wall clock never expires an attempt still running.
    async fn sweep_expired_leases(&self, now: i64) -> Result<usize, StoreError> {
        let now = now.min(crate::clock::steady_ms());
        self.run_bookkeeping(move |conn| {
            let expired: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM deliveries WHERE state = 'running' AND lease_until < ?1)",
                [now],
                |r| r.get(0),
            )?;
            if !expired {
                return Ok(0);
            }
            Ok(conn.execute(
                "UPDATE deliveries SET state = 'pending', lease_until = NULL, updated_at = ?1
                 WHERE state = 'running' AND lease_until < ?1",
                [now],
            )?)
        })
        .await
    }

    fn list_deliveries(&self, f: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        self.run_sync(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
                 WHERE (?1 IS NULL OR d.state = ?1) AND (?2 IS NULL OR d.handler = ?2)
                 ORDER BY d.updated_at DESC, d.id DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![f.state, f.handler, f.limit], row_to_delivery)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn event_deliveries(&self, event_id: i64) -> Result<Vec<(DeliveryRow, Vec<AttemptRow>)>, StoreError> {
        self.run_sync(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.event_id = ? ORDER BY d.id"
            ))?;
            let deliveries: Vec<DeliveryRow> = stmt.query_map([event_id], row_to_delivery)?.collect::<Result<_, _>>()?;
            let mut attempts = conn.prepare(
                "SELECT attempt, started_at, duration_ms, outcome, status, error, excerpt FROM attempts WHERE delivery_id = ? ORDER BY id",
            )?;
            deliveries
                .into_iter()
                .map(|d| {
                    let rows = attempts.query_map([d.id], |r| {
                        Ok(AttemptRow {
                            attempt: r.get(0)?,
                            started_at: r.get(1)?,
                            duration_ms: r.get(2)?,
                            outcome: r.get(3)?,
                            status: r.get(4)?,
                            error: r.get(5)?,
                            excerpt: r.get(6)?,
                        })
                    })?;
                    Ok((d, rows.collect::<Result<Vec<_>, _>>()?))
                })
                .collect()
        })
    }

    fn replay(&self, event_id: i64, handler: Option<&str>) -> Result<Vec<String>, StoreError> {
        let now = crate::store::now_ms();
        self.run_sync(|conn| {
            let tx = conn.transaction()?;
            let (key, occurrence): (Vec<u8>, i64) =
                tx.query_row("SELECT dedupe_key, occurrence FROM events WHERE id = ?", [event_id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let handlers: Vec<String> = match handler {
                Some(h) => vec![h.to_string()],
                None => {
                    let mut stmt =
                        tx.prepare("SELECT DISTINCT handler FROM deliveries WHERE event_id = ? ORDER BY handler")?;
                    let rows = stmt.query_map([event_id], |r| r.get(0))?;
                    rows.collect::<Result<_, _>>()?
                }
            };
            super::events::route_new_event(&tx, event_id, &key, occurrence, &handlers, now)?;
            tx.commit()?;
            Ok(handlers)
        })
    }

    fn retry_dead(&self, handler: Option<&str>) -> Result<usize, StoreError> {
        let now = crate::store::now_ms();
        self.run_sync(|conn| {
            Ok(conn.execute(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = ?1, created_at = ?1, updated_at = ?1
                 WHERE state = 'dead' AND (?2 IS NULL OR handler = ?2)",
                params![now, handler],
            )?)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::now_ms;
    use crate::store::prelude::*;

    #[test]
    fn a_claim_reads_due_deliveries_in_index_order_without_sorting() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
        let plan: Vec<String> = store
            .run_sync(|c| {
                let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {CLAIM}"))?;
                let rows = stmt.query_map(params![0, "h", 16, 0], |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .unwrap();
        assert!(plan.iter().any(|step| step.contains("COVERING INDEX deliveries_due")), "{plan:?}");
        assert!(!plan.iter().any(|step| step.contains("TEMP B-TREE")), "{plan:?}");
    }

    async fn one_pending(dir: &tempfile::TempDir) -> SqliteStore {
        let store = SqliteStore::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
        let event = crate::event::ReceivedEvent::from_content(r#"{"eventType":"X"}"#, crate::config::ApiVersion::V2);
        store.insert_events(vec![(event, vec!["h".into()])]).await.unwrap();
        store
    }

    /// An attempt's outcome as tests record it.
    pub(crate) fn record(delivery_id: i64, attempt: u32, next: Next) -> AttemptRecord {
        AttemptRecord {
            delivery_id,
            attempt,
            claim_token: 0,
            started_at: 0,
            duration_ms: 1,
            status: None,
            error: None,
            excerpt: None,
            next,
        }
    }

    fn state(store: &SqliteStore) -> (String, i64) {
        store
            .run_sync(
                |c| Ok(c.query_row("SELECT state, attempts FROM deliveries", [], |r| Ok((r.get(0)?, r.get(1)?)))?),
            )
            .unwrap()
    }

    /// Sweeps until the running delivery's lease has passed by the store's own clock (within 10 s).
    async fn sweep_once_the_lease_passes(store: &SqliteStore) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.sweep_expired_leases(now_ms()).await.unwrap() == 0 {
            assert!(std::time::Instant::now() < deadline, "the lease never passed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn an_expired_lease_returns_the_delivery_to_pending_and_a_late_outcome_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = one_pending(&dir).await;
        let now = now_ms();
        let claimed = store.claim_due("h".into(), 1, now, Duration::from_millis(200)).await.unwrap();
        assert_eq!(store.sweep_expired_leases(now + 600_000).await.unwrap(), 0, "a clock step does not end the lease");
        sweep_once_the_lease_passes(&store).await;
        assert_eq!(state(&store), ("pending".into(), 1), "swept, and the lost attempt still counts");
        // The outcome arrives after the sweep but before a new claim: it settles the delivery.
        store.finish_attempt(record(claimed[0].delivery_id, 1, Next::Done)).await.unwrap();
        assert_eq!(state(&store), ("done".into(), 1));
    }

    #[tokio::test]
    async fn a_late_outcome_never_settles_a_newer_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let store = one_pending(&dir).await;
        let now = now_ms();
        let first = store.claim_due("h".into(), 1, now, Duration::from_millis(1)).await.unwrap();
        sweep_once_the_lease_passes(&store).await;
        let second = store.claim_due("h".into(), 1, now_ms(), Duration::from_secs(60)).await.unwrap();
        assert_eq!(second[0].attempt, 2);
        store.finish_attempt(record(first[0].delivery_id, 1, Next::Dead)).await.unwrap();
        assert_eq!(state(&store), ("running".into(), 2), "the stale outcome is recorded, not applied");
        store.finish_attempt(record(second[0].delivery_id, 2, Next::Done)).await.unwrap();
        assert_eq!(state(&store), ("done".into(), 2));
        let outcomes: i64 =
            store.run_sync(|c| Ok(c.query_row("SELECT count(*) FROM attempts", [], |r| r.get(0))?)).unwrap();
        assert_eq!(outcomes, 2, "both attempts are in the history");
    }
}
