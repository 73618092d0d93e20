//! Publishing a worker's counters ([`crate::io::IoCounters`]) once per loop turn.

use crate::io::slowpath::SlowPathClient;
use crate::io::{IoCounters, SharedCounters};

/// Publish a worker's counters: its backend's `c`, with its slow-path client's, datagrams for
/// control dropped because there is no slow path, and its loop's turns and stalls added.
pub(super) fn publish(
    s: &SharedCounters,
    c: &IoCounters,
    slow: Option<&SlowPathClient>,
    slow_dropped_local: u64,
    turns: u64,
    stalls: u64,
) {
    let sc = slow.map(|c| c.counters()).unwrap_or_default();
    s.store(&IoCounters {
        turns,
        stalls,
        slow_up_sent: sc.up_sent,
        slow_up_dropped: sc.up_dropped + slow_dropped_local,
        slow_down_sent: sc.down_sent,
        slow_down_dropped: sc.down_dropped,
        slow_connects: sc.connects,
        ..*c
    });
}
