//! The seam between the hub and a cluster engine: a shared, ordered log of events that every
//! node appends to and applies, so that offsets and history are the same on every node.
//!
//! The hub appends a [`LogRecord`] and answers the publisher with the record's sequence in the
//! log, which is the event's offset in every channel it targets; the engine delivers every
//! record of the log, in order and once, to [`LogSink::apply`] on every node, the publishing
//! node included. Nothing is delivered locally before the log stored it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::compact::CompactJson;
use crate::gateway::Member;

/// Who published an event from a client connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordFrom {
    /// The publishing user.
    pub user: String,
    /// The publishing connection.
    pub conn: String,
}

/// One publish as the log holds it: the event and where it goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogRecord {
    /// UUIDv7 of the event.
    pub id: String,
    /// Milliseconds since the Unix epoch when it was published.
    pub ts: u64,
    /// The event's name.
    pub event: String,
    /// The payload, compact.
    pub data: CompactJson,
    /// Target channels: ordinary, personal (`@user`) and broadcast (`*`).
    pub targets: Vec<String>,
    /// Connection ids the event must not reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    /// The client that published it, for client publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<RecordFrom>,
}

/// Where the log put a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The record's sequence: its offset in every channel it targets.
    pub seq: u64,
    /// An earlier record had the same idempotency key; `seq` is that record's.
    pub duplicate: bool,
}

/// Why the log could not take or read a record.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct LogError(pub String);

/// A boxed future of the log.
pub type LogFuture<T> = Pin<Box<dyn Future<Output = Result<T, LogError>> + Send>>;

/// A node of the cluster as `GET /api/info` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id.
    pub node: String,
    /// Its open client connections.
    pub connections: usize,
    /// Seconds since its last heartbeat.
    pub seen_secs_ago: u64,
}

/// An admin action that must reach every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminCommand {
    /// `POST /api/disconnect`.
    Disconnect {
        /// `user:<id>`, `conn:<id>` or `all`.
        target: String,
        /// Reason given to the clients.
        reason: String,
        /// Whether they may come back.
        reconnect: bool,
    },
    /// `POST /api/channels/{channel}/unsubscribe`.
    Unsubscribe {
        /// The channel.
        channel: String,
        /// `user:<id>`, `conn:<id>` or `all`.
        target: String,
    },
    /// `POST /api/users/{user}/block`.
    Block {
        /// The user.
        user: String,
        /// Until when, in milliseconds since the Unix epoch; `None`: until unblocked.
        until_ms: Option<u64>,
    },
    /// `POST /api/users/{user}/unblock`.
    Unblock {
        /// The user.
        user: String,
    },
    /// `POST /api/tokens/revoke` by `jti`.
    RevokeJti {
        /// The token id.
        jti: String,
        /// When the token expires anyway, in milliseconds since the Unix epoch.
        until_ms: Option<u64>,
    },
    /// `POST /api/tokens/revoke` by user and issue time.
    RevokeBefore {
        /// The user.
        user: String,
        /// The cut-off, in milliseconds since the Unix epoch.
        before_ms: u64,
    },
}

/// What the hub asks of a cluster engine.
pub trait ClusterLog: Send + Sync + 'static {
    /// Stores a record; `key` is the publisher's idempotency key, deduplicated cluster-wide.
    fn append(&self, record: LogRecord, key: Option<String>) -> LogFuture<Appended>;
    /// Reads a stored record (the original of a duplicate).
    fn read(&self, seq: u64) -> LogFuture<LogRecord>;
    /// Whether the log takes appends now: connected, and its stream in reach.
    fn is_up(&self) -> bool;
    /// A connection of this node joined (`true`) or left `channel`.
    fn membership(&self, channel: &str, member: &Member, joined: bool);
    /// Members of `channel` on the other live nodes.
    fn remote_members(&self, channel: &str) -> Vec<Member>;
    /// Every channel with members on the other live nodes, and how many there are.
    fn remote_channels(&self) -> Vec<(String, usize)>;
    /// Sends `command` to every other live node; answers how many connections they acted on
    /// (those that answered in time).
    fn broadcast(&self, command: AdminCommand) -> LogFuture<usize>;
    /// The live nodes, this one included.
    fn nodes(&self) -> Vec<NodeInfo>;
}

/// What a cluster engine asks of the hub.
pub trait LogSink: Send + Sync + 'static {
    /// Applies the record at `seq`, `age` after it was stored: appends it to its channels'
    /// histories and queues it to this node's matching connections. Called in log order.
    fn apply(&self, seq: u64, record: &LogRecord, age: Duration);
    /// Every record up to `seq` has been applied (records the log skipped included).
    fn applied_through(&self, seq: u64);
    /// The records up to `seq` that were not applied left the log (its limits) before this
    /// node read them: recoveries from before `seq` must answer `recovered: false` here.
    fn lost(&self, seq: u64);
    /// The log was created anew (`epoch` names it): history from before is gone. `floor` is
    /// the sequence before the first record that will be applied.
    fn reset(&self, epoch: &str, floor: u64);
    /// A member of `channel` on another node joined (`true`) or left.
    fn remote_membership(&self, channel: &str, member: &Member, joined: bool);
    /// Runs an admin command another node sent; returns how many connections it acted on.
    fn admin(&self, command: &AdminCommand) -> usize;
    /// This node's open connections.
    fn connection_count(&self) -> usize;
}
