//! herald-bench: load and comparison harness for Herald (and a Socket.IO v4 peer).
//!
//! Every scenario starts its own server on a free loopback port, drives real clients (WebSocket,
//! long-poll or SSE) spread over many 127.x.y.z source addresses, publishes through the HTTP
//! API, and reports throughput, latency, memory, CPU and delivery correctness. Every run is
//! bounded in count and time and stops by itself.

mod client;
mod floor;
mod natsd;
mod net;
mod plot;
mod publish;
mod report;
mod scenario;
mod server;
mod stats;
mod sys;
mod token;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use client::{Kind, Transport};
use publish::Via;
use scenario::chaos::ChaosPlan;
use scenario::cluster::ClusterPlan;
use scenario::deliver::{DeliverPlan, Shape};
use scenario::soak::SoakPlan;
use scenario::storm::StormPlan;
use scenario::{Common, Ctx, RunResult};
use server::ServerOpts;

#[derive(Parser, Debug)]
#[command(name = "herald-bench", version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
struct Global {
    /// Server(s) to measure; `both` alternates Herald and Socket.IO and prints ratios.
    #[arg(long, value_enum, default_value_t = Target::Herald, global = true)]
    target: Target,
    /// How clients connect, comma-separated (one run each): `ws`, `longpoll` (Herald's `/lp`,
    /// Socket.IO's Engine.IO `polling`) or `sse` (Herald only). `short` and `all` run their
    /// own mix.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ws",
        global = true
    )]
    transport: Vec<Transport>,
    /// Runs of each scenario per target and transport (a round runs every one once, alternating).
    #[arg(long, default_value_t = 1, global = true)]
    rounds: usize,
    /// Results folder (default: benches/results/<timestamp>, or benches/results/tmp/… in short mode).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Herald binary (default: target/release/herald in the repository).
    #[arg(long, global = true)]
    herald_bin: Option<PathBuf>,
    /// Extra argument for Herald (repeatable), e.g. --herald-arg=--allow-anonymous.
    #[arg(long = "herald-arg", global = true, allow_hyphen_values = true)]
    herald_args: Vec<String>,
    /// The Socket.IO peer's folder (default: benches/peers/socketio in the repository).
    #[arg(long, global = true)]
    peer_dir: Option<PathBuf>,
    #[arg(long, default_value = "node", global = true)]
    node: String,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 2, global = true)]
    threads: usize,
    /// WebSocket read buffer per client, bytes.
    #[arg(long, default_value_t = 8192, global = true)]
    read_buffer: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256, global = true)]
    connect_concurrency: usize,
    /// Longest wait for any phase (connecting, deliveries), seconds.
    #[arg(long, default_value_t = 60, global = true)]
    wait_s: u64,
    /// Skip the SVG plots.
    #[arg(long, global = true)]
    no_plots: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Herald,
    Socketio,
    Both,
}

#[derive(Args, Debug, Clone)]
struct Flow {
    /// Envelopes per publish request (1 = a single envelope, more = a batch array).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Concurrent publish requests.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Deliveries outstanding before the publisher waits (closed-loop load); fanout and
    /// broadcast also cap it at 4 events' worth.
    #[arg(long, default_value_t = 200_000)]
    max_inflight: u64,
    /// Padding bytes per payload.
    #[arg(long, default_value_t = 0)]
    payload: usize,
}

/// A fixed event rate to N subscribers of one channel.
#[derive(Args, Debug, Clone, Copy)]
struct Steady {
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
}

impl Steady {
    /// Events in one run: `rate` for `duration_s`, at least one.
    fn events(&self) -> u64 {
        (self.rate * self.duration_s).ceil().max(1.0) as u64
    }

    /// The floor run of the same size and rate.
    fn floor(&self) -> floor::Plan {
        floor::Plan {
            subscribers: self.subscribers,
            rate: self.rate,
            events: self.events(),
        }
    }
}

/// `steady` at full size, as `all` runs it.
const FULL_STEADY: Steady = Steady {
    subscribers: 1000,
    rate: 50.0,
    duration_s: 10.0,
};

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One channel, N subscribers, events as fast as they are delivered.
    Fanout {
        /// Subscriber counts, comma-separated (one run each).
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        subscribers: Vec<usize>,
        /// Events per run (default: about 2M deliveries, 200..5000 events).
        #[arg(long)]
        events: Option<u64>,
        #[command(flatten)]
        flow: Flow,
    },
    /// The fanout load against one in-memory node, one node on JetStream and a cluster of
    /// nodes on one JetStream log (subscribers spread over them, publishes round-robin), with
    /// a `nats-server` of its own. Herald only.
    ClusterFanout {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Nodes of the cluster.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Events per run (default: about 2M deliveries, 200..5000 events).
        #[arg(long)]
        events: Option<u64>,
        #[command(flatten)]
        flow: Flow,
    },
    /// N subscribers on one channel, a fixed event rate: latency under steady load.
    Steady {
        #[command(flatten)]
        load: Steady,
    },
    /// N subscribers each on its own channel, M events spread over the channels.
    Channels {
        #[arg(long, default_value_t = 5000)]
        subscribers: usize,
        #[arg(long, default_value_t = 20000)]
        events: u64,
        #[command(flatten)]
        flow: Flow,
    },
    /// Events addressed to users (`users: [...]`).
    Users {
        #[arg(long, default_value_t = 5000)]
        subscribers: usize,
        #[arg(long, default_value_t = 20000)]
        events: u64,
        #[command(flatten)]
        flow: Flow,
    },
    /// Events to everyone (`broadcast: true`).
    Broadcast {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 1000)]
        events: u64,
        #[command(flatten)]
        flow: Flow,
    },
    /// Envelopes into one subscriber as fast as the server takes them, per path (HTTP,
    /// NATS request, JetStream): ingest rate, publish-to-receipt latency, server CPU per envelope.
    Ingest {
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "http,nats,jetstream,amqp,file"
        )]
        via: Vec<Via>,
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Concurrent publishers (requests in flight). Below ~32, NATS request/reply is
        /// bound by its round trip (it crosses the broker twice), not by the server.
        #[arg(long, default_value_t = 64)]
        publishers: usize,
    },
    /// Server RSS per idle identified connection.
    Idle {
        #[arg(long, value_delimiter = ',', default_value = "10000")]
        connections: Vec<usize>,
        #[arg(long, default_value_t = 2.0)]
        settle_s: f64,
    },
    /// Connections + ident per second.
    Connect {
        #[arg(long, default_value_t = 10000)]
        connections: usize,
    },
    /// Clients drop, miss events, reconnect resuming from their offset.
    Recover {
        #[arg(long, default_value_t = 10000)]
        clients: usize,
        #[arg(long, default_value_t = 100)]
        missed: u64,
        #[arg(long, default_value_t = 10)]
        warmup: u64,
    },
    /// Herald is restarted under N identified clients (SIGTERM, then started again on the same
    /// port): every client waits its jittered `reconnect_delay`, reconnects through the accept
    /// ramp and identifies again. Herald only.
    ReconnectStorm {
        #[arg(long, default_value_t = 10000)]
        clients: usize,
        /// Herald's `reconnect_spread`, seconds.
        #[arg(long, default_value_t = 5.0)]
        spread_s: f64,
        /// Herald's `accept_ramp`, seconds.
        #[arg(long, default_value_t = 10.0)]
        ramp_s: f64,
        /// Herald's `accept_ramp_start`, connections per second.
        #[arg(long, default_value_t = 1000)]
        ramp_start: usize,
        /// Events published before the restart and again after it.
        #[arg(long, default_value_t = 10)]
        events: u64,
    },
    /// N connections under steady HTTP publishing with random joins, leaves and reconnects
    /// (resuming from their positions) for a while: server RSS after the warm-up and at the
    /// end against a stated bound, latency, and every event lost, duplicated or out of order.
    /// Herald only.
    Soak {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        channels: usize,
        /// Events per second, round-robin over the channels.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// 3600 for the hour-long soak by hand.
        #[arg(long, default_value_t = 60.0)]
        duration_s: f64,
        /// RSS is judged from the end of the warm-up (at most half the duration).
        #[arg(long, default_value_t = 10.0)]
        warmup_s: f64,
        /// Mean seconds between one client's actions (join, leave or reconnect).
        #[arg(long, default_value_t = 10.0)]
        churn_s: f64,
        /// RSS growth allowed after the warm-up, % of the RSS then…
        #[arg(long, default_value_t = 10.0)]
        rss_growth_pct: f64,
        /// …or this many MiB, whichever is larger.
        #[arg(long, default_value_t = 8.0)]
        rss_growth_min_mib: f64,
    },
    /// Well-behaved subscribers under a steady publish stream, calm and then beside abusive
    /// clients (malformed and broken frames, floods, oversized messages, half-open and
    /// stalled sockets, clients that never read, slowloris, reconnect loops): cuts by kind,
    /// crashes, loss, and the p99 under abuse ÷ the calm p99. Herald only.
    Chaos {
        #[arg(long, default_value_t = 200)]
        subscribers: usize,
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Seconds of the calm phase and of the chaos phase each.
        #[arg(long, default_value_t = 20.0)]
        phase_s: f64,
        /// Abusive clients of each kind at once.
        #[arg(long, default_value_t = 4)]
        per_kind: usize,
        /// Herald's `max_message_size` (pass the same with --herald-arg when changing it).
        #[arg(long, default_value_t = 65536)]
        max_message_size: usize,
    },
    /// The machine's floor for `steady`: raw TCP, one write loop per core, no protocol
    /// (`steady`, `short` and `all` run it too).
    Floor {
        #[command(flatten)]
        load: Steady,
    },
    /// The floor's server side, started by `floor` as a child process.
    #[command(hide = true)]
    FloorServer {
        #[arg(long)]
        subscribers: usize,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        events: u64,
    },
    /// Every scenario with small N for a few seconds: correctness only (CI). Exits non-zero
    /// on any lost, duplicated or out-of-order event.
    Short,
    /// Every scenario at full size.
    All,
}

enum Job {
    Deliver(DeliverPlan),
    Storm(StormPlan),
    Soak(SoakPlan),
    Chaos(ChaosPlan),
    Cluster(ClusterPlan),
    Idle(usize, Duration),
    Connect(usize),
    Recover {
        clients: usize,
        warmup: u64,
        missed: u64,
    },
}

impl Job {
    /// Whether the job measures something only Herald has (restarts with reconnect delays,
    /// its limits): Socket.IO is skipped.
    fn herald_only(&self) -> bool {
        matches!(
            self,
            Job::Storm(_) | Job::Soak(_) | Job::Chaos(_) | Job::Cluster(_)
        )
    }
}

/// Events a one-channel publisher (fanout, broadcast) keeps outstanding. Counted in events,
/// not deliveries, so the window is the same at every size and latency measures the server:
/// a fixed 200k deliveries would be 200 events deep at 1k subscribers and 20 at 10k, and the
/// p99 would mostly be the harness's own queue.
const INFLIGHT_EVENTS: u64 = 4;

/// The closed-loop window, in deliveries, for a plan whose every event reaches every subscriber.
fn one_channel_window(subscribers: usize, f: &Flow) -> u64 {
    f.max_inflight
        .min(INFLIGHT_EVENTS * subscribers.max(1) as u64)
}

/// Events of a fanout run when not given: about 2M deliveries, 200..5000 events.
fn fanout_events(subscribers: usize) -> u64 {
    (2_000_000 / subscribers.max(1) as u64).clamp(200, 5000)
}

fn fanout_plan(subscribers: usize, events: u64, f: &Flow) -> DeliverPlan {
    DeliverPlan {
        scenario: "fanout",
        shape: Shape::Fanout,
        subscribers,
        events,
        rate: None,
        batch: f.batch,
        publishers: f.publishers,
        max_inflight: one_channel_window(subscribers, f),
        payload: f.payload,
        via: Via::Http,
    }
}

/// `cluster-fanout`: the fanout load, over `nodes` nodes for the clustered run.
fn cluster_plan(subscribers: usize, nodes: usize, events: u64, f: &Flow) -> ClusterPlan {
    let load = DeliverPlan {
        scenario: "cluster-fanout",
        ..fanout_plan(subscribers, events, f)
    };
    ClusterPlan { load, nodes }
}

fn plan(
    scenario: &'static str,
    shape: Shape,
    subscribers: usize,
    events: u64,
    f: &Flow,
) -> DeliverPlan {
    DeliverPlan {
        scenario,
        shape,
        subscribers,
        events,
        rate: None,
        batch: f.batch,
        publishers: f.publishers,
        max_inflight: match shape {
            Shape::Broadcast => one_channel_window(subscribers, f),
            _ => f.max_inflight,
        },
        payload: f.payload,
        via: Via::Http,
    }
}

/// One subscriber, `publishers` requests in flight, single envelopes through `via`.
fn ingest_plan(via: Via, events: u64, publishers: usize) -> DeliverPlan {
    DeliverPlan {
        scenario: via.ingest_scenario(),
        shape: Shape::Fanout,
        subscribers: 1,
        events,
        rate: None,
        batch: 1,
        publishers,
        max_inflight: 512,
        payload: 0,
        via,
    }
}

fn steady_plan(load: Steady) -> DeliverPlan {
    DeliverPlan {
        scenario: "steady",
        shape: Shape::Fanout,
        subscribers: load.subscribers,
        events: load.events(),
        rate: Some(load.rate),
        batch: 1,
        publishers: 1,
        max_inflight: u64::MAX / 4,
        payload: 0,
        via: Via::Http,
    }
}

fn flow(batch: usize) -> Flow {
    Flow {
        batch,
        publishers: 4,
        max_inflight: 200_000,
        payload: 0,
    }
}

/// Every job of a command over every transport asked for; `short` and `all` name their own.
fn jobs(cmd: &Cmd, transports: &[Transport]) -> Vec<(Job, Transport)> {
    let each = |make: &dyn Fn() -> Vec<Job>| -> Vec<(Job, Transport)> {
        transports
            .iter()
            .flat_map(|&t| make().into_iter().map(move |j| (j, t)))
            .collect()
    };
    match cmd {
        Cmd::Fanout {
            subscribers,
            events,
            flow,
        } => each(&|| {
            subscribers
                .iter()
                .map(|&n| {
                    let events = events.unwrap_or_else(|| fanout_events(n));
                    Job::Deliver(fanout_plan(n, events, flow))
                })
                .collect()
        }),
        Cmd::ClusterFanout {
            subscribers,
            nodes,
            events,
            flow,
        } => each(&|| {
            let events = events.unwrap_or_else(|| fanout_events(*subscribers));
            vec![Job::Cluster(cluster_plan(
                *subscribers,
                *nodes,
                events,
                flow,
            ))]
        }),
        Cmd::Steady { load } => each(&|| vec![Job::Deliver(steady_plan(*load))]),
        Cmd::Ingest {
            via,
            events,
            publishers,
        } => via
            .iter()
            .map(|&v| {
                (
                    Job::Deliver(ingest_plan(v, *events, *publishers)),
                    Transport::Ws,
                )
            })
            .collect(),
        Cmd::Channels {
            subscribers,
            events,
            flow,
        } => each(&|| {
            vec![Job::Deliver(plan(
                "channels",
                Shape::Channels,
                *subscribers,
                *events,
                flow,
            ))]
        }),
        Cmd::Users {
            subscribers,
            events,
            flow,
        } => each(&|| {
            vec![Job::Deliver(plan(
                "users",
                Shape::Users,
                *subscribers,
                *events,
                flow,
            ))]
        }),
        Cmd::Broadcast {
            subscribers,
            events,
            flow,
        } => each(&|| {
            vec![Job::Deliver(plan(
                "broadcast",
                Shape::Broadcast,
                *subscribers,
                *events,
                flow,
            ))]
        }),
        Cmd::Idle {
            connections,
            settle_s,
        } => each(&|| {
            connections
                .iter()
                .map(|&n| Job::Idle(n, Duration::from_secs_f64(*settle_s)))
                .collect()
        }),
        Cmd::Connect { connections } => each(&|| vec![Job::Connect(*connections)]),
        Cmd::Recover {
            clients,
            missed,
            warmup,
        } => each(&|| {
            vec![Job::Recover {
                clients: *clients,
                warmup: *warmup,
                missed: *missed,
            }]
        }),
        Cmd::ReconnectStorm {
            clients,
            spread_s,
            ramp_s,
            ramp_start,
            events,
        } => vec![(
            Job::Storm(StormPlan {
                clients: *clients,
                spread: Duration::from_secs_f64(*spread_s),
                ramp: Duration::from_secs_f64(*ramp_s),
                ramp_start: *ramp_start,
                events: *events,
            }),
            Transport::Ws,
        )],
        Cmd::Soak {
            connections,
            channels,
            rate,
            duration_s,
            warmup_s,
            churn_s,
            rss_growth_pct,
            rss_growth_min_mib,
        } => vec![(
            Job::Soak(SoakPlan {
                connections: *connections,
                channels: *channels,
                rate: *rate,
                duration: Duration::from_secs_f64(*duration_s),
                warmup: Duration::from_secs_f64(*warmup_s),
                churn: Duration::from_secs_f64(*churn_s),
                rss_growth_pct: *rss_growth_pct,
                rss_growth_min_mib: *rss_growth_min_mib,
            }),
            Transport::Ws,
        )],
        Cmd::Chaos {
            subscribers,
            rate,
            phase_s,
            per_kind,
            max_message_size,
        } => vec![(
            Job::Chaos(ChaosPlan {
                subscribers: *subscribers,
                rate: *rate,
                phase: Duration::from_secs_f64(*phase_s),
                per_kind: *per_kind,
                max_message_size: *max_message_size,
            }),
            Transport::Ws,
        )],
        Cmd::Short => {
            use Transport::{Longpoll, Sse, Ws};
            vec![
                (Job::Deliver(fanout_plan(200, 300, &flow(1))), Ws),
                (Job::Cluster(cluster_plan(150, 3, 200, &flow(1))), Ws),
                (
                    Job::Deliver(steady_plan(Steady {
                        subscribers: 100,
                        rate: 50.0,
                        duration_s: 2.0,
                    })),
                    Ws,
                ),
                (
                    Job::Deliver(plan("channels", Shape::Channels, 300, 1500, &flow(50))),
                    Ws,
                ),
                (
                    Job::Deliver(plan("users", Shape::Users, 300, 1500, &flow(50))),
                    Ws,
                ),
                (
                    Job::Deliver(plan("broadcast", Shape::Broadcast, 100, 200, &flow(1))),
                    Ws,
                ),
                (Job::Idle(500, Duration::from_millis(500)), Ws),
                (Job::Connect(500), Ws),
                (
                    Job::Recover {
                        clients: 100,
                        warmup: 5,
                        missed: 100,
                    },
                    Ws,
                ),
                (Job::Deliver(fanout_plan(100, 200, &flow(1))), Longpoll),
                (Job::Deliver(fanout_plan(100, 200, &flow(1))), Sse),
                (Job::Deliver(ingest_plan(Via::Http, 2000, 4)), Ws),
                (Job::Deliver(ingest_plan(Via::Nats, 2000, 4)), Ws),
                (Job::Deliver(ingest_plan(Via::Jetstream, 2000, 4)), Ws),
                (Job::Deliver(ingest_plan(Via::Amqp, 2000, 4)), Ws),
                (Job::Deliver(ingest_plan(Via::File, 2000, 4)), Ws),
                (Job::Idle(200, Duration::from_millis(500)), Longpoll),
                (Job::Idle(200, Duration::from_millis(500)), Sse),
                (
                    Job::Recover {
                        clients: 100,
                        warmup: 5,
                        missed: 100,
                    },
                    Sse,
                ),
            ]
        }
        Cmd::All => {
            use Transport::{Longpoll, Sse, Ws};
            vec![
                (Job::Deliver(fanout_plan(1000, 2000, &flow(1))), Ws),
                (Job::Deliver(fanout_plan(10000, 300, &flow(1))), Ws),
                (Job::Deliver(steady_plan(FULL_STEADY)), Ws),
                (
                    Job::Deliver(plan("channels", Shape::Channels, 5000, 20000, &flow(100))),
                    Ws,
                ),
                (
                    Job::Deliver(plan("users", Shape::Users, 5000, 20000, &flow(100))),
                    Ws,
                ),
                (
                    Job::Deliver(plan("broadcast", Shape::Broadcast, 1000, 1000, &flow(1))),
                    Ws,
                ),
                (Job::Idle(10000, Duration::from_secs(2)), Ws),
                (Job::Idle(50000, Duration::from_secs(2)), Ws),
                (Job::Connect(10000), Ws),
                (
                    Job::Recover {
                        clients: 10000,
                        warmup: 10,
                        missed: 100,
                    },
                    Ws,
                ),
                (Job::Deliver(fanout_plan(1000, 2000, &flow(1))), Longpoll),
                (Job::Deliver(fanout_plan(1000, 2000, &flow(1))), Sse),
                (Job::Deliver(ingest_plan(Via::Http, 100_000, 64)), Ws),
                (Job::Deliver(ingest_plan(Via::Nats, 100_000, 64)), Ws),
                (Job::Deliver(ingest_plan(Via::Jetstream, 100_000, 64)), Ws),
                (Job::Deliver(ingest_plan(Via::Amqp, 100_000, 64)), Ws),
                (Job::Deliver(ingest_plan(Via::File, 100_000, 64)), Ws),
                // Per-client memory at the WebSocket's 10,000 too: at 1,000, growth that does
                // not scale with clients is much of the figure (long-poll: 10.7 KiB per session
                // at 1,000, 4.4 at 10,000, in one run).
                (Job::Idle(1000, Duration::from_secs(2)), Longpoll),
                (Job::Idle(10000, Duration::from_secs(2)), Longpoll),
                (Job::Idle(1000, Duration::from_secs(2)), Sse),
                (Job::Idle(10000, Duration::from_secs(2)), Sse),
                (
                    Job::Recover {
                        clients: 1000,
                        warmup: 10,
                        missed: 100,
                    },
                    Longpoll,
                ),
                (
                    Job::Recover {
                        clients: 1000,
                        warmup: 10,
                        missed: 100,
                    },
                    Sse,
                ),
            ]
        }
        Cmd::Floor { .. } | Cmd::FloorServer { .. } => Vec::new(),
    }
}

/// The floor run that goes with a command, if any: `steady`'s own size and rate.
fn floor_plan(cmd: &Cmd) -> Option<floor::Plan> {
    match cmd {
        Cmd::Floor { load } | Cmd::Steady { load } => Some(load.floor()),
        Cmd::All => Some(FULL_STEADY.floor()),
        // Keeps the floor from rotting; its figures mean nothing at this size.
        Cmd::Short => Some(
            Steady {
                subscribers: 50,
                rate: 50.0,
                duration_s: 1.0,
            }
            .floor(),
        ),
        _ => None,
    }
}

/// A job's runs: one, or `cluster-fanout`'s three.
async fn run_job(ctx: &Ctx, job: &Job) -> Vec<RunResult> {
    let one = match job {
        Job::Cluster(p) => return scenario::cluster::run(ctx, p).await,
        Job::Deliver(p) => scenario::deliver::run(ctx, p.clone()).await,
        Job::Storm(p) => scenario::storm::run(ctx, *p).await,
        Job::Soak(p) => scenario::soak::run(ctx, *p).await,
        Job::Chaos(p) => scenario::chaos::run(ctx, *p).await,
        Job::Idle(n, settle) => scenario::idle::idle(ctx, *n, *settle).await,
        Job::Connect(n) => scenario::idle::connect(ctx, *n).await,
        Job::Recover {
            clients,
            warmup,
            missed,
        } => scenario::recover::run(ctx, *clients, *warmup, *missed).await,
    };
    vec![one]
}

fn repo_root() -> PathBuf {
    // The bench crate lives in <repo>/benches/herald-bench.
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).map(PathBuf::from).unwrap_or(here)
}

fn node_version(node: &str) -> String {
    std::process::Command::new(node)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "not found".into())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::FloorServer {
        subscribers,
        rate,
        events,
    } = cli.cmd
    {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(floor::serve(floor::Plan {
                subscribers,
                rate,
                events,
            }));
    }
    let g = cli.global.clone();
    let nofile = sys::raise_nofile();
    let root = repo_root();
    let short = matches!(cli.cmd, Cmd::Short);
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    let out = g.out.clone().unwrap_or_else(|| {
        if short {
            root.join("benches/results/tmp")
                .join(format!("short-{stamp}"))
        } else {
            root.join("benches/results").join(&stamp)
        }
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let kinds = match g.target {
        Target::Herald => vec![Kind::Herald],
        Target::Socketio => vec![Kind::SocketIo],
        Target::Both => vec![Kind::Herald, Kind::SocketIo],
    };
    let servers = ServerOpts {
        herald_bin: g
            .herald_bin
            .clone()
            .unwrap_or_else(|| root.join("target/release/herald")),
        peer_dir: g
            .peer_dir
            .clone()
            .unwrap_or_else(|| root.join("benches/peers/socketio")),
        node: g.node.clone(),
        log_dir: out.join("logs"),
        herald_args: g.herald_args.clone(),
    };
    let common = Common {
        read_buffer: g.read_buffer,
        connect_concurrency: g.connect_concurrency,
        wait: Duration::from_secs(g.wait_s),
        nofile,
    };
    let meta = report::Meta {
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        machine: sys::machine(nofile),
        commit: sys::git_commit(&root),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        node: node_version(&g.node),
    };
    eprintln!(
        "herald-bench: results in {} (NOFILE {nofile}, {} worker threads)",
        out.display(),
        g.threads
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(g.threads.max(1))
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let jobs = jobs(&cli.cmd, &g.transport);
    let results = rt.block_on(async {
        let mut results = Vec::new();
        // Rounds outermost: every scenario and transport runs once per round, so a drift of
        // this shared machine falls on both sides of a comparison (WebSocket beside SSE, as
        // Herald beside Socket.IO), not on whichever ran last.
        for _ in 0..g.rounds.max(1) {
            for (job, transport) in &jobs {
                for &kind in &kinds {
                    if let Some(why) = transport.unsupported(kind) {
                        eprintln!("[{kind}] skipped over {transport}: {why}");
                        continue;
                    }
                    if job.herald_only() && kind != Kind::Herald {
                        eprintln!("[{kind}] skipped: the scenario has no Socket.IO equivalent");
                        continue;
                    }
                    let ctx = Ctx {
                        kind,
                        transport: *transport,
                        servers: servers.clone(),
                        common: common.clone(),
                    };
                    results.extend(run_job(&ctx, job).await);
                    // Partial results survive an interrupted long run.
                    let _ = report::write(&out, &meta, &results);
                }
            }
        }
        results
    });
    let mut md = report::write(&out, &meta, &results).context("writing the report")?;
    if let Some(plan) = floor_plan(&cli.cmd) {
        eprintln!("floor: raw TCP, {} subscribers", plan.subscribers);
        let measured = rt.block_on(floor::run(plan)).context("the floor run")?;
        let section = format!("\n## Floor\n\n{}", floor::markdown(&measured));
        md.push_str(&section);
        std::fs::write(out.join("report.md"), &md).context("writing the report")?;
        std::fs::write(
            out.join("floor.json"),
            serde_json::to_string_pretty(&measured)?,
        )
        .context("writing floor.json")?;
    }
    if !g.no_plots {
        match plot::all(&out, &results) {
            Ok(files) => eprintln!("{} plots written", files.len()),
            Err(e) => eprintln!("plots failed: {e}"),
        }
    }
    println!("{md}");
    eprintln!("report: {}", out.join("report.md").display());
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{}/{}", r.label, r.target))
        .collect();
    if !failed.is_empty() {
        eprintln!("FAILED: {}", failed.join(", "));
        std::process::exit(1);
    }
    Ok(())
}
