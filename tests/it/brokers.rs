//! The broker handlers (`amqp`, `nats`, `redis`) end to end: the real binary against the
//! emulator, publishing to a real broker from Debian (`rabbitmq-server`, `nats-server -js`,
//! `redis-server` with `appendonly yes`) that each test starts in a temp dir on a port from
//! the OS (RabbitMQ as the `rabbitmq` user when the tests run as root) and stops when it
//! ends, or when the test process exits. What reached the broker is read back by an
//! independent client, the broker's own Python library (`pika`, `nats-py`, `redis-py`, in a
//! virtual environment of the tests' own, `tests/py/brokers-requirements.txt`), through
//! `tests/py/brokers_consume.py`.
//!
//! Per broker: every event exactly once, body byte-exact, id = the delivery's `webhook-id`;
//! the broker stopped mid-stream and started again, nothing lost; the daemon SIGKILLed
//! repeatedly under load, nothing lost and repeats under the same id (JetStream drops them),
//! on SQLite and on PostgreSQL; a wrong password, a clear error naming the handler and the key, and no secret in the log.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::support::*;

/// The brokers' real password.
const PASSWORD: &str = "broker-pw-7c2e91";
/// A password the brokers refuse.
const WRONG: &str = "wrong-pw-55d0a3";
/// How long the restart test keeps the broker down.
const BROKER_DOWN: Duration = Duration::from_secs(30);
/// Events in the exactly-once test.
const MANY: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Amqp,
    Nats,
    Redis,
}

/// A broker of the test's own.
pub(crate) struct Broker {
    kind: Kind,
    password: String,
    dir: PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

/// A free loopback port below the ephemeral range (32768 and up on Linux). A server that
/// takes seconds to listen (RabbitMQ) must not get a port from the OS's ephemeral range:
/// while nothing listens there, a client polling it can be connected to itself (TCP
/// simultaneous open from that very port), which then holds the port the server needs.
fn broker_port() -> u16 {
    loop {
        let port = 10_000 + rand::random::<u16>() % 22_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn root() -> bool {
    let uid = String::from_utf8(command("id").arg("-u").output().unwrap().stdout).unwrap();
    uid.trim() == "0"
}

fn run(cmd: &mut std::process::Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run it: {e}"));
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

impl Broker {
    async fn start(kind: Kind) -> Broker {
        Broker::start_with(kind, PASSWORD).await
    }

    /// A broker whose one user has `password`.
    async fn start_with(kind: Kind, password: &str) -> Broker {
        let dir = std::env::temp_dir().join(format!("vod-broker-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        if kind == Kind::Amqp {
            // The user and password the handler is given; nothing else is configured.
            let conf = dir.join("conf.d");
            std::fs::create_dir(&conf).unwrap();
            std::fs::write(conf.join("10-vod.conf"), format!("default_user = vod\ndefault_pass = {password}\n"))
                .unwrap();
            if root() {
                run(command("chown").arg("-R").arg("rabbitmq:").arg(&dir), "chown rabbitmq");
            }
        }
        let mut broker = Broker { kind, password: password.to_string(), dir, port: broker_port(), child: None };
        broker.boot().await;
        broker.reaper();
        broker
    }

    /// Starts the server (again) on the same port and directory.
    fn spawn(&mut self) {
        let (d, port) = (self.dir.display().to_string(), self.port.to_string());
        let mut cmd = match self.kind {
            Kind::Redis => {
                let mut cmd = command("redis-server");
                cmd.args(["--bind", "127.0.0.1", "--port", &port, "--dir", &d, "--appendonly", "yes"]);
                cmd.args(["--appendfsync", "always", "--save", "", "--requirepass", &self.password]);
                cmd
            }
            Kind::Nats => {
                let mut cmd = command("nats-server");
                cmd.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &format!("{d}/js")]);
                cmd.args(["--user", "vod", "--pass", &self.password]);
                cmd
            }
            Kind::Amqp => {
                let mut cmd = if root() {
                    let mut c = command("setpriv");
                    c.args([
                        "--reuid",
                        "rabbitmq",
                        "--regid",
                        "rabbitmq",
                        "--init-groups",
                        "/usr/lib/rabbitmq/bin/rabbitmq-server",
                    ]);
                    c
                } else {
                    command("/usr/lib/rabbitmq/bin/rabbitmq-server")
                };
                let dist = broker_port().to_string();
                for (k, v) in [
                    ("HOME", d.clone()),
                    ("RABBITMQ_NODENAME", format!("rabbit-{port}@localhost")),
                    ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
                    ("RABBITMQ_NODE_PORT", port.clone()),
                    ("RABBITMQ_DIST_PORT", dist),
                    ("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia")),
                    ("RABBITMQ_LOG_BASE", format!("{d}/log")),
                    ("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{d}/plugins")),
                    ("RABBITMQ_PID_FILE", format!("{d}/pid")),
                    ("RABBITMQ_CONFIG_FILES", format!("{d}/conf.d")),
                    ("RABBITMQ_FEATURE_FLAGS_FILE", format!("{d}/ff")),
                ] {
                    cmd.env(k, v);
                }
                cmd.current_dir(&self.dir);
                cmd
            }
        };
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("broker.log")).unwrap();
        cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("{:?}: cannot start its server: {e}", self.kind)));
    }

    /// The server's process: RabbitMQ's Erlang VM writes its own pid file.
    fn pid(&self) -> Option<u32> {
        match self.kind {
            Kind::Amqp => std::fs::read_to_string(self.dir.join("pid")).ok()?.trim().parse().ok(),
            _ => self.child.as_ref().map(std::process::Child::id),
        }
    }

    /// Waits until the server takes connections (and, for RabbitMQ, has written its pid).
    async fn ready(&self) {
        let addr = format!("127.0.0.1:{}", self.port);
        eventually(Duration::from_secs(90), &format!("{:?} takes connections on {addr}", self.kind), || {
            std::net::TcpStream::connect(&addr).is_ok() && self.pid().is_some()
        })
        .await;
    }

    /// Stops the server (SIGTERM) and waits until it is gone.
    async fn stop(&mut self) {
        let pid = self.pid().expect("running");
        command("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
        let alive = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
        };
        eventually(Duration::from_secs(60), "the broker stops", || !alive(pid)).await;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.kind == Kind::Amqp {
            let _ = std::fs::remove_file(self.dir.join("pid"));
        }
    }

    async fn restart(&mut self) {
        self.boot().await;
    }

    /// Starts the server and waits until it takes logins. RabbitMQ nodes boot one at a time
    /// in a test process: several Erlang VMs booting at once on a small machine take minutes.
    async fn boot(&mut self) {
        static RABBIT_BOOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one_at_a_time = if self.kind == Kind::Amqp { Some(RABBIT_BOOT.lock().await) } else { None };
        self.spawn();
        self.ready().await;
        if self.kind == Kind::Amqp {
            python_brokers(&["amqp-ping", &self.consumer_url(), "-"]);
        }
    }

    /// Stops the server and removes its directory once this test process has exited.
    fn reaper(&self) {
        let cleanup = format!(
            "kill -TERM $(cat {d}/pid 2>/dev/null) {child} 2>/dev/null; sleep 5; rm -rf {d}",
            d = self.dir.display(),
            child = self.child.as_ref().map_or(0, std::process::Child::id),
        );
        after_this_process(&cleanup, "the broker");
    }

    /// The URL the consumer uses (with the password).
    fn consumer_url(&self) -> String {
        match self.kind {
            Kind::Amqp => format!("amqp://vod:{}@127.0.0.1:{}/%2F", self.password, self.port),
            Kind::Nats => format!("nats://vod:{}@127.0.0.1:{}", self.password, self.port),
            Kind::Redis => format!("redis://:{}@127.0.0.1:{}/0", self.password, self.port),
        }
    }

    /// The queue, stream or key the test reads.
    fn target(&self) -> &'static str {
        match self.kind {
            Kind::Amqp => "vod-events",
            Kind::Nats => "VOD",
            Kind::Redis => "vod:events",
        }
    }

    /// Declares what the handler publishes to (RabbitMQ: exchange, queue and binding; NATS: the stream).
    fn prepare(&self) {
        let mode = match self.kind {
            Kind::Amqp => "amqp-prepare",
            Kind::Nats => "nats-prepare",
            Kind::Redis => return,
        };
        python_brokers(&[mode, &self.consumer_url(), self.target()]);
    }

    /// `[handlers.h]` for this broker, its password (`password`) inline in the URL for
    /// RabbitMQ and in a file (mode 0600, in `dir`) for NATS and Redis.
    fn section(&self, dir: &Path, password: &str, extra: &str) -> String {
        let file = dir.join("broker-password");
        std::fs::write(&file, password).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (port, file) = (self.port, file.display());
        let own = match self.kind {
            Kind::Amqp => format!(
                "type = \"amqp\"\nurl = \"amqp://vod:{password}@127.0.0.1:{port}/%2F\"\nexchange = \"vod\"\nrouting_key = \"vod.{{source}}.{{event_type}}\"\n"
            ),
            Kind::Nats => format!(
                "type = \"nats\"\nurl = \"nats://vod@127.0.0.1:{port}\"\npassword_file = \"{file}\"\nstream = \"VOD\"\nsubject = \"vod.{{source}}.{{event_type}}\"\n"
            ),
            Kind::Redis => format!(
                "type = \"redis\"\nurl = \"redis://127.0.0.1:{port}/0\"\npassword_file = \"{file}\"\nstream = \"vod:events\"\n"
            ),
        };
        format!("[handlers.h]\n{own}timeout = \"5s\"\n{extra}\n")
    }

    /// Everything in the queue/stream, read by the independent client.
    fn consume(&self) -> Vec<Consumed> {
        let kind = format!("{:?}", self.kind).to_lowercase();
        let out = python_brokers(&[&kind, &self.consumer_url(), self.target()]);
        out.lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                Consumed {
                    id: v["id"].as_str().unwrap_or_default().to_string(),
                    body: base64::engine::general_purpose::STANDARD.decode(v["body_b64"].as_str().unwrap()).unwrap(),
                    meta: v["meta"].clone(),
                }
            })
            .collect()
    }
}

impl Drop for Broker {
    /// Stops the server without waiting (the reaper removes the directory later).
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = command("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        if let Some(mut child) = self.child.take() {
            if self.kind != Kind::Amqp {
                let _ = child.wait();
            }
        }
    }
}

/// One message as the independent client read it.
struct Consumed {
    id: String,
    body: Vec<u8>,
    meta: serde_json::Value,
}

/// Runs `tests/py/brokers_consume.py` in the tests' broker venv; its stdout.
fn python_brokers(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/brokers_consume.py");
    let out = command(broker_python()).arg(&script).args(args).output().unwrap();
    assert!(out.status.success(), "brokers_consume.py {}: {}", args[0], String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The Python with `pika`, `nats-py` and `redis`: a virtual environment of the tests' own
/// (`target/tmp/py-brokers-venv`), made once from `tests/py/brokers-requirements.txt`.
fn broker_python() -> &'static Path {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let requirements_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/brokers-requirements.txt");
        let requirements = std::fs::read_to_string(&requirements_path).unwrap();
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-brokers-venv");
        let (stamp, python) = (venv.join("requirements.installed"), venv.join("bin/python"));
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(requirements.as_str()) {
            return python;
        }
        run(
            command("python3").args(["-m", "venv", "--clear"]).arg(&venv),
            "python3 -m venv (apt install python3-venv)",
        );
        run(
            command(&python)
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(&requirements_path),
            "pip install -r tests/py/brokers-requirements.txt (into the tests' own virtual environment)",
        );
        std::fs::write(&stamp, requirements).unwrap();
        python
    })
}

/// Fast retries, and a route of every event to `h`.
const DISPATCH: &str =
    "[dispatch]\nretry_schedule = [\"100ms\", \"200ms\", \"500ms\", \"1s\"]\npoll_interval = \"100ms\"\n[[routes]]\nevents = [\"*\"]\nhandlers = [\"h\"]\n";

/// A daemon for `emu` with `extra` config on `backend`.
async fn daemon(emu: &vod_emulator::Emulator, extra: &str, backend: Backend) -> TestDaemon {
    TestDaemon::start_full_on(&emu.endpoint(), &format!("{DISPATCH}{extra}"), "vod_eventd=info", &[], backend).await
}

fn done(daemon: &TestDaemon) -> i64 {
    daemon.delivery_states().get("done").copied().unwrap_or(0)
}

/// Every delivery's `webhook-id` with its event's stored content.
fn expected(daemon: &TestDaemon) -> HashMap<String, String> {
    let store = daemon.store().unwrap();
    let deliveries = store.deliveries().unwrap();
    deliveries.into_iter().map(|d| (d.webhook_id, store.get_event(d.event_id).unwrap().unwrap().content)).collect()
}

/// Checks that every expected delivery is in `got` with its exact body; returns how many
/// messages repeated an id (each repeat checked to carry the same body).
fn check_all_there(expected: &HashMap<String, String>, got: &[Consumed]) -> usize {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for m in got {
        let content = expected.get(&m.id).unwrap_or_else(|| panic!("a message with an unknown id `{}`", m.id));
        assert_eq!(m.body, content.as_bytes(), "the body is the stored eventContent, byte-exact ({})", m.id);
        *seen.entry(m.id.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = expected.keys().filter(|id| !seen.contains_key(id.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{} of {} deliveries never reached the broker: {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
    seen.values().map(|n| n - 1).sum()
}

/// The process's user+system CPU time so far (clock ticks → seconds).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

async fn every_event_once_byte_exact_with_its_id(kind: Kind) {
    let broker = Broker::start(kind).await;
    broker.prepare();
    let emu = emulator(fast_emulator_config()).await;
    emu.enqueue_generated(MANY);
    let scratch = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let daemon = daemon(&emu, &broker.section(scratch.path(), PASSWORD, "concurrency = 16"), Backend::Sqlite).await;
    let pid = daemon.child.as_ref().and_then(tokio::process::Child::id).unwrap();
    eventually(Duration::from_secs(240), &format!("{MANY} deliveries done"), || done(&daemon) == MANY as i64).await;
    let (elapsed, cpu) = (started.elapsed(), cpu_seconds(pid));
    eprintln!(
        "{kind:?}: {MANY} events pulled, stored and published in {elapsed:.1?} ({:.0}/s), daemon CPU {cpu:.2}s ({:.0} µs/event)",
        MANY as f64 / elapsed.as_secs_f64(),
        cpu * 1e6 / MANY as f64
    );
    let expected = expected(&daemon);
    assert_eq!(expected.len(), MANY);
    let got = broker.consume();
    assert_eq!(check_all_there(&expected, &got), 0, "no event twice without a crash");
    assert_eq!(got.len(), MANY);
    for m in &got {
        match kind {
            Kind::Amqp => {
                assert_eq!(m.meta["delivery_mode"], 2, "persistent");
                assert_eq!(m.meta["content_type"], "application/json");
                assert!(m.meta["headers"]["x-vod-event-type"].is_string(), "{}", m.meta);
                assert_eq!(m.meta["headers"]["x-vod-source"], "default");
            }
            Kind::Nats => {
                assert!(m.meta["headers"]["X-Vod-Event-Type"].is_string(), "{}", m.meta);
                assert!(m.meta["subject"].as_str().unwrap().starts_with("vod.default."), "{}", m.meta);
            }
            Kind::Redis => {
                assert!(m.meta["type"].is_string() && m.meta["source"] == "default", "{}", m.meta);
            }
        }
    }
    let log = daemon.log();
    assert!(!log.contains(PASSWORD), "the broker password is in the log");
}

async fn a_broker_stopped_mid_stream_loses_nothing(kind: Kind) {
    const N: usize = 600;
    let mut broker = Broker::start(kind).await;
    broker.prepare();
    let emu = emulator(fast_emulator_config()).await;
    emu.enqueue_generated(N);
    let scratch = tempfile::tempdir().unwrap();
    // Paced so that the stop lands mid-stream; the breaker pauses the handler after 5
    // failures in a row and probes every second.
    let extra = "concurrency = 4\nrate = \"100/s\"\npause_after = 5\nprobe_interval = \"1s\"";
    let daemon = daemon(&emu, &broker.section(scratch.path(), PASSWORD, extra), Backend::Sqlite).await;
    eventually(Duration::from_secs(120), "the first deliveries done", || done(&daemon) >= 100).await;
    broker.stop().await;
    let at_stop = done(&daemon);
    eventually(Duration::from_secs(30), "attempts fail while the broker is down", || {
        daemon.log().contains("Delivery attempt failed")
    })
    .await;
    eventually(Duration::from_secs(30), "the breaker pauses the handler", || handlers_list(&daemon).contains("paused"))
        .await;
    tokio::time::sleep(BROKER_DOWN).await; // the outage itself, not a synchronisation
    let during = done(&daemon);
    assert!(during - at_stop <= 8, "nothing is done while the broker is down ({at_stop} → {during})");
    let back = Instant::now();
    broker.restart().await;
    eventually(Duration::from_secs(180), "every delivery done after the broker came back", || {
        done(&daemon) == N as i64
    })
    .await;
    eprintln!(
        "{kind:?}: broker down {BROKER_DOWN:?} at {at_stop}/{N}; the rest done {:.1?} after it was back",
        back.elapsed()
    );
    let states = daemon.delivery_states();
    assert_eq!(states.get("dead"), None, "no delivery died: {states:?}");
    let got = broker.consume();
    let repeats = check_all_there(&expected(&daemon), &got);
    eprintln!("{kind:?}: {} messages for {N} deliveries ({repeats} repeats, each under its id)", got.len());
    assert!(!handlers_list(&daemon).contains("paused"), "the first success resumed it: {}", handlers_list(&daemon));
}

/// `vod-eventd handlers list` for the daemon's config.
fn handlers_list(daemon: &TestDaemon) -> String {
    let out = cli().args(["handlers", "list", "--config"]).arg(&daemon.config_path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn sigkill_under_load_loses_nothing(kind: Kind, backend: Backend) {
    const N: usize = 1000;
    const KILLS: usize = 10;
    let broker = Broker::start(kind).await;
    broker.prepare();
    let emu = emulator(fast_emulator_config()).await;
    emu.enqueue_generated(N);
    let scratch = tempfile::tempdir().unwrap();
    let section = broker.section(scratch.path(), PASSWORD, "concurrency = 8\nrate = \"300/s\"");
    let mut daemon = daemon(&emu, &section, backend).await;
    for k in 1..=KILLS {
        let target = (N * k / (KILLS + 2)) as i64;
        eventually(Duration::from_secs(120), &format!("{target} done before kill {k}"), || done(&daemon) >= target)
            .await;
        daemon.kill9().await;
        daemon.spawn();
    }
    eventually(Duration::from_secs(240), "every delivery done after the kills", || done(&daemon) == N as i64).await;
    let got = broker.consume();
    let repeats = check_all_there(&expected(&daemon), &got);
    eprintln!(
        "{kind:?}: {KILLS} SIGKILLs; {} messages for {N} deliveries ({repeats} repeats, each under its id), {}",
        got.len(),
        backend.label()
    );
    if kind == Kind::Nats {
        assert_eq!(repeats, 0, "JetStream dropped every repeat (Nats-Msg-Id inside the duplicate window)");
    }
    if kind == Kind::Nats && backend == Backend::Sqlite {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let conn = rusqlite::Connection::open_with_flags(&daemon.db_path, flags).unwrap();
        let dropped: i64 = conn
            .query_row(
                "SELECT count(*) FROM attempts WHERE excerpt LIKE '%duplicate, dropped by the stream%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        eprintln!("Nats: {dropped} publishes were repeats that JetStream acked as duplicates and dropped");
    }
}

async fn wrong_credentials_name_the_handler_and_the_key(kind: Kind) {
    let broker = Broker::start(kind).await;
    broker.prepare();
    let emu = emulator(fast_emulator_config()).await;
    emu.enqueue_generated(3);
    let scratch = tempfile::tempdir().unwrap();
    let daemon = daemon(&emu, &broker.section(scratch.path(), WRONG, ""), Backend::Sqlite).await;
    let key = match kind {
        Kind::Amqp => "handlers.h.url",
        _ => "handlers.h.password_file",
    };
    eventually(Duration::from_secs(60), "a failed attempt naming the key", || daemon.log().contains(key)).await;
    eventually(Duration::from_secs(60), "the check at start warns", || {
        daemon.log().contains("Broker handler cannot publish yet")
    })
    .await;
    let log = daemon.log();
    assert!(!log.contains(WRONG) && !log.contains(PASSWORD), "a password in the log:\n{}", tail(&log));
    assert_eq!(done(&daemon), 0);
    assert_eq!(daemon.delivery_states().get("dead"), None, "a wrong password is retried, not dead");
    let out = cli().args(["config", "check", "--online", "--config"]).arg(&daemon.config_path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "config check --online fails: {text}");
    assert!(text.contains("handlers.h") && text.contains(key), "{text}");
    assert!(!text.contains(WRONG), "{text}");
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Runs every broker case against each broker: `brokers!(name: Kind, ...)`.
macro_rules! brokers {
    ($($name:ident: $kind:expr),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_event_once_byte_exact_with_its_id() {
                super::every_event_once_byte_exact_with_its_id($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_broker_stopped_mid_stream_loses_nothing() {
                super::a_broker_stopped_mid_stream_loses_nothing($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sigkill_under_load_loses_nothing() {
                super::sigkill_under_load_loses_nothing($kind, Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sigkill_under_load_loses_nothing_on_postgresql() {
                super::sigkill_under_load_loses_nothing($kind, Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn wrong_credentials_name_the_handler_and_the_key() {
                super::wrong_credentials_name_the_handler_and_the_key($kind).await
            }
        }
    )*};
}

brokers!(amqp: Kind::Amqp, nats: Kind::Nats, redis: Kind::Redis);

/// Events in each benchmark run.
const BENCH_EVENTS: usize = 5000;

/// Deliveries of the daemon whose store is `db` that are done (read-only, cheap).
fn done_in(db: &Path) -> i64 {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(conn) = rusqlite::Connection::open_with_flags(db, flags) else { return 0 };
    let _ = conn.busy_timeout(Duration::from_secs(1));
    conn.query_row("SELECT count(*) FROM deliveries WHERE state = 'done'", [], |r| r.get(0)).unwrap_or(0)
}

/// One benchmark run: [`BENCH_EVENTS`] events through the daemon binary `bin` (the release
/// build when `BROKER_BENCH_BIN` names it) to one handler `section`; (events/s, daemon CPU
/// seconds per 1,000 events), from the daemon's start to the last delivery done.
async fn bench_one(bin: &str, section: impl Fn(&vod_emulator::Emulator) -> String) -> (f64, f64) {
    // Neither the emulator nor the daemon paces the pulls: the handler is the bottleneck.
    let config = vod_emulator::EmulatorConfig { rate_limit_per_minute: None, ..fast_emulator_config() };
    let emu = emulator(config).await;
    emu.enqueue_generated(BENCH_EVENTS);
    let section = section(&emu);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let config_path = dir.path().join("config.toml");
    write_private(
        &config_path,
        &config_text(&db, &emu.endpoint(), "", &format!("rate_limit_per_minute = 1000000\n{DISPATCH}{section}")),
    );
    let started = Instant::now();
    let mut child = tokio::process::Command::from(command(bin))
        .args(["run", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "vod_eventd=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let deadline = started + Duration::from_secs(300);
    while done_in(&db) < BENCH_EVENTS as i64 {
        assert!(Instant::now() < deadline, "the benchmark run did not finish: {section}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (elapsed, cpu) = (started.elapsed(), cpu_seconds(pid));
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    (BENCH_EVENTS as f64 / elapsed.as_secs_f64(), cpu * 1000.0 / BENCH_EVENTS as f64)
}

/// BENCHMARKS.md's broker table: each broker handler against the webhook handler, in one
/// run, concurrency 16. `BROKER_BENCH_BIN=target/release/vod-eventd cargo test --test it
/// brokers::bench -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand for BENCHMARKS.md"]
async fn bench_against_the_webhook() {
    let bin = std::env::var("BROKER_BENCH_BIN").unwrap_or_else(|_| BIN.to_string());
    let scratch = tempfile::tempdir().unwrap();
    // The webhook goes to the emulator's own sink, as in `bench/run.sh`.
    let webhook = |emu: &vod_emulator::Emulator| {
        format!(
            "[handlers.h]\ntype = \"webhook\"\nurl = \"http://{}/_emulator/webhook\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nconcurrency = 16\n",
            emu.addr()
        )
    };
    let mut rows = vec![("webhook (emulator sink)".to_string(), bench_one(&bin, webhook).await)];
    for kind in [Kind::Amqp, Kind::Nats, Kind::Redis] {
        let broker = Broker::start(kind).await;
        broker.prepare();
        let section = broker.section(scratch.path(), PASSWORD, "concurrency = 16");
        rows.push((
            format!("{kind:?}").to_lowercase(),
            bench_one(&bin, |_: &vod_emulator::Emulator| section.clone()).await,
        ));
    }
    eprintln!("| handler | events | events/s (pull, store, deliver) | daemon CPU per 1,000 events |");
    for (name, (rate, cpu)) in rows {
        eprintln!("| {name} | {BENCH_EVENTS} | {rate:.0} | {cpu:.3} s |");
    }
}

/// A TCP proxy in front of a broker that counts, in what the client sends, each occurrence
/// of one delivery id (so refused publishes count too, as a webhook receiver records a
/// refused request), and knows whether a sent id still waits for its answer: until the
/// broker answers, the connection closes or the client sends something else (an AMQP
/// client stopping an attempt closes its connection with a `Connection.Close` and waits
/// for the broker's answer, which a hanging broker never sends).
struct Sniffer {
    port: u16,
    state: std::sync::Arc<std::sync::Mutex<SniffState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct SniffState {
    seen: usize,
    /// Answers are held back (the broker "hangs").
    hold: bool,
    /// Connections with an id sent and no byte back since.
    waiting: std::collections::HashSet<u64>,
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sniffer {
    async fn start(upstream: u16, id: &'static [u8]) -> Sniffer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state: std::sync::Arc<std::sync::Mutex<SniffState>> = Default::default();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            for n in 0u64.. {
                let Ok((client, _)) = listener.accept().await else { continue };
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                let (state, back) = (shared.clone(), shared.clone());
                let ((mut cr, mut cw), (mut sr, mut sw)) = (client.into_split(), server.into_split());
                connections.spawn(async move {
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(k) = cr.read(&mut buf).await {
                            if k == 0 {
                                break;
                            }
                            let hits = buf[..k].windows(id.len()).filter(|w| *w == id).count();
                            {
                                let mut s = state.lock().unwrap();
                                if hits > 0 {
                                    s.seen += hits;
                                    s.waiting.insert(n);
                                } else {
                                    // The client moved on (e.g. it is closing the connection).
                                    s.waiting.remove(&n);
                                }
                            }
                            if sw.write_all(&buf[..k]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(k) = sr.read(&mut buf).await {
                            if k == 0 {
                                break;
                            }
                            {
                                let mut s = back.lock().unwrap();
                                // Held: what answers a sent id (the handshake before it passes).
                                if s.hold && s.waiting.contains(&n) {
                                    continue;
                                }
                                s.waiting.remove(&n);
                            }
                            if cw.write_all(&buf[..k]).await.is_err() {
                                break;
                            }
                        }
                    };
                    // Either side closing ends the connection (and whatever waited on it).
                    tokio::select! { _ = up => {}, _ = down => {} }
                    back.lock().unwrap().waiting.remove(&n);
                });
            }
        });
        Sniffer { port, state, task }
    }
}

/// Redis under the handler contract (`contract.rs`): accepted is an `XADD`; refused
/// (transient) is Redis's own `NOREPLICAS` (`min-replicas-to-write 1` with no replica);
/// rejected (permanent) is `WRONGTYPE` (the stream key holds a string); hanging is
/// `CLIENT PAUSE ... WRITE`. The id is counted by a [`Sniffer`] in front of it.
pub(crate) struct RedisSubject {
    broker: Broker,
    sniffer: Sniffer,
}

impl RedisSubject {
    fn admin(&self, args: &[&str]) {
        let mut conn = ::redis::Client::open(self.broker.consumer_url()).unwrap().get_connection().unwrap();
        let mut cmd = ::redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let _: ::redis::Value = cmd.query(&mut conn).unwrap();
    }
}

impl crate::contract::Subject for RedisSubject {
    async fn start(_: &Path) -> Self {
        let broker = Broker::start_with(Kind::Redis, crate::contract::SECRET).await;
        let sniffer = Sniffer::start(broker.port, b"msg_contract_0007").await;
        RedisSubject { broker, sniffer }
    }
    fn section(&self, timeout: &str) -> String {
        format!(
            "type = \"redis\"\nurl = \"redis://:{}@127.0.0.1:{}/0\"\nstream = \"contract\"\ntimeout = \"{timeout}\"\n",
            crate::contract::SECRET,
            self.sniffer.port
        )
    }
    fn answer(&self, answer: crate::contract::Answer) {
        use crate::contract::Answer;
        self.admin(&["CLIENT", "UNPAUSE"]);
        self.admin(&["CONFIG", "SET", "min-replicas-to-write", "0"]);
        self.admin(&["DEL", "contract"]);
        match answer {
            Answer::Accept => {}
            Answer::Refuse => self.admin(&["CONFIG", "SET", "min-replicas-to-write", "1"]),
            Answer::Reject => self.admin(&["SET", "contract", "not a stream"]),
            Answer::Hang => self.admin(&["CLIENT", "PAUSE", "60000", "WRITE"]),
        }
    }
    fn ids(&self) -> Vec<String> {
        vec!["msg_contract_0007".to_string(); self.sniffer.state.lock().unwrap().seen]
    }
    fn busy(&self) -> bool {
        !self.sniffer.state.lock().unwrap().waiting.is_empty()
    }
}

/// NATS JetStream under the handler contract: accepted is a publish acked by the stream
/// `CONTRACT`; refused (transient) is the stream full with `discard new`; rejected
/// (permanent) is a body over the stream's maximum message size; hanging is a [`Sniffer`]
/// holding the server's answers back.
pub(crate) struct NatsSubject {
    broker: Broker,
    sniffer: Sniffer,
}

impl crate::contract::Subject for NatsSubject {
    async fn start(_: &Path) -> Self {
        let broker = Broker::start_with(Kind::Nats, crate::contract::SECRET).await;
        python_brokers(&["nats-contract", &broker.consumer_url(), "ok"]);
        let sniffer = Sniffer::start(broker.port, b"msg_contract_0007").await;
        NatsSubject { broker, sniffer }
    }
    fn section(&self, timeout: &str) -> String {
        format!(
            "type = \"nats\"\nurl = \"nats://vod:{}@127.0.0.1:{}\"\nstream = \"CONTRACT\"\nsubject = \"contract.{{event_type}}\"\ntimeout = \"{timeout}\"\n",
            crate::contract::SECRET,
            self.sniffer.port
        )
    }
    fn answer(&self, answer: crate::contract::Answer) {
        use crate::contract::Answer;
        let mode = match answer {
            Answer::Refuse => "full",
            Answer::Reject => "tiny",
            Answer::Accept | Answer::Hang => "ok",
        };
        python_brokers(&["nats-contract", &self.broker.consumer_url(), mode]);
        self.sniffer.state.lock().unwrap().hold = answer == Answer::Hang;
    }
    fn ids(&self) -> Vec<String> {
        vec!["msg_contract_0007".to_string(); self.sniffer.state.lock().unwrap().seen]
    }
    fn busy(&self) -> bool {
        !self.sniffer.state.lock().unwrap().waiting.is_empty()
    }
}

/// RabbitMQ under the handler contract: accepted is a confirm with the exchange `contract`
/// routed to a queue; refused (transient) is a nack from a queue at its length limit with
/// `reject-publish`; rejected (permanent) is an unroutable message; hanging is a
/// [`Sniffer`] holding the broker's answers back.
pub(crate) struct AmqpSubject {
    broker: Broker,
    sniffer: Sniffer,
}

impl crate::contract::Subject for AmqpSubject {
    async fn start(_: &Path) -> Self {
        let broker = Broker::start_with(Kind::Amqp, crate::contract::SECRET).await;
        python_brokers(&["amqp-contract", &broker.consumer_url(), "ok"]);
        let sniffer = Sniffer::start(broker.port, b"msg_contract_0007").await;
        AmqpSubject { broker, sniffer }
    }
    fn section(&self, timeout: &str) -> String {
        format!(
            "type = \"amqp\"\nurl = \"amqp://vod:{}@127.0.0.1:{}/%2F\"\nexchange = \"contract\"\nrouting_key = \"contract.{{event_type}}\"\ntimeout = \"{timeout}\"\n",
            crate::contract::SECRET,
            self.sniffer.port
        )
    }
    fn answer(&self, answer: crate::contract::Answer) {
        use crate::contract::Answer;
        let mode = match answer {
            Answer::Refuse => "full",
            Answer::Reject => "none",
            Answer::Accept | Answer::Hang => "ok",
        };
        python_brokers(&["amqp-contract", &self.broker.consumer_url(), mode]);
        self.sniffer.state.lock().unwrap().hold = answer == Answer::Hang;
    }
    fn ids(&self) -> Vec<String> {
        vec!["msg_contract_0007".to_string(); self.sniffer.state.lock().unwrap().seen]
    }
    fn busy(&self) -> bool {
        !self.sniffer.state.lock().unwrap().waiting.is_empty()
    }
}
