//! The chaos suite: each scenario drives the real binary against the emulator and real
//! receivers, then checks from the emulator's and the receivers' own records that nothing
//! was lost: every enqueued event stored exactly once, every handle the emulator saw
//! confirmed belongs to a stored event, every routed delivery done (or dead where the
//! scenario demands), and duplicates at a receiver only ever repeat a `webhook-id`.
//! Every scenario runs on SQLite and on PostgreSQL.
//!
//! `cargo test` runs a short version of each; `CHAOS_LONG=1` runs the long ones (60 kills,
//! a 2 h outage on a compressed schedule, the real 30 s window, 10 minutes of faults, a
//! 20,000-event backlog): `bench/chaos-long.sh` runs them and prints the table of the
//! summary lines each scenario appends to the file `CHAOS_SUMMARY` names.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;
use vod_emulator::{Emulator, EmulatorConfig, FaultKind, Faults};

use crate::receiver::Receiver;
use crate::support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The long suite's switch; outside the `VOD_EVENTD_` prefix, which daemons read as config.
fn long() -> bool {
    std::env::var("CHAOS_LONG").is_ok_and(|v| v == "1")
}

/// `short` normally, `long` under `CHAOS_LONG=1`.
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

/// What a handler's far end saw: the id (`webhook-id`, `VOD_EVENT_ID`) of every attempt
/// that reached it, and of those it accepted.
struct Sink {
    handler: &'static str,
    reached: Vec<String>,
    accepted: Vec<String>,
}

fn webhook_sink(handler: &'static str, receiver: &Receiver) -> Sink {
    let id = |r: crate::receiver::Recorded| r.headers["webhook-id"].clone();
    Sink {
        handler,
        reached: receiver.recorded().into_iter().map(id).collect(),
        accepted: receiver.accepted().into_iter().map(id).collect(),
    }
}

/// A webhook to a receiver, a shell hook that logs each run, and the DRM key fetcher,
/// all routed for every event.
struct ThreeHandlers {
    receiver: Receiver,
    dir: tempfile::TempDir,
}

impl ThreeHandlers {
    const NAMES: [&'static str; 3] = ["internal", "ingest", "keys"];

    async fn start() -> ThreeHandlers {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        // A key_dir others may write is refused; make it private whatever the umask.
        std::fs::set_permissions(dir.path().join("keys"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        ThreeHandlers { receiver: Receiver::start().await, dir }
    }

    /// The routes and handlers; `extra` (e.g. a timeout) goes to the webhook and the hook.
    fn config(&self, extra: &str) -> String {
        let dir = self.dir.path().display();
        let hook = self.dir.path().join("hook.sh");
        // The run is logged once the hook has read all of its input.
        std::fs::write(&hook, "#!/bin/sh\ncat > /dev/null\necho \"$VOD_EVENT_ID\" >> \"$1/runs\"\n").unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        format!(
            "{}{}[handlers.ingest]\ntype = \"shell\"\ncommand = [\"{}\", \"{dir}\"]\n{extra}\n\
             [handlers.keys]\ntype = \"drm\"\nkey_dir = \"{dir}/keys\"\nallow_http = true\nallow_private = [\"127.0.0.1\"]\n",
            route_all(&Self::NAMES),
            webhook("internal", &self.receiver, extra),
            hook.display(),
        )
    }

    fn sinks(&self) -> Vec<Sink> {
        let runs: Vec<String> = std::fs::read_to_string(self.dir.path().join("runs"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        vec![
            webhook_sink("internal", &self.receiver),
            Sink { handler: "ingest", reached: runs.clone(), accepted: runs },
        ]
    }

    /// Every data key the emulator issued (for the events' `data.drm.edkList` on v2, for the
    /// playlists of their task-flow outputs on v3) is in the key directory.
    fn assert_keys_fetched(&self, emu: &vod_emulator::Emulator) {
        let issued = emu.issued_keys();
        assert!(!issued.is_empty(), "the events carried no EDK to fetch");
        for (edk, _) in issued {
            let file = self.dir.path().join("keys").join(vod_eventd::handler::key_file_name(&edk));
            assert!(file.exists(), "no key file for an EDK of a stored event");
        }
    }
}

/// One scenario's figures: the line it adds to the file `CHAOS_SUMMARY` names.
#[derive(Debug)]
struct Summary {
    events: usize,
    stored: usize,
    confirmed: usize,
    lost: usize,
    duplicates: usize,
    redeliveries: u64,
}

/// A scenario under way: its name and faults for the summary, and when it began.
struct Scenario {
    name: String,
    faults: String,
    started: Instant,
}

impl Scenario {
    fn start(name: impl Into<String>, faults: impl Into<String>) -> Scenario {
        Scenario { name: name.into(), faults: faults.into(), started: Instant::now() }
    }

    /// The pass criteria shared by every scenario: counts the figures, writes the summary
    /// line, then asserts. Deliveries of `dead_handlers` must end dead, all others done.
    fn finish(
        self,
        emu: &Emulator,
        daemon: &TestDaemon,
        contents: &[String],
        sinks: &[Sink],
        dead_handlers: &[&str],
    ) -> Summary {
        let stored = daemon.stored_keys();
        let expected: HashSet<String> = contents.iter().map(|c| key_of(c)).collect();
        let confirmed: HashSet<String> = emu.confirmed().iter().map(|c| key_of(c)).collect();
        let rows = daemon.deliveries();
        let accepted: HashMap<&str, HashSet<&str>> =
            sinks.iter().map(|s| (s.handler, s.accepted.iter().map(String::as_str).collect())).collect();
        let undelivered = rows
            .iter()
            .filter(|(handler, state, id)| {
                let dead = dead_handlers.contains(&handler.as_str());
                state != if dead { "dead" } else { "done" }
                    || (!dead && accepted.get(handler.as_str()).is_some_and(|ids| !ids.contains(id.as_str())))
            })
            .count();
        let summary = Summary {
            events: expected.len(),
            stored: expected.iter().filter(|k| stored.contains_key(*k)).count(),
            confirmed: expected.intersection(&confirmed).count(),
            lost: expected.iter().filter(|k| !stored.contains_key(*k)).count() + undelivered,
            duplicates: sinks.iter().map(|s| s.accepted.len() - accepted[s.handler].len()).sum(),
            redeliveries: emu.stats().queue.redelivered,
        };
        self.report(&summary);

        assert_eq!(
            stored.keys().cloned().collect::<HashSet<_>>(),
            expected,
            "every enqueued event stored exactly once"
        );
        assert!(confirmed.is_subset(&expected), "a confirmed handle belongs to an event that is not stored");
        assert_eq!(summary.lost, 0, "{summary:?}; deliveries by state: {:?}", daemon.delivery_states());
        for sink in sinks {
            let ids: HashSet<&str> =
                rows.iter().filter(|(h, _, _)| h == sink.handler).map(|(_, _, id)| id.as_str()).collect();
            assert!(
                sink.reached.iter().all(|id| ids.contains(id.as_str())),
                "{} got an id that is no delivery of its own",
                sink.handler
            );
        }
        summary
    }

    /// Appends the summary line (JSON) to the file `CHAOS_SUMMARY` names, if any.
    fn report(&self, s: &Summary) {
        let Some(path) = std::env::var_os("CHAOS_SUMMARY") else { return };
        let line = json!({
            "scenario": self.name, "faults": self.faults, "events": s.events, "stored": s.stored,
            "confirmed": s.confirmed, "lost": s.lost, "duplicates": s.duplicates,
            "redeliveries": s.redeliveries, "wall_s": self.started.elapsed().as_secs(),
        });
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        std::io::Write::write_all(&mut file, format!("{line}\n").as_bytes()).unwrap();
    }
}

/// Lets `span` pass: how long a fault lasts (there is nothing to wait for).
async fn let_pass(span: Duration, what: &str) {
    let until = Instant::now() + span;
    eventually(span + Duration::from_secs(5), what, || Instant::now() >= until).await;
}

async fn all_settled(daemon: &TestDaemon, expected: i64) {
    eventually(Duration::from_secs(scale(120, 900)), "all deliveries settled", || {
        let states = daemon.delivery_states();
        !states.contains_key("pending") && !states.contains_key("running") && states.values().sum::<i64>() == expected
    })
    .await;
}

both_stores!(
    sigkill_before_commit_after_commit_mid_dispatch_and_mid_confirm,
    duplicates_inside_one_batch_and_across_batches,
    a_receiver_down_for_two_hours_on_a_compressed_retry_schedule,
    sigstop_past_the_confirm_window_with_handlers_running,
    confirm_event_failing_for_a_while,
    receivers_down_then_throttling_then_up_one_gone_one_hanging,
    a_backlog_drains_under_the_rate_limit_without_a_single_4400
);

async fn sigkill_before_commit_after_commit_mid_dispatch_and_mid_confirm(backend: Backend) {
    let (kills, per_round) = scale((6, 100), (60, 100));
    let scenario =
        Scenario::start(format!("SIGKILL under load, 3 handlers, {}", backend.label()), format!("{kills} SIGKILLs"));
    let emu = emulator(EmulatorConfig { visibility: Duration::from_secs(2), ..fast_emulator_config() }).await;
    let handlers = ThreeHandlers::start().await;
    handlers.receiver.set(|b| b.delay = Duration::from_millis(20));
    let extra = format!(
        "[confirm]\nmax_delay = \"300ms\"\nhandle_ttl = \"2s\"\n{}{FAST_RETRIES}",
        handlers.config("concurrency = 2")
    );
    let mut daemon = TestDaemon::start_on(&emu.endpoint(), &extra, backend).await;
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
    all_settled(&daemon, 3 * contents.len() as i64).await;
    scenario.finish(&emu, &daemon, &contents, &handlers.sinks(), &[]);
    handlers.assert_keys_fetched(&emu);
}

async fn a_receiver_down_for_two_hours_on_a_compressed_retry_schedule(backend: Backend) {
    // Time runs `factor` times faster: the default retry schedule and max_age, and a 2 h
    // outage, all divided by it.
    let factor = scale(1440, 120);
    let outage = Duration::from_secs(2 * 3600) / factor;
    let scenario = Scenario::start(
        format!("2 h receiver outage, {}", backend.label()),
        format!("2 h outage at {factor}x ({}s)", outage.as_secs()),
    );
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    receiver.set(|b| b.status = 503);
    let contents = emu.enqueue_generated(scale(50, 500));
    let millis = |d: Duration| format!("\"{}ms\"", (d / factor).as_millis());
    let schedule: Vec<String> = vod_eventd::retry::default_schedule().into_iter().map(millis).collect();
    let extra = format!(
        "{}{}[dispatch]\nretry_schedule = [{}]\nmax_age = {}\npoll_interval = \"100ms\"\n",
        route_all(&["internal"]),
        webhook("internal", &receiver, "concurrency = 8"),
        schedule.join(", "),
        millis(vod_eventd::config::DispatchConfig::default().max_age),
    );
    let daemon = TestDaemon::start_on(&emu.endpoint(), &extra, backend).await;
    eventually(Duration::from_secs(30), "the first attempt fails", || !receiver.recorded().is_empty()).await;
    let_pass(outage, "the outage lasts").await;
    receiver.set(|b| b.status = 200);
    all_settled(&daemon, contents.len() as i64).await;
    let mut failures: HashMap<String, usize> = HashMap::new();
    for r in receiver.recorded().into_iter().filter(|r| r.status == 503) {
        *failures.entry(r.headers["webhook-id"].clone()).or_default() += 1;
    }
    assert_eq!(failures.len(), contents.len(), "every delivery failed during the outage");
    // Steps 5 s, 30 s, 2 m, 10 m, 30 m: the sixth attempt comes some 43 minutes (scaled)
    // after the first, well inside the 2 hours.
    assert!(failures.values().all(|&n| n >= 6), "the outage did not walk the schedule: {failures:?}");
    scenario.finish(&emu, &daemon, &contents, &[webhook_sink("internal", &receiver)], &[]);
}

async fn sigstop_past_the_confirm_window_with_handlers_running(backend: Backend) {
    let window = scale(2, 30);
    let events = scale(100, 1000);
    let scenario = Scenario::start(
        format!("SIGSTOP past the window, 3 handlers, {}", backend.label()),
        format!("stopped {}s", window + 2),
    );
    let emu = emulator(EmulatorConfig { visibility: Duration::from_secs(window), ..fast_emulator_config() }).await;
    let handlers = ThreeHandlers::start().await;
    handlers.receiver.set(|b| b.delay = Duration::from_millis(20));
    let contents = emu.enqueue_generated(events);
    // Attempts outlast the stop, so nothing but a redelivery could make a handler run twice.
    let extra = format!(
        "[confirm]\nmax_delay = \"{}ms\"\nhandle_ttl = \"{window}s\"\n{}{FAST_RETRIES}",
        window * 700,
        handlers.config("concurrency = 1\ntimeout = \"10m\"")
    );
    let daemon = TestDaemon::start_on(&emu.endpoint(), &extra, backend).await;
    eventually(Duration::from_secs(60), "events stored", || daemon.rows() == events as i64).await;
    daemon.signal("STOP");
    let states = delivery_states(&daemon.store().unwrap());
    assert!(states.get("done").copied().unwrap_or(0) < 3 * events as i64, "stopped with handlers at work: {states:?}");
    // Stopped past the window: every unconfirmed handle expires at the emulator.
    let_pass(Duration::from_secs(window + 2), "the window passes while stopped").await;
    daemon.signal("CONT");
    eventually(Duration::from_secs(scale(60, 180)), "queue drained", || emu.stats().queue.outstanding == 0).await;
    all_settled(&daemon, 3 * events as i64).await;
    let summary = scenario.finish(&emu, &daemon, &contents, &handlers.sinks(), &[]);
    assert!(summary.redeliveries > 0, "the stop outlasted the window: {:?}", emu.stats().queue);
    assert_eq!(summary.duplicates, 0, "a redelivery re-ran a handler");
    handlers.assert_keys_fetched(&emu);
}

async fn confirm_event_failing_for_a_while(backend: Backend) {
    let outage = Duration::from_secs(scale(5, 60));
    let scenario = Scenario::start(
        format!("ConfirmEvent failing, {}", backend.label()),
        format!("{}s of confirm failures", outage.as_secs()),
    );
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
    let daemon = TestDaemon::start_on(&emu.endpoint(), &extra, backend).await;
    let_pass(outage, "the outage lasts").await;
    assert_eq!(emu.stats().queue.confirmed, 0);
    emu.set_faults(Faults::default());
    eventually(Duration::from_secs(60), "queue drained", || emu.stats().queue.outstanding == 0).await;
    all_settled(&daemon, 100).await;
    assert!(daemon.log().contains("ConfirmEvent failed"), "confirm failures are logged");
    let summary = scenario.finish(&emu, &daemon, &contents, &[webhook_sink("internal", &receiver)], &[]);
    assert_eq!(summary.duplicates, 0, "redeliveries re-ran a handler");
}

both_apis_and_stores!(upstream_faults_one_call_in_five_on_every_action);

async fn upstream_faults_one_call_in_five_on_every_action(api: vod_emulator::Api, backend: Backend) {
    let duration = Duration::from_secs(scale(10, 600));
    let name = format!("20 % upstream faults, {api:?}, 3 handlers, {}", backend.label());
    let scenario = Scenario::start(name, format!("{}s of faults", duration.as_secs()));
    let faults =
        Faults { rate: 0.2, kinds: FaultKind::ALL.to_vec(), hang_for: Duration::from_secs(3), actions: vec![] };
    let emu =
        emulator(EmulatorConfig { api, visibility: Duration::from_secs(3), faults, ..fast_emulator_config() }).await;
    let handlers = ThreeHandlers::start().await;
    let extra = format!(
        "request_timeout = \"2s\"\nlong_poll_hold = \"1s\"\n[confirm]\nhandle_ttl = \"3s\"\nmax_delay = \"200ms\"\n[pull]\nbackoff_max = \"500ms\"\n{}{FAST_RETRIES}",
        handlers.config("concurrency = 4")
    );
    let mut daemon = TestDaemon::for_emulator_on(&emu, &extra, backend).await;
    // Load for the whole time: 10 events a second.
    let mut contents = Vec::new();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        contents.extend(emu.enqueue_generated(5));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // At least one fault, or the scenario proved nothing. On a loaded machine the short form
    // may make so few calls that none drew its one-in-five fault (it happened once in CI);
    // the daemon keeps polling, so one comes.
    eventually(Duration::from_secs(60), "a fault injected", || emu.stats().api.faults > 0).await;
    eventually(Duration::from_secs(scale(120, 600)), "queue drained", || emu.stats().queue.outstanding == 0).await;
    all_settled(&daemon, 3 * contents.len() as i64).await;
    assert!(daemon.running());
    scenario.finish(&emu, &daemon, &contents, &handlers.sinks(), &[]);
    handlers.assert_keys_fetched(&emu);
}

async fn receivers_down_then_throttling_then_up_one_gone_one_hanging(backend: Backend) {
    let scenario =
        Scenario::start(format!("receivers down, 429, 410, hanging, {}", backend.label()), "3 receivers failing");
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
    let daemon = TestDaemon::start_on(&emu.endpoint(), &extra, backend).await;
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
            let attempts = s.attempts().unwrap();
            attempts
                .iter()
                .filter(|a| a.handler == "slow" && a.error.as_deref().is_some_and(|e| e.contains("timed out")))
                .count()
        })
    };
    eventually(Duration::from_secs(30), "the hanging receiver's attempts time out", || slow_timeouts() >= 8).await;
    slow.set(|b| b.delay = Duration::ZERO);
    all_settled(&daemon, 90).await;
    // After a 429 with Retry-After: 1, no attempt of the same delivery came sooner.
    let records = main.recorded();
    let ids: HashSet<&str> = records.iter().map(|r| r.headers["webhook-id"].as_str()).collect();
    for id in ids {
        let times: Vec<_> =
            records.iter().filter(|r| r.headers["webhook-id"] == id).map(|r| (r.at, r.status)).collect();
        for pair in times.windows(2) {
            if pair[0].1 == 429 {
                assert!(pair[1].0 - pair[0].0 >= Duration::from_millis(950), "Retry-After was not honoured");
            }
        }
    }
    assert_eq!(gone.recorded().len(), 30, "410 is permanent: one attempt each");
    assert!(daemon.log().contains("410 Gone"), "a 410 is flagged in the log");
    let sinks = [webhook_sink("main", &main), webhook_sink("gone", &gone), webhook_sink("slow", &slow)];
    scenario.finish(&emu, &daemon, &contents, &sinks, &["gone"]);
}

async fn a_backlog_drains_under_the_rate_limit_without_a_single_4400(backend: Backend) {
    let events = scale(2000, 20_000);
    let scenario =
        Scenario::start(format!("backlog under the rate limit, {}", backend.label()), format!("{events} queued"));
    let emu = emulator(fast_emulator_config()).await;
    let contents = emu.enqueue_generated(events);
    let daemon = TestDaemon::start_on(&emu.endpoint(), "", backend).await;
    eventually(Duration::from_secs(scale(60, 300)), "backlog drained", || emu.stats().queue.outstanding == 0).await;
    let stats = emu.stats();
    assert_eq!(stats.api.rate_limited, 0, "no 4400 at all");
    scenario.finish(&emu, &daemon, &contents, &[], &[]);
}

async fn duplicates_inside_one_batch_and_across_batches(backend: Backend) {
    let scenario =
        Scenario::start(format!("duplicates in and across batches, {}", backend.label()), "3 copies of one event");
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    let a = r#"{"version":"4.0","eventType":"NewFileUpload","data":{"fileId":"DUP-A"}}"#;
    let b = r#"{"version":"4.0","eventType":"NewFileUpload","data":{"fileId":"DUP-B"}}"#;
    // A twice in the same pull, B once; A again (with other whitespace) in a later pull, before
    // any handle of A is confirmed (confirms wait 5 s): a redelivery, folded. (The same content
    // after a confirm is a new occurrence: handlers::the_same_content_after_its_confirm_….)
    emu.enqueue(a);
    emu.enqueue(a);
    emu.enqueue(b);
    let extra = format!(
        "[confirm]\nmax_delay = \"5s\"\n{}{}{FAST_RETRIES}",
        route_all(&["internal"]),
        webhook("internal", &receiver, "")
    );
    let daemon = TestDaemon::start_on(&emu.endpoint(), &extra, backend).await;
    eventually(Duration::from_secs(20), "first batch stored", || daemon.rows() == 2).await;
    emu.enqueue(a.replace(',', ", "));
    eventually(Duration::from_secs(20), "queue drained", || emu.stats().queue.outstanding == 0).await;
    all_settled(&daemon, 2).await;
    let seen = daemon.stored_keys();
    assert_eq!(seen[&key_of(a)], 3, "three deliveries of A, one row");
    assert_eq!(seen[&key_of(b)], 1);
    let sinks = [webhook_sink("internal", &receiver)];
    let summary = scenario.finish(&emu, &daemon, &[a.to_string(), b.to_string()], &sinks, &[]);
    assert_eq!(summary.duplicates, 0, "the handler ran once per content");
}
