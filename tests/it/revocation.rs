//! Blocking users and revoking tokens through the API: effective at once on live
//! connections (4002, no reconnect) and at every later `ident`, lapsing when they should,
//! bounded in number.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::{start, start_with, Client, Gateway, JWT_SECRET};

const USER: &str = "auth0|65f0c1e2d3b4a59687";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `user` with these extra claims.
fn token(user: &str, extra: Value) -> String {
    let mut claims = json!({"sub": user, "exp": now() + 600});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

async fn ident(gw: &Gateway, token: &str) -> (Client, Value) {
    let mut client = gw.connect().await;
    let reply = client.request(json!({"op": "ident", "token": token})).await;
    (client, reply)
}

async fn ended_with_4002(client: &mut Client, why: &str) {
    let frame = client.expect_ended(4002, false).await;
    assert_eq!(frame["reason"], why, "{frame}");
}

fn path(user: &str, action: &str) -> String {
    format!("/api/users/{}/{action}", user.replace('|', "%7C"))
}

#[tokio::test]
async fn a_blocked_user_is_cut_refused_and_let_back_in_when_the_block_ends() {
    let gw = start(&[]).await;
    let (mut first, _) = ident(&gw, &token(USER, json!({}))).await;
    let (mut second, _) = ident(&gw, &token(USER, json!({}))).await;
    let (mut other, _) = ident(&gw, &token("bob", json!({}))).await;

    let (status, body) = gw
        .post(&path(USER, "block"), &json!({"duration": "2s"}))
        .await;
    assert_eq!(
        (status, body["disconnected"].as_u64()),
        (200, Some(2)),
        "{body}"
    );
    assert!(body["until"].is_string(), "{body}");
    ended_with_4002(&mut first, "blocked").await;
    ended_with_4002(&mut second, "blocked").await;
    let reply = other.request(json!({"op": "ping"})).await;
    assert_eq!(reply["ok"], true, "others are not touched");

    let (_, reply) = ident(&gw, &token(USER, json!({}))).await;
    assert_eq!(reply["code"], 4002, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("blocked"),
        "{reply}"
    );
    // The block lapses by itself.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, reply) = ident(&gw, &token(USER, json!({}))).await;
    assert_eq!(reply["ok"], true, "the block ended: {reply}");

    // Without a duration it lasts until unblocked.
    let (status, body) = gw.post(&path("bob", "block"), &json!({})).await;
    assert_eq!((status, &body["until"]), (200, &Value::Null), "{body}");
    ended_with_4002(&mut other, "blocked").await;
    let (_, reply) = ident(&gw, &token("bob", json!({}))).await;
    assert_eq!(reply["code"], 4002, "{reply}");
    let (status, body) = gw.post(&path("bob", "unblock"), &json!({})).await;
    assert_eq!((status, &body["unblocked"]), (200, &json!(true)), "{body}");
    let (_, reply) = ident(&gw, &token("bob", json!({}))).await;
    assert_eq!(reply["ok"], true, "{reply}");

    let (status, body) = gw
        .post(&path("bob", "block"), &json!({"duration": "soon"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("duration:"),
        "{body}"
    );
    let unauthorized = reqwest::Client::new()
        .post(gw.url(&path("bob", "block")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401, "the API key is required");
    gw.stop().await;
}

#[tokio::test]
async fn revoked_tokens_are_cut_and_refused_by_jti_or_by_issue_time() {
    let gw = start(&[]).await;
    let (mut revoked, _) = ident(&gw, &token(USER, json!({"jti": "t-1"}))).await;
    let (mut kept, _) = ident(&gw, &token(USER, json!({"jti": "t-2"}))).await;
    let (status, body) = gw
        .post(
            "/api/tokens/revoke",
            &json!({"jti": "t-1", "expires_at": now() + 600}),
        )
        .await;
    assert_eq!(
        (status, body["disconnected"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    ended_with_4002(&mut revoked, "token revoked").await;
    assert_eq!(kept.request(json!({"op": "ping"})).await["ok"], true);
    let (_, reply) = ident(&gw, &token(USER, json!({"jti": "t-1"}))).await;
    assert_eq!(reply["code"], 4002, "{reply}");

    // Every token issued before a time; tokens that do not say when they were issued too.
    let cut = now();
    let (mut old, _) = ident(&gw, &token("carol", json!({"iat": cut - 30}))).await;
    let (mut undated, _) = ident(&gw, &token("carol", json!({}))).await;
    let (status, body) = gw
        .post(
            "/api/tokens/revoke",
            &json!({"user": "carol", "issued_before": cut}),
        )
        .await;
    assert_eq!(
        (status, body["disconnected"].as_u64()),
        (200, Some(2)),
        "{body}"
    );
    ended_with_4002(&mut old, "token revoked").await;
    ended_with_4002(&mut undated, "token revoked").await;
    let (_, reply) = ident(&gw, &token("carol", json!({"iat": cut - 1}))).await;
    assert_eq!(reply["code"], 4002, "{reply}");
    let (_, reply) = ident(&gw, &token("carol", json!({"iat": cut + 1}))).await;
    assert_eq!(reply["ok"], true, "a token issued after the cut: {reply}");
    assert_eq!(
        kept.request(json!({"op": "ping"})).await["ok"],
        true,
        "another user's token"
    );

    let (status, body) = gw
        .post("/api/tokens/revoke", &json!({"jti": "x", "user": "carol"}))
        .await;
    assert_eq!(status, 400, "one kind at a time: {body}");
    gw.stop().await;
}

#[tokio::test]
async fn blocks_are_bounded_in_number() {
    let gw = start_with(&["--max-revocations", "2"], None).await;
    for user in ["a", "b"] {
        assert_eq!(gw.post(&path(user, "block"), &json!({})).await.0, 200);
    }
    let (status, body) = gw.post(&path("c", "block"), &json!({})).await;
    assert_eq!((status, body["code"].as_u64()), (503, Some(4503)), "{body}");
    assert_eq!(
        gw.post(&path("a", "block"), &json!({"duration": "1h"}))
            .await
            .0,
        200,
        "an existing block may change"
    );
    gw.stop().await;
}
