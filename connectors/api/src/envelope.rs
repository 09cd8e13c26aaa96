//! The publish envelope: one JSON shape for HTTP, NATS, AMQP and file tail.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::channel::ChannelName;
use crate::compact::CompactJson;
use crate::field::{describe, parse_json, FieldError};

/// Longest event name accepted.
pub const MAX_EVENT_NAME_LEN: usize = 256;

/// Longest idempotency key accepted, in bytes: keys are remembered for the dedup window, so
/// their size is part of what the window costs.
pub const MAX_KEY_LEN: usize = 256;

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
    /// The payload as compact JSON text, so fan-out never re-encodes it and it can never
    /// carry a newline into a frame.
    #[serde(default)]
    pub data: CompactJson,
    /// Connection ids that must not get the event.
    #[serde(default)]
    pub except: Vec<String>,
    /// Idempotency key: the same key within the dedup window is accepted once.
    #[serde(default)]
    pub key: Option<String>,
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

    /// Parses a body that is either one envelope or an array of them. In an array each item
    /// is parsed on its own, so one bad envelope does not refuse the others.
    ///
    /// # Errors
    /// A [`FieldError`] naming the first bad field of a single envelope, or `body` when the
    /// text is not JSON at all.
    pub fn batch_from_json(json: &[u8]) -> Result<EnvelopeBatch, FieldError> {
        let first = json.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'[') {
            return Self::from_json(json).map(EnvelopeBatch::One);
        }
        let items: Vec<&RawValue> =
            serde_json::from_slice(json).map_err(|e| FieldError::new("body", describe(&e)))?;
        Ok(EnvelopeBatch::Many(
            items
                .iter()
                .map(|raw| Self::from_json(raw.get().as_bytes()))
                .collect(),
        ))
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
        if self.key.as_ref().is_some_and(|k| k.len() > MAX_KEY_LEN) {
            return Err(FieldError::new(
                "key",
                format!("longer than {MAX_KEY_LEN} bytes"),
            ));
        }
        if self.channels.is_empty() && self.users.is_empty() && !self.broadcast {
            return Err(FieldError::new(
                "channels",
                "at least one of channels, users or broadcast:true is required",
            ));
        }
        Ok(())
    }

    /// How many targets the envelope names (before duplicates are merged).
    pub fn target_count(&self) -> usize {
        self.channels.len() + self.users.len() + usize::from(self.broadcast)
    }

    /// Every channel this envelope targets, each once, in the order given. Linear in the
    /// number of targets: one envelope may name tens of thousands of users.
    pub fn targets(&self) -> Vec<ChannelName> {
        let mut seen: HashSet<ChannelName> = HashSet::with_capacity(self.target_count());
        let personal = self
            .users
            .iter()
            .filter_map(|u| ChannelName::personal(u).ok());
        let broadcast = self.broadcast.then(ChannelName::broadcast);
        self.channels
            .iter()
            .cloned()
            .chain(personal)
            .chain(broadcast)
            .filter(|name| seen.insert(name.clone()))
            .collect()
    }
}

/// A publish body: one envelope, or an array of them answered in order.
#[derive(Debug)]
pub enum EnvelopeBatch {
    /// A single envelope object.
    One(Envelope),
    /// A JSON array of envelopes, each parsed on its own.
    Many(Vec<Result<Envelope, FieldError>>),
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
        assert_eq!(err(r#"{"event":"e","users":["a\u0001b"]}"#), "users[0]");
        assert_eq!(err(r#"{"event":7,"broadcast":true}"#), "event");
        let long_key = format!(
            r#"{{"event":"e","broadcast":true,"key":"{}"}}"#,
            "k".repeat(257)
        );
        assert_eq!(err(&long_key), "key");
    }

    #[test]
    fn batch_items_are_parsed_one_by_one() {
        let EnvelopeBatch::Many(items) = Envelope::batch_from_json(
            br#" [{"event":"e","broadcast":true},{"event":"e","channels":[1]}]"#,
        )
        .unwrap() else {
            panic!("an array is a batch")
        };
        assert!(items[0].is_ok());
        assert_eq!(items[1].as_ref().unwrap_err().field, "channels[0]");
        assert_eq!(Envelope::batch_from_json(b"[1,").unwrap_err().field, "body");
    }

    #[test]
    fn pretty_printed_data_is_compacted() {
        let env = Envelope::from_json(
            b"{\"event\":\"e\",\"channels\":[\"c\"],\"data\":[\n{\"op\":\"disconnect\",\"code\":4101}\n]}",
        )
        .unwrap();
        assert_eq!(env.data.get(), r#"[{"op":"disconnect","code":4101}]"#);
    }

    #[test]
    fn targets_merge_duplicates_in_order() {
        let env = Envelope::from_json(
            br#"{"event":"e","channels":["b","a","b","@u"],"users":["u","v","u"],"broadcast":true}"#,
        )
        .unwrap();
        let names: Vec<_> = env.targets().iter().map(|c| c.to_string()).collect();
        assert_eq!(names, ["b", "a", "@u", "@v", "*"]);
        assert_eq!(env.target_count(), 8);
    }
}
