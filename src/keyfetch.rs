//! DescribeDrmDataKey, batched and coalesced, for the DRM handler and the key server alike.
//!
//! Callers ask for EDKs under a source; each source has one queue and, while it holds work,
//! one worker that takes up to [`EDKS_PER_CALL`] EDKs at a time, calls DescribeDrmDataKey
//! once for them (the client's own limiter keeps Tencent's rate: v2 100 calls/min, API 3.0
//! 20/s), stores the keys, and answers every caller waiting on each EDK. While a call (or
//! its wait for the limiter) is under way, new requests gather in the queue, so a burst
//! leaves in calls of ten; a request for an EDK already queued or in flight waits on that
//! one instead of adding a call. EDKs already stored when a batch is taken are not asked
//! for again.
//!
//! Tencent refuses a whole batch when one of its EDKs is not the account's, without saying
//! which: a refused batch is asked again one EDK per call, so each refusal lands on its own
//! EDK ([`Fetched::Refused`]).
//!
//! Bounded: at most [`MAX_QUEUED`] distinct EDKs waiting per source and [`MAX_WAITERS`]
//! callers per EDK; beyond either, the request fails at once (retryable). Data keys never
//! reach a log line or an error message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use indexmap::IndexMap;
use tokio::sync::oneshot;

use crate::api::{Client, ErrorClass};
use crate::store::{NewKey, Store};

/// EDKs per DescribeDrmDataKey call (Tencent's maximum).
pub const EDKS_PER_CALL: usize = 10;
/// Distinct EDKs waiting for a call, per source, at most.
pub const MAX_QUEUED: usize = 10_000;
/// Callers waiting on one EDK, at most.
pub const MAX_WAITERS: usize = 4_096;

/// Where a fetched key is stored from: the event that names its EDK.
#[derive(Debug, Clone, Default)]
pub struct KeyOrigin {
    /// The file it protects.
    pub file_id: Option<String>,
    /// `keySource`.
    pub key_source: Option<String>,
    /// The encryption template.
    pub definition: Option<i64>,
    /// The event.
    pub event_id: i64,
}

/// What became of one EDK.
#[derive(Clone, PartialEq, Eq)]
pub enum Fetched {
    /// Its data key, fetched now and stored.
    Key([u8; 16]),
    /// It was stored already (another caller fetched it); read it from the store.
    Stored,
    /// Tencent refused it (not a key of this account and app), or left it out of its answer.
    Refused,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fetched::Key(_) => "Key([redacted])",
            Fetched::Stored => "Stored",
            Fetched::Refused => "Refused",
        })
    }
}

/// Why an EDK could not be resolved now.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    /// What failed (no key material).
    pub message: String,
    /// Worth trying again later.
    pub retryable: bool,
}

impl FetchError {
    fn retryable(message: impl Into<String>) -> FetchError {
        FetchError { message: message.into(), retryable: true }
    }
}

/// One EDK's outcome.
pub type Outcome = Result<Fetched, FetchError>;

struct Waiter {
    origin: KeyOrigin,
    tx: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Queue {
    /// Not yet taken by the worker, oldest first.
    waiting: IndexMap<String, Vec<Waiter>>,
    /// Taken: their call is under way.
    in_flight: HashMap<String, Vec<Waiter>>,
    /// A worker runs for this source.
    working: bool,
}

type Queues = Arc<Mutex<HashMap<String, Queue>>>;

/// Batched, coalesced DescribeDrmDataKey calls; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    store: Store,
    queues: Queues,
}

impl Batcher {
    /// A batcher that stores the keys it fetches in `store`.
    pub fn new(store: Store) -> Batcher {
        Batcher { store, queues: Arc::default() }
    }

    /// Resolves `edks` under `source` with `client` (the source's own, so under its app and
    /// credentials); each EDK's outcome, in the order given.
    pub async fn fetch(
        &self,
        source: &str,
        client: Arc<Client>,
        edks: Vec<(String, KeyOrigin)>,
    ) -> Vec<(String, Outcome)> {
        let mut waits = Vec::with_capacity(edks.len());
        {
            let mut queues = self.queues.lock().expect("batcher lock poisoned");
            let queue = queues.entry(source.to_string()).or_default();
            for (edk, origin) in edks {
                let (tx, rx) = oneshot::channel();
                let waiter = Waiter { origin, tx };
                let joined = if let Some(waiters) = queue.in_flight.get_mut(&edk) {
                    join(waiters, waiter)
                } else if let Some(waiters) = queue.waiting.get_mut(&edk) {
                    join(waiters, waiter)
                } else if queue.waiting.len() < MAX_QUEUED {
                    queue.waiting.insert(edk.clone(), vec![waiter]);
                    Ok(())
                } else {
                    Err("too many EDKs wait for DescribeDrmDataKey")
                };
                waits.push((edk, joined.map(|()| rx)));
            }
            if !queue.working && !queue.waiting.is_empty() {
                queue.working = true;
                tokio::spawn(work(self.queues.clone(), source.to_string(), client, self.store.clone()));
            }
        }
        let mut out = Vec::with_capacity(waits.len());
        for (edk, wait) in waits {
            let outcome = match wait {
                Ok(rx) => rx.await.unwrap_or_else(|_| Err(FetchError::retryable("the key fetcher stopped"))),
                Err(why) => Err(FetchError::retryable(format!("{why}; try again"))),
            };
            out.push((edk, outcome));
        }
        out
    }
}

/// Adds a caller to an EDK's waiters, unless it has too many.
fn join(waiters: &mut Vec<Waiter>, waiter: Waiter) -> Result<(), &'static str> {
    if waiters.len() >= MAX_WAITERS {
        return Err("too many requests wait on this EDK");
    }
    waiters.push(waiter);
    Ok(())
}

/// The worker of one source: takes batches until its queue is empty.
async fn work(queues: Queues, source: String, client: Arc<Client>, store: Store) {
    // Should this task end early (a panic), the queue must not stay marked as worked on.
    let _guard = Guard { queues: queues.clone(), source: source.clone() };
    loop {
        let batch: Vec<(String, KeyOrigin)> = {
            let mut all = queues.lock().expect("batcher lock poisoned");
            let Some(queue) = all.get_mut(&source) else { return };
            let take = queue.waiting.len().min(EDKS_PER_CALL);
            let mut batch = Vec::with_capacity(take);
            for (edk, waiters) in queue.waiting.drain(..take) {
                batch.push((edk.clone(), waiters[0].origin.clone()));
                queue.in_flight.insert(edk, waiters);
            }
            if batch.is_empty() {
                queue.working = false;
                if queue.in_flight.is_empty() {
                    all.remove(&source);
                }
                return;
            }
            batch
        };
        let taken: Vec<String> = batch.iter().map(|(edk, _)| edk.clone()).collect();
        let outcomes = resolve(&client, &store, batch).await;
        let mut all = queues.lock().expect("batcher lock poisoned");
        let Some(queue) = all.get_mut(&source) else { return };
        for (edk, outcome) in outcomes {
            for waiter in queue.in_flight.remove(&edk).unwrap_or_default() {
                let _ = waiter.tx.send(outcome.clone());
            }
        }
        // Every EDK taken gets an answer, even one an answer above left out.
        for edk in taken {
            for waiter in queue.in_flight.remove(&edk).unwrap_or_default() {
                let _ = waiter.tx.send(Err(FetchError::retryable("no outcome for this EDK")));
            }
        }
    }
}

struct Guard {
    queues: Queues,
    source: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(mut all) = self.queues.lock() {
                // Dropping the waiters' senders answers them with "the key fetcher stopped".
                all.remove(&self.source);
            }
        }
    }
}

/// One batch: what is stored already, then one call for the rest (split on a refusal).
async fn resolve(client: &Client, store: &Store, batch: Vec<(String, KeyOrigin)>) -> Vec<(String, Outcome)> {
    let edks: Vec<String> = batch.iter().map(|(e, _)| e.clone()).collect();
    let known = match store.known_edks(edks).await {
        Ok(known) => known,
        Err(e) => {
            let error = FetchError::retryable(format!("the store does not answer: {e}"));
            return batch.into_iter().map(|(edk, _)| (edk, Err(error.clone()))).collect();
        }
    };
    let (stored, missing): (Vec<_>, Vec<_>) = batch.into_iter().partition(|(edk, _)| known.contains(edk));
    let mut out: Vec<(String, Outcome)> = stored.into_iter().map(|(edk, _)| (edk, Ok(Fetched::Stored))).collect();
    if missing.is_empty() {
        return out;
    }
    match call(client, store, &missing).await {
        Err(CallError::Refused) if missing.len() > 1 => {
            // Which one? Ask for each alone.
            for one in missing {
                let single = std::slice::from_ref(&one);
                let outcome = match call(client, store, single).await {
                    Ok(mut got) => got.pop().map_or(Ok(Fetched::Refused), |(_, o)| o),
                    Err(CallError::Refused) => Ok(Fetched::Refused),
                    Err(CallError::Failed(e)) => Err(e),
                };
                out.push((one.0, outcome));
            }
        }
        Err(CallError::Refused) => out.extend(missing.into_iter().map(|(edk, _)| (edk, Ok(Fetched::Refused)))),
        Err(CallError::Failed(e)) => out.extend(missing.into_iter().map(|(edk, _)| (edk, Err(e.clone())))),
        Ok(got) => out.extend(got),
    }
    out
}

enum CallError {
    /// Tencent refused a parameter: an EDK that is not the account's.
    Refused,
    Failed(FetchError),
}

/// One DescribeDrmDataKey call for `edks` (at most ten), its keys stored.
async fn call(
    client: &Client,
    store: &Store,
    edks: &[(String, KeyOrigin)],
) -> Result<Vec<(String, Outcome)>, CallError> {
    let asked: Vec<String> = edks.iter().map(|(e, _)| e.clone()).collect();
    let pairs = client.describe_drm_data_key(&asked).await.map_err(|e| match e.class() {
        ErrorClass::InvalidParameter => CallError::Refused,
        _ => CallError::Failed(FetchError::retryable(e.to_string())),
    })?;
    let answered: HashMap<String, String> = pairs.into_iter().collect();
    let mut keys = Vec::new();
    let mut out = Vec::with_capacity(edks.len());
    for (edk, origin) in edks {
        let outcome = match answered.get(edk).map(|dk| decode_key(dk)) {
            None => Ok(Fetched::Refused),
            Some(None) => Err(FetchError {
                message: "DescribeDrmDataKey returned a data key that is not 16 bytes of base64".into(),
                retryable: false,
            }),
            Some(Some(dk)) => {
                keys.push(NewKey {
                    edk: edk.clone(),
                    dk,
                    file_id: origin.file_id.clone(),
                    key_source: origin.key_source.clone(),
                    definition: origin.definition,
                    event_id: origin.event_id,
                    sealed: None,
                });
                Ok(Fetched::Key(dk))
            }
        };
        out.push((edk.clone(), outcome));
    }
    if !keys.is_empty() {
        if let Err(e) = store.insert_keys(keys).await {
            let error = FetchError::retryable(format!("the fetched keys were not stored: {e}"));
            return Err(CallError::Failed(error));
        }
    }
    Ok(out)
}

/// 16 bytes from base64, or `None`.
pub fn decode_key(b64: &str) -> Option<[u8; 16]> {
    base64::engine::general_purpose::STANDARD.decode(b64).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetched_key_is_never_printed() {
        assert_eq!(format!("{:?}", Fetched::Key([0xab; 16])), "Key([redacted])");
    }

    #[test]
    fn official_example_key_decodes_to_16_bytes() {
        assert_eq!(
            crate::event::hex(&decode_key("i6zM/pnmIERJE3vAt0UnGg==").unwrap()),
            "8bacccfe99e6204449137bc0b745271a"
        );
        assert_eq!(decode_key("c2hvcnQ="), None);
    }
}
