//! [`Maintenance`] on PostgreSQL: the heartbeat and credentials in `daemon_state`,
//! orphans, retention, the size of the daemon's own tables, the size cap (checked before
//! each ingest, since PostgreSQL has no page cap of its own), the consistency check and
//! the singleton locks.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::PgStore;
use crate::store::{HandlerCounts, Maintenance, Orphans, Singleton, StoreError};

#[async_trait::async_trait]
impl Maintenance for PgStore {
    fn path(&self) -> &Path {
        Path::new(self.shown())
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn lead(&self, what: Singleton) -> bool {
        self.take_lead(what).await
    }

    async fn leading(&self) -> Vec<Singleton> {
        self.leader.lock().await.1.clone()
    }

    fn check_integrity(&self) -> Result<(), StoreError> {
        self.block(self.check())
    }

    fn data_version(&self) -> Option<i64> {
        None
    }

    fn notices(&self) -> Option<crate::store::notices::Notices> {
        Some(self.listen())
    }

    async fn put_state(&self, values: Vec<(String, String)>) -> Result<(), StoreError> {
        self.put_state(&values).await
    }

    fn state(&self) -> Result<BTreeMap<String, String>, StoreError> {
        self.block(self.state())
    }

    async fn credentials_worked(&self, fingerprint: String) -> Result<bool, StoreError> {
        self.credentials_worked(&fingerprint).await
    }

    async fn remember_credentials(&self, fingerprint: String) -> Result<(), StoreError> {
        self.remember_credentials(&fingerprint).await
    }

    async fn sync_orphans(&self, configured: Vec<String>, config_path: String) -> Result<Orphans, StoreError> {
        self.sync_orphans(&configured, &config_path).await
    }

    async fn handler_counts(&self) -> Result<BTreeMap<String, HandlerCounts>, StoreError> {
        self.handler_counts().await
    }

    fn events_by_type_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        self.block(self.events_by_type_since(since_ms))
    }

    async fn size_on_disk(&self) -> u64 {
        self.size().await
    }

    async fn set_max_size(&self, max_bytes: u64) -> Result<(), StoreError> {
        self.max_bytes.store(max_bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn prune(
        &self,
        before_ms: i64,
        include_dead: bool,
        pause: Duration,
        stop: &CancellationToken,
    ) -> Result<usize, StoreError> {
        self.prune(before_ms, include_dead, pause, stop).await
    }

    fn oldest_event_ms(&self) -> Result<Option<i64>, StoreError> {
        self.block(self.oldest_event_ms())
    }
}
