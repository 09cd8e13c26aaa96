//! Cuts connections that have not identified within `auth_timeout`: one task for all of them.
//!
//! Every connection gets the same timeout, so deadlines arrive in order and a FIFO is enough;
//! a timer task per connection would cost each idle connection its own task and timer entry.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use herald_connector_api::Disconnect;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::conn::Conn;

/// Connections waiting for their `ident`, oldest first.
pub struct AuthDeadlines {
    timeout: Duration,
    pending: Mutex<VecDeque<(Instant, Weak<Conn>)>>,
    added: Notify,
}

impl AuthDeadlines {
    /// Deadlines `timeout` after each watched connection opened.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            pending: Mutex::new(VecDeque::new()),
            added: Notify::new(),
        }
    }

    /// Starts the clock for a new connection; weak, so a closed connection is not kept.
    pub fn watch(&self, conn: &Arc<Conn>) {
        self.pending
            .lock()
            .push_back((Instant::now() + self.timeout, Arc::downgrade(conn)));
        self.added.notify_one();
    }

    /// Disconnects (4008) every connection still unidentified at its deadline, until shutdown.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            let next = self.expire(Instant::now());
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.added.notified(), if next.is_none() => {}
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {}
            }
        }
    }

    /// Handles every deadline up to `now`; returns the next one.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut pending = self.pending.lock();
        while let Some((deadline, conn)) = pending.front() {
            if *deadline > now {
                return Some(*deadline);
            }
            if let Some(conn) = conn.upgrade() {
                if conn.identity.get().is_none() {
                    conn.end(Disconnect::new(4008, "no ident within auth_timeout", true));
                }
            }
            pending.pop_front();
        }
        None
    }
}
