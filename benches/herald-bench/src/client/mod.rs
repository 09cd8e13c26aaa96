//! Load clients: one connection each, speaking Herald's frames or Socket.IO's Engine.IO v4
//! packets over a WebSocket, HTTP long-polling (Herald's `/lp`, Engine.IO's `polling`) or
//! server-sent events (Herald's `/sse`), and reporting every event into a [`Sink`].

pub mod engineio;
pub mod herald;
pub mod http;
pub mod longpoll;
pub mod polling;
pub mod socketio;
pub mod sse;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::net::NetError;
use crate::stats::{Latency, Tracker};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("server refused: {code} {error}")]
    Refused { code: i64, error: String },
    #[error("connection closed{}", .0.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<String>),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("{what} answered {status}: {body}")]
    Status {
        what: &'static str,
        status: u16,
        body: String,
    },
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Which server the clients talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Herald,
    #[serde(rename = "socketio")]
    SocketIo,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Herald => "herald",
            Kind::SocketIo => "socketio",
        })
    }
}

/// How a client reaches the server.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A WebSocket (Herald's `/ws`, Engine.IO's `websocket`).
    Ws,
    /// HTTP long-polling (Herald's `/lp/*`, Engine.IO's `polling`).
    #[value(alias = "lp", alias = "polling")]
    Longpoll,
    /// Server-sent events (Herald's `/sse`; Socket.IO has none).
    Sse,
}

impl Transport {
    /// What run labels carry for this transport: `fanout-1000`, `fanout-lp-1000`,
    /// `fanout-sse-1000`.
    pub fn tag(self) -> &'static str {
        match self {
            Transport::Ws => "",
            Transport::Longpoll => "lp-",
            Transport::Sse => "sse-",
        }
    }

    /// Why `kind` cannot be measured over this transport, if it cannot.
    pub fn unsupported(self, kind: Kind) -> Option<&'static str> {
        match (kind, self) {
            (Kind::SocketIo, Transport::Sse) => Some("Socket.IO has no SSE transport"),
            _ => None,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Ws => "ws",
            Transport::Longpoll => "longpoll",
            Transport::Sse => "sse",
        })
    }
}

/// Where and how clients connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub kind: Kind,
    pub transport: Transport,
    pub addr: SocketAddr,
    /// HS256 secret for Herald tokens.
    pub jwt_secret: String,
    pub read_buffer: usize,
    pub timeout: Duration,
}

impl Endpoint {
    pub fn ws_url(&self) -> String {
        match self.kind {
            Kind::Herald => format!("ws://{}/ws", self.addr),
            Kind::SocketIo => format!("ws://{}/socket.io/?EIO=4&transport=websocket", self.addr),
        }
    }
}

/// A channel to join at ident, optionally resuming after (offset, epoch).
#[derive(Debug, Clone)]
pub struct ChannelReq {
    pub name: String,
    pub since: Option<(u64, String)>,
}

/// What identifying told us about each channel.
#[derive(Debug, Clone, Default)]
pub struct ChannelPos {
    pub name: String,
    pub offset: u64,
    pub epoch: String,
    pub recovered: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct IdentReply {
    pub channels: Vec<ChannelPos>,
    /// Socket.IO connection-state-recovery: the private session id and whether the server
    /// restored the session.
    pub sio_pid: Option<String>,
    pub sio_recovered: bool,
}

/// Why a read loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    Stopped,
    /// The server closed, with its disconnect code when it sent one.
    Closed(Option<i64>),
    Error(String),
}

/// `via`: channel → offset, borrowed from the frame text. Channel names never need JSON
/// escapes, so borrowing works; a name that does is reported as a bad frame.
#[derive(Debug, Default)]
pub struct Via<'a>(pub Vec<(&'a str, u64)>);

impl<'de: 'a, 'a> Deserialize<'de> for Via<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Via<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of channel to offset")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Via<'a>, M::Error> {
                let mut v = Vec::with_capacity(m.size_hint().unwrap_or(1));
                while let Some((k, off)) = m.next_entry::<&'de str, u64>()? {
                    v.push((k, off));
                }
                Ok(Via(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Where the last `needle` in `text` ends. Quotes inside JSON strings are escaped, so a
/// needle holding a quote can only match structure. The keys the fast event paths look for
/// sit a few bytes from where the scan starts, so a window scan beats building a substring
/// searcher per frame.
pub fn rfind(text: &str, needle: &[u8]) -> Option<usize> {
    let at = text
        .as_bytes()
        .windows(needle.len())
        .rposition(|w| w == needle)?;
    Some(at + needle.len())
}

/// The digits right after the first `key` in `text`, if any.
pub fn scan_u64_after(text: &str, key: &[u8]) -> Option<u64> {
    let at = text.as_bytes().windows(key.len()).position(|w| w == key)? + key.len();
    let digits = &text[at..];
    digits[..digits.bytes().take_while(u8::is_ascii_digit).count()]
        .parse()
        .ok()
}

/// Reads the inside of a `via` object (`"name":offset,…`) without serde; `None` for anything
/// else (escaped names, signs, spaces), which then takes the full parse.
pub fn scan_via(mut text: &str) -> Option<Via<'_>> {
    let mut via = Vec::with_capacity(1);
    while !text.is_empty() {
        let body = text.strip_prefix('"')?;
        let (name, after) = body.split_at(body.find('"')?);
        if name.contains('\\') {
            return None;
        }
        let after = after.strip_prefix("\":")?;
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        via.push((name, after[..digits].parse().ok()?));
        text = &after[digits..];
        if let Some(more) = text.strip_prefix(',') {
            text = more;
        } else if !text.is_empty() {
            return None;
        }
    }
    Some(Via(via))
}

/// The harness's event payload: `t` = publish time in µs since the UNIX epoch.
#[derive(Debug, Deserialize)]
pub struct Payload {
    #[serde(default)]
    pub t: Option<u64>,
}

/// Shared counters every subscriber reports into.
pub struct Shared {
    pub latency: Latency,
    pub delivered: AtomicU64,
    /// µs since epoch of the latest delivery, for the delivery-rate window.
    pub last_delivery_us: AtomicU64,
    pub disconnects: AtomicU64,
    /// Poll requests answered (long-poll and Engine.IO polling clients): deliveries per poll
    /// tells how much each HTTP round trip carried.
    pub polls: AtomicU64,
}

impl Shared {
    pub fn new() -> Self {
        Shared {
            latency: Latency::new(64),
            delivered: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            polls: AtomicU64::new(0),
        }
    }
}

const BATCH: usize = 64;

/// Where one subscriber's read loop puts what it receives. Latencies of one WebSocket message
/// are collected on the stack and recorded under a single lock.
pub struct Sink<'s> {
    pub tracker: Tracker,
    pub shared: &'s Shared,
    pub shard: usize,
    /// Socket.IO recovery offset of the last event (the string Socket.IO appends).
    pub sio_offset: Option<String>,
    /// The last SSE `id:` received: sent back as `Last-Event-ID` when this sink's client
    /// connects again, as a browser's `EventSource` does.
    pub last_event_id: Option<String>,
    lat: [u64; BATCH],
    n: usize,
    count: u64,
}

impl<'s> Sink<'s> {
    pub fn new(tracker: Tracker, shared: &'s Shared, shard: usize) -> Self {
        Sink {
            tracker,
            shared,
            shard,
            sio_offset: None,
            last_event_id: None,
            lat: [0; BATCH],
            n: 0,
            count: 0,
        }
    }

    /// One event: its `via` and its publish timestamp.
    pub fn event(&mut self, via: &Via<'_>, t_us: Option<u64>, now_us: u64) {
        for &(ch, off) in &via.0 {
            self.tracker.record(ch, off);
        }
        self.count += 1;
        if let Some(t) = t_us {
            if self.n == BATCH {
                self.flush_latency();
            }
            self.lat[self.n] = now_us.saturating_sub(t).max(1);
            self.n += 1;
        }
    }

    pub fn bad_frame(&mut self) {
        self.tracker.bad_frames += 1;
    }

    fn flush_latency(&mut self) {
        if self.n == 0 {
            return;
        }
        let mut h = self
            .shared
            .latency
            .shard(self.shard)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for &v in &self.lat[..self.n] {
            h.saturating_record(v);
        }
        self.n = 0;
    }

    /// End of one WebSocket message: publish counters and latencies.
    pub fn end_message(&mut self, now_us: u64) {
        if self.count > 0 {
            self.shared
                .delivered
                .fetch_add(self.count, Ordering::Relaxed);
            self.shared
                .last_delivery_us
                .fetch_max(now_us, Ordering::Relaxed);
            self.count = 0;
        }
        self.flush_latency();
    }
}

/// One client connection of any kind and transport.
pub enum Conn {
    Herald(herald::HeraldConn),
    SocketIo(socketio::SioConn),
    HeraldLp(longpoll::LpConn),
    SocketIoPolling(polling::PollingConn),
    HeraldSse(sse::SseConn),
}

impl Conn {
    /// Connects from source address `src` (an SSE stream starts at ident, which it needs).
    pub async fn open(ep: &Endpoint, src: Ipv4Addr) -> Result<Conn, ClientError> {
        if let Some(why) = ep.transport.unsupported(ep.kind) {
            return Err(ClientError::Unsupported(why));
        }
        if ep.transport == Transport::Ws {
            let ws = crate::net::connect_ws(&ep.ws_url(), ep.addr, src, ep.read_buffer, ep.timeout)
                .await?;
            return Ok(match ep.kind {
                Kind::Herald => Conn::Herald(herald::HeraldConn::new(ws)),
                Kind::SocketIo => Conn::SocketIo(socketio::SioConn::new(ws)),
            });
        }
        let fut = async {
            Ok(match (ep.kind, ep.transport) {
                (Kind::Herald, Transport::Sse) => Conn::HeraldSse(sse::SseConn::new(ep, src)),
                (Kind::Herald, _) => Conn::HeraldLp(longpoll::LpConn::open(ep, src).await?),
                (Kind::SocketIo, _) => {
                    Conn::SocketIoPolling(polling::PollingConn::open(ep, src).await?)
                }
            })
        };
        tokio::time::timeout(ep.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout("opening a session"))?
    }

    /// Identifies as `user` and joins `channels` in one step. Events that arrive while
    /// waiting (recovered ones follow the reply, possibly in the same message) go to `sink`.
    pub async fn ident(
        &mut self,
        ep: &Endpoint,
        user: &str,
        channels: &[ChannelReq],
        sio_resume: Option<(&str, &str)>,
        sink: &mut Sink<'_>,
    ) -> Result<IdentReply, ClientError> {
        let fut = async {
            match self {
                Conn::Herald(c) => {
                    let token = crate::token::mint(&ep.jwt_secret, user);
                    c.ident(&token, channels, sink).await
                }
                Conn::SocketIo(c) => c.ident(user, channels, sio_resume, sink).await,
                Conn::HeraldLp(c) => {
                    let token = crate::token::mint(&ep.jwt_secret, user);
                    c.ident(&token, channels, sink).await
                }
                Conn::SocketIoPolling(c) => c.ident(user, channels, sio_resume, sink).await,
                Conn::HeraldSse(c) => {
                    let token = crate::token::mint(&ep.jwt_secret, user);
                    c.ident(&token, channels, sink).await
                }
            }
        };
        tokio::time::timeout(ep.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout("ident reply"))?
    }

    /// The `reconnect_delay` (ms) of the disconnect that ended the last [`Conn::run`]; Herald
    /// over a WebSocket only.
    pub fn reconnect_delay(&self) -> Option<u64> {
        match self {
            Conn::Herald(c) => c.reconnect_delay,
            _ => None,
        }
    }

    /// Reads events into `sink` until `stop` resolves or the connection ends.
    pub async fn run(
        &mut self,
        sink: &mut Sink<'_>,
        stop: std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    ) -> RunEnd {
        match self {
            Conn::Herald(c) => c.run(sink, stop).await,
            Conn::SocketIo(c) => c.run(sink, stop).await,
            Conn::HeraldLp(c) => c.run(sink, stop).await,
            Conn::SocketIoPolling(c) => c.run(sink, stop).await,
            Conn::HeraldSse(c) => c.run(sink, stop).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_borrows_channel_names() {
        let v: Via<'_> = serde_json::from_str(r#"{"bench":42,"@alice":7}"#).unwrap();
        assert_eq!(v.0, vec![("bench", 42), ("@alice", 7)]);
        assert!(serde_json::from_str::<Via<'_>>(r#"{"bench":-1}"#).is_err());
        assert!(serde_json::from_str::<Via<'_>>(r#"[1]"#).is_err());
    }

    #[test]
    fn sink_counts_and_records() {
        let shared = Shared::new();
        let mut s = Sink::new(Tracker::expect(&["bench"]), &shared, 3);
        for off in 1..=100 {
            let via = Via(vec![("bench", off)]);
            s.event(&via, Some(1_000), 3_000);
        }
        s.end_message(5_000);
        assert_eq!(shared.delivered.load(Ordering::Relaxed), 100);
        assert_eq!(shared.last_delivery_us.load(Ordering::Relaxed), 5_000);
        let h = shared.latency.merged();
        assert_eq!(h.len(), 100);
        assert_eq!(h.max(), 2_000);
        assert_eq!(s.tracker.last("bench"), 100);
    }
}
