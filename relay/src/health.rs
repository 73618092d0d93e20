//! Worker health seen from outside the workers: the relay's supervisor thread samples every
//! worker a few times a second ([`HealthMonitor::sample`]) and writes what it finds into the
//! worker's shm counter block, so it stays current while a worker is blocked.
//!
//! Per worker and sample:
//! - **turning**: the worker's loop-turn count (published by the worker once per turn) moved.
//!   Then the worker's heartbeat is written. A worker whose last turn is older than
//!   `stuck_after` (the stall threshold, at least two poll intervals, since an idle worker
//!   turns once per poll interval) is *stuck*: `stuck_since_unix_ms` is set (and the `stuck`
//!   episode counter bumped), and cleared when it turns again. Its heartbeat stops, so a
//!   heartbeat means "this worker is turning its loop".
//! - **receive queue**: one `getsockopt(SO_MEMINFO)` on the worker's socket (a dup the
//!   supervisor holds): the bytes queued (`rx_queue_bytes`, a gauge) and the kernel's drop
//!   count for the socket (added to `kernel_drops` as it grows). A worker that stops draining
//!   shows a full queue and growing kernel drops even though it publishes nothing itself.
//! - **I/O statistics**: the worker's backend counters (syscalls, receive and send errors,
//!   io_uring re-arms and ENOBUFS, GSO trains), added to the block's `io` counters as they grow;
//!   its ICE-TCP counters likewise to the block's `tcp` section.
//!
//! Owns: the supervisor's view of each worker. May not touch: the workers' threads or
//! backends. No syscall here runs on a worker thread or per packet.

use std::time::{Duration, Instant};

use contract::shm::{IoTotals, ShmReader, TcpTotals};

use crate::io::{self, IoCounters};
use crate::worker::Workers;

/// What the supervisor remembers of one worker.
#[derive(Debug, Clone)]
struct Watch {
    turns: u64,
    last_turn: Instant,
    stuck: bool,
    /// The socket's kernel drop count at the last sample (`None`: not sampled yet).
    drops_seen: Option<u32>,
    io_seen: IoTotals,
    tcp_seen: TcpTotals,
}

/// The supervisor's health sampler for a set of workers (see the module doc).
#[derive(Debug)]
pub struct HealthMonitor {
    stuck_after: Duration,
    watches: Vec<Watch>,
}

fn io_totals(c: &IoCounters) -> IoTotals {
    IoTotals {
        syscalls: c.syscalls,
        rx_errors: c.rx_errors,
        rx_rearms: c.rx_rearms,
        rx_nobufs: c.rx_nobufs,
        tx_errors: c.tx_errors,
        tx_unroutable: c.tx_unroutable,
        tx_gso_trains: c.tx_gso_trains,
    }
}

fn tcp_totals(c: &IoCounters) -> TcpTotals {
    TcpTotals {
        accepted: c.tcp_accepted,
        refused_full: c.tcp_refused_full,
        closed_garbage: c.tcp_closed_garbage,
        closed_oversized: c.tcp_closed_oversized,
        closed_timeout: c.tcp_closed_timeout,
        closed_slow_reader: c.tcp_closed_slow_reader,
        closed_peer: c.tcp_closed_peer,
        rx_frames: c.tcp_rx_frames,
        tx_frames: c.tcp_tx_frames,
        tx_dropped: c.tcp_tx_dropped,
        forwarded: c.tcp_forwarded,
        forward_full: c.tcp_forward_full,
        unroutable: c.tcp_unroutable,
    }
}

fn tcp_delta(now: &TcpTotals, seen: &TcpTotals) -> TcpTotals {
    let (n, s) = (now.to_array(), seen.to_array());
    TcpTotals::from_array(core::array::from_fn(|i| n[i].wrapping_sub(s[i])))
}

fn delta(now: &IoTotals, seen: &IoTotals) -> IoTotals {
    IoTotals {
        syscalls: now.syscalls.wrapping_sub(seen.syscalls),
        rx_errors: now.rx_errors.wrapping_sub(seen.rx_errors),
        rx_rearms: now.rx_rearms.wrapping_sub(seen.rx_rearms),
        rx_nobufs: now.rx_nobufs.wrapping_sub(seen.rx_nobufs),
        tx_errors: now.tx_errors.wrapping_sub(seen.tx_errors),
        tx_unroutable: now.tx_unroutable.wrapping_sub(seen.tx_unroutable),
        tx_gso_trains: now.tx_gso_trains.wrapping_sub(seen.tx_gso_trains),
    }
}

impl HealthMonitor {
    /// A monitor for `workers` workers started at `now`. A worker is stuck when it has not
    /// finished a loop turn for longer than `stuck_after`. `inherited_sockets`: the sockets
    /// were handed over by a previous relay (`--takeover`), whose kernel drops that relay
    /// already counted; only drops after the first sample are added then.
    pub fn new(
        workers: usize,
        stuck_after: Duration,
        now: Instant,
        inherited_sockets: bool,
    ) -> HealthMonitor {
        HealthMonitor {
            stuck_after,
            watches: vec![
                Watch {
                    turns: 0,
                    last_turn: now,
                    stuck: false,
                    drops_seen: (!inherited_sockets).then_some(0),
                    io_seen: IoTotals::default(),
                    tcp_seen: TcpTotals::default(),
                };
                workers
            ],
        }
    }

    /// The stuck threshold.
    pub fn stuck_after(&self) -> Duration {
        self.stuck_after
    }

    /// Sample every worker at `now` (`unix_ms` the same instant on the wall clock) and write
    /// heartbeats, receive-queue depth, kernel drops, stuck state and I/O statistics into
    /// `shm` (workers beyond its counter blocks are only watched). Returns true when every
    /// worker is turning its loop.
    pub fn sample(
        &mut self,
        workers: &Workers,
        shm: &ShmReader,
        now: Instant,
        unix_ms: u64,
    ) -> bool {
        let mut all_turning = true;
        for (i, w) in self.watches.iter_mut().enumerate() {
            let Some(st) = workers.stats().get(i) else {
                continue;
            };
            let snap = st.snapshot();
            let counters = shm.worker_counters(i);
            if snap.turns != w.turns {
                w.turns = snap.turns;
                w.last_turn = now;
                shm.heartbeat(i, unix_ms);
                if w.stuck {
                    w.stuck = false;
                    tracing::info!(worker = i, "worker turns its loop again");
                    if let Some(c) = counters {
                        c.set_stuck_since(0);
                    }
                }
            } else {
                let idle = now.saturating_duration_since(w.last_turn);
                if idle > self.stuck_after && !w.stuck {
                    w.stuck = true;
                    tracing::warn!(
                        worker = i,
                        since_ms = idle.as_millis() as u64,
                        "worker stuck: no loop turn finished"
                    );
                    if let Some(c) = counters {
                        c.set_stuck_since(unix_ms.saturating_sub(idle.as_millis() as u64).max(1));
                    }
                }
            }
            all_turning &= !w.stuck;
            let Some(c) = counters else {
                continue;
            };
            if let Some(sock) = workers.sockets().get(i) {
                match io::socket_meminfo(sock) {
                    Ok(m) => {
                        c.set_rx_queue_bytes(u64::from(m.rx_queue_bytes));
                        if let Some(seen) = w.drops_seen {
                            let d = m.drops.wrapping_sub(seen);
                            if d != 0 {
                                c.add_kernel_drops(u64::from(d));
                            }
                        }
                        w.drops_seen = Some(m.drops);
                    }
                    Err(e) => tracing::debug!(worker = i, error = %e, "SO_MEMINFO"),
                }
            }
            let io_now = io_totals(&snap);
            c.add_io(&delta(&io_now, &w.io_seen));
            w.io_seen = io_now;
            let tcp_now = tcp_totals(&snap);
            c.add_tcp(&tcp_delta(&tcp_now, &w.tcp_seen));
            w.tcp_seen = tcp_now;
        }
        all_turning
    }
}
