//! One client connection as the hub sees it: identity, joined channels and outbound queue.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use herald_connector_api::{
    outbox, BacklogRoom, ChannelName, Disconnect, EventMeta, EventTag, FrameSender, OutFrame,
    Outbox, OutboxLimits, QueueError, Sent,
};
use parking_lot::Mutex;

use crate::auth::Identity;

/// Result of queueing a frame to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// In the queue.
    Yes,
    /// The queue was full (`bytes`: by its byte bound): the connection is now being cut with
    /// 4102.
    Overflowed {
        /// Whether the byte bound (not the frame bound) was hit.
        bytes: bool,
    },
    /// The connection is already gone.
    Gone,
    /// It replaced the connection's queued event of its channel (`latest`).
    Replaced,
    /// Queued after this many older events were dropped (`drop_oldest`).
    Dropped(usize),
}

/// Shared state of one connection; the hub's tables hold `Arc`s of it.
pub struct Conn {
    /// Numeric id, the key in channel member tables.
    pub key: u64,
    /// `c_…` id as clients and the API see it.
    pub id: Arc<str>,
    /// Set once, at a successful `ident`.
    pub identity: OnceLock<Identity>,
    /// Every channel this connection is a member of, so it can leave them all on close. The
    /// broadcast channel is not among them: its membership is [`Self::in_broadcast`].
    pub channels: Mutex<HashSet<ChannelName>>,
    /// Set once the `ident` reply is queued: from then on broadcasts reach this connection.
    in_broadcast: AtomicBool,
    /// Whether event frames are queued with their [`EventMeta`] (the transport asked).
    pub event_meta: bool,
    /// Client `rpc` calls not answered yet.
    pub rpc_in_flight: AtomicUsize,
    /// Set (under the `channels` lock) when the connection leaves the hub, so a hook's late
    /// answer cannot add it to a channel again.
    unregistered: AtomicBool,
    /// While an auth hook's answer is awaited: the frames that came after, in order.
    held: Mutex<Option<VecDeque<Box<str>>>>,
    /// Rate limits on the client's frames and publishes.
    pub rates: super::rate::Buckets,
    /// The client's address, when known: its count in the hub goes when the connection does.
    pub ip: Option<std::net::IpAddr>,
    /// When the connection's credentials expire, Unix seconds (0: never); a `refresh` moves
    /// it, the sweeper ends the connection past it.
    pub expires_at: AtomicU64,
    /// The user whose `max_connections_per_user` this connection counts towards.
    pub counted_user: OnceLock<Arc<str>>,
    frames_tx: FrameSender,
}

/// Frames one connection may have waiting for an auth hook's answer; more get 4029.
pub const MAX_HELD_FRAMES: usize = 256;

/// What [`Conn::hold`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// No hook answer is awaited: handle the frame now.
    No,
    /// Queued behind the awaited answer.
    Yes,
    /// Refused: [`MAX_HELD_FRAMES`] are waiting already.
    Full,
}

impl Conn {
    /// A connection with an outbox bounded by `limits`, and the outbox for its transport.
    pub fn new(
        key: u64,
        id: Arc<str>,
        limits: OutboxLimits,
        event_meta: bool,
        ip: Option<std::net::IpAddr>,
    ) -> (Arc<Self>, Outbox) {
        let (frames_tx, outbox) = outbox(limits);
        let conn = Self {
            key,
            id,
            identity: OnceLock::new(),
            channels: Mutex::new(HashSet::new()),
            in_broadcast: AtomicBool::new(false),
            event_meta,
            rpc_in_flight: AtomicUsize::new(0),
            unregistered: AtomicBool::new(false),
            held: Mutex::new(None),
            rates: super::rate::Buckets::default(),
            ip,
            counted_user: OnceLock::new(),
            expires_at: AtomicU64::new(0),
            frames_tx,
        };
        (Arc::new(conn), outbox)
    }

    /// The user id, once identified (empty for anonymous).
    pub fn user(&self) -> &str {
        self.identity.get().map_or("", |id| &id.user)
    }

    /// Whether broadcasts reach this connection.
    pub fn in_broadcast(&self) -> bool {
        self.in_broadcast.load(Ordering::Acquire)
    }

    /// Lets broadcasts reach this connection; the caller holds the broadcast channel's lock,
    /// so no broadcast is half-way through the registry meanwhile.
    pub fn join_broadcast(&self) {
        self.in_broadcast.store(true, Ordering::Release);
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
        self.queue_out(OutFrame::plain(frame))
    }

    /// Queues an event frame, with its metadata if this connection wants it (`meta` is only
    /// called then, so other transports pay nothing for it).
    /// `tag`: the event's one channel when that channel's backpressure policy is not
    /// `disconnect`.
    pub fn queue_event(
        &self,
        frame: Bytes,
        meta: &dyn Fn() -> Arc<EventMeta>,
        tag: Option<EventTag>,
    ) -> Queued {
        let meta = self.event_meta.then(meta);
        self.queue_tagged(OutFrame { frame, meta }, tag)
    }

    fn queue_out(&self, out: OutFrame) -> Queued {
        self.queue_tagged(out, None)
    }

    fn queue_tagged(&self, out: OutFrame, tag: Option<EventTag>) -> Queued {
        match self.frames_tx.try_send_event(out, tag) {
            Ok(Sent::Queued) => Queued::Yes,
            Ok(Sent::Replaced) => Queued::Replaced,
            Ok(Sent::Dropped(n)) => Queued::Dropped(n),
            Err(full @ (QueueError::FullFrames | QueueError::FullBytes)) => {
                if self.end(Disconnect::new(
                    4102,
                    "too slow: outbound queue overflowed",
                    true,
                )) {
                    Queued::Overflowed {
                        bytes: full == QueueError::FullBytes,
                    }
                } else {
                    Queued::Gone
                }
            }
            Err(QueueError::Closed) => Queued::Gone,
        }
    }

    /// Marks the connection gone from the hub and takes its channels; see [`Self::add_channel`].
    pub fn unregister(&self) -> Vec<ChannelName> {
        let mut channels = self.channels.lock();
        self.unregistered.store(true, Ordering::Release);
        channels.drain().collect()
    }

    /// Records membership of `channel` unless the connection has left the hub; returns
    /// whether it was recorded (the caller then undoes its side of the membership).
    pub fn add_channel(&self, channel: &ChannelName) -> bool {
        let mut channels = self.channels.lock();
        if self.unregistered.load(Ordering::Acquire) {
            return false;
        }
        channels.insert(channel.clone());
        true
    }

    /// Records that this connection counts for `user`, unless it has left the hub (then the
    /// caller gives the count back): under the lock [`Self::unregister`] takes, so the hub
    /// either sees the record when the connection goes or is told here.
    pub fn count_for(&self, user: Arc<str>) -> bool {
        let _channels = self.channels.lock();
        if self.unregistered.load(Ordering::Acquire) {
            return false;
        }
        let _ = self.counted_user.set(user);
        true
    }

    /// Sets when the credentials expire (`None`: never).
    pub fn set_expiry(&self, at: Option<std::time::SystemTime>) {
        let secs = at.map_or(0, |at| {
            at.duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs().max(1))
        });
        self.expires_at.store(secs, Ordering::Release);
    }

    /// Whether the credentials have expired at `now` (Unix seconds).
    pub fn is_expired(&self, now: u64) -> bool {
        let at = self.expires_at.load(Ordering::Acquire);
        at != 0 && at <= now
    }

    /// Whether the connection has left the hub.
    pub fn is_unregistered(&self) -> bool {
        self.unregistered.load(Ordering::Acquire)
    }

    /// From now on frames are held until [`Self::next_held`] runs dry.
    pub fn start_holding(&self) {
        self.held.lock().get_or_insert_with(VecDeque::new);
    }

    /// Holds `frame` behind an awaited hook answer, if one is awaited.
    pub fn hold(&self, frame: &str) -> Held {
        match self.held.lock().as_mut() {
            None => Held::No,
            Some(queue) if queue.len() >= MAX_HELD_FRAMES => Held::Full,
            Some(queue) => {
                queue.push_back(frame.into());
                Held::Yes
            }
        }
    }

    /// The next held frame; when there is none, holding stops (under the same lock, so a
    /// frame arriving meanwhile is either returned here or handled by the transport).
    pub fn next_held(&self) -> Option<Box<str>> {
        let mut held = self.held.lock();
        let next = held.as_mut().and_then(VecDeque::pop_front);
        if next.is_none() {
            *held = None;
        }
        next
    }

    /// What the recovery lane of the outbox still takes.
    pub fn backlog_room(&self) -> BacklogRoom {
        self.frames_tx.backlog_room()
    }

    /// Queues a reply and the events a recovery replays, together and in order; the caller
    /// checked [`Self::backlog_room`].
    pub fn queue_backlog(&self, frames: Vec<OutFrame>) {
        // Closed means the connection is gone; nothing is owed to it.
        let _ = self.frames_tx.send_backlog(frames);
    }
}
