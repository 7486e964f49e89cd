//! Wiring: open the store, build the client, run the puller and the confirmer until
//! shutdown. The puller stops first (no new pulls), then the confirmer flushes every
//! committed handle and exits when the channel closes.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::api::{ClientSettings, V2Client};
use crate::config::Config;
use crate::confirmer;
use crate::puller::Puller;
use crate::stats::PipelineStats;
use crate::store::Store;

/// Runs the pipeline until `shutdown` is cancelled, or until a fatal error.
pub async fn run(
    config: Config,
    config_path: PathBuf,
    stats: Arc<PipelineStats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = Store::open(&config.store.path, config.store.busy_timeout)
        .with_context(|| format!("store.path in {}", config_path.display()))?;
    let client = Arc::new(V2Client::new(ClientSettings::from_config(&config)?)?);
    let (tx, rx) = mpsc::channel(confirmer::CHANNEL_CAPACITY);
    let confirmer = tokio::spawn(confirmer::run(client.clone(), rx, config.confirm.clone(), stats.clone()));
    info!(endpoint = %config.vod.endpoint, store = %store.path().display(), "vod-eventd started.");
    let puller = Puller::new(&config, config_path.display().to_string(), client, store, tx, stats.clone());
    let result = puller.run(shutdown).await;
    // The puller has dropped its sender: the confirmer flushes what is left and ends.
    confirmer.await.context("the confirmer task failed")?;
    info!(
        received = PipelineStats::get(&stats.events_received),
        confirmed = PipelineStats::get(&stats.handles_confirmed),
        "vod-eventd stopped."
    );
    Ok(result?)
}
