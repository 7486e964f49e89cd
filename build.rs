//! Build facts for `--version` and the `vod_eventd_build_info` metric: the git commit the
//! binary was built from (`unknown` outside a git checkout, e.g. from a source tarball) and
//! the build date (UTC; `SOURCE_DATE_EPOCH` when set, for reproducible builds). The names stay
//! outside the `VOD_EVENTD_` prefix: cargo also sets them when it runs the binary, and the
//! config loader reads every `VOD_EVENTD_*` variable as a setting.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// `git rev-parse ARGS`, trimmed; `None` outside a git checkout.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .arg("rev-parse")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    // Rebuild when HEAD moves: HEAD itself (a checkout, a detached commit) and the branch it
    // names. The paths come from git, since in a linked worktree `.git` is a file (a path named
    // here that does not exist makes cargo rebuild every time), and only the current branch's
    // ref is watched, not all of refs/heads, which every worktree's commits touch.
    println!("cargo:rerun-if-changed=build.rs");
    if let (Some(git_dir), Some(common_dir)) = (git(&["--git-dir"]), git(&["--git-common-dir"])) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        let branch = git(&["--symbolic-full-name", "HEAD"]).filter(|r| r.starts_with("refs/"));
        let watched = branch.iter().map(|r| format!("{common_dir}/{r}")).chain([format!("{common_dir}/packed-refs")]);
        for path in watched.filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let commit = git(&["--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64));
    println!("cargo:rustc-env=VOD_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=VOD_BUILD_DATE={}", vod_protocol::tc3::utc_date(epoch));
}
