//! Scenarios: each starts a fresh server, drives clients, and returns one [`RunResult`].

pub mod chaos;
pub mod cluster;
pub mod deliver;
pub mod idle;
pub mod recover;
pub mod soak;
pub mod storm;
pub mod swarm;
pub mod ticker;
pub mod wait;

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{Endpoint, Kind, Transport};
use crate::server::{Server, ServerOpts};
use crate::stats::{Accounting, Percentiles};

/// Settings every scenario shares.
#[derive(Debug, Clone)]
pub struct Common {
    pub read_buffer: usize,
    pub connect_concurrency: usize,
    /// How long to wait for anything (connecting all clients, the last delivery) before
    /// giving up and reporting what is missing.
    pub wait: Duration,
    pub nofile: u64,
}

pub struct Ctx {
    pub kind: Kind,
    pub transport: Transport,
    pub servers: ServerOpts,
    pub common: Common,
}

impl Ctx {
    pub fn endpoint(&self, server: &Server) -> Endpoint {
        Endpoint {
            kind: self.kind,
            transport: self.transport,
            addr: server.addr,
            jwt_secret: server.jwt_secret.clone(),
            read_buffer: self.common.read_buffer,
            timeout: Duration::from_secs(10),
        }
    }

    /// A run's label: scenario, transport tag and size (`fanout-1000`, `fanout-lp-1000`).
    pub fn label(&self, scenario: &str, n: usize) -> String {
        format!("{scenario}-{}{n}", self.transport.tag())
    }

    /// Connections one process can hold here: the NOFILE limit minus headroom for the
    /// runtime, the HTTP publisher and the server's own files.
    pub fn max_connections(&self) -> usize {
        self.common.nofile.saturating_sub(256) as usize
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
    /// Context (counts, sizes): no ratio direction.
    Info,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub key: String,
    pub value: f64,
    pub unit: String,
    pub better: Better,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub scenario: String,
    /// Scenario, transport and size, e.g. `fanout-10000`, `fanout-lp-1000`: what runs are
    /// compared by.
    pub label: String,
    pub target: Kind,
    /// How the clients connected.
    pub transport: Transport,
    pub params: serde_json::Value,
    pub figures: Vec<Figure>,
    pub accounting: Option<Accounting>,
    pub latency: Option<Percentiles>,
    /// Correct: nothing lost, duplicated, out of order; every client connected.
    pub ok: bool,
    pub notes: Vec<String>,
    pub wall_s: f64,
}

impl RunResult {
    pub fn new(scenario: &str, label: String, target: Kind, params: serde_json::Value) -> Self {
        RunResult {
            scenario: scenario.to_string(),
            label,
            target,
            transport: Transport::Ws,
            params,
            figures: Vec::new(),
            accounting: None,
            latency: None,
            ok: true,
            notes: Vec::new(),
            wall_s: 0.0,
        }
    }

    pub fn fig(&mut self, key: &str, value: f64, unit: &str, better: Better) {
        self.figures.push(Figure {
            key: key.to_string(),
            value,
            unit: unit.to_string(),
            better,
        });
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.figures.iter().find(|f| f.key == key).map(|f| f.value)
    }

    pub fn note(&mut self, n: impl Into<String>) {
        let n = n.into();
        eprintln!("  note: {n}");
        self.notes.push(n);
    }

    /// Adds the latency and correctness figures every delivery scenario reports.
    pub fn add_delivery(&mut self, acc: Accounting, lat: Percentiles) {
        self.fig("p50_ms", lat.p50_ms, "ms", Better::Lower);
        self.fig("p99_ms", lat.p99_ms, "ms", Better::Lower);
        self.fig("p999_ms", lat.p999_ms, "ms", Better::Lower);
        self.fig("max_ms", lat.max_ms, "ms", Better::Lower);
        self.fig("lost", acc.lost as f64, "events", Better::Lower);
        self.fig("duplicated", acc.duplicated as f64, "events", Better::Lower);
        self.fig(
            "out_of_order",
            acc.out_of_order as f64,
            "events",
            Better::Lower,
        );
        if !acc.is_clean() || acc.delivered == 0 {
            self.ok = false;
        }
        self.accounting = Some(acc);
        self.latency = Some(lat);
    }
}

/// CPU used by the server (every process of it: a cluster's nodes) and by the harness over
/// one measured window.
pub struct CpuWindow {
    start: Instant,
    /// Each process and its CPU time at the start.
    servers0: Vec<(u32, Option<Duration>)>,
    self0: Duration,
}

/// Seconds of CPU used over a [`CpuWindow`], and its wall time.
pub struct CpuUsed {
    pub server_s: Option<f64>,
    pub harness_s: f64,
    pub wall_s: f64,
}

impl CpuWindow {
    pub fn start(server: &Server) -> Self {
        Self::start_pids(&[server.pid])
    }

    /// A window over the server process `pid` and this process.
    pub fn start_pid(pid: u32) -> Self {
        Self::start_pids(&[pid])
    }

    /// A window over the processes `pids` (their sum) and this process.
    pub fn start_pids(pids: &[u32]) -> Self {
        CpuWindow {
            start: Instant::now(),
            servers0: pids
                .iter()
                .map(|&pid| (pid, crate::sys::proc_cpu(pid)))
                .collect(),
            self0: crate::sys::self_cpu(),
        }
    }

    /// What the server processes (together) and this process used since the start; the
    /// server's is unknown when any process's is.
    pub fn used(&self) -> CpuUsed {
        let server_s = self
            .servers0
            .iter()
            .map(|&(pid, t0)| {
                t0.zip(crate::sys::proc_cpu(pid))
                    .map(|(a, b)| b.saturating_sub(a).as_secs_f64())
            })
            .sum::<Option<f64>>();
        CpuUsed {
            server_s,
            harness_s: crate::sys::self_cpu()
                .saturating_sub(self.self0)
                .as_secs_f64(),
            wall_s: self.start.elapsed().as_secs_f64().max(1e-9),
        }
    }

    /// Adds `server_cpu_pct` and `harness_cpu_pct` (100% = one core busy) for the window.
    pub fn finish(self, r: &mut RunResult) {
        let used = self.used();
        if let Some(s) = used.server_s {
            r.fig("server_cpu_s", s, "s", Better::Lower);
            r.fig(
                "server_cpu_pct",
                100.0 * s / used.wall_s,
                "% core",
                Better::Info,
            );
        }
        let h = used.harness_s;
        r.fig("harness_cpu_s", h, "s", Better::Info);
        r.fig(
            "harness_cpu_pct",
            100.0 * h / used.wall_s,
            "% core",
            Better::Info,
        );
    }
}

/// Runs `f` against a freshly started server and always stops it afterwards.
pub async fn with_server<F, Fut>(
    ctx: &Ctx,
    tag: &str,
    recovery: bool,
    base: RunResult,
    f: F,
) -> RunResult
where
    F: FnOnce(Server, RunResult) -> Fut,
    Fut: std::future::Future<Output = (Server, RunResult)>,
{
    let one = [(tag.to_string(), ctx.servers.clone())];
    with_servers(ctx, &one, recovery, base, |mut servers, r| async move {
        // with_servers calls f only once every server started: there is one.
        let Some(server) = servers.pop() else {
            return (servers, r);
        };
        let (server, r) = f(server, r).await;
        (vec![server], r)
    })
    .await
}

/// Starts one server per `(tag, options)` in order (a cluster's nodes), runs `f` against
/// them, and always stops every one afterwards; a server that died during the run fails it.
pub async fn with_servers<F, Fut>(
    ctx: &Ctx,
    nodes: &[(String, ServerOpts)],
    recovery: bool,
    mut base: RunResult,
    f: F,
) -> RunResult
where
    F: FnOnce(Vec<Server>, RunResult) -> Fut,
    Fut: std::future::Future<Output = (Vec<Server>, RunResult)>,
{
    let start = Instant::now();
    base.transport = ctx.transport;
    let mut servers = Vec::with_capacity(nodes.len());
    for (tag, opts) in nodes {
        match Server::start(ctx.kind, opts, tag, recovery).await {
            Ok(s) => servers.push(s),
            Err(e) => {
                base.ok = false;
                base.note(format!("server {tag} did not start: {e}"));
                for s in servers {
                    s.stop().await;
                }
                return base;
            }
        }
    }
    let (servers, mut r) = f(servers, base).await;
    for mut server in servers {
        if !server.alive() {
            r.ok = false;
            let t = server.log_tail(10);
            r.note(format!("server exited during the run; log tail: {t}"));
        }
        server.stop().await;
    }
    r.wall_s = start.elapsed().as_secs_f64();
    r
}
