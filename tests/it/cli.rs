//! The command line as an operator meets it: config errors, a missing secret, an
//! unusable store path, refused credentials, and the history queries.

use std::process::Output;
use std::time::Duration;

use vod_emulator::{Credential, EmulatorConfig, DEMO_SECRET_ID, DEMO_SECRET_KEY};

use crate::support::*;

/// Where a fixture's store is: a SQLite file in a temp dir, or a fresh PostgreSQL database.
enum At {
    File(std::path::PathBuf),
    Url(String),
}

impl At {
    async fn new(dir: &std::path::Path, backend: Backend) -> At {
        match backend {
            Backend::Sqlite => At::File(dir.join("events.db")),
            Backend::Postgres => At::Url(crate::pg::database().await),
        }
    }

    /// The store, opened (and its schema created) as the daemon opens it.
    async fn open(&self) -> vod_eventd::store::Store {
        let config = vod_eventd::config::StoreConfig {
            path: self.path(),
            url: match self {
                At::File(_) => None,
                At::Url(url) => Some(url.clone().into()),
            },
            busy_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        vod_eventd::store::Store::open_config(&config, "fixture").await.unwrap()
    }

    /// The SQLite file (unused on PostgreSQL).
    fn path(&self) -> std::path::PathBuf {
        match self {
            At::File(path) => path.clone(),
            At::Url(_) => std::path::PathBuf::from("/nonexistent/unused.db"),
        }
    }

    /// The `store.url` line, if any.
    fn url_line(&self) -> String {
        match self {
            At::File(_) => String::new(),
            At::Url(url) => format!("url = \"{url}\"\n"),
        }
    }

    /// The lines of the `[store]` section that name it.
    fn section(&self) -> String {
        format!("path = \"{}\"\n{}", self.path().display(), self.url_line())
    }

    /// A one-byte blob literal.
    fn blob(&self, byte: u8) -> String {
        match self {
            At::File(_) => format!("X'{byte:02x}'"),
            At::Url(_) => format!("'\\x{byte:02x}'::bytea"),
        }
    }

    /// Runs `sql` straight in the store, past its API.
    async fn execute(&self, sql: &str) {
        match self {
            At::File(path) => rusqlite::Connection::open(path).unwrap().execute_batch(sql).unwrap(),
            At::Url(url) => crate::pg::connect(url).await.batch_execute(sql).await.unwrap(),
        }
    }
}

fn vod_eventd(args: &[&str]) -> Output {
    cli().args(args).output().unwrap()
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().filter(|l| !l.trim().is_empty()).map(String::from).collect()
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

// Opens no store: the same whichever backend.
#[test]
fn malformed_config_gives_one_line_naming_the_file_and_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.toml", "[vod\nsecret_id = 1\n");
    for cmd in [&["config", "check", "--config", &path][..], &["run", "--config", &path][..]] {
        let out = vod_eventd(cmd);
        assert_eq!(out.status.code(), Some(78), "{cmd:?}");
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("bad.toml"), "{lines:?}");
    }
}

// Opens no store: the same whichever backend.
#[test]
fn missing_secret_names_the_keys_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "c.toml", "[vod]\nsecret_id = \"AKID1\"\n");
    let out = cli().args(["run", "--config", &path]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("`vod.secret_key`") && lines[0].contains("secret_key_file"), "{lines:?}");
}

// Opens no store: the same whichever backend.
#[test]
fn a_systemd_credential_supplies_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("vod-secret-key"), "from-credential\n").unwrap();
    let path = write(dir.path(), "c.toml", "[vod]\nsecret_id = \"AKID1\"\n");
    let out = cli().args(["config", "check", "--config", &path]).env("CREDENTIALS_DIRECTORY", &creds).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("from-credential"));
}

// SQLite only: a file path; PostgreSQL's counterpart is a_postgresql_store_down_at_start_….
#[test]
fn unusable_store_path_gives_one_line_naming_store_path() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = write(dir.path(), "file", "x");
    let config = format!(
        "[vod]\nendpoint = \"http://127.0.0.1:9/v2/index.php\"\nsecret_id = \"AKID1\"\nsecret_key = \"k\"\n[store]\npath = \"{not_a_dir}/events.db\"\n"
    );
    let path = write(dir.path(), "c.toml", &config);
    // Readable by its owner alone: the inline secret's warning is another test's subject.
    chmod(&path, 0o600);
    let out = vod_eventd(&["run", "--config", &path]);
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("store.path") && lines[0].contains("events.db"), "{lines:?}");
}

// Opens no store: the same whichever backend.
// PostgreSQL's counterpart of unusable_store_path_…: a server that is down at start is
// waited for (it may come up), while a CLI command gives one line naming store.url.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_store_down_at_start_is_waited_for_and_a_command_names_store_url() {
    let cluster = crate::pg::Cluster::start();
    let url = crate::pg::database_in(&cluster).await;
    cluster.pg_ctl("stop");
    let emu = emulator(fast_emulator_config()).await;
    emu.enqueue_generated(3);
    let mut daemon = crate::pg::pg_daemon(&emu, &url, "").await;
    eventually(Duration::from_secs(30), "the daemon names store.url and waits", || {
        daemon.log().contains("Cannot reach PostgreSQL (store.url)")
    })
    .await;
    assert!(daemon.running(), "a store that is down at start is waited for:\n{}", daemon.log());
    assert_eq!(emu.stats().queue.delivered, 0, "nothing pulled while the store is down");
    let out = cli().args(["events", "list", "--config"]).arg(&daemon.config_path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("store.url") && lines[0].contains("unreachable"), "{lines:?}");
    assert!(!lines[0].contains("panicked"), "{lines:?}");
    cluster.pg_ctl("start");
    eventually(Duration::from_secs(60), "events stored once the server is up", || daemon.rows() == 3).await;
    assert!(daemon.terminate().await.success());
}

// Opens no store: the same whichever backend.
#[test]
fn environment_overrides_the_file_and_errors_name_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "c.toml", "[vod]\nsecret_id = \"AKID1\"\nsecret_key = \"k\"\n");
    let out = cli()
        .args(["config", "check", "--config", &path])
        .env("VOD_EVENTD_CONFIRM__BATCH_SIZE", "99")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("confirm.batch_size"));
}

// Opens no store: the same whichever backend.
#[test]
fn a_secret_that_reads_as_a_number_is_refused_without_being_shown() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "c.toml", "[vod]\nsecret_id = \"AKID1\"\n");
    let out = cli()
        .args(["config", "check", "--config", &path])
        .env("VOD_EVENTD_VOD__SECRET_KEY", "98765432109876")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("`vod.secret_key`: must be text; the value given is not shown"), "{text}");
    assert!(!text.contains("98765432109876"), "{text}");
    let path = write(dir.path(), "n.toml", "[vod]\nsecret_id = \"AKID1\"\nsecret_key = 98765432109876\n");
    let out = vod_eventd(&["config", "check", "--config", &path]);
    assert_eq!(out.status.code(), Some(78));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("n.toml") && !text.contains("98765432109876"), "{text}");
}

#[test]
fn config_check_warns_about_a_remote_postgres_without_a_checked_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let check = |url: &str| {
        let config = format!("[vod]\nsecret_id = \"AKID1\"\nsecret_key = \"k\"\n[store]\nurl = \"{url}\"\n");
        let path = write(dir.path(), "c.toml", &config);
        // Readable by its owner only: no warning about the inline secret.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let out = vod_eventd(&["config", "check", "--config", &path]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = check("postgresql://vod:pw@db.example:5432/vod?sslmode=require");
    assert!(
        out.contains("warning: store.url: sslmode=require encrypts but checks no certificate, and db.example is not this machine"),
        "{out}"
    );
    assert!(out.contains("sslmode=verify-full") && !out.contains(":pw@"), "{out}");
    assert!(!check("postgresql://vod@db.example:5432/vod?sslmode=verify-full").contains("warning"));
    assert!(!check("postgresql://vod@127.0.0.1:5432/vod?sslmode=require").contains("warning"));
}

#[test]
fn settings_that_would_break_at_run_time_fail_the_check_with_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    // A SecretId pasted with a line break made v3 panic building its Authorization header.
    let config = "[vod]\napi = \"v3\"\nendpoint = \"http://127.0.0.1:9/\"\nsecret_id = \"AKID1\\n\"\nsecret_key = \"k\"\n\
                  request_timeout = \"3s\"\n[confirm]\nhandle_ttl = \"1s\"\n\
                  [[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n[handlers.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\ntimeout = \"0s\"\n";
    let path = write(dir.path(), "c.toml", config);
    for cmd in [&["config", "check", "--config", &path][..], &["run", "--config", &path][..]] {
        let out = vod_eventd(cmd);
        assert_eq!(out.status.code(), Some(78), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = stderr_lines(&out).join("\n");
        for key in ["`vod.secret_id`", "`vod.request_timeout`", "`confirm.handle_ttl`", "`handlers.hook.timeout`"] {
            assert!(text.contains(key), "{key} not named:\n{text}");
        }
        assert!(!text.contains("panicked"), "{text}");
    }
}

both_stores!(
    refused_credentials_on_the_first_call_stop_with_the_keys_to_check,
    credentials_that_worked_before_are_retried_after_a_restart_not_exit_78,
    history_lists_filters_and_shows_events_while_the_daemon_runs,
    the_demo_runs_every_part_and_leaves_a_queryable_store,
    a_reader_that_goes_away_ends_the_listing_quietly,
    status_draws_the_last_24_hours_hour_by_hour,
    events_list_says_when_it_is_cut,
    deliveries_list_says_when_it_is_cut,
    keys_list_says_when_it_is_cut,
);

async fn refused_credentials_on_the_first_call_stop_with_the_keys_to_check(backend: Backend) {
    let emu = emulator(EmulatorConfig {
        credentials: vec![Credential { secret_id: DEMO_SECRET_ID.into(), secret_key: "another-key".into() }],
        ..fast_emulator_config()
    })
    .await;
    let mut daemon = TestDaemon::start_on(&emu.endpoint(), "", backend).await;
    let status =
        tokio::time::timeout(Duration::from_secs(20), daemon.child.as_mut().unwrap().wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(78));
    let log = daemon.log();
    assert!(log.contains("4100") && log.contains("vod.secret_id") && log.contains("vod.secret_key"), "{log}");
    assert!(!log.contains(DEMO_SECRET_KEY), "the secret key must never be logged");
}

async fn credentials_that_worked_before_are_retried_after_a_restart_not_exit_78(backend: Backend) {
    let emu = emulator(fast_emulator_config()).await;
    let port = free_port();
    let extra = format!("[pull]\nauth_retry = \"200ms\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let mut daemon = TestDaemon::start_on(&emu.endpoint(), &extra, backend).await;
    emu.enqueue_generated(3);
    eventually(Duration::from_secs(30), "a first successful pull", || daemon.rows() == 3).await;
    daemon.kill9().await;

    // Refused right after a restart (a watchdog restart, a deploy, a hiccup at Tencent).
    let good = Credential { secret_id: DEMO_SECRET_ID.into(), secret_key: DEMO_SECRET_KEY.into() };
    emu.set_credentials(vec![Credential { secret_key: "another-key".into(), ..good.clone() }]);
    daemon.spawn();
    eventually(Duration::from_secs(30), "several refusals", || emu.stats().api.auth_failures >= 5).await;
    assert!(daemon.running(), "exited although these credentials worked before:\n{}", daemon.log());
    assert!(daemon.log().contains("ERROR") && daemon.log().contains("credentials refused"), "{}", daemon.log());
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 503);

    emu.set_credentials(vec![good]);
    emu.enqueue_generated(2);
    eventually(Duration::from_secs(30), "pulling again without a restart", || daemon.rows() == 5).await;
}

async fn history_lists_filters_and_shows_events_while_the_daemon_runs(backend: Backend) {
    let emu = emulator(fast_emulator_config()).await;
    let contents = emu.enqueue_generated(24);
    let daemon = TestDaemon::start_on(&emu.endpoint(), "", backend).await;
    eventually(Duration::from_secs(30), "all stored", || daemon.rows() == 24).await;
    let config = daemon.config_path.display().to_string();

    let out = vod_eventd(&["events", "list", "--config", &config, "--json", "--limit", "100"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 24);
    for field in ["id", "event_type", "received_at", "file_id", "task_id", "times_seen", "content"] {
        assert!(lines[0].get(field).is_some(), "missing {field}");
    }
    let listed: std::collections::HashSet<String> = lines.iter().map(|l| key_of(&l["content"].to_string())).collect();
    assert_eq!(listed, contents.iter().map(|c| key_of(c)).collect());
    assert!(chrono::DateTime::parse_from_rfc3339(lines[0]["received_at"].as_str().unwrap()).is_ok());

    let out = vod_eventd(&["events", "list", "--config", &config, "--type", "FileDeleted", "--since", "1h", "--json"]);
    let typed: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(typed.len(), 2);
    assert!(typed.iter().all(|l| l["event_type"] == "FileDeleted"));

    let file_id = lines[0]["file_id"].as_str().unwrap().to_string();
    let out = vod_eventd(&["events", "list", "--config", &config, "--file-id", &file_id]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("ID") && table.contains(&file_id), "{table}");

    let id = lines[0]["id"].to_string();
    let out = vod_eventd(&["events", "show", "--config", &config, &id]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("times seen:") && text.contains(&file_id), "{text}");
    let out = vod_eventd(&["events", "show", "--config", &config, "999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no event with id 999999"));
    let out = vod_eventd(&["events", "list", "--config", &config, "--since", "last tuesday"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since"));
}

async fn the_demo_runs_every_part_and_leaves_a_queryable_store(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    // As a user runs the built binary: cli() passes no CARGO_PKG_NAME, so the demo names its own path.
    let mut demo = cli();
    demo.args(["demo", "--events", "24", "--dir"]).arg(&demo_dir);
    if backend == Backend::Postgres {
        demo.args(["--store-url", &crate::pg::database().await]);
    }
    let out = demo.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("24 stored rows") && stdout.contains("0 left at the emulator"), "{stdout}");
    assert!(stdout.contains("received 24 requests, 24 with a valid Standard Webhooks signature"), "{stdout}");
    assert!(stdout.contains("2 DRM data keys stored"), "{stdout}");
    // Two apps, each pulled as its own source and confirmed under its own app.
    for app in ["main       app 1500000001: 12 stored rows", "second     app 1500000002: 12 stored rows"] {
        assert!(stdout.contains(app), "{app} in {stdout}");
    }
    assert!(stdout.contains(" second  NewFileUpload "), "every type reaches both apps: {stdout}");
    let config = demo_dir.join("config.toml");
    let list = vod_eventd(&["events", "list", "--json", "--limit", "100", "--config", config.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 24);
    assert!(std::fs::read_to_string(demo_dir.join("hook.log")).unwrap().lines().count() >= 4);
    // Every command the demo suggests works as printed.
    let suggested: Vec<&str> = stdout.lines().skip_while(|l| !l.starts_with("Query the history")).skip(1).collect();
    assert!(suggested.len() >= 5, "{stdout}");
    for line in suggested {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], BIN, "the demo names the binary it is: {line}");
        let run = command(words[0]).args(&words[1..]).output().unwrap();
        assert!(run.status.success() && !run.stdout.is_empty(), "{line}: {}", String::from_utf8_lossy(&run.stderr));
    }
}

async fn a_reader_that_goes_away_ends_the_listing_quietly(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let at = At::new(dir.path(), backend).await;
    let store = at.open().await;
    let events: Vec<_> = (0..400)
        .map(|i| {
            let content =
                format!(r#"{{"eventType":"NewFileUpload","data":{{"fileId":"{i}","pad":"{}"}}}}"#, "x".repeat(400));
            (vod_eventd::event::ReceivedEvent::from_content(&content, vod_eventd::config::ApiVersion::V2), vec![])
        })
        .collect();
    store.insert_events(events).await.unwrap();
    drop(store);
    let config = write(
        dir.path(),
        "config.toml",
        &format!(
            "[store]\n{}[vod]\nsecret_id = \"{DEMO_SECRET_ID}\"\nsecret_key = \"{DEMO_SECRET_KEY}\"\n",
            at.section()
        ),
    );
    let mut child = cli()
        .args(["events", "list", "--json", "--limit", "400", "--config", &config])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut first).unwrap();
    assert!(first.starts_with('{'), "{first}");
    // The reader is dropped here, like `head -1` exiting: the rest of the 200 KB cannot be written.
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit {:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no message for a closed stdout");
}

// Opens no store: the same whichever backend.
#[test]
fn version_names_the_commit_and_completions_and_man_page_are_generated() {
    let version = String::from_utf8(vod_eventd(&["--version"]).stdout).unwrap();
    let inside =
        version.split_once('(').and_then(|(_, rest)| rest.split_once(", built ")).expect("(commit, built date)");
    let commit = inside.0;
    assert!(commit == "unknown" || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())), "{version}");
    assert!(inside.1.trim_end().trim_end_matches(')').len() == "2026-11-25".len(), "{version}");
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef vod-eventd"), ("fish", "complete -c vod-eventd")]
    {
        let out = vod_eventd(&["completions", shell]);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && script.contains(marker), "{shell}: {script:.200}");
        assert!(script.contains("deliveries") && script.contains("config"), "{shell} completes subcommands and flags");
    }
    let man = String::from_utf8(vod_eventd(&["man"]).stdout).unwrap();
    assert!(man.contains(".TH vod-eventd 1") && man.contains(".SH NAME") && man.contains("deliveries"), "{man:.300}");
    assert!(man.contains(version.trim().trim_start_matches("vod-eventd ")), "the man page carries the version line");
}

/// The `status` line whose label is `label`: its sparkline and its scale.
fn sparkline_of(status: &str, label: &str) -> (Vec<char>, String) {
    let line = status.lines().find(|l| l.trim_start().starts_with(&format!("{label} "))).unwrap_or_else(|| {
        panic!("no `{label}` line in:\n{status}");
    });
    let rest = line.trim_start()[label.len()..].trim_start();
    let (spark, scale) = rest.split_once("  ").unwrap_or_else(|| panic!("no scale after the sparkline: {line}"));
    (spark.chars().collect(), scale.trim().to_string())
}

async fn status_draws_the_last_24_hours_hour_by_hour(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let at = At::new(dir.path(), backend).await;
    // The store creates its schema; the rows, stamped hours and days ago, are written straight
    // into it (the store's own API stamps rows with the time they arrive).
    drop(at.open().await);
    let (now, min) = (vod_eventd::store::now_ms(), 60_000);
    // Received 10 min ago (4), 2 h 30 min ago (2), 23 h 30 min ago (1) and 2 days ago (1, outside).
    let received = [10, 10, 10, 10, 150, 150, 1410, 2880].map(|m| now - m * min);
    let events: Vec<String> = received
        .iter()
        .enumerate()
        .map(|(i, received)| {
            format!("({}, {}, 'NewFileUpload', '{{}}', {received}, {received})", i + 1, at.blob(i as u8))
        })
        .collect();
    // `hook` failed twice 40 min ago (a retry, then dead) and once 5 h 10 min ago, and
    // succeeded once; `quiet` is configured and never failed.
    at.execute(&format!(
        "INSERT INTO events (id, dedupe_key, event_type, content, received_at, last_seen_at) VALUES {};
         INSERT INTO deliveries (id, event_id, handler, webhook_id, state, next_attempt_at, created_at, updated_at)
             VALUES (1, 1, 'hook', 'w1', 'dead', 0, 0, 0), (2, 2, 'hook', 'w2', 'done', 0, 0, 0);
         INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome) VALUES
             (1, 1, {a}, 5, 'retry'), (1, 2, {a}, 5, 'dead'), (2, 1, {b}, 5, 'retry'), (2, 2, {a}, 5, 'done');",
        events.join(", "),
        a = now - 40 * min,
        b = now - 310 * min,
    ))
    .await;
    let extra = "[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\", \"quiet\"]\n\
                 [handlers.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n\
                 [handlers.quiet]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n";
    let config =
        write(dir.path(), "config.toml", &config_text(&at.path(), "http://127.0.0.1:9/", &at.url_line(), extra));

    let out = cli().args(["status", "--config", &config]).env("LANG", "C.UTF-8").output().unwrap();
    let status = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{status}{}", String::from_utf8_lossy(&out.stderr));
    let (events, scale) = sparkline_of(&status, "events received");
    assert_eq!(events.len(), 24, "{status}");
    let mut expected = ['·'; 24];
    (expected[0], expected[21], expected[23]) = ('▂', '▄', '█');
    assert_eq!(events, expected, "oldest hour left, this hour right:\n{status}");
    assert_eq!(scale, "max 4/h, 7 in all");
    let (hook, scale) = sparkline_of(&status, "failed attempts hook");
    let mut expected = ['·'; 24];
    (expected[18], expected[23]) = ('▄', '█');
    assert_eq!((hook, scale.as_str()), (expected.to_vec(), "max 2/h, 3 in all"), "{status}");
    assert_eq!(sparkline_of(&status, "failed attempts quiet"), (vec!['·'; 24], "none".into()), "{status}");

    // Without a UTF-8 locale (none is set here), plain ASCII.
    let out = cli().args(["status", "--config", &config]).output().unwrap();
    let (events, _) = sparkline_of(&String::from_utf8(out.stdout).unwrap(), "events received");
    assert_eq!(events.iter().collect::<String>(), format!(",{}~.#", ".".repeat(20)));
}

/// A store of 7 events, each with a delivery to `hook`, and 7 DRM keys; its config.
async fn store_of_seven(dir: &std::path::Path, backend: Backend) -> String {
    let at = At::new(dir, backend).await;
    let store = at.open().await;
    let events: Vec<_> = (0..7)
        .map(|i| {
            let content = format!(r#"{{"eventType":"NewFileUpload","data":{{"fileId":"f{i}"}}}}"#);
            (
                vod_eventd::event::ReceivedEvent::from_content(&content, vod_eventd::config::ApiVersion::V2),
                vec!["hook".to_string()],
            )
        })
        .collect();
    let inserted = store.insert_events(events).await.unwrap();
    let keys = inserted
        .iter()
        .enumerate()
        .map(|(i, row)| vod_eventd::store::NewKey {
            edk: format!("edk-{i}"),
            dk: [i as u8; 16],
            file_id: Some(format!("f{i}")),
            key_source: Some("VodBuildInKMS".into()),
            definition: None,
            event_id: row.id,
            sealed: None,
        })
        .collect();
    assert_eq!(store.insert_keys(keys).await.unwrap(), 7);
    drop(store);
    let text = format!(
        "[store]\n{}[vod]\nsecret_id = \"{DEMO_SECRET_ID}\"\nsecret_key = \"{DEMO_SECRET_KEY}\"\n[handlers.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n",
        at.section()
    );
    write(dir, "config.toml", &text)
}

/// A list command cut at `--limit 5` of 7 rows says so on stderr, naming the flags; with
/// `--json` (stderr not a terminal) stdout has the 5 rows and nothing else, stderr nothing;
/// `--all` and `--limit 0` show the 7 with no note; exactly the limit gets no note.
async fn a_cut_list_says_so_on_stderr_and_json_stays_clean(list: &str, what: &str, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let config = store_of_seven(dir.path(), backend).await;
    let run = |extra: &[&str]| {
        let out = vod_eventd(&[&[list, "list", "--config", &config], extra].concat());
        assert!(out.status.success(), "{list} list {extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let note = format!("vod-eventd: showing 5 {what}; more exist: --limit N shows up to N, --all shows every one\n");
    let (stdout, stderr) = run(&["--limit", "5"]);
    assert_eq!(stderr, note, "{list} list");
    assert!(!stdout.contains("more exist"), "{list} list: {stdout}");
    let (stdout, stderr) = run(&["--limit", "5", "--json"]);
    assert_eq!(stderr, "", "{list} list --json");
    assert_eq!(stdout.lines().count(), 5, "{list} list --json: {stdout}");
    assert!(stdout.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{stdout}");
    for all in [&["--all", "--json"][..], &["--limit", "0", "--json"], &["--limit", "7", "--json"]] {
        let (stdout, stderr) = run(all);
        assert_eq!((stdout.lines().count(), stderr.as_str()), (7, ""), "{list} list {all:?}");
    }
    let (_, stderr) = run(&["--limit", "7"]);
    assert_eq!(stderr, "", "{list} list: not cut at exactly the limit");
}

async fn events_list_says_when_it_is_cut(backend: Backend) {
    a_cut_list_says_so_on_stderr_and_json_stays_clean("events", "events", backend).await;
}

async fn deliveries_list_says_when_it_is_cut(backend: Backend) {
    a_cut_list_says_so_on_stderr_and_json_stays_clean("deliveries", "deliveries", backend).await;
}

async fn keys_list_says_when_it_is_cut(backend: Backend) {
    a_cut_list_says_so_on_stderr_and_json_stays_clean("keys", "keys", backend).await;
}

/// Runs `config check` on `path` with `env`.
fn config_check(path: &str, env: &[(&str, &std::path::Path)]) -> Output {
    let mut cmd = cli();
    cmd.args(["config", "check", "--config", path]);
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.output().unwrap()
}

fn chmod(path: &str, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// A secret inline in a config every local user can read is warned about, naming the key,
/// the file, its mode and where it belongs; the same file readable by its owner alone is
/// not. The check still passes: it is a warning.
// Opens no store: the same whichever backend.
#[test]
fn config_check_warns_about_a_secret_inline_in_a_file_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[vod]\nsecret_id = \"{DEMO_SECRET_ID}\"\nsecret_key = \"{DEMO_SECRET_KEY}\"\n[store]\npath = \"{}\"\n[handlers.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n",
        dir.path().join("events.db").display()
    );
    let path = write(dir.path(), "config.toml", &text);
    chmod(&path, 0o644);
    let out = config_check(&path, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let warnings: Vec<&str> = stdout.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 2, "{stdout}");
    assert!(
        warnings[0].contains(&format!(
            "vod.secret_key holds a secret inline in {path}, which every local user can read (mode 0644)"
        )) && warnings[0].contains("/etc/vod-eventd/secret-key"),
        "{stdout}"
    );
    assert!(warnings[1].contains("handlers.hook.secret holds a secret inline") && warnings[1].contains("secret_file"));
    assert!(!stdout.contains(DEMO_SECRET_KEY) && !stdout.contains("MfKQ9r8G"), "no secret is shown: {stdout}");
    chmod(&path, 0o600);
    let out = config_check(&path, &[]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("warning"), "{}", String::from_utf8_lossy(&out.stdout));
}

/// The example's placeholder values are refused (exit 78) by `config check` and `run`,
/// each naming its key, whether inline or from the credential, and never echoed.
// Opens no store: the same whichever backend.
#[test]
fn config_check_and_run_refuse_the_examples_placeholder_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("[store]\npath = \"{}\"\n", dir.path().join("events.db").display());
    let cases = [
        (format!("[vod]\nsecret_id = \"AKIDexampleexampleexampleexample\"\nsecret_key = \"{DEMO_SECRET_KEY}\"\n"), "`vod.secret_id`"),
        (
            format!("[vod]\nsecret_id = \"{DEMO_SECRET_ID}\"\nsecret_key = \"replace-me\"\n"),
            "`vod.secret_key`: is the example's placeholder; an inline secret_key wins over the credential",
        ),
        (
            format!("[vod]\nsecret_id = \"{DEMO_SECRET_ID}\"\nsecret_key = \"k\"\n[[sources]]\nname = \"b\"\nsecret_id = \"AKID...\"\nsecret_key = \"k2\"\n"),
            "`sources[0].secret_id`",
        ),
    ];
    for (text, key) in &cases {
        let path = write(dir.path(), "config.toml", &format!("{text}{store}"));
        for args in [&["config", "check"][..], &["run"]] {
            let out = cli().args(args).args(["--config", &path]).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(78), "{args:?} {key}: {stderr}");
            assert!(stderr.contains(key) && stderr.contains("is the example's placeholder"), "{args:?}: {stderr}");
            assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "no OK: {args:?}");
        }
    }
    // The README's placeholder written to the credential file literally.
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("vod-secret-key"), "YOUR-SECRET-KEY\n").unwrap();
    let path = write(dir.path(), "config.toml", &format!("[vod]\nsecret_id = \"{DEMO_SECRET_ID}\"\n{store}"));
    let out = config_check(&path, &[("CREDENTIALS_DIRECTORY", &creds)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("`vod.secret_key`: is the example's placeholder; the key's file"), "{stderr}");
}

/// The config the package installs: no secret inline, and `config check` names the missing
/// key and the file to write it to instead of saying OK; under the packaged unit with that
/// file missing (the credential is the unit's default), it says the file is missing; with
/// the key in place and a SecretId set, it is OK with no warning.
// Opens no store: the same whichever backend.
#[test]
fn the_packaged_config_names_the_missing_key_and_works_once_it_is_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let example = include_str!("../../config.example.toml");
    assert!(
        !example.lines().any(|l| l.trim_start().starts_with("secret_key =") || l.trim_start().starts_with("token =")),
        "no inline secret"
    );
    let path = write(dir.path(), "config.toml", example);
    chmod(&path, 0o644);
    let db = dir.path().join("events.db");
    let out = config_check(&path, &[("VOD_EVENTD_STORE__PATH", &db)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "not OK");
    assert!(
        stderr
            .contains("`vod.secret_key`: no secret key: write it to /etc/vod-eventd/secret-key (sudo install -m 0600"),
        "{stderr}"
    );

    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    // What the unit's SetCredential= default holds when /etc/vod-eventd/secret-key is missing.
    std::fs::write(creds.join("vod-secret-key"), "not-loaded:/etc/vod-eventd/secret-key").unwrap();
    let out = config_check(&path, &[("VOD_EVENTD_STORE__PATH", &db), ("CREDENTIALS_DIRECTORY", &creds)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("the systemd credential `vod-secret-key` was not loaded because /etc/vod-eventd/secret-key is missing; write the key there"),
        "{stderr}"
    );

    std::fs::write(creds.join("vod-secret-key"), format!("{DEMO_SECRET_KEY}\n")).unwrap();
    let out = config_check(&path, &[("VOD_EVENTD_STORE__PATH", &db), ("CREDENTIALS_DIRECTORY", &creds)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "the example SecretId is refused: {stderr}");
    assert!(stderr.contains("`vod.secret_id`: is the example's placeholder"), "{stderr}");
    let edited = example.replace("AKIDexampleexampleexampleexample", DEMO_SECRET_ID);
    let path = write(dir.path(), "config.toml", &edited);
    chmod(&path, 0o644);
    let out = config_check(&path, &[("VOD_EVENTD_STORE__PATH", &db), ("CREDENTIALS_DIRECTORY", &creds)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(": OK (") && !stdout.contains("warning"), "{stdout}");
}

/// Event content and hook output reach the terminal escaped: an event type, a file id and a
/// task id holding ESC, CR, LF, BEL, DEL and a C1 CSI, and a hook whose stderr retitles the
/// terminal and clears the screen, print as `\x1b`, `\r`, ... in `events list`, `events show`
/// (with the attempt's output), `deliveries list` and `status`; a 70,000-character file id does not panic `events list`;
/// `--json` stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_content_and_hook_output_reach_the_terminal_escaped() {
    let emu = emulator(fast_emulator_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let event_type = "New\u{1b}[2JFile\rUpload\u{9b}31m\u{7f}";
    let file_id = format!("{}\u{1b}]0;owned\u{7}", "F".repeat(70_000));
    let content =
        serde_json::json!({"version": "4.0", "eventType": event_type, "data": {"fileId": file_id, "vodTaskId": "t\n1"}})
            .to_string();
    emu.enqueue(content.clone());
    let hook = dir.path().join("hook.sh");
    std::fs::write(&hook, "#!/bin/sh\ncat > /dev/null\nprintf '\\033]0;owned\\007\\033[2J\\rspoofed\\n' >&2\nexit 3\n")
        .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n[handlers.hook]\ntype = \"shell\"\ncommand = [\"{}\"]\npermanent_exit_codes = [3]\n",
        hook.display()
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &config).await;
    eventually(Duration::from_secs(30), "the delivery is dead", || daemon.delivery_states().get("dead") == Some(&1))
        .await;
    let config = daemon.config_path.display().to_string();
    for args in [&["events", "list"][..], &["events", "show", "1"][..], &["deliveries", "list"][..], &["status"][..]] {
        let out = cli().args(args).args(["--config", &config]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let raw = text.chars().find(|&c| c != '\n' && (c.is_control() || c == '\u{7f}'));
        assert_eq!(raw, None, "{args:?} printed a raw control character");
        if args[0] == "events" {
            assert!(text.contains("New\\x1b[2JFile\\rUpload\\u{9b}31m\\x7f"), "{args:?}");
            assert!(text.contains(&format!("{}\\x1b]0;owned\\x07", "F".repeat(70_000))), "{args:?}");
        }
        if args == ["events", "show", "1"] {
            assert!(text.contains("\\x1b]0;owned\\x07\\x1b[2J\\rspoofed"), "{args:?}: the hook's stderr");
        }
        if args[0] == "status" {
            assert!(text.contains("New\\x1b[2JFile\\rUpload\\u{9b}31m\\x7f"), "{text}");
        }
    }
    let out = cli().args(["events", "list", "--json", "--config", &config]).output().unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["event_type"], event_type, "JSON stays exact");
    assert_eq!(line["file_id"], file_id.as_str());
}
