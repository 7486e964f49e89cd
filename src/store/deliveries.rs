//! The `deliveries` and `attempts` tables: the durable outbox the dispatcher works from.
//! A delivery is claimed (`pending` → `running`) before its attempt and settled
//! (`done`, `dead`, or `pending` again with a later `next_attempt_at`) in the same
//! transaction that records the attempt. A claim carries a lease: a `running` row whose
//! lease passed without an outcome is returned to `pending` by [`Store::sweep_expired_leases`],
//! and rows left `running` by a crash are requeued at the next start. An outcome only
//! settles its delivery while no later attempt has claimed it, so a late outcome never
//! overrides a newer one; it is recorded in `attempts` either way.
//!
//! A paused handler (see [`super::handlers`]) gets nothing claimed, in the same transaction
//! that reads its pause, so a pause committed before a step is always honoured; a handler
//! paused by its breaker gets one probe delivery claimed each `probe_interval`.

use std::sync::Arc;

use rusqlite::{params, Connection, Row};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Store, StoreError};
use crate::handler::Delivery;

/// The stable id of an event's delivery to a handler (`webhook-id`, `VOD_EVENT_ID`):
/// derived from the content and the handler name, so it is the same on every retry and
/// replay, even after the event row is pruned and received again.
pub fn webhook_id(dedupe_key: &[u8], occurrence: i64, handler: &str) -> String {
    let mut h = Sha256::new();
    h.update(dedupe_key);
    h.update([0]);
    h.update(handler.as_bytes());
    // The first occurrence keeps the id it had before occurrences were counted.
    if occurrence > 1 {
        h.update([0]);
        h.update(occurrence.to_string().as_bytes());
    }
    format!("msg_{}", &crate::event::hex(&h.finalize())[..32])
}

/// Inserts one pending delivery per handler for a newly stored event (occurrence
/// `occurrence` of its content).
pub(crate) fn route_new_event(
    conn: &Connection,
    event_id: i64,
    dedupe_key: &[u8],
    occurrence: i64,
    handlers: &[String],
    now: i64,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO deliveries (event_id, handler, webhook_id, state, next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, 'pending', ?4, ?4, ?4)",
    )?;
    for handler in handlers {
        stmt.execute(params![event_id, handler, webhook_id(dedupe_key, occurrence, handler), now])?;
    }
    Ok(())
}

/// Records `outcomes` and settles their deliveries (see [`Store::settle_and_claim`]).
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

/// Claims due deliveries for each want (see [`Store::settle_and_claim`]).
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
        let lease_until = now.saturating_add(want.lease.as_millis() as i64);
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

/// How an attempt ended, for [`Store::finish_attempt`].
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The delivery.
    pub delivery_id: i64,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The claim's fencing token (PostgreSQL; SQLite fences by `attempt` and ignores it).
    pub claim_token: i64,
    /// Start, Unix ms.
    pub started_at: i64,
    /// Duration, ms.
    pub duration_ms: i64,
    /// HTTP status or exit code.
    pub status: Option<i64>,
    /// Error text (failures only).
    pub error: Option<String>,
    /// Response or output excerpt.
    pub excerpt: Option<String>,
    /// What happens next.
    pub next: Next,
}

/// The delivery's next state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Delivered.
    Done,
    /// Try again at this Unix ms.
    RetryAt(i64),
    /// Give up.
    Dead,
}

/// A delivery as listed.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRow {
    /// Row id.
    pub id: i64,
    /// The event.
    pub event_id: i64,
    /// The event's type.
    pub event_type: String,
    /// Handler name.
    pub handler: String,
    /// Stable id.
    pub webhook_id: String,
    /// `pending`, `running`, `done` or `dead`.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// Next attempt, Unix ms.
    pub next_attempt_at: i64,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Last change, Unix ms.
    pub updated_at: i64,
    /// Last error.
    pub last_error: Option<String>,
    /// Last HTTP status or exit code.
    pub last_status: Option<i64>,
    /// Why it waits for a handler that is no longer configured, if it does.
    pub orphaned_reason: Option<String>,
}

/// An attempt as listed.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    /// Attempt number.
    pub attempt: i64,
    /// Start, Unix ms.
    pub started_at: i64,
    /// Duration, ms.
    pub duration_ms: i64,
    /// `done`, `retry` or `dead`.
    pub outcome: String,
    /// HTTP status or exit code.
    pub status: Option<i64>,
    /// Error text.
    pub error: Option<String>,
    /// Response or output excerpt.
    pub excerpt: Option<String>,
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

/// Filters for [`Store::list_deliveries`].
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only this state.
    pub state: Option<String>,
    /// Only this handler.
    pub handler: Option<String>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// What the dispatcher asks of one handler in [`Store::settle_and_claim`].
#[derive(Clone)]
pub struct Want {
    /// The handler.
    pub handler: String,
    /// Claim at most this many (its free permits, fewer while its rate limit allows fewer;
    /// 0 to learn only whether it is paused).
    pub limit: usize,
    /// How long a claimed delivery stays leased.
    pub lease: std::time::Duration,
    /// While paused by its breaker, one delivery is claimed as a probe this often.
    pub probe_interval: std::time::Duration,
    /// A breaker change to write before claiming.
    pub breaker: Option<BreakerStep>,
}

impl Want {
    /// A want with no breaker.
    pub fn new(handler: String, limit: usize, lease: std::time::Duration) -> Want {
        Want { handler, limit, lease, probe_interval: std::time::Duration::ZERO, breaker: None }
    }
}

/// An alert to raise with a breaker change, and how to route it.
pub type AlertWith = Option<(crate::alerts::Alert, Arc<super::RouteFn>)>;

/// A change of a handler's breaker, written in the step's transaction.
#[derive(Clone)]
pub enum BreakerStep {
    /// Too many attempts failed in a row: pause the handler (unless paused already), first
    /// probe after `probe_interval`, and raise the alert if it was not paused.
    Trip {
        /// Shown by `handlers list`.
        reason: String,
        /// `vod-eventd.handler.paused`.
        alert: AlertWith,
    },
    /// An attempt succeeded: resume the handler if its breaker paused it, and raise the
    /// alert if it did.
    Recovered {
        /// `vod-eventd.handler.resumed`.
        alert: AlertWith,
    },
}

/// What [`Store::settle_and_claim`] claimed.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The claimed deliveries, each with the index of its [`Want`].
    pub deliveries: Vec<(usize, Delivery)>,
    /// The earliest `next_attempt_at` (Unix ms) of a pending delivery of a handler whose
    /// want was not filled, if any: when to look again.
    pub next_due: Option<i64>,
    /// `PRAGMA data_version` as this transaction read the store: a later value means another
    /// connection (the CLI) committed since, perhaps scheduling deliveries.
    pub data_version: i64,
    /// The wants (by index) whose handler is paused, with who paused it.
    pub paused: std::collections::BTreeMap<usize, String>,
    /// A breaker change raised an alert (new deliveries to claim).
    pub alerted: bool,
}

impl Store {
    /// Marks up to `limit` due deliveries of `handler` as running, leased until
    /// `now + lease`, and returns them.
    pub async fn claim_due(
        &self,
        handler: String,
        limit: usize,
        now: i64,
        lease: std::time::Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        let claimed = self.settle_and_claim(Arc::from([]), vec![Want::new(handler, limit, lease)], now).await?;
        Ok(claimed.deliveries.into_iter().map(|(_, d)| d).collect())
    }

    /// Records an attempt and settles its delivery, in one transaction.
    pub async fn finish_attempt(&self, a: AttemptRecord) -> Result<(), StoreError> {
        self.finish_attempts(vec![a]).await
    }

    /// Records several attempts and settles their deliveries, in one transaction.
    pub async fn finish_attempts(&self, records: Vec<AttemptRecord>) -> Result<(), StoreError> {
        self.settle_and_claim(records.into(), Vec::new(), super::now_ms()).await.map(drop)
    }

    /// The dispatcher's group commit: records finished attempts and settles their
    /// deliveries, then claims due deliveries for every handler in `wants` (leased until
    /// `now + lease`), all in one transaction with bookkeeping durability. A delivery is
    /// settled only if the attempt is still its latest claim (it may have been swept back
    /// to `pending`, but not claimed again); the attempt is recorded either way. If the
    /// transaction fails, nothing of it happened: the caller keeps the outcomes and tries
    /// again.
    pub async fn settle_and_claim(
        &self,
        outcomes: Arc<[AttemptRecord]>,
        wants: Vec<Want>,
        now: i64,
    ) -> Result<Claimed, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.settle_and_claim(&outcomes, &wants, now).await;
        }
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

    /// Puts deliveries left `running` (by a crash or an interrupted shutdown) back to
    /// `pending`; their attempt is retried. Returns how many.
    pub async fn requeue_running(&self) -> Result<usize, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.requeue_own().await;
        }
        self.run(|conn| {
            Ok(conn.execute(
                "UPDATE deliveries SET state = 'pending', attempts = max(attempts - 1, 0), lease_until = NULL
                 WHERE state = 'running'",
                [],
            )?)
        })
        .await
    }

    /// Returns `running` deliveries whose lease passed before `now` to `pending`, due at
    /// once; the lost attempt still counts. Only reads unless there is something to
    /// sweep. Returns how many.
    pub async fn sweep_expired_leases(&self, now: i64) -> Result<usize, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.sweep_expired_leases(now).await;
        }
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

    /// Deliveries matching `filter`, newest first.
    pub fn list_deliveries(&self, f: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.block(pg.list_deliveries(f));
        }
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

    /// An event's deliveries, each with its attempts.
    pub fn event_deliveries(&self, event_id: i64) -> Result<Vec<(DeliveryRow, Vec<AttemptRow>)>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.block(pg.event_deliveries(event_id));
        }
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

    /// Schedules a fresh delivery of an event (same `webhook-id`) to `handler`, or to
    /// every handler it was delivered to before. Returns the handlers scheduled.
    pub fn replay(&self, event_id: i64, handler: Option<&str>) -> Result<Vec<String>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.block(pg.replay(event_id, handler));
        }
        let now = super::now_ms();
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
            route_new_event(&tx, event_id, &key, occurrence, &handlers, now)?;
            tx.commit()?;
            Ok(handlers)
        })
    }

    /// Makes dead deliveries (of one handler, or all) pending again, due now.
    pub fn retry_dead(&self, handler: Option<&str>) -> Result<usize, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.block(pg.retry_dead(handler));
        }
        let now = super::now_ms();
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

    #[test]
    fn a_claim_reads_due_deliveries_in_index_order_without_sorting() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
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

    async fn one_pending(dir: &tempfile::TempDir) -> Store {
        let store = Store::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
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

    fn state(store: &Store) -> (String, i64) {
        store
            .run_sync(
                |c| Ok(c.query_row("SELECT state, attempts FROM deliveries", [], |r| Ok((r.get(0)?, r.get(1)?)))?),
            )
            .unwrap()
    }

    #[tokio::test]
    async fn an_expired_lease_returns_the_delivery_to_pending_and_a_late_outcome_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = one_pending(&dir).await;
        let now = now_ms();
        let claimed = store.claim_due("h".into(), 1, now, Duration::from_secs(60)).await.unwrap();
        assert_eq!(store.sweep_expired_leases(now + 59_000).await.unwrap(), 0, "the lease holds");
        assert_eq!(store.sweep_expired_leases(now + 61_000).await.unwrap(), 1);
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
        store.sweep_expired_leases(now + 10).await.unwrap();
        let second = store.claim_due("h".into(), 1, now + 10, Duration::from_secs(60)).await.unwrap();
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
