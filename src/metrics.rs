//! What the pipeline did, as Prometheus metrics (`prometheus-client`): counters the tasks
//! bump as they work, and gauges filled from the store when `/metrics` is scraped. The
//! demo, the STATUS= line and the logs read the same counters, so there is one source.
//! Labels are event types, source names, handler names and error codes: bounded sets,
//! never ids. Pull and confirm metrics carry the `source` label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `event_type` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// The event type.
    pub event_type: String,
}

/// `source` and `code` labels (a v2 code, `http_500`, `timeout`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The source's name.
    pub source: String,
    /// The error code.
    pub code: String,
}

/// `source` label: a configured source's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// The source's name.
    pub source: String,
}

/// `handler` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabel {
    /// The handler name.
    pub handler: String,
}

/// `route` label: `routes[i]`, a route's place in the config.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The route.
    pub route: String,
}

/// `handler` and `outcome` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The handler name.
    pub handler: String,
    /// `done`, `retry` or `dead`.
    pub outcome: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// All metrics.
pub struct Metrics {
    registry: Registry,
    /// Events received (redeliveries included), by type.
    pub events_received: Family<TypeLabel, Counter>,
    /// Events that were already stored, by type.
    pub events_duplicate: Family<TypeLabel, Counter>,
    /// PullEvent calls that succeeded, by source.
    pub pulls: Family<SourceLabel, Counter>,
    /// PullEvent failures by code.
    pub pull_errors: Family<CodeLabel, Counter>,
    /// ConfirmEvent calls that succeeded, by source.
    pub confirm_batches: Family<SourceLabel, Counter>,
    /// ConfirmEvent failures by code.
    pub confirm_failures: Family<CodeLabel, Counter>,
    /// Handles confirmed, by source.
    pub handles_confirmed: Family<SourceLabel, Counter>,
    /// Handles dropped because their confirm window passed (the event is redelivered), by source.
    pub handles_expired: Family<SourceLabel, Counter>,
    /// Seconds from a pull's answer to the confirm of its handles.
    pub pull_to_confirm_seconds: Histogram,
    /// Store commits that failed.
    pub store_failures: Counter,
    /// Attempt outcomes that made a delivery dead (not exported: it tells the alert task
    /// when to look for dead deliveries).
    pub dead_outcomes: Counter,
    /// Events for which a route's `when` filter could not be evaluated, by route.
    pub route_filter_errors: Family<RouteLabel, Counter>,
    /// Handler attempts by outcome.
    pub deliveries: Family<OutcomeLabel, Counter>,
    /// Handler attempt duration, by handler.
    pub handler_seconds: Family<HandlerLabel, Histogram>,
    /// Pending deliveries per handler (set at scrape).
    pub deliveries_pending: Family<HandlerLabel, Gauge>,
    /// Dead deliveries per handler (set at scrape).
    pub deliveries_dead: Family<HandlerLabel, Gauge>,
    /// Deliveries waiting for a handler that is no longer configured (set at scrape).
    pub deliveries_orphaned: Family<HandlerLabel, Gauge>,
    /// Unix time of the last successful pull, by source.
    pub last_pull_success: Family<SourceLabel, Gauge>,
    /// Store file size in bytes, WAL included (set at scrape).
    pub store_bytes: Gauge,
    /// All events received (for STATUS= and the demo; Prometheus gets the per-type family).
    pub received_total: Counter,
    /// All duplicates received (likewise).
    pub duplicates_total: Counter,
    /// All handles confirmed (likewise).
    pub confirmed_total: Counter,
    /// Health flags.
    pub health: crate::health::Health,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vod_eventd");
        let m = Metrics {
            events_received: Family::default(),
            events_duplicate: Family::default(),
            pulls: Family::default(),
            pull_errors: Family::default(),
            confirm_batches: Family::default(),
            confirm_failures: Family::default(),
            handles_confirmed: Family::default(),
            handles_expired: Family::default(),
            pull_to_confirm_seconds: latency_histogram(),
            store_failures: Counter::default(),
            dead_outcomes: Counter::default(),
            route_filter_errors: Family::default(),
            deliveries: Family::default(),
            handler_seconds: Family::new_with_constructor(latency_histogram),
            deliveries_pending: Family::default(),
            deliveries_dead: Family::default(),
            deliveries_orphaned: Family::default(),
            last_pull_success: Family::default(),
            store_bytes: Gauge::default(),
            received_total: Counter::default(),
            duplicates_total: Counter::default(),
            confirmed_total: Counter::default(),
            health: crate::health::Health::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events_received",
            "Events received from PullEvent, redeliveries included",
            m.events_received.clone(),
        );
        registry.register("events_duplicate", "Events received that were already stored", m.events_duplicate.clone());
        registry.register(
            "build",
            "The running build: version and git commit",
            prometheus_client::metrics::info::Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("VOD_BUILD_COMMIT")),
            ]),
        );
        registry.register("pulls", "PullEvent calls that succeeded", m.pulls.clone());
        registry.register("pull_errors", "PullEvent calls that failed, by code", m.pull_errors.clone());
        registry.register("confirm_batches", "ConfirmEvent calls that succeeded", m.confirm_batches.clone());
        registry.register("confirm_failures", "ConfirmEvent calls that failed, by code", m.confirm_failures.clone());
        registry.register("handles_confirmed", "Handles confirmed", m.handles_confirmed.clone());
        registry.register(
            "handles_expired",
            "Handles dropped after their confirm window (event redelivered)",
            m.handles_expired.clone(),
        );
        registry.register(
            "pull_to_confirm_seconds",
            "Time from a PullEvent answer to the confirm of its handles",
            m.pull_to_confirm_seconds.clone(),
        );
        registry.register("store_failures", "Store commits that failed", m.store_failures.clone());
        registry.register(
            "route_filter_errors",
            "Events for which a route's `when` filter could not be evaluated (the route did not take them)",
            m.route_filter_errors.clone(),
        );
        registry.register("deliveries", "Handler attempts by handler and outcome", m.deliveries.clone());
        registry.register("handler_seconds", "Handler attempt duration", m.handler_seconds.clone());
        registry.register("deliveries_pending", "Pending deliveries per handler", m.deliveries_pending.clone());
        registry.register("deliveries_dead", "Dead deliveries per handler", m.deliveries_dead.clone());
        registry.register(
            "deliveries_orphaned",
            "Deliveries waiting for a handler that is no longer configured",
            m.deliveries_orphaned.clone(),
        );
        registry.register(
            "last_pull_success_timestamp_seconds",
            "Unix time of the last successful PullEvent",
            m.last_pull_success.clone(),
        );
        registry.register("store_bytes", "Store size on disk, WAL included", m.store_bytes.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts a received event.
    pub fn event(&self, event_type: &str, new: bool) {
        let label = TypeLabel { event_type: event_type.to_string() };
        self.events_received.get_or_create(&label).inc();
        self.received_total.inc();
        if !new {
            self.events_duplicate.get_or_create(&label).inc();
            self.duplicates_total.inc();
        }
    }

    /// Counts an API failure of `source` under `family`.
    pub fn error(family: &Family<CodeLabel, Counter>, source: &str, code: String) {
        family.get_or_create(&CodeLabel { source: source.to_string(), code }).inc();
    }

    /// Counts handles of `source` confirmed.
    pub fn confirmed(&self, source: &str, n: u64) {
        self.confirm_batches.get_or_create(&SourceLabel { source: source.to_string() }).inc();
        self.handles_confirmed.get_or_create(&SourceLabel { source: source.to_string() }).inc_by(n);
        self.confirmed_total.inc_by(n);
    }

    /// Counts handles of `source` dropped after their window.
    pub fn expired(&self, source: &str, n: u64) {
        self.handles_expired.get_or_create(&SourceLabel { source: source.to_string() }).inc_by(n);
    }

    /// Counts a successful pull of `source`.
    pub fn pulled(&self, source: &str) {
        let label = SourceLabel { source: source.to_string() };
        self.pulls.get_or_create(&label).inc();
        self.last_pull_success.get_or_create(&label).set(crate::store::now_ms() / 1000);
    }

    /// Counts an event whose `route` filter could not be evaluated.
    pub fn route_filter_error(&self, route: String) {
        self.route_filter_errors.get_or_create(&RouteLabel { route }).inc();
    }

    /// Counts a handler attempt.
    pub fn attempt(&self, handler: &str, outcome: &str, seconds: f64) {
        self.deliveries.get_or_create(&OutcomeLabel { handler: handler.into(), outcome: outcome.into() }).inc();
        self.handler_seconds.get_or_create(&HandlerLabel { handler: handler.into() }).observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
