//! Per-batch statistics, kept in plain integers on the worker and added to the worker's
//! shared-memory counter block once per batch (a handful of stores instead of one per packet).

use contract::shm::{DropReason, WorkerCounters};

/// What the engine did since the last flush.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Datagrams handed to control over the slow path.
    pub slow_path: u64,
    /// Indexed by `DropReason as usize`.
    pub drops: [u64; DropReason::COUNT],
}

impl Stats {
    #[inline]
    pub fn rx(&mut self, bytes: usize) {
        self.rx_packets += 1;
        self.rx_bytes += bytes as u64;
    }

    #[inline]
    pub fn tx(&mut self, bytes: usize) {
        self.tx_packets += 1;
        self.tx_bytes += bytes as u64;
    }

    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Add `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        self.rx_packets += other.rx_packets;
        self.rx_bytes += other.rx_bytes;
        self.tx_packets += other.tx_packets;
        self.tx_bytes += other.tx_bytes;
        self.slow_path += other.slow_path;
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a += b;
        }
    }

    /// Add these statistics to a shared-memory counter block (one writer: this worker).
    pub fn flush_to(&self, c: &WorkerCounters) {
        if self.rx_packets != 0 {
            c.add_rx_n(self.rx_packets, self.rx_bytes);
        }
        if self.tx_packets != 0 {
            c.add_tx(self.tx_packets, self.tx_bytes);
        }
        for _ in 0..self.slow_path {
            c.slow_path_up();
        }
        for r in DropReason::ALL {
            let n = self.drops[r as usize];
            if n != 0 {
                c.drop_n(r, n);
            }
        }
    }
}
