//! `vod-eventd store check`: SQLite's integrity check of the store, on demand. It reads
//! the whole file, which is why start-up does not (unless `store.check_at_start`).
//! `vod-eventd store copy`: a history from one backend into the other (see
//! [`crate::store::copy`]); it needs no config file. A password in `--from`/`--to` is
//! readable by every local user in `/proc/PID/cmdline`: the command warns and names the
//! alternatives (`--password-file`, or the URL in `VOD_EVENTD_COPY_FROM`/`VOD_EVENTD_COPY_TO`).

use std::io::Write as _;
use std::time::Instant;

use clap::Subcommand;

use crate::config::Config;

/// `store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Check the store's integrity (reads every page; safe while the daemon runs). Exit 0
    /// if sound, 1 if damaged, naming the first problems.
    Check,
    /// Copy a history between stores: a SQLite file into PostgreSQL (moving to several
    /// hosts) or back. Stop the daemons first. Resumable: run it again after an interruption
    /// and it continues. Ends by counting every table on both sides (exit 1 if they differ).
    Copy(CopyArgs),
}

/// `store copy` arguments.
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// The store to copy from: a SQLite file, or a postgresql:// URL (a URL with a password
    /// is better passed in the environment, which other users cannot read).
    #[arg(long, value_name = "PATH|URL", env = "VOD_EVENTD_COPY_FROM", hide_env_values = true)]
    pub from: String,
    /// The store to copy into (created or migrated as needed): a SQLite file, or a
    /// postgresql:// URL (a URL with a password is better passed in the environment).
    #[arg(long, value_name = "PATH|URL", env = "VOD_EVENTD_COPY_TO", hide_env_values = true)]
    pub to: String,
    /// A file holding the PostgreSQL password, for a URL that has none.
    #[arg(long, value_name = "PATH")]
    pub password_file: Option<std::path::PathBuf>,
    /// Rows per transaction.
    #[arg(long, default_value_t = crate::store::copy::BATCH)]
    pub batch: usize,
}

impl CopyArgs {
    /// Runs the copy, printing progress to stderr and the counts to stdout.
    pub async fn run(&self) -> anyhow::Result<()> {
        use crate::store::copy::{copy, End};
        use anyhow::Context as _;
        let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
        for (flag, variable, value) in
            [("--from", "VOD_EVENTD_COPY_FROM", &self.from), ("--to", "VOD_EVENTD_COPY_TO", &self.to)]
        {
            if holds_password(value) && on_command_line(value, &args) {
                eprintln!(
                    "warning: {flag} holds a password, which every local user can read in /proc/{}/cmdline while the copy runs; put it in a file only you can read and pass --password-file FILE, or set {variable} to the URL instead of passing {flag}",
                    std::process::id()
                );
            }
        }
        let from = End::open(&self.from, self.password_file.clone(), false)
            .await
            .with_context(|| format!("--from {}", crate::redact::url(&self.from)))?;
        let to = End::open(&self.to, self.password_file.clone(), true)
            .await
            .with_context(|| format!("--to {}", crate::redact::url(&self.to)))?;
        let started = Instant::now();
        let mut last = Instant::now();
        let mut progress = |table: &str, n: u64| {
            if last.elapsed().as_secs() >= 2 {
                last = Instant::now();
                eprintln!("{table}: {n} rows copied ({:.0?})", started.elapsed());
            }
        };
        let counted = copy(&from, &to, self.batch.max(1), &mut progress).await?;
        let mut out = std::io::stdout();
        writeln!(out, "Copied {} into {} in {:.1?}:", from.shown(), to.shown(), started.elapsed())?;
        for c in &counted {
            writeln!(out, "  {c}")?;
        }
        if counted.iter().any(|c| c.source != c.destination) {
            anyhow::bail!("the counts differ: was a daemon still writing to {}? Stop it and run the same command again to copy the rest", from.shown());
        }
        Ok(())
    }
}

/// A URL with a password in its userinfo or in a password-like query parameter.
fn holds_password(value: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(value) else { return false };
    url.password().is_some() || url.query_pairs().any(|(name, _)| crate::redact::is_secret_parameter(&name))
}

/// `value` was given on the command line (`--to VALUE` or `--to=VALUE`), not through the
/// environment.
fn on_command_line(value: &str, args: &[String]) -> bool {
    args.iter().any(|arg| arg == value || arg.strip_suffix(value).is_some_and(|head| head.ends_with('=')))
}

impl StoreCommand {
    /// Runs the subcommand.
    pub fn run(&self, config: &Config, config_path: &std::path::Path) -> anyhow::Result<()> {
        match self {
            StoreCommand::Copy(args) => super::runtime()?.block_on(args.run()),
            StoreCommand::Check => {
                let store = super::open_store(config, config_path)?;
                let started = Instant::now();
                store.check_integrity()?;
                let size = super::runtime()?.block_on(store.size_on_disk());
                writeln!(
                    std::io::stdout(),
                    "{}: ok ({:.1} MiB checked in {:.1?})",
                    store.path().display(),
                    size as f64 / 1048576.0,
                    started.elapsed()
                )?;
                Ok(())
            }
        }
    }
}
