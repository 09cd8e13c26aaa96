//! Herald's server-sent events client: `GET /sse?channels=…&token=…` identifies and joins in
//! the request itself; the stream opens with an `ident` message (the ident reply's data),
//! then carries one message per event whose `data:` is the event frame and whose `id:` is the
//! connection's position in every channel. Like a browser's `EventSource`, the client keeps
//! the last `id:` (in its [`Sink`]) and sends it as `Last-Event-ID` when it connects again.

use std::borrow::Cow;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::WaitForCancellationFuture;

use super::http::{self, HttpConn};
use super::{herald, ChannelReq, ClientError, Endpoint, IdentReply, RunEnd, Sink};
use crate::sys::now_us;

/// Longest message the parser holds while waiting for its end: a server that never ends a
/// line must not grow the harness without bound.
const MAX_MESSAGE: usize = 1 << 20;

/// Longest silence on a stream before it is taken for dead: Herald sends a heartbeat comment
/// every `sse.heartbeat` (15 s by default).
const SILENCE_LIMIT: Duration = Duration::from_secs(60);

/// One SSE message, borrowed from the stream where it can be.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Message<'a> {
    /// `event:`; empty when absent (the spec's `message`).
    pub event: &'a str,
    /// `data:` lines, joined by `\n` when there are several.
    pub data: Cow<'a, str>,
    /// `id:`, when the message has one.
    pub id: Option<&'a str>,
    /// A line was not UTF-8: the message cannot be trusted.
    pub bad: bool,
}

/// Splits a byte stream into SSE messages as chunks arrive. Lines end with `\n` (a `\r`
/// before it is dropped; a lone `\r` as a line end, which Herald never writes, is not
/// supported); a blank line ends a message; comment lines (`:` heartbeats) are skipped.
#[derive(Debug, Default)]
pub struct Parser {
    /// The start of a message whose end has not arrived yet.
    buf: Vec<u8>,
}

impl Parser {
    /// Feeds one chunk; calls `on` for every message it completes.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on: impl FnMut(Message<'_>),
    ) -> Result<(), ClientError> {
        if self.buf.is_empty() {
            // Usually a chunk holds whole messages: no copy.
            let used = messages(chunk, &mut on);
            self.buf.extend_from_slice(&chunk[used..]);
        } else {
            self.buf.extend_from_slice(chunk);
            let used = messages(&self.buf, &mut on);
            self.buf.drain(..used);
        }
        if self.buf.len() > MAX_MESSAGE {
            return Err(ClientError::Protocol(format!(
                "an SSE message longer than {MAX_MESSAGE} bytes"
            )));
        }
        Ok(())
    }
}

/// Calls `on` for each complete message in `bytes`; returns how many bytes they took.
fn messages(bytes: &[u8], on: &mut impl FnMut(Message<'_>)) -> usize {
    let mut used = 0;
    let mut pos = 0;
    let mut msg = Message::default();
    let (mut fields, mut data_lines) = (false, 0);
    while let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') {
        let raw = &bytes[pos..pos + nl];
        pos += nl + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.is_empty() {
            if fields {
                on(std::mem::take(&mut msg));
            }
            (used, fields, data_lines) = (pos, false, 0);
            continue;
        }
        let Ok(line) = std::str::from_utf8(raw) else {
            (msg.bad, fields) = (true, true);
            continue;
        };
        if line.starts_with(':') {
            continue;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        fields = true;
        match name {
            "event" => msg.event = value,
            "data" => {
                msg.data = match data_lines {
                    0 => Cow::Borrowed(value),
                    _ => Cow::Owned(format!("{}\n{value}", msg.data)),
                };
                data_lines += 1;
            }
            "id" => msg.id = Some(value),
            // `retry:` and fields from later specs are not the harness's business.
            _ => {}
        }
    }
    used
}

/// What one message asked of the client besides recording events.
enum Step {
    Continue,
    Ident(Result<IdentReply, ClientError>),
    Disconnect(i64),
}

/// Handles one message: events go to the sink, `id:` is kept for reconnecting.
fn handle(msg: Message<'_>, sink: &mut Sink<'_>, now: u64) -> Step {
    if msg.bad {
        sink.bad_frame();
        return Step::Continue;
    }
    let step = match msg.event {
        "ident" => Step::Ident(herald::parse_ident_reply(&msg.data)),
        "disconnect" => {
            let code = serde_json::from_str::<serde_json::Value>(&msg.data)
                .ok()
                .and_then(|v| v["code"].as_i64())
                .unwrap_or(0);
            Step::Disconnect(code)
        }
        // An event message (named after the event) or a notice (`joined`, `left`): the data is
        // the frame as a WebSocket carries it.
        _ => {
            let ctl = herald::process(&msg.data, sink, now);
            match ctl.disconnect {
                Some(code) => Step::Disconnect(code),
                None => Step::Continue,
            }
        }
    };
    if let Some(id) = msg.id {
        // Reuse the string: no allocation per event.
        let last = sink.last_event_id.get_or_insert_with(String::new);
        last.clear();
        last.push_str(id);
    }
    step
}

/// One SSE stream (opened at ident) and what is left of a message split across chunks.
pub struct SseConn {
    http: HttpConn,
    timeout: Duration,
    parser: Parser,
}

impl SseConn {
    /// A client from source address `src`; the stream opens at [`SseConn::ident`].
    pub fn new(ep: &Endpoint, src: Ipv4Addr) -> Self {
        SseConn {
            http: HttpConn::new(ep.addr, src, ep.timeout),
            timeout: ep.timeout,
            parser: Parser::default(),
        }
    }

    /// Opens the stream for `token`, joining `channels` (their `since` is not used: the
    /// position travels in `Last-Event-ID`, the sink's last `id:`), and reads up to the
    /// `ident` message. Events recovered after it go to `sink`.
    pub async fn ident(
        &mut self,
        token: &str,
        channels: &[ChannelReq],
        sink: &mut Sink<'_>,
    ) -> Result<IdentReply, ClientError> {
        let names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
        // Channel names and JWTs need no percent-encoding.
        let path = format!("/sse?channels={}&token={token}", names.join(","));
        let mut headers = vec![("accept", "text/event-stream")];
        if let Some(id) = &sink.last_event_id {
            headers.push(("last-event-id", id.as_str()));
        }
        let answer = self.http.stream(&path, &headers, self.timeout).await?;
        if answer.status != 200 {
            return Err(
                http::refusal(&answer.body).unwrap_or_else(|| ClientError::Status {
                    what: "/sse",
                    status: answer.status,
                    body: String::from_utf8_lossy(&answer.body).into_owned(),
                }),
            );
        }
        loop {
            let chunk = self.http.chunk().await?.ok_or(ClientError::Closed(Some(
                "stream ended before ident".into(),
            )))?;
            let now = now_us();
            let mut ident = None;
            let mut closed = None;
            self.parser
                .feed(&chunk, |msg| match handle(msg, sink, now) {
                    Step::Ident(r) if ident.is_none() => ident = Some(r),
                    Step::Disconnect(code) => closed = closed.or(Some(code)),
                    _ => {}
                })?;
            sink.end_message(now);
            if let Some(reply) = ident {
                return reply;
            }
            if let Some(code) = closed {
                return Err(ClientError::Closed(Some(format!("disconnect {code}"))));
            }
        }
    }

    /// Reads events until `stop` resolves or the stream ends. At `stop` the connection is
    /// dropped, as a closed browser tab drops it.
    pub async fn run(
        &mut self,
        sink: &mut Sink<'_>,
        mut stop: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> RunEnd {
        loop {
            let chunk = tokio::select! {
                biased;
                _ = &mut stop => return RunEnd::Stopped,
                c = tokio::time::timeout(SILENCE_LIMIT, self.http.chunk()) => c,
            };
            let chunk = match chunk {
                Err(_) => return RunEnd::Error(format!("nothing for {SILENCE_LIMIT:?}")),
                Ok(Err(e)) => return RunEnd::Error(e.to_string()),
                Ok(Ok(None)) => return RunEnd::Closed(None),
                Ok(Ok(Some(c))) => c,
            };
            let now = now_us();
            let mut closed = None;
            let fed = self.parser.feed(&chunk, |msg| {
                if let Step::Disconnect(code) = handle(msg, sink, now) {
                    closed = closed.or(Some(code));
                }
            });
            sink.end_message(now);
            if let Err(e) = fed {
                return RunEnd::Error(e.to_string());
            }
            if let Some(code) = closed {
                return RunEnd::Closed(Some(code));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Shared;
    use crate::stats::Tracker;

    fn all(parser: &mut Parser, chunk: &[u8]) -> Vec<(String, String, Option<String>, bool)> {
        let mut out = Vec::new();
        parser
            .feed(chunk, |m| {
                out.push((
                    m.event.to_string(),
                    m.data.into_owned(),
                    m.id.map(str::to_string),
                    m.bad,
                ))
            })
            .unwrap();
        out
    }

    #[test]
    fn parses_messages_across_chunks() {
        let mut p = Parser::default();
        let got = all(
            &mut p,
            b"event: ident\ndata: {\"a\":1}\nid: bench=3~E\n\n:\n\nevent: e\ndata: {\"op\"",
        );
        assert_eq!(
            got,
            vec![(
                "ident".into(),
                "{\"a\":1}".into(),
                Some("bench=3~E".into()),
                false
            )]
        );
        let got = all(
            &mut p,
            b":1}\r\nid: bench=4~E\r\n\r\ndata:x\ndata: y\n\nretry: 5\n\n",
        );
        assert_eq!(
            got,
            vec![
                (
                    "e".into(),
                    "{\"op\":1}".into(),
                    Some("bench=4~E".into()),
                    false
                ),
                (String::new(), "x\ny".into(), None, false),
                (String::new(), String::new(), None, false),
            ]
        );
        assert!(p.buf.is_empty());
        assert!(all(&mut p, b"data: \xff\n\n")[0].3);
        let mut big = Parser::default();
        assert!(big.feed(&vec![b'x'; MAX_MESSAGE + 1], |_| {}).is_err());
    }

    #[test]
    fn events_are_recorded_and_ids_kept() {
        let shared = Shared::new();
        let mut sink = Sink::new(Tracker::expect(&["bench"]), &shared, 0);
        let mut p = Parser::default();
        let mut steps = Vec::new();
        let stream = concat!(
            "event: ident\n",
            r#"data: {"user":"u1","conn":"c_1","node":"n","channels":{"bench":{"offset":4,"epoch":"E","recovered":true}}}"#,
            "\nid: bench=4~E\n\n",
            "event: e\n",
            r#"data: {"op":"event","event":"e","data":{"t":10,"n":0},"id":"x","ts":1,"via":{"bench":5}}"#,
            "\nid: bench=5~E\n\n",
            "event: disconnect\n",
            r#"data: {"op":"disconnect","code":4100,"reason":"shutdown","reconnect":true}"#,
            "\n\n"
        );
        p.feed(stream.as_bytes(), |m| steps.push(handle(m, &mut sink, 30)))
            .unwrap();
        sink.end_message(30);
        assert!(
            matches!(&steps[0], Step::Ident(Ok(r)) if r.channels[0].offset == 4
            && r.channels[0].recovered == Some(true))
        );
        assert!(matches!(steps[1], Step::Continue));
        assert!(matches!(steps[2], Step::Disconnect(4100)));
        assert_eq!(sink.tracker.last("bench"), 5);
        assert_eq!(sink.last_event_id.as_deref(), Some("bench=5~E"));
    }
}
