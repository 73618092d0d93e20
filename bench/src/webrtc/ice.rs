//! ICE for one bench endpoint (RFC 8445), as the controlling full agent with one local host
//! candidate: connectivity checks towards the server's candidates (the second one nominating
//! with USE-CANDIDATE), answers to the server's own checks (a full agent such as Janus checks
//! too), and consent refreshes (RFC 7675) while media flows. STUN bytes through
//! `contract::wire::stun`.
//!
//! Owns: credentials, transaction ids, the STUN messages. Pure: no I/O, no clock.

use contract::wire::ice;
use contract::wire::stun::{self, Class, StunMessage, StunWriter, METHOD_BINDING};
use rand::Rng;
use std::net::SocketAddr;

/// Our candidate's priority (RFC 8445 §5.1.2.1: host, local preference 65535, component 1).
pub const PRIORITY: u32 = (126 << 24) | (65535 << 8) | 255;
/// Longest STUN message the bench builds.
pub const MAX_STUN: usize = 256;

/// An ICE username fragment and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub ufrag: String,
    pub pwd: String,
}

impl Credentials {
    /// Fresh random credentials (8 and 24 characters of the ice-char set, RFC 8839 §5.4).
    pub fn random() -> Credentials {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::thread_rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
                .collect()
        };
        Credentials {
            ufrag: pick(8),
            pwd: pick(24),
        }
    }
}

/// Why a STUN exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IceError {
    #[error("building a STUN message: {0:?}")]
    Build(stun::StunError),
    #[error("the server refused our check with STUN error {0}")]
    Refused(u16),
}

/// A connectivity check (or consent refresh) from us to the peer: controlling (nominating
/// when `nominate`), or controlled (when the server offered and so controls).
pub fn check(
    out: &mut [u8],
    tid: &[u8; 12],
    local: &Credentials,
    remote: &Credentials,
    tie_breaker: u64,
    controlling: bool,
    nominate: bool,
) -> Result<usize, IceError> {
    let user = format!("{}:{}", remote.ufrag, local.ufrag);
    let mut build = || -> Result<usize, stun::StunError> {
        let mut w = StunWriter::new(out, stun::message_type(METHOD_BINDING, Class::Request), tid)?;
        w.username(user.as_bytes())?;
        w.priority(PRIORITY)?;
        if controlling {
            w.ice_controlling(tie_breaker)?;
        } else {
            w.ice_controlled(tie_breaker)?;
        }
        if nominate && controlling {
            w.use_candidate()?;
        }
        w.message_integrity(remote.pwd.as_bytes())?;
        w.fingerprint()?;
        Ok(w.finish())
    };
    build().map_err(IceError::Build)
}

/// A fresh transaction id.
pub fn transaction_id() -> [u8; 12] {
    rand::random()
}

/// What a received STUN datagram is to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stun {
    /// The success response to transaction `tid`, integrity checked with the peer's password.
    Success([u8; 12]),
    /// An error response to `tid` with its code.
    Error([u8; 12], u16),
    /// A valid check from the peer, answered into the output buffer (length given); whether
    /// it nominated (USE-CANDIDATE).
    Answered(usize, bool),
    /// Anything else (indications, bad integrity, other ufrags): ignored.
    Ignored,
}

/// Classify `data` from `from`; a valid check from the peer is answered into `out`.
pub fn handle(
    data: &[u8],
    from: SocketAddr,
    local: &Credentials,
    remote: &Credentials,
    out: &mut [u8],
) -> Stun {
    let Ok(msg) = StunMessage::parse(data) else {
        return Stun::Ignored;
    };
    if msg.method() != METHOD_BINDING {
        return Stun::Ignored;
    }
    match msg.class() {
        Class::SuccessResponse => {
            if msg.verify_integrity(remote.pwd.as_bytes()).is_ok() {
                Stun::Success(msg.transaction_id())
            } else {
                Stun::Ignored
            }
        }
        Class::ErrorResponse => {
            let code = msg.error_code().map_or(0, |e| e.code);
            Stun::Error(msg.transaction_id(), code)
        }
        Class::Request => answer(data, from, local, remote, out)
            .map_or(Stun::Ignored, |n| Stun::Answered(n, msg.use_candidate())),
        Class::Indication => Stun::Ignored,
    }
}

/// Answer the peer's check: USERNAME `our-ufrag:their-ufrag`, MESSAGE-INTEGRITY with our
/// password; success with XOR-MAPPED-ADDRESS (RFC 8445 §7.3). Roles are fixed by who offered
/// (RFC 8445 §6.1.1), so no conflict is resolved here.
fn answer(
    data: &[u8],
    from: SocketAddr,
    local: &Credentials,
    remote: &Credentials,
    out: &mut [u8],
) -> Option<usize> {
    let c = ice::parse_check(data).ok()?;
    if c.local_ufrag != local.ufrag.as_bytes() || c.remote_ufrag != remote.ufrag.as_bytes() {
        return None;
    }
    c.msg.verify_integrity(local.pwd.as_bytes()).ok()?;
    let mut w = StunWriter::binding_success(out, &c.msg).ok()?;
    w.xor_mapped_address(from).ok()?;
    w.message_integrity(local.pwd.as_bytes()).ok()?;
    w.fingerprint().ok()?;
    Some(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_answered_both_ways() {
        let us = Credentials::random();
        let them = Credentials::random();
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let me: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let tid = transaction_id();
        let mut req = [0u8; MAX_STUN];
        let n = check(&mut req, &tid, &us, &them, 7, true, true).unwrap();
        let parsed = StunMessage::parse(&req[..n]).unwrap();
        assert!(parsed.use_candidate());
        assert_eq!(parsed.ice_controlling(), Some(7));
        // The peer, with the roles swapped, answers it.
        let mut resp = [0u8; MAX_STUN];
        let Stun::Answered(m, true) = handle(&req[..n], me, &them, &us, &mut resp) else {
            panic!("the peer did not answer");
        };
        assert_eq!(
            handle(&resp[..m], peer, &us, &them, &mut [0u8; MAX_STUN]),
            Stun::Success(tid)
        );
        // Wrong password: ignored.
        let other = Credentials::random();
        assert_eq!(
            handle(&resp[..m], peer, &us, &other, &mut [0u8; MAX_STUN]),
            Stun::Ignored
        );
        assert_eq!(handle(b"junk", peer, &us, &them, &mut resp), Stun::Ignored);
    }
}
