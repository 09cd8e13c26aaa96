//! The publish envelope: one JSON shape for HTTP, NATS, AMQP and file tail.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::channel::ChannelName;
use crate::field::{describe, parse_json, FieldError};

/// Longest event name accepted.
pub const MAX_EVENT_NAME_LEN: usize = 256;

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
    /// A [`FieldError`] naming the first bad field.
    pub fn from_json(json: &[u8]) -> Result<Self, FieldError> {
        let env: Self = parse_json(json)?;
        env.validate()?;
        Ok(env)
    }

    /// Parses a body that is either one envelope or an array of them.
    ///
    /// # Errors
    /// A [`FieldError`] naming the first bad field, indexed (`[2].event`) in an array.
    pub fn batch_from_json(json: &[u8]) -> Result<EnvelopeBatch, FieldError> {
        let first = json.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'[') {
            return Self::from_json(json).map(EnvelopeBatch::One);
        }
        let items: Vec<&RawValue> =
            serde_json::from_slice(json).map_err(|e| FieldError::new("body", describe(&e)))?;
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
    /// A [`FieldError`] naming the bad field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.event.is_empty() {
            return Err(FieldError::new("event", "must not be empty"));
        }
        if self.event.len() > MAX_EVENT_NAME_LEN {
            return Err(FieldError::new(
                "event",
                format!("longer than {MAX_EVENT_NAME_LEN} bytes"),
            ));
        }
        for (i, user) in self.users.iter().enumerate() {
            ChannelName::personal(user)
                .map_err(|e| FieldError::new(format!("users[{i}]"), e.to_string()))?;
        }
        if self.channels.is_empty() && self.users.is_empty() && !self.broadcast {
            return Err(FieldError::new(
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
