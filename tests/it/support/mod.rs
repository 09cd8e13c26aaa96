//! Test harness: a gateway on 127.0.0.1:0, WebSocket and HTTP clients, and waits that fail
//! fast instead of hanging.

#![allow(dead_code)]

pub mod amqp;
pub mod client;
pub mod longpoll;
pub mod nats;
pub mod process;
pub mod raw_http;
pub mod sse;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use herald::auth::Auth;
use herald::config::{Cli, Config};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use client::Client;
pub use longpoll::LpClient;
pub use sse::SseClient;

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub const API_KEY: &str = "test-api-key";
pub const JWT_SECRET: &str = "test-jwt-secret";

/// A Herald running inside the test process, or as a process of its own.
pub struct Gateway {
    pub addr: SocketAddr,
    pub tls: bool,
    auth: Auth,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), herald::RunError>>>,
    process: Option<process::HeraldProcess>,
    _dir: Option<tempfile::TempDir>,
}

/// Starts a gateway with the test keys plus `args`; `config_toml`, if given, becomes `--config`.
pub async fn start_with(args: &[&str], config_toml: Option<&str>) -> Gateway {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut argv: Vec<String> = ["herald", "--api-key", API_KEY, "--jwt-secret", JWT_SECRET]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(text) = config_toml {
        let path: PathBuf = dir.path().join("herald.toml");
        std::fs::write(&path, text).expect("write config");
        argv.push(format!("--config={}", path.display()));
    }
    argv.extend(args.iter().map(|s| s.to_string()));
    let config = Config::load(Cli::try_parse_from(argv).expect("flags")).expect("config");
    let tls = config.tls.is_some();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let prepared = herald::prepare(config, listener).expect("prepare");
    let task = tokio::spawn(prepared.serve(async move {
        let _ = stopped.await;
    }));
    let gateway = Gateway {
        addr,
        tls,
        auth: Auth::new(JWT_SECRET),
        http: reqwest::Client::new(),
        stop: Some(stop),
        task: Some(task),
        process: None,
        _dir: Some(dir),
    };
    if !tls {
        gateway.wait_healthy().await;
    }
    gateway
}

/// Starts the `herald` binary with the test keys and `config_toml`, as a process of its own.
pub async fn spawn_with(config_toml: &str) -> Gateway {
    let process = process::HeraldProcess::spawn(&[], Some(config_toml)).await;
    Gateway {
        addr: process.addr.parse().expect("addr"),
        tls: false,
        auth: Auth::new(JWT_SECRET),
        http: reqwest::Client::new(),
        stop: None,
        task: None,
        process: Some(process),
        _dir: None,
    }
}

/// Starts a gateway with the test keys plus `args`.
pub async fn start(args: &[&str]) -> Gateway {
    start_with(args, None).await
}

impl Gateway {
    async fn wait_healthy(&self) {
        for _ in 0..100 {
            if let Ok(r) = self.http.get(self.url("/healthz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("gateway never became healthy");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A token for `user`, optionally limited to channel patterns.
    pub fn token(&self, user: &str, channels: Option<&[&str]>) -> String {
        let channels = channels.map(|c| c.iter().map(|s| s.to_string()).collect());
        self.auth.mint(user, channels, Duration::from_secs(3600))
    }

    /// A long-poll session, not yet identified.
    pub async fn longpoll(&self) -> LpClient {
        LpClient::open(&format!("http://{}", self.addr)).await
    }

    /// `GET /sse` with this query and optional `Last-Event-ID`: the raw response.
    pub async fn sse_response(
        &self,
        query: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.http.get(self.url(&format!("/sse?{query}")));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        tokio::time::timeout(WAIT, request.send())
            .await
            .expect("sse answered in time")
            .expect("sse")
    }

    /// An SSE stream for `user` on `channels` (comma-separated), resuming after `last_event_id`.
    pub async fn sse(&self, user: &str, channels: &str, last_event_id: Option<&str>) -> SseClient {
        let query = format!("channels={channels}&token={}", self.token(user, None));
        let response = self.sse_response(&query, last_event_id).await;
        assert_eq!(response.status(), 200);
        SseClient::new(response)
    }

    /// A connected, not yet identified WebSocket client.
    pub async fn connect(&self) -> Client {
        Client::connect(&format!("ws://{}/ws", self.addr)).await
    }

    /// A client identified as `user`.
    pub async fn client(&self, user: &str) -> Client {
        let mut client = self.connect().await;
        let reply = client
            .request(serde_json::json!({"op": "ident", "token": self.token(user, None)}))
            .await;
        assert_eq!(reply["ok"], true, "ident failed: {reply}");
        client
    }

    /// A long-poll session identified as `user`.
    pub async fn lp_client(&self, user: &str) -> LpClient {
        let mut lp = self.longpoll().await;
        let reply = lp
            .request(serde_json::json!({"op": "ident", "token": self.token(user, None)}))
            .await;
        assert_eq!(reply["ok"], true, "ident failed: {reply}");
        lp
    }

    /// POSTs JSON with the API key; returns status and body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .json(body)
            .send()
            .await
            .expect("post");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Publishes an envelope; panics unless Herald answers 200.
    pub async fn publish(&self, envelope: Value) -> Value {
        let (status, body) = self.post("/api/publish", &envelope).await;
        assert_eq!(status, 200, "publish refused: {body}");
        body
    }

    /// GETs with the API key; returns status and body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("get");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until `/readyz` answers `status` (200 once the connectors are up, 503 while
    /// one is down) and returns its body; panics with the last answer after 20 s.
    pub async fn wait_readyz(&self, status: u16) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let response = self
                .http
                .get(self.url("/readyz"))
                .send()
                .await
                .expect("readyz");
            let got = response.status().as_u16();
            let body = response.json().await.unwrap_or(Value::Null);
            if got == status {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "readyz stayed {got}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics");
        response.text().await.expect("metrics text")
    }

    /// Triggers shutdown and waits for `run` (or the process) to end cleanly.
    pub async fn stop(mut self) {
        if let Some(mut process) = self.process.take() {
            // SAFETY: kill(2) on the pid of a child this test started and still owns.
            assert_eq!(unsafe { libc::kill(process.pid(), libc::SIGTERM) }, 0);
            let status = tokio::time::timeout(WAIT, process.child.wait())
                .await
                .expect("exited in time")
                .expect("wait");
            assert!(status.success(), "herald exited with {status}");
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("stopped in time")
                .expect("join")
                .expect("run ok");
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Reads events on `client` into `seen` (the number `n_of` finds in each event's `data`)
/// until `count` reaches `want` or 20 s pass without an event.
pub async fn collect(
    client: &mut Client,
    seen: &std::sync::Mutex<Vec<u64>>,
    count: &std::sync::atomic::AtomicUsize,
    want: usize,
    n_of: impl Fn(&Value) -> Option<u64>,
) {
    use std::sync::atomic::Ordering;
    while count.load(Ordering::Relaxed) < want {
        match client.try_next(Duration::from_secs(20)).await {
            Some(frame) if frame["op"] == "event" => {
                let n = n_of(&frame["data"]).expect("a numbered event");
                seen.lock().unwrap().push(n);
                count.fetch_add(1, Ordering::Relaxed);
            }
            Some(_) => {}
            None => break,
        }
    }
}

/// Waits until `count` reaches `at_least`; panics after 60 s.
pub async fn wait_for(count: &std::sync::atomic::AtomicUsize, at_least: usize) {
    use std::sync::atomic::Ordering;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::Relaxed) < at_least {
        assert!(
            std::time::Instant::now() < deadline,
            "stuck at {}",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Lost, duplicated and out-of-order among `seen`, against `0..total`; printed with `what`.
pub fn tally(what: &str, total: usize, seen: &[u64], faults: &str) -> (usize, usize, usize) {
    let unique: std::collections::BTreeSet<u64> = seen.iter().copied().collect();
    let missing: Vec<u64> = (0..total as u64).filter(|n| !unique.contains(n)).collect();
    let lost = missing.len();
    if let (Some(first), Some(last)) = (missing.first(), missing.last()) {
        println!("{what}: missing {lost}, from {first} to {last}");
    }
    let duplicated = seen.len() - unique.len();
    let out_of_order = seen.windows(2).filter(|w| w[1] <= w[0]).count();
    println!(
        "{what}: sent {total}, received {}, lost {lost}, duplicated {duplicated}, out of order {out_of_order}; {faults}",
        seen.len()
    );
    (lost, duplicated, out_of_order)
}

/// Makes sure the cargo subcommand `tool` (from the crate `cargo-<tool>`) is installed,
/// installing it from crates.io the first time.
pub fn ensure_cargo_tool(tool: &str) {
    let installed = std::process::Command::new("cargo")
        .args([tool, "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        let package = format!("cargo-{tool}");
        let status = std::process::Command::new("cargo")
            .args(["install", &package, "--locked"])
            .status()
            .expect("cargo install");
        assert!(status.success(), "cargo install {package}: {status}");
    }
}
