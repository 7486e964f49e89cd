//! `vod-eventd config check`: validate the config (and read the secret) without starting.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config file and the environment overrides; exit 0 if usable, 78 if not.
    Check,
}

impl ConfigCommand {
    /// Runs the subcommand.
    pub fn run(self, path: &Path) -> ExitCode {
        match crate::config::load(path) {
            Ok(config) => {
                println!(
                    "{}: OK (endpoint {}, store {})",
                    path.display(),
                    crate::redact::url(&config.endpoint()),
                    config.store.path.display()
                );
                for (name, handler) in &config.handlers {
                    if let crate::handler::HandlerConfig::Drm(drm) = handler {
                        println!("handlers.{name}: {}", drm.describe(config.vod.api));
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(super::EXIT_CONFIG)
            }
        }
    }
}
