//! DTLS-SRTP for one bench endpoint (RFC 5763/5764) through OpenSSL, the way control does it:
//! one self-signed ECDSA P-256 certificate for the whole run (its SHA-256 fingerprint in every
//! SDP we write), DTLS 1.2, `use_srtp` with the one profile the run measures, the peer's
//! certificate checked against the fingerprint of its SDP, and the RFC 5764 §4.2 exporter for
//! the SRTP master keys.
//!
//! Owns: the OpenSSL context and one association per endpoint over in-memory datagram queues.
//! May not touch: sockets (the caller moves datagrams), the clock (OpenSSL's own timer aside).

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use contract::srtp::{MasterKey, Profile};
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslMethod, SslOptions, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::{X509NameBuilder, X509Ref, X509VerifyResult, X509};

use crate::sys;

/// Largest DTLS datagram we send (our flights are fragmented to fit).
pub const MTU: u32 = 1200;
/// The RFC 5764 §4.2 exporter label.
const EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";
/// DTLS 1.2 suites for ECDSA or RSA server certificates.
const CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA";
/// Most datagrams queued towards OpenSSL for one association (a handshake needs a handful).
const MAX_INBOX: usize = 32;

/// Errors of the DTLS layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtlsError {
    #[error("DTLS setup: {0}")]
    Setup(String),
    #[error("profile {0} has no DTLS-SRTP id (RFC 5764 §4.1.2); pick a profile DTLS negotiates")]
    NoDtlsProfile(&'static str),
    #[error("DTLS handshake: {0}")]
    Handshake(String),
    #[error("the server's certificate does not match the fingerprint in its SDP")]
    FingerprintMismatch,
    #[error("unsupported fingerprint hash `{0}`")]
    Hash(String),
    #[error("the handshake completed without an SRTP profile")]
    NoSrtpProfile,
    #[error("the server chose SRTP profile id {0}, which was not offered")]
    WrongProfile(u16),
}

fn setup_err(e: impl std::fmt::Display) -> DtlsError {
    DtlsError::Setup(e.to_string())
}

/// OpenSSL's name of a DTLS-SRTP profile.
fn openssl_srtp_name(p: Profile) -> Option<&'static str> {
    match p {
        Profile::Aes128CmSha1_80 => Some("SRTP_AES128_CM_SHA1_80"),
        Profile::Aes128CmSha1_32 => Some("SRTP_AES128_CM_SHA1_32"),
        Profile::AeadAes128Gcm => Some("SRTP_AEAD_AES_128_GCM"),
        Profile::AeadAes256Gcm => Some("SRTP_AEAD_AES_256_GCM"),
        Profile::Aes256CmSha1_80 | Profile::Aes256CmSha1_32 => None,
    }
}

/// `sha-256 AB:CD:…` of a certificate for `hash`.
fn fingerprint_of(cert: &X509Ref, hash: &str) -> Result<String, DtlsError> {
    let md = match hash {
        "sha-1" => MessageDigest::sha1(),
        "sha-224" => MessageDigest::sha224(),
        "sha-256" => MessageDigest::sha256(),
        "sha-384" => MessageDigest::sha384(),
        "sha-512" => MessageDigest::sha512(),
        other => return Err(DtlsError::Hash(other.to_string())),
    };
    let d = cert.digest(md).map_err(setup_err)?;
    Ok(d.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// The run's certificate and OpenSSL context, shared by every endpoint.
pub struct Identity {
    ctx: SslContext,
    fingerprint: String,
    profile: Profile,
}

impl Identity {
    /// A fresh ECDSA P-256 self-signed certificate; `profile` is the only one offered.
    pub fn new(profile: Profile) -> Result<Identity, DtlsError> {
        let srtp = openssl_srtp_name(profile).ok_or(DtlsError::NoDtlsProfile(profile.name()))?;
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(setup_err)?;
        let key =
            PKey::from_ec_key(EcKey::generate(&group).map_err(setup_err)?).map_err(setup_err)?;
        let mut name = X509NameBuilder::new().map_err(setup_err)?;
        name.append_entry_by_nid(Nid::COMMONNAME, "sluice-bench")
            .map_err(setup_err)?;
        let name = name.build();
        let mut serial = BigNum::new().map_err(setup_err)?;
        serial
            .rand(63, MsbOption::MAYBE_ZERO, false)
            .map_err(setup_err)?;
        let mut b = X509::builder().map_err(setup_err)?;
        b.set_version(2).map_err(setup_err)?;
        let serial = serial.to_asn1_integer().map_err(setup_err)?;
        b.set_serial_number(&serial).map_err(setup_err)?;
        b.set_subject_name(&name).map_err(setup_err)?;
        b.set_issuer_name(&name).map_err(setup_err)?;
        b.set_pubkey(&key).map_err(setup_err)?;
        // Peers check the fingerprint, not validity; a day back tolerates skewed clocks.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let not_before = Asn1Time::from_unix(now - 86_400).map_err(setup_err)?;
        let not_after = Asn1Time::days_from_now(7).map_err(setup_err)?;
        b.set_not_before(&not_before).map_err(setup_err)?;
        b.set_not_after(&not_after).map_err(setup_err)?;
        b.sign(&key, MessageDigest::sha256()).map_err(setup_err)?;
        let cert = b.build();
        let fingerprint = format!("sha-256 {}", fingerprint_of(&cert, "sha-256")?);

        let mut ctx = SslContext::builder(SslMethod::dtls()).map_err(setup_err)?;
        ctx.set_min_proto_version(Some(SslVersion::DTLS1_2))
            .map_err(setup_err)?;
        ctx.set_max_proto_version(Some(SslVersion::DTLS1_2))
            .map_err(setup_err)?;
        ctx.set_cipher_list(CIPHERS).map_err(setup_err)?;
        ctx.set_tlsext_use_srtp(srtp).map_err(setup_err)?;
        ctx.set_options(SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET);
        ctx.set_certificate(&cert).map_err(setup_err)?;
        ctx.set_private_key(&key).map_err(setup_err)?;
        ctx.check_private_key().map_err(setup_err)?;
        Ok(Identity {
            ctx: ctx.build(),
            fingerprint,
            profile,
        })
    }

    /// Our `a=fingerprint` value.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Datagram queues between OpenSSL and the caller: one `read` is one datagram, one `write` one
/// datagram (OpenSSL's DTLS writes a datagram per BIO write).
#[derive(Debug, Default)]
struct MemStream {
    inbox: VecDeque<Vec<u8>>,
    outbox: Vec<Vec<u8>>,
}

impl Read for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inbox.pop_front() {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for MemStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbox.push(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// SRTP master keys from the handshake, as this endpoint uses them.
#[derive(Debug, Clone, Copy)]
pub struct SrtpKeys {
    pub profile: Profile,
    /// What the server encrypts with (we decrypt with it).
    pub rx: MasterKey,
    /// What we encrypt with.
    pub tx: MasterKey,
}

/// One association.
pub struct Dtls {
    stream: SslStream<MemStream>,
    client: bool,
    remote: (String, String),
    profile: Profile,
}

impl Dtls {
    /// `client`: we send the ClientHello (collect it with [`Dtls::take_transmits`]).
    /// `remote`: the server's `(hash, hex)` fingerprint from its SDP.
    pub fn new(id: &Identity, client: bool, remote: (String, String)) -> Result<Dtls, DtlsError> {
        let mut ssl = Ssl::new(&id.ctx).map_err(setup_err)?;
        ssl.set_mtu(MTU).map_err(setup_err)?;
        sys::dtls_install_timer(&mut ssl);
        let expected = remote.clone();
        // Self-signed peers: no chain is checked, the leaf must match the SDP (RFC 8122 §5).
        ssl.set_verify_callback(
            SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            move |_, store| {
                if store.error_depth() != 0 {
                    return true;
                }
                let ok = store
                    .current_cert()
                    .and_then(|c| fingerprint_of(c, &expected.0).ok())
                    .is_some_and(|fp| fp.eq_ignore_ascii_case(&expected.1));
                if !ok {
                    store.set_error(X509VerifyResult::APPLICATION_VERIFICATION);
                }
                ok
            },
        );
        if client {
            ssl.set_connect_state();
        } else {
            ssl.set_accept_state();
        }
        let stream = SslStream::new(ssl, MemStream::default()).map_err(setup_err)?;
        let mut d = Dtls {
            stream,
            client,
            remote,
            profile: id.profile,
        };
        if client {
            d.drive()?;
        }
        Ok(d)
    }

    /// Datagrams to send, oldest first.
    pub fn take_transmits(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.stream.get_mut().outbox)
    }

    /// Feed one DTLS datagram; the keys when the handshake completes.
    pub fn handle(&mut self, datagram: &[u8]) -> Result<Option<SrtpKeys>, DtlsError> {
        let inbox = &mut self.stream.get_mut().inbox;
        if inbox.len() >= MAX_INBOX {
            inbox.pop_front();
        }
        inbox.push_back(datagram.to_vec());
        self.drive()
    }

    /// Retransmit the last flight if OpenSSL's timer expired (RFC 6347 §4.2.4).
    pub fn on_timer(&mut self) -> Result<(), DtlsError> {
        if sys::dtls_handle_timeout(self.stream.ssl()) < 0 {
            return Err(DtlsError::Handshake(
                openssl::error::ErrorStack::get().to_string(),
            ));
        }
        Ok(())
    }

    fn drive(&mut self) -> Result<Option<SrtpKeys>, DtlsError> {
        match self.stream.do_handshake() {
            Ok(()) => self.keys().map(Some),
            Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {
                Ok(None)
            }
            Err(e) => {
                if self.stream.ssl().verify_result() == X509VerifyResult::APPLICATION_VERIFICATION {
                    Err(DtlsError::FingerprintMismatch)
                } else {
                    Err(DtlsError::Handshake(e.to_string()))
                }
            }
        }
    }

    fn keys(&self) -> Result<SrtpKeys, DtlsError> {
        let ssl = self.stream.ssl();
        let peer = ssl
            .peer_certificate()
            .ok_or(DtlsError::FingerprintMismatch)?;
        if !fingerprint_of(&peer, &self.remote.0)?.eq_ignore_ascii_case(&self.remote.1) {
            return Err(DtlsError::FingerprintMismatch);
        }
        let id = ssl
            .selected_srtp_profile()
            .ok_or(DtlsError::NoSrtpProfile)?
            .id()
            .as_raw();
        let id = u16::try_from(id).unwrap_or(u16::MAX);
        let profile = Profile::from_dtls_id(id).map_err(|_| DtlsError::WrongProfile(id))?;
        if profile != self.profile {
            return Err(DtlsError::WrongProfile(id));
        }
        let (kl, sl) = (profile.key_len(), profile.salt_len());
        let mut m = [0u8; 2 * MasterKey::MAX_LEN];
        let m = &mut m[..2 * (kl + sl)];
        ssl.export_keying_material(m, EXPORTER_LABEL, None)
            .map_err(|e| DtlsError::Handshake(format!("key export: {e}")))?;
        let part = |k: &[u8], s: &[u8]| {
            MasterKey::from_parts(profile, k, s)
                .map_err(|e| DtlsError::Handshake(format!("key export: {e}")))
        };
        // client_write_key ‖ server_write_key ‖ client_write_salt ‖ server_write_salt.
        let client = part(&m[..kl], &m[2 * kl..2 * kl + sl])?;
        let server = part(&m[kl..2 * kl], &m[2 * kl + sl..])?;
        m.fill(0);
        let (rx, tx) = if self.client {
            (server, client)
        } else {
            (client, server)
        };
        Ok(SrtpKeys { profile, rx, tx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(id: &Identity) -> (String, String) {
        let (h, hex) = id.fingerprint().split_once(' ').unwrap();
        (h.to_string(), hex.to_string())
    }

    /// Two bench endpoints handshake with each other; the keys mirror.
    fn pair(profile: Profile, wrong_fp: bool) -> Result<(SrtpKeys, SrtpKeys), DtlsError> {
        let a = Identity::new(profile)?;
        let b = Identity::new(profile)?;
        let mut b_fp = fp(&b);
        if wrong_fp {
            b_fp.1 = b_fp.1.replace(|c: char| c.is_ascii_hexdigit(), "0");
        }
        let mut client = Dtls::new(&a, true, b_fp)?;
        let mut server = Dtls::new(&b, false, fp(&a))?;
        let (mut ck, mut sk) = (None, None);
        for _ in 0..20 {
            for d in client.take_transmits() {
                if let Some(k) = server.handle(&d)? {
                    sk = Some(k);
                }
            }
            for d in server.take_transmits() {
                if let Some(k) = client.handle(&d)? {
                    ck = Some(k);
                }
            }
            if let (Some(c), Some(s)) = (ck, sk) {
                return Ok((c, s));
            }
        }
        Err(DtlsError::Handshake("did not complete".into()))
    }

    #[test]
    fn handshake_exports_mirrored_keys() {
        for p in [Profile::Aes128CmSha1_80, Profile::AeadAes128Gcm] {
            let (c, s) = pair(p, false).unwrap();
            assert_eq!(c.profile, p);
            assert_eq!(c.tx.to_base64(), s.rx.to_base64());
            assert_eq!(c.rx.to_base64(), s.tx.to_base64());
        }
    }

    #[test]
    fn wrong_fingerprint_and_profile_are_refused() {
        assert!(matches!(
            pair(Profile::Aes128CmSha1_80, true),
            Err(DtlsError::FingerprintMismatch) | Err(DtlsError::Handshake(_))
        ));
        assert!(matches!(
            Identity::new(Profile::Aes256CmSha1_80),
            Err(DtlsError::NoDtlsProfile(_))
        ));
    }
}
