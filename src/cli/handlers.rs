//! `vod-eventd handlers list`: each handler's state and backlog from the store (safe while
//! the daemon runs): the configured handlers, and any other that still has deliveries.
//! `handlers pause` and `handlers resume` write the pause to the store, where every daemon
//! sharing it sees it within `dispatch.poll_interval`.

use std::io::Write as _;
use std::path::Path;

use clap::{Args, Subcommand};

use super::time::rfc3339;
use crate::config::Config;
use crate::store::HandlerOverview;

/// `handlers` subcommands.
#[derive(Debug, Subcommand)]
pub enum HandlersCommand {
    /// One line per handler: state, pending, in flight, dead, last success, last error.
    List(ListArgs),
    /// Stop attempting a handler's deliveries until `handlers resume`; nothing is dropped,
    /// and time paused does not count toward `dispatch.max_age`.
    Pause(PauseArgs),
    /// Attempt a paused handler's deliveries again (after a pause by hand or by its breaker).
    Resume(ResumeArgs),
}

/// `handlers pause` options.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// The handler.
    pub name: String,
    /// Why, shown by `handlers list`.
    #[arg(long)]
    pub reason: Option<String>,
}

/// `handlers resume` options.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The handler.
    pub name: String,
}

/// `handlers list` options.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl HandlersCommand {
    /// Runs the subcommand.
    pub fn run(self, config: &Config, config_path: &Path) -> anyhow::Result<()> {
        let store = super::open_store(config, config_path)?;
        let mut out = std::io::stdout().lock();
        match self {
            HandlersCommand::List(args) => {
                let configured: Vec<String> = config.handlers.keys().cloned().collect();
                let lines = store.handler_overview(&configured)?;
                if args.json {
                    for line in &lines {
                        writeln!(out, "{}", serde_json::to_string(line)?)?;
                    }
                } else {
                    write_table(&mut out, &lines)?;
                }
            }
            HandlersCommand::Pause(args) => {
                known(config, &args.name)?;
                let name = &args.name;
                match store.pause_handler(name, args.reason.as_deref())?.as_deref() {
                    None => writeln!(out, "Paused handler {name}: its deliveries wait, and running daemons start none within a second. Resume with `vod-eventd handlers resume {name}`.")?,
                    Some("breaker") => writeln!(out, "Handler {name} was paused by its breaker; it is now paused by hand, without probes, until `vod-eventd handlers resume {name}`.")?,
                    Some(_) => writeln!(out, "Handler {name} was paused already; it stays paused (reason updated).")?,
                }
            }
            HandlersCommand::Resume(args) => {
                known(config, &args.name)?;
                match store.resume_handler(&args.name)? {
                    Some(ms) => writeln!(
                        out,
                        "Resumed handler {} after {}; the time paused does not count toward dispatch.max_age.",
                        args.name,
                        humantime::format_duration(std::time::Duration::from_secs((ms / 1000) as u64))
                    )?,
                    None => writeln!(out, "Handler {} was not paused; nothing changed.", args.name)?,
                }
            }
        }
        Ok(())
    }
}

/// Refuses a handler name the config does not define.
fn known(config: &Config, name: &str) -> anyhow::Result<()> {
    if config.handlers.contains_key(name) {
        return Ok(());
    }
    let names: Vec<&str> = config.handlers.keys().map(String::as_str).collect();
    anyhow::bail!(
        "no handler named `{name}` in the config; configured: {}",
        if names.is_empty() { "none".to_string() } else { names.join(", ") }
    )
}

fn write_table(out: &mut impl std::io::Write, lines: &[HandlerOverview]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<16}  {:<18}  {:>8}  {:>9}  {:>8}  {:<24}  {:<24}  LAST ERROR",
        "HANDLER", "STATE", "PENDING", "IN FLIGHT", "DEAD", "LAST SUCCESS (UTC)", "LAST ERROR AT (UTC)"
    )?;
    for l in lines {
        let mut state = match &l.paused_by {
            Some(by) => format!("paused ({by})"),
            None => l.state.clone(),
        };
        if !l.configured {
            state.push_str(" (removed)");
        }
        let time = |t: Option<i64>| t.map_or_else(|| "-".to_string(), rfc3339);
        writeln!(
            out,
            "{:<16}  {:<18}  {:>8}  {:>9}  {:>8}  {:<24}  {:<24}  {}",
            super::text::escape(&l.handler),
            state,
            l.pending,
            l.running,
            l.dead,
            time(l.last_success_at),
            time(l.last_error_at),
            super::text::escape(l.last_error.as_deref().unwrap_or("-"))
        )?;
        if let Some(at) = l.paused_at {
            let reason = super::text::escape(l.reason.as_deref().unwrap_or("no reason given"));
            writeln!(out, "{:<16}  paused since {} UTC: {reason}", "", rfc3339(at))?;
        }
    }
    if lines.is_empty() {
        writeln!(out, "(no handlers: none is configured and no delivery is stored)")?;
    }
    Ok(())
}
