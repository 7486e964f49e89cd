//! `vod-eventd keys get|list|token|rekey`: DRM data keys fetched by the `drm` handler.
//! `get --raw` writes the 16 key bytes to stdout, as a key server returns them to an HLS
//! player; `rekey` seals every stored key under the first key of `[keys]
//! encryption_key_file` (rotation of the encryption at rest).

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Args, Subcommand};

use super::time::rfc3339;
use crate::config::Config;

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print the data key for an EDK.
    Get(GetArgs),
    /// List stored keys (without key material).
    List(ListArgs),
    /// Print a key-server token for a file (or files, or a prefix), signed with the first
    /// secret of `[keyserver]`.
    Token(TokenArgs),
    /// Seal every stored key under the first key of `[keys] encryption_key_file`: keys
    /// sealed under an older key of the file, or stored before encryption. Then the older
    /// key may be removed from the file.
    Rekey,
}

/// `keys token` options.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["file_id", "prefix"])))]
pub struct TokenArgs {
    /// The file id the token opens (repeat for several).
    #[arg(long, value_name = "ID")]
    pub file_id: Vec<String>,
    /// Open every file id starting with this instead.
    #[arg(long, value_name = "PREFIX", conflicts_with = "file_id")]
    pub prefix: Option<String>,
    /// How long the token is valid (`2h`, `30m`, `7d`).
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
}

/// `keys get` options.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The EDK, as in the event (or URL-decoded from the EXT-X-KEY URI).
    #[arg(long)]
    pub edk: String,
    /// Write the 16 raw bytes (for a key server response).
    #[arg(long, conflicts_with = "base64")]
    pub raw: bool,
    /// Write the key as base64 text.
    #[arg(long)]
    pub base64: bool,
}

/// `keys list` options.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only keys of this file.
    #[arg(long, value_name = "ID")]
    pub file_id: Option<String>,
    /// At most this many (0: all); standard error says when there are more.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Every stored key (the same as `--limit 0`).
    #[arg(long)]
    pub all: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

impl KeysCommand {
    /// Runs the subcommand.
    pub fn run(self, config: &Config, config_path: &Path) -> anyhow::Result<()> {
        if let KeysCommand::Token(args) = self {
            return token(config, config_path, args);
        }
        let store = super::open_store(config, config_path)?;
        let mut out = std::io::stdout().lock();
        match self {
            KeysCommand::Get(args) => {
                anyhow::ensure!(args.raw || args.base64, "choose an output: --raw (16 bytes) or --base64");
                let key = store
                    .get_key(&args.edk)?
                    .context("no data key stored for that EDK (is a `drm` handler routed for its event?)")?;
                if args.raw {
                    out.write_all(&key)?;
                } else {
                    writeln!(out, "{}", base64::engine::general_purpose::STANDARD.encode(&key))?;
                }
            }
            KeysCommand::Token(_) => unreachable!("answered above"),
            KeysCommand::Rekey => {
                let ring = store.keyring().context(
                    "no [keys] encryption_key_file (or systemd credential vod-keys-encryption-key): nothing to seal with",
                )?;
                let id = ring.sealing_id().to_string();
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let (sealed, current) = runtime.block_on(store.rekey())?;
                writeln!(out, "{sealed} keys sealed under key id {id}; {current} already were")?;
            }
            KeysCommand::List(args) => {
                let limit = super::cut::Limit { limit: args.limit, all: args.all };
                let mut keys = store.list_keys(args.file_id.as_deref(), limit.fetch())?;
                let cut = limit.cut(&mut keys);
                for k in &keys {
                    if args.json {
                        writeln!(out, "{}", serde_json::to_string(k)?)?;
                    } else {
                        let edk: String = k.edk.chars().take(24).collect();
                        writeln!(
                            out,
                            "{}  {:<20}  {:<14}  {}…",
                            rfc3339(k.fetched_at),
                            super::text::escape(k.file_id.as_deref().unwrap_or("-")),
                            super::text::escape(k.key_source.as_deref().unwrap_or("-")),
                            super::text::escape(&edk)
                        )?;
                    }
                }
                out.flush()?;
                limit.say(cut, keys.len(), "keys", args.json);
            }
        }
        Ok(())
    }
}

/// `keys token`: needs the secrets of `[keyserver]`, not the store.
fn token(config: &Config, config_path: &Path, args: TokenArgs) -> anyhow::Result<()> {
    use crate::keyserver::token::{mint, Scope};
    let section = super::keyserver::section(config, config_path)?;
    let secrets = super::keyserver::secrets(&section, config_path)?;
    let scope = match args.prefix {
        Some(prefix) => Scope::Prefix(prefix),
        None => Scope::Files(args.file_id),
    };
    anyhow::ensure!(!args.ttl.is_zero(), "--ttl must be above zero");
    let ttl = i64::try_from(args.ttl.as_secs()).context("--ttl is too long")?;
    let expires = chrono::Utc::now().timestamp().saturating_add(ttl);
    let token = mint(&secrets[0], &scope, expires).map_err(anyhow::Error::msg)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{token}")?;
    Ok(())
}
