//! Keeping the store healthy and bounded: the daemon's heartbeat (`daemon_state`),
//! retention pruning with incremental vacuum (in short steps that leave the connection
//! to the pipeline in between), the size cap, and the figures `status` and `/metrics`
//! report.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::StoreError;

/// Pending, dead and orphaned deliveries of one handler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerCounts {
    /// Pending or running.
    pub pending: i64,
    /// Dead.
    pub dead: i64,
    /// The oldest pending delivery's creation, Unix ms.
    pub oldest_pending_ms: Option<i64>,
    /// Pending, but the handler is no longer configured.
    pub orphaned: i64,
    /// Why, for one of them.
    pub orphaned_reason: Option<String>,
}

/// Deliveries whose handler went away, or came back, in one [`crate::store::Maintenance::sync_orphans`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Orphans {
    /// Newly orphaned pending deliveries, per handler.
    pub orphaned: BTreeMap<String, i64>,
    /// Attempts in flight of a handler newly gone, per handler: they finish (and are
    /// orphaned only if they are to be retried).
    pub in_flight: BTreeMap<String, i64>,
    /// Orphaned before and resumed now, per handler.
    pub resumed: BTreeMap<String, i64>,
}

/// Work that must run on one host at a time when several daemons share a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Singleton {
    /// Retention pruning.
    Retention,
    /// The heartbeat values `status` reads, and the alarms.
    Status,
    /// The alert loop's dead-delivery scan.
    Alerts,
}

impl Singleton {
    /// How `status` names it.
    pub fn name(self) -> &'static str {
        match self {
            Singleton::Retention => "retention",
            Singleton::Status => "status",
            Singleton::Alerts => "alerts",
        }
    }
}

/// The maintenance operations every backend implements.
#[async_trait]
pub trait Maintenance: Send + Sync {
    /// The SQLite file, or the PostgreSQL URL without its password.
    fn path(&self) -> &Path;

    /// True when several daemons may share this store (PostgreSQL): leases must be swept
    /// whoever took them, and other hosts' writes are announced only through
    /// [`Maintenance::notices`].
    fn is_shared(&self) -> bool;

    /// Whether this daemon runs the singleton task `what` now: always on a store of its
    /// own; on a shared one while it holds that task's lock.
    async fn lead(&self, what: Singleton) -> bool;

    /// The singleton tasks this daemon holds now, without taking any.
    async fn leading(&self) -> Vec<Singleton>;

    /// Checks the store: on SQLite `PRAGMA quick_check` (reads every page, so it takes time
    /// in proportion to the file: 1 to 3 s per GB from the page cache). Run by
    /// `vod-eventd store check`, and before start-up with `store.check_at_start`.
    fn check_integrity(&self) -> Result<(), StoreError>;

    /// A number that changes whenever another connection (the CLI, another process)
    /// commits; `None` when it cannot be read cheaply now, or where other writers are
    /// not announced (a shared store).
    fn data_version(&self) -> Option<i64>;

    /// Announcements of other processes' writes ([`super::notices`]), where the store has
    /// them (PostgreSQL); the first call starts listening.
    fn notices(&self) -> Option<super::notices::Notices> {
        None
    }

    /// Records the daemon's heartbeat values.
    async fn put_state(&self, values: Vec<(String, String)>) -> Result<(), StoreError>;

    /// The daemon's last heartbeat values.
    fn state(&self) -> Result<BTreeMap<String, String>, StoreError>;

    /// Whether a pull ever succeeded against this store with the credentials of this
    /// fingerprint ([`crate::api::ClientSettings::credentials_fingerprint`]).
    async fn credentials_worked(&self, fingerprint: String) -> Result<bool, StoreError>;

    /// Remembers the first successful pull with these credentials (kept across restarts).
    async fn remember_credentials(&self, fingerprint: String) -> Result<(), StoreError>;

    /// Marks the pending (or running) deliveries of handlers not in `configured` as
    /// orphaned, with the reason, and resumes orphaned deliveries of handlers that are
    /// configured again. Orphaned deliveries are not run, are counted apart, and keep
    /// their event only until `store.retention`.
    async fn sync_orphans(&self, configured: Vec<String>, config_path: String) -> Result<Orphans, StoreError>;

    /// Pending (or running), dead and orphaned deliveries per handler. Reads only the rows that
    /// are not done (the partial indexes of those states), whatever the history.
    async fn handler_counts(&self) -> Result<BTreeMap<String, HandlerCounts>, StoreError>;

    /// Events received since `since_ms`, by type.
    fn events_by_type_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError>;

    /// Bytes the store takes: on SQLite the file plus its write-ahead log; on PostgreSQL
    /// the daemon's own tables with their indexes and TOAST (0 if it cannot be read now).
    async fn size_on_disk(&self) -> u64;

    /// Caps the store at about `max_bytes` (0 = no cap): once full, commits that would grow
    /// it fail as a full disk does, and the daemon stops pulling until there is room.
    async fn set_max_size(&self, max_bytes: u64) -> Result<(), StoreError>;

    /// Deletes events received before `before_ms` whose deliveries are all done (with
    /// their deliveries and attempts); with `include_dead`, dead deliveries do not keep an
    /// event either. Pending or running deliveries keep it, unless they
    /// are orphaned. Freed pages go back to
    /// the file system as it goes. Returns the number of events deleted.
    ///
    /// Works in short steps, each its own transaction on at most `PRUNE_BATCH` events
    /// or `VACUUM_PAGES` pages, and waits `pause` between steps with the connection
    /// released, so the daemon's commits never wait for more than one step. Stops early
    /// (having deleted what it had) when `stop` is cancelled.
    async fn prune(
        &self,
        before_ms: i64,
        include_dead: bool,
        pause: Duration,
        stop: &CancellationToken,
    ) -> Result<usize, StoreError>;

    /// The oldest event's receive time, if any.
    fn oldest_event_ms(&self) -> Result<Option<i64>, StoreError>;
}
