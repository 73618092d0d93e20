//! Per-stream sequence accounting: what arrived, what arrived twice, what arrived late.
//!
//! Owns: a bitmap window over the most recent sequence numbers of one stream. Pure logic:
//! no I/O, no clock, no allocation after [`SeqTracker::new`].
//!
//! Definitions (the report uses exactly these):
//! - *delivered*: a sequence number seen for the first time while inside the window;
//! - *duplicate*: a sequence number seen again while still inside the window;
//! - *reordered*: a first arrival whose sequence number is below the highest one already seen
//!   (it overtook nobody; somebody overtook it);
//! - *late*: a sequence number older than the window (cannot be told apart from a duplicate,
//!   so it is counted on its own and not as delivered);
//! - *lost*: sent − delivered, computed by the caller who knows how many were sent.

use serde::{Deserialize, Serialize};

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First arrival, in order (the new highest).
    InOrder,
    /// First arrival, below the highest seen.
    Reordered,
    /// Seen before (within the window).
    Duplicate,
    /// Older than the window.
    Late,
}

/// Totals of one tracker (or a sum of trackers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqCounts {
    pub delivered: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub late: u64,
}

impl SeqCounts {
    /// Add another tracker's totals.
    pub fn add(&mut self, o: &SeqCounts) {
        self.delivered += o.delivered;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.late += o.late;
    }
}

/// Sequence tracker with a bitmap window of the last `window` sequence numbers.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    bits: Box<[u64]>,
    window: u64,
    highest: Option<u64>,
    counts: SeqCounts,
}

impl SeqTracker {
    /// A tracker remembering the last `window` sequence numbers (rounded up to a multiple of
    /// 64, at least 64).
    pub fn new(window: usize) -> SeqTracker {
        let words = window.max(1).div_ceil(64);
        SeqTracker {
            bits: vec![0u64; words].into_boxed_slice(),
            window: words as u64 * 64,
            highest: None,
            counts: SeqCounts::default(),
        }
    }

    /// The window size in sequence numbers.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Highest sequence number seen so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Totals so far.
    pub fn counts(&self) -> SeqCounts {
        self.counts
    }

    /// Packets still missing below the highest seen (the live loss estimate; the final loss
    /// is sent − delivered).
    pub fn gaps(&self) -> u64 {
        self.highest
            .map_or(0, |h| (h + 1).saturating_sub(self.counts.delivered))
    }

    fn bit(&self, seq: u64) -> (usize, u64) {
        let pos = seq % self.window;
        ((pos / 64) as usize, 1u64 << (pos % 64))
    }

    fn clear(&mut self, seq: u64) {
        let (w, m) = self.bit(seq);
        self.bits[w] &= !m;
    }

    /// Record one arrival.
    pub fn record(&mut self, seq: u64) -> Arrival {
        let Some(h) = self.highest else {
            self.highest = Some(seq);
            let (w, m) = self.bit(seq);
            self.bits[w] |= m;
            self.counts.delivered += 1;
            return Arrival::InOrder;
        };
        if seq > h {
            // Slide the window: forget the numbers that fall out of it (their slots get reused).
            if seq - h >= self.window {
                self.bits.fill(0);
            } else {
                for s in h + 1..seq {
                    self.clear(s);
                }
            }
            let (w, m) = self.bit(seq);
            self.bits[w] |= m;
            self.highest = Some(seq);
            self.counts.delivered += 1;
            return Arrival::InOrder;
        }
        if h - seq >= self.window {
            self.counts.late += 1;
            return Arrival::Late;
        }
        let (w, m) = self.bit(seq);
        if self.bits[w] & m != 0 {
            self.counts.duplicates += 1;
            Arrival::Duplicate
        } else {
            self.bits[w] |= m;
            self.counts.delivered += 1;
            self.counts.reordered += 1;
            Arrival::Reordered
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_gaps() {
        let mut t = SeqTracker::new(64);
        for s in 0..10 {
            assert_eq!(t.record(s), Arrival::InOrder);
        }
        assert_eq!(t.record(15), Arrival::InOrder);
        assert_eq!(t.gaps(), 5);
        let c = t.counts();
        assert_eq!(c.delivered, 11);
        assert_eq!((c.duplicates, c.reordered, c.late), (0, 0, 0));
    }

    #[test]
    fn starts_anywhere() {
        let mut t = SeqTracker::new(64);
        assert_eq!(t.record(1_000_000), Arrival::InOrder);
        assert_eq!(t.record(999_999), Arrival::Reordered);
        assert_eq!(t.record(1_000_000), Arrival::Duplicate);
        assert_eq!(t.highest(), Some(1_000_000));
    }

    #[test]
    fn duplicates_and_reorders() {
        let mut t = SeqTracker::new(128);
        t.record(0);
        t.record(2);
        assert_eq!(t.record(1), Arrival::Reordered);
        assert_eq!(t.record(1), Arrival::Duplicate);
        assert_eq!(t.record(2), Arrival::Duplicate);
        assert_eq!(t.record(0), Arrival::Duplicate);
        assert_eq!(t.record(3), Arrival::InOrder);
        assert_eq!(
            t.counts(),
            SeqCounts {
                delivered: 4,
                duplicates: 3,
                reordered: 1,
                late: 0
            }
        );
    }

    #[test]
    fn window_edge() {
        let mut t = SeqTracker::new(64);
        assert_eq!(t.window(), 64);
        t.record(100);
        // 100 - 37 = 63 < 64: still inside, never seen.
        assert_eq!(t.record(37), Arrival::Reordered);
        assert_eq!(t.record(37), Arrival::Duplicate);
        // 100 - 36 = 64: outside.
        assert_eq!(t.record(36), Arrival::Late);
        assert_eq!(t.counts().late, 1);
    }

    #[test]
    fn sliding_clears_reused_slots() {
        let mut t = SeqTracker::new(64);
        for s in 0..64 {
            t.record(s);
        }
        // 64 reuses slot 0; a jump of exactly one window must not inherit old bits.
        assert_eq!(t.record(130), Arrival::InOrder);
        for s in 67..130 {
            assert_eq!(t.record(s), Arrival::Reordered, "seq {s}");
        }
        assert_eq!(t.record(66), Arrival::Late);
        // Huge jump clears everything.
        assert_eq!(t.record(10_000), Arrival::InOrder);
        assert_eq!(t.record(9_999), Arrival::Reordered);
        assert_eq!(t.counts().duplicates, 0);
    }

    #[test]
    fn matches_a_set_model() {
        use std::collections::BTreeSet;
        // Deterministic pseudo-random arrivals (xorshift), compared against a plain set.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut t = SeqTracker::new(256);
        let mut seen = BTreeSet::new();
        let mut highest: Option<u64> = None;
        let mut base = 0u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            base += x % 3;
            let seq = base.saturating_sub(x % 200);
            let expect = match highest {
                Some(h) if seq + 256 <= h => Arrival::Late,
                _ if seen.contains(&seq) => Arrival::Duplicate,
                Some(h) if seq < h => Arrival::Reordered,
                _ => Arrival::InOrder,
            };
            if expect != Arrival::Late {
                seen.insert(seq);
            }
            if expect == Arrival::InOrder {
                highest = Some(seq);
            }
            assert_eq!(t.record(seq), expect, "seq {seq}");
        }
        assert_eq!(t.counts().delivered, seen.len() as u64);
    }
}
