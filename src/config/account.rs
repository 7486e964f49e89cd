//! `[account]`: reading (and, on request, changing) the app's event configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{default_endpoint, ApiVersion, Config};

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

impl Config {
    /// The API 3.0 endpoint for the account calls: `account.endpoint`, else `vod.endpoint`
    /// with `api = "v3"`, else Tencent's.
    pub fn account_endpoint(&self) -> String {
        match (&self.account.endpoint, self.vod.api) {
            (Some(endpoint), _) => endpoint.clone(),
            (None, ApiVersion::V3) => self.endpoint(),
            (None, ApiVersion::V2) => default_endpoint(ApiVersion::V3).to_string(),
        }
    }

    /// The problems of `[account]`.
    pub(super) fn validate_account(&self, bad: &mut impl FnMut(&str, String)) {
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
    }
}
