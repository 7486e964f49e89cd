//! `[shutdown]`: how long the drain may take.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long in-flight handler attempts may take to finish after SIGTERM before they
    /// are stopped and put back to pending. Keep it below systemd's TimeoutStopSec.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { drain_timeout: Duration::from_secs(20) }
    }
}
