//! The hub on a cluster: publishes go through the shared log, and every record of the log is
//! applied here in log order, wherever it was published. A record's sequence is its offset in
//! every channel it targets, so offsets, history and recovery are the same on every node.
//!
//! A node knows a channel's events from its `floor` on: the log's start when the node
//! attached, or (for a channel created after the sweeper dropped one) the newest offset the
//! sweeper let go. The position a client is told is the node's horizon, the sequence of the
//! newest record it applied: every event of the channel up to there is behind the client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_connector_api::{
    Acting, AdminCommand, AtCapacity, ChannelName, ClusterLog, Envelope, LogRecord, LogSink,
    Member, PublishError, Published, Publishing, RecordFrom, Revocation, Target,
};
use parking_lot::RwLock;
use tokio::sync::watch;

use super::channel::Channel;
use super::conn::Conn;
use super::event::{self, EventBody, From};
use super::{fanout, frame, Hub};

/// How long a recovery waits for this node to apply the log up to the client's position
/// (a client that saw an event on a node ahead of this one).
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// The hub's link to a cluster engine.
pub(super) struct LogLink {
    pub engine: Arc<dyn ClusterLog>,
    epoch: RwLock<Arc<str>>,
    /// The sequence of the newest record applied.
    applied: watch::Sender<u64>,
    /// New channels know every event after this.
    floor: AtomicU64,
}

impl LogLink {
    /// The log's epoch, shared by every channel.
    pub fn epoch(&self) -> Arc<str> {
        self.epoch.read().clone()
    }

    /// The newest sequence applied on this node.
    pub fn horizon(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits (a bounded time) until this node applied the log through `seq`.
    pub async fn catch_up(&self, seq: u64) {
        self.caught_up(seq, CATCH_UP_WAIT).await;
    }

    /// Waits up to `within` until this node applied the log through `seq`; whether it did.
    async fn caught_up(&self, seq: u64, within: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        let caught_up = applied.wait_for(|applied| *applied >= seq);
        let caught_up = matches!(tokio::time::timeout(within, caught_up).await, Ok(Ok(_)));
        caught_up
    }

    /// A new channel of this log.
    pub fn channel(&self, name: ChannelName, rule: Arc<super::ChannelRule>) -> Channel {
        Channel::in_log(name, rule, self.epoch(), self.floor.load(Ordering::Acquire))
    }

    /// The sweeper let go of a channel that knew events through `last`.
    pub fn forgot(&self, last: u64) {
        self.floor.fetch_max(last, Ordering::AcqRel);
    }
}

impl Hub {
    /// Makes this hub a node of a cluster: from now on publishes go through `engine`'s log,
    /// named `epoch`, of which this node knows every record after `floor`. Called once,
    /// before any connection or publish.
    pub fn attach_log(&self, engine: Arc<dyn ClusterLog>, epoch: &str, floor: u64) {
        let link = LogLink {
            engine,
            epoch: RwLock::new(Arc::from(epoch)),
            applied: watch::Sender::new(floor),
            floor: AtomicU64::new(floor),
        };
        if self.0.log.set(link).is_err() {
            tracing::warn!("a cluster log was attached twice; the first stays");
        }
    }

    /// Waits up to `within` until this node applied the log through `seq`; whether it did.
    pub async fn catch_up_log(&self, seq: u64, within: Duration) -> bool {
        match self.log() {
            Some(log) => log.caught_up(seq, within).await,
            None => true,
        }
    }

    pub(super) fn log(&self) -> Option<&LogLink> {
        self.0.log.get()
    }

    /// The position a client is told for a locked channel: its newest offset on a single
    /// node, the node's horizon on a cluster.
    pub(super) fn position(&self, channel: &Channel) -> u64 {
        self.log().map_or(channel.last_offset, LogLink::horizon)
    }

    /// Whether a recovery from `offset` must first wait for this node to catch up.
    pub(super) fn behind(&self, offset: u64) -> bool {
        self.log().is_some_and(|log| log.horizon() < offset)
    }

    /// A publish on a cluster: answered once the log stored it; delivered, here as on every
    /// node, when the log hands the record back.
    pub(super) fn publish_through_log(&self, log: &LogLink, envelope: Envelope) -> Publishing {
        let targets = envelope.targets();
        if let Err(full) = self.room_for(&targets) {
            return Publishing::ready(Err(full.into()));
        }
        let record = LogRecord {
            id: event::new_event_id(),
            ts: event::now_ms(),
            event: envelope.event,
            data: envelope.data,
            targets: targets.iter().map(ToString::to_string).collect(),
            except: envelope.except,
            from: None,
        };
        let appending = self.append(log, record, envelope.key);
        Publishing::waiting(async move {
            let (id, seq, duplicate) = appending.await?;
            Ok(Published {
                id,
                offsets: targets.iter().map(|t| (t.to_string(), seq)).collect(),
                duplicate,
            })
        })
    }

    /// Stores `record` in the log; resolves with the event id (the original's for a
    /// duplicate), its sequence, and whether it was a duplicate.
    pub(super) fn append(
        &self,
        log: &LogLink,
        record: LogRecord,
        key: Option<String>,
    ) -> impl std::future::Future<Output = Result<(String, u64, bool), PublishError>> + Send + 'static
    {
        let engine = log.engine.clone();
        let metrics = self.0.metrics.clone();
        let up = engine.is_up();
        async move {
            let unavailable = |why: String| {
                metrics.cluster_publish_failures.inc();
                tracing::warn!(error = %why, "a publish was refused: the cluster log did not store it");
                PublishError::Unavailable(why)
            };
            if !up {
                return Err(unavailable("not connected to NATS".into()));
            }
            let id = record.id.clone();
            let appended = engine
                .append(record, key)
                .await
                .map_err(|e| unavailable(e.0))?;
            if !appended.duplicate {
                return Ok((id, appended.seq, false));
            }
            metrics.duplicates_suppressed.inc();
            let original = engine.read(appended.seq).await.map_or(id, |r| r.id);
            Ok((original, appended.seq, true))
        }
    }

    /// A client's publish on a cluster, as a log record.
    pub(super) fn client_record(
        channel: &ChannelName,
        event: &str,
        data: &herald_connector_api::CompactJson,
        from: From<'_>,
        echo: bool,
    ) -> LogRecord {
        LogRecord {
            id: event::new_event_id(),
            ts: event::now_ms(),
            event: event.to_owned(),
            data: data.clone(),
            targets: vec![channel.to_string()],
            except: if echo {
                Vec::new()
            } else {
                vec![from.conn.to_owned()]
            },
            from: Some(RecordFrom {
                user: from.user.to_owned(),
                conn: from.conn.to_owned(),
            }),
        }
    }

    /// Refuses a publish whose channels could not all be created here: once the log has it,
    /// it can no longer be refused.
    fn room_for(&self, targets: &[ChannelName]) -> Result<(), AtCapacity> {
        let max = self.0.config.max_channels;
        let missing = targets
            .iter()
            .filter(|t| !self.0.channels.contains_key(*t))
            .count();
        if self.0.channel_count.load(Ordering::Acquire) + missing > max {
            self.0.metrics.limit_hit("max_channels");
            return Err(AtCapacity {
                key: "max_channels",
                limit: max,
            });
        }
        Ok(())
    }

    /// Tells the other nodes that `conn` joined or left `channel` (`*` included).
    pub(super) fn tell_cluster_membership(&self, channel: &str, conn: &Conn, joined: bool) {
        let Some(log) = self.log() else { return };
        let member = Member {
            user: conn.user().to_owned(),
            conn: conn.id.to_string(),
        };
        log.engine.membership(channel, &member, joined);
    }

    /// As [`Self::with_cluster`] once this node took the command (`here` is `Ok`); a
    /// refusal here is the answer, and the other nodes are not asked.
    pub(super) fn with_cluster_if_ok(
        &self,
        here: Result<usize, AtCapacity>,
        command: impl FnOnce() -> AdminCommand,
    ) -> Acting<Result<usize, AtCapacity>> {
        match here {
            Ok(here) => {
                let acting = self.with_cluster(here, command());
                Box::pin(async move { Ok(acting.await) })
            }
            Err(full) => Box::pin(std::future::ready(Err(full))),
        }
    }

    /// Adds what the other nodes did with `command` to what this node did (`here`).
    pub(super) fn with_cluster(&self, here: usize, command: AdminCommand) -> Acting<usize> {
        let Some(log) = self.log() else {
            return Box::pin(std::future::ready(here));
        };
        // A task of its own: a caller that gives up waiting (an HTTP client gone) must not
        // stop the command half-way to the other nodes.
        let sending = tokio::spawn(log.engine.broadcast(command));
        Box::pin(async move {
            match sending.await {
                Ok(Ok(there)) => here + there,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "an admin command did not reach the other nodes");
                    here
                }
                Err(e) => {
                    tracing::warn!(error = %e, "an admin command's sending task failed");
                    here
                }
            }
        })
    }
}

/// `user:<id>`, `conn:<id>` or `all`, as admin commands name their targets.
pub(super) fn target_text(target: &Target) -> String {
    match target {
        Target::User(user) => format!("user:{user}"),
        Target::Conn(conn) => format!("conn:{conn}"),
        Target::All => "all".to_owned(),
    }
}

fn parse_target(text: &str) -> Option<Target> {
    if text == "all" {
        return Some(Target::All);
    }
    let (kind, id) = text.split_once(':')?;
    match kind {
        "user" => Some(Target::User(id.to_owned())),
        "conn" => Some(Target::Conn(id.to_owned())),
        _ => None,
    }
}

fn from_ms(ms: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(ms)
}

impl LogSink for Hub {
    fn apply(&self, seq: u64, record: &LogRecord, age: Duration) {
        let targets: Vec<ChannelName> = record
            .targets
            .iter()
            .filter_map(|t| ChannelName::parse(t).ok())
            .collect();
        let from = record.from.as_ref().map(|f| From {
            user: &f.user,
            conn: &f.conn,
        });
        let body = Arc::new(EventBody::stored(
            record.id.clone(),
            record.ts,
            &record.event,
            &record.data,
            from,
        ));
        let now = Instant::now();
        let stored_at = now.checked_sub(age).unwrap_or(now);
        let skip = fanout::Skip::except(&record.except);
        if let Err(full) = self.fan_out(&targets, &body, &skip, Some((seq, stored_at))) {
            // The log has it, so other nodes deliver it; this one cannot hold the channel.
            tracing::warn!(seq, error = %full, "an event of the log was not delivered on this node");
        }
        self.applied_through(seq);
    }

    fn applied_through(&self, seq: u64) {
        if let Some(log) = self.log() {
            log.applied.send_if_modified(|applied| {
                let newer = seq > *applied;
                *applied = (*applied).max(seq);
                newer
            });
        }
    }

    fn lost(&self, seq: u64) {
        let Some(log) = self.log() else { return };
        log.floor.fetch_max(seq, Ordering::AcqRel);
        for channel in self.0.channels.iter() {
            channel.lock().lost_through(seq);
        }
        self.applied_through(seq);
        tracing::warn!(
            through = seq,
            "records of the cluster log left it before this node read them: recoveries from before them answer recovered:false"
        );
    }

    fn reset(&self, epoch: &str, floor: u64) {
        let Some(log) = self.log() else { return };
        let epoch: Arc<str> = Arc::from(epoch);
        *log.epoch.write() = epoch.clone();
        log.floor.store(floor, Ordering::Release);
        for channel in self.0.channels.iter() {
            channel.lock().restart(epoch.clone(), floor);
        }
        log.applied.send_replace(floor);
        tracing::warn!(%epoch, floor, "the cluster log was created anew: history from before is gone");
    }

    fn remote_membership(&self, channel: &str, member: &Member, joined: bool) {
        let Some(channel) = ChannelName::parse(channel)
            .ok()
            .and_then(|name| self.lock_existing(&name))
        else {
            return;
        };
        if !channel.rule.join_leave_notices {
            return;
        }
        let op = if joined { "joined" } else { "left" };
        let notice =
            frame::membership_notice(op, channel.name.as_str(), &member.user, &member.conn);
        for local in channel.members.values() {
            self.queue(local, notice.clone());
        }
    }

    fn admin(&self, command: &AdminCommand) -> usize {
        match command {
            AdminCommand::Disconnect {
                target,
                reason,
                reconnect,
            } => parse_target(target).map_or(0, |t| self.disconnect_here(&t, reason, *reconnect)),
            AdminCommand::Unsubscribe { channel, target } => {
                match (ChannelName::parse(channel), parse_target(target)) {
                    (Ok(channel), Some(target)) => self.unsubscribe_here(&channel, &target),
                    _ => 0,
                }
            }
            AdminCommand::Block { user, until_ms } => self
                .block_here(user, until_ms.map(from_ms))
                .unwrap_or_default(),
            AdminCommand::Unblock { user } => usize::from(self.0.revocations.unblock(user)),
            AdminCommand::RevokeJti { jti, until_ms } => self
                .revoke_here(&Revocation::Jti {
                    jti: jti.clone(),
                    until: until_ms.map(from_ms),
                })
                .unwrap_or_default(),
            AdminCommand::RevokeBefore { user, before_ms } => self
                .revoke_here(&Revocation::IssuedBefore {
                    user: user.clone(),
                    before: from_ms(*before_ms),
                })
                .unwrap_or_default(),
        }
    }

    fn connection_count(&self) -> usize {
        self.0.conns.len()
    }
}
