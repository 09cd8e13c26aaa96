//! Herald's server-sent events transport: `GET /sse?channels=a,b&token=T`, for a browser's
//! plain `EventSource`, no SDK needed.
//!
//! The connection identifies before the stream starts ([`ClientSession::ident`]), so a bad
//! token or a forbidden channel is a plain 401 or 403 with the JSON error body. The stream
//! then opens with an `ident` message (the reply's data: every channel's position and whether
//! it was recovered), and carries each event as a message named after the event, whose
//! `data:` is the event frame and whose `id:` is the connection's position in every channel
//! (`chat=42~EPOCH,news=7~EPOCH`). The browser sends the last id back as `Last-Event-ID` when
//! it reconnects, and the core recovers exactly what was missed. Event names and offsets come
//! with each outbox item ([`EventMeta`]), so no frame is parsed back. A comment line every
//! `heartbeat` keeps proxies from closing an idle stream.
//!
//! # Layout
//! - [`position`]: the `id:` / `Last-Event-ID` format.

pub mod position;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use bytes::{BufMut, Bytes, BytesMut};
use herald_connector_api::{
    end_chunks, write_chunk, ClientSession, Detach, DetachedIo, IdentRequest, OutFrame, Outbox,
    PeerInfo, Received, SessionHub, Since,
};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;

use position::Positions;

/// Frames taken from the outbox per wake-up.
const BATCH: usize = 64;

/// The `[sse]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    /// How often an idle stream gets a comment line, so proxies keep it open [default: 15s].
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
        }
    }
}

impl SseConfig {
    /// Every problem with the values, each naming its key.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        if self.heartbeat.is_zero() {
            vec![("sse.heartbeat", "must be greater than zero")]
        } else {
            Vec::new()
        }
    }
}

/// What the `/sse` route needs.
#[derive(Clone)]
pub struct SseState {
    /// Opens sessions in the core.
    pub hub: Arc<dyn SessionHub>,
    /// Timers.
    pub config: Arc<SseConfig>,
    /// Tracks the streams taken out of hyper, so shutdown can wait for them.
    pub tracker: TaskTracker,
}

/// The router serving `GET /sse`.
pub fn routes(state: SseState) -> Router {
    Router::new().route("/sse", get(stream)).with_state(state)
}

#[derive(Deserialize)]
struct SseQuery {
    channels: Option<String>,
    token: Option<String>,
}

/// An answer before the stream starts: status plus the contract's `{"code","error"}` body.
struct Refusal {
    status: StatusCode,
    code: u16,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.code, "error": self.message});
        (self.status, Json(body)).into_response()
    }
}

async fn stream(
    State(state): State<SseState>,
    ConnectInfo(remote): ConnectInfo<std::net::SocketAddr>,
    Query(query): Query<SseQuery>,
    detach: Option<Extension<Detach>>,
    version: Version,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let bad = |message: String| Refusal {
        status: StatusCode::BAD_REQUEST,
        code: 4000,
        message,
    };
    let resume = match headers.get("last-event-id") {
        None => Positions::default(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(Positions::parse)
            .ok_or_else(|| {
                bad("Last-Event-ID: not a position list like chat=42~EPOCH,news=7~EPOCH".into())
            })?,
    };
    let token = query.token.or_else(|| bearer(&headers));
    let mut channels: Vec<(String, Option<Since>)> = query
        .channels
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|c| !c.is_empty())
        .map(|c| (c.to_owned(), resume.since(c)))
        .collect();
    // Channels joined at ident anyway (`@user`, `*`) recover too, when the id names them.
    for (name, since) in resume.iter() {
        if !channels.iter().any(|(c, _)| c == name) {
            channels.push((name.to_owned(), Some(since)));
        }
    }

    let (mut session, outbox) = state
        .hub
        .open(PeerInfo::from_request("sse", Some(remote), &headers, true))
        .map_err(|err| Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: err.code(),
            message: err.to_string(),
        })?;
    let identified = session
        .ident(IdentRequest { token, channels })
        .await
        .map_err(|refused| Refusal {
            status: match refused.code {
                4002 => StatusCode::UNAUTHORIZED,
                4003 => StatusCode::FORBIDDEN,
                4000 => StatusCode::BAD_REQUEST,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            },
            code: refused.code,
            message: refused.message,
        })?;
    let positions = Positions::from_identified(&identified);
    let mut first = BytesMut::new();
    let ident = serde_json::to_vec(&identified).unwrap_or_default();
    write_message(&mut first, "ident", Some(&positions), &ident);
    let stream = Stream {
        session,
        outbox,
        positions,
        first: Some(first.freeze()),
        heartbeat: state.config.heartbeat,
        beat: Box::pin(tokio::time::sleep(state.config.heartbeat)),
        last_sent: Instant::now(),
        ended: false,
    };
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    let framing = match version {
        Version::HTTP_11 => Some(Framing::Chunked),
        Version::HTTP_10 => Some(Framing::UntilClose),
        _ => None,
    };
    if let (Some(Extension(detach)), Some(framing)) = (detach, framing) {
        // hyper writes the head (with what the layers add, CORS), then the stream writes the
        // body itself: an idle stream then holds none of hyper's buffers.
        let connection = detach.after_head();
        state.tracker.spawn(async move {
            if let Some(io) = connection.await {
                stream.pump(io, framing).await;
            }
        });
        let never = futures_util::stream::pending::<Result<Bytes, Infallible>>();
        return Ok((headers, Body::from_stream(never)).into_response());
    }
    let chunks = futures_util::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), stream))
    });
    Ok((headers, Body::from_stream(chunks)).into_response())
}

/// How a body written outside hyper is framed, as hyper would have for the request's version.
#[derive(Clone, Copy, PartialEq)]
enum Framing {
    /// HTTP/1.1: `transfer-encoding: chunked`.
    Chunked,
    /// HTTP/1.0: the body ends when the connection does.
    UntilClose,
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

/// One open stream: the core's session (dropping it unregisters), its outbox, and the
/// positions the next `id:` reports.
struct Stream {
    session: Box<dyn ClientSession>,
    outbox: Outbox,
    positions: Positions,
    /// The `ident` message, sent before anything else.
    first: Option<Bytes>,
    heartbeat: Duration,
    /// Fires at the earliest time a heartbeat may be due. One timer for the stream's life:
    /// a timer per wake-up cost a timer-wheel insert and remove for every chunk.
    beat: Pin<Box<Sleep>>,
    /// When the last chunk went out.
    last_sent: Instant,
    ended: bool,
}

impl Stream {
    /// Every message ready at one wake-up, written into one chunk (one write for hyper, not
    /// one per event); a heartbeat comment when nothing came for `heartbeat`; `None` once
    /// the connection ended.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.ended {
            return None;
        }
        let mut frames: Vec<OutFrame> = Vec::new();
        let received = loop {
            tokio::select! {
                received = self.outbox.recv_many(&mut frames, BATCH) => break received,
                () = &mut self.beat => {
                    let due = self.last_sent + self.heartbeat;
                    let now = Instant::now();
                    if now >= due {
                        self.last_sent = now;
                        self.beat.as_mut().reset(now + self.heartbeat);
                        return Some(Bytes::from_static(b":\n\n"));
                    }
                    self.beat.as_mut().reset(due);
                }
            }
        };
        self.last_sent = Instant::now();
        let mut chunk = BytesMut::with_capacity(frames.iter().map(|f| f.frame.len() + 64).sum());
        match received {
            Received::Frames(_) => self.write_all(&mut chunk, frames),
            Received::Ended(disconnect) => {
                if !disconnect.discards_queue() {
                    let queued = std::iter::from_fn(|| self.outbox.try_recv()).collect();
                    self.write_all(&mut chunk, queued);
                }
                write_message(&mut chunk, "disconnect", None, &disconnect.frame());
                self.ended = true;
                tracing::debug!(
                    conn = self.session.conn_id(),
                    code = disconnect.code,
                    "sse stream ends"
                );
            }
            Received::Closed => {
                self.ended = true;
                return None;
            }
        }
        Some(chunk.freeze())
    }

    /// Writes the stream's chunks to a connection taken out of hyper until the session ends,
    /// a write fails or the client goes; the session then drops, as it would in hyper.
    async fn pump(mut self, mut io: DetachedIo, framing: Framing) {
        loop {
            let chunk = tokio::select! {
                chunk = self.next_chunk() => chunk,
                () = peer_gone(&mut io) => return,
            };
            let Some(chunk) = chunk else { break };
            if write_body(&mut io, framing, chunk).await.is_err() {
                return;
            }
        }
        if framing == Framing::Chunked {
            let _ = end_chunks(&mut io).await;
        }
        let _ = io.shutdown().await;
    }

    fn write_all(&mut self, chunk: &mut BytesMut, frames: Vec<OutFrame>) {
        for out in frames {
            match out.meta {
                Some(meta) => {
                    for (channel, offset) in &meta.via {
                        self.positions.advance(channel.as_str(), *offset);
                    }
                    write_message(chunk, &meta.event, Some(&self.positions), &out.frame);
                }
                // Notices (joined, left, unsubscribed) are rare: read their op.
                None => write_message(chunk, &op_of(&out.frame), None, &out.frame),
            }
        }
    }
}

/// Writes one chunk as the head said, and flushes it.
async fn write_body(io: &mut DetachedIo, framing: Framing, chunk: Bytes) -> std::io::Result<()> {
    match framing {
        Framing::Chunked => write_chunk(io, chunk).await,
        Framing::UntilClose => {
            io.write_all(&chunk).await?;
            io.flush().await
        }
    }
}

/// Resolves once the client closed its side or the connection broke. A stream's client has
/// nothing to send, so whatever it sends is dropped.
async fn peer_gone(io: &mut DetachedIo) {
    let mut discard = [0u8; 64];
    while let Ok(1..) = io.read(&mut discard).await {}
}

/// Appends one SSE message: `event:`, `id:` when given, and the frame as `data:` lines.
fn write_message(chunk: &mut BytesMut, event: &str, id: Option<&Positions>, frame: &[u8]) {
    chunk.put_slice(b"event: ");
    // A control character would end the field (or forge another): it becomes U+FFFD.
    if event.chars().any(char::is_control) {
        for c in event.chars() {
            let c = if c.is_control() { '\u{FFFD}' } else { c };
            chunk.put_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        }
    } else {
        chunk.put_slice(event.as_bytes());
    }
    if let Some(positions) = id {
        chunk.put_slice(b"\nid: ");
        positions.write_to(chunk);
    }
    // Frames are compact JSON, one line; a line break would still only start another
    // `data:` line, never another field.
    for line in frame.split(|&b| b == b'\n') {
        chunk.put_slice(b"\ndata: ");
        chunk.put_slice(line.strip_suffix(b"\r").unwrap_or(line));
    }
    chunk.put_slice(b"\n\n");
}

fn op_of(frame: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Op {
        op: String,
    }
    serde_json::from_slice::<Op>(frame)
        .map(|f| f.op)
        .unwrap_or_else(|_| "message".into())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn messages_cannot_forge_fields() {
        let mut chunk = BytesMut::new();
        write_message(&mut chunk, "MESSAGE:NEW", None, br#"{"a":1}"#);
        write_message(&mut chunk, "a\nevent: forged", None, b"x\r\nid: 9");
        assert_eq!(
            &chunk[..],
            "event: MESSAGE:NEW\ndata: {\"a\":1}\n\n\
             event: a\u{FFFD}event: forged\ndata: x\ndata: id: 9\n\n"
                .as_bytes()
        );
        assert_eq!(op_of(br#"{"op":"left","channel":"c"}"#), "left");
    }

    #[test]
    fn positions_from_ident_are_the_first_id() {
        let identified = herald_connector_api::Identified {
            user: "u".into(),
            conn: "c_1".into(),
            node: "n".into(),
            channels: BTreeMap::from([(
                "news".to_owned(),
                herald_connector_api::ChannelPosition {
                    offset: 7,
                    epoch: "E".into(),
                    recovered: false,
                },
            )]),
        };
        assert_eq!(
            Positions::from_identified(&identified).to_string(),
            "news=7~E"
        );
    }
}
