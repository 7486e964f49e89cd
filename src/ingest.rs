//! Group commit for pulled events: one writer task stores the pulled batches of every
//! source, several per durable transaction. A puller hands a batch over and gets its rows
//! back once the commit is on disk; only then are its handles confirmed. While one
//! transaction commits, the next batches queue and go into the following one, so a busy
//! queue shares each fsync among several pulls, and a quiet one commits each pull at once
//! (no added delay). Rows whose handles were confirmed are recorded (`confirmed_at`) in the
//! next transaction, or on their own after [`CONFIRMED_DELAY`] without one.
//!
//! A refused write is retried with backoff ([`Outage`]): the batches wait, unconfirmed, and
//! each puller stops pulling once its few batches in flight are waiting. Nothing in a
//! batch's content can make its insert fail (only the store itself: disk, I/O, locks), so a
//! group is retried whole. At shutdown the writer stores what was handed over, unless the
//! store is refusing writes: then those batches are dropped unconfirmed, and Tencent
//! redelivers them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::PullConfig;
use crate::handoff::Handoff;
use crate::health::StoreWriter;
use crate::metrics::Metrics;
use crate::outage::Outage;
use crate::route::Routed;
use crate::store::{Batch, Inserted, Store};

/// Messages waiting for the writer; a puller waits when it is full.
const CAPACITY: usize = 64;
/// At most this many events per transaction (a group closes at the first batch past it).
const MAX_GROUP_EVENTS: usize = 1024;
/// Confirmed rows wait at most this long for a transaction to ride along with.
pub const CONFIRMED_DELAY: Duration = Duration::from_secs(1);

/// A batch's rows and routing, once committed.
pub type Stored = Vec<(Inserted, Routed)>;

enum Msg {
    Store(Batch, oneshot::Sender<Stored>),
    /// Row ids whose handles were confirmed, with when (Unix ms).
    Confirmed(Vec<(i64, i64)>),
}

/// The writer's mailbox; cheap to clone. The writer ends once every clone is dropped.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Msg>,
}

impl Ingest {
    /// Starts the writer; refused writes are retried from `pull.backoff_min` up to
    /// `pull.backoff_max`. `shutdown` only cuts short the retries of a store refusing writes.
    pub fn start(
        store: Store,
        metrics: Arc<Metrics>,
        pull: &PullConfig,
        handoff: Arc<Handoff>,
        shutdown: CancellationToken,
    ) -> (Ingest, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let outage = Outage::new(
            StoreWriter::Pull,
            "Could not store pulled events; not confirming them and pulling no more until the store accepts writes. They stay at Tencent and are redelivered.",
            metrics,
        )
        .with_delays(pull.backoff_min, pull.backoff_max);
        (Ingest { tx }, tokio::spawn(run(store, outage, rx, handoff, shutdown)))
    }

    /// Hands a batch over; the answer comes once it is committed. None if the writer has
    /// stopped; a closed answer means it was dropped at shutdown without being stored.
    pub async fn store(&self, batch: Batch) -> Option<oneshot::Receiver<Stored>> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Msg::Store(batch, reply)).await.ok()?;
        Some(answer)
    }

    /// Records that handles of these rows were confirmed at `at_ms`.
    pub async fn confirmed(&self, ids: Vec<i64>, at_ms: i64) {
        let rows = ids.into_iter().map(|id| (id, at_ms)).collect();
        // Only fails once the writer has stopped, after every confirmer.
        let _ = self.tx.send(Msg::Confirmed(rows)).await;
    }
}

async fn run(
    store: Store,
    mut outage: Outage,
    mut rx: mpsc::Receiver<Msg>,
    handoff: Arc<Handoff>,
    shutdown: CancellationToken,
) {
    let mut confirmed: Vec<(i64, i64)> = Vec::new();
    loop {
        let first = match confirmed.is_empty() {
            true => rx.recv().await,
            false => match tokio::time::timeout(CONFIRMED_DELAY, rx.recv()).await {
                Ok(msg) => msg,
                Err(_) => {
                    record_confirmed(&store, &mut confirmed).await;
                    continue;
                }
            },
        };
        let Some(first) = first else { break };
        let mut jobs = Vec::new();
        let mut events = 0;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Store(batch, reply) => {
                    events += batch.events.len();
                    jobs.push((batch, reply));
                }
                Msg::Confirmed(rows) => confirmed.extend(rows),
            }
            if events < MAX_GROUP_EVENTS {
                next = rx.try_recv().ok();
            }
        }
        if jobs.is_empty() {
            continue;
        }
        if !commit(&store, jobs, &mut confirmed, (&mut outage, &handoff), &shutdown).await {
            // Shutdown during an outage: what is still queued cannot be stored either.
            rx.close();
            while rx.recv().await.is_some() {}
            break;
        }
    }
    record_confirmed(&store, &mut confirmed).await;
}

/// Stores `jobs` in one transaction with `confirmed`, claiming what the dispatcher offers,
/// retrying until the store accepts it; false if shutdown came first (the jobs are
/// dropped, unanswered).
async fn commit(
    store: &Store,
    jobs: Vec<(Batch, oneshot::Sender<Stored>)>,
    confirmed: &mut Vec<(i64, i64)>,
    (outage, handoff): (&mut Outage, &Handoff),
    shutdown: &CancellationToken,
) -> bool {
    let batches: Vec<Batch> = jobs.iter().map(|(batch, _)| batch.clone()).collect();
    let events = batches.iter().map(|b| b.events.len()).sum();
    loop {
        let taken = handoff.take(events);
        match store.ingest_claiming(batches.clone(), confirmed.clone(), taken.wants.clone()).await {
            Ok(stored) => {
                outage.succeeded();
                confirmed.clear();
                if stored.left_pending() {
                    handoff.wake.notify_one();
                }
                handoff.hand_over(taken, stored.claimed).await;
                for ((_, reply), rows) in jobs.into_iter().zip(stored.rows) {
                    // A puller that stopped waiting has nothing to confirm; the rows stay.
                    let _ = reply.send(rows);
                }
                return true;
            }
            Err(e) => {
                drop(taken);
                let delay = outage.failed(&e);
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Writes confirmed rows on their own (bookkeeping: failing loses only the distinction
/// between a redelivery and a new occurrence of the same content, so it is not retried).
async fn record_confirmed(store: &Store, confirmed: &mut Vec<(i64, i64)>) {
    if confirmed.is_empty() {
        return;
    }
    if let Err(e) = store.ingest(Vec::new(), std::mem::take(confirmed)).await {
        warn!(error = %e, "Could not record confirmed handles; if an identical event comes again it will be treated as a redelivery of the stored one.");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;
    use crate::config::ApiVersion;
    use crate::event::ReceivedEvent;

    async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn batch(n: usize) -> Batch {
        let events: Arc<[ReceivedEvent]> = (0..n)
            .map(|i| ReceivedEvent::from_content(&format!(r#"{{"eventType":"X","n":"{n}-{i}"}}"#), ApiVersion::V2))
            .collect();
        Batch { events, route: Arc::new(|_| Routed { handlers: vec!["h".into()], ..Routed::default() }) }
    }

    fn count(store: &Store, table: &str) -> i64 {
        match table {
            "events" => store.count_events().unwrap(),
            _ => store.deliveries().unwrap().len() as i64,
        }
    }

    /// Batches handed over while another connection holds the write lock get no answer
    /// (so their handles are not confirmed) until one commit stores them all, with their
    /// deliveries; a shutdown during the outage drops them unanswered and unstored.
    #[tokio::test]
    async fn batches_are_answered_only_after_their_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        let store = Store::open(&path, Duration::from_millis(1)).unwrap();
        let metrics = Arc::new(Metrics::default());
        let pull = PullConfig {
            backoff_min: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
            ..PullConfig::default()
        };
        let shutdown = CancellationToken::new();
        let (handoff, _dispatcher) = Handoff::new(Arc::default());
        let (ingest, writer) = Ingest::start(store.clone(), metrics.clone(), &pull, handoff, shutdown.clone());

        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut answers = Vec::new();
        for n in 1..=3 {
            answers.push(ingest.store(batch(n)).await.unwrap());
        }
        wait_for("refused commits", || metrics.store_failures.get() >= 3).await;
        for answer in &mut answers {
            assert!(matches!(answer.try_recv(), Err(TryRecvError::Empty)), "answered before any commit");
        }
        assert!(metrics.health.store_failing(StoreWriter::Pull));
        blocker.execute_batch("COMMIT").unwrap();
        let mut ids = Vec::new();
        for (n, answer) in answers.into_iter().enumerate() {
            let stored = answer.await.unwrap();
            assert_eq!(stored.len(), n + 1);
            assert!(stored.iter().all(|(row, routed)| row.new && routed.handlers == ["h"]));
            ids.extend(stored.iter().map(|(row, _)| row.id));
        }
        assert_eq!(count(&store, "events"), 6);
        assert_eq!(count(&store, "deliveries"), 6);
        assert!(!metrics.health.store_failing(StoreWriter::Pull));
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 6);
        // A confirmed row rides along with the next batch's transaction.
        ingest.confirmed(vec![ids[0]], 7).await;
        ingest.store(batch(5)).await.unwrap().await.unwrap();
        let confirmed = store.get_event(ids[0]).unwrap().and_then(|e| e.confirmed_at);
        assert_eq!(confirmed, Some(7));

        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let answer = ingest.store(batch(4)).await.unwrap();
        let failures = metrics.store_failures.get();
        wait_for("a refused commit", || metrics.store_failures.get() > failures).await;
        shutdown.cancel();
        assert!(answer.await.is_err(), "dropped unanswered at shutdown");
        drop(ingest);
        writer.await.unwrap();
        blocker.execute_batch("COMMIT").unwrap();
        assert_eq!(count(&store, "events"), 11, "nothing stored after shutdown");
    }
}
