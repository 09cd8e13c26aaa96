//! One client connection's protocol: every op of the contract, whatever the transport.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use herald_connector_api::{
    ActivityKind, AtCapacity, BacklogRoom, ChannelKind, ChannelName, ChannelPosition,
    ClientSession, CompactJson, Disconnect, IdentFuture, IdentRefused, IdentRequest, Identified,
    OutFrame, PeerInfo, Since,
};
use serde_json::json;

use super::channel::Channel;
use super::conn::{Conn, Held, MAX_HELD_FRAMES};
use super::event::{EventBody, From};
use super::fanout::Skip;
use super::frame::{self, required, Frame, OpError, Position};
use super::hooks::Pending;
use super::rate::Rate;
use super::{Hub, MAX_HISTORY_LIMIT};
use crate::auth::Identity;

/// Events a `history` op returns when it names no `limit`.
const DEFAULT_HISTORY_LIMIT: usize = 100;

/// The inbound half of one connection; dropping it unregisters the connection.
pub(super) struct Session(Ops);

impl Session {
    pub(super) fn new(hub: Hub, conn: Arc<Conn>, peer: PeerInfo) -> Self {
        Self(Ops {
            hub,
            conn,
            transport: peer.transport,
        })
    }
}

/// The protocol, op by op, for one connection; cloned into the task that applies an auth
/// hook's answer.
#[derive(Clone)]
struct Ops {
    hub: Hub,
    conn: Arc<Conn>,
    transport: &'static str,
}

/// Whether a frame is done with, or waits for an auth hook's answer (and the frames after
/// it with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Done,
    Waiting,
}

/// An identity, now or once a hook answered.
enum Authenticated {
    Now(Result<Identity, OpError>),
    Later(Pending<Identity>),
}

/// A `join`, parsed and owned, so a hook's answer can apply it later.
struct JoinRequest {
    id: Option<u64>,
    channel: ChannelName,
    since: Option<Since>,
    presence: bool,
}

impl Ops {
    fn handle_frame(&self, raw: &str) -> Flow {
        let (id, result) = match frame::parse_frame(raw) {
            Ok(frame) => (frame.id, self.handle(&frame)),
            Err((id, err)) => (id, Err(err)),
        };
        result.unwrap_or_else(|err| {
            self.refuse(id, &err);
            Flow::Done
        })
    }

    /// 4029 for a frame or a publish over its rate (`key`, the bound's config key).
    fn refuse_rate(&self, id: Option<u64>, key: &'static str, per_second: u32, what: &str) {
        self.hub.metrics().limit_hit(key);
        let message = format!("rate limited: more than {per_second} {what} per second");
        self.refuse(id, &OpError::new(4029, message));
    }

    fn refuse(&self, id: Option<u64>, err: &OpError) {
        tracing::debug!(conn = %self.conn.id, transport = self.transport, code = err.code, error = %err.message, "frame refused");
        self.hub.queue(&self.conn, frame::reply_err(id, err));
    }

    fn handle(&self, f: &Frame) -> Result<Flow, OpError> {
        let op = required(&f.op, "op")?;
        if op == "ident" {
            return self.ident(f);
        }
        let Some(identity) = self.conn.identity.get().cloned() else {
            return Err(OpError::new(4001, "not identified yet: send ident first"));
        };
        if op == "join" {
            return self.join(f, &identity);
        }
        if op == "refresh" {
            return self.refresh(f, &identity);
        }
        if op == "publish" {
            return self.publish(f, &identity);
        }
        match op.as_str() {
            "leave" => self.leave(f),
            "presence" => self.presence(f, &identity),
            "history" => self.history(f, &identity),
            "rpc" => {
                let method = required(&f.method, "method")?;
                let data = f.data.clone().unwrap_or_else(CompactJson::null);
                self.hub.rpc(&self.conn, f.id, method, data)
            }
            "ping" => {
                self.reply(f.id, &json!({}));
                Ok(())
            }
            other => Err(OpError::new(4004, format!("unknown op: {other}"))),
        }
        .map(|()| Flow::Done)
    }

    /// Runs `work` (a hook call and what it decides) beside the connection, holding the
    /// frames that come meanwhile; then handles them in order.
    fn wait_for(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.conn.start_holding();
        let ops = self.clone();
        self.hub.spawn_hook_call(async move {
            work.await;
            ops.handle_held();
        });
    }

    /// Handles the frames held while a hook was asked, until they run out or one of them
    /// waits for a hook again (whose task then goes on with the rest).
    fn handle_held(&self) {
        while let Some(raw) = self.conn.next_held() {
            if self.conn.is_ending() || self.conn.is_unregistered() {
                continue;
            }
            if self.handle_frame(&raw) == Flow::Waiting {
                return;
            }
        }
    }

    fn reply(&self, id: Option<u64>, data: &impl serde::Serialize) {
        if let Some(id) = id {
            self.hub.queue(&self.conn, frame::reply_ok(id, data));
        }
    }

    /// Queues the reply (if the frame had an id) and the recovered events together.
    fn reply_with_backlog(
        &self,
        id: Option<u64>,
        data: &impl serde::Serialize,
        recovered: Vec<OutFrame>,
    ) {
        let mut frames = Vec::with_capacity(recovered.len() + 1);
        frames.extend(id.map(|id| OutFrame::plain(frame::reply_ok(id, data))));
        frames.extend(recovered);
        self.conn.queue_backlog(frames);
    }

    /// The `ident` op: the same as [`ClientSession::ident`], answered with a reply frame.
    fn ident(&self, f: &Frame) -> Result<Flow, OpError> {
        let mut wanted = Vec::with_capacity(f.channels.len());
        for (name, position) in &f.channels {
            let position = since(position).map_err(|_| {
                OpError::bad_frame(format!("channels.{name}: offset is required with epoch"))
            })?;
            wanted.push((name.clone(), position));
        }
        if self.conn.identity.get().is_some() {
            return Err(OpError::bad_frame("already identified"));
        }
        let reply_id = f.id;
        let authenticated = self.authenticate(f.token.as_deref(), &wanted);
        Ok(self.with_identity(authenticated, move |ops, identity| {
            ops.conclude_ident(identity, &wanted, reply_id);
        }))
    }

    /// Runs `conclude` on an authentication's outcome: now, or once its hook answered, the
    /// frames that come meanwhile held until then.
    fn with_identity(
        &self,
        authenticated: Authenticated,
        conclude: impl FnOnce(&Ops, Result<Identity, OpError>) + Send + 'static,
    ) -> Flow {
        match authenticated {
            Authenticated::Now(identity) => {
                conclude(self, identity);
                Flow::Done
            }
            Authenticated::Later(pending) => {
                let ops = self.clone();
                self.wait_for(async move { conclude(&ops, pending.await) });
                Flow::Waiting
            }
        }
    }

    /// Identifies as `identity`, or reports why not; a failed authentication (4002) ends
    /// the connection after its error reply is flushed.
    fn conclude_ident(
        &self,
        identity: Result<Identity, OpError>,
        wanted: &[(String, Option<Since>)],
        reply_id: Option<u64>,
    ) {
        match identity.and_then(|identity| self.identify(identity, wanted, reply_id)) {
            Ok(_) => {}
            Err(err) if err.code == 4002 => {
                self.refuse(reply_id, &err);
                self.conn.end(Disconnect::new(4002, err.message, false));
            }
            Err(err) => self.refuse(reply_id, &err),
        }
    }

    /// [`Self::verify`], then, on a cluster node that is behind a position to recover, the
    /// wait until it caught up.
    fn authenticate(
        &self,
        token: Option<&str>,
        wanted: &[(String, Option<Since>)],
    ) -> Authenticated {
        let authenticated = self.verify(token, wanted);
        let furthest = wanted
            .iter()
            .filter_map(|(_, since)| since.as_ref().map(|s| s.offset))
            .max()
            .unwrap_or(0);
        if !self.hub.behind(furthest) {
            return authenticated;
        }
        let hub = self.hub.clone();
        Authenticated::Later(Box::pin(async move {
            let identity = match authenticated {
                Authenticated::Now(identity) => identity,
                Authenticated::Later(pending) => pending.await,
            };
            if let Some(log) = hub.log() {
                log.catch_up(furthest).await;
            }
            identity
        }))
    }

    /// Who the token names: a valid JWT (or anonymous access) at once, else the ident hook's
    /// answer; and, for the asked channels the join hook guards, its consent too.
    fn verify(&self, token: Option<&str>, wanted: &[(String, Option<Since>)]) -> Authenticated {
        let config = &self.hub.0.config;
        let verified = match token {
            Some(token) => config.auth.verify(token).map_err(|e| e.to_string()),
            None if config.allow_anonymous => Ok(Identity::anonymous()),
            None => Err("token required".to_owned()),
        };
        let asked: Vec<String> = wanted.iter().map(|(name, _)| name.clone()).collect();
        match verified {
            Ok(identity) => {
                let guarded = self.guarded_among(&identity, &asked);
                match self.hub.join_hook(&identity.user, &self.conn.id, guarded) {
                    None => Authenticated::Now(Ok(identity)),
                    Some(consent) => {
                        Authenticated::Later(Box::pin(
                            async move { consent.await.map(|()| identity) },
                        ))
                    }
                }
            }
            Err(why) => {
                match token.and_then(|t| self.hub.ident_hook(t, &self.conn.id, self.transport)) {
                    Some(answer) => {
                        let ops = self.clone();
                        Authenticated::Later(Box::pin(async move {
                            let identity = answer.await?;
                            let guarded = ops.guarded_among(&identity, &asked);
                            if let Some(consent) =
                                ops.hub.join_hook(&identity.user, &ops.conn.id, guarded)
                            {
                                consent.await?;
                            }
                            Ok(identity)
                        }))
                    }
                    None => {
                        tracing::info!(conn = %self.conn.id, error = %why, "authentication failed");
                        Authenticated::Now(Err(OpError::new(
                            4002,
                            format!("authentication failed: {why}"),
                        )))
                    }
                }
            }
        }
    }

    /// The asked channels the join hook must consent to (those `identity` may otherwise
    /// join; the rest are refused by [`Self::identify`] without asking).
    fn guarded_among(&self, identity: &Identity, asked: &[String]) -> Vec<ChannelName> {
        asked
            .iter()
            .filter_map(|name| ChannelName::parse(name).ok())
            .filter(|c| self.hub.guarded(c) && check_access(identity, c).is_ok())
            .collect()
    }

    /// Joins the personal, broadcast, default and asked channels as `identity`, and recovers
    /// the asked positions. With `reply_id`, the reply is queued ahead of the recovered
    /// events; either way the result is returned.
    fn identify(
        &self,
        identity: Identity,
        wanted: &[(String, Option<Since>)],
        reply_id: Option<u64>,
    ) -> Result<Identified, OpError> {
        if self.conn.identity.get().is_some() {
            return Err(OpError::bad_frame("already identified"));
        }
        if self.conn.is_unregistered() {
            return Err(OpError::new(4500, "the connection is gone"));
        }
        let config = &self.hub.0.config;
        let mut asked: Vec<(ChannelName, Option<&Since>)> = Vec::with_capacity(wanted.len());
        for (name, position) in wanted {
            let channel = parse_channel(name)
                .map_err(|e| OpError::bad_frame(format!("channels.{name}: {}", e.message)))?;
            check_access(&identity, &channel)?;
            asked.push((channel, position.as_ref()));
        }
        // `*` is locked for a consistent cut of the broadcast (see the hub's module doc).
        let mut names: Vec<ChannelName> = vec![ChannelName::broadcast()];
        if let Ok(personal) = ChannelName::personal(&identity.user) {
            names.push(personal);
        }
        names.extend(config.default_channels.iter().cloned());
        names.extend(asked.iter().map(|(c, _)| c.clone()));
        names.sort();
        names.dedup();
        let ordinary = names
            .iter()
            .filter(|c| c.kind() == ChannelKind::Ordinary)
            .count();
        if ordinary > config.max_channels_per_connection {
            return Err(self.too_many_channels());
        }

        // Counted until the connection goes, even if the ident fails below (at capacity) and
        // is tried again.
        self.hub.count_for_user(&self.conn, &identity.user)?;
        let mut channels = self.hub.lock_channels(&names).map_err(at_capacity)?;
        // Checked with the personal channel locked: a block recorded after this check finds
        // the connection among that channel's members and ends it.
        if let Some(why) = self.hub.refusal(&identity) {
            tracing::info!(conn = %self.conn.id, user = %identity.user, why, "authentication refused");
            return Err(OpError::new(4002, format!("authentication failed: {why}")));
        }
        let (user, expires_at) = (identity.user.clone(), identity.expires_at);
        let _ = self.conn.identity.set(identity);
        let now = Instant::now();
        let mut room = self.conn.backlog_room();
        let mut positions = BTreeMap::new();
        let mut recovered_frames = Vec::new();
        for channel in channels.iter_mut() {
            self.add_member(channel);
            let since = asked
                .iter()
                .find(|(c, _)| *c == channel.name)
                .and_then(|(_, s)| *s);
            let recovered = since
                .is_some_and(|s| self.recover(channel, s, now, &mut room, &mut recovered_frames));
            positions.insert(
                channel.name.to_string(),
                ChannelPosition {
                    offset: self.hub.position(channel),
                    epoch: channel.epoch.to_string(),
                    recovered,
                },
            );
        }
        let identified = Identified {
            user: user.to_string(),
            conn: self.conn.id.to_string(),
            node: config.node.to_string(),
            channels: positions,
        };
        // Reply, then recovered events, all before any live event: the channel locks are held,
        // and broadcasts reach this connection only from here on.
        self.reply_with_backlog(reply_id, &identified, recovered_frames);
        self.conn.join_broadcast();
        self.hub.tell_cluster_membership(
            herald_connector_api::channel::BROADCAST,
            &self.conn,
            true,
        );
        drop(channels);
        self.hub
            .activity(ActivityKind::Connect, &self.conn, None, None);
        self.conn.set_expiry(expires_at);
        Ok(identified)
    }

    fn join(&self, f: &Frame, identity: &Identity) -> Result<Flow, OpError> {
        let request = JoinRequest {
            id: f.id,
            channel: parse_channel(required(&f.channel, "channel")?)?,
            since: f.since.as_ref().map(since).transpose()?.flatten(),
            presence: f.presence,
        };
        let name = &request.channel;
        check_access(identity, name)?;
        if request.presence && name.kind() == ChannelKind::Broadcast {
            return Err(broadcast_presence_forbidden());
        }
        let member = || self.conn.channels.lock().contains(name);
        let consent = if self.hub.guarded(name) && !member() {
            self.hub
                .join_hook(&identity.user, &self.conn.id, vec![name.clone()])
        } else {
            None
        };
        // On a cluster node behind the position to recover, the join waits to catch up.
        let behind = request
            .since
            .as_ref()
            .map(|s| s.offset)
            .filter(|&o| self.hub.behind(o));
        if consent.is_none() && behind.is_none() {
            return self.join_now(&request).map(|()| Flow::Done);
        }
        let ops = self.clone();
        self.wait_for(async move {
            let mut allowed = Ok(());
            if let Some(consent) = consent {
                allowed = consent.await;
            }
            if let (Ok(()), Some(offset), Some(log)) = (&allowed, behind, ops.hub.log()) {
                log.catch_up(offset).await;
            }
            if let Err(err) = allowed.and_then(|()| ops.join_now(&request)) {
                ops.refuse(request.id, &err);
            }
        });
        Ok(Flow::Waiting)
    }

    /// A join the token and the hooks allow.
    fn join_now(&self, request: &JoinRequest) -> Result<(), OpError> {
        let name = &request.channel;
        if name.kind() == ChannelKind::Ordinary {
            let joined = self.conn.channels.lock();
            let ordinary = joined
                .iter()
                .filter(|c| c.kind() == ChannelKind::Ordinary)
                .count();
            if !joined.contains(name) && ordinary >= self.hub.0.config.max_channels_per_connection {
                return Err(self.too_many_channels());
            }
        }
        let mut channel = self.hub.lock_channel(name).map_err(at_capacity)?;
        self.add_member(&mut channel);
        let mut data = json!({"offset": self.hub.position(&channel), "epoch": &*channel.epoch});
        if request.presence {
            let (members, total) = self.member_list(&channel);
            data["members"] = json!(members);
            data["total"] = json!(total);
        }
        match &request.since {
            Some(since) => {
                let mut room = self.conn.backlog_room();
                let mut recovered_frames = Vec::new();
                data["recovered"] = json!(self.recover(
                    &mut channel,
                    since,
                    Instant::now(),
                    &mut room,
                    &mut recovered_frames
                ));
                // Reply, then recovered events, before any live event: the lock is held.
                self.reply_with_backlog(request.id, &data, recovered_frames);
            }
            None => self.reply(request.id, &data),
        }
        Ok(())
    }

    /// The `refresh` op: a new token for the same user moves the connection's expiry.
    fn refresh(&self, f: &Frame, identity: &Identity) -> Result<Flow, OpError> {
        let token = required(&f.token, "token")?;
        let (user, id) = (identity.user.clone(), f.id);
        let authenticated = self.authenticate(Some(token), &[]);
        Ok(self.with_identity(authenticated, move |ops, fresh| {
            ops.conclude_refresh(fresh, &user, id);
        }))
    }

    /// Applies a refresh: the same user, not blocked or revoked, gets the new expiry; any
    /// other answer is a 4002 error reply and the connection keeps its old expiry.
    fn conclude_refresh(&self, fresh: Result<Identity, OpError>, user: &str, id: Option<u64>) {
        let checked = fresh.and_then(|fresh| {
            if *fresh.user != *user {
                return Err(OpError::new(4002, "refresh: the token names another user"));
            }
            if let Some(why) = self.hub.refusal(&fresh) {
                return Err(OpError::new(4002, format!("refresh: {why}")));
            }
            Ok(fresh)
        });
        match checked {
            Ok(fresh) => {
                self.conn.set_expiry(fresh.expires_at);
                let expires_at = fresh
                    .expires_at
                    .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs());
                self.reply(id, &json!({ "expires_at": expires_at }));
            }
            Err(err) => self.refuse(id, &err),
        }
    }

    /// A channel the join hook guards is read and written by its members only.
    fn check_guarded_member(&self, name: &ChannelName) -> Result<(), OpError> {
        if self.hub.guarded(name) && !self.conn.channels.lock().contains(name) {
            return Err(OpError::forbidden(format!("{name}: join it first")));
        }
        Ok(())
    }

    fn leave(&self, f: &Frame) -> Result<(), OpError> {
        let name = parse_channel(required(&f.channel, "channel")?)?;
        if name.kind() != ChannelKind::Ordinary {
            return Err(OpError::forbidden(format!("cannot leave {name}")));
        }
        if self.conn.channels.lock().remove(&name) {
            if let Some(mut channel) = self.hub.lock_existing(&name) {
                if channel.members.swap_remove(&self.conn.key).is_some() {
                    self.hub.notify_membership(&channel, "left", &self.conn);
                }
            }
        }
        self.reply(f.id, &json!({}));
        Ok(())
    }

    fn publish(&self, f: &Frame, identity: &Identity) -> Result<Flow, OpError> {
        let name = parse_channel(required(&f.channel, "channel")?)?;
        let event = required(&f.event, "event")?;
        check_access(identity, &name)?;
        self.check_guarded_member(&name)?;
        if self
            .conn
            .rates
            .publish(self.hub.0.config.rates, self.hub.clock_ms())
            != Rate::Allowed
        {
            let per_second = self.hub.0.config.rates.publishes_per_second;
            self.refuse_rate(f.id, "max_publishes_per_second", per_second, "publishes");
            return Ok(Flow::Done);
        }
        if !self.hub.rule_for(&name).client_publish {
            return Err(OpError::forbidden(format!(
                "clients may not publish to {name}"
            )));
        }
        if event.is_empty() || event.len() > herald_connector_api::envelope::MAX_EVENT_NAME_LEN {
            return Err(OpError::bad_frame("event: must be 1 to 256 bytes"));
        }
        let null = CompactJson::null();
        let data = f.data.as_ref().unwrap_or(&null);
        let from = From {
            user: &identity.user,
            conn: &self.conn.id,
        };
        if let Some(log) = self.hub.log() {
            // Answered once the log stored it; frames that come meanwhile wait, so a
            // client's publishes keep their order.
            let record = Hub::client_record(&name, event, data, from, f.echo);
            let appending = self.hub.append(log, record, None);
            let (ops, id, event) = (self.clone(), f.id, event.clone());
            self.wait_for(async move {
                match appending.await {
                    Ok((event_id, offset, _)) => {
                        ops.reply(id, &json!({"id": event_id, "offset": offset}));
                        ops.hub.activity(
                            ActivityKind::Publish,
                            &ops.conn,
                            Some(name.as_str()),
                            Some(&event),
                        );
                    }
                    Err(e) => ops.refuse(id, &OpError::new(e.code(), e.message())),
                }
            });
            return Ok(Flow::Waiting);
        }
        let body = Arc::new(EventBody::new(event, data, Some(from)));
        let skip = if f.echo {
            Skip::none()
        } else {
            Skip::sender(self.conn.key)
        };
        let offsets = self
            .hub
            .fan_out(std::slice::from_ref(&name), &body, &skip, None)
            .map_err(at_capacity)?;
        let offset = offsets.get(name.as_str()).copied().unwrap_or_default();
        self.reply(f.id, &json!({"id": body.id, "offset": offset}));
        self.hub.activity(
            ActivityKind::Publish,
            &self.conn,
            Some(name.as_str()),
            Some(event),
        );
        Ok(Flow::Done)
    }

    fn presence(&self, f: &Frame, identity: &Identity) -> Result<(), OpError> {
        let name = parse_channel(required(&f.channel, "channel")?)?;
        if name.kind() == ChannelKind::Broadcast {
            return Err(broadcast_presence_forbidden());
        }
        check_access(identity, &name)?;
        self.check_guarded_member(&name)?;
        let (members, total) = self
            .hub
            .lock_existing(&name)
            .map(|c| self.member_list(&c))
            .unwrap_or_default();
        self.reply(f.id, &json!({"members": members, "total": total}));
        Ok(())
    }

    fn history(&self, f: &Frame, identity: &Identity) -> Result<(), OpError> {
        let name = parse_channel(required(&f.channel, "channel")?)?;
        check_access(identity, &name)?;
        self.check_guarded_member(&name)?;
        let limit = f.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
        let since = f.since.as_ref().map(since).transpose()?.flatten();
        let page = herald_connector_api::Gateway::history(&self.hub, &name, since, limit).map_err(
            |_| OpError::bad_frame(format!("limit: must be between 1 and {MAX_HISTORY_LIMIT}")),
        )?;
        self.reply(f.id, &page);
        Ok(())
    }

    fn too_many_channels(&self) -> OpError {
        self.hub.metrics().limit_hit("max_channels_per_connection");
        OpError::forbidden("too many channels")
    }

    /// A locked channel's members as a client may see them: at most `max_presence_members`,
    /// and how many there are.
    /// On a cluster, the members on other nodes are listed after this node's.
    fn member_list(&self, channel: &Channel) -> (Vec<herald_connector_api::Member>, usize) {
        let max = self.hub.0.config.max_presence_members;
        let remote = self.hub.remote_members(&channel.name);
        let total = channel.members.len() + remote.len();
        if total > max {
            self.hub.metrics().limit_hit("max_presence_members");
        }
        let mut members = channel.member_list(max);
        let room = max.saturating_sub(members.len());
        members.extend(remote.into_iter().take(room));
        (members, total)
    }

    /// Adds this connection to a locked channel, telling the others when it is new there.
    /// The broadcast channel has no member table: [`Conn::join_broadcast`] lets it in.
    fn add_member(&self, channel: &mut Channel) {
        if channel.name.kind() == ChannelKind::Broadcast {
            return;
        }
        if channel
            .members
            .insert(self.conn.key, self.conn.clone())
            .is_none()
        {
            if !self.conn.add_channel(&channel.name) {
                // Gone from the hub while a hook was asked: it must not stay a member.
                channel.members.swap_remove(&self.conn.key);
                return;
            }
            self.hub.notify_membership(channel, "joined", &self.conn);
        }
    }

    /// Collects the frames a client missed since `since`, if history proves they are all of
    /// them and they fit what is left of this connection's recovery budget (`room`, which it
    /// then reduces). Returns whether it recovered; a refused recovery adds nothing.
    fn recover(
        &self,
        channel: &mut Channel,
        since: &Since,
        now: Instant,
        room: &mut BacklogRoom,
        out: &mut Vec<OutFrame>,
    ) -> bool {
        channel.expire(now);
        let metrics = self.hub.metrics();
        let horizon = self.hub.position(channel);
        let Some(events) = channel.after(since, horizon) else {
            metrics.recoveries_failed.inc();
            return false;
        };
        let count = events.clone().count();
        let bytes: usize = if count <= room.frames {
            events.clone().map(|s| s.frame(&channel.name).len()).sum()
        } else {
            0
        };
        if count > room.frames || bytes > room.bytes {
            metrics.recoveries_too_large.inc();
            metrics.limit_hit(if count > room.frames {
                "recovery_max_events"
            } else {
                "recovery_max_bytes"
            });
            return false;
        }
        room.frames -= count;
        room.bytes -= bytes;
        let with_meta = self.conn.event_meta;
        out.extend(events.map(|s| OutFrame {
            frame: s.frame(&channel.name).clone(),
            meta: with_meta.then(|| s.meta(&channel.name)),
        }));
        metrics.recoveries_ok.inc();
        true
    }
}

impl ClientSession for Session {
    fn conn_id(&self) -> &str {
        &self.0.conn.id
    }

    fn ident(&mut self, request: IdentRequest) -> IdentFuture<'_> {
        let ops = &self.0;
        Box::pin(async move {
            let identity = if ops.conn.identity.get().is_some() {
                Err(OpError::bad_frame("already identified"))
            } else {
                match ops.authenticate(request.token.as_deref(), &request.channels) {
                    Authenticated::Now(identity) => identity,
                    Authenticated::Later(pending) => pending.await,
                }
            };
            identity
                .and_then(|identity| ops.identify(identity, &request.channels, None))
                .map_err(|e| IdentRefused {
                    code: e.code,
                    message: e.message,
                })
        })
    }

    fn handle_text(&mut self, text: &str) {
        let ops = &self.0;
        for frame in frame::split_frames(text) {
            if ops.conn.is_ending() {
                break;
            }
            if let Ok(raw) = frame {
                match ops
                    .conn
                    .rates
                    .frame(ops.hub.0.config.rates, ops.hub.clock_ms())
                {
                    Rate::Allowed => {}
                    Rate::Refused => {
                        let per_second = ops.hub.0.config.rates.frames_per_second;
                        ops.refuse_rate(
                            frame::id_of(raw),
                            "max_frames_per_second",
                            per_second,
                            "frames",
                        );
                        continue;
                    }
                    Rate::Abusive => {
                        ops.hub.metrics().limit_hit("max_frames_per_second");
                        tracing::info!(conn = %ops.conn.id, "rate limited again and again: disconnected");
                        ops.conn.end(Disconnect::new(
                            4029,
                            "rate limited: too many frames, again and again",
                            true,
                        ));
                        break;
                    }
                }
            }
            match frame.map(|raw| (raw, ops.conn.hold(raw))) {
                Ok((raw, Held::No)) => drop(ops.handle_frame(raw)),
                Ok((_, Held::Yes)) => {}
                Ok((_, Held::Full)) => {
                    ops.hub.metrics().limit_hit("held_frames");
                    let err = OpError::new(
                        4029,
                        format!("more than {MAX_HELD_FRAMES} frames wait for the auth backend"),
                    );
                    ops.refuse(None, &err);
                }
                Err(err) => ops.refuse(None, &err),
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.0.hub.unregister(&self.0.conn);
    }
}

/// 4503: a configured bound of the server is reached; the client may retry later.
fn at_capacity(e: AtCapacity) -> OpError {
    OpError::new(4503, e.to_string())
}

fn broadcast_presence_forbidden() -> OpError {
    OpError::forbidden("presence of * (every connection) is for the backend API only")
}

fn parse_channel(name: &str) -> Result<ChannelName, OpError> {
    ChannelName::parse(name).map_err(|e| OpError::bad_frame(format!("channel: {e}")))
}

/// Personal channels belong to their user alone; ordinary ones follow the token's patterns.
fn check_access(identity: &Identity, channel: &ChannelName) -> Result<(), OpError> {
    let allowed = match channel.kind() {
        ChannelKind::Broadcast => true,
        ChannelKind::Personal => {
            !identity.user.is_empty() && channel.personal_user() == Some(&*identity.user)
        }
        ChannelKind::Ordinary => identity.may_access(channel),
    };
    if allowed {
        Ok(())
    } else {
        Err(OpError::forbidden(channel))
    }
}

/// `{}` means "no recovery"; `{"offset":N}` alone means "in the current epoch".
fn since(position: &Position) -> Result<Option<Since>, OpError> {
    match (position.offset, &position.epoch) {
        (None, None) => Ok(None),
        (Some(offset), epoch) => Ok(Some(Since {
            offset,
            epoch: epoch.clone(),
        })),
        (None, Some(_)) => Err(OpError::bad_frame("since: offset is required with epoch")),
    }
}
