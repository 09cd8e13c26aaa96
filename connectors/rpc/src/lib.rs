//! Herald's `[rpc]` section: where clients' `rpc` calls go (`nats` or `http`), how long they
//! may take and how many one connection may have in flight; and the HTTP backend, which POSTs
//! `{"user","conn","method","data"}` to the configured URL.

use std::time::Duration;

use herald_connector_api::{rpc_answer, RpcBackend, RpcCall, RpcError, RpcFuture};
use serde::Deserialize;

/// The `[rpc]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcConfig {
    /// `nats` (requests on `<prefix>.rpc.<method>`, through `[nats]`'s server) or `http` [default: nats].
    pub backend: RpcBackendKind,
    /// The URL the `http` backend POSTs to.
    pub url: String,
    /// How long a call may take before the client gets 4504 [default: 5s].
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Calls one connection may have in flight; more get 4029 [default: 16].
    pub max_in_flight: usize,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            backend: RpcBackendKind::Nats,
            url: String::new(),
            timeout: Duration::from_secs(5),
            max_in_flight: 16,
        }
    }
}

/// Which backend answers `rpc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RpcBackendKind {
    /// NATS request/reply.
    Nats,
    /// HTTP POST.
    Http,
}

impl RpcConfig {
    /// Every problem with the values, each naming its key.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut problems = Vec::new();
        if self.backend == RpcBackendKind::Http
            && !(self.url.starts_with("http://") || self.url.starts_with("https://"))
        {
            problems.push((
                "rpc.url",
                "the http backend needs an http:// or https:// URL",
            ));
        }
        if self.timeout.is_zero() {
            problems.push(("rpc.timeout", "must be greater than zero"));
        }
        if self.max_in_flight == 0 {
            problems.push(("rpc.max_in_flight", "must be at least 1"));
        }
        problems
    }
}

/// The `http` backend.
pub struct HttpRpc {
    client: reqwest::Client,
    url: String,
}

impl HttpRpc {
    /// A backend POSTing to `config.url`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS provider installed).
    pub fn new(config: &RpcConfig) -> Result<Self, RpcError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| RpcError::Failed(e.to_string()))?;
        Ok(Self {
            client,
            url: config.url.clone(),
        })
    }
}

impl RpcBackend for HttpRpc {
    fn call(&self, call: RpcCall) -> RpcFuture {
        let request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&call).unwrap_or_default());
        let url = self.url.clone();
        Box::pin(async move {
            let response = request.send().await.map_err(|e| {
                if e.is_timeout() {
                    RpcError::Timeout
                } else if e.is_connect() {
                    RpcError::NoResponder(url.clone())
                } else {
                    RpcError::Failed(e.to_string())
                }
            })?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .map_err(|e| RpcError::Failed(e.to_string()))?;
            match rpc_answer(&body) {
                Ok(data) if status.is_success() => Ok(data),
                Err(RpcError::Backend(message)) => Err(RpcError::Backend(message)),
                _ => Err(RpcError::Failed(format!("{url} answered {status}"))),
            }
        })
    }
}
