//! The store: the source of truth, behind one interface with two backends. The
//! operations are grouped by concern, a trait per file: [`History`] (ingest and the event
//! history, `events.rs`), [`Activity`] (per-hour figures), [`Outbox`] (deliveries, claims
//! with leases, outcomes, `deliveries.rs`), [`Ranges`] (range replays and retries),
//! [`Keys`] (DRM data keys), [`Handlers`] (pauses and the per-handler overview),
//! [`Alerts`] (the daemon's own events), [`Maintenance`] (heartbeat, orphans, retention,
//! size, checks, singletons) and [`Inspect`] (a small read-only view for tests and the
//! demo). [`Backend`] is all of them; [`Store`] is a cheap handle on one backend:
//!
//! - [`sqlite`]: one embedded file (`store.path`);
//! - [`postgres`]: one database shared by several daemons (`store.url`).
//!
//! Each backend's files mirror the interface files, and `tests/it/conformance.rs` runs the
//! same bodies against both. Nothing outside this module sees a driver type or writes SQL.
//! [`copy`] moves a history from any backend to any other.

mod activity;
pub(crate) mod alerts;
pub mod copy;
mod deliveries;
mod events;
mod handlers;
mod inspect;
pub mod keyring;
mod keys;
mod maintenance;
pub mod notices;
pub mod postgres;
mod ranges;
pub mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use activity::{Activity, Hourly, HOURS};
pub use alerts::Alerts;
pub use deliveries::{
    webhook_id, AlertWith, AttemptRecord, AttemptRow, BreakerStep, Claimed, DeliveryFilter, DeliveryRow, Next, Outbox,
    Want,
};
pub use events::{Batch, EventFilter, EventRow, FirstClaim, History, Ingested, Inserted, RouteFn};
pub use handlers::{HandlerOverview, Handlers, Paused, RECENT_ATTEMPTS};
pub use inspect::{AttemptFact, DeliveryFact, Inspect};
pub use keys::{KeyInfo, Keys, NewKey};
pub use maintenance::{HandlerCounts, Maintenance, Orphans, Singleton};
pub use ranges::{Range, RangeJob, Ranges, RANGE_BATCH};

/// Brings every store trait into scope: `use crate::store::prelude::*;`.
pub mod prelude {
    pub use super::{
        Activity as _, Alerts as _, Handlers as _, History as _, Inspect as _, Keys as _, Maintenance as _,
        Outbox as _, Ranges as _,
    };
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or set up.
    #[error("cannot open the store {path}: {source}")]
    Open {
        /// The store file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// There is no store file where one was expected.
    #[error("no store at {0}; check store.path, or start the daemon once to create it")]
    Missing(PathBuf),
    /// The file was written by a newer vod-eventd.
    #[error(
        "the store {path} has schema version {found}, newer than this vod-eventd knows ({known}); upgrade vod-eventd"
    )]
    TooNew {
        /// The store file.
        path: PathBuf,
        /// Its schema version.
        found: usize,
        /// The newest this build knows.
        known: usize,
    },
    /// The integrity check failed: the daemon refuses to run on the file.
    #[error("the store {path} is damaged ({detail}). vod-eventd will not run on it and has confirmed nothing. Move the file aside and restore a backup, or start with an empty store: events not yet confirmed are redelivered by Tencent")]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// The first problem SQLite reported.
        detail: String,
    },
    /// Rows break the store's own rules (`store check` on PostgreSQL).
    #[error("the store {store} fails its consistency check: {detail}. Stop the daemons, look at those rows (`vod-eventd deliveries list`), and repair or delete them before starting again")]
    Inconsistent {
        /// The store, as shown (a URL without its password).
        store: String,
        /// What is wrong, with counts.
        detail: String,
    },
    /// Another live daemon holds this `node.name` on the shared store.
    #[error("another running daemon holds node.name `{node}` on this store ({heartbeat}); give each daemon its own node.name (in [node], or VOD_EVENTD_NODE__NAME), or stop the other one")]
    NodeNameTaken {
        /// The name.
        node: String,
        /// The other daemon's heartbeat, as `status` would say it.
        heartbeat: String,
    },
    /// A query or commit failed (disk full, I/O error, read-only file, ...).
    #[error("store query failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The blocking task running the query panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
    /// A PostgreSQL query or commit failed (the message never holds the password).
    #[error("PostgreSQL store: {0}")]
    Postgres(String),
    /// PostgreSQL cannot be reached now: connection refused or lost, server stopping or
    /// starting, no free connection in time.
    #[error("PostgreSQL store unreachable: {0} (vod-eventd retries by itself; check that the server store.url names is up and reachable)")]
    PostgresDown(String),
    /// The store reached `store.max_size_mb` (PostgreSQL; SQLite reports its own "database
    /// or disk is full").
    #[error("the store is full: {0}; raise store.max_size_mb and send SIGHUP, or let retention make room")]
    Full(String),
    /// A stored data key does not open (encryption at rest; the message holds no key).
    #[error("{0}")]
    Sealed(#[from] keyring::OpenError),
    /// The operation exists only for the SQLite store so far.
    #[error("{0} is not available with store.url (PostgreSQL) yet; run it against a SQLite store (store.path)")]
    NotAvailable(String),
}

/// Every operation of the store: what a backend implements.
pub trait Backend:
    History + Activity + Outbox + Ranges + Keys + Handlers + Alerts + Maintenance + Inspect + 'static
{
}

impl<T> Backend for T where
    T: History + Activity + Outbox + Ranges + Keys + Handlers + Alerts + Maintenance + Inspect + 'static
{
}

/// The state key naming the key id a daemon or key server last sealed keys under.
const SEALED_STATE: &str = "keys.sealed_with";

/// How long [`Store::check_keyring`] waits for a PostgreSQL server that went away just
/// after the daemon or the key server connected.
const STARTUP_WAIT: Duration = Duration::from_secs(60);

/// A handle on the store; cheap to clone. Every operation is a method of one of the traits
/// [`Backend`] names (bring them into scope with [`prelude`]).
///
/// Key material passes through the handle's [`keyring::KeyRing`] (when one is configured,
/// [`Store::with_keyring`]): [`Store::insert_keys`] seals, [`Store::key_for`] and
/// [`Store::get_key`] open. These inherent methods stand in front of the [`Keys`] methods of
/// the same names, so a backend only ever sees sealed bytes; never call those through the
/// backend directly.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    keyring: Option<Arc<keyring::KeyRing>>,
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

impl Store {
    /// A handle on `backend`.
    pub fn new(backend: impl Backend) -> Store {
        Store { backend: Arc::new(backend), keyring: None }
    }

    /// This handle, sealing the data keys it stores with `keyring` (and opening them).
    pub fn with_keyring(self, keyring: Option<keyring::KeyRing>) -> Store {
        Store { keyring: keyring.map(Arc::new), ..self }
    }

    /// The key ring this handle seals with, if any.
    pub fn keyring(&self) -> Option<&keyring::KeyRing> {
        self.keyring.as_deref()
    }

    /// Stores keys ([`Keys::insert_keys`]), each sealed first when a key ring is set.
    pub async fn insert_keys(&self, mut keys: Vec<NewKey>) -> Result<usize, StoreError> {
        if let Some(ring) = &self.keyring {
            for key in &mut keys {
                key.sealed = Some(ring.seal(&key.edk, &key.dk));
            }
        }
        self.backend.insert_keys(keys).await
    }

    /// [`Keys::key_for`], opened.
    pub async fn key_for(&self, file_id: String, edk: String) -> Result<Option<Vec<u8>>, StoreError> {
        let stored = self.backend.key_for(file_id, edk.clone()).await?;
        Ok(stored.map(|s| keyring::open(self.keyring(), &edk, &s)).transpose()?)
    }

    /// [`Keys::get_key`], opened.
    pub fn get_key(&self, edk: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let stored = self.backend.get_key(edk)?;
        Ok(stored.map(|s| keyring::open(self.keyring(), edk, &s)).transpose()?)
    }

    /// `keys rekey`: every stored key not yet sealed under the key ring's first key (sealed
    /// under an older one, or stored before encryption) is sealed under it. Returns how
    /// many were sealed again, and how many already were under the first key. A row
    /// changed meanwhile is left as the other writer left it.
    pub async fn rekey(&self) -> Result<(usize, usize), StoreError> {
        let ring = self
            .keyring
            .clone()
            .ok_or_else(|| StoreError::NotAvailable("keys rekey without [keys] encryption_key_file".into()))?;
        let (mut sealed, mut current) = (0, 0);
        let mut after = String::new();
        loop {
            let rows = self.backend.stored_keys(after.clone(), 500).await?;
            let Some((last, _)) = rows.last() else { break };
            after = last.clone();
            for (edk, stored) in rows {
                if keyring::sealed_under(&stored)?.as_deref() == Some(ring.sealing_id()) {
                    current += 1;
                    continue;
                }
                let dk: [u8; 16] = ring.open(&edk, &stored)?.try_into().map_err(|_| keyring::OpenError::Malformed)?;
                if self.backend.replace_key(edk.clone(), stored, ring.seal(&edk, &dk)).await? {
                    sealed += 1;
                }
            }
        }
        Ok((sealed, current))
    }

    /// For the processes that store keys (the daemon, the key server), at start: with a key
    /// ring, records in the store that its keys are sealed; without one, refuses a store
    /// whose keys were sealed before. A key file lost or not loaded (the packaged units
    /// load it only when it exists) would otherwise store new keys in the clear, silently.
    ///
    /// It is the first query after connecting, so a PostgreSQL server that restarts just
    /// then (the connection closed under it) is waited for, as connecting waits for it, for
    /// at most [`STARTUP_WAIT`]: it used to end the daemon with an error saying it retries.
    pub async fn check_keyring(&self) -> Result<(), StoreError> {
        let deadline = std::time::Instant::now() + STARTUP_WAIT;
        let mut attempt = 0;
        loop {
            match self.check_keyring_once().await {
                Err(StoreError::PostgresDown(detail)) if std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %detail, "PostgreSQL went away just after vod-eventd connected; trying again.");
                    tokio::time::sleep(postgres::reconnect_delay(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn check_keyring_once(&self) -> Result<(), StoreError> {
        if let Some(ring) = &self.keyring {
            return self.put_state(vec![(SEALED_STATE.into(), ring.sealing_id().into())]).await;
        }
        let store = self.clone();
        let state =
            tokio::task::spawn_blocking(move || store.state()).await.map_err(|e| StoreError::Task(e.to_string()))??;
        match state.get(SEALED_STATE) {
            Some(id) => Err(keyring::OpenError::KeyRingMissing(id.clone()).into()),
            None => Ok(()),
        }
    }

    /// Opens the store `config` names for the daemon: PostgreSQL with `store.url`
    /// (connecting and migrating), else the SQLite file `store.path` (see [`Store::open`]).
    pub async fn open_config(config: &crate::config::StoreConfig, node: &str) -> Result<Store, StoreError> {
        if config.postgres_url().is_none() {
            return Store::open(&config.path, config.busy_timeout);
        }
        Ok(Store::new(postgres::PgStore::connect(config, node, true).await?))
    }

    /// Opens the store `config` names for a CLI command: PostgreSQL with `store.url`, else
    /// the existing SQLite file `store.path` (see [`Store::open_existing`]).
    pub fn open_for_cli(config: &crate::config::StoreConfig) -> Result<Store, StoreError> {
        if config.postgres_url().is_none() {
            return Store::open_existing(&config.path, config.busy_timeout);
        }
        Ok(Store::new(postgres::PgStore::connect_blocking(config, "cli")?))
    }

    /// Opens the store `config` names for the key server: PostgreSQL with `store.url`
    /// (waiting for the server as the daemon does), else the existing SQLite file
    /// `store.path` (the daemon creates it).
    pub async fn open_for_keyserver(config: &crate::config::StoreConfig) -> Result<Store, StoreError> {
        if config.postgres_url().is_none() {
            return Store::open_existing(&config.path, config.busy_timeout);
        }
        Ok(Store::new(postgres::PgStore::connect(config, "keyserver", true).await?))
    }

    /// Opens (creating if needed) the SQLite store file `path` for the daemon, and migrates it.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Store, StoreError> {
        Ok(Store::new(sqlite::SqliteStore::open(path, busy_timeout)?))
    }

    /// Opens an existing SQLite store file for the CLI (no creation; migrations still run
    /// so an older file can be read by a newer CLI).
    pub fn open_existing(path: &Path, busy_timeout: Duration) -> Result<Store, StoreError> {
        Ok(Store::new(sqlite::SqliteStore::open_existing(path, busy_timeout)?))
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
