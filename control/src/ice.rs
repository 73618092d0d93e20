//! ICE-lite agent (RFC 8445 §2.5): answers connectivity checks for WebRTC sessions, tracks
//! nomination and consent, and tells its owner which peer address belongs to which session.
//!
//! Owns: the local/remote credential registry (ufrag/pwd → session), STUN Binding request
//! processing (RFC 8489 §6.3, §9.1.3 short-term credentials; RFC 8445 §7.3 ICE extensions),
//! valid pairs and regular nomination (RFC 8445 §8.1.1), consent timeouts (RFC 7675 §5.1),
//! and the [`IceEvent`] queue.
//! May not touch: sockets, the clock (every call takes `now`), shared memory, the state journal
//! (the daemon applies [`IceEvent`]s), DTLS.
//!
//! A lite agent never sends checks: it answers the full peer's checks and takes the
//! controlled role (RFC 8445 §6.1.1). So "consent" here is inferred: a full agent keeps
//! sending consent requests on the selected pair about every 5 s (RFC 7675 §5.1); when none
//! has arrived from the nominated address for the consent timeout (30 s by default, the
//! RFC 7675 §5.1 value), the peer is gone and the session is expired.

use contract::shm::{MAX_ICE_PWD, MAX_ICE_REMOTE_UFRAG, MAX_ICE_UFRAG};
use contract::wire::ice::{self as check, Answer, NotCheck};
use contract::wire::stun::StunMessage;
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Session ids, as in shm and the admin API.
pub type SessionId = u64;

/// Generated ufrag length: 8 ice-chars = 48 random bits (RFC 8445 §5.3 asks ≥ 24 bits).
pub const UFRAG_LEN: usize = 8;
/// Generated password length: 32 ice-chars = 192 random bits (RFC 8445 §5.3 asks ≥ 128
/// bits; RFC 8839 §5.4 asks ≥ 22 characters).
pub const PWD_LEN: usize = 32;
/// RFC 7675 §5.1: consent expires 30 s after the last successful check.
pub const DEFAULT_CONSENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default credential capacity (one per WebRTC session).
pub const DEFAULT_MAX_CREDENTIALS: usize = 16_384;
/// Valid pairs remembered per session (remote addresses that passed a check).
const VALID_PAIRS: usize = 8;
/// Transaction ids remembered per session (a replayed USE-CANDIDATE check from a new address
/// does not move the session).
const RECENT_TXIDS: usize = 16;

/// ice-char = ALPHA / DIGIT / "+" / "/" (RFC 8839 §5.4); 64 symbols, so one random byte
/// masked to 6 bits picks one without bias.
const ICE_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// What the agent tells its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceEvent {
    /// The controlling peer nominated the pair with this remote address (first nomination,
    /// or a move to a new address): bind the session's peer to it and let media flow.
    Nominated {
        session: SessionId,
        peer: SocketAddr,
    },
    /// No valid check from the nominated address for the consent timeout: stop media.
    Expired { session: SessionId },
}

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IceError {
    #[error("{0} has characters outside ALPHA / DIGIT / \"+\" / \"/\" (RFC 8839 §5.4)")]
    BadChars(&'static str),
    #[error("{what} is {len} characters, outside {min}..={max} (RFC 8839 §5.4; the relay's session slot)")]
    BadLength {
        what: &'static str,
        len: usize,
        min: usize,
        max: usize,
    },
    #[error("local ufrag already belongs to another session")]
    UfragInUse,
    #[error("ICE credential table is full ({0} sessions)")]
    Full(usize),
    #[error("the system random generator failed")]
    Random,
}

/// A generated local ufrag/password pair.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub ufrag: String,
    pub pwd: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("ufrag", &self.ufrag)
            .field("pwd", &"<redacted>")
            .finish()
    }
}

fn random_ice_string(rng: &dyn SecureRandom, len: usize) -> Result<String, IceError> {
    let mut b = vec![0u8; len];
    rng.fill(&mut b).map_err(|_| IceError::Random)?;
    Ok(b.iter()
        .map(|&x| char::from(ICE_CHARS[usize::from(x & 63)]))
        .collect())
}

/// Fresh local credentials from the system CSPRNG (RFC 8445 §5.3, RFC 8839 §5.4).
pub fn generate_credentials() -> Result<Credentials, IceError> {
    let rng = SystemRandom::new();
    Ok(Credentials {
        ufrag: random_ice_string(&rng, UFRAG_LEN)?,
        pwd: random_ice_string(&rng, PWD_LEN)?,
    })
}

/// `max` is 256 (RFC 8839 §5.4) for what stays in control, and the session slot's field
/// size for what control publishes to the relay in shm (docs/SHM.md).
fn check_ice_string(what: &'static str, s: &str, min: usize, max: usize) -> Result<(), IceError> {
    let len = s.len();
    if !(min..=max).contains(&len) {
        return Err(IceError::BadLength {
            what,
            len,
            min,
            max,
        });
    }
    if !s.bytes().all(|b| ICE_CHARS.contains(&b)) {
        return Err(IceError::BadChars(what));
    }
    Ok(())
}

/// How checks were answered, and what the agent did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IceCounters {
    /// Binding success responses sent.
    pub success: u64,
    /// 400 Bad Request sent (no USERNAME/MESSAGE-INTEGRITY, or no role attribute).
    pub bad_request: u64,
    /// 401 Unauthenticated sent (unknown ufrag, integrity mismatch).
    pub unauthenticated: u64,
    /// 420 Unknown Attribute sent.
    pub unknown_attribute: u64,
    /// 487 Role Conflict sent (the peer claimed the controlled role).
    pub role_conflict: u64,
    /// Datagrams silently discarded (not STUN, bad FINGERPRINT, not a Binding request).
    pub discarded: u64,
    /// Nominated events (first nomination or a move to a new address).
    pub nominations: u64,
    /// Consent expiries.
    pub expiries: u64,
}

struct Session {
    local_ufrag: String,
    local_pwd: String,
    remote_ufrag: String,
    valid: [Option<SocketAddr>; VALID_PAIRS],
    valid_next: usize,
    nominated: Option<SocketAddr>,
    /// Last valid check from the nominated address (meaningful while nominated).
    last_consent: Instant,
    txids: [[u8; 12]; RECENT_TXIDS],
    txid_next: usize,
}

impl Session {
    fn mark_valid(&mut self, peer: SocketAddr) {
        if !self.valid.contains(&Some(peer)) {
            self.valid[self.valid_next] = Some(peer);
            self.valid_next = (self.valid_next + 1) % VALID_PAIRS;
        }
    }

    /// Remember `txid`; true when it was seen before.
    fn seen_txid(&mut self, txid: [u8; 12]) -> bool {
        if self.txids.contains(&txid) {
            return true;
        }
        self.txids[self.txid_next] = txid;
        self.txid_next = (self.txid_next + 1) % RECENT_TXIDS;
        false
    }
}

/// The ICE-lite agent for every WebRTC session of this control process. I/O-free: feed it
/// datagrams with [`handle_stun`](Self::handle_stun) and time with
/// [`handle_timeout`](Self::handle_timeout); drain [`poll_event`](Self::poll_event) after each.
pub struct IceAgent {
    by_ufrag: HashMap<String, SessionId>,
    sessions: HashMap<SessionId, Session>,
    events: VecDeque<IceEvent>,
    consent_timeout: Duration,
    max: usize,
    counters: IceCounters,
}

impl Default for IceAgent {
    fn default() -> Self {
        IceAgent::new(DEFAULT_CONSENT_TIMEOUT, DEFAULT_MAX_CREDENTIALS)
    }
}

/// The address as a peer sees it: IPv4-mapped IPv6 becomes IPv4 (ICE-TCP keys pass).
use contract::wire::normalize_addr as normalize;

impl IceAgent {
    /// An agent expiring consent after `consent_timeout`, holding at most `max_credentials`
    /// sessions.
    pub fn new(consent_timeout: Duration, max_credentials: usize) -> IceAgent {
        IceAgent {
            by_ufrag: HashMap::new(),
            sessions: HashMap::new(),
            events: VecDeque::new(),
            consent_timeout,
            max: max_credentials.max(1),
            counters: IceCounters::default(),
        }
    }

    /// Register (or, for an ICE restart, replace) a session's credentials. `local_*` are
    /// what our SDP answer announced; `remote_ufrag` is the peer's `a=ice-ufrag`. The remote
    /// password is validated but unused: a lite agent never sends checks (RFC 8445 §2.5).
    /// The local ufrag, local password and remote ufrag must fit the session slot control
    /// publishes them in (32, 64 and 32 characters; docs/SHM.md), so the relay can answer.
    /// A replaced registration keeps the session's nomination and consent clock.
    pub fn add_credentials(
        &mut self,
        session: SessionId,
        local_ufrag: &str,
        local_pwd: &str,
        remote_ufrag: &str,
        remote_pwd: Option<&str>,
    ) -> Result<(), IceError> {
        check_ice_string("local ufrag", local_ufrag, 4, MAX_ICE_UFRAG)?;
        check_ice_string("local pwd", local_pwd, 22, MAX_ICE_PWD)?;
        check_ice_string("remote ufrag", remote_ufrag, 4, MAX_ICE_REMOTE_UFRAG)?;
        if let Some(p) = remote_pwd {
            check_ice_string("remote pwd", p, 22, 256)?;
        }
        if self
            .by_ufrag
            .get(local_ufrag)
            .is_some_and(|&s| s != session)
        {
            return Err(IceError::UfragInUse);
        }
        let (nominated, last_consent) = match self.sessions.get(&session) {
            Some(old) => {
                self.by_ufrag.remove(&old.local_ufrag);
                (old.nominated, old.last_consent)
            }
            None => {
                if self.sessions.len() >= self.max {
                    return Err(IceError::Full(self.max));
                }
                (None, Instant::now())
            }
        };
        self.by_ufrag.insert(local_ufrag.to_string(), session);
        self.sessions.insert(
            session,
            Session {
                local_ufrag: local_ufrag.to_string(),
                local_pwd: local_pwd.to_string(),
                remote_ufrag: remote_ufrag.to_string(),
                valid: [None; VALID_PAIRS],
                valid_next: 0,
                nominated,
                last_consent,
                txids: [[0; 12]; RECENT_TXIDS],
                txid_next: 0,
            },
        );
        Ok(())
    }

    /// Forget a session (and any event still queued for it). True if it was known.
    pub fn remove(&mut self, session: SessionId) -> bool {
        self.events.retain(|e| match e {
            IceEvent::Nominated { session: s, .. } | IceEvent::Expired { session: s } => {
                *s != session
            }
        });
        match self.sessions.remove(&session) {
            Some(s) => {
                self.by_ufrag.remove(&s.local_ufrag);
                true
            }
            None => false,
        }
    }

    /// Sessions with credentials.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True with no credentials.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The nominated remote address of a session, if any.
    pub fn nominated(&self, session: SessionId) -> Option<SocketAddr> {
        self.sessions.get(&session).and_then(|s| s.nominated)
    }

    /// Counters so far.
    pub fn counters(&self) -> IceCounters {
        self.counters
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<IceEvent> {
        self.events.pop_front()
    }

    /// Queue an event; a Nominated directly following another Nominated for the same session
    /// replaces it, so the queue stays bounded by the session count between polls.
    fn push_event(&mut self, ev: IceEvent) {
        if let IceEvent::Nominated { session, .. } = ev {
            let last_for_session = self.events.iter_mut().rev().find(|e| match e {
                IceEvent::Nominated { session: s, .. } | IceEvent::Expired { session: s } => {
                    *s == session
                }
            });
            if let Some(e @ IceEvent::Nominated { .. }) = last_for_session {
                *e = ev;
                return;
            }
        }
        self.events.push_back(ev);
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work: the earliest consent
    /// deadline of a nominated session.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter(|s| s.nominated.is_some())
            .map(|s| s.last_consent + self.consent_timeout)
            .min()
    }

    /// Expire nominated sessions whose consent ran out (RFC 7675 §5.1): their nomination is
    /// dropped and [`IceEvent::Expired`] queued. A later USE-CANDIDATE check nominates again.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.consent_timeout;
        let mut expired = Vec::new();
        for (&id, s) in self.sessions.iter_mut() {
            if s.nominated.is_some() && now.saturating_duration_since(s.last_consent) >= timeout {
                s.nominated = None;
                expired.push(id);
            }
        }
        expired.sort_unstable();
        for session in expired {
            self.counters.expiries += 1;
            self.push_event(IceEvent::Expired { session });
        }
    }

    /// Process one STUN datagram from `peer` (as the relay saw its source address); write
    /// the response into `out` and return its length, or `None` when the datagram is
    /// silently discarded. `out` should hold at least 128 bytes.
    pub fn handle_stun(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        data: &[u8],
        out: &mut [u8],
    ) -> Option<usize> {
        let peer = normalize(peer);
        let c = match check::parse_check(data) {
            Ok(c) => c,
            // RFC 8489 §6.3: a message failing the basic checks is silently discarded;
            // RFC 8445 §7 requires FINGERPRINT on every ICE check (RFC 8489 §14.7: without a
            // valid one it is not STUN). Indications (keepalives, RFC 8445 §11) need no
            // answer; responses are never solicited by a lite agent.
            Err(NotCheck::Malformed | NotCheck::Discard) => {
                self.counters.discarded += 1;
                return None;
            }
            // RFC 8489 §9.1.3: both USERNAME and MESSAGE-INTEGRITY, or 400.
            Err(NotCheck::MissingCredentials) => {
                self.counters.bad_request += 1;
                return unauthenticated(out, data, 400, "Bad Request");
            }
            Err(NotCheck::BadUsername) => {
                self.counters.unauthenticated += 1;
                return unauthenticated(out, data, 401, "Unauthenticated");
            }
        };
        let msg = c.msg;
        // USERNAME is "ourufrag:theirufrag" (RFC 8445 §7.2.2). An unknown one, or a failing
        // MESSAGE-INTEGRITY, is 401 without MESSAGE-INTEGRITY (RFC 8489 §9.1.3).
        let sid = core::str::from_utf8(c.local_ufrag).ok().and_then(|ours| {
            let sid = *self.by_ufrag.get(ours)?;
            let s = self.sessions.get(&sid)?;
            (s.remote_ufrag.as_bytes() == c.remote_ufrag).then_some(sid)
        });
        let Some(sid) = sid else {
            self.counters.unauthenticated += 1;
            return unauthenticated(out, data, 401, "Unauthenticated");
        };
        // The lookup above found it; no other code runs between.
        let s = self.sessions.get_mut(&sid)?;
        if msg.verify_integrity(s.local_pwd.as_bytes()).is_err() {
            self.counters.unauthenticated += 1;
            return unauthenticated(out, data, 401, "Unauthenticated");
        }
        // Authenticated: 420 for unknown comprehension-required attributes, 487 when the peer
        // claims the controlled role too, 400 without a role, else success; every answer
        // carries MESSAGE-INTEGRITY with the same password (RFC 8489 §9.1.4). The relay
        // answers the same checks with the same function.
        let (answer, n) = check::answer(&msg, peer, s.local_pwd.as_bytes(), out).ok()?;
        match answer {
            Answer::Success => {}
            Answer::UnknownAttribute => {
                self.counters.unknown_attribute += 1;
                return Some(n);
            }
            Answer::RoleConflict => {
                self.counters.role_conflict += 1;
                return Some(n);
            }
            Answer::BadRequest => {
                self.counters.bad_request += 1;
                return Some(n);
            }
        }
        // The check succeeded (answered above; no state changes for an answer that cannot
        // be written): the pair is valid (a lite agent's pairs become valid by answering,
        // RFC 8445 §2.5) and consent from the nominated address is refreshed.
        self.counters.success += 1;
        let replayed = s.seen_txid(msg.transaction_id());
        s.mark_valid(peer);
        if s.nominated == Some(peer) {
            s.last_consent = now;
        } else if msg.use_candidate() && !replayed {
            // Regular nomination (RFC 8445 §8.1.1): USE-CANDIDATE on a check nominates the
            // pair; §7.3.1.5 / §7.3.2 (lite): the controlled agent marks it nominated once it
            // is valid, which for a lite agent is this very answer. A later nomination of another address
            // (network change) moves the session. A replayed transaction id never moves it.
            s.nominated = Some(peer);
            s.last_consent = now;
            self.counters.nominations += 1;
            self.push_event(IceEvent::Nominated { session: sid, peer });
        }
        Some(n)
    }
}

/// An error response without MESSAGE-INTEGRITY to a request that did not authenticate
/// (RFC 8489 §9.1.3), with FINGERPRINT (RFC 8445 §7).
fn unauthenticated(out: &mut [u8], data: &[u8], code: u16, reason: &str) -> Option<usize> {
    let req = StunMessage::parse(data).ok()?;
    check::error_response(out, &req, code, reason, None, &[]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::wire::stun::{self, attr, Class, StunWriter, METHOD_BINDING};

    const L_UFRAG: &str = "LoCa";
    const L_PWD: &str = "localpasswordlocalpassword0123";
    const R_UFRAG: &str = "ReMo";

    struct Check<'a> {
        txid: [u8; 12],
        user: Option<&'a str>,
        key: Option<&'a str>,
        controlling: bool,
        controlled: bool,
        use_candidate: bool,
        fingerprint: bool,
        extra: Option<u16>,
        class: Class,
    }

    impl Default for Check<'_> {
        fn default() -> Self {
            Check {
                txid: [9; 12],
                user: Some("LoCa:ReMo"),
                key: Some(L_PWD),
                controlling: true,
                controlled: false,
                use_candidate: false,
                fingerprint: true,
                extra: None,
                class: Class::Request,
            }
        }
    }

    impl Check<'_> {
        fn bytes(&self) -> Vec<u8> {
            let mut buf = vec![0u8; 256];
            let mut w = StunWriter::new(
                &mut buf,
                stun::message_type(METHOD_BINDING, self.class),
                &self.txid,
            )
            .unwrap();
            if let Some(u) = self.user {
                w.username(u.as_bytes()).unwrap();
            }
            w.priority(0x6e00_01ff).unwrap();
            if self.controlling {
                w.ice_controlling(0x1234).unwrap();
            }
            if self.controlled {
                w.ice_controlled(0x5678).unwrap();
            }
            if self.use_candidate {
                w.use_candidate().unwrap();
            }
            if let Some(t) = self.extra {
                w.attribute(t, &[1, 2, 3, 4]).unwrap();
            }
            if let Some(k) = self.key {
                w.message_integrity(k.as_bytes()).unwrap();
            }
            if self.fingerprint {
                w.fingerprint().unwrap();
            }
            let n = w.finish();
            buf.truncate(n);
            buf
        }
    }

    fn agent() -> IceAgent {
        let mut a = IceAgent::new(Duration::from_secs(30), 16);
        a.add_credentials(7, L_UFRAG, L_PWD, R_UFRAG, None).unwrap();
        a
    }

    fn peer() -> SocketAddr {
        "198.51.100.7:50000".parse().unwrap()
    }

    /// Run a check; return the parsed response bytes (None = discarded).
    fn run(a: &mut IceAgent, now: Instant, from: SocketAddr, c: &Check<'_>) -> Option<Vec<u8>> {
        let mut out = [0u8; 512];
        let n = a.handle_stun(now, from, &c.bytes(), &mut out)?;
        Some(out[..n].to_vec())
    }

    fn error_of(resp: &[u8]) -> u16 {
        let m = StunMessage::parse(resp).unwrap();
        assert_eq!(m.class(), Class::ErrorResponse);
        assert_eq!(m.method(), METHOD_BINDING);
        m.verify_fingerprint().unwrap();
        m.error_code().unwrap().code
    }

    #[test]
    fn valid_check_gets_verifiable_success() {
        let mut a = agent();
        let now = Instant::now();
        for from in [
            peer(),
            "[2001:db8::9]:6000".parse().unwrap(),
            "[::ffff:192.0.2.5]:7000".parse().unwrap(),
        ] {
            let c = Check {
                txid: [from.port() as u8; 12],
                ..Check::default()
            };
            let resp = run(&mut a, now, from, &c).expect("answered");
            let m = StunMessage::parse(&resp).unwrap();
            assert_eq!(m.class(), Class::SuccessResponse);
            assert_eq!(m.method(), METHOD_BINDING);
            assert_eq!(m.transaction_id(), c.txid);
            assert_eq!(m.xor_mapped_address(), Some(normalize(from)));
            m.verify_integrity(L_PWD.as_bytes()).unwrap();
            assert!(m.verify_integrity(b"some other password!!").is_err());
            m.verify_fingerprint().unwrap();
        }
        assert_eq!(a.counters().success, 3);
        assert_eq!(
            a.poll_event(),
            None,
            "no USE-CANDIDATE: valid, not nominated"
        );
        assert_eq!(a.nominated(7), None);
    }

    #[test]
    fn rejections_follow_rfc_8489() {
        let mut a = agent();
        let now = Instant::now();
        // Wrong password: 401 without MESSAGE-INTEGRITY (RFC 8489 §9.1.3).
        let bad_key = Check {
            key: Some("notthepasswordnotthepassword"),
            ..Check::default()
        };
        let r = run(&mut a, now, peer(), &bad_key).unwrap();
        assert_eq!(error_of(&r), 401);
        assert!(StunMessage::parse(&r)
            .unwrap()
            .message_integrity()
            .is_none());
        // Unknown local ufrag, and a known one with the wrong remote part: 401.
        for user in ["Nope:ReMo", "LoCa:Nope", "LoCa", "", "LoCa:ReMo:x"] {
            let c = Check {
                user: Some(user),
                ..Check::default()
            };
            let r = run(&mut a, now, peer(), &c).unwrap();
            assert_eq!(error_of(&r), 401, "user {user:?}");
        }
        // No USERNAME, or no MESSAGE-INTEGRITY: 400 without MESSAGE-INTEGRITY.
        for c in [
            Check {
                user: None,
                ..Check::default()
            },
            Check {
                key: None,
                ..Check::default()
            },
        ] {
            let r = run(&mut a, now, peer(), &c).unwrap();
            assert_eq!(error_of(&r), 400);
            assert!(StunMessage::parse(&r)
                .unwrap()
                .message_integrity()
                .is_none());
        }
        // No FINGERPRINT, a corrupted one, indications, responses, garbage: silently discarded.
        let no_fp = Check {
            fingerprint: false,
            ..Check::default()
        };
        assert_eq!(run(&mut a, now, peer(), &no_fp), None);
        let mut corrupt = Check::default().bytes();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        let mut out = [0u8; 512];
        assert_eq!(a.handle_stun(now, peer(), &corrupt, &mut out), None);
        for class in [Class::Indication, Class::SuccessResponse] {
            let c = Check {
                class,
                ..Check::default()
            };
            assert_eq!(run(&mut a, now, peer(), &c), None);
        }
        assert_eq!(a.handle_stun(now, peer(), b"\x00\x01junk", &mut out), None);
        assert_eq!(a.handle_stun(now, peer(), &[], &mut out), None);
        let c = a.counters();
        assert_eq!(
            (c.unauthenticated, c.bad_request, c.discarded, c.success),
            (6, 2, 6, 0)
        );
        assert_eq!(a.poll_event(), None);
    }

    #[test]
    fn roles_and_unknown_attributes() {
        let mut a = agent();
        let now = Instant::now();
        // The peer claims the controlled role: 487, authenticated.
        let c = Check {
            controlling: false,
            controlled: true,
            use_candidate: true,
            ..Check::default()
        };
        let r = run(&mut a, now, peer(), &c).unwrap();
        assert_eq!(error_of(&r), 487);
        StunMessage::parse(&r)
            .unwrap()
            .verify_integrity(L_PWD.as_bytes())
            .unwrap();
        // No role attribute at all: 400, authenticated.
        let c = Check {
            controlling: false,
            ..Check::default()
        };
        let r = run(&mut a, now, peer(), &c).unwrap();
        assert_eq!(error_of(&r), 400);
        StunMessage::parse(&r)
            .unwrap()
            .verify_integrity(L_PWD.as_bytes())
            .unwrap();
        // An unknown comprehension-required attribute: 420 listing it.
        let c = Check {
            extra: Some(0x0031),
            ..Check::default()
        };
        let r = run(&mut a, now, peer(), &c).unwrap();
        assert_eq!(error_of(&r), 420);
        let m = StunMessage::parse(&r).unwrap();
        assert_eq!(
            m.attribute(attr::UNKNOWN_ATTRIBUTES).unwrap().value,
            &[0x00, 0x31]
        );
        m.verify_integrity(L_PWD.as_bytes()).unwrap();
        // An unknown comprehension-optional one is fine.
        let c = Check {
            extra: Some(0xC057),
            ..Check::default()
        };
        let r = run(&mut a, now, peer(), &c).unwrap();
        assert_eq!(
            StunMessage::parse(&r).unwrap().class(),
            Class::SuccessResponse
        );
        assert_eq!(a.nominated(7), None, "failed checks nominate nothing");
        assert_eq!(a.poll_event(), None);
    }

    #[test]
    fn regular_nomination() {
        let mut a = agent();
        let now = Instant::now();
        run(&mut a, now, peer(), &Check::default()).unwrap();
        assert_eq!(a.poll_event(), None);
        let nominate = Check {
            txid: [1; 12],
            use_candidate: true,
            ..Check::default()
        };
        run(&mut a, now, peer(), &nominate).unwrap();
        assert_eq!(
            a.poll_event(),
            Some(IceEvent::Nominated {
                session: 7,
                peer: peer()
            })
        );
        assert_eq!(a.nominated(7), Some(peer()));
        // Re-nominating the same address (or a retransmission) is not news.
        run(&mut a, now, peer(), &nominate).unwrap();
        assert_eq!(a.poll_event(), None);
        // A captured USE-CANDIDATE check replayed from another address moves nothing, though
        // it is answered (the attacker learns only its own address).
        let other: SocketAddr = "203.0.113.9:4444".parse().unwrap();
        run(&mut a, now, other, &nominate).unwrap();
        assert_eq!(a.poll_event(), None);
        assert_eq!(a.nominated(7), Some(peer()));
        // A fresh nomination from a new address (network change) moves the session.
        let moved = Check {
            txid: [2; 12],
            use_candidate: true,
            ..Check::default()
        };
        run(&mut a, now, other, &moved).unwrap();
        assert_eq!(
            a.poll_event(),
            Some(IceEvent::Nominated {
                session: 7,
                peer: other
            })
        );
        assert_eq!(a.counters().nominations, 2);
    }

    #[test]
    fn consent_expires_without_checks() {
        let mut a = agent();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let nominate = Check {
            use_candidate: true,
            ..Check::default()
        };
        run(&mut a, t0, peer(), &nominate).unwrap();
        assert!(matches!(a.poll_event(), Some(IceEvent::Nominated { .. })));
        assert_eq!(a.next_timeout(), Some(t0 + s(30)));
        a.handle_timeout(t0 + s(29));
        assert_eq!(a.poll_event(), None);
        // A consent check (no USE-CANDIDATE) from the nominated address refreshes consent.
        let consent = Check {
            txid: [3; 12],
            ..Check::default()
        };
        run(&mut a, t0 + s(20), peer(), &consent).unwrap();
        // One from elsewhere does not.
        let elsewhere: SocketAddr = "192.0.2.200:1".parse().unwrap();
        let c2 = Check {
            txid: [4; 12],
            ..Check::default()
        };
        run(&mut a, t0 + s(45), elsewhere, &c2).unwrap();
        a.handle_timeout(t0 + s(49));
        assert_eq!(a.poll_event(), None);
        a.handle_timeout(t0 + s(50));
        assert_eq!(a.poll_event(), Some(IceEvent::Expired { session: 7 }));
        assert_eq!(a.nominated(7), None);
        assert_eq!(a.next_timeout(), None);
        a.handle_timeout(t0 + s(90));
        assert_eq!(a.poll_event(), None, "expired once");
        // A new nomination brings it back.
        let again = Check {
            txid: [5; 12],
            use_candidate: true,
            ..Check::default()
        };
        run(&mut a, t0 + s(100), peer(), &again).unwrap();
        assert_eq!(
            a.poll_event(),
            Some(IceEvent::Nominated {
                session: 7,
                peer: peer()
            })
        );
        assert_eq!(a.counters().expiries, 1);
    }

    #[test]
    fn credentials_are_unguessable_and_validated() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let c = generate_credentials().unwrap();
            assert_eq!(c.ufrag.len(), UFRAG_LEN);
            assert!(c.pwd.len() >= 24 && c.pwd.len() == PWD_LEN);
            check_ice_string("u", &c.ufrag, 4, MAX_ICE_UFRAG).unwrap();
            check_ice_string("p", &c.pwd, 22, MAX_ICE_PWD).unwrap();
            assert!(seen.insert(c.pwd.clone()), "passwords repeat");
            assert!(
                !format!("{c:?}").contains(&c.pwd),
                "Debug hides the password"
            );
        }
        let mut a = IceAgent::new(DEFAULT_CONSENT_TIMEOUT, 2);
        assert!(matches!(
            a.add_credentials(1, "abc", L_PWD, R_UFRAG, None),
            Err(IceError::BadLength { .. })
        ));
        assert!(matches!(
            a.add_credentials(1, L_UFRAG, "short", R_UFRAG, None),
            Err(IceError::BadLength { .. })
        ));
        assert_eq!(
            a.add_credentials(1, "ab:cd", L_PWD, R_UFRAG, None),
            Err(IceError::BadChars("local ufrag"))
        );
        assert_eq!(
            a.add_credentials(1, L_UFRAG, L_PWD, R_UFRAG, Some("x y")),
            Err(IceError::BadLength {
                what: "remote pwd",
                len: 3,
                min: 22,
                max: 256
            })
        );
        // What the relay's session slot cannot carry is refused (docs/SHM.md).
        assert_eq!(
            a.add_credentials(1, L_UFRAG, L_PWD, &"r".repeat(33), None),
            Err(IceError::BadLength {
                what: "remote ufrag",
                len: 33,
                min: 4,
                max: MAX_ICE_REMOTE_UFRAG
            })
        );
        a.add_credentials(1, L_UFRAG, L_PWD, R_UFRAG, None).unwrap();
        assert_eq!(
            a.add_credentials(2, L_UFRAG, L_PWD, R_UFRAG, None),
            Err(IceError::UfragInUse)
        );
        a.add_credentials(2, "Two2", L_PWD, R_UFRAG, None).unwrap();
        assert_eq!(
            a.add_credentials(3, "Thr3", L_PWD, R_UFRAG, None),
            Err(IceError::Full(2))
        );
        // An ICE restart replaces session 1's ufrag; the old one stops working.
        a.add_credentials(1, "New1", L_PWD, R_UFRAG, None).unwrap();
        assert_eq!(a.len(), 2);
        let now = Instant::now();
        let r = run(&mut a, now, peer(), &Check::default()).unwrap();
        assert_eq!(error_of(&r), 401);
        let c = Check {
            user: Some("New1:ReMo"),
            ..Check::default()
        };
        let r = run(&mut a, now, peer(), &c).unwrap();
        assert_eq!(
            StunMessage::parse(&r).unwrap().class(),
            Class::SuccessResponse
        );
    }

    #[test]
    fn remove_forgets_session_and_its_events() {
        let mut a = agent();
        let now = Instant::now();
        let nominate = Check {
            use_candidate: true,
            ..Check::default()
        };
        run(&mut a, now, peer(), &nominate).unwrap();
        assert!(a.remove(7));
        assert!(!a.remove(7));
        assert_eq!(a.poll_event(), None);
        assert!(a.is_empty());
        let r = run(&mut a, now, peer(), &Check::default()).unwrap();
        assert_eq!(error_of(&r), 401);
    }

    #[test]
    fn tiny_output_buffer_is_no_panic() {
        let mut a = agent();
        let mut out = [0u8; 24];
        let c = Check {
            use_candidate: true,
            ..Check::default()
        };
        assert_eq!(
            a.handle_stun(Instant::now(), peer(), &c.bytes(), &mut out),
            None
        );
        assert_eq!(a.poll_event(), None, "no answer, no nomination");
        assert_eq!(a.nominated(7), None);
    }
}
