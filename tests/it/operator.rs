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

/// The alert bodies `receiver` accepted.
fn alerts_received(receiver: &Receiver) -> Vec<Value> {
    receiver
        .accepted()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
        .filter(|b| b["type"].as_str().is_some_and(|t| t.starts_with("vod-eventd.")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_raises_an_alert_event_routed_to_the_alert_webhook_but_an_alert_delivery_does_not() {
    let emu = emulator(fast_emulator_config()).await;
    let (bad, pager, bad_pager) = (Receiver::start().await, Receiver::start().await, Receiver::start().await);
    bad.set(|b| b.status = 400);
    bad_pager.set(|b| b.status = 400);
    let config = format!(
        "[dispatch]\npoll_interval = \"100ms\"\n\
         [[routes]]\nevents = [\"NewFileUpload\"]\nsources = [\"default\"]\nhandlers = [\"bad\"]\n\
         [[routes]]\nevents = [\"FileDeleted\"]\nhandlers = [\"late\"]\n\
         [[routes]]\nevents = [\"vod-eventd.*\"]\nhandlers = [\"pager\", \"bad_pager\"]\n{}{}{}{}",
        webhook("bad", &bad.url()),
        webhook("late", &bad.url()),
        webhook("pager", &pager.url()),
        webhook("bad_pager", &bad_pager.url())
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &config).await;
    emu.enqueue_generated_type("NewFileUpload", 1).unwrap();
    eventually(
        Duration::from_secs(30),
        "the pager gets the alert and the failing alert route's delivery is dead",
        || {
            !alerts_received(&pager).is_empty()
                && daemon.store().is_some_and(|s| {
                    s.deliveries().unwrap().iter().filter(|d| d.handler == "bad_pager" && d.state == "dead").count()
                        == 1
                })
        },
    )
    .await;
    // A later dead delivery: once its alert arrives, the look that saw the alert route's
    // own dead delivery has passed.
    emu.enqueue_generated_type("FileDeleted", 1).unwrap();
    eventually(Duration::from_secs(30), "the alert about handler late", || {
        alerts_received(&pager).iter().any(|a| a["handler"] == "late")
    })
    .await;
    let alerts = alerts_received(&pager);
    let about: Vec<&str> = alerts.iter().map(|a| a["handler"].as_str().unwrap()).collect();
    assert_eq!(about, ["bad", "late"], "none about the alert route's own dead delivery: {alerts:?}");
    let first = &alerts[0];
    assert_eq!(first["type"], "vod-eventd.delivery.dead");
    assert_eq!(first["deliveries"], 1);
    assert_eq!(first["delivery"]["event_type"], "NewFileUpload");
    assert!(first["delivery"]["error"].as_str().unwrap().contains("400"), "{first}");
    assert!(first["message"].as_str().unwrap().contains("deliveries retry --dead --handler bad"), "{first}");
    assert!(first["time"].as_str().unwrap().ends_with('Z'), "{first}");
    let request = pager.accepted().into_iter().next().unwrap();
    assert_eq!(request.headers.get("x-vod-source").map(String::as_str), Some("vod-eventd"), "{:?}", request.headers);

    let out = cli()
        .args(["events", "list", "--source", "vod-eventd", "--json", "--config"])
        .arg(&daemon.config_path)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2, "alerts are stored events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_raise_an_alert_event_without_the_secret() {
    let emu = emulator(fast_emulator_config()).await;
    let pager = Receiver::start().await;
    let config = format!(
        "[pull]\nauth_retry = \"200ms\"\n[dispatch]\npoll_interval = \"100ms\"\n\
         [[routes]]\nevents = [\"vod-eventd.*\"]\nhandlers = [\"pager\"]\n{}",
        webhook("pager", &pager.url())
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &config).await;
    emu.enqueue_generated(2);
    eventually(Duration::from_secs(30), "a first successful pull", || daemon.rows() == 2).await;
    emu.set_credentials(vec![vod_emulator::Credential {
        secret_id: vod_emulator::DEMO_SECRET_ID.into(),
        secret_key: "another-key".into(),
    }]);
    eventually(Duration::from_secs(30), "the credentials alert", || {
        alerts_received(&pager).iter().any(|a| a["type"] == "vod-eventd.credentials.refused")
    })
    .await;
    let alert = alerts_received(&pager).into_iter().find(|a| a["type"] == "vod-eventd.credentials.refused").unwrap();
    assert_eq!(alert["source"], "default");
    assert!(alert["message"].as_str().unwrap().contains("secret_key"), "{alert}");
    let text = alert.to_string();
    assert!(!text.contains(vod_emulator::DEMO_SECRET_KEY), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refused_writes_raises_an_alert_once_it_accepts_them_again() {
    let emu = emulator(fast_emulator_config()).await;
    let pager = Receiver::start().await;
    let config = format!(
        "[pull]\nbackoff_max = \"300ms\"\n[dispatch]\npoll_interval = \"100ms\"\n\
         [[routes]]\nevents = [\"vod-eventd.store.*\"]\nhandlers = [\"pager\"]\n{}",
        webhook("pager", &pager.url())
    );
    // A short busy timeout: a held write lock makes the daemon's commits fail.
    let mut daemon = TestDaemon::start(&emu.endpoint(), &config).await;
    daemon.kill9().await;
    daemon.rewrite_config(&emu.endpoint(), "busy_timeout = \"10ms\"", &config);
    daemon.spawn();
    emu.enqueue_generated(2);
    // Pulled events only: under load a transient refusal at start can add an alert event.
    let pulled = |daemon: &TestDaemon| -> i64 {
        daemon.store().map_or(0, |store| {
            let events = store.events_after(0, u32::MAX).unwrap_or_default();
            events.iter().filter(|e| e.source != "vod-eventd").count() as i64
        })
    };
    eventually(Duration::from_secs(30), "first events stored", || pulled(&daemon) == 2).await;

    let blocker = rusqlite::Connection::open(&daemon.db_path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    emu.enqueue_generated(2);
    eventually(Duration::from_secs(30), "the alert kept while the store refuses writes", || {
        daemon.log().contains("Could not store an alert; keeping it until the store accepts writes.")
    })
    .await;
    assert!(daemon.log().contains("Could not store pulled events"));
    assert!(alerts_received(&pager).is_empty(), "nothing can be stored while the store refuses writes");
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);
    eventually(Duration::from_secs(30), "the store alert", || {
        alerts_received(&pager).iter().any(|a| a["type"] == "vod-eventd.store.refusing_writes")
    })
    .await;
    let alert = alerts_received(&pager).remove(0);
    assert_eq!(alert["store"], "store");
    assert!(alert["message"].as_str().unwrap().contains("store.max_size_mb"), "{alert}");
    eventually(Duration::from_secs(30), "the events stored after all", || pulled(&daemon) == 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pulls_raise_an_alert_event() {
    let emu = emulator(fast_emulator_config()).await;
    let pager = Receiver::start().await;
    let config = format!(
        "[pull]\nbackoff_max = \"300ms\"\n[alert]\npull_stale_after = \"2s\"\n[dispatch]\npoll_interval = \"100ms\"\n\
         [[routes]]\nevents = [\"vod-eventd.pulls.stale\"]\nhandlers = [\"pager\"]\n{}",
        webhook("pager", &pager.url())
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &config).await;
    emu.enqueue_generated(1);
    eventually(Duration::from_secs(30), "a first successful pull", || daemon.rows() == 1).await;
    let pulls = vec!["PullEvent".to_string(), "PullEvents".to_string()];
    emu.set_faults(vod_emulator::Faults {
        rate: 1.0,
        kinds: vec![vod_emulator::FaultKind::Http500],
        actions: pulls,
        ..Default::default()
    });
    eventually(Duration::from_secs(30), "the stale alert", || {
        alerts_received(&pager).iter().any(|a| a["type"] == "vod-eventd.pulls.stale")
    })
    .await;
    let alert = alerts_received(&pager).remove(0);
    assert_eq!(alert["source"], "default");
    assert!(alert["last_pull_seconds_ago"].as_u64().unwrap() >= 2, "{alert}");
}
