//! Wiring: open the store, build the client, the routing and the handlers, and run the
//! puller, the confirmer, the dispatcher and the service tasks (status, watchdog,
//! metrics, retention, the event-configuration check) until shutdown. The puller stops
//! first (no new pulls), then the confirmer flushes every committed handle and exits when
//! its channel closes, while the dispatcher drains in-flight handler attempts. SIGHUP
//! reloads routes, handlers, retry policy, log level and the store size cap; an invalid
//! new config is refused and the running one stays. At start and on each reload, the
//! deliveries of handlers that are no longer configured are orphaned, and those of
//! handlers that are back resume.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sd_notify::NotifyState;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::account::check::AccountCheck;
use crate::api::{Client, ClientSettings, V3Client};
use crate::config::{self, Config};
use crate::confirmer;
use crate::dispatch::{Dispatcher, Routing};
use crate::logging::LogHandle;
use crate::metrics::Metrics;
use crate::puller::Puller;
use crate::service::{self, notify, StatusLoop};
use crate::store::Store;

/// A daemon ready to run.
pub struct Daemon {
    /// The loaded configuration.
    pub config: Config,
    /// Where it came from (reloaded from there on SIGHUP).
    pub config_path: PathBuf,
    /// Counters and health, shared with the caller.
    pub metrics: Arc<Metrics>,
    /// Changes the log level on reload.
    pub log: LogHandle,
}

impl Daemon {
    /// Runs until `shutdown` is cancelled or a fatal error; each message on `reloads`
    /// reloads the configuration.
    pub async fn run(mut self, shutdown: CancellationToken, mut reloads: mpsc::Receiver<()>) -> anyhow::Result<()> {
        let config = &self.config;
        let store = Store::open(&config.store.path, config.store.busy_timeout)
            .with_context(|| format!("store.path in {}", self.config_path.display()))?;
        if config.store.check_at_start {
            info!(store = %store.path().display(), "Checking the store's integrity (store.check_at_start); this reads the whole file.");
            let checked = store.clone();
            tokio::task::spawn_blocking(move || checked.check_integrity())
                .await?
                .with_context(|| format!("store.check_at_start in {}", self.config_path.display()))?;
        }
        store.set_max_size(config.store.max_size_mb * 1024 * 1024).await?;
        let settings = ClientSettings::from_config(config)?;
        let credentials = settings.credentials_fingerprint();
        let client = Arc::new(Client::new(settings)?);
        let (routing_tx, routing) =
            watch::channel(Arc::new(Routing::build(config, client.clone(), store.clone(), None)?));
        sync_orphans(&store, config, &self.config_path).await;
        self.metrics.health.started();
        self.metrics.health.set_refusals_limit(config.alert.pull_stale_after);

        // Everything but the puller and the confirmer stops on this, once the puller ends.
        let stop = CancellationToken::new();
        let mut tasks: Vec<(&str, JoinHandle<()>)> = Vec::new();
        let wake = Arc::new(Notify::new());
        let dispatcher = Dispatcher {
            store: store.clone(),
            routing: routing.clone(),
            wake: wake.clone(),
            stats: self.metrics.clone(),
        };
        tasks.push(("dispatcher", tokio::spawn(dispatcher.run(stop.clone(), config.shutdown.drain_timeout))));
        let status = StatusLoop {
            metrics: self.metrics.clone(),
            store: store.clone(),
            health: config.health.clone(),
            alert: config.alert.clone(),
        };
        if let Some(addr) = config.metrics.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics.listen: cannot listen on {addr}"))?;
            let endpoints = crate::http::Endpoints {
                metrics: self.metrics.clone(),
                store: store.clone(),
                routing: routing.clone(),
                max_pull_age: config.health.max_pull_age,
            };
            tasks.push(("metrics", tokio::spawn(crate::http::serve(listener, endpoints, stop.clone()))));
        }
        tasks.push(("file index", tokio::spawn(index_older_files(store.clone(), stop.clone()))));
        let account = AccountCheck {
            client: V3Client::new(ClientSettings::for_account(config)?)?,
            sub_app_id: config.vod.sub_app_id,
            interval: config.account.check_interval,
            metrics: self.metrics.clone(),
            store: store.clone(),
        };
        tasks.push(("event configuration check", tokio::spawn(account.run(stop.clone()))));
        if let Some(retention) = config.store.retention {
            tasks.push((
                "retention",
                tokio::spawn(prune_loop(
                    store.clone(),
                    self.metrics.clone(),
                    retention,
                    config.store.prune_interval,
                    stop.clone(),
                )),
            ));
        }

        let (tx, rx) = mpsc::channel(confirmer::CHANNEL_CAPACITY);
        let confirmer = tokio::spawn(confirmer::run(
            client.clone(),
            store.clone(),
            rx,
            config.confirm.clone(),
            self.metrics.clone(),
        ));
        let puller = Puller::new(
            config,
            self.config_path.display().to_string(),
            client.clone(),
            store.clone(),
            tx,
            self.metrics.clone(),
            routing,
            wake,
            credentials,
        );
        let mut pulling = tokio::spawn(puller.run(shutdown.clone()));
        info!(api = config.vod.api.as_str(), endpoint = %crate::redact::url(&config.endpoint()), store = %store.path().display(), handlers = config.handlers.len(), "vod-eventd started.");
        notify(&[NotifyState::Ready, NotifyState::Status("started; pulling")]);
        // Started after READY=1, so no STATUS= or watchdog ping can come before it.
        tasks.push(("status", tokio::spawn(status.clone().run(stop.clone()))));
        tasks.push((
            "watchdog",
            tokio::spawn(service::watchdog(self.metrics.clone(), config.health.max_pull_age, stop.clone())),
        ));

        let result = loop {
            tokio::select! {
                ended = &mut pulling => break ended.context("the pull task failed")?,
                Some(()) = reloads.recv() => self.reload(&routing_tx, &client, &store).await,
            }
        };
        notify(&[NotifyState::Stopping, NotifyState::Status("stopping: confirming stored events, draining handlers")]);
        stop.cancel();
        // The puller has dropped its sender: the confirmer flushes what is left and ends.
        confirmer.await.context("the confirmer task failed")?;
        for (name, task) in tasks {
            task.await.with_context(|| format!("the {name} task failed"))?;
        }
        status.write_final().await;
        info!(
            received = self.metrics.received_total.get(),
            confirmed = self.metrics.handles_confirmed.get(),
            "vod-eventd stopped."
        );
        Ok(result?)
    }

    /// Applies a new config from the same file, or keeps the running one if it is invalid.
    async fn reload(&mut self, routing_tx: &watch::Sender<Arc<Routing>>, client: &Arc<Client>, store: &Store) {
        let path = self.config_path.display().to_string();
        let new = match config::load(&self.config_path) {
            Ok(new) => new,
            Err(e) => {
                let problems: Vec<String> = e.issues.iter().map(ToString::to_string).collect();
                error!(config = %path, problems = %problems.join(" | "), "Reload refused: the new configuration is invalid. The running configuration stays.");
                return;
            }
        };
        let routing = match Routing::build(&new, client.clone(), store.clone(), Some(&routing_tx.borrow())) {
            Ok(routing) => routing,
            Err(e) => {
                error!(config = %path, error = %format!("{e:#}"), "Reload refused: a handler could not be built. The running configuration stays.");
                return;
            }
        };
        routing_tx.send_replace(Arc::new(routing));
        sync_orphans(store, &new, &self.config_path).await;
        if let Err(e) = self.log.set_level(&new.log.level) {
            warn!(error = %e, "log.level could not be applied.");
        }
        if new.store.max_size_mb != self.config.store.max_size_mb {
            if let Err(e) = store.set_max_size(new.store.max_size_mb * 1024 * 1024).await {
                warn!(error = %e, "store.max_size_mb could not be applied.");
            }
        }
        let restart_only = config::restart_needed(&self.config, &new);
        if !restart_only.is_empty() {
            warn!(settings = %restart_only.join(", "), "These settings changed but take effect only after a restart; the running values stay until then.");
        }
        info!(routes = new.routes.len(), handlers = new.handlers.len(), "Configuration reloaded.");
        self.config = new;
    }
}

/// Marks the deliveries of handlers that are no longer configured as orphaned, and
/// resumes those of handlers that are back; each change is logged once.
async fn sync_orphans(store: &Store, config: &Config, config_path: &std::path::Path) {
    let configured = config.handlers.keys().cloned().collect();
    match store.sync_orphans(configured, config_path.display().to_string()).await {
        Ok(changes) => {
            for (handler, n) in &changes.orphaned {
                warn!(handler = %handler, deliveries = n, "Deliveries orphaned: no handler `{handler}` is configured any more (removed or renamed). They are not run and keep their events only until store.retention; they resume if [handlers.{handler}] comes back. `vod-eventd status` counts them.");
            }
            for (handler, n) in &changes.resumed {
                info!(handler = %handler, deliveries = n, "Handler `{handler}` is configured again; its orphaned deliveries resume.");
            }
        }
        Err(e) => {
            warn!(error = %e, "Could not look for deliveries of handlers that are no longer configured; will look again at the next reload.")
        }
    }
}

/// Indexes, in short transactions, the files of events stored before the store had
/// `event_files` (once, after an upgrade; nothing to do on a new store).
async fn index_older_files(store: Store, stop: CancellationToken) {
    const BATCH: u32 = 500;
    let mut indexed = 0;
    loop {
        let pause = match store.backfill_files(BATCH).await {
            Ok(0) => break,
            Ok(n) => {
                indexed += n;
                // Leave the store to the puller between batches.
                std::time::Duration::from_millis(20)
            }
            Err(e) => {
                warn!(error = %e, "Indexing the files of older events failed; will try again in a minute. `events list --file-id` finds them by their primary file id meanwhile.");
                std::time::Duration::from_secs(60)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    if indexed > 0 {
        info!(events = indexed, "Indexed every file named by events stored before this version.");
    }
}

/// The first retention run waits this long after start (or `store.prune_interval`, if
/// shorter), and for a successful pull, so start-up never shares the store with a prune.
const FIRST_PRUNE_DELAY: Duration = Duration::from_secs(300);
/// Pause between pruning steps, with the store's connection free for the pipeline.
const PRUNE_PAUSE: Duration = Duration::from_millis(20);

/// Prunes old, fully delivered events every `interval`, in short steps (see
/// [`Store::prune`]), stopping between steps at shutdown.
async fn prune_loop(
    store: Store,
    metrics: Arc<Metrics>,
    retention: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    let settle = interval.min(FIRST_PRUNE_DELAY);
    let mut wait = settle;
    loop {
        if !crate::backoff::sleep_or_cancel(wait, &stop).await {
            return;
        }
        if metrics.health.last_pull_ok_ms() == 0 {
            wait = settle; // Start-up has not settled: no pull has succeeded yet.
            continue;
        }
        wait = interval;
        let before = crate::store::now_ms() - retention.as_millis() as i64;
        let started = std::time::Instant::now();
        match store.prune(before, false, PRUNE_PAUSE, &stop).await {
            Ok(0) => {}
            Ok(n) => info!(events = n, took = ?started.elapsed(), "Pruned events past store.retention."),
            Err(e) => warn!(error = %e, "Retention pruning failed; will try again."),
        }
    }
}
