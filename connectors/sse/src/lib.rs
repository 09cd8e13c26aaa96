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

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herald_connector_api::{
    ClientSession, IdentRequest, OutFrame, Outbox, PeerInfo, Received, SessionHub, Since,
};
use serde::Deserialize;

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
    Query(query): Query<SseQuery>,
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
        .open(PeerInfo {
            transport: "sse",
            remote: None,
            event_meta: true,
        })
        .map_err(|err| Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: err.code(),
            message: err.to_string(),
        })?;
    let identified = session
        .ident(IdentRequest { token, channels })
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
    let first = Event::default()
        .event("ident")
        .data(serde_json::to_string(&identified).unwrap_or_default())
        .id(positions.to_string());
    let stream = Stream {
        session,
        outbox,
        positions,
        pending: VecDeque::from([first]),
        ended: false,
    };
    let events = futures_util::stream::unfold(stream, |mut stream| async move {
        let event = stream.next().await?;
        Some((Ok::<_, Infallible>(event), stream))
    });
    let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(state.config.heartbeat));
    Ok(([(header::CACHE_CONTROL, "no-store")], sse).into_response())
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
    pending: VecDeque<Event>,
    ended: bool,
}

impl Stream {
    /// The next message, or `None` once the connection ended.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let mut frames: Vec<OutFrame> = Vec::new();
            match self.outbox.recv_many(&mut frames, BATCH).await {
                Received::Frames(_) => self.push_all(frames),
                Received::Ended(disconnect) => {
                    if !disconnect.discards_queue() {
                        let queued = std::iter::from_fn(|| self.outbox.try_recv()).collect();
                        self.push_all(queued);
                    }
                    let frame = disconnect.frame();
                    self.pending.push_back(
                        Event::default()
                            .event("disconnect")
                            .data(String::from_utf8_lossy(&frame)),
                    );
                    self.ended = true;
                    tracing::debug!(
                        conn = self.session.conn_id(),
                        code = disconnect.code,
                        "sse stream ends"
                    );
                }
                Received::Closed => self.ended = true,
            }
        }
    }

    fn push_all(&mut self, frames: Vec<OutFrame>) {
        for out in frames {
            let data = String::from_utf8_lossy(&out.frame).into_owned();
            let event = match out.meta {
                Some(meta) => {
                    for (channel, offset) in &meta.via {
                        self.positions.advance(channel.as_str(), *offset);
                    }
                    Event::default()
                        .event(event_name(&meta.event))
                        .data(data)
                        .id(self.positions.to_string())
                }
                // Notices (joined, left, unsubscribed) are rare: read their op.
                None => Event::default().event(op_of(&data)).data(data),
            };
            self.pending.push_back(event);
        }
    }
}

/// An event name as an SSE `event:` field can carry it: control characters (which would end
/// the field, or forge another) become U+FFFD.
fn event_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

fn op_of(frame: &str) -> String {
    #[derive(Deserialize)]
    struct Op {
        op: String,
    }
    serde_json::from_str::<Op>(frame)
        .map(|f| event_name(&f.op))
        .unwrap_or_else(|_| "message".into())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn event_names_cannot_break_the_field() {
        assert_eq!(event_name("MESSAGE:NEW"), "MESSAGE:NEW");
        assert_eq!(event_name("a\nevent: forged"), "a\u{FFFD}event: forged");
        assert_eq!(op_of(r#"{"op":"left","channel":"c"}"#), "left");
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
