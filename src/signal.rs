//! Signals: SIGTERM and SIGINT ask for a clean stop (a second one exits at once, code
//! 130, for an operator who does not want to wait); SIGHUP asks for a config reload.

use futures_util::StreamExt as _;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) -> std::io::Result<()> {
    handle_signals(token, None)
}

/// Cancels `token` on SIGTERM/SIGINT and returns a channel that yields once per SIGHUP.
pub fn with_reload(token: CancellationToken) -> std::io::Result<mpsc::Receiver<()>> {
    // One pending reload is enough: several SIGHUPs in a row mean "reload once more".
    let (tx, rx) = mpsc::channel(1);
    handle_signals(token, Some(tx))?;
    Ok(rx)
}

fn handle_signals(token: CancellationToken, reload: Option<mpsc::Sender<()>>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    tokio::spawn(async move {
        while let Some(signal) = signals.next().await {
            if signal == SIGHUP {
                match &reload {
                    Some(tx) => {
                        let _ = tx.try_send(());
                    }
                    None => tracing::info!("SIGHUP ignored: nothing to reload."),
                }
                continue;
            }
            if token.is_cancelled() {
                eprintln!("vod-eventd: second signal, exiting now; unconfirmed events will be redelivered.");
                std::process::exit(130);
            }
            tracing::info!(signal, "Stopping: confirming what is stored, then exiting.");
            token.cancel();
        }
    });
    Ok(())
}
