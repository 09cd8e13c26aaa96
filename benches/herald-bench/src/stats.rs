//! Delivery accounting (lost, duplicated, out-of-order) and latency percentiles.
//!
//! Every event carries a per-channel offset (Herald's `via`, the peer's per-room sequence), so
//! each subscriber can tell by itself what it got twice or in the wrong order; what it never got
//! is found at the end against the range of offsets the publisher was told it published.

use std::collections::HashMap;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Set of offsets seen on one channel: a bitset anchored at the lowest offset seen so far, so a
/// subscriber that gets a few thousand events keeps a few hundred bytes.
#[derive(Debug, Default, Clone)]
pub struct OffsetSet {
    base: u64,
    bits: Vec<u64>,
    len: u64,
}

impl OffsetSet {
    /// Adds `off`; returns false when it was already there.
    pub fn insert(&mut self, off: u64) -> bool {
        if self.bits.is_empty() {
            self.base = off & !63;
        } else if off < self.base {
            self.rebase(off & !63);
        }
        let rel = off - self.base;
        let (word, bit) = ((rel / 64) as usize, rel % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        if self.bits[word] & mask != 0 {
            return false;
        }
        self.bits[word] |= mask;
        self.len += 1;
        true
    }

    // Rare: an offset below everything seen so far (out of order); shift the words up.
    fn rebase(&mut self, new_base: u64) {
        let shift = ((self.base - new_base) / 64) as usize;
        let mut bits = vec![0u64; shift];
        bits.extend_from_slice(&self.bits);
        self.bits = bits;
        self.base = new_base;
    }

    pub fn contains(&self, off: u64) -> bool {
        if self.bits.is_empty() || off < self.base {
            return false;
        }
        let rel = off - self.base;
        let word = (rel / 64) as usize;
        word < self.bits.len() && self.bits[word] & (1u64 << (rel % 64)) != 0
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Every offset present, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.iter().enumerate().flat_map(move |(w, &word)| {
            (0..64)
                .filter(move |b| word & (1u64 << b) != 0)
                .map(move |b| self.base + w as u64 * 64 + b)
        })
    }

    /// How many offsets of the inclusive range `lo..=hi` are present.
    pub fn count_in(&self, lo: u64, hi: u64) -> u64 {
        if lo > hi {
            return 0;
        }
        (lo..=hi).filter(|&o| self.contains(o)).count() as u64
    }
}

/// What one subscriber saw on one channel.
#[derive(Debug, Default, Clone)]
pub struct ChannelTrack {
    pub seen: OffsetSet,
    pub max: u64,
    pub received: u64,
    pub dup: u64,
    pub ooo: u64,
}

impl ChannelTrack {
    pub fn record(&mut self, off: u64) {
        self.received += 1;
        if !self.seen.insert(off) {
            self.dup += 1;
            return;
        }
        if off < self.max {
            self.ooo += 1;
        } else {
            self.max = off;
        }
    }
}

/// Per-subscriber tracker: a handful of channels, looked up by name linearly (one to three).
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    pub channels: Vec<(Box<str>, ChannelTrack)>,
    /// Events on a channel this subscriber was not told to expect.
    pub unexpected: u64,
    /// Frames that could not be parsed.
    pub bad_frames: u64,
}

impl Tracker {
    pub fn expect(channels: &[&str]) -> Self {
        Tracker {
            channels: channels
                .iter()
                .map(|c| (Box::<str>::from(*c), ChannelTrack::default()))
                .collect(),
            unexpected: 0,
            bad_frames: 0,
        }
    }

    pub fn record(&mut self, channel: &str, off: u64) {
        match self.channels.iter_mut().find(|(c, _)| &**c == channel) {
            Some((_, t)) => t.record(off),
            None => self.unexpected += 1,
        }
    }

    pub fn track(&self, channel: &str) -> Option<&ChannelTrack> {
        self.channels
            .iter()
            .find(|(c, _)| &**c == channel)
            .map(|(_, t)| t)
    }

    /// Last offset seen on a channel (for resuming).
    pub fn last(&self, channel: &str) -> u64 {
        self.track(channel).map(|t| t.max).unwrap_or(0)
    }
}

/// Offsets the publisher was told it published, per channel: (lowest, highest, count), and
/// the offsets themselves. A single node numbers a channel 1, 2, 3…, but a cluster's offsets
/// are its log's sequence and skip, so what is owed is the set, not the range.
#[derive(Debug, Default, Clone)]
pub struct Published {
    pub ranges: HashMap<String, (u64, u64, u64)>,
    pub offsets: HashMap<String, OffsetSet>,
}

impl Published {
    pub fn add(&mut self, channel: &str, off: u64) {
        let e = self
            .ranges
            .entry(channel.to_string())
            .or_insert((off, off, 0));
        e.0 = e.0.min(off);
        e.1 = e.1.max(off);
        e.2 += 1;
        self.offsets
            .entry(channel.to_string())
            .or_default()
            .insert(off);
    }

    pub fn merge(&mut self, other: &Published) {
        for (c, &(lo, hi, n)) in &other.ranges {
            let e = self.ranges.entry(c.clone()).or_insert((lo, hi, 0));
            e.0 = e.0.min(lo);
            e.1 = e.1.max(hi);
            e.2 += n;
        }
        for (c, set) in &other.offsets {
            let mine = self.offsets.entry(c.clone()).or_default();
            for off in set.iter() {
                mine.insert(off);
            }
        }
    }
}

/// Correctness totals over all subscribers.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Accounting {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub bad_frames: u64,
}

impl Accounting {
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.unexpected == 0
            && self.bad_frames == 0
    }

    /// Adds one subscriber's tracker, judged against the published ranges. A channel is
    /// expected in full from `from` (per channel, e.g. the offset after joining) to the highest
    /// published offset.
    pub fn add(&mut self, t: &Tracker, published: &Published, from: impl Fn(&str) -> Option<u64>) {
        self.unexpected += t.unexpected;
        self.bad_frames += t.bad_frames;
        for (name, ct) in &t.channels {
            self.delivered += ct.received;
            self.duplicated += ct.dup;
            self.out_of_order += ct.ooo;
            let (Some(&(lo, _, _)), Some(owed)) = (
                published.ranges.get(&**name),
                published.offsets.get(&**name),
            ) else {
                // Nothing published there: anything received is unexpected.
                self.unexpected += ct.seen.len();
                continue;
            };
            let lo = from(name).map_or(lo, |f| f.max(lo));
            let (mut want, mut got) = (0, 0);
            for off in owed.iter().filter(|&o| o >= lo) {
                want += 1;
                got += u64::from(ct.seen.contains(off));
            }
            self.expected += want;
            self.lost += want - got;
            // Offsets that were not published in this run (outside its range, or in a
            // cluster's gaps) were not sent to this subscriber.
            self.unexpected += ct.seen.len() - got - ct.seen.count_in(1, lo.saturating_sub(1));
        }
    }
}

/// Latency histograms in microseconds, sharded so thousands of subscriber tasks on a few
/// threads rarely meet on one lock. Each task records a whole WebSocket message under one lock.
pub struct Latency {
    shards: Vec<Mutex<Histogram<u64>>>,
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 1 h at 3 significant digits; the bound only matters for clamping.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

impl Latency {
    pub fn new(shards: usize) -> Self {
        Latency {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    pub fn shard(&self, i: usize) -> &Mutex<Histogram<u64>> {
        &self.shards[i % self.shards.len()]
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            // Same bounds, so adding cannot fail.
            let _ = h.add(&*s);
        }
        h
    }
}

/// Percentiles in milliseconds for the report.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_set_inserts_and_rebases() {
        let mut s = OffsetSet::default();
        assert!(s.insert(200));
        assert!(s.insert(201));
        assert!(!s.insert(200));
        assert!(s.insert(5)); // below base: rebase
        assert!(s.contains(5) && s.contains(200) && s.contains(201));
        assert!(!s.contains(6));
        assert_eq!(s.len(), 3);
        assert_eq!(s.count_in(1, 200), 2);
    }

    #[test]
    fn clean_stream() {
        let mut t = Tracker::expect(&["bench"]);
        for o in 1..=10 {
            t.record("bench", o);
        }
        let mut p = Published::default();
        for o in 1..=10 {
            p.add("bench", o);
        }
        let mut a = Accounting::default();
        a.add(&t, &p, |_| None);
        assert_eq!(a.expected, 10);
        assert_eq!(a.delivered, 10);
        assert!(a.is_clean(), "{a:?}");
    }

    #[test]
    fn lost_dup_and_out_of_order() {
        let mut t = Tracker::expect(&["bench"]);
        for o in [1, 2, 4, 3, 3, 6, 7] {
            t.record("bench", o);
        }
        t.record("other", 1);
        let mut p = Published::default();
        for o in 1..=8 {
            p.add("bench", o);
        }
        let mut a = Accounting::default();
        a.add(&t, &p, |_| None);
        assert_eq!(a.expected, 8);
        assert_eq!(a.delivered, 7);
        assert_eq!(a.lost, 2); // 5 and 8
        assert_eq!(a.duplicated, 1); // second 3
        assert_eq!(a.out_of_order, 1); // 3 after 4
        assert_eq!(a.unexpected, 1); // "other"
        assert!(!a.is_clean());
    }

    #[test]
    fn expected_from_join_offset() {
        // Joined after offset 3: only 4..=6 are owed; 2 arrived anyway (unexpected).
        let mut t = Tracker::expect(&["c"]);
        for o in [2, 4, 5, 6] {
            t.record("c", o);
        }
        let mut p = Published::default();
        for o in 1..=6 {
            p.add("c", o);
        }
        let mut a = Accounting::default();
        a.add(&t, &p, |_| Some(4));
        assert_eq!(a.expected, 3);
        assert_eq!(a.lost, 0);
        assert_eq!(a.unexpected, 0, "before-join offsets are not counted twice");
    }

    #[test]
    fn offsets_with_gaps_as_a_cluster_gives_them() {
        // The log's sequence: channel `bench` got 7, 9 and 15; nothing is owed in between.
        let mut p = Published::default();
        let mut q = Published::default();
        p.add("bench", 15);
        q.add("bench", 7);
        q.add("bench", 9);
        p.merge(&q);
        assert_eq!(
            p.offsets["bench"].iter().collect::<Vec<_>>(),
            vec![7, 9, 15]
        );
        let mut t = Tracker::expect(&["bench"]);
        for o in [7, 9, 15] {
            t.record("bench", o);
        }
        let mut a = Accounting::default();
        a.add(&t, &p, |_| Some(8));
        assert_eq!((a.expected, a.lost), (2, 0), "{a:?}");
        assert!(a.is_clean(), "{a:?}");
        let mut short = Tracker::expect(&["bench"]);
        short.record("bench", 15);
        let mut b = Accounting::default();
        b.add(&short, &p, |_| None);
        assert_eq!((b.expected, b.lost), (3, 2), "{b:?}");
    }

    #[test]
    fn percentiles_in_ms() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.samples, 1000);
        assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 1.5, "{p:?}");
        assert!((p.max_ms - 1000.0).abs() < 1.0, "{p:?}");
        assert_eq!(Percentiles::of(&new_histogram()).samples, 0);
    }

    #[test]
    fn latency_shards_merge() {
        let l = Latency::new(4);
        for i in 0..8 {
            l.shard(i).lock().unwrap().record(100).unwrap();
        }
        assert_eq!(l.merged().len(), 8);
    }
}
