//! Wiring: open the store, build the routing and the handlers, and run, for each source, a
//! client, a puller, a confirmer and an event-configuration check, plus the dispatcher and
//! the service tasks (status, watchdog, metrics, retention, account check requests) until shutdown. The pullers
//! stop first (no new pulls), then each confirmer flushes every committed handle of its
//! source and exits when its channel closes, while the dispatcher drains in-flight handler
//! attempts. SIGHUP reloads routes, handlers, retry policy, log level, the store size cap
//! and the `[[sources]]` list; an invalid new config is refused and the running one stays.
//! At start and on each reload, the deliveries of handlers that are no longer configured
//! are orphaned, and those of handlers that are back resume. The alert task stores the
//! daemon's own happenings as `vod-eventd.*` events, routed like any other.
//!
//! Sources come and go through one path ([`Sources::reconcile`]): added ones start, removed
//! (or, with `sources = "all"`, disabled) ones stop pulling and have their handles in
//! flight confirmed before their client goes, changed ones do both. A source whose
//! credentials are refused on first contact only makes the daemon unhealthy, naming it;
//! the daemon exits (78) only when every source was refused on first contact.

use std::collections::{BTreeMap, BTreeSet};
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
use crate::api::{Client, ClientSettings, Clients, LimiterPool, V3Client};
use crate::config::{self, Config, Source, SourcesSetting};
use crate::confirmer;
use crate::dispatch::{Dispatcher, Routing};
use crate::handoff::Handoff;
use crate::ingest::Ingest;
use crate::logging::LogHandle;
use crate::metrics::Metrics;
use crate::puller::{Contact, PullError, Puller};
use crate::service::{self, notify, StatusLoop};
use crate::store::Singleton;
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
        let key = if config.store.postgres_url().is_some() { "store.url" } else { "store.path" };
        // With PostgreSQL, waits for the server (SIGTERM still stops the wait).
        let node = config.node.name();
        let store = tokio::select! {
            store = Store::open_config(&config.store, &node) => store,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let store = store.with_context(|| format!("{key} in {}", self.config_path.display()))?;
        // Data keys the drm handler stores are sealed at rest with [keys] (if configured).
        let store = store.with_keyring(config.keys.keyring().map_err(anyhow::Error::msg)?);
        tokio::select! {
            checked = store.check_keyring() => checked?,
            _ = shutdown.cancelled() => return Ok(()),
        }
        if config.store.check_at_start {
            info!(store = %store.path().display(), "Checking the store's integrity (store.check_at_start); this reads the whole file.");
            let checked = store.clone();
            tokio::task::spawn_blocking(move || checked.check_integrity())
                .await?
                .with_context(|| format!("store.check_at_start in {}", self.config_path.display()))?;
        }
        store.set_max_size(config.store.max_size_mb * 1024 * 1024).await?;
        let clients = Arc::new(Clients::default());
        let (routing_tx, routing) =
            watch::channel(Arc::new(Routing::build(config, clients.clone(), store.clone(), None)?));
        sync_orphans(&store, config, &self.config_path).await;
        self.metrics.health.set_refusals_limit(config.alert.pull_stale_after);

        // Everything but the pullers and the confirmers stops on this, once the pullers end.
        let stop = CancellationToken::new();
        let mut tasks: Vec<(&str, JoinHandle<()>)> = Vec::new();
        let wake = Arc::new(Notify::new());
        let (handoff, first_attempts) = Handoff::new(wake.clone());
        let dispatcher = Dispatcher {
            store: store.clone(),
            routing: routing.clone(),
            wake: wake.clone(),
            handoff: handoff.clone(),
            first_attempts,
            stats: self.metrics.clone(),
        };
        tasks.push(("dispatcher", tokio::spawn(dispatcher.run(stop.clone(), config.shutdown.drain_timeout))));
        let status = StatusLoop {
            metrics: self.metrics.clone(),
            store: store.clone(),
            health: config.health.clone(),
            alert: config.alert.clone(),
            node: node.clone(),
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
        let alerts = crate::alerts::AlertLoop {
            store: store.clone(),
            metrics: self.metrics.clone(),
            routing: routing.clone(),
            wake: wake.clone(),
            max_pull_age: config.health.max_pull_age,
            pull_stale_after: config.alert.pull_stale_after,
        };
        tasks.push(("alerts", tokio::spawn(alerts.run(stop.clone()))));
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

        // Ends once the sources (its only senders) are gone, after their last commits and
        // confirmations; `shutdown` only cuts short its retries while the store refuses writes.
        let (ingest, ingesting) =
            Ingest::start(store.clone(), self.metrics.clone(), &config.pull, handoff, shutdown.clone());
        let (contact_tx, mut contact_rx) = mpsc::channel(CONTACT_CAPACITY);
        let mut sources = Sources {
            running: BTreeMap::new(),
            limiters: LimiterPool::default(),
            clients,
            store: store.clone(),
            ingest,
            metrics: self.metrics.clone(),
            routing,
            contact: contact_tx,
            config_path: self.config_path.display().to_string(),
            shutdown: shutdown.clone(),
        };
        let mut discovery = match config.sources {
            SourcesSetting::All => Some(Discovery::new(config, self.config_path.display().to_string())?),
            _ => None,
        };
        // With discovery, the first list decides the sources; until one is read, none run.
        let (initial, mut next_refresh) = match &mut discovery {
            Some(d) => d.refresh(&self.config, &self.metrics).await?,
            None => (Some(config.sources()), config.discovery.refresh_interval),
        };
        if let Some(initial) = initial {
            sources.reconcile(config, initial).await?;
        }
        info!(sources = %sources.names().join(", "), store = %store.path().display(), handlers = config.handlers.len(), "vod-eventd started.");
        // Bounded by each broker handler's timeout; nothing waits for it.
        tokio::spawn(crate::handler::broker::check_at_start(config.handlers.clone(), config.node.name()));
        notify(&[NotifyState::Ready, NotifyState::Status("started; pulling")]);
        // Started after READY=1, so no STATUS= or watchdog ping can come before it.
        tasks.push(("status", tokio::spawn(status.clone().run(stop.clone()))));
        tasks.push((
            "account check requests",
            tokio::spawn(crate::account::recheck::watch(
                store.clone(),
                self.metrics.clone(),
                config.dispatch.poll_interval,
                stop.clone(),
            )),
        ));
        tasks.push((
            "watchdog",
            tokio::spawn(service::watchdog(self.metrics.clone(), config.health.max_pull_age, stop.clone())),
        ));

        let mut first_contact = FirstContact::default();
        let refresh = tokio::time::sleep(next_refresh);
        tokio::pin!(refresh);
        let result: anyhow::Result<()> = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                Some(contact) = contact_rx.recv() => {
                    if let Some(all_refused) = first_contact.record(contact, sources.running.len()) {
                        break Err(all_refused.into());
                    }
                }
                Some(()) = reloads.recv() => self.reload(&routing_tx, &mut sources, discovery.is_some()).await,
                _ = &mut refresh, if discovery.is_some() => {
                    let d = discovery.as_mut().expect("checked");
                    let found = match d.refresh(&self.config, &self.metrics).await {
                        Ok((found, next)) => {
                            next_refresh = next;
                            found
                        }
                        Err(refused) => break Err(refused),
                    };
                    if let Some(found) = found {
                        if let Err(e) = sources.reconcile(&self.config, found).await {
                            warn!(error = %format!("{e:#}"), "A discovered app could not be started; will try again at the next refresh.");
                        }
                    }
                    refresh.as_mut().reset(tokio::time::Instant::now() + next_refresh);
                }
            }
        };
        notify(&[NotifyState::Stopping, NotifyState::Status("stopping: confirming stored events, draining handlers")]);
        // Each puller stops and drops its sender: its confirmer flushes what is left and ends.
        sources.stop_all().await?;
        drop(sources);
        ingesting.await.context("the store writer failed")?;
        stop.cancel();
        for (name, task) in tasks {
            task.await.with_context(|| format!("the {name} task failed"))?;
        }
        status.write_final().await;
        info!(
            received = self.metrics.received_total.get(),
            confirmed = self.metrics.confirmed_total.get(),
            "vod-eventd stopped."
        );
        result
    }

    /// Applies a new config from the same file, or keeps the running one if it is invalid.
    async fn reload(&mut self, routing_tx: &watch::Sender<Arc<Routing>>, sources: &mut Sources, discovering: bool) {
        let store = &sources.store.clone();
        let path = self.config_path.display().to_string();
        let new = match config::load(&self.config_path) {
            Ok(new) => new,
            Err(e) => {
                let problems: Vec<String> = e.issues.iter().map(ToString::to_string).collect();
                error!(config = %path, problems = %problems.join(" | "), "Reload refused: the new configuration is invalid. The running configuration stays.");
                return;
            }
        };
        let routing = match Routing::build(&new, sources.clients.clone(), store.clone(), Some(&routing_tx.borrow())) {
            Ok(routing) => routing,
            Err(e) => {
                error!(config = %path, error = %format!("{e:#}"), "Reload refused: a handler could not be built. The running configuration stays.");
                return;
            }
        };
        // The cap first: while the store refuses writes, stopping a source below waits for its
        // pending commits, which wait for the room this makes.
        if new.store.max_size_mb != self.config.store.max_size_mb {
            if let Err(e) = store.set_max_size(new.store.max_size_mb * 1024 * 1024).await {
                warn!(error = %e, "store.max_size_mb could not be applied.");
            }
        }
        routing_tx.send_replace(Arc::new(routing));
        // `sources = "all"` is applied by discovery; a list (or `[vod]` alone, which every
        // listed source inherits) is applied here: a source whose settings changed is
        // stopped (its handles in flight confirmed first) and started with the new ones.
        if !discovering && !matches!(new.sources, SourcesSetting::All) {
            if let Err(e) = sources.reconcile(&new, new.sources()).await {
                error!(config = %path, error = %format!("{e:#}"), "A source of the new configuration could not be started; the others run.");
            }
        }
        sync_orphans(store, &new, &self.config_path).await;
        if let Err(e) = self.log.set_level(&new.log.level) {
            warn!(error = %e, "log.level could not be applied.");
        }
        let restart_only: Vec<String> = config::restart_needed(&self.config, &new)
            .into_iter()
            .filter(|key| discovering || !(key.starts_with("sources") || key.starts_with("vod.")))
            .collect();
        if !restart_only.is_empty() {
            warn!(settings = %restart_only.join(", "), "These settings changed but take effect only after a restart; the running values stay until then.");
        }
        info!(routes = new.routes.len(), handlers = new.handlers.len(), "Configuration reloaded.");
        self.config = new;
    }
}

/// Capacity of the channel the pullers report their first contact on (one message each).
const CONTACT_CAPACITY: usize = 64;

/// How the sources' first contacts went: the daemon gives up only when every source was
/// refused and none has worked.
#[derive(Default)]
struct FirstContact {
    worked: BTreeSet<String>,
    refused: BTreeSet<String>,
}

impl FirstContact {
    /// Records one report; returns the refusal to exit with once every one of `running`
    /// sources has been refused.
    fn record(&mut self, contact: Contact, running: usize) -> Option<PullError> {
        match contact {
            Contact::Worked { source } => {
                self.worked.insert(source);
                None
            }
            Contact::Refused { source, error } => {
                self.refused.insert(source.clone());
                if self.worked.is_empty() && self.refused.len() >= running {
                    return Some(error);
                }
                error!(source = %source, error = %error, "This source's credentials are refused; it pulls nothing until they are fixed (retrying every pull.auth_retry). The other sources keep running; /healthz names it.");
                None
            }
        }
    }
}

/// A running source: its pull loop, its confirmer and its event-configuration check.
struct RunningSource {
    source: Source,
    cancel: CancellationToken,
    pulling: JoinHandle<Result<(), PullError>>,
    confirming: JoinHandle<()>,
    checking: JoinHandle<()>,
}

/// The running sources and what starting one needs.
struct Sources {
    running: BTreeMap<String, RunningSource>,
    limiters: LimiterPool,
    clients: Arc<Clients>,
    store: Store,
    ingest: Ingest,
    metrics: Arc<Metrics>,
    routing: watch::Receiver<Arc<Routing>>,
    contact: mpsc::Sender<Contact>,
    config_path: String,
    shutdown: CancellationToken,
}

impl Sources {
    fn names(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Makes the running sources `desired`: starts the new ones, stops the ones no longer
    /// wanted (confirming their handles in flight first), and restarts the changed ones.
    async fn reconcile(&mut self, config: &Config, desired: Vec<Source>) -> anyhow::Result<()> {
        let wanted: BTreeMap<String, Source> = desired.into_iter().map(|s| (s.name.clone(), s)).collect();
        let same = |a: &Source, b: &Source| serde_json::to_value(a).ok() == serde_json::to_value(b).ok();
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| wanted.get(*name).is_none_or(|w| !same(w, &r.source)))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let running = self.running.remove(&name).expect("listed above");
            info!(source = %name, "Stopping a source: no new pulls; its handles in flight are confirmed first.");
            self.stop(running).await?;
            self.clients.remove(&name);
            self.metrics.health.remove_source(&name);
        }
        let mut failed = Vec::new();
        for (name, source) in wanted {
            if self.running.contains_key(&name) {
                continue;
            }
            match self.start(config, source) {
                Ok(running) => {
                    info!(source = %name, sub_app_id = ?running.source.vod.sub_app_id, api = running.source.vod.api.as_str(), endpoint = %crate::redact::url(&running.source.vod.endpoint()), "Source started.");
                    self.running.insert(name, running);
                }
                Err(e) => failed.push(format!("{name}: {e:#}")),
            }
        }
        match failed.is_empty() {
            true => Ok(()),
            false => Err(anyhow::anyhow!("sources not started: {}", failed.join("; "))),
        }
    }

    fn start(&self, config: &Config, source: Source) -> anyhow::Result<RunningSource> {
        let name = source.name.clone();
        let mut settings = ClientSettings::from_vod(&source.vod).with_context(|| format!("source {name}"))?;
        // With a key server that fetches missing keys on the same account, the drm handler
        // keeps to half of DescribeDrmDataKey's limit and the key server to the other half.
        settings.drm_halved = config.keyserver.as_ref().is_some_and(|k| k.fetch_missing);
        let credentials = settings.credentials_fingerprint();
        let client = Arc::new(Client::shared(settings, &self.limiters)?);
        self.clients.insert(&name, client.clone());
        let (tx, rx) = mpsc::channel(confirmer::CHANNEL_CAPACITY);
        let confirming = tokio::spawn(confirmer::run(
            client.clone(),
            self.ingest.clone(),
            rx,
            config.confirm.clone(),
            self.metrics.clone(),
            name.clone(),
        ));
        let puller = Puller::new(
            config,
            self.config_path.clone(),
            client,
            self.store.clone(),
            self.ingest.clone(),
            tx,
            self.metrics.clone(),
            self.routing.clone(),
            credentials,
        )
        .for_source(&name, self.contact.clone());
        let cancel = self.shutdown.child_token();
        let pulling = tokio::spawn(puller.run(cancel.clone()));
        let account = AccountCheck {
            client: V3Client::new(ClientSettings::for_account_of(config, &source.vod)?)?,
            sub_app_id: source.vod.sub_app_id,
            source: name.clone(),
            interval: config.account.check_interval,
            health: self.metrics.health.source(&name),
            store: self.store.clone(),
            state_key: crate::account::check::state_key(&name),
        };
        let checking = tokio::spawn(account.run(cancel.clone()));
        Ok(RunningSource { source, cancel, pulling, confirming, checking })
    }

    /// Stops pulling, then waits for the confirmer to confirm every handle in flight.
    async fn stop(&self, running: RunningSource) -> anyhow::Result<()> {
        let name = running.source.name;
        running.cancel.cancel();
        let _ = running.pulling.await.with_context(|| format!("the pull task of source {name} failed"))?;
        running.confirming.await.with_context(|| format!("the confirmer of source {name} failed"))?;
        running.checking.await.with_context(|| format!("the event configuration check of source {name} failed"))?;
        Ok(())
    }

    async fn stop_all(&mut self) -> anyhow::Result<()> {
        for running in self.running.values() {
            running.cancel.cancel();
        }
        for (_, running) in std::mem::take(&mut self.running) {
            self.stop(running).await?;
        }
        Ok(())
    }
}

/// `sources = "all"`: the account's apps, read with the `[vod]` credentials.
struct Discovery {
    client: V3Client,
    /// The config file, for messages.
    config_path: String,
    /// A list has been read since start.
    listed: bool,
    /// Failed reads in a row.
    failures: u32,
}

impl Discovery {
    fn new(config: &Config, config_path: String) -> anyhow::Result<Discovery> {
        let mut settings = ClientSettings::for_account(config)?;
        // DescribeSubAppIds lists the account's apps; it takes no SubAppId.
        settings.sub_app_id = None;
        Ok(Discovery { client: V3Client::new(settings)?, config_path, listed: false, failures: 0 })
    }

    /// Reads the list of apps: the sources for it (`None` if it could not be read) and
    /// when to read it again, `discovery.refresh_interval` later, or sooner with backoff
    /// while no list has been read. Refused credentials before any list was read are a
    /// config problem: the error to exit (78) with.
    async fn refresh(&mut self, config: &Config, metrics: &Metrics) -> anyhow::Result<(Option<Vec<Source>>, Duration)> {
        let interval = config.discovery.refresh_interval;
        let e = match crate::discovery::list_apps(&self.client).await {
            Ok(apps) => {
                self.listed = true;
                self.failures = 0;
                let found = crate::discovery::sources_for(config, &apps);
                if found.is_empty() {
                    warn!(apps = apps.len(), "sources = \"all\": DescribeSubAppIds listed no app with Status On, so nothing is pulled; the list is read again every discovery.refresh_interval. Turn an app on in the VOD console, or list apps as [[sources]] entries.");
                }
                metrics.health.set_no_sources(found.is_empty().then(|| crate::discovery::NO_APP.to_string()));
                return Ok((Some(found), interval));
            }
            Err(e) => e,
        };
        if !self.listed {
            if let Some(refused) = crate::discovery::refusal(&e, &self.config_path) {
                return Err(refused.into());
            }
            let delay = crate::backoff::delay(
                self.failures,
                config.pull.backoff_min,
                config.pull.backoff_max,
                &mut rand::thread_rng(),
            )
            .min(interval);
            self.failures = self.failures.saturating_add(1);
            warn!(error = %e, retry_in = ?delay, "sources = \"all\": DescribeSubAppIds failed before any list of apps was read; nothing is pulled until it answers. Retrying.");
            metrics
                .health
                .set_no_sources(Some(format!("no sources yet: DescribeSubAppIds failed ({}); retrying", e.label())));
            return Ok((None, delay));
        }
        warn!(error = %e, "DescribeSubAppIds failed; the running sources stay, and the list is read again at the next refresh.");
        Ok((None, interval))
    }
}

/// Marks the deliveries of handlers that are no longer configured as orphaned, and
/// resumes those of handlers that are back; each change is logged once.
async fn sync_orphans(store: &Store, config: &Config, config_path: &std::path::Path) {
    let configured = config.handlers.keys().cloned().collect();
    match store.sync_orphans(configured, config_path.display().to_string()).await {
        Ok(changes) => {
            let gone: std::collections::BTreeSet<&String> =
                changes.orphaned.keys().chain(changes.in_flight.keys()).collect();
            for handler in gone {
                let n = changes.orphaned.get(handler).copied().unwrap_or(0);
                let in_flight = changes.in_flight.get(handler).copied().unwrap_or(0);
                warn!(handler = %handler, deliveries = n, in_flight, "Deliveries orphaned: no handler `{handler}` is configured any more (removed or renamed). They are not run and keep their events only until store.retention; they resume if [handlers.{handler}] comes back. `vod-eventd status` counts them. Attempts in flight (in_flight) finish first, and are orphaned only if they are to be retried.");
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
/// [`crate::store::Maintenance::prune`]), stopping between steps at shutdown.
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
        // On a shared store one host prunes; another takes over when it dies.
        if !store.lead(Singleton::Retention).await {
            continue;
        }
        let before = crate::store::now_ms() - retention.as_millis() as i64;
        let started = std::time::Instant::now();
        match store.prune(before, false, PRUNE_PAUSE, &stop).await {
            Ok(0) => {}
            Ok(n) => info!(events = n, took = ?started.elapsed(), "Pruned events past store.retention."),
            Err(e) => warn!(error = %e, "Retention pruning failed; will try again."),
        }
    }
}
