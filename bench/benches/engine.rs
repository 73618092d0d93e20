//! Engine throughput: one publisher's 1200-byte SRTP packets in, fan-out 1 and 10 out, for
//! AES_CM_128_HMAC_SHA1_80 and AEAD_AES_128_GCM. Measures the whole per-datagram path
//! (demux, session lookup, unprotect, route, copy, rewrite, protect, queue), no sockets.
//!
//! Throughput is reported in input packets; per output packet, divide the time by the fan-out.
//! Each case runs with the retransmission cache off (`fanoutN`) and on (`fanoutN/cache`:
//! every packet cached once, every copy recorded in its subscriber's sent map). AES-CM cases
//! run twice: `/single` authenticates each copy on its own (SHA-NI), `/multi` authenticates the
//! fan-out's copies together with multi-buffer HMAC-SHA1 (AVX-512 or AVX2).
//!
//! The `layers` group prices simulcast layer selection (docs/ENGINE.md "Simulcast"): the same
//! VP8 packets of one publisher stream (four packets a frame, each with a picture ID and
//! TL0PICIDX) go to N subscribers over plain routes (`plain`: an SSRC filter and a rewritten
//! SSRC) and over layered routes (`layered`: the stream is layer 0 of a two-layer source, the
//! subscribers capped to it, so every packet passes the layer selector and has its sequence
//! number, timestamp and VP8 descriptor rewritten), in the same run. The ratio of the two is
//! the cost of layer selection per output packet. Both groups measure the benchmark thread's
//! CPU time (`CLOCK_THREAD_CPUTIME_ID`, [`ThreadCpu`]) rather than wall time, so that time the
//! thread spends preempted on a shared machine does not land in one case and not the other
//! (the `srtp` bench, the engine's crypto-only ceiling, measures the same way).
//!
//! The `svc` group prices SVC selection (docs/ENGINE.md "SVC") the same way: one publisher
//! stream of two spatial layers on one SSRC (`L2T1`, full SVC, four 1200-byte packets a frame
//! as above, each with a 3-byte Dependency Descriptor; the template structure on the first
//! packet of the key frame)
//! to N subscribers over plain routes (the descriptor passes through untouched) and over SVC
//! routes (`dd_id` set, no caps: every packet's descriptor is parsed and its frame decided by
//! the subscriber's selector, the numbering closed over nothing), same packets, same run.
//! Its `l3t3/` cases do the same with the shape Chromium sends most: three spatial and three
//! temporal layers (`L3T3`, nine decode targets, [`dd_l3t3`]), a picture of eight packets (1,
//! 2 and 5 for S0, S1 and S2).
//! Run: `cargo bench -p sluice-bench --bench engine` (only the layers group: `-- layers`, only
//! SVC: `-- svc`)

use contract::shm::{Layer, Rewrite, Role, RouteRecord, SessionRecord};
use contract::srtp::{Context, ContextOptions, MasterKey, Profile};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use relay::batch::{TxQueue, MAX_DATAGRAM};
use relay::engine::{Forwarder, NackConfig};
use std::net::SocketAddr;
use std::time::Instant;
#[path = "support/thread_cpu.rs"]
mod thread_cpu;
use thread_cpu::ThreadCpu;

const BATCH: usize = 256;
const PAYLOAD: usize = 1200 - 12;

fn key(profile: Profile, seed: u8) -> MasterKey {
    let bytes: Vec<u8> = (0..profile.key_material_len())
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    MasterKey::new(profile, &bytes).expect("length matches the profile")
}

fn opts() -> ContextOptions {
    ContextOptions {
        max_streams: 64,
        ..ContextOptions::default()
    }
}

fn peer(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 5000))
}

fn bench_engine(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("engine");
    for profile in [Profile::Aes128CmSha1_80, Profile::AeadAes128Gcm] {
        // AES-CM runs each case twice: tags one at a time (`single`, SHA-NI) and across the
        // fan-out with multi-buffer HMAC-SHA1 (`multi`), in the same run.
        let macs: &[bool] = if profile.is_aead() {
            &[true]
        } else {
            &[false, true]
        };
        for ((fanout, cache), &multi) in [(1u16, false), (1, true), (10, false), (10, true)]
            .into_iter()
            .flat_map(|c| macs.iter().map(move |m| (c, m)))
        {
            let mut sessions = speaker_and_viewers(profile, fanout);
            let mut routes = Vec::new();
            for j in 0..fanout {
                let id = 100 + u64::from(j);
                routes.push(RouteRecord {
                    id: id + 1000,
                    from: 1,
                    ssrc: None,
                    to: id,
                    rewrite: Rewrite {
                        ssrc: (j % 2 == 0).then_some(0x5000 + u32::from(j)),
                        ..Rewrite::default()
                    },
                });
            }
            let mut fwd: Forwarder<Context> = Forwarder::new(opts());
            fwd.set_nack(if cache {
                NackConfig::default()
            } else {
                NackConfig::OFF
            });
            fwd.set_multi_buffer_mac(multi);
            fwd.set_now(Instant::now());
            fwd.rebuild(&mut sessions, &mut routes);
            // A batch clock, as a worker sets one: per-stream statistics run as in production.
            fwd.set_now(std::time::Instant::now());
            let mut publisher = Context::new(key(profile, 1), opts()).expect("context");
            let mut seq: u16 = 0;
            let mut tx = TxQueue::with_capacity(BATCH * usize::from(fanout));
            let mut slow = TxQueue::with_capacity(16);
            let mut rx = vec![0u8; MAX_DATAGRAM];
            g.throughput(Throughput::Elements(BATCH as u64));
            let name = format!(
                "{}/fanout{fanout}{}{}",
                profile.name(),
                if cache { "/cache" } else { "" },
                match (profile.is_aead(), multi) {
                    (true, _) => "",
                    (false, false) => "/single",
                    (false, true) => "/multi",
                }
            );
            g.bench_function(name, |b| {
                b.iter_batched(
                    || {
                        // Fresh packets every iteration (the replay window rejects repeats).
                        (0..BATCH)
                            .map(|_| {
                                let mut p = vec![0u8; MAX_DATAGRAM];
                                p[0] = 0x80;
                                p[1] = 96;
                                p[2..4].copy_from_slice(&seq.to_be_bytes());
                                p[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
                                p[8..12].copy_from_slice(&0x1234u32.to_be_bytes());
                                seq = seq.wrapping_add(1);
                                let n = publisher
                                    .protect_rtp(&mut p, 12 + PAYLOAD)
                                    .expect("protect");
                                p.truncate(n);
                                p
                            })
                            .collect::<Vec<_>>()
                    },
                    |pkts| forward_batch(&mut fwd, &pkts, (&mut rx, &mut tx, &mut slow), fanout),
                    BatchSize::PerIteration,
                );
            });
        }
    }
    g.finish();
}

/// Payload bytes after the VP8 descriptor and RTP header: 1200-byte packets.
const VP8_BODY: usize = 1200 - 12 - 6;
/// Packets per video frame in the `layers` group.
const PER_FRAME: u16 = 4;
/// The publisher stream (layer 0 of a two-layer source in the layered case).
const LAYER_SSRC: u32 = 0x1010;
/// Every subscriber's output SSRC.
const OUT_SSRC: u32 = 0xAAAA;

/// The `n`th VP8 packet of the publisher stream (RFC 7741 §4.2 descriptor with a 15-bit
/// picture ID, TL0PICIDX and TID 0): `PER_FRAME` packets a frame, the first with S set, the
/// last with the marker; a key frame when `key`. Sequence numbers, timestamps, picture IDs
/// and TL0PICIDX wrap as a long-running stream's do.
fn vp8_packet(n: u64, key: bool) -> Vec<u8> {
    let seq = n as u16;
    let frame = (n / u64::from(PER_FRAME)) as u32;
    let first = n % u64::from(PER_FRAME) == 0;
    let pid = (frame as u16 & 0x7FFF) | 0x8000;
    let mut p = vec![0u8; 12 + 6 + VP8_BODY];
    p[0] = 0x80;
    p[1] = 96
        | if n % u64::from(PER_FRAME) == u64::from(PER_FRAME) - 1 {
            0x80
        } else {
            0
        };
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&frame.wrapping_mul(3000).to_be_bytes());
    p[8..12].copy_from_slice(&LAYER_SSRC.to_be_bytes());
    p[12..18].copy_from_slice(&[
        if first { 0x90 } else { 0x80 },
        0xE0,
        (pid >> 8) as u8,
        pid as u8,
        frame as u8,
        0x00,
    ]);
    // VP8 payload header (RFC 7741 §4.3): P = 0 on a key frame.
    p[18] = if key { 0x10 } else { 0x11 };
    p
}

/// Speaker 1 and `fanout` viewers (ids 100, 101, ...), each with its own keys.
fn speaker_and_viewers(profile: Profile, fanout: u16) -> Vec<SessionRecord> {
    let session = |id: u64, port: u16, role, rx: u8, tx: u8| SessionRecord {
        id,
        peer: peer(port),
        role,
        rx_key: key(profile, rx),
        tx_key: key(profile, tx),
        key_epoch: 1,
        flags: 0,
        max_pps: 0,
        ice: None,
    };
    let mut v = vec![session(1, 0, Role::Speaker, 1, 2)];
    for j in 0..fanout {
        let id = 100 + u64::from(j);
        v.push(session(
            id,
            100 + j,
            Role::Viewer,
            10 + j as u8,
            50 + j as u8,
        ));
    }
    v
}

/// The measured routine of every group: the publisher's SRTP packets `pkts` through `fwd`
/// (received into `rx`, queued on `tx`, the slow path on `slow`); every one goes to all
/// `fanout` subscribers.
#[inline]
fn forward_batch(
    fwd: &mut Forwarder<Context>,
    pkts: &[Vec<u8>],
    (rx, tx, slow): (&mut [u8], &mut TxQueue, &mut TxQueue),
    fanout: u16,
) {
    tx.clear();
    for p in pkts {
        rx[..p.len()].copy_from_slice(p);
        fwd.handle(peer(0), rx, p.len(), tx, slow);
    }
    assert_eq!(tx.len(), pkts.len() * usize::from(fanout));
}

/// Measure `fwd` forwarding one publisher stream (`stream(n)`: plain RTP packet `n`, protected
/// here with the publisher's key) to `fanout` subscribers, in batches of [`BATCH`]; the
/// first `key` packets (the key frame that starts layered outputs) go out before the
/// measurement. Shared by the `layers` and `svc` groups.
fn bench_stream(
    g: &mut criterion::BenchmarkGroup<'_, ThreadCpu>,
    name: String,
    (profile, fanout): (Profile, u16),
    fwd: &mut Forwarder<Context>,
    key: u64,
    stream: impl Fn(u64) -> Vec<u8>,
) {
    let mut publisher = Context::new(self::key(profile, 1), opts()).expect("context");
    let mut tx = TxQueue::with_capacity(BATCH * usize::from(fanout));
    let mut slow = TxQueue::with_capacity(16);
    let mut rx = vec![0u8; MAX_DATAGRAM];
    let mut protect = |n: u64| {
        let mut p = stream(n);
        let n = p.len();
        p.resize(MAX_DATAGRAM, 0);
        let n = publisher.protect_rtp(&mut p, n).expect("protect");
        p.truncate(n);
        p
    };
    for n in 0..key {
        let p = protect(n);
        rx[..p.len()].copy_from_slice(&p);
        fwd.handle(peer(0), &mut rx, p.len(), &mut tx, &mut slow);
    }
    assert_eq!(
        tx.len(),
        key as usize * usize::from(fanout),
        "the key frame went out"
    );
    let mut n = key;
    g.throughput(Throughput::Elements(BATCH as u64 * u64::from(fanout)));
    g.bench_function(name, |b| {
        b.iter_batched(
            || {
                (0..BATCH)
                    .map(|_| {
                        let p = protect(n);
                        n += 1;
                        p
                    })
                    .collect::<Vec<_>>()
            },
            |pkts| forward_batch(fwd, &pkts, (&mut rx, &mut tx, &mut slow), fanout),
            BatchSize::PerIteration,
        );
    });
}

fn bench_layers(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("layers");
    let profile = Profile::AeadAes128Gcm;
    for fanout in [1u16, 10] {
        for layered in [false, true] {
            let mut sessions = speaker_and_viewers(profile, fanout);
            let mut routes = Vec::new();
            for j in 0..fanout {
                let id = 100 + u64::from(j);
                // Layer 0 (the stream sent) and layer 1 (silent) into one output, capped to
                // layer 0; or the one plain route.
                let layers: &[(u8, u32)] = if layered {
                    &[(0, LAYER_SSRC), (1, 0x3030)]
                } else {
                    &[(0, LAYER_SSRC)]
                };
                for &(index, ssrc) in layers {
                    routes.push(RouteRecord {
                        id: id * 10 + u64::from(index),
                        from: 1,
                        ssrc: Some(ssrc),
                        to: id,
                        rewrite: Rewrite {
                            ssrc: Some(OUT_SSRC),
                            layer: layered.then_some(Layer {
                                index,
                                count: 2,
                                max: 0,
                                max_temporal: Layer::NO_CAP,
                            }),
                            ..Rewrite::default()
                        },
                    });
                }
            }
            let mut fwd: Forwarder<Context> = Forwarder::new(opts());
            fwd.set_nack(NackConfig::OFF);
            fwd.set_now(Instant::now());
            fwd.rebuild(&mut sessions, &mut routes);
            fwd.set_now(Instant::now());
            let name = format!(
                "{}/fanout{fanout}/{}",
                profile.name(),
                if layered { "layered" } else { "plain" }
            );
            // A key frame first: it starts each layered output (both cases get it).
            let key_frame = u64::from(PER_FRAME);
            let stream = |n| vp8_packet(n, n < key_frame);
            bench_stream(&mut g, name, (profile, fanout), &mut fwd, key_frame, stream);
        }
    }
    g.finish();
}

/// The publisher's id of the Dependency Descriptor element in the `svc` group.
const DD_ID: u8 = 5;

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

/// The descriptor of a packet of frame `frame` from template `template` of an `L2T1` full-SVC
/// structure (decode target 0 is S0, 1 is S0+S1; template 0 the S0 key frame, 1 an S0 delta
/// frame referencing the S0 frame two back, 2 an S1 frame referencing the S0 frame before
/// it), `(start, end)` of the frame, with the structure when `structure`.
fn dd_l2t1(template: u8, frame: u16, (start, end): (bool, bool), structure: bool) -> Vec<u8> {
    let mut b = Bits::default();
    b.f(u32::from(start), 1);
    b.f(u32::from(end), 1);
    b.f(u32::from(template), 6);
    b.f(u32::from(frame), 16);
    if structure {
        b.f(0b10000, 5); // template dependency structure present
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
        b.f(0, 1); // no chains
        b.f(0, 1); // no resolutions
    }
    b.bytes()
}

/// Packet `n` of the `svc` group's stream (plain RTP, 1200 bytes): [`PER_FRAME`] packets a
/// frame as in the `layers` group; frame `n / PER_FRAME`, S0 for even frames and S1 (its last
/// packet with the marker) for odd; frames 0 and 1 are the key picture.
fn svc_packet(n: u64) -> Vec<u8> {
    let per = u64::from(PER_FRAME);
    let f = n / per;
    let (frame, s1) = (f as u16, f % 2 == 1);
    let (start, end) = (n % per == 0, n % per == per - 1);
    let dd = match (f, s1) {
        (0, _) => dd_l2t1(0, frame, (start, end), start),
        (_, false) => dd_l2t1(1, frame, (start, end), false),
        (_, true) => dd_l2t1(2, frame, (start, end), false),
    };
    rtp_with_dd(n, s1 && end, (f / 2) as u32 * 3000, &dd)
}

/// Packets of each spatial layer's frame in a picture of the `l3t3` stream (S0, S1, S2).
const L3T3_PACKETS: [u64; 3] = [1, 2, 5];
/// Packets of one picture of the `l3t3` stream.
const L3T3_PER_PICTURE: u64 = 8;
/// Temporal layer of picture `p % 4` of the `l3t3` stream.
const L3T3_TEMPORAL: [u8; 4] = [0, 2, 1, 2];

/// The descriptor of a packet of an `L3T3` full-SVC stream (nine decode targets, `d = 3s +
/// t`, each including the frames of its spatial and temporal layer and those below):
/// frame `frame` of spatial layer `s` and temporal layer `t` (`key`: of the key picture),
/// `(start, end)` of the frame, with the structure when `structure`. Four templates a spatial
/// layer, in order: its key picture frame (S0: no reference; above: the layer below, fdiff
/// 1), T0 (the layer's previous T0 frame, 12 frames back, and the layer below), T1 (the T0
/// six back) and T2 (the frame three back); three frames a picture, frame numbers counting
/// frames.
fn dd_l3t3(
    (s, t, key): (u8, u8, bool),
    frame: u16,
    (start, end): (bool, bool),
    structure: bool,
) -> Vec<u8> {
    let mut b = Bits::default();
    let template = 4 * s + if key { 0 } else { 1 + t };
    b.f(u32::from(start), 1);
    b.f(u32::from(end), 1);
    b.f(u32::from(template), 6);
    b.f(u32::from(frame), 16);
    if structure {
        b.f(0b10000, 5); // template dependency structure present
        b.f(0, 6); // template id offset
        b.f(8, 5); // nine decode targets
                   // Layers of the templates: per spatial layer key (T0), T0, T1, T2.
        for ls in 0..3 {
            b.f(0, 2); // the T0 delta template: same layers
            b.f(1, 2); // T1
            b.f(1, 2); // T2
            b.f(if ls < 2 { 2 } else { 3 }, 2); // next spatial layer, or the end
        }
        let layers = |ts: u8| (ts / 4, if ts % 4 == 0 { 0 } else { ts % 4 - 1 });
        for ts in 0..12u8 {
            let (fs, ft) = layers(ts);
            for d in 0..9u8 {
                let (ds, dt) = (d / 3, d % 3);
                let dti = if fs > ds || ft > dt {
                    0 // not present
                } else if ts % 4 == 0 || ft == 0 {
                    2 // switch
                } else if ft == dt {
                    1 // discardable
                } else {
                    3 // required
                };
                b.f(dti, 2);
            }
        }
        for ts in 0..12u8 {
            let (fs, ft) = layers(ts);
            let mut fdiffs: Vec<u32> = match (ts % 4, ft) {
                (0, _) => vec![],
                (_, 0) => vec![12],
                (_, 1) => vec![6],
                _ => vec![3],
            };
            if fs > 0 && (ts % 4 == 0 || ft == 0) {
                fdiffs.push(1);
            }
            for d in fdiffs {
                b.f(1, 1);
                b.f(d - 1, 4);
            }
            b.f(0, 1);
        }
        b.f(0, 3); // no chains: ns(10) of 0
        b.f(0, 1); // no resolutions
    }
    b.bytes()
}

/// Packet `n` of the `l3t3` stream (plain RTP, 1200 bytes): [`L3T3_PER_PICTURE`] packets a
/// picture, its S0, S1 and S2 frames of [`L3T3_PACKETS`] packets each, the last with the
/// marker; picture 0 is the key picture, its first packet carries the structure.
fn l3t3_packet(n: u64) -> Vec<u8> {
    let (picture, mut i) = (n / L3T3_PER_PICTURE, n % L3T3_PER_PICTURE);
    let mut s = 0u8;
    while i >= L3T3_PACKETS[usize::from(s)] {
        i -= L3T3_PACKETS[usize::from(s)];
        s += 1;
    }
    let per = L3T3_PACKETS[usize::from(s)];
    let (start, end) = (i == 0, i == per - 1);
    let t = L3T3_TEMPORAL[(picture % 4) as usize];
    let frame = (picture * 3 + u64::from(s)) as u16;
    let key = picture == 0;
    let dd = dd_l3t3((s, t, key), frame, (start, end), key && s == 0 && start);
    rtp_with_dd(n, s == 2 && end, picture as u32 * 3000, &dd)
}

/// A 1200-byte plain RTP packet of sequence number `n`, the marker `marker`, timestamp `ts`
/// and the descriptor `dd` (element [`DD_ID`]; in the two-byte header form of RFC 8285 when
/// it is longer than a one-byte element carries, as Chromium sends a structure of nine
/// decode targets).
fn rtp_with_dd(n: u64, marker: bool, ts: u32, dd: &[u8]) -> Vec<u8> {
    let mut p = vec![0x90, 96 | if marker { 0x80 } else { 0 }];
    p.extend_from_slice(&(n as u16).to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&LAYER_SSRC.to_be_bytes());
    let two_byte = dd.len() > 16;
    let mut ext = if two_byte {
        vec![DD_ID, dd.len() as u8]
    } else {
        vec![(DD_ID << 4) | (dd.len() as u8 - 1)]
    };
    ext.extend_from_slice(dd);
    while ext.len() % 4 != 0 {
        ext.push(0);
    }
    p.extend_from_slice(if two_byte {
        &[0x10, 0x00]
    } else {
        &[0xBE, 0xDE]
    });
    p.extend_from_slice(&((ext.len() / 4) as u16).to_be_bytes());
    p.extend_from_slice(&ext);
    p.resize(1200, 0x42);
    p
}

fn bench_svc(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("svc");
    let profile = Profile::AeadAes128Gcm;
    for (shape, fanout) in [("", 1u16), ("", 10), ("l3t3/", 1), ("l3t3/", 10)] {
        for svc in [false, true] {
            let mut sessions = speaker_and_viewers(profile, fanout);
            let routes = (0..fanout).map(|j| {
                let id = 100 + u64::from(j);
                RouteRecord {
                    id: id * 10,
                    from: 1,
                    ssrc: Some(LAYER_SSRC),
                    to: id,
                    rewrite: Rewrite {
                        ssrc: Some(OUT_SSRC),
                        // One layer of count 1 and the publisher's descriptor id: an SVC route
                        // (docs/SHM.md route word 12), no caps.
                        layer: svc.then_some(Layer {
                            index: 0,
                            count: 1,
                            max: Layer::NO_CAP,
                            max_temporal: Layer::NO_CAP,
                        }),
                        dd_id: if svc { DD_ID } else { 0 },
                        ..Rewrite::default()
                    },
                }
            });
            let mut routes: Vec<RouteRecord> = routes.collect();
            let mut fwd: Forwarder<Context> = Forwarder::new(opts());
            fwd.set_nack(NackConfig::OFF);
            fwd.set_now(Instant::now());
            fwd.rebuild(&mut sessions, &mut routes);
            fwd.set_now(Instant::now());
            let name = format!(
                "{}/fanout{fanout}/{shape}{}",
                profile.name(),
                if svc { "svc" } else { "plain" }
            );
            // The key picture first: it starts each SVC output (both cases get it).
            let (key_picture, stream): (u64, fn(u64) -> Vec<u8>) = if shape.is_empty() {
                (2 * u64::from(PER_FRAME), svc_packet)
            } else {
                (L3T3_PER_PICTURE, l3t3_packet)
            };
            bench_stream(
                &mut g,
                name,
                (profile, fanout),
                &mut fwd,
                key_picture,
                stream,
            );
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench_engine
}
criterion_group! {
    name = layers;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench_layers
}
criterion_group! {
    name = svc;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench_svc
}
criterion_main!(benches, layers, svc);
