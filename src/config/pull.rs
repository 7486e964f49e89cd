//! `[pull]` and `[confirm]`: the long-poll loop's backoff and the confirmation batches.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// ConfirmEvent takes at most this many handles per call (v3 documents 16; v2 is silent).
pub const MAX_CONFIRM_BATCH: usize = 16;
/// Time kept in reserve before a handle's window closes, for the confirm call to travel: a
/// handle older than `handle_ttl` minus this is dropped, not sent.
pub const CONFIRM_SAFETY_MARGIN: Duration = Duration::from_millis(500);

/// `[confirm]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfirmConfig {
    /// Flush a batch when its oldest handle was pulled this long ago.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Handles per ConfirmEvent call, 1 to 16.
    pub batch_size: usize,
    /// How long Tencent keeps a handle valid (30 s); older handles are dropped, not sent.
    #[serde(with = "humantime_serde")]
    pub handle_ttl: Duration,
    /// ConfirmEvent calls in flight at once.
    pub concurrency: usize,
}

/// `[pull]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PullConfig {
    /// First delay after a failed call; doubles up to `backoff_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    /// Longest delay between retries of a failing call.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Delay between retries while the credentials are refused (after a first success).
    #[serde(with = "humantime_serde")]
    pub auth_retry: Duration,
}

impl Default for ConfirmConfig {
    fn default() -> Self {
        ConfirmConfig {
            max_delay: Duration::from_secs(1),
            batch_size: MAX_CONFIRM_BATCH,
            handle_ttl: Duration::from_secs(30),
            concurrency: 4,
        }
    }
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            auth_retry: Duration::from_secs(60),
        }
    }
}

impl ConfirmConfig {
    /// The problems of `[confirm]`.
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if !(1..=MAX_CONFIRM_BATCH).contains(&self.batch_size) {
            bad("confirm.batch_size", format!("must be between 1 and {MAX_CONFIRM_BATCH}"));
        }
        let margin = CONFIRM_SAFETY_MARGIN;
        if self.handle_ttl <= self.max_delay + margin {
            bad(
                "confirm.handle_ttl",
                format!(
                    "must be above confirm.max_delay plus the {margin:?} kept for sending ({:?}), or every handle is dropped unconfirmed; Tencent's window is 30s",
                    self.max_delay + margin
                ),
            );
        }
        if self.concurrency == 0 {
            bad("confirm.concurrency", "must be at least 1".into());
        }
    }
}

impl PullConfig {
    /// The problems of `[pull]`.
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            bad("pull.backoff_min", "must be above zero and at most pull.backoff_max".into());
        }
    }
}
