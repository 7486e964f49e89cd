//! Realistic events of every documented type, for either API, made from the documented
//! samples with fresh ids, so that every generated event is distinct content (as real
//! events are) while keeping the shapes Tencent sends, quirks included (numeric
//! `version`, string `status`, null per-type members in v3, ...).
//!
//! API 3.0 events come from the documented samples and from one fixture per `EventContent`
//! member of the official SDK model (`fixtures/v3/sdk/`, written by
//! `tests/py/gen_v3_fixtures.py` from the model itself, checked against it by
//! `tests/py/check_v3_fixtures.py`). Every other event also carries the other members as
//! `null`, as the model allows; whether the service sends them or leaves them out is not
//! documented, so both are served.
//!
//! Legacy HLS encryption on API 3.0: no v3 event carries an EDK; they are in the
//! `#EXT-X-KEY` URIs of the playlists VOD writes. Output URLs on [`MEDIA_BASE`] ending in
//! `.m3u8` get playlists (a name starting `master.` a master playlist leading to two media
//! playlists), each media playlist encrypted under a fresh EDK; the emulator serves them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use rand::Rng;
use serde_json::Value;

/// The documented sample of each v3 event type (name, JSON text, without `EventHandle`).
pub const V3_TEMPLATES: &[(&str, &str)] = &[
    ("NewFileUpload", include_str!("../fixtures/v3/NewFileUpload.json")),
    ("ProcedureStateChanged", include_str!("../fixtures/v3/ProcedureStateChanged.json")),
    ("TranscodeComplete", include_str!("../fixtures/v3/TranscodeComplete.json")),
    ("CreateSnapshotByTimeOffsetComplete", include_str!("../fixtures/v3/CreateSnapshotByTimeOffsetComplete.json")),
    ("FileDeleted", include_str!("../fixtures/v3/FileDeleted.json")),
    ("PullComplete", include_str!("../fixtures/v3/PullComplete.json")),
];

/// One event per `EventContent` member of the SDK model (with an `EventHandle` to drop).
pub const V3_SDK_FIXTURES: &[&str] = &[
    include_str!("../fixtures/v3/sdk/AigcHunyuan3DCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/AigcImageCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/AigcVideoCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/ClipCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/ComplexAdaptiveDynamicStreamingCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/ComposeMediaCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/ConcatCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/CreateAigcAdvancedCustomElementCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/CreateAigcCustomVoiceCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/CreateImageSpriteCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/DescribeAigcFaceInfoAsyncCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/DescribeFileAttributesCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/EditMediaCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/ExtractBlindWatermarkComplete.json"),
    include_str!("../fixtures/v3/sdk/ExtractCopyRightWatermarkCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/ExtractTraceWatermarkCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/FileDeleteEvent.json"),
    include_str!("../fixtures/v3/sdk/FileUploadEvent.json"),
    include_str!("../fixtures/v3/sdk/MediaCastStatusChangedEvent.json"),
    include_str!("../fixtures/v3/sdk/PersistenceCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/ProcedureStateChangeEvent.json"),
    include_str!("../fixtures/v3/sdk/ProcessImageAsyncCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/ProcessMediaByMPSCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/PullCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/QualityEnhanceCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/QualityInspectCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/RebuildMediaCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/ReduceMediaBitrateCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/RemoveWatermarkCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/RestoreMediaCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/ReviewAudioVideoCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/SceneAigcImageCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/SnapshotByTimeOffsetCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/SplitMediaCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/TranscodeCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/WechatMiniProgramPublishCompleteEvent.json"),
    include_str!("../fixtures/v3/sdk/WechatPublishCompleteEvent.json"),
];

/// The placeholder host of media URLs the emulator serves (replaced by its own address).
pub const MEDIA_BASE: &str = "http://media.emulator.invalid";

/// The documented sample of each v2 event type (file name, JSON text).
pub const TEMPLATES: &[(&str, &str)] = &[
    ("NewFileUpload", include_str!("../fixtures/NewFileUpload.json")),
    ("NewFileUpload.with-metadata", include_str!("../fixtures/NewFileUpload.with-metadata.json")),
    ("ProcedureStateChanged", include_str!("../fixtures/ProcedureStateChanged.json")),
    ("TranscodeComplete", include_str!("../fixtures/TranscodeComplete.json")),
    ("TranscodeComplete.failed", include_str!("../fixtures/TranscodeComplete.failed.json")),
    ("PullComplete", include_str!("../fixtures/PullComplete.json")),
    ("ConcatComplete", include_str!("../fixtures/ConcatComplete.json")),
    ("ClipComplete", include_str!("../fixtures/ClipComplete.json")),
    ("CreateImageSpriteComplete", include_str!("../fixtures/CreateImageSpriteComplete.json")),
    ("CreateSnapshotByTimeOffsetComplete", include_str!("../fixtures/CreateSnapshotByTimeOffsetComplete.json")),
    ("FileDeleted", include_str!("../fixtures/FileDeleted.json")),
    ("PorncheckComplete", include_str!("../fixtures/PorncheckComplete.json")),
];

/// Whether a key's string value is a file id (`fileId`, `FileId`, `SrcFileId`, `LastFrameFileId`, ...).
fn is_file_id_key(key: &str) -> bool {
    key.ends_with("FileId") || key.ends_with("fileId") || key == "Vid"
}
/// Keys whose values are arrays of file ids.
const FILE_ID_LIST_KEYS: &[&str] = &["FileIdSet"];
/// Whether a key's string value is a task id (`<prefix>-<hex>`): `vodTaskId`, `TaskId`, ...
fn is_task_id_key(key: &str) -> bool {
    key.ends_with("TaskId") || key == "CastId"
}
/// Keys whose values are arrays of EDKs.
const EDK_LIST_KEYS: &[&str] = &["edkList", "EdkList"];

/// Which API's event shapes to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// v2 `{version, eventType, data}`.
    #[default]
    V2,
    /// v3 `{EventType, <Type>Event: {...}}`.
    V3,
}

fn templates(api: Api) -> &'static [(&'static str, &'static str)] {
    match api {
        Api::V2 => TEMPLATES,
        Api::V3 => V3_TEMPLATES,
    }
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A generated event and the DRM keys it carries.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The `eventContent` JSON text.
    pub content: String,
    /// `(edk, 16-byte data key)` for every EDK in the event or its playlists.
    pub keys: Vec<(String, [u8; 16])>,
    /// `(path under MEDIA_BASE, text)` of every playlist the event's outputs name.
    pub playlists: Vec<(String, String)>,
}

/// How many v3 templates there are: the documented samples, then one per SDK member.
fn template_count(api: Api) -> usize {
    match api {
        Api::V2 => TEMPLATES.len(),
        Api::V3 => V3_TEMPLATES.len() + V3_SDK_FIXTURES.len(),
    }
}

fn template(api: Api, i: usize) -> &'static str {
    match api {
        Api::V2 => TEMPLATES[i].1,
        Api::V3 if i < V3_TEMPLATES.len() => V3_TEMPLATES[i].1,
        Api::V3 => V3_SDK_FIXTURES[i - V3_TEMPLATES.len()],
    }
}

/// Generates event `n` of a realistic mix: every template in turn.
pub fn generate(api: Api, n: u64) -> Generated {
    let count = template_count(api) as u64;
    let mut g = generate_from(template(api, (n % count) as usize));
    if api == Api::V3 && (n / count) % 2 == 1 {
        g.content = with_null_members(&g.content);
    }
    g
}

/// Generates an event of the named template (`"ProcedureStateChanged"`, or for API 3.0 an
/// SDK member such as `"SplitMediaCompleteEvent"`), if it exists.
pub fn generate_type(api: Api, name: &str) -> Option<Generated> {
    let documented = templates(api).iter().find(|(n, _)| *n == name).map(|(_, text)| *text);
    let sdk = || (api == Api::V3).then(|| V3_SDK_FIXTURES.iter().find(|f| sdk_member(f) == name).copied())?;
    documented.or_else(sdk).map(generate_from)
}

/// The per-type member of an SDK fixture.
pub fn sdk_member(fixture: &str) -> String {
    let value: Value = serde_json::from_str(fixture).expect("fixtures are valid JSON");
    value
        .as_object()
        .and_then(|m| m.keys().find(|k| !matches!(k.as_str(), "EventHandle" | "EventType")).cloned())
        .unwrap_or_default()
}

/// The event with every SDK member it lacks added as `null`.
fn with_null_members(content: &str) -> String {
    let mut value: Value = serde_json::from_str(content).expect("generated JSON");
    if let Value::Object(map) = &mut value {
        for member in V3_SDK_FIXTURES.iter().map(|f| sdk_member(f)) {
            map.entry(member).or_insert(Value::Null);
        }
    }
    serde_json::to_string(&value).expect("serialisable")
}

fn generate_from(template: &str) -> Generated {
    let mut value: Value = serde_json::from_str(template).expect("fixtures are valid JSON");
    if let Value::Object(map) = &mut value {
        map.remove("EventHandle");
    }
    let mut ids = HashMap::new();
    let mut keys = Vec::new();
    collect_ids(&value, &mut ids);
    if ids.is_empty() {
        // Nothing names this event (ProcessImageAsyncCompleteEvent in the SDK model): vary its
        // first string value so that generated events stay distinct content.
        if let Some(first) = first_string(&mut value) {
            let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
            first.push_str(&format!("-{n}"));
        }
    }
    rewrite(&mut value, &ids, &mut keys);
    let playlists = playlists_for(&value, &mut keys);
    Generated { content: serde_json::to_string(&value).expect("serialisable"), keys, playlists }
}

/// Playlists for every `.m3u8` URL on [`MEDIA_BASE`] in the event: a `master.` name gets a
/// master playlist and two media playlists beside it; every media playlist is encrypted
/// (legacy HLS encryption, `#EXT-X-KEY` with the EDK in its URI) under one fresh key.
fn playlists_for(event: &Value, keys: &mut Vec<(String, [u8; 16])>) -> Vec<(String, String)> {
    let mut urls = Vec::new();
    collect_media_urls(event, &mut urls);
    if urls.is_empty() {
        return Vec::new();
    }
    let (edk, dk) = fresh_key();
    keys.push((edk.clone(), dk));
    let mut out = Vec::new();
    for path in urls {
        let file_id = path.split('/').rev().nth(1).unwrap_or("0").to_string();
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
        match name.strip_prefix("master.") {
            Some(stem) => {
                let stem = stem.trim_end_matches(".m3u8");
                let variants = [format!("{stem}.f210.m3u8"), format!("{stem}.f220.m3u8")];
                let mut master = String::from("#EXTM3U\n#EXT-X-VERSION:3\n");
                for (i, v) in variants.iter().enumerate() {
                    master.push_str(&format!(
                        "#EXT-X-STREAM-INF:BANDWIDTH={},RESOLUTION=640x480\n{v}\n",
                        500_000 * (i + 1)
                    ));
                    out.push((format!("{dir}/{v}"), media_playlist(&file_id, &edk)));
                }
                out.push((path.clone(), master));
            }
            None => out.push((path.clone(), media_playlist(&file_id, &edk))),
        }
    }
    out
}

fn media_playlist(file_id: &str, edk: &str) -> String {
    let edk: String = form_urlencoded::byte_serialize(edk.as_bytes()).collect();
    format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n\
         #EXT-X-KEY:METHOD=AES-128,URI=\"https://getkey.example.com/getkey?fileId={file_id}&keySource=VodBuildInKMS&edk={edk}\",IV=0x00000000000000000000000000000000\n\
         #EXTINF:10.000000,\nsegment_0.ts\n#EXTINF:10.000000,\nsegment_1.ts\n#EXT-X-ENDLIST\n"
    )
}

fn collect_media_urls(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => {
            if let Some(path) = s.strip_prefix(MEDIA_BASE).filter(|p| p.ends_with(".m3u8")) {
                if !out.iter().any(|known| known == path) {
                    out.push(path.to_string());
                }
            }
        }
        Value::Object(map) => map.values().for_each(|v| collect_media_urls(v, out)),
        Value::Array(items) => items.iter().for_each(|v| collect_media_urls(v, out)),
        _ => {}
    }
}

fn first_string(value: &mut Value) -> Option<&mut String> {
    match value {
        Value::String(s) => Some(s),
        Value::Object(map) => {
            map.iter_mut().filter(|(k, _)| k.as_str() != "EventType").find_map(|(_, v)| first_string(v))
        }
        Value::Array(items) => items.iter_mut().find_map(first_string),
        _ => None,
    }
}

/// Maps every id in the template to a fresh one (the same old id → the same new id).
fn collect_ids(value: &Value, ids: &mut HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if let (true, Value::Array(items)) = (FILE_ID_LIST_KEYS.contains(&key.as_str()), v) {
                    for old in items.iter().filter_map(Value::as_str) {
                        ids.entry(old.to_string()).or_insert_with(fresh_file_id);
                    }
                }
                // An empty id names nothing (and must not be replaced everywhere).
                if let Some(old) = v.as_str().filter(|s| !s.is_empty()) {
                    if is_file_id_key(key) {
                        ids.entry(old.to_string()).or_insert_with(fresh_file_id);
                    } else if is_task_id_key(key) {
                        ids.entry(old.to_string()).or_insert_with(|| fresh_task_id(old));
                    }
                }
                collect_ids(v, ids);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_ids(v, ids)),
        _ => {}
    }
}

/// Replaces ids everywhere (URLs included) and gives every EDK a fresh data key.
fn rewrite(value: &mut Value, ids: &HashMap<String, String>, keys: &mut Vec<(String, [u8; 16])>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if EDK_LIST_KEYS.contains(&key.as_str()) {
                    if let Value::Array(edks) = v {
                        for edk in edks.iter_mut() {
                            let (new_edk, dk) = fresh_key();
                            *edk = Value::String(new_edk.clone());
                            keys.push((new_edk, dk));
                        }
                        continue;
                    }
                }
                rewrite(v, ids, keys);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, ids, keys)),
        Value::String(s) => {
            for (old, new) in ids {
                if s.contains(old.as_str()) {
                    *s = s.replace(old.as_str(), new);
                }
            }
        }
        _ => {}
    }
}

fn fresh_file_id() -> String {
    // Real file ids are 19 decimal digits starting 5285890...
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("52858907{:011}", (n * 7919 + rand::thread_rng().gen_range(0..7919)) % 100_000_000_000)
}

fn fresh_task_id(old: &str) -> String {
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let prefix = old.rsplit_once('-').map_or(old, |(p, _)| p);
    format!("{prefix}-{:08x}{:024x}", n as u32, rand::thread_rng().gen::<u128>() >> 32)
}

fn fresh_key() -> (String, [u8; 16]) {
    let mut rng = rand::thread_rng();
    let mut edk = [0u8; 84];
    rng.fill(&mut edk[..]);
    let mut dk = [0u8; 16];
    rng.fill(&mut dk[..]);
    (base64::engine::general_purpose::STANDARD.encode(edk), dk)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_template_generates_distinct_valid_events() {
        let mut seen = HashSet::new();
        for (api, n) in
            [Api::V2, Api::V3].into_iter().flat_map(|api| (0..(template_count(api) as u64 * 4)).map(move |n| (api, n)))
        {
            let g = generate(api, n);
            let v: Value = serde_json::from_str(&g.content).unwrap();
            assert!(v["eventType"].is_string() || v["EventType"].is_string());
            assert!(seen.insert(g.content), "duplicate content for n={n}");
        }
    }

    #[test]
    fn ids_are_consistent_inside_one_event_and_edks_get_keys() {
        let g = generate_type(Api::V2, "ProcedureStateChanged").unwrap();
        let v: Value = serde_json::from_str(&g.content).unwrap();
        let file_id = v["data"]["fileId"].as_str().unwrap();
        assert_ne!(file_id, "5285890784246869930");
        let pull =
            v["data"]["processTaskList"].as_array().unwrap().iter().find(|t| t["taskType"] == "PullFile").unwrap();
        assert_eq!(pull["output"]["fileId"], file_id);
        assert!(pull["output"]["url"].as_str().unwrap().contains(file_id));
        let edks = v["data"]["drm"]["edkList"].as_array().unwrap();
        assert_eq!(edks.len(), g.keys.len());
        assert_eq!(edks[0], g.keys[0].0);
    }
}
