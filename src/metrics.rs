//! Prometheus metrics: connections, events in and out, slow-consumer cuts, bounds hit.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use herald_connector_api::{ConnectorCounts, ConnectorSet};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The label set of [`Metrics::limit_hits`]: `limit` = the config key of the bound.
type LimitLabel = [(&'static str, &'static str); 1];

/// Counters shared by the hub and the HTTP layer; updating one is a relaxed atomic add.
pub struct Metrics {
    registry: Registry,
    /// Open client connections.
    pub connections: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Connections opened since start.
    pub connections_opened: Counter<u64, AtomicU64>,
    /// Events accepted for delivery (backend and client publishes).
    pub events_in: Counter<u64, AtomicU64>,
    /// Event frames queued to connections.
    pub events_out: Counter<u64, AtomicU64>,
    /// Connections cut with 4102 because their outbound queue overflowed.
    pub slow_consumer_cuts: Counter<u64, AtomicU64>,
    /// Publishes answered from the idempotency window instead of delivered again.
    pub duplicates_suppressed: Counter<u64, AtomicU64>,
    /// Queued events dropped for newer ones (`backpressure = "drop_oldest"`).
    pub events_dropped: Counter<u64, AtomicU64>,
    /// Queued events replaced by a newer one of their channel (`backpressure = "latest"`).
    pub events_coalesced: Counter<u64, AtomicU64>,
    /// Publishes refused (503) because the cluster log could not store them.
    pub cluster_publish_failures: Counter<u64, AtomicU64>,
    /// Recoveries that returned every missed event.
    pub recoveries_ok: Counter<u64, AtomicU64>,
    /// Recoveries that could not (epoch changed or events left history).
    pub recoveries_failed: Counter<u64, AtomicU64>,
    /// Recoveries refused because the missed events exceed the recovery budget.
    pub recoveries_too_large: Counter<u64, AtomicU64>,
    /// Times a configured bound was hit, by the bound's config key.
    limit_hits: Family<LimitLabel, Counter<u64, AtomicU64>>,
    /// TLS certificate reloads, by `result` (`ok`, `kept_old`).
    tls_reloads: Family<LimitLabel, Counter<u64, AtomicU64>>,
    /// The inbound connectors, whose counters are read at each scrape.
    pub connectors: Arc<ConnectorSet>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, registered under the `herald_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let m = Self {
            connections: Gauge::default(),
            connections_opened: Counter::default(),
            events_in: Counter::default(),
            events_out: Counter::default(),
            slow_consumer_cuts: Counter::default(),
            duplicates_suppressed: Counter::default(),
            cluster_publish_failures: Counter::default(),
            events_dropped: Counter::default(),
            events_coalesced: Counter::default(),
            recoveries_ok: Counter::default(),
            recoveries_failed: Counter::default(),
            recoveries_too_large: Counter::default(),
            limit_hits: Family::default(),
            tls_reloads: Family::default(),
            connectors: Arc::default(),
            registry: Registry::default(),
        };
        registry.register_collector(Box::new(ConnectorCollector(m.connectors.clone())));
        registry.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        registry.register(
            "connections_opened",
            "Client connections opened",
            m.connections_opened.clone(),
        );
        registry.register(
            "events_in",
            "Events accepted for delivery",
            m.events_in.clone(),
        );
        registry.register(
            "events_out",
            "Event frames queued to connections",
            m.events_out.clone(),
        );
        registry.register(
            "slow_consumer_cuts",
            "Connections closed with 4102 because their outbound queue overflowed",
            m.slow_consumer_cuts.clone(),
        );
        registry.register(
            "duplicates_suppressed",
            "Publishes answered from the idempotency window",
            m.duplicates_suppressed.clone(),
        );
        registry.register(
            "events_dropped",
            "Queued events dropped for newer ones (backpressure drop_oldest)",
            m.events_dropped.clone(),
        );
        registry.register(
            "events_coalesced",
            "Queued events replaced by a newer one of their channel (backpressure latest)",
            m.events_coalesced.clone(),
        );
        registry.register(
            "cluster_publish_failures",
            "Publishes refused because the cluster log could not store them",
            m.cluster_publish_failures.clone(),
        );
        registry.register(
            "recoveries_ok",
            "Recoveries that returned every missed event",
            m.recoveries_ok.clone(),
        );
        registry.register(
            "recoveries_failed",
            "Recoveries that could not be made",
            m.recoveries_failed.clone(),
        );
        registry.register(
            "recoveries_too_large",
            "Recoveries refused because the missed events exceed the recovery budget",
            m.recoveries_too_large.clone(),
        );
        registry.register(
            "limit_hits",
            "Times a configured bound was hit, by config key",
            m.limit_hits.clone(),
        );
        registry.register(
            "tls_reloads",
            "TLS certificate reloads, by result (ok, or kept_old when the new one did not load)",
            m.tls_reloads.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts one TLS reload: `ok`, or the new certificate refused and the old one kept.
    pub fn tls_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "kept_old" };
        self.tls_reloads.get_or_create(&[("result", result)]).inc();
    }

    /// Counts one hit of the bound named by its config key (`max_channels`, …).
    pub fn limit_hit(&self, key: &'static str) {
        self.limit_hits.get_or_create(&[("limit", key)]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// `herald_connector_*_total{connector=…}`: each connector's counters, read at scrape time.
#[derive(Debug)]
struct ConnectorCollector(Arc<ConnectorSet>);

type CountOf = fn(&ConnectorCounts) -> u64;

impl Collector for ConnectorCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let counts: Vec<(String, ConnectorCounts)> = self
            .0
            .all()
            .iter()
            .map(|s| (s.name().to_owned(), s.counts()))
            .collect();
        if counts.is_empty() {
            return Ok(());
        }
        let plain: [(&str, &str, CountOf); 3] = [
            (
                "connector_received",
                "Messages taken from a connector's source",
                |c| c.received,
            ),
            (
                "connector_accepted",
                "Envelopes from a connector the gateway accepted",
                |c| c.accepted,
            ),
            (
                "connector_duplicates",
                "Redeliveries a connector recognised and did not publish again",
                |c| c.duplicates,
            ),
        ];
        for (name, help, count) in plain {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (connector, c) in &counts {
                let labels = [("connector", connector.as_str())];
                ConstCounter::new(count(c)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "connector_rejected",
            "Messages a connector refused, by reason",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (connector, c) in &counts {
            for (reason, n) in &c.rejected {
                let labels = [("connector", connector.as_str()), ("reason", reason)];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
