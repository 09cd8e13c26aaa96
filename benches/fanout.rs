//! Micro-benchmarks of the hot path, each reported per operation:
//! - `fanout`: one event published to a channel with 1,000 or 10,000 member connections,
//!   until every member's outbound queue holds the frame (elements = deliveries);
//! - `event`: serializing an event once (the shared prefix) and a frame from it (with `via`);
//! - `compact`: making a payload safe for `\n`-separated frames, compact and pretty-printed;
//! - `batch`: joining queued frames into one WebSocket message (elements = frames);
//! - `deflate`: permessage-deflate of a batch of 6 chat events (1.5 KiB) and of a full 16 KiB batch,
//!   without context takeover (the default) and with it (throughput = bytes before
//!   compression; the compressed sizes are printed);
//! - `registry`: a connection joining and leaving a channel that has 10,000 members.
//!
//! Run with `cargo bench --bench fanout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use herald::auth::Auth;
use herald::hub::{ChannelRule, EventBody, Hub, HubConfig};
use herald::metrics::Metrics;
use herald::pattern::Pattern;
use herald_connector_api::{
    ChannelName, ClientSession, CompactJson, Envelope, Gateway, Outbox, OutboxLimits, PeerInfo,
    SessionHub,
};
use serde_json::value::RawValue;

const SECRET: &str = "bench-secret";

fn hub() -> Hub {
    let rule = Arc::new(ChannelRule {
        pattern: Pattern::new("*"),
        client_publish: false,
        join_leave_notices: false,
        history_size: 100,
        history_max_bytes: 4 << 20,
        history_ttl: Duration::from_secs(3600),
        backpressure: Default::default(),
    });
    let config = HubConfig {
        node: Arc::from("bench"),
        auth: Auth::new(SECRET),
        allow_anonymous: false,
        auth_timeout: Duration::from_secs(3600),
        default_channels: Vec::new(),
        rules: Vec::new(),
        default_rule: rule,
        outbox: OutboxLimits {
            frames: 1024,
            bytes: 4 << 20,
            backlog_frames: 10_000,
            backlog_bytes: 16 << 20,
        },
        max_connections: 1_000_000,
        max_channels_per_connection: 128,
        rates: herald::hub::RateLimits {
            frames_per_second: u32::MAX,
            publishes_per_second: u32::MAX,
        },
        trusted_proxies: Default::default(),
        max_connections_per_ip: 0,
        max_connections_per_user: 0,
        max_revocations: 1000,
        reconnect_spread: Duration::from_secs(5),
        accept_ramp: Arc::new(herald::hub::AcceptRamp::new(Duration::ZERO, 1)),
        max_channels: 1_000_000,
        max_envelope_targets: 10_000,
        max_presence_members: 1000,
        dedup_window: Duration::from_secs(60),
        dedup_max_keys: 100_000,
    };
    Hub::new(config, Arc::new(Metrics::new()))
}

/// `n` identified connections in channel `room`, their outboxes emptied.
fn members(hub: &Hub, n: usize) -> Vec<(Box<dyn ClientSession>, Outbox)> {
    let auth = Auth::new(SECRET);
    (0..n)
        .map(|i| {
            let (mut session, mut outbox) = hub
                .open(PeerInfo {
                    transport: "bench",
                    remote: None,
                    forwarded: None,
                    event_meta: false,
                })
                .expect("open");
            let token = auth.mint(&format!("u{i}"), None, Duration::from_secs(3600));
            session.handle_text(&format!(
                r#"{{"op":"ident","token":"{token}","channels":{{"room":{{}}}}}}"#
            ));
            while outbox.try_recv().is_some() {}
            (session, outbox)
        })
        .collect()
}

fn fan_out(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = runtime.enter();
    let mut group = c.benchmark_group("fanout");
    for n in [1_000usize, 10_000] {
        let hub = hub();
        let mut conns = members(&hub, n);
        let envelope = Envelope::from_json(br#"{"event":"MESSAGE:NEW","channels":["room"],"data":{"msg":"What is the airspeed velocity of an unladen swallow?"}}"#)
            .expect("envelope");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("publish_to_{n}_queues"), |b| {
            b.iter_custom(|iterations| {
                let mut spent = Duration::ZERO;
                for _ in 0..iterations {
                    let start = Instant::now();
                    futures_util::FutureExt::now_or_never(hub.publish(envelope.clone()))
                        .expect("a single node answers at once")
                        .expect("publish");
                    spent += start.elapsed();
                    // Drain outside the timing, as the connections' writers would.
                    for (_, outbox) in &mut conns {
                        while outbox.try_recv().is_some() {}
                    }
                }
                spent
            });
        });
    }
    group.finish();
}

fn event_serialization(c: &mut Criterion) {
    let data: CompactJson = serde_json::from_str(
        r#"{"msg":"What is the airspeed velocity of an unladen swallow?","n":42}"#,
    )
    .expect("json");
    let chat = ChannelName::parse("chat").expect("name");
    let alice = ChannelName::parse("@alice").expect("name");
    let mut group = c.benchmark_group("event");
    group.throughput(Throughput::Elements(1));
    group.bench_function("serialize_once", |b| {
        b.iter(|| EventBody::new("MESSAGE:NEW", &data, None))
    });
    let body = EventBody::new("MESSAGE:NEW", &data, None);
    group.bench_function("frame_with_via", |b| {
        b.iter(|| body.frame([(&chat, 42), (&alice, 7)]))
    });
    group.finish();
}

/// What compacting `data` costs per envelope: nothing to drop (the usual, compact payload),
/// and a pretty-printed one that must be rewritten.
fn data_compaction(c: &mut Criterion) {
    let value = serde_json::json!({
        "msg": "What is the airspeed velocity of an unladen swallow?",
        "n": 42, "tags": ["a", "b", "c"], "user": {"id": "auth0|5f7c8ec7", "name": "Arthur"}
    });
    let compact = serde_json::to_string(&value).expect("json");
    let pretty = serde_json::to_string_pretty(&value).expect("json");
    let mut group = c.benchmark_group("compact");
    group.throughput(Throughput::Elements(1));
    for (name, text) in [("already_compact", &compact), ("pretty_printed", &pretty)] {
        let raw = RawValue::from_string(text.clone()).expect("json");
        group.bench_function(name, |b| {
            b.iter_batched(|| raw.clone(), CompactJson::new, BatchSize::SmallInput)
        });
    }
    group.finish();
}

fn frame_batching(c: &mut Criterion) {
    let data: CompactJson = serde_json::from_str(r#"{"msg":"hello","n":42}"#).expect("json");
    let chat = ChannelName::parse("chat").expect("name");
    let frame = EventBody::new("MESSAGE:NEW", &data, None).frame([(&chat, 1)]);
    let mut group = c.benchmark_group("batch");
    for frames in [1usize, 64] {
        group.throughput(Throughput::Elements(frames as u64));
        group.bench_function(format!("{frames}_frames_into_messages"), |b| {
            b.iter_batched(
                || vec![frame.clone(); frames],
                |mut batch: Vec<Bytes>| {
                    while !batch.is_empty() {
                        std::hint::black_box(herald_connector_ws::next_message(&mut batch));
                    }
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn deflate(c: &mut Criterion) {
    use herald_connector_ws::{Compressor, Deflate};
    use tokio_tungstenite::tungstenite::Message;
    let chat = ChannelName::parse("chat").expect("name");
    let words = [
        "hello", "anyone", "around", "tonight", "for", "the", "release", "notes", "?",
    ];
    let frames: Vec<Bytes> = (0..200u64)
        .map(|i| {
            let text: Vec<&str> = (0..6)
                .map(|w| words[(i as usize * 7 + w * 3) % words.len()])
                .collect();
            let data: CompactJson = serde_json::from_value(serde_json::json!({
                "id": format!("msg_{:08x}", i * 2654435761 % 4294967296),
                "user": format!("auth0|{:024x}", i * 40503),
                "text": text.join(" "),
                "ts": 1_764_600_000_000u64 + i * 1733,
            }))
            .expect("json");
            EventBody::new("MESSAGE:NEW", &data, None).frame([(&chat, i + 1)])
        })
        .collect();
    let six = herald_connector_ws::next_message(&mut frames[..6].to_vec());
    let batch = herald_connector_ws::next_message(&mut frames.clone());
    let mut group = c.benchmark_group("deflate");
    for takeover in [false, true] {
        let agreed = Deflate {
            server_takeover: takeover,
            client_takeover: takeover,
        };
        let mode = if takeover {
            "context_takeover"
        } else {
            "no_context_takeover"
        };
        for (name, text) in [("6_events", &six), ("16KiB_batch", &batch)] {
            let mut compressor = Compressor::new(&agreed);
            let wire = match compressor.text(text.clone()) {
                Message::Frame(frame) => frame.payload().len(),
                other => other.len(),
            };
            println!(
                "deflate {mode} {name}: {} bytes -> {wire} on the wire",
                text.len()
            );
            group.throughput(Throughput::Bytes(text.len() as u64));
            group.bench_function(format!("{mode}/{name}"), |b| {
                b.iter(|| std::hint::black_box(compressor.text(text.clone())))
            });
        }
    }
    group.finish();
}

fn registry_join_leave(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = runtime.enter();
    let hub = hub();
    let _members = members(&hub, 10_000);
    let (mut session, mut outbox) = members(&hub, 1).pop().expect("one member");
    let mut group = c.benchmark_group("registry");
    group.throughput(Throughput::Elements(1));
    group.bench_function("join_and_leave_a_10000_member_channel", |b| {
        b.iter(|| {
            session.handle_text(r#"{"op":"join","channel":"room2"}"#);
            session.handle_text(r#"{"op":"join","channel":"room"}"#);
            session.handle_text(r#"{"op":"leave","channel":"room"}"#);
            session.handle_text(r#"{"op":"leave","channel":"room2"}"#);
            while outbox.try_recv().is_some() {}
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5));
    targets = fan_out, event_serialization, data_compaction, frame_batching, deflate, registry_join_leave
}
criterion_main!(benches);
