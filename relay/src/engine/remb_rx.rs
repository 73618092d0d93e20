//! REMB to one publisher that takes REMB and not transport-cc (draft-alvestrand-rmcat-remb-03):
//! the receive-side delay-based estimate in the shape of libwebrtc's
//! RemoteBitrateEstimatorAbsSendTime. The worker that receives the publisher's packets reads
//! each packet's abs-send-time (the extension id control puts in the session's flags,
//! `session_flags::abs_send_time_id`), unwraps it (24 bits of 1/2^18 s, wrapping every 64 s)
//! and feeds the packet to the same packet grouping (5 ms send bursts), trendline filter,
//! overuse detector and AIMD rate control on the received rate that the downlink estimator
//! runs on transport-cc feedback (bwe.rs, [`Bwe::on_received`]). At each feedback tick the
//! rate control runs over what arrived since the last one, and a REMB naming the publisher's
//! SSRCs goes out when the estimate fell by [`DECREASE_TRIGGER`] or more since the last one
//! sent, and otherwise every [`REMB_INTERVAL_US`]. aiortc and other stacks without
//! transport-cc set their encoder's target bitrate from it, and run no loss-based control of
//! their own: the REMB is also capped by a loss-based rate the relay keeps from the gaps in
//! the publisher's sequence numbers (libwebrtc's sender-side rule over [`LOSS_WINDOW_US`]),
//! which is what leaves a full tail-drop queue, where the delay no longer grows. A subscriber's own REMB about the
//! publisher's streams no longer goes on to the publisher: it caps the relay's for a while
//! ([`UplinkRemb::on_subscriber_remb`]), so the publisher hears one estimate.
//!
//! A publisher's packets all reach one worker (the SO_REUSEPORT group hashes by source
//! address), so one estimator sees all of them.
//!
//! Owns: the estimator of one publisher, fixed size, allocated once with it. May not touch:
//! packets, the clock (time is passed in), SRTP, sending (the forwarder protects and queues
//! what [`UplinkRemb::write`] fills in).

use super::bwe::{Bwe, BweConfig};
use contract::wire::twcc;

/// A REMB is repeated this often while the estimate holds or grows (libwebrtc sends one
/// every 200 ms to 1 s).
pub const REMB_INTERVAL_US: u64 = 500_000;
/// A REMB goes out at once (at the next feedback tick) when the estimate falls below this
/// fraction of the last one sent: a 3 % decrease, as libwebrtc's.
pub const DECREASE_TRIGGER: f64 = 0.97;
/// No packet for this long: the stream stopped. No REMB is sent until packets arrive again,
/// and the send-time clock is re-anchored on the next one (its abs-send-time may have
/// wrapped any number of times meanwhile).
pub const STREAM_TIMEOUT_US: u64 = 2_000_000;
/// Media SSRCs one REMB names (a publisher sends audio, video and their RTX, or simulcast
/// layers); later SSRCs are not named.
pub const MAX_SSRCS: usize = 8;
/// A subscriber's REMB about this publisher's streams caps the REMB sent to it this long.
pub const CEILING_TTL_US: u64 = 5_000_000;
/// Loss is measured over windows of at least this long and [`LOSS_MIN_PACKETS`] packets.
pub const LOSS_WINDOW_US: u64 = 1_000_000;
const LOSS_MIN_PACKETS: u32 = 20;
/// Above this fraction lost, the loss-based rate falls to `(1 - loss / 2)` of the rate sent,
/// and at most [`LOSS_BACKOFF`] of the received rate (the queue drains); below
/// [`LOSS_LOW`] it grows by 5 % a window; in between it holds (libwebrtc's thresholds).
const LOSS_HIGH: f64 = 0.10;
const LOSS_LOW: f64 = 0.02;
const LOSS_BACKOFF: f64 = 0.85;
/// abs-send-time wraps at 2^24 ticks (64 s).
const WRAP: u64 = 1 << 24;
/// Unwrapped send times start here (4096 s) so that a packet reordered before the first one
/// stays positive.
const ORIGIN: u64 = 1 << 30;

/// The receive-side estimator of one publisher.
#[derive(Debug, Clone)]
pub struct UplinkRemb {
    bwe: Bwe,
    min_bps: u64,
    max_bps: u64,
    /// Unwrapped send time (ticks) and raw 24-bit abs-send-time of the newest packet, and
    /// its arrival (µs); `None` before the first packet.
    newest: Option<(u64, u32, u64)>,
    /// Packets fed since the rate control last ran.
    fresh: bool,
    /// SSRCs seen carrying abs-send-time, in order of appearance, and the highest sequence
    /// number of each.
    ssrcs: [u32; MAX_SSRCS],
    highest: [u16; MAX_SSRCS],
    n_ssrcs: usize,
    /// The loss window: packets expected (sequence numbers advanced) and received since
    /// `loss_start` (µs), and the loss-based rate (bit/s).
    expected: u32,
    received: u32,
    loss_start: Option<u64>,
    loss_bps: f64,
    /// The last REMB sent: bit/s and when.
    sent: Option<(u64, u64)>,
    estimate: Option<u64>,
    /// The lowest REMB subscribers sent about the publisher's streams lately: bit/s and when.
    ceiling: Option<(u64, u64)>,
}

impl UplinkRemb {
    /// A fresh estimator: starts at `cfg.start_bps`, never below `cfg.min_bps`, and REMB never
    /// above `cfg.max_bps`.
    pub fn new(cfg: BweConfig) -> UplinkRemb {
        UplinkRemb {
            bwe: Bwe::new(cfg),
            min_bps: cfg.min_bps,
            max_bps: cfg.max_bps,
            newest: None,
            fresh: false,
            ssrcs: [0; MAX_SSRCS],
            highest: [0; MAX_SSRCS],
            n_ssrcs: 0,
            expected: 0,
            received: 0,
            loss_start: None,
            loss_bps: cfg.max_bps as f64,
            sent: None,
            estimate: None,
            ceiling: None,
        }
    }

    /// A packet of SSRC `ssrc` with sequence number `seq`, `size` bytes on the wire, stamped
    /// `abs_send_time` (the raw 24-bit value), arrived at `now_us`.
    #[inline]
    pub fn on_packet(&mut self, abs_send_time: u32, ssrc: u32, seq: u16, size: usize, now_us: u64) {
        match self.ssrcs[..self.n_ssrcs].iter().position(|&s| s == ssrc) {
            Some(i) => {
                // A step forward advances what was expected; a reordered or repeated packet
                // only counts as received (the window's loss is clamped at 0).
                let step = seq.wrapping_sub(self.highest[i]) as i16;
                if step > 0 {
                    self.expected += step as u32;
                    self.highest[i] = seq;
                }
                self.received += 1;
            }
            None if self.n_ssrcs < MAX_SSRCS => {
                self.ssrcs[self.n_ssrcs] = ssrc;
                self.highest[self.n_ssrcs] = seq;
                self.n_ssrcs += 1;
                self.expected += 1;
                self.received += 1;
            }
            // An SSRC beyond the ones named: its delay counts, its loss is not tracked.
            None => {}
        }
        self.loss_start.get_or_insert(now_us);
        let ast = abs_send_time & (WRAP as u32 - 1);
        let ticks = match self.newest {
            None => ORIGIN,
            Some((high, _, last)) if now_us.saturating_sub(last) > STREAM_TIMEOUT_US => {
                // After a pause the 24-bit clock says nothing about the time that passed: the
                // send clock moves on by the arrival gap, so the first new group continues the
                // old ones without a jump in queuing delay.
                high + now_us.saturating_sub(last) * twcc::ABS_SEND_TIME_HZ / 1_000_000
            }
            Some((high, high_ast, _)) => {
                let delta = u64::from(ast.wrapping_sub(high_ast)) & (WRAP - 1);
                if delta < WRAP / 2 {
                    high + delta
                } else {
                    // Sent before the newest one (reordered): behind it, by the short way.
                    high.saturating_sub(WRAP - delta)
                }
            }
        };
        match self.newest {
            Some((high, _, _)) if ticks < high => {}
            _ => self.newest = Some((ticks, ast, now_us)),
        }
        if let Some(n) = self.newest.as_mut() {
            n.2 = n.2.max(now_us);
        }
        // 10^6 / 2^18 = 15625 / 4096: exact, and no overflow for 2^50 ticks (136 years).
        let send_us = ticks * 15_625 / 4_096;
        self.bwe
            .on_received(send_us, now_us, size.min(u32::MAX as usize) as u32);
        self.fresh = true;
    }

    /// The feedback tick at `now_us`: runs the rate control over the packets since the last
    /// tick and returns the bitrate to send a REMB with now, if one is due: the estimate
    /// fell [`DECREASE_TRIGGER`] below the last REMB, or [`REMB_INTERVAL_US`] passed. `None`
    /// before the received rate is first measured (half a second of packets) and while the
    /// stream is stopped.
    pub fn tick(&mut self, now_us: u64) -> Option<u64> {
        let (_, _, last) = self.newest?;
        if now_us.saturating_sub(last) > STREAM_TIMEOUT_US {
            return None;
        }
        if self.fresh {
            self.fresh = false;
            let delay = self.bwe.update_delay_rate(now_us).min(self.max_bps);
            self.update_loss(now_us, delay);
            if self.bwe.acked_bps().is_some() {
                self.estimate = Some(delay.min(self.loss_bps as u64));
            }
        }
        let mut e = self.estimate?;
        if let Some((c, at)) = self.ceiling {
            if now_us.saturating_sub(at) < CEILING_TTL_US {
                e = e.min(c);
            }
        }
        let due = match self.sent {
            None => true,
            Some((bps, at)) => {
                (e as f64) < bps as f64 * DECREASE_TRIGGER
                    || now_us.saturating_sub(at) >= REMB_INTERVAL_US
            }
        };
        if !due {
            return None;
        }
        self.sent = Some((e, now_us));
        Some(e)
    }

    /// Closes the loss window once it is long enough: moves the loss-based rate, which never
    /// runs ahead of the delay-based `delay` (bit/s).
    fn update_loss(&mut self, now_us: u64, delay: u64) {
        let Some(start) = self.loss_start else {
            return;
        };
        if now_us.saturating_sub(start) < LOSS_WINDOW_US || self.expected < LOSS_MIN_PACKETS {
            return;
        }
        let lost = 1.0 - f64::from(self.received) / f64::from(self.expected);
        let cur = self.loss_bps.min(delay as f64);
        self.loss_bps = if lost > LOSS_HIGH {
            let drained = self
                .bwe
                .acked_bps()
                .map_or(f64::MAX, |r| LOSS_BACKOFF * r as f64);
            (cur * (1.0 - 0.5 * lost)).min(drained)
        } else if lost < LOSS_LOW {
            cur * 1.05 + 1000.0
        } else {
            cur
        };
        self.loss_bps = self.loss_bps.max(self.min_bps as f64);
        self.expected = 0;
        self.received = 0;
        self.loss_start = Some(now_us);
    }

    /// A subscriber's REMB of `bps` about the publisher's streams at `now_us`: instead of
    /// going on to the publisher (where it would contend with the relay's own), it caps the
    /// REMB the relay sends for [`CEILING_TTL_US`], as the lowest such REMB heard in that time
    /// (a higher one replaces it only once it expired: the weakest subscriber repeats its own).
    pub fn on_subscriber_remb(&mut self, now_us: u64, bps: u64) {
        let replace = match self.ceiling {
            None => true,
            Some((c, at)) => bps <= c || now_us.saturating_sub(at) >= CEILING_TTL_US,
        };
        if replace {
            self.ceiling = Some((bps, now_us));
        }
    }

    /// Writes a REMB for `bps` naming the publisher's SSRCs into `out` as `sender_ssrc`;
    /// returns its length, or `None` when `out` is too small.
    pub fn write(&self, out: &mut [u8], sender_ssrc: u32, bps: u64) -> Option<usize> {
        twcc::write_remb(out, sender_ssrc, bps, &self.ssrcs[..self.n_ssrcs]).ok()
    }

    /// The current estimate (bit/s), once the received rate was measured.
    pub fn estimate(&self) -> Option<u64> {
        self.estimate
    }

    /// The received rate the estimator measured (bit/s).
    pub fn received_bps(&self) -> Option<u64> {
        self.bwe.acked_bps()
    }

    /// Rate decreases the overuse detector made.
    pub fn decreases(&self) -> u64 {
        self.bwe.stats().decreases
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::wire::rtcp::{Rtcp, RtcpPacket};

    /// A publisher sending `rate_bps` in 1200-byte packets through a FIFO bottleneck of
    /// `capacity_bps` (20 ms propagation, tail drop past 300 ms of queue), optional loss
    /// every `loss_every`-th packet, into the estimator; a feedback tick every 50 ms. The
    /// sender follows the REMBs it gets, like aiortc's encoder.
    struct Run {
        remb: UplinkRemb,
        now_us: u64,
        /// Sender clock in abs-send-time ticks (wrapping through the 24 bits).
        send_clock_us: u64,
        rate_bps: f64,
        busy_until_us: f64,
        sent_rembs: Vec<u64>,
        /// When each of those was sent (µs).
        sent_at: Vec<u64>,
        follow: bool,
        n: u64,
    }

    const SIZE: usize = 1200;

    impl Run {
        fn new(rate_bps: f64, send_clock_us: u64) -> Run {
            Run {
                remb: UplinkRemb::new(BweConfig::default()),
                now_us: 1_000_000,
                send_clock_us,
                rate_bps,
                busy_until_us: 0.0,
                sent_rembs: Vec::new(),
                sent_at: Vec::new(),
                follow: true,
                n: 0,
            }
        }

        fn ast(&self) -> u32 {
            ((self.send_clock_us * twcc::ABS_SEND_TIME_HZ / 1_000_000) & (WRAP - 1)) as u32
        }

        /// `ms` of sending through a link of `capacity_bps` (`None`: unlimited).
        fn run(&mut self, ms: u64, capacity_bps: Option<f64>, loss_every: Option<u64>) {
            let end = self.now_us + ms * 1000;
            let mut next_tick = self.now_us + 50_000;
            let mut next_send = self.now_us as f64;
            let mut out = [0u8; 1500];
            while self.now_us < end {
                let gap = SIZE as f64 * 8.0 * 1e6 / self.rate_bps;
                while next_send <= self.now_us as f64 {
                    self.n += 1;
                    let ast = self.ast();
                    let lost = loss_every.is_some_and(|k| self.n % k == 0);
                    let arrival = match capacity_bps {
                        None => Some(self.now_us + 20_000),
                        Some(c) => {
                            let start = self.busy_until_us.max(self.now_us as f64);
                            if start - self.now_us as f64 > 300_000.0 {
                                None
                            } else {
                                self.busy_until_us = start + SIZE as f64 * 8.0 * 1e6 / c;
                                Some(self.busy_until_us as u64 + 20_000)
                            }
                        }
                    };
                    if let (Some(a), false) = (arrival, lost) {
                        // Arrivals are fed in send order; the FIFO keeps them in order.
                        self.remb.on_packet(ast, 0x1111, self.n as u16, SIZE, a);
                    }
                    next_send += gap;
                }
                if self.now_us >= next_tick {
                    next_tick += 50_000;
                    if let Some(bps) = self.remb.tick(self.now_us) {
                        let n = self.remb.write(&mut out, 0xFEED, bps).unwrap();
                        let (p, _) = RtcpPacket::parse(&out[..n]).unwrap();
                        let Ok(Rtcp::Remb(r)) = p.typed() else {
                            panic!("not REMB")
                        };
                        assert_eq!(r.ssrcs().collect::<Vec<_>>(), [0x1111]);
                        // The mantissa keeps 18 bits: within 2^-17 of the estimate.
                        assert!(r.bitrate().abs_diff(bps) <= bps >> 17);
                        self.sent_rembs.push(bps);
                        self.sent_at.push(self.now_us);
                        if self.follow {
                            self.rate_bps = (bps as f64).clamp(100_000.0, 3_000_000.0);
                        }
                    }
                }
                self.now_us += 1_000;
                self.send_clock_us += 1_000;
            }
        }

        fn last(&self) -> u64 {
            *self.sent_rembs.last().expect("a REMB was sent")
        }
    }

    #[test]
    fn abs_send_time_is_read_from_three_bytes() {
        assert_eq!(twcc::read_abs_send_time(&[0x12, 0x34, 0x56]), Ok(0x12_3456));
        assert_eq!(
            twcc::read_abs_send_time(&[1, 2]),
            Err(twcc::TwccError::BadAbsSendTimeLen(2))
        );
    }

    #[test]
    fn nothing_is_sent_before_the_rate_is_measured_then_repeated_every_interval() {
        let mut r = UplinkRemb::new(BweConfig::default());
        assert_eq!(r.tick(0), None, "no packet yet");
        let mut times = Vec::new();
        for k in 0..2_000u64 {
            // 1 Mbit/s: a 1200-byte packet every 9.6 ms, on a clean link.
            let t = k * 9_600;
            r.on_packet(
                (t * 262_144 / 1_000_000) as u32,
                7,
                k as u16,
                SIZE,
                t + 20_000,
            );
            if k % 5 == 0 {
                if let Some(b) = r.tick(t + 20_000) {
                    times.push((t + 20_000, b));
                }
            }
        }
        assert!(
            times[0].0 >= 500_000,
            "first REMB after the rate is measured"
        );
        for w in times.windows(2) {
            let dt = w[1].0 - w[0].0;
            assert!(
                (REMB_INTERVAL_US..REMB_INTERVAL_US + 60_000).contains(&dt),
                "steady estimate: one REMB per interval, got {dt} µs"
            );
        }
        assert!(
            times.iter().all(|x| x.1 >= 1_000_000),
            "a clean link keeps the estimate above what is sent: {times:?}"
        );
        // The stream stops: no more REMB.
        assert_eq!(r.tick(1_999 * 9_600 + 20_000 + STREAM_TIMEOUT_US + 1), None);
    }

    #[test]
    fn step_down_follows_the_link_and_step_up_recovers() {
        let mut run = Run::new(1_500_000.0, 10_000_000);
        run.run(5_000, None, None);
        let free = run.last();
        assert!(free >= 1_500_000, "unshaped: stays high, got {free}");
        // The link narrows to 500 kbit/s: queuing delay grows, the estimate falls to it.
        let before = run.sent_rembs.len();
        run.run(20_000, Some(500_000.0), None);
        let shaped = &run.sent_rembs[before..];
        let low = run.last();
        assert!(
            (250_000..=650_000).contains(&low),
            "shaped at 500 kbit/s: REMB {low} ({shaped:?})"
        );
        assert!(run.remb.decreases() > 0);
        // The limit is lifted: the estimate climbs well above the old link rate again.
        run.run(30_000, None, None);
        let up = run.last();
        assert!(up >= 1_000_000, "lifted: REMB {up}");
    }

    #[test]
    fn a_decrease_is_sent_at_once() {
        let mut run = Run::new(1_500_000.0, 0);
        run.follow = false;
        // The step comes 250 ms after a periodic REMB (one every 500 ms from the start), so a
        // REMB before the next periodic one is a decrease sent at once.
        run.run(3_250, None, None);
        let n = run.sent_rembs.len();
        let t0 = run.now_us;
        assert!(t0 - run.sent_at[n - 1] >= 200_000, "{:?}", run.sent_at);
        // Far more than the link carries, and the sender does not listen: overuse.
        run.run(3_000, Some(300_000.0), None);
        let after = &run.sent_rembs[n..];
        let first = (n..run.sent_rembs.len())
            .find(|&i| (run.sent_rembs[i] as f64) < run.sent_rembs[i - 1] as f64 * DECREASE_TRIGGER)
            .unwrap_or_else(|| panic!("no fall: {after:?}"));
        let at = run.sent_at[first] - run.sent_at[first - 1];
        assert!(
            at < REMB_INTERVAL_US,
            "the fall went out {at} µs after the REMB before it, not on the periodic schedule: \
             {after:?}"
        );
        // And it fell to the link's rate or below at once (the recent received rate, bwe.rs).
        assert!(run.sent_rembs[first] <= 300_000, "{after:?}");
    }

    #[test]
    fn random_loss_without_queuing_does_not_lower_the_estimate() {
        // The estimate is delay-based: 5 % loss on an uncongested link is no overuse.
        let mut run = Run::new(1_000_000.0, 5_000_000);
        run.follow = false;
        run.run(10_000, None, Some(20));
        assert_eq!(run.remb.decreases(), 0);
        assert!(run.last() >= 1_000_000, "{:?}", run.sent_rembs);
        assert!(run.remb.received_bps().unwrap() > 800_000);
    }

    #[test]
    fn heavy_loss_without_queuing_lowers_the_remb_below_what_arrives() {
        // 25 % lost and no delay to see: the loss-based rate takes the REMB below what
        // arrives (what a sender with no loss control of its own needs); 5 % would hold it.
        let mut run = Run::new(1_000_000.0, 0);
        run.follow = false;
        run.run(3_000, None, None);
        assert!(run.last() >= 1_000_000);
        run.run(5_000, None, Some(4));
        assert_eq!(run.remb.decreases(), 0, "no delay-based decrease");
        let received = run.remb.received_bps().unwrap();
        assert!(
            run.last() <= received * 85 / 100,
            "REMB {} vs {received} received: {:?}",
            run.last(),
            run.sent_rembs
        );
    }

    #[test]
    fn the_send_clock_wraps_at_64_seconds() {
        // Start 2 s before the 24-bit clock wraps and run across it, then shape: the wrap is
        // no jump in delay (no decrease while clean), and overuse after it is still seen.
        let mut run = Run::new(1_200_000.0, 62_000_000);
        run.follow = false;
        run.run(6_000, None, None);
        assert!(run.send_clock_us > 64_000_000, "crossed the wrap");
        assert_eq!(run.remb.decreases(), 0, "{:?}", run.sent_rembs);
        let high = run.last();
        assert!(high >= 1_200_000);
        run.follow = true;
        run.run(15_000, Some(400_000.0), None);
        assert!(run.last() <= 550_000, "{:?}", run.sent_rembs);
    }

    #[test]
    fn a_subscribers_remb_caps_the_remb_sent_until_it_expires() {
        let mut run = Run::new(1_000_000.0, 0);
        run.follow = false;
        run.run(2_000, None, None);
        assert!(run.last() >= 1_000_000);
        let t = run.now_us;
        run.remb.on_subscriber_remb(t, 400_000);
        // A higher one from another subscriber does not lift it while it holds.
        run.remb.on_subscriber_remb(t + 100_000, 900_000);
        let n = run.sent_rembs.len();
        run.run(1_000, None, None);
        assert_eq!(run.sent_rembs[n], 400_000, "sent at once: a decrease");
        assert_eq!(run.last(), 400_000);
        // Not repeated: it expires, and the estimate is sent again.
        run.run(CEILING_TTL_US / 1000, None, None);
        assert!(run.last() >= 1_000_000, "{:?}", &run.sent_rembs[n..]);
    }

    #[test]
    fn a_pause_longer_than_the_timeout_reanchors_the_send_clock() {
        let mut r = UplinkRemb::new(BweConfig::default());
        let feed = |r: &mut UplinkRemb, from_us: u64, clock_us: u64, seq0: u16| {
            for k in 0..300u64 {
                let t = from_us + k * 10_000;
                let ast = (((clock_us + k * 10_000) * 262_144 / 1_000_000) % WRAP) as u32;
                r.on_packet(ast, 7, seq0 + k as u16, SIZE, t);
                if k % 5 == 0 {
                    r.tick(t);
                }
            }
        };
        feed(&mut r, 0, 0, 0);
        let e = r.estimate().unwrap();
        // 100 s of silence, then the sender's clock went on by 100 s too (wrapped once and
        // then some): the estimate carries on, no phantom overuse.
        assert_eq!(r.tick(3_000_000 + STREAM_TIMEOUT_US + 1), None, "stopped");
        feed(&mut r, 103_000_000, 103_000_000, 300);
        assert_eq!(r.decreases(), 0);
        assert!(r.estimate().unwrap() >= e);
        assert_eq!(r.ssrcs[..r.n_ssrcs], [7]);
    }
}
