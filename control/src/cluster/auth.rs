//! Authentication of node-to-node requests with the cluster secret (`cluster.secret_file`).
//!
//! A request that carries or asks for key material (a trunk between two relays) is signed by
//! the sending node: the header [`AUTH_HEADER`] holds
//! `v1 node=NODE ts=UNIX_MS nonce=HEX32 mac=HEX64`, where `mac` is HMAC-SHA256 under the
//! cluster secret over [`signing_input`]: a fixed label, the method, the path, the node,
//! the timestamp, the nonce and SHA-256 of the body, each on its own line.
//!
//! The receiving node checks, in this order (replay: check, authenticate, then record): the
//! header's syntax, the timestamp within `cluster.auth_window_ms` of its clock, that the
//! nonce was not seen inside the window, the MAC (ring's `hmac::verify`, constant-time), and
//! only then records the nonce. The nonce record is bounded: entries older than the window
//! are forgotten, and at [`MAX_NONCES`] live entries further requests are refused until some
//! age out, so a flood of well-signed requests cannot grow memory. Every refusal is counted by
//! reason ([`AuthStats`]). Nothing of the secret or the MAC is logged.

use ring::{digest, hmac};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The request header carrying a node-to-node signature.
pub const AUTH_HEADER: &str = "sluice-cluster-auth";
/// The label that starts every signed text (a MAC for another purpose never verifies here).
const LABEL: &str = "sluice-cluster-v1";
/// At most this many nonces are remembered at once.
pub const MAX_NONCES: usize = 65_536;
/// Random bytes in a nonce.
const NONCE_BYTES: usize = 16;
/// What the key that seals key material in answers is derived from (HMAC under the secret).
const SEAL_LABEL: &str = "sluice-cluster-v1 seal";

/// Why a node-to-node request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no {AUTH_HEADER} header")]
    Missing,
    #[error("malformed {AUTH_HEADER} header: {0}")]
    Malformed(&'static str),
    #[error("timestamp {ts_ms} is outside the {window_ms} ms window around {now_ms}")]
    Stale {
        ts_ms: u64,
        now_ms: u64,
        window_ms: u64,
    },
    #[error("the nonce was already used")]
    Replay,
    #[error("the MAC does not verify")]
    BadMac,
    #[error("too many requests inside the validity window")]
    Saturated,
    #[error("this node has no cluster secret (cluster.secret_file)")]
    NoSecret,
}

impl AuthError {
    /// A stable name for counters and the JSON `reason` of a refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::Stale { .. } => "stale",
            AuthError::Replay => "replay",
            AuthError::BadMac => "bad_mac",
            AuthError::Saturated => "saturated",
            AuthError::NoSecret => "no_secret",
        }
    }
}

impl AuthError {
    /// The reason under which the refusal is counted and audited with other refused
    /// requests (`sluice_control_webrtc_denied_total`, the rate-limited `cluster.denied`
    /// audit entries).
    pub fn denial_reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "cluster_auth_missing",
            AuthError::Malformed(_) => "cluster_auth_malformed",
            AuthError::Stale { .. } => "cluster_auth_stale",
            AuthError::Replay => "cluster_auth_replay",
            AuthError::BadMac => "cluster_auth_bad_mac",
            AuthError::Saturated => "cluster_auth_saturated",
            AuthError::NoSecret => "cluster_auth_no_secret",
        }
    }
}

/// Refused node-to-node requests by reason, and accepted ones.
#[derive(Debug, Default)]
pub struct AuthStats {
    pub accepted: AtomicU64,
    pub missing: AtomicU64,
    pub malformed: AtomicU64,
    pub stale: AtomicU64,
    pub replay: AtomicU64,
    pub bad_mac: AtomicU64,
    pub saturated: AtomicU64,
    pub no_secret: AtomicU64,
}

impl AuthStats {
    fn count(&self, e: &AuthError) {
        let c = match e {
            AuthError::Missing => &self.missing,
            AuthError::Malformed(_) => &self.malformed,
            AuthError::Stale { .. } => &self.stale,
            AuthError::Replay => &self.replay,
            AuthError::BadMac => &self.bad_mac,
            AuthError::Saturated => &self.saturated,
            AuthError::NoSecret => &self.no_secret,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// `(reason, count)` for every refusal reason, in a fixed order.
    pub fn refused(&self) -> [(&'static str, u64); 7] {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("missing", n(&self.missing)),
            ("malformed", n(&self.malformed)),
            ("stale", n(&self.stale)),
            ("replay", n(&self.replay)),
            ("bad_mac", n(&self.bad_mac)),
            ("saturated", n(&self.saturated)),
            ("no_secret", n(&self.no_secret)),
        ]
    }
}

/// A parsed [`AUTH_HEADER`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub node: String,
    pub ts_ms: u64,
    pub nonce: [u8; NONCE_BYTES],
    pub mac: [u8; 32],
}

impl Signature {
    /// Parse `v1 node=… ts=… nonce=… mac=…` (fields in this order, single spaces).
    pub fn parse(h: &str) -> Result<Signature, AuthError> {
        let mut it = h.split(' ');
        if it.next() != Some("v1") {
            return Err(AuthError::Malformed("expected version v1"));
        }
        let mut field = |name: &'static str, what: &'static str| {
            it.next()
                .and_then(|f| f.strip_prefix(name))
                .ok_or(AuthError::Malformed(what))
        };
        let node = field("node=", "expected node=")?;
        let ts = field("ts=", "expected ts=")?;
        let nonce = field("nonce=", "expected nonce=")?;
        let mac = field("mac=", "expected mac=")?;
        if it.next().is_some() {
            return Err(AuthError::Malformed("trailing fields"));
        }
        let node_ok = !node.is_empty()
            && node.len() <= 64
            && node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !node_ok {
            return Err(AuthError::Malformed(
                "node is not 1..=64 of A-Z a-z 0-9 - _ .",
            ));
        }
        if ts.is_empty() || ts.len() > 20 || !ts.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AuthError::Malformed("ts is not a decimal number"));
        }
        let ts_ms = ts
            .parse::<u64>()
            .map_err(|_| AuthError::Malformed("ts is out of range"))?;
        let nonce: [u8; NONCE_BYTES] = crate::secrets::unhex(nonce)
            .and_then(|v| v.try_into().ok())
            .ok_or(AuthError::Malformed("nonce is not 32 hex digits"))?;
        let mac: [u8; 32] = crate::secrets::unhex(mac)
            .and_then(|v| v.try_into().ok())
            .ok_or(AuthError::Malformed("mac is not 64 hex digits"))?;
        Ok(Signature {
            node: node.to_string(),
            ts_ms,
            nonce,
            mac,
        })
    }

    /// The header value.
    pub fn render(&self) -> String {
        format!(
            "v1 node={} ts={} nonce={} mac={}",
            self.node,
            self.ts_ms,
            crate::secrets::hex(&self.nonce),
            crate::secrets::hex(&self.mac)
        )
    }
}

/// The text the MAC covers.
pub fn signing_input(
    method: &str,
    path: &str,
    node: &str,
    ts_ms: u64,
    nonce: &[u8],
    body: &[u8],
) -> Vec<u8> {
    let body_hash = digest::digest(&digest::SHA256, body);
    format!(
        "{LABEL}\n{method}\n{path}\n{node}\n{ts_ms}\n{}\n{}",
        crate::secrets::hex(nonce),
        crate::secrets::hex(body_hash.as_ref())
    )
    .into_bytes()
}

/// Why sealed key material could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed data is not base64 of nonce and ciphertext")]
    Malformed,
    #[error("sealed data does not authenticate")]
    Forged,
    #[error("randomness: {0}")]
    Random(String),
}

/// Signs this node's requests and verifies other nodes'; seals key material in answers.
pub struct Authenticator {
    key: hmac::Key,
    /// AES-256-GCM key derived from the secret for key material in answers.
    seal_key: ring::aead::LessSafeKey,
    node: String,
    window_ms: u64,
    seen: Mutex<Nonces>,
    pub stats: AuthStats,
}

/// Nonces seen inside the window, with the time each expires from the record.
#[derive(Default)]
struct Nonces {
    by_nonce: HashMap<[u8; NONCE_BYTES], u64>,
    /// `(forget_at_ms, nonce)`, to drop the expired ones in order.
    by_time: BTreeMap<(u64, [u8; NONCE_BYTES]), ()>,
}

impl Nonces {
    fn forget_before(&mut self, now_ms: u64) {
        while let Some((&(at, nonce), ())) = self.by_time.first_key_value() {
            if at > now_ms {
                break;
            }
            self.by_time.remove(&(at, nonce));
            self.by_nonce.remove(&nonce);
        }
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("node", &self.node)
            .field("window_ms", &self.window_ms)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for node `node` with the cluster `secret`.
    pub fn new(secret: &[u8], node: &str, window_ms: u64) -> Authenticator {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derived = hmac::sign(&key, SEAL_LABEL.as_bytes());
        // 32 bytes of HMAC-SHA256 are exactly an AES-256 key, so this cannot fail.
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, derived.as_ref())
            .expect("an HMAC-SHA256 tag is a valid AES-256 key");
        Authenticator {
            key,
            seal_key: ring::aead::LessSafeKey::new(unbound),
            node: node.to_string(),
            window_ms,
            seen: Mutex::new(Nonces::default()),
            stats: AuthStats::default(),
        }
    }

    /// Encrypt `plain` under the key derived from the cluster secret, bound to `aad` (the
    /// request's nonce, so an answer cannot be replayed to another request): base64 of a
    /// random 96-bit nonce, the ciphertext and the GCM tag.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<String, SealError> {
        use base64::Engine as _;
        use ring::aead::{Aad, Nonce, NONCE_LEN};
        let n: [u8; NONCE_LEN] = crate::secrets::random_bytes(NONCE_LEN)
            .map_err(|e| SealError::Random(e.to_string()))?
            .try_into()
            .map_err(|_| SealError::Random("short read".into()))?;
        let mut buf = plain.to_vec();
        self.seal_key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(n), Aad::from(aad), &mut buf)
            .map_err(|_| SealError::Forged)?;
        let mut out = n.to_vec();
        out.extend_from_slice(&buf);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Decrypt what [`Authenticator::seal`] produced with the same `aad`.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, SealError> {
        use base64::Engine as _;
        use ring::aead::{Aad, Nonce, NONCE_LEN};
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| SealError::Malformed)?;
        if raw.len() < NONCE_LEN + ring::aead::AES_256_GCM.tag_len() {
            return Err(SealError::Malformed);
        }
        let (n, ct) = raw.split_at(NONCE_LEN);
        let n = Nonce::try_assume_unique_for_key(n).map_err(|_| SealError::Malformed)?;
        let mut buf = ct.to_vec();
        let plain = self
            .seal_key
            .open_in_place(n, Aad::from(aad), &mut buf)
            .map_err(|_| SealError::Forged)?;
        Ok(plain.to_vec())
    }

    /// The signature of a request this node sends at `now_ms` ([`Signature::render`] is
    /// the [`AUTH_HEADER`] value).
    pub fn sign(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        now_ms: u64,
    ) -> std::io::Result<Signature> {
        let nonce: [u8; NONCE_BYTES] = crate::secrets::random_bytes(NONCE_BYTES)?
            .try_into()
            .map_err(|_| std::io::Error::other("short random read"))?;
        Ok(self.sign_with(method, path, body, now_ms, nonce))
    }

    fn sign_with(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        ts_ms: u64,
        nonce: [u8; NONCE_BYTES],
    ) -> Signature {
        let input = signing_input(method, path, &self.node, ts_ms, &nonce, body);
        let tag = hmac::sign(&self.key, &input);
        let mut mac = [0u8; 32];
        mac.copy_from_slice(tag.as_ref());
        Signature {
            node: self.node.clone(),
            ts_ms,
            nonce,
            mac,
        }
    }

    /// Verify a request received at `now_ms` with `header` (the [`AUTH_HEADER`] value, if
    /// any); returns the verified signature (its node and nonce). Refusals are counted by
    /// reason.
    pub fn verify(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        header: Option<&str>,
        now_ms: u64,
    ) -> Result<Signature, AuthError> {
        let r = self.check(method, path, body, header, now_ms);
        match &r {
            Ok(_) => {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.stats.count(e),
        }
        r
    }

    fn check(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        header: Option<&str>,
        now_ms: u64,
    ) -> Result<Signature, AuthError> {
        let sig = Signature::parse(header.ok_or(AuthError::Missing)?)?;
        let mut seen = crate::core::lock(&self.seen);
        seen.forget_before(now_ms);
        if sig.ts_ms.abs_diff(now_ms) > self.window_ms {
            return Err(AuthError::Stale {
                ts_ms: sig.ts_ms,
                now_ms,
                window_ms: self.window_ms,
            });
        }
        if seen.by_nonce.contains_key(&sig.nonce) {
            return Err(AuthError::Replay);
        }
        let input = signing_input(method, path, &sig.node, sig.ts_ms, &sig.nonce, body);
        hmac::verify(&self.key, &input, &sig.mac).map_err(|_| AuthError::BadMac)?;
        if seen.by_nonce.len() >= MAX_NONCES {
            return Err(AuthError::Saturated);
        }
        // A nonce must be remembered for as long as its timestamp stays acceptable.
        let forget_at = sig.ts_ms.saturating_add(self.window_ms).saturating_add(1);
        seen.by_nonce.insert(sig.nonce, forget_at);
        seen.by_time.insert((forget_at, sig.nonce), ());
        Ok(sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000_000;

    fn pair() -> (Authenticator, Authenticator) {
        (
            Authenticator::new(SECRET, "edge-1", 10_000),
            Authenticator::new(SECRET, "origin-1", 10_000),
        )
    }

    #[test]
    fn a_signed_request_verifies_once() {
        let (edge, origin) = pair();
        let h = edge
            .sign("POST", "/cluster/v1/trunks", b"{}", NOW)
            .unwrap()
            .render();
        let who = origin.verify("POST", "/cluster/v1/trunks", b"{}", Some(&h), NOW + 50);
        assert_eq!(who.map(|s| s.node), Ok("edge-1".to_string()));
        let again = origin.verify("POST", "/cluster/v1/trunks", b"{}", Some(&h), NOW + 60);
        assert_eq!(again, Err(AuthError::Replay));
        assert_eq!(origin.stats.accepted.load(Ordering::Relaxed), 1);
        assert_eq!(origin.stats.replay.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn any_change_to_what_is_signed_breaks_the_mac() {
        let (edge, origin) = pair();
        let h = edge
            .sign_with("POST", "/cluster/v1/trunks", b"{\"a\":1}", NOW, [7; 16])
            .render();
        for (m, p, b) in [
            ("DELETE", "/cluster/v1/trunks", &b"{\"a\":1}"[..]),
            ("POST", "/cluster/v1/trunks/1", &b"{\"a\":1}"[..]),
            ("POST", "/cluster/v1/trunks", &b"{\"a\":2}"[..]),
        ] {
            assert_eq!(
                origin.verify(m, p, b, Some(&h), NOW),
                Err(AuthError::BadMac),
                "{m} {p}"
            );
        }
        // Another node name in the header with the same MAC.
        let forged = h.replace("node=edge-1", "node=edge-2");
        assert_eq!(
            origin.verify(
                "POST",
                "/cluster/v1/trunks",
                b"{\"a\":1}",
                Some(&forged),
                NOW
            ),
            Err(AuthError::BadMac)
        );
        // Signed with another secret.
        let stranger = Authenticator::new(b"another secret of thirty-two chars", "edge-1", 10_000);
        let h2 = stranger.sign_with("POST", "/p", b"", NOW, [8; 16]).render();
        assert_eq!(
            origin.verify("POST", "/p", b"", Some(&h2), NOW),
            Err(AuthError::BadMac)
        );
        assert_eq!(origin.stats.bad_mac.load(Ordering::Relaxed), 5);
        // A refused request did not burn its nonce: the genuine one still verifies.
        assert!(origin
            .verify("POST", "/cluster/v1/trunks", b"{\"a\":1}", Some(&h), NOW)
            .is_ok());
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let (edge, origin) = pair();
        let old = edge
            .sign_with("GET", "/p", b"", NOW - 10_001, [1; 16])
            .render();
        let new = edge
            .sign_with("GET", "/p", b"", NOW + 10_001, [2; 16])
            .render();
        let edge_ok = edge
            .sign_with("GET", "/p", b"", NOW - 10_000, [3; 16])
            .render();
        for h in [&old, &new] {
            assert!(matches!(
                origin.verify("GET", "/p", b"", Some(h), NOW),
                Err(AuthError::Stale { .. })
            ));
        }
        assert!(origin.verify("GET", "/p", b"", Some(&edge_ok), NOW).is_ok());
        assert_eq!(origin.stats.stale.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_replay_after_the_window_is_stale_not_accepted() {
        let (edge, origin) = pair();
        let h = edge.sign_with("GET", "/p", b"", NOW, [4; 16]).render();
        assert!(origin.verify("GET", "/p", b"", Some(&h), NOW).is_ok());
        // The nonce is forgotten once its timestamp can no longer pass the window check.
        assert!(matches!(
            origin.verify("GET", "/p", b"", Some(&h), NOW + 10_001),
            Err(AuthError::Stale { .. })
        ));
        assert!(crate::core::lock(&origin.seen).by_nonce.is_empty());
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        let (_, origin) = pair();
        assert_eq!(
            origin.verify("GET", "/p", b"", None, NOW),
            Err(AuthError::Missing)
        );
        let good_tail = format!("nonce={} mac={}", "00".repeat(16), "00".repeat(32));
        for h in [
            String::new(),
            "v2 node=a ts=1 ".to_string() + &good_tail,
            "v1 node= ts=1 ".to_string() + &good_tail,
            "v1 node=a/b ts=1 ".to_string() + &good_tail,
            "v1 node=a ts=+1 ".to_string() + &good_tail,
            "v1 node=a ts=99999999999999999999 ".to_string() + &good_tail,
            format!(
                "v1 node=a ts=1 nonce={} mac={}",
                "0".repeat(31),
                "00".repeat(32)
            ),
            format!(
                "v1 node=a ts=1 nonce={} mac={}",
                "00".repeat(16),
                "zz".repeat(32)
            ),
            "v1 node=a ts=1 ".to_string() + &good_tail + " extra=1",
            "v1 ts=1 node=a ".to_string() + &good_tail,
        ] {
            assert!(
                matches!(
                    origin.verify("GET", "/p", b"", Some(&h), NOW),
                    Err(AuthError::Malformed(_))
                ),
                "{h}"
            );
        }
    }

    #[test]
    fn sealed_material_opens_only_with_the_secret_and_the_same_binding() {
        let (edge, origin) = pair();
        let sealed = origin.seal(b"key material", b"nonce-1").unwrap();
        assert!(!sealed.contains("key material"));
        assert_eq!(edge.open(&sealed, b"nonce-1").unwrap(), b"key material");
        assert_eq!(edge.open(&sealed, b"nonce-2"), Err(SealError::Forged));
        let stranger = Authenticator::new(b"another secret of thirty-two chars", "x", 10_000);
        assert_eq!(stranger.open(&sealed, b"nonce-1"), Err(SealError::Forged));
        assert_eq!(edge.open("!!", b"nonce-1"), Err(SealError::Malformed));
        assert_eq!(edge.open("AAAA", b"nonce-1"), Err(SealError::Malformed));
    }

    #[test]
    fn the_nonce_record_is_bounded() {
        let edge = Authenticator::new(SECRET, "edge-1", 10_000);
        let origin = Authenticator::new(SECRET, "origin-1", 10_000);
        for i in 0..MAX_NONCES {
            let mut n = [0u8; 16];
            n[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let h = edge.sign_with("GET", "/p", b"", NOW, n).render();
            assert!(origin.verify("GET", "/p", b"", Some(&h), NOW).is_ok());
        }
        let h = edge.sign_with("GET", "/p", b"", NOW, [0xff; 16]).render();
        assert_eq!(
            origin.verify("GET", "/p", b"", Some(&h), NOW),
            Err(AuthError::Saturated)
        );
        // Once the window has passed, the old nonces are forgotten and requests pass again.
        let later = NOW + 10_001;
        let h = edge.sign_with("GET", "/p", b"", later, [0xfe; 16]).render();
        assert!(origin.verify("GET", "/p", b"", Some(&h), later).is_ok());
        assert_eq!(crate::core::lock(&origin.seen).by_nonce.len(), 1);
    }
}
