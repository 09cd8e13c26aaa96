//! The abusive clients: each kind misbehaves in its own way, over and over on fresh
//! connections, until told to stop, and counts what it tried and how the server ended it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_util::sync::CancellationToken;

use super::raw;
use crate::client::herald::ident_frame;
use crate::client::ChannelReq;

/// How an abusive client misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Abuse {
    /// Text that is not a frame (not JSON, wrong types, unknown ops): answered 4000, kept.
    Malformed,
    /// Broken WebSocket framing (unmasked, reserved bits, bad opcode, fragmented ping).
    BadFrames,
    /// Frames far past `max_frames_per_second`: 4029, then cut.
    Flood,
    /// One message past `max_message_size`: cut with 4009.
    Oversized,
    /// TCP connect, then silence: cut by `header_timeout`.
    HalfOpen,
    /// Upgraded, then half a frame and silence: cut by `auth_timeout`.
    Stalled,
    /// Joins, sends requests, never reads the replies: cut with 4102.
    NeverRead,
    /// Request headers one byte at a time: cut by `header_timeout`.
    Slowloris,
    /// Connect, ident, hang up, again.
    ReconnectLoop,
}

/// Every kind, in report order.
pub const ALL: [Abuse; 9] = [
    Abuse::Malformed,
    Abuse::BadFrames,
    Abuse::Flood,
    Abuse::Oversized,
    Abuse::HalfOpen,
    Abuse::Stalled,
    Abuse::NeverRead,
    Abuse::Slowloris,
    Abuse::ReconnectLoop,
];

impl Abuse {
    /// Its name in figures and the report.
    pub fn name(self) -> &'static str {
        match self {
            Abuse::Malformed => "malformed",
            Abuse::BadFrames => "bad_frames",
            Abuse::Flood => "flood",
            Abuse::Oversized => "oversized",
            Abuse::HalfOpen => "half_open",
            Abuse::Stalled => "stalled",
            Abuse::NeverRead => "never_read",
            Abuse::Slowloris => "slowloris",
            Abuse::ReconnectLoop => "reconnect_loop",
        }
    }
}

/// What one kind did.
#[derive(Debug, Default)]
pub struct Counts {
    pub connections: AtomicU64,
    /// Frames sent (for slowloris: header bytes).
    pub sent: AtomicU64,
    /// Connections the server ended before the client was done with them.
    pub cut: AtomicU64,
    /// Close codes of those cuts (0: none seen).
    pub codes: Mutex<BTreeMap<u16, u64>>,
    /// Connections that could not even be opened.
    pub failed: AtomicU64,
}

impl Counts {
    fn cut_with(&self, code: Option<u16>) {
        self.cut.fetch_add(1, Ordering::Relaxed);
        *self
            .codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code.unwrap_or(0))
            .or_default() += 1;
    }
}

/// Where abusers connect and what they need to identify.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub jwt_secret: String,
    pub max_message_size: usize,
}

/// Runs one abusive client of `kind` from source address number `src` until `stop`.
pub async fn run(kind: Abuse, t: Target, src: usize, counts: Arc<Counts>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        counts.connections.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = stop.cancelled() => return,
            r = once(kind, &t, src, &counts) => if r.is_err() {
                counts.failed.fetch_add(1, Ordering::Relaxed);
            },
        }
        let pause = if kind == Abuse::ReconnectLoop {
            50
        } else {
            100
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// How long to wait for the server to end a connection the client is done abusing.
const LINGER: Duration = Duration::from_secs(15);

/// One connection's worth of abuse.
async fn once(kind: Abuse, t: &Target, src: usize, counts: &Counts) -> std::io::Result<()> {
    let ip = crate::net::source_ip(src);
    let small = (kind == Abuse::NeverRead).then_some(4096);
    let mut stream = raw::connect(t.addr, ip, small).await?;
    let upgraded = !matches!(kind, Abuse::HalfOpen | Abuse::Slowloris);
    if upgraded && !raw::upgrade(&mut stream, t.addr).await? {
        return Err(std::io::Error::other("upgrade refused"));
    }
    if kind == Abuse::NeverRead {
        // Nothing reads: a failed write is how the cut shows.
        let (_rd, mut wr) = stream.into_split();
        if behave(kind, t, &mut wr, counts).await.is_err() {
            counts.cut_with(None);
        }
        return Ok(());
    }
    let (mut rd, mut wr) = stream.into_split();
    let watch = raw::until_closed(&mut rd, LINGER + Duration::from_secs(60));
    tokio::pin!(watch);
    tokio::select! {
        closed = &mut watch => {
            if let Ok(code) = closed {
                counts.cut_with(code);
            }
        }
        done = behave(kind, t, &mut wr, counts) => {
            let expect_cut = !matches!(kind, Abuse::Malformed | Abuse::ReconnectLoop);
            if done.is_ok() && expect_cut {
                // Done misbehaving: give the server its time to hang up.
                if let Ok(Ok(code)) = tokio::time::timeout(LINGER, &mut watch).await {
                    counts.cut_with(code);
                }
            } else if done.is_err() {
                counts.cut_with(None);
            }
        }
    }
    Ok(())
}

fn ident(t: &Target, user: &str, channels: &[&str]) -> Vec<u8> {
    let token = crate::token::mint(&t.jwt_secret, user);
    let join: Vec<ChannelReq> = channels
        .iter()
        .map(|c| ChannelReq {
            name: (*c).into(),
            since: None,
        })
        .collect();
    raw::text(&ident_frame(&token, &join))
}

async fn send(
    wr: &mut OwnedWriteHalf,
    bytes: &[u8],
    frames: u64,
    c: &Counts,
) -> std::io::Result<()> {
    wr.write_all(bytes).await?;
    c.sent.fetch_add(frames, Ordering::Relaxed);
    Ok(())
}

/// The misbehaviour itself, on the write side. Returns when the client is done; an error
/// is a write the server no longer took.
async fn behave(
    kind: Abuse,
    t: &Target,
    wr: &mut OwnedWriteHalf,
    c: &Counts,
) -> std::io::Result<()> {
    let ms = Duration::from_millis;
    match kind {
        Abuse::Malformed => {
            const JUNK: [&str; 6] = [
                "not json",
                r#"{"op":"#,
                "[1,2,3]",
                r#"{"op":"nope","id":1}"#,
                r#"{"op":"join","id":"x","channel":5}"#,
                r#"{"op":"ident","id":2,"token":7}"#,
            ];
            for k in 0..60 {
                send(wr, &raw::text(JUNK[k % JUNK.len()]), 1, c).await?;
                tokio::time::sleep(ms(20)).await;
            }
        }
        Abuse::BadFrames => {
            let n = c.connections.load(Ordering::Relaxed) as usize;
            let bad = match n % 4 {
                0 => raw::frame(0x81, b"{}", false),  // not masked
                1 => raw::frame(0xC1, b"{}", true),   // RSV1 without an extension
                2 => raw::frame(0x83, b"{}", true),   // reserved opcode
                _ => raw::frame(0x09, b"ping", true), // a fragmented control frame
            };
            send(wr, &bad, 1, c).await?;
        }
        Abuse::Flood => {
            send(wr, &ident(t, "flood", &[]), 1, c).await?;
            for batch in 0..50u64 {
                let mut buf = Vec::with_capacity(100 * 64);
                for k in 0..100 {
                    let f = format!(r#"{{"op":"leave","id":{},"channel":"x"}}"#, batch * 100 + k);
                    buf.extend(raw::text(&f));
                }
                send(wr, &buf, 100, c).await?;
                tokio::time::sleep(ms(10)).await;
            }
        }
        Abuse::Oversized => {
            send(wr, &ident(t, "big", &[]), 1, c).await?;
            let big = format!(
                r#"{{"op":"publish","id":3,"channel":"bench","event":"e","data":"{}"}}"#,
                "x".repeat(t.max_message_size + 1024)
            );
            send(wr, &raw::text(&big), 1, c).await?;
        }
        Abuse::HalfOpen => {}
        Abuse::Stalled => {
            // A header announcing 100 masked bytes, and only 10 of them.
            let f = raw::frame(0x81, &[b'x'; 100], true);
            send(wr, &f[..2 + 4 + 10], 1, c).await?;
        }
        Abuse::NeverRead => {
            send(wr, &ident(t, "deaf", &["bench"]), 1, c).await?;
            // Requests under the frame rate limit whose replies are large and queue as live
            // frames: `presence` lists every member of `bench` (history replies go to the
            // separately budgeted backlog lane instead).
            for k in 0..8000u64 {
                let f = format!(r#"{{"op":"presence","id":{},"channel":"bench"}}"#, k + 10);
                send(wr, &raw::text(&f), 1, c).await?;
                tokio::time::sleep(Duration::from_micros(2500)).await;
            }
        }
        Abuse::Slowloris => {
            let head = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Slow: ", t.addr);
            for b in head.bytes().chain(std::iter::repeat(b'a')).take(200) {
                send(wr, &[b], 1, c).await?;
                tokio::time::sleep(ms(300)).await;
            }
        }
        Abuse::ReconnectLoop => {
            send(wr, &ident(t, "loop", &[]), 1, c).await?;
        }
    }
    Ok(())
}
