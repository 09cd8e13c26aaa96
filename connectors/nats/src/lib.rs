//! Herald's NATS connector: backends publish envelopes through NATS core or JetStream.
//!
//! Subjects under the configured prefix (`herald` by default):
//! - `herald.publish`: an envelope, or a JSON array of them;
//! - `herald.channel.<name>`: the body is the event's data, `Herald-Event` names the event,
//!   `Herald-Key` (optional) is the idempotency key.
//!
//! In core mode a request is answered what `POST /api/publish` answers. In JetStream mode
//! (`jetstream = true`) a durable consumer reads the stream and acknowledges only what Herald
//! accepted, so nothing is lost across broker or Herald restarts. The client reconnects by
//! itself with backoff and jitter; while it is disconnected the connector reports
//! `reconnecting since …` and `/readyz` answers 503 naming it.
//!
//! # Layout
//! - [`ingest`]: one message to the gateway, and the answer.
//! - [`core_nats`]: plain subscriptions, request/reply.
//! - [`jetstream`]: the stream, the durable consumer, acks and redeliveries.
//! - [`outbound`]: clients' `rpc` as NATS requests; client activity published.

pub mod core_nats;
pub mod ingest;
pub mod jetstream;
pub mod outbound;

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use herald_connector_api::{
    Connector, ConnectorContext, ConnectorError, ConnectorStatus, Health, Ingest,
};
use rand::Rng;
use serde::Deserialize;

use ingest::Subjects;

/// How long shutdown waits for acknowledgements and replies to reach the broker.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The `[nats]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated; credentials may be in the URL [default: nats://127.0.0.1:4222].
    pub url: String,
    /// Subject prefix: `<prefix>.publish`, `<prefix>.channel.<name>` [default: herald].
    pub prefix: String,
    /// Read through a JetStream durable consumer instead of plain subscriptions [default: false].
    pub jetstream: bool,
    /// The JetStream stream, created when missing [default: HERALD].
    pub stream: String,
    /// The durable consumer's name [default: herald].
    pub consumer: String,
    /// Deliveries of one message before it is given up (logged, counted) [default: 5].
    pub max_deliver: i64,
    /// How long the broker waits for an ack before delivering again [default: 30s].
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Messages delivered and not yet acknowledged, at most [default: 10000].
    pub max_ack_pending: i64,
    /// The stream's retention: `limits`, `workqueue` or `interest` [default: limits].
    pub retention: Retention,
    /// Messages the stream keeps, -1 for no limit [default: 1000000].
    pub stream_max_messages: i64,
    /// Bytes the stream keeps, -1 for no limit [default: 1 GiB].
    pub stream_max_bytes: i64,
    /// How long the stream keeps a message [default: 24h].
    #[serde(with = "humantime_serde")]
    pub stream_max_age: Duration,
    /// Publish client activity on `<prefix>.events.<kind>` [default: false].
    pub events: bool,
    /// A user's disconnect followed by a connect within this is reported once, as the
    /// connect; 0 reports both [default: 0s].
    #[serde(with = "humantime_serde")]
    pub events_debounce: Duration,
    /// Activities waiting to be published, at most; more are dropped and counted [default: 10000].
    pub events_queue: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "herald".into(),
            jetstream: false,
            stream: "HERALD".into(),
            consumer: "herald".into(),
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            retention: Retention::Limits,
            stream_max_messages: 1_000_000,
            stream_max_bytes: 1 << 30,
            stream_max_age: Duration::from_secs(24 * 3600),
            events: false,
            events_debounce: Duration::ZERO,
            events_queue: 10_000,
        }
    }
}

/// When the stream lets go of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// By the stream's limits (other consumers may read it too).
    Limits,
    /// Once acknowledged.
    Workqueue,
    /// Once every consumer acknowledged it.
    Interest,
}

impl NatsConfig {
    /// Every problem with the values, each naming its key.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let token_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        };
        let mut problems = Vec::new();
        if self.url.trim().is_empty() {
            problems.push(("nats.url", "must name a server"));
        }
        if self.prefix.is_empty() || !self.prefix.split('.').all(token_ok) {
            problems.push((
                "nats.prefix",
                "must be dot-separated letters, digits, _ or -",
            ));
        }
        if !token_ok(&self.stream) {
            problems.push(("nats.stream", "must be letters, digits, _ or -"));
        }
        if !token_ok(&self.consumer) {
            problems.push(("nats.consumer", "must be letters, digits, _ or -"));
        }
        if self.max_deliver < 1 {
            problems.push(("nats.max_deliver", "must be at least 1"));
        }
        if self.ack_wait < Duration::from_secs(1) {
            problems.push(("nats.ack_wait", "must be at least 1s"));
        }
        if self.max_ack_pending < 1 {
            problems.push(("nats.max_ack_pending", "must be at least 1"));
        }
        if self.events_queue < 1 {
            problems.push(("nats.events_queue", "must be at least 1"));
        }
        problems
    }
}

/// Why the connector could not consume.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The client could not be set up.
    #[error("connect: {0}")]
    Connect(String),
    /// A subscription failed.
    #[error("subscribe: {0}")]
    Subscribe(String),
    /// The stream or consumer could not be set up.
    #[error("stream: {0}")]
    Stream(String),
}

/// The connector: the config plus the body size bound it shares with the HTTP API.
pub struct NatsConnector {
    config: NatsConfig,
    max_body_size: usize,
}

impl NatsConnector {
    /// A connector for `config`; bodies over `max_body_size` are refused like HTTP's.
    pub fn new(config: NatsConfig, max_body_size: usize) -> Self {
        Self {
            config,
            max_body_size,
        }
    }
}

impl Connector for NatsConnector {
    async fn run(self, cx: ConnectorContext) -> Result<(), ConnectorError> {
        let status = cx.status.clone();
        let client = connect(&self.config.url, status.clone())
            .await
            .map_err(|e| ConnectorError::Source {
                what: format!("nats connect to {}", self.config.url),
                source: Box::new(e),
            })?;
        let ingest = Subjects::new(
            Ingest::new(cx.gateway.clone(), status.clone(), self.max_body_size),
            &self.config.prefix,
        );
        let result = if self.config.jetstream {
            jetstream::run(&client, &self.config, &ingest, &status, &cx.shutdown).await;
            Ok(())
        } else {
            core_nats::run(&client, &ingest, &cx.shutdown).await
        };
        if tokio::time::timeout(FLUSH_TIMEOUT, client.flush())
            .await
            .is_err()
        {
            tracing::warn!("nats: acknowledgements not flushed within {FLUSH_TIMEOUT:?}");
        }
        status.set_health(Health::Stopped {
            reason: "shut down".into(),
        });
        result.map_err(|e| ConnectorError::Source {
            what: "nats".into(),
            source: Box::new(e),
        })
    }
}

/// A client for `url` that connects (and reconnects) by itself, reporting into `status`.
///
/// # Errors
/// [`NatsError::Connect`] when the URL or options are unusable; an unreachable server is
/// not an error (the client keeps trying, and `status` says so).
pub async fn connect(url: &str, status: Arc<ConnectorStatus>) -> Result<Client, NatsError> {
    ConnectOptions::new()
        .name("herald")
        .retry_on_initial_connect()
        .reconnect_delay_callback(Backoff::delay)
        .event_callback(move |event| {
            let status = status.clone();
            async move {
                match event {
                    Event::Connected => status.set_health(Health::Connected),
                    Event::Disconnected => status.lost("disconnected"),
                    Event::SlowConsumer(_) => {
                        status.rejected("slow_consumer");
                        tracing::warn!(
                            connector = status.name(),
                            "herald reads NATS too slowly: the client dropped messages"
                        );
                    }
                    other => tracing::info!(connector = status.name(), "nats: {other}"),
                }
            }
        })
        .connect(servers(url))
        .await
        .map_err(|e| NatsError::Connect(e.to_string()))
}

/// The servers of a comma-separated URL list: the client itself reads one URL per string.
fn servers(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Reconnect delays: exponential from 100 ms to 5 s, each cut to a random 50–100 %, so a fleet
/// of nodes does not reconnect in step.
#[derive(Debug, Default)]
pub struct Backoff {
    attempts: usize,
}

impl Backoff {
    /// The delay before attempt `attempts + 1`.
    pub fn delay(attempts: usize) -> Duration {
        let ceiling = Duration::from_millis(100)
            .saturating_mul(1 << attempts.min(6))
            .min(Duration::from_secs(5));
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// The next delay, counting the attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts += 1;
        Self::delay(self.attempts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_url_names_every_server() {
        assert_eq!(
            servers("nats://a:4222, nats://b:4223,,nats://c:4224"),
            ["nats://a:4222", "nats://b:4223", "nats://c:4224"]
        );
    }
}
