//! Dependency Descriptor: the input is a run of descriptors, each a length byte and that many
//! bytes, read in order as one stream's packets (a structure a descriptor carries resolves the
//! ones after it). Every descriptor that parses is re-written with an active decode targets
//! mask, and the re-written one must parse to the same frame with that mask.
#![no_main]
#![deny(unsafe_code)]

use contract::wire::dd::{self, Structure, MAX_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut known: Option<Box<Structure>> = None;
    let mut new = Box::<Structure>::default();
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        let (b, next) = tail.split_at(n);
        rest = next;
        let Ok(f) = dd::parse(b, known.as_deref(), &mut new) else {
            continue;
        };
        if f.structure {
            known = Some(new.clone());
        }
        assert!(usize::from(f.fdiff_count) <= dd::MAX_FDIFFS);
        let _ = (f.references().count(), f.dti(0), f.chain_previous(0));
        let mask = u32::from(f.frame_number) | 1;
        let mut out = [0u8; MAX_LEN];
        if let Ok(len) = dd::write_active_targets(b, &f, mask, &mut out) {
            let mut again = Box::<Structure>::default();
            let g = dd::parse(&out[..len], known.as_deref(), &mut again)
                .expect("a re-written descriptor parses");
            assert_eq!(g.frame_number, f.frame_number);
            assert_eq!((g.spatial, g.temporal, g.dtis), (f.spatial, f.temporal, f.dtis));
            assert_eq!(g.fdiffs, f.fdiffs);
            assert_eq!(g.chain_fdiffs, f.chain_fdiffs);
            let n_dt = if f.structure { new.decode_targets } else { known.as_ref().map_or(0, |k| k.decode_targets) };
            let want = if n_dt >= 32 { mask } else { mask & ((1u32 << n_dt) - 1) };
            assert_eq!(g.active_targets, Some(want));
        }
    }
});
