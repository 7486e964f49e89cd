//! Turns SIGTERM and SIGINT into a cancellation: the first asks for a clean stop, a
//! second one exits at once (exit code 130), for an operator who does not want to wait.

use futures_util::StreamExt as _;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    tokio::spawn(async move {
        if let Some(signal) = signals.next().await {
            tracing::info!(signal, "Stopping: confirming what is stored, then exiting.");
            token.cancel();
        }
        if signals.next().await.is_some() {
            eprintln!("vod-eventd: second signal, exiting now; unconfirmed events will be redelivered.");
            std::process::exit(130);
        }
    });
    Ok(())
}
