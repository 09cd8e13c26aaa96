//! Inbound sources (NATS, AMQP, file tail) implement [`Connector`].
//!
//! The config struct is the factory: it is built and checked at start-up, so bad config fails
//! before anything runs; `run` then publishes through the gateway until shutdown. A source
//! acknowledges upstream only after [`Gateway::publish`] returned `Ok`, so nothing accepted is
//! lost.

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::gateway::{Gateway, PublishError};

/// What a running connector gets from the core.
#[derive(Clone)]
pub struct ConnectorContext {
    /// The connector's name from config, for logs and metrics.
    pub name: Arc<str>,
    /// Where envelopes go.
    pub gateway: Arc<dyn Gateway>,
    /// Cancelled when Herald shuts down; `run` must return soon after.
    pub shutdown: CancellationToken,
}

/// Why a connector stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The upstream source failed in a way retrying did not fix.
    #[error("{what}: {source}")]
    Source {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The gateway refused an event in a way the source cannot handle.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// An inbound source of envelopes.
pub trait Connector: Send + 'static {
    /// Runs until `cx.shutdown` is cancelled or the source ends. Must not spawn untracked tasks.
    fn run(self, cx: ConnectorContext) -> impl Future<Output = Result<(), ConnectorError>> + Send;
}
