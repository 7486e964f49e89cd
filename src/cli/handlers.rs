//! `vod-eventd handlers list`: each handler's state and backlog from the store (safe while
//! the daemon runs): the configured handlers, and any other that still has deliveries.

use std::io::Write as _;
use std::path::Path;

use clap::{Args, Subcommand};

use super::events::rfc3339;
use crate::config::Config;
use crate::store::HandlerOverview;

/// `handlers` subcommands.
#[derive(Debug, Subcommand)]
pub enum HandlersCommand {
    /// One line per handler: state, pending, in flight, dead, last success, last error.
    List(ListArgs),
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
        }
        Ok(())
    }
}

fn write_table(out: &mut impl std::io::Write, lines: &[HandlerOverview]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<16}  {:<14}  {:>8}  {:>9}  {:>8}  {:<24}  {:<24}  LAST ERROR",
        "HANDLER", "STATE", "PENDING", "IN FLIGHT", "DEAD", "LAST SUCCESS (UTC)", "LAST ERROR AT (UTC)"
    )?;
    for l in lines {
        let state = if l.configured { l.state.clone() } else { format!("{} (removed)", l.state) };
        let time = |t: Option<i64>| t.map_or_else(|| "-".to_string(), rfc3339);
        writeln!(
            out,
            "{:<16}  {:<14}  {:>8}  {:>9}  {:>8}  {:<24}  {:<24}  {}",
            l.handler,
            state,
            l.pending,
            l.running,
            l.dead,
            time(l.last_success_at),
            time(l.last_error_at),
            l.last_error.as_deref().map_or("-".into(), |e| e.replace('\n', " "))
        )?;
    }
    if lines.is_empty() {
        writeln!(out, "(no handlers: none is configured and no delivery is stored)")?;
    }
    Ok(())
}
