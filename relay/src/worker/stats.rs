//! A worker's own counters (its backend's, its loop's and its slow-path client's), published
//! once per loop turn for the process that runs the workers. The forwarding engine's counters
//! go to the worker's block in shared memory instead (`engine::Stats`).
//!
//! One list of names makes both forms: [`WorkerStats`] (atomics, written only by the worker's
//! thread) and [`StatsSnapshot`] (a plain copy).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::io::slowpath::SlowPathClient;
use crate::io::IoCounters;

macro_rules! worker_counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counters of one worker, each written only by that worker (published once per turn).
        #[derive(Debug, Default)]
        #[repr(align(64))]
        pub struct WorkerStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A plain copy of [`WorkerStats`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl WorkerStats {
            /// Read every counter (relaxed; each is monotonic).
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }

            /// Publish `s` (relaxed stores; only the worker's thread writes).
            fn store(&self, s: &StatsSnapshot) {
                $(self.$name.store(s.$name, Ordering::Relaxed);)*
            }
        }

        impl std::ops::Add for StatsSnapshot {
            type Output = StatsSnapshot;
            fn add(self, o: StatsSnapshot) -> StatsSnapshot {
                StatsSnapshot {
                    $($name: self.$name + o.$name,)*
                }
            }
        }
    };
}

worker_counters! {
    /// Datagrams handed to the handler.
    rx_packets,
    rx_bytes,
    /// Datagrams larger than the receive buffer (dropped).
    rx_truncated,
    rx_errors,
    /// io_uring: times the multishot receive was re-armed.
    rx_rearms,
    /// io_uring: the provided-buffer ring ran dry (back-pressure, not loss).
    rx_nobufs,
    /// Datagrams the kernel accepted for sending.
    tx_packets,
    tx_bytes,
    tx_errors,
    /// An IPv6 destination on an IPv4 socket.
    tx_unroutable,
    /// GSO trains (sends of more than one segment).
    tx_gso_trains,
    /// Syscalls made by the backend.
    syscalls,
    /// Loop turns.
    turns,
    /// Turns longer than the stall threshold.
    stalls,
    /// Datagrams handed to control.
    slow_up_sent,
    /// Datagrams for control dropped (control absent or its socket full, or no slow path).
    slow_up_dropped,
    /// Replies from control queued for their peers.
    slow_down_sent,
    /// Replies from control that could not be queued (bad message, or dropped).
    slow_down_dropped,
    /// Successful (re)connections to control.
    slow_connects,
}

/// Publish a worker's counters: its backend's `c`, its slow-path client's, datagrams for
/// control dropped because there is no slow path, and its loop's turns and stalls.
pub(super) fn publish(
    s: &WorkerStats,
    c: &IoCounters,
    slow: Option<&SlowPathClient>,
    slow_dropped_local: u64,
    turns: u64,
    stalls: u64,
) {
    let sc = slow.map(|c| c.counters()).unwrap_or_default();
    s.store(&StatsSnapshot {
        rx_packets: c.rx_packets,
        rx_bytes: c.rx_bytes,
        rx_truncated: c.rx_truncated,
        rx_errors: c.rx_errors,
        rx_rearms: c.rx_rearms,
        rx_nobufs: c.rx_nobufs,
        tx_packets: c.tx_packets,
        tx_bytes: c.tx_bytes,
        tx_errors: c.tx_errors,
        tx_unroutable: c.tx_unroutable,
        tx_gso_trains: c.tx_gso_trains,
        syscalls: c.syscalls,
        turns,
        stalls,
        slow_up_sent: sc.up_sent,
        slow_up_dropped: sc.up_dropped + slow_dropped_local,
        slow_down_sent: sc.down_sent,
        slow_down_dropped: sc.down_dropped,
        slow_connects: sc.connects,
    });
}
