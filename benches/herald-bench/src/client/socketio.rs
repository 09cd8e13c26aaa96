//! Socket.IO v4 client over the Engine.IO websocket transport, for the peer server in
//! `benches/peers/socketio`: connect the default namespace, `hello` with an ack (the peer's
//! equivalent of `ident` + joins), then events `42["e", data, via(, recovery offset)]`.
//! The connect-and-hello step is written once over a [`Carrier`], so the polling client
//! ([`super::polling`]) says the same things the same way.

use std::pin::Pin;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::WaitForCancellationFuture;

use super::engineio::{self, Packet};
use super::{ChannelPos, ChannelReq, ClientError, IdentReply, RunEnd, Sink};
use crate::net::Ws;
use crate::sys::now_us;

pub struct SioConn {
    ws: Ws,
}

#[derive(Debug, Deserialize)]
struct ConnectData {
    #[serde(default)]
    pid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HelloAck {
    #[serde(default)]
    offsets: std::collections::HashMap<String, u64>,
}

/// What to do with one incoming packet.
pub(super) enum Step<'a> {
    Continue,
    Pong,
    Connected(&'a str),
    Ack(u64, &'a str),
    Closed(Option<i64>),
    Refused(&'a str),
}

/// Handles one packet: events go to the sink, the rest is returned.
pub(super) fn handle<'a>(text: &'a str, sink: &mut Sink<'_>, now: u64) -> Step<'a> {
    match engineio::parse(text) {
        Ok(Packet::Event { args, .. }) => {
            match engineio::event_args(args) {
                Ok(ev) => {
                    sink.event(&ev.via, ev.t, now);
                    if let Some(off) = ev.offset {
                        // Reuse the string: no allocation per event.
                        let s = sink.sio_offset.get_or_insert_with(String::new);
                        s.clear();
                        s.push_str(off);
                    }
                }
                Err(_) => sink.bad_frame(),
            }
            Step::Continue
        }
        Ok(Packet::Ping) => Step::Pong,
        Ok(Packet::Connect(body)) => Step::Connected(body),
        Ok(Packet::Ack { id, args }) => Step::Ack(id, args),
        Ok(Packet::Close) | Ok(Packet::Disconnect) => Step::Closed(None),
        Ok(Packet::ConnectError(body)) => Step::Refused(body),
        Ok(Packet::Open(_) | Packet::Pong | Packet::Noop) => Step::Continue,
        Err(_) => {
            sink.bad_frame();
            Step::Continue
        }
    }
}

/// How Engine.IO packets travel during ident: one per WebSocket message, or several per
/// polling response, separated by `\x1e` (JSON escapes that byte, so it never occurs inside
/// a packet).
pub(super) trait Carrier {
    /// Sends one packet.
    async fn send_packet(&mut self, packet: String) -> Result<(), ClientError>;
    /// The next message (WebSocket) or payload (polling).
    async fn recv_payload(&mut self) -> Result<String, ClientError>;
}

/// The packets of one message or polling payload.
pub(super) fn packets(text: &str) -> impl Iterator<Item = &str> {
    text.split('\x1e').filter(|p| !p.is_empty())
}

/// What ident waits for in a payload.
enum Wanted {
    Connect,
    HelloAck,
}

/// Reads payloads (events go to the sink, pings are answered) until the packet `want` comes;
/// returns its body.
async fn wait_for<C: Carrier>(
    c: &mut C,
    want: Wanted,
    sink: &mut Sink<'_>,
) -> Result<String, ClientError> {
    loop {
        let text = c.recv_payload().await?;
        let now = now_us();
        let (mut found, mut pong) = (None, false);
        for packet in packets(&text) {
            match (handle(packet, sink, now), &want) {
                (Step::Connected(body), Wanted::Connect)
                | (Step::Ack(1, body), Wanted::HelloAck) => {
                    found.get_or_insert_with(|| body.to_string());
                }
                (Step::Pong, _) => pong = true,
                (Step::Closed(_), _) => return Err(ClientError::Closed(None)),
                (Step::Refused(b), _) => {
                    return Err(ClientError::Refused {
                        code: 0,
                        error: b.to_string(),
                    })
                }
                _ => {}
            }
        }
        sink.end_message(now);
        if pong {
            c.send_packet("3".into()).await?;
        }
        if let Some(body) = found {
            return Ok(body);
        }
    }
}

/// Connects the namespace (resuming the session `pid` after `offset` when given), then says
/// `hello` unless the server restored the session with its rooms.
pub(super) async fn ident<C: Carrier>(
    c: &mut C,
    user: &str,
    channels: &[ChannelReq],
    resume: Option<(&str, &str)>,
    sink: &mut Sink<'_>,
) -> Result<IdentReply, ClientError> {
    let auth = resume.map(|(pid, offset)| serde_json::json!({"pid": pid, "offset": offset}));
    c.send_packet(engineio::connect(auth.as_ref())).await?;
    let mut reply = IdentReply::default();
    // Namespace connect reply; the Engine.IO open packet comes before it.
    let body = wait_for(c, Wanted::Connect, sink).await?;
    let d: ConnectData = serde_json::from_str(&body)
        .map_err(|e| ClientError::Protocol(format!("socket.io connect reply: {e}: {body}")))?;
    reply.sio_recovered = match (resume, &d.pid) {
        (Some((old, _)), Some(new)) => old == new,
        _ => false,
    };
    reply.sio_pid = d.pid;
    if reply.sio_recovered {
        // Rooms came back with the session; missed events follow on their own.
        return Ok(reply);
    }
    let names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
    let hello = engineio::emit_with_ack(
        1,
        "hello",
        &serde_json::json!({"user": user, "channels": names}),
    );
    c.send_packet(hello).await?;
    let args = wait_for(c, Wanted::HelloAck, sink).await?;
    let first = engineio::first_arg(&args).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let ack: HelloAck = serde_json::from_str(first)
        .map_err(|e| ClientError::Protocol(format!("hello ack: {e}: {first}")))?;
    reply.channels = ack
        .offsets
        .into_iter()
        .map(|(name, offset)| ChannelPos {
            name,
            offset,
            epoch: String::new(),
            recovered: None,
        })
        .collect();
    reply.channels.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(reply)
}

impl Carrier for Ws {
    async fn send_packet(&mut self, packet: String) -> Result<(), ClientError> {
        self.send(Message::text(packet)).await?;
        Ok(())
    }

    async fn recv_payload(&mut self) -> Result<String, ClientError> {
        loop {
            match self.next().await {
                None => return Err(ClientError::Closed(None)),
                Some(m) => match m? {
                    Message::Text(t) => return Ok(t.as_str().to_owned()),
                    Message::Close(f) => {
                        return Err(ClientError::Closed(
                            f.map(|f| format!("{} {}", f.code, f.reason)),
                        ))
                    }
                    _ => continue,
                },
            }
        }
    }
}

impl SioConn {
    pub fn new(ws: Ws) -> Self {
        SioConn { ws }
    }

    /// Connects the namespace and says `hello` (see [`ident`]).
    pub async fn ident(
        &mut self,
        user: &str,
        channels: &[ChannelReq],
        resume: Option<(&str, &str)>,
        sink: &mut Sink<'_>,
    ) -> Result<IdentReply, ClientError> {
        ident(&mut self.ws, user, channels, resume, sink).await
    }

    pub async fn run(
        &mut self,
        sink: &mut Sink<'_>,
        mut stop: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> RunEnd {
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => return RunEnd::Stopped,
                m = self.ws.next() => match m {
                    None => return RunEnd::Closed(None),
                    Some(Err(e)) => return RunEnd::Error(e.to_string()),
                    Some(Ok(Message::Text(t))) => {
                        let now = now_us();
                        let step = handle(t.as_str(), sink, now);
                        sink.end_message(now);
                        match step {
                            // Engine.IO v4: the server pings, the client must answer or be dropped.
                            Step::Pong => {
                                if let Err(e) = self.ws.send(Message::text("3")).await {
                                    return RunEnd::Error(e.to_string());
                                }
                            }
                            Step::Closed(c) => return RunEnd::Closed(c),
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        return RunEnd::Closed(f.map(|f| i64::from(u16::from(f.code))))
                    }
                    Some(Ok(_)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Shared;
    use crate::stats::Tracker;

    #[test]
    fn events_and_recovery_offsets() {
        let shared = Shared::new();
        let mut sink = Sink::new(Tracker::expect(&["bench"]), &shared, 0);
        assert!(matches!(
            handle(r#"42["e",{"t":10},{"bench":1},"off-1"]"#, &mut sink, 20),
            Step::Continue
        ));
        assert!(matches!(
            handle(r#"42["e",{"t":10},{"bench":2},"off-2"]"#, &mut sink, 20),
            Step::Continue
        ));
        assert!(matches!(handle("2", &mut sink, 0), Step::Pong));
        assert!(matches!(handle("41", &mut sink, 0), Step::Closed(None)));
        assert!(matches!(handle("garbage", &mut sink, 0), Step::Continue));
        sink.end_message(20);
        assert_eq!(sink.tracker.last("bench"), 2);
        assert_eq!(sink.sio_offset.as_deref(), Some("off-2"));
        assert_eq!(sink.tracker.bad_frames, 1);
    }
}
