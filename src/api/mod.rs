//! The VOD API clients: v2 ([`V2Client`]: PullEvent/ConfirmEvent, signed exactly as the
//! official v2 SDK does) and API 3.0 ([`V3Client`]: PullEvents/ConfirmEvents,
//! TC3-HMAC-SHA256), behind one [`Client`] so the rest of the daemon does not care which.
//! Both have a client-side rate limit per action, a timeout on every call, and typed
//! errors ([`ApiError`], [`ErrorClass`]).

mod error;
mod limiter;

pub use limiter::LimiterPool;
mod v2;
mod v3;

use std::time::Duration;

pub use error::{ApiError, Code, ErrorClass};
use reqwest::Url;
use secrecy::SecretString;
pub use v2::V2Client;
pub use v3::V3Client;
use vod_protocol::SignatureMethod;

use crate::config::{ApiVersion, Config, VodConfig};

/// One pulled event, as far as it could be read.
#[derive(Debug, Clone)]
pub struct PulledItem {
    /// The handle to confirm (`msgHandle` / `EventHandle`), when present.
    pub handle: Option<String>,
    /// The event as sent: v2 `eventContent` text; v3 the event object without `EventHandle`
    /// (the body VOD's own v3 HTTP callbacks carry). The whole item when it has no content.
    pub content: String,
}

/// How a client signs and sends.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Which API.
    pub api: ApiVersion,
    /// The endpoint URL.
    pub endpoint: Url,
    /// `SecretId`.
    pub secret_id: String,
    /// The secret key.
    pub secret_key: SecretString,
    /// v2 `Region` / v3 `X-TC-Region`.
    pub region: Option<String>,
    /// v2 `SignatureMethod`.
    pub signature_method: SignatureMethod,
    /// v2: POST instead of GET.
    pub post: bool,
    /// STS token (`Token` / `X-TC-Token`).
    pub token: Option<SecretString>,
    /// `SubAppId`.
    pub sub_app_id: Option<u64>,
    /// Client timeout per call.
    pub timeout: Duration,
    /// How long the server holds an empty long poll (`vod.long_poll_hold`).
    pub long_poll_hold: Duration,
    /// Calls per minute per action.
    pub rate_limit_per_minute: u32,
    /// Half of DescribeDrmDataKey's own limit, not all of it: the daemon's `drm` handler and
    /// `vod-eventd keyserver` (two processes on one account) each keep to their half.
    pub drm_halved: bool,
}

impl ClientSettings {
    /// Settings from a validated config (`[vod]`).
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        Self::from_vod(&config.vod)
    }

    /// Settings for one source (`[vod]`, or a resolved `[[sources]]` entry).
    pub fn from_vod(vod: &VodConfig) -> anyhow::Result<Self> {
        Ok(ClientSettings {
            api: vod.api,
            endpoint: Url::parse(&vod.endpoint())?,
            secret_id: vod.secret_id.clone(),
            secret_key: vod.secret_key().map_err(|e| anyhow::anyhow!("secret_key: {e}"))?,
            region: vod.region(),
            signature_method: vod.signature_method().unwrap_or_default(),
            post: vod.http_method == "POST",
            token: vod.token.clone(),
            sub_app_id: vod.sub_app_id,
            timeout: vod.request_timeout,
            long_poll_hold: vod.long_poll_hold,
            rate_limit_per_minute: vod.rate_limit_per_minute(),
            drm_halved: false,
        })
    }

    /// API 3.0 settings with the same credentials, app and timeout, for the account calls
    /// (DescribeEventConfig, ModifyEventConfig), whichever API pulls. A v2 `Region` (`gz`)
    /// is no API 3.0 region, and VOD needs none, so with v2 none is sent.
    pub fn for_account(config: &Config) -> anyhow::Result<Self> {
        Self::for_account_of(config, &config.vod)
    }

    /// Like [`ClientSettings::for_account`], for one source: `account.endpoint`, else the
    /// source's endpoint when it speaks API 3.0, else Tencent's.
    pub fn for_account_of(config: &Config, vod: &VodConfig) -> anyhow::Result<Self> {
        let settings = Self::from_vod(vod)?;
        let endpoint = match (&config.account.endpoint, vod.api) {
            (Some(endpoint), _) => endpoint.clone(),
            (None, ApiVersion::V3) => vod.endpoint(),
            (None, ApiVersion::V2) => crate::config::default_endpoint(ApiVersion::V3).to_string(),
        };
        let endpoint = Url::parse(&endpoint)?;
        Ok(match settings.api {
            ApiVersion::V3 => ClientSettings { endpoint, ..settings },
            ApiVersion::V2 => ClientSettings {
                api: ApiVersion::V3,
                endpoint,
                region: None,
                rate_limit_per_minute: crate::config::V3_RATE_LIMIT_PER_MINUTE,
                ..settings
            },
        })
    }

    /// A fingerprint of these credentials (SecretId and key), for remembering in the store
    /// that they once worked: an HMAC of the SecretId under the key, which reveals neither.
    pub fn credentials_fingerprint(&self) -> String {
        use hmac::Mac as _;
        use secrecy::ExposeSecret as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.secret_key.expose_secret().as_bytes())
            .expect("HMAC takes any key length");
        mac.update(b"vod-eventd credentials\0");
        mac.update(self.secret_id.as_bytes());
        crate::event::hex(&mac.finalize().into_bytes()[..16])
    }

    /// `host[:port]` as the `Host` header carries it, which is what both APIs sign.
    fn host(&self) -> anyhow::Result<String> {
        match (self.endpoint.host_str(), self.endpoint.port()) {
            (Some(h), Some(p)) => Ok(format!("{h}:{p}")),
            (Some(h), None) => Ok(h.to_string()),
            (None, _) => anyhow::bail!("vod.endpoint has no host"),
        }
    }

    fn http_client(&self) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("vod-eventd/", env!("CARGO_PKG_VERSION")))
            .build()?)
    }

    fn transport_error(&self, action: &'static str, e: reqwest::Error) -> ApiError {
        if e.is_timeout() {
            ApiError::Timeout { action, timeout: self.timeout }
        } else {
            // The URL of a v2 GET carries the signed query (and a Token, if any): never log it.
            ApiError::Transport { action, source: e.without_url() }
        }
    }
}

/// The clients of the running sources, by source name, for handlers that call the API
/// about an event: DRM keys are fetched with the event's own source, so under its
/// `SubAppId` and credentials. Sources come and go (discovery, reload), hence the lock.
#[derive(Default)]
pub struct Clients {
    by_source: std::sync::RwLock<std::collections::BTreeMap<String, std::sync::Arc<Client>>>,
}

impl Clients {
    /// Registers (or replaces) the client of a source.
    pub fn insert(&self, source: &str, client: std::sync::Arc<Client>) {
        self.by_source.write().expect("clients lock poisoned").insert(source.to_string(), client);
    }

    /// Forgets a retired source's client.
    pub fn remove(&self, source: &str) {
        self.by_source.write().expect("clients lock poisoned").remove(source);
    }

    /// The client of a running source.
    pub fn get(&self, source: &str) -> Option<std::sync::Arc<Client>> {
        self.by_source.read().expect("clients lock poisoned").get(source).cloned()
    }
}

/// A client for either API.
pub enum Client {
    /// The v2 server API.
    V2(V2Client),
    /// API 3.0.
    V3(V3Client),
}

impl Client {
    /// The client `settings.api` asks for.
    pub fn new(settings: ClientSettings) -> anyhow::Result<Client> {
        Ok(match settings.api {
            ApiVersion::V2 => Client::V2(V2Client::new(settings)?),
            ApiVersion::V3 => Client::V3(V3Client::new(settings)?),
        })
    }

    /// A client for `settings` whose rate limit is shared, through `pool`, with every other
    /// client of the same SecretId and API.
    pub fn shared(settings: ClientSettings, pool: &LimiterPool) -> anyhow::Result<Client> {
        let limiter = pool.get(&settings);
        Ok(match settings.api {
            ApiVersion::V2 => Client::V2(V2Client::with_limiter(settings, limiter)?),
            ApiVersion::V3 => Client::V3(V3Client::with_limiter(settings, limiter)?),
        })
    }

    /// The app (`SubAppId`) this client calls for.
    pub fn sub_app_id(&self) -> Option<u64> {
        match self {
            Client::V2(c) => c.sub_app_id(),
            Client::V3(c) => c.sub_app_id(),
        }
    }

    /// Which API this client speaks.
    pub fn api(&self) -> ApiVersion {
        match self {
            Client::V2(_) => ApiVersion::V2,
            Client::V3(_) => ApiVersion::V3,
        }
    }

    /// Long-polls for events; an empty queue is `Ok(vec![])`.
    pub async fn pull(&self) -> Result<Vec<PulledItem>, ApiError> {
        match self {
            Client::V2(c) => c.pull_event().await,
            Client::V3(c) => c.pull_events().await,
        }
    }

    /// Confirms up to 16 handles.
    pub async fn confirm(&self, handles: &[String]) -> Result<(), ApiError> {
        match self {
            Client::V2(c) => c.confirm_event(handles).await,
            Client::V3(c) => c.confirm_events(handles).await,
        }
    }

    /// Turns up to 10 EDKs into `(edk, base64 data key)` pairs.
    pub async fn describe_drm_data_key(&self, edks: &[String]) -> Result<Vec<(String, String)>, ApiError> {
        match self {
            Client::V2(c) => c.describe_drm_data_key(edks).await,
            Client::V3(c) => c.describe_drm_data_key(edks).await,
        }
    }
}
