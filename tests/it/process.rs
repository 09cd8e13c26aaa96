//! Tests that run the real `herald` binary: slow consumers and memory, and SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

use crate::support::process::HeraldProcess as Herald;
use crate::support::{Client, API_KEY, JWT_SECRET, WAIT};

/// Reads events on `channel` until `want` arrived or the connection ends; returns how many
/// came and whether their offsets ran 1, 2, 3 … without gap or repeat. Reads offsets out of
/// the raw text: parsing 100 × megabytes of JSON in a debug build would dominate the test.
async fn count_events(client: Client, channel: &str, want: u64) -> (u64, bool) {
    let marker = format!("\"via\":{{\"{channel}\":");
    let mut ws = client.into_stream();
    let (mut received, mut in_order, mut last) = (0u64, true, 0u64);
    while received < want {
        let Ok(Some(Ok(message))) = tokio::time::timeout(WAIT, ws.next()).await else {
            break;
        };
        let Message::Text(text) = message else {
            continue;
        };
        for line in text
            .split('\n')
            .filter(|l| l.starts_with("{\"op\":\"event\""))
        {
            let at = line
                .find(&marker)
                .map(|i| i + marker.len())
                .expect("via offset");
            let digits: String = line[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let offset: u64 = digits.parse().expect("offset");
            in_order &= offset == last + 1;
            last = offset;
            received += 1;
        }
    }
    (received, in_order)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_with_4102_while_others_get_everything() {
    const FAST: usize = 100;
    const EVENTS: u64 = 3000;
    const BATCH: u64 = 50;
    // The queue must hold one publish batch: a batch is queued to everyone at once.
    let herald = Herald::spawn(&["--client-queue", "256"], None).await;
    let rss_start = herald.rss_kib();
    let mut fast = Vec::new();
    for i in 0..FAST {
        fast.push(herald.client(&format!("fast{i}"), "flood").await);
    }
    // The slow client takes a small receive buffer, then never reads again.
    let mut slow = Client::connect_small_buffer(herald.addr.parse().unwrap()).await;
    let reply = slow
        .request(json!({"op": "ident", "token": herald.token("slow"), "channels": {"flood": {}}}))
        .await;
    assert_eq!(reply["ok"], true);

    let readers: Vec<_> = fast
        .into_iter()
        .map(|c| tokio::spawn(count_events(c, "flood", EVENTS)))
        .collect();
    // 3000 × 2 KiB = 6 MiB per client: more than the kernel buffers for the stalled socket.
    let payload = "x".repeat(2048);
    for batch in 0..EVENTS / BATCH {
        let envelopes: Vec<Value> = (0..BATCH)
            .map(|i| json!({"event": "flood", "channels": ["flood"], "data": {"n": batch * BATCH + i, "pad": payload}}))
            .collect();
        herald.publish(&Value::Array(envelopes)).await;
    }
    let mut complete = 0;
    for reader in readers {
        let (received, in_order) = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("fast readers finish")
            .unwrap();
        assert!(in_order, "a fast client saw a gap or repeat");
        complete += usize::from(received == EVENTS);
    }
    let rss_end = herald.rss_kib();

    let metrics = reqwest::get(format!("http://{}/metrics", herald.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Now read the slow client: whatever the kernel held for it, then the end. The 4102 frame
    // queues behind that backlog, and the server waits only a bounded time for a stalled
    // socket to take it, so a client that reads this late may find just the close.
    let (mut slow_events, mut disconnect) = (0u64, None);
    while let Some(frame) = slow.try_next(WAIT).await {
        match frame["op"].as_str() {
            Some("event") => slow_events += 1,
            Some("disconnect") => disconnect = Some(frame),
            _ => {}
        }
    }
    println!(
        "slow consumer: {FAST} fast clients got {complete}/{FAST} × {EVENTS} events in order; slow client got \
         {slow_events} events, then {}; herald RSS {rss_start} KiB → {rss_end} KiB",
        disconnect.as_ref().map_or("the close".to_owned(), ToString::to_string)
    );
    assert_eq!(complete, FAST, "every fast client got every event");
    assert!(
        metrics.contains("herald_slow_consumer_cuts_total 1"),
        "{metrics}"
    );
    assert!(
        slow_events < EVENTS,
        "the slow client was cut before it got everything"
    );
    if let Some(frame) = disconnect {
        assert_eq!(
            (frame["code"].clone(), frame["reconnect"].clone()),
            (json!(4102), json!(true))
        );
    }
    // Generous: queues are bounded at 256 frames × 101 connections (~50 MiB at worst).
    assert!(
        rss_end < rss_start + 128 * 1024,
        "RSS grew from {rss_start} KiB to {rss_end} KiB"
    );
}

#[tokio::test]
async fn sigterm_sends_4100_to_every_client_and_exits_0() {
    let mut herald = Herald::spawn(&["--reconnect-spread", "3s"], None).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(herald.client(&format!("u{i}"), "room").await);
    }
    let mut unidentified = Client::connect(&format!("ws://{}/ws", herald.addr)).await;
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    assert_eq!(unsafe { libc::kill(herald.pid(), libc::SIGTERM) }, 0);
    let mut delays = Vec::new();
    for client in clients.iter_mut().chain(std::iter::once(&mut unidentified)) {
        let (mut frame, code) = client.expect_disconnect().await;
        // Each client is told its own time to come back, within the spread.
        let delay = frame["reconnect_delay"]
            .as_u64()
            .expect("a reconnect delay");
        assert!(delay <= 3000, "{frame}");
        delays.push(delay);
        frame.as_object_mut().unwrap().remove("reconnect_delay");
        assert_eq!(
            frame,
            json!({"op": "disconnect", "code": 4100, "reason": "shutdown", "reconnect": true})
        );
        assert_eq!(code, 4100);
    }
    delays.sort_unstable();
    delays.dedup();
    assert!(delays.len() > 10, "spread, not one instant: {delays:?}");
    let status = tokio::time::timeout(WAIT, herald.child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    // Nothing listens any more.
    let url = format!("ws://{}/ws", herald.addr);
    assert!(tokio_tungstenite::connect_async(url)
        .await
        .map(
            |(mut ws, _)| async move { ws.next().await.map(|m| matches!(m, Ok(Message::Close(_)))) }
        )
        .is_err());
}

#[tokio::test]
async fn sigterm_answers_an_http_publish_still_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut herald = Herald::spawn(&["--shutdown-grace", "5s"], None).await;
    let body = r#"{"event":"e","channels":["c"]}"#;
    let mut stream = tokio::net::TcpStream::connect(&herald.addr).await.unwrap();
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {API_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        herald.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    assert_eq!(unsafe { libc::kill(herald.pid(), libc::SIGTERM) }, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    let status_line = response.lines().next().unwrap_or("");
    println!("in-flight publish at SIGTERM answered: {status_line:?}");
    assert!(
        status_line.starts_with("HTTP/1.1 200") || status_line.starts_with("HTTP/1.1 503"),
        "the request was dropped instead of answered: {response:?}"
    );
    let status = tokio::time::timeout(WAIT, herald.child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn an_invalid_config_exits_2_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    std::fs::write(&file, "auth_timeout = \"soon\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg(format!("--config={}", file.display()))
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("auth_timeout") && stderr.contains("soon"),
        "{stderr}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .env("HERALD_CLIENT_QUEUE", "0")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("client_queue: must be greater than zero")
    );
}

#[tokio::test]
async fn json_logs_on_request() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
            "--api-key",
            "k",
            "--jwt-secret",
            "s",
        ])
        .env("HERALD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("a log line");
    let parsed: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    assert_eq!(parsed["level"], "INFO");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn token_subcommand_mints_a_token_herald_accepts() {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "--jwt-secret",
            JWT_SECRET,
            "token",
            "--user",
            "zoe",
            "--channel",
            "chat:*",
            "--ttl",
            "1h",
        ])
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    let identity = herald::auth::Auth::new(JWT_SECRET)
        .verify(token.trim())
        .expect("valid token");
    assert_eq!(&*identity.user, "zoe");
    assert!(!identity.may_access(&herald_connector_api::ChannelName::parse("admin").unwrap()));
}

#[tokio::test]
async fn flags_win_over_environment_which_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    std::fs::write(&file, "jwt_secret = \"from-file\"\n").unwrap();
    // `herald token` loads the whole configuration, then signs with the winning secret.
    let token = |flag: Option<&str>, env: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .arg(format!("--config={}", file.display()))
            .env_remove("HERALD_JWT_SECRET");
        if let Some(secret) = flag {
            command.args(["--jwt-secret", secret]);
        }
        if let Some(secret) = env {
            command.env("HERALD_JWT_SECRET", secret);
        }
        command.args(["token", "--user", "p"]);
        async move {
            String::from_utf8(command.output().await.unwrap().stdout)
                .unwrap()
                .trim()
                .to_owned()
        }
    };
    let signed_with = |token: &str| {
        ["from-flag", "from-env", "from-file"]
            .into_iter()
            .find(|secret| herald::auth::Auth::new(secret).verify(token).is_ok())
    };
    assert_eq!(signed_with(&token(None, None).await), Some("from-file"));
    assert_eq!(
        signed_with(&token(None, Some("from-env")).await),
        Some("from-env")
    );
    assert_eq!(
        signed_with(&token(Some("from-flag"), Some("from-env")).await),
        Some("from-flag")
    );
}

#[tokio::test]
async fn sighup_does_not_end_the_process() {
    let herald = Herald::spawn(&[], None).await;
    // SAFETY: kill(2) on a child we spawned and still own.
    assert_eq!(unsafe { libc::kill(herald.pid(), libc::SIGHUP) }, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = reqwest::get(format!("http://{}/healthz", herald.addr)).await;
    assert!(
        health.is_ok_and(|r| r.status() == 200),
        "still serving after SIGHUP"
    );
}
