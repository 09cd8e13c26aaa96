//! `idle` (server memory per identified, idle connection) and `connect` (connections + ident
//! per second).

use std::time::Duration;

use serde_json::json;

use super::swarm::{SubSpec, Swarm};
use super::{with_server, Better, CpuWindow, Ctx, RunResult};
use crate::stats::Percentiles;

fn ident_only(n: usize) -> Vec<SubSpec> {
    (0..n)
        .map(|i| SubSpec {
            user: format!("u{i}"),
            join: vec![],
            track: vec![],
        })
        .collect()
}

fn clamp(ctx: &Ctx, n: usize, r: &mut RunResult) -> usize {
    let max = ctx.max_connections();
    if n > max {
        // A limit of this machine, not a fault of the server: noted, not failed.
        r.note(format!(
            "{n} connections requested but RLIMIT_NOFILE here is {} (hard limit; raising it needs \
             CAP_SYS_RESOURCE), so the server can hold at most ~{max}: measured {max}",
            ctx.common.nofile
        ));
        max
    } else {
        n
    }
}

pub async fn idle(ctx: &Ctx, connections: usize, settle: Duration) -> RunResult {
    let mut base = RunResult::new(
        "idle",
        String::new(),
        ctx.kind,
        json!({"connections": connections, "settle_s": settle.as_secs_f64()}),
    );
    let n = clamp(ctx, connections, &mut base);
    // Named after what was measured, so a clamped run is not mistaken for the size asked.
    let label = ctx.label("idle", n);
    base.label = label.clone();
    eprintln!(
        "[{}] {label}: {n} idle identified connections over {}",
        ctx.kind, ctx.transport
    );
    with_server(ctx, &label, false, base, |server, mut r| async move {
        let rss0 = server.rss_kib().unwrap_or(0);
        let ep = ctx.endpoint(&server);
        let swarm = Swarm::spawn(&ep, ident_only(n), ctx.common.connect_concurrency);
        let ready = swarm.wait_ready(ctx.common.wait).await;
        if ready.ready < n {
            r.ok = false;
            r.note(format!(
                "{} of {n} connected; first error: {}",
                ready.ready,
                ready.first_error.unwrap_or_default()
            ));
        }
        // Idle means idle: give the server time to finish handshakes and shrink buffers.
        tokio::time::sleep(settle).await;
        let rss1 = server.rss_kib().unwrap_or(0);
        let self1 = crate::sys::self_rss_kib().unwrap_or(0);
        let c = ready.ready.max(1) as f64;
        r.fig("connections", ready.ready as f64, "conns", Better::Info);
        r.fig(
            "rss_per_conn_kib",
            rss1.saturating_sub(rss0) as f64 / c,
            "KiB",
            Better::Lower,
        );
        r.fig(
            "server_rss_base_mib",
            rss0 as f64 / 1024.0,
            "MiB",
            Better::Info,
        );
        r.fig(
            "server_rss_idle_mib",
            rss1 as f64 / 1024.0,
            "MiB",
            Better::Lower,
        );
        // Absolute: the allocator keeps memory from earlier runs, so a delta would mislead.
        r.fig(
            "harness_rss_mib",
            self1 as f64 / 1024.0,
            "MiB",
            Better::Info,
        );
        r.fig(
            "connect_per_s",
            ready.ready as f64 / ready.elapsed.as_secs_f64().max(1e-9),
            "conn/s",
            Better::Higher,
        );
        let disconnected = swarm
            .shared
            .disconnects
            .load(std::sync::atomic::Ordering::Relaxed);
        if disconnected > 0 {
            r.ok = false;
            r.note(format!(
                "{disconnected} idle connections were closed by the server"
            ));
        }
        eprintln!(
            "  {} conns, server {:.2} KiB/conn, harness RSS {:.0} MiB",
            ready.ready,
            rss1.saturating_sub(rss0) as f64 / c,
            self1 as f64 / 1024.0
        );
        swarm.finish().await;
        (server, r)
    })
    .await
}

pub async fn connect(ctx: &Ctx, connections: usize) -> RunResult {
    let mut base = RunResult::new(
        "connect",
        String::new(),
        ctx.kind,
        json!({"connections": connections, "concurrency": ctx.common.connect_concurrency}),
    );
    let n = clamp(ctx, connections, &mut base);
    let label = ctx.label("connect", n);
    base.label = label.clone();
    eprintln!(
        "[{}] {label}: {n} connections, {} at a time",
        ctx.kind, ctx.common.connect_concurrency
    );
    with_server(ctx, &label, false, base, |server, mut r| async move {
        let ep = ctx.endpoint(&server);
        let cpu = CpuWindow::start(&server);
        let swarm = Swarm::spawn(&ep, ident_only(n), ctx.common.connect_concurrency);
        let ready = swarm.wait_ready(ctx.common.wait).await;
        cpu.finish(&mut r);
        let rate = ready.ready as f64 / ready.elapsed.as_secs_f64().max(1e-9);
        r.fig("connect_per_s", rate, "conn/s", Better::Higher);
        let lat = {
            let h = swarm
                .connect_latency
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            Percentiles::of(&h)
        };
        r.fig("connect_p50_ms", lat.p50_ms, "ms", Better::Lower);
        r.fig("connect_p99_ms", lat.p99_ms, "ms", Better::Lower);
        r.fig("failed", ready.failed as f64, "conns", Better::Lower);
        if ready.ready < n {
            r.ok = false;
            r.note(format!(
                "{} of {n} connected; first error: {}",
                ready.ready,
                ready.first_error.unwrap_or_default()
            ));
        }
        eprintln!(
            "  {} conns in {:.2} s: {rate:.0}/s, p99 {:.2} ms",
            ready.ready,
            ready.elapsed.as_secs_f64(),
            lat.p99_ms
        );
        swarm.finish().await;
        (server, r)
    })
    .await
}
