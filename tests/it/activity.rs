//! Client activity published on NATS (`herald.events.<kind>`): every kind, the debounce of a
//! quick reconnect, and the fan-out going on untouched when NATS cannot take the activity.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::nats::NatsServer;
use crate::support::start_with;

fn config(nats: &NatsServer, extra: &str) -> String {
    format!(
        "[[channels]]\npattern = \"room\"\nclient_publish = true\n\
         [nats]\nurl = \"{}\"\nevents = true\n{extra}",
        nats.url()
    )
}

/// A subscription to every activity, in place once this returns: a probe published on the
/// same connection after the subscription has come back through it.
async fn events(nats: &NatsServer) -> async_nats::Subscriber {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut subscriber = client.subscribe("herald.events.>").await.unwrap();
    client
        .publish("herald.events.probe", "{}".into())
        .await
        .unwrap();
    let probe = tokio::time::timeout(Duration::from_secs(5), subscriber.next()).await;
    assert!(matches!(probe, Ok(Some(_))), "the probe came back");
    subscriber
}

async fn next_activity(
    events: &mut async_nats::Subscriber,
    wait: Duration,
) -> Option<(String, Value)> {
    let message = tokio::time::timeout(wait, events.next()).await.ok()??;
    let body = serde_json::from_slice(&message.payload).unwrap();
    Some((message.subject.to_string(), body))
}

#[tokio::test]
async fn every_kind_of_activity_is_published() {
    let nats = NatsServer::start().await;
    let mut events = events(&nats).await;
    let gw = start_with(&[], Some(&config(&nats, ""))).await;
    gw.wait_readyz(200).await;

    let mut client = gw.client("auth0|alice").await;
    let ok = |r: Value| assert_eq!(r["ok"], true, "{r}");
    ok(client
        .request(json!({"op": "join", "channel": "room"}))
        .await);
    ok(client
        .request(json!({"op": "publish", "channel": "room", "event": "said", "data": 1}))
        .await);
    ok(client
        .request(json!({"op": "leave", "channel": "room"}))
        .await);
    client.close().await;

    let wait = Duration::from_secs(5);
    let expected = [
        ("connect", None, None),
        ("join", Some("room"), None),
        ("publish", Some("room"), Some("said")),
        ("leave", Some("room"), None),
        ("disconnect", None, None),
    ];
    let mut conn = None;
    for (kind, channel, event) in expected {
        let (subject, body) = next_activity(&mut events, wait)
            .await
            .unwrap_or_else(|| panic!("no {kind} activity"));
        assert_eq!(subject, format!("herald.events.{kind}"), "{body}");
        assert_eq!(body["kind"], kind, "{body}");
        assert_eq!(body["user"], "auth0|alice", "{body}");
        assert_eq!(body["channel"].as_str(), channel, "{body}");
        assert_eq!(body["event"].as_str(), event, "{body}");
        assert!(body["time"].as_str().unwrap().ends_with('Z'), "{body}");
        let this = body["conn"].as_str().unwrap().to_owned();
        assert_eq!(conn.get_or_insert(this.clone()), &this, "one connection");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_quick_reconnect_is_reported_once() {
    let nats = NatsServer::start().await;
    let mut events = events(&nats).await;
    let gw = start_with(&[], Some(&config(&nats, "events_debounce = \"700ms\"\n"))).await;
    gw.wait_readyz(200).await;

    let first = gw.client("bob").await;
    first.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = gw.client("bob").await;
    let mut kinds = Vec::new();
    while let Some((_, body)) = next_activity(&mut events, Duration::from_millis(1200)).await {
        kinds.push(body["kind"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        kinds,
        ["connect", "connect"],
        "the blip's disconnect is not reported"
    );

    // Gone for longer than the debounce: the disconnect is reported, late by the debounce.
    second.close().await;
    let (_, body) = next_activity(&mut events, Duration::from_secs(3))
        .await
        .expect("the disconnect comes after the debounce");
    assert_eq!(body["kind"], "disconnect");
    gw.stop().await;
}

#[tokio::test]
async fn fan_out_does_not_wait_when_nats_cannot_take_activity() {
    const PUBLISHES: usize = 5_000;
    let mut nats = NatsServer::start().await;
    // The writer publishes as fast as it can: the rate limits are not what is tested here.
    let limits = "max_frames_per_second = 1000000\nmax_publishes_per_second = 1000000\n";
    let config = format!("{limits}{}", config(&nats, "events_queue = 16\n"));
    let gw = start_with(&[], Some(&config)).await;
    gw.wait_readyz(200).await;
    let mut reader = gw.client("reader").await;
    assert_eq!(
        reader
            .request(json!({"op": "join", "channel": "room"}))
            .await["ok"],
        true
    );
    let mut writer = gw.client("writer").await;
    nats.kill();

    for n in 0..PUBLISHES {
        writer
            .send(json!({"op": "publish", "channel": "room", "event": "n", "data": n}))
            .await;
    }
    for n in 0..PUBLISHES {
        let event = reader.event().await;
        assert_eq!(event["data"], n, "{event}");
    }
    let metrics = gw.metrics().await;
    let dropped = metrics
        .lines()
        .find(|l| l.contains("reason=\"activity_queue_full\""))
        .unwrap_or_else(|| panic!("drops counted:\n{metrics}"));
    println!("fan-out with NATS down: {PUBLISHES} events delivered; {dropped}");
    gw.stop().await;
}
