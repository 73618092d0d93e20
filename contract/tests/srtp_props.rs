//! Property tests of `contract::srtp` through its public API: round trips for every profile over
//! random headers, sequence wrap and ROC, reordering within the replay window, replay and
//! too-old rejection, single-bit forgeries, garbage input, key rotation and the key
//! derivation rate. Case counts are modest so the suite stays fast on 2 cores.

use contract::srtp::{Context, ContextOptions, Error, MasterKey, Profile};
use proptest::prelude::*;

fn profile() -> impl Strategy<Value = Profile> {
    prop::sample::select(Profile::ALL.to_vec())
}

fn key(p: Profile, seed: u8) -> MasterKey {
    let km: Vec<u8> = (0..p.key_material_len())
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect();
    MasterKey::new(p, &km).unwrap()
}

/// An RTP packet: CSRC count, optional extension words, padding bit, payload.
#[derive(Debug, Clone)]
struct Rtp {
    cc: u8,
    ext: Option<Vec<u8>>,
    pad: bool,
    payload: Vec<u8>,
}

fn rtp() -> impl Strategy<Value = Rtp> {
    (
        0u8..16,
        prop::option::of(
            prop::collection::vec(any::<u8>(), 0..4)
                .prop_map(|w| w.iter().flat_map(|b| [*b; 4]).collect::<Vec<u8>>()),
        ),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..1400),
    )
        .prop_map(|(cc, ext, pad, payload)| Rtp {
            cc,
            ext,
            pad,
            payload,
        })
}

fn build(r: &Rtp, ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![
        0x80 | r.cc | if r.ext.is_some() { 0x10 } else { 0 } | if r.pad { 0x20 } else { 0 },
        111,
    ];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    for i in 0..r.cc {
        p.extend_from_slice(&[i; 4]);
    }
    if let Some(e) = &r.ext {
        p.extend_from_slice(&[0xbe, 0xde]);
        p.extend_from_slice(&((e.len() / 4) as u16).to_be_bytes());
        p.extend_from_slice(e);
    }
    p.extend_from_slice(&r.payload);
    p.truncate(1500);
    p
}

fn protect(ctx: &mut Context, pkt: &[u8]) -> Vec<u8> {
    let mut buf = pkt.to_vec();
    buf.resize(pkt.len() + ctx.profile().srtp_overhead(), 0);
    let n = ctx.protect_rtp(&mut buf, pkt.len()).unwrap();
    buf.truncate(n);
    buf
}

fn unprotect(ctx: &mut Context, pkt: &[u8]) -> Result<Vec<u8>, Error> {
    let mut buf = pkt.to_vec();
    let n = ctx.unprotect_rtp(&mut buf, pkt.len())?;
    buf.truncate(n);
    Ok(buf)
}

fn rtcp(words: u16, fill: u8, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x81, 201];
    p.extend_from_slice(&words.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(fill, usize::from(words) * 4 - 4));
    p
}

fn ctxs(p: Profile, opts: ContextOptions) -> (Context, Context) {
    (
        Context::new(key(p, 1), opts).unwrap(),
        Context::new(key(p, 1), opts).unwrap(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn rtp_round_trip(p in profile(), r in rtp(), ssrc in any::<u32>(), seq in any::<u16>()) {
        let (mut tx, mut rx) = ctxs(p, ContextOptions::default());
        let pkt = build(&r, ssrc, seq);
        let s = protect(&mut tx, &pkt);
        prop_assert_eq!(s.len(), pkt.len() + p.srtp_overhead());
        prop_assert_eq!(&s[..12], &pkt[..12]);
        prop_assert_eq!(unprotect(&mut rx, &s).unwrap(), pkt);
        // The same packet again is a replay.
        prop_assert_eq!(unprotect(&mut rx, &s), Err(Error::Replayed));
    }

    #[test]
    fn rtcp_round_trip(p in profile(), words in 1u16..300, fill in any::<u8>(), ssrc in any::<u32>(), n in 1usize..5) {
        let (mut tx, mut rx) = ctxs(p, ContextOptions::default());
        for _ in 0..n {
            let pkt = rtcp(words, fill, ssrc);
            let mut buf = pkt.clone();
            buf.resize(pkt.len() + p.srtcp_overhead(), 0);
            let len = tx.protect_rtcp(&mut buf, pkt.len()).unwrap();
            let wire = buf[..len].to_vec();
            let back = rx.unprotect_rtcp(&mut buf, len).unwrap();
            prop_assert_eq!(&buf[..back], &pkt[..]);
            let mut again = wire.clone();
            prop_assert_eq!(rx.unprotect_rtcp(&mut again, len), Err(Error::Replayed));
        }
    }

    /// Consecutive packets across a sequence wrap, starting from any ROC.
    #[test]
    fn sequence_wrap_and_roc(p in profile(), roc in 0u32..0xffff_fff0, start in 65000u16..=65535, n in 600usize..1200) {
        let (mut tx, mut rx) = ctxs(p, ContextOptions::default());
        let ssrc = 0x5150_5150;
        tx.set_roc(ssrc, roc).unwrap();
        rx.set_roc(ssrc, roc).unwrap();
        let r = Rtp { cc: 0, ext: None, pad: false, payload: vec![7; 20] };
        for i in 0..n {
            let pkt = build(&r, ssrc, start.wrapping_add(i as u16));
            let s = protect(&mut tx, &pkt);
            prop_assert_eq!(unprotect(&mut rx, &s).unwrap(), pkt);
        }
        prop_assert_eq!(rx.roc(ssrc), Some(roc + 1));
        prop_assert_eq!(tx.roc(ssrc), Some(roc + 1));
        // A receiver that assumes the wrong ROC cannot authenticate.
        let mut wrong = Context::new(key(p, 1), ContextOptions::default()).unwrap();
        let s = protect(&mut tx, &build(&r, ssrc, start.wrapping_add(n as u16)));
        prop_assert_eq!(unprotect(&mut wrong, &s), Err(Error::AuthFailed));
    }

    /// Delivery shuffled within the window (also across a wrap); then every packet replays.
    #[test]
    fn reordered_within_window(p in profile(), start in any::<u16>(), perm in Just((0..200usize).collect::<Vec<_>>()).prop_shuffle()) {
        let opts = ContextOptions { replay_window: 256, ..ContextOptions::default() };
        let (mut tx, mut rx) = ctxs(p, opts);
        let r = Rtp { cc: 1, ext: None, pad: false, payload: vec![1; 40] };
        let pkts: Vec<(Vec<u8>, Vec<u8>)> = (0..200)
            .map(|i| { let pk = build(&r, 9, start.wrapping_add(i)); (protect(&mut tx, &pk), pk) })
            .collect();
        // The first packet sets the receiver's ROC (RFC 3711 §3.3.1: the initial ROC is 0 for
        // the first packet seen), so it leads; the rest arrive in any order.
        unprotect(&mut rx, &pkts[0].0).unwrap();
        for &i in perm.iter().filter(|&&i| i != 0) {
            prop_assert_eq!(unprotect(&mut rx, &pkts[i].0).unwrap(), pkts[i].1.clone());
        }
        for &i in &perm {
            prop_assert_eq!(unprotect(&mut rx, &pkts[i].0), Err(Error::Replayed));
        }
    }

    /// Older than the window: too old, even though it would authenticate.
    #[test]
    fn too_old_rejected(p in profile(), start in any::<u16>(), window in prop::sample::select(vec![64u32, 128, 1024])) {
        let opts = ContextOptions { replay_window: window, ..ContextOptions::default() };
        let (mut tx, mut rx) = ctxs(p, opts);
        let r = Rtp { cc: 0, ext: None, pad: false, payload: vec![3; 10] };
        let first = protect(&mut tx, &build(&r, 4, start));
        for i in 1..=window as u16 {
            let s = protect(&mut tx, &build(&r, 4, start.wrapping_add(i)));
            unprotect(&mut rx, &s).unwrap();
        }
        prop_assert_eq!(unprotect(&mut rx, &first), Err(Error::TooOld));
    }

    /// Any single bit flipped anywhere in an SRTP or SRTCP packet is rejected.
    #[test]
    fn single_bit_flip_rejected(p in profile(), r in rtp(), bit in any::<prop::sample::Index>(), rtcp_too in any::<bool>()) {
        let (mut tx, mut rx) = ctxs(p, ContextOptions::default());
        let pkt = build(&r, 77, 1000);
        let mut s = protect(&mut tx, &pkt);
        let b = bit.index(s.len() * 8);
        s[b / 8] ^= 1 << (b % 8);
        prop_assert!(unprotect(&mut rx, &s).is_err());
        if rtcp_too {
            let pkt = rtcp(20, 0x55, 77);
            let mut buf = pkt.clone();
            buf.resize(pkt.len() + p.srtcp_overhead(), 0);
            let len = tx.protect_rtcp(&mut buf, pkt.len()).unwrap();
            let b = bit.index(len * 8);
            buf[b / 8] ^= 1 << (b % 8);
            prop_assert!(rx.unprotect_rtcp(&mut buf, len).is_err());
        }
    }

    /// Arbitrary bytes into every unprotect (and protect) never panic.
    #[test]
    fn garbage_never_panics(p in profile(), mut data in prop::collection::vec(any::<u8>(), 0..200), extra in 0usize..40, lie in any::<bool>()) {
        let (mut a, _) = ctxs(p, ContextOptions::default());
        let len = data.len();
        data.resize(len + extra, 0);
        // Also a length that exceeds the buffer.
        let l = if lie { len + extra + 1 } else { len };
        let _ = a.unprotect_rtp(&mut data.clone(), l);
        let _ = a.unprotect_rtcp(&mut data.clone(), l);
        let _ = a.protect_rtp(&mut data.clone(), l);
        let _ = a.protect_rtcp(&mut data.clone(), l);
        // Garbage that looks like RTP version 2.
        if !data.is_empty() { data[0] = 0x80 | (data[0] & 0x3f); }
        let _ = a.unprotect_rtp(&mut data.clone(), l);
        let _ = a.unprotect_rtcp(&mut data, l);
    }

    /// Key derivation rate: both sides refresh session keys every `kdr` packets, reordered
    /// packets from the previous epoch still decrypt.
    #[test]
    fn kdr_round_trip(p in profile(), kdr_log in 0u32..6, start in any::<u16>()) {
        let opts = ContextOptions { kdr: 1 << kdr_log, ..ContextOptions::default() };
        let (mut tx, mut rx) = ctxs(p, opts);
        let r = Rtp { cc: 0, ext: None, pad: false, payload: vec![9; 30] };
        let pkts: Vec<(Vec<u8>, Vec<u8>)> = (0..100u16)
            .map(|i| { let pk = build(&r, 5, start.wrapping_add(i)); (protect(&mut tx, &pk), pk) })
            .collect();
        // Deliver in pairs swapped: every other packet arrives after its successor.
        for i in (0..100).step_by(2) {
            prop_assert_eq!(unprotect(&mut rx, &pkts[i + 1].0).unwrap(), pkts[i + 1].1.clone());
            prop_assert_eq!(unprotect(&mut rx, &pkts[i].0).unwrap(), pkts[i].1.clone());
        }
        // A context without the rate cannot read packets past the first epoch.
        let mut plain = Context::new(key(p, 1), ContextOptions::default()).unwrap();
        let late = pkts.iter().find(|(s, _)| {
            let seq = u16::from_be_bytes([s[2], s[3]]);
            u64::from(seq) >= (1u64 << kdr_log)
        });
        if let Some((s, _)) = late {
            prop_assert_eq!(unprotect(&mut plain, s), Err(Error::AuthFailed));
        }
    }
}

#[test]
fn rotation_keeps_in_flight_packets_and_stream_state() {
    for p in Profile::ALL {
        let opts = ContextOptions {
            rotation_grace: 4,
            ..ContextOptions::default()
        };
        let (mut tx, mut rx) = ctxs(p, opts);
        let r = Rtp {
            cc: 0,
            ext: None,
            pad: false,
            payload: vec![2; 50],
        };
        let ssrc = 42;
        let mut seq = 65530u16;
        let mut next = |tx: &mut Context| {
            let pk = build(&r, ssrc, seq);
            seq = seq.wrapping_add(1);
            (protect(tx, &pk), pk)
        };
        let (a, a_plain) = next(&mut tx); // old key, delivered late
        let (b, b_plain) = next(&mut tx);
        assert_eq!(unprotect(&mut rx, &b).unwrap(), b_plain);
        tx.install_key(key(p, 2)).unwrap();
        rx.install_key(key(p, 2)).unwrap();
        assert!(rx.in_rotation_grace());
        // New-key packets, crossing the sequence wrap: ROC continues across keys.
        let mut news = Vec::new();
        for _ in 0..8 {
            news.push(next(&mut tx));
        }
        assert_eq!(unprotect(&mut rx, &news[0].0).unwrap(), news[0].1);
        // In-flight old-key packet still decrypts during the grace window.
        assert_eq!(unprotect(&mut rx, &a).unwrap(), a_plain, "{p}");
        for (s, pk) in &news[1..] {
            assert_eq!(&unprotect(&mut rx, s).unwrap(), pk, "{p}");
        }
        assert!(
            !rx.in_rotation_grace(),
            "{p}: grace ends after 4 new-key packets"
        );
        assert_eq!(rx.roc(ssrc), Some(1));
        // After the grace the old key is gone.
        let mut old_tx = Context::new(key(p, 1), opts).unwrap();
        old_tx.set_roc(ssrc, 1).unwrap();
        let stale = protect(&mut old_tx, &build(&r, ssrc, seq.wrapping_add(10)));
        assert_eq!(unprotect(&mut rx, &stale), Err(Error::AuthFailed), "{p}");
        // A key for another profile is refused.
        let other = if p == Profile::AeadAes128Gcm {
            Profile::Aes128CmSha1_80
        } else {
            Profile::AeadAes128Gcm
        };
        assert_eq!(
            rx.install_key(key(other, 3)),
            Err(Error::UnsupportedProfile)
        );
    }
}

#[test]
fn stream_capacity_and_options() {
    let p = Profile::Aes128CmSha1_80;
    let opts = ContextOptions {
        max_streams: 2,
        ..ContextOptions::default()
    };
    let (mut tx, mut rx) = ctxs(p, opts);
    let r = Rtp {
        cc: 0,
        ext: None,
        pad: false,
        payload: vec![0; 8],
    };
    for ssrc in [1, 2] {
        let s = protect(&mut tx, &build(&r, ssrc, 1));
        unprotect(&mut rx, &s).unwrap();
    }
    let mut buf = build(&r, 3, 1);
    let len = buf.len();
    buf.resize(len + 10, 0);
    assert_eq!(tx.protect_rtp(&mut buf, len), Err(Error::TooManyStreams));
    // A forged packet for a new SSRC does not take a slot.
    let mut rx2 = Context::new(key(p, 1), opts).unwrap();
    for ssrc in 10..20 {
        let mut forged = build(&r, ssrc, 1);
        forged.extend_from_slice(&[0; 10]);
        let n = forged.len();
        assert_eq!(rx2.unprotect_rtp(&mut forged, n), Err(Error::AuthFailed));
    }
    assert_eq!(rx2.streams(), 0);
    // Buffer without room for the tag.
    let mut small = build(&r, 1, 2);
    let n = small.len();
    assert_eq!(tx.protect_rtp(&mut small, n), Err(Error::BufferTooSmall));
    for bad in [
        ContextOptions {
            kdr: 3,
            ..ContextOptions::default()
        },
        ContextOptions {
            kdr: 1 << 25,
            ..ContextOptions::default()
        },
        ContextOptions {
            max_streams: 0,
            ..ContextOptions::default()
        },
        ContextOptions {
            replay_window: 1 << 16,
            ..ContextOptions::default()
        },
    ] {
        assert_eq!(
            Context::new(key(p, 1), bad).err(),
            Some(Error::InvalidOptions)
        );
    }
}

#[test]
fn self_test_passes() {
    contract::srtp::self_test().unwrap();
}
