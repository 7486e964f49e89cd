//! The daemon's event-configuration check: `DescribeEventConfig` at start and every
//! `account.check_interval`, so a daemon that receives nothing says why.
//!
//! - Mode not `PULL`: ERROR once (again only if the mode changes), `/healthz` 503 and the
//!   STATUS= line name the app, the mode and the fix, until a later check finds `PULL`
//!   (no restart needed) or events are pulled from the source, which proves `PULL`
//!   ([`crate::health::SourceHealth::events_pulled`]).
//! - A check is also made at once, not waiting for the interval, when pulled events
//!   cleared the mode and when `account set-mode` asked for it through the store
//!   ([`super::recheck`]).
//! - Switches off: one WARN listing the event types that will never arrive (again only
//!   when that list changes); one INFO naming those switched on since.
//! - The credentials may not call it: one WARN naming the permission to grant; pulling is
//!   not affected. Any other failure: one WARN per streak. Either way the next try is one
//!   interval later, never sooner.
//!
//! The state is also kept in the store (`event_config`) for `vod-eventd status`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{app_name, describe, is_permission_denied, EventConfig, DESCRIBE_PERMISSION};
use crate::api::{ApiError, V3Client};
use crate::health::SourceHealth;
use crate::store::Store;

/// The check loop.
pub struct AccountCheck {
    /// An API 3.0 client with the configured credentials.
    pub client: V3Client,
    /// The source's app (`vod.sub_app_id` or `sources[i].sub_app_id`).
    pub sub_app_id: Option<u64>,
    /// The source's name, for messages.
    pub source: String,
    /// `account.check_interval`.
    pub interval: Duration,
    /// The source's health, where a mode that is not PULL makes the daemon unhealthy.
    pub health: Arc<SourceHealth>,
    /// The `daemon_state` key its finding is kept under for `status` (`event_config`,
    /// `event_config.SOURCE` for a source other than the default one).
    pub state_key: String,
    /// For `status`.
    pub store: Store,
}

/// The `daemon_state` key a source's event configuration is kept under: `event_config`
/// for the default source (as before sources existed), `event_config.NAME` for the others.
pub fn state_key(source: &str) -> String {
    match source {
        crate::config::DEFAULT_SOURCE => "event_config".to_string(),
        name => format!("event_config.{name}"),
    }
}

/// Why the latest check failed, to log only the first of a streak.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Failure {
    Denied,
    Other,
}

impl AccountCheck {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut last: Option<EventConfig> = None;
        let mut failing: Option<Failure> = None;
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = describe(&self.client) => result,
            };
            let app = app_name(self.sub_app_id, &self.source);
            let state = match result {
                Ok(config) => {
                    self.report_config(&app, &config, last.as_ref());
                    failing = None;
                    last.insert(config).summary()
                }
                Err(e) => {
                    let failure = self.report_failure(&app, &e, failing);
                    failing = Some(failure);
                    match failure {
                        Failure::Denied => format!("unknown: the credentials lack {DESCRIBE_PERMISSION}"),
                        Failure::Other => format!("unknown: DescribeEventConfig failed ({})", e.label()),
                    }
                }
            };
            let _ = self.store.put_state(vec![(self.state_key.clone(), format!("{app}: {state}"))]).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.health.account_check_requested() => debug!(source = %self.source, "Checking the event configuration again, as asked."),
            }
        }
    }

    /// Logs the first failure of a streak (a missing permission, or anything else); the
    /// last configuration read, and the health verdict drawn from it, stay.
    fn report_failure(&self, app: &str, e: &ApiError, before: Option<Failure>) -> Failure {
        let failure = if is_permission_denied(e) { Failure::Denied } else { Failure::Other };
        match failure {
            _ if before == Some(failure) => debug!(error = %e, "DescribeEventConfig failed again."),
            Failure::Denied => {
                warn!(app = %app, error = %e, permission = DESCRIBE_PERMISSION, "These credentials may not read the app's event configuration, so the daemon cannot tell whether events are sent to the queue at all. Grant `{DESCRIBE_PERMISSION}` to this sub-account in CAM. Pulling is not affected.")
            }
            Failure::Other => {
                warn!(app = %app, error = %e, retry_in = ?self.interval, "Could not read the app's event configuration (DescribeEventConfig); will try again. Pulling is not affected.")
            }
        }
        failure
    }

    fn report_config(&self, app: &str, config: &EventConfig, previous: Option<&EventConfig>) {
        if !config.is_pull() {
            if previous.is_none_or(|p| p.mode != config.mode) {
                error!(app = %app, mode = %config.mode, "The app delivers events by HTTP callback (Mode = \"{}\"), not through the reliable-callback queue, so PullEvents gets nothing and no event reaches this daemon. Switch {app} to reliable callback with `vod-eventd account set-mode pull` (or in the VOD console: event notification settings, reliable callback).", config.mode);
            }
            self.health.set_account_problem(Some(format!(
                "{app} is in {} mode: its events go to HTTP callbacks, never to the queue; run `vod-eventd account set-mode pull`",
                config.mode
            )));
        } else {
            self.health.set_account_problem(None);
            if previous.is_some_and(|p| !p.is_pull()) {
                info!(app = %app, "The app is in PULL mode now: its events go to the queue.");
            }
        }
        let off = config.switched_off();
        let on_now: Vec<&str> = previous
            .map(|p| p.switched_off().into_iter().filter(|s| !off.contains(s)).map(|s| s.event_type()).collect())
            .unwrap_or_default();
        if !on_now.is_empty() {
            info!(app = %app, now_arrive = %on_now.join(", "), "These event types are switched on now and reach the queue: {}.", on_now.join(", "));
        }
        if !off.is_empty() && previous.is_none_or(|p| p.switched_off() != off) {
            let types: Vec<&str> = off.iter().map(|s| s.event_type()).collect();
            let fields: Vec<&str> = off.iter().map(|s| s.field()).collect();
            let names: Vec<&str> = off.iter().map(|s| s.name()).collect();
            warn!(app = %app, never_arrive = %types.join(", "), "These event types will never arrive: {} is not ON for {app}. If you need them, `vod-eventd account set-mode pull --enable {}` switches them on.", fields.join(", "), names.join(","));
        }
    }
}
