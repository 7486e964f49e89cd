//! The metrics/health listener under clients that never finish their headers: the daemon
//! keeps its descriptors, `/healthz` keeps answering, events keep being confirmed.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::support::{command, config_text, emulator, eventually, fast_emulator_config, free_port, BIN};

/// The daemon under `prlimit --nofile=SOFT:HARD`, with a metrics listener on `port`.
fn spawn_limited(dir: &std::path::Path, endpoint: &str, port: u16, nofile: &str) -> Child {
    let config = dir.join("config.toml");
    let extra = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    std::fs::write(&config, config_text(&dir.join("events.db"), endpoint, "", &extra)).unwrap();
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    Command::from(command("prlimit"))
        .arg(format!("--nofile={nofile}"))
        .args(["--", BIN, "run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "vod_eventd=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn prlimit vod-eventd")
}

/// One GET on a fresh connection, with a deadline; the status code.
async fn healthz(port: u16, limit: Duration) -> Result<u16, String> {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&answer);
        text.split(' ').nth(1).and_then(|code| code.parse().ok()).ok_or_else(|| format!("no status line in {text:?}"))
    };
    tokio::time::timeout(limit, attempt).await.map_err(|_| format!("no answer within {limit:?}"))?
}

/// 1,100 connections that send half a request line and then nothing, against a daemon
/// whose descriptor limit is 1,024 (soft and hard): `/healthz` still answers 200 within
/// 3 s, and 50 events enqueued meanwhile are all confirmed with no handle expired.
/// Before the cap and the header timeout, the slow connections took every descriptor:
/// `/healthz` went unanswered and the daemon could not reach the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_beyond_the_cap_leave_healthz_answering_and_events_confirmed() {
    let _ = vod_eventd::limits::raise_nofile();
    let emu = emulator(fast_emulator_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_limited(dir.path(), &emu.endpoint(), port, "1024:1024");
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(port, Duration::from_secs(2)).await != Ok(200) {
        assert!(Instant::now() < deadline, "the daemon never became healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut slow = Vec::new();
    for _ in 0..1100 {
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(("127.0.0.1", port))).await
        else {
            continue;
        };
        let _ = stream.write_all(b"GET /metr").await;
        slow.push(stream);
    }
    assert!(slow.len() > 1024, "only {} slow connections were opened", slow.len());
    emu.enqueue_generated(50);
    let asked = Instant::now();
    let status = healthz(port, Duration::from_secs(3)).await;
    assert_eq!(status, Ok(200), "/healthz with {} slow connections open", slow.len());
    eprintln!("/healthz answered in {:?} with {} slow connections open", asked.elapsed(), slow.len());
    eventually(Duration::from_secs(15), "50 events confirmed", || emu.stats().queue.confirmed == 50).await;
    assert_eq!(emu.stats().queue.expired_handles, 0);
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(!log.contains("Too many open files"), "{log}");
    drop(slow);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// A connection that never finishes its headers is closed after the header timeout (5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let emu = emulator(fast_emulator_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_limited(dir.path(), &emu.endpoint(), port, "4096:4096");
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(port, Duration::from_secs(2)).await != Ok(200) {
        assert!(Instant::now() < deadline, "the daemon never became healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the slow connection is still open after 15 s");
    assert!(started.elapsed() >= Duration::from_secs(4), "closed after {:?}, before the timeout", started.elapsed());
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// At start the daemon raises its soft descriptor limit to the hard one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let emu = emulator(fast_emulator_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_limited(dir.path(), &emu.endpoint(), port, "256:4096");
    let pid = child.id().unwrap();
    let soft_limit = || {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
        let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default().to_string();
        line.split_whitespace().nth(3).and_then(|v| v.parse::<u64>().ok())
    };
    eventually(Duration::from_secs(10), "the soft limit is raised to 4096", || soft_limit() == Some(4096)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// `config check` warns when the listener is not on loopback, and not when it is.
#[test]
fn config_check_warns_about_a_listener_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let check = |listen: &str| {
        let path = dir.path().join("c.toml");
        let text = format!(
            "[vod]\nsecret_id = \"AKID1\"\nsecret_key = \"k\"\n[metrics]\nlisten = \"{listen}\"\n[store]\npath = \"{}\"\n",
            dir.path().join("e.db").display()
        );
        // Readable by its owner only: no warning about the inline secret.
        crate::support::write_private(&path, &text);
        let out = crate::support::cli().args(["config", "check", "--config"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let open = check("0.0.0.0:9464");
    assert!(open.contains("warning: metrics.listen = \"0.0.0.0:9464\" is not a loopback address"), "{open}");
    let local = check("127.0.0.1:9464");
    assert!(!local.contains("warning"), "{local}");
}
