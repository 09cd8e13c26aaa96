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

/// Publishes `n` events to `channel` in batches, as a backend catching up would.
async fn publish_many(gw: &crate::support::Gateway, channel: &str, n: usize) {
    for chunk in (1..=n).collect::<Vec<_>>().chunks(300) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"event": "n", "channels": [channel], "data": {"i": i, "pad": "x".repeat(64)}}))
            .collect();
        gw.publish(Value::Array(batch)).await;
    }
}

/// Identifies as `user` asking to recover `channels`; returns the client and the reply.
async fn ident_recovering(
    gw: &crate::support::Gateway,
    user: &str,
    channels: Value,
) -> (crate::support::Client, Value) {
    let mut client = gw.connect().await;
    let reply = client
        .request(json!({"op": "ident", "token": gw.token(user, None), "channels": channels}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    (client, reply)
}

#[tokio::test]
async fn a_recovery_larger_than_the_client_queue_completes_with_the_defaults() {
    const MISSED: usize = 900;
    let gw = start(&[]).await;
    let (first, reply) = ident_recovering(&gw, "r", json!({"a": {}, "b": {}})).await;
    let epoch = |c: &str| {
        reply["data"]["channels"][c]["epoch"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (epoch_a, epoch_b) = (epoch("a"), epoch("b"));
    first.close().await;
    publish_many(&gw, "a", MISSED).await;
    publish_many(&gw, "b", MISSED).await;

    // 1,800 missed events against a 1,024-frame client queue.
    let channels = json!({
        "a": {"offset": 0, "epoch": epoch_a}, "b": {"offset": 0, "epoch": epoch_b}
    });
    let (mut back, reply) = ident_recovering(&gw, "r", channels).await;
    for c in ["a", "b"] {
        assert_eq!(reply["data"]["channels"][c]["recovered"], true, "{reply}");
    }
    let mut events = Vec::new();
    for _ in 0..2 * MISSED {
        events.push(back.event().await);
    }
    let expected: Vec<u64> = (1..=MISSED as u64).collect();
    let on = |c: &str| -> Vec<u64> { events.iter().filter_map(|e| e["via"][c].as_u64()).collect() };
    assert_eq!(on("a"), expected, "every event of a, in order, once");
    assert_eq!(on("b"), expected, "every event of b, in order, once");
    println!(
        "recovery: {} missed, {} received, 0 lost, 0 duplicated",
        2 * MISSED,
        events.len()
    );
    // Still connected, and live events follow.
    gw.publish(json!({"event": "live", "channels": ["a"]}))
        .await;
    assert_eq!(back.event().await["via"]["a"], MISSED as u64 + 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_recovery_past_the_stated_bound_answers_recovered_false_without_4102() {
    let gw = start(&["--recovery-max-events", "500"]).await;
    let (first, reply) = ident_recovering(&gw, "r", json!({"big": {}, "small": {}})).await;
    let epoch = |c: &str| {
        reply["data"]["channels"][c]["epoch"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (epoch_big, epoch_small) = (epoch("big"), epoch("small"));
    first.close().await;
    publish_many(&gw, "big", 900).await;
    publish_many(&gw, "small", 20).await;

    let channels = json!({
        "big": {"offset": 0, "epoch": epoch_big}, "small": {"offset": 0, "epoch": epoch_small}
    });
    let (mut back, reply) = ident_recovering(&gw, "r", channels).await;
    let positions = &reply["data"]["channels"];
    assert_eq!(positions["big"]["recovered"], false, "{reply}");
    assert_eq!(positions["big"]["offset"], 900);
    assert_eq!(positions["small"]["recovered"], true, "{reply}");
    let small: Vec<Value> = {
        let mut v = Vec::new();
        for _ in 0..20 {
            v.push(back.event().await);
        }
        v
    };
    assert_eq!(offsets(&small, "small"), (1..=20).collect::<Vec<u64>>());
    // No 4102, no replay of `big`: the connection lives on and gets live events.
    assert_eq!(back.request(json!({"op": "ping"})).await["ok"], true);
    gw.publish(json!({"event": "live", "channels": ["big"]}))
        .await;
    assert_eq!(back.event().await["via"]["big"], 901);

    // The same for join with since.
    let (mut other, _) = ident_recovering(&gw, "s", json!({})).await;
    let joined = other
        .request(
            json!({"op": "join", "channel": "big", "since": {"offset": 0, "epoch": epoch_big}}),
        )
        .await;
    assert_eq!(joined["data"]["recovered"], false, "{joined}");
    assert_eq!(other.request(json!({"op": "ping"})).await["ok"], true);

    // What recovery refused, history pages through.
    let mut since = 0;
    let mut paged = 0;
    loop {
        let page = other
            .request(json!({"op": "history", "channel": "big", "limit": 400,
                            "since": {"offset": since, "epoch": epoch_big}}))
            .await;
        let events = page["data"]["events"].as_array().unwrap().clone();
        paged += events.len();
        since = events
            .last()
            .map_or(since, |e| e["via"]["big"].as_u64().unwrap());
        if page["data"]["more"] == false {
            assert_eq!(page["data"]["recovered"], true);
            break;
        }
        assert_eq!(
            page["data"]["recovered"], false,
            "a cut page does not hold everything"
        );
    }
    assert_eq!(paged, 901);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("herald_recoveries_too_large_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"herald_limit_hits_total{limit="recovery_max_events"} 2"#),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_position_without_an_epoch_never_claims_a_recovery_after_a_restart() {
    let gw = start(&[]).await;
    for i in 1..=5 {
        gw.publish(json!({"event": "n", "channels": ["news"], "data": i}))
            .await;
    }
    gw.stop().await;
    // A restart: in-memory history is gone, the channel starts over in a new epoch.
    let gw = start(&[]).await;
    for i in 1..=7 {
        gw.publish(json!({"event": "n", "channels": ["news"], "data": i}))
            .await;
    }
    let (mut client, reply) = ident_recovering(&gw, "r", json!({"news": {"offset": 5}})).await;
    assert_eq!(
        reply["data"]["channels"]["news"]["recovered"], false,
        "offset 5 of which epoch? {reply}"
    );
    client.expect_nothing(Duration::from_millis(300)).await;
    let joined = client
        .request(json!({"op": "join", "channel": "news", "since": {"offset": 5}}))
        .await;
    assert_eq!(joined["data"]["recovered"], false);
    client.expect_nothing(Duration::from_millis(300)).await;
    // Offset 0 means "I saw nothing": that is provable without an epoch.
    let (mut fresh, reply) = ident_recovering(&gw, "f", json!({"news": {"offset": 0}})).await;
    assert_eq!(reply["data"]["channels"]["news"]["recovered"], true);
    let mut events = Vec::new();
    for _ in 0..7 {
        events.push(fresh.event().await);
    }
    assert_eq!(offsets(&events, "news"), [1, 2, 3, 4, 5, 6, 7]);
    gw.stop().await;
}

#[tokio::test]
async fn http_history_pages_say_whether_they_hold_everything() {
    let gw = start(&[]).await;
    publish_many(&gw, "log", 250).await;
    let (_, first) = gw.get("/api/channels/log/history?limit=100").await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    let mut since = 0;
    let mut seen = Vec::new();
    loop {
        let (status, page) = gw
            .get(&format!(
                "/api/channels/log/history?since={since}&epoch={epoch}&limit=100"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        seen.extend(events.iter().map(|e| e["via"]["log"].as_u64().unwrap()));
        since = *seen.last().unwrap();
        if page["more"] == true {
            assert_eq!(page["recovered"], false, "a page cut to limit: {page}");
            continue;
        }
        assert_eq!(page["recovered"], true);
        break;
    }
    assert_eq!(seen, (1..=250).collect::<Vec<u64>>());
    // No epoch: the offset cannot be placed, so nothing is claimed.
    let (_, blind) = gw.get("/api/channels/log/history?since=200").await;
    assert_eq!(blind["recovered"], false);
    assert_eq!(blind["events"], json!([]));
    // Reading a channel that does not exist does not create it.
    let (_, ghost) = gw.get("/api/channels/ghost/history").await;
    assert_eq!(
        (ghost["offset"].clone(), ghost["events"].clone()),
        (json!(0), json!([]))
    );
    let (_, channels) = gw.get("/api/channels").await;
    assert!(
        !channels.to_string().contains("ghost"),
        "history created a channel: {channels}"
    );
    gw.stop().await;
}
