//! Relay ↔ control slow-path framing: `decode` any bytes; whatever decodes re-encodes, and the
//! re-encoded message decodes again to the same header and payload.
#![no_main]
#![deny(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use contract::slowpath::{decode, encode, MAX_MESSAGE};

fuzz_target!(|data: &[u8]| {
    let Ok((h, payload)) = decode(data) else {
        return;
    };
    assert!(payload.len() <= data.len());
    let mut out = vec![0u8; MAX_MESSAGE];
    let n = encode(&h, payload, &mut out).expect("a decoded message re-encodes");
    let (h2, p2) = decode(&out[..n]).expect("an encoded message decodes");
    assert_eq!(h, h2);
    assert_eq!(payload, p2);
});
