//! `[store]`: the SQLite file or the PostgreSQL URL, and the store's own settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::secret::{self, digest, read_secret};

/// `[store]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite file (the default backend).
    pub path: PathBuf,
    /// A PostgreSQL URL (`postgresql://user@host:port/db?sslmode=require`): selects the
    /// shared PostgreSQL store instead of the SQLite file at `path`. May hold the password,
    /// which is never shown.
    #[serde(serialize_with = "digest", deserialize_with = "secret::optional")]
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
    /// Cap the store at this many MiB (0: no cap): the SQLite file, or on PostgreSQL the
    /// daemon's own tables. When full, the daemon stops pulling and confirming until there is
    /// room again (retention, or a larger cap via SIGHUP).
    #[serde(skip_serializing)]
    pub max_size_mb: u64,
    /// Run `vod-eventd store check` before READY=1: on SQLite the integrity check, which reads
    /// the whole file (start-up then takes time in proportion to its size); on PostgreSQL the
    /// schema version and the consistency of the rows.
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

    /// The problems of `[store]`.
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if let Some(url) = self.postgres_url() {
            if let Err(e) = split_postgres_url(url) {
                bad("store.url", e);
            }
            if self.pool_size == 0 || self.pool_size > 256 {
                bad("store.pool_size", "must be between 1 and 256".into());
            }
            if self.connect_timeout.is_zero() {
                bad("store.connect_timeout", "must be above zero (5s is the default)".into());
            }
        } else if self.password_file.is_some() {
            bad("store.password_file", "is only used with store.url (PostgreSQL); remove it, or set store.url".into());
        }
        if let Err(e) = self.password() {
            bad("store.password_file", e);
        }
    }
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

impl StoreConfig {
    /// What `config check` should warn about: a PostgreSQL URL whose host is not on this
    /// machine, with an `sslmode` that does not check the server's certificate (`disable`,
    /// `prefer`, the default, or `require`): DRM data keys travel that connection. `verify-ca`
    /// checks the host name here too (see `store::postgres::tls`), so it is as good as
    /// `verify-full`.
    pub fn warnings(&self) -> Vec<String> {
        let Some(url) = self.postgres_url() else { return Vec::new() };
        let Ok(parsed) = reqwest::Url::parse(url) else { return Vec::new() };
        let query = |name: &str| parsed.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
        let mode = query("sslmode").unwrap_or_else(|| "prefer".into());
        if !matches!(mode.as_str(), "disable" | "prefer" | "require") {
            return Vec::new();
        }
        // libpq's `host=` parameter overrides the URL's host; a path there is a Unix socket.
        let host = match query("host") {
            Some(host) => host,
            None => parsed.host_str().unwrap_or_default().to_string(),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let local = host.is_empty()
            || host.starts_with('/')
            || host.eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if local {
            return Vec::new();
        }
        let what = match mode.as_str() {
            "disable" => "sslmode=disable sends everything in plain text",
            "prefer" if query("sslmode").is_none() => {
                "no sslmode means prefer, which falls back to plain text and checks no certificate"
            }
            "prefer" => "sslmode=prefer falls back to plain text and checks no certificate",
            _ => "sslmode=require encrypts but checks no certificate",
        };
        vec![format!(
            "store.url: {what}, and {host} is not this machine: anyone on the path can read or change what this connection carries, DRM data keys included; add sslmode=verify-full to the URL (with sslrootcert=/path/ca.pem if the server's certificate is from a private CA)"
        )]
    }
}

/// `sslmode` in a PostgreSQL `store.url`, as libpq spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgTls {
    /// `disable`.
    Disable,
    /// `prefer` (the default) or `allow`.
    Prefer,
    /// `require`.
    Require,
    /// `verify-ca` or `verify-full`.
    Verify,
}

impl PgTls {
    /// Reads an `sslmode` value.
    pub fn parse(value: &str) -> Result<PgTls, String> {
        match value {
            "disable" => Ok(PgTls::Disable),
            "prefer" | "allow" => Ok(PgTls::Prefer),
            "require" => Ok(PgTls::Require),
            "verify-ca" | "verify-full" => Ok(PgTls::Verify),
            other => Err(format!("has sslmode=`{other}`; use disable, prefer, require, verify-ca or verify-full")),
        }
    }
}

/// A PostgreSQL `store.url` checked and taken apart: the URL without `sslmode` and
/// `sslrootcert` (which the driver does not spell as libpq does), the TLS mode, and the root
/// certificate file. The message of an error names what is wrong and never the password.
pub fn split_postgres_url(url: &str) -> Result<(String, PgTls, Option<String>), String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("is not a URL ({e}); write postgresql://USER@HOST:PORT/DATABASE"))?;
    if !matches!(parsed.scheme(), "postgresql" | "postgres") {
        return Err(format!(
            "has scheme `{}`; write postgresql://USER@HOST:PORT/DATABASE (or use store.path for SQLite)",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("names no host; write postgresql://USER@HOST:PORT/DATABASE".into());
    }
    if parsed.path().trim_start_matches('/').is_empty() {
        return Err("names no database; write postgresql://USER@HOST:PORT/DATABASE".into());
    }
    let mut mode = PgTls::Prefer;
    let mut root = None;
    let mut rest = parsed.clone();
    rest.set_query(None);
    let mut kept = Vec::new();
    for (k, v) in parsed.query_pairs() {
        match &*k {
            "sslmode" => mode = PgTls::parse(&v)?,
            "sslrootcert" => root = Some(v.into_owned()),
            _ => kept.push((k.into_owned(), v.into_owned())),
        }
    }
    if !kept.is_empty() {
        rest.query_pairs_mut().extend_pairs(kept);
    }
    Ok((rest.to_string(), mode, root))
}
