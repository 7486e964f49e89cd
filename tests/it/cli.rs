//! The command line as an operator meets it: config errors, a missing secret, an
//! unusable store path, refused credentials, and the history queries.

use std::process::Output;
use std::time::Duration;

use vod_emulator::{Credential, EmulatorConfig, DEMO_SECRET_ID, DEMO_SECRET_KEY};

use crate::support::*;

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

#[test]
fn unusable_store_path_gives_one_line_naming_store_path() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = write(dir.path(), "file", "x");
    let config = format!(
        "[vod]\nendpoint = \"http://127.0.0.1:9/v2/index.php\"\nsecret_id = \"AKID1\"\nsecret_key = \"k\"\n[store]\npath = \"{not_a_dir}/events.db\"\n"
    );
    let path = write(dir.path(), "c.toml", &config);
    let out = vod_eventd(&["run", "--config", &path]);
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("store.path") && lines[0].contains("events.db"), "{lines:?}");
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_on_the_first_call_stop_with_the_keys_to_check() {
    let emu = emulator(EmulatorConfig {
        credentials: vec![Credential { secret_id: DEMO_SECRET_ID.into(), secret_key: "another-key".into() }],
        ..fast_emulator_config()
    })
    .await;
    let mut daemon = TestDaemon::start(&emu.endpoint(), "").await;
    let status =
        tokio::time::timeout(Duration::from_secs(20), daemon.child.as_mut().unwrap().wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(78));
    let log = daemon.log();
    assert!(log.contains("4100") && log.contains("vod.secret_id") && log.contains("vod.secret_key"), "{log}");
    assert!(!log.contains(DEMO_SECRET_KEY), "the secret key must never be logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_filters_and_shows_events_while_the_daemon_runs() {
    let emu = emulator(fast_emulator_config()).await;
    let contents = emu.enqueue_generated(24);
    let daemon = TestDaemon::start(&emu.endpoint(), "").await;
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

#[test]
fn the_demo_runs_every_part_and_leaves_a_queryable_store() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let out = cli().args(["demo", "--events", "24", "--dir"]).arg(&demo_dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("24 stored rows") && stdout.contains("0 left at the emulator"), "{stdout}");
    assert!(stdout.contains("received 24 requests, 24 with a valid Standard Webhooks signature"), "{stdout}");
    assert!(stdout.contains("2 DRM data keys stored"), "{stdout}");
    let config = demo_dir.join("config.toml");
    let list = vod_eventd(&["events", "list", "--json", "--limit", "100", "--config", config.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 24);
    assert!(std::fs::read_to_string(demo_dir.join("hook.log")).unwrap().lines().count() >= 4);
}
