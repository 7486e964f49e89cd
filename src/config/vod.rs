//! `[vod]`: which API, where and with which credentials; also what every `[[sources]]` entry
//! resolves to, and its checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use vod_protocol::SignatureMethod;

use super::secret::{self, digest, printable, read_secret};
use super::{ApiVersion, Config};

/// Tencent's API 3.0 limit per action (100 calls per second).
pub const V3_RATE_LIMIT_PER_MINUTE: u32 = 6000;

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
    #[serde(default, serialize_with = "digest", deserialize_with = "secret::optional")]
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
    #[serde(default, serialize_with = "digest", deserialize_with = "secret::optional")]
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

/// Tencent's endpoint for an API.
pub fn default_endpoint(api: ApiVersion) -> &'static str {
    match api {
        ApiVersion::V2 => "https://vod.api.qcloud.com/v2/index.php",
        ApiVersion::V3 => "https://vod.tencentcloudapi.com/",
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
                return super::credential::credential_loaded(key, &self.secret_key_credential);
            }
        }
        Err(super::credential::no_secret_key(&self.secret_key_credential))
    }
}

/// The problems of one source's API settings (`[vod]`, or a resolved `[[sources]]` entry),
/// keyed `PREFIX.KEY`.
pub(super) fn validate_vod(prefix: &str, vod: &VodConfig, bad: &mut impl FnMut(&str, String)) {
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

impl Config {
    /// The endpoint: `vod.endpoint`, or Tencent's for `vod.api`.
    pub fn endpoint(&self) -> String {
        self.vod.endpoint()
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
