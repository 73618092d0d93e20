//! Simulcast through the engine: layered routes from one publisher's layer SSRCs into one
//! subscriber output (docs/ENGINE.md "Simulcast"), over the transparent test cipher of
//! `tests.rs`.

use super::tests::{addr, route, rtp, session, Rig};
use contract::shm::{Feedback, Layer, Rewrite, Role, RouteRecord};
use contract::wire::rtcp::{fmt, packet_type, RtcpPacket};
use contract::wire::rtp::RtpPacket;
use contract::wire::vp8::Vp8Descriptor;
use std::time::{Duration, Instant};

const LOW: u32 = 0x1010;
const HIGH: u32 = 0x3030;
const OUT: u32 = 0xAAAA;

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
