//! Per-session diagnostics: what this worker counted for each session it handles (packets and
//! bytes in and out, authentication failures, replays, last packet times) and for each of its
//! streams (packets and bytes per SSRC; for received streams the RFC 3550 reception
//! statistics of [`super::reception`]), published into this worker's session-stats region of
//! the shm file (docs/SHM.md "Session-stats slot").
//!
//! Owns: the counters in each [`super::index::Session`] ([`SessionDiag`]), this worker's
//! slots of the region (it is their only writer) and the publish cadence. May not touch: the
//! clock (every call is given `now`; wall-clock times come from an anchor the worker sets),
//! other workers' slots, SRTP.
//!
//! Counting is plain integer arithmetic on the worker's own state: no atomics, no allocation
//! per packet (a session's stream lists grow only when a new stream arrives past their
//! capacity, [`make_room`]). Publishing is not per packet: at most every [`PUBLISH_INTERVAL`], from
//! the end of a batch, and only sessions that had traffic since.

use super::reception::Reception;
use contract::shm::{
    DropReason, LayerStats, ReceptionStats, SessionId, SessionStats, ShmReader, StatRecord,
    StreamDir, StreamStats,
};
use contract::wire::rtcp::ReportBlock;
use contract::wire::rtcp_write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records are rewritten at most this often.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);
/// The fraction lost is computed over intervals of at least this long (RFC 3550 A.3 computes
/// it per report interval; the relay's diagnostics use a fixed one).
pub const LOSS_INTERVAL: Duration = Duration::from_secs(1);
/// A stream's RTP clock rate is inferred once its packets span at least this long.
pub const CLOCK_WINDOW: Duration = Duration::from_millis(500);
/// The rates an inferred clock rate snaps to (RFC 3551 §4.5/§5, RFC 7587, RFC 6184 §8.2.1);
/// an estimate more than [`CLOCK_TOLERANCE_PCT`] from all of them is not taken.
const CLOCK_RATES: [u32; 8] = [
    8_000, 11_025, 16_000, 22_050, 32_000, 44_100, 48_000, 90_000,
];
const CLOCK_TOLERANCE_PCT: u64 = 4;

/// No slot: the region is full or absent (counted, not published).
pub const NO_SLOT: u32 = u32::MAX;

/// One received stream (by the peer's SSRC).
#[derive(Debug, Clone, Copy)]
pub struct RxStream {
    pub ssrc: u32,
    pub packets: u64,
    pub bytes: u64,
    pub last: Option<Instant>,
    pub reception: Reception,
    /// Reference point of the clock-rate estimate: arrival and RTP timestamp.
    clock_ref: (Instant, u32),
    /// Inferred RTP clock rate, 0 while unknown.
    pub clock_rate: u32,
    /// Arrival times in RTP units count from here (the packet the rate was inferred at).
    epoch: Instant,
    /// RFC 3550 A.3 interval state: expected and received at the interval start, its time, and
    /// the fraction lost over the last complete interval.
    interval: (u32, u32, Option<Instant>),
    pub fraction_lost: u8,
    slot: u32,
    /// The peer's last sender report about this stream (RFC 3550 §6.4.1): the relay's own
    /// reports derive their NTP↔RTP mapping and their LSR/DLSR from it.
    pub last_sr: Option<SrSeen>,
}

/// A sender report as received: its NTP and RTP timestamps and when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrSeen {
    pub ntp: u64,
    pub rtp: u32,
    pub at: Instant,
}

impl SrSeen {
    /// RFC 3550 §6.4.1: the sender's NTP and RTP clocks at `now`, extrapolated from this
    /// report with the stream's RTP clock rate (both advance in real time).
    pub fn at_time(&self, now: Instant, clock_rate: u32) -> (u64, u32) {
        let d = now.saturating_duration_since(self.at);
        let ticks = d.as_nanos() * u128::from(clock_rate) / 1_000_000_000;
        (
            rtcp_write::ntp_add(self.ntp, d),
            self.rtp.wrapping_add(ticks as u32),
        )
    }
}

impl RxStream {
    fn new(ssrc: u32, seq: u16, ts: u32, now: Instant) -> RxStream {
        RxStream {
            ssrc,
            packets: 0,
            bytes: 0,
            last: None,
            reception: Reception::new(seq),
            clock_ref: (now, ts),
            clock_rate: 0,
            epoch: now,
            interval: (0, 0, None),
            fraction_lost: 0,
            slot: NO_SLOT,
            last_sr: None,
        }
    }

    /// The report block about this stream for a receiver report sent at `now` (RFC 3550
    /// §6.4.1, A.3, A.8): loss since the previous block, cumulative loss, extended highest
    /// sequence number, jitter (0 until the clock rate is known), LSR/DLSR from the peer's
    /// last sender report. Starts the next report interval.
    pub fn report_block(&mut self, now: Instant) -> ReportBlock {
        let (lsr, dlsr) = match self.last_sr {
            Some(sr) => (
                rtcp_write::ntp_middle(sr.ntp),
                rtcp_write::dlsr(now.saturating_duration_since(sr.at)),
            ),
            None => (0, 0),
        };
        let mut b = self.reception.report_block(self.ssrc, lsr, dlsr);
        if self.clock_rate == 0 {
            b.jitter = 0;
        }
        b
    }

    /// One authenticated packet: sequence bookkeeping (A.1), then the jitter (A.8) once the
    /// clock rate is known.
    #[inline]
    fn on_packet(&mut self, seq: u16, ts: u32, len: usize, now: Instant) {
        self.packets += 1;
        self.bytes += len as u64;
        self.last = Some(now);
        self.reception.update_seq(seq);
        if self.clock_rate == 0 {
            self.infer_clock(ts, now);
            return;
        }
        let micros = now.saturating_duration_since(self.epoch).as_micros() as u64;
        let arrival = micros.wrapping_mul(u64::from(self.clock_rate)) / 1_000_000;
        self.reception.update_jitter(ts, arrival as u32);
    }

    /// The RTP clock advances at the stream's rate in real time whatever the packetisation:
    /// timestamp progress over arrival time across [`CLOCK_WINDOW`], snapped to a standard
    /// rate. An estimate that matches none (a timestamp jump, a stalled sender) restarts the
    /// window.
    fn infer_clock(&mut self, ts: u32, now: Instant) {
        let (t0, ts0) = self.clock_ref;
        let span = now.saturating_duration_since(t0);
        if span < CLOCK_WINDOW {
            return;
        }
        let ticks = u64::from(ts.wrapping_sub(ts0));
        let micros = span.as_micros().max(1) as u64;
        let est = ticks.saturating_mul(1_000_000) / micros;
        // The nearest standard rate (relative distance), if it is close enough.
        let near = CLOCK_RATES
            .iter()
            .copied()
            .min_by_key(|&r| est.abs_diff(u64::from(r)) * 1_000_000 / u64::from(r))
            .filter(|&r| est.abs_diff(u64::from(r)) * 100 <= u64::from(r) * CLOCK_TOLERANCE_PCT);
        match near {
            Some(r) => {
                self.clock_rate = r;
                self.epoch = now;
                // The first jitter sample is the transit of this packet.
                self.reception.update_jitter(ts, 0);
            }
            None => self.clock_ref = (now, ts),
        }
    }

    /// Close the loss interval when it is due (called when publishing).
    fn roll_interval(&mut self, now: Instant) {
        let (exp0, rec0, at) = self.interval;
        let Some(at) = at else {
            self.interval = (
                self.reception.expected(),
                self.reception.received(),
                Some(now),
            );
            return;
        };
        if now.saturating_duration_since(at) < LOSS_INTERVAL {
            return;
        }
        let expected = self.reception.expected();
        let received = self.reception.received();
        let exp_i = expected.wrapping_sub(exp0);
        let lost_i = i64::from(exp_i) - i64::from(received.wrapping_sub(rec0));
        self.fraction_lost = if exp_i == 0 || lost_i <= 0 {
            0
        } else {
            ((lost_i << 8) / i64::from(exp_i)).min(255) as u8
        };
        self.interval = (expected, received, Some(now));
    }

    fn stats(&self) -> ReceptionStats {
        let jitter_rtp = if self.clock_rate == 0 {
            0
        } else {
            self.reception.jitter()
        };
        let jitter_us = if self.clock_rate == 0 {
            0
        } else {
            (u64::from(jitter_rtp) * 1_000_000 / u64::from(self.clock_rate))
                .min(u64::from(u32::MAX)) as u32
        };
        ReceptionStats {
            extended_highest: self.reception.extended_max(),
            expected: self.reception.expected(),
            received: self.reception.received(),
            cumulative_lost: self.reception.lost(),
            fraction_lost: self.fraction_lost,
            jitter_rtp,
            clock_rate: self.clock_rate,
            jitter_us,
        }
    }
}

/// One stream sent to the peer (by the output SSRC).
#[derive(Debug, Clone, Copy)]
pub struct TxStream {
    pub ssrc: u32,
    pub packets: u64,
    pub bytes: u64,
    pub last: Option<Instant>,
    slot: u32,
    /// RTP payload octets sent (the SR octet count, RFC 3550 §6.4.1).
    pub octets: u64,
    /// The publisher session and SSRC of the last packet sent, and the output timestamp
    /// minus the source's (the route's timestamp rewriting): what the relay's sender reports
    /// map the publisher's NTP↔RTP relation through.
    pub src: (SessionId, u32),
    pub ts_off: u32,
    /// The simulcast layer state after the last packet sent, for an output fed by layers.
    pub layer: Option<LayerStats>,
    /// When the relay's next sender report on this stream is due (`None`: not scheduled).
    pub next_sr: Option<Instant>,
}

/// One RTP packet queued to the peer, for [`SessionDiag::on_rtp_out`].
#[derive(Debug, Clone, Copy)]
pub struct RtpOut {
    /// Output SSRC, protected length, RTP payload length.
    pub ssrc: u32,
    pub len: usize,
    pub payload: usize,
    /// Source publisher session and SSRC, output minus source RTP timestamp.
    pub src: (SessionId, u32),
    pub ts_off: u32,
    /// The output's layer state, when a simulcast source feeds it.
    pub layer: Option<LayerStats>,
}

/// A session's counters in this worker.
#[derive(Debug, Clone, Default)]
pub struct SessionDiag {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub auth_failures: u64,
    pub replays: u64,
    pub last_in: Option<Instant>,
    pub last_out: Option<Instant>,
    /// Received and sent streams, each list grown by [`make_room`].
    pub rx: Vec<RxStream>,
    pub tx: Vec<TxStream>,
    /// When the relay's next receiver report to this session (as a publisher) is due.
    pub next_rr: Option<Instant>,
    /// The downlink estimate towards the session (bit/s, 0: none; engine/bwe.rs).
    downlink_bps: u64,
    /// Anything changed since the last publish.
    dirty: bool,
    slot: Option<u32>,
}

impl SessionDiag {
    /// A datagram of `len` bytes arrived from the peer.
    #[inline]
    pub fn on_in(&mut self, len: usize, now: Option<Instant>) {
        self.packets_in += 1;
        self.bytes_in += len as u64;
        self.last_in = now.or(self.last_in);
        self.dirty = true;
    }

    /// The downlink estimate towards the session is now `bps` (published with the next
    /// records when it changed).
    #[inline]
    pub fn set_downlink(&mut self, bps: u64) {
        if bps != self.downlink_bps {
            self.downlink_bps = bps;
            self.dirty = true;
        }
    }

    /// The downlink estimate last set (bit/s, 0: none).
    pub fn downlink_bps(&self) -> u64 {
        self.downlink_bps
    }

    /// A datagram of `len` bytes was queued to the peer.
    #[inline]
    pub fn on_out(&mut self, len: usize, now: Option<Instant>) {
        self.packets_out += 1;
        self.bytes_out += len as u64;
        self.last_out = now.or(self.last_out);
        self.dirty = true;
    }

    /// SRTP/SRTCP refused a packet from the peer: authentication failures and replays
    /// (replayed or too old, RFC 3711 §3.3.2) are counted per session.
    #[inline]
    pub fn on_rx_drop(&mut self, reason: DropReason) {
        match reason {
            DropReason::AuthFailed => self.auth_failures += 1,
            DropReason::Replayed | DropReason::TooOld => self.replays += 1,
            _ => {}
        }
    }

    /// An authenticated RTP packet of stream `ssrc` (plain length `len`). Streams past `limit`
    /// are counted in the session totals only. Returns the peer's last Sender Report about the
    /// stream, if any (simulcast layer switches map timestamps through it).
    #[inline]
    pub fn on_rtp_in(
        &mut self,
        ssrc: u32,
        seq: u16,
        ts: u32,
        len: usize,
        now: Option<Instant>,
        limit: usize,
    ) -> Option<SrSeen> {
        let now = now?;
        let s = match self.rx.iter().position(|s| s.ssrc == ssrc) {
            Some(i) => &mut self.rx[i],
            None => {
                if !make_room(&mut self.rx, limit) {
                    return None;
                }
                self.rx.push(RxStream::new(ssrc, seq, ts, now));
                let last = self.rx.len() - 1;
                &mut self.rx[last]
            }
        };
        s.on_packet(seq, ts, len, now);
        s.last_sr
    }

    /// A repaired packet of stream `ssrc` (restored from the peer's RTX stream): counted in
    /// the stream's packets and sequence bookkeeping (RFC 3550 A.1: it lowers the loss), not
    /// sampled for jitter (it arrives late by design).
    #[inline]
    pub fn on_rtp_repaired(&mut self, ssrc: u32, seq: u16, len: usize, now: Option<Instant>) {
        if let Some(s) = self.rx.iter_mut().find(|s| s.ssrc == ssrc) {
            s.packets += 1;
            s.bytes += len as u64;
            s.last = now.or(s.last);
            s.reception.update_seq(seq);
        }
    }

    /// An RTP packet of an output stream was queued. True when it opened the stream (its
    /// first sender report is still to be scheduled).
    #[inline]
    pub fn on_rtp_out(&mut self, o: &RtpOut, now: Option<Instant>, limit: usize) -> bool {
        let mut opened = false;
        let s = match self.tx.iter().position(|s| s.ssrc == o.ssrc) {
            Some(i) => &mut self.tx[i],
            None => {
                if !make_room(&mut self.tx, limit) {
                    return false;
                }
                opened = true;
                self.tx.push(TxStream {
                    ssrc: o.ssrc,
                    packets: 0,
                    bytes: 0,
                    last: None,
                    slot: NO_SLOT,
                    octets: 0,
                    src: o.src,
                    ts_off: o.ts_off,
                    layer: None,
                    next_sr: None,
                });
                let last = self.tx.len() - 1;
                &mut self.tx[last]
            }
        };
        s.packets += 1;
        s.bytes += o.len as u64;
        s.octets += o.payload as u64;
        s.src = o.src;
        s.ts_off = o.ts_off;
        s.layer = o.layer.or(s.layer);
        s.last = now.or(s.last);
        opened
    }
}

/// A session's stream lists start at this capacity.
const INITIAL_STREAMS: usize = 4;

/// Room for one more stream in `v` (false at `limit`): capacity doubles from
/// [`INITIAL_STREAMS`] up to `limit`, so a list allocates only when a new stream arrives past
/// its capacity (a few times per session at most), never for a packet of a known stream; and
/// a session with one or two streams does not hold `limit` entries.
#[inline]
fn make_room<T>(v: &mut Vec<T>, limit: usize) -> bool {
    if v.len() >= limit {
        return false;
    }
    if v.len() == v.capacity() {
        let want = (v.len() * 2).max(INITIAL_STREAMS).min(limit);
        v.reserve_exact(want - v.len());
    }
    true
}

/// This worker's session-stats region and publish clock.
#[derive(Default)]
pub struct DiagState {
    shm: Option<Arc<ShmReader>>,
    worker: u32,
    pid: u32,
    /// Session owning each of this worker's slots (0 = free).
    own: Vec<SessionId>,
    /// Free slots, lowest last.
    free: Vec<u32>,
    /// A monotonic instant and the wall clock at the same moment (unix ms).
    wall: Option<(Instant, u64)>,
    last_publish: Option<Instant>,
    writes: u64,
    publishes: u64,
    /// Records not published because the region was full.
    unpublished: u64,
}

impl DiagState {
    /// Publish into worker `worker`'s region of `shm` as process `pid`. The region is cleared:
    /// the counts are per relay process (docs/SHM.md "Session-stats slot").
    pub fn attach(&mut self, shm: Arc<ShmReader>, worker: usize, pid: u32) {
        let Ok(w) = u32::try_from(worker) else { return };
        if w >= shm.capacity().workers {
            return;
        }
        let cap = shm.stats_per_worker();
        for i in 0..shm.stat_high_water(w).min(cap) {
            shm.clear_stat(w, i);
        }
        self.own = vec![0; cap as usize];
        self.free = (0..cap).rev().collect();
        self.worker = w;
        self.pid = pid;
        self.shm = Some(shm);
    }

    /// The wall clock read at `at` was `unix_ms`; later instants are converted from it.
    pub fn set_wall_clock(&mut self, at: Instant, unix_ms: u64) {
        self.wall = Some((at, unix_ms));
    }

    fn unix_ms(&self, t: Option<Instant>) -> u64 {
        match (t, self.wall) {
            (Some(t), Some((at, ms))) => {
                if t >= at {
                    ms.saturating_add(t.duration_since(at).as_millis() as u64)
                } else {
                    ms.saturating_sub(at.duration_since(t).as_millis() as u64)
                }
            }
            _ => 0,
        }
    }

    /// At every index rebuild: free the slots of sessions that are gone.
    pub fn rebuild(&mut self, live: impl Fn(SessionId) -> bool) {
        let Some(shm) = self.shm.as_ref() else { return };
        for (i, id) in self.own.iter_mut().enumerate() {
            if *id != 0 && !live(*id) {
                shm.clear_stat(self.worker, i as u32);
                *id = 0;
                self.free.push(i as u32);
            }
        }
    }

    /// True when a publish is due at `now` ([`PUBLISH_INTERVAL`] since the last one).
    #[inline]
    pub fn due(&self, now: Instant) -> bool {
        self.shm.is_some()
            && self
                .last_publish
                .is_none_or(|t| now.saturating_duration_since(t) >= PUBLISH_INTERVAL)
    }

    fn take_slot(&mut self, session: SessionId, slot: &mut u32) -> Option<u32> {
        if *slot == NO_SLOT {
            match self.free.pop() {
                Some(i) => {
                    self.own[i as usize] = session;
                    *slot = i;
                }
                None => {
                    self.unpublished += 1;
                    return None;
                }
            }
        }
        Some(*slot)
    }

    /// Write the records of every session in `sessions` that had traffic since the last
    /// publish. Call when [`DiagState::due`].
    pub fn publish<'a>(
        &mut self,
        now: Instant,
        sessions: impl Iterator<Item = (SessionId, &'a mut SessionDiag)>,
    ) {
        self.last_publish = Some(now);
        self.publishes += 1;
        let Some(shm) = self.shm.clone() else { return };
        let skipped_before = self.unpublished;
        let published = self.unix_ms(Some(now));
        for (id, d) in sessions {
            if !d.dirty {
                continue;
            }
            d.dirty = false;
            let mut slot = d.slot.unwrap_or(NO_SLOT);
            if let Some(i) = self.take_slot(id, &mut slot) {
                let rec = StatRecord::Session(SessionStats {
                    session: id,
                    packets_in: d.packets_in,
                    bytes_in: d.bytes_in,
                    packets_out: d.packets_out,
                    bytes_out: d.bytes_out,
                    auth_failures: d.auth_failures,
                    replays: d.replays,
                    last_in_unix_ms: self.unix_ms(d.last_in),
                    last_out_unix_ms: self.unix_ms(d.last_out),
                    published_unix_ms: published,
                    writer_pid: self.pid,
                    downlink_bps: d.downlink_bps,
                });
                shm.put_stat(self.worker, i, &rec);
                self.writes += 1;
            }
            d.slot = Some(slot);
            for s in d.rx.iter_mut() {
                s.roll_interval(now);
                let Some(i) = self.take_slot(id, &mut s.slot) else {
                    continue;
                };
                let rec = StatRecord::Stream(StreamStats {
                    session: id,
                    ssrc: s.ssrc,
                    dir: StreamDir::In,
                    packets: s.packets,
                    bytes: s.bytes,
                    last_unix_ms: self.unix_ms(s.last),
                    published_unix_ms: published,
                    writer_pid: self.pid,
                    reception: Some(s.stats()),
                    layer: None,
                });
                shm.put_stat(self.worker, i, &rec);
                self.writes += 1;
            }
            for s in d.tx.iter_mut() {
                let Some(i) = self.take_slot(id, &mut s.slot) else {
                    continue;
                };
                let rec = StatRecord::Stream(StreamStats {
                    session: id,
                    ssrc: s.ssrc,
                    dir: StreamDir::Out,
                    packets: s.packets,
                    bytes: s.bytes,
                    last_unix_ms: self.unix_ms(s.last),
                    published_unix_ms: published,
                    writer_pid: self.pid,
                    reception: None,
                    layer: s.layer,
                });
                shm.put_stat(self.worker, i, &rec);
                self.writes += 1;
            }
        }
        if skipped_before == 0 && self.unpublished != 0 {
            tracing::warn!(
                worker = self.worker,
                slots = self.own.len(),
                "session-stats region full: some sessions' diagnostics are not published"
            );
        }
    }

    /// Slot writes since the engine started.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Publish rounds since the engine started.
    pub fn publishes(&self) -> u64 {
        self.publishes
    }

    /// Records not published because this worker's region was full.
    pub fn unpublished(&self) -> u64 {
        self.unpublished
    }
}
