//! `vod-eventd account show|set-mode`: the app's event configuration, read with
//! DescribeEventConfig and, only when asked and confirmed, switched to PULL mode with
//! ModifyEventConfig (API 3.0, with the configured credentials whichever API pulls).
//! The push URL and the sign key are never changed. After a change, `set-mode` asks the
//! daemons sharing the store to check the configuration again at once
//! ([`crate::account::recheck`]), so their `/healthz` and `status` follow without waiting
//! for `account.check_interval`.

use std::io::{BufRead as _, IsTerminal as _, Write};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::account::{self, app_name, EventConfig, Switch, DESCRIBE_PERMISSION, MODIFY_PERMISSION};
use crate::api::{ApiError, ClientSettings, V3Client};
use crate::config::Config;

/// `account` subcommands.
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Print the app's event configuration: mode, event switches and push URL.
    Show {
        /// One JSON object per app (the DescribeEventConfig fields and `SubAppId`).
        #[arg(long)]
        json: bool,
    },
    /// Switch the app to reliable callback (PULL), so its events reach this daemon. Shows
    /// the change and asks before making it.
    SetMode(SetModeArgs),
}

/// `account set-mode` options.
#[derive(Debug, Args)]
pub struct SetModeArgs {
    /// The mode to set.
    pub mode: Mode,
    /// Also switch these event types on (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "upload,delete,persistence")]
    pub enable: Vec<Switch>,
    /// Apply without asking (needed when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
}

/// The modes `set-mode` sets: only PULL (switching back to HTTP callbacks is done in the console).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    /// Reliable callback: events go to the queue this daemon pulls.
    Pull,
}

impl AccountCommand {
    /// Runs the subcommand.
    pub async fn run(self, config: &Config, config_path: &std::path::Path) -> anyhow::Result<()> {
        let client = V3Client::new(ClientSettings::for_account(config)?)?;
        let app = app_name(config.vod.sub_app_id, crate::config::DEFAULT_SOURCE);
        let current = describe(&client, &app).await?;
        // Written with `?`: a reader that has gone (`| head`) ends the command quietly.
        let mut out = std::io::stdout();
        match self {
            AccountCommand::Show { json: true } => {
                let mut value = serde_json::to_value(&current)?;
                value["SubAppId"] = json!(config.vod.sub_app_id);
                writeln!(out, "{value}")?;
            }
            AccountCommand::Show { json: false } => print_config(&mut out, &app, &current)?,
            AccountCommand::SetMode(args) => {
                // Also when nothing needed changing: the fix may have been made in the console.
                set_mode(&mut out, &client, &app, &current, &args).await?;
                ask_daemons_to_check(config, config_path).await;
            }
        }
        Ok(())
    }
}

async fn describe(client: &V3Client, app: &str) -> anyhow::Result<EventConfig> {
    account::describe(client).await.map_err(|e| explain(e, DESCRIBE_PERMISSION)).with_context(|| app.to_string())
}

/// A refusal for want of a permission, with the permission to grant.
fn explain(e: ApiError, permission: &str) -> anyhow::Error {
    if account::is_permission_denied(&e) {
        anyhow::anyhow!("{e}; grant `{permission}` to these credentials (CAM policy of the sub-account)")
    } else {
        e.into()
    }
}

/// The configuration, and what it means for this daemon.
fn print_config(out: &mut impl Write, app: &str, config: &EventConfig) -> std::io::Result<()> {
    writeln!(out, "app:          {app}")?;
    let meaning = if config.is_pull() {
        "reliable callback: events go to the queue this daemon pulls"
    } else {
        "events go to HTTP callbacks, never to the queue; `vod-eventd account set-mode pull` switches it to PULL"
    };
    writeln!(out, "mode:         {} ({meaning})", config.mode)?;
    for switch in Switch::ALL {
        writeln!(out, "{:<13} {} ({})", format!("{}:", switch.name()), config.switch(switch), switch.event_type())?;
    }
    let url =
        if config.notification_url.is_empty() { "(none)".into() } else { crate::redact::url(&config.notification_url) };
    writeln!(out, "push URL:     {url}")?;
    let off: Vec<&str> = config.switched_off().iter().map(|s| s.event_type()).collect();
    if !off.is_empty() {
        writeln!(out, "never arrive: {}", off.join(", "))?;
    }
    Ok(())
}

/// Asks the daemons sharing the store to check the event configuration now. A store that
/// cannot be opened (no daemon has created it yet) is only a note: the change is made.
async fn ask_daemons_to_check(config: &Config, config_path: &std::path::Path) {
    let asked = match super::open_store(config, config_path) {
        Ok(store) => crate::account::recheck::request(&store).await.map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    if let Err(e) = asked {
        eprintln!("note: a running daemon could not be asked to check again at once ({e:#}); it sees the change at its next check (account.check_interval) or when events arrive.");
    }
}

async fn set_mode(
    out: &mut impl Write,
    client: &V3Client,
    app: &str,
    current: &EventConfig,
    args: &SetModeArgs,
) -> anyhow::Result<()> {
    let Mode::Pull = args.mode;
    let changes = current.changes_for_pull(&args.enable);
    if changes.is_empty() {
        writeln!(out, "{app} is already in PULL mode with the asked switches on; nothing to change.")?;
        return Ok(());
    }
    writeln!(out, "For {app}, ModifyEventConfig will change:")?;
    for (field, from, to) in &changes {
        let from = if from.is_empty() { "(unset)" } else { from };
        writeln!(out, "  {field}: {from} -> {to}")?;
    }
    if !current.is_pull() && !current.notification_url.is_empty() {
        let url = crate::redact::url(&current.notification_url);
        writeln!(out, "HTTP callbacks to {url} stop: events go to the queue instead.")?;
    }
    if !confirmed(args.yes)? {
        anyhow::bail!(
            "nothing changed: confirmation needed, and stdin is not a terminal to ask on; run again with --yes to apply"
        );
    }
    account::modify(client, &changes).await.map_err(|e| explain(e, MODIFY_PERMISSION))?;
    writeln!(out, "Done. Now:")?;
    print_config(out, app, &describe(client, app).await?)?;
    Ok(())
}

/// `--yes`, or a `y` typed at the terminal; `Ok(false)` without a terminal.
fn confirmed(yes: bool) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Ok(false);
    }
    let mut out = std::io::stdout();
    write!(out, "Apply? [y/N] ")?;
    out.flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(true)
    } else {
        anyhow::bail!("nothing changed")
    }
}
