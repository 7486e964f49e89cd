//! vod-eventd turns Tencent Cloud VOD's reliable-callback event queue into durable,
//! deduplicated events: it long-polls PullEvent, stores every event once in SQLite
//! (deduplicated on its content), and confirms the handles only after the commit.
//!
//! # Layout
//! - [`names`]: names and small types every layer shares (API version, reserved source names).
//! - [`config`]: layered configuration and its validation, a file per section;
//!   [`config_lint`]: placeholder values refused, inline secrets in a file others can read
//!   warned about.
//! - [`api`]: the signed v2 client and its error classes.
//! - [`account`]: the app's event configuration (PULL mode, switches) and its periodic check.
//! - [`event`]: what a received event is (dedupe key, extracted fields).
//! - [`event_types`]: the SDK model's API 3.0 event types: payload member, task id, file paths.
//! - [`store`]: SQLite (embedded) or PostgreSQL (`store.url`, shared by several hosts): schema, durable batch insert, outbox, history queries.
//! - [`puller`]: PullEvent → store → hand handles to the confirmer (one per source).
//! - [`discovery`]: `sources = "all"`: the account's enabled apps via DescribeSubAppIds.
//! - [`confirmer`]: batched ConfirmEvent inside the 30 s window.
//! - [`route`]: which handlers an event goes to, by type, source and filter.
//! - [`filter`]: route filters, CEL expressions over an event.
//! - [`dispatch`]: runs due deliveries from the store, with retries and a dead state.
//! - [`handler`]: the webhook, shell and DRM-key handlers, and the broker handlers (RabbitMQ, NATS
//!   JetStream, Redis Streams) in [`handler::broker`].
//! - [`retry`]: the handler retry policy.
//! - [`daemon`]: wiring and shutdown order.
//! - [`keyfetch`]: DescribeDrmDataKey batched (ten EDKs a call) and coalesced (one call per
//!   EDK in flight), for the DRM handler and the key server.
//! - [`keyserver`]: `vod-eventd keyserver`, the data keys served to players, with tokens
//!   bound to a file and an expiry.
//! - [`cli`]: the command line (daemon, history, config check, emulator, demo).
//! - [`metrics`], [`health`], [`http`]: what the pipeline did, whether it is well, `/metrics`.
//! - [`service`]: sd_notify, the status heartbeat and data-at-risk alarms.
//! - [`alerts`]: the daemon's own happenings stored and routed as `vod-eventd.*` events;
//!   [`alert_event`] is their model (kinds, body, hold), below the store that records them.
//! - [`outage`]: reporting and backing off while the store refuses writes.
//! - [`backoff`], [`clock`], [`signal`], [`logging`], [`redact`]: small shared pieces.
//!
//! Layers point one way: the shared names, the event model and the config types at the
//! bottom, the store above them, the loops above the store, the service and the CLI on top.
//! `tests/layers.rs` fails on any circle in the module graph.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod account;
pub mod alert_event;
pub mod alerts;
pub mod api;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod config_lint;
pub mod confirmer;
pub mod daemon;
pub mod discovery;
pub mod dispatch;
pub mod event;
pub mod event_types;
pub mod filter;
pub mod handler;
pub mod handoff;
pub mod health;
pub mod http;
pub mod ingest;
pub mod keyfetch;
pub mod keyserver;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod outage;
pub mod puller;
pub mod redact;
pub mod retry;
pub mod route;
pub mod service;
pub mod signal;
pub mod store;
