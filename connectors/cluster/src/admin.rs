//! Admin commands for every node: the node the API call reached acts on its own connections
//! and sends the command on `herald.<cluster>.admin`; every other node runs it on its own.

use std::sync::Arc;

use futures_util::StreamExt;
use herald_connector_api::{AdminCommand, LogError, LogFuture, LogSink};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::ClusterConfig;

/// A command and the node that sent it (which already ran it).
#[derive(Serialize, Deserialize)]
struct Sent {
    from: String,
    command: AdminCommand,
}

/// Sends and serves admin commands.
#[derive(Clone)]
pub struct Admin {
    client: async_nats::Client,
    subject: String,
    node: String,
}

impl Admin {
    /// Admin commands of the cluster `config` names, for `node`.
    pub fn new(client: async_nats::Client, config: &ClusterConfig, node: &str) -> Self {
        Self {
            client,
            subject: format!("herald.{}.admin", config.name),
            node: node.to_owned(),
        }
    }

    /// Sends `command` to the other nodes.
    pub fn send(&self, command: &AdminCommand) -> LogFuture<()> {
        let sent = Sent {
            from: self.node.clone(),
            command: command.clone(),
        };
        let payload = serde_json::to_vec(&sent).unwrap_or_default();
        let (client, subject) = (self.client.clone(), self.subject.clone());
        Box::pin(async move {
            client
                .publish(subject, payload.into())
                .await
                .map_err(|e| LogError(e.to_string()))?;
            client.flush().await.map_err(|e| LogError(e.to_string()))
        })
    }

    /// Runs the other nodes' commands on `sink` until `shutdown`.
    pub async fn serve(self, sink: Arc<dyn LogSink>, shutdown: CancellationToken) {
        let mut commands = match self.client.subscribe(self.subject.clone()).await {
            Ok(commands) => commands,
            Err(e) => {
                tracing::error!(error = %e, "cluster: admin commands cannot be received");
                return;
            }
        };
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                message = commands.next() => message,
            };
            let Some(message) = message else { return };
            match serde_json::from_slice::<Sent>(&message.payload) {
                Ok(sent) if sent.from == self.node => {}
                Ok(sent) => {
                    let acted_on = sink.admin(&sent.command);
                    tracing::info!(from = %sent.from, command = ?sent.command, acted_on, "cluster: admin command run");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: an admin command that is not Herald's was ignored")
                }
            }
        }
    }
}
