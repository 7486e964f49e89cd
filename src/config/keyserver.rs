//! `[keyserver]`: `vod-eventd keyserver`, the process that hands data keys to players
//! (where it listens, under which path, how requests are authenticated, CORS, caching and
//! the abuse limits). The daemon itself ignores this section.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::secret;

/// The systemd credential that holds the token secrets, one per line.
pub const TOKEN_SECRETS_CREDENTIAL: &str = "vod-keyserver-token-secrets";
/// The shortest token secret accepted, in bytes.
pub const MIN_TOKEN_SECRET_LEN: usize = 32;

/// How a key request is authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyAuth {
    /// A token minted by the app backend (`token=` in the query).
    #[default]
    Token,
    /// The same token, in a cookie of the key server's domain (`keyserver.cookie`), set by
    /// the app backend; pages on other origins then fetch keys with credentials.
    Cookie,
    /// None: an authenticating proxy in front does it (refused unless `listen` is loopback
    /// or `trust_proxy = true`).
    None,
}

/// `[keyserver]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyserverConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The path of the encryption template's `getKeyUrl`.
    pub path: String,
    /// `token` (default), `cookie` or `none`.
    pub auth: KeyAuth,
    /// With `auth = "cookie"`: the cookie's name.
    pub cookie: String,
    /// A reverse proxy in front: `auth = "none"` is then allowed on any address, and the
    /// client for the rate limit is the last `X-Forwarded-For` entry.
    pub trust_proxy: bool,
    /// Token secrets: the first signs, every one verifies (rotation).
    #[serde(deserialize_with = "secret::list")]
    pub token_secrets: Vec<SecretString>,
    /// A file of token secrets, one per line (the first signs).
    pub token_secret_file: Option<PathBuf>,
    /// Origins (`https://player.example`) whose pages may fetch keys (CORS); none by default.
    pub allow_origins: Vec<String>,
    /// `Cache-Control: private, max-age=…` of a key answer.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Connections open at once, at most; more wait to be accepted.
    pub max_connections: usize,
    /// A client has this long to send its request line and headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Requests per second per client address (0: no limit); above it, 429.
    pub rate_per_client: u32,
    /// Serve over TLS with this PEM certificate chain (with `tls_key`); re-read on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve `/metrics` (requests by outcome, latency) here, apart from the players'
    /// listener, e.g. `127.0.0.1:9465`.
    pub metrics_listen: Option<SocketAddr>,
    /// Fetch a key the store does not hold yet, for a pair a stored event ties together,
    /// with DescribeDrmDataKey (on by default); off: such a pair is `404` until the DRM
    /// handler has stored its key.
    pub fetch_missing: bool,
    /// How long a pair whose EDK Tencent refused is answered `404` without asking again (a
    /// pair no stored event ties: 30 s at most, its event may be on its way).
    #[serde(with = "humantime_serde")]
    pub refused_ttl: Duration,
    /// Refused pairs remembered, at most (the oldest is forgotten first); as many untied ones.
    pub refused_max: usize,
}

impl Default for KeyserverConfig {
    fn default() -> Self {
        KeyserverConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8700)),
            path: "/key".into(),
            auth: KeyAuth::Token,
            cookie: "vod_key_token".into(),
            trust_proxy: false,
            token_secrets: Vec::new(),
            token_secret_file: None,
            allow_origins: Vec::new(),
            max_age: Duration::from_secs(3600),
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            rate_per_client: 50,
            tls_cert: None,
            tls_key: None,
            metrics_listen: None,
            fetch_missing: true,
            refused_ttl: Duration::from_secs(600),
            refused_max: 10_000,
        }
    }
}

impl KeyserverConfig {
    /// The token secrets, the signing one first: `keyserver.token_secrets`, else the lines
    /// of `keyserver.token_secret_file`, else the systemd credential
    /// `vod-keyserver-token-secrets`. The message names where, never a value.
    pub fn secrets(&self) -> Result<Vec<SecretString>, String> {
        self.secrets_in(std::env::var_os("CREDENTIALS_DIRECTORY").as_deref().map(Path::new))
    }

    /// [`KeyserverConfig::secrets`] with the credentials in `credentials` (systemd's
    /// `$CREDENTIALS_DIRECTORY`).
    pub fn secrets_in(&self, credentials: Option<&Path>) -> Result<Vec<SecretString>, String> {
        if !self.token_secrets.is_empty() {
            return Ok(self.token_secrets.clone());
        }
        if let Some(file) = &self.token_secret_file {
            return read_lines(file).map_err(|e| format!("keyserver.token_secret_file {}: {e}", file.display()));
        }
        if let Some(dir) = credentials {
            let file = dir.join(TOKEN_SECRETS_CREDENTIAL);
            if file.exists() {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                if let Some(missing) = text.trim().strip_prefix(super::credential::NOT_LOADED) {
                    return Err(format!(
                        "no token secret: the systemd credential `{TOKEN_SECRETS_CREDENTIAL}` was not loaded because {missing} is missing; write one there (`openssl rand -base64 32 | sudo install -m 0600 /dev/stdin {missing}`), then `systemctl restart vod-eventd-keyserver`"
                    ));
                }
                return read_lines(&file).map_err(|e| format!("systemd credential {}: {e}", file.display()));
            }
        }
        Err(format!(
            "no token secret: set keyserver.token_secret_file (a file of mode 0600, one secret per line, e.g. `openssl rand -base64 32`), or load the systemd credential `{TOKEN_SECRETS_CREDENTIAL}`"
        ))
    }

    /// The problems of `[keyserver]`.
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if !self.path.starts_with('/') || self.path.contains(['?', '#']) || self.path == "/healthz" {
            bad("keyserver.path", "must be a path starting with `/`, without `?` or `#`, and not /healthz".into());
        }
        if self.auth == KeyAuth::None && !self.listen.ip().is_loopback() && !self.trust_proxy {
            bad(
                "keyserver.auth",
                format!(
                    "`none` serves every key to anyone who can reach {}; listen on a loopback address behind an authenticating proxy, or set keyserver.trust_proxy = true if a proxy in front authenticates every request",
                    self.listen
                ),
            );
        }
        let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if self.cookie.is_empty() || !self.cookie.chars().all(token_char) {
            bad("keyserver.cookie", "must be a cookie name: letters, digits and !#$%&'*+-.^_`|~".into());
        }
        if !self.token_secrets.is_empty() && self.token_secret_file.is_some() {
            bad("keyserver.token_secrets", "set token_secrets or token_secret_file, not both".into());
        }
        for (i, s) in self.token_secrets.iter().enumerate() {
            if let Err(e) = check_secret(s) {
                bad(&format!("keyserver.token_secrets[{i}]"), e);
            }
        }
        for (i, origin) in self.allow_origins.iter().enumerate() {
            if let Err(e) = check_origin(origin) {
                bad(&format!("keyserver.allow_origins[{i}]"), e);
            }
        }
        if self.max_connections == 0 {
            bad("keyserver.max_connections", "must be at least 1".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bad("keyserver.tls_cert", "set both tls_cert and tls_key, or neither (TLS in a proxy in front)".into());
        }
        if self.metrics_listen.is_some_and(|m| m == self.listen) {
            bad(
                "keyserver.metrics_listen",
                "must differ from keyserver.listen: players must not read the metrics".into(),
            );
        }
        if self.refused_max == 0 {
            bad("keyserver.refused_max", "must be at least 1".into());
        }
        if self.header_read_timeout.is_zero() {
            bad("keyserver.header_read_timeout", "must be above zero".into());
        }
    }
}

fn check_secret(s: &SecretString) -> Result<(), String> {
    let value = s.expose_secret();
    secret::printable(value)?;
    if value.len() < MIN_TOKEN_SECRET_LEN {
        return Err(format!(
            "is shorter than {MIN_TOKEN_SECRET_LEN} characters; make one with `openssl rand -base64 32`"
        ));
    }
    Ok(())
}

/// An origin exactly as a browser sends it: `scheme://host[:port]`, nothing after.
fn check_origin(origin: &str) -> Result<(), String> {
    let form = "must be an origin as browsers send it, `https://host` or `https://host:port` (no path, no `*`)";
    let url = reqwest::Url::parse(origin).map_err(|_| form.to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.origin().ascii_serialization() != origin {
        return Err(form.into());
    }
    Ok(())
}

fn read_lines(file: &Path) -> Result<Vec<SecretString>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let secrets: Vec<SecretString> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| SecretString::from(l.to_string()))
        .collect();
    if secrets.is_empty() {
        return Err("holds no secret".into());
    }
    for (i, s) in secrets.iter().enumerate() {
        check_secret(s).map_err(|e| format!("secret {} {e}", i + 1))?;
    }
    Ok(secrets)
}
