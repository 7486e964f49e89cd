//! `sources = "all"`: the account's apps, read with DescribeSubAppIds (API 3.0) with the
//! `[vod]` credentials. Every app whose `Status` is `On` is a source named
//! `app-<SubAppId>`; `Off`, `Destroying` and `Destroyed` apps (the SDK model's other
//! values) are not pulled, so an app that turns off is retired at the next refresh.
//!
//! At start, a refusal of the credentials (or of the CAM permission) is a config problem:
//! the daemon exits 78 ([`Refused`]); any other failure is retried with backoff while the
//! daemon runs without sources and reports itself unhealthy.

use serde::Deserialize;
use serde_json::json;

use crate::api::{ApiError, ErrorClass, V3Client};
use crate::config::{Config, Source};

/// The CAM permission discovery needs.
pub const PERMISSION: &str = "vod:DescribeSubAppIds";

/// What `/healthz` says while discovery found no app to pull.
pub const NO_APP: &str = "no sources: DescribeSubAppIds listed no app with Status On";

/// DescribeSubAppIds refused the `[vod]` credentials before any list of apps was read: a
/// config problem, so the daemon exits 78.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    message: String,
}

/// The refusal to exit with if `e` refuses the credentials or the permission, with the fix
/// (`config` is the config file, for the message).
pub fn refusal(e: &ApiError, config: &str) -> Option<Refused> {
    if e.class() != ErrorClass::Auth {
        return None;
    }
    let message = if crate::account::is_permission_denied(e) {
        format!("sources = \"all\": {e}\nThe [vod] credentials (vod.secret_id) may not list the account's apps: grant {PERMISSION} to this sub-account in CAM, or list the apps as [[sources]] entries in {config} instead of sources = \"all\".")
    } else {
        format!("sources = \"all\": {e}\nDescribeSubAppIds refused the [vod] credentials: check vod.secret_id and vod.secret_key (or vod.secret_key_file) in {config}, that the key is enabled, and that this machine's clock is right.")
    };
    Some(Refused { message })
}

/// DescribeSubAppIds answers at most this many apps per call (the SDK model's `Limit` maximum).
const PAGE: u64 = 200;
/// More apps than this is taken as a paging loop gone wrong, not an account.
const MAX_APPS: usize = 10_000;

/// The `Status` of an app that is pulled.
pub const ENABLED: &str = "On";

/// One `SubAppIdInfo`, as far as discovery reads it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct AppInfo {
    /// `SubAppId`.
    #[serde(rename = "SubAppId")]
    pub sub_app_id: u64,
    /// `SubAppIdName`.
    #[serde(rename = "SubAppIdName", default)]
    pub name: Option<String>,
    /// `Status`: `On`, `Off`, `Destroying`, `Destroyed`.
    #[serde(rename = "Status", default)]
    pub status: Option<String>,
}

#[derive(Deserialize)]
struct Page {
    #[serde(rename = "Response")]
    response: PageBody,
}

#[derive(Deserialize)]
struct PageBody {
    #[serde(rename = "SubAppIdInfoSet", default)]
    set: Option<Vec<AppInfo>>,
    #[serde(rename = "TotalCount", default)]
    total: Option<u64>,
}

/// Every app of the account, page by page.
pub async fn list_apps(client: &V3Client) -> Result<Vec<AppInfo>, ApiError> {
    const ACTION: &str = "DescribeSubAppIds";
    let mut apps = Vec::new();
    loop {
        let body = client.call(ACTION, json!({"Offset": apps.len(), "Limit": PAGE})).await?;
        let page: Page = serde_json::from_slice(&body).map_err(|e| ApiError::malformed(ACTION, &e, &body))?;
        let set = page.response.set.unwrap_or_default();
        let done = set.is_empty()
            || (set.len() as u64) < PAGE
            || page.response.total.is_some_and(|t| t <= (apps.len() + set.len()) as u64);
        apps.extend(set);
        if done || apps.len() >= MAX_APPS {
            return Ok(apps);
        }
    }
}

/// The sources for the enabled apps among `apps`, each `[vod]` with its `SubAppId`.
pub fn sources_for(config: &Config, apps: &[AppInfo]) -> Vec<Source> {
    apps.iter()
        .filter(|a| a.status.as_deref() == Some(ENABLED))
        .map(|a| Source {
            name: Source::discovered_name(a.sub_app_id),
            vod: crate::config::VodConfig { sub_app_id: Some(a.sub_app_id), ..config.vod.clone() },
        })
        .collect()
}
