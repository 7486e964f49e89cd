//! `[metrics]`, `[health]` and `[alert]`: the listener, what counts as healthy, and the
//! data-at-risk alarms.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` (Prometheus text) and `/healthz` here, e.g. `127.0.0.1:9464`.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[health]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Unhealthy (`/healthz` 503, no systemd watchdog ping) once the last successful pull
    /// is older than this. A long poll takes at most about 10 s.
    #[serde(with = "humantime_serde")]
    pub max_pull_age: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { max_pull_age: Duration::from_secs(60) }
    }
}

/// `[alert]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// Log at ERROR (and say so in STATUS=) while the last successful pull is older than
    /// this: Tencent keeps unpulled events for 4 days only.
    #[serde(with = "humantime_serde")]
    pub pull_stale_after: Duration,
    /// How often the alarms (stale pulls, growing dead deliveries) are checked.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig { pull_stale_after: Duration::from_secs(3600), check_interval: Duration::from_secs(60) }
    }
}
