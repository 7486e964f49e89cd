//! The rest of the daemon's store work on PostgreSQL: the heartbeat values
//! (`daemon_state`), credentials that worked, orphaned deliveries, the per-handler counts,
//! DRM keys, and retention pruning (in batches of `PRUNE_BATCH` events, each its own
//! transaction; PostgreSQL's autovacuum gives the space back).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::PgStore;
use crate::store::{HandlerCounts, NewKey, Orphans, StoreError};

/// Events looked at per pruning transaction.
const PRUNE_BATCH: i64 = 1000;

impl PgStore {
    /// See [`crate::store::Maintenance::put_state`].
    pub async fn put_state(&self, values: &[(String, String)]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        for (key, value) in values {
            tx.execute(
                "INSERT INTO daemon_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[key, value],
            )
            .await?;
        }
        if values.iter().any(|(key, _)| key == crate::store::notices::RECHECK_KEY) {
            self.notify(&tx, super::listen::Topic::Recheck).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// See [`crate::store::Maintenance::state`].
    pub async fn state(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let client = self.client().await?;
        let rows = client.query("SELECT key, value FROM daemon_state", &[]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// See [`crate::store::Maintenance::credentials_worked`].
    pub async fn credentials_worked(&self, fingerprint: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let key = format!("pull_ok:{fingerprint}");
        Ok(client.query_opt("SELECT 1 FROM daemon_state WHERE key = $1", &[&key]).await?.is_some())
    }

    /// See [`crate::store::Maintenance::remember_credentials`].
    pub async fn remember_credentials(&self, fingerprint: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        let key = format!("pull_ok:{fingerprint}");
        client
            .execute(
                "INSERT INTO daemon_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &crate::store::now_ms().to_string()],
            )
            .await?;
        Ok(())
    }

    /// See [`crate::store::Maintenance::sync_orphans`].
    pub async fn sync_orphans(&self, configured: &[String], config_path: &str) -> Result<Orphans, StoreError> {
        let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Rows as (handler, state), counted per handler: pending ones, and running ones.
        let count = |rows: Vec<tokio_postgres::Row>| {
            let mut counts: [BTreeMap<String, i64>; 2] = [BTreeMap::new(), BTreeMap::new()];
            for r in rows {
                let running = r.get::<_, String>(1) == "running";
                *counts[usize::from(running)].entry(r.get(0)).or_default() += 1;
            }
            counts
        };
        let [mut resumed, running] = count(
            tx.query(
                "UPDATE deliveries SET orphaned_reason = NULL
                 WHERE orphaned_reason IS NOT NULL AND handler = ANY($1) RETURNING handler, state",
                &[&configured],
            )
            .await?,
        );
        for (handler, n) in running {
            *resumed.entry(handler).or_default() += n;
        }
        let [orphaned, in_flight] = count(
            tx.query(
                "UPDATE deliveries SET orphaned_reason = 'no handler named `' || handler || '` in ' || $2 || ' since ' || $3
                 WHERE state IN ('pending', 'running') AND orphaned_reason IS NULL
                   AND NOT (handler = ANY($1)) RETURNING handler, state",
                &[&configured, &config_path, &since],
            )
            .await?,
        );
        if !resumed.is_empty() {
            self.notify(&tx, super::listen::Topic::Work).await?;
        }
        tx.commit().await?;
        Ok(Orphans { orphaned, in_flight, resumed })
    }

    /// See [`crate::store::Maintenance::handler_counts`].
    pub async fn handler_counts(&self) -> Result<BTreeMap<String, HandlerCounts>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT handler,
                    count(*) FILTER (WHERE state IN ('pending', 'running') AND orphaned_reason IS NULL),
                    count(*) FILTER (WHERE state = 'dead'),
                    min(created_at) FILTER (WHERE state IN ('pending', 'running') AND orphaned_reason IS NULL),
                    count(*) FILTER (WHERE state IN ('pending', 'running') AND orphaned_reason IS NOT NULL),
                    max(orphaned_reason) FILTER (WHERE state IN ('pending', 'running'))
                 FROM deliveries WHERE state != 'done' GROUP BY handler",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let counts = HandlerCounts {
                    pending: r.get(1),
                    dead: r.get(2),
                    oldest_pending_ms: r.get(3),
                    orphaned: r.get(4),
                    orphaned_reason: r.get(5),
                };
                (r.get(0), counts)
            })
            .collect())
    }

    /// See [`crate::store::Keys::insert_keys`].
    pub async fn insert_keys(&self, keys: &[NewKey]) -> Result<usize, StoreError> {
        let now = crate::store::now_ms();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut added = 0;
        for k in keys {
            added += tx
                .execute(
                    "INSERT INTO drm_keys (edk, dk, file_id, key_source, definition, event_id, fetched_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (edk) DO NOTHING",
                    &[&k.edk, &k.stored_bytes(), &k.file_id, &k.key_source, &k.definition, &k.event_id, &now],
                )
                .await? as usize;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// See [`crate::store::Keys::known_edks`].
    pub async fn known_edks(&self, edks: Vec<String>) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client.query("SELECT edk FROM drm_keys WHERE edk = ANY($1)", &[&edks]).await?;
        let found: std::collections::BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(edks.into_iter().filter(|e| found.contains(e)).collect())
    }

    /// See [`crate::store::Maintenance::prune`].
    pub async fn prune(
        &self,
        before_ms: i64,
        include_dead: bool,
        pause: Duration,
        stop: &CancellationToken,
    ) -> Result<usize, StoreError> {
        let keep: &[&str] = if include_dead { &["pending", "running"] } else { &["pending", "running", "dead"] };
        let keep: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
        let mut cursor = 0i64;
        let mut total = 0;
        loop {
            let client = self.client().await?;
            let last = client
                .query_one(
                    "SELECT max(id), max(received_at) FROM (SELECT id, received_at FROM events WHERE id > $1
                     ORDER BY id LIMIT $2) b",
                    &[&cursor, &PRUNE_BATCH],
                )
                .await?;
            let (Some(last_id), last_received) = (last.get::<_, Option<i64>>(0), last.get::<_, Option<i64>>(1)) else {
                return Ok(total);
            };
            total += client
                .execute(
                    "DELETE FROM events WHERE id > $1 AND id <= $2 AND received_at < $3
                       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id
                                       AND d.state = ANY($4) AND d.orphaned_reason IS NULL)",
                    &[&cursor, &last_id, &before_ms, &keep],
                )
                .await? as usize;
            drop(client);
            if stop.is_cancelled() || last_received.is_none_or(|at| at >= before_ms) {
                return Ok(total);
            }
            cursor = last_id;
            tokio::time::sleep(pause).await;
        }
    }
}
