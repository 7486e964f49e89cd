//! Wiring: open the store, build the client, the router and the handlers, and run the
//! puller, the confirmer and the dispatcher until shutdown. The puller stops first (no
//! new pulls), then the confirmer flushes every committed handle and exits when the
//! channel closes, while the dispatcher drains in-flight handler attempts.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::api::{ClientSettings, V2Client};
use crate::config::Config;
use crate::confirmer;
use crate::dispatch::{Dispatcher, Lane};
use crate::handler;
use crate::metrics::Metrics;
use crate::puller::Puller;
use crate::route::Router;
use crate::store::Store;

/// Runs the pipeline until `shutdown` is cancelled, or until a fatal error.
pub async fn run(
    config: Config,
    config_path: PathBuf,
    stats: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = Store::open(&config.store.path, config.store.busy_timeout)
        .with_context(|| format!("store.path in {}", config_path.display()))?;
    let client = Arc::new(V2Client::new(ClientSettings::from_config(&config)?)?);
    let router = Arc::new(Router::new(&config.routes).map_err(anyhow::Error::msg)?);
    let handlers = handler::build_all(&config.handlers, client.clone(), store.clone())?;
    let lanes = handlers
        .into_iter()
        .map(|(name, handler)| {
            let permits = Arc::new(Semaphore::new(config.handlers[&name].concurrency()));
            (name, Lane { handler, permits })
        })
        .collect();
    let wake = Arc::new(Notify::new());
    let dispatcher = Dispatcher {
        store: store.clone(),
        lanes,
        policy: config.dispatch.policy(),
        poll_interval: config.dispatch.poll_interval,
        wake: wake.clone(),
        stats: stats.clone(),
    };
    // Stops the dispatcher when the puller ends, whether by shutdown or a fatal error.
    let stop_dispatch = shutdown.child_token();
    let dispatch = tokio::spawn(dispatcher.run(stop_dispatch.clone(), config.shutdown.drain_timeout));

    let (tx, rx) = mpsc::channel(confirmer::CHANNEL_CAPACITY);
    let confirmer = tokio::spawn(confirmer::run(client.clone(), rx, config.confirm.clone(), stats.clone()));
    info!(endpoint = %config.vod.endpoint, store = %store.path().display(), handlers = config.handlers.len(), "vod-eventd started.");
    let puller =
        Puller::new(&config, config_path.display().to_string(), client, store, tx, stats.clone(), router, wake);
    let result = puller.run(shutdown).await;
    stop_dispatch.cancel();
    // The puller has dropped its sender: the confirmer flushes what is left and ends.
    confirmer.await.context("the confirmer task failed")?;
    dispatch.await.context("the dispatcher task failed")?;
    info!(received = stats.received_total.get(), confirmed = stats.handles_confirmed.get(), "vod-eventd stopped.");
    Ok(result?)
}
