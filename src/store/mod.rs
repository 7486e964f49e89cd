//! The SQLite store: the source of truth. Opening it sets WAL and `synchronous=FULL`
//! (a commit is on disk before it returns, so a confirm sent after it can never outrun
//! the data), a busy timeout, and applies numbered migrations through `user_version`.
//! The file is created mode 0600. The daemon's connection sits behind a std mutex and is
//! only used from `spawn_blocking`; the CLI opens its own connection, which WAL allows
//! while the daemon runs.
//!
//! With `store.url`, the same [`Store`] is backed by PostgreSQL instead ([`pg`]), shared by
//! several daemons: the public methods the daemon and the CLI use dispatch to it at their
//! top. What is not ported (`run`/`run_sync` handing out a SQLite connection, the range
//! commands, the integrity check) fails with [`StoreError::NotAvailable`], never a panic.

mod activity;
mod alerts;
pub mod copy;
mod deliveries;
mod events;
mod handlers;
mod keys;
mod maintenance;
pub mod pg;
mod ranges;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use activity::{Hourly, HOURS};
pub use deliveries::{
    webhook_id, AlertWith, AttemptRecord, AttemptRow, BreakerStep, Claimed, DeliveryFilter, DeliveryRow, Next, Want,
};
pub use events::{Batch, EventFilter, EventRow, Inserted, RouteFn};
pub use handlers::{HandlerOverview, Paused, RECENT_ATTEMPTS};
pub use keys::{KeyInfo, NewKey};
pub use maintenance::{HandlerCounts, Orphans};
pub use ranges::{Range, RangeJob, RANGE_BATCH};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// Schema migrations, applied in order; `user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_events.sql"),
    include_str!("migrations/0002_deliveries.sql"),
    include_str!("migrations/0003_state.sql"),
    include_str!("migrations/0004_occurrences_files.sql"),
    include_str!("migrations/0005_leases.sql"),
    include_str!("migrations/0006_orphaned.sql"),
    include_str!("migrations/0007_sources.sql"),
    include_str!("migrations/0008_failed_attempts.sql"),
    include_str!("migrations/0009_replay_alerts.sql"),
    include_str!("migrations/0010_outbox_indexes.sql"),
    include_str!("migrations/0011_handler_state.sql"),
    include_str!("migrations/0012_event_indexes.sql"),
    include_str!("migrations/0013_event_confirmations.sql"),
    include_str!("migrations/0014_outbox_covering.sql"),
];

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
    /// The operation exists only for the SQLite store so far.
    #[error("{0} is not available with store.url (PostgreSQL) yet; run it against a SQLite store (store.path)")]
    NotAvailable(String),
}

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// The SQLite connection; none with PostgreSQL.
    conn: Option<Arc<Mutex<Connection>>>,
    /// The SQLite file, or the PostgreSQL URL without its password.
    path: PathBuf,
    /// The write-ahead log's size and modification time at the last `data_version` read,
    /// and what it returned.
    last_version: Arc<Mutex<Option<WalSeen>>>,
    /// The PostgreSQL backend, with `store.url`.
    pg: Option<Arc<pg::PgStore>>,
}

type WalSeen = ((u64, Option<std::time::SystemTime>), i64);

impl Store {
    /// Opens the store `config` names for the daemon: PostgreSQL with `store.url`
    /// (connecting and migrating), else the SQLite file `store.path` (see [`Store::open`]).
    pub async fn open_config(config: &crate::config::StoreConfig, node: &str) -> Result<Store, StoreError> {
        if config.postgres_url().is_none() {
            return Store::open(&config.path, config.busy_timeout);
        }
        let pg = pg::PgStore::connect(config, node, true).await?;
        Ok(Store { conn: None, path: pg.shown().into(), last_version: Arc::default(), pg: Some(Arc::new(pg)) })
    }

    /// Opens the store `config` names for a CLI command: PostgreSQL with `store.url`, else
    /// the existing SQLite file `store.path` (see [`Store::open_existing`]).
    pub fn open_for_cli(config: &crate::config::StoreConfig) -> Result<Store, StoreError> {
        if config.postgres_url().is_none() {
            return Store::open_existing(&config.path, config.busy_timeout);
        }
        let pg = pg::PgStore::connect_blocking(config, "cli")?;
        Ok(Store { conn: None, path: pg.shown().into(), last_version: Arc::default(), pg: Some(Arc::new(pg)) })
    }

    /// True when several daemons may share this store (PostgreSQL): leases must be swept
    /// whoever took them, and other hosts' writes are not announced.
    pub fn is_shared(&self) -> bool {
        self.pg.is_some()
    }

    /// Whether this daemon runs the singleton task `what` now: always on SQLite; on
    /// PostgreSQL while it holds that task's advisory lock (see [`pg::PgStore::lead`]).
    pub async fn lead(&self, what: pg::Singleton) -> bool {
        match &self.pg {
            Some(pg) => pg.lead(what).await,
            None => true,
        }
    }

    /// Opens (creating if needed) the store for the daemon, and migrates it.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Store, StoreError> {
        create_private(path).map_err(|e| StoreError::Open { path: path.into(), source: e })?;
        let conn = Connection::open(path).map_err(|e| StoreError::Open { path: path.into(), source: e })?;
        Self::setup(conn, path, busy_timeout, true)
    }

    /// `PRAGMA quick_check`: reads every page, so it takes time in proportion to the
    /// file (1 to 3 s per GB from the page cache, BENCHMARKS.md; more from disk). Not part of opening: a file SQLite cannot open at all
    /// is refused there, and a damaged page elsewhere fails the query that reads it. Run
    /// by `vod-eventd store check`, and before start-up with `store.check_at_start`.
    pub fn check_integrity(&self) -> Result<(), StoreError> {
        if self.pg.is_some() {
            return Err(StoreError::NotAvailable("the integrity check (store.check_at_start, store check)".into()));
        }
        let corrupt = |detail: String| StoreError::Corrupt { path: self.path.clone(), detail };
        let problems: Vec<String> = self
            .run_sync(|c| {
                let mut stmt = c.prepare("PRAGMA quick_check(10)")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .map_err(|e| corrupt(e.to_string()))?;
        if problems.len() == 1 && problems[0] == "ok" {
            Ok(())
        } else {
            Err(corrupt(problems.join("; ")))
        }
    }

    /// Opens an existing store for the CLI (no creation; migrations still run so an
    /// older file can be read by a newer CLI).
    pub fn open_existing(path: &Path, busy_timeout: Duration) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.into()));
        }
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|e| StoreError::Open { path: path.into(), source: e })?;
        Self::setup(conn, path, busy_timeout, false)
    }

    fn setup(conn: Connection, path: &Path, busy_timeout: Duration, daemon: bool) -> Result<Store, StoreError> {
        let open_err = |e| StoreError::Open { path: path.into(), source: e };
        conn.busy_timeout(busy_timeout).map_err(open_err)?;
        // Only takes effect on a new, empty file: lets retention give space back.
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).map_err(|e| corrupt_or_open(path, e))?;
        if pages == 0 && daemon {
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;").map_err(open_err)?;
        }
        let mode: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(|e| corrupt_or_open(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open {
                path: path.into(),
                source: rusqlite::Error::InvalidParameterName(format!("journal_mode is {mode}, WAL could not be set")),
            });
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;").map_err(open_err)?;
        if daemon {
            // The daemon checkpoints itself; the CLI should not.
            conn.execute_batch("PRAGMA wal_autocheckpoint = 1000;").map_err(open_err)?;
        }
        let mut store =
            Store { conn: Some(Arc::new(Mutex::new(conn))), path: path.into(), last_version: Arc::default(), pg: None };
        store.migrate()?;
        Ok(store)
    }

    /// Applies the migrations this file lacks. Each step reads `user_version` inside an
    /// immediate (write-locked) transaction, so a CLI command and the daemon opening the
    /// same new file at once never both apply the same migration. A migration may rebuild a
    /// table (drop and rename), which must not cascade: foreign keys are off while
    /// migrations run, and checked before each one commits.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let mut conn = self.sqlite::<fn()>()?.lock().expect("store mutex poisoned");
        if conn.query_row("PRAGMA user_version", [], |r| r.get::<_, usize>(0))? == MIGRATIONS.len() {
            return Ok(());
        }
        conn.execute_batch("PRAGMA foreign_keys = OFF;")?;
        let result = apply_migrations(&mut conn, &self.path);
        conn.execute_batch("PRAGMA foreign_keys = ON;")?;
        result
    }

    /// The store file (with PostgreSQL: its URL without the password).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The SQLite connection, or [`StoreError::NotAvailable`] naming the method the
    /// closure `F` belongs to (worked out only then: this is on every SQLite call's path).
    fn sqlite<F>(&self) -> Result<&Arc<Mutex<Connection>>, StoreError> {
        self.conn.as_ref().ok_or_else(|| StoreError::NotAvailable(caller::<F>()))
    }

    /// Runs `f` on the connection in a blocking thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.sqlite::<F>()?.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().expect("store mutex poisoned");
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Like [`Store::run`], for delivery bookkeeping (claims, attempt records, the
    /// heartbeat): committed with `synchronous=NORMAL`, which in WAL mode survives a crash
    /// of the process but not of the machine. Losing such a commit to a power cut can only
    /// make a delivery run again (at-least-once, same `webhook-id`); events themselves are
    /// always committed with `synchronous=FULL`, and a FULL commit also syncs every
    /// NORMAL commit before it.
    pub async fn run_bookkeeping<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.sqlite::<F>()?;
        self.run(|conn| {
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            let result = f(conn);
            conn.pragma_update(None, "synchronous", "FULL")?;
            result
        })
        .await
    }

    /// `PRAGMA data_version`: changes whenever another connection (the CLI, another
    /// process) commits to the file. Runs on the calling thread, and only if the connection
    /// is free at once; `None` if it is busy. Reading it takes and drops the file's read
    /// locks, so it is only read when the write-ahead log's size or modification time changed
    /// since the last call (every commit writes to it; a commit that rewrites the log at
    /// the same size within the file system's timestamp tick is seen at the next change,
    /// at the latest with the daemon's own 10 s heartbeat).
    pub fn data_version(&self) -> Option<i64> {
        let conn = self.conn.as_ref()?;
        let wal = std::fs::metadata(self.wal_path()).ok().map(|m| (m.len(), m.modified().ok()));
        let mut last = self.last_version.lock().expect("store mutex poisoned");
        if let (Some(wal), Some((seen, version))) = (wal, *last) {
            if wal == seen {
                return Some(version);
            }
        }
        let conn = conn.try_lock().ok()?;
        let version = conn.prepare_cached("PRAGMA data_version").and_then(|mut s| s.query_row([], |r| r.get(0)));
        let version = version.ok()?;
        *last = wal.map(|wal| (wal, version));
        Some(version)
    }

    /// The write-ahead log beside the file (`events.db` → `events.db-wal`).
    fn wal_path(&self) -> PathBuf {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        wal.into()
    }

    /// Runs `f` on the connection in the calling thread (for the CLI).
    pub fn run_sync<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, StoreError>,
    {
        let mut conn = self.sqlite::<F>()?.lock().expect("store mutex poisoned");
        f(&mut conn)
    }
}

/// The store method a closure passed to [`Store::run`] or [`Store::run_sync`] belongs to,
/// from its type name (`vod_eventd::store::events::<impl ...>::list_events::{{closure}}`),
/// for [`StoreError::NotAvailable`].
fn caller<F>() -> String {
    let name = std::any::type_name::<F>();
    let head = name.split("::{{closure}}").next().unwrap_or(name);
    let method = head.rsplit("::").next().unwrap_or(head);
    format!("`{method}`")
}

/// The migration loop of [`Store::migrate`], run with foreign keys off.
fn apply_migrations(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    loop {
        let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::TooNew { path: path.into(), found: version, known: MIGRATIONS.len() });
        }
        if version == MIGRATIONS.len() {
            return Ok(());
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if tx.query_row("PRAGMA user_version", [], |r| r.get::<_, usize>(0))? == version {
            tx.execute_batch(MIGRATIONS[version])?;
            let broken: Option<String> = tx.query_row("PRAGMA foreign_key_check", [], |r| r.get(0)).optional()?;
            if let Some(table) = broken {
                return Err(StoreError::Corrupt {
                    path: path.into(),
                    detail: format!("migration {} left dangling references in {table}", version + 1),
                });
            }
            tx.pragma_update(None, "user_version", version + 1)?;
            tx.commit()?;
        }
    }
}

/// "file is not a database" and friends mean a damaged file, not a path problem.
fn corrupt_or_open(path: &Path, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt { path: path.into(), detail: e.to_string() }
        }
        _ => StoreError::Open { path: path.into(), source: e },
    }
}

/// Creates the file with mode 0600 if it does not exist, so events and keys are never
/// readable by other users, whatever the umask.
fn create_private(path: &Path) -> Result<(), rusqlite::Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let io_err = |e: std::io::Error| {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN), Some(e.to_string()))
    };
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(e)),
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn open_sets_wal_full_and_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        let store = Store::open(&path, Duration::from_secs(1)).unwrap();
        let (mode, sync): (String, i64) = store
            .run_sync(|c| {
                Ok(c.query_row("SELECT * FROM pragma_journal_mode, pragma_synchronous", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?)
            })
            .unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        drop(store);
        // Reopening is idempotent.
        Store::open(&path, Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn a_damaged_file_is_refused_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = Store::open(&path, Duration::from_secs(1)).err().unwrap();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("has confirmed nothing"));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(Store::open(&path, Duration::from_secs(1)), Err(StoreError::TooNew { found: 99, .. })));
    }

    #[test]
    fn cli_open_needs_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open_existing(&dir.path().join("none.db"), Duration::from_secs(1)).err().unwrap();
        assert!(err.to_string().contains("no store at"));
    }
}
