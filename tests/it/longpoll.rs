//! The long-poll transport: the same protocol as WebSocket over `/lp/*`, lossless across lost
//! responses, with sessions that expire like dropped connections.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::raw_http::RawHttp;
use crate::support::start_with;

/// Short timers so tests wait seconds, not the defaults' minutes.
const FAST: &str = "[longpoll]\npoll_timeout = \"1s\"\nsession_timeout = \"2s\"\n\
                    [[channels]]\npattern = \"room*\"\nclient_publish = true\njoin_leave_notices = true\n";

#[tokio::test]
async fn every_op_works_over_long_poll() {
    let gw = start_with(&[], Some(FAST)).await;
    let mut lp = gw.longpoll().await;
    assert!(lp.conn.starts_with("c_"));
    let early = lp.request(json!({"op": "join", "channel": "room"})).await;
    assert_eq!(early["code"], 4001, "ident comes first");
    let ident = lp
        .request(json!({"op": "ident", "token": gw.token("lp", None), "channels": {"room": {}}}))
        .await;
    assert_eq!(ident["data"]["user"], "lp");
    assert_eq!(ident["data"]["conn"], lp.conn.as_str());
    assert_eq!(lp.request(json!({"op": "ping"})).await["ok"], true);
    let joined = lp
        .request(json!({"op": "join", "channel": "room2", "presence": true}))
        .await;
    assert_eq!(joined["data"]["members"][0]["user"], "lp");
    let published = lp
        .request(json!({"op": "publish", "channel": "room", "event": "hi", "data": {"n": 1}, "echo": true}))
        .await;
    assert_eq!(published["data"]["offset"], 1);
    let echoed = lp.next().await;
    assert_eq!(
        (echoed["event"].clone(), echoed["via"].clone()),
        (json!("hi"), json!({"room": 1}))
    );
    gw.publish(json!({"event": "backend", "users": ["lp"]}))
        .await;
    assert_eq!(lp.next().await["via"], json!({"@lp": 1}));
    let presence = lp
        .request(json!({"op": "presence", "channel": "room"}))
        .await;
    assert_eq!(presence["data"]["total"], 1);
    let history = lp
        .request(json!({"op": "history", "channel": "room"}))
        .await;
    assert_eq!(history["data"]["events"][0]["event"], "hi");
    assert_eq!(
        lp.request(json!({"op": "leave", "channel": "room2"})).await["ok"],
        true
    );
    let rpc = lp
        .request(json!({"op": "rpc", "method": "m", "data": {}}))
        .await;
    assert_eq!(rpc["code"], 4500);
    let unknown = lp.request(json!({"op": "nope"})).await;
    assert_eq!(unknown["code"], 4004);
    // Several frames in one send: an array, and `\n`-separated.
    assert_eq!(
        lp.send_text(r#"[{"op":"ping","id":90},{"op":"ping","id":91}]"#)
            .await,
        204
    );
    assert_eq!(
        lp.send_text("{\"op\":\"ping\",\"id\":92}\n{\"op\":\"ping\",\"id\":93}")
            .await,
        204
    );
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(lp.next().await["id"].as_u64().unwrap());
    }
    assert_eq!(ids, [90, 91, 92, 93]);
    assert_eq!(lp.close().await, 204);
    assert_eq!(lp.poll_raw(lp.ack).await.0, 404);
    gw.stop().await;
}

#[tokio::test]
async fn a_lost_poll_response_is_sent_again_by_the_next_poll() {
    let gw = start_with(&[], Some(FAST)).await;
    let mut lp = gw.lp_client("u").await;
    for i in 1..=3 {
        gw.publish(json!({"event": "e", "users": ["u"], "data": i}))
            .await;
    }
    let acked = lp.ack;
    let (_, first) = lp.poll_raw(acked).await;
    // That response never reached the client: it polls again with the same ack.
    let (_, again) = lp.poll_raw(acked).await;
    assert_eq!(first, again, "the same frames, with the same seqs");
    let seqs: Vec<u64> = again
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [acked + 1, acked + 2, acked + 3]);
    // Acknowledged frames are gone.
    let (_, after) = lp.poll_raw(acked + 3).await;
    assert_eq!(after, json!([]));
    let (status, body) = lp.poll_raw(acked + 10).await;
    assert_eq!((status, body["code"].clone()), (400, json!(4000)), "{body}");
    assert_eq!(
        lp.request(json!({"op": "ping"})).await["ok"],
        true,
        "still works"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_newer_poll_ends_the_outstanding_one_with_an_empty_answer() {
    let gw = start_with(
        &[],
        Some(
            FAST.replace("\"1s\"", "\"5s\"")
                .replace("\"2s\"", "\"10s\"")
                .as_str(),
        ),
    )
    .await;
    let lp = gw.lp_client("u").await;
    let ack = lp.ack;
    let parked = {
        let http = reqwest::Client::new();
        let url = format!("http://{}/lp/poll?sid={}&ack={ack}", gw.addr, lp.sid);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let body: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            (body, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let newer = tokio::spawn({
        let (http, url) = (
            reqwest::Client::new(),
            format!("http://{}/lp/poll?sid={}&ack={ack}", gw.addr, lp.sid),
        );
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    let (older, took) = parked.await.unwrap();
    assert_eq!(older, json!([]));
    assert!(
        took < Duration::from_secs(4),
        "ended by the newer poll, not its timeout"
    );
    gw.publish(json!({"event": "e", "users": ["u"]})).await;
    let newer = newer.await.unwrap();
    assert_eq!(
        newer[0]["frame"]["event"], "e",
        "the newer poll gets the frame: {newer}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_abandoned_session_expires_like_a_dropped_connection() {
    let gw = start_with(&[], Some(FAST)).await;
    let mut watcher = gw.client("watcher").await;
    watcher
        .request(json!({"op": "join", "channel": "room"}))
        .await;
    let lp = {
        let mut lp = gw.lp_client("gone").await;
        lp.request(json!({"op": "join", "channel": "room"})).await;
        lp
    };
    assert_eq!(watcher.next().await["op"], "joined");
    // Nobody polls any more: after session_timeout it leaves its channels.
    let left = watcher.next().await;
    assert_eq!(
        (left["op"].clone(), left["user"].clone()),
        (json!("left"), json!("gone"))
    );
    let (_, presence) = gw.get("/api/channels/room/presence").await;
    assert_eq!(presence["members"].as_array().unwrap().len(), 1);
    assert_eq!(
        lp.poll_raw(lp.ack).await.0,
        404,
        "the session is gone: 4404"
    );
    let (status, body) = lp.poll_raw(0).await;
    assert_eq!((status, body["code"].clone()), (404, json!(4404)));
    gw.stop().await;
}

#[tokio::test]
async fn a_server_disconnect_reaches_the_client_in_a_poll_then_the_session_ends() {
    let gw = start_with(&[], Some(FAST)).await;
    let mut lp = gw.lp_client("kicked").await;
    let (_, result) = gw
        .post(
            "/api/disconnect",
            &json!({"user": "kicked", "reason": "bye", "reconnect": false}),
        )
        .await;
    assert_eq!(result["disconnected"], 1);
    let frame = lp.next().await;
    assert_eq!(
        frame,
        json!({"op": "disconnect", "code": 4101, "reason": "bye", "reconnect": false})
    );
    // Once acknowledged, the session is gone.
    let (status, _) = lp.poll_raw(lp.ack).await;
    assert_eq!(status, 404);
    gw.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_the_session_keeps_working() {
    let gw = start_with(&["--max-body-size", "65536"], Some(FAST)).await;
    let mut lp = gw.lp_client("u").await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", gw.addr);

    assert_eq!(lp.send_text("{not json").await, 204);
    assert_eq!(lp.next().await["code"], 4000);
    let many = format!("[{}]", vec![r#"{"op":"ping","id":1}"#; 10_000].join(","));
    assert_eq!(
        lp.send_text(&many).await,
        413,
        "10,000 frames are over the body limit"
    );
    let many = format!("[{}]", vec![r#"{"op":"ping"}"#; 1000].join(","));
    assert_eq!(lp.send_text(&many).await, 204);
    let refused = lp.next().await;
    assert_eq!(refused["code"], 4000);
    assert!(
        refused["error"].as_str().unwrap().contains("at most 256"),
        "{refused}"
    );
    let huge = "x".repeat(100_000);
    assert_eq!(lp.send_text(&huge).await, 413);

    let status = |r: reqwest::Response| r.status().as_u16();
    let no_sid = http
        .post(format!("{base}/lp/send"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(status(no_sid), 400);
    let forged = http
        .get(format!("{base}/lp/poll?sid=forged&ack=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 404);
    assert_eq!(forged.json::<Value>().await.unwrap()["code"], 4404);
    let bad_ack = http
        .get(format!("{base}/lp/poll?sid={}&ack=-1", lp.sid))
        .send()
        .await
        .unwrap();
    assert_eq!(status(bad_ack), 400);

    assert_eq!(
        lp.request(json!({"op": "ping"})).await["ok"],
        true,
        "the session works"
    );
    gw.publish(json!({"event": "after", "users": ["u"]})).await;
    assert_eq!(lp.next().await["event"], "after", "nothing lost");
    gw.stop().await;
}

#[tokio::test]
async fn long_poll_works_cross_origin_for_listed_origins_only() {
    let gw = start_with(&["--cors-origin", "https://app.example"], Some(FAST)).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", gw.addr);
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{base}/lp/send?sid=x"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let open = http
        .post(format!("{base}/lp/open"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    assert_eq!(
        open.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let foreign = http
        .post(format!("{base}/lp/open"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    assert!(foreign
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    gw.stop().await;
}

#[tokio::test]
async fn a_session_that_falls_behind_gets_4102_in_its_next_poll() {
    let gw = start_with(&["--client-queue", "16"], Some(FAST)).await;
    let mut lp = gw.lp_client("sleepy").await;
    // Nobody polls while 40 events are queued to a 16-frame queue.
    for i in 0..40 {
        gw.publish(json!({"event": "e", "users": ["sleepy"], "data": i}))
            .await;
    }
    let frame = lp.next().await;
    assert_eq!(
        (
            frame["op"].clone(),
            frame["code"].clone(),
            frame["reconnect"].clone()
        ),
        (json!("disconnect"), json!(4102), json!(true)),
        "{frame}"
    );
    let (status, _) = lp.poll_raw(lp.ack).await;
    assert_eq!(status, 404, "acknowledged: the session is gone");
    gw.stop().await;
}

/// A poll that stays parked past a few milliseconds is an idle client's, and is answered
/// outside hyper (its connection taken out, so an idle session holds none of hyper's
/// buffers). The answer is still plain HTTP/1.1 on the poll's own connection, which then
/// serves the next requests.
#[tokio::test]
async fn a_long_parked_poll_is_answered_on_its_connection_which_then_serves_on() {
    let config = "[longpoll]\npoll_timeout = \"3s\"\nsession_timeout = \"8s\"\n";
    let gw = start_with(&[], Some(config)).await;
    let lp = gw.lp_client("parker").await;
    let mut raw = RawHttp::connect(gw.addr).await;
    let poll = |ack: u64| format!("/lp/poll?sid={}&ack={ack}", lp.sid);
    let items = |body: &str| serde_json::from_str::<Vec<Value>>(body).expect("an array");

    // Parked past the takeover, then woken by an event: answered with a chunked body (an
    // answer from hyper has a length).
    raw.get(&poll(lp.ack)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.publish(json!({"event": "late", "users": ["parker"]}))
        .await;
    let (head, body) = raw.response().await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let woken = items(&body);
    assert_eq!(woken.len(), 1, "{body}");
    assert_eq!(woken[0]["frame"]["event"], "late");
    let seq = woken[0]["seq"].as_u64().unwrap();

    // The same connection again: nothing wakes this one, so it answers [] at the timeout.
    raw.get(&poll(seq)).await;
    let (head, body) = raw.response().await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert_eq!(body, "[]");

    // Still the same connection: a send, then a poll its reply answers at once, in hyper.
    let ping = r#"{"op":"ping","id":77}"#;
    raw.post(&format!("/lp/send?sid={}", lp.sid), ping).await;
    let (head, _) = raw.response().await;
    assert!(head.starts_with("http/1.1 204"), "{head}");
    raw.get(&poll(seq)).await;
    let (head, body) = raw.response().await;
    assert!(head.contains("content-length"), "{head}");
    let replied = items(&body);
    assert_eq!(replied[0]["frame"]["id"], 77, "{body}");
    let seq = replied[0]["seq"].as_u64().unwrap();

    // A newer poll, on another connection, ends a taken one with [].
    raw.get(&poll(seq)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (older, (status, newer)) = tokio::join!(raw.response(), lp.poll_raw(seq));
    assert_eq!(older.1, "[]", "{older:?}");
    assert_eq!((status, newer), (200, json!([])));
    gw.stop().await;
}
