//! `vod-eventd demo`: the embedded default. Starts the emulator and the daemon in one
//! process with a demo config under `./vod-eventd-demo/`, feeds a realistic mix of events
//! (redeliveries included) into two apps pulled as two `[[sources]]`, prints each one as it
//! is stored, with its source, and ends when the emulator has every event confirmed and
//! every handler delivery is settled. All three handlers
//! run: a webhook to the emulator's built-in sink (signatures checked), a shell hook for
//! uploads, and the DRM key fetcher for task-flow events. The printed config works with
//! `events list`, `deliveries list` and `keys list` afterwards.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::unix::fs::PermissionsExt as _;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;
use tokio_util::sync::CancellationToken;
use vod_emulator::{Api, Emulator, EmulatorConfig, DEMO_SECRET_ID, DEMO_SECRET_KEY};

use crate::metrics::Metrics;
use crate::store::Store;

/// `demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo config and store go.
    #[arg(long, default_value = "vod-eventd-demo")]
    pub dir: PathBuf,
    /// How many distinct events to feed.
    #[arg(long, default_value_t = 36)]
    pub events: usize,
    /// The API to speak: v2 (PullEvent/ConfirmEvent) or v3 (PullEvents/ConfirmEvents, TC3).
    #[arg(long, default_value = "v2", value_parser = super::emulator::parse_api)]
    pub api: Api,
    /// Keep running after the feed is done (stop with Ctrl-C); add events through the
    /// emulator's control endpoint meanwhile.
    #[arg(long)]
    pub keep_running: bool,
    /// Store the events in this PostgreSQL database (postgresql://USER@HOST:PORT/DATABASE)
    /// instead of a SQLite file in --dir.
    #[arg(long, value_name = "URL")]
    pub store_url: Option<String>,
}

/// How to run this binary again, as a command that works when pasted: `cargo run --release --`
/// under cargo (which sets `CARGO_PKG_NAME` for what it runs), else the binary's own path.
fn this_command() -> String {
    if std::env::var_os("CARGO_PKG_NAME").is_some() {
        return "cargo run --release --".into();
    }
    std::env::current_exe().map_or_else(|_| "vod-eventd".into(), |p| p.display().to_string())
}

/// The demo account's two apps, each pulled as a source of its own: (source name, SubAppId).
const APPS: [(&str, u64); 2] = [("main", 1500000001), ("second", 1500000002)];

/// Gives up if the demo has not drained by then (it takes a few seconds).
const DEMO_DEADLINE: Duration = Duration::from_secs(120);

impl DemoArgs {
    /// Runs the demo.
    pub async fn run(self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create the demo directory {}", self.dir.display()))?;
        let dir = self.dir.canonicalize()?;
        let emulator = Emulator::start(EmulatorConfig {
            hold: Duration::from_secs(2),
            api: self.api,
            sub_app_ids: Some(APPS.iter().map(|(_, app)| *app).collect()),
            ..EmulatorConfig::default()
        })
        .await?;
        let config_path = dir.join("config.toml");
        let secret = write_demo_config(&dir, &emulator, self.store_url.as_deref())?;
        let config = crate::config::load(&config_path)?;
        crate::logging::init("warn", "text");

        println!("vod-eventd demo");
        println!("  emulator:  {} (API {:?})", emulator.endpoint_for(self.api), self.api);
        let apps: Vec<String> = APPS.iter().map(|(name, app)| format!("{name} (app {app})")).collect();
        println!("  sources:   {}", apps.join(", "));
        println!("  config:    {}", config_path.display());
        match config.store.postgres_url() {
            Some(url) => println!("  store:     {}", crate::store::postgres::display_url(url)),
            None => println!("  store:     {}", config.store.path.display()),
        }
        println!();

        let shutdown = CancellationToken::new();
        crate::signal::cancel_on_signals(shutdown.clone())?;
        let stats = Arc::new(Metrics::default());
        let daemon = crate::daemon::Daemon {
            config: config.clone(),
            config_path: config_path.clone(),
            metrics: stats.clone(),
            log: crate::logging::LogHandle::none(),
        };
        let (_reload_tx, reloads) = tokio::sync::mpsc::channel(1);
        let daemon = tokio::spawn(daemon.run(shutdown.child_token(), reloads));

        let store = wait_for_store(&config.store, &daemon).await?;
        let first_new_id = store.max_event_id()?;
        let redeliveries = feed(&emulator, self.events).await;
        let mut last_id = first_new_id;
        let started = Instant::now();
        loop {
            for row in store.events_after(last_id, 100)? {
                last_id = row.id;
                println!(
                    "  stored #{:<4} {:<7} {:<36} file {:<20} task {}",
                    row.id,
                    row.source,
                    row.event_type,
                    row.file_id.as_deref().unwrap_or("-"),
                    row.task_id.as_deref().unwrap_or("-")
                );
            }
            let s = emulator.stats();
            let done = s.queue.outstanding == 0
                && s.queue.enqueued == (self.events + redeliveries) as u64
                && deliveries_settled(&store)?;
            if (done && !self.keep_running) || shutdown.is_cancelled() || daemon.is_finished() {
                break;
            }
            if started.elapsed() > DEMO_DEADLINE && !self.keep_running {
                anyhow::bail!("the demo did not drain within {DEMO_DEADLINE:?}; see the log lines above");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        shutdown.cancel();
        daemon.await??;
        let s = emulator.stats();
        println!();
        println!(
            "Fed {} events plus {} redeliveries of the same content: {} stored rows, {} duplicates folded, {} handles confirmed (slowest {} ms after its pull), {} left at the emulator.",
            self.events,
            redeliveries,
            last_id - first_new_id,
            stats.duplicates_total.get(),
            s.queue.confirmed,
            s.queue.max_confirm_latency_ms,
            s.queue.outstanding
        );
        print_source_summary(&store, &emulator, first_new_id)?;
        print_handler_summary(&store, &emulator, &secret, &dir)?;
        println!();
        println!("Query the history:");
        let me = this_command();
        println!("  {me} events list --config {}", config_path.display());
        println!("  {me} events list --config {} --source {}", config_path.display(), APPS[1].0);
        println!("  {me} deliveries list --config {}", config_path.display());
        println!("  {me} keys list --config {}", config_path.display());
        println!("  {me} events list --config {} --type ProcedureStateChanged --json", config_path.display());
        println!("  {me} events show --config {} {}", config_path.display(), last_id);
        Ok(())
    }
}

/// Writes the demo config, the upload hook and the key directory; returns the webhook secret.
fn write_demo_config(dir: &Path, emulator: &Emulator, store_url: Option<&str>) -> anyhow::Result<String> {
    let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 24]>()));
    let hook = dir.join("on-upload.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\n# The demo's shell hook: the event JSON arrives on stdin, ids in VOD_* variables.\n\
         bytes=$(wc -c)\n\
         echo \"$VOD_SOURCE $VOD_EVENT_TYPE file=$VOD_FILE_ID id=$VOD_EVENT_ID attempt=$VOD_ATTEMPT bytes=$bytes\" >> \"$(dirname \"$0\")/hook.log\"\n",
    )?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys)?;
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700))?;
    let sink = format!("http://{}{}", emulator.addr(), vod_emulator::EmulatorHandle::webhook_sink_path());
    let text = format!(
        "# Written by `vod-eventd demo`: the daemon pointed at an in-process emulator.\n\
         [vod]\napi = \"{api}\"\nendpoint = \"{endpoint}\"\nsecret_id = \"{DEMO_SECRET_ID}\"\nsecret_key = \"{DEMO_SECRET_KEY}\"\n\
         signature_method = \"HmacSHA256\"\n\n\
         # Two apps of the account, each pulled as a source of its own (the rest comes from [vod]).\n\
         [[sources]]\nname = \"{main}\"\nsub_app_id = {main_app}\n\n[[sources]]\nname = \"{second}\"\nsub_app_id = {second_app}\n\n[account]\nendpoint = \"{account}\"\n\n[store]\npath = \"{store}\"\n{url}\n[confirm]\nmax_delay = \"500ms\"\n\n\
         [log]\nlevel = \"warn\"\n\n[dispatch]\npoll_interval = \"200ms\"\n\n\
         [[routes]]\nevents = [\"*\"]\nhandlers = [\"internal\"]\n\n\
         [[routes]]\nevents = [\"NewFileUpload\"]\nhandlers = [\"on-upload\"]\n\n\
         [[routes]]\nevents = [\"ProcedureStateChanged\"]\nhandlers = [\"keys\"]\n\n\
         [handlers.internal]\ntype = \"webhook\"\nurl = \"{sink}\"\nsecret = \"{secret}\"\n\n\
         [handlers.on-upload]\ntype = \"shell\"\ncommand = [\"{hook}\"]\n\n\
         [handlers.keys]\ntype = \"drm\"\nkey_dir = \"{keys}\"\n\
         # API 3.0 reads EDKs from the task flow's HLS playlists; the emulator serves them over plain HTTP,\n\
         # on loopback.\n\
         allow_http = true\nallow_private = [\"127.0.0.1\"]\n",
        api = if emulator.api() == Api::V3 { "v3" } else { "v2" },
        main = APPS[0].0,
        main_app = APPS[0].1,
        second = APPS[1].0,
        second_app = APPS[1].1,
        endpoint = emulator.endpoint_for(emulator.api()),
        account = emulator.endpoint_v3(),
        store = dir.join("events.db").display(),
        url = store_url.map(|u| format!("url = {}\n", toml_string(u))).unwrap_or_default(),
        hook = hook.display(),
        keys = keys.display(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(secret)
}

/// True when no delivery is pending or running.
fn deliveries_settled(store: &Store) -> anyhow::Result<bool> {
    Ok(store.deliveries()?.iter().all(|d| d.state != "pending" && d.state != "running"))
}

/// Rows stored and handles confirmed in this run, per source.
fn print_source_summary(store: &Store, emulator: &Emulator, first_new_id: i64) -> anyhow::Result<()> {
    let mut rows = std::collections::HashMap::<String, i64>::new();
    for event in store.events_after(first_new_id, u32::MAX)? {
        *rows.entry(event.source).or_default() += 1;
    }
    println!();
    println!("Sources:");
    for (name, app) in APPS {
        let confirmed = emulator.stats_for(Some(app)).confirmed;
        let stored = rows.get(name).copied().unwrap_or(0);
        println!("  {name:<10} app {app}: {stored} stored rows, {confirmed} handles confirmed under its own app");
    }
    Ok(())
}

fn print_handler_summary(store: &Store, emulator: &Emulator, secret: &str, dir: &Path) -> anyhow::Result<()> {
    let key = base64::engine::general_purpose::STANDARD.decode(secret.trim_start_matches("whsec_"))?;
    let webhooks = emulator.webhooks();
    let verified = webhooks
        .iter()
        .filter(|w| {
            let timestamp = w.timestamp.parse().unwrap_or(0);
            let expected = crate::handler::sign_webhook(&key, &w.id, timestamp, w.body.as_bytes());
            w.signature.split(' ').any(|s| s == expected)
        })
        .count();
    let mut counts = std::collections::BTreeMap::<(String, String), i64>::new();
    for d in store.deliveries()? {
        *counts.entry((d.handler, d.state)).or_default() += 1;
    }
    let hook_runs = std::fs::read_to_string(dir.join("hook.log")).map(|t| t.lines().count()).unwrap_or(0);
    let keys = store.list_keys(None, u32::MAX)?.len();
    println!();
    println!("Handlers:");
    for ((handler, state), n) in counts {
        println!("  {handler:<10} {state:<8} {n}");
    }
    println!(
        "  webhook sink received {} requests, {verified} with a valid Standard Webhooks signature",
        webhooks.len()
    );
    println!("  shell hook ran {hook_runs} times (see {})", dir.join("hook.log").display());
    println!("  {keys} DRM data keys stored (also as files in {})", dir.join("keys").display());
    Ok(())
}

async fn wait_for_store(
    config: &crate::config::StoreConfig,
    daemon: &tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<Store> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let opening = config.clone();
        if let Ok(Ok(store)) = tokio::task::spawn_blocking(move || Store::open_for_cli(&opening)).await {
            return Ok(store);
        }
        if daemon.is_finished() || Instant::now() > deadline {
            anyhow::bail!("the daemon did not open its store ({})", config_shown(config));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Feeds `count` events of every type in small bursts, into both apps; every
/// other pair of bursts also carries a second copy of its first event while the first copy
/// is still unconfirmed, as Tencent hands an event out again when a handle expires.
/// Returns how many redeliveries were fed.
async fn feed(emulator: &Emulator, count: usize) -> usize {
    let mut redeliveries = 0;
    for (i, chunk) in (0..count).collect::<Vec<_>>().chunks(6).enumerate() {
        // Bursts 0, 3, 4 to one app and 1, 2, 5 to the other: each app gets every event type.
        let app = Some(APPS[(i + i / 2) % 2].1);
        let first = emulator.enqueue_generated_to(app, 1).remove(0);
        if (i / 2) % 2 == 0 {
            emulator.enqueue_to(app, first);
            redeliveries += 1;
        }
        emulator.enqueue_generated_to(app, chunk.len() - 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    redeliveries
}

/// A TOML basic string holding `value`.
fn toml_string(value: &str) -> String {
    serde_json::to_string(value).expect("a string serialises")
}

/// The store a config names, as it may be shown.
fn config_shown(config: &crate::config::StoreConfig) -> String {
    match config.postgres_url() {
        Some(url) => crate::store::postgres::display_url(url),
        None => config.path.display().to_string(),
    }
}
