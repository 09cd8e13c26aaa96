//! The hub: connection registry, channels with history, and fan-out.
//!
//! Every channel lives behind its own mutex in a sharded map, so publishes to different
//! channels never contend. A publish locks its target channels (in name order, so two
//! multi-channel publishes cannot deadlock), assigns offsets, appends to history and queues one
//! shared frame to every member with a non-blocking `try_send`; nothing here waits on a client.
//! Holding the channel lock while queueing is what makes per-channel order and gap-free
//! recovery hold: a joining client's reply and recovered events are queued under the same lock,
//! so no live event can slip in between or before them.
//!
//! The style guide suggests one dispatcher task owning all tables; we chose per-channel locks
//! because a publish then costs no task hop and the HTTP handler gets its offsets back
//! synchronously, and because channels shard naturally.

mod auth_deadline;
mod channel;
mod conn;
mod dedup;
mod event;
mod fanout;
mod frame;
mod session;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use herald_connector_api::{
    ChannelName, ChannelSummary, Disconnect, Envelope, Gateway, GatewayInfo, HistoryError,
    HistoryPage, Member, OpenError, Outbox, PeerInfo, PublishError, Published, SessionHub, Since,
    Target,
};
use parking_lot::{ArcMutexGuard, Mutex, RawMutex};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

pub use channel::ChannelRule;
pub use event::EventBody;

use crate::auth::Auth;
use crate::metrics::Metrics;
use auth_deadline::AuthDeadlines;
use channel::{Channel, Stored};
use conn::Conn;
use dedup::{Claim, Dedup};

/// Most events one `history` call may return.
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// How often idle channels and old idempotency keys are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What the hub needs from the configuration.
pub struct HubConfig {
    /// This node's id.
    pub node: Arc<str>,
    /// Verifies client tokens.
    pub auth: Auth,
    /// Whether `ident` without a token is accepted.
    pub allow_anonymous: bool,
    /// How long a connection may stay unidentified.
    pub auth_timeout: Duration,
    /// Channels every connection joins at `ident`.
    pub default_channels: Vec<ChannelName>,
    /// `[[channels]]` rules, first match wins.
    pub rules: Vec<Arc<ChannelRule>>,
    /// The rule for channels no pattern matches.
    pub default_rule: Arc<ChannelRule>,
    /// Outbound queue capacity per connection, in frames.
    pub client_queue: usize,
    /// Most open connections.
    pub max_connections: usize,
    /// Most channels one connection may be in (personal and broadcast not counted).
    pub max_channels_per_connection: usize,
    /// How long an idempotency key is remembered.
    pub dedup_window: Duration,
}

type ChannelGuard = ArcMutexGuard<RawMutex, Channel>;

/// The hub; a cheap `Clone` handle.
#[derive(Clone)]
pub struct Hub(Arc<Inner>);

struct Inner {
    config: HubConfig,
    metrics: Arc<Metrics>,
    started: Instant,
    next_conn: AtomicU64,
    shutting_down: AtomicBool,
    conns: DashMap<Arc<str>, Arc<Conn>>,
    channels: DashMap<ChannelName, Arc<Mutex<Channel>>>,
    dedup: Dedup,
    auth_deadlines: AuthDeadlines,
}

impl Hub {
    /// A hub with no connections and no channels.
    pub fn new(config: HubConfig, metrics: Arc<Metrics>) -> Self {
        let dedup = Dedup::new(config.dedup_window);
        let auth_deadlines = AuthDeadlines::new(config.auth_timeout);
        Self(Arc::new(Inner {
            config,
            metrics,
            started: Instant::now(),
            next_conn: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            conns: DashMap::new(),
            channels: DashMap::new(),
            dedup,
            auth_deadlines,
        }))
    }

    /// The metrics this hub updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.0.conns.len()
    }

    /// Ends every connection with 4100 `reconnect:true` and refuses new ones.
    pub fn shut_down(&self) {
        self.0.shutting_down.store(true, Ordering::SeqCst);
        for conn in self.0.conns.iter() {
            conn.end(Disconnect::new(4100, "shutdown", true));
        }
    }

    /// Sweeps idle channels and expired idempotency keys until `shutdown` is cancelled.
    pub async fn run_sweeper(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.sweep(Instant::now()),
            }
        }
    }

    /// Cuts connections that do not identify in time (4008) until `shutdown` is cancelled.
    pub async fn run_auth_deadlines(self, shutdown: CancellationToken) {
        self.0.auth_deadlines.run(shutdown).await;
    }

    /// Drops channels with no members and no live history, and old idempotency keys.
    pub fn sweep(&self, now: Instant) {
        self.0.channels.retain(|_, channel| {
            let mut channel = channel.lock();
            let idle = channel.is_idle(now);
            channel.removed = idle;
            !idle
        });
        self.0.dedup.expire(now);
    }

    fn rule_for(&self, name: &ChannelName) -> Arc<ChannelRule> {
        let config = &self.0.config;
        config
            .rules
            .iter()
            .find(|r| r.pattern.matches(name.as_str()))
            .unwrap_or(&config.default_rule)
            .clone()
    }

    /// Locks the named channels, creating missing ones; guards come back in the order of
    /// `names`. Locks are taken in name order so concurrent callers cannot deadlock, and only
    /// after every lookup: the sweeper holds a map shard while it locks that shard's
    /// channels, so looking up with a channel lock held could wait on it forever.
    fn lock_channels(&self, names: &[ChannelName]) -> Vec<ChannelGuard> {
        let mut order: Vec<usize> = (0..names.len()).collect();
        order.sort_by(|&a, &b| names[a].cmp(&names[b]));
        'retry: loop {
            let arcs: Vec<Arc<Mutex<Channel>>> =
                names.iter().map(|name| self.channel_arc(name)).collect();
            let mut guards: Vec<Option<ChannelGuard>> = (0..names.len()).map(|_| None).collect();
            for &i in &order {
                let guard = arcs[i].lock_arc();
                if guard.removed {
                    continue 'retry;
                }
                guards[i] = Some(guard);
            }
            // Every slot was filled by the loop above.
            return guards.into_iter().flatten().collect();
        }
    }

    fn lock_channel(&self, name: &ChannelName) -> ChannelGuard {
        loop {
            let guard = self.channel_arc(name).lock_arc();
            if !guard.removed {
                return guard;
            }
        }
    }

    fn channel_arc(&self, name: &ChannelName) -> Arc<Mutex<Channel>> {
        if let Some(existing) = self.0.channels.get(name) {
            return existing.clone();
        }
        self.0
            .channels
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Channel::new(name.clone(), self.rule_for(name))))
            })
            .clone()
    }

    /// Removes a connection from the registry and from every channel it is in.
    fn unregister(&self, conn: &Arc<Conn>) {
        if self.0.conns.remove(&conn.id).is_some() {
            self.0.metrics.connections.dec();
        }
        let channels: Vec<ChannelName> = conn.channels.lock().drain().collect();
        for name in channels {
            let Some(arc) = self.0.channels.get(&name).map(|c| c.clone()) else {
                continue;
            };
            let mut channel = arc.lock();
            if channel.members.swap_remove(&conn.key).is_some() {
                self.notify_membership(&channel, "left", conn);
            }
        }
    }

    /// Tells the other members of a channel with notices on that `conn` joined or left.
    fn notify_membership(&self, channel: &Channel, op: &'static str, conn: &Conn) {
        if !channel.rule.join_leave_notices {
            return;
        }
        let notice = frame::membership_notice(op, channel.name.as_str(), conn.user(), &conn.id);
        for member in channel.members.values().filter(|m| m.key != conn.key) {
            self.queue(member, notice.clone());
        }
    }

    /// Queues a frame to a connection, counting slow-consumer cuts.
    fn queue(&self, conn: &Conn, frame: bytes::Bytes) -> bool {
        match conn.queue(frame) {
            conn::Queued::Yes => true,
            conn::Queued::Overflowed => {
                self.0.metrics.slow_consumer_cuts.inc();
                false
            }
            conn::Queued::Gone => false,
        }
    }

    fn matching_conns(&self, target: &Target) -> Vec<Arc<Conn>> {
        match target {
            Target::Conn(id) => self
                .0
                .conns
                .get(id.as_str())
                .map(|c| c.clone())
                .into_iter()
                .collect(),
            Target::User(user) => self
                .0
                .conns
                .iter()
                .filter(|c| c.user() == user)
                .map(|c| c.clone())
                .collect(),
            Target::All => self.0.conns.iter().map(|c| c.clone()).collect(),
        }
    }

    /// The event frames of stored events, as a channel's history shows them.
    fn history_frames(channel: &ChannelName, stored: &[&Stored]) -> Vec<Box<RawValue>> {
        stored
            .iter()
            .filter_map(|s| {
                let frame = s.event.frame([(channel, s.offset)]);
                // Our own frames are valid UTF-8 JSON.
                RawValue::from_string(String::from_utf8(frame.to_vec()).ok()?).ok()
            })
            .collect()
    }
}

impl SessionHub for Hub {
    fn open(
        &self,
        peer: PeerInfo,
    ) -> Result<(Box<dyn herald_connector_api::ClientSession>, Outbox), OpenError> {
        if self.0.shutting_down.load(Ordering::SeqCst) {
            return Err(OpenError::ShuttingDown);
        }
        if self.0.conns.len() >= self.0.config.max_connections {
            return Err(OpenError::TooManyConnections);
        }
        let key = self.0.next_conn.fetch_add(1, Ordering::Relaxed);
        let id: Arc<str> = Arc::from(format!("c_{}_{key}", self.0.config.node));
        let (conn, outbox) = Conn::new(key, id.clone(), self.0.config.client_queue);
        self.0.conns.insert(id, conn.clone());
        self.0.metrics.connections.inc();
        self.0.metrics.connections_opened.inc();
        self.0.auth_deadlines.watch(&conn);
        Ok((
            Box::new(session::Session::new(self.clone(), conn, peer)),
            outbox,
        ))
    }
}

impl Gateway for Hub {
    fn publish(&self, envelope: Envelope) -> Result<Published, PublishError> {
        if self.0.shutting_down.load(Ordering::SeqCst) {
            return Err(PublishError::ShuttingDown);
        }
        envelope.validate()?;
        let pending = match envelope
            .key
            .as_deref()
            .map(|k| self.0.dedup.claim(k, Instant::now()))
        {
            Some(Claim::Seen(earlier)) => {
                self.0.metrics.duplicates_suppressed.inc();
                return Ok(earlier);
            }
            Some(Claim::Fresh(pending)) => Some(pending),
            None => None,
        };
        let body = Arc::new(EventBody::new(&envelope.event, &envelope.data, None));
        let offsets = self.fan_out(
            &envelope.targets(),
            &body,
            &fanout::Skip::except(&envelope.except),
        );
        let published = Published {
            id: body.id.clone(),
            offsets,
        };
        if let Some(pending) = pending {
            pending.finish(Some(&published));
        }
        Ok(published)
    }

    fn channels(&self) -> Vec<ChannelSummary> {
        let arcs: Vec<_> = self.0.channels.iter().map(|c| c.clone()).collect();
        let mut out: Vec<ChannelSummary> = arcs
            .iter()
            .map(|arc| {
                let c = arc.lock();
                ChannelSummary {
                    channel: c.name.to_string(),
                    members: c.members.len(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.channel.cmp(&b.channel));
        out
    }

    fn presence(&self, channel: &ChannelName) -> Vec<Member> {
        self.0
            .channels
            .get(channel)
            .map(|c| c.clone())
            .map(|arc| arc.lock().member_list())
            .unwrap_or_default()
    }

    fn history(
        &self,
        name: &ChannelName,
        since: Option<Since>,
        limit: usize,
    ) -> Result<HistoryPage, HistoryError> {
        if limit == 0 || limit > MAX_HISTORY_LIMIT {
            return Err(HistoryError::BadLimit {
                max: MAX_HISTORY_LIMIT,
            });
        }
        let mut channel = self.lock_channel(name);
        let now = Instant::now();
        let (offset, epoch) = (channel.last_offset, channel.epoch.to_string());
        let (events, recovered) = match since {
            Some(since) => {
                let r = channel.after(since.offset, since.epoch.as_deref(), now);
                let events: Vec<&Stored> = r.events.into_iter().take(limit).collect();
                (Self::history_frames(name, &events), Some(r.recovered))
            }
            None => (
                Self::history_frames(name, &channel.latest(limit, now)),
                None,
            ),
        };
        Ok(HistoryPage {
            events,
            offset,
            epoch,
            recovered,
        })
    }

    fn disconnect(&self, target: Target, reason: &str, reconnect: bool) -> usize {
        self.matching_conns(&target)
            .iter()
            .filter(|c| c.end(Disconnect::new(4101, reason, reconnect)))
            .count()
    }

    fn unsubscribe(&self, name: &ChannelName, target: Target) -> usize {
        let Some(arc) = self.0.channels.get(name).map(|c| c.clone()) else {
            return 0;
        };
        let mut channel = arc.lock();
        let removed: Vec<Arc<Conn>> = match &target {
            Target::All => channel.members.drain(..).map(|(_, c)| c).collect(),
            Target::Conn(id) => channel
                .members
                .values()
                .filter(|c| *c.id == **id)
                .cloned()
                .collect(),
            Target::User(user) => channel
                .members
                .values()
                .filter(|c| c.user() == user)
                .cloned()
                .collect(),
        };
        let notice = frame::unsubscribed_notice(name.as_str());
        for conn in &removed {
            channel.members.swap_remove(&conn.key);
            conn.channels.lock().remove(name);
            self.queue(conn, notice.clone());
            self.notify_membership(&channel, "left", conn);
        }
        removed.len()
    }

    fn info(&self) -> GatewayInfo {
        GatewayInfo {
            node: self.0.config.node.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.0.started.elapsed().as_secs(),
            connections: self.0.conns.len(),
            channels: self.0.channels.len(),
        }
    }
}

/// Offsets by channel name, as publish results report them.
type Offsets = BTreeMap<String, u64>;

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::thread;

    use super::*;
    use crate::pattern::Pattern;

    fn hub() -> Hub {
        let rule = Arc::new(ChannelRule {
            pattern: Pattern::new("*"),
            client_publish: false,
            join_leave_notices: false,
            history_size: 10,
            history_ttl: Duration::from_secs(60),
        });
        let config = HubConfig {
            node: Arc::from("t"),
            auth: Auth::new("s"),
            allow_anonymous: false,
            auth_timeout: Duration::from_secs(10),
            default_channels: Vec::new(),
            rules: Vec::new(),
            default_rule: rule,
            client_queue: 16,
            max_connections: 10,
            max_channels_per_connection: 10,
            dedup_window: Duration::from_secs(60),
        };
        Hub::new(config, Arc::new(Metrics::new()))
    }

    #[test]
    fn sweeping_while_publishing_to_several_channels_does_not_deadlock() {
        let hub = hub();
        let stop = Arc::new(AtomicBool::new(false));
        // Sweeping "later than every TTL" drops each channel as soon as it is idle, so
        // publishers keep re-creating channels while the sweeper holds map shards.
        let sweeper = {
            let (hub, stop) = (hub.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    hub.sweep(Instant::now() + Duration::from_secs(3600));
                }
            })
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for t in 0..2 {
            let (hub, done_tx) = (hub.clone(), done_tx.clone());
            thread::spawn(move || {
                for i in 0..20_000u32 {
                    let json = format!(
                        r#"{{"event":"e","channels":["a{}","b{}","c{}"]}}"#,
                        i % 7,
                        (i + t) % 11,
                        i % 13
                    );
                    let published = hub
                        .publish(Envelope::from_json(json.as_bytes()).unwrap())
                        .unwrap();
                    assert_eq!(published.offsets.len(), 3);
                }
                let _ = done_tx.send(());
            });
        }
        for _ in 0..2 {
            done_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("publishers finished: no deadlock with the sweeper");
        }
        stop.store(true, Ordering::Relaxed);
        sweeper.join().unwrap();
    }
}
