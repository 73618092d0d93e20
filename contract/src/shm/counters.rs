//! Per-worker counter blocks. Each block is written by exactly one relay worker and read by
//! anyone (metrics, sluicectl). Single writer, so an increment is a Relaxed load plus a
//! Relaxed store (no lock-prefixed read-modify-write); readers see each counter as a
//! monotonically growing value, though not a consistent snapshot across counters.
//!
//! If two threads ever wrote the same counter, increments could be lost (never undefined
//! behaviour): give each worker its own index. The heartbeat and the ABI 5 health and I/O
//! fields (`rx_queue_bytes`, `kernel_drops`, `stuck_since_unix_ms`, `stuck`, `io`) have a
//! different single writer, the relay's supervisor thread, which samples them from outside
//! the worker (so they stay current while a worker is blocked).

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
    // ABI 5: written by the relay's supervisor thread, not by the worker (one writer each).
    rx_queue_bytes: AtomicU64,
    kernel_drops: AtomicU64,
    stuck_since_unix_ms: AtomicU64,
    stuck: AtomicU64,
    io: [AtomicU64; IO_COUNTERS],
    // ABI 6: loss recovery (RFC 4585 feedback handled by the relay), written by the worker;
    // ABI 7 grew it from 16 to 32 counters, ABI 8 to 48.
    feedback: [AtomicU64; Feedback::COUNT],
    // ABI 7: ICE-TCP, written by the relay's supervisor from the worker's counters. Always
    // the last section of the block: its offset is COUNTER_TCP_OFFSET.
    tcp: [AtomicU64; TCP_COUNTERS],
}

/// Byte offset of the ICE-TCP section ([`TcpTotals`]) in a counter block: right after the
/// feedback counters, at the end of the block.
pub const COUNTER_TCP_OFFSET: usize = core::mem::offset_of!(WorkerCounters, tcp);
/// Words of the ICE-TCP section ([`TcpTotals::NAMES`] are the first of them; the rest are
/// reserved and stay 0).
pub const TCP_COUNTERS: usize = 16;
/// How many of the ICE-TCP section's words carry a counter.
pub const TCP_COUNTERS_USED: usize = 13;

/// A worker's ICE-TCP counters as published in its counter block (ABI 7; written by the
/// relay's supervisor from the worker's own counters; each a running total). Worker 0 holds
/// every connection; the other workers count only what they hand to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpTotals {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed at once: `relay.tcp.max_connections` were open.
    pub refused_full: u64,
    /// Closed: the first frame was no STUN binding request.
    pub closed_garbage: u64,
    /// Closed: a frame longer than `relay.max_datagram_bytes` was announced.
    pub closed_oversized: u64,
    /// Closed: no STUN binding answered within `relay.tcp.handshake_timeout_ms`.
    pub closed_timeout: u64,
    /// Closed: the peer left the relay's frames unread (send buffer full too long).
    pub closed_slow_reader: u64,
    /// Closed by the peer (end of stream or a socket error).
    pub closed_peer: u64,
    /// RFC 4571 frames received and handed to the engine.
    pub rx_frames: u64,
    /// Frames written to connections.
    pub tx_frames: u64,
    /// Frames dropped: the connection's send buffer was full.
    pub tx_dropped: u64,
    /// Datagrams for TCP peers handed to worker 0 by this worker.
    pub forwarded: u64,
    /// Datagrams for TCP peers dropped: the hand-over queue to worker 0 was full.
    pub forward_full: u64,
    /// Datagrams for a TCP peer no open connection holds: dropped.
    pub unroutable: u64,
}

impl TcpTotals {
    /// Names (for metrics) in block order.
    pub const NAMES: [&'static str; TCP_COUNTERS_USED] = [
        "accepted",
        "refused_full",
        "closed_garbage",
        "closed_oversized",
        "closed_timeout",
        "closed_slow_reader",
        "closed_peer",
        "rx_frames",
        "tx_frames",
        "tx_dropped",
        "forwarded",
        "forward_full",
        "unroutable",
    ];

    /// The values in block order ([`TcpTotals::NAMES`]).
    pub fn to_array(&self) -> [u64; TCP_COUNTERS_USED] {
        [
            self.accepted,
            self.refused_full,
            self.closed_garbage,
            self.closed_oversized,
            self.closed_timeout,
            self.closed_slow_reader,
            self.closed_peer,
            self.rx_frames,
            self.tx_frames,
            self.tx_dropped,
            self.forwarded,
            self.forward_full,
            self.unroutable,
        ]
    }

    /// From values in block order.
    pub fn from_array(a: [u64; TCP_COUNTERS_USED]) -> TcpTotals {
        TcpTotals {
            accepted: a[0],
            refused_full: a[1],
            closed_garbage: a[2],
            closed_oversized: a[3],
            closed_timeout: a[4],
            closed_slow_reader: a[5],
            closed_peer: a[6],
            rx_frames: a[7],
            tx_frames: a[8],
            tx_dropped: a[9],
            forwarded: a[10],
            forward_full: a[11],
            unroutable: a[12],
        }
    }
}

/// Loss-recovery and feedback events a worker counts (ABI 6, appended to the block): each a
/// running total, indexed by `Feedback as usize`. Drops on the feedback path are counted here
/// by reason as well, beside the datagram drop reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Feedback {
    /// Sequence numbers subscribers reported lost in generic NACKs (RFC 4585 §6.2.1).
    NackReceived = 0,
    /// Lost packets resent from the retransmission cache as the original packet.
    Retransmitted = 1,
    /// Lost packets resent from the cache as RTX (RFC 4588) on the subscriber's RTX stream.
    RtxSent = 2,
    /// Sequence numbers the relay asked a publisher for in NACKs it wrote itself (gaps it saw
    /// in the publisher's stream, and subscriber losses the cache did not hold).
    NackUpstream = 3,
    /// NACKed sequence numbers the cache did not hold (never received, evicted or too old).
    CacheMiss = 4,
    /// PLIs not forwarded because the same publisher stream was sent one within the
    /// aggregation interval (`relay.pli_interval_ms`).
    PliAggregated = 5,
    /// NACKed sequence numbers not resent because the same packet went to the same
    /// subscriber less than one round trip ago.
    ResendSuppressed = 6,
    /// Feedback handed to the worker that receives the publisher (cross-worker ring).
    HandedOver = 7,
    /// Feedback that could not be handed over: the owner's ring was full.
    HandOverFull = 8,
    /// Feedback dropped because no publisher stream could be found for it.
    Unroutable = 9,
    /// Retransmission-cache streams refused: the worker's cache budget
    /// (`relay.nack_cache_streams`) was used up, so that stream is not cached.
    CacheFull = 10,
    /// Sequence numbers a publisher was asked for that never arrived within the retry budget.
    UpstreamGiveUp = 11,
    /// Copies served from the cache whose resend was refused downstream (queue full,
    /// protect failed); also counted under the datagram drop reason.
    ResendFailed = 12,
    /// Keyframe requests sent to a publisher as the other kind: a PLI as a FIR to a publisher
    /// that negotiated only `ccm fir`, a FIR as a PLI to one that negotiated only `nack pli`.
    KeyframeTranslated = 13,
    /// Sender reports the relay wrote itself for an output stream (RFC 3550 §6.4.1, ABI 7).
    SrSent = 14,
    /// Publisher sender reports not forwarded to subscribers: the relay's own reports replace
    /// them (their packet and octet counts would contradict the output streams', ABI 7).
    SrReplaced = 15,
    /// Receiver reports the relay wrote itself to a publisher (RFC 3550 §6.4.2, ABI 7).
    RrSent = 16,
    /// Keyframe requests sent to a publisher because a subscriber joined one of its video
    /// streams (ABI 7; aggregated like any other request).
    PliOnJoin = 17,
    /// Publisher RTX packets (RFC 4588) unwrapped into their original stream (ABI 7).
    RtxUnwrapped = 18,
    /// Publisher RTX packets dropped: padding-only probes (bandwidth probing, no original
    /// packet inside), and packets of a stream whose original payload type is not known yet
    /// (ABI 7).
    RtxDropped = 19,
    /// Packets of a simulcast layer not sent to a subscriber (ABI 7): not its current layer,
    /// or older than its last layer switch (docs/ENGINE.md "Simulcast").
    LayerSkipped = 20,
    /// Simulcast layer switches made for subscribers (ABI 7), and SVC decode target switches.
    LayerSwitch = 21,
    /// Key-frame requests (PLI) the relay sent a publisher so that a subscriber can switch
    /// to one of its layers (ABI 7), or because a chain of an SVC stream a subscriber needs
    /// broke.
    LayerKeyframeRequest = 22,
    /// Transport-cc feedback messages (RTPFB FMT 15) the relay wrote to publishers whose
    /// packets carry the transport-wide sequence extension (ABI 7; docs/ENGINE.md "Bandwidth
    /// estimation").
    TwccSent = 23,
    /// REMB messages (PSFB FMT 15, draft-alvestrand-rmcat-remb) the relay wrote to
    /// publishers that take REMB and not transport-cc (ABI 7; docs/ENGINE.md "REMB to
    /// publishers").
    RembSent = 24,
    /// Subscribers' REMBs not passed on to a publisher the relay sends its own REMB: they cap
    /// the relay's instead (ABI 7; docs/ENGINE.md "REMB to publishers").
    RembFolded = 25,
    /// Packets of an SVC stream (docs/ENGINE.md "SVC") not sent to a subscriber: their frame
    /// is not part of the decode target it receives (its decode target indication is "not
    /// present"), or no decode target can start yet (waiting for a switch point).
    SvcNotPresent = 26,
    /// Packets of an SVC stream not sent: their frame references a frame that was not sent
    /// to the subscriber (dropped, or lost before the relay).
    SvcUnreferenced = 27,
    /// Packets of an SVC stream not sent: no Dependency Descriptor, one that does not parse,
    /// or none with a template structure known yet (the subscriber waits for a key frame).
    SvcNoDescriptor = 28,
    /// Packets of an SVC stream not sent: older than the subscriber's last re-numbering or
    /// than the window of frames the relay remembers.
    SvcLate = 29,
    /// Bandwidth probe clusters the relay started towards subscribers (ABI 8; docs/ENGINE.md
    /// "Probing").
    ProbeCluster = 30,
    /// Padding-only probe packets sent in those clusters (ABI 8).
    ProbePacket = 31,
    /// Bytes of those probe packets on the wire (ABI 8).
    ProbeBytes = 32,
    /// Clusters whose acknowledged rate raised a subscriber's estimate (ABI 8).
    ProbeSuccess = 33,
    /// Lost packets not resent: the subscriber's output switched to another simulcast layer
    /// after them, from a key frame it was sent (its decoder has no use for them; appended
    /// within ABI 8, 0 from an older relay).
    ResendStale = 34,
    /// Packets of a subscriber's current simulcast layer or SVC spatial layer not sent because
    /// its downlink estimate fell under half their rate while the switch down waits for the
    /// lower layer's key frame: on that link they would only queue ahead of it (appended
    /// within ABI 8, 0 from an older relay; docs/ENGINE.md "Simulcast", "SVC").
    LayerShed = 35,
}

impl Feedback {
    pub const COUNT: usize = 48;
    /// Every counter in index order (indices 36..48 are reserved and stay 0).
    pub const ALL: [Feedback; 36] = [
        Feedback::NackReceived,
        Feedback::Retransmitted,
        Feedback::RtxSent,
        Feedback::NackUpstream,
        Feedback::CacheMiss,
        Feedback::PliAggregated,
        Feedback::ResendSuppressed,
        Feedback::HandedOver,
        Feedback::HandOverFull,
        Feedback::Unroutable,
        Feedback::CacheFull,
        Feedback::UpstreamGiveUp,
        Feedback::ResendFailed,
        Feedback::KeyframeTranslated,
        Feedback::SrSent,
        Feedback::SrReplaced,
        Feedback::RrSent,
        Feedback::PliOnJoin,
        Feedback::RtxUnwrapped,
        Feedback::RtxDropped,
        Feedback::LayerSkipped,
        Feedback::LayerSwitch,
        Feedback::LayerKeyframeRequest,
        Feedback::TwccSent,
        Feedback::RembSent,
        Feedback::RembFolded,
        Feedback::SvcNotPresent,
        Feedback::SvcUnreferenced,
        Feedback::SvcNoDescriptor,
        Feedback::SvcLate,
        Feedback::ProbeCluster,
        Feedback::ProbePacket,
        Feedback::ProbeBytes,
        Feedback::ProbeSuccess,
        Feedback::ResendStale,
        Feedback::LayerShed,
    ];
    /// Prometheus label value.
    pub const fn name(self) -> &'static str {
        match self {
            Feedback::NackReceived => "nack_received",
            Feedback::Retransmitted => "retransmitted",
            Feedback::RtxSent => "rtx_sent",
            Feedback::NackUpstream => "nack_upstream",
            Feedback::CacheMiss => "cache_miss",
            Feedback::PliAggregated => "pli_aggregated",
            Feedback::ResendSuppressed => "resend_suppressed",
            Feedback::HandedOver => "handed_over",
            Feedback::HandOverFull => "hand_over_full",
            Feedback::Unroutable => "unroutable",
            Feedback::CacheFull => "cache_full",
            Feedback::UpstreamGiveUp => "upstream_give_up",
            Feedback::ResendFailed => "resend_failed",
            Feedback::KeyframeTranslated => "keyframe_translated",
            Feedback::SrSent => "sr_sent",
            Feedback::SrReplaced => "sr_replaced",
            Feedback::RrSent => "rr_sent",
            Feedback::PliOnJoin => "pli_on_join",
            Feedback::RtxUnwrapped => "rtx_unwrapped",
            Feedback::RtxDropped => "rtx_dropped",
            Feedback::LayerSkipped => "layer_skipped",
            Feedback::LayerSwitch => "layer_switch",
            Feedback::LayerKeyframeRequest => "layer_keyframe_request",
            Feedback::TwccSent => "twcc_sent",
            Feedback::RembSent => "remb_sent",
            Feedback::RembFolded => "remb_folded",
            Feedback::SvcNotPresent => "svc_not_present",
            Feedback::SvcUnreferenced => "svc_unreferenced",
            Feedback::SvcNoDescriptor => "svc_no_descriptor",
            Feedback::SvcLate => "svc_late",
            Feedback::ProbeCluster => "probe_cluster",
            Feedback::ProbePacket => "probe_packet",
            Feedback::ProbeBytes => "probe_bytes",
            Feedback::ProbeSuccess => "probe_success",
            Feedback::ResendStale => "resend_stale",
            Feedback::LayerShed => "layer_shed",
        }
    }
}

/// How many of the worker's I/O counters the block carries ([`IoTotals`]).
pub const IO_COUNTERS: usize = 7;

/// A worker's I/O statistics as published in its counter block (written by the relay's
/// supervisor from the worker's backend counters; each a running total).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoTotals {
    /// Syscalls the backend made (io_uring_enter, recvmmsg, sendmmsg, epoll_wait).
    pub syscalls: u64,
    /// Receives that failed or carried no usable source address.
    pub rx_errors: u64,
    /// io_uring: multishot receive re-armed.
    pub rx_rearms: u64,
    /// io_uring: the provided-buffer ring ran dry (back-pressure, not loss).
    pub rx_nobufs: u64,
    /// Datagrams lost to send errors.
    pub tx_errors: u64,
    /// Datagrams that could not be addressed (IPv6 destination on an IPv4 socket).
    pub tx_unroutable: u64,
    /// UDP GSO trains sent (sends of more than one segment).
    pub tx_gso_trains: u64,
}

impl IoTotals {
    /// Names (for metrics labels) in block order.
    pub const NAMES: [&'static str; IO_COUNTERS] = [
        "syscalls",
        "rx_errors",
        "rx_rearms",
        "rx_nobufs",
        "tx_errors",
        "tx_unroutable",
        "tx_gso_trains",
    ];

    /// The values in block order ([`IoTotals::NAMES`]).
    pub fn to_array(&self) -> [u64; IO_COUNTERS] {
        [
            self.syscalls,
            self.rx_errors,
            self.rx_rearms,
            self.rx_nobufs,
            self.tx_errors,
            self.tx_unroutable,
            self.tx_gso_trains,
        ]
    }

    fn from_array(a: [u64; IO_COUNTERS]) -> IoTotals {
        IoTotals {
            syscalls: a[0],
            rx_errors: a[1],
            rx_rearms: a[2],
            rx_nobufs: a[3],
            tx_errors: a[4],
            tx_unroutable: a[5],
            tx_gso_trains: a[6],
        }
    }
}

// Offsets documented in docs/SHM.md; a change here is an ABI change.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(WorkerCounters, heartbeat_unix_ms) == 0);
    assert!(offset_of!(WorkerCounters, packets_in) == 8);
    assert!(offset_of!(WorkerCounters, bytes_out) == 32);
    assert!(offset_of!(WorkerCounters, drops) == 40);
    assert!(offset_of!(WorkerCounters, slow_path_up) == 192);
    assert!(offset_of!(WorkerCounters, batches) == 208);
    assert!(offset_of!(WorkerCounters, batch_hist) == 224);
    assert!(offset_of!(WorkerCounters, time_hist) == 320);
    assert!(offset_of!(WorkerCounters, loop_turns) == 576);
    assert!(offset_of!(WorkerCounters, stalls) == 584);
    assert!(offset_of!(WorkerCounters, rx_queue_bytes) == 592);
    assert!(offset_of!(WorkerCounters, kernel_drops) == 600);
    assert!(offset_of!(WorkerCounters, stuck_since_unix_ms) == 608);
    assert!(offset_of!(WorkerCounters, stuck) == 616);
    assert!(offset_of!(WorkerCounters, io) == 624);
    assert!(offset_of!(WorkerCounters, feedback) == 680);
    assert!(offset_of!(WorkerCounters, tcp) == COUNTER_TCP_OFFSET);
    assert!(COUNTER_TCP_OFFSET == offset_of!(WorkerCounters, feedback) + 8 * Feedback::COUNT);
    assert!(TCP_COUNTERS_USED <= TCP_COUNTERS);
    assert!(
        core::mem::size_of::<WorkerCounters>()
            == (COUNTER_TCP_OFFSET + 8 * TCP_COUNTERS).next_multiple_of(64)
    );
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
        add(&self.feedback, &s.feedback);
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

    /// Supervisor: bytes of kernel memory the worker's socket receive queue holds now
    /// (`SK_MEMINFO_RMEM_ALLOC`, compared by the kernel against `SO_RCVBUF`). A gauge.
    #[inline]
    pub fn set_rx_queue_bytes(&self, bytes: u64) {
        self.rx_queue_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Supervisor: `n` more datagrams the kernel dropped at the worker's socket (receive
    /// queue full: `SK_MEMINFO_DROPS`).
    #[inline]
    pub fn add_kernel_drops(&self, n: u64) {
        bump(&self.kernel_drops, n);
    }

    /// Supervisor: the worker has not finished a loop turn since `unix_ms` (longer than the
    /// stall threshold); 0 = it is turning. Setting a non-zero time after 0 also counts one
    /// episode in `stuck`.
    #[inline]
    pub fn set_stuck_since(&self, unix_ms: u64) {
        if unix_ms != 0 && self.stuck_since_unix_ms.load(Ordering::Relaxed) == 0 {
            bump(&self.stuck, 1);
        }
        self.stuck_since_unix_ms.store(unix_ms, Ordering::Relaxed);
    }

    /// Supervisor: add the worker's I/O statistics that moved since the last call.
    pub fn add_io(&self, delta: &IoTotals) {
        for (c, v) in self.io.iter().zip(delta.to_array()) {
            if v != 0 {
                bump(c, v);
            }
        }
    }

    /// Supervisor: add the worker's ICE-TCP counters that moved since the last call.
    pub fn add_tcp(&self, delta: &TcpTotals) {
        for (c, v) in self.tcp.iter().zip(delta.to_array()) {
            if v != 0 {
                bump(c, v);
            }
        }
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
            rx_queue_bytes: ld(&self.rx_queue_bytes),
            kernel_drops: ld(&self.kernel_drops),
            stuck_since_unix_ms: ld(&self.stuck_since_unix_ms),
            stuck: ld(&self.stuck),
            io: IoTotals::from_array(core::array::from_fn(|i| ld(&self.io[i]))),
            feedback: core::array::from_fn(|i| ld(&self.feedback[i])),
            tcp: TcpTotals::from_array(core::array::from_fn(|i| ld(&self.tcp[i]))),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Bytes queued in the worker's socket receive queue at the last sample (a gauge; summed
    /// by [`merge`](Self::merge)).
    pub rx_queue_bytes: u64,
    /// Datagrams the kernel dropped at the worker's socket (receive queue full).
    pub kernel_drops: u64,
    /// Non-zero while the worker has not finished a loop turn for longer than the stall
    /// threshold: since when (unix ms). [`merge`](Self::merge) keeps the earliest.
    pub stuck_since_unix_ms: u64,
    /// Times the worker was found stuck (episodes).
    pub stuck: u64,
    /// The worker's I/O statistics.
    pub io: IoTotals,
    /// Indexed by `Feedback as usize`.
    pub feedback: [u64; Feedback::COUNT],
    /// ICE-TCP (ABI 7).
    pub tcp: TcpTotals,
}

// By hand: `Default` is derived for arrays of at most 32 elements, and `feedback` has 48.
impl Default for CounterSnapshot {
    fn default() -> CounterSnapshot {
        CounterSnapshot {
            packets_in: 0,
            bytes_in: 0,
            packets_out: 0,
            bytes_out: 0,
            drops: [0; DropReason::COUNT],
            slow_path_up: 0,
            slow_path_down: 0,
            batches: 0,
            batch_nanos: 0,
            batch_hist: [0; BATCH_BUCKETS],
            time_hist: [0; TIME_BUCKETS],
            loop_turns: 0,
            stalls: 0,
            rx_queue_bytes: 0,
            kernel_drops: 0,
            stuck_since_unix_ms: 0,
            stuck: 0,
            io: IoTotals::default(),
            feedback: [0; Feedback::COUNT],
            tcp: TcpTotals::default(),
        }
    }
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
        self.rx_queue_bytes = self.rx_queue_bytes.wrapping_add(other.rx_queue_bytes);
        self.kernel_drops = self.kernel_drops.wrapping_add(other.kernel_drops);
        self.stuck_since_unix_ms = match (self.stuck_since_unix_ms, other.stuck_since_unix_ms) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        self.stuck = self.stuck.wrapping_add(other.stuck);
        let mut io = self.io.to_array();
        add(&mut io, &other.io.to_array());
        self.io = IoTotals::from_array(io);
        add(&mut self.feedback, &other.feedback);
        let mut tcp = self.tcp.to_array();
        add(&mut tcp, &other.tcp.to_array());
        self.tcp = TcpTotals::from_array(tcp);
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

    /// `n` loss-recovery events of kind `f`.
    #[inline]
    pub fn count(&mut self, f: Feedback, n: u64) {
        self.feedback[f as usize] += n;
    }

    /// One loss-recovery counter.
    pub fn feedback(&self, f: Feedback) -> u64 {
        self.feedback[f as usize]
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
        // 85 words before the feedback array, its 48 (133), the ICE-TCP section's 16 (149
        // words), padded to a cache-line multiple.
        assert_eq!(COUNTER_TCP_OFFSET, 1064);
        assert_eq!(core::mem::size_of::<WorkerCounters>(), 1216);
    }
}
