//! One client connection as the hub sees it: identity, joined channels and outbound queue.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use herald_connector_api::{outbox, ChannelName, Disconnect, FrameSender, Outbox, QueueError};
use parking_lot::Mutex;

use crate::auth::Identity;

/// Result of queueing a frame to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// In the queue.
    Yes,
    /// The queue was full: the connection is now being cut with 4102.
    Overflowed,
    /// The connection is already gone.
    Gone,
}

/// Shared state of one connection; the hub's tables hold `Arc`s of it.
pub struct Conn {
    /// Numeric id, the key in channel member tables.
    pub key: u64,
    /// `c_…` id as clients and the API see it.
    pub id: Arc<str>,
    /// Set once, at a successful `ident`.
    pub identity: OnceLock<Identity>,
    /// Every channel this connection is a member of, so it can leave them all on close.
    pub channels: Mutex<HashSet<ChannelName>>,
    frames_tx: FrameSender,
}

impl Conn {
    /// A connection with an outbox of `capacity` frames, and the outbox for its transport.
    pub fn new(key: u64, id: Arc<str>, capacity: usize) -> (Arc<Self>, Outbox) {
        let (frames_tx, outbox) = outbox(capacity);
        let conn = Self {
            key,
            id,
            identity: OnceLock::new(),
            channels: Mutex::new(HashSet::new()),
            frames_tx,
        };
        (Arc::new(conn), outbox)
    }

    /// The user id, once identified (empty for anonymous).
    pub fn user(&self) -> &str {
        self.identity.get().map_or("", |id| &id.user)
    }

    /// Ends the connection unless it is ending already; returns whether this call ended it.
    /// The transport sends the disconnect frame and closes.
    pub fn end(&self, disconnect: Disconnect) -> bool {
        self.frames_tx.end(disconnect)
    }

    /// Whether the connection is ending.
    pub fn is_ending(&self) -> bool {
        self.frames_tx.is_ending()
    }

    /// Queues a frame without waiting; a full queue cuts the connection with 4102, so the
    /// sender (the fan-out path) never waits on a slow client and memory stays bounded.
    pub fn queue(&self, frame: Bytes) -> Queued {
        match self.frames_tx.try_send(frame) {
            Ok(()) => Queued::Yes,
            Err(QueueError::Full) => {
                if self.end(Disconnect::new(
                    4102,
                    "too slow: outbound queue overflowed",
                    true,
                )) {
                    Queued::Overflowed
                } else {
                    Queued::Gone
                }
            }
            Err(QueueError::Closed) => Queued::Gone,
        }
    }
}
