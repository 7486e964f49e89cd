//! The optional metrics and health listener (`[metrics] listen`): `/metrics` in the
//! Prometheus (OpenMetrics) text format, with the store-derived gauges refreshed at each
//! scrape, and `/healthz` (200 while healthy, 503 with the reasons otherwise). Meant for
//! loopback; it serves nothing secret.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
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

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, endpoints: Endpoints, shutdown: CancellationToken) {
    let mut connections = JoinSet::new();
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
        let endpoints = endpoints.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let endpoints = endpoints.clone();
                async move { Ok::<_, std::convert::Infallible>(endpoints.answer(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
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
