//! DTLS: iterate records and the handshake fragments inside each.
#![no_main]
#![deny(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use contract::wire::dtls::{records, starts_client_hello};

fuzz_target!(|data: &[u8]| {
    for rec in records(data) {
        let Ok(rec) = rec else { break };
        let _ = (rec.kind(), rec.version, rec.epoch);
        assert!(rec.sequence < 1 << 48);
        for hs in rec.handshakes() {
            let Ok(hs) = hs else { break };
            assert!(hs.fragment_offset + hs.fragment_length <= hs.length);
            assert_eq!(hs.body.len(), hs.fragment_length as usize);
            let _ = (hs.is_client_hello(), hs.is_complete(), hs.message_seq);
        }
    }
    let _ = starts_client_hello(data);
});
