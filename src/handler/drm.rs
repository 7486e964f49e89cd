//! The DRM key fetcher (legacy HLS encryption): finds the EDKs of a task-flow event — v2:
//! `data.drm.edkList`; API 3.0, whose events carry none: the `#EXT-X-KEY` URIs of the HLS
//! playlists its results name ([`super::hls`]) — calls DescribeDrmDataKey through a
//! [`Batcher`] (concurrent deliveries' EDKs coalesced into calls of up to 10, the API's rate
//! kept client-side) and stores each data key once. With `key_dir`, each key is
//! also written as `<sha256-hex of edk>.key` (16 raw bytes, mode 0600, atomic rename),
//! ready for a key server. Data keys never reach logs, attempt records or webhooks.
//!
//! Key files are written through a temp file created exclusively under a random name
//! (`O_CREAT|O_EXCL`, so a link or file someone placed there is never opened), then renamed
//! over the final name (which replaces a link there rather than following it). A `key_dir`
//! that group or others may write is refused at start and by `config check`: whoever can
//! write it can swap the files a key server reads.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use indexmap::IndexSet;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{hls, Delivery, DrmConfig, Failure, Success};
use crate::api::Clients;
use crate::keyfetch::{Batcher, Fetched, KeyOrigin};
use crate::store::Store;

/// A built DRM key fetcher.
pub struct Drm {
    config: DrmConfig,
    clients: Arc<Clients>,
    store: Store,
    playlists: Playlists,
    batcher: Batcher,
}

/// Reads the EDKs of API 3.0 task flows from their playlists ([`super::hls`]), as the DRM
/// handler does; the key server reads them with the same code and settings.
#[derive(Clone)]
pub struct Playlists {
    settings: hls::FetchSettings,
    http: reqwest::Client,
}

/// Why the EDKs of a task flow's playlists could not be read.
pub use hls::HlsError;

impl Playlists {
    /// A reader with the settings of a `type = "drm"` handler (`allow_http`,
    /// `allow_private`, ...); without one, the defaults (HTTPS, public hosts only).
    pub fn new(config: Option<&DrmConfig>) -> anyhow::Result<Playlists> {
        let defaults;
        let config = match config {
            Some(c) => c,
            None => {
                defaults = DrmConfig::default();
                &defaults
            }
        };
        let settings = hls::FetchSettings {
            timeout: config.playlist_timeout,
            max_bytes: config.playlist_max_bytes,
            allow_http: config.allow_http,
            follow_redirects: config.follow_redirects,
            egress: super::egress::Egress::new(&config.allow_private),
        };
        let http = hls::client(&settings)?;
        Ok(Playlists { settings, http })
    }

    /// The `(edk, keySource)` pairs of the playlists a v3 task-flow event names; `None` for
    /// an event that is not one (v2 events carry their EDKs in `data.drm.edkList`).
    pub async fn edks(&self, body: &Value) -> Option<Result<Vec<hls::Edk>, HlsError>> {
        let urls = hls::playlist_urls(body)?;
        if urls.is_empty() {
            return Some(Ok(Vec::new()));
        }
        Some(hls::edks(&self.http, &self.settings, &urls).await)
    }
}

/// The encryption facts of a task-flow event.
#[derive(Debug, Default, PartialEq)]
pub struct DrmInfo {
    /// EDKs.
    pub edks: Vec<String>,
    /// `keySource`.
    pub key_source: Option<String>,
    /// The encryption template.
    pub definition: Option<i64>,
}

/// Finds the EDKs of a v2 task-flow event: `data.drm {edkList, keySource, definition}`.
pub fn drm_info(body: &Value) -> DrmInfo {
    let drm = &body["data"]["drm"];
    DrmInfo {
        edks: drm["edkList"].as_array().into_iter().flatten().filter_map(|e| e.as_str().map(String::from)).collect(),
        key_source: drm["keySource"].as_str().map(String::from),
        definition: drm["definition"].as_i64(),
    }
}

impl Drm {
    pub(super) fn new(config: &DrmConfig, clients: Arc<Clients>, store: Store) -> anyhow::Result<Drm> {
        let playlists = Playlists::new(Some(config))?;
        let batcher = Batcher::new(store.clone());
        Ok(Drm { config: config.clone(), clients, store, playlists, batcher })
    }

    pub(super) async fn handle(&self, d: &Delivery) -> Result<Success, Failure> {
        let body: Value =
            serde_json::from_str(&d.body).map_err(|_| Failure::permanent("the event body is not JSON"))?;
        let info = match self.playlists.edks(&body).await {
            Some(Ok(found)) if found.is_empty() => {
                return Ok(Success { status: None, excerpt: Some("no encrypted HLS outputs in this task flow".into()) })
            }
            Some(found) => {
                let found = found.map_err(|e| match e {
                    hls::HlsError::Fetch(m) => Failure::transient(m),
                    hls::HlsError::Refused(m) => Failure::permanent(m),
                })?;
                DrmInfo {
                    key_source: found.iter().find_map(|(_, source)| source.clone()),
                    edks: found.into_iter().map(|(edk, _)| edk).collect(),
                    definition: None,
                }
            }
            None => drm_info(&body),
        };
        if info.edks.is_empty() {
            return Ok(Success { status: None, excerpt: Some("no EDKs in this event".into()) });
        }
        self.resolve(d, info).await
    }

    /// Turns EDKs into data keys (those not stored yet) and stores them, through the
    /// batcher shared by every delivery of this handler: concurrent deliveries' EDKs leave
    /// in calls of up to ten.
    async fn resolve(&self, d: &Delivery, info: DrmInfo) -> Result<Success, Failure> {
        let known = self.store.known_edks(info.edks.clone()).await.map_err(|e| Failure::transient(e.to_string()))?;
        let known_set: HashSet<&String> = known.iter().collect();
        let missing: IndexSet<String> = info.edks.iter().filter(|e| !known_set.contains(e)).cloned().collect();
        if let Some(dir) = &self.config.key_dir {
            // A key stored by an earlier attempt (or another delivery) whose file was not
            // written yet.
            for edk in &known {
                self.complete_key_file(dir, edk).await?;
            }
        }
        if missing.is_empty() {
            return Ok(Success {
                status: None,
                excerpt: Some(format!("0 data keys stored, {} already known", known.len())),
            });
        }
        // Under the event's own app and credentials: a key of one app is not another's.
        let client = self.clients.get(&d.source).ok_or_else(|| {
            Failure::transient(format!(
                "source {} is not running, so its DRM keys cannot be fetched; configure it again and the delivery resumes",
                d.source
            ))
        })?;
        let origin = KeyOrigin {
            file_id: d.file_id.clone(),
            key_source: info.key_source.clone(),
            definition: info.definition,
            event_id: d.event_id,
        };
        let asked = missing.into_iter().map(|edk| (edk, origin.clone())).collect();
        let mut added = 0;
        for (edk, outcome) in self.batcher.fetch(&d.source, client, asked).await {
            match outcome {
                Ok(Fetched::Key(dk)) => {
                    added += 1;
                    if let Some(dir) = &self.config.key_dir {
                        write_key_file(dir, &edk, &dk).map_err(|e| key_file_failure(dir, e))?;
                    }
                }
                Ok(Fetched::Stored) => {
                    if let Some(dir) = &self.config.key_dir {
                        self.complete_key_file(dir, &edk).await?;
                    }
                }
                Ok(Fetched::Refused) => {
                    return Err(Failure::permanent(format!(
                        "DescribeDrmDataKey refused EDK {} (not a key of this account and app)",
                        short(&edk)
                    )))
                }
                Err(e) => return Err(Failure { retryable: e.retryable, ..Failure::transient(e.message) }),
            }
        }
        Ok(Success { status: None, excerpt: Some(format!("{added} data keys stored, {} already known", known.len())) })
    }

    /// Writes the key file of a stored key unless it is there.
    async fn complete_key_file(&self, dir: &Path, edk: &str) -> Result<(), Failure> {
        if dir.join(key_file_name(edk)).exists() {
            return Ok(());
        }
        let store = self.store.clone();
        let owned = edk.to_string();
        let dk = tokio::task::spawn_blocking(move || store.get_key(&owned))
            .await
            .map_err(|e| Failure::transient(format!("reading a stored key stopped: {e}")))?
            .map_err(|e| Failure::transient(e.to_string()))?;
        match dk.and_then(|dk| <[u8; 16]>::try_from(dk).ok()) {
            Some(dk) => write_key_file(dir, edk, &dk).map_err(|e| key_file_failure(dir, e)),
            None => Ok(()),
        }
    }
}

fn key_file_failure(dir: &Path, e: std::io::Error) -> Failure {
    Failure::transient(format!("cannot write a key file in {}: {e}", dir.display()))
}

/// The start of an EDK, enough to find it in the event.
fn short(edk: &str) -> String {
    edk.chars().take(12).collect::<String>() + "…"
}

/// The key file name for an EDK: hex SHA-256 of the EDK text, `.key`.
pub fn key_file_name(edk: &str) -> String {
    format!("{}.key", crate::event::hex(&Sha256::digest(edk.as_bytes())))
}

/// Writes the key atomically with mode 0600: a temp file created exclusively under a random
/// name in the same directory, synced, then renamed over the final name.
fn write_key_file(dir: &Path, edk: &str, dk: &[u8; 16]) -> std::io::Result<()> {
    let mut file = tempfile::Builder::new().prefix(".key-").suffix(".tmp").permissions(private()).tempfile_in(dir)?;
    file.write_all(dk)?;
    file.as_file().sync_all()?;
    file.persist(dir.join(key_file_name(edk))).map_err(|e| e.error)?;
    Ok(())
}

fn private() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::Permissions::from_mode(0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v2_edks() {
        let body: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/events-v2/ProcedureStateChanged.json")).unwrap();
        let info = drm_info(&body);
        assert_eq!(info.edks.len(), 1);
        assert_eq!((info.key_source.as_deref(), info.definition), (Some("VodBuildInKMS"), Some(10)));
        assert_eq!(drm_info(&serde_json::json!({"data": {}})), DrmInfo::default());
        // API 3.0 events carry no EDK (their EDKs are read from playlists).
        let v3 = serde_json::json!({"EventType": "ProcedureStateChanged", "ProcedureStateChangeEvent": {"TaskId": "t",
            "EdkList": ["e1"]}});
        assert_eq!(drm_info(&v3), DrmInfo::default());
    }

    #[test]
    fn key_files_are_private_and_exact() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write_key_file(dir.path(), "EDK", &[7; 16]).unwrap();
        let path = dir.path().join(key_file_name("EDK"));
        assert_eq!(std::fs::read(&path).unwrap(), vec![7; 16]);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }

    /// Links placed at the old predictable temp name and at the final name are not followed:
    /// the files they point to are untouched, and the key file is a regular file.
    #[test]
    fn key_files_never_follow_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victims = tempfile::tempdir().unwrap();
        let (victim_tmp, victim_final) = (victims.path().join("tmp-target"), victims.path().join("final-target"));
        std::fs::write(&victim_tmp, "untouched").unwrap();
        std::fs::write(&victim_final, "untouched").unwrap();
        let name = key_file_name("EDK");
        let old_tmp = dir.path().join(format!(".{name}.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim_tmp, &old_tmp).unwrap();
        std::os::unix::fs::symlink(&victim_final, dir.path().join(&name)).unwrap();
        write_key_file(dir.path(), "EDK", &[7; 16]).unwrap();
        assert_eq!(std::fs::read_to_string(&victim_tmp).unwrap(), "untouched");
        assert_eq!(std::fs::read_to_string(&victim_final).unwrap(), "untouched");
        let key = dir.path().join(&name);
        let meta = std::fs::symlink_metadata(&key).unwrap();
        assert!(meta.file_type().is_file(), "the link at the final name was replaced, not followed");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&key).unwrap(), vec![7; 16]);
    }
}
