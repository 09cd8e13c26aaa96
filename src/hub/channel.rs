//! One channel: its members, its history ring and its (epoch, offset) position.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_connector_api::{ChannelName, Member};
use indexmap::IndexMap;
use rand::distr::{Alphanumeric, SampleString};

use super::conn::Conn;
use super::event::EventBody;
use crate::pattern::Pattern;

/// Length of a generated epoch.
const EPOCH_LEN: usize = 8;

/// Rules for channels whose names match `pattern` (`[[channels]]` in config).
#[derive(Debug, Clone)]
pub struct ChannelRule {
    /// Which channels the rule covers.
    pub pattern: Pattern,
    /// Whether clients may publish.
    pub client_publish: bool,
    /// Whether members are told of joins and leaves.
    pub join_leave_notices: bool,
    /// Events kept per channel.
    pub history_size: usize,
    /// How long an event stays in history.
    pub history_ttl: Duration,
}

/// One event in history.
pub struct Stored {
    /// Its offset in this channel.
    pub offset: u64,
    at: Instant,
    /// The event itself, shared with the other channels it was published to.
    pub event: Arc<EventBody>,
}

/// What a read of history after a position found.
pub struct Recovery<'a> {
    /// The events after the position, oldest first.
    pub events: Vec<&'a Stored>,
    /// Whether those are all the events after the position.
    pub recovered: bool,
}

/// A channel's state; lives behind its own mutex so channels never contend with each other.
pub struct Channel {
    /// The channel's name.
    pub name: ChannelName,
    /// The rule that matched its name at creation.
    pub rule: Arc<ChannelRule>,
    /// Changes whenever history is lost; here, whenever the channel is created.
    pub epoch: Arc<str>,
    /// Offset of the newest event (0 before the first).
    pub last_offset: u64,
    history: VecDeque<Stored>,
    /// Member connections by key; an `IndexMap` so fan-out iterates a dense array.
    pub members: IndexMap<u64, Arc<Conn>>,
    /// Set when the sweeper dropped this channel from the table: whoever still holds it must
    /// look the name up again, or it would join a channel nobody publishes to.
    pub removed: bool,
}

impl Channel {
    /// A new, empty channel with a fresh epoch.
    pub fn new(name: ChannelName, rule: Arc<ChannelRule>) -> Self {
        Self {
            name,
            rule,
            epoch: Arc::from(Alphanumeric.sample_string(&mut rand::rng(), EPOCH_LEN)),
            last_offset: 0,
            history: VecDeque::new(),
            members: IndexMap::new(),
            removed: false,
        }
    }

    /// Appends an event and returns its offset.
    pub fn append(&mut self, event: Arc<EventBody>, now: Instant) -> u64 {
        self.last_offset += 1;
        if self.rule.history_size > 0 {
            if self.history.len() >= self.rule.history_size {
                self.history.pop_front();
            }
            self.history.push_back(Stored {
                offset: self.last_offset,
                at: now,
                event,
            });
        }
        self.last_offset
    }

    /// Drops events older than the history TTL.
    pub fn expire(&mut self, now: Instant) {
        while let Some(front) = self.history.front() {
            if now.duration_since(front.at) <= self.rule.history_ttl {
                break;
            }
            self.history.pop_front();
        }
    }

    /// Everything after `offset` in `epoch` (`None`: the current epoch), if history still
    /// holds all of it.
    pub fn after(&mut self, offset: u64, epoch: Option<&str>, now: Instant) -> Recovery<'_> {
        self.expire(now);
        let fail = Recovery {
            events: Vec::new(),
            recovered: false,
        };
        if epoch.is_some_and(|e| e != &*self.epoch) || offset > self.last_offset {
            return fail;
        }
        if offset == self.last_offset {
            return Recovery {
                events: Vec::new(),
                recovered: true,
            };
        }
        match self.history.front() {
            Some(first) if first.offset <= offset + 1 => {
                let skip = (offset + 1 - first.offset) as usize;
                Recovery {
                    events: self.history.iter().skip(skip).collect(),
                    recovered: true,
                }
            }
            _ => fail,
        }
    }

    /// The newest `limit` events, oldest first.
    pub fn latest(&mut self, limit: usize, now: Instant) -> Vec<&Stored> {
        self.expire(now);
        let skip = self.history.len().saturating_sub(limit);
        self.history.iter().skip(skip).collect()
    }

    /// Whether the channel holds nothing worth keeping: no members and no live history.
    pub fn is_idle(&mut self, now: Instant) -> bool {
        self.expire(now);
        self.members.is_empty() && self.history.is_empty()
    }

    /// The members as the API lists them.
    pub fn member_list(&self) -> Vec<Member> {
        self.members
            .values()
            .map(|c| Member {
                user: c.user().to_owned(),
                conn: c.id.to_string(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn channel(size: usize, ttl: Duration) -> Channel {
        let rule = ChannelRule {
            pattern: Pattern::new("*"),
            client_publish: false,
            join_leave_notices: false,
            history_size: size,
            history_ttl: ttl,
        };
        Channel::new(ChannelName::parse("c").unwrap(), Arc::new(rule))
    }

    fn event() -> Arc<EventBody> {
        Arc::new(EventBody::new(
            "e",
            &RawValue::from_string("1".into()).unwrap(),
            None,
        ))
    }

    #[test]
    fn recovers_within_history_only() {
        let now = Instant::now();
        let mut ch = channel(3, Duration::from_secs(60));
        for _ in 0..5 {
            ch.append(event(), now);
        }
        let epoch = ch.epoch.to_string();
        let offsets = |r: Recovery<'_>| {
            (
                r.recovered,
                r.events.iter().map(|s| s.offset).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            offsets(ch.after(2, Some(&epoch), now)),
            (true, vec![3, 4, 5])
        );
        assert_eq!(offsets(ch.after(4, Some(&epoch), now)), (true, vec![5]));
        assert_eq!(offsets(ch.after(5, Some(&epoch), now)), (true, vec![]));
        assert_eq!(
            offsets(ch.after(1, Some(&epoch), now)),
            (false, vec![]),
            "offset 2 left history"
        );
        assert_eq!(offsets(ch.after(6, Some(&epoch), now)), (false, vec![]));
        assert_eq!(offsets(ch.after(3, Some("other"), now)), (false, vec![]));
        assert_eq!(offsets(ch.after(3, None, now)), (true, vec![4, 5]));
        assert_eq!(
            ch.latest(2, now)
                .iter()
                .map(|s| s.offset)
                .collect::<Vec<_>>(),
            vec![4, 5]
        );
    }

    #[test]
    fn history_expires_by_age() {
        let start = Instant::now();
        let mut ch = channel(10, Duration::from_secs(1));
        ch.append(event(), start);
        ch.append(event(), start + Duration::from_secs(2));
        let later = start + Duration::from_millis(2500);
        assert_eq!(ch.latest(10, later).len(), 1);
        assert!(!ch.after(0, None, later).recovered);
        assert!(ch.after(1, None, later).recovered);
        assert!(!ch.is_idle(later));
        assert!(ch.is_idle(start + Duration::from_secs(10)));
    }
}
