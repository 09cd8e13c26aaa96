//! An event serialized once per publish; frames differ per recipient only in `via`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use herald_connector_api::{ChannelName, CompactJson};

/// Bytes reserved for a frame's `via` and closing braces: one channel name and offset.
const VIA_ALLOWANCE: usize = 48;

/// Who published an event from a client connection.
#[derive(Debug, Clone, Copy)]
pub struct From<'a> {
    /// Publishing user.
    pub user: &'a str,
    /// Publishing connection.
    pub conn: &'a str,
}

/// One published event: everything of its frame but `via`, as JSON text.
#[derive(Debug)]
pub struct EventBody {
    /// UUIDv7 of the event.
    pub id: String,
    /// The event's name.
    pub name: Arc<str>,
    /// `{"op":"event","event":…,"data":…,"id":…,"ts":…[,"from":…]` without the closing brace.
    prefix: Bytes,
}

impl EventBody {
    /// Serializes an event once; `data` is copied as its compact JSON text, so the frame is one
    /// line whatever the payload's formatting was.
    pub fn new(event: &str, data: &CompactJson, from: Option<From<'_>>) -> Self {
        Self::stored(new_event_id(), now_ms(), event, data, from)
    }

    /// An event whose id and time were given when it was published (on another node).
    pub fn stored(
        id: String,
        ts: u64,
        event: &str,
        data: &CompactJson,
        from: Option<From<'_>>,
    ) -> Self {
        let mut out = Vec::with_capacity(64 + event.len() + data.get().len() + id.len());
        out.extend_from_slice(br#"{"op":"event","event":"#);
        push_json_str(&mut out, event);
        out.extend_from_slice(br#","data":"#);
        out.extend_from_slice(data.get().as_bytes());
        out.extend_from_slice(br#","id":""#);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(br#"","ts":"#);
        out.extend_from_slice(ts.to_string().as_bytes());
        if let Some(from) = from {
            out.extend_from_slice(br#","from":{"user":"#);
            push_json_str(&mut out, from.user);
            out.extend_from_slice(br#","conn":"#);
            push_json_str(&mut out, from.conn);
            out.push(b'}');
        }
        Self {
            id,
            name: Arc::from(event),
            prefix: Bytes::from(out),
        }
    }

    /// What this event weighs in a history, in bytes: its shared text plus a frame's `via`.
    pub fn weight(&self) -> usize {
        self.prefix.len() + VIA_ALLOWANCE
    }

    /// The complete event frame for a recipient that matched through `via`.
    pub fn frame<'a>(&self, via: impl IntoIterator<Item = (&'a ChannelName, u64)>) -> Bytes {
        let mut out = BytesMut::with_capacity(self.prefix.len() + VIA_ALLOWANCE);
        out.put_slice(&self.prefix);
        out.put_slice(br#","via":{"#);
        for (i, (channel, offset)) in via.into_iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            let mut name = Vec::with_capacity(channel.as_str().len() + 2);
            push_json_str(&mut name, channel.as_str());
            out.put_slice(&name);
            out.put_u8(b':');
            out.put_slice(offset.to_string().as_bytes());
        }
        out.put_slice(b"}}");
        out.freeze()
    }
}

/// A new event id: a UUIDv7, so ids sort by time.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Milliseconds since the Unix epoch, an event's `ts`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_valid_json_with_via() {
        let data: CompactJson = serde_json::from_str("{\"msg\": \"hi \\\"there\\\"\"}").unwrap();
        let body = EventBody::new(
            "MESSAGE:\"NEW\"",
            &data,
            Some(From {
                user: "al\nice",
                conn: "c_1",
            }),
        );
        let chat = ChannelName::parse("chat").unwrap();
        let alice = ChannelName::parse("@alice").unwrap();
        let frame = body.frame([(&chat, 42), (&alice, 7)]);
        let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v["op"], "event");
        assert_eq!(v["event"], "MESSAGE:\"NEW\"");
        assert_eq!(v["data"]["msg"], "hi \"there\"");
        assert_eq!(v["id"], body.id.as_str());
        assert_eq!(v["via"], serde_json::json!({"chat":42,"@alice":7}));
        assert_eq!(
            v["from"],
            serde_json::json!({"user":"al\nice","conn":"c_1"})
        );
        assert!(v["ts"].as_u64().unwrap() > 1_700_000_000_000);
    }
}
