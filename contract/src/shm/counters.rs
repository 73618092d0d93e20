//! Per-worker counter blocks. Each block is written by exactly one relay worker and read by
//! anyone (metrics, sluicectl). Single writer, so an increment is a Relaxed load plus a
//! Relaxed store (no lock-prefixed read-modify-write); readers see each counter as a
//! monotonically growing value, though not a consistent snapshot across counters.
//!
//! If two threads ever wrote the same block, increments could be lost (never undefined
//! behaviour): give each worker its own index.

use super::DropReason;
use core::sync::atomic::{AtomicU64, Ordering};

/// Batch-size histogram buckets: bucket `i` counts batches of `2^i ..= 2^(i+1) - 1` datagrams
/// (bucket 0 also counts empty batches; the last bucket counts everything from `2^11` up).
pub const BATCH_BUCKETS: usize = 12;
/// Processing-time histogram buckets: bucket `i` counts batches that took `2^i ..= 2^(i+1) - 1`
/// nanoseconds (bucket 0 also counts 0 ns; the last bucket counts everything from `2^31` ns ≈ 2.1 s).
pub const TIME_BUCKETS: usize = 32;

/// The power-of-two bucket of `v`, clamped to `buckets - 1`.
#[inline]
fn log2_bucket(v: u64, buckets: usize) -> usize {
    let b = if v == 0 {
        0
    } else {
        63 - v.leading_zeros() as usize
    };
    b.min(buckets - 1)
}

/// The batch-size histogram bucket for a batch of `n` datagrams.
#[inline]
pub fn batch_bucket(n: u64) -> usize {
    log2_bucket(n, BATCH_BUCKETS)
}

/// The processing-time histogram bucket for `nanos`.
#[inline]
pub fn time_bucket(nanos: u64) -> usize {
    log2_bucket(nanos, TIME_BUCKETS)
}

/// One worker's counters, in shared memory. Obtain it with
/// [`ShmReader::worker_counters`](super::ShmReader::worker_counters).
#[repr(C, align(64))]
pub struct WorkerCounters {
    heartbeat_unix_ms: AtomicU64,
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_out: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
    slow_path_up: AtomicU64,
    slow_path_down: AtomicU64,
    batches: AtomicU64,
    batch_nanos: AtomicU64,
    batch_hist: [AtomicU64; BATCH_BUCKETS],
    time_hist: [AtomicU64; TIME_BUCKETS],
    loop_turns: AtomicU64,
    stalls: AtomicU64,
}

// Offsets documented in docs/SHM.md; a change here is an ABI change.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(WorkerCounters, heartbeat_unix_ms) == 0);
    assert!(offset_of!(WorkerCounters, packets_in) == 8);
    assert!(offset_of!(WorkerCounters, bytes_out) == 32);
    assert!(offset_of!(WorkerCounters, drops) == 40);
    assert!(offset_of!(WorkerCounters, slow_path_up) == 168);
    assert!(offset_of!(WorkerCounters, batches) == 184);
    assert!(offset_of!(WorkerCounters, batch_hist) == 200);
    assert!(offset_of!(WorkerCounters, time_hist) == 296);
    assert!(offset_of!(WorkerCounters, loop_turns) == 552);
    assert!(offset_of!(WorkerCounters, stalls) == 560);
    assert!(core::mem::size_of::<WorkerCounters>() == 576);
};

/// Single-writer increment: Relaxed load + Relaxed store.
#[inline(always)]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl WorkerCounters {
    /// One datagram received.
    #[inline]
    pub fn add_rx(&self, bytes: usize) {
        bump(&self.packets_in, 1);
        bump(&self.bytes_in, bytes as u64);
    }

    /// `n` datagrams totalling `bytes` received.
    #[inline]
    pub fn add_rx_n(&self, n: u64, bytes: u64) {
        bump(&self.packets_in, n);
        bump(&self.bytes_in, bytes);
    }

    /// `n` datagrams totalling `bytes` sent.
    #[inline]
    pub fn add_tx(&self, n: u64, bytes: u64) {
        bump(&self.packets_out, n);
        bump(&self.bytes_out, bytes);
    }

    /// One datagram dropped for `reason`.
    #[inline]
    pub fn drop(&self, reason: DropReason) {
        bump(&self.drops[reason as usize], 1);
    }

    /// `n` datagrams dropped for `reason`.
    #[inline]
    pub fn drop_n(&self, reason: DropReason, n: u64) {
        bump(&self.drops[reason as usize], n);
    }

    /// One datagram handed to control over the slow path.
    #[inline]
    pub fn slow_path_up(&self) {
        bump(&self.slow_path_up, 1);
    }

    /// `n` datagrams from control sent out through the relay.
    #[inline]
    pub fn slow_path_down(&self, n: u64) {
        bump(&self.slow_path_down, n);
    }

    /// One batch of `n` datagrams processed in `nanos` nanoseconds.
    #[inline]
    pub fn record_batch(&self, n: u64, nanos: u64) {
        bump(&self.batches, 1);
        bump(&self.batch_nanos, nanos);
        bump(&self.batch_hist[batch_bucket(n)], 1);
        bump(&self.time_hist[time_bucket(nanos)], 1);
    }

    /// Add the counts of `s` (a worker's plain counts of one batch, see
    /// [`CounterSnapshot::rx`]): one store per counter that moved.
    pub fn add(&self, s: &CounterSnapshot) {
        fn add<const N: usize>(a: &[AtomicU64; N], b: &[u64; N]) {
            for (x, &y) in a.iter().zip(b) {
                if y != 0 {
                    bump(x, y);
                }
            }
        }
        for (c, v) in [
            (&self.packets_in, s.packets_in),
            (&self.bytes_in, s.bytes_in),
            (&self.packets_out, s.packets_out),
            (&self.bytes_out, s.bytes_out),
            (&self.slow_path_up, s.slow_path_up),
            (&self.slow_path_down, s.slow_path_down),
            (&self.batches, s.batches),
            (&self.batch_nanos, s.batch_nanos),
            (&self.loop_turns, s.loop_turns),
            (&self.stalls, s.stalls),
        ] {
            if v != 0 {
                bump(c, v);
            }
        }
        add(&self.drops, &s.drops);
        add(&self.batch_hist, &s.batch_hist);
        add(&self.time_hist, &s.time_hist);
    }

    /// One turn of the worker loop.
    #[inline]
    pub fn loop_turn(&self) {
        bump(&self.loop_turns, 1);
    }

    /// The stall detector fired once.
    #[inline]
    pub fn stall(&self) {
        bump(&self.stalls, 1);
    }

    /// The worker is alive at `unix_ms`.
    #[inline]
    pub fn set_heartbeat(&self, unix_ms: u64) {
        self.heartbeat_unix_ms.store(unix_ms, Ordering::Relaxed);
    }

    /// The last heartbeat (unix ms), 0 if never.
    #[inline]
    pub fn heartbeat(&self) -> u64 {
        self.heartbeat_unix_ms.load(Ordering::Relaxed)
    }

    /// A copy of every counter (each read Relaxed; not an atomic snapshot across counters).
    pub fn snapshot(&self) -> CounterSnapshot {
        let ld = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            packets_in: ld(&self.packets_in),
            bytes_in: ld(&self.bytes_in),
            packets_out: ld(&self.packets_out),
            bytes_out: ld(&self.bytes_out),
            drops: core::array::from_fn(|i| ld(&self.drops[i])),
            slow_path_up: ld(&self.slow_path_up),
            slow_path_down: ld(&self.slow_path_down),
            batches: ld(&self.batches),
            batch_nanos: ld(&self.batch_nanos),
            batch_hist: core::array::from_fn(|i| ld(&self.batch_hist[i])),
            time_hist: core::array::from_fn(|i| ld(&self.time_hist[i])),
            loop_turns: ld(&self.loop_turns),
            stalls: ld(&self.stalls),
        }
    }
}

impl core::fmt::Debug for WorkerCounters {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WorkerCounters")
            .field("heartbeat_unix_ms", &self.heartbeat())
            .field("counters", &self.snapshot())
            .finish()
    }
}

/// A plain copy of one worker's counters (or, after [`merge`](CounterSnapshot::merge), of many).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterSnapshot {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Indexed by `DropReason as usize`.
    pub drops: [u64; DropReason::COUNT],
    pub slow_path_up: u64,
    pub slow_path_down: u64,
    /// Number of batches recorded with `record_batch`.
    pub batches: u64,
    /// Sum of batch processing times in nanoseconds.
    pub batch_nanos: u64,
    /// See [`BATCH_BUCKETS`].
    pub batch_hist: [u64; BATCH_BUCKETS],
    /// See [`TIME_BUCKETS`].
    pub time_hist: [u64; TIME_BUCKETS],
    pub loop_turns: u64,
    pub stalls: u64,
}

impl CounterSnapshot {
    /// Add `other` into `self` (totals over workers). Wraps on overflow like the counters.
    pub fn merge(&mut self, other: &CounterSnapshot) {
        fn add<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
            for (x, y) in a.iter_mut().zip(b) {
                *x = x.wrapping_add(*y);
            }
        }
        self.packets_in = self.packets_in.wrapping_add(other.packets_in);
        self.bytes_in = self.bytes_in.wrapping_add(other.bytes_in);
        self.packets_out = self.packets_out.wrapping_add(other.packets_out);
        self.bytes_out = self.bytes_out.wrapping_add(other.bytes_out);
        add(&mut self.drops, &other.drops);
        self.slow_path_up = self.slow_path_up.wrapping_add(other.slow_path_up);
        self.slow_path_down = self.slow_path_down.wrapping_add(other.slow_path_down);
        self.batches = self.batches.wrapping_add(other.batches);
        self.batch_nanos = self.batch_nanos.wrapping_add(other.batch_nanos);
        add(&mut self.batch_hist, &other.batch_hist);
        add(&mut self.time_hist, &other.time_hist);
        self.loop_turns = self.loop_turns.wrapping_add(other.loop_turns);
        self.stalls = self.stalls.wrapping_add(other.stalls);
    }

    /// One datagram of `bytes` received. With [`tx`](Self::tx) and [`drop`](Self::drop):
    /// a worker counts in a plain snapshot during a batch and adds it to its shared block
    /// once ([`WorkerCounters::add`]).
    #[inline]
    pub fn rx(&mut self, bytes: usize) {
        self.packets_in += 1;
        self.bytes_in += bytes as u64;
    }

    /// One datagram of `bytes` sent.
    #[inline]
    pub fn tx(&mut self, bytes: usize) {
        self.packets_out += 1;
        self.bytes_out += bytes as u64;
    }

    /// One datagram dropped for `reason`.
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Drops over all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().fold(0u64, |a, b| a.wrapping_add(*b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(batch_bucket(0), 0);
        assert_eq!(batch_bucket(1), 0);
        assert_eq!(batch_bucket(2), 1);
        assert_eq!(batch_bucket(3), 1);
        assert_eq!(batch_bucket(64), 6);
        assert_eq!(batch_bucket(u64::MAX), BATCH_BUCKETS - 1);
        assert_eq!(time_bucket(1023), 9);
        assert_eq!(time_bucket(1024), 10);
        assert_eq!(time_bucket(u64::MAX), TIME_BUCKETS - 1);
    }

    #[test]
    fn block_size() {
        // 71 words, padded to a cache-line multiple.
        assert_eq!(core::mem::size_of::<WorkerCounters>(), 576);
    }
}
