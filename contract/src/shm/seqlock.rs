//! The per-slot sequence lock: one writer, any number of readers, readers never block the writer.
//!
//! Protocol (H.-J. Boehm, "Can seqlocks get along with programming language memory models?",
//! MSPC 2012, the fence-based variant):
//! - writer: `seq` ← `s + 1` (odd, Relaxed); `fence(Release)`; store every payload word
//!   (Relaxed); `seq` ← `s + 2` (even, Release).
//! - reader: `s1` ← `seq` (Acquire); if odd, retry; load the words (Relaxed); `fence(Acquire)`;
//!   `s2` ← `seq` (Relaxed); if `s1 != s2`, retry.
//!
//! Every payload word is an `AtomicU64`, so a racing read is a defined (if stale) value, never
//! undefined behaviour; the sequence check throws away any mix of old and new words.

use core::sync::atomic::{fence, AtomicU64, Ordering};

/// How many times a reader retries a slot the writer keeps locked before reporting
/// [`super::SlotError::Busy`]. The first [`SPIN_LIMIT`] retries spin, the rest yield the CPU.
#[cfg(not(fuzzing))]
pub(crate) const RETRY_LIMIT: u32 = 100_000;
/// Fuzz builds (`--cfg fuzzing`, set by cargo-fuzz): the same spin-then-yield path, but a slot
/// locked in the input is reported busy after a few yields instead of 100,000 of them (tens of
/// milliseconds per locked slot, which would dominate every fuzz input that patches one).
#[cfg(fuzzing)]
pub(crate) const RETRY_LIMIT: u32 = SPIN_LIMIT + 8;
const SPIN_LIMIT: u32 = 64;

/// A 64-byte-aligned slot: a sequence word followed by `N` payload words.
#[repr(C, align(64))]
pub(crate) struct Slot<const N: usize> {
    seq: AtomicU64,
    words: [AtomicU64; N],
}

/// The outcome of one consistent read.
pub(crate) enum Read<const N: usize> {
    /// Word 0 (the record id) is 0: the slot is free. Only word 0 was copied.
    Empty,
    Full([u64; N]),
}

impl<const N: usize> Slot<N> {
    /// Copy a consistent snapshot of the payload. `retries` is incremented once per torn or
    /// in-progress observation. `Err(())` means the writer held the slot for the whole budget.
    pub(crate) fn read(&self, retries: &mut u64) -> Result<Read<N>, ()> {
        let mut attempt = 0u32;
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let first = self.words[0].load(Ordering::Relaxed);
                let out = if first == 0 {
                    None
                } else {
                    let mut buf = [0u64; N];
                    buf[0] = first;
                    for (dst, src) in buf.iter_mut().zip(self.words.iter()).skip(1) {
                        *dst = src.load(Ordering::Relaxed);
                    }
                    Some(buf)
                };
                fence(Ordering::Acquire);
                let s2 = self.seq.load(Ordering::Relaxed);
                if s1 == s2 {
                    return Ok(match out {
                        None => Read::Empty,
                        Some(buf) => Read::Full(buf),
                    });
                }
            }
            *retries += 1;
            attempt += 1;
            if attempt >= RETRY_LIMIT {
                return Err(());
            }
            if attempt < SPIN_LIMIT {
                core::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Replace the payload. Only the single writer calls this (the `ShmWriter` holds `&mut`
    /// and an exclusive `flock` on the file). If the slot was left odd by a writer that died
    /// mid-write, this completes the interrupted write.
    pub(crate) fn write(&self, payload: &[u64; N]) {
        let s = self.seq.load(Ordering::Relaxed);
        // An odd `s` is a write some dead writer began: it is already "locked", keep it odd.
        let locked = s | 1;
        self.seq.store(locked, Ordering::Relaxed);
        fence(Ordering::Release);
        for (dst, &src) in self.words.iter().zip(payload.iter()) {
            dst.store(src, Ordering::Relaxed);
        }
        self.seq.store(locked.wrapping_add(1), Ordering::Release);
    }

    /// True when a writer began a write and never finished it.
    pub(crate) fn is_locked(&self) -> bool {
        self.seq.load(Ordering::Acquire) & 1 == 1
    }

    /// The current sequence value (tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot<const N: usize>() -> Slot<N> {
        Slot {
            seq: AtomicU64::new(0),
            words: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    #[test]
    fn write_then_read() {
        let s = slot::<3>();
        let mut r = 0;
        assert!(matches!(s.read(&mut r), Ok(Read::Empty)));
        s.write(&[7, 8, 9]);
        assert_eq!(s.seq(), 2);
        match s.read(&mut r) {
            Ok(Read::Full(w)) => assert_eq!(w, [7, 8, 9]),
            _ => panic!("expected a full slot"),
        }
        assert_eq!(r, 0);
    }

    #[test]
    fn locked_slot_reports_busy_and_write_repairs_it() {
        let s = slot::<2>();
        s.seq.store(5, Ordering::Relaxed);
        assert!(s.is_locked());
        let mut r = 0;
        assert!(s.read(&mut r).is_err());
        assert_eq!(r, u64::from(RETRY_LIMIT));
        s.write(&[1, 2]);
        assert!(!s.is_locked());
        assert_eq!(s.seq(), 6);
    }

    #[test]
    fn slot_sizes_are_cache_line_multiples() {
        assert_eq!(core::mem::size_of::<Slot<7>>(), 64);
        assert_eq!(core::mem::size_of::<Slot<8>>(), 128);
        assert_eq!(core::mem::align_of::<Slot<1>>(), 64);
    }
}
