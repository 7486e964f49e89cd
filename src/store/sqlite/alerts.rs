//! [`Alerts`] on SQLite; the contract is in `store/alerts.rs`.
//!
//! Storing alerts (see [`crate::alerts`]): the hold-back per kind and subject in
//! `alert_log`, and the alert event with its deliveries, in one transaction; and the
//! dead-delivery alerts, which skip deliveries of alert events (loop protection). An alert
//! that no route takes is not stored: without an alert route the store holds Tencent's
//! events alone, as before.

use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use super::events::insert_rows;
use super::SqliteStore;
use crate::alert_event::{Alert, ALERT_HOLD};
use crate::names::ALERT_SOURCE;
use crate::store::alerts::{dead_delivery_alerts, DeadDelivery};
use crate::store::deliveries::FirstClaims;
use crate::store::{Alerts, RouteFn, StoreError};

/// Stores `alert` if a route takes it, unless one of its kind and subject was stored less
/// than [`ALERT_HOLD`] ago (then it only counts as held back). Returns true if it was
/// stored (and so routed to at least one handler).
pub(super) fn raise(conn: &Connection, alert: &Alert, route: &RouteFn, now: i64) -> Result<bool, StoreError> {
    // Routed before anything else: an alert no route takes is not stored at all.
    let routed = route(&alert.event(0));
    if routed.handlers.is_empty() {
        return Ok(false);
    }
    let kind = alert.kind.event_type();
    let last: Option<(i64, i64)> = conn
        .prepare_cached("SELECT last_at, held_back FROM alert_log WHERE kind = ?1 AND subject = ?2")?
        .query_row(params![kind, alert.subject], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((last_at, _)) = last.filter(|(at, _)| (0..ALERT_HOLD.as_millis() as i64).contains(&(now - at))) {
        conn.execute(
            "UPDATE alert_log SET held_back = held_back + 1 WHERE kind = ?1 AND subject = ?2 AND last_at = ?3",
            params![kind, alert.subject, last_at],
        )?;
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO alert_log (kind, subject, last_at, held_back) VALUES (?1, ?2, ?3, 0)
         ON CONFLICT (kind, subject) DO UPDATE SET last_at = excluded.last_at, held_back = 0",
        params![kind, alert.subject, now],
    )?;
    let event = alert.event(last.map_or(0, |(_, held)| held));
    let stored = insert_rows(conn, &[event], &mut |_, _| routed.clone(), now, &mut FirstClaims::none())?;
    Ok(stored.iter().any(|(row, _)| row.new))
}

/// The deliveries among `ids` that are dead and not deliveries of an alert event, in the
/// order of `ids`.
fn dead_alerts(conn: &Connection, ids: &[i64]) -> Result<Vec<Alert>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.handler, d.webhook_id, d.event_id, e.event_type, d.last_status, d.last_error
         FROM deliveries d JOIN events e ON e.id = d.event_id
         WHERE d.id = ?1 AND d.state = 'dead' AND e.source != ?2",
    )?;
    let mut dead = Vec::new();
    for id in ids {
        let row = stmt
            .query_row(params![id, ALERT_SOURCE], |r| {
                Ok(DeadDelivery {
                    handler: r.get(0)?,
                    webhook_id: r.get(1)?,
                    event_id: r.get(2)?,
                    event_type: r.get(3)?,
                    status: r.get(4)?,
                    error: r.get(5)?,
                })
            })
            .optional()?;
        dead.extend(row);
    }
    Ok(dead_delivery_alerts(dead))
}

#[async_trait::async_trait]
impl Alerts for SqliteStore {
    async fn raise_alert(&self, alert: Alert, route: Arc<RouteFn>) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let routed = raise(&tx, &alert, &*route, crate::store::now_ms())?;
            tx.commit()?;
            Ok(routed)
        })
        .await
    }

    async fn raise_alerts_for_dead(&self, delivery_ids: Vec<i64>, route: Arc<RouteFn>) -> Result<usize, StoreError> {
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let now = crate::store::now_ms();
            let mut routed = 0;
            for alert in dead_alerts(&tx, &delivery_ids)? {
                routed += usize::from(raise(&tx, &alert, &*route, now)?);
            }
            tx.commit()?;
            Ok(routed)
        })
        .await
    }

    async fn dead_since(&self, since_ms: i64, limit: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, updated_at FROM deliveries WHERE state = 'dead' AND updated_at >= ?1
                 ORDER BY updated_at, id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![since_ms, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::alert_event::AlertKind;
    use crate::route::Routed;
    use crate::store::prelude::*;
    use crate::store::sqlite::deliveries::tests::record;
    use crate::store::Next;

    fn to(handler: &str) -> Arc<RouteFn> {
        let handler = handler.to_string();
        Arc::new(move |e| Routed {
            handlers: if e.event_type.starts_with("vod-eventd.") { vec![handler.clone()] } else { vec![] },
            filter_errors: vec![],
        })
    }

    fn alerts(store: &SqliteStore) -> Vec<(String, String)> {
        store
            .run_sync(|c| {
                let mut stmt =
                    c.prepare("SELECT event_type, content FROM events WHERE source = 'vod-eventd' ORDER BY id")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .unwrap()
    }

    #[tokio::test]
    async fn one_alert_per_kind_and_subject_per_minute_and_none_about_an_alert_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("e.db"), Duration::from_secs(1)).unwrap();
        let event = crate::event::ReceivedEvent::from_content(r#"{"eventType":"X"}"#, crate::config::ApiVersion::V2);
        store.insert_events(vec![(event, vec!["h".into()])]).await.unwrap();
        let claimed = store.claim_due("h".into(), 1, crate::store::now_ms(), Duration::from_secs(60)).await.unwrap();
        store.finish_attempt(record(claimed[0].delivery_id, 1, Next::Dead)).await.unwrap();

        assert_eq!(store.raise_alerts_for_dead(vec![claimed[0].delivery_id], to("pager")).await.unwrap(), 1);
        assert_eq!(
            store.raise_alerts_for_dead(vec![claimed[0].delivery_id], to("pager")).await.unwrap(),
            0,
            "held back"
        );
        let stored = alerts(&store);
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].0, "vod-eventd.delivery.dead");
        assert!(stored[0].1.contains(r#""handler":"h""#), "{}", stored[0].1);

        // The alert's own delivery goes dead: no alert about it.
        let alert_delivery =
            store.claim_due("pager".into(), 1, crate::store::now_ms(), Duration::from_secs(60)).await.unwrap();
        store.finish_attempt(record(alert_delivery[0].delivery_id, 1, Next::Dead)).await.unwrap();
        store.run_sync(|c| Ok(c.execute("DELETE FROM alert_log", [])?)).unwrap();
        assert_eq!(store.raise_alerts_for_dead(vec![alert_delivery[0].delivery_id], to("pager")).await.unwrap(), 0);
        assert_eq!(alerts(&store).len(), 1);

        let credentials = Alert::new(AlertKind::CredentialsRefused, "default", "refused");
        assert!(store.raise_alert(credentials.clone(), to("pager")).await.unwrap());
        assert!(!store.raise_alert(credentials.clone(), to("pager")).await.unwrap());
        store.run_sync(|c| Ok(c.execute("UPDATE alert_log SET last_at = last_at - 60000", [])?)).unwrap();
        assert!(store.raise_alert(credentials, to("pager")).await.unwrap());
        let last = alerts(&store).pop().unwrap().1;
        assert!(last.contains(r#""held_back":1"#), "{last}");
        // The wall clock stepped back an hour since the last one (or the store was written
        // by a host whose clock ran ahead): that alert is not held back until the clock
        // passes it again.
        let refused = Alert::new(AlertKind::CredentialsRefused, "default", "refused");
        store.run_sync(|c| Ok(c.execute("UPDATE alert_log SET last_at = last_at + 3600000", [])?)).unwrap();
        assert!(store.raise_alert(refused, to("pager")).await.unwrap(), "an alert from the future holds nothing back");
        let dead = store.dead_since(0, 10).await.unwrap();
        assert_eq!(dead.len(), 2);

        let before = alerts(&store).len();
        let nowhere: Arc<RouteFn> = Arc::new(|_| Routed::default());
        assert!(!store.raise_alert(Alert::new(AlertKind::PullsStale, "default", "stale"), nowhere).await.unwrap());
        assert_eq!(alerts(&store).len(), before, "an alert no route takes is not stored");
    }
}
