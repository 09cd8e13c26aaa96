//! Herald's WebSocket client: `ident` (joining channels in the same step), then events.
//! A text message holds one frame or several separated by `\n`.

use std::collections::HashMap;
use std::pin::Pin;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::WaitForCancellationFuture;

use super::{
    rfind, scan_u64_after, scan_via, ChannelPos, ChannelReq, ClientError, IdentReply, Payload,
    RunEnd, Sink, Via,
};
use crate::net::Ws;
use crate::sys::now_us;

/// One server frame, borrowing from the message text; fields not needed here are skipped.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    #[serde(borrow)]
    pub op: &'a str,
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(default)]
    pub ok: Option<bool>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub via: Option<Via<'a>>,
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub error: Option<String>,
    /// On `disconnect`: how long the server asks the client to wait before coming back (ms).
    #[serde(default)]
    pub reconnect_delay: Option<u64>,
}

/// The frames of one text message.
pub fn split_frames(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').filter(|f| !f.trim().is_empty())
}

/// What a message asked of the client besides recording events.
#[derive(Debug, Default)]
pub struct Control {
    /// `(id, ok, data or error text, code)` of each reply.
    pub replies: Vec<(u64, bool, String, Option<i64>)>,
    pub disconnect: Option<i64>,
    /// The disconnect's `reconnect_delay` (ms), when it carried one.
    pub reconnect_delay: Option<u64>,
}

/// Reads an event frame as Herald writes it (`{"op":"event",…,"via":{…}}`, `via` last, the
/// harness's payload `{"t":…}` first in `data`) without a full JSON parse. The harness reads
/// hundreds of thousands of frames a second on the cores the server also needs, and time it
/// spends per frame is measured as latency. Returns `None` for anything else, which then
/// takes the full parse.
pub fn fast_event(frame: &str) -> Option<(Via<'_>, Option<u64>)> {
    let rest = frame.strip_prefix(r#"{"op":"event","#)?;
    let via_at = rfind(rest, br#","via":{"#)?;
    let via = scan_via(rest[via_at..].strip_suffix("}}")?)?;
    Some((via, scan_u64_after(rest, br#","data":{"t":"#)))
}

/// Feeds every frame of one message to the sink; returns replies and disconnects.
pub fn process(text: &str, sink: &mut Sink<'_>, now: u64) -> Control {
    let mut ctl = Control::default();
    for f in split_frames(text) {
        if let Some((via, t)) = fast_event(f) {
            sink.event(&via, t, now);
            continue;
        }
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(f) else {
            sink.bad_frame();
            continue;
        };
        match frame.op {
            "event" => {
                let t = frame
                    .data
                    .and_then(|d| serde_json::from_str::<Payload>(d.get()).ok())
                    .and_then(|p| p.t);
                match &frame.via {
                    Some(via) => sink.event(via, t, now),
                    None => sink.bad_frame(),
                }
            }
            "reply" => {
                let id = frame
                    .id
                    .and_then(|r| r.get().parse::<u64>().ok())
                    .unwrap_or(0);
                let ok = frame.ok.unwrap_or(false);
                let body = if ok {
                    frame.data.map(|d| d.get().to_string()).unwrap_or_default()
                } else {
                    frame.error.clone().unwrap_or_default()
                };
                ctl.replies.push((id, ok, body, frame.code));
            }
            "disconnect" => {
                ctl.disconnect = Some(frame.code.unwrap_or(0));
                ctl.reconnect_delay = frame.reconnect_delay;
            }
            // joined/left notices and ops added later are not the harness's business.
            _ => {}
        }
    }
    ctl
}

#[derive(Debug, Deserialize)]
struct IdentData {
    #[serde(default)]
    channels: HashMap<String, ChanInfo>,
}

#[derive(Debug, Deserialize)]
struct ChanInfo {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
    #[serde(default)]
    recovered: Option<bool>,
}

/// The `ident` frame, joining `channels` (and resuming those with a position).
pub fn ident_frame(token: &str, channels: &[ChannelReq]) -> String {
    let mut chans = serde_json::Map::new();
    for c in channels {
        let v = match &c.since {
            Some((offset, epoch)) => serde_json::json!({"offset": offset, "epoch": epoch}),
            None => serde_json::json!({}),
        };
        chans.insert(c.name.clone(), v);
    }
    serde_json::json!({"op": "ident", "id": 1, "token": token, "channels": chans}).to_string()
}

pub struct HeraldConn {
    ws: Ws,
    /// The `reconnect_delay` (ms) of the disconnect that ended [`HeraldConn::run`], if any.
    pub reconnect_delay: Option<u64>,
}

impl HeraldConn {
    pub fn new(ws: Ws) -> Self {
        HeraldConn {
            ws,
            reconnect_delay: None,
        }
    }

    pub async fn ident(
        &mut self,
        token: &str,
        channels: &[ChannelReq],
        sink: &mut Sink<'_>,
    ) -> Result<IdentReply, ClientError> {
        self.ws
            .send(Message::text(ident_frame(token, channels)))
            .await?;
        loop {
            let msg = match self.ws.next().await {
                None => return Err(ClientError::Closed(None)),
                Some(m) => m?,
            };
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(f) => {
                    return Err(ClientError::Closed(
                        f.map(|f| format!("{} {}", f.code, f.reason)),
                    ))
                }
                _ => continue,
            };
            let now = now_us();
            let ctl = process(text.as_str(), sink, now);
            sink.end_message(now);
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
                return parse_ident_reply(&body);
            }
        }
    }

    pub async fn run(
        &mut self,
        sink: &mut Sink<'_>,
        mut stop: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> RunEnd {
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => return RunEnd::Stopped,
                m = self.ws.next() => match m {
                    None => return RunEnd::Closed(None),
                    Some(Err(e)) => return RunEnd::Error(e.to_string()),
                    Some(Ok(Message::Text(t))) => {
                        let now = now_us();
                        let ctl = process(t.as_str(), sink, now);
                        sink.end_message(now);
                        if let Some(code) = ctl.disconnect {
                            self.reconnect_delay = ctl.reconnect_delay;
                            return RunEnd::Closed(Some(code));
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        return RunEnd::Closed(f.map(|f| i64::from(u16::from(f.code))))
                    }
                    Some(Ok(_)) => {}
                }
            }
        }
    }
}

pub fn parse_ident_reply(body: &str) -> Result<IdentReply, ClientError> {
    let data: IdentData = serde_json::from_str(body)
        .map_err(|e| ClientError::Protocol(format!("ident reply data: {e}: {body}")))?;
    let mut channels: Vec<ChannelPos> = data
        .channels
        .into_iter()
        .map(|(name, c)| ChannelPos {
            name,
            offset: c.offset,
            epoch: c.epoch,
            recovered: c.recovered,
        })
        .collect();
    channels.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(IdentReply {
        channels,
        sio_pid: None,
        sio_recovered: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Shared;
    use crate::stats::Tracker;

    #[test]
    fn splits_batched_frames() {
        let t = "{\"op\":\"a\"}\n{\"op\":\"b\"}\n\n{\"op\":\"c\"}\n";
        assert_eq!(split_frames(t).count(), 3);
        assert_eq!(split_frames("{\"op\":\"a\"}").count(), 1);
    }

    #[test]
    fn processes_reply_then_events_in_one_message() {
        let shared = Shared::new();
        let mut sink = Sink::new(Tracker::expect(&["bench"]), &shared, 0);
        let text = concat!(
            r#"{"op":"reply","id":1,"ok":true,"data":{"user":"u1","channels":{"bench":{"offset":7,"epoch":"ab12","recovered":true}}}}"#,
            "\n",
            r#"{"op":"event","event":"e","data":{"t":100,"k":1},"id":"0192-x","ts":1,"via":{"bench":8}}"#,
            "\n",
            r#"{"op":"event","event":"e","data":{"t":100},"id":"0192-y","ts":1,"via":{"bench":9}}"#,
            "\nnot json"
        );
        let ctl = process(text, &mut sink, 600);
        sink.end_message(600);
        assert_eq!(ctl.replies.len(), 1);
        let (id, ok, body, _) = &ctl.replies[0];
        assert_eq!((*id, *ok), (1, true));
        let r = parse_ident_reply(body).unwrap();
        assert_eq!(r.channels[0].name, "bench");
        assert_eq!(r.channels[0].offset, 7);
        assert_eq!(r.channels[0].epoch, "ab12");
        assert_eq!(r.channels[0].recovered, Some(true));
        assert_eq!(sink.tracker.last("bench"), 9);
        assert_eq!(sink.tracker.bad_frames, 1);
        assert_eq!(shared.latency.merged().max(), 500);
    }

    #[test]
    fn the_fast_event_path_agrees_with_the_full_parse() {
        let frames = [
            r#"{"op":"event","event":"e","data":{"t":100,"k":1},"id":"0192-x","ts":1,"via":{"bench":8}}"#,
            r#"{"op":"event","event":"e","data":{"t":5,"pad":"x\"via\":{"},"id":"i","ts":1,"from":{"user":"u","conn":"c"},"via":{"@u1":3,"ch2":40}}"#,
            r#"{"op":"event","event":"e","data":{"n":1},"id":"i","ts":1,"via":{"bench":2}}"#,
        ];
        for f in frames {
            let (via, t) = fast_event(f).expect(f);
            let full: Frame<'_> = serde_json::from_str(f).unwrap();
            let full_t = full
                .data
                .and_then(|d| serde_json::from_str::<Payload>(d.get()).ok())
                .and_then(|p| p.t);
            assert_eq!(via.0, full.via.unwrap().0, "{f}");
            assert_eq!(t, full_t, "{f}");
        }
        for other in [
            r#"{"op":"reply","id":1,"ok":true}"#,
            r#"{"op":"event","event":"e","data":{"t":1},"via":{"be\"nch":1}}"#,
            r#"{"op":"event","event":"e","data":{"t":1},"via":{"bench":-1}}"#,
            r#"{"op":"event","event":"e","data":{"t":1},"via":{"bench":1} }"#,
            r#"{"op":"event","event":"e","data":{"t":1}}"#,
        ] {
            assert!(fast_event(other).is_none(), "{other}");
        }
    }

    #[test]
    fn error_reply_and_disconnect() {
        let shared = Shared::new();
        let mut sink = Sink::new(Tracker::default(), &shared, 0);
        let ctl = process(
            "{\"op\":\"reply\",\"id\":1,\"ok\":false,\"code\":4002,\"error\":\"bad token\"}\n{\"op\":\"disconnect\",\"code\":4002,\"reason\":\"auth\",\"reconnect\":false}",
            &mut sink,
            0,
        );
        assert_eq!(ctl.replies[0], (1, false, "bad token".into(), Some(4002)));
        assert_eq!(ctl.disconnect, Some(4002));
        assert_eq!(ctl.reconnect_delay, None);
        let ctl = process(
            r#"{"op":"disconnect","code":4100,"reason":"shutdown","reconnect":true,"reconnect_delay":2315}"#,
            &mut sink,
            0,
        );
        assert_eq!(
            (ctl.disconnect, ctl.reconnect_delay),
            (Some(4100), Some(2315))
        );
    }

    #[test]
    fn ident_frame_shape() {
        let f = ident_frame(
            "tok",
            &[
                ChannelReq {
                    name: "bench".into(),
                    since: None,
                },
                ChannelReq {
                    name: "c2".into(),
                    since: Some((5, "E1".into())),
                },
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["op"], "ident");
        assert_eq!(v["id"], 1);
        assert_eq!(v["channels"]["bench"], serde_json::json!({}));
        assert_eq!(v["channels"]["c2"]["offset"], 5);
        assert_eq!(v["channels"]["c2"]["epoch"], "E1");
    }
}
