//! Demultiplexing one UDP port between STUN, ZRTP, DTLS, TURN channels and RTP/RTCP.
//!
//! Owns: [`classify`], a first-byte decision (RFC 7983 §7) refined for RTP/RTCP by the
//! payload-type rule of RFC 5761 §4. It looks at two bytes at most and validates nothing
//! else; the per-protocol parsers do that. May not touch: anything but the bytes given.

use super::rtcp::is_rtcp;

/// What a datagram on the shared media port carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Zero-length datagram.
    Empty,
    /// First byte 0–3: STUN (RFC 8489).
    Stun,
    /// First byte 16–19: ZRTP (RFC 6189).
    Zrtp,
    /// First byte 20–63: DTLS (RFC 6347, RFC 9147).
    Dtls,
    /// First byte 64–79: TURN channel data (RFC 8656).
    TurnChannel,
    /// First byte 128–191, second byte not an RTCP packet type: RTP.
    Rtp,
    /// First byte 128–191, second byte (marker bit masked) 64–95: RTCP (RFC 5761 §4).
    Rtcp,
    /// Anything else, including an RTP/RTCP first byte with no second byte.
    Unknown,
}

/// Classifies a datagram by its first byte (RFC 7983 §7), then RTP vs RTCP (RFC 5761 §4).
#[inline]
pub fn classify(buf: &[u8]) -> Kind {
    let Some(&first) = buf.first() else {
        return Kind::Empty;
    };
    match first {
        0..=3 => Kind::Stun,
        16..=19 => Kind::Zrtp,
        20..=63 => Kind::Dtls,
        64..=79 => Kind::TurnChannel,
        128..=191 => match buf.get(1) {
            Some(&b) if is_rtcp(b) => Kind::Rtcp,
            Some(_) => Kind::Rtp,
            None => Kind::Unknown,
        },
        _ => Kind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges() {
        assert_eq!(classify(&[]), Kind::Empty);
        for b in 0..=3u8 {
            assert_eq!(classify(&[b, 1]), Kind::Stun);
        }
        for b in 4..=15u8 {
            assert_eq!(classify(&[b, 1]), Kind::Unknown);
        }
        for b in 16..=19u8 {
            assert_eq!(classify(&[b]), Kind::Zrtp);
        }
        for b in 20..=63u8 {
            assert_eq!(classify(&[b]), Kind::Dtls);
        }
        for b in 64..=79u8 {
            assert_eq!(classify(&[b]), Kind::TurnChannel);
        }
        for b in 80..=127u8 {
            assert_eq!(classify(&[b, 0]), Kind::Unknown);
        }
        for b in 192..=255u8 {
            assert_eq!(classify(&[b, 0]), Kind::Unknown);
        }
        assert_eq!(classify(&[0x80]), Kind::Unknown);
    }

    #[test]
    fn rtp_vs_rtcp() {
        // Dynamic payload types, with and without the marker bit.
        assert_eq!(classify(&[0x80, 96]), Kind::Rtp);
        assert_eq!(classify(&[0x80, 0x80 | 96]), Kind::Rtp);
        assert_eq!(classify(&[0x80, 0]), Kind::Rtp);
        // SR = 200 = 0x80 | 72; RR 201; PSFB 206; range edges 192 and 223.
        for pt in [192u8, 200, 201, 205, 206, 223] {
            assert_eq!(classify(&[0x81, pt]), Kind::Rtcp, "pt {pt}");
        }
        assert_eq!(classify(&[0x80, 191]), Kind::Rtp);
        assert_eq!(classify(&[0x80, 224]), Kind::Rtp);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn total(bytes in proptest::collection::vec(any::<u8>(), 0..8)) {
            let k = classify(&bytes);
            prop_assert_eq!(k == Kind::Empty, bytes.is_empty());
        }
    }
}
