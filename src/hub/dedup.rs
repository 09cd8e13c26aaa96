//! The idempotency window: an envelope whose `key` was seen recently is accepted once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_connector_api::Published;
use parking_lot::{Mutex, RawMutex};

type Slot = Arc<Mutex<Option<Published>>>;

/// A claim on a key: either the earlier result, or the right to publish and record it.
pub enum Claim {
    /// The key was accepted before; here is what that publish returned.
    Seen(Published),
    /// First time: publish, then [`Pending::finish`].
    Fresh(Pending),
    /// A new key, but the window holds its most keys already.
    Full,
}

/// Held while the first publish of a key runs; a concurrent duplicate waits on it.
pub struct Pending(parking_lot::ArcMutexGuard<RawMutex, Option<Published>>);

impl Pending {
    /// Records the result; on failure the key stays unclaimed so a retry can publish.
    pub fn finish(mut self, result: Option<&Published>) {
        *self.0 = result.cloned();
    }
}

/// Keys seen within the window, with the result of their publish; at most `max_keys`.
pub struct Dedup {
    window: Duration,
    max_keys: usize,
    seen: Mutex<HashMap<String, (Instant, Slot)>>,
}

impl Dedup {
    /// An empty window of the given length, holding at most `max_keys` keys.
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window,
            max_keys,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Claims `key` for a publish now.
    pub fn claim(&self, key: &str, now: Instant) -> Claim {
        loop {
            let slot = {
                let mut seen = self.seen.lock();
                match seen.get(key) {
                    Some((at, slot)) if now.duration_since(*at) <= self.window => slot.clone(),
                    // Refused rather than evicting a live key: eviction would let a retry
                    // through twice, refusal only asks the publisher to retry later.
                    None if seen.len() >= self.max_keys => return Claim::Full,
                    _ => {
                        let slot: Slot = Arc::default();
                        // Locked before it is visible to others, so a duplicate waits for us.
                        let guard = slot.lock_arc();
                        seen.insert(key.to_owned(), (now, slot));
                        return Claim::Fresh(Pending(guard));
                    }
                }
            };
            // Waits while the first publish of this key is still running.
            if let Some(done) = slot.lock().as_ref() {
                return Claim::Seen(done.clone());
            }
            // The first publish failed: forget it and try to claim the key ourselves.
            let mut seen = self.seen.lock();
            if seen.get(key).is_some_and(|(_, s)| Arc::ptr_eq(s, &slot)) {
                seen.remove(key);
            }
        }
    }

    /// Forgets keys older than the window.
    pub fn expire(&self, now: Instant) {
        self.seen
            .lock()
            .retain(|_, (at, _)| now.duration_since(*at) <= self.window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(id: &str) -> Published {
        Published {
            id: id.into(),
            offsets: Default::default(),
            duplicate: false,
        }
    }

    #[test]
    fn second_claim_sees_the_first_result() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let Claim::Fresh(p) = dedup.claim("k", now) else {
            panic!("fresh")
        };
        p.finish(Some(&published("a")));
        assert!(matches!(dedup.claim("k", now), Claim::Seen(p) if p.id == "a"));
        let later = now + Duration::from_secs(61);
        assert!(
            matches!(dedup.claim("k", later), Claim::Fresh(_)),
            "window passed"
        );
    }

    #[test]
    fn a_failed_first_publish_frees_the_key() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let Claim::Fresh(p) = dedup.claim("k", now) else {
            panic!("fresh")
        };
        p.finish(None);
        assert!(matches!(dedup.claim("k", now), Claim::Fresh(_)));
    }

    #[test]
    fn the_window_holds_at_most_max_keys() {
        let dedup = Dedup::new(Duration::from_secs(60), 2);
        let now = Instant::now();
        for key in ["a", "b"] {
            let Claim::Fresh(p) = dedup.claim(key, now) else {
                panic!("fresh")
            };
            p.finish(Some(&published(key)));
        }
        assert!(matches!(dedup.claim("c", now), Claim::Full));
        assert!(
            matches!(dedup.claim("a", now), Claim::Seen(p) if p.id == "a"),
            "known keys are still answered"
        );
        dedup.expire(now + Duration::from_secs(61));
        assert!(matches!(
            dedup.claim("c", now + Duration::from_secs(61)),
            Claim::Fresh(_)
        ));
    }
}
