//! `vod-eventd deliveries list|retry`: the handler outbox, read and revived from the store.

use std::io::Write as _;
use std::path::Path;

use clap::{Args, Subcommand};

use super::time::rfc3339;
use crate::config::Config;
use crate::store::{AttemptRow, DeliveryFilter, DeliveryRow};

/// `deliveries` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, most recently changed first.
    List(ListArgs),
    /// Make dead deliveries pending again (due now); or, with --state, --since and --until,
    /// the dead or done deliveries that settled in a time range, in batches (an interrupted
    /// run resumes when run again with the same arguments).
    Retry(RetryArgs),
}

/// `deliveries list` options.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this state: pending, running, done or dead.
    #[arg(long, value_parser = ["pending", "running", "done", "dead"])]
    pub state: Option<String>,
    /// Only this handler.
    #[arg(long, value_name = "NAME")]
    pub handler: Option<String>,
    /// At most this many (0: all); standard error says when there are more.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Every matching delivery (the same as `--limit 0`).
    #[arg(long)]
    pub all: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// `deliveries retry` options.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Retry every dead delivery (or a range with --state, --since and --until).
    #[arg(long, required_unless_present = "state", conflicts_with = "state")]
    pub dead: bool,
    /// Retry the deliveries in this state (dead or done) that settled in the range.
    #[arg(long, value_parser = ["dead", "done"], requires_all = ["since", "until"])]
    pub state: Option<String>,
    /// Deliveries that settled at or after this time: `2h` (ago), `now` or RFC 3339.
    #[arg(long, value_name = "WHEN", requires = "state")]
    pub since: Option<String>,
    /// Deliveries that settled before this time: `now`, `30m` (ago) or RFC 3339.
    #[arg(long, value_name = "WHEN", requires = "state")]
    pub until: Option<String>,
    /// Only this handler's.
    #[arg(long, value_name = "NAME")]
    pub handler: Option<String>,
    /// Count what would be retried, and change nothing.
    #[arg(long, requires = "state")]
    pub dry_run: bool,
    /// Start over a range retry that ran (or was interrupted) with the same arguments,
    /// instead of resuming it.
    #[arg(long, requires = "state")]
    pub restart: bool,
}

impl DeliveriesCommand {
    /// Runs the subcommand.
    pub fn run(self, config: &Config, config_path: &Path) -> anyhow::Result<()> {
        let store = super::open_store(config, config_path)?;
        let mut out = std::io::stdout().lock();
        match self {
            DeliveriesCommand::List(args) => {
                let limit = super::cut::Limit { limit: args.limit, all: args.all };
                let mut rows = store.list_deliveries(&DeliveryFilter {
                    state: args.state,
                    handler: args.handler,
                    limit: limit.fetch(),
                })?;
                let cut = limit.cut(&mut rows);
                if args.json {
                    for row in &rows {
                        writeln!(out, "{}", serde_json::to_string(row)?)?;
                    }
                } else {
                    write_table(&mut out, &rows)?;
                }
                out.flush()?;
                limit.say(cut, rows.len(), "deliveries", args.json);
            }
            DeliveriesCommand::Retry(RetryArgs {
                state: Some(state), since, until, handler, dry_run, restart, ..
            }) => {
                let (since, until) = (since.unwrap_or_default(), until.unwrap_or_default());
                let key = serde_json::json!({"state": state, "since": since, "until": until, "handler": handler});
                super::ranges::RangeRun {
                    noun: format!("{state} deliveries"),
                    range: crate::store::Range::Retry { state, handler },
                    args: key.to_string(),
                    since: &since,
                    until: &until,
                    dry_run,
                    restart,
                    verb: "retry".into(),
                }
                .run(&store, &mut out)?;
            }
            DeliveriesCommand::Retry(args) => {
                let n = store.retry_dead(args.handler.as_deref())?;
                writeln!(
                    out,
                    "{n} dead deliveries are pending again; the running daemon retries them within a second"
                )?;
            }
        }
        Ok(())
    }
}

use super::text::escape;

fn write_table(out: &mut impl std::io::Write, rows: &[DeliveryRow]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<6}  {:<6}  {:<12}  {:<8}  {:>8}  {:<24}  {:<34}  LAST ERROR",
        "ID", "EVENT", "HANDLER", "STATE", "ATTEMPTS", "NEXT ATTEMPT (UTC)", "WEBHOOK-ID"
    )?;
    for r in rows {
        let next = if r.state == "pending" { rfc3339(r.next_attempt_at) } else { "-".into() };
        let (state, error) = match (&r.orphaned_reason, r.state.as_str()) {
            (Some(reason), "pending" | "running") => ("orphaned", Some(reason.as_str())),
            _ => (r.state.as_str(), r.last_error.as_deref()),
        };
        writeln!(
            out,
            "{:<6}  {:<6}  {:<12}  {:<8}  {:>8}  {:<24}  {:<34}  {}",
            r.id,
            r.event_id,
            escape(&r.handler),
            escape(state),
            r.attempts,
            next,
            escape(&r.webhook_id),
            escape(error.unwrap_or("-"))
        )?;
    }
    if rows.is_empty() {
        writeln!(out, "(no deliveries match)")?;
    }
    Ok(())
}

/// The deliveries section of `events show`.
pub(super) fn write_event_deliveries(
    out: &mut impl std::io::Write,
    deliveries: &[(DeliveryRow, Vec<AttemptRow>)],
) -> std::io::Result<()> {
    writeln!(out, "deliveries:")?;
    if deliveries.is_empty() {
        writeln!(out, "  (none: no route matched this event type)")?;
    }
    for (d, attempts) in deliveries {
        writeln!(
            out,
            "  #{} {} [{}] webhook-id {} ({} attempts)",
            d.id,
            escape(&d.handler),
            escape(&d.state),
            escape(&d.webhook_id),
            d.attempts
        )?;
        for a in attempts {
            let status = a.status.map_or_else(|| "-".into(), |s| s.to_string());
            writeln!(
                out,
                "    attempt {} at {} took {} ms: {} (status {}){}",
                a.attempt,
                rfc3339(a.started_at),
                a.duration_ms,
                escape(&a.outcome),
                status,
                a.error.as_deref().map(|e| format!(" error: {}", escape(e))).unwrap_or_default()
            )?;
            if let Some(excerpt) = a.excerpt.as_deref().filter(|e| !e.is_empty()) {
                for line in excerpt.lines().take(6) {
                    writeln!(out, "      | {}", escape(line))?;
                }
            }
        }
    }
    Ok(())
}
