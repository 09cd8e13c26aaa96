//! From Herald to backends over NATS: clients' `rpc` as requests on `<prefix>.rpc.<method>`,
//! and client activity published on `<prefix>.events.<kind>`.

use std::future::Future;
use std::pin::Pin;

use async_nats::client::RequestErrorKind;
use async_nats::Client;
use herald_connector_api::{
    rpc_answer, Activity, ActivityTransport, RpcBackend, RpcCall, RpcError, RpcFuture,
};

/// Clients' `rpc` as NATS requests: `{"user","conn","method","data"}` to
/// `<prefix>.rpc.<method>`; the reply body is the answer (`{"error":"…"}` for an error).
pub struct NatsRpc {
    client: Client,
    prefix: String,
}

impl NatsRpc {
    /// Requests through `client` under `prefix`.
    pub fn new(client: Client, prefix: &str) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
        }
    }
}

impl RpcBackend for NatsRpc {
    fn call(&self, call: RpcCall) -> RpcFuture {
        let subject = format!("{}.rpc.{}", self.prefix, call.method);
        let client = self.client.clone();
        Box::pin(async move {
            let body = serde_json::to_vec(&call).map_err(|e| RpcError::Failed(e.to_string()))?;
            match client.request(subject.clone(), body.into()).await {
                Ok(reply) => rpc_answer(&reply.payload),
                Err(e) => Err(match e.kind() {
                    RequestErrorKind::NoResponders => RpcError::NoResponder(subject),
                    RequestErrorKind::TimedOut => RpcError::Timeout,
                    _ => RpcError::Failed(e.to_string()),
                }),
            }
        })
    }
}

/// Client activity as NATS messages on `<prefix>.events.<kind>`.
pub struct NatsEvents {
    client: Client,
    prefix: String,
}

impl NatsEvents {
    /// Publishes through `client` under `prefix`.
    pub fn new(client: Client, prefix: &str) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
        }
    }
}

impl ActivityTransport for NatsEvents {
    fn send<'a>(
        &'a self,
        activity: &'a Activity,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let subject = format!("{}.events.{}", self.prefix, activity.kind.as_str());
            let body = serde_json::to_vec(activity).map_err(|e| e.to_string())?;
            self.client
                .publish(subject, body.into())
                .await
                .map_err(|e| e.to_string())
        })
    }
}
