//! Sequence-number and timestamp continuity for one output stream (subscriber, output SSRC).
//!
//! When a route rewrites the SSRC, several sources may feed one output stream over time (a
//! speaker switch replaces the route from publisher A with one from publisher B, both writing
//! the same output SSRC). The subscriber must see one stream whose sequence numbers and
//! timestamps keep increasing (RFC 3550 §5.1; its SRTP context estimates the rollover counter
//! from the sequence number, RFC 3711 §3.3.1), so each new source is re-based:
//! `offset = last_out + 1 − first_in`. Packets of the previous source that arrive late
//! (reordered across the switch) keep their old offset as long as they do not overtake it.

use super::layers::Selector;
use super::svc::Svc;
use contract::shm::SessionId;

/// Which stream feeds the output: (publisher session, its SSRC).
pub type Source = (SessionId, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Feed {
    src: Source,
    seq_off: u16,
    ts_off: u32,
}

impl Feed {
    fn apply(&self, seq: u16, ts: u32) -> (u16, u32) {
        (seq.wrapping_add(self.seq_off), ts.wrapping_add(self.ts_off))
    }
}

/// RFC 1982 serial-number comparison: is `a` after `b`?
#[inline]
fn seq_newer(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

#[inline]
fn ts_newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The state of one output stream. Fixed size, no heap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Continuity {
    cur: Option<Feed>,
    prev: Option<Feed>,
    last_seq: u16,
    last_ts: u32,
    /// Highest output sequence number of the previous source at the switch.
    switch_seq: u16,
    /// `last_seq`/`last_ts` describe output that someone else sent on this stream (see
    /// [`Continuity::seed_after`]): the first source is re-based after them, not passed through.
    seeded: bool,
    /// The simulcast layer selection of this output, when layered routes feed it
    /// (engine/layers.rs); kept with the numbering across rebuilds.
    layers: Option<Selector>,
    /// The SVC selector of a stream forwarded by its Dependency Descriptor (svc.rs); boxed:
    /// it holds two template structures.
    svc: Option<Box<Svc>>,
}

impl Continuity {
    /// Output (sequence, timestamp) for an input packet of `src`.
    pub fn map(&mut self, src: Source, seq: u16, ts: u32) -> (u16, u32) {
        match self.cur {
            Some(f) if f.src == src => {}
            None if self.seeded => {
                // First source after a hand-over: continue after what was sent before, so no
                // output index is used twice (RFC 3711 §9.1).
                self.seeded = false;
                self.cur = Some(Feed {
                    src,
                    seq_off: self.last_seq.wrapping_add(1).wrapping_sub(seq),
                    ts_off: self.last_ts.wrapping_add(1).wrapping_sub(ts),
                });
            }
            None => {
                // First source: passes through unchanged.
                self.cur = Some(Feed {
                    src,
                    seq_off: 0,
                    ts_off: 0,
                });
                self.last_seq = seq;
                self.last_ts = ts;
            }
            Some(cur) => {
                if let Some(p) = self.prev.filter(|p| p.src == src) {
                    let (s, t) = p.apply(seq, ts);
                    if !seq_newer(s, self.switch_seq) {
                        // A late packet of the previous source: old numbering, nothing moves.
                        return (s, t);
                    }
                }
                // A new source (or the previous one coming back): re-base after the last output.
                self.prev = Some(cur);
                self.switch_seq = self.last_seq;
                self.cur = Some(Feed {
                    src,
                    seq_off: self.last_seq.wrapping_add(1).wrapping_sub(seq),
                    ts_off: self.last_ts.wrapping_add(1).wrapping_sub(ts),
                });
            }
        }
        // Invariant: `cur` is Some here (set above in every branch that falls through).
        let f = self.cur.unwrap_or(Feed {
            src,
            seq_off: 0,
            ts_off: 0,
        });
        let (s, t) = f.apply(seq, ts);
        if seq_newer(s, self.last_seq) {
            self.last_seq = s;
        }
        if ts_newer(t, self.last_ts) {
            self.last_ts = t;
        }
        (s, t)
    }

    /// Forget the sources and continue after output (`seq`, `ts`) that was sent on this stream
    /// by someone else (the previous owner of the output stream in this worker): the next
    /// source is re-based to `seq + 1`, exactly as at a switch, and late packets of earlier
    /// sources are re-based too instead of keeping old numbers.
    pub fn seed_after(&mut self, seq: u16, ts: u32) {
        *self = Continuity {
            last_seq: seq,
            last_ts: ts,
            seeded: true,
            layers: self.layers,
            svc: self.svc.take(),
            ..Continuity::default()
        };
    }

    /// Declare this output fed by a simulcast source of `count` layers, capped at spatial
    /// layer `cap` and temporal layer `temporal` (a route's [`contract::shm::Layer`]); an
    /// existing selection keeps its state.
    pub fn set_layers(&mut self, count: u8, cap: u8, temporal: u8) {
        let s = self
            .layers
            .get_or_insert_with(|| Selector::new(usize::from(count), cap));
        s.set_count(usize::from(count));
        s.set_cap(cap);
        s.set_temporal_cap(temporal);
    }

    /// Make this an SVC stream capped at spatial layer `cap` and temporal layer `temporal`
    /// (allocates once, when the route is set up).
    pub fn set_svc(&mut self, cap: u8, temporal: u8) {
        self.svc
            .get_or_insert_with(|| Box::new(Svc::new(cap, temporal)))
            .set_caps(cap, temporal);
    }

    /// The SVC selector, when this output is forwarded by its Dependency Descriptor.
    pub fn svc(&self) -> Option<&Svc> {
        self.svc.as_deref()
    }

    pub fn svc_mut(&mut self) -> Option<&mut Svc> {
        self.svc.as_deref_mut()
    }

    /// The layer selection, when this output is layered.
    pub fn layers(&self) -> Option<&Selector> {
        self.layers.as_ref()
    }

    pub fn layers_mut(&mut self) -> Option<&mut Selector> {
        self.layers.as_mut()
    }

    /// Make `src` the current feed so that its packet (`seq`, `ts`) goes out `gap` sequence
    /// numbers and `ts_advance` timestamp ticks after the last output (a simulcast layer
    /// switch, engine/layers.rs). Late packets of the previous feed keep their numbering as
    /// at any switch. Nothing sent yet: the first source passes through (or continues after
    /// the seed) as in [`Continuity::map`].
    pub fn rebase(&mut self, src: Source, seq: u16, ts: u32, gap: u16, ts_advance: u32) {
        if self.cur.is_none() && !self.seeded {
            return;
        }
        if let Some(cur) = self.cur.filter(|c| c.src != src) {
            self.prev = Some(cur);
            self.switch_seq = self.last_seq;
        }
        self.seeded = false;
        self.cur = Some(Feed {
            src,
            seq_off: self.last_seq.wrapping_add(gap).wrapping_sub(seq),
            ts_off: self.last_ts.wrapping_add(ts_advance).wrapping_sub(ts),
        });
    }

    /// The highest output (sequence, timestamp) sent (or seeded), if any.
    pub fn last(&self) -> Option<(u16, u32)> {
        (self.cur.is_some() || self.seeded).then_some((self.last_seq, self.last_ts))
    }

    /// The source currently feeding the output and its sequence offset (output − input), for
    /// mapping feedback (NACK, RFC 4585 §6.2.1) back to the publisher's numbering.
    pub fn current(&self) -> Option<(Source, u16, u32)> {
        self.cur.map(|f| (f.src, f.seq_off, f.ts_off))
    }

    /// Offsets in force for `src` (current or previous feed), if any.
    pub fn offsets_for(&self, src: Source) -> Option<(u16, u32)> {
        [self.cur, self.prev]
            .into_iter()
            .flatten()
            .find(|f| f.src == src)
            .map(|f| (f.seq_off, f.ts_off))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_source_passes_through() {
        let mut c = Continuity::default();
        assert_eq!(c.map((1, 10), 100, 5000), (100, 5000));
        assert_eq!(c.map((1, 10), 101, 5900), (101, 5900));
        assert_eq!(c.map((1, 10), 99, 4100), (99, 4100));
    }

    #[test]
    fn switch_rebases_monotonic() {
        let mut c = Continuity::default();
        c.map((1, 10), 65534, 0xFFFF_FF00);
        c.map((1, 10), 65535, 0xFFFF_FFF0);
        // New source with unrelated numbering continues after the last output.
        assert_eq!(c.map((2, 20), 7, 1000), (0, 0xFFFF_FFF1));
        assert_eq!(
            c.map((2, 20), 8, 1900),
            (1, 0xFFFF_FFF1u32.wrapping_add(900))
        );
        // A late packet of the old source keeps its numbering (older than the switch).
        assert_eq!(c.map((1, 10), 65533, 0xFFFF_FE00), (65533, 0xFFFF_FE00));
        assert_eq!(c.current().unwrap().0, (2, 20));
        // The old source coming back is re-based again, still monotonic.
        let (s, _) = c.map((1, 10), 3, 10);
        assert_eq!(s, 2);
    }

    #[test]
    fn rebase_continues_with_a_gap_and_keeps_late_packets_of_the_old_feed() {
        let mut c = Continuity::default();
        // Nothing sent: no effect, the first source passes through.
        c.rebase((1, 10), 5, 50, 2, 900);
        assert_eq!(c.map((1, 10), 5, 50), (5, 50));
        // A reordered older packet: passes, the last output stays (5, 50).
        assert_eq!(c.map((1, 10), 65535, 0xFFFF_FFFF), (65535, 0xFFFF_FFFF));
        assert_eq!(c.last(), Some((5, 50)));
        c.rebase((1, 20), 300, 7, 2, 4500);
        assert_eq!(c.map((1, 20), 300, 7), (7, 4550));
        assert_eq!(c.map((1, 20), 301, 3007), (8, 7550));
        // A late packet of the old feed keeps its old numbering.
        assert_eq!(c.map((1, 10), 65534, 0xFFFF_F000), (65534, 0xFFFF_F000));
        // Seeded: continues after the seed.
        c.seed_after(100, 1000);
        c.rebase((1, 30), 9, 9, 1, 10);
        assert_eq!(c.map((1, 30), 9, 9), (101, 1010));
    }

    #[test]
    fn seeded_stream_continues_after_the_seed() {
        let mut c = Continuity::default();
        assert_eq!(c.last(), None);
        c.seed_after(500, 9000);
        assert_eq!(c.last(), Some((500, 9000)));
        // The first source does not pass through: it continues at 501.
        assert_eq!(c.map((3, 30), 17, 100), (501, 9001));
        assert_eq!(c.map((3, 30), 18, 1000), (502, 9901));
        assert_eq!(c.last(), Some((502, 9901)));
        assert_eq!(c.current().unwrap().0, (3, 30));
    }
}
