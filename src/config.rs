//! Configuration: flags, then `HERALD_*` environment, then the TOML file, then defaults.
//!
//! clap reads flags and environment together (a flag wins over its variable); the file fills
//! what neither set. [`Config::load`] returns every problem at once, each naming its key, so
//! an operator fixes a file in one pass.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use herald_connector_api::ChannelName;
use herald_connector_longpoll::LongPollConfig;
use herald_connector_sse::SseConfig;
use serde::Deserialize;

use crate::hub::ChannelRule;
use crate::pattern::Pattern;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Herald: a real-time event gateway.
///
/// Every option is also a key of the config file (`--auth-timeout` is `auth_timeout`) and an
/// environment variable (`HERALD_AUTH_TIMEOUT`). Flags win over the environment, which wins
/// over the file. Durations read like `500ms`, `10s`, `5m`. `HERALD_LOG` sets the log filter
/// (EnvFilter syntax, e.g. `info,herald=debug`).
#[derive(Debug, Default, Parser)]
#[command(name = "herald", version, about, long_about)]
pub struct Cli {
    /// What to do; serving is the default.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML configuration file.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve HTTP(S) and WebSocket on [default: 127.0.0.1:8080].
    #[arg(long, env = "HERALD_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// PEM certificate chain to serve TLS with.
    #[arg(
        long,
        env = "HERALD_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(
        long,
        env = "HERALD_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS).
    #[arg(long, env = "HERALD_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Serve TLS with a self-signed certificate made once under --tls-dir and reused after.
    #[arg(long, env = "HERALD_TLS_SELF_SIGNED", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub tls_self_signed: Option<bool>,
    /// Folder where --tls-self-signed keeps its certificate and key [default: certs].
    #[arg(long, env = "HERALD_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Key backends present as `Authorization: Bearer KEY` [default: generated and printed].
    #[arg(
        long,
        env = "HERALD_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// Secret that client tokens (HS256 JWTs) are signed with [default: generated and printed].
    #[arg(
        long,
        env = "HERALD_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// PEM public key that also verifies client tokens: RSA (RS256) or EC P-256 (ES256).
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file whose keys also verify client tokens, each by its `kid` and its own `alg`.
    #[arg(long, env = "HERALD_JWT_JWKS", value_name = "FILE")]
    pub jwt_jwks: Option<PathBuf>,
    /// When set, a token's `aud` must name it.
    #[arg(long, env = "HERALD_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// When set, a token's `iss` must be it.
    #[arg(long, env = "HERALD_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// Refuse tokens without `exp`.
    #[arg(long, env = "HERALD_JWT_REQUIRE_EXP", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub jwt_require_exp: Option<bool>,
    /// Accept `ident` without a token.
    #[arg(long, env = "HERALD_ALLOW_ANONYMOUS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub allow_anonymous: Option<bool>,
    /// Offer permessage-deflate to WebSocket clients.
    #[arg(long, env = "HERALD_WS_COMPRESSION", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub ws_compression: Option<bool>,
    /// With `ws_compression`: keep compression contexts between messages (better ratios,
    /// some 300 KiB per connection).
    #[arg(long, env = "HERALD_WS_CONTEXT_TAKEOVER", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub ws_context_takeover: Option<bool>,
    /// How long a connection may stay unidentified [default: 10s].
    #[arg(long, env = "HERALD_AUTH_TIMEOUT", value_name = "DURATION")]
    pub auth_timeout: Option<String>,
    /// Origin allowed for CORS and WebSocket upgrades (repeatable, or comma-separated in the
    /// variable); `*` allows any. None by default: same-origin only.
    #[arg(
        long = "cors-origin",
        alias = "cors-origins",
        env = "HERALD_CORS_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub cors_origins: Vec<String>,
    /// NATS URL of the cluster this node joins (repeatable, or comma-separated in the
    /// variable); overrides `cluster.nats`. None by default: a single node.
    #[cfg(feature = "nats")]
    #[arg(
        long = "cluster-nats",
        env = "HERALD_CLUSTER_NATS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub cluster_nats: Vec<String>,
    /// Proxy whose `X-Forwarded-For` / `Forwarded` header names the client (an address or a
    /// network like 10.0.0.0/8; repeatable, or comma-separated in the variable). None by
    /// default: the socket's address is the client's.
    #[arg(
        long = "trusted-proxy",
        alias = "trusted-proxies",
        env = "HERALD_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "ADDR_OR_NET"
    )]
    pub trusted_proxies: Vec<String>,
    /// Connections one client address may hold; more are refused with 503 [default: 0, no
    /// limit].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Connections one user may hold; an `ident` past it is refused with 4029 [default: 0,
    /// no limit].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_USER", value_name = "N")]
    pub max_connections_per_user: Option<usize>,
    /// Channels every connection joins at ident (comma-separated).
    #[arg(
        long,
        env = "HERALD_DEFAULT_CHANNELS",
        value_delimiter = ',',
        value_name = "CHANNELS"
    )]
    pub default_channels: Vec<String>,
    /// Events kept per channel where no [[channels]] rule says otherwise [default: 1000].
    #[arg(long, env = "HERALD_HISTORY_SIZE", value_name = "N")]
    pub history_size: Option<usize>,
    /// How long events stay in history where no rule says otherwise [default: 24h].
    #[arg(long, env = "HERALD_HISTORY_TTL", value_name = "DURATION")]
    pub history_ttl: Option<String>,
    /// How often the server pings WebSocket clients [default: 25s].
    #[arg(long, env = "HERALD_PING_INTERVAL", value_name = "DURATION")]
    pub ping_interval: Option<String>,
    /// A connection silent (no message, no pong) this long is closed [default: 60s].
    #[arg(long, env = "HERALD_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// A WebSocket write the client does not take this long ends it with 4102 [default: 10s].
    #[arg(long, env = "HERALD_WRITE_TIMEOUT", value_name = "DURATION")]
    pub write_timeout: Option<String>,
    /// Largest client message in bytes; larger ends the connection with 4009 [default: 65536].
    #[arg(long, env = "HERALD_MAX_MESSAGE_SIZE", value_name = "BYTES")]
    pub max_message_size: Option<usize>,
    /// Outbound queue per connection in frames; overflow cuts it with 4102 [default: 1024].
    #[arg(long, env = "HERALD_CLIENT_QUEUE", value_name = "FRAMES")]
    pub client_queue: Option<usize>,
    /// Outbound queue per connection in bytes; overflow cuts it with 4102 [default: 4194304].
    #[arg(long, env = "HERALD_CLIENT_QUEUE_BYTES", value_name = "BYTES")]
    pub client_queue_bytes: Option<usize>,
    /// Most events one connection may have in flight from recoveries (ident, join with since);
    /// a recovery past it answers recovered:false [default: 10000].
    #[arg(long, env = "HERALD_RECOVERY_MAX_EVENTS", value_name = "N")]
    pub recovery_max_events: Option<usize>,
    /// Most bytes of recovered events in flight per connection [default: 16777216].
    #[arg(long, env = "HERALD_RECOVERY_MAX_BYTES", value_name = "BYTES")]
    pub recovery_max_bytes: Option<usize>,
    /// Bytes of events kept per channel where no [[channels]] rule says otherwise
    /// [default: 4194304].
    #[arg(long, env = "HERALD_HISTORY_MAX_BYTES", value_name = "BYTES")]
    pub history_max_bytes: Option<usize>,
    /// Most channels (with members or history) held at once; past it, creating one answers
    /// 4503 / HTTP 503 [default: 1000000].
    #[arg(long, env = "HERALD_MAX_CHANNELS", value_name = "N")]
    pub max_channels: Option<usize>,
    /// Most targets (channels + users + broadcast) one envelope may name [default: 10000].
    #[arg(long, env = "HERALD_MAX_ENVELOPE_TARGETS", value_name = "N")]
    pub max_envelope_targets: Option<usize>,
    /// Most members a client's presence reply lists (`total` gives the count) [default: 1000].
    #[arg(long, env = "HERALD_MAX_PRESENCE_MEMBERS", value_name = "N")]
    pub max_presence_members: Option<usize>,
    /// Most idempotency keys remembered at once; a new key past it is answered 503
    /// [default: 100000].
    #[arg(long, env = "HERALD_DEDUP_MAX_KEYS", value_name = "N")]
    pub dedup_max_keys: Option<usize>,
    /// Largest HTTP request body in bytes; larger is answered 413 [default: 1048576].
    #[arg(long, env = "HERALD_MAX_BODY_SIZE", value_name = "BYTES")]
    pub max_body_size: Option<usize>,
    /// How long a new TCP connection may take to send its first request's headers
    /// [default: 10s].
    #[arg(long, env = "HERALD_HEADER_TIMEOUT", value_name = "DURATION")]
    pub header_timeout: Option<String>,
    /// Most open client connections [default: 100000].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most ordinary channels one connection may join [default: 128].
    #[arg(long, env = "HERALD_MAX_CHANNELS_PER_CONNECTION", value_name = "N")]
    pub max_channels_per_connection: Option<usize>,
    /// Client frames one connection may send per second, in bursts of as many; more are
    /// answered 4029, and a connection that keeps at it is disconnected [default: 500].
    #[arg(long, env = "HERALD_MAX_FRAMES_PER_SECOND", value_name = "N")]
    pub max_frames_per_second: Option<usize>,
    /// Client `publish` ops one connection may send per second [default: 100].
    #[arg(long, env = "HERALD_MAX_PUBLISHES_PER_SECOND", value_name = "N")]
    pub max_publishes_per_second: Option<usize>,
    /// Blocked users, and revoked tokens of each kind, held at once; more: 503 [default:
    /// 100000].
    #[arg(long, env = "HERALD_MAX_REVOCATIONS", value_name = "N")]
    pub max_revocations: Option<usize>,
    /// How long an idempotency key is remembered [default: 2m].
    #[arg(long, env = "HERALD_DEDUP_WINDOW", value_name = "DURATION")]
    pub dedup_window: Option<String>,
    /// For this long after a start, new connections are admitted gradually: see
    /// `--accept-ramp-start` [default: 0s, no ramp].
    #[arg(long, env = "HERALD_ACCEPT_RAMP", value_name = "DURATION")]
    pub accept_ramp: Option<String>,
    /// New connections per second in the ramp's first second; it doubles every second after
    /// [default: 1000].
    #[arg(long, env = "HERALD_ACCEPT_RAMP_START", value_name = "N")]
    pub accept_ramp_start: Option<usize>,
    /// A TLS handshake must complete within this, or the connection is closed [default: 10s].
    #[arg(long, env = "HERALD_TLS_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    pub tls_handshake_timeout: Option<String>,
    /// At shutdown, clients are told to wait a random delay up to this before reconnecting,
    /// so a restart is not met by all of them at once [default: 5s; 0s: no delay].
    #[arg(long, env = "HERALD_RECONNECT_SPREAD", value_name = "DURATION")]
    pub reconnect_spread: Option<String>,
    /// How long shutdown waits for connections to close [default: 10s].
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<String>,
    /// This node's id [default: random].
    #[arg(long, env = "HERALD_NODE", value_name = "ID")]
    pub node: Option<String>,
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Do not serve the demo chat page at `/` (`demo = false` in the file).
    #[arg(long, env = "HERALD_NO_DEMO", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub no_demo: Option<bool>,
}

/// Subcommands besides serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a client token (HS256 JWT) signed with the configured jwt_secret.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// Channel patterns the user may join (`*` wildcard; repeatable); all when omitted.
        #[arg(long = "channel", value_name = "PATTERN")]
        channels: Vec<String>,
        /// How long the token is valid.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The config file; keys as in the contract, plus Herald's own beside them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    api_key: Option<String>,
    jwt_secret: Option<String>,
    jwt_public_key: Option<PathBuf>,
    jwt_jwks: Option<PathBuf>,
    jwt_audience: Option<String>,
    jwt_issuer: Option<String>,
    jwt_require_exp: Option<bool>,
    allow_anonymous: Option<bool>,
    ws_compression: Option<bool>,
    ws_context_takeover: Option<bool>,
    auth_timeout: Option<String>,
    cors_origins: Option<Vec<String>>,
    trusted_proxies: Option<Vec<String>>,
    max_connections_per_ip: Option<usize>,
    max_connections_per_user: Option<usize>,
    default_channels: Option<Vec<String>>,
    history_size: Option<usize>,
    history_ttl: Option<String>,
    ping_interval: Option<String>,
    idle_timeout: Option<String>,
    write_timeout: Option<String>,
    max_message_size: Option<usize>,
    client_queue: Option<usize>,
    client_queue_bytes: Option<usize>,
    recovery_max_events: Option<usize>,
    recovery_max_bytes: Option<usize>,
    history_max_bytes: Option<usize>,
    max_channels: Option<usize>,
    max_envelope_targets: Option<usize>,
    max_presence_members: Option<usize>,
    dedup_max_keys: Option<usize>,
    max_body_size: Option<usize>,
    header_timeout: Option<String>,
    max_connections: Option<usize>,
    max_channels_per_connection: Option<usize>,
    max_frames_per_second: Option<usize>,
    max_publishes_per_second: Option<usize>,
    max_revocations: Option<usize>,
    dedup_window: Option<String>,
    shutdown_grace: Option<String>,
    reconnect_spread: Option<String>,
    tls_handshake_timeout: Option<String>,
    accept_ramp: Option<String>,
    accept_ramp_start: Option<usize>,
    node: Option<String>,
    log_format: Option<LogFormat>,
    demo: Option<bool>,
    tls: Option<FileTls>,
    #[serde(default)]
    channels: Vec<FileChannelRule>,
    #[serde(default)]
    longpoll: LongPollConfig,
    #[serde(default)]
    sse: SseConfig,
    #[cfg(feature = "nats")]
    nats: Option<herald_connector_nats::NatsConfig>,
    // Sections of connectors this build lacks or later issues add; accepted so a file
    // written for the whole contract loads, and reported at start-up as not active.
    #[cfg(not(feature = "nats"))]
    nats: Option<toml::Table>,
    rpc: Option<herald_connector_rpc::RpcConfig>,
    auth_hooks: Option<herald_connector_authhook::AuthHooksConfig>,
    #[cfg(feature = "amqp")]
    amqp: Option<herald_connector_amqp::AmqpConfig>,
    #[cfg(not(feature = "amqp"))]
    amqp: Option<toml::Table>,
    #[serde(default)]
    file_tail: Vec<herald_connector_filetail::FileTailConfig>,
    #[cfg(feature = "nats")]
    cluster: Option<herald_cluster::ClusterConfig>,
    #[cfg(not(feature = "nats"))]
    cluster: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    #[serde(default)]
    self_signed: bool,
    dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileChannelRule {
    pattern: String,
    #[serde(default)]
    client_publish: bool,
    #[serde(default)]
    join_leave_notices: bool,
    history_size: Option<usize>,
    history_max_bytes: Option<usize>,
    history_ttl: Option<String>,
    #[serde(default)]
    backpressure: herald_connector_api::Backpressure,
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Arc<str>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where the TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
        /// Client CA for mutual TLS.
        ca: Option<PathBuf>,
    },
    /// Made with rcgen under this folder, reused on later starts.
    SelfSigned {
        /// Folder for `server.pem` and `server.key`.
        dir: PathBuf,
    },
}

/// A configuration problem, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigProblem {
    /// The key, as in the file (`auth_timeout`, `channels[2].pattern`, `tls.cert`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found while loading the configuration.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid configuration: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ConfigError(pub Vec<ConfigProblem>);

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to serve on.
    pub listen: SocketAddr,
    /// API key; generated at start when `None`.
    pub api_key: Option<Secret>,
    /// JWT secret; generated at start when `None`.
    pub jwt_secret: Option<Secret>,
    /// Public keys and claim rules for client tokens, checked at load.
    pub jwt: crate::auth::JwtOptions,
    /// Accept `ident` without a token.
    pub allow_anonymous: bool,
    /// How long a connection may stay unidentified.
    pub auth_timeout: Duration,
    /// Allowed origins; `*` allows any.
    pub cors_origins: Vec<String>,
    /// Proxies whose forwarding headers name the client.
    pub trusted_proxies: crate::peer::TrustedProxies,
    /// Connections per client address; 0: no limit.
    pub max_connections_per_ip: usize,
    /// Connections per user; 0: no limit.
    pub max_connections_per_user: usize,
    /// Joined by every connection at ident.
    pub default_channels: Vec<ChannelName>,
    /// TLS, or plain HTTP when `None`.
    pub tls: Option<TlsSource>,
    /// `[[channels]]` rules, first match wins.
    pub channel_rules: Vec<Arc<ChannelRule>>,
    /// Rule for channels no pattern matches.
    pub default_rule: Arc<ChannelRule>,
    /// Server ping interval.
    pub ping_interval: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// How long a write may wait for the client to read.
    pub write_timeout: Duration,
    /// permessage-deflate for WebSocket clients.
    pub ws_compression: herald_connector_ws::CompressionSettings,
    /// Largest client message.
    pub max_message_size: usize,
    /// Outbound queue per connection, in frames.
    pub client_queue: usize,
    /// Outbound queue per connection, in bytes.
    pub client_queue_bytes: usize,
    /// Recovered events in flight per connection.
    pub recovery_max_events: usize,
    /// Bytes of recovered events in flight per connection.
    pub recovery_max_bytes: usize,
    /// Most channels held at once.
    pub max_channels: usize,
    /// Most targets of one envelope.
    pub max_envelope_targets: usize,
    /// Most members in a client's presence reply.
    pub max_presence_members: usize,
    /// Most idempotency keys remembered.
    pub dedup_max_keys: usize,
    /// Largest HTTP request body.
    pub max_body_size: usize,
    /// Deadline for a new connection's first request headers.
    pub header_timeout: Duration,
    /// The long-poll transport's `[longpoll]` section.
    pub longpoll: LongPollConfig,
    /// The SSE transport's `[sse]` section.
    pub sse: SseConfig,
    /// The NATS connector's `[nats]` section; `None`: not connected to NATS.
    #[cfg(feature = "nats")]
    pub nats: Option<herald_connector_nats::NatsConfig>,
    /// The RabbitMQ connector's `[amqp]` section; `None`: not connected to RabbitMQ.
    #[cfg(feature = "amqp")]
    pub amqp: Option<herald_connector_amqp::AmqpConfig>,
    /// The `[[file_tail]]` entries: files followed line by line.
    pub file_tail: Vec<herald_connector_filetail::FileTailConfig>,
    /// The `[cluster]` section (with `--cluster-nats`); `None`: a single node.
    #[cfg(feature = "nats")]
    pub cluster: Option<herald_cluster::ClusterConfig>,
    /// The `[rpc]` section; `None`: clients' `rpc` gets 4500.
    pub rpc: Option<herald_connector_rpc::RpcConfig>,
    /// The `[auth_hooks]` section; `None`: JWTs alone decide.
    pub auth_hooks: Option<herald_connector_authhook::AuthHooksConfig>,
    /// Most open connections.
    pub max_connections: usize,
    /// Most ordinary channels per connection.
    pub max_channels_per_connection: usize,
    /// Client frames per second per connection.
    pub max_frames_per_second: usize,
    /// Client publishes per second per connection.
    pub max_publishes_per_second: usize,
    /// Blocks and revocations held at once.
    pub max_revocations: usize,
    /// Idempotency window.
    pub dedup_window: Duration,
    /// How long shutdown waits.
    pub shutdown_grace: Duration,
    /// The window over which a shutdown's clients are told to come back.
    pub reconnect_spread: Duration,
    /// How long a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// How long new connections are admitted gradually after a start.
    pub accept_ramp: Duration,
    /// The ramp's rate in its first second.
    pub accept_ramp_start: usize,
    /// Node id, random when `None`.
    pub node: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Whether `/` serves the demo chat page.
    pub demo: bool,
    /// Config-file sections present but not active in this build.
    pub inactive_sections: Vec<&'static str>,
}

/// Collects problems instead of stopping at the first.
#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl fmt::Display) {
        self.0.push(ConfigProblem {
            key: key.into(),
            message: message.to_string(),
        });
    }

    fn duration(&mut self, key: &str, text: Option<String>, default: &str) -> Duration {
        match self.duration_or_zero(key, text, default) {
            d if d.is_zero() => {
                self.add(key, "must be greater than zero");
                Duration::from_secs(1)
            }
            d => d,
        }
    }

    /// A duration where `0s` means "off".
    fn duration_or_zero(&mut self, key: &str, text: Option<String>, default: &str) -> Duration {
        let text = text.unwrap_or_else(|| default.to_owned());
        match humantime::parse_duration(&text) {
            Ok(d) => d,
            Err(e) => {
                self.add(
                    key,
                    format!("{text:?} is not a duration like 500ms, 10s or 5m ({e})"),
                );
                Duration::from_secs(1)
            }
        }
    }

    fn positive(&mut self, key: &str, value: Option<usize>, default: usize) -> usize {
        match value.unwrap_or(default) {
            0 => {
                self.add(key, "must be greater than zero");
                default
            }
            n => n,
        }
    }
}

impl Config {
    /// Resolves flags and environment (`cli`) over the file it names over defaults.
    ///
    /// # Errors
    /// [`ConfigError`] listing every problem, each with its key.
    pub fn load(cli: Cli) -> Result<Self, ConfigError> {
        let mut p = Problems::default();
        let file = match &cli.config {
            None => FileConfig::default(),
            Some(path) => match std::fs::read_to_string(path) {
                Err(e) => {
                    p.add("config", format!("cannot read {}: {e}", path.display()));
                    FileConfig::default()
                }
                Ok(text) => match toml::from_str::<FileConfig>(&text) {
                    Ok(file) => file,
                    Err(e) => {
                        p.add(toml_error_key(&e), toml_error_message(&e));
                        FileConfig::default()
                    }
                },
            },
        };
        let config = Self::resolve(cli, file, &mut p);
        if p.0.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(p.0))
        }
    }

    fn resolve(cli: Cli, file: FileConfig, p: &mut Problems) -> Self {
        let listen_text = cli
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse().unwrap_or_else(|_| {
            p.add(
                "listen",
                format!("{listen_text:?} is not an address like 127.0.0.1:8080"),
            );
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        let secret = |p: &mut Problems, key: &str, value: Option<String>| {
            value.and_then(|v| {
                if v.is_empty() {
                    p.add(
                        key,
                        "must not be empty (leave it out to have one generated)",
                    );
                    None
                } else {
                    Some(Secret(Arc::from(v)))
                }
            })
        };
        let api_key = secret(p, "api_key", cli.api_key.or(file.api_key));
        let jwt_secret = secret(p, "jwt_secret", cli.jwt_secret.or(file.jwt_secret));
        let mut read_key = |key: &'static str, path: Option<PathBuf>| {
            let path = path?;
            std::fs::read_to_string(&path)
                .map_err(|e| p.add(key, format!("cannot read {}: {e}", path.display())))
                .ok()
        };
        let jwt = crate::auth::JwtOptions {
            public_key_pem: read_key("jwt_public_key", cli.jwt_public_key.or(file.jwt_public_key)),
            jwks: read_key("jwt_jwks", cli.jwt_jwks.or(file.jwt_jwks)),
            audience: cli.jwt_audience.or(file.jwt_audience),
            issuer: cli.jwt_issuer.or(file.jwt_issuer),
            require_exp: cli
                .jwt_require_exp
                .or(file.jwt_require_exp)
                .unwrap_or(false),
        };
        if let Err(e) = crate::auth::Auth::with_options("", jwt.clone()) {
            p.add(e.key, e.message);
        }

        let cors_origins = if cli.cors_origins.is_empty() {
            file.cors_origins.unwrap_or_default()
        } else {
            cli.cors_origins
        };
        let proxies = if cli.trusted_proxies.is_empty() {
            file.trusted_proxies.unwrap_or_default()
        } else {
            cli.trusted_proxies
        };
        let trusted_proxies = crate::peer::TrustedProxies::parse(&proxies).unwrap_or_else(|bad| {
            p.add(
                "trusted_proxies",
                format!("{bad:?} is not an address or a network like 10.0.0.0/8"),
            );
            crate::peer::TrustedProxies::default()
        });
        for (i, origin) in cors_origins.iter().enumerate() {
            if let Err(why) = check_origin(origin) {
                p.add(format!("cors_origins[{i}]"), why);
            }
        }
        let default_names = if cli.default_channels.is_empty() {
            file.default_channels.unwrap_or_default()
        } else {
            cli.default_channels
        };
        let mut default_channels = Vec::new();
        for (i, name) in default_names.iter().enumerate() {
            match ChannelName::parse(name) {
                Ok(c) if c.kind() == herald_connector_api::ChannelKind::Ordinary => {
                    default_channels.push(c)
                }
                Ok(_) => p.add(
                    format!("default_channels[{i}]"),
                    "must be an ordinary channel",
                ),
                Err(e) => p.add(format!("default_channels[{i}]"), e),
            }
        }

        let file_tls = file.tls.unwrap_or_default();
        let self_signed = cli.tls_self_signed.unwrap_or(file_tls.self_signed);
        let cert = cli.tls_cert.or(file_tls.cert);
        let key = cli.tls_key.or(file_tls.key);
        let ca = cli
            .tls_ca
            .or(file_tls.ca)
            .filter(|c| !c.as_os_str().is_empty());
        let tls = match (cert, key, self_signed) {
            (Some(_), _, true) | (_, Some(_), true) => {
                p.add(
                    "tls.self_signed",
                    "cannot be combined with tls.cert and tls.key",
                );
                None
            }
            (Some(cert), Some(key), false) => Some(TlsSource::Files { cert, key, ca }),
            (Some(_), None, false) => {
                p.add("tls.key", "is required with tls.cert");
                None
            }
            (None, Some(_), false) => {
                p.add("tls.cert", "is required with tls.key");
                None
            }
            (None, None, true) => Some(TlsSource::SelfSigned {
                dir: cli
                    .tls_dir
                    .or(file_tls.dir)
                    .unwrap_or_else(|| PathBuf::from("certs")),
            }),
            (None, None, false) => None,
        };

        let history_size = cli.history_size.or(file.history_size).unwrap_or(1000);
        let history_max_bytes = p.positive(
            "history_max_bytes",
            cli.history_max_bytes.or(file.history_max_bytes),
            4 << 20,
        );
        let history_ttl = p.duration("history_ttl", cli.history_ttl.or(file.history_ttl), "24h");
        let default_rule = Arc::new(ChannelRule {
            pattern: Pattern::new("*"),
            client_publish: false,
            join_leave_notices: false,
            history_size,
            history_max_bytes,
            history_ttl,
            backpressure: Default::default(),
        });
        let channel_rules = file
            .channels
            .into_iter()
            .enumerate()
            .map(|(i, rule)| {
                if rule.pattern.is_empty() {
                    p.add(format!("channels[{i}].pattern"), "must not be empty");
                }
                let ttl = match rule.history_ttl {
                    Some(t) => p.duration(&format!("channels[{i}].history_ttl"), Some(t), "24h"),
                    None => history_ttl,
                };
                Arc::new(ChannelRule {
                    pattern: Pattern::new(&rule.pattern),
                    client_publish: rule.client_publish,
                    join_leave_notices: rule.join_leave_notices,
                    history_size: rule.history_size.unwrap_or(history_size),
                    history_max_bytes: p.positive(
                        &format!("channels[{i}].history_max_bytes"),
                        rule.history_max_bytes,
                        history_max_bytes,
                    ),
                    history_ttl: ttl,
                    backpressure: rule.backpressure,
                })
            })
            .collect();

        for (key, problem) in file
            .longpoll
            .problems()
            .into_iter()
            .chain(file.sse.problems())
        {
            p.add(key, problem);
        }
        #[cfg(feature = "nats")]
        for (key, problem) in file.nats.iter().flat_map(|n| n.problems()) {
            p.add(key, problem);
        }
        #[cfg(feature = "nats")]
        let cluster = {
            let mut cluster = file.cluster.clone().unwrap_or_default();
            if !cli.cluster_nats.is_empty() {
                cluster.nats = cli.cluster_nats.clone();
            }
            for (key, problem) in cluster.problems() {
                p.add(key, problem);
            }
            cluster.enabled().then_some(cluster)
        };
        for (key, problem) in file.rpc.iter().flat_map(|r| r.problems()) {
            p.add(key, problem);
        }
        for (key, problem) in file.auth_hooks.iter().flat_map(|a| a.problems()) {
            p.add(key, problem);
        }
        #[cfg(feature = "amqp")]
        for (key, problem) in file.amqp.iter().flat_map(|a| a.problems()) {
            p.add(key, problem);
        }
        for (i, tail) in file.file_tail.iter().enumerate() {
            for (key, problem) in tail.problems(i) {
                p.add(key, problem);
            }
        }
        if cfg!(not(feature = "nats"))
            && file
                .rpc
                .as_ref()
                .is_some_and(|r| r.backend == herald_connector_rpc::RpcBackendKind::Nats)
        {
            p.add(
                "rpc.backend",
                "this build has no NATS connector: use \"http\"",
            );
        }
        let inactive_sections = [
            ("nats", cfg!(not(feature = "nats")) && file.nats.is_some()),
            ("amqp", cfg!(not(feature = "amqp")) && file.amqp.is_some()),
            (
                "cluster",
                cfg!(not(feature = "nats")) && file.cluster.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect();

        Self {
            listen,
            api_key,
            jwt_secret,
            jwt,
            allow_anonymous: cli
                .allow_anonymous
                .or(file.allow_anonymous)
                .unwrap_or(false),
            ws_compression: herald_connector_ws::CompressionSettings {
                enabled: cli.ws_compression.or(file.ws_compression).unwrap_or(false),
                context_takeover: cli
                    .ws_context_takeover
                    .or(file.ws_context_takeover)
                    .unwrap_or(false),
            },
            auth_timeout: p.duration(
                "auth_timeout",
                cli.auth_timeout.or(file.auth_timeout),
                "10s",
            ),
            cors_origins,
            trusted_proxies,
            max_connections_per_ip: cli
                .max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(0),
            max_connections_per_user: cli
                .max_connections_per_user
                .or(file.max_connections_per_user)
                .unwrap_or(0),
            default_channels,
            tls,
            channel_rules,
            default_rule,
            ping_interval: p.duration(
                "ping_interval",
                cli.ping_interval.or(file.ping_interval),
                "25s",
            ),
            idle_timeout: p.duration(
                "idle_timeout",
                cli.idle_timeout.or(file.idle_timeout),
                "60s",
            ),
            write_timeout: p.duration(
                "write_timeout",
                cli.write_timeout.or(file.write_timeout),
                "10s",
            ),
            max_message_size: p.positive(
                "max_message_size",
                cli.max_message_size.or(file.max_message_size),
                65536,
            ),
            client_queue: p.positive("client_queue", cli.client_queue.or(file.client_queue), 1024),
            client_queue_bytes: p.positive(
                "client_queue_bytes",
                cli.client_queue_bytes.or(file.client_queue_bytes),
                4 << 20,
            ),
            recovery_max_events: p.positive(
                "recovery_max_events",
                cli.recovery_max_events.or(file.recovery_max_events),
                10_000,
            ),
            recovery_max_bytes: p.positive(
                "recovery_max_bytes",
                cli.recovery_max_bytes.or(file.recovery_max_bytes),
                16 << 20,
            ),
            max_channels: p.positive(
                "max_channels",
                cli.max_channels.or(file.max_channels),
                1_000_000,
            ),
            max_envelope_targets: p.positive(
                "max_envelope_targets",
                cli.max_envelope_targets.or(file.max_envelope_targets),
                10_000,
            ),
            max_presence_members: p.positive(
                "max_presence_members",
                cli.max_presence_members.or(file.max_presence_members),
                1000,
            ),
            dedup_max_keys: p.positive(
                "dedup_max_keys",
                cli.dedup_max_keys.or(file.dedup_max_keys),
                100_000,
            ),
            max_body_size: p.positive(
                "max_body_size",
                cli.max_body_size.or(file.max_body_size),
                1 << 20,
            ),
            header_timeout: p.duration(
                "header_timeout",
                cli.header_timeout.or(file.header_timeout),
                "10s",
            ),
            max_connections: p.positive(
                "max_connections",
                cli.max_connections.or(file.max_connections),
                100_000,
            ),
            max_channels_per_connection: p.positive(
                "max_channels_per_connection",
                cli.max_channels_per_connection
                    .or(file.max_channels_per_connection),
                128,
            ),
            max_frames_per_second: p.positive(
                "max_frames_per_second",
                cli.max_frames_per_second.or(file.max_frames_per_second),
                500,
            ),
            max_publishes_per_second: p.positive(
                "max_publishes_per_second",
                cli.max_publishes_per_second
                    .or(file.max_publishes_per_second),
                100,
            ),
            max_revocations: p.positive(
                "max_revocations",
                cli.max_revocations.or(file.max_revocations),
                100_000,
            ),
            dedup_window: p.duration("dedup_window", cli.dedup_window.or(file.dedup_window), "2m"),
            shutdown_grace: p.duration(
                "shutdown_grace",
                cli.shutdown_grace.or(file.shutdown_grace),
                "10s",
            ),
            reconnect_spread: p.duration_or_zero(
                "reconnect_spread",
                cli.reconnect_spread.or(file.reconnect_spread),
                "5s",
            ),
            tls_handshake_timeout: p.duration(
                "tls_handshake_timeout",
                cli.tls_handshake_timeout.or(file.tls_handshake_timeout),
                "10s",
            ),
            accept_ramp: p.duration_or_zero(
                "accept_ramp",
                cli.accept_ramp.or(file.accept_ramp),
                "0s",
            ),
            accept_ramp_start: p.positive(
                "accept_ramp_start",
                cli.accept_ramp_start.or(file.accept_ramp_start),
                1000,
            ),
            longpoll: file.longpoll,
            sse: file.sse,
            #[cfg(feature = "nats")]
            nats: file.nats,
            rpc: file.rpc,
            auth_hooks: file.auth_hooks,
            file_tail: file.file_tail,
            #[cfg(feature = "nats")]
            cluster,
            #[cfg(feature = "amqp")]
            amqp: file.amqp,
            node: cli.node.or(file.node),
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            demo: cli.no_demo.map(|off| !off).or(file.demo).unwrap_or(true),
            inactive_sections,
        }
    }
}

/// An origin is `scheme://host[:port]` with nothing after, or `*`.
fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!(
            "{origin:?} is not an origin like https://app.example"
        ));
    };
    if !matches!(scheme, "http" | "https")
        || rest.is_empty()
        || rest.contains('/')
        || rest.contains('*')
    {
        return Err(format!(
            "{origin:?} is not an origin like https://app.example (no path, no wildcard)"
        ));
    }
    Ok(())
}

/// The dotted key a TOML error is about, or `config` when it has no place.
fn toml_error_key(e: &toml::de::Error) -> String {
    let message = e.message();
    // serde reports unknown and missing keys in the message, not the span.
    for marker in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.split(marker).nth(1) {
            if let Some(name) = rest.split('`').next() {
                return name.to_owned();
            }
        }
    }
    "config".to_owned()
}

fn toml_error_message(e: &toml::de::Error) -> String {
    e.message()
        .lines()
        .next()
        .unwrap_or("invalid TOML")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str], file: Option<&str>) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let mut argv = vec!["herald".to_owned()];
        if let Some(text) = file {
            let path = dir.path().join("herald.toml");
            std::fs::write(&path, text).unwrap();
            argv.push(format!("--config={}", path.display()));
        }
        argv.extend(args.iter().map(|s| s.to_string()));
        Config::load(Cli::try_parse_from(argv).unwrap())
    }

    #[test]
    fn defaults() {
        let c = load(&[], None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.auth_timeout, Duration::from_secs(10));
        assert!(c.tls.is_none() && c.api_key.is_none() && !c.allow_anonymous);
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = "listen = \"127.0.0.1:9000\"\nauth_timeout = \"3s\"\nallow_anonymous = true\n\
                    [[channels]]\npattern = \"chat:*\"\nclient_publish = true\nhistory_size = 5\n";
        let c = load(
            &["--listen", "127.0.0.1:9001", "--allow-anonymous=false"],
            Some(file),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.auth_timeout, Duration::from_secs(3));
        assert!(!c.allow_anonymous);
        assert!(c.channel_rules[0].client_publish);
        assert_eq!(c.channel_rules[0].history_size, 5);
        assert_eq!(
            c.channel_rules[0].history_ttl,
            Duration::from_secs(24 * 3600)
        );
    }

    #[test]
    fn every_problem_names_its_key() {
        let file = "auth_timeout = \"soon\"\ncors_origins = [\"https://ok.example\", \"nope\"]\n\
                    [[channels]]\npattern = \"\"\nhistory_ttl = \"0s\"\n";
        let err = load(&["--client-queue", "0"], Some(file)).unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "cors_origins[1]",
                "channels[0].pattern",
                "channels[0].history_ttl",
                "auth_timeout",
                "client_queue"
            ]
        );
        assert_eq!(
            load(&[], Some("bogus = 1\n")).unwrap_err().0[0].key,
            "bogus"
        );
        assert_eq!(
            load(&[], Some("[tls]\ncert = \"a.pem\"\n")).unwrap_err().0[0].key,
            "tls.key"
        );
    }

    #[cfg(feature = "nats")]
    #[test]
    fn the_nats_section_is_the_connectors_struct() {
        let c = load(&[], Some("[nats]\njetstream = true\nack_wait = \"10s\"\n")).unwrap();
        let nats = c.nats.expect("[nats] read");
        assert!(nats.jetstream);
        assert_eq!(
            (nats.prefix.as_str(), nats.ack_wait),
            ("herald", Duration::from_secs(10))
        );
        assert!(c.inactive_sections.is_empty());
        let err = load(&[], Some("[nats]\nmax_deliver = 0\nprefix = \"a b\"\n")).unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["nats.prefix", "nats.max_deliver"]);
        let unknown = load(&[], Some("[nats]\nurll = \"x\"\n")).unwrap_err();
        assert!(
            unknown.0[0].to_string().contains("urll"),
            "{}",
            unknown.0[0]
        );
    }
}
