//! Integration tests: the real binary against the in-tree emulator over real sockets,
//! real SQLite files in temp dirs, a private PostgreSQL cluster, and (for cross-checks) the official Python SDK.

/// Runs an `async fn(Api)` test against both APIs.
macro_rules! both_apis {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v2() {
                super::$name(vod_emulator::Api::V2).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v3() {
                super::$name(vod_emulator::Api::V3).await
            }
        }
    )*};
}

/// Runs an `async fn(Api, Backend)` test against both APIs on SQLite, and on PostgreSQL.
macro_rules! both_apis_and_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::support::Backend;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v2() {
                super::$name(vod_emulator::Api::V2, Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v3() {
                super::$name(vod_emulator::Api::V3, Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v2_postgres() {
                super::$name(vod_emulator::Api::V2, Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v3_postgres() {
                super::$name(vod_emulator::Api::V3, Backend::Postgres).await
            }
        }
    )*};
}

/// Runs an `async fn(Backend)` test on SQLite, and on PostgreSQL.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::support::Backend;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(Backend::Postgres).await
            }
        }
    )*};
}

mod account;
mod brokers;
mod browser;
mod chaos;
mod cli;
mod conformance;
mod contract;
mod contrib;
mod controls;
mod crosscheck;
mod filters;
mod handlers;
mod keyfetch;
mod keyserver;
mod listener;
mod operator;
mod pg;
mod pg_notify;
mod pipeline;
mod ranges;
mod receiver;
mod reload;
mod service;
mod sources;
mod store_copy;
mod store_lifecycle;
mod store_trouble;
mod support;
