//! `write_timeout` for every connection, under TLS and HTTP: a write the peer does not take
//! within the timeout fails with [`io::ErrorKind::TimedOut`].
//!
//! A client that stops reading fills its socket, and then every write to it waits. The
//! WebSocket loop could watch its own writes, but an SSE stream or a long-poll response is
//! written by hyper, which waits for as long as the socket does: the client kept its
//! connection and everything queued for it. Failing the write at the socket ends it the same
//! way on every transport: hyper drops the connection (a long-poll response not taken is sent
//! again by the next poll, since nothing in it was acknowledged), and the WebSocket loop
//! answers the error with 4102.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::metrics::Metrics;

/// Gives every stream `inner` accepts a write deadline.
#[derive(Clone)]
pub struct WriteDeadline<A> {
    inner: A,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl<A> WriteDeadline<A> {
    /// Wraps `inner`'s streams so a write blocked for `timeout` fails; counted in `metrics`.
    pub fn new(inner: A, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            timeout,
            metrics,
        }
    }
}

impl<A, I, S> Accept<I, S> for WriteDeadline<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
{
    type Stream = Deadlined<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let (timeout, metrics) = (self.timeout, self.metrics.clone());
        let accepted = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            let stream = Deadlined {
                inner: stream,
                timeout,
                stalled: None,
                metrics,
            };
            Ok((stream, service))
        })
    }
}

/// A stream whose writes fail once they have waited for the deadline.
pub struct Deadlined<S> {
    inner: S,
    timeout: Duration,
    /// Armed by a write that could not proceed, cleared by one that did. Boxed and only
    /// while blocked: idle connections are many and should not each hold a timer.
    stalled: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
}

impl<S> Deadlined<S> {
    /// Passes `polled` through, clearing the deadline on progress; fails it once blocked
    /// past the deadline.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Disarmed, so the writer's last attempts (a WebSocket close) get a fresh deadline.
        self.stalled = None;
        self.metrics.limit_hit("write_timeout");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer took no data within write_timeout",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlined<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlined<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}
