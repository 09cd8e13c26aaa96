//! The bounded frame queue between the core and one connection's writer.
//!
//! Hand-written instead of `tokio::sync::mpsc` because a gateway holds tens of thousands of
//! these, mostly idle: tokio's channel allocates a 32-slot block up front (about 1 KiB per
//! connection), while this one allocates only when frames are queued and gives the memory
//! back once the writer has drained a burst. Senders never wait: a full queue is reported
//! to the caller, which cuts the connection rather than block the fan-out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

/// A drained queue whose buffer grew past this many frames releases it.
const SHRINK_ABOVE: usize = 64;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue holds its capacity already.
    #[error("queue full")]
    Full,
    /// The receiver is gone.
    #[error("queue closed")]
    Closed,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Bytes>,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    capacity: usize,
    state: Mutex<State>,
    ready: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a consistent VecDeque; keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A queue of at most `capacity` frames, and its two ends.
pub fn frame_queue(capacity: usize) -> (FrameSender, FrameReceiver) {
    let shared = Arc::new(Shared {
        capacity,
        state: Mutex::default(),
        ready: Notify::new(),
    });
    (FrameSender(shared.clone()), FrameReceiver(shared))
}

/// The core's end: queues frames without waiting.
#[derive(Debug)]
pub struct FrameSender(Arc<Shared>);

impl FrameSender {
    /// Queues a frame.
    ///
    /// # Errors
    /// [`QueueError::Full`] at capacity, [`QueueError::Closed`] once the receiver is gone.
    pub fn try_send(&self, frame: Bytes) -> Result<(), QueueError> {
        {
            let mut state = self.0.lock();
            if state.closed {
                return Err(QueueError::Closed);
            }
            if state.frames.len() >= self.0.capacity {
                return Err(QueueError::Full);
            }
            state.frames.push_back(frame);
        }
        // Stores a permit when the writer is not waiting, so no wake-up is lost.
        self.0.ready.notify_one();
        Ok(())
    }
}

impl Drop for FrameSender {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_one();
    }
}

/// The writer's end.
#[derive(Debug)]
pub struct FrameReceiver(Arc<Shared>);

impl FrameReceiver {
    /// Waits for frames and moves up to `limit` of them into `out`; returns how many, or 0
    /// once the sender is gone and the queue is empty. Cancel-safe.
    pub async fn recv_many(&mut self, out: &mut Vec<Bytes>, limit: usize) -> usize {
        loop {
            {
                let mut state = self.0.lock();
                let n = state.frames.len().min(limit);
                if n > 0 {
                    out.extend(state.frames.drain(..n));
                    if state.frames.is_empty() && state.frames.capacity() > SHRINK_ABOVE {
                        state.frames = VecDeque::new();
                    }
                    return n;
                }
                if state.closed {
                    return 0;
                }
            }
            self.0.ready.notified().await;
        }
    }

    /// Takes one queued frame, if any.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        self.0.lock().frames.pop_front()
    }
}

impl Drop for FrameReceiver {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.closed = true;
        state.frames.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_ordered_and_closable() {
        let (tx, mut rx) = frame_queue(3);
        for i in 0..3u8 {
            tx.try_send(Bytes::from(vec![i])).unwrap();
        }
        assert_eq!(tx.try_send(Bytes::new()), Err(QueueError::Full));
        let mut out = Vec::new();
        assert_eq!(rx.recv_many(&mut out, 2).await, 2);
        assert_eq!(rx.recv_many(&mut out, 10).await, 1);
        assert_eq!(
            out,
            [
                Bytes::from(vec![0]),
                Bytes::from(vec![1]),
                Bytes::from(vec![2])
            ]
        );

        let waiter = tokio::spawn(async move {
            let mut out = Vec::new();
            let n = rx.recv_many(&mut out, 10).await;
            (n, rx.recv_many(&mut out, 10).await)
        });
        tokio::task::yield_now().await;
        tx.try_send(Bytes::from_static(b"x")).unwrap();
        drop(tx);
        assert_eq!(waiter.await.unwrap(), (1, 0), "a frame, then closed");

        let (tx, rx) = frame_queue(1);
        drop(rx);
        assert_eq!(tx.try_send(Bytes::new()), Err(QueueError::Closed));
    }

    #[tokio::test]
    async fn drained_bursts_give_memory_back() {
        let (tx, mut rx) = frame_queue(1000);
        for _ in 0..500 {
            tx.try_send(Bytes::new()).unwrap();
        }
        let mut out = Vec::new();
        while rx.recv_many(&mut out, 256).await == 256 {}
        assert_eq!(rx.0.lock().frames.capacity(), 0);
    }
}
