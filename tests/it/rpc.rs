//! Clients' `rpc` through NATS (a real `nats-server`) and through HTTP (a real local server):
//! the round trip, no responder, a timeout, a backend error, the in-flight bound, and the
//! fan-out going on while a call waits.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::nats::NatsServer;
use crate::support::{start_with, Client, Gateway};

/// Answers like a backend would: `echo` returns what it got, `fail` an error, `slow` never.
fn answer(call: &Value) -> Option<Value> {
    match call["method"].as_str() {
        Some("echo") => {
            Some(json!({"got": call["data"], "user": call["user"], "conn": call["conn"]}))
        }
        Some("fail") => Some(json!({"error": "no such order"})),
        _ => None,
    }
}

async fn responder(nats: &NatsServer) -> async_nats::Client {
    let client = async_nats::connect(nats.url()).await.expect("nats");
    for method in ["echo", "fail", "slow"] {
        let mut calls = client
            .subscribe(format!("herald.rpc.{method}"))
            .await
            .unwrap();
        let replier = client.clone();
        tokio::spawn(async move {
            while let Some(message) = calls.next().await {
                let call: Value = serde_json::from_slice(&message.payload).unwrap();
                if let (Some(reply), Some(body)) = (message.reply, answer(&call)) {
                    let _ = replier.publish(reply, body.to_string().into()).await;
                }
            }
        });
    }
    // The server takes the subscriptions in its own time: ask until one answers, so no
    // call of the test meets "no responders".
    for _ in 0..200 {
        let probe = json!({"method": "echo"}).to_string();
        if client
            .request("herald.rpc.echo", probe.into())
            .await
            .is_ok()
        {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the responders never answered");
}

/// The calls every backend must answer the same way.
async fn common_calls(gw: &Gateway, client: &mut Client) {
    let reply = client
        .request(json!({"op": "rpc", "method": "echo", "data": {"x": 1}}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["data"]["data"]["got"], json!({"x": 1}), "{reply}");
    assert_eq!(reply["data"]["data"]["user"], "alice", "{reply}");
    assert!(reply["data"]["data"]["conn"]
        .as_str()
        .unwrap()
        .starts_with("c_"));

    let reply = client
        .request(json!({"op": "rpc", "method": "fail", "data": null}))
        .await;
    assert_eq!(
        (reply["code"].clone(), reply["error"].clone()),
        (json!(4500), json!("no such order")),
        "{reply}"
    );

    let reply = client
        .request(json!({"op": "rpc", "method": "bad method", "data": 1}))
        .await;
    assert_eq!(reply["code"], 4000, "{reply}");

    // Two calls may wait at once; the third is refused at once, and events keep flowing
    // while the two wait for their timeout.
    for id in [100, 101, 102] {
        client
            .send(json!({"op": "rpc", "id": id, "method": "slow", "data": id}))
            .await;
    }
    let third = client.reply_to(102).await;
    assert_eq!(third["code"], 4029, "{third}");
    gw.publish(json!({"event": "during", "users": ["alice"]}))
        .await;
    let event = client.next().await;
    assert_eq!(
        event["event"], "during",
        "the event is not held behind the calls: {event}"
    );
    for id in [100, 101] {
        let reply = client.reply_to(id).await;
        assert_eq!(reply["code"], 4504, "{reply}");
    }
    let metrics = gw.metrics().await;
    assert!(metrics.contains("limit=\"rpc_max_in_flight\""), "{metrics}");
}

#[tokio::test]
async fn rpc_over_nats() {
    let nats = NatsServer::start().await;
    let config = format!(
        "[nats]\nurl = \"{}\"\n[rpc]\nbackend = \"nats\"\ntimeout = \"500ms\"\nmax_in_flight = 2\n",
        nats.url()
    );
    let gw = start_with(&[], Some(&config)).await;
    gw.wait_readyz(200).await;
    let _backend = responder(&nats).await;
    let mut client = gw.client("alice").await;
    common_calls(&gw, &mut client).await;

    let reply = client
        .request(json!({"op": "rpc", "method": "nobody.home", "data": 1}))
        .await;
    assert_eq!(reply["code"], 4504, "no responder: {reply}");
    gw.stop().await;
}

/// A backend over HTTP: POST /rpc with the call, answers as [`answer`]; `boom` is a 500.
async fn http_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::routing::post;
    async fn rpc(axum::Json(call): axum::Json<Value>) -> axum::response::Response {
        use axum::response::IntoResponse;
        if call["method"] == "boom" {
            return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response();
        }
        match answer(&call) {
            Some(body) => axum::Json(body).into_response(),
            None => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                axum::Json(json!(null)).into_response()
            }
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/rpc", post(rpc));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

#[tokio::test]
async fn rpc_over_http() {
    let (addr, backend) = http_backend().await;
    let config = format!(
        "[rpc]\nbackend = \"http\"\nurl = \"http://{addr}/rpc\"\ntimeout = \"500ms\"\nmax_in_flight = 2\n"
    );
    let gw = start_with(&[], Some(&config)).await;
    let mut client = gw.client("alice").await;
    common_calls(&gw, &mut client).await;

    let reply = client
        .request(json!({"op": "rpc", "method": "boom", "data": 1}))
        .await;
    assert_eq!(reply["code"], 4500, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("500"), "{reply}");
    gw.stop().await;

    // Nobody listening: 4504. A bound socket that does not listen refuses connections, and
    // keeps the port from going to another test meanwhile.
    backend.abort();
    let refusing = tokio::net::TcpSocket::new_v4().unwrap();
    refusing.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = refusing.local_addr().unwrap();
    let config = format!("[rpc]\nbackend = \"http\"\nurl = \"http://{closed}/rpc\"\n");
    let gw = start_with(&[], Some(&config)).await;
    let mut client = gw.client("alice").await;
    let reply = client
        .request(json!({"op": "rpc", "method": "echo", "data": 1}))
        .await;
    assert_eq!(reply["code"], 4504, "{reply}");
    gw.stop().await;
}

#[tokio::test]
async fn rpc_without_a_backend_is_4500() {
    let gw = start_with(&[], None).await;
    let mut client = gw.client("alice").await;
    let reply = client
        .request(json!({"op": "rpc", "method": "echo", "data": 1}))
        .await;
    assert_eq!(reply["code"], 4500, "{reply}");
    gw.stop().await;
}
