//! The v2 server API: common parameters, signing exactly as `qcloudapi-sdk-python` does
//! (`vod-protocol`), GET or POST, and the `{code, message, codeDesc}` envelope. An empty
//! queue answers PullEvent with `code 4000`, or `code 0` and no or an empty `eventList`;
//! a 4000 that is a refused parameter instead is told apart by [`idle_or_refused`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::value::RawValue;
use vod_protocol::{codes, v2sign};

use super::error::{self, ApiError, Code};
use super::limiter::{self, ActionLimiter};
use super::{ClientSettings, PulledItem};

/// The v2 client.
pub struct V2Client {
    http: reqwest::Client,
    settings: ClientSettings,
    /// `host[:port]` as the `Host` header carries it, which is what gets signed.
    host: String,
    limiter: Arc<ActionLimiter>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    code: i64,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "codeDesc")]
    code_desc: Option<String>,
    #[serde(default, rename = "eventList", borrow)]
    event_list: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct RawItem<'a> {
    #[serde(default, rename = "msgHandle")]
    msg_handle: Option<serde_json::Value>,
    #[serde(default, rename = "eventContent", borrow)]
    event_content: Option<&'a RawValue>,
}

impl V2Client {
    /// A client for `settings`.
    pub fn new(settings: ClientSettings) -> anyhow::Result<V2Client> {
        let limiter = Arc::new(limiter::for_settings(&settings));
        Self::with_limiter(settings, limiter)
    }

    /// A client for `settings` spending the budget of `limiter` (shared with other sources).
    pub(crate) fn with_limiter(settings: ClientSettings, limiter: Arc<ActionLimiter>) -> anyhow::Result<V2Client> {
        let host = settings.host()?;
        let http = settings.http_client()?;
        Ok(V2Client { http, settings, host, limiter })
    }

    /// Long-polls `PullEvent`. An empty queue (`code 4000` saying so, or `code 0` with no
    /// or an empty `eventList`) is `Ok(vec![])`; a 4000 refusing a parameter is an error.
    pub async fn pull_event(&self) -> Result<Vec<PulledItem>, ApiError> {
        const ACTION: &str = "PullEvent";
        let started = Instant::now();
        let body = match self.call(ACTION, Vec::new()).await {
            Err(ApiError::Refused { code: Code::V2(codes::INVALID_PARAMETER), message, .. }) => {
                return idle_or_refused(message, started.elapsed(), self.settings.long_poll_hold);
            }
            other => other?,
        };
        parse_event_list(&body).map_err(|detail| ApiError::Malformed {
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
    pub async fn confirm_event(&self, handles: &[String]) -> Result<(), ApiError> {
        let params = handles.iter().enumerate().map(|(i, h)| (format!("msgHandle.{i}"), h.clone())).collect();
        self.call("ConfirmEvent", params).await.map(drop)
    }

    /// Turns EDKs (at most 10) into data keys: `(edk, base64 dk)` pairs.
    pub async fn describe_drm_data_key(&self, edks: &[String]) -> Result<Vec<(String, String)>, ApiError> {
        const ACTION: &str = "DescribeDrmDataKey";
        #[derive(Deserialize)]
        struct Key {
            edk: String,
            dk: String,
        }
        #[derive(Deserialize)]
        struct Data {
            #[serde(rename = "keyList", default)]
            key_list: Vec<Key>,
        }
        #[derive(Deserialize)]
        struct Answer {
            data: Data,
        }
        let params = edks.iter().enumerate().map(|(i, e)| (format!("edkList.{i}"), e.clone())).collect();
        let body = self.call(ACTION, params).await?;
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| ApiError::malformed(ACTION, &e, &body))?;
        Ok(answer.data.key_list.into_iter().map(|k| (k.edk, k.dk)).collect())
    }

    /// Signs and sends one call; returns the body of a `code 0` answer.
    pub async fn call(&self, action: &'static str, params: Vec<(String, String)>) -> Result<Vec<u8>, ApiError> {
        self.limiter.until_ready(action).await;
        let params = self.signed_params(action, params);
        let request = if self.settings.post {
            self.http.post(self.settings.endpoint.clone()).form(&params)
        } else {
            self.http.get(self.settings.endpoint.clone()).query(&params)
        };
        let response = request.send().await.map_err(|e| self.settings.transport_error(action, e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.settings.transport_error(action, e))?;
        if status != reqwest::StatusCode::OK {
            return Err(ApiError::http(action, status.as_u16(), &body));
        }
        let envelope: Envelope<'_> =
            serde_json::from_slice(&body).map_err(|e| ApiError::malformed(action, &e, &body))?;
        if envelope.code != codes::OK {
            let desc = envelope.code_desc.filter(|d| !d.is_empty()).map(|d| format!(" ({d})")).unwrap_or_default();
            let message = envelope.message.unwrap_or_default();
            return Err(ApiError::Refused {
                action,
                code: Code::V2(envelope.code),
                message: format!("{message}{desc}"),
            });
        }
        Ok(body.to_vec())
    }

    fn signed_params(&self, action: &str, extra: Vec<(String, String)>) -> Vec<(String, String)> {
        let s = &self.settings;
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let nonce = rand::thread_rng().gen_range(1..=i64::MAX as u64);
        let mut params = vec![
            ("Action".to_string(), action.to_string()),
            ("Region".to_string(), s.region.clone().unwrap_or_default()),
            ("Timestamp".to_string(), timestamp.to_string()),
            ("Nonce".to_string(), nonce.to_string()),
            ("SecretId".to_string(), s.secret_id.clone()),
            ("SignatureMethod".to_string(), s.signature_method.as_str().to_string()),
        ];
        if let Some(token) = &s.token {
            params.push(("Token".to_string(), token.expose_secret().to_string()));
        }
        if let Some(id) = s.sub_app_id {
            params.push(("SubAppId".to_string(), id.to_string()));
        }
        params.extend(extra);
        let verb = if s.post { "POST" } else { "GET" };
        let signature = v2sign::sign(
            s.secret_key.expose_secret().as_bytes(),
            verb,
            &self.host,
            s.endpoint.path(),
            params.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        );
        params.push(("Signature".to_string(), signature));
        params
    }
}

/// What an idle queue's 4000 says (the emulator: `(10009)no message`).
const IDLE_TEXTS: [&str; 3] = ["no message", "no event", "no msg"];

/// PullEvent's 4000 is both "no event" (an idle queue, after holding the long poll) and a
/// refused parameter (a wrong `Region` or `SubAppId`, answered at once). It is idle when
/// its message says so or when the long poll was held (for a fifth of the hold or more,
/// whatever the text, which Tencent does not document); otherwise it is a refusal.
pub fn idle_or_refused(message: String, waited: Duration, hold: Duration) -> Result<Vec<PulledItem>, ApiError> {
    let says_idle = IDLE_TEXTS.iter().any(|t| message.to_ascii_lowercase().contains(t));
    if says_idle || waited >= hold / 5 {
        tracing::debug!(%message, "PullEvent answered 4000: no event waiting.");
        return Ok(Vec::new());
    }
    let message = format!("{message}, answered {waited:.1?} after the call, well before the {hold:?} long-poll hold");
    Err(ApiError::Refused { action: "PullEvent", code: Code::V2(codes::INVALID_PARAMETER), message })
}

/// The items of a PullEvent answer's `eventList` (none when it is absent). Items that are
/// not `{msgHandle, eventContent}` are kept whole; only a body that is not a JSON envelope
/// is an error.
pub fn parse_event_list(body: &[u8]) -> Result<Vec<PulledItem>, String> {
    let envelope: Envelope<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(envelope
        .event_list
        .unwrap_or_default()
        .into_iter()
        .map(|raw| match serde_json::from_str::<RawItem<'_>>(raw.get()) {
            Ok(RawItem { msg_handle, event_content: Some(content) }) => {
                PulledItem { handle: handle_text(msg_handle), content: content.get().to_string() }
            }
            Ok(RawItem { msg_handle, event_content: None }) => {
                PulledItem { handle: handle_text(msg_handle), content: raw.get().to_string() }
            }
            // Not even an object: keep it, it cannot be confirmed.
            Err(_) => PulledItem { handle: None, content: raw.get().to_string() },
        })
        .collect())
}

fn handle_text(value: Option<serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn documented_answers_parse() {
        let items =
            parse_event_list(include_bytes!("../../tests/fixtures/events-v2/_PullEvent.response.json")).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].handle.as_deref(), Some("2bf1bc3c9a0e4c7b8c8a1f0a6d1e7a51"));
        assert!(items[1].content.contains(r#""version": 4"#), "content kept as sent: {}", items[1].content);
        assert!(parse_event_list(br#"{"code":0}"#).unwrap().is_empty());
        assert!(parse_event_list(br#"{"code":0,"eventList":"x"}"#).is_err());
        let odd = parse_event_list(br#"{"code":0,"eventList":[7,{"msgHandle":""},{"eventContent":1}]}"#).unwrap();
        assert_eq!(odd.iter().map(|i| i.handle.is_some()).collect::<Vec<_>>(), [false, false, false]);
    }

    #[test]
    fn an_idle_queue_and_a_refused_parameter_are_told_apart() {
        let hold = Duration::from_secs(5);
        let idle = |message: &str, waited_ms| idle_or_refused(message.into(), Duration::from_millis(waited_ms), hold);
        assert!(idle("(10009)no message (InvalidParameter)", 3).unwrap().is_empty(), "says so");
        assert!(idle(" (InvalidParameter)", 5000).unwrap().is_empty(), "after the hold");
        assert!(idle("(10009)暂无消息", 1200).unwrap().is_empty(), "after most of a second, whatever the text");
        let quick = idle(" (InvalidParameter)", 12).unwrap_err().to_string();
        assert!(quick.contains("4000") && quick.contains("well before the 5s long-poll hold"), "{quick}");
        let named = idle("(4000)SubAppId 7 is invalid (InvalidParameter)", 20).unwrap_err();
        assert!(named.to_string().contains("SubAppId 7"), "{named}");
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_event_list(&body);
        }

        #[test]
        fn any_event_list_items_are_kept(items in proptest::collection::vec(crate::event::tests::arb_json(), 0..8)) {
            let body = serde_json::json!({"code": 0, "eventList": items}).to_string();
            prop_assert_eq!(parse_event_list(body.as_bytes()).unwrap().len(), items.len());
        }
    }
}
