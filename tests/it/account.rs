//! The app's event configuration (issue 16): an app in PUSH mode is named at ERROR and makes
//! the daemon unhealthy until `account set-mode pull` fixes it without a restart;
//! switched-off event types are warned about once (and by `config check --online` when a
//! route names one); credentials without the DescribeEventConfig permission get one WARN
//! and pull on; `account show --json` is the emulator's state, and `set-mode` without
//! `--yes` and without a terminal changes nothing. Issue 25: the fix shows at once, not at
//! the next `account.check_interval`: `set-mode` asks the daemon through the store, and
//! pulled events prove PULL mode by themselves.

use std::process::{Output, Stdio};
use std::time::Duration;

use vod_emulator::event_config::{OFF, PUSH};
use vod_emulator::{Api, EmulatorConfig, EventConfig, FaultKind, Faults};

use crate::support::*;

/// Checks every second instead of every 10 minutes.
const FAST_CHECKS: (&str, &str) = ("VOD_EVENTD_ACCOUNT__CHECK_INTERVAL", "1s");

fn describe_calls(emu: &vod_emulator::Emulator) -> u64 {
    emu.stats().api.calls.get("DescribeEventConfig").copied().unwrap_or(0)
}

/// Log lines at `level` holding every one of `words`.
fn lines_with(log: &str, level: &str, words: &[&str]) -> usize {
    log.lines().filter(|l| l.contains(level) && words.iter().all(|w| l.contains(w))).count()
}

/// Runs the binary with stdin from /dev/null (no terminal).
fn cli(config: &std::path::Path, args: &[&str]) -> Output {
    crate::support::cli().args(args).arg("--config").arg(config).stdin(Stdio::null()).output().unwrap()
}

async fn healthz(port: u16) -> (u16, String) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn start(emu: &vod_emulator::Emulator, extra: &str, backend: Backend) -> TestDaemon {
    let endpoint = emu.endpoint_for(emu.api());
    let extra = format!("{}{extra}", api_line(emu.api()));
    TestDaemon::start_full_on(&endpoint, &extra, "vod_eventd=debug", &[FAST_CHECKS], backend).await
}

both_apis_and_stores!(an_app_in_push_mode_is_named_and_unhealthy_until_set_mode_pull_fixes_it_without_a_restart);

/// With v2 the account calls are API 3.0 calls with the same credentials.
async fn an_app_in_push_mode_is_named_and_unhealthy_until_set_mode_pull_fixes_it_without_a_restart(
    api: Api,
    backend: Backend,
) {
    let push = EventConfig { mode: PUSH.into(), ..EventConfig::pull_all_on() };
    let emu = emulator(EmulatorConfig { api, event_config: push, ..fast_emulator_config() }).await;
    let port = free_port();
    let daemon = start(&emu, &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"), backend).await;
    eventually(Duration::from_secs(30), "three checks", || describe_calls(&emu) >= 3).await;
    let log = daemon.log();
    assert_eq!(lines_with(&log, "ERROR", &["Mode = \"PUSH\"", "the default app", "set-mode pull"]), 1, "{log}");
    assert_eq!(lines_with(&log, "ERROR", &[]), 1, "one ERROR in all:\n{log}");
    let (status, body) = healthz(port).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the default app (no vod.sub_app_id) is in PUSH mode"), "{body}");
    let status = cli(&daemon.config_path, &["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("event config:  the default app (no vod.sub_app_id): Mode PUSH"), "{status}");

    // Failed checks in between: one WARN for the streak, the verdict stays, no second ERROR.
    let failing = Faults {
        rate: 1.0,
        kinds: vec![FaultKind::Code6000],
        actions: vec!["DescribeEventConfig".into()],
        ..Faults::default()
    };
    emu.set_faults(failing);
    eventually(Duration::from_secs(30), "two failed checks", || emu.stats().api.faults >= 2).await;
    assert_eq!(healthz(port).await.0, 503);
    emu.set_faults(Faults::default());
    let calls = describe_calls(&emu);
    eventually(Duration::from_secs(30), "a check after the failures", || describe_calls(&emu) > calls + 1).await;
    let log = daemon.log();
    assert_eq!(lines_with(&log, "WARN", &["Could not read the app's event configuration"]), 1, "{log}");
    assert_eq!(lines_with(&log, "ERROR", &[]), 1, "still one ERROR:\n{log}");

    // In PUSH mode Tencent sends events by HTTP: none is queued, none is pulled.
    emu.enqueue_generated(2);
    assert_eq!(emu.stats().api.not_queued, 2);

    let set = cli(&daemon.config_path, &["account", "set-mode", "pull", "--yes"]);
    let stdout = String::from_utf8_lossy(&set.stdout);
    assert!(set.status.success(), "{stdout}{}", String::from_utf8_lossy(&set.stderr));
    assert!(stdout.contains("Mode: PUSH -> PULL"), "{stdout}");
    let queued = emu.enqueue_generated(3);
    assert_eq!(queued.len(), 3);
    eventually(Duration::from_secs(30), "events flow", || daemon.rows() == 3).await;
    let mut healthy = false;
    for _ in 0..100 {
        if healthz(port).await.0 == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "/healthz is 200 again: {:?}", healthz(port).await);
    assert_eq!(lines_with(&daemon.log(), "INFO", &["PULL mode now"]), 1, "{}", daemon.log());
}

/// The daemon's `dispatch.poll_interval` in the issue 25 tests; `account.check_interval`
/// stays at its 10 minutes.
const POLL: Duration = Duration::from_secs(1);

/// A daemon on an app in PUSH mode with the default check interval, once it reports it.
async fn push_mode_daemon(backend: Backend) -> (vod_emulator::Emulator, TestDaemon, u16) {
    let push = EventConfig { mode: PUSH.into(), ..EventConfig::pull_all_on() };
    let emu = emulator(EmulatorConfig { event_config: push, ..fast_emulator_config() }).await;
    let port = free_port();
    let extra =
        format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n[dispatch]\npoll_interval = \"{}s\"\n", POLL.as_secs());
    let daemon = TestDaemon::start_on_logged(&emu.endpoint(), &extra, "vod_eventd=debug", backend).await;
    eventually(Duration::from_secs(30), "the first check", || describe_calls(&emu) == 1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while healthz(port).await.0 != 503 {
        assert!(std::time::Instant::now() < deadline, "/healthz is not 503: {:?}", healthz(port).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (emu, daemon, port)
}

both_stores!(set_mode_pull_makes_the_running_daemon_healthy_within_a_poll_interval);

/// `account set-mode pull --yes` with the daemon running: the daemon checks again within
/// `dispatch.poll_interval` (plus the call), not at the next check 10 minutes on, and with
/// no restart `/healthz` is 200 and `status` says PULL; events then flow. On PostgreSQL
/// the request goes through the shared database.
async fn set_mode_pull_makes_the_running_daemon_healthy_within_a_poll_interval(backend: Backend) {
    let (emu, daemon, port) = push_mode_daemon(backend).await;
    let set = cli(&daemon.config_path, &["account", "set-mode", "pull", "--yes"]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    assert!(String::from_utf8_lossy(&set.stderr).is_empty(), "no note: {}", String::from_utf8_lossy(&set.stderr));
    let asked = std::time::Instant::now();
    // One poll interval for the request to be read, a few seconds for the call on a busy machine.
    let limit = POLL + Duration::from_secs(4);
    while healthz(port).await.0 != 200 {
        assert!(
            asked.elapsed() < limit,
            "still unhealthy {:?} after set-mode: {:?}",
            asked.elapsed(),
            healthz(port).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The CLI's own two calls and the daemon's second check.
    assert_eq!(describe_calls(&emu), 4, "one more check by the daemon");
    let status = cli(&daemon.config_path, &["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("event config:  the default app (no vod.sub_app_id): Mode PULL"), "{status}");
    assert_eq!(lines_with(&daemon.log(), "INFO", &["PULL mode now"]), 1, "{}", daemon.log());
    emu.enqueue_generated(3);
    eventually(Duration::from_secs(30), "events flow", || daemon.rows() == 3).await;
    assert_eq!(healthz(port).await.0, 200);
}

both_stores!(a_switch_turned_on_by_set_mode_is_seen_by_the_running_daemon_at_once);

/// `set-mode pull --enable upload` on an app in PULL mode with NewFileUpload off: the
/// running daemon checks again at once, says the type is switched on, and `status` shows it.
async fn a_switch_turned_on_by_set_mode_is_seen_by_the_running_daemon_at_once(backend: Backend) {
    let off = EventConfig { upload_media_complete: OFF.into(), ..EventConfig::pull_all_on() };
    let emu = emulator(EmulatorConfig { event_config: off, ..fast_emulator_config() }).await;
    let extra = format!("[dispatch]\npoll_interval = \"{}s\"\n", POLL.as_secs());
    let daemon = TestDaemon::start_full_on(&emu.endpoint(), &extra, "vod_eventd=debug", &[], backend).await;
    eventually(Duration::from_secs(30), "the first check", || {
        lines_with(&daemon.log(), "WARN", &["will never arrive", "NewFileUpload"]) == 1
    })
    .await;
    let set = cli(&daemon.config_path, &["account", "set-mode", "pull", "--enable", "upload", "--yes"]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    eventually(POLL + Duration::from_secs(4), "the daemon's INFO", || {
        lines_with(&daemon.log(), "INFO", &["switched on now", "NewFileUpload"]) == 1
    })
    .await;
    let status = cli(&daemon.config_path, &["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("upload ON"), "{status}");
    assert_eq!(describe_calls(&emu), 4, "the daemon's two checks and the CLI's two calls");
}

both_stores!(pulled_events_prove_pull_mode_without_waiting_for_the_check_interval);

/// The app switched to PULL elsewhere (the console: nobody asks the daemon): the first
/// events pulled prove the mode, and `/healthz` is 200 as soon as they are stored.
async fn pulled_events_prove_pull_mode_without_waiting_for_the_check_interval(backend: Backend) {
    let (emu, daemon, port) = push_mode_daemon(backend).await;
    emu.set_event_config(None, EventConfig::pull_all_on());
    assert_eq!(emu.enqueue_generated(3).len(), 3);
    eventually(Duration::from_secs(30), "events flow", || daemon.rows() == 3).await;
    let (status, body) = healthz(port).await;
    assert_eq!(status, 200, "{body}");
    // The check asked for by the events confirms it, and says so once.
    eventually(Duration::from_secs(10), "the confirming check", || describe_calls(&emu) == 2).await;
    eventually(Duration::from_secs(10), "its INFO", || lines_with(&daemon.log(), "INFO", &["PULL mode now"]) == 1)
        .await;
    assert_eq!(lines_with(&daemon.log(), "ERROR", &[]), 1, "{}", daemon.log());
    assert_eq!(healthz(port).await.0, 200);
}

both_stores!(a_switched_off_upload_event_is_warned_about_once_and_a_route_naming_it_by_config_check);

/// NewFileUpload switched off: one WARN naming it (not the types that are on), no such
/// event in the queue, and `config check --online` names the route that waits for it.
async fn a_switched_off_upload_event_is_warned_about_once_and_a_route_naming_it_by_config_check(backend: Backend) {
    let off = EventConfig { upload_media_complete: OFF.into(), ..EventConfig::pull_all_on() };
    let emu = emulator(EmulatorConfig { event_config: off, ..fast_emulator_config() }).await;
    let route = "[[routes]]\nevents = [\"NewFileUpload\"]\nhandlers = [\"keys\"]\n[handlers.keys]\ntype = \"drm\"\n";
    let daemon = start(&emu, route, backend).await;
    assert!(emu.enqueue_generated_type("NewFileUpload", 2).unwrap().is_empty(), "never queued");
    emu.enqueue_generated_type("ProcedureStateChanged", 1).unwrap();
    eventually(Duration::from_secs(30), "three checks and the one queued event", || {
        describe_calls(&emu) >= 3 && daemon.rows() == 1
    })
    .await;
    let log = daemon.log();
    assert_eq!(lines_with(&log, "WARN", &["will never arrive", "NewFileUpload"]), 1, "{log}");
    assert_eq!(lines_with(&log, "WARN", &["FileDeleted"]), 0, "{log}");
    assert_eq!(lines_with(&log, "ERROR", &[]), 0, "{log}");

    let check = cli(&daemon.config_path, &["config", "check", "--online"]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{stdout}{}", String::from_utf8_lossy(&check.stderr));
    assert!(
        stdout.contains("warning: routes[0].events names NewFileUpload, which will never arrive")
            && stdout.contains("--enable upload"),
        "{stdout}"
    );
    assert!(!stdout.contains("FileDeleted"), "{stdout}");
}

both_stores!(credentials_refused_for_describe_event_config_only_warn_once_and_pulling_goes_on);

/// Credentials refused for DescribeEventConfig only (both of Tencent's codes for it): one
/// WARN naming the permission, never unhealthy, and events are pulled as before.
async fn credentials_refused_for_describe_event_config_only_warn_once_and_pulling_goes_on(backend: Backend) {
    for code in ["AuthFailure.UnauthorizedOperation", "UnauthorizedOperation"] {
        let emu = emulator(EmulatorConfig { api: Api::V3, ..fast_emulator_config() }).await;
        emu.deny_action("DescribeEventConfig", Some(code));
        let port = free_port();
        let daemon = start(&emu, &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"), backend).await;
        emu.enqueue_generated(3);
        eventually(Duration::from_secs(30), "three refused checks and the events", || {
            emu.stats().api.auth_failures >= 3 && daemon.rows() == 3
        })
        .await;
        assert_eq!(healthz(port).await.0, 200, "{code}");
        let log = daemon.log();
        assert_eq!(lines_with(&log, "WARN", &["Grant `vod:DescribeEventConfig`"]), 1, "{code}:\n{log}");
        assert_eq!(lines_with(&log, "ERROR", &[]), 0, "{code}:\n{log}");
        let check = cli(&daemon.config_path, &["config", "check", "--online"]);
        assert!(check.status.success(), "{code}");
        assert!(String::from_utf8_lossy(&check.stdout).contains("grant `vod:DescribeEventConfig`"), "{code}");
    }
}

/// `account show --json` prints the emulator's state for the configured app;
/// `set-mode` with stdin not a terminal and without `--yes` changes nothing and says so;
/// with `--yes` it sets exactly what it showed (the push URL stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_show_matches_the_emulator_and_set_mode_asks_before_changing_anything() {
    const APP: u64 = 1500000001;
    let emu = emulator(fast_emulator_config()).await;
    let fresh = EventConfig { notification_url: "https://cb.example/vod".into(), ..EventConfig::push_all_off() };
    emu.set_event_config(Some(APP), fresh.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let text = config_text(&dir.path().join("events.db"), &emu.endpoint(), "", &format!("sub_app_id = {APP}\n"));
    std::fs::write(&config, text).unwrap();

    let show = cli(&config, &["account", "show", "--json"]);
    assert!(show.status.success(), "{}", String::from_utf8_lossy(&show.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let mut expected = fresh.describe();
    expected["SubAppId"] = APP.into();
    assert_eq!(shown, expected);

    let asked = cli(&config, &["account", "set-mode", "pull", "--enable", "upload,delete"]);
    let stderr = String::from_utf8_lossy(&asked.stderr);
    assert!(!asked.status.success());
    assert!(stderr.contains("nothing changed") && stderr.contains("--yes"), "{stderr}");
    assert!(String::from_utf8_lossy(&asked.stdout).contains("UploadMediaCompleteEventSwitch: OFF -> ON"));
    assert_eq!(emu.event_config(Some(APP)), fresh, "nothing changed");
    assert_eq!(emu.stats().api.calls.get("ModifyEventConfig"), None);

    let set = cli(&config, &["account", "set-mode", "pull", "--enable", "upload,delete", "--yes"]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let now = emu.event_config(Some(APP));
    assert_eq!(
        (now.mode.as_str(), now.upload_media_complete.as_str(), now.delete_media_complete.as_str()),
        ("PULL", "ON", "ON")
    );
    assert_eq!((now.persistence_complete.as_str(), now.notification_url.as_str()), ("OFF", "https://cb.example/vod"));
    let text = String::from_utf8_lossy(&cli(&config, &["account", "show"]).stdout).into_owned();
    assert!(
        text.contains("app:          app 1500000001") && text.contains("never arrive: PersistenceComplete"),
        "{text}"
    );
    assert_eq!(emu.event_config(None), EventConfig::pull_all_on(), "other apps are untouched");
}
