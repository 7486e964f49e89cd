//! The pull loop: long-poll PullEvent, hand each batch to the store writer
//! ([`crate::ingest`], which commits several pulls per durable transaction), and only
//! once it is committed hand the batch's handles to the confirmer. Pulling goes on while
//! up to [`IN_FLIGHT`] batches wait for their commit; a batch that cannot be stored is
//! retried by the writer and never confirmed until it is, and while it is failing nothing
//! more is pulled.
//!
//! There is one pull loop per source; each event is stored with its source's name and
//! `SubAppId`. A source whose credentials are refused on first contact reports it once
//! ([`Contact`]) and keeps retrying every `pull.auth_retry`: the daemon decides whether
//! that ends it (every source refused) or only makes it unhealthy, naming the source.

use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng as _;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info_span, warn, Instrument};

use crate::api::{ApiError, Client, ErrorClass, PulledItem};
use crate::backoff;
use crate::config::{Config, PullConfig};
use crate::confirmer::PendingHandle;
use crate::dispatch::Routing;
use crate::event::ReceivedEvent;
use crate::health::SourceHealth;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::store::{Batch, Store};

/// Pulled batches of one source waiting for their commit: pulling goes on while they
/// commit (so several pulls share one transaction) and stops while this many wait.
pub const IN_FLIGHT: usize = 4;

/// How the pull loop ended, when not by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The credentials were refused and have never worked against this store: a config
    /// problem, not an outage.
    #[error("{source}\nThese credentials were refused and have never pulled successfully into this store: check vod.secret_id and vod.secret_key (or vod.secret_key_file) in {config}, that the key is enabled, and that this machine's clock is right.")]
    CredentialsRefused {
        /// The refusal.
        source: ApiError,
        /// The config file, for the message.
        config: String,
    },
}

/// How a source's first contact went, reported once per pull loop.
#[derive(Debug)]
pub enum Contact {
    /// A pull succeeded.
    Worked {
        /// The source.
        source: String,
    },
    /// The credentials were refused and have never worked against this store.
    Refused {
        /// The source.
        source: String,
        /// The refusal, with the fix.
        error: PullError,
    },
}

/// Everything the pull loop needs.
pub struct Puller {
    /// The source's name, stored with each event.
    pub source: String,
    /// The source's app, stored with each event.
    pub sub_app_id: Option<u64>,
    /// The source's health.
    pub health: Arc<SourceHealth>,
    /// Where the first contact's outcome is reported.
    pub contact: mpsc::Sender<Contact>,
    /// The API client.
    pub client: Arc<Client>,
    /// The store (for the credentials' record).
    pub store: Store,
    /// The store writer.
    pub ingest: Ingest,
    /// Where committed handles go.
    pub confirm_tx: mpsc::Sender<PendingHandle>,
    /// Counters.
    pub stats: Arc<Metrics>,
    /// Settings.
    pub config: PullConfig,
    /// The config file's path, for messages.
    pub config_path: String,
    /// Which handlers each event goes to (replaced on reload).
    pub routing: watch::Receiver<Arc<Routing>>,
    /// The credentials' fingerprint, remembered in the store once a pull succeeds with them.
    pub credentials: String,
}

impl Puller {
    /// Builds the pull loop from a config.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        config_path: String,
        client: Arc<Client>,
        store: Store,
        ingest: Ingest,
        confirm_tx: mpsc::Sender<PendingHandle>,
        stats: Arc<Metrics>,
        routing: watch::Receiver<Arc<Routing>>,
        credentials: String,
    ) -> Self {
        let pull = config.pull.clone();
        let health = stats.health.source(crate::config::DEFAULT_SOURCE);
        let (contact, _) = mpsc::channel(1);
        Puller {
            source: crate::config::DEFAULT_SOURCE.into(),
            sub_app_id: client.sub_app_id(),
            health,
            contact,
            client,
            store,
            ingest,
            confirm_tx,
            stats,
            config: pull,
            config_path,
            routing,
            credentials,
        }
    }

    /// The same loop for source `name`, reporting its first contact on `contact`.
    pub fn for_source(self, name: &str, contact: mpsc::Sender<Contact>) -> Self {
        self.stats.health.remove_source(&self.source);
        Puller { health: self.stats.health.source(name), source: name.to_string(), contact, ..self }
    }

    async fn report(&self, contact: Contact) {
        // The daemon outlives its pull loops; a closed channel only means it is stopping.
        let _ = self.contact.send(contact).await;
    }

    /// Pulls until `shutdown` is cancelled, then waits for the batches handed over to be
    /// committed and their handles queued for confirmation. Refused credentials that never
    /// worked against this store are reported on `contact` (once) and retried every
    /// `pull.auth_retry`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), PullError> {
        let mut reported = false;
        let mut rng = rand::rngs::StdRng::from_entropy();
        let mut failures: u32 = 0;
        // Unknown counts as worked: exit 78 keeps the service down, so only when sure.
        let mut credentials_worked =
            self.store.credentials_worked(self.credentials.clone()).await.unwrap_or_else(|e| {
                warn!(error = %e, "Could not read whether these credentials worked before; assuming they did.");
                true
            });
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut committing = JoinSet::new();
        loop {
            while committing.try_join_next().is_some() {}
            let permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                permit = in_flight.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let result = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                r = self.client.pull() => r,
            };
            let received_at = Instant::now();
            match result {
                Ok(items) => {
                    if !reported {
                        reported = true;
                        self.report(Contact::Worked { source: self.source.clone() }).await;
                    }
                    if !credentials_worked {
                        credentials_worked = true;
                        if let Err(e) = self.store.remember_credentials(self.credentials.clone()).await {
                            warn!(error = %e, "Could not remember in the store that these credentials work.");
                        }
                    }
                    failures = 0;
                    self.stats.pulled(&self.source);
                    self.health.pull_ok();
                    if items.is_empty() {
                        continue;
                    }
                    if self.health.events_pulled() {
                        debug!(source = %self.source, "Events arrived, so the app is in PULL mode; checking its event configuration now.");
                    }
                    let span = info_span!("batch", events = items.len());
                    let Some(forward) = self.hand_over(items, received_at, permit, &shutdown).await else { break };
                    committing.spawn(forward.instrument(span));
                }
                Err(e) => {
                    Metrics::error(&self.stats.pull_errors, &self.source, e.label());
                    if !matches!(e.class(), ErrorClass::InvalidParameter | ErrorClass::Auth) {
                        self.health.pull_failed();
                    }
                    let delay = match e.class() {
                        ErrorClass::Auth if !credentials_worked => {
                            let first = self.health.credentials_refused(e.label());
                            if !reported {
                                reported = true;
                                let error =
                                    PullError::CredentialsRefused { source: e, config: self.config_path.clone() };
                                self.report(Contact::Refused { source: self.source.clone(), error }).await;
                            } else if first {
                                error!(error = %e, source = %self.source, "PullEvent credentials refused; this source pulls nothing until they are fixed. The other sources keep running.");
                            }
                            self.config.auth_retry
                        }
                        ErrorClass::Auth => {
                            self.health.credentials_refused(e.label());
                            error!(error = %e, source = %self.source, retry_in = ?self.config.auth_retry, "PullEvent credentials refused after working before; events wait at Tencent (kept up to 4 days). Check the source's secret_id and secret_key.");
                            self.config.auth_retry
                        }
                        ErrorClass::InvalidParameter => {
                            if self.health.pull_refused(e.to_string()) {
                                warn!(error = %e, "PullEvent refused a parameter; retrying. Check vod.region and vod.sub_app_id: if only refusals come for alert.pull_stale_after, the daemon reports itself unhealthy.");
                            }
                            backoff::delay(failures, self.config.backoff_min, self.config.backoff_max, &mut rng)
                        }
                        ErrorClass::Resign => {
                            warn!(error = %e, "PullEvent Timestamp or Nonce refused; signing again. If this repeats, check the system clock.");
                            backoff::delay(failures.min(4), self.config.backoff_min, self.config.backoff_max, &mut rng)
                        }
                        _ => {
                            warn!(error = %e, code = %e.label(), attempt = failures + 1, "PullEvent failed; retrying.");
                            backoff::delay(failures, self.config.backoff_min, self.config.backoff_max, &mut rng)
                        }
                    };
                    failures = failures.saturating_add(1);
                    if !backoff::sleep_or_cancel(delay, &shutdown).await {
                        break;
                    }
                }
            }
        }
        while committing.join_next().await.is_some() {}
        Ok(())
    }

    /// Hands a pulled batch to the store writer; returns the task that waits for its commit
    /// and then queues its handles for confirmation (holding `permit` until then). None if
    /// shutdown came first or the writer has stopped: the batch is not confirmed, and
    /// Tencent redelivers it.
    async fn hand_over(
        &self,
        items: Vec<PulledItem>,
        received_at: Instant,
        permit: OwnedSemaphorePermit,
        shutdown: &CancellationToken,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let routing = self.routing.borrow().clone();
        let route: Arc<crate::store::RouteFn> = Arc::new(move |event| routing.router.route(event));
        let events: Arc<[ReceivedEvent]> = items
            .iter()
            .map(|item| {
                ReceivedEvent::from_content(&item.content, self.client.api()).with_source(&self.source, self.sub_app_id)
            })
            .collect();
        let answer = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            answer = self.ingest.store(Batch { events: events.clone(), route }) => answer?,
        };
        let (stats, confirm_tx) = (self.stats.clone(), self.confirm_tx.clone());
        Some(async move {
            // Closed: dropped unstored at shutdown.
            let Ok(stored) = answer.await else { return };
            forward(stored, &items, &events, received_at, &stats, &confirm_tx).await;
            drop(permit);
        })
    }
}

/// Counts a committed batch and queues its handles for confirmation (the ingest writer has
/// woken the dispatcher, or handed it the new deliveries).
async fn forward(
    stored: crate::ingest::Stored,
    items: &[PulledItem],
    events: &[ReceivedEvent],
    received_at: Instant,
    stats: &Metrics,
    confirm_tx: &mpsc::Sender<PendingHandle>,
) {
    for (event, (row, routed)) in events.iter().zip(stored.iter()) {
        stats.event(&event.event_type, row.new);
        for route in &routed.filter_errors {
            stats.route_filter_error(route.clone());
        }
    }
    for ((item, event), (row, _)) in items.iter().zip(events).zip(&stored) {
        debug!(id = row.id, new = row.new, event_type = %event.event_type, "Event stored.");
        match &item.handle {
            // The confirmer outlives the pull loop and its forwarding tasks, so a send only
            // fails if it died; the event is stored either way and will be redelivered and
            // deduplicated.
            Some(handle) => {
                let pending = PendingHandle { handle: handle.clone(), pulled_at: received_at, event_id: row.id };
                let _ = confirm_tx.send(pending).await;
            }
            None => warn!(
                id = row.id,
                "Stored an event that came without a msgHandle; it cannot be confirmed and may be delivered again."
            ),
        }
    }
}
