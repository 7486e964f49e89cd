//! `vod-eventd keyserver`: serves the stored data keys to HLS players (see
//! [`crate::keyserver`]), a process of its own with the daemon's config file and store.

use std::path::Path;

use anyhow::Context as _;
use sd_notify::NotifyState;
use secrecy::ExposeSecret as _;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, ConfigIssue, KeyAuth, KeyserverConfig};
use crate::keyserver::KeyServer;
use crate::service::notify;
use crate::store::Store;

/// `[keyserver]` of `config`, or the error that says to add it.
pub(super) fn section(config: &Config, config_path: &Path) -> Result<KeyserverConfig, ConfigError> {
    config.keyserver.clone().ok_or_else(|| {
        issue(
            config_path,
            "keyserver",
            "there is no [keyserver] section; add one (README, \"Serving keys to players\")".into(),
        )
    })
}

/// The token secrets as bytes, the signing one first; a missing one is a config error.
pub(super) fn secrets(section: &KeyserverConfig, config_path: &Path) -> Result<Vec<Vec<u8>>, ConfigError> {
    let secrets = section.secrets().map_err(|m| issue(config_path, "keyserver.token_secret_file", m))?;
    Ok(secrets.iter().map(|s| s.expose_secret().as_bytes().to_vec()).collect())
}

fn issue(config_path: &Path, key: &str, message: String) -> ConfigError {
    ConfigError {
        path: config_path.to_path_buf(),
        issues: vec![ConfigIssue { key: key.into(), message, source: Some(config_path.display().to_string()) }],
    }
}

/// Runs the key server until SIGTERM or SIGINT.
pub(super) fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    crate::config_lint::refuse_placeholders(&config, config_path)?;
    let section = section(&config, config_path)?;
    let secrets = if section.auth == KeyAuth::Token { secrets(&section, config_path)? } else { Vec::new() };
    let _log = crate::logging::init(&config.log.level, &config.log.format);
    for warning in crate::config_lint::inline_secrets(config_path) {
        tracing::warn!("{warning}");
    }
    if section.auth == KeyAuth::None {
        tracing::warn!(listen = %section.listen, "keyserver.auth = \"none\": every key is served to whoever reaches this address; the proxy in front must authenticate.");
    }
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        crate::signal::cancel_on_signals(shutdown.clone())?;
        let store = Store::open_for_keyserver(&config.store)
            .await
            .with_context(|| format!("opening the store named in {}", config_path.display()))?;
        let listener = tokio::net::TcpListener::bind(section.listen)
            .await
            .with_context(|| format!("keyserver.listen {}: cannot listen", section.listen))?;
        let address = listener.local_addr()?;
        tracing::info!(listen = %address, path = %section.path, auth = ?section.auth, "Key server listening.");
        notify(&[NotifyState::Ready, NotifyState::Status("serving keys")]);
        KeyServer::new(section, store, secrets).serve(listener, shutdown).await;
        notify(&[NotifyState::Stopping]);
        tracing::info!("Key server stopped.");
        Ok(())
    })
}
