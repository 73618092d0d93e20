//! Zero heap allocations per packet in the engine after warm-up (fan-out 1 and 10, RTP and
//! RTCP, per-session diagnostics counted and published, the relay's own sender and receiver
//! reports written at each turn's end, REMB to a publisher that takes it, simulcast layer
//! selection), counted by a global allocator. Its own test binary so no other test allocates
//! concurrently; the one test runs its cases in sequence.

mod engine_support;

use contract::shm::Role;
use contract::srtp::Profile;
use engine_support::*;
use relay::batch::MAX_DATAGRAM;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates to the system allocator unchanged; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
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
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn case(profile: Profile, fanout: u64) {
    // Every PLI goes up (no aggregation), so the count below is exact.
    let mut rig = Rig::with_config("alloc", |c| c.nack.pli_interval = Duration::ZERO);
    let mut p = Peer::new(1, addr(0), Role::Speaker, profile);
    let mut subs = Vec::new();
    for j in 0..fanout {
        let s = Peer::new(100 + j, addr(100 + j as u16), Role::Viewer, profile);
        rig.add(&s);
        subs.push(s);
    }
    rig.add(&p);
    for (j, s) in subs.iter().enumerate() {
        let rw = if j % 2 == 0 {
            Some(0x500 + j as u32)
        } else {
            None
        };
        rig.route(1, None, s.id, rewrite(rw, Some((96, 100))));
    }
    // Pre-encrypt everything (the peers' side allocates; the engine must not).
    let total = 300u16;
    let mut rtp_in = Vec::new();
    for seq in 0..total {
        // 10 packets per 100 ms batch below: a 90 kHz clock, so the relay's SRs have a rate.
        rtp_in.push(p.rtp(0x1234, seq, u32::from(seq) * 900, 96, &[7; 1200]));
    }
    // SR (replaced by the relay's own) + SDES (goes down).
    let mut sr = vec![0x80, 200, 0, 6];
    sr.extend_from_slice(&0x1234u32.to_be_bytes());
    sr.extend_from_slice(&[0; 20]);
    sr.extend_from_slice(&[0x81, 202, 0, 2]);
    sr.extend_from_slice(&0x1234u32.to_be_bytes());
    sr.extend_from_slice(&[1, 1, b'p', 0]);
    let mut rtcp_in = Vec::new();
    for _ in 0..total {
        rtcp_in.push(p.rtcp(&sr));
    }
    let mut pli = vec![0x81, 206, 0, 2];
    pli.extend_from_slice(&9u32.to_be_bytes());
    pli.extend_from_slice(&0x500u32.to_be_bytes());
    let mut fb_in = Vec::new();
    for _ in 0..total {
        fb_in.push(subs[0].rtcp(&pli));
    }

    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut run = |rig: &mut Rig, src, d: &[u8]| {
        buf[..d.len()].copy_from_slice(d);
        if rig.tx.len() + fanout as usize >= rig.tx.capacity() {
            rig.tx.clear();
        }
        rig.engine
            .handle_datagram(src, &mut buf, d.len(), &mut rig.tx, &mut rig.slow);
    };
    // Warm-up: index built, every context created, every queue touched.
    rig.engine.begin_batch(rig.now);
    for i in 0..20 {
        run(&mut rig, p.addr, &rtp_in[i]);
        run(&mut rig, p.addr, &rtcp_in[i]);
        run(&mut rig, subs[0].addr, &fb_in[i]);
    }
    rig.engine.end_batch(rig.now);
    let before = rig.engine.totals().packets_out;

    let published = rig.engine.forwarder().diagnostics().publishes();
    let reports = |rig: &Rig| {
        use contract::shm::Feedback;
        let t = rig.engine.totals();
        t.feedback(Feedback::SrSent) + t.feedback(Feedback::RrSent)
    };
    let reports_before = reports(&rig);
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for chunk in 2..(total as usize / 10) {
        // Each batch a publish interval later: every end_batch publishes the per-session
        // diagnostics too, and that must not allocate either.
        rig.now += relay::engine::diag::PUBLISH_INTERVAL;
        rig.engine.begin_batch(rig.now);
        for i in chunk * 10..chunk * 10 + 10 {
            run(&mut rig, p.addr, &rtp_in[i]);
            run(&mut rig, p.addr, &rtcp_in[i]);
            run(&mut rig, subs[0].addr, &fb_in[i]);
        }
        // The relay's own reports (SR per output stream, RR to the publisher) when due.
        rig.tx.clear();
        rig.engine.poll(rig.now, &mut rig.tx);
        rig.engine.end_batch(rig.now);
    }
    COUNTING.store(false, Ordering::SeqCst);
    let allocs = ALLOCS.load(Ordering::SeqCst);
    let sent = rig.engine.totals().packets_out - before;
    let reported = reports(&rig) - reports_before;
    // 2.8 s: about three reports per output stream and to the publisher (1 s ± 50 %).
    assert!(
        reported >= 2 * (fanout + 1),
        "{profile} fan-out {fanout}: {reported} reports"
    );
    // Every RTP and SDES went to each subscriber, every PLI up to the publisher, and the
    // relay's own reports.
    assert_eq!(
        sent,
        280 * (2 * fanout + 1) + reported,
        "{profile} fan-out {fanout}"
    );
    assert_eq!(
        allocs, 0,
        "{profile} fan-out {fanout}: {allocs} allocations"
    );
    let rounds = rig.engine.forwarder().diagnostics().publishes() - published;
    assert_eq!(
        rounds,
        total as u64 / 10 - 2,
        "one diagnostics publish per batch"
    );
    assert_eq!(rig.engine.forwarder().diagnostics().unpublished(), 0);
    if fanout > 1 {
        nack_case(&mut rig, &mut subs[1], profile);
    }
}

/// NACKs answered from the retransmission cache (and one for a packet the cache never had,
/// asked of the publisher at the turn's end) allocate nothing either. `sub` received the
/// publisher's stream 0x1234 unrewritten, sequence numbers 0..300.
fn nack_case(rig: &mut Rig, sub: &mut Peer, profile: Profile) {
    use contract::shm::Feedback;
    let mut nacks = Vec::new();
    // The first one (seq 100) warms up the subscriber's inbound SRTCP context.
    for seq in std::iter::once(100).chain(200u16..280) {
        let mut b = [0u8; 64];
        let (n, _) = contract::wire::rtcp_write::nack(&mut b, 9, 0x1234, &[seq, seq + 5]).unwrap();
        nacks.push(sub.rtcp(&b[..n]));
    }
    let mut buf = vec![0u8; MAX_DATAGRAM];
    rig.engine.begin_batch(rig.now);
    buf[..nacks[0].len()].copy_from_slice(&nacks[0]);
    let n = nacks[0].len();
    rig.engine
        .handle_datagram(sub.addr, &mut buf, n, &mut rig.tx, &mut rig.slow);
    rig.engine.end_batch(rig.now);
    let before = rig.engine.totals().feedback(Feedback::Retransmitted);
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    rig.engine.begin_batch(rig.now);
    for d in &nacks[1..] {
        buf[..d.len()].copy_from_slice(d);
        rig.tx.clear();
        rig.engine
            .handle_datagram(sub.addr, &mut buf, d.len(), &mut rig.tx, &mut rig.slow);
    }
    rig.engine.poll(rig.now, &mut rig.tx);
    rig.engine.end_batch(rig.now);
    COUNTING.store(false, Ordering::SeqCst);
    let allocs = ALLOCS.load(Ordering::SeqCst);
    let resent = rig.engine.totals().feedback(Feedback::Retransmitted) - before;
    // 80 NACKs of two packets; each packet resent once (the second NACK of 205..280 comes
    // within one round trip of the first).
    assert_eq!(resent, 85, "{profile}");
    assert_eq!(allocs, 0, "{profile} NACKs: {allocs} allocations");
}

/// A publisher that takes REMB (its session flags name an abs-send-time id): once its
/// estimator exists (the first packet with the extension), its packets feed it, the feedback
/// tick sends it REMB and a viewer's REMB about its stream is folded in, all without
/// allocating.
fn remb_case(profile: Profile) {
    use contract::shm::{session_flags, Feedback};
    let mut rig = Rig::new("alloc-remb");
    let mut p = Peer::new(1, addr(0), Role::Speaker, profile);
    let mut s = Peer::new(2, addr(1), Role::Viewer, profile);
    let mut rec = p.record();
    rec.flags = session_flags::with_abs_send_time_id(rec.flags, Some(2));
    rig.writer.put_session(&rec).unwrap();
    rig.add(&s);
    rig.route(1, None, 2, rewrite(None, Some((96, 100))));
    // 3 s of 1000-byte packets every 10 ms, stamped with abs-send-time (id 2).
    let rtp_in: Vec<Vec<u8>> = (0..300u16)
        .map(|seq| {
            let ast = (u32::from(seq) * 10 * 262_144 / 1000).to_be_bytes();
            let mut plain = vec![0x90, 96];
            plain.extend_from_slice(&seq.to_be_bytes());
            plain.extend_from_slice(&(u32::from(seq) * 900).to_be_bytes());
            plain.extend_from_slice(&0x1234u32.to_be_bytes());
            plain.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x22, ast[1], ast[2], ast[3]]);
            plain.extend_from_slice(&[7; 1000]);
            let mut buf = vec![0u8; MAX_DATAGRAM];
            buf[..plain.len()].copy_from_slice(&plain);
            let n = p.send.protect_rtp(&mut buf, plain.len()).unwrap();
            buf.truncate(n);
            buf
        })
        .collect();
    let mut remb = [0u8; 64];
    let n = contract::wire::twcc::write_remb(&mut remb, 9, 400_000, &[0x1234]).unwrap();
    let remb_in: Vec<Vec<u8>> = (0..30).map(|_| s.rtcp(&remb[..n])).collect();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut turn = |rig: &mut Rig, k: usize| {
        rig.now += Duration::from_millis(10);
        rig.tx.clear();
        rig.engine.begin_batch(rig.now);
        let d = &rtp_in[k];
        buf[..d.len()].copy_from_slice(d);
        rig.engine
            .handle_datagram(p.addr, &mut buf, d.len(), &mut rig.tx, &mut rig.slow);
        if k % 10 == 0 {
            let d = &remb_in[k / 10];
            buf[..d.len()].copy_from_slice(d);
            rig.engine
                .handle_datagram(s.addr, &mut buf, d.len(), &mut rig.tx, &mut rig.slow);
        }
        rig.engine.poll(rig.now, &mut rig.tx);
        rig.engine.end_batch(rig.now);
    };
    // Warm-up: the estimator created, its rate measured, the first REMB sent.
    for k in 0..100 {
        turn(&mut rig, k);
    }
    let sent = |rig: &Rig| rig.engine.totals().feedback(Feedback::RembSent);
    let folded = |rig: &Rig| rig.engine.totals().feedback(Feedback::RembFolded);
    let (sent_before, folded_before) = (sent(&rig), folded(&rig));
    assert!(sent_before > 0, "{profile}: no REMB in the warm-up");
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for k in 100..300 {
        turn(&mut rig, k);
    }
    COUNTING.store(false, Ordering::SeqCst);
    let allocs = ALLOCS.load(Ordering::SeqCst);
    assert!(
        sent(&rig) > sent_before,
        "{profile}: REMB sent while counting"
    );
    assert_eq!(
        folded(&rig) - folded_before,
        20,
        "{profile}: viewer REMBs folded"
    );
    assert_eq!(allocs, 0, "{profile} REMB: {allocs} allocations");
}

/// Simulcast: two VP8 layers of one speaker into ten viewers over layered routes. Layer
/// selection (the VP8 descriptor read once per packet, the layers' activity noted, key frames
/// asked of the publisher, every viewer switching up on the high layer's key frame) allocates
/// nothing either.
fn layered_case(profile: Profile) {
    use contract::shm::{Feedback, Layer};
    const LOW: u32 = 0x1010;
    const HIGH: u32 = 0x3030;
    let mut rig = Rig::new("alloc-layers");
    let mut p = Peer::new(1, addr(0), Role::Speaker, profile);
    rig.add(&p);
    for j in 0..10u64 {
        let s = Peer::new(100 + j, addr(100 + j as u16), Role::Viewer, profile);
        rig.add(&s);
        for (index, ssrc) in [(0u8, LOW), (1, HIGH)] {
            let mut rw = rewrite(Some(0xAAAA), None);
            rw.layer = Some(Layer {
                index,
                count: 2,
                max: Layer::NO_CAP,
                max_temporal: Layer::NO_CAP,
            });
            rig.route(1, Some(ssrc), s.id, rw);
        }
    }
    // 3 s at 30 frames/s, one packet per frame and layer (RFC 7741 descriptor with a 15-bit
    // picture ID): a low key frame first; the high layer's only key frame at 1.5 s.
    let mut frames = Vec::new();
    for f in 0..90u16 {
        let mut layer = |ssrc, key: bool| {
            let pid = f | 0x8000;
            let mut payload = vec![0x90, 0xE0, (pid >> 8) as u8, pid as u8, f as u8, 0];
            payload.push(if key { 0x10 } else { 0x11 });
            payload.extend_from_slice(&[7; 1000]);
            p.rtp(ssrc, f, u32::from(f) * 3000, 96, &payload)
        };
        frames.push([layer(LOW, f == 0), layer(HIGH, f == 45)]);
    }
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut turn = |rig: &mut Rig, f: usize| {
        rig.now += Duration::from_millis(33);
        rig.tx.clear();
        rig.engine.begin_batch(rig.now);
        for d in &frames[f] {
            buf[..d.len()].copy_from_slice(d);
            rig.engine
                .handle_datagram(p.addr, &mut buf, d.len(), &mut rig.tx, &mut rig.slow);
        }
        rig.engine.poll(rig.now, &mut rig.tx);
        rig.engine.end_batch(rig.now);
    };
    // Warm-up: every viewer on the low layer, the high one wanted and asked for.
    for f in 0..15 {
        turn(&mut rig, f);
    }
    let count = |rig: &Rig, e| rig.engine.totals().feedback(e);
    assert!(count(&rig, Feedback::LayerKeyframeRequest) > 0, "{profile}");
    let switches = count(&rig, Feedback::LayerSwitch);
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for f in 15..90 {
        turn(&mut rig, f);
    }
    COUNTING.store(false, Ordering::SeqCst);
    let allocs = ALLOCS.load(Ordering::SeqCst);
    assert_eq!(
        count(&rig, Feedback::LayerSwitch) - switches,
        10,
        "{profile}: every viewer switched up while counting"
    );
    assert_eq!(allocs, 0, "{profile} layers: {allocs} allocations");
}

#[test]
fn no_allocation_per_packet() {
    for profile in [Profile::Aes128CmSha1_80, Profile::AeadAes128Gcm] {
        case(profile, 1);
        case(profile, 10);
        remb_case(profile);
        layered_case(profile);
    }
}
