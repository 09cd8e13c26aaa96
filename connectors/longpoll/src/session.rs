//! One long-poll session: the core's session, and the frames sent but not yet acknowledged.
//!
//! Frames leave the outbox only when a poll takes them, get the next `seq`, and stay in the
//! un-acked buffer until a later poll acknowledges them, so a poll response lost on the way is
//! sent again. The buffer is bounded in bytes: past the bound frames stay in the outbox,
//! whose own bound then cuts a client that polls but never acknowledges (4102), as it cuts a
//! WebSocket client that stops reading. A session holds no task: a poll drives it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use herald_connector_api::{ClientSession, Outbox, Received};
use tokio_util::sync::CancellationToken;

/// Frames moved from the outbox per step while filling: one, so the buffer stops within one
/// frame of its byte bound (a poll is an HTTP round trip; a lock per frame is noise to it).
const FILL_STEP: usize = 1;

/// Frames a waiting poll takes at once when the first ones arrive.
const WAKE_STEP: usize = 64;

/// A session as the long-poll transport keeps it.
pub struct LpSession {
    /// The connection id, `c_…`.
    pub conn: String,
    /// The core's inbound half; `None` once the session ended (dropping it unregisters).
    inbound: Mutex<Option<Box<dyn ClientSession>>>,
    /// The outbound half; a poll holds it while it waits (shared: a parked poll's own task
    /// may hold it).
    pub outbound: Arc<tokio::sync::Mutex<Outbound>>,
    /// When a client last polled or sent.
    last_seen: Mutex<Instant>,
    /// Whether a poll is parked right now (a session is never expired under one).
    polling: AtomicBool,
    /// Cancels the outstanding poll when a newer one arrives.
    poll_cancel: Mutex<CancellationToken>,
}

impl LpSession {
    /// A session around the core's halves.
    pub fn new(inbound: Box<dyn ClientSession>, outbox: Outbox, max_unacked_bytes: usize) -> Self {
        Self {
            conn: inbound.conn_id().to_owned(),
            inbound: Mutex::new(Some(inbound)),
            outbound: Arc::new(tokio::sync::Mutex::new(Outbound::new(
                outbox,
                max_unacked_bytes,
            ))),
            last_seen: Mutex::new(Instant::now()),
            polling: AtomicBool::new(false),
            poll_cancel: Mutex::new(CancellationToken::new()),
        }
    }

    /// Notes that the client is alive.
    pub fn touch(&self) {
        *lock(&self.last_seen) = Instant::now();
    }

    /// Whether nothing was heard for longer than `timeout` and no poll is parked.
    pub fn expired(&self, now: Instant, timeout: std::time::Duration) -> bool {
        !self.polling.load(Ordering::Acquire)
            && now.duration_since(*lock(&self.last_seen)) > timeout
    }

    /// Feeds client frames to the core; `false` when the session has ended.
    pub fn handle_text(&self, text: &str) -> bool {
        match lock(&self.inbound).as_mut() {
            Some(session) => {
                session.handle_text(text);
                true
            }
            None => false,
        }
    }

    /// Ends the session on the core's side: it leaves its channels now.
    pub fn end(&self) {
        lock(&self.inbound).take();
    }

    /// Starts a poll: ends the outstanding one (which answers `[]`) and returns the token
    /// that a newer poll will cancel.
    pub fn start_poll(&self) -> CancellationToken {
        let fresh = CancellationToken::new();
        let older = std::mem::replace(&mut *lock(&self.poll_cancel), fresh.clone());
        older.cancel();
        fresh
    }

    /// Marks a poll as parked (or not).
    pub fn set_polling(&self, parked: bool) {
        self.polling.store(parked, Ordering::Release);
    }
}

/// A poisoned lock still holds consistent data here (plain values); keep going.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckBeyond {
    /// The last `seq` handed out.
    pub last: u64,
}

/// The outbound half: the core's outbox and what was sent but not acknowledged.
pub struct Outbound {
    outbox: Outbox,
    unacked: VecDeque<(u64, Bytes)>,
    unacked_bytes: usize,
    max_unacked_bytes: usize,
    last_seq: u64,
    /// The disconnect frame is in `unacked`: nothing follows it.
    finished: bool,
    /// `seq` of the disconnect frame, once there is one.
    finish_seq: Option<u64>,
}

impl Outbound {
    fn new(outbox: Outbox, max_unacked_bytes: usize) -> Self {
        Self {
            outbox,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            max_unacked_bytes,
            last_seq: 0,
            finished: false,
            finish_seq: None,
        }
    }

    /// Drops every frame up to `ack`.
    ///
    /// # Errors
    /// [`AckBeyond`] when `ack` is past the last `seq` handed out.
    pub fn ack(&mut self, ack: u64) -> Result<(), AckBeyond> {
        if ack > self.last_seq {
            return Err(AckBeyond {
                last: self.last_seq,
            });
        }
        while self.unacked.front().is_some_and(|(seq, _)| *seq <= ack) {
            if let Some((_, frame)) = self.unacked.pop_front() {
                self.unacked_bytes -= frame.len();
            }
        }
        Ok(())
    }

    /// Whether the client acknowledged the disconnect: the session can go.
    pub fn done(&self) -> bool {
        self.finish_seq.is_some() && self.unacked.is_empty()
    }

    /// Whether the disconnect frame has been taken from the outbox.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Whether frames wait for the client.
    pub fn has_frames(&self) -> bool {
        !self.unacked.is_empty()
    }

    /// Moves what the outbox holds now into the un-acked buffer, up to its byte bound (the
    /// disconnect always fits). Returns whether the session ended.
    pub fn fill(&mut self) -> bool {
        let mut frames: Vec<Bytes> = Vec::new();
        while !self.finished && self.unacked_bytes < self.max_unacked_bytes {
            match self.outbox.recv_many(&mut frames, FILL_STEP).now_or_never() {
                Some(Received::Frames(_)) => self.push_all(&mut frames),
                Some(Received::Ended(disconnect)) => {
                    if !disconnect.discards_queue() {
                        while let Some(out) = self.outbox.try_recv() {
                            frames.push(out.frame);
                        }
                        self.push_all(&mut frames);
                    }
                    self.push(disconnect.frame());
                    self.finished = true;
                    self.finish_seq = Some(self.last_seq);
                }
                Some(Received::Closed) => self.finished = true,
                None => break,
            }
        }
        self.finished
    }

    /// Waits until the outbox has something (a frame or the disconnect). Cancel-safe.
    pub async fn wait(&mut self) {
        let mut frames: Vec<Bytes> = Vec::new();
        match self.outbox.recv_many(&mut frames, WAKE_STEP).await {
            Received::Frames(_) => self.push_all(&mut frames),
            // `fill` takes the disconnect (and anything before it) in order.
            Received::Ended(_) | Received::Closed => {}
        }
    }

    fn push_all(&mut self, frames: &mut Vec<Bytes>) {
        for frame in frames.drain(..) {
            self.push(frame);
        }
    }

    fn push(&mut self, frame: Bytes) {
        self.last_seq += 1;
        self.unacked_bytes += frame.len();
        self.unacked.push_back((self.last_seq, frame));
    }

    /// The poll response body: `[{"seq":n,"frame":{…}}, …]` for every un-acked frame.
    pub fn response(&self) -> Bytes {
        let size: usize = self.unacked.iter().map(|(_, f)| f.len() + 32).sum();
        let mut body = Vec::with_capacity(size + 2);
        body.push(b'[');
        for (i, (seq, frame)) in self.unacked.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"seq\":");
            body.extend_from_slice(seq.to_string().as_bytes());
            body.extend_from_slice(b",\"frame\":");
            body.extend_from_slice(frame);
            body.push(b'}');
        }
        body.push(b']');
        Bytes::from(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_connector_api::{outbox, Disconnect, OutFrame, OutboxLimits};

    fn limits() -> OutboxLimits {
        OutboxLimits {
            frames: 100,
            bytes: 1 << 20,
            backlog_frames: 100,
            backlog_bytes: 1 << 20,
        }
    }

    fn send(tx: &herald_connector_api::FrameSender, text: &'static str) {
        tx.try_send(OutFrame::plain(Bytes::from_static(text.as_bytes())))
            .unwrap();
    }

    #[test]
    fn frames_stay_until_acknowledged_and_get_increasing_seqs() {
        let (tx, rx) = outbox(limits());
        let mut out = Outbound::new(rx, 1 << 20);
        send(&tx, r#"{"a":1}"#);
        send(&tx, r#"{"b":2}"#);
        assert!(!out.fill());
        assert_eq!(
            out.response(),
            r#"[{"seq":1,"frame":{"a":1}},{"seq":2,"frame":{"b":2}}]"#
        );
        // The response was lost: the same poll (ack 0) gets the same frames.
        out.ack(0).unwrap();
        out.fill();
        assert_eq!(
            out.response(),
            r#"[{"seq":1,"frame":{"a":1}},{"seq":2,"frame":{"b":2}}]"#
        );
        out.ack(1).unwrap();
        send(&tx, r#"{"c":3}"#);
        out.fill();
        assert_eq!(
            out.response(),
            r#"[{"seq":2,"frame":{"b":2}},{"seq":3,"frame":{"c":3}}]"#
        );
        assert_eq!(out.ack(9), Err(AckBeyond { last: 3 }));
        out.ack(3).unwrap();
        assert_eq!(out.response(), "[]");
    }

    #[test]
    fn the_unacked_buffer_is_bounded_in_bytes_and_the_disconnect_comes_last() {
        let (tx, rx) = outbox(limits());
        let mut out = Outbound::new(rx, 10);
        for _ in 0..5 {
            send(&tx, r#"{"x":"123456"}"#);
        }
        out.fill();
        assert!(out.unacked.len() < 5, "stopped at the byte bound");
        tx.end(Disconnect::new(4100, "shutdown", true));
        out.ack(out.last_seq).unwrap();
        assert!(out.fill(), "ended");
        let body = String::from_utf8(out.response().to_vec()).unwrap();
        assert!(body.ends_with(r#""reconnect":true}}]"#), "{body}");
        assert!(!out.done());
        out.ack(out.last_seq).unwrap();
        assert!(out.done());
    }
}
