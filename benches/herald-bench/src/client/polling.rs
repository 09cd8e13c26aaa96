//! Socket.IO v4 client over Engine.IO's `polling` transport, the long-poll counterpart of
//! Herald's `/lp`: `GET /socket.io/?EIO=4&transport=polling` opens a session (`0{"sid",…}`),
//! `POST …&sid=` sends packets, and a `GET …&sid=` always parked returns whatever the server
//! has buffered, packets separated by `\x1e`. The server's pings (`2`) arrive in a poll and are
//! answered with a `POST` of `3`. Packets are the same as over the WebSocket, so they go
//! through the same [`socketio::handle`], and ident is the same [`socketio::ident`].

use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde::Deserialize;
use tokio_util::sync::WaitForCancellationFuture;

use super::engineio::{self, Packet};
use super::http::HttpConn;
use super::socketio::{self, Carrier, Step};
use super::{ChannelReq, ClientError, Endpoint, IdentReply, RunEnd, Sink};
use crate::sys::now_us;

/// Longest a poll may take: Engine.IO answers a parked poll with a ping every `pingInterval`
/// (25 s by default); past this the connection is taken for dead.
const POLL_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
struct Handshake {
    sid: String,
}

/// The session id in the open packet that starts a handshake payload.
pub fn handshake_sid(payload: &str) -> Result<String, ClientError> {
    let first = socketio::packets(payload).next().unwrap_or("");
    match engineio::parse(first) {
        Ok(Packet::Open(body)) => serde_json::from_str::<Handshake>(body)
            .map(|h| h.sid)
            .map_err(|e| ClientError::Protocol(format!("engine.io open packet: {e}: {body}"))),
        _ => Err(ClientError::Protocol(format!(
            "engine.io handshake: expected an open packet, got {:?}",
            &first[..first.len().min(200)]
        ))),
    }
}

/// One Engine.IO polling session and the connection its requests take.
pub struct PollingConn {
    http: HttpConn,
    /// `/socket.io/?EIO=4&transport=polling&sid=…`: every request of the session.
    path: String,
    timeout: Duration,
}

impl PollingConn {
    /// Opens an Engine.IO session from source address `src`.
    pub async fn open(ep: &Endpoint, src: Ipv4Addr) -> Result<Self, ClientError> {
        let mut http = HttpConn::new(ep.addr, src, ep.timeout);
        let base = "/socket.io/?EIO=4&transport=polling";
        let body = http
            .call(Method::GET, base, None, ep.timeout)
            .await?
            .expect(200, "engine.io handshake")?;
        let sid = handshake_sid(&String::from_utf8_lossy(&body))?;
        Ok(PollingConn {
            http,
            path: format!("{base}&sid={sid}"),
            timeout: ep.timeout,
        })
    }

    /// Connects the namespace and says `hello`, over polling requests.
    pub async fn ident(
        &mut self,
        user: &str,
        channels: &[ChannelReq],
        resume: Option<(&str, &str)>,
        sink: &mut Sink<'_>,
    ) -> Result<IdentReply, ClientError> {
        socketio::ident(self, user, channels, resume, sink).await
    }

    /// Polls until `stop` resolves or the session ends. At `stop` the parked poll (and its
    /// connection) is dropped; the server ends the session at its ping timeout.
    pub async fn run(
        &mut self,
        sink: &mut Sink<'_>,
        mut stop: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> RunEnd {
        loop {
            let payload = tokio::select! {
                biased;
                _ = &mut stop => return RunEnd::Stopped,
                p = self.recv_payload() => p,
            };
            let payload = match payload {
                Ok(p) => p,
                // Engine.IO answers 400 for a session it no longer knows.
                Err(ClientError::Status { status: 400, .. }) => return RunEnd::Closed(None),
                Err(e) => return RunEnd::Error(e.to_string()),
            };
            let now = now_us();
            let mut pong = false;
            for packet in socketio::packets(&payload) {
                match socketio::handle(packet, sink, now) {
                    Step::Pong => pong = true,
                    Step::Closed(c) => {
                        sink.end_message(now);
                        return RunEnd::Closed(c);
                    }
                    _ => {}
                }
            }
            sink.end_message(now);
            sink.shared.polls.fetch_add(1, Ordering::Relaxed);
            // Engine.IO v4: the server pings, the client must answer or be dropped.
            if pong {
                if let Err(e) = self.send_packet("3".into()).await {
                    return RunEnd::Error(e.to_string());
                }
            }
        }
    }
}

impl Carrier for PollingConn {
    async fn send_packet(&mut self, packet: String) -> Result<(), ClientError> {
        let body = Some(("text/plain;charset=UTF-8", Bytes::from(packet)));
        self.http
            .call(Method::POST, &self.path, body, self.timeout)
            .await?
            .expect(200, "engine.io post")
            .map(drop)
    }

    async fn recv_payload(&mut self) -> Result<String, ClientError> {
        let body = self
            .http
            .call(Method::GET, &self.path, None, POLL_LIMIT)
            .await?
            .expect(200, "engine.io poll")?;
        String::from_utf8(body.into())
            .map_err(|_| ClientError::Protocol("engine.io payload is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Shared;
    use crate::stats::Tracker;

    #[test]
    fn handshake_and_payloads() {
        assert_eq!(
            handshake_sid(r#"0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000}"#)
                .unwrap(),
            "abc"
        );
        assert!(handshake_sid("40").is_err());
        assert!(handshake_sid("").is_err());
        let shared = Shared::new();
        let mut sink = Sink::new(Tracker::expect(&["bench"]), &shared, 0);
        let payload = "42[\"e\",{\"t\":1},{\"bench\":1}]\x1e2\x1e42[\"e\",{\"t\":1},{\"bench\":2}]";
        let steps: Vec<bool> = socketio::packets(payload)
            .map(|p| matches!(socketio::handle(p, &mut sink, 5), Step::Pong))
            .collect();
        sink.end_message(5);
        assert_eq!(steps, vec![false, true, false]);
        assert_eq!(sink.tracker.last("bench"), 2);
        assert_eq!(
            shared.delivered.load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }
}
