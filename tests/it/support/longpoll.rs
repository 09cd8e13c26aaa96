//! A long-poll test client: opens a session, sends frames, polls with acknowledgements.

use std::collections::VecDeque;

use serde_json::{json, Value};

use super::WAIT;

/// One long-poll session, acknowledging everything it has read.
pub struct LpClient {
    http: reqwest::Client,
    base: String,
    pub sid: String,
    pub conn: String,
    /// The last `seq` received (what the next poll acknowledges).
    pub ack: u64,
    frames: VecDeque<Value>,
    next_id: u64,
}

impl LpClient {
    /// Opens a session on `base` (`http://addr`).
    pub async fn open(base: &str) -> Self {
        let http = reqwest::Client::new();
        let response = http
            .post(format!("{base}/lp/open"))
            .send()
            .await
            .expect("open");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("open body");
        Self {
            http,
            base: base.to_owned(),
            sid: body["sid"].as_str().expect("sid").to_owned(),
            conn: body["conn"].as_str().expect("conn").to_owned(),
            ack: 0,
            frames: VecDeque::new(),
            next_id: 1,
        }
    }

    /// POSTs raw text to `/lp/send`; returns the status.
    pub async fn send_text(&self, text: &str) -> u16 {
        self.http
            .post(format!("{}/lp/send?sid={}", self.base, self.sid))
            .body(text.to_owned())
            .send()
            .await
            .expect("send")
            .status()
            .as_u16()
    }

    /// Sends one frame.
    pub async fn send(&self, frame: Value) {
        assert_eq!(self.send_text(&frame.to_string()).await, 204);
    }

    /// One raw poll with the given `ack`: status and body.
    pub async fn poll_raw(&self, ack: u64) -> (u16, Value) {
        let response = tokio::time::timeout(
            WAIT,
            self.http
                .get(format!("{}/lp/poll?sid={}&ack={ack}", self.base, self.sid))
                .send(),
        )
        .await
        .expect("poll answered in time")
        .expect("poll");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls once, acknowledging what was read; queues the frames, returns how many came.
    pub async fn poll(&mut self) -> usize {
        let (status, body) = self.poll_raw(self.ack).await;
        assert_eq!(status, 200, "poll: {body}");
        let items = body.as_array().expect("an array").clone();
        let mut fresh = 0;
        for item in items {
            let seq = item["seq"].as_u64().expect("seq");
            if seq > self.ack {
                self.ack = seq;
                self.frames.push_back(item["frame"].clone());
                fresh += 1;
            }
        }
        fresh
    }

    /// The next frame, polling until one comes (within [`WAIT`]).
    pub async fn next(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return frame;
            }
            assert!(tokio::time::Instant::now() < deadline, "no frame in time");
            self.poll().await;
        }
    }

    /// Sends a frame with a fresh id and waits for its reply; other frames stay queued.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        self.send(frame).await;
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

    /// Closes the session.
    pub async fn close(&self) -> u16 {
        self.http
            .post(format!("{}/lp/close?sid={}", self.base, self.sid))
            .send()
            .await
            .expect("close")
            .status()
            .as_u16()
    }
}
