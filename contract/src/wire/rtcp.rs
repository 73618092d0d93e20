//! RTCP (RFC 3550 §6) with the feedback messages of RFC 4585 and RFC 5104.
//!
//! Owns: iteration over a compound packet ([`packets`], [`packets_mut`]), typed read-only
//! views ([`Rtcp`]) for SR, RR, SDES, BYE, APP, generic NACK, PLI, FIR, and the opaque
//! pass-through of transport-wide CC and REMB; in-place SSRC rewrites for the relay's
//! forwarding (sender reports towards subscribers, PLI/FIR/NACK towards publishers); and
//! [`is_rtcp`] for RTP/RTCP multiplexing (RFC 5761 §4). May not touch: SRTCP (the caller
//! strips the SRTCP index and tag before building views), sockets, the clock.
//!
//! ```text
//! |V=2|P| RC/FMT  |      PT       |     length (words - 1)        |
//! ```

use super::{be16, be32, put16, put32};

/// Length of the common RTCP header.
pub const HEADER_LEN: usize = 4;

/// RTCP packet types (RFC 3550 §12.1, RFC 4585 §6.1).
pub mod packet_type {
    /// Sender report.
    pub const SR: u8 = 200;
    /// Receiver report.
    pub const RR: u8 = 201;
    /// Source description.
    pub const SDES: u8 = 202;
    /// Goodbye.
    pub const BYE: u8 = 203;
    /// Application-defined.
    pub const APP: u8 = 204;
    /// Transport-layer feedback (RFC 4585 §6.2).
    pub const RTPFB: u8 = 205;
    /// Payload-specific feedback (RFC 4585 §6.3).
    pub const PSFB: u8 = 206;
}

/// Feedback message types (FMT) used by Sluice.
pub mod fmt {
    /// RTPFB: generic NACK (RFC 4585 §6.2.1).
    pub const NACK: u8 = 1;
    /// RTPFB: transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions).
    pub const TWCC: u8 = 15;
    /// PSFB: picture loss indication (RFC 4585 §6.3.1).
    pub const PLI: u8 = 1;
    /// PSFB: full intra request (RFC 5104 §4.3.1).
    pub const FIR: u8 = 4;
    /// PSFB: application-layer feedback (RFC 4585 §6.4), carrying REMB.
    pub const AFB: u8 = 15;
}

/// Why bytes are not valid RTCP, or why a rewrite does not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    /// Fewer than 4 bytes left for a header.
    #[error("RTCP header truncated")]
    TooShort,
    /// Version field not 2.
    #[error("RTCP version {0} (expected 2)")]
    BadVersion(u8),
    /// The length field runs past the end of the compound packet.
    #[error("RTCP length field overruns the datagram")]
    LengthOverrun,
    /// The padding count is zero or exceeds the packet body.
    #[error("RTCP padding count inconsistent")]
    BadPadding,
    /// The body is too short for what the header announces (report count, FCI, items...).
    #[error("RTCP packet type {0} body inconsistent with its header")]
    Malformed(u8),
    /// The rewrite asked for does not apply to this packet type.
    #[error("RTCP packet type {0} has no such field")]
    NoSuchField(u8),
}

/// True when the second byte of a datagram on a muxed port marks RTCP (RFC 5761 §4):
/// with the marker bit masked off, payload types 64–95 (RTCP types 192–223) are RTCP.
#[inline]
pub fn is_rtcp(payload_type_byte: u8) -> bool {
    matches!(payload_type_byte & 0x7F, 64..=95)
}

/// One RTCP packet of a compound packet, header checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpPacket<'a> {
    buf: &'a [u8],
    pad: usize,
}

/// Checks a header at the start of `buf`; returns (packet length in bytes, padding length).
fn check_header(buf: &[u8]) -> Result<(usize, usize), RtcpError> {
    if buf.len() < HEADER_LEN {
        return Err(RtcpError::TooShort);
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(RtcpError::BadVersion(version));
    }
    // RFC 3550 §6.4.1: length in 32-bit words minus one, header included.
    let total = (usize::from(be16(buf, 2).unwrap_or(0)) + 1) * 4;
    if total > buf.len() {
        return Err(RtcpError::LengthOverrun);
    }
    let mut pad = 0;
    if buf[0] & 0x20 != 0 {
        pad = usize::from(buf[total - 1]);
        if pad == 0 || pad > total - HEADER_LEN {
            return Err(RtcpError::BadPadding);
        }
    }
    Ok((total, pad))
}

impl<'a> RtcpPacket<'a> {
    /// Parses the packet at the start of `buf`, returning it and the rest of the compound.
    pub fn parse(buf: &'a [u8]) -> Result<(Self, &'a [u8]), RtcpError> {
        let (total, pad) = check_header(buf)?;
        let (this, rest) = buf.split_at(total);
        Ok((RtcpPacket { buf: this, pad }, rest))
    }

    /// The packet's bytes, header and padding included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
    /// Version (2).
    pub fn version(&self) -> u8 {
        self.buf[0] >> 6
    }
    /// P bit.
    pub fn padding(&self) -> bool {
        self.buf[0] & 0x20 != 0
    }
    /// The 5-bit count field: report count, source count, FMT or APP subtype.
    pub fn count(&self) -> u8 {
        self.buf[0] & 0x1F
    }
    /// Packet type.
    pub fn packet_type(&self) -> u8 {
        self.buf[1]
    }
    /// The length field: words minus one.
    pub fn length_words(&self) -> u16 {
        be16(self.buf, 2).unwrap_or(0)
    }
    /// Padding octets at the end.
    pub fn padding_len(&self) -> usize {
        self.pad
    }
    /// Bytes after the 4-byte header, padding excluded.
    pub fn body(&self) -> &'a [u8] {
        self.buf
            .get(HEADER_LEN..self.buf.len() - self.pad)
            .unwrap_or(&[])
    }

    /// The first word of the body: the sender's SSRC for SR, RR, APP, RTPFB and PSFB, the
    /// first chunk's SSRC of an SDES and the first SSRC of a BYE. `None` when there is none.
    pub fn sender_ssrc(&self) -> Option<u32> {
        be32(self.body(), 0)
    }

    /// True for an RFC 4585 application-layer feedback message carrying REMB (the
    /// "REMB" identifier at FCI offset 0).
    pub fn is_remb(&self) -> bool {
        self.packet_type() == packet_type::PSFB
            && self.count() == fmt::AFB
            && self.buf.get(12..16) == Some(b"REMB")
    }

    /// The SSRC a feedback message (RFC 4585 §6.1) is about: the first FIR entry's SSRC
    /// (RFC 5104 §4.3.1.2 leaves the media SSRC 0), the first SSRC of a REMB, else the media
    /// source SSRC. 0 when the packet is too short to hold it.
    pub fn feedback_target(&self) -> u32 {
        let at = if self.packet_type() == packet_type::PSFB && self.count() == fmt::FIR {
            12
        } else if self.is_remb() {
            20
        } else {
            8
        };
        be32(self.buf, at).unwrap_or(0)
    }

    /// Validates the body for its type and returns a typed view.
    pub fn typed(&self) -> Result<Rtcp<'a>, RtcpError> {
        let pt = self.packet_type();
        let body = self.body();
        let count = usize::from(self.count());
        let bad = RtcpError::Malformed(pt);
        Ok(match pt {
            packet_type::SR => {
                if body.len() < 24 + 24 * count {
                    return Err(bad);
                }
                Rtcp::SenderReport(SenderReport { body, count })
            }
            packet_type::RR => {
                if body.len() < 4 + 24 * count {
                    return Err(bad);
                }
                Rtcp::ReceiverReport(ReceiverReport { body, count })
            }
            packet_type::SDES => {
                validate_sdes(body, count).ok_or(bad)?;
                Rtcp::Sdes(Sdes { body, count })
            }
            packet_type::BYE => {
                let ssrcs_end = 4 * count;
                if body.len() < ssrcs_end {
                    return Err(bad);
                }
                if let Some(&n) = body.get(ssrcs_end) {
                    if body.len() < ssrcs_end + 1 + usize::from(n) {
                        return Err(bad);
                    }
                }
                Rtcp::Bye(Bye { body, count })
            }
            packet_type::APP => {
                if body.len() < 8 {
                    return Err(bad);
                }
                Rtcp::App(App {
                    subtype: self.count(),
                    body,
                })
            }
            packet_type::RTPFB | packet_type::PSFB => {
                if body.len() < 8 {
                    return Err(bad);
                }
                let fb = Feedback {
                    packet_type: pt,
                    fmt: self.count(),
                    body,
                };
                let fci = fb.fci();
                match (pt, fb.fmt) {
                    (packet_type::RTPFB, fmt::NACK) => {
                        if fci.len() % 4 != 0 {
                            return Err(bad);
                        }
                        Rtcp::Nack(Nack(fb))
                    }
                    (packet_type::RTPFB, fmt::TWCC) => Rtcp::TransportCc(fb),
                    (packet_type::PSFB, fmt::PLI) => Rtcp::Pli(fb),
                    (packet_type::PSFB, fmt::FIR) => {
                        if fci.len() % 8 != 0 {
                            return Err(bad);
                        }
                        Rtcp::Fir(Fir(fb))
                    }
                    (packet_type::PSFB, fmt::AFB) if fci.starts_with(b"REMB") => {
                        // REMB: "REMB", num SSRC (8), exp (6) + mantissa (18), SSRCs.
                        let n = usize::from(*fci.get(4).ok_or(bad)?);
                        if fci.len() < 8 + 4 * n {
                            return Err(bad);
                        }
                        Rtcp::Remb(Remb(fb))
                    }
                    _ => Rtcp::Feedback(fb),
                }
            }
            _ => Rtcp::Other(*self),
        })
    }
}

/// Walks SDES chunks and items (RFC 3550 §6.5); `None` when they overrun the body.
fn validate_sdes(body: &[u8], count: usize) -> Option<()> {
    let mut it = SdesChunks {
        rest: body,
        left: count,
    };
    for _ in 0..count {
        let chunk = it.next_checked()?;
        for _ in chunk.items() {}
    }
    Some(())
}

/// Iterator over the packets of a compound RTCP packet; yields one error and then stops.
#[derive(Debug, Clone)]
pub struct Packets<'a> {
    rest: &'a [u8],
}

/// Iterates the packets of a compound RTCP packet (RFC 3550 §6.1).
pub fn packets(compound: &[u8]) -> Packets<'_> {
    Packets { rest: compound }
}

impl<'a> Iterator for Packets<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match RtcpPacket::parse(self.rest) {
            Ok((p, rest)) => {
                self.rest = rest;
                Some(Ok(p))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// A typed RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rtcp<'a> {
    /// PT 200.
    SenderReport(SenderReport<'a>),
    /// PT 201.
    ReceiverReport(ReceiverReport<'a>),
    /// PT 202.
    Sdes(Sdes<'a>),
    /// PT 203.
    Bye(Bye<'a>),
    /// PT 204.
    App(App<'a>),
    /// PT 205 FMT 1.
    Nack(Nack<'a>),
    /// PT 205 FMT 15, passed through as opaque FCI.
    TransportCc(Feedback<'a>),
    /// PT 206 FMT 1.
    Pli(Feedback<'a>),
    /// PT 206 FMT 4.
    Fir(Fir<'a>),
    /// PT 206 FMT 15 with the "REMB" identifier.
    Remb(Remb<'a>),
    /// Any other RTPFB/PSFB message.
    Feedback(Feedback<'a>),
    /// Any other packet type (XR, ...), header only.
    Other(RtcpPacket<'a>),
}

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// SSRC of the source reported on.
    pub ssrc: u32,
    /// Fraction lost, fixed point /256.
    pub fraction_lost: u8,
    /// Cumulative number of packets lost (24-bit signed).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_sequence: u32,
    /// Interarrival jitter.
    pub jitter: u32,
    /// Last SR timestamp (middle 32 bits of NTP).
    pub last_sr: u32,
    /// Delay since last SR, 1/65536 s.
    pub delay_since_last_sr: u32,
}

fn report_blocks(bytes: &[u8]) -> impl Iterator<Item = ReportBlock> + '_ {
    bytes.chunks_exact(24).map(|b| {
        let lost = be32(b, 4).unwrap_or(0);
        ReportBlock {
            ssrc: be32(b, 0).unwrap_or(0),
            fraction_lost: (lost >> 24) as u8,
            // Sign-extend the 24-bit count.
            cumulative_lost: ((lost << 8) as i32) >> 8,
            highest_sequence: be32(b, 8).unwrap_or(0),
            jitter: be32(b, 12).unwrap_or(0),
            last_sr: be32(b, 16).unwrap_or(0),
            delay_since_last_sr: be32(b, 20).unwrap_or(0),
        }
    })
}

/// Sender report (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport<'a> {
    body: &'a [u8],
    count: usize,
}

impl<'a> SenderReport<'a> {
    /// SSRC of the sender.
    pub fn ssrc(&self) -> u32 {
        be32(self.body, 0).unwrap_or(0)
    }
    /// 64-bit NTP timestamp.
    pub fn ntp_timestamp(&self) -> u64 {
        (u64::from(be32(self.body, 4).unwrap_or(0)) << 32)
            | u64::from(be32(self.body, 8).unwrap_or(0))
    }
    /// RTP timestamp matching the NTP timestamp.
    pub fn rtp_timestamp(&self) -> u32 {
        be32(self.body, 12).unwrap_or(0)
    }
    /// Sender's packet count.
    pub fn packet_count(&self) -> u32 {
        be32(self.body, 16).unwrap_or(0)
    }
    /// Sender's octet count.
    pub fn octet_count(&self) -> u32 {
        be32(self.body, 20).unwrap_or(0)
    }
    /// Reception report blocks.
    pub fn report_blocks(&self) -> impl Iterator<Item = ReportBlock> + 'a {
        report_blocks(self.body.get(24..24 + 24 * self.count).unwrap_or(&[]))
    }
}

/// Receiver report (RFC 3550 §6.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverReport<'a> {
    body: &'a [u8],
    count: usize,
}

impl<'a> ReceiverReport<'a> {
    /// SSRC of the packet sender.
    pub fn ssrc(&self) -> u32 {
        be32(self.body, 0).unwrap_or(0)
    }
    /// Reception report blocks.
    pub fn report_blocks(&self) -> impl Iterator<Item = ReportBlock> + 'a {
        report_blocks(self.body.get(4..4 + 24 * self.count).unwrap_or(&[]))
    }
}

/// Source description (RFC 3550 §6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sdes<'a> {
    body: &'a [u8],
    count: usize,
}

impl<'a> Sdes<'a> {
    /// The chunks, one per SSRC/CSRC.
    pub fn chunks(&self) -> SdesChunks<'a> {
        SdesChunks {
            rest: self.body,
            left: self.count,
        }
    }
}

/// One SDES chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdesChunk<'a> {
    /// SSRC or CSRC described.
    pub ssrc: u32,
    items: &'a [u8],
}

impl<'a> SdesChunk<'a> {
    /// Items as `(type, value)`; CNAME is type 1.
    pub fn items(&self) -> SdesItems<'a> {
        SdesItems { rest: self.items }
    }
}

/// Iterator over SDES chunks.
#[derive(Debug, Clone)]
pub struct SdesChunks<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> SdesChunks<'a> {
    /// Next chunk, or `None` when the chunk overruns the body.
    fn next_checked(&mut self) -> Option<SdesChunk<'a>> {
        let ssrc = be32(self.rest, 0)?;
        // Items until a null octet, then padding to the next 32-bit boundary.
        let mut pos = 4;
        loop {
            let t = *self.rest.get(pos)?;
            if t == 0 {
                break;
            }
            let len = usize::from(*self.rest.get(pos + 1)?);
            pos += 2 + len;
            if pos > self.rest.len() {
                return None;
            }
        }
        let items = self.rest.get(4..pos)?;
        let end = (pos + 1).div_ceil(4) * 4;
        if end > self.rest.len() {
            return None;
        }
        self.rest = &self.rest[end..];
        Some(SdesChunk { ssrc, items })
    }
}

impl<'a> Iterator for SdesChunks<'a> {
    type Item = SdesChunk<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let c = self.next_checked();
        if c.is_none() {
            self.left = 0;
        }
        c
    }
}

/// Iterator over the items of an SDES chunk.
#[derive(Debug, Clone)]
pub struct SdesItems<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for SdesItems<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (&t, after) = self.rest.split_first()?;
        let (&len, after) = after.split_first()?;
        let value = after.get(..usize::from(len))?;
        self.rest = &after[usize::from(len)..];
        Some((t, value))
    }
}

/// Goodbye (RFC 3550 §6.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bye<'a> {
    body: &'a [u8],
    count: usize,
}

impl<'a> Bye<'a> {
    /// The SSRC/CSRCs leaving.
    pub fn ssrcs(&self) -> impl Iterator<Item = u32> + 'a {
        self.body
            .get(..4 * self.count)
            .unwrap_or(&[])
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
    /// Optional reason for leaving.
    pub fn reason(&self) -> Option<&'a [u8]> {
        let at = 4 * self.count;
        let n = usize::from(*self.body.get(at)?);
        self.body.get(at + 1..at + 1 + n)
    }
}

/// Application-defined packet (RFC 3550 §6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct App<'a> {
    /// The 5-bit subtype.
    pub subtype: u8,
    body: &'a [u8],
}

impl<'a> App<'a> {
    /// SSRC/CSRC of the sender.
    pub fn ssrc(&self) -> u32 {
        be32(self.body, 0).unwrap_or(0)
    }
    /// Four ASCII characters naming the application.
    pub fn name(&self) -> [u8; 4] {
        let mut n = [0; 4];
        if let Some(src) = self.body.get(4..8) {
            n.copy_from_slice(src);
        }
        n
    }
    /// Application-dependent data.
    pub fn data(&self) -> &'a [u8] {
        self.body.get(8..).unwrap_or(&[])
    }
}

/// Common feedback message layout (RFC 4585 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback<'a> {
    /// 205 (RTPFB) or 206 (PSFB).
    pub packet_type: u8,
    /// Feedback message type.
    pub fmt: u8,
    body: &'a [u8],
}

impl<'a> Feedback<'a> {
    /// SSRC of the packet sender.
    pub fn sender_ssrc(&self) -> u32 {
        be32(self.body, 0).unwrap_or(0)
    }
    /// SSRC of the media source.
    pub fn media_ssrc(&self) -> u32 {
        be32(self.body, 4).unwrap_or(0)
    }
    /// Feedback control information.
    pub fn fci(&self) -> &'a [u8] {
        self.body.get(8..).unwrap_or(&[])
    }
}

/// Generic NACK (RFC 4585 §6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack<'a>(pub Feedback<'a>);

/// One NACK FCI entry: a lost packet id and a bitmask of the 16 following losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NackPair {
    /// Packet ID (sequence number) lost.
    pub pid: u16,
    /// Bitmask of following lost packets: bit i set means `pid + i + 1` lost.
    pub blp: u16,
}

impl NackPair {
    /// Every sequence number this entry reports lost, in order.
    pub fn lost(self) -> impl Iterator<Item = u16> {
        core::iter::once(self.pid).chain(
            (0..16u16)
                .filter(move |i| self.blp & (1 << i) != 0)
                .map(move |i| self.pid.wrapping_add(i + 1)),
        )
    }
}

impl<'a> Nack<'a> {
    /// The PID/BLP pairs.
    pub fn pairs(&self) -> impl Iterator<Item = NackPair> + 'a {
        self.0.fci().chunks_exact(4).map(|c| NackPair {
            pid: u16::from_be_bytes([c[0], c[1]]),
            blp: u16::from_be_bytes([c[2], c[3]]),
        })
    }
    /// Every lost sequence number, in FCI order.
    pub fn lost(&self) -> impl Iterator<Item = u16> + 'a {
        self.pairs().flat_map(NackPair::lost)
    }
}

/// Full intra request (RFC 5104 §4.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fir<'a>(pub Feedback<'a>);

/// One FIR FCI entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirEntry {
    /// SSRC of the media sender asked for a decoder refresh point.
    pub ssrc: u32,
    /// Command sequence number.
    pub seq_nr: u8,
}

impl<'a> Fir<'a> {
    /// FCI entries.
    pub fn entries(&self) -> impl Iterator<Item = FirEntry> + 'a {
        self.0.fci().chunks_exact(8).map(|c| FirEntry {
            ssrc: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            seq_nr: c[4],
        })
    }
}

/// Receiver estimated maximum bitrate (draft-alvestrand-rmcat-remb), passed through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remb<'a>(pub Feedback<'a>);

impl<'a> Remb<'a> {
    /// Estimated bitrate in bit/s (`mantissa << exp`), saturating.
    pub fn bitrate(&self) -> u64 {
        let fci = self.0.fci();
        let b = be32(fci, 4).unwrap_or(0);
        let exp = (b >> 18) & 0x3F;
        let mantissa = u64::from(b & 0x3_FFFF);
        if exp > 46 && mantissa != 0 {
            u64::MAX
        } else {
            mantissa << exp
        }
    }
    /// SSRCs the estimate applies to.
    pub fn ssrcs(&self) -> impl Iterator<Item = u32> + 'a {
        let fci = self.0.fci();
        let n = usize::from(fci.get(4).copied().unwrap_or(0));
        fci.get(8..8 + 4 * n)
            .unwrap_or(&[])
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// One RTCP packet in a mutable buffer, header checked.
#[derive(Debug)]
pub struct RtcpPacketMut<'a> {
    buf: &'a mut [u8],
    pad: usize,
}

impl RtcpPacketMut<'_> {
    /// Read-only view.
    pub fn packet(&self) -> RtcpPacket<'_> {
        RtcpPacket {
            buf: self.buf,
            pad: self.pad,
        }
    }
    /// Packet type.
    pub fn packet_type(&self) -> u8 {
        self.buf[1]
    }
    /// The 5-bit count/FMT field.
    pub fn count(&self) -> u8 {
        self.buf[0] & 0x1F
    }
    fn body_len(&self) -> usize {
        self.buf.len() - HEADER_LEN - self.pad
    }

    /// Rewrites the SSRC of the packet sender: SR, RR, APP, RTPFB and PSFB; for SDES the
    /// first chunk's SSRC and for BYE the first SSRC (both the sender's own, RFC 3550 §6.5, §6.6).
    pub fn set_sender_ssrc(&mut self, ssrc: u32) -> Result<(), RtcpError> {
        let pt = self.packet_type();
        let needs_count = matches!(pt, packet_type::SDES | packet_type::BYE);
        let known = matches!(
            pt,
            packet_type::SR
                | packet_type::RR
                | packet_type::SDES
                | packet_type::BYE
                | packet_type::APP
                | packet_type::RTPFB
                | packet_type::PSFB
        );
        if !known || (needs_count && self.count() == 0) {
            return Err(RtcpError::NoSuchField(pt));
        }
        if self.body_len() < 4 || !put32(self.buf, HEADER_LEN, ssrc) {
            return Err(RtcpError::Malformed(pt));
        }
        Ok(())
    }

    /// Rewrites the SSRC of the media source of an RTPFB/PSFB message (RFC 4585 §6.1).
    pub fn set_media_ssrc(&mut self, ssrc: u32) -> Result<(), RtcpError> {
        let pt = self.packet_type();
        if !matches!(pt, packet_type::RTPFB | packet_type::PSFB) {
            return Err(RtcpError::NoSuchField(pt));
        }
        if self.body_len() < 8 || !put32(self.buf, HEADER_LEN + 4, ssrc) {
            return Err(RtcpError::Malformed(pt));
        }
        Ok(())
    }

    /// Rewrites the SSRC of every FIR entry through `f` (RFC 5104 §4.3.1.1). Returns the
    /// number of entries.
    pub fn map_fir_ssrcs(&mut self, mut f: impl FnMut(u32) -> u32) -> Result<usize, RtcpError> {
        let pt = self.packet_type();
        if pt != packet_type::PSFB || self.count() != fmt::FIR {
            return Err(RtcpError::NoSuchField(pt));
        }
        let end = HEADER_LEN + self.body_len();
        let Some(fci) = self.buf.get_mut(HEADER_LEN + 8..end) else {
            return Err(RtcpError::Malformed(pt));
        };
        if fci.len() % 8 != 0 {
            return Err(RtcpError::Malformed(pt));
        }
        let mut n = 0;
        for entry in fci.chunks_exact_mut(8) {
            let old = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
            entry[..4].copy_from_slice(&f(old).to_be_bytes());
            n += 1;
        }
        Ok(n)
    }

    /// Rewrites the RTP timestamp of a sender report (RFC 3550 §6.4.1) through `f`.
    pub fn map_sr_rtp_timestamp(&mut self, f: impl FnOnce(u32) -> u32) -> Result<(), RtcpError> {
        let pt = self.packet_type();
        if pt != packet_type::SR {
            return Err(RtcpError::NoSuchField(pt));
        }
        const AT: usize = HEADER_LEN + 12;
        match be32(self.buf, AT) {
            Some(t) if self.buf.len() >= SR_FIXED_LEN => {
                put32(self.buf, AT, f(t));
                Ok(())
            }
            _ => Err(RtcpError::Malformed(pt)),
        }
    }

    /// Rewrites the SSRCs of a REMB message through `f`: every word after the bitrate to the
    /// end of the body. Returns how many words it passed to `f`.
    pub fn map_remb_ssrcs(&mut self, mut f: impl FnMut(u32) -> u32) -> Result<usize, RtcpError> {
        let pt = self.packet_type();
        if !self.packet().is_remb() {
            return Err(RtcpError::NoSuchField(pt));
        }
        let end = HEADER_LEN + self.body_len();
        let mut n = 0;
        let mut at = 20;
        while at + 4 <= end {
            let old = be32(self.buf, at).unwrap_or(0);
            put32(self.buf, at, f(old));
            n += 1;
            at += 4;
        }
        Ok(n)
    }

    /// Rewrites the packet ID (the first lost sequence number) of every generic NACK entry
    /// through `f` (RFC 4585 §6.2.1); the bitmasks stay. Returns the number of entries.
    pub fn map_nack_pids(&mut self, mut f: impl FnMut(u16) -> u16) -> Result<usize, RtcpError> {
        let pt = self.packet_type();
        if pt != packet_type::RTPFB || self.count() != fmt::NACK {
            return Err(RtcpError::NoSuchField(pt));
        }
        let end = HEADER_LEN + self.body_len();
        let mut n = 0;
        let mut at = HEADER_LEN + 8;
        while at + 4 <= end {
            let old = be16(self.buf, at).unwrap_or(0);
            put16(self.buf, at, f(old));
            n += 1;
            at += 4;
        }
        Ok(n)
    }
}

/// RFC 3550 §6.4.1: a sender report without report blocks is 28 bytes (7 words).
pub const SR_FIXED_LEN: usize = 28;

/// Copies `p` into `out`, a sender report cut to its fixed part (report blocks and padding
/// dropped, RC = 0, length 6) and any other packet whole. Returns the bytes written, `None`
/// when `out` is too small or an SR is shorter than its fixed part.
pub fn copy_without_reports(p: &RtcpPacket<'_>, out: &mut [u8]) -> Option<usize> {
    let bytes = p.as_bytes();
    if p.packet_type() != packet_type::SR {
        out.get_mut(..bytes.len())?.copy_from_slice(bytes);
        return Some(bytes.len());
    }
    let dst = out.get_mut(..SR_FIXED_LEN)?;
    dst.copy_from_slice(bytes.get(..SR_FIXED_LEN)?);
    // V=2, P=0, RC=0; length 7 words − 1.
    dst[0] = 0x80;
    put16(dst, 2, (SR_FIXED_LEN / 4 - 1) as u16);
    Some(SR_FIXED_LEN)
}

/// Iterator over the packets of a compound RTCP packet in a mutable buffer.
#[derive(Debug)]
pub struct PacketsMut<'a> {
    rest: &'a mut [u8],
}

/// Iterates the packets of a compound RTCP packet for in-place rewriting.
pub fn packets_mut(compound: &mut [u8]) -> PacketsMut<'_> {
    PacketsMut { rest: compound }
}

impl<'a> Iterator for PacketsMut<'a> {
    type Item = Result<RtcpPacketMut<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let buf = core::mem::take(&mut self.rest);
        match check_header(buf) {
            Ok((total, pad)) => {
                let (this, rest) = buf.split_at_mut(total);
                self.rest = rest;
                Some(Ok(RtcpPacketMut { buf: this, pad }))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds one RTCP packet from its count field, type and body (length computed).
    pub(crate) fn pkt(count: u8, pt: u8, body: &[u8]) -> Vec<u8> {
        assert_eq!(body.len() % 4, 0);
        let mut v = vec![0x80 | count, pt];
        v.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    fn sr_with_sdes() -> Vec<u8> {
        let mut sr = words(&[0x1111_1111, 0xE000_0001, 0x8000_0000, 9000, 50, 60000]);
        // One report block about SSRC 0x2222_2222: 10/256 lost, cumulative -3.
        sr.extend(words(&[
            0x2222_2222,
            0x0AFF_FFFD,
            70000,
            12,
            0x1234_5678,
            65536,
        ]));
        let mut c = pkt(1, packet_type::SR, &sr);
        // SDES: one chunk, CNAME "abc", NOTE "", then a null and padding.
        let mut sdes = words(&[0x1111_1111]);
        sdes.extend_from_slice(&[1, 3, b'a', b'b', b'c', 7, 0, 0]);
        c.extend(pkt(1, packet_type::SDES, &sdes));
        c
    }

    #[test]
    fn compound_sr_sdes() {
        let c = sr_with_sdes();
        let ps: Vec<_> = packets(&c).collect::<Result<_, _>>().unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].packet_type(), 200);
        assert_eq!(ps[0].count(), 1);
        assert_eq!(ps[0].length_words(), 12);
        let Rtcp::SenderReport(sr) = ps[0].typed().unwrap() else {
            panic!("not an SR")
        };
        assert_eq!(sr.ssrc(), 0x1111_1111);
        assert_eq!(sr.ntp_timestamp(), 0xE000_0001_8000_0000);
        assert_eq!(sr.rtp_timestamp(), 9000);
        assert_eq!(sr.packet_count(), 50);
        assert_eq!(sr.octet_count(), 60000);
        let blocks: Vec<_> = sr.report_blocks().collect();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].ssrc, 0x2222_2222);
        assert_eq!(blocks[0].fraction_lost, 10);
        assert_eq!(blocks[0].cumulative_lost, -3);
        assert_eq!(blocks[0].highest_sequence, 70000);
        assert_eq!(blocks[0].jitter, 12);
        assert_eq!(blocks[0].last_sr, 0x1234_5678);
        assert_eq!(blocks[0].delay_since_last_sr, 65536);
        let Rtcp::Sdes(sdes) = ps[1].typed().unwrap() else {
            panic!("not SDES")
        };
        let chunks: Vec<_> = sdes.chunks().collect();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].ssrc, 0x1111_1111);
        let items: Vec<_> = chunks[0].items().collect();
        assert_eq!(items, vec![(1, &b"abc"[..]), (7, &b""[..])]);
    }

    #[test]
    fn rr_bye_app() {
        let mut c = pkt(0, packet_type::RR, &words(&[5]));
        let mut bye = words(&[5, 6]);
        bye.extend_from_slice(&[3, b'b', b'y', b'e']);
        c.extend(pkt(2, packet_type::BYE, &bye));
        let mut app = words(&[5]);
        app.extend_from_slice(b"TEST");
        app.extend_from_slice(&[1, 2, 3, 4]);
        c.extend(pkt(3, packet_type::APP, &app));
        let ps: Vec<_> = packets(&c).map(|p| p.unwrap().typed().unwrap()).collect();
        let Rtcp::ReceiverReport(rr) = ps[0] else {
            panic!()
        };
        assert_eq!(rr.ssrc(), 5);
        assert_eq!(rr.report_blocks().count(), 0);
        let Rtcp::Bye(bye) = ps[1] else { panic!() };
        assert_eq!(bye.ssrcs().collect::<Vec<_>>(), [5, 6]);
        assert_eq!(bye.reason(), Some(&b"bye"[..]));
        let Rtcp::App(app) = ps[2] else { panic!() };
        assert_eq!(app.subtype, 3);
        assert_eq!(app.ssrc(), 5);
        assert_eq!(&app.name(), b"TEST");
        assert_eq!(app.data(), &[1, 2, 3, 4]);
    }

    #[test]
    fn nack() {
        // Lost: 100, 101, 103 (blp bits 0 and 2), then 65535 and 0 (wraps).
        let body = words(&[0xAAAA, 0xBBBB, (100 << 16) | 0b101, (65535 << 16) | 1]);
        let p = pkt(fmt::NACK, packet_type::RTPFB, &body);
        let (pk, rest) = RtcpPacket::parse(&p).unwrap();
        assert!(rest.is_empty());
        let Rtcp::Nack(n) = pk.typed().unwrap() else {
            panic!()
        };
        assert_eq!(n.0.sender_ssrc(), 0xAAAA);
        assert_eq!(n.0.media_ssrc(), 0xBBBB);
        assert_eq!(
            n.pairs().collect::<Vec<_>>(),
            [
                NackPair { pid: 100, blp: 5 },
                NackPair { pid: 65535, blp: 1 }
            ]
        );
        assert_eq!(n.lost().collect::<Vec<_>>(), [100, 101, 103, 65535, 0]);
    }

    #[test]
    fn pli_fir_remb_twcc() {
        let mut c = pkt(fmt::PLI, packet_type::PSFB, &words(&[1, 2]));
        c.extend(pkt(
            fmt::FIR,
            packet_type::PSFB,
            &words(&[1, 0, 0x3333, 7 << 24, 0x4444, 8 << 24]),
        ));
        // REMB: 2 SSRCs, exp 3, mantissa 1000 → 8000 bit/s.
        let mut remb = words(&[1, 0]);
        remb.extend_from_slice(b"REMB");
        remb.extend(words(&[(2 << 24) | (3 << 18) | 1000, 0x55, 0x66]));
        c.extend(pkt(fmt::AFB, packet_type::PSFB, &remb));
        c.extend(pkt(fmt::TWCC, packet_type::RTPFB, &words(&[1, 2, 0xDEAD])));
        let ps: Vec<_> = packets(&c).map(|p| p.unwrap().typed().unwrap()).collect();
        let Rtcp::Pli(pli) = ps[0] else { panic!() };
        assert_eq!((pli.sender_ssrc(), pli.media_ssrc()), (1, 2));
        let Rtcp::Fir(fir) = ps[1] else { panic!() };
        assert_eq!(
            fir.entries().collect::<Vec<_>>(),
            [
                FirEntry {
                    ssrc: 0x3333,
                    seq_nr: 7
                },
                FirEntry {
                    ssrc: 0x4444,
                    seq_nr: 8
                }
            ]
        );
        let Rtcp::Remb(remb) = ps[2] else { panic!() };
        assert_eq!(remb.bitrate(), 8000);
        assert_eq!(remb.ssrcs().collect::<Vec<_>>(), [0x55, 0x66]);
        let Rtcp::TransportCc(tw) = ps[3] else {
            panic!()
        };
        assert_eq!(tw.fci(), &words(&[0xDEAD])[..]);
    }

    #[test]
    fn relay_mutators() {
        let mut c = sr_with_sdes();
        let sr = packets(&c).next().unwrap().unwrap();
        assert_eq!(sr.sender_ssrc(), Some(0x1111_1111));
        let mut out = [0u8; 64];
        assert_eq!(copy_without_reports(&sr, &mut out), Some(SR_FIXED_LEN));
        assert_eq!(out[0], 0x80);
        let cut = packets(&out[..SR_FIXED_LEN]).next().unwrap().unwrap();
        let Rtcp::SenderReport(r) = cut.typed().unwrap() else {
            panic!()
        };
        assert_eq!((r.rtp_timestamp(), r.report_blocks().count()), (9000, 0));
        let mut m = packets_mut(&mut out[..SR_FIXED_LEN])
            .next()
            .unwrap()
            .unwrap();
        m.map_sr_rtp_timestamp(|t| t + 10).unwrap();
        let Rtcp::SenderReport(r) = m.packet().typed().unwrap() else {
            panic!()
        };
        assert_eq!(r.rtp_timestamp(), 9010);
        let mut m = packets_mut(&mut c[SR_FIXED_LEN + 24..])
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(
            m.map_sr_rtp_timestamp(|t| t).unwrap_err(),
            RtcpError::NoSuchField(202)
        );

        let mut nack = pkt(
            fmt::NACK,
            packet_type::RTPFB,
            &words(&[1, 2, 0x0064_0003, 0x00C8_0000]),
        );
        let p = packets(&nack).next().unwrap().unwrap();
        assert_eq!((p.feedback_target(), p.is_remb()), (2, false));
        let mut m = packets_mut(&mut nack).next().unwrap().unwrap();
        assert_eq!(m.map_nack_pids(|pid| pid - 10).unwrap(), 2);
        let Rtcp::Nack(n) = m.packet().typed().unwrap() else {
            panic!()
        };
        assert_eq!(n.lost().collect::<Vec<_>>(), [90, 91, 92, 190]);

        let mut remb = pkt(
            fmt::AFB,
            packet_type::PSFB,
            &words(&[1, 0, u32::from_be_bytes(*b"REMB"), 0x0200_1F40, 0x55, 0x66]),
        );
        let p = packets(&remb).next().unwrap().unwrap();
        assert_eq!((p.feedback_target(), p.is_remb()), (0x55, true));
        let mut m = packets_mut(&mut remb).next().unwrap().unwrap();
        assert_eq!(
            m.map_remb_ssrcs(|s| if s == 0x66 { 7 } else { s }).unwrap(),
            2
        );
        let Rtcp::Remb(r) = m.packet().typed().unwrap() else {
            panic!()
        };
        assert_eq!(r.ssrcs().collect::<Vec<_>>(), [0x55, 7]);
        assert!(m.map_nack_pids(|p| p).is_err());

        let fir = pkt(
            fmt::FIR,
            packet_type::PSFB,
            &words(&[1, 0, 0x3333, 7 << 24]),
        );
        assert_eq!(
            packets(&fir).next().unwrap().unwrap().feedback_target(),
            0x3333
        );
    }

    #[test]
    fn rewrites() {
        let mut c = sr_with_sdes();
        c.extend(pkt(fmt::PLI, packet_type::PSFB, &words(&[1, 2])));
        c.extend(pkt(
            fmt::FIR,
            packet_type::PSFB,
            &words(&[1, 0, 0x3333, 7 << 24]),
        ));
        for p in packets_mut(&mut c) {
            let mut p = p.unwrap();
            p.set_sender_ssrc(0xF00D).unwrap();
            match p.packet_type() {
                packet_type::PSFB => {
                    p.set_media_ssrc(0xBEEF).unwrap();
                    if p.count() == fmt::FIR {
                        assert_eq!(p.map_fir_ssrcs(|s| s + 1).unwrap(), 1);
                    } else {
                        assert_eq!(
                            p.map_fir_ssrcs(|s| s).unwrap_err(),
                            RtcpError::NoSuchField(206)
                        );
                    }
                }
                pt => assert_eq!(p.set_media_ssrc(1).unwrap_err(), RtcpError::NoSuchField(pt)),
            }
        }
        let ps: Vec<_> = packets(&c).map(|p| p.unwrap().typed().unwrap()).collect();
        let Rtcp::SenderReport(sr) = ps[0] else {
            panic!()
        };
        assert_eq!(sr.ssrc(), 0xF00D);
        assert_eq!(sr.report_blocks().next().unwrap().ssrc, 0x2222_2222);
        let Rtcp::Sdes(sdes) = ps[1] else { panic!() };
        assert_eq!(sdes.chunks().next().unwrap().ssrc, 0xF00D);
        let Rtcp::Pli(pli) = ps[2] else { panic!() };
        assert_eq!((pli.sender_ssrc(), pli.media_ssrc()), (0xF00D, 0xBEEF));
        let Rtcp::Fir(fir) = ps[3] else { panic!() };
        assert_eq!(fir.entries().next().unwrap().ssrc, 0x3334);
    }

    #[test]
    fn rejects() {
        assert_eq!(
            RtcpPacket::parse(&[0x80, 200]).unwrap_err(),
            RtcpError::TooShort
        );
        assert_eq!(
            RtcpPacket::parse(&[0x40, 200, 0, 0]).unwrap_err(),
            RtcpError::BadVersion(1)
        );
        assert_eq!(
            RtcpPacket::parse(&[0x80, 200, 0, 1, 0, 0]).unwrap_err(),
            RtcpError::LengthOverrun
        );
        assert_eq!(
            RtcpPacket::parse(&[0xA0, 201, 0, 1, 0, 0, 0, 5]).unwrap_err(),
            RtcpError::BadPadding
        );
        // Padding is fine when it fits.
        let (p, _) = RtcpPacket::parse(&[0xA0, 201, 0, 2, 0, 0, 0, 5, 0, 0, 0, 4]).unwrap();
        assert_eq!(p.padding_len(), 4);
        assert_eq!(p.body(), &[0, 0, 0, 5]);
        // SR claiming a report block it does not carry.
        let sr = pkt(1, packet_type::SR, &words(&[1, 2, 3, 4, 5, 6]));
        assert_eq!(
            RtcpPacket::parse(&sr).unwrap().0.typed().unwrap_err(),
            RtcpError::Malformed(200)
        );
        // SDES item overrunning the chunk.
        let sdes = pkt(1, packet_type::SDES, &[0, 0, 0, 1, 1, 9, b'a', 0]);
        assert_eq!(
            RtcpPacket::parse(&sdes).unwrap().0.typed().unwrap_err(),
            RtcpError::Malformed(202)
        );
        // An error ends compound iteration.
        let mut c = pkt(0, packet_type::RR, &words(&[5]));
        c.extend_from_slice(&[0x80, 201, 0, 9]);
        let v: Vec<_> = packets(&c).collect();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1], Err(RtcpError::LengthOverrun));
    }

    #[test]
    fn rtcp_mux_rule() {
        assert!(is_rtcp(200));
        assert!(is_rtcp(72)); // 200 with the marker bit masked
        assert!(is_rtcp(192) && is_rtcp(223));
        assert!(!is_rtcp(191) && !is_rtcp(224) && !is_rtcp(96) && !is_rtcp(0x80 | 96));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
            if let Some(b) = bytes.first_mut() { *b = (*b & 0x3F) | 0x80; }
            for p in packets(&bytes) {
                let Ok(p) = p else { break };
                let _ = (p.version(), p.padding(), p.count(), p.length_words(), p.body());
                match p.typed() {
                    Ok(Rtcp::SenderReport(sr)) => { let _ = (sr.ntp_timestamp(), sr.report_blocks().count()); }
                    Ok(Rtcp::ReceiverReport(rr)) => { let _ = rr.report_blocks().count(); }
                    Ok(Rtcp::Sdes(s)) => for c in s.chunks() { let _ = c.items().count(); },
                    Ok(Rtcp::Bye(b)) => { let _ = (b.ssrcs().count(), b.reason()); }
                    Ok(Rtcp::App(a)) => { let _ = (a.ssrc(), a.name(), a.data()); }
                    Ok(Rtcp::Nack(n)) => { let _ = n.lost().count(); }
                    Ok(Rtcp::Fir(f)) => { let _ = f.entries().count(); }
                    Ok(Rtcp::Remb(r)) => { let _ = (r.bitrate(), r.ssrcs().count()); }
                    Ok(Rtcp::TransportCc(f) | Rtcp::Pli(f) | Rtcp::Feedback(f)) => { let _ = f.fci(); }
                    Ok(Rtcp::Other(_)) | Err(_) => {}
                }
            }
            let len = bytes.len();
            for p in packets_mut(&mut bytes) {
                let Ok(mut p) = p else { break };
                let _ = p.set_sender_ssrc(1);
                let _ = p.set_media_ssrc(2);
                let _ = p.map_fir_ssrcs(|s| s ^ 1);
                let _ = p.packet().typed();
            }
            prop_assert_eq!(bytes.len(), len);
        }
    }
}
