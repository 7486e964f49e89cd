//! Each app's event configuration, as `DescribeEventConfig` reads it and
//! `ModifyEventConfig` changes it (API 3.0; field names and values as in the official SDK
//! models, `tencentcloud-sdk-python-vod` 3.1.194), and what it does to the queue: an app in
//! `PUSH` mode gets nothing from PullEvent(s), and an event type whose switch is `OFF` is
//! never put in the queue.
//!
//! The emulator has one queue, which every app pulls from; what is enqueued through the
//! handle or `/_emulator/` is filtered by the *default* app's configuration (the one calls
//! without `SubAppId` address). A pull is answered according to the pulling app's mode.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `Mode` of an app that delivers events by HTTP callbacks (普通回调).
pub const PUSH: &str = "PUSH";
/// `Mode` of an app that delivers events through the reliable-callback queue (可靠回调).
pub const PULL: &str = "PULL";
/// A switch that is on.
pub const ON: &str = "ON";
/// A switch that is off (Tencent's default for all three).
pub const OFF: &str = "OFF";

/// The three switches: SDK field name and the event type it lets through.
pub const SWITCHES: [(&str, &str); 3] = [
    ("UploadMediaCompleteEventSwitch", "NewFileUpload"),
    ("DeleteMediaCompleteEventSwitch", "FileDeleted"),
    ("PersistenceCompleteEventSwitch", "PersistenceComplete"),
];

/// One app's event configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventConfig {
    /// `PUSH` or `PULL`.
    #[serde(rename = "Mode")]
    pub mode: String,
    /// Where PUSH mode sends v3 callbacks (empty: none).
    #[serde(rename = "NotificationUrl")]
    pub notification_url: String,
    /// `ON` or `OFF`: NewFileUpload.
    #[serde(rename = "UploadMediaCompleteEventSwitch")]
    pub upload_media_complete: String,
    /// `ON` or `OFF`: FileDeleted.
    #[serde(rename = "DeleteMediaCompleteEventSwitch")]
    pub delete_media_complete: String,
    /// `ON` or `OFF`: PersistenceComplete.
    #[serde(rename = "PersistenceCompleteEventSwitch")]
    pub persistence_complete: String,
    /// The callback signing key ModifyEventConfig may set; DescribeEventConfig does not return it.
    #[serde(skip)]
    pub sign_key: String,
}

impl EventConfig {
    /// An app set up for a reliable-callback consumer: `PULL`, every switch `ON` (the
    /// emulator's default, so tests see every event type).
    pub fn pull_all_on() -> EventConfig {
        EventConfig {
            mode: PULL.into(),
            notification_url: String::new(),
            upload_media_complete: ON.into(),
            delete_media_complete: ON.into(),
            persistence_complete: ON.into(),
            sign_key: String::new(),
        }
    }

    /// A new app as Tencent sets it up for plain callbacks: `PUSH`, every switch `OFF`.
    pub fn push_all_off() -> EventConfig {
        EventConfig {
            mode: PUSH.into(),
            upload_media_complete: OFF.into(),
            delete_media_complete: OFF.into(),
            persistence_complete: OFF.into(),
            ..EventConfig::pull_all_on()
        }
    }

    fn switch(&self, field: &str) -> &str {
        match field {
            "UploadMediaCompleteEventSwitch" => &self.upload_media_complete,
            "DeleteMediaCompleteEventSwitch" => &self.delete_media_complete,
            _ => &self.persistence_complete,
        }
    }

    fn switch_mut(&mut self, field: &str) -> &mut String {
        match field {
            "UploadMediaCompleteEventSwitch" => &mut self.upload_media_complete,
            "DeleteMediaCompleteEventSwitch" => &mut self.delete_media_complete,
            _ => &mut self.persistence_complete,
        }
    }

    /// Whether an event of `event_type` goes into this app's queue.
    pub fn queues(&self, event_type: &str) -> bool {
        self.mode == PULL
            && SWITCHES.iter().filter(|(_, t)| *t == event_type).all(|(field, _)| self.switch(field) == ON)
    }

    /// The DescribeEventConfig answer fields.
    pub fn describe(&self) -> Value {
        serde_json::to_value(self).expect("serialisable")
    }

    /// Applies a ModifyEventConfig request: only the fields present change (an empty
    /// `NotificationUrl` clears it). A bad value changes nothing and names the field.
    pub fn modify(&mut self, payload: &Value) -> Result<(), String> {
        let mut next = self.clone();
        let text = |field: &str| -> Result<Option<String>, String> {
            match payload.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("{field} must be a string")),
            }
        };
        if let Some(mode) = text("Mode")? {
            if mode != PUSH && mode != PULL {
                return Err(format!("Mode must be PUSH or PULL, not `{mode}`"));
            }
            next.mode = mode;
        }
        for (field, _) in SWITCHES {
            if let Some(value) = text(field)? {
                if value != ON && value != OFF {
                    return Err(format!("{field} must be ON or OFF, not `{value}`"));
                }
                *next.switch_mut(field) = value;
            }
        }
        if let Some(url) = text("NotificationUrl")? {
            next.notification_url = url;
        }
        if let Some(key) = text("SignKey")? {
            next.sign_key = key;
        }
        *self = next;
        Ok(())
    }
}

/// The `EventType` of an event text (v3 `EventType`, v2 `eventType`), if it has one.
pub fn event_type(content: &str) -> Option<String> {
    let value: Value = serde_json::from_str(content).ok()?;
    value.get("EventType").or_else(|| value.get("eventType")).and_then(Value::as_str).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn switches_and_mode_decide_what_is_queued() {
        let mut c = EventConfig::pull_all_on();
        assert!(c.queues("NewFileUpload") && c.queues("ProcedureStateChanged"));
        c.modify(&json!({"UploadMediaCompleteEventSwitch": "OFF"})).unwrap();
        assert!(!c.queues("NewFileUpload") && c.queues("FileDeleted"));
        c.modify(&json!({"Mode": "PUSH"})).unwrap();
        assert!(!c.queues("ProcedureStateChanged"));
        assert!(c.modify(&json!({"Mode": "pull", "DeleteMediaCompleteEventSwitch": "OFF"})).is_err());
        assert_eq!(c.delete_media_complete, ON, "a refused request changes nothing");
        assert_eq!(
            EventConfig::push_all_off().describe(),
            json!({"Mode": "PUSH", "NotificationUrl": "", "UploadMediaCompleteEventSwitch": "OFF",
                   "DeleteMediaCompleteEventSwitch": "OFF", "PersistenceCompleteEventSwitch": "OFF"})
        );
    }
}
