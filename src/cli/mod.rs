//! The command line: `run` (the daemon), `events` (history), `status`, `store check`, `deliveries`, `handlers`, `keys`,
//! `keyserver`, `account`, `config check`, `emulator`, `demo`, `completions` and `man`. Each subcommand lives in its own file; this one parses and dispatches.

mod account;
mod config_cmd;
mod cut;
mod deliveries;
mod demo;
mod emulator;
mod events;
mod handlers;
mod keys;
mod keyserver;
mod ranges;
mod sparkline;
mod status;
mod store_cmd;
mod text;
mod time;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigError};
use crate::metrics::Metrics;
use crate::puller::PullError;

/// Exit code for configuration errors (sysexits EX_CONFIG), so systemd can be told not to
/// restart into the same mistake.
pub const EXIT_CONFIG: u8 = 78;

/// The version line: the crate version, the git commit and the build date.
pub const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("VOD_BUILD_COMMIT"), ", built ", env!("VOD_BUILD_DATE"), ")");

/// vod-eventd: Tencent Cloud VOD reliable-callback events, stored once and confirmed safely.
#[derive(Debug, Parser)]
#[command(name = "vod-eventd", version = VERSION, about, long_about = None)]
pub struct Cli {
    /// Config file [default: $VOD_EVENTD_CONFIG, else /etc/vod-eventd/config.toml].
    #[arg(long, short, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: pull events, store them, confirm them.
    Run,
    /// Work with the configuration.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Query the stored event history (safe while the daemon runs).
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// The app's event configuration: show it, or switch the app to PULL mode.
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Print the pipeline's state from the store: last pull, events by type, the last 24 hours
    /// hour by hour (events, failed attempts per handler), pending and dead deliveries.
    Status,
    /// Check the store (`store check`: SQLite's integrity check, which reads the whole file).
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Inspect handler deliveries and revive dead ones.
    #[command(subcommand)]
    Deliveries(deliveries::DeliveriesCommand),
    /// Handlers: state, backlog, last success and last error.
    #[command(subcommand)]
    Handlers(handlers::HandlersCommand),
    /// DRM data keys fetched by the `drm` handler; `keys token` mints a key-server token.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Serve the stored data keys to HLS players (`[keyserver]`), a process of its own.
    Keyserver,
    /// Run the VOD API emulator (PullEvent/ConfirmEvent/DescribeDrmDataKey) for testing.
    Emulator(emulator::EmulatorArgs),
    /// Run the emulator and the daemon together on a demo config and watch events arrive.
    Demo(demo::DemoArgs),
    /// Print a shell completion script (e.g. `vod-eventd completions bash > /etc/bash_completion.d/vod-eventd`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff; e.g. `vod-eventd man | man -l -`).
    Man,
    /// Run a shell hook under supervision (used by the daemon; see the shell handler).
    #[command(hide = true)]
    HookRun {
        /// The hook's program and arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let config_path = config::config_path(cli.config.as_deref());
    let result = match cli.command {
        Command::Run => run_daemon(&config_path),
        Command::HookRun { command } => {
            return ExitCode::from(u8::try_from(crate::handler::supervise::run(&command)).unwrap_or(1))
        }
        Command::Config(cmd) => return cmd.run(&config_path),
        Command::Events(cmd) => load_config(&config_path).and_then(|c| cmd.run(&c, &config_path)),
        Command::Status => {
            load_config(&config_path).and_then(|c| runtime().and_then(|rt| rt.block_on(status::run(&c, &config_path))))
        }
        Command::Account(cmd) => {
            load_config(&config_path).and_then(|c| runtime().and_then(|rt| rt.block_on(cmd.run(&c, &config_path))))
        }
        Command::Store(store_cmd::StoreCommand::Copy(args)) => runtime().and_then(|rt| rt.block_on(args.run())),
        Command::Store(cmd) => load_config(&config_path).and_then(|c| cmd.run(&c, &config_path)),
        Command::Deliveries(cmd) => load_config(&config_path).and_then(|c| cmd.run(&c, &config_path)),
        Command::Handlers(cmd) => load_config(&config_path).and_then(|c| cmd.run(&c, &config_path)),
        Command::Keys(cmd) => load_config(&config_path).and_then(|c| cmd.run(&c, &config_path)),
        Command::Keyserver => keyserver::run(&config_path),
        Command::Emulator(args) => runtime().and_then(|rt| rt.block_on(args.run())),
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(args.run())),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "vod-eventd",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut std::io::stdout().lock())
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// Prints an error for a person and picks the exit code.
fn report(e: &anyhow::Error) -> ExitCode {
    // `events list | head`: the reader is gone, which is not an error of ours.
    let broken_pipe = e
        .chain()
        .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe));
    if broken_pipe {
        return ExitCode::SUCCESS;
    }
    if let Some(config_error) = e.downcast_ref::<ConfigError>() {
        eprintln!("{config_error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    eprintln!("vod-eventd: error: {e:#}");
    // Another daemon holds the node name; the key file is missing or does not open the keys.
    let store_config = matches!(
        e.downcast_ref(),
        Some(crate::store::StoreError::NodeNameTaken { .. } | crate::store::StoreError::Sealed(_))
    );
    if store_config
        || e.downcast_ref::<PullError>().is_some()
        || e.downcast_ref::<crate::discovery::Refused>().is_some()
    {
        return ExitCode::from(EXIT_CONFIG);
    }
    ExitCode::FAILURE
}

/// Opens the store named by `store.url` (PostgreSQL) or `store.path` for a CLI command.
fn open_store(config: &Config, config_path: &std::path::Path) -> anyhow::Result<crate::store::Store> {
    use anyhow::Context as _;
    let key = if config.store.postgres_url().is_some() { "store.url" } else { "store.path" };
    let store = crate::store::Store::open_for_cli(&config.store)
        .with_context(|| format!("{key} in {}", config_path.display()))?;
    Ok(store.with_keyring(config.keys.keyring().map_err(anyhow::Error::msg)?))
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(config::load(path)?)
}

/// Store work runs on the blocking pool; a small cap keeps thread count bounded
/// (SQLite serialises writes on one connection anyway).
const MAX_BLOCKING_THREADS: usize = 16;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(MAX_BLOCKING_THREADS).build()?)
}

fn run_daemon(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    crate::config_lint::refuse_placeholders(&config, config_path)?;
    let log = crate::logging::init(&config.log.level, &config.log.format);
    for warning in crate::config_lint::inline_secrets(config_path) {
        tracing::warn!("{warning}");
    }
    match crate::limits::raise_nofile() {
        Ok(crate::limits::Nofile::Raised { from, to }) => {
            tracing::debug!(from, to, "Raised the soft limit on open files to the hard limit.")
        }
        Ok(crate::limits::Nofile::AtHard(limit)) => tracing::debug!(limit, "Open files limit."),
        Err(e) => {
            tracing::warn!(error = %e, "Cannot raise the soft limit on open files (RLIMIT_NOFILE) to the hard limit; the daemon keeps the current one.")
        }
    }
    // One thread runs every task: the daemon waits on the network and the store, and its
    // tasks hand work to each other constantly; on one thread that costs no cross-thread
    // wake-ups (a quarter less CPU per event than the multi-threaded runtime, BENCHMARKS.md).
    // Store queries run on the blocking pool, never on this thread; its threads are kept
    // for minutes, not tokio's 10 s, so the 10 s heartbeat of an idle daemon does not start
    // a new thread each time.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_keep_alive(std::time::Duration::from_secs(300))
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let reloads = crate::signal::with_reload(shutdown.clone())?;
        let daemon = crate::daemon::Daemon {
            config,
            config_path: config_path.to_path_buf(),
            metrics: Arc::new(Metrics::default()),
            log,
        };
        daemon.run(shutdown, reloads).await
    })
}
