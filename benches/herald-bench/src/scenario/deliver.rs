//! Delivery scenarios: subscribers connect and join, the publisher posts events through the
//! HTTP API, and every subscriber checks what it got. `fanout`, `steady`, `channels`, `users`
//! and `broadcast` differ only in who subscribes to what and where events go.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::swarm::{SubSpec, Swarm};
use super::{with_server, Better, CpuWindow, Ctx, RunResult};
use crate::client::Kind;
use crate::natsd::NatsServer;
use crate::publish::{PublishError, Publisher, Route, To, Via};
use crate::server::{Server, ServerOpts};
use crate::stats::{Accounting, Percentiles, Published};
use crate::sys::now_us;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Everyone on one channel `bench`.
    Fanout,
    /// Subscriber i alone on channel `ch{i}`; event n goes to `ch{n % N}`.
    Channels,
    /// Subscriber i is user `u{i}`; event n goes to user `u{n % N}`.
    Users,
    /// Every event to everyone (`broadcast: true`).
    Broadcast,
}

#[derive(Debug, Clone)]
pub struct DeliverPlan {
    pub scenario: &'static str,
    pub shape: Shape,
    pub subscribers: usize,
    pub events: u64,
    /// Events per second; None = as fast as the in-flight window allows.
    pub rate: Option<f64>,
    pub batch: usize,
    pub publishers: usize,
    /// Deliveries published but not yet received before the publisher waits.
    pub max_inflight: u64,
    /// Padding bytes added to each payload.
    pub payload: usize,
    /// How envelopes reach the server.
    pub via: Via,
}

impl DeliverPlan {
    fn spec(&self, i: usize) -> SubSpec {
        let user = format!("u{i}");
        let (join, track) = match self.shape {
            Shape::Fanout => (vec!["bench".to_string()], vec!["bench".to_string()]),
            Shape::Channels => (vec![format!("ch{i}")], vec![format!("ch{i}")]),
            Shape::Users => (vec![], vec![format!("@{user}")]),
            Shape::Broadcast => (vec![], vec!["*".to_string()]),
        };
        SubSpec { user, join, track }
    }

    fn target(&self, n: u64) -> To {
        let i = n % self.subscribers.max(1) as u64;
        match self.shape {
            Shape::Fanout => To::Channel("bench".into()),
            Shape::Channels => To::Channel(format!("ch{i}")),
            Shape::Users => To::User(format!("u{i}")),
            Shape::Broadcast => To::Broadcast,
        }
    }

    /// Deliveries each event owes.
    fn factor(&self) -> u64 {
        match self.shape {
            Shape::Fanout | Shape::Broadcast => self.subscribers as u64,
            Shape::Channels | Shape::Users => 1,
        }
    }
}

pub async fn run(ctx: &Ctx, plan: DeliverPlan) -> RunResult {
    if plan.via == Via::Http {
        return run_on(ctx, plan, None).await;
    }
    let label = ctx.label(plan.scenario, plan.subscribers);
    let mut skipped = RunResult::new(plan.scenario, label, ctx.kind, json!({}));
    if ctx.kind == Kind::SocketIo {
        skipped.note("Socket.IO takes events over HTTP only");
        return skipped;
    }
    // Herald gets a config file naming the source; the source is the run's own.
    let log_dir = &ctx.servers.log_dir;
    let tag = format!("herald-bench-{}-{}", std::process::id(), plan.scenario);
    let mut nats = None;
    let (route, toml) = match plan.via {
        Via::Http => unreachable!("handled above"),
        Via::Nats | Via::Jetstream => {
            let server = match NatsServer::start().await {
                Ok(server) => server,
                Err(e) => {
                    skipped.ok = false;
                    skipped.note(format!("nats-server did not start: {e}"));
                    return skipped;
                }
            };
            let jetstream = plan.via == Via::Jetstream;
            let toml = format!(
                "[nats]\nurl = \"{}\"\njetstream = {jetstream}\n",
                server.url()
            );
            let route = Route::Nats {
                url: server.url(),
                jetstream,
            };
            nats = Some(server);
            (route, toml)
        }
        Via::Amqp => {
            let toml = format!(
                "[amqp]\nurl = \"{AMQP_URL}\"\nexchange = \"{tag}\"\nqueue = \"{tag}\"\nconnection_name = \"{tag}\"\n"
            );
            let route = Route::Amqp {
                url: AMQP_URL.into(),
                exchange: tag.clone(),
            };
            (route, toml)
        }
        Via::File => {
            let path = log_dir.join(format!("{tag}.lines"));
            let toml = format!(
                "[[file_tail]]\npath = \"{}\"\nfrom_start = true\nstate_file = \"{}\"\n",
                path.display(),
                log_dir.join(format!("{tag}.position")).display()
            );
            (Route::File { path }, toml)
        }
    };
    let config = log_dir.join(format!("{tag}.toml"));
    let written = std::fs::create_dir_all(log_dir).and_then(|()| std::fs::write(&config, toml));
    let written = match &route {
        Route::File { path } => written.and_then(|()| std::fs::write(path, b"")),
        _ => written,
    };
    if let Err(e) = written {
        skipped.ok = false;
        skipped.note(format!("writing {}: {e}", config.display()));
        return skipped;
    }
    let mut herald_args = ctx.servers.herald_args.clone();
    herald_args.push(format!("--config={}", config.display()));
    let ctx = Ctx {
        kind: ctx.kind,
        transport: ctx.transport,
        servers: ServerOpts {
            herald_args,
            ..ctx.servers.clone()
        },
        common: ctx.common.clone(),
    };
    let result = run_on(&ctx, plan, Some(&route)).await;
    drop(nats);
    clean_up(&route, &tag).await;
    result
}

/// The machine's RabbitMQ.
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Leaves nothing behind: the run's queue and exchange, its file and position.
async fn clean_up(route: &Route, tag: &str) {
    match route {
        Route::Amqp { url, .. } => {
            if let Ok(connection) =
                lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await
            {
                if let Ok(channel) = connection.create_channel().await {
                    let _ = channel.queue_delete(tag.into(), Default::default()).await;
                    let _ = channel
                        .exchange_delete(tag.into(), Default::default())
                        .await;
                }
            }
        }
        Route::File { path } => {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(path.with_extension("position"));
        }
        Route::Nats { .. } => {}
    }
}

/// One delivery run; `route` is the way envelopes go when not over HTTP.
async fn run_on(ctx: &Ctx, mut plan: DeliverPlan, route: Option<&Route>) -> RunResult {
    let label = ctx.label(plan.scenario, plan.subscribers);
    let base = prepare(ctx, &mut plan, label.clone());
    with_server(ctx, &label, false, base, |server, r| async move {
        let nodes = [server];
        let r = measure(ctx, plan, &nodes, route, None, r).await;
        let [server] = nodes;
        (server, r)
    })
    .await
}

/// The result a run starts from, labelled `label`, with the plan clamped to the connections
/// this process can hold.
pub fn prepare(ctx: &Ctx, plan: &mut DeliverPlan, label: String) -> RunResult {
    let mut notes = Vec::new();
    if plan.subscribers > ctx.max_connections() {
        notes.push(format!(
            "subscribers clamped from {} to {} by RLIMIT_NOFILE {}",
            plan.subscribers,
            ctx.max_connections(),
            ctx.common.nofile
        ));
        plan.subscribers = ctx.max_connections();
    }
    let params = json!({
        "subscribers": plan.subscribers, "events": plan.events, "rate": plan.rate,
        "batch": plan.batch, "publishers": plan.publishers, "max_inflight": plan.max_inflight,
        "payload_pad": plan.payload, "via": plan.via,
    });
    eprintln!(
        "[{}] {label}: {} subscribers over {}, {} events",
        ctx.kind, plan.subscribers, ctx.transport, plan.events
    );
    let mut base = RunResult::new(plan.scenario, label, ctx.kind, params);
    for n in notes {
        base.note(n);
    }
    base
}

/// Drives `plan` against running `nodes` (one server, or a cluster's nodes): subscriber i on
/// node i mod N, publishing round-robin over the nodes (or along `route`), then the
/// accounting. Memory and server CPU are the nodes' sums; `broker` is a process whose CPU is
/// reported apart (`nats_cpu_pct`: the cluster's `nats-server`).
pub async fn measure(
    ctx: &Ctx,
    plan: DeliverPlan,
    nodes: &[Server],
    route: Option<&Route>,
    broker: Option<u32>,
    mut r: RunResult,
) -> RunResult {
    let rss = || nodes.iter().map(|n| n.rss_kib().unwrap_or(0)).sum::<u64>();
    let rss0 = rss();
    let eps: Vec<_> = nodes.iter().map(|n| ctx.endpoint(n)).collect();
    let specs: Vec<SubSpec> = (0..plan.subscribers).map(|i| plan.spec(i)).collect();
    let swarm = Swarm::spawn_over(&eps, specs, ctx.common.connect_concurrency);
    let ready = swarm.wait_ready(ctx.common.wait).await;
    r.fig(
        "connect_per_s",
        ready.ready as f64 / ready.elapsed.as_secs_f64().max(1e-9),
        "conn/s",
        Better::Higher,
    );
    if ready.failed > 0 || ready.ready < swarm.len() {
        r.ok = false;
        r.note(format!(
            "{} of {} subscribers connected; first error: {}",
            ready.ready,
            swarm.len(),
            ready.first_error.unwrap_or_default()
        ));
    }
    // Let the server settle the joins before measuring idle memory.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = rss();
    let conns = ready.ready.max(1) as f64;

    let publishers = match publishers(ctx, nodes, route).await {
        Ok(p) => p,
        Err(e) => {
            r.ok = false;
            r.note(format!("publisher: {e}"));
            swarm.finish().await;
            return r;
        }
    };
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid).collect();
    let cpu = CpuWindow::start_pids(&pids);
    let broker_cpu = broker.map(CpuWindow::start_pid);
    let polls0 = swarm.shared.polls.load(Ordering::Relaxed);
    let t0 = now_us();
    let started = Instant::now();
    let plan = Arc::new(plan);
    let (mut published, errors, first_err) =
        publish_all(&plan, &publishers, &swarm, ctx.common.wait).await;
    let publish_s = started.elapsed().as_secs_f64();
    if !plan.via.answers_offsets() {
        // One channel, fresh: Herald numbers what it took 1, 2, 3…
        for offset in 1..=plan.events.saturating_sub(errors) {
            published.add("bench", offset);
        }
    }

    // Wait for the last delivery: until all arrived, or nothing moved for a while.
    // One offset per event and target channel; if the server reported none, fall back on
    // the plan (the accounting then shows everything as lost or unexpected).
    let published_events: u64 = published.ranges.values().map(|r| r.2).sum();
    if published_events == 0 {
        r.note("publish responses carried no offsets");
    } else if published_events < plan.events {
        r.note(format!(
            "publishing stopped at the time limit ({:?}) after {published_events} of {} events",
            ctx.common.wait, plan.events
        ));
    }
    let expected = if published_events > 0 {
        published_events * plan.factor()
    } else {
        plan.events * plan.factor()
    };
    let stall = Duration::from_secs(5);
    let deadline = Instant::now() + ctx.common.wait;
    let (mut last_n, mut last_move) = (0u64, Instant::now());
    loop {
        let n = swarm.shared.delivered.load(Ordering::Relaxed);
        if n >= expected || Instant::now() >= deadline {
            break;
        }
        if n != last_n {
            (last_n, last_move) = (n, Instant::now());
        } else if last_move.elapsed() >= stall {
            r.note(format!("deliveries stalled at {n} of {expected}"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t_last = swarm.shared.last_delivery_us.load(Ordering::Relaxed);
    let polls = swarm.shared.polls.load(Ordering::Relaxed) - polls0;
    if let Some(server_s) = cpu.used().server_s {
        // What one accepted envelope costs the server, delivery to its subscribers included.
        r.fig(
            "server_cpu_us_per_event",
            server_s * 1e6 / published_events.max(1) as f64,
            "µs",
            Better::Lower,
        );
    }
    cpu.finish(&mut r);
    if let Some(nats_s) = broker_cpu.and_then(|w| {
        let used = w.used();
        used.server_s.map(|s| 100.0 * s / used.wall_s)
    }) {
        r.fig("nats_cpu_pct", nats_s, "% core", Better::Info);
    }
    let rss_after = rss();
    let disconnects = swarm.shared.disconnects.load(Ordering::Relaxed);
    let hist = swarm.shared.latency.merged();
    let shared = swarm.shared.clone();
    let outcomes = swarm.finish().await;

    let mut acc = Accounting::default();
    for o in &outcomes {
        acc.add(&o.tracker, &published, |c| o.owed_from(c));
    }
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let window_s = (t_last.saturating_sub(t0) as f64 / 1e6).max(1e-6);
    r.fig(
        "deliveries_per_s",
        delivered as f64 / window_s,
        "msg/s",
        Better::Higher,
    );
    r.fig(
        "publish_events_per_s",
        plan.events as f64 / publish_s.max(1e-6),
        "ev/s",
        Better::Higher,
    );
    r.fig("delivered", delivered as f64, "msgs", Better::Info);
    if polls > 0 {
        // Over the measured window: how much each HTTP round trip carried.
        r.fig("polls", polls as f64, "requests", Better::Info);
        r.fig(
            "deliveries_per_poll",
            delivered as f64 / polls as f64,
            "msgs",
            Better::Info,
        );
    }
    r.add_delivery(acc, Percentiles::of(&hist));
    r.fig(
        "server_rss_idle_mib",
        rss_idle as f64 / 1024.0,
        "MiB",
        Better::Lower,
    );
    r.fig(
        "server_rss_after_mib",
        rss_after as f64 / 1024.0,
        "MiB",
        Better::Lower,
    );
    r.fig(
        "rss_per_conn_kib",
        rss_idle.saturating_sub(rss0) as f64 / conns,
        "KiB",
        Better::Lower,
    );
    if errors > 0 {
        r.ok = false;
        r.note(format!(
            "{errors} publish requests failed; first: {}",
            first_err.unwrap_or_default()
        ));
    }
    if disconnects > 0 {
        r.ok = false;
        let mut codes: Vec<String> = outcomes
            .iter()
            .filter_map(|o| match &o.end {
                Some(crate::client::RunEnd::Stopped) | None => None,
                Some(e) => Some(format!("{e:?}")),
            })
            .take(3)
            .collect();
        codes.dedup();
        r.note(format!(
            "{disconnects} subscribers were disconnected during the run (e.g. {})",
            codes.join(", ")
        ));
    }
    let per_poll = match polls {
        0 => String::new(),
        n => format!(" ({:.2} per poll)", delivered as f64 / n as f64),
    };
    eprintln!(
        "  {delivered} deliveries{per_poll}, {:.0}/s, p99 {:.2} ms, lost {} dup {} ooo {}",
        delivered as f64 / window_s,
        r.latency.map(|l| l.p99_ms).unwrap_or(0.0),
        acc.lost,
        acc.duplicated,
        acc.out_of_order
    );
    r
}

/// One publisher per node, so publishing goes round-robin over a cluster; along `route`
/// (one node) when given.
async fn publishers(
    ctx: &Ctx,
    nodes: &[Server],
    route: Option<&Route>,
) -> Result<Vec<Publisher>, PublishError> {
    let mut all = Vec::with_capacity(nodes.len());
    for node in nodes {
        let p = Publisher::new(ctx.kind, node.addr, &node.api_key)?;
        all.push(match route {
            Some(route) => p.via(route).await?,
            None => p,
        });
    }
    Ok(all)
}

/// Publishes every event of the plan; returns the offsets the server assigned, the number of
/// failed requests and the first failure.
async fn publish_all(
    plan: &Arc<DeliverPlan>,
    publishers: &[Publisher],
    swarm: &Swarm,
    limit: Duration,
) -> (Published, u64, Option<String>) {
    // Event n goes through node n mod N: every node takes publishes, as behind a balancer.
    let publishers: Arc<[Publisher]> = publishers.into();
    if publishers.is_empty() {
        return (Published::default(), 0, None);
    }
    let pick = |n: u64| publishers[n as usize % publishers.len()].clone();
    let pad: Arc<str> = "x".repeat(plan.payload).into();
    let deadline = Instant::now() + limit;
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(rate) = plan.rate {
        // Fixed rate: one event per tick, each in its own request so a slow answer does not
        // shift the schedule.
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        for n in 0..plan.events {
            tick.tick().await;
            if Instant::now() >= deadline {
                break;
            }
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break;
            };
            let (p, plan, pad) = (pick(n), plan.clone(), pad.clone());
            tasks.spawn(async move {
                let mut published = Published::default();
                let res = p
                    .publish(&[(plan.target(n), n)], &pad, false, &mut published)
                    .await;
                drop(permit);
                (published, res.err().map(|e| e.to_string()))
            });
        }
    } else {
        let next = Arc::new(AtomicU64::new(0));
        for _ in 0..plan.publishers.max(1) {
            let (publishers, plan, pad, next) =
                (publishers.clone(), plan.clone(), pad.clone(), next.clone());
            let shared = swarm.shared.clone();
            tasks.spawn(async move {
                let mut published = Published::default();
                let mut first_err = None;
                let batch = plan.batch.max(1) as u64;
                loop {
                    let start = next.fetch_add(batch, Ordering::Relaxed);
                    if start >= plan.events || Instant::now() >= deadline {
                        break;
                    }
                    let end = (start + batch).min(plan.events);
                    // Closed loop: keep at most max_inflight deliveries outstanding, so the run
                    // measures delivery, not how deep the server lets queues grow.
                    while start * plan.factor()
                        > shared.delivered.load(Ordering::Relaxed) + plan.max_inflight
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_micros(500)).await;
                    }
                    let targets: Vec<(To, u64)> =
                        (start..end).map(|n| (plan.target(n), n)).collect();
                    let p = &publishers[(start / batch) as usize % publishers.len()];
                    if let Err(e) = p
                        .publish(&targets, &pad, plan.batch > 1, &mut published)
                        .await
                    {
                        first_err.get_or_insert(e.to_string());
                    }
                }
                (published, first_err)
            });
        }
    }
    let mut all = Published::default();
    let (mut errors, mut first) = (0u64, None);
    while let Some(res) = tasks.join_next().await {
        if let Ok((p, err)) = res {
            all.merge(&p);
            if let Some(e) = err {
                errors += 1;
                first.get_or_insert(e);
            }
        }
    }
    (all, errors, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(shape: Shape) -> DeliverPlan {
        DeliverPlan {
            scenario: "t",
            shape,
            subscribers: 4,
            events: 10,
            rate: None,
            batch: 1,
            publishers: 1,
            max_inflight: 100,
            payload: 0,
            via: Via::Http,
        }
    }

    #[test]
    fn shapes_route_events() {
        let p = plan(Shape::Channels);
        assert_eq!(p.spec(2).track, vec!["ch2"]);
        assert_eq!(p.target(6), To::Channel("ch2".into()));
        assert_eq!(p.factor(), 1);
        let u = plan(Shape::Users);
        assert_eq!(u.spec(3).track, vec!["@u3"]);
        assert!(u.spec(3).join.is_empty());
        assert_eq!(u.target(7), To::User("u3".into()));
        assert_eq!(plan(Shape::Broadcast).factor(), 4);
        assert_eq!(plan(Shape::Fanout).target(9), To::Channel("bench".into()));
    }
}
