//! Property tests of `contract::srtp` through its public API: round trips for every profile over
//! random headers, sequence wrap and ROC, reordering within the replay window, replay and
//! too-old rejection, single-bit forgeries, garbage input, key rotation and the key
//! derivation rate. Case counts are modest so the suite stays fast on 2 cores.

use contract::srtp::{Context, ContextOptions, Error, MacBatch, MasterKey, Profile};
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

/// Header length of a packet made by [`build`] (RFC 3550 §5.1, §5.3.1).
fn header_len(pkt: &[u8]) -> usize {
    let mut h = 12 + 4 * usize::from(pkt[0] & 0x0f);
    if pkt[0] & 0x10 != 0 {
        h += 4 + 4 * usize::from(u16::from_be_bytes([pkt[h + 2], pkt[h + 3]]));
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Out-of-place protect (`protect_rtp_batched_from`: header and a few payload bytes in the
    /// slot, the payload's tail read from the shared plaintext) writes byte for byte what
    /// copying the packet and protecting it in place writes, in every profile, for packets of
    /// 0 to 1500 bytes with CSRCs, extensions and the P bit, wherever the split falls, with
    /// the tags deferred to a multi-buffer batch or computed at once, for several outputs of
    /// one fan-out at different slot offsets; the receiver accepts each.
    #[test]
    fn out_of_place_protect_matches_in_place(
        p in profile(),
        r in rtp(),
        more in 0usize..120,
        ssrc in any::<u32>(),
        seq in any::<u16>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..5),
        multi in any::<bool>(),
    ) {
        let mut r = r;
        r.payload.extend((0..more).map(|i| i as u8));
        let pkt = build(&r, ssrc, seq);
        let h = header_len(&pkt);
        let slot = 1600;
        let mut arena = vec![0xA5u8; slot * cuts.len()];
        let mut batch = if multi { MacBatch::new() } else { MacBatch::single_buffer() };
        let mut want = Vec::new();
        let mut lens = Vec::new();
        for (o, cut) in cuts.iter().enumerate() {
            // Each output has its own key, as each subscriber has.
            let km: Vec<u8> = (0..p.key_material_len()).map(|i| (i * 7 + o * 13) as u8).collect();
            let k = MasterKey::new(p, &km).unwrap();
            let mut a = Context::new(k, ContextOptions::default()).unwrap();
            let mut b = Context::new(k, ContextOptions::default()).unwrap();
            let split = h + cut.index(pkt.len() - h + 1);
            let at = o * slot;
            let buf = &mut arena[at..at + slot];
            buf[..split].copy_from_slice(&pkt[..split]);
            let n = a.protect_rtp_batched_from(buf, split, &pkt[split..], at, &mut batch).unwrap();
            let w = protect(&mut b, &pkt);
            prop_assert_eq!(n, w.len());
            want.push((w, k));
            lens.push(n);
        }
        batch.finish(&mut arena);
        for (o, (w, k)) in want.iter().enumerate() {
            let got = &arena[o * slot..o * slot + lens[o]];
            prop_assert_eq!(got, &w[..], "output {}", o);
            let mut rx = Context::new(*k, ContextOptions::default()).unwrap();
            prop_assert_eq!(unprotect(&mut rx, got).unwrap(), pkt.clone());
        }
    }

    /// Out-of-place protect refuses a slot without room for the tail and the tag, and a start
    /// shorter than the header; nothing is left in the batch.
    #[test]
    fn out_of_place_protect_checks_room(p in profile(), r in rtp(), short in 1usize..40) {
        let pkt = build(&r, 0x1234, 7);
        let h = header_len(&pkt);
        let (mut tx, _) = ctxs(p, ContextOptions::default());
        let need = pkt.len() + p.srtp_overhead();
        let mut buf = vec![0u8; need - short.min(need - h)];
        buf[..h].copy_from_slice(&pkt[..h]);
        let mut batch = MacBatch::new();
        prop_assert_eq!(
            tx.protect_rtp_batched_from(&mut buf, h, &pkt[h..], 0, &mut batch),
            Err(Error::BufferTooSmall)
        );
        if h > 12 {
            let mut buf = vec![0u8; need];
            buf[..h].copy_from_slice(&pkt[..h]);
            prop_assert_eq!(
                tx.protect_rtp_batched_from(&mut buf, h - 1, &pkt[h - 1..], 0, &mut batch),
                Err(Error::Malformed)
            );
        }
        prop_assert!(batch.is_empty());
    }

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
