//! `reconnect-storm`: N identified clients in a channel, each holding a position; Herald is
//! restarted (SIGTERM, then started again on the same port) with `reconnect_spread` and its
//! accept ramp on. Every client waits the `reconnect_delay` its `disconnect` 4100 carried,
//! reconnects (retrying while the server is down, and after `Retry-After` when the ramp
//! answers 503) and identifies resuming from its position. History lives in memory, so after
//! a restart that answers `recovered:false`: what is measured is how fast everyone is back,
//! and that events published afterwards reach every one of them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::swarm::connect_ident;
use super::wait::{wait_count, wait_delivered};
use super::{with_server, Better, Ctx, RunResult};
use crate::client::{ChannelReq, ClientError, Conn, Endpoint, RunEnd, Shared, Sink};
use crate::net::NetError;
use crate::publish::Publisher;
use crate::stats::{new_histogram, Accounting, Percentiles, Published, Tracker};

/// The storm's sizes and the server settings that shape it.
#[derive(Debug, Clone, Copy)]
pub struct StormPlan {
    pub clients: usize,
    /// Herald's `reconnect_spread`: delays are drawn from 0 to this.
    pub spread: Duration,
    /// Herald's `accept_ramp` after the restart.
    pub ramp: Duration,
    /// Herald's `accept_ramp_start` (connections per second in the ramp's first second).
    pub ramp_start: usize,
    /// Events published before the restart (the position) and after (delivery check).
    pub events: u64,
}

/// What the client tasks count together.
#[derive(Default)]
struct Counters {
    ready: AtomicUsize,
    told: AtomicUsize,
    back: AtomicUsize,
    /// Attempts answered 503 by the accept ramp.
    refused: AtomicU64,
    /// Other failed attempts: the port closed while the server restarts, a reset, a timeout.
    retries: AtomicU64,
    recovered: AtomicUsize,
    /// µs after the SIGTERM when the last client was identified again.
    last_back_us: AtomicU64,
}

/// Shared by every client task.
struct Storm {
    ep: Endpoint,
    shared: Shared,
    counters: Counters,
    /// Reconnect delays the servers asked for, ms.
    delays: Mutex<Histogram<u64>>,
    /// TCP connect + handshake + ident of the attempt that got back, µs.
    reident: Mutex<Histogram<u64>>,
    /// Set at the SIGTERM, so clients can time their return from it.
    sigterm: Mutex<Option<Instant>>,
    stop: CancellationToken,
    /// Longest any client keeps trying.
    give_up: Duration,
}

struct Outcome {
    /// What arrived after the restart, and from which offset it was owed.
    after: Option<(Tracker, u64)>,
    error: Option<String>,
}

/// Whether the accept ramp refused the attempt (the upgrade answered 503).
fn ramp_refusal(e: &ClientError) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    matches!(e, ClientError::Net(NetError::Handshake(Error::Http(r))) if r.status() == 503)
}

fn record(h: &Mutex<Histogram<u64>>, v: u64) {
    h.lock()
        .unwrap_or_else(|p| p.into_inner())
        .saturating_record(v.max(1));
}

/// One client: identify, hold until the 4100, wait its delay, come back.
async fn client(st: Arc<Storm>, i: usize, sem: Arc<Semaphore>) -> Outcome {
    let user = format!("u{i}");
    let mut sink = Sink::new(Tracker::expect(&["bench"]), &st.shared, i);
    let join = [ChannelReq {
        name: "bench".into(),
        since: None,
    }];
    let permit = sem.acquire_owned().await;
    let first = connect_ident(&st.ep, i, &user, &join, None, &mut sink).await;
    drop(permit);
    let (mut conn, reply) = match first {
        Ok(x) => x,
        Err(e) => {
            return Outcome {
                after: None,
                error: Some(e.to_string()),
            }
        }
    };
    let epoch = reply
        .channels
        .iter()
        .find(|c| c.name == "bench")
        .map(|c| c.epoch.clone())
        .unwrap_or_default();
    st.counters.ready.fetch_add(1, Ordering::Relaxed);
    let stopped = st.stop.cancelled();
    tokio::pin!(stopped);
    let end = conn.run(&mut sink, stopped.as_mut()).await;
    if end != RunEnd::Closed(Some(4100)) {
        return Outcome {
            after: None,
            error: Some(format!("ended by {end:?}, not a 4100")),
        };
    }
    st.counters.told.fetch_add(1, Ordering::Relaxed);
    let delay = conn.reconnect_delay().unwrap_or(0);
    record(&st.delays, delay);
    drop(conn);
    let resume = [ChannelReq {
        name: "bench".into(),
        since: Some((sink.tracker.last("bench"), epoch)),
    }];
    tokio::time::sleep(Duration::from_millis(delay)).await;
    back_again(&st, i, &user, &resume).await
}

/// Reconnects until identified, honouring the ramp's `Retry-After` (1 s) and backing off
/// while the port is closed; then reads until the run stops.
async fn back_again(st: &Storm, i: usize, user: &str, resume: &[ChannelReq]) -> Outcome {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut sink = Sink::new(Tracker::expect(&["bench"]), &st.shared, i);
    loop {
        if started.elapsed() > st.give_up || st.stop.is_cancelled() {
            return Outcome {
                after: None,
                error: Some(format!("{user} never got back")),
            };
        }
        let t = Instant::now();
        let attempt = async {
            let mut conn = Conn::open(&st.ep, crate::net::source_ip(i)).await?;
            let reply = conn.ident(&st.ep, user, resume, None, &mut sink).await?;
            Ok::<_, ClientError>((conn, reply))
        }
        .await;
        let (mut conn, reply) = match attempt {
            Ok(x) => x,
            Err(e) if ramp_refusal(&e) => {
                st.counters.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => {
                st.counters.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        record(&st.reident, t.elapsed().as_micros() as u64);
        let pos = reply.channels.iter().find(|c| c.name == "bench");
        if pos.is_some_and(|c| c.recovered == Some(true)) {
            st.counters.recovered.fetch_add(1, Ordering::Relaxed);
        }
        let from = pos.map_or(1, |c| c.offset + 1);
        let since = st
            .sigterm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(0, |t0| t0.elapsed().as_micros() as u64);
        st.counters.last_back_us.fetch_max(since, Ordering::Relaxed);
        st.counters.back.fetch_add(1, Ordering::Relaxed);
        let stopped = st.stop.cancelled();
        tokio::pin!(stopped);
        conn.run(&mut sink, stopped.as_mut()).await;
        return Outcome {
            after: Some((sink.tracker, from)),
            error: None,
        };
    }
}

/// The server flags the storm needs, after the operator's own.
fn storm_args(plan: &StormPlan) -> Vec<String> {
    vec![
        format!("--reconnect-spread={}ms", plan.spread.as_millis()),
        format!("--accept-ramp={}ms", plan.ramp.as_millis()),
        format!("--accept-ramp-start={}", plan.ramp_start.max(1)),
    ]
}

pub async fn run(ctx: &Ctx, plan: StormPlan) -> RunResult {
    let clients = plan.clients.min(ctx.max_connections());
    let label = ctx.label("reconnect-storm", clients);
    let base = RunResult::new(
        "reconnect-storm",
        label.clone(),
        ctx.kind,
        json!({"clients": clients, "reconnect_spread_ms": plan.spread.as_millis() as u64,
               "accept_ramp_ms": plan.ramp.as_millis() as u64, "accept_ramp_start": plan.ramp_start,
               "events": plan.events}),
    );
    let mut servers = ctx.servers.clone();
    servers.herald_args.extend(storm_args(&plan));
    let ctx = &Ctx {
        kind: ctx.kind,
        transport: ctx.transport,
        servers,
        common: ctx.common.clone(),
    };
    eprintln!(
        "[{}] {label}: {clients} clients, restart with a {:?} spread and a {:?} ramp",
        ctx.kind, plan.spread, plan.ramp
    );
    with_server(ctx, &label, false, base, |mut server, mut r| async move {
        let st = Arc::new(Storm {
            ep: ctx.endpoint(&server),
            shared: Shared::new(),
            counters: Counters::default(),
            delays: Mutex::new(new_histogram()),
            reident: Mutex::new(new_histogram()),
            sigterm: Mutex::new(None),
            stop: CancellationToken::new(),
            give_up: ctx.common.wait + plan.spread,
        });
        // The first start ramps too: connect once it is over, so only the restart's counts.
        tokio::time::sleep(plan.ramp).await;
        let sem = Arc::new(Semaphore::new(ctx.common.connect_concurrency.max(1)));
        let handles: Vec<_> = (0..clients)
            .map(|i| tokio::spawn(client(st.clone(), i, sem.clone())))
            .collect();
        let wait = ctx.common.wait;
        let mut before = Published::default();
        let mut after = Published::default();
        'phases: {
            if !wait_count(&st.counters.ready, clients, wait).await {
                r.ok = false;
                r.note(format!(
                    "only {} of {clients} clients connected",
                    st.counters.ready.load(Ordering::Relaxed)
                ));
            }
            let ready = st.counters.ready.load(Ordering::Relaxed);
            let publisher = match Publisher::new(ctx.kind, server.addr, &server.api_key) {
                Ok(p) => p,
                Err(e) => {
                    r.ok = false;
                    r.note(format!("publisher: {e}"));
                    break 'phases;
                }
            };
            // A position worth resuming from.
            if let Err(e) = publisher.publish_n("bench", plan.events, 0, &mut before).await {
                r.ok = false;
                r.note(format!("publish before the restart: {e}"));
                break 'phases;
            }
            wait_delivered(&st.shared, ready as u64 * plan.events, wait).await;
            *st.sigterm.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            let restarted = match server.restart(&ctx.servers, Duration::from_secs(30)).await {
                Ok(t) => t,
                Err(e) => {
                    r.ok = false;
                    r.note(format!("restart: {e}"));
                    break 'phases;
                }
            };
            let all_back = wait_count(&st.counters.back, ready, wait + plan.spread).await;
            let back = st.counters.back.load(Ordering::Relaxed);
            let last_back_s = st.counters.last_back_us.load(Ordering::Relaxed) as f64 / 1e6;
            let up_s = restarted.healthy.as_secs_f64();
            r.fig("clients", ready as f64, "clients", Better::Info);
            r.fig(
                "server_exit_ms",
                restarted.exited.as_secs_f64() * 1e3,
                "ms",
                Better::Info,
            );
            r.fig("server_up_ms", up_s * 1e3, "ms", Better::Lower);
            r.fig("all_back_ms", last_back_s * 1e3, "ms", Better::Lower);
            r.fig(
                "reconnect_per_s",
                back as f64 / (last_back_s - up_s).max(1e-3),
                "conn/s",
                Better::Higher,
            );
            r.fig("never_back", (ready - back) as f64, "clients", Better::Lower);
            if !all_back {
                r.ok = false;
                r.note(format!("{} of {ready} clients never got back", ready - back));
            }
            // Everyone back must get what is published now.
            if let Err(e) = publisher.publish_n("bench", plan.events, 0, &mut after).await {
                r.ok = false;
                r.note(format!("publish after the restart: {e}"));
                break 'phases;
            }
            let owed = (ready * 2) as u64 * plan.events;
            wait_delivered(&st.shared, owed, wait).await;
        }
        st.stop.cancel();
        let mut acc = Accounting::default();
        let mut first_err = None;
        let mut failed = 0;
        for h in handles {
            let Ok(o) = h.await else { continue };
            if let Some((t, from)) = &o.after {
                acc.add(t, &after, |_| Some(*from));
            }
            if let Some(e) = o.error {
                failed += 1;
                first_err.get_or_insert(e);
            }
        }
        let c = &st.counters;
        let reident = Percentiles::of(&st.reident.lock().unwrap_or_else(|p| p.into_inner()));
        let delays = st.delays.lock().unwrap_or_else(|p| p.into_inner()).clone();
        r.fig("told_4100", c.told.load(Ordering::Relaxed) as f64, "clients", Better::Info);
        r.fig(
            "refused_ramp",
            c.refused.load(Ordering::Relaxed) as f64,
            "attempts",
            Better::Info,
        );
        r.fig(
            "retries",
            c.retries.load(Ordering::Relaxed) as f64,
            "attempts",
            Better::Info,
        );
        r.fig(
            "recovered_sessions",
            c.recovered.load(Ordering::Relaxed) as f64,
            "clients",
            Better::Info,
        );
        r.fig("reident_p50_ms", reident.p50_ms, "ms", Better::Lower);
        r.fig("reident_p99_ms", reident.p99_ms, "ms", Better::Lower);
        r.fig("delay_max_ms", delays.max() as f64, "ms", Better::Info);
        r.fig(
            "delay_p50_ms",
            delays.value_at_quantile(0.5) as f64,
            "ms",
            Better::Info,
        );
        r.fig("lost", acc.lost as f64, "events", Better::Lower);
        r.fig("duplicated", acc.duplicated as f64, "events", Better::Lower);
        r.fig("out_of_order", acc.out_of_order as f64, "events", Better::Lower);
        if !acc.is_clean() || failed > 0 {
            r.ok = false;
        }
        if let Some(e) = first_err {
            r.note(format!("{failed} clients failed; first: {e}"));
        }
        eprintln!(
            "  back {}/{} in {:.0} ms (server up at {:.0} ms), {:.0}/s, refused {} retries {}, lost {}",
            c.back.load(Ordering::Relaxed),
            clients,
            r.get("all_back_ms").unwrap_or(0.0),
            r.get("server_up_ms").unwrap_or(0.0),
            r.get("reconnect_per_s").unwrap_or(0.0),
            c.refused.load(Ordering::Relaxed),
            c.retries.load(Ordering::Relaxed),
            acc.lost
        );
        r.accounting = Some(acc);
        (server, r)
    })
    .await
}
