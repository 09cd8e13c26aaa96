//! The fan-out path: one event published to a channel with 10,000 member connections, from
//! the publish call until every member's outbound queue holds the frame. Reported per
//! recipient (criterion's "elements" are deliveries).
//!
//! Run with `cargo bench --bench fanout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald::auth::Auth;
use herald::hub::{ChannelRule, Hub, HubConfig};
use herald::metrics::Metrics;
use herald::pattern::Pattern;
use herald_connector_api::{ClientSession, Envelope, Gateway, Outbox, PeerInfo, SessionHub};

const SECRET: &str = "bench-secret";

fn hub() -> Hub {
    let rule = Arc::new(ChannelRule {
        pattern: Pattern::new("*"),
        client_publish: false,
        join_leave_notices: false,
        history_size: 100,
        history_ttl: Duration::from_secs(3600),
    });
    let config = HubConfig {
        node: Arc::from("bench"),
        auth: Auth::new(SECRET),
        allow_anonymous: false,
        auth_timeout: Duration::from_secs(3600),
        default_channels: Vec::new(),
        rules: Vec::new(),
        default_rule: rule,
        client_queue: 1024,
        max_connections: 1_000_000,
        max_channels_per_connection: 128,
        dedup_window: Duration::from_secs(60),
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
                })
                .expect("open");
            let token = auth.mint(&format!("u{i}"), None, Duration::from_secs(3600));
            session.handle_text(&format!(
                r#"{{"op":"ident","token":"{token}","channels":{{"room":{{}}}}}}"#
            ));
            while outbox.frames.try_recv().is_some() {}
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
                    hub.publish(envelope.clone()).expect("publish");
                    spent += start.elapsed();
                    // Drain outside the timing, as the connections' writers would.
                    for (_, outbox) in &mut conns {
                        while outbox.frames.try_recv().is_some() {}
                    }
                }
                spent
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5));
    targets = fan_out
}
criterion_main!(benches);
