//! The optional metrics and health listener (`[metrics] listen`): `/metrics` in the
//! Prometheus (OpenMetrics) text format, with the store-derived gauges refreshed at each
//! scrape, and `/healthz` (200 while healthy, 503 with the reasons otherwise). Meant for
//! loopback; it serves nothing secret.
//!
//! Bounded, so that nobody who can connect can starve the daemon of descriptors: at most
//! [`MAX_CONNECTIONS`] connections are open at once, and a client has
//! [`HEADER_READ_TIMEOUT`] to send a request's headers (then its connection is closed).
//! A connection accepted while all slots are taken evicts the oldest connection that is
//! not answering a request at that moment (idle, or still sending its headers), so a
//! prompt client such as a health check gets through even while slow clients hold every
//! slot; when every slot is busy answering, the new connection is closed at once.

use std::collections::VecDeque;
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

/// Connections open at once on the listener.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

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
    let mut connections = JoinSet::new();
    let mut slots: VecDeque<Slot> = VecDeque::with_capacity(MAX_CONNECTIONS);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "Metrics listener accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        slots.retain(|slot| !slot.ended.load(Ordering::Acquire));
        if slots.len() >= MAX_CONNECTIONS {
            match slots.iter().position(|slot| !slot.busy.load(Ordering::Acquire)) {
                Some(oldest_idle) => {
                    if let Some(slot) = slots.remove(oldest_idle) {
                        slot.close.cancel();
                    }
                }
                None => {
                    tracing::debug!(max = MAX_CONNECTIONS, "Metrics listener full: connection closed.");
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
        let endpoints = endpoints.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (endpoints, busy) = (endpoints.clone(), busy.clone());
                async move {
                    busy.store(true, Ordering::Release);
                    let response = endpoints.answer(req).await;
                    busy.store(false, Ordering::Release);
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
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

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}
