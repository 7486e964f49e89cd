//! `[log]`: the filter and the format.

use serde::{Deserialize, Serialize};

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `vod_eventd=debug`); `RUST_LOG` overrides it.
    #[serde(skip_serializing)]
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: "text".into() }
    }
}

impl LogConfig {
    /// The problems of `[log]`.
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if !matches!(self.format.as_str(), "text" | "json") {
            bad("log.format", format!("`{}` is not text or json", self.format));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.level) {
            bad("log.level", format!("`{}` is not a valid filter: {e}", self.level));
        }
    }
}
