//! Log setup: `RUST_LOG` overrides `log.level`; plain lines without timestamps or
//! colours under journald (`JOURNAL_STREAM` set), JSON with `log.format = "json"`. The
//! level can be changed at run time (SIGHUP) unless `RUST_LOG` pinned it.

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

/// Changes the log level of the installed subscriber.
#[derive(Clone)]
pub struct LogHandle(Option<reload::Handle<EnvFilter, Registry>>);

impl LogHandle {
    /// A handle that changes nothing (tests, or when logging was set up elsewhere).
    pub fn none() -> LogHandle {
        LogHandle(None)
    }

    /// Applies `log.level`; a no-op when `RUST_LOG` is set.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let Some(handle) = &self.0 else { return Ok(()) };
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the global subscriber (logs go to stderr).
pub fn init(level: &str, format: &str) -> LogHandle {
    let pinned = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = EnvFilter::try_new(pinned.as_deref().unwrap_or(level)).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let output = fmt::layer().with_writer(std::io::stderr);
    let output = if format == "json" {
        output.json().flatten_event(true).boxed()
    } else if journald {
        output.without_time().with_ansi(false).boxed()
    } else {
        output.boxed()
    };
    match tracing_subscriber::registry().with(filter).with(output).try_init() {
        Ok(()) if pinned.is_none() => LogHandle(Some(handle)),
        _ => LogHandle::none(),
    }
}
