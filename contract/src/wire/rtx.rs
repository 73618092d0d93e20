//! The RTP retransmission payload format (RFC 4588 §4), both ways.
//!
//! An RTX packet is the original packet resent on its own stream: the header (CSRCs and header
//! extensions included) with the RTX stream's payload type, sequence number and SSRC, then the
//! original sequence number (OSN, 2 bytes) and the original payload. The original's padding is
//! not carried (RFC 4588 §4: the payload, not the padding, is retransmitted).
//!
//! Owns: that byte layout. May not touch: SRTP (the caller protects the result with the RTX
//! stream's own context), sequence-number allocation, the clock.

use super::rtp::{RtpError, RtpMut, RtpPacket};

/// Why an RTX packet could not be written or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtxError {
    /// The input is not a valid RTP packet.
    #[error(transparent)]
    Rtp(#[from] RtpError),
    /// The output buffer holds fewer bytes than the result needs.
    #[error("buffer too small: {need} bytes needed, {have} available")]
    BufferTooSmall { need: usize, have: usize },
    /// An RTX packet without the 2-byte original sequence number.
    #[error("RTX payload shorter than the original sequence number")]
    NoOsn,
}

/// The RTX stream's identity for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtxHeader {
    pub payload_type: u8,
    pub ssrc: u32,
    pub sequence: u16,
}

/// Write `original` (a plain RTP packet) into `out` as an RTX packet with `rtx`'s payload
/// type, SSRC and sequence number; returns its length. The marker bit and timestamp are kept.
pub fn encapsulate(original: &[u8], rtx: RtxHeader, out: &mut [u8]) -> Result<usize, RtxError> {
    let p = RtpPacket::parse(original)?;
    let hlen = p.header_len();
    let payload = p.payload();
    let need = hlen + 2 + payload.len();
    if out.len() < need {
        return Err(RtxError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    out[..hlen].copy_from_slice(&original[..hlen]);
    out[0] &= !0x20; // no padding in the RTX packet
    out[hlen..hlen + 2].copy_from_slice(&p.sequence().to_be_bytes());
    out[hlen + 2..need].copy_from_slice(payload);
    let mut m = RtpMut::parse(&mut out[..need])?;
    m.set_payload_type(rtx.payload_type)?;
    m.set_ssrc(rtx.ssrc);
    m.set_sequence(rtx.sequence);
    Ok(need)
}

/// Restore the original packet from an RTX packet (plain RTP, after SRTP unprotect) into
/// `out`, with the original stream's payload type and SSRC; returns its length and the
/// original sequence number it carries.
pub fn decapsulate(
    rtx: &[u8],
    original_payload_type: u8,
    original_ssrc: u32,
    out: &mut [u8],
) -> Result<(usize, u16), RtxError> {
    let p = RtpPacket::parse(rtx)?;
    let hlen = p.header_len();
    let payload = p.payload();
    let (osn, rest) = match payload {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => return Err(RtxError::NoOsn),
    };
    let need = hlen + rest.len();
    if out.len() < need {
        return Err(RtxError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    out[..hlen].copy_from_slice(&rtx[..hlen]);
    out[0] &= !0x20;
    out[hlen..need].copy_from_slice(rest);
    let mut m = RtpMut::parse(&mut out[..need])?;
    m.set_payload_type(original_payload_type)?;
    m.set_ssrc(original_ssrc);
    m.set_sequence(osn);
    Ok((need, osn))
}

/// What [`decapsulate_in_place`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwrapped {
    /// The original packet, now in the front of the buffer: its length and sequence number.
    Original { len: usize, osn: u16 },
    /// An RTX packet with no payload at all: padding sent to probe bandwidth (libwebrtc
    /// sends these on the RTX stream, RFC 4588 §4 gives them no original to restore).
    Padding,
}

/// [`decapsulate`] in place: the RTX packet `buf[..len]` (plain) becomes the original, with
/// `original_payload_type` and `original_ssrc` (the stream `apt` and `a=ssrc-group:FID`
/// bind it to), the original sequence number and no padding. Nothing is copied but the
/// payload (two bytes to the left). A packet whose payload is empty is
/// [`Unwrapped::Padding`]; one whose payload is a single byte has no OSN.
pub fn decapsulate_in_place(
    buf: &mut [u8],
    len: usize,
    original_payload_type: u8,
    original_ssrc: u32,
) -> Result<Unwrapped, RtxError> {
    let buf = buf
        .get_mut(..len)
        .ok_or(RtxError::Rtp(RtpError::TooShort))?;
    let p = RtpPacket::parse(buf)?;
    let hlen = p.header_len();
    let plen = p.payload().len();
    let osn = match p.payload() {
        [] => return Ok(Unwrapped::Padding),
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => return Err(RtxError::NoOsn),
    };
    if original_payload_type > 127 {
        return Err(RtxError::Rtp(RtpError::BadPayloadType(
            original_payload_type,
        )));
    }
    buf.copy_within(hlen + 2..hlen + plen, hlen);
    let n = hlen + plen - 2;
    buf[0] &= !0x20;
    let mut m = RtpMut::parse(&mut buf[..n])?;
    m.set_payload_type(original_payload_type)?;
    m.set_ssrc(original_ssrc);
    m.set_sequence(osn);
    Ok(Unwrapped::Original { len: n, osn })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Any bytes: an error or a packet, never a panic; what encapsulates decapsulates back
        /// to the original minus its padding.
        #[test]
        fn arbitrary_bytes_never_panic_and_round_trip(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..200),
            out_len in 0usize..260,
        ) {
            if let Some(b) = bytes.first_mut() { *b = (*b & 0x3F) | 0x80; }
            let mut out = vec![0u8; out_len];
            let rtx = RtxHeader { payload_type: 97, ssrc: 9, sequence: 3 };
            if let Ok(n) = encapsulate(&bytes, rtx, &mut out) {
                let orig = RtpPacket::parse(&bytes).unwrap();
                let mut back = vec![0u8; n];
                let (m, osn) = decapsulate(&out[..n], orig.payload_type(), orig.ssrc(), &mut back).unwrap();
                prop_assert_eq!(osn, orig.sequence());
                let b = RtpPacket::parse(&back[..m]).unwrap();
                prop_assert_eq!(b.payload(), orig.payload());
                prop_assert_eq!(b.header_len(), orig.header_len());
            }
            let _ = decapsulate(&bytes, 96, 1, &mut out);
            let n = bytes.len();
            let mut copy = vec![0u8; n];
            let copied = decapsulate(&bytes, 96, 1, &mut copy);
            match decapsulate_in_place(&mut bytes, n, 96, 1) {
                Ok(Unwrapped::Original { len, osn }) => {
                    let (m, o) = copied.unwrap();
                    prop_assert_eq!((len, osn), (m, o));
                    prop_assert_eq!(&bytes[..len], &copy[..m]);
                }
                Ok(Unwrapped::Padding) => {
                    prop_assert!(RtpPacket::parse(&bytes).unwrap().payload().is_empty());
                }
                Err(e) => prop_assert_eq!(Err(e), copied.map(|_| ())),
            }
        }
    }

    #[test]
    fn in_place_restores_the_original_across_the_wrap() {
        let orig = original();
        for (osn, rtx_seq) in [(65_535u16, 0u16), (0, 65_535), (1, 2)] {
            let mut o = orig.clone();
            o[2..4].copy_from_slice(&osn.to_be_bytes());
            let rtx = RtxHeader {
                payload_type: 97,
                ssrc: 0x22,
                sequence: rtx_seq,
            };
            let mut buf = [0u8; 64];
            let n = encapsulate(&o, rtx, &mut buf).unwrap();
            let got = decapsulate_in_place(&mut buf, n, 96, 0x11).unwrap();
            let Unwrapped::Original { len, osn: got_osn } = got else {
                panic!("{got:?}");
            };
            assert_eq!(got_osn, osn);
            let mut unpadded = o.clone();
            unpadded.truncate(o.len() - 3);
            unpadded[0] &= !0x20;
            assert_eq!(&buf[..len], &unpadded[..]);
        }
        // A padding-only probe: padding bit, no payload.
        let mut probe = [0xA0, 97, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0x22, 0, 0, 0, 4];
        assert_eq!(
            decapsulate_in_place(&mut probe, 16, 96, 0x11),
            Ok(Unwrapped::Padding)
        );
        let mut one = [0x80, 97, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xAA];
        assert_eq!(
            decapsulate_in_place(&mut one, 13, 96, 1),
            Err(RtxError::NoOsn)
        );
        assert_eq!(
            decapsulate_in_place(&mut one, 40, 96, 1),
            Err(RtxError::Rtp(RtpError::TooShort))
        );
    }

    /// An RTP packet: PT 96, marker, seq 65535, ts 3000, SSRC 0x11, one CSRC, a one-byte
    /// extension (id 3, 1 byte), payload 1..=10 and 3 bytes of padding.
    fn original() -> Vec<u8> {
        let mut p = vec![0xB1, 0x80 | 96, 0xFF, 0xFF, 0, 0, 0x0B, 0xB8, 0, 0, 0, 0x11];
        p.extend_from_slice(&0xCCu32.to_be_bytes());
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x30, 0x42, 0, 0]);
        p.extend(1..=10u8);
        p.extend_from_slice(&[0, 0, 3]);
        p
    }

    #[test]
    fn round_trip_keeps_header_and_payload_drops_padding() {
        let orig = original();
        let rtx = RtxHeader {
            payload_type: 97,
            ssrc: 0x22,
            sequence: 7,
        };
        let mut buf = [0u8; 64];
        let n = encapsulate(&orig, rtx, &mut buf).unwrap();
        let r = RtpPacket::parse(&buf[..n]).unwrap();
        assert_eq!((r.payload_type(), r.ssrc(), r.sequence()), (97, 0x22, 7));
        assert!(r.marker() && !r.padding());
        assert_eq!(r.timestamp(), 3000);
        assert_eq!(r.csrcs().collect::<Vec<_>>(), [0xCC]);
        assert_eq!(r.extension_by_id(3), Some(&[0x42][..]));
        assert_eq!(&r.payload()[..2], [0xFF, 0xFF], "OSN");
        assert_eq!(&r.payload()[2..], (1..=10u8).collect::<Vec<_>>());

        let mut back = [0u8; 64];
        let (m, osn) = decapsulate(&buf[..n], 96, 0x11, &mut back).unwrap();
        assert_eq!(osn, 65_535);
        let o = RtpPacket::parse(&back[..m]).unwrap();
        assert_eq!(
            (o.payload_type(), o.ssrc(), o.sequence()),
            (96, 0x11, 65_535)
        );
        assert_eq!(o.payload(), (1..=10u8).collect::<Vec<_>>());
        // The original without its padding.
        let mut unpadded = orig.clone();
        unpadded.truncate(orig.len() - 3);
        unpadded[0] &= !0x20;
        assert_eq!(&back[..m], &unpadded[..]);
    }

    #[test]
    fn errors_are_typed() {
        let orig = original();
        let rtx = RtxHeader {
            payload_type: 97,
            ssrc: 1,
            sequence: 1,
        };
        let mut small = [0u8; 20];
        assert!(matches!(
            encapsulate(&orig, rtx, &mut small),
            Err(RtxError::BufferTooSmall { .. })
        ));
        assert_eq!(
            encapsulate(&orig[..5], rtx, &mut [0u8; 64]),
            Err(RtxError::Rtp(RtpError::TooShort))
        );
        let bad_pt = RtxHeader {
            payload_type: 200,
            ..rtx
        };
        assert_eq!(
            encapsulate(&orig, bad_pt, &mut [0u8; 64]),
            Err(RtxError::Rtp(RtpError::BadPayloadType(200)))
        );
        // An RTX packet whose payload is one byte: no OSN.
        let header_only = [0x80, 97, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xAA];
        assert_eq!(
            decapsulate(&header_only, 96, 1, &mut [0u8; 64]),
            Err(RtxError::NoOsn)
        );
    }
}
