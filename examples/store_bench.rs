//! Store benchmarks for BENCHMARKS.md (`bench/store.sh`): the release daemon against the
//! emulator, on stores generated directly with SQL (not through the daemon), measuring:
//! - `outage`: log lines and CPU per minute while a full store refuses writes and failing
//!   deliveries are due;
//! - `big`: on one generated store of 2 M events (5 GB with the default padding): time
//!   from start to READY=1 (with and without `store.check_at_start`), `/metrics` latency
//!   (with and without the partial index), then enqueue→commit latency and expired
//!   handles at 100 events/s while retention prunes 1.5 M of the 2 M events.
//!
//! - `generate`: only writes such a store (for `bench/copy.sh`).
//!
//! `store_bench outage`, `store_bench big [EVENTS] [PAD_BYTES] [DIR]` or
//! `store_bench generate [EVENTS] [PAD_BYTES] [PATH]`.

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};
use vod_emulator::{Emulator, EmulatorConfig, DEMO_SECRET_ID, DEMO_SECRET_KEY};
use vod_eventd::event::ReceivedEvent;
use vod_eventd::store::Store;

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// User + system CPU seconds of `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split_whitespace().collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

/// A release daemon with its config, stderr in `log`, and sd_notify messages on a socket.
struct Daemon {
    child: Child,
    log: PathBuf,
    notify: Option<UnixDatagram>,
}

impl Daemon {
    fn start(dir: &Path, endpoint: &str, db: &Path, extra: &str) -> Daemon {
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[vod]\nendpoint = \"{endpoint}\"\nsecret_id = \"{DEMO_SECRET_ID}\"\nsecret_key = \"{DEMO_SECRET_KEY}\"\n\
                 [log]\nlevel = \"info\"\n[store]\npath = \"{}\"\n{extra}\n",
                db.display()
            ),
        )
        .unwrap();
        let socket_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&socket_path);
        let notify = UnixDatagram::bind(&socket_path).unwrap();
        notify.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let log = dir.join("daemon.log");
        let bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("vod-eventd");
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("JOURNAL_STREAM", "1:1") // plain lines, no colours
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log, notify: Some(notify) }
    }

    /// Waits for READY=1, then closes the socket: a datagram socket nobody reads fills
    /// up (10 messages by default) and would then block the daemon's next sd_notify.
    fn ready(&mut self, limit: Duration) -> Duration {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        let notify = self.notify.take().expect("ready() once");
        while start.elapsed() < limit {
            if let Ok(n) = notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                    return start.elapsed();
                }
            }
        }
        panic!("no READY=1 within {limit:?}; see {}", self.log.display());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// Log lines, ERROR lines and CPU per minute while a 2 MiB store refuses writes and a
/// webhook that always fails has deliveries due every 10 ms.
async fn outage() {
    let emu = Emulator::start(EmulatorConfig { hold: Duration::from_secs(1), ..Default::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let extra = format!(
        "max_size_mb = 2\n[dispatch]\nretry_schedule = [\"10ms\"]\n[[routes]]\nevents = [\"*\"]\nhandlers = [\"down\"]\n\
         [handlers.down]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{dead_port}/\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
    );
    let mut daemon = Daemon::start(dir.path(), &emu.endpoint(), &dir.path().join("events.db"), &extra);
    daemon.ready(Duration::from_secs(60));
    emu.enqueue_generated(3000);
    let start = Instant::now();
    while !daemon.log().contains("Could not store pulled events") {
        assert!(start.elapsed() < Duration::from_secs(120), "the store did not fill up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (lines0, errors0) = counts(&daemon.log());
    let cpu0 = cpu_seconds(daemon.child.id());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (lines1, errors1) = counts(&daemon.log());
    let cpu1 = cpu_seconds(daemon.child.id());
    daemon.stop();
    println!(
        "| store full, webhook down, retries due every 10 ms | 60 s | {} | {} | {:.2} s |",
        lines1 - lines0,
        errors1 - errors0,
        cpu1 - cpu0
    );
}

fn counts(log: &str) -> (usize, usize) {
    (log.lines().count(), log.lines().filter(|l| l.contains("ERROR")).count())
}

/// Fills a store with `events` events (content padded to about `pad` bytes), each with
/// one delivery and one attempt: the first three quarters received 40 days ago and done,
/// the rest a day ago, of which one in a thousand pending (due in a month) and one in a
/// thousand dead.
fn generate(db: &Path, events: i64, pad: usize) {
    drop(Store::open(db, Duration::from_secs(5)).unwrap()); // schema, auto_vacuum
    let mut c = Connection::open(db).unwrap();
    c.execute_batch("PRAGMA synchronous = OFF; PRAGMA foreign_keys = OFF;").unwrap();
    let (old, now) = (events * 3 / 4, now_ms());
    let padding = "x".repeat(pad);
    let chunk = 100_000;
    for first in (1..=events).step_by(chunk as usize) {
        let last = (first + chunk - 1).min(events);
        let tx = c.transaction().unwrap();
        tx.execute(
            "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
             INSERT INTO events (id, dedupe_key, event_type, file_id, content, received_at, last_seen_at)
             SELECT i, randomblob(32), 'NewFileUpload', 'f' || i,
                    '{\"EventType\":\"NewFileUpload\",\"N\":' || i || ',\"Pad\":\"' || ?3 || '\"}',
                    CASE WHEN i <= ?4 THEN ?5 ELSE ?6 END, CASE WHEN i <= ?4 THEN ?5 ELSE ?6 END FROM n",
            params![first, last, padding, old, now - 40 * DAY_MS, now - DAY_MS],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO deliveries (id, event_id, handler, webhook_id, state, attempts, next_attempt_at, created_at, updated_at)
             SELECT id, id, 'sink', 'msg_' || id,
                    CASE WHEN id > ?3 AND id % 1000 = 0 THEN 'pending' WHEN id > ?3 AND id % 1000 = 1 THEN 'dead' ELSE 'done' END,
                    1, CASE WHEN id > ?3 AND id % 1000 = 0 THEN ?4 ELSE received_at END, received_at, received_at
             FROM events WHERE id BETWEEN ?1 AND ?2",
            params![first, last, old, now + 30 * DAY_MS],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome, status)
             SELECT id, 1, created_at, 5, CASE state WHEN 'pending' THEN 'retry' ELSE state END, 200
             FROM deliveries WHERE id BETWEEN ?1 AND ?2",
            params![first, last],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
}

fn file_gb(db: &Path) -> f64 {
    std::fs::metadata(db).unwrap().len() as f64 / 1e9
}

fn sink_route(emu: &Emulator) -> String {
    format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"sink\"]\n[handlers.sink]\ntype = \"webhook\"\n\
         url = \"http://{}/_emulator/webhook\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
        emu.addr()
    )
}

async fn big(events: i64, pad: usize, dir: &Path) {
    let db = dir.join("events.db");
    let generating = Instant::now();
    generate(&db, events, pad);
    println!("# generated {events} events ({:.2} GB) with SQL in {:.0?}", file_gb(&db), generating.elapsed());
    let emu = Emulator::start(EmulatorConfig { hold: Duration::from_secs(1), ..Default::default() }).await.unwrap();
    let route = sink_route(&emu);

    for (what, extra) in [("default", ""), ("store.check_at_start = true", "check_at_start = true\n")] {
        let mut daemon = Daemon::start(dir, &emu.endpoint(), &db, &format!("{extra}{route}"));
        let ready = daemon.ready(Duration::from_secs(1800));
        daemon.stop();
        println!("| start to READY=1, {what} | {:.2} GB | {:.2} s |", file_gb(&db), ready.as_secs_f64());
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics = format!("{route}[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    for index in [true, false] {
        if !index {
            Connection::open(&db).unwrap().execute_batch("DROP INDEX deliveries_not_done;").unwrap();
        }
        let mut daemon = Daemon::start(dir, &emu.endpoint(), &db, &metrics);
        daemon.ready(Duration::from_secs(60));
        let mut times = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
            assert!(body.contains("vod_eventd_deliveries_pending"));
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        daemon.stop();
        times.sort_by(f64::total_cmp);
        let what = if index { "partial index `deliveries_not_done`" } else { "without it (the old plan)" };
        println!("| GET /metrics, {what} | {events} events | {:.1} / {:.1} ms |", percentile(&times, 0.5), times[19]);
    }
    Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE INDEX deliveries_not_done ON deliveries (handler, state, created_at) WHERE state != 'done';",
        )
        .unwrap();

    prune_under_load(&emu, dir, &db, &route, events).await;
}

/// 100 events/s while retention (first run 15 s after the first pull) prunes the old
/// three quarters of the store.
async fn prune_under_load(emu: &Emulator, dir: &Path, db: &Path, route: &str, generated: i64) {
    let extra = format!("retention = \"30d\"\nprune_interval = \"15s\"\n{route}");
    let mut daemon = Daemon::start(dir, &emu.endpoint(), db, &extra);
    daemon.ready(Duration::from_secs(60));
    let started = Instant::now();
    let mut enqueued_ms: HashMap<String, i64> = HashMap::new();
    let mut next = Instant::now();
    let mut pruned_at = None;
    while pruned_at.is_none_or(|at: Instant| at.elapsed() < Duration::from_secs(5)) {
        assert!(started.elapsed() < Duration::from_secs(3600), "no prune within an hour");
        for content in emu.enqueue_generated(2) {
            let key = ReceivedEvent::from_content(&content, vod_eventd::config::ApiVersion::V2).dedupe_hex();
            enqueued_ms.insert(key, now_ms());
        }
        next += Duration::from_millis(20);
        tokio::time::sleep_until(next.into()).await;
        if pruned_at.is_none() && daemon.log().contains("Pruned events") {
            pruned_at = Some(Instant::now());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while emu.stats().queue.confirmed < enqueued_ms.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = daemon.log();
    let line = log.lines().find(|l| l.contains("Pruned events")).unwrap().to_string();
    let took: f64 = line
        .split("took=")
        .nth(1)
        .and_then(|t| humantime::parse_duration(t.split_whitespace().next()?).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    let prune_end = now_ms() - pruned_at.unwrap().elapsed().as_millis() as i64;
    let prune_start = prune_end - (took * 1000.0) as i64;
    let expired_metric = emu.stats().queue.redelivered;
    daemon.stop();
    let store = Store::open_existing(db, Duration::from_secs(5)).unwrap();
    let mut during: Vec<f64> = store
        .events_after(generated, u32::MAX)
        .unwrap()
        .into_iter()
        .map(|e| (e.dedupe_key, e.received_at))
        .filter_map(|(key, at)| {
            enqueued_ms.get(&key).filter(|&&e| (prune_start..=prune_end).contains(&e)).map(|e| (at - e) as f64)
        })
        .collect();
    during.sort_by(f64::total_cmp);
    println!("# {}", line.trim());
    println!(
        "| 100 events/s while retention prunes | {} events enqueued during the {took:.1} s prune | {:.0} / {:.0} / {:.0} ms | {expired_metric} |",
        during.len(),
        percentile(&during, 0.5),
        percentile(&during, 0.99),
        during.last().unwrap()
    );
    println!("# after: {} events, {:.2} GB", store.count_events().unwrap(), file_gb(db));
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("outage") => outage().await,
        Some("big") => {
            let events = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2_000_000);
            let pad = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2300);
            let tmp = tempfile::tempdir().unwrap();
            let dir = args.get(3).map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
            big(events, pad, &dir).await
        }
        Some("generate") => {
            let events = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
            let pad = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(700);
            let db = PathBuf::from(args.get(3).map_or("events.db", String::as_str));
            generate(&db, events, pad);
            println!("# generated {events} events ({:.2} GB) in {}", file_gb(&db), db.display());
        }
        _ => eprintln!(
            "usage: store_bench outage | store_bench big [EVENTS] [PAD_BYTES] [DIR] | store_bench generate [EVENTS] [PAD_BYTES] [PATH]"
        ),
    }
}
