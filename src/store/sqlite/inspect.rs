//! [`Inspect`] on SQLite.

use rusqlite::Connection;

use super::SqliteStore;
use crate::store::{AttemptFact, DeliveryFact, Inspect, StoreError};

fn rows<T>(
    conn: &Connection,
    sql: &str,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], map)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl Inspect for SqliteStore {
    fn deliveries(&self) -> Result<Vec<DeliveryFact>, StoreError> {
        self.run_sync(|c| {
            rows(
                c,
                "SELECT id, event_id, handler, state, attempts, webhook_id, last_status, last_error
                 FROM deliveries ORDER BY id",
                |r| {
                    Ok(DeliveryFact {
                        id: r.get(0)?,
                        event_id: r.get(1)?,
                        handler: r.get(2)?,
                        state: r.get(3)?,
                        attempts: r.get(4)?,
                        webhook_id: r.get(5)?,
                        last_status: r.get(6)?,
                        last_error: r.get(7)?,
                    })
                },
            )
        })
    }

    fn attempts(&self) -> Result<Vec<AttemptFact>, StoreError> {
        self.run_sync(|c| {
            rows(
                c,
                "SELECT a.delivery_id, d.handler, a.started_at, a.error FROM attempts a
                 JOIN deliveries d ON d.id = a.delivery_id ORDER BY a.id",
                |r| {
                    Ok(AttemptFact {
                        delivery_id: r.get(0)?,
                        handler: r.get(1)?,
                        started_at: r.get(2)?,
                        error: r.get(3)?,
                    })
                },
            )
        })
    }

    fn max_event_id(&self) -> Result<i64, StoreError> {
        self.run_sync(|c| Ok(c.query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?))
    }
}
