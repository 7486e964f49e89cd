//! Announcements of other processes' writes on a shared store (PostgreSQL `LISTEN`/`NOTIFY`):
//! a counter per topic that grows with every notice, behind a `watch` channel, so a loop
//! waits for a change instead of polling the store. A store without them (SQLite, whose
//! `data_version` plays that part) has none. While the listening session is down the
//! counters do not move and [`Notice::live`] is false: the loops then poll as they did
//! before; when it is back, every counter moves once (anything may have been missed).

use std::time::Duration;

use tokio::sync::watch;

/// How often a loop that waits for notices looks at the store anyway while they are live:
/// the fallback for a notice lost with its session before it was noticed as lost.
pub const FALLBACK_POLL: Duration = Duration::from_secs(30);

/// The `daemon_state` key `account set-mode` writes to ask every daemon for an event
/// configuration check (`crate::account::recheck`); writing it announces [`Notice::recheck`].
pub const RECHECK_KEY: &str = "account.recheck";

/// The state of the announcements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notice {
    /// The listening session is up: what another process commits is announced.
    pub live: bool,
    /// Grows when another process created deliveries or made some due (ingest, replay,
    /// retry, an expired lease swept, a requeue) or paused or resumed a handler.
    pub work: u64,
    /// Grows when [`RECHECK_KEY`] was written.
    pub recheck: u64,
}

/// A subscription to a store's announcements.
pub type Notices = watch::Receiver<Notice>;

/// How long to wait before looking at the store again when nothing is announced: `every`
/// while notices are not live (or there are none), else [`FALLBACK_POLL`] (or `every`, if longer).
pub fn poll_every(notices: Option<&Notices>, every: Duration) -> Duration {
    match notices {
        Some(n) if n.borrow().live => every.max(FALLBACK_POLL),
        _ => every,
    }
}

/// Waits until `notices` changes, returning the new state; never returns where there are none
/// (or their sender is gone).
pub async fn changed(notices: &mut Option<Notices>) -> Notice {
    if let Some(n) = notices {
        if n.changed().await.is_ok() {
            return *n.borrow_and_update();
        }
    }
    std::future::pending().await
}
