//! Per-connection rate limits: token buckets for client frames and for client publishes.
//! A frame over the limit is answered 4029; a connection refused more than a second's worth
//! of frames within [`ABUSE_WINDOW_MS`] is disconnected.

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
}
