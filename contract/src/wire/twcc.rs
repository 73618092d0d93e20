//! Transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01):
//! the transport-wide sequence number header extension (§2) and the transport-cc feedback
//! message (RTPFB FMT 15, §3.1), read and written.
//!
//! Owns: the byte layout of both. Reading is a validated view ([`Feedback::parse`]) with an
//! allocation-free iterator over the reported packets; writing ([`write_feedback`]) fills the
//! caller's buffer from a slice of arrival times. May not touch: the clock (arrival times are
//! given in microseconds on any epoch), SRTCP, sockets.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |V=2|P|  FMT=15 |    PT=205     |           length              |
//! |                     SSRC of packet sender                     |
//! |                      SSRC of media source                     |
//! |      base sequence number     |      packet status count      |
//! |                 reference time                | fb pkt. count |
//! |          packet chunk         |         packet chunk          |
//! .                              ...                              .
//! |         recv delta            |  recv delta   | zero padding  |
//! ```

use super::rtcp::{fmt, packet_type};

/// URI of the transport-wide sequence number extension (RFC 8285 `a=extmap`).
pub const EXTENSION_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// Length of the extension value: one 16-bit sequence number.
pub const SEQ_LEN: usize = 2;

/// One receive-delta tick, in microseconds (§3.1.5: multiples of 250 µs).
pub const DELTA_TICK_US: u64 = 250;

/// One reference-time tick, in microseconds (§3.1: multiples of 64 ms).
pub const REFERENCE_TICK_US: u64 = 64_000;

/// Bytes before the first packet chunk: RTCP header, two SSRCs, base, count, reference time.
pub const FIXED_LEN: usize = 20;

/// Why bytes are not a valid transport-cc message or extension value, or why one cannot be
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TwccError {
    /// The extension value is not two bytes.
    #[error("transport-wide sequence extension of {0} bytes (expected 2)")]
    BadSeqLen(usize),
    /// The packet has no element with the negotiated id.
    #[error("transport-wide sequence extension absent")]
    NoSeqExtension,
    /// The FCI is shorter than the fixed part.
    #[error("transport-cc feedback truncated")]
    TooShort,
    /// The packet chunks end before `packet status count` statuses.
    #[error("transport-cc packet chunks cover fewer packets than announced")]
    ChunksTruncated,
    /// The receive deltas end before one per received packet.
    #[error("transport-cc receive deltas truncated")]
    DeltasTruncated,
    /// A status symbol of the reserved value 3.
    #[error("transport-cc reserved status symbol")]
    ReservedSymbol,
    /// The buffer holds fewer bytes than the message needs.
    #[error("buffer too small for transport-cc feedback")]
    BufferTooSmall,
    /// Nothing to report: no packet in the range was received.
    #[error("transport-cc feedback with no received packet")]
    NothingReceived,
    /// The abs-send-time extension value is not three bytes.
    #[error("abs-send-time extension of {0} bytes (expected 3)")]
    BadAbsSendTimeLen(usize),
}

/// Reads the transport-wide sequence number from an extension element's value.
#[inline]
pub fn read_seq(value: &[u8]) -> Result<u16, TwccError> {
    match value {
        [a, b] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(TwccError::BadSeqLen(value.len())),
    }
}

/// URI of the absolute send time extension (`abs-send-time`, the header extension
/// libwebrtc's receive-side estimator and REMB work from).
pub const ABS_SEND_TIME_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";

/// Ticks of the abs-send-time clock per second: the value is a 6.18 fixed-point number of
/// seconds, so it wraps every 64 s.
pub const ABS_SEND_TIME_HZ: u64 = 1 << 18;

/// Reads the 24-bit send time (units of 1/[`ABS_SEND_TIME_HZ`] s, wrapping at 64 s) from an
/// abs-send-time extension element's value.
#[inline]
pub fn read_abs_send_time(value: &[u8]) -> Result<u32, TwccError> {
    match value {
        [a, b, c] => Ok(u32::from_be_bytes([0, *a, *b, *c])),
        _ => Err(TwccError::BadAbsSendTimeLen(value.len())),
    }
}

/// Writes `seq` into an extension element's value, in place.
#[inline]
pub fn write_seq(value: &mut [u8], seq: u16) -> Result<(), TwccError> {
    match value {
        [a, b] => {
            [*a, *b] = seq.to_be_bytes();
            Ok(())
        }
        _ => Err(TwccError::BadSeqLen(value.len())),
    }
}

/// Packet status symbols (§3.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Symbol {
    /// Packet not received.
    NotReceived = 0,
    /// Received, with a one-byte unsigned delta.
    SmallDelta = 1,
    /// Received, with a two-byte signed delta.
    LargeDelta = 2,
}

impl Symbol {
    fn from_bits(b: u16) -> Result<Self, TwccError> {
        match b {
            0 => Ok(Symbol::NotReceived),
            1 => Ok(Symbol::SmallDelta),
            2 => Ok(Symbol::LargeDelta),
            _ => Err(TwccError::ReservedSymbol),
        }
    }
    fn delta_len(self) -> usize {
        self as usize
    }
}

/// The status of one reported packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketStatus {
    /// Transport-wide sequence number.
    pub seq: u16,
    /// Receive delta in 250 µs ticks against the previous received packet (or the reference
    /// time for the first one); `None` when the packet was not received.
    pub delta: Option<i32>,
}

/// A validated transport-cc feedback message (the FCI of an RTPFB FMT 15 packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback<'a> {
    base_seq: u16,
    status_count: u16,
    reference_time: i32,
    fb_pkt_count: u8,
    chunks: &'a [u8],
    deltas: &'a [u8],
}

/// Status symbol `i` (0-based) of one chunk, and how many symbols the chunk carries.
#[inline]
fn chunk_symbol(chunk: u16, i: usize) -> Result<Symbol, TwccError> {
    if chunk & 0x8000 == 0 {
        // Run-length chunk (§3.1.3): T=0, S (2 bits), run length (13 bits).
        Symbol::from_bits((chunk >> 13) & 0x3)
    } else if chunk & 0x4000 == 0 {
        // Status vector chunk, 14 one-bit symbols (§3.1.4).
        Symbol::from_bits((chunk >> (13 - i)) & 0x1)
    } else {
        // Status vector chunk, 7 two-bit symbols.
        Symbol::from_bits((chunk >> (12 - 2 * i)) & 0x3)
    }
}

#[inline]
fn chunk_capacity(chunk: u16) -> usize {
    if chunk & 0x8000 == 0 {
        usize::from(chunk & 0x1FFF)
    } else if chunk & 0x4000 == 0 {
        14
    } else {
        7
    }
}

impl<'a> Feedback<'a> {
    /// Validates the FCI of a transport-cc message (the bytes after the two SSRCs): every
    /// announced status is covered by a chunk, every received packet has its delta.
    pub fn parse(fci: &'a [u8]) -> Result<Self, TwccError> {
        if fci.len() < 8 {
            return Err(TwccError::TooShort);
        }
        let base_seq = u16::from_be_bytes([fci[0], fci[1]]);
        let status_count = u16::from_be_bytes([fci[2], fci[3]]);
        // 24-bit signed reference time.
        let raw = u32::from_be_bytes([0, fci[4], fci[5], fci[6]]);
        let reference_time = ((raw << 8) as i32) >> 8;
        let fb_pkt_count = fci[7];
        let rest = &fci[8..];
        let mut left = usize::from(status_count);
        let mut at = 0usize;
        let mut delta_bytes = 0usize;
        while left > 0 {
            let Some(c) = rest.get(at..at + 2) else {
                return Err(TwccError::ChunksTruncated);
            };
            let chunk = u16::from_be_bytes([c[0], c[1]]);
            at += 2;
            let n = chunk_capacity(chunk).min(left);
            if chunk & 0x8000 == 0 {
                delta_bytes += n * chunk_symbol(chunk, 0)?.delta_len();
            } else {
                for i in 0..n {
                    delta_bytes += chunk_symbol(chunk, i)?.delta_len();
                }
            }
            left -= n;
        }
        let chunks = &rest[..at];
        let deltas = rest
            .get(at..at + delta_bytes)
            .ok_or(TwccError::DeltasTruncated)?;
        Ok(Feedback {
            base_seq,
            status_count,
            reference_time,
            fb_pkt_count,
            chunks,
            deltas,
        })
    }

    /// Sequence number of the first reported packet.
    pub fn base_seq(&self) -> u16 {
        self.base_seq
    }
    /// How many packets are reported, from `base_seq` on.
    pub fn status_count(&self) -> u16 {
        self.status_count
    }
    /// Reference time in 64 ms ticks (24-bit signed, wrapping).
    pub fn reference_time(&self) -> i32 {
        self.reference_time
    }
    /// Feedback packet count (wrapping 8-bit), to detect lost feedback.
    pub fn fb_pkt_count(&self) -> u8 {
        self.fb_pkt_count
    }
    /// Every reported packet, in sequence order.
    pub fn packets(&self) -> Packets<'a> {
        Packets {
            chunks: self.chunks,
            deltas: self.deltas,
            seq: self.base_seq,
            left: self.status_count,
            chunk_at: 0,
            in_chunk: 0,
            delta_at: 0,
        }
    }
}

/// Iterator over the statuses of a validated [`Feedback`].
#[derive(Debug, Clone)]
pub struct Packets<'a> {
    chunks: &'a [u8],
    deltas: &'a [u8],
    seq: u16,
    left: u16,
    chunk_at: usize,
    in_chunk: usize,
    delta_at: usize,
}

impl Iterator for Packets<'_> {
    type Item = PacketStatus;

    fn next(&mut self) -> Option<PacketStatus> {
        if self.left == 0 {
            return None;
        }
        // Validation proved every chunk and delta below is in range with no reserved symbol.
        let c = self.chunks.get(self.chunk_at..self.chunk_at + 2)?;
        let chunk = u16::from_be_bytes([c[0], c[1]]);
        let sym = chunk_symbol(chunk, self.in_chunk).ok()?;
        self.in_chunk += 1;
        if self.in_chunk >= chunk_capacity(chunk) {
            self.chunk_at += 2;
            self.in_chunk = 0;
        }
        let delta = match sym {
            Symbol::NotReceived => None,
            Symbol::SmallDelta => {
                let d = *self.deltas.get(self.delta_at)?;
                self.delta_at += 1;
                Some(i32::from(d))
            }
            Symbol::LargeDelta => {
                let d = self.deltas.get(self.delta_at..self.delta_at + 2)?;
                self.delta_at += 2;
                Some(i32::from(i16::from_be_bytes([d[0], d[1]])))
            }
        };
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.left -= 1;
        Some(PacketStatus { seq, delta })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

/// Header fields of a feedback message to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackHeader {
    /// SSRC of the packet sender (the relay's feedback SSRC).
    pub sender_ssrc: u32,
    /// SSRC of the media source (any SSRC of the reported sender; §3.1 leaves it free).
    pub media_ssrc: u32,
    /// Sequence number of `arrivals[0]`.
    pub base_seq: u16,
    /// Feedback packet count, incremented by the writer's caller per message.
    pub fb_pkt_count: u8,
}

/// Most statuses one written message reports; a longer range is cut and the rest is left to
/// the next message.
pub const MAX_STATUSES: usize = 512;

fn symbol_of(delta: Option<i64>) -> Symbol {
    match delta {
        None => Symbol::NotReceived,
        Some(d) if (0..=255).contains(&d) => Symbol::SmallDelta,
        Some(_) => Symbol::LargeDelta,
    }
}

/// Writes a complete transport-cc feedback packet (plain RTCP, RTPFB FMT 15) into `out`.
///
/// `arrivals[i]` is the arrival time in microseconds of sequence number `base_seq + i`, or
/// `None` when it did not arrive. The reference time is the first arrival rounded down to
/// 64 ms; each delta is taken against the previous received packet's quantized time, so
/// rounding never accumulates. The range is cut before a packet whose delta does not fit the
/// 16-bit signed field, and at [`MAX_STATUSES`]. Returns `(bytes written, statuses covered)`;
/// the caller reports `arrivals[covered..]` in its next message. The message is padded to a
/// 32-bit boundary with the RTCP padding bit, as libwebrtc does.
pub fn write_feedback(
    out: &mut [u8],
    h: &FeedbackHeader,
    arrivals: &[Option<u64>],
) -> Result<(usize, usize), TwccError> {
    let first = arrivals
        .iter()
        .flatten()
        .next()
        .copied()
        .ok_or(TwccError::NothingReceived)?;
    let reference = first / REFERENCE_TICK_US;
    let ref_ticks = (reference * REFERENCE_TICK_US / DELTA_TICK_US) as i64;

    // First pass: how many statuses fit (delta range), so the header can be written first.
    let mut prev = ref_ticks;
    let mut covered = 0usize;
    for a in arrivals.iter().take(MAX_STATUSES) {
        if let Some(t) = a {
            let ticks = (*t / DELTA_TICK_US) as i64;
            let d = ticks - prev;
            if d < i64::from(i16::MIN) || d > i64::from(i16::MAX) {
                break;
            }
            prev = ticks;
        }
        covered += 1;
    }
    // `covered` is at least 1: the first received packet's delta is under 64 ms, and every
    // status before it is "not received".
    let arrivals = &arrivals[..covered];

    if out.len() < FIXED_LEN {
        return Err(TwccError::BufferTooSmall);
    }
    out[4..8].copy_from_slice(&h.sender_ssrc.to_be_bytes());
    out[8..12].copy_from_slice(&h.media_ssrc.to_be_bytes());
    out[12..14].copy_from_slice(&h.base_seq.to_be_bytes());
    out[14..16].copy_from_slice(&(covered as u16).to_be_bytes());
    let r = (reference as u32) & 0x00FF_FFFF;
    out[16..19].copy_from_slice(&r.to_be_bytes()[1..]);
    out[19] = h.fb_pkt_count;

    // Chunks.
    let delta_of = |i: usize, prev: &mut i64| -> Option<i64> {
        arrivals[i].map(|t| {
            let ticks = (t / DELTA_TICK_US) as i64;
            let d = ticks - *prev;
            *prev = ticks;
            d
        })
    };
    let mut at = FIXED_LEN;
    let mut i = 0usize;
    let mut prev = ref_ticks;
    // Symbols are computed on the fly with a second quantization cursor that runs ahead.
    let mut sym_prev = ref_ticks;
    let mut syms = [Symbol::NotReceived; 14];
    let mut look = 0usize; // index of the next symbol not yet in `syms`
    let mut buffered = 0usize; // symbols in `syms`, starting at index `i`
    while i < covered {
        while buffered < 14 && look < covered {
            syms[buffered] = symbol_of(delta_of(look, &mut sym_prev));
            buffered += 1;
            look += 1;
        }
        // A run of one symbol: how long, counting beyond the look-ahead window.
        let s0 = syms[0];
        let mut run = 1usize;
        while run < buffered && syms[run] == s0 {
            run += 1;
        }
        let chunk: u16;
        let used: usize;
        if run == buffered && buffered == 14 {
            // Extend the run past the window (up to the 13-bit limit).
            let mut extra_prev = sym_prev;
            let mut j = look;
            while j < covered && run < 0x1FFF {
                let s = symbol_of(delta_of(j, &mut extra_prev));
                if s != s0 {
                    break;
                }
                run += 1;
                j += 1;
            }
            // Consume the extension from the look-ahead cursor.
            for k in look..j {
                let _ = delta_of(k, &mut sym_prev);
            }
            look = j;
            chunk = ((s0 as u16) << 13) | run as u16;
            used = run;
            buffered = 0;
        } else if run >= 7 && run == buffered {
            chunk = ((s0 as u16) << 13) | run as u16;
            used = run;
            buffered = 0;
        } else if run >= 7 {
            chunk = ((s0 as u16) << 13) | run as u16;
            used = run;
            syms.copy_within(run..buffered, 0);
            buffered -= run;
        } else if syms[..buffered].iter().all(|s| *s != Symbol::LargeDelta) {
            // 14 one-bit symbols (fewer at the end: the rest are zero and not counted).
            let n = buffered.min(14);
            let mut c = 0x8000u16;
            for (k, s) in syms[..n].iter().enumerate() {
                c |= (*s as u16) << (13 - k);
            }
            chunk = c;
            used = n;
            syms.copy_within(n..buffered, 0);
            buffered -= n;
        } else {
            let n = buffered.min(7);
            let mut c = 0xC000u16;
            for (k, s) in syms[..n].iter().enumerate() {
                c |= (*s as u16) << (12 - 2 * k);
            }
            chunk = c;
            used = n;
            syms.copy_within(n..buffered, 0);
            buffered -= n;
        }
        let dst = out.get_mut(at..at + 2).ok_or(TwccError::BufferTooSmall)?;
        dst.copy_from_slice(&chunk.to_be_bytes());
        at += 2;
        i += used;
    }

    // Deltas.
    for k in 0..covered {
        if let Some(d) = delta_of(k, &mut prev) {
            match symbol_of(Some(d)) {
                Symbol::SmallDelta => {
                    *out.get_mut(at).ok_or(TwccError::BufferTooSmall)? = d as u8;
                    at += 1;
                }
                _ => {
                    let dst = out.get_mut(at..at + 2).ok_or(TwccError::BufferTooSmall)?;
                    dst.copy_from_slice(&(d as i16).to_be_bytes());
                    at += 2;
                }
            }
        }
    }

    // Padding to a 32-bit boundary: zero bytes, the last one holding the count (RFC 3550 §6.4.1).
    let pad = (4 - at % 4) % 4;
    if pad > 0 {
        let dst = out.get_mut(at..at + pad).ok_or(TwccError::BufferTooSmall)?;
        dst.fill(0);
        dst[pad - 1] = pad as u8;
        at += pad;
    }
    out[0] = 0x80 | if pad > 0 { 0x20 } else { 0 } | fmt::TWCC;
    out[1] = packet_type::RTPFB;
    out[2..4].copy_from_slice(&((at / 4 - 1) as u16).to_be_bytes());
    Ok((at, covered))
}

/// Writes a REMB message (draft-alvestrand-rmcat-remb-03 §2.2, PSFB FMT 15) for `bitrate`
/// bit/s about `ssrcs` (at most 255); returns the bytes written.
pub fn write_remb(
    out: &mut [u8],
    sender_ssrc: u32,
    bitrate: u64,
    ssrcs: &[u32],
) -> Result<usize, TwccError> {
    let n = ssrcs.len().min(255);
    let len = 20 + 4 * n;
    if out.len() < len {
        return Err(TwccError::BufferTooSmall);
    }
    let mut exp = 0u32;
    let mut mantissa = bitrate;
    while mantissa > 0x3_FFFF {
        mantissa >>= 1;
        exp += 1;
    }
    out[0] = 0x80 | fmt::AFB;
    out[1] = packet_type::PSFB;
    out[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
    out[8..12].fill(0);
    out[12..16].copy_from_slice(b"REMB");
    out[16] = n as u8;
    let v = (exp << 18) | mantissa as u32;
    out[17..20].copy_from_slice(&v.to_be_bytes()[1..]);
    for (k, s) in ssrcs[..n].iter().enumerate() {
        out[20 + 4 * k..24 + 4 * k].copy_from_slice(&s.to_be_bytes());
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::rtcp::{self, Rtcp};

    fn statuses(f: &Feedback<'_>) -> Vec<PacketStatus> {
        f.packets().collect()
    }

    #[test]
    fn seq_extension_round_trip() {
        let mut v = [0u8; 2];
        write_seq(&mut v, 0xABCD).unwrap();
        assert_eq!(v, [0xAB, 0xCD]);
        assert_eq!(read_seq(&v), Ok(0xABCD));
        assert_eq!(read_seq(&[1]), Err(TwccError::BadSeqLen(1)));
        assert_eq!(write_seq(&mut [0u8; 3], 1), Err(TwccError::BadSeqLen(3)));
    }

    #[test]
    fn seq_extension_in_rtp_packet() {
        // RTP header with a one-byte-form extension block: id 3 (2 bytes) = 0x0102.
        let mut p = vec![
            0x90, 96, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, // fixed header, X=1
            0xBE, 0xDE, 0, 1, // profile, one word
            0x31, 0x01, 0x02, 0x00, // id 3, len 2; one padding byte
            0xAA, // payload
        ];
        let mut m = crate::wire::rtp::RtpMut::parse(&mut p).unwrap();
        let v = m.extension_value_mut(3).unwrap();
        assert_eq!(read_seq(v), Ok(0x0102));
        write_seq(v, 0xFFFE).unwrap();
        assert!(m.extension_value_mut(4).is_none());
        let pkt = crate::wire::rtp::RtpPacket::parse(&p).unwrap();
        assert_eq!(pkt.extension_by_id(3), Some(&[0xFF, 0xFE][..]));
        assert_eq!(pkt.payload(), &[0xAA]);
    }

    /// The example of draft §3.1.3: a run-length chunk of 221 "received, small delta".
    #[test]
    fn run_length_chunk_from_the_draft() {
        // 0 01 0000011011101 = run of 221 packets with symbol 1.
        let chunk = 0b0010_0000_1101_1101u16;
        let mut fci = vec![0x00, 0x0A, 0x00, 221, 0x00, 0x00, 0x01, 0x05];
        fci.extend_from_slice(&chunk.to_be_bytes());
        fci.extend(std::iter::repeat_n(4u8, 221)); // 1 ms each
        let f = Feedback::parse(&fci).unwrap();
        assert_eq!(f.base_seq(), 10);
        assert_eq!(f.status_count(), 221);
        assert_eq!(f.reference_time(), 1);
        assert_eq!(f.fb_pkt_count(), 5);
        let s = statuses(&f);
        assert_eq!(s.len(), 221);
        assert!(s.iter().all(|p| p.delta == Some(4)));
        assert_eq!(s[220].seq, 230);
        // One delta byte fewer is refused.
        assert_eq!(
            Feedback::parse(&fci[..fci.len() - 1]),
            Err(TwccError::DeltasTruncated)
        );
    }

    /// The examples of draft §3.1.4: a one-bit vector "received, not received, 12 more
    /// received..." and a two-bit vector with a large delta.
    #[test]
    fn status_vector_chunks_from_the_draft() {
        // 1 0 11100101100001: 14 one-bit symbols: R R R N N R N R R N N N N R.
        let one_bit = 0b1011_1001_0110_0001u16;
        // 1 1 00 01 10 01 00 00 00: N S L S N N N (7 two-bit symbols), of which 3 counted.
        let two_bit = 0b1100_0110_0100_0000u16;
        let mut fci = vec![0xFF, 0xFE, 0x00, 17, 0xFF, 0xFF, 0xFF, 0x00];
        fci.extend_from_slice(&one_bit.to_be_bytes());
        fci.extend_from_slice(&two_bit.to_be_bytes());
        // One-bit vector: 7 received, each 1 byte.
        fci.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7]);
        // Two-bit vector, first 3 symbols: N, S(8), L(-4 as i16).
        fci.extend_from_slice(&[8, 0xFF, 0xFC]);
        let f = Feedback::parse(&fci).unwrap();
        assert_eq!(f.reference_time(), -1, "24-bit signed reference time");
        let s = statuses(&f);
        assert_eq!(s.len(), 17);
        let got: Vec<Option<i32>> = s.iter().map(|p| p.delta).collect();
        assert_eq!(
            got,
            vec![
                Some(1),
                Some(2),
                Some(3),
                None,
                None,
                Some(4),
                None,
                Some(5),
                Some(6),
                None,
                None,
                None,
                None,
                Some(7),
                None,
                Some(8),
                Some(-4),
            ]
        );
        assert_eq!(s[0].seq, 0xFFFE);
        assert_eq!(s[2].seq, 0, "sequence numbers wrap");
        // Reserved symbol 3 is refused.
        let mut bad = fci.clone();
        bad[10] = 0b1111_0000;
        assert_eq!(Feedback::parse(&bad), Err(TwccError::ReservedSymbol));
        // Chunks that stop early are refused.
        assert_eq!(Feedback::parse(&fci[..10]), Err(TwccError::ChunksTruncated));
        assert_eq!(Feedback::parse(&fci[..7]), Err(TwccError::TooShort));
    }

    /// A message as Chromium sends it (captured layout: padding bit, one-bit vectors and a
    /// run-length chunk of losses), parsed through the RTCP layer.
    #[test]
    fn chromium_shaped_message_through_rtcp() {
        let pkt: Vec<u8> = vec![
            0xAF, 205, 0x00, 0x06, // V=2 P=1 FMT=15, PT=205, length 6 (28 bytes)
            0x00, 0x00, 0x00, 0x01, // sender SSRC
            0x12, 0x34, 0x56, 0x78, // media SSRC
            0x00, 0x64, 0x00, 0x05, // base 100, 5 statuses
            0x00, 0x00, 0x04, 0x07, // reference 4 × 64 ms, fb count 7
            0xD9, 0x00, // two-bit vector 11|01 10 01 00 00 00 00: S L S N N (5 counted)
            0x10, 0x00, 0xFD, 0x04, // deltas: 16, large 0x00FD (253), 4
            0x00, 0x02, // padding: one zero byte, then the count
        ];
        let (p, rest) = rtcp::RtcpPacket::parse(&pkt).unwrap();
        assert!(rest.is_empty());
        let Ok(Rtcp::TransportCc(fb)) = p.typed() else {
            panic!("not transport-cc");
        };
        assert_eq!(fb.media_ssrc(), 0x1234_5678);
        let f = Feedback::parse(fb.fci()).unwrap();
        let s = statuses(&f);
        assert_eq!(
            s.iter().map(|p| p.delta).collect::<Vec<_>>(),
            vec![Some(16), Some(253), Some(4), None, None]
        );
        assert_eq!(f.fb_pkt_count(), 7);
    }

    fn round_trip(arrivals: &[Option<u64>]) -> (Vec<u8>, usize) {
        let mut out = [0u8; 1500];
        let h = FeedbackHeader {
            sender_ssrc: 1,
            media_ssrc: 2,
            base_seq: 65_530,
            fb_pkt_count: 9,
        };
        let (n, covered) = write_feedback(&mut out, &h, arrivals).unwrap();
        assert_eq!(n % 4, 0);
        let (p, rest) = rtcp::RtcpPacket::parse(&out[..n]).unwrap();
        assert!(rest.is_empty());
        let Ok(Rtcp::TransportCc(fb)) = p.typed() else {
            panic!("not transport-cc");
        };
        let f = Feedback::parse(fb.fci()).unwrap();
        assert_eq!(f.base_seq(), 65_530);
        assert_eq!(usize::from(f.status_count()), covered);
        // Rebuild absolute times from the deltas; they match the quantized arrivals.
        let mut t = i64::from(f.reference_time()) * 64_000;
        for (k, st) in f.packets().enumerate() {
            assert_eq!(st.seq, 65_530u16.wrapping_add(k as u16));
            match (st.delta, arrivals[k]) {
                (None, None) => {}
                (Some(d), Some(a)) => {
                    t += i64::from(d) * 250;
                    assert_eq!(t, (a / 250 * 250) as i64, "packet {k}");
                }
                other => panic!("packet {k}: {other:?}"),
            }
        }
        (out[..n].to_vec(), covered)
    }

    #[test]
    fn writer_round_trips_mixed_patterns() {
        // Steady 1 ms spacing with losses, a reordering (negative delta), a long gap.
        let base = 10_000_000u64;
        let mut a: Vec<Option<u64>> = (0..100).map(|k| Some(base + k * 1000)).collect();
        a[5] = None;
        a[6] = None;
        a[30] = Some(base + 20_000); // arrived early relative to its neighbours
        a[60] = Some(base + 60_000 + 3_000_000); // 3 s late: large delta
        for x in a.iter_mut().skip(70).take(30) {
            *x = None;
        }
        a.push(Some(base + 200_000));
        let (_, covered) = round_trip(&a);
        assert_eq!(covered, a.len());
    }

    #[test]
    fn writer_uses_run_length_for_long_runs() {
        let a: Vec<Option<u64>> = (0..300).map(|k| Some(1_000 + k * 500)).collect();
        let (bytes, covered) = round_trip(&a);
        assert_eq!(covered, 300);
        // 20 fixed + one run-length chunk + 300 one-byte deltas (+ padding).
        assert_eq!(bytes.len(), (20 + 2 + 300usize).div_ceil(4) * 4);
    }

    #[test]
    fn writer_cuts_where_a_delta_overflows() {
        // The second packet arrives 9 s after the first: more than i16 ticks (8.19 s).
        let a = [Some(0u64), Some(9_000_000), Some(9_001_000)];
        let (_, covered) = round_trip(&a);
        assert_eq!(covered, 1);
        let mut out = [0u8; 64];
        let h = FeedbackHeader {
            sender_ssrc: 1,
            media_ssrc: 2,
            base_seq: 0,
            fb_pkt_count: 0,
        };
        assert_eq!(
            write_feedback(&mut out, &h, &[None, None]),
            Err(TwccError::NothingReceived)
        );
        assert_eq!(
            write_feedback(&mut out[..10], &h, &a),
            Err(TwccError::BufferTooSmall)
        );
    }

    /// Property: every pattern of arrivals (pseudo-random, deterministic) survives
    /// write → parse with its losses and its quantized times.
    #[test]
    fn writer_round_trips_random_patterns() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..500 {
            let n = 1 + (rnd() % 400) as usize;
            let mut t = 5_000_000 + rnd() % 1_000_000;
            let mut a = Vec::with_capacity(n);
            for _ in 0..n {
                t = t
                    .saturating_add(rnd() % 3_000)
                    .saturating_sub(rnd() % 1_000);
                a.push(if rnd() % 5 == 0 { None } else { Some(t) });
            }
            if a.iter().all(Option::is_none) {
                a[0] = Some(t);
            }
            let (_, covered) = round_trip(&a);
            assert!(covered >= 1 && covered <= a.len().min(MAX_STATUSES));
        }
    }

    #[test]
    fn remb_round_trip() {
        let mut out = [0u8; 64];
        let n = write_remb(&mut out, 7, 1_500_000, &[0xAAAA, 0xBBBB]).unwrap();
        assert_eq!(n, 28);
        let (p, _) = rtcp::RtcpPacket::parse(&out[..n]).unwrap();
        let Ok(Rtcp::Remb(r)) = p.typed() else {
            panic!("not REMB");
        };
        // Mantissa loses at most the low bits below 18 significant ones.
        assert!(r.bitrate() <= 1_500_000 && r.bitrate() > 1_499_000);
        assert_eq!(r.ssrcs().collect::<Vec<_>>(), vec![0xAAAA, 0xBBBB]);
        assert_eq!(
            write_remb(&mut out[..20], 7, 1, &[1]),
            Err(TwccError::BufferTooSmall)
        );
    }
}
