//! SRTP transform cost per packet, with bare-crypto baselines from the same run.
//!
//! `cargo bench -p sluice-bench --bench srtp -- --warm-up-time 1 --measurement-time 2`
//!
//! - `protect/<profile>/<size>`: copy the plaintext into the buffer, bump the sequence number,
//!   `Context::protect_rtp`.
//! - `unprotect/<profile>/<size>`: `Context::unprotect_rtp` of a fresh packet (made outside the
//!   timed section, so the replay window sees each index once).
//! - `baseline/ring_aes128gcm_seal/<size>`: copy + `LessSafeKey::seal_in_place_separate_tag` of
//!   the same payload with the 12-byte header as AAD.
//! - `baseline/aes128ctr_hmacsha1/<size>`: copy + AES-128-CTR over the payload (RustCrypto `ctr`,
//!   pre-expanded key) + HMAC-SHA1 (pre-keyed state cloned) over header ‖ payload ‖ ROC.
//!
//! Sizes are whole RTP packets (12-byte header + payload), as the relay sees them. Times are the
//! benchmark thread's CPU time (`support/thread_cpu.rs`), like the `engine` bench's.

use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use contract::srtp::{Context, ContextOptions, MasterKey, Profile};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use hmac::{Hmac, Mac};
use std::hint::black_box;
#[path = "support/thread_cpu.rs"]
mod thread_cpu;
use thread_cpu::ThreadCpu;

const SIZES: [usize; 2] = [160, 1200];

fn packet(size: usize, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; size];
    p[0] = 0x80;
    p[1] = 96;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    for (i, b) in p[12..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

fn key(p: Profile) -> MasterKey {
    let km: Vec<u8> = (0..p.key_material_len()).map(|i| i as u8 * 7).collect();
    MasterKey::new(p, &km).unwrap()
}

fn bench_srtp(c: &mut Criterion<ThreadCpu>) {
    for profile in Profile::ALL {
        for size in SIZES {
            let mut g = c.benchmark_group(format!("protect/{profile}"));
            g.throughput(Throughput::Bytes(size as u64));
            let plain = packet(size, 0);
            let mut tx = Context::new(key(profile), ContextOptions::default()).unwrap();
            let mut buf = vec![0u8; size + profile.srtp_overhead()];
            let mut seq = 0u16;
            g.bench_function(BenchmarkId::from_parameter(size), |b| {
                b.iter(|| {
                    buf[..size].copy_from_slice(&plain);
                    buf[2..4].copy_from_slice(&seq.to_be_bytes());
                    seq = seq.wrapping_add(1);
                    black_box(tx.protect_rtp(&mut buf, size).unwrap())
                })
            });
            g.finish();

            let mut g = c.benchmark_group(format!("unprotect/{profile}"));
            g.throughput(Throughput::Bytes(size as u64));
            let mut tx = Context::new(key(profile), ContextOptions::default()).unwrap();
            let mut rx = Context::new(key(profile), ContextOptions::default()).unwrap();
            let mut seq = 0u16;
            let wire_len = size + profile.srtp_overhead();
            g.bench_function(BenchmarkId::from_parameter(size), |b| {
                b.iter_batched_ref(
                    || {
                        let mut p = packet(size, seq);
                        seq = seq.wrapping_add(1);
                        p.resize(wire_len, 0);
                        tx.protect_rtp(&mut p, size).unwrap();
                        p
                    },
                    |p| black_box(rx.unprotect_rtp(p, wire_len).unwrap()),
                    BatchSize::SmallInput,
                )
            });
            g.finish();
        }
    }
}

fn bench_baselines(c: &mut Criterion<ThreadCpu>) {
    use ring::aead;
    let mut g = c.benchmark_group("baseline/ring_aes128gcm_seal");
    let gcm =
        aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, &[7u8; 16]).unwrap());
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let plain = packet(size, 0);
        let mut buf = vec![0u8; size + 16];
        let mut n = 0u64;
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                buf[..size].copy_from_slice(&plain);
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_be_bytes());
                n += 1;
                let (h, rest) = buf.split_at_mut(12);
                let tag = gcm
                    .seal_in_place_separate_tag(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(&h[..]),
                        &mut rest[..size - 12],
                    )
                    .unwrap();
                buf[size..].copy_from_slice(tag.as_ref());
                black_box(&buf);
            })
        });
    }
    g.finish();

    type Ctr = ctr::Ctr128BE<aes::Aes128>;
    let mut g = c.benchmark_group("baseline/aes128ctr_hmacsha1");
    let aes_key = aes::Aes128::new(&[9u8; 16].into());
    let mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(&[5u8; 20]).unwrap();
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let plain = packet(size, 0);
        let mut buf = vec![0u8; size + 10];
        let mut n = 0u64;
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                buf[..size].copy_from_slice(&plain);
                let mut iv = [0u8; 16];
                iv[6..14].copy_from_slice(&n.to_be_bytes());
                n += 1;
                let mut c =
                    Ctr::from_core(ctr::CtrCore::inner_iv_init(aes_key.clone(), &iv.into()));
                c.apply_keystream(&mut buf[12..size]);
                let mut m = mac.clone();
                m.update(&buf[..size]);
                m.update(&[0, 0, 0, 0]);
                let t = m.finalize().into_bytes();
                buf[size..].copy_from_slice(&t[..10]);
                black_box(&buf);
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench_srtp, bench_baselines
}
criterion_main!(benches);
