//! The pull loop: long-poll PullEvent, store each batch in one durable transaction, and
//! only then hand the batch's handles to the confirmer. A batch that cannot be stored is
//! retried and never confirmed until it is; while it is failing, nothing more is pulled.
//!
//! There is one pull loop per source; each event is stored with its source's name and
//! `SubAppId`. A source whose credentials are refused on first contact reports it once
//! ([`Contact`]) and keeps retrying every `pull.auth_retry`: the daemon decides whether
//! that ends it (every source refused) or only makes it unhealthy, naming the source.

use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng as _;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info_span, warn, Instrument};

use crate::api::{ApiError, Client, ErrorClass, PulledItem};
use crate::backoff;
use crate::config::{Config, PullConfig};
use crate::confirmer::PendingHandle;
use crate::dispatch::Routing;
use crate::event::ReceivedEvent;
use crate::health::{SourceHealth, StoreWriter};
use crate::metrics::Metrics;
use crate::store::Store;

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
    /// The store.
    pub store: Store,
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
    /// Poked when new deliveries are stored.
    pub dispatch_wake: Arc<Notify>,
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
        confirm_tx: mpsc::Sender<PendingHandle>,
        stats: Arc<Metrics>,
        routing: watch::Receiver<Arc<Routing>>,
        dispatch_wake: Arc<Notify>,
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
            confirm_tx,
            stats,
            config: pull,
            config_path,
            routing,
            dispatch_wake,
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

    /// Pulls until `shutdown` is cancelled. Refused credentials that never worked against
    /// this store are reported on `contact` (once) and retried every `pull.auth_retry`.
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
        loop {
            let result = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
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
                    let span = info_span!("batch", events = items.len());
                    if !self.store_and_forward(items, received_at, &shutdown, &mut rng).instrument(span).await {
                        return Ok(());
                    }
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
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Stores a batch (retrying until it is stored) and then queues its handles for
    /// confirmation. Returns false when shutdown interrupted a failing store.
    async fn store_and_forward(
        &self,
        items: Vec<PulledItem>,
        received_at: Instant,
        shutdown: &CancellationToken,
        rng: &mut impl rand::Rng,
    ) -> bool {
        let routing = self.routing.borrow().clone();
        let route: Arc<crate::store::RouteFn> = Arc::new(move |event| routing.router.route(event));
        let events: Vec<ReceivedEvent> = items
            .iter()
            .map(|item| {
                ReceivedEvent::from_content(&item.content, self.client.api()).with_source(&self.source, self.sub_app_id)
            })
            .collect();
        let mut attempt: u32 = 0;
        let stored = loop {
            match self.store.insert_routed(events.clone(), route.clone()).await {
                Ok(stored) => break stored,
                Err(e) => {
                    self.stats.store_failures.inc();
                    self.stats.health.store_writable(StoreWriter::Pull, false);
                    error!(error = %e, events = events.len(), "Could not store pulled events; not confirming them and not pulling more until the store accepts writes. They stay at Tencent and are redelivered.");
                    let delay = backoff::delay(attempt, self.config.backoff_min, self.config.backoff_max, rng);
                    attempt = attempt.saturating_add(1);
                    if !backoff::sleep_or_cancel(delay, shutdown).await {
                        return false;
                    }
                }
            }
        };
        self.stats.health.store_writable(StoreWriter::Pull, true);
        let mut routed_any = false;
        for (event, (row, routed)) in events.iter().zip(stored.iter()) {
            self.stats.event(&event.event_type, row.new);
            routed_any |= !routed.handlers.is_empty();
            for route in &routed.filter_errors {
                self.stats.route_filter_error(route.clone());
            }
        }
        if routed_any {
            self.dispatch_wake.notify_one();
        }
        let inserted: Vec<_> = stored.into_iter().map(|(row, _)| row).collect();
        for ((item, event), row) in items.into_iter().zip(&events).zip(&inserted) {
            debug!(id = row.id, new = row.new, event_type = %event.event_type, "Event stored.");
            match item.handle {
                // The confirmer outlives this loop, so a send only fails if it died; the
                // event is stored either way and will be redelivered and deduplicated.
                Some(handle) => {
                    let _ =
                        self.confirm_tx.send(PendingHandle { handle, pulled_at: received_at, event_id: row.id }).await;
                }
                None => warn!(
                    id = row.id,
                    "Stored an event that came without a msgHandle; it cannot be confirmed and may be delivered again."
                ),
            }
        }
        true
    }
}
