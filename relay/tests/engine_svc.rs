//! SVC through the whole engine (docs/ENGINE.md "SVC"): a publisher sends two spatial layers
//! on one SSRC, each frame described by a Dependency Descriptor; two viewers' routes carry
//! the descriptor's id and a one-layer cap, one of them capped to spatial layer 0. The capped
//! viewer gets the S0 frames only, numbered without gaps, with its active decode targets
//! written into the descriptor and the marker on its last packet of each picture; the free
//! one gets everything unchanged. Then the same stream runs with a counting allocator: the
//! per-packet path allocates nothing.

mod engine_support;

use contract::shm::{Feedback, Layer, Role};
use contract::srtp::Profile;
use contract::wire::dd::{self, Structure};
use contract::wire::rtp::RtpPacket;
use engine_support::*;
use relay::batch::MAX_DATAGRAM;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Allocations are counted on the measuring thread only: the test harness's own threads
    /// (reporting another test's result) allocate at times of their own.
    static HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn counted() -> bool {
    COUNTING.load(Ordering::Relaxed) && HERE.try_with(|h| h.get()).unwrap_or(false)
}

struct Counting;

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The allocation count is process-wide: the tests of this file run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The publisher's id of the Dependency Descriptor element.
const DD_ID: u8 = 5;
const SSRC: u32 = 0x5555;

/// MSB-first bits.
#[derive(Default)]
struct Bits(Vec<bool>);

impl Bits {
    fn f(&mut self, v: u32, n: u32) {
        for i in (0..n).rev() {
            self.0.push((v >> i) & 1 == 1);
        }
    }
    fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.0.len().div_ceil(8)];
        for (i, b) in self.0.iter().enumerate() {
            if *b {
                out[i / 8] |= 0x80 >> (i % 8);
            }
        }
        out
    }
}

/// L2T1, full SVC: decode target 0 is S0, 1 is S0+S1. Templates: 0 S0 key (no reference),
/// 1 S0 delta (references the S0 frame two back), 2 S1 (references the S0 frame before it).
fn descriptor(template: u8, frame: u16, structure: bool) -> Vec<u8> {
    let mut b = Bits::default();
    b.f(1, 1); // start of frame
    b.f(1, 1); // end of frame
    b.f(u32::from(template), 6);
    b.f(u32::from(frame), 16);
    if structure {
        b.f(0b10000, 5);
        b.f(0, 6); // template id offset
        b.f(1, 5); // two decode targets
        b.f(0, 2); // template 1: same layers
        b.f(2, 2); // template 2: next spatial layer
        b.f(3, 2); // no more templates
        for dtis in [[2, 2], [2, 3], [0, 2]] {
            for d in dtis {
                b.f(d, 2); // switch / required / not present
            }
        }
        b.f(0, 1); // template 0: no fdiff
        b.f(1, 1);
        b.f(1, 4); // template 1: fdiff 2
        b.f(0, 1);
        b.f(1, 1);
        b.f(0, 4); // template 2: fdiff 1
        b.f(0, 1);
        b.f(0, 1); // ns(3) = 0: no chains
        b.f(0, 1); // no resolutions
    }
    b.bytes()
}

/// A plain RTP packet carrying `dd` as a one-byte-form element.
fn packet(seq: u16, ts: u32, marker: bool, dd: &[u8]) -> Vec<u8> {
    let mut v = vec![0x90, 96 | if marker { 0x80 } else { 0 }];
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&SSRC.to_be_bytes());
    let mut ext = vec![(DD_ID << 4) | (dd.len() as u8 - 1)];
    ext.extend_from_slice(dd);
    while ext.len() % 4 != 0 {
        ext.push(0);
    }
    v.extend_from_slice(&[0xBE, 0xDE]);
    v.extend_from_slice(&((ext.len() / 4) as u16).to_be_bytes());
    v.extend_from_slice(&ext);
    v.extend_from_slice(&[0x42; 200]);
    v
}

/// Superframe `k`: S0 then S1 (one packet each, the S1 one with the marker); frame numbers
/// 2k and 2k+1; superframe 0 is the key frame with the structure.
fn superframe(k: u16) -> [Vec<u8>; 2] {
    let ts = u32::from(k) * 3000;
    let s0 = if k == 0 {
        descriptor(0, 0, true)
    } else {
        descriptor(1, 2 * k, false)
    };
    [
        packet(2 * k, ts, false, &s0),
        packet(2 * k + 1, ts, true, &descriptor(2, 2 * k + 1, false)),
    ]
}

/// The publisher's SRTP packet of `plain`.
fn protect(p: &mut Peer, plain: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    buf[..plain.len()].copy_from_slice(plain);
    let n = p.send.protect_rtp(&mut buf, plain.len()).unwrap();
    buf.truncate(n);
    buf
}

fn svc_rewrite(out_ssrc: u32, max: u8) -> contract::shm::Rewrite {
    let mut rw = rewrite(Some(out_ssrc), Some((96, 98)));
    rw.layer = Some(Layer {
        index: 0,
        count: 1,
        max,
        max_temporal: Layer::NO_CAP,
    });
    rw.dd_id = DD_ID;
    rw
}

#[test]
fn svc_routes_forward_per_decode_target_without_allocating() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let profile = Profile::AeadAes128Gcm;
    let mut rig = Rig::new("svc");
    let mut p = Peer::new(1, addr(0), Role::Speaker, profile);
    let mut free = Peer::new(2, addr(2), Role::Viewer, profile);
    let mut capped = Peer::new(3, addr(3), Role::Viewer, profile);
    for x in [&p, &free, &capped] {
        rig.add(x);
    }
    rig.route(1, Some(SSRC), 2, svc_rewrite(0x700, Layer::NO_CAP));
    rig.route(1, Some(SSRC), 3, svc_rewrite(0x701, 0));

    let mut got_free = Vec::new();
    let mut got_capped = Vec::new();
    for k in 0..20u16 {
        let input: Vec<_> = superframe(k)
            .iter()
            .map(|d| (p.addr, protect(&mut p, d)))
            .collect();
        for (dst, d) in rig.batch(&input) {
            if dst == free.addr {
                got_free.push(free.open_rtp(&d).unwrap());
            } else if dst == capped.addr {
                got_capped.push(capped.open_rtp(&d).unwrap());
            }
        }
    }
    assert_eq!(got_free.len(), 40, "the free viewer gets every frame");
    assert_eq!(got_capped.len(), 20, "the capped viewer gets the S0 frames");
    let mut known: Option<Structure> = None;
    for (i, b) in got_capped.iter().enumerate() {
        let r = RtpPacket::parse(b).unwrap();
        // Output numbering without gaps over the dropped S1 packets.
        let first = RtpPacket::parse(&got_capped[0]).unwrap().sequence();
        assert_eq!(r.sequence(), first.wrapping_add(i as u16));
        assert_eq!(r.ssrc(), 0x701);
        // Its picture ends with its S0 frame: the marker moved there.
        assert!(r.marker(), "packet {i}");
        let v = r.extension_by_id(DD_ID).expect("descriptor kept");
        let mut new = Structure::default();
        let f = dd::parse(v, known.as_ref(), &mut new).unwrap();
        assert_eq!(f.spatial, 0);
        if f.structure {
            known = Some(new);
        }
        // Decode target 0 only is active for this viewer.
        assert_eq!(f.active_targets, Some(0b01), "packet {i}");
    }
    // The free viewer's packets keep the publisher's descriptors and markers (its active
    // decode targets are the publisher's: only the structure's packet states them).
    for (i, b) in got_free.iter().enumerate() {
        let r = RtpPacket::parse(b).unwrap();
        assert_eq!(r.marker(), i % 2 == 1);
        let v = r.extension_by_id(DD_ID).unwrap();
        let sent = superframe(i as u16 / 2)[i % 2].clone();
        let orig = RtpPacket::parse(&sent)
            .unwrap()
            .extension_by_id(DD_ID)
            .unwrap()
            .to_vec();
        if i > 0 {
            assert_eq!(v, &orig[..], "packet {i}");
        }
    }
    let c = rig.counters();
    // Every S1 frame is not part of the capped viewer's decode target.
    assert_eq!(c.feedback(Feedback::SvcNotPresent), 20);
    assert_eq!(c.feedback(Feedback::SvcUnreferenced), 0);
    assert_eq!(c.feedback(Feedback::SvcNoDescriptor), 0);

    // The steady state allocates nothing.
    let pre: Vec<Vec<u8>> = (20..220u16)
        .flat_map(superframe)
        .map(|d| protect(&mut p, &d))
        .collect();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut feed = |rig: &mut Rig, d: &[u8]| {
        buf[..d.len()].copy_from_slice(d);
        if rig.tx.len() + 2 >= rig.tx.capacity() {
            rig.tx.clear();
        }
        rig.engine
            .handle_datagram(p.addr, &mut buf, d.len(), &mut rig.tx, &mut rig.slow);
    };
    rig.engine.begin_batch(rig.now);
    for d in &pre[..40] {
        feed(&mut rig, d);
    }
    rig.engine.end_batch(rig.now);
    let before = rig.engine.totals().packets_out;
    ALLOCS.store(0, Ordering::SeqCst);
    HERE.with(|h| h.set(true));
    COUNTING.store(true, Ordering::SeqCst);
    for chunk in pre[40..].chunks(40) {
        rig.now += std::time::Duration::from_millis(100);
        rig.engine.begin_batch(rig.now);
        for d in chunk {
            feed(&mut rig, d);
        }
        rig.engine.end_batch(rig.now);
    }
    COUNTING.store(false, Ordering::SeqCst);
    HERE.with(|h| h.set(false));
    let allocs = ALLOCS.load(Ordering::SeqCst);
    let sent = rig.engine.totals().packets_out - before;
    // 360 packets: all to the free viewer, the S0 half to the capped one.
    assert_eq!(sent, 360 + 180);
    assert_eq!(allocs, 0, "{allocs} allocations");
}

/// A resend of a packet whose first copy got the subscriber's active decode targets gets them
/// again: on the stream itself (no RTX) it has the first copy's SRTP index, so it must be the
/// same plaintext (RFC 3711 §9.1) and is the first datagram byte for byte; as RTX it is the
/// first copy inside the RTX payload (RFC 4588 §4), mask included.
#[test]
fn resends_carry_the_active_decode_targets_of_the_first_copy() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    use contract::shm::RtxOut;
    use contract::wire::{rtcp_write, rtx};
    let profile = Profile::AeadAes128Gcm;
    let mut rig = Rig::new("svc-resend");
    let mut p = Peer::new(1, addr(0), Role::Speaker, profile);
    let mut plain = Peer::new(2, addr(2), Role::Viewer, profile);
    let mut with_rtx = Peer::new(3, addr(3), Role::Viewer, profile);
    for x in [&p, &plain, &with_rtx] {
        rig.add(x);
    }
    rig.route(1, Some(SSRC), 2, svc_rewrite(0x700, 0));
    let mut rw = svc_rewrite(0x701, 0);
    rw.rtx = Some(RtxOut {
        payload_type: 97,
        ssrc: 0x801,
    });
    rig.route(1, Some(SSRC), 3, rw);

    let (mut to_plain, mut to_rtx) = (Vec::new(), Vec::new());
    for k in 0..6u16 {
        let input: Vec<_> = superframe(k)
            .iter()
            .map(|d| (p.addr, protect(&mut p, d)))
            .collect();
        for (dst, d) in rig.batch(&input) {
            if dst == plain.addr {
                to_plain.push(d);
            } else if dst == with_rtx.addr {
                to_rtx.push(with_rtx.open_rtp(&d).unwrap());
            }
        }
    }
    assert_eq!((to_plain.len(), to_rtx.len()), (6, 6), "the S0 frames");
    let nack = |media: u32, seq: u16| {
        let mut b = [0u8; 64];
        let (n, _) = rtcp_write::nack(&mut b, 0xFA17_FA17, media, &[seq]).unwrap();
        b[..n].to_vec()
    };
    // Packet 0 carries the structure, packet 3 a plain frame whose first packet got the mask.
    for i in [0usize, 3] {
        let first = plain.open_rtp(&to_plain[i]).unwrap();
        let seq = RtpPacket::parse(&first).unwrap().sequence();
        let f = dd::parse(
            RtpPacket::parse(&first)
                .unwrap()
                .extension_by_id(DD_ID)
                .unwrap(),
            None,
            &mut Structure::default(),
        );
        if i == 0 {
            assert_eq!(f.unwrap().active_targets, Some(0b01));
        }
        let fb = plain.rtcp(&nack(0x700, seq));
        let out = rig.batch(&[(plain.addr, fb)]);
        let resent: Vec<_> = out.iter().filter(|(d, _)| *d == plain.addr).collect();
        assert_eq!(resent.len(), 1, "packet {i}: {out:?}");
        assert_eq!(
            resent[0].1, to_plain[i],
            "packet {i}: the first datagram, byte for byte"
        );

        let seq = RtpPacket::parse(&to_rtx[i]).unwrap().sequence();
        let fb = with_rtx.rtcp(&nack(0x701, seq));
        let out = rig.batch(&[(with_rtx.addr, fb)]);
        let resent: Vec<_> = out.iter().filter(|(d, _)| *d == with_rtx.addr).collect();
        assert_eq!(resent.len(), 1, "packet {i}: {out:?}");
        let opened = with_rtx.open_rtp(&resent[0].1).unwrap();
        assert_eq!(RtpPacket::parse(&opened).unwrap().ssrc(), 0x801);
        let mut orig = vec![0u8; MAX_DATAGRAM];
        let (n, _) = rtx::decapsulate(&opened, 98, 0x701, &mut orig).unwrap();
        assert_eq!(
            &orig[..n],
            &to_rtx[i][..],
            "packet {i}: the first copy inside RTX"
        );
    }
    assert_eq!(rig.counters().feedback(Feedback::ResendFailed), 0);
}

/// An SVC output whose decode target changes at a key frame (the cap lifted just before one)
/// restarts its viewer's decoder there: a NACK for a packet sent before that key frame is not
/// resent (`resend_stale`), one for the key frame is.
#[test]
fn packets_before_a_key_frame_switch_are_not_resent() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    use contract::shm::RouteRecord;
    use contract::wire::rtcp_write;
    let profile = Profile::AeadAes128Gcm;
    let mut rig = Rig::new("svc-stale");
    let mut p = Peer::new(1, addr(0), Role::Speaker, profile);
    let mut v = Peer::new(2, addr(2), Role::Viewer, profile);
    rig.add(&p);
    rig.add(&v);
    let id = rig.route(1, Some(SSRC), 2, svc_rewrite(0x700, 0));
    let mut sent = Vec::new();
    let mut run = |rig: &mut Rig, p: &mut Peer, frames: &[Vec<u8>]| {
        let input: Vec<_> = frames.iter().map(|d| (p.addr, protect(p, d))).collect();
        for (dst, d) in rig.batch(&input) {
            if dst == addr(2) {
                sent.push(d);
            }
        }
    };
    for k in 0..6u16 {
        run(&mut rig, &mut p, &superframe(k));
    }
    // The cap lifted, then a key frame: S0 (no reference, a switch point of both decode
    // targets) and S1.
    rig.writer
        .put_route(&RouteRecord {
            id,
            from: 1,
            ssrc: Some(SSRC),
            to: 2,
            rewrite: svc_rewrite(0x700, Layer::NO_CAP),
        })
        .unwrap();
    let key = [
        packet(12, 18_000, false, &descriptor(0, 12, false)),
        packet(13, 18_000, true, &descriptor(2, 13, false)),
    ];
    run(&mut rig, &mut p, &key);
    assert_eq!(
        sent.len(),
        8,
        "six S0 frames, then the key frame's S0 and S1"
    );
    // (The first choice counts as well.)
    assert_eq!(rig.counters().feedback(Feedback::LayerSwitch), 2);
    let mut seq_of = |d: &[u8]| {
        RtpPacket::parse(&v.open_rtp(d).unwrap())
            .unwrap()
            .sequence()
    };
    let (old, key_seq) = (seq_of(&sent[4]), seq_of(&sent[6]));
    let nack = |seq: u16| {
        let mut b = [0u8; 64];
        let (n, _) = rtcp_write::nack(&mut b, 0xFA17_FA17, 0x700, &[seq]).unwrap();
        b[..n].to_vec()
    };
    let fb = v.rtcp(&nack(old));
    let out = rig.batch(&[(v.addr, fb)]);
    assert!(out.iter().all(|(d, _)| *d != v.addr), "{out:?}");
    assert_eq!(rig.counters().feedback(Feedback::ResendStale), 1);
    let fb = v.rtcp(&nack(key_seq));
    let out = rig.batch(&[(v.addr, fb)]);
    let resent: Vec<_> = out.iter().filter(|(d, _)| *d == v.addr).collect();
    assert_eq!(resent.len(), 1, "{out:?}");
    assert_eq!(resent[0].1, sent[6], "the key frame's first copy");
}
