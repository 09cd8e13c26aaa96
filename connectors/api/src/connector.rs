//! Inbound sources (NATS, AMQP, file tail) implement [`Connector`].
//!
//! The config struct is the factory: it is built and checked at start-up, so bad config fails
//! before anything runs; `run` then publishes through the gateway until shutdown. A source
//! acknowledges upstream only after [`Gateway::publish`] returned `Ok`, so nothing accepted is
//! lost. While it runs, a connector reports its [`Health`] and counts what it received into
//! its [`ConnectorStatus`], which `/readyz`, `/api/info` and `/metrics` show by its name.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::gateway::{Gateway, PublishError};

/// What a running connector gets from the core.
#[derive(Clone)]
pub struct ConnectorContext {
    /// Where envelopes go.
    pub gateway: Arc<dyn Gateway>,
    /// Where the connector reports health and counts; it carries the connector's name.
    pub status: Arc<ConnectorStatus>,
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

/// Whether a connector is taking input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Started, not connected yet.
    Starting,
    /// Connected and consuming.
    Connected,
    /// Lost its upstream at `since`; retrying.
    Reconnecting {
        /// When the connection was lost.
        since: SystemTime,
        /// The last error seen.
        error: String,
    },
    /// Stopped for good (shutdown, or an error retrying cannot fix).
    Stopped {
        /// Why.
        reason: String,
    },
}

impl Health {
    /// Whether the connector is up, as `/readyz` counts it.
    pub fn is_up(&self) -> bool {
        matches!(self, Self::Connected)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Starting => f.write_str("starting"),
            Self::Connected => f.write_str("connected"),
            Self::Reconnecting { since, error } => write!(
                f,
                "reconnecting since {} ({error})",
                humantime::format_rfc3339_seconds(*since)
            ),
            Self::Stopped { reason } => write!(f, "stopped ({reason})"),
        }
    }
}

/// One connector's health and counters, shared between it and the core.
#[derive(Debug)]
pub struct ConnectorStatus {
    name: Arc<str>,
    health: Mutex<Health>,
    received: AtomicU64,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

/// A connector's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectorCounts {
    /// Messages taken from the source.
    pub received: u64,
    /// Envelopes the gateway accepted.
    pub accepted: u64,
    /// Messages recognised as already accepted (a redelivery, a repeated `key`) and not
    /// delivered again.
    pub duplicates: u64,
    /// Messages refused, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
}

impl ConnectorStatus {
    /// A fresh status for the connector called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            health: Mutex::new(Health::Starting),
            received: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rejected: Mutex::new(BTreeMap::new()),
        }
    }

    /// The connector's name (its config section).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reports a new health; logged when it changes.
    pub fn set_health(&self, health: Health) {
        let mut current = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        // A reconnect that keeps failing keeps its first `since`.
        if let (Health::Reconnecting { .. }, Health::Reconnecting { error, .. }) =
            (&*current, &health)
        {
            if let Health::Reconnecting { error: last, .. } = &mut *current {
                last.clone_from(error);
            }
            return;
        }
        if *current != health {
            match &health {
                Health::Connected => tracing::info!(connector = %self.name, "connected"),
                other => tracing::warn!(connector = %self.name, "{other}"),
            }
            *current = health;
        }
    }

    /// Marks a connection lost now (keeping the first `since` while it stays lost).
    pub fn lost(&self, error: impl fmt::Display) {
        self.set_health(Health::Reconnecting {
            since: SystemTime::now(),
            error: error.to_string(),
        });
    }

    /// Counts `n` messages taken from the source.
    pub fn received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts an envelope the gateway accepted.
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a message recognised as already accepted (a redelivery, a repeated `key`).
    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused message; `reason` is a short fixed label (`invalid`, `too_large`…).
    pub fn rejected(&self, reason: &'static str) {
        *self
            .rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
    }

    /// The counters now.
    pub fn counts(&self) -> ConnectorCounts {
        ConnectorCounts {
            received: self.received.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            rejected: self
                .rejected
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// Every connector this node runs, for the probes, `/api/info` and `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectorSet(RwLock<Vec<Arc<ConnectorStatus>>>);

impl ConnectorSet {
    /// Adds a connector called `name` and returns its status.
    pub fn register(&self, name: &str) -> Arc<ConnectorStatus> {
        let status = Arc::new(ConnectorStatus::new(name));
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(status.clone());
        status
    }

    /// Every registered connector.
    pub fn all(&self) -> Vec<Arc<ConnectorStatus>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `name: health` for every connector that is not up, e.g. `nats: reconnecting since …`.
    pub fn failing(&self) -> Vec<String> {
        self.all()
            .iter()
            .map(|s| (s.name(), s.health()))
            .filter(|(_, health)| !health.is_up())
            .map(|(name, health)| format!("{name}: {health}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn health_reads_like_the_probes_show_it() {
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_608_000);
        let lost = Health::Reconnecting {
            since,
            error: "connection refused".into(),
        };
        assert_eq!(
            lost.to_string(),
            "reconnecting since 2026-11-25T12:00:00Z (connection refused)"
        );
    }

    #[test]
    fn a_long_outage_keeps_its_first_since() {
        let set = ConnectorSet::default();
        let status = set.register("nats");
        assert_eq!(set.failing(), ["nats: starting"]);
        status.set_health(Health::Connected);
        assert!(set.failing().is_empty());
        status.lost("refused");
        let first = status.health();
        status.lost("timed out");
        match (first, status.health()) {
            (Health::Reconnecting { since: a, .. }, Health::Reconnecting { since: b, error }) => {
                assert_eq!((a, error.as_str()), (b, "timed out"));
            }
            other => panic!("{other:?}"),
        }
        status.rejected("invalid");
        status.rejected("invalid");
        assert_eq!(status.counts().rejected["invalid"], 2);
    }
}
