//! The store across a daemon's life: `status` after a clean stop, the integrity check as
//! a command (and an opt-in at start) rather than a cost of every start, and retention
//! that waits for start-up to settle.

use std::process::Output;
use std::time::Duration;

use crate::support::*;

fn vod_eventd(args: &[&str], config: &std::path::Path) -> Output {
    cli().args(args).arg("--config").arg(config).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_after_a_clean_stop_says_when_with_the_final_counts() {
    let emu = emulator(fast_emulator_config()).await;
    emu.enqueue_generated(24);
    let mut daemon = TestDaemon::start(&emu.endpoint(), "").await;
    eventually(Duration::from_secs(30), "stored and confirmed", || {
        daemon.rows() == 24 && emu.stats().queue.confirmed == 24
    })
    .await;
    assert!(daemon.terminate().await.success());
    let out = vod_eventd(&["status"], &daemon.config_path);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("daemon:        stopped at "), "{text}");
    assert!(!text.contains("last heartbeat"), "{text}");
    assert!(text.contains("final status:   24 events stored (0 duplicates), 24 handles confirmed"), "{text}");
}

/// Damages the last page of a table the daemon never reads: SQLite still opens the
/// file, and only a full check finds the damage.
fn damage_a_page(db: &std::path::Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "CREATE TABLE scratch (x BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
         INSERT INTO scratch SELECT randomblob(100) FROM n;",
    )
    .unwrap();
    let (pages, page_size): (u64, u64) = conn
        .query_row("SELECT * FROM pragma_page_count, pragma_page_size", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    drop(conn); // checkpoints the WAL into the file
    use std::io::{Seek, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    file.seek(std::io::SeekFrom::Start((pages - 1) * page_size)).unwrap();
    file.write_all(&vec![0xff; page_size as usize]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_skips_the_full_check_which_store_check_and_check_at_start_run() {
    let emu = emulator(fast_emulator_config()).await;
    emu.enqueue_generated(10);
    let mut daemon = TestDaemon::start(&emu.endpoint(), "").await;
    eventually(Duration::from_secs(30), "stored", || daemon.rows() == 10).await;
    assert!(daemon.terminate().await.success());
    let check = vod_eventd(&["store", "check"], &daemon.config_path);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(String::from_utf8_lossy(&check.stdout).contains(": ok ("));

    damage_a_page(&daemon.db_path);
    let check = vod_eventd(&["store", "check"], &daemon.config_path);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is damaged") && stderr.contains("Move the file aside"), "{stderr}");

    // Start-up does not read the whole file, so it does not see the damage ...
    let started = lines_with(&daemon.log(), "vod-eventd started.");
    daemon.spawn();
    eventually(Duration::from_secs(30), "started", || lines_with(&daemon.log(), "vod-eventd started.") > started).await;
    assert!(daemon.running());
    assert!(daemon.terminate().await.success());
    // ... unless asked to.
    daemon.rewrite_config(&emu.endpoint(), "check_at_start = true", "");
    daemon.spawn();
    let status =
        tokio::time::timeout(Duration::from_secs(30), daemon.child.take().unwrap().wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(1));
    let log = daemon.log();
    assert!(log.contains("store.check_at_start") && log.contains("is damaged"), "{log}");
    assert_eq!(emu.stats().queue.confirmed, 10, "nothing confirmed by the refused start");
}

fn lines_with(text: &str, what: &str) -> usize {
    text.lines().filter(|l| l.contains(what)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_prune_waits_until_start_up_has_settled() {
    let emu = emulator(fast_emulator_config()).await;
    let mut daemon = TestDaemon::start(&emu.endpoint(), "").await;
    eventually(Duration::from_secs(30), "store created", || daemon.store().is_some()).await;
    daemon.kill9().await;
    // 20,000 events long past retention, with nothing left to deliver.
    // Fixture: old rows written straight into the file (the store stamps rows with the time
    // they arrive).
    rusqlite::Connection::open(&daemon.db_path)
        .unwrap()
        .execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO events (dedupe_key, event_type, content, received_at, last_seen_at)
                 SELECT randomblob(32), 'Old', '{}', i, i FROM n;",
        )
        .unwrap();
    emu.enqueue_generated(1);
    daemon.rewrite_config(&emu.endpoint(), "retention = \"1d\"\nprune_interval = \"1s\"", "");
    daemon.spawn();
    eventually(Duration::from_secs(60), "pruned", || daemon.log().contains("Pruned events past store.retention."))
        .await;
    let log = daemon.log();
    let stored = log.find("Event stored.").expect("the new event is stored");
    assert!(stored < log.find("Pruned events").unwrap(), "the first prune started before the first pull was stored");
    assert_eq!(daemon.rows(), 1);
}
