//! `vod-eventd emulator`: the in-tree VOD emulator as a standalone server, for testing
//! your own setup (or this daemon under systemd) without a cloud account.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use vod_emulator::{
    Api, Credential, EmptyResponse, Emulator, EmulatorConfig, EventConfig, FaultKind, Faults, DEMO_SECRET_ID,
    DEMO_SECRET_KEY,
};

/// `emulator` options.
#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8600")]
    pub listen: SocketAddr,
    /// The SecretId it accepts.
    #[arg(long, default_value = DEMO_SECRET_ID)]
    pub secret_id: String,
    /// The secret key it verifies signatures with.
    #[arg(long, env = "VOD_EMULATOR_SECRET_KEY", hide_env_values = true, default_value = DEMO_SECRET_KEY)]
    pub secret_key: String,
    /// How long an empty PullEvent is held.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// How long a handle stays valid before redelivery.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub visibility: Duration,
    /// Calls per minute per action before 4400 (0 = no limit).
    #[arg(long, default_value_t = 1000)]
    pub rate_limit: u32,
    /// Probability (0 to 1) that a call gets an injected fault.
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,
    /// How an empty long poll is answered: idle (the service's own: v2 code 4000, v3
    /// ResourceNotFound), empty-list, missing-list, null-list, rotate.
    #[arg(long, default_value = "idle", value_parser = parse_empty)]
    pub empty: EmptyResponse,
    /// Enqueue this many realistic events at start.
    #[arg(long, default_value_t = 0)]
    pub generate: usize,
    /// Start every app as Tencent sets one up for plain callbacks: PUSH mode, every event
    /// switch OFF (then try `vod-eventd account show` and `account set-mode pull`).
    #[arg(long)]
    pub push_mode: bool,
    /// The event shapes to generate: v2 or v3 (both APIs are always served).
    #[arg(long, default_value = "v2", value_parser = parse_api)]
    pub api: Api,
}

/// `v2` or `v3`.
pub fn parse_api(s: &str) -> Result<Api, String> {
    match s {
        "v2" => Ok(Api::V2),
        "v3" => Ok(Api::V3),
        _ => Err("expected v2 or v3".into()),
    }
}

fn parse_empty(s: &str) -> Result<EmptyResponse, String> {
    match s {
        "idle" | "code4000" => Ok(EmptyResponse::Idle),
        "empty-list" => Ok(EmptyResponse::EmptyList),
        "missing-list" => Ok(EmptyResponse::MissingList),
        "null-list" => Ok(EmptyResponse::NullList),
        "rotate" => Ok(EmptyResponse::Rotate),
        _ => Err("expected idle, empty-list, missing-list, null-list or rotate".into()),
    }
}

impl EmulatorArgs {
    /// Runs the emulator until SIGINT or SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.fault_rate) {
            anyhow::bail!("--fault-rate must be between 0 and 1");
        }
        let config = EmulatorConfig {
            credentials: vec![Credential { secret_id: self.secret_id.clone(), secret_key: self.secret_key }],
            hold: self.hold,
            visibility: self.visibility,
            rate_limit_per_minute: (self.rate_limit > 0).then_some(self.rate_limit),
            empty_response: self.empty,
            faults: Faults { rate: self.fault_rate, kinds: FaultKind::ALL.to_vec(), ..Faults::default() },
            api: self.api,
            event_config: if self.push_mode { EventConfig::push_all_off() } else { EventConfig::pull_all_on() },
            ..EmulatorConfig::default()
        };
        let emulator = Emulator::bind(self.listen, config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", self.listen))?;
        emulator.enqueue_generated(self.generate);
        let base = format!("http://{}", emulator.addr());
        println!("VOD emulator listening.");
        println!("  endpoint:   {}   (vod.endpoint, api = \"v2\")", emulator.endpoint());
        println!(
            "              {}   (vod.endpoint, api = \"v3\"; account.endpoint, api = \"v2\")",
            emulator.endpoint_v3()
        );
        println!("  secret id:  {}", self.secret_id);
        println!("  add events: curl -X POST '{base}/_emulator/generate?count=10'");
        println!("              curl -X POST {base}/_emulator/events -d @event.json");
        println!("  stats:      curl {base}/_emulator/stats");
        println!("  faults:     curl -X PUT {base}/_emulator/faults -d '{{\"rate\":0.1}}'");
        let token = tokio_util::sync::CancellationToken::new();
        crate::signal::cancel_on_signals(token.clone())?;
        token.cancelled().await;
        Ok(())
    }
}
