//! [`Alerts`] on PostgreSQL.

use super::PgStore;
use std::sync::Arc;

use crate::alert_event::Alert;
use crate::store::{Alerts, RouteFn, StoreError};

#[async_trait::async_trait]
impl Alerts for PgStore {
    async fn raise_alert(&self, alert: Alert, route: Arc<RouteFn>) -> Result<bool, StoreError> {
        self.raise_alert(&alert, &*route).await
    }

    async fn raise_alerts_for_dead(&self, delivery_ids: Vec<i64>, route: Arc<RouteFn>) -> Result<usize, StoreError> {
        self.raise_alerts_for_dead(&delivery_ids, &*route).await
    }

    async fn dead_since(&self, since_ms: i64, limit: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        self.dead_since(since_ms, limit).await
    }
}
