//! Backend auth hooks against a small HTTP backend started by the test: an ident hook that
//! allows, denies, expires, is cached, times out or is down (every failure denies), JWT first,
//! and a join hook guarding channel patterns, over WebSocket, long-poll and SSE.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::support::{start_with, Client, Gateway};

/// A user id as an identity provider issues it.
const ALICE: &str = "auth0|5f1c2a9b8e7d6c5b4a392817";

/// How often each token and each (user, channel) was asked about.
#[derive(Default)]
struct Calls {
    idents: std::sync::Mutex<Vec<String>>,
    joins: std::sync::Mutex<Vec<String>>,
    in_flight: AtomicUsize,
}

impl Calls {
    fn idents_of(&self, token: &str) -> usize {
        self.idents
            .lock()
            .unwrap()
            .iter()
            .filter(|t| *t == token)
            .count()
    }
    fn joins_of(&self, channel: &str) -> usize {
        self.joins
            .lock()
            .unwrap()
            .iter()
            .filter(|c| *c == channel)
            .count()
    }
}

fn unix_in(seconds: i64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    now.saturating_add_signed(seconds)
}

async fn ident(State(calls): State<Arc<Calls>>, Json(body): Json<Value>) -> Response {
    let token = body["token"].as_str().unwrap_or_default().to_owned();
    calls.idents.lock().unwrap().push(token.clone());
    calls.in_flight.fetch_add(1, Ordering::SeqCst);
    let answer = match token.as_str() {
        "tok-alice" => {
            Json(json!({"user": ALICE, "channels": ["chat:*", "vip:*"]})).into_response()
        }
        "tok-bob" => Json(json!({"user": "bob"})).into_response(),
        "tok-carol-2s" => Json(json!({"user": "carol", "expires_at": unix_in(2)})).into_response(),
        "tok-expired" => Json(json!({"user": "carol", "expires_at": unix_in(-10)})).into_response(),
        "tok-revoked" => (StatusCode::FORBIDDEN, Json(json!({"error": "revoked"}))).into_response(),
        "tok-slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(json!({"user": "slow"})).into_response()
        }
        "tok-500" => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        "tok-no-user" => Json(json!({"channels": ["x"]})).into_response(),
        _ => StatusCode::UNAUTHORIZED.into_response(),
    };
    calls.in_flight.fetch_sub(1, Ordering::SeqCst);
    answer
}

async fn join(State(calls): State<Arc<Calls>>, Json(body): Json<Value>) -> Response {
    let (user, channel) = (
        body["user"].as_str().unwrap_or_default(),
        body["channel"].as_str().unwrap_or_default(),
    );
    calls.joins.lock().unwrap().push(channel.to_owned());
    match channel {
        "vip:boom" => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        "vip:slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(json!({"allow": true})).into_response()
        }
        "vip:empty" => Json(json!({})).into_response(),
        _ if user == ALICE => Json(json!({"allow": true})).into_response(),
        _ => Json(json!({"allow": false, "reason": "not a member"})).into_response(),
    }
}

/// The backend, and the `[auth_hooks]` section pointing at it.
async fn backend() -> (Arc<Calls>, String) {
    use axum::routing::post;
    let calls = Arc::new(Calls::default());
    let app = axum::Router::new()
        .route("/ident", post(ident))
        .route("/join", post(join))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let section = format!(
        "[auth_hooks]\nident_url = \"http://{addr}/ident\"\njoin_url = \"http://{addr}/join\"\n\
         join_channels = [\"vip:*\"]\ncache_ttl = \"30s\"\ntimeout = \"500ms\"\n"
    );
    (calls, section)
}

async fn ident_with(gw: &Gateway, token: &str) -> (Client, Value) {
    let mut client = gw.connect().await;
    let reply = client.request(json!({"op": "ident", "token": token})).await;
    (client, reply)
}

async fn refused_with_4002(gw: &Gateway, token: &str) -> String {
    let (mut client, reply) = ident_with(gw, token).await;
    assert_eq!(reply["code"], 4002, "{token}: {reply}");
    client.expect_ended(4002, false).await;
    reply["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_ident_hook_allows_denies_expires_and_is_cached() {
    let (calls, section) = backend().await;
    let gw = start_with(&[], Some(&section)).await;

    // Frames sent right behind the ident wait for the hook's answer, then run in order.
    let mut alice = gw.connect().await;
    alice
        .send_text(
            &[
                json!({"op": "ident", "id": 1, "token": "tok-alice"}),
                json!({"op": "join", "id": 2, "channel": "chat:lobby"}),
                json!({"op": "join", "id": 3, "channel": "admin"}),
                json!({"op": "publish", "id": 4, "channel": "chat:lobby", "event": "e", "data": {}}),
            ]
            .map(|f| f.to_string())
            .join("\n"),
        )
        .await;
    let ident = alice.next().await;
    assert_eq!(
        (ident["id"].as_u64(), &ident["ok"]),
        (Some(1), &json!(true)),
        "{ident}"
    );
    assert_eq!(ident["data"]["user"], ALICE);
    assert!(
        ident["data"]["channels"][format!("@{ALICE}")].is_object(),
        "{ident}"
    );
    let join = alice.next().await;
    assert_eq!(
        (join["id"].as_u64(), &join["ok"]),
        (Some(2), &json!(true)),
        "{join}"
    );
    let admin = alice.next().await;
    assert_eq!(
        (admin["id"].as_u64(), admin["code"].as_u64()),
        (Some(3), Some(4003)),
        "the hook's channel patterns apply: {admin}"
    );
    let publish = alice.next().await;
    assert_eq!(publish["id"], 4, "{publish}");

    // The API reaches the user the hook named.
    let published = gw
        .publish(json!({"event": "hi", "users": [ALICE], "data": {"n": 1}}))
        .await;
    assert!(published["id"].is_string(), "{published}");
    let event = alice.event().await;
    assert_eq!(event["via"][format!("@{ALICE}")], 1, "{event}");

    // Cached: a second connection with the same token does not ask again.
    let (_again, reply) = ident_with(&gw, "tok-alice").await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(calls.idents_of("tok-alice"), 1, "the answer was cached");

    // JWT first: a valid token never reaches the hook.
    let jwt = gw.token("dave", None);
    let (_dave, reply) = ident_with(&gw, &jwt).await;
    assert_eq!(reply["data"]["user"], "dave", "{reply}");
    assert_eq!(calls.idents_of(&jwt), 0);

    // Refusals: each is 4002, and the connection ends.
    assert!(refused_with_4002(&gw, "tok-revoked")
        .await
        .contains("revoked"));
    assert!(refused_with_4002(&gw, "tok-unknown").await.contains("401"));
    assert!(refused_with_4002(&gw, "tok-expired")
        .await
        .contains("expired"));
    assert!(refused_with_4002(&gw, "tok-no-user")
        .await
        .contains("unavailable"));
    // A denial is cached too: asked once for two attempts.
    refused_with_4002(&gw, "tok-revoked").await;
    assert_eq!(calls.idents_of("tok-revoked"), 1);

    // An identity with an expiry ends the connection then, with 4002.
    let (mut carol, reply) = ident_with(&gw, "tok-carol-2s").await;
    assert_eq!(reply["ok"], true, "{reply}");
    let frame = carol.expect_ended(4002, false).await;
    assert!(
        frame["reason"].as_str().unwrap().contains("expired"),
        "{frame}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_slow_erroring_or_unreachable_auth_backend_denies() {
    let (calls, section) = backend().await;
    let gw = start_with(&[], Some(&section)).await;
    assert!(refused_with_4002(&gw, "tok-500").await.contains("500"));
    // Not cached: the backend's trouble is not the client's verdict.
    refused_with_4002(&gw, "tok-500").await;
    assert_eq!(calls.idents_of("tok-500"), 2);

    // Slow: denied at the timeout. Frames pile up behind it only up to their bound.
    let mut slow = gw.connect().await;
    slow.send(json!({"op": "ident", "id": 1, "token": "tok-slow"}))
        .await;
    let pings = |from: u64| {
        (from..from + 150)
            .map(|id| json!({"op": "ping", "id": id}).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    slow.send_text(&pings(100)).await;
    slow.send_text(&pings(250)).await;
    let mut over_bound = 0;
    let ident = loop {
        let frame = slow.next().await;
        if frame["code"] == 4029 {
            over_bound += 1;
            continue;
        }
        break frame;
    };
    assert_eq!(
        over_bound,
        300 - 256,
        "frames past the bound of 256 are refused"
    );
    assert_eq!(
        (ident["id"].as_u64(), ident["code"].as_u64()),
        (Some(1), Some(4002)),
        "{ident}"
    );
    assert!(
        ident["error"].as_str().unwrap().contains("timed out"),
        "{ident}"
    );
    let (frame, _) = slow.expect_disconnect().await;
    assert_eq!(
        frame["code"], 4002,
        "held frames are dropped with the connection: {frame}"
    );
    gw.stop().await;

    // Unreachable: a bound socket that does not listen refuses connections.
    let refusing = tokio::net::TcpSocket::new_v4().unwrap();
    refusing.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = refusing.local_addr().unwrap();
    let section = format!("[auth_hooks]\nident_url = \"http://{closed}/ident\"\n");
    let gw = start_with(&[], Some(&section)).await;
    assert!(refused_with_4002(&gw, "tok-alice")
        .await
        .contains("unavailable"));
    // JWTs still work while the hook is down.
    let (_c, reply) = ident_with(&gw, &gw.token("dave", None)).await;
    assert_eq!(reply["ok"], true, "{reply}");
    gw.stop().await;
}

#[tokio::test]
async fn the_join_hook_guards_its_channels_on_every_transport() {
    let (calls, section) = backend().await;
    let gw = start_with(&[], Some(&section)).await;
    let (mut alice, _) = ident_with(&gw, "tok-alice").await;
    let (mut bob, _) = ident_with(&gw, "tok-bob").await;

    let reply = alice
        .request(json!({"op": "join", "channel": "vip:lounge"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let reply = bob
        .request(json!({"op": "join", "channel": "vip:lounge"}))
        .await;
    assert_eq!(reply["code"], 4003, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("not a member"),
        "{reply}"
    );
    // Not a member: the guarded channel's presence, history and publish are closed to bob.
    for op in [
        json!({"op": "presence", "channel": "vip:lounge"}),
        json!({"op": "history", "channel": "vip:lounge"}),
        json!({"op": "publish", "channel": "vip:lounge", "event": "e", "data": 1}),
    ] {
        let reply = bob.request(op.clone()).await;
        assert_eq!(reply["code"], 4003, "{op}: {reply}");
    }
    let reply = alice
        .request(json!({"op": "presence", "channel": "vip:lounge"}))
        .await;
    assert_eq!(reply["data"]["members"][0]["user"], ALICE, "{reply}");
    // Unguarded channels are never asked about.
    let reply = bob
        .request(json!({"op": "join", "channel": "chat:x"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(calls.joins_of("chat:x"), 0);
    // An erroring, slow or vague backend denies.
    for channel in ["vip:boom", "vip:slow", "vip:empty"] {
        let reply = alice
            .request(json!({"op": "join", "channel": channel}))
            .await;
        assert_eq!(reply["code"], 4003, "{channel}: {reply}");
    }
    // Cached per user and channel.
    let (mut alice2, _) = ident_with(&gw, "tok-alice").await;
    let reply = alice2
        .request(json!({"op": "join", "channel": "vip:lounge"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(calls.joins_of("vip:lounge"), 2, "alice once, bob once");

    // Inside ident, a guarded channel the hook refuses fails the ident with 4003.
    let mut carl = gw.connect().await;
    let reply = carl
        .request(json!({"op": "ident", "token": "tok-bob", "channels": {"vip:lounge": {}}}))
        .await;
    assert_eq!(reply["code"], 4003, "{reply}");
    let reply = carl
        .request(json!({"op": "join", "channel": "chat:x"}))
        .await;
    assert_eq!(reply["code"], 4001, "still not identified: {reply}");

    // Long-poll: the same hooks through the same session.
    let mut lp = gw.longpoll().await;
    let reply = lp
        .request(json!({"op": "ident", "token": "tok-alice", "channels": {"vip:lounge": {}}}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["data"]["user"], ALICE, "{reply}");

    // SSE answers before its stream: 401 for a refused token, 403 for a refused channel.
    let status = |query: String| {
        let gw = &gw;
        async move { gw.sse_response(&query, None).await.status().as_u16() }
    };
    assert_eq!(
        status("channels=vip:lounge&token=tok-revoked".into()).await,
        401
    );
    assert_eq!(
        status("channels=vip:lounge&token=tok-bob".into()).await,
        403
    );
    let response = gw
        .sse_response("channels=vip:lounge&token=tok-alice", None)
        .await;
    assert_eq!(response.status(), 200);
    let mut stream = crate::support::sse::SseClient::new(response);
    let ident = stream.expect("ident").await.json();
    assert_eq!(ident["user"], ALICE, "{ident}");
    assert!(ident["channels"]["vip:lounge"].is_object(), "{ident}");
    gw.stop().await;
}
