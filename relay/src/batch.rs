//! Fixed-capacity transmit queues: the hand-off between the engine (which fills them) and
//! the I/O backends (which send them).
//!
//! Owns: a contiguous byte arena plus per-datagram metadata (destination, offset, length).
//! Datagrams are laid out back to back (each starting at a 64-byte boundary is *not* required),
//! so a run of equal-sized datagrams to one destination can leave as one UDP GSO train without
//! a copy. May not touch: sockets, the clock. Never allocates after construction.

use std::net::SocketAddr;

pub use contract::wire::MAX_DATAGRAM;

/// One queued datagram.
#[derive(Debug, Clone, Copy)]
pub struct TxMeta {
    /// Where it goes.
    pub dst: SocketAddr,
    /// Byte offset in the arena.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

/// A batch of datagrams waiting to be sent.
pub struct TxQueue {
    arena: Box<[u8]>,
    meta: Vec<TxMeta>,
    used: usize,
    capacity: usize,
    /// Largest datagram one push takes (the scratch slice `push_with` hands out).
    slot: usize,
}

impl TxQueue {
    /// A queue holding up to `capacity` datagrams of up to [`MAX_DATAGRAM`] bytes each.
    pub fn with_capacity(capacity: usize) -> TxQueue {
        TxQueue::new(capacity, MAX_DATAGRAM)
    }

    /// A queue holding up to `capacity` datagrams of up to `slot` bytes each (a backend's
    /// queue: `slot` is its receive buffer size, so a received datagram fits when forwarded).
    pub fn new(capacity: usize, slot: usize) -> TxQueue {
        TxQueue {
            arena: vec![0u8; capacity * slot].into_boxed_slice(),
            meta: Vec::with_capacity(capacity),
            used: 0,
            capacity,
            slot,
        }
    }

    /// The largest datagram one push takes.
    pub fn slot_size(&self) -> usize {
        self.slot
    }

    /// How many datagrams it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many datagrams are queued.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// True when no further datagram fits.
    pub fn is_full(&self) -> bool {
        self.meta.len() == self.capacity || self.arena.len() - self.used < self.slot
    }

    /// Append a datagram for `dst`. `fill` gets a [`slot_size`](Self::slot_size)-byte scratch
    /// slice at the end of the arena, writes the datagram at its start and returns its length,
    /// or `None` to abandon it (nothing is queued then). Returns false when the queue is full
    /// or `fill` gave up.
    #[inline]
    pub fn push_with(
        &mut self,
        dst: SocketAddr,
        fill: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> bool {
        if self.is_full() {
            return false;
        }
        let start = self.used;
        let slot = &mut self.arena[start..start + self.slot];
        match fill(slot) {
            Some(len) if len <= self.slot => {
                self.meta.push(TxMeta {
                    dst,
                    offset: start as u32,
                    len: len as u32,
                });
                self.used += len;
                true
            }
            _ => false,
        }
    }

    /// Append a copy of `data` for `dst`.
    pub fn push(&mut self, dst: SocketAddr, data: &[u8]) -> bool {
        if data.len() > self.slot {
            return false;
        }
        self.push_with(dst, |slot| {
            slot[..data.len()].copy_from_slice(data);
            Some(data.len())
        })
    }

    /// Queued datagrams' metadata, in order.
    pub fn metas(&self) -> &[TxMeta] {
        &self.meta
    }

    /// The bytes of datagram `i`.
    pub fn datagram(&self, i: usize) -> &[u8] {
        let m = &self.meta[i];
        &self.arena[m.offset as usize..(m.offset + m.len) as usize]
    }

    /// The whole arena (backends take contiguous runs of datagrams from it for GSO).
    pub fn arena(&self) -> &[u8] {
        &self.arena[..self.used]
    }

    /// The queued datagrams' bytes, writable (the engine writes deferred SRTP tags into
    /// datagrams it has already queued).
    pub fn arena_mut(&mut self) -> &mut [u8] {
        &mut self.arena[..self.used]
    }

    /// Forget every queued datagram.
    pub fn clear(&mut self) {
        self.meta.clear();
        self.used = 0;
    }

    /// Keep only the datagrams for which `keep(meta, bytes)` is true, in order (their bytes
    /// stay where they are; the arena is reused at the next [`clear`](Self::clear)).
    pub fn retain(&mut self, mut keep: impl FnMut(&TxMeta, &[u8]) -> bool) {
        let arena = &self.arena;
        self.meta
            .retain(|m| keep(m, &arena[m.offset as usize..(m.offset + m.len) as usize]));
        if self.meta.is_empty() {
            self.used = 0;
        }
    }

    /// Forget the first `n` datagrams (a partial send), keeping the rest queued in order.
    pub fn consume(&mut self, n: usize) {
        if n >= self.meta.len() {
            self.clear();
            return;
        }
        let shift = self.meta[n].offset as usize;
        self.arena.copy_within(shift..self.used, 0);
        self.used -= shift;
        self.meta.drain(..n);
        for m in &mut self.meta {
            m.offset -= shift as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_consume() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "[::1]:2".parse().unwrap();
        let mut q = TxQueue::with_capacity(4);
        assert!(q.push(a, b"one"));
        assert!(q.push(b, b"three"));
        assert!(!q.push_with(a, |_| None));
        assert!(q.push(a, b"xy"));
        assert_eq!(q.len(), 3);
        assert_eq!(q.arena(), b"onethreexy");
        q.consume(1);
        assert_eq!(q.datagram(0), b"three");
        assert_eq!(q.metas()[1].dst, a);
        assert_eq!(q.datagram(1), b"xy");
        assert!(q.push(a, b"4"));
        assert!(q.push(a, b"5"));
        assert!(q.is_full());
        assert!(!q.push(a, b"6"));
        q.clear();
        assert!(q.is_empty());
    }
}
