//! The HTTP API: keys, validation naming the field, batches, idempotency, admin reads.

use std::time::Duration;

use serde_json::json;

use crate::support::start;

#[tokio::test]
async fn api_key_is_required() {
    let gw = start(&[]).await;
    let http = reqwest::Client::new();
    let none = http
        .post(gw.url("/api/publish"))
        .json(&json!({"event": "e", "broadcast": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let body: serde_json::Value = none.json().await.unwrap();
    assert!(body["error"].is_string() && body["code"].is_number());
    let wrong = http
        .get(gw.url("/api/info"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // Probes need no key.
    assert_eq!(
        http.get(gw.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        http.get(gw.url("/readyz")).send().await.unwrap().status(),
        200
    );
    gw.stop().await;
}

#[tokio::test]
async fn bad_envelopes_get_400_naming_the_field() {
    let gw = start(&[]).await;
    let cases = [
        (json!({"channels": ["a"]}), "event"),
        (json!({"event": "e"}), "channels"),
        (json!({"event": "e", "channels": "chat"}), "channels"),
        (
            json!({"event": "e", "channels": ["ok", "not ok"]}),
            "channels[1]",
        ),
        (json!({"event": "e", "users": [""]}), "users[0]"),
        (json!({"event": "e", "broadcast": "yes"}), "broadcast"),
        (json!({"event": "", "broadcast": true}), "event"),
        (
            json!({"event": "e", "broadcast": true, "key": "k".repeat(257)}),
            "key",
        ),
    ];
    for (envelope, field) in cases {
        let (status, body) = gw.post("/api/publish", &envelope).await;
        assert_eq!(status, 400, "{envelope} → {body}");
        assert_eq!(body["code"], 4000);
        let error = body["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("{field}:")),
            "{envelope}: error {error:?} should name {field}"
        );
    }
    let response = reqwest::Client::new()
        .post(gw.url("/api/publish"))
        .bearer_auth(crate::support::API_KEY)
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Nothing refused was published.
    assert_eq!(gw.get("/api/channels").await.1, json!([]));
    gw.stop().await;
}

#[tokio::test]
async fn batch_publish_answers_in_order() {
    let gw = start(&[]).await;
    let mut c = gw.client("b").await;
    c.request(json!({"op": "join", "channel": "x"})).await;
    let (status, body) = gw
        .post(
            "/api/publish",
            &json!([{"event": "one", "channels": ["x"]}, {"event": "two", "channels": ["x", "y"]}]),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["offsets"], json!({"x": 1}));
    assert_eq!(body[1]["offsets"], json!({"x": 2, "y": 1}));
    assert_eq!(c.event().await["event"], "one");
    assert_eq!(c.event().await["event"], "two");
    gw.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_is_delivered_once() {
    let gw = start(&[]).await;
    let mut c = gw.client("i").await;
    let envelope =
        json!({"event": "pay", "users": ["i"], "key": "order-17", "data": {"amount": 5}});
    let first = gw.publish(envelope.clone()).await;
    let second = gw.publish(envelope).await;
    assert_eq!(
        first, second,
        "a duplicate is answered with the first result"
    );
    assert_eq!(c.event().await["event"], "pay");
    c.expect_nothing(Duration::from_millis(300)).await;
    let other = gw
        .publish(json!({"event": "pay", "users": ["i"], "key": "order-18"}))
        .await;
    assert_ne!(other["id"], first["id"]);
    assert_eq!(c.event().await["via"]["@i"], 2);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("herald_duplicates_suppressed_total 1"),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn channels_presence_history_and_info() {
    let gw = start(&["--node", "api-node"]).await;
    let mut c = gw.client("p").await;
    c.request(json!({"op": "join", "channel": "lobby"})).await;
    for i in 0..3 {
        gw.publish(json!({"event": "m", "channels": ["lobby"], "data": i}))
            .await;
    }
    let (_, channels) = gw.get("/api/channels").await;
    let lobby = channels
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "lobby")
        .expect("lobby listed");
    assert_eq!(lobby["members"], 1);
    let (_, presence) = gw.get("/api/channels/lobby/presence").await;
    assert_eq!(presence["members"][0]["user"], "p");
    let (_, history) = gw.get("/api/channels/lobby/history?limit=2").await;
    assert_eq!(history["offset"], 3);
    assert_eq!(history["events"].as_array().unwrap().len(), 2);
    let epoch = history["epoch"].as_str().unwrap();
    let (_, since) = gw
        .get(&format!(
            "/api/channels/lobby/history?since=1&epoch={epoch}"
        ))
        .await;
    assert_eq!(since["events"].as_array().unwrap().len(), 2);
    assert_eq!(since["recovered"], true);
    let (status, bad) = gw.get("/api/channels/lobby/history?since=abc").await;
    assert_eq!(
        (status, bad["error"].as_str().unwrap().starts_with("since:")),
        (400, true)
    );
    let (status, _) = gw.get("/api/channels/bad%20name/presence").await;
    assert_eq!(status, 400);
    let (_, info) = gw.get("/api/info").await;
    assert_eq!(
        (info["node"].clone(), info["connections"].clone()),
        (json!("api-node"), json!(1))
    );
    assert!(
        info["version"].is_string()
            && info["uptime_secs"].is_number()
            && info["channels"].is_number()
    );
    let (status, body) = gw.post("/api/disconnect", &json!({})).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap().starts_with("user:")),
        (400, true)
    );
    let metrics = gw.metrics().await;
    for name in [
        "herald_connections 1",
        "herald_events_in_total 3",
        "herald_events_out_total 3",
        "herald_slow_consumer_cuts_total 0",
    ] {
        assert!(metrics.contains(name), "{name} missing in\n{metrics}");
    }
    gw.stop().await;
}
