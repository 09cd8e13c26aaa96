//! Client frames in, reply frames out.

use std::collections::BTreeMap;

use bytes::Bytes;
use herald_connector_api::CompactJson;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Most frames one inbound message may hold. Each may be answered, and the answers share the
/// connection's outbound queue: a message of thousands of frames would only trip the
/// slow-consumer cut (4102). Far above what a client batches.
pub const MAX_FRAMES_PER_MESSAGE: usize = 256;

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

/// One client frame, read in a single parse: `op`, `id` and the fields of every op. Each op
/// checks that the fields it needs are there ([`required`]); fields it does not use are
/// ignored, as unknown fields are.
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct Frame {
    /// The op name.
    pub op: Option<String>,
    /// The request id to echo in the reply.
    pub id: Option<u64>,
    /// `ident`: the JWT.
    pub token: Option<String>,
    /// `ident`: channels to join (and recover) at once.
    pub channels: BTreeMap<String, Position>,
    /// `join`, `leave`, `publish`, `presence`, `history`.
    pub channel: Option<String>,
    /// `join`, `history`: the position to continue after.
    pub since: Option<Position>,
    /// `join`: include the member list in the reply.
    pub presence: bool,
    /// `publish`: the event name.
    pub event: Option<String>,
    /// `publish`, `rpc`: the payload, compacted.
    pub data: Option<CompactJson>,
    /// `publish`: also deliver to the sender.
    pub echo: bool,
    /// `history`: how many events at most.
    pub limit: Option<usize>,
    /// `rpc`: the backend method.
    pub method: Option<String>,
}

/// What a frame that did not parse still tells: its id, for the error reply.
#[derive(Deserialize)]
struct Head {
    id: Option<serde_json::Value>,
}

/// Parses one frame.
///
/// # Errors
/// 4000 naming the bad field, with the frame's id when it was readable.
pub fn parse_frame(raw: &str) -> Result<Frame, (Option<u64>, OpError)> {
    match herald_connector_api::parse_json::<Frame>(raw.as_bytes()) {
        Ok(frame) => match frame.id {
            Some(0) => Err((None, OpError::bad_frame("id: must be a positive integer"))),
            _ => Ok(frame),
        },
        Err(e) => {
            let message = match e.field.as_str() {
                "" => "not a JSON object".to_owned(),
                "id" => return Err((None, OpError::bad_frame("id: must be a positive integer"))),
                _ => e.to_string(),
            };
            // Only a refused frame is read a second time, and only for its id.
            Err((id_of(raw), OpError::bad_frame(message)))
        }
    }
}

/// A frame's `id` alone, for refusing it without parsing the rest.
pub fn id_of(raw: &str) -> Option<u64> {
    serde_json::from_str::<Head>(raw)
        .ok()
        .and_then(|h| h.id?.as_u64())
        .filter(|&id| id > 0)
}

/// A field an op needs.
///
/// # Errors
/// 4000 `<name>: missing field`.
pub fn required<'a, T>(value: &'a Option<T>, name: &str) -> Result<&'a T, OpError> {
    value
        .as_ref()
        .ok_or_else(|| OpError::bad_frame(format!("{name}: missing field")))
}

/// Splits one inbound message into frames: JSON values one after another (separated by `\n`,
/// or by any whitespace, so a pretty-printed frame is one frame), where an array stands for
/// the frames it holds. Text that is not JSON yields one error and reading resumes at the
/// next line, so one bad line does not hide the frames after it.
pub fn split_frames(text: &str) -> Vec<Result<&str, OpError>> {
    let frames = read_frames(text);
    if frames.len() > MAX_FRAMES_PER_MESSAGE {
        return vec![Err(OpError::bad_frame(format!(
            "message: {} frames, at most {MAX_FRAMES_PER_MESSAGE} per message; none was handled",
            frames.len()
        )))];
    }
    frames
}

fn read_frames(text: &str) -> Vec<Result<&str, OpError>> {
    let mut frames = Vec::new();
    let mut rest = text;
    loop {
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<&RawValue>();
        match values.next() {
            None => return frames,
            Some(Ok(value)) => {
                let raw = value.get();
                if raw.starts_with('[') {
                    match serde_json::from_str::<Vec<&RawValue>>(raw) {
                        Ok(items) => frames.extend(items.into_iter().map(|v| Ok(v.get()))),
                        Err(_) => {
                            frames.push(Err(OpError::bad_frame("not a JSON array of frames")))
                        }
                    }
                } else {
                    frames.push(Ok(raw));
                }
                rest = &rest[values.byte_offset()..];
            }
            Some(Err(_)) => {
                frames.push(Err(OpError::bad_frame("not a JSON object")));
                let failed_at = values.byte_offset().min(rest.len());
                match rest[failed_at..].find('\n') {
                    Some(newline) => rest = &rest[failed_at + newline + 1..],
                    None => return frames,
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(frames: Vec<Result<&str, OpError>>) -> Vec<&str> {
        frames.into_iter().map(|f| f.unwrap()).collect()
    }

    #[test]
    fn splits_lines_arrays_and_pretty_printed_frames() {
        assert_eq!(
            ok(split_frames("{\"op\":\"a\"}\n\n{\"op\":\"b\"}\n")),
            [r#"{"op":"a"}"#, r#"{"op":"b"}"#]
        );
        assert_eq!(
            ok(split_frames(r#" [{"op":"a"},{"op":"b"}]"#)),
            [r#"{"op":"a"}"#, r#"{"op":"b"}"#]
        );
        assert_eq!(
            ok(split_frames("{\n  \"op\": \"ping\",\n  \"id\": 1\n}")),
            ["{\n  \"op\": \"ping\",\n  \"id\": 1\n}"]
        );
        let mixed = split_frames("{\"op\":\"a\"}\nnot json\n{\"op\":\"b\"}");
        assert_eq!(mixed.len(), 3);
        assert!(mixed[1].is_err());
        assert_eq!(mixed[2].as_ref().unwrap(), &r#"{"op":"b"}"#);
        assert_eq!(split_frames("[oops").len(), 1);
        let many = format!("[{}]", vec![r#"{"op":"ping"}"#; 257].join(","));
        let refused = split_frames(&many);
        assert_eq!(refused.len(), 1);
        assert!(refused[0]
            .as_ref()
            .unwrap_err()
            .message
            .contains("at most 256"));
        assert!(split_frames("  \n ").is_empty());
    }

    #[test]
    fn parses_once_and_names_the_bad_field() {
        let frame = parse_frame(r#"{"op":"join","id":3,"channel":"c"}"#).unwrap();
        assert_eq!((frame.id, frame.op.as_deref()), (Some(3), Some("join")));
        assert_eq!(required(&frame.channel, "channel").unwrap(), "c");
        assert_eq!(
            required(&frame.event, "event").unwrap_err().message,
            "event: missing field"
        );
        let (id, err) = parse_frame(r#"{"op":"join","id":3,"channel":5}"#)
            .err()
            .unwrap();
        assert_eq!(id, Some(3), "the id of a refused frame is still answered");
        assert_eq!(
            err.message,
            "channel: invalid type: integer `5`, expected a string"
        );
        assert_eq!(parse_frame("nope").err().unwrap().1.code, 4000);
        assert_eq!(parse_frame(r#"{"op":"x","id":-1}"#).err().unwrap().0, None);
        assert_eq!(parse_frame(r#"{"op":"x","id":0}"#).err().unwrap().0, None);
        let pretty = parse_frame("{\"op\":\"publish\",\"data\":{\n \"a\": [1,\n 2]}}").unwrap();
        assert_eq!(pretty.data.unwrap().get(), r#"{"a":[1,2]}"#);
    }
}
