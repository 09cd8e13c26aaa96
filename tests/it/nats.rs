//! The NATS connector against a real `nats-server` of each test's own: core subjects and
//! request/reply, malformed input, readiness while the broker is down, and JetStream losing
//! nothing across broker kills and a Herald restart. Fault tests print their figures.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use serde_json::{json, Value};

use crate::support::nats::NatsServer;
use crate::support::{start_with, Client, Gateway};

/// Generous client queues: these tests are about the connector, not slow consumers.
const BIG_QUEUES: &str = "client_queue = 200000\nclient_queue_bytes = 200000000\n\
                          recovery_max_events = 50000\nrecovery_max_bytes = 100000000\n";

fn config(nats: &NatsServer, nats_extra: &str, top: &str) -> String {
    format!(
        "{top}{BIG_QUEUES}[nats]\nurl = \"{}\"\n{nats_extra}",
        nats.url()
    )
}

async fn nats_client(nats: &NatsServer) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .expect("nats client")
}

async fn request(nats: &async_nats::Client, subject: &str, body: Vec<u8>) -> Value {
    request_channel_bytes(nats, subject, HeaderMap::new(), body).await
}

/// A request, asked again while the server does not know Herald's subscription yet (it
/// takes it in its own time after `/readyz` saw the connection).
async fn request_channel_bytes(
    nats: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: Vec<u8>,
) -> Value {
    use async_nats::client::RequestErrorKind;
    for _ in 0..200 {
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            nats.request_with_headers(subject.to_owned(), headers.clone(), body.clone().into()),
        )
        .await
        .expect("answered in time");
        match reply {
            Ok(reply) => return serde_json::from_slice(&reply.payload).expect("answers are JSON"),
            Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("request: {e}"),
        }
    }
    panic!("Herald never subscribed to {subject}");
}

async fn request_channel(
    nats: &async_nats::Client,
    subject: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Value {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, *value);
    }
    request_channel_bytes(nats, subject, map, body.as_bytes().to_vec()).await
}

async fn joined(gw: &Gateway, channel: &str) -> Client {
    let mut client = gw.client("reader").await;
    let reply = client
        .request(json!({"op": "join", "channel": channel}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    client
}

#[tokio::test]
async fn core_subjects_publish_and_answer_like_http() {
    let nats = NatsServer::start().await;
    let gw = start_with(&[], Some(&config(&nats, "", ""))).await;
    gw.wait_readyz(200).await;
    let mut client = joined(&gw, "chat").await;
    let backend = nats_client(&nats).await;

    // An envelope, pretty-printed, as a request: the answer is POST /api/publish's.
    let envelope = serde_json::to_vec_pretty(&json!({
        "event": "MESSAGE:NEW", "channels": ["chat"], "data": {"msg": "hello"}
    }))
    .unwrap();
    let answer = request(&backend, "herald.publish", envelope).await;
    assert_eq!(answer["offsets"]["chat"], 1, "{answer}");
    let event = client.event().await;
    assert_eq!(
        (event["event"].clone(), event["data"]["msg"].clone()),
        (json!("MESSAGE:NEW"), json!("hello"))
    );

    // Raw data on a channel subject, the event in a header, a key for idempotency.
    let headers = [("Herald-Event", "PING"), ("Herald-Key", "k-1")];
    let answer = request_channel(&backend, "herald.channel.chat", &headers, r#"{"n": 2}"#).await;
    assert_eq!(answer["offsets"]["chat"], 2, "{answer}");
    let again = request_channel(&backend, "herald.channel.chat", &headers, r#"{"n": 2}"#).await;
    assert_eq!(again["id"], answer["id"], "the same key is accepted once");
    let event = client.event().await;
    assert_eq!(
        (event["event"].clone(), event["data"]["n"].clone()),
        (json!("PING"), json!(2))
    );
    let text = request_channel(
        &backend,
        "herald.channel.chat",
        &[("Herald-Event", "LINE")],
        "plain text",
    )
    .await;
    assert_eq!(text["offsets"]["chat"], 3, "{text}");
    assert_eq!(client.event().await["data"], "plain text");

    // A batch: each item answered on its own, in order.
    let batch = json!([
        {"event": "a", "channels": ["chat"]},
        {"event": "b"},
        {"event": "c", "channels": ["chat"]}
    ]);
    let answer = request(
        &backend,
        "herald.publish",
        serde_json::to_vec(&batch).unwrap(),
    )
    .await;
    assert_eq!(answer[0]["offsets"]["chat"], 4, "{answer}");
    assert_eq!(answer[1]["code"], 4000, "{answer}");
    assert_eq!(answer[2]["offsets"]["chat"], 5, "{answer}");
    assert_eq!(client.event().await["event"], "a");
    assert_eq!(client.event().await["event"], "c");

    // Plain publishes (no reply subject) are delivered too.
    backend
        .publish(
            "herald.publish",
            r#"{"event":"fire","broadcast":true}"#.into(),
        )
        .await
        .unwrap();
    assert_eq!(client.event().await["event"], "fire");
    let metrics = gw.metrics().await;
    assert_eq!(
        counter(&metrics, "duplicates", None),
        1,
        "the repeated key:\n{metrics}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn malformed_nats_input_is_refused_counted_and_herald_keeps_serving() {
    let nats = NatsServer::start().await;
    let gw = start_with(&[], Some(&config(&nats, "", ""))).await;
    gw.wait_readyz(200).await;
    let mut client = joined(&gw, "chat").await;
    let backend = nats_client(&nats).await;

    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("herald.publish", b"{not json".to_vec(), ""),
        ("herald.publish", br#"{"event":"e"}"#.to_vec(), "channels"),
        (
            "herald.publish",
            br#"{"event":"e","channels":"chat"}"#.to_vec(),
            "channels",
        ),
        (
            "herald.publish",
            br#"{"event":7,"channels":["chat"]}"#.to_vec(),
            "event",
        ),
        ("herald.publish", vec![b' '; 10 << 20], "max_body_size"),
    ];
    for (subject, body, names) in cases {
        let size = body.len();
        let answer = request(&backend, subject, body).await;
        let code = if size > 1 << 20 { 4009 } else { 4000 };
        assert_eq!(answer["code"], code, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(names), "{error} should name {names}");
    }
    let bad_channel = request_channel(
        &backend,
        "herald.channel.bad!name",
        &[("Herald-Event", "e")],
        "1",
    )
    .await;
    assert_eq!(bad_channel["code"], 4000, "{bad_channel}");
    assert!(
        bad_channel["error"]
            .as_str()
            .unwrap()
            .starts_with("subject"),
        "{bad_channel}"
    );
    let no_event = request_channel(&backend, "herald.channel.chat", &[], "1").await;
    assert!(
        no_event["error"].as_str().unwrap().contains("Herald-Event"),
        "{no_event}"
    );

    // Nothing reached the client; a good publish still does.
    client.expect_nothing(Duration::from_millis(200)).await;
    let ok = request(
        &backend,
        "herald.publish",
        br#"{"event":"ok","channels":["chat"]}"#.to_vec(),
    )
    .await;
    assert_eq!(ok["offsets"]["chat"], 1, "{ok}");
    assert_eq!(client.event().await["event"], "ok");

    let metrics = gw.metrics().await;
    for line in [
        "herald_connector_received_total{connector=\"nats\"} 8",
        "herald_connector_accepted_total{connector=\"nats\"} 1",
        "herald_connector_rejected_total{connector=\"nats\",reason=\"invalid\"} 6",
        "herald_connector_rejected_total{connector=\"nats\",reason=\"too_large\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in:\n{metrics}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn readyz_names_nats_while_it_is_down_and_the_rest_keeps_working() {
    let mut nats = NatsServer::start().await;
    let gw = start_with(&[], Some(&config(&nats, "", ""))).await;
    gw.wait_readyz(200).await;
    let mut client = joined(&gw, "chat").await;

    nats.kill();
    let body = gw.wait_readyz(503).await;
    let failing = body["failing"].to_string();
    assert!(failing.contains("nats: reconnecting since"), "{body}");
    let (_, info) = gw.get("/api/info").await;
    assert!(
        info["connectors"]["nats"]
            .as_str()
            .unwrap()
            .starts_with("reconnecting since"),
        "{info}"
    );
    // WebSocket clients and HTTP publish do not notice.
    gw.publish(json!({"event": "http", "channels": ["chat"]}))
        .await;
    assert_eq!(client.event().await["event"], "http");

    nats.restart().await;
    gw.wait_readyz(200).await;
    let backend = nats_client(&nats).await;
    let answer = request(
        &backend,
        "herald.publish",
        br#"{"event":"back","channels":["chat"]}"#.to_vec(),
    )
    .await;
    assert_eq!(answer["offsets"]["chat"], 2, "{answer}");
    assert_eq!(client.event().await["event"], "back");
    println!("nats restarts: {}", nats.kills);
    gw.stop().await;
}

/// Publishes `range` to JetStream on `channel`, each message acknowledged by the stream
/// before the next window goes; a window that fails is sent again (the stream drops what it
/// already has by `Nats-Msg-Id`). `kill_at` lists counts after which the broker is killed
/// and restarted.
async fn publish_jetstream(
    nats: &mut NatsServer,
    channel: &str,
    range: std::ops::Range<usize>,
    kill_at: &[usize],
) {
    const WINDOW: usize = 500;
    let js = async_nats::jetstream::new(nats_client(nats).await);
    let mut kills = kill_at.iter().copied().peekable();
    let mut next = range.start;
    let mut retries = 0;
    while next < range.end {
        if kills.next_if(|&k| next >= k).is_some() {
            nats.kill();
            tokio::time::sleep(Duration::from_millis(300)).await;
            nats.restart().await;
        }
        let end = (next + WINDOW).min(range.end);
        let mut acks = Vec::with_capacity(WINDOW);
        for n in next..end {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{channel}-{n}").as_str());
            let envelope = json!({
                "event": "n", "channels": [channel], "data": {"n": n}, "key": format!("{channel}-{n}")
            });
            let body = serde_json::to_vec(&envelope).unwrap();
            match js
                .publish_with_headers("herald.publish", headers, body.into())
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(_) => break,
            }
        }
        let mut stored = 0;
        for ack in acks {
            if ack.await.is_err() {
                break;
            }
            stored += 1;
        }
        if stored < end - next {
            retries += 1;
            assert!(retries < 200, "JetStream never took the window at {next}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        next += stored;
    }
}

/// Reads events on `client` until `want` arrived or 20 s pass without one; returns the `n`s.
async fn collect(client: &mut Client, want: usize) -> Vec<u64> {
    let mut seen = Vec::with_capacity(want);
    while seen.len() < want {
        match client.try_next(Duration::from_secs(20)).await {
            Some(frame) if frame["op"] == "event" => {
                seen.push(frame["data"]["n"].as_u64().expect("n"));
            }
            Some(_) => {}
            None => break,
        }
    }
    seen
}

/// Sent, received, lost, duplicated, out of order: printed, and the test's verdict.
fn tally(what: &str, expected: std::ops::Range<usize>, seen: &[u64], restarts: usize) {
    let unique: std::collections::BTreeSet<u64> = seen.iter().copied().collect();
    let lost = expected
        .clone()
        .filter(|n| !unique.contains(&(*n as u64)))
        .count();
    let duplicated = seen.len() - unique.len();
    let out_of_order = seen.windows(2).filter(|w| w[1] <= w[0]).count();
    println!(
        "{what}: sent {}, received {}, lost {lost}, duplicated {duplicated}, out of order {out_of_order}, restarts {restarts}",
        expected.len(),
        seen.len()
    );
    assert_eq!((lost, duplicated, out_of_order), (0, 0, 0), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_loses_nothing_across_two_broker_kills() {
    const TOTAL: usize = 100_000;
    let mut nats = NatsServer::start().await;
    let gw = start_with(&[], Some(&config(&nats, "jetstream = true\n", ""))).await;
    gw.wait_readyz(200).await;
    let mut client = joined(&gw, "jsk").await;
    let reader = tokio::spawn(async move { collect(&mut client, TOTAL).await });

    publish_jetstream(&mut nats, "jsk", 0..TOTAL, &[30_000, 65_000]).await;
    let seen = reader.await.unwrap();
    tally(
        "jetstream, broker killed twice",
        0..TOTAL,
        &seen,
        nats.kills,
    );
    assert_eq!(nats.kills, 2);
    let metrics = gw.metrics().await;
    let duplicates = metrics
        .lines()
        .find(|l| l.starts_with("herald_connector_duplicates_total"))
        .unwrap_or_default();
    println!("redeliveries recognised: {duplicates}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_resumes_after_herald_restarts() {
    const BEFORE: usize = 5_000;
    const WAITING: usize = 10_000;
    let mut nats = NatsServer::start().await;
    let rules = "[[channels]]\npattern = \"jr\"\nhistory_size = 20000\n";
    // An array of tables may follow the `[nats]` table.
    let config = config(&nats, &format!("jetstream = true\n{rules}"), "");

    let first = start_with(&[], Some(&config)).await;
    first.wait_readyz(200).await;
    let mut client = joined(&first, "jr").await;
    publish_jetstream(&mut nats, "jr", 0..BEFORE, &[]).await;
    let seen = collect(&mut client, BEFORE).await;
    tally("jetstream, before Herald stops", 0..BEFORE, &seen, 0);
    first.stop().await;

    // Herald is down: these wait in the stream.
    publish_jetstream(&mut nats, "jr", BEFORE..BEFORE + WAITING, &[]).await;

    let second = start_with(&[], Some(&config)).await;
    second.wait_readyz(200).await;
    let mut client = second.client("reader").await;
    let reply = client
        .request(json!({"op": "join", "channel": "jr", "since": {"offset": 0}}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let seen = collect(&mut client, WAITING).await;
    tally(
        "jetstream, across a Herald restart",
        BEFORE..BEFORE + WAITING,
        &seen,
        1,
    );
    client.expect_nothing(Duration::from_millis(300)).await;
    second.stop().await;
}

/// Reads a `herald_connector_*_total` sample of the `nats` connector, 0 when absent.
fn counter(metrics: &str, name: &str, reason: Option<&str>) -> u64 {
    let labels = match reason {
        Some(r) => format!("{{connector=\"nats\",reason=\"{r}\"}}"),
        None => "{connector=\"nats\"}".to_owned(),
    };
    let prefix = format!("herald_connector_{name}_total{labels} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn jetstream_redelivers_what_herald_cannot_take_and_terminates_what_is_malformed() {
    let nats = NatsServer::start().await;
    // Room for `*`, `@reader` and `held`: an envelope to a fourth channel cannot be taken
    // now (4503).
    let config = config(
        &nats,
        "jetstream = true\nmax_deliver = 3\n",
        "max_channels = 3\n",
    );
    let gw = start_with(&[], Some(&config)).await;
    gw.wait_readyz(200).await;
    let mut client = joined(&gw, "held").await;
    let js = async_nats::jetstream::new(nats_client(&nats).await);
    let publish = |body: &'static str| {
        let js = js.clone();
        async move {
            for _ in 0..200 {
                if let Ok(ack) = js.publish("herald.publish", body.into()).await {
                    if ack.await.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the stream never took {body}");
        }
    };
    publish(r#"{"event":"over","channels":["another"]}"#).await;
    publish("{not json").await;
    publish(r#"{"event":"fits","channels":["held"]}"#).await;
    assert_eq!(
        client.event().await["event"],
        "fits",
        "the others do not hold it up"
    );

    // Three deliveries a second apart, then it is given up, logged and counted.
    let deadline = Instant::now() + Duration::from_secs(15);
    let metrics = loop {
        let metrics = gw.metrics().await;
        if counter(&metrics, "rejected", Some("max_deliver")) == 1 {
            break metrics;
        }
        assert!(Instant::now() < deadline, "never given up:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        counter(&metrics, "rejected", Some("at_capacity")),
        3,
        "{metrics}"
    );
    assert_eq!(
        counter(&metrics, "rejected", Some("invalid")),
        1,
        "malformed: once, not again"
    );
    assert_eq!(counter(&metrics, "received", None), 5, "{metrics}");
    assert_eq!(counter(&metrics, "accepted", None), 1, "{metrics}");
    client.expect_nothing(Duration::from_millis(300)).await;
    gw.stop().await;
}
