//! A hub as a real node builds it (channel rules with history and client publish, small
//! bounds so the fuzzer reaches them), shared by the targets that need one.

use std::sync::Arc;
use std::time::Duration;

use herald::auth::Auth;
use herald::hub::{ChannelRule, Hub, HubConfig, RateLimits};
use herald::metrics::Metrics;
use herald::pattern::Pattern;
use herald_connector_api::{ChannelName, OutboxLimits};

pub const SECRET: &str = "fuzz-secret";

pub fn hub() -> Hub {
    let rule = |pattern: &str, client_publish: bool| {
        Arc::new(ChannelRule {
            pattern: Pattern::new(pattern),
            client_publish,
            join_leave_notices: true,
            history_size: 16,
            history_max_bytes: 64 << 10,
            history_ttl: Duration::from_secs(3600),
            backpressure: Default::default(),
        })
    };
    let config = HubConfig {
        node: Arc::from("fuzz"),
        auth: Auth::new(SECRET),
        allow_anonymous: true,
        auth_timeout: Duration::from_secs(3600),
        default_channels: vec![ChannelName::parse("lobby").expect("a channel name")],
        rules: vec![rule("chat:*", true)],
        default_rule: rule("*", false),
        outbox: OutboxLimits {
            frames: 64,
            bytes: 256 << 10,
            backlog_frames: 64,
            backlog_bytes: 256 << 10,
        },
        max_connections: 16,
        max_channels_per_connection: 8,
        rates: RateLimits {
            frames_per_second: 200,
            publishes_per_second: 50,
        },
        trusted_proxies: Default::default(),
        max_connections_per_ip: 0,
        max_connections_per_user: 0,
        max_revocations: 16,
        reconnect_spread: Duration::from_secs(1),
        accept_ramp: Arc::new(herald::hub::AcceptRamp::new(Duration::ZERO, 1)),
        max_channels: 64,
        max_envelope_targets: 16,
        max_presence_members: 8,
        dedup_window: Duration::from_secs(60),
        dedup_max_keys: 64,
    };
    Hub::new(config, Arc::new(Metrics::new()))
}
