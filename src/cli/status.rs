//! `vod-eventd status`: the pipeline's state as the store knows it — the daemon's last
//! heartbeat and pull, events by type over 24 h, pending, dead and orphaned deliveries per
//! handler, the oldest pending delivery, and the store's size. Works whether or not the daemon runs.

use std::io::Write as _;
use std::path::Path;

use super::events::rfc3339;
use crate::config::Config;
use crate::store::now_ms;

/// Prints the status.
pub async fn run(config: &Config, config_path: &Path) -> anyhow::Result<()> {
    let store = super::open_store(config, config_path)?;
    let state = store.state()?;
    let now = now_ms();
    let ago = |key: &str| -> String {
        match state.get(key).and_then(|v| v.parse::<i64>().ok()).filter(|&ms| ms > 0) {
            Some(ms) => format!("{} ({}s ago)", rfc3339(ms), (now - ms) / 1000),
            None => "never".into(),
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "store:         {} ({:.1} MiB)", store.path().display(), store.size_on_disk() as f64 / 1048576.0)?;
    writeln!(
        out,
        "daemon:        pid {} version {}, last heartbeat {}",
        state.get("pid").map_or("-", |s| s),
        state.get("version").map_or("-", |s| s),
        ago("heartbeat_ms")
    )?;
    writeln!(out, "last pull ok:  {}", ago("last_pull_ok_ms"))?;
    if let Some(event_config) = state.get("event_config") {
        writeln!(out, "event config:  {event_config}")?;
    }
    if let Some(status) = state.get("status") {
        writeln!(out, "last status:   {status}")?;
    }
    writeln!(out, "events (24 h):")?;
    let by_type = store.events_by_type_since(now - 86_400_000)?;
    if by_type.is_empty() {
        writeln!(out, "  (none)")?;
    }
    for (event_type, n) in by_type {
        writeln!(out, "  {event_type:<36} {n}")?;
    }
    writeln!(out, "deliveries:")?;
    let counts = store.handler_counts().await?;
    if counts.is_empty() {
        writeln!(out, "  (nothing pending or dead)")?;
    }
    for (handler, c) in counts {
        let oldest =
            c.oldest_pending_ms.map(|ms| format!(", oldest pending since {}", rfc3339(ms))).unwrap_or_default();
        writeln!(out, "  {handler:<16} {} pending, {} dead{oldest}", c.pending, c.dead)?;
        if let Some(reason) = c.orphaned_reason.filter(|_| c.orphaned > 0) {
            writeln!(out, "  {:<16} {} orphaned: {reason}", "", c.orphaned)?;
        }
    }
    Ok(())
}
