//! The account side of the queue: each app's event configuration, read with
//! `DescribeEventConfig` and changed with `ModifyEventConfig` (API 3.0, whichever API the
//! daemon pulls through). Only an app in `PULL` mode (reliable callback) feeds PullEvents,
//! and three event types reach it only when switched on. Field names and values are those
//! of the official SDK models (`tencentcloud-sdk-python-vod` 3.1.194).
//!
//! - [`check`]: the daemon's periodic check, which says why nothing arrives.
//! - [`recheck`]: the CLI asking running daemons, through the store, to check at once.

pub mod check;
pub mod recheck;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::api::{ApiError, Code, V3Client};

/// `Mode` of the reliable callback, the only one PullEvents serves.
pub const PULL: &str = "PULL";
/// A switch that is on.
pub const ON: &str = "ON";
/// The CAM permission the periodic check needs.
pub const DESCRIBE_PERMISSION: &str = "vod:DescribeEventConfig";
/// The CAM permission `account set-mode` needs.
pub const MODIFY_PERMISSION: &str = "vod:ModifyEventConfig";

/// One of the three event switches (Tencent's default for each is `OFF`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// `UploadMediaCompleteEventSwitch`: NewFileUpload.
    Upload,
    /// `DeleteMediaCompleteEventSwitch`: FileDeleted.
    Delete,
    /// `PersistenceCompleteEventSwitch`: PersistenceComplete.
    Persistence,
}

impl Switch {
    /// All three, in the SDK model's order.
    pub const ALL: [Switch; 3] = [Switch::Upload, Switch::Delete, Switch::Persistence];

    /// The SDK field.
    pub fn field(self) -> &'static str {
        match self {
            Switch::Upload => "UploadMediaCompleteEventSwitch",
            Switch::Delete => "DeleteMediaCompleteEventSwitch",
            Switch::Persistence => "PersistenceCompleteEventSwitch",
        }
    }

    /// The event type it lets through.
    pub fn event_type(self) -> &'static str {
        match self {
            Switch::Upload => "NewFileUpload",
            Switch::Delete => "FileDeleted",
            Switch::Persistence => "PersistenceComplete",
        }
    }

    /// Its name for `--enable`.
    pub fn name(self) -> &'static str {
        match self {
            Switch::Upload => "upload",
            Switch::Delete => "delete",
            Switch::Persistence => "persistence",
        }
    }
}

/// An app's event configuration: the DescribeEventConfig answer, field for field (each may
/// be missing from an answer; missing reads as empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventConfig {
    /// `PUSH` (plain HTTP callbacks) or `PULL` (reliable callback).
    #[serde(rename = "Mode", default)]
    pub mode: String,
    /// Where PUSH mode sends v3 callbacks.
    #[serde(rename = "NotificationUrl", default)]
    pub notification_url: String,
    /// `ON`/`OFF`: NewFileUpload.
    #[serde(rename = "UploadMediaCompleteEventSwitch", default)]
    pub upload: String,
    /// `ON`/`OFF`: FileDeleted.
    #[serde(rename = "DeleteMediaCompleteEventSwitch", default)]
    pub delete: String,
    /// `ON`/`OFF`: PersistenceComplete.
    #[serde(rename = "PersistenceCompleteEventSwitch", default)]
    pub persistence: String,
}

impl EventConfig {
    /// Whether PullEvents gets this app's events.
    pub fn is_pull(&self) -> bool {
        self.mode == PULL
    }

    /// A switch's value as answered.
    pub fn switch(&self, switch: Switch) -> &str {
        match switch {
            Switch::Upload => &self.upload,
            Switch::Delete => &self.delete,
            Switch::Persistence => &self.persistence,
        }
    }

    /// The switches not `ON`.
    pub fn switched_off(&self) -> Vec<Switch> {
        Switch::ALL.into_iter().filter(|s| self.switch(*s) != ON).collect()
    }

    /// `ModifyEventConfig` fields that put this app in PULL mode with `enable` on, as
    /// `(field, from, to)`; empty when it already is.
    pub fn changes_for_pull(&self, enable: &[Switch]) -> Vec<(&'static str, String, &'static str)> {
        let mut changes = Vec::new();
        if !self.is_pull() {
            changes.push(("Mode", self.mode.clone(), PULL));
        }
        for switch in Switch::ALL.into_iter().filter(|s| enable.contains(s) && self.switch(*s) != ON) {
            changes.push((switch.field(), self.switch(switch).to_string(), ON));
        }
        changes
    }

    /// One line: mode, switches and push URL.
    pub fn summary(&self) -> String {
        let switches: Vec<String> =
            Switch::ALL.iter().map(|s| format!("{} {}", s.name(), or_none(self.switch(*s)))).collect();
        format!(
            "Mode {}; switches: {}; push URL {}",
            or_none(&self.mode),
            switches.join(", "),
            crate::redact::url(or_none(&self.notification_url))
        )
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "(none)"
    } else {
        s
    }
}

/// How the app is named to people.
pub fn app_name(sub_app_id: Option<u64>, source: &str) -> String {
    match (sub_app_id, source) {
        (Some(id), crate::config::DEFAULT_SOURCE) => format!("app {id} (vod.sub_app_id)"),
        (None, crate::config::DEFAULT_SOURCE) => "the default app (no vod.sub_app_id)".into(),
        (Some(id), name) => format!("app {id} (source {name})"),
        (None, name) => format!("the default app (source {name}, no sub_app_id)"),
    }
}

/// Reads the app's event configuration.
pub async fn describe(client: &V3Client) -> Result<EventConfig, ApiError> {
    const ACTION: &str = "DescribeEventConfig";
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Response")]
        response: EventConfig,
    }
    let body = client.call(ACTION, json!({})).await?;
    let answer: Answer = serde_json::from_slice(&body).map_err(|e| ApiError::malformed(ACTION, &e, &body))?;
    Ok(answer.response)
}

/// Sends the `changes` of [`EventConfig::changes_for_pull`]. Nothing else is sent: an
/// empty `NotificationUrl` would clear the push URL, and the sign key is not ours to touch.
pub async fn modify(client: &V3Client, changes: &[(&'static str, String, &'static str)]) -> Result<(), ApiError> {
    let fields: Map<String, Value> = changes.iter().map(|(field, _, to)| (field.to_string(), json!(to))).collect();
    client.call("ModifyEventConfig", Value::Object(fields)).await.map(drop)
}

/// Whether the credentials work but may not call this action (a CAM policy without it).
/// Tencent documents `AuthFailure.UnauthorizedOperation` ("no CAM authorization") among
/// the common errors and `UnauthorizedOperation` among VOD's; which one a missing
/// permission gives is not documented, so both are read this way, with any subcode.
pub fn is_permission_denied(e: &ApiError) -> bool {
    match e {
        ApiError::Refused { code: Code::V3(code), .. } => {
            let code = code.as_str();
            code == "UnauthorizedOperation"
                || code.starts_with("UnauthorizedOperation.")
                || code == "AuthFailure.UnauthorizedOperation"
                || code.starts_with("AuthFailure.UnauthorizedOperation.")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: &str) -> ApiError {
        ApiError::Refused { action: "DescribeEventConfig", code: Code::V3(code.into()), message: String::new() }
    }

    #[test]
    fn both_readings_of_a_missing_permission_are_recognised() {
        for code in ["UnauthorizedOperation", "AuthFailure.UnauthorizedOperation", "UnauthorizedOperation.Cam"] {
            assert!(is_permission_denied(&refused(code)), "{code}");
        }
        for code in ["AuthFailure.SignatureFailure", "AuthFailure.SecretIdNotFound", "InternalError"] {
            assert!(!is_permission_denied(&refused(code)), "{code}");
        }
    }

    #[test]
    fn the_answer_reads_field_for_field_and_only_needed_changes_are_made() {
        let body = r#"{"Mode":"PUSH","NotificationUrl":"https://cb.example/vod?k=secret","UploadMediaCompleteEventSwitch":"OFF","DeleteMediaCompleteEventSwitch":"ON","RequestId":"r"}"#;
        let c: EventConfig = serde_json::from_str(body).unwrap();
        assert!(!c.is_pull());
        assert_eq!(c.switched_off(), [Switch::Upload, Switch::Persistence], "a missing switch is not on");
        assert_eq!(
            c.changes_for_pull(&[Switch::Upload, Switch::Delete]),
            [("Mode", "PUSH".to_string(), "PULL"), ("UploadMediaCompleteEventSwitch", "OFF".to_string(), "ON")]
        );
        assert!(!c.summary().contains("secret"), "{}", c.summary());
        let pulled = EventConfig { mode: PULL.into(), upload: ON.into(), ..c };
        assert!(pulled.changes_for_pull(&[Switch::Upload]).is_empty());
    }
}
