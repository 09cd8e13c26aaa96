//! One membership of one client in one channel, from its join (or first ident) to its leave
//! or the end of the run, reconnects with recovery included: the offsets must follow each
//! other with no gap. Gaps are kept as ranges, so an event that arrives late is told apart
//! from one that arrives twice, in a few words of memory however long the soak runs.

/// Offsets seen in one membership.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The next offset owed.
    next: u64,
    /// Inclusive ranges skipped so far and not (yet) filled.
    missing: Vec<(u64, u64)>,
    pub received: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl Segment {
    /// A membership whose position was `offset`: `offset + 1` is owed next.
    pub fn after(offset: u64) -> Self {
        Segment {
            next: offset + 1,
            missing: Vec::new(),
            received: 0,
            duplicated: 0,
            out_of_order: 0,
        }
    }

    /// The last offset in order: where to resume from.
    pub fn last(&self) -> u64 {
        self.next - 1
    }

    pub fn record(&mut self, off: u64) {
        self.received += 1;
        if off == self.next {
            self.next += 1;
        } else if off > self.next {
            self.missing.push((self.next, off - 1));
            self.next = off + 1;
        } else if let Some(k) = self.missing.iter().position(|&(a, b)| a <= off && off <= b) {
            // Late, not twice: split the gap it fills.
            let (a, b) = self.missing.remove(k);
            if a < off {
                self.missing.push((a, off - 1));
            }
            if off < b {
                self.missing.push((off + 1, b));
            }
            self.out_of_order += 1;
        } else {
            self.duplicated += 1;
        }
    }

    /// Offsets owed but not received, counting everything up to `published_hi` when the
    /// membership was still open at the end.
    pub fn lost(&self, published_hi: Option<u64>) -> u64 {
        let gaps: u64 = self.missing.iter().map(|&(a, b)| b - a + 1).sum();
        gaps + published_hi.map_or(0, |hi| hi.saturating_sub(self.last()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_run_owes_nothing() {
        let mut s = Segment::after(4);
        for o in 5..=9 {
            s.record(o);
        }
        assert_eq!((s.last(), s.lost(Some(9)), s.duplicated), (9, 0, 0));
        assert_eq!(s.lost(Some(11)), 2, "published after the last one seen");
    }

    #[test]
    fn gaps_late_and_twice() {
        let mut s = Segment::after(0);
        for o in [1, 2, 5, 3, 3, 6] {
            s.record(o);
        }
        assert_eq!(s.out_of_order, 1); // 3 filled part of the 3..=4 gap
        assert_eq!(s.duplicated, 1); // the second 3
        assert_eq!(s.lost(None), 1); // 4
        assert_eq!(s.last(), 6);
    }
}
