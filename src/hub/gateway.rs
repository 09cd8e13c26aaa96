//! What publishers and the admin API ask of the hub: publish, presence, history, disconnect,
//! blocks and revocations.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use herald_connector_api::{
    Acting, AdminCommand, AtCapacity, ChannelKind, ChannelName, ChannelSummary, Disconnect,
    Envelope, FieldError, Gateway, GatewayInfo, HistoryError, HistoryPage, Member, PublishError,
    Published, Publishing, Revocation, Since, Target,
};
use serde_json::value::RawValue;

use super::channel::{Channel, Stored};
use super::dedup::Claim;
use super::event::EventBody;
use super::log::target_text;
use super::{fanout, frame, Hub, MAX_HISTORY_LIMIT, MAX_HISTORY_PAGE_BYTES};

/// Milliseconds since the Unix epoch, as admin commands carry times.
fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A page of history as the hub reads it, before it is shaped for the API or a client.
pub(super) struct Page {
    /// Event frames, oldest first.
    pub events: Vec<Box<RawValue>>,
    /// Whether every event after the position is in `events` (`None`: no position given).
    pub recovered: Option<bool>,
    /// Whether history holds more events after the page.
    pub more: bool,
}

impl Hub {
    /// Reads a page of a locked channel: the events after `since` (or the newest `limit`),
    /// at most `limit` of them and [`MAX_HISTORY_PAGE_BYTES`] of frames (the first always).
    pub(super) fn read_page(
        &self,
        channel: &mut Channel,
        since: Option<&Since>,
        limit: usize,
        now: Instant,
    ) -> Page {
        let horizon = self.position(channel);
        channel.expire(now);
        let name = channel.name.clone();
        let (found, proven): (Box<dyn Iterator<Item = &Stored>>, Option<bool>) = match since {
            Some(since) => match channel.after(since, horizon) {
                Some(events) => (Box::new(events), Some(true)),
                None => (Box::new(std::iter::empty()), Some(false)),
            },
            None => (Box::new(channel.latest(limit)), None),
        };
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for stored in found {
            let frame = stored.frame(&name);
            if events.len() == limit
                || (!events.is_empty() && bytes + frame.len() > MAX_HISTORY_PAGE_BYTES)
            {
                more = true;
                break;
            }
            bytes += frame.len();
            // Our own frames are UTF-8 JSON.
            if let Some(raw) = std::str::from_utf8(frame)
                .ok()
                .and_then(|text| RawValue::from_string(text.to_owned()).ok())
            {
                events.push(raw);
            }
        }
        Page {
            events,
            recovered: proven.map(|proven| proven && !more),
            more,
        }
    }
}

impl Hub {
    /// Refuses an envelope that is malformed, names too many targets, or comes during a
    /// shutdown.
    fn check_envelope(&self, envelope: &Envelope) -> Result<(), PublishError> {
        if self.0.shutting_down.load(Ordering::SeqCst) {
            return Err(PublishError::ShuttingDown);
        }
        envelope.validate()?;
        let max_targets = self.0.config.max_envelope_targets;
        if envelope.target_count() > max_targets {
            self.0.metrics.limit_hit("max_envelope_targets");
            let field = if envelope.channels.len() > max_targets {
                "channels"
            } else {
                "users"
            };
            return Err(FieldError::new(
                field,
                format!("an envelope may name at most {max_targets} targets (channels, users and broadcast together)"),
            )
            .into());
        }
        Ok(())
    }

    /// A publish on a single node: delivered and in history when this returns.
    fn publish_here(&self, envelope: Envelope) -> Result<Published, PublishError> {
        let pending = match envelope
            .key
            .as_deref()
            .map(|k| self.0.dedup.claim(k, Instant::now()))
        {
            Some(Claim::Seen(earlier)) => {
                self.0.metrics.duplicates_suppressed.inc();
                return Ok(Published {
                    duplicate: true,
                    ..earlier
                });
            }
            Some(Claim::Full) => {
                self.0.metrics.limit_hit("dedup_max_keys");
                return Err(AtCapacity {
                    key: "dedup_max_keys",
                    limit: self.0.config.dedup_max_keys,
                }
                .into());
            }
            Some(Claim::Fresh(pending)) => Some(pending),
            None => None,
        };
        let body = Arc::new(EventBody::new(&envelope.event, &envelope.data, None));
        let result = self.fan_out(
            &envelope.targets(),
            &body,
            &fanout::Skip::except(&envelope.except),
            None,
        );
        let published = result.map(|offsets| Published {
            id: body.id.clone(),
            offsets,
            duplicate: false,
        });
        if let Some(pending) = pending {
            pending.finish(published.as_ref().ok());
        }
        Ok(published?)
    }

    /// Ends the target's connections on this node with 4101.
    pub(super) fn disconnect_here(&self, target: &Target, reason: &str, reconnect: bool) -> usize {
        self.matching_conns(target)
            .iter()
            .filter(|c| c.end(Disconnect::new(4101, reason, reconnect)))
            .count()
    }

    /// Blocks `user` on this node and ends its connections here.
    pub(super) fn block_here(
        &self,
        user: &str,
        until: Option<SystemTime>,
    ) -> Result<usize, AtCapacity> {
        self.0.revocations.block(user, until)?;
        tracing::info!(user, ?until, "user blocked");
        let ended = self
            .matching_conns(&Target::User(user.to_owned()))
            .iter()
            .filter(|c| c.end(Disconnect::new(4002, "blocked", false)))
            .count();
        Ok(ended)
    }

    /// Records a revocation on this node and ends the connections here it names.
    pub(super) fn revoke_here(&self, revocation: &Revocation) -> Result<usize, AtCapacity> {
        self.0.revocations.revoke(revocation, SystemTime::now())?;
        tracing::info!(?revocation, "tokens revoked");
        let candidates = match revocation {
            Revocation::IssuedBefore { user, .. } => {
                self.matching_conns(&Target::User(user.clone()))
            }
            Revocation::Jti { .. } => self.matching_conns(&Target::All),
        };
        let ended = candidates
            .iter()
            .filter(|c| {
                c.identity
                    .get()
                    .is_some_and(|identity| super::revocation::names(revocation, identity))
            })
            .filter(|c| c.end(Disconnect::new(4002, "token revoked", false)))
            .count();
        Ok(ended)
    }

    /// Removes the target's connections on this node from a channel.
    pub(super) fn unsubscribe_here(&self, name: &ChannelName, target: &Target) -> usize {
        let Some(mut channel) = self.lock_existing(name) else {
            return 0;
        };
        let removed: Vec<_> = match target {
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
}

impl Gateway for Hub {
    fn publish(&self, envelope: Envelope) -> Publishing {
        if let Err(refused) = self.check_envelope(&envelope) {
            return Publishing::ready(Err(refused));
        }
        match self.log() {
            None => Publishing::ready(self.publish_here(envelope)),
            Some(log) => self.publish_through_log(log, envelope),
        }
    }

    fn channels(&self) -> Vec<ChannelSummary> {
        let arcs: Vec<_> = self.0.channels.iter().map(|c| c.clone()).collect();
        let mut counts: BTreeMap<String, usize> = arcs
            .iter()
            .map(|arc| {
                let c = arc.lock();
                let members = match c.name.kind() {
                    ChannelKind::Broadcast => {
                        self.0.conns.iter().filter(|c| c.in_broadcast()).count()
                    }
                    _ => c.members.len(),
                };
                (c.name.to_string(), members)
            })
            .collect();
        // On a cluster, a channel counts its members on every node, and one with members
        // only elsewhere is listed too.
        if let Some(log) = self.log() {
            for (channel, members) in log.engine.remote_channels() {
                *counts.entry(channel).or_default() += members;
            }
        }
        counts
            .into_iter()
            .map(|(channel, members)| ChannelSummary { channel, members })
            .collect()
    }

    fn presence(&self, channel: &ChannelName) -> Vec<Member> {
        let mut members = if channel.kind() == ChannelKind::Broadcast {
            self.broadcast_members()
        } else {
            self.lock_existing(channel)
                .map(|c| c.member_list(usize::MAX))
                .unwrap_or_default()
        };
        members.extend(self.remote_members(channel));
        members
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
        let Some(mut channel) = self.lock_existing(name) else {
            // Reading does not create: an unknown channel is an empty one with no epoch yet.
            return Ok(HistoryPage {
                events: Vec::new(),
                offset: 0,
                epoch: String::new(),
                recovered: since.map(|s| s.offset == 0),
                more: false,
            });
        };
        let page = self.read_page(&mut channel, since.as_ref(), limit, Instant::now());
        Ok(HistoryPage {
            events: page.events,
            offset: channel.last_offset,
            epoch: channel.epoch.to_string(),
            recovered: page.recovered,
            more: page.more,
        })
    }

    fn disconnect(&self, target: Target, reason: &str, reconnect: bool) -> Acting<usize> {
        let here = self.disconnect_here(&target, reason, reconnect);
        self.with_cluster(
            here,
            AdminCommand::Disconnect {
                target: target_text(&target),
                reason: reason.to_owned(),
                reconnect,
            },
        )
    }

    fn block(&self, user: &str, until: Option<SystemTime>) -> Acting<Result<usize, AtCapacity>> {
        let here = self.block_here(user, until);
        self.with_cluster_if_ok(here, || AdminCommand::Block {
            user: user.to_owned(),
            until_ms: until.map(unix_ms),
        })
    }

    fn unblock(&self, user: &str) -> Acting<bool> {
        let here = usize::from(self.0.revocations.unblock(user));
        let command = AdminCommand::Unblock {
            user: user.to_owned(),
        };
        let acting = self.with_cluster(here, command);
        Box::pin(async move { acting.await > 0 })
    }

    fn revoke(&self, revocation: Revocation) -> Acting<Result<usize, AtCapacity>> {
        let here = self.revoke_here(&revocation);
        self.with_cluster_if_ok(here, || match revocation {
            // Dated here, so that nodes that start later forget it when this one does.
            Revocation::Jti { jti, until } => AdminCommand::RevokeJti {
                jti,
                until_ms: Some(unix_ms(until.unwrap_or_else(|| {
                    SystemTime::now() + super::revocation::JTI_RETENTION
                }))),
            },
            Revocation::IssuedBefore { user, before } => AdminCommand::RevokeBefore {
                user,
                before_ms: unix_ms(before),
            },
        })
    }

    fn unsubscribe(&self, name: &ChannelName, target: Target) -> Acting<usize> {
        let here = self.unsubscribe_here(name, &target);
        self.with_cluster(
            here,
            AdminCommand::Unsubscribe {
                channel: name.to_string(),
                target: target_text(&target),
            },
        )
    }

    fn info(&self) -> GatewayInfo {
        GatewayInfo {
            node: self.0.config.node.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.0.started.elapsed().as_secs(),
            connections: self.0.conns.len(),
            channels: self.0.channels.len(),
            nodes: self.log().map(|log| log.engine.nodes()).unwrap_or_default(),
        }
    }
}

impl Hub {
    /// Members of `channel` on the other nodes of the cluster.
    pub(super) fn remote_members(&self, channel: &ChannelName) -> Vec<Member> {
        self.log()
            .map(|log| log.engine.remote_members(channel.as_str()))
            .unwrap_or_default()
    }

    /// The identified connections: the members of `*`.
    fn broadcast_members(&self) -> Vec<Member> {
        self.0
            .conns
            .iter()
            .filter(|c| c.in_broadcast())
            .map(|c| Member {
                user: c.user().to_owned(),
                conn: c.id.to_string(),
            })
            .collect()
    }
}
