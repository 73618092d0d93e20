//! SRTP/SRTCP: unprotect arbitrary bytes under a key and profile chosen by the input, then
//! protect a packet built from the input, flip bits chosen by the input, and unprotect it.
//! Unprotect must never panic, never grow the packet, and must reject any mutation of an
//! authenticated packet (RFC 3711 §3.4, RFC 7714 §9).
#![no_main]
#![deny(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use contract::srtp::{Context, ContextOptions, MasterKey, Profile};

const BUF: usize = 1600;

fuzz_target!(|data: &[u8]| {
    // Byte 0: profile; byte 1: options; bytes 2..48: key material; the rest: the packet.
    if data.len() < 48 {
        return;
    }
    let profile = Profile::ALL[usize::from(data[0]) % Profile::ALL.len()];
    let flags = data[1];
    let need = profile.key_len() + profile.salt_len();
    let Ok(key) = MasterKey::new(profile, &data[2..2 + need]) else {
        return;
    };
    let opts = ContextOptions {
        replay_window: 64 << (flags & 3),
        kdr: if flags & 4 != 0 { 1 << (flags >> 4) } else { 0 },
        max_streams: 4,
        rotation_grace: 16,
    };
    let packet = &data[48..];
    if packet.len() > BUF - 64 {
        return;
    }
    let mut rx = Context::new(key.clone(), opts).expect("valid options");
    let mut buf = [0u8; BUF];

    // 1. Raw bytes as SRTP, then as SRTCP (twice each: the second is a replay when the first
    //    was accepted).
    for _ in 0..2 {
        buf[..packet.len()].copy_from_slice(packet);
        if let Ok(n) = rx.unprotect_rtp(&mut buf, packet.len()) {
            assert!(n <= packet.len());
        }
        buf[..packet.len()].copy_from_slice(packet);
        if let Ok(n) = rx.unprotect_rtcp(&mut buf, packet.len()) {
            assert!(n <= packet.len());
        }
    }

    // 2. protect → mutate → unprotect. Build an RTP header (V=2) around the input's packet
    //    bytes so that protect accepts it; mutate one bit chosen by the input.
    let mut tx = Context::new(key.clone(), opts).expect("valid options");
    let mut rx = Context::new(key, opts).expect("valid options");
    let plain_len = packet.len().max(12);
    let mut plain = [0u8; BUF];
    plain[..packet.len()].copy_from_slice(packet);
    plain[0] = 0x80 | (plain[0] & 0x2f); // V=2, no padding, keep X and CC bits
    let mut b = plain;
    if let Ok(n) = tx.protect_rtp(&mut b, plain_len) {
        let bit = usize::from(flags) * 7 % (n * 8);
        let mut m = b;
        m[bit / 8] ^= 1 << (bit % 8);
        assert!(
            rx.unprotect_rtp(&mut m, n).is_err(),
            "mutated SRTP accepted"
        );
        let mut replay = b;
        let out = rx
            .unprotect_rtp(&mut b, n)
            .expect("untouched SRTP authenticates");
        assert_eq!(&b[..out], &plain[..plain_len]);
        // A replay of the same packet is refused (RFC 3711 §3.3.2).
        assert!(
            rx.unprotect_rtp(&mut replay, n).is_err(),
            "replayed SRTP accepted"
        );
    }
    // RTCP: a header of 8 bytes (V=2, PT from the input, length ignored by protect).
    let mut plain = [0u8; BUF];
    let rtcp_len = packet.len().max(8);
    plain[..packet.len()].copy_from_slice(packet);
    plain[0] = 0x80 | (plain[0] & 0x1f);
    let mut b = plain;
    if let Ok(n) = tx.protect_rtcp(&mut b, rtcp_len) {
        let bit = usize::from(flags) * 13 % (n * 8);
        let mut m = b;
        m[bit / 8] ^= 1 << (bit % 8);
        assert!(
            rx.unprotect_rtcp(&mut m, n).is_err(),
            "mutated SRTCP accepted"
        );
        let mut replay = b;
        let out = rx
            .unprotect_rtcp(&mut b, n)
            .expect("untouched SRTCP authenticates");
        assert_eq!(&b[..out], &plain[..rtcp_len]);
        assert!(
            rx.unprotect_rtcp(&mut replay, n).is_err(),
            "replayed SRTCP accepted"
        );
    }
});
