//! Published test vectors and the start-up self-test.
//!
//! - RFC 3711 Appendix B.2 (AES-CM keystream) and B.3 (key derivation).
//! - RFC 6188 §7.2 (AES-256 key derivation).
//! - RFC 7714 §16 (SRTP AEAD_AES_128_GCM / AEAD_AES_256_GCM) and §17 (SRTCP), which publish
//!   session keys, so they drive the transforms directly.
//! - libsrtp's `srtp_driver` known-answer packets for AES_CM_128 and AES_256_CM with HMAC-SHA1
//!   (built on the RFC 3711 B.3 / RFC 6188 §7.2 master keys), which drive a whole [`Context`].
//!
//! Owns: the vectors. May not touch: anything but the public SRTP API and the transforms.

use super::crypto::{kdf, AesKey};
use super::keys::SessionKeys;
use super::transform;
use super::{Context, ContextOptions, Error, MasterKey, Profile};

/// Decode a constant hex string into `out`; returns the length. The vectors below are
/// well-formed, so a bad digit is a bug in this file. Stops when `out` is full.
fn hex(s: &str, out: &mut [u8]) -> usize {
    let mut n = 0;
    let mut hi: Option<u8> = None;
    for c in s.bytes() {
        if n == out.len() {
            break;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => continue,
        };
        match hi.take() {
            None => hi = Some(v),
            Some(h) => {
                out[n] = (h << 4) | v;
                n += 1;
            }
        }
    }
    n
}

pub(crate) const B2_KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
pub(crate) const B2_IV: &str = "F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000";
pub(crate) const B2_HEAD: &str = "E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB 41E95B3BB0A2E8DD477901E4FCA894C0";
#[cfg(test)]
pub(crate) const B2_TAIL: &str = "EC8CDF7398607CB0F2D21675EA9EA1E4 362B7C3C6773516318A077D7FC5073AE 6A2CC3787889374FBEB4C81B17BA6C44";

/// (master key, master salt, cipher key, cipher salt, first 20 bytes of the auth key)
pub(crate) const KDF_VECTORS: [(&str, &str, &str, &str, &str); 2] = [
    // RFC 3711 B.3
    (
        "E1F97A0D3E018BE0D64FA32C06DE4139",
        "0EC675AD498AFEEBB6960B3AABE6",
        "C61E7A93744F39EE10734AFE3FF7A087",
        "30CBBC08863D8C85D49DB34A9AE1",
        "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4",
    ),
    // RFC 6188 §7.2
    (
        "f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6",
        "3b04803de51ee7c96423ab5b78d2",
        "5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4",
        "fa31791685ca444a9e07c6c64e93",
        "fd9c32d39ed5fbb5a9dc96b30818454d1313dc05",
    ),
];

/// RTP packet of the counter-mode known-answer tests: header ‖ 16 × 0xab.
pub(crate) const CM_PLAIN: &str = "800f1234decafbadcafebabe abababababababababababababababab";
/// (profile, master key ‖ salt, protected packet)
pub(crate) const CM_PACKETS: [(Profile, &str, &str); 4] = [
    (
        Profile::Aes128CmSha1_80,
        "E1F97A0D3E018BE0D64FA32C06DE4139 0EC675AD498AFEEBB6960B3AABE6",
        "800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402 b78d6acc99ea179b8dbb",
    ),
    // The 32-bit tag is the first 4 bytes of the same HMAC (RFC 3711 §4.2.1).
    (
        Profile::Aes128CmSha1_32,
        "E1F97A0D3E018BE0D64FA32C06DE4139 0EC675AD498AFEEBB6960B3AABE6",
        "800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402 b78d6acc",
    ),
    (
        Profile::Aes256CmSha1_80,
        "f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6 3b04803de51ee7c96423ab5b78d2",
        "800f1234decafbadcafebabe f1d9de17ff251ff1aa007774b0b4b40d a08d9d9a5b3a55d8873b",
    ),
    (
        Profile::Aes256CmSha1_32,
        "f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6 3b04803de51ee7c96423ab5b78d2",
        "800f1234decafbadcafebabe f1d9de17ff251ff1aa007774b0b4b40d a08d9d9a",
    ),
];

/// RFC 7714 §16: session key 00 01 .. (16 or 32 bytes), salt "Quid pro quo".
pub(crate) const GCM_KEY: &str =
    "000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f";
pub(crate) const GCM_SALT: &str = "517569642070726f2071756f";
pub(crate) const GCM_RTP_PLAIN: &str = "8040f17b8041f8d35501a0b2 47616c6c696120657374206f6d6e697320646976697361 20696e2070617274657320747265 73";
pub(crate) const GCM_RTCP_PLAIN: &str = "81c8000d4d617273 4e5450314e545032525450200000042a0000e9304c756e61deadbeefdeadbeefdeadbeefdeadbeefdeadbeef";
pub(crate) const GCM_RTCP_INDEX: u32 = 0x5d4;
/// (profile, RFC 7714 §16.x.1 SRTP packet, §17.x SRTCP packet)
pub(crate) const GCM_PACKETS: [(Profile, &str, &str); 2] = [
    (
        Profile::AeadAes128Gcm,
        "8040f17b8041f8d35501a0b2 f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a51c7d19b36de3adf8833899d7f27beb16a9152cf765ee4390cce",
        "81c8000d4d617273 63e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1730d6fda4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf87245d9eade 800005d4",
    ),
    (
        Profile::AeadAes256Gcm,
        "8040f17b8041f8d35501a0b2 32b1de78a822fe12ef9f78fa332e33aab18012389a58e2f3b50b2a0276ffae0f1ba63799b87b7aa3db36dfffd6b0f9bb7878d7a76c13",
        "81c8000d4d617273 d50ae4d1f5ce5d304ba297e47d470c282c3ece5dbffe0a50a2eaa5c1110555be8415f658c61de0476f1b6fad1d1eb30c4446839f57ff6f6cb26ac3be 800005d4",
    ),
];

fn check(ok: bool) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::AuthFailed)
    }
}

/// RFC 3711 B.3 / RFC 6188 §7.2: the derived session keys.
fn kdf_vector(v: &(&str, &str, &str, &str, &str)) -> Result<(), Error> {
    let mut mk = [0u8; 32];
    let mut ms = [0u8; 14];
    let mut want = [0u8; 32];
    let mut got = [0u8; 32];
    let kl = hex(v.0, &mut mk);
    hex(v.1, &mut ms);
    let prf = AesKey::new(&mk[..kl]);
    for (label, expect) in [(0u8, v.2), (2, v.3), (1, v.4)] {
        let n = hex(expect, &mut want);
        kdf(&prf, &ms, label, 0, &mut got[..n]);
        check(got[..n] == want[..n])?;
    }
    Ok(())
}

/// RFC 3711 B.2: the first keystream blocks.
fn keystream_head() -> Result<(), Error> {
    let mut k = [0u8; 16];
    let mut iv = [0u8; 16];
    let mut want = [0u8; 48];
    hex(B2_KEY, &mut k);
    hex(B2_IV, &mut iv);
    hex(B2_HEAD, &mut want);
    let mut ks = [0u8; 48];
    AesKey::new(&k).xor_keystream(&iv, &mut ks);
    check(ks == want)
}

/// A whole-context known-answer packet, protect and unprotect.
fn cm_packet(profile: Profile, key: &str, protected: &str) -> Result<(), Error> {
    let mut km = [0u8; 46];
    let n = hex(key, &mut km);
    let key = MasterKey::new(profile, &km[..n])?;
    let mut buf = [0u8; 64];
    let mut want = [0u8; 64];
    let len = hex(CM_PLAIN, &mut buf);
    let wlen = hex(protected, &mut want);
    let mut tx = Context::new(key, ContextOptions::default())?;
    let out = tx.protect_rtp(&mut buf, len)?;
    check(out == wlen && buf[..out] == want[..wlen])?;
    let mut rx = Context::new(key, ContextOptions::default())?;
    let back = rx.unprotect_rtp(&mut buf, out)?;
    let mut plain = [0u8; 64];
    hex(CM_PLAIN, &mut plain);
    check(back == len && buf[..len] == plain[..len])
}

/// RFC 7714 §16.x and §17.x: GCM SRTP and SRTCP, protect and unprotect, with session keys.
pub(crate) fn gcm_packets(profile: Profile, srtp: &str, srtcp: &str) -> Result<(), Error> {
    let mut key = [0u8; 32];
    hex(GCM_KEY, &mut key);
    let mut salt = [0u8; 12];
    hex(GCM_SALT, &mut salt);
    let keys = SessionKeys::gcm(&key[..profile.key_len()], salt);
    let mut buf = [0u8; 128];
    let mut plain = [0u8; 128];
    let mut want = [0u8; 128];

    let len = hex(GCM_RTP_PLAIN, &mut buf);
    hex(GCM_RTP_PLAIN, &mut plain);
    let wlen = hex(srtp, &mut want);
    let h = transform::rtp_header(&buf[..len])?;
    let out = transform::protect_rtp(&keys, 16, &mut buf, len, h.len, h.ssrc, u64::from(h.seq));
    check(out == wlen && buf[..out] == want[..wlen])?;
    let back = transform::unprotect_rtp(&keys, 16, &mut buf, out, h.len, h.ssrc, u64::from(h.seq))?;
    check(back == len && buf[..len] == plain[..len])?;

    let len = hex(GCM_RTCP_PLAIN, &mut buf);
    hex(GCM_RTCP_PLAIN, &mut plain);
    let wlen = hex(srtcp, &mut want);
    let ssrc = transform::rtcp_ssrc(&buf[..len])?;
    let out = transform::protect_rtcp(&keys, &mut buf, len, ssrc, GCM_RTCP_INDEX);
    check(out == wlen && buf[..out] == want[..wlen])?;
    let back = transform::unprotect_rtcp(&keys, &mut buf, out, ssrc, &mut [])?;
    check(back == len && buf[..len] == plain[..len])
}

/// Start-up self-test: one published vector per profile (plus the RFC 3711 B.2/B.3 and
/// RFC 6188 key-derivation vectors the counter-mode profiles rest on). Any mismatch returns
/// `Err` (`AuthFailed` for a wrong answer); the relay refuses to start then.
pub fn self_test() -> Result<(), Error> {
    keystream_head()?;
    for v in &KDF_VECTORS {
        kdf_vector(v)?;
    }
    for p in Profile::ALL {
        if let Some((_, key, pkt)) = CM_PACKETS.iter().find(|v| v.0 == p) {
            cm_packet(p, key, pkt)?;
        } else if let Some((_, srtp, srtcp)) = GCM_PACKETS.iter().find(|v| v.0 == p) {
            gcm_packets(p, srtp, srtcp)?;
        } else {
            return Err(Error::UnsupportedProfile);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_test_passes() {
        self_test().unwrap();
    }

    #[test]
    fn rfc3711_b2_keystream_head_and_tail() {
        keystream_head().unwrap();
        // The full 1044512-octet segment: blocks 0xFEFF, 0xFF00, 0xFF01 close it.
        let mut k = [0u8; 16];
        let mut iv = [0u8; 16];
        let mut want = [0u8; 48];
        hex(B2_KEY, &mut k);
        hex(B2_IV, &mut iv);
        hex(B2_TAIL, &mut want);
        let mut ks = vec![0u8; 65282 * 16];
        AesKey::new(&k).xor_keystream(&iv, &mut ks);
        assert_eq!(&ks[ks.len() - 48..], &want[..]);
    }

    #[test]
    fn rfc3711_b3_key_derivation() {
        kdf_vector(&KDF_VECTORS[0]).unwrap();
    }

    /// Non-zero key derivation rate: r = index DIV kdr = 0x1234 (e.g. index 0x123456, kdr 2^8)
    /// on the B.3 master key. Expected values computed independently with
    /// `openssl enc -aes-128-ctr` on the RFC 3711 §4.3.1 input block (salt XOR label ‖ r).
    #[test]
    fn key_derivation_with_rate() {
        let mut mk = [0u8; 16];
        let mut ms = [0u8; 14];
        hex(KDF_VECTORS[0].0, &mut mk);
        hex(KDF_VECTORS[0].1, &mut ms);
        let prf = AesKey::new(&mk);
        let r = 0x0012_3456u64 / 256;
        for (label, want) in [
            (0u8, "7b1f30e6d4a053196c5433114031f202"),
            (2, "9d67af0675445d47a7f82d82aafb"),
            (1, "144416611b1e164486860aac79e8be5daf94f195"),
        ] {
            let mut w = [0u8; 20];
            let n = hex(want, &mut w);
            let mut got = [0u8; 20];
            kdf(&prf, &ms, label, r, &mut got[..n]);
            assert_eq!(got[..n], w[..n], "label {label}");
        }
    }

    #[test]
    fn rfc6188_7_2_aes256_key_derivation() {
        kdf_vector(&KDF_VECTORS[1]).unwrap();
    }

    #[test]
    fn rfc7714_16_17_aes128_gcm() {
        let (p, a, b) = GCM_PACKETS[0];
        gcm_packets(p, a, b).unwrap();
    }

    #[test]
    fn rfc7714_16_17_aes256_gcm() {
        let (p, a, b) = GCM_PACKETS[1];
        gcm_packets(p, a, b).unwrap();
    }

    #[test]
    fn rfc7714_tampered_vectors_fail() {
        let mut key = [0u8; 16];
        hex(GCM_KEY, &mut key);
        let mut salt = [0u8; 12];
        hex(GCM_SALT, &mut salt);
        let keys = SessionKeys::gcm(&key, salt);
        let mut buf = [0u8; 128];
        let n = hex(GCM_PACKETS[0].1, &mut buf);
        buf[20] ^= 1;
        assert_eq!(
            transform::unprotect_rtp(&keys, 16, &mut buf, n, 12, 0x5501a0b2, 0xf17b),
            Err(Error::AuthFailed)
        );
        let n = hex(GCM_PACKETS[0].2, &mut buf);
        buf[n - 1] ^= 1; // the index is authenticated too
        assert_eq!(
            transform::unprotect_rtcp(&keys, &mut buf, n, 0x4d617273, &mut []),
            Err(Error::AuthFailed)
        );
    }

    #[test]
    fn cm_known_answer_packets() {
        for (p, k, pkt) in CM_PACKETS {
            cm_packet(p, k, pkt).unwrap();
        }
    }
}
