//! `vod-eventd hook-run -- PROGRAM ARGS...` (hidden): the small process between the daemon
//! and a shell hook that makes sure nothing the hook spawned outlives it. Killing the
//! hook's process group is not enough: a descendant can leave the group (`setsid`,
//! `setpgid`) and would survive every timeout and retry.
//!
//! The supervisor makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`), so every
//! descendant of the hook whose parent exits is re-parented to it, whatever group or
//! session it moved to. It runs the hook in a process group of its own and waits. When the
//! hook exits, or when the supervisor is asked to stop (SIGTERM from the daemon at a
//! timeout or at the shutdown drain, or the daemon's own death through `PR_SET_PDEATHSIG`),
//! it kills the hook's group, then kills and reaps its own children until none is left
//! (each one killed hands its children over to it), for at most [`CLEANUP_LIMIT`]. Then it
//! exits as the hook did: the same exit code, or the same signal.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The exit code when the hook cannot be started (as a shell reports it).
pub const CANNOT_START: i32 = 127;

/// How long the supervisor keeps killing descendants that keep appearing.
pub const CLEANUP_LIMIT: Duration = Duration::from_secs(5);

/// Runs `command` under supervision; returns the exit code to leave with (after a hook
/// killed by a signal, that signal is raised first).
pub fn run(command: &[OsString]) -> i32 {
    let Some((program, args)) = command.split_first() else {
        eprintln!("vod-eventd hook-run: no program given");
        return 2;
    };
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(signal);
    }
    // Blocked, then taken one at a time with sigwait; the hook starts with an empty mask
    // (the standard library resets it in the child).
    let _ = signals.thread_block();
    let hook = match std::process::Command::new(program).args(args).process_group(0).spawn() {
        Ok(child) => Pid::from_raw(child.id() as i32),
        Err(e) => {
            eprintln!("vod-eventd: cannot start {}: {e}", program.to_string_lossy());
            return CANNOT_START;
        }
    };
    let status = wait_for(hook, &signals);
    clean_up(hook);
    match status {
        Some(WaitStatus::Exited(_, code)) => code,
        Some(WaitStatus::Signaled(_, signal, _)) => {
            // Leave the way the hook did, so the daemon reports the signal (no handler is
            // installed here, so its default action applies once it is unblocked).
            let mut only = SigSet::empty();
            only.add(signal);
            let _ = only.thread_unblock();
            let _ = nix::sys::signal::raise(signal);
            128 + signal as i32
        }
        // Asked to stop before the hook ended.
        _ => 128 + Signal::SIGTERM as i32,
    }
}

/// Waits for the hook to end (its status) or for a request to stop (`None`), reaping
/// re-parented descendants that end meanwhile.
fn wait_for(hook: Pid, signals: &SigSet) -> Option<WaitStatus> {
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(status @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _))) if pid == hook => {
                        return Some(status)
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            },
            Ok(_) => return None,
            Err(Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}

/// Kills the hook's group, then every child this process has until none is left.
fn clean_up(hook: Pid) {
    let _ = killpg(hook, Signal::SIGKILL);
    let deadline = Instant::now() + CLEANUP_LIMIT;
    let mut thorough = false;
    while Instant::now() < deadline {
        // Reap what has ended; no child at all (ECHILD) is the end.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(_) => return,
            }
        }
        let children = children(thorough);
        if children.is_empty() && thorough {
            return;
        }
        if children.is_empty() {
            // A child the kernel's list missed (it changes while read): scan every process.
            thorough = true;
            continue;
        }
        for child in &children {
            let _ = kill(*child, Signal::SIGKILL);
        }
        // A killed child ends at once, handing its own children (still alive) over to this
        // process, which the next round kills.
        let _ = waitpid(None, None);
    }
}

/// This process's children: from `/proc/self/task/PID/children` where the kernel has it
/// (this process has one thread) unless `thorough`, else from every `/proc/*/stat`
/// (zombies excluded).
fn children(thorough: bool) -> Vec<Pid> {
    let me = std::process::id().to_string();
    if let Some(list) = std::fs::read_to_string(format!("/proc/self/task/{me}/children")).ok().filter(|_| !thorough) {
        return list.split_whitespace().filter_map(|pid| pid.parse().ok()).map(Pid::from_raw).collect();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(") ")?;
            let mut fields = rest.split(' ');
            let state = fields.next()?;
            let parent = fields.next()?;
            if parent == me && state != "Z" {
                pid.parse().ok().map(Pid::from_raw)
            } else {
                None
            }
        })
        .collect()
}
