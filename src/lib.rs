//! Herald: a real-time event gateway.
//!
//! Backends publish envelopes (HTTP now; NATS, AMQP and file tail plug in through
//! `herald-connector-api`); clients connect over WebSocket (long-poll and SSE plug in through
//! the same session seam), identify with a token, join channels and receive events, with
//! per-channel history so a reconnecting client recovers what it missed.
//!
//! # Layout
//! - [`config`]: flags, environment and TOML resolved into one [`config::Config`].
//! - [`hub`]: connection registry, channels, history, fan-out, and the client protocol.
//! - [`auth`]: JWT verification; [`pattern`]: `*` globs for channel rules and token scopes.
//! - [`http`]: the one HTTP(S) app: routers merged, CORS, Origin checks, probes.
//! - [`tls`]: rustls server config from files or a self-signed certificate.
//! - [`peer`]: the client's address, through trusted proxies.
//! - [`tls_reload`]: the certificate reloaded on SIGHUP and when its files change.
//! - [`client_files`]: the JavaScript client and the demo page, built in.
//! - [`accept`]: the first-byte deadline every new connection passes.
//! - [`connectors`]: starts the inbound connectors (NATS) the configuration names.
//! - [`metrics`]: Prometheus counters.
//! - [`run`]: wires it all up and runs until shutdown; `main` and the tests both call it.

pub mod accept;
pub mod auth;
pub mod client_files;
pub mod config;
pub mod connectors;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod pattern;
pub mod peer;
pub mod tls;
pub mod tls_reload;
pub mod write_deadline;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::accept::{Detaching, FirstByteDeadline, Resumer};
use crate::write_deadline::WriteDeadline;

use herald_connector_http::ApiState;
use herald_connector_longpoll::LongPollState;
use herald_connector_sse::SseState;
use herald_connector_ws::{WsConfig, WsState};
use rand::distr::{Alphanumeric, SampleString};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::{Config, Secret};
use crate::http::{AllowedOrigins, Readiness};
use crate::hub::{Hub, HubConfig};
use crate::metrics::Metrics;

/// Pending connections the kernel queues before Herald accepts them. std's default (128)
/// overflows when thousands of clients reconnect at once, and each dropped SYN costs the
/// client a one-second retransmit; the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Why Herald could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The configured token keys are unusable.
    #[error(transparent)]
    Keys(#[from] auth::KeyError),
    /// A backend (rpc, activity) could not be set up.
    #[error(transparent)]
    Backend(#[from] connectors::BackendError),
}

/// Keys Herald made up because the configuration named none.
#[derive(Debug, Clone)]
pub struct GeneratedSecrets {
    /// The generated API key, if one was generated.
    pub api_key: Option<Secret>,
    /// The generated JWT secret, if one was generated.
    pub jwt_secret: Option<Secret>,
}

/// Binds the listening socket with a backlog sized for reconnect storms.
///
/// # Errors
/// When the address cannot be bound.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// Fills in a random API key and JWT secret where the configuration has none.
pub fn ensure_secrets(config: &mut Config) -> GeneratedSecrets {
    let make = |slot: &mut Option<Secret>| {
        if slot.is_some() {
            return None;
        }
        let secret = Secret(Arc::from(Alphanumeric.sample_string(&mut rand::rng(), 32)));
        *slot = Some(secret.clone());
        Some(secret)
    };
    GeneratedSecrets {
        api_key: make(&mut config.api_key),
        jwt_secret: make(&mut config.jwt_secret),
    }
}

/// Serves Herald on `listener` until `shutdown` completes; [`prepare`] then [`Prepared::serve`].
///
/// # Errors
/// [`RunError`] when TLS or the listener fails.
///
/// # Panics
/// When `config` has no API key or JWT secret: call [`ensure_secrets`] first.
pub async fn run(
    config: Config,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    prepare(config, listener)?.serve(shutdown).await
}

/// A gateway whose TLS, listener and hub are set up, ready to serve.
pub struct Prepared {
    config: Config,
    listener: std::net::TcpListener,
    tls: Option<rustls::ServerConfig>,
    hub: Hub,
    longpoll: LongPollState,
    app: axum::Router,
    ready: Arc<Readiness>,
    tracker: TaskTracker,
}

/// Does everything that can fail before serving: TLS files, the listener, the hub.
///
/// # Errors
/// [`RunError`] when TLS or the listener fails.
///
/// # Panics
/// When `config` has no API key or JWT secret: call [`ensure_secrets`] first.
pub fn prepare(config: Config, listener: std::net::TcpListener) -> Result<Prepared, RunError> {
    let api_key = config
        .api_key
        .clone()
        .expect("ensure_secrets fills the api key");
    let jwt_secret = config
        .jwt_secret
        .clone()
        .expect("ensure_secrets fills the jwt secret");
    let tls = config.tls.as_ref().map(tls::server_config).transpose()?;
    listener.set_nonblocking(true)?;
    let node: Arc<str> = Arc::from(config.node.clone().unwrap_or_else(|| {
        Alphanumeric
            .sample_string(&mut rand::rng(), 6)
            .to_lowercase()
    }));
    for section in &config.inactive_sections {
        tracing::warn!(
            section,
            "this config section is not active in this build yet; ignored"
        );
    }

    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(
        HubConfig {
            node,
            auth: Auth::with_options(&jwt_secret.0, config.jwt.clone())?,
            allow_anonymous: config.allow_anonymous,
            auth_timeout: config.auth_timeout,
            default_channels: config.default_channels.clone(),
            rules: config.channel_rules.clone(),
            default_rule: config.default_rule.clone(),
            outbox: herald_connector_api::OutboxLimits {
                frames: config.client_queue,
                bytes: config.client_queue_bytes,
                backlog_frames: config.recovery_max_events,
                backlog_bytes: config.recovery_max_bytes,
            },
            max_connections: config.max_connections,
            max_channels_per_connection: config.max_channels_per_connection,
            trusted_proxies: config.trusted_proxies.clone(),
            max_connections_per_ip: config.max_connections_per_ip,
            max_connections_per_user: config.max_connections_per_user,
            max_revocations: config.max_revocations,
            reconnect_spread: config.reconnect_spread,
            accept_ramp: Arc::new(hub::AcceptRamp::new(
                config.accept_ramp,
                config.accept_ramp_start,
            )),
            rates: hub::RateLimits {
                frames_per_second: u32::try_from(config.max_frames_per_second).unwrap_or(u32::MAX),
                publishes_per_second: u32::try_from(config.max_publishes_per_second)
                    .unwrap_or(u32::MAX),
            },
            max_channels: config.max_channels,
            max_envelope_targets: config.max_envelope_targets,
            max_presence_members: config.max_presence_members,
            dedup_window: config.dedup_window,
            dedup_max_keys: config.dedup_max_keys,
        },
        metrics.clone(),
    );
    let tracker = TaskTracker::new();
    let ready = Arc::new(Readiness::default());
    let api = herald_connector_http::routes(ApiState {
        gateway: Arc::new(hub.clone()),
        api_key: api_key.0.clone(),
        max_body_size: config.max_body_size,
        connectors: metrics.connectors.clone(),
    });
    let ws = herald_connector_ws::routes(WsState {
        hub: Arc::new(hub.clone()),
        config: Arc::new(WsConfig {
            max_message_size: config.max_message_size,
            max_write_buffer: (config.max_message_size * 4).max(1 << 20),
            ping_interval: config.ping_interval,
            idle_timeout: config.idle_timeout,
            compression: config.ws_compression,
        }),
        tracker: tracker.clone(),
    });
    let longpoll = LongPollState::new(
        Arc::new(hub.clone()),
        config.longpoll.clone(),
        config.max_body_size,
        tracker.clone(),
    );
    let sse = herald_connector_sse::routes(SseState {
        hub: Arc::new(hub.clone()),
        config: Arc::new(config.sse.clone()),
        tracker: tracker.clone(),
    });
    let transports = ws
        .merge(herald_connector_longpoll::routes(longpoll.clone()))
        .merge(sse);
    let app = http::app(
        api.merge(client_files::routes(config.demo)),
        transports,
        AllowedOrigins::new(&config.cors_origins),
        metrics,
        ready.clone(),
    );
    Ok(Prepared {
        config,
        listener,
        tls,
        hub,
        longpoll,
        app,
        ready,
        tracker,
    })
}

impl Prepared {
    /// The address being served.
    ///
    /// # Errors
    /// When the listener cannot tell.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then closes every client with 4100 and waits (up to
    /// `shutdown_grace`) for them to go.
    ///
    /// # Errors
    /// [`RunError::Io`] when the listener fails.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), RunError> {
        let Self {
            config,
            listener,
            tls,
            hub,
            longpoll,
            app,
            ready,
            tracker,
        } = self;
        let token = CancellationToken::new();
        let (outbound, outbound_token) = (TaskTracker::new(), CancellationToken::new());
        connectors::connect_backends(&config, &hub, &tracker, &outbound, &outbound_token).await?;
        // The cluster's tasks stop last too: the leaves of the closed clients reach the others.
        #[cfg(feature = "nats")]
        if let Some(cluster) = &config.cluster {
            connectors::join_cluster(cluster, &hub, &outbound, &outbound_token).await?;
        }
        // Connectors stop before the hub, so what they took is accepted and acknowledged
        // rather than refused with "shutting down" and delivered again.
        let (sources, sources_token) = (TaskTracker::new(), CancellationToken::new());
        let gateway: Arc<dyn herald_connector_api::Gateway> = Arc::new(hub.clone());
        connectors::start(
            &config,
            &gateway,
            &hub.metrics().connectors,
            &sources,
            &sources_token,
        );
        tracker.spawn(hub.clone().run_sweeper(token.child_token()));
        tracker.spawn(hub.clone().run_auth_deadlines(token.child_token()));
        tracker.spawn(longpoll.run_sweeper(token.child_token()));
        let local = listener.local_addr()?;
        let handle = axum_server::Handle::new();
        let resumed = CancellationToken::new();
        let resumer: Arc<dyn herald_connector_api::Resume> = Arc::new(Resumer::new(
            app.clone(),
            config.header_timeout,
            resumed.clone(),
            tracker.clone(),
        ));
        let service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let server = axum_server::from_tcp(listener)?.handle(handle.clone());
        // Events are small frames written as they happen: with Nagle's algorithm on, one
        // waits for the ACK of the previous, which the client may delay by up to 40 ms.
        // The write deadline sits under TLS, so that TLS records a client does not take count.
        let tcp = WriteDeadline::new(
            axum_server::accept::NoDelayAcceptor::new(),
            config.write_timeout,
            hub.metrics().clone(),
        );
        let header_timeout = config.header_timeout;
        let mut reloadable = None;
        let mut server = match tls {
            Some(tls) => {
                let rustls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
                reloadable = config.tls.clone().map(|source| (rustls.clone(), source));
                let tls = axum_server::tls_rustls::RustlsAcceptor::new(rustls)
                    .handshake_timeout(config.tls_handshake_timeout)
                    .acceptor(tcp);
                let server = server.acceptor(Detaching::new(
                    FirstByteDeadline::new(tls, header_timeout, hub.metrics().clone()),
                    resumer,
                ));
                tokio::spawn(with_header_timeout(server, header_timeout).serve(service))
            }
            None => {
                let server = server.acceptor(Detaching::new(
                    FirstByteDeadline::new(tcp, header_timeout, hub.metrics().clone()),
                    resumer,
                ));
                tokio::spawn(with_header_timeout(server, header_timeout).serve(service))
            }
        };
        tracker.spawn(tls_reload::run(
            reloadable,
            hub.metrics().clone(),
            token.child_token(),
        ));
        ready.set(true);
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(address = %local, "herald is serving {scheme}://{local} (WebSocket at /ws)");

        let server_failed = tokio::select! {
            () = shutdown => None,
            result = &mut server => Some(result),
        };
        if let Some(result) = server_failed {
            // The server stopped on its own: that is a listener failure, not a shutdown.
            sources_token.cancel();
            outbound_token.cancel();
            token.cancel();
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(RunError::Io(e)),
                Err(join) => Err(RunError::Io(std::io::Error::other(join.to_string()))),
            };
        }

        tracing::info!(
            connections = hub.connection_count(),
            "shutting down: closing clients with 4100"
        );
        ready.set(false);
        handle.graceful_shutdown(Some(config.shutdown_grace));
        resumed.cancel();
        sources_token.cancel();
        sources.close();
        if tokio::time::timeout(config.shutdown_grace, sources.wait())
            .await
            .is_err()
        {
            tracing::error!("connectors did not stop within shutdown_grace");
        }
        hub.shut_down();
        token.cancel();
        tracker.close();
        if tokio::time::timeout(config.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::error!(
                left = hub.connection_count(),
                "connections did not close within shutdown_grace"
            );
        }
        // Activity publishing stops last, so the disconnects of the closed clients go out.
        outbound_token.cancel();
        outbound.close();
        let _ = tokio::time::timeout(config.shutdown_grace, outbound.wait()).await;
        // In-flight HTTP requests (a publish half-way through its body) get their answer
        // before the process goes.
        if tokio::time::timeout(config.shutdown_grace, &mut server)
            .await
            .is_err()
        {
            tracing::error!("HTTP requests did not finish within shutdown_grace");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The largest request head (request line and headers), answered 431 beyond. hyper keeps a
/// read buffer of this size for every open HTTP/1 connection (a parked long-poll, an SSE
/// stream), and with its default (about 400 KiB) the buffer grows to 16 KiB on the first
/// request: 8 KiB saves 6–7 KiB per idle connection and is nginx's and Apache's line limit.
pub const MAX_REQUEST_HEAD: usize = 8192;

/// Bounds how long a client may take to send its request headers (slowloris); axum's own
/// `serve` sets no such timer. Also bounds the request head ([`MAX_REQUEST_HEAD`]).
fn with_header_timeout<A: axum_server::Address, Acc>(
    mut server: axum_server::Server<A, Acc>,
    timeout: Duration,
) -> axum_server::Server<A, Acc> {
    http1_limits(server.http_builder(), timeout);
    server
}

/// The header timeout and head bound, for the listener and for connections given back.
fn http1_limits(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    timeout: Duration,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_REQUEST_HEAD);
}
