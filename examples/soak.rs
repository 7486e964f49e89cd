//! Soak test: the release `vod-eventd` binary runs for N minutes against the emulator with
//! random faults on every API call, a steady event rate, a webhook route (to the
//! emulator's sink) and a shell hook, and retention on. Every few seconds it samples the
//! daemon's RSS, open file descriptors, threads and store size, then reports whether they
//! stayed flat and whether anything was lost. Run it with `bench/soak.sh MINUTES`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vod_emulator::{Emulator, EmulatorConfig, FaultKind, Faults, DEMO_SECRET_ID, DEMO_SECRET_KEY};

#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    store_bytes: u64,
}

fn sample(pid: u32, db: &Path, at: Duration) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let wal = db.with_extension("db-wal");
    let store_bytes = [db, wal.as_path()].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    Some(Sample { at, rss_kib: field("VmRSS:")?, fds, threads: field("Threads:")?, store_bytes })
}

fn stats(values: &[u64]) -> (u64, u64, u64) {
    (*values.iter().min().unwrap_or(&0), *values.iter().max().unwrap_or(&0), *values.last().unwrap_or(&0))
}

#[tokio::main]
async fn main() {
    let minutes: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5.0);
    let rate: u64 = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let faults =
        Faults { rate: 0.05, kinds: FaultKind::ALL.to_vec(), hang_for: Duration::from_secs(12), actions: Vec::new() };
    let emu = Emulator::start(EmulatorConfig { faults, ..EmulatorConfig::default() }).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let hook = dir.path().join("hook.sh");
    std::fs::write(&hook, "#!/bin/sh\ncat > /dev/null\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[vod]\nendpoint = \"{}\"\nsecret_id = \"{DEMO_SECRET_ID}\"\nsecret_key = \"{DEMO_SECRET_KEY}\"\n\
             [store]\npath = \"{}\"\nretention = \"2m\"\nprune_interval = \"30s\"\n[log]\nlevel = \"error\"\n\
             [dispatch]\nretry_schedule = [\"1s\", \"5s\"]\n\
             [[routes]]\nevents = [\"*\"]\nhandlers = [\"sink\"]\n[[routes]]\nevents = [\"NewFileUpload\"]\nhandlers = [\"hook\"]\n\
             [handlers.sink]\ntype = \"webhook\"\nurl = \"http://{}/_emulator/webhook\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
             [handlers.hook]\ntype = \"shell\"\ncommand = [\"{}\"]\n",
            emu.endpoint(),
            db.display(),
            emu.addr(),
            hook.display()
        ),
    )
    .unwrap();
    let bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("vod-eventd");
    let mut child = Command::new(bin).args(["run", "--config"]).arg(&config).stderr(Stdio::null()).spawn().unwrap();
    let pid = child.id();

    println!("# soak: {minutes} min, {rate} events/s, 5 % faults on every call (all kinds), retention 2 min");
    println!("seconds,rss_kib,fds,threads,store_bytes,enqueued,confirmed");
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut enqueued = 0u64;
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if due > enqueued {
            emu.enqueue_generated((due - enqueued) as usize);
            enqueued = due;
        }
        if start.elapsed() >= next_sample {
            if let Some(s) = sample(pid, &db, start.elapsed()) {
                println!(
                    "{},{},{},{},{},{},{}",
                    s.at.as_secs(),
                    s.rss_kib,
                    s.fds,
                    s.threads,
                    s.store_bytes,
                    enqueued,
                    emu.stats().queue.confirmed
                );
                samples.push(s);
            }
            next_sample += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the queue drain (faults stay on), then stop.
    let drain = Instant::now();
    while emu.stats().queue.outstanding > 0 && drain.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = emu.stats();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let status = child.wait().unwrap();

    // Judge flatness after a warm-up of a tenth of the run.
    let warm: Vec<Sample> = samples.iter().copied().filter(|x| x.at >= duration / 10).collect();
    let half = warm.len() / 2;
    let avg = |xs: &[Sample], f: fn(&Sample) -> u64| xs.iter().map(f).sum::<u64>() as f64 / xs.len().max(1) as f64;
    println!();
    println!("| metric | min | max | last | first-half avg | second-half avg | flat (within 10 %) |");
    println!("|---|---|---|---|---|---|---|");
    type Metric = (&'static str, fn(&Sample) -> u64);
    let rows: [Metric; 4] = [
        ("RSS KiB", |x| x.rss_kib),
        ("open fds", |x| x.fds),
        ("threads", |x| x.threads),
        ("store bytes", |x| x.store_bytes),
    ];
    for (name, f) in rows {
        let values: Vec<u64> = warm.iter().map(f).collect();
        let (min, max, last) = stats(&values);
        let (a, b) = (avg(&warm[..half], f), avg(&warm[half..], f));
        let flat = b <= a * 1.10 + 1.0;
        println!("| {name} | {min} | {max} | {last} | {a:.0} | {b:.0} | {} |", if flat { "yes" } else { "NO" });
    }
    println!();
    println!(
        "enqueued {} events, emulator confirmed {}, {} outstanding after drain, {} redeliveries, {} faults injected, {} webhooks received; daemon exit {:?}",
        s.queue.enqueued,
        s.queue.confirmed,
        s.queue.outstanding,
        s.queue.redelivered,
        s.api.faults,
        emu.webhook_count(),
        status.code()
    );
}
