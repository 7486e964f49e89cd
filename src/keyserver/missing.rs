//! Keys the store does not hold yet: a pair (fileId, EDK) that a stored event ties together
//! (v2: `data.drm.edkList` beside `data.fileId`; API 3.0: the EDKs of the playlists of the
//! file's task flow, read here with the DRM handler's code and settings when it has not
//! read them yet) is fetched at once with DescribeDrmDataKey under that event's source,
//! stored, and served. Calls go through a [`Batcher`]: concurrent requests for one EDK make
//! one call, concurrent misses leave in calls of up to ten, and half of DescribeDrmDataKey's
//! limit is kept (v2 50 calls/min, API 3.0 10/s); the daemon, seeing `[keyserver]` with
//! `fetch_missing`, keeps its `drm` handler to the other half, so the two processes
//! together stay within the account's limit.
//!
//! A pair whose EDK Tencent refuses is remembered for `keyserver.refused_ttl` in a cache of
//! at most `keyserver.refused_max` pairs: a flood of bogus requests costs at most one call
//! per distinct pair. A pair no stored event ties is remembered too (at most as many more),
//! for [`UNTIED_TTL`] at most: its event may be on its way (a player can ask for a key as
//! soon as the task flow wrote its playlist, before the daemon has pulled the event), and it
//! costs no call anyway.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::cache::TtlCache;
use crate::api::{Client, ClientSettings, LimiterPool};
use crate::config::{Config, KeyserverConfig, Source, VodConfig};
use crate::handler::HandlerConfig;
use crate::handler::{drm_info, HlsError, Playlists};
use crate::keyfetch::{Batcher, Fetched, KeyOrigin};
use crate::store::{EventFilter, Store};

/// Task-flow events of one file looked at, newest first, at most.
const EVENTS_PER_FILE: u32 = 20;
/// How long the EDKs read from an event's playlists are kept, and for how many events.
const PLAYLIST_TTL: Duration = Duration::from_secs(60);
const PLAYLIST_EVENTS: usize = 1_000;
/// How long a pair no stored event ties is answered `404` without looking again, at most.
pub const UNTIED_TTL: Duration = Duration::from_secs(30);
/// Clients kept, one per source, at most.
const MAX_CLIENTS: usize = 1_000;

/// What the key server answers for a pair the store has no key for.
#[derive(PartialEq, Eq)]
pub enum Found {
    /// Fetched now (or by a concurrent request): the 16 bytes.
    Key(Vec<u8>),
    /// No stored event ties the pair, or Tencent refused the EDK: 404.
    Unknown,
    /// Tencent or the store could not be reached: 503 with `Retry-After`.
    Unavailable,
}

/// Finds and fetches missing keys.
pub struct Missing {
    config: Config,
    store: Store,
    batcher: Batcher,
    limiters: LimiterPool,
    clients: Mutex<BTreeMap<String, Arc<Client>>>,
    playlists: Playlists,
    refused: Mutex<TtlCache<(String, String), ()>>,
    untied: Mutex<TtlCache<(String, String), ()>>,
    read: Mutex<TtlCache<i64, PlaylistEdks>>,
}

/// The `(edk, keySource)` pairs an event's playlists name.
type PlaylistEdks = Arc<Vec<(String, Option<String>)>>;

/// The event that ties a pair, and where its key is fetched.
struct Tie {
    source: String,
    sub_app_id: Option<i64>,
    origin: KeyOrigin,
}

impl Missing {
    /// A fetcher for the key server of `config` (its sources and its first DRM handler's
    /// playlist settings).
    pub fn new(config: &Config, section: &KeyserverConfig, store: Store) -> anyhow::Result<Missing> {
        let drm = config.handlers.values().find_map(|h| match h {
            HandlerConfig::Drm(c) => Some(c),
            _ => None,
        });
        Ok(Missing {
            config: config.clone(),
            batcher: Batcher::new(store.clone()),
            store,
            limiters: LimiterPool::default(),
            clients: Mutex::default(),
            playlists: Playlists::new(drm)?,
            refused: Mutex::new(TtlCache::new(section.refused_ttl, section.refused_max)),
            untied: Mutex::new(TtlCache::new(section.refused_ttl.min(UNTIED_TTL), section.refused_max)),
            read: Mutex::new(TtlCache::new(PLAYLIST_TTL, PLAYLIST_EVENTS)),
        })
    }

    /// The key of a pair the store holds no key for.
    pub async fn find(&self, file_id: &str, edk: &str) -> Found {
        let pair = (file_id.to_string(), edk.to_string());
        let remembered = self.refused.lock().expect("refused cache lock").get(&pair).is_some()
            || self.untied.lock().expect("untied cache lock").get(&pair).is_some();
        if remembered {
            tracing::debug!(file_id, edk = %super::short(edk), "A pair remembered as unknown or refused.");
            return Found::Unknown;
        }
        let tie = match self.tie(file_id, edk).await {
            Ok(Some(tie)) => tie,
            Ok(None) => {
                tracing::debug!(file_id, edk = %super::short(edk), "No stored event ties this file and EDK; remembered.");
                self.untied.lock().expect("untied cache lock").insert(pair, ());
                return Found::Unknown;
            }
            Err(()) => return Found::Unavailable,
        };
        let client = match self.client(&tie.source, tie.sub_app_id) {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(source = %tie.source, "A missing key cannot be fetched: {e:#}");
                return Found::Unavailable;
            }
        };
        let outcome = self.batcher.fetch(&tie.source, client, vec![(edk.to_string(), tie.origin)]).await;
        match outcome.into_iter().next().map(|(_, o)| o) {
            Some(Ok(Fetched::Key(dk))) => Found::Key(dk.to_vec()),
            Some(Ok(Fetched::Stored)) => match self.store.key_for(pair.0, pair.1).await {
                Ok(Some(dk)) => Found::Key(dk),
                Ok(None) => Found::Unknown,
                Err(e) => {
                    tracing::warn!(error = %e, "Key server: the store does not answer.");
                    Found::Unavailable
                }
            },
            Some(Ok(Fetched::Refused)) => self.refuse(pair, "DescribeDrmDataKey refused the EDK"),
            Some(Err(e)) => {
                tracing::warn!(source = %tie.source, error = %e, "A missing key could not be fetched.");
                Found::Unavailable
            }
            None => Found::Unavailable,
        }
    }

    fn refuse(&self, pair: (String, String), why: &str) -> Found {
        tracing::debug!(file_id = %pair.0, edk = %super::short(&pair.1), "{why}; remembered.");
        self.refused.lock().expect("refused cache lock").insert(pair, ());
        Found::Unknown
    }

    /// The newest stored task-flow event of `file_id` that names `edk`. `Err` when the store
    /// or a playlist host cannot be read (logged).
    async fn tie(&self, file_id: &str, edk: &str) -> Result<Option<Tie>, ()> {
        let store = self.store.clone();
        let filter = EventFilter {
            event_type: Some("ProcedureStateChanged".into()),
            file_id: Some(file_id.to_string()),
            limit: EVENTS_PER_FILE,
            ..Default::default()
        };
        let events = tokio::task::spawn_blocking(move || store.list_events(&filter))
            .await
            .map_err(|e| tracing::warn!("Key server: reading events stopped: {e}"))?
            .map_err(|e| tracing::warn!(error = %e, "Key server: the store does not answer."))?;
        for event in events {
            let Ok(body) = serde_json::from_str::<Value>(&event.content) else { continue };
            let (named, key_source, definition) = if body.get("ProcedureStateChangeEvent").is_some() {
                if body["ProcedureStateChangeEvent"]["FileId"].as_str() != Some(file_id) {
                    continue;
                }
                let found = self.playlist_edks(event.id, &body).await?;
                match found.iter().find(|(e, _)| e == edk) {
                    Some((_, source)) => (true, source.clone(), None),
                    None => (false, None, None),
                }
            } else {
                if body["data"]["fileId"].as_str() != Some(file_id) {
                    continue;
                }
                let info = drm_info(&body);
                (info.edks.iter().any(|e| e == edk), info.key_source, info.definition)
            };
            if named {
                let origin =
                    KeyOrigin { file_id: Some(file_id.to_string()), key_source, definition, event_id: event.id };
                return Ok(Some(Tie { source: event.source, sub_app_id: event.sub_app_id, origin }));
            }
        }
        Ok(None)
    }

    /// The EDKs of a v3 event's playlists, read once a minute at most per event.
    async fn playlist_edks(&self, event_id: i64, body: &Value) -> Result<PlaylistEdks, ()> {
        if let Some(found) = self.read.lock().expect("playlist cache lock").get(&event_id) {
            return Ok(found);
        }
        let found = match self.playlists.edks(body).await {
            None => Vec::new(),
            Some(Ok(found)) => found,
            Some(Err(HlsError::Refused(m))) => {
                tracing::info!(event_id, "Key server: the playlists of a task flow are refused: {m}");
                Vec::new()
            }
            Some(Err(HlsError::Fetch(m))) => {
                tracing::warn!(event_id, "Key server: the playlists of a task flow cannot be read now: {m}");
                return Err(());
            }
        };
        let found = Arc::new(found);
        self.read.lock().expect("playlist cache lock").insert(event_id, found.clone());
        Ok(found)
    }

    /// The client of `source` (a configured source, or one the daemon discovered), whose
    /// limiter is shared by every source of the same credential.
    fn client(&self, source: &str, sub_app_id: Option<i64>) -> anyhow::Result<Arc<Client>> {
        if let Some(client) = self.clients.lock().expect("clients lock").get(source) {
            return Ok(client.clone());
        }
        let vod = self.vod_of(source, sub_app_id)?;
        // Half of DescribeDrmDataKey's limit: the daemon's drm handler keeps to the other half.
        let settings = ClientSettings { drm_halved: true, ..ClientSettings::from_vod(&vod)? };
        let client = Arc::new(Client::shared(settings, &self.limiters)?);
        let mut clients = self.clients.lock().expect("clients lock");
        if clients.len() < MAX_CLIENTS {
            clients.insert(source.to_string(), client.clone());
        }
        Ok(client)
    }

    fn vod_of(&self, source: &str, sub_app_id: Option<i64>) -> anyhow::Result<VodConfig> {
        if let Some(found) = self.config.sources().into_iter().find(|s| s.name == source) {
            return Ok(found.vod);
        }
        // `sources = "all"`: the daemon named it after the app it discovered.
        match sub_app_id.and_then(|id| u64::try_from(id).ok()) {
            Some(id) if Source::discovered_name(id) == source => {
                Ok(VodConfig { sub_app_id: Some(id), ..self.config.vod.clone() })
            }
            _ => anyhow::bail!("source {source} is not in this config"),
        }
    }

    /// Pairs remembered as refused by Tencent (live or expired, at most `refused_max`).
    pub fn refused_len(&self) -> usize {
        self.refused.lock().expect("refused cache lock").len()
    }
}
