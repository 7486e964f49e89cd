//! The `vod-eventd` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser as _;

/// mimalloc: the daemon allocates and frees many small buffers per event (parsed JSON,
/// requests, rows); glibc's allocator spent about a tenth of the daemon's CPU on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // No transparent huge pages: with THP set to `always`, the allocator's first touch of
    // each aligned region took a 2 MiB page, doubling a small daemon's memory (idle RSS
    // 26 MB against 19 MB). Best effort: an older kernel without the flag changes nothing.
    // Hooks inherit it, which costs them nothing either.
    let _ = nix::sys::prctl::set_thp_disable(true);
    configure_sqlite();
    vod_eventd::cli::run(vod_eventd::cli::Cli::parse())
}

/// Process-wide SQLite settings, made before the first connection: no memory statistics.
/// SQLite otherwise takes a global mutex on every allocation and free to keep them, and
/// nothing here reads them.
fn configure_sqlite() {
    // SAFETY: called first thing in main, before any thread or connection exists, as
    // sqlite3_config's contract asks; were SQLite already initialised, it would answer
    // SQLITE_MISUSE and change nothing.
    unsafe {
        rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::os::raw::c_int);
    }
}
