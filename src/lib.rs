//! vod-eventd turns Tencent Cloud VOD's reliable-callback event queue into durable,
//! deduplicated events: it long-polls PullEvent, stores every event once in SQLite
//! (deduplicated on its content), and confirms the handles only after the commit.
//!
//! # Layout
//! - [`config`]: layered configuration and its validation.
//! - [`api`]: the signed v2 client and its error classes.
//! - [`event`]: what a received event is (dedupe key, extracted fields).
//! - [`store`]: SQLite: schema, durable batch insert, history queries.
//! - [`puller`]: PullEvent → store → hand handles to the confirmer.
//! - [`confirmer`]: batched ConfirmEvent inside the 30 s window.
//! - [`daemon`]: wiring and shutdown order.
//! - [`cli`]: the command line (daemon, history, config check, emulator, demo).
//! - [`backoff`], [`stats`], [`signal`], [`logging`]: small shared pieces.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod confirmer;
pub mod daemon;
pub mod event;
pub mod logging;
pub mod puller;
pub mod signal;
pub mod stats;
pub mod store;
