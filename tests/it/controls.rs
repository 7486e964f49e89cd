//! Operator controls per handler end to end (issue 14): pause and resume from the CLI while
//! the daemon runs, the breaker pausing a failing handler and its probe resuming it (with
//! the `vod-eventd.handler.paused` alert routed, nothing dead over an outage longer than
//! `max_age`, and the other handler unaffected), and `rate` as the receiver measures it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::operator::handlers_list;
use crate::receiver::Receiver;
use crate::support::*;

fn webhook(name: &str, url: &str, extra: &str) -> String {
    format!("[handlers.{name}]\ntype = \"webhook\"\nurl = \"{url}\"\n{extra}\n")
}

fn line(daemon: &TestDaemon, handler: &str) -> Value {
    handlers_list(daemon).into_iter().find(|l| l["handler"] == handler).expect("a line for the handler")
}

fn states_of(daemon: &TestDaemon, handler: &str) -> std::collections::HashMap<String, i64> {
    let mut states = std::collections::HashMap::new();
    for d in daemon.store().unwrap().deliveries().unwrap().into_iter().filter(|d| d.handler == handler) {
        *states.entry(d.state).or_default() += 1;
    }
    states
}

fn handlers_cmd(daemon: &TestDaemon, args: &[&str]) -> String {
    let out = cli().arg("handlers").args(args).arg("--config").arg(&daemon.config_path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

both_stores!(
    pause_and_resume_from_the_cli_take_effect_within_the_poll_interval,
    the_breaker_pauses_a_failing_handler_probes_and_resumes_and_nothing_goes_dead,
    rate_20_per_second_holds_in_every_sliding_second
);

async fn pause_and_resume_from_the_cli_take_effect_within_the_poll_interval(backend: Backend) {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    let config = format!(
        "[dispatch]\npoll_interval = \"1s\"\n[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n{}",
        webhook("hook", &receiver.url(), "")
    );
    let daemon = TestDaemon::start_on(&emu.endpoint(), &config, backend).await;
    emu.enqueue_generated(3);
    eventually(Duration::from_secs(30), "3 delivered", || receiver.accepted().len() == 3).await;

    let said = handlers_cmd(&daemon, &["pause", "hook", "--reason", "receiver maintenance"]);
    assert!(said.starts_with("Paused handler hook"), "{said}");
    let paused = line(&daemon, "hook");
    assert_eq!((paused["state"].as_str(), paused["paused_by"].as_str()), (Some("paused"), Some("operator")));
    assert_eq!(paused["reason"], "receiver maintenance");
    assert!(paused["paused_at"].as_i64().is_some());
    let table = handlers_cmd(&daemon, &["list"]);
    assert!(table.contains("paused (operator)") && table.contains("receiver maintenance"), "{table}");

    emu.enqueue_generated(4);
    eventually(Duration::from_secs(30), "4 deliveries stored while paused", || {
        states_of(&daemon, "hook").get("pending").copied() == Some(4)
    })
    .await;
    // Stored and due, yet nothing starts for longer than a poll interval and a half.
    let watch = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < watch {
        assert_eq!(receiver.recorded().len(), 3, "a paused handler's delivery was attempted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let resumed_at = Instant::now();
    let said = handlers_cmd(&daemon, &["resume", "hook"]);
    assert!(said.starts_with("Resumed handler hook after"), "{said}");
    eventually(Duration::from_secs(10), "the first delivery after resume", || receiver.recorded().len() > 3).await;
    let took = receiver.recorded()[3].at - resumed_at;
    assert!(took <= Duration::from_millis(1500), "resume took {took:?} to take effect (poll interval 1s)");
    eventually(Duration::from_secs(10), "all 7 delivered", || receiver.accepted().len() == 7).await;
    assert_eq!(line(&daemon, "hook")["state"], "active");
    assert!(line(&daemon, "hook").get("paused_by").is_none());

    let out = cli().args(["handlers", "pause", "nope", "--config"]).arg(&daemon.config_path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no handler named `nope` in the config; configured: hook"), "{err}");
}

async fn the_breaker_pauses_a_failing_handler_probes_and_resumes_and_nothing_goes_dead(backend: Backend) {
    const EVENTS: usize = 20;
    let emu = emulator(fast_emulator_config()).await;
    let (flaky, steady, pager) = (Receiver::start().await, Receiver::start().await, Receiver::start().await);
    flaky.set(|b| b.status = 503);
    let config = format!(
        "[dispatch]\npoll_interval = \"100ms\"\nretry_schedule = [\"50ms\", \"100ms\", \"200ms\"]\nmax_age = \"2s\"\n\
         [[routes]]\nevents = [\"*\"]\nsources = [\"default\"]\nhandlers = [\"flaky\", \"steady\"]\n\
         [[routes]]\nevents = [\"vod-eventd.*\"]\nhandlers = [\"pager\"]\n{}{}{}",
        webhook("flaky", &flaky.url(), "pause_after = 5\nprobe_interval = \"500ms\""),
        webhook("steady", &steady.url(), ""),
        webhook("pager", &pager.url(), "")
    );
    let daemon = TestDaemon::start_on(&emu.endpoint(), &config, backend).await;
    // `handlers list` needs the store: on a loaded machine the daemon may not have created it yet.
    eventually(Duration::from_secs(30), "the daemon created its store", || daemon.store().is_some()).await;
    let outage_start = Instant::now();
    emu.enqueue_generated(EVENTS);

    eventually(Duration::from_secs(30), "the breaker to pause flaky", || {
        line(&daemon, "flaky")["paused_by"] == "breaker"
    })
    .await;
    let reason = line(&daemon, "flaky")["reason"].as_str().unwrap().to_string();
    assert!(reason.ends_with("failed attempts in a row (pause_after = 5)"), "{reason}");
    eventually(Duration::from_secs(30), "steady gets every event meanwhile", || steady.accepted().len() == EVENTS)
        .await;
    eventually(Duration::from_secs(30), "the pager gets vod-eventd.handler.paused", || {
        pager.accepted().iter().any(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            body["type"] == "vod-eventd.handler.paused" && body["handler"] == "flaky"
        })
    })
    .await;

    // An outage three times max_age: paused, probed every 500ms, nothing dead.
    let outage = outage_start + Duration::from_secs(6);
    while Instant::now() < outage {
        assert_eq!(states_of(&daemon, "flaky").get("dead"), None, "a delivery went dead while paused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = flaky.recorded();
    assert_eq!(line(&daemon, "flaky")["paused_by"], "breaker", "failed probes keep it paused");
    let probes = during.iter().filter(|r| r.at > outage_start + Duration::from_secs(3)).count();
    assert!((2..=8).contains(&probes), "{probes} probes in the last 3s of the outage, one per 500ms expected");

    flaky.set(|b| b.status = 200);
    eventually(Duration::from_secs(30), "the probe resumes flaky and every event is delivered", || {
        states_of(&daemon, "flaky").get("done").copied() == Some(EVENTS as i64)
    })
    .await;
    assert_eq!(line(&daemon, "flaky")["state"], "active");
    assert_eq!(states_of(&daemon, "flaky").get("dead"), None);
    assert_eq!(states_of(&daemon, "steady").get("done").copied(), Some(EVENTS as i64));
    assert_eq!(states_of(&daemon, "steady").get("dead"), None);
}

/// The issue asks for 2,000 events (100 s at 20/s): that is the long form (`CHAOS_LONG=1`, as
/// bench/chaos-long.sh sets); 200 keep CI at about 10 s and test the same bound.
fn rate_backlog() -> usize {
    if std::env::var_os("CHAOS_LONG").is_some() {
        2000
    } else {
        200
    }
}

async fn rate_20_per_second_holds_in_every_sliding_second(backend: Backend) {
    let backlog = rate_backlog();
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    emu.enqueue_generated(backlog);
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n{}",
        webhook("hook", &receiver.url(), "rate = \"20/s\"\nconcurrency = 8")
    );
    let daemon = TestDaemon::start_on(&emu.endpoint(), &config, backend).await;
    let deadline = Duration::from_secs(backlog as u64 / 20 + 50);
    eventually(deadline, "the backlog delivered", || receiver.accepted().len() == backlog).await;
    let times: Vec<Instant> = receiver.recorded().iter().map(|r| r.at).collect();
    let most = |times: &[Duration]| {
        let mut most = 0;
        for (i, start) in times.iter().enumerate() {
            most = most.max(times[i..].iter().take_while(|t| **t - *start < Duration::from_secs(1)).count());
        }
        most
    };
    // As sent: the attempts' start times the daemon recorded.
    let mut started: Vec<Duration> = daemon
        .store()
        .unwrap()
        .attempts()
        .unwrap()
        .iter()
        .map(|a| Duration::from_millis(a.started_at as u64))
        .collect();
    started.sort();
    let sent = most(&started);
    assert!(sent <= 20, "{sent} attempts started within one second at rate 20/s");
    // As received: the network and a loaded machine can bunch two requests by a few ms
    // (the pacing keeps a 2 % margin, 1 ms per request at 20/s); one more is tolerated.
    let received = most(&times.iter().map(|t| *t - times[0]).collect::<Vec<_>>());
    assert!(received <= 21, "{received} requests received within one second at rate 20/s");
    let span = *times.last().unwrap() - times[0];
    let least = Duration::from_millis((backlog as u64 / 20 - 1) * 1000);
    assert!(span >= least, "{backlog} requests in {span:?}: the rate did not bind");
    eventually(Duration::from_secs(10), "every outcome written", || {
        states_of(&daemon, "hook").get("done").copied() == Some(backlog as i64)
    })
    .await;
}
