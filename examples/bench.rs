//! Pipeline benchmark: the release `vod-eventd` binary against the in-process emulator on
//! loopback, with a real SQLite file (WAL, synchronous=FULL). Run it with `bench/run.sh`.
//!
//! Scenarios:
//! - drain: a backlog of N events, rate limits off: events/s stored and confirmed, daemon
//!   CPU seconds per 1,000 events, peak RSS;
//! - drain-limited: a backlog with Tencent's 1000 calls/min limit on both sides: events/s
//!   against the ceiling of 16 events × 1000 pulls/min;
//! - steady: 100 events/s offered for a while: enqueue→commit and enqueue→confirm p50/p99;
//! - webhook: a backlog forwarded to the emulator's webhook sink at handler concurrency 1
//!   and 16 (deliveries/s), and 10 events/s offered (enqueue→2xx p50/p99);
//! - shell: a backlog run through a shell hook (hooks/s).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vod_emulator::{Emulator, EmulatorConfig, DEMO_SECRET_ID, DEMO_SECRET_KEY};
use vod_eventd::event::ReceivedEvent;
use vod_eventd::store::Store;

struct Daemon {
    child: Child,
    _dir: tempfile::TempDir,
    db: PathBuf,
}

impl Daemon {
    fn start(endpoint: &str, rate_limit: u32) -> Daemon {
        Self::start_with(endpoint, rate_limit, "")
    }

    fn start_with(endpoint: &str, rate_limit: u32, extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("events.db");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[vod]\nendpoint = \"{endpoint}\"\nsecret_id = \"{DEMO_SECRET_ID}\"\nsecret_key = \"{DEMO_SECRET_KEY}\"\n\
                 rate_limit_per_minute = {rate_limit}\n[account]\nendpoint = \"{}/\"\n\
                 [store]\npath = \"{}\"\n{}[log]\nlevel = \"warn\"\n{extra}\n",
                // DescribeEventConfig goes to the emulator too (its origin), not to Tencent's endpoint.
                endpoint.splitn(4, '/').take(3).collect::<Vec<_>>().join("/"),
                db.display(),
                store_url()
            ),
        )
        .unwrap();
        let bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("vod-eventd");
        let child = Command::new(&bin)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; run bench/run.sh", bin.display()));
        Daemon { child, _dir: dir, db }
    }

    /// (user + system CPU seconds, peak RSS in KiB) so far.
    fn usage(&self) -> (f64, u64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).unwrap();
        (ticks / clock_ticks(), hwm.parse().unwrap())
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// `BENCH_STORE_URL` (a PostgreSQL URL) runs the daemons on that store instead of SQLite;
/// give each run an empty database.
fn store_url() -> String {
    std::env::var("BENCH_STORE_URL").map(|url| format!("url = \"{url}\"\n")).unwrap_or_default()
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100.0)
}

async fn wait_drained(emu: &Emulator, total: u64) -> Duration {
    let start = Instant::now();
    while emu.stats().queue.confirmed < total {
        assert!(start.elapsed() < Duration::from_secs(900), "did not drain: {:?}", emu.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn drain(events: usize, limited: bool) -> String {
    let limit = limited.then_some(1000);
    let emu = Emulator::start(EmulatorConfig {
        hold: Duration::from_secs(1),
        rate_limit_per_minute: limit,
        ..Default::default()
    })
    .await
    .unwrap();
    emu.enqueue_generated(events);
    let daemon = Daemon::start(&emu.endpoint(), if limited { 1000 } else { 10_000_000 });
    let elapsed = wait_drained(&emu, events as u64).await;
    let (cpu, rss) = daemon.usage();
    let stats = emu.stats();
    daemon.stop();
    let rate = events as f64 / elapsed.as_secs_f64();
    let name = if limited { "drain, 1000 calls/min limit" } else { "drain, no rate limit" };
    let ceiling = if limited {
        format!(" ({:.1} % of the 266.7/s ceiling)", rate / (16.0 * 1000.0 / 60.0) * 100.0)
    } else {
        String::new()
    };
    format!(
        "| {name} | {events} | {rate:.0} events/s{ceiling} | {:.3} s | {:.1} MiB | {} | {} |",
        cpu / events as f64 * 1000.0,
        rss as f64 / 1024.0,
        stats.api.rate_limited,
        stats.queue.redelivered
    )
}

async fn steady(per_second: usize, seconds: u64) -> String {
    let emu = Emulator::start(EmulatorConfig { hold: Duration::from_secs(5), ..Default::default() }).await.unwrap();
    let daemon = Daemon::start(&emu.endpoint(), 1000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut enqueued_ms: HashMap<String, i64> = HashMap::new();
    let tick = Duration::from_millis(20);
    let per_tick = (per_second / 50).max(1);
    let mut next = Instant::now();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        for content in emu.enqueue_generated(per_tick) {
            enqueued_ms
                .insert(ReceivedEvent::from_content(&content, vod_eventd::config::ApiVersion::V2).dedupe_hex(), now_ms);
        }
        next += tick;
        tokio::time::sleep_until(next.into()).await;
    }
    wait_drained(&emu, enqueued_ms.len() as u64).await;
    let store = Store::open_existing(&daemon.db, Duration::from_secs(5)).unwrap();
    let mut commit: Vec<f64> = store
        .events_after(0, u32::MAX)
        .unwrap()
        .into_iter()
        .map(|e| (e.received_at - enqueued_ms[&e.dedupe_key]) as f64)
        .collect();
    commit.sort_by(f64::total_cmp);
    let mut confirm: Vec<f64> = emu.enqueue_to_confirm().iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    confirm.sort_by(f64::total_cmp);
    daemon.stop();
    format!(
        "| steady {per_second} events/s for {seconds} s | {} | {:.0} / {:.0} ms | {:.0} / {:.0} ms |",
        commit.len(),
        percentile(&commit, 0.5),
        percentile(&commit, 0.99),
        percentile(&confirm, 0.5),
        percentile(&confirm, 0.99)
    )
}

fn done_deliveries(db: &std::path::Path) -> i64 {
    Store::open_existing(db, Duration::from_secs(5))
        .and_then(|s| s.deliveries())
        .map_or(0, |d| d.iter().filter(|d| d.state == "done").count() as i64)
}

fn webhook_route(emu: &Emulator, concurrency: usize) -> String {
    format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"w\"]\n[handlers.w]\ntype = \"webhook\"\nurl = \"http://{}/_emulator/webhook\"\n\
         secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nconcurrency = {concurrency}\n[dispatch]\npoll_interval = \"100ms\"\n",
        emu.addr()
    )
}

/// Deliveries/s for a backlog through one handler; returns (rate, daemon CPU s per 1,000).
async fn handler_drain(events: usize, route: impl Fn(&Emulator) -> String) -> (f64, f64) {
    let emu = Emulator::start(EmulatorConfig {
        hold: Duration::from_secs(1),
        rate_limit_per_minute: None,
        ..Default::default()
    })
    .await
    .unwrap();
    emu.enqueue_generated(events);
    let daemon = Daemon::start_with(&emu.endpoint(), 10_000_000, &route(&emu));
    let start = Instant::now();
    while done_deliveries(&daemon.db) < events as i64 {
        assert!(start.elapsed() < Duration::from_secs(600), "deliveries did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let (cpu, _) = daemon.usage();
    daemon.stop();
    (events as f64 / elapsed.as_secs_f64(), cpu / events as f64 * 1000.0)
}

/// enqueue→2xx at the sink for `per_second` events/s over `seconds`.
async fn webhook_latency(per_second: usize, seconds: u64, concurrency: usize) -> (usize, f64, f64) {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let daemon = Daemon::start_with(&emu.endpoint(), 1000, &webhook_route(&emu, concurrency));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut enqueued_ms: HashMap<String, i64> = HashMap::new();
    let interval = Duration::from_secs(1) / per_second as u32;
    let mut next = Instant::now();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let content = emu.enqueue_generated(1).remove(0);
        enqueued_ms.insert(content, SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64);
        next += interval;
        tokio::time::sleep_until(next.into()).await;
    }
    let start = Instant::now();
    while emu.webhooks().len() < enqueued_ms.len() {
        assert!(start.elapsed() < Duration::from_secs(120), "webhooks did not all arrive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.stop();
    let mut latency: Vec<f64> =
        emu.webhooks().iter().map(|w| (w.received_at_ms - enqueued_ms[&w.body]) as f64).collect();
    latency.sort_by(f64::total_cmp);
    (latency.len(), percentile(&latency, 0.5), percentile(&latency, 0.99))
}

/// `--guard`: two short drains compared against floors recorded from BENCHMARKS.md,
/// failing only on a gross regression (3× slower or 3× more CPU), never on noise: store and
/// confirm only, then the same with every event forwarded to a webhook (the outbox's group
/// commit).
async fn guard() {
    let env = |name: &str, default: f64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let floor = env("GUARD_MIN_EVENTS_PER_SEC", 1600.0);
    let ceiling = env("GUARD_MAX_CPU_PER_1000", 0.45);
    let (rate, cpu) = guard_drain(false).await;
    println!("guard: {rate:.0} events/s (floor {floor:.0}), {cpu:.3} CPU s per 1,000 events (ceiling {ceiling:.3})");
    let webhook_floor = env("GUARD_WEBHOOK_MIN_EVENTS_PER_SEC", 0.0);
    let webhook_ceiling = env("GUARD_WEBHOOK_MAX_CPU_PER_1000", f64::INFINITY);
    let (webhook_rate, webhook_cpu) = guard_drain(true).await;
    println!(
        "guard, with a webhook: {webhook_rate:.0} events/s (floor {webhook_floor:.0}), {webhook_cpu:.3} CPU s per 1,000 events (ceiling {webhook_ceiling:.3})"
    );
    if rate < floor || cpu > ceiling || webhook_rate < webhook_floor || webhook_cpu > webhook_ceiling {
        eprintln!("guard: gross performance regression against the figures recorded in BENCHMARKS.md");
        std::process::exit(1);
    }
}

/// A 3,000-event drain (startup included) until every event is confirmed, and with
/// `webhook` also delivered to the sink; returns events/s and CPU s per 1,000 events.
async fn guard_drain(webhook: bool) -> (f64, f64) {
    const EVENTS: usize = 3000;
    let emu = Emulator::start(EmulatorConfig {
        hold: Duration::from_secs(1),
        rate_limit_per_minute: None,
        ..Default::default()
    })
    .await
    .unwrap();
    emu.enqueue_generated(EVENTS);
    let extra = if webhook { webhook_route(&emu, 16) } else { String::new() };
    let daemon = Daemon::start_with(&emu.endpoint(), 10_000_000, &extra);
    let mut elapsed = wait_drained(&emu, EVENTS as u64).await;
    if webhook {
        let started = std::time::Instant::now() - elapsed;
        while emu.webhook_count() < EVENTS as u64 {
            assert!(started.elapsed() < Duration::from_secs(120), "the webhook guard did not drain");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        elapsed = started.elapsed();
    }
    let (cpu, _) = daemon.usage();
    daemon.stop();
    (EVENTS as f64 / elapsed.as_secs_f64(), cpu / EVENTS as f64 * 1000.0)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--guard") {
        return guard().await;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (backlog, limited_backlog, steady_secs) = if quick { (3000, 1000, 5) } else { (20_000, 20_000, 20) };
    println!(
        "| scenario | events | stored+confirmed | daemon CPU per 1,000 events | peak RSS | 4400s | redeliveries |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!("{}", drain(backlog, false).await);
    println!("{}", drain(limited_backlog, true).await);
    println!();
    println!("| scenario | events | enqueue→commit p50 / p99 | enqueue→confirm p50 / p99 |");
    println!("|---|---|---|---|");
    println!("{}", steady(100, steady_secs).await);

    let (hook_backlog, latency_secs) = if quick { (1000, 5) } else { (5000, 20) };
    println!();
    println!("| handler scenario | events | deliveries/s | daemon CPU per 1,000 deliveries |");
    println!("|---|---|---|---|");
    for concurrency in [1, 16] {
        let (rate, cpu) = handler_drain(hook_backlog, |emu| webhook_route(emu, concurrency)).await;
        println!("| webhook backlog, concurrency {concurrency} | {hook_backlog} | {rate:.0} | {cpu:.3} s |");
    }
    let hook_dir = tempfile::tempdir().unwrap();
    let hook = hook_dir.path().join("hook.sh");
    std::fs::write(&hook, "#!/bin/sh\ncat > /dev/null\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let shell_route = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"s\"]\n[handlers.s]\ntype = \"shell\"\ncommand = [\"{}\"]\nconcurrency = 4\n[dispatch]\npoll_interval = \"100ms\"\n",
        hook.display()
    );
    let shell_events = hook_backlog / 5;
    let (rate, cpu) = handler_drain(shell_events, |_| shell_route.clone()).await;
    println!("| shell hook backlog (`cat > /dev/null`), concurrency 4 | {shell_events} | {rate:.0} | {cpu:.3} s |");

    println!();
    println!("| webhook latency | events | enqueue→2xx p50 / p99 |");
    println!("|---|---|---|");
    for concurrency in [1, 16] {
        let (n, p50, p99) = webhook_latency(10, latency_secs, concurrency).await;
        println!("| 10 events/s, concurrency {concurrency} | {n} | {p50:.0} / {p99:.0} ms |");
    }
}
