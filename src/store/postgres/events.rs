//! [`History`] on PostgreSQL.

use super::PgStore;
use crate::event::ReceivedEvent;
use crate::route::Routed;
use crate::store::{Batch, EventFilter, EventRow, FirstClaim, History, Ingested, Inserted, StoreError};

#[async_trait::async_trait]
impl History for PgStore {
    async fn insert_events(&self, events: Vec<(ReceivedEvent, Vec<String>)>) -> Result<Vec<Inserted>, StoreError> {
        let (events, handlers): (Vec<ReceivedEvent>, Vec<Vec<String>>) = events.into_iter().unzip();
        let mut route = |i: usize, _: &ReceivedEvent| Routed { handlers: handlers[i].clone(), ..Routed::default() };
        Ok(self.insert_batch(&events, &mut route).await?.into_iter().map(|(row, _)| row).collect())
    }

    async fn ingest_claiming(
        &self,
        batches: Vec<Batch>,
        confirmed: Vec<(i64, i64)>,
        wants: Vec<FirstClaim>,
    ) -> Result<Ingested, StoreError> {
        self.ingest(&batches, &confirmed, &wants).await
    }

    async fn backfill_files(&self, _batch: u32) -> Result<usize, StoreError> {
        Ok(0) // Every PostgreSQL row is indexed as it is stored.
    }

    fn event_files(&self, id: i64) -> Result<Vec<(String, String)>, StoreError> {
        self.block(self.event_files(id))
    }

    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRow>, StoreError> {
        self.block(self.list_events(filter))
    }

    fn get_event(&self, id: i64) -> Result<Option<EventRow>, StoreError> {
        self.block(self.get_event(id))
    }

    fn count_events(&self) -> Result<i64, StoreError> {
        self.block(self.count_events())
    }

    fn events_after(&self, after: i64, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        self.block(self.events_after(after, limit))
    }
}
