//! The hub's calls out to backends: clients' `rpc` (each call in a tracked task of its own,
//! bounded per connection and in time, its reply queued when it comes) and client activity
//! (handed to a sink that never blocks). Both are set once, when the backends are connected.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald_connector_api::{
    Activity, ActivityKind, ActivitySink, CompactJson, RpcBackend, RpcCall, RpcError,
};
use serde_json::json;
use tokio_util::task::TaskTracker;

use super::conn::Conn;
use super::frame::{self, OpError};
use super::Hub;

/// Longest rpc method name.
const MAX_METHOD_LEN: usize = 256;

/// Where clients' `rpc` calls go, and their bounds.
pub struct RpcSetup {
    /// The backend.
    pub backend: Arc<dyn RpcBackend>,
    /// How long a call may take before the client gets 4504.
    pub timeout: Duration,
    /// Calls one connection may have in flight; more get 4029.
    pub max_in_flight: usize,
    /// Where calls run, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

/// The backends the hub calls out to; either may be absent.
#[derive(Default)]
pub struct Backends {
    /// `[rpc]`.
    pub rpc: Option<RpcSetup>,
    /// Where client activity goes (NATS, AMQP); each gets every activity.
    pub activity: Vec<Arc<dyn ActivitySink>>,
    /// `[auth_hooks]`.
    pub auth: Option<super::AuthSetup>,
}

impl Hub {
    /// Connects the backends; calls made before get 4500 and activity before is not reported.
    /// Set once: a second call is ignored.
    pub fn set_backends(&self, backends: Backends) {
        if self.0.backends.set(backends).is_err() {
            tracing::warn!("backends were already set");
        }
    }

    /// Reports an activity of `conn` (identified connections only) when a sink is set.
    pub(super) fn activity(
        &self,
        kind: ActivityKind,
        conn: &Conn,
        channel: Option<&str>,
        event: Option<&str>,
    ) {
        let Some(sinks) = self.0.backends.get().map(|b| &b.activity) else {
            return;
        };
        let (Some(identity), false) = (conn.identity.get(), sinks.is_empty()) else {
            return;
        };
        let mut activity = Activity::now(kind, &identity.user, &conn.id, &self.0.config.node);
        activity.channel = channel.map(str::to_owned);
        activity.event = event.map(str::to_owned);
        for sink in sinks {
            sink.record(activity.clone());
        }
    }

    /// Starts a client's rpc; the reply (or error) is queued to `conn` when it comes.
    pub(super) fn rpc(
        &self,
        conn: &Arc<Conn>,
        id: Option<u64>,
        method: &str,
        data: CompactJson,
    ) -> Result<(), OpError> {
        if method.is_empty()
            || method.len() > MAX_METHOD_LEN
            || !method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
            || method.starts_with('.')
            || method.ends_with('.')
            || method.contains("..")
        {
            return Err(OpError::bad_frame(
                "method: 1 to 256 letters, digits, _ - : or dots between them",
            ));
        }
        let Some(rpc) = self.0.backends.get().and_then(|b| b.rpc.as_ref()) else {
            return Err(OpError::new(4500, "no rpc backend configured"));
        };
        let in_flight = conn.rpc_in_flight.fetch_add(1, Ordering::AcqRel);
        if in_flight >= rpc.max_in_flight {
            conn.rpc_in_flight.fetch_sub(1, Ordering::AcqRel);
            self.metrics().limit_hit("rpc_max_in_flight");
            return Err(OpError::new(4029, "too many rpc calls in flight"));
        }
        let call = RpcCall {
            user: conn.user().to_owned(),
            conn: conn.id.to_string(),
            method: method.to_owned(),
            data,
        };
        let (hub, conn, timeout) = (self.clone(), conn.clone(), rpc.timeout);
        let answer = rpc.backend.call(call);
        let method = method.to_owned();
        rpc.tasks.spawn(async move {
            let result = tokio::time::timeout(timeout, answer)
                .await
                .unwrap_or(Err(RpcError::Timeout));
            conn.rpc_in_flight.fetch_sub(1, Ordering::AcqRel);
            match result {
                Ok(data) => {
                    if let Some(id) = id {
                        hub.queue(&conn, frame::reply_ok(id, &json!({ "data": data })));
                    }
                }
                Err(e) => {
                    tracing::info!(conn = %conn.id, %method, error = %e, "rpc failed");
                    hub.queue(
                        &conn,
                        frame::reply_err(id, &OpError::new(e.code(), e.to_string())),
                    );
                }
            }
        });
        Ok(())
    }
}
