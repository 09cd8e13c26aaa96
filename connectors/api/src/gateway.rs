//! What publishers (HTTP API, NATS, AMQP, file tail) and the admin API may ask of the core.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::channel::ChannelName;
use crate::envelope::Envelope;
use crate::field::FieldError;

/// An accepted publish: the event id and its offset in every target channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    /// UUIDv7 of the event.
    pub id: String,
    /// Offset the event got in each channel it was appended to.
    pub offsets: BTreeMap<String, u64>,
    /// Answered from the idempotency window: an earlier publish with the same `key` was
    /// delivered, this one was not. Publishers count it; the answer is the same either way.
    #[serde(skip)]
    pub duplicate: bool,
}

/// Why a publish was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The envelope is malformed.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The gateway is shutting down and takes no more events.
    #[error("gateway is shutting down")]
    ShuttingDown,
    /// A configured bound is reached (channels, idempotency keys); retry later.
    #[error(transparent)]
    AtCapacity(#[from] AtCapacity),
    /// The cluster log could not store the event, so it was delivered nowhere; retry later.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
}

impl PublishError {
    /// The contract's code: 4000 bad input, 4100 shutting down, 4503 at capacity or the
    /// cluster unavailable.
    pub fn code(&self) -> u16 {
        match self {
            Self::Invalid(_) => 4000,
            Self::ShuttingDown => 4100,
            Self::AtCapacity(_) | Self::Unavailable(_) => 4503,
        }
    }

    /// The message a publisher sees: the field and what is wrong with it, or what happened.
    pub fn message(&self) -> String {
        match self {
            Self::Invalid(e) => format!("{}: {}", e.field, e.message),
            other => other.to_string(),
        }
    }
}

/// What every publish path answers for one envelope: the result, or the contract's
/// `{"code","error"}`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum PublishOutcome {
    /// Accepted.
    Published(Published),
    /// Refused.
    Refused {
        /// The contract's code.
        code: u16,
        /// What was wrong.
        error: String,
    },
}

impl From<Result<Published, PublishError>> for PublishOutcome {
    fn from(result: Result<Published, PublishError>) -> Self {
        match result {
            Ok(published) => Self::Published(published),
            Err(e) => Self::Refused {
                code: e.code(),
                error: e.message(),
            },
        }
    }
}

/// A configured bound that is reached: the config key and its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at capacity: {key} = {limit} reached")]
pub struct AtCapacity {
    /// The config key of the bound, e.g. `max_channels`.
    pub key: &'static str,
    /// Its configured value.
    pub limit: usize,
}

/// One member of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The user the connection identified as (`""` when anonymous).
    pub user: String,
    /// The connection id, `c_…`.
    pub conn: String,
}

/// A channel and how many connections are in it.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelSummary {
    /// The channel name.
    pub channel: String,
    /// Number of member connections.
    pub members: usize,
}

/// A position in a channel's history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Since {
    /// Offset of the last event seen.
    pub offset: u64,
    /// Epoch that offset belongs to; absent means "the channel's current epoch".
    #[serde(default)]
    pub epoch: Option<String>,
}

/// A slice of a channel's history.
#[derive(Debug, Serialize)]
pub struct HistoryPage {
    /// Event frames, oldest first, as clients receive them.
    pub events: Vec<Box<RawValue>>,
    /// The channel's latest offset.
    pub offset: u64,
    /// The channel's epoch (empty for a channel that does not exist).
    pub epoch: String,
    /// Whether this page holds every event after `since`: the position is in this epoch, no
    /// event after it has left history, and the page was not cut (absent when no `since`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Whether history holds more events after this page (cut by `limit` or by size): ask
    /// again with `since` = the last event's offset and the same epoch.
    pub more: bool,
}

/// Why history cannot be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HistoryError {
    /// `limit` is zero or too large.
    #[error("limit must be between 1 and {max}")]
    BadLimit {
        /// Largest limit allowed.
        max: usize,
    },
}

/// Whom an admin action applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection of a user.
    User(String),
    /// One connection, by id.
    Conn(String),
    /// Everyone.
    All,
}

/// Tokens to refuse from now on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The token with this `jti`; remembered until `until` (its `exp`), or a day.
    Jti {
        /// The token id.
        jti: String,
        /// When the token expires anyway.
        until: Option<SystemTime>,
    },
    /// Every token of `user` issued (`iat`) before `before`, and its tokens without `iat`.
    IssuedBefore {
        /// The user.
        user: String,
        /// The cut-off.
        before: SystemTime,
    },
}

/// Node facts for `GET /api/info`.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayInfo {
    /// This node's id.
    pub node: String,
    /// Herald's version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Open client connections.
    pub connections: usize,
    /// Channels with members or history.
    pub channels: usize,
    /// The live nodes of the cluster with their connections (absent on a single node).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<crate::cluster::NodeInfo>,
}

/// A publish in progress: ready at once on a single node, a round trip to the cluster log
/// (which must store the event before it is answered) on a cluster.
pub struct Publishing(PublishingState);

enum PublishingState {
    Ready(Option<Result<Published, PublishError>>),
    Waiting(Pin<Box<dyn Future<Output = Result<Published, PublishError>> + Send>>),
}

impl Publishing {
    /// A publish already decided.
    pub fn ready(result: Result<Published, PublishError>) -> Self {
        Self(PublishingState::Ready(Some(result)))
    }

    /// A publish that `future` decides.
    pub fn waiting(
        future: impl Future<Output = Result<Published, PublishError>> + Send + 'static,
    ) -> Self {
        Self(PublishingState::Waiting(Box::pin(future)))
    }
}

impl Future for Publishing {
    type Output = Result<Published, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            // Polled again after it answered: a caller bug, answered as a refusal.
            PublishingState::Ready(result) => Poll::Ready(
                result
                    .take()
                    .unwrap_or(Err(PublishError::Unavailable("polled twice".into()))),
            ),
            PublishingState::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

/// An admin call's answer. On a single node it is ready at once; on a cluster it waits (a
/// bounded time) for the other nodes to say what they did.
pub type Acting<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The core as publishers and the admin API see it. Calls never wait on a client.
pub trait Gateway: Send + Sync + 'static {
    /// Delivers an envelope to its targets and appends it to their histories.
    ///
    /// # Errors
    /// [`PublishError`] when the envelope is refused.
    fn publish(&self, envelope: Envelope) -> Publishing;
    /// Every channel with members or history.
    fn channels(&self) -> Vec<ChannelSummary>;
    /// The members of a channel (for `*`, every identified connection).
    fn presence(&self, channel: &ChannelName) -> Vec<Member>;
    /// Events of a channel after `since` (or the latest `limit`), in a page bounded by `limit`
    /// and by size. Never creates the channel.
    ///
    /// # Errors
    /// [`HistoryError`] for a bad limit.
    fn history(
        &self,
        channel: &ChannelName,
        since: Option<Since>,
        limit: usize,
    ) -> Result<HistoryPage, HistoryError>;
    /// Closes the target's connections with 4101; returns how many, on every node.
    fn disconnect(&self, target: Target, reason: &str, reconnect: bool) -> Acting<usize>;
    /// Removes the target's connections from a channel; returns how many, on every node.
    fn unsubscribe(&self, channel: &ChannelName, target: Target) -> Acting<usize>;
    /// Refuses `user` at every `ident` until `until` (`None`: until unblocked) and ends its
    /// connections with 4002; returns how many it ended, on every node.
    ///
    /// # Errors
    /// [`AtCapacity`] when the configured number of blocks is reached.
    fn block(&self, user: &str, until: Option<SystemTime>) -> Acting<Result<usize, AtCapacity>>;
    /// Lifts a block; whether there was one (on any node).
    fn unblock(&self, user: &str) -> Acting<bool>;
    /// Refuses the tokens `revocation` names at every `ident` and ends the connections that
    /// identified with them (4002); returns how many it ended, on every node.
    ///
    /// # Errors
    /// [`AtCapacity`] when the configured number of revocations is reached.
    fn revoke(&self, revocation: Revocation) -> Acting<Result<usize, AtCapacity>>;
    /// Node facts.
    fn info(&self) -> GatewayInfo;
}
