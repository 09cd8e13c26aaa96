//! Every bound holds, answers clearly where it is hit, and is counted: presence, channels,
//! envelope targets, idempotency keys, bodies, outbox bytes, history bytes, silent sockets.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use crate::support::{start, start_with, Client};

async fn ident(gw: &crate::support::Gateway, user: &str) -> (Client, Value) {
    let mut client = gw.connect().await;
    let reply = client
        .request(json!({"op": "ident", "token": gw.token(user, None)}))
        .await;
    (client, reply)
}

#[tokio::test]
async fn clients_may_not_list_everyone_and_presence_replies_are_bounded() {
    let gw = start(&["--max-presence-members", "3"]).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = gw.client(&format!("u{i}")).await;
        c.request(json!({"op": "join", "channel": "room"})).await;
        clients.push(c);
    }
    let asker = &mut clients[0];
    let refused = asker
        .request(json!({"op": "presence", "channel": "*"}))
        .await;
    assert_eq!(
        (refused["ok"].clone(), refused["code"].clone()),
        (json!(false), json!(4003))
    );
    let refused = asker
        .request(json!({"op": "join", "channel": "*", "presence": true}))
        .await;
    assert_eq!(refused["code"], 4003);
    let room = asker
        .request(json!({"op": "presence", "channel": "room"}))
        .await;
    assert_eq!(room["data"]["members"].as_array().unwrap().len(), 3);
    assert_eq!(room["data"]["total"], 5);
    assert!(gw
        .metrics()
        .await
        .contains(r#"herald_limit_hits_total{limit="max_presence_members"} 1"#));
    // The backend's API, with its key, still sees everyone.
    let (status, everyone) = gw.get("/api/channels/*/presence").await;
    assert_eq!(status, 200);
    assert_eq!(everyone["members"].as_array().unwrap().len(), 5);
    gw.stop().await;
}

#[tokio::test]
async fn identity_provider_user_ids_are_accepted_with_working_personal_channels() {
    let gw = start(&[]).await;
    for user in [
        "auth0|5f7c8ec7c33c6c004bbafe82",
        "google-oauth2|112233445566778899000",
        "alice@example.com",
        "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
    ] {
        let (mut client, reply) = ident(&gw, user).await;
        assert_eq!(reply["ok"], true, "{user}: {reply}");
        assert_eq!(reply["data"]["user"], user);
        let personal = format!("@{user}");
        assert!(reply["data"]["channels"][&personal].is_object(), "{reply}");
        let published = gw.publish(json!({"event": "dm", "users": [user]})).await;
        assert_eq!(published["offsets"][&personal], 1);
        let event = client.event().await;
        assert_eq!(event["via"][&personal], 1);
        // The backend addresses the personal channel by name too (URL-encoded).
        let encoded: String = personal
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, presence) = gw.get(&format!("/api/channels/{encoded}/presence")).await;
        assert_eq!(status, 200, "{presence}");
        assert_eq!(presence["members"][0]["user"], user);
    }
    let (_, reply) = ident(&gw, &"x".repeat(257)).await;
    assert_eq!(reply["code"], 4002, "past the stated length: {reply}");
    gw.stop().await;
}

#[tokio::test]
async fn a_batch_answers_every_item_in_order() {
    let gw = start(&[]).await;
    let mut alice = gw.client("alice").await;
    let (status, results) = gw
        .post(
            "/api/publish",
            &json!([
                {"event": "one", "users": ["alice"]},
                {"event": 5, "users": ["alice"]},
                {"event": "three", "channels": ["not ok"]},
                {"event": "four", "users": ["alice"]},
            ]),
        )
        .await;
    assert_eq!(status, 200, "{results}");
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["offsets"]["@alice"], 1);
    assert_eq!(results[1]["code"], 4000);
    assert!(results[1]["error"].as_str().unwrap().starts_with("event:"));
    assert!(results[2]["error"]
        .as_str()
        .unwrap()
        .starts_with("channels[0]:"));
    assert_eq!(results[3]["offsets"]["@alice"], 2);
    assert_eq!(alice.event().await["event"], "one");
    assert_eq!(alice.event().await["event"], "four");
    gw.stop().await;
}

#[tokio::test]
async fn envelope_targets_are_bounded_and_a_large_fan_out_is_linear() {
    let gw = start(&[
        "--max-envelope-targets",
        "100000",
        "--max-body-size",
        "4000000",
    ])
    .await;
    let mut last = gw.client("u99999").await;
    let users: Vec<String> = (0..100_000).map(|i| format!("u{i}")).collect();
    // Quadratic merging of targets took 6.6 s at 80,000; linear takes well under WAIT.
    let published = gw.publish(json!({"event": "all", "users": users})).await;
    assert_eq!(published["offsets"].as_object().unwrap().len(), 100_000);
    assert_eq!(last.event().await["via"]["@u99999"], 1);

    let (status, body) = gw
        .post(
            "/api/publish",
            &json!({"event": "too many", "users": users, "channels": ["one-more"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("users:"),
        "{body}"
    );
    assert!(gw
        .metrics()
        .await
        .contains(r#"herald_limit_hits_total{limit="max_envelope_targets"} 1"#));
    gw.stop().await;
}

#[tokio::test]
async fn the_default_target_bound_refuses_with_a_400_naming_the_field() {
    let gw = start(&["--max-body-size", "4000000"]).await;
    let channels: Vec<String> = (0..10_001).map(|i| format!("c{i}")).collect();
    let (status, body) = gw
        .post("/api/publish", &json!({"event": "e", "channels": channels}))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with("channels:"),
        "{body}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn channels_idempotency_keys_and_bodies_are_bounded() {
    let gw = start(&[
        "--max-channels",
        "4",
        "--dedup-max-keys",
        "2",
        "--max-body-size",
        "2000",
    ])
    .await;
    // `*` and `@a` are channels too: two left.
    let (mut a, reply) = ident(&gw, "a").await;
    assert_eq!(reply["ok"], true);
    assert_eq!(
        a.request(json!({"op": "join", "channel": "x"})).await["ok"],
        true
    );
    assert_eq!(
        a.request(json!({"op": "join", "channel": "y"})).await["ok"],
        true
    );
    let refused = a.request(json!({"op": "join", "channel": "z"})).await;
    assert_eq!(refused["code"], 4503, "{refused}");
    let (status, body) = gw
        .post("/api/publish", &json!({"event": "e", "channels": ["w"]}))
        .await;
    assert_eq!((status, body["code"].clone()), (503, json!(4503)), "{body}");
    // A read never creates a channel.
    let history = a
        .request(json!({"op": "history", "channel": "ghost"}))
        .await;
    assert_eq!(history["data"]["events"], json!([]), "{history}");

    for key in ["k1", "k2"] {
        gw.publish(json!({"event": "e", "channels": ["x"], "key": key}))
            .await;
    }
    let (status, body) = gw
        .post(
            "/api/publish",
            &json!({"event": "e", "channels": ["x"], "key": "k3"}),
        )
        .await;
    assert_eq!((status, body["code"].clone()), (503, json!(4503)), "{body}");
    let again = gw
        .publish(json!({"event": "e", "channels": ["x"], "key": "k1"}))
        .await;
    assert_eq!(again["offsets"]["x"], 1, "a known key is still answered");

    let big = json!({"event": "e", "channels": ["x"], "data": "x".repeat(3000)});
    let (status, body) = gw.post("/api/publish", &big).await;
    assert_eq!(status, 413);
    assert_eq!(body["code"], 4009);
    assert!(body["error"].as_str().unwrap().contains("max_body_size"));

    let metrics = gw.metrics().await;
    for limit in ["max_channels", "dedup_max_keys", "max_body_size"] {
        assert!(
            metrics.contains(&format!("herald_limit_hits_total{{limit=\"{limit}\"}}")),
            "{limit} not counted: {metrics}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn request_heads_are_bounded() {
    let gw = start(&[]).await;
    let http = reqwest::Client::new();
    let get = |cookie: String| http.get(gw.url("/healthz")).header("cookie", cookie).send();
    let status = get("a".repeat(6000)).await.unwrap().status();
    assert_eq!(status, 200, "a 6 KB cookie is an ordinary request");
    let status = get("a".repeat(herald::MAX_REQUEST_HEAD))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 431, "a head over MAX_REQUEST_HEAD is refused");
    let status = get(String::new()).await.unwrap().status();
    assert_eq!(status, 200, "the server keeps serving");
    gw.stop().await;
}

#[tokio::test]
async fn history_is_bounded_in_bytes() {
    let gw = start(&["--history-max-bytes", "4000"]).await;
    for i in 0..40 {
        gw.publish(
            json!({"event": "e", "channels": ["log"], "data": {"i": i, "pad": "p".repeat(300)}}),
        )
        .await;
    }
    let (_, page) = gw.get("/api/channels/log/history?limit=1000").await;
    let kept = page["events"].as_array().unwrap();
    assert!(kept.len() < 40 && kept.len() >= 5, "kept {}", kept.len());
    let newest = kept.last().unwrap();
    assert_eq!(newest["via"]["log"], 40, "the newest are kept");
    assert!(gw
        .metrics()
        .await
        .contains(r#"herald_limit_hits_total{limit="history_max_bytes"}"#));
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_by_the_byte_bound() {
    let gw = start(&["--client-queue-bytes", "65536"]).await;
    let mut slow = Client::connect_small_buffer(gw.addr).await;
    let reply = slow
        .request(json!({"op": "ident", "token": gw.token("slow", None), "channels": {"big": {}}}))
        .await;
    assert_eq!(reply["ok"], true);
    // Far fewer frames than client_queue (1024), but megabytes of them: more than the
    // socket buffers and the WebSocket writer can absorb.
    for _ in 0..80 {
        let batch: Vec<Value> = (0..10)
            .map(|_| json!({"event": "e", "channels": ["big"], "data": "d".repeat(16_000)}))
            .collect();
        gw.publish(Value::Array(batch)).await;
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"herald_limit_hits_total{limit="client_queue_bytes"} 1"#),
        "{metrics}"
    );
    // The client, reading again, finds the 4102 after what was already on the wire.
    loop {
        let frame = slow.next().await;
        if frame["op"] == "disconnect" {
            assert_eq!(frame["code"], 4102);
            break;
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn silent_connections_are_closed_at_the_header_timeout() {
    let gw = start(&["--header-timeout", "1s"]).await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    }
    let mut closed = 0;
    for mut stream in silent {
        let mut buf = [0u8; 16];
        // A closed socket reads 0 bytes (or an error); an open, silent one blocks.
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => closed += 1,
            Ok(Ok(n)) => panic!("a silent connection got {n} bytes"),
            Err(_) => {}
        }
    }
    println!("silent connections: 50 opened, {closed} closed by the server");
    assert_eq!(closed, 50);
    assert!(gw
        .metrics()
        .await
        .contains(r#"herald_limit_hits_total{limit="header_timeout"} 50"#));
    // Talking clients are unaffected.
    let mut client = gw.client("talker").await;
    assert_eq!(client.request(json!({"op": "ping"})).await["ok"], true);
    gw.stop().await;
}

#[tokio::test]
async fn the_config_file_takes_every_bound() {
    let file = "client_queue_bytes = 1000\nrecovery_max_events = 10\nrecovery_max_bytes = 1000\n\
                max_channels = 10\nmax_envelope_targets = 10\nmax_presence_members = 10\n\
                dedup_max_keys = 10\nmax_body_size = 1000\nheader_timeout = \"2s\"\n\
                history_max_bytes = 1000\n[[channels]]\npattern = \"a:*\"\nhistory_max_bytes = 500\n";
    let gw = start_with(&[], Some(file)).await;
    let (status, _) = gw
        .post(
            "/api/publish",
            &json!({"event": "e", "channels": ["c"], "data": "x".repeat(1500)}),
        )
        .await;
    assert_eq!(status, 413);
    gw.stop().await;
}

/// `n` pings with ids from `from`, as one message.
fn pings(from: u64, n: u64) -> String {
    (from..from + n)
        .map(|id| json!({"op": "ping", "id": id}).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn frames_and_publishes_are_rate_limited_and_a_flood_is_disconnected() {
    let config = "max_frames_per_second = 20\nmax_publishes_per_second = 5\n\
                  [[channels]]\npattern = \"chat:*\"\nclient_publish = true\n";
    let gw = start_with(&[], Some(config)).await;
    let (mut client, reply) = ident(&gw, "ann").await;
    assert_eq!(reply["ok"], true, "{reply}");
    // A burst of 30: the bucket held 19 (ident took one), the rest are refused, each by id.
    client.send_text(&pings(100, 30)).await;
    let mut refused = Vec::new();
    for _ in 0..30 {
        let frame = client.next().await;
        if frame["code"] == 4029 {
            refused.push(frame["id"].as_u64().unwrap());
        } else {
            assert_eq!(frame["ok"], true, "{frame}");
        }
    }
    assert_eq!(
        refused,
        (119..130).collect::<Vec<_>>(),
        "the last 11 are over the rate"
    );
    // A second later the bucket has refilled.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = client.request(json!({"op": "ping"})).await;
    assert_eq!(reply["ok"], true, "{reply}");

    // Publishes have their own, smaller rate.
    let publish = |n: u64| {
        (0..n)
            .map(|i| json!({"op": "publish", "id": 1000 + i, "channel": "chat:a", "event": "e", "data": i}).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    client.send_text(&publish(8)).await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        let frame = client.next().await;
        codes.push(frame["code"].as_u64().unwrap_or(0));
    }
    assert_eq!(codes, [0, 0, 0, 0, 0, 4029, 4029, 4029], "5 per second");

    // A flood past a second's worth of refusals ends the connection.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.send_text(&pings(2000, 100)).await;
    let (frame, close) = loop {
        let frame = client.next().await;
        if frame["op"] == "disconnect" {
            let _ = client.try_next(Duration::from_secs(2)).await;
            break (frame, client.expect_closed_code());
        }
    };
    assert_eq!(
        (frame["code"].as_u64(), close),
        (Some(4029), 4029),
        "{frame}"
    );
    assert_eq!(frame["reconnect"], true, "{frame}");
    let metrics = gw.metrics().await;
    for limit in ["max_frames_per_second", "max_publishes_per_second"] {
        assert!(
            metrics.contains(&format!("herald_limit_hits_total{{limit=\"{limit}\"}}")),
            "{limit} is counted"
        );
    }
    gw.stop().await;
}

/// A WebSocket upgrade, optionally as forwarded for `client`: the client, or the HTTP
/// status that refused it.
async fn upgrade(gw: &crate::support::Gateway, client: Option<&str>) -> Result<Client, u16> {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error};
    let mut request = format!("ws://{}/ws", gw.addr)
        .into_client_request()
        .unwrap();
    if let Some(client) = client {
        request
            .headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Client::from_stream(ws)),
        Err(Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("upgrade: {e}"),
    }
}

#[tokio::test]
async fn connections_per_address_are_capped_on_every_transport_and_given_back() {
    let gw = start(&["--max-connections-per-ip", "2"]).await;
    let first = upgrade(&gw, None).await.expect("first");
    let _second = upgrade(&gw, None).await.expect("second");
    assert_eq!(
        upgrade(&gw, None).await.err(),
        Some(503),
        "third from 127.0.0.1"
    );
    // Not trusted as a proxy: the header changes nothing.
    assert_eq!(upgrade(&gw, Some("198.51.100.1")).await.err(), Some(503));
    let (status, body) = gw.post("/lp/open", &json!({})).await;
    assert_eq!((status, body["code"].as_u64()), (503, Some(4029)), "{body}");
    let sse = gw
        .sse_response(&format!("channels=a&token={}", gw.token("ann", None)), None)
        .await;
    assert_eq!(sse.status(), 503);
    // A connection that goes gives its place back.
    first.close().await;
    let mut again = None;
    for _ in 0..50 {
        if let Ok(client) = upgrade(&gw, None).await {
            again = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the closed connection's place came back");
    assert!(gw
        .metrics()
        .await
        .contains(r#"herald_limit_hits_total{limit="max_connections_per_ip"}"#));
    gw.stop().await;

    // Behind a trusted proxy, the forwarded address is the client's.
    let gw = start(&[
        "--max-connections-per-ip",
        "1",
        "--trusted-proxy",
        "127.0.0.0/8",
    ])
    .await;
    let _a = upgrade(&gw, Some("198.51.100.1")).await.expect("a");
    assert_eq!(upgrade(&gw, Some("198.51.100.1")).await.err(), Some(503));
    let _b = upgrade(&gw, Some("198.51.100.2"))
        .await
        .expect("another client");
    // The nearest hop the proxy did not add itself counts, not what the client claims.
    let _c = upgrade(&gw, Some("6.6.6.6, 198.51.100.3"))
        .await
        .expect("c");
    assert_eq!(
        upgrade(&gw, Some("7.7.7.7, 198.51.100.3")).await.err(),
        Some(503)
    );
    gw.stop().await;
}

#[tokio::test]
async fn connections_per_user_are_capped_at_ident() {
    let gw = start(&["--max-connections-per-user", "2"]).await;
    let first = gw.client("auth0|61a7c0de").await;
    let _second = gw.client("auth0|61a7c0de").await;
    let (mut third, reply) = ident(&gw, "auth0|61a7c0de").await;
    assert_eq!(reply["code"], 4029, "{reply}");
    let reply = third.request(json!({"op": "join", "channel": "a"})).await;
    assert_eq!(reply["code"], 4001, "not identified: {reply}");
    let (_other, reply) = ident(&gw, "bob").await;
    assert_eq!(reply["ok"], true, "other users are not affected: {reply}");
    first.close().await;
    let mut identified = false;
    for _ in 0..50 {
        let reply = third
            .request(json!({"op": "ident", "token": gw.token("auth0|61a7c0de", None)}))
            .await;
        if reply["ok"] == true {
            identified = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(identified, "the closed connection's place came back");
    gw.stop().await;
}

#[tokio::test]
async fn right_after_a_start_new_connections_are_admitted_gradually() {
    // 3 connections in the first second, 6 in the next…: 60 upgrades at once cannot all get
    // in (even spread over three seconds, 45 could), and those refused are told to retry.
    let gw = start(&["--accept-ramp", "60s", "--accept-ramp-start", "3"]).await;
    let mut admitted = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        match upgrade(&gw, None).await {
            Ok(client) => admitted.push(client),
            Err(status) => {
                assert_eq!(status, 503);
                refused += 1;
            }
        }
    }
    println!(
        "accept ramp: {} admitted, {refused} refused of 60",
        admitted.len()
    );
    assert!(admitted.len() >= 3, "the first burst gets in");
    assert!(refused > 0, "not everyone at once");
    let (status, body) = gw.post("/lp/open", &json!({})).await;
    if status == 503 {
        assert_eq!(body["code"], 4503, "{body}");
    }
    assert!(gw
        .metrics()
        .await
        .contains(r#"herald_limit_hits_total{limit="accept_ramp"}"#));
    gw.stop().await;
}

/// A client that stops reading with little queued (below every queue bound) still blocks
/// the socket: the write that waits longer than `write_timeout` ends it.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_the_write_timeout_below_its_queue_bounds() {
    let gw = start(&[
        "--write-timeout",
        "1s",
        "--idle-timeout",
        "600s",
        "--client-queue-bytes",
        "200000000",
    ])
    .await;
    let mut deaf = Client::connect_small_buffer(gw.addr).await;
    let reply = deaf
        .request(json!({"op": "ident", "token": gw.token("deaf", None), "channels": {"room": {}}}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    // More than the kernel's buffers hold, far less than the queue's bounds.
    let started = std::time::Instant::now();
    for _ in 0..20 {
        gw.publish(json!({"event": "e", "channels": ["room"], "data": "x".repeat(500_000)}))
            .await;
    }
    let deadline = started + Duration::from_secs(15);
    loop {
        let (_, presence) = gw.get("/api/channels/room/presence").await;
        if presence["members"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still connected: {presence}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "never-reading client with 10 MB queued for it: cut {:?} after the first publish",
        started.elapsed()
    );
    drop(deaf);
}

/// A raw socket that takes little: its receive buffer is 4 KiB and nothing reads it.
async fn deaf_socket(addr: std::net::SocketAddr, request: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Whether the server closed `stream`: reads what it sent until the end, or gives up after
/// `within` (the connection is still open).
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut sink = vec![0u8; 1 << 16];
    let read_all = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_all).await.is_ok()
}

/// The same rule for SSE, whose writes hyper makes: a stream nobody reads is cut at
/// `write_timeout` and leaves its channels, though its queue is far below every bound.
#[tokio::test]
async fn an_sse_stream_nobody_reads_is_cut_at_the_write_timeout() {
    let gw = start(&["--write-timeout", "1s", "--client-queue-bytes", "200000000"]).await;
    let request = format!(
        "GET /sse?channels=room&token={} HTTP/1.1\r\nHost: x\r\n\r\n",
        gw.token("deaf", None)
    );
    let mut deaf = deaf_socket(gw.addr, &request).await;
    let members = |presence: &Value| presence["members"].as_array().map_or(0, Vec::len);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while members(&gw.get("/api/channels/room/presence").await.1) == 0 {
        assert!(std::time::Instant::now() < deadline, "never joined");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = std::time::Instant::now();
    for _ in 0..20 {
        gw.publish(json!({"event": "e", "channels": ["room"], "data": "x".repeat(500_000)}))
            .await;
    }
    while members(&gw.get("/api/channels/room/presence").await.1) > 0 {
        assert!(std::time::Instant::now() < deadline, "still connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "unread SSE stream with 10 MB queued for it: cut {:?} after the first publish",
        started.elapsed()
    );
    assert!(closed_by_server(&mut deaf, Duration::from_secs(10)).await);
    assert!(gw
        .metrics()
        .await
        .contains(r#"herald_limit_hits_total{limit="write_timeout"}"#));
    gw.stop().await;
}

/// A long-poll response the client does not take is cut at `write_timeout`; nothing in it
/// was acknowledged, so the next poll gets all of it.
#[tokio::test]
async fn a_long_poll_response_nobody_reads_is_cut_and_sent_again_by_the_next_poll() {
    let gw = start(&["--write-timeout", "1s", "--client-queue-bytes", "200000000"]).await;
    let lp = gw.lp_client("slow").await;
    let acked = lp.ack;
    for i in 0..20 {
        gw.publish(json!({"event": "e", "users": ["slow"], "data": format!("{i}:{}", "x".repeat(500_000))}))
            .await;
    }
    let request = format!(
        "GET /lp/poll?sid={}&ack={acked} HTTP/1.1\r\nHost: x\r\n\r\n",
        lp.sid
    );
    let mut deaf = deaf_socket(gw.addr, &request).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        closed_by_server(&mut deaf, Duration::from_secs(10)).await,
        "the response that waited on a full socket was cut"
    );
    // The un-acked buffer holds a few MB, so the 20 frames take a few polls.
    let mut data = Vec::new();
    let mut ack = acked;
    let mut polls = 0;
    while data.len() < 20 && polls < 10 {
        let (status, frames) = lp.poll_raw(ack).await;
        assert_eq!(status, 200, "{frames}");
        polls += 1;
        for item in frames.as_array().unwrap() {
            ack = item["seq"].as_u64().unwrap();
            let text = item["frame"]["data"].as_str().unwrap_or_default();
            data.push(text.split(':').next().unwrap_or_default().to_owned());
        }
    }
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    println!(
        "cut poll response: {polls} more polls got {} of 20 frames",
        data.len()
    );
    assert_eq!(data, expected, "every frame, in order, once");
    assert!(gw
        .metrics()
        .await
        .contains(r#"herald_limit_hits_total{limit="write_timeout"}"#));
    gw.stop().await;
}
