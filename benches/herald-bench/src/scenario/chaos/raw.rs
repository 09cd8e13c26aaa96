//! Raw TCP toward Herald for the abuse a WebSocket library will not send: a hand-made
//! upgrade, hand-encoded (possibly broken) frames, and waiting for the server to hang up.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// TCP connect from `src`; a `recv_buffer` (bytes) keeps a client that never reads from
/// hiding the server's backlog in a large kernel buffer.
pub async fn connect(
    dst: SocketAddr,
    src: Ipv4Addr,
    recv_buffer: Option<u32>,
) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(b) = recv_buffer {
        sock.set_recv_buffer_size(b)?;
    }
    sock.bind(SocketAddr::V4(SocketAddrV4::new(src, 0)))?;
    tokio::time::timeout(Duration::from_secs(5), sock.connect(dst))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// The upgrade request for `/ws`, with a fixed key (the server's answer is not checked).
pub fn upgrade_request(dst: SocketAddr) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {dst}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Sends the upgrade and reads the response head; Ok when it is a 101.
pub async fn upgrade(stream: &mut TcpStream, dst: SocketAddr) -> std::io::Result<bool> {
    stream.write_all(upgrade_request(dst).as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    // Byte by byte so nothing after the head (the server's first frames) is swallowed.
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Ok(false);
        }
        head.push(byte[0]);
    }
    Ok(head.starts_with(b"HTTP/1.1 101"))
}

/// One client frame: `first` is the FIN/RSV/opcode byte, the payload masked (as a client
/// must) unless `masked` is false.
pub fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(first);
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A masked, final text frame.
pub fn text(payload: &str) -> Vec<u8> {
    frame(0x81, payload.as_bytes(), true)
}

/// Reads until the server closes (Ok with the WebSocket close code when a close frame was
/// seen) or `limit` passes (Err).
pub async fn until_closed<R: AsyncRead + Unpin>(
    stream: &mut R,
    limit: Duration,
) -> Result<Option<u16>, ()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut code = None;
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => code = close_code(&buf[..n]).or(code),
            }
        }
    };
    match tokio::time::timeout(limit, read_all).await {
        Ok(()) => Ok(code),
        Err(_) => Err(()),
    }
}

/// The code of a server close frame (`0x88`, unmasked) within `bytes`, if one starts there.
pub fn close_code(bytes: &[u8]) -> Option<u16> {
    let at = bytes
        .windows(2)
        .position(|w| w[0] == 0x88 && w[1] >= 2 && w[1] < 126)?;
    let b = bytes.get(at + 2..at + 4)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode_lengths_and_masks() {
        let f = frame(0x81, b"hi", false);
        assert_eq!(f, vec![0x81, 2, b'h', b'i']);
        let f = text("hi");
        assert_eq!(f[1], 0x80 | 2);
        assert_eq!(f.len(), 2 + 4 + 2);
        assert_eq!(f[6] ^ f[2], b'h');
        let big = frame(0x81, &[0u8; 70_000], true);
        assert_eq!(big[1], 0x80 | 127);
        assert_eq!(big.len(), 2 + 8 + 4 + 70_000);
        assert_eq!(frame(0x81, &[0u8; 300], true)[1], 0x80 | 126);
    }

    #[test]
    fn finds_a_close_code() {
        assert_eq!(
            close_code(&[0x81, 1, b'x', 0x88, 2, 0x03, 0xea]),
            Some(1002)
        );
        assert_eq!(close_code(&[0x81, 1, b'x']), None);
    }
}
