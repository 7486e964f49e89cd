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

use super::listen::Topic;
use super::PgStore;
use crate::handler::Delivery;
use crate::store::{AttemptRecord, BreakerStep, Claimed, Next, Paused, RouteFn, StoreError, Want};

/// Writes `outcomes` in one statement, whatever their number: every attempt row, and
/// each delivery's next state where its claim still holds (`claim_token`, `running`).
async fn settle(tx: &Transaction<'_>, outcomes: &[AttemptRecord], now: i64) -> Result<(), StoreError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let stmt = tx.prepare_cached(SETTLE).await?;
    let mut o = Outcomes::default();
    for a in outcomes {
        let (outcome, state, next_at) = match a.next {
            Next::Done => ("done", "done", None),
            Next::RetryAt(at) => ("retry", "pending", Some(at)),
            Next::Dead => ("dead", "dead", None),
        };
        o.ids.push(a.delivery_id);
        o.attempts.push(i64::from(a.attempt));
        o.started.push(a.started_at);
        o.durations.push(a.duration_ms);
        o.outcomes.push(outcome);
        o.statuses.push(a.status);
        o.errors.push(a.error.as_deref());
        o.excerpts.push(a.excerpt.as_deref());
        o.states.push(state);
        o.next_at.push(next_at);
        o.tokens.push(a.claim_token);
    }
    tx.execute(
        &stmt,
        &[
            &o.ids,
            &o.attempts,
            &o.started,
            &o.durations,
            &o.outcomes,
            &o.statuses,
            &o.errors,
            &o.excerpts,
            &o.states,
            &o.next_at,
            &o.tokens,
            &now,
        ],
    )
    .await?;
    Ok(())
}

/// The columns of [`SETTLE`], one entry per outcome.
#[derive(Default)]
struct Outcomes<'a> {
    ids: Vec<i64>,
    attempts: Vec<i64>,
    started: Vec<i64>,
    durations: Vec<i64>,
    outcomes: Vec<&'static str>,
    statuses: Vec<Option<i64>>,
    errors: Vec<Option<&'a str>>,
    excerpts: Vec<Option<&'a str>>,
    states: Vec<&'static str>,
    next_at: Vec<Option<i64>>,
    tokens: Vec<i64>,
}

/// A step's outcomes: the attempts and the deliveries' next states, one statement (two
/// data-modifying parts of one `unnest`). A delivery appears once per step (its outcome is
/// written before it can be claimed again), and a stale token matches no row.
const SETTLE: &str = "WITH o AS (
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[],
                              $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bigint[])
              AS o (delivery_id, attempt, started_at, duration_ms, outcome, status, error, excerpt, state, next_at, token)),
     recorded AS (
         INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome, status, error, excerpt)
         SELECT delivery_id, attempt, started_at, duration_ms, outcome, status, error, excerpt FROM o)
     UPDATE deliveries d SET state = o.state, next_attempt_at = coalesce(o.next_at, d.next_attempt_at), updated_at = $12,
            last_error = o.error, last_status = o.status, lease_until = NULL, claim_token = NULL, claimed_by = NULL
     FROM o WHERE d.id = o.delivery_id AND d.claim_token = o.token AND d.state = 'running'";

/// A step's claims for every want at once, one statement: the wants whose handler is not
/// paused take up to their limit of due rows each (`FOR UPDATE SKIP LOCKED`, in due order);
/// rows of kind 0 are the claimed deliveries with their event, kind 1 the earliest pending
/// `next_attempt_at` of a want left unfilled (rows claimed here excluded; rows another host
/// holds locked included, so the step comes back for them), kind 2 a want's pause.
const CLAIM: &str = "WITH w AS (
         SELECT * FROM unnest($2::text[], $3::bigint[], $4::bigint[]) WITH ORDINALITY AS w (handler, lim, lease_ms, i)),
     open AS (SELECT * FROM w WHERE NOT EXISTS (SELECT 1 FROM handler_state h WHERE h.handler = w.handler)),
     due AS (
         SELECT d.id, open.i, open.lease_ms FROM open CROSS JOIN LATERAL (
             SELECT id FROM deliveries WHERE handler = open.handler AND state = 'pending' AND next_attempt_at <= $1
             ORDER BY next_attempt_at, id LIMIT open.lim FOR UPDATE SKIP LOCKED) d),
     claimed AS (
         UPDATE deliveries d SET state = 'running', attempts = d.attempts + 1, updated_at = $1,
                lease_until = (extract(epoch FROM clock_timestamp()) * 1000)::bigint + due.lease_ms,
                claim_token = nextval('claim_tokens'), claimed_by = $5
         FROM due WHERE d.id = due.id
         RETURNING due.i, d.id, d.event_id, d.webhook_id, d.attempts, d.created_at, d.claim_token)
     SELECT 0 AS kind, c.i, c.id, c.event_id, c.webhook_id, c.attempts, e.event_type, e.file_id, e.task_id, e.content,
            c.created_at, e.source, e.sub_app_id, c.claim_token, NULL::text AS paused_by, NULL::bigint AS paused_at
     FROM claimed c JOIN events e ON e.id = c.event_id
     UNION ALL
     SELECT 1, open.i, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            (SELECT min(x.next_attempt_at) FROM deliveries x
             WHERE x.handler = open.handler AND x.state = 'pending' AND x.id NOT IN (SELECT id FROM due)),
            NULL, NULL
     FROM open WHERE (SELECT count(*) FROM due WHERE due.i = open.i) < open.lim
     UNION ALL
     SELECT 2, w.i, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, h.probe_at, h.paused_by, h.paused_at
     FROM w JOIN handler_state h ON h.handler = w.handler
     ORDER BY 1, 2, 3";

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

/// One delivery of `want`'s handler as its breaker's probe, if the pause `p` (read by
/// [`CLAIM`]) lets one go now (see `store/sqlite/deliveries.rs` `claimable`): one probe at
/// a time over every host, so the pause is read again with its row locked.
async fn probe(
    tx: &Transaction<'_>,
    (i, want): (usize, &Want),
    p: Paused,
    now: i64,
    instance: &str,
    claimed: &mut Claimed,
) -> Result<(), StoreError> {
    let mut next_due = |at: i64| claimed.next_due = Some(claimed.next_due.map_or(at, |d| d.min(at)));
    let paused_for = now.saturating_sub(p.paused_at).max(0);
    let is_breaker = p.paused_by == "breaker";
    if !is_breaker || want.limit == 0 {
        if is_breaker {
            next_due(p.probe_at.unwrap_or(now));
        }
        claimed.paused.insert(i, p.paused_by);
        return Ok(());
    }
    let (limit, paused_for) = match paused(tx, &want.handler, true).await? {
        // Resumed meanwhile: claimed as an open handler.
        None => (want.limit, 0),
        Some(p) => {
            let probe_at = p.probe_at.unwrap_or(now);
            if probe_at > now {
                next_due(probe_at);
                claimed.paused.insert(i, p.paused_by);
                return Ok(());
            }
            let next = now.saturating_add(want.probe_interval.as_millis() as i64);
            tx.execute("UPDATE handler_state SET probe_at = $2 WHERE handler = $1", &[&want.handler, &next]).await?;
            next_due(next);
            (1, paused_for)
        }
    };
    claimed.paused.insert(i, "breaker".to_string());
    let mark = tx.prepare_cached(MARK).await?;
    let lease_ms = want.lease.as_millis().min(i64::MAX as u128) as i64;
    for r in tx.query(&mark, &[&now, &want.handler, &(limit as i64), &lease_ms, &instance]).await? {
        claimed.deliveries.push((i, delivery(&r, 0, paused_for, now)));
    }
    Ok(())
}

/// One want's claim (the breaker's probe only; [`CLAIM`] claims for every open handler).
const MARK: &str = "WITH due AS (
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
     FROM claimed c JOIN events e ON e.id = c.event_id ORDER BY c.id";

/// The delivery in row `r`, its columns (those of [`MARK`]) from column `at` on.
fn delivery(r: &tokio_postgres::Row, at: usize, paused_for: i64, now: i64) -> Delivery {
    Delivery {
        delivery_id: r.get(at),
        event_id: r.get(at + 1),
        webhook_id: r.get(at + 2),
        attempt: r.get::<_, i64>(at + 3).clamp(0, i64::from(u32::MAX)) as u32,
        event_type: r.get(at + 4),
        file_id: r.get(at + 5),
        task_id: r.get(at + 6),
        body: r.get(at + 7),
        created_at: r.get::<_, i64>(at + 8).saturating_add(paused_for).min(now),
        source: r.get(at + 9),
        sub_app_id: r.get::<_, Option<i64>>(at + 10).map(|id| id as u64),
        claim_token: r.get(at + 11),
    }
}

/// Writes the wants' breaker steps, then claims for every want with [`CLAIM`] (one
/// statement); a breaker-paused handler whose probe is due takes its probe apart.
async fn claim(tx: &Transaction<'_>, wants: &[Want], now: i64, instance: &str) -> Result<Claimed, StoreError> {
    let mut claimed = Claimed::default();
    for want in wants {
        claimed.alerted |= breaker(tx, want, now).await?;
    }
    if wants.is_empty() {
        return Ok(claimed);
    }
    let stmt = tx.prepare_cached(CLAIM).await?;
    let handlers: Vec<&str> = wants.iter().map(|w| w.handler.as_str()).collect();
    let limits: Vec<i64> = wants.iter().map(|w| w.limit as i64).collect();
    let leases: Vec<i64> = wants.iter().map(|w| w.lease.as_millis().min(i64::MAX as u128) as i64).collect();
    let mut pauses = Vec::new();
    for r in tx.query(&stmt, &[&now, &handlers, &limits, &leases, &instance]).await? {
        let i = (r.get::<_, i64>(1) - 1) as usize;
        match r.get::<_, i32>(0) {
            0 => claimed.deliveries.push((i, delivery(&r, 2, 0, now))),
            1 => {
                if let Some(due) = r.get::<_, Option<i64>>(13) {
                    claimed.next_due = Some(claimed.next_due.map_or(due, |d| d.min(due)));
                }
            }
            _ => pauses.push((i, Paused { paused_by: r.get(14), paused_at: r.get(15), probe_at: r.get(13) })),
        }
    }
    for (i, p) in pauses {
        probe(tx, (i, &wants[i]), p, now, instance, &mut claimed).await?;
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
        // A breaker's pause or resume (and its alert's deliveries) concern every host.
        if wants.iter().any(|w| w.breaker.is_some()) {
            self.notify(&tx, Topic::Work).await?;
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Returns the `running` claims of this node (`node.name`: this process's, and those an
    /// earlier run under the same name left behind when it died) to pending, at start and
    /// at shutdown after the drain; never another node's, whose attempts may be in flight.
    pub async fn requeue_own(&self) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                "UPDATE deliveries SET state = 'pending', attempts = greatest(attempts - 1, 0), lease_until = NULL,
                        claim_token = NULL, claimed_by = NULL
                 WHERE state = 'running' AND split_part(claimed_by, '/', 1) = $1",
                &[&self.node],
            )
            .await?;
        if n > 0 {
            self.notify(&tx, Topic::Work).await?;
        }
        tx.commit().await?;
        Ok(n as usize)
    }

    /// Returns `running` deliveries whose lease passed before `now` to pending, whoever
    /// claimed them; their token is cleared, so a late outcome only records its attempt.
    /// Leases are set and judged by PostgreSQL's clock (and never before this host's
    /// `now`), so the hosts' clock skew cannot make two attempts of a delivery overlap.
    /// Rows another transaction holds (an outcome being written) are left to the next sweep.
    pub async fn sweep_expired_leases(&self, now: i64) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(SWEEP).await?;
        let row = client.query_one(&stmt, &[&now, &format!("work {}", self.instance)]).await?;
        let left: Option<i64> = row.get(1);
        self.lease_ends_in.store(left.map_or(-1, |ms| ms.max(0)), std::sync::atomic::Ordering::Relaxed);
        Ok(row.get::<_, i64>(0) as usize)
    }
}

/// The sweep: one statement (its own transaction) that returns expired leases to pending,
/// announces them (the `pg_notify` runs only when it swept some), and reads how long until
/// the earliest lease left ends, by the server's clock (the one leases are set by).
const SWEEP: &str = "WITH swept AS (
         UPDATE deliveries SET state = 'pending', lease_until = NULL, claim_token = NULL, claimed_by = NULL,
                updated_at = $1
         WHERE id IN (SELECT id FROM deliveries WHERE state = 'running'
                        AND lease_until < least($1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                      FOR UPDATE SKIP LOCKED)
         RETURNING 1),
     n AS (SELECT count(*) AS n FROM swept)
     SELECT n.n,
            (SELECT min(lease_until) FROM deliveries WHERE state = 'running'
               AND lease_until >= least($1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint))
              - (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
            (SELECT count(*) FROM pg_notify('vod_eventd', $2) WHERE n.n > 0)
     FROM n";
