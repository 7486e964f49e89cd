//! Replay and retry by range with the real binary: the dry-run count equals what is then
//! replayed, progress comes in batches, a run killed with SIGKILL between batches and run
//! again resumes without replaying anything twice, and a finished job is not run again.

use std::process::Stdio;
use std::time::Duration;

use vod_eventd::config::ApiVersion;
use vod_eventd::event::ReceivedEvent;
use vod_eventd::store::Store;

use crate::support::*;

/// A store of `n` NewFileUpload events (and a few of another type), with a config naming
/// handler `h`; no daemon runs.
async fn seeded(n: usize, handlers: Vec<String>) -> (tempfile::TempDir, std::path::PathBuf, Store) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let store = Store::open(&db, Duration::from_secs(5)).unwrap();
    let events: Vec<_> = (0..n + 10)
        .map(|i| {
            let event_type = if i < n { "NewFileUpload" } else { "FileDeleted" };
            let content = format!(r#"{{"eventType":"{event_type}","data":{{"fileId":"f{i}"}}}}"#);
            (ReceivedEvent::from_content(&content, ApiVersion::V2), handlers.clone())
        })
        .collect();
    store.insert_events(events).await.unwrap();
    let config = dir.path().join("config.toml");
    let handler = "[handlers.h]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n";
    std::fs::write(&config, config_text(&db, "http://127.0.0.1:9/", "", handler)).unwrap();
    (dir, config, store)
}

fn run(config: &std::path::Path, args: &[&str]) -> (String, String) {
    let out = cli().args(args).arg("--config").arg(config).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into());
    assert!(out.status.success(), "{args:?}: {stderr}");
    (stdout, stderr)
}

fn first_number(text: &str) -> i64 {
    text.split_whitespace().next().unwrap().parse().unwrap_or_else(|_| panic!("no count first: {text}"))
}

/// A count read straight from the SQLite file (the job table and joins these checks need
/// are not part of the store's interface).
fn query(store: &Store, sql: &str) -> i64 {
    rusqlite::Connection::open(store.path()).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_replay_killed_mid_run_resumes_and_replays_nothing_twice() {
    let (_dir, config, store) = seeded(10_000, vec![]).await;
    let args = ["events", "replay", "--since", "1h", "--until", "now", "--type", "NewFileUpload", "--handler", "h"];
    let (dry, _) = run(&config, &[&args[..], &["--dry-run"]].concat());
    let counted = first_number(&dry);
    assert_eq!(counted, 10_000, "{dry}");
    assert_eq!(query(&store, "SELECT count(*) FROM deliveries"), 0, "a dry run changes nothing");

    let mut child = cli()
        .args(args)
        .arg("--config")
        .arg(&config)
        .env("VOD_TEST_RANGE_BATCH_DELAY_MS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "three batches committed", || {
        query(&store, "SELECT coalesce(max(done), 0) FROM range_jobs") >= 1500
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let committed = query(&store, "SELECT done FROM range_jobs");
    assert!(committed < 10_000, "killed before the end");
    assert_eq!(query(&store, "SELECT count(*) FROM deliveries"), committed, "batch and cursor commit together");

    let (again, progress) = run(&config, &args);
    assert!(again.starts_with(&format!("{} events left to replay to h", 10_000 - committed)), "{again}");
    assert!(progress.lines().count() >= 2 && progress.contains("of 10000 done"), "{progress}");
    assert_eq!(query(&store, "SELECT count(*) FROM deliveries"), counted, "the dry-run count is what was replayed");
    assert_eq!(query(&store, "SELECT count(DISTINCT event_id) FROM deliveries"), counted, "no event twice");
    let stable = query(
        &store,
        "SELECT count(*) FROM deliveries d JOIN events e ON e.id = d.event_id WHERE e.event_type != 'NewFileUpload'",
    );
    assert_eq!(stable, 0, "--type selects");

    let (third, _) = run(&config, &args);
    assert!(third.starts_with("0 events left") && third.contains("--restart"), "{third}");
    assert_eq!(query(&store, "SELECT count(*) FROM deliveries"), counted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_retry_revives_the_dead_deliveries_of_the_window_with_their_webhook_ids() {
    let (_dir, config, store) = seeded(1200, vec!["h".into(), "other".into()]).await;
    // Fixture: dead deliveries, some of them long ago, written straight into the file.
    let c = rusqlite::Connection::open(config.with_file_name("events.db")).unwrap();
    c.execute("UPDATE deliveries SET state = 'dead', updated_at = updated_at - 1 WHERE handler = 'h'", []).unwrap();
    let old = c
        .execute("UPDATE deliveries SET state = 'dead', updated_at = 0 WHERE handler = 'h' AND id % 7 = 0", [])
        .unwrap() as i64;
    drop(c);
    let args = ["deliveries", "retry", "--state", "dead", "--since", "1h", "--until", "now", "--handler", "h"];
    let (dry, _) = run(&config, &[&args[..], &["--dry-run"]].concat());
    assert_eq!(first_number(&dry), 1210 - old, "{dry}");
    let ids_before = query(&store, "SELECT count(DISTINCT webhook_id) FROM deliveries");
    let (out, _) = run(&config, &args);
    assert!(out.starts_with(&format!("{} dead deliveries to retry", 1210 - old)), "{out}");
    assert_eq!(query(&store, "SELECT count(*) FROM deliveries WHERE state = 'dead'"), old, "outside the window");
    assert_eq!(query(&store, "SELECT count(*) FROM deliveries WHERE handler = 'h' AND state = 'pending'"), 1210 - old);
    assert_eq!(query(&store, "SELECT count(DISTINCT webhook_id) FROM deliveries"), ids_before, "same webhook-ids");
}
