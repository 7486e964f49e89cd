//! Configuration: built-in defaults, then the TOML file, then `VOD_EVENTD_*` environment
//! variables (`__` separates nesting: `VOD_EVENTD_VOD__SECRET_ID`). Every problem is
//! reported with the key and the file or variable it came from, so `config check` can
//! name all of them at once.
//!
//! This file layers figment, holds [`Config`] and the issue types, and runs the checks that
//! span sections. Each section owns its struct, defaults and checks in a file of its own:
//! `vod.rs` (`[vod]`, credentials), `sources.rs` (`sources`, `[discovery]`), `store.rs`,
//! `pull.rs` (`[pull]`, `[confirm]`), `dispatch.rs`, [`handlers`] (`[handlers.NAME]` and the
//! controls every handler type shares), `account.rs`, `watch.rs` (`[metrics]`, `[health]`,
//! `[alert]`), `log.rs`, `node.rs`, `shutdown.rs` and `keyserver.rs`; `secret.rs` keeps secrets out of
//! messages. Their types are re-exported here, so every path stays `crate::config::X`.
//! Unknown keys are refused naming the known ones (`deny_unknown_fields` on every section).

mod account;
pub mod credential;
mod dispatch;
pub mod handlers;
mod keys;
mod keyserver;
mod log;
mod node;
mod pull;
mod secret;
mod shutdown;
mod sources;
mod store;
mod vod;
mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use self::account::AccountConfig;
pub use self::dispatch::{DispatchConfig, LEASE_MARGIN};
pub use self::keys::KeysConfig;
pub use self::keyserver::{KeyAuth, KeyserverConfig, MIN_TOKEN_SECRET_LEN, TOKEN_SECRETS_CREDENTIAL};
pub use self::log::LogConfig;
pub use self::node::NodeConfig;
pub use self::pull::{ConfirmConfig, PullConfig, CONFIRM_SAFETY_MARGIN, MAX_CONFIRM_BATCH};
pub use self::shutdown::ShutdownConfig;
pub use self::sources::{valid_source_name, DiscoveryConfig, Source, SourceConfig, SourcesSetting};
pub use self::store::{split_postgres_url, PgTls, StoreConfig, STORE_PASSWORD_CREDENTIAL};
pub use self::vod::{default_endpoint, VodConfig, V3_RATE_LIMIT_PER_MINUTE};
pub use self::watch::{AlertConfig, HealthConfig, MetricsConfig};
use crate::handler::HandlerConfig;
pub use crate::names::{ApiVersion, DEFAULT_SOURCE};
use crate::route::{RouteConfig, Router};

/// Where the config file is looked for when neither `--config` nor `VOD_EVENTD_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vod-eventd/config.toml";
/// The environment variable that names the config file.
pub const CONFIG_ENV: &str = "VOD_EVENTD_CONFIG";
/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "VOD_EVENTD_";

/// The whole configuration.
///
/// `Serialize` exists to find the settings a reload cannot apply ([`restart_needed`]):
/// the fields SIGHUP applies (`routes`, `handlers`, `[dispatch]`, `log.level`,
/// `store.max_size_mb`) are skipped, and secrets serialise as a digest.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Tencent VOD API.
    pub vod: VodConfig,
    /// The event store.
    #[serde(default)]
    pub store: StoreConfig,
    /// Confirmation batching.
    #[serde(default)]
    pub confirm: ConfirmConfig,
    /// The pull loop.
    #[serde(default)]
    pub pull: PullConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Which handlers each event type goes to.
    #[serde(default, skip_serializing)]
    pub routes: Vec<RouteConfig>,
    /// Named handlers.
    #[serde(default, skip_serializing)]
    pub handlers: BTreeMap<String, HandlerConfig>,
    /// Handler retries.
    #[serde(default, skip_serializing)]
    pub dispatch: DispatchConfig,
    /// Stopping.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The metrics and health listener.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// What counts as healthy.
    #[serde(default)]
    pub health: HealthConfig,
    /// Data-at-risk alarms.
    #[serde(default)]
    pub alert: AlertConfig,
    /// The app's event configuration check.
    #[serde(default)]
    pub account: AccountConfig,
    /// Where events are pulled from: `[[sources]]` entries, `"all"` (every enabled app of
    /// the account, found with DescribeSubAppIds), or nothing (`[vod]` alone is the one
    /// source, named [`DEFAULT_SOURCE`]).
    #[serde(default)]
    pub sources: SourcesSetting,
    /// `sources = "all"`: how apps are discovered.
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// This daemon among several sharing one PostgreSQL store.
    #[serde(default)]
    pub node: NodeConfig,
    /// `vod-eventd keyserver`, a process of its own: the daemon ignores it (so a change
    /// to it asks no restart of the daemon).
    #[serde(default, skip_serializing)]
    pub keyserver: Option<KeyserverConfig>,
    /// How stored data keys are kept (encryption at rest); read at start.
    #[serde(default, skip_serializing)]
    pub keys: KeysConfig,
}
/// One configuration problem, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The dotted key (`vod.secret_id`), or empty for the file as a whole.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
    /// The file or variable the value came from, if known.
    pub source: Option<String>,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.source, self.key.is_empty()) {
            (Some(src), false) => write!(f, "{src}: `{}`: {}", self.key, self.message),
            (Some(src), true) => write!(f, "{src}: {}", self.message),
            (None, false) => write!(f, "`{}`: {}", self.key, self.message),
            (None, true) => f.write_str(&self.message),
        }
    }
}

/// Every problem found while loading a config.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file that was read (or looked for).
    pub path: PathBuf,
    /// The problems, at least one.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "config error: {issue}")?;
        }
        Ok(())
    }
}

/// The dotted keys whose values differ between two configs, among the settings a reload
/// cannot apply (everything but routes, handlers, `[dispatch]`, `log.level` and
/// `store.max_size_mb`), derived from the config structure so that no key is missed.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    fn diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value;
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for key in keys {
                    let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    diff(&path, x.get(key).unwrap_or(&Value::Null), y.get(key).unwrap_or(&Value::Null), out);
                }
            }
            _ if a != b => out.push(path.to_string()),
            _ => {}
        }
    }
    let value = |c: &Config| serde_json::to_value(c).expect("the config serialises");
    let mut changed = Vec::new();
    diff("", &value(old), &value(new), &mut changed);
    changed
}

/// The config file to use: `--config`, else `VOD_EVENTD_CONFIG`, else the default path.
pub fn config_path(cli: Option<&Path>) -> PathBuf {
    cli.map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

/// Loads and validates the config from `path` and the environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let issue = |message: String| ConfigError {
        path: path.to_path_buf(),
        issues: vec![ConfigIssue { key: String::new(), message, source: Some(path.display().to_string()) }],
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(issue("is not a file; pass a config file with --config PATH".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(issue(format!(
                "no such file; create it (see config.example.toml) or pass another with --config PATH or {CONFIG_ENV}"
            )))
        }
        Err(e) => return Err(issue(format!("cannot be read: {e}"))),
    }
    let figment =
        Figment::new().merge(Toml::file_exact(path)).merge(Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__"));
    from_figment(figment, path)
}

/// Extracts and validates a config from any figment (the test seam).
pub fn from_figment(figment: Figment, path: &Path) -> Result<Config, ConfigError> {
    let config: Config = figment.extract().map_err(|err| ConfigError {
        path: path.to_path_buf(),
        issues: err.into_iter().map(|e| figment_issue(e, path)).collect(),
    })?;
    let issues = config.validate();
    if issues.is_empty() {
        Ok(config)
    } else {
        let source = Some(path.display().to_string());
        Err(ConfigError {
            path: path.to_path_buf(),
            issues: issues.into_iter().map(|i| ConfigIssue { source: i.source.or(source.clone()), ..i }).collect(),
        })
    }
}

fn figment_issue(e: figment::Error, path: &Path) -> ConfigIssue {
    use figment::error::Kind;
    let mut key = e.path.join(".");
    let message = match &e.kind {
        Kind::MissingField(field) => {
            key = join_key(&key, field);
            format!("is required but missing; set it in the file or in {}", env_name(&key))
        }
        Kind::UnknownField(field, expected) => {
            key = join_key(&key, field);
            format!("is not a known key (expected one of: {}); check the spelling", expected.join(", "))
        }
        Kind::Message(m) => one_line(m),
        other => format!("{other}"),
    };
    let source = e
        .metadata
        .as_ref()
        .and_then(|m| m.source.as_ref().map(|s| s.to_string()).or_else(|| Some(m.name.to_string())))
        .or_else(|| Some(path.display().to_string()));
    ConfigIssue { key, message, source }
}

/// A multi-line parser message (TOML shows the line with a caret) as one line.
fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty() && !l.contains('|')).collect::<Vec<_>>().join(": ")
}

/// `path.field`, unless figment already put the field at the end of the path.
fn join_key(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else if path == field || path.ends_with(&format!(".{field}")) {
        path.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// The environment variable that sets a dotted key.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_ascii_uppercase())
}

impl Config {
    /// What is allowed but unwise, for `config check` to print (one line each).
    pub fn warnings(&self) -> Vec<String> {
        self.store.warnings()
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut bad = |key: &str, message: String| issues.push(ConfigIssue { key: key.into(), message, source: None });
        self.validate_sources(&mut bad);
        self.confirm.validate(&mut bad);
        self.pull.validate(&mut bad);
        self.log.validate(&mut bad);
        if let Err(e) = Router::new(&self.routes) {
            bad(&e.key, e.message);
        }
        for (i, route) in self.routes.iter().enumerate() {
            for name in route.handlers.iter().filter(|h| !self.handlers.contains_key(*h)) {
                bad(
                    &format!("routes[{i}].handlers"),
                    format!("`{name}` is not defined; add a [handlers.{name}] section"),
                );
            }
        }
        for (name, handler) in &self.handlers {
            for (key, message) in handler.validate() {
                bad(&format!("handlers.{name}.{key}"), message);
            }
            if !handler.runs_on(&self.node.name()) && self.store.postgres_url().is_none() {
                bad(
                    &format!("handlers.{name}.hosts"),
                    format!(
                        "does not name this daemon (node.name = {}), and its SQLite store (store.path) is shared with no other daemon: its deliveries would never run; add this node, or remove hosts",
                        self.node.name()
                    ),
                );
            }
        }
        if self.health.max_pull_age < self.vod.request_timeout {
            bad(
                "health.max_pull_age",
                "must be at least vod.request_timeout, or every long poll looks like an outage".into(),
            );
        }
        if self.alert.check_interval.is_zero() || self.store.prune_interval.is_zero() {
            bad("alert.check_interval", "alert.check_interval and store.prune_interval must be above zero".into());
        }
        self.store.validate(&mut bad);
        self.node.validate(&mut bad);
        self.dispatch.validate(&mut bad);
        self.validate_account(&mut bad);
        if let Some(keyserver) = &self.keyserver {
            keyserver.validate(&mut bad);
        }
        issues
    }
}

#[cfg(test)]
mod tests;
