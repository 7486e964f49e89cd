//! `type = "amqp"`: publishes the event body to a RabbitMQ exchange (AMQP 0-9-1) with
//! `message_id` = the delivery's `webhook-id`, `content_type = application/json`, delivery
//! mode 2 (persistent) unless `persistent = false`, and the headers `x-vod-event-type`,
//! `x-vod-source` and `x-vod-sub-app-id`. Publishes are `mandatory` on a channel in confirm
//! mode: the attempt is done only on the broker's ack (for a persistent message to a
//! durable queue, RabbitMQ acks once the message is on disk). A message no queue takes is
//! returned by the broker: that is a permanent failure (the delivery is dead, and `deliveries
//! retry` sends it again once a queue is bound), never a silent drop. A nack (the broker
//! could not take it, or a queue at its length limit with `reject-publish`) is transient.
//!
//! One connection and one channel per handler, made on first use and again once either has
//! closed ([`super::Link`]); on connect the exchange is checked (a passive declare), so a
//! missing exchange is a clear error naming the key.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use super::{bounded, field_refs, fields, Link, Scrub};
use crate::config::handlers::{as_is, read_password, AmqpConfig, Template};
use crate::handler::{Delivery, Failure, Success};

/// An open connection and its confirm-mode channel.
struct Session {
    connection: Connection,
    channel: Channel,
}

impl Session {
    fn alive(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

/// A built RabbitMQ handler.
pub struct Amqp {
    name: String,
    /// The URL with the password from `password_file` put in: never shown.
    url: secrecy::SecretString,
    shown_url: String,
    exchange: String,
    routing_key: Template,
    persistent: bool,
    timeout: Duration,
    scrub: Scrub,
    link: Link<Arc<Session>>,
}

impl Amqp {
    /// Builds it from its section (no I/O: the connection is made on first use).
    pub(in crate::handler) fn new(name: &str, config: &AmqpConfig) -> anyhow::Result<Amqp> {
        let password = read_password(name, config.password_file.as_ref()).map_err(anyhow::Error::msg)?;
        let scrub = Scrub::new(&config.url, password.as_ref());
        let url = super::url_with_password(&config.url, password.as_ref())
            .map_err(|e| anyhow::anyhow!("handlers.{name}.url: {e}"))?;
        let routing_key =
            Template::parse(&config.routing_key).map_err(|e| anyhow::anyhow!("handlers.{name}.routing_key: {e}"))?;
        Ok(Amqp {
            name: name.to_string(),
            url: url.into(),
            shown_url: crate::redact::url(&config.url),
            exchange: config.exchange.clone(),
            routing_key,
            persistent: config.persistent,
            timeout: config.timeout,
            scrub,
            link: Link::new(),
        })
    }

    /// Connects (if not connected) and checks the exchange, so that `config check --online`
    /// and the start find a wrong URL, password or exchange.
    pub async fn probe(&self) -> Result<(), Failure> {
        bounded(self.timeout, "connecting", self.session()).await.map(drop)
    }

    async fn session(&self) -> Result<Arc<Session>, Failure> {
        self.link.get(|s| s.alive(), || self.connect()).await
    }

    async fn connect(&self) -> Result<Arc<Session>, Failure> {
        use secrecy::ExposeSecret as _;
        let properties = ConnectionProperties::default()
            .with_connection_name(concat!("vod-eventd/", env!("CARGO_PKG_VERSION")).into())
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current());
        let connection = Connection::connect(self.url.expose_secret(), properties).await.map_err(|e| {
            let auth = matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 403)
                || e.to_string().contains("ACCESS_REFUSED");
            let hint = if auth {
                format!(" (check the user and password in handlers.{0}.url or handlers.{0}.password_file)", self.name)
            } else {
                String::new()
            };
            Failure::transient(format!(
                "handlers.{}: connecting to {} failed: {}{hint}",
                self.name,
                self.shown_url,
                self.scrub.text(e)
            ))
        })?;
        let channel = connection.create_channel().await.map_err(|e| self.failure("opening a channel", e))?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| self.failure("confirm.select", e))?;
        if !self.exchange.is_empty() {
            let passive = ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() };
            channel
                .exchange_declare(&self.exchange, ExchangeKind::Direct, passive, FieldTable::default())
                .await
                .map_err(|e| {
                    Failure::transient(format!(
                        "handlers.{}.exchange: the exchange `{}` cannot be used: {}",
                        self.name,
                        self.exchange,
                        self.scrub.text(e)
                    ))
                })?;
        }
        Ok(Arc::new(Session { connection, channel }))
    }

    /// One attempt: publish and wait for the confirm.
    pub(in crate::handler) async fn handle(&self, d: &Delivery) -> Result<Success, Failure> {
        bounded(self.timeout, "publish", async {
            let session = self.session().await?;
            let values = fields(d);
            let routing_key = self.routing_key.render(field_refs(&values), as_is);
            let options = BasicPublishOptions { mandatory: true, immediate: false };
            let armed = self.link.armed();
            let published = session
                .channel
                .basic_publish(&self.exchange, &routing_key, options, d.body.as_bytes(), self.properties(d, &values[3]))
                .await;
            let confirmed = match published {
                Ok(pending) => pending.await.map_err(|e| self.failure("waiting for the confirm", e)),
                Err(e) => Err(self.failure("publish", e)),
            };
            armed.disarm();
            drop(session);
            let confirm = confirmed?;
            match confirm {
                Confirmation::Ack(None) => {
                    Ok(Success { status: None, excerpt: Some(format!("confirmed: {}/{routing_key}", self.exchange)) })
                }
                Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => Err(Failure::permanent(format!(
                    "unroutable: no queue takes routing key `{routing_key}` on exchange `{}` ({} {}); bind a queue, then `deliveries retry`",
                    self.exchange, returned.reply_code, returned.reply_text
                ))),
                Confirmation::Nack(None) => Err(Failure::transient("the broker nacked the message (not taken)")),
                Confirmation::NotRequested => Err(Failure::transient("no confirm on this channel")),
            }
        })
        .await
    }

    fn properties(&self, d: &Delivery, sub_app_id: &str) -> BasicProperties {
        let mut headers = FieldTable::default();
        let mut header = |name: &str, value: &str| {
            headers.insert(name.into(), AMQPValue::LongString(value.to_string().into()));
        };
        header("x-vod-event-type", &d.event_type);
        header("x-vod-source", &d.source);
        header("x-vod-sub-app-id", sub_app_id);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.as_secs());
        BasicProperties::default()
            .with_message_id(d.webhook_id.clone().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(if self.persistent { 2 } else { 1 })
            .with_app_id("vod-eventd".into())
            .with_type(d.event_type.clone().into())
            .with_timestamp(now)
            .with_headers(headers)
    }

    fn failure(&self, during: &str, e: lapin::Error) -> Failure {
        Failure::transient(format!("{during} failed: {}", self.scrub.text(e)))
    }
}
