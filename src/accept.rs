//! A deadline for a new connection's first byte, in front of every other acceptor.
//!
//! hyper's header-read timeout starts with the first byte of a request, and the TLS
//! handshake timeout only covers plain-TCP peers that start a handshake, so a peer that
//! connects and sends nothing would hold a socket (and a file descriptor) forever. Enough of
//! them and nobody else can connect.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::net::TcpStream;

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
