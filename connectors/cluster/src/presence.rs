//! Presence across nodes, on two JetStream key-value buckets:
//! - `nodes`: each node's heartbeat (`<node>` → its connection count), put every third of
//!   `node_timeout`;
//! - `members`: one key per membership of a connection in a channel
//!   (`<node>.<conn>.<channel>`, each part base64url) → the user, put on join and deleted on
//!   leave.
//!
//! Every node watches both and keeps a view of the others' members. A node whose heartbeat
//! is older than `node_timeout` is gone: its members leave the view (the sink sends `left`
//! notices) and their keys are deleted.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::StreamExt;
use herald_connector_api::{LogSink, Member, NodeInfo};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{age_of, ClusterConfig, ClusterError};

/// Membership changes waiting to be written; more are dropped (and logged): presence is
/// then stale until those connections join or leave again.
const CHANGE_QUEUE: usize = 65_536;

/// Membership changes written at once, at most. A batch keeps only the last change of each
/// key, so its writes may land in any order.
const WRITE_BATCH: usize = 256;

/// Deletes of a gone node's keys in flight at once.
const FORGET_IN_FLIGHT: usize = 64;

/// How long the heartbeat of a node that went away stays in its bucket.
const NODES_MAX_AGE: Duration = Duration::from_secs(600);

/// How long a watcher waits before it watches again after an error.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// One membership change of this node.
struct Change {
    key: String,
    user: Option<String>,
}

/// A member on another node.
#[derive(Clone)]
struct Remote {
    user: String,
    node: String,
}

#[derive(Default)]
struct View {
    /// channel → conn → member.
    members: HashMap<String, HashMap<String, Remote>>,
    /// node → (connections, last heartbeat).
    nodes: HashMap<String, (usize, Instant)>,
}

/// This node's side of cluster presence.
pub struct Presence {
    node: String,
    node_timeout: Duration,
    nodes: kv::Store,
    members: kv::Store,
    changes: mpsc::Sender<Change>,
    pending: Mutex<Option<mpsc::Receiver<Change>>>,
    view: Arc<Mutex<View>>,
    sink: OnceLock<Arc<dyn LogSink>>,
}

fn encode(part: &str) -> String {
    URL_SAFE_NO_PAD.encode(part)
}

fn decode(part: &str) -> Option<String> {
    String::from_utf8(URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// `(node, conn, channel)` of a membership key.
fn parse_key(key: &str) -> Option<(String, String, String)> {
    let mut parts = key.split('.');
    let parsed = (
        decode(parts.next()?)?,
        decode(parts.next()?)?,
        decode(parts.next()?)?,
    );
    parts.next().is_none().then_some(parsed)
}

impl Presence {
    /// Opens (creating) the buckets of the cluster.
    ///
    /// # Errors
    /// [`ClusterError`] when JetStream refuses.
    pub async fn open(
        client: async_nats::Client,
        config: &ClusterConfig,
        node: &str,
    ) -> Result<Self, ClusterError> {
        let js = jetstream::new(client);
        let nodes = crate::bucket(&js, config, "nodes", NODES_MAX_AGE).await?;
        let members = crate::bucket(&js, config, "members", Duration::ZERO).await?;
        let (changes, pending) = mpsc::channel(CHANGE_QUEUE);
        let presence = Self {
            node: node.to_owned(),
            node_timeout: config.node_timeout,
            nodes,
            members,
            changes,
            pending: Mutex::new(Some(pending)),
            view: Arc::default(),
            sink: OnceLock::new(),
        };
        presence.refuse_a_live_twin().await?;
        presence.forget_node(node).await;
        Ok(presence)
    }

    /// Refuses to start while another live node has this node's name: their connection ids
    /// and memberships would be mixed up. A heartbeat left by this node's previous run (a
    /// crash) is told apart by waiting one heartbeat: a live twin renews its own.
    async fn refuse_a_live_twin(&self) -> Result<(), ClusterError> {
        let key = encode(&self.node);
        let fresh = |entry: &kv::Entry| {
            entry.operation == kv::Operation::Put
                && age_of(entry.created.unix_timestamp_nanos()) <= self.node_timeout
        };
        let Ok(Some(seen)) = self.nodes.entry(key.clone()).await else {
            return Ok(());
        };
        if !fresh(&seen) {
            return Ok(());
        }
        tracing::info!(node = %self.node, "cluster: a recent heartbeat has this node's name; waiting one heartbeat to tell whether that node is live");
        tokio::time::sleep(self.node_timeout / 3 + Duration::from_secs(1)).await;
        match self.nodes.entry(key).await {
            Ok(Some(now)) if now.revision != seen.revision && fresh(&now) => {
                Err(ClusterError::new(
                    "node",
                    format!(
                        "another live node is named {:?}: give every node its own `node`",
                        self.node
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Deletes the membership keys of `node` (a previous run of this one, or a node gone).
    async fn forget_node(&self, node: &str) {
        let prefix = format!("{}.", encode(node));
        let Ok(mut keys) = self.members.keys().await else {
            return;
        };
        let mut stale = Vec::new();
        while let Some(Ok(key)) = keys.next().await {
            if key.starts_with(&prefix) {
                stale.push(key);
            }
        }
        futures_util::stream::iter(stale)
            .for_each_concurrent(FORGET_IN_FLIGHT, |key| async move {
                let _ = self.members.delete(&key).await;
            })
            .await;
    }

    /// Queues a membership change of this node to be written.
    pub fn local_change(&self, channel: &str, member: &Member, joined: bool) {
        let key = format!(
            "{}.{}.{}",
            encode(&self.node),
            encode(&member.conn),
            encode(channel)
        );
        let change = Change {
            key,
            user: joined.then(|| member.user.clone()),
        };
        if self.changes.try_send(change).is_err() {
            tracing::warn!(
                channel,
                "cluster presence: a membership change was dropped (queue full)"
            );
        }
    }

    /// The members of `channel` on the other live nodes.
    pub fn remote_members(&self, channel: &str) -> Vec<Member> {
        let view = self.view.lock();
        view.members
            .get(channel)
            .map(|members| {
                members
                    .iter()
                    .filter(|(_, m)| view.nodes.contains_key(&m.node))
                    .map(|(conn, m)| Member {
                        user: m.user.clone(),
                        conn: conn.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every channel with members on the other live nodes, and how many.
    pub fn remote_channels(&self) -> Vec<(String, usize)> {
        let view = self.view.lock();
        view.members
            .iter()
            .map(|(channel, members)| {
                let live = members
                    .values()
                    .filter(|m| view.nodes.contains_key(&m.node))
                    .count();
                (channel.clone(), live)
            })
            .filter(|(_, live)| *live > 0)
            .collect()
    }

    /// The live nodes, this one first.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let here = NodeInfo {
            node: self.node.clone(),
            connections: self.sink.get().map_or(0, |s| s.connection_count()),
            seen_secs_ago: 0,
        };
        let view = self.view.lock();
        let mut others: Vec<NodeInfo> = view
            .nodes
            .iter()
            .map(|(node, (connections, seen))| NodeInfo {
                node: node.clone(),
                connections: *connections,
                seen_secs_ago: seen.elapsed().as_secs(),
            })
            .collect();
        others.sort_by(|a, b| a.node.cmp(&b.node));
        std::iter::once(here).chain(others).collect()
    }

    /// Runs the writer, the heartbeat and both watchers until `shutdown`.
    pub fn run(
        self: &Arc<Self>,
        sink: Arc<dyn LogSink>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let _ = self.sink.set(sink);
        if let Some(pending) = self.pending.lock().take() {
            tasks.spawn(self.clone().write(pending, shutdown.clone()));
        }
        tasks.spawn(self.clone().heartbeat(shutdown.clone()));
        tasks.spawn(self.clone().watch_nodes(shutdown.clone()));
        tasks.spawn(self.clone().watch_members(shutdown.clone()));
    }

    async fn write(
        self: Arc<Self>,
        mut pending: mpsc::Receiver<Change>,
        shutdown: CancellationToken,
    ) {
        loop {
            let change = tokio::select! {
                () = shutdown.cancelled() => break,
                change = pending.recv() => change,
            };
            let Some(change) = change else { break };
            let mut batch = HashMap::from([(change.key, change.user)]);
            while batch.len() < WRITE_BATCH {
                let Ok(change) = pending.try_recv() else {
                    break;
                };
                batch.insert(change.key, change.user);
            }
            let writes = batch
                .into_iter()
                .map(|(key, user)| self.write_one(key, user));
            for written in futures_util::future::join_all(writes).await {
                if let Err(e) = written {
                    tracing::warn!(error = %e, "cluster presence: a membership change was not written");
                }
            }
        }
        // This node's members leave the cluster's view with it.
        let node = self.node.clone();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.forget_node(&node)).await;
        let _ = self.nodes.delete(encode(&self.node)).await;
    }

    /// Puts a membership (`user` given) or deletes it.
    async fn write_one(&self, key: String, user: Option<String>) -> Result<(), String> {
        crate::put_or_delete(&self.members, &key, user.map(Into::into)).await
    }

    async fn heartbeat(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.node_timeout / 3);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let connections = self.sink.get().map_or(0, |s| s.connection_count());
            if let Err(e) = self
                .nodes
                .put(encode(&self.node), connections.to_string().into())
                .await
            {
                tracing::warn!(error = %e, "cluster presence: heartbeat not written");
            }
            self.drop_silent_nodes().await;
        }
    }

    /// Drops nodes whose heartbeat is older than `node_timeout`, with their members.
    async fn drop_silent_nodes(&self) {
        let gone: Vec<String> = {
            let mut view = self.view.lock();
            let timeout = self.node_timeout;
            let gone: Vec<String> = view
                .nodes
                .iter()
                .filter(|(_, (_, seen))| seen.elapsed() > timeout)
                .map(|(node, _)| node.clone())
                .collect();
            for node in &gone {
                view.nodes.remove(node);
            }
            gone
        };
        for node in gone {
            tracing::warn!(%node, "cluster: a node stopped its heartbeat; its members leave");
            self.remove_members_of(&node);
            self.forget_node(&node).await;
        }
    }

    /// Removes `node`'s members from the view, telling the sink of each.
    fn remove_members_of(&self, node: &str) {
        let mut left = Vec::new();
        {
            let mut view = self.view.lock();
            for (channel, members) in view.members.iter_mut() {
                members.retain(|conn, m| {
                    let keep = m.node != node;
                    if !keep {
                        left.push((
                            channel.clone(),
                            Member {
                                user: m.user.clone(),
                                conn: conn.clone(),
                            },
                        ));
                    }
                    keep
                });
            }
            view.members.retain(|_, members| !members.is_empty());
        }
        // Outside the view's lock: the sink locks channels.
        if let Some(sink) = self.sink.get() {
            for (channel, member) in left {
                sink.remote_membership(&channel, &member, false);
            }
        }
    }

    async fn watch_nodes(self: Arc<Self>, shutdown: CancellationToken) {
        watch(&self.nodes, "node", &shutdown, |entry| {
            self.apply_node_entry(entry)
        })
        .await;
    }

    async fn watch_members(self: Arc<Self>, shutdown: CancellationToken) {
        watch(&self.members, "member", &shutdown, |entry| {
            self.apply_member_entry(entry);
        })
        .await;
    }

    fn apply_node_entry(&self, entry: &kv::Entry) {
        if entry.key == encode(&self.node) {
            return;
        }
        let Some(node) = decode(&entry.key) else {
            return;
        };
        if entry.operation == kv::Operation::Put {
            let connections = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let age = age_of(entry.created.unix_timestamp_nanos());
            let seen = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
            self.view.lock().nodes.insert(node, (connections, seen));
        } else {
            self.view.lock().nodes.remove(&node);
            self.remove_members_of(&node);
        }
    }

    fn apply_member_entry(&self, entry: &kv::Entry) {
        let Some((node, conn, channel)) = parse_key(&entry.key) else {
            return;
        };
        if node == self.node {
            return;
        }
        let member = |user: String| Member {
            user,
            conn: conn.clone(),
        };
        let changed = {
            let mut view = self.view.lock();
            if entry.operation == kv::Operation::Put {
                let user = String::from_utf8_lossy(&entry.value).into_owned();
                let members = view.members.entry(channel.clone()).or_default();
                let fresh = members
                    .insert(
                        conn.clone(),
                        Remote {
                            user: user.clone(),
                            node,
                        },
                    )
                    .is_none();
                fresh.then(|| (member(user), true))
            } else {
                let members = view.members.get_mut(&channel);
                let removed = members.and_then(|m| m.remove(&conn));
                view.members.retain(|_, m| !m.is_empty());
                removed.map(|r| (member(r.user), false))
            }
        };
        if let (Some((member, joined)), Some(sink)) = (changed, self.sink.get()) {
            sink.remote_membership(&channel, &member, joined);
        }
    }
}

/// Hands every entry of `store` (its current values, then every change) to `apply` until
/// `shutdown`, watching again after an error.
async fn watch(
    store: &kv::Store,
    what: &str,
    shutdown: &CancellationToken,
    mut apply: impl FnMut(&kv::Entry),
) {
    loop {
        let watching = async {
            let mut entries = store
                .watch_with_history(">")
                .await
                .map_err(|e| e.to_string())?;
            while let Some(entry) = entries.next().await {
                apply(&entry.map_err(|e| e.to_string())?);
            }
            Ok::<(), String>(())
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            watched = watching => if let Err(e) = watched {
                tracing::warn!(error = %e, "cluster presence: {what} watch stopped; watching again");
            },
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY_DELAY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_membership_key_holds_any_node_conn_and_channel() {
        let key = format!(
            "{}.{}.{}",
            encode("node 1"),
            encode("c_node 1_7"),
            encode("game:42/a.b")
        );
        assert!(key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
        assert_eq!(
            parse_key(&key),
            Some(("node 1".into(), "c_node 1_7".into(), "game:42/a.b".into()))
        );
        assert_eq!(parse_key("a.b"), None);
    }
}
