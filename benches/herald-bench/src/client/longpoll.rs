//! Herald's long-poll client: `POST /lp/open` for a session, frames through `POST /lp/send`,
//! and one poll always parked in `GET /lp/poll`, acknowledging everything the previous poll
//! brought. Frames are the same JSON as over the WebSocket, so they go through the same
//! [`herald::process`].

use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::WaitForCancellationFuture;

use bytes::Bytes;
use hyper::Method;

use super::herald::{self, Control};
use super::http::HttpConn;
use super::{ChannelReq, ClientError, Endpoint, IdentReply, RunEnd, Sink};
use crate::sys::now_us;

/// Longest a poll may take: Herald answers an empty poll after `longpoll.poll_timeout`
/// (25 s by default); past this the connection is taken for dead.
const POLL_LIMIT: Duration = Duration::from_secs(60);

/// One entry of a poll response, the frame left as the server wrote it.
#[derive(Debug, Deserialize)]
struct Item<'a> {
    seq: u64,
    #[serde(borrow)]
    frame: &'a RawValue,
}

#[derive(Debug, Deserialize)]
struct Opened {
    sid: String,
}

/// Feeds every frame of a poll response newer than `acked` to the sink; returns the highest
/// `seq` seen and what the frames asked of the client. A frame at or below `acked` is one the
/// client already has (a poll response lost on the way is sent again), not a duplicate.
pub fn process_poll(
    body: &str,
    acked: u64,
    sink: &mut Sink<'_>,
    now: u64,
) -> Result<(u64, Control), ClientError> {
    let items: Vec<Item<'_>> = serde_json::from_str(body).map_err(|e| {
        ClientError::Protocol(format!(
            "poll response: {e}: {}",
            &body[..body.len().min(200)]
        ))
    })?;
    let mut ctl = Control::default();
    let mut last = acked;
    for item in items {
        if item.seq <= last {
            continue;
        }
        last = item.seq;
        let c = herald::process(item.frame.get(), sink, now);
        ctl.replies.extend(c.replies);
        ctl.disconnect = ctl.disconnect.or(c.disconnect);
    }
    Ok((last, ctl))
}

/// One long-poll session and the connection its requests take.
pub struct LpConn {
    http: HttpConn,
    /// `/lp/send?sid=…`
    send_path: String,
    /// `/lp/poll?sid=…&ack=`: the acknowledged `seq` goes last.
    poll_path: String,
    /// Highest `seq` processed, acknowledged by the next poll.
    acked: u64,
    timeout: Duration,
}

impl LpConn {
    /// Opens a session from source address `src`.
    pub async fn open(ep: &Endpoint, src: Ipv4Addr) -> Result<Self, ClientError> {
        let mut http = HttpConn::new(ep.addr, src, ep.timeout);
        let body = http
            .call(Method::POST, "/lp/open", None, ep.timeout)
            .await?
            .expect(200, "/lp/open")?;
        let opened: Opened = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("/lp/open: {e}")))?;
        Ok(LpConn {
            send_path: format!("/lp/send?sid={}", opened.sid),
            poll_path: format!("/lp/poll?sid={}&ack=", opened.sid),
            http,
            acked: 0,
            timeout: ep.timeout,
        })
    }

    async fn send(&mut self, text: String) -> Result<(), ClientError> {
        let body = Some(("application/json", Bytes::from(text)));
        self.http
            .call(Method::POST, &self.send_path, body, self.timeout)
            .await?
            .expect(204, "/lp/send")
            .map(drop)
    }

    /// One poll: everything not yet acknowledged, or what arrives within the server's poll
    /// timeout (possibly nothing).
    async fn poll(&mut self, sink: &mut Sink<'_>) -> Result<Control, ClientError> {
        let path = format!("{}{}", self.poll_path, self.acked);
        let body = self
            .http
            .call(Method::GET, &path, None, POLL_LIMIT)
            .await?
            .expect(200, "/lp/poll")?;
        let now = now_us();
        let text = std::str::from_utf8(&body)
            .map_err(|_| ClientError::Protocol("poll response is not UTF-8".into()))?;
        let (acked, ctl) = process_poll(text, self.acked, sink, now)?;
        self.acked = acked;
        sink.end_message(now);
        sink.shared.polls.fetch_add(1, Ordering::Relaxed);
        Ok(ctl)
    }

    /// Sends `ident` (joining `channels`, resuming those with a position) and polls until its
    /// reply; events polled meanwhile go to `sink`.
    pub async fn ident(
        &mut self,
        token: &str,
        channels: &[ChannelReq],
        sink: &mut Sink<'_>,
    ) -> Result<IdentReply, ClientError> {
        self.send(herald::ident_frame(token, channels)).await?;
        loop {
            let ctl = self.poll(sink).await?;
            if let Some(code) = ctl.disconnect {
                return Err(ClientError::Closed(Some(format!("disconnect {code}"))));
            }
            if let Some((_, ok, body, code)) = ctl.replies.into_iter().find(|r| r.0 == 1) {
                if !ok {
                    return Err(ClientError::Refused {
                        code: code.unwrap_or(0),
                        error: body,
                    });
                }
                return herald::parse_ident_reply(&body);
            }
        }
    }

    /// Polls until `stop` resolves or the session ends. Dropping the parked poll at `stop`
    /// closes its connection; the server ends the session at its `session_timeout`, as it
    /// would for a client that went away.
    pub async fn run(
        &mut self,
        sink: &mut Sink<'_>,
        mut stop: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> RunEnd {
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => return RunEnd::Stopped,
                r = self.poll(sink) => match r {
                    Ok(ctl) => {
                        if let Some(code) = ctl.disconnect {
                            return RunEnd::Closed(Some(code));
                        }
                    }
                    // The session is gone (4404), as a closed WebSocket.
                    Err(ClientError::Status { status: 404, .. }) => {
                        return RunEnd::Closed(Some(4404))
                    }
                    Err(e) => return RunEnd::Error(e.to_string()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Shared;
    use crate::stats::Tracker;

    #[test]
    fn poll_responses_skip_what_was_already_seen() {
        let shared = Shared::new();
        let mut sink = Sink::new(Tracker::expect(&["bench"]), &shared, 0);
        let body = concat!(
            r#"[{"seq":1,"frame":{"op":"reply","id":1,"ok":true,"data":{"channels":{"bench":{"offset":4,"epoch":"E"}}}}},"#,
            r#"{"seq":2,"frame":{"op":"event","event":"e","data":{"t":10,"n":0},"id":"x","ts":1,"via":{"bench":5}}}]"#
        );
        let (acked, ctl) = process_poll(body, 0, &mut sink, 30).unwrap();
        assert_eq!(acked, 2);
        assert_eq!(ctl.replies.len(), 1);
        assert_eq!(sink.tracker.last("bench"), 5);
        // The same response again (its predecessor was lost) plus a new frame: only the new
        // one counts.
        let again = concat!(
            r#"[{"seq":2,"frame":{"op":"event","event":"e","data":{"t":10},"id":"x","ts":1,"via":{"bench":5}}},"#,
            r#"{"seq":3,"frame":{"op":"event","event":"e","data":{"t":10},"id":"y","ts":1,"via":{"bench":6}}},"#,
            r#"{"seq":4,"frame":{"op":"disconnect","code":4100,"reason":"shutdown","reconnect":true}}]"#
        );
        let (acked, ctl) = process_poll(again, acked, &mut sink, 30).unwrap();
        sink.end_message(30);
        assert_eq!(acked, 4);
        assert_eq!(ctl.disconnect, Some(4100));
        let t = sink.tracker.track("bench").unwrap();
        assert_eq!((t.received, t.dup), (2, 0));
        assert_eq!(process_poll("[]", 4, &mut sink, 0).unwrap().0, 4);
        assert!(process_poll("{}", 4, &mut sink, 0).is_err());
    }
}
