//! The PostgreSQL store, end to end: the real binary (one, or two sharing one database)
//! against the emulator, with a private PostgreSQL cluster started once per test process
//! (the server binaries of the highest PostgreSQL major installed under
//! `/usr/lib/postgresql/<major>/bin`, as Debian's and Ubuntu's `postgresql` package puts
//! them: 15 on Debian 12, 16 on Ubuntu 24.04, 17 on Debian 13; run as the `postgres` user
//! when the tests run as root, on a port from the OS, its socket and data in a temp dir)
//! and stopped when the process exits. Each test gets a database of its own. Without the
//! binaries the tests fail, naming the package.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vod_emulator::{Emulator, EmulatorConfig};

use crate::receiver::Receiver;
use crate::support::*;

/// Where Debian and Ubuntu put each PostgreSQL major's binaries (`<major>/bin`).
const PG_LIB: &str = "/usr/lib/postgresql";

/// The server binaries of the highest major under `lib` (`lib/<major>/bin` holding
/// `initdb`: a client-only major has `psql` there but no server), or the one-line reason
/// naming the package to install.
pub fn pg_bin_in(lib: &Path) -> Result<PathBuf, String> {
    let major = |name: &str| name.split('.').map(|p| p.parse::<u32>().ok()).collect::<Option<Vec<u32>>>();
    std::fs::read_dir(lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((major(entry.file_name().to_str()?)?, entry.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .max()
        .map(|(_, bin)| bin)
        .ok_or_else(|| {
            format!(
                "no PostgreSQL server is installed ({}/<major>/bin/initdb is missing): the PostgreSQL store tests need \
                 the distribution's postgresql package (apt-get install -y postgresql)",
                lib.display()
            )
        })
}

/// The server binaries the tests run ([`pg_bin_in`] of `/usr/lib/postgresql`); panics
/// with the reason when there are none.
fn pg_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| pg_bin_in(Path::new(PG_LIB)).unwrap_or_else(|why| panic!("{why}")))
}

/// The private cluster of this test process.
pub struct Cluster {
    dir: PathBuf,
    port: u16,
}

fn as_postgres(root: bool, program: &Path) -> std::process::Command {
    if root {
        let mut cmd = command("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        command(program)
    }
}

fn run(cmd: &mut std::process::Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run it: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cluster most tests share, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

/// True when the tests run as root (PostgreSQL then runs as `postgres`).
fn root() -> bool {
    let uid = String::from_utf8(command("id").arg("-u").output().unwrap().stdout).unwrap();
    uid.trim() == "0"
}

impl Cluster {
    /// A cluster of its own (for tests that restart it), stopped and removed once this
    /// test process has exited.
    pub fn start() -> Cluster {
        let bin = pg_bin();
        let root = root();
        let dir = std::env::temp_dir().join(format!("vod-pg-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        if root {
            run(command("chown").arg("postgres:").arg(&dir), "chown postgres");
        }
        let data = dir.join("data");
        run(
            as_postgres(root, &bin.join("initdb")).arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ]),
            "initdb",
        );
        let port = free_port();
        let cluster = Cluster { dir, port };
        cluster.pg_ctl("start");
        // Stops the cluster and removes its directory once this test process has exited.
        let cleanup = format!(
            "{runuser}{bin}/pg_ctl -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            runuser = if root { "runuser -u postgres -- " } else { "" },
            bin = bin.display(),
            data = data.display(),
            dir = cluster.dir.display(),
        );
        after_this_process(&cleanup, "the cluster");
        cluster
    }

    /// `pg_ctl start`, `stop` or `restart`, waiting for it.
    pub fn pg_ctl(&self, action: &str) {
        let options =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200", self.port, self.dir.display());
        run(
            as_postgres(root(), &pg_bin().join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "60", "-m", "fast", "-o", &options, action]),
            &format!("pg_ctl {action}"),
        );
    }

    fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}?sslmode=disable", self.port)
    }
}

/// A fresh database in the shared cluster; its URL.
pub async fn database() -> String {
    database_in(cluster()).await
}

/// A fresh database in `cluster`; its URL.
pub async fn database_in(cluster: &Cluster) -> String {
    let name = format!("t_{:016x}", rand::random::<u64>());
    let admin = connect(&cluster.url("postgres")).await;
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    cluster.url(&name)
}

/// A client of `url` for the test's own queries.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to the test cluster");
    tokio::spawn(connection);
    client
}

/// The rows `sql` returns in `url`, each a list of text columns; none if the query fails
/// (before a daemon created the schema). Synchronous (psql), for `eventually` conditions.
pub fn psql(url: &str, sql: &str) -> Vec<Vec<String>> {
    let out = command("psql").args(["-X", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql, url]).output();
    let Ok(out) = out.map_err(|e| panic!("psql is needed (the postgresql package brings it): {e}")) else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(String::from).collect())
        .collect()
}

/// A client of `url` once a daemon has created the schema there.
pub async fn migrated(url: &str) -> tokio_postgres::Client {
    let db = connect(url).await;
    let done = "SELECT count(*) FROM pg_tables WHERE tablename = 'schema_migrations'";
    until(Duration::from_secs(30), "a daemon created the schema", async || {
        number(&db, done).await == 1 && number(&db, "SELECT count(*) FROM schema_migrations").await >= 1
    })
    .await;
    db
}

/// One number from `sql`.
pub async fn number(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// A daemon on the PostgreSQL store `url`, speaking the API `emu` generates events for.
pub async fn pg_daemon(emu: &Emulator, url: &str, extra: &str) -> TestDaemon {
    pg_daemon_at(&emu.endpoint_for(emu.api()), url, &format!("{}{extra}", api_line(emu.api()))).await
}

/// A daemon on the PostgreSQL store `url`, pulling from `endpoint`, a node of its own.
pub async fn pg_daemon_at(endpoint: &str, url: &str, extra: &str) -> TestDaemon {
    pg_node(endpoint, url, extra, &format!("test-{:08x}", rand::random::<u32>())).await
}

/// A daemon on the PostgreSQL store `url`, pulling from `endpoint`, named `node` (kept
/// across restarts and config rewrites: it is passed in the environment).
pub async fn pg_node(endpoint: &str, url: &str, extra: &str, node: &str) -> TestDaemon {
    pg_node_logged(endpoint, url, extra, node, "vod_eventd=debug").await
}

/// [`pg_node`] with a chosen `RUST_LOG`.
pub async fn pg_node_logged(endpoint: &str, url: &str, extra: &str, node: &str, rust_log: &str) -> TestDaemon {
    pg_node_full(endpoint, url, extra, node, rust_log, &[]).await
}

/// [`pg_node`] with a chosen `RUST_LOG` and extra environment.
pub async fn pg_node_full(
    endpoint: &str,
    url: &str,
    extra: &str,
    node: &str,
    rust_log: &str,
    env: &[(&str, &str)],
) -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("unused.db");
    let config_path = dir.path().join("config.toml");
    write_private(&config_path, &config_text(&db_path, endpoint, &format!("url = \"{url}\"\n"), extra));
    let log_path = dir.path().join("daemon.log");
    let mut daemon = TestDaemon {
        _dir: dir,
        config_path,
        db_path,
        log_path,
        child: None,
        rust_log: rust_log.into(),
        env: [("VOD_EVENTD_NODE__NAME", node)].iter().chain(env).map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        pg_url: Some(url.to_string()),
    };
    daemon.spawn();
    daemon
}

/// Waits until `cond` (a query) holds, checking every 100 ms; panics with `what` after `limit`.
async fn until(limit: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn webhook(receiver: &Receiver) -> String {
    format!("[handlers.hook]\ntype = \"webhook\"\nurl = \"{}\"\ntimeout = \"5s\"\n", receiver.url())
}

/// A shell hook that appends `VOD_EVENT_ID` to `DIR/runs`, once it has read its input.
fn shell(dir: &Path) -> String {
    let hook = dir.join("hook.sh");
    std::fs::write(&hook, "#!/bin/sh\ncat > /dev/null\necho \"$VOD_EVENT_ID\" >> \"$1/runs\"\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!(
        "[handlers.ingest]\ntype = \"shell\"\ncommand = [\"{}\", \"{}\"]\ntimeout = \"5s\"\n",
        hook.display(),
        dir.display()
    )
}

fn runs(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("runs")).unwrap_or_default().lines().map(String::from).collect()
}

/// Fast retries and polls, and a short lease margin (the lease is twice the 5 s handler timeout, the
/// handlers claiming ahead of their free permits, plus 1 s).
const FAST: &str =
    "[dispatch]\nretry_schedule = [\"100ms\", \"200ms\"]\npoll_interval = \"100ms\"\nlease_margin = \"1s\"\n";

/// No two requests with the same `webhook-id` were ever in flight at once.
fn assert_no_overlap(receiver: &Receiver) {
    let mut by_id: HashMap<String, Vec<(Instant, Instant)>> = HashMap::new();
    for r in receiver.recorded() {
        by_id.entry(r.headers["webhook-id"].clone()).or_default().push((r.started, r.at));
    }
    for (id, mut spans) in by_id {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(pair[1].0 >= pair[0].1, "two requests with webhook-id {id} overlapped");
        }
    }
}

/// Every event stored once, every delivery done, each (event, handler) seen by its far end.
async fn assert_drained(
    db: &tokio_postgres::Client,
    contents: &[String],
    receiver: &Receiver,
    hook_dir: Option<&Path>,
) {
    let keys: Vec<String> =
        db.query("SELECT encode(dedupe_key, 'hex') FROM events", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let distinct: HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "a content is stored in more than one row");
    let expected: HashSet<String> = contents.iter().map(|c| key_of(c)).collect();
    assert_eq!(keys.iter().cloned().collect::<HashSet<_>>(), expected, "every event stored exactly once");
    let not_done = number(db, "SELECT count(*) FROM deliveries WHERE state != 'done'").await;
    assert_eq!(not_done, 0, "nothing left pending, running or dead");
    let handlers = if hook_dir.is_some() { 2 } else { 1 };
    assert_eq!(number(db, "SELECT count(*) FROM deliveries").await, (contents.len() * handlers) as i64);
    let ids = |handler: &str| {
        let sql = format!("SELECT webhook_id FROM deliveries WHERE handler = '{handler}'");
        async move { db.query(&sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect::<HashSet<String>>() }
    };
    let accepted: HashSet<String> = receiver.accepted().into_iter().map(|r| r.headers["webhook-id"].clone()).collect();
    assert_eq!(accepted, ids("hook").await, "every webhook delivery reached the receiver");
    if let Some(dir) = hook_dir {
        assert_eq!(runs(dir).into_iter().collect::<HashSet<_>>(), ids("ingest").await, "every hook delivery ran");
    }
    assert_no_overlap(receiver);
}

/// Lays out `lib/<major>/bin/<file>` for each `(major, file)`.
fn pg_layout(entries: &[(&str, &str)]) -> tempfile::TempDir {
    let lib = tempfile::tempdir().unwrap();
    for (major, file) in entries {
        let bin = lib.path().join(major).join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join(file), "").unwrap();
    }
    lib
}

/// Debian 13's 17 beside an older 9.6 and 16, and an 18 with only the client (psql, no
/// initdb): the harness takes 17's server binaries.
#[test]
fn the_harness_takes_the_highest_installed_server_major() {
    let lib = pg_layout(&[("9.6", "initdb"), ("16", "initdb"), ("17", "initdb"), ("18", "psql"), ("common", "initdb")]);
    assert_eq!(pg_bin_in(lib.path()), Ok(lib.path().join("17").join("bin")));
    let only_16 = pg_layout(&[("16", "initdb")]);
    assert_eq!(pg_bin_in(only_16.path()), Ok(only_16.path().join("16").join("bin")));
}

/// No server at all (nothing, or a client only): one line naming the package to install.
#[test]
fn without_a_server_the_harness_names_the_package_in_one_line() {
    for lib in [pg_layout(&[]), pg_layout(&[("17", "psql")])] {
        let why = pg_bin_in(lib.path()).unwrap_err();
        assert!(!why.contains('\n'), "{why}");
        assert!(why.contains("apt-get install -y postgresql)"), "{why}");
        assert!(why.contains(&format!("{}/<major>/bin/initdb is missing", lib.path().display())), "{why}");
    }
    let missing = Path::new("/nonexistent/postgresql");
    assert!(pg_bin_in(missing).unwrap_err().contains("apt-get install -y postgresql"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_on_postgres_stores_once_confirms_after_commit_and_delivers() {
    let url = database().await.replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    let emu = emulator(fast_emulator_config()).await;
    let contents = emu.enqueue_generated(500);
    let receiver = Receiver::start().await;
    let extra = format!("{}[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n{FAST}", webhook(&receiver));
    let mut daemon = pg_daemon(&emu, &url, &extra).await;
    let db = migrated(&url).await;
    until(Duration::from_secs(90), "every event confirmed and delivered", async || {
        emu.stats().queue.outstanding == 0
            && number(&db, "SELECT count(*) FROM deliveries WHERE state = 'done'").await == 500
    })
    .await;
    assert_drained(&db, &contents, &receiver, None).await;
    // Confirmed only after the commit: every handle the emulator saw confirmed is a stored row,
    // and each stored row records its confirmation.
    let stored: HashSet<String> = contents.iter().map(|c| key_of(c)).collect();
    for confirmed in emu.confirmed() {
        assert!(stored.contains(&key_of(&confirmed)), "confirmed but not stored: {confirmed}");
    }
    until(Duration::from_secs(10), "every row marked confirmed", async || {
        number(&db, "SELECT count(*) FROM events WHERE confirmed_at IS NULL").await == 0
    })
    .await;
    assert_eq!(number(&db, "SELECT count(*) FROM schema_migrations").await, 2);
    // Migration 2: Debian's and Ubuntu's servers are built with lz4.
    let compression: String = db
        .query_one(
            "SELECT attcompression::text FROM pg_attribute WHERE attrelid = 'events'::regclass AND attname = 'content'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(compression, "l", "event contents compressed with lz4");
    let log = daemon.log();
    assert!(log.contains("vod-eventd started."), "{log}");
    assert!(!log.contains("ERROR"), "no error on a healthy run:\n{log}");
    assert!(!log.contains(PASSWORD), "the password never reaches the log");
    cli_reads_the_same_store(&daemon, &db).await;
    daemon.terminate().await;
    assert_eq!(number(&db, "SELECT count(*) FROM deliveries WHERE state = 'running'").await, 0);
}

/// The password the pipeline test puts in its URL (the test cluster trusts every login).
const PASSWORD: &str = "s3cret-pw";

/// `events list/show`, `deliveries list`, `handlers list` and `status` with the daemon's
/// config read the PostgreSQL store, and never print the password.
async fn cli_reads_the_same_store(daemon: &TestDaemon, db: &tokio_postgres::Client) {
    let run = |args: &[&str]| {
        let out = cli().args(args).arg("--config").arg(&daemon.config_path).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "vod-eventd {args:?} failed: {stderr}");
        assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD), "the password was printed");
        stdout
    };
    assert_eq!(run(&["events", "list", "--json", "--limit", "1000"]).lines().count(), 500);
    let id = number(db, "SELECT max(id) FROM events").await;
    let shown = run(&["events", "show", &id.to_string(), "--json"]);
    let shown: serde_json::Value = serde_json::from_str(shown.trim()).unwrap();
    assert_eq!(shown["deliveries"][0]["delivery"]["state"], "done", "{shown}");
    assert_eq!(run(&["deliveries", "list", "--state", "done", "--limit", "1000", "--json"]).lines().count(), 500);
    assert!(run(&["handlers", "list"]).contains("hook"));
    let status = run(&["status"]);
    assert!(
        status.contains("postgresql://postgres@127.0.0.1"),
        "status names the store without its password:\n{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_on_postgres_folds_into_its_row() {
    let url = database().await;
    let emu = emulator(EmulatorConfig { visibility: Duration::from_secs(1), ..fast_emulator_config() }).await;
    let content = emu.enqueue_generated(1).remove(0);
    // The daemon waits 3 s before confirming: the 1 s handle expires and the event comes again.
    let daemon = pg_daemon(&emu, &url, "[confirm]\nmax_delay = \"3s\"\n").await;
    let db = migrated(&url).await;
    until(Duration::from_secs(30), "the event was seen twice", async || {
        number(&db, "SELECT coalesce(max(times_seen), 0) FROM events").await >= 2
    })
    .await;
    assert_eq!(number(&db, "SELECT count(*) FROM events").await, 1, "a redelivery is one row");
    let key: String = db.query_one("SELECT encode(dedupe_key, 'hex') FROM events", &[]).await.unwrap().get(0);
    assert_eq!(key, key_of(&content));
    emu.set_visibility(Duration::from_secs(30));
    until(Duration::from_secs(60), "the queue drains", async || emu.stats().queue.outstanding == 0).await;
    assert_eq!(number(&db, "SELECT count(*) FROM events").await, 1);
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_drain_one_backlog_through_a_sigkill_exactly_once() {
    const EVENTS: usize = 3000;
    let url = database().await;
    let emu = emulator(EmulatorConfig { visibility: Duration::from_secs(5), ..fast_emulator_config() }).await;
    let contents = emu.enqueue_generated(EVENTS);
    let receiver = Receiver::start().await;
    receiver.set(|b| b.delay = Duration::from_millis(5));
    let hooks = tempfile::tempdir().unwrap();
    let extra = format!(
        "[confirm]\nhandle_ttl = \"5s\"\n{}{}[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\", \"ingest\"]\n{FAST}",
        webhook(&receiver),
        shell(hooks.path())
    );
    let mut a = pg_daemon(&emu, &url, &extra).await;
    let b = pg_daemon(&emu, &url, &extra).await;
    let db = migrated(&url).await;
    until(Duration::from_secs(60), "a quarter of the deliveries done", async || {
        number(&db, "SELECT count(*) FROM deliveries WHERE state = 'done'").await >= (EVENTS / 2) as i64
    })
    .await;
    a.kill9().await;
    a.spawn();
    let started = Instant::now();
    until(Duration::from_secs(180), "every event confirmed and every delivery done", async || {
        emu.stats().queue.outstanding == 0
            && number(&db, "SELECT count(*) FROM deliveries WHERE state = 'done'").await == (EVENTS * 2) as i64
    })
    .await;
    eprintln!("drained {:?} after the kill", started.elapsed());
    assert_drained(&db, &contents, &receiver, Some(hooks.path())).await;
    for confirmed in emu.confirmed() {
        assert!(contents.iter().any(|c| **c == *confirmed), "confirmed an event never enqueued");
    }
    for mut daemon in [a, b] {
        assert!(daemon.running(), "a daemon stopped:\n{}", daemon.log());
        let errors: Vec<String> = daemon.log().lines().filter(|l| l.contains("ERROR")).map(String::from).collect();
        assert!(errors.is_empty(), "errors on a shared store:\n{}", errors.join("\n"));
        daemon.terminate().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_one_of_two_daemons_dies_the_other_resumes_its_deliveries_within_one_lease() {
    const EVENTS: usize = 600;
    let url = database().await;
    let emu = emulator(fast_emulator_config()).await;
    let contents = emu.enqueue_generated(EVENTS);
    let receiver = Receiver::start().await;
    // Slow enough that each daemon holds claims in flight when one is killed.
    receiver.set(|b| b.delay = Duration::from_millis(100));
    let extra = format!("{}[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n{FAST}", webhook(&receiver));
    let mut a = pg_daemon(&emu, &url, &extra).await;
    let mut b = pg_daemon(&emu, &url, &extra).await;
    let db = migrated(&url).await;
    let pid = a.child.as_ref().and_then(|c| c.id()).expect("running");
    let held_by_a = format!("SELECT count(*) FROM deliveries WHERE state = 'running' AND claimed_by LIKE '%/{pid}/%'");
    until(Duration::from_secs(60), "the first daemon holds claims", async || number(&db, &held_by_a).await > 0).await;
    a.kill9().await;
    let killed = Instant::now();
    let held: Vec<(i64, i64)> = db
        .query(
            &format!("SELECT id, lease_until FROM deliveries WHERE state = 'running' AND claimed_by LIKE '%/{pid}/%'"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(!held.is_empty(), "the killed daemon held claims");
    // Lease: twice the 5 s handler timeout (the handler claims ahead of its free permits:
    // one timeout waiting, one running) plus the 1 s margin; the sweep looks every 5 s.
    let lease = Duration::from_secs(11);
    let ids: Vec<i64> = held.iter().map(|(id, _)| *id).collect();
    until(lease * 2 + Duration::from_secs(10), "the dead host's claims are attempted again", async || {
        db.query_one(
            "SELECT count(*) FROM deliveries WHERE id = ANY($1) AND state = 'running' AND claimed_by LIKE $2",
            &[&ids, &format!("%/{pid}/%")],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 0
    })
    .await;
    let resumed = killed.elapsed();
    assert!(resumed <= lease + Duration::from_secs(6), "resumed {resumed:?} after the kill, a lease is {lease:?}");
    until(Duration::from_secs(120), "the survivor drains the rest", async || {
        emu.stats().queue.outstanding == 0
            && number(&db, "SELECT count(*) FROM deliveries WHERE state = 'done'").await == EVENTS as i64
    })
    .await;
    eprintln!("the dead host's {} claims were free again {resumed:?} after the kill", held.len());
    assert_drained(&db, &contents, &receiver, None).await;
    assert!(b.log().contains("Returned deliveries whose lease passed"), "the survivor swept:\n{}", b.log());
    b.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connections_and_a_postgres_restart_pause_the_pipeline_and_it_resumes_by_itself() {
    let cluster = Cluster::start();
    let url = database_in(&cluster).await;
    let emu = emulator(EmulatorConfig { visibility: Duration::from_secs(5), ..fast_emulator_config() }).await;
    let mut contents = emu.enqueue_generated(300);
    let receiver = Receiver::start().await;
    let extra = format!(
        "[confirm]\nhandle_ttl = \"5s\"\n[pull]\nbackoff_max = \"1s\"\n{}[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n{FAST}",
        webhook(&receiver)
    );
    let mut daemon = pg_daemon(&emu, &url, &extra).await;
    let db = migrated(&url).await;
    until(Duration::from_secs(60), "the first events delivered", async || {
        number(&db, "SELECT count(*) FROM deliveries WHERE state = 'done'").await >= 100
    })
    .await;

    // Every connection of the daemon is killed (its pool and its singleton session).
    let killed = number(
        &db,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND pid != pg_backend_pid()",
    )
    .await;
    assert!(killed > 0, "the daemon had connections");
    contents.extend(emu.enqueue_generated(300));
    until(Duration::from_secs(60), "the second batch stored after the lost connections", async || {
        number(&db, "SELECT count(*) FROM events").await >= 600
    })
    .await;

    // PostgreSQL itself goes away: pulling and confirming stop, and nothing is confirmed unstored.
    drop(db);
    cluster.pg_ctl("stop");
    contents.extend(emu.enqueue_generated(300));
    eventually(Duration::from_secs(30), "the daemon says the store refuses writes", || {
        daemon.log().contains("Could not store pulled events")
    })
    .await;
    cluster.pg_ctl("start");
    let db = connect(&url).await;
    until(Duration::from_secs(120), "every event confirmed and delivered after the restart", async || {
        emu.stats().queue.outstanding == 0
            && number(&db, "SELECT count(*) FROM deliveries WHERE state = 'done'").await == 900
    })
    .await;
    assert_drained(&db, &contents, &receiver, None).await;
    let stored: HashSet<String> = contents.iter().map(|c| key_of(c)).collect();
    for confirmed in emu.confirmed() {
        assert!(stored.contains(&key_of(&confirmed)), "confirmed but not stored: {confirmed}");
    }
    assert!(daemon.running(), "connection trouble must not stop the daemon:\n{}", daemon.log());
    let log = daemon.log();
    for line in log.lines().filter(|l| l.contains("ERROR") || l.contains("accepts writes again")) {
        eprintln!("{line}");
    }
    assert!(log.contains("The store accepts writes again"), "recovery is logged:\n{log}");
    daemon.terminate().await;
}

/// The first query after connecting (the key ring check) waits for a server that restarts
/// just then, instead of ending the daemon: a three-daemon run had one exit with
/// "PostgreSQL store unreachable: connection closed" when the cluster restarted as it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_query_after_connecting_waits_for_a_restarting_server() {
    let cluster = Cluster::start();
    let url = database_in(&cluster).await;
    let store = open(&url).await;
    cluster.pg_ctl("stop");
    let restarted = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2)); // the outage itself, not a synchronisation
        cluster.pg_ctl("start");
        cluster
    });
    let checked = tokio::time::timeout(Duration::from_secs(60), store.check_keyring()).await;
    let _cluster = restarted.join().unwrap();
    checked.expect("the check ends once the server is back").expect("the check succeeds once the server is back");
}

/// The PostgreSQL store `url`, as a daemon opens it.
async fn open(url: &str) -> vod_eventd::store::Store {
    let config = vod_eventd::config::StoreConfig {
        url: Some(url.to_string().into()),
        ..vod_eventd::config::StoreConfig::default()
    };
    vod_eventd::store::Store::open_config(&config, &format!("test-{:08x}", rand::random::<u32>()))
        .await
        .expect("open the PostgreSQL store")
}

fn outcome(d: &vod_eventd::handler::Delivery, next: vod_eventd::store::Next) -> vod_eventd::store::AttemptRecord {
    vod_eventd::store::AttemptRecord {
        delivery_id: d.delivery_id,
        attempt: d.attempt,
        claim_token: d.claim_token,
        started_at: 0,
        duration_ms: 1,
        status: None,
        error: None,
        excerpt: None,
        next,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_whose_lease_was_lost_is_recorded_and_changes_nothing() {
    use vod_eventd::store::{now_ms, Next};
    let url = database().await;
    let store = open(&url).await;
    let event =
        vod_eventd::event::ReceivedEvent::from_content(r#"{"eventType":"X"}"#, vod_eventd::config::ApiVersion::V2);
    store.insert_events(vec![(event, vec!["h".into()])]).await.unwrap();
    let db = connect(&url).await;
    let state = async || {
        let r = db.query_one("SELECT state, attempts FROM deliveries", &[]).await.unwrap();
        (r.get::<_, String>(0), r.get::<_, i64>(1))
    };
    let now = now_ms();
    let first = store.claim_due("h".into(), 1, now, Duration::from_millis(1)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(store.claim_due("h".into(), 1, now, Duration::from_secs(60)).await.unwrap().is_empty(), "claimed once");
    until(Duration::from_secs(5), "the 1 ms lease passes and is swept", async || {
        store.sweep_expired_leases(now_ms()).await.unwrap() == 1
    })
    .await;
    // Swept and not claimed again: the late outcome is recorded, the delivery stays pending.
    store.finish_attempt(outcome(&first[0], Next::Done)).await.unwrap();
    assert_eq!(state().await, ("pending".into(), 1));
    let second = store.claim_due("h".into(), 1, now_ms(), Duration::from_secs(60)).await.unwrap();
    assert_eq!(second[0].attempt, 2);
    assert_ne!(second[0].claim_token, first[0].claim_token, "a fresh token per claim");
    store.finish_attempt(outcome(&first[0], Next::Dead)).await.unwrap();
    assert_eq!(state().await, ("running".into(), 2), "the stale outcome changed nothing");
    store.finish_attempt(outcome(&second[0], Next::Done)).await.unwrap();
    assert_eq!(state().await, ("done".into(), 2));
    assert_eq!(number(&db, "SELECT count(*) FROM attempts").await, 3, "every attempt is in the history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_claiming_at_once_never_claim_the_same_delivery() {
    use vod_eventd::store::now_ms;
    let url = database().await;
    let (a, b) = (open(&url).await, open(&url).await);
    let events: Vec<_> = (0..400)
        .map(|i| {
            let content = format!(r#"{{"eventType":"X","n":{i}}}"#);
            (
                vod_eventd::event::ReceivedEvent::from_content(&content, vod_eventd::config::ApiVersion::V2),
                vec!["h".into()],
            )
        })
        .collect();
    a.insert_events(events).await.unwrap();
    let drain = |store: vod_eventd::store::Store| async move {
        let mut ids = Vec::new();
        loop {
            let claimed = store.claim_due("h".into(), 7, now_ms(), Duration::from_secs(60)).await.unwrap();
            if claimed.is_empty() {
                return ids;
            }
            ids.extend(claimed.iter().map(|d| d.delivery_id));
        }
    };
    let (from_a, from_b) = tokio::join!(tokio::spawn(drain(a)), tokio::spawn(drain(b)));
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
    assert!(!from_a.is_empty() && !from_b.is_empty(), "both hosts claimed: {} and {}", from_a.len(), from_b.len());
    let all: HashSet<i64> = from_a.iter().chain(&from_b).copied().collect();
    assert_eq!(all.len(), from_a.len() + from_b.len(), "no delivery claimed twice");
    assert_eq!(all.len(), 400);
}

/// Two hosts storing groups that share most of their contents, at the same moment and in
/// opposite pull orders: every group commits (no deadlock: each takes its row locks in
/// dedupe-key order, in one statement), one row per content, every copy counted once, each
/// content routed by exactly one host, and folds take no ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_ingesting_overlapping_groups_at_once_store_each_content_once() {
    use std::sync::Arc;
    use vod_eventd::route::Routed;
    use vod_eventd::store::Batch;
    const ROUNDS: usize = 40;
    const CONTENTS: usize = 60;
    let url = database().await;
    let (a, b) = (open(&url).await, open(&url).await);
    // Round r: contents r..r+CONTENTS, each twice (two batches), on host a in order and on
    // host b reversed; consecutive rounds overlap, so rows are folded into as well as created.
    fn groups(r: usize, reverse: bool) -> Vec<Batch> {
        let route: Arc<vod_eventd::store::RouteFn> =
            Arc::new(|_| Routed { handlers: vec!["h".to_string()], ..Routed::default() });
        let mut events: Vec<_> = (r..r + CONTENTS)
            .map(|n| {
                vod_eventd::event::ReceivedEvent::from_content(
                    &format!(r#"{{"eventType":"NewFileUpload","data":{{"fileId":"f{n}"}}}}"#),
                    vod_eventd::config::ApiVersion::V2,
                )
            })
            .collect();
        if reverse {
            events.reverse();
        }
        let half = events.len() / 2;
        vec![
            Batch { events: events.iter().chain(&events[..half]).cloned().collect(), route: route.clone() },
            Batch { events: events[half..].to_vec().into(), route },
        ]
    }
    let host = |store: vod_eventd::store::Store, reverse: bool| async move {
        let mut new = 0;
        for r in 0..ROUNDS {
            let out = store.ingest(groups(r, reverse), Vec::new()).await.expect("no deadlock, no error");
            new += out.iter().flatten().filter(|(i, _)| i.new).count();
        }
        new
    };
    let (new_a, new_b) = tokio::join!(tokio::spawn(host(a, false)), tokio::spawn(host(b, true)));
    let contents = (ROUNDS - 1 + CONTENTS) as i64;
    assert_eq!((new_a.unwrap() + new_b.unwrap()) as i64, contents, "each content is new on one host only");
    let db = connect(&url).await;
    assert_eq!(number(&db, "SELECT count(*) FROM events").await, contents, "one row per content");
    let copies = 2 * ROUNDS as i64 * (CONTENTS + CONTENTS / 2 + CONTENTS / 2) as i64;
    assert_eq!(number(&db, "SELECT sum(times_seen)::bigint FROM events").await, copies, "every copy counted once");
    assert_eq!(number(&db, "SELECT count(*) FROM deliveries").await, contents, "routed once per content");
    assert_eq!(number(&db, "SELECT count(*) FROM event_files").await, contents);
    // Only a race lost for a new row takes an id it does not keep; a fold takes none.
    assert!(number(&db, "SELECT last_value FROM events_id_seq").await <= 2 * contents, "folding takes no id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_singleton_runs_on_one_host_and_moves_when_its_host_goes() {
    use vod_eventd::store::Singleton;
    let url = database().await;
    let (a, b) = (open(&url).await, open(&url).await);
    assert!(a.lead(Singleton::Retention).await);
    assert!(a.lead(Singleton::Retention).await, "kept while held");
    assert!(!b.lead(Singleton::Retention).await, "held by the other host");
    assert!(b.lead(Singleton::Status).await, "each singleton has its own lock");
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.lead(Singleton::Retention).await {
        assert!(Instant::now() < deadline, "the lock did not move when its holder went away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The long form (`CHAOS_LONG=1`) of the three-daemon test: 10,000 events and 20 kills.
fn long() -> bool {
    std::env::var("CHAOS_LONG").is_ok_and(|v| v == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_survive_sigkills_killed_connections_and_a_postgres_restart() {
    use rand::Rng as _;
    let (events, kills) = if long() { (10_000, 20) } else { (2000, 4) };
    let cluster = Cluster::start();
    let url = database_in(&cluster).await;
    let emu = emulator(EmulatorConfig { visibility: Duration::from_secs(5), ..fast_emulator_config() }).await;
    let contents = emu.enqueue_generated(events);
    let receiver = Receiver::start().await;
    receiver.set(|b| b.delay = Duration::from_millis(2));
    let hooks = tempfile::tempdir().unwrap();
    let extra = format!(
        "[confirm]\nhandle_ttl = \"5s\"\n[pull]\nbackoff_max = \"1s\"\n{}{}[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\", \"ingest\"]\n{FAST}",
        webhook(&receiver),
        shell(hooks.path())
    );
    let mut daemons = Vec::new();
    for _ in 0..3 {
        daemons.push(pg_daemon(&emu, &url, &extra).await);
    }
    let mut db = migrated(&url).await;
    let total = (events * 2) as i64;
    let started = Instant::now();
    for i in 0..kills {
        // Spread the trouble over the drain: the i-th blow lands once this share is done.
        let mark = total * (i as i64 + 1) / (kills as i64 + 2);
        until(Duration::from_secs(120), "the drain moves on", async || {
            number(&db, "SELECT count(*) FROM deliveries WHERE state = 'done'").await >= mark
        })
        .await;
        let victim = rand::thread_rng().gen_range(0..daemons.len());
        daemons[victim].kill9().await;
        daemons[victim].spawn();
        if i == kills / 3 {
            let killed = number(
                &db,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid != pg_backend_pid()",
            )
            .await;
            assert!(killed > 0, "the daemons had connections");
        }
        if i == 2 * kills / 3 {
            drop(db);
            cluster.pg_ctl("restart");
            db = connect(&url).await;
        }
    }
    until(Duration::from_secs(300), "every event confirmed and every delivery done", async || {
        emu.stats().queue.outstanding == 0
            && number(&db, "SELECT count(*) FROM deliveries WHERE state = 'done'").await == total
    })
    .await;
    eprintln!(
        "{events} events, {kills} kills, one connection kill and one restart: drained in {:?}",
        started.elapsed()
    );
    assert_drained(&db, &contents, &receiver, Some(hooks.path())).await;
    let stored: HashSet<String> = contents.iter().map(|c| key_of(c)).collect();
    for confirmed in emu.confirmed() {
        assert!(stored.contains(&key_of(&confirmed)), "confirmed but not stored: {confirmed}");
    }
    for daemon in &mut daemons {
        let log = daemon.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        assert!(
            daemon.running(),
            "a daemon stopped; its log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

/// `store check` on PostgreSQL: the schema version and the rows themselves. A running
/// delivery without a lease (no claim can ever expire it) is named, as a damaged SQLite
/// file is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_check_on_postgresql_checks_the_schema_and_the_rows() {
    use vod_eventd::store::StoreError;
    let url = database().await;
    let store = open(&url).await;
    assert_eq!(store.data_version(), None, "no change counter: the dispatcher steps every poll interval");
    assert!(store.path().to_string_lossy().starts_with("postgresql://postgres@127.0.0.1"));
    let event = store
        .insert_events(vec![(
            vod_eventd::event::ReceivedEvent::from_content(
                r#"{"eventType":"NewFileUpload","data":{"fileId":"1"}}"#,
                vod_eventd::config::ApiVersion::V2,
            ),
            vec!["h".into()],
        )])
        .await
        .unwrap()[0]
        .id;
    let checked = store.clone();
    tokio::task::spawn_blocking(move || checked.check_integrity()).await.unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[vod]\nsecret_id = \"AKIDx\"\nsecret_key = \"k\"\n[store]\nurl = \"{url}\"\n"))
        .unwrap();
    let check = || cli().args(["store", "check", "--config"]).arg(&config).output().unwrap();
    let out = check();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("), "{}", String::from_utf8_lossy(&out.stdout));

    connect(&url).await.execute("UPDATE deliveries SET state = 'running', lease_until = NULL", &[]).await.unwrap();
    let checked = store.clone();
    let err = tokio::task::spawn_blocking(move || checked.check_integrity()).await.unwrap().unwrap_err();
    assert!(matches!(err, StoreError::Inconsistent { .. }), "{err}");
    assert!(err.to_string().contains("1 running deliveries without a lease"), "{err}");
    let out = check();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("running deliveries without a lease"));
    assert!(store.get_event(event).is_ok(), "a synchronous call from a runtime's thread pool works");
}

/// A group of pulled batches is stored in one pass in dedupe-key order (the lock order that
/// keeps hosts from deadlocking), yet each batch gets its own rows back in pull order, routed
/// by its own route, with the confirmed rows recorded in the same transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_batches_gets_each_batch_its_rows_in_pull_order() {
    use std::sync::Arc;
    use vod_eventd::route::Routed;
    use vod_eventd::store::Batch;
    let url = database().await;
    let store = open(&url).await;
    let event = |n: usize| {
        vod_eventd::event::ReceivedEvent::from_content(
            &format!(r#"{{"eventType":"X","n":{n}}}"#),
            vod_eventd::config::ApiVersion::V2,
        )
    };
    let to = |handler: &'static str| -> Arc<vod_eventd::store::RouteFn> {
        Arc::new(move |_| Routed { handlers: vec![handler.to_string()], ..Routed::default() })
    };
    let first = store.insert_events(vec![(event(0), vec![])]).await.unwrap()[0];
    let batches = vec![
        Batch { events: (1..=5).map(event).collect(), route: to("a") },
        Batch { events: (6..=8).map(event).collect(), route: to("b") },
    ];
    let stored = store.ingest(batches.clone(), vec![(first.id, 7)]).await.unwrap();
    assert_eq!(stored.iter().map(Vec::len).collect::<Vec<_>>(), [5, 3]);
    let db = connect(&url).await;
    for (batch, rows) in batches.iter().zip(&stored) {
        for (event, (row, routed)) in batch.events.iter().zip(rows) {
            assert!(row.new);
            let content: String =
                db.query_one("SELECT content FROM events WHERE id = $1", &[&row.id]).await.unwrap().get(0);
            assert_eq!(content, event.content, "rows in pull order");
            assert_eq!(routed.handlers, [if batches[0].events.contains(event) { "a" } else { "b" }]);
        }
    }
    assert_eq!(number(&db, &format!("SELECT confirmed_at FROM events WHERE id = {}", first.id)).await, 7);
    assert_eq!(number(&db, "SELECT count(*) FROM deliveries WHERE handler = 'a'").await, 5);
    assert_eq!(number(&db, "SELECT count(*) FROM deliveries WHERE handler = 'b'").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_pinned_to_one_host_runs_only_there() {
    const EVENTS: usize = 200;
    let url = database().await;
    let emu = emulator(fast_emulator_config()).await;
    let contents = emu.enqueue_generated(EVENTS);
    let receiver = Receiver::start().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The same handler on both hosts, each with its own local program; pinned to host b.
    let config = |dir: &Path| {
        format!(
            "{}{}hosts = [\"b\"]\n[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\", \"ingest\"]\n{FAST}",
            webhook(&receiver),
            shell(dir)
        )
    };
    let endpoint = emu.endpoint();
    let a = pg_node(&endpoint, &url, &config(dir_a.path()), "a").await;
    let b = pg_node(&endpoint, &url, &config(dir_b.path()), "b").await;
    let db = migrated(&url).await;
    until(Duration::from_secs(90), "every delivery done", async || {
        number(&db, "SELECT count(*) FROM deliveries WHERE state = 'done'").await == (EVENTS * 2) as i64
    })
    .await;
    assert!(runs(dir_a.path()).is_empty(), "the pinned handler ran on the other host");
    assert_drained(&db, &contents, &receiver, Some(dir_b.path())).await;
    drop((a, b));
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`: `ca.crt`,
/// `server.crt`, `server.key`.
fn certificates(dir: &Path) {
    let openssl =
        |args: &[&str]| run(command("openssl").current_dir(dir).args(args), "openssl (Debian's openssl package)");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=vod test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_by_sslmode_encrypts_checks_the_certificate_when_asked_and_names_the_problem() {
    // Without TLS on the server, sslmode=require refuses to go on in clear text.
    let plain = database().await.replace("sslmode=disable", "sslmode=require");
    let config = vod_eventd::config::StoreConfig { url: Some(plain.into()), ..Default::default() };
    let err = vod_eventd::store::Store::open_for_cli(&config).err().expect("no TLS, no store");
    assert!(err.to_string().contains("TLS"), "{err}");

    let cluster = Cluster::start();
    let certs = cluster.dir.join("certs");
    std::fs::create_dir(&certs).unwrap();
    certificates(&certs);
    std::fs::set_permissions(certs.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    if root() {
        run(command("chown").args(["-R", "postgres:"]).arg(&certs), "chown the certificates");
    }
    let admin = connect(&cluster.url("postgres")).await;
    let (crt, key) = (certs.join("server.crt"), certs.join("server.key"));
    for setting in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", crt.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        "ALTER SYSTEM SET ssl = on".to_string(),
        "SELECT pg_reload_conf()".to_string(),
    ] {
        admin.batch_execute(&setting).await.unwrap();
    }
    let url = database_in(&cluster).await;
    let with = |mode: &str| url.replace("sslmode=disable", mode);
    let ca = certs.join("ca.crt");
    let mut stores = Vec::new();
    for mode in ["sslmode=require".to_string(), format!("sslmode=verify-full&sslrootcert={}", ca.display())] {
        let mut opened = None;
        // The reload takes effect asynchronously: wait for the server to speak TLS.
        let deadline = Instant::now() + Duration::from_secs(10);
        while opened.is_none() {
            let config = vod_eventd::config::StoreConfig { url: Some(with(&mode).into()), ..Default::default() };
            match vod_eventd::store::Store::open_for_cli(&config) {
                Ok(store) => opened = Some(store),
                Err(e) => assert!(Instant::now() < deadline, "{mode}: {e}"),
            }
        }
        let store = opened.unwrap();
        assert_eq!(store.count_events().unwrap(), 0, "{mode}");
        stores.push(store);
    }
    let db = connect(&url).await;
    let encrypted = number(
        &db,
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'vod-eventd' AND s.ssl",
    )
    .await;
    assert!(encrypted >= 2, "the store's sessions are encrypted ({encrypted})");
    drop(stores);
    // verify-full against the bundled web roots: the test CA is not among them.
    let config =
        vod_eventd::config::StoreConfig { url: Some(with("sslmode=verify-full").into()), ..Default::default() };
    let err = vod_eventd::store::Store::open_for_cli(&config).err().expect("an unknown CA is refused");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
}

/// `events replay --since` and `deliveries retry --state` on PostgreSQL, through the CLI with
/// the daemon's config: the dry-run count is what is then replayed, a second run replays
/// nothing twice, and the window's dead deliveries come back pending with their webhook ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_replay_and_retry_work_on_postgresql() {
    const N: usize = 1200;
    let url = database().await;
    let store = open(&url).await;
    let events = (0..N + 10)
        .map(|i| {
            let event_type = if i < N { "NewFileUpload" } else { "FileDeleted" };
            let content = format!(r#"{{"eventType":"{event_type}","data":{{"fileId":"f{i}"}}}}"#);
            (vod_eventd::event::ReceivedEvent::from_content(&content, vod_eventd::config::ApiVersion::V2), vec![])
        })
        .collect();
    store.insert_events(events).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let handler = "[handlers.h]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n";
    let text =
        config_text(&dir.path().join("unused.db"), "http://127.0.0.1:9/", &format!("url = \"{url}\"\n"), handler);
    std::fs::write(&config, text).unwrap();
    let run = |args: &[&str]| -> String {
        let out = cli().args(args).arg("--config").arg(&config).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let db = connect(&url).await;
    let replay = ["events", "replay", "--since", "1h", "--until", "now", "--type", "NewFileUpload", "--handler", "h"];
    let dry = run(&[&replay[..], &["--dry-run"]].concat());
    assert!(dry.starts_with(&format!("{N} ")), "{dry}");
    assert_eq!(number(&db, "SELECT count(*) FROM deliveries").await, 0, "a dry run changes nothing");
    run(&replay);
    assert_eq!(number(&db, "SELECT count(*) FROM deliveries").await, N as i64);
    assert_eq!(number(&db, "SELECT count(DISTINCT webhook_id) FROM deliveries").await, N as i64);
    run(&replay);
    assert_eq!(number(&db, "SELECT count(*) FROM deliveries").await, N as i64, "a finished job is not run again");

    let now = vod_eventd::store::now_ms();
    db.execute("UPDATE deliveries SET state = 'dead', updated_at = $1 WHERE id % 3 = 0", &[&now]).await.unwrap();
    let dead = number(&db, "SELECT count(*) FROM deliveries WHERE state = 'dead'").await;
    let ids_before = number(&db, "SELECT sum(hashtext(webhook_id)) FROM deliveries WHERE state = 'dead'").await;
    let out = run(&["deliveries", "retry", "--state", "dead", "--since", "1h", "--until", "now", "--handler", "h"]);
    assert!(out.starts_with(&format!("{dead} dead deliveries to retry")), "{out}");
    assert_eq!(number(&db, "SELECT count(*) FROM deliveries WHERE state = 'dead'").await, 0);
    assert_eq!(number(&db, "SELECT count(*) FROM deliveries WHERE state = 'pending'").await, N as i64);
    let ids_after = number(&db, "SELECT sum(hashtext(webhook_id)) FROM deliveries WHERE id % 3 = 0").await;
    assert_eq!(ids_before, ids_after, "the same webhook ids");
}

/// Two daemons share one PostgreSQL store: `status` lists both by node name, with their
/// version, heartbeat age and the singleton tasks each leads (every task led by exactly one);
/// `/metrics` reports the size of the store's tables; when one stops, `status` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_every_host_of_a_shared_store_and_metrics_report_its_size() {
    let url = database().await;
    let emu = emulator(fast_emulator_config()).await;
    emu.enqueue_generated(20);
    let endpoint = emu.endpoint();
    let port = free_port();
    let mut alpha = pg_node(&endpoint, &url, &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"), "alpha").await;
    let mut beta = pg_node(&endpoint, &url, "", "beta").await;
    let status = || {
        let out = cli().args(["status", "--config"]).arg(&alpha.config_path).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let host_line = |text: &str, node: &str| text.lines().find(|l| l.trim_start().starts_with(node)).map(String::from);
    eventually(Duration::from_secs(30), "both hosts in status", || {
        let text = status();
        host_line(&text, "alpha").is_some() && host_line(&text, "beta").is_some()
    })
    .await;
    let text = status();
    for node in ["alpha", "beta"] {
        let line = host_line(&text, node).unwrap();
        assert!(line.contains(env!("CARGO_PKG_VERSION")) && line.contains("s ago), leads "), "{line}");
    }
    let led = |task: &str| ["alpha", "beta"].iter().filter(|n| host_line(&text, n).unwrap().contains(task)).count();
    assert_eq!(led("status"), 1, "one host leads the heartbeat:\n{text}");

    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
    let size: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vod_eventd_store_bytes "))
        .expect("a store size in /metrics")
        .parse()
        .unwrap();
    assert!(size > 0.0, "{metrics}");

    assert!(beta.terminate().await.success());
    eventually(Duration::from_secs(30), "beta shown stopped", || {
        host_line(&status(), "beta").is_some_and(|l| l.contains("stopped at"))
    })
    .await;
    alpha.terminate().await;
}

/// A daemon of the same name that has just died holds the name until its server process
/// notices the closed socket (at once when idle, later when it was busy, about 11 s after a
/// host dies without closing it): a starting daemon waits for the name. Here a session of the
/// test's holds the node-name lock (derived as the daemon derives it) and lets go after the
/// daemon said it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_name_released_while_a_daemon_waits_for_it_is_taken() {
    let url = database().await;
    let emu = emulator(fast_emulator_config()).await;
    let ghost = connect(&url).await;
    let key = "('x' || encode(substr(sha256('vod-eventd node ghost'::bytea), 1, 8), 'hex'))::bit(64)::bigint";
    ghost.execute(&format!("SELECT pg_advisory_lock({key})"), &[]).await.unwrap();
    let mut daemon = pg_node(&emu.endpoint(), &url, "", "ghost").await;
    eventually(Duration::from_secs(30), "the daemon says it waits for its name", || {
        daemon.log().contains("Waiting up to 15s for node.name `ghost`")
    })
    .await;
    assert!(daemon.running(), "{}", daemon.log());
    let released: bool = ghost.query_one(&format!("SELECT pg_advisory_unlock({key})"), &[]).await.unwrap().get(0);
    assert!(released, "the test held the daemon's node-name lock");
    emu.enqueue_generated(2);
    eventually(Duration::from_secs(30), "the daemon stores events", || daemon.rows() == 2).await;
    assert!(daemon.log().contains("node.name is released; starting."), "{}", daemon.log());
    assert!(daemon.terminate().await.success());
}

/// Two daemons named alike would take each other's claims for their own: the second one
/// refuses to start (78), naming the name and the other's heartbeat. A daemon killed with
/// SIGKILL loses the name with its session, so it starts again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_with_the_same_node_name_refuses_to_start() {
    let url = database().await;
    let emu = emulator(fast_emulator_config()).await;
    let endpoint = emu.endpoint();
    let mut first = pg_node(&endpoint, &url, "", "twin").await;
    emu.enqueue_generated(3);
    eventually(Duration::from_secs(30), "the first one runs", || first.rows() == 3).await;
    let mut second = pg_node(&endpoint, &url, "", "twin").await;
    // It waits 15 s for the name (its holder might be a daemon that has just died), then exits.
    eventually(Duration::from_secs(60), "the second one exits", || !second.running()).await;
    assert_eq!(second.exit_code(), Some(78), "a configuration error");
    let log = second.log();
    assert!(log.contains("Waiting up to 15s for node.name `twin`"), "{log}");
    assert!(log.contains("another running daemon holds node.name `twin`"), "{log}");
    assert!(first.running(), "the first one is left alone");

    first.kill9().await;
    let mut again = pg_node(&endpoint, &url, "", "twin").await;
    emu.enqueue_generated(2);
    eventually(Duration::from_secs(30), "the restarted one stores events", || again.rows() == 5).await;
    assert!(again.running());
    assert!(again.terminate().await.success());
}
