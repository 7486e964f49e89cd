//! `type = "drm"`: the key directory and, for API 3.0, how playlists are fetched, with their
//! checks (the shared controls are in the parent module; DRM attempts have no timeout key).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{HandlerControls, HandlerType};
use crate::names::ApiVersion;

/// `type = "drm"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrmConfig {
    /// Also write each key to `<dir>/<sha256-hex of edk>.key`.
    #[serde(default)]
    pub key_dir: Option<PathBuf>,
    /// The controls every handler type shares (`concurrency`, `pause_after`, ...).
    #[serde(skip)]
    pub controls: HandlerControls,
    /// API 3.0: time allowed for each playlist request.
    #[serde(default = "default_playlist_timeout", with = "humantime_serde")]
    pub playlist_timeout: Duration,
    /// API 3.0: the largest playlist read.
    #[serde(default = "default_playlist_max_bytes")]
    pub playlist_max_bytes: usize,
    /// API 3.0: fetch `http://` playlist URLs as they are; by default they are fetched over
    /// HTTPS, which VOD's storage domains serve.
    #[serde(default)]
    pub allow_http: bool,
    /// API 3.0: follow redirects when fetching playlists (never from https to http).
    #[serde(default)]
    pub follow_redirects: bool,
    /// API 3.0: playlist hosts (names or IP addresses, as they appear in URLs) that may be
    /// loopback, link-local or private; every other such destination is refused.
    #[serde(default)]
    pub allow_private: Vec<String>,
}

impl Default for DrmConfig {
    /// The defaults of every key: no key directory; playlists over HTTPS from public hosts.
    fn default() -> Self {
        DrmConfig {
            key_dir: None,
            controls: HandlerControls::default(),
            playlist_timeout: default_playlist_timeout(),
            playlist_max_bytes: default_playlist_max_bytes(),
            allow_http: false,
            follow_redirects: false,
            allow_private: Vec::new(),
        }
    }
}

fn default_playlist_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_playlist_max_bytes() -> usize {
    1 << 20
}

impl DrmConfig {
    /// What this handler does on `api`, for `config check`.
    pub fn describe(&self, api: ApiVersion) -> String {
        match api {
            ApiVersion::V2 => {
                "drm: reads the EDKs of task-flow events from data.drm.edkList, resolves them with DescribeDrmDataKey".into()
            }
            ApiVersion::V3 => format!(
                "drm: API 3.0 events carry no EDK; reads them from the #EXT-X-KEY URIs of the HLS playlists task-flow results name ({}, redirects {}, {}), resolves them with DescribeDrmDataKey",
                if self.allow_http { "http:// fetched as given" } else { "http:// fetched over HTTPS" },
                if self.follow_redirects { "followed but never from https to http" } else { "refused" },
                if self.allow_private.is_empty() {
                    "private addresses refused".to_string()
                } else {
                    format!("private addresses refused but for {}", self.allow_private.join(", "))
                },
            ),
        }
    }

    fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        if let Some(dir) = &self.key_dir {
            use std::os::unix::fs::PermissionsExt as _;
            match std::fs::metadata(dir) {
                Ok(meta) if meta.is_dir() && meta.permissions().mode() & 0o022 != 0 => issues.push((
                    "key_dir".into(),
                    format!(
                        "{} is writable by group or others (mode {:04o}), who could replace the key files; chmod 0700 it",
                        dir.display(),
                        meta.permissions().mode() & 0o7777
                    ),
                )),
                Ok(meta) if meta.is_dir() => {}
                _ => issues
                    .push(("key_dir".into(), format!("{} is not a directory; create it (mode 0700)", dir.display()))),
            }
        }
        if self.playlist_timeout.is_zero() {
            issues.push(("playlist_timeout".into(), "must be more than 0 (e.g. \"10s\")".into()));
        }
        if self.allow_private.iter().any(|host| host.trim().is_empty()) {
            issues.push(("allow_private".into(), "names an empty host; list host names or IP addresses".into()));
        }
        if self.playlist_max_bytes == 0 {
            issues.push(("playlist_max_bytes".into(), "must be at least 1".into()));
        }
        issues
    }
}

impl HandlerType for DrmConfig {
    const TYPE: &'static str = "drm";
    const DEFAULT_CONCURRENCY: usize = 2;
    fn validate(&self) -> Vec<(String, String)> {
        DrmConfig::validate(self)
    }
    fn controls_mut(&mut self) -> &mut HandlerControls {
        &mut self.controls
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_key_dir_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = |dir: &Path| DrmConfig {
            key_dir: Some(dir.to_path_buf()),
            ..serde_json::from_value::<DrmConfig>(serde_json::json!({})).unwrap()
        };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(config(dir.path()).validate().is_empty());
        for mode in [0o770, 0o1777, 0o702] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let issues = config(dir.path()).validate();
            assert_eq!(issues.len(), 1, "{mode:o}: {issues:?}");
            assert!(issues[0].1.contains(&format!("is writable by group or others (mode {mode:04o})")), "{issues:?}");
            assert!(issues[0].1.ends_with("chmod 0700 it"), "{issues:?}");
        }
    }
}
