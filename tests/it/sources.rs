//! Several sources in one daemon: three apps (two on one credential, one on another,
//! mixing v2 and v3) pulled at once, each event stored once with its source and confirmed
//! under its own app (the emulator refuses cross-app confirms and counts them), routes by
//! source, one source's refused credentials leaving the others running, the same content
//! in two apps as two events, discovery of apps with `sources = "all"`, and SIGKILL.

use std::collections::HashMap;
use std::time::Duration;

use vod_emulator::{
    Api, App, Credential, Emulator, EmulatorConfig, FaultKind, Faults, DEMO_SECRET_ID, DEMO_SECRET_KEY,
};

use crate::receiver::Receiver;
use crate::support::{delivery_states, emulator, eventually, fast_emulator_config, free_port, Backend, TestDaemon};

const PROD_A: u64 = 1500000101;
const PROD_B: u64 = 1500000102;
const OTHER: u64 = 1500000201;
const OTHER_ID: &str = "AKIDsecondACCOUNTemulator00000000000";
const OTHER_KEY: &str = "second-account-emulator-key";

fn two_accounts() -> EmulatorConfig {
    EmulatorConfig {
        credentials: vec![
            Credential { secret_id: DEMO_SECRET_ID.into(), secret_key: DEMO_SECRET_KEY.into() },
            Credential { secret_id: OTHER_ID.into(), secret_key: OTHER_KEY.into() },
        ],
        sub_app_ids: Some(vec![PROD_A, PROD_B, OTHER]),
        ..fast_emulator_config()
    }
}

/// `[[sources]]`: prod-a (v2, [vod]'s credential), prod-b (v3, same credential), other
/// (v2, another credential); webhooks to `url` only for `prod-*`.
fn three_sources(emu: &Emulator, url: &str) -> String {
    format!(
        "[[sources]]\nname = \"prod-a\"\nsub_app_id = {PROD_A}\n\
         [[sources]]\nname = \"prod-b\"\nsub_app_id = {PROD_B}\napi = \"v3\"\nendpoint = \"{v3}\"\n\
         [[sources]]\nname = \"other\"\nsub_app_id = {OTHER}\nsecret_id = \"{OTHER_ID}\"\nsecret_key = \"{OTHER_KEY}\"\n\
         [[routes]]\nevents = [\"*\"]\nsources = [\"prod-*\"]\nhandlers = [\"hook\"]\n\
         [handlers.hook]\ntype = \"webhook\"\nurl = \"{url}\"\nconcurrency = 8\n",
        v3 = emu.endpoint_v3()
    )
}

/// Stored rows per (source, sub_app_id).
fn rows_by_source(daemon: &TestDaemon) -> HashMap<(String, Option<i64>), i64> {
    let Some(store) = daemon.store() else { return HashMap::new() };
    let mut rows = HashMap::new();
    for e in store.events_after(0, u32::MAX).unwrap() {
        *rows.entry((e.source, e.sub_app_id)).or_default() += 1;
    }
    rows
}

fn expected(n: i64) -> HashMap<(String, Option<i64>), i64> {
    [("prod-a", PROD_A), ("prod-b", PROD_B), ("other", OTHER)]
        .into_iter()
        .map(|(name, app)| ((name.to_string(), Some(app as i64)), n))
        .collect()
}

fn enqueue_everywhere(emu: &Emulator, each: usize) {
    emu.enqueue_generated_as(Some(PROD_A), Api::V2, each);
    emu.enqueue_generated_as(Some(PROD_B), Api::V3, each);
    emu.enqueue_generated_as(Some(OTHER), Api::V2, each);
}

fn all_confirmed(emu: &Emulator, each: u64) -> bool {
    [PROD_A, PROD_B, OTHER].iter().all(|app| {
        let s = emu.stats_for(Some(*app));
        s.confirmed == each && s.outstanding == 0
    })
}

both_stores!(
    three_sources_store_confirm_and_route_every_event_under_its_own_app,
    one_source_with_refused_credentials_leaves_the_others_running_and_is_named_by_healthz_and_status,
    the_same_content_in_two_apps_is_two_events_and_two_deliveries,
    discovery_pulls_an_app_added_while_running_and_retires_a_disabled_one,
    sigkill_with_three_sources_loses_nothing_and_confirms_nothing_under_the_wrong_app,
    discovery_with_no_app_on_is_unhealthy_saying_so_until_an_app_turns_on,
    discovery_refused_at_start_exits_78_naming_the_keys_and_a_failure_is_retried,
    sighup_adds_removes_and_changes_sources_confirming_the_removed_ones_handles_first,
);

async fn three_sources_store_confirm_and_route_every_event_under_its_own_app(backend: Backend) {
    let emu = emulator(two_accounts()).await;
    let receiver = Receiver::start().await;
    enqueue_everywhere(&emu, 1000);
    let daemon = TestDaemon::start_on(&emu.endpoint(), &three_sources(&emu, &receiver.url()), backend).await;
    eventually(Duration::from_secs(240), "3,000 events confirmed, each in its own app", || all_confirmed(&emu, 1000))
        .await;
    assert_eq!(emu.stats().api.cross_app_confirms, 0, "no handle was confirmed under another app");
    assert_eq!(emu.stats().queue.confirms_refused, 0);
    eventually(Duration::from_secs(30), "each event stored once, with its source", || {
        rows_by_source(&daemon) == expected(1000)
    })
    .await;
    eventually(Duration::from_secs(120), "prod-* events delivered", || {
        daemon.store().is_some_and(|s| delivery_states(&s).get("done") == Some(&2000))
    })
    .await;
    assert_eq!(delivery_states(&daemon.store().unwrap()).values().sum::<i64>(), 2000, "other is routed nowhere");
    let mut by_header: HashMap<(String, String), usize> = HashMap::new();
    for r in receiver.accepted() {
        let header = |name: &str| r.headers.get(name).cloned().unwrap_or_default();
        *by_header.entry((header("x-vod-source"), header("x-vod-sub-app-id"))).or_default() += 1;
    }
    let a = (String::from("prod-a"), PROD_A.to_string());
    let b = (String::from("prod-b"), PROD_B.to_string());
    assert!(by_header[&a] >= 1000 && by_header[&b] >= 1000 && by_header.len() == 2, "{by_header:?}");
    let out = crate::support::cli()
        .args(["events", "list", "--json", "--limit", "5000", "--source", "prod-b", "--config"])
        .arg(&daemon.config_path)
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1000);
    assert!(lines.iter().all(|l| l["source"] == "prod-b" && l["sub_app_id"] == PROD_B), "{:?}", lines[0]);
}

async fn one_source_with_refused_credentials_leaves_the_others_running_and_is_named_by_healthz_and_status(
    backend: Backend,
) {
    let emu = emulator(EmulatorConfig {
        credentials: vec![Credential { secret_id: DEMO_SECRET_ID.into(), secret_key: DEMO_SECRET_KEY.into() }],
        ..two_accounts()
    })
    .await;
    let receiver = Receiver::start().await;
    enqueue_everywhere(&emu, 50);
    let port = free_port();
    let extra = format!(
        "{}[metrics]\nlisten = \"127.0.0.1:{port}\"\n[alert]\ncheck_interval = \"1s\"\n",
        three_sources(&emu, &receiver.url())
    );
    let mut daemon = TestDaemon::start_on(&emu.endpoint(), &extra, backend).await;
    eventually(Duration::from_secs(60), "prod-a and prod-b drained", || {
        [PROD_A, PROD_B].iter().all(|app| emu.stats_for(Some(*app)).confirmed == 50)
    })
    .await;
    assert_eq!(emu.stats_for(Some(OTHER)).confirmed, 0);
    let url = format!("http://127.0.0.1:{port}/healthz");
    let mut last = (0, String::new());
    eventually(Duration::from_secs(30), "/healthz names the refused source", || {
        last = futures_lite_get(&url);
        last.0 == 503 && last.1.contains("source other: its credentials are refused")
    })
    .await;
    assert!(!last.1.contains("source prod-a") && !last.1.contains("source prod-b"), "{}", last.1);
    // `status` shows each source's pull health and event configuration.
    let mut status = String::new();
    eventually(Duration::from_secs(30), "status shows every source", || {
        let out = crate::support::cli().args(["status", "--config"]).arg(&daemon.config_path).output().unwrap();
        status = String::from_utf8_lossy(&out.stdout).into_owned();
        status.contains("  other\n    last pull ok:  never\n    health:        UNHEALTHY: its credentials are refused")
            && status.contains(&format!(
                "event config:  app {OTHER} (source other): unknown: DescribeEventConfig failed (AuthFailure"
            ))
            && status.matches("    health:        ok\n").count() == 2
    })
    .await;
    for (name, app) in [("prod-a", PROD_A), ("prod-b", PROD_B)] {
        let section = status.split(&format!("  {name}\n")).nth(1).unwrap_or_default();
        let expected = format!("    event config:  app {app} (source {name}): Mode PULL");
        assert!(section.lines().nth(2).is_some_and(|l| l.starts_with(&expected)), "{expected} in {status}");
    }
    assert!(daemon.running(), "one refused source does not stop the daemon");
    emu.enqueue_generated_as(Some(PROD_A), Api::V2, 5);
    eventually(Duration::from_secs(30), "prod-a keeps flowing", || emu.stats_for(Some(PROD_A)).confirmed == 55).await;
    assert!(!daemon.log().contains(OTHER_KEY), "secrets never in logs");
    assert!(daemon.terminate().await.success());
}

/// A blocking GET (the condition closures of `eventually` are synchronous).
fn futures_lite_get(url: &str) -> (u16, String) {
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            match reqwest::get(&url).await {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(_) => (0, String::new()),
            }
        })
    })
    .join()
    .unwrap()
}

async fn the_same_content_in_two_apps_is_two_events_and_two_deliveries(backend: Backend) {
    let emu = emulator(two_accounts()).await;
    let receiver = Receiver::start().await;
    let content = r#"{"version":"4.0","eventType":"NewFileUpload","data":{"fileId":"5285890781763144364"}}"#;
    emu.enqueue_to(Some(PROD_A), content);
    emu.enqueue_to(Some(OTHER), content);
    let extra = three_sources(&emu, &receiver.url()).replace("sources = [\"prod-*\"]\n", "");
    let daemon = TestDaemon::start_on(&emu.endpoint(), &extra, backend).await;
    eventually(Duration::from_secs(30), "both confirmed", || {
        emu.stats_for(Some(PROD_A)).confirmed == 1 && emu.stats_for(Some(OTHER)).confirmed == 1
    })
    .await;
    eventually(Duration::from_secs(30), "two rows, two deliveries done", || {
        daemon.rows() == 2 && daemon.store().is_some_and(|s| delivery_states(&s).get("done") == Some(&2))
    })
    .await;
    let ids: std::collections::HashSet<String> =
        receiver.accepted().iter().map(|r| r.headers["webhook-id"].clone()).collect();
    assert_eq!(ids.len(), 2, "two webhook-ids: a receiver must not fold them");
}

async fn discovery_pulls_an_app_added_while_running_and_retires_a_disabled_one(backend: Backend) {
    const FIRST: u64 = 1500000301;
    const LATER: u64 = 1500000302;
    let emu = emulator(EmulatorConfig { sub_app_ids: Some(vec![FIRST]), ..fast_emulator_config() }).await;
    emu.enqueue_generated_to(Some(FIRST), 5);
    let extra = "[discovery]\nrefresh_interval = \"1s\"\n";
    let env = [("VOD_EVENTD_SOURCES", "all")];
    let daemon = TestDaemon::start_full_on(&emu.endpoint(), extra, "vod_eventd=debug", &env, backend).await;
    eventually(Duration::from_secs(30), "the first app drained", || emu.stats_for(Some(FIRST)).confirmed == 5).await;
    emu.add_app(App::new(LATER, "later"));
    emu.enqueue_generated_to(Some(LATER), 5);
    eventually(Duration::from_secs(30), "an app added while running is pulled", || {
        emu.stats_for(Some(LATER)).confirmed == 5
    })
    .await;
    assert!(emu.set_app_status(FIRST, "Off"));
    eventually(Duration::from_secs(30), "a disabled app is retired", || {
        daemon.log().contains("Stopping a source") && daemon.log().contains("app-1500000301")
    })
    .await;
    let pulls_before = emu.stats_for(Some(FIRST)).delivered;
    emu.enqueue_generated_to(Some(FIRST), 3);
    emu.enqueue_generated_to(Some(LATER), 3);
    eventually(Duration::from_secs(30), "the other app keeps flowing", || emu.stats_for(Some(LATER)).confirmed == 8)
        .await;
    assert_eq!(emu.stats_for(Some(FIRST)).delivered, pulls_before, "nothing pulled from the retired app");
    let rows = rows_by_source(&daemon);
    assert_eq!(rows.get(&("app-1500000301".to_string(), Some(FIRST as i64))), Some(&5), "{rows:?}");
}

async fn sigkill_with_three_sources_loses_nothing_and_confirms_nothing_under_the_wrong_app(backend: Backend) {
    let emu = emulator(two_accounts()).await;
    let receiver = Receiver::start().await;
    enqueue_everywhere(&emu, 300);
    let mut daemon = TestDaemon::start_on(&emu.endpoint(), &three_sources(&emu, &receiver.url()), backend).await;
    eventually(Duration::from_secs(60), "some events stored", || daemon.rows() >= 200).await;
    daemon.kill9().await;
    daemon.spawn();
    eventually(Duration::from_secs(180), "every event confirmed after the restart", || all_confirmed(&emu, 300)).await;
    assert_eq!(emu.stats().api.cross_app_confirms, 0);
    eventually(Duration::from_secs(30), "each stored once with its source", || {
        rows_by_source(&daemon) == expected(300)
    })
    .await;
}

/// `sources = "all"` with a `/healthz` listener and a 1 s refresh; returns the daemon and
/// its `/healthz` URL.
async fn discovering(emu: &Emulator, extra: &str, backend: Backend) -> (TestDaemon, String) {
    let port = free_port();
    let extra = format!(
        "{extra}[discovery]\nrefresh_interval = \"1s\"\n[pull]\nbackoff_max = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    let env = [("VOD_EVENTD_SOURCES", "all")];
    let daemon = TestDaemon::start_full_on(&emu.endpoint(), &extra, "vod_eventd=debug", &env, backend).await;
    (daemon, format!("http://127.0.0.1:{port}/healthz"))
}

async fn discovery_with_no_app_on_is_unhealthy_saying_so_until_an_app_turns_on(backend: Backend) {
    const APP: u64 = 1500000401;
    let emu = emulator(EmulatorConfig { sub_app_ids: Some(vec![APP]), ..fast_emulator_config() }).await;
    assert!(emu.set_app_status(APP, "Off"));
    emu.enqueue_generated_to(Some(APP), 3);
    let (mut daemon, healthz) = discovering(&emu, "", backend).await;
    let mut last = (0, String::new());
    eventually(Duration::from_secs(30), "/healthz says no app is on", || {
        last = futures_lite_get(&healthz);
        last.0 == 503
    })
    .await;
    assert_eq!(last.1, "unhealthy: no sources: DescribeSubAppIds listed no app with Status On\n");
    assert!(daemon.running(), "no app on is no reason to exit");
    assert_eq!(emu.stats_for(Some(APP)).delivered, 0, "an app that is off is not pulled");
    assert!(emu.set_app_status(APP, "On"));
    eventually(Duration::from_secs(30), "the app turned on is pulled", || emu.stats_for(Some(APP)).confirmed == 3)
        .await;
    eventually(Duration::from_secs(30), "/healthz healthy again", || futures_lite_get(&healthz).0 == 200).await;
    assert!(daemon.terminate().await.success());
}

async fn discovery_refused_at_start_exits_78_naming_the_keys_and_a_failure_is_retried(backend: Backend) {
    const APP: u64 = 1500000501;
    // Refused credentials: exit 78, naming the keys to fix; the secret never logged.
    let emu = emulator(EmulatorConfig {
        credentials: vec![Credential { secret_id: DEMO_SECRET_ID.into(), secret_key: "another-key".into() }],
        sub_app_ids: Some(vec![APP]),
        ..fast_emulator_config()
    })
    .await;
    let (mut daemon, _) = discovering(&emu, "", backend).await;
    let status =
        tokio::time::timeout(Duration::from_secs(20), daemon.child.as_mut().unwrap().wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(78), "{}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains("sources = \"all\"") && log.contains("DescribeSubAppIds refused the [vod] credentials"),
        "{log}"
    );
    assert!(log.contains("vod.secret_id") && log.contains("vod.secret_key"), "{log}");
    assert!(!log.contains(DEMO_SECRET_KEY), "the secret key must never be logged");

    // A missing CAM permission: exit 78, naming the permission.
    let emu = emulator(EmulatorConfig { sub_app_ids: Some(vec![APP]), ..fast_emulator_config() }).await;
    emu.deny_action("DescribeSubAppIds", Some("UnauthorizedOperation"));
    let (mut daemon, _) = discovering(&emu, "", backend).await;
    let status =
        tokio::time::timeout(Duration::from_secs(20), daemon.child.as_mut().unwrap().wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(78), "{}", daemon.log());
    assert!(daemon.log().contains("grant vod:DescribeSubAppIds"), "{}", daemon.log());

    // Any other failure: retried with backoff, unhealthy meanwhile, pulled once it answers.
    emu.deny_action("DescribeSubAppIds", None);
    emu.set_faults(Faults {
        rate: 1.0,
        kinds: vec![FaultKind::Http500],
        actions: vec!["DescribeSubAppIds".into()],
        ..Faults::default()
    });
    emu.enqueue_generated_to(Some(APP), 3);
    let (mut daemon, healthz) = discovering(&emu, "", backend).await;
    eventually(Duration::from_secs(30), "DescribeSubAppIds retried", || emu.stats().api.faults >= 3).await;
    let (code, body) = futures_lite_get(&healthz);
    assert!(code == 503 && body.contains("no sources yet: DescribeSubAppIds failed"), "{code} {body}");
    assert!(daemon.running(), "a failure that may pass is retried, not an exit");
    emu.set_faults(Faults::default());
    eventually(Duration::from_secs(30), "the app is pulled once DescribeSubAppIds answers", || {
        emu.stats_for(Some(APP)).confirmed == 3
    })
    .await;
    eventually(Duration::from_secs(30), "/healthz healthy", || futures_lite_get(&healthz).0 == 200).await;
    assert!(daemon.terminate().await.success());
}

async fn sighup_adds_removes_and_changes_sources_confirming_the_removed_ones_handles_first(backend: Backend) {
    // Tencent rotates a key as a new SecretId with its own key.
    const ROTATED_ID: &str = "AKIDrotatedKEYemulator000000000000000";
    const ROTATED_KEY: &str = "rotated-emulator-key";
    let emu = emulator(two_accounts()).await;
    // Handles wait up to 20 s for their confirm: at the reload they are still in flight.
    let common = "[confirm]\nmax_delay = \"20s\"\n";
    let before = format!(
        "{common}[[sources]]\nname = \"prod-a\"\nsub_app_id = {PROD_A}\n\
         [[sources]]\nname = \"prod-b\"\nsub_app_id = {PROD_B}\n"
    );
    let mut daemon = TestDaemon::start_on(&emu.endpoint(), &before, backend).await;
    emu.enqueue_generated_to(Some(PROD_A), 10);
    emu.enqueue_generated_to(Some(PROD_B), 10);
    let rows = |a, b, other| {
        let mut rows = HashMap::new();
        for (name, app, n) in [("prod-a", PROD_A, a), ("prod-b", PROD_B, b), ("other", OTHER, other)] {
            if n > 0 {
                rows.insert((name.to_string(), Some(app as i64)), n);
            }
        }
        rows
    };
    eventually(Duration::from_secs(30), "both sources' events stored", || rows_by_source(&daemon) == rows(10, 10, 0))
        .await;
    assert_eq!(emu.stats_for(Some(PROD_B)).confirmed, 0, "prod-b's handles are in flight at the reload");

    // prod-b removed, other added, prod-a with a new key.
    let after = format!(
        "{common}[[sources]]\nname = \"prod-a\"\nsub_app_id = {PROD_A}\nsecret_id = \"{ROTATED_ID}\"\nsecret_key = \"{ROTATED_KEY}\"\n\
         [[sources]]\nname = \"other\"\nsub_app_id = {OTHER}\nsecret_id = \"{OTHER_ID}\"\nsecret_key = \"{OTHER_KEY}\"\n"
    );
    // As in a real rotation, the new key works before the old one is revoked.
    let rotated = Credential { secret_id: ROTATED_ID.into(), secret_key: ROTATED_KEY.into() };
    let other = Credential { secret_id: OTHER_ID.into(), secret_key: OTHER_KEY.into() };
    let old = Credential { secret_id: DEMO_SECRET_ID.into(), secret_key: DEMO_SECRET_KEY.into() };
    emu.set_credentials(vec![old, rotated.clone(), other.clone()]);
    daemon.rewrite_config(&emu.endpoint(), "", &after);
    daemon.signal("HUP");
    eventually(Duration::from_secs(30), "reloaded", || daemon.log().contains("Configuration reloaded.")).await;
    let b = emu.stats_for(Some(PROD_B));
    assert!(b.confirmed == 10 && b.outstanding == 0, "prod-b confirmed its handles before it went: {b:?}");
    assert_eq!(emu.stats_for(Some(PROD_A)).confirmed, 10, "the changed prod-a confirmed its handles before restarting");
    let log = daemon.log();
    assert!(log.contains("Stopping a source") && log.contains("prod-b"), "{log}");

    // The old key revoked: prod-a pulls with the new one, other is pulled, prod-b is not.
    emu.set_credentials(vec![rotated, other]);
    let b_pulled = emu.stats_for(Some(PROD_B)).delivered;
    emu.enqueue_generated_to(Some(PROD_A), 5);
    emu.enqueue_generated_to(Some(OTHER), 5);
    emu.enqueue_generated_to(Some(PROD_B), 3);
    eventually(Duration::from_secs(30), "prod-a (new key) and other stored", || {
        rows_by_source(&daemon) == rows(15, 10, 5)
    })
    .await;
    assert_eq!(emu.stats_for(Some(PROD_B)).delivered, b_pulled, "nothing pulled from the removed source");
    assert!(daemon.terminate().await.success());
    for (app, confirmed) in [(PROD_A, 15), (OTHER, 5)] {
        let s = emu.stats_for(Some(app));
        assert!(s.confirmed == confirmed && s.in_flight == 0, "app {app}: {s:?}");
    }
    assert_eq!(emu.stats().api.cross_app_confirms, 0);
    assert_eq!(emu.stats().queue.confirms_refused, 0);
    let log = daemon.log();
    assert!(
        !log.contains(ROTATED_KEY) && !log.contains(OTHER_KEY) && !log.contains(DEMO_SECRET_KEY),
        "secrets never in logs"
    );
}
