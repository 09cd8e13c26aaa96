//! Starts the inbound connectors the configuration names, each under the shutdown signal,
//! with its status registered for the probes, `/api/info` and `/metrics`; and connects the
//! backends the hub calls out to (`[rpc]`, client activity, `[auth_hooks]`).

use std::sync::Arc;

use herald_connector_api::{
    Connector, ConnectorContext, ConnectorSet, Gateway, Health, RpcBackend,
};
use herald_connector_authhook::HttpAuthHooks;
use herald_connector_rpc::{HttpRpc, RpcBackendKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::{AuthSetup, Backends, Hub, RpcSetup};
use crate::pattern::Pattern;

/// Why a backend could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct BackendError {
    what: &'static str,
    message: String,
}

/// How long a node that joins a cluster may take to apply the log before it serves.
#[cfg(feature = "nats")]
const REPLAY_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Makes `hub` a node of the cluster `config` names: its publishes go through the cluster's
/// log, whose records it applies from the first one the log holds; returns once it applied
/// every record the log held when it connected (its durable history), or after
/// [`REPLAY_WAIT`]. The engine runs on `tasks` until `shutdown`.
///
/// # Errors
/// [`BackendError`] when NATS cannot be reached or the stream cannot be set up.
#[cfg(feature = "nats")]
pub async fn join_cluster(
    config: &herald_cluster::ClusterConfig,
    hub: &Hub,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), BackendError> {
    let status = hub.metrics().connectors.register("cluster");
    let (engine, start) = herald_cluster::Engine::connect(config, hub.node(), status)
        .await
        .map_err(|e| BackendError {
            what: "cluster",
            message: e.to_string(),
        })?;
    hub.attach_log(engine.clone(), &start.epoch, start.floor);
    let bans = engine.restore_bans(hub).await;
    if bans > 0 {
        tracing::info!(bans, "blocks and revocations of the cluster restored");
    }
    engine.run(Arc::new(hub.clone()), &start, tasks, shutdown);
    let records = start.last.saturating_sub(start.floor);
    if hub.catch_up_log(start.last, REPLAY_WAIT).await {
        tracing::info!(cluster = %config.name, epoch = %start.epoch, records, "joined the cluster; history read from the log");
    } else {
        tracing::warn!(cluster = %config.name, records, "joined the cluster before the log was read through: early recoveries may fail");
    }
    Ok(())
}

/// Connects the rpc backend and the activity publisher the configuration asks for and hands
/// them to `hub`. Calls run on `calls`; the activity publisher on `outbound`, until
/// `outbound_shutdown` (cancel it after the connections are gone, so their disconnects go
/// out too).
///
/// # Errors
/// [`BackendError`] when a backend cannot be built (a bad NATS URL, no HTTP client).
pub async fn connect_backends(
    config: &Config,
    hub: &Hub,
    calls: &TaskTracker,
    outbound: &TaskTracker,
    outbound_shutdown: &CancellationToken,
) -> Result<(), BackendError> {
    let mut backends = Backends::default();
    if let Some(rpc) = config
        .rpc
        .as_ref()
        .filter(|r| r.backend == RpcBackendKind::Http)
    {
        let backend = HttpRpc::new(rpc).map_err(|e| BackendError {
            what: "rpc",
            message: e.to_string(),
        })?;
        backends.rpc = Some(rpc_setup(rpc, Arc::new(backend), calls));
    }
    if let Some(hooks) = &config.auth_hooks {
        let http = HttpAuthHooks::new(hooks).map_err(|e| BackendError {
            what: "auth_hooks",
            message: e.to_string(),
        })?;
        let guarded = if hooks.join_url.is_empty() {
            Vec::new()
        } else {
            hooks
                .join_channels
                .iter()
                .map(|p| Pattern::new(p))
                .collect()
        };
        backends.auth = Some(AuthSetup {
            hooks: Arc::new(http),
            idents: !hooks.ident_url.is_empty(),
            guarded,
            tasks: calls.clone(),
        });
    }
    #[cfg(feature = "amqp")]
    if let Some(amqp) = config
        .amqp
        .as_ref()
        .filter(|a| !a.events_exchange.is_empty())
    {
        let status = hub.metrics().connectors.register("amqp-outbound");
        let events = herald_connector_amqp::AmqpEvents::connect(amqp, status.clone()).await;
        let (sink, publisher) = herald_connector_api::activity_queue(
            events,
            amqp.events_queue,
            amqp.events_debounce,
            status,
        );
        outbound.spawn(publisher.run(outbound_shutdown.clone()));
        backends.activity.push(Arc::new(sink));
    }
    #[cfg(feature = "nats")]
    nats_backends(
        config,
        hub,
        &mut backends,
        calls,
        outbound,
        outbound_shutdown,
    )
    .await?;
    // Without the NATS feature nothing publishes activity (and config refuses rpc over NATS).
    let _ = (outbound, outbound_shutdown);
    hub.set_backends(backends);
    Ok(())
}

/// One NATS client (`nats-outbound`) for rpc over NATS and client activity, when either is on.
#[cfg(feature = "nats")]
async fn nats_backends(
    config: &Config,
    hub: &Hub,
    backends: &mut Backends,
    calls: &TaskTracker,
    outbound: &TaskTracker,
    outbound_shutdown: &CancellationToken,
) -> Result<(), BackendError> {
    use herald_connector_api::activity_queue;
    use herald_connector_nats::outbound::{NatsEvents, NatsRpc};

    let nats = config.nats.clone().unwrap_or_default();
    let rpc = config
        .rpc
        .as_ref()
        .filter(|r| r.backend == RpcBackendKind::Nats);
    if rpc.is_none() && !nats.events {
        return Ok(());
    }
    let status = hub.metrics().connectors.register("nats-outbound");
    let client = herald_connector_nats::connect(&nats.url, status.clone())
        .await
        .map_err(|e| BackendError {
            what: "nats (rpc, events)",
            message: e.to_string(),
        })?;
    if let Some(rpc) = rpc {
        let backend = NatsRpc::new(client.clone(), &nats.prefix);
        backends.rpc = Some(rpc_setup(rpc, Arc::new(backend), calls));
    }
    if nats.events {
        let (sink, publisher) = activity_queue(
            NatsEvents::new(client, &nats.prefix),
            nats.events_queue,
            nats.events_debounce,
            status,
        );
        outbound.spawn(publisher.run(outbound_shutdown.clone()));
        backends.activity.push(Arc::new(sink));
    }
    Ok(())
}

fn rpc_setup(
    config: &herald_connector_rpc::RpcConfig,
    backend: Arc<dyn RpcBackend>,
    calls: &TaskTracker,
) -> RpcSetup {
    RpcSetup {
        backend,
        timeout: config.timeout,
        max_in_flight: config.max_in_flight,
        tasks: calls.clone(),
    }
}

/// Spawns every configured connector on `tracker`; they stop when `shutdown` is cancelled.
pub fn start(
    config: &Config,
    gateway: &Arc<dyn Gateway>,
    set: &ConnectorSet,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    #[cfg(feature = "nats")]
    if let Some(nats) = &config.nats {
        let connector =
            herald_connector_nats::NatsConnector::new(nats.clone(), config.max_body_size);
        spawn("nats", connector, gateway, set, tracker, shutdown);
    }
    #[cfg(feature = "amqp")]
    if let Some(amqp) = &config.amqp {
        let connector =
            herald_connector_amqp::AmqpConnector::new(amqp.clone(), config.max_body_size);
        spawn("amqp", connector, gateway, set, tracker, shutdown);
    }
    for tail in &config.file_tail {
        let name = format!("file_tail:{}", tail.path.display());
        let connector =
            herald_connector_filetail::FileTailConnector::new(tail.clone(), config.max_body_size);
        spawn(&name, connector, gateway, set, tracker, shutdown);
    }
}

fn spawn(
    name: &str,
    connector: impl Connector,
    gateway: &Arc<dyn Gateway>,
    set: &ConnectorSet,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let status = set.register(name);
    let cx = ConnectorContext {
        gateway: gateway.clone(),
        status: status.clone(),
        shutdown: shutdown.clone(),
    };
    tracker.spawn(async move {
        if let Err(e) = connector.run(cx).await {
            tracing::error!(connector = status.name(), error = %e, "connector stopped");
            status.set_health(Health::Stopped {
                reason: e.to_string(),
            });
        }
    });
}
