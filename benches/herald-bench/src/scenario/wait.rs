//! Waiting, bounded in time, for a counter that client tasks move.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::client::Shared;

/// Waits until `c` reaches `n`; false when `limit` passed first.
pub async fn wait_count(c: &AtomicUsize, n: usize, limit: Duration) -> bool {
    let start = Instant::now();
    while c.load(Ordering::Relaxed) < n {
        if start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Waits until `n` events were delivered in all; false when `limit` passed first.
pub async fn wait_delivered(shared: &Shared, n: u64, limit: Duration) -> bool {
    let start = Instant::now();
    while shared.delivered.load(Ordering::Relaxed) < n {
        if start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}
