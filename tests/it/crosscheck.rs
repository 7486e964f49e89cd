//! Cross-checks against code nobody here wrote: the official Python SDKs
//! (`qcloudapi-sdk-python` for v2, `tencentcloud-sdk-python-vod` for API 3.0, pinned in
//! tests/py/requirements.txt and installed into the tests' own virtual environment) sign like
//! we do, accept the emulator, and define every field the emulator's events carry.

use std::io::Write as _;
use std::process::Stdio;

use serde_json::{json, Value};
use vod_emulator::{DEMO_SECRET_ID, DEMO_SECRET_KEY};

use crate::support::*;

fn py(script: &str) -> String {
    format!("{}/tests/py/{script}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs one of the tests/py scripts with `input` on stdin; returns its trimmed stdout.
fn python_stdin(script: &str, input: &Value) -> String {
    let mut child = command(python())
        .arg(py(script))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tests' Python");
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn sdk_sign(input: &Value) -> String {
    python_stdin("v2_sign.py", input)
}

#[test]
fn signatures_match_the_official_python_sdk() {
    let cases = [
        ("GET", "vod.api.qcloud.com", "HmacSHA1", vec![("Action", "PullEvent")]),
        ("POST", "vod.api.qcloud.com", "HmacSHA256", vec![("Action", "PullEvent"), ("SubAppId", "1500000001")]),
        (
            "GET",
            "127.0.0.1:43117",
            "HmacSHA256",
            vec![("Action", "ConfirmEvent"), ("msgHandle.0", "a+b/c=="), ("msgHandle.1", "x y&z")],
        ),
        (
            "POST",
            "127.0.0.1:43117",
            "HmacSHA1",
            vec![("Action", "DescribeDrmDataKey"), ("edkList.0", "CiCdpfV8/+=="), ("Token", "tok€n")],
        ),
        (
            "GET",
            "vod.api.qcloud.com",
            "HmacSHA256",
            vec![("Action", "ConfirmEvent"), ("msgHandle_0", "h0"), ("msgHandle_1", "h1")],
        ),
    ];
    for (verb, host, method, extra) in cases {
        let mut params: Vec<(&str, &str)> = vec![
            ("Nonce", "9223372036854775807"),
            ("Region", "gz"),
            ("SecretId", "AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA"),
            ("Timestamp", "1732406400"),
            ("SignatureMethod", method),
        ];
        params.extend(extra);
        let ours = vod_protocol::sign(
            b"Gu5t9xGARNpq86cd98joQYCN3Cozk1qA",
            verb,
            host,
            "/v2/index.php",
            params.iter().copied(),
        );
        let input = json!({
            "method": verb, "host": host, "path": "/v2/index.php", "secret_key": "Gu5t9xGARNpq86cd98joQYCN3Cozk1qA",
            "params": params.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        });
        assert_eq!(ours, sdk_sign(&input), "{verb} {host} {method}");
    }
}

fn sdk_call(endpoint: &str, key: &str, verb: &str, method: &str, action_and_params: &[&str]) -> Value {
    let out = command(python())
        .arg(py("v2_client.py"))
        .args([
            "--endpoint",
            endpoint,
            "--secret-id",
            DEMO_SECRET_ID,
            "--secret-key",
            key,
            "--method",
            verb,
            "--sign-method",
            method,
        ])
        .args(action_and_params)
        .output()
        .unwrap();
    assert!(out.status.success(), "v2_client.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_is_accepted_by_the_emulator() {
    let emu = emulator(fast_emulator_config()).await;
    for (verb, method) in [("GET", "HmacSHA1"), ("POST", "HmacSHA256"), ("GET", "HmacSHA256"), ("POST", "HmacSHA1")] {
        emu.enqueue_generated(2);
        let endpoint = emu.endpoint();
        let pulled =
            tokio::task::spawn_blocking(move || sdk_call(&endpoint, DEMO_SECRET_KEY, verb, method, &["PullEvent"]))
                .await
                .unwrap();
        assert_eq!(pulled["code"], 0, "{verb} {method}: {pulled}");
        let handles: Vec<String> = pulled["eventList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["msgHandle"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(handles.len(), 2);
        let mut args = vec!["ConfirmEvent".to_string()];
        args.extend(handles.iter().enumerate().map(|(i, h)| format!("msgHandle.{i}={h}")));
        let endpoint = emu.endpoint();
        let confirmed = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            sdk_call(&endpoint, DEMO_SECRET_KEY, verb, method, &args)
        })
        .await
        .unwrap();
        assert_eq!(confirmed["code"], 0, "{verb} {method}: {confirmed}");
    }
    assert_eq!(emu.stats().queue.confirmed, 8);
    let endpoint = emu.endpoint();
    let refused =
        tokio::task::spawn_blocking(move || sdk_call(&endpoint, "wrong-key", "GET", "HmacSHA1", &["PullEvent"]))
            .await
            .unwrap();
    assert_eq!(refused["code"], 4100);
}

fn sdk_v3_sign(input: &Value) -> String {
    python_stdin("v3_sign.py", input)
}

#[test]
fn tc3_signatures_match_the_official_python_sdk() {
    let cases = [
        ("vod.tencentcloudapi.com", "application/json; charset=utf-8", 1551113065, "{}"),
        ("vod.tencentcloudapi.com", "application/json", 1732406400, r#"{"EventHandles":["h1","h2"]}"#),
        ("127.0.0.1:43117", "application/json", 1795507200, r#"{"EdkList":["CiCdpfV8/+=="],"SubAppId":1500000001}"#),
        ("127.0.0.1:43117", "application/json; charset=utf-8", 951782400, r#"{"Name":"\u672a\u547d\u540d"}"#),
    ];
    for (host, content_type, timestamp, body) in cases {
        let ours = vod_protocol::tc3::Tc3Request {
            secret_id: "AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******",
            service: "vod",
            host,
            content_type,
            timestamp,
            body: body.as_bytes(),
        }
        .signature(b"Gu5t9xGARNpq86cd98joQYCN3*******");
        let input = json!({
            "secret_id": "AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******", "secret_key": "Gu5t9xGARNpq86cd98joQYCN3*******",
            "host": host, "service": "vod", "timestamp": timestamp, "payload": body, "content_type": content_type, "method": "POST",
        });
        assert_eq!(ours, sdk_v3_sign(&input), "{host} {content_type} {timestamp} {body}");
    }
}

fn sdk_v3_call(endpoint: &str, key: &str, args: &[String]) -> Value {
    let out = command(python())
        .arg(py("v3_client.py"))
        .args(["--endpoint", endpoint, "--secret-id", DEMO_SECRET_ID, "--secret-key", key])
        .args(args)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "v3_client.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_v3_sdk_is_accepted_by_the_emulator() {
    let emu = emulator(vod_emulator::EmulatorConfig { api: vod_emulator::Api::V3, ..fast_emulator_config() }).await;
    emu.enqueue_generated(3);
    let endpoint = format!("http://{}", emu.addr());
    let call = |key: &'static str, args: Vec<String>| {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || sdk_v3_call(&endpoint, key, &args))
    };
    let pulled = call(DEMO_SECRET_KEY, vec!["PullEvents".into()]).await.unwrap();
    let events = pulled["EventSet"].as_array().unwrap_or_else(|| panic!("{pulled}"));
    assert_eq!(events.len(), 3);
    let mut args = vec!["ConfirmEvents".to_string(), "--handles".to_string()];
    args.extend(events.iter().map(|e| e["EventHandle"].as_str().unwrap().to_string()));
    let confirmed = call(DEMO_SECRET_KEY, args).await.unwrap();
    assert!(confirmed.get("Error").is_none(), "{confirmed}");
    assert_eq!(emu.stats().queue.confirmed, 3);

    let refused = call("wrong-key", vec!["PullEvents".into()]).await.unwrap();
    assert_eq!(refused["Error"]["Code"], "AuthFailure.SignatureFailure", "{refused}");
    let stale =
        call(DEMO_SECRET_KEY, vec!["ConfirmEvents".into(), "--handles".into(), "no-such-handle".into()]).await.unwrap();
    assert!(stale["Error"]["Code"].as_str().unwrap().starts_with("InvalidParameter"), "{stale}");
}

/// Runs `check_v3_fixtures.py` (the SDK model's own deserialiser) over `files`.
fn check_against_model(files: &[std::path::PathBuf]) -> std::process::Output {
    command(python()).arg(py("check_v3_fixtures.py")).args(files).output().unwrap()
}

/// Every API 3.0 event the emulator serves has only fields of the SDK model, and the check
/// does fail on a field the model does not have.
#[test]
fn every_v3_fixture_has_only_fields_of_the_sdk_model() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["crates/vod-emulator/fixtures/v3", "crates/vod-emulator/fixtures/v3/sdk", "tests/fixtures/events-v3"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 37 + 6, "{} fixtures", files.len());
    let out = check_against_model(&files);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    let tmp = tempfile::tempdir().unwrap();
    let original =
        std::fs::read_to_string(root.join("crates/vod-emulator/fixtures/v3/sdk/ClipCompleteEvent.json")).unwrap();
    let mut tampered: Value = serde_json::from_str(&original).unwrap();
    tampered["ClipCompleteEvent"]["FileInfo"]["EdkList"] = json!(["invented"]);
    let path = tmp.path().join("tampered.json");
    std::fs::write(&path, tampered.to_string()).unwrap();
    let out = check_against_model(&[path]);
    assert!(!out.status.success(), "a field the model does not have must fail the check");
    assert!(String::from_utf8_lossy(&out.stdout).contains("EdkList"));
}

/// The official SDK reads and changes the emulator's event configuration: its
/// DescribeEventConfigResponse gets every model field (none left null, none extra), and
/// its ModifyEventConfigRequest changes exactly the fields it sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_v3_sdk_reads_and_changes_the_emulators_event_configuration() {
    let fresh = vod_emulator::EventConfig::push_all_off();
    let emu = emulator(vod_emulator::EmulatorConfig { event_config: fresh.clone(), ..fast_emulator_config() }).await;
    let endpoint = format!("http://{}", emu.addr());
    let call = |args: &[&str]| {
        let (endpoint, args) = (endpoint.clone(), args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        tokio::task::spawn_blocking(move || sdk_v3_call(&endpoint, DEMO_SECRET_KEY, &args))
    };
    let described = call(&["DescribeEventConfig"]).await.unwrap();
    assert!(described["RequestId"].is_string(), "{described}");
    let mut expected = fresh.describe();
    expected["RequestId"] = described["RequestId"].clone();
    assert_eq!(described, expected, "the SDK prints every model field, null when not answered");

    let modified = call(&["ModifyEventConfig", "--mode", "PULL", "--upload-switch", "ON"]).await.unwrap();
    assert!(modified.get("Error").is_none() && modified["RequestId"].is_string(), "{modified}");
    let now = call(&["DescribeEventConfig"]).await.unwrap();
    assert_eq!(
        (&now["Mode"], &now["UploadMediaCompleteEventSwitch"], &now["DeleteMediaCompleteEventSwitch"]),
        (&json!("PULL"), &json!("ON"), &json!("OFF")),
        "{now}"
    );
    let url_only = call(&["ModifyEventConfig", "--notification-url", "x"]).await.unwrap();
    assert!(url_only.get("Error").is_none(), "{url_only}");
    assert_eq!(emu.event_config(None).notification_url, "x");
}
