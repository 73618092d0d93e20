//! RTCP packets the relay writes itself: sender and receiver reports (RFC 3550 §6.4), generic
//! NACK and PLI (RFC 4585 §6.2.1, §6.3.1) and FIR (RFC 5104 §4.3.1).
//!
//! Each writer fills the front of the caller's buffer and returns the bytes written; nothing
//! allocates, and a buffer too small for the packet is an error, never a panic. The packets
//! are plain RTCP (the caller protects them as SRTCP); several may be written back to back to
//! form a compound (RFC 3550 §6.1).
//!
//! Owns: the byte layout of these packets. May not touch: SRTCP, the clock (NTP times and
//! delays are given).

use super::rtcp::{fmt, packet_type, FirEntry, ReportBlock};

/// Why a packet could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The buffer holds fewer bytes than the packet needs.
    #[error("buffer too small: {need} bytes needed, {have} available")]
    BufferTooSmall { need: usize, have: usize },
    /// More report blocks (or FCI entries) than one packet can carry (31 report blocks,
    /// RFC 3550 §6.4.1; the 16-bit length for FCI).
    #[error("too many entries for one RTCP packet: {0}")]
    TooMany(usize),
}

/// Most report blocks one SR or RR carries (the 5-bit count).
pub const MAX_REPORT_BLOCKS: usize = 31;
/// Bytes of one report block.
pub const REPORT_BLOCK_LEN: usize = 24;

/// The sender-info part of a sender report (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    pub ssrc: u32,
    /// 64-bit NTP timestamp (seconds since 1900 in the high 32 bits, fraction in the low 32).
    pub ntp: u64,
    /// The same instant in the stream's RTP clock.
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

fn room(out: &[u8], need: usize) -> Result<(), WriteError> {
    if out.len() < need {
        Err(WriteError::BufferTooSmall {
            need,
            have: out.len(),
        })
    } else {
        Ok(())
    }
}

/// The common header: V=2, no padding, `count`, `pt`, length in 32-bit words minus one.
fn header(out: &mut [u8], count: u8, pt: u8, len: usize) {
    out[0] = 0x80 | (count & 0x1F);
    out[1] = pt;
    let words = (len / 4 - 1) as u16;
    out[2..4].copy_from_slice(&words.to_be_bytes());
}

fn put32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Write one report block. The cumulative loss is clamped to its 24-bit signed range
/// (RFC 3550 §6.4.1: "clamped" when it does not fit).
fn report_block(out: &mut [u8], rb: &ReportBlock) {
    let lost = rb.cumulative_lost.clamp(-0x80_0000, 0x7F_FFFF) as u32 & 0x00FF_FFFF;
    put32(out, 0, rb.ssrc);
    put32(out, 4, (u32::from(rb.fraction_lost) << 24) | lost);
    put32(out, 8, rb.highest_sequence);
    put32(out, 12, rb.jitter);
    put32(out, 16, rb.last_sr);
    put32(out, 20, rb.delay_since_last_sr);
}

fn blocks_len(blocks: &[ReportBlock]) -> Result<usize, WriteError> {
    if blocks.len() > MAX_REPORT_BLOCKS {
        return Err(WriteError::TooMany(blocks.len()));
    }
    Ok(blocks.len() * REPORT_BLOCK_LEN)
}

/// A sender report with its report blocks (RFC 3550 §6.4.1).
pub fn sender_report(
    out: &mut [u8],
    info: &SenderInfo,
    blocks: &[ReportBlock],
) -> Result<usize, WriteError> {
    let len = 28 + blocks_len(blocks)?;
    room(out, len)?;
    header(out, blocks.len() as u8, packet_type::SR, len);
    put32(out, 4, info.ssrc);
    put32(out, 8, (info.ntp >> 32) as u32);
    put32(out, 12, info.ntp as u32);
    put32(out, 16, info.rtp_timestamp);
    put32(out, 20, info.packet_count);
    put32(out, 24, info.octet_count);
    for (i, rb) in blocks.iter().enumerate() {
        report_block(&mut out[28 + i * REPORT_BLOCK_LEN..], rb);
    }
    Ok(len)
}

/// A receiver report from `ssrc` with its report blocks (RFC 3550 §6.4.2); with no block it
/// is the empty RR that heads a compound that has nothing to report.
pub fn receiver_report(
    out: &mut [u8],
    ssrc: u32,
    blocks: &[ReportBlock],
) -> Result<usize, WriteError> {
    let len = 8 + blocks_len(blocks)?;
    room(out, len)?;
    header(out, blocks.len() as u8, packet_type::RR, len);
    put32(out, 4, ssrc);
    for (i, rb) in blocks.iter().enumerate() {
        report_block(&mut out[8 + i * REPORT_BLOCK_LEN..], rb);
    }
    Ok(len)
}

/// Longest CNAME [`sdes_cname`] writes (the item's length octet allows 255; RFC 3550 §6.5.1).
pub const MAX_CNAME: usize = 255;

/// A source description with one chunk: `ssrc` and its CNAME item (RFC 3550 §6.5), the item
/// list ended by a null octet and padded to a 32-bit boundary.
pub fn sdes_cname(out: &mut [u8], ssrc: u32, cname: &[u8]) -> Result<usize, WriteError> {
    if cname.len() > MAX_CNAME {
        return Err(WriteError::TooMany(cname.len()));
    }
    // Header, SSRC, type and length, the value, at least one null octet, padding.
    let len = (8 + 2 + cname.len() + 1).div_ceil(4) * 4;
    room(out, len)?;
    header(out, 1, packet_type::SDES, len);
    put32(out, 4, ssrc);
    out[8] = 1; // CNAME
    out[9] = cname.len() as u8;
    out[10..10 + cname.len()].copy_from_slice(cname);
    out[10 + cname.len()..len].fill(0);
    Ok(len)
}

/// The NTP timestamp (RFC 3550 §4: seconds since 1900 ‖ 32-bit fraction) `d` after `ntp`.
pub fn ntp_add(ntp: u64, d: core::time::Duration) -> u64 {
    let secs = d.as_secs() << 32;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    ntp.wrapping_add(secs).wrapping_add(frac)
}

/// The middle 32 bits of an NTP timestamp: the LSR field of a report block (RFC 3550 §6.4.1).
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// A delay in units of 1/65536 s, saturating: the DLSR field of a report block (§6.4.1).
pub fn dlsr(d: core::time::Duration) -> u32 {
    let units = (d.as_nanos() << 16) / 1_000_000_000;
    units.min(u128::from(u32::MAX)) as u32
}

/// Picture loss indication from `sender_ssrc` about `media_ssrc` (RFC 4585 §6.3.1).
pub fn pli(out: &mut [u8], sender_ssrc: u32, media_ssrc: u32) -> Result<usize, WriteError> {
    room(out, 12)?;
    header(out, fmt::PLI, packet_type::PSFB, 12);
    put32(out, 4, sender_ssrc);
    put32(out, 8, media_ssrc);
    Ok(12)
}

/// Full intra request (RFC 5104 §4.3.1): the media-source field is 0, each entry names the
/// sender asked for a decoder refresh point and its command sequence number.
pub fn fir(out: &mut [u8], sender_ssrc: u32, entries: &[FirEntry]) -> Result<usize, WriteError> {
    if entries.is_empty() || entries.len() > 8_000 {
        return Err(WriteError::TooMany(entries.len()));
    }
    let len = 12 + 8 * entries.len();
    room(out, len)?;
    header(out, fmt::FIR, packet_type::PSFB, len);
    put32(out, 4, sender_ssrc);
    put32(out, 8, 0);
    for (i, e) in entries.iter().enumerate() {
        let at = 12 + 8 * i;
        put32(out, at, e.ssrc);
        put32(out, at + 4, u32::from(e.seq_nr) << 24);
    }
    Ok(len)
}

/// Generic NACK from `sender_ssrc` about `media_ssrc` (RFC 4585 §6.2.1) for the sequence
/// numbers in `lost`, given in sending order (wrapping allowed). Each run of a lost packet and
/// the 16 after it becomes one PID/BLP pair; as many pairs as fit in `out` are written, and
/// the count of sequence numbers that did not fit is returned beside the length, for the
/// caller to send in another packet.
pub fn nack(
    out: &mut [u8],
    sender_ssrc: u32,
    media_ssrc: u32,
    lost: &[u16],
) -> Result<(usize, usize), WriteError> {
    if lost.is_empty() {
        return Err(WriteError::TooMany(0));
    }
    room(out, 16)?;
    let max_pairs = (out.len() - 12) / 4;
    let mut pairs = 0usize;
    let mut i = 0usize;
    while i < lost.len() && pairs < max_pairs {
        let pid = lost[i];
        let mut blp = 0u16;
        i += 1;
        while i < lost.len() {
            let d = lost[i].wrapping_sub(pid);
            if d == 0 || d > 16 {
                break;
            }
            blp |= 1 << (d - 1);
            i += 1;
        }
        let at = 12 + 4 * pairs;
        out[at..at + 2].copy_from_slice(&pid.to_be_bytes());
        out[at + 2..at + 4].copy_from_slice(&blp.to_be_bytes());
        pairs += 1;
    }
    let len = 12 + 4 * pairs;
    header(out, fmt::NACK, packet_type::RTPFB, len);
    put32(out, 4, sender_ssrc);
    put32(out, 8, media_ssrc);
    Ok((len, lost.len() - i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;

    #[test]
    fn sdes_cname_is_one_padded_chunk() {
        let mut b = [0u8; 64];
        for (name, want) in [(&b"ab"[..], 16), (b"abcdef", 20), (b"", 12)] {
            let n = sdes_cname(&mut b, 0x1234, name).unwrap();
            assert_eq!(n, want, "{name:?}");
            let (p, rest) = crate::wire::rtcp::RtcpPacket::parse(&b[..n]).unwrap();
            assert!(rest.is_empty());
            let Ok(Rtcp::Sdes(sdes)) = p.typed() else {
                panic!("not SDES");
            };
            let chunks: Vec<_> = sdes.chunks().collect();
            assert_eq!(chunks.len(), 1);
            assert_eq!(chunks[0].ssrc, 0x1234);
            assert_eq!(chunks[0].items().collect::<Vec<_>>(), [(1u8, name)]);
        }
        assert_eq!(
            sdes_cname(&mut [0u8; 15], 1, b"ab"),
            Err(WriteError::BufferTooSmall { need: 16, have: 15 })
        );
        assert_eq!(
            sdes_cname(&mut b, 1, &[b'x'; 256]),
            Err(WriteError::TooMany(256))
        );
    }

    #[test]
    fn ntp_arithmetic_follows_rfc_3550() {
        // 1.5 s later: one second and half of 2^32 in the fraction.
        let t = 0x0000_0010_8000_0000u64;
        assert_eq!(
            ntp_add(t, Duration::from_millis(1500)),
            0x0000_0012_0000_0000
        );
        // LSR: the middle 32 bits of the 64-bit timestamp.
        assert_eq!(ntp_middle(0xB44D_B705_2000_0000), 0xB705_2000);
        // DLSR: §6.4.1's example, 5.250 s = 0x0005_4000.
        assert_eq!(dlsr(Duration::from_millis(5250)), 0x0005_4000);
        assert_eq!(dlsr(Duration::from_secs(1 << 20)), u32::MAX);
    }
    use crate::wire::rtcp::{packets, Rtcp};

    fn block(ssrc: u32, lost: i32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 12,
            cumulative_lost: lost,
            highest_sequence: 0x0001_0005,
            jitter: 77,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 65_536,
        }
    }

    #[test]
    fn sr_and_rr_parse_back_as_written() {
        let mut buf = [0u8; 256];
        let info = SenderInfo {
            ssrc: 0xAABB_CCDD,
            ntp: 0xE8F0_0000_8000_0000,
            rtp_timestamp: 90_000,
            packet_count: 10,
            octet_count: 12_000,
        };
        let blocks = [block(1, -3), block(2, 0x7F_FFFF)];
        let n = sender_report(&mut buf, &info, &blocks).unwrap();
        assert_eq!(n, 28 + 48);
        let m = receiver_report(&mut buf[n..], 0x0102_0304, &[block(3, 5)]).unwrap();
        let mut it = packets(&buf[..n + m]);
        match it.next().unwrap().unwrap().typed().unwrap() {
            Rtcp::SenderReport(sr) => {
                assert_eq!(sr.ssrc(), info.ssrc);
                assert_eq!(sr.ntp_timestamp(), info.ntp);
                assert_eq!(sr.rtp_timestamp(), 90_000);
                assert_eq!((sr.packet_count(), sr.octet_count()), (10, 12_000));
                let got: Vec<ReportBlock> = sr.report_blocks().collect();
                assert_eq!(got, blocks);
            }
            other => panic!("{other:?}"),
        }
        match it.next().unwrap().unwrap().typed().unwrap() {
            Rtcp::ReceiverReport(rr) => {
                assert_eq!(rr.ssrc(), 0x0102_0304);
                assert_eq!(rr.report_blocks().collect::<Vec<_>>(), [block(3, 5)]);
            }
            other => panic!("{other:?}"),
        }
        assert!(it.next().is_none());
    }

    #[test]
    fn cumulative_loss_is_clamped_to_24_bits() {
        let mut buf = [0u8; 32];
        receiver_report(&mut buf, 1, &[block(9, 50_000_000)]).unwrap();
        assert_eq!(&buf[13..16], [0x7F, 0xFF, 0xFF]);
        receiver_report(&mut buf, 1, &[block(9, -50_000_000)]).unwrap();
        assert_eq!(&buf[13..16], [0x80, 0x00, 0x00]);
    }

    #[test]
    fn too_small_and_too_many_are_errors() {
        let mut small = [0u8; 27];
        assert_eq!(
            sender_report(&mut small, &SenderInfo::default(), &[]),
            Err(WriteError::BufferTooSmall { need: 28, have: 27 })
        );
        let blocks = [block(1, 0); 32];
        let mut buf = [0u8; 2048];
        assert_eq!(
            receiver_report(&mut buf, 1, &blocks),
            Err(WriteError::TooMany(32))
        );
        assert_eq!(
            pli(&mut small[..11], 1, 2),
            Err(WriteError::BufferTooSmall { need: 12, have: 11 })
        );
    }

    #[test]
    fn pli_and_fir_parse_back() {
        let mut buf = [0u8; 64];
        let n = pli(&mut buf, 7, 8).unwrap();
        match packets(&buf[..n]).next().unwrap().unwrap().typed().unwrap() {
            Rtcp::Pli(p) => {
                assert_eq!((p.sender_ssrc(), p.media_ssrc()), (7, 8));
            }
            other => panic!("{other:?}"),
        }
        let e = [
            FirEntry {
                ssrc: 0x55,
                seq_nr: 3,
            },
            FirEntry {
                ssrc: 0x66,
                seq_nr: 255,
            },
        ];
        let n = fir(&mut buf, 7, &e).unwrap();
        match packets(&buf[..n]).next().unwrap().unwrap().typed().unwrap() {
            Rtcp::Fir(f) => assert_eq!(f.entries().collect::<Vec<_>>(), e),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nack_packs_runs_into_pid_blp_pairs_across_the_wrap() {
        let mut buf = [0u8; 64];
        let lost = [65_534u16, 65_535, 0, 16, 17, 40];
        let (n, left) = nack(&mut buf, 1, 2, &lost).unwrap();
        assert_eq!(left, 0);
        match packets(&buf[..n]).next().unwrap().unwrap().typed().unwrap() {
            Rtcp::Nack(k) => {
                assert_eq!(k.lost().collect::<Vec<_>>(), lost);
                // 65534 covers 65535 and 0; 16 (18 past 65534) starts a pair covering 17; 40
                // is a pair of its own.
                assert_eq!(k.pairs().count(), 3);
            }
            other => panic!("{other:?}"),
        }
        // Only two pairs fit: the rest is reported as left over.
        let (n, left) = nack(&mut buf[..20], 1, 2, &lost).unwrap();
        assert_eq!((n, left), (20, 1));
    }
}
