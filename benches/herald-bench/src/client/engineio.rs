//! Engine.IO v4 / Socket.IO v5-protocol packets as they travel over a WebSocket: one packet per
//! text message. Only what the harness needs: the default namespace, no binary attachments.

use serde_json::value::RawValue;

use super::{Payload, Via};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EioError {
    #[error("empty packet")]
    Empty,
    #[error("unknown engine.io packet type {0:?}")]
    EngineType(char),
    #[error("unknown socket.io packet type {0:?}")]
    SocketType(char),
    #[error("binary attachments are not supported")]
    Binary,
    #[error("bad event arguments: {0}")]
    Args(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0{"sid":…,"pingInterval":…}`
    Open(&'a str),
    Close,
    Ping,
    Pong,
    Noop,
    /// `40{"sid":…,"pid":…}` — the namespace is connected.
    Connect(&'a str),
    Disconnect,
    /// `42[…]` or `42<ack id>[…]`
    Event {
        ack: Option<u64>,
        args: &'a str,
    },
    /// `43<id>[…]`
    Ack {
        id: u64,
        args: &'a str,
    },
    ConnectError(&'a str),
}

/// Parses one text message.
pub fn parse(text: &str) -> Result<Packet<'_>, EioError> {
    let mut chars = text.chars();
    let eio = chars.next().ok_or(EioError::Empty)?;
    let rest = chars.as_str();
    match eio {
        '0' => Ok(Packet::Open(rest)),
        '1' => Ok(Packet::Close),
        '2' => Ok(Packet::Ping),
        '3' => Ok(Packet::Pong),
        '6' => Ok(Packet::Noop),
        '4' => parse_socket(rest),
        c => Err(EioError::EngineType(c)),
    }
}

fn parse_socket(text: &str) -> Result<Packet<'_>, EioError> {
    let mut chars = text.chars();
    let ty = chars.next().ok_or(EioError::Empty)?;
    let mut rest = chars.as_str();
    if matches!(ty, '5' | '6') {
        return Err(EioError::Binary);
    }
    // A namespace other than "/" would come as "/nsp,"; the harness only uses "/".
    if rest.starts_with('/') {
        rest = rest.find(',').map_or("", |i| &rest[i + 1..]);
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits > 0 {
        rest[..digits].parse::<u64>().ok()
    } else {
        None
    };
    let body = &rest[digits..];
    match ty {
        '0' => Ok(Packet::Connect(body)),
        '1' => Ok(Packet::Disconnect),
        '2' => Ok(Packet::Event {
            ack: id,
            args: body,
        }),
        '3' => Ok(Packet::Ack {
            id: id.unwrap_or(0),
            args: body,
        }),
        '4' => Ok(Packet::ConnectError(body)),
        c => Err(EioError::SocketType(c)),
    }
}

/// `["event", data, via, recovery offset?]` as the peer server emits them.
#[derive(Debug)]
pub struct EventArgs<'a> {
    pub t: Option<u64>,
    pub via: Via<'a>,
    /// Socket.IO's connection-state-recovery offset, appended as the last argument.
    pub offset: Option<&'a str>,
}

pub fn event_args(args: &str) -> Result<EventArgs<'_>, EioError> {
    match fast_event_args(args) {
        Some(fast) => Ok(fast),
        None => full_event_args(args),
    }
}

fn full_event_args(args: &str) -> Result<EventArgs<'_>, EioError> {
    let parts: Vec<&RawValue> =
        serde_json::from_str(args).map_err(|e| EioError::Args(e.to_string()))?;
    // The name must be a string; the peer only emits the harness's own events, so it is not
    // otherwise needed.
    let _name: &str = parts
        .first()
        .ok_or_else(|| EioError::Args("no event name".into()))
        .and_then(|r| serde_json::from_str(r.get()).map_err(|e| EioError::Args(e.to_string())))?;
    let t = parts
        .get(1)
        .and_then(|r| serde_json::from_str::<Payload>(r.get()).ok())
        .and_then(|p| p.t);
    let via = match parts.get(2) {
        Some(r) => serde_json::from_str::<Via<'_>>(r.get()).unwrap_or_default(),
        None => Via::default(),
    };
    let offset = parts
        .get(3)
        .and_then(|r| serde_json::from_str::<&str>(r.get()).ok());
    Ok(EventArgs { t, via, offset })
}

/// `["name",{"t":…},{via}]` as the peer emits it without recovery, read without serde (see
/// `client::herald::fast_event` for why); `None` for anything else.
fn fast_event_args(args: &str) -> Option<EventArgs<'_>> {
    let rest = args.strip_prefix("[\"")?;
    let via_at = super::rfind(rest, b",{")?;
    let via = super::scan_via(rest[via_at..].strip_suffix("}]")?)?;
    Some(EventArgs {
        t: super::scan_u64_after(rest, b"\",{\"t\":"),
        via,
        offset: None,
    })
}

/// First element of an ack's argument array (`[{…}]`), as raw JSON.
pub fn first_arg(args: &str) -> Result<&str, EioError> {
    let parts: Vec<&RawValue> =
        serde_json::from_str(args).map_err(|e| EioError::Args(e.to_string()))?;
    parts
        .first()
        .map(|r| r.get())
        .ok_or_else(|| EioError::Args("empty ack".into()))
}

/// `42<id>["name", data]`
pub fn emit_with_ack(id: u64, name: &str, data: &serde_json::Value) -> String {
    format!("42{id}{}", serde_json::json!([name, data]))
}

/// `40` or `40{auth}` (used for recovery: `{"pid","offset"}`).
pub fn connect(auth: Option<&serde_json::Value>) -> String {
    match auth {
        Some(a) => format!("40{a}"),
        None => "40".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_packets() {
        assert_eq!(
            parse(r#"0{"sid":"abc","pingInterval":25000}"#),
            Ok(Packet::Open(r#"{"sid":"abc","pingInterval":25000}"#))
        );
        assert_eq!(parse("2"), Ok(Packet::Ping));
        assert_eq!(parse("3"), Ok(Packet::Pong));
        assert_eq!(parse("1"), Ok(Packet::Close));
        assert_eq!(parse("6"), Ok(Packet::Noop));
        assert_eq!(parse(""), Err(EioError::Empty));
        assert_eq!(parse("9"), Err(EioError::EngineType('9')));
    }

    #[test]
    fn socket_packets() {
        assert_eq!(
            parse(r#"40{"sid":"s1","pid":"p1"}"#),
            Ok(Packet::Connect(r#"{"sid":"s1","pid":"p1"}"#))
        );
        assert_eq!(parse("41"), Ok(Packet::Disconnect));
        assert_eq!(
            parse(r#"42["e",{"t":1}]"#),
            Ok(Packet::Event {
                ack: None,
                args: r#"["e",{"t":1}]"#
            })
        );
        assert_eq!(
            parse(r#"4217["hello",{}]"#),
            Ok(Packet::Event {
                ack: Some(17),
                args: r#"["hello",{}]"#
            })
        );
        assert_eq!(
            parse(r#"431[{"user":"u"}]"#),
            Ok(Packet::Ack {
                id: 1,
                args: r#"[{"user":"u"}]"#
            })
        );
        assert_eq!(
            parse(r#"44{"message":"nope"}"#),
            Ok(Packet::ConnectError(r#"{"message":"nope"}"#))
        );
        assert_eq!(
            parse(r#"42/admin,["e"]"#),
            Ok(Packet::Event {
                ack: None,
                args: r#"["e"]"#
            })
        );
        assert_eq!(parse("451-[]"), Err(EioError::Binary));
    }

    #[test]
    fn event_arguments() {
        let a = event_args(r#"["e",{"t":123,"pad":"x"},{"bench":5},"1a2b"]"#).unwrap();
        assert_eq!(a.t, Some(123));
        assert_eq!(a.via.0, vec![("bench", 5)]);
        assert_eq!(a.offset, Some("1a2b"));
        let b = event_args(r#"["e",{"t":1},{"*":2}]"#).unwrap();
        assert_eq!(b.offset, None);
        assert!(event_args("[]").is_err());
        assert!(event_args("nope").is_err());
    }

    #[test]
    fn the_fast_event_path_agrees_with_the_full_parse() {
        for args in [
            r#"["e",{"t":123,"n":4},{"bench":5}]"#,
            r#"["e",{"t":7,"pad":"a,{b"},{"@u1":3,"ch2":40}]"#,
            r#"["e",{"n":1},{"bench":2}]"#,
        ] {
            let fast = fast_event_args(args).expect(args);
            let full = full_event_args(args).unwrap();
            assert_eq!((fast.t, fast.via.0), (full.t, full.via.0), "{args}");
        }
        for other in [
            r#"["e",{"t":1},{"bench":5},"1a2b"]"#,
            r#"["e",{"t":1},{"bench":-5}]"#,
            r#"[1,{"t":1},{"bench":5}]"#,
        ] {
            assert!(fast_event_args(other).is_none(), "{other}");
        }
    }

    #[test]
    fn outgoing() {
        assert_eq!(
            emit_with_ack(1, "hello", &serde_json::json!({"user":"u"})),
            r#"421["hello",{"user":"u"}]"#
        );
        assert_eq!(connect(None), "40");
        assert_eq!(
            connect(Some(&serde_json::json!({"pid":"p"}))),
            r#"40{"pid":"p"}"#
        );
        assert_eq!(first_arg(r#"[{"a":1},2]"#).unwrap(), r#"{"a":1}"#);
    }
}
