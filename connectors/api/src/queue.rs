//! The bounded outbox between the core and one connection's writer: frames in order, then
//! the disconnect that ends the connection.
//!
//! Hand-written instead of `tokio::sync::mpsc` because a gateway holds tens of thousands of
//! these, mostly idle: tokio's channel allocates a 32-slot block up front (about 1 KiB per
//! connection), while this one allocates only when frames are queued and gives the memory
//! back once the writer has drained a burst. Senders never wait: a full queue is reported
//! to the caller, which cuts the connection rather than block the fan-out. The disconnect
//! lives under the same lock and wakes the same waiter, so a woken writer touches one
//! structure, and wakes only when the queue turns non-empty or the connection ends.
//!
//! Two lanes share the one FIFO. *Live* frames (events, replies, notices) are bounded in
//! frames and in bytes ([`OutboxLimits`]); past either bound the caller cuts the connection
//! (4102). *Backlog* frames (a reply and the events a recovery replays) are queued all at
//! once, against a separate budget the caller checks first with [`FrameSender::backlog_room`],
//! so a recovery larger than the live bound completes instead of tripping it, and a recovery
//! larger than the budget is refused before anything is queued. A connection holds at most
//! both bounds' worth.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::channel::ChannelName;
use crate::session::Disconnect;

/// A drained queue whose buffer grew past this many frames releases it.
const SHRINK_ABOVE: usize = 64;

/// The bounds of one outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Most live frames queued.
    pub frames: usize,
    /// Most bytes of live frames queued; one frame larger than this still fits an empty queue.
    pub bytes: usize,
    /// Most backlog (recovery) frames queued.
    pub backlog_frames: usize,
    /// Most bytes of backlog frames queued.
    pub backlog_bytes: usize,
}

/// Room left in the backlog lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogRoom {
    /// Frames that still fit.
    pub frames: usize,
    /// Bytes that still fit.
    pub bytes: usize,
}

/// What an event frame is, for transports that write events in their own format (SSE's
/// `event:` and `id:` lines) instead of parsing every frame back. Only connections opened
/// with [`crate::PeerInfo::event_meta`] get it; it is shared by every such recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// The event's name.
    pub event: Arc<str>,
    /// Every channel the recipient matched through, with the event's offset there.
    pub via: Vec<(ChannelName, u64)>,
}

/// One queued frame, with its event metadata when the connection asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFrame {
    /// The frame: one line of compact JSON.
    pub frame: Bytes,
    /// What the frame is, for an event frame on a connection that wants it.
    pub meta: Option<Arc<EventMeta>>,
}

impl OutFrame {
    /// A frame without metadata.
    pub fn plain(frame: Bytes) -> Self {
        Self { frame, meta: None }
    }
}

impl From<OutFrame> for Bytes {
    fn from(out: OutFrame) -> Self {
        out.frame
    }
}

/// What a channel's events do when a connection's live lane is full (the `[[channels]]`
/// rule's `backpressure`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backpressure {
    /// The connection is cut with 4102 and recovers through offsets.
    #[default]
    Disconnect,
    /// The oldest queued events of such channels make room; the client is told, in a
    /// `missed` frame where they were, how many of which channel and their offsets.
    DropOldest,
    /// A queued event of the channel not yet written is replaced by the newer one: the
    /// client gets the newest (tickers, cursors).
    Latest,
}

/// An event frame's one channel, its offset there and that channel's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTag {
    /// The channel.
    pub channel: ChannelName,
    /// The event's offset in it.
    pub offset: u64,
    /// What the channel's events do when the lane is full.
    pub policy: Backpressure,
}

/// What became of a frame [`FrameSender::try_send_event`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued after the others.
    Queued,
    /// It replaced a queued event of its channel (`latest`).
    Replaced,
    /// Queued after this many older events were dropped (`drop_oldest`).
    Dropped(usize),
}

/// Events dropped from one channel's queue: a `missed` frame tells the client.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Missed {
    channel: ChannelName,
    count: u64,
    from: u64,
    to: u64,
}

impl Missed {
    fn frame(&self) -> Bytes {
        let frame = serde_json::json!({
            "op": "missed",
            "channel": self.channel.as_str(),
            "count": self.count,
            "from": self.from,
            "to": self.to,
        });
        serde_json::to_vec(&frame).unwrap_or_default().into()
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue holds its frame capacity already.
    #[error("queue full (frames)")]
    FullFrames,
    /// The frame would take the queue past its byte capacity.
    #[error("queue full (bytes)")]
    FullBytes,
    /// The receiver is gone.
    #[error("queue closed")]
    Closed,
}

/// What [`Outbox::recv_many`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// This many frames were moved out.
    Frames(usize),
    /// The connection must end; frames still queued are left for [`Outbox::try_recv`].
    Ended(Disconnect),
    /// The sender is gone and nothing is queued.
    Closed,
}

#[derive(Debug)]
struct Item {
    out: OutFrame,
    backlog: bool,
    /// For a live event of a channel with a policy other than `disconnect`.
    tag: Option<EventTag>,
    /// For a `missed` frame: what it reports, so later drops add to it.
    missed: Option<Missed>,
}

impl Item {
    fn live(out: OutFrame, tag: Option<EventTag>) -> Self {
        Self {
            out,
            backlog: false,
            tag,
            missed: None,
        }
    }
}

/// Frames and bytes of one lane.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    frames: usize,
    bytes: usize,
}

impl Usage {
    fn add(&mut self, len: usize) {
        self.frames += 1;
        self.bytes += len;
    }

    fn remove(&mut self, len: usize) {
        self.frames -= 1;
        self.bytes -= len;
    }
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Item>,
    live: Usage,
    backlog: Usage,
    disconnect: Option<Disconnect>,
    closed: bool,
}

impl State {
    fn pop(&mut self) -> Option<OutFrame> {
        let item = self.items.pop_front()?;
        let lane = if item.backlog {
            &mut self.backlog
        } else {
            &mut self.live
        };
        lane.remove(item.out.frame.len());
        Some(item.out)
    }

    /// Replaces the queued, unwritten live event of `tag`'s channel by `out`, if there is one.
    fn replace_latest(&mut self, out: &OutFrame, tag: &EventTag) -> bool {
        let Some(item) = self
            .items
            .iter_mut()
            .rev()
            .find(|i| i.tag.as_ref().is_some_and(|t| t.channel == tag.channel))
        else {
            return false;
        };
        self.live.bytes = self.live.bytes - item.out.frame.len() + out.frame.len();
        item.out = out.clone();
        item.tag = Some(tag.clone());
        true
    }

    /// Drops the oldest queued `drop_oldest` events until a frame of `len` bytes fits,
    /// recording them in their channel's `missed` frame (placed where the first dropped
    /// event was). Returns how many it dropped, or `None` when what is left cannot make
    /// room (the caller cuts the connection then, as without a policy).
    fn drop_oldest(&mut self, limits: &OutboxLimits, len: usize) -> Option<usize> {
        let mut dropped = 0;
        while full(self.live, limits, len).is_some() {
            let at = self.items.iter().position(droppable)?;
            let item = self.items.remove(at)?;
            self.live.remove(item.out.frame.len());
            dropped += 1;
            if let Some(tag) = item.tag {
                self.record_missed(at, &tag);
            }
        }
        Some(dropped)
    }

    /// Adds a dropped event to its channel's queued `missed` frame, or queues one at `at`.
    fn record_missed(&mut self, at: usize, tag: &EventTag) {
        let existing = self
            .items
            .iter_mut()
            .find(|i| i.missed.as_ref().is_some_and(|m| m.channel == tag.channel));
        if let Some(item) = existing {
            if let Some(missed) = item.missed.as_mut() {
                missed.count += 1;
                missed.from = missed.from.min(tag.offset);
                missed.to = missed.to.max(tag.offset);
                let frame = missed.frame();
                self.live.bytes = self.live.bytes - item.out.frame.len() + frame.len();
                item.out = OutFrame::plain(frame);
            }
            return;
        }
        let missed = Missed {
            channel: tag.channel.clone(),
            count: 1,
            from: tag.offset,
            to: tag.offset,
        };
        let out = OutFrame::plain(missed.frame());
        self.live.add(out.frame.len());
        let mut item = Item::live(out, None);
        item.missed = Some(missed);
        self.items.insert(at.min(self.items.len()), item);
    }

    fn clear(&mut self) {
        self.items.clear();
        self.live = Usage::default();
        self.backlog = Usage::default();
    }
}

/// Which bound a live frame of `len` bytes would pass, if any. A lone frame larger than the
/// byte bound is still taken: a connection must be able to receive one.
fn full(live: Usage, limits: &OutboxLimits, len: usize) -> Option<QueueError> {
    if live.frames >= limits.frames {
        Some(QueueError::FullFrames)
    } else if live.frames > 0 && live.bytes + len > limits.bytes {
        Some(QueueError::FullBytes)
    } else {
        None
    }
}

/// A live event a `drop_oldest` channel may lose to a newer one.
fn droppable(item: &Item) -> bool {
    item.tag
        .as_ref()
        .is_some_and(|t| t.policy == Backpressure::DropOldest)
}

#[derive(Debug)]
struct Shared {
    limits: OutboxLimits,
    state: Mutex<State>,
    ready: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a consistent state; keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An outbox bounded by `limits`, and its sending end.
pub fn outbox(limits: OutboxLimits) -> (FrameSender, Outbox) {
    let shared = Arc::new(Shared {
        limits,
        state: Mutex::default(),
        ready: Notify::new(),
    });
    (FrameSender(shared.clone()), Outbox(shared))
}

/// The core's end: queues frames without waiting, and ends the connection.
#[derive(Debug)]
pub struct FrameSender(Arc<Shared>);

impl FrameSender {
    /// Queues a live frame.
    ///
    /// # Errors
    /// [`QueueError::FullFrames`] or [`QueueError::FullBytes`] at a bound,
    /// [`QueueError::Closed`] once the receiver is gone.
    pub fn try_send(&self, out: OutFrame) -> Result<(), QueueError> {
        self.try_send_event(out, None).map(drop)
    }

    /// Queues a live frame; an event of a channel whose policy is not `disconnect` (`tag`)
    /// replaces its channel's queued event (`latest`) or makes room by dropping older ones
    /// (`drop_oldest`) instead of failing.
    ///
    /// # Errors
    /// As [`Self::try_send`], when the policy cannot make room either.
    pub fn try_send_event(&self, out: OutFrame, tag: Option<EventTag>) -> Result<Sent, QueueError> {
        let (was_empty, sent) = {
            let mut state = self.0.lock();
            if state.closed {
                return Err(QueueError::Closed);
            }
            if let Some(tag) = tag.as_ref().filter(|t| t.policy == Backpressure::Latest) {
                if state.replace_latest(&out, tag) {
                    return Ok(Sent::Replaced);
                }
            }
            let limits = &self.0.limits;
            let len = out.frame.len();
            let mut sent = Sent::Queued;
            if let Some(full) = full(state.live, limits, len) {
                let dropping = tag
                    .as_ref()
                    .is_some_and(|t| t.policy == Backpressure::DropOldest);
                match dropping.then(|| state.drop_oldest(limits, len)).flatten() {
                    Some(dropped) => sent = Sent::Dropped(dropped),
                    None => return Err(full),
                }
            }
            state.live.add(len);
            state.items.push_back(Item::live(out, tag));
            (state.items.len() == 1, sent)
        };
        // A non-empty queue was signalled when it turned non-empty and the writer drains it
        // before it waits again, so only that transition wakes it. A stored permit covers a
        // writer that is not waiting yet.
        if was_empty {
            self.0.ready.notify_one();
        }
        Ok(sent)
    }

    /// What the backlog lane still takes.
    pub fn backlog_room(&self) -> BacklogRoom {
        let state = self.0.lock();
        let limits = &self.0.limits;
        BacklogRoom {
            frames: limits.backlog_frames.saturating_sub(state.backlog.frames),
            bytes: limits.backlog_bytes.saturating_sub(state.backlog.bytes),
        }
    }

    /// Queues `frames` in order, together, in the backlog lane. The caller checked
    /// [`Self::backlog_room`]: this lane has no bound check of its own, because what is
    /// refused must be refused before the reply that announces it is built.
    ///
    /// # Errors
    /// [`QueueError::Closed`] once the receiver is gone.
    pub fn send_backlog(
        &self,
        frames: impl IntoIterator<Item = OutFrame>,
    ) -> Result<(), QueueError> {
        let was_empty = {
            let mut state = self.0.lock();
            if state.closed {
                return Err(QueueError::Closed);
            }
            let was_empty = state.items.is_empty();
            for out in frames {
                state.backlog.add(out.frame.len());
                state.items.push_back(Item {
                    out,
                    backlog: true,
                    tag: None,
                    missed: None,
                });
            }
            was_empty && !state.items.is_empty()
        };
        if was_empty {
            self.0.ready.notify_one();
        }
        Ok(())
    }

    /// Ends the connection unless it is ending already; returns whether this call ended it.
    pub fn end(&self, disconnect: Disconnect) -> bool {
        {
            let mut state = self.0.lock();
            if state.disconnect.is_some() {
                return false;
            }
            state.disconnect = Some(disconnect);
        }
        self.0.ready.notify_one();
        true
    }

    /// Whether the connection is ending.
    pub fn is_ending(&self) -> bool {
        self.0.lock().disconnect.is_some()
    }
}

impl Drop for FrameSender {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_one();
    }
}

/// The writer's end: what the core sends to one connection.
#[derive(Debug)]
pub struct Outbox(Arc<Shared>);

impl Outbox {
    /// Waits for frames and moves up to `limit` of them into `out` (as [`Bytes`] for a
    /// transport that only moves bytes, or as [`OutFrame`]s), or for the disconnect, which
    /// comes first when both are there. Cancel-safe.
    pub async fn recv_many<T: From<OutFrame>>(
        &mut self,
        out: &mut Vec<T>,
        limit: usize,
    ) -> Received {
        loop {
            {
                let mut state = self.0.lock();
                if let Some(disconnect) = &state.disconnect {
                    return Received::Ended(disconnect.clone());
                }
                let n = state.items.len().min(limit);
                if n > 0 {
                    out.extend((0..n).filter_map(|_| state.pop()).map(T::from));
                    if state.items.is_empty() && state.items.capacity() > SHRINK_ABOVE {
                        state.items = VecDeque::new();
                    }
                    return Received::Frames(n);
                }
                if state.closed {
                    return Received::Closed;
                }
            }
            self.0.ready.notified().await;
        }
    }

    /// Waits until the connection is told to end (never, if the sender goes away without
    /// ending it). For a writer blocked on the network; it takes `&mut self` so it cannot
    /// wait beside [`Self::recv_many`], with which it shares one wake-up. Cancel-safe.
    pub async fn ended(&mut self) -> Disconnect {
        loop {
            if let Some(disconnect) = &self.0.lock().disconnect {
                return disconnect.clone();
            }
            self.0.ready.notified().await;
        }
    }

    /// Takes one queued frame, if any.
    pub fn try_recv(&mut self) -> Option<OutFrame> {
        self.0.lock().pop()
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.closed = true;
        state.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bye() -> Disconnect {
        Disconnect::new(4100, "shutdown", true)
    }

    impl FrameSender {
        fn try_send_bytes(&self, frame: Bytes) -> Result<(), QueueError> {
            self.try_send(OutFrame::plain(frame))
        }
    }

    fn limits(frames: usize) -> OutboxLimits {
        OutboxLimits {
            frames,
            bytes: usize::MAX,
            backlog_frames: frames,
            backlog_bytes: usize::MAX,
        }
    }

    fn event(channel: &str, offset: u64, policy: Backpressure) -> (OutFrame, Option<EventTag>) {
        let frame = Bytes::from(format!("{channel}:{offset}"));
        let tag = EventTag {
            channel: ChannelName::parse(channel).unwrap(),
            offset,
            policy,
        };
        (OutFrame::plain(frame), Some(tag))
    }

    fn drain(outbox: &mut Outbox) -> Vec<String> {
        std::iter::from_fn(|| outbox.try_recv())
            .map(|out| String::from_utf8_lossy(&out.frame).into_owned())
            .collect()
    }

    #[test]
    fn latest_keeps_the_newest_queued_event_of_its_channel_only() {
        let (tx, mut rx) = outbox(limits(3));
        for offset in 1..=100 {
            let (out, tag) = event("ticker", offset, Backpressure::Latest);
            tx.try_send_event(out, tag).unwrap();
        }
        let (out, tag) = event("other", 1, Backpressure::Latest);
        assert_eq!(tx.try_send_event(out, tag), Ok(Sent::Queued));
        tx.try_send_bytes(Bytes::from_static(b"reply")).unwrap();
        assert_eq!(drain(&mut rx), ["ticker:100", "other:1", "reply"]);
    }

    #[test]
    fn drop_oldest_makes_room_and_says_what_was_dropped_where_it_was() {
        let (tx, mut rx) = outbox(limits(4));
        tx.try_send_bytes(Bytes::from_static(b"reply")).unwrap();
        for offset in 1..=10 {
            let (out, tag) = event("feed", offset, Backpressure::DropOldest);
            assert!(
                tx.try_send_event(out, tag).is_ok(),
                "offset {offset} queued"
            );
        }
        let frames = drain(&mut rx);
        assert_eq!(frames[0], "reply", "what is not droppable stays");
        let missed: serde_json::Value = serde_json::from_str(&frames[1]).unwrap();
        assert_eq!(
            missed,
            serde_json::json!({"op":"missed","channel":"feed","count":8,"from":1,"to":8})
        );
        assert_eq!(&frames[2..], ["feed:9", "feed:10"]);
        let (out, tag) = event("strict", 1, Backpressure::Disconnect);
        for _ in 0..4 {
            let _ = tx.try_send_event(out.clone(), tag.clone());
        }
        assert_eq!(
            tx.try_send_event(out, tag),
            Err(QueueError::FullFrames),
            "nothing droppable: the connection is cut as before"
        );
    }

    #[tokio::test]
    async fn bounded_ordered_and_closable() {
        let (tx, mut rx) = outbox(limits(3));
        for i in 0..3u8 {
            tx.try_send_bytes(Bytes::from(vec![i])).unwrap();
        }
        assert_eq!(tx.try_send_bytes(Bytes::new()), Err(QueueError::FullFrames));
        let mut out: Vec<Bytes> = Vec::new();
        assert_eq!(rx.recv_many(&mut out, 2).await, Received::Frames(2));
        assert_eq!(rx.recv_many(&mut out, 10).await, Received::Frames(1));
        assert_eq!(
            out,
            [
                Bytes::from(vec![0]),
                Bytes::from(vec![1]),
                Bytes::from(vec![2])
            ]
        );

        let waiter = tokio::spawn(async move {
            let mut out: Vec<Bytes> = Vec::new();
            let first = rx.recv_many(&mut out, 10).await;
            (first, rx.recv_many(&mut out, 10).await)
        });
        tokio::task::yield_now().await;
        tx.try_send_bytes(Bytes::from_static(b"x")).unwrap();
        drop(tx);
        assert_eq!(
            waiter.await.unwrap(),
            (Received::Frames(1), Received::Closed),
            "a frame, then closed"
        );

        let (tx, rx) = outbox(limits(1));
        drop(rx);
        assert_eq!(tx.try_send_bytes(Bytes::new()), Err(QueueError::Closed));
    }

    #[tokio::test]
    async fn a_waiting_writer_sees_every_frame_though_only_the_first_wakes_it() {
        let (tx, mut rx) = outbox(limits(100));
        let writer = tokio::spawn(async move {
            let mut out: Vec<Bytes> = Vec::new();
            while out.len() < 30 {
                let Received::Frames(_) = rx.recv_many(&mut out, 4).await else {
                    break;
                };
                tokio::task::yield_now().await;
            }
            out.len()
        });
        for round in 0..10u8 {
            for i in 0..3u8 {
                tx.try_send_bytes(Bytes::from(vec![round, i])).unwrap();
            }
            tokio::task::yield_now().await;
        }
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), writer)
            .await
            .expect("the writer was left waiting with frames queued")
            .unwrap();
        assert_eq!(got, 30);
    }

    #[tokio::test]
    async fn the_disconnect_comes_before_queued_frames_and_wakes_a_blocked_writer() {
        let (tx, mut rx) = outbox(limits(10));
        tx.try_send_bytes(Bytes::from_static(b"a")).unwrap();
        assert!(!tx.is_ending());
        assert!(tx.end(bye()));
        assert!(
            !tx.end(Disconnect::new(4102, "too slow", true)),
            "first wins"
        );
        assert!(tx.is_ending());
        let mut out: Vec<Bytes> = Vec::new();
        assert_eq!(rx.recv_many(&mut out, 10).await, Received::Ended(bye()));
        assert_eq!(
            rx.try_recv().map(Bytes::from),
            Some(Bytes::from_static(b"a")),
            "left queued"
        );

        let (tx, mut rx) = outbox(limits(10));
        let blocked = tokio::spawn(async move { rx.ended().await });
        tokio::task::yield_now().await;
        tx.try_send_bytes(Bytes::from_static(b"b")).unwrap();
        tokio::task::yield_now().await;
        assert!(!blocked.is_finished(), "a frame is no disconnect");
        tx.end(bye());
        assert_eq!(blocked.await.unwrap(), bye());
    }

    #[tokio::test]
    async fn drained_bursts_give_memory_back() {
        let (tx, mut rx) = outbox(limits(1000));
        for _ in 0..500 {
            tx.try_send_bytes(Bytes::new()).unwrap();
        }
        let mut out: Vec<Bytes> = Vec::new();
        while rx.recv_many(&mut out, 256).await == Received::Frames(256) {}
        assert_eq!(rx.0.lock().items.capacity(), 0);
    }

    #[tokio::test]
    async fn live_frames_are_bounded_in_bytes_too() {
        let (tx, mut rx) = outbox(OutboxLimits {
            bytes: 10,
            ..limits(100)
        });
        let big = Bytes::from(vec![b'x'; 64]);
        tx.try_send_bytes(big.clone())
            .expect("one frame fits an empty queue");
        assert_eq!(
            tx.try_send_bytes(Bytes::from_static(b"y")),
            Err(QueueError::FullBytes)
        );
        let mut out: Vec<Bytes> = Vec::new();
        rx.recv_many(&mut out, 10).await;
        tx.try_send_bytes(Bytes::from(vec![b'z'; 6])).unwrap();
        tx.try_send_bytes(Bytes::from(vec![b'z'; 4])).unwrap();
        assert_eq!(
            tx.try_send_bytes(Bytes::from_static(b"!")),
            Err(QueueError::FullBytes)
        );
    }

    #[tokio::test]
    async fn the_backlog_has_its_own_budget_and_keeps_its_place_in_line() {
        let (tx, mut rx) = outbox(OutboxLimits {
            frames: 2,
            bytes: usize::MAX,
            backlog_frames: 5,
            backlog_bytes: 100,
        });
        tx.try_send_bytes(Bytes::from_static(b"live1")).unwrap();
        assert_eq!(
            tx.backlog_room(),
            BacklogRoom {
                frames: 5,
                bytes: 100
            }
        );
        let backlog: Vec<Bytes> = (0..5).map(|i| Bytes::from(vec![b'0' + i; 10])).collect();
        tx.send_backlog(backlog.iter().cloned().map(OutFrame::plain))
            .unwrap();
        assert_eq!(
            tx.backlog_room(),
            BacklogRoom {
                frames: 0,
                bytes: 50
            }
        );
        tx.try_send_bytes(Bytes::from_static(b"live2"))
            .expect("the backlog does not count against the live bound");
        assert_eq!(
            tx.try_send_bytes(Bytes::from_static(b"x")),
            Err(QueueError::FullFrames)
        );
        let mut out: Vec<Bytes> = Vec::new();
        rx.recv_many(&mut out, 100).await;
        let mut expected = vec![Bytes::from_static(b"live1")];
        expected.extend(backlog);
        expected.push(Bytes::from_static(b"live2"));
        assert_eq!(out, expected);
        assert_eq!(
            tx.backlog_room(),
            BacklogRoom {
                frames: 5,
                bytes: 100
            },
            "draining frees the budget"
        );
    }
}
