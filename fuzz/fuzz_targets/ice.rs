//! ICE-lite: `IceAgent::handle_stun` with two registered sessions. Either the raw input is the
//! datagram (flag bit 7), or the input drives a Binding request built with `StunWriter`:
//! right or wrong USERNAME, attributes from the input, MESSAGE-INTEGRITY under the right or a
//! wrong password, FINGERPRINT or none, and an optional bit flip after sealing; this reaches
//! the authenticated paths that random bytes never would. Invariants: every datagram bumps
//! exactly one outcome counter; every response parses and carries a valid FINGERPRINT; a
//! success response only follows a request whose integrity verifies under a registered
//! password.
#![no_main]
#![deny(unsafe_code)]

use control::ice::{IceAgent, IceCounters};
use libfuzzer_sys::fuzz_target;
use contract::wire::stun::{message_type, Class, StunMessage, StunWriter, METHOD_BINDING};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const PWD1: &str = "sluicepasswordsluicepass";
const PWD2: &str = "anotherpasswordanotherpw";

fn outcomes(c: &IceCounters) -> u64 {
    c.success
        + c.bad_request
        + c.unauthenticated
        + c.unknown_attribute
        + c.role_conflict
        + c.discarded
}

fn build(data: &[u8], out: &mut [u8]) -> Option<usize> {
    let (&flags, rest) = data.split_first()?;
    let txid: [u8; 12] = rest.get(..12)?.try_into().ok()?;
    let rest = &rest[12..];
    let mt = if flags & 0x40 == 0 {
        message_type(METHOD_BINDING, Class::Request)
    } else {
        message_type(METHOD_BINDING, Class::Indication)
    };
    let mut w = StunWriter::new(out, mt, &txid).ok()?;
    match flags & 3 {
        0 => w.username(b"ufrag1:remote1").ok()?,
        1 => w.username(b"ufrag2:remote2").ok()?,
        2 => w.username(b"ufrag1:remote2").ok()?,
        _ => {}
    }
    // Attributes: (type hi, type lo, len, value…) records.
    let mut r = rest;
    while r.len() >= 3 {
        let typ = u16::from_be_bytes([r[0], r[1]]);
        let len = usize::from(r[2]).min(r.len() - 3);
        let _ = w.attribute(typ, &r[3..3 + len]);
        r = &r[3 + len..];
    }
    let key = match (flags >> 2) & 3 {
        0 => Some(PWD1),
        1 => Some(PWD2),
        2 => Some("wrongpasswordwrongpassw"),
        _ => None,
    };
    if let Some(k) = key {
        let _ = w.message_integrity(k.as_bytes());
    }
    if flags & 0x10 == 0 {
        let _ = w.fingerprint();
    }
    Some(w.len())
}

fuzz_target!(|data: &[u8]| {
    let Some(&flags) = data.first() else {
        return;
    };
    let now = Instant::now();
    let mut agent = IceAgent::new(Duration::from_secs(30), 4);
    agent
        .add_credentials(1, "ufrag1", PWD1, "remote1", None)
        .expect("valid credentials");
    agent
        .add_credentials(2, "ufrag2", PWD2, "remote2", None)
        .expect("valid credentials");
    let peers: [SocketAddr; 2] = [
        "192.0.2.10:4000".parse().expect("literal address"),
        "[2001:db8::10]:4000".parse().expect("literal address"),
    ];
    let mut msg = [0u8; 1500];
    let len = if flags & 0x80 != 0 {
        let n = (data.len() - 1).min(msg.len());
        msg[..n].copy_from_slice(&data[1..1 + n]);
        n
    } else {
        let Some(n) = build(data, &mut msg) else {
            return;
        };
        if flags & 0x20 != 0 && n > 0 {
            // Flip one bit chosen by the input after sealing.
            let bit = usize::from(*data.last().expect("non-empty")) * 11 % (n * 8);
            msg[bit / 8] ^= 1 << (bit % 8);
        }
        n
    };
    let mut out = [0u8; 1500];
    for peer in &peers {
        let before = agent.counters();
        let resp = agent.handle_stun(now, *peer, &msg[..len], &mut out);
        let after = agent.counters();
        assert_eq!(
            outcomes(&after),
            outcomes(&before) + 1,
            "one outcome per datagram"
        );
        if let Some(n) = resp {
            let r = StunMessage::parse(&out[..n]).expect("our response parses");
            r.verify_fingerprint()
                .expect("our response has a valid FINGERPRINT");
            if after.success > before.success {
                let req = StunMessage::parse(&msg[..len]).expect("answered request parses");
                assert!(
                    req.verify_integrity(PWD1.as_bytes()).is_ok()
                        || req.verify_integrity(PWD2.as_bytes()).is_ok(),
                    "success without a valid MESSAGE-INTEGRITY"
                );
            }
        }
        let _ = (agent.poll_event(), agent.nominated(1), agent.nominated(2));
    }
    agent.handle_timeout(now + Duration::from_secs(60));
    while agent.poll_event().is_some() {}
});
