//! Stream state across restarts: each stream's SRTP packet index (ROC ‖ SEQ, RFC 3711 §3.3.1)
//! persisted in this worker's stream-state region of the shm file, and the seeds a fresh
//! process (or a worker that takes over a stream) reads from every worker's region.
//!
//! Owns: this worker's slots of the region (it is their only writer), the per-stream
//! [`Track`] arithmetic and the seed lookup. May not touch: SRTP contexts (the forward path
//! applies the seeds through [`super::SrtpOps`]), other workers' slots (read only).
//!
//! Writes are not per packet: an entry is written when a stream is first seen, at each
//! rollover, and whenever its sequence number moved [`REFRESH`] past the last write; so the
//! stored index is at most `REFRESH` behind the true one (docs/ENGINE.md "Stream state across
//! restarts" has the RFC 3711 Appendix A argument for the constants).

use contract::shm::{SessionId, ShmReader, StreamDir, StreamRecord};
use std::sync::Arc;

/// An entry is rewritten when the sequence number moved on by this many since the last write
/// (and at every rollover). Far below 2^15, so the stored index estimates the right ROC.
pub const REFRESH: u16 = 1024;
/// After a restart, a relay-numbered (SSRC-rewritten) output stream continues this far past
/// the stored index: more than [`REFRESH`] (so past anything the previous process sent) and
/// below RFC 3550 Appendix A.1's `MAX_DROPOUT` (3000) and 2^15 (so the receiver's ROC estimate,
/// RFC 3711 §3.3.1, and its sequence tracking both take it as a forward jump).
pub const SKIP: u16 = 2 * REFRESH;

/// No slot: the region is full or absent (the stream flows but is not persisted).
pub const NO_SLOT: u32 = u32::MAX;

/// A stream this worker saw in this process: the index last written and its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Track {
    pub ssrc: u32,
    /// ROC ‖ SEQ at the last write; [`Track::RESTART`] after the context was replaced.
    pub index: u64,
    /// This worker's slot, or [`NO_SLOT`] when the region is full or absent.
    pub slot: u32,
}

impl Track {
    /// The session's context was replaced (new SRTP profile): the stream starts again at
    /// ROC 0 with its next packet.
    pub const RESTART: u64 = u64::MAX;

    /// Account for a packet with sequence number `seq` (received and authenticated, or sent).
    /// True when the entry must be written: a rollover (RFC 3711 §3.3.1: the sequence number
    /// wrapped forward) or `REFRESH` packets of progress. Integer compares only.
    #[inline]
    pub fn advance(&mut self, seq: u16) -> bool {
        if self.index == Track::RESTART {
            self.index = u64::from(seq);
            return true;
        }
        let last = self.index as u16;
        let d = seq.wrapping_sub(last);
        // RFC 1982 order: 1..2^15 is forward; 0 and anything behind changes nothing.
        if d == 0 || d >= 0x8000 {
            return false;
        }
        let wrapped = seq < last;
        if !wrapped && d < REFRESH {
            return false;
        }
        let roc = (self.index >> 16) + u64::from(wrapped);
        self.index = (roc << 16) | u64::from(seq);
        true
    }

    #[inline]
    pub fn find(tracks: &[Track], ssrc: u32) -> Option<usize> {
        tracks.iter().position(|t| t.ssrc == ssrc)
    }
}

/// RFC 3711 §3.3.1 / Appendix A: the index of `seq` closest to `highest` (ROC − 1, ROC or
/// ROC + 1; never below 0, never past the 32-bit ROC).
#[inline]
pub fn estimate_index(highest: u64, seq: u16) -> u64 {
    let roc = highest >> 16;
    let s_l = highest & 0xffff;
    let s = u64::from(seq);
    let v = if s_l < 0x8000 {
        if s > s_l + 0x8000 {
            roc.saturating_sub(1)
        } else {
            roc
        }
    } else if s + 0x8000 < s_l {
        roc + 1
    } else {
        roc
    };
    (v.min(u64::from(u32::MAX)) << 16) | s
}

type Key = (SessionId, StreamDir, u32);

#[derive(Debug, Clone, Copy)]
struct Seed {
    key: Key,
    worker: u32,
    slot: u32,
}

/// This worker's view of the stream-state region.
#[derive(Default)]
pub struct StreamState {
    shm: Option<Arc<ShmReader>>,
    worker: u32,
    /// Key of each of this worker's slots (`None` = free).
    own: Vec<Option<Key>>,
    /// Free slots of this worker, lowest last.
    free: Vec<u32>,
    /// Every entry of every worker at the last rebuild, sorted by key.
    seeds: Vec<Seed>,
    writes: u64,
    seeded: u64,
}

impl StreamState {
    /// Persist into worker `worker`'s region of `shm` (the caller guarantees no other thread or
    /// live process writes that region). Existing entries are kept: other workers (and this
    /// one) seed from them.
    pub fn attach(&mut self, shm: Arc<ShmReader>, worker: usize) {
        let cap = shm.streams_per_worker();
        let Ok(w) = u32::try_from(worker) else { return };
        if w >= shm.capacity().workers {
            return;
        }
        let hw = shm.stream_high_water(w).min(cap);
        self.own = (0..cap)
            .map(|i| match (i < hw).then(|| shm.stream_slot(w, i)) {
                Some(Ok(Some(r))) => Some((r.session, r.dir, r.ssrc)),
                _ => None,
            })
            .collect();
        self.free = (0..cap)
            .rev()
            .filter(|&i| self.own[i as usize].is_none())
            .collect();
        self.worker = w;
        self.shm = Some(shm);
    }

    /// At every index rebuild: free this worker's entries of sessions that are gone, and
    /// re-read the seeds of every worker. May allocate (rebuild only).
    pub fn rebuild(&mut self, live: impl Fn(SessionId) -> bool) {
        let Some(shm) = self.shm.as_ref() else { return };
        for (i, k) in self.own.iter_mut().enumerate() {
            if let Some((session, _, _)) = *k {
                if !live(session) {
                    shm.clear_stream(self.worker, i as u32);
                    *k = None;
                    self.free.push(i as u32);
                }
            }
        }
        self.seeds.clear();
        let seeds = &mut self.seeds;
        shm.for_each_stream(|worker, slot, r| {
            if live(r.session) {
                seeds.push(Seed {
                    key: (r.session, r.dir, r.ssrc),
                    worker,
                    slot,
                });
            }
        });
        self.seeds.sort_unstable_by_key(|s| s.key);
    }

    /// True when some stream could be seeded (one compare per packet).
    #[inline]
    pub fn has_seeds(&self) -> bool {
        !self.seeds.is_empty()
    }

    /// The freshest stored state of (session, dir, ssrc) over all workers: each candidate slot
    /// is read again now (another process may have advanced it since the rebuild) and the
    /// highest index wins. No allocation.
    pub fn seed(&mut self, session: SessionId, dir: StreamDir, ssrc: u32) -> Option<StreamRecord> {
        let shm = self.shm.as_ref()?;
        let key = (session, dir, ssrc);
        let start = self.seeds.partition_point(|s| s.key < key);
        let mut best: Option<StreamRecord> = None;
        for s in self.seeds[start..].iter().take_while(|s| s.key == key) {
            if let Ok(Some(r)) = shm.stream_slot(s.worker, s.slot) {
                if (r.session, r.dir, r.ssrc) == key && best.is_none_or(|b| r.index > b.index) {
                    best = Some(r);
                }
            }
        }
        if best.is_some() {
            self.seeded += 1;
        }
        best
    }

    /// A slot of this worker for (session, dir, ssrc): the one already holding it, else a
    /// free one, else [`NO_SLOT`] (the stream flows but is not persisted).
    pub fn open(&mut self, session: SessionId, dir: StreamDir, ssrc: u32) -> u32 {
        if self.shm.is_none() {
            return NO_SLOT;
        }
        let key = (session, dir, ssrc);
        let start = self.seeds.partition_point(|s| s.key < key);
        let mine = self.seeds[start..]
            .iter()
            .take_while(|s| s.key == key)
            .find(|s| s.worker == self.worker && self.own.get(s.slot as usize) == Some(&Some(key)));
        if let Some(s) = mine {
            return s.slot;
        }
        match self.free.pop() {
            Some(i) => {
                self.own[i as usize] = Some(key);
                i
            }
            None => NO_SLOT,
        }
    }

    /// Write `rec` into this worker's slot `slot` (no-op for [`NO_SLOT`] or without shm).
    #[inline]
    pub fn write(&mut self, slot: u32, rec: &StreamRecord) {
        if slot == NO_SLOT {
            return;
        }
        if let Some(shm) = self.shm.as_ref() {
            shm.put_stream(self.worker, slot, rec);
            self.writes += 1;
        }
    }

    /// Entries written since the engine started.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Streams whose SRTP state was seeded from a stored entry.
    pub fn seeded(&self) -> u64 {
        self.seeded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_writes_at_rollover_and_every_refresh() {
        let mut t = Track {
            ssrc: 1,
            index: 65_000,
            slot: 0,
        };
        assert!(!t.advance(65_001));
        assert!(!t.advance(64_000), "behind: nothing");
        assert!(t.advance(3), "wrapped: ROC 1");
        assert_eq!(t.index, (1 << 16) | 3);
        assert!(!t.advance(3 + REFRESH - 1));
        assert!(t.advance(3 + REFRESH));
        assert_eq!(t.index, (1 << 16) | u64::from(3 + REFRESH));
        t.index = Track::RESTART;
        assert!(t.advance(9));
        assert_eq!(t.index, 9);
    }

    #[test]
    fn estimate_follows_appendix_a() {
        let h = (5 << 16) | 65_000;
        assert_eq!(estimate_index(h, 65_010), (5 << 16) | 65_010);
        assert_eq!(estimate_index(h, 10), (6 << 16) | 10);
        let h = (5 << 16) | 10;
        assert_eq!(estimate_index(h, 65_000), (4 << 16) | 65_000);
        assert_eq!(estimate_index(10, 65_000), 65_000, "never below ROC 0");
        // A rewritten stream skipping ahead carries into the next ROC.
        let h = (5 << 16) | 65_000;
        let next = (65_000u16).wrapping_add(SKIP + 1);
        assert_eq!(estimate_index(h, next), h + u64::from(SKIP) + 1);
    }
}
