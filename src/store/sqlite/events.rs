//! [`History`] on SQLite; the contract is in `store/events.rs`.
//!
//! The `events` table: idempotent batch insert (one transaction per pulled batch) and the
//! queries the history CLI shares with the daemon.

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use super::SqliteStore;
use crate::config::ApiVersion;
use crate::event::ReceivedEvent;
use crate::route::Routed;
use crate::store::deliveries::{first_attempt, FirstClaims};
use crate::store::{webhook_id, Batch, EventFilter, EventRow, FirstClaim, History, Ingested, Inserted, StoreError};

/// An event row's confirmation time, in a query on `events`: its own column (rows confirmed
/// before migration 0013), else its `event_confirmations` row.
macro_rules! confirmed_at {
    () => {
        "coalesce(confirmed_at, (SELECT c.confirmed_at FROM event_confirmations c WHERE c.event_id = events.id))"
    };
}

/// [`confirmed_at!`] for queries built at run time.
pub(crate) const CONFIRMED_AT: &str = confirmed_at!();

const COLUMNS: &str = concat!(
    "id, dedupe_key, api, event_type, version, file_id, task_id, received_at, last_seen_at, \
     times_seen, content, occurrence, ",
    confirmed_at!(),
    ", source, sub_app_id"
);

fn row_to_event(row: &Row<'_>) -> rusqlite::Result<EventRow> {
    let key: Vec<u8> = row.get(1)?;
    Ok(EventRow {
        id: row.get(0)?,
        dedupe_key: crate::event::hex(&key),
        api: row.get(2)?,
        event_type: row.get(3)?,
        version: row.get(4)?,
        file_id: row.get(5)?,
        task_id: row.get(6)?,
        received_at: row.get(7)?,
        last_seen_at: row.get(8)?,
        times_seen: row.get(9)?,
        content: row.get(10)?,
        occurrence: row.get(11)?,
        confirmed_at: row.get(12)?,
        source: row.get(13)?,
        sub_app_id: row.get(14)?,
    })
}

/// Records the first confirmation of rows that have none yet, in `event_confirmations`
/// (appended, so a batch of marks costs a page, not a rewrite of every event's row). A row
/// deleted meanwhile (retention) is skipped.
fn mark_rows(tx: &Connection, confirmed: &[(i64, i64)]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO event_confirmations (event_id, confirmed_at)
         SELECT id, ?2 FROM events WHERE id = ?1 AND confirmed_at IS NULL",
    )?;
    for (id, at) in confirmed {
        stmt.execute(params![id, at])?;
    }
    Ok(())
}

/// Inserts a batch in one transaction. A content already stored and not yet confirmed is a
/// redelivery: it bumps `times_seen` of its row. A content whose latest row has had a handle
/// confirmed is a new occurrence of it and gets a row of its own. A newly stored event gets
/// its files indexed and a pending delivery for each of its handlers, in the same
/// transaction, so no event is ever stored without its routing.
pub(crate) fn insert_batch(
    conn: &mut Connection,
    events: &[ReceivedEvent],
    route: &mut dyn FnMut(usize, &ReceivedEvent) -> Routed,
    now_ms: i64,
) -> Result<Vec<(Inserted, Routed)>, StoreError> {
    let tx = conn.transaction()?;
    let out = insert_rows(&tx, events, route, now_ms, &mut FirstClaims::none())?;
    tx.commit()?;
    Ok(out)
}

/// [`insert_batch`] inside the caller's transaction, claiming the new deliveries `claims`
/// takes (see [`History::ingest_claiming`]).
pub(crate) fn insert_rows(
    tx: &Connection,
    events: &[ReceivedEvent],
    route: &mut dyn FnMut(usize, &ReceivedEvent) -> Routed,
    now_ms: i64,
    claims: &mut FirstClaims<'_>,
) -> Result<Vec<(Inserted, Routed)>, StoreError> {
    let mut out = Vec::with_capacity(events.len());
    {
        let mut latest = tx.prepare_cached(concat!(
            "SELECT id, occurrence, ",
            confirmed_at!(),
            " IS NOT NULL FROM events WHERE dedupe_key = ?1 ORDER BY occurrence DESC LIMIT 1"
        ))?;
        let mut fold =
            tx.prepare_cached("UPDATE events SET last_seen_at = ?2, times_seen = times_seen + 1 WHERE id = ?1")?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (dedupe_key, occurrence, event_type, version, file_id, task_id, content, received_at, last_seen_at, api, source, sub_app_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10, ?11)",
        )?;
        for (i, e) in events.iter().enumerate() {
            let found: Option<(i64, i64, bool)> =
                latest.query_row([&e.dedupe_key[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
            let occurrence = match found {
                Some((id, _, false)) => {
                    fold.execute(params![id, now_ms])?;
                    out.push((Inserted { id, new: false }, Routed::default()));
                    continue;
                }
                Some((_, occurrence, true)) => occurrence + 1,
                None => 1,
            };
            insert.execute(params![
                &e.dedupe_key[..],
                occurrence,
                e.event_type,
                e.version,
                e.file_id,
                e.task_id,
                e.content,
                now_ms,
                e.api.as_str(),
                e.source,
                e.sub_app_id.map(|id| id as i64)
            ])?;
            let id = tx.last_insert_rowid();
            index_files(tx, id, e)?;
            let routed = route(i, e);
            create_deliveries(tx, (id, e), occurrence, &routed.handlers, now_ms, claims)?;
            out.push((Inserted { id, new: true }, routed));
        }
    }
    Ok(out)
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

/// [`route_new_event`] for the pulled event `e` stored as row `id`, except that the
/// deliveries `claims` takes are inserted `running` (attempt 1), leased by this process's
/// steady clock as the dispatcher's claims are.
fn create_deliveries(
    tx: &Connection,
    (id, e): (i64, &ReceivedEvent),
    occurrence: i64,
    handlers: &[String],
    now: i64,
    claims: &mut FirstClaims<'_>,
) -> Result<(), StoreError> {
    for handler in handlers {
        let Some((want, lease)) = claims.take(handler) else {
            route_new_event(tx, id, &e.dedupe_key, occurrence, std::slice::from_ref(handler), now)?;
            continue;
        };
        let webhook_id = webhook_id(&e.dedupe_key, occurrence, handler);
        let lease_until = crate::clock::steady_ms().saturating_add(lease.as_millis() as i64);
        tx.prepare_cached(
            "INSERT INTO deliveries (event_id, handler, webhook_id, state, attempts, next_attempt_at, created_at,
                                     updated_at, lease_until)
             VALUES (?1, ?2, ?3, 'running', 1, ?4, ?4, ?4, ?5)",
        )?
        .execute(params![id, handler, webhook_id, now, lease_until])?;
        claims.claimed.push((want, first_attempt(e, (tx.last_insert_rowid(), id), webhook_id, now, 0)));
    }
    Ok(())
}

/// Records every file `event` names for row `id`.
fn index_files(conn: &Connection, id: i64, event: &ReceivedEvent) -> Result<(), StoreError> {
    let mut stmt =
        conn.prepare_cached("INSERT OR REPLACE INTO event_files (file_id, event_id, role) VALUES (?1, ?2, ?3)")?;
    for (file_id, role) in &event.files {
        stmt.execute(params![file_id, id, role.as_str()])?;
    }
    Ok(())
}

/// `daemon_state` key: rows with a lower id may still lack their `event_files` entries
/// (stored before that table existed).
const BACKFILL_KEY: &str = "event_files_backfill_below";

/// Indexes the files of up to `batch` older events (newest first) that were stored before
/// `event_files` existed. Returns how many rows it read; 0 means there is nothing left.
fn backfill_files(conn: &mut Connection, batch: u32) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let below: Option<i64> = tx
        .query_row("SELECT CAST(value AS INTEGER) FROM daemon_state WHERE key = ?1", [BACKFILL_KEY], |r| r.get(0))
        .optional()?;
    let Some(below) = below else { return Ok(0) };
    let rows: Vec<(i64, String, String)> = {
        let mut stmt = tx.prepare("SELECT id, api, content FROM events WHERE id < ?1 ORDER BY id DESC LIMIT ?2")?;
        let rows = stmt.query_map(params![below, batch], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (id, api, content) in &rows {
        let api = if api == "v3" { ApiVersion::V3 } else { ApiVersion::V2 };
        index_files(&tx, *id, &ReceivedEvent::from_content(content, api))?;
    }
    match rows.last() {
        Some((lowest, _, _)) => tx.execute(
            "UPDATE daemon_state SET value = CAST(?2 AS TEXT) WHERE key = ?1",
            params![BACKFILL_KEY, lowest],
        )?,
        None => tx.execute("DELETE FROM daemon_state WHERE key = ?1", [BACKFILL_KEY])?,
    };
    tx.commit()?;
    Ok(rows.len())
}

#[async_trait::async_trait]
impl History for SqliteStore {
    async fn insert_events(&self, events: Vec<(ReceivedEvent, Vec<String>)>) -> Result<Vec<Inserted>, StoreError> {
        let now = crate::store::now_ms();
        self.run(move |conn| {
            let (events, handlers): (Vec<ReceivedEvent>, Vec<Vec<String>>) = events.into_iter().unzip();
            let mut route = |i: usize, _: &ReceivedEvent| Routed { handlers: handlers[i].clone(), ..Routed::default() };
            Ok(insert_batch(conn, &events, &mut route, now)?.into_iter().map(|(row, _)| row).collect())
        })
        .await
    }

    async fn ingest_claiming(
        &self,
        batches: Vec<Batch>,
        confirmed: Vec<(i64, i64)>,
        wants: Vec<FirstClaim>,
    ) -> Result<Ingested, StoreError> {
        let now = crate::store::now_ms();
        let only_confirmed = batches.is_empty();
        let write = move |conn: &mut Connection| {
            let tx = conn.transaction()?;
            mark_rows(&tx, &confirmed)?;
            let paused: Vec<String> = match wants.is_empty() {
                true => Vec::new(),
                false => tx
                    .prepare_cached("SELECT handler FROM handler_state")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?,
            };
            let mut claims = FirstClaims::new(&wants, |handler| paused.iter().any(|p| p == handler));
            let mut rows = Vec::with_capacity(batches.len());
            for batch in &batches {
                rows.push(insert_rows(&tx, &batch.events, &mut |_, e| (batch.route)(e), now, &mut claims)?);
            }
            tx.commit()?;
            Ok(Ingested { rows, claimed: claims.claimed })
        };
        if only_confirmed {
            // Only confirmations: bookkeeping (losing it to a power cut only makes a later
            // identical content fold into the row instead of becoming a new occurrence).
            self.run_bookkeeping(write).await
        } else {
            self.run(write).await
        }
    }

    async fn backfill_files(&self, batch: u32) -> Result<usize, StoreError> {
        self.run_bookkeeping(move |conn| backfill_files(conn, batch)).await
    }

    fn event_files(&self, id: i64) -> Result<Vec<(String, String)>, StoreError> {
        self.run_sync(|conn| {
            let mut stmt =
                conn.prepare("SELECT file_id, role FROM event_files WHERE event_id = ? ORDER BY role DESC, file_id")?;
            let rows = stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRow>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM events WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(t) = &filter.event_type {
            sql.push_str(" AND event_type = ?");
            args.push(t.clone().into());
        }
        if let Some(source) = &filter.source {
            sql.push_str(" AND source = ?");
            args.push(source.clone().into());
        }
        if let Some(since) = filter.since_ms {
            sql.push_str(" AND received_at >= ?");
            args.push(since.into());
        }
        if let Some(f) = &filter.file_id {
            // Any file the event names; `file_id` too, for rows not yet indexed (below the
            // backfill mark, see backfill_files): a rowid range scan, empty once indexed.
            sql.push_str(&format!(
                " AND id IN (SELECT event_id FROM event_files WHERE file_id = ?
                   UNION ALL SELECT id FROM events WHERE file_id = ? AND id < coalesce(
                     (SELECT CAST(value AS INTEGER) FROM daemon_state WHERE key = '{BACKFILL_KEY}'), 0))"
            ));
            args.push(f.clone().into());
            args.push(f.clone().into());
        }
        sql.push_str(" ORDER BY received_at DESC, id DESC LIMIT ?");
        args.push(i64::from(filter.limit).into());
        self.run_sync(|conn| {
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(args), row_to_event)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn get_event(&self, id: i64) -> Result<Option<EventRow>, StoreError> {
        self.run_sync(|conn| {
            Ok(conn.query_row(&format!("SELECT {COLUMNS} FROM events WHERE id = ?"), [id], row_to_event).optional()?)
        })
    }

    fn count_events(&self) -> Result<i64, StoreError> {
        self.run_sync(|conn| Ok(conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?))
    }

    fn events_after(&self, after: i64, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        self.run_sync(|conn| {
            let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?"))?;
            let rows = stmt.query_map(params![after, limit], row_to_event)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::prelude::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
        (dir, store)
    }

    fn ev(json: &str) -> ReceivedEvent {
        ReceivedEvent::from_content(json, crate::config::ApiVersion::V2)
    }

    #[tokio::test]
    async fn redelivered_content_is_one_row_with_times_seen() {
        let (_dir, store) = store();
        let a = ev(r#"{"eventType":"NewFileUpload","data":{"fileId":"1"}}"#);
        let a_reordered = ev(r#"{"data":{"fileId":"1"},"eventType":"NewFileUpload"}"#);
        let b = ev(r#"{"eventType":"FileDeleted","data":{"fileInfo":[{"fileId":"2"}]}}"#);
        let first = store.insert_events(vec![(a.clone(), vec![]), (b, vec![])]).await.unwrap();
        assert!(first.iter().all(|i| i.new));
        let again = store.insert_events(vec![(a_reordered, vec![]), (a, vec![])]).await.unwrap();
        assert_eq!(
            again.iter().map(|i| (i.id, i.new)).collect::<Vec<_>>(),
            vec![(first[0].id, false), (first[0].id, false)]
        );
        assert_eq!(store.count_events().unwrap(), 2);
        let row = store.get_event(first[0].id).unwrap().unwrap();
        assert_eq!(row.times_seen, 3);
        assert_eq!(
            row.content, r#"{"eventType":"NewFileUpload","data":{"fileId":"1"}}"#,
            "first content kept as received"
        );
    }

    #[tokio::test]
    async fn content_seen_again_after_a_confirm_is_a_new_occurrence() {
        let (_dir, store) = store();
        let cast = ev(r#"{"eventType":"MediaCastStatusChanged","data":{"castId":"c","status":"Working"}}"#);
        let routed = || vec![(cast.clone(), vec!["hook".to_string()])];
        let first = store.insert_events(routed()).await.unwrap()[0];
        // Redelivered before any confirm: folded, handlers not routed again.
        let again = store.insert_events(routed()).await.unwrap()[0];
        assert_eq!((again.id, again.new), (first.id, false));
        store.ingest(Vec::new(), vec![(first.id, 1)]).await.unwrap();
        let second = store.insert_events(routed()).await.unwrap()[0];
        assert!(second.new && second.id != first.id);
        // Its own redelivery folds into the second row.
        assert_eq!(store.insert_events(routed()).await.unwrap()[0], Inserted { id: second.id, new: false });
        let rows = store.list_events(&EventFilter { limit: 10, ..Default::default() }).unwrap();
        assert_eq!(rows.iter().map(|r| (r.occurrence, r.times_seen)).collect::<Vec<_>>(), [(2, 2), (1, 2)]);
        assert_eq!(rows[1].confirmed_at, Some(1));
        let deliveries =
            store.list_deliveries(&crate::store::DeliveryFilter { limit: 10, ..Default::default() }).unwrap();
        assert_eq!(deliveries.len(), 2, "one delivery per occurrence");
        assert_ne!(deliveries[0].webhook_id, deliveries[1].webhook_id);
        assert_eq!(
            deliveries.iter().find(|d| d.event_id == first.id).unwrap().webhook_id,
            crate::store::webhook_id(&cast.dedupe_key, 1, "hook")
        );
    }

    #[tokio::test]
    async fn a_confirmation_recorded_before_migration_0013_still_counts() {
        let (_dir, store) = store();
        let cast = ev(r#"{"eventType":"MediaCastStatusChanged","data":{"castId":"c","status":"Stopped"}}"#);
        let first = store.insert_events(vec![(cast.clone(), vec![])]).await.unwrap()[0];
        // As an older release left it: the mark in the event's own row.
        store.run_sync(|c| Ok(c.execute("UPDATE events SET confirmed_at = 5 WHERE id = ?1", [first.id])?)).unwrap();
        // A later mark changes nothing: the first confirmation is kept.
        store.ingest(Vec::new(), vec![(first.id, 9)]).await.unwrap();
        assert_eq!(store.get_event(first.id).unwrap().unwrap().confirmed_at, Some(5));
        let marks: i64 =
            store.run_sync(|c| Ok(c.query_row("SELECT count(*) FROM event_confirmations", [], |r| r.get(0))?)).unwrap();
        assert_eq!(marks, 0);
        let second = store.insert_events(vec![(cast, vec![])]).await.unwrap()[0];
        assert!(second.new && second.id != first.id, "seen again after a confirm: a new occurrence");
        // Retention's delete takes the confirmation with the event.
        store.ingest(Vec::new(), vec![(second.id, 10)]).await.unwrap();
        store.run_sync(|c| Ok(c.execute("DELETE FROM events WHERE id = ?1", [second.id])?)).unwrap();
        let marks: i64 =
            store.run_sync(|c| Ok(c.query_row("SELECT count(*) FROM event_confirmations", [], |r| r.get(0))?)).unwrap();
        assert_eq!(marks, 0);
    }

    #[tokio::test]
    async fn the_same_content_from_two_sources_is_two_events_with_their_own_deliveries() {
        let (_dir, store) = store();
        let content = r#"{"eventType":"NewFileUpload","data":{"fileId":"1"}}"#;
        let from = |source: &str, app| (ev(content).with_source(source, app), vec!["hook".to_string()]);
        let rows = store.insert_events(vec![from("a", Some(1)), from("b", Some(2)), from("a", Some(1))]).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.new).collect::<Vec<_>>(), [true, true, false]);
        assert_eq!(rows[2].id, rows[0].id, "a redelivery within a source folds");
        let stored =
            store.list_events(&EventFilter { source: Some("b".into()), limit: 10, ..Default::default() }).unwrap();
        assert_eq!(stored.iter().map(|r| (r.id, r.sub_app_id)).collect::<Vec<_>>(), [(rows[1].id, Some(2))]);
        let deliveries =
            store.list_deliveries(&crate::store::DeliveryFilter { limit: 10, ..Default::default() }).unwrap();
        assert_eq!(deliveries.len(), 2);
        assert_ne!(deliveries[0].webhook_id, deliveries[1].webhook_id, "receivers must not fold them");
        let default = ev(content).with_source(crate::config::DEFAULT_SOURCE, None);
        assert_eq!(default.dedupe_key, ev(content).dedupe_key, "the default source keeps the content hash");
    }

    #[tokio::test]
    async fn an_event_is_found_by_every_file_it_names() {
        let (_dir, store) = store();
        let split = ReceivedEvent::from_content(
            r#"{"EventType":"SplitMediaComplete","SplitMediaCompleteEvent":{"TaskId":"t","FileInfoSet":[{"Input":{"FileId":"in"},"Output":{"FileId":"out1"}},{"Input":{"FileId":"in"},"Output":{"FileId":"out2"}}]}}"#,
            crate::config::ApiVersion::V3,
        );
        let id = store.insert_events(vec![(split, vec![])]).await.unwrap()[0].id;
        for file in ["out1", "out2", "in"] {
            let found = store
                .list_events(&EventFilter { file_id: Some(file.into()), limit: 10, ..Default::default() })
                .unwrap();
            assert_eq!(found.iter().map(|r| r.id).collect::<Vec<_>>(), [id], "{file}");
        }
        assert_eq!(store.get_event(id).unwrap().unwrap().file_id.as_deref(), Some("out1"));
        assert_eq!(
            store.event_files(id).unwrap(),
            [("out1".into(), "output".into()), ("out2".into(), "output".into()), ("in".into(), "input".into())]
        );
    }

    #[tokio::test]
    async fn upgrading_keeps_every_row_and_indexes_older_events_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        // A store as the previous version left it: schema 3, an event with a delivery.
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &super::super::MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            conn.execute_batch(
                r#"INSERT INTO events (id, dedupe_key, api, event_type, file_id, content, received_at, last_seen_at)
                   VALUES (7, x'01', 'v2', 'ClipComplete', 'out', '{"eventType":"ClipComplete","data":{"srcFileId":"src","fileInfo":{"fileId":"out"}}}', 1, 1);
                   INSERT INTO deliveries (event_id, handler, webhook_id, state, next_attempt_at, created_at, updated_at)
                   VALUES (7, 'hook', 'msg_x', 'pending', 1, 1, 1);"#,
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path, Duration::from_secs(1)).unwrap();
        let deliveries =
            store.list_deliveries(&crate::store::DeliveryFilter { limit: 10, ..Default::default() }).unwrap();
        assert_eq!(deliveries.len(), 1, "rebuilding events must not cascade into deliveries");
        let by_src = EventFilter { file_id: Some("src".into()), limit: 10, ..Default::default() };
        assert!(store.list_events(&by_src).unwrap().is_empty(), "not indexed yet");
        let by_out = EventFilter { file_id: Some("out".into()), limit: 10, ..Default::default() };
        let found = |f: &EventFilter| store.list_events(f).unwrap().iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(found(&by_out), [7], "found by its primary file before it is indexed");
        assert_eq!(store.backfill_files(100).await.unwrap(), 1);
        assert_eq!(store.backfill_files(100).await.unwrap(), 0);
        assert_eq!(found(&by_src), [7]);
        assert_eq!(found(&by_out), [7], "once, by the index");
        assert_eq!(store.get_event(7).unwrap().unwrap().occurrence, 1);
    }

    #[tokio::test]
    async fn list_filters_by_type_file_and_time() {
        let (_dir, store) = store();
        store
            .insert_events(vec![
                (ev(r#"{"eventType":"NewFileUpload","data":{"fileId":"1"}}"#), vec![]),
                (ev(r#"{"eventType":"NewFileUpload","data":{"fileId":"2"}}"#), vec![]),
                (ev(r#"{"eventType":"FileDeleted","data":{"fileInfo":[{"fileId":"1"}]}}"#), vec![]),
            ])
            .await
            .unwrap();
        let all = |f: EventFilter| store.list_events(&EventFilter { limit: 50, ..f }).unwrap();
        assert_eq!(all(EventFilter::default()).len(), 3);
        assert_eq!(all(EventFilter { event_type: Some("NewFileUpload".into()), ..Default::default() }).len(), 2);
        assert_eq!(all(EventFilter { file_id: Some("1".into()), ..Default::default() }).len(), 2);
        assert_eq!(all(EventFilter { since_ms: Some(crate::store::now_ms() + 60_000), ..Default::default() }).len(), 0);
        assert_eq!(store.list_events(&EventFilter { limit: 1, ..Default::default() }).unwrap().len(), 1);
    }
}
