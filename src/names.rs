//! Names and small types that several layers share, at the bottom of the module graph: which
//! Tencent API an event came through, and the reserved source names. It imports nothing of
//! the crate; the config, the event model, the store and the alerts all read these from here
//! (and `crate::config`, `crate::alerts` re-export them where they were first written).

use serde::{Deserialize, Serialize};

/// Which Tencent API to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ApiVersion {
    /// The v2 server API (`vod.api.qcloud.com/v2/index.php`): PullEvent/ConfirmEvent.
    #[default]
    V2,
    /// API 3.0 (`vod.tencentcloudapi.com`): PullEvents/ConfirmEvents, TC3-HMAC-SHA256.
    V3,
}

impl ApiVersion {
    /// `v2` or `v3`, as stored with each event.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V2 => "v2",
            ApiVersion::V3 => "v3",
        }
    }
}

/// The name of the one source a config without `[[sources]]` has. Events stored before
/// sources existed belong to it, and its dedupe keys are the content hashes alone, as
/// they were then.
pub const DEFAULT_SOURCE: &str = "default";

/// The source of every alert event (the daemon's own happenings); no configured source may
/// take it.
pub const ALERT_SOURCE: &str = "vod-eventd";
