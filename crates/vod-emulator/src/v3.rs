//! API 3.0 on the emulator: `POST /` with `X-TC-Action` (`PullEvents`, `ConfirmEvents`,
//! `DescribeDrmDataKey`, `DescribeEventConfig`, `ModifyEventConfig`, `DescribeSubAppIds`), TC3-HMAC-SHA256
//! verified against the received `Host` and `Content-Type`, 100 requests/s per action,
//! answers as `{"Response": {...}}` with `Response.Error` on failure. Events come from the
//! same queue as v2; each is sent with `EventHandle` added as its first member.

use std::time::Duration;

use base64::Engine as _;
use hyper::body::Bytes;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{self, V3Request};
use crate::server::{self, Body, DropConnection, Refused, Wire};
use crate::{EmptyResponse, Shared};

/// Requests per second per action.
const RATE_LIMIT_PER_SECOND: u32 = 100;

/// A `Response.Error` answer.
pub(crate) fn error(code: &str, message: &str) -> Response<Body> {
    server::json_response(
        StatusCode::OK,
        &json!({"Response": {"Error": {"Code": code, "Message": message}, "RequestId": request_id()}}),
    )
}

fn ok(mut fields: Value) -> Response<Body> {
    fields["RequestId"] = json!(request_id());
    server::json_response(StatusCode::OK, &json!({ "Response": fields }))
}

fn request_id() -> String {
    let n: u128 = rand::random();
    let h = format!("{n:032x}");
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Handles one API 3.0 request.
pub(crate) async fn handle(shared: &Shared, parts: &Parts, body: &Bytes) -> Result<Response<Body>, DropConnection> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let action = header("x-tc-action").to_string();
    let (credentials, limited, faults) = {
        let cfg = shared.config.lock().unwrap();
        (cfg.credentials.clone(), cfg.rate_limit_per_minute.is_some(), cfg.faults.clone())
    };
    let request = V3Request {
        authorization: header("authorization"),
        host: header("host"),
        content_type: header("content-type"),
        timestamp: header("x-tc-timestamp"),
        body,
    };
    if let Err(refusal) = auth::verify_v3(&request, &credentials, server::unix_now()) {
        server::count_refusal(
            shared,
            if refusal.code.starts_with("AuthFailure") { Refused::Auth } else { Refused::Other },
        );
        return Ok(error(refusal.code, &refusal.message));
    }
    let limit = limited.then_some(RATE_LIMIT_PER_SECOND);
    if let Err(refusal) = shared.guard.lock().unwrap().admit(&format!("v3:{action}"), limit, Duration::from_secs(1)) {
        server::count_refusal(shared, Refused::Quota);
        return Ok(error("RequestLimitExceeded", &refusal.message));
    }
    let denied = shared.config.lock().unwrap().denied_actions.get(&action).cloned();
    if let Some(code) = denied {
        server::count_refusal(shared, Refused::Auth);
        // The shape of CAM's refusal text; the exact words are not documented.
        return Ok(error(
            &code,
            &format!("you are not authorized to perform operation (vod:{action}); resource has no permission"),
        ));
    }
    *shared.api.lock().unwrap().calls.entry(action.clone()).or_default() += 1;
    let payload: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return Ok(error("InvalidParameter", "the request body must be a JSON object")),
    };
    server::with_faults(shared, &faults, &action, Wire::V3, run_action(shared, &action, payload)).await
}

async fn run_action(shared: &Shared, action: &str, payload: Value) -> Response<Body> {
    let app = payload.get("SubAppId").and_then(Value::as_u64);
    if app.is_some_and(|id| !shared.known_app(id)) {
        // VOD's error code for a SubAppId it does not know (the official SDK's errorcodes.py).
        return error("InvalidParameterValue.SubAppId", "SubAppId is not an app of this account");
    }
    match action {
        "PullEvents" => pull_events(shared, app).await,
        "ConfirmEvents" => confirm_events(shared, app, payload),
        "DescribeSubAppIds" => describe_sub_app_ids(shared, &payload),
        "DescribeDrmDataKey" => describe_drm_data_key(shared, payload),
        "DescribeEventConfig" => ok(shared.event_config(app).describe()),
        "ModifyEventConfig" => {
            let mut configs = shared.event_configs.lock().unwrap();
            let mut config =
                configs.get(&app).cloned().unwrap_or_else(|| shared.config.lock().unwrap().event_config.clone());
            match config.modify(&payload) {
                Ok(()) => {
                    configs.insert(app, config);
                    ok(json!({}))
                }
                Err(message) => error("InvalidParameterValue", &message),
            }
        }
        other => error("InvalidAction", &format!("the emulator does not support {other}")),
    }
}

async fn pull_events(shared: &Shared, app: Option<u64>) -> Response<Body> {
    let batch = server::wait_for_batch(shared, app).await;
    if batch.is_empty() {
        return match server::empty_mode(shared, "PullEvents") {
            EmptyResponse::EmptyList => ok(json!({"EventSet": []})),
            EmptyResponse::MissingList => ok(json!({})),
            EmptyResponse::NullList => ok(json!({"EventSet": null})),
            // The message text is not documented; public consumers match "no event".
            _ => error("ResourceNotFound", "no event"),
        };
    }
    let events: Vec<String> = batch.iter().map(|d| with_handle(&d.content, &d.handle)).collect();
    let body = format!(r#"{{"Response":{{"EventSet":[{}],"RequestId":"{}"}}}}"#, events.join(","), request_id());
    server::json_text(StatusCode::OK, body)
}

/// The event text with `"EventHandle"` inserted as its first member (the rest byte-exact).
fn with_handle(content: &str, handle: &str) -> String {
    let handle = Value::String(handle.to_string());
    let trimmed = content.trim_start();
    match trimmed.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => format!(r#"{{"EventHandle":{handle}}}"#),
        Some(rest) => format!(r#"{{"EventHandle":{handle},{rest}"#),
        // Not an object: wrap it so it still carries a handle.
        None => format!(r#"{{"EventHandle":{handle},"Content":{}}}"#, Value::String(content.to_string())),
    }
}

fn string_list(payload: &Value, name: &str) -> Option<Vec<String>> {
    Vec::<String>::deserialize(payload.get(name)?).ok()
}

fn confirm_events(shared: &Shared, app: Option<u64>, payload: Value) -> Response<Body> {
    let Some(handles) = string_list(&payload, "EventHandles").filter(|h| !h.is_empty() && h.len() <= 16) else {
        return error("InvalidParameter", "EventHandles must list 1 to 16 handles");
    };
    match shared.confirm(app, &handles) {
        Ok(()) => ok(json!({})),
        Err(refused) => {
            error("InvalidParameter", &format!("invalid or expired EventHandle: {}", refused.bad_handles.join(",")))
        }
    }
}

/// DescribeSubAppIds as the official SDK models it: request `Name`, `Tags`
/// (`[{TagKey, TagValue}]`), `Offset` (default 0), `Limit` (default and at most 200);
/// answer `SubAppIdInfoSet` (each a `SubAppIdInfo`) and `TotalCount`.
fn describe_sub_app_ids(shared: &Shared, payload: &Value) -> Response<Body> {
    const MAX_LIMIT: u64 = 200;
    let offset = payload.get("Offset").and_then(Value::as_u64).unwrap_or(0) as usize;
    let limit = payload.get("Limit").and_then(Value::as_u64).unwrap_or(MAX_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return error("InvalidParameterValue", "Limit must be 1 to 200");
    }
    let name = payload.get("Name").and_then(Value::as_str);
    let tags: Vec<(String, String)> = payload
        .get("Tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| (t["TagKey"].as_str().unwrap_or("").to_string(), t["TagValue"].as_str().unwrap_or("").to_string()))
        .collect();
    let apps = shared.apps.lock().unwrap();
    let matching: Vec<&crate::App> = apps
        .values()
        .filter(|a| name.is_none_or(|n| a.name == n))
        .filter(|a| tags.iter().all(|t| a.tags.contains(t)))
        .collect();
    let set: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(limit as usize)
        .map(|a| {
            json!({
                "SubAppId": a.sub_app_id,
                "SubAppIdName": a.name,
                "Description": a.description,
                "CreateTime": a.create_time,
                "Status": a.status,
                "Name": a.name,
                "Mode": "fileid",
                "StorageRegions": ["ap-guangzhou"],
                "Tags": a.tags.iter().map(|(k, v)| json!({"TagKey": k, "TagValue": v})).collect::<Vec<_>>(),
            })
        })
        .collect();
    ok(json!({"SubAppIdInfoSet": set, "TotalCount": matching.len()}))
}

fn describe_drm_data_key(shared: &Shared, payload: Value) -> Response<Body> {
    let Some(edks) = string_list(&payload, "EdkList").filter(|e| !e.is_empty() && e.len() <= 10) else {
        return error("InvalidParameter", "EdkList must list 1 to 10 EDKs");
    };
    let keys = shared.keys.lock().unwrap();
    let mut list = Vec::new();
    for edk in &edks {
        let Some(dk) = keys.get(edk) else {
            return error("InvalidParameterValue.EdkList", "an EDK is not a key this account issued");
        };
        list.push(json!({"Edk": edk, "Dk": base64::engine::general_purpose::STANDARD.encode(dk)}));
    }
    ok(json!({ "KeyList": list }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handle_goes_first_and_the_rest_is_untouched() {
        assert_eq!(
            with_handle(r#"{"EventType":"X", "A" : 1}"#, "h"),
            r#"{"EventHandle":"h","EventType":"X", "A" : 1}"#
        );
        assert_eq!(with_handle("{ }", "h"), r#"{"EventHandle":"h"}"#);
        assert_eq!(with_handle("[1]", "h"), r#"{"EventHandle":"h","Content":"[1]"}"#);
    }
}
