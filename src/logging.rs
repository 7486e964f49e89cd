//! Log setup: `RUST_LOG` overrides `log.level`; plain lines without timestamps or
//! colours under journald (`JOURNAL_STREAM` set), JSON with `log.format = "json"`. The
//! level can be changed at run time (SIGHUP) unless `RUST_LOG` pinned it.
//!
//! Whatever the level, the PostgreSQL client's own records (`tokio_postgres`, `postgres*`,
//! `deadpool_postgres`, through the `log` bridge) stop at INFO: at DEBUG tokio-postgres
//! logs every statement's parameters, data keys included.

use tracing::Level;
use tracing_subscriber::filter::filter_fn;
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
    let quiet_clients = filter_fn(|meta| *meta.level() <= Level::INFO || !is_database_client(meta.target()));
    match tracing_subscriber::registry().with(filter).with(quiet_clients).with(output).try_init() {
        Ok(()) if pinned.is_none() => LogHandle(Some(handle)),
        _ => LogHandle::none(),
    }
}

/// Targets of the PostgreSQL client crates, which log statement parameters below INFO.
fn is_database_client(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    krate.starts_with("postgres") || matches!(krate, "tokio_postgres" | "deadpool_postgres")
}

#[cfg(test)]
mod tests {
    use super::is_database_client;

    #[test]
    fn the_postgres_client_crates_are_recognised() {
        for target in ["tokio_postgres::query", "tokio_postgres", "postgres_protocol::message", "deadpool_postgres"] {
            assert!(is_database_client(target), "{target}");
        }
        for target in ["vod_eventd::store::postgres", "hyper", "rustls::client"] {
            assert!(!is_database_client(target), "{target}");
        }
    }
}
