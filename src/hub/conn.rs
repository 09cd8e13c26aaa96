//! One client connection as the hub sees it: identity, joined channels and outbound queue.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use herald_connector_api::{
    frame_queue, ChannelName, Disconnect, DisconnectSignal, FrameReceiver, FrameSender, QueueError,
};
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
    /// Ends the connection; the transport watches it.
    pub disconnect: DisconnectSignal,
    frames_tx: FrameSender,
}

impl Conn {
    /// A connection with an outbound queue of `capacity` frames, and the queue's receiver.
    pub fn new(key: u64, id: Arc<str>, capacity: usize) -> (Arc<Self>, FrameReceiver) {
        let (frames_tx, frames_rx) = frame_queue(capacity);
        let conn = Self {
            key,
            id,
            identity: OnceLock::new(),
            channels: Mutex::new(HashSet::new()),
            disconnect: DisconnectSignal::new(),
            frames_tx,
        };
        (Arc::new(conn), frames_rx)
    }

    /// The user id, once identified (empty for anonymous).
    pub fn user(&self) -> &str {
        self.identity.get().map_or("", |id| &id.user)
    }

    /// Queues a frame without waiting; a full queue cuts the connection with 4102, so the
    /// sender (the fan-out path) never waits on a slow client and memory stays bounded.
    pub fn queue(&self, frame: Bytes) -> Queued {
        match self.frames_tx.try_send(frame) {
            Ok(()) => Queued::Yes,
            Err(QueueError::Full) => {
                if self.disconnect.trigger(Disconnect::new(
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
