//! STUN: parse, read every attribute, verify integrity and fingerprint, then answer it with
//! the writer and check the answer parses and verifies; and the ICE-check path the relay
//! runs on every STUN datagram (`wire::ice`: parse, split USERNAME, answer).
#![no_main]
#![deny(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use contract::wire::ice;
use contract::wire::stun::{StunMessage, StunWriter};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = ice::parse_check_unfingerprinted(data) {
        assert!(c.local_ufrag.len() + c.remote_ufrag.len() < data.len());
        let _ = c.verify_fingerprint();
        let mut out = [0u8; 128];
        let peer = "192.0.2.1:9".parse().expect("literal");
        if let Ok((_, n)) = ice::answer(&c.msg, peer, b"key", &mut out) {
            let r = StunMessage::parse(&out[..n]).expect("answer parses");
            r.verify_integrity(b"key").expect("answer integrity verifies");
            r.verify_fingerprint().expect("answer fingerprint verifies");
        }
    }
    let Ok(m) = StunMessage::parse(data) else {
        return;
    };
    for a in m.attributes() {
        assert!(a.offset + 4 + a.value.len() <= data.len());
    }
    let _ = (
        m.method(),
        m.class(),
        m.transaction_id(),
        m.username_str(),
        m.software(),
    );
    let _ = (
        m.message_integrity(),
        m.has_message_integrity_sha256(),
        m.fingerprint(),
    );
    let _ = (
        m.priority(),
        m.use_candidate(),
        m.ice_controlling(),
        m.ice_controlled(),
    );
    let _ = (m.error_code(), m.xor_mapped_address());
    let _ = m.verify_integrity(m.username().unwrap_or(b"key"));
    let _ = m.verify_fingerprint();

    let mut out = [0u8; 600];
    let mut w = StunWriter::binding_success(&mut out, &m).expect("600 bytes hold a header");
    if let Some(u) = m.username() {
        let _ = w.username(u);
    }
    if let Some(a) = m.xor_mapped_address() {
        w.xor_mapped_address(a).expect("room for an address");
    }
    if let Some(e) = m.error_code() {
        let _ = w.error_code(e.code, "x");
    }
    w.message_integrity(b"secret").expect("room for integrity");
    w.fingerprint().expect("room for fingerprint");
    let n = w.finish();
    let r = StunMessage::parse(&out[..n]).expect("writer output parses");
    r.verify_integrity(b"secret")
        .expect("writer integrity verifies");
    r.verify_fingerprint().expect("writer fingerprint verifies");
    assert_eq!(r.transaction_id(), m.transaction_id());
    assert_eq!(r.xor_mapped_address(), m.xor_mapped_address());
});
