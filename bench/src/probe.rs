//! The probe packets the generator sends: an RTP header (RFC 3550 §5.1) followed by a fixed
//! probe body, padded to the requested size.
//!
//! Owns: the byte layout. Pure: no I/O, no clock; parsing never panics.
//!
//! Body (big-endian, first 32 bytes of the RTP payload):
//! `magic "SLBP"` · `stream u32` · `step u32` · `reserved u32` · `seq u64` · `send_ns u64`.
//! `seq` counts from 0 per stream per step; `send_ns` is monotonic nanoseconds since the run
//! started; `step` tells find-max steps apart so a straggler from the previous step is not
//! mistaken for a packet of this one.

/// RTP fixed header length (no CSRC, no extension).
pub const RTP_HEADER: usize = 12;
/// Probe body length.
pub const BODY: usize = 32;
/// Smallest RTP packet that carries a probe.
pub const MIN_RTP: usize = RTP_HEADER + BODY;
/// Dynamic payload type used for probes.
pub const PAYLOAD_TYPE: u8 = 96;
const MAGIC: [u8; 4] = *b"SLBP";

/// The fields of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub stream: u32,
    pub step: u32,
    pub seq: u64,
    pub send_ns: u64,
}

/// Why a received packet is not a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("packet shorter than a probe")]
    Short,
    #[error("not RTP version 2")]
    Version,
    #[error("probe magic missing")]
    Magic,
}

/// Fill `buf[..len]` with a probe template: RTP v2 header for `ssrc`, zero probe fields and a
/// recognisable padding pattern. `len` must be at least [`MIN_RTP`] and at most `buf.len()`.
pub fn template(buf: &mut [u8], len: usize, ssrc: u32) -> Result<(), ProbeError> {
    if len < MIN_RTP || len > buf.len() {
        return Err(ProbeError::Short);
    }
    buf[0] = 0x80;
    buf[1] = PAYLOAD_TYPE;
    buf[2..8].fill(0);
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buf[RTP_HEADER..RTP_HEADER + 4].copy_from_slice(&MAGIC);
    buf[RTP_HEADER + 4..MIN_RTP].fill(0);
    for (i, b) in buf[MIN_RTP..len].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31);
    }
    Ok(())
}

/// Write the per-packet fields into a packet laid out by [`template`]: RTP sequence number
/// and timestamp, then the probe body. The caller guarantees `buf.len() >= MIN_RTP`.
#[inline]
pub fn stamp(buf: &mut [u8], rtp_seq: u16, rtp_ts: u32, p: &Probe) {
    buf[2..4].copy_from_slice(&rtp_seq.to_be_bytes());
    buf[4..8].copy_from_slice(&rtp_ts.to_be_bytes());
    let b = &mut buf[RTP_HEADER..MIN_RTP];
    b[4..8].copy_from_slice(&p.stream.to_be_bytes());
    b[8..12].copy_from_slice(&p.step.to_be_bytes());
    b[16..24].copy_from_slice(&p.seq.to_be_bytes());
    b[24..32].copy_from_slice(&p.send_ns.to_be_bytes());
}

/// The SSRC of an RTP (or SRTP: the header is not encrypted) packet.
pub fn ssrc(pkt: &[u8]) -> Option<u32> {
    pkt.get(8..12)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Read the probe out of a plaintext RTP packet (header extensions and CSRCs are skipped, so
/// a relay that adds them does not break the bench).
pub fn parse(pkt: &[u8]) -> Result<Probe, ProbeError> {
    if pkt.len() < RTP_HEADER {
        return Err(ProbeError::Short);
    }
    if pkt[0] >> 6 != 2 {
        return Err(ProbeError::Version);
    }
    let mut off = RTP_HEADER + 4 * usize::from(pkt[0] & 0x0f);
    if pkt[0] & 0x10 != 0 {
        // RFC 3550 §5.3.1: 16-bit profile, 16-bit length in 32-bit words.
        let ext = pkt.get(off..off + 4).ok_or(ProbeError::Short)?;
        off += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    let b = pkt.get(off..off + BODY).ok_or(ProbeError::Short)?;
    if b[..4] != MAGIC {
        return Err(ProbeError::Magic);
    }
    Ok(Probe {
        stream: be32(&b[4..]),
        step: be32(&b[8..]),
        seq: be64(&b[16..]),
        send_ns: be64(&b[24..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = [0u8; 200];
        template(&mut buf, 160, 0xdead_beef).unwrap();
        let p = Probe {
            stream: 7,
            step: 2,
            seq: 1 << 40,
            send_ns: 123_456_789,
        };
        stamp(&mut buf, 65535, 42, &p);
        assert_eq!(ssrc(&buf), Some(0xdead_beef));
        assert_eq!(parse(&buf[..160]).unwrap(), p);
        assert_eq!(parse(&buf[..MIN_RTP]).unwrap(), p);
        assert_eq!(parse(&buf[..MIN_RTP - 1]), Err(ProbeError::Short));
    }

    #[test]
    fn bad_input() {
        let mut buf = [0u8; 64];
        assert_eq!(template(&mut buf, 20, 1), Err(ProbeError::Short));
        assert_eq!(template(&mut buf, 65, 1), Err(ProbeError::Short));
        template(&mut buf, 64, 1).unwrap();
        buf[0] = 0x40;
        assert_eq!(parse(&buf), Err(ProbeError::Version));
        buf[0] = 0x80;
        buf[12] = b'X';
        assert_eq!(parse(&buf), Err(ProbeError::Magic));
        // Extension header pointing past the end.
        buf[0] = 0x90;
        buf[14] = 0xff;
        buf[15] = 0xff;
        assert_eq!(parse(&buf), Err(ProbeError::Short));
        assert_eq!(parse(&[]), Err(ProbeError::Short));
        assert_eq!(ssrc(&[0u8; 5]), None);
    }

    #[test]
    fn skips_csrc_and_extension() {
        let mut buf = [0u8; 100];
        // 1 CSRC + a one-word extension, then the body.
        buf[0] = 0x91;
        buf[1] = PAYLOAD_TYPE;
        buf[16..18].copy_from_slice(&0xbedeu16.to_be_bytes());
        buf[18..20].copy_from_slice(&1u16.to_be_bytes());
        let off = 24;
        buf[off..off + 4].copy_from_slice(b"SLBP");
        buf[off + 16..off + 24].copy_from_slice(&9u64.to_be_bytes());
        assert_eq!(parse(&buf).unwrap().seq, 9);
    }
}
