//! `vod-eventd status`: the pipeline's state as the store knows it — the daemon's last
//! heartbeat and pull, each source's pull health and event configuration, events by type
//! over 24 h, sparklines of events and of failed attempts per handler hour by hour over 24 h,
//! pending, dead and orphaned deliveries per handler, the oldest pending delivery, and the
//! store's size. Works whether or not the daemon runs; after a clean stop it says when the
//! daemon stopped and shows its final status line.

use std::io::Write as _;
use std::path::Path;

use super::sparkline::{scale, sparkline, Charset};
use super::text::{escape, pad};
use super::time::rfc3339;
use crate::account::check::state_key;
use crate::config::{Config, DEFAULT_SOURCE};
use crate::service::{health_key, last_pull_key, HostBeat, HOST_PREFIX, SOURCES_KEY};
use crate::store::{now_ms, Hourly, Store, HOURS};

/// Prints the status.
pub async fn run(config: &Config, config_path: &Path) -> anyhow::Result<()> {
    let store = super::open_store(config, config_path)?;
    let state = store.state()?;
    let now = now_ms();
    let ms = |key: &str| state.get(key).and_then(|v| v.parse::<i64>().ok()).filter(|&ms| ms > 0);
    let ago = |key: &str| -> String {
        match ms(key) {
            Some(ms) => format!("{} ({}s ago)", rfc3339(ms), (now - ms) / 1000),
            None => "never".into(),
        }
    };
    let (pid, version) = (state.get("pid").map_or("-", |s| s), state.get("version").map_or("-", |s| s));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "store:         {} ({:.1} MiB)",
        store.path().display(),
        store.size_on_disk().await as f64 / 1048576.0
    )?;
    let stopped = ms("stopped_ms").is_some();
    if stopped {
        writeln!(out, "daemon:        stopped at {} (pid {pid} version {version})", ago("stopped_ms"))?;
    } else {
        writeln!(out, "daemon:        pid {pid} version {version}, last heartbeat {}", ago("heartbeat_ms"))?;
    }
    writeln!(out, "last pull ok:  {}", ago("last_pull_ok_ms"))?;
    write_hosts(&mut out, &state, now)?;
    // The sources of the daemon's last heartbeat; a store written before sources existed
    // has only the default one.
    let sources: Vec<&str> = match state.get(SOURCES_KEY) {
        Some(list) => list.split(',').filter(|s| !s.is_empty()).collect(),
        None => vec![DEFAULT_SOURCE],
    };
    if sources == [DEFAULT_SOURCE] {
        if let Some(event_config) = state.get(&state_key(DEFAULT_SOURCE)) {
            writeln!(out, "event config:  {}", escape(event_config))?;
        }
    } else {
        writeln!(out, "sources:{}", if sources.is_empty() { "       (none)" } else { "" })?;
        for name in sources {
            let health = state.get(&health_key(name)).map_or("-", |s| s.as_str());
            writeln!(out, "  {}", escape(name))?;
            writeln!(out, "    last pull ok:  {}", ago(&last_pull_key(name)))?;
            writeln!(out, "    health:        {}", escape(health))?;
            let event_config = state.get(&state_key(name)).map_or("not read yet", |s| s.as_str());
            writeln!(out, "    event config:  {}", escape(event_config))?;
        }
    }
    if let Some(status) = state.get("status") {
        writeln!(out, "{}   {}", if stopped { "final status:" } else { "last status: " }, escape(status))?;
    }
    writeln!(out, "events (24 h):")?;
    let by_type = store.events_by_type_since(now - 86_400_000)?;
    if by_type.is_empty() {
        writeln!(out, "  (none)")?;
    }
    for (event_type, n) in by_type {
        writeln!(out, "  {} {n}", pad(&escape(&event_type), 36))?;
    }
    hour_by_hour(&mut out, &store, config, now)?;
    writeln!(out, "deliveries:")?;
    let counts = store.handler_counts().await?;
    if counts.is_empty() {
        writeln!(out, "  (nothing pending or dead)")?;
    }
    for (handler, c) in counts {
        let oldest =
            c.oldest_pending_ms.map(|ms| format!(", oldest pending since {}", rfc3339(ms))).unwrap_or_default();
        writeln!(out, "  {} {} pending, {} dead{oldest}", pad(&escape(&handler), 16), c.pending, c.dead)?;
        if let Some(reason) = c.orphaned_reason.filter(|_| c.orphaned > 0) {
            writeln!(out, "  {:<16} {} orphaned: {}", "", c.orphaned, escape(&reason))?;
        }
    }
    Ok(())
}

/// The last 24 hours as sparklines: events received, and failed attempts of every handler
/// that is configured or failed in that time.
fn hour_by_hour(out: &mut impl std::io::Write, store: &Store, config: &Config, now: i64) -> anyhow::Result<()> {
    let charset = Charset::from_locale(|name| std::env::var(name).ok());
    let line = |out: &mut dyn std::io::Write, label: &str, hourly: &Hourly| {
        writeln!(out, "  {} {}  {}", pad(&escape(label), 26), sparkline(hourly, charset), scale(hourly))
    };
    writeln!(out, "last 24 h, hour by hour (oldest left, this hour right):")?;
    line(out, "events received", &store.events_per_hour(now)?)?;
    let mut failures = store.failures_per_hour(now)?;
    for name in config.handlers.keys() {
        failures.entry(name.clone()).or_insert([0; HOURS]);
    }
    for (handler, hourly) in &failures {
        line(out, &format!("failed attempts {handler}"), hourly)?;
    }
    Ok(())
}

/// On a shared store, every host's own heartbeat: its node name, pid and version, the age
/// of its last heartbeat, and the singleton tasks it led then.
fn write_hosts(
    out: &mut impl std::io::Write,
    state: &std::collections::BTreeMap<String, String>,
    now: i64,
) -> anyhow::Result<()> {
    let hosts: Vec<(&str, HostBeat)> =
        state.iter().filter_map(|(k, v)| Some((k.strip_prefix(HOST_PREFIX)?, serde_json::from_str(v).ok()?))).collect();
    if hosts.is_empty() {
        return Ok(());
    }
    writeln!(out, "hosts:")?;
    for (node, beat) in hosts {
        let when = |ms: i64| format!("{} ({}s ago)", rfc3339(ms), (now - ms) / 1000);
        let leads = if beat.leads.is_empty() { "nothing".to_string() } else { beat.leads.join(", ") };
        let life = if beat.stopped_ms > 0 {
            format!("stopped at {}", when(beat.stopped_ms))
        } else {
            format!("last heartbeat {}, leads {leads}", when(beat.heartbeat_ms))
        };
        writeln!(out, "  {:<20} pid {} version {}, {life}", node, beat.pid, beat.version)?;
    }
    Ok(())
}
