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
//! The broadcast channel `*` keeps history and offsets like any other, but no member table:
//! its members are the identified connections of the registry, so connecting and
//! disconnecting never touch it. `ident` holds its lock only to read its position, queue the
//! reply and let broadcasts in, which gives the client a consistent cut (every broadcast after
//! the position it is told, none before the reply).
//!
//! The style guide suggests one dispatcher task owning all tables; we chose per-channel locks
//! because a publish then costs no task hop and the HTTP handler gets its offsets back
//! synchronously, and because channels shard naturally.
//!
//! # Layout
//! - [`channel`]: one channel's members, history ring and position.
//! - [`conn`]: one connection as the hub sees it, and its outbox.
//! - [`session`]: the client protocol, op by op.
//! - [`fanout`]: one event to every matching connection, once each.
//! - `gateway`: what publishers and the admin API ask of the hub.
//! - [`event`], [`frame`]: frames serialized once; client frames parsed once.
//! - [`dedup`], [`auth_deadline`]: the idempotency window; the `ident` deadline.
//! - [`backends`]: calls out: clients' `rpc`, client activity.
//! - [`hooks`]: the backend's auth hooks on the client path: idents and guarded joins.
//! - [`rate`]: per-connection rate limits on client frames and publishes.
//! - [`revocation`]: blocked users and revoked tokens.
//! - [`log`]: a cluster's shared event log: publishes through it, its records applied here.

mod auth_deadline;
mod backends;
mod channel;
mod conn;
mod dedup;
mod event;
mod fanout;
mod frame;
mod gateway;
mod hooks;
mod log;
mod rate;
mod revocation;
mod session;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use herald_connector_api::{
    ActivityKind, AtCapacity, ChannelKind, ChannelName, Disconnect, OpenError, Outbox,
    OutboxLimits, PeerInfo, SessionHub, Target,
};
use parking_lot::{ArcMutexGuard, Mutex, RawMutex};
use tokio_util::sync::CancellationToken;

pub use backends::{Backends, RpcSetup};
pub use channel::ChannelRule;
pub use event::EventBody;
pub use hooks::AuthSetup;
pub use rate::{AcceptRamp, RateLimits};

use crate::auth::Auth;
use crate::metrics::Metrics;
use auth_deadline::AuthDeadlines;
use channel::Channel;
use conn::Conn;
use dedup::Dedup;

/// Most events one `history` call may return.
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// Most bytes of events one `history` page holds (the first event always fits): a page is one
/// frame in a client's outbox, so it must stay well inside the outbox's byte bound.
pub const MAX_HISTORY_PAGE_BYTES: usize = 1 << 20;

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
    /// Bounds of each connection's outbox: live frames and bytes, recovery frames and bytes.
    pub outbox: OutboxLimits,
    /// Most open connections.
    pub max_connections: usize,
    /// Most channels one connection may be in (personal and broadcast not counted).
    pub max_channels_per_connection: usize,
    /// Client frames and publishes per second per connection.
    pub rates: RateLimits,
    /// Proxies whose forwarding headers name the client.
    pub trusted_proxies: crate::peer::TrustedProxies,
    /// Connections per client address; 0: no limit.
    pub max_connections_per_ip: usize,
    /// Connections per user; 0: no limit.
    pub max_connections_per_user: usize,
    /// Most channels (with members or history) the hub holds.
    pub max_channels: usize,
    /// Most targets (channels + users + broadcast) one envelope may name.
    pub max_envelope_targets: usize,
    /// Most members a client's `presence` or `join` reply lists.
    pub max_presence_members: usize,
    /// How long an idempotency key is remembered.
    pub dedup_window: Duration,
    /// Most idempotency keys remembered at once.
    pub dedup_max_keys: usize,
    /// Most blocks, and most revocations of each kind, held at once.
    pub max_revocations: usize,
    /// The window over which a shutdown's clients are told to come back.
    pub reconnect_spread: Duration,
    /// New connections admitted gradually right after the start.
    pub accept_ramp: Arc<AcceptRamp>,
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
    /// Admitted connections; reserved before a connection is registered, so admission
    /// cannot overshoot `max_connections`.
    admitted: AtomicUsize,
    conns: DashMap<Arc<str>, Arc<Conn>>,
    /// Connections per client address, when `max_connections_per_ip` is set.
    per_ip: DashMap<std::net::IpAddr, usize>,
    /// Identified connections per user, when `max_connections_per_user` is set.
    per_user: DashMap<Arc<str>, usize>,
    /// Channels in the table; reserved before one is created, like `admitted`.
    channel_count: AtomicUsize,
    channels: DashMap<ChannelName, Arc<Mutex<Channel>>>,
    dedup: Dedup,
    revocations: revocation::Revocations,
    auth_deadlines: AuthDeadlines,
    backends: std::sync::OnceLock<Backends>,
    /// The cluster's shared log, when this hub is a node of one.
    log: std::sync::OnceLock<log::LogLink>,
}

/// Adds one to `key`'s count in `counts` unless it is at `max`.
fn reserve_in<K: std::hash::Hash + Eq + Clone>(
    counts: &DashMap<K, usize>,
    key: K,
    max: usize,
) -> bool {
    let mut count = counts.entry(key).or_insert(0);
    if *count >= max {
        return false;
    }
    *count += 1;
    true
}

/// Takes one from `key`'s count, forgetting the key at zero.
fn release_in<K: std::hash::Hash + Eq>(counts: &DashMap<K, usize>, key: &K) {
    counts.remove_if_mut(key, |_, count| {
        *count = count.saturating_sub(1);
        *count == 0
    });
}

/// Adds one to `counter` unless it is at `max`.
fn reserve(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Hub {
    /// A hub with no connections and no channels.
    pub fn new(config: HubConfig, metrics: Arc<Metrics>) -> Self {
        let dedup = Dedup::new(config.dedup_window, config.dedup_max_keys);
        let auth_deadlines = AuthDeadlines::new(config.auth_timeout);
        let revocations = revocation::Revocations::new(config.max_revocations);
        Self(Arc::new(Inner {
            config,
            metrics,
            started: Instant::now(),
            next_conn: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            admitted: AtomicUsize::new(0),
            conns: DashMap::new(),
            per_ip: DashMap::new(),
            per_user: DashMap::new(),
            channel_count: AtomicUsize::new(0),
            channels: DashMap::new(),
            dedup,
            revocations,
            auth_deadlines,
            backends: std::sync::OnceLock::new(),
            log: std::sync::OnceLock::new(),
        }))
    }

    /// Counts `conn` towards its user's `max_connections_per_user`, when that is set.
    ///
    /// # Errors
    /// 4029 when the user has as many connections as it may.
    fn count_for_user(&self, conn: &Conn, user: &Arc<str>) -> Result<(), frame::OpError> {
        let max = self.0.config.max_connections_per_user;
        if max == 0 || user.is_empty() || conn.counted_user.get().is_some() {
            return Ok(());
        }
        if !reserve_in(&self.0.per_user, user.clone(), max) {
            self.0.metrics.limit_hit("max_connections_per_user");
            return Err(frame::OpError::new(
                4029,
                format!("too many connections: {user} has {max}"),
            ));
        }
        if !conn.count_for(user.clone()) {
            release_in(&self.0.per_user, user);
        }
        Ok(())
    }

    /// Why `identity` may not identify now (blocked, or its token revoked), if it may not.
    fn refusal(&self, identity: &crate::auth::Identity) -> Option<&'static str> {
        self.0
            .revocations
            .refusal(identity, std::time::SystemTime::now())
    }

    /// Milliseconds since the hub started, wrapping: the clock of the rate limits.
    fn clock_ms(&self) -> u32 {
        // Truncation is the wrap: buckets only ever compare nearby readings.
        self.0.started.elapsed().as_millis() as u32
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.0.config.node
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
        // SeqCst pairs with `open`: a connection registered while this walks the registry
        // either is seen here or sees the flag there.
        self.0.shutting_down.store(true, Ordering::SeqCst);
        let spread = self.0.config.reconnect_spread;
        for conn in self.0.conns.iter() {
            conn.end(shutdown_disconnect(spread));
        }
    }

    /// Sweeps idle channels, expired idempotency keys and expired credentials until
    /// `shutdown` is cancelled.
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

    /// Drops channels with no members and no live history, old idempotency keys, lapsed
    /// blocks; ends connections whose token (or hook identity) expired without a `refresh`.
    pub fn sweep(&self, now: Instant) {
        let wall = std::time::SystemTime::now();
        let unix = wall
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        for conn in self.0.conns.iter() {
            if conn.is_expired(unix)
                && conn.end(Disconnect::new(
                    4002,
                    "authentication expired: refresh the token",
                    false,
                ))
            {
                tracing::info!(conn = %conn.id, "credentials expired");
            }
        }
        self.0.channels.retain(|_, channel| {
            let mut channel = channel.lock();
            let idle = channel.is_idle(now);
            channel.removed = idle;
            if idle {
                self.0.channel_count.fetch_sub(1, Ordering::AcqRel);
                if let Some(log) = self.log() {
                    log.forgot(channel.last_offset);
                }
            }
            !idle
        });
        self.0.dedup.expire(now);
        self.0.revocations.expire(wall);
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
    ///
    /// # Errors
    /// [`AtCapacity`] when a channel would have to be created past `max_channels`.
    fn lock_channels(&self, names: &[ChannelName]) -> Result<Vec<ChannelGuard>, AtCapacity> {
        let mut order: Vec<usize> = (0..names.len()).collect();
        order.sort_by(|&a, &b| names[a].cmp(&names[b]));
        'retry: loop {
            let arcs = names
                .iter()
                .map(|name| self.channel_arc(name))
                .collect::<Result<Vec<_>, _>>()?;
            let mut guards: Vec<Option<ChannelGuard>> = (0..names.len()).map(|_| None).collect();
            for &i in &order {
                let guard = arcs[i].lock_arc();
                if guard.removed {
                    continue 'retry;
                }
                guards[i] = Some(guard);
            }
            // Every slot was filled by the loop above.
            return Ok(guards.into_iter().flatten().collect());
        }
    }

    /// Locks one channel, creating it if missing.
    ///
    /// # Errors
    /// [`AtCapacity`] when it would have to be created past `max_channels`.
    fn lock_channel(&self, name: &ChannelName) -> Result<ChannelGuard, AtCapacity> {
        loop {
            let guard = self.channel_arc(name)?.lock_arc();
            if !guard.removed {
                return Ok(guard);
            }
        }
    }

    /// Locks one channel if it exists; reads (history, presence) never create one.
    fn lock_existing(&self, name: &ChannelName) -> Option<ChannelGuard> {
        loop {
            let arc = self.0.channels.get(name).map(|c| c.clone())?;
            let guard = arc.lock_arc();
            if !guard.removed {
                return Some(guard);
            }
        }
    }

    fn channel_arc(&self, name: &ChannelName) -> Result<Arc<Mutex<Channel>>, AtCapacity> {
        if let Some(existing) = self.0.channels.get(name) {
            return Ok(existing.clone());
        }
        match self.0.channels.entry(name.clone()) {
            Entry::Occupied(existing) => Ok(existing.get().clone()),
            Entry::Vacant(slot) => {
                let max = self.0.config.max_channels;
                if !reserve(&self.0.channel_count, max) {
                    self.0.metrics.limit_hit("max_channels");
                    return Err(AtCapacity {
                        key: "max_channels",
                        limit: max,
                    });
                }
                let rule = self.rule_for(name);
                let channel = match self.log() {
                    Some(log) => log.channel(name.clone(), rule),
                    None => Channel::new(name.clone(), rule),
                };
                Ok(slot.insert(Arc::new(Mutex::new(channel))).clone())
            }
        }
    }

    /// Removes a connection from the registry and from every channel it is in.
    fn unregister(&self, conn: &Arc<Conn>) {
        if self.0.conns.remove(&conn.id).is_some() {
            self.0.admitted.fetch_sub(1, Ordering::AcqRel);
            self.0.metrics.connections.dec();
        }
        if let Some(ip) = &conn.ip {
            release_in(&self.0.per_ip, ip);
        }
        let channels = conn.unregister();
        if let Some(user) = conn.counted_user.get() {
            release_in(&self.0.per_user, user);
        }
        for name in channels {
            let Some(arc) = self.0.channels.get(&name).map(|c| c.clone()) else {
                continue;
            };
            let mut channel = arc.lock();
            if channel.members.swap_remove(&conn.key).is_some() {
                self.notify_membership(&channel, "left", conn);
            }
        }
        if conn.in_broadcast() {
            self.tell_cluster_membership(herald_connector_api::channel::BROADCAST, conn, false);
        }
        self.activity(ActivityKind::Disconnect, conn, None, None);
    }

    /// Tells the other members of a channel with notices on that `conn` joined or left.
    /// Also reports the join or leave of an ordinary channel as activity.
    fn notify_membership(&self, channel: &Channel, op: &'static str, conn: &Conn) {
        self.tell_cluster_membership(channel.name.as_str(), conn, op == "joined");
        if channel.name.kind() == ChannelKind::Ordinary {
            let kind = if op == "joined" {
                ActivityKind::Join
            } else {
                ActivityKind::Leave
            };
            self.activity(kind, conn, Some(channel.name.as_str()), None);
        }
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
        self.count_queued(conn.queue(frame))
    }

    /// Queues an event frame (and its metadata, where the connection wants it).
    fn queue_event(
        &self,
        conn: &Conn,
        frame: bytes::Bytes,
        meta: &dyn Fn() -> Arc<herald_connector_api::EventMeta>,
        tag: Option<herald_connector_api::EventTag>,
    ) -> bool {
        self.count_queued(conn.queue_event(frame, meta, tag))
    }

    fn count_queued(&self, queued: conn::Queued) -> bool {
        match queued {
            conn::Queued::Yes => true,
            conn::Queued::Replaced => {
                self.0.metrics.events_coalesced.inc();
                true
            }
            conn::Queued::Dropped(n) => {
                self.0.metrics.events_dropped.inc_by(n as u64);
                true
            }
            conn::Queued::Overflowed { bytes } => {
                self.0.metrics.slow_consumer_cuts.inc();
                self.0.metrics.limit_hit(if bytes {
                    "client_queue_bytes"
                } else {
                    "client_queue"
                });
                false
            }
            conn::Queued::Gone => false,
        }
    }

    /// Calls `f` with every member of a locked channel: its member table, or for `*` every
    /// connection that is in the broadcast.
    fn for_each_member(&self, channel: &Channel, mut f: impl FnMut(&Arc<Conn>)) {
        if channel.name.kind() == ChannelKind::Broadcast {
            for conn in self.0.conns.iter() {
                if conn.in_broadcast() {
                    f(conn.value());
                }
            }
        } else {
            channel.members.values().for_each(f);
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
            // A user's connections are the members of their personal channel.
            Target::User(user) => ChannelName::personal(user)
                .ok()
                .and_then(|name| self.lock_existing(&name))
                .map(|channel| channel.members.values().cloned().collect())
                .unwrap_or_default(),
            Target::All => self.0.conns.iter().map(|c| c.clone()).collect(),
        }
    }
}

/// 4100 with a reconnect delay drawn evenly from `[0, spread]`, so the clients of a restart
/// come back spread over that time instead of all at once.
fn shutdown_disconnect(spread: Duration) -> Disconnect {
    let spread_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
    let delay = if spread_ms == 0 {
        0
    } else {
        rand::random_range(0..=spread_ms)
    };
    Disconnect::new(4100, "shutdown", true).with_reconnect_delay(delay)
}

impl SessionHub for Hub {
    fn open(
        &self,
        peer: PeerInfo,
    ) -> Result<(Box<dyn herald_connector_api::ClientSession>, Outbox), OpenError> {
        if self.0.shutting_down.load(Ordering::SeqCst) {
            return Err(OpenError::ShuttingDown);
        }
        let config = &self.0.config;
        if !config
            .accept_ramp
            .admit(self.0.started.elapsed(), Instant::now())
        {
            self.0.metrics.limit_hit("accept_ramp");
            return Err(OpenError::Ramping);
        }
        let ip = config
            .trusted_proxies
            .client_ip(peer.remote, peer.forwarded.as_deref());
        let counted_ip = ip.filter(|_| config.max_connections_per_ip > 0);
        if let Some(ip) = counted_ip {
            if !reserve_in(&self.0.per_ip, ip, config.max_connections_per_ip) {
                self.0.metrics.limit_hit("max_connections_per_ip");
                tracing::info!(%ip, "refused a connection: max_connections_per_ip");
                return Err(OpenError::TooManyFromAddress);
            }
        }
        if !reserve(&self.0.admitted, config.max_connections) {
            if let Some(ip) = counted_ip {
                release_in(&self.0.per_ip, &ip);
            }
            return Err(OpenError::TooManyConnections);
        }
        let key = self.0.next_conn.fetch_add(1, Ordering::Relaxed);
        let id: Arc<str> = Arc::from(format!("c_{}_{key}", config.node));
        let (conn, outbox) = Conn::new(key, id.clone(), config.outbox, peer.event_meta, counted_ip);
        self.0.conns.insert(id, conn.clone());
        self.0.metrics.connections.inc();
        self.0.metrics.connections_opened.inc();
        // Shutdown may have walked the registry before this connection was in it.
        if self.0.shutting_down.load(Ordering::SeqCst) {
            conn.end(shutdown_disconnect(config.reconnect_spread));
        }
        self.0.auth_deadlines.watch(&conn);
        Ok((
            Box::new(session::Session::new(self.clone(), conn, peer)),
            outbox,
        ))
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
    use herald_connector_api::{Envelope, Gateway};

    fn hub() -> Hub {
        hub_with(10)
    }

    fn hub_with(max_connections: usize) -> Hub {
        let rule = Arc::new(ChannelRule {
            pattern: Pattern::new("*"),
            client_publish: false,
            join_leave_notices: false,
            history_size: 10,
            history_max_bytes: 1 << 20,
            history_ttl: Duration::from_secs(60),
            backpressure: Default::default(),
        });
        let config = HubConfig {
            node: Arc::from("t"),
            auth: Auth::new("s"),
            allow_anonymous: false,
            auth_timeout: Duration::from_secs(10),
            default_channels: Vec::new(),
            rules: Vec::new(),
            default_rule: rule,
            outbox: OutboxLimits {
                frames: 16,
                bytes: 1 << 20,
                backlog_frames: 100,
                backlog_bytes: 1 << 20,
            },
            max_connections,
            max_channels_per_connection: 10,
            rates: RateLimits {
                frames_per_second: 1000,
                publishes_per_second: 1000,
            },
            trusted_proxies: Default::default(),
            max_connections_per_ip: 0,
            max_connections_per_user: 0,
            max_revocations: 100,
            reconnect_spread: Duration::from_secs(5),
            accept_ramp: Arc::new(AcceptRamp::new(Duration::ZERO, 1)),
            max_channels: 1000,
            max_envelope_targets: 100,
            max_presence_members: 100,
            dedup_window: Duration::from_secs(60),
            dedup_max_keys: 100,
        };
        Hub::new(config, Arc::new(Metrics::new()))
    }

    fn peer() -> PeerInfo {
        PeerInfo {
            transport: "test",
            remote: None,
            forwarded: None,
            event_meta: false,
        }
    }

    #[test]
    fn the_typed_ident_answers_directly_and_events_carry_meta_only_where_asked() {
        use futures_util::FutureExt;
        use herald_connector_api::{IdentRequest, OutFrame, Since};
        let hub = hub();
        let auth = Auth::new("s");
        let token = auth.mint("ann", None, Duration::from_secs(60));
        let (mut plain, mut plain_out) = hub.open(peer()).unwrap();
        let (mut sse, mut sse_out) = hub
            .open(PeerInfo {
                event_meta: true,
                ..peer()
            })
            .unwrap();
        let refused = sse
            .ident(IdentRequest {
                token: Some("forged".into()),
                channels: Vec::new(),
            })
            .now_or_never()
            .expect("no hook to wait for")
            .unwrap_err();
        assert_eq!(refused.code, 4002);
        let channels = vec![("news".to_owned(), None::<Since>)];
        let identified = sse
            .ident(IdentRequest {
                token: Some(token.clone()),
                channels: channels.clone(),
            })
            .now_or_never()
            .expect("no hook to wait for")
            .unwrap();
        assert_eq!(identified.user, "ann");
        assert_eq!(identified.channels["news"].offset, 0);
        assert!(identified.channels.contains_key("*") && identified.channels.contains_key("@ann"));
        plain
            .ident(IdentRequest {
                token: Some(token),
                channels,
            })
            .now_or_never()
            .expect("no hook to wait for")
            .unwrap();
        hub.publish(
            Envelope::from_json(br#"{"event":"E","channels":["news"],"users":["ann"]}"#).unwrap(),
        )
        .now_or_never()
        .expect("a single node answers at once")
        .unwrap();
        let next = |outbox: &mut Outbox| -> OutFrame {
            let mut frames: Vec<OutFrame> = Vec::new();
            futures_util::FutureExt::now_or_never(outbox.recv_many(&mut frames, 1));
            frames.pop().expect("a frame")
        };
        let with_meta = next(&mut sse_out);
        let meta = with_meta.meta.expect("sse asked for meta");
        assert_eq!(&*meta.event, "E");
        let via: Vec<_> = meta.via.iter().map(|(c, o)| (c.as_str(), *o)).collect();
        assert_eq!(via, [("news", 1), ("@ann", 1)]);
        assert!(
            next(&mut plain_out).meta.is_none(),
            "ws pays nothing for it"
        );
    }

    #[test]
    fn admission_never_overshoots_max_connections() {
        let hub = hub_with(50);
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (hub, barrier) = (hub.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    (0..200)
                        .filter_map(|_| hub.open(peer()).ok())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let sessions: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(sessions.len(), 50, "exactly max_connections admitted");
        assert_eq!(hub.connection_count(), 50);
        drop(sessions);
        assert_eq!(hub.connection_count(), 0);
        assert!(hub.open(peer()).is_ok(), "closing frees the slots");
    }

    #[test]
    fn a_connection_opened_while_shutting_down_is_told_to_go() {
        let hub = hub_with(10_000);
        let opener = {
            let hub = hub.clone();
            thread::spawn(move || {
                let mut opened = Vec::new();
                while let Ok(session) = hub.open(peer()) {
                    opened.push(session);
                }
                opened
            })
        };
        while hub.connection_count() < 50 {
            thread::yield_now();
        }
        hub.shut_down();
        let opened = opener.join().unwrap();
        for (_, mut outbox) in opened {
            let mut frames: Vec<bytes::Bytes> = Vec::new();
            let received = futures_util::FutureExt::now_or_never(outbox.recv_many(&mut frames, 1));
            assert!(
                matches!(received, Some(herald_connector_api::Received::Ended(ref d)) if d.code == 4100),
                "every connection admitted gets 4100, got {received:?}"
            );
        }
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
                    let published = futures_util::FutureExt::now_or_never(
                        hub.publish(Envelope::from_json(json.as_bytes()).unwrap()),
                    )
                    .expect("a single node answers at once")
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
