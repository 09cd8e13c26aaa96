//! `soak`: N connections for a long while under steady HTTP publishing, each at random
//! intervals joining a channel, leaving one, or dropping its connection and resuming every
//! channel from its position. Reports the server's RSS after the warm-up and at the end (and
//! whether the growth stayed within the stated bound), latency, and every event lost,
//! duplicated or out of order in any membership.

mod client;
mod segment;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::ticker::publish_at_rate;
use super::{with_server, Better, CpuWindow, Ctx, RunResult};
use crate::client::Shared;
use crate::publish::Publisher;
use crate::server::Server;
use crate::stats::Percentiles;
use client::{close_open, Tally, World};

/// The soak's sizes, and the memory bound it checks.
#[derive(Debug, Clone, Copy)]
pub struct SoakPlan {
    pub connections: usize,
    pub channels: usize,
    /// Events per second over HTTP, round-robin over the channels.
    pub rate: f64,
    pub duration: Duration,
    /// Before this the server's RSS is not judged: history fills, allocator arenas settle.
    pub warmup: Duration,
    /// Mean time between one client's actions (join, leave or reconnect).
    pub churn: Duration,
    /// RSS may grow by this share of the post-warm-up RSS…
    pub rss_growth_pct: f64,
    /// …or by this many MiB, whichever is larger.
    pub rss_growth_min_mib: f64,
}

impl SoakPlan {
    /// The growth allowed over `start_kib`, MiB.
    pub fn rss_bound_mib(&self, start_kib: u64) -> f64 {
        (start_kib as f64 / 1024.0 * self.rss_growth_pct / 100.0).max(self.rss_growth_min_mib)
    }
}

/// RSS samples of the server: after the warm-up, the highest since, the last.
#[derive(Debug, Default, Clone, Copy)]
struct Rss {
    start: u64,
    max: u64,
    end: u64,
}

/// Samples the server's RSS once a second from the end of the warm-up until `until`.
async fn watch_rss(server: &Server, warmup: Duration, until: Instant) -> Rss {
    tokio::time::sleep(warmup).await;
    let first = server.rss_kib().unwrap_or(0);
    let mut rss = Rss {
        start: first,
        max: first,
        end: first,
    };
    while Instant::now() + Duration::from_secs(1) <= until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = server.rss_kib().unwrap_or(rss.end);
        rss.max = rss.max.max(now);
        rss.end = now;
    }
    rss
}

/// Waits until deliveries stop moving for a second, at most `limit`.
async fn drain(shared: &Shared, limit: Duration) {
    let start = Instant::now();
    let mut last = shared.delivered.load(Ordering::Relaxed);
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = shared.delivered.load(Ordering::Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}

pub async fn run(ctx: &Ctx, plan: SoakPlan) -> RunResult {
    let n = plan.connections.min(ctx.max_connections());
    let label = ctx.label("soak", n);
    let base = RunResult::new(
        "soak",
        label.clone(),
        ctx.kind,
        json!({"connections": n, "channels": plan.channels, "rate": plan.rate,
               "duration_s": plan.duration.as_secs_f64(), "warmup_s": plan.warmup.as_secs_f64(),
               "churn_s": plan.churn.as_secs_f64(), "rss_growth_pct": plan.rss_growth_pct,
               "rss_growth_min_mib": plan.rss_growth_min_mib}),
    );
    eprintln!(
        "[{}] {label}: {n} connections, {} ev/s over {} channels for {:?}",
        ctx.kind, plan.rate, plan.channels, plan.duration
    );
    with_server(ctx, &label, false, base, |server, mut r| async move {
        let channels: Vec<String> = (0..plan.channels.max(1)).map(|c| format!("soak{c}")).collect();
        let world = Arc::new(World {
            ep: ctx.endpoint(&server),
            channels: channels.clone(),
            shared: Shared::new(),
            churn: plan.churn,
            calm: CancellationToken::new(),
            stop: CancellationToken::new(),
        });
        let handles: Vec<_> = (0..n)
            .map(|i| tokio::spawn(client::run(world.clone(), i)))
            .collect();
        let publisher = match Publisher::new(ctx.kind, server.addr, &server.api_key) {
            Ok(p) => p,
            Err(e) => {
                r.ok = false;
                r.note(format!("publisher: {e}"));
                world.stop.cancel();
                return (server, r);
            }
        };
        let cpu = CpuWindow::start(&server);
        let until = Instant::now() + plan.duration;
        let never = CancellationToken::new();
        let (ticked, rss) = tokio::join!(
            publish_at_rate(&publisher, channels.into(), plan.rate, plan.duration, &never),
            watch_rss(&server, plan.warmup.min(plan.duration / 2), until),
        );
        cpu.finish(&mut r);
        world.calm.cancel();
        drain(&world.shared, ctx.common.wait).await;
        world.stop.cancel();
        let mut tally = Tally::default();
        for h in handles {
            let Ok((mut t, open)) = h.await else { continue };
            close_open(&mut t, &open, |ch| ticked.published.ranges.get(ch).map(|r| r.1));
            tally.add(&t);
        }
        let lat = Percentiles::of(&world.shared.latency.merged());
        let mib = |k: u64| k as f64 / 1024.0;
        let growth = mib(rss.end.saturating_sub(rss.start));
        let bound = plan.rss_bound_mib(rss.start);
        r.fig("connections", n as f64, "conns", Better::Info);
        r.fig("published", ticked.events as f64, "events", Better::Info);
        r.fig("delivered", tally.received as f64, "msgs", Better::Info);
        r.fig("rss_start_mib", mib(rss.start), "MiB", Better::Info);
        r.fig("rss_end_mib", mib(rss.end), "MiB", Better::Lower);
        r.fig("rss_max_mib", mib(rss.max), "MiB", Better::Info);
        r.fig("rss_growth_mib", growth, "MiB", Better::Lower);
        r.fig("rss_bound_mib", bound, "MiB", Better::Info);
        r.fig("rss_within_bound", f64::from(u8::from(growth <= bound)), "bool", Better::Info);
        r.fig("p50_ms", lat.p50_ms, "ms", Better::Lower);
        r.fig("p99_ms", lat.p99_ms, "ms", Better::Lower);
        r.fig("max_ms", lat.max_ms, "ms", Better::Lower);
        r.fig("joins", tally.joins as f64, "ops", Better::Info);
        r.fig("leaves", tally.leaves as f64, "ops", Better::Info);
        r.fig("reconnects", tally.reconnects as f64, "ops", Better::Info);
        r.fig("recovered", tally.recovered as f64, "channels", Better::Info);
        r.fig("recover_failed", tally.recover_failed as f64, "channels", Better::Lower);
        r.fig("lost", tally.lost as f64, "events", Better::Lower);
        r.fig("duplicated", tally.duplicated as f64, "events", Better::Lower);
        r.fig("out_of_order", tally.out_of_order as f64, "events", Better::Lower);
        r.fig("unexpected", tally.unexpected as f64, "events", Better::Lower);
        r.fig("failures", tally.failures as f64, "conns", Better::Lower);
        r.latency = Some(lat);
        let clean = tally.lost == 0
            && tally.duplicated == 0
            && tally.out_of_order == 0
            && tally.unexpected == 0
            && tally.recover_failed == 0;
        if !clean || tally.received == 0 || ticked.errors > 0 || tally.failures > 0 {
            r.ok = false;
        }
        if growth > bound {
            r.ok = false;
            r.note(format!(
                "server RSS grew {growth:.1} MiB after the warm-up, over the bound of {bound:.1} MiB"
            ));
        }
        if let Some(e) = &ticked.first_error {
            r.note(format!("{} publishes failed; first: {e}", ticked.errors));
        }
        if let Some(e) = &tally.first_failure {
            r.note(format!("{} connection failures; first: {e}", tally.failures));
        }
        eprintln!(
            "  RSS {:.1} → {:.1} MiB (bound +{bound:.1}), p99 {:.2} ms, {} joins {} leaves {} reconnects, lost {} dup {} ooo {}",
            mib(rss.start),
            mib(rss.end),
            lat.p99_ms,
            tally.joins,
            tally.leaves,
            tally.reconnects,
            tally.lost,
            tally.duplicated,
            tally.out_of_order
        );
        (server, r)
    })
    .await
}
