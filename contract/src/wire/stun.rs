//! STUN messages (RFC 8489) with the ICE attributes of RFC 8445 §16.
//!
//! Owns: the validated read-only view [`StunMessage`] with its attribute iterator and typed
//! accessors; short-term-credential MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) and
//! FINGERPRINT (CRC-32, §14.7) verification; and [`StunWriter`], which builds a message into
//! a caller buffer without allocating (control's ICE-lite answers binding requests with it).
//! May not touch: credentials storage, transactions and retransmission, sockets, the clock.
//!
//! ```text
//! |0 0|     STUN Message Type     |         Message Length        |
//! |                         Magic Cookie                          |
//! |                     Transaction ID (96 bits)                  |
//! attributes: Type(16) Length(16) Value(Length) padding to 32 bits
//! ```
//!
//! CRC-32 is a 1 KiB table built at compile time rather than a new dependency: STUN is the
//! slow path, and the table keeps the relay's dependency set as it is.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::{be16, be32, put16};

/// Length of the STUN header.
pub const HEADER_LEN: usize = 20;
/// The fixed magic cookie (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// XORed into the CRC-32 to form FINGERPRINT (RFC 8489 §14.7).
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Length of the MESSAGE-INTEGRITY value (HMAC-SHA1).
pub const INTEGRITY_LEN: usize = 20;
/// Maximum USERNAME length in bytes (RFC 8489 §14.3).
pub const MAX_USERNAME_LEN: usize = 513;

/// The Binding method (RFC 8489 §18.2).
pub const METHOD_BINDING: u16 = 0x001;

/// Attribute types used by Sluice (RFC 8489 §18.3, RFC 8445 §16.1).
pub mod attr {
    /// MAPPED-ADDRESS.
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY.
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// REALM.
    pub const REALM: u16 = 0x0014;
    /// NONCE.
    pub const NONCE: u16 = 0x0015;
    /// MESSAGE-INTEGRITY-SHA256.
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// PRIORITY (RFC 8445).
    pub const PRIORITY: u16 = 0x0024;
    /// USE-CANDIDATE (RFC 8445).
    pub const USE_CANDIDATE: u16 = 0x0025;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT.
    pub const FINGERPRINT: u16 = 0x8028;
    /// ICE-CONTROLLED (RFC 8445).
    pub const ICE_CONTROLLED: u16 = 0x8029;
    /// ICE-CONTROLLING (RFC 8445).
    pub const ICE_CONTROLLING: u16 = 0x802A;
}

/// Why bytes are not a valid STUN message, a check failed, or a message could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Fewer than 20 bytes.
    #[error("STUN message shorter than its header")]
    TooShort,
    /// The two most significant bits are not zero (RFC 8489 §5).
    #[error("not a STUN message (leading bits set)")]
    NotStun,
    /// The magic cookie is wrong.
    #[error("STUN magic cookie mismatch")]
    BadCookie,
    /// The length field is not a multiple of 4 or disagrees with the datagram length.
    #[error("STUN message length inconsistent")]
    BadLength,
    /// An attribute (with its padding) runs past the message.
    #[error("STUN attribute overruns the message")]
    AttributeOverrun,
    /// A known attribute has a malformed value.
    #[error("STUN attribute {0:#06x} malformed")]
    BadAttribute(u16),
    /// An attribute follows FINGERPRINT (RFC 8489 §14.7: it must be last).
    #[error("STUN FINGERPRINT is not the last attribute")]
    FingerprintNotLast,
    /// No MESSAGE-INTEGRITY to verify.
    #[error("STUN message has no MESSAGE-INTEGRITY")]
    NoIntegrity,
    /// MESSAGE-INTEGRITY did not verify with the key.
    #[error("STUN MESSAGE-INTEGRITY mismatch")]
    IntegrityMismatch,
    /// No FINGERPRINT to verify.
    #[error("STUN message has no FINGERPRINT")]
    NoFingerprint,
    /// FINGERPRINT did not match the message.
    #[error("STUN FINGERPRINT mismatch")]
    FingerprintMismatch,
    /// The writer's buffer is full.
    #[error("buffer too small for the STUN message")]
    BufferTooSmall,
    /// The writer was asked for an attribute after MESSAGE-INTEGRITY/FINGERPRINT, or a value
    /// that cannot be encoded (too long, or an error code outside 300–699).
    #[error("STUN attribute cannot be written here")]
    BadWrite,
}

/// Message class (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 0b00
    Request,
    /// 0b01
    Indication,
    /// 0b10
    SuccessResponse,
    /// 0b11
    ErrorResponse,
}

impl Class {
    const fn bits(self) -> u16 {
        match self {
            Class::Request => 0,
            Class::Indication => 1,
            Class::SuccessResponse => 2,
            Class::ErrorResponse => 3,
        }
    }
    fn from_bits(b: u16) -> Self {
        match b & 3 {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::SuccessResponse,
            _ => Class::ErrorResponse,
        }
    }
}

/// Builds the 14-bit message type from a 12-bit method and a class (RFC 8489 §5, figure 3:
/// class bits C1 and C0 sit at bits 8 and 4, between the method bits).
pub const fn message_type(method: u16, class: Class) -> u16 {
    let c = class.bits();
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 1) << 4)
        | ((c & 2) << 7)
}

/// Splits a message type into method and class.
pub fn split_message_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2);
    let class = ((t >> 4) & 1) | ((t >> 7) & 2);
    (method, Class::from_bits(class))
}

/// One attribute: type, value (padding excluded) and where its header starts in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    /// Attribute type.
    pub typ: u16,
    /// Value, without padding.
    pub value: &'a [u8],
    /// Offset of the attribute's 4-byte header from the start of the message.
    pub offset: usize,
}

/// Iterator over attributes; stops at the first malformed one (none in a parsed message).
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Attribute<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let typ = be16(self.msg, self.pos)?;
        let len = usize::from(be16(self.msg, self.pos + 2)?);
        let start = self.pos + 4;
        let value = self.msg.get(start..start + len)?;
        let offset = self.pos;
        // RFC 8489 §14: values are padded to a multiple of 4 bytes.
        self.pos = start + len.div_ceil(4) * 4;
        if self.pos > self.msg.len() {
            self.pos = self.msg.len();
            return None;
        }
        Some(Attribute { typ, value, offset })
    }
}

/// ERROR-CODE value (RFC 8489 §14.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode<'a> {
    /// Class × 100 + number (300–699).
    pub code: u16,
    /// UTF-8 reason phrase, as sent.
    pub reason: &'a [u8],
}

/// Position of an attribute in the MESSAGE-INTEGRITY / FINGERPRINT ordering rules.
fn integrity_rank(typ: u16) -> u8 {
    match typ {
        attr::MESSAGE_INTEGRITY => 1,
        attr::MESSAGE_INTEGRITY_SHA256 => 2,
        attr::FINGERPRINT => 3,
        _ => 0,
    }
}

fn check_attribute(a: &Attribute<'_>) -> Result<(), StunError> {
    let len = a.value.len();
    let ok = match a.typ {
        attr::MESSAGE_INTEGRITY => len == INTEGRITY_LEN,
        // RFC 8489 §14.6: 16 to 32 bytes, a multiple of 4.
        attr::MESSAGE_INTEGRITY_SHA256 => (16..=32).contains(&len) && len % 4 == 0,
        attr::FINGERPRINT | attr::PRIORITY => len == 4,
        attr::USE_CANDIDATE => len == 0,
        attr::ICE_CONTROLLED | attr::ICE_CONTROLLING => len == 8,
        attr::USERNAME => len <= MAX_USERNAME_LEN,
        attr::XOR_MAPPED_ADDRESS | attr::MAPPED_ADDRESS => match a.value.get(1) {
            Some(1) => len == 8,
            Some(2) => len == 20,
            _ => false,
        },
        // RFC 8489 §14.8: class 3–6, number 0–99.
        attr::ERROR_CODE => len >= 4 && (3..=6).contains(&(a.value[2] & 0x07)) && a.value[3] < 100,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(StunError::BadAttribute(a.typ))
    }
}

/// A validated STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StunMessage<'a> {
    buf: &'a [u8],
}

impl<'a> StunMessage<'a> {
    /// Parses one STUN message filling the whole datagram `buf`: header, cookie, length,
    /// every attribute in bounds, known attributes well-formed, FINGERPRINT last.
    pub fn parse(buf: &'a [u8]) -> Result<Self, StunError> {
        if buf.len() < HEADER_LEN {
            return Err(StunError::TooShort);
        }
        if buf[0] & 0xC0 != 0 {
            return Err(StunError::NotStun);
        }
        if be32(buf, 4) != Some(MAGIC_COOKIE) {
            return Err(StunError::BadCookie);
        }
        let len = usize::from(be16(buf, 2).unwrap_or(0));
        if len % 4 != 0 || HEADER_LEN + len != buf.len() {
            return Err(StunError::BadLength);
        }
        let msg = StunMessage { buf };
        let mut it = msg.attributes();
        let mut seen_fingerprint = false;
        for a in it.by_ref() {
            if seen_fingerprint {
                return Err(StunError::FingerprintNotLast);
            }
            check_attribute(&a)?;
            seen_fingerprint = a.typ == attr::FINGERPRINT;
        }
        if it.pos != buf.len() {
            return Err(StunError::AttributeOverrun);
        }
        Ok(msg)
    }

    /// The whole message.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
    /// The 14-bit message type.
    pub fn message_type(&self) -> u16 {
        be16(self.buf, 0).unwrap_or(0)
    }
    /// Method (12 bits).
    pub fn method(&self) -> u16 {
        split_message_type(self.message_type()).0
    }
    /// Class.
    pub fn class(&self) -> Class {
        split_message_type(self.message_type()).1
    }
    /// True for a Binding request.
    pub fn is_binding_request(&self) -> bool {
        self.message_type() == message_type(METHOD_BINDING, Class::Request)
    }
    /// The length field (bytes after the header).
    pub fn length(&self) -> u16 {
        be16(self.buf, 2).unwrap_or(0)
    }
    /// The 96-bit transaction id.
    pub fn transaction_id(&self) -> [u8; 12] {
        let mut t = [0; 12];
        if let Some(src) = self.buf.get(8..20) {
            t.copy_from_slice(src);
        }
        t
    }
    /// Every attribute, in order.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            msg: self.buf,
            pos: HEADER_LEN,
        }
    }

    /// The first attribute of type `typ` that counts: attributes after MESSAGE-INTEGRITY are
    /// ignored except MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, and after
    /// MESSAGE-INTEGRITY-SHA256 all but FINGERPRINT (RFC 8489 §14.5, §14.6).
    pub fn attribute(&self, typ: u16) -> Option<Attribute<'a>> {
        let mut floor = 0;
        for a in self.attributes() {
            let rank = integrity_rank(a.typ);
            if rank < floor {
                continue;
            }
            if a.typ == typ {
                return Some(a);
            }
            floor = match rank {
                1 => 2,
                2 => 3,
                _ => floor,
            };
        }
        None
    }

    /// USERNAME value.
    pub fn username(&self) -> Option<&'a [u8]> {
        self.attribute(attr::USERNAME).map(|a| a.value)
    }
    /// USERNAME as UTF-8 (`None` if absent or not UTF-8).
    pub fn username_str(&self) -> Option<&'a str> {
        core::str::from_utf8(self.username()?).ok()
    }
    /// SOFTWARE value.
    pub fn software(&self) -> Option<&'a [u8]> {
        self.attribute(attr::SOFTWARE).map(|a| a.value)
    }
    /// MESSAGE-INTEGRITY value.
    pub fn message_integrity(&self) -> Option<&'a [u8; INTEGRITY_LEN]> {
        self.attribute(attr::MESSAGE_INTEGRITY)
            .and_then(|a| a.value.try_into().ok())
    }
    /// True when MESSAGE-INTEGRITY-SHA256 is present (not verified here).
    pub fn has_message_integrity_sha256(&self) -> bool {
        self.attribute(attr::MESSAGE_INTEGRITY_SHA256).is_some()
    }
    /// FINGERPRINT value.
    pub fn fingerprint(&self) -> Option<u32> {
        self.attribute(attr::FINGERPRINT)
            .and_then(|a| be32(a.value, 0))
    }
    /// PRIORITY (RFC 8445 §7.1.1).
    pub fn priority(&self) -> Option<u32> {
        self.attribute(attr::PRIORITY)
            .and_then(|a| be32(a.value, 0))
    }
    /// USE-CANDIDATE present (RFC 8445 §7.1.2).
    pub fn use_candidate(&self) -> bool {
        self.attribute(attr::USE_CANDIDATE).is_some()
    }
    /// ICE-CONTROLLING tie-breaker (RFC 8445 §7.1.3).
    pub fn ice_controlling(&self) -> Option<u64> {
        self.attribute(attr::ICE_CONTROLLING)
            .and_then(|a| be64(a.value))
    }
    /// ICE-CONTROLLED tie-breaker (RFC 8445 §7.1.3).
    pub fn ice_controlled(&self) -> Option<u64> {
        self.attribute(attr::ICE_CONTROLLED)
            .and_then(|a| be64(a.value))
    }
    /// ERROR-CODE.
    pub fn error_code(&self) -> Option<ErrorCode<'a>> {
        let v = self.attribute(attr::ERROR_CODE)?.value;
        let class = u16::from(*v.get(2)? & 0x07);
        let number = u16::from(*v.get(3)?);
        Some(ErrorCode {
            code: class * 100 + number,
            reason: v.get(4..)?,
        })
    }
    /// XOR-MAPPED-ADDRESS, decoded (RFC 8489 §14.2).
    pub fn xor_mapped_address(&self) -> Option<SocketAddr> {
        let v = self.attribute(attr::XOR_MAPPED_ADDRESS)?.value;
        let port = be16(v, 2)? ^ (MAGIC_COOKIE >> 16) as u16;
        let ip = match v.get(1)? {
            1 => IpAddr::V4(Ipv4Addr::from(be32(v, 4)? ^ MAGIC_COOKIE)),
            2 => {
                let mut key = [0u8; 16];
                key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                key[4..].copy_from_slice(&self.transaction_id());
                let mut a = [0u8; 16];
                for (i, o) in a.iter_mut().enumerate() {
                    *o = v.get(4 + i)? ^ key[i];
                }
                IpAddr::V6(Ipv6Addr::from(a))
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }

    /// Verifies MESSAGE-INTEGRITY with a short-term key (the password, RFC 8489 §9.1.1).
    pub fn verify_integrity(&self, key: &[u8]) -> Result<(), StunError> {
        verify_integrity(self, key)
    }
    /// Verifies FINGERPRINT.
    pub fn verify_fingerprint(&self) -> Result<(), StunError> {
        verify_fingerprint(self)
    }
}

fn be64(v: &[u8]) -> Option<u64> {
    Some((u64::from(be32(v, 0)?) << 32) | u64::from(be32(v, 4)?))
}

/// HMAC-SHA1 over the message up to `end`, with the length field replaced by `len_field`.
fn integrity_mac(msg: &[u8], end: usize, len_field: u16, key: &[u8]) -> Option<Hmac<Sha1>> {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).ok()?;
    mac.update(msg.get(0..2)?);
    mac.update(&len_field.to_be_bytes());
    mac.update(msg.get(4..end)?);
    Some(mac)
}

/// Verifies MESSAGE-INTEGRITY (RFC 8489 §14.5): HMAC-SHA1 with `key` over the message up to
/// the attribute, the header's length field set as if the message ended with it. The tag is
/// compared in constant time.
pub fn verify_integrity(msg: &StunMessage<'_>, key: &[u8]) -> Result<(), StunError> {
    let a = msg
        .attribute(attr::MESSAGE_INTEGRITY)
        .ok_or(StunError::NoIntegrity)?;
    let len_field = (a.offset - HEADER_LEN + 4 + INTEGRITY_LEN) as u16;
    let mac = integrity_mac(msg.buf, a.offset, len_field, key).ok_or(StunError::NoIntegrity)?;
    mac.verify_slice(a.value)
        .map_err(|_| StunError::IntegrityMismatch)
}

/// Verifies FINGERPRINT (RFC 8489 §14.7): CRC-32 of the message up to the attribute, XOR
/// 0x5354554e. [`StunMessage::parse`] has already checked that it is the last attribute, so
/// the length field needs no adjustment.
pub fn verify_fingerprint(msg: &StunMessage<'_>) -> Result<(), StunError> {
    let a = msg
        .attribute(attr::FINGERPRINT)
        .ok_or(StunError::NoFingerprint)?;
    let want = be32(a.value, 0).ok_or(StunError::NoFingerprint)?;
    let covered = msg.buf.get(..a.offset).ok_or(StunError::NoFingerprint)?;
    if crc32(covered) ^ FINGERPRINT_XOR == want {
        Ok(())
    } else {
        Err(StunError::FingerprintMismatch)
    }
}

/// CRC-32 (ISO-HDLC: reflected polynomial 0xEDB88320, init and final XOR all ones),
/// the CRC that FINGERPRINT uses (RFC 8489 §14.7 points to ITU V.42).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC_TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    !crc
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Builds a STUN message into a caller buffer without allocating.
///
/// Add attributes in order, then optionally [`message_integrity`](Self::message_integrity)
/// and [`fingerprint`](Self::fingerprint) last; [`finish`](Self::finish) returns the length.
/// The header's length field is kept current after every step.
#[derive(Debug)]
pub struct StunWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    pad: u8,
    /// 0: open; 1: MESSAGE-INTEGRITY written; 2: FINGERPRINT written.
    sealed: u8,
}

impl<'a> StunWriter<'a> {
    /// Starts a message of `msg_type` (see [`message_type`]) with `transaction_id`.
    pub fn new(
        buf: &'a mut [u8],
        msg_type: u16,
        transaction_id: &[u8; 12],
    ) -> Result<Self, StunError> {
        let hdr = buf.get_mut(..HEADER_LEN).ok_or(StunError::BufferTooSmall)?;
        hdr[0..2].copy_from_slice(&(msg_type & 0x3FFF).to_be_bytes());
        hdr[2..4].copy_from_slice(&[0, 0]);
        hdr[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        hdr[8..20].copy_from_slice(transaction_id);
        Ok(StunWriter {
            buf,
            len: HEADER_LEN,
            pad: 0,
            sealed: 0,
        })
    }

    /// Starts a Binding success response to `request` (same transaction id).
    pub fn binding_success(
        buf: &'a mut [u8],
        request: &StunMessage<'_>,
    ) -> Result<Self, StunError> {
        Self::new(
            buf,
            message_type(METHOD_BINDING, Class::SuccessResponse),
            &request.transaction_id(),
        )
    }

    /// Sets the byte used to pad values to 32 bits (default 0; RFC 8489 §14 lets it be any
    /// value, and the RFC 5769 vectors use spaces).
    pub fn set_padding_byte(&mut self, b: u8) {
        self.pad = b;
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when only the header is written.
    pub fn is_empty(&self) -> bool {
        self.len == HEADER_LEN
    }

    fn set_length_field(&mut self, len: usize) -> Result<(), StunError> {
        let v = u16::try_from(len - HEADER_LEN).map_err(|_| StunError::BadWrite)?;
        put16(self.buf, 2, v);
        Ok(())
    }

    /// Appends an attribute with `parts` concatenated as its value.
    fn push(&mut self, typ: u16, parts: &[&[u8]]) -> Result<(), StunError> {
        let vlen: usize = parts.iter().map(|p| p.len()).sum();
        let vlen16 = u16::try_from(vlen).map_err(|_| StunError::BadWrite)?;
        let padded = vlen.div_ceil(4) * 4;
        let end = self.len + 4 + padded;
        if end - HEADER_LEN > usize::from(u16::MAX) {
            return Err(StunError::BadWrite);
        }
        let pad = self.pad;
        let dst = self
            .buf
            .get_mut(self.len..end)
            .ok_or(StunError::BufferTooSmall)?;
        dst[0..2].copy_from_slice(&typ.to_be_bytes());
        dst[2..4].copy_from_slice(&vlen16.to_be_bytes());
        let mut at = 4;
        for p in parts {
            dst[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        dst[at..].fill(pad);
        self.len = end;
        self.set_length_field(end)
    }

    /// Appends any attribute before MESSAGE-INTEGRITY.
    pub fn attribute(&mut self, typ: u16, value: &[u8]) -> Result<(), StunError> {
        if self.sealed != 0 {
            return Err(StunError::BadWrite);
        }
        self.push(typ, &[value])
    }

    /// USERNAME.
    pub fn username(&mut self, username: &[u8]) -> Result<(), StunError> {
        if username.len() > MAX_USERNAME_LEN {
            return Err(StunError::BadWrite);
        }
        self.attribute(attr::USERNAME, username)
    }

    /// SOFTWARE.
    pub fn software(&mut self, software: &[u8]) -> Result<(), StunError> {
        self.attribute(attr::SOFTWARE, software)
    }

    /// PRIORITY.
    pub fn priority(&mut self, priority: u32) -> Result<(), StunError> {
        self.attribute(attr::PRIORITY, &priority.to_be_bytes())
    }

    /// USE-CANDIDATE.
    pub fn use_candidate(&mut self) -> Result<(), StunError> {
        self.attribute(attr::USE_CANDIDATE, &[])
    }

    /// ICE-CONTROLLING with its tie-breaker.
    pub fn ice_controlling(&mut self, tie_breaker: u64) -> Result<(), StunError> {
        self.attribute(attr::ICE_CONTROLLING, &tie_breaker.to_be_bytes())
    }

    /// ICE-CONTROLLED with its tie-breaker.
    pub fn ice_controlled(&mut self, tie_breaker: u64) -> Result<(), StunError> {
        self.attribute(attr::ICE_CONTROLLED, &tie_breaker.to_be_bytes())
    }

    /// ERROR-CODE (RFC 8489 §14.8): `code` 300–699 and a UTF-8 reason phrase.
    pub fn error_code(&mut self, code: u16, reason: &str) -> Result<(), StunError> {
        if !(300..=699).contains(&code) || reason.len() > 763 {
            return Err(StunError::BadWrite);
        }
        if self.sealed != 0 {
            return Err(StunError::BadWrite);
        }
        let head = [0, 0, (code / 100) as u8, (code % 100) as u8];
        self.push(attr::ERROR_CODE, &[&head, reason.as_bytes()])
    }

    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2) for IPv4 or IPv6. An ICE-TCP peer key is written
    /// as the connection's transport address ([`super::transport_addr`]).
    pub fn xor_mapped_address(&mut self, addr: SocketAddr) -> Result<(), StunError> {
        if self.sealed != 0 {
            return Err(StunError::BadWrite);
        }
        let addr = super::transport_addr(addr);
        let port = (addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes();
        match addr.ip() {
            IpAddr::V4(ip) => {
                let x = (u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes();
                self.push(attr::XOR_MAPPED_ADDRESS, &[&[0, 1], &port, &x])
            }
            IpAddr::V6(ip) => {
                let mut x = ip.octets();
                let mut key = [0u8; 16];
                key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                key[4..].copy_from_slice(&self.buf[8..20]);
                for (o, k) in x.iter_mut().zip(key) {
                    *o ^= k;
                }
                self.push(attr::XOR_MAPPED_ADDRESS, &[&[0, 2], &port, &x])
            }
        }
    }

    /// Appends MESSAGE-INTEGRITY (RFC 8489 §14.5) computed with `key` over everything so far.
    pub fn message_integrity(&mut self, key: &[u8]) -> Result<(), StunError> {
        if self.sealed != 0 {
            return Err(StunError::BadWrite);
        }
        let end = self.len + 4 + INTEGRITY_LEN;
        if end > self.buf.len() {
            return Err(StunError::BufferTooSmall);
        }
        let len_field = u16::try_from(end - HEADER_LEN).map_err(|_| StunError::BadWrite)?;
        let mac = integrity_mac(self.buf, self.len, len_field, key).ok_or(StunError::BadWrite)?;
        let tag = mac.finalize().into_bytes();
        self.push(attr::MESSAGE_INTEGRITY, &[&tag])?;
        self.sealed = 1;
        Ok(())
    }

    /// Appends FINGERPRINT (RFC 8489 §14.7); nothing may follow it.
    pub fn fingerprint(&mut self) -> Result<(), StunError> {
        if self.sealed == 2 {
            return Err(StunError::BadWrite);
        }
        let end = self.len + 8;
        if end > self.buf.len() {
            return Err(StunError::BufferTooSmall);
        }
        self.set_length_field(end)?;
        let crc = crc32(&self.buf[..self.len]) ^ FINGERPRINT_XOR;
        self.push(attr::FINGERPRINT, &[&crc.to_be_bytes()])?;
        self.sealed = 2;
        Ok(())
    }

    /// Finishes the message; returns its length (`buf[..len]`).
    pub fn finish(self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 5769 §2.1 sample request (short-term credentials; SOFTWARE "STUN test client",
    /// USERNAME "evtj:h6vY" padded with spaces).
    pub(crate) const RFC5769_REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74,
        0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e,
        0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
        0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5,
        0x7a, 0x3b, 0xcf,
    ];
    /// RFC 5769 §2.2 sample IPv4 response (XOR-MAPPED-ADDRESS 192.0.2.1:32853).
    pub(crate) const RFC5769_IPV4_RESPONSE: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];
    /// RFC 5769 §2.3 sample IPv6 response
    /// (XOR-MAPPED-ADDRESS [2001:db8:1234:5678:11:2233:4455:6677]:32853).
    pub(crate) const RFC5769_IPV6_RESPONSE: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
        0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
        0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];
    const PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";
    const TXID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn message_type_bits() {
        assert_eq!(message_type(METHOD_BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(METHOD_BINDING, Class::Indication), 0x0011);
        assert_eq!(message_type(METHOD_BINDING, Class::SuccessResponse), 0x0101);
        assert_eq!(message_type(METHOD_BINDING, Class::ErrorResponse), 0x0111);
        for m in [0u16, 1, 0x0F, 0x70, 0xF80, 0xFFF] {
            for c in [
                Class::Request,
                Class::Indication,
                Class::SuccessResponse,
                Class::ErrorResponse,
            ] {
                assert_eq!(split_message_type(message_type(m, c)), (m, c));
            }
        }
    }

    #[test]
    fn rfc5769_request() {
        let m = StunMessage::parse(&RFC5769_REQUEST).unwrap();
        assert!(m.is_binding_request());
        assert_eq!(m.transaction_id(), TXID);
        assert_eq!(m.software(), Some(&b"STUN test client"[..]));
        assert_eq!(m.username_str(), Some("evtj:h6vY"));
        assert_eq!(m.priority(), Some(0x6e00_01ff));
        assert_eq!(m.ice_controlled(), Some(0x932f_f9b1_5126_3b36));
        assert_eq!(m.ice_controlling(), None);
        assert!(!m.use_candidate());
        assert!(!m.has_message_integrity_sha256());
        assert_eq!(m.fingerprint(), Some(0xe57a_3bcf));
        m.verify_integrity(PASSWORD).unwrap();
        m.verify_fingerprint().unwrap();
        assert_eq!(
            m.verify_integrity(b"wrong password").unwrap_err(),
            StunError::IntegrityMismatch
        );
        assert_eq!(m.attributes().count(), 6);
    }

    #[test]
    fn rfc5769_responses() {
        let m = StunMessage::parse(&RFC5769_IPV4_RESPONSE).unwrap();
        assert_eq!(m.class(), Class::SuccessResponse);
        assert_eq!(m.method(), METHOD_BINDING);
        assert_eq!(m.software(), Some(&b"test vector"[..]));
        assert_eq!(
            m.xor_mapped_address(),
            Some("192.0.2.1:32853".parse().unwrap())
        );
        m.verify_integrity(PASSWORD).unwrap();
        m.verify_fingerprint().unwrap();

        let m = StunMessage::parse(&RFC5769_IPV6_RESPONSE).unwrap();
        assert_eq!(
            m.xor_mapped_address(),
            Some(
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                    .parse()
                    .unwrap()
            )
        );
        m.verify_integrity(PASSWORD).unwrap();
        m.verify_fingerprint().unwrap();
    }

    #[test]
    fn tampering_detected() {
        let mut req = RFC5769_REQUEST;
        req[45] ^= 1; // inside PRIORITY
        let m = StunMessage::parse(&req).unwrap();
        assert_eq!(
            m.verify_integrity(PASSWORD).unwrap_err(),
            StunError::IntegrityMismatch
        );
        assert_eq!(
            m.verify_fingerprint().unwrap_err(),
            StunError::FingerprintMismatch
        );
    }

    #[test]
    fn writer_reproduces_rfc5769_request() {
        let mut buf = [0u8; 200];
        let mut w = StunWriter::new(
            &mut buf,
            message_type(METHOD_BINDING, Class::Request),
            &TXID,
        )
        .unwrap();
        w.set_padding_byte(b' ');
        w.software(b"STUN test client").unwrap();
        w.priority(0x6e00_01ff).unwrap();
        w.ice_controlled(0x932f_f9b1_5126_3b36).unwrap();
        w.username(b"evtj:h6vY").unwrap();
        w.message_integrity(PASSWORD).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        assert_eq!(&buf[..n], &RFC5769_REQUEST[..]);
    }

    #[test]
    fn writer_reproduces_rfc5769_responses() {
        for (addr, vector) in [
            ("192.0.2.1:32853", &RFC5769_IPV4_RESPONSE[..]),
            (
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
                &RFC5769_IPV6_RESPONSE[..],
            ),
        ] {
            let req = StunMessage::parse(&RFC5769_REQUEST).unwrap();
            let mut buf = [0u8; 200];
            let mut w = StunWriter::binding_success(&mut buf, &req).unwrap();
            w.set_padding_byte(b' ');
            w.software(b"test vector").unwrap();
            w.xor_mapped_address(addr.parse().unwrap()).unwrap();
            w.message_integrity(PASSWORD).unwrap();
            w.fingerprint().unwrap();
            let n = w.finish();
            assert_eq!(&buf[..n], vector);
        }
    }

    #[test]
    fn writer_error_response_round_trip() {
        let mut buf = [0u8; 128];
        let mut w = StunWriter::new(
            &mut buf,
            message_type(METHOD_BINDING, Class::ErrorResponse),
            &[7; 12],
        )
        .unwrap();
        w.error_code(487, "Role Conflict").unwrap();
        w.username(b"a:b").unwrap();
        w.use_candidate().unwrap();
        w.ice_controlling(42).unwrap();
        w.message_integrity(b"key").unwrap();
        assert_eq!(w.username(b"late").unwrap_err(), StunError::BadWrite);
        w.fingerprint().unwrap();
        assert_eq!(w.fingerprint().unwrap_err(), StunError::BadWrite);
        let n = w.finish();
        let m = StunMessage::parse(&buf[..n]).unwrap();
        assert_eq!(m.class(), Class::ErrorResponse);
        let e = m.error_code().unwrap();
        assert_eq!(e.code, 487);
        assert_eq!(e.reason, b"Role Conflict");
        assert_eq!(m.username(), Some(&b"a:b"[..]));
        assert!(m.use_candidate());
        assert_eq!(m.ice_controlling(), Some(42));
        m.verify_integrity(b"key").unwrap();
        m.verify_fingerprint().unwrap();
        // Zero padding by default.
        assert_eq!(&buf[20 + 4 + 4 + 13..20 + 4 + 4 + 16], &[0, 0, 0]);
    }

    #[test]
    fn writer_limits() {
        let mut small = [0u8; 19];
        assert_eq!(
            StunWriter::new(&mut small, 1, &[0; 12]).unwrap_err(),
            StunError::BufferTooSmall
        );
        let mut buf = [0u8; 28];
        let mut w = StunWriter::new(&mut buf, 1, &[0; 12]).unwrap();
        assert_eq!(w.username(b"12345").unwrap_err(), StunError::BufferTooSmall);
        w.username(b"1234").unwrap();
        assert_eq!(
            w.message_integrity(b"k").unwrap_err(),
            StunError::BufferTooSmall
        );
        assert_eq!(w.error_code(200, "no").unwrap_err(), StunError::BadWrite);
        assert_eq!(w.finish(), 28);
    }

    #[test]
    fn rejects() {
        assert_eq!(
            StunMessage::parse(&[0; 19]).unwrap_err(),
            StunError::TooShort
        );
        let mut m = RFC5769_REQUEST;
        m[0] = 0x40;
        assert_eq!(StunMessage::parse(&m).unwrap_err(), StunError::NotStun);
        let mut m = RFC5769_REQUEST;
        m[4] = 0;
        assert_eq!(StunMessage::parse(&m).unwrap_err(), StunError::BadCookie);
        assert_eq!(
            StunMessage::parse(&RFC5769_REQUEST[..104]).unwrap_err(),
            StunError::BadLength
        );
        let mut m = RFC5769_REQUEST;
        m[3] = 0x57;
        assert_eq!(StunMessage::parse(&m).unwrap_err(), StunError::BadLength);
        // USERNAME claiming more bytes than the message has.
        let mut m = RFC5769_REQUEST;
        m[63] = 0x40;
        assert_eq!(
            StunMessage::parse(&m).unwrap_err(),
            StunError::AttributeOverrun
        );
        // PRIORITY with a wrong length (5 → overruns into the next attribute's alignment).
        let mut m = RFC5769_REQUEST;
        m[43] = 8;
        assert!(StunMessage::parse(&m).is_err());
        // FINGERPRINT not last: swap in a message with an attribute after it.
        let mut buf = [0u8; 64];
        let mut w = StunWriter::new(&mut buf, 1, &[0; 12]).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        buf[n..n + 4].copy_from_slice(&[0x00, 0x25, 0, 0]);
        buf[3] += 4;
        assert_eq!(
            StunMessage::parse(&buf[..n + 4]).unwrap_err(),
            StunError::FingerprintNotLast
        );
        // No integrity / fingerprint to verify.
        let mut buf = [0u8; 32];
        let n = StunWriter::new(&mut buf, 1, &[0; 12]).unwrap().finish();
        let m = StunMessage::parse(&buf[..n]).unwrap();
        assert_eq!(
            m.verify_integrity(b"k").unwrap_err(),
            StunError::NoIntegrity
        );
        assert_eq!(
            m.verify_fingerprint().unwrap_err(),
            StunError::NoFingerprint
        );
    }

    #[test]
    fn attributes_after_integrity_ignored() {
        let mut buf = [0u8; 128];
        let mut w = StunWriter::new(&mut buf, 1, &[1; 12]).unwrap();
        w.message_integrity(b"k").unwrap();
        let n = w.finish();
        // Append a PRIORITY after MESSAGE-INTEGRITY by hand.
        buf[n..n + 8].copy_from_slice(&[0x00, 0x24, 0, 4, 0, 0, 0, 9]);
        buf[3] += 8;
        let m = StunMessage::parse(&buf[..n + 8]).unwrap();
        assert_eq!(m.attributes().count(), 2);
        assert_eq!(m.priority(), None);
        assert!(m.message_integrity().is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            // Give the header a chance to pass so that attribute parsing is exercised.
            if bytes.len() >= 20 {
                bytes[0] &= 0x3F;
                bytes[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                let l = ((bytes.len() - 20) & !3) as u16;
                bytes[2..4].copy_from_slice(&l.to_be_bytes());
                bytes.truncate(20 + usize::from(l));
            }
            if let Ok(m) = StunMessage::parse(&bytes) {
                for a in m.attributes() { let _ = a.value.len(); }
                let _ = (m.method(), m.class(), m.username_str(), m.software(), m.message_integrity());
                let _ = (m.has_message_integrity_sha256(), m.fingerprint(), m.priority(), m.use_candidate());
                let _ = (m.ice_controlling(), m.ice_controlled(), m.error_code(), m.xor_mapped_address());
                let _ = (m.verify_integrity(b"key"), m.verify_fingerprint());
            }
        }

        #[test]
        fn writer_output_parses(user in proptest::collection::vec(any::<u8>(), 0..40),
                                reason in "[a-z ]{0,20}", code in 300u16..700,
                                v4 in any::<[u8; 4]>(), v6 in any::<[u8; 16]>(), port in any::<u16>(),
                                key in proptest::collection::vec(any::<u8>(), 0..30), cap in 20usize..260) {
            let mut buf = vec![0u8; cap];
            let Ok(mut w) = StunWriter::new(&mut buf, 0x0101, &[3; 12]) else { return Ok(()) };
            let a4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(v4)), port);
            let a6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::from(v6)), port);
            let complete = w.username(&user).is_ok()
                && w.error_code(code, &reason).is_ok()
                && w.xor_mapped_address(a4).is_ok()
                && w.xor_mapped_address(a6).is_ok()
                && w.message_integrity(&key).is_ok()
                && w.fingerprint().is_ok();
            let n = w.finish();
            let m = StunMessage::parse(&buf[..n]).expect("writer output parses");
            if complete {
                prop_assert_eq!(m.username(), Some(&user[..]));
                prop_assert_eq!(m.error_code().map(|e| e.code), Some(code));
                prop_assert_eq!(m.xor_mapped_address(), Some(a4));
                prop_assert!(m.verify_integrity(&key).is_ok());
                prop_assert!(m.verify_fingerprint().is_ok());
            }
        }
    }
}
