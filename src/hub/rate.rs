//! Per-connection rate limits: token buckets for client frames and for client publishes.
//! A frame over the limit is answered 4029; a connection refused more than a second's worth
//! of frames within [`ABUSE_WINDOW_MS`] is disconnected. And the node's own ramp: right after
//! a start, new connections are admitted at a rate that doubles every second.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The window in which refused frames are counted towards a disconnect.
const ABUSE_WINDOW_MS: u32 = 10_000;

/// The configured rates.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// Client frames per second (and the burst).
    pub frames_per_second: u32,
    /// Client publishes per second (and the burst).
    pub publishes_per_second: u32,
}

/// What a connection may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// Within the limit.
    Allowed,
    /// Over it: refuse with 4029.
    Refused,
    /// Over it again and again: disconnect.
    Abusive,
}

/// One connection's buckets; times are milliseconds on the hub's clock.
#[derive(Default)]
pub struct Buckets(Mutex<State>);

#[derive(Default)]
struct State {
    started: bool,
    last_ms: u32,
    frames: f32,
    publishes: f32,
    window_ms: u32,
    refused: u32,
}

impl Buckets {
    /// Takes one frame's token.
    pub fn frame(&self, limits: RateLimits, now_ms: u32) -> Rate {
        let mut state = self.0.lock();
        state.refill(limits, now_ms);
        if state.frames >= 1.0 {
            state.frames -= 1.0;
            return Rate::Allowed;
        }
        if now_ms.wrapping_sub(state.window_ms) > ABUSE_WINDOW_MS {
            state.window_ms = now_ms;
            state.refused = 0;
        }
        state.refused += 1;
        if state.refused > limits.frames_per_second {
            Rate::Abusive
        } else {
            Rate::Refused
        }
    }

    /// Takes one publish's token.
    pub fn publish(&self, limits: RateLimits, now_ms: u32) -> Rate {
        let mut state = self.0.lock();
        state.refill(limits, now_ms);
        if state.publishes >= 1.0 {
            state.publishes -= 1.0;
            Rate::Allowed
        } else {
            Rate::Refused
        }
    }
}

impl State {
    fn refill(&mut self, limits: RateLimits, now_ms: u32) {
        let (frames, publishes) = (
            limits.frames_per_second as f32,
            limits.publishes_per_second as f32,
        );
        if !self.started {
            *self = Self {
                started: true,
                last_ms: now_ms,
                frames,
                publishes,
                window_ms: now_ms,
                refused: 0,
            };
            return;
        }
        let seconds = now_ms.wrapping_sub(self.last_ms) as f32 / 1000.0;
        self.last_ms = now_ms;
        self.frames = (self.frames + seconds * frames).min(frames);
        self.publishes = (self.publishes + seconds * publishes).min(publishes);
    }
}

/// New connections admitted per second during the first `window` after a start: `start`
/// in the first second, doubling each second after; unlimited once the window is over.
pub struct AcceptRamp {
    window: Duration,
    start: f64,
    /// Tokens left, and when they were counted.
    bucket: Mutex<(f64, Option<Instant>)>,
}

impl AcceptRamp {
    /// A ramp over `window` (zero: none) starting at `start` connections per second.
    pub fn new(window: Duration, start: usize) -> Self {
        Self {
            window,
            start: start.max(1) as f64,
            bucket: Mutex::new((start.max(1) as f64, None)),
        }
    }

    /// Whether one more connection may be admitted `since_start` after the hub started.
    pub fn admit(&self, since_start: Duration, now: Instant) -> bool {
        if since_start >= self.window {
            return true;
        }
        let rate = self.start * 2f64.powi(since_start.as_secs().min(60) as i32);
        let mut bucket = self.bucket.lock();
        let (tokens, last) = &mut *bucket;
        if let Some(last) = *last {
            *tokens = (*tokens + now.duration_since(last).as_secs_f64() * rate).min(rate);
        }
        *last = Some(now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_refill_and_abuse() {
        let limits = RateLimits {
            frames_per_second: 10,
            publishes_per_second: 2,
        };
        let buckets = Buckets::default();
        let allowed = (0..10)
            .filter(|_| buckets.frame(limits, 0) == Rate::Allowed)
            .count();
        assert_eq!(allowed, 10, "a full burst");
        assert_eq!(buckets.frame(limits, 0), Rate::Refused);
        assert_eq!(
            buckets.frame(limits, 500),
            Rate::Allowed,
            "half a second refills 5"
        );
        let verdicts: Vec<_> = (0..15).map(|_| buckets.frame(limits, 500)).collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Rate::Allowed).count(), 4);
        assert_eq!(
            verdicts.last(),
            Some(&Rate::Abusive),
            "11 refusals in the window"
        );
        assert_eq!(buckets.publish(limits, 500), Rate::Allowed);
        assert_eq!(buckets.publish(limits, 500), Rate::Allowed);
        assert_eq!(buckets.publish(limits, 500), Rate::Refused);
        assert_eq!(buckets.publish(limits, 1000), Rate::Allowed);
    }

    #[test]
    fn the_accept_ramp_doubles_each_second_and_ends() {
        let ramp = AcceptRamp::new(Duration::from_secs(3), 4);
        let t0 = Instant::now();
        let admitted = |at: Duration| (0..100).filter(|_| ramp.admit(at, t0 + at)).count();
        assert_eq!(admitted(Duration::ZERO), 4, "the first second's burst");
        assert_eq!(
            admitted(Duration::from_millis(500)),
            2,
            "half a second at 4/s"
        );
        assert_eq!(
            admitted(Duration::from_millis(1500)),
            8,
            "a second later at 8/s"
        );
        assert_eq!(admitted(Duration::from_secs(3)), 100, "the ramp is over");
        assert!(
            AcceptRamp::new(Duration::ZERO, 1).admit(Duration::ZERO, t0),
            "no ramp"
        );
    }
}
