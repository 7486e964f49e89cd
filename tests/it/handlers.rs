//! Handlers end to end: routing to a real webhook receiver and a real shell hook, retries
//! on schedule with a stable webhook-id, a poison event that dies without holding others
//! back, hostile payloads, timeouts that leave no process behind, DRM keys, and SIGKILL
//! during dispatch.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use crate::receiver::Receiver;
use crate::support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn webhook_section(name: &str, url: &str, extra: &str) -> String {
    format!("[handlers.{name}]\ntype = \"webhook\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n{extra}\n")
}

const FAST_RETRIES: &str =
    "[dispatch]\nretry_schedule = [\"100ms\", \"200ms\", \"400ms\"]\npoll_interval = \"100ms\"\n";

/// (id, webhook_id, content, state) of every delivery of `handler`.
fn deliveries_of(daemon: &TestDaemon, handler: &str) -> Vec<(i64, String, String, String)> {
    if let Some(url) = &daemon.pg_url {
        // psql prints one line per row: keep the content (JSON, one line) whole.
        let sql = format!(
            "SELECT d.id, d.webhook_id, d.state, e.content FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.handler = '{handler}'"
        );
        return crate::pg::psql(url, &sql)
            .into_iter()
            .map(|r| (r[0].parse().unwrap(), r[1].clone(), r[3..].join("\t"), r[2].clone()))
            .collect();
    }
    let store = daemon.store().unwrap();
    let deliveries = store.deliveries().unwrap().into_iter().filter(|d| d.handler == handler);
    deliveries.map(|d| (d.id, d.webhook_id, store.get_event(d.event_id).unwrap().unwrap().content, d.state)).collect()
}

fn verify_with_standardwebhooks(messages: &[crate::receiver::Recorded]) {
    let messages: Vec<_> = messages
        .iter()
        .map(|m| json!({"headers": m.headers, "body": String::from_utf8(m.body.clone()).unwrap()}))
        .collect();
    let mut child = command(python())
        .arg(format!("{}/tests/py/verify_webhooks.py", env!("CARGO_MANIFEST_DIR")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json!({"secret": SECRET, "messages": messages}).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "standardwebhooks refused a signature: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), messages.len().to_string());
}

both_stores!(
    every_routed_event_reaches_the_webhook_and_the_shell_hook_byte_exact,
    a_failing_receiver_gets_everything_after_recovery_with_the_original_id,
    sigkill_during_dispatch_loses_no_delivery,
);

async fn every_routed_event_reaches_the_webhook_and_the_shell_hook_byte_exact(backend: Backend) {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    let out = tempfile::tempdir().unwrap();
    let hook = script(out.path(), "hook.sh", "cat > \"$1/$VOD_EVENT_ID.json\"");
    emu.enqueue_generated(1000);
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"internal\", \"ingest\"]\n{}\
         [handlers.ingest]\ntype = \"shell\"\ncommand = [\"{hook}\", \"{}\"]\n",
        webhook_section("internal", &receiver.url(), ""),
        out.path().display()
    );
    let daemon = TestDaemon::start_on(&emu.endpoint(), &config, backend).await;
    eventually(Duration::from_secs(120), "2,000 deliveries done", || {
        daemon.delivery_states().get("done").copied() == Some(2000)
    })
    .await;

    let webhook = deliveries_of(&daemon, "internal");
    let by_id: HashMap<String, String> =
        webhook.iter().map(|(_, id, content, _)| (id.clone(), content.clone())).collect();
    let accepted = receiver.accepted();
    let received_ids: HashSet<String> = accepted.iter().map(|r| r.headers["webhook-id"].clone()).collect();
    assert_eq!(received_ids, by_id.keys().cloned().collect::<HashSet<_>>(), "every routed event reached the webhook");
    for r in &accepted {
        let id = &r.headers["webhook-id"];
        assert_eq!(r.body, by_id[id].as_bytes(), "body byte-identical to the stored eventContent");
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(r.headers.contains_key("x-vod-event-type"));
    }
    verify_with_standardwebhooks(&accepted);

    for (_, id, content, _) in deliveries_of(&daemon, "ingest") {
        let got = std::fs::read(out.path().join(format!("{id}.json"))).unwrap();
        assert_eq!(got, content.as_bytes(), "the hook got the eventContent byte-exact on stdin");
    }
}

async fn a_failing_receiver_gets_everything_after_recovery_with_the_original_id(backend: Backend) {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    receiver.set(|b| b.status = 503);
    emu.enqueue_generated(30);
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"internal\"]\n{}{FAST_RETRIES}",
        webhook_section("internal", &receiver.url(), "")
    );
    let daemon = TestDaemon::start_on(&emu.endpoint(), &config, backend).await;
    eventually(Duration::from_secs(30), "several failed rounds", || receiver.recorded().len() >= 30 * 3).await;
    receiver.set(|b| b.status = 200);
    eventually(Duration::from_secs(30), "all delivered", || daemon.delivery_states().get("done").copied() == Some(30))
        .await;

    let expected: HashSet<String> = deliveries_of(&daemon, "internal").into_iter().map(|(_, id, _, _)| id).collect();
    let failed_ids: HashSet<String> =
        receiver.recorded().iter().filter(|r| r.status == 503).map(|r| r.headers["webhook-id"].clone()).collect();
    let ok_ids: HashSet<String> = receiver.accepted().iter().map(|r| r.headers["webhook-id"].clone()).collect();
    assert_eq!(ok_ids, expected);
    assert_eq!(failed_ids, expected, "retries carry the same webhook-id as the first attempt");

    // Attempt times follow the schedule (100ms, 200ms, 400ms, 400ms...), jitter ±20 %.
    const STARTS: &str =
        "SELECT started_at FROM attempts WHERE delivery_id = (SELECT min(id) FROM deliveries) ORDER BY attempt";
    let starts: Vec<i64> = match &daemon.pg_url {
        Some(url) => crate::pg::psql(url, STARTS).iter().map(|r| r[0].parse().unwrap()).collect(),
        None => {
            let store = daemon.store().unwrap();
            let first = store.deliveries().unwrap()[0].id;
            store.attempts().unwrap().iter().filter(|a| a.delivery_id == first).map(|a| a.started_at).collect()
        }
    };
    assert!(starts.len() >= 4, "{starts:?}");
    for (i, pair) in starts.windows(2).enumerate() {
        let scheduled = [100, 200, 400][i.min(2)];
        assert!(
            pair[1] - pair[0] >= scheduled * 8 / 10,
            "gap {} before attempt {} is shorter than the schedule's {scheduled} ms",
            pair[1] - pair[0],
            i + 2
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    receiver.set(|b| {
        b.status = 429;
        b.retry_after = Some("2".into());
    });
    emu.enqueue_generated(1);
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"internal\"]\n{}{FAST_RETRIES}",
        webhook_section("internal", &receiver.url(), "")
    );
    let _daemon = TestDaemon::start(&emu.endpoint(), &config).await;
    eventually(Duration::from_secs(30), "two attempts", || receiver.recorded().len() >= 2).await;
    let r = receiver.recorded();
    assert!(
        r[1].at - r[0].at >= Duration::from_millis(1900),
        "second attempt {:?} after the first, before Retry-After",
        r[1].at - r[0].at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_dies_alone_and_replays_with_the_same_id() {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    let poison =
        r#"{"version":"4.0","eventType":"NewFileUpload","data":{"fileId":"POISON-1","fileUrl":"http://x/f0.mp4"}}"#;
    receiver.set(|b| b.poison = Some(("POISON-1".into(), 400)));
    emu.enqueue(poison);
    emu.enqueue_generated(500);
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"internal\"]\n{}{FAST_RETRIES}",
        webhook_section("internal", &receiver.url(), "concurrency = 8")
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &config).await;
    eventually(Duration::from_secs(60), "500 done and 1 dead", || {
        daemon.store().is_some_and(|s| {
            let states = delivery_states(&s);
            states.get("done").copied() == Some(500) && states.get("dead").copied() == Some(1)
        })
    })
    .await;
    let store = daemon.store().unwrap();
    let dead = store.deliveries().unwrap().into_iter().find(|d| d.state == "dead").expect("a dead delivery");
    let (event_id, last_status, last_error, attempts) =
        (dead.event_id, dead.last_status.unwrap_or(0), dead.last_error.unwrap_or_default(), dead.attempts);
    assert_eq!((last_status, attempts), (400, 1), "a 4xx is permanent: no retries");
    assert!(last_error.contains("400"), "{last_error}");
    let dead_id = receiver.recorded().iter().find(|r| r.status == 400).unwrap().headers["webhook-id"].clone();

    receiver.set(|b| b.poison = None);
    let out = cli()
        .args(["events", "replay", "--config"])
        .arg(&daemon.config_path)
        .arg(event_id.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(Duration::from_secs(20), "the replay is delivered", || {
        receiver.accepted().iter().any(|r| String::from_utf8_lossy(&r.body).contains("POISON-1"))
    })
    .await;
    let replayed =
        receiver.accepted().into_iter().find(|r| String::from_utf8_lossy(&r.body).contains("POISON-1")).unwrap();
    assert_eq!(replayed.headers["webhook-id"], dead_id);
    assert_eq!(replayed.body, poison.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_reach_the_hook_byte_exact_and_execute_nothing() {
    let emu = emulator(fast_emulator_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let pwned = dir.path().join("pwned");
    let nasty = format!("$(touch {0}) `touch {0}`; touch {0}; \"quoted\" 'single'\nnewline", pwned.display());
    let content = json!({"version": "4.0", "eventType": "NewFileUpload", "data": {"fileId": nasty, "fileName": nasty}})
        .to_string();
    emu.enqueue(content.clone());
    let hook = script(
        dir.path(),
        "hook.sh",
        "cat > \"$1/stdin\"\nprintf '%s' \"$VOD_FILE_ID\" > \"$1/file_id\"\nenv > \"$1/env\"",
    );
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"ingest\"]\n[handlers.ingest]\ntype = \"shell\"\ncommand = [\"{hook}\", \"{}\"]\n",
        dir.path().display()
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &config).await;
    eventually(Duration::from_secs(30), "hook ran", || {
        daemon.store().is_some_and(|s| delivery_states(&s).get("done") == Some(&1))
    })
    .await;
    assert_eq!(std::fs::read(dir.path().join("stdin")).unwrap(), content.as_bytes());
    // The environment carries the id percent-encoded where it holds a control character.
    assert_eq!(std::fs::read_to_string(dir.path().join("file_id")).unwrap(), nasty.replace('\n', "%0A"));
    assert!(!pwned.exists(), "nothing in the payload was executed");
    let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
    let names: HashSet<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    for name in &names {
        assert!(
            name.starts_with("VOD_") || ["PATH", "PWD", "SHLVL", "_"].contains(name),
            "unexpected variable {name} in the hook's environment"
        );
    }
    assert!(!env.contains(vod_emulator::DEMO_SECRET_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_the_type_and_ids_are_encoded_for_headers_and_the_environment() {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let content =
        json!({"version": "4.0", "eventType": "New\u{1}File\nUpload", "data": {"fileId": "F\u{0}1%é", "vodTaskId": "t\r1"}})
            .to_string();
    emu.enqueue(content.clone());
    let hook = script(
        dir.path(),
        "hook.sh",
        "cat > /dev/null\nprintf '%s|%s|%s' \"$VOD_EVENT_TYPE\" \"$VOD_FILE_ID\" \"$VOD_TASK_ID\" > \"$1/fields\"",
    );
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"internal\", \"ingest\"]\n{}\
         [handlers.ingest]\ntype = \"shell\"\ncommand = [\"{hook}\", \"{}\"]\n{FAST_RETRIES}",
        webhook_section("internal", &receiver.url(), ""),
        dir.path().display()
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &config).await;
    eventually(Duration::from_secs(30), "both deliveries done", || {
        daemon.store().is_some_and(|s| delivery_states(&s).get("done") == Some(&2))
    })
    .await;
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1, "delivered at the first attempt");
    assert_eq!(accepted[0].headers["x-vod-event-type"], "New%01File%0AUpload");
    assert_eq!(accepted[0].body, content.as_bytes(), "the body is still exact");
    let fields = std::fs::read_to_string(dir.path().join("fields")).unwrap();
    assert_eq!(fields, "New%01File%0AUpload|F%001%25%C3%A9|t%0D1");
    let attempts = daemon.store().unwrap().attempts().unwrap().len();
    assert_eq!(attempts, 2, "no attempt failed");
}

/// A 200,000-character file id cannot be in a hook's environment (Linux refuses it with
/// E2BIG, which was retried for three days): the hook runs at the first attempt with
/// `VOD_FILE_ID` empty, `VOD_OMITTED=VOD_FILE_ID`, and the whole event on stdin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_too_long_for_the_environment_reaches_the_hook_on_stdin_only() {
    let emu = emulator(fast_emulator_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let long = "F".repeat(200_000);
    let content = json!({"version": "4.0", "eventType": "NewFileUpload", "data": {"fileId": long, "vodTaskId": "t1"}})
        .to_string();
    emu.enqueue(content.clone());
    let hook = script(
        dir.path(),
        "hook.sh",
        "cat > \"$1/body\"\nprintf '%s|%s|%s|%s' \"${#VOD_FILE_ID}\" \"$VOD_OMITTED\" \"$VOD_TASK_ID\" \"$VOD_EVENT_TYPE\" > \"$1/fields\"",
    );
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"ingest\"]\n[handlers.ingest]\ntype = \"shell\"\ncommand = [\"{hook}\", \"{}\"]\n{FAST_RETRIES}",
        dir.path().display()
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &config).await;
    eventually(Duration::from_secs(30), "the delivery is done or dead", || {
        let states = daemon.delivery_states();
        states.contains_key("done") || states.contains_key("dead")
    })
    .await;
    assert_eq!(daemon.delivery_states().get("done"), Some(&1), "{:?}", daemon.deliveries());
    assert_eq!(std::fs::read_to_string(dir.path().join("fields")).unwrap(), "0|VOD_FILE_ID|t1|NewFileUpload");
    assert_eq!(std::fs::read_to_string(dir.path().join("body")).unwrap(), content, "the event is whole on stdin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_past_its_timeout_is_killed_with_its_grandchildren() {
    let emu = emulator(fast_emulator_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let hook = script(dir.path(), "hook.sh", "sleep 300 &\necho $! > \"$1/grandchild.pid\"\nsleep 300");
    emu.enqueue_generated(1);
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"slow\"]\n[handlers.slow]\ntype = \"shell\"\ncommand = [\"{hook}\", \"{}\"]\ntimeout = \"1s\"\n\
         [dispatch]\nretry_schedule = [\"1h\"]\n",
        dir.path().display()
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &config).await;
    eventually(Duration::from_secs(30), "the attempt timed out", || {
        daemon.store().is_some_and(|s| {
            s.list_deliveries(&vod_eventd::store::DeliveryFilter { limit: 10, ..Default::default() })
                .is_ok_and(|d| d.iter().any(|d| d.last_error.as_deref().is_some_and(|e| e.contains("timed out"))))
        })
    })
    .await;
    let pid = std::fs::read_to_string(dir.path().join("grandchild.pid")).unwrap().trim().to_string();
    eventually(Duration::from_secs(10), "the grandchild is gone", || gone(&pid)).await;
}

/// A descendant that leaves the hook's process group and session with `setsid` is killed
/// too: when the hook exits, and when it runs past its timeout. (Before the supervisor it
/// survived every timeout and retry.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descendant_that_escapes_with_setsid_does_not_outlive_the_hook() {
    let emu = emulator(fast_emulator_config()).await;
    let dir = tempfile::tempdir().unwrap();
    // The escapee writes its own pid, then becomes `sleep`; the hook waits for the pid, then
    // either exits at once (first event) or sleeps past its timeout (second).
    let hook = script(
        dir.path(),
        "hook.sh",
        "n=$(cat)
n=${#n}
setsid sh -c 'echo $$ > \"$1.tmp\" && mv \"$1.tmp\" \"$1\" && exec sleep 300' _ \"$1/escaped.$n.pid\" &
         while [ ! -s \"$1/escaped.$n.pid\" ]; do sleep 0.05; done
         [ -e \"$1/slow\" ] && sleep 300
exit 0",
    );
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n[handlers.hook]\ntype = \"shell\"\ncommand = [\"{hook}\", \"{}\"]\ntimeout = \"2s\"\n\
         [dispatch]\nretry_schedule = [\"1h\"]\n",
        dir.path().display()
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &config).await;
    let escaped = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .map(|p| p.trim().to_string())
            .collect()
    };
    emu.enqueue_generated(1);
    eventually(Duration::from_secs(30), "the hook is done", || daemon.delivery_states().get("done") == Some(&1)).await;
    let first = escaped(dir.path());
    assert_eq!(first.len(), 1);
    eventually(Duration::from_secs(10), "the escapee of a hook that exited is gone", || gone(&first[0])).await;

    std::fs::write(dir.path().join("slow"), "").unwrap();
    emu.enqueue_generated(1);
    eventually(Duration::from_secs(30), "the second attempt timed out", || {
        daemon.deliveries().len() == 2
            && daemon.delivery_states().get("done") == Some(&1)
            && daemon.store().is_some_and(|s| {
                s.list_deliveries(&vod_eventd::store::DeliveryFilter { limit: 10, ..Default::default() })
                    .is_ok_and(|d| d.iter().any(|d| d.last_error.as_deref().is_some_and(|e| e.contains("timed out"))))
            })
    })
    .await;
    let second: Vec<String> = escaped(dir.path()).into_iter().filter(|p| p != &first[0]).collect();
    assert_eq!(second.len(), 1);
    eventually(Duration::from_secs(10), "the escapee of a hook past its timeout is gone", || gone(&second[0])).await;
}

/// The process is gone (or a zombie waiting to be reaped).
fn gone(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_drain_kills_a_hooks_whole_process_group() {
    let emu = emulator(fast_emulator_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let hook = script(dir.path(), "hook.sh", "sleep 300 &\necho $! > \"$1/grandchild.pid\"\nsleep 300");
    emu.enqueue_generated(1);
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"slow\"]\n[handlers.slow]\ntype = \"shell\"\ncommand = [\"{hook}\", \"{}\"]\n\
         [shutdown]\ndrain_timeout = \"500ms\"\n",
        dir.path().display()
    );
    let mut daemon = TestDaemon::start(&emu.endpoint(), &config).await;
    let pid_file = dir.path().join("grandchild.pid");
    eventually(Duration::from_secs(30), "the hook started its grandchild", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|p| p.ends_with('\n'))
    })
    .await;
    assert!(daemon.terminate().await.success(), "{}", daemon.log());
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    eventually(Duration::from_secs(10), "the grandchild is gone", || gone(&pid)).await;
}

/// A handler claims one round (its concurrency) beyond its free permits; those deliveries
/// wait, claimed, for a permit, so no more than `concurrency` attempts ever run at once. At
/// shutdown the attempts in flight finish and the waiting ones never start: they are back
/// to pending with no attempt counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_claimed_ahead_wait_for_a_permit_and_are_returned_at_shutdown() {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    receiver.set(|b| b.delay = Duration::from_secs(2));
    emu.enqueue_generated(6);
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n{}[shutdown]\ndrain_timeout = \"20s\"\n",
        webhook_section("hook", &receiver.url(), "concurrency = 2")
    );
    let mut daemon = TestDaemon::start(&emu.endpoint(), &config).await;
    eventually(Duration::from_secs(30), "two in flight and two claimed ahead", || {
        daemon.delivery_states().get("running") == Some(&4)
    })
    .await;
    assert!(daemon.terminate().await.success(), "{}", daemon.log());
    let mut grouped = std::collections::BTreeMap::<(String, i64), i64>::new();
    for d in daemon.store().unwrap().deliveries().unwrap() {
        *grouped.entry((d.state, d.attempts)).or_default() += 1;
    }
    let rows: Vec<(String, i64, i64)> = grouped.into_iter().map(|((s, a), n)| (s, a, n)).collect();
    assert_eq!(rows, [("done".to_string(), 1, 2), ("pending".to_string(), 0, 4)], "{}", daemon.log());
    let sent = receiver.recorded();
    assert_eq!(sent.len(), 2, "only the attempts in flight ran");
    // The two ran side by side, never more: each began before the other ended.
    assert!(sent.iter().all(|r| r.started < sent.iter().map(|o| o.at).min().unwrap()));
}

both_apis_and_stores!(
    drm_keys_are_fetched_served_raw_and_never_logged,
    the_same_content_after_its_confirm_is_a_new_occurrence
);

/// Events have no id. A content redelivered before any of its handles was confirmed folds
/// into its row (same webhook-id, handlers not run again); the same content arriving after
/// a confirm is a new event (a cast going Working, Idle, Working again) with its own row,
/// its own webhook-id, and its handlers run again.
async fn the_same_content_after_its_confirm_is_a_new_occurrence(api: vod_emulator::Api, backend: Backend) {
    let emu =
        emulator(vod_emulator::EmulatorConfig { api, visibility: Duration::from_secs(1), ..fast_emulator_config() })
            .await;
    let receiver = Receiver::start().await;
    let content = emu.enqueue_generated(1).remove(0);
    // Confirms wait 3 s, past the 1 s window: the first handle expires and the event comes
    // back under a new handle before anything is confirmed.
    let config = format!(
        "{}[confirm]\nmax_delay = \"3s\"\n[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n{}{FAST_RETRIES}",
        api_line(api),
        webhook_section("hook", &receiver.url(), "")
    );
    let daemon = TestDaemon::start_on(&emu.endpoint_for(api), &config, backend).await;
    eventually(Duration::from_secs(30), "redelivered under a new handle", || emu.stats().queue.redelivered >= 1).await;
    emu.set_visibility(Duration::from_secs(30));
    eventually(Duration::from_secs(30), "a handle confirmed", || emu.stats().queue.confirmed == 1).await;
    let store = daemon.store().unwrap();
    eventually(Duration::from_secs(10), "the confirm recorded", || {
        store.get_event(1).unwrap().is_some_and(|e| e.confirmed_at.is_some())
    })
    .await;
    assert_eq!(store.count_events().unwrap(), 1, "the redelivery folded");
    assert!(store.get_event(1).unwrap().unwrap().times_seen >= 2);

    // The same content again, after the confirm: a new occurrence.
    emu.enqueue(content.clone());
    eventually(Duration::from_secs(30), "both occurrences delivered", || {
        receiver.accepted().len() >= 2 && deliveries_of(&daemon, "hook").iter().all(|d| d.3 == "done")
    })
    .await;
    let deliveries = deliveries_of(&daemon, "hook");
    assert_eq!(deliveries.len(), 2, "one delivery per occurrence");
    let ids: HashSet<String> = receiver.accepted().iter().map(|r| r.headers["webhook-id"].clone()).collect();
    assert_eq!(ids.len(), 2, "each occurrence has its own webhook-id");
    assert_eq!(ids, deliveries.iter().map(|d| d.1.clone()).collect::<HashSet<_>>());
    assert!(receiver.accepted().iter().all(|r| r.body == content.as_bytes()), "both carry the content as sent");
    let rows = store.list_events(&vod_eventd::store::EventFilter { limit: 10, ..Default::default() }).unwrap();
    assert_eq!(rows.iter().map(|r| r.occurrence).collect::<Vec<_>>(), [2, 1]);
}

async fn drm_keys_are_fetched_served_raw_and_never_logged(api: vod_emulator::Api, backend: Backend) {
    let emu = emulator(vod_emulator::EmulatorConfig { api, ..fast_emulator_config() }).await;
    emu.enqueue_generated_type("ProcedureStateChanged", 3).unwrap();
    let issued = emu.issued_keys();
    assert!(issued.len() >= 3, "every generated task flow is encrypted");
    let key_dir = tempfile::tempdir().unwrap();
    // API 3.0 reads EDKs from the emulator's playlists, which it serves over plain HTTP.
    // The level comes from log.level (RUST_LOG empty), as an operator would set it.
    let config = format!(
        "{}[log]\nlevel = \"trace\"\n[[routes]]\nevents = [\"ProcedureStateChanged\"]\nhandlers = [\"keys\"]\n[handlers.keys]\ntype = \"drm\"\nkey_dir = \"{}\"\nallow_http = true\nallow_private = [\"127.0.0.1\"]\n",
        api_line(api),
        key_dir.path().display()
    );
    let daemon = TestDaemon::start_on_logged(&emu.endpoint_for(api), &config, "", backend).await;
    eventually(Duration::from_secs(30), "keys fetched", || daemon.delivery_states().get("done") == Some(&3)).await;

    let mut secrets = vec![vod_emulator::DEMO_SECRET_KEY.to_string()];
    for (edk, dk) in &issued {
        let out =
            cli().args(["keys", "get", "--raw", "--edk", edk, "--config"]).arg(&daemon.config_path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, dk, "keys get --raw returns the 16 raw bytes");
        let file = key_dir.path().join(vod_eventd::handler::key_file_name(edk));
        assert_eq!(std::fs::read(&file).unwrap(), dk);
        secrets.push(base64::engine::general_purpose::STANDARD.encode(dk));
        secrets.push(vod_eventd::event::hex(dk));
        // As a statement parameter would be logged ("[139, 172, ...]").
        secrets.push(format!("{:?}", &dk[..]));
    }
    let listing = cli().args(["keys", "list", "--json", "--config"]).arg(&daemon.config_path).output().unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert_eq!(listing.lines().count(), issued.len());
    let log = daemon.log();
    assert!(log.lines().count() > 20, "trace logging was on");
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "a secret or data key appeared in the trace log");
        assert!(!listing.contains(secret.as_str()), "keys list shows no key material");
    }
}

/// API 3.0: EDKs come from the playlists a task flow's results name. A playlist host that
/// fails is retried until it answers; results without encrypted HLS are done with no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_drm_reads_playlists_retries_their_host_and_skips_plain_outputs() {
    let emu = emulator(vod_emulator::EmulatorConfig { api: vod_emulator::Api::V3, ..fast_emulator_config() }).await;
    emu.fail_media_requests(4);
    emu.enqueue_generated_type("ProcedureStateChanged", 1).unwrap();
    let encrypted = emu.issued_keys();
    assert_eq!(encrypted.len(), 1);
    // An HLS output without encryption, and a task flow without HLS outputs (the SDK-shaped one).
    emu.add_media("/plain/v.f210.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\ns0.ts\n#EXT-X-ENDLIST\n");
    emu.enqueue(
        serde_json::json!({"EventType": "ProcedureStateChanged", "ProcedureStateChangeEvent": {
            "TaskId": "1-Procedure-plain", "Status": "FINISH", "FileId": "5285890784246869999",
            "MediaProcessResultSet": [{"Type": "Transcode", "TranscodeTask": {"Status": "SUCCESS",
                "Output": {"Url": emu.media_url("/plain/v.f210.m3u8"), "Definition": 210}}}]}})
        .to_string(),
    );
    emu.enqueue_generated_type("ProcedureStateChangeEvent", 1).unwrap();
    let config = format!(
        "{}[[routes]]\nevents = [\"ProcedureStateChanged\"]\nhandlers = [\"keys\"]\n[handlers.keys]\ntype = \"drm\"\nallow_http = true\nallow_private = [\"127.0.0.1\"]\n{FAST_RETRIES}",
        api_line(vod_emulator::Api::V3)
    );
    let daemon = TestDaemon::start(&emu.endpoint_v3(), &config).await;
    eventually(Duration::from_secs(30), "all three task flows handled", || {
        daemon.store().is_some_and(|s| delivery_states(&s).get("done") == Some(&3))
    })
    .await;
    let store = daemon.store().unwrap();
    assert_eq!(store.list_keys(None, 100).unwrap().len(), 1, "only the encrypted outputs had a key");
    let (edk, dk) = &encrypted[0];
    let out = cli().args(["keys", "get", "--raw", "--edk", edk, "--config"]).arg(&daemon.config_path).output().unwrap();
    assert_eq!(&out.stdout, dk);
    let retried = store.deliveries().unwrap().iter().map(|d| d.attempts).max().unwrap_or(0);
    assert!(retried >= 2, "the failing playlist host was retried ({retried} attempts)");
    assert!(emu.media_requests() > 4, "playlists were fetched again after the host recovered");
}

/// API 3.0: a playlist of 30,000 `#EXT-X-KEY` lines, each with its own EDK, is refused at
/// once as permanent, naming the cap, with no DescribeDrmDataKey call; the daemon keeps
/// pulling and confirming meanwhile. (Before the cap it went on to 3,000 DescribeDrmDataKey
/// calls, half an hour at the 100 calls/min limit, after a quadratic read.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_drm_refuses_a_playlist_of_thirty_thousand_edks_at_once() {
    let emu = emulator(vod_emulator::EmulatorConfig { api: vod_emulator::Api::V3, ..fast_emulator_config() }).await;
    let mut playlist = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:10\n");
    for i in 0..30_000 {
        playlist += &format!("#EXT-X-KEY:METHOD=AES-128,URI=\"https://k.example.com/getkey?keySource=VodBuildInKMS&edk=E{i:05}\"\n#EXTINF:10,\ns{i}.ts\n");
    }
    assert!(playlist.len() < 4 << 20, "within playlist_max_bytes");
    emu.add_media("/keys/v.f230.m3u8", playlist);
    emu.enqueue(
        serde_json::json!({"EventType": "ProcedureStateChanged", "ProcedureStateChangeEvent": {
            "TaskId": "1-Procedure-keys", "Status": "FINISH", "FileId": "5285890784246869998",
            "MediaProcessResultSet": [{"Type": "Transcode", "TranscodeTask": {"Status": "SUCCESS",
                "Output": {"Url": emu.media_url("/keys/v.f230.m3u8"), "Definition": 230}}}]}})
        .to_string(),
    );
    let config = format!(
        "{}[[routes]]\nevents = [\"ProcedureStateChanged\"]\nhandlers = [\"keys\"]\n[handlers.keys]\ntype = \"drm\"\nallow_http = true\nallow_private = [\"127.0.0.1\"]\nplaylist_max_bytes = 4194304\n{FAST_RETRIES}",
        api_line(vod_emulator::Api::V3)
    );
    let daemon = TestDaemon::start(&emu.endpoint_v3(), &config).await;
    eventually(Duration::from_secs(20), "the delivery is dead", || daemon.delivery_states().get("dead") == Some(&1))
        .await;
    let records = format!("{:?}", daemon.store().unwrap().event_deliveries(1).unwrap());
    assert!(records.contains("names more than 1000 distinct EDKs"), "{records}");
    assert_eq!(emu.stats().api.calls.get("DescribeDrmDataKey"), None);
    emu.enqueue_generated(20);
    eventually(Duration::from_secs(15), "later events confirmed", || emu.stats().queue.confirmed == 21).await;
    assert_eq!(emu.stats().queue.expired_handles, 0);
}

/// API 3.0: playlist fetching reaches no internal host the operator did not allow by name.
/// With `allow_private = ["127.0.0.1"]`, `allow_http` and `follow_redirects`: a playlist at
/// `localhost` (a name resolving to loopback) is refused without a request; a playlist whose
/// host redirects to the metadata service's 169.254.169.254 is refused at the redirect; both
/// deliveries are dead with a message naming the host and the key to set, and quote nothing
/// the hosts answered; the allowed emulator's playlist still gives its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_drm_refuses_internal_playlist_hosts_not_allowed_by_name() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let emu = emulator(vod_emulator::EmulatorConfig { api: vod_emulator::Api::V3, ..fast_emulator_config() }).await;
    emu.enqueue_generated_type("ProcedureStateChanged", 1).unwrap();
    assert_eq!(emu.issued_keys().len(), 1);
    // A host that redirects every request to the cloud metadata service.
    let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirector_addr = redirector.local_addr().unwrap();
    let redirects = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = redirects.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = redirector.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest/meta-data/\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let task_flow = |id: &str, url: String| {
        serde_json::json!({"EventType": "ProcedureStateChanged", "ProcedureStateChangeEvent": {
            "TaskId": id, "Status": "FINISH", "FileId": "5285890784246869997",
            "MediaProcessResultSet": [{"Type": "Transcode", "TranscodeTask": {"Status": "SUCCESS",
                "Output": {"Url": url, "Definition": 230}}}]}})
        .to_string()
    };
    let by_name = emu.media_url("/named/v.f230.m3u8").replace("127.0.0.1", "localhost");
    emu.enqueue(task_flow("1-Procedure-localhost", by_name));
    emu.enqueue(task_flow("1-Procedure-redirect", format!("http://{redirector_addr}/r/v.f230.m3u8")));
    let config = format!(
        "{}[[routes]]\nevents = [\"ProcedureStateChanged\"]\nhandlers = [\"keys\"]\n[handlers.keys]\ntype = \"drm\"\nallow_http = true\nfollow_redirects = true\nallow_private = [\"127.0.0.1\"]\n{FAST_RETRIES}",
        api_line(vod_emulator::Api::V3)
    );
    let daemon = TestDaemon::start(&emu.endpoint_v3(), &config).await;
    eventually(Duration::from_secs(30), "one delivery done, two dead", || {
        let states = daemon.delivery_states();
        states.get("done") == Some(&1) && states.get("dead") == Some(&2)
    })
    .await;
    let store = daemon.store().unwrap();
    assert_eq!(store.list_keys(None, 100).unwrap().len(), 1, "the allowed host's key");
    let errors: Vec<String> = (1..=3)
        .flat_map(|id| store.event_deliveries(id).unwrap())
        .filter_map(|(delivery, _)| delivery.last_error)
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("playlist host localhost is a loopback, link-local, private or reserved address; if it is yours, add \"localhost\" to allow_private")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("add \"169.254.169.254\" to allow_private")), "{errors:?}");
    assert_eq!(
        redirects.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the redirect was asked once: refused, not retried"
    );
}

both_apis!(data_keys_in_a_refused_or_misshapen_answer_are_never_quoted);

async fn data_keys_in_a_refused_or_misshapen_answer_are_never_quoted(api: vod_emulator::Api) {
    use vod_emulator::{FaultKind, Faults};
    let emu = emulator(vod_emulator::EmulatorConfig { api, ..fast_emulator_config() }).await;
    emu.enqueue_generated_type("ProcedureStateChanged", 1).unwrap();
    let faults =
        |kind| Faults { rate: 1.0, kinds: vec![kind], actions: vec!["DescribeDrmDataKey".into()], ..Faults::default() };
    // The real answer, keys and all, first under HTTP 502, then in a shape the envelope parse refuses.
    emu.set_faults(faults(FaultKind::WrongStatus));
    let config = format!(
        "{}[[routes]]\nevents = [\"*\"]\nhandlers = [\"keys\"]\n[handlers.keys]\ntype = \"drm\"\nallow_http = true\nallow_private = [\"127.0.0.1\"]\n{FAST_RETRIES}",
        api_line(api)
    );
    let daemon = TestDaemon::start_logged(&emu.endpoint_for(api), &config, "trace").await;
    let attempts = || {
        daemon.store().map_or(Vec::new(), |s| {
            s.attempts().unwrap().into_iter().map(|a| a.error.unwrap_or_default()).collect::<Vec<_>>()
        })
    };
    eventually(Duration::from_secs(30), "attempts failed by HTTP 502", || attempts().len() >= 2).await;
    emu.set_faults(faults(FaultKind::MangledEnvelope));
    let before = attempts().len();
    eventually(Duration::from_secs(30), "attempts failed by a misshapen answer", || attempts().len() >= before + 2)
        .await;
    emu.set_faults(Faults::default());
    eventually(Duration::from_secs(30), "keys fetched once the answers are right", || {
        daemon.store().is_some_and(|s| delivery_states(&s).get("done") == Some(&1))
    })
    .await;

    let errors = attempts();
    assert!(errors.iter().any(|e| e.contains("502")) && errors.iter().any(|e| e.contains("malformed")), "{errors:?}");
    let log = daemon.log();
    for (_, dk) in emu.issued_keys() {
        for secret in [base64::engine::general_purpose::STANDARD.encode(dk), vod_eventd::event::hex(&dk)] {
            assert!(!log.contains(&secret), "a data key reached the log");
            assert!(!errors.iter().any(|e| e.contains(&secret)), "a data key reached an attempt record");
        }
    }
}

async fn sigkill_during_dispatch_loses_no_delivery(backend: Backend) {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    receiver.set(|b| b.delay = Duration::from_millis(100));
    emu.enqueue_generated(150);
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"internal\"]\n{}{FAST_RETRIES}",
        webhook_section("internal", &receiver.url(), "concurrency = 2")
    );
    let mut daemon = TestDaemon::start_on(&emu.endpoint(), &config, backend).await;
    for _ in 0..4 {
        eventually(Duration::from_secs(30), "some progress", || receiver.recorded().len() % 150 > 5).await;
        daemon.kill9().await;
        daemon.spawn();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eventually(Duration::from_secs(120), "every delivery done", || {
        daemon.delivery_states().get("done").copied() == Some(150)
    })
    .await;
    let expected: HashSet<String> = deliveries_of(&daemon, "internal").into_iter().map(|(_, id, _, _)| id).collect();
    let received: HashSet<String> = receiver.accepted().iter().map(|r| r.headers["webhook-id"].clone()).collect();
    assert_eq!(received, expected, "every event reached the receiver at least once; duplicates only repeat an id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_reach_logs_and_records_without_userinfo_or_query() {
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    receiver.set(|b| b.status = 410);
    emu.enqueue_generated(1);
    let hook_url = format!("http://hook:HOOKPASS@{}/vod?token=QUERYTOKEN", receiver.addr);
    let endpoint = emu.endpoint().replace("http://", "http://ops:ENDPOINTPASS@");
    let config = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"internal\"]\n{}",
        webhook_section("internal", &hook_url, "")
    );
    let daemon = TestDaemon::start_logged(&endpoint, &config, "trace").await;
    eventually(Duration::from_secs(30), "the 410 made the delivery dead", || {
        daemon.store().is_some_and(|s| delivery_states(&s).get("dead") == Some(&1))
    })
    .await;
    eventually(Duration::from_secs(10), "the 410 warning", || daemon.log().contains("410 Gone")).await;
    let status = cli().args(["status", "--config"]).arg(&daemon.config_path).output().unwrap();
    let check = cli().args(["config", "check", "--config"]).arg(&daemon.config_path).output().unwrap();
    let records = format!("{:?}", daemon.store().unwrap().event_deliveries(1).unwrap());
    let log = daemon.log();
    assert!(log.contains(&format!("http://***@{}/vod?***", receiver.addr)), "the URL is still recognisable:\n{log}");
    for (what, text) in [
        ("log", log),
        ("status", String::from_utf8_lossy(&status.stdout).into_owned()),
        ("config check", String::from_utf8_lossy(&check.stdout).into_owned()),
        ("attempt records", records),
    ] {
        for secret in ["HOOKPASS", "QUERYTOKEN", "ENDPOINTPASS"] {
            assert!(!text.contains(secret), "{secret} reached the {what}:\n{text}");
        }
    }
}
