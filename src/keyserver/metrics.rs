//! The key server's metrics: requests by outcome (a fixed set of labels, never an id) and
//! their latency, served on `keyserver.metrics_listen`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::http::Limits;

/// The metrics listener's limits: a scraper or two.
pub(super) const LIMITS: Limits =
    Limits { max_connections: 16, header_read_timeout: Duration::from_secs(10), max_header_bytes: 16 * 1024 };

/// `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// Requests and latency.
pub(super) struct KeyMetrics {
    requests: Family<OutcomeLabel, Counter>,
    seconds: Histogram,
    /// Pairs remembered as refused by Tencent (the bounded negative cache).
    pub(super) refused: Gauge,
    registry: Registry,
}

impl Default for KeyMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vod_eventd_keyserver");
        // 50 µs to about 1.6 s.
        let m = KeyMetrics {
            requests: Family::default(),
            seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            refused: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Key requests answered, by outcome", m.requests.clone());
        registry.register("request_seconds", "Time to answer a key request", m.seconds.clone());
        registry.register(
            "refused_pairs",
            "Pairs (file, EDK) remembered as refused by Tencent, at most keyserver.refused_max",
            m.refused.clone(),
        );
        KeyMetrics { registry, ..m }
    }
}

impl KeyMetrics {
    pub(super) fn record(&self, outcome: &'static str, took: Duration) {
        self.requests.get_or_create(&OutcomeLabel { outcome: outcome.to_string() }).inc();
        self.seconds.observe(took.as_secs_f64());
    }

    pub(super) fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
