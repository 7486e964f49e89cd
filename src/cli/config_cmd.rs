//! `vod-eventd config check [--online]`: validate the config (and read the secret) without
//! starting, refuse the example's placeholder values and warn about secrets inline in a
//! file every local user can read ([`crate::config_lint`]); `--online` also reads the
//! app's event configuration and warns about what will never arrive.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use crate::account::{self, app_name, EventConfig, DESCRIBE_PERMISSION};
use crate::config::Config;

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config file and the environment overrides; exit 0 if usable, 78 if not.
    Check {
        /// Also call DescribeEventConfig with the configured credentials and warn when the
        /// app is not in PULL mode or a route names an event type that is switched off
        /// (exit 1 if the call fails for another reason than a missing permission).
        #[arg(long)]
        online: bool,
    },
}

impl ConfigCommand {
    /// Runs the subcommand.
    pub fn run(self, path: &Path) -> ExitCode {
        let ConfigCommand::Check { online } = self;
        let config = match crate::config::load(path)
            .and_then(|config| crate::config_lint::refuse_placeholders(&config, path).map(|()| config))
        {
            Ok(config) => config,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(super::EXIT_CONFIG);
            }
        };
        if config.keys.encryption_key_file.is_some() {
            // Read as the daemon reads it at start (a file, not just a setting).
            if let Err(e) = config.keys.keyring() {
                eprintln!("{}: keys.encryption_key_file: {e}", path.display());
                return ExitCode::from(super::EXIT_CONFIG);
            }
        }
        println!(
            "{}: OK (endpoint {}, store {})",
            path.display(),
            crate::redact::url(&config.endpoint()),
            config.store.path.display()
        );
        for warning in crate::config_lint::inline_secrets(path).into_iter().chain(config.warnings()) {
            println!("warning: {warning}");
        }
        for (name, handler) in &config.handlers {
            if let crate::handler::HandlerConfig::Drm(drm) = handler {
                println!("handlers.{name}: {}", drm.describe(config.vod.api));
            }
        }
        for warning in local_warnings(&config) {
            println!("warning: {warning}");
        }
        if !online {
            return ExitCode::SUCCESS;
        }
        match super::runtime().and_then(|rt| rt.block_on(check_online(&config))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vod-eventd: error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}

async fn check_online(config: &Config) -> anyhow::Result<()> {
    check_brokers(config).await?;
    let client = crate::api::V3Client::new(crate::api::ClientSettings::for_account(config)?)?;
    let app = app_name(config.vod.sub_app_id, crate::config::DEFAULT_SOURCE);
    match account::describe(&client).await {
        Ok(event_config) => {
            println!("{app}: {}", event_config.summary());
            for warning in warnings(config, &app, &event_config) {
                println!("warning: {warning}");
            }
            Ok(())
        }
        Err(e) if account::is_permission_denied(&e) => {
            println!("warning: {app}: cannot read the event configuration ({e}); grant `{DESCRIBE_PERMISSION}` to these credentials to have it checked");
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("{app}: reading the event configuration"))),
    }
}

/// Connects each broker handler (`amqp`, `nats`, `redis`) and checks its exchange or
/// stream and credentials; the first that fails is the error, naming the handler.
async fn check_brokers(config: &Config) -> anyhow::Result<()> {
    for (name, section) in &config.handlers {
        if !matches!(
            section,
            crate::handler::HandlerConfig::Amqp(_)
                | crate::handler::HandlerConfig::Nats(_)
                | crate::handler::HandlerConfig::Redis(_)
        ) {
            continue;
        }
        // Broker handlers never use the store; `build` takes one for the types that do.
        let scratch = tempfile::tempdir()?;
        let store = crate::store::Store::open(&scratch.path().join("probe.db"), std::time::Duration::from_secs(1))?;
        let handler = crate::handler::AnyHandler::build(name, section, std::sync::Arc::default(), store)?;
        if let Some(outcome) = handler.probe().await {
            outcome.map_err(|f| anyhow::anyhow!("handlers.{name} ({}): {}", handler.kind(), f.message))?;
            println!("handlers.{name}: {} broker reachable, target checked", handler.kind());
        }
    }
    Ok(())
}

/// What the config exposes, found without calling anything.
fn local_warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(addr) = config.metrics.listen.filter(|addr| !addr.ip().is_loopback()) {
        out.push(format!(
            "metrics.listen = \"{addr}\" is not a loopback address: anyone who can reach it can read /metrics and /healthz and hold up to {} of its connections; listen on 127.0.0.1 or ::1 and scrape through a proxy, or firewall the port",
            crate::http::METRICS_LIMITS.max_connections
        ));
    }
    out
}

/// What will not arrive: every event if the mode is not PULL; switched-off types, and
/// each route that names one by its exact name.
fn warnings(config: &Config, app: &str, event_config: &EventConfig) -> Vec<String> {
    let mut out = Vec::new();
    if !event_config.is_pull() {
        out.push(format!(
            "{app} is in {} mode: no event reaches the queue; `vod-eventd account set-mode pull` switches it to PULL",
            event_config.mode
        ));
    }
    for switch in event_config.switched_off() {
        let (field, event_type, name) = (switch.field(), switch.event_type(), switch.name());
        out.push(format!("{event_type} will never arrive: {field} is not ON for {app}"));
        for (i, route) in config.routes.iter().enumerate() {
            if route.events.iter().any(|pattern| pattern == event_type) {
                out.push(format!("routes[{i}].events names {event_type}, which will never arrive ({field} is not ON); `vod-eventd account set-mode pull --enable {name}` switches it on"));
            }
        }
    }
    out
}
