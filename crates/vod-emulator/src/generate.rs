//! Realistic events of every documented type, for either API, made from the documented
//! samples with fresh ids, so that every generated event is distinct content (as real
//! events are) while keeping the shapes Tencent sends, quirks included (numeric
//! `version`, string `status`, null per-type members in v3, ...).

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

/// Keys whose string values are file ids.
const FILE_ID_KEYS: &[&str] = &["fileId", "srcFileId", "FileId", "SrcFileId", "Vid"];
/// Keys whose values are arrays of file ids.
const FILE_ID_LIST_KEYS: &[&str] = &["FileIdSet"];
/// Keys whose string values are task ids (`<prefix>-<hex>`).
const TASK_ID_KEYS: &[&str] = &[
    "vodTaskId",
    "procedureTaskId",
    "transcodeTaskId",
    "porncheckTaskId",
    "imageSpriteTaskId",
    "TaskId",
    "ProcedureTaskId",
];
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
    /// `(edk, 16-byte data key)` for every EDK in the event.
    pub keys: Vec<(String, [u8; 16])>,
}

/// Generates event `n` of a realistic mix: every template in turn.
pub fn generate(api: Api, n: u64) -> Generated {
    let all = templates(api);
    let (_, text) = all[(n % all.len() as u64) as usize];
    generate_from(text)
}

/// Generates an event of the named template (`"ProcedureStateChanged"`, ...), if it exists.
pub fn generate_type(api: Api, name: &str) -> Option<Generated> {
    templates(api).iter().find(|(n, _)| *n == name).map(|(_, text)| generate_from(text))
}

fn generate_from(template: &str) -> Generated {
    let mut value: Value = serde_json::from_str(template).expect("fixtures are valid JSON");
    let mut ids = HashMap::new();
    let mut keys = Vec::new();
    collect_ids(&value, &mut ids);
    rewrite(&mut value, &ids, &mut keys);
    Generated { content: serde_json::to_string(&value).expect("serialisable"), keys }
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
                if let Value::String(old) = v {
                    if FILE_ID_KEYS.contains(&key.as_str()) {
                        ids.entry(old.clone()).or_insert_with(fresh_file_id);
                    } else if TASK_ID_KEYS.contains(&key.as_str()) {
                        ids.entry(old.clone()).or_insert_with(|| fresh_task_id(old));
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
        for (api, n) in [Api::V2, Api::V3]
            .into_iter()
            .flat_map(|api| (0..(templates(api).len() as u64 * 50)).map(move |n| (api, n)))
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
