//! Storing alerts (see [`crate::alerts`]): the hold-back per kind and subject in
//! `alert_log`, and the alert event with its deliveries, in one transaction; and the
//! dead-delivery alerts, which skip deliveries of alert events (loop protection). An alert
//! that no route takes is not stored: without an alert route the store holds Tencent's
//! events alone, as before.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;

use super::{RouteFn, StoreError};
use crate::alert_event::{Alert, AlertKind};

/// A dead delivery, as the alert about it quotes it.
pub(crate) struct DeadDelivery {
    /// Its handler.
    pub handler: String,
    /// Its stable id.
    pub webhook_id: String,
    /// Its event.
    pub event_id: i64,
    /// That event's type.
    pub event_type: String,
    /// The last attempt's status, if any.
    pub status: Option<i64>,
    /// The last attempt's error, if any.
    pub error: Option<String>,
}

/// One `vod-eventd.delivery.dead` alert per handler of `dead`, counting its deliveries and
/// quoting the first one given: what each backend's [`Alerts::raise_alerts_for_dead`] raises.
pub(crate) fn dead_delivery_alerts(dead: impl IntoIterator<Item = DeadDelivery>) -> Vec<Alert> {
    let mut by_handler: BTreeMap<String, (i64, serde_json::Value)> = BTreeMap::new();
    for d in dead {
        let delivery = json!({"webhook_id": d.webhook_id, "event_id": d.event_id, "event_type": d.event_type,
                              "status": d.status, "error": d.error});
        by_handler.entry(d.handler).or_insert((0, delivery)).0 += 1;
    }
    by_handler
        .into_iter()
        .map(|(handler, (count, delivery))| {
            let error = delivery["error"].as_str().unwrap_or("none recorded").to_string();
            let mut alert = Alert::new(
                AlertKind::DeliveryDead,
                &handler,
                format!("{count} deliveries to handler {handler} went dead (last error: {error}). List them with `vod-eventd deliveries list --state dead --handler {handler}`; once the receiver is fixed, `vod-eventd deliveries retry --dead --handler {handler}`."),
            );
            alert.details.insert("deliveries".into(), count.into());
            alert.details.insert("delivery".into(), delivery);
            alert
        })
        .collect()
}

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
