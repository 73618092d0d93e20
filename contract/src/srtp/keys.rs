//! Session keys derived from a master key (RFC 3711 §4.3, RFC 6188 §3, RFC 7714 §11).
//!
//! Owns: the expanded per-key state (AES key schedules, keyed HMAC states, ring GCM keys), made
//! once per (master key, r) and reused for every packet. May not touch: packets, stream state.

use super::crypto::{kdf, AesKey, Gcm, HmacSha1};
use super::{MasterKey, Profile};

/// Key derivation labels (RFC 3711 §4.3.1 and §4.3.2).
pub(crate) const LABEL_RTP_ENC: u8 = 0x00;
pub(crate) const LABEL_RTP_AUTH: u8 = 0x01;
pub(crate) const LABEL_RTP_SALT: u8 = 0x02;
pub(crate) const LABEL_RTCP_ENC: u8 = 0x03;
pub(crate) const LABEL_RTCP_AUTH: u8 = 0x04;
pub(crate) const LABEL_RTCP_SALT: u8 = 0x05;

/// Session authentication key length for HMAC-SHA1 (RFC 3711 §8.2: n_a = 160).
const AUTH_KEY_LEN: usize = 20;

/// The ready-to-use keys of one direction of SRTP or SRTCP.
// Inline on purpose (one per key set, not per packet); boxing would cost a pointer chase.
#[allow(clippy::large_enum_variant)]
pub(crate) enum SessionKeys {
    /// AES counter mode + HMAC-SHA1: cipher, 112-bit session salt, keyed MAC.
    Cm {
        aes: AesKey,
        salt: [u8; 14],
        mac: HmacSha1,
    },
    /// AES-GCM: AEAD key and 96-bit session salt.
    Gcm { gcm: Gcm, salt: [u8; 12] },
}

impl SessionKeys {
    /// Derive the SRTP (`rtcp == false`) or SRTCP session keys for epoch `r` = index DIV kdr
    /// (0 when the key derivation rate is 0).
    pub(crate) fn derive(
        profile: Profile,
        prf: &AesKey,
        master_salt: &[u8],
        rtcp: bool,
        r: u64,
    ) -> SessionKeys {
        let (l_enc, l_auth, l_salt) = if rtcp {
            (LABEL_RTCP_ENC, LABEL_RTCP_AUTH, LABEL_RTCP_SALT)
        } else {
            (LABEL_RTP_ENC, LABEL_RTP_AUTH, LABEL_RTP_SALT)
        };
        let klen = profile.key_len();
        let mut enc = [0u8; 32];
        kdf(prf, master_salt, l_enc, r, &mut enc[..klen]);
        let keys = if profile.is_aead() {
            let mut salt = [0u8; 12];
            kdf(prf, master_salt, l_salt, r, &mut salt);
            SessionKeys::gcm(&enc[..klen], salt)
        } else {
            let mut salt = [0u8; 14];
            kdf(prf, master_salt, l_salt, r, &mut salt);
            let mut auth = [0u8; AUTH_KEY_LEN];
            kdf(prf, master_salt, l_auth, r, &mut auth);
            let k = SessionKeys::cm(&enc[..klen], salt, &auth);
            auth.fill(0);
            k
        };
        enc.fill(0);
        keys
    }

    /// From raw session keys (used by the RFC vectors, which publish session keys).
    pub(crate) fn cm(enc: &[u8], salt: [u8; 14], auth: &[u8]) -> SessionKeys {
        SessionKeys::Cm {
            aes: AesKey::new(enc),
            salt,
            mac: HmacSha1::new(auth),
        }
    }

    pub(crate) fn gcm(enc: &[u8], salt: [u8; 12]) -> SessionKeys {
        SessionKeys::Gcm {
            gcm: Gcm::new(enc),
            salt,
        }
    }
}

/// Everything derived from one master key, plus its usage counters (RFC 3711 §9.2).
pub(crate) struct KeySet {
    pub(crate) master: MasterKey,
    /// The master key expanded for the PRF (key derivation with a non-zero rate needs it later).
    pub(crate) prf: AesKey,
    /// Session keys for r = 0 (all packets when kdr = 0).
    pub(crate) rtp: SessionKeys,
    pub(crate) rtcp: SessionKeys,
    /// Distinguishes key sets in per-stream caches.
    pub(crate) generation: u32,
    /// SRTP / SRTCP packets processed under this master key.
    pub(crate) srtp_packets: u64,
    pub(crate) srtcp_packets: u64,
}

impl KeySet {
    pub(crate) fn new(master: MasterKey, generation: u32) -> KeySet {
        let profile = master.profile();
        let prf = AesKey::new(master.key());
        let rtp = SessionKeys::derive(profile, &prf, master.salt(), false, 0);
        let rtcp = SessionKeys::derive(profile, &prf, master.salt(), true, 0);
        KeySet {
            master,
            prf,
            rtp,
            rtcp,
            generation,
            srtp_packets: 0,
            srtcp_packets: 0,
        }
    }

    pub(crate) fn derive(&self, rtcp: bool, r: u64) -> SessionKeys {
        SessionKeys::derive(
            self.master.profile(),
            &self.prf,
            self.master.salt(),
            rtcp,
            r,
        )
    }
}
