//! Profiles and master keys.

use super::Error;

/// An SRTP protection profile.
///
/// Names follow the IANA "SRTP Protection Profiles" registry and SDES crypto-suite names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Profile {
    /// RFC 3711: AES-128 counter mode, HMAC-SHA1 with an 80-bit tag.
    Aes128CmSha1_80 = 1,
    /// RFC 3711: AES-128 counter mode, HMAC-SHA1 with a 32-bit SRTP tag (SRTCP keeps 80 bits).
    Aes128CmSha1_32 = 2,
    /// RFC 6188: AES-256 counter mode, HMAC-SHA1 80-bit tag.
    Aes256CmSha1_80 = 3,
    /// RFC 6188: AES-256 counter mode, HMAC-SHA1 32-bit SRTP tag.
    Aes256CmSha1_32 = 4,
    /// RFC 7714: AES-128-GCM, 16-byte tag.
    AeadAes128Gcm = 5,
    /// RFC 7714: AES-256-GCM, 16-byte tag.
    AeadAes256Gcm = 6,
}

impl Profile {
    /// Every profile, in the order Sluice prefers them (cheapest crypto first).
    pub const ALL: [Profile; 6] = [
        Profile::AeadAes128Gcm,
        Profile::AeadAes256Gcm,
        Profile::Aes128CmSha1_80,
        Profile::Aes128CmSha1_32,
        Profile::Aes256CmSha1_80,
        Profile::Aes256CmSha1_32,
    ];

    /// The registry name, e.g. `AES_CM_128_HMAC_SHA1_80`.
    pub const fn name(self) -> &'static str {
        match self {
            Profile::Aes128CmSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Profile::Aes128CmSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            Profile::Aes256CmSha1_80 => "AES_256_CM_HMAC_SHA1_80",
            Profile::Aes256CmSha1_32 => "AES_256_CM_HMAC_SHA1_32",
            Profile::AeadAes128Gcm => "AEAD_AES_128_GCM",
            Profile::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    /// Parse a registry name (case-insensitive; `SRTP_` prefix as in DTLS-SRTP names accepted).
    pub fn from_name(s: &str) -> Result<Profile, Error> {
        let s = s.trim();
        let s = s
            .strip_prefix("SRTP_")
            .or_else(|| s.strip_prefix("srtp_"))
            .unwrap_or(s);
        Profile::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or(Error::UnsupportedProfile)
    }

    /// The DTLS-SRTP protection profile id (RFC 5764 §4.1.2, RFC 7714 §14.2).
    /// The 256-bit counter-mode profiles have none.
    pub const fn dtls_id(self) -> Option<u16> {
        match self {
            Profile::Aes128CmSha1_80 => Some(0x0001),
            Profile::Aes128CmSha1_32 => Some(0x0002),
            Profile::AeadAes128Gcm => Some(0x0007),
            Profile::AeadAes256Gcm => Some(0x0008),
            Profile::Aes256CmSha1_80 | Profile::Aes256CmSha1_32 => None,
        }
    }

    /// The profile with a DTLS-SRTP id.
    pub fn from_dtls_id(id: u16) -> Result<Profile, Error> {
        Profile::ALL
            .into_iter()
            .find(|p| p.dtls_id() == Some(id))
            .ok_or(Error::UnsupportedProfile)
    }

    /// Stable one-byte code used in shared memory and persisted state.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Inverse of [`Profile::code`].
    pub fn from_code(c: u8) -> Result<Profile, Error> {
        Profile::ALL
            .into_iter()
            .find(|p| p.code() == c)
            .ok_or(Error::UnsupportedProfile)
    }

    /// True for the AEAD (GCM) profiles.
    pub const fn is_aead(self) -> bool {
        matches!(self, Profile::AeadAes128Gcm | Profile::AeadAes256Gcm)
    }

    /// Master (and session) encryption key length in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            Profile::Aes128CmSha1_80 | Profile::Aes128CmSha1_32 | Profile::AeadAes128Gcm => 16,
            _ => 32,
        }
    }

    /// Master salt length in bytes: 14 for counter mode, 12 for GCM (RFC 7714 §12).
    pub const fn salt_len(self) -> usize {
        if self.is_aead() {
            12
        } else {
            14
        }
    }

    /// Length of master key ‖ master salt, the SDES `inline:` / DTLS exporter unit.
    pub const fn key_material_len(self) -> usize {
        self.key_len() + self.salt_len()
    }

    /// The largest [`Profile::srtp_overhead`] of any profile: room a buffer keeps free for
    /// `protect_rtp` whatever the key.
    pub const MAX_SRTP_OVERHEAD: usize = 16;

    /// Bytes `protect_rtp` appends (authentication tag, or GCM tag).
    pub const fn srtp_overhead(self) -> usize {
        match self {
            Profile::Aes128CmSha1_80 | Profile::Aes256CmSha1_80 => 10,
            Profile::Aes128CmSha1_32 | Profile::Aes256CmSha1_32 => 4,
            Profile::AeadAes128Gcm | Profile::AeadAes256Gcm => 16,
        }
    }

    /// Bytes `protect_rtcp` appends (E‖index word plus tag; the RTCP tag is always 80 bits
    /// for HMAC-SHA1, RFC 3711 §3.4).
    pub const fn srtcp_overhead(self) -> usize {
        if self.is_aead() {
            16 + 4
        } else {
            10 + 4
        }
    }
}

impl core::fmt::Display for Profile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl core::str::FromStr for Profile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Profile::from_name(s)
    }
}

/// Master key ‖ master salt for one profile. Fixed size, `Copy`, no heap.
///
/// The bytes are secret: `Debug` prints only the profile.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MasterKey {
    profile: Profile,
    material: [u8; 46],
}

impl MasterKey {
    /// Largest key material: 32-byte key + 14-byte salt.
    pub const MAX_LEN: usize = 46;

    /// From raw master key ‖ master salt; the length must match the profile.
    pub fn new(profile: Profile, key_and_salt: &[u8]) -> Result<MasterKey, Error> {
        let expected = profile.key_material_len();
        if key_and_salt.len() != expected {
            return Err(Error::KeyLength {
                expected,
                got: key_and_salt.len(),
            });
        }
        let mut material = [0u8; 46];
        material[..expected].copy_from_slice(key_and_salt);
        Ok(MasterKey { profile, material })
    }

    /// From separate key and salt.
    pub fn from_parts(profile: Profile, key: &[u8], salt: &[u8]) -> Result<MasterKey, Error> {
        if key.len() != profile.key_len() || salt.len() != profile.salt_len() {
            return Err(Error::KeyLength {
                expected: profile.key_material_len(),
                got: key.len() + salt.len(),
            });
        }
        let mut material = [0u8; 46];
        material[..key.len()].copy_from_slice(key);
        material[key.len()..key.len() + salt.len()].copy_from_slice(salt);
        Ok(MasterKey { profile, material })
    }

    /// From SDES `inline:` base64 (standard alphabet, padding optional). A trailing
    /// `|lifetime|MKI:len` suffix as in RFC 4568 is not accepted: Sluice uses no MKI.
    pub fn from_base64(profile: Profile, b64: &str) -> Result<MasterKey, KeyParseError> {
        use base64::Engine as _;
        let b64 = b64.trim();
        let b64 = b64.strip_prefix("inline:").unwrap_or(b64);
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|_| KeyParseError::Base64)?;
        MasterKey::new(profile, &bytes).map_err(|e| match e {
            Error::KeyLength { expected, got } => KeyParseError::Length { expected, got },
            _ => KeyParseError::Base64,
        })
    }

    /// Standard base64 of key ‖ salt (the SDES `inline:` form, with padding).
    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.as_bytes())
    }

    pub const fn profile(&self) -> Profile {
        self.profile
    }

    /// Master key ‖ master salt.
    pub fn as_bytes(&self) -> &[u8] {
        &self.material[..self.profile.key_material_len()]
    }

    /// The master key.
    pub fn key(&self) -> &[u8] {
        &self.material[..self.profile.key_len()]
    }

    /// The master salt.
    pub fn salt(&self) -> &[u8] {
        &self.material[self.profile.key_len()..self.profile.key_material_len()]
    }
}

impl core::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MasterKey({}, <secret>)", self.profile)
    }
}

/// Why a base64 key string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    #[error("key is not valid base64")]
    Base64,
    #[error("key has {got} bytes but the profile needs {expected} (master key ‖ master salt)")]
    Length { expected: usize, got: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_srtp_overhead_is_the_largest() {
        let max = Profile::ALL.iter().map(|p| p.srtp_overhead()).max();
        assert_eq!(max, Some(Profile::MAX_SRTP_OVERHEAD));
    }

    #[test]
    fn names_round_trip() {
        for p in Profile::ALL {
            assert_eq!(Profile::from_name(p.name()).unwrap(), p);
            assert_eq!(Profile::from_code(p.code()).unwrap(), p);
            if let Some(id) = p.dtls_id() {
                assert_eq!(Profile::from_dtls_id(id).unwrap(), p);
            }
        }
        assert_eq!(
            Profile::from_name("SRTP_AEAD_AES_128_GCM").unwrap(),
            Profile::AeadAes128Gcm
        );
        assert!(Profile::from_name("NULL_HMAC_SHA1_80").is_err());
    }

    #[test]
    fn key_lengths() {
        let k = MasterKey::new(Profile::Aes128CmSha1_80, &[7u8; 30]).unwrap();
        assert_eq!(k.key().len(), 16);
        assert_eq!(k.salt().len(), 14);
        let b64 = k.to_base64();
        assert_eq!(
            MasterKey::from_base64(Profile::Aes128CmSha1_80, &b64).unwrap(),
            k
        );
        assert_eq!(
            MasterKey::from_base64(Profile::AeadAes256Gcm, &b64),
            Err(KeyParseError::Length {
                expected: 44,
                got: 30
            })
        );
        assert_eq!(
            MasterKey::from_base64(Profile::Aes128CmSha1_80, "not base64!"),
            Err(KeyParseError::Base64)
        );
    }
}
