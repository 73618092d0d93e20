//! Bandwidth probing through the engine (docs/ENGINE.md "Probing"): a viewer of a two-layer
//! simulcast source behind a simulated bottleneck that reports its arrivals with the real
//! transport-cc codec, over the transparent test cipher of `tests.rs`.

use super::layer_tests::{stamped_layer_routes, HIGH, LOW, OUT};
use super::tests::{addr, rtp, session, Rig};
use contract::shm::{Feedback, Role, RtxOut};
use contract::wire::rtcp::{fmt, packet_type, RtcpPacket};
use contract::wire::rtp::RtpPacket;
use contract::wire::twcc;
use std::time::{Duration, Instant};

const RTX_OUT: u32 = 0xBBBB;
const RTX_PT: u8 = 97;

/// A VP8 packet of `size` payload bytes with the transport-wide element (id 3, `tw`).
fn vp8(ssrc: u32, seq: u16, ts: u32, pid: u16, key: bool, marker: bool, tw: u16) -> Vec<u8> {
    let pid = pid | 0x8000;
    let payload = [
        0x90,
        0x80,
        (pid >> 8) as u8,
        pid as u8,
        if key { 0x10 } else { 0x11 },
        0x55,
    ];
    let p = rtp(ssrc, seq, ts, 96, &payload);
    let mut v = p[..12].to_vec();
    v[0] |= 0x10;
    if marker {
        v[1] |= 0x80;
    }
    v.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x31]);
    v.extend_from_slice(&tw.to_be_bytes());
    v.push(0);
    v.extend_from_slice(&p[12..]);
    v
}

/// One simulcast layer: `per_frame` packets of `size` bytes per frame, a key frame once the
/// relay asked for one.
struct Layered {
    ssrc: u32,
    seq: u16,
    ts: u32,
    pid: u16,
    per_frame: usize,
    size: usize,
    key_due: bool,
}

impl Layered {
    fn frame(&mut self, tw: &mut u16) -> Vec<Vec<u8>> {
        let key = std::mem::take(&mut self.key_due);
        let mut out = Vec::new();
        for k in 0..self.per_frame {
            *tw = tw.wrapping_add(1);
            let last = k + 1 == self.per_frame;
            let mut p = vp8(
                self.ssrc,
                self.seq,
                self.ts,
                self.pid,
                key && k == 0,
                last,
                *tw,
            );
            p.resize(20 + self.size, 0x55);
            self.seq = self.seq.wrapping_add(1);
            out.push(p);
        }
        self.ts = self.ts.wrapping_add(3000);
        self.pid = (self.pid + 1) & 0x7FFF;
        out
    }
}

fn is_pli_for(p: &[u8], ssrc: u32) -> bool {
    RtcpPacket::parse(p).is_ok_and(|(r, _)| {
        r.packet_type() == packet_type::PSFB && r.count() == fmt::PLI && r.feedback_target() == ssrc
    })
}

/// What the viewer saw.
#[derive(Default)]
struct Seen {
    /// (µs, layer) of each media packet.
    media: Vec<(u64, usize)>,
    /// (µs, RTX sequence number) of each probe packet.
    probes: Vec<(u64, u16)>,
}

/// 8 s behind a 300 kbit/s FIFO, then `after_s` s behind 10 Mbit/s; media at 30 frames/s (low
/// layer one 300-byte packet a frame, ≈80 kbit/s; high four of 1000 bytes, ≈1 Mbit/s), the
/// timer path every 5 ms, feedback every 100 ms.
fn shaped_then_lifted(rtx: Option<RtxOut>, after_s: u64) -> (Rig, Seen) {
    let mut rig = Rig::new(
        vec![session(1, Role::Speaker), session(3, Role::Viewer)],
        stamped_layer_routes(rtx),
    );
    rig.fwd.set_nack(super::NackConfig::default());
    let layer = |ssrc, per_frame, size| Layered {
        ssrc,
        seq: 100,
        ts: 0,
        pid: 1,
        per_frame,
        size,
        key_due: true,
    };
    let mut layers = [layer(LOW, 1, 300), layer(HIGH, 4, 1000)];
    let t0 = Instant::now();
    let (mut tw, mut fb_count) = (0u16, 0u8);
    let mut link_free_us = 0u64;
    let mut pending: Vec<(u16, u64)> = Vec::new();
    let mut seen = Seen::default();
    let (mut t_us, mut next_frame, mut next_fb) = (0u64, 0u64, 100_000u64);
    let end = (8 + after_s) * 1_000_000;
    while t_us < end {
        let link_bps: u64 = if t_us < 8_000_000 {
            300_000
        } else {
            10_000_000
        };
        let now = t0 + Duration::from_micros(t_us);
        rig.fwd.set_now(now);
        let mut out = Vec::new();
        if t_us >= next_frame {
            next_frame += 33_333;
            for layer in layers.iter_mut() {
                for p in layer.frame(&mut tw) {
                    out.extend(rig.send(1, &p));
                }
            }
        }
        out.extend(rig.poll(now));
        for (d, p) in out {
            if d != addr(1003) {
                if is_pli_for(&p, LOW) {
                    layers[0].key_due = true;
                } else if is_pli_for(&p, HIGH) {
                    layers[1].key_due = true;
                }
                continue;
            }
            let Ok(r) = RtpPacket::parse(&p) else {
                continue;
            };
            let Some(seq) = r.extension_by_id(5).and_then(|v| twcc::read_seq(v).ok()) else {
                continue;
            };
            let bits = (p.len() as u64 + 28) * 8;
            link_free_us = link_free_us.max(t_us) + bits * 1_000_000 / link_bps;
            pending.push((seq, link_free_us + 20_000));
            if r.ssrc() == RTX_OUT {
                assert_eq!(r.payload_type(), RTX_PT);
                assert!(r.padding() && r.payload().is_empty(), "padding only");
                assert_eq!(r.padding_len(), super::probe::PADDING);
                seen.probes.push((t_us, r.sequence()));
            } else {
                assert_eq!(r.ssrc(), OUT);
                seen.media
                    .push((t_us, usize::from(r.payload().len() > 600)));
            }
        }
        while t_us >= next_fb {
            let arrived: Vec<(u16, u64)> =
                pending.iter().copied().filter(|p| p.1 <= next_fb).collect();
            pending.retain(|p| p.1 > next_fb);
            if let Some(&(base, _)) = arrived.first() {
                let mut arrivals = Vec::new();
                let mut expect = base;
                for &(s, a) in &arrived {
                    while expect != s {
                        arrivals.push(None);
                        expect = expect.wrapping_add(1);
                    }
                    arrivals.push(Some(a));
                    expect = expect.wrapping_add(1);
                }
                let mut b = [0u8; 1500];
                let h = twcc::FeedbackHeader {
                    sender_ssrc: 0xFA17_FA17,
                    media_ssrc: OUT,
                    base_seq: base,
                    fb_pkt_count: fb_count,
                };
                fb_count = fb_count.wrapping_add(1);
                let (n, _) = twcc::write_feedback(&mut b, &h, &arrivals).unwrap();
                rig.send(3, &b[..n]);
            }
            next_fb += 100_000;
        }
        t_us += 5_000;
    }
    (rig, seen)
}

/// With an RTX stream the relay probes: padding-only packets on it, numbered on the RTX
/// stream and with the transport-wide extension, in clusters; once the link is lifted they
/// raise the estimate and the viewer is back on the high layer.
#[test]
fn probes_are_padding_on_the_rtx_stream_and_bring_the_high_layer_back() {
    let rtx = RtxOut {
        payload_type: RTX_PT,
        ssrc: RTX_OUT,
    };
    let (rig, seen) = shaped_then_lifted(Some(rtx), 15);
    let low_at = seen
        .media
        .iter()
        .find(|&&(t, l)| t > 2_000_000 && l == 0)
        .expect("low layer behind 300 kbit/s")
        .0;
    assert!(low_at < 8_000_000, "low at {low_at} µs");
    let high_again = seen
        .media
        .iter()
        .find(|&&(t, l)| t > 8_000_000 && l == 1)
        .map(|m| m.0);
    assert!(
        high_again.is_some_and(|t| t < 8_000_000 + 12_000_000),
        "high layer after the lift: {high_again:?}"
    );
    assert!(!seen.probes.is_empty());
    // One RTX numbering, no gaps (NACK resends would share it; there are none here).
    for w in seen.probes.windows(2) {
        assert_eq!(w[1].1, w[0].1.wrapping_add(1));
    }
    let fb = |f| rig.fwd.stats().feedback(f);
    assert_eq!(fb(Feedback::ProbePacket), seen.probes.len() as u64);
    assert!(fb(Feedback::ProbeCluster) >= 2);
    assert!(fb(Feedback::ProbeSuccess) >= 1);
    assert!(fb(Feedback::ProbeBytes) >= fb(Feedback::ProbePacket) * 224);
    // Paced: a cluster's packets span more than one 5 ms tick.
    let first = seen.probes[0].0;
    let span = seen
        .probes
        .iter()
        .take_while(|p| p.0 < first + 100_000)
        .last()
        .unwrap()
        .0
        - first;
    assert!(span >= 10_000, "cluster sent over {span} µs");
}

/// Without an RTX stream the viewer is not probed, and the acknowledged low layer alone never
/// lets the estimate reach the high layer.
#[test]
fn without_rtx_no_probe_and_no_way_up() {
    let (rig, seen) = shaped_then_lifted(None, 15);
    assert!(seen.probes.is_empty());
    assert_eq!(rig.fwd.stats().feedback(Feedback::ProbePacket), 0);
    assert_eq!(rig.fwd.stats().feedback(Feedback::ProbeCluster), 0);
    let last = seen.media.last().unwrap();
    assert_eq!(last.1, 0, "still on the low layer");
}
