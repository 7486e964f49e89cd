//! `[node]`: this daemon's name among several sharing one PostgreSQL store.

use serde::{Deserialize, Serialize};

/// `[node]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This daemon's name on a shared store (default: the host name). Each daemon sharing
    /// one PostgreSQL store needs its own: at start a daemon returns to pending the
    /// deliveries that earlier runs under its name left running.
    pub name: Option<String>,
}

impl NodeConfig {
    /// `node.name`, else the host name, else `vod-eventd`.
    pub fn name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String =
            host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')).collect();
        if host.is_empty() {
            "vod-eventd".into()
        } else {
            host
        }
    }
}

impl NodeConfig {
    /// The problems of `[node]`.
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if let Some(name) = &self.name {
            let ok = (1..=64).contains(&name.len())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                bad("node.name", format!("`{name}` must be 1 to 64 letters, digits, `.`, `_` or `-`"));
            }
        }
    }
}
