//! Store trouble, made to happen on demand with all three handler kinds (webhook, shell
//! hook, DRM key fetcher) configured: a size cap the store reaches (SQLite); on SQLite, a
//! write lock held by another connection so that commits fail (short busy timeout) or
//! stall (long one); on PostgreSQL, the server stopped under the daemon (every connection
//! lost, commits fail) or a table lock held by another session (commits stall).
//! Each checks that no handle of an uncommitted event is confirmed, that the daemon does
//! not spin or flood its log meanwhile, and that everything resumes by itself. Also: a
//! delivery stranded in `running` comes back without a restart (on both stores).

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::receiver::Receiver;
use crate::support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const FAST_RETRIES: &str = "[dispatch]\nretry_schedule = [\"10ms\"]\npoll_interval = \"100ms\"\n";

/// Every event to a webhook and a shell hook (which records `VOD_EVENT_ID` in `out`),
/// task-flow events also to the DRM key fetcher.
fn three_handlers(receiver: &Receiver, out: &Path) -> String {
    let hook = out.join("hook.sh");
    std::fs::write(&hook, "#!/bin/sh\ncat > \"$1/$VOD_EVENT_ID.json\"\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\", \"internal\"]\n\
         [[routes]]\nevents = [\"ProcedureStateChanged\"]\nhandlers = [\"keys\"]\n\
         [handlers.internal]\ntype = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
         [handlers.hook]\ntype = \"shell\"\ncommand = [\"{}\", \"{}\"]\n\
         [handlers.keys]\ntype = \"drm\"\n{FAST_RETRIES}",
        receiver.url(),
        hook.display(),
        out.display()
    )
}

/// `n` upload events plus a few task-flow events carrying EDKs (few: DescribeDrmDataKey
/// allows 100 calls a minute).
fn enqueue_mix(emu: &vod_emulator::Emulator, n: usize) -> Vec<String> {
    let mut contents = emu.enqueue_generated_type("NewFileUpload", n).unwrap();
    contents.extend(emu.enqueue_generated_type("ProcedureStateChanged", 8).unwrap());
    contents
}

/// Starts a daemon whose `[store]` section has `store_extra` from its first start on.
async fn start_with_store(endpoint: &str, store_extra: &str, extra: &str, backend: Backend) -> TestDaemon {
    let mut daemon = TestDaemon::start_on(endpoint, extra, backend).await;
    daemon.kill9().await;
    daemon.rewrite_config(endpoint, store_extra, extra);
    daemon.spawn();
    daemon
}

fn confirmed_keys(emu: &vod_emulator::Emulator) -> HashSet<String> {
    emu.confirmed().iter().map(|c| key_of(c)).collect()
}

/// Every confirmed handle belongs to a committed event.
fn assert_confirmed_are_stored(emu: &vod_emulator::Emulator, daemon: &TestDaemon) {
    let stored = stored_keys(&daemon.store().unwrap());
    for key in confirmed_keys(emu) {
        assert!(stored.contains_key(&key), "a handle was confirmed for an event that is not committed");
    }
}

fn lines_with(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

fn all_done(daemon: &TestDaemon, deliveries: i64) -> bool {
    daemon.store().is_some_and(|s| {
        let states = delivery_states(&s);
        states.get("done") == Some(&deliveries) && states.values().sum::<i64>() == deliveries
    })
}

/// Deliveries routed for `contents`: two each, plus one per task-flow event.
fn routed(contents: &[String]) -> i64 {
    contents.iter().map(|c| if c.contains("ProcedureStateChanged") { 3 } else { 2 }).sum()
}

both_stores!(a_full_store_with_failing_deliveries_due_neither_spins_nor_floods_and_resumes);

/// On PostgreSQL `store.max_size_mb` caps the daemon's own tables.
async fn a_full_store_with_failing_deliveries_due_neither_spins_nor_floods_and_resumes(backend: Backend) {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    receiver.set(|b| b.status = 503);
    let out = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = format!(
        "[pull]\nbackoff_max = \"300ms\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n{}",
        three_handlers(&receiver, out.path())
    );
    let mut daemon = start_with_store(&emu.endpoint(), "max_size_mb = 1", &extra, backend).await;
    let contents = enqueue_mix(&emu, 2500);
    eventually(Duration::from_secs(60), "the store fills up", || {
        daemon.log().contains("Could not store pulled events")
    })
    .await;
    // A window in which the capped backoff (pull.backoff_max) retried at least ten times.
    let window_start = daemon.log().len();
    let before = store_failures(port);
    eventually(Duration::from_secs(30), "ten more refused stores", || store_failures(port) >= before + 10).await;
    let window = daemon.log()[window_start..].to_string();
    let errors: Vec<&str> = window.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.len() <= 2, "{} ERROR lines during ten retries:\n{}", errors.len(), errors.join("\n"));
    let outage_lines = lines_with(&daemon.log(), "Could not store pulled events");
    assert!((1..=3).contains(&outage_lines), "{outage_lines} ERROR lines for ten refused stores: one per outage");
    let (status, body) = get(&format!("http://127.0.0.1:{port}/healthz")).await;
    assert_eq!(status, 503);
    assert!(body.contains("store refuses writes"), "healthz: {body}");
    assert_confirmed_are_stored(&emu, &daemon);
    assert!(emu.stats().queue.outstanding > 0);

    receiver.set(|b| b.status = 200);
    daemon.rewrite_config(&emu.endpoint(), "max_size_mb = 512", &extra);
    daemon.signal("HUP");
    eventually(Duration::from_secs(120), "recovers, drains and delivers", || {
        emu.stats().queue.outstanding == 0 && all_done(&daemon, routed(&contents))
    })
    .await;
    assert_eq!(stored_keys(&daemon.store().unwrap()).len(), contents.len());
    assert_confirmed_are_stored(&emu, &daemon);
    assert!(daemon.log().contains("The store accepts writes again"), "recovery is logged");
    assert_eq!(get(&format!("http://127.0.0.1:{port}/healthz")).await.0, 200, "healthy again");
    assert!(daemon.running());
}

/// `vod_eventd_store_failures_total` from the daemon's /metrics (0 while it cannot be read).
fn store_failures(port: u16) -> u64 {
    use std::io::{Read as _, Write as _};
    let read = || -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    };
    let text = read().unwrap_or_default();
    let line = text.lines().find(|l| l.starts_with("vod_eventd_store_failures_total "));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// What keeps the daemon's commits from succeeding while a second batch arrives.
#[derive(Clone, Copy, PartialEq)]
enum Trouble {
    /// SQLite's write lock held by another connection, with `busy_timeout` short (commits fail).
    SqliteLockRefused,
    /// The same with `busy_timeout` long (commits stall).
    SqliteLockStalled,
    /// The PostgreSQL server stopped under the daemon: every connection lost, commits fail.
    PostgresStopped,
    /// An EXCLUSIVE lock on `events` held by another PostgreSQL session (reads pass, commits stall).
    PostgresLocked,
}

/// Holds the trouble while a second batch arrives: nothing of it is confirmed, and all of it
/// is stored and delivered once the trouble ends.
async fn held_write_lock(trouble: Trouble) {
    let refused = matches!(trouble, Trouble::SqliteLockRefused | Trouble::PostgresStopped);
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    let out = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = format!(
        "[confirm]\nmax_delay = \"100ms\"\n[pull]\nbackoff_max = \"300ms\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n{}",
        three_handlers(&receiver, out.path())
    );
    // The PostgreSQL server that is stopped is a cluster of this test's own.
    let cluster = (trouble == Trouble::PostgresStopped).then(crate::pg::Cluster::start);
    let daemon = match trouble {
        Trouble::SqliteLockRefused | Trouble::SqliteLockStalled => {
            let busy_timeout = if refused { "10ms" } else { "60s" };
            start_with_store(&emu.endpoint(), &format!("busy_timeout = \"{busy_timeout}\""), &extra, Backend::Sqlite)
                .await
        }
        Trouble::PostgresStopped => {
            let url = crate::pg::database_in(cluster.as_ref().unwrap()).await;
            crate::pg::pg_daemon_at(&emu.endpoint(), &url, &extra).await
        }
        Trouble::PostgresLocked => TestDaemon::start_on(&emu.endpoint(), &extra, Backend::Postgres).await,
    };
    let first = enqueue_mix(&emu, 40);
    eventually(Duration::from_secs(60), "the first batch delivered everywhere", || {
        emu.stats().queue.outstanding == 0 && all_done(&daemon, routed(&first))
    })
    .await;

    let mut sqlite_blocker = None;
    let mut pg_blocker = None;
    match trouble {
        Trouble::SqliteLockRefused | Trouble::SqliteLockStalled => {
            let blocker = rusqlite::Connection::open(&daemon.db_path).unwrap();
            blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
            sqlite_blocker = Some(blocker);
        }
        Trouble::PostgresStopped => cluster.as_ref().unwrap().pg_ctl("stop"),
        Trouble::PostgresLocked => {
            let blocker = crate::pg::connect(daemon.pg_url.as_ref().unwrap()).await;
            blocker.batch_execute("BEGIN; LOCK TABLE events IN EXCLUSIVE MODE").await.unwrap();
            pg_blocker = Some(blocker);
        }
    }
    let confirmed_before = emu.stats().queue.confirmed;
    let delivered_before = emu.stats().queue.delivered;
    let second = enqueue_mix(&emu, 40);
    eventually(Duration::from_secs(30), "the second batch pulled", || emu.stats().queue.delivered > delivered_before)
        .await;
    if refused {
        let before = store_failures(port);
        eventually(Duration::from_secs(30), "commits refused", || store_failures(port) >= before + 3).await;
        assert!(daemon.log().contains("Could not store pulled events"), "the outage is logged");
    } else {
        // The commit waits on the lock; hold it far past confirm.max_delay.
        let until = std::time::Instant::now() + Duration::from_secs(2);
        eventually(Duration::from_secs(5), "the commit stalls", || std::time::Instant::now() >= until).await;
    }
    let second_keys: HashSet<String> = second.iter().map(|c| key_of(c)).collect();
    assert!(confirmed_keys(&emu).is_disjoint(&second_keys), "a handle of an uncommitted event was confirmed");
    assert_eq!(emu.stats().queue.confirmed, confirmed_before, "nothing confirmed while no commit succeeds");
    if trouble != Trouble::PostgresStopped {
        assert_confirmed_are_stored(&emu, &daemon);
    }
    if let Some(blocker) = sqlite_blocker {
        blocker.execute_batch("COMMIT").unwrap();
    }
    if let Some(blocker) = pg_blocker {
        blocker.batch_execute("COMMIT").await.unwrap();
    }
    if let Some(cluster) = &cluster {
        cluster.pg_ctl("start");
    }

    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    eventually(Duration::from_secs(120), "everything resumes", || {
        emu.stats().queue.outstanding == 0 && all_done(&daemon, routed(&all))
    })
    .await;
    assert_eq!(stored_keys(&daemon.store().unwrap()).len(), all.len(), "every event stored once");
    assert_confirmed_are_stored(&emu, &daemon);
    let accepted: HashSet<String> = receiver.accepted().iter().map(|r| r.headers["webhook-id"].clone()).collect();
    let hooked = std::fs::read_dir(out.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".json"));
    assert_eq!(accepted.len(), all.len(), "every event reached the webhook");
    assert_eq!(hooked.count(), all.len(), "every event reached the shell hook");
}

// SQLite only: its write lock; PostgreSQL's counterparts follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_refused_by_a_held_write_lock_confirm_nothing_and_resume() {
    held_write_lock(Trouble::SqliteLockRefused).await;
}

// SQLite only: its write lock; PostgreSQL's counterparts follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_stalled_by_a_held_write_lock_confirm_nothing_and_resume() {
    held_write_lock(Trouble::SqliteLockStalled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_refused_by_a_stopped_postgresql_server_confirm_nothing_and_resume() {
    held_write_lock(Trouble::PostgresStopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_stalled_by_a_held_postgresql_table_lock_confirm_nothing_and_resume() {
    held_write_lock(Trouble::PostgresLocked).await;
}

both_stores!(a_delivery_stranded_in_running_comes_back_without_a_restart);

async fn a_delivery_stranded_in_running_comes_back_without_a_restart(backend: Backend) {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    let extra = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"internal\"]\n[handlers.internal]\ntype = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n{FAST_RETRIES}",
        receiver.url()
    );
    let mut daemon = TestDaemon::start_on(&emu.endpoint(), &extra, backend).await;
    emu.enqueue_generated(1);
    eventually(Duration::from_secs(30), "delivered", || all_done(&daemon, 1)).await;
    // As if the attempt's outcome had been lost: the row is running and its lease passed.
    let strand = "UPDATE deliveries SET state = 'running', lease_until = 1";
    match &daemon.pg_url {
        Some(url) => assert_eq!(crate::pg::connect(url).await.execute(strand, &[]).await.unwrap(), 1),
        None => assert_eq!(rusqlite::Connection::open(&daemon.db_path).unwrap().execute(strand, []).unwrap(), 1),
    }
    eventually(Duration::from_secs(30), "swept back and delivered again", || {
        receiver.accepted().len() == 2 && all_done(&daemon, 1)
    })
    .await;
    let ids: HashSet<String> = receiver.accepted().iter().map(|r| r.headers["webhook-id"].clone()).collect();
    assert_eq!(ids.len(), 1, "the same webhook-id both times");
    assert!(daemon.log().contains("lease passed"), "the sweep is logged");
    assert!(daemon.running());
}
