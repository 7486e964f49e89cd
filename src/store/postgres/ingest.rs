//! Storing events on PostgreSQL: one transaction per pulled batch, with the same
//! occurrence rules as the SQLite store (`store/events.rs`): a content whose latest row is
//! not confirmed folds into it (`times_seen`), one whose latest row was confirmed gets a
//! new occurrence, and a new row gets its files and its deliveries in the same
//! transaction. The insert is `ON CONFLICT (dedupe_key, occurrence)`: when another host
//! stores the same content at the same moment, this one waits for its commit and folds.
//! A batch is stored in dedupe-key order (two hosts never deadlock on overlapping batches),
//! so the ids of one batch's new rows follow their keys, not the order they were pulled in.
//! Also the alerts (`alert_log` hold-back, the alert event) and the dead-delivery scan.

use std::collections::BTreeMap;

use deadpool_postgres::Transaction;
use serde_json::json;

use super::PgStore;
use crate::alert_event::{Alert, AlertKind, ALERT_HOLD};
use crate::event::ReceivedEvent;
use crate::names::ALERT_SOURCE;
use crate::route::Routed;
use crate::store::deliveries::webhook_id;
use crate::store::{Batch, Inserted, RouteFn, StoreError};

/// Stores `events` in `tx`, routing each new one with `route` (see the module doc).
pub(super) async fn insert_rows(
    tx: &Transaction<'_>,
    events: &[ReceivedEvent],
    route: &mut (dyn FnMut(usize, &ReceivedEvent) -> Routed + Send),
    now: i64,
) -> Result<Vec<(Inserted, Routed)>, StoreError> {
    let latest = tx
        .prepare_cached(
            "SELECT id, occurrence, confirmed_at IS NOT NULL FROM events WHERE dedupe_key = $1
             ORDER BY occurrence DESC LIMIT 1",
        )
        .await?;
    let fold =
        tx.prepare_cached("UPDATE events SET last_seen_at = $2, times_seen = times_seen + 1 WHERE id = $1").await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO events (dedupe_key, occurrence, event_type, version, file_id, task_id, content, received_at,
                                 last_seen_at, api, source, sub_app_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11)
             ON CONFLICT (dedupe_key, occurrence)
             DO UPDATE SET last_seen_at = excluded.last_seen_at, times_seen = events.times_seen + 1
             RETURNING id, xmax = 0",
        )
        .await?;
    // In dedupe-key order, so two hosts storing overlapping batches lock rows in the same
    // order and never deadlock; the results go back in the batch's order.
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| events[i].dedupe_key);
    let mut out: Vec<Option<(Inserted, Routed)>> = vec![None; events.len()];
    for i in order {
        let e = &events[i];
        let key = &e.dedupe_key[..];
        let found = tx.query_opt(&latest, &[&key]).await?;
        let occurrence: i64 = match found.map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, bool>(2))) {
            Some((id, _, false)) => {
                tx.execute(&fold, &[&id, &now]).await?;
                out[i] = Some((Inserted { id, new: false }, Routed::default()));
                continue;
            }
            Some((_, occurrence, true)) => occurrence + 1,
            None => 1,
        };
        let sub_app_id = e.sub_app_id.map(|id| id as i64);
        let row = tx
            .query_one(
                &insert,
                &[
                    &key,
                    &occurrence,
                    &e.event_type,
                    &e.version,
                    &e.file_id,
                    &e.task_id,
                    &e.content,
                    &now,
                    &e.api.as_str(),
                    &e.source,
                    &sub_app_id,
                ],
            )
            .await?;
        let (id, new): (i64, bool) = (row.get(0), row.get(1));
        if !new {
            out[i] = Some((Inserted { id, new: false }, Routed::default()));
            continue;
        }
        index_files(tx, id, e).await?;
        let routed = route(i, e);
        route_new_event(tx, id, key, occurrence, &routed.handlers, now).await?;
        out[i] = Some((Inserted { id, new: true }, routed));
    }
    Ok(out.into_iter().map(|row| row.expect("every event of the batch was stored")).collect())
}

async fn index_files(tx: &Transaction<'_>, id: i64, event: &ReceivedEvent) -> Result<(), StoreError> {
    if event.files.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO event_files (file_id, event_id, role) VALUES ($1, $2, $3)
             ON CONFLICT (file_id, event_id) DO UPDATE SET role = excluded.role",
        )
        .await?;
    for (file_id, role) in &event.files {
        tx.execute(&stmt, &[file_id, &id, &role.as_str()]).await?;
    }
    Ok(())
}

/// One pending delivery per handler for a newly stored event.
pub(super) async fn route_new_event(
    tx: &Transaction<'_>,
    event_id: i64,
    dedupe_key: &[u8],
    occurrence: i64,
    handlers: &[String],
    now: i64,
) -> Result<(), StoreError> {
    if handlers.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO deliveries (event_id, handler, webhook_id, state, next_attempt_at, created_at, updated_at)
             VALUES ($1, $2, $3, 'pending', $4, $4, $4)",
        )
        .await?;
    for handler in handlers {
        tx.execute(&stmt, &[&event_id, handler, &webhook_id(dedupe_key, occurrence, handler), &now]).await?;
    }
    Ok(())
}

/// Stores `alert` unless held back (see `store/alerts.rs`); true if stored and routed.
pub(super) async fn raise(tx: &Transaction<'_>, alert: &Alert, route: &RouteFn, now: i64) -> Result<bool, StoreError> {
    let routed = route(&alert.event(0));
    if routed.handlers.is_empty() {
        return Ok(false);
    }
    let kind = alert.kind.event_type();
    let last = tx
        .query_opt(
            "SELECT last_at, held_back FROM alert_log WHERE kind = $1 AND subject = $2 FOR UPDATE",
            &[&kind, &alert.subject],
        )
        .await?
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)));
    if let Some((last_at, _)) = last.filter(|(at, _)| (0..ALERT_HOLD.as_millis() as i64).contains(&(now - at))) {
        tx.execute(
            "UPDATE alert_log SET held_back = held_back + 1 WHERE kind = $1 AND subject = $2 AND last_at = $3",
            &[&kind, &alert.subject, &last_at],
        )
        .await?;
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO alert_log (kind, subject, last_at, held_back) VALUES ($1, $2, $3, 0)
         ON CONFLICT (kind, subject) DO UPDATE SET last_at = excluded.last_at, held_back = 0",
        &[&kind, &alert.subject, &now],
    )
    .await?;
    let event = alert.event(last.map_or(0, |(_, held)| held));
    let stored = insert_rows(tx, &[event], &mut |_, _| routed.clone(), now).await?;
    Ok(stored.iter().any(|(row, _)| row.new))
}

/// One alert per handler for the dead deliveries among `ids` (not of alert events).
async fn dead_alerts(tx: &Transaction<'_>, ids: &[i64]) -> Result<Vec<Alert>, StoreError> {
    let rows = tx
        .query(
            "SELECT d.handler, d.webhook_id, d.event_id, e.event_type, d.last_status, d.last_error
             FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.id = ANY($1) AND d.state = 'dead' AND e.source != $2 ORDER BY d.id",
            &[&ids, &ALERT_SOURCE],
        )
        .await?;
    let mut by_handler: BTreeMap<String, (i64, serde_json::Value)> = BTreeMap::new();
    for r in rows {
        let delivery = json!({"webhook_id": r.get::<_, String>(1), "event_id": r.get::<_, i64>(2),
                              "event_type": r.get::<_, String>(3), "status": r.get::<_, Option<i64>>(4),
                              "error": r.get::<_, Option<String>>(5)});
        by_handler.entry(r.get(0)).or_insert((0, delivery)).0 += 1;
    }
    Ok(by_handler
        .into_iter()
        .map(|(handler, (count, delivery))| {
            let error = delivery["error"].as_str().unwrap_or("none recorded").to_string();
            let mut alert = Alert::new(
                AlertKind::DeliveryDead,
                &handler,
                format!("{count} deliveries to handler {handler} went dead (last error: {error}). List them with `vod-eventd deliveries list --state dead --handler {handler}`; once the receiver is fixed, `vod-eventd deliveries retry --dead --handler {handler}`."),
            );
            alert.details.insert("deliveries".into(), count.into());
            alert.details.insert("delivery".into(), delivery);
            alert
        })
        .collect())
}

impl PgStore {
    /// See [`crate::store::Store::insert_events`].
    pub async fn insert_batch(
        &self,
        events: &[ReceivedEvent],
        route: &mut (dyn FnMut(usize, &ReceivedEvent) -> Routed + Send),
    ) -> Result<Vec<(Inserted, Routed)>, StoreError> {
        self.check_room().await?;
        let now = crate::store::now_ms();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let out = insert_rows(&tx, events, route, now).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// See [`crate::store::Store::ingest`]: the confirmed rows, then every batch, in one
    /// transaction.
    pub async fn ingest(
        &self,
        batches: &[Batch],
        confirmed: &[(i64, i64)],
    ) -> Result<Vec<Vec<(Inserted, Routed)>>, StoreError> {
        if !batches.is_empty() {
            self.check_room().await?;
        }
        let now = crate::store::now_ms();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !confirmed.is_empty() {
            let stmt =
                tx.prepare_cached("UPDATE events SET confirmed_at = $2 WHERE id = $1 AND confirmed_at IS NULL").await?;
            for (id, at) in confirmed {
                tx.execute(&stmt, &[id, at]).await?;
            }
        }
        // Every batch's events in one pass, so the whole transaction takes its row locks in
        // dedupe-key order (see insert_rows): hosts storing overlapping groups never deadlock.
        let events: Vec<ReceivedEvent> = batches.iter().flat_map(|b| b.events.iter().cloned()).collect();
        let owner: Vec<usize> =
            batches.iter().enumerate().flat_map(|(n, b)| std::iter::repeat_n(n, b.events.len())).collect();
        let mut rows = insert_rows(&tx, &events, &mut |i, e| (batches[owner[i]].route)(e), now).await?.into_iter();
        tx.commit().await?;
        Ok(batches.iter().map(|b| rows.by_ref().take(b.events.len()).collect()).collect())
    }

    /// See [`crate::store::Store::raise_alert`].
    pub async fn raise_alert(&self, alert: &Alert, route: &RouteFn) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let routed = raise(&tx, alert, route, crate::store::now_ms()).await?;
        tx.commit().await?;
        Ok(routed)
    }

    /// See [`crate::store::Store::raise_alerts_for_dead`].
    pub async fn raise_alerts_for_dead(&self, ids: &[i64], route: &RouteFn) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let now = crate::store::now_ms();
        let mut routed = 0;
        for alert in dead_alerts(&tx, ids).await? {
            routed += usize::from(raise(&tx, &alert, route, now).await?);
        }
        tx.commit().await?;
        Ok(routed)
    }

    /// See [`crate::store::Store::dead_since`].
    pub async fn dead_since(&self, since_ms: i64, limit: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, updated_at FROM deliveries WHERE state = 'dead' AND updated_at >= $1
                 ORDER BY updated_at, id LIMIT $2",
                &[&since_ms, &limit],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
