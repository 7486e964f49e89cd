//! The `events` table: idempotent batch insert (one transaction per pulled batch) and the
//! queries the history CLI shares with the daemon.

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::{Store, StoreError};
use crate::event::ReceivedEvent;

/// What happened to one event of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// The row id.
    pub id: i64,
    /// False when the event was already stored (a redelivery or duplicate).
    pub new: bool,
}

/// A stored event.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    /// Row id.
    pub id: i64,
    /// Hex SHA-256 of the canonical content.
    pub dedupe_key: String,
    /// `v2` or `v3`.
    pub api: String,
    /// `eventType`.
    pub event_type: String,
    /// `version`.
    pub version: Option<String>,
    /// File id, if any.
    pub file_id: Option<String>,
    /// Task id, if any.
    pub task_id: Option<String>,
    /// First delivery, Unix ms.
    pub received_at: i64,
    /// Latest delivery, Unix ms.
    pub last_seen_at: i64,
    /// Deliveries seen.
    pub times_seen: i64,
    /// `eventContent` exactly as received.
    pub content: String,
}

/// Filters for [`Store::list_events`].
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Exact event type.
    pub event_type: Option<String>,
    /// Received at or after, Unix ms.
    pub since_ms: Option<i64>,
    /// Exact file id.
    pub file_id: Option<String>,
    /// At most this many rows, newest first.
    pub limit: u32,
}

const COLUMNS: &str =
    "id, dedupe_key, api, event_type, version, file_id, task_id, received_at, last_seen_at, times_seen, content";

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
    })
}

/// Inserts a batch in one transaction; a content already stored bumps `times_seen`. A
/// newly stored event gets a pending delivery for each of its handlers, in the same
/// transaction, so no event is ever stored without its routing.
pub(crate) fn insert_batch(
    conn: &mut Connection,
    events: &[(ReceivedEvent, Vec<String>)],
    now_ms: i64,
) -> Result<Vec<Inserted>, StoreError> {
    let tx = conn.transaction()?;
    let mut out = Vec::with_capacity(events.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (dedupe_key, event_type, version, file_id, task_id, content, received_at, last_seen_at, api)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)
             ON CONFLICT (dedupe_key) DO UPDATE SET last_seen_at = excluded.last_seen_at, times_seen = times_seen + 1
             RETURNING id, times_seen",
        )?;
        for (e, handlers) in events {
            let (id, times_seen): (i64, i64) = insert.query_row(
                params![
                    &e.dedupe_key[..],
                    e.event_type,
                    e.version,
                    e.file_id,
                    e.task_id,
                    e.content,
                    now_ms,
                    e.api.as_str()
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let new = times_seen == 1;
            if new {
                super::deliveries::route_new_event(&tx, id, &e.dedupe_key, handlers, now_ms)?;
            }
            out.push(Inserted { id, new });
        }
    }
    tx.commit()?;
    Ok(out)
}

impl Store {
    /// Stores a pulled batch (each event with the handlers it is routed to) durably;
    /// returns once the commit is on disk.
    pub async fn insert_events(&self, events: Vec<(ReceivedEvent, Vec<String>)>) -> Result<Vec<Inserted>, StoreError> {
        let now = super::now_ms();
        self.run(move |conn| insert_batch(conn, &events, now)).await
    }

    /// Events matching `filter`, newest first.
    pub fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRow>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM events WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(t) = &filter.event_type {
            sql.push_str(" AND event_type = ?");
            args.push(t.clone().into());
        }
        if let Some(since) = filter.since_ms {
            sql.push_str(" AND received_at >= ?");
            args.push(since.into());
        }
        if let Some(f) = &filter.file_id {
            sql.push_str(" AND file_id = ?");
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

    /// One event by id.
    pub fn get_event(&self, id: i64) -> Result<Option<EventRow>, StoreError> {
        self.run_sync(|conn| {
            Ok(conn.query_row(&format!("SELECT {COLUMNS} FROM events WHERE id = ?"), [id], row_to_event).optional()?)
        })
    }

    /// Number of stored events.
    pub fn count_events(&self) -> Result<i64, StoreError> {
        self.run_sync(|conn| Ok(conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?))
    }

    /// Events with an id above `after`, oldest first (for following new arrivals).
    pub fn events_after(&self, after: i64, limit: u32) -> Result<Vec<EventRow>, StoreError> {
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

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
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
        assert_eq!(all(EventFilter { since_ms: Some(super::super::now_ms() + 60_000), ..Default::default() }).len(), 0);
        assert_eq!(store.list_events(&EventFilter { limit: 1, ..Default::default() }).unwrap().len(), 1);
    }
}
