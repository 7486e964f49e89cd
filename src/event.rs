//! What an event is once received: its exact text, a content-derived dedupe key, and the
//! fields operators filter on, for both APIs: v2 `{version, eventType, data}` and v3
//! `{EventType, <Type>Event: {...}}` (stored without `EventHandle`). Nothing here does I/O, and nothing here rejects an event:
//! odd shapes (numeric `version`, string `status`, unknown types, even non-objects) are
//! described as well as they can be and stored as they are.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{ApiVersion, DEFAULT_SOURCE};
use crate::event_types::{self, scalar_text, Role};

/// The `event_type` recorded for content that names none.
pub const MISSING_TYPE: &str = "<missing>";

/// A received event, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedEvent {
    /// The `eventContent` exactly as Tencent sent it.
    pub content: String,
    /// SHA-256 of the canonical form of `content` (keys sorted, no whitespace); for a source
    /// other than the default one, mixed with the source's name (see [`ReceivedEvent::with_source`]).
    pub dedupe_key: [u8; 32],
    /// `eventType`, or [`MISSING_TYPE`].
    pub event_type: String,
    /// `version` as text (`"4.0"`, or `4` when sent as a number).
    pub version: Option<String>,
    /// The file the event is about, when it names one: the first of `files`.
    pub file_id: Option<String>,
    /// Every file the event names, outputs first, each once.
    pub files: Vec<(String, Role)>,
    /// The task the event reports on, when it names one.
    pub task_id: Option<String>,
    /// The API it came from.
    pub api: ApiVersion,
    /// The source it was pulled from ([`DEFAULT_SOURCE`] until [`ReceivedEvent::with_source`]).
    pub source: String,
    /// The app (`SubAppId`) it was pulled from; `None`: the default app.
    pub sub_app_id: Option<u64>,
}

impl ReceivedEvent {
    /// Describes an event given as JSON text.
    pub fn from_content(content: &str, api: ApiVersion) -> ReceivedEvent {
        let parsed: Option<Value> = serde_json::from_str(content).ok();
        let dedupe_key = match &parsed {
            Some(value) => Sha256::digest(canonical_bytes(value)).into(),
            None => Sha256::digest(content.as_bytes()).into(),
        };
        // Some producers double-encode: a string holding the JSON object.
        let body = match parsed {
            Some(Value::String(inner)) => serde_json::from_str(&inner).ok(),
            other => other,
        };
        let body = body.unwrap_or(Value::Null);
        let (event_type, version, files, task_id) = match api {
            ApiVersion::V2 => {
                let data = &body["data"];
                let event_type = scalar_text(&body["eventType"]);
                let task = ["vodTaskId", "procedureTaskId", "taskId"].iter().find_map(|k| scalar_text(&data[*k]));
                let deleted = event_type.as_deref() == Some("FileDeleted");
                (event_type, scalar_text(&body["version"]), event_types::walk_file_ids(data, deleted), task)
            }
            ApiVersion::V3 => {
                let event_type = scalar_text(&body["EventType"]);
                let (payload, known) = v3_payload(&body, event_type.as_deref());
                let (files, task) = match known {
                    Some(t) => (
                        event_types::table_file_ids(t, payload),
                        t.task_id.iter().find_map(|k| scalar_text(&payload[*k])),
                    ),
                    None => (
                        event_types::walk_file_ids(payload, false),
                        ["TaskId", "ProcedureTaskId"].iter().find_map(|k| scalar_text(&payload[*k])),
                    ),
                };
                (event_type, None, files, task)
            }
        };
        ReceivedEvent {
            content: content.to_string(),
            dedupe_key,
            event_type: event_type.unwrap_or_else(|| MISSING_TYPE.to_string()),
            version,
            file_id: files.first().map(|(id, _)| id.clone()),
            files,
            task_id,
            api,
            source: DEFAULT_SOURCE.to_string(),
            sub_app_id: None,
        }
    }

    /// Records the source and app the event was pulled from. The dedupe key then includes
    /// the source: identical contents from two sources are two events. The default source
    /// keeps the bare content hash, so stores written before sources existed keep folding
    /// redeliveries into their rows.
    pub fn with_source(mut self, source: &str, sub_app_id: Option<u64>) -> ReceivedEvent {
        if source != DEFAULT_SOURCE {
            let mut mixed = Sha256::new();
            mixed.update(b"vod-eventd source\0");
            mixed.update(source.as_bytes());
            mixed.update([0]);
            mixed.update(self.dedupe_key);
            self.dedupe_key = mixed.finalize().into();
        }
        self.source = source.to_string();
        self.sub_app_id = sub_app_id;
        self
    }

    /// The dedupe key in lower-case hex.
    pub fn dedupe_hex(&self) -> String {
        hex(&self.dedupe_key)
    }
}

/// The v3 per-type payload (`FileUploadEvent`, `ProcedureStateChangeEvent`, ...) and its
/// table entry. A type the SDK model knows is read from its own member, whatever else the
/// event holds. For any other type the payload is the one member holding a non-empty object
/// (unknown and null members, and `{}`, are ignored); if there is no such member or there are
/// several, the event has no payload (it is still stored as received).
pub fn v3_payload<'a>(body: &'a Value, event_type: Option<&str>) -> (&'a Value, Option<&'static event_types::V3Type>) {
    if let Some(t) = event_type.and_then(event_types::v3_type) {
        if body[t.member].is_object() {
            return (&body[t.member], Some(t));
        }
    }
    let mut objects = body
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| k.as_str() != "EventHandle" && v.as_object().is_some_and(|o| !o.is_empty()));
    match (objects.next(), objects.next()) {
        (Some((_, payload)), None) => (payload, None),
        _ => (&Value::Null, None),
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// JSON with object keys sorted by their UTF-8 bytes and no whitespace, independent of
/// how `serde_json` orders maps (a dependency enabling `preserve_order` would change that).
pub fn canonical_json(value: &Value) -> String {
    String::from_utf8(canonical_bytes(value)).expect("serde_json writes UTF-8")
}

/// [`canonical_json`] as the bytes the dedupe key hashes (no UTF-8 check on the hot path).
fn canonical_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

/// Writes `value`'s canonical form into `out`: keys and scalars are written by `serde_json`
/// itself (its escaping and number formatting), straight into the buffer.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            // Keys of one object are distinct, so an unstable sort gives the one order.
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).expect("writing to a Vec cannot fail");
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing to a Vec cannot fail"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Arbitrary JSON values, nested a few levels, with the keys events use.
    pub(crate) fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let key = prop_oneof![
                Just("eventType".to_string()),
                Just("data".to_string()),
                Just("fileId".to_string()),
                Just("fileInfo".to_string()),
                Just("EventType".to_string()),
                Just("FileId".to_string()),
                Just("FileIdSet".to_string()),
                Just("TaskId".to_string()),
                "[a-zA-Z]{1,8}",
                ".{0,6}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(key, inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn describing_any_text_never_panics(text in ".{0,256}") {
            let _ = ReceivedEvent::from_content(&text, ApiVersion::V2);
            let _ = ReceivedEvent::from_content(&text, ApiVersion::V3);
        }

        /// The canonical form is what stored dedupe keys were computed from: it must stay
        /// byte for byte what the first release wrote (this oracle is that release's code).
        #[test]
        fn the_canonical_form_is_the_one_stored_keys_were_made_with(value in arb_json()) {
            fn first_release(value: &Value, out: &mut String) {
                match value {
                    Value::Object(map) => {
                        let mut entries: Vec<_> = map.iter().collect();
                        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                        out.push('{');
                        for (i, (key, v)) in entries.into_iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            out.push_str(&Value::String(key.clone()).to_string());
                            out.push(':');
                            first_release(v, out);
                        }
                        out.push('}');
                    }
                    Value::Array(items) => {
                        out.push('[');
                        for (i, v) in items.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            first_release(v, out);
                        }
                        out.push(']');
                    }
                    scalar => out.push_str(&scalar.to_string()),
                }
            }
            let mut expected = String::new();
            first_release(&value, &mut expected);
            prop_assert_eq!(canonical_json(&value), expected);
        }

        #[test]
        fn any_json_is_described_and_its_key_is_order_independent(value in arb_json()) {
            for api in [ApiVersion::V2, ApiVersion::V3] {
                let a = ReceivedEvent::from_content(&value.to_string(), api);
                let pretty = ReceivedEvent::from_content(&serde_json::to_string_pretty(&value).unwrap(), api);
                prop_assert_eq!(a.dedupe_key, pretty.dedupe_key);
                prop_assert!(!a.event_type.is_empty());
            }
        }
    }

    const FIXTURES: &[&str] = &[
        include_str!("../tests/fixtures/events-v2/NewFileUpload.json"),
        include_str!("../tests/fixtures/events-v2/ProcedureStateChanged.json"),
        include_str!("../tests/fixtures/events-v2/FileDeleted.json"),
        include_str!("../tests/fixtures/events-v2/ClipComplete.json"),
        include_str!("../tests/fixtures/events-v2/ConcatComplete.json"),
        include_str!("../tests/fixtures/events-v2/TranscodeComplete.failed.json"),
    ];

    #[test]
    fn extracts_type_file_and_task_from_every_shape() {
        let got: Vec<_> = FIXTURES.iter().map(|f| ReceivedEvent::from_content(f, ApiVersion::V2)).collect();
        let summary: Vec<_> =
            got.iter().map(|e| (e.event_type.as_str(), e.file_id.as_deref(), e.task_id.is_some())).collect();
        assert_eq!(
            summary,
            vec![
                ("NewFileUpload", Some("5285890784246869930"), true),
                ("ProcedureStateChanged", Some("5285890784246869930"), true),
                ("FileDeleted", Some("5285890784246869930"), false),
                ("ClipComplete", Some("5285890784246872000"), true),
                ("ConcatComplete", Some("5285890784246871001"), true),
                ("TranscodeComplete", Some("5285890784246869930"), true),
            ]
        );
        assert!(got.iter().all(|e| e.version.as_deref() == Some("4.0")));
    }

    #[test]
    fn dedupe_key_ignores_key_order_and_whitespace_but_not_values() {
        let a = ReceivedEvent::from_content(
            r#"{"version":"4.0","eventType":"X","data":{"b":1,"a":[1,2]}}"#,
            ApiVersion::V2,
        );
        let b = ReceivedEvent::from_content(
            "{ \"data\" : {\"a\":[1, 2], \"b\":1},\n \"eventType\":\"X\", \"version\":\"4.0\"}",
            ApiVersion::V2,
        );
        let c = ReceivedEvent::from_content(
            r#"{"version":"4.0","eventType":"X","data":{"b":2,"a":[1,2]}}"#,
            ApiVersion::V2,
        );
        assert_eq!(a.dedupe_key, b.dedupe_key);
        assert_ne!(a.dedupe_key, c.dedupe_key);
        assert_eq!(
            canonical_json(&serde_json::from_str(&b.content).unwrap()),
            r#"{"data":{"a":[1,2],"b":1},"eventType":"X","version":"4.0"}"#
        );
    }

    #[test]
    fn unicode_escapes_and_raw_characters_are_one_event() {
        let a = ReceivedEvent::from_content(r#"{"eventType":"X","data":{"fileName":"\u672a"}}"#, ApiVersion::V2);
        let b = ReceivedEvent::from_content(r#"{"eventType":"X","data":{"fileName":"未"}}"#, ApiVersion::V2);
        assert_eq!(a.dedupe_key, b.dedupe_key);
    }

    #[test]
    fn v3_events_are_described_from_their_per_type_object() {
        let upload = ReceivedEvent::from_content(
            r#"{"EventType":"NewFileUpload","FileUploadEvent":{"FileId":"52","ProcedureTaskId":"p-1"},"ProcedureStateChangeEvent":null}"#,
            ApiVersion::V3,
        );
        assert_eq!(
            (upload.event_type.as_str(), upload.file_id.as_deref(), upload.task_id.as_deref()),
            ("NewFileUpload", Some("52"), Some("p-1"))
        );
        let deleted = ReceivedEvent::from_content(
            r#"{"EventType":"FileDeleted","FileDeleteEvent":{"FileIdSet":["7","8"]}}"#,
            ApiVersion::V3,
        );
        assert_eq!(deleted.file_id.as_deref(), Some("7"));
        assert_eq!(deleted.api, ApiVersion::V3);
    }

    #[test]
    fn the_v3_payload_is_chosen_by_event_type_not_by_member_order() {
        let decoy = r#"{"EventType":"NewFileUpload","AigcImageCompleteEvent":{},"AigcVideoCompleteEvent":{"TaskId":"a"},"FileUploadEvent":{"FileId":"52","ProcedureTaskId":"p"}}"#;
        let e = ReceivedEvent::from_content(decoy, ApiVersion::V3);
        assert_eq!((e.file_id.as_deref(), e.task_id.as_deref()), (Some("52"), Some("p")));
        let unknown_one = ReceivedEvent::from_content(
            r#"{"EventType":"FutureThing","Empty":{},"FutureThingEvent":{"TaskId":"t","Input":{"FileId":"9"}}}"#,
            ApiVersion::V3,
        );
        assert_eq!(
            (unknown_one.task_id.as_deref(), unknown_one.files.clone()),
            (Some("t"), vec![("9".into(), Role::Input)])
        );
        let ambiguous = ReceivedEvent::from_content(
            r#"{"EventType":"FutureThing","A":{"TaskId":"a"},"B":{"TaskId":"b"}}"#,
            ApiVersion::V3,
        );
        assert_eq!((ambiguous.task_id, ambiguous.file_id), (None, None));
    }

    #[test]
    fn every_file_an_event_names_is_listed_outputs_first() {
        let clip = ReceivedEvent::from_content(FIXTURES[3], ApiVersion::V2);
        assert_eq!(clip.files.iter().map(|(_, r)| *r).collect::<Vec<_>>(), [Role::Output, Role::Input]);
        let concat = ReceivedEvent::from_content(FIXTURES[4], ApiVersion::V2);
        assert_eq!(concat.files.len(), 2);
        let deleted = ReceivedEvent::from_content(
            r#"{"EventType":"FileDeleted","FileDeleteEvent":{"FileIdSet":["7","8"],"FileDeleteResultInfo":[{"FileId":"7"}]}}"#,
            ApiVersion::V3,
        );
        assert_eq!(deleted.files, vec![("7".into(), Role::Deleted), ("8".into(), Role::Deleted)]);
        let split = ReceivedEvent::from_content(
            r#"{"EventType":"SplitMediaComplete","SplitMediaCompleteEvent":{"TaskId":"t","FileInfoSet":[{"Input":{"FileId":"1"},"Output":{"FileId":"2"}},{"Input":{"FileId":"1"},"Output":{"FileId":"3"}}]}}"#,
            ApiVersion::V3,
        );
        assert_eq!(
            split.files,
            vec![("2".into(), Role::Output), ("3".into(), Role::Output), ("1".into(), Role::Input)]
        );
        assert_eq!(split.file_id.as_deref(), Some("2"));
    }

    #[test]
    fn odd_shapes_are_described_not_rejected() {
        let numeric =
            ReceivedEvent::from_content(r#"{"version":4,"eventType":"Future","data":{"vodTaskId":7}}"#, ApiVersion::V2);
        assert_eq!((numeric.version.as_deref(), numeric.task_id.as_deref()), (Some("4"), Some("7")));
        let nothing = ReceivedEvent::from_content(r#"[1,2]"#, ApiVersion::V2);
        assert_eq!(nothing.event_type, MISSING_TYPE);
        let text = ReceivedEvent::from_content(
            "\"{\\\"eventType\\\":\\\"NewFileUpload\\\",\\\"data\\\":{\\\"fileId\\\":\\\"9\\\"}}\"",
            ApiVersion::V2,
        );
        assert_eq!((text.event_type.as_str(), text.file_id.as_deref()), ("NewFileUpload", Some("9")));
    }
}
