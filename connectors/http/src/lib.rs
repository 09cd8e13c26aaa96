//! Herald's HTTP publish and admin API, `/api/*`, as the contract defines it.
//!
//! Every route needs `Authorization: Bearer <api key>` (401 otherwise). Bad input is answered
//! 400 with `{"code":4000,"error":"<field>: <what is wrong>"}`, so a backend developer sees at
//! once which field to fix; a body over `max_body_size` is answered 413 (code 4009). A batch
//! publish answers every item on its own, in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_connector_api::envelope::EnvelopeBatch;
use herald_connector_api::{
    check_user_id, AtCapacity, ChannelName, ConnectorSet, Envelope, FieldError, Gateway,
    PublishError, PublishOutcome, Revocation, Since, Target,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Default `limit` of a history read.
const DEFAULT_HISTORY_LIMIT: usize = 100;

/// What the API routes need.
#[derive(Clone)]
pub struct ApiState {
    /// The core.
    pub gateway: Arc<dyn Gateway>,
    /// The key backends must present.
    pub api_key: Arc<str>,
    /// Largest request body in bytes; larger is answered 413.
    pub max_body_size: usize,
    /// The node's inbound connectors, whose health `/api/info` shows by name.
    pub connectors: Arc<ConnectorSet>,
}

/// The router serving `/api/*`.
pub fn routes(state: ApiState) -> Router {
    // One Arc for the whole state: axum clones the state for every request.
    let state = Arc::new(state);
    Router::new()
        .route("/api/publish", post(publish))
        .route("/api/channels", get(channels))
        .route("/api/channels/{channel}/presence", get(presence))
        .route("/api/channels/{channel}/history", get(history))
        .route("/api/channels/{channel}/unsubscribe", post(unsubscribe))
        .route("/api/disconnect", post(disconnect))
        .route("/api/users/{user}/block", post(block))
        .route("/api/users/{user}/unblock", post(unblock))
        .route("/api/tokens/revoke", post(revoke))
        .route("/api/info", get(info))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .layer(DefaultBodyLimit::max(state.max_body_size))
        .with_state(state)
}

/// An API error: status plus the contract's `{"code","error"}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: u16,
    message: String,
}

impl ApiError {
    /// 400 naming the bad field.
    pub fn bad_request(field: &str, message: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: 4000,
            message: format!("{field}: {message}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "error": self.message });
        (self.status, Json(body)).into_response()
    }
}

impl From<PublishError> for ApiError {
    fn from(err: PublishError) -> Self {
        let status = match &err {
            PublishError::Invalid(_) => StatusCode::BAD_REQUEST,
            PublishError::ShuttingDown
            | PublishError::AtCapacity(_)
            | PublishError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self {
            status,
            code: err.code(),
            message: err.message(),
        }
    }
}

impl From<AtCapacity> for ApiError {
    fn from(err: AtCapacity) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: 4503,
            message: err.to_string(),
        }
    }
}

/// The request body, or 413 past the body limit.
fn read_body(state: &ApiState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: 4009,
                message: format!(
                    "body: larger than max_body_size ({} bytes)",
                    state.max_body_size
                ),
            }
        } else {
            ApiError::bad_request("body", rejection.body_text())
        }
    })
}

async fn require_api_key(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(key) if constant_time_eq(key.as_bytes(), state.api_key.as_bytes()) => {
            next.run(request).await
        }
        _ => {
            tracing::info!(path = %request.uri().path(), "api request without a valid api key");
            ApiError {
                status: StatusCode::UNAUTHORIZED,
                code: 4002,
                message: "missing or invalid api key".into(),
            }
            .into_response()
        }
    }
}

/// Compares without an early exit, so response time does not reveal how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn publish(
    State(state): State<Arc<ApiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = read_body(&state, body)?;
    let batch = Envelope::batch_from_json(&body).map_err(field_error)?;
    Ok(match batch {
        EnvelopeBatch::One(envelope) => {
            Json(state.gateway.publish(envelope).await?).into_response()
        }
        EnvelopeBatch::Many(items) => {
            let mut results: Vec<PublishOutcome> = Vec::with_capacity(items.len());
            for item in items {
                let result = match item {
                    Ok(envelope) => state.gateway.publish(envelope).await,
                    Err(e) => Err(e.into()),
                };
                results.push(PublishOutcome::from(result));
            }
            Json(results).into_response()
        }
    })
}

fn field_error(e: FieldError) -> ApiError {
    ApiError::bad_request(&e.field, &e.message)
}

async fn channels(State(state): State<Arc<ApiState>>) -> Response {
    Json(state.gateway.channels()).into_response()
}

async fn presence(
    State(state): State<Arc<ApiState>>,
    Path(channel): Path<String>,
) -> Result<Response, ApiError> {
    let channel = parse_channel(&channel)?;
    Ok(Json(serde_json::json!({ "members": state.gateway.presence(&channel) })).into_response())
}

async fn history(
    State(state): State<Arc<ApiState>>,
    Path(channel): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let channel = parse_channel(&channel)?;
    let number = |field: &str| -> Result<Option<u64>, ApiError> {
        query
            .get(field)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(field, "must be a non-negative integer"))
            })
            .transpose()
    };
    let since = number("since")?.map(|offset| Since {
        offset,
        epoch: query.get("epoch").cloned(),
    });
    let limit = number("limit")?.map_or(DEFAULT_HISTORY_LIMIT, |l| l as usize);
    let page = state
        .gateway
        .history(&channel, since, limit)
        .map_err(|e| ApiError::bad_request("limit", e))?;
    Ok(Json(page).into_response())
}

/// `{"user"}`, `{"conn"}` or `{}` (everyone, where allowed).
#[derive(Deserialize)]
struct TargetBody {
    user: Option<String>,
    conn: Option<String>,
}

impl TargetBody {
    fn target(self) -> Result<Target, ApiError> {
        match (self.user, self.conn) {
            (Some(_), Some(_)) => Err(ApiError::bad_request("conn", "give user or conn, not both")),
            (Some(user), None) => Ok(Target::User(user)),
            (None, Some(conn)) => Ok(Target::Conn(conn)),
            (None, None) => Ok(Target::All),
        }
    }
}

#[derive(Deserialize)]
struct DisconnectBody {
    #[serde(flatten)]
    target: TargetBody,
    #[serde(default = "default_reason")]
    reason: String,
    #[serde(default = "default_true")]
    reconnect: bool,
}

fn default_reason() -> String {
    "disconnected by the backend".into()
}

fn default_true() -> bool {
    true
}

async fn disconnect(
    State(state): State<Arc<ApiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: DisconnectBody = parse_body(&read_body(&state, body)?)?;
    let target = body.target.target()?;
    if target == Target::All {
        return Err(ApiError::bad_request("user", "user or conn is required"));
    }
    let n = state
        .gateway
        .disconnect(target, &body.reason, body.reconnect)
        .await;
    Ok(Json(serde_json::json!({ "disconnected": n })).into_response())
}

async fn unsubscribe(
    State(state): State<Arc<ApiState>>,
    Path(channel): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = read_body(&state, body)?;
    let channel = parse_channel(&channel)?;
    let body: TargetBody = if body.iter().all(u8::is_ascii_whitespace) {
        TargetBody {
            user: None,
            conn: None,
        }
    } else {
        parse_body(&body)?
    };
    let n = state.gateway.unsubscribe(&channel, body.target()?).await;
    Ok(Json(serde_json::json!({ "removed": n })).into_response())
}

async fn info(State(state): State<Arc<ApiState>>) -> Response {
    let connectors: serde_json::Map<String, serde_json::Value> = state
        .connectors
        .all()
        .iter()
        .map(|c| (c.name().to_owned(), c.health().to_string().into()))
        .collect();
    let mut info = serde_json::json!(state.gateway.info());
    info["connectors"] = connectors.into();
    Json(info).into_response()
}

/// `POST /api/users/{user}/block`: `{"duration":"1h"}` or `{}` (until unblocked).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    duration: Option<String>,
}

async fn block(
    State(state): State<Arc<ApiState>>,
    Path(user): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_user_id(&user).map_err(|e| ApiError::bad_request("user", e))?;
    let body = read_body(&state, body)?;
    let body: BlockBody = if body.iter().all(u8::is_ascii_whitespace) {
        BlockBody { duration: None }
    } else {
        parse_body(&body)?
    };
    let until = match body.duration.as_deref() {
        None => None,
        Some(text) => {
            let duration = humantime::parse_duration(text).map_err(|_| {
                ApiError::bad_request("duration", "not a duration like 30s, 10m or 2h")
            })?;
            Some(SystemTime::now() + duration)
        }
    };
    let ended = state.gateway.block(&user, until).await?;
    let until = until.map(|t| humantime::format_rfc3339_seconds(t).to_string());
    Ok(
        Json(serde_json::json!({"user": user, "until": until, "disconnected": ended}))
            .into_response(),
    )
}

async fn unblock(
    State(state): State<Arc<ApiState>>,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    check_user_id(&user).map_err(|e| ApiError::bad_request("user", e))?;
    let unblocked = state.gateway.unblock(&user).await;
    Ok(Json(serde_json::json!({ "unblocked": unblocked })).into_response())
}

/// `POST /api/tokens/revoke`: `{"jti","expires_at"?}` or `{"user","issued_before"?}` (Unix
/// seconds; `issued_before` defaults to now).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    jti: Option<String>,
    expires_at: Option<u64>,
    user: Option<String>,
    issued_before: Option<u64>,
}

async fn revoke(
    State(state): State<Arc<ApiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: RevokeBody = parse_body(&read_body(&state, body)?)?;
    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
    let revocation = match body {
        RevokeBody {
            jti: Some(jti),
            user: None,
            issued_before: None,
            expires_at,
        } => {
            if jti.is_empty() || jti.len() > 1024 {
                return Err(ApiError::bad_request("jti", "must be 1 to 1024 bytes"));
            }
            Revocation::Jti {
                jti,
                until: expires_at.map(at),
            }
        }
        RevokeBody {
            jti: None,
            user: Some(user),
            expires_at: None,
            issued_before,
        } => {
            check_user_id(&user).map_err(|e| ApiError::bad_request("user", e))?;
            let before = issued_before.map_or_else(SystemTime::now, at);
            Revocation::IssuedBefore { user, before }
        }
        _ => {
            return Err(ApiError::bad_request(
                "jti",
                "give jti (and expires_at), or user (and issued_before)",
            ))
        }
    };
    let ended = state.gateway.revoke(revocation).await?;
    Ok(Json(serde_json::json!({ "disconnected": ended })).into_response())
}

fn parse_channel(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name).map_err(|e| ApiError::bad_request("channel", e))
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    herald_connector_api::parse_json(body).map_err(|e| {
        let field = if e.field.is_empty() { "body" } else { &e.field };
        ApiError::bad_request(field, &e.message)
    })
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
