//! Multi-buffer HMAC-SHA1 against single-buffer, same run: N messages of L bytes (+ a 4-byte
//! ROC, as SRTP authenticates) under N keys, N in 1..16, L = 160 and 1200 (+12 header bytes).
//! `hmac` is today's per-packet path (the `hmac` crate over a cloned keyed state, SHA-NI),
//! `single` the precomputed-state single-buffer path, `kernel-*` the widest SIMD kernel this CPU
//! runs called for every lane count (below `Kernel::min_lanes` the batch would not use it; this
//! is how that threshold is chosen). Throughput is in messages.
//! Run: `cargo bench -p sluice-bench --bench sha1mb`

use contract::srtp::sha1mb::{hmac_sha1_batch, hmac_sha1_lanes, HmacState, Kernel, MacInput};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::hint::black_box;

fn bench_sha1mb(c: &mut Criterion) {
    let mut g = c.benchmark_group("hmac_sha1");
    let kernel = Kernel::best();
    for len in [172usize, 1212] {
        let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let roc = [0u8, 0, 0, 1];
        for lanes in [1usize, 2, 3, 4, 6, 8, 10, 16] {
            let keys: Vec<[u8; 20]> = (0..lanes).map(|l| [l as u8; 20]).collect();
            let states: Vec<HmacState> = keys.iter().map(|k| HmacState::new(k)).collect();
            let macs: Vec<Hmac<Sha1>> = keys
                .iter()
                .map(|k| <Hmac<Sha1> as Mac>::new_from_slice(k).expect("any key length"))
                .collect();
            let inputs: Vec<MacInput> = states
                .iter()
                .map(|k| MacInput {
                    key: k,
                    a: &msg,
                    b: &roc,
                })
                .collect();
            let mut out = [[0u8; 20]; 16];
            g.throughput(Throughput::Elements(lanes as u64));
            g.bench_function(format!("{len}B/x{lanes}/hmac"), |b| {
                b.iter(|| {
                    for (m, o) in macs.iter().zip(out.iter_mut()) {
                        let mut m = m.clone();
                        m.update(black_box(&msg));
                        m.update(&roc);
                        *o = m.finalize().into_bytes().into();
                    }
                    black_box(&out);
                })
            });
            g.bench_function(format!("{len}B/x{lanes}/single"), |b| {
                b.iter(|| {
                    hmac_sha1_batch(Kernel::Single, black_box(&inputs), &mut out);
                    black_box(&out);
                })
            });
            g.bench_function(format!("{len}B/x{lanes}/kernel-{kernel:?}"), |b| {
                b.iter(|| {
                    hmac_sha1_lanes(kernel, black_box(&inputs), &mut out);
                    black_box(&out);
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_sha1mb);
criterion_main!(benches);
