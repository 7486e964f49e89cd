//! Asking a running daemon to check the event configuration again at once, through the
//! store (as `handlers pause` reaches it): `account set-mode` writes a fresh value under
//! the `daemon_state` key [`KEY`]; every daemon sharing the store reads that key and, when
//! it changed, has each source's check run now instead of at the next
//! `account.check_interval`, so `/healthz` and `status` follow the fix. It reads the key when
//! the write is announced (PostgreSQL's `NOTIFY`, see [`crate::store::notices`]), else
//! every `dispatch.poll_interval` (SQLite; PostgreSQL while its listening session is down),
//! and every [`crate::store::notices::FALLBACK_POLL`] anyway.
//!
//! Only the store's public `put_state`/`state` are used; `state` is a synchronous call, so
//! it runs on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::Metrics;
use crate::store::notices::{self, Notices};
use crate::store::{now_ms, Store, StoreError};

/// The `daemon_state` key a check request is written under.
pub const KEY: &str = crate::store::notices::RECHECK_KEY;

/// Asks every daemon sharing `store` to check the event configuration again now.
pub async fn request(store: &Store) -> Result<(), StoreError> {
    store.put_state(vec![(KEY.into(), format!("{} {}", now_ms(), std::process::id()))]).await
}

/// The value of [`KEY`], `None` if never written.
async fn read(store: &Store) -> Result<Option<String>, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.state().map(|mut state| state.remove(KEY)))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Waits until a check request is announced, or the announcements start or stop (a request
/// may have been missed); never, where there are none.
async fn announced(notices: &mut Option<Notices>) {
    let before = notices.as_ref().map(|n| *n.borrow());
    loop {
        let now = notices::changed(notices).await;
        if before.is_none_or(|b| b.recheck != now.recheck || b.live != now.live) {
            return;
        }
    }
}

/// Watches [`KEY`] (when announced, else every `every`) until `shutdown`, asking every source
/// (`metrics.health`) for a check when it changes. A failed read is logged at debug and tried again next time
/// (the store's own trouble is reported by its writers).
pub async fn watch(store: Store, metrics: Arc<Metrics>, every: Duration, shutdown: CancellationToken) {
    let mut seen: Option<Option<String>> = None;
    let mut notices = store.notices();
    loop {
        match read(&store).await {
            Ok(value) => {
                if seen.as_ref().is_some_and(|seen| *seen != value) {
                    debug!("An event configuration check was asked for (account set-mode); checking every source now.");
                    metrics.health.request_account_checks();
                }
                seen = Some(value);
            }
            Err(e) => debug!(error = %e, "Could not read account check requests from the store."),
        }
        let poll = tokio::time::sleep(notices::poll_every(notices.as_ref(), every));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = poll => {}
            _ = announced(&mut notices) => {}
        }
    }
}
