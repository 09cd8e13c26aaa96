//! HTTP/1 over a plain socket, for what a client library hides: framing, keep-alive, versions.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any read may wait.
const WAIT: Duration = Duration::from_secs(10);

/// What the connection runs over: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection, and what was read on it but not yet taken.
pub struct RawHttp {
    tcp: Box<dyn Io>,
    buf: Vec<u8>,
}

impl RawHttp {
    /// Connects to `addr`.
    pub async fn connect(addr: std::net::SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Self {
            tcp: Box::new(tcp),
            buf: Vec::new(),
        }
    }

    /// Connects to `addr` over TLS, checking the server's certificate for its IP address.
    pub async fn connect_tls(addr: std::net::SocketAddr, tls: Arc<rustls::ClientConfig>) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        Self {
            tcp: Box::new(tls),
            buf: Vec::new(),
        }
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &str) {
        self.tcp.write_all(bytes.as_bytes()).await.expect("write");
    }

    /// Writes an HTTP/1.1 `GET` of `path`.
    pub async fn get(&mut self, path: &str) {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: herald\r\n\r\n"))
            .await;
    }

    /// Writes an HTTP/1.1 `POST` of `body` to `path`.
    pub async fn post(&mut self, path: &str, body: &str) {
        let length = body.len();
        self.send(&format!(
            "POST {path} HTTP/1.1\r\nHost: herald\r\ncontent-length: {length}\r\n\r\n{body}"
        ))
        .await;
    }

    /// Reads until `needle` has arrived; returns where the bytes after it start.
    async fn read_past(&mut self, needle: &[u8]) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(at) = self.buf.windows(needle.len()).position(|w| w == needle) {
                return at + needle.len();
            }
            let mut more = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.tcp.read(&mut more))
                .await
                .expect("the bytes in time")
                .expect("read");
            assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(needle));
            self.buf.extend_from_slice(&more[..n]);
        }
    }

    /// Takes the first `n` bytes read, reading more if needed.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let have = self.buf.len();
            let mut more = [0u8; 4096];
            let read = tokio::time::timeout(WAIT, self.tcp.read(&mut more))
                .await
                .expect("the bytes in time")
                .expect("read");
            assert!(read > 0, "closed with {have} of {n} bytes");
            self.buf.extend_from_slice(&more[..read]);
        }
        self.buf.drain(..n).collect()
    }

    /// The response head: status line and headers, lower-cased.
    pub async fn head(&mut self) -> String {
        let end = self.read_past(b"\r\n\r\n").await;
        String::from_utf8(self.buf.drain(..end).collect())
            .expect("a UTF-8 head")
            .to_lowercase()
    }

    /// One chunk of a chunked body; empty for the last one.
    pub async fn chunk(&mut self) -> String {
        let end = self.read_past(b"\r\n").await;
        let size = String::from_utf8(self.buf.drain(..end).collect()).expect("a size line");
        let size = usize::from_str_radix(size.trim_end(), 16).expect("a hex size");
        let mut chunk = self.take(size + 2).await;
        assert_eq!(chunk.split_off(size), b"\r\n", "a chunk ends with CRLF");
        String::from_utf8(chunk).expect("UTF-8")
    }

    /// Reads until `needle` and returns everything read up to it (a body until close).
    pub async fn until(&mut self, needle: &str) -> String {
        let end = self.read_past(needle.as_bytes()).await;
        String::from_utf8(self.buf.drain(..end).collect()).expect("UTF-8")
    }

    /// A whole response: head and body, chunked or with a length.
    pub async fn response(&mut self) -> (String, String) {
        let head = self.head().await;
        let body = if head.contains("transfer-encoding: chunked") {
            let mut body = String::new();
            loop {
                let chunk = self.chunk().await;
                if chunk.is_empty() {
                    break body;
                }
                body += &chunk;
            }
        } else {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse().expect("a length"));
            String::from_utf8(self.take(length).await).expect("UTF-8")
        };
        (head, body)
    }
}
