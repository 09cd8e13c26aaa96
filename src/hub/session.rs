//! One client connection's protocol: every op of the contract, whatever the transport.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use herald_connector_api::{
    ChannelKind, ChannelName, ClientSession, Disconnect, Gateway, PeerInfo, Since,
};
use serde_json::json;
use serde_json::value::RawValue;

use super::channel::Channel;
use super::conn::Conn;
use super::event::{EventBody, From};
use super::fanout::Skip;
use super::frame::{self, OpError, Position, Request};
use super::{Hub, MAX_HISTORY_LIMIT};
use crate::auth::Identity;

/// Events a `history` op returns when it names no `limit`.
const DEFAULT_HISTORY_LIMIT: usize = 100;

/// The inbound half of one connection; dropping it unregisters the connection.
pub(super) struct Session {
    hub: Hub,
    conn: Arc<Conn>,
    peer: PeerInfo,
}

impl Session {
    pub(super) fn new(hub: Hub, conn: Arc<Conn>, peer: PeerInfo) -> Self {
        Self { hub, conn, peer }
    }

    fn handle_frame(&mut self, raw: &str) {
        let (id, result) = match frame::parse_request(raw) {
            Ok(req) => (req.id, self.handle_request(&req)),
            Err((id, err)) => (id, Err(err)),
        };
        if let Err(err) = result {
            tracing::debug!(conn = %self.conn.id, transport = self.peer.transport, code = err.code, error = %err.message, "frame refused");
            self.hub.queue(&self.conn, frame::reply_err(id, &err));
        }
    }

    fn handle_request(&mut self, req: &Request<'_>) -> Result<(), OpError> {
        if req.op == "ident" {
            return self.ident(req);
        }
        let Some(identity) = self.conn.identity.get().cloned() else {
            return Err(OpError::new(4001, "not identified yet: send ident first"));
        };
        match req.op.as_str() {
            "join" => self.join(req, &identity),
            "leave" => self.leave(req),
            "publish" => self.publish(req, &identity),
            "presence" => self.presence(req, &identity),
            "history" => self.history(req, &identity),
            "rpc" => {
                let rpc: frame::Rpc = req.fields()?;
                tracing::debug!(conn = %self.conn.id, method = %rpc.method, "rpc refused: no backend");
                Err(OpError::new(4500, "no rpc backend configured"))
            }
            "ping" => {
                self.reply(req.id, &json!({}));
                Ok(())
            }
            other => Err(OpError::new(4004, format!("unknown op: {other}"))),
        }
    }

    fn reply(&self, id: Option<u64>, data: &impl serde::Serialize) {
        if let Some(id) = id {
            self.hub.queue(&self.conn, frame::reply_ok(id, data));
        }
    }

    fn ident(&mut self, req: &Request<'_>) -> Result<(), OpError> {
        if self.conn.identity.get().is_some() {
            return Err(OpError::bad_frame("already identified"));
        }
        let fields: frame::Ident = req.fields()?;
        let config = &self.hub.0.config;
        let identity = match fields.token.as_deref() {
            Some(token) => config.auth.verify(token).map_err(|e| e.to_string()),
            None if config.allow_anonymous => Ok(Identity::anonymous()),
            None => Err("token required".to_owned()),
        };
        let identity = match identity {
            Ok(identity) => identity,
            Err(why) => {
                tracing::info!(conn = %self.conn.id, error = %why, "authentication failed");
                self.conn.end(Disconnect::new(
                    4002,
                    format!("authentication failed: {why}"),
                    false,
                ));
                return Ok(());
            }
        };
        let mut wanted: Vec<(ChannelName, Option<Since>)> =
            Vec::with_capacity(fields.channels.len());
        for (name, position) in &fields.channels {
            let channel = parse_channel(name)
                .map_err(|e| OpError::bad_frame(format!("channels.{name}: {}", e.message)))?;
            check_access(&identity, &channel)?;
            wanted.push((channel, since(position)?));
        }
        let mut names: Vec<ChannelName> = Vec::new();
        if let Ok(personal) = ChannelName::personal(&identity.user) {
            names.push(personal);
        }
        names.push(ChannelName::broadcast());
        names.extend(config.default_channels.iter().cloned());
        names.extend(wanted.iter().map(|(c, _)| c.clone()));
        names.sort();
        names.dedup();
        let ordinary = names
            .iter()
            .filter(|c| c.kind() == ChannelKind::Ordinary)
            .count();
        if ordinary > config.max_channels_per_connection {
            return Err(OpError::forbidden("too many channels"));
        }
        let _ = self.conn.identity.set(identity.clone());

        let mut channels = self.hub.lock_channels(&names);
        let now = Instant::now();
        let mut positions = BTreeMap::new();
        let mut recovered_frames = Vec::new();
        for channel in channels.iter_mut() {
            self.add_member(channel);
            let asked = wanted
                .iter()
                .find(|(c, _)| *c == channel.name)
                .and_then(|(_, s)| s.as_ref());
            let (offset, epoch) = (channel.last_offset, channel.epoch.clone());
            let recovered =
                asked.is_some_and(|s| self.recover(channel, s, now, &mut recovered_frames));
            positions.insert(
                channel.name.to_string(),
                json!({"offset": offset, "epoch": &*epoch, "recovered": recovered}),
            );
        }
        let data = json!({
            "user": &*identity.user, "conn": &*self.conn.id, "node": &*config.node, "channels": positions,
        });
        // Reply, then recovered events, all before any live event: the channel locks are held.
        self.reply(req.id, &data);
        for frame in recovered_frames {
            self.hub.queue(&self.conn, frame);
        }
        drop(channels);
        Ok(())
    }

    fn join(&mut self, req: &Request<'_>, identity: &Identity) -> Result<(), OpError> {
        let fields: frame::Join = req.fields()?;
        let name = parse_channel(&fields.channel)?;
        check_access(identity, &name)?;
        let since = fields.since.as_ref().map(since).transpose()?.flatten();
        if name.kind() == ChannelKind::Ordinary {
            let joined = self.conn.channels.lock();
            let ordinary = joined
                .iter()
                .filter(|c| c.kind() == ChannelKind::Ordinary)
                .count();
            if !joined.contains(&name) && ordinary >= self.hub.0.config.max_channels_per_connection
            {
                return Err(OpError::forbidden("too many channels"));
            }
        }
        let mut channel = self.hub.lock_channel(&name);
        self.add_member(&mut channel);
        let mut data = json!({"offset": channel.last_offset, "epoch": &*channel.epoch});
        let mut recovered_frames = Vec::new();
        if let Some(since) = &since {
            data["recovered"] =
                json!(self.recover(&mut channel, since, Instant::now(), &mut recovered_frames));
        }
        if fields.presence {
            data["members"] = json!(channel.member_list());
        }
        // Reply, then recovered events, before any live event: the channel lock is held.
        self.reply(req.id, &data);
        for frame in recovered_frames {
            self.hub.queue(&self.conn, frame);
        }
        Ok(())
    }

    fn leave(&mut self, req: &Request<'_>) -> Result<(), OpError> {
        let fields: frame::ChannelOnly = req.fields()?;
        let name = parse_channel(&fields.channel)?;
        if name.kind() != ChannelKind::Ordinary {
            return Err(OpError::forbidden(format!("cannot leave {name}")));
        }
        if self.conn.channels.lock().remove(&name) {
            let mut channel = self.hub.lock_channel(&name);
            if channel.members.swap_remove(&self.conn.key).is_some() {
                self.hub.notify_membership(&channel, "left", &self.conn);
            }
        }
        self.reply(req.id, &json!({}));
        Ok(())
    }

    fn publish(&mut self, req: &Request<'_>, identity: &Identity) -> Result<(), OpError> {
        let fields: frame::Publish = req.fields()?;
        let name = parse_channel(&fields.channel)?;
        check_access(identity, &name)?;
        if !self.hub.rule_for(&name).client_publish {
            return Err(OpError::forbidden(format!(
                "clients may not publish to {name}"
            )));
        }
        if fields.event.is_empty()
            || fields.event.len() > herald_connector_api::envelope::MAX_EVENT_NAME_LEN
        {
            return Err(OpError::bad_frame("event: must be 1 to 256 bytes"));
        }
        let null = RawValue::NULL;
        let data: &RawValue = fields.data.as_deref().unwrap_or(null);
        let from = From {
            user: &identity.user,
            conn: &self.conn.id,
        };
        let body = Arc::new(EventBody::new(&fields.event, data, Some(from)));
        let skip = if fields.echo {
            Skip::none()
        } else {
            Skip::sender(self.conn.key)
        };
        let offsets = self.hub.fan_out(std::slice::from_ref(&name), &body, &skip);
        let offset = offsets.get(name.as_str()).copied().unwrap_or_default();
        self.reply(req.id, &json!({"id": body.id, "offset": offset}));
        Ok(())
    }

    fn presence(&mut self, req: &Request<'_>, identity: &Identity) -> Result<(), OpError> {
        let fields: frame::ChannelOnly = req.fields()?;
        let name = parse_channel(&fields.channel)?;
        check_access(identity, &name)?;
        self.reply(req.id, &json!({"members": self.hub.presence(&name)}));
        Ok(())
    }

    fn history(&mut self, req: &Request<'_>, identity: &Identity) -> Result<(), OpError> {
        let fields: frame::History = req.fields()?;
        let name = parse_channel(&fields.channel)?;
        check_access(identity, &name)?;
        let limit = fields.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
        let since = fields.since.as_ref().map(since).transpose()?.flatten();
        let page = self.hub.history(&name, since, limit).map_err(|_| {
            OpError::bad_frame(format!("limit: must be between 1 and {MAX_HISTORY_LIMIT}"))
        })?;
        self.reply(req.id, &page);
        Ok(())
    }

    /// Adds this connection to a locked channel, telling the others when it is new there.
    fn add_member(&self, channel: &mut Channel) {
        if channel
            .members
            .insert(self.conn.key, self.conn.clone())
            .is_none()
        {
            self.conn.channels.lock().insert(channel.name.clone());
            self.hub.notify_membership(channel, "joined", &self.conn);
        }
    }

    /// Collects the frames a client missed since `since`; returns whether that is all of them.
    fn recover(
        &self,
        channel: &mut Channel,
        since: &Since,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) -> bool {
        let name = channel.name.clone();
        let recovery = channel.after(since.offset, since.epoch.as_deref(), now);
        out.extend(
            recovery
                .events
                .iter()
                .map(|s| s.event.frame([(&name, s.offset)])),
        );
        let metrics = self.hub.metrics();
        if recovery.recovered {
            metrics.recoveries_ok.inc()
        } else {
            metrics.recoveries_failed.inc()
        };
        recovery.recovered
    }
}

impl ClientSession for Session {
    fn conn_id(&self) -> &str {
        &self.conn.id
    }

    fn handle_text(&mut self, text: &str) {
        let frames = match frame::split_frames(text) {
            Ok(frames) => frames,
            Err(err) => {
                self.hub.queue(&self.conn, frame::reply_err(None, &err));
                return;
            }
        };
        for raw in frames {
            if self.conn.is_ending() {
                break;
            }
            self.handle_frame(raw);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.hub.unregister(&self.conn);
    }
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
