//! AES-GCM in `ring` against `aws-lc-rs`, the two maintained Rust AEAD libraries with
//! hand-written AES-NI/VAES and carry-less-multiply assembly, for SRTP's packet sizes (160 B:
//! audio, 1200 B: video). docs/SRTP.md says which one the transforms use and why.
//!
//! `cargo bench -p sluice-bench --bench gcm_libs`
//!
//! Interleaved rather than criterion's one-after-the-other groups: on a shared machine the
//! load changes between groups by more than the difference measured here. Each round times a
//! block of calls of one library and then the other (who goes first alternates), and gives one
//! ratio; the median of 201 round ratios is the figure, with its quartiles.

use std::hint::black_box;
use std::time::Instant;

const ROUNDS: usize = 201;
const CALLS: usize = 2_000;

/// One library's AES-GCM with a fixed key, nonce and 12-byte AAD (an RTP header's size).
trait Gcm {
    fn seal(&self, data: &mut [u8]) -> [u8; 16];
    fn open(&self, data: &mut [u8], tag: &[u8; 16]) -> bool;
}

macro_rules! gcm_for {
    ($name:ident, $lib:ident) => {
        struct $name($lib::aead::LessSafeKey);
        impl $name {
            fn new(key: &[u8]) -> Self {
                let alg = if key.len() == 16 {
                    &$lib::aead::AES_128_GCM
                } else {
                    &$lib::aead::AES_256_GCM
                };
                $name($lib::aead::LessSafeKey::new(
                    $lib::aead::UnboundKey::new(alg, key).expect("key length"),
                ))
            }
            fn nonce_aad() -> ($lib::aead::Nonce, $lib::aead::Aad<[u8; 12]>) {
                (
                    $lib::aead::Nonce::assume_unique_for_key([3; 12]),
                    $lib::aead::Aad::from([1u8; 12]),
                )
            }
            fn seal_tag(&self, data: &mut [u8]) -> [u8; 16] {
                let (nonce, aad) = Self::nonce_aad();
                let tag = self
                    .0
                    .seal_in_place_separate_tag(nonce, aad, data)
                    .expect("seal");
                tag.as_ref().try_into().expect("16-byte tag")
            }
        }
    };
}

gcm_for!(Ring, ring);
gcm_for!(AwsLc, aws_lc_rs);

impl Gcm for Ring {
    fn seal(&self, data: &mut [u8]) -> [u8; 16] {
        self.seal_tag(data)
    }
    fn open(&self, data: &mut [u8], tag: &[u8; 16]) -> bool {
        let (nonce, aad) = Self::nonce_aad();
        let tag = ring::aead::Tag::from(*tag);
        self.0
            .open_in_place_separate_tag(nonce, aad, tag, data, 0..)
            .is_ok()
    }
}

impl Gcm for AwsLc {
    fn seal(&self, data: &mut [u8]) -> [u8; 16] {
        self.seal_tag(data)
    }
    fn open(&self, data: &mut [u8], tag: &[u8; 16]) -> bool {
        let (nonce, aad) = Self::nonce_aad();
        self.0
            .open_in_place_separate_tag(nonce, aad, tag, data)
            .is_ok()
    }
}

/// Nanoseconds per call over one block of `CALLS`.
fn block(g: &dyn Gcm, len: usize, open: bool) -> f64 {
    let mut data = vec![0u8; len];
    let tag = g.seal(&mut data);
    let sealed = data.clone();
    let t = Instant::now();
    for _ in 0..CALLS {
        if open {
            data.copy_from_slice(&sealed);
            assert!(g.open(black_box(&mut data), &tag));
        } else {
            black_box(g.seal(black_box(&mut data)));
        }
    }
    t.elapsed().as_nanos() as f64 / CALLS as f64
}

fn median_and_quartiles(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (v[n / 2], v[n / 4], v[3 * n / 4])
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench` absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for (profile, key_len) in [("AEAD_AES_128_GCM", 16), ("AEAD_AES_256_GCM", 32)] {
        let key = vec![7u8; key_len];
        let (ring, aws) = (Ring::new(&key), AwsLc::new(&key));
        for len in [160usize, 1200] {
            for open in [false, true] {
                let (mut ratio, mut r_ns, mut a_ns) = (vec![], vec![], vec![]);
                for round in 0..ROUNDS {
                    let (r, a) = if round % 2 == 0 {
                        let r = block(&ring, len, open);
                        (r, block(&aws, len, open))
                    } else {
                        let a = block(&aws, len, open);
                        (block(&ring, len, open), a)
                    };
                    r_ns.push(r);
                    a_ns.push(a);
                    ratio.push(a / r);
                }
                let (m, q1, q3) = median_and_quartiles(&mut ratio);
                println!(
                    "{profile} {len:>4} B {}: ring {:.0} ns, aws-lc-rs {:.0} ns; aws-lc-rs / ring \
                     {m:.3} (quartiles {q1:.3}-{q3:.3})",
                    if open { "open" } else { "seal" },
                    median_and_quartiles(&mut r_ns).0,
                    median_and_quartiles(&mut a_ns).0,
                );
            }
        }
    }
}
