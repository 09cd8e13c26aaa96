//! Bad WebSocket frames over raw TCP against `/ws` itself: each fails the connection with
//! the close code RFC 6455 gives it (1002 protocol error, 1007 bad UTF-8, and the contract's
//! 4009 for a frame too large), and Herald goes on serving.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{start, Gateway};

/// A socket past an opening handshake with `extra` header lines, and the server's answer.
async fn upgraded_with(gw: &Gateway, extra: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n",
        gw.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (tcp, head)
}

/// A client frame: `first` is FIN, RSV and opcode; the payload is masked unless `unmasked`.
fn frame(first: u8, payload: &[u8], unmasked: bool) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    let flag = if unmasked { 0 } else { 0x80 };
    match payload.len() {
        n @ 0..=125 => out.push(flag | n as u8),
        n @ 126..=65535 => {
            out.push(flag | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(flag | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if unmasked {
        out.extend_from_slice(payload);
    } else {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }
    out
}

/// The close code of the server's close frame, skipping data frames; `None` if the socket
/// ended without one.
async fn close_code(tcp: &mut TcpStream) -> Option<u16> {
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Parse whatever whole frames have arrived.
        let mut at = 0;
        while read.len() >= at + 2 {
            let opcode = read[at] & 0x0f;
            let (len, header) = match read[at + 1] & 0x7f {
                126 if read.len() >= at + 4 => {
                    (u16::from_be_bytes([read[at + 2], read[at + 3]]) as usize, 4)
                }
                127 if read.len() >= at + 10 => (
                    u64::from_be_bytes(read[at + 2..at + 10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if read.len() < at + header + len {
                break;
            }
            if opcode == 0x8 {
                let payload = &read[at + header..at + header + len];
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
            at += header + len;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => read.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("the server neither closed nor failed the connection"),
        }
    }
}

#[tokio::test]
async fn bad_frames_fail_the_connection_with_the_right_close_code() {
    let gw = start(&[]).await;
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("an unmasked frame", frame(0x81, b"{}", true), 1002),
        ("a reserved bit set", frame(0xc1, b"{}", false), 1002),
        ("a reserved opcode", frame(0x83, b"{}", false), 1002),
        ("a fragmented ping", frame(0x09, b"", false), 1002),
        ("a ping of 126 bytes", frame(0x89, &[0u8; 126], false), 1002),
        (
            "a continuation with nothing to continue",
            frame(0x80, b"{}", false),
            1002,
        ),
        (
            "text that is not UTF-8",
            frame(0x81, &[0xff, 0xfe, 0xfd], false),
            1007,
        ),
        ("a length of a terabyte", huge, 4009),
    ];
    each_closes_with_its_code(&gw, "", "HTTP/1.1 101", cases).await;
    gw.stop().await;
}

/// Sends each case's bytes on a new socket (upgraded with `extra` headers, the answer
/// holding `head_has`) and expects its close code; then the server still serves.
async fn each_closes_with_its_code(
    gw: &Gateway,
    extra: &str,
    head_has: &str,
    cases: Vec<(&str, Vec<u8>, u16)>,
) {
    for (what, bytes, want) in cases {
        let (mut tcp, head) = upgraded_with(gw, extra).await;
        assert!(head.contains(head_has), "{head}");
        tcp.write_all(&bytes).await.unwrap();
        let code = close_code(&mut tcp).await;
        println!("{what}: close {code:?}");
        assert_eq!(code, Some(want), "{what}");
    }
    let mut client = gw.client("after").await;
    let reply = client.request(serde_json::json!({"op": "ping"})).await;
    assert_eq!(reply["ok"], true, "still serving");
}

/// `data` as a permessage-deflate payload: raw deflate, sync-flushed, tail removed.
fn deflated(data: &[u8]) -> Vec<u8> {
    let mut compress = flate2::Compress::new(flate2::Compression::best(), false);
    let mut out = Vec::with_capacity(data.len() / 100 + 1024);
    compress
        .compress_vec(data, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    assert_eq!(
        compress.total_in() as usize,
        data.len(),
        "room for all of it"
    );
    out.truncate(out.len() - 4);
    out
}

/// permessage-deflate is agreed only with `ws_compression`; a compressed message that would
/// inflate past `max_message_size` ends the connection with 4009 (the server stops
/// inflating at the bound), data that does not inflate fails it with 1007.
#[tokio::test]
async fn compression_is_agreed_when_on_and_a_compressed_bomb_is_refused() {
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
    let plain = start(&[]).await;
    let (_, head) = upgraded_with(&plain, offer).await;
    assert!(
        !head.to_ascii_lowercase().contains("permessage-deflate"),
        "{head}"
    );
    plain.stop().await;

    let gw = start(&["--ws-compression"]).await;
    // 32 MiB of JSON whitespace, some 32 KiB on the wire.
    let bomb = deflated(&vec![b' '; 32 << 20]);
    println!("bomb: {} bytes inflating to 32 MiB", bomb.len());
    let cases = vec![
        ("a compressed bomb", frame(0xc1, &bomb, false), 4009),
        (
            "data that does not inflate",
            frame(0xc1, &[0xff, 0xff, 0xff], false),
            1007,
        ),
    ];
    each_closes_with_its_code(&gw, offer, "permessage-deflate", cases).await;
    gw.stop().await;
}
