//! SIGHUP: what a reload applies, what it says, and that it always finishes.

use std::time::Duration;

use crate::support::*;

/// Starts a daemon whose `[store]` section has `store_extra` from its first start on.
async fn start_with_store(endpoint: &str, store_extra: &str, extra: &str) -> TestDaemon {
    let mut daemon = TestDaemon::start(endpoint, extra).await;
    daemon.kill9().await;
    daemon.rewrite_config(endpoint, store_extra, extra);
    daemon.spawn();
    daemon
}

/// The store is full; the operator raises the cap and, in the same edit, changes `[vod]` and
/// the sources. The reload used to stop the old source first, which waited for its pending
/// commits, which waited for the room the new cap makes: "Configuration reloaded" never came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_raises_the_cap_and_changes_the_sources_finishes_and_ingest_resumes() {
    let emu = emulator(fast_emulator_config()).await;
    let extra = "[pull]\nbackoff_max = \"300ms\"\n";
    let mut daemon = start_with_store(&emu.endpoint(), "max_size_mb = 1", extra).await;
    let contents = emu.enqueue_generated(3000);
    eventually(Duration::from_secs(60), "the store fills up", || {
        daemon.log().contains("Could not store pulled events")
    })
    .await;
    let edited = format!("rate_limit_per_minute = 1200\n[[sources]]\nname = \"main\"\n{extra}");
    daemon.rewrite_config(&emu.endpoint(), "max_size_mb = 512", &edited);
    daemon.signal("HUP");
    eventually(Duration::from_secs(30), "the reload finishes", || daemon.log().contains("Configuration reloaded"))
        .await;
    eventually(Duration::from_secs(120), "every event stored and confirmed", || {
        emu.stats().queue.outstanding == 0 && daemon.rows() == contents.len() as i64
    })
    .await;
    daemon.signal("HUP");
    eventually(Duration::from_secs(30), "a later reload is handled too", || {
        daemon.log().matches("Configuration reloaded").count() == 2
    })
    .await;
    assert!(daemon.running());
}

/// A changed `[vod]` key is applied by restarting the source with it, and the log says
/// that, not that it waits for a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_vod_key_is_applied_at_once_and_the_log_says_so() {
    let emu = emulator(fast_emulator_config()).await;
    let mut daemon = TestDaemon::start(&emu.endpoint(), "").await;
    emu.enqueue_generated(3);
    eventually(Duration::from_secs(30), "first events stored", || daemon.rows() == 3).await;
    let text = std::fs::read_to_string(&daemon.config_path).unwrap();
    let wrong = text.replace(&format!("secret_key = \"{}\"", vod_emulator::DEMO_SECRET_KEY), "secret_key = \"wrong\"");
    assert_ne!(wrong, text);
    std::fs::write(&daemon.config_path, wrong).unwrap();
    daemon.signal("HUP");
    eventually(Duration::from_secs(30), "the reload finishes", || daemon.log().contains("Configuration reloaded"))
        .await;
    let log = daemon.log();
    assert!(!log.contains("take effect only after a restart"), "[vod] is applied, not deferred:\n{log}");
    assert_eq!(log.matches("Source started").count(), 2, "the source was started again with the new key:\n{log}");
    eventually(Duration::from_secs(30), "the new key is used and refused", || daemon.log().contains("refused")).await;
    assert!(daemon.terminate().await.success());
}
