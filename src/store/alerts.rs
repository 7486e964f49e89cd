//! Storing alerts (see [`crate::alerts`]): the hold-back per kind and subject in
//! `alert_log`, and the alert event with its deliveries, in one transaction; and the
//! dead-delivery alerts, which skip deliveries of alert events (loop protection). An alert
//! that no route takes is not stored: without an alert route the store holds Tencent's
//! events alone, as before.

use std::sync::Arc;

use async_trait::async_trait;

use super::RouteFn;
use crate::alert_event::Alert;

use super::StoreError;

/// The alerts operations every backend implements.
#[async_trait]
pub trait Alerts: Send + Sync {
    /// Stores an alert event, routed by `route`, if a route takes it and none of its kind
    /// and subject was stored in the last minute. Returns true if it was stored.
    async fn raise_alert(&self, alert: Alert, route: Arc<RouteFn>) -> Result<bool, StoreError>;

    /// The post-step of recording outcomes: raises `vod-eventd.delivery.dead` (one per
    /// handler, held back as any alert) for the deliveries among `delivery_ids` that are
    /// dead now, skipping deliveries of alert events. Returns how many alerts were routed.
    async fn raise_alerts_for_dead(&self, delivery_ids: Vec<i64>, route: Arc<RouteFn>) -> Result<usize, StoreError>;

    /// Deliveries that went dead at or after `since_ms` (by `updated_at`), oldest first, at
    /// most `limit`: `(id, updated_at)`. Reads only dead rows (`deliveries_dead_updated`).
    async fn dead_since(&self, since_ms: i64, limit: i64) -> Result<Vec<(i64, i64)>, StoreError>;
}
