//! Feedback between workers: which worker receives each publisher, and one bounded inbox per
//! worker for feedback (NACK, PLI, FIR, REMB) that arrived on another worker.
//!
//! SO_REUSEPORT spreads peers over the workers by address, so a subscriber's feedback can
//! arrive on a worker that never sees the publisher it is about. That worker has the
//! subscriber's inbound SRTCP context (it unprotects the feedback) but not the publisher's
//! stream state: the retransmission cache, the sequence numbers each subscriber was sent, the
//! SSRCs the publisher sent. Those live in the worker that receives the publisher (its
//! *owner*), which also sends the media to every subscriber of that publisher. The receiving
//! worker therefore hands the plain feedback packet to the owner's inbox; the owner treats it
//! as if it had received it, and answers from its own socket (all workers share one port, so
//! the subscriber sees the same source address).
//!
//! Owns: the owner table (one atomic word per entry: a publisher id and a worker; written
//! once when a worker first receives a publisher, cleared when the session goes) and the
//! inboxes (`crossbeam` `ArrayQueue`: bounded, lock-free, allocated once). Nothing here copies
//! media: only feedback crosses workers. May not touch: sockets, SRTP, the clock.

use contract::shm::SessionId;
use crossbeam::queue::ArrayQueue;
use std::sync::atomic::{AtomicU64, Ordering};

/// The largest feedback packet handed over (a generic NACK with 125 FCI entries); larger
/// packets are refused ([`HandError::TooBig`]).
pub const HANDED_BYTES: usize = 512;
/// Feedback packets one worker's inbox holds.
pub const INBOX: usize = 256;
/// Owner-table entries (a power of two): far more than the publishers one relay serves.
const OWNER_SLOTS: usize = 1 << 14;
/// Entries probed from a publisher's home slot.
const PROBE: usize = 32;
const EMPTY: u64 = 0;
/// A released entry: probing continues past it, a claim may reuse it.
const TOMBSTONE: u64 = 1;

/// One feedback packet on its way to the worker that owns its publisher.
#[derive(Clone, Copy)]
pub struct Handed {
    /// The subscriber that sent it.
    pub sub: SessionId,
    len: u16,
    bytes: [u8; HANDED_BYTES],
}

impl Handed {
    /// The plain RTCP feedback packet.
    pub fn packet(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Why a hand-over failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandError {
    /// The owner's inbox is full (it is not keeping up); the feedback is dropped.
    Full,
    /// Longer than [`HANDED_BYTES`].
    TooBig,
    /// No such worker.
    NoWorker,
}

/// Shared by every worker of one relay process.
pub struct FeedbackHub {
    inboxes: Box<[ArrayQueue<Handed>]>,
    owners: Box<[AtomicU64]>,
}

/// An owner-table word: the publisher id in the high 48 bits (+1, so never EMPTY or
/// TOMBSTONE) and the worker in the low 16. Ids above 2^48 share entries with smaller ones;
/// a wrong owner only means that worker finds no stream for the feedback and counts it
/// `unroutable`.
fn word(id: SessionId, worker: usize) -> u64 {
    ((id.wrapping_add(1) & 0xFFFF_FFFF_FFFF) << 16) | (worker as u64 & 0xFFFF)
}

fn key_of(w: u64) -> u64 {
    w >> 16
}

fn home(id: SessionId) -> usize {
    // Fibonacci hashing: consecutive ids spread over the table.
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 50) as usize & (OWNER_SLOTS - 1)
}

impl FeedbackHub {
    /// A hub for `workers` workers, allocated whole.
    pub fn new(workers: usize) -> FeedbackHub {
        FeedbackHub {
            inboxes: (0..workers.max(1))
                .map(|_| ArrayQueue::new(INBOX))
                .collect(),
            owners: (0..OWNER_SLOTS).map(|_| AtomicU64::new(EMPTY)).collect(),
        }
    }

    pub fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// Worker `worker` receives publisher `id` (called once per publisher and worker, at its
    /// first packet there). A publisher that moved (new address) is claimed by its new worker.
    pub fn claim(&self, id: SessionId, worker: usize) {
        let want = word(id, worker);
        let key = key_of(want);
        let h = home(id);
        let mut free = None;
        for i in 0..PROBE {
            let slot = &self.owners[(h + i) & (OWNER_SLOTS - 1)];
            let cur = slot.load(Ordering::Relaxed);
            if cur > TOMBSTONE && key_of(cur) == key {
                slot.store(want, Ordering::Relaxed);
                return;
            }
            if cur == TOMBSTONE && free.is_none() {
                free = Some(slot);
            }
            if cur == EMPTY {
                if let Some(f) = free {
                    if f.compare_exchange(TOMBSTONE, want, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                    {
                        return;
                    }
                }
                if slot
                    .compare_exchange(EMPTY, want, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
            }
        }
        // Probe run full: the publisher stays unowned (its feedback is handled where it
        // arrives, as without a hub).
    }

    /// Worker `worker` no longer has publisher `id` (the session ended).
    pub fn release(&self, id: SessionId, worker: usize) {
        let have = word(id, worker);
        let h = home(id);
        for i in 0..PROBE {
            let slot = &self.owners[(h + i) & (OWNER_SLOTS - 1)];
            let cur = slot.load(Ordering::Relaxed);
            if cur == EMPTY {
                return;
            }
            if cur == have {
                let _ =
                    slot.compare_exchange(have, TOMBSTONE, Ordering::Relaxed, Ordering::Relaxed);
                return;
            }
        }
    }

    /// The worker that receives publisher `id`, if one claimed it.
    pub fn owner(&self, id: SessionId) -> Option<usize> {
        let key = key_of(word(id, 0));
        let h = home(id);
        for i in 0..PROBE {
            let cur = self.owners[(h + i) & (OWNER_SLOTS - 1)].load(Ordering::Relaxed);
            if cur == EMPTY {
                return None;
            }
            if cur > TOMBSTONE && key_of(cur) == key {
                return Some((cur & 0xFFFF) as usize);
            }
        }
        None
    }

    /// Queue feedback packet `p` from subscriber `sub` for worker `to`.
    pub fn hand(&self, to: usize, sub: SessionId, p: &[u8]) -> Result<(), HandError> {
        let inbox = self.inboxes.get(to).ok_or(HandError::NoWorker)?;
        if p.len() > HANDED_BYTES {
            return Err(HandError::TooBig);
        }
        let mut h = Handed {
            sub,
            len: p.len() as u16,
            bytes: [0; HANDED_BYTES],
        };
        h.bytes[..p.len()].copy_from_slice(p);
        inbox.push(h).map_err(|_| HandError::Full)
    }

    /// The next packet handed to worker `me`.
    pub fn take(&self, me: usize) -> Option<Handed> {
        self.inboxes.get(me)?.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_claim_move_release() {
        let hub = FeedbackHub::new(4);
        assert_eq!(hub.owner(42), None);
        hub.claim(42, 1);
        assert_eq!(hub.owner(42), Some(1));
        hub.claim(42, 3);
        assert_eq!(hub.owner(42), Some(3), "moved to another worker");
        hub.release(42, 1);
        assert_eq!(hub.owner(42), Some(3), "only the owner releases");
        hub.release(42, 3);
        assert_eq!(hub.owner(42), None);
        // Many publishers: each finds its own worker; released entries are reused.
        for id in 1..2000u64 {
            hub.claim(id, (id % 4) as usize);
        }
        for id in 1..2000u64 {
            assert_eq!(hub.owner(id), Some((id % 4) as usize), "id {id}");
        }
        for id in 1..2000u64 {
            hub.release(id, (id % 4) as usize);
        }
        for id in 1..2000u64 {
            assert_eq!(hub.owner(id), None);
        }
    }

    #[test]
    fn inboxes_are_bounded() {
        let hub = FeedbackHub::new(2);
        for i in 0..INBOX {
            assert_eq!(hub.hand(1, i as u64, &[1, 2, 3]), Ok(()));
        }
        assert_eq!(hub.hand(1, 0, &[1]), Err(HandError::Full));
        assert_eq!(hub.hand(2, 0, &[1]), Err(HandError::NoWorker));
        assert_eq!(
            hub.hand(0, 0, &[0; HANDED_BYTES + 1]),
            Err(HandError::TooBig)
        );
        let h = hub.take(1).unwrap();
        assert_eq!((h.sub, h.packet()), (0, &[1u8, 2, 3][..]));
        assert!(hub.take(0).is_none());
    }
}
