//! Client frames in, reply frames out.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A protocol error: a code from the contract and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// 4000, 4001, 4003 …
    pub code: u16,
    /// What went wrong, for people.
    pub message: String,
}

impl OpError {
    /// An error with a code and message.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// 4000: the frame is malformed.
    pub fn bad_frame(message: impl Into<String>) -> Self {
        Self::new(4000, message)
    }

    /// 4003: not allowed.
    pub fn forbidden(what: impl std::fmt::Display) -> Self {
        Self::new(4003, format!("forbidden: {what}"))
    }
}

/// The part every frame shares.
#[derive(Deserialize)]
struct Head {
    op: Option<serde_json::Value>,
    id: Option<serde_json::Value>,
}

/// A frame whose envelope (op, id) is readable; its own fields are parsed by the op.
pub struct Request<'a> {
    /// The request id to echo in the reply, if any.
    pub id: Option<u64>,
    /// The op name.
    pub op: String,
    raw: &'a str,
}

impl Request<'_> {
    /// Parses the op's own fields, naming the bad one on failure.
    ///
    /// # Errors
    /// 4000 with the field path.
    pub fn fields<T: DeserializeOwned>(&self) -> Result<T, OpError> {
        herald_connector_api::parse_json(self.raw.as_bytes()).map_err(|e| {
            OpError::bad_frame(if e.field.is_empty() {
                e.message
            } else {
                e.to_string()
            })
        })
    }
}

/// Reads `op` and `id` of one frame.
///
/// # Errors
/// 4000 (with the id when it was readable) for anything that is not a frame.
pub fn parse_request(raw: &str) -> Result<Request<'_>, (Option<u64>, OpError)> {
    let head: Head =
        serde_json::from_str(raw).map_err(|_| (None, OpError::bad_frame("not a JSON object")))?;
    let id = match head.id {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(id) if id > 0 => Some(id),
            _ => return Err((None, OpError::bad_frame("id: must be a positive integer"))),
        },
    };
    match head.op {
        Some(serde_json::Value::String(op)) => Ok(Request { id, op, raw }),
        Some(_) => Err((id, OpError::bad_frame("op: must be a string"))),
        None => Err((id, OpError::bad_frame("op: missing field"))),
    }
}

/// Splits one inbound message into frames: a JSON array of frames, or `\n`-separated frames.
///
/// # Errors
/// 4000 when the message is an array that is not valid JSON.
pub fn split_frames(text: &str) -> Result<Vec<&str>, OpError> {
    if text.trim_start().starts_with('[') {
        let frames: Vec<&RawValue> = serde_json::from_str(text)
            .map_err(|_| OpError::bad_frame("not a JSON array of frames"))?;
        return Ok(frames.into_iter().map(RawValue::get).collect());
    }
    Ok(text
        .split('\n')
        .filter(|line| !line.trim().is_empty())
        .collect())
}

/// `{"op":"reply","id":N,"ok":true,"data":…}`.
pub fn reply_ok(id: u64, data: &impl Serialize) -> Bytes {
    #[derive(Serialize)]
    struct Ok<'a, T> {
        op: &'static str,
        id: u64,
        ok: bool,
        data: &'a T,
    }
    to_bytes(&Ok {
        op: "reply",
        id,
        ok: true,
        data,
    })
}

/// `{"op":"reply","id":N,"ok":false,"code":C,"error":"…"}`; without `id` when the frame had none.
pub fn reply_err(id: Option<u64>, err: &OpError) -> Bytes {
    #[derive(Serialize)]
    struct Err<'a> {
        op: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        ok: bool,
        code: u16,
        error: &'a str,
    }
    to_bytes(&Err {
        op: "reply",
        id,
        ok: false,
        code: err.code,
        error: &err.message,
    })
}

/// `{"op":"joined"|"left","channel","user","conn"}` for the other members.
pub fn membership_notice(op: &'static str, channel: &str, user: &str, conn: &str) -> Bytes {
    to_bytes(&serde_json::json!({ "op": op, "channel": channel, "user": user, "conn": conn }))
}

/// `{"op":"unsubscribed","channel"}`: the backend removed this connection from a channel.
pub fn unsubscribed_notice(channel: &str) -> Bytes {
    to_bytes(&serde_json::json!({ "op": "unsubscribed", "channel": channel }))
}

fn to_bytes(value: &impl Serialize) -> Bytes {
    // Our own reply types serialize infallibly (string keys, no maps with non-string keys).
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// A position a client sends: `{"offset","epoch"}`, or `{}` for "just join".
#[derive(Debug, Default, Deserialize)]
pub struct Position {
    /// Offset of the last event seen.
    pub offset: Option<u64>,
    /// Epoch of that offset.
    pub epoch: Option<String>,
}

/// `ident`.
#[derive(Deserialize)]
pub struct Ident {
    /// The JWT.
    pub token: Option<String>,
    /// Channels to join (and recover) at once.
    #[serde(default)]
    pub channels: BTreeMap<String, Position>,
}

/// `join`.
#[derive(Deserialize)]
pub struct Join {
    /// Channel name.
    pub channel: String,
    /// Recover from here.
    pub since: Option<Position>,
    /// Include the member list in the reply.
    #[serde(default)]
    pub presence: bool,
}

/// `leave`, `presence`.
#[derive(Deserialize)]
pub struct ChannelOnly {
    /// Channel name.
    pub channel: String,
}

/// `publish`.
#[derive(Deserialize)]
pub struct Publish {
    /// Channel name.
    pub channel: String,
    /// Event name.
    pub event: String,
    /// Payload.
    pub data: Option<Box<RawValue>>,
    /// Also deliver to the sender.
    #[serde(default)]
    pub echo: bool,
}

/// `history`.
#[derive(Deserialize)]
pub struct History {
    /// Channel name.
    pub channel: String,
    /// Events after this position.
    pub since: Option<Position>,
    /// How many events at most.
    pub limit: Option<usize>,
}

/// `rpc`.
#[derive(Deserialize)]
pub struct Rpc {
    /// Backend method.
    pub method: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_reads_heads() {
        assert_eq!(
            split_frames("{\"op\":\"a\"}\n\n{\"op\":\"b\"}\n")
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            split_frames(r#" [{"op":"a"},{"op":"b"}]"#).unwrap(),
            [r#"{"op":"a"}"#, r#"{"op":"b"}"#]
        );
        assert!(split_frames("[oops").is_err());

        let req = parse_request(r#"{"op":"join","id":3,"channel":"c"}"#).unwrap();
        assert_eq!((req.id, req.op.as_str()), (Some(3), "join"));
        assert_eq!(req.fields::<ChannelOnly>().unwrap().channel, "c");
        let bad = parse_request(r#"{"op":"join","id":3,"channel":5}"#)
            .unwrap()
            .fields::<ChannelOnly>();
        assert_eq!(
            bad.err().unwrap().message,
            "channel: invalid type: integer `5`, expected a string"
        );
        assert_eq!(parse_request("nope").err().unwrap().1.code, 4000);
        assert_eq!(
            parse_request(r#"{"op":"x","id":-1}"#).err().unwrap().0,
            None
        );
        assert_eq!(parse_request(r#"{"id":2}"#).err().unwrap().0, Some(2));
    }
}
