//! The emulator's HTTP side: the v2 endpoint (`PullEvent`, `ConfirmEvent`,
//! `DescribeDrmDataKey`) on any path, API 3.0 requests (recognised by `X-TC-Action`,
//! answered in `v3`), the long poll and fault injection both share, and control
//! endpoints under `/_emulator/`.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use vod_protocol::codes;

use crate::auth::{self, Refusal};
use crate::{EmptyResponse, FaultKind, Faults, Shared};

/// Where media (HLS playlists of generated outputs) is served.
pub(crate) const MEDIA_PREFIX: &str = "/_media";

/// Largest request body accepted.
const MAX_BODY: usize = 4 << 20;

pub(crate) type Body = Full<Bytes>;

/// Returned by the service to make hyper drop the connection without an answer.
#[derive(Debug)]
pub(crate) struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected connection reset")
    }
}

impl std::error::Error for DropConnection {}

/// Accepts connections until the task is aborted; aborting drops every connection too.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "Emulator accept failed.");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, DropConnection> {
    let path = req.uri().path().to_string();
    if let Some(control) = path.strip_prefix("/_emulator/") {
        let control = control.to_string();
        return Ok(control_endpoint(&shared, &control, req).await.unwrap_or_else(|e| e));
    }
    if let Some(media) = path.strip_prefix(MEDIA_PREFIX) {
        return Ok(media_file(&shared, media));
    }
    api(shared, req).await
}

/// A playlist of a generated output, as VOD's storage would serve it.
fn media_file(shared: &Shared, path: &str) -> Response<Body> {
    use std::sync::atomic::Ordering;
    shared.media_requests.fetch_add(1, Ordering::Relaxed);
    let fail = shared.media_failures.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
    let text = shared.media.lock().unwrap().get(path).cloned();
    let (status, body) = match text {
        _ if fail => (StatusCode::SERVICE_UNAVAILABLE, String::from("unavailable")),
        Some(text) => (StatusCode::OK, text),
        None => (StatusCode::NOT_FOUND, String::from("no such media")),
    };
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/vnd.apple.mpegurl")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    json_text(status, value.to_string())
}

/// A JSON answer. The content type is exactly `application/json`: Tencent's v3 Python SDK
/// only looks for `Response.Error` under that type (or `text/plain`).
pub(crate) fn json_text(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn v2_answer(code: i64, message: &str, extra: Value) -> Response<Body> {
    let mut body = json!({"code": code, "message": message, "codeDesc": codes::code_desc(code)});
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    json_response(StatusCode::OK, &body)
}

/// The `eventList` JSON, each `eventContent` embedded as its exact enqueued text (content
/// that is not JSON goes as a JSON string).
pub(crate) fn event_list(batch: &[crate::queue::Delivery]) -> String {
    let items: Vec<String> = batch
        .iter()
        .map(|d| {
            let content = match serde_json::from_str::<&serde_json::value::RawValue>(&d.content) {
                Ok(raw) => raw.get().to_string(),
                Err(_) => Value::String(d.content.to_string()).to_string(),
            };
            format!(r#"{{"msgHandle":{},"eventContent":{content}}}"#, Value::String(d.handle.clone()))
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// A success answer whose `eventList` is given as JSON text.
fn v2_answer_raw(code: i64, event_list: String) -> Response<Body> {
    let body =
        format!(r#"{{"code":{code},"message":"","codeDesc":"{}","eventList":{event_list}}}"#, codes::code_desc(code));
    json_text(StatusCode::OK, body)
}

fn refused(r: Refusal) -> Response<Body> {
    v2_answer(r.code, &r.message, Value::Null)
}

pub(crate) async fn read_body(req: Request<Incoming>) -> Result<(hyper::http::request::Parts, Bytes), Response<Body>> {
    let (parts, body) = req.into_parts();
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(_) => Err(json_response(StatusCode::PAYLOAD_TOO_LARGE, &json!({"error": "body too large or unreadable"}))),
    }
}

async fn api(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, DropConnection> {
    let (parts, body) = match read_body(req).await {
        Ok(x) => x,
        Err(resp) => return Ok(resp),
    };
    if parts.headers.contains_key("x-tc-action") {
        return crate::v3::handle(&shared, &parts, &body).await;
    }
    let mut params: Vec<(String, String)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    if parts.method == Method::POST || params.is_empty() {
        // POST carries everything in the body; the official SDK also retries a GET that way.
        params.extend(form_urlencoded::parse(&body).into_owned());
    }
    let host = parts.headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
    let request =
        auth::Request { http_method: parts.method.as_str(), host: &host, path: parts.uri.path(), params: &params };

    let (credentials, max_skew, limit, faults) = {
        let cfg = shared.config.lock().unwrap();
        (cfg.credentials.clone(), cfg.max_clock_skew, cfg.rate_limit_per_minute, cfg.faults.clone())
    };
    let action = {
        let mut guard = shared.guard.lock().unwrap();
        let verified = auth::verify(&request, &credentials, max_skew, unix_now(), &mut guard)
            .and_then(|action| guard.admit(&action, limit, V2_RATE_WINDOW).map(|()| action));
        match verified {
            Ok(action) => action,
            Err(refusal) => {
                count_refusal(
                    &shared,
                    match refusal.code {
                        codes::AUTH_FAILURE => Refused::Auth,
                        codes::REPLAY => Refused::Replay,
                        codes::QUOTA_EXCEEDED => Refused::Quota,
                        _ => Refused::Other,
                    },
                );
                return Ok(refused(refusal));
            }
        }
    };
    *shared.api.lock().unwrap().calls.entry(action.clone()).or_default() += 1;
    with_faults(&shared, &faults, &action, Wire::V2, run_action(&shared, &action, &request)).await
}

/// v2's rate-limit window.
const V2_RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Which API an answer is shaped for.
#[derive(Clone, Copy)]
pub(crate) enum Wire {
    V2,
    V3,
}

/// Why a call was refused before its action, for the stats.
pub(crate) enum Refused {
    Auth,
    Replay,
    Quota,
    Other,
}

pub(crate) fn count_refusal(shared: &Shared, why: Refused) {
    let mut api = shared.api.lock().unwrap();
    match why {
        Refused::Auth => api.auth_failures += 1,
        Refused::Replay => api.replays += 1,
        Refused::Quota => api.rate_limited += 1,
        Refused::Other => {}
    }
}

/// Runs the action, unless a fault is injected. Hangs and resets lose the answer half of
/// the time *after* the action ran, as a real network does; the other faults happen
/// before the action.
pub(crate) async fn with_faults(
    shared: &Shared,
    faults: &Faults,
    action: &str,
    wire: Wire,
    run: impl std::future::Future<Output = Response<Body>>,
) -> Result<Response<Body>, DropConnection> {
    let Some(kind) = pick_fault(faults, action) else { return Ok(run.await) };
    shared.api.lock().unwrap().faults += 1;
    inject(kind, faults, wire, run).await
}

fn pick_fault(faults: &Faults, action: &str) -> Option<FaultKind> {
    if faults.rate <= 0.0 || faults.kinds.is_empty() {
        return None;
    }
    if !faults.actions.is_empty() && !faults.actions.iter().any(|a| a == action) {
        return None;
    }
    let mut rng = rand::thread_rng();
    if !rng.gen_bool(faults.rate.min(1.0)) {
        return None;
    }
    faults.kinds.choose(&mut rng).copied()
}

/// The real answer under a wrong status, or with its envelope in the wrong shape.
async fn mangle(kind: FaultKind, wire: Wire, answer: Response<Body>) -> Response<Body> {
    let (mut parts, body) = answer.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if kind == FaultKind::WrongStatus {
        parts.status = StatusCode::BAD_GATEWAY;
        return Response::from_parts(parts, Full::new(bytes));
    }
    let mut value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let member = match wire {
        Wire::V2 => "code",
        Wire::V3 => "Response",
    };
    if let Some(v) = value.get_mut(member) {
        *v = Value::String(v.to_string());
    }
    Response::from_parts(parts, Full::new(Bytes::from(value.to_string())))
}

async fn inject(
    kind: FaultKind,
    faults: &Faults,
    wire: Wire,
    run: impl std::future::Future<Output = Response<Body>>,
) -> Result<Response<Body>, DropConnection> {
    // Hangs and resets lose the answer half of the time after the action ran.
    let maybe_run = |run| async move {
        if rand::thread_rng().gen_bool(0.5) {
            let _ = run.await;
        }
    };
    let internal = |message: &str| match wire {
        Wire::V2 => v2_answer(codes::INTERNAL_ERROR, message, Value::Null),
        Wire::V3 => crate::v3::error("InternalError", message),
    };
    match kind {
        FaultKind::Http500 => Ok(Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .header(CONTENT_TYPE, "text/html")
            .body(Full::new(Bytes::from_static(b"<html><body>500 Internal Server Error</body></html>")))
            .expect("valid")),
        FaultKind::NotJson => Ok(Response::builder()
            .status(StatusCode::OK)
            .body(Full::new(Bytes::from_static(b"<html>gateway says hello</html>")))
            .expect("valid")),
        FaultKind::WrongShape => Ok(json_response(
            StatusCode::OK,
            &match wire {
                Wire::V2 => json!({"code": 0, "eventList": "not-a-list"}),
                Wire::V3 => json!({"Response": {"EventSet": "not-a-list", "RequestId": "fault"}}),
            },
        )),
        FaultKind::Code6000 => Ok(internal("internal error")),
        FaultKind::Hang => {
            maybe_run(run).await;
            tokio::time::sleep(faults.hang_for).await;
            Ok(internal("answered after a hang"))
        }
        FaultKind::Reset => {
            maybe_run(run).await;
            Err(DropConnection)
        }
        FaultKind::WrongStatus | FaultKind::MangledEnvelope => Ok(mangle(kind, wire, run.await).await),
    }
}

async fn run_action(shared: &Shared, action: &str, req: &auth::Request<'_>) -> Response<Body> {
    let sub_app = req.params.iter().find(|(n, _)| n == "SubAppId").map(|(_, v)| v.as_str());
    if let Some(id) = sub_app {
        if !id.parse().is_ok_and(|id| shared.known_app(id)) {
            return v2_answer(
                codes::INVALID_PARAMETER,
                &format!("(4000)SubAppId {id} is not an app of this account"),
                Value::Null,
            );
        }
    }
    let app = sub_app.and_then(|id| id.parse().ok());
    match action {
        "PullEvent" => pull_event(shared, app).await,
        "ConfirmEvent" => confirm_event(shared, app, req),
        "DescribeDrmDataKey" => describe_drm_data_key(shared, req),
        other => v2_answer(
            codes::INVALID_PARAMETER,
            &format!("(4000)action {other} is not supported by the emulator"),
            Value::Null,
        ),
    }
}

/// Long poll: answers at once when events are ready, otherwise holds until one is
/// enqueued, a handle expires (redelivery), or the hold time runs out.
async fn pull_event(shared: &Shared, app: Option<u64>) -> Response<Body> {
    let batch = wait_for_batch(shared, app).await;
    if batch.is_empty() {
        return empty_answer(empty_mode(shared, "PullEvent"));
    }
    v2_answer_raw(codes::OK, event_list(&batch))
}

/// The long poll both APIs share: events at once when some are ready, otherwise held until
/// one is enqueued, a handle expires (redelivery), or the hold time runs out (empty). An
/// app in PUSH mode gets nothing: its events go to its callback URL, never to the queue.
pub(crate) async fn wait_for_batch(shared: &Shared, app: Option<u64>) -> Vec<crate::queue::Delivery> {
    let hold = shared.config.lock().unwrap().hold;
    if shared.event_config(app).mode != crate::event_config::PULL {
        tokio::time::sleep(hold).await;
        return Vec::new();
    }
    let deadline = Instant::now() + hold;
    loop {
        let notified = shared.enqueued.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next_expiry = {
            let (batch, next_expiry) =
                shared.with_queue(app, |queue| (queue.pull(Instant::now()), queue.next_expiry()));
            if !batch.is_empty() {
                return batch;
            }
            next_expiry
        };
        let now = Instant::now();
        if now >= deadline {
            return Vec::new();
        }
        let wake = next_expiry.map_or(deadline, |at| at.min(deadline));
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// How to answer an empty poll of `action` (`Rotate` cycles with the call count).
pub(crate) fn empty_mode(shared: &Shared, action: &str) -> EmptyResponse {
    match shared.config.lock().unwrap().empty_response {
        EmptyResponse::Rotate => {
            let n = shared.api.lock().unwrap().calls.get(action).copied().unwrap_or(0);
            [EmptyResponse::Idle, EmptyResponse::EmptyList, EmptyResponse::MissingList, EmptyResponse::NullList]
                [(n % 4) as usize]
        }
        other => other,
    }
}

fn empty_answer(mode: EmptyResponse) -> Response<Body> {
    match mode {
        EmptyResponse::EmptyList => v2_answer(codes::OK, "", json!({"eventList": []})),
        EmptyResponse::MissingList => v2_answer(codes::OK, "", Value::Null),
        EmptyResponse::NullList => v2_answer(codes::OK, "", json!({"eventList": null})),
        _ => v2_answer(codes::INVALID_PARAMETER, "(10009)no message", Value::Null),
    }
}

/// Indexed parameters `name.0`, `name.1`, ... (or `name_0`), in index order.
fn indexed(req: &auth::Request<'_>, name: &str) -> Vec<String> {
    let prefix = format!("{name}.");
    let mut items: Vec<(u64, String)> = req
        .params
        .iter()
        .filter_map(|(n, v)| {
            let n = vod_protocol::v2sign::canonical_name(n);
            n.strip_prefix(&prefix)?.parse().ok().map(|i| (i, v.clone()))
        })
        .collect();
    items.sort();
    items.into_iter().map(|(_, v)| v).collect()
}

fn confirm_event(shared: &Shared, app: Option<u64>, req: &auth::Request<'_>) -> Response<Body> {
    let handles = indexed(req, "msgHandle");
    if handles.is_empty() {
        return v2_answer(codes::INVALID_PARAMETER, "(4000)msgHandle.n is required", Value::Null);
    }
    match shared.confirm(app, &handles) {
        Ok(()) => v2_answer(codes::OK, "", Value::Null),
        Err(refused) => v2_answer(
            codes::INVALID_PARAMETER,
            &format!("(1000)invalid or expired msgHandle: {}", refused.bad_handles.join(",")),
            Value::Null,
        ),
    }
}

fn describe_drm_data_key(shared: &Shared, req: &auth::Request<'_>) -> Response<Body> {
    let edks = indexed(req, "edkList");
    if edks.is_empty() || edks.len() > 10 {
        return v2_answer(codes::INVALID_PARAMETER, "(4000)edkList.n takes 1 to 10 EDKs", Value::Null);
    }
    let keys = shared.keys.lock().unwrap();
    let mut list = Vec::new();
    for edk in &edks {
        let Some(dk) = keys.get(edk) else {
            return v2_answer(codes::INVALID_PARAMETER, "(4000)edk is not a key this account issued", Value::Null);
        };
        list.push(json!({"edk": edk, "dk": base64::engine::general_purpose::STANDARD.encode(dk)}));
    }
    v2_answer(codes::OK, "", json!({"data": {"keyList": list}}))
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `/_emulator/{events,generate,stats,faults,confirmed,webhook,webhooks}`.
async fn control_endpoint(
    shared: &Arc<Shared>,
    what: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Response<Body>> {
    let handle = crate::EmulatorHandle { shared: shared.clone() };
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let q = |name: &str| query.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let bad = |msg: String| json_response(StatusCode::BAD_REQUEST, &json!({"error": msg}));
    let method = req.method().clone();
    let (parts, body) = read_body(req).await?;
    // `?app=SUBAPPID` puts events in that app's queue (default: the default app's).
    let app: Option<u64> = match q("app") {
        Some(a) => Some(a.parse().map_err(|_| bad("app must be a SubAppId".into()))?),
        None => None,
    };
    let response = match (method, what) {
        (Method::GET, "stats") => {
            json_response(StatusCode::OK, &serde_json::to_value(handle.stats()).expect("serialisable"))
        }
        (Method::GET, "confirmed") => {
            let list: Vec<String> = handle.confirmed().iter().map(|c| c.to_string()).collect();
            json_response(StatusCode::OK, &json!(list))
        }
        (Method::POST, "events") => {
            let value: Value = serde_json::from_slice(&body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
            let events = match value {
                Value::Array(items) => items,
                one => vec![one],
            };
            for event in &events {
                handle.enqueue_to(app, event.to_string());
            }
            json_response(StatusCode::OK, &json!({"enqueued": events.len()}))
        }
        (Method::POST, "generate") => {
            let count: usize =
                q("count").unwrap_or_else(|| "1".into()).parse().map_err(|_| bad("count must be a number".into()))?;
            let generated = match q("type") {
                Some(t) => handle
                    .enqueue_generated_type(&t, count)
                    .ok_or_else(|| bad(format!("unknown event template {t}")))?,
                None => handle.enqueue_generated_to(app, count),
            };
            json_response(StatusCode::OK, &json!({"enqueued": generated.len()}))
        }
        (Method::POST, "webhook") => {
            let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let received = crate::ReceivedWebhook {
                id: header("webhook-id"),
                timestamp: header("webhook-timestamp"),
                signature: header("webhook-signature"),
                event_type: header("x-vod-event-type"),
                body: String::from_utf8_lossy(&body).into_owned(),
                received_at_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
            };
            shared.webhooks_received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut kept = shared.webhooks.lock().unwrap();
            if kept.len() >= crate::MAX_WEBHOOKS_KEPT {
                kept.remove(0);
            }
            kept.push(received);
            json_response(StatusCode::OK, &json!({"ok": true}))
        }
        (Method::GET, "webhooks") => {
            json_response(StatusCode::OK, &serde_json::to_value(handle.webhooks()).expect("serialisable"))
        }
        (Method::PUT | Method::POST, "faults") => {
            let faults: Faults = serde_json::from_slice(&body).map_err(|e| bad(format!("invalid faults: {e}")))?;
            handle.set_faults(faults);
            json_response(StatusCode::OK, &json!({"ok": true}))
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "unknown control endpoint; try GET /_emulator/stats"}),
        ),
    };
    Ok(response)
}
