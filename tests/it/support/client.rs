//! A WebSocket test client that speaks Herald's frames.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::WAIT;

/// One client connection; frames from batched messages are split and queued.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    frames: VecDeque<Value>,
    next_id: u64,
    closed: Option<Option<CloseFrame>>,
}

impl Client {
    /// Connects to a `ws://` URL.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Self::from_stream(ws)
    }

    /// Connects to a `wss://` URL trusting `tls`.
    pub async fn connect_tls(url: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        let connector = tokio_tungstenite::Connector::Rustls(tls);
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector)),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        Self::from_stream(ws)
    }

    /// Connects with a 4 KiB socket receive buffer: a client that then stops reading stalls
    /// the server's writes almost at once instead of after megabytes.
    pub async fn connect_small_buffer(addr: std::net::SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("connect");
        let url = format!("ws://{addr}/ws");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("handshake");
        Self::from_stream(ws)
    }

    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Self {
            ws,
            frames: VecDeque::new(),
            next_id: 1,
            closed: None,
        }
    }

    /// The underlying stream, for tests that read raw messages; queued frames are dropped.
    pub fn into_stream(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.ws
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Sends raw text, ignoring failure (the server may close while a huge message is sent).
    pub async fn send_text_lossy(&mut self, text: &str) {
        let _ = self.ws.send(Message::text(text)).await;
    }

    /// Sends a frame as is.
    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    /// Sends a frame with a fresh id and waits for its reply; other frames stay queued.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        self.send(frame).await;
        self.reply_to(id).await
    }

    /// Waits for the reply with this id, keeping every other frame queued in order.
    pub async fn reply_to(&mut self, id: u64) -> Value {
        let mut skipped = VecDeque::new();
        loop {
            let frame = self.next().await;
            if frame["op"] == "reply" && frame["id"] == json!(id) {
                skipped.extend(self.frames.drain(..));
                self.frames = skipped;
                return frame;
            }
            skipped.push_back(frame);
        }
    }

    /// The next frame, waiting up to [`WAIT`].
    pub async fn next(&mut self) -> Value {
        match self.try_next(WAIT).await {
            Some(frame) => frame,
            None => panic!("no frame within {WAIT:?} (closed: {:?})", self.closed),
        }
    }

    /// The next frame, or `None` if none comes within `wait` or the socket closed.
    pub async fn try_next(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Some(frame);
            }
            if self.closed.is_some() {
                return None;
            }
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match message {
                Some(Ok(Message::Text(text))) => {
                    for line in text.split('\n') {
                        self.frames
                            .push_back(serde_json::from_str(line).expect("server frames are JSON"));
                    }
                }
                Some(Ok(Message::Close(frame))) => self.closed = Some(frame),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => self.closed = Some(None),
            }
        }
    }

    /// The next event frame, skipping nothing: fails if another kind of frame comes first.
    pub async fn event(&mut self) -> Value {
        let frame = self.next().await;
        assert_eq!(frame["op"], "event", "expected an event, got {frame}");
        frame
    }

    /// Asserts no frame arrives within `wait`.
    pub async fn expect_nothing(&mut self, wait: Duration) {
        if let Some(frame) = self.try_next(wait).await {
            panic!("expected nothing, got {frame}");
        }
    }

    /// Waits for the `disconnect` frame and the close; returns (frame, close code).
    pub async fn expect_disconnect(&mut self) -> (Value, u16) {
        let frame = self.next().await;
        assert_eq!(
            frame["op"], "disconnect",
            "expected disconnect, got {frame}"
        );
        let _ = self.try_next(WAIT).await;
        let code = match &self.closed {
            Some(Some(close)) => u16::from(close.code),
            other => panic!("expected a close frame, got {other:?}"),
        };
        (frame, code)
    }

    /// Waits for a `disconnect` with `code` and `reconnect`, closed with the same code;
    /// returns the frame.
    pub async fn expect_ended(&mut self, code: u16, reconnect: bool) -> Value {
        let (frame, close) = self.expect_disconnect().await;
        assert_eq!(
            (frame["code"].as_u64(), close),
            (Some(u64::from(code)), code),
            "{frame}"
        );
        assert_eq!(frame["reconnect"], reconnect, "{frame}");
        frame
    }

    /// The close code the server sent, once the socket closed.
    pub fn expect_closed_code(&self) -> u16 {
        match &self.closed {
            Some(Some(close)) => u16::from(close.code),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Closes the connection from the client side.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
