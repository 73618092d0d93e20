//! The engine with real SRTP keys for every profile, driven through shared memory written by
//! `ShmWriter`: fan-out, rewrite, reordering and loss, key rotation, route changes, removal,
//! roles, RTCP both ways, and bad datagrams counted by reason.

mod engine_support;

use contract::shm::{DropReason, Role};
use contract::srtp::Profile;
use engine_support::*;
use proptest::prelude::*;
use std::collections::HashMap;
use std::net::SocketAddr;

/// Decrypt every output with its subscriber's key; returns plain packets per subscriber id.
fn deliver(peers: &mut [Peer], out: &[(SocketAddr, Vec<u8>)]) -> HashMap<u64, Vec<Vec<u8>>> {
    let mut got: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    for (dst, d) in out {
        let p = peers
            .iter_mut()
            .find(|p| p.addr == *dst)
            .expect("output to a known peer");
        let plain = p
            .open_rtp(d)
            .unwrap_or_else(|e| panic!("subscriber {} cannot open: {e}", p.id));
        got.entry(p.id).or_default().push(plain);
    }
    got
}

/// N publishers → M subscribers for every (publisher profile, subscriber profile) pairing,
/// with reordering and loss on the way in: each subscriber gets each delivered packet exactly
/// once, intact, with its route's rewrite applied.
#[test]
fn every_profile_fan_out_reorder_loss() {
    for (k, &pp) in Profile::ALL.iter().enumerate() {
        let sp = Profile::ALL[(k + 1) % Profile::ALL.len()];
        let mut rig = Rig::new("fanout");
        let mut peers: Vec<Peer> = Vec::new();
        for i in 0..2u64 {
            peers.push(Peer::new(1 + i, addr(i as u16), Role::Speaker, pp));
        }
        for j in 0..3u64 {
            let prof = if j == 2 { pp } else { sp };
            peers.push(Peer::new(10 + j, addr(10 + j as u16), Role::Viewer, prof));
        }
        for p in &peers {
            rig.add(p);
        }
        // Subscriber 10: both publishers, SSRC kept. 11: publisher 1's SSRC rewritten and PT
        // mapped, publisher 2 as is. 12: only publisher 2, SSRC 0x2000 of it.
        rig.route(1, None, 10, rewrite(None, None));
        rig.route(2, None, 10, rewrite(None, None));
        rig.route(1, Some(0x1000), 11, rewrite(Some(0xAB), Some((96, 111))));
        rig.route(2, None, 11, rewrite(None, None));
        rig.route(2, Some(0x2000), 12, rewrite(None, None));

        let mut input = Vec::new();
        let order: Vec<u16> = (0..40).collect();
        for &seq in &order {
            for (pi, ssrc) in [(0usize, 0x1000u32), (1, 0x2000)] {
                // Lose every 7th packet; swap neighbours every 5 (reordering).
                if seq % 7 == 3 {
                    continue;
                }
                let payload = [seq as u8; 100];
                let d = peers[pi].rtp(ssrc, seq, u32::from(seq) * 3000, 96, &payload);
                input.push((peers[pi].addr, d));
            }
        }
        for i in (0..input.len() - 1).step_by(5) {
            input.swap(i, i + 1);
        }
        let sent = input.len();
        let mut out = Vec::new();
        for chunk in input.chunks(16) {
            out.extend(rig.batch(chunk));
        }
        let got = deliver(&mut peers, &out);
        let per_pub = sent / 2;
        assert_eq!(got[&10].len(), sent, "{pp}");
        assert_eq!(got[&11].len(), sent, "{pp}");
        assert_eq!(got[&12].len(), per_pub, "{pp}");
        let mut seen = std::collections::HashSet::new();
        for pkt in &got[&11] {
            let ssrc = be32(pkt, 8);
            let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
            assert!(seen.insert((ssrc, seq)), "duplicate");
            assert_eq!(&pkt[12..], &[seq as u8; 100][..]);
            match ssrc {
                0xAB => assert_eq!(pkt[1] & 0x7F, 111),
                0x2000 => assert_eq!(pkt[1] & 0x7F, 96),
                other => panic!("unexpected SSRC {other:#x}"),
            }
        }
        for pkt in &got[&12] {
            assert_eq!(be32(pkt, 8), 0x2000);
        }
        let c = rig.counters();
        assert_eq!(c.packets_in, sent as u64);
        assert_eq!(c.packets_out, (sent * 2 + per_pub) as u64);
        assert_eq!(c.drops.iter().sum::<u64>(), 0, "{:?}", c.drops);
        assert!(c.batches > 0);
    }
}

/// A plain RTP packet with `cc` CSRCs, a one-byte-form extension block holding `elements`
/// (none: no block), `payload`, and `pad` padding octets (0: P clear; RFC 3550 §5.1).
fn rich_rtp(
    (ssrc, seq, cc): (u32, u16, u8),
    elements: &[(u8, &[u8])],
    payload: &[u8],
    pad: u8,
) -> Vec<u8> {
    let mut p = rtp(ssrc, seq, u32::from(seq) * 90, 96, &[]);
    p[0] |= cc;
    for i in 0..cc {
        p.extend_from_slice(&(0xC500_0000 | u32::from(i)).to_be_bytes());
    }
    if !elements.is_empty() {
        p[0] |= 0x10;
        let mut block = Vec::new();
        for (id, v) in elements {
            block.push((id << 4) | (v.len() as u8 - 1));
            block.extend_from_slice(v);
        }
        while block.len() % 4 != 0 {
            block.push(0);
        }
        p.extend_from_slice(&0xBEDEu16.to_be_bytes());
        p.extend_from_slice(&((block.len() / 4) as u16).to_be_bytes());
        p.extend_from_slice(&block);
    }
    p.extend_from_slice(payload);
    if pad > 0 {
        p[0] |= 0x20;
        p.extend(std::iter::repeat_n(0, usize::from(pad) - 1));
        p.push(pad);
    }
    p
}

/// The fan-out encrypts each output's payload from the one decrypted packet straight into its
/// transmit slot, behind the header rewritten there. For every profile, over packets with and
/// without CSRCs, extension blocks, a MID that grows, shrinks or stays, the P bit with padding,
/// and payloads of 0 to about 1400 bytes: each output decrypts to the input with its route's
/// rewrite (SSRC, payload type, MID) and the payload and padding intact, and is byte for byte
/// what copying that rewritten packet and protecting it in place under the same key gives.
#[test]
fn out_of_place_outputs_equal_copy_and_protect() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(3711);
    for &prof in Profile::ALL.iter() {
        let mut rig = Rig::new("oop");
        let mut peers = vec![Peer::new(1, addr(1), Role::Speaker, prof)];
        for j in 0..3u64 {
            peers.push(Peer::new(10 + j, addr(10 + j as u16), Role::Viewer, prof));
        }
        for p in &peers {
            rig.add(p);
        }
        let mut long = rewrite(Some(0xAB), Some((96, 111)));
        long.set_mid(4, b"a-long-mid-value");
        let mut short = rewrite(None, None);
        short.set_mid(4, b"0");
        rig.route(1, None, 10, long);
        rig.route(1, None, 11, short);
        rig.route(1, None, 12, rewrite(Some(0xCD), None));
        // What each subscriber's stream was protected with so far, replayed in place.
        let mut copies: Vec<contract::srtp::Context> = peers[1..]
            .iter()
            .map(|p| contract::srtp::Context::new(p.recv_key, opts()).unwrap())
            .collect();
        for seq in 0..60u16 {
            let cc = if rng.gen_bool(0.3) {
                rng.gen_range(1..4)
            } else {
                0
            };
            let mid = [b'm'; 16];
            let mid = &mid[..rng.gen_range(1..=16)];
            let elements: &[(u8, &[u8])] = match seq % 3 {
                0 => &[],
                1 => &[(4, mid)],
                _ => &[(1, &[0x7f]), (4, mid), (6, &[1, 2, 3])],
            };
            let payload: Vec<u8> = (0..rng.gen_range(0..1400)).map(|_| rng.gen()).collect();
            let pad = if rng.gen_bool(0.3) {
                rng.gen_range(1..=255)
            } else {
                0
            };
            let plain = rich_rtp((0x1000, seq, cc), elements, &payload, pad);
            let d = {
                let mut buf = vec![0u8; plain.len() + 16];
                buf[..plain.len()].copy_from_slice(&plain);
                let n = peers[0].send.protect_rtp(&mut buf, plain.len()).unwrap();
                buf.truncate(n);
                buf
            };
            let out = rig.batch(&[(peers[0].addr, d)]);
            assert_eq!(out.len(), 3, "{prof} packet {seq}");
            for (dst, srtp) in &out {
                let i = peers.iter().position(|p| p.addr == *dst).unwrap();
                let got = peers[i].open_rtp(srtp).unwrap();
                let g = contract::wire::rtp::RtpPacket::parse(&got).unwrap();
                let p = contract::wire::rtp::RtpPacket::parse(&plain).unwrap();
                assert_eq!(g.payload(), p.payload(), "{prof} packet {seq} to {dst}");
                assert_eq!(g.padding_len(), p.padding_len());
                assert_eq!(g.csrcs().collect::<Vec<_>>(), p.csrcs().collect::<Vec<_>>());
                assert_eq!(g.sequence(), seq);
                let (ssrc, pt, want_mid) = match peers[i].id {
                    10 => (0xAB, 111, &b"a-long-mid-value"[..]),
                    11 => (0x1000, 96, &b"0"[..]),
                    _ => (0xCD, 96, p.extension_by_id(4).unwrap_or(&[])),
                };
                assert_eq!((g.ssrc(), g.payload_type()), (ssrc, pt));
                if p.extension_by_id(4).is_some() {
                    assert_eq!(g.extension_by_id(4), Some(want_mid), "{prof} {seq} {dst}");
                }
                for id in [1, 6] {
                    assert_eq!(g.extension_by_id(id), p.extension_by_id(id));
                }
                let mut buf = got.clone();
                buf.resize(got.len() + prof.srtp_overhead(), 0);
                let n = copies[i - 1].protect_rtp(&mut buf, got.len()).unwrap();
                assert_eq!(
                    &buf[..n],
                    &srtp[..],
                    "{prof} packet {seq} to {dst}: not byte-identical"
                );
            }
        }
        let c = rig.counters();
        assert_eq!(c.drops.iter().sum::<u64>(), 0, "{prof}: {:?}", c.drops);
    }
}

/// Route change (speaker switch onto one output SSRC) and key rotation on both sides while
/// packets flow: nothing that should arrive is lost, nothing arrives twice.
#[test]
fn switch_and_rotation_lose_nothing() {
    for prof in [Profile::Aes128CmSha1_80, Profile::AeadAes128Gcm] {
        let mut rig = Rig::new("rotate");
        let mut a = Peer::new(1, addr(0), Role::Host, prof);
        let mut b = Peer::new(2, addr(1), Role::Speaker, prof);
        let mut s = Peer::new(3, addr(2), Role::Viewer, prof);
        for p in [&a, &b, &s] {
            rig.add(p);
        }
        let ra = rig.route(1, None, 3, rewrite(Some(0x77), None));
        let mut held = Vec::new();
        for seq in 0..20u16 {
            let d = a.rtp(0xA, 1000 + seq, u32::from(seq) * 10, 96, b"a");
            held.extend(rig.batch(&[(a.addr, d)]));
        }
        // Rotate the subscriber's tx key: packets queued before stay decryptable (the
        // subscriber keeps the old key for the grace window), new ones use the new key.
        s.recv_key = random_key(prof);
        s.epoch += 1;
        rig.add(&s);
        // Rotate the publisher's key too; its in-flight packets under the old key still pass.
        let old_pkt = a.rtp(0xA, 1020, 200, 96, b"a");
        a.send_key = random_key(prof);
        a.send.install_key(a.send_key).unwrap();
        a.epoch += 1;
        rig.add(&a);
        held.extend(rig.batch(&[(a.addr, old_pkt)]));
        for seq in 21..30u16 {
            let d = a.rtp(0xA, 1000 + seq, u32::from(seq) * 10, 96, b"a");
            held.extend(rig.batch(&[(a.addr, d)]));
        }
        // Speaker switch: B replaces A on output SSRC 0x77.
        rig.writer.remove_route(ra);
        rig.route(2, None, 3, rewrite(Some(0x77), None));
        assert!(rig
            .batch(&[(a.addr, a.rtp(0xA, 1030, 300, 96, b"a"))])
            .is_empty());
        for seq in 0..20u16 {
            let d = b.rtp(0xB, 50_000 + seq, u32::from(seq) * 10, 96, b"b");
            held.extend(rig.batch(&[(b.addr, d)]));
        }
        // The subscriber learns the new key now, and reads everything in arrival order.
        s.recv.install_key(s.recv_key).unwrap();
        let mut last = None;
        for (dst, d) in &held {
            assert_eq!(*dst, s.addr);
            let p = s.open_rtp(d).unwrap_or_else(|e| panic!("{prof}: {e}"));
            assert_eq!(be32(&p, 8), 0x77);
            let seq = u16::from_be_bytes([p[2], p[3]]);
            if let Some(l) = last {
                assert_eq!(seq, u16::wrapping_add(l, 1), "{prof}: numbering continues");
            }
            last = Some(seq);
        }
        assert_eq!(held.len(), 50);
        let c = rig.counters();
        assert_eq!(c.drops[DropReason::NoRoute as usize], 1);
        assert_eq!(c.drops.iter().sum::<u64>(), 1);
    }
}

#[test]
fn removed_subscriber_stops_within_one_batch() {
    let mut rig = Rig::new("remove");
    let mut p = Peer::new(1, addr(0), Role::Trunk, Profile::AeadAes256Gcm);
    let s1 = Peer::new(2, addr(1), Role::Viewer, Profile::Aes256CmSha1_32);
    let s2 = Peer::new(3, addr(2), Role::Viewer, Profile::Aes128CmSha1_32);
    for x in [&p, &s1, &s2] {
        rig.add(x);
    }
    rig.route(1, None, 2, rewrite(None, None));
    rig.route(1, None, 3, rewrite(None, None));
    let out = rig.batch(&[(p.addr, p.rtp(5, 1, 1, 96, b"x"))]);
    assert_eq!(out.len(), 2);
    rig.writer.remove_session(3);
    let out = rig.batch(&[(p.addr, p.rtp(5, 2, 2, 96, b"x"))]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, s1.addr);
    // The removed peer is now an unknown source.
    let mut s2 = s2;
    let d = s2.rtp(9, 1, 1, 96, b"y");
    assert!(rig.batch(&[(s2.addr, d)]).is_empty());
    assert_eq!(rig.counters().drops[DropReason::UnknownSource as usize], 1);
}

#[test]
fn viewer_media_is_not_routed() {
    let mut rig = Rig::new("viewer");
    let mut v = Peer::new(1, addr(0), Role::Viewer, Profile::AeadAes128Gcm);
    let s = Peer::new(2, addr(1), Role::Trunk, Profile::AeadAes128Gcm);
    rig.add(&v);
    rig.add(&s);
    rig.route(1, None, 2, rewrite(None, None));
    assert_eq!(rig.engine.last_rebuild().routes, 0);
    let d = v.rtp(1, 1, 1, 96, b"v");
    assert!(rig.batch(&[(v.addr, d)]).is_empty());
    assert_eq!(rig.counters().drops[DropReason::NotPublisher as usize], 1);
}

#[test]
fn rtcp_down_and_feedback_up() {
    let mut rig = Rig::new("rtcp");
    let mut p = Peer::new(1, addr(0), Role::Host, Profile::Aes128CmSha1_80);
    let mut s = Peer::new(2, addr(1), Role::Viewer, Profile::AeadAes256Gcm);
    rig.add(&p);
    rig.add(&s);
    rig.route(1, Some(0x1111), 2, rewrite(Some(0x2222), None));
    let d = p.rtp(0x1111, 7, 700, 96, b"m");
    rig.batch(&[(p.addr, d)]);
    // SR + SDES from the publisher: the SR is replaced by the relay's own reports, the SDES
    // goes to the subscriber with its SSRC rewritten.
    let mut c = vec![0x81, 200, 0, 12];
    c.extend_from_slice(&0x1111u32.to_be_bytes());
    c.extend_from_slice(&[0; 8]);
    c.extend_from_slice(&700u32.to_be_bytes());
    c.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
    c.extend_from_slice(&[0xEE; 24]);
    c.extend_from_slice(&[0x81, 202, 0, 2]);
    c.extend_from_slice(&0x1111u32.to_be_bytes());
    c.extend_from_slice(&[1, 1, b'c', 0]);
    let d = p.rtcp(&c);
    let out = rig.batch(&[(p.addr, d)]);
    assert_eq!(out.len(), 1);
    let plain = s.open_rtcp(&out[0].1).unwrap();
    assert_eq!(plain.len(), 12);
    assert_eq!(plain[1], 202);
    assert_eq!(be32(&plain, 4), 0x2222);
    // RR + PLI + FIR from the subscriber: the PLI goes to the publisher with its SSRC mapped
    // back; the FIR right behind it asks for the same keyframe and is aggregated with it.
    let mut f = vec![0x80, 201, 0, 1];
    f.extend_from_slice(&0x5u32.to_be_bytes());
    f.extend_from_slice(&[0x81, 206, 0, 2]);
    f.extend_from_slice(&0x5u32.to_be_bytes());
    f.extend_from_slice(&0x2222u32.to_be_bytes());
    f.extend_from_slice(&[0x84, 206, 0, 4]);
    f.extend_from_slice(&0x5u32.to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(&0x2222u32.to_be_bytes());
    f.extend_from_slice(&[3, 0, 0, 0]);
    let d = s.rtcp(&f);
    let out = rig.batch(&[(s.addr, d)]);
    assert_eq!(out.len(), 1);
    assert_eq!(
        rig.counters().feedback[contract::shm::Feedback::PliAggregated as usize],
        1
    );
    for (dst, d) in &out {
        assert_eq!(*dst, p.addr);
        let plain = p.open_rtcp(d).unwrap();
        if plain[0] & 0x1F == 1 {
            assert_eq!(be32(&plain, 8), 0x1111);
        } else {
            assert_eq!(be32(&plain, 12), 0x1111);
        }
    }
    assert_eq!(rig.counters().drops.iter().sum::<u64>(), 0);
}

#[test]
fn bad_datagrams_counted_by_reason() {
    let mut rig = Rig::new("bad");
    let mut p = Peer::new(1, addr(0), Role::Speaker, Profile::Aes128CmSha1_80);
    let s = Peer::new(2, addr(1), Role::Viewer, Profile::Aes128CmSha1_80);
    rig.add(&p);
    rig.add(&s);
    rig.route(1, None, 2, rewrite(None, None));
    let good = p.rtp(1, 1, 1, 96, &[1; 50]);
    let mut forged = p.rtp(1, 2, 1, 96, &[1; 50]);
    let l = forged.len();
    forged[l - 1] ^= 1;
    let mut truncated = p.rtp(1, 3, 1, 96, &[1; 50]);
    truncated.truncate(8);
    let mut wrong_version = p.rtp(1, 4, 1, 96, &[1; 50]);
    wrong_version[0] = 0x40;
    let stranger: SocketAddr = "127.0.0.9:9".parse().unwrap();
    // A Binding request (RFC 8489 §5: type, length 0, magic cookie, transaction id): no ICE
    // check (no USERNAME, MESSAGE-INTEGRITY, FINGERPRINT), so the relay drops it itself.
    let mut stun = vec![0u8; 20];
    stun[1] = 1;
    stun[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    // A complete DTLS record goes to control, addressed by its source.
    let dtls = vec![22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1];
    let out = rig.batch(&[
        (p.addr, good.clone()),
        (p.addr, good.clone()), // replay
        (p.addr, forged),
        (p.addr, truncated),
        (p.addr, wrong_version),
        (p.addr, vec![0xFF; 30]),
        (p.addr, vec![]),
        (stranger, good),
        (stranger, stun.clone()),
        (p.addr, stun),
        (stranger, dtls.clone()),
        (p.addr, dtls),
    ]);
    assert_eq!(out.len(), 1);
    assert_eq!(rig.slow.len(), 2);
    assert_eq!(rig.slow.metas()[0].dst, stranger);
    let c = rig.counters();
    let d = |r: DropReason| c.drops[r as usize];
    assert_eq!(d(DropReason::Replayed), 1);
    assert_eq!(d(DropReason::AuthFailed), 1);
    // Truncated RTP is shorter than a header; 0x40 is outside RFC 7983's RTP range.
    assert_eq!(d(DropReason::Malformed) + d(DropReason::AuthFailed), 2);
    assert_eq!(d(DropReason::Demux), 3);
    assert_eq!(d(DropReason::UnknownSource), 1);
    assert_eq!(d(DropReason::StunNotCheck), 2);
    assert_eq!(c.slow_path_up, 2);
    assert_eq!(c.packets_in, 12);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    /// Arbitrary datagrams from known and unknown sources: no panic, every one counted.
    #[test]
    fn arbitrary_datagrams_never_panic(
        dgs in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..1600)), 1..24)
    ) {
        let mut rig = Rig::new("prop");
        let p = Peer::new(1, addr(0), Role::Trunk, Profile::AeadAes128Gcm);
        let s = Peer::new(2, addr(1), Role::Trunk, Profile::Aes128CmSha1_80);
        rig.add(&p);
        rig.add(&s);
        rig.route(1, None, 2, rewrite(Some(3), Some((0, 1))));
        rig.route(2, None, 1, rewrite(None, None));
        let stranger: SocketAddr = "[::1]:9".parse().unwrap();
        let input: Vec<_> = dgs
            .into_iter()
            .map(|(known, mut d)| {
                // Bias towards the RTP/RTCP range so the SRTP paths are exercised.
                if let Some(b) = d.first_mut() {
                    if *b & 1 == 0 { *b = 0x80 | (*b & 0x3F); }
                }
                (if known { p.addr } else { stranger }, d)
            })
            .collect();
        let n = input.len() as u64;
        let out = rig.batch(&input);
        let c = rig.counters();
        prop_assert_eq!(c.packets_in, n);
        prop_assert!(out.is_empty());
        prop_assert_eq!(c.drops.iter().sum::<u64>() + c.slow_path_up, n);
    }
}
