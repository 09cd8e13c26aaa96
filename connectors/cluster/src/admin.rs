//! Admin commands for every node: the node the API call reached acts on its own connections
//! and sends the command on `herald.<cluster>.admin`; every other node runs it on its own and
//! answers how many connections it acted on, so the API's answer counts the whole cluster.
//!
//! Blocks and revocations also go into the `bans` key-value bucket, which a node reads before
//! it serves: a node that starts later refuses the same users and tokens.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::StreamExt;
use herald_connector_api::{AdminCommand, LogError, LogFuture, LogSink};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{ClusterConfig, ClusterError};

/// How long a command waits for the other nodes' answers; a node that answers later still
/// runs it, it is only missing from the count.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// A command and the node that sent it (which already ran it).
#[derive(Serialize, Deserialize)]
struct Sent {
    from: String,
    command: AdminCommand,
}

/// What a node that ran a command answers.
#[derive(Serialize, Deserialize)]
struct Answer {
    acted_on: usize,
}

/// Sends and serves admin commands.
#[derive(Clone)]
pub struct Admin {
    client: async_nats::Client,
    subject: String,
    node: String,
    bans: kv::Store,
}

/// The `bans` key a block or revocation is kept under, and whether the command lifts it.
fn ban_key(command: &AdminCommand) -> Option<(String, bool)> {
    let key = |kind: &str, id: &str| format!("{kind}.{}", URL_SAFE_NO_PAD.encode(id));
    match command {
        AdminCommand::Block { user, .. } => Some((key("block", user), false)),
        AdminCommand::Unblock { user } => Some((key("block", user), true)),
        AdminCommand::RevokeJti { jti, .. } => Some((key("jti", jti), false)),
        AdminCommand::RevokeBefore { user, .. } => Some((key("before", user), false)),
        AdminCommand::Disconnect { .. } | AdminCommand::Unsubscribe { .. } => None,
    }
}

/// Whether a kept ban has lapsed by `now_ms`.
fn lapsed(command: &AdminCommand, now_ms: u64) -> bool {
    match command {
        AdminCommand::Block { until_ms, .. } | AdminCommand::RevokeJti { until_ms, .. } => {
            until_ms.is_some_and(|until| until <= now_ms)
        }
        _ => false,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Admin {
    /// Admin commands of the cluster `config` names, for `node`; opens (creating) its bucket.
    ///
    /// # Errors
    /// [`ClusterError`] when JetStream refuses the bucket.
    pub async fn open(
        client: async_nats::Client,
        config: &ClusterConfig,
        node: &str,
    ) -> Result<Self, ClusterError> {
        let js = jetstream::new(client.clone());
        let bans = crate::bucket(&js, config, "bans", Duration::ZERO).await?;
        Ok(Self {
            client,
            subject: format!("herald.{}.admin", config.name),
            node: node.to_owned(),
            bans,
        })
    }

    /// Keeps `command` if it is a ban (or lifts one), sends it to the other nodes and adds up
    /// what the `others` live nodes answer within [`ANSWER_WAIT`].
    pub fn send(&self, command: &AdminCommand, others: usize) -> LogFuture<usize> {
        let sent = Sent {
            from: self.node.clone(),
            command: command.clone(),
        };
        let admin = self.clone();
        Box::pin(async move {
            admin.keep(&sent.command).await;
            let payload = serde_json::to_vec(&sent).map_err(|e| LogError(e.to_string()))?;
            let client = &admin.client;
            let inbox = client.new_inbox();
            let mut answers = client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| LogError(e.to_string()))?;
            client
                .publish_with_reply(admin.subject.clone(), inbox, payload.into())
                .await
                .map_err(|e| LogError(e.to_string()))?;
            client.flush().await.map_err(|e| LogError(e.to_string()))?;
            let mut acted_on = 0;
            let mut answered = 0;
            let deadline = tokio::time::sleep(ANSWER_WAIT);
            tokio::pin!(deadline);
            while answered < others {
                let message = tokio::select! {
                    () = &mut deadline => break,
                    message = answers.next() => message,
                };
                let Some(message) = message else { break };
                if let Ok(answer) = serde_json::from_slice::<Answer>(&message.payload) {
                    answered += 1;
                    acted_on += answer.acted_on;
                }
            }
            if answered < others {
                tracing::warn!(answered, others, command = ?sent.command, "cluster: not every node answered an admin command in time; the count leaves them out");
            }
            Ok(acted_on)
        })
    }

    /// Writes a ban into the bucket, or deletes the one a command lifts.
    async fn keep(&self, command: &AdminCommand) {
        let Some((key, lift)) = ban_key(command) else {
            return;
        };
        let value = if lift {
            None
        } else {
            let command = self.latest_cut_off(&key, command).await;
            match serde_json::to_vec(&command) {
                Ok(value) => Some(value.into()),
                Err(e) => {
                    tracing::warn!(error = %e, ?command, "cluster: a ban could not be written down");
                    return;
                }
            }
        };
        if let Err(e) = crate::put_or_delete(&self.bans, &key, value).await {
            tracing::warn!(error = %e, ?command, "cluster: a ban was not kept for nodes that start later");
        }
    }

    /// A revocation by issue time keeps the later of its cut-off and the one already kept, as
    /// each node does; any other command as it is.
    async fn latest_cut_off(&self, key: &str, command: &AdminCommand) -> AdminCommand {
        let AdminCommand::RevokeBefore { user, before_ms } = command else {
            return command.clone();
        };
        let kept = match self.bans.get(key).await {
            Ok(Some(value)) => match serde_json::from_slice(&value) {
                Ok(AdminCommand::RevokeBefore { before_ms, .. }) => before_ms,
                _ => 0,
            },
            _ => 0,
        };
        AdminCommand::RevokeBefore {
            user: user.clone(),
            before_ms: (*before_ms).max(kept),
        }
    }

    /// Applies every ban in the bucket to `sink` (deleting those that lapsed); returns how many.
    pub async fn restore(&self, sink: &dyn LogSink) -> usize {
        let Ok(mut keys) = self.bans.keys().await else {
            tracing::warn!("cluster: the kept bans cannot be listed");
            return 0;
        };
        let mut found = Vec::new();
        while let Some(Ok(key)) = keys.next().await {
            found.push(key);
        }
        let now = now_ms();
        let mut restored = 0;
        for key in found {
            let Ok(Some(value)) = self.bans.get(&key).await else {
                continue;
            };
            match serde_json::from_slice::<AdminCommand>(&value) {
                Ok(command) if lapsed(&command, now) => {
                    let _ = self.bans.delete(&key).await;
                }
                Ok(command) => {
                    sink.admin(&command);
                    restored += 1;
                }
                Err(e) => tracing::warn!(%key, error = %e, "cluster: a kept ban was not read"),
            }
        }
        restored
    }

    /// Runs the other nodes' commands on `sink` and answers them, until `shutdown`.
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
                    self.answer(message.reply, acted_on).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: an admin command that is not Herald's was ignored")
                }
            }
        }
    }

    async fn answer(&self, reply: Option<async_nats::Subject>, acted_on: usize) {
        let Some(reply) = reply else { return };
        let answer = Answer { acted_on };
        let Ok(payload) = serde_json::to_vec(&answer) else {
            return;
        };
        if let Err(e) = self.client.publish(reply, payload.into()).await {
            tracing::warn!(error = %e, "cluster: an admin command's answer was not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_are_kept_by_kind_and_id_and_unblock_lifts_the_block() {
        let block = AdminCommand::Block {
            user: "auth0|42".into(),
            until_ms: Some(10),
        };
        let unblock = AdminCommand::Unblock {
            user: "auth0|42".into(),
        };
        let (key, lift) = ban_key(&block).expect("a block is kept");
        assert!(!lift);
        assert_eq!(ban_key(&unblock), Some((key, true)));
        assert!(lapsed(&block, 10));
        assert!(!lapsed(&block, 9));
        let disconnect = AdminCommand::Disconnect {
            target: "all".into(),
            reason: String::new(),
            reconnect: true,
        };
        assert_eq!(ban_key(&disconnect), None);
    }
}
