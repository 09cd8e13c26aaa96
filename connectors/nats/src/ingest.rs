//! One NATS message to the gateway: the subject says what the body is, the answer is what
//! `POST /api/publish` would have answered.
//!
//! - `<prefix>.publish`: an envelope, or a JSON array of them.
//! - `<prefix>.channel.<name>`: the body is the event's `data` (JSON, or text that becomes a
//!   JSON string), the event name is the `Herald-Event` header and `Herald-Key`, when
//!   present, is the idempotency key.

use async_nats::HeaderMap;
use bytes::Bytes;
use herald_connector_api::{
    ChannelName, CompactJson, ConnectorStatus, Envelope, EnvelopeBatch, FieldError, Gateway,
    PublishError, PublishOutcome, Published,
};
use serde_json::value::RawValue;

/// Header naming the event of a message on a channel subject.
pub const EVENT_HEADER: &str = "Herald-Event";
/// Header carrying the idempotency key of a message on a channel subject.
pub const KEY_HEADER: &str = "Herald-Key";

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every envelope in it was accepted: acknowledge.
    Accepted,
    /// It can never be accepted (malformed, too large): acknowledge it away, counted.
    Rejected(&'static str),
    /// The gateway could not take it now (at capacity, shutting down): deliver it again.
    Retry(&'static str),
}

/// The answer for a request's reply subject, and the verdict for the source.
#[derive(Debug)]
pub struct Handled {
    /// JSON, as `POST /api/publish` would answer.
    pub answer: Bytes,
    /// What to tell the source.
    pub verdict: Verdict,
}

/// Turns NATS messages into publishes.
pub struct Ingest {
    gateway: std::sync::Arc<dyn Gateway>,
    status: std::sync::Arc<ConnectorStatus>,
    publish_subject: String,
    channel_prefix: String,
    max_body_size: usize,
}

impl Ingest {
    /// Publishes through `gateway` what arrives under `prefix`, counting into `status`.
    pub fn new(
        gateway: std::sync::Arc<dyn Gateway>,
        status: std::sync::Arc<ConnectorStatus>,
        prefix: &str,
        max_body_size: usize,
    ) -> Self {
        Self {
            gateway,
            status,
            publish_subject: format!("{prefix}.publish"),
            channel_prefix: format!("{prefix}.channel."),
            max_body_size,
        }
    }

    /// The subject envelopes arrive on.
    pub fn publish_subject(&self) -> &str {
        &self.publish_subject
    }

    /// The wildcard subject for channel messages.
    pub fn channel_wildcard(&self) -> String {
        format!("{}>", self.channel_prefix)
    }

    /// Handles one message and counts it.
    pub fn handle(&self, subject: &str, headers: Option<&HeaderMap>, body: &[u8]) -> Handled {
        self.status.received(1);
        let handled = self.publish(subject, headers, body);
        match handled.verdict {
            Verdict::Accepted => {}
            Verdict::Rejected(reason) | Verdict::Retry(reason) => {
                self.status.rejected(reason);
                tracing::warn!(
                    connector = self.status.name(),
                    subject,
                    reason,
                    answer = %String::from_utf8_lossy(&handled.answer),
                    "message not accepted"
                );
            }
        }
        handled
    }

    fn publish(&self, subject: &str, headers: Option<&HeaderMap>, body: &[u8]) -> Handled {
        if body.len() > self.max_body_size {
            let error = format!(
                "body: larger than max_body_size ({} bytes)",
                self.max_body_size
            );
            return refused(4009, &error, Verdict::Rejected("too_large"));
        }
        let envelope = if subject == self.publish_subject {
            match Envelope::batch_from_json(body) {
                Ok(EnvelopeBatch::One(envelope)) => envelope,
                Ok(EnvelopeBatch::Many(items)) => return self.publish_batch(items),
                Err(e) => return invalid(&e),
            }
        } else if let Some(channel) = subject.strip_prefix(&self.channel_prefix) {
            match channel_envelope(channel, headers, body) {
                Ok(envelope) => envelope,
                Err(e) => return invalid(&e),
            }
        } else {
            let error = FieldError::new("subject", format!("{subject} is not a Herald subject"));
            return invalid(&error);
        };
        let result = self.gateway.publish(envelope);
        let verdict = self.verdict(&result);
        Handled {
            answer: to_json(&PublishOutcome::from(result)),
            verdict,
        }
    }

    fn publish_batch(&self, items: Vec<Result<Envelope, FieldError>>) -> Handled {
        let mut verdict = Verdict::Accepted;
        let outcomes: Vec<PublishOutcome> = items
            .into_iter()
            .map(|item| {
                let result = item
                    .map_err(PublishError::from)
                    .and_then(|e| self.gateway.publish(e));
                // One item to retry makes the whole message come again (its accepted items
                // are answered from the idempotency window when they carry a `key`); else one
                // malformed item is reported, the rest stand.
                match (self.verdict(&result), verdict) {
                    (retry @ Verdict::Retry(_), _) => verdict = retry,
                    (rejected @ Verdict::Rejected(_), Verdict::Accepted) => verdict = rejected,
                    _ => {}
                }
                PublishOutcome::from(result)
            })
            .collect();
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
        }
    }
}

/// The envelope a channel subject's message stands for.
fn channel_envelope(
    channel: &str,
    headers: Option<&HeaderMap>,
    body: &[u8],
) -> Result<Envelope, FieldError> {
    let channel =
        ChannelName::parse(channel).map_err(|e| FieldError::new("subject", e.to_string()))?;
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let event = header(EVENT_HEADER)
        .ok_or_else(|| FieldError::new(EVENT_HEADER, "missing: name the event in this header"))?;
    let envelope = Envelope {
        event,
        channels: vec![channel],
        users: Vec::new(),
        broadcast: false,
        data: raw_data(body)?,
        except: Vec::new(),
        key: header(KEY_HEADER),
    };
    envelope.validate()?;
    Ok(envelope)
}

/// A channel message's body as `data`: JSON as it is, other UTF-8 text as a JSON string,
/// nothing as `null`.
fn raw_data(body: &[u8]) -> Result<CompactJson, FieldError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(CompactJson::null());
    }
    if let Ok(raw) = serde_json::from_slice::<Box<RawValue>>(body) {
        return Ok(CompactJson::new(raw));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| FieldError::new("data", "neither JSON nor UTF-8 text"))?;
    let quoted = serde_json::to_string(text).map_err(|e| FieldError::new("data", e.to_string()))?;
    RawValue::from_string(quoted)
        .map(CompactJson::new)
        .map_err(|e| FieldError::new("data", e.to_string()))
}

fn invalid(error: &FieldError) -> Handled {
    let message = format!("{}: {}", error.field, error.message);
    refused(4000, &message, Verdict::Rejected("invalid"))
}

fn refused(code: u16, error: &str, verdict: Verdict) -> Handled {
    Handled {
        answer: to_json(&serde_json::json!({"code": code, "error": error})),
        verdict,
    }
}

fn to_json(value: &impl serde::Serialize) -> Bytes {
    // Serializing these plain types cannot fail.
    serde_json::to_vec(value).unwrap_or_default().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_bodies_become_data() {
        assert_eq!(raw_data(b"").unwrap().get(), "null");
        assert_eq!(raw_data(b"{ \"a\" : 1 }").unwrap().get(), r#"{"a":1}"#);
        assert_eq!(
            raw_data(b"hello\nworld").unwrap().get(),
            r#""hello\nworld""#
        );
        assert!(raw_data(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn channel_messages_need_an_event_and_a_good_name() {
        let mut headers = HeaderMap::new();
        headers.insert(EVENT_HEADER, "MESSAGE:NEW");
        headers.insert(KEY_HEADER, "k1");
        let envelope = channel_envelope("chat", Some(&headers), b"1").unwrap();
        assert_eq!(
            (envelope.event.as_str(), envelope.key.as_deref()),
            ("MESSAGE:NEW", Some("k1"))
        );
        let missing = channel_envelope("chat", None, b"1").unwrap_err();
        assert_eq!(missing.field, EVENT_HEADER);
        let bad = channel_envelope("bad name!", Some(&headers), b"1").unwrap_err();
        assert_eq!(bad.field, "subject");
    }
}
