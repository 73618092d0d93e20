//! Multi-buffer HMAC-SHA1: up to 16 independent messages under up to 16 keys hashed side by side,
//! one message per 32-bit SIMD lane (the technique of isa-l_crypto and intel-ipsec-mb). At
//! fan-out N the relay authenticates N packets of (nearly) the same length under N keys, which is
//! exactly this batch.
//!
//! - AVX-512F/BW: 16 lanes, the whole HMAC in registers (blocks loaded per lane, byte-swapped
//!   and transposed with shuffles; ternary logic and rotates in the rounds); AVX2: 8 lanes; both
//!   picked at run time. Without either, or for a batch below [`Kernel::min_lanes`], every
//!   message goes through the single-buffer compression function of the `sha1` crate (SHA-NI
//!   picked at run time).
//! - The HMAC inner and outer states (RFC 2104: key ⊕ ipad and key ⊕ opad already absorbed) are
//!   computed once per session key ([`HmacState`]); a lane starts from them.
//! - Lanes may carry messages of different lengths: a lane whose message has no further block
//!   keeps its state (masked update) while the others continue.
//!
//! Owns: SHA-1 compression across lanes, HMAC padding. May not touch: packet layout, keys'
//! lifetimes. Allocates nothing. The SIMD kernels are `unsafe` (target features picked at run
//! time); every block has a `// SAFETY:` note.
#![allow(unsafe_code)]

use sha1::digest::generic_array::GenericArray;
use sha1::{Digest, Sha1};

/// Most messages one kernel call hashes.
pub(crate) const MAX_LANES: usize = 16;

const H0: [u32; 5] = [
    0x6745_2301,
    0xEFCD_AB89,
    0x98BA_DCFE,
    0x1032_5476,
    0xC3D2_E1F0,
];
const K: [u32; 4] = [0x5A82_7999, 0x6ED9_EBA1, 0x8F1B_BCDC, 0xCA62_C1D6];

/// HMAC-SHA1 keyed state: SHA-1 chaining values after the key ⊕ ipad and key ⊕ opad blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HmacState {
    inner: [u32; 5],
    outer: [u32; 5],
}

/// One message for [`hmac_sha1_batch`]: HMAC-SHA1 under `key` of `a ‖ b`.
#[derive(Clone, Copy)]
pub struct MacInput<'a> {
    pub key: &'a HmacState,
    pub a: &'a [u8],
    pub b: &'a [u8],
}

/// Which SHA-1 kernel a batch runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// One message at a time (SHA-NI when the CPU has it).
    Single,
    /// 8 lanes of AVX2.
    Avx2,
    /// 16 lanes of AVX-512F/BW (intrinsics stable since Rust 1.89; `build.rs` sets the cfg).
    #[cfg(sluice_avx512)]
    #[clippy::msrv = "1.89"]
    Avx512,
}

impl Kernel {
    /// The widest kernel this CPU runs.
    pub fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            #[cfg(sluice_avx512)]
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
            {
                return Kernel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Single
    }

    /// Whether this CPU runs the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Single => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(all(target_arch = "x86_64", sluice_avx512))]
            Kernel::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Below this many messages a batch goes through the single-buffer path (SHA-NI): the
    /// kernel costs the same for 1 lane as for all of them, so it pays only once enough lanes
    /// are filled (measured with the `sha1mb` criterion bench, docs/BENCHMARKS.md).
    pub fn min_lanes(self) -> usize {
        match self {
            Kernel::Single => 1,
            Kernel::Avx2 => 3,
            Kernel::Avx512 => 4,
        }
    }

    fn lanes(self) -> usize {
        match self {
            Kernel::Single => 1,
            Kernel::Avx2 => 8,
            Kernel::Avx512 => 16,
        }
    }
}

impl HmacState {
    /// Key the state (RFC 2104 §2: a key longer than the block is hashed first).
    pub fn new(key: &[u8]) -> HmacState {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..20].copy_from_slice(&Sha1::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let mut ipad = [0u8; 64];
        let mut opad = [0u8; 64];
        for i in 0..64 {
            ipad[i] = k[i] ^ 0x36;
            opad[i] = k[i] ^ 0x5c;
        }
        let mut inner = H0;
        let mut outer = H0;
        compress1(&mut inner, &ipad);
        compress1(&mut outer, &opad);
        HmacState { inner, outer }
    }

    /// HMAC-SHA1 of `a ‖ b`, single-buffer.
    pub fn tag(&self, a: &[u8], b: &[u8]) -> [u8; 20] {
        let msg = Msg::new(a, b);
        let mut h = self.inner;
        let mut tmp = [0u8; 64];
        for j in 0..msg.blocks {
            compress1(&mut h, msg.block(j, &mut tmp));
        }
        let mut ob = [0u8; 64];
        outer_block(&h, &mut ob);
        let mut o = self.outer;
        compress1(&mut o, &ob);
        digest_bytes(&o)
    }
}

fn compress1(state: &mut [u32; 5], block: &[u8; 64]) {
    sha1::compress(
        state,
        core::slice::from_ref(GenericArray::from_slice(block)),
    );
}

fn digest_bytes(h: &[u32; 5]) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (d, w) in out.chunks_exact_mut(4).zip(h) {
        d.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// The outer hash's only block: inner digest ‖ 0x80 ‖ zeros ‖ bit length of opad block + 20.
fn outer_block(inner: &[u32; 5], out: &mut [u8; 64]) {
    *out = [0u8; 64];
    out[..20].copy_from_slice(&digest_bytes(inner));
    out[20] = 0x80;
    out[56..].copy_from_slice(&((64u64 + 20) * 8).to_be_bytes());
}

/// A message `a ‖ b` after a 64-byte keyed block, padded (FIPS 180-4 §5.1.1).
#[derive(Clone, Copy)]
struct Msg<'a> {
    a: &'a [u8],
    b: &'a [u8],
    len: usize,
    blocks: usize,
}

impl<'a> Msg<'a> {
    fn new(a: &'a [u8], b: &'a [u8]) -> Msg<'a> {
        let len = a.len() + b.len();
        Msg {
            a,
            b,
            len,
            blocks: (len + 9).div_ceil(64),
        }
    }

    /// Block `j` of the padded message: borrowed from `a` when it lies wholly inside it,
    /// otherwise assembled in `tmp`.
    #[inline]
    fn block<'t>(&self, j: usize, tmp: &'t mut [u8; 64]) -> &'t [u8; 64]
    where
        'a: 't,
    {
        let start = j * 64;
        if let Some(full) = self.a.get(start..start + 64) {
            // The range is exactly 64 bytes long.
            return full.try_into().expect("64-byte block");
        }
        *tmp = [0u8; 64];
        if start < self.a.len() {
            let n = self.a.len() - start;
            tmp[..n].copy_from_slice(&self.a[start..]);
        }
        for (k, &x) in self.b.iter().enumerate() {
            let p = self.a.len() + k;
            if (start..start + 64).contains(&p) {
                tmp[p - start] = x;
            }
        }
        if (start..start + 64).contains(&self.len) {
            tmp[self.len - start] = 0x80;
        }
        if j + 1 == self.blocks {
            tmp[56..].copy_from_slice(&((64 + self.len as u64) * 8).to_be_bytes());
        }
        tmp
    }
}

/// HMAC-SHA1 of every input into `out` (same order), on `kernel` when this CPU runs it and the
/// batch is large enough, single-buffer otherwise. `out` must be at least as long as `inputs`.
pub fn hmac_sha1_batch(kernel: Kernel, inputs: &[MacInput<'_>], out: &mut [[u8; 20]]) {
    let kernel = if kernel.available() {
        kernel
    } else {
        Kernel::Single
    };
    let lanes = kernel.lanes();
    for (chunk, o) in inputs.chunks(lanes).zip(out.chunks_mut(lanes)) {
        if kernel == Kernel::Single || chunk.len() < kernel.min_lanes() {
            for (i, d) in chunk.iter().zip(o.iter_mut()) {
                *d = i.key.tag(i.a, i.b);
            }
        } else {
            run(kernel, chunk, o);
        }
    }
}

/// The multi-buffer kernel itself on up to `kernel.lanes()` inputs, whatever their number
/// (the property tests and the bench call it directly; [`hmac_sha1_batch`] picks it).
pub fn hmac_sha1_lanes(kernel: Kernel, inputs: &[MacInput<'_>], out: &mut [[u8; 20]]) {
    assert!(kernel.available() && inputs.len() <= kernel.lanes() && out.len() >= inputs.len());
    if kernel == Kernel::Single {
        for (i, d) in inputs.iter().zip(out.iter_mut()) {
            *d = i.key.tag(i.a, i.b);
        }
    } else {
        run(kernel, inputs, out);
    }
}

/// One call of a SIMD kernel on 1..=`kernel.lanes()` inputs; `kernel` is available.
fn run(kernel: Kernel, inputs: &[MacInput<'_>], out: &mut [[u8; 20]]) {
    match kernel {
        #[cfg(all(target_arch = "x86_64", sluice_avx512))]
        // SAFETY: callers pass only a kernel whose `available()` was true: the CPU has AVX-512F
        // and AVX-512BW. `inputs` holds at most 16 messages and `out` at least as many digests.
        Kernel::Avx512 => unsafe { x86::hmac16(inputs, out) },
        _ => lanes_run(kernel, inputs, out),
    }
}

/// Transposed lane state: `state[word][lane]`.
type LaneState = [[u32; MAX_LANES]; 5];
/// Transposed message block: `w[word][lane]`, words already big-endian decoded.
type LaneBlock = [[u32; MAX_LANES]; 16];

fn lanes_run(kernel: Kernel, inputs: &[MacInput<'_>], out: &mut [[u8; 20]]) {
    let n = inputs.len();
    let mut msgs = [Msg::new(&[], &[]); MAX_LANES];
    let mut state: LaneState = [[0; MAX_LANES]; 5];
    let mut max_blocks = 0;
    for (l, i) in inputs.iter().enumerate() {
        msgs[l] = Msg::new(i.a, i.b);
        max_blocks = max_blocks.max(msgs[l].blocks);
        for (w, s) in state.iter_mut().zip(i.key.inner) {
            w[l] = s;
        }
    }
    let mut w: LaneBlock = [[0; MAX_LANES]; 16];
    let mut active = [0u32; MAX_LANES];
    let mut tmp = [0u8; 64];
    for j in 0..max_blocks {
        for l in 0..n {
            if j < msgs[l].blocks {
                active[l] = u32::MAX;
                let b = msgs[l].block(j, &mut tmp);
                for (k, word) in b.chunks_exact(4).enumerate() {
                    w[k][l] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
                }
            } else {
                active[l] = 0;
            }
        }
        compress_lanes(kernel, &mut state, &w, &active);
    }
    // Outer hash: one block per lane, from the outer keyed state.
    let mut ob = [0u8; 64];
    for (l, i) in inputs.iter().enumerate() {
        let inner = [
            state[0][l],
            state[1][l],
            state[2][l],
            state[3][l],
            state[4][l],
        ];
        outer_block(&inner, &mut ob);
        for (k, word) in ob.chunks_exact(4).enumerate() {
            w[k][l] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for (s, o) in state.iter_mut().zip(i.key.outer) {
            s[l] = o;
        }
        active[l] = u32::MAX;
    }
    compress_lanes(kernel, &mut state, &w, &active);
    for (l, d) in out.iter_mut().enumerate().take(n) {
        *d = digest_bytes(&[
            state[0][l],
            state[1][l],
            state[2][l],
            state[3][l],
            state[4][l],
        ]);
    }
}

fn compress_lanes(kernel: Kernel, state: &mut LaneState, w: &LaneBlock, active: &[u32; 16]) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            // SAFETY: `lanes_run` runs only with a kernel whose `available()` was true, i.e. the
            // CPU has AVX2. Two halves of 8 lanes each.
            unsafe { x86::compress8(state, w, active, 0) };
            if active[8..].iter().any(|&a| a != 0) {
                // SAFETY: as above.
                unsafe { x86::compress8(state, w, active, 8) };
            }
        }
        _ => {
            for l in 0..MAX_LANES {
                if active[l] == 0 {
                    continue;
                }
                let mut s = [
                    state[0][l],
                    state[1][l],
                    state[2][l],
                    state[3][l],
                    state[4][l],
                ];
                let mut b = [0u8; 64];
                for k in 0..16 {
                    b[4 * k..4 * k + 4].copy_from_slice(&w[k][l].to_be_bytes());
                }
                compress1(&mut s, &b);
                for (d, v) in state.iter_mut().zip(s) {
                    d[l] = v;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{LaneBlock, LaneState, K};
    #[cfg(sluice_avx512)]
    use super::{MacInput, Msg, H0, MAX_LANES};
    use std::arch::x86_64::*;

    /// The 80 SHA-1 rounds (FIPS 180-4 §6.1.2) on vectors of lanes, with the per-lane `active`
    /// mask deciding whether the lane's chaining value takes the block's result.
    macro_rules! rounds {
        ($v:ty, $state:ident, $w:ident, $active:ident, $off:expr,
         load = $load:expr, store = $store:expr, splat = $splat:expr,
         add = $add:expr, xor = $xor:expr, and = $and:expr,
         ch = $ch:expr, par = $par:expr, maj = $maj:expr, rol = $rol:ident) => {{
            let mut h: [$v; 5] = [
                $load(&$state[0][$off..]),
                $load(&$state[1][$off..]),
                $load(&$state[2][$off..]),
                $load(&$state[3][$off..]),
                $load(&$state[4][$off..]),
            ];
            let mut m: [$v; 16] = [$splat(0); 16];
            for (t, x) in m.iter_mut().enumerate() {
                *x = $load(&$w[t][$off..]);
            }
            let [mut a, mut b, mut c, mut d, mut e] = h;
            for t in 0..80 {
                let wt = if t < 16 {
                    m[t]
                } else {
                    let x = $xor(
                        $xor(m[(t + 13) & 15], m[(t + 8) & 15]),
                        $xor(m[(t + 2) & 15], m[t & 15]),
                    );
                    let x = $rol!(x, 1);
                    m[t & 15] = x;
                    x
                };
                let f = match t / 20 {
                    0 => $ch(b, c, d),
                    2 => $maj(b, c, d),
                    _ => $par(b, c, d),
                };
                let tmp = $add(
                    $add($rol!(a, 5), f),
                    $add($add(e, $splat(K[t / 20] as i32)), wt),
                );
                e = d;
                d = c;
                c = $rol!(b, 30);
                b = a;
                a = tmp;
            }
            let mask = $load(&$active[$off..]);
            for (s, v) in h.iter_mut().zip([a, b, c, d, e]) {
                *s = $add(*s, $and(v, mask));
            }
            for (i, s) in h.iter().enumerate() {
                $store(&mut $state[i][$off..], *s);
            }
        }};
    }

    macro_rules! rol256 {
        ($x:expr, 1) => {
            _mm256_or_si256(_mm256_slli_epi32::<1>($x), _mm256_srli_epi32::<31>($x))
        };
        ($x:expr, 5) => {
            _mm256_or_si256(_mm256_slli_epi32::<5>($x), _mm256_srli_epi32::<27>($x))
        };
        ($x:expr, 30) => {
            _mm256_or_si256(_mm256_slli_epi32::<30>($x), _mm256_srli_epi32::<2>($x))
        };
    }

    /// 8 lanes of AVX2, lanes `off..off + 8` (`off` is 0 or 8).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn compress8(
        state: &mut LaneState,
        w: &LaneBlock,
        active: &[u32; 16],
        off: usize,
    ) {
        debug_assert!(off == 0 || off == 8);
        // SAFETY: `off` is 0 or 8 and each row holds 16 u32, so the 32 bytes from `off` are
        // in bounds; the unaligned load needs no alignment.
        let load = |s: &[u32]| unsafe { _mm256_loadu_si256(s.as_ptr().cast()) };
        // SAFETY: as for `load`, and the row is borrowed mutably.
        let store = |s: &mut [u32], v| unsafe { _mm256_storeu_si256(s.as_mut_ptr().cast(), v) };
        rounds!(
            __m256i,
            state,
            w,
            active,
            off,
            load = load,
            store = store,
            splat = |x| _mm256_set1_epi32(x),
            add = |x, y| _mm256_add_epi32(x, y),
            xor = |x, y| _mm256_xor_si256(x, y),
            and = |x, y| _mm256_and_si256(x, y),
            ch = |x, y, z| _mm256_xor_si256(z, _mm256_and_si256(x, _mm256_xor_si256(y, z))),
            par = |x, y, z| _mm256_xor_si256(_mm256_xor_si256(x, y), z),
            maj = |x, y, z| _mm256_or_si256(
                _mm256_and_si256(x, y),
                _mm256_and_si256(z, _mm256_or_si256(x, y))
            ),
            rol = rol256
        )
    }

    /// `_mm512_shuffle_epi8` control that turns every 32-bit word big-endian.
    #[cfg(sluice_avx512)]
    const BSWAP32: [u8; 16] = [3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12];

    /// 16×16 transpose of 32-bit words: row `l` (lane `l`'s block) in, row `t` (word `t` of
    /// every lane) out. 64 shuffles: 32-bit and 64-bit interleaves within 128-bit lanes, then a
    /// 4×4 transpose of 128-bit lanes in two rounds of `vshufi32x4`.
    #[cfg(sluice_avx512)]
    #[clippy::msrv = "1.89"]
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        // u[4g + m], 128-bit lane k: word 4k + m of rows 4g..4g + 4.
        let mut u = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
            u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
            u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
            u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
        }
        let mut w = [_mm512_setzero_si512(); 16];
        for m in 0..4 {
            let x0 = _mm512_shuffle_i32x4::<0x44>(u[m], u[4 + m]);
            let x1 = _mm512_shuffle_i32x4::<0xEE>(u[m], u[4 + m]);
            let x2 = _mm512_shuffle_i32x4::<0x44>(u[8 + m], u[12 + m]);
            let x3 = _mm512_shuffle_i32x4::<0xEE>(u[8 + m], u[12 + m]);
            w[m] = _mm512_shuffle_i32x4::<0x88>(x0, x2);
            w[4 + m] = _mm512_shuffle_i32x4::<0xDD>(x0, x2);
            w[8 + m] = _mm512_shuffle_i32x4::<0x88>(x1, x3);
            w[12 + m] = _mm512_shuffle_i32x4::<0xDD>(x1, x3);
        }
        w
    }

    /// One SHA-1 compression (FIPS 180-4 §6.1.2) of 16 lanes, message words in registers;
    /// lanes outside `active` keep their chaining value. The round functions are one
    /// `vpternlogd` each (Ch 0xCA, Parity 0x96, Maj 0xE8), the rotates `vprold`, the schedule's
    /// three-way XOR one `vpternlogd`.
    #[cfg(sluice_avx512)]
    #[clippy::msrv = "1.89"]
    #[inline]
    #[target_feature(enable = "avx512f")]
    // The schedule words of rounds 77–79 are stored like the others and never read.
    #[allow(unused_assignments)]
    fn compress16(h: &mut [__m512i; 5], mut w: [__m512i; 16], active: __mmask16) {
        let [mut a, mut b, mut c, mut d, mut e] = *h;
        macro_rules! round {
            ($t:expr, $f:literal, $k:expr, $a:ident, $b:ident, $c:ident, $d:ident, $e:ident) => {{
                let wt = if $t < 16 {
                    w[$t & 15]
                } else {
                    let x = _mm512_ternarylogic_epi32::<0x96>(
                        w[($t + 13) & 15],
                        w[($t + 8) & 15],
                        w[($t + 2) & 15],
                    );
                    let x = _mm512_rol_epi32::<1>(_mm512_xor_si512(x, w[$t & 15]));
                    w[$t & 15] = x;
                    x
                };
                let f = _mm512_ternarylogic_epi32::<$f>($b, $c, $d);
                $e = _mm512_add_epi32(
                    _mm512_add_epi32($e, _mm512_add_epi32($k, wt)),
                    _mm512_add_epi32(_mm512_rol_epi32::<5>($a), f),
                );
                $b = _mm512_rol_epi32::<30>($b);
            }};
        }
        macro_rules! twenty {
            ($start:expr, $f:literal, $k:expr) => {{
                let k = _mm512_set1_epi32($k as i32);
                round!($start + 0, $f, k, a, b, c, d, e);
                round!($start + 1, $f, k, e, a, b, c, d);
                round!($start + 2, $f, k, d, e, a, b, c);
                round!($start + 3, $f, k, c, d, e, a, b);
                round!($start + 4, $f, k, b, c, d, e, a);
                round!($start + 5, $f, k, a, b, c, d, e);
                round!($start + 6, $f, k, e, a, b, c, d);
                round!($start + 7, $f, k, d, e, a, b, c);
                round!($start + 8, $f, k, c, d, e, a, b);
                round!($start + 9, $f, k, b, c, d, e, a);
                round!($start + 10, $f, k, a, b, c, d, e);
                round!($start + 11, $f, k, e, a, b, c, d);
                round!($start + 12, $f, k, d, e, a, b, c);
                round!($start + 13, $f, k, c, d, e, a, b);
                round!($start + 14, $f, k, b, c, d, e, a);
                round!($start + 15, $f, k, a, b, c, d, e);
                round!($start + 16, $f, k, e, a, b, c, d);
                round!($start + 17, $f, k, d, e, a, b, c);
                round!($start + 18, $f, k, c, d, e, a, b);
                round!($start + 19, $f, k, b, c, d, e, a);
            }};
        }
        twenty!(0, 0xCA, K[0]);
        twenty!(20, 0x96, K[1]);
        twenty!(40, 0xE8, K[2]);
        twenty!(60, 0x96, K[3]);
        for (s, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *s = _mm512_mask_add_epi32(*s, active, *s, v);
        }
    }

    /// Whole HMAC-SHA1 of up to 16 messages, one per lane of AVX-512: each block of every lane
    /// is loaded as one vector (straight from the message when the block lies inside it),
    /// byte-swapped and transposed in registers; the inner digest stays transposed and is the
    /// outer block's first five words as it stands, so only the keyed states go in and the
    /// digests come out lane by lane.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512BW. Panics unless `inputs.len() <= 16` and
    /// `out.len() >= inputs.len()`.
    #[cfg(sluice_avx512)]
    #[clippy::msrv = "1.89"]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn hmac16(inputs: &[MacInput<'_>], out: &mut [[u8; 20]]) {
        let n = inputs.len();
        assert!(n <= MAX_LANES && out.len() >= n);
        let mut msgs = [Msg::new(&[], &[]); MAX_LANES];
        // Transposed keyed states, inner and outer; idle lanes hash zeros from H0 unseen.
        let mut inner = [[0u32; MAX_LANES]; 5];
        let mut outer = [[0u32; MAX_LANES]; 5];
        let mut max_blocks = 0;
        for (l, i) in inputs.iter().enumerate() {
            msgs[l] = Msg::new(i.a, i.b);
            max_blocks = max_blocks.max(msgs[l].blocks);
            for w in 0..5 {
                inner[w][l] = i.key.inner[w];
                outer[w][l] = i.key.outer[w];
            }
        }
        for w in 0..5 {
            for l in n..MAX_LANES {
                inner[w][l] = H0[w];
                outer[w][l] = H0[w];
            }
        }
        // SAFETY: each row is 16 u32 = 64 bytes; unaligned loads need no alignment.
        let load = |r: &[u32; MAX_LANES]| unsafe { _mm512_loadu_si512(r.as_ptr().cast()) };
        let mut h = [
            load(&inner[0]),
            load(&inner[1]),
            load(&inner[2]),
            load(&inner[3]),
            load(&inner[4]),
        ];
        let bswap = _mm512_broadcast_i32x4(
            // SAFETY: BSWAP32 is 16 bytes; unaligned load.
            unsafe { _mm_loadu_si128(BSWAP32.as_ptr().cast()) },
        );
        let mut tails = [[0u8; 64]; MAX_LANES];
        for j in 0..max_blocks {
            let mut rows = [_mm512_setzero_si512(); 16];
            let mut active: __mmask16 = 0;
            for l in 0..n {
                if j < msgs[l].blocks {
                    active |= 1 << l;
                    let blk = msgs[l].block(j, &mut tails[l]);
                    // SAFETY: `blk` is a 64-byte array; unaligned load.
                    let v = unsafe { _mm512_loadu_si512(blk.as_ptr().cast()) };
                    rows[l] = _mm512_shuffle_epi8(v, bswap);
                }
            }
            compress16(&mut h, transpose16(rows), active);
        }
        // Outer hash, one block: inner digest ‖ 0x80 ‖ zeros ‖ (64 + 20) · 8 bits.
        let mut w = [_mm512_setzero_si512(); 16];
        w[..5].copy_from_slice(&h);
        w[5] = _mm512_set1_epi32(0x8000_0000u32 as i32);
        w[15] = _mm512_set1_epi32((64 + 20) * 8);
        let mut o = [
            load(&outer[0]),
            load(&outer[1]),
            load(&outer[2]),
            load(&outer[3]),
            load(&outer[4]),
        ];
        compress16(&mut o, w, 0xFFFF);
        let mut d = [[0u32; MAX_LANES]; 5];
        for (row, v) in d.iter_mut().zip(o) {
            // SAFETY: each row is 16 u32 = 64 bytes; unaligned store.
            unsafe { _mm512_storeu_si512(row.as_mut_ptr().cast(), v) };
        }
        for (l, digest) in out.iter_mut().enumerate().take(n) {
            for (k, row) in d.iter().enumerate() {
                digest[4 * k..4 * k + 4].copy_from_slice(&row[l].to_be_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use proptest::prelude::*;

    fn reference(key: &[u8], a: &[u8], b: &[u8]) -> [u8; 20] {
        let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key).unwrap();
        m.update(a);
        m.update(b);
        m.finalize().into_bytes().into()
    }

    fn kernels() -> Vec<Kernel> {
        [Kernel::Single, Kernel::Avx2, Kernel::Avx512]
            .into_iter()
            .filter(|k| k.available())
            .collect()
    }

    #[test]
    fn rfc2202_vectors() {
        // RFC 2202 §3, test cases 1, 2 and 6 (key longer than the block).
        let cases: [(&[u8], &[u8], &str); 3] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b617318655057264e28bc0b6fb378c8ef146be00",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
            ),
            (
                &[0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "aa4ae5e15272d00e95705637ce8a3b55ed402112",
            ),
        ];
        for (key, data, hex) in cases {
            let st = HmacState::new(key);
            let want: Vec<u8> = (0..20)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            assert_eq!(st.tag(data, &[]).as_slice(), want.as_slice());
            for k in kernels() {
                let mut out = [[0u8; 20]; 1];
                hmac_sha1_lanes(
                    k,
                    &[MacInput {
                        key: &st,
                        a: data,
                        b: &[],
                    }],
                    &mut out,
                );
                assert_eq!(out[0].as_slice(), want.as_slice(), "{k:?}");
            }
        }
    }

    #[test]
    fn every_padding_boundary() {
        // Lengths around each block boundary, all 16 lanes with different lengths at once.
        let data: Vec<u8> = (0..1600u32).map(|i| (i * 7 + 3) as u8).collect();
        let keys: Vec<HmacState> = (0..16u8).map(|i| HmacState::new(&[i; 20])).collect();
        for base in 0..=200usize {
            let inputs: Vec<MacInput> = (0..16)
                .map(|l| MacInput {
                    key: &keys[l],
                    a: &data[..base + l * 3],
                    b: &[1, 2, 3, 4][..l % 5],
                })
                .collect();
            for k in kernels() {
                let mut out = [[0u8; 20]; 16];
                let n = k.lanes().min(16);
                for (ci, co) in inputs.chunks(n).zip(out.chunks_mut(n)) {
                    hmac_sha1_lanes(k, ci, co);
                }
                for (l, i) in inputs.iter().enumerate() {
                    assert_eq!(
                        out[l],
                        reference(&[l as u8; 20], i.a, i.b),
                        "{k:?} lane {l}"
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every lane of every kernel agrees with the `hmac`/`sha1` crates, for 1–16 lanes and
        /// messages of 0–1500 bytes (plus a 0–4 byte suffix, the ROC's place), keys of 0–100 bytes.
        #[test]
        fn lanes_match_reference(
            lanes in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..100),
                 0usize..=1500,
                 proptest::collection::vec(any::<u8>(), 0..=4),
                 any::<u8>()),
                1..=16),
        ) {
            let keys: Vec<HmacState> = lanes.iter().map(|(k, ..)| HmacState::new(k)).collect();
            let msgs: Vec<Vec<u8>> = lanes
                .iter()
                .map(|(_, len, _, seed)| (0..*len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect())
                .collect();
            let inputs: Vec<MacInput> = (0..lanes.len())
                .map(|l| MacInput { key: &keys[l], a: &msgs[l], b: &lanes[l].2 })
                .collect();
            let want: Vec<[u8; 20]> =
                (0..lanes.len()).map(|l| reference(&lanes[l].0, &msgs[l], &lanes[l].2)).collect();
            for k in kernels() {
                let mut out = [[0u8; 20]; 16];
                if inputs.len() <= k.lanes() {
                    hmac_sha1_lanes(k, &inputs, &mut out);
                    prop_assert_eq!(&out[..inputs.len()], &want[..], "{:?}", k);
                }
                let mut out = [[0u8; 20]; 16];
                hmac_sha1_batch(k, &inputs, &mut out);
                prop_assert_eq!(&out[..inputs.len()], &want[..], "batch {:?}", k);
            }
        }

        /// Equal-length batches, the engine's case: same length in every lane.
        #[test]
        fn equal_lengths_match_reference(n in 1usize..=16, len in 0usize..=1500, seed: u8) {
            let keys: Vec<HmacState> = (0..n).map(|l| HmacState::new(&[seed ^ l as u8; 20])).collect();
            let msg: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed).collect();
            let roc = [0, 0, 1, seed];
            let inputs: Vec<MacInput> =
                keys.iter().map(|k| MacInput { key: k, a: &msg, b: &roc }).collect();
            for k in kernels() {
                let mut out = [[0u8; 20]; 16];
                hmac_sha1_batch(k, &inputs, &mut out);
                for (l, got) in out.iter().enumerate().take(n) {
                    prop_assert_eq!(*got, reference(&[seed ^ l as u8; 20], &msg, &roc));
                }
            }
        }
    }
}
