//! Configuration: built-in defaults, then the TOML file, then `VOD_EVENTD_*` environment
//! variables (`__` separates nesting: `VOD_EVENTD_VOD__SECRET_ID`). Every problem is
//! reported with the key and the file or variable it came from, so `config check` can
//! name all of them at once.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use vod_protocol::SignatureMethod;

use crate::handler::HandlerConfig;
use crate::route::{RouteConfig, Router};

/// Where the config file is looked for when neither `--config` nor `VOD_EVENTD_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vod-eventd/config.toml";
/// The environment variable that names the config file.
pub const CONFIG_ENV: &str = "VOD_EVENTD_CONFIG";
/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "VOD_EVENTD_";
/// Tencent's API 3.0 limit per action (100 calls per second).
pub const V3_RATE_LIMIT_PER_MINUTE: u32 = 6000;
/// ConfirmEvent takes at most this many handles per call (v3 documents 16; v2 is silent).
pub const MAX_CONFIRM_BATCH: usize = 16;

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
}

/// `[node]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This daemon's name on a shared store (default: the host name). Each daemon sharing
    /// one PostgreSQL store needs its own: at start a daemon returns to pending the
    /// deliveries that earlier runs under its name left running.
    pub name: Option<String>,
}

impl NodeConfig {
    /// `node.name`, else the host name, else `vod-eventd`.
    pub fn name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String =
            host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')).collect();
        if host.is_empty() {
            "vod-eventd".into()
        } else {
            host
        }
    }
}

/// The name of the one source a config without `[[sources]]` has. Events stored before
/// sources existed belong to it, and its dedupe keys are the content hashes alone, as
/// they were then.
pub const DEFAULT_SOURCE: &str = "default";

/// `sources`: a list of `[[sources]]`, `"all"`, or unset.
#[derive(Debug, Clone, Default, Serialize)]
pub enum SourcesSetting {
    /// `[vod]` alone is the one source, [`DEFAULT_SOURCE`].
    #[default]
    Vod,
    /// `[[sources]]` entries.
    List(Vec<SourceConfig>),
    /// `sources = "all"`: every enabled app of the `[vod]` account.
    All,
}

impl<'de> Deserialize<'de> for SourcesSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SourcesSetting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"all\" or [[sources]] entries")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SourcesSetting, E> {
                match v {
                    "all" => Ok(SourcesSetting::All),
                    other => Err(E::custom(format!(
                        "`{other}` is not \"all\"; write sources = \"all\" or [[sources]] entries with name and sub_app_id"
                    ))),
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<SourcesSetting, A::Error> {
                let mut list = Vec::new();
                while let Some(source) = seq.next_element::<SourceConfig>()? {
                    list.push(source);
                }
                Ok(SourcesSetting::List(list))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// One `[[sources]]` entry: an app (`sub_app_id`) of an account. Every key left out is
/// taken from `[vod]`, except that a source with its own `secret_id` takes no key or token
/// from `[vod]`, and one with another `api` and no `endpoint` gets Tencent's endpoint for it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Recorded with each event, in metrics labels, headers and routes: letters, digits,
    /// `.`, `_` and `-`, starting with a letter or digit, at most 64 characters.
    pub name: String,
    /// The app (`SubAppId`); unset: `vod.sub_app_id`.
    #[serde(default)]
    pub sub_app_id: Option<u64>,
    /// `v2` or `v3`.
    #[serde(default)]
    pub api: Option<ApiVersion>,
    /// The endpoint URL.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region.
    #[serde(default)]
    pub region: Option<String>,
    /// The API SecretId of another account or key.
    #[serde(default)]
    pub secret_id: Option<String>,
    /// Its secret key, inline.
    #[serde(default, serialize_with = "digest")]
    pub secret_key: Option<SecretString>,
    /// A file holding its secret key.
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
    /// The systemd credential holding its secret key.
    #[serde(default)]
    pub secret_key_credential: Option<String>,
    /// An STS token for its credentials.
    #[serde(default, serialize_with = "digest")]
    pub token: Option<SecretString>,
    /// Calls per minute per action. The sources of one SecretId and API share one limiter,
    /// so they must agree on it (a config where they differ is refused).
    #[serde(default)]
    pub rate_limit_per_minute: Option<u32>,
}

/// `[discovery]`: with `sources = "all"`, every app DescribeSubAppIds lists with Status
/// `On` is a source named `app-<SubAppId>`; apps that turn `Off`, `Destroying` or
/// `Destroyed` (or disappear) are retired once their handles in flight are confirmed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// How often the list of apps is read again.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig { refresh_interval: Duration::from_secs(300) }
    }
}

/// A source as it runs: its name and its complete `[vod]` settings.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    /// The source's name.
    pub name: String,
    /// `[vod]` with the source's own keys applied.
    pub vod: VodConfig,
}

impl Source {
    /// The name of a source discovered for an app.
    pub fn discovered_name(sub_app_id: u64) -> String {
        format!("app-{sub_app_id}")
    }

    /// What identifies the queue it pulls: the SecretId and the app.
    pub fn queue_key(&self) -> (String, Option<u64>) {
        (self.vod.secret_id.clone(), self.vod.sub_app_id)
    }
}

/// True for a usable source name (see [`SourceConfig::name`]).
pub fn valid_source_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl SourceConfig {
    /// `[vod]` with this source's keys applied.
    pub fn resolve(&self, vod: &VodConfig) -> VodConfig {
        let mut out = vod.clone();
        if let Some(api) = self.api {
            if api != vod.api && self.endpoint.is_none() {
                out.endpoint = None;
            }
            out.api = api;
        }
        if self.endpoint.is_some() {
            out.endpoint = self.endpoint.clone();
        }
        if self.region.is_some() {
            out.region = self.region.clone();
        }
        if self.sub_app_id.is_some() {
            out.sub_app_id = self.sub_app_id;
        }
        if let Some(id) = &self.secret_id {
            out.secret_id = id.clone();
            out.secret_key = None;
            out.secret_key_file = None;
            out.token = None;
            out.secret_key_credential = String::new();
        }
        if self.secret_key.is_some() || self.secret_key_file.is_some() || self.secret_key_credential.is_some() {
            out.secret_key = self.secret_key.clone();
            out.secret_key_file = self.secret_key_file.clone();
            out.secret_key_credential = self.secret_key_credential.clone().unwrap_or_default();
        }
        if self.token.is_some() {
            out.token = self.token.clone();
        }
        if self.rate_limit_per_minute.is_some() {
            out.rate_limit_per_minute = self.rate_limit_per_minute;
        }
        out
    }
}

/// `[account]`: reading (and, on request, changing) the app's event configuration with
/// DescribeEventConfig / ModifyEventConfig, which are API 3.0 only.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountConfig {
    /// The API 3.0 endpoint for those calls (default: `vod.endpoint` with `api = "v3"`,
    /// else Tencent's `https://vod.tencentcloudapi.com/`).
    pub endpoint: Option<String>,
    /// How often the daemon reads the event configuration (and once at start).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for AccountConfig {
    fn default() -> Self {
        AccountConfig { endpoint: None, check_interval: Duration::from_secs(600) }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` (Prometheus text) and `/healthz` here, e.g. `127.0.0.1:9464`.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[health]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Unhealthy (`/healthz` 503, no systemd watchdog ping) once the last successful pull
    /// is older than this. A long poll takes at most about 10 s.
    #[serde(with = "humantime_serde")]
    pub max_pull_age: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { max_pull_age: Duration::from_secs(60) }
    }
}

/// `[alert]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// Log at ERROR (and say so in STATUS=) while the last successful pull is older than
    /// this: Tencent keeps unpulled events for 4 days only.
    #[serde(with = "humantime_serde")]
    pub pull_stale_after: Duration,
    /// How often the alarms (stale pulls, growing dead deliveries) are checked.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig { pull_stale_after: Duration::from_secs(3600), check_interval: Duration::from_secs(60) }
    }
}

/// `[dispatch]`: handler retry policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Delays after the 1st, 2nd, ... failed attempt; the last one repeats.
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    /// A delivery still failing this long after it was created is dead.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The longest `Retry-After` a receiver can ask for.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// How often an idle dispatcher looks for work scheduled from outside (`events replay`,
    /// `deliveries retry`, `handlers pause`/`resume`). Each look costs a stat of the
    /// write-ahead log, and a store read only if another process wrote to it.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long the dispatcher gathers finished attempts and free permits before writing
    /// the outcomes and the next claims in one transaction (group commit).
    #[serde(with = "humantime_serde")]
    pub batch_window: Duration,
    /// A claimed delivery's lease outlasts its handler's attempt timeout by this much; a
    /// delivery whose lease passed without an outcome (its host died) is attempted again.
    #[serde(with = "humantime_serde")]
    pub lease_margin: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            retry_schedule: crate::retry::default_schedule(),
            max_age: Duration::from_secs(3 * 86400),
            max_retry_after: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(5),
            batch_window: Duration::from_millis(20),
            lease_margin: crate::dispatch::LEASE_MARGIN,
        }
    }
}

impl DispatchConfig {
    /// The retry policy these settings describe.
    pub fn policy(&self) -> crate::retry::RetryPolicy {
        crate::retry::RetryPolicy {
            schedule: self.retry_schedule.clone(),
            max_age: self.max_age,
            max_retry_after: self.max_retry_after,
        }
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long in-flight handler attempts may take to finish after SIGTERM before they
    /// are stopped and put back to pending. Keep it below systemd's TimeoutStopSec.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { drain_timeout: Duration::from_secs(20) }
    }
}

/// A secret as its SHA-256, so [`restart_needed`] sees it change without holding it.
fn digest<S: serde::Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    use sha2::Digest as _;
    let hash = secret.as_ref().map(|k| crate::event::hex(&sha2::Sha256::digest(k.expose_secret().as_bytes())));
    hash.serialize(s)
}

fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| humantime::parse_duration(s).map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}"))))
        .collect()
}

/// Which Tencent API to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ApiVersion {
    /// The v2 server API (`vod.api.qcloud.com/v2/index.php`): PullEvent/ConfirmEvent.
    #[default]
    V2,
    /// API 3.0 (`vod.tencentcloudapi.com`): PullEvents/ConfirmEvents, TC3-HMAC-SHA256.
    V3,
}

impl ApiVersion {
    /// `v2` or `v3`, as stored with each event.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V2 => "v2",
            ApiVersion::V3 => "v3",
        }
    }
}

/// `[vod]`: where and how to call the API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VodConfig {
    /// `v2` (default) or `v3`.
    #[serde(default)]
    pub api: ApiVersion,
    /// The endpoint URL (default: Tencent's, for the chosen API).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The API SecretId.
    pub secret_id: String,
    /// The API secret key, inline.
    #[serde(default, serialize_with = "digest")]
    pub secret_key: Option<SecretString>,
    /// A file holding the secret key (trailing newline ignored).
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
    /// The name of the systemd credential holding the secret key (`LoadCredential=`).
    #[serde(default = "default_credential")]
    pub secret_key_credential: String,
    /// v2: the `Region` parameter (default `gz`); v3: `X-TC-Region` (default: not sent).
    #[serde(default)]
    pub region: Option<String>,
    /// `HmacSHA256` or `HmacSHA1`.
    #[serde(default = "default_signature_method")]
    pub signature_method: String,
    /// `GET` or `POST`.
    #[serde(default = "default_http_method")]
    pub http_method: String,
    /// An STS token (the `Token` parameter), for temporary credentials.
    #[serde(default, serialize_with = "digest")]
    pub token: Option<SecretString>,
    /// The sub-application id (`SubAppId`).
    #[serde(default)]
    pub sub_app_id: Option<u64>,
    /// Client timeout of one API call; PullEvent holds up to 5 s, Tencent recommends 10 s.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long the server holds an empty long poll: Tencent's 5 s. Change it only for an
    /// emulator that holds less (`request_timeout` must stay above it).
    #[serde(default = "default_long_poll_hold", with = "humantime_serde")]
    pub long_poll_hold: Duration,
    /// Calls per minute allowed per action (default: Tencent's, 1000 for v2, 6000 for v3).
    #[serde(default)]
    pub rate_limit_per_minute: Option<u32>,
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite file (the default backend).
    pub path: PathBuf,
    /// A PostgreSQL URL (`postgresql://user@host:port/db?sslmode=require`): selects the
    /// shared PostgreSQL store instead of the SQLite file at `path`. May hold the password,
    /// which is never shown.
    #[serde(serialize_with = "digest")]
    pub url: Option<SecretString>,
    /// A file holding the PostgreSQL password (when `url` has none).
    pub password_file: Option<PathBuf>,
    /// PostgreSQL connections per daemon, at most.
    pub pool_size: usize,
    /// How long a PostgreSQL connection (or a free pooled one) is waited for.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a write waits for a lock held by another process (e.g. the CLI).
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// Prune events whose deliveries are all done once they are this old (none: keep all).
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
    /// Cap the database at this many MiB (0: no cap). When full, the daemon stops pulling
    /// and confirming until there is room again (retention, or a larger cap via SIGHUP).
    #[serde(skip_serializing)]
    pub max_size_mb: u64,
    /// Run SQLite's integrity check (`vod-eventd store check`) before READY=1. It reads
    /// the whole file, so start-up then takes time in proportion to the store's size.
    pub check_at_start: bool,
}

/// The systemd credential that holds the PostgreSQL password.
pub const STORE_PASSWORD_CREDENTIAL: &str = "vod-store-password";

impl StoreConfig {
    /// The PostgreSQL URL, if `store.url` selects PostgreSQL.
    pub fn postgres_url(&self) -> Option<&str> {
        self.url.as_ref().map(|u| u.expose_secret())
    }

    /// The PostgreSQL password when the URL has none: `store.password_file`, else the
    /// systemd credential `vod-store-password` in `$CREDENTIALS_DIRECTORY`, else none.
    pub fn password(&self) -> Result<Option<SecretString>, String> {
        if let Some(file) = &self.password_file {
            return read_secret(file).map(Some).map_err(|e| format!("store.password_file {}: {e}", file.display()));
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let file = Path::new(&dir).join(STORE_PASSWORD_CREDENTIAL);
            if file.exists() {
                return read_secret(&file).map(Some).map_err(|e| format!("systemd credential {}: {e}", file.display()));
            }
        }
        Ok(None)
    }

    /// The problems of `[store]`, keyed.
    fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(url) = self.postgres_url() {
            if let Err(e) = crate::store::pg::parse_url(url) {
                out.push(("store.url", e));
            }
            if self.pool_size == 0 || self.pool_size > 256 {
                out.push(("store.pool_size", "must be between 1 and 256".into()));
            }
            if self.connect_timeout.is_zero() {
                out.push(("store.connect_timeout", "must be above zero (5s is the default)".into()));
            }
            if self.max_size_mb != 0 {
                out.push(("store.max_size_mb", "applies to the SQLite store only; remove it with store.url (cap the database in PostgreSQL instead)".into()));
            }
            if self.check_at_start {
                out.push(("store.check_at_start", "is SQLite's integrity check; remove it with store.url".into()));
            }
        } else if self.password_file.is_some() {
            out.push((
                "store.password_file",
                "is only used with store.url (PostgreSQL); remove it, or set store.url".into(),
            ));
        }
        if let Err(e) = self.password() {
            out.push(("store.password_file", e));
        }
        out
    }
}

/// `[confirm]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfirmConfig {
    /// Flush a batch when its oldest handle was pulled this long ago.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Handles per ConfirmEvent call, 1 to 16.
    pub batch_size: usize,
    /// How long Tencent keeps a handle valid (30 s); older handles are dropped, not sent.
    #[serde(with = "humantime_serde")]
    pub handle_ttl: Duration,
    /// ConfirmEvent calls in flight at once.
    pub concurrency: usize,
}

/// `[pull]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PullConfig {
    /// First delay after a failed call; doubles up to `backoff_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    /// Longest delay between retries of a failing call.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Delay between retries while the credentials are refused (after a first success).
    #[serde(with = "humantime_serde")]
    pub auth_retry: Duration,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `vod_eventd=debug`); `RUST_LOG` overrides it.
    #[serde(skip_serializing)]
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

fn default_credential() -> String {
    "vod-secret-key".into()
}
fn default_signature_method() -> String {
    "HmacSHA256".into()
}
fn default_http_method() -> String {
    "GET".into()
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_long_poll_hold() -> Duration {
    Duration::from_secs(5)
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("/var/lib/vod-eventd/events.db"),
            url: None,
            password_file: None,
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
            retention: None,
            prune_interval: Duration::from_secs(3600),
            max_size_mb: 0,
            check_at_start: false,
        }
    }
}

impl Default for ConfirmConfig {
    fn default() -> Self {
        ConfirmConfig {
            max_delay: Duration::from_secs(1),
            batch_size: MAX_CONFIRM_BATCH,
            handle_ttl: Duration::from_secs(30),
            concurrency: 4,
        }
    }
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            auth_retry: Duration::from_secs(60),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: "text".into() }
    }
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

/// Tencent's endpoint for an API.
pub fn default_endpoint(api: ApiVersion) -> &'static str {
    match api {
        ApiVersion::V2 => "https://vod.api.qcloud.com/v2/index.php",
        ApiVersion::V3 => "https://vod.tencentcloudapi.com/",
    }
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
    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut bad = |key: &str, message: String| issues.push(ConfigIssue { key: key.into(), message, source: None });
        match &self.sources {
            SourcesSetting::List(_) => self.validate_sources(&mut bad),
            _ => validate_vod("vod", &self.vod, &mut bad),
        }
        if matches!(self.sources, SourcesSetting::All) && self.discovery.refresh_interval < Duration::from_secs(1) {
            bad("discovery.refresh_interval", "must be at least 1s".into());
        }
        if !(1..=MAX_CONFIRM_BATCH).contains(&self.confirm.batch_size) {
            bad("confirm.batch_size", format!("must be between 1 and {MAX_CONFIRM_BATCH}"));
        }
        let margin = crate::confirmer::SAFETY_MARGIN;
        if self.confirm.handle_ttl <= self.confirm.max_delay + margin {
            bad(
                "confirm.handle_ttl",
                format!(
                    "must be above confirm.max_delay plus the {margin:?} kept for sending ({:?}), or every handle is dropped unconfirmed; Tencent's window is 30s",
                    self.confirm.max_delay + margin
                ),
            );
        }
        if self.confirm.concurrency == 0 {
            bad("confirm.concurrency", "must be at least 1".into());
        }
        if self.pull.backoff_min.is_zero() || self.pull.backoff_min > self.pull.backoff_max {
            bad("pull.backoff_min", "must be above zero and at most pull.backoff_max".into());
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bad("log.format", format!("`{}` is not text or json", self.log.format));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            bad("log.level", format!("`{}` is not a valid filter: {e}", self.log.level));
        }
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
        for (key, message) in self.store.validate() {
            bad(key, message);
        }
        if let Some(name) = &self.node.name {
            let ok = (1..=64).contains(&name.len())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                bad("node.name", format!("`{name}` must be 1 to 64 letters, digits, `.`, `_` or `-`"));
            }
        }
        if self.dispatch.max_age.is_zero() {
            bad("dispatch.max_age", "must be above zero".into());
        }
        if self.dispatch.poll_interval.is_zero() {
            bad("dispatch.poll_interval", "must be above zero".into());
        }
        if self.dispatch.batch_window > Duration::from_secs(1) {
            bad(
                "dispatch.batch_window",
                "must be at most 1s (20ms is the default; 0 writes every outcome at once)".into(),
            );
        }
        if self.account.check_interval < Duration::from_secs(1) {
            bad("account.check_interval", "must be at least 1s".into());
        }
        match reqwest::Url::parse(&self.account_endpoint()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {}
            _ => bad(
                "account.endpoint",
                format!(
                    "`{}` is not an http(s) URL such as {}",
                    crate::redact::url(&self.account_endpoint()),
                    default_endpoint(ApiVersion::V3)
                ),
            ),
        }
        issues
    }

    /// The endpoint: `vod.endpoint`, or Tencent's for `vod.api`.
    pub fn endpoint(&self) -> String {
        self.vod.endpoint()
    }

    /// The configured sources: the `[[sources]]` entries resolved against `[vod]`, or
    /// `[vod]` alone as [`DEFAULT_SOURCE`]. With `sources = "all"`, none: they are
    /// discovered at run time.
    pub fn sources(&self) -> Vec<Source> {
        match &self.sources {
            SourcesSetting::Vod => vec![Source { name: DEFAULT_SOURCE.into(), vod: self.vod.clone() }],
            SourcesSetting::List(list) => {
                list.iter().map(|s| Source { name: s.name.clone(), vod: s.resolve(&self.vod) }).collect()
            }
            SourcesSetting::All => Vec::new(),
        }
    }

    /// The problems of the `[[sources]]` entries: names, duplicates, and each resolved
    /// source's own settings (keyed `sources[i].KEY`).
    fn validate_sources(&self, bad: &mut impl FnMut(&str, String)) {
        let SourcesSetting::List(list) = &self.sources else { return };
        if list.is_empty() {
            bad("sources", "is empty; add [[sources]] entries, or remove it to pull [vod] alone".into());
        }
        let mut names = std::collections::BTreeMap::new();
        let mut queues = std::collections::BTreeMap::new();
        let mut limits = std::collections::HashMap::new();
        for (i, (entry, source)) in list.iter().zip(self.sources()).enumerate() {
            let key = format!("sources[{i}]");
            if entry.name == crate::alerts::ALERT_SOURCE {
                bad(
                    &format!("{key}.name"),
                    format!("`{}` is reserved for the daemon's own alert events; choose another name", entry.name),
                );
            } else if !valid_source_name(&entry.name) {
                bad(&format!("{key}.name"), format!("`{}` is not a valid name: use letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most 64 characters (e.g. \"prod-eu\")", entry.name));
            }
            if let Some(first) = names.insert(entry.name.clone(), i) {
                bad(
                    &format!("{key}.name"),
                    format!("`{}` is already the name of sources[{first}]; give each source its own name", entry.name),
                );
            }
            if entry.secret_id.is_some()
                && entry.secret_key.is_none()
                && entry.secret_key_file.is_none()
                && entry.secret_key_credential.is_none()
            {
                bad(&format!("{key}.secret_key"), format!("{key} sets its own secret_id, so it needs its own secret_key, secret_key_file or secret_key_credential ([vod]'s key belongs to another SecretId)"));
                continue;
            }
            if let Some(first) = queues.insert(source.queue_key(), i) {
                let app = source
                    .vod
                    .sub_app_id
                    .map_or_else(|| "the default app".to_string(), |id| format!("sub_app_id {id}"));
                bad(&format!("{key}.sub_app_id"), format!("sources[{first}] already pulls {app} with the same secret_id: two pullers on one queue would confirm each other's handles; remove one or change its sub_app_id"));
            }
            let limit = source.vod.rate_limit_per_minute();
            let limiter = (source.vod.secret_id.clone(), source.vod.api);
            match limits.get(&limiter) {
                Some(&(first, first_limit)) if first_limit != limit => {
                    let origin = |j: usize| match (list[j].rate_limit_per_minute, self.vod.rate_limit_per_minute) {
                        (Some(_), _) => format!("sources[{j}].rate_limit_per_minute"),
                        (None, Some(_)) => "vod.rate_limit_per_minute".to_string(),
                        (None, None) => format!("Tencent's default for {}", source.vod.api.as_str()),
                    };
                    bad(&format!("{key}.rate_limit_per_minute"), format!("{limit} ({}) differs from the {first_limit} of sources[{first}] ({}), which uses the same secret_id and api: the sources of one SecretId share one rate limit per action, so give them the same value (or set vod.rate_limit_per_minute once and remove the per-source values)", origin(i), origin(first)));
                }
                Some(_) => {}
                None => {
                    limits.insert(limiter, (i, limit));
                }
            }
            validate_vod(&key, &source.vod, bad);
        }
    }

    /// The API 3.0 endpoint for the account calls: `account.endpoint`, else `vod.endpoint`
    /// with `api = "v3"`, else Tencent's.
    pub fn account_endpoint(&self) -> String {
        match (&self.account.endpoint, self.vod.api) {
            (Some(endpoint), _) => endpoint.clone(),
            (None, ApiVersion::V3) => self.endpoint(),
            (None, ApiVersion::V2) => default_endpoint(ApiVersion::V3).to_string(),
        }
    }

    /// The region: `vod.region`, else `gz` for v2 and none for v3.
    pub fn region(&self) -> Option<String> {
        self.vod.region()
    }

    /// Calls per minute per action: `vod.rate_limit_per_minute`, else Tencent's limit.
    pub fn rate_limit_per_minute(&self) -> u32 {
        self.vod.rate_limit_per_minute()
    }

    /// The signature method named by `vod.signature_method`.
    pub fn signature_method(&self) -> Option<SignatureMethod> {
        self.vod.signature_method()
    }

    /// The secret key: `vod.secret_key`, else `vod.secret_key_file`, else the systemd
    /// credential `vod.secret_key_credential` in `$CREDENTIALS_DIRECTORY`.
    pub fn secret_key(&self) -> Result<SecretString, String> {
        self.vod.secret_key()
    }
}

impl VodConfig {
    /// The endpoint: `endpoint`, or Tencent's for `api`.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone().unwrap_or_else(|| default_endpoint(self.api).to_string())
    }

    /// The region: `region`, else `gz` for v2 and none for v3.
    pub fn region(&self) -> Option<String> {
        match (&self.region, self.api) {
            (Some(r), _) => Some(r.clone()),
            (None, ApiVersion::V2) => Some("gz".into()),
            (None, ApiVersion::V3) => None,
        }
    }

    /// Calls per minute per action: `rate_limit_per_minute`, else Tencent's limit.
    pub fn rate_limit_per_minute(&self) -> u32 {
        self.rate_limit_per_minute.unwrap_or(match self.api {
            ApiVersion::V2 => 1000,
            ApiVersion::V3 => V3_RATE_LIMIT_PER_MINUTE,
        })
    }

    /// The signature method named by `signature_method`.
    pub fn signature_method(&self) -> Option<SignatureMethod> {
        match self.signature_method.as_str() {
            "HmacSHA256" => Some(SignatureMethod::HmacSha256),
            "HmacSHA1" => Some(SignatureMethod::HmacSha1),
            _ => None,
        }
    }

    /// The secret key: `secret_key`, else `secret_key_file`, else the systemd credential
    /// `secret_key_credential` in `$CREDENTIALS_DIRECTORY`.
    pub fn secret_key(&self) -> Result<SecretString, String> {
        if let Some(key) = &self.secret_key {
            if key.expose_secret().trim().is_empty() {
                return Err("is empty; set the API secret key, or remove it and use vod.secret_key_file".into());
            }
            printable(key.expose_secret())?;
            return Ok(key.clone());
        }
        if let Some(file) = &self.secret_key_file {
            return read_secret(file).map_err(|e| format!("vod.secret_key_file {}: {e}", file.display()));
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let file = Path::new(&dir).join(&self.secret_key_credential);
            if !self.secret_key_credential.is_empty() && file.exists() {
                let key = read_secret(&file).map_err(|e| format!("systemd credential {}: {e}", file.display()))?;
                return crate::config_lint::credential_loaded(key, &self.secret_key_credential);
            }
        }
        Err(crate::config_lint::no_secret_key(&self.secret_key_credential))
    }
}

/// The problems of one source's API settings (`[vod]`, or a resolved `[[sources]]` entry),
/// keyed `PREFIX.KEY`.
fn validate_vod(prefix: &str, vod: &VodConfig, bad: &mut impl FnMut(&str, String)) {
    match reqwest::Url::parse(&vod.endpoint()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {}
        _ => {
            let example = default_endpoint(vod.api);
            bad(
                &format!("{prefix}.endpoint"),
                format!("`{}` is not an http(s) URL such as {example}", crate::redact::url(&vod.endpoint())),
            );
        }
    }
    if vod.secret_id.trim().is_empty() {
        bad(&format!("{prefix}.secret_id"), "is empty; set it to your API SecretId (AKID...)".into());
    } else if let Err(e) = printable(&vod.secret_id) {
        bad(&format!("{prefix}.secret_id"), e);
    }
    if let Some(Err(e)) = vod.token.as_ref().map(|t| printable(t.expose_secret())) {
        bad(&format!("{prefix}.token"), e);
    }
    if vod.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
        bad(
            &format!("{prefix}.region"),
            "is empty; for v2 use \"gz\", for v3 e.g. \"ap-guangzhou\" or leave it out".into(),
        );
    }
    if vod.signature_method().is_none() {
        bad(&format!("{prefix}.signature_method"), format!("`{}` is not HmacSHA256 or HmacSHA1", vod.signature_method));
    }
    if !matches!(vod.http_method.as_str(), "GET" | "POST") {
        bad(&format!("{prefix}.http_method"), format!("`{}` is not GET or POST", vod.http_method));
    }
    if vod.request_timeout <= vod.long_poll_hold {
        bad(
                &format!("{prefix}.request_timeout"),
                format!(
                    "must be above the {:?} PullEvent holds an empty long poll (vod.long_poll_hold), or every idle pull times out; 10s is recommended",
                    vod.long_poll_hold
                ),
            );
    }
    if vod.rate_limit_per_minute == Some(0) {
        bad(&format!("{prefix}.rate_limit_per_minute"), "must be at least 1".into());
    }
    if let Err(message) = vod.secret_key() {
        bad(&format!("{prefix}.secret_key"), message);
    }
}

fn read_secret(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let key = text.trim_end_matches(['\n', '\r']);
    if key.is_empty() {
        return Err("the file is empty".into());
    }
    printable(key)?;
    Ok(SecretString::from(key.to_string()))
}

/// Credentials go into signed parameters and HTTP headers, which take printable ASCII
/// only. The message says where the bad character is, never what the value is.
fn printable(value: &str) -> Result<(), String> {
    match value.chars().position(|c| !c.is_ascii() || c.is_ascii_control()) {
        None => Ok(()),
        Some(i) => Err(format!(
            "has a control or non-ASCII character at position {}; copy the value again from the console (Access management > API keys), without line breaks, tabs or typographic characters",
            i + 1
        )),
    }
}

#[cfg(test)]
mod tests {
    use figment::providers::Serialized;

    use super::*;

    fn parse(toml: &str) -> Result<Config, ConfigError> {
        from_figment(Figment::new().merge(Toml::string(toml)), Path::new("test.toml"))
    }

    const MINIMAL: &str = "[vod]\nsecret_id = \"AKID1\"\nsecret_key = \"k\"\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.endpoint(), "https://vod.api.qcloud.com/v2/index.php");
        assert_eq!(c.region().as_deref(), Some("gz"));
        assert_eq!(c.rate_limit_per_minute(), 1000);
        let v3 = parse(&MINIMAL.replace("[vod]\n", "[vod]\napi = \"v3\"\n")).unwrap();
        assert_eq!(
            (v3.endpoint().as_str(), v3.region(), v3.rate_limit_per_minute()),
            ("https://vod.tencentcloudapi.com/", None, 6000)
        );
        assert_eq!(c.signature_method(), Some(SignatureMethod::HmacSha256));
        assert_eq!(c.vod.request_timeout, Duration::from_secs(10));
        assert_eq!(c.confirm.max_delay, Duration::from_secs(1));
        assert_eq!(c.confirm.batch_size, 16);
        assert_eq!(c.store.path, PathBuf::from("/var/lib/vod-eventd/events.db"));
    }

    #[test]
    fn example_config_is_valid() {
        // The example carries no secret key (the packaged unit loads it as a credential).
        let example = include_str!("../config.example.toml").replacen("[vod]\n", "[vod]\nsecret_key = \"k\"\n", 1);
        let c = parse(&example).unwrap();
        assert_eq!(c.confirm.max_delay, ConfirmConfig::default().max_delay);
    }

    #[test]
    fn example_routes_and_handlers_are_valid_once_uncommented() {
        let example = include_str!("../config.example.toml").replacen("[vod]\n", "[vod]\nsecret_key = \"k\"\n", 1);
        let start = example.find("# [[routes]]").unwrap();
        let uncommented: String = example[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
            .filter(|l| !l.contains("key_dir"))
            .map(|l| l.replace("whsec_...", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
            .filter(|l| !l.starts_with("header_files"))
            .collect::<Vec<_>>()
            .join("\n");
        let c = parse(&format!("{}\n{uncommented}", &example[..start])).unwrap();
        assert_eq!(c.routes.len(), 4);
        assert!(c.routes[2].when.is_some(), "the filter example compiles");
        assert_eq!(c.handlers.len(), 3);
        assert_eq!(c.dispatch.retry_schedule, crate::retry::default_schedule());
    }

    #[test]
    fn a_handler_rate_must_look_like_a_rate() {
        let handler = |extra: &str| {
            format!("{MINIMAL}[[routes]]\nevents = [\"*\"]\nhandlers = [\"h\"]\n[handlers.h]\ntype = \"shell\"\ncommand = [\"true\"]\n{extra}\n")
        };
        for bad in ["50", "50/h", "0/s", "x/s"] {
            let err = parse(&handler(&format!("rate = \"{bad}\""))).unwrap_err();
            assert!(err.to_string().contains("`handlers.h.rate`: must look like 50/s or 300/m"), "{bad}: {err}");
        }
        let config = parse(&handler("rate = \"300/m\"\npause_after = 20\nprobe_interval = \"1s\"")).unwrap();
        let h = &config.handlers["h"];
        assert_eq!(h.rate(), Some(crate::handler::Rate { count: 300, per: Duration::from_secs(60) }));
        assert_eq!(h.breaker(), (20, Duration::from_secs(1)));
        let err = parse(&handler("probe_interval = \"0s\"")).unwrap_err();
        assert!(err.to_string().contains("`handlers.h.probe_interval`: must be at least 10ms"), "{err}");
    }

    #[test]
    fn store_url_selects_postgres_and_its_mistakes_are_named_without_the_password() {
        let ok =
            parse(&format!("{MINIMAL}[store]\nurl = \"postgresql://vod:pw@db:5432/vod?sslmode=require\"\n")).unwrap();
        assert_eq!(ok.store.postgres_url(), Some("postgresql://vod:pw@db:5432/vod?sslmode=require"));
        let text = format!(
            "{MINIMAL}[store]\nurl = \"mysql://vod:hunter2@db/vod\"\nmax_size_mb = 5\ncheck_at_start = true\npool_size = 0\n"
        );
        let err = parse(&text).unwrap_err();
        let keys: Vec<_> = err.issues.iter().map(|i| i.key.as_str()).collect();
        for key in ["store.url", "store.max_size_mb", "store.check_at_start", "store.pool_size"] {
            assert!(keys.contains(&key), "{key} not reported in {keys:?}");
        }
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = parse(&format!("{MINIMAL}[store]\nurl = \"postgresql://vod@db/vod?sslmode=on\"\n")).unwrap_err();
        assert!(err.to_string().contains("verify-full"), "{err}");
        let err = parse(&format!("{MINIMAL}[store]\npassword_file = \"/nonexistent\"\n")).unwrap_err();
        assert!(err.to_string().contains("only used with store.url"), "{err}");
        let err = parse(&format!("{MINIMAL}[node]\nname = \"a/b\"\n")).unwrap_err();
        assert!(err.to_string().contains("`node.name`"), "{err}");
        let pinned = "[[routes]]\nevents = [\"*\"]\nhandlers = [\"h\"]\n[handlers.h]\ntype = \"shell\"\ncommand = [\"true\"]\nhosts = [\"b\"]\n";
        let err = parse(&format!("{MINIMAL}[node]\nname = \"a\"\n{pinned}")).unwrap_err();
        assert!(err.to_string().contains("`handlers.h.hosts`: does not name this daemon (node.name = a)"), "{err}");
        assert!(
            parse(&format!("{MINIMAL}[store]\nurl = \"postgresql://v@db/v\"\n[node]\nname = \"a\"\n{pinned}")).is_ok()
        );
    }

    #[test]
    fn routes_must_name_defined_handlers() {
        let err = parse(&format!("{MINIMAL}[[routes]]\nevents = [\"*\"]\nhandlers = [\"nope\"]\n")).unwrap_err();
        assert!(err.to_string().contains("`routes[0].handlers`: `nope` is not defined"), "{err}");
    }

    #[test]
    fn settings_that_break_at_run_time_are_named() {
        let text = "[vod]\napi = \"v3\"\nsecret_id = \"AKID\\u0007x\"\nsecret_key = \"kéy\"\ntoken = \"t\\n\"\nrequest_timeout = \"5s\"\n\
                    [confirm]\nmax_delay = \"1s\"\nhandle_ttl = \"1500ms\"\n\
                    [[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\", \"gone\"]\n\
                    [handlers.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\ntimeout = \"0s\"\n";
        let err = parse(text).unwrap_err();
        let keys: Vec<_> = err.issues.iter().map(|i| i.key.as_str()).collect();
        for key in [
            "vod.secret_id",
            "vod.secret_key",
            "vod.token",
            "vod.request_timeout",
            "confirm.handle_ttl",
            "handlers.hook.timeout",
            "routes[0].handlers",
        ] {
            assert!(keys.contains(&key), "{key} not reported in {keys:?}");
        }
        let text = err.to_string();
        assert!(!text.contains("kéy") && !text.contains("AKID"), "values are never echoed: {text}");
        assert!(text.contains("position 5"), "{text}");
        assert!(parse(&format!("{MINIMAL}request_timeout = \"2s\"\nlong_poll_hold = \"1s\"\n")).is_ok());
    }

    #[test]
    fn a_reload_names_every_setting_it_cannot_apply() {
        let old = parse(MINIMAL).unwrap();
        let reloadable = parse(&format!(
            "{MINIMAL}[store]\nmax_size_mb = 5\n[log]\nlevel = \"debug\"\n[dispatch]\nmax_age = \"1d\"\n\
             [[routes]]\nevents = [\"*\"]\nhandlers = [\"h\"]\n[handlers.h]\ntype = \"drm\"\n"
        ))
        .unwrap();
        assert_eq!(restart_needed(&old, &reloadable), Vec::<String>::new());
        let restart = parse(
            "[vod]\nsecret_id = \"AKID1\"\nsecret_key = \"k2\"\n[shutdown]\ndrain_timeout = \"5s\"\n\
             [store]\nbusy_timeout = \"1s\"\nprune_interval = \"1m\"\n[log]\nformat = \"json\"\n",
        )
        .unwrap();
        assert_eq!(
            restart_needed(&old, &restart),
            ["log.format", "shutdown.drain_timeout", "store.busy_timeout", "store.prune_interval", "vod.secret_key"]
        );
    }

    proptest::proptest! {
        #[test]
        fn any_text_as_a_config_gives_a_config_or_named_issues(text in ".{0,300}") {
            if let Err(e) = parse(&text) {
                proptest::prop_assert!(!e.issues.is_empty());
            }
        }

        #[test]
        fn any_section_value_soup_is_handled(lines in proptest::collection::vec("(vod|store|confirm|pull|log|dispatch)\\.[a-z_]{1,16} = (\"[a-z0-9:/.]{0,12}\"|[0-9]{1,6}|true|\\[\\])", 0..8)) {
            let mut text = String::from(MINIMAL);
            for line in &lines {
                let (section, rest) = line.split_once('.').unwrap();
                text.push_str(&format!("[{section}]\n{rest}\n"));
            }
            let _ = parse(&text);
        }
    }

    #[test]
    fn every_problem_is_named_by_key() {
        let err = parse(
            "[vod]\nsecret_id = \"\"\nsignature_method = \"md5\"\nendpoint = \"ftp://x\"\n[confirm]\nbatch_size = 40\n",
        )
        .unwrap_err();
        let keys: Vec<_> = err.issues.iter().map(|i| i.key.as_str()).collect();
        for key in ["vod.endpoint", "vod.secret_id", "vod.signature_method", "vod.secret_key", "confirm.batch_size"] {
            assert!(keys.contains(&key), "{key} not reported in {keys:?}");
        }
        assert!(err.to_string().lines().all(|l| l.starts_with("config error: test.toml: `")));
    }

    #[test]
    fn missing_and_unknown_keys_are_named() {
        let text = parse("[vod]\nsecret_key = \"k\"\n").unwrap_err().to_string();
        assert!(text.contains("`vod.secret_id`: is required"), "{text}");
        assert!(text.contains("VOD_EVENTD_VOD__SECRET_ID"), "{text}");
        let text = parse("[vod]\nsecret_id = \"x\"\nsecret_key = \"k\"\nsecretkey = \"x\"\n").unwrap_err().to_string();
        assert!(text.contains("`vod.secretkey`: is not a known key"), "{text}");
    }

    #[test]
    fn secret_key_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "s3cret\n").unwrap();
        let fig = Figment::new()
            .merge(Toml::string("[vod]\nsecret_id = \"AKID1\"\n"))
            .merge(Serialized::default("vod.secret_key_file", &file));
        let c = from_figment(fig.clone(), Path::new("t")).unwrap();
        assert_eq!(c.secret_key().unwrap().expose_secret(), "s3cret");
        std::fs::write(&file, "s3cr\x01t\n").unwrap();
        let err = from_figment(fig, Path::new("t")).unwrap_err().to_string();
        assert!(err.contains("`vod.secret_key`") && err.contains("position 5"), "a control character: {err}");
        let fig = Figment::new()
            .merge(Toml::string("[vod]\nsecret_id = \"AKID1\"\nsecret_key_file = \"/nonexistent/key\"\n"));
        let err = from_figment(fig, Path::new("t")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/key"), "{err}");
    }

    #[test]
    fn sources_take_unset_keys_from_vod_and_vod_alone_is_the_default_source() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.sources().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), [DEFAULT_SOURCE]);
        let c = parse(&format!(
            "{MINIMAL}sub_app_id = 1\n[[sources]]\nname = \"prod-a\"\nsub_app_id = 10\n\
             [[sources]]\nname = \"prod-b\"\napi = \"v3\"\n\
             [[sources]]\nname = \"other\"\nsecret_id = \"AKID2\"\nsecret_key = \"k2\"\nsub_app_id = 10\n"
        ))
        .unwrap();
        let sources = c.sources();
        assert_eq!(sources.iter().map(|s| s.vod.sub_app_id).collect::<Vec<_>>(), [Some(10), Some(1), Some(10)]);
        assert_eq!(
            sources[1].vod.endpoint(),
            "https://vod.tencentcloudapi.com/",
            "another api: Tencent's endpoint for it"
        );
        assert_eq!(sources[1].vod.secret_key().unwrap().expose_secret(), "k");
        assert_eq!(
            (sources[2].vod.secret_id.as_str(), sources[2].vod.secret_key().unwrap().expose_secret()),
            ("AKID2", "k2")
        );
        assert!(matches!(parse(&format!("sources = \"all\"\n{MINIMAL}")).unwrap().sources, SourcesSetting::All));
    }

    /// The refusal of `MINIMAL` plus `text`, checked to contain each of `expected`.
    fn refused_with(text: &str, expected: &[&str]) -> String {
        let err = parse(&format!("{MINIMAL}{text}")).unwrap_err().to_string();
        for expected in expected {
            assert!(err.contains(expected), "{expected} not in {err}");
        }
        err
    }

    #[test]
    fn source_mistakes_are_named_with_the_fix() {
        refused_with(
            "[[sources]]\nname = \"a\"\nsub_app_id = 1\n[[sources]]\nname = \"a\"\nsub_app_id = 2\n\
             [[sources]]\nname = \"b c\"\nsub_app_id = 1\n[[sources]]\nname = \"d\"\nsecret_id = \"AKID9\"\n\
             [[sources]]\nname = \"e\"\nsub_app_id = 3\nregion = \"\"\n[[sources]]\nname = \"vod-eventd\"\nsub_app_id = 4\n",
            &[
                "`sources[5].name`: `vod-eventd` is reserved for the daemon's own alert events",
                "`sources[1].name`: `a` is already the name of sources[0]",
                "`sources[2].name`: `b c` is not a valid name",
                "`sources[2].sub_app_id`: sources[0] already pulls sub_app_id 1 with the same secret_id",
                "`sources[3].secret_key`: sources[3] sets its own secret_id",
                "`sources[4].region`: is empty",
            ],
        );
        // One SecretId and API share one limiter: their rates must agree.
        let err = refused_with(
            "rate_limit_per_minute = 600\n[[sources]]\nname = \"a\"\nsub_app_id = 1\n\
             [[sources]]\nname = \"b\"\nsub_app_id = 2\nrate_limit_per_minute = 300\n\
             [[sources]]\nname = \"c\"\nsub_app_id = 3\napi = \"v3\"\nrate_limit_per_minute = 300\n\
             [[sources]]\nname = \"d\"\nsub_app_id = 4\nsecret_id = \"AKID2\"\nsecret_key = \"k2\"\nrate_limit_per_minute = 300\n",
            &[
                "`sources[1].rate_limit_per_minute`: 300 (sources[1].rate_limit_per_minute) differs from the 600 of sources[0] (vod.rate_limit_per_minute), which uses the same secret_id and api",
                "give them the same value (or set vod.rate_limit_per_minute once",
            ],
        );
        assert!(
            !err.contains("sources[2]") && !err.contains("sources[3]"),
            "another api or SecretId: its own limiter: {err}"
        );
        let c = parse(&format!(
            "{MINIMAL}[[sources]]\nname = \"a\"\nsub_app_id = 1\nrate_limit_per_minute = 300\n\
             [[sources]]\nname = \"b\"\nsub_app_id = 2\nrate_limit_per_minute = 300\n"
        ))
        .unwrap();
        assert!(c.sources().iter().all(|s| s.vod.rate_limit_per_minute() == 300));
        let err = parse(&format!("sources = \"some\"\n{MINIMAL}")).unwrap_err().to_string();
        assert!(err.contains("`sources`") && err.contains("is not \"all\""), "{err}");
        let err = parse(&format!("{MINIMAL}[[sources]]\nname = \"a\"\nsecretid = \"x\"\n")).unwrap_err().to_string();
        assert!(err.contains("sources") && err.contains("secretid"), "{err}");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let c =
            parse("[vod]\nsecret_id = \"AKID1\"\nsecret_key = \"very-secret-value\"\ntoken = \"sts-token-value\"\n")
                .unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("very-secret-value") && !debug.contains("sts-token-value"), "{debug}");
    }
}
