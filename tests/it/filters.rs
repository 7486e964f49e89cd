//! Route filters (`when`, CEL) against the real binary: both API shapes select the events
//! they should, a run-time failure is counted on /metrics, logged once and does not match,
//! and `config check` refuses a syntax error with its route and position.

use std::time::Duration;

use serde_json::Value;
use vod_emulator::{Api, EmulatorConfig};

use crate::receiver::Receiver;
use crate::support::*;

fn fixture(path: &str) -> Value {
    let text =
        std::fs::read_to_string(format!("{}/crates/vod-emulator/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Handlers of every delivery, with the event's content.
fn routed(daemon: &TestDaemon) -> Vec<(String, String)> {
    let store = daemon.store().unwrap();
    let deliveries = store.deliveries().unwrap();
    deliveries.into_iter().map(|d| (d.handler, store.get_event(d.event_id).unwrap().unwrap().content)).collect()
}

both_apis!(filters_select_events_by_content_and_a_failing_filter_matches_nothing);

async fn filters_select_events_by_content_and_a_failing_filter_matches_nothing(api: Api) {
    let emu = emulator(EmulatorConfig { api, ..fast_emulator_config() }).await;
    let receiver = Receiver::start().await;
    // Two ProcedureStateChanged events that differ in the field the filter reads, and a
    // NewFileUpload, which lacks that field: the filter fails on it.
    let (failed, field) = match api {
        Api::V2 => {
            let mut e = fixture("ProcedureStateChanged.json");
            e["data"]["errCode"] = 10008.into();
            (e, "event.data.errCode != 0")
        }
        Api::V3 => {
            let mut e = fixture("v3/ProcedureStateChanged.json");
            e["ProcedureStateChangeEvent"]["ErrCode"] = 10008.into();
            (e, "event.ProcedureStateChangeEvent.ErrCode != 0")
        }
    };
    let ok = match api {
        Api::V2 => fixture("ProcedureStateChanged.json"),
        Api::V3 => fixture("v3/ProcedureStateChanged.json"),
    };
    let upload = match api {
        Api::V2 => fixture("NewFileUpload.json"),
        Api::V3 => fixture("v3/NewFileUpload.json"),
    };
    let status = match api {
        Api::V2 => r#"event.data.status == "FINISH""#,
        Api::V3 => r#"event.ProcedureStateChangeEvent.Status == "FINISH""#,
    };
    let port = free_port();
    let extra = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
         [[routes]]\nevents = [\"ProcedureStateChanged\"]\nhandlers = [\"finished\"]\nwhen = '{status}'\n\
         [[routes]]\nevents = [\"*\"]\nhandlers = [\"failures\"]\nwhen = '{field} && source == \"default\"'\n\
         [[routes]]\nevents = [\"*\"]\nhandlers = [\"all\"]\n\
         [handlers.finished]\ntype = \"webhook\"\nurl = \"{url}\"\n\
         [handlers.failures]\ntype = \"webhook\"\nurl = \"{url}\"\n\
         [handlers.all]\ntype = \"webhook\"\nurl = \"{url}\"\n",
        url = receiver.url()
    );
    let daemon = TestDaemon::for_emulator(&emu, &extra).await;
    for event in [&ok, &failed, &upload, &upload.clone()] {
        emu.enqueue(event.to_string());
    }
    // The two uploads have the same content: one row. Make the second one different.
    let mut other_upload = upload.clone();
    match api {
        Api::V2 => other_upload["data"]["fileId"] = "other".into(),
        Api::V3 => other_upload["FileUploadEvent"]["FileId"] = "other".into(),
    }
    emu.enqueue(other_upload.to_string());
    eventually(Duration::from_secs(30), "four events stored", || daemon.rows() == 4).await;

    let rows = routed(&daemon);
    let to = |handler: &str| rows.iter().filter(|(h, _)| h == handler).count();
    assert_eq!(to("all"), 4, "{rows:?}");
    assert_eq!(to("finished"), 2, "both ProcedureStateChanged events have status FINISH: {rows:?}");
    assert_eq!(to("failures"), 1, "only the event with a non-zero error code: {rows:?}");
    let failure = rows.iter().find(|(h, _)| h == "failures").unwrap();
    assert!(failure.1.contains("10008"), "{failure:?}");

    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
    let line = metrics.lines().find(|l| l.starts_with("vod_eventd_route_filter_errors_total{")).unwrap_or_default();
    assert_eq!(line, r#"vod_eventd_route_filter_errors_total{route="routes[1]"} 2"#, "{metrics}");
    let log = daemon.log();
    assert_eq!(log.matches("A route filter could not be evaluated").count(), 1, "logged once per route:\n{log}");
    assert!(log.contains("routes[1]") && log.contains("No such key"), "{log}");
}

#[test]
fn config_check_refuses_a_filter_syntax_error_with_its_route_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(
        &dir.path().join("e.db"),
        "http://127.0.0.1:9/",
        "",
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"h\"]\n\
         [[routes]]\nevents = [\"*\"]\nhandlers = [\"h\"]\nwhen = '''event.data.status == \"FINISH\" &&\n  (event.data.errCode != 0'''\n\
         [handlers.h]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n",
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).unwrap();
    let out = cli().args(["config", "check", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("`routes[1].when`: line 2, column 27: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
