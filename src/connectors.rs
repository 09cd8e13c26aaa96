//! Starts the inbound connectors the configuration names, each under the shutdown signal,
//! with its status registered for the probes, `/api/info` and `/metrics`.

use std::sync::Arc;

use herald_connector_api::{Connector, ConnectorContext, ConnectorSet, Gateway, Health};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

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
    // Without a connector feature nothing reads these.
    let _ = (config, gateway, set, tracker, shutdown);
}

#[cfg_attr(not(feature = "nats"), allow(dead_code))]
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
