//! The broker handlers: RabbitMQ ([`amqp`]), NATS JetStream ([`nats`]) and Redis Streams
//! ([`redis`]). Each publishes the event body exactly as received, with the delivery's stable
//! id (`webhook-id`) as the message id, and calls an attempt done only once the broker has
//! taken the message durably by its own rules (publisher confirm, JetStream ack, `XADD`).
//!
//! What they share lives here: one connection per handler ([`Link`]), made on first use and
//! again after it broke, with a bounded backoff between tries, so that a broker that is down
//! is a transient failure under the dispatcher's schedule and breaker, not a connect storm;
//! the attempt timeout ([`bounded`]); and [`Scrub`], through which every error text passes,
//! so that no password (from the URL or a file) reaches an attempt record or a log.

pub mod amqp;
pub mod nats;
pub mod redis;

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use secrecy::{ExposeSecret, SecretString};

use super::{Delivery, Failure};

/// The first wait after a failed connect; it doubles on each failure in a row.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two connects: short, since the dispatcher's own schedule
/// already spaces attempts, and a broker back up should be used again within seconds.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The wait before connect number `failures + 1` after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    BACKOFF_FIRST.saturating_mul(1 << failures.min(16)).min(BACKOFF_MAX)
}

/// One broker connection (`C`, cheap to clone), made when first needed and made again once
/// it is found broken; connects are spaced by [`backoff`].
pub(super) struct Link<C> {
    state: tokio::sync::Mutex<LinkState<C>>,
}

struct LinkState<C> {
    conn: Option<C>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

impl<C: Clone> Link<C> {
    pub(super) fn new() -> Link<C> {
        Link {
            state: tokio::sync::Mutex::new(LinkState {
                conn: None,
                failures: 0,
                retry_at: None,
                last_error: String::new(),
            }),
        }
    }

    /// The connection if it is `alive`, else a new one from `connect` (unless the last
    /// connect failed too recently: then that failure again, as transient).
    pub(super) async fn get<F, Fut>(&self, alive: impl Fn(&C) -> bool, connect: F) -> Result<C, Failure>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, Failure>>,
    {
        let mut state = self.state.lock().await;
        if let Some(conn) = state.conn.as_ref().filter(|c| alive(c)) {
            return Ok(conn.clone());
        }
        state.conn = None;
        if let Some(at) = state.retry_at.filter(|at| *at > Instant::now()) {
            let wait = at - Instant::now();
            let message = format!("{} (next connection try in {} ms)", state.last_error, wait.as_millis());
            return Err(Failure::transient(message));
        }
        match connect().await {
            Ok(conn) => {
                state.conn = Some(conn.clone());
                state.failures = 0;
                state.retry_at = None;
                Ok(conn)
            }
            Err(failure) => {
                state.retry_at = Some(Instant::now() + backoff(state.failures));
                state.failures = state.failures.saturating_add(1);
                state.last_error = failure.message.clone();
                Err(failure)
            }
        }
    }
}

impl<C> Link<C> {
    /// A guard that drops the connection if it is dropped before [`Armed::disarm`]: an
    /// attempt stopped mid-command (the shutdown drain, or its timeout) leaves the
    /// connection in a state nobody knows, so it is closed rather than reused, and nothing
    /// of that attempt stays open at the broker once every other user of it has finished.
    pub(super) fn armed(&self) -> Armed<'_, C> {
        Armed { link: self, armed: true }
    }
}

/// See [`Link::armed`].
pub(super) struct Armed<'a, C> {
    link: &'a Link<C>,
    armed: bool,
}

impl<C> Armed<'_, C> {
    /// The attempt ran to its end: keep the connection.
    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl<C> Drop for Armed<'_, C> {
    fn drop(&mut self) {
        // Without waiting: a connect in progress holds the lock, and then there is no
        // connection of this attempt's to drop anyway.
        if self.armed {
            if let Ok(mut state) = self.link.state.try_lock() {
                state.conn = None;
            }
        }
    }
}

/// Hides secrets in error texts: the password (from the URL or a file) is replaced by
/// `***` wherever a library quotes it, and URLs are shown through [`crate::redact::url`].
#[derive(Clone, Default)]
pub(super) struct Scrub {
    secrets: Vec<SecretString>,
}

impl Scrub {
    /// Hides the password of `url` and `password` (if any).
    pub(super) fn new(url: &str, password: Option<&SecretString>) -> Scrub {
        let mut secrets: Vec<SecretString> = password.into_iter().cloned().collect();
        if let Ok(u) = reqwest::Url::parse(url) {
            if let Some(p) = u.password().filter(|p| !p.is_empty()) {
                secrets.push(SecretString::from(p.to_string()));
                let decoded = percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned();
                secrets.push(SecretString::from(decoded));
            }
        }
        Scrub { secrets }
    }

    /// `text` without any secret.
    pub(super) fn text(&self, text: impl std::fmt::Display) -> String {
        let mut text = text.to_string();
        for s in &self.secrets {
            let s = s.expose_secret();
            if !s.is_empty() {
                text = text.replace(s, "***");
            }
        }
        text
    }
}

/// `url` with `password` put in (when the URL names none), for the client libraries.
pub(super) fn url_with_password(url: &str, password: Option<&SecretString>) -> Result<String, String> {
    let Some(password) = password else { return Ok(url.to_string()) };
    let mut parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if parsed.password().is_none() && parsed.set_password(Some(password.expose_secret())).is_err() {
        return Err("cannot take a password".into());
    }
    Ok(parsed.to_string())
}

/// `work`, ended as a transient failure once `timeout` has passed.
pub(super) async fn bounded<T>(
    timeout: Duration,
    what: &str,
    work: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| {
        Err(Failure::transient(format!("{what} timed out after {}", humantime::format_duration(timeout))))
    })
}

/// Connects each broker handler of `handlers` that runs on `node` once, at start, and logs a
/// WARN naming the handler for each that cannot publish yet (a wrong password, a missing
/// exchange or stream, a broker down), so that it shows before the first event needs it.
/// Each check is bounded by the handler's `timeout`; deliveries do not wait for it.
pub async fn check_at_start(handlers: std::collections::BTreeMap<String, super::HandlerConfig>, node: String) {
    use super::HandlerConfig;
    for (name, section) in handlers.iter().filter(|(_, c)| c.runs_on(&node)) {
        let outcome = match section {
            HandlerConfig::Amqp(c) => amqp::Amqp::new(name, c).map(|h| async move { h.probe().await }.boxed()),
            HandlerConfig::Nats(c) => nats::Nats::new(name, c).map(|h| async move { h.probe().await }.boxed()),
            HandlerConfig::Redis(c) => redis::Redis::new(name, c).map(|h| async move { h.probe().await }.boxed()),
            _ => continue,
        };
        let failure = match outcome {
            Ok(probe) => probe.await.err().map(|f| f.message),
            Err(e) => Some(e.to_string()),
        };
        match failure {
            Some(error) => tracing::warn!(
                handler = %name,
                %error,
                "Broker handler cannot publish yet; its deliveries wait and are retried on the usual schedule."
            ),
            None => tracing::info!(handler = %name, "Broker handler connected; its exchange or stream is there."),
        }
    }
}

/// A delivery's template fields, in [`crate::config::handlers::TEMPLATE_FIELDS`] order.
pub(super) fn fields(d: &Delivery) -> [String; 4] {
    [
        d.event_type.clone(),
        d.source.clone(),
        d.file_id.clone().unwrap_or_default(),
        d.sub_app_id.map(|id| id.to_string()).unwrap_or_default(),
    ]
}

/// The fields as string slices, for [`crate::config::handlers::Template::render`].
pub(super) fn field_refs(f: &[String; 4]) -> [&str; 4] {
    [f[0].as_str(), f[1].as_str(), f[2].as_str(), f[3].as_str()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }

    #[test]
    fn scrub_hides_the_url_password_and_the_file_password() {
        let file = SecretString::from("from-file".to_string());
        let scrub = Scrub::new("amqp://u:p%40ss@h:5672/", Some(&file));
        assert_eq!(scrub.text("x p%40ss y p@ss z from-file"), "x *** y *** z ***");
        assert_eq!(url_with_password("redis://h:1/", Some(&file)).unwrap(), "redis://:from-file@h:1/");
    }
}
