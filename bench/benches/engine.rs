//! Engine throughput: one publisher's 1200-byte SRTP packets in, fan-out 1 and 10 out, for
//! AES_CM_128_HMAC_SHA1_80 and AEAD_AES_128_GCM. Measures the whole per-datagram path
//! (demux, session lookup, unprotect, route, copy, rewrite, protect, queue), no sockets.
//!
//! Throughput is reported in input packets; per output packet, divide the time by the fan-out.
//! Each case runs with the retransmission cache off (`fanoutN`) and on (`fanoutN/cache`:
//! every packet cached once, every copy recorded in its subscriber's sent map). AES-CM cases
//! run twice: `/single` authenticates each copy on its own (SHA-NI), `/multi` authenticates the
//! fan-out's copies together with multi-buffer HMAC-SHA1 (AVX-512 or AVX2).
//! Run: `cargo bench -p sluice-bench --bench engine`

use contract::shm::{Rewrite, Role, RouteRecord, SessionRecord};
use contract::srtp::{Context, ContextOptions, MasterKey, Profile};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use relay::batch::{TxQueue, MAX_DATAGRAM};
use relay::engine::{Forwarder, NackConfig};
use std::net::SocketAddr;
use std::time::Instant;

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

fn bench_engine(c: &mut Criterion) {
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
            let mut sessions = vec![SessionRecord {
                id: 1,
                peer: peer(0),
                role: Role::Speaker,
                rx_key: key(profile, 1),
                tx_key: key(profile, 2),
                key_epoch: 1,
                flags: 0,
                max_pps: 0,
                ice: None,
            }];
            let mut routes = Vec::new();
            for j in 0..fanout {
                let id = 100 + u64::from(j);
                sessions.push(SessionRecord {
                    id,
                    peer: peer(100 + j),
                    role: Role::Viewer,
                    rx_key: key(profile, 10 + j as u8),
                    tx_key: key(profile, 50 + j as u8),
                    key_epoch: 1,
                    flags: 0,
                    max_pps: 0,
                    ice: None,
                });
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

criterion_group!(benches, bench_engine);
criterion_main!(benches);
