//! The optional metrics and health listener (`[metrics] listen`): `/metrics` in the
//! Prometheus (OpenMetrics) text format, with the store-derived gauges refreshed at each
//! scrape, and `/healthz` (200 while healthy, 503 with the reasons otherwise). Meant for
//! loopback; it serves nothing secret. [`serve_with`] is the accept loop every listener
//! shares (this one and the key server's): a connection cap, a header read timeout and a
//! cap on the request head.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
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
    /// Connections open at once; more wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// Time to send a request line and its headers, from the first byte.
    pub header_read_timeout: Duration,
    /// The request line and headers together, at most this many bytes (431 above; hyper's
    /// floor is 8 KiB).
    pub max_header_bytes: usize,
}

/// The metrics listener's limits: a scraper or two, on loopback.
const METRICS_LIMITS: Limits =
    Limits { max_connections: 64, header_read_timeout: Duration::from_secs(10), max_header_bytes: 16 * 1024 };

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
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
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
        let answer = answer.clone();
        let tls = tls.as_ref().map(|t| t.load_full());
        connections.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let answer = answer.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(req, peer).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192));
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
