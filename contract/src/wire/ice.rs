//! ICE-lite answers to connectivity checks (RFC 8445 §7.3, RFC 8489 §6.3, §9.1.3), shared by
//! the relay, which answers checks itself from the credentials control publishes in shared
//! memory, and control's ICE agent, which answers the checks that change state (docs/ICE.md).
//! One implementation, so both give the same answer to the same check.
//!
//! Stateless: [`parse_check`] splits a datagram into a check and its USERNAME halves (or says
//! why it is none); the caller looks the ufrag up and verifies MESSAGE-INTEGRITY with the
//! session's password; [`answer`] then writes the response to an authenticated check. No
//! allocation, no panic on any input.

use super::stun::{self, attr, Class, StunError, StunMessage, StunWriter, METHOD_BINDING};
use std::net::SocketAddr;

/// Most unknown comprehension-required attributes listed in a 420 response.
pub const MAX_UNKNOWN: usize = 8;

/// A Binding request that carries what an ICE check must (RFC 8445 §7.2.2, RFC 8489 §9.1.3).
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    pub msg: StunMessage<'a>,
    /// USERNAME before the first `:`: the answering agent's ufrag.
    pub local_ufrag: &'a [u8],
    /// USERNAME after the first `:`: the checking agent's ufrag.
    pub remote_ufrag: &'a [u8],
}

/// Why a datagram is not a check to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCheck {
    /// Not a whole STUN message (RFC 8489 §5, §14): silently discarded.
    Malformed,
    /// No FINGERPRINT or a wrong one, not a Binding request: silently
    /// discarded (RFC 8489 §6.3; ICE mandates FINGERPRINT, RFC 8445 §7, so a missing or bad
    /// one means "not STUN", RFC 8489 §14.7). Indications need no answer.
    Discard,
    /// A Binding request without USERNAME or without (HMAC-SHA1) MESSAGE-INTEGRITY: RFC 8489
    /// §9.1.3 answers 400.
    MissingCredentials,
    /// USERNAME is not `ufrag:ufrag`: RFC 8489 §9.1.3 answers 401.
    BadUsername,
}

/// What an authenticated check was answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Binding success with XOR-MAPPED-ADDRESS (RFC 8445 §7.3.1.2).
    Success,
    /// 420: comprehension-required attributes this agent does not know (RFC 8489 §6.3.1).
    UnknownAttribute,
    /// 487: the peer claims the controlled role too (RFC 8445 §7.3.1.1).
    RoleConflict,
    /// 400: neither ICE-CONTROLLING nor ICE-CONTROLLED (RFC 8445 §7.1.3).
    BadRequest,
}

/// Parse `data` as an ICE connectivity check.
pub fn parse_check(data: &[u8]) -> Result<Check<'_>, NotCheck> {
    let c = parse_check_unfingerprinted(data)?;
    c.verify_fingerprint()?;
    Ok(c)
}

/// [`parse_check`] without the FINGERPRINT check (a CRC-32 over the message), for a caller
/// that first looks the ufrag up, so a flood naming no session costs no CRC; it must call
/// [`Check::verify_fingerprint`] before trusting the check.
pub fn parse_check_unfingerprinted(data: &[u8]) -> Result<Check<'_>, NotCheck> {
    let msg = StunMessage::parse(data).map_err(|_| NotCheck::Malformed)?;
    if msg.class() != Class::Request || msg.method() != METHOD_BINDING {
        return Err(NotCheck::Discard);
    }
    // ICE uses the HMAC-SHA1 MESSAGE-INTEGRITY (RFC 8445 §7.2.2); a request with only
    // MESSAGE-INTEGRITY-SHA256 lacks it.
    let (Some(user), Some(_)) = (msg.username(), msg.message_integrity()) else {
        return Err(NotCheck::MissingCredentials);
    };
    let colon = user
        .iter()
        .position(|&b| b == b':')
        .ok_or(NotCheck::BadUsername)?;
    Ok(Check {
        msg,
        local_ufrag: &user[..colon],
        remote_ufrag: &user[colon + 1..],
    })
}

impl Check<'_> {
    /// The FINGERPRINT every ICE check carries (RFC 8445 §7); without a valid one the
    /// message is not STUN (RFC 8489 §14.7) and is discarded.
    pub fn verify_fingerprint(&self) -> Result<(), NotCheck> {
        self.msg.verify_fingerprint().map_err(|_| NotCheck::Discard)
    }
}

/// Attributes an ICE-lite agent understands. A request carrying any other
/// comprehension-required attribute (type < 0x8000) is answered with 420 (RFC 8489 §6.3.1).
fn understood(typ: u16) -> bool {
    matches!(
        typ,
        attr::MAPPED_ADDRESS
            | attr::USERNAME
            | attr::MESSAGE_INTEGRITY
            | attr::ERROR_CODE
            | attr::UNKNOWN_ATTRIBUTES
            | attr::REALM
            | attr::NONCE
            | attr::MESSAGE_INTEGRITY_SHA256
            | attr::XOR_MAPPED_ADDRESS
            | attr::PRIORITY
            | attr::USE_CANDIDATE
    )
}

/// Answer a check whose USERNAME named a session and whose MESSAGE-INTEGRITY verified with
/// `key` (the session's local password), seen from `peer`: 420, 487, 400 or success, in the
/// order of docs/ICE.md "Processing a Binding request" steps 5–8. Every answer carries
/// MESSAGE-INTEGRITY with `key` (RFC 8489 §9.1.4) and FINGERPRINT. Writes into `out` and
/// returns the answer and its length; `Err` only when `out` is too small (128 bytes suffice).
pub fn answer(
    msg: &StunMessage<'_>,
    peer: SocketAddr,
    key: &[u8],
    out: &mut [u8],
) -> Result<(Answer, usize), StunError> {
    let mut unknown = [0u16; MAX_UNKNOWN];
    let mut n_unknown = 0;
    for a in msg.attributes() {
        if a.typ < 0x8000 && !understood(a.typ) && n_unknown < MAX_UNKNOWN {
            unknown[n_unknown] = a.typ;
            n_unknown += 1;
        }
    }
    if n_unknown > 0 {
        let n = error_response(
            out,
            msg,
            420,
            "Unknown Attribute",
            Some(key),
            &unknown[..n_unknown],
        )?;
        return Ok((Answer::UnknownAttribute, n));
    }
    // Roles (RFC 8445 §6.1.1): a lite agent is always controlled. A peer that claims the
    // controlled role too gets 487 (§7.3.1.1) — we cannot switch to controlling, so we act
    // as if our tie-breaker were the largest — and switches role on it (§7.2.5.1).
    if msg.ice_controlled().is_some() {
        let n = error_response(out, msg, 487, "Role Conflict", Some(key), &[])?;
        return Ok((Answer::RoleConflict, n));
    }
    if msg.ice_controlling().is_none() {
        let n = error_response(out, msg, 400, "Bad Request", Some(key), &[])?;
        return Ok((Answer::BadRequest, n));
    }
    let mut w = StunWriter::binding_success(out, msg)?;
    w.xor_mapped_address(peer)?;
    w.message_integrity(key)?;
    w.fingerprint()?;
    Ok((Answer::Success, w.finish()))
}

/// Binding error response with ERROR-CODE (RFC 8489 §14.8), UNKNOWN-ATTRIBUTES for 420
/// (§14.9), MESSAGE-INTEGRITY only for authenticated requests (`key`, §9.1.3), FINGERPRINT
/// always (RFC 8445 §7). At most [`MAX_UNKNOWN`] attributes are listed.
pub fn error_response(
    out: &mut [u8],
    req: &StunMessage<'_>,
    code: u16,
    reason: &str,
    key: Option<&[u8]>,
    unknown: &[u16],
) -> Result<usize, StunError> {
    let mut w = StunWriter::new(
        out,
        stun::message_type(METHOD_BINDING, Class::ErrorResponse),
        &req.transaction_id(),
    )?;
    w.error_code(code, reason)?;
    let unknown = &unknown[..unknown.len().min(MAX_UNKNOWN)];
    if !unknown.is_empty() {
        let mut v = [0u8; 2 * MAX_UNKNOWN];
        for (i, t) in unknown.iter().enumerate() {
            v[2 * i..2 * i + 2].copy_from_slice(&t.to_be_bytes());
        }
        w.attribute(attr::UNKNOWN_ATTRIBUTES, &v[..2 * unknown.len()])?;
    }
    if let Some(k) = key {
        w.message_integrity(k)?;
    }
    w.fingerprint()?;
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PWD: &[u8] = b"localpasswordlocalpassword0123";

    fn request(user: Option<&[u8]>, controlled: bool, extra: Option<u16>) -> Vec<u8> {
        let mut buf = [0u8; 256];
        let mut w = StunWriter::new(
            &mut buf,
            stun::message_type(METHOD_BINDING, Class::Request),
            &[3; 12],
        )
        .unwrap();
        if let Some(u) = user {
            w.username(u).unwrap();
        }
        if let Some(t) = extra {
            w.attribute(t, &[0; 4]).unwrap();
        }
        if controlled {
            w.ice_controlled(1).unwrap();
        } else {
            w.ice_controlling(1).unwrap();
        }
        w.message_integrity(PWD).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        buf[..n].to_vec()
    }

    #[test]
    fn parse_splits_username() {
        let b = request(Some(b"LoCa:ReMo"), false, None);
        let c = parse_check(&b).unwrap();
        assert_eq!(c.local_ufrag, b"LoCa");
        assert_eq!(c.remote_ufrag, b"ReMo");
        let b = request(Some(b"LoCaReMo"), false, None);
        assert_eq!(parse_check(&b).unwrap_err(), NotCheck::BadUsername);
        let b = request(None, false, None);
        assert_eq!(parse_check(&b).unwrap_err(), NotCheck::MissingCredentials);
        let mut b = request(Some(b"LoCa:ReMo"), false, None);
        let last = b.len() - 1;
        b[last] ^= 1;
        assert_eq!(parse_check(&b).unwrap_err(), NotCheck::Discard);
        assert!(parse_check_unfingerprinted(&b).is_ok());
        assert_eq!(parse_check(&[0, 1, 0]).unwrap_err(), NotCheck::Malformed);
    }

    #[test]
    fn answers() {
        let peer: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let mut out = [0u8; 128];
        let b = request(Some(b"LoCa:ReMo"), false, None);
        let c = parse_check(&b).unwrap();
        let (a, n) = answer(&c.msg, peer, PWD, &mut out).unwrap();
        assert_eq!(a, Answer::Success);
        let r = StunMessage::parse(&out[..n]).unwrap();
        assert_eq!(r.class(), Class::SuccessResponse);
        assert_eq!(r.transaction_id(), [3; 12]);
        assert_eq!(r.xor_mapped_address(), Some(peer));
        r.verify_integrity(PWD).unwrap();
        r.verify_fingerprint().unwrap();

        let b = request(Some(b"LoCa:ReMo"), true, None);
        let c = parse_check(&b).unwrap();
        let (a, n) = answer(&c.msg, peer, PWD, &mut out).unwrap();
        assert_eq!(a, Answer::RoleConflict);
        let r = StunMessage::parse(&out[..n]).unwrap();
        assert_eq!(r.error_code().unwrap().code, 487);
        r.verify_integrity(PWD).unwrap();

        let b = request(Some(b"LoCa:ReMo"), false, Some(0x7777));
        let c = parse_check(&b).unwrap();
        let (a, _) = answer(&c.msg, peer, PWD, &mut out).unwrap();
        assert_eq!(a, Answer::UnknownAttribute);

        assert!(answer(&c.msg, peer, PWD, &mut [0u8; 24]).is_err());
    }
}
