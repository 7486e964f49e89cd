//! The API 3.0 event types, as the official SDK model has them (`tencentcloud-sdk-python-vod`
//! 3.1.194, `tencentcloud.vod.v20180717.models.EventContent` and the classes it references):
//! for every per-type member of `EventContent`, the `EventType` values it belongs to, where its
//! task id is and where the files it names are. [`crate::event`] picks an event's payload and
//! indexes its files through this table; nothing else knows these names.
//!
//! Paths are member names joined by `.`; a name ending in `[]` is an array whose every element
//! is followed. File paths are listed outputs first, so the first file found is an event's
//! primary `file_id`. Events of a type not listed here are still stored as received; their
//! files are found by [`walk_file_ids`], which follows the model's naming (`FileId`,
//! `*FileId`, `FileIdSet`) and reads the role from the path (`Input…`/`Src…` means input).
//! A unit test checks that, on every SDK-shaped fixture, the table finds exactly the files the
//! walk finds, so a path missing here fails the build's tests, not an operator's search.

use serde_json::Value;

/// What a file is to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Made or reported on by the event (the uploaded file, a task's result, ...).
    Output,
    /// A source the task read.
    Input,
    /// Deleted (FileDeleted).
    Deleted,
}

impl Role {
    /// The name stored in `event_files.role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Output => "output",
            Role::Input => "input",
            Role::Deleted => "deleted",
        }
    }
}

/// One per-type member of `EventContent`.
#[derive(Debug)]
pub struct V3Type {
    /// The `EventType` values this member belongs to: the documented one first, then other
    /// spellings the docs use (the SDK documents a few newest types with an `Event` suffix in
    /// `EventType`, others without; both readings are accepted).
    pub event_types: &'static [&'static str],
    /// The `EventContent` member holding the payload.
    pub member: &'static str,
    /// Payload members holding the task id, tried in order.
    pub task_id: &'static [&'static str],
    /// Where the files are, outputs first.
    pub files: &'static [(&'static str, Role)],
}

const TASK: &[&str] = &["TaskId"];
use Role::{Deleted, Input, Output};

/// Every per-type member of the SDK's `EventContent` (37 in 3.1.194).
pub const V3_TYPES: &[V3Type] = &[
    V3Type {
        event_types: &["NewFileUpload"],
        member: "FileUploadEvent",
        task_id: &["ProcedureTaskId", "ReviewAudioVideoTaskId"],
        files: &[("FileId", Output)],
    },
    V3Type {
        event_types: &["ProcedureStateChanged"],
        member: "ProcedureStateChangeEvent",
        task_id: TASK,
        files: &[
            ("FileId", Output),
            ("MediaProcessResultSet[].TranscodeTask.Output.FileId", Output),
            ("AiRecognitionResultSet[].SegmentTask.Output.SegmentSet[].FileId", Output),
        ],
    },
    V3Type {
        event_types: &["FileDeleted"],
        member: "FileDeleteEvent",
        task_id: &[],
        files: &[("FileIdSet[]", Deleted), ("FileDeleteResultInfo[].FileId", Deleted)],
    },
    V3Type {
        event_types: &["PullComplete"],
        member: "PullCompleteEvent",
        task_id: &["TaskId", "ProcedureTaskId"],
        files: &[("FileId", Output)],
    },
    V3Type {
        event_types: &["EditMediaComplete"],
        member: "EditMediaCompleteEvent",
        task_id: TASK,
        files: &[("Output.FileId", Output), ("Input.FileInfoSet[].FileId", Input)],
    },
    V3Type {
        event_types: &["SplitMediaComplete"],
        member: "SplitMediaCompleteEvent",
        task_id: TASK,
        files: &[("FileInfoSet[].Output.FileId", Output), ("FileInfoSet[].Input.FileId", Input)],
    },
    V3Type {
        event_types: &["ComposeMediaComplete"],
        member: "ComposeMediaCompleteEvent",
        task_id: TASK,
        files: &[("Output.FileId", Output)],
    },
    V3Type {
        event_types: &["ClipComplete"],
        member: "ClipCompleteEvent",
        task_id: TASK,
        files: &[("FileInfo.FileId", Output), ("SrcFileId", Input)],
    },
    V3Type {
        event_types: &["TranscodeComplete"],
        member: "TranscodeCompleteEvent",
        task_id: TASK,
        files: &[("FileId", Output)],
    },
    V3Type {
        event_types: &["CreateImageSpriteComplete"],
        member: "CreateImageSpriteCompleteEvent",
        task_id: TASK,
        files: &[("FileId", Output)],
    },
    V3Type {
        event_types: &["ConcatComplete"],
        member: "ConcatCompleteEvent",
        task_id: TASK,
        files: &[("FileInfoSet[].FileId", Output)],
    },
    V3Type {
        event_types: &["CreateSnapshotByTimeOffsetComplete"],
        member: "SnapshotByTimeOffsetCompleteEvent",
        task_id: TASK,
        files: &[("FileId", Output)],
    },
    V3Type {
        event_types: &["WechatPublishComplete"],
        member: "WechatPublishCompleteEvent",
        task_id: TASK,
        files: &[("FileId", Output)],
    },
    V3Type {
        event_types: &["WechatMiniProgramPublishComplete"],
        member: "WechatMiniProgramPublishCompleteEvent",
        task_id: TASK,
        files: &[("FileId", Output)],
    },
    V3Type {
        event_types: &["RemoveWatermark"],
        member: "RemoveWatermarkCompleteEvent",
        task_id: TASK,
        files: &[("Output.FileId", Output), ("Input.FileId", Input)],
    },
    V3Type {
        event_types: &["RestoreMediaComplete"],
        member: "RestoreMediaCompleteEvent",
        task_id: &[],
        files: &[("FileId", Output)],
    },
    V3Type {
        event_types: &["RebuildMediaComplete"],
        member: "RebuildMediaCompleteEvent",
        task_id: TASK,
        files: &[("Output.FileId", Output), ("Input.FileId", Input)],
    },
    V3Type {
        event_types: &["ExtractTraceWatermarkComplete"],
        member: "ExtractTraceWatermarkCompleteEvent",
        task_id: TASK,
        files: &[("Input.FileId", Input)],
    },
    V3Type {
        event_types: &["ExtractCopyRightWatermarkComplete"],
        member: "ExtractCopyRightWatermarkCompleteEvent",
        task_id: TASK,
        files: &[],
    },
    V3Type {
        event_types: &["ReviewAudioVideoComplete"],
        member: "ReviewAudioVideoCompleteEvent",
        task_id: TASK,
        files: &[("Input.FileId", Input)],
    },
    // The SDK marks this member "no longer valid" and documents no EventType for it.
    V3Type {
        event_types: &["ReduceMediaBitrateComplete"],
        member: "ReduceMediaBitrateCompleteEvent",
        task_id: TASK,
        files: &[("FileId", Output), ("MediaProcessResultSet[].TranscodeTask.Output.FileId", Output)],
    },
    V3Type {
        event_types: &["DescribeFileAttributesComplete"],
        member: "DescribeFileAttributesCompleteEvent",
        task_id: TASK,
        files: &[("FileId", Output)],
    },
    V3Type {
        event_types: &["QualityInspectComplete"],
        member: "QualityInspectCompleteEvent",
        task_id: TASK,
        files: &[("Input.FileId", Input)],
    },
    V3Type {
        event_types: &["QualityEnhanceComplete"],
        member: "QualityEnhanceCompleteEvent",
        task_id: TASK,
        files: &[("Output.FileId", Output), ("Input.FileId", Input)],
    },
    V3Type {
        event_types: &["MediaCastStatusChanged"],
        member: "MediaCastStatusChangedEvent",
        task_id: &[],
        files: &[],
    },
    V3Type {
        event_types: &["PersistenceComplete"],
        member: "PersistenceCompleteEvent",
        task_id: &[],
        files: &[("FileId", Output)],
    },
    V3Type {
        event_types: &["ComplexAdaptiveDynamicStreamingComplete"],
        member: "ComplexAdaptiveDynamicStreamingCompleteEvent",
        task_id: TASK,
        files: &[],
    },
    V3Type {
        event_types: &["ProcessMediaByMPSComplete"],
        member: "ProcessMediaByMPSCompleteEvent",
        task_id: TASK,
        files: &[("SubTaskSet[].Output.OutputFiles[].FileId", Output)],
    },
    V3Type {
        event_types: &["AigcImageTaskComplete"],
        member: "AigcImageCompleteEvent",
        task_id: TASK,
        files: &[("Output.FileInfos[].FileId", Output), ("Input.FileInfos[].FileId", Input)],
    },
    V3Type {
        event_types: &["AigcVideoTaskComplete"],
        member: "AigcVideoCompleteEvent",
        task_id: TASK,
        files: &[
            ("Output.FileInfos[].FileId", Output),
            ("Input.FileInfos[].FileId", Input),
            ("Input.LastFrameFileId", Input),
        ],
    },
    V3Type {
        event_types: &["ExtractBlindWatermarkComplete"],
        member: "ExtractBlindWatermarkComplete",
        task_id: TASK,
        files: &[("InputInfo.FileId", Input)],
    },
    // The SDK documents this EventType as "SceneAigcImageCompleteEvent"; the shorter
    // spelling the other types use is accepted too.
    V3Type {
        event_types: &["SceneAigcImageCompleteEvent", "SceneAigcImageComplete"],
        member: "SceneAigcImageCompleteEvent",
        task_id: TASK,
        files: &[
            ("Output.FileInfos[].FileId", Output),
            ("Input.FileInfos[].FileId", Input),
            ("Input.SceneInfo.AiTryOnConfig.ClothesFileInfos[].FileId", Input),
            ("Input.SceneInfo.ChangeClothesConfig.ClothesFileInfos[].FileId", Input),
        ],
    },
    V3Type {
        event_types: &["ProcessImageAsyncCompleteEvent", "ProcessImageAsyncComplete"],
        member: "ProcessImageAsyncCompleteEvent",
        task_id: &[],
        files: &[],
    },
    V3Type {
        event_types: &["CreateAigcAdvancedCustomElementCompleteEvent", "CreateAigcAdvancedCustomElementComplete"],
        member: "CreateAigcAdvancedCustomElementCompleteEvent",
        task_id: TASK,
        files: &[],
    },
    V3Type {
        event_types: &["CreateAigcCustomVoiceCompleteEvent", "CreateAigcCustomVoiceComplete"],
        member: "CreateAigcCustomVoiceCompleteEvent",
        task_id: TASK,
        files: &[],
    },
    V3Type {
        event_types: &["DescribeAigcFaceInfoAsyncComplete"],
        member: "DescribeAigcFaceInfoAsyncCompleteEvent",
        task_id: TASK,
        files: &[("Input.FileInfos[].FileId", Input)],
    },
    V3Type {
        event_types: &["AigcHunyuan3DTaskComplete"],
        member: "AigcHunyuan3DCompleteEvent",
        task_id: TASK,
        files: &[
            ("Input.ImageInfos[].FileId", Input),
            ("Input.MultiViewImageInfos[].FileId", Input),
            ("Input.MeshInfos[].FileId", Input),
        ],
    },
];

/// The table entry for an `EventType`, if the SDK model knows it.
pub fn v3_type(event_type: &str) -> Option<&'static V3Type> {
    V3_TYPES.iter().find(|t| t.event_types.contains(&event_type))
}

/// The non-empty strings (or numbers, as text) at `path` under `value`.
pub fn values_at<'a>(value: &'a Value, path: &str) -> Vec<String> {
    let mut current: Vec<&'a Value> = vec![value];
    for segment in path.split('.') {
        let (name, each) = match segment.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (segment, false),
        };
        current = current
            .into_iter()
            .filter_map(|v| v.get(name))
            .flat_map(|v| match (each, v) {
                (true, Value::Array(items)) => items.iter().collect(),
                (true, _) => Vec::new(),
                (false, v) => vec![v],
            })
            .collect();
    }
    current.into_iter().filter_map(scalar_text).collect()
}

/// The files a v3 payload of a known type names, outputs first, each once.
pub fn table_file_ids(t: &V3Type, payload: &Value) -> Vec<(String, Role)> {
    let mut out: Vec<(String, Role)> = Vec::new();
    for (path, role) in t.files {
        for id in values_at(payload, path) {
            push_once(&mut out, id, *role);
        }
    }
    out
}

/// Every file id under `value`, found by name, for types the table does not know and for v2:
/// string members named `FileId`/`fileId` or ending in `FileId` (`SrcFileId`,
/// `LastFrameFileId`, v2's `srcFileId`), and the strings of `FileIdSet` arrays. Inputs are those
/// under an `Input…` member or named `Src…`/`src…`; with `deleted`, every other file is
/// [`Role::Deleted`]. Outputs come first, then inputs, each file once.
pub fn walk_file_ids(value: &Value, deleted: bool) -> Vec<(String, Role)> {
    let mut found = Vec::new();
    walk(value, false, &mut found);
    found.sort_by_key(|(_, input)| *input);
    let mut out: Vec<(String, Role)> = Vec::new();
    for (id, input) in found {
        let role = match (input, deleted) {
            (true, _) => Role::Input,
            (false, true) => Role::Deleted,
            (false, false) => Role::Output,
        };
        push_once(&mut out, id, role);
    }
    out
}

fn walk(value: &Value, under_input: bool, found: &mut Vec<(String, bool)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let input = under_input || key.starts_with("Input");
                let named_input = key.starts_with("Src") || key.starts_with("src");
                let is_file = key.ends_with("FileId") || key == "fileId" || key.ends_with("FileID");
                match v {
                    Value::String(_) | Value::Number(_) if is_file => {
                        if let Some(id) = scalar_text(v) {
                            found.push((id, input || named_input));
                        }
                    }
                    Value::Array(items) if key == "FileIdSet" || key == "fileIdSet" => {
                        found.extend(items.iter().filter_map(scalar_text).map(|id| (id, input)));
                    }
                    _ => walk(v, input, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, under_input, found)),
        _ => {}
    }
}

fn push_once(out: &mut Vec<(String, Role)>, id: String, role: Role) {
    if !out.iter().any(|(known, _)| *known == id) {
        out.push((id, role));
    }
}

/// A string or number as text; anything else (or an empty string) is `None`.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The SDK-shaped fixtures the emulator serves, one per `EventContent` member.
    fn sdk_fixtures() -> Vec<(String, Value)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/vod-emulator/fixtures/v3/sdk");
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                (path.display().to_string(), serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap())
            })
            .collect();
        out.sort_by(|a: &(String, Value), b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn the_table_covers_every_member_of_the_sdk_model_once() {
        let fixtures = sdk_fixtures();
        assert_eq!(fixtures.len(), 37);
        assert_eq!(V3_TYPES.len(), fixtures.len());
        for (path, event) in &fixtures {
            let event_type = event["EventType"].as_str().unwrap();
            let t = v3_type(event_type).unwrap_or_else(|| panic!("{path}: {event_type} is not in the table"));
            assert!(event[t.member].is_object(), "{path}: member {} holds the payload", t.member);
        }
        let members: BTreeSet<_> = V3_TYPES.iter().map(|t| t.member).collect();
        assert_eq!(members.len(), V3_TYPES.len(), "each member once");
    }

    #[test]
    fn the_table_finds_exactly_the_files_the_model_names() {
        for (path, event) in sdk_fixtures() {
            let t = v3_type(event["EventType"].as_str().unwrap()).unwrap();
            let payload = &event[t.member];
            let by_table: BTreeSet<_> = table_file_ids(t, payload).into_iter().collect();
            let by_name: BTreeSet<_> = walk_file_ids(payload, t.member == "FileDeleteEvent").into_iter().collect();
            assert_eq!(by_table, by_name, "{path}");
            let task = t.task_id.iter().find_map(|k| scalar_text(&payload[*k]));
            assert_eq!(task.is_some(), !t.task_id.is_empty(), "{path}: task id");
        }
    }

    #[test]
    fn paths_follow_arrays_and_skip_what_is_missing() {
        let v = serde_json::json!({"A": [{"B": {"C": "1"}}, {"B": {"C": 2}}, {"B": null}], "D": "x", "E": ""});
        assert_eq!(values_at(&v, "A[].B.C"), ["1", "2"]);
        assert_eq!(values_at(&v, "D"), ["x"]);
        assert!(values_at(&v, "E").is_empty());
        assert!(values_at(&v, "D[]").is_empty());
        assert!(values_at(&v, "Z.Y").is_empty());
    }
}
