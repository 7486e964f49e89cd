//! Who may call, and how often: v2 signature verification (the same algorithm the client
//! uses, from `vod-protocol`), Timestamp skew and Nonce reuse (4500); API 3.0
//! TC3-HMAC-SHA256 verification with a 5-minute skew; and a sliding window per action
//! (v2: 1000 per minute → 4400; v3: 100 per second → RequestLimitExceeded).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use vod_protocol::codes;
use vod_protocol::v2sign;

use crate::Credential;

/// A refusal: the v2 `code` and `message` to answer with.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub code: i64,
    pub message: String,
}

impl Refusal {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Refusal { code, message: message.into() }
    }
}

/// Nonces seen recently and calls per action in the last minute.
#[derive(Default)]
pub(crate) struct Guard {
    nonces: HashSet<(String, String)>,
    nonce_order: VecDeque<(Instant, (String, String))>,
    calls: HashMap<String, VecDeque<Instant>>,
}

/// A parsed, not yet verified request.
pub(crate) struct Request<'a> {
    pub http_method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub params: &'a [(String, String)],
}

impl Request<'_> {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| v2sign::canonical_name(n) == name).map(|(_, v)| v.as_str())
    }
}

/// Verifies the signature, the Timestamp and the Nonce; returns the action name.
pub(crate) fn verify(
    req: &Request<'_>,
    credentials: &[Credential],
    max_skew: Duration,
    now_unix: i64,
    guard: &mut Guard,
) -> Result<String, Refusal> {
    for required in ["Action", "Nonce", "Timestamp", "SecretId", "Signature", "Region"] {
        if req.param(required).is_none_or(str::is_empty) {
            return Err(Refusal::new(codes::INVALID_PARAMETER, format!("(4000)missing required parameter {required}")));
        }
    }
    let secret_id = req.param("SecretId").unwrap_or_default();
    let Some(cred) = credentials.iter().find(|c| c.secret_id == secret_id) else {
        return Err(Refusal::new(codes::AUTH_FAILURE, "secretid not found"));
    };
    let params = req.params.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    let expected = v2sign::sign(cred.secret_key.as_bytes(), req.http_method, req.host, req.path, params);
    if !v2sign::signatures_equal(&expected, req.param("Signature").unwrap_or_default()) {
        return Err(Refusal::new(codes::AUTH_FAILURE, "signature verification failed"));
    }
    let timestamp: i64 = req
        .param("Timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| Refusal::new(codes::INVALID_PARAMETER, "(4000)Timestamp is not an integer"))?;
    if (now_unix - timestamp).unsigned_abs() > max_skew.as_secs() {
        return Err(Refusal::new(codes::REPLAY, "timestamp is too far from the server's clock"));
    }
    let nonce = req.param("Nonce").unwrap_or_default();
    if nonce.parse::<u64>().map_or(true, |n| n == 0) {
        return Err(Refusal::new(codes::INVALID_PARAMETER, "(4000)Nonce must be a positive integer"));
    }
    guard.remember_nonce(secret_id, nonce, max_skew)?;
    Ok(req.param("Action").unwrap_or_default().to_string())
}

impl Guard {
    fn remember_nonce(&mut self, secret_id: &str, nonce: &str, max_skew: Duration) -> Result<(), Refusal> {
        let now = Instant::now();
        // A nonce only needs remembering while its Timestamp could still be accepted.
        while let Some((at, _)) = self.nonce_order.front() {
            if now.duration_since(*at) <= 2 * max_skew {
                break;
            }
            let (_, key) = self.nonce_order.pop_front().expect("peeked");
            self.nonces.remove(&key);
        }
        let key = (secret_id.to_string(), nonce.to_string());
        if !self.nonces.insert(key.clone()) {
            return Err(Refusal::new(codes::REPLAY, "nonce has been used"));
        }
        self.nonce_order.push_back((now, key));
        Ok(())
    }

    /// Counts a call; refuses it when `limit` calls of `action` were made in the last `window`.
    pub fn admit(&mut self, action: &str, limit: Option<u32>, window: Duration) -> Result<(), Refusal> {
        let Some(limit) = limit else { return Ok(()) };
        let now = Instant::now();
        let calls = self.calls.entry(action.to_string()).or_default();
        while calls.front().is_some_and(|t| now.duration_since(*t) >= window) {
            calls.pop_front();
        }
        if calls.len() >= limit as usize {
            let message = format!("request limit of {limit} per {window:?} for {action} exceeded");
            return Err(Refusal::new(codes::QUOTA_EXCEEDED, message));
        }
        calls.push_back(now);
        Ok(())
    }
}

/// A v3 refusal: the `Response.Error.Code` and message.
#[derive(Debug)]
pub(crate) struct V3Refusal {
    pub code: &'static str,
    pub message: String,
}

/// What a v3 request carries for verification.
pub(crate) struct V3Request<'a> {
    pub authorization: &'a str,
    pub host: &'a str,
    pub content_type: &'a str,
    pub timestamp: &'a str,
    pub body: &'a [u8],
}

/// The skew API 3.0 allows between `X-TC-Timestamp` and the server's clock.
pub(crate) const V3_MAX_SKEW: Duration = Duration::from_secs(300);

/// Verifies a TC3-HMAC-SHA256 request.
pub(crate) fn verify_v3(req: &V3Request<'_>, credentials: &[Credential], now_unix: i64) -> Result<(), V3Refusal> {
    use vod_protocol::tc3;
    let refuse = |code, message: &str| V3Refusal { code, message: message.to_string() };
    let auth = tc3::parse_authorization(req.authorization)
        .ok_or_else(|| refuse("AuthFailure.InvalidAuthorization", "Authorization is not a TC3-HMAC-SHA256 header"))?;
    let timestamp: i64 =
        req.timestamp.parse().map_err(|_| refuse("MissingParameter", "X-TC-Timestamp is missing or not an integer"))?;
    if (now_unix - timestamp).unsigned_abs() > V3_MAX_SKEW.as_secs() {
        return Err(refuse(
            "AuthFailure.SignatureExpire",
            "the request timestamp is more than 5 minutes from the server's clock",
        ));
    }
    let Some(cred) = credentials.iter().find(|c| c.secret_id == auth.secret_id) else {
        return Err(refuse("AuthFailure.SecretIdNotFound", "the SecretId does not exist"));
    };
    if auth.service != "vod" || auth.date != tc3::utc_date(timestamp) || auth.signed_headers != tc3::SIGNED_HEADERS {
        return Err(refuse(
            "AuthFailure.SignatureFailure",
            "the credential scope or signed headers do not match the request",
        ));
    }
    let expected = tc3::Tc3Request {
        secret_id: &auth.secret_id,
        service: "vod",
        host: req.host,
        content_type: req.content_type,
        timestamp,
        body: req.body,
    }
    .signature(cred.secret_key.as_bytes());
    if !v2sign::signatures_equal(&expected, &auth.signature) {
        return Err(refuse(
            "AuthFailure.SignatureFailure",
            "The provided credentials could not be validated. Please check your signature is correct.",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred() -> Vec<Credential> {
        vec![Credential { secret_id: "AKID1".into(), secret_key: "key".into() }]
    }

    fn signed(params: &[(&str, &str)], key: &str) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = params.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let sig = v2sign::sign(key.as_bytes(), "GET", "h:1", "/v2/index.php", params.iter().copied());
        p.push(("Signature".into(), sig));
        p
    }

    fn base(ts: &str, nonce: &'static str) -> Vec<(&'static str, String)> {
        vec![
            ("Action", "PullEvent".into()),
            ("Nonce", nonce.into()),
            ("Region", "gz".into()),
            ("SecretId", "AKID1".into()),
            ("Timestamp", ts.into()),
        ]
    }

    fn check(params: &[(String, String)], now: i64, guard: &mut Guard) -> Result<String, Refusal> {
        let req = Request { http_method: "GET", host: "h:1", path: "/v2/index.php", params };
        verify(&req, &cred(), Duration::from_secs(7200), now, guard)
    }

    #[test]
    fn accepts_good_rejects_bad_signature_stale_time_and_replay() {
        let mut guard = Guard::default();
        let p = base("1000", "7");
        let p: Vec<(&str, &str)> = p.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let good = signed(&p, "key");
        assert_eq!(check(&good, 1000, &mut guard).unwrap(), "PullEvent");
        assert_eq!(check(&good, 1000, &mut guard).unwrap_err().code, codes::REPLAY);
        let wrong_key = signed(&p, "other");
        assert_eq!(check(&wrong_key, 1000, &mut Guard::default()).unwrap_err().code, codes::AUTH_FAILURE);
        assert_eq!(check(&good, 1000 + 7201, &mut Guard::default()).unwrap_err().code, codes::REPLAY);
    }

    #[test]
    fn v3_accepts_the_clients_signature_and_refuses_the_rest() {
        let body = br#"{"EventHandles":["h"]}"#;
        let signing = vod_protocol::tc3::Tc3Request {
            secret_id: "AKID1",
            service: "vod",
            host: "127.0.0.1:9",
            content_type: "application/json",
            timestamp: 1000,
            body,
        };
        let authorization = signing.authorization(b"key");
        let req = V3Request {
            authorization: &authorization,
            host: "127.0.0.1:9",
            content_type: "application/json",
            timestamp: "1000",
            body,
        };
        verify_v3(&req, &cred(), 1000).unwrap();
        assert_eq!(verify_v3(&req, &cred(), 1000 + 301).unwrap_err().code, "AuthFailure.SignatureExpire");
        let tampered = V3Request { body: br#"{"EventHandles":["x"]}"#, ..req };
        assert_eq!(verify_v3(&tampered, &cred(), 1000).unwrap_err().code, "AuthFailure.SignatureFailure");
        let other_host = V3Request { host: "127.0.0.1:10", ..req };
        assert_eq!(verify_v3(&other_host, &cred(), 1000).unwrap_err().code, "AuthFailure.SignatureFailure");
    }

    #[test]
    fn rate_limit_counts_per_action() {
        let mut guard = Guard::default();
        let minute = Duration::from_secs(60);
        for _ in 0..3 {
            guard.admit("PullEvent", Some(3), minute).unwrap();
        }
        assert_eq!(guard.admit("PullEvent", Some(3), minute).unwrap_err().code, codes::QUOTA_EXCEEDED);
        guard.admit("ConfirmEvent", Some(3), minute).unwrap();
        guard.admit("PullEvent", None, minute).unwrap();
    }
}
