//! Test support: the real `vod-eventd` binary as a child process, pointed at an
//! in-process emulator on a port from the OS, with its store in a temp dir.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use vod_emulator::{Emulator, EmulatorConfig, DEMO_SECRET_ID, DEMO_SECRET_KEY};
use vod_eventd::store::Store;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_vod-eventd");

/// The only variables a child of the tests inherits from the test process.
const INHERITED: [&str; 2] = ["PATH", "HOME"];

/// Runs `cleanup` (a shell command) once this test process has exited, however it ends: for
/// servers a test run starts once and shares (a PostgreSQL cluster, a broker), which no
/// test owns long enough to stop. The shell is never waited for: it outlives the process.
pub fn after_this_process(cleanup: &str, what: &str) {
    let script = format!("while kill -0 {} 2>/dev/null; do sleep 0.5; done; {cleanup}", std::process::id());
    #[allow(clippy::zombie_processes)]
    let _reaper = command("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start the reaper of {what}: {e}"));
}

/// A command for any child the tests start: an empty environment plus PATH and HOME, so
/// no variable of the caller's shell (a `VOD_EVENTD_*` config key, a proxy, a log level)
/// reaches it; whatever else it needs, the test sets.
pub fn command(program: impl AsRef<OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.env_clear();
    for name in INHERITED {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd
}

/// The binary under test, for a CLI call, with [`command`]'s environment.
pub fn cli() -> std::process::Command {
    command(BIN)
}

/// Waits until `cond` holds, checking every 50 ms; panics with `what` after `limit`.
pub async fn eventually<F: FnMut() -> bool>(limit: Duration, what: &str, mut cond: F) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A daemon under test, with its emulator, temp dir and log.
pub struct TestDaemon {
    /// Keeps the temp dir alive for the daemon's lifetime.
    pub _dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub db_path: PathBuf,
    pub log_path: PathBuf,
    pub child: Option<Child>,
    /// `RUST_LOG` for the child.
    pub rust_log: String,
    /// Extra environment for the child.
    pub env: Vec<(String, String)>,
    /// The PostgreSQL store's URL, when the daemon runs on one (`store.url`).
    pub pg_url: Option<String>,
}

/// The store a test runs the daemon on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the daemon's temp dir.
    Sqlite,
    /// A fresh database in the tests' PostgreSQL cluster.
    Postgres,
}

impl Backend {
    /// How reports name it.
    pub fn label(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// An emulator with test-friendly defaults: a 1 s long-poll hold.
pub async fn emulator(config: EmulatorConfig) -> Emulator {
    Emulator::start(config).await.expect("emulator starts")
}

pub fn fast_emulator_config() -> EmulatorConfig {
    EmulatorConfig { hold: Duration::from_secs(1), ..EmulatorConfig::default() }
}

impl TestDaemon {
    /// Writes a config for `endpoint` plus `extra` TOML (appended to the sections) and
    /// starts the daemon.
    pub async fn start(endpoint: &str, extra: &str) -> TestDaemon {
        Self::start_logged(endpoint, extra, "vod_eventd=debug").await
    }

    /// Starts a daemon speaking the API `emu` generates events for.
    pub async fn for_emulator(emu: &Emulator, extra: &str) -> TestDaemon {
        Self::start(&emu.endpoint_for(emu.api()), &format!("{}{extra}", api_line(emu.api()))).await
    }

    /// [`TestDaemon::start`] on the store `backend` names.
    pub async fn start_on(endpoint: &str, extra: &str, backend: Backend) -> TestDaemon {
        match backend {
            Backend::Sqlite => Self::start(endpoint, extra).await,
            Backend::Postgres => crate::pg::pg_daemon_at(endpoint, &crate::pg::database().await, extra).await,
        }
    }

    /// [`TestDaemon::start_logged`] on the store `backend` names.
    pub async fn start_on_logged(endpoint: &str, extra: &str, rust_log: &str, backend: Backend) -> TestDaemon {
        match backend {
            Backend::Sqlite => Self::start_logged(endpoint, extra, rust_log).await,
            Backend::Postgres => {
                let (url, node) = (crate::pg::database().await, format!("test-{:08x}", rand::random::<u32>()));
                crate::pg::pg_node_logged(endpoint, &url, extra, &node, rust_log).await
            }
        }
    }

    /// [`TestDaemon::start_full`] on the store `backend` names.
    pub async fn start_full_on(
        endpoint: &str,
        extra: &str,
        rust_log: &str,
        env: &[(&str, &str)],
        backend: Backend,
    ) -> TestDaemon {
        match backend {
            Backend::Sqlite => Self::start_full(endpoint, extra, rust_log, env).await,
            Backend::Postgres => {
                let (url, node) = (crate::pg::database().await, format!("test-{:08x}", rand::random::<u32>()));
                crate::pg::pg_node_full(endpoint, &url, extra, &node, rust_log, env).await
            }
        }
    }

    /// [`TestDaemon::for_emulator`] on the store `backend` names.
    pub async fn for_emulator_on(emu: &Emulator, extra: &str, backend: Backend) -> TestDaemon {
        match backend {
            Backend::Sqlite => Self::for_emulator(emu, extra).await,
            Backend::Postgres => crate::pg::pg_daemon(emu, &crate::pg::database().await, extra).await,
        }
    }

    /// Like [`TestDaemon::start`] with a chosen `RUST_LOG`.
    pub async fn start_logged(endpoint: &str, extra: &str, rust_log: &str) -> TestDaemon {
        Self::start_full(endpoint, extra, rust_log, &[]).await
    }

    /// Like [`TestDaemon::start`] with a chosen `RUST_LOG` and extra environment.
    pub async fn start_full(endpoint: &str, extra: &str, rust_log: &str, env: &[(&str, &str)]) -> TestDaemon {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("events.db");
        let config_path = dir.path().join("config.toml");
        write_private(&config_path, &config_text(&db_path, endpoint, "", extra));
        let log_path = dir.path().join("daemon.log");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let rust_log = rust_log.to_string();
        let mut daemon =
            TestDaemon { _dir: dir, config_path, db_path, log_path, child: None, rust_log, env, pg_url: None };
        daemon.spawn();
        daemon
    }

    /// (Re)starts the child process; its stderr is appended to the log file.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).unwrap();
        let child = Command::from(cli())
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", &self.rust_log)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn vod-eventd");
        self.child = Some(child);
    }

    /// SIGKILL, and reap.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("running");
        tokio::time::timeout(Duration::from_secs(40), child.wait()).await.expect("exits after SIGTERM").unwrap()
    }

    /// Sends a signal (`"HUP"`, `"TERM"`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().and_then(|c| c.id()).expect("running");
        command("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap();
    }

    /// Replaces the config file (for reload tests); `store_extra` adds [store] keys.
    pub fn rewrite_config(&self, endpoint: &str, store_extra: &str, extra: &str) {
        let store_extra = match &self.pg_url {
            Some(url) => format!("url = \"{url}\"\n{store_extra}"),
            None => store_extra.to_string(),
        };
        std::fs::write(&self.config_path, config_text(&self.db_path, endpoint, &store_extra, extra)).unwrap();
    }

    /// The exit code once the child has exited (`None` while it runs or after a signal).
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap()).and_then(|status| status.code())
    }

    /// True while the child has not exited.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// The store, once the daemon created it (on PostgreSQL, opened as the CLI opens it).
    pub fn store(&self) -> Option<Store> {
        match &self.pg_url {
            Some(url) => {
                let config = vod_eventd::config::StoreConfig { url: Some(url.clone().into()), ..Default::default() };
                Store::open_for_cli(&config).ok()
            }
            None => Store::open_existing(&self.db_path, Duration::from_secs(5)).ok(),
        }
    }

    /// Number of stored rows (0 before the store exists).
    pub fn rows(&self) -> i64 {
        match &self.pg_url {
            Some(url) => {
                crate::pg::psql(url, "SELECT count(*) FROM events").first().map_or(0, |r| r[0].parse().unwrap())
            }
            None => self.store().map_or(0, |s| s.count_events().unwrap()),
        }
    }

    /// Every delivery as `(handler, state, webhook_id)`, whichever backend (none before the
    /// store exists).
    pub fn deliveries(&self) -> Vec<(String, String, String)> {
        let Some(store) = self.store() else { return Vec::new() };
        store.deliveries().unwrap_or_default().into_iter().map(|d| (d.handler, d.state, d.webhook_id)).collect()
    }

    /// Number of deliveries in each state, whichever backend.
    pub fn delivery_states(&self) -> std::collections::HashMap<String, i64> {
        let mut states = std::collections::HashMap::new();
        for (_, state, _) in self.deliveries() {
            *states.entry(state).or_default() += 1;
        }
        states
    }

    /// [`stored_keys`] of this daemon's store, whichever backend (empty before it exists).
    pub fn stored_keys(&self) -> std::collections::HashMap<String, i64> {
        self.store().map(|s| stored_keys(&s)).unwrap_or_default()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// Writes a config file as an operator should (mode 0600): it holds the demo secret
/// inline, which a file others can read is warned about.
pub fn write_private(path: &std::path::Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// A daemon config: `extra` goes after the [vod] keys, so it may add to [vod] or open any
/// other section (but [account], which is set here: the account calls go to the same
/// emulator, which serves API 3.0 at its root; set `VOD_EVENTD_ACCOUNT__CHECK_INTERVAL` to
/// check more often).
pub fn config_text(db_path: &std::path::Path, endpoint: &str, store_extra: &str, extra: &str) -> String {
    let mut account = reqwest::Url::parse(endpoint).expect("an endpoint URL");
    account.set_path("/");
    format!(
        "[account]\nendpoint = \"{account}\"\n[store]\npath = \"{}\"\n{store_extra}\n[vod]\nendpoint = \"{endpoint}\"\nsecret_id = \"{DEMO_SECRET_ID}\"\nsecret_key = \"{DEMO_SECRET_KEY}\"\n{extra}\n",
        db_path.display()
    )
}

/// The `[vod]` line that selects `api`.
pub fn api_line(api: vod_emulator::Api) -> &'static str {
    match api {
        vod_emulator::Api::V2 => "",
        vod_emulator::Api::V3 => "api = \"v3\"\n",
    }
}

/// PullEvent (v2) plus PullEvents (v3) calls the emulator answered.
pub fn pull_calls(emu: &Emulator) -> u64 {
    let calls = emu.stats().api.calls;
    calls.get("PullEvent").copied().unwrap_or(0) + calls.get("PullEvents").copied().unwrap_or(0)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Every stored event's dedupe key (hex) with its times_seen. Panics if a content has more
/// than one row: none of the tests using this sends a content again after its confirm, so a
/// second occurrence would be a redelivery stored twice.
pub fn stored_keys(store: &Store) -> std::collections::HashMap<String, i64> {
    let rows: Vec<(String, i64)> =
        store.events_after(0, u32::MAX).unwrap().into_iter().map(|e| (e.dedupe_key, e.times_seen)).collect();
    let count = rows.len();
    let keys: std::collections::HashMap<String, i64> = rows.into_iter().collect();
    assert_eq!(keys.len(), count, "a content is stored in more than one row");
    keys
}

/// Number of deliveries in each state.
pub fn delivery_states(store: &Store) -> std::collections::HashMap<String, i64> {
    let mut states = std::collections::HashMap::new();
    for d in store.deliveries().unwrap() {
        *states.entry(d.state).or_default() += 1;
    }
    states
}

/// The dedupe key (hex) the daemon computes for a content.
pub fn key_of(content: &str) -> String {
    vod_eventd::event::ReceivedEvent::from_content(content, vod_eventd::config::ApiVersion::V2).dedupe_hex()
}

/// The Python that runs the cross-checks against Tencent's official SDKs and the
/// `standardwebhooks` package: a virtual environment the tests own, made once under the
/// target dir with the pinned `tests/py/requirements.txt` and reused while that file is
/// unchanged. The system Python is never installed into.
pub fn python() -> &'static std::path::Path {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let requirements_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/requirements.txt");
        let requirements = std::fs::read_to_string(&requirements_path).unwrap();
        let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-venv");
        let stamp = venv.join("requirements.installed");
        let python = venv.join("bin/python");
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(requirements.as_str()) {
            return python;
        }
        let run = |cmd: &mut std::process::Command, what: &str| {
            let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run it: {e}"));
            assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        };
        let venv_works = std::process::Command::new("python3")
            .args(["-m", "venv", "--help"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            venv_works,
            "python3 -m venv is missing: install Debian's python3-venv package (apt install python3-venv)"
        );
        run(std::process::Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv), "python3 -m venv");
        run(
            std::process::Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(&requirements_path),
            "pip install -r tests/py/requirements.txt (into the tests' own virtual environment)",
        );
        std::fs::write(&stamp, requirements).unwrap();
        python
    })
}

/// The variable the leak test sets in a test process: were it to reach a daemon, the
/// daemon would keep its store there instead of at the path in its config file.
const LEAK_PROBE: &str = "VOD_EVENTD_STORE__PATH";

#[test]
fn no_vod_eventd_variable_of_the_test_process_reaches_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let leaked = dir.path().join("leaked.db");
    // A test process of its own, so the variable is set in no other test's process.
    let inner = "support::a_daemon_ignores_the_test_process_environment";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", inner, "--ignored", "--test-threads", "1"])
        .env(LEAK_PROBE, &leaked)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 passed"), "the inner test did not run: {stdout}");
    assert!(!leaked.exists(), "a daemon kept its store at the path of the test process's {LEAK_PROBE}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by no_vod_eventd_variable_of_the_test_process_reaches_a_daemon, with the variable set"]
async fn a_daemon_ignores_the_test_process_environment() {
    let leaked = PathBuf::from(std::env::var_os(LEAK_PROBE).expect("run with the probe variable set"));
    let emu = emulator(fast_emulator_config()).await;
    emu.enqueue_generated(5);
    let daemon = TestDaemon::for_emulator(&emu, "").await;
    eventually(Duration::from_secs(30), "events stored, at either path", || daemon.rows() == 5 || leaked.exists())
        .await;
    assert!(!leaked.exists(), "the daemon took its store path from {LEAK_PROBE}");
    let out = cli().args(["events", "list", "--json", "--config"]).arg(&daemon.config_path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5, "the CLI reads the daemon's store too");
}
