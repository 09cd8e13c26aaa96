//! One soak client: identifies in a couple of channels, then, at random intervals, joins
//! one more, leaves one, or drops its connection and comes back resuming every channel from
//! its position, which must recover with no gap. Each membership is a [`Segment`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::segment::Segment;
use crate::client::herald::{fast_event, ident_frame, parse_ident_reply, split_frames, Frame};
use crate::client::{ChannelReq, Endpoint, Payload, Shared};
use crate::net::Ws;
use crate::sys::now_us;

/// What every client shares: where to connect, the channels to pick from, the counters.
pub struct World {
    pub ep: Endpoint,
    pub channels: Vec<String>,
    pub shared: Shared,
    /// Mean seconds between one client's actions.
    pub churn: Duration,
    /// Set once publishing ends: no new actions, so every client is back and caught up
    /// before the totals are taken.
    pub calm: CancellationToken,
    pub stop: CancellationToken,
}

/// Totals of one client, added up by the scenario.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Events on a channel the client was not in.
    pub unexpected: u64,
    pub joins: u64,
    pub leaves: u64,
    pub reconnects: u64,
    pub recovered: u64,
    pub recover_failed: u64,
    /// Connections the server ended, or attempts that failed.
    pub failures: u64,
    pub first_failure: Option<String>,
}

impl Tally {
    fn close(&mut self, seg: &Segment, published_hi: Option<u64>) {
        self.received += seg.received;
        self.lost += seg.lost(published_hi);
        self.duplicated += seg.duplicated;
        self.out_of_order += seg.out_of_order;
    }

    fn fail(&mut self, why: String) {
        self.failures += 1;
        self.first_failure.get_or_insert(why);
    }

    /// Adds another client's totals.
    pub fn add(&mut self, o: &Tally) {
        self.received += o.received;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.unexpected += o.unexpected;
        self.joins += o.joins;
        self.leaves += o.leaves;
        self.reconnects += o.reconnects;
        self.recovered += o.recovered;
        self.recover_failed += o.recover_failed;
        self.failures += o.failures;
        if self.first_failure.is_none() {
            self.first_failure.clone_from(&o.first_failure);
        }
    }
}

/// A request waiting for its reply.
enum Pending {
    Ident { resumed: bool },
    Join(String),
    Leave(String),
}

/// A client's open memberships when the run stops: channel and segment.
pub type Open = Vec<(String, Segment)>;

/// Small, seeded, good enough to pick actions: xorshift64*.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

struct Client<'w> {
    w: &'w World,
    i: usize,
    user: String,
    rng: Rng,
    joined: HashMap<String, (Segment, String)>,
    /// Events that came before their channel's join reply (the join raced a publish).
    early: Vec<(String, u64)>,
    pending: Option<(u64, Pending)>,
    next_id: u64,
    tally: Tally,
}

/// Runs client `i` until the world stops; returns its totals and open memberships.
pub async fn run(w: Arc<World>, i: usize) -> (Tally, Open) {
    let mut c = Client {
        w: &w,
        i,
        user: format!("u{i}"),
        rng: Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x1000_0000_01b3)),
        joined: HashMap::new(),
        early: Vec::new(),
        pending: None,
        next_id: 10,
        tally: Tally::default(),
    };
    let first: Vec<String> = (0..2)
        .map(|_| w.channels[c.rng.below(w.channels.len())].clone())
        .collect();
    c.session(&first).await;
    let open = c.joined.into_iter().map(|(ch, (s, _))| (ch, s)).collect();
    (c.tally, open)
}

impl Client<'_> {
    /// Connection after connection until the world stops.
    async fn session(&mut self, first: &[String]) {
        let mut fresh: Vec<ChannelReq> = first
            .iter()
            .map(|c| ChannelReq {
                name: c.clone(),
                since: None,
            })
            .collect();
        fresh.dedup_by(|a, b| a.name == b.name);
        let mut join = fresh;
        while !self.w.stop.is_cancelled() {
            let resumed = join.iter().any(|c| c.since.is_some());
            match self.connection(&join, resumed).await {
                Ok(()) => {}
                Err(e) => {
                    self.tally.fail(e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            // Back with every channel from its position.
            join = self
                .joined
                .iter()
                .map(|(name, (seg, epoch))| ChannelReq {
                    name: name.clone(),
                    since: Some((seg.last(), epoch.clone())),
                })
                .collect();
            self.pending = None;
            self.early.clear();
            if !self.w.stop.is_cancelled() && !self.w.calm.is_cancelled() {
                self.tally.reconnects += 1;
                let away = 100 + self.rng.below(400) as u64;
                tokio::time::sleep(Duration::from_millis(away)).await;
            }
        }
    }

    /// One connection: ident, then events and actions until it is time to drop it
    /// (`Ok`) or it fails (`Err`).
    async fn connection(&mut self, join: &[ChannelReq], resumed: bool) -> Result<(), String> {
        let w = self.w;
        let ep = &w.ep;
        let src = crate::net::source_ip(self.i);
        let mut ws = crate::net::connect_ws(&ep.ws_url(), ep.addr, src, ep.read_buffer, ep.timeout)
            .await
            .map_err(|e| e.to_string())?;
        let token = crate::token::mint(&ep.jwt_secret, &self.user);
        send(&mut ws, ident_frame(&token, join)).await?;
        self.pending = Some((1, Pending::Ident { resumed }));
        loop {
            let pause = self
                .w
                .churn
                .mul_f64(0.5 + self.rng.below(1000) as f64 / 1000.0);
            let act = tokio::time::sleep(pause);
            tokio::pin!(act);
            loop {
                tokio::select! {
                    _ = self.w.stop.cancelled() => return Ok(()),
                    _ = &mut act, if self.pending.is_none() && !self.w.calm.is_cancelled() => break,
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(t))) => self.message(t.as_str())?,
                        Some(Ok(Message::Close(f))) => {
                            return Err(format!("closed by the server: {f:?}"))
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e.to_string()),
                        None => return Err("connection ended".into()),
                    }
                }
            }
            match self.rng.below(5) {
                // Drop without a goodbye, as a network does.
                0 => return Ok(()),
                1 | 2 if self.joined.len() < self.w.channels.len().min(4) => {
                    let ch = self.w.channels[self.rng.below(self.w.channels.len())].clone();
                    if !self.joined.contains_key(&ch) {
                        self.request(&mut ws, "join", ch.clone(), Pending::Join(ch))
                            .await?;
                    }
                }
                _ if self.joined.len() > 1 => {
                    let k = self.rng.below(self.joined.len());
                    let Some(ch) = self.joined.keys().nth(k).cloned() else {
                        continue;
                    };
                    self.request(&mut ws, "leave", ch.clone(), Pending::Leave(ch))
                        .await?;
                }
                _ => {}
            }
        }
    }

    /// Sends `op` on `channel` with a fresh id and waits for its reply as `what`.
    async fn request(
        &mut self,
        ws: &mut Ws,
        op: &str,
        channel: String,
        what: Pending,
    ) -> Result<(), String> {
        self.next_id += 1;
        let id = self.next_id;
        let frame = serde_json::json!({"op": op, "id": id, "channel": channel});
        send(ws, frame.to_string()).await?;
        self.pending = Some((id, what));
        Ok(())
    }

    /// Every frame of one message, in order.
    fn message(&mut self, text: &str) -> Result<(), String> {
        let now = now_us();
        let mut lat = Vec::new();
        for f in split_frames(text) {
            if let Some((via, t)) = fast_event(f) {
                for &(ch, off) in &via.0 {
                    self.event(ch, off);
                }
                lat.extend(t.map(|t| now.saturating_sub(t)));
                continue;
            }
            let Ok(frame) = serde_json::from_str::<Frame<'_>>(f) else {
                self.tally.unexpected += 1;
                continue;
            };
            match frame.op {
                "event" => {
                    for &(ch, off) in frame.via.iter().flat_map(|v| v.0.iter()) {
                        self.event(ch, off);
                    }
                    let t = frame
                        .data
                        .and_then(|d| serde_json::from_str::<Payload>(d.get()).ok())
                        .and_then(|p| p.t);
                    lat.extend(t.map(|t| now.saturating_sub(t)));
                }
                "reply" => self.reply(&frame)?,
                "disconnect" => return Err(format!("disconnect {:?}", frame.code)),
                _ => {}
            }
        }
        if !lat.is_empty() {
            let shared = &self.w.shared;
            shared
                .delivered
                .fetch_add(lat.len() as u64, Ordering::Relaxed);
            let mut h = shared
                .latency
                .shard(self.i)
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for v in lat {
                h.saturating_record(v.max(1));
            }
        }
        Ok(())
    }

    fn event(&mut self, ch: &str, off: u64) {
        if !ch.starts_with("soak") {
            return;
        }
        if let Some((seg, _)) = self.joined.get_mut(ch) {
            seg.record(off);
        } else if matches!(&self.pending, Some((_, Pending::Join(c))) if c == ch) {
            self.early.push((ch.to_string(), off));
        } else {
            self.tally.unexpected += 1;
        }
    }

    fn reply(&mut self, frame: &Frame<'_>) -> Result<(), String> {
        let id = frame.id.and_then(|r| r.get().parse::<u64>().ok());
        let Some((want, what)) = self.pending.take() else {
            return Ok(());
        };
        if id != Some(want) {
            self.pending = Some((want, what));
            return Ok(());
        }
        if frame.ok != Some(true) {
            return Err(format!(
                "request refused: {:?} {}",
                frame.code,
                frame.error.clone().unwrap_or_default()
            ));
        }
        let data = frame.data.map(|d| d.get()).unwrap_or("{}");
        match what {
            Pending::Ident { resumed } => {
                let reply = parse_ident_reply(data).map_err(|e| e.to_string())?;
                for c in reply.channels.iter().filter(|c| c.name.starts_with("soak")) {
                    match self.joined.get_mut(&c.name) {
                        Some((_, epoch)) if resumed => {
                            if c.recovered == Some(true) && *epoch == c.epoch {
                                self.tally.recovered += 1;
                            } else {
                                // The segment stays open: what was missed counts as lost.
                                self.tally.recover_failed += 1;
                            }
                        }
                        _ => {
                            self.joined.insert(
                                c.name.clone(),
                                (Segment::after(c.offset), c.epoch.clone()),
                            );
                        }
                    }
                }
            }
            Pending::Join(ch) => {
                let pos: Position = serde_json::from_str(data).map_err(|e| e.to_string())?;
                let mut seg = Segment::after(pos.offset);
                for (_, off) in self.early.drain(..).filter(|(c, _)| *c == ch) {
                    if off > pos.offset {
                        seg.record(off);
                    }
                }
                self.joined.insert(ch, (seg, pos.epoch));
                self.tally.joins += 1;
            }
            Pending::Leave(ch) => {
                if let Some((seg, _)) = self.joined.remove(&ch) {
                    self.tally.close(&seg, None);
                }
                self.tally.leaves += 1;
            }
        }
        Ok(())
    }
}

/// A join reply's position.
#[derive(serde::Deserialize)]
struct Position {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

async fn send(ws: &mut Ws, text: String) -> Result<(), String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| e.to_string())
}

/// Closes the memberships still open at the end against what was published last.
pub fn close_open(tally: &mut Tally, open: &Open, published_hi: impl Fn(&str) -> Option<u64>) {
    for (ch, seg) in open {
        tally.close(seg, Some(published_hi(ch).unwrap_or(0)));
    }
}
