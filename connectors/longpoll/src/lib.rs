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
//! session holds no task but its parked poll's, and one sweeper ends sessions nobody polled
//! for `session_timeout` as a dropped WebSocket ends: it leaves its channels and the others
//! get `left`.
//!
//! # Layout
//! - [`session`]: one session, and its un-acknowledged frames.

pub mod session;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{header, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use herald_connector_api::{end_chunks, write_chunk, Detach, DetachedIo, PeerInfo, SessionHub};
use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use session::{lock, LpSession, Outbound};

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
    /// Tracks polls answered outside hyper, so shutdown can wait for them.
    tracker: TaskTracker,
}

impl LongPollState {
    /// State for the routes, with an empty session table; polls answered outside hyper are
    /// tracked on `tracker`.
    pub fn new(
        hub: Arc<dyn SessionHub>,
        config: LongPollConfig,
        max_body_size: usize,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            hub,
            config: Arc::new(config),
            max_body_size,
            sessions: Arc::default(),
            tracker,
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
    detach: Option<Extension<Detach>>,
    version: Version,
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
        outbound = session.outbound.clone().lock_owned() => outbound,
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
        let deadline = Instant::now() + state.config.poll_timeout;
        let takeable = detach.filter(|d| version == Version::HTTP_11 && d.resumable());
        let park_until = match takeable {
            Some(_) => deadline.min(Instant::now() + TAKE_AFTER),
            None => deadline,
        };
        session.set_polling(true);
        let woke = park(&mut outbound, park_until, &cancelled).await;
        if let (false, Some(Extension(detach))) = (woke, takeable) {
            if !cancelled.is_cancelled() && park_until < deadline {
                let connection = detach.after_head();
                let parked = Parked {
                    session,
                    outbound,
                    cancelled,
                    deadline,
                };
                state.tracker.spawn(parked.answer(connection, detach));
                let never = futures_util::stream::pending::<Result<Bytes, Infallible>>();
                return Ok(frames_response(Body::from_stream(never)));
            }
        }
        parked_done(&session, &mut outbound, woke);
    }
    if outbound.finished() {
        // The core's side is over; the frames stay until acknowledged.
        session.end();
    }
    Ok(frames_response(outbound.response()))
}

/// A poll parked longer than this is an idle client's: its connection is taken out of hyper,
/// whose buffers are most of what an idle session costs. Polls answered sooner (a busy
/// session) stay in hyper, where answering costs nothing extra.
const TAKE_AFTER: Duration = Duration::from_millis(10);

/// Waits until frames are queued (`true`), `until`, or a newer poll.
async fn park(outbound: &mut Outbound, until: Instant, cancelled: &CancellationToken) -> bool {
    tokio::select! {
        () = outbound.wait() => true,
        () = tokio::time::sleep_until(until.into()) => false,
        () = cancelled.cancelled() => false,
    }
}

/// After a park: the session may expire again, and what woke it is taken.
fn parked_done(session: &LpSession, outbound: &mut Outbound, woke: bool) {
    session.set_polling(false);
    session.touch();
    if woke {
        outbound.fill();
    }
}

/// A poll whose connection was taken out of hyper: it answers on its own task.
struct Parked {
    session: Arc<LpSession>,
    outbound: OwnedMutexGuard<Outbound>,
    cancelled: CancellationToken,
    deadline: Instant,
}

impl Parked {
    /// Waits out the rest of the poll, writes the answer as the one chunk of the body whose
    /// head hyper wrote, and gives the connection back for the next request.
    async fn answer(
        mut self,
        connection: impl Future<Output = Option<DetachedIo>>,
        detach: Detach,
    ) {
        let io = connection.await;
        let woke = match io {
            Some(_) => park(&mut self.outbound, self.deadline, &self.cancelled).await,
            None => false,
        };
        parked_done(&self.session, &mut self.outbound, woke);
        if self.outbound.finished() {
            self.session.end();
        }
        let body = self.outbound.response();
        drop(self.outbound);
        // A connection that fails now loses nothing: the frames stay until acknowledged.
        if let Some(mut io) = io {
            if write_chunk(&mut io, body).await.is_ok() && end_chunks(&mut io).await.is_ok() {
                detach.resume(io);
            }
        }
    }
}

fn frames_response(body: impl Into<Body>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.into(),
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
