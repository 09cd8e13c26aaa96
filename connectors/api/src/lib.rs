//! The contract between Herald's core and everything that plugs into it.
//!
//! Transports (WebSocket now; long-poll and SSE next) move client frames in and out through
//! [`SessionHub`] and [`ClientSession`]; publishers (the HTTP API now; NATS, AMQP and file tail
//! next) hand envelopes to a [`Gateway`]. Neither side sees the other's types, so a connector
//! crate depends on this crate only and never on the core.
//!
//! # Layout
//! - [`channel`]: channel names as the contract defines them (`chat`, `@alice`, `*`).
//! - [`cluster`]: the shared event log of a cluster, and what it asks of the hub.
//! - [`compact`]: JSON payloads with no whitespace outside strings, safe inside any frame.
//! - [`envelope`]: the one publish envelope every backend path sends.
//! - [`field`]: JSON parsing whose errors name the offending field.
//! - [`gateway`]: what publishers and the admin API may ask of the core.
//! - [`ingest`]: a message body to the gateway, the answer, and the ack/drop/retry verdict.
//! - [`session`]: the transport seam: one client connection, its inbound frames and its outbox.
//! - [`queue`]: the outbox: a bounded, lazily allocated frame queue, then the disconnect.
//! - [`connector`]: the trait inbound sources implement, and their context.
//! - [`detach`]: an HTTP/1 connection taken out of hyper once a response head is written.
//! - [`backend`]: what the core asks of backends: rpc answers, activity, auth hooks.
//! - [`activity`]: activity out through any broker: a bounded queue, debounce.

pub mod activity;
pub mod backend;
pub mod channel;
pub mod cluster;
pub mod compact;
pub mod connector;
pub mod detach;
pub mod envelope;
pub mod field;
pub mod gateway;
pub mod ingest;
pub mod queue;
pub mod session;

pub use activity::{activity_queue, ActivityPublisher, ActivityTransport, QueuedActivity};
pub use backend::{
    rpc_answer, Activity, ActivityKind, ActivitySink, AuthHooks, HookError, HookIdentity,
    IdentHookFuture, JoinHookFuture, RpcBackend, RpcCall, RpcError, RpcFuture,
};
pub use channel::{check_user_id, ChannelKind, ChannelName, ChannelNameError};
pub use cluster::{
    AdminCommand, Appended, ClusterLog, LogError, LogFuture, LogRecord, LogSink, NodeInfo,
    RecordFrom,
};
pub use compact::CompactJson;
pub use connector::{
    Connector, ConnectorContext, ConnectorCounts, ConnectorError, ConnectorSet, ConnectorStatus,
    Health,
};
pub use detach::{end_chunks, write_chunk, Detach, Detachable, DetachedIo, Resume};
pub use envelope::{Envelope, EnvelopeBatch};
pub use field::{parse_json, FieldError};
pub use gateway::{
    Acting, AtCapacity, ChannelSummary, Gateway, GatewayInfo, HistoryError, HistoryPage, Member,
    PublishError, PublishOutcome, Published, Publishing, Revocation, Since, Target,
};
pub use ingest::{Handled, Ingest, Verdict};
pub use queue::{
    outbox, BacklogRoom, Backpressure, EventMeta, EventTag, FrameSender, OutFrame, Outbox,
    OutboxLimits, QueueError, Received, Sent,
};
pub use session::{
    ChannelPosition, ClientSession, Disconnect, IdentFuture, IdentRefused, IdentRequest,
    Identified, OpenError, PeerInfo, SessionHub,
};
