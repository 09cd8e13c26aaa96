//! Herald's long-poll transport, for clients that cannot keep a WebSocket open.
//!
//! - `POST /lp/open` → `{"sid","conn"}`: a session in the core, as a WebSocket upgrade opens.
//! - `POST /lp/send?sid=` → 204: one frame, an array of frames or `\n`-separated frames, fed
//!   to the core as a WebSocket message is; replies come back through poll.
//! - `GET /lp/poll?sid=&ack=` → `[{"seq","frame"}, …]`: acknowledges every frame up to `ack`,
//!   then answers at once with whatever is not acknowledged, or waits up to `poll_timeout`
//!   for the first frame. A newer poll ends an older one with `[]`.
//! - `POST /lp/close?sid=` → 204.
//!
//! Unknown or ended sessions answer 404 with code 4404. Sessions live in one table, so any
//! request reaches its session whichever connection it comes on (no sticky sessions); a
//! session holds no task, and one sweeper ends sessions nobody polled for `session_timeout`
//! as a dropped WebSocket ends: it leaves its channels and the others get `left`.
//!
//! # Layout
//! - [`session`]: one session, and its un-acknowledged frames.

pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_connector_api::{PeerInfo, SessionHub};
use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use session::{lock, LpSession};

/// Length of a session id: 32 random alphanumerics, about 190 bits, since the id is all a
/// request shows to reach an identified session.
const SID_LEN: usize = 32;

/// The `[longpoll]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LongPollConfig {
    /// How long a poll waits for a frame before answering `[]` [default: 25s].
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// A session not polled for this long ends as a dropped connection does [default: 60s].
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Bytes of frames sent but not yet acknowledged, per session [default: 4 MiB].
    pub max_unacked_bytes: usize,
}

impl Default for LongPollConfig {
    fn default() -> Self {
        Self {
            poll_timeout: Duration::from_secs(25),
            session_timeout: Duration::from_secs(60),
            max_unacked_bytes: 4 << 20,
        }
    }
}

impl LongPollConfig {
    /// Every problem with the values, each naming its key.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut problems = Vec::new();
        if self.poll_timeout.is_zero() {
            problems.push(("longpoll.poll_timeout", "must be greater than zero"));
        }
        if self.session_timeout <= self.poll_timeout {
            problems.push((
                "longpoll.session_timeout",
                "must be longer than longpoll.poll_timeout",
            ));
        }
        if self.max_unacked_bytes == 0 {
            problems.push(("longpoll.max_unacked_bytes", "must be greater than zero"));
        }
        problems
    }
}

/// What the long-poll routes need.
#[derive(Clone)]
pub struct LongPollState {
    /// Opens sessions in the core.
    pub hub: Arc<dyn SessionHub>,
    /// Timers and bounds.
    pub config: Arc<LongPollConfig>,
    /// Largest request body (a `send`), in bytes.
    pub max_body_size: usize,
    sessions: Arc<Sessions>,
}

impl LongPollState {
    /// State for the routes, with an empty session table.
    pub fn new(hub: Arc<dyn SessionHub>, config: LongPollConfig, max_body_size: usize) -> Self {
        Self {
            hub,
            config: Arc::new(config),
            max_body_size,
            sessions: Arc::default(),
        }
    }

    /// Ends sessions nobody polled for `session_timeout`, until `shutdown` is cancelled.
    pub async fn run_sweeper(self, shutdown: CancellationToken) {
        let every = (self.config.session_timeout / 4).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.sessions.expire(Instant::now(), self.config.session_timeout),
            }
        }
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        lock(&self.sessions.by_sid).len()
    }
}

/// Every open session by id.
#[derive(Default)]
struct Sessions {
    by_sid: Mutex<HashMap<String, Arc<LpSession>>>,
}

impl Sessions {
    fn get(&self, sid: &str) -> Option<Arc<LpSession>> {
        lock(&self.by_sid).get(sid).cloned()
    }

    fn remove(&self, sid: &str) -> Option<Arc<LpSession>> {
        lock(&self.by_sid).remove(sid)
    }

    fn expire(&self, now: Instant, timeout: Duration) {
        let expired: Vec<Arc<LpSession>> = {
            let mut by_sid = lock(&self.by_sid);
            let gone: Vec<String> = by_sid
                .iter()
                .filter(|(_, s)| s.expired(now, timeout))
                .map(|(sid, _)| sid.clone())
                .collect();
            gone.iter().filter_map(|sid| by_sid.remove(sid)).collect()
        };
        // Ending a session takes channel locks: outside the table's lock.
        for session in expired {
            tracing::debug!(conn = %session.conn, "long-poll session expired");
            session.end();
        }
    }
}

/// The router serving `/lp/*`.
pub fn routes(state: LongPollState) -> Router {
    // One Arc for the whole state: axum clones the state for every request.
    let state = Arc::new(state);
    Router::new()
        .route("/lp/open", post(open))
        .route("/lp/send", post(send))
        .route("/lp/poll", get(poll))
        .route("/lp/close", post(close))
        .layer(DefaultBodyLimit::max(state.max_body_size))
        .with_state(state)
}

/// A long-poll error: status plus the contract's `{"code","error"}` body.
struct LpError {
    status: StatusCode,
    code: u16,
    message: String,
}

impl LpError {
    fn unknown_session() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: 4404,
            message:
                "unknown or ended long-poll session: open a new one and recover through offsets"
                    .into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: 4000,
            message: message.into(),
        }
    }
}

impl IntoResponse for LpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.code, "error": self.message});
        (self.status, Json(body)).into_response()
    }
}

#[derive(Deserialize)]
struct SidQuery {
    sid: Option<String>,
}

impl SidQuery {
    fn session(&self, state: &LongPollState) -> Result<(String, Arc<LpSession>), LpError> {
        let sid = self
            .sid
            .as_deref()
            .ok_or_else(|| LpError::bad_request("sid: missing query parameter"))?;
        let session = state
            .sessions
            .get(sid)
            .ok_or_else(LpError::unknown_session)?;
        Ok((sid.to_owned(), session))
    }
}

async fn open(
    State(state): State<Arc<LongPollState>>,
    ConnectInfo(remote): ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Result<Response, LpError> {
    let (session, outbox) = state
        .hub
        .open(PeerInfo::from_request(
            "longpoll",
            Some(remote),
            &headers,
            false,
        ))
        .map_err(|err| LpError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: err.code(),
            message: err.to_string(),
        })?;
    let session = Arc::new(LpSession::new(
        session,
        outbox,
        state.config.max_unacked_bytes,
    ));
    let sid = Alphanumeric.sample_string(&mut rand::rng(), SID_LEN);
    let conn = session.conn.clone();
    lock(&state.sessions.by_sid).insert(sid.clone(), session);
    Ok(Json(serde_json::json!({"sid": sid, "conn": conn})).into_response())
}

async fn send(
    State(state): State<Arc<LongPollState>>,
    Query(query): Query<SidQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, LpError> {
    let (_, session) = query.session(&state)?;
    let body = body.map_err(|rejection| LpError {
        status: rejection.status(),
        code: if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            4009
        } else {
            4000
        },
        message: format!("body: {}", rejection.body_text()),
    })?;
    // Not UTF-8 is not JSON: the core answers 4000 through poll, as for a WebSocket message.
    let text = std::str::from_utf8(&body).unwrap_or("\u{0}");
    if !session.handle_text(text) {
        return Err(LpError::unknown_session());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct PollQuery {
    sid: Option<String>,
    ack: Option<String>,
}

async fn poll(
    State(state): State<Arc<LongPollState>>,
    Query(query): Query<PollQuery>,
) -> Result<Response, LpError> {
    let (sid, session) = SidQuery { sid: query.sid }.session(&state)?;
    let ack = match query.ack.as_deref() {
        None | Some("") => 0,
        Some(text) => text
            .parse::<u64>()
            .map_err(|_| LpError::bad_request("ack: must be a non-negative integer"))?,
    };
    session.touch();
    let cancelled = session.start_poll();
    // An older poll still holds the buffer until it sees its cancellation.
    let mut outbound = tokio::select! {
        outbound = session.outbound.lock() => outbound,
        () = cancelled.cancelled() => return Ok(frames_response(Bytes::from_static(b"[]"))),
    };
    outbound
        .ack(ack)
        .map_err(|e| LpError::bad_request(format!("ack: beyond the last seq sent ({})", e.last)))?;
    if outbound.done() {
        drop(outbound);
        state.sessions.remove(&sid);
        return Err(LpError::unknown_session());
    }
    outbound.fill();
    if !outbound.has_frames() && !outbound.finished() {
        session.set_polling(true);
        let waited = tokio::select! {
            () = outbound.wait() => true,
            () = tokio::time::sleep(state.config.poll_timeout) => false,
            () = cancelled.cancelled() => false,
        };
        session.set_polling(false);
        session.touch();
        if waited {
            outbound.fill();
        }
    }
    if outbound.finished() {
        // The core's side is over; the frames stay until acknowledged.
        session.end();
    }
    Ok(frames_response(outbound.response()))
}

fn frames_response(body: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn close(
    State(state): State<Arc<LongPollState>>,
    Query(query): Query<SidQuery>,
) -> Result<Response, LpError> {
    let (sid, session) = query.session(&state)?;
    state.sessions.remove(&sid);
    session.end();
    session.start_poll();
    Ok(StatusCode::NO_CONTENT.into_response())
}
