//! `LISTEN`/`NOTIFY` on PostgreSQL ([`crate::store::notices`]). Every transaction that
//! creates deliveries or makes some due, pauses or resumes a handler, or asks for an
//! account check ends with one `pg_notify` on [`CHANNEL`] ([`notify`]); PostgreSQL sends
//! it at commit, and only then, to every listening session. Each daemon listens on one
//! dedicated session ([`listen`]), driven by its own task, reconnecting (and listening
//! again) after a lost connection. A notice names the process that sent it: a daemon's
//! own writes already wake its own loops, so it skips them.

use tokio::sync::watch;
use tokio_postgres::AsyncMessage;
use tracing::debug;

use super::pg_err;
use crate::store::notices::Notice;
use crate::store::StoreError;

/// The notification channel.
pub(super) const CHANNEL: &str = "vod_eventd";

/// What a notice announces.
#[derive(Debug, Clone, Copy)]
pub(super) enum Topic {
    /// Deliveries created or made due, a handler paused or resumed.
    Work,
    /// An account check asked for.
    Recheck,
}

impl Topic {
    fn name(self) -> &'static str {
        match self {
            Topic::Work => "work",
            Topic::Recheck => "recheck",
        }
    }
}

/// Announces `topic` from `instance` when `tx` commits (one statement; PostgreSQL folds
/// identical notices of one transaction into one).
pub(super) async fn notify(
    tx: &deadpool_postgres::Transaction<'_>,
    topic: Topic,
    instance: &str,
) -> Result<(), StoreError> {
    let stmt = tx.prepare_cached(&format!("SELECT pg_notify('{CHANNEL}', $1)")).await?;
    tx.execute(&stmt, &[&format!("{} {instance}", topic.name())]).await?;
    Ok(())
}

/// Listens on [`CHANNEL`] on a session of its own until every receiver of `notices` is
/// gone: counts other processes' notices into `notices`, and sets it not live while the
/// session is down (retrying every few seconds).
pub(super) async fn listen(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    instance: String,
    notices: watch::Sender<Notice>,
) {
    let mut failures = 0;
    loop {
        match session(&config, &tls, &instance, &notices).await {
            Ok(()) => failures = 0,
            Err(e) => debug!(error = %e, "Cannot listen for other hosts' notices; polling meanwhile."),
        }
        notices.send_if_modified(|n| std::mem::replace(&mut n.live, false));
        tokio::select! {
            _ = notices.closed() => return,
            _ = tokio::time::sleep(super::reconnect_delay(failures)) => {}
        }
        failures += 1;
    }
}

/// One listening session, until it is lost (or nobody receives the notices any more).
async fn session(
    config: &tokio_postgres::Config,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
    instance: &str,
    notices: &watch::Sender<Notice>,
) -> Result<(), StoreError> {
    let (client, mut connection) = config.connect(tls.clone()).await.map_err(pg_err)?;
    // The connection is driven here, where its notices arrive; the client's one statement
    // goes through it too.
    let own = format!(" {instance}");
    let statement = format!("LISTEN {CHANNEL}");
    let mut listening = std::pin::pin!(client.batch_execute(&statement));
    let mut listened = false;
    loop {
        let message = tokio::select! {
            _ = notices.closed() => return Ok(()),
            done = &mut listening, if !listened => {
                done.map_err(pg_err)?;
                listened = true;
                // Whatever was announced while no session listened is unknown: everything moves once.
                notices.send_modify(|n| {
                    n.live = true;
                    n.work += 1;
                    n.recheck += 1;
                });
                continue;
            }
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => message,
        };
        match message {
            Some(Ok(AsyncMessage::Notification(n))) if !n.payload().ends_with(&own) => {
                notices.send_modify(|state| match n.payload().split(' ').next() {
                    Some("recheck") => state.recheck += 1,
                    _ => state.work += 1,
                })
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(pg_err(e)),
            None => return Ok(()),
        }
    }
}
