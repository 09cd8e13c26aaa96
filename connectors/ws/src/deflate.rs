//! permessage-deflate (RFC 7692) on top of tungstenite, which has none.
//!
//! Outbound, a message is deflated here and sent as a raw frame with RSV1 set. Inbound,
//! tungstenite refuses any frame with RSV1, so [`Inflating`] sits between the socket and
//! tungstenite: it streams ordinary frames through untouched and replaces each compressed
//! message by one plain frame of its inflated payload, bounded by the message size limit (a
//! small compressed message must not inflate into gigabytes).
//!
//! Without context takeover (the default) each message is deflated on its own, with a
//! compressor per thread, so an idle connection holds no compression state; with it, each
//! connection keeps its own compressor and decompressor (some 300 KiB) for better ratios on
//! small, similar messages.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::http::header::GetAll;
use axum::http::HeaderValue;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// Messages shorter than this go out uncompressed. Deflating one event of ~250 bytes takes
/// some 15 µs and saves a third of it, per connection (`cargo bench --bench fanout --
/// deflate`): a poor trade on a fan-out; a batch of 16 KiB shrinks six-fold for 37 µs.
const MIN_COMPRESSED_LEN: usize = 1024;

/// The empty stored block that ends every compressed message on the wire, removed by the
/// sender and put back by the receiver (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What the server accepts of permessage-deflate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    /// Whether permessage-deflate is offered at all.
    pub enabled: bool,
    /// Whether compression contexts are kept from one message to the next.
    pub context_takeover: bool,
}

/// The parameters agreed with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The server keeps its compression context between messages.
    pub server_takeover: bool,
    /// The client keeps its compression context between messages.
    pub client_takeover: bool,
}

impl Settings {
    /// The first permessage-deflate offer in the client's `Sec-WebSocket-Extensions` that can
    /// be honoured, if compression is on.
    pub fn negotiate(&self, offers: GetAll<'_, HeaderValue>) -> Option<Deflate> {
        if !self.enabled {
            return None;
        }
        offers
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .find_map(|offer| self.accept(offer))
    }

    /// This offer's terms, or `None` if they cannot be honoured or are malformed.
    fn accept(&self, offer: &str) -> Option<Deflate> {
        let mut parts = offer.split(';').map(str::trim);
        if parts.next()? != "permessage-deflate" {
            return None;
        }
        let (mut server_no_takeover, mut client_no_takeover) = (false, false);
        let mut seen = Vec::new();
        for param in parts {
            let (name, value) = match param.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
                None => (param, None),
            };
            if seen.contains(&name) {
                return None;
            }
            seen.push(name);
            match (name, value) {
                ("server_no_context_takeover", None) => server_no_takeover = true,
                ("client_no_context_takeover", None) => client_no_takeover = true,
                // Our inflater takes any window up to 15 bits, the default.
                ("client_max_window_bits", None) => {}
                ("client_max_window_bits", Some(bits)) => {
                    window_bits(bits)?;
                }
                // The compressor cannot make a window smaller than 15 bits.
                ("server_max_window_bits", Some(bits)) if window_bits(bits)? == 15 => {}
                _ => return None,
            }
        }
        Some(Deflate {
            server_takeover: self.context_takeover && !server_no_takeover,
            client_takeover: self.context_takeover && !client_no_takeover,
        })
    }
}

fn window_bits(text: &str) -> Option<u8> {
    text.parse().ok().filter(|bits| (8..=15).contains(bits))
}

impl Deflate {
    /// The `Sec-WebSocket-Extensions` answer. The server may ask the client not to keep its
    /// context even when the client did not offer it (RFC 7692 §7.1.1.2).
    pub fn response_header(&self) -> HeaderValue {
        let mut text = String::from("permessage-deflate");
        if !self.server_takeover {
            text.push_str("; server_no_context_takeover");
        }
        if !self.client_takeover {
            text.push_str("; client_no_context_takeover");
        }
        HeaderValue::from_str(&text).expect("ASCII")
    }
}

thread_local! {
    /// The compressor of connections without context takeover, reset for every message.
    static SHARED_COMPRESSOR: RefCell<Compress> = RefCell::new(new_compressor());
}

fn new_compressor() -> Compress {
    // The fastest level: a gateway compresses every message for every connection.
    Compress::new(Compression::fast(), false)
}

/// Compresses a connection's outbound messages.
pub struct Compressor {
    /// The connection's own compressor, with context takeover.
    kept: Option<Box<Compress>>,
}

impl Compressor {
    /// A compressor for what was agreed.
    pub fn new(deflate: &Deflate) -> Self {
        Self {
            kept: deflate.server_takeover.then(|| Box::new(new_compressor())),
        }
    }

    /// `text` as the message to send: compressed with RSV1 set, or as it is when short.
    pub fn text(&mut self, text: Bytes) -> Message {
        if text.len() < MIN_COMPRESSED_LEN {
            return Message::Text(text.try_into().unwrap_or_default());
        }
        let compressed = match &mut self.kept {
            Some(kept) => deflate(kept, &text),
            None => SHARED_COMPRESSOR.with_borrow_mut(|shared| {
                let compressed = deflate(shared, &text);
                shared.reset();
                compressed
            }),
        };
        let mut frame = Frame::message(compressed, OpCode::Data(Data::Text), true);
        frame.header_mut().rsv1 = true;
        Message::Frame(frame)
    }
}

/// `data` deflated and sync-flushed, without the trailing empty block.
fn deflate(compress: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    let start = compress.total_in();
    loop {
        let consumed = (compress.total_in() - start) as usize;
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        // Deflating into a buffer cannot fail; a `Sync` flush with room left is complete.
        let _ = compress.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync);
        let consumed = (compress.total_in() - start) as usize;
        if consumed == data.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    out
}

/// Why a compressed message from the client was refused.
#[derive(Debug, thiserror::Error)]
pub enum InflateError {
    /// It inflates past the message size limit.
    #[error("a compressed message inflates past max_message_size")]
    TooLarge,
    /// It is not valid deflate data.
    #[error("a compressed message does not inflate")]
    Corrupt,
    /// A new data frame came before the compressed message's last fragment.
    #[error("a data frame interrupts a fragmented compressed message")]
    Interleaved,
}

/// The inbound side of a connection: compressed messages become plain frames for tungstenite.
/// Without deflate agreed it only passes reads through.
pub struct Inflating<S> {
    inner: S,
    rewrite: Option<Box<Rewrite>>,
}

/// State of the inbound rewrite.
struct Rewrite {
    /// Read from the socket, not yet looked at.
    raw: BytesMut,
    /// Ready for tungstenite.
    out: BytesMut,
    /// Payload bytes of an ordinary frame still to stream through as they are.
    passing: u64,
    /// The compressed message being gathered: its opcode and payload so far.
    message: Option<(u8, Vec<u8>)>,
    /// The connection's own decompressor (with the client's context takeover) or a fresh
    /// one per message.
    decompress: Decompress,
    client_takeover: bool,
    /// Largest inflated (and compressed) message.
    limit: usize,
    eof: bool,
}

impl<S> Inflating<S> {
    /// Wraps `inner`; rewrites only when `deflate` was agreed. `limit` bounds a message.
    pub fn new(inner: S, deflate: Option<&Deflate>, limit: usize) -> Self {
        let rewrite = deflate.map(|deflate| {
            Box::new(Rewrite {
                raw: BytesMut::new(),
                out: BytesMut::new(),
                passing: 0,
                message: None,
                decompress: Decompress::new(false),
                client_takeover: deflate.client_takeover,
                limit,
                eof: false,
            })
        });
        Self { inner, rewrite }
    }
}

impl Rewrite {
    /// Moves what it can from `raw` to `out`; `Ok(false)` when it needs more input.
    fn step(&mut self) -> Result<bool, InflateError> {
        if self.passing > 0 {
            let n = (self.passing as usize).min(self.raw.len());
            if n == 0 {
                return Ok(false);
            }
            self.out.extend_from_slice(&self.raw.split_to(n));
            self.passing -= n as u64;
            return Ok(true);
        }
        let Some(header) = FrameHead::parse(&self.raw) else {
            return Ok(false);
        };
        let opcode = header.opcode;
        let ours = header.masked
            && match opcode {
                1 | 2 if header.rsv1 => true,
                0 => self.message.is_some(),
                _ => false,
            };
        if !ours {
            if self.message.is_some() && matches!(opcode, 1 | 2) {
                return Err(InflateError::Interleaved);
            }
            // Not ours to change: tungstenite reads (and judges) it as it came.
            self.out.extend_from_slice(&self.raw.split_to(header.len));
            self.passing = header.payload;
            return Ok(true);
        }
        let gathered = self
            .message
            .as_ref()
            .map_or(0, |(_, payload)| payload.len());
        if gathered as u64 + header.payload > self.limit as u64 {
            return Err(InflateError::TooLarge);
        }
        let whole = header.len + header.payload as usize;
        if self.raw.len() < whole {
            self.raw.reserve(whole - self.raw.len());
            return Ok(false);
        }
        let mut frame = self.raw.split_to(whole);
        frame.advance(header.len);
        for (i, byte) in frame.iter_mut().enumerate() {
            *byte ^= header.mask[i % 4];
        }
        let (_, payload) = self.message.get_or_insert_with(|| (opcode, Vec::new()));
        payload.extend_from_slice(&frame);
        if header.fin {
            let (opcode, mut payload) = self.message.take().expect("gathered above");
            payload.extend_from_slice(&TAIL);
            let inflated = inflate(&mut self.decompress, &payload, self.limit)?;
            if !self.client_takeover {
                self.decompress.reset(false);
            }
            plain_frame(&mut self.out, opcode, &inflated);
        }
        Ok(true)
    }
}

/// A client frame's header.
struct FrameHead {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    masked: bool,
    mask: [u8; 4],
    /// Header length in bytes.
    len: usize,
    payload: u64,
}

impl FrameHead {
    fn parse(raw: &[u8]) -> Option<Self> {
        let (b0, b1) = (*raw.first()?, *raw.get(1)?);
        let masked = b1 & 0x80 != 0;
        let (payload, mut len) = match b1 & 0x7f {
            126 => (
                u64::from(u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?)),
                4,
            ),
            127 => (u64::from_be_bytes(raw.get(2..10)?.try_into().ok()?), 10),
            n => (u64::from(n), 2),
        };
        let mut mask = [0; 4];
        if masked {
            mask.copy_from_slice(raw.get(len..len + 4)?);
            len += 4;
        }
        Some(Self {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            opcode: b0 & 0x0f,
            masked,
            mask,
            len,
            payload,
        })
    }
}

/// Appends a final, masked (with a zero key, as client frames must be) frame of `payload`.
fn plain_frame(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.put_u8(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.put_u8(0x80 | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(0x80 | 127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(&[0; 4]);
    out.put_slice(payload);
}

/// `data` (ending with [`TAIL`]) inflated, at most `limit` bytes of it.
fn inflate(
    decompress: &mut Decompress,
    data: &[u8],
    limit: usize,
) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::with_capacity((data.len() * 4).clamp(64, limit.saturating_add(1)));
    let start = decompress.total_in();
    loop {
        let consumed = (decompress.total_in() - start) as usize;
        let before = out.len();
        decompress
            .decompress_vec(&data[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|_| InflateError::Corrupt)?;
        if out.len() > limit {
            return Err(InflateError::TooLarge);
        }
        let consumed_now = (decompress.total_in() - start) as usize;
        if consumed_now == data.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        if out.len() == out.capacity() {
            out.reserve(out.capacity().min(limit + 1 - out.len()).max(64));
        } else if consumed_now == consumed && out.len() == before {
            // No progress with room to spare: the data ended its stream early.
            return Err(InflateError::Corrupt);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(rewrite) = &mut this.rewrite else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            if !rewrite.out.is_empty() {
                let n = rewrite.out.len().min(buf.remaining());
                buf.put_slice(&rewrite.out.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if rewrite.step().map_err(io::Error::other)? {
                continue;
            }
            if rewrite.eof {
                // A truncated frame: hand over what there is, then the end.
                let rest = rewrite.raw.split();
                rewrite.out.extend_from_slice(&rest);
                if rewrite.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            rewrite.raw.reserve(4096);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut rewrite.raw
            ))?;
            rewrite.eof = read == 0;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(settings: Settings, header: &'static str) -> Option<Deflate> {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("sec-websocket-extensions", HeaderValue::from_static(header));
        settings.negotiate(headers.get_all("sec-websocket-extensions"))
    }

    #[test]
    fn negotiation_honours_what_it_can_and_declines_the_rest() {
        let on = Settings {
            enabled: true,
            context_takeover: true,
        };
        let both = Some(Deflate {
            server_takeover: true,
            client_takeover: true,
        });
        assert_eq!(
            offer(on, "permessage-deflate; client_max_window_bits"),
            both
        );
        assert_eq!(
            offer(on, "permessage-deflate; server_no_context_takeover"),
            Some(Deflate {
                server_takeover: false,
                client_takeover: true
            })
        );
        // A smaller server window cannot be made; the next offer can be taken.
        assert_eq!(
            offer(
                on,
                "permessage-deflate; server_max_window_bits=10, permessage-deflate"
            ),
            both
        );
        assert_eq!(offer(on, "permessage-deflate; bogus"), None);
        assert_eq!(
            offer(on, "permessage-deflate; client_max_window_bits=99"),
            None
        );
        assert_eq!(
            offer(
                on,
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover"
            ),
            None
        );
        assert_eq!(offer(on, "x-webkit-deflate-frame"), None);
        let off = Settings::default();
        assert_eq!(offer(off, "permessage-deflate"), None);
        let no_takeover = Settings {
            enabled: true,
            context_takeover: false,
        };
        let agreed = offer(no_takeover, "permessage-deflate").unwrap();
        assert_eq!(
            agreed.response_header(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn messages_round_trip_and_a_bomb_is_refused() {
        let text = "{\"op\":\"event\",\"data\":\"hello hello hello\"}".repeat(20);
        let mut compress = new_compressor();
        let compressed = deflate(&mut compress, text.as_bytes());
        assert!(compressed.len() < text.len() / 4);
        let mut data = compressed.clone();
        data.extend_from_slice(&TAIL);
        let mut decompress = Decompress::new(false);
        let inflated = inflate(&mut decompress, &data, 1 << 20).unwrap();
        assert_eq!(inflated, text.as_bytes());

        let bomb = vec![b'a'; 10 << 20];
        let mut data = deflate(&mut new_compressor(), &bomb);
        assert!(data.len() < 64 << 10);
        data.extend_from_slice(&TAIL);
        assert!(matches!(
            inflate(&mut Decompress::new(false), &data, 1 << 20),
            Err(InflateError::TooLarge)
        ));
        assert!(matches!(
            inflate(
                &mut Decompress::new(false),
                &[0xff, 0xff, 0xff, 0x00, 0x00, 0xff, 0xff],
                1 << 20
            ),
            Err(InflateError::Corrupt)
        ));
    }
}
