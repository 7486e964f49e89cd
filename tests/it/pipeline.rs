//! The core guarantees, end to end: every event stored once, confirmed only after the
//! commit and well inside the window; redelivery deduplicated; SIGKILL loses nothing;
//! faulty upstream answers are retried, never fatal.

use std::collections::HashSet;
use std::time::Duration;

use rand::Rng;
use vod_emulator::{Api, EmulatorConfig, FaultKind, Faults};

use crate::support::*;

both_apis_and_stores!(
    three_thousand_events_are_stored_once_and_confirmed_quickly,
    a_redelivered_event_under_a_new_handle_stays_one_row,
    sigkill_at_random_moments_loses_nothing,
    ten_percent_faulty_answers_of_every_kind_still_store_everything_once,
    empty_answers_in_every_documented_form_mean_poll_again,
);

async fn three_thousand_events_are_stored_once_and_confirmed_quickly(api: Api, backend: Backend) {
    let emu = emulator(EmulatorConfig { api, ..fast_emulator_config() }).await;
    let contents = emu.enqueue_generated(3000);
    let daemon = TestDaemon::for_emulator_on(&emu, "", backend).await;
    eventually(Duration::from_secs(120), "emulator has every event confirmed", || emu.stats().queue.outstanding == 0)
        .await;

    let stats = emu.stats();
    assert_eq!(stats.queue.confirmed, 3000);
    assert_eq!(stats.queue.redelivered, 0, "nothing should need redelivery");
    assert!(
        stats.queue.max_confirm_latency_ms <= 5000,
        "a handle was confirmed {} ms after its pull",
        stats.queue.max_confirm_latency_ms
    );
    assert_eq!(stats.api.rate_limited, 0, "the client-side limit must keep us under 1000/min");
    let keys = daemon.stored_keys();
    assert_eq!(keys.len(), 3000);
    let expected: HashSet<String> = contents.iter().map(|c| key_of(c)).collect();
    assert_eq!(keys.keys().cloned().collect::<HashSet<_>>(), expected);
    assert!(keys.values().all(|&seen| seen == 1));
}

async fn a_redelivered_event_under_a_new_handle_stays_one_row(api: Api, backend: Backend) {
    let emu = emulator(EmulatorConfig { api, visibility: Duration::from_secs(1), ..fast_emulator_config() }).await;
    let content = emu.enqueue_generated(1).remove(0);
    // The daemon waits 3 s before confirming, so the 1 s handle expires, the emulator
    // refuses it and redelivers the event under a new handle.
    let daemon = TestDaemon::for_emulator_on(&emu, "[confirm]\nmax_delay = \"3s\"\n", backend).await;
    let key = key_of(&content);
    eventually(Duration::from_secs(30), "the event was seen twice", || {
        daemon.stored_keys().get(&key).is_some_and(|&n| n >= 2)
    })
    .await;
    assert_eq!(daemon.rows(), 1);
    assert!(emu.stats().queue.redelivered >= 1);
    eventually(Duration::from_secs(30), "the late confirm is refused", || emu.stats().queue.confirms_refused >= 1)
        .await;

    // With a normal window again, the latest delivery is confirmed and the queue drains.
    emu.set_visibility(Duration::from_secs(30));
    eventually(Duration::from_secs(60), "the queue drains", || emu.stats().queue.outstanding == 0).await;
    assert_eq!(daemon.rows(), 1);
    let mut daemon = daemon;
    assert!(daemon.running(), "an expired handle must not stop the daemon:\n{}", daemon.log());
}

async fn sigkill_at_random_moments_loses_nothing(api: Api, backend: Backend) {
    let emu = emulator(EmulatorConfig { api, visibility: Duration::from_secs(2), ..fast_emulator_config() }).await;
    // Tencent's v2 pace for both APIs, so events are still flowing when each kill lands.
    let extra = "rate_limit_per_minute = 1000\n[confirm]\nmax_delay = \"200ms\"\nhandle_ttl = \"2s\"\n";
    let mut daemon = TestDaemon::for_emulator_on(&emu, extra, backend).await;
    let mut contents = Vec::new();
    for _ in 0..6 {
        contents.extend(emu.enqueue_generated(350));
        let pause = rand::thread_rng().gen_range(300..1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        daemon.kill9().await;
        daemon.spawn();
    }
    eventually(Duration::from_secs(120), "emulator has every event confirmed", || emu.stats().queue.outstanding == 0)
        .await;

    let keys = daemon.stored_keys();
    let expected: HashSet<String> = contents.iter().map(|c| key_of(c)).collect();
    assert_eq!(keys.len(), expected.len(), "every event stored exactly once");
    assert_eq!(keys.keys().cloned().collect::<HashSet<_>>(), expected);
    for confirmed in emu.confirmed() {
        assert!(keys.contains_key(&key_of(&confirmed)), "confirmed but not stored: {confirmed}");
    }
}

async fn ten_percent_faulty_answers_of_every_kind_still_store_everything_once(api: Api, backend: Backend) {
    let faults =
        Faults { rate: 0.10, kinds: FaultKind::ALL.to_vec(), hang_for: Duration::from_secs(3), actions: Vec::new() };
    let emu =
        emulator(EmulatorConfig { api, visibility: Duration::from_secs(4), faults, ..fast_emulator_config() }).await;
    let contents = emu.enqueue_generated(2000);
    let mut daemon = TestDaemon::for_emulator_on(
        &emu,
        "request_timeout = \"2s\"\nlong_poll_hold = \"1s\"\n[confirm]\nmax_delay = \"200ms\"\nhandle_ttl = \"4s\"\n[pull]\nbackoff_max = \"1s\"\n",
        backend,
    )
    .await;
    eventually(Duration::from_secs(180), "emulator has every event confirmed", || emu.stats().queue.outstanding == 0)
        .await;

    assert!(emu.stats().api.faults >= 10, "faults were injected: {:?}", emu.stats().api);
    let keys = daemon.stored_keys();
    let expected: HashSet<String> = contents.iter().map(|c| key_of(c)).collect();
    assert_eq!(keys.keys().cloned().collect::<HashSet<_>>(), expected);
    assert!(daemon.running(), "faults must never stop the daemon:\n{}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("malformed body"), "a non-JSON or wrong-shape answer is logged");
}

/// Every per-type member of the SDK's `EventContent` (the emulator's SDK-shaped fixtures),
/// alone and beside the other members sent as null, is stored once with its `EventType`
/// and task id, and `events list --file-id` finds it by every file it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_of_the_sdk_model_is_stored_and_found_by_each_of_its_files() {
    let emu = emulator(EmulatorConfig { api: Api::V3, ..fast_emulator_config() }).await;
    let members = vod_emulator::generate::V3_SDK_FIXTURES.len();
    // Two rounds of every template: one plain, one with the other members as null.
    let count = 2 * (members + vod_emulator::generate::V3_TEMPLATES.len());
    let contents = emu.enqueue_generated(count);
    let daemon = TestDaemon::for_emulator(&emu, "").await;
    eventually(Duration::from_secs(60), "every event confirmed", || emu.stats().queue.outstanding == 0).await;
    assert_eq!(daemon.rows(), count as i64);
    let store = daemon.store().unwrap();
    let rows = store.list_events(&vod_eventd::store::EventFilter { limit: 1000, ..Default::default() }).unwrap();
    for content in &contents {
        let v: serde_json::Value = serde_json::from_str(content).unwrap();
        let row = rows.iter().find(|r| &r.content == content).expect("stored as sent");
        assert_eq!(row.event_type, v["EventType"].as_str().unwrap());
        // The payload is the one non-null object member; its task id sits at its top.
        let payload = v.as_object().unwrap().values().find(|m| m.is_object()).unwrap();
        let task = ["TaskId", "ProcedureTaskId"].iter().find_map(|k| payload[*k].as_str());
        assert_eq!(row.task_id.as_deref(), task, "{content}");
        let mut files = Vec::new();
        file_ids(payload, &mut files);
        for file in files {
            let out = cli()
                .args(["events", "list", "--json", "--file-id", &file, "--config"])
                .arg(&daemon.config_path)
                .output()
                .unwrap();
            let found: Vec<i64> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_i64().unwrap())
                .collect();
            assert_eq!(found, [row.id], "--file-id {file} finds {}", row.event_type);
        }
    }
}

/// Every string named `*FileId`, and every string of a `FileIdSet`, anywhere in `value`.
fn file_ids(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) if k.ends_with("FileId") => out.push(s.clone()),
                    serde_json::Value::Array(items) if k == "FileIdSet" => {
                        out.extend(items.iter().filter_map(|i| i.as_str().map(String::from)))
                    }
                    _ => file_ids(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| file_ids(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_upstream_is_logged_and_retried_until_it_clears() {
    let faults = Faults { rate: 1.0, kinds: vec![FaultKind::NotJson, FaultKind::WrongShape], ..Faults::default() };
    let emu = emulator(EmulatorConfig { faults, ..fast_emulator_config() }).await;
    let contents = emu.enqueue_generated(20);
    let mut daemon = TestDaemon::for_emulator(&emu, "[pull]\nbackoff_max = \"300ms\"\n").await;
    eventually(Duration::from_secs(20), "garbage answers were retried", || emu.stats().api.faults >= 5).await;
    assert!(daemon.running());
    assert_eq!(daemon.rows(), 0);
    assert!(daemon.log().contains("PullEvent answered with a malformed body"), "{}", daemon.log());

    emu.set_faults(Faults::default());
    eventually(Duration::from_secs(30), "events flow once answers are sane", || emu.stats().queue.outstanding == 0)
        .await;
    assert_eq!(daemon.rows(), contents.len() as i64);
}

async fn empty_answers_in_every_documented_form_mean_poll_again(api: Api, backend: Backend) {
    let emu = emulator(EmulatorConfig {
        api,
        hold: Duration::from_millis(200),
        empty_response: vod_emulator::EmptyResponse::Rotate,
        ..EmulatorConfig::default()
    })
    .await;
    let mut daemon = TestDaemon::for_emulator_on(&emu, "", backend).await;
    eventually(Duration::from_secs(20), "several empty polls", || pull_calls(&emu) >= 6).await;
    let contents = emu.enqueue_generated(5);
    eventually(Duration::from_secs(20), "events after empty polls", || emu.stats().queue.outstanding == 0).await;
    assert_eq!(daemon.rows(), contents.len() as i64);
    assert!(daemon.running());
    assert!(!daemon.log().contains("PullEvent failed"), "an empty queue is not a failure:\n{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_confirms_what_is_stored_and_exits_zero() {
    let emu = emulator(fast_emulator_config()).await;
    emu.enqueue_generated(300);
    // A long max_delay: only the shutdown flush can confirm the last partial batch.
    let mut daemon = TestDaemon::for_emulator(&emu, "[confirm]\nmax_delay = \"20s\"\n").await;
    eventually(Duration::from_secs(60), "all events stored", || daemon.rows() == 300).await;
    let status = daemon.terminate().await;
    assert!(status.success(), "exit status {status:?}\n{}", daemon.log());
    let stats = emu.stats();
    assert_eq!(stats.queue.confirmed, 300, "every stored event confirmed at shutdown: {stats:?}");
}
