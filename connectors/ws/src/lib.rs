//! Herald's WebSocket transport: `GET /ws`.
//!
//! The transport only moves bytes: inbound text messages go to the core's
//! [`ClientSession`], and frames from the connection's [`Outbox`] go out, batched: whatever is
//! queued when the socket is ready to write (up to [`MAX_BATCH_FRAMES`] frames) leaves as one
//! text message of `\n`-separated frames, so a busy connection pays one write per batch rather
//! than one per event. It also owns what only a WebSocket has: ping/pong liveness and message
//! size limits.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald_connector_api::{ClientSession, Disconnect, Outbox, PeerInfo, Received, SessionHub};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::task::TaskTracker;

mod deflate;
mod handshake;

use deflate::InflateError;
pub use deflate::Settings as CompressionSettings;
/// Public for the benchmarks.
pub use deflate::{Compressor, Deflate};
use handshake::{Socket, Upgrade};

/// Most frames sent as one WebSocket message.
pub const MAX_BATCH_FRAMES: usize = 256;

/// Most bytes joined into one WebSocket message. tungstenite keeps its write buffer at the
/// size of the largest message it wrote, so this also bounds what a connection holds on to
/// after a burst; a few KiB per write already amortizes the syscall.
pub const MAX_BATCH_BYTES: usize = 16 * 1024;

/// tungstenite's read buffer per connection. It zero-fills the whole buffer before each read,
/// so all of it is resident: small keeps idle connections cheap, and it grows on demand for
/// large messages (clients mostly receive).
const READ_BUFFER_SIZE: usize = 512;

/// Smallest message tungstenite reads whole before giving up on a connection.
const MIN_READ_LIMIT: usize = 256 * 1024;

/// How long the closing handshake (final frames, disconnect, close) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Limits and timers of the WebSocket transport.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Largest inbound message; a larger one ends the connection with 4009.
    pub max_message_size: usize,
    /// Largest outbound bytes buffered in the socket writer before writes wait.
    pub max_write_buffer: usize,
    /// How often the server pings.
    pub ping_interval: Duration,
    /// A connection silent for this long (no message, no pong) is closed.
    pub idle_timeout: Duration,
    /// permessage-deflate, when offered.
    pub compression: CompressionSettings,
}

/// What the `/ws` route needs.
#[derive(Clone)]
pub struct WsState {
    /// Opens sessions in the core.
    pub hub: Arc<dyn SessionHub>,
    /// Limits and timers.
    pub config: Arc<WsConfig>,
    /// Tracks connection tasks so shutdown can wait for them (axum's graceful shutdown does
    /// not wait for upgraded connections).
    pub tracker: TaskTracker,
}

/// The router serving `GET /ws`.
pub fn routes(state: WsState) -> Router {
    Router::new().route("/ws", get(upgrade)).with_state(state)
}

async fn upgrade(
    State(state): State<WsState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let upgrade = match Upgrade::check(&mut request, &state.config.compression) {
        Ok(upgrade) => upgrade,
        Err(refused) => return refused.into_response(),
    };
    let peer = PeerInfo::from_request("ws", Some(remote), request.headers(), false);
    let (session, outbox) = match state.hub.open(peer) {
        Ok(opened) => opened,
        Err(err) => {
            let retry = [(axum::http::header::RETRY_AFTER, "1")];
            return (StatusCode::SERVICE_UNAVAILABLE, retry, err.to_string()).into_response();
        }
    };
    let config = state.config.clone();
    let (response, socket) = upgrade.accept(limited(&config));
    let tracker = state.tracker.clone();
    // The connection gets a task of its own once upgraded: awaited in one task, the upgrade
    // and `serve` would both keep their (large) states in it for the connection's life.
    state.tracker.spawn(async move {
        if let Some((socket, compressor)) = socket.await {
            tracker.spawn(serve(socket, compressor, session, outbox, config));
        }
    });
    response
}

/// Herald's limits in place of tungstenite's defaults (64 MiB messages and an unbounded
/// write buffer).
fn limited(config: &WsConfig) -> WebSocketConfig {
    // tungstenite may read a few times past our limit so that an oversized message is read
    // whole and answered with 4009 and a clean close, instead of a reset with its tail unread;
    // past that, the 4009 frame is still sent but the close may be lost. A small read buffer
    // keeps idle connections cheap.
    let read_limit = config
        .max_message_size
        .saturating_mul(4)
        .max(MIN_READ_LIMIT);
    WebSocketConfig::default()
        .max_message_size(Some(read_limit))
        .max_frame_size(Some(read_limit))
        .read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(0)
        .max_write_buffer_size(config.max_write_buffer)
}

/// How the connection loop ended.
enum End {
    /// Close with this disconnect.
    Disconnect(Disconnect),
    /// Silent for too long: close 1001 without a disconnect frame.
    Idle,
    /// The client broke the WebSocket protocol: fail the connection with this close code
    /// (1002, or 1007 for text that is not UTF-8) and no disconnect frame.
    Failed(u16, &'static str),
    /// The client went away; nothing more to send.
    Gone,
}

async fn serve(
    mut socket: Socket,
    mut compressor: Option<Compressor>,
    mut session: Box<dyn ClientSession>,
    mut outbox: Outbox,
    config: Arc<WsConfig>,
) {
    let mut ping =
        tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
    let mut last_heard = Instant::now();
    let mut batch: Vec<Bytes> = Vec::new();
    let end = loop {
        tokio::select! {
            biased;
            received = outbox.recv_many(&mut batch, MAX_BATCH_FRAMES) => match received {
                Received::Frames(_) => {
                    let sent = send_frames(&mut socket, &mut compressor, &mut batch);
                    if let Err(end) = guarded(sent, &mut outbox, &mut ping, last_heard, &config).await {
                        break end;
                    }
                }
                Received::Ended(disconnect) => break End::Disconnect(disconnect),
                Received::Closed => break End::Gone,
            },
            inbound = socket.next() => match inbound {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) if message.len() > config.max_message_size => {
                    break End::Disconnect(Disconnect::new(4009, "frame too large", true));
                }
                Some(Ok(Message::Text(text))) => {
                    last_heard = Instant::now();
                    session.handle_text(&text);
                }
                Some(Ok(Message::Binary(bytes))) => {
                    last_heard = Instant::now();
                    match std::str::from_utf8(&bytes) {
                        Ok(text) => session.handle_text(text),
                        // Not UTF-8, so not JSON; the session answers 4000.
                        Err(_) => session.handle_text("\u{0}"),
                    }
                }
                // tungstenite reads no raw frames; it only writes them.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => last_heard = Instant::now(),
                Some(Ok(Message::Close(_))) | None => break End::Gone,
                Some(Err(err)) => {
                    tracing::debug!(conn = session.conn_id(), error = %err, "websocket read failed");
                    break read_failed(&err);
                }
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > config.idle_timeout {
                    break End::Idle;
                }
                let sent = socket.send(Message::Ping(Bytes::new()));
                if let Err(end) = guarded(sent, &mut outbox, &mut ping, last_heard, &config).await {
                    break end;
                }
            }
        }
    };
    // Unregister before the closing handshake so no more events are queued to us.
    let conn = session.conn_id().to_owned();
    drop(session);
    let closing = async {
        match end {
            End::Gone => {}
            End::Idle => {
                let _ = socket.send(close(1001, "idle timeout")).await;
            }
            End::Failed(code, why) => {
                let _ = socket.send(close(code, why)).await;
            }
            End::Disconnect(disconnect) => {
                if !disconnect.discards_queue() {
                    // `batch` may still hold frames a blocked send had not written yet.
                    while let Some(frame) = outbox.try_recv() {
                        batch.push(frame.frame);
                    }
                    send_frames(&mut socket, &mut compressor, &mut batch).await?;
                }
                let frame = Utf8Bytes::try_from(disconnect.frame()).unwrap_or_default();
                socket.send(Message::Text(frame)).await?;
                socket
                    .send(close(disconnect.code, &disconnect.reason))
                    .await?;
            }
        }
        // Finish the closing handshake: read until the client's close, so the socket is not
        // dropped with unread input (which would reset it and could lose our close frame).
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
        Ok::<_, WsError>(())
    };
    if timeout(CLOSE_TIMEOUT, closing).await.is_err() {
        tracing::debug!(%conn, "closing handshake timed out");
    }
}

fn close(code: u16, reason: &str) -> Message {
    // Close reasons are limited to 123 bytes by RFC 6455.
    let reason: String = reason.chars().take(100).collect();
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// Waits for a write unless the connection ends first: while a write waits nothing is read,
/// so the writer must still see the core's disconnect (4102, 4100 …) and notice a dead peer.
/// A client that stopped reading blocks writes for good; the stream under the WebSocket
/// fails such a write after `write_timeout` (`TimedOut`), which ends the connection with 4102.
async fn guarded(
    send: impl Future<Output = Result<(), WsError>>,
    outbox: &mut Outbox,
    ping: &mut tokio::time::Interval,
    last_heard: Instant,
    config: &WsConfig,
) -> Result<(), End> {
    tokio::pin!(send);
    // Nearly every write completes at once; only a blocked one needs the other watches.
    let first = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
    if let Poll::Ready(sent) = first {
        return sent.map_err(|err| write_failed(&err));
    }
    loop {
        tokio::select! {
            biased;
            disconnect = outbox.ended() => return Err(End::Disconnect(disconnect)),
            sent = &mut send => return sent.map_err(|err| write_failed(&err)),
            _ = ping.tick() => if last_heard.elapsed() > config.idle_timeout {
                return Err(End::Idle);
            },
        }
    }
}

/// How a write error ends the connection: a write that timed out is a client too slow (4102).
fn write_failed(err: &WsError) -> End {
    match err {
        WsError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            End::Disconnect(Disconnect::new(
                4102,
                "too slow: a write was not taken within write_timeout",
                true,
            ))
        }
        _ => End::Gone,
    }
}

/// Sends `batch` as `\n`-separated text messages of at most [`MAX_BATCH_BYTES`] each (or one
/// frame, if a frame is larger), compressed when deflate was agreed; empties `batch`.
async fn send_frames(
    socket: &mut Socket,
    compressor: &mut Option<Compressor>,
    batch: &mut Vec<Bytes>,
) -> Result<(), WsError> {
    while !batch.is_empty() {
        let text = next_message(batch);
        let message = match compressor {
            Some(compressor) => compressor.text(text),
            // The core only queues JSON text, which is UTF-8.
            None => Message::Text(Utf8Bytes::try_from(text).unwrap_or_default()),
        };
        socket.send(message).await?;
    }
    // A burst grew it to hundreds of slots; an idle connection should not keep them.
    batch.shrink_to(8);
    Ok(())
}

/// Takes frames from the front of `batch` into one `\n`-separated text of at most
/// [`MAX_BATCH_BYTES`] (or one larger frame). Public for the benchmarks.
pub fn next_message(batch: &mut Vec<Bytes>) -> Bytes {
    let mut len = batch[0].len();
    let count = 1 + batch[1..]
        .iter()
        .take_while(|frame| {
            len += frame.len() + 1;
            len <= MAX_BATCH_BYTES
        })
        .count();
    if count == 1 {
        return batch.remove(0);
    }
    let mut joined = Vec::with_capacity(batch[..count].iter().map(|f| f.len() + 1).sum());
    for (i, frame) in batch.drain(..count).enumerate() {
        if i > 0 {
            joined.push(b'\n');
        }
        joined.extend_from_slice(&frame);
    }
    Bytes::from(joined)
}

/// How a read error ends the connection.
fn read_failed(err: &WsError) -> End {
    let too_large = || End::Disconnect(Disconnect::new(4009, "frame too large", true));
    match err {
        WsError::Utf8(_) => End::Failed(1007, "text is not UTF-8"),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Gone,
        WsError::Protocol(_) => End::Failed(1002, "protocol error"),
        WsError::Capacity(_) => too_large(),
        WsError::Io(io) => match io.get_ref().and_then(|e| e.downcast_ref::<InflateError>()) {
            Some(InflateError::TooLarge) => too_large(),
            Some(InflateError::Corrupt) => End::Failed(1007, "compressed data does not inflate"),
            Some(InflateError::Interleaved) => End::Failed(1002, "protocol error"),
            None => End::Gone,
        },
        _ => End::Gone,
    }
}

#[cfg(test)]
mod autobahn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_newline_separated_and_bounded() {
        let text = |b: Bytes| String::from_utf8(b.to_vec()).unwrap();
        let mut batch = vec![
            Bytes::from_static(b"{\"a\":1}"),
            Bytes::from_static(b"{\"b\":2}"),
        ];
        assert_eq!(text(next_message(&mut batch)), "{\"a\":1}\n{\"b\":2}");
        assert!(batch.is_empty());

        let big = Bytes::from(format!("\"{}\"", "x".repeat(MAX_BATCH_BYTES / 2)));
        let mut batch = vec![
            big.clone(),
            big.clone(),
            big.clone(),
            Bytes::from_static(b"{}"),
        ];
        assert_eq!(
            text(next_message(&mut batch)).len(),
            big.len(),
            "a second half-size frame would overflow"
        );
        assert_eq!(text(next_message(&mut batch)).len(), big.len());
        assert_eq!(text(next_message(&mut batch)).len(), big.len() + 3);
        assert!(batch.is_empty());
    }
}
