//! Reception statistics of one incoming RTP stream, as RFC 3550 Appendix A defines them: the
//! sequence-number bookkeeping with probation and resynchronisation (A.1), expected and lost
//! packets with the fraction lost since the last report (A.3), and the interarrival jitter
//! estimate (A.8). They feed the per-stream diagnostics ([`super::diag`]: every received
//! stream of every session) and fill the report blocks of receiver reports
//! ([`contract::wire::rtcp_write`]).
//!
//! Owns: the arithmetic. May not touch: the clock (arrival times come in RTP clock units from
//! the caller), sockets, SRTP.

use contract::wire::rtcp::ReportBlock;

const RTP_SEQ_MOD: u32 = 1 << 16;
/// A.1: a jump forward of more than this many sequence numbers is not accepted at once.
const MAX_DROPOUT: u16 = 3000;
/// A.1: a jump backward of at most this many is a reordered (or duplicate) packet.
const MAX_MISORDER: u16 = 100;
/// A.1: sequential packets needed before a new source is valid.
const MIN_SEQUENTIAL: u32 = 2;

/// The state A.1 calls `source`, with A.8's jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reception {
    max_seq: u16,
    cycles: u32,
    base_seq: u32,
    bad_seq: u32,
    probation: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// Last relative transit time, RTP units (A.8); `None` before the first packet.
    transit: Option<u32>,
    /// Jitter estimate, RTP units scaled by 16 (A.8: `jitter += d - ((jitter + 8) >> 4)`).
    jitter_q4: u32,
}

impl Reception {
    /// A new source whose first packet has sequence number `seq` (A.1 `init_seq` with
    /// probation).
    pub fn new(seq: u16) -> Reception {
        let mut r = Reception {
            max_seq: seq.wrapping_sub(1),
            cycles: 0,
            base_seq: 0,
            bad_seq: RTP_SEQ_MOD + 1,
            probation: MIN_SEQUENTIAL,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            transit: None,
            jitter_q4: 0,
        };
        r.init_seq(seq);
        r.max_seq = seq.wrapping_sub(1);
        r.probation = MIN_SEQUENTIAL;
        r
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    /// A packet with sequence number `seq` arrived (A.1 `update_seq`). Returns false when it
    /// is not counted (source on probation, a wild jump waiting for confirmation, or reordered
    /// beyond [`MAX_MISORDER`]).
    pub fn update_seq(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        }
        if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            // A very large jump: accept it only when the next packet follows it (the sender
            // restarted), A.1.
            if u32::from(seq) == self.bad_seq {
                self.init_seq(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return false;
            }
        }
        // else: a duplicate or reordered packet, counted.
        self.received += 1;
        true
    }

    /// A.8: account a packet with RTP timestamp `rtp_ts` arriving at `arrival` (the receiver's
    /// clock in the stream's RTP units).
    pub fn update_jitter(&mut self, rtp_ts: u32, arrival: u32) {
        let transit = arrival.wrapping_sub(rtp_ts);
        if let Some(prev) = self.transit {
            let d = (transit.wrapping_sub(prev) as i32).unsigned_abs();
            // jitter += (1/16) * (|D| - jitter), in Q4.
            self.jitter_q4 = self
                .jitter_q4
                .wrapping_add(d)
                .wrapping_sub((self.jitter_q4 + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    /// The extended highest sequence number received (A.3: cycles + max_seq).
    pub fn extended_max(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    /// Packets expected so far (A.3).
    pub fn expected(&self) -> u32 {
        self.extended_max()
            .wrapping_sub(self.base_seq)
            .wrapping_add(1)
    }

    /// Packets counted by [`Reception::update_seq`] since the source was validated (A.1
    /// `received`, duplicates included).
    pub fn received(&self) -> u32 {
        self.received
    }

    /// Cumulative packets lost (A.3; negative with duplicates).
    pub fn lost(&self) -> i64 {
        i64::from(self.expected()) - i64::from(self.received)
    }

    /// The interarrival jitter in RTP units (A.8: the Q4 estimate shifted back).
    pub fn jitter(&self) -> u32 {
        self.jitter_q4 >> 4
    }

    /// The report block for this source (RFC 3550 §6.4.1), with `last_sr` and `dlsr` from the
    /// caller; starts a new interval for the fraction lost (A.3).
    pub fn report_block(&mut self, ssrc: u32, last_sr: u32, dlsr: u32) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        self.expected_prior = expected;
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        };
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: self.lost().clamp(-0x80_0000, 0x7F_FFFF) as i32,
            highest_sequence: self.extended_max(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr: dlsr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source validated by its first two packets.
    fn started(seq: u16) -> Reception {
        let mut r = Reception::new(seq);
        assert!(!r.update_seq(seq), "first packet: on probation");
        assert!(
            r.update_seq(seq.wrapping_add(1)),
            "second sequential: valid"
        );
        r
    }

    #[test]
    fn counts_across_the_wrap_and_reports_loss() {
        let mut r = started(65_530);
        // 65_532 ..= 65_535, 0 ..= 9 with 3 and 7 missing.
        for s in (65_532u32..65_536)
            .chain(0..10)
            .filter(|s| *s != 3 && *s != 7)
        {
            assert!(r.update_seq(s as u16));
        }
        assert_eq!(r.extended_max(), 65_536 + 9);
        assert_eq!(r.expected(), 15, "65_531 ..= 65_536 + 9");
        assert_eq!(r.lost(), 2);
        let rb = r.report_block(0x55, 0xAABB, 65_536);
        assert_eq!(rb.cumulative_lost, 2);
        assert_eq!(rb.highest_sequence, 65_545);
        // 2 lost of 15 expected: 2 * 256 / 15 = 34 (A.3, integer division).
        assert_eq!(rb.fraction_lost, 34);
        assert_eq!((rb.last_sr, rb.delay_since_last_sr), (0xAABB, 65_536));
        // A new interval with nothing lost.
        for s in 10..20u16 {
            r.update_seq(s);
        }
        assert_eq!(r.report_block(0x55, 0, 0).fraction_lost, 0);
        // Packet 3 arrives late: counted, the cumulative loss goes down.
        assert!(r.update_seq(3));
        assert_eq!(r.lost(), 1);
    }

    #[test]
    fn a_wild_jump_needs_a_second_packet_to_resync() {
        let mut r = started(100);
        assert!(!r.update_seq(40_000), "jump > MAX_DROPOUT: held");
        assert!(r.update_seq(40_001), "confirmed: resynchronised");
        assert_eq!(r.extended_max(), 40_001);
        assert_eq!(r.expected(), 1, "the count restarts at the new base");
    }

    #[test]
    fn jitter_follows_a_8() {
        let mut r = started(1);
        // Constant transit: no jitter.
        for i in 0..10u32 {
            r.update_jitter(i * 3000, 1_000 + i * 3000);
        }
        assert_eq!(r.jitter(), 0);
        // Every packet 160 units late relative to the previous: J converges towards 160.
        let mut j = 0f64;
        let mut arrival = 1_000 + 10 * 3000;
        for i in 10..400u32 {
            arrival += 3000 + 160;
            r.update_jitter(i * 3000, arrival);
            j += (160.0 - j) / 16.0;
        }
        assert!(
            (f64::from(r.jitter()) - j).abs() <= 1.0,
            "{} vs {j}",
            r.jitter()
        );
        assert!(r.jitter() >= 158, "{}", r.jitter());
    }
}
