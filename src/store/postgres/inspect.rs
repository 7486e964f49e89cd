//! [`Inspect`] on PostgreSQL.

use super::PgStore;
use crate::store::{AttemptFact, DeliveryFact, Inspect, StoreError};

impl Inspect for PgStore {
    fn deliveries(&self) -> Result<Vec<DeliveryFact>, StoreError> {
        self.block(async {
            let rows = self
                .client()
                .await?
                .query(
                    "SELECT id, event_id, handler, state, attempts::bigint, webhook_id, last_status::bigint, last_error
                     FROM deliveries ORDER BY id",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| DeliveryFact {
                    id: r.get(0),
                    event_id: r.get(1),
                    handler: r.get(2),
                    state: r.get(3),
                    attempts: r.get(4),
                    webhook_id: r.get(5),
                    last_status: r.get(6),
                    last_error: r.get(7),
                })
                .collect())
        })
    }

    fn attempts(&self) -> Result<Vec<AttemptFact>, StoreError> {
        self.block(async {
            let rows = self
                .client()
                .await?
                .query(
                    "SELECT a.delivery_id, d.handler, a.started_at, a.error FROM attempts a
                     JOIN deliveries d ON d.id = a.delivery_id ORDER BY a.id",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| AttemptFact {
                    delivery_id: r.get(0),
                    handler: r.get(1),
                    started_at: r.get(2),
                    error: r.get(3),
                })
                .collect())
        })
    }

    fn max_event_id(&self) -> Result<i64, StoreError> {
        self.block(async {
            Ok(self.client().await?.query_one("SELECT coalesce(max(id), 0) FROM events", &[]).await?.get(0))
        })
    }
}
