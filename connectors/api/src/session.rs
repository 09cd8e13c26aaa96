//! The transport seam: one client connection as the core sees it.
//!
//! A transport (WebSocket, long-poll, SSE) calls [`SessionHub::open`] when a client arrives,
//! feeds every inbound text message to [`ClientSession::handle_text`], and writes out what the
//! core puts in the [`Outbox`]: frames in order, then a [`Disconnect`] when the core (or the
//! transport itself) ends the connection. Dropping the session unregisters the connection.
//! Protocol logic lives entirely in the core, so a new transport only moves bytes.

use std::net::SocketAddr;

use bytes::Bytes;

/// Who is connecting, as the transport saw it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// `ws`, `longpoll` or `sse`.
    pub transport: &'static str,
    /// The client's address, when known.
    pub remote: Option<SocketAddr>,
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
}

impl Disconnect {
    /// A disconnect with the given code, reason and reconnect hint.
    pub fn new(code: u16, reason: impl Into<String>, reconnect: bool) -> Self {
        Self {
            code,
            reason: reason.into(),
            reconnect,
        }
    }

    /// The `{"op":"disconnect",…}` frame.
    pub fn frame(&self) -> Bytes {
        let json = serde_json::json!({
            "op": "disconnect", "code": self.code, "reason": self.reason, "reconnect": self.reconnect,
        });
        Bytes::from(json.to_string())
    }

    /// Whether frames still queued must be dropped instead of flushed: a connection cut for
    /// being too slow (4102) recovers through offsets, and flushing is what it failed to do.
    pub fn discards_queue(&self) -> bool {
        self.code == 4102
    }
}
