//! `recover`: clients see a few events, drop their connections without saying goodbye, miss
//! `missed` events, reconnect resuming from their last offset, and must receive exactly the
//! missed events (then live ones), none twice, in order.
//!
//! Herald: `ident` with `channels: {"bench": {"offset", "epoch"}}` (WebSocket, long-poll), or
//! over SSE the last `id:` sent back as `Last-Event-ID`, as a browser does. Socket.IO: its
//! connection state recovery (`40{"pid","offset"}`, over either of its transports), which the
//! peer turns on for this scenario only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::swarm::connect_ident;
use super::wait::{wait_count, wait_delivered};
use super::{with_server, Better, Ctx, RunResult};
use crate::client::{ChannelReq, Kind, Shared, Sink};
use crate::publish::Publisher;
use crate::stats::{Accounting, Published, Tracker};
use crate::sys::now_us;

struct Outcome {
    tracker: Tracker,
    from: Option<u64>,
    error: Option<String>,
}

#[derive(Default)]
struct Counters {
    ready: AtomicUsize,
    dropped: AtomicUsize,
    back: AtomicUsize,
    failed: AtomicUsize,
    recovered: AtomicUsize,
}

pub async fn run(ctx: &Ctx, clients: usize, warmup: u64, missed: u64) -> RunResult {
    let label = ctx.label("recover", clients);
    let base = RunResult::new(
        "recover",
        label.clone(),
        ctx.kind,
        json!({"clients": clients, "warmup": warmup, "missed": missed}),
    );
    let clients = clients.min(ctx.max_connections());
    eprintln!(
        "[{}] {label}: {clients} clients miss {missed} events each",
        ctx.kind
    );
    with_server(ctx, &label, true, base, |server, mut r| async move {
        let ep = ctx.endpoint(&server);
        let shared = Arc::new(Shared::new());
        let counters = Arc::new(Counters::default());
        let (drop_tok, go_tok, stop_tok) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let sem = Arc::new(Semaphore::new(ctx.common.connect_concurrency.max(1)));
        let mut handles = Vec::with_capacity(clients);
        for i in 0..clients {
            let (ep, shared, counters, sem) =
                (ep.clone(), shared.clone(), counters.clone(), sem.clone());
            let (drop_tok, go_tok, stop_tok) = (drop_tok.clone(), go_tok.clone(), stop_tok.clone());
            handles.push(tokio::spawn(async move {
                let mut sink = Sink::new(Tracker::expect(&["bench"]), &shared, i);
                let user = format!("u{i}");
                let join = [ChannelReq {
                    name: "bench".into(),
                    since: None,
                }];
                let fail = |sink: Sink<'_>, e: String, from| {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    Outcome {
                        tracker: sink.tracker,
                        from,
                        error: Some(e),
                    }
                };
                let permit = sem.clone().acquire_owned().await;
                let first = connect_ident(&ep, i, &user, &join, None, &mut sink).await;
                drop(permit);
                let (mut conn, reply) = match first {
                    Ok(x) => x,
                    Err(e) => return fail(sink, e.to_string(), None),
                };
                let pos = reply
                    .channels
                    .iter()
                    .find(|c| c.name == "bench")
                    .cloned()
                    .unwrap_or_default();
                let from = Some(pos.offset + 1);
                counters.ready.fetch_add(1, Ordering::Relaxed);
                let dropped = drop_tok.cancelled();
                tokio::pin!(dropped);
                conn.run(&mut sink, dropped.as_mut()).await;
                // Abrupt close: no disconnect packet, as when a network drops.
                drop(conn);
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                go_tok.cancelled().await;
                let last = sink.tracker.last("bench");
                let resume = [ChannelReq {
                    name: "bench".into(),
                    since: Some((last, pos.epoch.clone())),
                }];
                let sio_off = sink.sio_offset.clone();
                let sio = match (&reply.sio_pid, &sio_off) {
                    (Some(p), Some(o)) => Some((p.as_str(), o.as_str())),
                    _ => None,
                };
                let permit = sem.acquire_owned().await;
                let again = connect_ident(&ep, i, &user, &resume, sio, &mut sink).await;
                drop(permit);
                let (mut conn, reply2) = match again {
                    Ok(x) => x,
                    Err(e) => return fail(sink, e.to_string(), from),
                };
                let recovered = match ep.kind {
                    Kind::Herald => reply2
                        .channels
                        .iter()
                        .any(|c| c.name == "bench" && c.recovered == Some(true)),
                    Kind::SocketIo => reply2.sio_recovered,
                };
                if recovered {
                    counters.recovered.fetch_add(1, Ordering::Relaxed);
                }
                counters.back.fetch_add(1, Ordering::Relaxed);
                let stopped = stop_tok.cancelled();
                tokio::pin!(stopped);
                conn.run(&mut sink, stopped.as_mut()).await;
                Outcome {
                    tracker: sink.tracker,
                    from,
                    error: None,
                }
            }));
        }
        let wait = ctx.common.wait;
        let finish = |r: &mut RunResult, why: String| {
            r.ok = false;
            r.note(why);
        };
        let publisher = match Publisher::new(ctx.kind, server.addr, &server.api_key) {
            Ok(p) => p,
            Err(e) => {
                finish(&mut r, format!("publisher: {e}"));
                stop_tok.cancel();
                drop_tok.cancel();
                go_tok.cancel();
                return (server, r);
            }
        };
        let mut published = Published::default();
        'phases: {
            if !wait_count(&counters.ready, clients, wait).await {
                finish(
                    &mut r,
                    format!(
                        "only {} of {clients} clients connected",
                        counters.ready.load(Ordering::Relaxed)
                    ),
                );
            }
            let ready = counters.ready.load(Ordering::Relaxed) as u64;
            if let Err(e) = publisher
                .publish_n("bench", warmup, 0, &mut published)
                .await
            {
                finish(&mut r, format!("warm-up publish: {e}"));
                break 'phases;
            }
            if !wait_delivered(&shared, ready * warmup, wait).await {
                finish(&mut r, "warm-up events did not all arrive".into());
            }
            drop_tok.cancel();
            wait_count(
                &counters.dropped,
                counters.ready.load(Ordering::Relaxed),
                wait,
            )
            .await;
            // Publish only once the server has seen the clients go, so the events are truly
            // missed rather than racing the close.
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                match publisher
                    .info()
                    .await
                    .ok()
                    .and_then(|v| v["connections"].as_u64())
                {
                    Some(0) => break,
                    Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    None => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
            let before = shared.delivered.load(Ordering::Relaxed);
            if let Err(e) = publisher
                .publish_n("bench", missed, warmup, &mut published)
                .await
            {
                finish(&mut r, format!("publish while away: {e}"));
                break 'phases;
            }
            let go = Instant::now();
            let go_us = now_us();
            go_tok.cancel();
            let back = wait_count(&counters.back, ready as usize, wait).await;
            let got = wait_delivered(&shared, before + ready * missed, wait).await;
            let reconnect_s = go.elapsed().as_secs_f64();
            if !back || !got {
                finish(
                    &mut r,
                    "not every client came back with its missed events in time".into(),
                );
            }
            let last = shared.last_delivery_us.load(Ordering::Relaxed);
            r.fig(
                "recover_ms",
                last.saturating_sub(go_us) as f64 / 1000.0,
                "ms",
                Better::Lower,
            );
            r.fig(
                "reconnect_per_s",
                ready as f64 / reconnect_s.max(1e-9),
                "conn/s",
                Better::Higher,
            );
        }
        stop_tok.cancel();
        drop_tok.cancel();
        go_tok.cancel();
        let mut acc = Accounting::default();
        let mut first_err = None;
        for h in handles {
            if let Ok(o) = h.await {
                acc.add(&o.tracker, &published, |_| o.from);
                if o.error.is_some() {
                    first_err = first_err.or(o.error);
                }
            }
        }
        let recovered = counters.recovered.load(Ordering::Relaxed);
        r.fig(
            "recovered_sessions",
            recovered as f64,
            "clients",
            Better::Higher,
        );
        r.fig("lost", acc.lost as f64, "events", Better::Lower);
        r.fig("duplicated", acc.duplicated as f64, "events", Better::Lower);
        r.fig(
            "out_of_order",
            acc.out_of_order as f64,
            "events",
            Better::Lower,
        );
        if !acc.is_clean() || recovered < clients {
            r.ok = false;
        }
        if let Some(e) = first_err {
            r.note(format!(
                "{} clients failed; first: {e}",
                counters.failed.load(Ordering::Relaxed)
            ));
        }
        eprintln!(
            "  recovered {recovered}/{clients}, lost {} dup {} ooo {}",
            acc.lost, acc.duplicated, acc.out_of_order
        );
        r.accounting = Some(acc);
        (server, r)
    })
    .await
}
