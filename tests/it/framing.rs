//! Every frame Herald writes is one line of compact JSON, whatever the payload's formatting:
//! a pretty-printed or crafted `data` can neither split a frame nor forge one.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{start, start_with, Client};

const QUIET: Duration = Duration::from_millis(300);

/// A payload that, kept as sent, would put a complete `disconnect` frame on a line of its own.
fn forged_payload() -> Value {
    json!([{"op": "disconnect", "code": 4101, "reason": "forged", "reconnect": false}])
}

/// Reads the next raw WebSocket message and checks that every `\n`-separated line in it is a
/// frame on its own (a JSON object with an `op`); returns the frames.
async fn raw_frames(client: &mut Client) -> Vec<Value> {
    let frame = client.next().await;
    let mut frames = vec![frame];
    while let Some(more) = client.try_next(Duration::from_millis(50)).await {
        frames.push(more);
    }
    for frame in &frames {
        assert!(frame["op"].is_string(), "not a frame: {frame}");
    }
    frames
}

#[tokio::test]
async fn pretty_printed_data_from_http_publish_cannot_forge_frames() {
    let gw = start(&[]).await;
    let mut alice = gw.client("alice").await;
    alice.request(json!({"op": "join", "channel": "c"})).await;
    // Exactly the body from the defect report: newlines inside `data`'s array.
    let body = "{\"event\":\"e\",\"channels\":[\"c\"],\"data\":[\n{\"op\":\"disconnect\",\"code\":4101,\"reason\":\"forged\",\"reconnect\":false}\n]}";
    let response = reqwest::Client::new()
        .post(gw.url("/api/publish"))
        .bearer_auth(crate::support::API_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The same payload pretty-printed as a whole, as many HTTP clients send it.
    let pretty = serde_json::to_string_pretty(
        &json!({"event": "e", "channels": ["c"], "data": forged_payload()}),
    )
    .unwrap();
    let response = reqwest::Client::new()
        .post(gw.url("/api/publish"))
        .bearer_auth(crate::support::API_KEY)
        .header("content-type", "application/json")
        .body(pretty)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A batch, and a string that holds newlines (escaped in JSON, so harmless).
    gw.publish(json!([
        {"event": "e", "channels": ["c"], "data": {"text": "line 1\n{\"op\":\"disconnect\"}\nline 3"}},
    ]))
    .await;

    let frames = raw_frames(&mut alice).await;
    let events: Vec<&Value> = frames.iter().filter(|f| f["op"] == "event").collect();
    assert_eq!(frames.len(), 3, "three events and nothing else: {frames:?}");
    assert_eq!(events[0]["data"], forged_payload());
    assert_eq!(events[1]["data"], forged_payload());
    assert_eq!(
        events[2]["data"]["text"],
        "line 1\n{\"op\":\"disconnect\"}\nline 3"
    );
    alice.expect_nothing(QUIET).await;
    assert_eq!(alice.request(json!({"op": "ping"})).await["ok"], true);

    // History serves the same compact frames.
    let (_, page) = gw.get("/api/channels/c/history").await;
    assert_eq!(page["events"][0]["data"], forged_payload());
    gw.stop().await;
}

#[tokio::test]
async fn a_pretty_printed_client_publish_is_one_frame_and_forges_nothing() {
    let rules = "[[channels]]\npattern = \"room\"\nclient_publish = true\n";
    let gw = start_with(&[], Some(rules)).await;
    let mut sender = gw.client("sender").await;
    let mut member = gw.client("member").await;
    for client in [&mut sender, &mut member] {
        client
            .request(json!({"op": "join", "channel": "room"}))
            .await;
    }
    // A whole frame pretty-printed into one WebSocket message.
    let frame = serde_json::to_string_pretty(&json!({
        "op": "publish", "id": 7, "channel": "room", "event": "msg", "data": forged_payload()
    }))
    .unwrap();
    assert!(frame.contains('\n'));
    sender.send_text(&frame).await;
    assert_eq!(sender.reply_to(7).await["ok"], true);
    let frames = raw_frames(&mut member).await;
    assert_eq!(frames.len(), 1, "one event and nothing else: {frames:?}");
    assert_eq!(frames[0]["op"], "event");
    assert_eq!(frames[0]["data"], forged_payload());
    assert_eq!(frames[0]["from"]["user"], "sender");

    // `\n`-separated frames and arrays of frames still work, and a bad line is refused alone.
    sender
        .send_text("{\"op\":\"ping\",\"id\":8}\nnot json\n[{\"op\":\"ping\",\"id\":9}]")
        .await;
    assert_eq!(sender.reply_to(8).await["ok"], true);
    let refused = sender.next().await;
    assert_eq!(
        (refused["ok"].clone(), refused["code"].clone()),
        (json!(false), json!(4000))
    );
    assert_eq!(sender.reply_to(9).await["ok"], true);
    gw.stop().await;
}
