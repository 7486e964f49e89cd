//! `type = "shell"`: the program, its environment, exit codes, output kept and the attempt
//! timeout, with their checks (the shared controls are in the parent module).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{HandlerControls, HandlerType};

/// `type = "shell"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellConfig {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Per-attempt timeout.
    #[serde(default = "default_shell_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Names of the daemon's environment variables the hook may see.
    #[serde(default = "default_env")]
    pub env: Vec<String>,
    /// Exit codes that mean "never retry".
    #[serde(default)]
    pub permanent_exit_codes: Vec<i32>,
    /// Bytes of stdout and of stderr kept per attempt.
    #[serde(default = "default_output_limit")]
    pub output_limit: usize,
    /// Working directory.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// The controls every handler type shares (`concurrency`, `pause_after`, ...).
    #[serde(skip)]
    pub controls: HandlerControls,
}

fn default_shell_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_env() -> Vec<String> {
    vec!["PATH".into()]
}
fn default_output_limit() -> usize {
    4096
}

impl ShellConfig {
    fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        if self.command.first().is_none_or(|p| p.is_empty()) {
            issues.push((
                "command".into(),
                "must name a program, e.g. [\"/usr/local/bin/ingest\", \"--source\", \"vod\"]".into(),
            ));
        }
        if self.timeout.is_zero() {
            issues.push(("timeout".into(), "must be above zero".into()));
        }
        issues
    }
}

impl HandlerType for ShellConfig {
    const TYPE: &'static str = "shell";
    fn validate(&self) -> Vec<(String, String)> {
        ShellConfig::validate(self)
    }
    fn controls_mut(&mut self) -> &mut HandlerControls {
        &mut self.controls
    }
}
