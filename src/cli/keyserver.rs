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
    let secrets = if section.auth == KeyAuth::None { Vec::new() } else { secrets(&section, config_path)? };
    let tls = tls(&section, config_path)?;
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
        let mut reloads = crate::signal::with_reload(shutdown.clone())?;
        let store = Store::open_for_keyserver(&config.store)
            .await
            .with_context(|| format!("opening the store named in {}", config_path.display()))?
            .with_keyring(config.keys.keyring().map_err(anyhow::Error::msg)?);
        store.check_keyring().await?;
        let listener = tokio::net::TcpListener::bind(section.listen)
            .await
            .with_context(|| format!("keyserver.listen {}: cannot listen", section.listen))?;
        let address = listener.local_addr()?;
        let metrics = match section.metrics_listen {
            Some(at) => Some(
                tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| format!("keyserver.metrics_listen {at}: cannot listen"))?,
            ),
            None => None,
        };
        tracing::info!(listen = %address, path = %section.path, auth = ?section.auth, tls = tls.is_some(), "Key server listening.");
        notify(&[NotifyState::Ready, NotifyState::Status("serving keys")]);
        let missing = match section.fetch_missing {
            true => Some(
                crate::keyserver::missing::Missing::new(&config, &section, store.clone())
                    .context("setting up the fetch of missing keys")?,
            ),
            false => None,
        };
        let server = KeyServer::new(section.clone(), store, secrets, missing);
        let reloader = server.clone();
        let path = config_path.to_path_buf();
        let tls_now = tls.clone();
        tokio::spawn(async move {
            while reloads.recv().await.is_some() {
                reload(&reloader, &section, &path);
                if let Some(current) = &tls_now {
                    reload_tls(current, &section, &path);
                }
            }
        });
        if let Some(metrics) = metrics {
            tokio::spawn(server.clone().serve_metrics(metrics, shutdown.clone()));
        }
        server.serve(listener, tls, shutdown).await;
        notify(&[NotifyState::Stopping]);
        tracing::info!("Key server stopped.");
        Ok(())
    })
}

/// SIGHUP: the token secrets are read again (from the file or the credential); the rest of
/// `[keyserver]` is as it was at start. A config that does not load changes nothing.
fn reload(server: &KeyServer, running: &KeyserverConfig, config_path: &Path) {
    if running.auth == KeyAuth::None {
        tracing::info!(
            "SIGHUP: auth = \"none\", no token secrets to re-read; other [keyserver] settings take effect at restart."
        );
        return;
    }
    let loaded = super::load_config(config_path)
        .and_then(|c| Ok(section(&c, config_path)?))
        .and_then(|s| Ok(secrets(&s, config_path)?));
    match loaded {
        Ok(secrets) => {
            let count = secrets.len();
            server.set_secrets(secrets);
            tracing::info!(
                secrets = count,
                "SIGHUP: token secrets re-read; other [keyserver] settings take effect at restart."
            );
        }
        Err(e) => tracing::error!("SIGHUP: the token secrets were not re-read, the running ones stay: {e:#}"),
    }
}

/// The TLS configuration of `[keyserver]`, if it has one; a file that does not load is a
/// config error.
fn tls(section: &KeyserverConfig, config_path: &Path) -> Result<Option<crate::http::Tls>, ConfigError> {
    let (Some(cert), Some(key)) = (&section.tls_cert, &section.tls_key) else { return Ok(None) };
    let config =
        crate::keyserver::tls::server_config(cert, key).map_err(|m| issue(config_path, "keyserver.tls_cert", m))?;
    Ok(Some(std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(config))))
}

/// SIGHUP: the certificate and key are read again (from the paths of the running
/// configuration); new connections take them. Files that do not load change nothing.
fn reload_tls(current: &crate::http::Tls, running: &KeyserverConfig, _config_path: &Path) {
    let (Some(cert), Some(key)) = (&running.tls_cert, &running.tls_key) else { return };
    match crate::keyserver::tls::server_config(cert, key) {
        Ok(config) => {
            current.store(std::sync::Arc::new(config));
            tracing::info!("SIGHUP: TLS certificate and key re-read.");
        }
        Err(e) => tracing::error!("SIGHUP: the TLS certificate was not re-read, the running one stays: {e}"),
    }
}
