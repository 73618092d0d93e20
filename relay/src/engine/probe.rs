//! Bandwidth probing for one subscriber's downlink estimator (engine/bwe.rs), in the shape of
//! libwebrtc's ProbeController and ProbeBitrateEstimator.
//!
//! The delay-based estimate can only grow to 1.5 × what the subscriber acknowledged; while
//! the relay forwards a low simulcast layer, the acknowledged rate is that layer's, so the
//! estimate never climbs high enough to pick the next layer. A probe breaks that circle: a
//! short *cluster* of padding sent at a target rate above the estimate, each packet numbered
//! with the transport-wide extension like media. When the subscriber's feedback reports the
//! cluster, its rate as received says what the link carried: the estimate is raised to
//! `min(send rate, receive rate)` of the cluster (0.95 × the receive rate when that is well
//! below the send rate: the link was saturated by the probe).
//!
//! [`Prober`] decides when to probe, paces a cluster and turns its feedback into a rate:
//!
//! - a cluster starts only while the estimate is below what the subscriber's best eligible
//!   layers need ([`Prober::set_need`]), the delay detector saw no overuse and the loss-based
//!   controller made no cut for [`QUIET_AFTER_DECREASE_US`], and no cluster is in flight;
//! - its target is `min(2 × estimate, need × 1.25, max)`, at least 1.2 × the estimate; it
//!   carries [`CLUSTER_US`] of the target rate but at least [`MIN_CLUSTER_BYTES`] (so that a
//!   shaper's token bucket cannot pass it whole), paced at the target rate, with at least
//!   [`MIN_PACKETS`] packets and at most [`MAX_PACKETS`];
//! - after a success (the link carried at least [`SUCCESS_OF_TARGET_PCT`] % of the target,
//!   above the estimate) the next cluster may start [`MIN_INTERVAL_US`] later; after a failure
//!   the interval doubles up to [`MAX_INTERVAL_US`]; an overuse while a cluster is being sent
//!   stops its sending (what went out is still measured when it is [`MIN_PACKETS`] or more,
//!   as libwebrtc measures a cluster independently of its delay detector). A result above the
//!   estimate raises it either way.
//!
//! Owns: the probing state of one subscriber, fixed size. Time is passed in (µs); nothing here
//! reads a clock, allocates or locks.

/// How long a cluster is paced over, at the least.
pub const CLUSTER_US: u64 = 30_000;
/// Fewest bytes in a cluster; one that would be smaller is paced over longer than
/// [`CLUSTER_US`] at its target rate. A token-bucket shaper passes its bucket at the sender's
/// rate whatever the limit behind it (Linux `tbf` needs a bucket of at least rate / HZ, and
/// 4 kB or more is common at a few hundred kbit/s): a 30 ms cluster at 600 kbit/s is 2.25 kB
/// and would measure the bucket, not the link. With three times a 4 kB bucket, its arrival
/// span is dominated by the limit: through 300 kbit/s the cluster measures at most 1.5 × the
/// link rate, and far less while media shares the link, so the probe fails there.
pub const MIN_CLUSTER_BYTES: u64 = 12_000;
/// Fewest packets in a cluster (libwebrtc: 5).
pub const MIN_PACKETS: u32 = 5;
/// Most packets in a cluster: bounds what one probe costs the link.
pub const MAX_PACKETS: u32 = 96;
/// Longest a cluster is paced over (its minimum bytes at a low target rate).
pub const MAX_CLUSTER_US: u64 = 500_000;
/// Padding bytes in one probe packet (libwebrtc's largest padding-only packet).
pub const PADDING: usize = 224;
/// Shortest and longest wait between two clusters of one subscriber. The longest bounds how
/// late a link whose limit was lifted is noticed (issue 17 wants the best layer back within
/// 15 s); what it saves is small, since a cluster is 30 ms at twice the estimate (0.75 % of
/// the estimate's bytes at one cluster per 8 s).
pub const MIN_INTERVAL_US: u64 = 1_000_000;
pub const MAX_INTERVAL_US: u64 = 8_000_000;
/// A cluster's result waits this long after its last packet for the feedback about it.
pub const RESULT_TIMEOUT_US: u64 = 1_000_000;
/// No cluster starts this soon after the estimate was cut (five feedback intervals: the
/// detector's present state; on a loaded host its false alarms come every few seconds, and
/// a 2 s wait kept a lifted link from being probed for many seconds).
pub const QUIET_AFTER_DECREASE_US: u64 = 500_000;
/// A result of at least this much of the cluster's target (percent) that raised the estimate
/// is a success (libwebrtc probes further above 70 %).
pub const SUCCESS_OF_TARGET_PCT: u64 = 70;
/// How often the pacing of a cluster in flight wants the timer (µs).
pub const TICK_US: u64 = 5_000;
/// Fewest reported packets (percent of those sent) a result needs (libwebrtc: 80 %).
const MIN_RECEIVED_PCT: u32 = 80;
/// A receive rate this much above the send rate is not believed (libwebrtc: 2).
const MAX_VALID_RATIO: f64 = 2.0;
/// Below this fraction of the send rate the link was saturated ...
const MIN_RATIO_UNSATURATED: f64 = 0.9;
/// ... and the result is this fraction of the receive rate.
const TARGET_UTILIZATION: f64 = 0.95;

/// Counters one prober keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Clusters started.
    pub clusters: u64,
    /// Probe packets sent.
    pub packets: u64,
    /// Probe bytes sent (on the wire, after SRTP).
    pub bytes: u64,
    /// Clusters whose result raised the estimate.
    pub successes: u64,
}

/// What a finished cluster concluded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The link carried `bps` (bit/s).
    Rate(f64),
    /// Too little of the cluster was reported or sent, or its timing was implausible.
    Failed,
}

#[derive(Debug, Clone, Copy, Default)]
struct Cluster {
    /// Tag of the cluster's packets in the send history (1..=255, never 0).
    id: u8,
    target_bps: u64,
    start_us: u64,
    /// How long the cluster is paced over (µs).
    duration_us: u64,
    /// Packets the cluster is to send in all.
    packets: u32,
    sent_bytes: u64,
    sent_packets: u32,
    /// All sent: now waiting for the feedback.
    done_at: Option<u64>,
    // What the feedback reported so far.
    reported: u32,
    received: u32,
    first_send: u64,
    last_send: u64,
    last_send_size: u32,
    first_arrival: i64,
    first_arrival_size: u32,
    last_arrival: i64,
    received_bytes: u64,
}

/// Probing state of one subscriber.
#[derive(Debug, Clone, Copy)]
pub struct Prober {
    /// What the subscriber's best eligible layers need (bit/s, whole subscriber); `None`:
    /// nothing to reach (every layered output at its best layer, or none).
    need: Option<u64>,
    /// Need gathered from the subscriber's layered outputs ([`Prober::add_need`]): the
    /// largest per-output need, and whether any output is below its best layer.
    gathering: (u64, bool),
    next_at: u64,
    interval_us: u64,
    cluster: Option<Cluster>,
    next_id: u8,
    stats: ProbeStats,
}

impl Default for Prober {
    fn default() -> Self {
        Prober {
            need: None,
            gathering: (0, false),
            next_at: 0,
            interval_us: MIN_INTERVAL_US,
            cluster: None,
            next_id: 1,
            stats: ProbeStats::default(),
        }
    }
}

impl Prober {
    /// What the subscriber's best eligible layers need in all (bit/s), or `None` when
    /// probing cannot help it (already at its best layers).
    pub fn set_need(&mut self, need: Option<u64>) {
        self.need = need;
    }

    /// The need last set.
    pub fn need(&self) -> Option<u64> {
        self.need
    }

    /// Start gathering the need from the subscriber's layered outputs
    /// ([`Prober::add_need`]), applied by [`Prober::end_need`].
    pub fn begin_need(&mut self) {
        self.gathering = (0, false);
    }

    /// One layered output needs `bps` for its best eligible layer (with the selector's
    /// margin for going up); `below_best`: it is not on that layer.
    pub fn add_need(&mut self, bps: u64, below_best: bool) {
        self.gathering = (self.gathering.0.max(bps), self.gathering.1 || below_best);
    }

    /// Apply what [`Prober::add_need`] gathered: the estimate is split evenly between the
    /// `outputs` layered outputs after `other_bps` (bwe::layer_budget), so the subscriber
    /// needs `other_bps + outputs × the largest need`; nothing when every output is at its
    /// best layer.
    pub fn end_need(&mut self, other_bps: u64, outputs: u16) {
        let (most, below) = self.gathering;
        self.need = (below && outputs > 0)
            .then(|| other_bps.saturating_add(most.saturating_mul(u64::from(outputs))));
    }

    /// Counters.
    pub fn stats(&self) -> ProbeStats {
        self.stats
    }

    /// True while a cluster is being sent.
    pub fn sending(&self) -> bool {
        self.cluster.is_some_and(|c| c.done_at.is_none())
    }

    /// True while a cluster is sent or awaits its feedback.
    pub fn in_flight(&self) -> bool {
        self.cluster.is_some()
    }

    /// The earliest time another cluster may start (µs).
    pub fn next_at(&self) -> u64 {
        self.next_at
    }

    /// The wait after the last cluster (doubles on failure).
    pub fn interval_us(&self) -> u64 {
        self.interval_us
    }

    /// Start a cluster at `now_us` if one is wanted: `estimate` below the need, no overuse
    /// or cut since `quiet_since`, the interval since the last cluster passed. Returns the
    /// cluster's target rate (bit/s).
    pub fn maybe_start(
        &mut self,
        now_us: u64,
        estimate: u64,
        max_bps: u64,
        overusing: bool,
        last_decrease: Option<u64>,
    ) -> Option<u64> {
        let need = self.need?;
        if self.cluster.is_some() || estimate >= need || estimate >= max_bps || overusing {
            return None;
        }
        if now_us < self.next_at {
            return None;
        }
        if last_decrease.is_some_and(|d| now_us.saturating_sub(d) < QUIET_AFTER_DECREASE_US) {
            return None;
        }
        let target = estimate
            .saturating_mul(2)
            .min(need.saturating_mul(5) / 4)
            .min(max_bps)
            .max(estimate.saturating_mul(6) / 5);
        let bytes = (target.saturating_mul(CLUSTER_US) / 8_000_000).max(MIN_CLUSTER_BYTES);
        // Packets of PADDING bytes plus about 40 of headers and tag.
        let packets = (bytes / (PADDING as u64 + 40)).clamp(MIN_PACKETS.into(), MAX_PACKETS.into());
        // Paced at the target rate: longer than CLUSTER_US when the minimum bytes set the size.
        let duration_us = (packets * (PADDING as u64 + 40) * 8_000_000 / target.max(1))
            .clamp(CLUSTER_US, MAX_CLUSTER_US);
        let id = self.next_id;
        self.next_id = if id == u8::MAX { 1 } else { id + 1 };
        self.cluster = Some(Cluster {
            id,
            target_bps: target,
            start_us: now_us,
            duration_us,
            packets: packets as u32,
            ..Cluster::default()
        });
        self.stats.clusters += 1;
        Some(target)
    }

    /// How many probe packets are due at `now_us` to keep the cluster at its target rate
    /// (0 when none is being sent); the cluster's tag for the send history comes with it.
    pub fn due(&self, now_us: u64) -> (u32, u8) {
        let Some(c) = self.cluster.filter(|c| c.done_at.is_none()) else {
            return (0, 0);
        };
        let d = c.duration_us.max(1);
        let elapsed = now_us.saturating_sub(c.start_us).min(d);
        // The first tick sends one tick's worth so the cluster has a start to measure from.
        let should = u64::from(c.packets) * (elapsed + TICK_US).min(d) / d;
        let should = (should as u32).max(1).min(c.packets);
        (should.saturating_sub(c.sent_packets), c.id)
    }

    /// One probe packet of `size` wire bytes left at `now_us`.
    pub fn on_sent(&mut self, now_us: u64, size: usize) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.sent_packets += 1;
        c.sent_bytes += size as u64;
        self.stats.packets += 1;
        self.stats.bytes += size as u64;
        if c.sent_packets >= c.packets {
            c.done_at = Some(now_us);
        }
    }

    /// No probe packet could be sent (no RTX stream, queue full): the cluster ends as sent
    /// so far, and fails if nothing went out.
    pub fn abort_sending(&mut self, now_us: u64) -> Option<Outcome> {
        let c = self.cluster.as_mut()?;
        if c.sent_packets < MIN_PACKETS {
            return self.finish(now_us, Outcome::Failed, u64::MAX);
        }
        c.packets = c.sent_packets;
        c.done_at.get_or_insert(now_us);
        None
    }

    /// Feedback reported packet `tag` (a probe of cluster `tag`), sent at `send_us` with
    /// `size` bytes, as arrived at `arrival` (receiver's clock, µs) or lost (`None`).
    pub fn on_report(&mut self, tag: u8, send_us: u64, size: u32, arrival: Option<i64>) {
        let Some(c) = self.cluster.as_mut().filter(|c| c.id == tag) else {
            return;
        };
        c.reported += 1;
        let Some(at) = arrival else {
            return;
        };
        if c.received == 0 || send_us < c.first_send {
            c.first_send = send_us;
        }
        if c.received == 0 || send_us >= c.last_send {
            c.last_send = send_us;
            c.last_send_size = size;
        }
        if c.received == 0 || at < c.first_arrival {
            c.first_arrival = at;
            c.first_arrival_size = size;
        }
        if c.received == 0 || at > c.last_arrival {
            c.last_arrival = at;
        }
        c.received += 1;
        c.received_bytes += u64::from(size);
    }

    /// After a feedback message (or on the timer) at `now_us`: the cluster's outcome when it
    /// is complete (every packet reported) or timed out, with `estimate` the estimate before
    /// it (for counting a success). A cluster no feedback mentioned at all (neither as
    /// received nor as lost, which a lossy link would give once later packets are reported)
    /// says nothing about the link: it fails without growing the wait.
    pub fn conclude(&mut self, now_us: u64, estimate: u64) -> Option<Outcome> {
        let c = self.cluster?;
        let done = c.done_at?;
        let complete = c.reported >= c.sent_packets;
        if !complete && now_us.saturating_sub(done) < RESULT_TIMEOUT_US {
            return None;
        }
        if c.reported == 0 {
            self.cluster = None;
            self.next_at = now_us.saturating_add(MIN_INTERVAL_US);
            return Some(Outcome::Failed);
        }
        let outcome = match c.rate() {
            Some(r) => Outcome::Rate(r),
            None => Outcome::Failed,
        };
        let enough = (c.target_bps.saturating_mul(SUCCESS_OF_TARGET_PCT) / 100).max(estimate + 1);
        self.finish(now_us, outcome, enough)
    }

    /// An overuse was detected at `now_us`: a cluster being sent stops there (a failure
    /// with fewer than [`MIN_PACKETS`] sent, else it waits for its feedback as it is).
    pub fn on_overuse(&mut self, now_us: u64) -> Option<Outcome> {
        if self.sending() {
            self.abort_sending(now_us)
        } else {
            None
        }
    }

    /// End the cluster with `outcome`; a rate of at least `enough` is a success.
    fn finish(&mut self, now_us: u64, outcome: Outcome, enough: u64) -> Option<Outcome> {
        self.cluster = None;
        let success = match outcome {
            Outcome::Rate(r) => r >= enough as f64,
            Outcome::Failed => false,
        };
        if success {
            self.stats.successes += 1;
            self.interval_us = MIN_INTERVAL_US;
        } else {
            self.interval_us = (self.interval_us.saturating_mul(2)).min(MAX_INTERVAL_US);
        }
        self.next_at = now_us.saturating_add(self.interval_us);
        Some(outcome)
    }

    /// Target rate of the cluster in flight.
    pub fn target(&self) -> Option<u64> {
        self.cluster.map(|c| c.target_bps)
    }
}

impl Cluster {
    /// libwebrtc's ProbeBitrateEstimator: the send rate over the send interval (without the
    /// last packet's bytes), the receive rate over the receive interval (without the first
    /// packet's), `min` of the two; `None` with too few packets reported or implausible
    /// timing.
    fn rate(&self) -> Option<f64> {
        if self.received < 2
            || u64::from(self.received) * 100
                < u64::from(self.sent_packets) * u64::from(MIN_RECEIVED_PCT)
        {
            return None;
        }
        let send_us = self.last_send.saturating_sub(self.first_send);
        let recv_us = self.last_arrival - self.first_arrival;
        if send_us == 0 || recv_us <= 0 || send_us > 1_000_000 || recv_us > 1_000_000 {
            return None;
        }
        let send_bytes = self
            .received_bytes
            .saturating_sub(u64::from(self.last_send_size));
        let recv_bytes = self
            .received_bytes
            .saturating_sub(u64::from(self.first_arrival_size));
        let send_rate = send_bytes as f64 * 8e6 / send_us as f64;
        let recv_rate = recv_bytes as f64 * 8e6 / recv_us as f64;
        if recv_rate > MAX_VALID_RATIO * send_rate {
            return None;
        }
        let mut r = send_rate.min(recv_rate);
        if recv_rate < MIN_RATIO_UNSATURATED * send_rate {
            r = TARGET_UTILIZATION * recv_rate;
        }
        Some(r)
    }
}
