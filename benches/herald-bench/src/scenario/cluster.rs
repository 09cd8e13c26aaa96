//! `cluster-fanout` (Herald only): the fanout load (one channel, N subscribers, events as
//! fast as they are delivered) three ways in one invocation, so the cost of the cluster reads
//! against the same load on the same machine: one node with its in-memory history, one node
//! on JetStream, and `nodes` nodes clustered on one JetStream log with the subscribers spread
//! over them and publishes round-robin. Both JetStream setups share one `nats-server` of the
//! run's own; each has a cluster name (and so a stream) of its own.

use std::time::Duration;

use super::deliver::{measure, prepare, DeliverPlan};
use super::{with_servers, Better, Ctx, RunResult};
use crate::natsd::NatsServer;
use crate::server::ServerOpts;

/// What a `cluster-fanout` invocation runs.
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    /// The fanout load every setup gets.
    pub load: DeliverPlan,
    /// Nodes of the clustered setup.
    pub nodes: usize,
}

/// How the gateway under the load is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// One node, no NATS: the embedded in-memory history.
    Memory,
    /// This many nodes on the JetStream log.
    Cluster(usize),
}

impl Setup {
    /// The label's word for the setup: `memory`, `1node`, `3nodes`.
    fn tag(self) -> String {
        match self {
            Setup::Memory => "memory".into(),
            Setup::Cluster(1) => "1node".into(),
            Setup::Cluster(n) => format!("{n}nodes"),
        }
    }

    fn nodes(self) -> usize {
        match self {
            Setup::Memory => 1,
            Setup::Cluster(n) => n,
        }
    }
}

/// The three runs: in-memory, one node on JetStream, the cluster (once when `nodes` is 1).
pub async fn run(ctx: &Ctx, plan: &ClusterPlan) -> Vec<RunResult> {
    let mut setups = vec![Setup::Memory, Setup::Cluster(1)];
    if plan.nodes > 1 {
        setups.push(Setup::Cluster(plan.nodes));
    }
    let nats = NatsServer::start().await;
    let mut out = Vec::with_capacity(setups.len());
    for setup in setups {
        let r = match (&nats, setup) {
            (_, Setup::Memory) => run_setup(ctx, &plan.load, setup, None).await,
            (Ok(nats), _) => run_setup(ctx, &plan.load, setup, Some(nats)).await,
            (Err(e), _) => {
                let mut load = plan.load.clone();
                let label = label(ctx, &load, setup);
                let mut r = prepare(ctx, &mut load, label);
                r.ok = false;
                r.note(format!("nats-server did not start: {e}"));
                r
            }
        };
        out.push(r);
    }
    if let Ok(nats) = nats {
        nats.stop().await;
    }
    out
}

/// `cluster-fanout-3nodes-1000`, with the transport's tag as every label has it.
fn label(ctx: &Ctx, load: &DeliverPlan, setup: Setup) -> String {
    ctx.label(
        &format!("{}-{}", load.scenario, setup.tag()),
        load.subscribers,
    )
}

/// Starts the setup's nodes, waits until each is ready, and measures the load against them.
async fn run_setup(
    ctx: &Ctx,
    load: &DeliverPlan,
    setup: Setup,
    nats: Option<&NatsServer>,
) -> RunResult {
    let mut load = load.clone();
    let label = label(ctx, &load, setup);
    let mut base = prepare(ctx, &mut load, label.clone());
    base.fig("nodes", setup.nodes() as f64, "nodes", Better::Info);
    if let Some(params) = base.params.as_object_mut() {
        params.insert("nodes".into(), setup.nodes().into());
        let history = if nats.is_some() {
            "jetstream"
        } else {
            "memory"
        };
        params.insert("history".into(), history.into());
    }
    let nodes = match nats {
        None => Ok(vec![(label.clone(), ctx.servers.clone())]),
        Some(nats) => (1..=setup.nodes())
            .map(|i| node_opts(ctx, &label, &setup.tag(), i, &nats.url()))
            .collect::<std::io::Result<Vec<_>>>(),
    };
    let nodes = match nodes {
        Ok(nodes) => nodes,
        Err(e) => {
            base.ok = false;
            base.note(format!("writing a node's config: {e}"));
            return base;
        }
    };
    let broker = nats.map(NatsServer::pid);
    with_servers(ctx, &nodes, false, base, |mut servers, mut r| async move {
        for server in &mut servers {
            // A cluster node serves once it has read the log; ready says it holds NATS too.
            if let Err(e) = server.wait_ready(Duration::from_secs(30)).await {
                r.ok = false;
                r.note(format!("a node never became ready: {e}"));
                return (servers, r);
            }
        }
        let r = measure(ctx, load, &servers, None, broker, r).await;
        (servers, r)
    })
    .await
}

/// Node `i` of the cluster `bench-<tag>`: a config file beside the logs (kept, as the run's
/// record) naming the node and the cluster's NATS.
fn node_opts(
    ctx: &Ctx,
    label: &str,
    tag: &str,
    i: usize,
    url: &str,
) -> std::io::Result<(String, ServerOpts)> {
    let node = format!("n{i}");
    let dir = &ctx.servers.log_dir;
    let config = dir.join(format!("{label}-{node}.toml"));
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        &config,
        format!("node = \"{node}\"\n\n[cluster]\nnats = [\"{url}\"]\nname = \"bench-{tag}\"\n"),
    )?;
    let mut opts = ctx.servers.clone();
    opts.herald_args
        .push(format!("--config={}", config.display()));
    Ok((format!("{label}-{node}"), opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setups_are_labelled_by_their_nodes() {
        assert_eq!(Setup::Memory.tag(), "memory");
        assert_eq!(Setup::Cluster(1).tag(), "1node");
        assert_eq!(Setup::Cluster(3).tag(), "3nodes");
        assert_eq!(Setup::Cluster(3).nodes(), 3);
        assert_eq!(Setup::Memory.nodes(), 1);
    }
}
