//! API 3.0: JSON POST to `/` with `X-TC-Action`, `X-TC-Version: 2018-07-17`,
//! `X-TC-Timestamp`, optional `X-TC-Region` and `X-TC-Token`, signed TC3-HMAC-SHA256
//! (`vod-protocol`). Success is `{"Response": {...}}`; failure is told by
//! `Response.Error`, whatever the HTTP status. An idle queue answers PullEvents with the error
//! code `ResourceNotFound`, which means no events, as do `EventSet` null, missing or empty. Each pulled event is kept as Tencent sent it minus `EventHandle` (key order and
//! values exact), which is the body VOD's own v3 HTTP callbacks carry.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use vod_protocol::tc3::Tc3Request;

use super::error::{self, ApiError, Code};
use super::limiter::{self, ActionLimiter};
use super::{ClientSettings, PulledItem};

/// `X-TC-Version`.
pub const VERSION: &str = "2018-07-17";
/// The signed service name.
pub const SERVICE: &str = "vod";
/// The PullEvents error code that means "no events": the official Go SDK lists it among
/// PullEvents' errors, and consumers built on the official Java SDK map it to an empty
/// `EventSet`. Only this exact code; `ResourceNotFound.*` subcodes stay errors.
pub const IDLE_CODE: &str = "ResourceNotFound";
/// The content type sent and signed (as Tencent's SDKs send it).
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The API 3.0 client.
pub struct V3Client {
    http: reqwest::Client,
    settings: ClientSettings,
    host: String,
    limiter: Arc<ActionLimiter>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "Response", borrow)]
    response: Option<ResponseBody<'a>>,
}

#[derive(Deserialize)]
struct ResponseBody<'a> {
    #[serde(rename = "Error")]
    error: Option<ErrorBody>,
    #[serde(rename = "EventSet", borrow, default)]
    event_set: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "Code")]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

impl V3Client {
    /// A client for `settings`.
    pub fn new(settings: ClientSettings) -> anyhow::Result<V3Client> {
        // Tencent counts API 3.0 calls per second: the configured rate is enforced per second.
        let limiter = Arc::new(limiter::for_settings(&settings));
        Self::with_limiter(settings, limiter)
    }

    /// A client for `settings` spending the budget of `limiter` (shared with other sources).
    pub(crate) fn with_limiter(settings: ClientSettings, limiter: Arc<ActionLimiter>) -> anyhow::Result<V3Client> {
        let host = settings.host()?;
        let http = settings.http_client()?;
        Ok(V3Client { http, settings, host, limiter })
    }

    /// Long-polls `PullEvents`.
    pub async fn pull_events(&self) -> Result<Vec<PulledItem>, ApiError> {
        const ACTION: &str = "PullEvents";
        let body = match self.call(ACTION, json!({})).await {
            // The service's answer for an idle queue (after its hold): no events.
            Err(ApiError::Refused { code: Code::V3(code), .. }) if code == IDLE_CODE => return Ok(Vec::new()),
            other => other?,
        };
        parse_event_set(&body).map_err(|detail| ApiError::Malformed {
            action: ACTION,
            detail,
            excerpt: error::excerpt(ACTION, &body),
        })
    }

    /// The app (`SubAppId`) it calls for.
    pub fn sub_app_id(&self) -> Option<u64> {
        self.settings.sub_app_id
    }

    /// Confirms handles (at most 16).
    pub async fn confirm_events(&self, handles: &[String]) -> Result<(), ApiError> {
        self.call("ConfirmEvents", json!({ "EventHandles": handles })).await.map(drop)
    }

    /// Turns EDKs (at most 10) into `(edk, base64 dk)` pairs.
    pub async fn describe_drm_data_key(&self, edks: &[String]) -> Result<Vec<(String, String)>, ApiError> {
        const ACTION: &str = "DescribeDrmDataKey";
        #[derive(Deserialize)]
        struct Key {
            #[serde(rename = "Edk")]
            edk: String,
            #[serde(rename = "Dk")]
            dk: String,
        }
        #[derive(Deserialize)]
        struct Keys {
            #[serde(rename = "KeyList", default)]
            key_list: Vec<Key>,
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "Response")]
            response: Keys,
        }
        let body = self.call(ACTION, json!({ "EdkList": edks })).await?;
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| ApiError::malformed(ACTION, &e, &body))?;
        Ok(answer.response.key_list.into_iter().map(|k| (k.edk, k.dk)).collect())
    }

    /// Signs and sends one call; returns the body of a successful answer.
    pub async fn call(&self, action: &'static str, mut payload: Value) -> Result<Vec<u8>, ApiError> {
        self.limiter.until_ready(action).await;
        let s = &self.settings;
        if let (Some(id), Value::Object(map)) = (s.sub_app_id, &mut payload) {
            map.insert("SubAppId".into(), json!(id));
        }
        let body = serde_json::to_vec(&payload).expect("JSON values serialise");
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let signing = Tc3Request {
            secret_id: &s.secret_id,
            service: SERVICE,
            host: &self.host,
            content_type: JSON_CONTENT_TYPE,
            timestamp,
            body: &body,
        };
        // `config check` refuses credentials that cannot go into a header; never panic on one.
        let mut authorization = HeaderValue::from_str(&signing.authorization(s.secret_key.expose_secret().as_bytes()))
            .map_err(|_| ApiError::Malformed {
                action,
                detail: "vod.secret_id is not a valid header value; run `vod-eventd config check`".into(),
                excerpt: String::new(),
            })?;
        authorization.set_sensitive(true);
        let mut request = self
            .http
            .post(s.endpoint.clone())
            .header(CONTENT_TYPE, JSON_CONTENT_TYPE)
            .header(AUTHORIZATION, authorization)
            .header("X-TC-Action", action)
            .header("X-TC-Version", VERSION)
            .header("X-TC-Timestamp", timestamp.to_string());
        if let Some(region) = &s.region {
            request = request.header("X-TC-Region", region);
        }
        if let Some(token) = &s.token {
            let mut value = HeaderValue::from_str(token.expose_secret()).map_err(|_| ApiError::Malformed {
                action,
                detail: "vod.token is not a valid header value".into(),
                excerpt: String::new(),
            })?;
            value.set_sensitive(true);
            request = request.header("X-TC-Token", value);
        }
        let response = request.body(body).send().await.map_err(|e| s.transport_error(action, e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| s.transport_error(action, e))?;
        match serde_json::from_slice::<Envelope<'_>>(&body) {
            Ok(Envelope { response: Some(ResponseBody { error: Some(e), .. }) }) => {
                Err(ApiError::Refused { action, code: Code::V3(e.code), message: e.message })
            }
            _ if status != reqwest::StatusCode::OK => Err(ApiError::http(action, status.as_u16(), &body)),
            Ok(Envelope { response: Some(_) }) => Ok(body.to_vec()),
            Ok(Envelope { response: None }) => Err(ApiError::Malformed {
                action,
                detail: "no Response object".into(),
                excerpt: error::excerpt(action, &body),
            }),
            Err(e) => Err(ApiError::malformed(action, &e, &body)),
        }
    }
}

/// The events of a PullEvents answer (none when `EventSet` is null or missing).
pub fn parse_event_set(body: &[u8]) -> Result<Vec<PulledItem>, String> {
    let envelope: Envelope<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let events = envelope.response.and_then(|r| r.event_set).unwrap_or_default();
    Ok(events.into_iter().map(split_handle).collect())
}

/// Takes `EventHandle` out of an event, keeping every other member exactly as sent.
fn split_handle(raw: &RawValue) -> PulledItem {
    // Member names borrowed from the answer (no copy per name); a name holding an escape
    // cannot be borrowed and takes the owned path.
    match serde_json::from_str::<IndexMap<&str, &RawValue>>(raw.get()) {
        Ok(members) => without_handle(members),
        Err(_) => match serde_json::from_str::<IndexMap<String, &RawValue>>(raw.get()) {
            Ok(members) => without_handle(members),
            // Not an object: keep it; it cannot be confirmed.
            Err(_) => PulledItem { handle: None, content: raw.get().to_string() },
        },
    }
}

fn without_handle<K>(mut members: IndexMap<K, &RawValue>) -> PulledItem
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<str> + serde::Serialize,
{
    // The model says string; a number is taken as its text, as the v2 client does.
    let handle = members.shift_remove("EventHandle").and_then(|h| match serde_json::from_str::<Value>(h.get()) {
        Ok(Value::String(s)) => Some(s),
        Ok(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    });
    let content = serde_json::to_string(&members).expect("raw JSON members serialise");
    PulledItem { handle: handle.filter(|h| !h.is_empty()), content }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_answers_parse() {
        let items = parse_event_set(include_bytes!("../../tests/fixtures/events-v3/PullEvents.response.json")).unwrap();
        assert_eq!(
            items.iter().map(|i| i.handle.as_deref()).collect::<Vec<_>>(),
            [Some("EventHandle1"), Some("EventHandle2")]
        );
        assert!(!items[0].content.contains("EventHandle"));
        assert!(parse_event_set(include_bytes!("../../tests/fixtures/events-v3/PullEvents.empty.json"))
            .unwrap()
            .is_empty());
        assert!(parse_event_set(br#"{"Response":{"EventSet":null,"RequestId":"r"}}"#).unwrap().is_empty());
        assert!(parse_event_set(br#"{"Response":{"RequestId":"r"}}"#).unwrap().is_empty());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_event_set(&body);
        }

        #[test]
        fn any_events_are_kept(items in proptest::collection::vec(crate::event::tests::arb_json(), 0..8)) {
            let body = serde_json::json!({"Response": {"EventSet": items, "RequestId": "r"}}).to_string();
            proptest::prop_assert_eq!(parse_event_set(body.as_bytes()).unwrap().len(), items.len());
        }
    }

    #[test]
    fn the_handle_is_taken_out_and_the_rest_kept_in_order() {
        let raw: Box<RawValue> = serde_json::from_str(
            r#"{"EventHandle":"h1","EventType":"NewFileUpload","FileUploadEvent":{"FileId":"1","Size":1.50},"Zeta":null}"#,
        )
        .unwrap();
        let item = split_handle(&raw);
        assert_eq!(item.handle.as_deref(), Some("h1"));
        assert_eq!(
            item.content,
            r#"{"EventType":"NewFileUpload","FileUploadEvent":{"FileId":"1","Size":1.50},"Zeta":null}"#
        );
        let numeric: Box<RawValue> = serde_json::from_str(r#"{"EventHandle":12345,"EventType":"X"}"#).unwrap();
        assert_eq!(split_handle(&numeric).handle.as_deref(), Some("12345"));
        let not_object: Box<RawValue> = serde_json::from_str("[1]").unwrap();
        assert_eq!(split_handle(&not_object).handle, None);
        // A member name with an escape cannot be borrowed; it is kept all the same.
        let escaped: Box<RawValue> = serde_json::from_str(r#"{"EventHandle":"h2","Na\u006de":1}"#).unwrap();
        let item = split_handle(&escaped);
        assert_eq!((item.handle.as_deref(), item.content.as_str()), (Some("h2"), r#"{"Name":1}"#));
    }
}
