//! Side-by-side benchmark: vod-eventd against the baseline a user would otherwise write
//! (`bench/baseline.py`: the official v2 Python SDK doing PullEvent → SQLite insert (WAL,
//! FULL) → ConfirmEvent → POST to a webhook), on the same emulator, the same events and
//! the same receiver (the emulator's webhook sink). Run it with `bench/compare.sh`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vod_emulator::{Emulator, EmulatorConfig, DEMO_SECRET_ID, DEMO_SECRET_KEY};
use vod_eventd::config::ApiVersion;
use vod_eventd::event::ReceivedEvent;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Baseline,
    VodEventd,
}

struct Run {
    child: Child,
    _dir: tempfile::TempDir,
    db: PathBuf,
}

fn bin() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("vod-eventd")
}

fn start(who: Contender, emu: &Emulator, events: usize, limited: bool, idle_seconds: Option<u64>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let sink = format!("http://{}/_emulator/webhook", emu.addr());
    let child = match who {
        Contender::Baseline => {
            let mut cmd = Command::new("python3");
            cmd.arg("bench/baseline.py")
                .args(["--endpoint", &emu.endpoint(), "--secret-id", DEMO_SECRET_ID, "--secret-key", DEMO_SECRET_KEY])
                .args(["--db", db.to_str().unwrap(), "--webhook", &sink, "--events", &events.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(s) = idle_seconds {
                cmd.args(["--idle-seconds", &s.to_string()]);
            }
            cmd.spawn().expect("python3 bench/baseline.py (pip install -r tests/py/requirements.txt)")
        }
        Contender::VodEventd => {
            let config = dir.path().join("config.toml");
            let limit = if limited { 1000 } else { 10_000_000 };
            std::fs::write(
                &config,
                format!(
                    "[vod]\nendpoint = \"{}\"\nsecret_id = \"{DEMO_SECRET_ID}\"\nsecret_key = \"{DEMO_SECRET_KEY}\"\nrate_limit_per_minute = {limit}\n\
                     [account]\nendpoint = \"http://{}/\"\n\
                     [store]\npath = \"{}\"\n[log]\nlevel = \"warn\"\n\
                     [[routes]]\nevents = [\"*\"]\nhandlers = [\"sink\"]\n\
                     [handlers.sink]\ntype = \"webhook\"\nurl = \"{sink}\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nconcurrency = 16\n",
                    emu.endpoint(),
                    emu.addr(),
                    db.display()
                ),
            )
            .unwrap();
            Command::new(bin()).args(["run", "--config"]).arg(&config).stdout(Stdio::null()).spawn().unwrap()
        }
    };
    Run { child, _dir: dir, db }
}

/// (CPU seconds, current RSS KiB, peak RSS KiB) of a running process.
fn usage(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (ticks / 100.0, field("VmRSS:"), field("VmHWM:"))
}

fn stop(mut run: Run) -> u64 {
    let _ = Command::new("kill").args(["-TERM", &run.child.id().to_string()]).status();
    let _ = run.child.wait();
    let wal = run.db.with_extension("db-wal");
    [run.db.as_path(), wal.as_path()].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

struct Drain {
    rate: f64,
    cpu_per_1000: f64,
    peak_rss_mib: f64,
    bytes_per_event: f64,
}

/// A backlog through store + confirm + webhook, until the sink has every event.
async fn drain(who: Contender, events: usize, limited: bool) -> Drain {
    let limit = limited.then_some(1000);
    let emu = Emulator::start(EmulatorConfig {
        hold: Duration::from_secs(1),
        rate_limit_per_minute: limit,
        ..Default::default()
    })
    .await
    .unwrap();
    emu.enqueue_generated(events);
    let run = start(who, &emu, events, limited, None);
    let started = Instant::now();
    // The baseline exits by itself when done: keep the largest figures seen while it ran.
    let (mut cpu, mut peak) = (0.0f64, 0u64);
    loop {
        let (c, _, p) = usage(run.child.id());
        (cpu, peak) = (cpu.max(c), peak.max(p));
        if emu.stats().queue.confirmed >= events as u64 && emu.webhook_count() >= events as u64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1800), "{who:?} did not drain: {:?}", emu.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let bytes = stop(run);
    Drain {
        rate: events as f64 / elapsed.as_secs_f64(),
        cpu_per_1000: cpu / events as f64 * 1000.0,
        peak_rss_mib: peak as f64 / 1024.0,
        bytes_per_event: bytes as f64 / events as f64,
    }
}

/// Enqueue→receiver latency at `per_second` for `seconds` (p50, p99 in ms).
async fn latency(who: Contender, per_second: u32, seconds: u64) -> (f64, f64) {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let run = start(who, &emu, usize::MAX / 2, true, None);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut enqueued: HashMap<String, i64> = HashMap::new();
    let mut next = Instant::now();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let content = emu.enqueue_generated(1).remove(0);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        enqueued.insert(ReceivedEvent::from_content(&content, ApiVersion::V2).dedupe_hex(), now);
        next += Duration::from_secs(1) / per_second;
        tokio::time::sleep_until(next.into()).await;
    }
    let wait = Instant::now();
    while (emu.webhook_count() as usize) < enqueued.len() && wait.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop(run);
    let mut ms: Vec<f64> = emu
        .webhooks()
        .iter()
        .filter_map(|w| {
            Some(
                (w.received_at_ms - enqueued.get(&ReceivedEvent::from_content(&w.body, ApiVersion::V2).dedupe_hex())?)
                    as f64,
            )
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms.get(((ms.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
    (pct(0.5), pct(0.99))
}

/// CPU seconds and RSS (MiB) over `seconds` of empty long polls.
async fn idle(who: Contender, seconds: u64) -> (f64, f64) {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let run = start(who, &emu, usize::MAX / 2, true, Some(seconds + 30));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (before, _, _) = usage(run.child.id());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (after, rss, _) = usage(run.child.id());
    stop(run);
    (after - before, rss as f64 / 1024.0)
}

/// Median wall time of `events list --type T --since 24h --limit 50` on a store of `rows` events.
fn history_query(rows: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    // The store creates and migrates the file; the rows, received over a week, are written
    // straight into it (the store's own API stamps rows with the time they arrive).
    drop(vod_eventd::store::Store::open(&db, Duration::from_secs(5)).unwrap());
    let mut conn = rusqlite::Connection::open(&db).unwrap();
    let now = vod_eventd::store::now_ms();
    let types =
        ["NewFileUpload", "ProcedureStateChanged", "TranscodeComplete", "FileDeleted", "PullComplete", "ClipComplete"];
    (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare(
                    "INSERT INTO events (dedupe_key, event_type, version, file_id, task_id, content, received_at, last_seen_at)
                     VALUES (?1, ?2, '4.0', ?3, ?4, ?5, ?6, ?6)",
                )?;
                for i in 0..rows {
                    let t = types[(i % types.len() as u64) as usize];
                    let key = <sha2::Sha256 as sha2::Digest>::digest(i.to_le_bytes());
                    let content = format!(r#"{{"version":"4.0","eventType":"{t}","data":{{"fileId":"{i}","vodTaskId":"task-{i}"}}}}"#);
                    // Spread over 7 days.
                    let at = now - (i as i64 * 604_800_000 / rows as i64);
                    stmt.execute(rusqlite::params![&key[..], t, i.to_string(), format!("task-{i}"), content, at])?;
                }
            }
            tx.commit()?;
            Ok(())
    })()
    .unwrap();
    drop(conn);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[vod]\nsecret_id = \"x\"\nsecret_key = \"y\"\n[store]\npath = \"{}\"\n", db.display()),
    )
    .unwrap();
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            let out = Command::new(bin())
                .args(["events", "list", "--type", "TranscodeComplete", "--since", "24h", "--limit", "50", "--config"])
                .arg(&config)
                .output()
                .unwrap();
            assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() == 51);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn ratio(baseline: f64, ours: f64) -> String {
    format!("{:.1}×", baseline / ours)
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (backlog, idle_secs, latency_secs, history_rows) =
        if quick { (2000, 10, 10, 100_000) } else { (20_000, 60, 30, 1_000_000) };
    assert!(Path::new("bench/baseline.py").exists(), "run from the repository root (bench/compare.sh does)");
    let mut rows: Vec<String> = Vec::new();

    let (b, o) = (drain(Contender::Baseline, backlog, false).await, drain(Contender::VodEventd, backlog, false).await);
    rows.push(format!(
        "| {backlog}-event backlog drained, no rate limit (events/s) | {:.0} | {:.0} | {} faster |",
        b.rate,
        o.rate,
        ratio(o.rate, b.rate)
    ));
    rows.push(format!(
        "| CPU seconds per 1,000 events (store + confirm + POST) | {:.3} | {:.3} | {} less |",
        b.cpu_per_1000,
        o.cpu_per_1000,
        ratio(b.cpu_per_1000, o.cpu_per_1000)
    ));
    rows.push(format!(
        "| peak RSS while draining (MiB) | {:.1} | {:.1} | {} less |",
        b.peak_rss_mib,
        o.peak_rss_mib,
        ratio(b.peak_rss_mib, o.peak_rss_mib)
    ));
    rows.push(format!(
        "| store bytes per event | {:.0} | {:.0} | {} |",
        b.bytes_per_event,
        o.bytes_per_event,
        ratio(b.bytes_per_event, o.bytes_per_event)
    ));
    let limited = if quick { 1000 } else { 20_000 };
    let (b, o) = (drain(Contender::Baseline, limited, true).await, drain(Contender::VodEventd, limited, true).await);
    rows.push(format!(
        "| {limited}-event backlog, 1000 calls/min limit (events/s; ceiling 266.7) | {:.0} ({:.0} %) | {:.0} ({:.0} %) | {} |",
        b.rate,
        b.rate / 2.667,
        o.rate,
        o.rate / 2.667,
        ratio(o.rate, b.rate)
    ));
    let (bl, ol) =
        (latency(Contender::Baseline, 10, latency_secs).await, latency(Contender::VodEventd, 10, latency_secs).await);
    rows.push(format!(
        "| enqueue→receiver p50 / p99 at 10 events/s (ms) | {:.0} / {:.0} | {:.0} / {:.0} | |",
        bl.0, bl.1, ol.0, ol.1
    ));
    let (bi, oi) = (idle(Contender::Baseline, idle_secs).await, idle(Contender::VodEventd, idle_secs).await);
    rows.push(format!("| idle CPU over {idle_secs} s of empty long polls (s) | {:.2} | {:.2} | |", bi.0, oi.0));
    rows.push(format!("| idle RSS (MiB) | {:.1} | {:.1} | {} less |", bi.1, oi.1, ratio(bi.1, oi.1)));
    let q = history_query(history_rows);
    rows.push(format!("| `events list --type T --since 24h --limit 50` on {history_rows} events (ms, whole command) | n/a | {q:.0} | |"));

    println!("| figure | baseline (official v2 Python SDK) | vod-eventd | vod-eventd vs baseline |");
    println!("|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
