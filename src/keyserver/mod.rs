//! `vod-eventd keyserver`: hands the stored data keys to HLS players, a process of its
//! own (it faces players; the daemon does not). The playlist's `#EXT-X-KEY` URI is the
//! encryption template's `getKeyUrl` + `?fileId=<id>&keySource=VodBuildInKMS&edk=<EDK>`,
//! plus `&token=<T>` when the player asked for the playlist as
//! `voddrm.token.<T>.<name>.m3u8`; the answer is the 16 raw bytes of the data key.
//!
//! - `GET`/`HEAD` on `keyserver.path`: `200` with the key; `400` for a query that is not
//!   exactly `fileId`, `keySource`, `edk` (and `token`); `401` without a token (in the
//!   query, or with `auth = "cookie"` in the cookie `keyserver.cookie`); `403` for an
//!   expired, tampered or other file's token; `404` for a pair the store does not tie
//!   together ([`crate::store::Keys::key_for`]: an EDK is served for its own file alone);
//!   `429` above the per-client rate; `503` while the store cannot be read.
//! - A pair a stored event ties together but whose key is not stored yet is fetched at
//!   once with DescribeDrmDataKey under that event's source, stored and served
//!   ([`missing`]); `503` with `Retry-After` while Tencent cannot be reached.
//! - `OPTIONS`: the CORS preflight. `Access-Control-Allow-Origin` echoes a listed origin
//!   (with `Vary: Origin`), never `*`.
//! - `/healthz`: `200` while the store answers.
//!
//! With `metrics_listen`, `/metrics` there counts requests by outcome
//! (`vod_eventd_keyserver_requests_total{outcome}`) and their latency
//! (`vod_eventd_keyserver_request_seconds`), apart from the players' listener.
//!
//! SIGHUP re-reads the token secrets (rotation without a restart); the other settings take
//! effect at the next start.
//!
//! A key served is answered from memory for a minute ([`served`]): same answers, without
//! the store's round trip.
//!
//! No key, token or whole EDK goes into a log line: an EDK is shown by its first
//! characters only.

mod cache;
mod metrics;
pub mod missing;
mod served;
pub mod tls;
pub mod token;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::{DefaultKeyedRateLimiter, Quota};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{KeyAuth, KeyserverConfig};
use crate::http::{serve_with, Limits};
use crate::store::Store;
use token::Verifier;

/// The request line and headers of a key request, at most (a token is at most 2 KiB).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE: &str = "600";

/// A key server, ready to answer.
#[derive(Clone)]
pub struct KeyServer {
    inner: Arc<Inner>,
}

struct Inner {
    config: KeyserverConfig,
    store: Store,
    /// With `auth = "token"`; its secrets are swapped on SIGHUP.
    verifier: Option<ArcSwap<Verifier>>,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    cache_control: HeaderValue,
    metrics: metrics::KeyMetrics,
    /// With `fetch_missing`: keys not stored yet.
    missing: Option<missing::Missing>,
    /// Keys served lately, answered again without the store.
    served: served::Served,
}

/// What became of a key request, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Served,
    Fetched,
    FetchUnavailable,
    BadRequest,
    NoToken,
    Refused(token::TokenError),
    Unknown,
    Limited,
    StoreDown,
    Preflight,
    Method,
}

impl Outcome {
    /// The `outcome` label: a fixed set.
    fn label(self) -> &'static str {
        match self {
            Outcome::Served => "served",
            Outcome::Fetched => "fetched",
            Outcome::FetchUnavailable => "fetch_unavailable",
            Outcome::BadRequest => "bad_request",
            Outcome::NoToken => "no_token",
            Outcome::Refused(e) => e.label(),
            Outcome::Unknown => "unknown_pair",
            Outcome::Limited => "rate_limited",
            Outcome::StoreDown => "store_unavailable",
            Outcome::Preflight => "preflight",
            Outcome::Method => "method_not_allowed",
        }
    }
}

impl KeyServer {
    /// A key server over `store` with `config`; `secrets` are the token secrets (the first
    /// signs; unused with `auth = "none"`); `missing` fetches the keys not stored yet.
    pub fn new(
        config: KeyserverConfig,
        store: Store,
        secrets: Vec<Vec<u8>>,
        missing: Option<missing::Missing>,
    ) -> KeyServer {
        let verifier = (config.auth != KeyAuth::None).then(|| ArcSwap::from_pointee(Verifier::new(secrets)));
        let limiter = NonZeroU32::new(config.rate_per_client)
            .map(|rate| DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(rate)));
        let cache_control = HeaderValue::from_str(&format!("private, max-age={}", config.max_age.as_secs()))
            .expect("a number is a valid header value");
        let metrics = metrics::KeyMetrics::default();
        let served = served::Served::default();
        KeyServer {
            inner: Arc::new(Inner { config, store, verifier, limiter, cache_control, metrics, missing, served }),
        }
    }

    /// Replaces the token secrets (SIGHUP): tokens of a secret no longer listed are refused
    /// from the next request on. Nothing changes with `auth = "none"`.
    pub fn set_secrets(&self, secrets: Vec<Vec<u8>>) {
        if let Some(verifier) = &self.inner.verifier {
            verifier.store(Arc::new(Verifier::new(secrets)));
        }
    }

    /// Serves `/metrics` on `listener` until `shutdown` (`keyserver.metrics_listen`).
    pub async fn serve_metrics(self, listener: TcpListener, shutdown: CancellationToken) {
        serve_with(listener, metrics::LIMITS, None, shutdown, "Key server metrics", move |req, _peer| {
            let server = self.clone();
            async move {
                if req.uri().path() == "/metrics" {
                    if let Some(missing) = &server.inner.missing {
                        server.inner.metrics.refused.set(missing.refused_len() as i64);
                    }
                    crate::http::response(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        server.inner.metrics.encode(),
                    )
                } else {
                    plain(StatusCode::NOT_FOUND, "try /metrics\n")
                }
            }
        })
        .await
    }

    /// Serves on `listener` until `shutdown`, over TLS with `tls`.
    pub async fn serve(self, listener: TcpListener, tls: Option<crate::http::Tls>, shutdown: CancellationToken) {
        let limits = Limits {
            max_connections: self.inner.config.max_connections,
            header_read_timeout: self.inner.config.header_read_timeout,
            max_header_bytes: MAX_HEADER_BYTES,
        };
        if self.inner.limiter.is_some() {
            // The limiter keeps a cell per client address: forget the quiet ones.
            let server = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {
                            if let Some(limiter) = &server.inner.limiter {
                                limiter.retain_recent();
                                limiter.shrink_to_fit();
                            }
                        }
                    }
                }
            });
        }
        serve_with(listener, limits, tls, shutdown, "Key server", move |req, peer| {
            let server = self.clone();
            async move { server.answer(req, peer).await }
        })
        .await
    }

    async fn answer(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if path == "/healthz" {
            return match self.inner.store.key_for(String::new(), String::new()).await {
                Ok(_) => plain(StatusCode::OK, "ok\n"),
                Err(e) => {
                    tracing::warn!(error = %e, "Key server health check: the store does not answer.");
                    plain(StatusCode::SERVICE_UNAVAILABLE, "unhealthy: the store does not answer\n")
                }
            };
        }
        if path != self.inner.config.path {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        }
        let started = std::time::Instant::now();
        let origin = req.headers().get(header::ORIGIN).filter(|o| self.allowed(o)).cloned();
        let (outcome, mut response) = match *req.method() {
            Method::OPTIONS => (Outcome::Preflight, preflight(origin.is_some())),
            Method::GET | Method::HEAD => {
                let client = self.client(&req, peer);
                let cookie = self.cookie(&req);
                let (outcome, response) = self.key(req.uri().query().unwrap_or(""), cookie, client).await;
                if outcome != Outcome::Served {
                    tracing::debug!(?outcome, status = response.status().as_u16(), "Key request refused.");
                }
                (outcome, response)
            }
            _ => {
                let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD or OPTIONS\n");
                r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
                (Outcome::Method, r)
            }
        };
        self.inner.metrics.record(outcome.label(), started.elapsed());
        let headers = response.headers_mut();
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            if self.inner.config.auth == KeyAuth::Cookie {
                // The page's request carries the cookie (`withCredentials`).
                headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            }
        }
        response
    }

    fn allowed(&self, origin: &HeaderValue) -> bool {
        let origin = origin.as_bytes();
        self.inner.config.allow_origins.iter().any(|o| o.as_bytes() == origin)
    }

    /// The client the rate limit counts: the peer, or behind a trusted proxy the address
    /// it appended last to `X-Forwarded-For`.
    fn client(&self, req: &Request<Incoming>, peer: SocketAddr) -> IpAddr {
        if self.inner.config.trust_proxy {
            let forwarded = req
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .last()
                .and_then(|a| a.trim().parse().ok());
            if let Some(ip) = forwarded {
                return ip;
            }
        }
        peer.ip()
    }

    /// With `auth = "cookie"`, the token in the cookie `keyserver.cookie`.
    fn cookie(&self, req: &Request<Incoming>) -> Option<String> {
        if self.inner.config.auth != KeyAuth::Cookie {
            return None;
        }
        let name = self.inner.config.cookie.as_str();
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.trim_matches('"').to_string())
            .filter(|v| !v.is_empty())
    }

    async fn key(&self, query: &str, cookie: Option<String>, client: IpAddr) -> (Outcome, Response<Full<Bytes>>) {
        if let Some(limiter) = &self.inner.limiter {
            if limiter.check_key(&client).is_err() {
                let mut r = plain(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return (Outcome::Limited, r);
            }
        }
        let request = match KeyRequest::parse(query) {
            Ok(r) => r,
            Err(message) => return (Outcome::BadRequest, plain(StatusCode::BAD_REQUEST, message)),
        };
        if let Some(verifier) = &self.inner.verifier {
            let token = match self.inner.config.auth {
                KeyAuth::Cookie => cookie.as_ref(),
                _ => request.token.as_ref(),
            };
            let Some(token) = token else {
                return (Outcome::NoToken, plain(StatusCode::UNAUTHORIZED, "a token is required\n"));
            };
            let now = chrono::Utc::now().timestamp();
            if let Err(e) = verifier.load().verify(token, &request.file_id, now) {
                tracing::debug!(file_id = ?request.file_id, reason = e.label(), "Key request with a refused token.");
                return (Outcome::Refused(e), plain(StatusCode::FORBIDDEN, "the token does not open this file\n"));
            }
        }
        let stored = self.stored_key(&request.file_id, &request.edk).await;
        let (outcome, stored) = match (stored, &self.inner.missing) {
            (Ok(None), Some(missing)) => match missing.find(&request.file_id, &request.edk).await {
                missing::Found::Key(dk) => (Outcome::Fetched, Ok(Some(dk))),
                missing::Found::Unknown => (Outcome::Unknown, Ok(None)),
                missing::Found::Unavailable => return (Outcome::FetchUnavailable, fetch_unavailable()),
            },
            (stored, _) => (Outcome::Served, stored),
        };
        match stored {
            Ok(Some(dk)) if dk.len() == 16 => {
                let mut r = Response::new(Full::new(Bytes::from(dk)));
                let headers = r.headers_mut();
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                headers.insert(header::CACHE_CONTROL, self.inner.cache_control.clone());
                (outcome, r)
            }
            Ok(Some(_)) => {
                tracing::error!(file_id = ?request.file_id, edk = ?short(&request.edk), "The stored data key is not 16 bytes; not served.");
                (Outcome::StoreDown, unavailable())
            }
            Ok(None) => {
                tracing::debug!(file_id = ?request.file_id, edk = ?short(&request.edk), "No key stored for this file and EDK.");
                (Outcome::Unknown, plain(StatusCode::NOT_FOUND, "no key for this file and EDK\n"))
            }
            Err(e) => {
                tracing::warn!(error = %e, "Key server: the store does not answer.");
                (Outcome::StoreDown, unavailable())
            }
        }
    }
}

impl KeyServer {
    /// The key the store ties to `file_id` and `edk`, from memory when it was served lately.
    async fn stored_key(&self, file_id: &str, edk: &str) -> Result<Option<Vec<u8>>, crate::store::StoreError> {
        if let Some(dk) = self.inner.served.get(file_id, edk) {
            return Ok(Some(dk.to_vec()));
        }
        let stored = self.inner.store.key_for(file_id.to_string(), edk.to_string()).await;
        if let Ok(Some(dk)) = &stored {
            if let Ok(dk) = <[u8; 16]>::try_from(dk.as_slice()) {
                self.inner.served.insert(file_id, edk, dk);
            }
        }
        stored
    }
}

/// A key request's query: `fileId`, `keySource`, `edk` and, with tokens, `token`, each
/// once, nothing else. Values are percent-decoded, and a `+` stays a `+`: EDKs are
/// base64, and a key URI may carry them unescaped.
#[derive(Debug, PartialEq)]
struct KeyRequest {
    file_id: String,
    edk: String,
    token: Option<String>,
}

impl KeyRequest {
    fn parse(query: &str) -> Result<KeyRequest, &'static str> {
        let (mut file_id, mut key_source, mut edk, mut token) = (None, None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| "a query value is not UTF-8\n")?;
            let slot = match name {
                "fileId" => &mut file_id,
                "keySource" => &mut key_source,
                "edk" => &mut edk,
                "token" => &mut token,
                _ => return Err("unknown query parameter; expected fileId, keySource, edk and token\n"),
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err("a query parameter is given twice\n");
            }
        }
        match (file_id, key_source, edk) {
            (Some(file_id), Some(_), Some(edk)) if !file_id.is_empty() && !edk.is_empty() => {
                Ok(KeyRequest { file_id, edk, token: token.filter(|t| !t.is_empty()) })
            }
            _ => Err("fileId, keySource and edk are required\n"),
        }
    }
}

/// The start of an EDK, for a log line.
fn short(edk: &str) -> String {
    edk.chars().take(8).collect::<String>() + "…"
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = crate::http::response(status, "text/plain; charset=utf-8", body.to_string());
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn unavailable() -> Response<Full<Bytes>> {
    let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "the key store does not answer; try again\n");
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

fn fetch_unavailable() -> Response<Full<Bytes>> {
    let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "the key could not be fetched now; try again\n");
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
    r
}

fn preflight(allowed: bool) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    if allowed {
        let headers = r.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD"));
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(PREFLIGHT_MAX_AGE));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_exactly_the_key_uri_s() {
        let ok = KeyRequest::parse("fileId=f1&keySource=VodBuildInKMS&edk=ab%2Bc%3D%3D&token=T").unwrap();
        assert_eq!(ok, KeyRequest { file_id: "f1".into(), edk: "ab+c==".into(), token: Some("T".into()) });
        let raw = KeyRequest::parse("fileId=f1&keySource=VodBuildInKMS&edk=ab+c/d==").unwrap();
        assert_eq!(raw.edk, "ab+c/d==", "an unescaped base64 EDK is taken as it is");
        assert_eq!(KeyRequest::parse("fileId=f1&keySource=K&edk=e").unwrap().token, None);
        assert_eq!(KeyRequest::parse("fileId=f1&keySource=K&edk=e&token=").unwrap().token, None);
        for bad in [
            "",
            "fileId=f1&edk=e",
            "fileId=&keySource=K&edk=e",
            "fileId=f1&keySource=K&edk=e&x=1",
            "fileId=f1&fileId=f2&keySource=K&edk=e",
            "fileId=f1&keySource=K&edk=e&token=a&token=b",
        ] {
            assert!(KeyRequest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_edk_is_logged_by_its_start_only() {
        assert_eq!(short("ABCDEFGHIJKLMNOP"), "ABCDEFGH…");
    }
}
