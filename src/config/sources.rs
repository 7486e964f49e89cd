//! `sources` and `[discovery]`: where events are pulled from (`[[sources]]` entries resolved
//! against `[vod]`, `"all"` apps of the account, or `[vod]` alone), the names they take, and
//! the checks that keep two pullers off one queue and one SecretId on one rate limit.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::secret::{self, digest};
use super::vod::validate_vod;
use super::{ApiVersion, Config, VodConfig, DEFAULT_SOURCE};

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
    #[serde(default, serialize_with = "digest", deserialize_with = "secret::optional")]
    pub secret_key: Option<SecretString>,
    /// A file holding its secret key.
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
    /// The systemd credential holding its secret key.
    #[serde(default)]
    pub secret_key_credential: Option<String>,
    /// An STS token for its credentials.
    #[serde(default, serialize_with = "digest", deserialize_with = "secret::optional")]
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

impl Config {
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

    /// The problems of `sources` (each source's `[vod]` settings) and of `[discovery]`.
    pub(super) fn validate_sources(&self, bad: &mut impl FnMut(&str, String)) {
        match &self.sources {
            SourcesSetting::List(_) => self.validate_source_list(bad),
            _ => validate_vod("vod", &self.vod, bad),
        }
        if matches!(self.sources, SourcesSetting::All) && self.discovery.refresh_interval < Duration::from_secs(1) {
            bad("discovery.refresh_interval", "must be at least 1s".into());
        }
    }

    /// The problems of the `[[sources]]` entries: names, duplicates, and each resolved
    /// source's own settings (keyed `sources[i].KEY`).
    fn validate_source_list(&self, bad: &mut impl FnMut(&str, String)) {
        let SourcesSetting::List(list) = &self.sources else { return };
        if list.is_empty() {
            bad("sources", "is empty; add [[sources]] entries, or remove it to pull [vod] alone".into());
        }
        let mut names = std::collections::BTreeMap::new();
        let mut queues = std::collections::BTreeMap::new();
        let mut limits = std::collections::HashMap::new();
        for (i, (entry, source)) in list.iter().zip(self.sources()).enumerate() {
            let key = format!("sources[{i}]");
            if entry.name == crate::names::ALERT_SOURCE {
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
}
