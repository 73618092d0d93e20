//! Simulcast through the engine: layered routes from one publisher's layer SSRCs into one
//! subscriber output (docs/ENGINE.md "Simulcast"), over the transparent test cipher of
//! `tests.rs`.

use super::tests::{addr, route, rtp, session, Rig};
use contract::shm::{Feedback, Layer, Rewrite, Role, RouteRecord, RtxOut};
use contract::wire::rtcp::{fmt, packet_type, RtcpPacket};
use contract::wire::rtp::RtpPacket;
use contract::wire::vp8::Vp8Descriptor;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub(super) const LOW: u32 = 0x1010;
pub(super) const HIGH: u32 = 0x3030;
pub(super) const OUT: u32 = 0xAAAA;

fn layered(id: u64, ssrc: u32, index: u8, max: u8) -> RouteRecord {
    route(
        id,
        1,
        Some(ssrc),
        3,
        Rewrite {
            ssrc: Some(OUT),
            layer: Some(Layer {
                index,
                count: 2,
                max,
                max_temporal: Layer::NO_CAP,
            }),
            ..Rewrite::default()
        },
    )
}

/// A VP8 packet of one frame: 15-bit picture ID, TL0PICIDX, TID 0; a key frame when `key`.
fn vp8(ssrc: u32, seq: u16, ts: u32, pid: u16, tl0: u8, key: bool, marker: bool) -> Vec<u8> {
    let pid = pid | 0x8000;
    let payload = [
        0x90,
        0xE0,
        (pid >> 8) as u8,
        pid as u8,
        tl0,
        0x00,
        if key { 0x10 } else { 0x11 },
        0x55,
    ];
    let mut p = rtp(ssrc, seq, ts, 96, &payload);
    if marker {
        p[1] |= 0x80;
    }
    p
}

struct Source {
    ssrc: u32,
    seq: u16,
    ts: u32,
    pid: u16,
    tl0: u8,
}

impl Source {
    fn frame(&mut self, key: bool) -> Vec<u8> {
        let p = vp8(self.ssrc, self.seq, self.ts, self.pid, self.tl0, key, true);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(3000);
        self.pid = (self.pid + 1) & 0x7FFF;
        self.tl0 = self.tl0.wrapping_add(1);
        p
    }
}

/// (sequence, timestamp, picture ID, TL0PICIDX, key frame) of a packet sent to the viewer.
fn seen(p: &[u8]) -> (u16, u32, u16, u8, bool) {
    let r = RtpPacket::parse(p).unwrap();
    assert_eq!(r.ssrc(), OUT, "one output SSRC whatever the layer");
    let d = Vp8Descriptor::parse(r.payload()).unwrap();
    (
        r.sequence(),
        r.timestamp(),
        d.picture_id.unwrap().0,
        d.tl0_pic_idx.unwrap(),
        d.keyframe,
    )
}

fn is_pli_for(p: &[u8], ssrc: u32) -> bool {
    RtcpPacket::parse(p).is_ok_and(|(r, _)| {
        r.packet_type() == packet_type::PSFB && r.count() == fmt::PLI && r.feedback_target() == ssrc
    })
}

#[test]
fn one_layer_at_a_time_switching_on_key_frames_with_continuous_numbering() {
    let mut rig = Rig::new(
        vec![session(1, Role::Speaker), session(3, Role::Viewer)],
        vec![
            layered(1, LOW, 0, Layer::NO_CAP),
            layered(2, HIGH, 1, Layer::NO_CAP),
        ],
    );
    let t0 = Instant::now();
    let mut lo = Source {
        ssrc: LOW,
        seq: 65510,
        ts: 1000,
        pid: 0x7FF0,
        tl0: 250,
    };
    let mut hi = Source {
        ssrc: HIGH,
        seq: 7,
        ts: 0xFFFF_0000,
        pid: 40,
        tl0: 3,
    };
    let mut t = Duration::ZERO;
    let mut sent = Vec::new();
    let mut plis = 0;
    // The low layer starts alone; its key frame starts the output at once.
    rig.fwd.set_now(t0);
    let out = rig.send(1, &lo.frame(true));
    assert_eq!(out.len(), 1);
    sent.push(seen(&out[0].1));
    // Both layers for 1.5 s with key frames on the high layer every 10th frame from 1.2 s.
    for i in 1..45 {
        t += Duration::from_millis(33);
        rig.fwd.set_now(t0 + t);
        for (d, p) in rig.send(1, &lo.frame(false)) {
            assert_eq!(d, addr(1003));
            sent.push(seen(&p));
        }
        for (d, p) in rig.send(1, &hi.frame(i >= 36 && i % 10 == 0)) {
            if d == addr(1001) {
                assert!(
                    is_pli_for(&p, HIGH),
                    "the relay asks the high layer for a key frame"
                );
                plis += 1;
            } else {
                sent.push(seen(&p));
            }
        }
    }
    assert!(plis >= 1);
    let keys: Vec<usize> = (0..sent.len()).filter(|&i| sent[i].4).collect();
    assert_eq!(
        keys.len(),
        2,
        "the first low key frame and the high key frame: {sent:?}"
    );
    // One stream: sequence numbers, timestamps, picture IDs and TL0PICIDX continue across
    // the switch (through the sequence-number and picture-ID wraps of the low layer).
    for w in sent.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert_eq!(b.0, a.0.wrapping_add(1), "{a:?} → {b:?}");
        assert!(b.1.wrapping_sub(a.1) >= 1 && b.1.wrapping_sub(a.1) <= 3000 * 2);
        assert_eq!(b.2, (a.2 + 1) & 0x7FFF);
        assert_eq!(b.3, a.3.wrapping_add(1));
    }
    let stats = rig.fwd.stats();
    assert_eq!(stats.feedback(Feedback::LayerSwitch), 1);
    assert!(stats.feedback(Feedback::LayerSkipped) > 30);
    assert_eq!(stats.feedback(Feedback::LayerKeyframeRequest), plis);

    // The operator caps the viewer to the low layer: a rebuild keeps the numbering and the
    // next low key frame switches down.
    rig.routes = vec![layered(1, LOW, 0, 0), layered(2, HIGH, 1, 0)];
    rig.rebuild();
    let last = *sent.last().unwrap();
    t += Duration::from_millis(233);
    rig.fwd.set_now(t0 + t);
    let out = rig.send(1, &hi.frame(false));
    assert_eq!(out.len(), 1, "the high layer flows until the low key frame");
    let h = seen(&out[0].1);
    assert_eq!(h.0, last.0.wrapping_add(1));
    let out = rig.send(1, &lo.frame(false));
    assert!(out.len() == 1 && is_pli_for(&out[0].1, LOW));
    t += Duration::from_millis(33);
    rig.fwd.set_now(t0 + t);
    let out = rig.send(1, &lo.frame(true));
    let l = seen(&out[0].1);
    assert!(l.4);
    assert_eq!(
        (l.0, l.2, l.3),
        (h.0.wrapping_add(1), (h.2 + 1) & 0x7FFF, h.3.wrapping_add(1))
    );
    assert_eq!(l.1, h.1.wrapping_add(33 * 90));
    assert!(rig.send(1, &hi.frame(true)).is_empty());
    assert_eq!(rig.fwd.stats().feedback(Feedback::LayerSwitch), 2);
}

/// `p` with the transport-wide sequence element (id 3, `tw`) in a one-byte header extension.
fn with_twcc(p: &[u8], tw: u16) -> Vec<u8> {
    let mut v = p[..12].to_vec();
    v[0] |= 0x10;
    v.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x31]);
    v.extend_from_slice(&tw.to_be_bytes());
    v.push(0);
    v.extend_from_slice(&p[12..]);
    v
}

/// A simulcast layer for the estimate test: `per_frame` packets of `size` payload bytes per
/// frame at 30 frames/s; a key frame once the relay asked for one.
struct Paced {
    src: Source,
    per_frame: usize,
    size: usize,
    key_due: bool,
}

impl Paced {
    fn frame(&mut self, tw: &mut u16) -> Vec<Vec<u8>> {
        let key = std::mem::take(&mut self.key_due);
        let s = &mut self.src;
        let mut out = Vec::new();
        for k in 0..self.per_frame {
            let last = k + 1 == self.per_frame;
            let mut p = vp8(s.ssrc, s.seq, s.ts, s.pid, s.tl0, key && k == 0, last);
            p.resize(12 + self.size, 0x55);
            s.seq = s.seq.wrapping_add(1);
            *tw = tw.wrapping_add(1);
            out.push(with_twcc(&p, *tw));
        }
        s.ts = s.ts.wrapping_add(3000);
        s.pid = (s.pid + 1) & 0x7FFF;
        s.tl0 = s.tl0.wrapping_add(1);
        out
    }
}

/// The layer the viewer receives, by payload size (low: 300 bytes, high: 1000).
fn layer_of(p: &[u8]) -> usize {
    let r = RtpPacket::parse(p).unwrap();
    assert_eq!(r.ssrc(), OUT);
    usize::from(r.payload().len() > 600)
}

/// Layered routes from speaker 1's `LOW` and `HIGH` SSRCs to viewer 3 on one output SSRC
/// (`OUT`), stamping the transport-wide extension (id 5, from the publisher's 3), with `rtx`.
pub(super) fn stamped_layer_routes(rtx: Option<RtxOut>) -> Vec<RouteRecord> {
    let mut ext_map = [(0u8, 0u8); contract::shm::MAX_MAPPINGS];
    ext_map[0] = (3, 5);
    let rw = |ssrc, index| {
        route(
            u64::from(index) + 1,
            1,
            Some(ssrc),
            3,
            Rewrite {
                ssrc: Some(OUT),
                layer: Some(Layer {
                    index,
                    count: 2,
                    max: Layer::NO_CAP,
                    max_temporal: Layer::NO_CAP,
                }),
                ext_map,
                ext_map_len: 1,
                twcc_id: 5,
                rtx,
                ..Rewrite::default()
            },
        )
    };
    vec![rw(LOW, 0), rw(HIGH, 1)]
}

/// A speaker sending two VP8 layers (low: one 300-byte packet per frame, high: four of 1000
/// bytes) into one viewer whose routes stamp the transport-wide extension (id 5), so its
/// downlink estimate picks the layer.
fn estimated_two_layers() -> (Rig, [Paced; 2]) {
    let rig = Rig::new(
        vec![session(1, Role::Speaker), session(3, Role::Viewer)],
        stamped_layer_routes(None),
    );
    let source = |ssrc| Source {
        ssrc,
        seq: 100,
        ts: 0,
        pid: 1,
        tl0: 0,
    };
    let layers = [
        Paced {
            src: source(LOW),
            per_frame: 1,
            size: 300,
            key_due: true,
        },
        Paced {
            src: source(HIGH),
            per_frame: 4,
            size: 1000,
            key_due: true,
        },
    ];
    (rig, layers)
}

/// The subscriber's downlink estimate picks its layer (docs/ENGINE.md "Bandwidth
/// estimation"): without feedback the start estimate carries the high layer; feedback that
/// says 300 kbit/s moves it to the low layer (≈72 kbit/s) at the next low key frame; a steady
/// estimate makes no further switch; when the estimate recovers, the high layer (≈960 kbit/s)
/// comes back only after the up-switch hold, and no sooner than 5 s after a switch down.
#[test]
fn the_estimate_picks_the_layer_with_hysteresis() {
    use crate::engine::layers::{UP_AFTER_DOWN, UP_HOLD};
    let (mut rig, mut layers) = estimated_two_layers();
    let t0 = Instant::now();
    let mut tw = 0u16;
    // Runs `frames` frames (33 ms apart) from `*t`; a REMB of `remb` every 250 ms; returns the
    // layer of each frame the viewer received.
    let mut run = |rig: &mut Rig, t: &mut Duration, frames: usize, remb: Option<u64>| {
        let mut got = Vec::new();
        for f in 0..frames {
            *t += Duration::from_millis(33);
            rig.fwd.set_now(t0 + *t);
            if let (Some(bps), 0) = (remb, f % 8) {
                let mut b = [0u8; 64];
                let n = contract::wire::twcc::write_remb(&mut b, 0xFA17_FA17, bps, &[OUT]).unwrap();
                rig.send(3, &b[..n]);
            }
            for li in 0..layers.len() {
                for p in layers[li].frame(&mut tw) {
                    for (d, out) in rig.send(1, &p) {
                        if d == addr(1003) {
                            got.push(layer_of(&out));
                        } else if is_pli_for(&out, LOW) {
                            layers[0].key_due = true;
                        } else if is_pli_for(&out, HIGH) {
                            layers[1].key_due = true;
                        }
                    }
                }
            }
        }
        got
    };
    let switches = |rig: &Rig| rig.fwd.stats().feedback(Feedback::LayerSwitch);
    let mut t = Duration::ZERO;
    // 3 s without feedback: the start estimate (1.5 Mbit/s) carries the high layer.
    let got = run(&mut rig, &mut t, 90, None);
    assert_eq!(got.last(), Some(&1), "high layer at the start estimate");
    assert!(rig.fwd.estimate(3).is_some());
    // The viewer reports 300 kbit/s: low layer within a second.
    let got = run(&mut rig, &mut t, 30, Some(300_000));
    assert_eq!(got.last(), Some(&0), "low layer at 300 kbit/s: {got:?}");
    let down = switches(&rig);
    // Steady at 300 kbit/s for 10 s: no switch.
    let got = run(&mut rig, &mut t, 300, Some(300_000));
    assert!(got.iter().all(|&l| l == 0), "steady: {got:?}");
    assert_eq!(switches(&rig), down, "no flapping on a steady estimate");
    // Recovery to 5 Mbit/s: still low before the hold time, high after it.
    let hold_frames = (UP_HOLD.as_millis() / 33) as usize;
    let got = run(&mut rig, &mut t, hold_frames - 6, Some(5_000_000));
    assert!(got.iter().all(|&l| l == 0), "held: {got:?}");
    let got = run(&mut rig, &mut t, 60, Some(5_000_000));
    assert_eq!(got.last(), Some(&1), "high layer after the hold: {got:?}");
    assert_eq!(switches(&rig), down + 1);
    // What the session statistics publish: the estimate and the output's layer state.
    let viewer = rig.fwd.index().sessions.iter().find(|s| s.id == 3).unwrap();
    assert!(viewer.diag.downlink_bps() > 1_000_000);
    let l = viewer
        .diag
        .tx
        .iter()
        .find(|s| s.ssrc == OUT)
        .unwrap()
        .layer
        .unwrap();
    assert_eq!((l.current, l.target, l.count), (Some(1), 1, 2));
    assert_eq!(u64::from(l.switches), down + 1);
    // Down again, and an estimate that recovers a second later: the higher layer waits for
    // UP_AFTER_DOWN after the switch down, not just for the hold.
    let got = run(&mut rig, &mut t, 30, Some(300_000));
    assert_eq!(got.last(), Some(&0), "low again: {got:?}");
    let before_up = (UP_AFTER_DOWN.as_millis() / 33) as usize - 45;
    let got = run(&mut rig, &mut t, before_up, Some(5_000_000));
    assert!(
        got.iter().all(|&l| l == 0),
        "within 5 s of the switch down: {got:?}"
    );
    let got = run(&mut rig, &mut t, 60, Some(5_000_000));
    assert_eq!(got.last(), Some(&1), "high after UP_AFTER_DOWN: {got:?}");
    assert_eq!(switches(&rig), down + 3);
}

/// The same with transport-cc feedback from a viewer behind a 300 kbit/s bottleneck (a FIFO
/// the relay's packets queue in; arrivals reported every 100 ms with the real codec): the
/// delay-based estimate falls, the viewer moves to the low layer, and stays there without a
/// further switch while the link stays the same.
#[test]
fn transport_cc_from_a_300k_link_moves_the_viewer_to_the_low_layer() {
    use contract::wire::twcc;
    let (mut rig, mut layers) = estimated_two_layers();
    const LINK_BPS: u64 = 300_000;
    let t0 = Instant::now();
    let mut tw = 0u16;
    let mut link_free_us = 0u64;
    // Arrivals not yet reported: (transport-wide number, arrival µs).
    let mut pending: Vec<(u16, u64)> = Vec::new();
    let mut fb_count = 0u8;
    let mut got = Vec::new();
    let mut t_us = 0u64;
    let mut next_fb = 100_000u64;
    while t_us < 20_000_000 {
        t_us += 33_333;
        rig.fwd.set_now(t0 + Duration::from_micros(t_us));
        for li in 0..layers.len() {
            for p in layers[li].frame(&mut tw) {
                for (d, out) in rig.send(1, &p) {
                    if d == addr(1003) {
                        let r = RtpPacket::parse(&out).unwrap();
                        let seq = twcc::read_seq(r.extension_by_id(5).unwrap()).unwrap();
                        // The bottleneck: serialised at LINK_BPS behind what is queued.
                        let bits = (out.len() as u64 + 28) * 8;
                        link_free_us = link_free_us.max(t_us) + bits * 1_000_000 / LINK_BPS;
                        pending.push((seq, link_free_us + 20_000));
                        got.push((t_us, layer_of(&out)));
                    } else if is_pli_for(&out, LOW) {
                        layers[0].key_due = true;
                    } else if is_pli_for(&out, HIGH) {
                        layers[1].key_due = true;
                    }
                }
            }
        }
        while t_us >= next_fb {
            // The viewer reports what arrived by now, in number order.
            let arrived: Vec<(u16, u64)> =
                pending.iter().copied().filter(|p| p.1 <= next_fb).collect();
            pending.retain(|p| p.1 > next_fb);
            if let Some(&(base, _)) = arrived.first() {
                let arrivals: Vec<Option<u64>> = arrived.iter().map(|p| Some(p.1)).collect();
                let mut b = [0u8; 1500];
                let h = twcc::FeedbackHeader {
                    sender_ssrc: 0xFA17_FA17,
                    media_ssrc: OUT,
                    base_seq: base,
                    fb_pkt_count: fb_count,
                };
                fb_count = fb_count.wrapping_add(1);
                let (n, covered) = twcc::write_feedback(&mut b, &h, &arrivals).unwrap();
                assert_eq!(covered, arrivals.len());
                assert!(
                    rig.send(3, &b[..n]).is_empty(),
                    "transport-cc stops at the relay"
                );
            }
            next_fb += 100_000;
        }
    }
    let est = rig.fwd.estimate(3).expect("an estimate");
    assert!(
        est < 400_000,
        "estimate {est} bit/s behind a 300 kbit/s link"
    );
    // Low within 6 s, then low to the end with no further switch.
    let low_from = got
        .iter()
        .position(|&(t, l)| t > 2_000_000 && l == 0)
        .expect("moved to the low layer");
    assert!(
        got[low_from].0 < 6_000_000,
        "low layer only at {} µs",
        got[low_from].0
    );
    assert!(got[low_from..].iter().all(|&(_, l)| l == 0), "stays low");
    // The first frame is the low layer's (the high one's key frame comes right after it), the
    // start estimate carries the high layer, the bottleneck brings it down once: no flapping.
    let mut runs: Vec<usize> = got.iter().map(|&(_, l)| l).collect();
    runs.dedup();
    assert_eq!(runs, [0, 1, 0], "layers in order of use");
    assert_eq!(rig.fwd.stats().feedback(Feedback::LayerSwitch), 2);
}

/// A NACKed packet of a layer the output switched to is resent as the subscriber first got
/// it: with the picture ID, TL0PICIDX and key index continued across the switch, not the
/// layer's own from the cache (the decoder would see a picture from another stream, and the
/// same SRTP index would cover another plaintext).
#[test]
fn a_resend_after_a_switch_carries_the_rewritten_vp8_descriptor_and_none_before_it() {
    use super::nack::NackConfig;
    use super::tests::nack;
    let mut rig = Rig::new(
        vec![session(1, Role::Speaker), session(3, Role::Viewer)],
        vec![
            layered(1, LOW, 0, Layer::NO_CAP),
            layered(2, HIGH, 1, Layer::NO_CAP),
        ],
    );
    rig.fwd.set_nack(NackConfig::default());
    let t0 = Instant::now();
    let mut lo = Source {
        ssrc: LOW,
        seq: 100,
        ts: 1000,
        pid: 500,
        tl0: 10,
    };
    let mut hi = Source {
        ssrc: HIGH,
        seq: 7,
        ts: 50_000,
        pid: 40,
        tl0: 3,
    };
    rig.fwd.set_now(t0);
    let to_viewer = |out: Vec<(std::net::SocketAddr, Vec<u8>)>| -> Vec<Vec<u8>> {
        out.into_iter()
            .filter(|(d, _)| *d == addr(1003))
            .map(|(_, p)| p)
            .collect()
    };
    let mut sent = to_viewer(rig.send(1, &lo.frame(true)));
    let mut t = Duration::ZERO;
    for i in 1..45 {
        t += Duration::from_millis(33);
        rig.fwd.set_now(t0 + t);
        sent.extend(to_viewer(rig.send(1, &lo.frame(false))));
        sent.extend(to_viewer(rig.send(1, &hi.frame(i >= 36 && i % 10 == 0))));
    }
    assert_eq!(rig.fwd.stats().feedback(Feedback::LayerSwitch), 1);
    let last = sent.last().unwrap().clone();
    let (seq, _, pid, tl0, _) = seen(&last);
    // The high layer's own picture ID for that frame was hi.pid - 1: the output's differs.
    assert_ne!(pid, (hi.pid + 0x7FFF) & 0x7FFF);
    assert_ne!(tl0, hi.tl0.wrapping_sub(1));
    t += Duration::from_millis(20);
    rig.fwd.set_now(t0 + t);
    let out = to_viewer(rig.send(3, &nack(OUT, &[seq])));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0], last, "the first copy, byte for byte");
    assert_eq!(rig.fwd.stats().feedback(Feedback::Retransmitted), 1);
    // A packet of the low layer from before the switch's key frame: the viewer's decoder
    // starts again from that key frame, so it is not resent.
    let (old, ..) = seen(&sent[5]);
    let out = to_viewer(rig.send(3, &nack(OUT, &[old])));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(rig.fwd.stats().feedback(Feedback::ResendStale), 1);
    assert_eq!(rig.fwd.stats().feedback(Feedback::Retransmitted), 1);
}

/// Speaker 1's two layers into viewer `to` (route ids `to * 10 + layer`), uncapped.
fn layers_into(to: u64) -> Vec<RouteRecord> {
    [(LOW, 0u8), (HIGH, 1)]
        .into_iter()
        .map(|(ssrc, index)| {
            let mut r = layered(to * 10 + u64::from(index), ssrc, index, Layer::NO_CAP);
            r.to = to;
            r
        })
        .collect()
}

/// What each layer sends is the source's, not a subscriber's: one activity per publisher
/// stream whatever the number of viewers, both viewers move up on the same key frame, and a
/// layer that goes silent stops being eligible for both at once (after `LAYER_IDLE`), so both
/// move down on the same low key frame.
#[test]
fn viewers_of_one_source_share_its_layer_activity() {
    use crate::engine::layers::LAYER_IDLE;
    let mut routes = layers_into(3);
    routes.extend(layers_into(4));
    let mut rig = Rig::new(
        vec![
            session(1, Role::Speaker),
            session(3, Role::Viewer),
            session(4, Role::Viewer),
        ],
        routes,
    );
    assert_eq!(rig.fwd.index().activity.len(), 2, "one per layer stream");
    let t0 = Instant::now();
    let mut lo = Source {
        ssrc: LOW,
        seq: 100,
        ts: 0,
        pid: 1,
        tl0: 0,
    };
    let mut hi = Source {
        ssrc: HIGH,
        seq: 9000,
        ts: 90_000,
        pid: 700,
        tl0: 50,
    };
    // A frame of `s`, its payload 300 bytes (low) or 1000 (high), as `layer_of` tells them.
    let frame = |s: &mut Source, key: bool| {
        let size = if s.ssrc == LOW { 300 } else { 1000 };
        let mut p = s.frame(key);
        p.resize(12 + size, 0x55);
        p
    };
    // Per viewer, the layer of each packet received, and the PLIs asked of each layer.
    let mut got: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
    let mut plis = [0usize; 2];
    let note =
        |out: Vec<(SocketAddr, Vec<u8>)>, got: &mut [Vec<usize>; 2], plis: &mut [usize; 2]| {
            for (d, p) in out {
                if d == addr(1003) {
                    got[0].push(layer_of(&p));
                } else if d == addr(1004) {
                    got[1].push(layer_of(&p));
                } else if is_pli_for(&p, LOW) {
                    plis[0] += 1;
                } else if is_pli_for(&p, HIGH) {
                    plis[1] += 1;
                }
            }
        };
    let mut t = Duration::ZERO;
    rig.fwd.set_now(t0);
    note(rig.send(1, &frame(&mut lo, true)), &mut got, &mut plis);
    // Both layers for 1.5 s; a high key frame once it is mature (frame 40).
    for i in 1..45 {
        t += Duration::from_millis(33);
        rig.fwd.set_now(t0 + t);
        note(rig.send(1, &frame(&mut lo, false)), &mut got, &mut plis);
        note(rig.send(1, &frame(&mut hi, i == 40)), &mut got, &mut plis);
    }
    for g in &got {
        assert_eq!(
            g.first(),
            Some(&0),
            "both start on the low key frame: {got:?}"
        );
        assert_eq!(g.last(), Some(&1), "both on the high layer: {got:?}");
    }
    assert_eq!(got[0], got[1], "the same packets for both");
    assert_eq!(rig.fwd.stats().feedback(Feedback::LayerSwitch), 2);
    // A rebuild keeps the layers' activity.
    rig.rebuild();
    assert_eq!(rig.fwd.index().activity.len(), 2);
    // The high layer stops. Until it has been silent LAYER_IDLE the low one is no target
    // (no PLI for it); then both viewers want it, and its next key frame moves both.
    let last_high = t;
    got = [Vec::new(), Vec::new()];
    let low_plis = plis[0];
    let mut key_at = None;
    while t < last_high + LAYER_IDLE + Duration::from_millis(500) {
        t += Duration::from_millis(33);
        rig.fwd.set_now(t0 + t);
        let before = plis[0];
        let key = key_at.is_none() && plis[0] > low_plis;
        if key {
            key_at = Some(t);
        }
        note(rig.send(1, &frame(&mut lo, key)), &mut got, &mut plis);
        if plis[0] > before && t < last_high + LAYER_IDLE {
            panic!(
                "low key frame asked for {:?} after the last high packet",
                t - last_high
            );
        }
    }
    let key_at = key_at.expect("a low key frame was asked for");
    assert!(key_at >= last_high + LAYER_IDLE);
    assert!(
        !got[0].is_empty() && got[0].iter().all(|&l| l == 0),
        "{got:?}"
    );
    assert_eq!(
        got[0], got[1],
        "both back on the low layer at the same key frame"
    );
    assert_eq!(rig.fwd.stats().feedback(Feedback::LayerSwitch), 4);
}
