//! Storing events on PostgreSQL: one transaction per pulled batch, with the same
//! occurrence rules as the SQLite store (`store/sqlite/events.rs`): a content whose latest row is
//! not confirmed folds into it (`times_seen`), one whose latest row was confirmed gets a
//! new occurrence, and a new row gets its files and its deliveries in the same
//! transaction. A batch costs a constant number of statements however many events it holds
//! (see [`insert_rows`]), each prepared once per connection.
//!
//! The insert is `ON CONFLICT (dedupe_key, occurrence)`: when another host stores the same
//! content at the same moment, this one waits for its commit and folds. Every row lock of
//! a batch is taken by that one statement, in dedupe-key order (two hosts never deadlock on
//! overlapping batches), so the ids of one batch's new rows follow their keys, not the
//! order they were pulled in; routing and deliveries follow the pull order.
//! Also the alerts (`alert_log` hold-back, the alert event) and the dead-delivery scan.

use std::collections::{BTreeMap, HashMap};

use deadpool_postgres::Transaction;

use super::listen::Topic;
use super::PgStore;
use crate::alert_event::{Alert, ALERT_HOLD};
use crate::event::ReceivedEvent;
use crate::handler::Delivery;
use crate::names::ALERT_SOURCE;
use crate::route::Routed;
use crate::store::alerts::{dead_delivery_alerts, DeadDelivery};
use crate::store::deliveries::{first_attempt, webhook_id, FirstClaims};
use crate::store::{Batch, FirstClaim, Ingested, Inserted, RouteFn, StoreError};

/// Stores `events` in `tx`, routing each new one with `route` (see the module doc), in
/// five statements at most, whatever the batch's size:
///
/// 1. the latest row of each distinct content (`unnest` of the keys, one index probe each),
///    without locking: what it reads only chooses the occurrence to write;
/// 2. one `INSERT … ON CONFLICT (dedupe_key, occurrence) DO UPDATE` of one row per distinct
///    content, in dedupe-key order: the latest occurrence, with its id, when it is not
///    confirmed (it conflicts and folds, `times_seen` growing by the content's count in the
///    batch, and no id is drawn from the sequence), the next one otherwise (a new row; a
///    concurrent host's row of the same occurrence makes it wait for that commit and fold).
///    This statement takes every row lock of the batch in one pass in key order, as the
///    per-event statements did. Locking the latest rows in step 1 instead (`FOR UPDATE`)
///    would take the locks in two passes (existing rows, then new ones), and a host whose
///    first pass locks a row another host's second pass is about to fold into could
///    deadlock with it;
/// 3. the new rows' files, 4. their deliveries, each one `INSERT … SELECT FROM unnest`.
///
/// Within the batch the first event of a content is the one that may be new; the later
/// ones fold into its row. `route` is called once per new row, in pull order. The new
/// deliveries `claims` takes are inserted claimed by `instance` (see
/// [`crate::store::History::ingest_claiming`]).
pub(super) async fn insert_rows(
    tx: &Transaction<'_>,
    events: &[ReceivedEvent],
    route: &mut (dyn FnMut(usize, &ReceivedEvent) -> Routed + Send),
    now: i64,
    (claims, instance): (&mut FirstClaims<'_>, &str),
) -> Result<Vec<(Inserted, Routed)>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    // One entry per distinct content, in dedupe-key order: its first event (in pull order;
    // the sort is stable) and how many times the batch holds it.
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| events[i].dedupe_key);
    let mut contents: Vec<(usize, i64)> = Vec::new();
    for i in order {
        match contents.last_mut() {
            Some((first, count)) if events[*first].dedupe_key == events[i].dedupe_key => *count += 1,
            _ => contents.push((i, 1)),
        }
    }
    let keys: Vec<&[u8]> = contents.iter().map(|&(i, _)| &events[i].dedupe_key[..]).collect();

    let latest = tx
        .prepare_cached(
            "SELECT l.id, l.occurrence, l.confirmed_at IS NOT NULL
             FROM unnest($1::bytea[]) WITH ORDINALITY AS k (key, n)
             LEFT JOIN LATERAL (SELECT id, occurrence, confirmed_at FROM events WHERE dedupe_key = k.key
                                ORDER BY occurrence DESC LIMIT 1) l ON true
             ORDER BY k.n",
        )
        .await?;
    let rows = tx.query(&latest, &[&keys]).await?;
    // The row each content is written as: its latest (id given, so that folding into it
    // takes no value from the id sequence) or the next occurrence (id from the sequence).
    let (fold_ids, occurrences): (Vec<Option<i64>>, Vec<i64>) = rows
        .iter()
        .map(|r| match (r.get::<_, Option<i64>>(0), r.get::<_, Option<i64>>(1), r.get::<_, Option<bool>>(2)) {
            (Some(id), Some(occurrence), Some(false)) => (Some(id), occurrence),
            (_, Some(occurrence), _) => (None, occurrence + 1),
            _ => (None, 1),
        })
        .unzip();

    let store = tx
        .prepare_cached(
            "INSERT INTO events (id, dedupe_key, occurrence, event_type, version, file_id, task_id, content,
                                 received_at, last_seen_at, api, source, sub_app_id, times_seen)
             SELECT coalesce(id, nextval((SELECT pg_get_serial_sequence('events', 'id'))::regclass)), key, occurrence,
                    event_type, version, file_id, task_id, content, $8, $8, api, source, sub_app_id, times_seen
             FROM unnest($1::bytea[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $9::text[], $10::text[], $11::bigint[], $12::bigint[], $13::bigint[]) WITH ORDINALITY
                  AS u (key, occurrence, event_type, version, file_id, task_id, content, api, source, sub_app_id,
                        times_seen, id, n)
             ORDER BY n
             ON CONFLICT (dedupe_key, occurrence)
             DO UPDATE SET last_seen_at = excluded.last_seen_at, times_seen = events.times_seen + excluded.times_seen
             RETURNING dedupe_key, id, xmax = 0",
        )
        .await?;
    let firsts = || contents.iter().map(|&(i, _)| &events[i]);
    let event_types: Vec<&str> = firsts().map(|e| e.event_type.as_str()).collect();
    let versions: Vec<Option<&str>> = firsts().map(|e| e.version.as_deref()).collect();
    let file_ids: Vec<Option<&str>> = firsts().map(|e| e.file_id.as_deref()).collect();
    let task_ids: Vec<Option<&str>> = firsts().map(|e| e.task_id.as_deref()).collect();
    let bodies: Vec<&str> = firsts().map(|e| e.content.as_str()).collect();
    let apis: Vec<&str> = firsts().map(|e| e.api.as_str()).collect();
    let sources: Vec<&str> = firsts().map(|e| e.source.as_str()).collect();
    let sub_app_ids: Vec<Option<i64>> = firsts().map(|e| e.sub_app_id.map(|id| id as i64)).collect();
    let counts: Vec<i64> = contents.iter().map(|&(_, count)| count).collect();
    let stored = tx
        .query(
            &store,
            &[
                &keys,
                &occurrences,
                &event_types,
                &versions,
                &file_ids,
                &task_ids,
                &bodies,
                &now,
                &apis,
                &sources,
                &sub_app_ids,
                &counts,
                &fold_ids,
            ],
        )
        .await?;
    // Matched by key (unique within the statement), not by the order RETURNING gives.
    let mut by_key: HashMap<Vec<u8>, (i64, bool)> =
        stored.iter().map(|r| (r.get::<_, Vec<u8>>(0), (r.get::<_, i64>(1), r.get::<_, bool>(2)))).collect();
    // Each content's row and occurrence, and whether it is new: only for its first event.
    let mut rows_of: HashMap<usize, (i64, bool, i64)> = HashMap::with_capacity(contents.len());
    for (&(first, _), occurrence) in contents.iter().zip(&occurrences) {
        let (id, new) = by_key.remove(&events[first].dedupe_key[..]).expect("one row per content of the batch");
        rows_of.insert(first, (id, new, *occurrence));
    }

    let mut out = Vec::with_capacity(events.len());
    let mut row_of_key: HashMap<&[u8; 32], i64> = HashMap::with_capacity(contents.len());
    let mut files: BTreeMap<(&str, i64), &str> = BTreeMap::new();
    let mut deliveries = Deliveries::default();
    for (i, e) in events.iter().enumerate() {
        match rows_of.get(&i) {
            Some(&(id, true, occurrence)) => {
                row_of_key.insert(&e.dedupe_key, id);
                for (file_id, role) in &e.files {
                    files.insert((file_id.as_str(), id), role.as_str());
                }
                let routed = route(i, e);
                deliveries.add((id, i), &e.dedupe_key, occurrence, &routed.handlers, claims);
                out.push((Inserted { id, new: true }, routed));
            }
            Some(&(id, false, _)) => {
                row_of_key.insert(&e.dedupe_key, id);
                out.push((Inserted { id, new: false }, Routed::default()));
            }
            None => {
                let id = row_of_key[&e.dedupe_key];
                out.push((Inserted { id, new: false }, Routed::default()));
            }
        }
    }
    index_files(tx, &files).await?;
    claims.claimed.extend(deliveries.insert(tx, now, (events, instance)).await?);
    Ok(out)
}

/// The files of new rows, one `(file_id, event_id)` once (the last role an event names).
async fn index_files(tx: &Transaction<'_>, files: &BTreeMap<(&str, i64), &str>) -> Result<(), StoreError> {
    if files.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO event_files (file_id, event_id, role) SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])
             ON CONFLICT (file_id, event_id) DO UPDATE SET role = excluded.role",
        )
        .await?;
    let file_ids: Vec<&str> = files.keys().map(|(file_id, _)| *file_id).collect();
    let event_ids: Vec<i64> = files.keys().map(|(_, id)| *id).collect();
    let roles: Vec<&str> = files.values().copied().collect();
    tx.execute(&stmt, &[&file_ids, &event_ids, &roles]).await?;
    Ok(())
}

/// New deliveries to insert in one statement, in the order added: pending, or running
/// where claimed.
#[derive(Default)]
struct Deliveries {
    event_ids: Vec<i64>,
    handlers: Vec<String>,
    webhook_ids: Vec<String>,
    /// A claimed delivery's lease (ms), with its want and event (index in the batch).
    claims: Vec<Option<(i64, usize, usize)>>,
}

impl Deliveries {
    /// One delivery per handler of the event `event_id` (`i` in its batch; occurrence
    /// `occurrence` of its content), claimed where `claims` takes it.
    fn add(
        &mut self,
        (event_id, i): (i64, usize),
        dedupe_key: &[u8],
        occurrence: i64,
        handlers: &[String],
        claims: &mut FirstClaims<'_>,
    ) {
        for handler in handlers {
            self.event_ids.push(event_id);
            self.webhook_ids.push(webhook_id(dedupe_key, occurrence, handler));
            self.handlers.push(handler.clone());
            self.claims.push(claims.take(handler).map(|(want, lease)| (lease.as_millis() as i64, want, i)));
        }
    }

    /// Inserts them; returns the claimed ones (those of a handler not paused), built from
    /// their events in `events`, each with its want.
    async fn insert(
        &self,
        tx: &Transaction<'_>,
        now: i64,
        (events, instance): (&[ReceivedEvent], &str),
    ) -> Result<Vec<(usize, Delivery)>, StoreError> {
        if self.event_ids.is_empty() {
            return Ok(Vec::new());
        }
        // A claimed delivery is leased by the database's clock and fenced by a fresh token,
        // as CLAIM (`outbox.rs`) leaves a claimed row; a paused handler's stays pending.
        let stmt = tx
            .prepare_cached(
                "WITH inserted AS (
                     INSERT INTO deliveries (event_id, handler, webhook_id, state, attempts, next_attempt_at, created_at,
                                             updated_at, lease_until, claim_token, claimed_by)
                     SELECT u.event_id, u.handler, u.webhook_id, CASE WHEN c.run THEN 'running' ELSE 'pending' END,
                            CASE WHEN c.run THEN 1 ELSE 0 END, $4, $4, $4,
                            CASE WHEN c.run THEN (extract(epoch FROM clock_timestamp()) * 1000)::bigint + u.lease_ms END,
                            CASE WHEN c.run THEN nextval('claim_tokens') END, CASE WHEN c.run THEN $6 END
                     FROM unnest($1::bigint[], $2::text[], $3::text[], $5::bigint[]) WITH ORDINALITY
                          AS u (event_id, handler, webhook_id, lease_ms, n)
                     CROSS JOIN LATERAL (SELECT u.lease_ms IS NOT NULL
                         AND NOT EXISTS (SELECT 1 FROM handler_state h WHERE h.handler = u.handler) AS run) c
                     ORDER BY u.n
                     RETURNING id, event_id, webhook_id, claim_token)
                 SELECT * FROM inserted WHERE claim_token IS NOT NULL",
            )
            .await?;
        let leases: Vec<Option<i64>> = self.claims.iter().map(|c| c.map(|(lease, _, _)| lease)).collect();
        let rows =
            tx.query(&stmt, &[&self.event_ids, &self.handlers, &self.webhook_ids, &now, &leases, &instance]).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // Matched by webhook id (one per event and handler), not by the order RETURNING gives.
        let by_id: HashMap<&str, usize> = self.webhook_ids.iter().enumerate().map(|(n, id)| (id.as_str(), n)).collect();
        let mut claimed = Vec::with_capacity(rows.len());
        for r in rows {
            let (id, event_id, webhook_id, token): (i64, i64, String, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
            let (_, want, i) = self.claims[by_id[webhook_id.as_str()]].expect("only a claimed delivery has a token");
            claimed.push((want, first_attempt(&events[i], (id, event_id), webhook_id, now, token)));
        }
        Ok(claimed)
    }
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
    let mut deliveries = Deliveries::default();
    deliveries.add((event_id, 0), dedupe_key, occurrence, handlers, &mut FirstClaims::none());
    deliveries.insert(tx, now, (&[], "")).await?;
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
    let stored = insert_rows(tx, &[event], &mut |_, _| routed.clone(), now, (&mut FirstClaims::none(), "")).await?;
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
    Ok(dead_delivery_alerts(rows.iter().map(|r| DeadDelivery {
        handler: r.get(0),
        webhook_id: r.get(1),
        event_id: r.get(2),
        event_type: r.get(3),
        status: r.get(4),
        error: r.get(5),
    })))
}

impl PgStore {
    /// See [`crate::store::History::insert_events`].
    pub async fn insert_batch(
        &self,
        events: &[ReceivedEvent],
        route: &mut (dyn FnMut(usize, &ReceivedEvent) -> Routed + Send),
    ) -> Result<Vec<(Inserted, Routed)>, StoreError> {
        self.check_room().await?;
        let now = crate::store::now_ms();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let out = insert_rows(&tx, events, route, now, (&mut FirstClaims::none(), "")).await?;
        if out.iter().any(|(i, r)| i.new && !r.handlers.is_empty()) {
            self.notify(&tx, Topic::Work).await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    /// See [`crate::store::History::ingest_claiming`]: the confirmed rows, then every
    /// batch, in one transaction.
    pub async fn ingest(
        &self,
        batches: &[Batch],
        confirmed: &[(i64, i64)],
        wants: &[FirstClaim],
    ) -> Result<Ingested, StoreError> {
        if !batches.is_empty() {
            self.check_room().await?;
        }
        let now = crate::store::now_ms();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !confirmed.is_empty() {
            // One statement; an id listed twice keeps its first time, as one UPDATE per id did.
            let mut first: BTreeMap<i64, i64> = BTreeMap::new();
            for &(id, at) in confirmed {
                first.entry(id).or_insert(at);
            }
            let (ids, ats): (Vec<i64>, Vec<i64>) = first.into_iter().unzip();
            let stmt = tx
                .prepare_cached(
                    "UPDATE events SET confirmed_at = c.at FROM unnest($1::bigint[], $2::bigint[]) AS c (id, at)
                     WHERE events.id = c.id AND events.confirmed_at IS NULL",
                )
                .await?;
            tx.execute(&stmt, &[&ids, &ats]).await?;
        }
        // Every batch's events in one pass, so the whole transaction takes its row locks in
        // dedupe-key order (see insert_rows): hosts storing overlapping groups never deadlock.
        let events: Vec<ReceivedEvent> = batches.iter().flat_map(|b| b.events.iter().cloned()).collect();
        let owner: Vec<usize> =
            batches.iter().enumerate().flat_map(|(n, b)| std::iter::repeat_n(n, b.events.len())).collect();
        let mut claims = FirstClaims::new(wants, |_| false); // Pauses are read by the insert.
        let rows =
            insert_rows(&tx, &events, &mut |i, e| (batches[owner[i]].route)(e), now, (&mut claims, &self.instance))
                .await?;
        let mut rows = rows.into_iter();
        let ingested = Ingested {
            rows: batches.iter().map(|b| rows.by_ref().take(b.events.len()).collect()).collect(),
            claimed: claims.claimed,
        };
        // Only deliveries left pending are news for the other hosts.
        if ingested.left_pending() {
            self.notify(&tx, Topic::Work).await?;
        }
        tx.commit().await?;
        Ok(ingested)
    }

    /// See [`crate::store::Alerts::raise_alert`].
    pub async fn raise_alert(&self, alert: &Alert, route: &RouteFn) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let routed = raise(&tx, alert, route, crate::store::now_ms()).await?;
        if routed {
            self.notify(&tx, Topic::Work).await?;
        }
        tx.commit().await?;
        Ok(routed)
    }

    /// See [`crate::store::Alerts::raise_alerts_for_dead`].
    pub async fn raise_alerts_for_dead(&self, ids: &[i64], route: &RouteFn) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let now = crate::store::now_ms();
        let mut routed = 0;
        for alert in dead_alerts(&tx, ids).await? {
            routed += usize::from(raise(&tx, &alert, route, now).await?);
        }
        if routed > 0 {
            self.notify(&tx, Topic::Work).await?;
        }
        tx.commit().await?;
        Ok(routed)
    }

    /// See [`crate::store::Alerts::dead_since`].
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
