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
//! Run: `cargo bench -p sluice-bench --bench engine` (only the layers group: `-- layers`)

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
                    |pkts| {
                        tx.clear();
                        for p in &pkts {
                            rx[..p.len()].copy_from_slice(p);
                            fwd.handle(peer(0), &mut rx, p.len(), &mut tx, &mut slow);
                        }
                        assert_eq!(tx.len(), BATCH * usize::from(fanout));
                    },
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
            let mut publisher = Context::new(key(profile, 1), opts()).expect("context");
            let mut tx = TxQueue::with_capacity(BATCH * usize::from(fanout));
            let mut slow = TxQueue::with_capacity(16);
            let mut rx = vec![0u8; MAX_DATAGRAM];
            let mut protect = |n: u64, key: bool| {
                let mut p = vp8_packet(n, key);
                let n = p.len();
                p.resize(MAX_DATAGRAM, 0);
                let n = publisher.protect_rtp(&mut p, n).expect("protect");
                p.truncate(n);
                p
            };
            // A key frame first: it starts each layered output (both cases get it).
            for n in 0..u64::from(PER_FRAME) {
                let p = protect(n, true);
                rx[..p.len()].copy_from_slice(&p);
                fwd.handle(peer(0), &mut rx, p.len(), &mut tx, &mut slow);
            }
            assert_eq!(
                tx.len(),
                usize::from(PER_FRAME * fanout),
                "the key frame went out"
            );
            let mut n = u64::from(PER_FRAME);
            g.throughput(Throughput::Elements(BATCH as u64 * u64::from(fanout)));
            let name = format!(
                "{}/fanout{fanout}/{}",
                profile.name(),
                if layered { "layered" } else { "plain" }
            );
            g.bench_function(name, |b| {
                b.iter_batched(
                    || {
                        (0..BATCH)
                            .map(|_| {
                                let p = protect(n, false);
                                n += 1;
                                p
                            })
                            .collect::<Vec<_>>()
                    },
                    |pkts| {
                        tx.clear();
                        for p in &pkts {
                            rx[..p.len()].copy_from_slice(p);
                            fwd.handle(peer(0), &mut rx, p.len(), &mut tx, &mut slow);
                        }
                        assert_eq!(tx.len(), BATCH * usize::from(fanout));
                    },
                    BatchSize::PerIteration,
                );
            });
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
criterion_main!(benches, layers);
