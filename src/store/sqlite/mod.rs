//! The SQLite backend: one file, the embedded store. Opening it sets WAL and
//! `synchronous=FULL` (a commit is on disk before it returns, so a confirm sent after it
//! can never outrun the data), a busy timeout, and applies numbered migrations through
//! `user_version`. The file is created mode 0600. The daemon's connection sits behind a std
//! mutex and is only used from `spawn_blocking`; the CLI opens its own connection, which
//! WAL allows while the daemon runs.
//!
//! Each file here implements the interface file of the same name in [`super`].

mod activity;
mod alerts;
pub(crate) mod deliveries;
pub(crate) mod events;
mod handlers;
mod inspect;
mod keys;
mod maintenance;
pub(crate) mod ranges;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::StoreError;

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

/// The write-ahead log's size once checkpointed (see `journal_size_limit` in `setup`).
pub const WAL_LIMIT: u64 = 8 * 1024 * 1024;

/// The number of migrations this build knows (the schema version of a current file).
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// A SQLite store file and the connection to it.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// The store file.
    path: PathBuf,
    /// The write-ahead log's size and modification time at the last `data_version` read,
    /// and what it returned.
    last_version: Mutex<Option<WalSeen>>,
}

type WalSeen = ((u64, Option<std::time::SystemTime>), i64);

impl SqliteStore {
    /// Opens (creating if needed) the store for the daemon, and migrates it.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<SqliteStore, StoreError> {
        create_private(path).map_err(|e| StoreError::Open { path: path.into(), source: e })?;
        let conn = Connection::open(path).map_err(|e| StoreError::Open { path: path.into(), source: e })?;
        Self::setup(conn, path, busy_timeout, true)
    }

    /// Opens an existing store for the CLI (no creation; migrations still run so an
    /// older file can be read by a newer CLI).
    pub fn open_existing(path: &Path, busy_timeout: Duration) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.into()));
        }
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|e| StoreError::Open { path: path.into(), source: e })?;
        Self::setup(conn, path, busy_timeout, false)
    }

    fn setup(
        mut conn: Connection,
        path: &Path,
        busy_timeout: Duration,
        daemon: bool,
    ) -> Result<SqliteStore, StoreError> {
        let open_err = |e| StoreError::Open { path: path.into(), source: e };
        conn.busy_timeout(busy_timeout).map_err(open_err)?;
        // Every transaction takes the write lock when it begins. A deferred one that reads
        // first and writes later fails at once with SQLITE_BUSY (no busy_timeout wait) when
        // another connection (the CLI, the daemon) committed in between; an immediate one
        // waits for the lock, then reads what is current.
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
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
        // Once a checkpoint has copied the whole log back (no reader holds an old snapshot),
        // the next writer cuts the log file down to this size: a log that grew while a long
        // reader (a backup) held a snapshot gives the space back instead of staying at its peak.
        conn.execute_batch(&format!("PRAGMA journal_size_limit = {WAL_LIMIT};")).map_err(open_err)?;
        if daemon {
            // The daemon checkpoints itself; the CLI should not.
            conn.execute_batch("PRAGMA wal_autocheckpoint = 1000;").map_err(open_err)?;
        }
        let mut store =
            SqliteStore { conn: Arc::new(Mutex::new(conn)), path: path.into(), last_version: Mutex::default() };
        store.migrate()?;
        Ok(store)
    }

    /// Applies the migrations this file lacks. Each step reads `user_version` inside an
    /// immediate (write-locked) transaction, so a CLI command and the daemon opening the
    /// same new file at once never both apply the same migration. A migration may rebuild a
    /// table (drop and rename), which must not cascade: foreign keys are off while
    /// migrations run, and checked before each one commits.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().expect("store mutex poisoned");
        if conn.query_row("PRAGMA user_version", [], |r| r.get::<_, usize>(0))? == MIGRATIONS.len() {
            return Ok(());
        }
        conn.execute_batch("PRAGMA foreign_keys = OFF;")?;
        let result = apply_migrations(&mut conn, &self.path);
        conn.execute_batch("PRAGMA foreign_keys = ON;")?;
        result
    }

    /// Runs `f` on the connection in a blocking thread.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().expect("store mutex poisoned");
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Like [`SqliteStore::run`], for delivery bookkeeping (claims, attempt records, the
    /// heartbeat): committed with `synchronous=NORMAL`, which in WAL mode survives a crash
    /// of the process but not of the machine. Losing such a commit to a power cut can only
    /// make a delivery run again (at-least-once, same `webhook-id`); events themselves are
    /// always committed with `synchronous=FULL`, and a FULL commit also syncs every
    /// NORMAL commit before it.
    pub(crate) async fn run_bookkeeping<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(|conn| {
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            let result = f(conn);
            conn.pragma_update(None, "synchronous", "FULL")?;
            result
        })
        .await
    }

    /// Runs `f` on the connection in the calling thread (for the CLI).
    pub(crate) fn run_sync<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, StoreError>,
    {
        let mut conn = self.conn.lock().expect("store mutex poisoned");
        f(&mut conn)
    }

    /// The write-ahead log beside the file (`events.db` → `events.db-wal`).
    fn wal_path(&self) -> PathBuf {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        wal.into()
    }
}

/// The migration loop of [`SqliteStore::migrate`], run with foreign keys off.
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn open_sets_wal_full_and_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        let store = SqliteStore::open(&path, Duration::from_secs(1)).unwrap();
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
        SqliteStore::open(&path, Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn a_damaged_file_is_refused_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = SqliteStore::open(&path, Duration::from_secs(1)).err().unwrap();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("has confirmed nothing"));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(SqliteStore::open(&path, Duration::from_secs(1)), Err(StoreError::TooNew { found: 99, .. })));
    }

    #[test]
    fn cli_open_needs_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = SqliteStore::open_existing(&dir.path().join("none.db"), Duration::from_secs(1)).err().unwrap();
        assert!(err.to_string().contains("no store at"));
    }

    fn upload(i: usize, pad: usize) -> crate::event::ReceivedEvent {
        let content =
            format!(r#"{{"eventType":"NewFileUpload","data":{{"fileId":"f{i}","pad":"{}"}}}}"#, "x".repeat(pad));
        crate::event::ReceivedEvent::from_content(&content, crate::config::ApiVersion::V2)
    }

    /// The CLI writing while the daemon ingests (issue 26): a transaction that reads before
    /// it writes used to fail at once with "database is locked" whenever the other
    /// connection committed in between, however long busy_timeout was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_of_another_connection_never_fail_a_transaction_that_reads_first() {
        use std::sync::atomic::Ordering;

        use crate::store::prelude::*;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        let daemon = SqliteStore::open(&path, Duration::from_secs(10)).unwrap();
        let cli = SqliteStore::open_existing(&path, Duration::from_secs(10)).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rounds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stopping, counted) = (stop.clone(), rounds.clone());
        let operator = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                cli.pause_handler("h", None).unwrap();
                cli.resume_handler("h").unwrap();
                cli.retry_dead(Some("h")).unwrap();
                counted.fetch_add(1, Ordering::Relaxed);
                // Pacing, not synchronisation: an operator's commands are separate processes
                // milliseconds apart. SQLite's lock is not fair: a loop with no gap at all
                // starves the other writer, past any busy_timeout.
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let (mut refused, mut written) = (Vec::new(), 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while written < 400 || rounds.load(Ordering::Relaxed) < 100 {
            assert!(std::time::Instant::now() < deadline, "{written} commits, {rounds:?} operator rounds in 60 s");
            if let Err(e) = daemon.insert_events(vec![(upload(written, 0), vec!["h".into()])]).await {
                refused.push(e.to_string());
            }
            written += 1;
        }
        stop.store(true, Ordering::Relaxed);
        operator.join().unwrap();
        assert!(refused.is_empty(), "{} of {written} commits refused, e.g. {:?}", refused.len(), refused.first());
    }

    /// A reader holding a snapshot (a backup) lets the write-ahead log grow; once it lets
    /// go, the log is cut back to [`WAL_LIMIT`] by the next commits instead of keeping its peak.
    #[tokio::test]
    async fn the_log_gives_its_space_back_once_a_long_reader_lets_go() {
        use crate::store::prelude::*;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        let store = SqliteStore::open(&path, Duration::from_secs(5)).unwrap();
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
        let wal = || std::fs::metadata(store.wal_path()).map(|m| m.len()).unwrap_or(0);
        let mut i = 0;
        while wal() <= 2 * WAL_LIMIT {
            store.insert_events((0..50).map(|n| (upload(i + n, 8192), vec![])).collect()).await.unwrap();
            i += 50;
        }
        reader.execute_batch("COMMIT").unwrap();
        drop(reader);
        for n in 0..3 {
            store.insert_events(vec![(upload(i + n, 0), vec![])]).await.unwrap();
        }
        assert!(wal() <= WAL_LIMIT, "the log kept {} bytes after the reader let go", wal());
    }
}
