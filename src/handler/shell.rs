//! The shell hook: runs `command` as an argument vector (never through a shell) with the
//! event body on stdin and a scrubbed environment: only the names in `env` (taken from
//! the daemon's own environment) plus `VOD_EVENT_ID` (stable, like `webhook-id`),
//! `VOD_EVENT_ROWID`, `VOD_EVENT_TYPE`, `VOD_FILE_ID`, `VOD_TASK_ID`, `VOD_ATTEMPT`, `VOD_SOURCE` and
//! `VOD_SUB_APP_ID` (the source the event was pulled from and its app, empty for the default app) (the
//! type and ids percent-encoded where needed, see [`super::encode_field`]).
//!
//! The environment is small by construction: a type or id longer than [`MAX_ENV_VALUE`]
//! bytes (once encoded) is not put in it (Linux refuses any single variable over 128 KiB,
//! and the whole environment beyond a quarter of the stack limit, with E2BIG). Such a
//! variable is set empty and named in `VOD_OMITTED` (comma-separated, empty when nothing
//! was left out); the hook reads the value from the event on stdin. Should the system still
//! refuse to start the hook for its size (a huge variable passed through `env`), the
//! attempt is dead at once with that reason: retrying cannot help.
//!
//! The hook runs under a supervisor, the daemon's own binary (`hook-run`,
//! [`super::supervise`]), which is a child subreaper: when the hook exits, when `timeout`
//! passes, when the attempt is stopped (the shutdown drain) or when the daemon dies, the
//! hook's process group and every descendant, including those that left the group with
//! `setsid`, are killed, so nothing it spawned outlives the attempt. The daemon asks the
//! supervisor with SIGTERM and kills its group itself if it has not ended within
//! [`STOP_GRACE`]. Exit 0 is done; a code in `permanent_exit_codes` is dead;
//! anything else (other codes, signals, the timeout, a failure to start) is retried.
//! stdout and stderr are kept up to `output_limit` bytes each in the attempt record.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{Delivery, Failure, ShellConfig, Success};

/// How long to wait for the output pipes to close after the group was killed.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// How long the supervisor has to kill the hook's descendants once asked.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The program that supervises hooks: this binary, as the kernel knows it (still the same
/// file after a package upgrade replaced it on disk), unless [`set_supervisor`] named another.
const SUPERVISOR: &str = "/proc/self/exe";

/// The program set by [`set_supervisor`].
static SUPERVISOR_OVERRIDE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Runs hooks under `program hook-run` instead of this process's own binary: for a process
/// that builds the shell handler but is not `vod-eventd` itself (the handler contract tests).
/// The first call wins.
pub fn set_supervisor(program: std::path::PathBuf) {
    let _ = SUPERVISOR_OVERRIDE.set(program);
}

/// The longest event field put in a hook's environment, in bytes.
pub const MAX_ENV_VALUE: usize = 16 * 1024;

/// A built shell handler.
pub struct Shell {
    config: ShellConfig,
}

impl Shell {
    pub(super) fn new(config: &ShellConfig) -> Shell {
        Shell { config: config.clone() }
    }

    pub(super) async fn handle(&self, d: &Delivery) -> Result<Success, Failure> {
        let c = &self.config;
        let supervisor = SUPERVISOR_OVERRIDE.get().map_or(std::path::Path::new(SUPERVISOR), |p| p.as_path());
        let mut cmd = tokio::process::Command::new(supervisor);
        cmd.args(["hook-run", "--"]).args(&c.command).env_clear();
        for name in &c.env {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        let mut omitted: Vec<&str> = Vec::new();
        for (name, value) in [
            ("VOD_EVENT_TYPE", Some(d.event_type.as_str())),
            ("VOD_FILE_ID", d.file_id.as_deref()),
            ("VOD_TASK_ID", d.task_id.as_deref()),
        ] {
            let value = super::encode_field(value.unwrap_or(""));
            if value.len() > MAX_ENV_VALUE {
                omitted.push(name);
                cmd.env(name, "");
            } else {
                cmd.env(name, value.as_ref());
            }
        }
        cmd.env("VOD_EVENT_ID", &d.webhook_id)
            .env("VOD_EVENT_ROWID", d.event_id.to_string())
            .env("VOD_OMITTED", omitted.join(","))
            .env("VOD_ATTEMPT", d.attempt.to_string())
            .env("VOD_SOURCE", &d.source)
            .env("VOD_SUB_APP_ID", d.sub_app_id.map(|id| id.to_string()).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(dir) = &c.working_dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|e| spawn_failure(&c.command[0], &e))?;
        let mut group = Supervisor(child.id().map(|id| Pid::from_raw(id as i32)));
        let stdin = child.stdin.take();
        let body = d.body.clone();
        // A hook that ignores stdin closes the pipe early; that is its business.
        let feeder = tokio::spawn(async move {
            if let Some(mut stdin) = stdin {
                let _ = stdin.write_all(body.as_bytes()).await;
            }
        });
        let stdout = tokio::spawn(read_limited(child.stdout.take(), c.output_limit));
        let stderr = tokio::spawn(read_limited(child.stderr.take(), c.output_limit));

        // The supervisor ends once the hook and all it started are gone.
        let waited = tokio::time::timeout(c.timeout, child.wait()).await;
        let status = match waited {
            Ok(status) => {
                group.0 = None;
                Some(status.map_err(|e| Failure::transient(format!("waiting for the hook failed: {e}")))?)
            }
            Err(_) => {
                // Out of time: the supervisor kills the hook and its descendants.
                group.stop();
                if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                    group.kill();
                    let _ = child.wait().await;
                }
                group.0 = None;
                None
            }
        };
        feeder.abort();
        let excerpt = Some(format_output(join_output(stdout).await, join_output(stderr).await));
        let Some(status) = status else {
            return Err(Failure {
                excerpt,
                ..Failure::transient(format!(
                    "timed out after {:?}; the hook and everything it started were killed",
                    c.timeout
                ))
            });
        };
        match status.code() {
            Some(0) => Ok(Success { status: Some(0), excerpt }),
            Some(code) => Err(Failure {
                retryable: !c.permanent_exit_codes.contains(&code),
                message: format!("exited with code {code}"),
                status: Some(i64::from(code)),
                excerpt,
                retry_after: None,
            }),
            None => Err(Failure { excerpt, ..Failure::transient(format!("killed by a signal ({status})")) }),
        }
    }
}

/// Why the hook could not start. Arguments and environment too large for the system
/// (E2BIG) are permanent: the same delivery would be refused the same way every time.
fn spawn_failure(program: &str, e: &std::io::Error) -> Failure {
    if e.raw_os_error() == Some(nix::errno::Errno::E2BIG as i32) {
        return Failure::permanent(format!(
            "cannot start {program}: its arguments and environment are larger than the system allows (E2BIG); shorten `command` or the variables passed through `env`"
        ));
    }
    Failure::transient(format!("cannot start {program}: {e}"))
}

/// The hook's supervisor (its pid is its process group's). Dropped while it runs (the
/// shutdown drain stopped the attempt), it is asked to stop: it kills the hook and every
/// descendant, then ends, and is reaped in the background.
struct Supervisor(Option<Pid>);

impl Supervisor {
    /// Asks the supervisor to kill the hook and its descendants and end.
    fn stop(&self) {
        if let Some(pid) = self.0 {
            let _ = kill(pid, Signal::SIGTERM);
        }
    }

    /// Kills the supervisor's group outright (it did not end when asked).
    fn kill(&mut self) {
        if let Some(group) = self.0.take() {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn read_limited(pipe: Option<impl AsyncRead + Unpin>, limit: usize) -> (Vec<u8>, usize) {
    let Some(mut pipe) = pipe else { return (Vec::new(), 0) };
    let mut kept = Vec::new();
    let mut total = 0;
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        total += n;
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    (kept, total)
}

async fn join_output(task: tokio::task::JoinHandle<(Vec<u8>, usize)>) -> (Vec<u8>, usize) {
    let abort = task.abort_handle();
    match tokio::time::timeout(PIPE_GRACE, task).await {
        Ok(Ok(out)) => out,
        _ => {
            abort.abort();
            (Vec::new(), 0)
        }
    }
}

fn format_output((out, out_total): (Vec<u8>, usize), (err, err_total): (Vec<u8>, usize)) -> String {
    let part = |name: &str, bytes: &[u8], total: usize| {
        let cut = if total > bytes.len() { format!(" …[{} bytes cut]", total - bytes.len()) } else { String::new() };
        format!("{name}: {}{cut}", String::from_utf8_lossy(bytes))
    };
    let mut parts = Vec::new();
    if out_total > 0 {
        parts.push(part("stdout", &out, out_total));
    }
    if err_total > 0 {
        parts.push(part("stderr", &err, err_total));
    }
    parts.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_refused_for_its_size_is_permanent() {
        let too_big = spawn_failure("/bin/hook", &std::io::Error::from_raw_os_error(nix::errno::Errno::E2BIG as i32));
        assert!(!too_big.retryable);
        assert!(too_big.message.contains("larger than the system allows (E2BIG)"), "{}", too_big.message);
        let missing = spawn_failure("/bin/hook", &std::io::Error::from_raw_os_error(nix::errno::Errno::ENOENT as i32));
        assert!(missing.retryable);
    }
}
