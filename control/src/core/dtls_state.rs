//! The per-session DTLS table of WebRTC sessions, shared by signaling (a join registers the
//! session's DTLS role and the peer's fingerprint; a deletion forgets it) and the slow path's
//! DTLS sink (which indexes nominated peers, runs the handshakes and marks keys ready).
//!
//! Owns: that table, its peer index and the DTLS counters. May not touch: shm, the journal,
//! DTLS records (the sink drives the endpoints kept here).

use crate::ice::SessionId;
use crate::webrtc::dtls::{Dtls, DtlsRole, Fingerprint, State};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// What signaling registered for one WebRTC session.
#[derive(Debug)]
pub struct RtcEntry {
    /// Our DTLS role (server when our answer said `a=setup:passive`).
    pub dtls_role: DtlsRole,
    /// The fingerprint in the peer's offer (RFC 8122 §5).
    pub remote_fp: Fingerprint,
    /// Keys have been written into the session (PENDING may be cleared on nomination).
    pub keys_ready: bool,
    /// The nominated peer, once ICE chose it.
    pub peer: Option<SocketAddr>,
    pub(crate) dtls: Option<Dtls>,
}

impl RtcEntry {
    pub fn new(dtls_role: DtlsRole, remote_fp: Fingerprint) -> RtcEntry {
        RtcEntry {
            dtls_role,
            remote_fp,
            keys_ready: false,
            peer: None,
            dtls: None,
        }
    }
}

/// Counters of the DTLS sink.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DtlsCounters {
    pub handshakes_started: u64,
    pub handshakes_completed: u64,
    pub handshakes_failed: u64,
    /// Datagrams refused because a handshake cap was reached.
    pub refused_cap: u64,
    /// Datagrams from an address that is no session's nominated peer.
    pub unknown_peer: u64,
}

/// WebRTC sessions known to signaling, shared by the HTTP handlers and the slow path.
#[derive(Debug, Default)]
pub struct RtcTable {
    pub(crate) sessions: HashMap<SessionId, RtcEntry>,
    pub(crate) by_peer: HashMap<SocketAddr, SessionId>,
    pub(crate) counters: DtlsCounters,
}

impl RtcTable {
    /// Register a session set up by WHIP/WHEP.
    pub fn insert(&mut self, id: SessionId, e: RtcEntry) {
        self.remove(id);
        self.sessions.insert(id, e);
    }

    /// Forget a session and its DTLS state. True if it was known.
    pub fn remove(&mut self, id: SessionId) -> bool {
        match self.sessions.remove(&id) {
            Some(e) => {
                if let Some(p) = e.peer {
                    if self.by_peer.get(&p) == Some(&id) {
                        self.by_peer.remove(&p);
                    }
                }
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, id: SessionId) -> bool {
        self.sessions.contains_key(&id)
    }

    /// False for a WebRTC session whose DTLS keys are not in place yet (keep it PENDING);
    /// true for keyed WebRTC sessions and for sessions this table does not know.
    pub fn keys_ready(&self, id: SessionId) -> bool {
        self.sessions.get(&id).is_none_or(|e| e.keys_ready)
    }

    pub fn counters(&self) -> DtlsCounters {
        self.counters
    }

    /// Handshakes in progress, in total and from `ip`.
    pub(crate) fn handshaking(&self, ip: IpAddr) -> (usize, usize) {
        let mut total = 0;
        let mut from_ip = 0;
        for e in self.sessions.values() {
            if e.dtls
                .as_ref()
                .is_some_and(|d| d.state() == State::Handshaking)
            {
                total += 1;
                if e.peer
                    .is_some_and(|p| contract::wire::transport_addr(p).ip() == ip)
                {
                    from_ip += 1;
                }
            }
        }
        (total, from_ip)
    }
}
