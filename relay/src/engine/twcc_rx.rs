//! Transport-cc feedback to one publisher (draft-holmer-rmcat-transport-wide-cc-extensions-01
//! §3): when the publisher's packets carry the transport-wide sequence extension (the id
//! control puts in the session's flags, `session_flags::twcc_id`), the worker that receives
//! them records each packet's transport-wide sequence number and arrival time, and every
//! [`FEEDBACK_INTERVAL`] writes one RTPFB FMT 15 message about what arrived since the last
//! one (`contract::wire::twcc::write_feedback`). The publisher's own congestion controller
//! (libwebrtc's send-side estimator) runs on it; without it a libwebrtc sender that
//! negotiated the extension holds its rate near the floor.
//!
//! A publisher's packets all reach one worker (the SO_REUSEPORT group hashes by source
//! address), so one recorder sees its whole numbering.
//!
//! Owns: the arrival ring of one publisher, fixed size, allocated once with the recorder.
//! May not touch: packets, the clock (time is passed in), SRTP, sending (the forwarder
//! protects and queues what [`UplinkTwcc::write`] fills in).

use contract::wire::twcc;

/// Arrivals remembered (a power of two): packets not yet reported. At 10 000 packets/s and a
/// 50 ms interval 500 arrive between two messages.
pub const RING: usize = 2048;
/// How often a publisher with unreported packets is sent feedback (libwebrtc's receivers send
/// it every 50–250 ms, adapting to the rate; the shortest keeps the sender's estimate fresh).
pub const FEEDBACK_INTERVAL_US: u64 = 50_000;
/// Most statuses one message reports: at most 20 + 74 + 512 + 3 bytes with two-byte deltas,
/// well inside one datagram with the SRTCP trailer.
pub const MAX_PER_MESSAGE: usize = 256;
/// A sequence number this far behind the newest one is a reordered straggler already
/// reported as lost, not a new packet.
const REORDER_LIMIT: u16 = 0x4000;

/// The uplink recorder of one publisher.
#[derive(Debug, Clone)]
pub struct UplinkTwcc {
    /// Arrival time + 1 µs of the sequence number at `seq & (RING - 1)` (0 = not arrived),
    /// and that sequence number.
    at: Box<[u64; RING]>,
    seqs: Box<[u16; RING]>,
    /// First sequence number not reported yet, and the newest one seen; `None` before the
    /// first packet.
    next: Option<u16>,
    high: u16,
    /// Feedback packet count (draft §3.1: incremented per message sent).
    fb_count: u8,
    /// A media SSRC of the publisher (the message's media source field, §3.1).
    media_ssrc: u32,
    /// Packets that fell out of the ring before they were reported (reported as lost).
    overrun: u64,
}

impl Default for UplinkTwcc {
    fn default() -> Self {
        Self::new()
    }
}

impl UplinkTwcc {
    pub fn new() -> UplinkTwcc {
        UplinkTwcc {
            at: Box::new([0; RING]),
            seqs: Box::new([0; RING]),
            next: None,
            high: 0,
            fb_count: 0,
            media_ssrc: 0,
            overrun: 0,
        }
    }

    /// Packet `seq` of SSRC `ssrc` arrived at `now_us`.
    #[inline]
    pub fn on_packet(&mut self, seq: u16, ssrc: u32, now_us: u64) {
        self.media_ssrc = ssrc;
        let next = match self.next {
            None => {
                self.next = Some(seq);
                self.high = seq;
                seq
            }
            Some(n) => n,
        };
        let ahead = seq.wrapping_sub(next);
        if ahead >= REORDER_LIMIT.wrapping_mul(2) {
            // Before the reported range: reported lost already (a straggler), or a jump far
            // back; either way nothing to add.
            return;
        }
        if seq.wrapping_sub(self.high) < REORDER_LIMIT && seq != self.high {
            self.high = seq;
        }
        // Keep the unreported range within the ring: the oldest entries are given up (they
        // will be reported as lost).
        let span = usize::from(self.high.wrapping_sub(next)) + 1;
        if span > RING {
            let drop = (span - RING) as u16;
            for k in 0..drop {
                let s = next.wrapping_add(k);
                self.at[usize::from(s) & (RING - 1)] = 0;
            }
            self.overrun += u64::from(drop);
            self.next = Some(next.wrapping_add(drop));
        }
        let i = usize::from(seq) & (RING - 1);
        self.at[i] = now_us.saturating_add(1);
        self.seqs[i] = seq;
    }

    /// Anything arrived that was not reported yet (the newest packet always arrived).
    pub fn pending(&self) -> bool {
        self.next.is_some_and(|n| n != self.high.wrapping_add(1))
    }

    fn arrived(&self, s: u16) -> Option<u64> {
        let i = usize::from(s) & (RING - 1);
        (self.at[i] != 0 && self.seqs[i] == s).then(|| self.at[i] - 1)
    }

    /// Writes one feedback message (plain RTCP) about the unreported range into `out`, sent as
    /// `sender_ssrc`; returns its length, or `None` when nothing arrived since the last one.
    /// The reported range is forgotten; a range longer than one message takes several calls.
    pub fn write(&mut self, out: &mut [u8], sender_ssrc: u32) -> Option<usize> {
        if !self.pending() {
            return None;
        }
        let mut next = self.next?;
        let span = usize::from(self.high.wrapping_sub(next)) + 1;
        // A message must hold an arrival: a loss run longer than a message before the
        // first arrival is skipped (unreported, which the sender also takes as lost).
        let first = (0..span).find(|&k| self.arrived(next.wrapping_add(k as u16)).is_some())?;
        if first >= MAX_PER_MESSAGE {
            self.overrun += first as u64;
            next = next.wrapping_add(first as u16);
        }
        let count = (usize::from(self.high.wrapping_sub(next)) + 1).min(MAX_PER_MESSAGE);
        let mut arrivals = [None; MAX_PER_MESSAGE];
        for (k, a) in arrivals.iter_mut().enumerate().take(count) {
            *a = self.arrived(next.wrapping_add(k as u16));
        }
        let h = twcc::FeedbackHeader {
            sender_ssrc,
            media_ssrc: self.media_ssrc,
            base_seq: next,
            fb_pkt_count: self.fb_count,
        };
        let (n, covered) = match twcc::write_feedback(out, &h, &arrivals[..count]) {
            Ok(w) => w,
            Err(_) => {
                // `out` too small for the range: given up, so the recorder never sticks.
                self.overrun += count as u64;
                self.next = Some(next.wrapping_add(count as u16));
                return None;
            }
        };
        self.fb_count = self.fb_count.wrapping_add(1);
        for k in 0..covered {
            let s = next.wrapping_add(k as u16);
            self.at[usize::from(s) & (RING - 1)] = 0;
        }
        self.next = Some(next.wrapping_add(covered as u16));
        Some(n)
    }

    /// Packets given up unreported: fallen out of the ring, or in a loss run longer than one
    /// message.
    pub fn overrun(&self) -> u64 {
        self.overrun
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::wire::rtcp::{Rtcp, RtcpPacket};

    fn parse(b: &[u8]) -> Vec<(u16, Option<i64>)> {
        let (p, _) = RtcpPacket::parse(b).unwrap();
        let Ok(Rtcp::TransportCc(fb)) = p.typed() else {
            panic!("not transport-cc");
        };
        let f = twcc::Feedback::parse(fb.fci()).unwrap();
        let mut t = i64::from(f.reference_time()) * twcc::REFERENCE_TICK_US as i64;
        f.packets()
            .map(|s| {
                (
                    s.seq,
                    s.delta.map(|d| {
                        t += i64::from(d) * twcc::DELTA_TICK_US as i64;
                        t
                    }),
                )
            })
            .collect()
    }

    #[test]
    fn reports_arrivals_and_losses_once_across_the_wrap() {
        let mut u = UplinkTwcc::new();
        let mut out = [0u8; 1500];
        assert_eq!(u.write(&mut out, 1), None, "nothing yet");
        // 65530..=65535, 0..=3 with 65533 and 1 lost; 2 arrives after 3.
        let t0 = 10_000_000u64;
        for (k, s) in [65530u16, 65531, 65532, 65534, 65535, 0, 3, 2]
            .iter()
            .enumerate()
        {
            u.on_packet(*s, 0xABCD, t0 + k as u64 * 1_000);
        }
        assert!(u.pending());
        let n = u.write(&mut out, 0xFEED).unwrap();
        let got = parse(&out[..n]);
        let seqs: Vec<u16> = got.iter().map(|g| g.0).collect();
        assert_eq!(
            seqs,
            vec![65530, 65531, 65532, 65533, 65534, 65535, 0, 1, 2, 3]
        );
        let lost: Vec<u16> = got.iter().filter(|g| g.1.is_none()).map(|g| g.0).collect();
        assert_eq!(lost, vec![65533, 1]);
        // Arrival times come back to the 250 µs tick.
        let a0 = got[0].1.unwrap();
        assert_eq!(got[1].1.unwrap() - a0, 1_000);
        assert_eq!(got[8].1.unwrap() - a0, 7_000, "2 arrived last");
        let (p, _) = RtcpPacket::parse(&out[..n]).unwrap();
        assert_eq!(p.sender_ssrc().unwrap(), 0xFEED);
        // Reported once: nothing more, and a straggler from before is not reported again.
        assert!(!u.pending());
        assert_eq!(u.write(&mut out, 0xFEED), None);
        u.on_packet(1, 0xABCD, t0 + 9_000);
        assert_eq!(u.write(&mut out, 0xFEED), None);
        // The next message continues at 4 with the next feedback count.
        u.on_packet(4, 0xABCD, t0 + 20_000);
        let n = u.write(&mut out, 0xFEED).unwrap();
        assert_eq!(
            parse(&out[..n]),
            vec![(4, Some(parse(&out[..n])[0].1.unwrap()))]
        );
        let (p, _) = RtcpPacket::parse(&out[..n]).unwrap();
        let Ok(Rtcp::TransportCc(fb)) = p.typed() else {
            panic!()
        };
        assert_eq!(twcc::Feedback::parse(fb.fci()).unwrap().fb_pkt_count(), 1);
    }

    #[test]
    fn a_long_burst_is_reported_in_several_messages_and_the_ring_bounds_it() {
        let mut u = UplinkTwcc::new();
        let mut out = [0u8; 1500];
        for s in 0..(RING as u16 + 100) {
            u.on_packet(s, 1, 1_000_000 + u64::from(s) * 100);
        }
        assert_eq!(u.overrun(), 100, "the oldest fell out of the ring");
        let mut reported = 0;
        while let Some(n) = u.write(&mut out, 9) {
            let got = parse(&out[..n]);
            assert!(got.iter().all(|g| g.1.is_some()));
            assert!(got.len() <= MAX_PER_MESSAGE);
            reported += got.len();
        }
        assert_eq!(reported, RING);
        assert!(!u.pending());
    }
}
