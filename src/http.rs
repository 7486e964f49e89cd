//! The optional metrics and health listener (`[metrics] listen`): `/metrics` in the
//! Prometheus (OpenMetrics) text format, with the store-derived gauges refreshed at each
//! scrape, and `/healthz` (200 while healthy, 503 with the reasons otherwise). Meant for
//! loopback; it serves nothing secret.
//!
//! [`serve_with`] is the accept loop every listener shares (this one and the key
//! server's), bounded so that nobody who can connect can starve the process of
//! descriptors: at most [`Limits::max_connections`] connections are open at once, a client
//! has [`Limits::header_read_timeout`] to send a request's line and headers (then its
//! connection is closed), and the head is capped. A connection accepted while all slots are
//! taken evicts the oldest connection that is not answering a request at that moment (idle,
//! or still sending its headers), so a prompt client such as a health check gets through
//! even while slow clients hold every slot; when every slot is busy answering, the new
//! connection is closed at once.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::dispatch::Routing;
use crate::metrics::{HandlerLabel, Metrics};
use crate::store::Store;

/// What the listener reads.
#[derive(Clone)]
pub struct Endpoints {
    /// Counters and health.
    pub metrics: Arc<Metrics>,
    /// For the gauges.
    pub store: Store,
    /// For the handler names.
    pub routing: watch::Receiver<Arc<Routing>>,
    /// `[health] max_pull_age`.
    pub max_pull_age: Duration,
}

/// What a listener allows each client: how many connections at once, how long a request's
/// line and headers may take to arrive (slowloris), how large they may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once (see the module doc for what a further one does).
    pub max_connections: usize,
    /// Time to send a request line and its headers, from the first byte.
    pub header_read_timeout: Duration,
    /// The request line and headers together, at most this many bytes (431 above; hyper's
    /// floor is 8 KiB).
    pub max_header_bytes: usize,
}

/// The metrics listener's limits: a scraper or two, on loopback.
pub const METRICS_LIMITS: Limits =
    Limits { max_connections: 64, header_read_timeout: Duration::from_secs(5), max_header_bytes: 16 * 1024 };

/// One open connection, as the accept loop sees it.
struct Slot {
    /// Closes the connection.
    close: CancellationToken,
    /// A request is being answered.
    busy: Arc<AtomicBool>,
    /// The connection has ended.
    ended: Arc<AtomicBool>,
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, endpoints: Endpoints, shutdown: CancellationToken) {
    serve_with(listener, METRICS_LIMITS, None, shutdown, "Metrics", move |req, _peer| {
        let endpoints = endpoints.clone();
        async move { endpoints.answer(req).await }
    })
    .await
}

/// A TLS server configuration that can be replaced while serving (new connections take
/// the new one).
pub type Tls = Arc<arc_swap::ArcSwap<rustls::ServerConfig>>;

/// Serves HTTP/1.1 on `listener` with `answer` until `shutdown`, under `limits`, over TLS
/// with `tls`: the one accept loop of every listener of vod-eventd (`/metrics`, the key
/// server). `name` says which in a log line. A TLS handshake has the header read timeout
/// to complete.
pub async fn serve_with<H, F>(
    listener: TcpListener,
    limits: Limits,
    tls: Option<Tls>,
    shutdown: CancellationToken,
    name: &'static str,
    answer: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let max = limits.max_connections.max(1);
    let mut connections = JoinSet::new();
    let mut slots: VecDeque<Slot> = VecDeque::with_capacity(max);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "{name} listener accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        slots.retain(|slot| !slot.ended.load(Ordering::Acquire));
        if slots.len() >= max {
            match slots.iter().position(|slot| !slot.busy.load(Ordering::Acquire)) {
                Some(oldest_idle) => {
                    if let Some(slot) = slots.remove(oldest_idle) {
                        slot.close.cancel();
                    }
                }
                None => {
                    tracing::debug!(max, "{name} listener full: connection closed.");
                    drop(stream);
                    continue;
                }
            }
        }
        let slot = Slot {
            close: CancellationToken::new(),
            busy: Arc::new(AtomicBool::new(false)),
            ended: Arc::new(AtomicBool::new(false)),
        };
        let (close, busy, ended) = (slot.close.clone(), slot.busy.clone(), slot.ended.clone());
        slots.push_back(slot);
        let answer = answer.clone();
        let tls = tls.as_ref().map(|t| t.load_full());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (answer, busy) = (answer.clone(), busy.clone());
                async move {
                    busy.store(true, Ordering::Release);
                    let response = answer(req, peer).await;
                    busy.store(false, Ordering::Release);
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192));
            let served = async {
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                    Some(config) => {
                        let handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                        if let Ok(Ok(stream)) = tokio::time::timeout(limits.header_read_timeout, handshake).await {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                }
            };
            tokio::select! {
                _ = served => {}
                _ = close.cancelled() => {}
            }
            ended.store(true, Ordering::Release);
        });
    }
    connections.abort_all();
}

impl Endpoints {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/metrics" => {
                self.refresh_gauges().await;
                response(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.metrics.encode(),
                )
            }
            "/healthz" => {
                let report = self.metrics.health.report(self.max_pull_age);
                if report.healthy() {
                    response(StatusCode::OK, "text/plain", "ok\n".into())
                } else {
                    response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        format!("unhealthy: {}\n", report.problems().join("; ")),
                    )
                }
            }
            _ => response(StatusCode::NOT_FOUND, "text/plain", "try /metrics or /healthz\n".into()),
        }
    }

    async fn refresh_gauges(&self) {
        let names: Vec<String> = self.routing.borrow().lanes.keys().cloned().collect();
        let counts = self.store.handler_counts().await.unwrap_or_default();
        for name in names.iter().chain(counts.keys()) {
            let c = counts.get(name).cloned().unwrap_or_default();
            let label = HandlerLabel { handler: name.clone() };
            self.metrics.deliveries_pending.get_or_create(&label).set(c.pending);
            self.metrics.deliveries_dead.get_or_create(&label).set(c.dead);
            self.metrics.deliveries_orphaned.get_or_create(&label).set(c.orphaned);
        }
        self.metrics.store_bytes.set(self.store.size_on_disk().await as i64);
    }
}

pub(crate) fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}
