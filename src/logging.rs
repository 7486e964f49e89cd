//! Log setup: `RUST_LOG` overrides `log.level`; plain lines without timestamps or
//! colours under journald (`JOURNAL_STREAM` set), JSON with `log.format = "json"`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (logs go to stderr).
pub fn init(level: &str, format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else if journald {
        builder.without_time().with_ansi(false).try_init()
    } else {
        builder.try_init()
    };
}
