//! SVC selector tests: a synthetic K-SVC publisher (L3T3_KEY, the shape Chromium sends for
//! VP9 and AV1 SVC) and an L1T3 one, described by Dependency Descriptors written bit by bit,
//! fed through one output's selector.

use super::*;
use contract::shm::Layer;
use std::time::Duration;

const NO: u8 = Layer::NO_CAP;

/// MSB-first bit writer for the test descriptors.
#[derive(Default)]
struct Enc {
    bits: Vec<bool>,
}

impl Enc {
    fn f(&mut self, v: u32, n: u32) {
        for i in (0..n).rev() {
            self.bits.push((v >> i) & 1 == 1);
        }
    }
    fn ns(&mut self, n: u32, v: u32) {
        let w = 32 - n.leading_zeros();
        let m = (1 << w) - n;
        if v < m {
            self.f(v, w - 1);
        } else {
            self.f((v + m) >> 1, w - 1);
            self.f((v + m) & 1, 1);
        }
    }
    fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.bits.len().div_ceil(8)];
        for (i, b) in self.bits.iter().enumerate() {
            if *b {
                out[i / 8] |= 0x80 >> (i % 8);
            }
        }
        out
    }
}

/// A publisher of `spatial` x `temporal` layers, K-SVC (`ksvc`: spatial layers reference each
/// other only in the key frame) or full SVC; temporal pattern T0 T2 T1 T2.
struct Publisher {
    spatial: u8,
    temporal: u8,
    ksvc: bool,
    frame: u16,
    seq: u16,
    ts: u32,
    superframe: u32,
    /// Last frame number per (spatial, temporal) and per chain.
    last: [[Option<u16>; 3]; 3],
    chain_last: [Option<u16>; 3],
}

/// (spatial, temporal, key) of each template, in the structure's order.
fn templates(spatial: u8, temporal: u8) -> Vec<(u8, u8, bool)> {
    let mut v = Vec::new();
    for s in 0..spatial {
        v.push((s, 0, true));
        for t in 0..temporal {
            v.push((s, t, false));
        }
    }
    v
}

impl Publisher {
    fn new(spatial: u8, temporal: u8, ksvc: bool) -> Publisher {
        Publisher {
            spatial,
            temporal,
            ksvc,
            frame: 1000,
            seq: 50_000,
            ts: 7_000,
            superframe: 0,
            last: [[None; 3]; 3],
            chain_last: [None; 3],
        }
    }

    fn dts(&self) -> u8 {
        self.spatial * self.temporal
    }

    /// The DTI of a frame of layer (s, t) for decode target (ds, dt).
    fn dti(&self, s: u8, t: u8, key: bool, ds: u8, dt: u8) -> Dti {
        let present = t <= dt && (s == ds || (s < ds && (key || !self.ksvc)));
        if !present {
            Dti::NotPresent
        } else if key {
            Dti::Switch
        } else if t == dt && t == self.temporal - 1 && t > 0 {
            Dti::Discardable
        } else {
            Dti::Required
        }
    }

    fn structure_bits(&self, e: &mut Enc) {
        let ts = templates(self.spatial, self.temporal);
        e.f(0, 6); // template id offset
        e.f(u32::from(self.dts()) - 1, 5);
        for (i, t) in ts.iter().enumerate() {
            let idc = match ts.get(i + 1) {
                None => 3,
                Some(n) if n.0 != t.0 => 2,
                Some(n) if n.1 == t.1 => 0,
                Some(_) => 1,
            };
            e.f(idc, 2);
        }
        for &(s, t, key) in &ts {
            for d in 0..self.dts() {
                e.f(
                    self.dti(s, t, key, d / self.temporal, d % self.temporal) as u32,
                    2,
                );
            }
        }
        for _ in &ts {
            e.f(0, 1); // no template fdiffs: every frame states its own
        }
        e.ns(u32::from(self.dts()) + 1, u32::from(self.spatial));
        for d in 0..self.dts() {
            e.ns(u32::from(self.spatial), u32::from(d / self.temporal));
        }
        for _ in &ts {
            for _ in 0..self.spatial {
                e.f(0, 4);
            }
        }
        e.f(0, 1); // no resolutions
    }

    /// The descriptor of frame `n` of layer (s, t).
    fn descriptor(
        &self,
        n: u16,
        (s, t, key): (u8, u8, bool),
        refs: &[u16],
        chains: &[u8],
        (first, last): (bool, bool),
    ) -> Vec<u8> {
        let ts = templates(self.spatial, self.temporal);
        let id = ts.iter().position(|x| *x == (s, t, key)).unwrap() as u32;
        let mut e = Enc::default();
        e.f(u32::from(first), 1);
        e.f(u32::from(last), 1);
        e.f(id, 6);
        e.f(u32::from(n), 16);
        let with_structure = key && s == 0 && first;
        e.f(u32::from(with_structure), 1);
        e.f(0, 1); // no mask
        e.f(0, 1); // template DTIs
        e.f(1, 1); // custom fdiffs
        e.f(1, 1); // custom chains
        if with_structure {
            self.structure_bits(&mut e);
        }
        for r in refs {
            let d = u32::from(n.wrapping_sub(*r)) - 1;
            e.f(2, 2);
            e.f(d, 8);
        }
        e.f(0, 2);
        for c in chains {
            e.f(u32::from(*c), 8);
        }
        e.bytes()
    }

    /// The next superframe: per spatial layer (s, t, [packets: (seq, ts, dd)]).
    fn superframe(&mut self, key: bool) -> Superframe {
        let pattern = [0u8, 2, 1, 2];
        let t = if key {
            0
        } else {
            pattern[self.superframe as usize % 4].min(self.temporal - 1)
        };
        if key {
            self.superframe = 0;
        }
        let mut out = Vec::new();
        for s in 0..self.spatial {
            let n = self.frame;
            self.frame = self.frame.wrapping_add(1);
            let mut refs = Vec::new();
            if key {
                if s > 0 {
                    refs.push(n.wrapping_sub(1));
                }
            } else {
                // The previous frame of this layer with a lower or equal temporal id.
                let prev = (0..=t)
                    .filter_map(|x| self.last[usize::from(s)][usize::from(x)])
                    .max_by_key(|&f| f.wrapping_sub(n) as i16);
                refs.extend(prev);
                if !self.ksvc && s > 0 {
                    refs.push(n.wrapping_sub(1));
                }
            }
            let chains: Vec<u8> = (0..self.spatial)
                .map(|c| {
                    if key && s == 0 {
                        0
                    } else {
                        self.chain_last[usize::from(c)].map_or(0, |p| n.wrapping_sub(p) as u8)
                    }
                })
                .collect();
            if key && s == 0 {
                self.last = [[None; 3]; 3];
                self.chain_last = [None; 3];
            }
            self.last[usize::from(s)][usize::from(t)] = Some(n);
            for c in 0..self.spatial {
                let on_chain = t == 0 && (s == c || (s < c && (key || !self.ksvc)));
                if on_chain {
                    self.chain_last[usize::from(c)] = Some(n);
                }
            }
            let mut packets = Vec::new();
            for k in 0..2 {
                let dd = self.descriptor(n, (s, t, key), &refs, &chains, (k == 0, k == 1));
                packets.push((self.seq, self.ts, dd));
                self.seq = self.seq.wrapping_add(1);
            }
            out.push((s, t, packets));
        }
        self.superframe += 1;
        self.ts = self.ts.wrapping_add(3000);
        out
    }
}

/// A frame's packets: (sequence number, timestamp, descriptor).
type Packets = Vec<(u16, u32, Vec<u8>)>;
/// A superframe: per spatial layer (spatial, temporal, packets).
type Superframe = Vec<(u8, u8, Packets)>;

/// One output fed by a publisher: what it forwarded, in output numbering.
struct Out {
    svc: Svc,
    now: Instant,
    out_seq: Option<u16>,
    last_in: u16,
    /// Forwarded (spatial, temporal) per frame start.
    frames: Vec<(u8, u8)>,
    keyframe_requests: usize,
    drops: Vec<SvcDrop>,
    masks: Vec<u32>,
    markers: usize,
    /// Payload bytes of every packet fed.
    bytes: usize,
}

impl Out {
    fn new(cap_s: u8, cap_t: u8) -> Out {
        Out {
            svc: Svc::new(cap_s, cap_t),
            now: Instant::now(),
            out_seq: None,
            last_in: 0,
            frames: Vec::new(),
            keyframe_requests: 0,
            drops: Vec::new(),
            masks: Vec::new(),
            markers: 0,
            bytes: 1000,
        }
    }

    /// `n` superframes of `p` without a key frame.
    fn run(&mut self, p: &mut Publisher, n: usize) {
        for _ in 0..n {
            self.feed(&p.superframe(false));
        }
    }

    fn feed(&mut self, sf: &[(u8, u8, Packets)]) {
        self.now += Duration::from_millis(33);
        for (s, t, packets) in sf {
            for (k, (seq, ts, dd)) in packets.iter().enumerate() {
                self.packet(*s, *t, k == 0, *seq, *ts, dd);
            }
        }
    }

    fn packet(&mut self, s: u8, t: u8, first: bool, seq: u16, ts: u32, dd: &[u8]) {
        let p = SvcPacket {
            seq,
            ts,
            bytes: self.bytes,
            dd,
            shared: None,
        };
        match self.svc.on_packet(self.now, &p) {
            SvcDecision::Forward {
                rebase,
                out: SvcOut { mask, marker },
                keyframe,
                ..
            } => {
                self.markers += usize::from(marker);
                // The continuity model: a re-basing continues right after the last packet.
                let out = match (self.out_seq, rebase) {
                    (Some(o), Some(r)) => o.wrapping_add(r.gap),
                    (Some(o), None) => o.wrapping_add(seq.wrapping_sub(self.last_in)),
                    (None, _) => 0,
                };
                if let Some(o) = self.out_seq {
                    assert_eq!(out, o.wrapping_add(1), "output sequence continuous");
                }
                self.out_seq = Some(out);
                self.last_in = seq;
                if first {
                    self.frames.push((s, t));
                }
                if let Some((m, _)) = mask {
                    self.masks.push(m);
                }
                self.keyframe_requests += usize::from(keyframe);
            }
            SvcDecision::Drop { reason, keyframe } => {
                self.drops.push(reason);
                self.keyframe_requests += usize::from(keyframe);
            }
        }
    }
}

/// A 3 x 3 publisher (K-SVC when `ksvc`, else full SVC) and an uncapped output fed its key
/// frame and two seconds of superframes: every decode target measured.
fn measured(ksvc: bool) -> (Publisher, Out) {
    let mut p = Publisher::new(3, 3, ksvc);
    let mut o = Out::new(NO, NO);
    o.feed(&p.superframe(true));
    o.run(&mut p, 60);
    (p, o)
}

#[test]
fn uncapped_output_forwards_every_frame() {
    let mut p = Publisher::new(3, 3, true);
    let mut o = Out::new(NO, NO);
    o.feed(&p.superframe(true));
    o.run(&mut p, 16);
    // K-SVC: the key frame's three spatial frames, then S2 alone (S0 and S1 are their own
    // decode targets' after the key frame).
    assert_eq!(o.frames.len(), 3 + 16);
    assert!(o.frames[3..].iter().all(|&(s, _)| s == 2), "{:?}", o.frames);
    assert!(
        o.drops.iter().all(|d| *d == SvcDrop::NotPresent),
        "{:?}",
        o.drops
    );
    assert_eq!(o.keyframe_requests, 0);
    assert_eq!(o.svc.current().map(|c| (c.1, c.2)), Some((2, 2)));
    // The structure's mask is written as the publisher's: every target.
    assert_eq!(o.masks, vec![0x1FF]);
}

#[test]
fn capped_output_gets_the_base_layer_with_closed_numbering() {
    let mut p = Publisher::new(3, 3, true);
    let mut o = Out::new(0, 0);
    o.feed(&p.superframe(true));
    o.run(&mut p, 16);
    // The key frame's S0 and then every fourth superframe's S0T0 only.
    assert!(
        o.frames.iter().all(|&(s, t)| s == 0 && t == 0),
        "{:?}",
        o.frames
    );
    assert_eq!(o.frames.len(), 1 + 4);
    assert!(o.drops.contains(&SvcDrop::NotPresent));
    assert!(!o.drops.contains(&SvcDrop::Unreferenced));
    assert_eq!(o.keyframe_requests, 0);
    // Active decode targets: only DT0 (S0T0), written into the structure packet and into
    // every forwarded frame's first packet.
    assert_eq!(o.masks.len(), 5);
    assert!(o.masks.iter().all(|&m| m == 1));
    // Each forwarded S0 frame ends this output's picture: its last packet gets the marker.
    assert_eq!(o.markers, 5);
}

#[test]
fn temporal_cap_on_l1t3() {
    let mut p = Publisher::new(1, 3, false);
    let mut o = Out::new(NO, 1);
    o.feed(&p.superframe(true));
    o.run(&mut p, 8);
    assert!(o.frames.iter().all(|&(_, t)| t <= 1));
    // Key, then T0 T2 T1 T2 twice: key + 2 T0 + 2 T1.
    assert_eq!(o.frames.len(), 5, "{:?}", o.frames);
    assert_eq!(o.keyframe_requests, 0);
    // Lifting the cap opens T2 at once: its frames reference forwarded ones.
    o.svc.set_caps(NO, NO);
    o.run(&mut p, 4);
    assert!(
        o.frames.iter().rev().take(2).any(|&(_, t)| t == 2),
        "{:?}",
        o.frames
    );
    assert_eq!(o.keyframe_requests, 0);
}

#[test]
fn spatial_up_switch_waits_for_a_key_frame() {
    let mut p = Publisher::new(3, 3, true);
    let mut o = Out::new(0, NO);
    o.feed(&p.superframe(true));
    o.run(&mut p, 4);
    assert!(o.frames.iter().all(|&(s, _)| s == 0));
    o.svc.set_caps(NO, NO);
    let before = o.frames.len();
    o.run(&mut p, 4);
    // Still S0 (an S2 frame references S2 frames that were not sent), and a key frame asked.
    assert!(
        o.frames[before..].iter().all(|&(s, _)| s == 0),
        "{:?}",
        &o.frames[before..]
    );
    assert!(o.keyframe_requests >= 1);
    // Throttled: at most one per KEYFRAME_INTERVAL (4 superframes at 33 ms = 132 ms).
    assert_eq!(o.keyframe_requests, 1);
    let switches = o.svc.switches();
    o.feed(&p.superframe(true));
    o.feed(&p.superframe(false));
    assert_eq!(o.svc.switches(), switches + 1);
    assert!(o.frames.iter().rev().take(2).any(|&(s, _)| s == 2));
}

#[test]
fn spatial_down_switch_in_k_svc_keeps_the_old_layer_until_a_key_frame() {
    let mut p = Publisher::new(3, 3, true);
    let mut o = Out::new(NO, NO);
    o.feed(&p.superframe(true));
    o.run(&mut p, 5);
    o.svc.set_caps(0, NO);
    let before = o.frames.len();
    o.run(&mut p, 3);
    // K-SVC: the S0 frames after the key frame were never sent to this output, so S0 cannot
    // start mid-GOP; S2 continues, a key frame is asked for.
    assert!(
        o.frames[before..].iter().all(|&(s, _)| s == 2),
        "{:?}",
        &o.frames[before..]
    );
    assert!(o.keyframe_requests >= 1);
    o.feed(&p.superframe(true));
    o.feed(&p.superframe(false));
    let tail: Vec<_> = o.frames.iter().rev().take(2).collect();
    assert!(tail.iter().all(|&&(s, _)| s == 0), "{:?}", tail);
    assert!(o.svc.switches() >= 1);
}

#[test]
fn full_svc_down_switch_is_immediate() {
    let mut p = Publisher::new(3, 3, false);
    let mut o = Out::new(NO, NO);
    o.feed(&p.superframe(true));
    o.feed(&p.superframe(false));
    o.svc.set_caps(1, NO);
    let before = o.frames.len();
    o.run(&mut p, 3);
    assert!(o.frames[before..].iter().all(|&(s, _)| s <= 1));
    assert!(o.frames[before..].iter().any(|&(s, _)| s == 1));
    assert_eq!(o.keyframe_requests, 0);
}

#[test]
fn broken_chain_asks_for_a_key_frame() {
    let mut p = Publisher::new(3, 3, true);
    let mut o = Out::new(NO, NO);
    o.feed(&p.superframe(true));
    o.run(&mut p, 3);
    // Superframe 4 (T0) loses its S2 frame upstream: never reaches the relay.
    let mut sf = p.superframe(false);
    assert_eq!(sf[2].1, 0);
    sf.remove(2);
    o.feed(&sf);
    let requests = o.keyframe_requests;
    o.feed(&p.superframe(false));
    // The next S2 frame references the lost one: dropped, and a key frame asked.
    assert!(o.drops.contains(&SvcDrop::Unreferenced));
    assert_eq!(o.keyframe_requests, requests + 1);
    o.feed(&p.superframe(true));
    o.feed(&p.superframe(false));
    assert!(o.frames.iter().rev().take(2).any(|&(s, _)| s == 2));
}

#[test]
fn packets_before_a_structure_ask_for_a_key_frame() {
    let mut p = Publisher::new(3, 3, true);
    let _ = p.superframe(true);
    let mut o = Out::new(NO, NO);
    o.run(&mut p, 3);
    assert!(o.frames.is_empty());
    assert!(o.drops.iter().all(|d| *d == SvcDrop::NoStructure));
    assert_eq!(o.keyframe_requests, 1);
    // A packet without a descriptor (padding) neither passes nor asks.
    let requests = o.keyframe_requests;
    o.now += Duration::from_secs(1);
    o.packet(0, 0, true, 1, 1, &[]);
    assert_eq!(o.keyframe_requests, requests);
    o.feed(&p.superframe(true));
    assert_eq!(o.frames.len(), 3);
}

#[test]
fn estimate_limits_the_decode_target() {
    // K-SVC: after the key frame a spatial layer's decode target holds only its own frames.
    let mut p = Publisher::new(3, 3, true);
    let mut o = Out::new(NO, NO);
    o.feed(&p.superframe(true));
    // Two seconds of every layer: each layer measures 2 packets x 1000 bytes x 30 fps =
    // 480 kbit/s, its T0 frames a quarter of that, T0 and T1 half.
    o.run(&mut p, 60);
    let top = o.svc.current().unwrap().0;
    assert!((400_000..600_000).contains(&o.svc.target_bps(top)));
    let now = |o: &Out| o.svc.current().map(|c| (c.1, c.2));
    // 600 kbit/s carries the top layer alone: no change.
    o.svc.set_estimate(Some(600_000));
    o.feed(&p.superframe(false));
    assert_eq!(now(&o), Some((2, 2)));
    // 300 kbit/s would carry the top layer's T0 and T1 frames (240 kbit/s), but above the
    // lowest spatial layer only a layer's full frame rate is a candidate: the base layer's
    // T0 and T1 it is. Not a sudden limit (more than half the top layer's rate): the top
    // layer keeps flowing while the base layer's key frame is asked for.
    o.svc.set_estimate(Some(300_000));
    let (sent, requests) = (o.frames.len(), o.keyframe_requests);
    o.run(&mut p, 3);
    assert_eq!(now(&o), Some((2, 2)));
    assert_eq!(o.frames.len(), sent + 3, "the top layer still flows");
    assert!(o.keyframe_requests > requests);
    assert!(!o.drops.contains(&SvcDrop::Shed));
    o.feed(&p.superframe(true));
    o.run(&mut p, 4);
    assert_eq!(now(&o), Some((0, 1)));
    assert!(o
        .frames
        .iter()
        .rev()
        .take(2)
        .all(|&(s, t)| s == 0 && t <= 1));
    // Room for the whole top layer again (480 kbit/s with the 15 % margin): the switch up
    // waits UP_AFTER_DOWN after the switch down (and UP_HOLD of room), then its key frame.
    let switches = o.svc.switches();
    o.svc.set_estimate(Some(600_000));
    o.run(&mut p, 120);
    assert_eq!(now(&o), Some((0, 1)), "4 s on");
    o.run(&mut p, 60);
    assert_eq!(o.svc.stats().target, 2, "6 s on");
    o.feed(&p.superframe(true));
    o.feed(&p.superframe(false));
    assert_eq!(now(&o), Some((2, 2)));
    assert_eq!(o.svc.switches(), switches + 1, "one switch up, no flapping");
    // The link did not carry it after all: down again within MAX_UP_WAIT of the switch up,
    // so the next try waits twice as long (10 s), not 5 s.
    o.svc.set_estimate(Some(300_000));
    o.feed(&p.superframe(true));
    o.run(&mut p, 4);
    assert_eq!(now(&o), Some((0, 1)));
    o.svc.set_estimate(Some(600_000));
    o.run(&mut p, 240);
    assert_eq!(o.svc.stats().target, 0, "8 s on");
    o.run(&mut p, 90);
    assert_eq!(o.svc.stats().target, 2, "11 s on");
    o.feed(&p.superframe(true));
    assert_eq!(now(&o), Some((2, 2)));

    // Full SVC: the top decode target holds every layer's frames (1.44 Mbit/s), the middle
    // one two layers' (960 kbit/s). 600 kbit/s would carry the three layers' T0 frames
    // (360 kbit/s), but 180p at 7.5 frames/s is not chosen over the base layer at its full
    // rate (480 kbit/s); 1 Mbit/s carries the middle layer. A switch down is immediate.
    let (mut p, mut o) = measured(false);
    o.svc.set_estimate(Some(1_000_000));
    o.feed(&p.superframe(false));
    assert_eq!(now(&o), Some((1, 2)));
    o.svc.set_estimate(Some(600_000));
    o.feed(&p.superframe(false));
    assert_eq!(now(&o), Some((0, 2)));
    assert_eq!(o.svc.stats().current, Some(0));
    assert_eq!(o.svc.stats().count, 3);
    assert_eq!(o.keyframe_requests, 0);
}

#[test]
fn sudden_limit_sheds_the_top_layer_until_the_key_frame() {
    // K-SVC at the top layer (480 kbit/s); the estimate falls to 200 kbit/s, under half of
    // it: the base layer's T0 frames (120 kbit/s) are the target, and the top layer's frames
    // stop at once while its key frame is awaited, instead of queueing ahead of it.
    let (mut p, mut o) = measured(true);
    o.svc.set_estimate(Some(200_000));
    let (sent, requests, drops) = (o.frames.len(), o.keyframe_requests, o.drops.len());
    o.run(&mut p, 3);
    assert_eq!(o.frames.len(), sent, "nothing of the top layer sent");
    assert!(o.drops[drops..].contains(&SvcDrop::Shed));
    assert!(o.drops[drops..]
        .iter()
        .all(|d| matches!(d, SvcDrop::Shed | SvcDrop::NotPresent)));
    assert_eq!(o.keyframe_requests, requests + 1, "asked once (throttled)");
    o.feed(&p.superframe(true));
    o.feed(&p.superframe(false));
    assert_eq!(o.svc.current().map(|c| (c.1, c.2)), Some((0, 0)));
    assert_eq!(
        o.frames[sent],
        (0, 0),
        "the key frame's base layer starts it"
    );
    assert_eq!(counter(SvcDrop::Shed), Feedback::LayerShed);
}

#[test]
fn garbage_descriptors_are_dropped_not_forwarded() {
    let mut p = Publisher::new(1, 3, false);
    let mut o = Out::new(NO, NO);
    o.feed(&p.superframe(true));
    let n = o.frames.len();
    o.packet(0, 0, true, 60_000, 1, &[0xFF; 2]);
    o.packet(0, 0, true, 60_001, 1, &[0x3F, 0, 0, 0xFF]);
    assert_eq!(o.frames.len(), n);
    assert!(o.drops.iter().all(|d| *d == SvcDrop::NoStructure));
}

#[test]
fn probe_need_is_the_best_decode_target_within_the_caps() {
    let mut p = Publisher::new(3, 3, true);
    let mut o = Out::new(NO, NO);
    assert_eq!(o.svc.probe_need(o.now), None, "nothing before a structure");
    o.feed(&p.superframe(true));
    o.run(&mut p, 60);
    // At the top decode target: the prober is told its rate with the margin, not below it.
    let top = o.svc.current().unwrap().0;
    let need = o.svc.target_bps(top) * UP_MARGIN_PCT / 100;
    assert_eq!(o.svc.probe_need(o.now), Some((need, false)));
    // An estimate that carries a quarter of a layer (its T0 frames): the output goes down
    // and is below the top decode target, which the prober is asked to reach.
    o.svc.set_estimate(Some(150_000));
    o.feed(&p.superframe(true));
    o.run(&mut p, 4);
    assert_eq!(o.svc.current().map(|c| c.2), Some(0));
    // Not probed for while the selector could not go up anyway (PROBE_AFTER_DOWN) ...
    assert_eq!(o.svc.probe_need(o.now), Some((need, false)));
    // ... and probed for after.
    o.run(&mut p, 100);
    assert_eq!(o.svc.current().map(|c| c.2), Some(0));
    let need = o.svc.target_bps(top) * UP_MARGIN_PCT / 100;
    assert_eq!(o.svc.probe_need(o.now), Some((need, true)));
    // A spatial cap of 0: the best within the caps is the base layer's top temporal target,
    // which the output is on; nothing to probe for.
    o.svc.set_caps(0, NO);
    o.svc.set_estimate(None);
    o.feed(&p.superframe(true));
    o.run(&mut p, 4);
    let (dt, s, t) = o.svc.current().unwrap();
    assert_eq!((s, t), (0, 2));
    let base = o.svc.target_bps(dt) * UP_MARGIN_PCT / 100;
    assert_eq!(o.svc.probe_need(o.now), Some((base, false)));
}

/// Outputs that share each packet's parse (one `Shared` per packet, as a fan-out has) decide
/// exactly as outputs that parse on their own, through a structure change and a late joiner;
/// and the parse is shared: the second output copies the first one's frame.
#[test]
fn a_shared_parse_decides_as_a_private_one() {
    let mut p = Publisher::new(3, 3, true);
    let now = Instant::now();
    let mut outs: Vec<Svc> = (0..4).map(|_| Svc::new(NO, NO)).collect();
    outs[1].set_caps(1, NO);
    outs[3].set_caps(1, NO);
    let mut t = now;
    for k in 0..200u32 {
        t += Duration::from_millis(33);
        let sf = p.superframe(k % 60 == 0);
        for (_, _, packets) in &sf {
            for (seq, ts, dd) in packets {
                let shared = Shared::default();
                let pkt = |shared| SvcPacket {
                    seq: *seq,
                    ts: *ts,
                    bytes: 1000,
                    dd,
                    shared,
                };
                // Outputs 0 and 1 share, 2 and 3 (same caps) parse alone; output 1 and 3 join
                // late (superframe 30), mid-GOP.
                let d0 = outs[0].on_packet(t, &pkt(Some(&shared)));
                let d2 = outs[2].on_packet(t, &pkt(None));
                assert_eq!(d0, d2, "superframe {k}");
                if k >= 30 {
                    let d1 = outs[1].on_packet(t, &pkt(Some(&shared)));
                    let d3 = outs[3].on_packet(t, &pkt(None));
                    assert_eq!(d1, d3, "superframe {k}");
                }
                if k > 0 && !dd.is_empty() {
                    assert!(
                        shared.frame.get().is_some() || shared.tag.get().is_some(),
                        "superframe {k}: the first output's parse is left for the others"
                    );
                }
            }
        }
    }
    assert!(outs[0].switches() == outs[2].switches());
}

/// A decode target whose frames stop (a layer the publisher paused without a new active
/// targets mask) keeps its last measured rate: at 0 it would fit any estimate and be chosen.
#[test]
fn a_silent_decode_target_keeps_its_rate() {
    let (mut p, mut o) = measured(true);
    let top = o.svc.current().unwrap().0;
    let rate = o.svc.target_bps(top);
    assert!(rate > 400_000, "{rate}");
    // Two seconds of superframes without their S2 frame.
    for _ in 0..60 {
        let mut sf = p.superframe(false);
        sf.retain(|(s, _, _)| *s < 2);
        o.feed(&sf);
    }
    // (The window it stopped in measured what it sent before stopping.)
    let kept = o.svc.target_bps(top);
    assert!(kept >= rate / 2, "{kept} of {rate}: not 0");
    for _ in 0..60 {
        let mut sf = p.superframe(false);
        sf.retain(|(s, _, _)| *s < 2);
        o.feed(&sf);
    }
    assert_eq!(o.svc.target_bps(top), kept, "kept while silent");
}

#[test]
fn the_choice_follows_the_measured_rates_at_a_fixed_estimate() {
    // Full SVC at 1 Mbit/s: the middle decode target (960 kbit/s) fits, the top one (1.44
    // Mbit/s) does not. The estimate stays; the publisher halves its frames, and once a rate
    // window has measured them the top one (720 kbit/s, 828 with the margin) fits: the choice
    // is made again from the new rates, not kept from the old ones.
    let (mut p, mut o) = measured(false);
    o.svc.set_estimate(Some(1_000_000));
    o.run(&mut p, 30);
    let now = |o: &Out| o.svc.current().map(|c| (c.1, c.2));
    assert_eq!(now(&o), Some((1, 2)));
    // (The middle one was a switch down from the top one: going up waits UP_AFTER_DOWN.)
    o.bytes = 500;
    o.run(&mut p, 200);
    assert_eq!(o.svc.stats().target, 2, "the top layer fits its new rate");
    o.feed(&p.superframe(true));
    assert_eq!(now(&o), Some((2, 2)));
}
