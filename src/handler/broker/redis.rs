//! `type = "redis"`: `XADD <stream> [MAXLEN ~ n] * id <webhook-id> type <eventType> source
//! <source> sub_app_id <app or empty> body <event body>`. The attempt is done when `XADD`
//! returns the entry id; that write survives a Redis crash only with `appendonly yes` (and
//! `appendfsync always` for every write, `everysec` for all but the last second), which is
//! the operator's to set. A repeat (after a daemon crash between `XADD` and the record of
//! its outcome) is a second entry with the same `id`: consumers deduplicate on it.
//!
//! The connection is redis-rs's tokio `ConnectionManager`, which reconnects by itself once
//! made; [`super::Link`] makes it, spacing the tries while Redis is down. An `XADD` stopped
//! before its answer (the drain, the timeout) drops the connection ([`super::Link::armed`]),
//! so it is closed once no other attempt uses it. Errors are
//! transient except a wrong key type (`WRONGTYPE`: the stream key holds something else)
//! and a missing ACL permission (`NOPERM`), which retrying cannot fix.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{ErrorKind, RedisError, ServerErrorKind};

use super::{bounded, field_refs, fields, Link, Scrub};
use crate::config::handlers::{as_is, read_password, RedisConfig, Template};
use crate::handler::{Delivery, Failure, Success};

/// Reconnects the manager tries by itself before an attempt sees the failure.
const MANAGER_RETRIES: usize = 2;

/// A built Redis Streams handler.
pub struct Redis {
    name: String,
    client: ::redis::Client,
    stream: Template,
    maxlen: Option<u64>,
    timeout: Duration,
    scrub: Scrub,
    shown_url: String,
    link: Link<ConnectionManager>,
}

impl Redis {
    /// Builds it from its section (no I/O: the connection is made on first use).
    pub(in crate::handler) fn new(name: &str, config: &RedisConfig) -> anyhow::Result<Redis> {
        let password = read_password(name, config.password_file.as_ref()).map_err(anyhow::Error::msg)?;
        let scrub = Scrub::new(&config.url, password.as_ref());
        let url = super::url_with_password(&config.url, password.as_ref())
            .map_err(|e| anyhow::anyhow!("handlers.{name}.url: {e}"))?;
        let client = ::redis::Client::open(url.as_str())
            .map_err(|e| anyhow::anyhow!("handlers.{name}.url: {}", scrub.text(e)))?;
        let stream = Template::parse(&config.stream).map_err(|e| anyhow::anyhow!("handlers.{name}.stream: {e}"))?;
        Ok(Redis {
            name: name.to_string(),
            client,
            stream,
            maxlen: config.maxlen,
            timeout: config.timeout,
            scrub,
            shown_url: crate::redact::url(&config.url),
            link: Link::new(),
        })
    }

    /// Connects (if not connected), so that `config check --online` and the start find a
    /// wrong URL or password.
    pub async fn probe(&self) -> Result<(), Failure> {
        bounded(self.timeout, "connecting", async {
            let mut conn = self.connection().await?;
            let _: String = ::redis::cmd("PING").query_async(&mut conn).await.map_err(|e| self.failure("PING", e))?;
            Ok(())
        })
        .await
    }

    async fn connection(&self) -> Result<ConnectionManager, Failure> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(MANAGER_RETRIES)
            .set_max_delay(Duration::from_secs(2));
        self.link
            .get(
                |_| true,
                || async {
                    ConnectionManager::new_with_config(self.client.clone(), config)
                        .await
                        .map_err(|e| self.failure(&format!("connecting to {}", self.shown_url), e))
                },
            )
            .await
    }

    /// One attempt: `XADD`.
    pub(in crate::handler) async fn handle(&self, d: &Delivery) -> Result<Success, Failure> {
        bounded(self.timeout, "XADD", async {
            let mut conn = self.connection().await?;
            let values = fields(d);
            let key = self.stream.render(field_refs(&values), as_is);
            let mut cmd = ::redis::cmd("XADD");
            cmd.arg(&key);
            if let Some(n) = self.maxlen {
                cmd.arg("MAXLEN").arg("~").arg(n);
            }
            cmd.arg("*")
                .arg("id")
                .arg(&d.webhook_id)
                .arg("type")
                .arg(&d.event_type)
                .arg("source")
                .arg(&d.source)
                .arg("sub_app_id")
                .arg(&values[3])
                .arg("body")
                .arg(d.body.as_bytes());
            let armed = self.link.armed();
            let outcome: Result<String, _> = cmd.query_async(&mut conn).await;
            armed.disarm();
            let entry = outcome.map_err(|e| self.failure("XADD", e))?;
            Ok(Success { status: None, excerpt: Some(format!("{key} {entry}")) })
        })
        .await
    }

    fn failure(&self, during: &str, e: RedisError) -> Failure {
        let permanent = matches!(e.kind(), ErrorKind::Server(ServerErrorKind::NoPerm)) || e.code() == Some("WRONGTYPE");
        let hint = if matches!(e.kind(), ErrorKind::AuthenticationFailed)
            || e.code().is_some_and(|c| c == "WRONGPASS" || c == "NOAUTH")
        {
            format!(" (check the password in handlers.{}.url or handlers.{}.password_file)", self.name, self.name)
        } else {
            String::new()
        };
        let message = format!("handlers.{}: {during} failed: {}{hint}", self.name, self.scrub.text(e));
        if permanent {
            Failure::permanent(message)
        } else {
            Failure::transient(message)
        }
    }
}
