//! Opening client connections over loopback, each from its own source address in 127.0.0.0/8.
//!
//! One destination (ip, port) and one source IP give at most ~28k ephemeral ports, and sockets in
//! TIME_WAIT from the previous run hold theirs; spreading clients over many 127.x.y.z sources
//! keeps tens of thousands of connections (and back-to-back runs) from running out of ports.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("tcp connect from {src} to {dst}: {err}")]
    Tcp {
        src: Ipv4Addr,
        dst: SocketAddr,
        err: std::io::Error,
    },
    #[error("websocket handshake: {0}")]
    Handshake(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Source address of client number `i`: 127.1.0.1, 127.1.0.2, … 127.1.0.250, 127.1.1.1, …
/// (60,000 distinct addresses before wrapping; never .0 or .255 in the last octet).
pub fn source_ip(i: usize) -> Ipv4Addr {
    let n = i % 60_000;
    Ipv4Addr::new(
        127,
        1 + (n / 62_500) as u8,
        (n / 250) as u8,
        1 + (n % 250) as u8,
    )
}

/// WebSocket settings for a load client: small buffers, because the harness holds up to tens of
/// thousands of them and each reads short frames. tungstenite's default read buffer is 128 KiB
/// allocated eagerly, which would be 1.3 GB at 10k clients.
pub fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
}

pub type Ws = WebSocketStream<TcpStream>;

/// TCP connect from `src` (port chosen by the kernel) to `dst`, with Nagle off: frames are
/// small and latency is measured.
pub async fn connect_tcp(dst: SocketAddr, src: Ipv4Addr) -> Result<TcpStream, NetError> {
    let tcp = |err| NetError::Tcp { src, dst, err };
    let sock = TcpSocket::new_v4().map_err(tcp)?;
    sock.bind(SocketAddr::V4(SocketAddrV4::new(src, 0)))
        .map_err(tcp)?;
    let stream = sock.connect(dst).await.map_err(tcp)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// TCP connect from `src` (port chosen by the kernel) and WebSocket handshake to `url`.
pub async fn connect_ws(
    url: &str,
    dst: SocketAddr,
    src: Ipv4Addr,
    read_buffer: usize,
    timeout: Duration,
) -> Result<Ws, NetError> {
    let fut = async {
        let stream = connect_tcp(dst, src).await?;
        let (ws, _resp) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config(read_buffer)))
                .await?;
        Ok(ws)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| NetError::Timeout(timeout))?
}

/// A free TCP port on 127.0.0.1 for a server we are about to start.
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ips_are_loopback_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..60_000 {
            let ip = source_ip(i);
            assert!(ip.is_loopback());
            let o = ip.octets();
            assert!(o[3] != 0 && o[3] != 255);
            assert!(seen.insert(ip), "{ip} repeated at {i}");
        }
        assert_eq!(source_ip(0), source_ip(60_000));
    }
}
