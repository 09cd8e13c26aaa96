//! `chaos`: well-behaved subscribers receive a steady publish stream twice on one server,
//! first calm, then beside abusive clients of every kind ([`abuse`]). Reports what the
//! abusers tried and how many of their connections Herald cut (by kind and close code),
//! whether Herald is still alive and ready at the end, the events the well-behaved clients
//! lost, and their p99 under abuse against the calm p99.

mod abuse;
mod raw;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::swarm::{SubSpec, Swarm};
use super::ticker::publish_at_rate;
use super::{with_server, Better, Ctx, RunResult};
use crate::publish::Publisher;
use crate::server::Server;
use crate::stats::{Accounting, Percentiles};
use abuse::{Abuse, Counts, Target};

/// The chaos run's sizes.
#[derive(Debug, Clone, Copy)]
pub struct ChaosPlan {
    /// Well-behaved subscribers of `bench`.
    pub subscribers: usize,
    /// Events per second to `bench`.
    pub rate: f64,
    /// Length of the calm phase and of the chaos phase.
    pub phase: Duration,
    /// Abusive clients of each kind, at once.
    pub per_kind: usize,
    /// Herald's `max_message_size`, so the oversized message is just past it.
    pub max_message_size: usize,
}

/// What the well-behaved clients saw in one phase.
struct Phase {
    acc: Accounting,
    lat: Percentiles,
    /// Well-behaved clients the server disconnected.
    disconnects: u64,
    connect_failures: usize,
    publish_errors: u64,
}

/// The well-behaved load for one phase: subscribe, publish at the rate, drain, account.
async fn behaved(ctx: &Ctx, server: &Server, plan: &ChaosPlan, publisher: &Publisher) -> Phase {
    let specs = (0..plan.subscribers)
        .map(|i| SubSpec {
            user: format!("u{i}"),
            join: vec!["bench".into()],
            track: vec!["bench".into()],
        })
        .collect();
    let swarm = Swarm::spawn(&ctx.endpoint(server), specs, ctx.common.connect_concurrency);
    let ready = swarm.wait_ready(ctx.common.wait).await;
    let never = CancellationToken::new();
    let ticked = publish_at_rate(
        publisher,
        vec!["bench".to_string()].into(),
        plan.rate,
        plan.phase,
        &never,
    )
    .await;
    let owed = ticked.published.ranges.get("bench").map_or(0, |r| r.2) * ready.ready as u64;
    super::wait::wait_delivered(&swarm.shared, owed, Duration::from_secs(10)).await;
    let lat = Percentiles::of(&swarm.shared.latency.merged());
    let disconnects = swarm.shared.disconnects.load(Ordering::Relaxed);
    let outcomes = swarm.finish().await;
    let mut acc = Accounting::default();
    for o in &outcomes {
        acc.add(&o.tracker, &ticked.published, |c| o.owed_from(c));
    }
    Phase {
        acc,
        lat,
        disconnects,
        connect_failures: ready.failed,
        publish_errors: ticked.errors,
    }
}

/// Whether `/readyz` answers 200.
async fn ready(server: &Server) -> bool {
    let url = format!("http://{}/readyz", server.addr);
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    else {
        return false;
    };
    http.get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// A counter from the server's `/metrics` (the sum over its label sets), 0 when absent.
async fn metric(server: &Server, name: &str) -> f64 {
    let url = format!("http://{}/metrics", server.addr);
    let Ok(resp) = reqwest::get(url).await else {
        return 0.0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn add_phase(r: &mut RunResult, tag: &str, p: &Phase) {
    let figures = [
        ("p50_ms", p.lat.p50_ms, "ms"),
        ("p99_ms", p.lat.p99_ms, "ms"),
        ("lost", p.acc.lost as f64, "events"),
        ("duplicated", p.acc.duplicated as f64, "events"),
        ("out_of_order", p.acc.out_of_order as f64, "events"),
        ("disconnected", p.disconnects as f64, "clients"),
    ];
    for (key, value, unit) in figures {
        r.fig(&format!("{tag}_{key}"), value, unit, Better::Lower);
    }
    r.fig(
        &format!("{tag}_delivered"),
        p.acc.delivered as f64,
        "msgs",
        Better::Info,
    );
    if !p.acc.is_clean() || p.acc.delivered == 0 || p.disconnects > 0 || p.connect_failures > 0 {
        r.ok = false;
        r.note(format!(
            "{tag}: well-behaved clients lost {}, dup {}, ooo {}; {} disconnected, {} failed to connect",
            p.acc.lost, p.acc.duplicated, p.acc.out_of_order, p.disconnects, p.connect_failures
        ));
    }
    if p.publish_errors > 0 {
        r.ok = false;
        r.note(format!("{tag}: {} publishes failed", p.publish_errors));
    }
}

pub async fn run(ctx: &Ctx, plan: ChaosPlan) -> RunResult {
    let n = plan.subscribers.min(ctx.max_connections() / 2);
    let label = ctx.label("chaos", n);
    let base = RunResult::new(
        "chaos",
        label.clone(),
        ctx.kind,
        json!({"subscribers": n, "rate": plan.rate, "phase_s": plan.phase.as_secs_f64(),
               "per_kind": plan.per_kind, "kinds": abuse::ALL}),
    );
    eprintln!(
        "[{}] {label}: {n} well-behaved clients at {} ev/s, {:?} calm then {:?} beside {} abusers of each of {} kinds",
        ctx.kind,
        plan.rate,
        plan.phase,
        plan.phase,
        plan.per_kind,
        abuse::ALL.len()
    );
    let plan = ChaosPlan {
        subscribers: n,
        ..plan
    };
    with_server(ctx, &label, false, base, |mut server, mut r| async move {
        let publisher = match Publisher::new(ctx.kind, server.addr, &server.api_key) {
            Ok(p) => p,
            Err(e) => {
                r.ok = false;
                r.note(format!("publisher: {e}"));
                return (server, r);
            }
        };
        let calm = behaved(ctx, &server, &plan, &publisher).await;
        eprintln!("  calm: p99 {:.2} ms, lost {}", calm.lat.p99_ms, calm.acc.lost);
        let slow0 = metric(&server, "herald_slow_consumer_cuts").await;
        let stop = CancellationToken::new();
        let target = Target {
            addr: server.addr,
            jwt_secret: server.jwt_secret.clone(),
            max_message_size: plan.max_message_size,
        };
        let counts: Vec<(Abuse, Arc<Counts>)> =
            abuse::ALL.iter().map(|&k| (k, Arc::new(Counts::default()))).collect();
        let mut abusers = Vec::new();
        for (k, (kind, c)) in counts.iter().enumerate() {
            for j in 0..plan.per_kind {
                // Source addresses well past the well-behaved clients' own.
                let src = 40_000 + k * 1000 + j;
                abusers.push(tokio::spawn(abuse::run(
                    *kind,
                    target.clone(),
                    src,
                    c.clone(),
                    stop.clone(),
                )));
            }
        }
        let chaos = behaved(ctx, &server, &plan, &publisher).await;
        stop.cancel();
        for a in abusers {
            let _ = a.await;
        }
        let alive = server.alive();
        let readyz = alive && ready(&server).await;
        let slow = metric(&server, "herald_slow_consumer_cuts").await - slow0;
        add_phase(&mut r, "calm", &calm);
        add_phase(&mut r, "chaos", &chaos);
        let ratio = chaos.lat.p99_ms / calm.lat.p99_ms.max(1e-3);
        r.fig("p99_ratio", ratio, "×", Better::Lower);
        r.fig("p99_ratio_target_met", f64::from(u8::from(ratio <= 1.5)), "bool", Better::Info);
        r.fig("crashes", f64::from(u8::from(!alive)), "crashes", Better::Lower);
        r.fig("readyz_ok", f64::from(u8::from(readyz)), "bool", Better::Info);
        r.fig("slow_consumer_cuts", slow, "conns", Better::Info);
        let mut total = (0, 0, 0);
        for (kind, c) in &counts {
            let name = kind.name();
            let (conns, sent, cut) = (
                c.connections.load(Ordering::Relaxed),
                c.sent.load(Ordering::Relaxed),
                c.cut.load(Ordering::Relaxed),
            );
            total = (total.0 + conns, total.1 + sent, total.2 + cut);
            r.fig(&format!("{name}_connections"), conns as f64, "conns", Better::Info);
            r.fig(&format!("{name}_sent"), sent as f64, "frames", Better::Info);
            r.fig(&format!("{name}_cut"), cut as f64, "conns", Better::Info);
            let codes = c.codes.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let codes: Vec<String> = codes.iter().map(|(code, n)| format!("{code}×{n}")).collect();
            r.note(format!(
                "{name}: {conns} connections, {sent} frames sent, {cut} cut by the server (close codes: {}; 0 = none seen), {} could not open",
                if codes.is_empty() { "–".into() } else { codes.join(" ") },
                c.failed.load(Ordering::Relaxed)
            ));
        }
        r.fig("abusive_connections", total.0 as f64, "conns", Better::Info);
        r.fig("frames_tried", total.1 as f64, "frames", Better::Info);
        r.fig("abusive_cut", total.2 as f64, "conns", Better::Info);
        if !alive || !readyz {
            r.ok = false;
            r.note(format!("Herald alive: {alive}, /readyz ok: {readyz}"));
        }
        // What the main table shows: the well-behaved clients under abuse.
        r.fig("lost", chaos.acc.lost as f64, "events", Better::Lower);
        r.fig("p99_ms", chaos.lat.p99_ms, "ms", Better::Lower);
        r.accounting = Some(chaos.acc);
        r.latency = Some(chaos.lat);
        eprintln!(
            "  chaos: p99 {:.2} ms ({ratio:.2}× calm), lost {}; {} abusive connections, {} frames, {} cut; alive {alive}, ready {readyz}",
            chaos.lat.p99_ms, chaos.acc.lost, total.0, total.1, total.2
        );
        (server, r)
    })
    .await
}
