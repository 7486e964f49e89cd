//! Operator controls against the real binary: `handlers list` while the daemon runs, and
//! the daemon's own alerts stored and routed as events.

use std::time::Duration;

use serde_json::Value;

use crate::receiver::Receiver;
use crate::support::*;

fn webhook(name: &str, url: &str) -> String {
    format!("[handlers.{name}]\ntype = \"webhook\"\nurl = \"{url}\"\n")
}

/// `handlers list --json`, one object per handler.
pub fn handlers_list(daemon: &TestDaemon) -> Vec<Value> {
    let out = cli().args(["handlers", "list", "--json", "--config"]).arg(&daemon.config_path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_list_shows_backlog_last_success_and_last_error_while_the_daemon_runs() {
    let emu = emulator(fast_emulator_config()).await;
    let good = Receiver::start().await;
    let bad = Receiver::start().await;
    bad.set(|b| b.status = 400);
    emu.enqueue_generated(5);
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"good\", \"bad\"]\n{}{}{}",
        webhook("good", &good.url()),
        webhook("bad", &bad.url()),
        webhook("spare", &good.url())
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &config).await;
    eventually(Duration::from_secs(30), "5 done and 5 dead", || {
        daemon.store().is_some_and(|s| {
            let states = delivery_states(&s);
            states.get("done") == Some(&5) && states.get("dead") == Some(&5)
        })
    })
    .await;
    let lines = handlers_list(&daemon);
    let names: Vec<&str> = lines.iter().map(|l| l["handler"].as_str().unwrap()).collect();
    assert_eq!(names, ["bad", "good", "spare"]);
    let (bad, good, spare) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(
        (bad["state"].as_str(), bad["dead"].as_i64(), bad["pending"].as_i64()),
        (Some("active"), Some(5), Some(0))
    );
    assert!(bad["last_error"].as_str().unwrap().contains("400"), "{bad}");
    assert!(bad["last_success_at"].is_null() && bad["last_error_at"].is_i64(), "{bad}");
    assert!(good["last_success_at"].is_i64() && good["last_error"].is_null(), "{good}");
    assert_eq!((good["dead"].as_i64(), good["running"].as_i64()), (Some(0), Some(0)));
    assert_eq!((spare["configured"].as_bool(), spare["pending"].as_i64()), (Some(true), Some(0)));

    let out = cli().args(["handlers", "list", "--config"]).arg(&daemon.config_path).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("HANDLER") && table.lines().count() == 4, "{table}");
}
