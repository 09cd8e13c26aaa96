//! Acceptors in front of hyper: a deadline for a connection's first byte ([`FirstByteDeadline`])
//! and a way for a request to take its connection and give it back ([`Detaching`], [`Resumer`]).
//!
//! The deadline sits in front of every other acceptor: hyper's header-read timeout starts
//! with the first byte of a request, and the TLS handshake timeout only covers plain-TCP
//! peers that start a handshake, so a peer that connects and sends nothing would hold a
//! socket (and a file descriptor) forever. Enough of them and nobody else can connect.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::middleware::AddExtension;
use axum::{Extension, Router};
use axum_server::accept::Accept;
use herald_connector_api::{Detach, Detachable, DetachedIo, Resume};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_layer::Layer;

use crate::metrics::Metrics;

/// Drops connections that send nothing within `timeout`, then hands the rest to `inner`.
#[derive(Clone)]
pub struct FirstByteDeadline<A> {
    inner: A,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl<A> FirstByteDeadline<A> {
    /// Wraps `inner` with a first-byte deadline of `timeout`; drops are counted in `metrics`.
    pub fn new(inner: A, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            timeout,
            metrics,
        }
    }
}

type Accepted<A, S> = io::Result<(
    <A as Accept<TcpStream, S>>::Stream,
    <A as Accept<TcpStream, S>>::Service,
)>;

impl<A, S> Accept<TcpStream, S> for FirstByteDeadline<A>
where
    A: Accept<TcpStream, S> + Clone + Send + Sync + 'static,
    A::Future: Send,
    S: Send + 'static,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = Accepted<A, S>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let (inner, timeout, metrics) = (self.inner.clone(), self.timeout, self.metrics.clone());
        Box::pin(async move {
            // `peek` waits for a byte without consuming it: the request (or TLS hello) is
            // still there for hyper. (`readable` can report a fresh socket ready at once.)
            let mut first = [0u8; 1];
            match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
                Ok(Ok(_)) => inner.accept(stream, service).await,
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    metrics.limit_hit("header_timeout");
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within header_timeout",
                    ))
                }
            }
        })
    }
}

/// Makes every connection [`Detachable`] and gives each of its requests the [`Detach`], so a
/// handler can take the connection out of hyper (an SSE stream, a parked long-poll) and give
/// it back.
#[derive(Clone)]
pub struct Detaching<A> {
    inner: A,
    resumer: Arc<dyn Resume>,
}

impl<A> Detaching<A> {
    /// Wraps the streams `inner` accepts; `resumer` serves those given back.
    pub fn new(inner: A, resumer: Arc<dyn Resume>) -> Self {
        Self { inner, resumer }
    }
}

impl<A, S> Accept<TcpStream, S> for Detaching<A>
where
    A: Accept<TcpStream, S>,
    A::Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    A::Future: Send + 'static,
{
    type Stream = Detachable<A::Stream>;
    type Service = AddExtension<A::Service, Detach>;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let peer = stream.peer_addr();
        let resumer = self.resumer.clone();
        let accepted = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            let (stream, detach) = Detachable::new(stream, peer?, Some(resumer));
            Ok((stream, Extension(detach).layer(service)))
        })
    }
}

/// Serves the app on connections given back after a handler took them (a long-poll that
/// answered its parked poll), with the listener's HTTP/1 limits; they close at shutdown.
pub struct Resumer {
    app: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Resumer {
    /// Serves `app`; connections are tracked on `tracker` and close once `shutdown` fires.
    pub fn new(
        app: Router,
        header_timeout: Duration,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            app,
            header_timeout,
            shutdown,
            tracker,
        }
    }
}

impl Resume for Resumer {
    fn resume(self: Arc<Self>, io: DetachedIo, peer: SocketAddr) {
        let (stream, detach) = Detachable::resumed(io, peer, self.clone());
        let service = Extension(detach).layer(Extension(ConnectInfo(peer)).layer(self.app.clone()));
        let (shutdown, header_timeout) = (self.shutdown.clone(), self.header_timeout);
        self.tracker.spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
            crate::http1_limits(&mut builder, header_timeout);
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service),
            );
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}
