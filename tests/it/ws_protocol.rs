//! Every client op, reply and error code of the contract, over real WebSocket connections.

use std::time::Duration;

use serde_json::json;

use crate::support::{self, start, start_with};

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn ident_reply_names_user_conn_node_and_channels() {
    let gw = start(&["--node", "n1", "--default-channels", "lobby"]).await;
    let mut alice = gw.connect().await;
    let reply = alice
        .request(json!({"op": "ident", "token": gw.token("alice", None)}))
        .await;
    assert_eq!(reply["ok"], true);
    let data = &reply["data"];
    assert_eq!(data["user"], "alice");
    assert_eq!(data["node"], "n1");
    assert!(data["conn"].as_str().unwrap().starts_with("c_"));
    for channel in ["@alice", "*", "lobby"] {
        assert!(
            data["channels"][channel]["epoch"].is_string(),
            "{channel} missing in {data}"
        );
    }
    // The default channel really is joined.
    gw.publish(json!({"event": "hi", "channels": ["lobby"]}))
        .await;
    assert_eq!(alice.event().await["via"], json!({"lobby": 1}));
    gw.stop().await;
}

#[tokio::test]
async fn an_event_matching_user_and_channel_arrives_once_with_both_in_via() {
    let gw = start(&[]).await;
    let mut alice = gw.client("alice").await;
    assert_eq!(
        alice
            .request(json!({"op": "join", "channel": "chat"}))
            .await["ok"],
        true
    );
    let published = gw
        .publish(json!({"event": "MESSAGE:NEW", "channels": ["chat"], "users": ["alice"], "data": {"msg": "hi"}}))
        .await;
    assert_eq!(published["offsets"], json!({"chat": 1, "@alice": 1}));
    let event = alice.event().await;
    assert_eq!(event["event"], "MESSAGE:NEW");
    assert_eq!(event["data"], json!({"msg": "hi"}));
    assert_eq!(event["id"], published["id"]);
    assert_eq!(event["via"], json!({"chat": 1, "@alice": 1}));
    assert!(event["ts"].as_u64().is_some());
    alice.expect_nothing(QUIET).await;
    gw.stop().await;
}

#[tokio::test]
async fn except_is_honoured() {
    let gw = start(&[]).await;
    let mut a = gw.client("a").await;
    let mut b = gw.client("b").await;
    let a_conn = a.request(json!({"op": "join", "channel": "room"})).await;
    assert_eq!(a_conn["ok"], true);
    b.request(json!({"op": "join", "channel": "room"})).await;
    let a_id = gw.get("/api/channels/room/presence").await.1["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == "a")
        .unwrap()["conn"]
        .clone();
    gw.publish(json!({"event": "e", "channels": ["room"], "except": [a_id]}))
        .await;
    assert_eq!(b.event().await["event"], "e");
    a.expect_nothing(QUIET).await;
    gw.stop().await;
}

#[tokio::test]
async fn broadcast_reaches_every_identified_connection_only() {
    let gw = start(&[]).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(gw.client(&format!("u{i}")).await);
    }
    let mut stranger = gw.connect().await;
    gw.publish(json!({"event": "all", "broadcast": true})).await;
    for client in &mut clients {
        let event = client.event().await;
        assert_eq!(event["via"], json!({"*": 1}));
    }
    stranger.expect_nothing(QUIET).await;
    gw.stop().await;
}

#[tokio::test]
async fn every_connection_of_a_user_gets_personal_events() {
    let gw = start(&[]).await;
    let mut phone = gw.client("bob").await;
    let mut laptop = gw.client("bob").await;
    let mut other = gw.client("carol").await;
    gw.publish(json!({"event": "dm", "users": ["bob"]})).await;
    assert_eq!(phone.event().await["via"], json!({"@bob": 1}));
    assert_eq!(laptop.event().await["via"], json!({"@bob": 1}));
    other.expect_nothing(QUIET).await;
    gw.stop().await;
}

#[tokio::test]
async fn join_leave_presence_and_notices() {
    let rules = "[[channels]]\npattern = \"room:*\"\njoin_leave_notices = true\n";
    let gw = start_with(&[], Some(rules)).await;
    let mut a = gw.client("a").await;
    let mut b = gw.client("b").await;
    let joined = a
        .request(json!({"op": "join", "channel": "room:1", "presence": true}))
        .await;
    assert_eq!(joined["data"]["offset"], 0);
    assert_eq!(joined["data"]["members"].as_array().unwrap().len(), 1);
    assert!(
        joined["data"].get("recovered").is_none(),
        "no since, no recovered: {joined}"
    );
    b.request(json!({"op": "join", "channel": "room:1"})).await;
    let notice = a.next().await;
    assert_eq!(
        (
            notice["op"].as_str(),
            notice["channel"].as_str(),
            notice["user"].as_str()
        ),
        (Some("joined"), Some("room:1"), Some("b"))
    );
    let presence = a
        .request(json!({"op": "presence", "channel": "room:1"}))
        .await;
    let mut users: Vec<_> = presence["data"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].clone())
        .collect();
    users.sort_by_key(|u| u.to_string());
    assert_eq!(users, [json!("a"), json!("b")]);
    assert_eq!(
        b.request(json!({"op": "leave", "channel": "room:1"})).await["data"],
        json!({})
    );
    assert_eq!(a.next().await["op"], "left");
    gw.publish(json!({"event": "after", "channels": ["room:1"]}))
        .await;
    assert_eq!(a.event().await["event"], "after");
    b.expect_nothing(QUIET).await;
    // Leaving the personal or broadcast channel is not possible.
    assert_eq!(
        a.request(json!({"op": "leave", "channel": "*"})).await["code"],
        4003
    );
    gw.stop().await;
}

#[tokio::test]
async fn forbidden_joins_get_4003() {
    let gw = start(&[]).await;
    let mut limited = gw.connect().await;
    let token = gw.token("lim", Some(&["chat:*"]));
    assert_eq!(
        limited
            .request(json!({"op": "ident", "token": token}))
            .await["ok"],
        true
    );
    assert_eq!(
        limited
            .request(json!({"op": "join", "channel": "chat:1"}))
            .await["ok"],
        true
    );
    let refused = limited
        .request(json!({"op": "join", "channel": "admin"}))
        .await;
    assert_eq!(
        (refused["ok"].clone(), refused["code"].clone()),
        (json!(false), json!(4003))
    );
    let other = limited
        .request(json!({"op": "join", "channel": "@someone"}))
        .await;
    assert_eq!(other["code"], 4003);
    assert_eq!(
        limited
            .request(json!({"op": "join", "channel": "@lim"}))
            .await["ok"],
        true
    );
    assert_eq!(
        limited
            .request(json!({"op": "history", "channel": "admin"}))
            .await["code"],
        4003
    );
    assert_eq!(
        limited
            .request(json!({"op": "presence", "channel": "admin"}))
            .await["code"],
        4003
    );
    gw.stop().await;
}

#[tokio::test]
async fn client_publish_follows_channel_rules() {
    let rules = "[[channels]]\npattern = \"chat:*\"\nclient_publish = true\n";
    let gw = start_with(&[], Some(rules)).await;
    let mut a = gw.client("a").await;
    let mut b = gw.client("b").await;
    for c in [&mut a, &mut b] {
        c.request(json!({"op": "join", "channel": "chat:1"})).await;
        c.request(json!({"op": "join", "channel": "news"})).await;
    }
    let reply = a
        .request(json!({"op": "publish", "channel": "chat:1", "event": "say", "data": {"t": "yo"}}))
        .await;
    assert_eq!(reply["data"]["offset"], 1);
    let event = b.event().await;
    assert_eq!(event["from"]["user"], "a");
    assert_eq!(event["data"], json!({"t": "yo"}));
    assert_eq!(event["id"], reply["data"]["id"]);
    a.expect_nothing(QUIET).await;
    // echo includes the sender; client events land in history like backend events.
    a.request(
        json!({"op": "publish", "channel": "chat:1", "event": "say", "data": 2, "echo": true}),
    )
    .await;
    assert_eq!(a.event().await["via"], json!({"chat:1": 2}));
    assert_eq!(b.event().await["data"], 2);
    let history = a
        .request(json!({"op": "history", "channel": "chat:1"}))
        .await;
    assert_eq!(history["data"]["events"].as_array().unwrap().len(), 2);
    let refused = a
        .request(json!({"op": "publish", "channel": "news", "event": "x", "data": 1}))
        .await;
    assert_eq!(refused["code"], 4003);
    gw.stop().await;
}

#[tokio::test]
async fn history_op_pages_and_recovers() {
    let gw = start(&[]).await;
    let mut a = gw.client("a").await;
    for i in 0..5 {
        gw.publish(json!({"event": "n", "channels": ["feed"], "data": i}))
            .await;
    }
    let all = a.request(json!({"op": "history", "channel": "feed"})).await;
    let epoch = all["data"]["epoch"].clone();
    assert_eq!(all["data"]["offset"], 5);
    let data: Vec<_> = all["data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(data, [json!(0), json!(1), json!(2), json!(3), json!(4)]);
    let last_two = a
        .request(json!({"op": "history", "channel": "feed", "limit": 2}))
        .await;
    assert_eq!(last_two["data"]["events"][0]["via"], json!({"feed": 4}));
    let since = a
        .request(
            json!({"op": "history", "channel": "feed", "since": {"offset": 3, "epoch": epoch}}),
        )
        .await;
    assert_eq!(since["data"]["events"].as_array().unwrap().len(), 2);
    assert_eq!(since["data"]["recovered"], true);
    let bad_limit = a
        .request(json!({"op": "history", "channel": "feed", "limit": 0}))
        .await;
    assert_eq!(bad_limit["code"], 4000);
    gw.stop().await;
}

#[tokio::test]
async fn errors_keep_the_connection_usable() {
    let gw = start(&[]).await;
    let mut c = gw.connect().await;
    // Before ident: any other op is 4001.
    let early = c.request(json!({"op": "join", "channel": "x"})).await;
    assert_eq!(
        (early["ok"].clone(), early["code"].clone()),
        (json!(false), json!(4001))
    );
    assert_eq!(
        c.request(json!({"op": "ident", "token": gw.token("u", None)}))
            .await["ok"],
        true
    );
    // Not JSON: a reply without id, and the connection stays.
    c.send_text("{not json").await;
    let bad = c.next().await;
    assert_eq!(
        (bad["op"].clone(), bad["code"].clone()),
        (json!("reply"), json!(4000))
    );
    assert!(bad.get("id").is_none());
    // Wrong field types name the field.
    let typed = c.request(json!({"op": "join", "channel": 7})).await;
    assert_eq!(typed["code"], 4000);
    assert!(
        typed["error"].as_str().unwrap().contains("channel"),
        "{typed}"
    );
    let missing = c.request(json!({"op": "join"})).await;
    assert_eq!(missing["code"], 4000);
    let bad_name = c
        .request(json!({"op": "join", "channel": "no spaces"}))
        .await;
    assert_eq!(bad_name["code"], 4000);
    assert_eq!(c.request(json!({"op": "teleport"})).await["code"], 4004);
    let rpc = c
        .request(json!({"op": "rpc", "method": "getUser", "data": {}}))
        .await;
    assert_eq!(
        (rpc["code"].clone(), rpc["error"].clone()),
        (json!(4500), json!("no rpc backend configured"))
    );
    assert_eq!(
        c.request(json!({"op": "ident", "token": gw.token("u", None)}))
            .await["code"],
        4000
    );
    assert_eq!(c.request(json!({"op": "ping"})).await["data"], json!({}));
    // Frames without id get no success reply.
    c.send(json!({"op": "ping"})).await;
    c.expect_nothing(QUIET).await;
    gw.stop().await;
}

#[tokio::test]
async fn several_frames_in_one_message() {
    let gw = start(&[]).await;
    let mut c = gw.connect().await;
    let ident = json!({"op": "ident", "id": 1, "token": gw.token("u", None)});
    let join = json!({"op": "join", "id": 2, "channel": "multi"});
    c.send_text(&format!("{ident}\n{join}")).await;
    assert_eq!(c.reply_to(1).await["ok"], true);
    assert_eq!(c.reply_to(2).await["ok"], true);
    c.send_text(&json!([{"op": "ping", "id": 3}, {"op": "ping", "id": 4}]).to_string())
        .await;
    assert_eq!(c.reply_to(3).await["ok"], true);
    assert_eq!(c.reply_to(4).await["ok"], true);
    gw.stop().await;
}

#[tokio::test]
async fn bad_and_expired_tokens_get_4002_and_close() {
    let gw = start(&[]).await;
    let mut bad = gw.connect().await;
    bad.send(json!({"op": "ident", "id": 1, "token": "not-a-jwt"}))
        .await;
    // Every frame with an id is answered, the failed ident too, before the disconnect.
    let reply = bad.next().await;
    assert_eq!(
        (&reply["op"], &reply["id"], &reply["ok"], &reply["code"]),
        (&json!("reply"), &json!(1), &json!(false), &json!(4002)),
        "{reply}"
    );
    let (frame, code) = bad.expect_disconnect().await;
    assert_eq!(
        (frame["code"].clone(), frame["reconnect"].clone(), code),
        (json!(4002), json!(false), 4002)
    );

    let claims = json!({"sub": "late", "exp": 1_000_000_000u64});
    let key = jsonwebtoken::EncodingKey::from_secret(support::JWT_SECRET.as_bytes());
    let expired = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let mut late = gw.connect().await;
    late.send(json!({"op": "ident", "id": 1, "token": expired}))
        .await;
    assert_eq!(late.reply_to(1).await["code"], 4002);
    assert_eq!(late.expect_disconnect().await.1, 4002);

    let wrong_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "x"}),
        &jsonwebtoken::EncodingKey::from_secret(b"other"),
    )
    .unwrap();
    let mut forged = gw.connect().await;
    forged
        .send(json!({"op": "ident", "id": 1, "token": wrong_key}))
        .await;
    assert_eq!(forged.reply_to(1).await["code"], 4002);
    assert_eq!(forged.expect_disconnect().await.1, 4002);

    let mut anonymous = gw.connect().await;
    anonymous.send(json!({"op": "ident"})).await;
    let error = anonymous.next().await;
    assert_eq!(
        (&error["op"], &error["id"], &error["code"]),
        (&json!("reply"), &json!(null), &json!(4002)),
        "an error without id is still reported: {error}"
    );
    assert_eq!(
        anonymous.expect_disconnect().await.1,
        4002,
        "anonymous access is off by default"
    );
    gw.stop().await;
}

#[tokio::test]
async fn anonymous_ident_when_enabled() {
    let gw = start(&["--allow-anonymous"]).await;
    let mut anon = gw.connect().await;
    let reply = anon.request(json!({"op": "ident"})).await;
    assert_eq!(
        (reply["ok"].clone(), reply["data"]["user"].clone()),
        (json!(true), json!(""))
    );
    gw.publish(json!({"event": "all", "broadcast": true})).await;
    assert_eq!(anon.event().await["event"], "all");
    gw.stop().await;
}

#[tokio::test]
async fn no_ident_in_time_gets_4008_and_close() {
    let gw = start(&["--auth-timeout", "300ms"]).await;
    let mut idle = gw.connect().await;
    let (frame, code) = idle.expect_disconnect().await;
    assert_eq!(
        (frame["code"].clone(), frame["reconnect"].clone(), code),
        (json!(4008), json!(true), 4008)
    );
    // An identified connection is not affected.
    let mut fine = gw.client("ok").await;
    fine.expect_nothing(Duration::from_millis(600)).await;
    gw.stop().await;
}

#[tokio::test]
async fn oversized_frame_gets_4009_and_close() {
    let gw = start(&["--max-message-size", "1024"]).await;
    let mut c = gw.client("big").await;
    let huge = json!({"op": "ping", "pad": "x".repeat(4096)});
    c.send(huge).await;
    let (frame, code) = c.expect_disconnect().await;
    assert_eq!((frame["code"].clone(), code), (json!(4009), 4009));
    // Far past the limit the server stops reading mid-message; the 4009 frame still arrives.
    let mut huge = gw.client("huge").await;
    huge.send_text_lossy(&json!({"op": "ping", "pad": "x".repeat(2 << 20)}).to_string())
        .await;
    let frame = huge.next().await;
    assert_eq!(
        (frame["op"].clone(), frame["code"].clone()),
        (json!("disconnect"), json!(4009))
    );
    gw.stop().await;
}

#[tokio::test]
async fn backend_disconnect_and_unsubscribe() {
    let gw = start(&[]).await;
    let mut a = gw.client("kick").await;
    let mut b = gw.client("stay").await;
    b.request(json!({"op": "join", "channel": "room"})).await;
    let (status, body) = gw
        .post("/api/channels/room/unsubscribe", &json!({"user": "stay"}))
        .await;
    assert_eq!((status, body), (200, json!({"removed": 1})));
    assert_eq!(
        b.next().await,
        json!({"op": "unsubscribed", "channel": "room"})
    );
    gw.publish(json!({"event": "gone", "channels": ["room"]}))
        .await;
    b.expect_nothing(QUIET).await;

    let (status, body) = gw
        .post(
            "/api/disconnect",
            &json!({"user": "kick", "reason": "banned", "reconnect": false}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"disconnected": 1})));
    let (frame, code) = a.expect_disconnect().await;
    assert_eq!(
        frame,
        json!({"op": "disconnect", "code": 4101, "reason": "banned", "reconnect": false})
    );
    assert_eq!(code, 4101);
    gw.stop().await;
}

#[tokio::test]
async fn silent_connections_are_closed_after_idle_timeout() {
    let gw = start(&["--ping-interval", "100ms", "--idle-timeout", "400ms"]).await;
    let mut lively = gw.client("lively").await;
    let mut silent = gw.client("silent").await;
    // Reading answers the server's pings (tungstenite replies with pongs), so this one stays;
    // the other is not read meanwhile, so it sends no pongs and the server gives up on it.
    lively.expect_nothing(Duration::from_millis(1500)).await;
    assert!(
        silent.try_next(Duration::from_secs(2)).await.is_none(),
        "silent connection closed without frames"
    );
    assert_eq!(lively.request(json!({"op": "ping"})).await["ok"], true);
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_on_a_quiet_channel_is_closed_after_idle_timeout() {
    // The queue is large enough that no 4102 comes: only the idle timeout can end this one.
    let gw = start(&[
        "--client-queue",
        "100000",
        "--ping-interval",
        "200ms",
        "--idle-timeout",
        "1s",
    ])
    .await;
    let mut stalled = support::Client::connect_small_buffer(gw.addr).await;
    let reply = stalled
        .request(
            json!({"op": "ident", "token": gw.token("stall", None), "channels": {"quiet": {}}}),
        )
        .await;
    assert_eq!(reply["ok"], true);
    let pad = "x".repeat(2048);
    for _ in 0..20 {
        let batch: Vec<_> = (0..100)
            .map(|_| json!({"event": "e", "channels": ["quiet"], "data": pad}))
            .collect();
        gw.publish(serde_json::Value::Array(batch)).await;
    }
    // The server's writes to it are now blocked, and the channel goes quiet.
    let mut connections = json!(1);
    for _ in 0..100 {
        connections = gw.get("/api/info").await.1["connections"].clone();
        if connections == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(connections, 0, "the stalled connection was closed");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("herald_slow_consumer_cuts_total 0"),
        "closed as idle, not cut: {metrics}"
    );
    gw.stop().await;
}
