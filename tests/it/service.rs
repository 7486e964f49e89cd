//! Running as a service: SIGTERM drains and exits 0, SIGHUP reloads (or refuses a broken
//! config), sd_notify messages in order with a watchdog that stops when pulls do,
//! /metrics agrees with the emulator, a full store stops confirms and recovers, and no
//! secret reaches logs, metrics or a hook's environment even at trace level.

use std::collections::{HashMap, HashSet};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vod_emulator::{EmulatorConfig, DEMO_SECRET_KEY};

use crate::receiver::Receiver;
use crate::support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn route_to(name: &str, url: &str) -> String {
    format!("[[routes]]\nevents = [\"*\"]\nhandlers = [\"{name}\"]\n[handlers.{name}]\ntype = \"webhook\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n")
}

fn done_webhook_ids(daemon: &TestDaemon) -> HashSet<String> {
    daemon.deliveries().into_iter().filter(|(_, state, _)| state == "done").map(|(_, _, id)| id).collect()
}

both_stores!(
    sigterm_under_load_drains_and_a_restart_reruns_nothing_done,
    sighup_applies_a_new_route_and_refuses_a_broken_config,
    sighup_orphans_a_removed_handlers_deliveries_warns_of_restart_settings_and_resumes,
);

async fn sigterm_under_load_drains_and_a_restart_reruns_nothing_done(backend: Backend) {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    receiver.set(|b| b.delay = Duration::from_millis(30));
    let contents = emu.enqueue_generated(400);
    let extra =
        format!("{}concurrency = 4\n[shutdown]\ndrain_timeout = \"5s\"\n", route_to("internal", &receiver.url()));
    let mut daemon = TestDaemon::start_on(&emu.endpoint(), &extra, backend).await;
    eventually(Duration::from_secs(60), "some deliveries done", || {
        daemon.delivery_states().get("done").is_some_and(|&n| n >= 50)
    })
    .await;

    let asked = Instant::now();
    let status = daemon.terminate().await;
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    assert!(asked.elapsed() < Duration::from_secs(10), "stopped within the drain limit: {:?}", asked.elapsed());
    let confirmed: HashSet<String> = emu.confirmed().iter().map(|c| key_of(c)).collect();
    let stored = daemon.stored_keys();
    assert!(stored.keys().all(|k| confirmed.contains(k)), "every stored event was confirmed before exit");

    let done_before = done_webhook_ids(&daemon);
    daemon.spawn();
    eventually(Duration::from_secs(120), "all 400 delivered", || daemon.delivery_states().get("done") == Some(&400))
        .await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in receiver.accepted() {
        *per_id.entry(r.headers["webhook-id"].clone()).or_default() += 1;
    }
    for id in &done_before {
        assert_eq!(per_id[id], 1, "a delivery done before the restart ran again");
    }
    assert_eq!(per_id.len(), contents.len());
}

async fn sighup_applies_a_new_route_and_refuses_a_broken_config(backend: Backend) {
    let emu = emulator(fast_emulator_config()).await;
    let (a, b) = (Receiver::start().await, Receiver::start().await);
    let poll = "[dispatch]\npoll_interval = \"100ms\"\n";
    let daemon = TestDaemon::start_on(&emu.endpoint(), &format!("{}{poll}", route_to("a", &a.url())), backend).await;
    emu.enqueue_generated(5);
    eventually(Duration::from_secs(30), "first events at A", || a.accepted().len() == 5).await;

    daemon.rewrite_config(&emu.endpoint(), "", &format!("{}{poll}", route_to("b", &b.url())));
    daemon.signal("HUP");
    eventually(Duration::from_secs(10), "reloaded", || daemon.log().contains("Configuration reloaded.")).await;
    emu.enqueue_generated(5);
    eventually(Duration::from_secs(30), "new events at B", || b.accepted().len() == 5).await;
    assert_eq!(a.accepted().len(), 5, "the old route no longer applies");

    std::fs::write(&daemon.config_path, "[vod\nthis is not toml").unwrap();
    daemon.signal("HUP");
    eventually(Duration::from_secs(10), "refused", || daemon.log().contains("Reload refused")).await;
    assert!(daemon.log().contains("TOML parse error"), "the reason is logged:\n{}", daemon.log());
    emu.enqueue_generated(5);
    eventually(Duration::from_secs(30), "still routed to B", || b.accepted().len() == 10).await;
    let mut daemon = daemon;
    assert!(daemon.running());
}

async fn sighup_orphans_a_removed_handlers_deliveries_warns_of_restart_settings_and_resumes(backend: Backend) {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    receiver.set(|b| b.status = 503);
    let port = free_port();
    let common = format!(
        "[dispatch]\nretry_schedule = [\"100ms\"]\npoll_interval = \"100ms\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    let daemon =
        TestDaemon::start_on(&emu.endpoint(), &format!("{}{common}", route_to("a", &receiver.url())), backend).await;
    emu.enqueue_generated(5);
    eventually(Duration::from_secs(30), "every delivery attempted", || receiver.recorded().len() >= 5).await;

    // `a` renamed to `b`, and two settings changed that only a restart applies.
    let renamed = format!("{}{common}[shutdown]\ndrain_timeout = \"5s\"\n", route_to("b", &receiver.url()));
    daemon.rewrite_config(&emu.endpoint(), "prune_interval = \"2h\"", &renamed);
    daemon.signal("HUP");
    eventually(Duration::from_secs(10), "reloaded", || daemon.log().contains("Configuration reloaded.")).await;
    let log = daemon.log();
    assert!(log.contains("Deliveries orphaned: no handler `a` is configured"), "{log}");
    let restart = log.lines().find(|l| l.contains("only after a restart")).unwrap_or_default();
    assert!(restart.contains("shutdown.drain_timeout") && restart.contains("store.prune_interval"), "{log}");

    let status = || {
        let out = cli().args(["status", "--config"]).arg(&daemon.config_path).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually(Duration::from_secs(10), "status counts the orphans with the reason", || {
        status().contains("5 orphaned: no handler named `a`")
    })
    .await;
    let (_, metrics) = get(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert!(metrics.contains("vod_eventd_deliveries_orphaned{handler=\"a\"} 5"), "{metrics}");
    let list =
        cli().args(["deliveries", "list", "--handler", "a", "--config"]).arg(&daemon.config_path).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert_eq!(
        list.lines().filter(|l| l.contains(" orphaned ") && l.contains("no handler named `a`")).count(),
        5,
        "{list}"
    );

    daemon.signal("HUP");
    eventually(Duration::from_secs(10), "reloaded again", || {
        daemon.log().matches("Configuration reloaded.").count() == 2
    })
    .await;
    assert_eq!(daemon.log().matches("Deliveries orphaned").count(), 1, "logged once");

    receiver.set(|b| b.status = 200);
    daemon.rewrite_config(&emu.endpoint(), "", &format!("{}{common}", route_to("a", &receiver.url())));
    daemon.signal("HUP");
    eventually(Duration::from_secs(30), "the orphans resume and are delivered", || {
        daemon.delivery_states().get("done") == Some(&5)
    })
    .await;
    assert!(daemon.log().contains("configured again"));
    assert!(!status().contains("orphaned: no handler"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_socket_gets_ready_status_watchdog_and_stopping_and_the_watchdog_stops_with_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let (socket_env, messages) = notify_socket(dir.path());
    let seen = |what: &str| messages.lock().unwrap().iter().any(|(_, m)| m.contains(what));
    let last_watchdog =
        || messages.lock().unwrap().iter().rev().find(|(_, m)| m.contains("WATCHDOG=1")).map(|(t, _)| *t);

    let emu = emulator(EmulatorConfig { hold: Duration::from_millis(300), ..EmulatorConfig::default() }).await;
    let env = [("NOTIFY_SOCKET", socket_env.as_str()), ("WATCHDOG_USEC", "400000")];
    let extra = "request_timeout = \"1s\"\nlong_poll_hold = \"300ms\"\n[health]\nmax_pull_age = \"2s\"\n[pull]\nbackoff_max = \"300ms\"\n";
    let mut daemon = TestDaemon::start_full(&emu.endpoint(), extra, "vod_eventd=debug", &env).await;
    eventually(Duration::from_secs(20), "READY, STATUS and WATCHDOG", || {
        seen("READY=1") && seen("STATUS=") && seen("WATCHDOG=1")
    })
    .await;

    drop(emu);
    eventually(Duration::from_secs(20), "watchdog pings stop while pulls fail", || {
        last_watchdog().is_some_and(|t| t.elapsed() > Duration::from_millis(1500))
    })
    .await;
    assert!(daemon.terminate().await.success());
    eventually(Duration::from_secs(5), "STOPPING", || seen("STOPPING=1")).await;

    let log = messages.lock().unwrap().clone();
    let first = |what: &str| log.iter().position(|(_, m)| m.contains(what)).unwrap();
    assert!(first("READY=1") < first("WATCHDOG=1"), "READY before the first watchdog ping");
    assert!(first("READY=1") <= first("STATUS="));
    assert!(log.last().unwrap().1.contains("STOPPING=1") || first("STOPPING=1") > first("WATCHDOG=1"));
}

/// What arrived on a fake `NOTIFY_SOCKET`, and when.
type NotifyLog = Arc<Mutex<Vec<(Instant, String)>>>;

/// Messages received on a fake `NOTIFY_SOCKET` in `dir`: (its path, what arrived when).
fn notify_socket(dir: &std::path::Path) -> (String, NotifyLog) {
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let messages: NotifyLog = Arc::default();
    let sink = messages.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => sink.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        }
    });
    (socket_path.display().to_string(), messages)
}

/// API 3.0 answers an idle queue, after its hold, with the error `ResourceNotFound`: that is
/// an empty pull, not a failure. For 90 s of idle queue (longer than `health.max_pull_age`),
/// the daemon keeps one PullEvents per hold, stays healthy, keeps the watchdog fed, counts no
/// pull error, and still confirms an event that comes afterwards at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_v3_queue_answering_resource_not_found_is_healthy_and_polled_once_per_hold() {
    const IDLE: Duration = Duration::from_secs(90);
    const HOLD: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let (socket_env, messages) = notify_socket(dir.path());
    let emu = emulator(EmulatorConfig { api: vod_emulator::Api::V3, hold: HOLD, ..EmulatorConfig::default() }).await;
    assert_eq!(emu.stats().api.calls.get("PullEvents"), None);
    let port = free_port();
    let env = [("NOTIFY_SOCKET", socket_env.as_str()), ("WATCHDOG_USEC", "10000000")];
    let extra = format!("api = \"v3\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let daemon = TestDaemon::start_full(&emu.endpoint_v3(), &extra, "vod_eventd=debug", &env).await;
    let health = format!("http://127.0.0.1:{port}/healthz");
    eventually(Duration::from_secs(10), "the daemon serves /healthz", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let started = Instant::now();
    let mut checks = 0;
    while started.elapsed() < IDLE {
        let (status, body) = get(&health).await;
        assert_eq!(status, 200, "after {:?} of idle queue: {body}", started.elapsed());
        checks += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(checks >= 60);
    let calls = emu.stats().api.calls.get("PullEvents").copied().unwrap_or(0);
    let holds = (IDLE.as_secs_f64() / HOLD.as_secs_f64()) as u64;
    assert!(calls >= holds * 8 / 10 && calls <= holds * 12 / 10 + 3, "{calls} PullEvents calls for {holds} holds");
    let recent_watchdog =
        messages.lock().unwrap().iter().any(|(t, m)| m.contains("WATCHDOG=1") && t.elapsed() < Duration::from_secs(10));
    assert!(recent_watchdog, "the watchdog is still fed after {IDLE:?} of idle queue");
    let (_, metrics) = get(&format!("http://127.0.0.1:{port}/metrics")).await;
    let errors: Vec<&str> = metrics.lines().filter(|l| l.contains("pull_errors") && !l.starts_with('#')).collect();
    assert!(errors.is_empty(), "an idle queue is not a pull error: {errors:?}");

    emu.enqueue_generated(1);
    eventually(Duration::from_secs(10), "the new event is confirmed", || emu.stats().queue.confirmed == 1).await;
    let latency = emu.enqueue_to_confirm()[0];
    assert!(latency <= Duration::from_secs(2), "enqueued to confirmed in {latency:?}");
    assert!(!daemon.log().contains("ResourceNotFound"), "no warning about the idle answer");
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// `name{labels} value` lines, summed over labels.
fn metric_sums(text: &str) -> HashMap<String, f64> {
    let mut sums = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample line: {line}"));
        let name = series.split('{').next().unwrap().to_string();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number in: {line}"));
        *sums.entry(name).or_default() += value;
    }
    sums
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_agree_with_the_emulator() {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    emu.enqueue_generated(200);
    let port = free_port();
    let extra = format!("{}[metrics]\nlisten = \"127.0.0.1:{port}\"\n", route_to("internal", &receiver.url()));
    let daemon = TestDaemon::start(&emu.endpoint(), &extra).await;
    eventually(Duration::from_secs(60), "drained and delivered", || {
        emu.stats().queue.outstanding == 0
            && daemon.store().is_some_and(|s| delivery_states(&s).get("done") == Some(&200))
    })
    .await;
    let (status, text) = get(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(status, 200);
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
    let build = text.lines().find(|l| l.starts_with("vod_eventd_build_info{")).expect("a build_info series");
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))) && build.contains("commit=\""),
        "{build}"
    );
    let m = metric_sums(&text);
    let stats = emu.stats();
    assert_eq!(m["vod_eventd_handles_confirmed_total"], stats.queue.confirmed as f64);
    assert_eq!(m["vod_eventd_events_received_total"], stats.queue.delivered as f64);
    let pulls = stats.api.calls["PullEvent"] as f64;
    assert!(
        m["vod_eventd_pulls_total"] <= pulls && m["vod_eventd_pulls_total"] >= pulls - 1.0,
        "{} vs {pulls}",
        m["vod_eventd_pulls_total"]
    );
    assert_eq!(m["vod_eventd_deliveries_total"], 200.0);
    assert_eq!(m["vod_eventd_deliveries_pending"], 0.0);
    assert!(m["vod_eventd_store_bytes"] > 0.0);
    assert_eq!(get(&format!("http://127.0.0.1:{port}/healthz")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_parameter_is_not_an_idle_queue() {
    // A v2 PullEvent 4000 that refuses a wrong SubAppId looked like "no event" forever.
    let emu = emulator(EmulatorConfig { sub_app_ids: Some(vec![1500000001]), ..fast_emulator_config() }).await;
    let port = free_port();
    let extra = format!(
        "sub_app_id = 1500000002\n[alert]\npull_stale_after = \"2s\"\ncheck_interval = \"1s\"\n\
         [pull]\nbackoff_max = \"300ms\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    let mut daemon = TestDaemon::start(&emu.endpoint(), &extra).await;
    eventually(Duration::from_secs(30), "an ERROR naming the answer and the keys", || {
        daemon.log().lines().any(|l| {
            l.contains("ERROR") && l.contains("SubAppId 1500000002 is not an app") && l.contains("vod.sub_app_id")
        })
    })
    .await;
    let (status, body) = get(&format!("http://127.0.0.1:{port}/healthz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("refusal") && body.contains("vod.sub_app_id"), "{body}");
    let calls = pull_calls(&emu);
    eventually(Duration::from_secs(10), "still pulling", || pull_calls(&emu) >= calls + 3).await;
    assert!(daemon.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_confirms_nothing_unstored_reports_unhealthy_and_recovers() {
    let emu = emulator(fast_emulator_config()).await;
    let port = free_port();
    let extra = format!("[pull]\nbackoff_max = \"500ms\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    // A 1 MiB cap: the store fills up long before 3,000 events are in.
    let mut daemon = TestDaemon::start(&emu.endpoint(), "[log]\nlevel = \"info\"\n").await;
    daemon.kill9().await;
    daemon.rewrite_config(&emu.endpoint(), "max_size_mb = 1", &extra);
    for suffix in ["", "-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", daemon.db_path.display())).ok();
    }
    daemon.spawn();
    let contents = emu.enqueue_generated(3000);
    eventually(Duration::from_secs(60), "the store fills up", || {
        daemon.log().contains("Could not store pulled events")
    })
    .await;
    let health = format!("http://127.0.0.1:{port}/healthz");
    let mut unhealthy = String::new();
    for _ in 0..100 {
        let (status, body) = get(&health).await;
        if status == 503 {
            unhealthy = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unhealthy.contains("store refuses writes"), "healthz: {unhealthy}");
    let stored = stored_keys(&daemon.store().unwrap());
    for c in emu.confirmed() {
        assert!(stored.contains_key(&key_of(&c)), "a confirm was sent for an event that is not stored");
    }
    assert!(emu.stats().queue.outstanding > 0);

    daemon.rewrite_config(&emu.endpoint(), "max_size_mb = 256", &extra);
    daemon.signal("HUP");
    eventually(Duration::from_secs(120), "recovers and drains", || emu.stats().queue.outstanding == 0).await;
    assert_eq!(stored_keys(&daemon.store().unwrap()).len(), contents.len());
    assert_eq!(get(&health).await.0, 200, "healthy again");
    assert!(daemon.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_data_key_in_trace_logs_metrics_or_hook_environment() {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    let contents = emu.enqueue_generated_type("ProcedureStateChanged", 4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\nenv > \"{}/env.$VOD_EVENT_ROWID\"\ncat > /dev/null\n", dir.path().display()),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let port = free_port();
    let extra = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"internal\", \"keys\", \"hook\"]\n\
         [handlers.internal]\ntype = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
         [handlers.keys]\ntype = \"drm\"\n[handlers.hook]\ntype = \"shell\"\ncommand = [\"{}\"]\nenv = [\"PATH\", \"HOME\"]\n\
         [metrics]\nlisten = \"127.0.0.1:{port}\"\n",
        receiver.url(),
        hook.display()
    );
    let daemon =
        TestDaemon::start_full(&emu.endpoint(), &extra, "trace", &[("VOD_EVENTD_VOD__SECRET_KEY", DEMO_SECRET_KEY)])
            .await;
    eventually(Duration::from_secs(60), "all 12 deliveries done", || {
        daemon.store().is_some_and(|s| delivery_states(&s).get("done") == Some(&12))
    })
    .await;

    let mut secrets =
        vec![DEMO_SECRET_KEY.to_string(), SECRET.to_string(), SECRET.trim_start_matches("whsec_").to_string()];
    for content in &contents {
        let v: serde_json::Value = serde_json::from_str(content).unwrap();
        for edk in v["data"]["drm"]["edkList"].as_array().unwrap() {
            let dk = emu.data_key(edk.as_str().unwrap()).unwrap();
            secrets.push(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, dk));
            secrets.push(vod_eventd::event::hex(&dk));
        }
    }
    let (_, metrics) = get(&format!("http://127.0.0.1:{port}/metrics")).await;
    let log = daemon.log();
    assert!(log.lines().count() > 50, "trace logging was on");
    let envs: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("env."))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert_eq!(envs.len(), 4);
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "a secret reached the trace log");
        assert!(!metrics.contains(secret.as_str()), "a secret reached /metrics");
        for env in &envs {
            assert!(!env.contains(secret.as_str()), "a secret reached a hook's environment");
            assert!(!env.contains("VOD_EVENTD_"), "daemon settings leaked into a hook's environment");
        }
    }
}
