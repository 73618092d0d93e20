//! Per-packet SRTP/SRTCP transforms for one set of session keys and a known packet index, plus
//! the minimal RTP/RTCP header parsing they need (fixed header, CSRCs, extension length; kept
//! local on purpose: no dependency on `crate::wire`).
//!
//! Owns: IV/nonce construction, which bytes are encrypted and authenticated, trailer layout.
//! May not touch: stream state (ROC, replay), key lifetime — that is `context.rs`.

use super::crypto::ct_eq;
use super::keys::SessionKeys;
use super::sha1mb::HmacState;
use super::Error;

/// Fixed RTP header length (RFC 3550 §5.1).
const RTP_FIXED: usize = 12;
/// RTCP header up to and including the sender SSRC (RFC 3550 §6.4.1); SRTCP encrypts after it.
pub(crate) const RTCP_HEADER: usize = 8;
/// E flag ‖ 31-bit SRTCP index (RFC 3711 §3.4).
pub(crate) const E_FLAG: u32 = 0x8000_0000;
const GCM_TAG: usize = 16;
const SRTCP_CM_TAG: usize = 10;

/// What the SRTP layer needs from an RTP header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RtpHeader {
    pub(crate) len: usize,
    pub(crate) seq: u16,
    pub(crate) ssrc: u32,
}

/// Parse the RTP header of `pkt` (RFC 3550 §5.1, §5.3.1): version 2, CSRC list, extension.
pub(crate) fn rtp_header(pkt: &[u8]) -> Result<RtpHeader, Error> {
    if pkt.len() < RTP_FIXED || pkt[0] >> 6 != 2 {
        return Err(Error::Malformed);
    }
    let cc = (pkt[0] & 0x0f) as usize;
    let mut len = RTP_FIXED + 4 * cc;
    if pkt[0] & 0x10 != 0 {
        if pkt.len() < len + 4 {
            return Err(Error::Malformed);
        }
        let words = u16::from_be_bytes([pkt[len + 2], pkt[len + 3]]) as usize;
        len += 4 + 4 * words;
    }
    if pkt.len() < len {
        return Err(Error::Malformed);
    }
    Ok(RtpHeader {
        len,
        seq: u16::from_be_bytes([pkt[2], pkt[3]]),
        ssrc: u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]),
    })
}

/// Sender SSRC of an RTCP compound packet (RFC 3550 §6.4.1), after checking the version.
pub(crate) fn rtcp_ssrc(pkt: &[u8]) -> Result<u32, Error> {
    if pkt.len() < RTCP_HEADER || pkt[0] >> 6 != 2 {
        return Err(Error::Malformed);
    }
    Ok(u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]))
}

/// AES-CM IV (RFC 3711 §4.1.1): (k_s · 2^16) XOR (SSRC · 2^64) XOR (i · 2^16).
#[inline]
fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (d, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *d ^= s;
    }
    let ib = index.to_be_bytes();
    for (d, s) in iv[8..14].iter_mut().zip(&ib[2..8]) {
        *d ^= s;
    }
    iv
}

/// RTP GCM IV (RFC 7714 §8.1): (00 00 ‖ SSRC ‖ ROC ‖ SEQ) XOR salt.
#[inline]
fn gcm_rtp_iv(salt: &[u8; 12], ssrc: u32, index: u64) -> [u8; 12] {
    let mut iv = *salt;
    for (d, s) in iv[2..6].iter_mut().zip(ssrc.to_be_bytes()) {
        *d ^= s;
    }
    let ib = index.to_be_bytes(); // ROC ‖ SEQ are the low 48 bits
    for (d, s) in iv[6..12].iter_mut().zip(&ib[2..8]) {
        *d ^= s;
    }
    iv
}

/// RTCP GCM IV (RFC 7714 §9.1): (00 00 ‖ SSRC ‖ 00 00 ‖ 0 ‖ SRTCP index) XOR salt.
#[inline]
fn gcm_rtcp_iv(salt: &[u8; 12], ssrc: u32, index: u32) -> [u8; 12] {
    let mut iv = *salt;
    for (d, s) in iv[2..6].iter_mut().zip(ssrc.to_be_bytes()) {
        *d ^= s;
    }
    for (d, s) in iv[8..12].iter_mut().zip(index.to_be_bytes()) {
        *d ^= s;
    }
    iv
}

/// Protect an RTP packet `buf[..len]` with header length `hdr` and packet index `index`
/// (ROC ‖ SEQ). `buf` has room for the tag (checked by the caller). Returns the new length.
pub(crate) fn protect_rtp(
    keys: &SessionKeys,
    tag_len: usize,
    buf: &mut [u8],
    len: usize,
    hdr: usize,
    ssrc: u32,
    index: u64,
) -> usize {
    match keys {
        SessionKeys::Cm { aes, salt, mac } => {
            // RFC 3711 §3.3: encrypt the payload, then authenticate header ‖ payload ‖ ROC.
            aes.xor_keystream(&cm_iv(salt, ssrc, index), &mut buf[hdr..len]);
            let roc = ((index >> 16) as u32).to_be_bytes();
            let tag = mac.tag(&buf[..len], &roc);
            buf[len..len + tag_len].copy_from_slice(&tag[..tag_len]);
            len + tag_len
        }
        SessionKeys::Gcm { gcm, salt } => {
            // RFC 7714 §8.2: AAD = the RTP header, plaintext = the payload.
            let (h, rest) = buf.split_at_mut(hdr);
            let tag = gcm.seal(gcm_rtp_iv(salt, ssrc, index), h, &mut rest[..len - hdr]);
            buf[len..len + GCM_TAG].copy_from_slice(&tag);
            len + GCM_TAG
        }
    }
}

/// What [`protect_rtp_deferred`] left to do.
pub(crate) enum Protected {
    /// Fully protected; the SRTP length.
    Done(usize),
    /// Encrypted; the HMAC-SHA1 tag over `buf[..len] ‖ roc` under `key` is still to be
    /// appended (RFC 3711 §4.2).
    Mac {
        len: usize,
        key: HmacState,
        roc: [u8; 4],
    },
}

/// [`protect_rtp`], except that a counter-mode packet is only encrypted: its tag is left to a
/// multi-buffer batch (`batch.rs`). GCM packets are sealed at once.
pub(crate) fn protect_rtp_deferred(
    keys: &SessionKeys,
    tag_len: usize,
    buf: &mut [u8],
    len: usize,
    hdr: usize,
    ssrc: u32,
    index: u64,
) -> Protected {
    match keys {
        SessionKeys::Cm { aes, salt, mac } => {
            aes.xor_keystream(&cm_iv(salt, ssrc, index), &mut buf[hdr..len]);
            Protected::Mac {
                len,
                key: *mac.state(),
                roc: ((index >> 16) as u32).to_be_bytes(),
            }
        }
        SessionKeys::Gcm { .. } => {
            Protected::Done(protect_rtp(keys, tag_len, buf, len, hdr, ssrc, index))
        }
    }
}

/// [`protect_rtp`] (`defer`: [`protect_rtp_deferred`]) of the RTP packet `buf[..len] ‖ rest`,
/// written into `buf` without first copying `rest` there: `buf[..len]` holds the header (length
/// `hdr`) and possibly the first payload bytes, encrypted in place; `rest`, the remainder of
/// the payload, is encrypted from where it lies into `buf[len..len + rest.len()]`. `buf` has
/// room for the whole packet and the tag (checked by the caller). The bytes written are those
/// `protect_rtp` writes over the concatenation.
#[allow(clippy::too_many_arguments)]
pub(crate) fn protect_rtp_from(
    keys: &SessionKeys,
    tag_len: usize,
    buf: &mut [u8],
    len: usize,
    rest: &[u8],
    hdr: usize,
    (ssrc, index): (u32, u64),
    defer: bool,
) -> Protected {
    let end = len + rest.len();
    match keys {
        SessionKeys::Cm { aes, salt, mac } => {
            let (head, tail) = buf.split_at_mut(len);
            let iv = cm_iv(salt, ssrc, index);
            aes.xor_keystream_from(&iv, &mut head[hdr..], rest, &mut tail[..rest.len()]);
            let roc = ((index >> 16) as u32).to_be_bytes();
            if defer {
                return Protected::Mac {
                    len: end,
                    key: *mac.state(),
                    roc,
                };
            }
            // RFC 3711 §3.3: authenticate header ‖ encrypted payload ‖ ROC, all in `buf` now.
            let tag = mac.tag(&buf[..end], &roc);
            buf[end..end + tag_len].copy_from_slice(&tag[..tag_len]);
            Protected::Done(end + tag_len)
        }
        SessionKeys::Gcm { gcm, salt } => {
            // RFC 7714 §8.2: AAD = the RTP header, plaintext = the payload (its first
            // `len - hdr` bytes in `buf`, the rest in `rest`), the tag right after it.
            let (h, after) = buf.split_at_mut(hdr);
            let (head, tail) = after.split_at_mut(len - hdr);
            let iv = gcm_rtp_iv(salt, ssrc, index);
            gcm.seal_from(iv, h, head, rest, &mut tail[..rest.len() + GCM_TAG]);
            Protected::Done(end + GCM_TAG)
        }
    }
}

/// Authenticate, then decrypt an SRTP packet. `len` includes the tag; returns the RTP length.
/// On `AuthFailed` a counter-mode packet is untouched; a GCM packet's payload is zeroed.
pub(crate) fn unprotect_rtp(
    keys: &SessionKeys,
    tag_len: usize,
    buf: &mut [u8],
    len: usize,
    hdr: usize,
    ssrc: u32,
    index: u64,
) -> Result<usize, Error> {
    match keys {
        SessionKeys::Cm { aes, salt, mac } => {
            let plen = len - tag_len;
            let roc = ((index >> 16) as u32).to_be_bytes();
            let tag = mac.tag(&buf[..plen], &roc);
            if !ct_eq(&tag[..tag_len], &buf[plen..len]) {
                return Err(Error::AuthFailed);
            }
            aes.xor_keystream(&cm_iv(salt, ssrc, index), &mut buf[hdr..plen]);
            Ok(plen)
        }
        SessionKeys::Gcm { gcm, salt } => {
            let plen = len - GCM_TAG;
            let mut tag = [0u8; GCM_TAG];
            tag.copy_from_slice(&buf[plen..len]);
            let (h, rest) = buf.split_at_mut(hdr);
            gcm.open(
                gcm_rtp_iv(salt, ssrc, index),
                h,
                &mut rest[..plen - hdr],
                tag,
            )
            .map_err(|_| Error::AuthFailed)?;
            Ok(plen)
        }
    }
}

/// Protect an RTCP packet with SRTCP index `index` (31 bits), always encrypting (E = 1).
/// Layout (RFC 3711 §3.4): packet ‖ E‖index ‖ tag(80); GCM (RFC 7714 §9.2): packet ‖ tag ‖ E‖index.
pub(crate) fn protect_rtcp(
    keys: &SessionKeys,
    buf: &mut [u8],
    len: usize,
    ssrc: u32,
    index: u32,
) -> usize {
    let eidx = (E_FLAG | index).to_be_bytes();
    match keys {
        SessionKeys::Cm { aes, salt, mac } => {
            aes.xor_keystream(
                &cm_iv(salt, ssrc, u64::from(index)),
                &mut buf[RTCP_HEADER..len],
            );
            buf[len..len + 4].copy_from_slice(&eidx);
            let tag = mac.tag(&buf[..len + 4], &[]);
            buf[len + 4..len + 4 + SRTCP_CM_TAG].copy_from_slice(&tag[..SRTCP_CM_TAG]);
            len + 4 + SRTCP_CM_TAG
        }
        SessionKeys::Gcm { gcm, salt } => {
            // RFC 7714 §9.2: AAD = first 8 octets ‖ E‖index.
            let mut aad = [0u8; RTCP_HEADER + 4];
            aad[..RTCP_HEADER].copy_from_slice(&buf[..RTCP_HEADER]);
            aad[RTCP_HEADER..].copy_from_slice(&eidx);
            let tag = gcm.seal(
                gcm_rtcp_iv(salt, ssrc, index),
                &aad,
                &mut buf[RTCP_HEADER..len],
            );
            buf[len..len + GCM_TAG].copy_from_slice(&tag);
            buf[len + GCM_TAG..len + GCM_TAG + 4].copy_from_slice(&eidx);
            len + GCM_TAG + 4
        }
    }
}

/// Read E‖index of an SRTCP packet (`len` already checked against the overhead).
pub(crate) fn srtcp_eidx(keys: &SessionKeys, buf: &[u8], len: usize) -> u32 {
    let at = match keys {
        SessionKeys::Cm { .. } => len - SRTCP_CM_TAG - 4,
        SessionKeys::Gcm { .. } => len - 4,
    };
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Authenticate, then decrypt (if E = 1) an SRTCP packet. Returns the RTCP length.
/// `scratch` is used only for GCM with E = 0, whose AAD is the whole packet ‖ E‖index and so is
/// not contiguous in the buffer; a packet longer than `scratch` is then `Malformed`.
pub(crate) fn unprotect_rtcp(
    keys: &SessionKeys,
    buf: &mut [u8],
    len: usize,
    ssrc: u32,
    scratch: &mut [u8],
) -> Result<usize, Error> {
    let eidx_v = srtcp_eidx(keys, buf, len);
    let encrypted = eidx_v & E_FLAG != 0;
    let index = eidx_v & !E_FLAG;
    match keys {
        SessionKeys::Cm { aes, salt, mac } => {
            let alen = len - SRTCP_CM_TAG;
            let tag = mac.tag(&buf[..alen], &[]);
            if !ct_eq(&tag[..SRTCP_CM_TAG], &buf[alen..len]) {
                return Err(Error::AuthFailed);
            }
            let plen = alen - 4;
            if encrypted {
                aes.xor_keystream(
                    &cm_iv(salt, ssrc, u64::from(index)),
                    &mut buf[RTCP_HEADER..plen],
                );
            }
            Ok(plen)
        }
        SessionKeys::Gcm { gcm, salt } => {
            let plen = len - GCM_TAG - 4;
            let mut tag = [0u8; GCM_TAG];
            tag.copy_from_slice(&buf[plen..plen + GCM_TAG]);
            let eidx = eidx_v.to_be_bytes();
            let iv = gcm_rtcp_iv(salt, ssrc, index);
            if encrypted {
                let mut aad = [0u8; RTCP_HEADER + 4];
                aad[..RTCP_HEADER].copy_from_slice(&buf[..RTCP_HEADER]);
                aad[RTCP_HEADER..].copy_from_slice(&eidx);
                gcm.open(iv, &aad, &mut buf[RTCP_HEADER..plen], tag)
                    .map_err(|_| Error::AuthFailed)?;
            } else {
                // RFC 7714 §9.3: unencrypted SRTCP authenticates packet ‖ E‖index as AAD.
                if scratch.len() < plen + 4 {
                    return Err(Error::Malformed);
                }
                scratch[..plen].copy_from_slice(&buf[..plen]);
                scratch[plen..plen + 4].copy_from_slice(&eidx);
                gcm.open(iv, &scratch[..plen + 4], &mut [], tag)
                    .map_err(|_| Error::AuthFailed)?;
            }
            Ok(plen)
        }
    }
}
