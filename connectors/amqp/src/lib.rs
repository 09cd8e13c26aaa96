//! Herald's RabbitMQ connector: backends publish envelopes to an exchange (`herald`) whose
//! durable queue (`herald.publish`) Herald consumes.
//!
//! A delivery is acknowledged only once the gateway accepted it; a malformed one is rejected
//! without requeue (to the dead-letter exchange when one is configured), counted and logged;
//! one the gateway cannot take now is requeued after a pause, at most `max_redeliveries`
//! times, then rejected too. A message with `reply_to` gets the publish result (what
//! `POST /api/publish` answers) with its `correlation_id`. After a connection is lost, the
//! broker requeues what was not acknowledged; a redelivery of an envelope already accepted is
//! recognised by its `key` (the gateway's idempotency window), else by the message id.
//!
//! Reconnecting is this crate's own outer loop with backoff and jitter, which declares the
//! exchange, queue and binding again and restores QoS and the consumer: lapin's built-in
//! recovery was reported to hang after broker restarts (amqp-rs/lapin#450), and its old
//! delivery tags are void after a recovery anyway.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herald_connector_api::{
    Activity, ActivityTransport, Connector, ConnectorContext, ConnectorError, ConnectorStatus,
    Health, Ingest, Verdict,
};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use rand::Rng;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// How long a message the gateway could not take waits before it is requeued.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Accepted deliveries acknowledged together (one `multiple` ack), at most; fewer when no
/// delivery is waiting.
const ACK_BATCH: usize = 64;

/// Message ids of recently accepted messages remembered for recognising redeliveries.
const REMEMBERED: usize = 1 << 16;

/// The `[amqp]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// The broker [default: amqp://guest:guest@127.0.0.1:5672/%2f].
    pub url: String,
    /// The durable topic exchange backends publish to, declared when missing [default: herald].
    pub exchange: String,
    /// The durable queue Herald consumes, declared when missing [default: herald.publish].
    pub queue: String,
    /// The binding key of the queue on the exchange [default: #, every message].
    pub routing_key: String,
    /// Deliveries in flight, unacknowledged [default: 256].
    pub prefetch: u16,
    /// Where rejected messages go (`x-dead-letter-exchange` of the queue); empty: dropped.
    pub dead_letter_exchange: String,
    /// Requeues of a message the gateway cannot take now, before it is rejected [default: 5].
    pub max_redeliveries: u32,
    /// The name Herald's connection shows in the broker [default: herald].
    pub connection_name: String,
    /// A durable topic exchange for client activity (routing key = the kind: `connect`,
    /// `join`…), declared when missing; empty: no activity out [default: empty].
    pub events_exchange: String,
    /// Activities waiting for the broker, at most; more are dropped and counted [default: 10000].
    pub events_queue: usize,
    /// A user's disconnect followed by a connect within this is reported once [default: 0s].
    #[serde(with = "humantime_serde")]
    pub events_debounce: Duration,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            exchange: "herald".into(),
            queue: "herald.publish".into(),
            routing_key: "#".into(),
            prefetch: 256,
            dead_letter_exchange: String::new(),
            max_redeliveries: 5,
            connection_name: "herald".into(),
            events_exchange: String::new(),
            events_queue: 10_000,
            events_debounce: Duration::ZERO,
        }
    }
}

impl AmqpConfig {
    /// Every problem with the values, each naming its key.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut problems = Vec::new();
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            problems.push(("amqp.url", "must be an amqp:// or amqps:// URL"));
        }
        if self.exchange.is_empty() || self.exchange.len() > 255 {
            problems.push(("amqp.exchange", "must be 1 to 255 bytes"));
        }
        if self.queue.is_empty() || self.queue.len() > 255 {
            problems.push(("amqp.queue", "must be 1 to 255 bytes"));
        }
        if self.prefetch == 0 {
            problems.push(("amqp.prefetch", "must be at least 1"));
        }
        if self.events_queue == 0 {
            problems.push(("amqp.events_queue", "must be at least 1"));
        }
        problems
    }
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct AmqpError {
    what: &'static str,
    source: lapin::Error,
}

fn step(what: &'static str) -> impl FnOnce(lapin::Error) -> AmqpError {
    move |source| AmqpError { what, source }
}

/// The connector: the config plus the body size bound it shares with the HTTP API.
pub struct AmqpConnector {
    config: AmqpConfig,
    max_body_size: usize,
}

impl AmqpConnector {
    /// A connector for `config`; bodies over `max_body_size` are refused like HTTP's.
    pub fn new(config: AmqpConfig, max_body_size: usize) -> Self {
        Self {
            config,
            max_body_size,
        }
    }
}

impl Connector for AmqpConnector {
    async fn run(self, cx: ConnectorContext) -> Result<(), ConnectorError> {
        let ingest = Ingest::new(cx.gateway.clone(), cx.status.clone(), self.max_body_size);
        let mut consumer = Consuming {
            config: &self.config,
            ingest,
            status: &cx.status,
            accepted: Recent::default(),
            attempts: HashMap::new(),
            unacked: None,
        };
        let mut attempt = 0u32;
        while !cx.shutdown.is_cancelled() {
            match consumer.session(&cx.shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    cx.status.lost(&e);
                    attempt += 1;
                    tokio::select! {
                        () = cx.shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff(attempt)) => {}
                    }
                }
            }
        }
        cx.status.set_health(Health::Stopped {
            reason: "shut down".into(),
        });
        Ok(())
    }
}

/// 100 ms doubling to 5 s, each cut to a random 50–100 %.
fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(100)
        .saturating_mul(1 << attempt.min(6))
        .min(Duration::from_secs(5));
    ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// What survives reconnects: the ids of accepted messages and requeue counts.
struct Consuming<'a> {
    config: &'a AmqpConfig,
    ingest: Ingest,
    status: &'a ConnectorStatus,
    accepted: Recent,
    attempts: HashMap<String, u32>,
    /// The newest accepted delivery not yet acknowledged, and how many are waiting with it.
    unacked: Option<(Acker, usize)>,
}

impl Consuming<'_> {
    /// Acknowledges every accepted delivery not acknowledged yet, in one `multiple` ack.
    async fn ack_accepted(&mut self) -> Result<(), AmqpError> {
        if let Some((acker, _)) = self.unacked.take() {
            acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .map_err(step("ack"))?;
        }
        Ok(())
    }

    /// Holds an accepted delivery's ack for the next [`Self::ack_accepted`].
    async fn accepted(&mut self, acker: Acker) -> Result<(), AmqpError> {
        let waiting = self.unacked.take().map_or(0, |(_, n)| n) + 1;
        self.unacked = Some((acker, waiting));
        if waiting >= ACK_BATCH {
            self.ack_accepted().await?;
        }
        Ok(())
    }
    /// One connection: declares, consumes until shutdown (`Ok`) or the connection fails.
    async fn session(&mut self, shutdown: &CancellationToken) -> Result<(), AmqpError> {
        let config = self.config;
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from(config.connection_name.as_str()));
        let connection = Connection::connect(&config.url, properties)
            .await
            .map_err(step("connect"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(step("open a channel"))?;
        declare(&channel, config).await?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(step("set prefetch"))?;
        let mut deliveries = channel
            .basic_consume(
                ShortString::from(config.queue.as_str()),
                ShortString::from(format!("{}-{}", config.connection_name, std::process::id())),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(step("consume"))?;
        self.status.set_health(Health::Connected);
        // Acks of a lost connection are void: their deliveries come again.
        self.unacked = None;
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    // What is not acknowledged goes back to the queue with the connection.
                    let _ = self.ack_accepted().await;
                    let _ = connection.close(200, "herald shutting down".into()).await;
                    return Ok(());
                }
                next = deliveries.next() => next,
                // Nothing is waiting: acknowledge what was accepted.
                () = std::future::ready(()), if self.unacked.is_some() => {
                    self.ack_accepted().await?;
                    continue;
                }
            };
            match next {
                Some(Ok(delivery)) => {
                    self.handle(&channel, delivery).await?;
                }
                Some(Err(e)) => return Err(step("receive")(e)),
                None => {
                    return Err(AmqpError {
                        what: "consume",
                        source: lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                            lapin::ChannelState::Closed,
                            "the consumer ended",
                        )),
                    })
                }
            }
        }
    }

    /// Publishes one delivery and acknowledges (with the next batch), rejects or requeues it.
    async fn handle(&mut self, channel: &Channel, delivery: Delivery) -> Result<(), AmqpError> {
        let props = &delivery.properties;
        let message_id = props.message_id().as_ref().map(ToString::to_string);
        if let Some(id) = &message_id {
            if delivery.redelivered && self.accepted.contains(id) {
                self.status.duplicate();
                return self.accepted(delivery.acker).await;
            }
        }
        let content_type = props.content_type().as_ref().map(ToString::to_string);
        let publish = async {
            match content_type.as_deref() {
                None | Some("application/json" | "text/json" | "text/plain") => {
                    self.ingest.publish_body(&delivery.data).await
                }
                Some(other) => herald_connector_api::Handled::refused(
                    4000,
                    &format!("content_type: {other} is not application/json"),
                    "content_type",
                ),
            }
        };
        let handled = self
            .ingest
            .handle(&self.config.queue, &delivery.data, publish)
            .await;
        if let (Some(reply_to), Verdict::Accepted | Verdict::Rejected(_)) =
            (props.reply_to(), handled.verdict)
        {
            let mut reply = BasicProperties::default().with_content_type("application/json".into());
            if let Some(correlation) = props.correlation_id() {
                reply = reply.with_correlation_id(correlation.clone());
            }
            let sent = channel
                .basic_publish(
                    ShortString::from(""),
                    reply_to.clone(),
                    BasicPublishOptions::default(),
                    &handled.answer,
                    reply,
                )
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "could not answer an AMQP request");
            }
        }
        // A redelivery has no count in a classic queue: keep our own, keyed by message id or body.
        let attempt_key = || {
            message_id
                .clone()
                .unwrap_or_else(|| fingerprint(&delivery.data))
        };
        match handled.verdict {
            Verdict::Accepted => {
                if let Some(id) = &message_id {
                    self.accepted.insert(id);
                }
                self.attempts.remove(&attempt_key());
                self.accepted(delivery.acker).await
            }
            Verdict::Rejected(_) => {
                self.ack_accepted().await?;
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                    .map(drop)
                    .map_err(step("reject"))
            }
            Verdict::Retry(_) => {
                self.ack_accepted().await?;
                let key = attempt_key();
                let attempts = self.attempts.entry(key.clone()).or_default();
                *attempts += 1;
                let requeue = *attempts <= self.config.max_redeliveries;
                if requeue {
                    tokio::time::sleep(RETRY_DELAY).await;
                } else {
                    self.attempts.remove(&key);
                    self.status.rejected("max_redeliveries");
                    tracing::error!(
                        "an AMQP message was not accepted after max_redeliveries attempts; rejected"
                    );
                }
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue })
                    .await
                    .map(drop)
                    .map_err(step("requeue"))
            }
        }
    }
}

/// Declares the exchange, the queue (with its dead-letter exchange) and the binding.
async fn declare(channel: &Channel, config: &AmqpConfig) -> Result<(), AmqpError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            ShortString::from(config.exchange.as_str()),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(step("declare the exchange"))?;
    let mut arguments = FieldTable::default();
    if !config.dead_letter_exchange.is_empty() {
        arguments.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(config.dead_letter_exchange.as_str())),
        );
    }
    channel
        .queue_declare(
            ShortString::from(config.queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .map_err(step("declare the queue"))?;
    channel
        .queue_bind(
            ShortString::from(config.queue.as_str()),
            ShortString::from(config.exchange.as_str()),
            ShortString::from(config.routing_key.as_str()),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(step("bind the queue"))
}

/// A short stand-in for a message without an id, to count its requeues.
fn fingerprint(body: &[u8]) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    body.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The last [`REMEMBERED`] accepted message ids.
#[derive(Default)]
struct Recent {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Recent {
    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: &str) {
        if self.set.insert(id.to_owned()) {
            self.order.push_back(id.to_owned());
            if self.order.len() > REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// Client activity published to an exchange, on one connection of its own that is opened
/// again (and the exchange declared again) after it fails.
pub struct AmqpEvents {
    config: AmqpConfig,
    status: Arc<ConnectorStatus>,
    channel: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl AmqpEvents {
    /// Connects now (a failure is reported in `status` and tried again at the next activity).
    pub async fn connect(config: &AmqpConfig, status: Arc<ConnectorStatus>) -> Self {
        let events = Self {
            config: config.clone(),
            status,
            channel: tokio::sync::Mutex::new(None),
        };
        let mut slot = events.channel.lock().await;
        if let Err(e) = events.open(&mut slot).await {
            events.status.lost(&e);
        }
        drop(slot);
        events
    }

    async fn open(&self, slot: &mut Option<(Connection, Channel)>) -> Result<(), AmqpError> {
        let name = format!("{}-events", self.config.connection_name);
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = Connection::connect(&self.config.url, properties)
            .await
            .map_err(step("connect"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(step("open a channel"))?;
        channel
            .exchange_declare(
                ShortString::from(self.config.events_exchange.as_str()),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(step("declare the events exchange"))?;
        *slot = Some((connection, channel));
        self.status.set_health(Health::Connected);
        Ok(())
    }
}

impl ActivityTransport for AmqpEvents {
    fn send<'a>(
        &'a self,
        activity: &'a Activity,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let body = serde_json::to_vec(activity).map_err(|e| e.to_string())?;
            let mut slot = self.channel.lock().await;
            if slot.is_none() {
                self.open(&mut slot).await.map_err(|e| {
                    self.status.lost(&e);
                    e.to_string()
                })?;
            }
            let Some((_, channel)) = slot.as_ref() else {
                return Err("no channel".into());
            };
            let properties =
                BasicProperties::default().with_content_type("application/json".into());
            let sent = channel
                .basic_publish(
                    ShortString::from(self.config.events_exchange.as_str()),
                    ShortString::from(activity.kind.as_str()),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await;
            if let Err(e) = sent {
                // Opened again at the next activity.
                *slot = None;
                self.status.lost(format!("publish: {e}"));
                return Err(e.to_string());
            }
            Ok(())
        })
    }
}
