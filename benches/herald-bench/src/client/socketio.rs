//! Socket.IO v4 client over the Engine.IO websocket transport, for the peer server in
//! `benches/peers/socketio`: connect the default namespace, `hello` with an ack (the peer's
//! equivalent of `ident` + joins), then events `42["e", data, via(, recovery offset)]`.

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
enum Step<'a> {
    Continue,
    Pong,
    Connected(&'a str),
    Ack(u64, &'a str),
    Closed(Option<i64>),
    Refused(&'a str),
}

/// Handles one message: events go to the sink, the rest is returned.
fn handle<'a>(text: &'a str, sink: &mut Sink<'_>, now: u64) -> Step<'a> {
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

impl SioConn {
    pub fn new(ws: Ws) -> Self {
        SioConn { ws }
    }

    async fn next_text(
        &mut self,
    ) -> Result<tokio_tungstenite::tungstenite::Utf8Bytes, ClientError> {
        loop {
            match self.ws.next().await {
                None => return Err(ClientError::Closed(None)),
                Some(m) => match m? {
                    Message::Text(t) => return Ok(t),
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

    /// Connects the namespace (resuming the session `pid` after `offset` when given), then
    /// says `hello` unless the server restored the session with its rooms.
    pub async fn ident(
        &mut self,
        user: &str,
        channels: &[ChannelReq],
        resume: Option<(&str, &str)>,
        sink: &mut Sink<'_>,
    ) -> Result<IdentReply, ClientError> {
        let auth = resume.map(|(pid, offset)| serde_json::json!({"pid": pid, "offset": offset}));
        self.ws
            .send(Message::text(engineio::connect(auth.as_ref())))
            .await?;
        let mut reply = IdentReply::default();
        // Namespace connect reply; the Engine.IO open packet comes before it.
        loop {
            let text = self.next_text().await?;
            let now = now_us();
            let step = handle(text.as_str(), sink, now);
            sink.end_message(now);
            match step {
                Step::Connected(body) => {
                    let d: ConnectData = serde_json::from_str(body).map_err(|e| {
                        ClientError::Protocol(format!("socket.io connect reply: {e}: {body}"))
                    })?;
                    reply.sio_recovered = match (resume, &d.pid) {
                        (Some((old, _)), Some(new)) => old == new,
                        _ => false,
                    };
                    reply.sio_pid = d.pid;
                    break;
                }
                Step::Pong => self.ws.send(Message::text("3")).await?,
                Step::Closed(_) => return Err(ClientError::Closed(None)),
                Step::Refused(b) => {
                    return Err(ClientError::Refused {
                        code: 0,
                        error: b.to_string(),
                    })
                }
                Step::Continue | Step::Ack(..) => {}
            }
        }
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
        self.ws.send(Message::text(hello)).await?;
        loop {
            let text = self.next_text().await?;
            let now = now_us();
            let step = handle(text.as_str(), sink, now);
            sink.end_message(now);
            match step {
                Step::Ack(1, args) => {
                    let first = engineio::first_arg(args)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
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
                    return Ok(reply);
                }
                Step::Pong => self.ws.send(Message::text("3")).await?,
                Step::Closed(_) => return Err(ClientError::Closed(None)),
                Step::Refused(b) => {
                    return Err(ClientError::Refused {
                        code: 0,
                        error: b.to_string(),
                    })
                }
                _ => {}
            }
        }
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
