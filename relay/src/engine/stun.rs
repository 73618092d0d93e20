//! ICE-lite connectivity checks answered in the relay (docs/ICE.md "Checks answered in the
//! relay"), stateless like a STUN server, from the ICE credentials control publishes in each
//! WebRTC session's shm slot.
//!
//! Per check, in this order: the datagram must be a whole STUN message (else
//! [`DropReason::Malformed`]) and a Binding request with USERNAME and MESSAGE-INTEGRITY (else
//! [`DropReason::StunNotCheck`]); its USERNAME must name a session's `ufrag:remote_ufrag` (a
//! hash lookup, else [`DropReason::StunUnknownUfrag`]: a flood without credentials costs a
//! parse and a lookup, no CRC or HMAC, and never reaches control); its FINGERPRINT must be
//! valid (else [`DropReason::StunNotCheck`]); its MESSAGE-INTEGRITY must verify with the session's password
//! (one HMAC-SHA1, else [`DropReason::StunBadIntegrity`]; checks from other addresses than
//! the session's bound peer get at most [`UNBOUND_CHECKS_PER_SEC`] HMACs, the rest are
//! dropped as [`DropReason::RateLimited`]). An authenticated check is then
//! either answered here (success with XOR-MAPPED-ADDRESS, or 420/487/400, through the transmit
//! queue) or, when it changes state, passed to control, which answers it:
//!
//! - a nomination: USE-CANDIDATE from an address that is not the session's bound peer, or
//!   while the session is PENDING (control binds the peer and clears PENDING);
//! - a consent refresh: the first check from the bound peer of a live session after
//!   [`REFRESH`], so control's consent clock (RFC 7675) keeps running.
//!
//! Both are limited to [`EVENTS_PER_SEC`] per session and worker; a nomination over the limit
//! is dropped ([`DropReason::RateLimited`]; the peer retransmits), a refresh over it is
//! answered here. No allocation, lock or syscall per datagram; the index is rebuilt with the
//! routing index.

use super::index::{normalize, SeededState};
use crate::batch::TxQueue;
use contract::shm::{
    session_flags, CounterSnapshot, DropReason, IceCredentials, SessionId, SessionRecord,
    MAX_ICE_UFRAG,
};
use contract::wire::ice::{self, NotCheck};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A session's checks from its bound peer are passed to control at most this often (consent
/// refresh). Browsers check a selected pair every 2.5–6 s (RFC 7675 §5.1 asks 4–6 s for
/// consent), so control sees one within 8 s, under the 10 s floor of
/// `control.ice_consent_timeout_secs`.
pub const REFRESH: Duration = Duration::from_secs(2);
/// State-changing checks (nominations, refreshes) passed to control per session, worker and
/// second.
pub const EVENTS_PER_SEC: u32 = 20;
/// Checks from addresses other than the session's bound peer whose MESSAGE-INTEGRITY is
/// verified per session, worker and second; the rest are dropped before the HMAC. ICE's
/// pacing (RFC 8445 §14: one check per 50 ms by default) stays far below; a flood that names
/// the session's ufrag (read from the SDP) cannot make the relay spend an HMAC per datagram
/// and starve the bound peer, whose checks are always verified.
pub const UNBOUND_CHECKS_PER_SEC: u32 = 500;

/// A local ufrag as a fixed-size key (lookups build it on the stack).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct UfragKey {
    len: u8,
    bytes: [u8; MAX_ICE_UFRAG],
}

impl UfragKey {
    fn new(u: &[u8]) -> Option<UfragKey> {
        if u.len() > MAX_ICE_UFRAG {
            return None;
        }
        let mut bytes = [0u8; MAX_ICE_UFRAG];
        bytes[..u.len()].copy_from_slice(u);
        // ≤ 32, fits a byte.
        Some(UfragKey {
            len: u.len() as u8,
            bytes,
        })
    }
}

/// A per-second budget over one-second windows of batch time.
#[derive(Debug, Clone, Copy, Default)]
struct Budget {
    window: Option<Instant>,
    used: u32,
}

impl Budget {
    /// Take one from this second's `limit`.
    fn take(&mut self, now: Instant, limit: u32) -> bool {
        match self.window {
            Some(t) if now.saturating_duration_since(t) < Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.used = 0;
            }
        }
        if self.used >= limit {
            return false;
        }
        self.used += 1;
        true
    }
}

/// What a session's checks have cost lately (kept across rebuilds by id).
#[derive(Debug, Clone, Copy, Default)]
struct Pace {
    last_refresh: Option<Instant>,
    /// Checks passed to control ([`EVENTS_PER_SEC`]).
    events: Budget,
    /// HMACs spent on checks from other addresses than the bound peer
    /// ([`UNBOUND_CHECKS_PER_SEC`]).
    unbound: Budget,
}

impl Pace {
    /// Take one event from this second's budget.
    fn take(&mut self, now: Instant) -> bool {
        self.events.take(now, EVENTS_PER_SEC)
    }
}

struct Entry {
    id: SessionId,
    /// The bound peer (normalized).
    peer: SocketAddr,
    pending: bool,
    creds: IceCredentials,
    pace: Pace,
}

/// What [`IceResponder::handle`] did with a STUN datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunVerdict {
    /// Answered through the transmit queue, or dropped; counted either way.
    Done,
    /// An authenticated check that changes state: pass it to control.
    Forward,
}

/// The worker's ufrag → session credential index.
#[derive(Default)]
pub struct IceResponder {
    by_ufrag: HashMap<UfragKey, u32, SeededState>,
    entries: Vec<Entry>,
    carry: HashMap<SessionId, Pace, SeededState>,
    /// Checks answered here (a subset of packets out).
    answered: u64,
}

impl IceResponder {
    /// Sessions with ICE credentials.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no session has ICE credentials.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks this worker answered itself since it started.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// Replace the index with the credentials of `sessions` (pacing kept by session id). A
    /// ufrag two sessions claim (control never writes that) indexes the first one.
    pub fn rebuild(&mut self, sessions: &[SessionRecord]) {
        self.carry.clear();
        self.carry
            .extend(self.entries.iter().map(|e| (e.id, e.pace)));
        self.entries.clear();
        self.by_ufrag.clear();
        for s in sessions {
            let Some(creds) = s.ice else { continue };
            let Some(key) = UfragKey::new(creds.ufrag()) else {
                continue;
            };
            let at = self.entries.len() as u32;
            if let std::collections::hash_map::Entry::Vacant(slot) = self.by_ufrag.entry(key) {
                slot.insert(at);
                self.entries.push(Entry {
                    id: s.id,
                    peer: normalize(s.peer),
                    pending: s.flags & session_flags::PENDING != 0,
                    creds,
                    pace: self.carry.get(&s.id).copied().unwrap_or_default(),
                });
            }
        }
    }

    /// Handle a STUN datagram `data` from `src` (normalized) at `now` (the batch clock;
    /// `None` before the first batch: nothing is paced and no refresh is due). Answers go to
    /// `tx`; drops and answers are counted in `stats`.
    pub fn handle(
        &mut self,
        now: Option<Instant>,
        src: SocketAddr,
        data: &[u8],
        tx: &mut TxQueue,
        stats: &mut CounterSnapshot,
    ) -> StunVerdict {
        let check = match ice::parse_check_unfingerprinted(data) {
            Ok(c) => c,
            Err(NotCheck::Malformed) => {
                stats.drop(DropReason::Malformed);
                return StunVerdict::Done;
            }
            Err(NotCheck::BadUsername) => {
                stats.drop(DropReason::StunUnknownUfrag);
                return StunVerdict::Done;
            }
            Err(NotCheck::Discard | NotCheck::MissingCredentials) => {
                stats.drop(DropReason::StunNotCheck);
                return StunVerdict::Done;
            }
        };
        // The lookup before the HMAC: a check naming no session costs no cryptography.
        let found = UfragKey::new(check.local_ufrag)
            .and_then(|k| self.by_ufrag.get(&k))
            .map(|&i| i as usize);
        let Some(e) = found
            .and_then(|i| self.entries.get_mut(i))
            .filter(|e| e.creds.remote_ufrag() == check.remote_ufrag)
        else {
            stats.drop(DropReason::StunUnknownUfrag);
            return StunVerdict::Done;
        };
        if check.verify_fingerprint().is_err() {
            stats.drop(DropReason::StunNotCheck);
            return StunVerdict::Done;
        }
        let bound = src == e.peer && !e.pending;
        if !bound {
            if let Some(t) = now {
                if !e.pace.unbound.take(t, UNBOUND_CHECKS_PER_SEC) {
                    stats.drop(DropReason::RateLimited);
                    return StunVerdict::Done;
                }
            }
        }
        if check.msg.verify_integrity(e.creds.pwd()).is_err() {
            stats.drop(DropReason::StunBadIntegrity);
            return StunVerdict::Done;
        }
        if check.msg.use_candidate() && !bound {
            // A nomination: control decides (replayed transaction ids, address conflicts).
            let allowed = now.is_none_or(|t| e.pace.take(t));
            if allowed {
                return StunVerdict::Forward;
            }
            stats.drop(DropReason::RateLimited);
            return StunVerdict::Done;
        }
        if bound {
            if let Some(t) = now {
                let due = e
                    .pace
                    .last_refresh
                    .is_none_or(|l| t.saturating_duration_since(l) >= REFRESH);
                if due && e.pace.take(t) {
                    e.pace.last_refresh = Some(t);
                    return StunVerdict::Forward;
                }
            }
        }
        if tx.is_full() {
            stats.drop(DropReason::TxQueueFull);
            return StunVerdict::Done;
        }
        let key = e.creds.pwd();
        let msg = check.msg;
        let pushed = tx.push_with(src, |slot| {
            ice::answer(&msg, src, key, slot).ok().map(|a| a.1)
        });
        if pushed {
            stats.tx(tx.metas().last().map_or(0, |m| m.len as usize));
            self.answered += 1;
        } else {
            // Only a transmit slot smaller than an answer (≤ 128 bytes) gets here.
            stats.drop(DropReason::TxQueueFull);
        }
        StunVerdict::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::shm::Role;
    use contract::srtp::{MasterKey, Profile};
    use contract::wire::stun::{self, Class, StunMessage, StunWriter, METHOD_BINDING};

    const PWD: &str = "localpasswordlocalpassword0123";

    fn record(id: SessionId, peer: &str, flags: u32, ufrag: &str) -> SessionRecord {
        let key = MasterKey::new(Profile::AeadAes128Gcm, &[1; 28]).unwrap();
        SessionRecord {
            id,
            peer: peer.parse().unwrap(),
            role: Role::Speaker,
            rx_key: key,
            tx_key: key,
            key_epoch: 0,
            flags,
            max_pps: 0,
            ice: Some(IceCredentials::new(ufrag.as_bytes(), PWD.as_bytes(), b"ReMo").unwrap()),
        }
    }

    fn check(txid: u8, user: &str, key: &str, use_candidate: bool) -> Vec<u8> {
        let mut buf = [0u8; 256];
        let mut w = StunWriter::new(
            &mut buf,
            stun::message_type(METHOD_BINDING, Class::Request),
            &[txid; 12],
        )
        .unwrap();
        w.username(user.as_bytes()).unwrap();
        w.ice_controlling(7).unwrap();
        if use_candidate {
            w.use_candidate().unwrap();
        }
        w.message_integrity(key.as_bytes()).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        buf[..n].to_vec()
    }

    #[test]
    fn checks_answered_dropped_or_forwarded() {
        let mut r = IceResponder::default();
        let bound: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        let other: SocketAddr = "198.51.100.2:6000".parse().unwrap();
        r.rebuild(&[
            record(1, "198.51.100.1:5000", 0, "LoCa"),
            record(2, "0.0.0.0:9", session_flags::PENDING, "PeNd"),
        ]);
        assert_eq!(r.len(), 2);
        let mut tx = TxQueue::new(8, 2048);
        let mut st = CounterSnapshot::default();
        let t0 = Instant::now();

        // Unknown ufrag, wrong peer ufrag, bad integrity, not a check: dropped, no answer.
        for d in [
            check(1, "NoNe:ReMo", PWD, false),
            check(2, "LoCa:Else", PWD, false),
            check(3, "LoCaReMo", PWD, false),
        ] {
            assert_eq!(
                r.handle(Some(t0), other, &d, &mut tx, &mut st),
                StunVerdict::Done
            );
        }
        let bad = check(4, "LoCa:ReMo", "notthepasswordnotthepassword00", false);
        assert_eq!(
            r.handle(Some(t0), other, &bad, &mut tx, &mut st),
            StunVerdict::Done
        );
        let mut no_fp = check(5, "LoCa:ReMo", PWD, false);
        let last = no_fp.len() - 1;
        no_fp[last] ^= 0xff;
        assert_eq!(
            r.handle(Some(t0), other, &no_fp, &mut tx, &mut st),
            StunVerdict::Done
        );
        assert!(tx.is_empty());
        assert_eq!(st.drops[DropReason::StunUnknownUfrag as usize], 3);
        assert_eq!(st.drops[DropReason::StunBadIntegrity as usize], 1);
        assert_eq!(st.drops[DropReason::StunNotCheck as usize], 1);

        // A plain check from an unbound address: answered here with its mapped address.
        let d = check(6, "LoCa:ReMo", PWD, false);
        assert_eq!(
            r.handle(Some(t0), other, &d, &mut tx, &mut st),
            StunVerdict::Done
        );
        assert_eq!(tx.len(), 1);
        assert_eq!(tx.metas()[0].dst, other);
        let m = StunMessage::parse(tx.datagram(0)).unwrap();
        assert_eq!(m.class(), Class::SuccessResponse);
        assert_eq!(m.transaction_id(), [6; 12]);
        assert_eq!(m.xor_mapped_address(), Some(other));
        m.verify_integrity(PWD.as_bytes()).unwrap();
        m.verify_fingerprint().unwrap();
        assert_eq!(r.answered(), 1);

        // Nominations go to control: from a new address, and on a PENDING session.
        let d = check(7, "LoCa:ReMo", PWD, true);
        assert_eq!(
            r.handle(Some(t0), other, &d, &mut tx, &mut st),
            StunVerdict::Forward
        );
        let d = check(8, "PeNd:ReMo", PWD, true);
        assert_eq!(
            r.handle(Some(t0), other, &d, &mut tx, &mut st),
            StunVerdict::Forward
        );
        // From the bound peer: the first check is a consent refresh for control, the next
        // ones within REFRESH are answered here (USE-CANDIDATE included), then again one.
        let d = check(9, "LoCa:ReMo", PWD, true);
        assert_eq!(
            r.handle(Some(t0), bound, &d, &mut tx, &mut st),
            StunVerdict::Forward
        );
        for i in 0..5 {
            let d = check(10 + i, "LoCa:ReMo", PWD, i % 2 == 0);
            assert_eq!(
                r.handle(Some(t0), bound, &d, &mut tx, &mut st),
                StunVerdict::Done
            );
        }
        assert_eq!(tx.len(), 6);
        let later = Some(t0 + REFRESH);
        let d = check(20, "LoCa:ReMo", PWD, false);
        assert_eq!(
            r.handle(later, bound, &d, &mut tx, &mut st),
            StunVerdict::Forward
        );

        // The per-session event budget: nominations over it are dropped.
        let t1 = t0 + Duration::from_secs(10);
        let mut fwd = 0;
        for i in 0..(EVENTS_PER_SEC + 5) {
            let d = check(i as u8, "PeNd:ReMo", PWD, true);
            if r.handle(Some(t1), other, &d, &mut tx, &mut st) == StunVerdict::Forward {
                fwd += 1;
            }
        }
        assert_eq!(fwd, EVENTS_PER_SEC);
        assert_eq!(st.drops[DropReason::RateLimited as usize], 5);

        // HMACs on checks from unbound addresses are budgeted per second; the bound peer's
        // checks are always verified.
        let t2 = t0 + Duration::from_secs(20);
        let limited = st.drops[DropReason::RateLimited as usize];
        let bad = check(30, "LoCa:ReMo", "notthepasswordnotthepassword00", false);
        for _ in 0..UNBOUND_CHECKS_PER_SEC + 3 {
            r.handle(Some(t2), other, &bad, &mut tx, &mut st);
        }
        assert_eq!(st.drops[DropReason::RateLimited as usize], limited + 3);
        let d = check(31, "LoCa:ReMo", PWD, false);
        assert_eq!(
            r.handle(Some(t2), bound, &d, &mut tx, &mut st),
            StunVerdict::Forward
        );

        // The pacing survives a rebuild; a session without credentials leaves the index.
        r.rebuild(&[record(1, "198.51.100.1:5000", 0, "LoCa")]);
        assert_eq!(r.len(), 1);
        let d = check(21, "LoCa:ReMo", PWD, false);
        assert_eq!(
            r.handle(later, bound, &d, &mut tx, &mut st),
            StunVerdict::Done
        );
        let d = check(22, "PeNd:ReMo", PWD, true);
        assert_eq!(
            r.handle(Some(t1), other, &d, &mut tx, &mut st),
            StunVerdict::Done
        );
        assert_eq!(st.drops[DropReason::StunUnknownUfrag as usize], 4);
    }
}
