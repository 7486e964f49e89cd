//! The store across a daemon's life: `status` after a clean stop, the integrity check as
//! a command (and an opt-in at start) rather than a cost of every start, and retention
//! that waits for start-up to settle.

use std::process::Output;
use std::time::Duration;

use crate::support::*;

fn vod_eventd(args: &[&str], config: &std::path::Path) -> Output {
    std::process::Command::new(BIN).args(args).arg("--config").arg(config).output().unwrap()
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
