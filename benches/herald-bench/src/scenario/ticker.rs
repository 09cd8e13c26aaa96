//! A publisher at a fixed rate over HTTP: one event per tick, round-robin over a set of
//! channels, each in its own request so a slow answer does not shift the schedule.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::publish::{Publisher, To};
use crate::stats::Published;

/// What a [`publish_at_rate`] run published, and what failed.
#[derive(Debug, Default)]
pub struct Ticked {
    pub published: Published,
    pub events: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Publishes `rate` events a second to `channels` (event n to channel n mod len) for
/// `duration` or until `stop`, with at most 64 requests in flight.
pub async fn publish_at_rate(
    publisher: &Publisher,
    channels: Arc<[String]>,
    rate: f64,
    duration: Duration,
    stop: &CancellationToken,
) -> Ticked {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let end = tokio::time::Instant::now() + duration;
    let mut tasks = JoinSet::new();
    let mut n = 0u64;
    while !channels.is_empty() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if tokio::time::Instant::now() >= end {
            break;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let to = To::Channel(channels[(n % channels.len() as u64) as usize].clone());
        let p = publisher.clone();
        tasks.spawn(async move {
            let mut published = Published::default();
            let res = p.publish(&[(to, n)], "", false, &mut published).await;
            drop(permit);
            (published, res.err().map(|e| e.to_string()))
        });
        n += 1;
    }
    let mut out = Ticked {
        events: n,
        ..Ticked::default()
    };
    while let Some(done) = tasks.join_next().await {
        let Ok((published, err)) = done else {
            out.errors += 1;
            continue;
        };
        out.published.merge(&published);
        if let Some(e) = err {
            out.errors += 1;
            out.first_error.get_or_insert(e);
        }
    }
    out
}
