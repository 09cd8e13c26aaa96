//! The publish envelope: one JSON shape for HTTP, NATS, AMQP and file tail.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::channel::ChannelName;

/// Longest event name accepted.
pub const MAX_EVENT_NAME_LEN: usize = 256;

/// A malformed envelope; `field` names where (`channels[2]`, `data`, `[3].event`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct EnvelopeError {
    /// Path of the offending field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl EnvelopeError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, with its field path put under `prefix` (e.g. the index in a batch).
    pub fn within(self, prefix: &str) -> Self {
        let field = if self.field.is_empty() || self.field == "." {
            prefix.to_owned()
        } else if self.field.starts_with('[') {
            format!("{prefix}{}", self.field)
        } else {
            format!("{prefix}.{}", self.field)
        };
        Self { field, ..self }
    }
}

/// What a backend asks Herald to deliver.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    /// Event name, e.g. `MESSAGE:NEW`.
    pub event: String,
    /// Ordinary (or personal, or `*`) channels to deliver on.
    #[serde(default)]
    pub channels: Vec<ChannelName>,
    /// Users whose personal channels get the event.
    #[serde(default)]
    pub users: Vec<String>,
    /// Deliver to every identified connection.
    #[serde(default)]
    pub broadcast: bool,
    /// The payload, kept as the JSON text it came in so fan-out never re-encodes it.
    #[serde(default = "json_null")]
    pub data: Box<RawValue>,
    /// Connection ids that must not get the event.
    #[serde(default)]
    pub except: Vec<String>,
    /// Idempotency key: the same key within the dedup window is accepted once.
    #[serde(default)]
    pub key: Option<String>,
}

fn json_null() -> Box<RawValue> {
    // "null" is valid JSON, so this cannot fail.
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

impl Envelope {
    /// Parses and validates one envelope from JSON text.
    ///
    /// # Errors
    /// An [`EnvelopeError`] naming the first bad field.
    pub fn from_json(json: &[u8]) -> Result<Self, EnvelopeError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let env: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let field = if field == "." {
                missing_field(&inner).unwrap_or_default()
            } else {
                field
            };
            EnvelopeError::new(field, strip_position(&inner))
        })?;
        env.validate()?;
        Ok(env)
    }

    /// Parses a body that is either one envelope or an array of them.
    ///
    /// # Errors
    /// An [`EnvelopeError`] naming the first bad field, indexed (`[2].event`) in an array.
    pub fn batch_from_json(json: &[u8]) -> Result<EnvelopeBatch, EnvelopeError> {
        let first = json.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'[') {
            return Self::from_json(json).map(EnvelopeBatch::One);
        }
        let items: Vec<&RawValue> = serde_json::from_slice(json)
            .map_err(|e| EnvelopeError::new("body", strip_position(&e)))?;
        items
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                Self::from_json(raw.get().as_bytes()).map_err(|e| e.within(&format!("[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(EnvelopeBatch::Many)
    }

    /// Checks what serde cannot: names, and that there is somewhere to deliver.
    ///
    /// # Errors
    /// An [`EnvelopeError`] naming the bad field.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        if self.event.is_empty() {
            return Err(EnvelopeError::new("event", "must not be empty"));
        }
        if self.event.len() > MAX_EVENT_NAME_LEN {
            return Err(EnvelopeError::new(
                "event",
                format!("longer than {MAX_EVENT_NAME_LEN} bytes"),
            ));
        }
        for (i, user) in self.users.iter().enumerate() {
            ChannelName::personal(user)
                .map_err(|e| EnvelopeError::new(format!("users[{i}]"), e.to_string()))?;
        }
        if self.channels.is_empty() && self.users.is_empty() && !self.broadcast {
            return Err(EnvelopeError::new(
                "channels",
                "at least one of channels, users or broadcast:true is required",
            ));
        }
        Ok(())
    }

    /// Every channel this envelope targets, each once, in the order given.
    pub fn targets(&self) -> Vec<ChannelName> {
        let mut out: Vec<ChannelName> =
            Vec::with_capacity(self.channels.len() + self.users.len() + 1);
        let personal = self
            .users
            .iter()
            .filter_map(|u| ChannelName::personal(u).ok());
        let broadcast = self.broadcast.then(ChannelName::broadcast);
        for name in self
            .channels
            .iter()
            .cloned()
            .chain(personal)
            .chain(broadcast)
        {
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }
}

/// A publish body: one envelope, or an array of them answered in order.
#[derive(Debug)]
pub enum EnvelopeBatch {
    /// A single envelope object.
    One(Envelope),
    /// A JSON array of envelopes.
    Many(Vec<Envelope>),
}

/// serde reports a missing field at the parent path; take the field name from the message.
fn missing_field(e: &serde_json::Error) -> Option<String> {
    let msg = e.to_string();
    let rest = msg.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// serde_json appends "at line 1 column 12"; the field path already says where.
fn strip_position(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_example() {
        let env = Envelope::from_json(
            br#"{"event":"MESSAGE:NEW","channels":["chat","chatlog"],"users":["xosofox"],"broadcast":false,
                "data":{"msg":"hi"},"except":["c_123"],"key":"k1"}"#,
        )
        .unwrap();
        assert_eq!(env.data.get(), r#"{"msg":"hi"}"#);
        let names: Vec<_> = env.targets().iter().map(|c| c.to_string()).collect();
        assert_eq!(names, ["chat", "chatlog", "@xosofox"]);
    }

    #[test]
    fn names_the_bad_field() {
        let err = |json: &str| Envelope::from_json(json.as_bytes()).unwrap_err().field;
        assert_eq!(err(r#"{"channels":["a"]}"#), "event");
        assert_eq!(
            err(r#"{"event":"e","channels":["ok","b a"]}"#),
            "channels[1]"
        );
        assert_eq!(err(r#"{"event":"e"}"#), "channels");
        assert_eq!(err(r#"{"event":"e","broadcast":"yes"}"#), "broadcast");
        assert_eq!(err(r#"{"event":"e","users":["a b"]}"#), "users[0]");
        assert_eq!(err(r#"{"event":7,"broadcast":true}"#), "event");
    }

    #[test]
    fn batch_errors_carry_the_index() {
        let err = Envelope::batch_from_json(
            br#"[{"event":"e","broadcast":true},{"event":"e","channels":[1]}]"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "[1].channels[0]");
        assert!(matches!(
            Envelope::batch_from_json(br#" [{"event":"e","broadcast":true}]"#).unwrap(),
            EnvelopeBatch::Many(v) if v.len() == 1
        ));
    }
}
