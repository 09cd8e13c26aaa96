//! The transport seam: one client connection as the core sees it.
//!
//! A transport (WebSocket, long-poll, SSE) calls [`SessionHub::open`] when a client arrives,
//! feeds every inbound text message to [`ClientSession::handle_text`], and writes out what the
//! core puts in the [`Outbox`]: frames in order, then a [`Disconnect`] when the core (or the
//! transport itself) ends the connection. Dropping the session unregisters the connection.
//! Protocol logic lives entirely in the core, so a new transport only moves bytes.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use serde::Serialize;

use crate::gateway::Since;

/// Who is connecting, as the transport saw it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// `ws`, `longpoll` or `sse`.
    pub transport: &'static str,
    /// The address the connection comes from, when known.
    pub remote: Option<SocketAddr>,
    /// The `X-Forwarded-For` (or `Forwarded`) header as the request carried it; the core
    /// believes it only when `remote` is a proxy it was told to trust.
    pub forwarded: Option<String>,
    /// Whether event frames should come with their [`crate::EventMeta`] (SSE writes `event:`
    /// and `id:` lines from it); transports that only move bytes leave it off and pay nothing.
    pub event_meta: bool,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The configured connection limit is reached.
    #[error("too many connections")]
    TooManyConnections,
    /// The gateway is shutting down.
    #[error("gateway is shutting down")]
    ShuttingDown,
    /// This client address has as many connections as it may.
    #[error("too many connections from this address")]
    TooManyFromAddress,
    /// The node started moments ago and admits new connections gradually.
    #[error("starting up: new connections are admitted gradually, retry shortly")]
    Ramping,
}

impl OpenError {
    /// The contract's code for it: 4100 (shutting down) or 4503 (at capacity).
    pub fn code(&self) -> u16 {
        match self {
            Self::ShuttingDown => 4100,
            Self::TooManyConnections | Self::Ramping => 4503,
            Self::TooManyFromAddress => 4029,
        }
    }
}

impl PeerInfo {
    /// What a transport knows of a request's client: its socket's address and the proxy
    /// header, if any.
    pub fn from_request(
        transport: &'static str,
        remote: Option<SocketAddr>,
        headers: &http::HeaderMap,
        event_meta: bool,
    ) -> Self {
        let forwarded = headers
            .get("x-forwarded-for")
            .or_else(|| headers.get(http::header::FORWARDED))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Self {
            transport,
            remote,
            forwarded,
            event_meta,
        }
    }
}

/// Opens client sessions; implemented by the core.
pub trait SessionHub: Send + Sync + 'static {
    /// Registers a new connection and returns its inbound half and its outbox.
    ///
    /// # Errors
    /// [`OpenError`] when the connection is not admitted.
    fn open(&self, peer: PeerInfo) -> Result<(Box<dyn ClientSession>, crate::Outbox), OpenError>;
}

/// The inbound half of one connection; dropping it unregisters the connection.
pub trait ClientSession: Send {
    /// The connection id, `c_…`.
    fn conn_id(&self) -> &str;
    /// Handles one inbound text message: one frame, a JSON array of frames, or `\n`-separated
    /// frames. Replies and errors go to the outbox; it never waits on the network.
    fn handle_text(&mut self, text: &str);
    /// Identifies the connection and joins (and recovers) `request.channels`, as the `ident`
    /// op does, but answers the transport directly instead of queueing a reply: for
    /// transports that must refuse before anything flows (SSE answers 401/403 as plain
    /// HTTP). Recovered events are queued in the outbox, ahead of any live event. It may
    /// wait for the backend (auth hooks), so it is awaited.
    ///
    /// The future fails with [`IdentRefused`] and the contract's code (4002 bad token, 4003
    /// forbidden channel, 4000 bad channel name, 4503 at capacity).
    fn ident(&mut self, request: IdentRequest) -> IdentFuture<'_>;
}

/// An [`ClientSession::ident`] on its way.
pub type IdentFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Identified, IdentRefused>> + Send + 'a>>;

/// What an `ident` asks for.
#[derive(Debug, Clone, Default)]
pub struct IdentRequest {
    /// The client's token, if any.
    pub token: Option<String>,
    /// Channels to join, each with the position to recover after (`None`: just join).
    pub channels: Vec<(String, Option<Since>)>,
}

/// A successful `ident`: the `data` of its reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identified {
    /// The user id (`""` when anonymous).
    pub user: String,
    /// The connection id.
    pub conn: String,
    /// The node that serves the connection.
    pub node: String,
    /// Every channel the connection is in, with its position.
    pub channels: BTreeMap<String, ChannelPosition>,
}

/// A channel's position as an `ident` reply reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelPosition {
    /// The channel's latest offset.
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: String,
    /// Whether every event after the asked position was queued (false when none was asked).
    pub recovered: bool,
}

/// Why an `ident` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct IdentRefused {
    /// A code from the contract.
    pub code: u16,
    /// What went wrong, for people.
    pub message: String,
}

/// Why and how a connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// A code from the contract (4002, 4008, 4100 …), also the WebSocket close code.
    pub code: u16,
    /// Human-readable reason.
    pub reason: String,
    /// Whether the client should reconnect.
    pub reconnect: bool,
    /// How long the client should wait before it does, so that a restart's clients do not
    /// all come back in the same instant.
    pub reconnect_delay_ms: Option<u64>,
}

impl Disconnect {
    /// A disconnect with the given code, reason and reconnect hint.
    pub fn new(code: u16, reason: impl Into<String>, reconnect: bool) -> Self {
        Self {
            code,
            reason: reason.into(),
            reconnect,
            reconnect_delay_ms: None,
        }
    }

    /// The same, advising the client to wait `ms` before reconnecting.
    pub fn with_reconnect_delay(mut self, ms: u64) -> Self {
        self.reconnect_delay_ms = Some(ms);
        self
    }

    /// The `{"op":"disconnect",…}` frame.
    pub fn frame(&self) -> Bytes {
        let mut json = serde_json::json!({
            "op": "disconnect", "code": self.code, "reason": self.reason, "reconnect": self.reconnect,
        });
        if let Some(ms) = self.reconnect_delay_ms {
            json["reconnect_delay"] = ms.into();
        }
        Bytes::from(json.to_string())
    }

    /// Whether frames still queued must be dropped instead of flushed: a connection cut for
    /// being too slow (4102) recovers through offsets, and flushing is what it failed to do.
    pub fn discards_queue(&self) -> bool {
        self.code == 4102
    }
}
