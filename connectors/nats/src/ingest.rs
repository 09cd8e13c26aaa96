//! One NATS message to the gateway: the subject says what the body is, the answer is what
//! `POST /api/publish` would have answered.
//!
//! - `<prefix>.publish`: an envelope, or a JSON array of them.
//! - `<prefix>.channel.<name>`: the body is the event's `data` (JSON, or text that becomes a
//!   JSON string), the event name is the `Herald-Event` header and `Herald-Key`, when
//!   present, is the idempotency key.

use async_nats::HeaderMap;
use herald_connector_api::{ChannelName, CompactJson, Envelope, FieldError, Handled, Ingest};
use serde_json::value::RawValue;

/// Header naming the event of a message on a channel subject.
pub const EVENT_HEADER: &str = "Herald-Event";
/// Header carrying the idempotency key of a message on a channel subject.
pub const KEY_HEADER: &str = "Herald-Key";

/// Routes NATS messages by subject to the shared [`Ingest`].
pub struct Subjects {
    ingest: Ingest,
    publish_subject: String,
    channel_prefix: String,
}

impl Subjects {
    /// Subjects under `prefix`, published through `ingest`.
    pub fn new(ingest: Ingest, prefix: &str) -> Self {
        Self {
            ingest,
            publish_subject: format!("{prefix}.publish"),
            channel_prefix: format!("{prefix}.channel."),
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
    pub async fn handle(&self, subject: &str, headers: Option<&HeaderMap>, body: &[u8]) -> Handled {
        let ingest = &self.ingest;
        let publish = async {
            if subject == self.publish_subject {
                ingest.publish_body(body).await
            } else if let Some(channel) = subject.strip_prefix(&self.channel_prefix) {
                match channel_envelope(channel, headers, body) {
                    Ok(envelope) => ingest.publish(envelope).await,
                    Err(e) => Handled::invalid(&e),
                }
            } else {
                let error =
                    FieldError::new("subject", format!("{subject} is not a Herald subject"));
                Handled::invalid(&error)
            }
        };
        ingest.handle(subject, body, publish).await
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
