//! An SSE test client: reads `event:`, `data:` and `id:` fields the way `EventSource` does.

use std::collections::VecDeque;

use serde_json::Value;

use super::WAIT;

/// One message of the stream.
#[derive(Debug, Clone, Default)]
pub struct SseMessage {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

impl SseMessage {
    /// `data` as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("data is JSON")
    }
}

/// An open stream.
pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
    messages: VecDeque<SseMessage>,
    /// Comment lines seen (heartbeats).
    pub comments: usize,
}

impl SseClient {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buffer: String::new(),
            messages: VecDeque::new(),
            comments: 0,
        }
    }

    /// The next message, or `None` when the stream ends or nothing comes within [`WAIT`].
    pub async fn next(&mut self) -> Option<SseMessage> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(message) = self.messages.pop_front() {
                return Some(message);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            self.parse();
        }
    }

    /// The next message that is not a heartbeat, which must be an event named `event`.
    pub async fn expect(&mut self, event: &str) -> SseMessage {
        let message = self.next().await.expect("a message");
        assert_eq!(message.event, event, "{message:?}");
        message
    }

    fn parse(&mut self) {
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut message = SseMessage::default();
            let mut fields = 0;
            for line in block.lines().filter(|l| !l.is_empty()) {
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                fields += 1;
                match field {
                    "event" => message.event = value.to_owned(),
                    "data" => {
                        if !message.data.is_empty() {
                            message.data.push('\n');
                        }
                        message.data.push_str(value);
                    }
                    "id" => message.id = Some(value.to_owned()),
                    _ => {}
                }
            }
            if fields > 0 {
                self.messages.push_back(message);
            }
        }
    }
}
