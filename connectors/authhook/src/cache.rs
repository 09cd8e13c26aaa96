//! A small time-bounded, size-bounded map of hook answers.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Answers kept for `ttl`, at most `capacity` of them.
pub(crate) struct Cache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> Cache<K, V> {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The answer for `key`, if one is still fresh.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, value)| value.clone())
    }

    /// Keeps `value` for the ttl, or until `expires` when that is sooner.
    pub(crate) fn insert(&self, key: K, value: V, expires: Option<SystemTime>) {
        let mut ttl = self.ttl;
        if let Some(at) = expires {
            ttl = ttl.min(at.duration_since(SystemTime::now()).unwrap_or_default());
        }
        if ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, (until, _)| *until > now);
            if entries.len() >= self.capacity {
                // Still full of fresh answers: forgetting them only costs backend calls.
                entries.clear();
            }
        }
        entries.insert(key, (now + ttl, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_and_the_size_is_bounded() {
        let cache = Cache::new(Duration::from_secs(60), 2);
        cache.insert(1, "a", None);
        assert_eq!(cache.get(&1), Some("a"));
        cache.insert(2, "b", Some(SystemTime::now() - Duration::from_secs(1)));
        assert_eq!(cache.get(&2), None, "already expired: not kept");
        cache.insert(3, "c", None);
        cache.insert(4, "d", None);
        assert!(cache.entries.lock().unwrap().len() <= 2);
        assert_eq!(cache.get(&4), Some("d"));
        let off = Cache::new(Duration::ZERO, 10);
        off.insert(1, "a", None);
        assert_eq!(off.get(&1), None);
    }
}
