//! The CLI's reads and operator writes on PostgreSQL (`events list/show`, `deliveries
//! list/retry`, `events replay ID`, `handlers list/pause/resume`, `keys`, `status`), with
//! the same results as the SQLite queries in `events.rs`, `deliveries.rs`, `handlers.rs`,
//! `keys.rs`, `activity.rs` and `maintenance.rs`. The CLI is synchronous: [`PgStore::block`]
//! runs one of these on the store's own runtime.

use std::collections::BTreeMap;

use tokio_postgres::Row;

use super::listen::Topic;
use super::PgStore;
use crate::store::{
    AttemptRow, DeliveryFilter, DeliveryRow, EventFilter, EventRow, HandlerOverview, Hourly, KeyInfo, StoreError, HOURS,
};

const COLUMNS: &str = "id, dedupe_key, api, event_type, version, file_id, task_id, received_at, last_seen_at, \
     times_seen, content, occurrence, confirmed_at, source, sub_app_id";

fn event(r: &Row) -> EventRow {
    EventRow {
        id: r.get(0),
        dedupe_key: crate::event::hex(r.get::<_, &[u8]>(1)),
        api: r.get(2),
        event_type: r.get(3),
        version: r.get(4),
        file_id: r.get(5),
        task_id: r.get(6),
        received_at: r.get(7),
        last_seen_at: r.get(8),
        times_seen: r.get(9),
        content: r.get(10),
        occurrence: r.get(11),
        confirmed_at: r.get(12),
        source: r.get(13),
        sub_app_id: r.get(14),
    }
}

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, e.event_type, d.handler, d.webhook_id, d.state, d.attempts, \
     d.next_attempt_at, d.created_at, d.updated_at, d.last_error, d.last_status, d.orphaned_reason";

fn delivery(r: &Row) -> DeliveryRow {
    DeliveryRow {
        id: r.get(0),
        event_id: r.get(1),
        event_type: r.get(2),
        handler: r.get(3),
        webhook_id: r.get(4),
        state: r.get(5),
        attempts: r.get(6),
        next_attempt_at: r.get(7),
        created_at: r.get(8),
        updated_at: r.get(9),
        last_error: r.get(10),
        last_status: r.get(11),
        orphaned_reason: r.get(12),
    }
}

const HOUR_MS: i64 = 3_600_000;

fn add(hourly: &mut Hourly, hours_ago: i64, n: i64) {
    if let Ok(ago) = usize::try_from(hours_ago) {
        if ago < HOURS {
            hourly[HOURS - 1 - ago] += n;
        }
    }
}

impl PgStore {
    /// Runs `f` to completion for a synchronous caller, from a thread of its own (the
    /// caller may be inside another runtime): on this store's runtime (the CLI's store), else
    /// on the runtime the caller runs in. The daemon's runtime has one thread, so the daemon
    /// makes such calls from a blocking task (`spawn_blocking`), never from an async one.
    pub fn block<T: Send, F: std::future::Future<Output = Result<T, StoreError>> + Send>(
        &self,
        f: F,
    ) -> Result<T, StoreError> {
        let handle = match &self.runtime {
            Some(runtime) => runtime.handle().clone(),
            None => tokio::runtime::Handle::try_current().map_err(|_| {
                StoreError::NotAvailable("a synchronous PostgreSQL store call outside a runtime".into())
            })?,
        };
        std::thread::scope(|s| s.spawn(|| handle.block_on(f)).join())
            .map_err(|_| StoreError::Task("the PostgreSQL call panicked".into()))?
    }

    /// See [`crate::store::History::list_events`].
    pub async fn list_events(&self, f: &EventFilter) -> Result<Vec<EventRow>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM events WHERE ($1::text IS NULL OR event_type = $1)
                       AND ($2::text IS NULL OR source = $2) AND ($3::bigint IS NULL OR received_at >= $3)
                       AND ($4::text IS NULL OR file_id = $4 OR id IN (SELECT event_id FROM event_files WHERE file_id = $4))
                     ORDER BY received_at DESC, id DESC LIMIT $5"
                ),
                &[&f.event_type, &f.source, &f.since_ms, &f.file_id, &i64::from(f.limit)],
            )
            .await?;
        Ok(rows.iter().map(event).collect())
    }

    /// See [`crate::store::History::get_event`].
    pub async fn get_event(&self, id: i64) -> Result<Option<EventRow>, StoreError> {
        let client = self.client().await?;
        Ok(client.query_opt(&format!("SELECT {COLUMNS} FROM events WHERE id = $1"), &[&id]).await?.as_ref().map(event))
    }

    /// See [`crate::store::History::count_events`].
    pub async fn count_events(&self) -> Result<i64, StoreError> {
        Ok(self.client().await?.query_one("SELECT count(*) FROM events", &[]).await?.get(0))
    }

    /// See [`crate::store::History::events_after`].
    pub async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {COLUMNS} FROM events WHERE id > $1 ORDER BY id LIMIT $2");
        Ok(client.query(&sql, &[&after, &i64::from(limit)]).await?.iter().map(event).collect())
    }

    /// See [`crate::store::History::event_files`].
    pub async fn event_files(&self, id: i64) -> Result<Vec<(String, String)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT file_id, role FROM event_files WHERE event_id = $1 ORDER BY role DESC, file_id", &[&id])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// See [`crate::store::Outbox::event_deliveries`].
    pub async fn event_deliveries(&self, event_id: i64) -> Result<Vec<(DeliveryRow, Vec<AttemptRow>)>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.event_id = $1 ORDER BY d.id"
        );
        let mut out = Vec::new();
        for d in client.query(&sql, &[&event_id]).await?.iter().map(delivery) {
            let attempts = client
                .query(
                    "SELECT attempt, started_at, duration_ms, outcome, status, error, excerpt FROM attempts
                     WHERE delivery_id = $1 ORDER BY id",
                    &[&d.id],
                )
                .await?
                .iter()
                .map(|r| AttemptRow {
                    attempt: r.get(0),
                    started_at: r.get(1),
                    duration_ms: r.get(2),
                    outcome: r.get(3),
                    status: r.get(4),
                    error: r.get(5),
                    excerpt: r.get(6),
                })
                .collect();
            out.push((d, attempts));
        }
        Ok(out)
    }

    /// See [`crate::store::Outbox::list_deliveries`].
    pub async fn list_deliveries(&self, f: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        // Newest first per state, then merged: `deliveries_done` and `deliveries_dead_updated`
        // hold the history in `updated_at` order (no index covers every state: see
        // migration 0002), and pending and running rows are few unless a backlog waits.
        let branches: Vec<String> = ["done", "dead", "pending", "running"]
            .into_iter()
            .filter(|state| f.state.as_deref().is_none_or(|s| s == *state))
            .map(|state| {
                format!(
                    "(SELECT * FROM deliveries WHERE state = '{state}' AND ($1::text IS NULL OR handler = $1)
                      ORDER BY updated_at DESC, id DESC LIMIT $2)"
                )
            })
            .collect();
        if branches.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM ({}) d JOIN events e ON e.id = d.event_id
             ORDER BY d.updated_at DESC, d.id DESC LIMIT $2",
            branches.join(" UNION ALL ")
        );
        let client = self.client().await?;
        Ok(client.query(&sql, &[&f.handler, &i64::from(f.limit)]).await?.iter().map(delivery).collect())
    }

    /// See [`crate::store::Outbox::retry_dead`].
    pub async fn retry_dead(&self, handler: Option<&str>) -> Result<usize, StoreError> {
        let now = crate::store::now_ms();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = $1, created_at = $1, updated_at = $1
                 WHERE state = 'dead' AND ($2::text IS NULL OR handler = $2)",
                &[&now, &handler],
            )
            .await?;
        if n > 0 {
            self.notify(&tx, Topic::Work).await?;
        }
        tx.commit().await?;
        Ok(n as usize)
    }

    /// See [`crate::store::Outbox::replay`].
    pub async fn replay(&self, event_id: i64, handler: Option<&str>) -> Result<Vec<String>, StoreError> {
        let now = crate::store::now_ms();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx.query_one("SELECT dedupe_key, occurrence FROM events WHERE id = $1", &[&event_id]).await?;
        let (key, occurrence): (Vec<u8>, i64) = (row.get(0), row.get(1));
        let handlers: Vec<String> = match handler {
            Some(h) => vec![h.to_string()],
            None => tx
                .query("SELECT DISTINCT handler FROM deliveries WHERE event_id = $1 ORDER BY handler", &[&event_id])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect(),
        };
        super::ingest::route_new_event(&tx, event_id, &key, occurrence, &handlers, now).await?;
        self.notify(&tx, Topic::Work).await?;
        tx.commit().await?;
        Ok(handlers)
    }

    /// See [`crate::store::Handlers::pause_handler`].
    pub async fn pause_handler(&self, handler: &str, reason: Option<&str>) -> Result<Option<String>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let before = super::outbox::pause(&tx, handler, reason, "operator", crate::store::now_ms(), None).await?;
        self.notify(&tx, Topic::Work).await?;
        tx.commit().await?;
        Ok(before)
    }

    /// See [`crate::store::Handlers::resume_handler`].
    pub async fn resume_handler(&self, handler: &str) -> Result<Option<i64>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let was = super::outbox::resume(&tx, handler, None, crate::store::now_ms()).await?;
        if was.is_some() {
            self.notify(&tx, Topic::Work).await?;
        }
        tx.commit().await?;
        Ok(was)
    }

    /// See [`crate::store::Handlers::handler_overview`] (the last success and error from the
    /// latest done and dead deliveries and the newest failed attempt).
    pub async fn handler_overview(&self, configured: &[String]) -> Result<Vec<HandlerOverview>, StoreError> {
        let client = self.client().await?;
        let mut rows: BTreeMap<String, HandlerOverview> = BTreeMap::new();
        let mut names: Vec<String> = configured.to_vec();
        names.extend(client.query("SELECT DISTINCT handler FROM deliveries", &[]).await?.iter().map(|r| r.get(0)));
        for name in names {
            let line = rows.entry(name.clone()).or_insert_with(|| HandlerOverview {
                handler: name.clone(),
                state: "active".into(),
                ..Default::default()
            });
            line.configured |= configured.contains(&name);
        }
        for r in client
            .query("SELECT handler, state, count(*) FROM deliveries WHERE state != 'done' GROUP BY handler, state", &[])
            .await?
        {
            let Some(line) = rows.get_mut(r.get::<_, &str>(0)) else { continue };
            let n: i64 = r.get(2);
            match r.get::<_, &str>(1) {
                "pending" => line.pending = n,
                "running" => line.running = n,
                _ => line.dead = n,
            }
        }
        for r in client.query("SELECT handler, paused_by, paused_at, reason FROM handler_state", &[]).await? {
            let name: String = r.get(0);
            let line = rows.entry(name.clone()).or_insert_with(|| HandlerOverview {
                handler: name,
                state: "active".into(),
                ..Default::default()
            });
            line.state = "paused".into();
            (line.paused_by, line.paused_at, line.reason) = (Some(r.get(1)), Some(r.get(2)), r.get(3));
        }
        for line in rows.values_mut() {
            line.last_success_at = client
                .query_one(
                    "SELECT max(updated_at) FROM deliveries WHERE handler = $1 AND state = 'done'",
                    &[&line.handler],
                )
                .await?
                .get(0);
            let failed = client
                .query_opt(
                    "SELECT a.started_at + a.duration_ms, a.error FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
                     WHERE d.handler = $1 AND a.outcome != 'done' ORDER BY a.id DESC LIMIT 1",
                    &[&line.handler],
                )
                .await?;
            if let Some(r) = failed {
                (line.last_error_at, line.last_error) = (Some(r.get(0)), r.get(1));
            }
        }
        Ok(rows.into_values().collect())
    }

    /// See [`crate::store::Keys::get_key`].
    pub async fn get_key(&self, edk: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        Ok(client.query_opt("SELECT dk FROM drm_keys WHERE edk = $1", &[&edk]).await?.map(|r| r.get(0)))
    }

    /// See [`crate::store::Keys::list_keys`].
    pub async fn list_keys(&self, file_id: Option<&str>, limit: u32) -> Result<Vec<KeyInfo>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT edk, file_id, key_source, definition, event_id, fetched_at FROM drm_keys
                 WHERE $1::text IS NULL OR file_id = $1 ORDER BY fetched_at DESC LIMIT $2",
                &[&file_id, &i64::from(limit)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| KeyInfo {
                edk: r.get(0),
                file_id: r.get(1),
                key_source: r.get(2),
                definition: r.get(3),
                event_id: r.get(4),
                fetched_at: r.get(5),
            })
            .collect())
    }

    /// See [`crate::store::Maintenance::events_by_type_since`].
    pub async fn events_by_type_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT event_type, count(*) FROM events WHERE received_at >= $1 GROUP BY event_type ORDER BY 2 DESC",
                &[&since_ms],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// See [`crate::store::Activity::events_per_hour`].
    pub async fn events_per_hour(&self, now: i64) -> Result<Hourly, StoreError> {
        let client = self.client().await?;
        let window = HOUR_MS * HOURS as i64;
        let mut hourly = [0; HOURS];
        for r in client
            .query(
                "SELECT ($1 - received_at) / $2, count(*) FROM events
                 WHERE received_at > $1 - $3 AND received_at <= $1 GROUP BY 1",
                &[&now, &HOUR_MS, &window],
            )
            .await?
        {
            add(&mut hourly, r.get(0), r.get(1));
        }
        Ok(hourly)
    }

    /// See [`crate::store::Activity::failures_per_hour`].
    pub async fn failures_per_hour(&self, now: i64) -> Result<BTreeMap<String, Hourly>, StoreError> {
        let client = self.client().await?;
        let window = HOUR_MS * HOURS as i64;
        let mut by_handler = BTreeMap::new();
        for r in client
            .query(
                "SELECT d.handler, ($1 - a.started_at) / $2, count(*)
                 FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
                 WHERE a.outcome != 'done' AND a.started_at > $1 - $3 AND a.started_at <= $1 GROUP BY 1, 2",
                &[&now, &HOUR_MS, &window],
            )
            .await?
        {
            add(by_handler.entry(r.get(0)).or_insert([0; HOURS]), r.get(1), r.get(2));
        }
        Ok(by_handler)
    }

    /// See [`crate::store::Maintenance::oldest_event_ms`].
    pub async fn oldest_event_ms(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.client().await?.query_one("SELECT min(received_at) FROM events", &[]).await?.get(0))
    }
}
