//! One channel: its members, its history ring and its (epoch, offset) position.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_connector_api::{ChannelName, EventMeta, Member, Since};
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
    /// Bytes of events kept per channel (the newest event is kept whatever its size).
    pub history_max_bytes: usize,
    /// How long an event stays in history.
    pub history_ttl: Duration,
    /// What its events do for a connection whose queue is full.
    pub backpressure: herald_connector_api::Backpressure,
}

/// One event in history.
pub struct Stored {
    /// Its offset in this channel.
    pub offset: u64,
    at: Instant,
    /// The event's name, for transports that want [`EventMeta`].
    name: Arc<str>,
    content: Content,
}

/// What history keeps of an event: the frame this channel alone delivers it in (`via` this
/// channel), which fan-out, recoveries and history reads all share.
enum Content {
    /// Published to this channel only: fan-out built the frame, and it is all there is.
    Frame(Bytes),
    /// Published to several channels: the body is shared with them, and this channel's frame
    /// is built on the first read.
    Shared {
        event: Arc<EventBody>,
        frame: OnceLock<Bytes>,
    },
}

impl Stored {
    /// The event frame with `via` = this channel only.
    pub fn frame(&self, channel: &ChannelName) -> &Bytes {
        match &self.content {
            Content::Frame(frame) => frame,
            Content::Shared { event, frame } => {
                frame.get_or_init(|| event.frame([(channel, self.offset)]))
            }
        }
    }

    /// What the event is, as a recovery in this channel delivers it.
    pub fn meta(&self, channel: &ChannelName) -> Arc<EventMeta> {
        Arc::new(EventMeta {
            event: self.name.clone(),
            via: vec![(channel.clone(), self.offset)],
        })
    }

    /// What the event weighs in history, in bytes.
    fn weight(&self) -> usize {
        match &self.content {
            Content::Frame(frame) => frame.len(),
            Content::Shared { event, .. } => event.weight(),
        }
    }
}

/// A channel's state; lives behind its own mutex so channels never contend with each other.
pub struct Channel {
    /// The channel's name.
    pub name: ChannelName,
    /// The rule that matched its name at creation.
    pub rule: Arc<ChannelRule>,
    /// Changes whenever history is lost: whenever the channel is created on a single node,
    /// whenever the log is created anew on a cluster.
    pub epoch: Arc<str>,
    /// Offset of the newest event (0 before the first).
    pub last_offset: u64,
    /// The newest offset whose event is not in `history` (expired, trimmed, or from before
    /// this node knew the channel): a recovery must start at or after it.
    floor: u64,
    history: VecDeque<Stored>,
    /// What the events in `history` weigh ([`Stored::weight`]).
    history_bytes: usize,
    /// Member connections by key; an `IndexMap` so fan-out iterates a dense array. The
    /// broadcast channel has none: its members are every identified connection.
    pub members: IndexMap<u64, Arc<Conn>>,
    /// Set when the sweeper dropped this channel from the table: whoever still holds it must
    /// look the name up again, or it would join a channel nobody publishes to.
    pub removed: bool,
}

impl Channel {
    /// A new, empty channel with a fresh epoch.
    pub fn new(name: ChannelName, rule: Arc<ChannelRule>) -> Self {
        let epoch = Arc::from(Alphanumeric.sample_string(&mut rand::rng(), EPOCH_LEN));
        Self::in_log(name, rule, epoch, 0)
    }

    /// A new, empty channel of a shared log named `epoch`, which knows every event of it
    /// after `floor`.
    pub fn in_log(name: ChannelName, rule: Arc<ChannelRule>, epoch: Arc<str>, floor: u64) -> Self {
        Self {
            name,
            rule,
            epoch,
            last_offset: floor,
            floor,
            history: VecDeque::new(),
            history_bytes: 0,
            members: IndexMap::new(),
            removed: false,
        }
    }

    /// Appends an event and returns its offset, and how many old events left history to
    /// keep it within `history_max_bytes` (the count bound drops them too, but that is the
    /// ring working as configured, not a bound hit). `alone`: the event goes to this channel
    /// only, so its frame is built now and kept instead of the body. `at`: the offset the
    /// shared log gave it, stored `now`; else the next one, now.
    pub fn append(
        &mut self,
        event: &Arc<EventBody>,
        alone: bool,
        now: Instant,
        at: Option<u64>,
    ) -> (u64, usize) {
        self.last_offset = at.unwrap_or(self.last_offset + 1).max(self.last_offset);
        if self.rule.history_size == 0 {
            self.floor = self.last_offset;
            return (self.last_offset, 0);
        }
        let content = if alone {
            Content::Frame(event.frame([(&self.name, self.last_offset)]))
        } else {
            Content::Shared {
                event: event.clone(),
                frame: OnceLock::new(),
            }
        };
        let stored = Stored {
            offset: self.last_offset,
            at: now,
            name: event.name.clone(),
            content,
        };
        self.history_bytes += stored.weight();
        self.history.push_back(stored);
        if self.history.len() > self.rule.history_size {
            self.pop_oldest();
        }
        let mut trimmed = 0;
        while self.history_bytes > self.rule.history_max_bytes && self.history.len() > 1 {
            self.pop_oldest();
            trimmed += 1;
        }
        (self.last_offset, trimmed)
    }

    /// The single-channel frame of the newest event, if it is `offset` and still in history.
    pub fn newest_frame(&self, offset: u64) -> Option<&Bytes> {
        self.history
            .back()
            .filter(|s| s.offset == offset)
            .map(|s| s.frame(&self.name))
    }

    fn pop_oldest(&mut self) {
        if let Some(old) = self.history.pop_front() {
            self.history_bytes -= old.weight();
            self.floor = old.offset;
        }
    }

    /// Records up to `seq` left the log before this node applied them: a position before
    /// `seq` can no longer be proven complete here.
    pub fn lost_through(&mut self, seq: u64) {
        self.floor = self.floor.max(seq);
    }

    /// Forgets every event: the log they came from is gone. The channel now knows every event
    /// of the log named `epoch` after `floor`.
    pub fn restart(&mut self, epoch: Arc<str>, floor: u64) {
        self.history.clear();
        self.history_bytes = 0;
        self.epoch = epoch;
        self.last_offset = floor;
        self.floor = floor;
    }

    /// Drops events older than the history TTL.
    pub fn expire(&mut self, now: Instant) {
        while let Some(front) = self.history.front() {
            if now.duration_since(front.at) <= self.rule.history_ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Every stored event after `since`, oldest first, if history can prove that these are
    /// all of them: the epoch matches, the position is not past `horizon` (the newest offset
    /// this node knows of) and nothing after it has left history. A position without an
    /// epoch proves nothing unless it is offset 0 ("I saw nothing"), since the same offset
    /// names another event in another epoch. Offsets need not be consecutive (a cluster's are
    /// its log's sequence). Call [`Self::expire`] first.
    pub fn after(
        &self,
        since: &Since,
        horizon: u64,
    ) -> Option<impl Iterator<Item = &Stored> + Clone> {
        let epoch_ok = match &since.epoch {
            Some(epoch) => **epoch == *self.epoch,
            None => since.offset == 0,
        };
        if !epoch_ok || since.offset > horizon || since.offset < self.floor {
            return None;
        }
        let skip = self.history.partition_point(|s| s.offset <= since.offset);
        Some(self.history.iter().skip(skip))
    }

    /// The newest `limit` events, oldest first. Call [`Self::expire`] first.
    pub fn latest(&self, limit: usize) -> impl Iterator<Item = &Stored> + Clone {
        let skip = self.history.len().saturating_sub(limit);
        self.history.iter().skip(skip)
    }

    /// Whether the channel holds nothing worth keeping: no members and no live history.
    pub fn is_idle(&mut self, now: Instant) -> bool {
        self.expire(now);
        self.members.is_empty() && self.history.is_empty()
    }

    /// Up to `limit` members as the API lists them.
    pub fn member_list(&self, limit: usize) -> Vec<Member> {
        self.members
            .values()
            .take(limit)
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

    fn channel(size: usize, max_bytes: usize, ttl: Duration) -> Channel {
        let rule = ChannelRule {
            pattern: Pattern::new("*"),
            client_publish: false,
            join_leave_notices: false,
            history_size: size,
            history_max_bytes: max_bytes,
            history_ttl: ttl,
            backpressure: Default::default(),
        };
        Channel::new(ChannelName::parse("c").unwrap(), Arc::new(rule))
    }

    fn event() -> Arc<EventBody> {
        Arc::new(EventBody::new(
            "e",
            &herald_connector_api::CompactJson::null(),
            None,
        ))
    }

    fn since(offset: u64, epoch: Option<&str>) -> Since {
        Since {
            offset,
            epoch: epoch.map(str::to_owned),
        }
    }

    fn offsets<'a>(found: Option<impl Iterator<Item = &'a Stored>>) -> Option<Vec<u64>> {
        found.map(|events| events.map(|s| s.offset).collect())
    }

    #[test]
    fn recovers_within_history_only() {
        let now = Instant::now();
        let mut ch = channel(3, usize::MAX, Duration::from_secs(60));
        for _ in 0..5 {
            ch.append(&event(), true, now, None);
        }
        let epoch = ch.epoch.to_string();
        let e = Some(epoch.as_str());
        assert_eq!(
            offsets(ch.after(&since(2, e), ch.last_offset)),
            Some(vec![3, 4, 5])
        );
        assert_eq!(
            offsets(ch.after(&since(4, e), ch.last_offset)),
            Some(vec![5])
        );
        assert_eq!(
            offsets(ch.after(&since(5, e), ch.last_offset)),
            Some(vec![])
        );
        assert_eq!(
            offsets(ch.after(&since(1, e), ch.last_offset)),
            None,
            "offset 2 left history"
        );
        assert_eq!(offsets(ch.after(&since(6, e), ch.last_offset)), None);
        assert_eq!(
            offsets(ch.after(&since(3, Some("other")), ch.last_offset)),
            None
        );
        assert_eq!(
            ch.latest(2).map(|s| s.offset).collect::<Vec<_>>(),
            vec![4, 5]
        );
    }

    #[test]
    fn a_position_without_an_epoch_proves_nothing_but_a_fresh_start() {
        let now = Instant::now();
        let mut ch = channel(10, usize::MAX, Duration::from_secs(60));
        for _ in 0..5 {
            ch.append(&event(), true, now, None);
        }
        assert_eq!(offsets(ch.after(&since(3, None), ch.last_offset)), None);
        assert_eq!(offsets(ch.after(&since(5, None), ch.last_offset)), None);
        assert_eq!(
            offsets(ch.after(&since(0, None), ch.last_offset)),
            Some(vec![1, 2, 3, 4, 5])
        );
    }

    #[test]
    fn a_log_channel_recovers_across_sparse_offsets_from_what_it_knows() {
        let now = Instant::now();
        let rule = channel(3, usize::MAX, Duration::from_secs(60)).rule;
        let name = ChannelName::parse("c").unwrap();
        let mut ch = Channel::in_log(name, rule, Arc::from("LOG"), 100);
        for seq in [103, 110, 111, 150] {
            ch.append(&event(), true, now, Some(seq));
        }
        let e = Some("LOG");
        let horizon = 160;
        assert_eq!(
            offsets(ch.after(&since(105, e), horizon)),
            Some(vec![110, 111, 150])
        );
        assert_eq!(offsets(ch.after(&since(155, e), horizon)), Some(vec![]));
        assert_eq!(
            offsets(ch.after(&since(161, e), horizon)),
            None,
            "past what this node applied"
        );
        assert_eq!(
            offsets(ch.after(&since(102, e), horizon)),
            None,
            "103 left history (3 kept)"
        );
        assert_eq!(
            offsets(ch.after(&since(103, e), horizon)),
            Some(vec![110, 111, 150])
        );
        assert_eq!(
            offsets(ch.after(&since(90, e), horizon)),
            None,
            "before the node knew the channel"
        );
        ch.lost_through(140);
        assert_eq!(
            offsets(ch.after(&since(111, e), horizon)),
            None,
            "records up to 140 never reached this node"
        );
        assert_eq!(offsets(ch.after(&since(140, e), horizon)), Some(vec![150]));
        ch.restart(Arc::from("NEW"), 200);
        assert_eq!(
            offsets(ch.after(&since(200, Some("NEW")), 200)),
            Some(vec![])
        );
        assert_eq!(offsets(ch.after(&since(150, e), 200)), None);
    }

    #[test]
    fn history_is_bounded_in_bytes() {
        let now = Instant::now();
        let weight = event()
            .frame([(&ChannelName::parse("c").unwrap(), 10)])
            .len();
        let mut ch = channel(100, weight * 3, Duration::from_secs(60));
        for _ in 0..10 {
            ch.append(&event(), true, now, None);
        }
        assert_eq!(
            ch.latest(100).map(|s| s.offset).collect::<Vec<_>>(),
            [8, 9, 10]
        );
        let mut tiny = channel(100, 1, Duration::from_secs(60));
        tiny.append(&event(), false, now, None);
        tiny.append(&event(), false, now, None);
        assert_eq!(
            tiny.latest(100).map(|s| s.offset).collect::<Vec<_>>(),
            [2],
            "the newest event is kept whatever its size"
        );
    }

    #[test]
    fn history_expires_by_age() {
        let start = Instant::now();
        let mut ch = channel(10, usize::MAX, Duration::from_secs(1));
        ch.append(&event(), true, start, None);
        ch.append(&event(), true, start + Duration::from_secs(2), None);
        let later = start + Duration::from_millis(2500);
        ch.expire(later);
        assert_eq!(ch.latest(10).count(), 1);
        let epoch = ch.epoch.to_string();
        assert!(ch.after(&since(0, Some(&epoch)), ch.last_offset).is_none());
        assert!(ch.after(&since(1, Some(&epoch)), ch.last_offset).is_some());
        assert!(!ch.is_idle(later));
        assert!(ch.is_idle(start + Duration::from_secs(10)));
    }
}
