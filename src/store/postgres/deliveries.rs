//! [`Outbox`] on PostgreSQL.

use super::PgStore;
use std::sync::Arc;

use crate::store::{AttemptRecord, AttemptRow, Claimed, DeliveryFilter, DeliveryRow, Outbox, StoreError, Want};

#[async_trait::async_trait]
impl Outbox for PgStore {
    async fn settle_and_claim(
        &self,
        outcomes: Arc<[AttemptRecord]>,
        wants: Vec<Want>,
        now: i64,
    ) -> Result<Claimed, StoreError> {
        self.settle_and_claim(&outcomes, &wants, now).await
    }

    async fn requeue_running(&self) -> Result<usize, StoreError> {
        self.requeue_own().await
    }

    async fn sweep_expired_leases(&self, now: i64) -> Result<usize, StoreError> {
        self.sweep_expired_leases(now).await
    }

    fn lease_ends_in(&self) -> Option<std::time::Duration> {
        let ms = self.lease_ends_in.load(std::sync::atomic::Ordering::Relaxed);
        (ms >= 0).then(|| std::time::Duration::from_millis(ms as u64))
    }

    fn list_deliveries(&self, f: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        self.block(self.list_deliveries(f))
    }

    fn event_deliveries(&self, event_id: i64) -> Result<Vec<(DeliveryRow, Vec<AttemptRow>)>, StoreError> {
        self.block(self.event_deliveries(event_id))
    }

    fn replay(&self, event_id: i64, handler: Option<&str>) -> Result<Vec<String>, StoreError> {
        self.block(self.replay(event_id, handler))
    }

    fn retry_dead(&self, handler: Option<&str>) -> Result<usize, StoreError> {
        self.block(self.retry_dead(handler))
    }
}
