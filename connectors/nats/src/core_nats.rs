//! NATS core: at-most-once, like the broker itself. A message published while Herald is
//! disconnected is lost by NATS; use JetStream when that matters. A request (a message with a
//! reply subject) is answered what `POST /api/publish` would answer, errors included.

use async_nats::Client;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::ingest::Subjects;
use crate::NatsError;

/// The queue group of every Herald node's subscriptions: several nodes (a cluster) share
/// the messages, each taken by one of them, instead of each publishing it again.
const QUEUE_GROUP: &str = "herald";

/// Consumes `<prefix>.publish` and `<prefix>.channel.>` until `shutdown`.
pub async fn run(
    client: &Client,
    ingest: &Subjects,
    shutdown: &CancellationToken,
) -> Result<(), NatsError> {
    let publish = client
        .queue_subscribe(ingest.publish_subject().to_owned(), QUEUE_GROUP.into())
        .await
        .map_err(|e| NatsError::Subscribe(e.to_string()))?;
    let channels = client
        .queue_subscribe(ingest.channel_wildcard(), QUEUE_GROUP.into())
        .await
        .map_err(|e| NatsError::Subscribe(e.to_string()))?;
    let mut messages = futures_util::stream::select(publish, channels);
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = messages.next() => message,
        };
        let Some(message) = message else { break };
        let handled = ingest
            .handle(
                message.subject.as_str(),
                message.headers.as_ref(),
                &message.payload,
            )
            .await;
        if let Some(reply) = message.reply {
            if let Err(e) = client.publish(reply, handled.answer).await {
                tracing::warn!(error = %e, "could not answer a NATS request");
            }
        }
    }
    Ok(())
}
