//! An alert as an event: its kinds, its body and the hold between two of a kind. The model
//! that the store (which records and holds back alerts), the dispatcher (a delivery gone
//! dead, a breaker tripped) and the alert loop ([`crate::alerts`]) share; it sits below all
//! of them and imports only the event model.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::event::ReceivedEvent;
use crate::names::{ApiVersion, ALERT_SOURCE};

/// At most one alert per kind and subject per this long.
pub const ALERT_HOLD: Duration = Duration::from_secs(60);

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertKind {
    /// Deliveries to a handler went dead.
    DeliveryDead,
    /// No successful pull of a source for longer than `alert.pull_stale_after`.
    PullsStale,
    /// A source's credentials are refused.
    CredentialsRefused,
    /// The store refuses writes.
    StoreRefusingWrites,
    /// A handler's breaker paused it.
    HandlerPaused,
    /// A handler's breaker resumed it after a successful probe.
    HandlerResumed,
}

impl AlertKind {
    /// The event type.
    pub fn event_type(self) -> &'static str {
        match self {
            AlertKind::DeliveryDead => "vod-eventd.delivery.dead",
            AlertKind::PullsStale => "vod-eventd.pulls.stale",
            AlertKind::CredentialsRefused => "vod-eventd.credentials.refused",
            AlertKind::StoreRefusingWrites => "vod-eventd.store.refusing_writes",
            AlertKind::HandlerPaused => "vod-eventd.handler.paused",
            AlertKind::HandlerResumed => "vod-eventd.handler.resumed",
        }
    }

    /// The body member naming the subject.
    fn subject_key(self) -> &'static str {
        match self {
            AlertKind::DeliveryDead | AlertKind::HandlerPaused | AlertKind::HandlerResumed => "handler",
            AlertKind::PullsStale | AlertKind::CredentialsRefused => "source",
            AlertKind::StoreRefusingWrites => "store",
        }
    }
}

/// One alert, before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// What it is about.
    pub kind: AlertKind,
    /// Which handler, source or store.
    pub subject: String,
    /// What happened and what to do, for people.
    pub message: String,
    /// Further members of the body.
    pub details: Map<String, Value>,
    /// When it was raised, Unix ms.
    pub at_ms: i64,
}

impl Alert {
    /// An alert raised now.
    pub fn new(kind: AlertKind, subject: impl Into<String>, message: impl Into<String>) -> Alert {
        Alert {
            kind,
            subject: subject.into(),
            message: message.into(),
            details: Map::new(),
            at_ms: chrono::Utc::now().timestamp_millis(),
        }
    }

    /// The event to store, saying how many alerts of its kind and subject were held back
    /// since the last one stored.
    pub fn event(&self, held_back: i64) -> ReceivedEvent {
        let mut body = Map::new();
        body.insert("type".into(), self.kind.event_type().into());
        body.insert("time".into(), rfc3339(self.at_ms).into());
        body.insert(self.kind.subject_key().into(), self.subject.clone().into());
        body.insert("message".into(), self.message.clone().into());
        body.insert("held_back".into(), held_back.into());
        for (k, v) in &self.details {
            body.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let content = Value::Object(body).to_string();
        let mut event = ReceivedEvent::from_content(&content, ApiVersion::V3).with_source(ALERT_SOURCE, None);
        event.event_type = self.kind.event_type().to_string();
        event.files.clear();
        event.file_id = None;
        event.task_id = None;
        event
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_event_names_its_type_source_and_subject() {
        let mut alert = Alert::new(AlertKind::DeliveryDead, "hook", "2 deliveries went dead");
        alert.details.insert("deliveries".into(), 2.into());
        let event = alert.event(3);
        assert_eq!((event.event_type.as_str(), event.source.as_str()), ("vod-eventd.delivery.dead", ALERT_SOURCE));
        let body: Value = serde_json::from_str(&event.content).unwrap();
        assert_eq!(body["type"], "vod-eventd.delivery.dead");
        assert_eq!((body["handler"].as_str(), body["held_back"].as_i64()), (Some("hook"), Some(3)));
        assert_eq!(body["deliveries"], 2);
        assert!(body["time"].as_str().unwrap().ends_with('Z'));
        assert_ne!(alert.event(0).dedupe_key, Alert::new(AlertKind::DeliveryDead, "other", "x").event(0).dedupe_key);
    }
}
