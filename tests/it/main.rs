//! Integration tests: the real binary against the in-tree emulator over real sockets,
//! real SQLite files in temp dirs, and (for cross-checks) the official Python SDK.

mod cli;
mod crosscheck;
mod handlers;
mod pipeline;
mod receiver;
mod service;
mod support;
