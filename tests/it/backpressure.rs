//! The `[[channels]]` backpressure policies against a client that stops reading: `latest`
//! keeps the newest event of a ticker, `drop_oldest` drops old events and says which, and
//! neither cuts the connection the way `disconnect` (the default, 4102) does.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{start_with, Client};

const CONFIG: &str = "client_queue = 16\n\
    [[channels]]\npattern = \"ticker\"\nbackpressure = \"latest\"\n\
    [[channels]]\npattern = \"feed\"\nbackpressure = \"drop_oldest\"\n";

const EVENTS: u64 = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_keeps_the_newest_ticks_and_learns_what_the_feed_dropped() {
    let gateway = start_with(&[], Some(CONFIG)).await;
    let mut client = Client::connect_small_buffer(gateway.addr).await;
    let reply = client
        .request(
            json!({"op": "ident", "token": gateway.token("github|7", None),
                        "channels": {"ticker": {}, "feed": {}}}),
        )
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    // The client reads nothing while both channels get EVENTS events each.
    for start in (0..EVENTS).step_by(500) {
        let batch: Vec<Value> = (start..start + 500)
            .flat_map(|n| {
                [
                    json!({"event": "tick", "channels": ["ticker"], "data": {"n": n}}),
                    json!({"event": "item", "channels": ["feed"], "data": {"n": n}}),
                ]
            })
            .collect();
        let (status, _) = gateway.post("/api/publish", &json!(batch)).await;
        assert_eq!(status, 200);
    }
    let (mut ticks, mut items, mut missed, mut missed_offsets) = (Vec::new(), Vec::new(), 0, 0);
    while ticks.last() != Some(&EVENTS) || items.last() != Some(&EVENTS) {
        let frame = client
            .try_next(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("ended early: ticks {ticks:?} items {}", items.len()));
        assert_ne!(
            frame["op"], "disconnect",
            "no policy cuts the client: {frame}"
        );
        match (
            frame["op"].as_str(),
            frame["via"]["ticker"].as_u64(),
            frame["via"]["feed"].as_u64(),
        ) {
            (Some("event"), Some(offset), _) => ticks.push(offset),
            (Some("event"), _, Some(offset)) => items.push(offset),
            (Some("missed"), _, _) => {
                assert_eq!(frame["channel"], "feed");
                let (from, to) = (
                    frame["from"].as_u64().unwrap(),
                    frame["to"].as_u64().unwrap(),
                );
                missed += frame["count"].as_u64().unwrap();
                missed_offsets += to - from + 1;
                assert!(
                    items.last().is_none_or(|&last| last < from),
                    "reported in place: {frame}"
                );
            }
            _ => {}
        }
    }
    let increasing = |v: &[u64]| v.windows(2).all(|w| w[0] < w[1]);
    println!(
        "stalled client, {EVENTS} events per channel, client_queue 16: ticker (latest) delivered {}, \
         feed (drop_oldest) delivered {} and reported {missed} missed",
        ticks.len(),
        items.len()
    );
    assert!(increasing(&ticks) && increasing(&items));
    assert!(ticks.len() < EVENTS as usize, "ticks coalesced");
    assert_eq!(
        items.len() as u64 + missed,
        EVENTS,
        "every feed event delivered or reported"
    );
    assert_eq!(
        missed, missed_offsets,
        "missed ranges hold no delivered event"
    );
    let metrics = gateway.metrics().await;
    assert!(
        !metrics.contains("herald_events_dropped_total 0\n"),
        "counted"
    );
    assert!(
        !metrics.contains("herald_events_coalesced_total 0\n"),
        "counted"
    );
    gateway.stop().await;
}
