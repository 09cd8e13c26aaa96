//! JetStream: at-least-once in, exactly once out.
//!
//! The stream (created when missing) captures `<prefix>.publish` and `<prefix>.channel.>`; a
//! durable pull consumer reads it and a message is acknowledged only once the gateway
//! accepted it, so a Herald that stops or crashes resumes where the consumer stands. A
//! message that can never be accepted is terminated (counted, logged); one the gateway
//! cannot take now is delivered again after a delay, up to `max_deliver` times. A
//! redelivery of a message already accepted (its ack lost with a broker restart) is
//! recognised by its stream sequence and acknowledged without publishing it again;
//! envelopes with a `key` are also caught by the gateway's idempotency window.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind, Message};
use async_nats::Client;
use futures_util::StreamExt;
use herald_connector_api::ConnectorStatus;
use tokio_util::sync::CancellationToken;

use herald_connector_api::Verdict;

use crate::ingest::Subjects;
use crate::{Backoff, NatsConfig, NatsError, Retention};

/// Stream sequences of recently accepted messages remembered for recognising redeliveries.
const REMEMBERED: usize = 1 << 17;

/// How long a message the gateway could not take waits before it comes again.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Consumes the stream until `shutdown`, setting it up again whenever it is lost.
pub async fn run(
    client: &Client,
    config: &NatsConfig,
    ingest: &Subjects,
    status: &ConnectorStatus,
    shutdown: &CancellationToken,
) {
    let context = jetstream::new(client.clone());
    let mut accepted = Recent::default();
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        let messages = match consumer(&context, config, ingest).await {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match messages {
            Ok(mut messages) => {
                backoff = Backoff::default();
                loop {
                    let next = tokio::select! {
                        () = shutdown.cancelled() => return,
                        next = messages.next() => next,
                    };
                    match next {
                        Some(Ok(message)) => {
                            handle(&message, config, ingest, status, &mut accepted).await;
                        }
                        // Missed heartbeats and the like: the stream carries on by itself.
                        Some(Err(e)) => tracing::debug!(error = %e, "jetstream consumer"),
                        None => break,
                    }
                }
            }
            Err(e) => {
                status.lost(format!("jetstream: {e}"));
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

async fn consumer(
    context: &jetstream::Context,
    config: &NatsConfig,
    ingest: &Subjects,
) -> Result<jetstream::consumer::Consumer<pull::Config>, NatsError> {
    let stream = context
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![
                ingest.publish_subject().to_owned(),
                ingest.channel_wildcard(),
            ],
            retention: match config.retention {
                Retention::Limits => RetentionPolicy::Limits,
                Retention::Workqueue => RetentionPolicy::WorkQueue,
                Retention::Interest => RetentionPolicy::Interest,
            },
            max_messages: config.stream_max_messages,
            max_bytes: config.stream_max_bytes,
            max_age: config.stream_max_age,
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| NatsError::Stream(e.to_string()))?;
    stream
        .get_or_create_consumer(
            &config.consumer,
            pull::Config {
                durable_name: Some(config.consumer.clone()),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_deliver: config.max_deliver,
                max_ack_pending: config.max_ack_pending,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| NatsError::Stream(e.to_string()))
}

async fn handle(
    message: &Message,
    config: &NatsConfig,
    ingest: &Subjects,
    status: &ConnectorStatus,
    accepted: &mut Recent,
) {
    let (sequence, delivered) = match message.info() {
        Ok(info) => (info.stream_sequence, info.delivered),
        Err(_) => (0, 1),
    };
    if delivered > 1 && accepted.contains(sequence) {
        status.duplicate();
        ack(message, AckKind::Ack).await;
        return;
    }
    let handled = ingest
        .handle(
            message.subject.as_str(),
            message.headers.as_ref(),
            &message.payload,
        )
        .await;
    let kind = match handled.verdict {
        Verdict::Accepted => {
            accepted.insert(sequence);
            AckKind::Ack
        }
        Verdict::Rejected(_) => AckKind::Term,
        Verdict::Retry(_) if delivered >= config.max_deliver => {
            status.rejected("max_deliver");
            tracing::error!(
                sequence,
                delivered,
                "jetstream message not accepted after max_deliver attempts; dropped"
            );
            AckKind::Term
        }
        Verdict::Retry(_) => AckKind::Nak(Some(RETRY_DELAY)),
    };
    ack(message, kind).await;
}

async fn ack(message: &Message, kind: AckKind) {
    // A lost ack means a redelivery, which `Recent` recognises.
    if let Err(e) = message.ack_with(kind).await {
        tracing::debug!(error = %e, "jetstream ack not sent");
    }
}

/// The last [`REMEMBERED`] accepted stream sequences.
#[derive(Default)]
struct Recent {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Recent {
    fn contains(&self, sequence: u64) -> bool {
        self.set.contains(&sequence)
    }

    fn insert(&mut self, sequence: u64) {
        if self.set.insert(sequence) {
            self.order.push_back(sequence);
            if self.order.len() > REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}
