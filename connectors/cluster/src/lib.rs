//! Herald's cluster engine on NATS JetStream: several Herald nodes act as one gateway.
//!
//! - [`log`]: one JetStream stream is the cluster's event log. A publish on any node is
//!   answered once the stream stored it; every node reads the stream in order and applies
//!   each record, so a record's stream sequence is its offset in every channel it targets,
//!   the same on every node, and the stream's creation time names the epoch. A node that
//!   starts reads the stream from its first record before it serves, which makes history
//!   durable on a single node too. Idempotency keys are the stream's `Nats-Msg-Id`.
//! - [`presence`]: every node heartbeats into a key-value bucket and writes its channel
//!   memberships into another; the others watch both, so presence spans the cluster, and the
//!   members of a node whose heartbeat stops are dropped (with `left` notices) after
//!   `node_timeout`.
//! - [`admin`]: disconnect, unsubscribe, block and revoke, sent to every node on a subject
//!   and counted from their answers; blocks and revocations are kept in a bucket for nodes
//!   that start later.
//!
//! No consensus, gossip or replication of Herald's own: JetStream does all of it.

pub mod admin;
pub mod log;
pub mod presence;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use herald_connector_api::{
    AdminCommand, Appended, ClusterLog, ConnectorStatus, LogFuture, LogRecord, LogSink, Member,
    NodeInfo,
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The `[cluster]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server URLs; empty: a single node with in-memory history [default: []].
    pub nats: Vec<String>,
    /// The cluster's name: nodes with the same name and NATS form one gateway [default: herald].
    pub name: String,
    /// Copies of the log JetStream keeps, on that many NATS servers [default: 1].
    pub replicas: usize,
    /// Events the log keeps, at most [default: 1000000].
    pub max_events: i64,
    /// Bytes the log keeps, at most [default: 1 GiB].
    pub max_bytes: i64,
    /// How long the log keeps an event [default: 24h].
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How long a publish waits for the log to store it before it is refused (503) [default: 5s].
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// A node whose heartbeat is older than this is gone: its members leave [default: 10s].
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats: Vec::new(),
            name: "herald".into(),
            replicas: 1,
            max_events: 1_000_000,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(24 * 3600),
            publish_timeout: Duration::from_secs(5),
            node_timeout: Duration::from_secs(10),
        }
    }
}

impl ClusterConfig {
    /// Whether this node is a member of a cluster.
    pub fn enabled(&self) -> bool {
        !self.nats.is_empty()
    }

    /// Every problem with the values, each naming its key.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut problems = Vec::new();
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if !name_ok {
            problems.push(("cluster.name", "must be letters, digits, _ or -"));
        }
        if self.nats.iter().any(|u| u.trim().is_empty()) {
            problems.push(("cluster.nats", "must not hold an empty URL"));
        }
        if !(1..=5).contains(&self.replicas) {
            problems.push(("cluster.replicas", "must be 1 to 5"));
        }
        if self.max_events < 1 {
            problems.push(("cluster.max_events", "must be at least 1"));
        }
        if self.max_bytes < 1024 {
            problems.push(("cluster.max_bytes", "must be at least 1024"));
        }
        if self.max_age < Duration::from_secs(1) {
            problems.push(("cluster.max_age", "must be at least 1s"));
        }
        if self.publish_timeout < Duration::from_millis(100) {
            problems.push(("cluster.publish_timeout", "must be at least 100ms"));
        }
        if self.node_timeout < Duration::from_secs(2) {
            problems.push(("cluster.node_timeout", "must be at least 2s"));
        }
        problems
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
#[error("cluster: {what}: {message}")]
pub struct ClusterError {
    what: &'static str,
    message: String,
}

impl ClusterError {
    fn new(what: &'static str, error: impl std::fmt::Display) -> Self {
        Self {
            what,
            message: error.to_string(),
        }
    }
}

/// How long ago something stored at `stored_ns` (nanoseconds since the Unix epoch) was.
pub(crate) fn age_of(stored_ns: i128) -> Duration {
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    Duration::from_nanos(u64::try_from(now_ns - stored_ns).unwrap_or(0))
}

/// Opens (creating) a key-value bucket of the cluster. The stream is made by hand, as the
/// client's own `create_key_value` would make it: that call first asks for account details
/// that servers before 2.10 answer in a form the client does not read.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    config: &ClusterConfig,
    suffix: &str,
    max_age: Duration,
) -> Result<kv::Store, ClusterError> {
    let bucket = format!("herald_{}_{suffix}", config.name);
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: config.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| ClusterError::new("bucket", format!("{bucket}: {e}")))?;
    js.get_key_value(&bucket)
        .await
        .map_err(|e| ClusterError::new("bucket", format!("{bucket}: {e}")))
}

/// Puts `value` under `key` in `store`, or deletes the key when there is no value.
pub(crate) async fn put_or_delete(
    store: &kv::Store,
    key: &str,
    value: Option<bytes::Bytes>,
) -> Result<(), String> {
    match value {
        Some(value) => store
            .put(key, value)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        None => store.delete(key).await.map_err(|e| e.to_string()),
    }
}

/// A node's engine: the log, presence and admin commands, on one NATS connection.
pub struct Engine {
    log: log::Log,
    presence: Arc<presence::Presence>,
    admin: admin::Admin,
    client: async_nats::Client,
}

/// Where the log stood when the engine connected.
#[derive(Debug, Clone)]
pub struct LogStart {
    /// The log's epoch.
    pub epoch: String,
    /// The sequence before the first record this node will apply.
    pub floor: u64,
    /// The newest record then: the node has caught up once it applied it.
    pub last: u64,
}

impl Engine {
    /// Connects to the cluster's NATS as `node` and sets up the stream and buckets, reporting
    /// the connection into `status`.
    ///
    /// # Errors
    /// [`ClusterError`] when NATS cannot be reached or the stream cannot be set up.
    pub async fn connect(
        config: &ClusterConfig,
        node: &str,
        status: Arc<ConnectorStatus>,
    ) -> Result<(Arc<Self>, LogStart), ClusterError> {
        let client = herald_connector_nats::connect(&config.nats.join(","), status)
            .await
            .map_err(|e| ClusterError::new("connect", e))?;
        let (log, start) = tokio::time::timeout(
            Duration::from_secs(30),
            log::Log::open(client.clone(), config),
        )
        .await
        .map_err(|_| ClusterError::new("stream", "NATS did not answer within 30s"))??;
        let presence = Arc::new(presence::Presence::open(client.clone(), config, node).await?);
        let admin = admin::Admin::open(client.clone(), config, node).await?;
        let engine = Arc::new(Self {
            log,
            presence,
            admin,
            client,
        });
        Ok((engine, start))
    }

    /// Applies the blocks and revocations the cluster keeps to `sink`; returns how many.
    pub async fn restore_bans(&self, sink: &dyn LogSink) -> usize {
        self.admin.restore(sink).await
    }

    /// Runs the engine's tasks on `tasks` until `shutdown`: the log applied to `sink` from
    /// `start`, presence, admin commands.
    pub fn run(
        self: &Arc<Self>,
        sink: Arc<dyn LogSink>,
        start: &LogStart,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        tasks.spawn(
            self.log
                .clone()
                .run(sink.clone(), start.clone(), shutdown.clone()),
        );
        self.presence.run(sink.clone(), tasks, shutdown);
        tasks.spawn(self.admin.clone().serve(sink, shutdown.clone()));
    }
}

impl ClusterLog for Engine {
    fn append(&self, record: LogRecord, key: Option<String>) -> LogFuture<Appended> {
        self.log.append(&record, key)
    }

    fn read(&self, seq: u64) -> LogFuture<LogRecord> {
        self.log.read(seq)
    }

    fn is_up(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn membership(&self, channel: &str, member: &Member, joined: bool) {
        self.presence.local_change(channel, member, joined);
    }

    fn remote_members(&self, channel: &str) -> Vec<Member> {
        self.presence.remote_members(channel)
    }

    fn remote_channels(&self) -> Vec<(String, usize)> {
        self.presence.remote_channels()
    }

    fn broadcast(&self, command: AdminCommand) -> LogFuture<usize> {
        let others = self.presence.nodes().len().saturating_sub(1);
        self.admin.send(&command, others)
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        self.presence.nodes()
    }
}
