//! The `vod-eventd` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    vod_eventd::cli::run(vod_eventd::cli::Cli::parse())
}
