//! Dependency Descriptor tests: the scalability shapes of the AV1 RTP specification's
//! examples (L1T3, L3T3, K-SVC) written bit by bit as the specification lays them out, a
//! descriptor captured from Chromium, the active-targets rewrite, and malformed input.

use super::*;
use Dti::{Discardable as D, NotPresent as N, Required as R, Switch as S};

/// A template for the test encoder: layers, DTIs, fdiffs, chain fdiffs.
struct T {
    s: u8,
    t: u8,
    dtis: &'static [Dti],
    fdiffs: &'static [u8],
    chains: &'static [u8],
}

/// The test encoder: the specification's syntax (A.2, A.8) written field by field.
struct Enc {
    bits: Vec<bool>,
}

impl Enc {
    fn new() -> Enc {
        Enc { bits: Vec::new() }
    }
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
            let e = v + m;
            self.f(e >> 1, w - 1);
            self.f(e & 1, 1);
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

struct Shape {
    offset: u8,
    dts: u8,
    templates: &'static [T],
    chains: u8,
    protected_by: &'static [u8],
    resolutions: &'static [(u16, u16)],
}

/// A key frame's first packet: mandatory fields, flags, structure, nothing custom.
fn with_structure(shape: &Shape, template: u8, frame: u16) -> Vec<u8> {
    let mut e = Enc::new();
    e.f(1, 1); // start of frame
    e.f(0, 1);
    e.f(u32::from(template), 6);
    e.f(u32::from(frame), 16);
    e.f(0b10000, 5); // structure present, nothing else
    e.f(u32::from(shape.offset), 6);
    e.f(u32::from(shape.dts) - 1, 5);
    let ts = shape.templates;
    for (i, t) in ts.iter().enumerate() {
        let idc = match ts.get(i + 1) {
            None => 3,
            Some(n) if n.s == t.s && n.t == t.t => 0,
            Some(n) if n.s == t.s => 1,
            Some(_) => 2,
        };
        e.f(idc, 2);
    }
    for t in ts {
        for d in t.dtis {
            e.f(*d as u32, 2);
        }
    }
    for t in ts {
        for f in t.fdiffs {
            e.f(1, 1);
            e.f(u32::from(*f) - 1, 4);
        }
        e.f(0, 1);
    }
    e.ns(u32::from(shape.dts) + 1, u32::from(shape.chains));
    if shape.chains > 0 {
        for p in shape.protected_by {
            e.ns(u32::from(shape.chains), u32::from(*p));
        }
        for t in ts {
            for c in t.chains {
                e.f(u32::from(*c), 4);
            }
        }
    }
    e.f(u32::from(!shape.resolutions.is_empty()), 1);
    for (w, h) in shape.resolutions {
        e.f(u32::from(*w) - 1, 16);
        e.f(u32::from(*h) - 1, 16);
    }
    e.bytes()
}

fn mandatory(start: bool, end: bool, template: u8, frame: u16) -> Vec<u8> {
    let b0 = (u8::from(start) << 7) | (u8::from(end) << 6) | template;
    let f = frame.to_be_bytes();
    vec![b0, f[0], f[1]]
}

/// L1T3 (the specification's example of one spatial layer, three temporal layers): three
/// decode targets (30, 15 and 7.5 fps), one chain over the T0 frames.
const L1T3: Shape = Shape {
    offset: 0,
    dts: 3,
    templates: &[
        T {
            s: 0,
            t: 0,
            dtis: &[S, S, S],
            fdiffs: &[],
            chains: &[0],
        },
        T {
            s: 0,
            t: 0,
            dtis: &[S, S, S],
            fdiffs: &[4],
            chains: &[4],
        },
        T {
            s: 0,
            t: 1,
            dtis: &[N, D, R],
            fdiffs: &[2],
            chains: &[2],
        },
        T {
            s: 0,
            t: 2,
            dtis: &[N, N, D],
            fdiffs: &[1],
            chains: &[1],
        },
        T {
            s: 0,
            t: 2,
            dtis: &[N, N, D],
            fdiffs: &[1],
            chains: &[3],
        },
    ],
    chains: 1,
    protected_by: &[0, 0, 0],
    resolutions: &[],
};

/// L3T3: three spatial layers each referencing the one below, three temporal layers; nine
/// decode targets (spatial * 3 + temporal), one chain per spatial layer.
const L3T3: Shape = Shape {
    offset: 5,
    dts: 9,
    templates: &[
        // S0
        T {
            s: 0,
            t: 0,
            dtis: &[S, S, S, S, S, S, S, S, S],
            fdiffs: &[],
            chains: &[0, 0, 0],
        },
        T {
            s: 0,
            t: 0,
            dtis: &[S, R, R, R, R, R, R, R, R],
            fdiffs: &[4],
            chains: &[4, 3, 2],
        },
        T {
            s: 0,
            t: 1,
            dtis: &[N, D, R, N, R, R, N, R, R],
            fdiffs: &[2],
            chains: &[2, 1, 6],
        },
        T {
            s: 0,
            t: 2,
            dtis: &[N, N, D, N, N, R, N, N, R],
            fdiffs: &[1],
            chains: &[1, 6, 5],
        },
        // S1
        T {
            s: 1,
            t: 0,
            dtis: &[N, N, N, S, S, S, S, S, S],
            fdiffs: &[1],
            chains: &[1, 0, 0],
        },
        T {
            s: 1,
            t: 0,
            dtis: &[N, N, N, S, R, R, R, R, R],
            fdiffs: &[4, 1],
            chains: &[5, 4, 3],
        },
        T {
            s: 1,
            t: 1,
            dtis: &[N, N, N, N, D, R, N, R, R],
            fdiffs: &[2, 1],
            chains: &[3, 2, 1],
        },
        T {
            s: 1,
            t: 2,
            dtis: &[N, N, N, N, N, D, N, N, R],
            fdiffs: &[1, 1],
            chains: &[2, 1, 6],
        },
        // S2
        T {
            s: 2,
            t: 0,
            dtis: &[N, N, N, N, N, N, S, S, S],
            fdiffs: &[1],
            chains: &[2, 1, 0],
        },
        T {
            s: 2,
            t: 0,
            dtis: &[N, N, N, N, N, N, S, R, R],
            fdiffs: &[4, 1],
            chains: &[6, 5, 4],
        },
        T {
            s: 2,
            t: 1,
            dtis: &[N, N, N, N, N, N, N, D, R],
            fdiffs: &[2, 1],
            chains: &[4, 3, 2],
        },
        T {
            s: 2,
            t: 2,
            dtis: &[N, N, N, N, N, N, N, N, D],
            fdiffs: &[1, 1],
            chains: &[3, 2, 1],
        },
    ],
    chains: 3,
    protected_by: &[0, 0, 0, 1, 1, 1, 2, 2, 2],
    resolutions: &[(320, 180), (640, 360), (1280, 720)],
};

/// K-SVC (L2T2_KEY): the spatial layers depend on each other only in the key frame; after
/// it each layer references its own previous frame. Two chains, one per spatial layer.
const L2T2_KEY: Shape = Shape {
    offset: 63,
    dts: 4,
    templates: &[
        T {
            s: 0,
            t: 0,
            dtis: &[S, S, S, S],
            fdiffs: &[],
            chains: &[0, 0],
        },
        T {
            s: 0,
            t: 0,
            dtis: &[S, S, N, N],
            fdiffs: &[4],
            chains: &[4, 3],
        },
        T {
            s: 0,
            t: 1,
            dtis: &[N, D, N, N],
            fdiffs: &[2],
            chains: &[2, 1],
        },
        T {
            s: 1,
            t: 0,
            dtis: &[N, N, S, S],
            fdiffs: &[1],
            chains: &[1, 0],
        },
        T {
            s: 1,
            t: 0,
            dtis: &[N, N, S, S],
            fdiffs: &[4],
            chains: &[1, 4],
        },
        T {
            s: 1,
            t: 1,
            dtis: &[N, N, N, D],
            fdiffs: &[2],
            chains: &[3, 2],
        },
    ],
    chains: 2,
    protected_by: &[0, 0, 1, 1],
    resolutions: &[(640, 360), (1280, 720)],
};

fn structure_of(shape: &Shape) -> Structure {
    let mut s = Structure::default();
    let b = with_structure(shape, shape.offset, 100);
    let f = parse(&b, None, &mut s).expect("structure parses");
    assert!(f.structure);
    s
}

fn check_shape(shape: &Shape) {
    let s = structure_of(shape);
    assert_eq!(s.template_id_offset, shape.offset);
    assert_eq!(s.decode_targets, shape.dts);
    assert_eq!(usize::from(s.template_count), shape.templates.len());
    assert_eq!(s.chain_count, shape.chains);
    for (i, t) in shape.templates.iter().enumerate() {
        let got = &s.templates[i];
        assert_eq!(
            (got.spatial, got.temporal),
            (t.s, t.t),
            "template {i} layers"
        );
        for (dt, d) in t.dtis.iter().enumerate() {
            assert_eq!(
                Dti::from_bits(got.dtis >> (2 * dt)),
                *d,
                "template {i} dt {dt}"
            );
        }
        assert_eq!(&got.fdiffs[..usize::from(got.fdiff_count)], t.fdiffs);
        assert_eq!(&got.chain_fdiffs[..usize::from(s.chain_count)], t.chains);
    }
    for (dt, p) in shape.protected_by.iter().enumerate() {
        assert_eq!(s.protected_by[dt], *p);
    }
    match s.resolutions {
        Some(r) => assert_eq!(&r[..shape.resolutions.len()], shape.resolutions),
        None => assert!(shape.resolutions.is_empty()),
    }
}

#[test]
fn l1t3_structure_and_frames() {
    check_shape(&L1T3);
    let s = structure_of(&L1T3);
    assert_eq!((s.max_spatial, s.max_temporal), (0, 2));
    // Decode target layers: DT0 = T0, DT1 = T1, DT2 = T2.
    assert_eq!(&s.target_temporal[..3], &[0, 1, 2]);
    assert_eq!(&s.target_spatial[..3], &[0, 0, 0]);
    // A T2 frame (template 3) without extended fields.
    let mut scratch = Structure::default();
    let f = parse(&mandatory(true, true, 3, 103), Some(&s), &mut scratch).unwrap();
    assert_eq!((f.spatial, f.temporal), (0, 2));
    assert_eq!(f.dti(0), N);
    assert_eq!(f.dti(2), D);
    assert_eq!(f.references().collect::<Vec<_>>(), vec![102]);
    assert_eq!(f.chain_previous(0), Some(102));
    assert_eq!(f.active_targets, None);
    assert!(!f.structure);
}

#[test]
fn l3t3_structure_layers_chains_resolutions() {
    check_shape(&L3T3);
    let s = structure_of(&L3T3);
    assert_eq!((s.max_spatial, s.max_temporal), (2, 2));
    for dt in 0..9u8 {
        assert_eq!(s.target_spatial[usize::from(dt)], dt / 3);
        assert_eq!(s.target_temporal[usize::from(dt)], dt % 3);
    }
    assert_eq!(s.all_targets(), 0x1FF);
    // The template id is relative to the offset: id 5 + 9 names template 9 (S2T0).
    let mut scratch = Structure::default();
    let f = parse(&mandatory(true, false, 14, 7), Some(&s), &mut scratch).unwrap();
    assert_eq!((f.spatial, f.temporal), (2, 0));
    assert_eq!(f.references().collect::<Vec<_>>(), vec![3, 6]);
    // Ids wrap modulo 64: offset 5, id 4 would be index 63, beyond the templates.
    assert_eq!(
        parse(&mandatory(true, false, 4, 7), Some(&s), &mut scratch),
        Err(DdError::UnknownTemplate(4))
    );
}

#[test]
fn k_svc_structure() {
    check_shape(&L2T2_KEY);
    let s = structure_of(&L2T2_KEY);
    // Offset 63: template id 63 is index 0, id 0 index 1, id 1 index 2 (S0T1), id 2
    // index 3 (S1T0).
    let mut scratch = Structure::default();
    let f = parse(&mandatory(true, true, 1, 9), Some(&s), &mut scratch).unwrap();
    assert_eq!((f.spatial, f.temporal), (0, 1));
    let f = parse(&mandatory(true, true, 2, 9), Some(&s), &mut scratch).unwrap();
    assert_eq!((f.spatial, f.temporal), (1, 0));
    assert_eq!(&s.target_spatial[..4], &[0, 0, 1, 1]);
    assert_eq!(&s.target_temporal[..4], &[0, 1, 0, 1]);
}

#[test]
fn custom_fields_override_the_template() {
    let s = structure_of(&L1T3);
    let mut e = Enc::new();
    e.f(0b10_000010, 8); // start, template 2
    e.f(500, 16);
    e.f(0b01111, 5); // mask, custom dtis, fdiffs, chains
    e.f(0b011, 3); // active: DT0, DT1
    for d in [R, R, N] {
        e.f(d as u32, 2);
    }
    e.f(1, 2); // one 4-bit fdiff
    e.f(5, 4);
    e.f(3, 2); // one 12-bit fdiff
    e.f(299, 12);
    e.f(0, 2);
    e.f(7, 8); // chain 0
    let b = e.bytes();
    let mut scratch = Structure::default();
    let f = parse(&b, Some(&s), &mut scratch).unwrap();
    assert_eq!(f.active_targets, Some(0b011));
    assert_eq!((f.dti(0), f.dti(1), f.dti(2)), (R, R, N));
    assert_eq!(f.references().collect::<Vec<_>>(), vec![494, 200]);
    assert_eq!(f.chain_previous(0), Some(493));
}

#[test]
fn chromium_capture_parses() {
    // A key frame's first packet and later packets captured from Chromium sending L3T3 AV1.
    let hex = [
        "c1017280081485214eafffaaaa863cf0430c10c302afc0aaa0063c00430010c002a000a80006000040001d954926e082b04a0941b820ac1282503157f974000ca864330e222222eca8655304224230eca877530077004200ef008601df010d",
        "86017340fc",
        "46017340fc",
        "c3017540fc",
        "860173",
        "8b0174",
        "c30175",
    ];
    let mut known: Option<Structure> = None;
    for h in hex {
        let b: Vec<u8> = (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect();
        let mut new = Structure::default();
        let f = parse(&b, known.as_ref(), &mut new).unwrap_or_else(|e| panic!("{h}: {e}"));
        if f.structure {
            assert_eq!(new.max_spatial, 2);
            assert_eq!(new.max_temporal, 2);
            assert_eq!(new.decode_targets, 9);
            assert_eq!(f.active_targets, Some(0x1FF));
            let r = new.resolutions.expect("resolutions");
            assert_eq!(r[2].0, r[0].0 * 4);
            known = Some(new);
        }
    }
}

#[test]
fn active_targets_written_into_every_form() {
    let s = structure_of(&L3T3);
    let key = with_structure(&L3T3, 5, 100);
    let plain = mandatory(false, true, 6, 101);
    let mut custom = Enc::new();
    custom.f(0b01_000110, 8);
    custom.f(102, 16);
    custom.f(0b01010, 5); // mask present, custom fdiffs
    custom.f(0x1FF, 9);
    custom.f(1, 2);
    custom.f(2, 4);
    custom.f(0, 2);
    let custom = custom.bytes();
    for src in [&key, &plain, &custom] {
        let mut scratch = Structure::default();
        let before = parse(src, Some(&s), &mut scratch).unwrap();
        let mut out = [0u8; MAX_LEN];
        let n = write_active_targets(src, &before, 0b000_000_111, &mut out).unwrap();
        let mut scratch2 = Structure::default();
        let after = parse(&out[..n], Some(&s), &mut scratch2).unwrap();
        assert_eq!(after.active_targets, Some(0b111));
        assert_eq!(after.frame_number, before.frame_number);
        assert_eq!(after.dtis, before.dtis);
        assert_eq!(after.fdiffs, before.fdiffs);
        assert_eq!(after.fdiff_count, before.fdiff_count);
        assert_eq!(after.chain_fdiffs, before.chain_fdiffs);
        assert_eq!(after.structure, before.structure);
        if before.structure {
            assert_eq!(scratch2, scratch);
        }
    }
}

#[test]
fn malformed_descriptors_are_refused() {
    let s = structure_of(&L1T3);
    let mut scratch = Structure::default();
    // Shorter than the mandatory fields.
    assert_eq!(
        parse(&[0x80, 0], Some(&s), &mut scratch),
        Err(DdError::Truncated)
    );
    // No structure known.
    assert_eq!(
        parse(&mandatory(true, true, 0, 1), None, &mut scratch),
        Err(DdError::NoStructure)
    );
    // A structure cut short.
    let key = with_structure(&L3T3, 5, 1);
    for cut in 4..key.len() - 1 {
        assert!(
            parse(&key[..cut], None, &mut scratch).is_err(),
            "cut at {cut}"
        );
    }
    // Longer than any element.
    assert_eq!(
        parse(&[0u8; 256], Some(&s), &mut scratch),
        Err(DdError::TooLong(256))
    );
    // Too many temporal layers: next_layer_idc 1 four times.
    let mut e = Enc::new();
    e.f(0x80, 8);
    e.f(0, 16);
    e.f(0b10000, 5);
    e.f(0, 6);
    e.f(0, 5);
    for _ in 0..4 {
        e.f(1, 2);
    }
    e.f(3, 2);
    e.f(0, 32);
    assert_eq!(
        parse(&e.bytes(), None, &mut scratch),
        Err(DdError::TooManyLayers)
    );
    // Too many templates: 64 of one layer, then more.
    let mut e = Enc::new();
    e.f(0x80, 8);
    e.f(0, 16);
    e.f(0b10000, 5);
    e.f(0, 6);
    e.f(0, 5);
    for _ in 0..70 {
        e.f(0, 2);
    }
    assert_eq!(
        parse(&e.bytes(), None, &mut scratch),
        Err(DdError::TooManyTemplates)
    );
    // Too many custom fdiffs.
    let mut e = Enc::new();
    e.f(0x80, 8);
    e.f(0, 16);
    e.f(0b00010, 5);
    for _ in 0..9 {
        e.f(1, 2);
        e.f(0, 4);
    }
    e.f(0, 2);
    assert_eq!(
        parse(&e.bytes(), Some(&s), &mut scratch),
        Err(DdError::TooManyFdiffs)
    );
}

#[test]
fn any_bytes_parse_without_panic() {
    // A cheap exhaustive-ish sweep; the fuzz target covers the rest.
    let s = structure_of(&L3T3);
    let mut scratch = Structure::default();
    let mut x = 0x1234_5678u32;
    for len in 0..64 {
        for _ in 0..200 {
            let b: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            if let Ok(f) = parse(&b, Some(&s), &mut scratch) {
                let mut out = [0u8; MAX_LEN];
                let _ = write_active_targets(&b, &f, 1, &mut out);
            }
        }
    }
}

proptest::proptest! {
    /// The packed mask of decode targets a frame is part of agrees with its indications read
    /// one by one.
    #[test]
    fn present_targets_agree_with_the_indications(dtis in proptest::prelude::any::<u64>()) {
        let f = Frame { dtis, ..parse(&mandatory(true, true, 0, 0), Some(&one_target()), &mut Structure::default()).unwrap() };
        let mut want = 0u32;
        for dt in 0..32u8 {
            if f.dti(dt) != Dti::NotPresent {
                want |= 1 << dt;
            }
        }
        proptest::prop_assert_eq!(f.present_targets(), want);
    }
}

/// A structure of one decode target and one template.
fn one_target() -> Structure {
    let mut s = Structure {
        decode_targets: 1,
        template_count: 1,
        ..Structure::default()
    };
    s.templates[0].dtis = Dti::Switch as u64;
    s
}
