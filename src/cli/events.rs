//! `vod-eventd events list|show`: the event history, read straight from the store (WAL
//! lets this run beside the daemon). Human tables by default, one JSON object per line
//! with `--json`.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::value::RawValue;

use super::time::{parse_time, rfc3339};
use crate::config::Config;
use crate::store::{EventFilter, EventRow, Store};

/// `events` subcommands.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List stored events, newest first.
    List(ListArgs),
    /// Show one stored event in full, with its deliveries and their attempts.
    Show(ShowArgs),
    /// Delete old events (with their deliveries and attempts) whose deliveries are all
    /// done; `--dead` also lets dead deliveries go. Pending deliveries always keep an event.
    Purge(PurgeArgs),
    /// Deliver a stored event again (with the same webhook-id) to one handler or to every
    /// handler it went to before; or, with --since and --until, every event received in a
    /// time range to one handler, in batches (an interrupted run resumes when run again with
    /// the same arguments). The running daemon picks them up within a second.
    Replay(ReplayArgs),
}

/// `events purge` options.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Only events received longer ago than this (`30d`, `12h`).
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    pub older_than: std::time::Duration,
    /// Also purge events whose deliveries are dead.
    #[arg(long)]
    pub dead: bool,
}

/// `events replay` options.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The event id (or a range with --since and --until).
    #[arg(required_unless_present = "since", conflicts_with = "since")]
    pub id: Option<i64>,
    /// Only this handler (default: every handler the event was delivered to; required
    /// with a range).
    #[arg(long, value_name = "NAME")]
    pub handler: Option<String>,
    /// Events received at or after this time: `2h` (ago), `now` or RFC 3339.
    #[arg(long, value_name = "WHEN", requires_all = ["until", "handler"])]
    pub since: Option<String>,
    /// Events received before this time: `now`, `30m` (ago) or RFC 3339.
    #[arg(long, value_name = "WHEN", requires = "since")]
    pub until: Option<String>,
    /// Only this event type.
    #[arg(long = "type", value_name = "T", requires = "since")]
    pub event_type: Option<String>,
    /// Only events about this file id.
    #[arg(long, value_name = "ID", requires = "since")]
    pub file_id: Option<String>,
    /// Only events pulled from this source.
    #[arg(long, value_name = "NAME", requires = "since")]
    pub source: Option<String>,
    /// Count what would be replayed, and change nothing.
    #[arg(long, requires = "since")]
    pub dry_run: bool,
    /// Start over a range replay that ran (or was interrupted) with the same arguments,
    /// instead of resuming it; what it replayed before is replayed again.
    #[arg(long, requires = "since")]
    pub restart: bool,
}

/// `events list` options.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this event type (e.g. NewFileUpload).
    #[arg(long = "type", value_name = "T")]
    pub event_type: Option<String>,
    /// Only events received since this long ago (`2h`, `30m`, `7d`) or this RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only events about this file id.
    #[arg(long, value_name = "ID")]
    pub file_id: Option<String>,
    /// Only events pulled from this source (a `[[sources]]` name; `default` without them).
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// At most this many events (0: all); standard error says when there are more.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Every matching event (the same as `--limit 0`).
    #[arg(long)]
    pub all: bool,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `events show` options.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The event id (first column of `events list`).
    pub id: i64,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl EventsCommand {
    /// Runs the subcommand.
    pub fn run(self, config: &Config, config_path: &Path) -> anyhow::Result<()> {
        let store = super::open_store(config, config_path)?;
        let mut out = std::io::stdout().lock();
        match self {
            EventsCommand::List(args) => {
                let limit = super::cut::Limit { limit: args.limit, all: args.all };
                let filter = EventFilter {
                    event_type: args.event_type,
                    since_ms: args.since.as_deref().map(parse_since).transpose()?,
                    file_id: args.file_id,
                    source: args.source,
                    limit: limit.fetch(),
                };
                let mut rows = store.list_events(&filter)?;
                let cut = limit.cut(&mut rows);
                if args.json {
                    for row in &rows {
                        writeln!(out, "{}", json_line(row)?)?;
                    }
                } else {
                    write_table(&mut out, &rows)?;
                }
                out.flush()?;
                limit.say(cut, rows.len(), "events", args.json);
            }
            EventsCommand::Show(args) => {
                let row = find(&store, args.id)?;
                let deliveries = store.event_deliveries(row.id)?;
                let files = store.event_files(row.id)?;
                if args.json {
                    let mut line: serde_json::Value = serde_json::from_str(&json_line(&row)?)?;
                    line["files"] =
                        files.iter().map(|(id, role)| serde_json::json!({"file_id": id, "role": role})).collect();
                    line["deliveries"] = serde_json::to_value(
                        deliveries
                            .iter()
                            .map(|(d, a)| serde_json::json!({"delivery": d, "attempts": a}))
                            .collect::<Vec<_>>(),
                    )?;
                    writeln!(out, "{line}")?;
                } else {
                    write_details(&mut out, &row, &files)?;
                    super::deliveries::write_event_deliveries(&mut out, &deliveries)?;
                }
            }
            EventsCommand::Purge(args) => {
                let before = crate::store::now_ms() - args.older_than.as_millis() as i64;
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let n = runtime.block_on(store.prune(
                    before,
                    args.dead,
                    std::time::Duration::ZERO,
                    &tokio_util::sync::CancellationToken::new(),
                ))?;
                writeln!(out, "purged {n} events received before {}", rfc3339(before))?;
            }
            EventsCommand::Replay(args) => {
                if let Some(h) = &args.handler {
                    let known: Vec<&str> = config.handlers.keys().map(String::as_str).collect();
                    anyhow::ensure!(
                        known.contains(&h.as_str()),
                        "no handler named `{h}` in {}; configured: {}",
                        config_path.display(),
                        known.join(", ")
                    );
                }
                let Some(id) = args.id else { return replay_range(&store, args, &mut out) };
                find(&store, id)?;
                let handlers = store.replay(id, args.handler.as_deref())?;
                anyhow::ensure!(
                    !handlers.is_empty(),
                    "event {id} was never routed to a handler; name one with --handler"
                );
                writeln!(out, "event {id} scheduled for delivery to: {}", handlers.join(", "))?;
            }
        }
        Ok(())
    }
}

/// `events replay --since --until --handler`.
fn replay_range(store: &Store, args: ReplayArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let (since, until) = (args.since.unwrap_or_default(), args.until.unwrap_or_default());
    let handler = args.handler.unwrap_or_default();
    let key = serde_json::json!({
        "since": since, "until": until, "type": args.event_type, "file_id": args.file_id,
        "source": args.source, "handler": handler,
    });
    let range = crate::store::Range::Replay {
        event_type: args.event_type,
        file_id: args.file_id,
        source: args.source,
        handler: handler.clone(),
    };
    super::ranges::RangeRun {
        range,
        args: key.to_string(),
        since: &since,
        until: &until,
        dry_run: args.dry_run,
        restart: args.restart,
        verb: format!("replay to {handler}"),
        noun: "events".into(),
    }
    .run(store, out)
}

fn find(store: &Store, id: i64) -> anyhow::Result<EventRow> {
    store.get_event(id)?.with_context(|| format!("no event with id {id} in {}", store.path().display()))
}

/// `2h` (ago) or an RFC 3339 time, as Unix ms.
fn parse_since(text: &str) -> anyhow::Result<i64> {
    parse_time("--since", text)
}

/// The JSON form: the row's fields plus `content`, the eventContent object as received.
fn json_line(row: &EventRow) -> anyhow::Result<String> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        id: i64,
        event_type: &'a str,
        received_at: String,
        last_seen_at: String,
        file_id: Option<&'a str>,
        task_id: Option<&'a str>,
        times_seen: i64,
        occurrence: i64,
        version: Option<&'a str>,
        api: &'a str,
        dedupe_key: &'a str,
        source: &'a str,
        sub_app_id: Option<i64>,
        content: Box<RawValue>,
    }
    let content = RawValue::from_string(row.content.clone())
        .or_else(|_| RawValue::from_string(serde_json::to_string(&row.content)?))?;
    Ok(serde_json::to_string(&Line {
        id: row.id,
        event_type: &row.event_type,
        received_at: rfc3339(row.received_at),
        last_seen_at: rfc3339(row.last_seen_at),
        file_id: row.file_id.as_deref(),
        task_id: row.task_id.as_deref(),
        times_seen: row.times_seen,
        occurrence: row.occurrence,
        version: row.version.as_deref(),
        api: &row.api,
        dedupe_key: &row.dedupe_key,
        source: &row.source,
        sub_app_id: row.sub_app_id,
        content,
    })?)
}

use super::text::{escape, escape_lines, pad};

fn write_table(out: &mut impl std::io::Write, rows: &[EventRow]) -> std::io::Result<()> {
    let header = ["ID", "RECEIVED (UTC)", "SOURCE", "TYPE", "FILE ID", "TASK ID", "SEEN"];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                rfc3339(r.received_at),
                escape(&r.source).into_owned(),
                escape(&r.event_type).into_owned(),
                r.file_id.as_deref().map_or_else(|| "-".into(), |v| escape(v).into_owned()),
                r.task_id.as_deref().map_or_else(|| "-".into(), |v| escape(v).into_owned()),
                r.times_seen.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn std::io::Write, row: &[&str]| -> std::io::Result<()> {
        let parts: Vec<String> = row.iter().zip(widths).map(|(c, w)| pad(c, w)).collect();
        writeln!(out, "{}", parts.join("  ").trim_end())
    };
    line(out, &header)?;
    for row in &cells {
        line(out, &row.each_ref().map(String::as_str))?;
    }
    if rows.is_empty() {
        writeln!(out, "(no events match)")?;
    }
    Ok(())
}

fn write_details(out: &mut impl std::io::Write, row: &EventRow, files: &[(String, String)]) -> anyhow::Result<()> {
    let dash = |v: &Option<String>| v.as_deref().map_or_else(|| "-".into(), |v| escape(v).into_owned());
    writeln!(out, "id:           {}", row.id)?;
    writeln!(out, "event type:   {}", escape(&row.event_type))?;
    writeln!(out, "version:      {}", dash(&row.version))?;
    writeln!(out, "file id:      {}", dash(&row.file_id))?;
    if files.len() > 1 {
        let all: Vec<String> = files.iter().map(|(id, role)| format!("{} ({})", escape(id), escape(role))).collect();
        writeln!(out, "files:        {}", all.join(", "))?;
    }
    writeln!(out, "task id:      {}", dash(&row.task_id))?;
    let app = row.sub_app_id.map_or_else(|| "the default app".to_string(), |id| format!("SubAppId {id}"));
    writeln!(out, "source:       {} ({app})", escape(&row.source))?;
    writeln!(out, "received at:  {}", rfc3339(row.received_at))?;
    writeln!(out, "last seen at: {}", rfc3339(row.last_seen_at))?;
    writeln!(out, "times seen:   {}", row.times_seen)?;
    if row.occurrence > 1 {
        writeln!(
            out,
            "occurrence:   {} (the same content came again after an earlier copy was confirmed)",
            row.occurrence
        )?;
    }
    writeln!(out, "confirmed at: {}", row.confirmed_at.map_or_else(|| "-".into(), rfc3339))?;
    writeln!(out, "dedupe key:   {}", row.dedupe_key)?;
    let pretty = serde_json::from_str::<serde_json::Value>(&row.content)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| row.content.clone());
    writeln!(out, "content:\n{}", escape_lines(&pretty))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_durations_and_rfc3339() {
        let now = crate::store::now_ms();
        let two_hours = parse_since("2h").unwrap();
        assert!((now - two_hours - 7_200_000).abs() < 5_000);
        assert_eq!(parse_since("2026-11-24T08:00:00Z").unwrap(), 1_795_507_200_000);
        assert!(parse_since("yesterday").unwrap_err().to_string().contains("--since"));
    }
}
