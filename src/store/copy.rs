//! `vod-eventd store copy`: moves a history between the two backends — a SQLite file into
//! PostgreSQL when outgrowing one host, and back. The tables that make up the history are
//! copied in reference order (events with their files, deliveries, attempts, DRM keys,
//! handler pauses), keeping their ids so webhook ids and references stay valid. Each batch
//! is the rows above the destination's highest id, written in one transaction: a copy
//! killed at any moment resumes where it stopped when run again. At the end, every table's
//! rows are counted on both sides. The daemons should be stopped on the source meanwhile
//! (rows they add after a table was copied are reported as a count mismatch; running the
//! copy again copies them).

use std::fmt;
use std::path::PathBuf;

use rusqlite::types::Value as SqlValue;
use tokio_postgres::types::ToSql;

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::StoreError;
use crate::config::StoreConfig;

/// Rows per transaction.
pub const BATCH: usize = 1000;

/// One end of a copy.
pub enum End {
    /// A SQLite file (created if missing when it is the destination).
    Sqlite(SqliteStore),
    /// A PostgreSQL database.
    Postgres(Box<PgStore>),
}

impl End {
    /// Opens `spec` (a path, or a `postgresql://` URL with `password_file` for its
    /// password when the URL has none), applying the migrations it lacks.
    pub async fn open(spec: &str, password_file: Option<PathBuf>, create: bool) -> Result<End, StoreError> {
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            let config = StoreConfig { url: Some(spec.to_string().into()), password_file, ..StoreConfig::default() };
            return Ok(End::Postgres(Box::new(PgStore::connect(&config, "store-copy", false).await?)));
        }
        let path = PathBuf::from(spec);
        let busy = std::time::Duration::from_secs(5);
        Ok(End::Sqlite(if create { SqliteStore::open(&path, busy)? } else { SqliteStore::open_existing(&path, busy)? }))
    }

    /// How the end is shown (a URL without its password).
    pub fn shown(&self) -> String {
        match self {
            End::Sqlite(store) => crate::store::Maintenance::path(store).display().to_string(),
            End::Postgres(pg) => pg.shown().to_string(),
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Int,
    Text,
    Blob,
}

/// A table of the history: its columns (the same on both backends) and the integer column
/// its batches follow.
struct Table {
    name: &'static str,
    key: &'static str,
    columns: &'static [(&'static str, Kind)],
}

use Kind::{Blob, Int, Text};

const EVENTS: Table = Table {
    name: "events",
    key: "id",
    columns: &[
        ("id", Int),
        ("dedupe_key", Blob),
        ("occurrence", Int),
        ("api", Text),
        ("event_type", Text),
        ("version", Text),
        ("file_id", Text),
        ("task_id", Text),
        ("content", Text),
        ("received_at", Int),
        ("last_seen_at", Int),
        ("times_seen", Int),
        ("confirmed_at", Int),
        ("source", Text),
        ("sub_app_id", Int),
    ],
};
/// Copied with their events, in the same transaction (a batch of events takes all their files).
const EVENT_FILES: Table =
    Table { name: "event_files", key: "event_id", columns: &[("file_id", Text), ("event_id", Int), ("role", Text)] };
const DELIVERIES: Table = Table {
    name: "deliveries",
    key: "id",
    columns: &[
        ("id", Int),
        ("event_id", Int),
        ("handler", Text),
        ("webhook_id", Text),
        ("state", Text),
        ("attempts", Int),
        ("next_attempt_at", Int),
        ("created_at", Int),
        ("updated_at", Int),
        ("last_error", Text),
        ("last_status", Int),
        ("lease_until", Int),
        ("orphaned_reason", Text),
    ],
};
const ATTEMPTS: Table = Table {
    name: "attempts",
    key: "id",
    columns: &[
        ("id", Int),
        ("delivery_id", Int),
        ("attempt", Int),
        ("started_at", Int),
        ("duration_ms", Int),
        ("outcome", Text),
        ("status", Int),
        ("error", Text),
        ("excerpt", Text),
    ],
};
/// Small tables, copied whole, keeping rows the destination already has.
const DRM_KEYS: Table = Table {
    name: "drm_keys",
    key: "fetched_at",
    columns: &[
        ("edk", Text),
        ("dk", Blob),
        ("file_id", Text),
        ("key_source", Text),
        ("definition", Int),
        ("event_id", Int),
        ("fetched_at", Int),
    ],
};
const HANDLER_STATE: Table = Table {
    name: "handler_state",
    key: "paused_at",
    columns: &[("handler", Text), ("paused_at", Int), ("reason", Text), ("paused_by", Text), ("probe_at", Int)],
};

#[derive(Clone, Debug, PartialEq)]
enum V {
    Null,
    I(i64),
    T(String),
    B(Vec<u8>),
}

type Row = Vec<V>;

/// How a table's copy ended.
pub struct Counted {
    /// The table.
    pub table: &'static str,
    /// Rows copied by this run.
    pub copied: u64,
    /// Rows at the source and at the destination, counted at the end.
    pub source: i64,
    /// Rows at the destination.
    pub destination: i64,
}

impl fmt::Display for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.source == self.destination { "equal" } else { "DIFFERENT" };
        write!(
            f,
            "{:<14} {:>12} at the source, {:>12} at the destination: {verdict} ({} copied by this run)",
            self.table, self.source, self.destination, self.copied
        )
    }
}

/// Copies the history from `from` into `to`; `progress` is told each table's progress.
/// Returns each table's counts; the caller decides what a difference means.
pub async fn copy(
    from: &End,
    to: &End,
    batch: usize,
    progress: &mut dyn FnMut(&str, u64),
) -> anyhow::Result<Vec<Counted>> {
    check_same_history(from, to).await?;
    let mut copied = Vec::new();
    // Events with their files, then what refers to them.
    let mut n = 0;
    loop {
        let after = max_key(to, &EVENTS).await?;
        let events = read(from, &EVENTS, Some(after), batch).await?;
        let Some(last) = events.last().map(|r| key_of(r, 0)) else { break };
        let files = read_range(from, &EVENT_FILES, after, last).await?;
        write(to, &[(&EVENTS, events.as_slice()), (&EVENT_FILES, files.as_slice())], false).await?;
        n += events.len() as u64;
        progress(EVENTS.name, n);
    }
    copied.push((EVENTS.name, n));
    for table in [&DELIVERIES, &ATTEMPTS] {
        let mut n = 0;
        loop {
            let after = max_key(to, table).await?;
            let mut rows = read(from, table, Some(after), batch).await?;
            if rows.is_empty() {
                break;
            }
            if table.name == DELIVERIES.name {
                // An attempt cut short with its daemon: pending again, as the daemon's own
                // start would make it.
                for row in &mut rows {
                    if row[4] == V::T("running".into()) {
                        row[4] = V::T("pending".into());
                        row[11] = V::Null;
                    }
                }
            }
            write(to, &[(table, rows.as_slice())], false).await?;
            n += rows.len() as u64;
            progress(table.name, n);
        }
        copied.push((table.name, n));
    }
    for table in [&DRM_KEYS, &HANDLER_STATE] {
        let rows = read(from, table, None, usize::MAX).await?;
        for chunk in rows.chunks(batch) {
            write(to, &[(table, chunk)], true).await?;
        }
        copied.push((table.name, rows.len() as u64));
    }
    if let End::Postgres(pg) = to {
        // Ids were given explicitly: move each identity past them for the daemon's inserts.
        let client = pg.client().await?;
        for table in ["events", "deliveries", "attempts"] {
            client
                .execute(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', 'id'), GREATEST((SELECT max(id) FROM {table}), 1))"
                    ),
                    &[],
                )
                .await?;
        }
    }
    let mut counted = Vec::new();
    for (table, n) in copied {
        counted.push(Counted {
            table,
            copied: n,
            source: count(from, table).await?,
            destination: count(to, table).await?,
        });
    }
    counted.push(Counted {
        table: EVENT_FILES.name,
        copied: 0,
        source: count(from, EVENT_FILES.name).await?,
        destination: count(to, EVENT_FILES.name).await?,
    });
    Ok(counted)
}

/// Refuses a destination that holds events of another history: its newest event must be
/// the source's event with that id.
async fn check_same_history(from: &End, to: &End) -> anyhow::Result<()> {
    let last = max_key(to, &EVENTS).await?;
    if last == 0 {
        return Ok(());
    }
    let theirs = read(to, &EVENTS, Some(last - 1), 1).await?;
    let ours = read(from, &EVENTS, Some(last - 1), 1).await?;
    let same = matches!((theirs.first(), ours.first()), (Some(a), Some(b)) if a[0] == b[0] && a[1] == b[1]);
    if same {
        return Ok(());
    }
    anyhow::bail!(
        "{} already holds events that are not {}'s (its event {last} differs); copy into an empty store, or into the one an interrupted copy of this source left",
        to.shown(),
        from.shown()
    )
}

fn key_of(row: &Row, i: usize) -> i64 {
    match row[i] {
        V::I(v) => v,
        _ => 0,
    }
}

fn columns(table: &Table) -> String {
    table.columns.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
}

/// The select list reading `table` from `end`: a SQLite event's confirmation may be in
/// `event_confirmations` (migration 0013), and is copied as `events.confirmed_at`.
fn select_columns(end: &End, table: &Table) -> String {
    match end {
        End::Sqlite(_) if table.name == EVENTS.name => table
            .columns
            .iter()
            .map(|(c, _)| if *c == "confirmed_at" { super::sqlite::events::CONFIRMED_AT } else { c })
            .collect::<Vec<_>>()
            .join(", "),
        _ => columns(table),
    }
}

async fn max_key(end: &End, table: &Table) -> Result<i64, StoreError> {
    number(end, &format!("SELECT COALESCE(max({}), 0) FROM {}", table.key, table.name)).await
}

async fn count(end: &End, table: &str) -> Result<i64, StoreError> {
    number(end, &format!("SELECT count(*) FROM {table}")).await
}

/// The one integer `sql` (no parameters) returns.
async fn number(end: &End, sql: &str) -> Result<i64, StoreError> {
    match end {
        End::Sqlite(store) => store.run_sync(|c| Ok(c.query_row(sql, [], |r| r.get(0))?)),
        End::Postgres(pg) => Ok(pg.client().await?.query_one(sql, &[]).await?.get::<_, i64>(0)),
    }
}

/// Up to `limit` rows with the key above `after` (all rows when `after` is None), in key order.
async fn read(end: &End, table: &Table, after: Option<i64>, limit: usize) -> Result<Vec<Row>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let filter = if after.is_some() { format!("WHERE {} > $1", table.key) } else { "WHERE $1::BIGINT IS NULL".into() };
    let sql =
        format!("SELECT {} FROM {} {filter} ORDER BY {} LIMIT $2", select_columns(end, table), table.name, table.key);
    select(end, table, &sql, after, limit).await
}

/// Rows whose key is in `(after, last]`.
async fn read_range(end: &End, table: &Table, after: i64, last: i64) -> Result<Vec<Row>, StoreError> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {key} > $1 AND {key} <= $2 ORDER BY {key}",
        select_columns(end, table),
        table.name,
        key = table.key
    );
    select(end, table, &sql, Some(after), last).await
}

async fn select(end: &End, table: &Table, sql: &str, a: Option<i64>, b: i64) -> Result<Vec<Row>, StoreError> {
    match end {
        End::Sqlite(store) => store.run_sync(|c| {
            let sql = sql.replace("$1::BIGINT", "?1").replace("$1", "?1").replace("$2", "?2");
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params![a, b], |r| {
                (0..table.columns.len())
                    .map(|i| {
                        Ok(match r.get::<_, SqlValue>(i)? {
                            SqlValue::Null => V::Null,
                            SqlValue::Integer(v) => V::I(v),
                            SqlValue::Real(v) => V::I(v as i64),
                            SqlValue::Text(v) => V::T(v),
                            SqlValue::Blob(v) => V::B(v),
                        })
                    })
                    .collect::<rusqlite::Result<Row>>()
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        }),
        End::Postgres(pg) => {
            let client = pg.client().await?;
            let rows = client.query(sql, &[&a, &b]).await?;
            Ok(rows
                .iter()
                .map(|r| {
                    table
                        .columns
                        .iter()
                        .enumerate()
                        .map(|(i, (_, kind))| match kind {
                            Int => r.get::<_, Option<i64>>(i).map_or(V::Null, V::I),
                            Text => r.get::<_, Option<String>>(i).map_or(V::Null, V::T),
                            Blob => r.get::<_, Option<Vec<u8>>>(i).map_or(V::Null, V::B),
                        })
                        .collect()
                })
                .collect())
        }
    }
}

/// Writes each table's rows, all in one transaction. `keep` keeps rows the destination
/// already has (the small tables copied whole); otherwise every row is new.
async fn write(end: &End, tables: &[(&Table, &[Row])], keep: bool) -> Result<(), StoreError> {
    match end {
        End::Sqlite(store) => store.run_sync(|c| {
            let tx = c.transaction()?;
            for (table, rows) in tables {
                let marks = vec!["?"; table.columns.len()].join(", ");
                let verb = if keep { "INSERT OR IGNORE" } else { "INSERT" };
                let sql = format!("{verb} INTO {} ({}) VALUES ({marks})", table.name, columns(table));
                let mut stmt = tx.prepare_cached(&sql)?;
                for row in *rows {
                    stmt.execute(rusqlite::params_from_iter(row.iter().map(|v| match v {
                        V::Null => SqlValue::Null,
                        V::I(i) => SqlValue::Integer(*i),
                        V::T(t) => SqlValue::Text(t.clone()),
                        V::B(b) => SqlValue::Blob(b.clone()),
                    })))?;
                }
            }
            tx.commit()?;
            Ok(())
        }),
        End::Postgres(pg) => {
            let mut client = pg.client().await?;
            let tx = client.transaction().await?;
            for (table, rows) in tables {
                // Multi-row inserts, within PostgreSQL's 65,535 parameters per statement.
                let per = (60_000 / table.columns.len()).max(1);
                for chunk in rows.chunks(per) {
                    let (sql, params) = insert_sql(table, chunk, keep);
                    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as _).collect();
                    tx.execute(&sql, &refs).await?;
                }
            }
            tx.commit().await?;
            Ok(())
        }
    }
}

type Param = Box<dyn ToSql + Sync + Send>;

fn insert_sql(table: &Table, rows: &[Row], keep: bool) -> (String, Vec<Param>) {
    let width = table.columns.len();
    let mut params: Vec<Param> = Vec::with_capacity(rows.len() * width);
    let mut values = Vec::with_capacity(rows.len());
    for (r, row) in rows.iter().enumerate() {
        let marks: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
        values.push(format!("({})", marks.join(", ")));
        for ((_, kind), v) in table.columns.iter().zip(row) {
            params.push(match (kind, v) {
                (_, V::I(i)) => Box::new(*i),
                (_, V::T(t)) => Box::new(t.clone()),
                (_, V::B(b)) => Box::new(b.clone()),
                (Int, V::Null) => Box::new(None::<i64>),
                (Text, V::Null) => Box::new(None::<String>),
                (Blob, V::Null) => Box::new(None::<Vec<u8>>),
            });
        }
    }
    let conflict = if keep { " ON CONFLICT DO NOTHING" } else { "" };
    let sql = format!("INSERT INTO {} ({}) VALUES {}{conflict}", table.name, columns(table), values.join(", "));
    (sql, params)
}
