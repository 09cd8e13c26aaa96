//! What the core asks of backends: answering clients' `rpc` calls ([`RpcBackend`]), hearing
//! what clients do ([`ActivitySink`]), and deciding who a client is and where it may go when
//! the backend issues no JWTs ([`AuthHooks`]). None may make a client frame wait: an rpc or a
//! hook call runs in a task of its own and its answer is applied when it comes; activity is
//! handed over without blocking.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::compact::CompactJson;

/// One client `rpc` as a backend receives it: `{"user","conn","method","data"}`.
#[derive(Debug, Clone, Serialize)]
pub struct RpcCall {
    /// The caller's user id (`""` when anonymous).
    pub user: String,
    /// The caller's connection id.
    pub conn: String,
    /// The method the client named.
    pub method: String,
    /// The client's payload.
    pub data: CompactJson,
}

/// Why an rpc has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The backend did not answer in time.
    #[error("rpc timed out")]
    Timeout,
    /// Nobody serves the method.
    #[error("no backend answers {0}")]
    NoResponder(String),
    /// The backend answered with an error: its message.
    #[error("{0}")]
    Backend(String),
    /// The call could not be made.
    #[error("rpc failed: {0}")]
    Failed(String),
}

impl RpcError {
    /// The contract's code: 4504 when nobody answered in time, 4500 otherwise.
    pub fn code(&self) -> u16 {
        match self {
            Self::Timeout | Self::NoResponder(_) => 4504,
            Self::Backend(_) | Self::Failed(_) => 4500,
        }
    }
}

/// An rpc in flight.
pub type RpcFuture = Pin<Box<dyn Future<Output = Result<CompactJson, RpcError>> + Send>>;

/// Where clients' `rpc` calls go (NATS request, HTTP POST).
pub trait RpcBackend: Send + Sync + 'static {
    /// Sends `call`; the future yields the backend's answer. The core bounds it in time.
    fn call(&self, call: RpcCall) -> RpcFuture;
}

/// A backend's answer body: `{"error":"…"}` is its error, anything else is the data.
///
/// # Errors
/// [`RpcError::Backend`] with the backend's message, [`RpcError::Failed`] for a body that
/// is not JSON.
pub fn rpc_answer(body: &[u8]) -> Result<CompactJson, RpcError> {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(CompactJson::null());
    }
    if let Ok(ErrorBody { error }) = serde_json::from_slice(body) {
        return Err(RpcError::Backend(error));
    }
    serde_json::from_slice::<Box<RawValue>>(body)
        .map(CompactJson::new)
        .map_err(|e| RpcError::Failed(format!("the backend's answer is not JSON: {e}")))
}

/// What a client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivityKind {
    /// Identified.
    Connect,
    /// Went away (after `ident`).
    Disconnect,
    /// Joined an ordinary channel.
    Join,
    /// Left an ordinary channel (by `leave`, unsubscribe or disconnect).
    Leave,
    /// Published to a channel.
    Publish,
}

impl ActivityKind {
    /// The name used in subjects and routing keys: `connect`, `join`…
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Disconnect => "disconnect",
            Self::Join => "join",
            Self::Leave => "leave",
            Self::Publish => "publish",
        }
    }
}

/// One client activity, as backends receive it.
#[derive(Debug, Clone, Serialize)]
pub struct Activity {
    /// What happened.
    pub kind: ActivityKind,
    /// The user.
    pub user: String,
    /// The connection.
    pub conn: String,
    /// The channel, for join, leave and publish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The event name, for publish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The node it happened on.
    pub node: String,
    /// When, RFC 3339 with milliseconds.
    pub time: String,
}

impl Activity {
    /// An activity happening now.
    pub fn now(kind: ActivityKind, user: &str, conn: &str, node: &str) -> Self {
        Self {
            kind,
            user: user.to_owned(),
            conn: conn.to_owned(),
            channel: None,
            event: None,
            node: node.to_owned(),
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        }
    }
}

/// Where client activity goes. `record` must never block: a sink that cannot keep up drops
/// (and counts) rather than slowing the fan-out.
pub trait ActivitySink: Send + Sync + 'static {
    /// Hands one activity over.
    fn record(&self, activity: Activity);
}

/// Who an ident hook says a token's holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookIdentity {
    /// The user id.
    pub user: String,
    /// Channel patterns (`*` wildcard) the user may join; `None`: every ordinary channel.
    pub channels: Option<Vec<String>>,
    /// When the identity stops being valid; the connection is ended with 4002 then.
    pub expires_at: Option<SystemTime>,
}

/// Why a hook said no, or could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The backend answered, and refused: its reason.
    #[error("{0}")]
    Denied(String),
    /// The backend could not be asked or answered nonsense; Herald denies, never allows.
    #[error("auth backend unavailable: {0}")]
    Unavailable(String),
}

/// An ident hook call in flight.
pub type IdentHookFuture = Pin<Box<dyn Future<Output = Result<HookIdentity, HookError>> + Send>>;
/// A join hook call in flight; `Ok` allows.
pub type JoinHookFuture = Pin<Box<dyn Future<Output = Result<(), HookError>> + Send>>;

/// The backend's say on identities and joins (HTTP hooks). Implementations bound each call in
/// time and may cache answers; the core only awaits them, off the client's frame path.
pub trait AuthHooks: Send + Sync + 'static {
    /// Asks who holds `token` (for the connection `conn` on `transport`).
    fn ident(&self, token: &str, conn: &str, transport: &str) -> IdentHookFuture;
    /// Asks whether `user` on `conn` may join `channel`; the core asks only for channels
    /// its configured patterns guard.
    fn join(&self, user: &str, conn: &str, channel: &str) -> JoinHookFuture;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_data_unless_they_are_an_error() {
        assert_eq!(rpc_answer(b"{ \"a\": 1 }").unwrap().get(), r#"{"a":1}"#);
        assert_eq!(rpc_answer(b"").unwrap().get(), "null");
        assert_eq!(
            rpc_answer(br#"{"error":"no such user"}"#).unwrap_err(),
            RpcError::Backend("no such user".into())
        );
        assert_eq!(rpc_answer(b"nope").unwrap_err().code(), 4500);
        assert_eq!(RpcError::Timeout.code(), 4504);
    }
}
