//! `vod-eventd store check`: SQLite's integrity check of the store, on demand. It reads
//! the whole file, which is why start-up does not (unless `store.check_at_start`).

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
}

impl StoreCommand {
    /// Runs the subcommand.
    pub fn run(&self, config: &Config, config_path: &std::path::Path) -> anyhow::Result<()> {
        match self {
            StoreCommand::Check => {
                let store = super::open_store(config, config_path)?;
                let started = Instant::now();
                store.check_integrity()?;
                writeln!(
                    std::io::stdout(),
                    "{}: ok ({:.1} MiB checked in {:.1?})",
                    store.path().display(),
                    store.size_on_disk() as f64 / 1048576.0,
                    started.elapsed()
                )?;
                Ok(())
            }
        }
    }
}
