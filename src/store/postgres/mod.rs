//! The PostgreSQL store: one store shared by several daemons (`store.url`). Owns the
//! connection pool (tokio-postgres behind deadpool, bounded in size and in every wait),
//! TLS (rustls, `sslmode` as libpq spells it), the versioned schema migrations (each in a
//! transaction under `pg_advisory_xact_lock`, so daemons starting together never apply
//! one twice), and the singleton locks (`pg_try_advisory_lock` on a dedicated session, so
//! a lock moves to another host when its holder dies). The queries live in `ingest`,
//! `outbox` and `state`; [`super::Store`] dispatches to them at its public methods.
//!
//! A lost connection is a store error like a full disk: the callers back off and retry,
//! and the pool opens new connections once PostgreSQL answers again.

mod activity;
mod alerts;
mod deliveries;
mod events;
mod handlers;
mod history;
mod ingest;
mod inspect;
mod keys;
mod listen;
mod maintenance;
mod outbox;
mod ranges;
mod state;
mod tls;

use std::str::FromStr as _;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::ExposeSecret as _;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::{Singleton, StoreError};
use crate::config::{split_postgres_url, PgTls, StoreConfig};

/// Schema migrations, applied in order; `schema_migrations` records each version applied.
const MIGRATIONS: &[&str] =
    &[include_str!("migrations/0001_schema.sql"), include_str!("migrations/0002_fewer_delivery_indexes.sql")];

/// The advisory lock (transaction-level) every migration step takes.
const MIGRATION_LOCK: i64 = 0x766f_645f_6d69_6772; // "vod_migr"

/// The pause before reconnecting to PostgreSQL after `attempt` failed tries in a row:
/// 200 ms doubling to 5 s (connecting at start, the first query after it, the listening
/// session).
pub(crate) fn reconnect_delay(attempt: u32) -> Duration {
    crate::backoff::exponential(attempt, Duration::from_millis(200), Duration::from_secs(5))
}

/// How long a starting daemon waits for its node name to be released before refusing.
const NODE_NAME_WAIT: Duration = Duration::from_secs(15);
/// How often it asks meanwhile.
const NODE_NAME_RETRY: Duration = Duration::from_millis(250);
/// The server-side TCP keepalives of the session that holds the node name (idle seconds,
/// seconds between probes, probes): a host that dies without closing its connection (power
/// loss, a cut network) loses the name about 11 s later, within [`NODE_NAME_WAIT`], instead
/// of after the kernel's default of over two hours. Ignored on a Unix socket (a local server
/// sees a dead client's socket closed at once).
const NODE_KEEPALIVES: &str =
    "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3";

/// The advisory lock of a node name (see [`PgStore::hold_node_name`]).
fn node_key(node: &str) -> i64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("vod-eventd node {node}"));
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The advisory lock of a singleton task.
fn lock_key(what: Singleton) -> i64 {
    0x766f_645f_0000_0000
        + match what {
            Singleton::Retention => 1,
            Singleton::Status => 2,
            Singleton::Alerts => 3,
        }
}

/// The PostgreSQL backend of [`super::Store`].
pub struct PgStore {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// `node.name`: the first part of [`PgStore::instance`].
    node: String,
    /// This process's name for its claims (`deliveries.claimed_by`): `NODE/PID/RANDOM`.
    instance: String,
    /// The session holding the singleton locks, and the locks it holds.
    pub(super) leader: Mutex<(Option<tokio_postgres::Client>, Vec<Singleton>)>,
    /// The URL without its password, for messages.
    shown: String,
    /// The session holding this daemon's node-name lock (see [`PgStore::hold_node_name`]).
    node_lock: Mutex<Option<tokio_postgres::Client>>,
    /// `store.max_size_mb` in bytes (0: no cap); see [`PgStore::check_room`].
    max_bytes: std::sync::atomic::AtomicU64,
    /// The last size read for the cap, and when.
    last_size: Mutex<Option<(std::time::Instant, u64)>>,
    /// How long (ms) after the last sweep the earliest lease it left running ends; -1: none.
    lease_ends_in: std::sync::atomic::AtomicI64,
    /// What other processes announced ([`listen`]), once something subscribed.
    notices: std::sync::OnceLock<crate::store::notices::Notices>,
    /// The runtime a synchronous caller's queries run on (the CLI's store only; see
    /// [`PgStore::block`]).
    runtime: Option<tokio::runtime::Runtime>,
}

/// Checks a `store.url`; the message names what is wrong and never the password.
pub fn parse_url(url: &str) -> Result<(), String> {
    split_url(url).map(drop)
}

/// The URL as it may be shown: without its password.
pub fn display_url(url: &str) -> String {
    crate::redact::connection_url(url)
}

/// The tokio-postgres config of `url` (see [`split_postgres_url`]), with the TLS mode and
/// root certificate file.
fn split_url(url: &str) -> Result<(tokio_postgres::Config, PgTls, Option<String>), String> {
    let (rest, mode, root) = split_postgres_url(url)?;
    let config = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| format!("cannot be read: {e}; write postgresql://USER@HOST:PORT/DATABASE?sslmode=require"))?;
    if config.get_dbname().is_none() {
        return Err("names no database; write postgresql://USER@HOST:PORT/DATABASE".into());
    }
    Ok((config, mode, root))
}

/// A PostgreSQL error as a store error, with the server's message when there is one.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    };
    // No server answer (refused, closed, timed out), or the server stopping, starting or full.
    let transient = e.as_db_error().is_none_or(|db| matches!(&db.code().code()[..2], "08" | "57" | "53"));
    if transient {
        StoreError::PostgresDown(detail)
    } else {
        StoreError::Postgres(detail)
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        pg_err(e)
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => pg_err(e),
            deadpool_postgres::PoolError::Timeout(_) => {
                StoreError::PostgresDown("no connection to PostgreSQL within store.connect_timeout".into())
            }
            other => StoreError::Postgres(other.to_string()),
        }
    }
}

impl Drop for PgStore {
    /// The CLI's runtime may be dropped from inside another runtime (`status` is async):
    /// shut it down without waiting there.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl PgStore {
    /// Connects (at most `store.pool_size` connections, each wait bounded by
    /// `store.connect_timeout`), and applies the migrations the database lacks. With
    /// `wait` (the daemon), an unreachable server is waited for (one WARN, then retries
    /// every few seconds): nothing has been pulled yet, so nothing is at risk meanwhile.
    pub async fn connect(config: &StoreConfig, node: &str, wait: bool) -> Result<PgStore, StoreError> {
        let url = config.postgres_url().expect("store.url is set");
        let shown = display_url(url);
        let (mut pg, mode, root) =
            split_url(url).map_err(|e| StoreError::Postgres(format!("store.url {shown} {e}")))?;
        if pg.get_password().is_none() {
            if let Some(password) = config.password().map_err(StoreError::Postgres)? {
                pg.password(password.expose_secret());
            }
        }
        pg.ssl_mode(tls::ssl_mode(mode));
        pg.connect_timeout(config.connect_timeout);
        pg.keepalives_idle(Duration::from_secs(30));
        // Bounded on the server too: no statement runs, and no transaction a lost client
        // left open holds its locks, for longer than this.
        let bounds = "-c statement_timeout=30s -c idle_in_transaction_session_timeout=60s";
        let options = match pg.get_options() {
            Some(own) if !own.is_empty() => format!("{own} {bounds}"),
            _ => bounds.to_string(),
        };
        pg.options(&options);
        pg.application_name("vod-eventd");
        let tls = tls::connector(mode, root.as_deref()).map_err(StoreError::Postgres)?;
        let manager =
            Manager::from_config(pg.clone(), tls.clone(), ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Postgres(e.to_string()))?;
        let instance = format!("{node}/{}/{:08x}", std::process::id(), rand::random::<u32>());
        let store = PgStore {
            pool,
            config: pg,
            tls,
            node: node.to_string(),
            instance,
            leader: Mutex::new((None, Vec::new())),
            shown,
            node_lock: Mutex::new(None),
            max_bytes: Default::default(),
            last_size: Mutex::new(None),
            lease_ends_in: std::sync::atomic::AtomicI64::new(-1),
            notices: std::sync::OnceLock::new(),
            runtime: None,
        };
        let mut down = 0;
        let mut waited = false;
        // Set when the name is first found taken (after any wait for the server itself).
        let mut name_deadline: Option<tokio::time::Instant> = None;
        loop {
            let ready = match store.migrate().await {
                // The daemon (`wait`) holds its node name for as long as it runs.
                Ok(()) if wait => store.hold_node_name().await,
                other => other,
            };
            match ready {
                Ok(()) => {
                    if waited {
                        info!(store = %store.shown, "PostgreSQL answers; starting.");
                    }
                    if name_deadline.is_some() {
                        info!(node = %node, "node.name is released; starting.");
                    }
                    return Ok(store);
                }
                // The holder may be a daemon of this name that has just died: its session
                // lasts until its server process notices the closed socket (at once, unless
                // it was busy), or until [`NODE_KEEPALIVES`] end a dead host's session.
                Err(e @ StoreError::NodeNameTaken { .. }) => {
                    let now = tokio::time::Instant::now();
                    if name_deadline.is_none() {
                        warn!(error = %e, "Waiting up to {NODE_NAME_WAIT:?} for node.name `{node}` to be released: a daemon of this name that has just stopped holds it until PostgreSQL ends its session.");
                    }
                    if now >= *name_deadline.get_or_insert(now + NODE_NAME_WAIT) {
                        return Err(e);
                    }
                    tokio::time::sleep(NODE_NAME_RETRY).await;
                }
                Err(StoreError::PostgresDown(detail)) if wait => {
                    if !waited {
                        warn!(store = %store.shown, error = %detail, "Cannot reach PostgreSQL (store.url); waiting for it before pulling. Events stay at Tencent meanwhile.");
                        waited = true;
                    }
                    tokio::time::sleep(reconnect_delay(down)).await;
                    down += 1;
                }
                Err(StoreError::Postgres(detail)) => {
                    return Err(StoreError::Postgres(format!("{}: {detail}", store.shown)))
                }
                Err(StoreError::PostgresDown(detail)) => {
                    return Err(StoreError::PostgresDown(format!("{}: {detail}", store.shown)))
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Connects for a synchronous caller (the CLI): on a runtime of the store's own, with
    /// one worker thread that keeps the connections going between calls.
    pub fn connect_blocking(config: &StoreConfig, node: &str) -> Result<PgStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let connected =
            std::thread::scope(|s| s.spawn(|| runtime.block_on(PgStore::connect(config, node, false))).join())
                .map_err(|_| StoreError::Task("connecting to PostgreSQL panicked".into()))
                .and_then(|r| r);
        match connected {
            Ok(mut store) => {
                store.runtime = Some(runtime);
                Ok(store)
            }
            Err(e) => {
                // The caller may be inside another runtime (`status`): do not wait here.
                runtime.shutdown_background();
                Err(e)
            }
        }
    }

    /// Subscribes to other processes' notices, listening from the first call on (on a
    /// session of its own, see [`listen`]; must be called on a runtime).
    fn listen(&self) -> crate::store::notices::Notices {
        self.notices
            .get_or_init(|| {
                let (tx, rx) = tokio::sync::watch::channel(Default::default());
                tokio::spawn(listen::listen(self.config.clone(), self.tls.clone(), self.instance.clone(), tx));
                rx
            })
            .clone()
    }

    /// Announces `topic` to the other processes when `tx` commits (see [`listen`]).
    async fn notify(&self, tx: &deadpool_postgres::Transaction<'_>, topic: listen::Topic) -> Result<(), StoreError> {
        listen::notify(tx, topic, &self.instance).await
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        loop {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .await?;
            let version: i64 =
                tx.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await?.get(0);
            let known = MIGRATIONS.len();
            if version as usize > known {
                return Err(StoreError::TooNew { path: self.shown.clone().into(), found: version as usize, known });
            }
            if version as usize == known {
                tx.commit().await?;
                return Ok(());
            }
            tx.batch_execute(MIGRATIONS[version as usize]).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[&(version + 1), &crate::store::now_ms()],
            )
            .await?;
            tx.commit().await?;
        }
    }

    /// Takes the session-level advisory lock on this daemon's `node.name`, on a session of
    /// its own, or keeps it: two daemons of one name would take each other's claims for
    /// their own (a restarted one requeues the claims of its name). A daemon that dies loses
    /// the lock with its session, so its successor starts at once. Taken at start (refusing
    /// with [`StoreError::NodeNameTaken`]) and again whenever its session was lost.
    pub(crate) async fn hold_node_name(&self) -> Result<(), StoreError> {
        let mut held = self.node_lock.lock().await;
        if held.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client.batch_execute(NODE_KEEPALIVES).await?;
        let got: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&node_key(&self.node)]).await?.get(0);
        if !got {
            let beat: Option<String> = client
                .query_opt("SELECT value FROM daemon_state WHERE key = $1", &[&format!("host.{}", self.node)])
                .await?
                .map(|r| r.get(0));
            let heartbeat = beat
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                .and_then(|b| b["heartbeat_ms"].as_i64())
                .map_or("no heartbeat yet".to_string(), |ms| {
                    format!("last heartbeat {} s ago", (super::now_ms() - ms) / 1000)
                });
            return Err(StoreError::NodeNameTaken { node: self.node.clone(), heartbeat });
        }
        *held = Some(client);
        Ok(())
    }

    /// Whether this process runs `what` now: takes (or keeps) its session-level advisory
    /// lock on a dedicated connection. A host that dies (or loses that connection) loses
    /// the lock, and another host's next call takes it.
    async fn take_lead(&self, what: Singleton) -> bool {
        // A daemon whose node-name session was lost takes its name again first.
        let lost = self.node_lock.lock().await.as_ref().is_some_and(|c| c.is_closed());
        if lost {
            match self.hold_node_name().await {
                Err(e @ StoreError::NodeNameTaken { .. }) => {
                    warn!(error = %e, "This daemon's node name was taken while its session was lost.")
                }
                Err(e) => debug!(error = %e, "Cannot take this daemon's node name again yet."),
                Ok(()) => {}
            }
        }
        let mut guard = self.leader.lock().await;
        let (client, held) = &mut *guard;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            held.clear();
            *client = match self.config.connect(self.tls.clone()).await {
                Ok((c, connection)) => {
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    Some(c)
                }
                Err(e) => {
                    debug!(error = %pg_err(e), "Cannot reach PostgreSQL to take a singleton lock; this host runs no singleton task until it can.");
                    return false;
                }
            };
        }
        let c = client.as_ref().expect("connected above");
        let result = if held.contains(&what) {
            c.query_one("SELECT true", &[]).await
        } else {
            c.query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key(what)]).await
        };
        match result.map(|row| row.get::<_, bool>(0)) {
            Ok(true) => {
                if !held.contains(&what) {
                    held.push(what);
                }
                true
            }
            Ok(false) => false,
            Err(_) => {
                *client = None;
                held.clear();
                false
            }
        }
    }

    /// Bytes the daemon's own tables take (with their indexes and TOAST), or 0 if it
    /// cannot be read now. Other data in the database is not counted.
    pub async fn size(&self) -> u64 {
        let Ok(client) = self.client().await else { return 0 };
        match client.query_one(OWN_SIZE, &[]).await {
            Ok(row) => row.get::<_, i64>(0).max(0) as u64,
            Err(_) => 0,
        }
    }

    /// Refuses new events once the daemon's tables reach `store.max_size_mb` (0: no cap).
    /// PostgreSQL has no cap of its own that a writer could meet, so the size is read
    /// before an ingest, at most once per [`SIZE_EVERY`]; confirmations and deliveries
    /// are still written, and retention makes room.
    pub(crate) async fn check_room(&self) -> Result<(), StoreError> {
        let max = self.max_bytes.load(std::sync::atomic::Ordering::Relaxed);
        if max == 0 {
            return Ok(());
        }
        let mut last = self.last_size.lock().await;
        let fresh = last.is_some_and(|(at, _)| at.elapsed() < SIZE_EVERY);
        if !fresh {
            let client = self.client().await?;
            let size = client.query_one(OWN_SIZE, &[]).await?.get::<_, i64>(0).max(0) as u64;
            *last = Some((std::time::Instant::now(), size));
        }
        let size = last.map_or(0, |(_, size)| size);
        if size >= max {
            return Err(StoreError::Full(format!(
                "the PostgreSQL store's tables take {} MiB, store.max_size_mb is {}",
                size / 1_048_576,
                max / 1_048_576
            )));
        }
        Ok(())
    }

    /// The consistency check of `store check`: the schema version, then rows that break
    /// the outbox's rules (deliveries without their event, running ones without a lease).
    pub(crate) async fn check(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let version: i64 =
            client.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await?.get(0);
        let mut problems = Vec::new();
        if version as usize != MIGRATIONS.len() {
            problems.push(format!("schema version {version}, this vod-eventd knows {}", MIGRATIONS.len()));
        }
        for (sql, what) in CONSISTENCY {
            let n: i64 = client.query_one(*sql, &[]).await?.get(0);
            if n > 0 {
                problems.push(format!("{n} {what}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Inconsistent { store: self.shown.clone(), detail: problems.join("; ") })
        }
    }
}

/// How long a size read by [`PgStore::check_room`] is used.
const SIZE_EVERY: Duration = Duration::from_secs(1);

/// The bytes of the daemon's tables, their indexes and TOAST.
const OWN_SIZE: &str = "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
     WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace
       AND c.relname IN ('events', 'event_files', 'deliveries', 'attempts', 'drm_keys', 'daemon_state',
                         'range_jobs', 'alert_log', 'handler_state', 'schema_migrations')";

/// Row checks of [`PgStore::check`]: a count of rows that should not exist, and what they are.
const CONSISTENCY: &[(&str, &str)] = &[
    (
        "SELECT count(*) FROM deliveries d WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id)",
        "deliveries whose event is gone",
    ),
    (
        "SELECT count(*) FROM deliveries WHERE state = 'running' AND lease_until IS NULL",
        "running deliveries without a lease",
    ),
    (
        "SELECT count(*) FROM attempts a WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = a.delivery_id)",
        "attempts whose delivery is gone",
    ),
    (
        "SELECT count(*) FROM deliveries WHERE state NOT IN ('pending', 'running', 'done', 'dead')",
        "deliveries in an unknown state",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_shown_without_the_password() {
        assert!(parse_url("postgresql://vod@db.example:5432/vod?sslmode=verify-full").is_ok());
        assert!(parse_url("postgres://vod:pw@db/vod").is_ok());
        let e = parse_url("mysql://vod@db/vod").unwrap_err();
        assert!(e.contains("scheme `mysql`"), "{e}");
        let e = parse_url("postgresql://vod@db/vod?sslmode=verify").unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
        assert!(parse_url("postgresql://vod@db:5432").unwrap_err().contains("no database"));
        assert_eq!(
            display_url("postgresql://vod:s3cret@db:5432/vod?sslmode=require"),
            "postgresql://vod@db:5432/vod?sslmode=require"
        );
    }
}
