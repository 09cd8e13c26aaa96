//! The cluster on NATS JetStream, against a `nats-server` of each test's own: three node
//! processes acting as one gateway (one log, the same offsets everywhere, presence across nodes), a
//! node killed mid-stream whose clients recover on another, a single node whose history
//! survives a restart, a node that lost NATS refusing publishes it cannot store, admin calls
//! and bans across nodes, and RabbitMQ and file-tail publishes reaching every node. Fault
//! tests print their figures.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::nats::{NatsCluster, NatsServer};
use crate::support::process::HeraldProcess;
use crate::support::{spawn_with, start_with, tally, Client, Gateway, API_KEY, JWT_SECRET};

/// Generous client queues: these tests are about the cluster, not slow consumers.
const BIG_QUEUES: &str = "client_queue = 200000\nclient_queue_bytes = 200000000\n\
                          recovery_max_events = 50000\nrecovery_max_bytes = 100000000\n\
                          history_size = 100000\n";

fn node_config(nats: &NatsServer, node: &str, cluster: &str) -> String {
    cluster_config(&[nats.url()], node, cluster, 1)
}

fn cluster_config(urls: &[String], node: &str, cluster: &str, replicas: usize) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "node = \"{node}\"\n{BIG_QUEUES}\n[[channels]]\npattern = \"*\"\njoin_leave_notices = true\nclient_publish = true\n\n\
         [nats]\nurl = \"{}\"\n\n[cluster]\nnats = [{}]\nname = \"{cluster}\"\nnode_timeout = \"3s\"\n\
         replicas = {replicas}\n",
        urls.join(","),
        quoted.join(", ")
    )
}

async fn node(nats: &NatsServer, name: &str, cluster: &str) -> Gateway {
    start_with(&[], Some(&node_config(nats, name, cluster))).await
}

/// A node as a `herald` process of its own.
async fn node_process(nats: &NatsServer, name: &str, cluster: &str) -> Gateway {
    spawn_with(&node_config(nats, name, cluster)).await
}

/// A client of `gateway` as `user` in `channels`, recovering from `positions` when given.
async fn member(gateway: &Gateway, user: &str, channels: Value) -> (Client, Value) {
    let mut client = gateway.connect().await;
    let reply = client
        .request(json!({"op": "ident", "token": gateway.token(user, None), "channels": channels}))
        .await;
    assert_eq!(reply["ok"], true, "ident failed: {reply}");
    (client, reply["data"].clone())
}

/// Waits until `channel`'s presence on `gateway` lists `want` members (10 s at most).
async fn wait_members(gateway: &Gateway, channel: &str, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let presence = gateway
            .get(&format!("/api/channels/{channel}/presence"))
            .await
            .1;
        if presence["members"].as_array().map(Vec::len) == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "want {want} members: {presence}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One event as a client saw it: its number, and its offset in each channel of `via`.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    n: u64,
    via: BTreeMap<String, u64>,
}

fn seen(frame: &Value) -> Option<Seen> {
    if frame["op"] != "event" {
        return None;
    }
    let via = frame["via"]
        .as_object()?
        .iter()
        .filter_map(|(c, o)| Some((c.clone(), o.as_u64()?)))
        .collect();
    Some(Seen {
        n: frame["data"]["n"].as_u64()?,
        via,
    })
}

/// Reads events until `want` arrived or 20 s pass without one.
async fn read_events(client: &mut Client, want: usize) -> Vec<Seen> {
    let mut events = Vec::with_capacity(want);
    while events.len() < want {
        match client.try_next(Duration::from_secs(20)).await {
            Some(frame) => events.extend(seen(&frame)),
            None => break,
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_deliver_every_publish_once_with_the_same_offsets_everywhere() {
    let nats = NatsServer::start().await;
    let nodes = [
        node_process(&nats, "n1", "three").await,
        node_process(&nats, "n2", "three").await,
        node_process(&nats, "n3", "three").await,
    ];
    // On every node: one client in `a`, one in `b`, one in both.
    let mut readers = Vec::new();
    for (i, gateway) in nodes.iter().enumerate() {
        for (j, channels) in [
            json!({"a": {}}),
            json!({"b": {}}),
            json!({"a": {}, "b": {}}),
        ]
        .into_iter()
        .enumerate()
        {
            let user = format!("google-oauth2|10{i}{j}");
            readers.push((i, j, member(gateway, &user, channels).await.0));
        }
    }
    let info = nodes[0].get("/api/info").await.1;
    let listed: Vec<&str> = info["nodes"]
        .as_array()
        .expect("nodes listed")
        .iter()
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert_eq!(listed.len(), 3, "every node in /api/info: {info}");
    // Presence spans the nodes: `a` has two members on each of three nodes.
    wait_members(&nodes[1], "a", 6).await;

    const TOTAL: u64 = 50_000;
    const BATCH: u64 = 100;
    let nats_client = async_nats::connect(nats.url()).await.expect("nats client");
    let started = Instant::now();
    // Sixteen publishers at once, each batch on the node (or NATS) its number picks.
    const PUBLISHERS: u64 = 16;
    let publishers = (0..PUBLISHERS).map(|p| {
        let urls: Vec<String> = nodes.iter().map(|g| g.url("/api/publish")).collect();
        let nats_client = nats_client.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut batch = p;
            while batch * BATCH < TOTAL {
                let envelopes: Vec<Value> = (batch * BATCH..(batch + 1) * BATCH)
                    .map(|n| {
                        let channel = if n % 2 == 0 { "a" } else { "b" };
                        json!({"event": "tick", "channels": [channel], "data": {"n": n}})
                    })
                    .collect();
                let body = serde_json::to_vec(&envelopes).unwrap();
                if batch % 4 == 3 {
                    let answer = nats_client
                        .request("herald.publish", body.into())
                        .await
                        .expect("NATS answer");
                    let results: Value = serde_json::from_slice(&answer.payload).unwrap();
                    assert!(
                        results
                            .as_array()
                            .unwrap()
                            .iter()
                            .all(|r| r["id"].is_string()),
                        "{results}"
                    );
                } else {
                    let url = &urls[(batch % 3) as usize];
                    let response = http
                        .post(url)
                        .bearer_auth(API_KEY)
                        .body(body)
                        .send()
                        .await
                        .expect("publish");
                    assert_eq!(response.status(), 200);
                }
                batch += PUBLISHERS;
            }
        })
    });
    let reading = readers.into_iter().map(|(i, j, mut client)| {
        tokio::spawn(async move {
            let want = if j == 2 { TOTAL } else { TOTAL / 2 };
            (i, j, read_events(&mut client, want as usize).await)
        })
    });
    let reading: Vec<_> = reading.collect();
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let published_in = started.elapsed();
    let mut offsets: HashMap<u64, u64> = HashMap::new();
    let (mut lost, mut duplicated, mut disordered, mut mismatched) = (0, 0, 0, 0);
    for reader in reading {
        let (i, j, events) = reader.await.expect("reader");
        let expected: Vec<u64> = (0..TOTAL).filter(|n| j == 2 || n % 2 == j as u64).collect();
        let mut numbers: Vec<u64> = events.iter().map(|e| e.n).collect();
        let what = format!("node n{} client {j}", i + 1);
        // Per channel, offsets only increase (the log's order); across channels, events of
        // `a` and `b` interleave, so numbers are checked as a set.
        for channel in ["a", "b"] {
            let in_channel: Vec<u64> = events
                .iter()
                .filter_map(|e| e.via.get(channel))
                .copied()
                .collect();
            disordered += in_channel.windows(2).filter(|w| w[1] <= w[0]).count();
        }
        for event in &events {
            let offset = *event.via.values().next().expect("a via");
            if *offsets.entry(event.n).or_insert(offset) != offset {
                mismatched += 1;
            }
        }
        numbers.sort_unstable();
        let (l, d, _) = tally(
            &what,
            expected.len(),
            &dense(&expected, &numbers),
            "3 nodes",
        );
        lost += l;
        duplicated += d;
    }
    println!(
        "cluster of 3 processes: {TOTAL} publishes (HTTP on every node, NATS) in {published_in:?}; \
         lost {lost}, duplicated {duplicated}, out of order {disordered}, offsets differing between nodes {mismatched}"
    );
    assert_eq!((lost, duplicated, disordered, mismatched), (0, 0, 0, 0));

    // A client's publish on one node reaches the members on another, through the log.
    let (mut writer, ident) = member(&nodes[0], "auth0|writer", json!({"chat": {}})).await;
    let (mut reader, _) = member(&nodes[2], "auth0|reader", json!({"chat": {}})).await;
    wait_members(&nodes[0], "chat", 2).await;
    let reply = writer
        .request(json!({"op": "publish", "channel": "chat", "event": "say", "data": {"n": 1}}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let heard = loop {
        let frame = reader.next().await;
        if frame["op"] == "event" {
            break frame;
        }
    };
    assert_eq!(heard["via"]["chat"], reply["data"]["offset"], "{heard}");
    assert_eq!(heard["from"]["conn"], ident["conn"], "{heard}");
    while let Some(frame) = writer.try_next(Duration::from_millis(300)).await {
        assert_ne!(frame["op"], "event", "no echo unless asked: {frame}");
    }
    for gateway in nodes {
        gateway.stop().await;
    }
}

/// `seen` renumbered as indexes into `expected`, so [`tally`] can count against `0..len`.
fn dense(expected: &[u64], seen: &[u64]) -> Vec<u64> {
    let index: HashMap<u64, u64> = expected
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, i as u64))
        .collect();
    seen.iter()
        .map(|n| index.get(n).copied().unwrap_or(u64::MAX))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_s_clients_recover_on_another_and_its_members_leave_within_the_bound() {
    let nats = NatsServer::start().await;
    let mut doomed = HeraldProcess::spawn(&[], Some(&node_config(&nats, "doomed", "kill"))).await;
    let survivor = node(&nats, "survivor", "kill").await;
    let (mut watcher, _) = member(&survivor, "watcher", json!({"k": {}})).await;
    const CLIENTS: usize = 20;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut client = Client::connect(&format!("ws://{}/ws", doomed.addr)).await;
        let user = format!("auth0|kill{i}");
        let reply = client
            .request(json!({"op": "ident", "token": doomed.token(&user), "channels": {"k": {}}}))
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        let epoch = reply["data"]["channels"]["k"]["epoch"]
            .as_str()
            .unwrap()
            .to_owned();
        let offset = reply["data"]["channels"]["k"]["offset"].as_u64().unwrap();
        clients.push((user, client, epoch, offset, Vec::<u64>::new()));
    }
    // Memberships reach the other nodes through the bucket, a moment after the joins.
    wait_members(&survivor, "k", CLIENTS + 1).await;

    const TOTAL: u64 = 2_000;
    let publisher = {
        let url = survivor.url("/api/publish");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0..TOTAL {
                let envelope = json!({"event": "tick", "channels": ["k"], "data": {"n": n}});
                let response = http
                    .post(&url)
                    .bearer_auth(API_KEY)
                    .json(&envelope)
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(response.status(), 200);
                if n % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };
    // Read until a quarter of the stream went by, then kill the node under the clients.
    for (_, client, _, offset, numbers) in clients.iter_mut() {
        while numbers.len() < (TOTAL / 4) as usize {
            let Some(event) = seen(&client.next().await) else {
                continue;
            };
            numbers.push(event.n);
            *offset = event.via["k"];
        }
    }
    doomed.child.start_kill().expect("SIGKILL");
    let _ = doomed.child.wait().await;
    let killed_at = Instant::now();
    // Every client comes back on the survivor with its position.
    let mut recovered = 0;
    for (user, client, epoch, offset, numbers) in clients.iter_mut() {
        let mut fresh = survivor.connect().await;
        let reply = fresh
            .request(json!({"op": "ident", "token": survivor.token(user, None),
                            "channels": {"k": {"offset": *offset, "epoch": epoch.clone()}}}))
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        recovered += usize::from(reply["data"]["channels"]["k"]["recovered"] == true);
        *client = fresh;
        let left = TOTAL as usize - numbers.len();
        numbers.extend(read_events(client, left).await.into_iter().map(|e| e.n));
    }
    publisher.await.expect("publisher");
    // The dead node's members leave the survivor's presence, with `left` notices.
    let mut lefts = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let presence = survivor.get("/api/channels/k/presence").await.1;
        let members = presence["members"].as_array().map_or(0, Vec::len);
        if members == CLIENTS + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead members still listed: {presence}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_in = killed_at.elapsed();
    while let Some(frame) = watcher.try_next(Duration::from_millis(200)).await {
        lefts += usize::from(frame["op"] == "left");
    }
    let (mut lost, mut duplicated) = (0, 0);
    for (user, _, _, _, numbers) in &clients {
        let (l, d, _) = tally(user, TOTAL as usize, numbers, "node killed mid-stream");
        lost += l;
        duplicated += d;
    }
    println!(
        "node killed: {CLIENTS} clients moved to the survivor, {recovered} recovered, lost {lost}, \
         duplicated {duplicated}; the dead node's members gone from presence {gone_in:?} after the kill \
         (node_timeout 3s), {lefts} left notices"
    );
    assert_eq!((recovered, lost, duplicated), (CLIENTS, 0, 0));
    assert_eq!(
        lefts, CLIENTS,
        "a left notice for every member of the dead node"
    );
    survivor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_s_history_survives_its_restart_and_its_clients_recover_exactly() {
    let nats = NatsServer::start().await;
    let config = node_config(&nats, "solo", "durable");
    let gateway = start_with(&[], Some(&config)).await;
    let (mut client, ident) = member(&gateway, "github|42", json!({"d": {}})).await;
    let epoch = ident["channels"]["d"]["epoch"].as_str().unwrap().to_owned();
    for n in 0..100 {
        gateway
            .publish(json!({"event": "e", "channels": ["d"], "data": {"n": n}}))
            .await;
    }
    let first = read_events(&mut client, 100).await;
    let position = first.last().expect("events").via["d"];
    client.close().await;
    for n in 100..3100 {
        gateway
            .publish(json!({"event": "e", "channels": ["d"], "data": {"n": n}}))
            .await;
    }
    gateway.stop().await;
    let restarted = start_with(&[], Some(&config)).await;
    let (mut client, ident) = member(
        &restarted,
        "github|42",
        json!({"d": {"offset": position, "epoch": epoch}}),
    )
    .await;
    assert_eq!(
        ident["channels"]["d"]["epoch"],
        epoch.as_str(),
        "the log's epoch, not a new one"
    );
    assert_eq!(ident["channels"]["d"]["recovered"], true, "{ident}");
    let missed = read_events(&mut client, 3000).await;
    let numbers: Vec<u64> = missed.iter().map(|e| e.n - 100).collect();
    let (lost, duplicated, disordered) = tally("restarted node", 3000, &numbers, "1 restart");
    assert_eq!((lost, duplicated, disordered), (0, 0, 0));
    client.expect_nothing(Duration::from_millis(300)).await;
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_nats_refuses_publishes_it_cannot_store_and_says_so() {
    let mut nats = NatsServer::start().await;
    let gateway = node(&nats, "lonely", "lost").await;
    let (mut client, _) = member(&gateway, "auth0|lonely", json!({"x": {}})).await;
    let key = "order-7";
    let first = gateway
        .post(
            "/api/publish",
            &json!({"event": "e", "channels": ["x"], "data": {"n": 0}, "key": key}),
        )
        .await;
    assert_eq!(first.0, 200, "{first:?}");
    let again = gateway
        .post(
            "/api/publish",
            &json!({"event": "e", "channels": ["x"], "data": {"n": 0}, "key": key}),
        )
        .await;
    assert_eq!(
        again.1, first.1,
        "a repeated key is answered with the original's id and offsets"
    );
    assert_eq!(read_events(&mut client, 1).await.len(), 1);
    client.expect_nothing(Duration::from_millis(300)).await;

    nats.kill();
    // The [nats] connector, on the same server, may be the first to be reported down.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = gateway.wait_readyz(503).await;
        if ready.to_string().contains("cluster") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster is never named: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (status, body) = gateway
        .post(
            "/api/publish",
            &json!({"event": "e", "channels": ["x"], "data": {"n": 1}}),
        )
        .await;
    assert_eq!((status, body["code"].as_u64()), (503, Some(4503)), "{body}");
    client.expect_nothing(Duration::from_millis(300)).await;
    let reply = client.request(json!({"op": "ping"})).await;
    assert_eq!(reply["ok"], true, "local clients are still served");
    let metrics = gateway.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("herald_cluster_publish_failures_total ") && !l.ends_with(" 0")),
        "counted in /metrics"
    );

    nats.restart().await;
    gateway.wait_readyz(200).await;
    let (status, _) = gateway
        .post(
            "/api/publish",
            &json!({"event": "e", "channels": ["x"], "data": {"n": 2}}),
        )
        .await;
    assert_eq!(status, 200);
    let after = read_events(&mut client, 1).await;
    assert_eq!(after.first().map(|e| e.n), Some(2));
    println!("NATS lost: publishes refused 503 (4503) while down, served again after 1 restart");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_server_of_three_killed_mid_stream_loses_and_duplicates_nothing() {
    let mut nats = NatsCluster::start().await;
    let urls = nats.urls();
    let nodes = [
        start_with(&[], Some(&cluster_config(&urls, "r1", "routes", 3))).await,
        start_with(&[], Some(&cluster_config(&urls, "r2", "routes", 3))).await,
    ];
    let mut readers = Vec::new();
    for (i, gateway) in nodes.iter().enumerate() {
        for j in 0..2 {
            let user = format!("okta|r{i}{j}");
            readers.push(member(gateway, &user, json!({"r": {}})).await.0);
        }
    }
    const TOTAL: u64 = 3_000;
    let urls: Vec<String> = nodes.iter().map(|g| g.url("/api/publish")).collect();
    let publisher = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut retries = 0;
        for n in 0..TOTAL {
            // A publish the log could not confirm is sent again with the same key: the log
            // stores it once, whichever try reached it.
            let envelope = json!({"event": "tick", "channels": ["r"], "data": {"n": n}, "key": format!("r-{n}")});
            let url = &urls[(n % 2) as usize];
            loop {
                let sent = http
                    .post(url)
                    .bearer_auth(API_KEY)
                    .json(&envelope)
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status() == 200) {
                    break;
                }
                retries += 1;
                assert!(retries < 500, "the cluster never took publishes again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        retries
    });
    let reading: Vec<_> = readers
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move { read_events(&mut client, TOTAL as usize).await })
        })
        .collect();
    // Kill one server of three a third of the way in.
    let watcher = &nodes[0];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let history = watcher.get("/api/channels/r/history?limit=1").await.1;
        let newest = history["events"][0]["data"]["n"].as_u64().unwrap_or(0);
        if newest >= TOTAL / 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream never got going: {history}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nats.servers[0].kill();
    let retries = publisher.await.expect("publisher");
    let (mut lost, mut duplicated, mut disordered) = (0, 0, 0);
    for (i, reader) in reading.into_iter().enumerate() {
        let numbers: Vec<u64> = reader.await.expect("reader").iter().map(|e| e.n).collect();
        let (l, d, o) = tally(
            &format!("reader {i}"),
            TOTAL as usize,
            &numbers,
            "1 of 3 NATS servers killed",
        );
        lost += l;
        duplicated += d;
        disordered += o;
    }
    println!(
        "3 NATS servers, 1 killed (SIGKILL) mid-stream: {TOTAL} publishes, {retries} retried after a 503, \
         lost {lost}, duplicated {duplicated}, out of order {disordered}, servers killed {}",
        nats.servers[0].kills
    );
    assert_eq!((lost, duplicated, disordered), (0, 0, 0));
    for gateway in nodes {
        gateway.stop().await;
    }
}

/// Waits until `gateway` knows `want` live nodes, itself included (10 s at most).
async fn wait_nodes(gateway: &Gateway, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = gateway.get("/api/info").await.1;
        if info["nodes"].as_array().map(Vec::len) == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "want {want} nodes: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The code of the `disconnect` frame `client` gets, past the notices before it.
async fn disconnect_code(client: &mut Client) -> Value {
    loop {
        let frame = client.next().await;
        if frame["op"] == "disconnect" {
            return frame["code"].clone();
        }
    }
}

/// Sends `ident` as `user` to `gateway` and returns the reply, whatever it is.
async fn try_ident(gateway: &Gateway, user: &str) -> Value {
    let mut client = gateway.connect().await;
    client
        .request(json!({"op": "ident", "token": gateway.token(user, None)}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_count_every_node_and_bans_reach_a_node_that_starts_later() {
    let nats = NatsServer::start().await;
    let n1 = node(&nats, "n1", "admin").await;
    let n2 = node(&nats, "n2", "admin").await;
    wait_nodes(&n1, 2).await;
    let (mut alice1, _) = member(&n1, "auth0|alice", json!({})).await;
    let (mut alice2, _) = member(&n2, "auth0|alice", json!({})).await;
    let (mut bob, _) = member(&n2, "bob", json!({})).await;

    // `*` lists the identified connections of every node.
    wait_members(&n1, "*", 3).await;
    wait_members(&n2, "*", 3).await;
    // So do the channel counts, with channels that have members on another node only.
    let (_dave, _) = member(&n2, "dave", json!({"only-on-n2": {}})).await;
    wait_members(&n1, "only-on-n2", 1).await;
    let (_, channels) = n1.get("/api/channels").await;
    let count = |name: &str| {
        channels
            .as_array()
            .and_then(|all| all.iter().find(|c| c["channel"] == name))
            .and_then(|c| c["members"].as_u64())
    };
    assert_eq!(count("only-on-n2"), Some(1), "{channels}");
    assert_eq!(count("*"), Some(4), "{channels}");

    let (status, body) = n1
        .post("/api/disconnect", &json!({"user": "auth0|alice"}))
        .await;
    assert_eq!(
        (status, body["disconnected"].as_u64()),
        (200, Some(2)),
        "{body}"
    );
    assert_eq!(disconnect_code(&mut alice1).await, 4101);
    assert_eq!(disconnect_code(&mut alice2).await, 4101);
    wait_members(&n1, "*", 2).await;

    let (status, body) = n1.post("/api/users/bob/block", &json!({})).await;
    assert_eq!(
        (status, body["disconnected"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    assert_eq!(disconnect_code(&mut bob).await, 4002);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 5;
    let (status, body) = n2
        .post(
            "/api/tokens/revoke",
            &json!({"user": "carol", "issued_before": before}),
        )
        .await;
    assert_eq!(
        (status, body["disconnected"].as_u64()),
        (200, Some(0)),
        "{body}"
    );

    // A node that starts now reads the bans the cluster keeps.
    let n3 = node(&nats, "n3", "admin").await;
    let refused = try_ident(&n3, "bob").await;
    assert_eq!(
        refused["code"], 4002,
        "a later node refuses the blocked user: {refused}"
    );
    let refused = try_ident(&n3, "carol").await;
    assert_eq!(refused["code"], 4002, "and the revoked tokens: {refused}");
    println!("admin across nodes: disconnect counted 2 of 2 nodes; block and revocation restored on a node started later");

    wait_nodes(&n1, 3).await;
    let (status, body) = n1.post("/api/users/bob/unblock", &json!({})).await;
    assert_eq!(
        (status, body["unblocked"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let (_bob, _) = member(&n3, "bob", json!({})).await;
    let restarted = try_ident(&n1, "bob").await;
    assert_eq!(restarted["ok"], true, "unblocked everywhere: {restarted}");
    for gateway in [n1, n2, n3] {
        gateway.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_and_file_tail_publishes_on_one_node_reach_every_node_once() {
    use std::io::Write;
    const EACH: u64 = 200;
    let nats = NatsServer::start().await;
    let rabbit = crate::support::amqp::Rabbit::new("cluster").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("app.log");
    let mut file = std::fs::File::create(&log).expect("log file");
    let config = format!(
        "{}\n{}\n[[file_tail]]\npath = \"{}\"\nchannels = [\"s\"]\npoll_interval = \"50ms\"\n",
        node_config(&nats, "sources", "sources"),
        rabbit.section(""),
        log.display()
    );
    let source = start_with(&[], Some(&config)).await;
    source.wait_readyz(200).await;
    let other = node(&nats, "other", "sources").await;
    let (mut here, _) = member(&source, "u1", json!({"s": {}})).await;
    let (mut there, _) = member(&other, "u2", json!({"s": {}})).await;

    let json = lapin::BasicProperties::default().with_content_type("application/json".into());
    for n in 0..EACH {
        let envelope = json!({"event": "e", "channels": ["s"], "data": {"n": n}});
        rabbit
            .publish(envelope.to_string().as_bytes(), json.clone())
            .await;
        let line = json!({"event": "e", "channels": ["s"], "data": {"n": EACH + n}});
        writeln!(file, "{line}").expect("append");
    }
    file.flush().expect("flush");

    let total = 2 * EACH as usize;
    let seen_here = read_events(&mut here, total).await;
    let seen_there = read_events(&mut there, total).await;
    for (what, seen) in [("source node", &seen_here), ("other node", &seen_there)] {
        let offsets: Vec<u64> = seen.iter().map(|e| e.via["s"]).collect();
        let mut numbers: Vec<u64> = seen.iter().map(|e| e.n).collect();
        numbers.sort_unstable();
        numbers.dedup();
        println!(
            "{what}: {} of {total} received ({} distinct), published through RabbitMQ and a tailed file on the source node",
            seen.len(),
            numbers.len()
        );
        assert_eq!(
            numbers,
            (0..2 * EACH).collect::<Vec<_>>(),
            "{what}: each once"
        );
        assert_eq!(seen.len(), total, "{what}: none twice");
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{what}: in offset order"
        );
    }
    assert_eq!(
        seen_here, seen_there,
        "the same events with the same offsets on both nodes"
    );
    source.stop().await;
    other.stop().await;
    rabbit.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_with_a_live_node_s_name_is_refused_at_start() {
    let nats = NatsServer::start().await;
    let config = node_config(&nats, "twin", "twins");
    let first = start_with(&[], Some(&config)).await;
    wait_nodes(&first, 1).await;
    // Its first heartbeat is in the bucket once it serves; give it a moment to be stored.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, &config).expect("config");
    let twin = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--listen", "127.0.0.1:0", "--api-key", API_KEY])
        .args(["--jwt-secret", JWT_SECRET])
        .arg(format!("--config={}", path.display()))
        .env("HERALD_LOG", "warn")
        .output();
    let twin = tokio::time::timeout(Duration::from_secs(30), twin)
        .await
        .expect("the twin ended in time")
        .expect("ran");
    let stderr = String::from_utf8_lossy(&twin.stderr);
    assert!(!twin.status.success(), "the twin must not start: {stderr}");
    assert!(
        stderr.contains("another live node is named \"twin\""),
        "the error names the clash: {stderr}"
    );
    // The first node is untouched.
    let (status, _) = first.get("/readyz").await;
    assert_eq!(status, 200);
    first.stop().await;
}
