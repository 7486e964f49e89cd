//! The delivery outbox on PostgreSQL, shared by every host: claims take due rows with
//! `FOR UPDATE SKIP LOCKED` (two hosts never claim the same row), set a lease
//! (`lease_until`, by the database's clock), a fresh fencing token (`claim_token`, from the `claim_tokens`
//! sequence) and the claiming process (`claimed_by`). An outcome settles its delivery only
//! `WHERE claim_token = $token AND state = 'running'`: a host whose lease passed (swept
//! back to pending, perhaps claimed again elsewhere) records its attempt and changes
//! nothing else. The sweep returns expired leases to pending on any host; a stopping
//! daemon requeues only its own claims. Pauses and the breaker work as on SQLite
//! (`store/handlers.rs`), the pause row read `FOR UPDATE` so one probe is claimed at a time.

use deadpool_postgres::Transaction;

use super::PgStore;
use crate::handler::Delivery;
use crate::store::{AttemptRecord, BreakerStep, Claimed, Next, Paused, RouteFn, StoreError, Want};

async fn settle(tx: &Transaction<'_>, outcomes: &[AttemptRecord], now: i64) -> Result<(), StoreError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let insert = tx
        .prepare_cached(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome, status, error, excerpt)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    let update = tx
        .prepare_cached(
            "UPDATE deliveries SET state = $2, next_attempt_at = coalesce($3, next_attempt_at), updated_at = $4,
                    last_error = $5, last_status = $6, lease_until = NULL, claim_token = NULL, claimed_by = NULL
             WHERE id = $1 AND claim_token = $7 AND state = 'running'",
        )
        .await?;
    for a in outcomes {
        let (outcome, state, next_at) = match a.next {
            Next::Done => ("done", "done", None),
            Next::RetryAt(at) => ("retry", "pending", Some(at)),
            Next::Dead => ("dead", "dead", None),
        };
        let attempt = i64::from(a.attempt);
        tx.execute(
            &insert,
            &[&a.delivery_id, &attempt, &a.started_at, &a.duration_ms, &outcome, &a.status, &a.error, &a.excerpt],
        )
        .await?;
        tx.execute(&update, &[&a.delivery_id, &state, &next_at, &now, &a.error, &a.status, &a.claim_token]).await?;
    }
    Ok(())
}

pub(super) async fn paused(tx: &Transaction<'_>, handler: &str, lock: bool) -> Result<Option<Paused>, StoreError> {
    let sql = if lock {
        "SELECT paused_by, paused_at, probe_at FROM handler_state WHERE handler = $1 FOR UPDATE"
    } else {
        "SELECT paused_by, paused_at, probe_at FROM handler_state WHERE handler = $1"
    };
    let row = tx.query_opt(sql, &[&handler]).await?;
    Ok(row.map(|r| Paused { paused_by: r.get(0), paused_at: r.get(1), probe_at: r.get(2) }))
}

/// See `store/handlers.rs` `pause`.
pub(super) async fn pause(
    tx: &Transaction<'_>,
    handler: &str,
    reason: Option<&str>,
    by: &str,
    now: i64,
    probe_at: Option<i64>,
) -> Result<Option<String>, StoreError> {
    let before = paused(tx, handler, true).await?;
    tx.execute(
        "INSERT INTO handler_state (handler, paused_at, reason, paused_by, probe_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (handler) DO UPDATE SET reason = excluded.reason, paused_by = excluded.paused_by,
             probe_at = excluded.probe_at
         WHERE excluded.paused_by = 'operator'",
        &[&handler, &now, &reason, &by, &probe_at],
    )
    .await?;
    Ok(before.map(|p| p.paused_by))
}

/// See `store/handlers.rs` `resume`.
pub(super) async fn resume(
    tx: &Transaction<'_>,
    handler: &str,
    only_by: Option<&str>,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    let Some(p) = paused(tx, handler, true).await?.filter(|p| only_by.is_none_or(|by| by == p.paused_by)) else {
        return Ok(None);
    };
    tx.execute("DELETE FROM handler_state WHERE handler = $1", &[&handler]).await?;
    let paused_for = now.saturating_sub(p.paused_at).max(0);
    tx.execute(
        "UPDATE deliveries SET created_at = least(created_at + $2, $3)
         WHERE handler = $1 AND state IN ('pending', 'running')",
        &[&handler, &paused_for, &now],
    )
    .await?;
    Ok(Some(paused_for))
}

async fn breaker(tx: &Transaction<'_>, want: &Want, now: i64) -> Result<bool, StoreError> {
    let (alert, changed) = match &want.breaker {
        None => return Ok(false),
        Some(BreakerStep::Trip { reason, alert }) => {
            let probe_at = now.saturating_add(want.probe_interval.as_millis() as i64);
            (alert, pause(tx, &want.handler, Some(reason), "breaker", now, Some(probe_at)).await?.is_none())
        }
        Some(BreakerStep::Recovered { alert }) => {
            (alert, resume(tx, &want.handler, Some("breaker"), now).await?.is_some())
        }
    };
    match alert {
        Some((alert, route)) if changed => super::ingest::raise(tx, alert, &**route as &RouteFn, now).await,
        _ => Ok(false),
    }
}

/// How many of `want` to claim given its pause (see `store/sqlite/deliveries.rs` `claimable`).
async fn claimable(
    tx: &Transaction<'_>,
    i: usize,
    want: &Want,
    now: i64,
    claimed: &mut Claimed,
) -> Result<(usize, i64), StoreError> {
    let Some(p) = paused(tx, &want.handler, false).await? else {
        return Ok((want.limit, 0));
    };
    let paused_for = now.saturating_sub(p.paused_at).max(0);
    claimed.paused.insert(i, p.paused_by.clone());
    if p.paused_by != "breaker" || want.limit == 0 {
        if p.paused_by == "breaker" {
            let probe_at = p.probe_at.unwrap_or(now);
            claimed.next_due = Some(claimed.next_due.map_or(probe_at, |d| d.min(probe_at)));
        }
        return Ok((0, paused_for));
    }
    // One probe at a time over every host: re-read the pause with its row locked.
    let Some(p) = paused(tx, &want.handler, true).await? else {
        return Ok((want.limit, 0));
    };
    let probe_at = p.probe_at.unwrap_or(now);
    if probe_at > now {
        claimed.next_due = Some(claimed.next_due.map_or(probe_at, |d| d.min(probe_at)));
        return Ok((0, paused_for));
    }
    let next = now.saturating_add(want.probe_interval.as_millis() as i64);
    tx.execute("UPDATE handler_state SET probe_at = $2 WHERE handler = $1", &[&want.handler, &next]).await?;
    claimed.next_due = Some(claimed.next_due.map_or(next, |d| d.min(next)));
    Ok((1, paused_for))
}

async fn claim(tx: &Transaction<'_>, wants: &[Want], now: i64, instance: &str) -> Result<Claimed, StoreError> {
    let mut claimed = Claimed::default();
    for want in wants {
        claimed.alerted |= breaker(tx, want, now).await?;
    }
    let mark = tx
        .prepare_cached(
            "WITH due AS (
                 SELECT id FROM deliveries WHERE handler = $2 AND state = 'pending' AND next_attempt_at <= $1
                 ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED),
             claimed AS (
                 UPDATE deliveries d SET state = 'running', attempts = d.attempts + 1, updated_at = $1,
                        lease_until = (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $4,
                        claim_token = nextval('claim_tokens'), claimed_by = $5
                 FROM due WHERE d.id = due.id
                 RETURNING d.id, d.event_id, d.webhook_id, d.attempts, d.created_at, d.claim_token)
             SELECT c.id, c.event_id, c.webhook_id, c.attempts, e.event_type, e.file_id, e.task_id, e.content,
                    c.created_at, e.source, e.sub_app_id, c.claim_token
             FROM claimed c JOIN events e ON e.id = c.event_id ORDER BY c.id",
        )
        .await?;
    let next_due = tx
        .prepare_cached("SELECT min(next_attempt_at) FROM deliveries WHERE handler = $1 AND state = 'pending'")
        .await?;
    for (i, want) in wants.iter().enumerate() {
        let (limit, paused_for) = claimable(tx, i, want, now, &mut claimed).await?;
        if limit == 0 {
            continue;
        }
        let lease_ms = want.lease.as_millis().min(i64::MAX as u128) as i64;
        let rows = tx.query(&mark, &[&now, &want.handler, &(limit as i64), &lease_ms, &instance]).await?;
        if rows.len() < limit && !claimed.paused.contains_key(&i) {
            if let Some(due) = tx.query_one(&next_due, &[&want.handler]).await?.get::<_, Option<i64>>(0) {
                claimed.next_due = Some(claimed.next_due.map_or(due, |d| d.min(due)));
            }
        }
        for r in rows {
            let delivery = Delivery {
                delivery_id: r.get(0),
                event_id: r.get(1),
                webhook_id: r.get(2),
                attempt: r.get::<_, i64>(3).clamp(0, i64::from(u32::MAX)) as u32,
                event_type: r.get(4),
                file_id: r.get(5),
                task_id: r.get(6),
                body: r.get(7),
                created_at: r.get::<_, i64>(8).saturating_add(paused_for).min(now),
                source: r.get(9),
                sub_app_id: r.get::<_, Option<i64>>(10).map(|id| id as u64),
                claim_token: r.get(11),
            };
            claimed.deliveries.push((i, delivery));
        }
    }
    Ok(claimed)
}

impl PgStore {
    /// See [`crate::store::Outbox::settle_and_claim`]. `data_version` is always 0 here:
    /// the dispatcher steps every poll interval on PostgreSQL (other hosts write all the time).
    pub async fn settle_and_claim(
        &self,
        outcomes: &[AttemptRecord],
        wants: &[Want],
        now: i64,
    ) -> Result<Claimed, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        settle(&tx, outcomes, now).await?;
        let claimed = claim(&tx, wants, now, &self.instance).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Returns the `running` claims of this node (`node.name`: this process's, and those an
    /// earlier run under the same name left behind when it died) to pending, at start and
    /// at shutdown after the drain; never another node's, whose attempts may be in flight.
    pub async fn requeue_own(&self) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE deliveries SET state = 'pending', attempts = greatest(attempts - 1, 0), lease_until = NULL,
                        claim_token = NULL, claimed_by = NULL
                 WHERE state = 'running' AND split_part(claimed_by, '/', 1) = $1",
                &[&self.node],
            )
            .await?;
        Ok(n as usize)
    }

    /// Returns `running` deliveries whose lease passed before `now` to pending, whoever
    /// claimed them; their token is cleared, so a late outcome only records its attempt.
    /// Leases are set and judged by PostgreSQL's clock (and never before this host's
    /// `now`), so the hosts' clock skew cannot make two attempts of a delivery overlap.
    /// Rows another transaction holds (an outcome being written) are left to the next sweep.
    pub async fn sweep_expired_leases(&self, now: i64) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE deliveries SET state = 'pending', lease_until = NULL, claim_token = NULL, claimed_by = NULL,
                        updated_at = $1
                 WHERE id IN (SELECT id FROM deliveries WHERE state = 'running'
                                AND lease_until < least($1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                              FOR UPDATE SKIP LOCKED)",
                &[&now],
            )
            .await?;
        Ok(n as usize)
    }
}
