//! The chaos suite: each scenario drives the real binary against the emulator and real
//! receivers, then checks from the emulator's and the receivers' own records that nothing
//! was lost: every enqueued event stored exactly once, every handle the emulator saw
//! confirmed belongs to a stored event, every routed delivery done (or dead where the
//! scenario demands), and duplicates at a receiver only ever repeat a `webhook-id`.
//!
//! `cargo test` runs a short version of each; `VOD_EVENTD_CHAOS=long cargo test --test it
//! chaos -- --test-threads 1` runs the long ones (50 kills, 60 s outages, 20,000-event backlog).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rand::Rng;
use vod_emulator::{Emulator, EmulatorConfig, FaultKind, Faults};

use crate::receiver::Receiver;
use crate::support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn long() -> bool {
    std::env::var("VOD_EVENTD_CHAOS").is_ok_and(|v| v == "long")
}

/// `short` normally, `long` under `VOD_EVENTD_CHAOS=long`.
fn scale<T>(short: T, long_: T) -> T {
    if long() {
        long_
    } else {
        short
    }
}

fn webhook(name: &str, receiver: &Receiver, extra: &str) -> String {
    format!("[handlers.{name}]\ntype = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n{extra}\n", receiver.url())
}

fn route_all(handlers: &[&str]) -> String {
    let names: Vec<String> = handlers.iter().map(|h| format!("\"{h}\"")).collect();
    format!("[[routes]]\nevents = [\"*\"]\nhandlers = [{}]\n", names.join(", "))
}

const FAST_RETRIES: &str =
    "[dispatch]\nretry_schedule = [\"100ms\", \"200ms\", \"400ms\"]\npoll_interval = \"100ms\"\n";

/// The pass criteria shared by every scenario.
fn assert_nothing_lost(
    emu: &Emulator,
    daemon: &TestDaemon,
    contents: &[String],
    receivers: &[(&str, &Receiver)],
    dead_handlers: &[&str],
) {
    let store = daemon.store().expect("store exists");
    let stored = stored_keys(&store);
    let expected: HashSet<String> = contents.iter().map(|c| key_of(c)).collect();
    assert_eq!(stored.keys().cloned().collect::<HashSet<_>>(), expected, "every enqueued event stored exactly once");
    for c in emu.confirmed() {
        assert!(stored.contains_key(&key_of(&c)), "a confirmed handle belongs to an event that is not stored");
    }
    let rows: Vec<(String, String, String)> = store
        .run_sync(|c| {
            let mut stmt = c.prepare("SELECT handler, state, webhook_id FROM deliveries")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .unwrap();
    for (handler, state, _) in &rows {
        let wanted = if dead_handlers.contains(&handler.as_str()) { "dead" } else { "done" };
        assert_eq!(state, wanted, "a delivery to {handler} ended {state}");
    }
    for (handler, receiver) in receivers {
        let ids: HashSet<&str> = rows.iter().filter(|(h, _, _)| h == handler).map(|(_, _, id)| id.as_str()).collect();
        for r in receiver.recorded() {
            assert!(
                ids.contains(r.headers["webhook-id"].as_str()),
                "{handler} got an id that is no delivery of its own"
            );
        }
        if !dead_handlers.contains(handler) {
            let accepted: HashSet<String> =
                receiver.accepted().iter().map(|r| r.headers["webhook-id"].clone()).collect();
            assert_eq!(accepted.len(), ids.len(), "every delivery to {handler} reached it");
        }
    }
}

fn accepted_per_id(receiver: &Receiver) -> HashMap<String, usize> {
    let mut per_id = HashMap::new();
    for r in receiver.accepted() {
        *per_id.entry(r.headers["webhook-id"].clone()).or_insert(0) += 1;
    }
    per_id
}

async fn all_settled(daemon: &TestDaemon, expected: i64) {
    eventually(Duration::from_secs(scale(120, 900)), "all deliveries settled", || {
        daemon.store().is_some_and(|s| {
            let states = delivery_states(&s);
            !states.contains_key("pending")
                && !states.contains_key("running")
                && states.values().sum::<i64>() == expected
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_before_commit_after_commit_mid_dispatch_and_mid_confirm() {
    let emu = emulator(EmulatorConfig { visibility: Duration::from_secs(2), ..fast_emulator_config() }).await;
    let receiver = Receiver::start().await;
    receiver.set(|b| b.delay = Duration::from_millis(20));
    let extra = format!(
        "[confirm]\nmax_delay = \"300ms\"\nhandle_ttl = \"2s\"\n{}{}{FAST_RETRIES}",
        route_all(&["internal"]),
        webhook("internal", &receiver, "concurrency = 2")
    );
    let mut daemon = TestDaemon::start(&emu.endpoint(), &extra).await;
    let (kills, per_round) = scale((6, 100), (60, 150));
    let mut contents = Vec::new();
    for _ in 0..kills {
        // Events flow at all times: each kill lands before, during or after commits,
        // confirms and deliveries, wherever the random pause ends.
        contents.extend(emu.enqueue_generated(per_round));
        tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(100..900))).await;
        daemon.kill9().await;
        daemon.spawn();
    }
    eventually(Duration::from_secs(scale(120, 600)), "queue drained", || emu.stats().queue.outstanding == 0).await;
    all_settled(&daemon, contents.len() as i64).await;
    assert_nothing_lost(&emu, &daemon, &contents, &[("internal", &receiver)], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_past_the_confirm_window_then_sigcont() {
    let window = scale(2, 30);
    let emu = emulator(EmulatorConfig { visibility: Duration::from_secs(window), ..fast_emulator_config() }).await;
    let receiver = Receiver::start().await;
    let contents = emu.enqueue_generated(40);
    let extra = format!(
        "[confirm]\nmax_delay = \"{}ms\"\nhandle_ttl = \"{window}s\"\n{}{}{FAST_RETRIES}",
        window * 700,
        route_all(&["internal"]),
        webhook("internal", &receiver, "")
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &extra).await;
    eventually(Duration::from_secs(30), "events stored", || daemon.rows() == 40).await;
    daemon.signal("STOP");
    // Stopped past the window: every unconfirmed handle expires at the emulator.
    let stopped_until = std::time::Instant::now() + Duration::from_secs(window + 2);
    eventually(Duration::from_secs(window + 10), "the window passes while stopped", || {
        std::time::Instant::now() >= stopped_until
    })
    .await;
    daemon.signal("CONT");
    eventually(Duration::from_secs(scale(60, 180)), "queue drained", || emu.stats().queue.outstanding == 0).await;
    all_settled(&daemon, 40).await;
    assert!(emu.stats().queue.redelivered > 0, "the stop outlasted the window: {:?}", emu.stats().queue);
    assert!(accepted_per_id(&receiver).values().all(|&n| n == 1), "a redelivery re-ran a handler");
    assert_nothing_lost(&emu, &daemon, &contents, &[("internal", &receiver)], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_event_failing_for_a_while() {
    let outage = Duration::from_secs(scale(5, 60));
    let faults = Faults {
        rate: 1.0,
        kinds: vec![FaultKind::Http500],
        actions: vec!["ConfirmEvent".into()],
        ..Faults::default()
    };
    let window = scale(2, 30);
    let emu =
        emulator(EmulatorConfig { visibility: Duration::from_secs(window), faults, ..fast_emulator_config() }).await;
    let receiver = Receiver::start().await;
    let contents = emu.enqueue_generated(100);
    let extra = format!(
        "[confirm]\nmax_delay = \"200ms\"\nhandle_ttl = \"{window}s\"\n{}{}{FAST_RETRIES}",
        route_all(&["internal"]),
        webhook("internal", &receiver, "")
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &extra).await;
    let until = std::time::Instant::now() + outage;
    eventually(outage + Duration::from_secs(5), "the outage lasts", || std::time::Instant::now() >= until).await;
    assert_eq!(emu.stats().queue.confirmed, 0);
    emu.set_faults(Faults::default());
    eventually(Duration::from_secs(60), "queue drained", || emu.stats().queue.outstanding == 0).await;
    all_settled(&daemon, 100).await;
    assert!(accepted_per_id(&receiver).values().all(|&n| n == 1), "redeliveries re-ran a handler");
    assert!(daemon.log().contains("ConfirmEvent failed"), "confirm failures are logged");
    assert_nothing_lost(&emu, &daemon, &contents, &[("internal", &receiver)], &[]);
}

both_apis!(pull_answering_6000_500_garbage_hangs_and_resets_one_time_in_five);

async fn pull_answering_6000_500_garbage_hangs_and_resets_one_time_in_five(api: vod_emulator::Api) {
    let faults = Faults {
        rate: 0.2,
        kinds: FaultKind::ALL.to_vec(),
        hang_for: Duration::from_secs(3),
        actions: vec!["PullEvent".into(), "PullEvents".into()],
    };
    let emu =
        emulator(EmulatorConfig { api, visibility: Duration::from_secs(3), faults, ..fast_emulator_config() }).await;
    let contents = emu.enqueue_generated(scale(500, 5000));
    let extra = "request_timeout = \"2s\"\nlong_poll_hold = \"1s\"\n[confirm]\nhandle_ttl = \"3s\"\nmax_delay = \"200ms\"\n[pull]\nbackoff_max = \"500ms\"\n";
    let mut daemon = TestDaemon::for_emulator(&emu, extra).await;
    eventually(Duration::from_secs(scale(120, 900)), "queue drained", || emu.stats().queue.outstanding == 0).await;
    assert!(emu.stats().api.faults > 0);
    assert!(daemon.running());
    assert_nothing_lost(&emu, &daemon, &contents, &[], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_down_then_throttling_then_up_one_gone_one_hanging() {
    let emu = emulator(fast_emulator_config()).await;
    let (main, gone, slow) = (Receiver::start().await, Receiver::start().await, Receiver::start().await);
    main.set(|b| b.status = 503);
    gone.set(|b| b.status = 410);
    slow.set(|b| b.delay = Duration::from_secs(3));
    let contents = emu.enqueue_generated(30);
    let extra = format!(
        "{}{}{}{}{FAST_RETRIES}",
        route_all(&["main", "gone", "slow"]),
        webhook("main", &main, ""),
        webhook("gone", &gone, ""),
        webhook("slow", &slow, "timeout = \"1s\"\nconcurrency = 8"),
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &extra).await;
    eventually(Duration::from_secs(30), "main is down for a while", || main.recorded().len() >= 60).await;
    main.set(|b| {
        b.status = 429;
        b.retry_after = Some("1".into());
    });
    let throttled_from = main.recorded().len();
    eventually(Duration::from_secs(30), "main throttles", || main.recorded().len() >= throttled_from + 30).await;
    main.set(|b| {
        b.status = 200;
        b.retry_after = None;
    });
    let slow_timeouts = || {
        daemon.store().map_or(0, |s| {
            s.run_sync(|c| {
                Ok(c.query_row(
                    "SELECT count(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
                     WHERE d.handler = 'slow' AND a.error LIKE '%timed out%'",
                    [],
                    |r| r.get::<_, i64>(0),
                )?)
            })
            .unwrap()
        })
    };
    eventually(Duration::from_secs(30), "the hanging receiver's attempts time out", || slow_timeouts() >= 8).await;
    slow.set(|b| b.delay = Duration::ZERO);
    all_settled(&daemon, 90).await;
    // After a 429 with Retry-After: 1, no attempt of the same delivery came sooner.
    let records = main.recorded();
    for id in accepted_per_id(&main).keys() {
        let times: Vec<_> =
            records.iter().filter(|r| &r.headers["webhook-id"] == id).map(|r| (r.at, r.status)).collect();
        for pair in times.windows(2) {
            if pair[0].1 == 429 {
                assert!(pair[1].0 - pair[0].0 >= Duration::from_millis(950), "Retry-After was not honoured");
            }
        }
    }
    assert_eq!(gone.recorded().len(), 30, "410 is permanent: one attempt each");
    assert!(daemon.log().contains("410 Gone"), "a 410 is flagged in the log");
    assert_nothing_lost(&emu, &daemon, &contents, &[("main", &main), ("gone", &gone), ("slow", &slow)], &["gone"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_under_the_rate_limit_without_a_single_4400() {
    let emu = emulator(fast_emulator_config()).await;
    let contents = emu.enqueue_generated(scale(2000, 20_000));
    let daemon = TestDaemon::start(&emu.endpoint(), "").await;
    eventually(Duration::from_secs(scale(60, 300)), "backlog drained", || emu.stats().queue.outstanding == 0).await;
    let stats = emu.stats();
    assert_eq!(stats.api.rate_limited, 0, "no 4400 at all");
    assert_nothing_lost(&emu, &daemon, &contents, &[], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_inside_one_batch_and_across_batches() {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    let a = r#"{"version":"4.0","eventType":"NewFileUpload","data":{"fileId":"DUP-A"}}"#;
    let b = r#"{"version":"4.0","eventType":"NewFileUpload","data":{"fileId":"DUP-B"}}"#;
    // A twice in the same pull, B once; A again (with other whitespace) in a later pull.
    emu.enqueue(a);
    emu.enqueue(a);
    emu.enqueue(b);
    let extra = format!("{}{}{FAST_RETRIES}", route_all(&["internal"]), webhook("internal", &receiver, ""));
    let daemon = TestDaemon::start(&emu.endpoint(), &extra).await;
    eventually(Duration::from_secs(20), "first batch stored", || daemon.rows() == 2).await;
    emu.enqueue(a.replace(',', ", "));
    eventually(Duration::from_secs(20), "queue drained", || emu.stats().queue.outstanding == 0).await;
    all_settled(&daemon, 2).await;
    let seen = stored_keys(&daemon.store().unwrap());
    assert_eq!(seen[&key_of(a)], 3, "three deliveries of A, one row");
    assert_eq!(seen[&key_of(b)], 1);
    assert!(accepted_per_id(&receiver).values().all(|&n| n == 1), "the handler ran once per content");
    assert_nothing_lost(&emu, &daemon, &[a.to_string(), b.to_string()], &[("internal", &receiver)], &[]);
}
