//! DTLS 1.2 endpoint over memory, for DTLS-SRTP key exchange (RFC 6347, RFC 5764).
//!
//! Owns: the per-peer DTLS state machine (OpenSSL under a memory stream), our self-signed
//! certificate and its fingerprint, peer-fingerprint verification, SRTP profile negotiation,
//! retransmission bounds and the keying-material export to [`contract::srtp::MasterKey`].
//! May not touch: sockets, threads, shared memory, the wall clock for its own deadlines
//! (`now` is passed in). Datagrams in and out are plain byte vectors; the caller sends them
//! through the relay's port. The only `unsafe` is in `crate::ffi::dtls_ffi`.
//!
//! OpenSSL's retransmission timer itself reads the system clock (it cannot be injected), so
//! [`Dtls::poll_timeout`] reports OpenSSL's remaining time relative to the `now` passed in and
//! [`Dtls::handle_timeout`] asks OpenSSL to retransmit only when its own timer has expired.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use contract::srtp::{MasterKey, Profile};
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslMethod, SslOptions, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::{X509NameBuilder, X509Ref, X509VerifyResult, X509};

use crate::ffi::dtls_ffi;

/// Which side of the DTLS handshake we play (RFC 5763 §5: `a=setup:passive` is the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtlsRole {
    Client,
    Server,
}

/// Why a DTLS endpoint failed. One variant per cause; the daemon counts and logs them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtlsError {
    /// The datagram is not a sequence of well-formed DTLS records.
    #[error("malformed DTLS datagram: {0}")]
    Malformed(&'static str),
    /// OpenSSL refused the handshake (alert received, protocol error, ...).
    #[error("DTLS handshake failed: {0}")]
    Handshake(String),
    /// The handshake completed but no SRTP protection profile was negotiated (RFC 5764 §4.1.2).
    #[error("no common SRTP protection profile")]
    NoSrtpProfile,
    /// The negotiated SRTP profile is not one Sluice implements.
    #[error("unsupported SRTP protection profile {0:#06x}")]
    UnsupportedSrtpProfile(u16),
    /// The peer's certificate does not match the fingerprint from its SDP (RFC 8122 §5).
    #[error("peer certificate does not match the SDP fingerprint")]
    FingerprintMismatch,
    /// The peer sent no certificate.
    #[error("peer sent no certificate")]
    NoPeerCertificate,
    /// The handshake did not complete before the endpoint's deadline.
    #[error("DTLS handshake timed out")]
    HandshakeTimeout,
    /// The handshake needed more retransmissions than allowed.
    #[error("DTLS handshake gave up after {0} retransmissions")]
    TooManyRetransmits(u32),
    /// The endpoint already failed or was closed.
    #[error("DTLS endpoint is closed")]
    Closed,
    /// Certificate generation or loading failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// Setting up the OpenSSL context failed (a build without SRTP support, for instance).
    #[error("DTLS setup: {0}")]
    Setup(String),
    /// An SDP fingerprint could not be parsed.
    #[error("bad fingerprint: {0}")]
    BadFingerprint(&'static str),
}

fn setup_err(e: impl fmt::Display) -> DtlsError {
    DtlsError::Setup(e.to_string())
}

fn cert_err(e: impl fmt::Display) -> DtlsError {
    DtlsError::Certificate(e.to_string())
}

/// Hash function of a certificate fingerprint (RFC 8122 §5, `hash-func` tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashFunc {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl HashFunc {
    /// The SDP token, e.g. `sha-256`.
    pub const fn name(self) -> &'static str {
        match self {
            HashFunc::Sha1 => "sha-1",
            HashFunc::Sha224 => "sha-224",
            HashFunc::Sha256 => "sha-256",
            HashFunc::Sha384 => "sha-384",
            HashFunc::Sha512 => "sha-512",
        }
    }

    const fn digest_len(self) -> usize {
        match self {
            HashFunc::Sha1 => 20,
            HashFunc::Sha224 => 28,
            HashFunc::Sha256 => 32,
            HashFunc::Sha384 => 48,
            HashFunc::Sha512 => 64,
        }
    }

    fn message_digest(self) -> MessageDigest {
        match self {
            HashFunc::Sha1 => MessageDigest::sha1(),
            HashFunc::Sha224 => MessageDigest::sha224(),
            HashFunc::Sha256 => MessageDigest::sha256(),
            HashFunc::Sha384 => MessageDigest::sha384(),
            HashFunc::Sha512 => MessageDigest::sha512(),
        }
    }
}

/// A certificate fingerprint as carried in SDP `a=fingerprint:` (RFC 8122 §5).
#[derive(Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub hash: HashFunc,
    pub bytes: Vec<u8>,
}

impl Fingerprint {
    /// Parse `sha-256 AB:CD:...` (the value of `a=fingerprint:`); hash names are
    /// case-insensitive (RFC 8122 §5), hex digits of either case.
    pub fn parse(s: &str) -> Result<Fingerprint, DtlsError> {
        let mut it = s.split_ascii_whitespace();
        let name = it.next().ok_or(DtlsError::BadFingerprint("empty"))?;
        let hex = it
            .next()
            .ok_or(DtlsError::BadFingerprint("missing value"))?;
        if it.next().is_some() {
            return Err(DtlsError::BadFingerprint("trailing data"));
        }
        let hash = [
            HashFunc::Sha1,
            HashFunc::Sha224,
            HashFunc::Sha256,
            HashFunc::Sha384,
            HashFunc::Sha512,
        ]
        .into_iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .ok_or(DtlsError::BadFingerprint("unsupported hash function"))?;
        let mut bytes = Vec::with_capacity(hash.digest_len());
        for pair in hex.split(':') {
            if pair.len() != 2 {
                return Err(DtlsError::BadFingerprint("bad hex pair"));
            }
            let b = u8::from_str_radix(pair, 16)
                .map_err(|_| DtlsError::BadFingerprint("bad hex digit"))?;
            bytes.push(b);
        }
        if bytes.len() != hash.digest_len() {
            return Err(DtlsError::BadFingerprint("wrong length for hash function"));
        }
        Ok(Fingerprint { hash, bytes })
    }

    /// Fingerprint of a certificate (DER) with `hash`.
    pub fn of_cert(cert: &X509Ref, hash: HashFunc) -> Result<Fingerprint, DtlsError> {
        let d = cert.digest(hash.message_digest()).map_err(cert_err)?;
        Ok(Fingerprint {
            hash,
            bytes: d.to_vec(),
        })
    }

    /// Constant-time comparison of the digest bytes (same hash function required).
    pub fn matches(&self, other: &Fingerprint) -> bool {
        self.hash == other.hash
            && self.bytes.len() == other.bytes.len()
            && openssl::memcmp::eq(&self.bytes, &other.bytes)
    }
}

impl fmt::Display for Fingerprint {
    /// `sha-256 AB:CD:...`, the SDP form (upper-case hex, RFC 8122 §5).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hash.name())?;
        f.write_str(" ")?;
        for (i, b) in self.bytes.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Our DTLS identity: a self-signed certificate, its private key and SHA-256 fingerprint.
#[derive(Clone)]
pub struct Certificate {
    cert: X509,
    key: PKey<Private>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Certificate({})", self.fingerprint)
    }
}

impl Certificate {
    /// A fresh ECDSA P-256 key and self-signed certificate (what browsers generate too).
    pub fn generate() -> Result<Certificate, DtlsError> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(cert_err)?;
        let ec = EcKey::generate(&group).map_err(cert_err)?;
        let key = PKey::from_ec_key(ec).map_err(cert_err)?;
        Certificate::self_signed(key)
    }

    /// A fresh RSA key of `bits` and self-signed certificate; for interoperability tests
    /// (some peers still present RSA certificates).
    pub fn generate_rsa(bits: u32) -> Result<Certificate, DtlsError> {
        let rsa = Rsa::generate(bits).map_err(cert_err)?;
        let key = PKey::from_rsa(rsa).map_err(cert_err)?;
        Certificate::self_signed(key)
    }

    fn self_signed(key: PKey<Private>) -> Result<Certificate, DtlsError> {
        let mut name = X509NameBuilder::new().map_err(cert_err)?;
        name.append_entry_by_nid(Nid::COMMONNAME, "sluice")
            .map_err(cert_err)?;
        let name = name.build();
        let mut serial = BigNum::new().map_err(cert_err)?;
        serial
            .rand(63, MsbOption::MAYBE_ZERO, false)
            .map_err(cert_err)?;
        let serial = serial.to_asn1_integer().map_err(cert_err)?;
        let mut b = X509::builder().map_err(cert_err)?;
        b.set_version(2).map_err(cert_err)?;
        b.set_serial_number(&serial).map_err(cert_err)?;
        b.set_subject_name(&name).map_err(cert_err)?;
        b.set_issuer_name(&name).map_err(cert_err)?;
        b.set_pubkey(&key).map_err(cert_err)?;
        // Validity is not checked by WebRTC peers (the fingerprint is); a day back tolerates
        // skewed peer clocks, 30 days covers any session.
        let not_before = Asn1Time::from_unix(now_unix_secs() - 86_400).map_err(cert_err)?;
        let not_after = Asn1Time::days_from_now(30).map_err(cert_err)?;
        b.set_not_before(&not_before).map_err(cert_err)?;
        b.set_not_after(&not_after).map_err(cert_err)?;
        b.sign(&key, MessageDigest::sha256()).map_err(cert_err)?;
        let cert = b.build();
        let fingerprint = Fingerprint::of_cert(&cert, HashFunc::Sha256)?;
        Ok(Certificate {
            cert,
            key,
            fingerprint,
        })
    }

    /// Load a PEM certificate and PEM (PKCS#8 or traditional) private key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Certificate, DtlsError> {
        let cert = X509::from_pem(cert_pem).map_err(cert_err)?;
        let key = PKey::private_key_from_pem(key_pem).map_err(cert_err)?;
        let fingerprint = Fingerprint::of_cert(&cert, HashFunc::Sha256)?;
        Ok(Certificate {
            cert,
            key,
            fingerprint,
        })
    }

    /// The certificate as PEM (public).
    pub fn cert_pem(&self) -> Result<Vec<u8>, DtlsError> {
        self.cert.to_pem().map_err(cert_err)
    }

    /// The private key as PKCS#8 PEM (secret: store it encrypted or mode 0600).
    pub fn key_pem(&self) -> Result<Vec<u8>, DtlsError> {
        self.key.private_key_to_pem_pkcs8().map_err(cert_err)
    }

    /// SHA-256 fingerprint for our SDP `a=fingerprint:`.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }
}

fn now_unix_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// SRTP profiles in the order we offer them (RFC 5764 §4.1.1; cheapest crypto after the
/// strongest AEAD, see design.md "SRTP profiles").
pub const DEFAULT_SRTP_PROFILES: [Profile; 4] = [
    Profile::AeadAes256Gcm,
    Profile::AeadAes128Gcm,
    Profile::Aes128CmSha1_80,
    Profile::Aes128CmSha1_32,
];

/// Bounds and sizes of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtlsConfig {
    /// Largest datagram we emit (DTLS fragments handshake messages to fit, RFC 6347 §4.1.1.1).
    pub mtu: u16,
    /// The handshake must complete within this time of [`Dtls::new`].
    pub handshake_timeout: Duration,
    /// At most this many retransmitted flights.
    pub max_retransmits: u32,
}

impl Default for DtlsConfig {
    fn default() -> Self {
        DtlsConfig {
            mtu: 1200,
            handshake_timeout: Duration::from_secs(15),
            max_retransmits: 7,
        }
    }
}

/// Keys for the two SRTP directions of a completed DTLS-SRTP association.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrtpKeys {
    pub profile: Profile,
    /// What the peer encrypts with; we decrypt with it.
    pub rx: MasterKey,
    /// What we encrypt with towards the peer.
    pub tx: MasterKey,
}

/// Where an endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Handshaking,
    Connected,
    Failed,
    Closed,
}

/// Datagram queues between OpenSSL and the caller. Each `read` yields one whole datagram,
/// each `write` is one datagram (OpenSSL's DTLS writes a datagram per BIO write).
#[derive(Debug, Default)]
struct MemStream {
    inbox: VecDeque<Vec<u8>>,
    outbox: Vec<Vec<u8>>,
}

impl Read for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inbox.pop_front() {
            Some(d) => {
                // A datagram longer than OpenSSL's buffer is truncated, as a UDP socket would.
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

/// OpenSSL's names for the DTLS-SRTP profiles (RFC 5764 §4.1.2, RFC 7714 §14.2).
fn openssl_srtp_name(p: Profile) -> Option<&'static str> {
    match p {
        Profile::Aes128CmSha1_80 => Some("SRTP_AES128_CM_SHA1_80"),
        Profile::Aes128CmSha1_32 => Some("SRTP_AES128_CM_SHA1_32"),
        Profile::AeadAes128Gcm => Some("SRTP_AEAD_AES_128_GCM"),
        Profile::AeadAes256Gcm => Some("SRTP_AEAD_AES_256_GCM"),
        Profile::Aes256CmSha1_80 | Profile::Aes256CmSha1_32 => None,
    }
}

/// The RFC 5764 §4.2 exporter label.
const EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";

/// One DTLS 1.2 association with one peer, driven entirely by the caller.
pub struct Dtls {
    stream: SslStream<MemStream>,
    role: DtlsRole,
    remote: Fingerprint,
    state: State,
    deadline: Instant,
    retransmits: u32,
    config: DtlsConfig,
    keys: Option<SrtpKeys>,
}

impl fmt::Debug for Dtls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dtls")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("retransmits", &self.retransmits)
            .finish()
    }
}

/// Cipher suites for DTLS 1.2 with ECDSA or RSA certificates (what browsers offer).
const CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA";

impl Dtls {
    /// A new endpoint. `profiles` are offered (client) or accepted (server) in that order;
    /// `remote` is the fingerprint from the peer's SDP, checked against its certificate.
    /// A client queues its ClientHello at once: collect it with [`Dtls::take_transmits`].
    pub fn new(
        role: DtlsRole,
        cert: &Certificate,
        profiles: &[Profile],
        remote: Fingerprint,
        config: DtlsConfig,
        now: Instant,
    ) -> Result<Dtls, DtlsError> {
        let names: Vec<&str> = profiles
            .iter()
            .filter_map(|p| openssl_srtp_name(*p))
            .collect();
        if names.is_empty() {
            return Err(DtlsError::NoSrtpProfile);
        }
        let mut ctx = SslContext::builder(SslMethod::dtls()).map_err(setup_err)?;
        ctx.set_min_proto_version(Some(SslVersion::DTLS1_2))
            .map_err(setup_err)?;
        ctx.set_max_proto_version(Some(SslVersion::DTLS1_2))
            .map_err(setup_err)?;
        ctx.set_cipher_list(CIPHERS).map_err(setup_err)?;
        ctx.set_groups_list("X25519:P-256:P-384")
            .map_err(setup_err)?;
        ctx.set_tlsext_use_srtp(&names.join(":"))
            .map_err(setup_err)?;
        ctx.set_options(SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET);
        ctx.set_certificate(&cert.cert).map_err(setup_err)?;
        ctx.set_private_key(&cert.key).map_err(setup_err)?;
        ctx.check_private_key().map_err(setup_err)?;
        // Peers present self-signed certificates: no CA chain is checked, the leaf must match
        // the SDP fingerprint (RFC 8122 §5, RFC 5763 §5). Checking here makes a mismatch fail
        // the handshake with a bad_certificate alert instead of completing it.
        let expected = remote.clone();
        ctx.set_verify_callback(
            SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            move |_preverified, store| {
                if store.error_depth() != 0 {
                    return true;
                }
                let ok = store
                    .current_cert()
                    .and_then(|c| Fingerprint::of_cert(c, expected.hash).ok())
                    .is_some_and(|fp| fp.matches(&expected));
                if !ok {
                    store.set_error(X509VerifyResult::APPLICATION_VERIFICATION);
                }
                ok
            },
        );
        let ctx = ctx.build();
        let mut ssl = Ssl::new(&ctx).map_err(setup_err)?;
        ssl.set_mtu(u32::from(config.mtu)).map_err(setup_err)?;
        dtls_ffi::install_timer(&mut ssl);
        match role {
            DtlsRole::Client => ssl.set_connect_state(),
            DtlsRole::Server => ssl.set_accept_state(),
        }
        let stream = SslStream::new(ssl, MemStream::default()).map_err(setup_err)?;
        let mut d = Dtls {
            stream,
            role,
            remote,
            state: State::Handshaking,
            deadline: now + config.handshake_timeout,
            retransmits: 0,
            config,
            keys: None,
        };
        if role == DtlsRole::Client {
            d.drive()?;
        }
        Ok(d)
    }

    pub fn role(&self) -> DtlsRole {
        self.role
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The SRTP keys once connected.
    pub fn keys(&self) -> Option<&SrtpKeys> {
        self.keys.as_ref()
    }

    /// Retransmitted flights so far.
    pub fn retransmits(&self) -> u32 {
        self.retransmits
    }

    /// Datagrams to send to the peer, oldest first (drain after every call, errors included:
    /// a failing handshake may have queued an alert).
    pub fn take_transmits(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.stream.get_mut().outbox)
    }

    /// Feed one datagram from the peer. Returns the SRTP keys exactly once, when the
    /// handshake completes. A datagram that is not well-formed DTLS is refused with
    /// [`DtlsError::Malformed`] without disturbing the association.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
    ) -> Result<Option<SrtpKeys>, DtlsError> {
        match self.state {
            State::Failed | State::Closed => return Err(DtlsError::Closed),
            State::Handshaking if now >= self.deadline => {
                return self.fail(DtlsError::HandshakeTimeout)
            }
            _ => {}
        }
        check_records(datagram)?;
        self.stream.get_mut().inbox.push_back(datagram.to_vec());
        match self.state {
            State::Handshaking => {
                self.drive()?;
                if self.state == State::Connected {
                    Ok(self.keys)
                } else {
                    Ok(None)
                }
            }
            _ => {
                self.read_after_handshake()?;
                Ok(None)
            }
        }
    }

    /// When [`Dtls::handle_timeout`] should next be called, if at all.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        if self.state != State::Handshaking {
            return None;
        }
        let retransmit = dtls_ffi::get_timeout(self.stream.ssl()).map(|left| now + left);
        Some(match retransmit {
            Some(t) if t < self.deadline => t,
            _ => self.deadline,
        })
    }

    /// Enforce the deadline and the retransmission cap; retransmit the last flight when
    /// OpenSSL's timer has expired (RFC 6347 §4.2.4).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsError> {
        if self.state != State::Handshaking {
            return Ok(());
        }
        if now >= self.deadline {
            return self.fail(DtlsError::HandshakeTimeout);
        }
        match dtls_ffi::get_timeout(self.stream.ssl()) {
            Some(left) if left.is_zero() => {}
            _ => return Ok(()),
        }
        if self.retransmits >= self.config.max_retransmits {
            return self.fail(DtlsError::TooManyRetransmits(self.retransmits));
        }
        let r = dtls_ffi::handle_timeout(self.stream.ssl());
        if r < 0 {
            let e = DtlsError::Handshake(openssl::error::ErrorStack::get().to_string());
            return self.fail(e);
        }
        if r > 0 {
            self.retransmits += 1;
        }
        Ok(())
    }

    /// Send close_notify and stop. Collect the alert with [`Dtls::take_transmits`].
    pub fn close(&mut self) {
        if matches!(self.state, State::Connected | State::Handshaking) {
            // Best effort: a failure to queue close_notify leaves nothing to send.
            let _ = self.stream.shutdown();
        }
        self.state = State::Closed;
    }

    fn fail<T>(&mut self, e: DtlsError) -> Result<T, DtlsError> {
        self.state = State::Failed;
        Err(e)
    }

    /// Run the handshake as far as the queued input allows.
    fn drive(&mut self) -> Result<(), DtlsError> {
        match self.stream.do_handshake() {
            Ok(()) => self.on_connected(),
            Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {
                Ok(())
            }
            Err(e) => {
                let mismatch =
                    self.stream.ssl().verify_result() == X509VerifyResult::APPLICATION_VERIFICATION;
                let err = if mismatch {
                    DtlsError::FingerprintMismatch
                } else {
                    DtlsError::Handshake(e.to_string())
                };
                self.fail(err)
            }
        }
    }

    /// After the handshake: let OpenSSL answer retransmitted flights and notice alerts.
    /// Application data is not used on this association (no SCTP data channels): discarded.
    fn read_after_handshake(&mut self) -> Result<(), DtlsError> {
        let mut buf = [0u8; 2048];
        loop {
            match self.stream.ssl_read(&mut buf) {
                Ok(0) => {
                    self.state = State::Closed;
                    return Ok(());
                }
                Ok(_) => continue,
                Err(e) if e.code() == ErrorCode::WANT_READ => return Ok(()),
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    self.state = State::Closed;
                    return Ok(());
                }
                Err(e) => return self.fail(DtlsError::Handshake(e.to_string())),
            }
        }
    }

    fn on_connected(&mut self) -> Result<(), DtlsError> {
        let ssl = self.stream.ssl();
        let peer = match ssl.peer_certificate() {
            Some(c) => c,
            None => return self.fail(DtlsError::NoPeerCertificate),
        };
        let fp = Fingerprint::of_cert(&peer, self.remote.hash)?;
        if !fp.matches(&self.remote) {
            return self.fail(DtlsError::FingerprintMismatch);
        }
        let id = match ssl.selected_srtp_profile() {
            Some(p) => p.id().as_raw(),
            None => return self.fail(DtlsError::NoSrtpProfile),
        };
        let id16 = u16::try_from(id).unwrap_or(u16::MAX);
        let profile = match Profile::from_dtls_id(id16) {
            Ok(p) => p,
            Err(_) => return self.fail(DtlsError::UnsupportedSrtpProfile(id16)),
        };
        let keys = match export_keys(ssl, profile, self.role) {
            Ok(k) => k,
            Err(e) => return self.fail(e),
        };
        self.keys = Some(keys);
        self.state = State::Connected;
        Ok(())
    }
}

/// RFC 5764 §4.2: 2 × (key + salt) from the exporter, laid out client_write_key,
/// server_write_key, client_write_salt, server_write_salt.
fn export_keys(
    ssl: &openssl::ssl::SslRef,
    profile: Profile,
    role: DtlsRole,
) -> Result<SrtpKeys, DtlsError> {
    let (kl, sl) = (profile.key_len(), profile.salt_len());
    let mut m = [0u8; 2 * MasterKey::MAX_LEN];
    let m = &mut m[..2 * (kl + sl)];
    ssl.export_keying_material(m, EXPORTER_LABEL, None)
        .map_err(|e| DtlsError::Handshake(format!("key export: {e}")))?;
    let client_key = &m[..kl];
    let server_key = &m[kl..2 * kl];
    let client_salt = &m[2 * kl..2 * kl + sl];
    let server_salt = &m[2 * kl + sl..];
    let key_err = |e: contract::srtp::Error| DtlsError::Handshake(format!("key export: {e}"));
    let client = MasterKey::from_parts(profile, client_key, client_salt).map_err(key_err)?;
    let server = MasterKey::from_parts(profile, server_key, server_salt).map_err(key_err)?;
    let (rx, tx) = match role {
        DtlsRole::Client => (server, client),
        DtlsRole::Server => (client, server),
    };
    m.fill(0);
    Ok(SrtpKeys { profile, rx, tx })
}

/// Check that a datagram is one or more whole DTLS records (RFC 6347 §4.1): content type
/// 20–23, version DTLS 1.0 or 1.2, 13-byte header, length within the datagram. The record
/// framing is the relay's parser (`contract::wire::dtls`), shared with the slow-path classifier.
fn check_records(d: &[u8]) -> Result<(), DtlsError> {
    use contract::wire::dtls::{records, DtlsError as WireError};
    if d.is_empty() {
        return Err(DtlsError::Malformed("empty datagram"));
    }
    for rec in records(d) {
        let rec = rec.map_err(|e| {
            DtlsError::Malformed(match e {
                WireError::TooShort => "truncated record header",
                WireError::RecordOverrun => "record longer than datagram",
                WireError::BadVersion(_) | WireError::UnifiedHeader => "not a DTLS 1.0/1.2 record",
                WireError::BadFragment => "bad handshake fragment",
            })
        })?;
        if !(20..=23).contains(&rec.content_type) {
            return Err(DtlsError::Malformed("unknown content type"));
        }
        if rec.version != 0xFEFF && rec.version != 0xFEFD {
            return Err(DtlsError::Malformed("not a DTLS 1.0/1.2 record"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        server: Dtls,
        client: Dtls,
    }

    fn pair(
        server_cert: &Certificate,
        client_cert: &Certificate,
        server_profiles: &[Profile],
        client_profiles: &[Profile],
        now: Instant,
    ) -> Pair {
        let server = Dtls::new(
            DtlsRole::Server,
            server_cert,
            server_profiles,
            client_cert.fingerprint().clone(),
            DtlsConfig::default(),
            now,
        )
        .unwrap();
        let client = Dtls::new(
            DtlsRole::Client,
            client_cert,
            client_profiles,
            server_cert.fingerprint().clone(),
            DtlsConfig::default(),
            now,
        )
        .unwrap();
        Pair { server, client }
    }

    /// Deliver datagrams both ways until neither side has anything to send. Returns the keys
    /// each side reported and the first error each side hit.
    #[allow(clippy::type_complexity)]
    fn pump(
        p: &mut Pair,
        now: Instant,
    ) -> (
        Option<SrtpKeys>,
        Option<SrtpKeys>,
        Option<DtlsError>,
        Option<DtlsError>,
    ) {
        let (mut sk, mut ck, mut se, mut ce) = (None, None, None, None);
        for _ in 0..50 {
            let to_server = p.client.take_transmits();
            let to_client = p.server.take_transmits();
            if to_server.is_empty() && to_client.is_empty() {
                break;
            }
            for d in to_server.iter().chain(&to_client) {
                assert!(
                    d.len() <= 1200,
                    "datagram of {} bytes exceeds the MTU",
                    d.len()
                );
            }
            for d in to_server {
                match p.server.handle_datagram(now, &d) {
                    Ok(Some(k)) => sk = Some(k),
                    Ok(None) => {}
                    Err(e) => se = se.or(Some(e)),
                }
            }
            for d in to_client {
                match p.client.handle_datagram(now, &d) {
                    Ok(Some(k)) => ck = Some(k),
                    Ok(None) => {}
                    Err(e) => ce = ce.or(Some(e)),
                }
            }
        }
        (sk, ck, se, ce)
    }

    fn assert_keys_agree(sk: SrtpKeys, ck: SrtpKeys) {
        assert_eq!(sk.profile, ck.profile);
        assert_eq!(ck.tx, sk.rx, "client tx == server rx");
        assert_eq!(sk.tx, ck.rx, "server tx == client rx");
        assert_ne!(sk.tx, sk.rx);
    }

    #[test]
    fn handshake_ecdsa_server_rsa_client() {
        let now = Instant::now();
        let s = Certificate::generate().unwrap();
        let c = Certificate::generate_rsa(2048).unwrap();
        let mut p = pair(&s, &c, &DEFAULT_SRTP_PROFILES, &DEFAULT_SRTP_PROFILES, now);
        let (sk, ck, se, ce) = pump(&mut p, now);
        assert_eq!((se, ce), (None, None));
        let (sk, ck) = (sk.unwrap(), ck.unwrap());
        assert_keys_agree(sk, ck);
        // The first profile we offer wins when both sides offer the same list.
        assert_eq!(sk.profile, Profile::AeadAes256Gcm);
        assert_eq!(p.server.state(), State::Connected);
        assert_eq!(p.client.state(), State::Connected);
        assert_eq!(p.server.poll_timeout(now), None);
    }

    #[test]
    fn handshake_rsa_server_ecdsa_client_cm_profile() {
        let now = Instant::now();
        let s = Certificate::generate_rsa(2048).unwrap();
        let c = Certificate::generate().unwrap();
        let mut p = pair(
            &s,
            &c,
            &DEFAULT_SRTP_PROFILES,
            &[Profile::Aes128CmSha1_80],
            now,
        );
        let (sk, ck, se, ce) = pump(&mut p, now);
        assert_eq!((se, ce), (None, None));
        let (sk, ck) = (sk.unwrap(), ck.unwrap());
        assert_keys_agree(sk, ck);
        assert_eq!(sk.profile, Profile::Aes128CmSha1_80);
        assert_eq!(sk.rx.as_bytes().len(), 30);
    }

    /// Split one handshake record's message into two fragments (RFC 6347 §4.2.2), each in its
    /// own record with consecutive record sequence numbers.
    fn fragment_client_hello(d: &[u8]) -> (Vec<u8>, Vec<u8>) {
        assert_eq!(d[0], 22, "handshake record");
        let rec_len = usize::from(u16::from_be_bytes([d[11], d[12]]));
        assert_eq!(d.len(), 13 + rec_len, "one record in the first flight");
        let hs = &d[13..];
        assert_eq!(hs[0], 1, "ClientHello");
        let body = &hs[12..];
        let total = body.len();
        assert_eq!(&hs[9..12], &u24(total), "unfragmented");
        let cut = total / 2;
        let rec = |seq: u64, off: usize, part: &[u8]| {
            let mut r = Vec::new();
            r.push(22);
            r.extend_from_slice(&d[1..5]); // version, epoch
            r.extend_from_slice(&seq.to_be_bytes()[2..]);
            r.extend_from_slice(&((12 + part.len()) as u16).to_be_bytes());
            r.push(1);
            r.extend_from_slice(&u24(total));
            r.extend_from_slice(&hs[4..6]); // message_seq
            r.extend_from_slice(&u24(off));
            r.extend_from_slice(&u24(part.len()));
            r.extend_from_slice(part);
            r
        };
        let seq = u64::from_be_bytes([0, 0, d[5], d[6], d[7], d[8], d[9], d[10]]);
        (rec(seq, 0, &body[..cut]), rec(seq + 1, cut, &body[cut..]))
    }

    fn u24(v: usize) -> [u8; 3] {
        let b = (v as u32).to_be_bytes();
        [b[1], b[2], b[3]]
    }

    /// Add `by` to the sequence number of every epoch-0 record in a datagram (epoch-0 records
    /// carry no MAC, so the rewrite is invisible to the receiver).
    fn shift_epoch0(d: &[u8], by: u64) -> Vec<u8> {
        let mut out = d.to_vec();
        let mut i = 0;
        while i + 13 <= out.len() {
            let len = usize::from(u16::from_be_bytes([out[i + 11], out[i + 12]]));
            if out[i + 3] == 0 && out[i + 4] == 0 {
                let mut s = [0u8; 8];
                s[2..].copy_from_slice(&out[i + 5..i + 11]);
                let seq = u64::from_be_bytes(s) + by;
                out[i + 5..i + 11].copy_from_slice(&seq.to_be_bytes()[2..]);
            }
            i += 13 + len;
        }
        out
    }

    #[test]
    fn fragmented_client_hello_completes() {
        let now = Instant::now();
        let s = Certificate::generate().unwrap();
        let c = Certificate::generate().unwrap();
        let mut p = pair(&s, &c, &DEFAULT_SRTP_PROFILES, &DEFAULT_SRTP_PROFILES, now);
        let first = p.client.take_transmits();
        assert_eq!(first.len(), 1);
        let (a, b) = fragment_client_hello(&first[0]);
        assert_eq!(p.server.handle_datagram(now, &a), Ok(None));
        assert!(
            p.server.take_transmits().is_empty(),
            "half a ClientHello gets no answer"
        );
        assert_eq!(p.server.handle_datagram(now, &b), Ok(None));
        // The client's later epoch-0 records move up by one, as if it had sent two records.
        let (mut sk, mut ck) = (None, None);
        for _ in 0..20 {
            let to_server = p.client.take_transmits();
            let to_client = p.server.take_transmits();
            if to_server.is_empty() && to_client.is_empty() {
                break;
            }
            for d in to_server {
                if let Some(k) = p.server.handle_datagram(now, &shift_epoch0(&d, 1)).unwrap() {
                    sk = Some(k);
                }
            }
            for d in to_client {
                if let Some(k) = p.client.handle_datagram(now, &d).unwrap() {
                    ck = Some(k);
                }
            }
        }
        assert_keys_agree(sk.unwrap(), ck.unwrap());
        assert_eq!(p.client.retransmits(), 0);
    }

    #[test]
    fn lost_first_flight_is_retransmitted() {
        let t0 = Instant::now();
        let s = Certificate::generate().unwrap();
        let c = Certificate::generate().unwrap();
        let mut p = pair(&s, &c, &DEFAULT_SRTP_PROFILES, &DEFAULT_SRTP_PROFILES, t0);
        assert_eq!(p.client.take_transmits().len(), 1); // lost
        let due = p.client.poll_timeout(t0).unwrap();
        assert!(due <= t0 + dtls_ffi::INITIAL_RETRANSMIT);
        // Nothing is due yet: no retransmission.
        p.client.handle_timeout(t0).unwrap();
        assert!(p.client.take_transmits().is_empty());
        // OpenSSL's timer runs on the system clock; wait it out.
        std::thread::sleep(dtls_ffi::INITIAL_RETRANSMIT + Duration::from_millis(20));
        let now = Instant::now();
        p.client.handle_timeout(now).unwrap();
        assert_eq!(p.client.retransmits(), 1);
        let (sk, ck, se, ce) = pump(&mut p, now);
        assert_eq!((se, ce), (None, None));
        assert_keys_agree(sk.unwrap(), ck.unwrap());
    }

    #[test]
    fn retransmission_cap_and_deadline() {
        let t0 = Instant::now();
        let s = Certificate::generate().unwrap();
        let c = Certificate::generate().unwrap();
        let cfg = DtlsConfig {
            max_retransmits: 1,
            ..DtlsConfig::default()
        };
        let mut client = Dtls::new(
            DtlsRole::Client,
            &c,
            &DEFAULT_SRTP_PROFILES,
            s.fingerprint().clone(),
            cfg,
            t0,
        )
        .unwrap();
        client.take_transmits();
        std::thread::sleep(dtls_ffi::INITIAL_RETRANSMIT + Duration::from_millis(20));
        client.handle_timeout(Instant::now()).unwrap();
        assert_eq!(client.take_transmits().len(), 1);
        std::thread::sleep(2 * dtls_ffi::INITIAL_RETRANSMIT + Duration::from_millis(20));
        assert_eq!(
            client.handle_timeout(Instant::now()),
            Err(DtlsError::TooManyRetransmits(1))
        );
        assert_eq!(client.state(), State::Failed);
        assert_eq!(
            client.handle_datagram(Instant::now(), &[22, 0xfe, 0xfd]),
            Err(DtlsError::Closed)
        );

        // The deadline is measured on the caller's clock.
        let mut server = Dtls::new(
            DtlsRole::Server,
            &s,
            &DEFAULT_SRTP_PROFILES,
            c.fingerprint().clone(),
            DtlsConfig::default(),
            t0,
        )
        .unwrap();
        let deadline = server.poll_timeout(t0).unwrap();
        assert_eq!(deadline, t0 + DtlsConfig::default().handshake_timeout);
        assert_eq!(
            server.handle_timeout(deadline),
            Err(DtlsError::HandshakeTimeout)
        );
    }

    #[test]
    fn no_common_profile_fails_cleanly() {
        let now = Instant::now();
        let s = Certificate::generate().unwrap();
        let c = Certificate::generate().unwrap();
        let mut p = pair(
            &s,
            &c,
            &[Profile::AeadAes128Gcm, Profile::AeadAes256Gcm],
            &[Profile::Aes128CmSha1_80, Profile::Aes128CmSha1_32],
            now,
        );
        let (sk, ck, se, ce) = pump(&mut p, now);
        assert_eq!((sk, ck), (None, None));
        assert_eq!(se, Some(DtlsError::NoSrtpProfile));
        assert_eq!(ce, Some(DtlsError::NoSrtpProfile));
        assert_eq!(p.server.state(), State::Failed);
        assert_eq!(p.client.state(), State::Failed);
        assert!(p.server.keys().is_none());
    }

    #[test]
    fn wrong_fingerprint_fails() {
        let now = Instant::now();
        let s = Certificate::generate().unwrap();
        let c = Certificate::generate().unwrap();
        let other = Certificate::generate().unwrap();
        let server = Dtls::new(
            DtlsRole::Server,
            &s,
            &DEFAULT_SRTP_PROFILES,
            other.fingerprint().clone(),
            DtlsConfig::default(),
            now,
        )
        .unwrap();
        let client = Dtls::new(
            DtlsRole::Client,
            &c,
            &DEFAULT_SRTP_PROFILES,
            s.fingerprint().clone(),
            DtlsConfig::default(),
            now,
        )
        .unwrap();
        let mut p = Pair { server, client };
        let (sk, _ck, se, _ce) = pump(&mut p, now);
        assert!(sk.is_none());
        assert_eq!(se, Some(DtlsError::FingerprintMismatch));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let now = Instant::now();
        let s = Certificate::generate().unwrap();
        let c = Certificate::generate().unwrap();
        let mut p = pair(&s, &c, &DEFAULT_SRTP_PROFILES, &DEFAULT_SRTP_PROFILES, now);
        let cases: [&[u8]; 5] = [
            &[],
            &[22, 0xfe, 0xfd, 0, 0],
            &[99; 40],
            &[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 1, 2],
            &[22, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ];
        for g in cases {
            assert!(matches!(
                p.server.handle_datagram(now, g),
                Err(DtlsError::Malformed(_))
            ));
        }
        // Well-framed records with garbage inside: OpenSSL drops or rejects them; either way
        // no panic, and pseudo-random input never yields keys.
        let mut x: u32 = 0x1234_5678;
        for round in 0..200 {
            let len = 13 + (round % 60);
            let mut g = vec![0u8; len];
            for b in g.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            g[0] = 22;
            g[1] = 0xfe;
            g[2] = 0xfd;
            g[11..13].copy_from_slice(&((len - 13) as u16).to_be_bytes());
            let mut fresh = Dtls::new(
                DtlsRole::Server,
                &s,
                &DEFAULT_SRTP_PROFILES,
                c.fingerprint().clone(),
                DtlsConfig::default(),
                now,
            )
            .unwrap();
            assert!(!matches!(fresh.handle_datagram(now, &g), Ok(Some(_))));
        }
        // The original pair is undisturbed by the refused datagrams.
        let (sk, ck, se, ce) = pump(&mut p, now);
        assert_eq!((se, ce), (None, None));
        assert_keys_agree(sk.unwrap(), ck.unwrap());
    }

    #[test]
    fn fingerprint_parse_and_display() {
        let c = Certificate::generate().unwrap();
        let text = c.fingerprint().to_string();
        assert!(text.starts_with("sha-256 "));
        let fp = Fingerprint::parse(&text).unwrap();
        assert!(fp.matches(c.fingerprint()));
        let lower = Fingerprint::parse(&text.to_lowercase().replace("sha-256", "SHA-256")).unwrap();
        assert!(lower.matches(c.fingerprint()));
        assert!(Fingerprint::parse("sha-256 AB:CD").is_err());
        assert!(Fingerprint::parse("md5 AB:CD").is_err());
        assert!(Fingerprint::parse(
            "sha-1 ZZ:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00"
        )
        .is_err());
        assert!(Fingerprint::parse("").is_err());
        let pem = Certificate::from_pem(&c.cert_pem().unwrap(), &c.key_pem().unwrap()).unwrap();
        assert!(pem.fingerprint().matches(c.fingerprint()));
    }

    #[test]
    fn check_records_accepts_whole_records_only() {
        let rec = |ct: u8, ver: [u8; 2], body: &[u8]| {
            let mut v = vec![ct, ver[0], ver[1], 0, 0, 0, 0, 0, 0, 0, 1];
            v.extend_from_slice(&(body.len() as u16).to_be_bytes());
            v.extend_from_slice(body);
            v
        };
        let mut two = rec(22, [0xFE, 0xFD], b"abc");
        two.extend(rec(20, [0xFE, 0xFF], b"\x01"));
        assert!(check_records(&two).is_ok());
        let bad: Vec<Vec<u8>> = vec![
            Vec::new(),
            rec(22, [0xFE, 0xFD], b"abc")[..12].to_vec(),
            rec(22, [0xFE, 0xFD], b"abc")[..15].to_vec(),
            rec(24, [0xFE, 0xFD], b""),
            rec(22, [0x03, 0x03], b""),
            rec(22, [0xFE, 0xFC], b""),
            rec(0x2C, [0xFE, 0xFD], b""),
        ];
        for b in bad {
            assert!(check_records(&b).is_err(), "{b:02x?}");
        }
    }
}
