//! What every message-based source does with a body: publish it (an envelope, or a JSON array
//! of them), answer what `POST /api/publish` would answer, count it, and tell the source
//! whether to acknowledge, drop or redeliver it.

use std::sync::Arc;

use bytes::Bytes;

use crate::connector::ConnectorStatus;
use crate::envelope::{Envelope, EnvelopeBatch};
use crate::field::FieldError;
use crate::gateway::{Gateway, PublishError, PublishOutcome, Published};

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every envelope in it was accepted (or already had been): acknowledge.
    Accepted,
    /// It can never be accepted (malformed, too large): drop it (dead-letter it), counted.
    Rejected(&'static str),
    /// The gateway could not take it now (at capacity, shutting down): deliver it again.
    Retry(&'static str),
}

/// The answer for a requester, and the verdict for the source.
#[derive(Debug)]
pub struct Handled {
    /// JSON, as `POST /api/publish` would answer.
    pub answer: Bytes,
    /// What to tell the source.
    pub verdict: Verdict,
}

impl Handled {
    /// A message refused before any publish: the contract's `{"code","error"}`.
    pub fn refused(code: u16, error: &str, reason: &'static str) -> Self {
        Self {
            answer: to_json(&serde_json::json!({"code": code, "error": error})),
            verdict: Verdict::Rejected(reason),
        }
    }

    /// A malformed message: 4000 naming the field.
    pub fn invalid(error: &FieldError) -> Self {
        Self::refused(
            4000,
            &format!("{}: {}", error.field, error.message),
            "invalid",
        )
    }
}

/// Publishes message bodies through a gateway, counting into a connector's status.
pub struct Ingest {
    gateway: Arc<dyn Gateway>,
    status: Arc<ConnectorStatus>,
    max_body_size: usize,
}

impl Ingest {
    /// Publishes through `gateway`; bodies over `max_body_size` are refused (4009) like HTTP's.
    pub fn new(
        gateway: Arc<dyn Gateway>,
        status: Arc<ConnectorStatus>,
        max_body_size: usize,
    ) -> Self {
        Self {
            gateway,
            status,
            max_body_size,
        }
    }

    /// Counts a message in and, once `publish` made its [`Handled`], counts and logs a refusal.
    /// `what` names the message in the log (a subject, a queue). `publish` is polled only for
    /// a body within `max_body_size`.
    pub async fn handle(
        &self,
        what: &str,
        body: &[u8],
        publish: impl std::future::Future<Output = Handled>,
    ) -> Handled {
        self.status.received(1);
        let handled = if body.len() > self.max_body_size {
            let error = format!(
                "body: larger than max_body_size ({} bytes)",
                self.max_body_size
            );
            Handled::refused(4009, &error, "too_large")
        } else {
            publish.await
        };
        if let Verdict::Rejected(reason) | Verdict::Retry(reason) = handled.verdict {
            self.status.rejected(reason);
            tracing::warn!(
                connector = self.status.name(),
                from = what,
                reason,
                answer = %String::from_utf8_lossy(&handled.answer),
                "message not accepted"
            );
        }
        handled
    }

    /// Publishes a body that is an envelope or an array of them.
    pub async fn publish_body(&self, body: &[u8]) -> Handled {
        match Envelope::batch_from_json(body) {
            Ok(EnvelopeBatch::One(envelope)) => self.publish(envelope).await,
            Ok(EnvelopeBatch::Many(items)) => self.publish_batch(items).await,
            Err(e) => Handled::invalid(&e),
        }
    }

    /// Publishes one envelope.
    pub async fn publish(&self, envelope: Envelope) -> Handled {
        let result = self.gateway.publish(envelope).await;
        let verdict = self.verdict(&result);
        Handled {
            answer: to_json(&PublishOutcome::from(result)),
            verdict,
        }
    }

    async fn publish_batch(&self, items: Vec<Result<Envelope, FieldError>>) -> Handled {
        let mut verdict = Verdict::Accepted;
        let mut outcomes: Vec<PublishOutcome> = Vec::with_capacity(items.len());
        for item in items {
            let result = match item {
                Ok(envelope) => self.gateway.publish(envelope).await,
                Err(e) => Err(PublishError::from(e)),
            };
            // One item to retry makes the whole message come again (its accepted items are
            // answered from the idempotency window when they carry a `key`); else one
            // malformed item is reported, the rest stand.
            match (self.verdict(&result), verdict) {
                (retry @ Verdict::Retry(_), _) => verdict = retry,
                (rejected @ Verdict::Rejected(_), Verdict::Accepted) => verdict = rejected,
                _ => {}
            }
            outcomes.push(PublishOutcome::from(result));
        }
        Handled {
            answer: to_json(&outcomes),
            verdict,
        }
    }

    /// Counts the outcome (a repeated `key` as a duplicate) and says what to tell the source.
    fn verdict(&self, result: &Result<Published, PublishError>) -> Verdict {
        match result {
            Ok(published) => {
                if published.duplicate {
                    self.status.duplicate();
                } else {
                    self.status.accepted();
                }
                Verdict::Accepted
            }
            Err(PublishError::Invalid(_)) => Verdict::Rejected("invalid"),
            Err(PublishError::AtCapacity(_)) => Verdict::Retry("at_capacity"),
            Err(PublishError::ShuttingDown) => Verdict::Retry("shutting_down"),
            Err(PublishError::Unavailable(_)) => Verdict::Retry("cluster_unavailable"),
        }
    }
}

fn to_json(value: &impl serde::Serialize) -> Bytes {
    // Serializing these plain types cannot fail.
    serde_json::to_vec(value).unwrap_or_default().into()
}
