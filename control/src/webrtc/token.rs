//! Access tokens: signed JWT-shaped tokens (HS256) and Storm-style stream tokens.
//!
//! Owns: the token format (mint and verify), the verification rules (signature, times, clock
//! skew, lifetime, application, room, role, viewer email domain) and [`RoomPolicy`], the
//! per-room choice of accepted token kinds. May not touch: storage of keys (see `apps`), the
//! clock (`now_unix` is passed in), logging (errors carry no PII: never the token or email).
//!
//! Signed tokens follow JWS compact serialisation (RFC 7515 §7.1) with `alg` HS256
//! (RFC 7518 §3.2) and JWT claims (RFC 7519 §4.1); see docs/TOKENS.md.

use std::net::IpAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use openssl::hash::{hash, MessageDigest};
use openssl::pkey::PKey;
use openssl::sign::Signer;
use serde::{Deserialize, Serialize};

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 4096;

/// A developer key: the shared secret an application's back end signs tokens with.
#[derive(Clone, PartialEq, Eq)]
pub struct DevKey {
    kid: String,
    secret: Vec<u8>,
}

/// Why a developer key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("developer key must have at least {min} bytes (RFC 7518 §3.2), got {got}")]
    TooShort { min: usize, got: usize },
    #[error("key id must be 1 to 64 characters of [A-Za-z0-9._-]")]
    BadKid,
    #[error("random number generator failed")]
    Rng,
}

impl DevKey {
    /// Shortest secret: RFC 7518 §3.2 requires a key at least as long as the hash output.
    pub const MIN_SECRET_LEN: usize = 32;

    pub fn new(kid: &str, secret: &[u8]) -> Result<DevKey, KeyError> {
        if kid.is_empty()
            || kid.len() > 64
            || !kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(KeyError::BadKid);
        }
        if secret.len() < Self::MIN_SECRET_LEN {
            return Err(KeyError::TooShort {
                min: Self::MIN_SECRET_LEN,
                got: secret.len(),
            });
        }
        Ok(DevKey {
            kid: kid.to_owned(),
            secret: secret.to_vec(),
        })
    }

    /// A fresh random 32-byte key.
    pub fn generate(kid: &str) -> Result<DevKey, KeyError> {
        let mut secret = [0u8; 32];
        openssl::rand::rand_bytes(&mut secret).map_err(|_| KeyError::Rng)?;
        let k = DevKey::new(kid, &secret);
        secret.fill(0);
        k
    }

    /// Key id, carried in the token header (`kid`) so keys can be rotated.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The HMAC-SHA256 secret.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DevKey({}, <secret>)", self.kid)
    }
}

impl Drop for DevKey {
    fn drop(&mut self) {
        // Best effort: clear the secret before the allocation is returned.
        self.secret.fill(0);
    }
}

/// What a participant may do (design.md "Access control"): the one role type of Sluice.
/// A token grants any role but [`Role::Trunk`], which static sessions alone have.
pub use contract::shm::Role;

/// The role a token may grant, by name (any case); `None` for an unknown name and `trunk`.
pub fn token_role(name: &str) -> Option<Role> {
    Role::from_name(name).filter(|r| *r != Role::Trunk)
}

/// Hosts and moderators may remove participants.
pub const fn may_remove_participants(r: Role) -> bool {
    matches!(r, Role::Host | Role::Moderator)
}

/// The claims of a signed token (RFC 7519 §4.1 names where one exists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user, chosen by the application.
    pub sub: String,
    /// Application id.
    pub app: String,
    /// Room name within the application.
    pub room: String,
    pub role: Role,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Not before, unix seconds.
    pub nbf: u64,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Optional e-mail, checked against a room's allowed domains for viewers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

/// Why a token was refused. One variant per rejection; the messages hold no token content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported token algorithm (only HS256)")]
    UnsupportedAlgorithm,
    #[error("no developer key for this application and key id")]
    UnknownKey,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future (clock skew beyond the allowed leeway)")]
    IssuedInFuture,
    #[error("token lifetime exceeds the allowed maximum")]
    LifetimeTooLong,
    #[error("token expires before it becomes valid")]
    EmptyValidity,
    #[error("token is for another application")]
    WrongApp,
    #[error("token is for another room")]
    WrongRoom,
    #[error("role may not publish")]
    RoleCannotPublish,
    #[error("e-mail domain not allowed for viewers of this room")]
    EmailDomainNotAllowed,
    #[error("this kind of token is not accepted in this room")]
    KindNotAccepted,
    #[error("stream token invalid or expired")]
    StreamTokenInvalid,
}

/// Limits on signed tokens, from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Allowed clock difference with the minting back end, seconds (RFC 7519 §4.1.4).
    pub leeway_secs: u64,
    /// Largest `exp − min(nbf, iat)`, seconds.
    pub max_lifetime_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            leeway_secs: 30,
            max_lifetime_secs: 24 * 3600,
        }
    }
}

/// Kinds of credential a room accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// HS256 tokens signed with a developer key.
    Signed,
    /// Storm-style MD5 stream tokens (viewers only).
    Stream,
}

/// Per-room access policy (design.md "Access control"; seeds 000 and 002).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomPolicy {
    /// Viewers must carry an e-mail in one of these domains (exact, case-insensitive).
    /// Empty: any viewer with a valid token.
    pub allowed_email_domains: Vec<String>,
    pub accepted_token_kinds: Vec<TokenKind>,
    /// Password of Storm stream tokens; stream tokens are refused without one.
    pub stream_password: Option<String>,
    /// Minutes a stream token stays valid.
    pub stream_timeout_minutes: u32,
    /// Stream tokens include the viewer's IP address.
    pub bind_ip: bool,
}

impl Default for RoomPolicy {
    fn default() -> Self {
        RoomPolicy {
            allowed_email_domains: Vec::new(),
            accepted_token_kinds: vec![TokenKind::Signed],
            stream_password: None,
            stream_timeout_minutes: 5,
            bind_ip: false,
        }
    }
}

/// Longest validity of a stream token, minutes: a day. Each check computes one digest per
/// minute of the window, so the bound is also the most work one unauthenticated request costs.
pub const MAX_STREAM_TIMEOUT_MINUTES: u32 = 1440;
/// Shortest stream password. Anyone who knows the minute (everyone) and the password can mint
/// tokens, so a short one is a dictionary attack away.
pub const MIN_STREAM_PASSWORD_LEN: usize = 12;

impl RoomPolicy {
    /// What a room may hold: a stream timeout of 1..=[`MAX_STREAM_TIMEOUT_MINUTES`], a stream
    /// password of [`MIN_STREAM_PASSWORD_LEN`]..=128 printable ASCII characters with at least 6
    /// different ones, and e-mail domains that are domain names. The error names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=MAX_STREAM_TIMEOUT_MINUTES).contains(&self.stream_timeout_minutes) {
            return Err((
                "stream_timeout_minutes",
                format!(
                    "{} is out of range 1..={MAX_STREAM_TIMEOUT_MINUTES}",
                    self.stream_timeout_minutes
                ),
            ));
        }
        if let Some(p) = &self.stream_password {
            let distinct = p.bytes().collect::<std::collections::BTreeSet<u8>>().len();
            if p.len() < MIN_STREAM_PASSWORD_LEN
                || p.len() > 128
                || !p.bytes().all(|b| b.is_ascii_graphic())
                || distinct < 6
            {
                return Err((
                    "stream_password",
                    format!(
                        "must be {MIN_STREAM_PASSWORD_LEN}..=128 printable characters, at least 6 \
                         of them different"
                    ),
                ));
            }
        }
        for d in &self.allowed_email_domains {
            if email_domain(&format!("x@{}", d.trim_start_matches('@'))).is_none() {
                return Err((
                    "allowed_email_domains",
                    "each entry must be a domain name such as example.com".into(),
                ));
            }
        }
        Ok(())
    }

    /// The policy as the admin API shows it: the stream password never leaves control;
    /// `stream_password_set` says whether the room has one.
    pub fn public_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("stream_password");
            o.insert(
                "stream_password_set".into(),
                self.stream_password.is_some().into(),
            );
        }
        v
    }
}

/// What the request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// WHIP: send media.
    Publish,
    /// WHEP: receive media.
    Subscribe,
}

/// The room and action a token is presented for.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub app: &'a str,
    pub room: &'a str,
    pub intent: Intent,
}

fn hs256(secret: &[u8], data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // `DevKey::new` guarantees a non-empty secret, and SHA-256 output is 32 bytes: the OpenSSL
    // calls below fail only on allocation failure, which we treat as fatal.
    let key = PKey::hmac(secret).expect("HMAC key of non-zero length");
    let mut signer = Signer::new(MessageDigest::sha256(), &key).expect("HMAC-SHA256 signer");
    signer.update(data).expect("HMAC update");
    let n = signer.sign(&mut out).expect("32-byte HMAC-SHA256 output");
    debug_assert_eq!(n, 32);
    out
}

/// Sign `claims` with `key`: `base64url(header) "." base64url(claims) "." base64url(HS256)`.
pub fn mint(key: &DevKey, claims: &Claims) -> String {
    let header = Header {
        alg: "HS256".into(),
        typ: Some("JWT".into()),
        kid: Some(key.kid.clone()),
    };
    // Serialising these plain structs to JSON cannot fail (string keys, no maps with
    // non-string keys, no floats).
    let h = serde_json::to_vec(&header).expect("header serialises");
    let p = serde_json::to_vec(claims).expect("claims serialise");
    let mut out = URL_SAFE_NO_PAD.encode(h);
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(p));
    let sig = hs256(&key.secret, out.as_bytes());
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(sig));
    out
}

fn b64(part: &str, what: &'static str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(what))
}

/// Verify a signed token presented for `target`.
///
/// `key_lookup(app, kid)` returns the developer key the token claims to be signed with. The
/// signature is checked (in constant time) before any claim is trusted, then times, the
/// application, the room, the role and the viewer's e-mail domain.
pub fn verify(
    token: &str,
    key_lookup: impl Fn(&str, Option<&str>) -> Option<DevKey>,
    now_unix: u64,
    target: &Target<'_>,
    policy: &RoomPolicy,
    limits: &Limits,
) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("too long"));
    }
    let mut parts = token.split('.');
    let (h, p, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => (h, p, s),
        _ => return Err(TokenError::Malformed("not three dot-separated parts")),
    };
    let header: Header = serde_json::from_slice(&b64(h, "header is not base64url")?)
        .map_err(|_| TokenError::Malformed("header is not JSON"))?;
    // RFC 8725 §3.1: accept only the algorithm we use, never "none".
    if header.alg != "HS256" {
        return Err(TokenError::UnsupportedAlgorithm);
    }
    let payload = b64(p, "payload is not base64url")?;
    let sig = b64(s, "signature is not base64url")?;
    if sig.len() != 32 {
        return Err(TokenError::BadSignature);
    }
    // The application named in the (not yet trusted) payload selects the key; nothing else
    // is read from the payload before the signature verifies.
    #[derive(Deserialize)]
    struct AppOnly {
        app: String,
    }
    let app = serde_json::from_slice::<AppOnly>(&payload)
        .map_err(|_| TokenError::Malformed("payload has no app"))?
        .app;
    let key = key_lookup(&app, header.kid.as_deref()).ok_or(TokenError::UnknownKey)?;
    let signed_len = h.len() + 1 + p.len();
    let expected = hs256(&key.secret, &token.as_bytes()[..signed_len]);
    if !crate::secrets::ct_eq(&expected, &sig) {
        return Err(TokenError::BadSignature);
    }
    let claims: Claims = serde_json::from_slice(&payload)
        .ok()
        .filter(|c: &Claims| c.role != Role::Trunk)
        .ok_or(TokenError::Malformed("bad claims"))?;
    check_claims(&claims, now_unix, target, policy, limits)?;
    Ok(claims)
}

fn check_claims(
    c: &Claims,
    now: u64,
    target: &Target<'_>,
    policy: &RoomPolicy,
    limits: &Limits,
) -> Result<(), TokenError> {
    if !policy.accepted_token_kinds.contains(&TokenKind::Signed) {
        return Err(TokenError::KindNotAccepted);
    }
    let leeway = limits.leeway_secs;
    let start = c.nbf.min(c.iat);
    if c.exp <= start {
        return Err(TokenError::EmptyValidity);
    }
    if c.exp - start > limits.max_lifetime_secs {
        return Err(TokenError::LifetimeTooLong);
    }
    // RFC 7519 §4.1.4 / §4.1.5 with a small leeway for clock skew.
    if now >= c.exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if now.saturating_add(leeway) < c.nbf {
        return Err(TokenError::NotYetValid);
    }
    if now.saturating_add(leeway) < c.iat {
        return Err(TokenError::IssuedInFuture);
    }
    if c.app != target.app {
        return Err(TokenError::WrongApp);
    }
    if c.room != target.room {
        return Err(TokenError::WrongRoom);
    }
    if target.intent == Intent::Publish && !c.role.can_publish() {
        return Err(TokenError::RoleCannotPublish);
    }
    // The domain rule decides who may watch: every token used to subscribe must carry an
    // allowed address, whatever its role (a speaker token is no way around it). Publishing is
    // not watching, so a publish needs no e-mail.
    if target.intent == Intent::Subscribe && !email_allowed(c.email.as_deref(), policy) {
        return Err(TokenError::EmailDomainNotAllowed);
    }
    Ok(())
}

fn email_allowed(email: Option<&str>, policy: &RoomPolicy) -> bool {
    if policy.allowed_email_domains.is_empty() {
        return true;
    }
    let Some(domain) = email.and_then(email_domain) else {
        return false;
    };
    policy
        .allowed_email_domains
        .iter()
        .any(|d| d.trim_start_matches('@').eq_ignore_ascii_case(domain))
}

/// The domain of a plausible address: exactly one `@`, a local part of 1–64 printable
/// characters without spaces, and a domain of dot-separated labels of 1–63 letters, digits
/// and hyphens (no hyphen at either end), 253 characters at most (RFC 5321 §4.5.3.1, RFC 1035
/// §2.3.1). Anything else (`x@evil.com@corp.example`, `a@-b.com`, `a@b..com`) is `None`.
fn email_domain(email: &str) -> Option<&str> {
    let (local, domain) = email.split_once('@')?;
    if domain.contains('@')
        || local.is_empty()
        || local.len() > 64
        || !local.bytes().all(|b| b.is_ascii_graphic())
        || domain.is_empty()
        || domain.len() > 253
    {
        return None;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    domain.split('.').all(label_ok).then_some(domain)
}

/// A Storm stream token for the minute containing `unix_time` (seed 002):
/// `md5(unixTime . password [. ip])` as lower-case hex, where `unixTime` is the decimal unix
/// time truncated to the full minute (PHP `strtotime(date('Y-m-d H:i:00'))`) and `.` is plain
/// string concatenation. An IPv4-mapped IPv6 address is written as IPv4.
pub fn mint_stream(password: &str, unix_time: u64, ip: Option<IpAddr>) -> String {
    let minute = unix_time - unix_time % 60;
    hex(&stream_digest(password, minute, ip))
}

fn stream_digest(password: &str, minute: u64, ip: Option<IpAddr>) -> [u8; 16] {
    let mut s = format!("{minute}{password}");
    if let Some(ip) = ip {
        s.push_str(&ip.to_canonical().to_string());
    }
    let d = hash(MessageDigest::md5(), s.as_bytes()).expect("MD5 is available in OpenSSL");
    let mut out = [0u8; 16];
    out.copy_from_slice(&d);
    out
}

use crate::secrets::hex;

fn unhex16(s: &str) -> Option<[u8; 16]> {
    crate::secrets::unhex(s)?.try_into().ok()
}

/// Verify a Storm stream token: valid when it matches the minute of `now_unix` or one of the
/// `stream_timeout_minutes` minutes before it (so it lives at least that many full minutes),
/// or the next minute when `leeway_secs` allows for a back end whose clock runs ahead. Every
/// candidate is computed and compared in constant time. Stream tokens grant viewing only.
pub fn verify_stream(
    token: &str,
    now_unix: u64,
    viewer_ip: Option<IpAddr>,
    intent: Intent,
    policy: &RoomPolicy,
    limits: &Limits,
) -> Result<(), TokenError> {
    if !policy.accepted_token_kinds.contains(&TokenKind::Stream) {
        return Err(TokenError::KindNotAccepted);
    }
    let Some(password) = policy.stream_password.as_deref() else {
        return Err(TokenError::KindNotAccepted);
    };
    if intent == Intent::Publish {
        return Err(TokenError::RoleCannotPublish);
    }
    // Stream tokens carry no e-mail: a room restricted to e-mail domains refuses them.
    if !policy.allowed_email_domains.is_empty() {
        return Err(TokenError::EmailDomainNotAllowed);
    }
    let ip = if policy.bind_ip {
        Some(viewer_ip.ok_or(TokenError::StreamTokenInvalid)?)
    } else {
        None
    };
    let given =
        unhex16(token.trim()).ok_or(TokenError::Malformed("stream token is not md5 hex"))?;
    let now_min = now_unix / 60;
    let ahead = limits.leeway_secs.div_ceil(60);
    // Bounded even for a policy stored before the bound existed.
    let minutes = policy
        .stream_timeout_minutes
        .min(MAX_STREAM_TIMEOUT_MINUTES);
    let first = now_min.saturating_sub(u64::from(minutes));
    let mut ok = false;
    for m in first..=now_min + ahead {
        // No early exit: the work does not depend on which minute matched.
        ok |= crate::secrets::ct_eq(&stream_digest(password, m * 60, ip), &given);
    }
    if ok {
        Ok(())
    } else {
        Err(TokenError::StreamTokenInvalid)
    }
}

/// A credential as presented by a client.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    Signed(&'a str),
    Stream(&'a str),
}

/// Who was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub kind: TokenKind,
    pub role: Role,
    /// The token's subject; `None` for stream tokens (anonymous viewers).
    pub sub: Option<String>,
    pub email: Option<String>,
}

/// Check any credential against a room: the one entry point the WHIP/WHEP handlers call.
pub fn authorize(
    credential: Credential<'_>,
    key_lookup: impl Fn(&str, Option<&str>) -> Option<DevKey>,
    now_unix: u64,
    viewer_ip: Option<IpAddr>,
    target: &Target<'_>,
    policy: &RoomPolicy,
    limits: &Limits,
) -> Result<Grant, TokenError> {
    match credential {
        Credential::Signed(t) => {
            let c = verify(t, key_lookup, now_unix, target, policy, limits)?;
            Ok(Grant {
                kind: TokenKind::Signed,
                role: c.role,
                sub: Some(c.sub),
                email: c.email,
            })
        }
        Credential::Stream(t) => {
            verify_stream(t, now_unix, viewer_ip, target.intent, policy, limits)?;
            Ok(Grant {
                kind: TokenKind::Stream,
                role: Role::Viewer,
                sub: None,
                email: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn key() -> DevKey {
        DevKey::new("k1", &[0x5a; 32]).unwrap()
    }

    fn claims(role: Role) -> Claims {
        Claims {
            sub: "alice".into(),
            app: "appA".into(),
            room: "blue".into(),
            role,
            exp: NOW + 600,
            nbf: NOW - 10,
            iat: NOW - 10,
            email: Some("alice@example.com".into()),
        }
    }

    fn lookup(app: &str, kid: Option<&str>) -> Option<DevKey> {
        (app == "appA" && kid == Some("k1")).then(key)
    }

    fn target(intent: Intent) -> Target<'static> {
        Target {
            app: "appA",
            room: "blue",
            intent,
        }
    }

    fn check(
        tok: &str,
        now: u64,
        intent: Intent,
        policy: &RoomPolicy,
    ) -> Result<Claims, TokenError> {
        verify(
            tok,
            lookup,
            now,
            &target(intent),
            policy,
            &Limits::default(),
        )
    }

    /// `trunk` belongs to static sessions: no token grants it, signed or minted by name.
    #[test]
    fn trunk_is_no_token_role() {
        let t = mint(&key(), &claims(Role::Trunk));
        assert_eq!(
            check(&t, NOW, Intent::Subscribe, &ok_policy()),
            Err(TokenError::Malformed("bad claims"))
        );
        assert_eq!(token_role("trunk"), None);
        assert_eq!(token_role("Host"), Some(Role::Host));
    }

    fn ok_policy() -> RoomPolicy {
        RoomPolicy::default()
    }

    #[test]
    fn mint_verify_round_trip() {
        let c = claims(Role::Host);
        let t = mint(&key(), &c);
        assert_eq!(t.split('.').count(), 3);
        assert!(!t.contains('='));
        assert_eq!(check(&t, NOW, Intent::Publish, &ok_policy()), Ok(c));
    }

    /// The documented Python snippet's construction (docs/TOKENS.md) gives the same bytes:
    /// HMAC-SHA256 over the ASCII "header.payload". Cross-checked against an independent
    /// HMAC computation here.
    #[test]
    fn signature_is_hmac_sha256_of_signing_input() {
        let t = mint(&key(), &claims(Role::Viewer));
        let (input, sig) = t.rsplit_once('.').unwrap();
        let pk = PKey::hmac(&[0x5a; 32]).unwrap();
        let mut s = Signer::new(MessageDigest::sha256(), &pk).unwrap();
        s.update(input.as_bytes()).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.encode(s.sign_to_vec().unwrap()), sig);
        let header: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(input.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "HS256");
        assert_eq!(header["kid"], "k1");
    }

    /// A token minted by the Python snippet in docs/TOKENS.md (hashlib/hmac/base64 only,
    /// `json.dumps` spacing) with key 0x5a×32, kid k1, now = 1700000000, ttl 300.
    #[test]
    fn verifies_token_from_documented_python_snippet() {
        let t = "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCIsICJraWQiOiAiazEifQ.\
eyJzdWIiOiAiYWxpY2UiLCAiYXBwIjogImFwcEEiLCAicm9vbSI6ICJibHVlIiwgInJvbGUiOiAidmlld2VyIiwgImlhdCI6IDE3MDAwMDAwMDAsICJuYmYiOiAxNzAwMDAwMDAwLCAiZXhwIjogMTcwMDAwMDMwMCwgImVtYWlsIjogImFsaWNlQGV4YW1wbGUuY29tIn0.\
MOKghQG_5QPydD9um1_ySyOhKMSLoNskfDp87Ee_z-M";
        let c = check(t, NOW + 10, Intent::Subscribe, &ok_policy()).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.role, c.exp),
            ("alice", Role::Viewer, NOW + 300)
        );
        assert_eq!(c.email.as_deref(), Some("alice@example.com"));
        assert_eq!(
            check(t, NOW + 330, Intent::Subscribe, &ok_policy()),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn malformed_tokens() {
        let p = ok_policy();
        for t in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.b.c",
            "e30.e30.AAAA",
            "x".repeat(5000).as_str(),
        ] {
            assert!(
                matches!(
                    check(t, NOW, Intent::Subscribe, &p),
                    Err(TokenError::Malformed(_)) | Err(TokenError::BadSignature)
                ),
                "{t:.20}"
            );
        }
        let good = mint(&key(), &claims(Role::Host));
        let mut parts: Vec<&str> = good.split('.').collect();
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#);
        parts[0] = &none_header;
        assert_eq!(
            check(&parts.join("."), NOW, Intent::Publish, &p),
            Err(TokenError::UnsupportedAlgorithm)
        );
        // Padding or the standard alphabet are not base64url-no-pad.
        let padded = format!("{good}=");
        assert!(matches!(
            check(&padded, NOW, Intent::Publish, &p),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn bad_signature_and_unknown_key() {
        let p = ok_policy();
        let t = mint(&key(), &claims(Role::Host));
        let other = DevKey::new("k1", &[0x33; 32]).unwrap();
        assert_eq!(
            check(&mint(&other, &claims(Role::Host)), NOW, Intent::Publish, &p),
            Err(TokenError::BadSignature)
        );
        // Flip one signature character.
        let mut b = t.clone().into_bytes();
        let last = b.len() - 2;
        b[last] = if b[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            check(std::str::from_utf8(&b).unwrap(), NOW, Intent::Publish, &p),
            Err(TokenError::BadSignature)
        );
        // Tampered payload (role upgrade) with the old signature.
        let (h, rest) = t.split_once('.').unwrap();
        let (_, s) = rest.split_once('.').unwrap();
        let forged = serde_json::to_vec(&claims(Role::Moderator)).unwrap();
        let forged = format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(forged));
        assert_eq!(
            check(&forged, NOW, Intent::Publish, &p),
            Err(TokenError::BadSignature)
        );
        let k2 = DevKey::new("k2", &[0x5a; 32]).unwrap();
        assert_eq!(
            check(&mint(&k2, &claims(Role::Host)), NOW, Intent::Publish, &p),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn times_and_leeway() {
        let p = ok_policy();
        let c = claims(Role::Host);
        let t = mint(&key(), &c);
        // Expired, within and beyond the 30 s leeway.
        assert!(check(&t, c.exp + 29, Intent::Publish, &p).is_ok());
        assert_eq!(
            check(&t, c.exp + 30, Intent::Publish, &p),
            Err(TokenError::Expired)
        );
        // Not yet valid.
        let mut f = claims(Role::Host);
        f.nbf = NOW + 100;
        f.iat = NOW - 10;
        let tf = mint(&key(), &f);
        assert_eq!(
            check(&tf, NOW, Intent::Publish, &p),
            Err(TokenError::NotYetValid)
        );
        assert!(check(&tf, NOW + 70, Intent::Publish, &p).is_ok());
        // Issued in the future: minting clock ahead by more than the leeway.
        let mut i = claims(Role::Host);
        i.iat = NOW + 31;
        i.nbf = NOW + 31;
        i.exp = NOW + 600;
        let ti = mint(&key(), &i);
        assert_eq!(
            check(&ti, NOW, Intent::Publish, &p),
            Err(TokenError::NotYetValid)
        );
        i.nbf = NOW - 5;
        let ti = mint(&key(), &i);
        assert_eq!(
            check(&ti, NOW, Intent::Publish, &p),
            Err(TokenError::IssuedInFuture)
        );
        // Leeway is configurable.
        let strict = Limits {
            leeway_secs: 0,
            ..Limits::default()
        };
        assert_eq!(
            verify(&t, lookup, c.exp, &target(Intent::Publish), &p, &strict),
            Err(TokenError::Expired)
        );
        // Lifetime cap.
        let mut l = claims(Role::Host);
        l.exp = l.iat + 24 * 3600 + 1;
        assert_eq!(
            check(&mint(&key(), &l), NOW, Intent::Publish, &p),
            Err(TokenError::LifetimeTooLong)
        );
        l.exp = l.iat;
        assert_eq!(
            check(&mint(&key(), &l), NOW, Intent::Publish, &p),
            Err(TokenError::EmptyValidity)
        );
    }

    #[test]
    fn app_room_role_email() {
        let p = ok_policy();
        let t = mint(&key(), &claims(Role::Viewer));
        let other_app = Target {
            app: "appB",
            room: "blue",
            intent: Intent::Subscribe,
        };
        assert_eq!(
            verify(&t, lookup, NOW, &other_app, &p, &Limits::default()),
            Err(TokenError::WrongApp)
        );
        let other_room = Target {
            app: "appA",
            room: "red",
            intent: Intent::Subscribe,
        };
        assert_eq!(
            verify(&t, lookup, NOW, &other_room, &p, &Limits::default()),
            Err(TokenError::WrongRoom)
        );
        assert_eq!(
            check(&t, NOW, Intent::Publish, &p),
            Err(TokenError::RoleCannotPublish)
        );
        assert!(check(&t, NOW, Intent::Subscribe, &p).is_ok());
        for r in [Role::Host, Role::Speaker, Role::Moderator] {
            assert!(check(&mint(&key(), &claims(r)), NOW, Intent::Publish, &p).is_ok());
        }

        let corp = RoomPolicy {
            allowed_email_domains: vec!["Example.com".into()],
            ..RoomPolicy::default()
        };
        assert!(check(&t, NOW, Intent::Subscribe, &corp).is_ok());
        let mut c = claims(Role::Viewer);
        c.email = Some("bob@evil-example.com".into());
        assert_eq!(
            check(&mint(&key(), &c), NOW, Intent::Subscribe, &corp),
            Err(TokenError::EmailDomainNotAllowed)
        );
        c.email = Some("bob@sub.example.com".into());
        assert_eq!(
            check(&mint(&key(), &c), NOW, Intent::Subscribe, &corp),
            Err(TokenError::EmailDomainNotAllowed)
        );
        c.email = None;
        assert_eq!(
            check(&mint(&key(), &c), NOW, Intent::Subscribe, &corp),
            Err(TokenError::EmailDomainNotAllowed)
        );
        // Publishing is not watching: no e-mail needed.
        let mut h = claims(Role::Speaker);
        h.email = None;
        assert!(check(&mint(&key(), &h), NOW, Intent::Publish, &corp).is_ok());
        // But a speaker token used to watch must carry an allowed address like any viewer.
        assert_eq!(
            check(&mint(&key(), &h), NOW, Intent::Subscribe, &corp),
            Err(TokenError::EmailDomainNotAllowed)
        );
        h.email = Some("sam@example.com".into());
        assert!(check(&mint(&key(), &h), NOW, Intent::Subscribe, &corp).is_ok());
        // Addresses are parsed, not split at the last `@`.
        for bad in [
            "x@evil.com@example.com",
            "@example.com",
            "a b@example.com",
            "a@-example.com",
            "a@example..com",
            "a@example.com.",
        ] {
            c.email = Some(bad.into());
            assert_eq!(
                check(&mint(&key(), &c), NOW, Intent::Subscribe, &corp),
                Err(TokenError::EmailDomainNotAllowed),
                "{bad}"
            );
        }

        let stream_only = RoomPolicy {
            accepted_token_kinds: vec![TokenKind::Stream],
            ..RoomPolicy::default()
        };
        assert_eq!(
            check(&t, NOW, Intent::Subscribe, &stream_only),
            Err(TokenError::KindNotAccepted)
        );
    }

    #[test]
    fn dev_keys() {
        assert_eq!(
            DevKey::new("k", &[1; 31]),
            Err(KeyError::TooShort { min: 32, got: 31 })
        );
        assert_eq!(DevKey::new("", &[1; 32]), Err(KeyError::BadKid));
        assert_eq!(DevKey::new("a b", &[1; 32]), Err(KeyError::BadKid));
        let a = DevKey::generate("k1").unwrap();
        let b = DevKey::generate("k1").unwrap();
        assert_ne!(a.secret(), b.secret());
        assert!(!format!("{a:?}").contains(&format!("{:?}", a.secret())));
    }

    fn stream_policy(bind_ip: bool) -> RoomPolicy {
        RoomPolicy {
            accepted_token_kinds: vec![TokenKind::Signed, TokenKind::Stream],
            stream_password: Some("qwerty".into()),
            stream_timeout_minutes: 5,
            bind_ip,
            ..RoomPolicy::default()
        }
    }

    #[test]
    fn storm_token_matches_seed_algorithm() {
        // PHP: md5(strtotime(date('Y-m-d H:i:00')) . "qwerty"): time truncated to the minute,
        // decimal, concatenated with the password (and IP), lower-case hex.
        let t = 1_700_000_059;
        let minute = t - t % 60;
        let expect =
            hex(&hash(MessageDigest::md5(), format!("{minute}qwerty").as_bytes()).unwrap());
        assert_eq!(mint_stream("qwerty", t, None), expect);
        let ip: IpAddr = "192.168.0.1".parse().unwrap();
        let expect_ip = hex(&hash(
            MessageDigest::md5(),
            format!("{minute}qwerty192.168.0.1").as_bytes(),
        )
        .unwrap());
        assert_eq!(mint_stream("qwerty", t, Some(ip)), expect_ip);
        // Known answers computed independently (Python hashlib): 2023-11-14 22:14:19 UTC is
        // minute 1700000040.
        assert_eq!(
            mint_stream("qwerty", t, None),
            "f7956c9aab9d71bf6d3fc0c2abfbff8f"
        );
        assert_eq!(
            mint_stream("qwerty", t, Some(ip)),
            "d2126a53469b81899751a68c0ce4ed62"
        );
        // Mapped IPv6 addresses are written as IPv4.
        let mapped: IpAddr = "::ffff:192.168.0.1".parse().unwrap();
        assert_eq!(mint_stream("qwerty", t, Some(mapped)), expect_ip);
    }

    #[test]
    fn storm_token_window() {
        let p = stream_policy(false);
        let l = Limits::default();
        let minted_at = NOW;
        let tok = mint_stream("qwerty", minted_at, None);
        let v = |now: u64| verify_stream(&tok, now, None, Intent::Subscribe, &p, &l);
        assert_eq!(v(minted_at), Ok(()));
        assert_eq!(v(minted_at + 5 * 60), Ok(()), "valid for the whole timeout");
        let minute_start = minted_at - minted_at % 60;
        assert_eq!(
            v(minute_start + 6 * 60),
            Err(TokenError::StreamTokenInvalid)
        );
        // A back end one minute ahead is tolerated by the leeway; two minutes are not.
        assert_eq!(v(minute_start - 30), Ok(()));
        assert_eq!(v(minute_start - 61), Err(TokenError::StreamTokenInvalid));
        // Upper-case hex is accepted; garbage is malformed.
        assert_eq!(
            verify_stream(
                &tok.to_uppercase(),
                minted_at,
                None,
                Intent::Subscribe,
                &p,
                &l
            ),
            Ok(())
        );
        assert!(matches!(
            verify_stream("zz", minted_at, None, Intent::Subscribe, &p, &l),
            Err(TokenError::Malformed(_))
        ));
        let wrong = mint_stream("other", minted_at, None);
        assert_eq!(
            verify_stream(&wrong, minted_at, None, Intent::Subscribe, &p, &l),
            Err(TokenError::StreamTokenInvalid)
        );
        assert_eq!(
            verify_stream(&tok, minted_at, None, Intent::Publish, &p, &l),
            Err(TokenError::RoleCannotPublish)
        );
        assert_eq!(
            verify_stream(
                &tok,
                minted_at,
                None,
                Intent::Subscribe,
                &RoomPolicy::default(),
                &l
            ),
            Err(TokenError::KindNotAccepted)
        );
    }

    #[test]
    fn storm_token_ip_binding() {
        let p = stream_policy(true);
        let l = Limits::default();
        let ip: IpAddr = "2001:db8::7".parse().unwrap();
        let tok = mint_stream("qwerty", NOW, Some(ip));
        assert_eq!(
            verify_stream(&tok, NOW, Some(ip), Intent::Subscribe, &p, &l),
            Ok(())
        );
        let other: IpAddr = "2001:db8::8".parse().unwrap();
        assert_eq!(
            verify_stream(&tok, NOW, Some(other), Intent::Subscribe, &p, &l),
            Err(TokenError::StreamTokenInvalid)
        );
        assert_eq!(
            verify_stream(&tok, NOW, None, Intent::Subscribe, &p, &l),
            Err(TokenError::StreamTokenInvalid)
        );
        // Without binding, an IP-bound token is not the same token.
        let unbound = stream_policy(false);
        assert_eq!(
            verify_stream(&tok, NOW, Some(ip), Intent::Subscribe, &unbound, &l),
            Err(TokenError::StreamTokenInvalid)
        );
    }

    #[test]
    fn authorize_dispatches() {
        let p = stream_policy(false);
        let l = Limits::default();
        let g = authorize(
            Credential::Stream(&mint_stream("qwerty", NOW, None)),
            lookup,
            NOW,
            None,
            &target(Intent::Subscribe),
            &p,
            &l,
        )
        .unwrap();
        assert_eq!(
            (g.kind, g.role, g.sub),
            (TokenKind::Stream, Role::Viewer, None)
        );
        let g = authorize(
            Credential::Signed(&mint(&key(), &claims(Role::Moderator))),
            lookup,
            NOW,
            None,
            &target(Intent::Publish),
            &p,
            &l,
        )
        .unwrap();
        assert_eq!((g.kind, g.role), (TokenKind::Signed, Role::Moderator));
        assert!(may_remove_participants(g.role));
        let corp = RoomPolicy {
            allowed_email_domains: vec!["example.com".into()],
            ..stream_policy(false)
        };
        assert_eq!(
            authorize(
                Credential::Stream(&mint_stream("qwerty", NOW, None)),
                lookup,
                NOW,
                None,
                &target(Intent::Subscribe),
                &corp,
                &l,
            ),
            Err(TokenError::EmailDomainNotAllowed)
        );
    }

    #[test]
    fn policy_serde() {
        let p = stream_policy(true);
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<RoomPolicy>(&j).unwrap(), p);
        assert!(serde_json::from_str::<RoomPolicy>(r#"{"bogus":1}"#).is_err());
        assert_eq!(
            serde_json::from_str::<RoomPolicy>("{}").unwrap(),
            RoomPolicy::default()
        );
        assert_eq!(Role::from_name("VIEWER"), Some(Role::Viewer));
    }
}
