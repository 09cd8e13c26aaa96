//! Recovery: a client that comes back gets exactly what it missed, in order, then live events.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::start;

fn offsets(events: &[Value], channel: &str) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["via"][channel].as_u64().expect("via offset"))
        .collect()
}

#[tokio::test]
async fn ident_with_channels_recovers_exactly_the_missed_events_then_live_ones() {
    let gw = start(&[]).await;
    let mut first = gw.client("r").await;
    let joined = first
        .request(json!({"op": "join", "channel": "news"}))
        .await;
    let epoch = joined["data"]["epoch"].as_str().unwrap().to_owned();
    for i in 1..=3 {
        gw.publish(json!({"event": "n", "channels": ["news"], "data": i}))
            .await;
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(first.event().await);
    }
    assert_eq!(offsets(&seen, "news"), [1, 2, 3]);
    first.close().await;

    for i in 4..=10 {
        gw.publish(json!({"event": "n", "channels": ["news"], "data": i}))
            .await;
    }
    let mut back = gw.connect().await;
    let channels = json!({"news": {"offset": 3, "epoch": epoch}});
    back.send(json!({"op": "ident", "id": 1, "token": gw.token("r", None), "channels": channels}))
        .await;
    // Publish while the ident is in flight: a live event must not come before or between
    // the recovered ones, nor be repeated.
    gw.publish(json!({"event": "n", "channels": ["news"], "data": 11}))
        .await;
    let reply = back.next().await;
    assert_eq!(reply["op"], "reply", "the reply comes first: {reply}");
    let position = &reply["data"]["channels"]["news"];
    assert_eq!(position["recovered"], true);
    assert_eq!(position["epoch"], epoch.as_str());
    let mut events = Vec::new();
    for _ in 0..8 {
        events.push(back.event().await);
    }
    assert_eq!(offsets(&events, "news"), [4, 5, 6, 7, 8, 9, 10, 11]);
    let data: Vec<_> = events.iter().map(|e| e["data"].as_u64().unwrap()).collect();
    assert_eq!(data, [4, 5, 6, 7, 8, 9, 10, 11]);
    gw.publish(json!({"event": "n", "channels": ["news"], "data": 12}))
        .await;
    assert_eq!(back.event().await["via"]["news"], 12);
    back.expect_nothing(Duration::from_millis(200)).await;
    gw.stop().await;
}

#[tokio::test]
async fn join_with_since_replies_then_recovers_then_goes_live() {
    let gw = start(&[]).await;
    let mut c = gw.client("j").await;
    for i in 1..=5 {
        gw.publish(json!({"event": "n", "channels": ["feed"], "data": i}))
            .await;
    }
    let epoch = gw.get("/api/channels/feed/history").await.1["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = c
        .request(json!({"op": "join", "channel": "feed", "since": {"offset": 2, "epoch": epoch}}))
        .await;
    assert_eq!(reply["data"]["recovered"], true);
    assert_eq!(reply["data"]["offset"], 5);
    let recovered = [c.event().await, c.event().await, c.event().await];
    assert_eq!(offsets(&recovered, "feed"), [3, 4, 5]);
    gw.publish(json!({"event": "n", "channels": ["feed"], "data": 6}))
        .await;
    assert_eq!(c.event().await["via"]["feed"], 6);
    gw.stop().await;
}

#[tokio::test]
async fn unknown_epoch_or_lost_history_gives_recovered_false() {
    let gw = start(&["--history-size", "3"]).await;
    let mut c = gw.client("e").await;
    for i in 1..=6 {
        gw.publish(json!({"event": "n", "channels": ["short"], "data": i}))
            .await;
    }
    let stale = c
        .request(json!({"op": "join", "channel": "short", "since": {"offset": 1, "epoch": "nope"}}))
        .await;
    assert_eq!(stale["data"]["recovered"], false);
    let epoch = stale["data"]["epoch"].as_str().unwrap().to_owned();
    // Offset 1 is known, but 2 and 3 left the 3-event history: not recoverable.
    let gone = c
        .request(json!({"op": "join", "channel": "short", "since": {"offset": 1, "epoch": epoch}}))
        .await;
    assert_eq!(gone["data"]["recovered"], false);
    c.expect_nothing(Duration::from_millis(200)).await;
    // Delivery continues from now.
    gw.publish(json!({"event": "n", "channels": ["short"], "data": 7}))
        .await;
    assert_eq!(c.event().await["via"]["short"], 7);

    let mut other = gw.connect().await;
    let channels = json!({"short": {"offset": 2, "epoch": "zzz"}});
    let reply = other
        .request(json!({"op": "ident", "token": gw.token("f", None), "channels": channels}))
        .await;
    assert_eq!(reply["data"]["channels"]["short"]["recovered"], false);
    gw.stop().await;
}

#[tokio::test]
async fn forbidden_channel_in_ident_is_refused_without_identifying() {
    let gw = start(&[]).await;
    let mut c = gw.connect().await;
    let token = gw.token("p", Some(&["ok:*"]));
    let reply = c
        .request(json!({"op": "ident", "token": token, "channels": {"secret": {}}}))
        .await;
    assert_eq!(reply["code"], 4003);
    assert_eq!(c.request(json!({"op": "ping"})).await["code"], 4001);
    let reply = c
        .request(json!({"op": "ident", "token": token, "channels": {"ok:1": {}}}))
        .await;
    assert_eq!(reply["ok"], true);
    gw.stop().await;
}
