//! Taking an HTTP/1 connection out of hyper once a response head is written.
//!
//! An SSE stream is one response that never ends, and hyper keeps its per-connection read
//! and header buffers (8 KiB each) for as long as it serves one: more than everything else an
//! idle stream holds. hyper hands a connection back only for protocol upgrades, so the core
//! wraps every accepted connection in [`Detachable`] and gives each request a [`Detach`]
//! (as an extension). A handler that wants the connection calls [`Detach::after_head`] and
//! returns its response with a body that never yields: hyper writes the head, and at the
//! flush that puts it on the wire the connection goes to the handler's receiver. hyper then
//! sees an error and lets go of the rest; the handler's task writes the body itself, and may
//! give the connection back for its next request ([`Detach::resume`]): a parked long-poll.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;

/// A connection taken out of hyper: whatever the listener stacked (TLS, deadlines, TCP).
pub type DetachedIo = Box<dyn Io>;

/// What a detached connection is: bytes in and out.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Serves HTTP again on a connection a handler took and is done with.
pub trait Resume: Send + Sync {
    /// Serves requests on `io`, whose peer is `peer`, until it closes.
    fn resume(self: Arc<Self>, io: DetachedIo, peer: SocketAddr);
}

/// A request's way to its connection; shared with the connection's [`Detachable`].
#[derive(Clone)]
pub struct Detach(Arc<Slot>);

struct Slot {
    /// Read on every write of the connection, so an atomic, not the mutex.
    requested: AtomicBool,
    receiver: Mutex<Option<oneshot::Sender<DetachedIo>>>,
    peer: SocketAddr,
    resumer: Option<Arc<dyn Resume>>,
}

impl Detach {
    /// A connection's way to hand itself over; `resumer` takes it back, if there is one.
    fn new(peer: SocketAddr, resumer: Option<Arc<dyn Resume>>) -> Self {
        Self(Arc::new(Slot {
            requested: AtomicBool::new(false),
            receiver: Mutex::new(None),
            peer,
            resumer,
        }))
    }

    /// Gives a connection taken with [`Detach::after_head`] back to HTTP, once the response
    /// is written out whole; without a resumer it closes.
    pub fn resume(&self, io: DetachedIo) {
        if let Some(resumer) = &self.0.resumer {
            resumer.clone().resume(io, self.0.peer);
        }
    }

    /// Whether a connection taken out can be given back.
    pub fn resumable(&self) -> bool {
        self.0.resumer.is_some()
    }

    /// Asks for the connection once the head of the response being returned is on the wire;
    /// the task that awaits the answer gets it. `None` when hyper closes the connection first,
    /// or when the connection was already asked for.
    pub fn after_head(&self) -> impl Future<Output = Option<DetachedIo>> + Send + 'static {
        let (sender, receiver) = oneshot::channel();
        let mut slot = self.0.receiver.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() && !self.0.requested.load(Ordering::Acquire) {
            *slot = Some(sender);
            self.0.requested.store(true, Ordering::Release);
        }
        async move {
            let mut io = receiver.await.ok()?;
            adopt(&mut io).await;
            Some(io)
        }
    }
}

/// Makes the awaiting task the connection's reader. Until something polls the socket again,
/// its waker is hyper's, whose finished connection task (2.4 KiB) that waker keeps allocated:
/// most of what an idle long-poll session held. On TCP (and TLS over it) a read into an empty
/// buffer registers this task and takes no bytes (TLS may move a record into its own buffer,
/// where it stays).
async fn adopt(io: &mut DetachedIo) {
    std::future::poll_fn(|cx| {
        let _ = Pin::new(&mut *io).poll_read(cx, &mut ReadBuf::new(&mut []));
        Poll::Ready(())
    })
    .await;
}

/// A connection stream that can be handed to the request that asks for it ([`Detach`]).
pub struct Detachable<S> {
    inner: Option<S>,
    /// Boxes `inner` for the taker; unboxed already when it is a resumed connection.
    into_io: fn(S) -> DetachedIo,
    detach: Detach,
    /// Bytes were written since the connection was asked for: the response head.
    head_written: bool,
}

impl<S: Io + 'static> Detachable<S> {
    /// Wraps `inner`, whose peer is `peer`; the [`Detach`] goes to every request served on it.
    pub fn new(inner: S, peer: SocketAddr, resumer: Option<Arc<dyn Resume>>) -> (Self, Detach) {
        Self::with(inner, |inner| Box::new(inner), peer, resumer)
    }
}

impl Detachable<DetachedIo> {
    /// Wraps a connection given back with [`Detach::resume`], to be taken again.
    pub fn resumed(io: DetachedIo, peer: SocketAddr, resumer: Arc<dyn Resume>) -> (Self, Detach) {
        Self::with(io, |io| io, peer, Some(resumer))
    }
}

impl<S> Detachable<S> {
    fn with(
        inner: S,
        into_io: fn(S) -> DetachedIo,
        peer: SocketAddr,
        resumer: Option<Arc<dyn Resume>>,
    ) -> (Self, Detach) {
        let detach = Detach::new(peer, resumer);
        let stream = Self {
            inner: Some(inner),
            into_io,
            detach: detach.clone(),
            head_written: false,
        };
        (stream, detach)
    }

    fn inner(&mut self) -> io::Result<&mut S> {
        self.inner.as_mut().ok_or_else(gone)
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the connection was taken out of HTTP",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Detachable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.inner()?).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> Detachable<S> {
    fn wrote(&mut self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0)
            && self.detach.0.requested.load(Ordering::Acquire)
        {
            self.head_written = true;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Detachable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(self.inner()?).poll_write(cx, buf);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(self.inner()?).poll_write_vectored(cx, bufs);
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(S::is_write_vectored)
    }

    /// hyper flushes the stream only once its own buffer is written out: after the head's
    /// flush, nothing of the response is left in hyper.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(Pin::new(self.inner()?).poll_flush(cx))?;
        if !self.head_written {
            return Poll::Ready(Ok(()));
        }
        let receiver = self
            .detach
            .0
            .receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let (Some(receiver), Some(inner)) = (receiver, self.inner.take()) {
            // A receiver that went away drops the connection, as hyper would have.
            let _ = receiver.send((self.into_io)(inner));
        }
        Poll::Ready(Err(gone()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner()?).poll_shutdown(cx)
    }
}

/// Writes `data` as one chunk of a `transfer-encoding: chunked` body (what hyper chose for the
/// head it wrote), and flushes it: TLS holds what it was given until flushed.
///
/// # Errors
/// When the connection fails.
pub async fn write_chunk(io: &mut DetachedIo, data: Bytes) -> io::Result<()> {
    let mut size = BytesMut::with_capacity(20);
    std::fmt::Write::write_fmt(&mut size, format_args!("{:x}\r\n", data.len()))
        .map_err(io::Error::other)?;
    io.write_all_buf(&mut size.chain(data).chain(&b"\r\n"[..]))
        .await?;
    io.flush().await
}

/// Ends a chunked body: the zero-length last chunk.
///
/// # Errors
/// When the connection fails.
pub async fn end_chunks(io: &mut DetachedIo) -> io::Result<()> {
    io.write_all(b"0\r\n\r\n").await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn hands_over_after_the_head_is_flushed() {
        let (server, mut client) = tokio::io::duplex(1024);
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let (mut stream, detach) = Detachable::new(server, peer, None);
        // An earlier response, flushed before anyone asked: the connection stays.
        stream.write_all(b"first").await.unwrap();
        stream.flush().await.unwrap();
        let taken = detach.after_head();
        // An empty flush before the head is written does not hand it over either.
        stream.flush().await.unwrap();
        stream.write_all(b"|head").await.unwrap();
        let err = stream.flush().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert!(stream.write_all(b"more").await.is_err());
        let mut io = taken.await.expect("the connection");
        write_chunk(&mut io, Bytes::from_static(b"|body"))
            .await
            .unwrap();
        end_chunks(&mut io).await.unwrap();
        drop((io, stream));
        let mut seen = String::new();
        client.read_to_string(&mut seen).await.unwrap();
        assert_eq!(seen, "first|head5\r\n|body\r\n0\r\n\r\n");
        // Asked twice: the second asker gets nothing.
        assert!(detach.after_head().await.is_none());
    }

    /// Counts nothing: only its `Arc`'s strong count matters, as a task's does.
    struct TaskWaker;

    impl std::task::Wake for TaskWaker {
        fn wake(self: Arc<Self>) {}
    }

    #[tokio::test]
    async fn the_taker_becomes_the_reader_so_hyper_task_is_freed() {
        // TCP, not a duplex: a duplex does not wait on a read into an empty buffer.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let (mut stream, detach) = Detachable::new(server, peer, None);
        // hyper's connection task waits to read the next request.
        let hyper_task = Arc::new(TaskWaker);
        let waker = std::task::Waker::from(hyper_task.clone());
        let mut buf = [0u8; 8];
        let read = Pin::new(&mut stream).poll_read(
            &mut Context::from_waker(&waker),
            &mut ReadBuf::new(&mut buf),
        );
        assert!(read.is_pending());
        drop(waker);
        assert_eq!(Arc::strong_count(&hyper_task), 2, "the connection holds it");
        let taken = detach.after_head();
        stream.write_all(b"head").await.unwrap();
        assert!(stream.flush().await.is_err());
        let _io = taken.await.expect("the connection");
        assert_eq!(
            Arc::strong_count(&hyper_task),
            1,
            "the connection let it go"
        );
    }
}
