//! The RabbitMQ connector against the machine's real RabbitMQ, each test on its own exchange,
//! queue and connection name: envelopes, replies, malformed messages dead-lettered and
//! counted, and nothing lost or repeated across forced connection closes and a Herald
//! restart. The fault test prints its figures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, ExchangeKind};
use serde_json::{json, Value};

use crate::support::amqp::Rabbit;
use crate::support::{collect, start_with, tally, wait_for, Client, Gateway};

async fn joined(gw: &Gateway, channel: &str) -> Client {
    let mut client = gw.client("reader").await;
    let reply = client
        .request(json!({"op": "join", "channel": channel}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    client
}

/// A queue of the test's own: its name and a consumer on it.
async fn queue(rabbit: &Rabbit, name: &str) -> lapin::Consumer {
    rabbit
        .channel
        .queue_declare(
            ShortString::from(name),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    rabbit
        .channel
        .basic_consume(
            ShortString::from(name),
            ShortString::from(format!("{name}-reader")),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap()
}

async fn next_body(consumer: &mut lapin::Consumer) -> (Value, BasicProperties) {
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a message in time")
        .expect("a message")
        .expect("a delivery");
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    let body = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
    (body, delivery.properties)
}

fn counter(metrics: &str, name: &str, reason: Option<&str>) -> u64 {
    let labels = match reason {
        Some(r) => format!("{{connector=\"amqp\",reason=\"{r}\"}}"),
        None => "{connector=\"amqp\"}".to_owned(),
    };
    let prefix = format!("herald_connector_{name}_total{labels} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn amqp_envelopes_replies_and_malformed_messages() {
    let rabbit = Rabbit::new("basic").await;
    // A dead-letter exchange and a queue catching what Herald rejects.
    let dlx = format!("{}.dlx", rabbit.tag);
    let dead = format!("{}.dead", rabbit.tag);
    rabbit
        .channel
        .exchange_declare(
            ShortString::from(dlx.as_str()),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut dead_letters = queue(&rabbit, &dead).await;
    rabbit
        .channel
        .queue_bind(
            ShortString::from(dead.as_str()),
            ShortString::from(dlx.as_str()),
            ShortString::from(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let config = rabbit.section(&format!("dead_letter_exchange = \"{dlx}\"\n"));
    let gw = start_with(&[], Some(&config)).await;
    gw.wait_readyz(200).await;
    let mut client = joined(&gw, "chat").await;

    // A pretty-printed envelope asking for a reply.
    let replies = format!("{}.replies", rabbit.tag);
    let mut reply_queue = queue(&rabbit, &replies).await;
    let envelope = serde_json::to_vec_pretty(&json!({
        "event": "MESSAGE:NEW", "channels": ["chat"], "data": {"msg": "hello"}
    }))
    .unwrap();
    let asking = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_reply_to(replies.as_str().into())
        .with_correlation_id("c-1".into());
    rabbit.publish(&envelope, asking).await;
    let event = client.event().await;
    assert_eq!(event["data"]["msg"], "hello", "{event}");
    let (answer, properties) = next_body(&mut reply_queue).await;
    assert_eq!(answer["offsets"]["chat"], 1, "{answer}");
    assert_eq!(
        properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("c-1")
    );

    // Malformed: each rejected without requeue, dead-lettered, counted.
    let json = BasicProperties::default().with_content_type("application/json".into());
    rabbit.publish(b"{not json", json.clone()).await;
    rabbit.publish(br#"{"event":"e"}"#, json.clone()).await;
    rabbit.publish(&vec![b' '; 10 << 20], json.clone()).await;
    let xml = BasicProperties::default().with_content_type("application/xml".into());
    rabbit
        .publish(br#"{"event":"e","channels":["chat"]}"#, xml)
        .await;
    for _ in 0..4 {
        next_body(&mut dead_letters).await;
    }
    rabbit
        .publish(br#"{"event":"after","channels":["chat"]}"#, json)
        .await;
    assert_eq!(
        client.event().await["event"],
        "after",
        "Herald keeps serving"
    );

    let metrics = gw.metrics().await;
    assert_eq!(counter(&metrics, "received", None), 6, "{metrics}");
    assert_eq!(counter(&metrics, "accepted", None), 2, "{metrics}");
    assert_eq!(
        counter(&metrics, "rejected", Some("invalid")),
        2,
        "{metrics}"
    );
    assert_eq!(
        counter(&metrics, "rejected", Some("too_large")),
        1,
        "{metrics}"
    );
    assert_eq!(
        counter(&metrics, "rejected", Some("content_type")),
        1,
        "{metrics}"
    );
    gw.stop().await;
    for name in [replies] {
        let _ = rabbit
            .channel
            .queue_delete(ShortString::from(name), Default::default())
            .await;
    }
    rabbit.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_loses_nothing_across_forced_closes_and_a_herald_restart() {
    const TOTAL: usize = 100_000;
    let rabbit = Rabbit::new("faults").await;
    let bounds = "client_queue = 200000\nclient_queue_bytes = 200000000\n\
                  recovery_max_events = 200000\nrecovery_max_bytes = 200000000\n";
    let rules =
        "[[channels]]\npattern = \"q\"\nhistory_size = 200000\nhistory_max_bytes = 200000000\n";
    let config = format!("{bounds}{}{rules}", rabbit.section(""));

    let first = start_with(&[], Some(&config)).await;
    first.wait_readyz(200).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::with_capacity(TOTAL)));
    let count = Arc::new(AtomicUsize::new(0));
    let mut client = joined(&first, "q").await;
    let reader = {
        let (seen, count) = (seen.clone(), count.clone());
        tokio::spawn(async move {
            collect(&mut client, &seen, &count, TOTAL, |data| data["n"].as_u64()).await;
            client
        })
    };
    // The publisher runs beside the faults, with confirms awaited once per thousand (they
    // come in order).
    let (channel, exchange) = (rabbit.channel.clone(), rabbit.tag.clone());
    let publisher = tokio::spawn(async move {
        let mut confirms = Vec::with_capacity(1000);
        for n in 0..TOTAL {
            let envelope =
                json!({"event": "n", "channels": ["q"], "data": {"n": n}, "key": format!("k{n}")});
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(format!("m{n}").into());
            let confirm = channel
                .basic_publish(
                    ShortString::from(exchange.as_str()),
                    ShortString::from("publish"),
                    Default::default(),
                    &serde_json::to_vec(&envelope).unwrap(),
                    properties,
                )
                .await
                .expect("publish");
            confirms.push(confirm);
            if confirms.len() == 1000 {
                for confirm in confirms.drain(..) {
                    confirm.await.expect("confirmed");
                }
            }
        }
        for confirm in confirms {
            confirm.await.expect("confirmed");
        }
    });
    let mut closes = 0;
    for at in [TOTAL / 5, TOTAL * 2 / 5] {
        wait_for(&count, at).await;
        closes += rabbit.close_herald_connections();
    }
    wait_for(&count, TOTAL * 3 / 5).await;
    let recognised = counter(&first.metrics().await, "duplicates", None);
    first.stop().await;
    drop(reader.await.unwrap());
    let before_restart = count.load(Ordering::Relaxed);

    // The rest waits in the queue; a new Herald takes it, a client recovers it from history.
    let second = start_with(&[], Some(&config)).await;
    second.wait_readyz(200).await;
    let mut client = second.client("reader").await;
    let reply = client
        .request(json!({"op": "join", "channel": "q", "since": {"offset": 0}}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    collect(&mut client, &seen, &count, TOTAL, |data| data["n"].as_u64()).await;
    publisher.await.unwrap();
    client.expect_nothing(Duration::from_millis(300)).await;

    let seen = seen.lock().unwrap().clone();
    let recognised = recognised + counter(&second.metrics().await, "duplicates", None);
    let faults = format!(
        "connections force-closed {closes}, Herald restarts 1 (after {before_restart}); \
         redeliveries recognised and not delivered again {recognised}"
    );
    let verdict = tally("amqp", TOTAL, &seen, &faults);
    assert!(
        closes >= 2,
        "Herald's connections were found and closed: {closes}"
    );
    assert_eq!(verdict, (0, 0, 0), "lost, duplicated, out of order");
    second.stop().await;
    rabbit.clean_up().await;
}

#[tokio::test]
async fn amqp_activity_goes_to_an_exchange() {
    let rabbit = Rabbit::new("events").await;
    let exchange = format!("{}.events", rabbit.tag);
    let rules = "[[channels]]\npattern = \"room\"\nclient_publish = true\n";
    let config = format!(
        "{rules}{}",
        rabbit.section(&format!("events_exchange = \"{exchange}\"\n"))
    );
    let gw = start_with(&[], Some(&config)).await;
    gw.wait_readyz(200).await;
    // Herald declared the exchange; a queue of the test's own hears everything on it.
    let heard = format!("{}.heard", rabbit.tag);
    let mut events = queue(&rabbit, &heard).await;
    rabbit
        .channel
        .queue_bind(
            ShortString::from(heard.as_str()),
            ShortString::from(exchange.as_str()),
            ShortString::from("#"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let mut client = gw.client("auth0|carol").await;
    let reply = client
        .request(json!({"op": "join", "channel": "room"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let reply = client
        .request(json!({"op": "publish", "channel": "room", "event": "said", "data": 1}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    client.close().await;
    let mut kinds = Vec::new();
    for _ in 0..5 {
        let (body, _) = next_body(&mut events).await;
        assert_eq!(body["user"], "auth0|carol", "{body}");
        kinds.push(body["kind"].as_str().unwrap().to_owned());
    }
    assert_eq!(kinds, ["connect", "join", "publish", "leave", "disconnect"]);
    gw.stop().await;
    let _ = rabbit
        .channel
        .queue_delete(ShortString::from(heard), Default::default())
        .await;
    let _ = rabbit
        .channel
        .exchange_delete(ShortString::from(exchange), Default::default())
        .await;
    rabbit.clean_up().await;
}
