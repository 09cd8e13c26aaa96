//! Server-sent events: named messages with position ids, exact recovery through
//! `Last-Event-ID`, refusals before the stream, heartbeats; and one channel recovered across
//! WebSocket, long-poll and SSE with no gap and no duplicate.

use serde_json::json;

use crate::support::raw_http::RawHttp;
use crate::support::{start, start_with, Gateway};

async fn publish_n(gw: &Gateway, channel: &str, from: u64, to: u64) {
    for i in from..=to {
        gw.publish(json!({"event": "tick", "channels": [channel], "data": {"i": i}}))
            .await;
    }
}

#[tokio::test]
async fn events_are_named_messages_whose_id_is_every_position() {
    let gw = start(&[]).await;
    let mut sse = gw.sse("reader", "news,sport", None).await;
    let ident = sse.expect("ident").await;
    let data = ident.json();
    assert_eq!(data["user"], "reader");
    let epoch = data["channels"]["news"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = ident.id.unwrap();
    assert!(id.contains(&format!("news=0~{epoch}")), "{id}");
    assert!(
        id.contains("sport=0~") && id.contains("@reader=0~") && id.contains("*=0~"),
        "{id}"
    );

    gw.publish(json!({"event": "MESSAGE:NEW", "channels": ["news"], "data": {"msg": "hi"}}))
        .await;
    let message = sse.expect("MESSAGE:NEW").await;
    let frame = message.json();
    assert_eq!(
        (frame["op"].clone(), frame["data"].clone()),
        (json!("event"), json!({"msg": "hi"}))
    );
    assert_eq!(frame["via"], json!({"news": 1}));
    assert!(message.id.unwrap().contains(&format!("news=1~{epoch}")));
    // One event through two channels: once, with both positions.
    gw.publish(json!({"event": "both", "channels": ["news", "sport"], "users": ["reader"]}))
        .await;
    let both = sse.expect("both").await;
    assert_eq!(
        both.json()["via"],
        json!({"news": 2, "sport": 1, "@reader": 1})
    );
    let id = both.id.unwrap();
    assert!(
        id.contains("news=2~") && id.contains("sport=1~") && id.contains("@reader=1~"),
        "{id}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn last_event_id_recovers_exactly_what_was_missed() {
    let gw = start(&[]).await;
    let mut sse = gw.sse("r", "news", None).await;
    sse.expect("ident").await;
    publish_n(&gw, "news", 1, 2).await;
    sse.expect("tick").await;
    let last = sse.expect("tick").await.id.unwrap();
    drop(sse);
    publish_n(&gw, "news", 3, 5).await;

    // What a browser's EventSource sends when it reconnects.
    let mut back = gw.sse("r", "news", Some(&last)).await;
    let ident = back.expect("ident").await.json();
    assert_eq!(ident["channels"]["news"]["recovered"], true);
    for i in 3..=5 {
        assert_eq!(back.expect("tick").await.json()["data"]["i"], i);
    }
    publish_n(&gw, "news", 6, 6).await;
    assert_eq!(
        back.expect("tick").await.json()["via"]["news"],
        6,
        "then live"
    );

    // History no longer has it (another epoch): told so, delivery continues from now.
    let mut stale = gw.sse("r", "news", Some("news=3~OtherEpoch")).await;
    let ident = stale.expect("ident").await.json();
    assert_eq!(ident["channels"]["news"]["recovered"], false);
    publish_n(&gw, "news", 7, 7).await;
    assert_eq!(stale.expect("tick").await.json()["via"]["news"], 7);
    gw.stop().await;
}

#[tokio::test]
async fn refusals_come_as_plain_http_before_the_stream() {
    let gw = start(&[]).await;
    let status_and_code = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        (
            status,
            r.json::<serde_json::Value>().await.unwrap()["code"].clone(),
        )
    };
    let r = gw.sse_response("channels=news", None).await;
    assert_eq!(status_and_code(r).await, (401, json!(4002)), "no token");
    let r = gw.sse_response("channels=news&token=forged", None).await;
    assert_eq!(status_and_code(r).await, (401, json!(4002)), "bad token");
    let limited = gw.token("u", Some(&["news*"]));
    let r = gw
        .sse_response(&format!("channels=secret&token={limited}"), None)
        .await;
    assert_eq!(
        status_and_code(r).await,
        (403, json!(4003)),
        "forbidden channel"
    );
    let r = gw
        .sse_response(&format!("channels=not%20ok&token={limited}"), None)
        .await;
    assert_eq!(
        status_and_code(r).await,
        (400, json!(4000)),
        "bad channel name"
    );
    let r = gw
        .sse_response(&format!("channels=news&token={limited}"), Some("garbage"))
        .await;
    assert_eq!(
        status_and_code(r).await,
        (400, json!(4000)),
        "garbage Last-Event-ID"
    );
    // The Authorization header works as well as the query.
    let r = reqwest::Client::new()
        .get(gw.url("/sse?channels=news"))
        .bearer_auth(&limited)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    // Nothing refused stayed connected.
    let (_, info) = gw.get("/api/info").await;
    assert_eq!(info["connections"], 1);
    gw.stop().await;
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_open_and_cors_allows_listed_origins() {
    let config = "[sse]\nheartbeat = \"200ms\"\n";
    let gw = start_with(&["--cors-origin", "https://app.example"], Some(config)).await;
    let token = gw.token("u", None);
    let response = reqwest::Client::new()
        .get(gw.url(&format!("/sse?channels=news&token={token}")))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let mut sse = crate::support::SseClient::new(response);
    sse.expect("ident").await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    gw.publish(json!({"event": "late", "channels": ["news"]}))
        .await;
    sse.expect("late").await;
    assert!(sse.comments >= 2, "heartbeat comments: {}", sse.comments);
    let foreign = reqwest::Client::new()
        .get(gw.url(&format!("/sse?channels=news&token={token}")))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    gw.stop().await;
}

#[tokio::test]
async fn a_server_disconnect_ends_the_stream_with_a_disconnect_message() {
    let gw = start(&[]).await;
    let mut sse = gw.sse("kicked", "news", None).await;
    sse.expect("ident").await;
    gw.post(
        "/api/disconnect",
        &json!({"user": "kicked", "reason": "bye"}),
    )
    .await;
    let bye = sse.expect("disconnect").await.json();
    assert_eq!(
        (bye["code"].clone(), bye["reason"].clone()),
        (json!(4101), json!("bye"))
    );
    assert!(sse.next().await.is_none(), "the stream ends");
    gw.stop().await;
}

#[tokio::test]
async fn one_channel_recovers_across_websocket_long_poll_and_sse_without_gap_or_duplicate() {
    let gw = start(&[]).await;
    let mut seen: Vec<u64> = Vec::new();

    // WebSocket: events 1–3.
    let mut ws = gw.client("nomad").await;
    let joined = ws.request(json!({"op": "join", "channel": "trip"})).await;
    let epoch = joined["data"]["epoch"].as_str().unwrap().to_owned();
    publish_n(&gw, "trip", 1, 3).await;
    for _ in 0..3 {
        seen.push(ws.event().await["via"]["trip"].as_u64().unwrap());
    }
    ws.close().await;

    // Long-poll, resuming after 3: events 4–6 missed, 7 live.
    publish_n(&gw, "trip", 4, 6).await;
    let mut lp = gw.longpoll().await;
    let ident = lp
        .request(json!({"op": "ident", "token": gw.token("nomad", None),
                        "channels": {"trip": {"offset": 3, "epoch": epoch}}}))
        .await;
    assert_eq!(ident["data"]["channels"]["trip"]["recovered"], true);
    publish_n(&gw, "trip", 7, 7).await;
    for _ in 0..4 {
        seen.push(lp.next().await["via"]["trip"].as_u64().unwrap());
    }
    lp.close().await;

    // SSE, resuming after 7 with the id format a browser would send: 8–9 missed, 10 live.
    publish_n(&gw, "trip", 8, 9).await;
    let mut sse = gw
        .sse("nomad", "trip", Some(&format!("trip=7~{epoch}")))
        .await;
    assert_eq!(
        sse.expect("ident").await.json()["channels"]["trip"]["recovered"],
        true
    );
    publish_n(&gw, "trip", 10, 10).await;
    let mut last_id = String::new();
    for _ in 0..3 {
        let message = sse.expect("tick").await;
        seen.push(message.json()["via"]["trip"].as_u64().unwrap());
        last_id = message.id.unwrap();
    }
    drop(sse);

    // And back to WebSocket with the position SSE reported.
    publish_n(&gw, "trip", 11, 12).await;
    let position = last_id
        .split(',')
        .find_map(|p| p.strip_prefix("trip="))
        .unwrap();
    let (offset, epoch) = position.split_once('~').unwrap();
    let mut ws = gw.connect().await;
    let reply = ws
        .request(json!({"op": "ident", "token": gw.token("nomad", None),
                        "channels": {"trip": {"offset": offset.parse::<u64>().unwrap(), "epoch": epoch}}}))
        .await;
    assert_eq!(reply["data"]["channels"]["trip"]["recovered"], true);
    for _ in 0..2 {
        seen.push(ws.event().await["via"]["trip"].as_u64().unwrap());
    }
    println!("ws → long-poll → sse → ws: received {seen:?}");
    assert_eq!(seen, (1..=12).collect::<Vec<u64>>(), "no gap, no duplicate");
    gw.stop().await;
}

async fn presence(gw: &Gateway) -> usize {
    let (_, body) = gw.get("/api/channels/framed/presence").await;
    body["members"].as_array().map_or(0, Vec::len)
}

/// Streams are written outside hyper once the head is out (an idle stream then holds none of
/// its buffers): the body must still be what hyper would write, chunked for HTTP/1.1 and
/// until the close for HTTP/1.0, and a client that hangs up must still leave at once.
#[tokio::test]
async fn streams_are_framed_per_http_version_and_a_client_that_hangs_up_leaves() {
    let gw = start(&[]).await;
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let mut raw = RawHttp::connect(gw.addr).await;
        let token = gw.token("framer", None);
        raw.send(&format!(
            "GET /sse?channels=framed&token={token} {version}\r\nHost: herald\r\n\r\n"
        ))
        .await;
        let head = raw.head().await;
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        let chunked = version == "HTTP/1.1";
        assert_eq!(
            head.contains("transfer-encoding: chunked"),
            chunked,
            "{head}"
        );
        gw.publish(json!({"event": "tick", "channels": ["framed"], "data": {"v": version}}))
            .await;
        let mut body = String::new();
        while !body.contains("event: tick") {
            body += &if chunked {
                raw.chunk().await
            } else {
                raw.until("\n\n").await
            };
        }
        assert!(body.starts_with("event: ident\nid: "), "{body}");
        assert!(body.contains(&format!("{{\"v\":\"{version}\"}}")), "{body}");
        assert_eq!(presence(&gw).await, 1, "{version}: the stream is a member");
        drop(raw);
        // Nothing is written to an idle stream for `heartbeat` (15 s): only reading the
        // socket notices the hang-up this soon.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while presence(&gw).await > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{version}: still a member"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    gw.stop().await;
}
