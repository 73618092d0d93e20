//! The PENDING → keyed state machine of WebRTC sessions, written once.
//!
//! A WebRTC session is written to shm at once, `PENDING`, with an unspecified peer address and
//! throw-away keys (the relay neither indexes nor sends to a pending session). ICE nomination
//! records the peer ([`Core::bind_peer`]); DTLS completion writes the negotiated profile and
//! keys ([`Core::set_keys`]); the session leaves `PENDING` exactly when both happened
//! (`settle`). Expired ICE consent puts it back ([`Core::mark_pending`]). Each change is
//! journalled, written to shm and audited.

use super::{lock, Core, CoreError};
use crate::state::{Entry, StoredIce, StoredSession};
use crate::webrtc::dtls::SrtpKeys;
use contract::shm::session_flags::PENDING;
use serde_json::json;
use std::net::SocketAddr;

/// The one rule: the session's media address is `peer`, and it is PENDING unless its keys
/// are in place.
fn settle(s: &mut StoredSession, peer: SocketAddr, keys_ready: bool) {
    s.peer = peer;
    if keys_ready {
        s.flags &= !PENDING;
    } else {
        s.flags |= PENDING;
    }
}

fn is_pending(s: &StoredSession) -> bool {
    s.flags & PENDING != 0
}

impl Core {
    /// At start: register the ICE credentials of the sessions that survived a restart in the
    /// agent again, so the checks the relay passes up (nominations, consent refreshes) are
    /// answered instead of refused 401. The agent's consent clock restarts with the next
    /// nomination. A session whose credentials the agent refuses keeps being answered by the
    /// relay alone (logged).
    pub(super) fn restore_ice_credentials(&self) {
        let g = self.ledger();
        let mut ice = lock(&self.ice);
        for s in g.store.state().sessions.values() {
            let Some(c) = &s.ice else { continue };
            if let Err(e) = ice.add_credentials(s.id, &c.ufrag, &c.pwd, &c.remote_ufrag, None) {
                tracing::warn!(session = s.id, error = %e, "ICE credentials not restored");
            }
        }
    }

    /// Register (or replace, for an ICE restart) session `id`'s ICE credentials: in the ICE
    /// agent, which answers the checks that change state, and in the session's shm slot,
    /// from which the relay answers the others (docs/ICE.md "Checks answered in the
    /// relay"); journalled like every session change. A join does this itself.
    pub fn set_ice_credentials(
        &self,
        id: u64,
        local_ufrag: &str,
        local_pwd: &str,
        remote_ufrag: &str,
        remote_pwd: Option<&str>,
    ) -> Result<(), CoreError> {
        let mut g = self.ledger();
        let Some(mut s) = g.store.state().sessions.get(&id).cloned() else {
            return Err(CoreError::SessionNotFound(id));
        };
        g.require_shm()?;
        lock(&self.ice)
            .add_credentials(id, local_ufrag, local_pwd, remote_ufrag, remote_pwd)
            .map_err(|e| CoreError::BadRequest(format!("ICE credentials: {e}")))?;
        let admin = s.ice.as_ref().is_some_and(|i| i.admin);
        s.ice = Some(StoredIce {
            ufrag: local_ufrag.to_string(),
            pwd: local_pwd.to_string(),
            remote_ufrag: remote_ufrag.to_string(),
            admin,
        });
        g.commit(vec![Entry::PutSession { session: s }])
    }

    /// ICE nominated `peer` for session `id`: persist and publish the session with this
    /// peer, PENDING while a WebRTC session's keys are not in place. Nothing is written when
    /// that is the session's state already. Refused when another session uses the address
    /// (peers stay unique).
    pub fn bind_peer(&self, id: u64, peer: SocketAddr) -> Result<(), CoreError> {
        let ids = json!({"session": id, "peer": self.audit.hasher.hash(&peer.to_string())});
        let keys_ready = lock(&self.rtc).keys_ready(id);
        let r = (|| {
            let mut g = self.ledger();
            let Some(mut s) = g.store.state().sessions.get(&id).cloned() else {
                return Err(CoreError::SessionNotFound(id));
            };
            if s.peer == peer && is_pending(&s) != keys_ready {
                return Ok(false);
            }
            let st = g.store.state();
            if let Some(other) = st.sessions.values().find(|o| o.id != id && o.peer == peer) {
                return Err(CoreError::PeerInUse(other.id));
            }
            g.require_shm()?;
            settle(&mut s, peer, keys_ready);
            g.commit(vec![Entry::PutSession { session: s }])?;
            Ok(true)
        })();
        if r != Ok(false) {
            self.audit.outcome("ice", "session.ice_bind", ids, 204, &r);
        }
        r.map(|_| ())
    }

    /// ICE consent for session `id` expired: set PENDING so the relay stops forwarding its
    /// media. Nothing is written when it is pending already.
    pub fn mark_pending(&self, id: u64) -> Result<(), CoreError> {
        let r = (|| {
            let mut g = self.ledger();
            let Some(mut s) = g.store.state().sessions.get(&id).cloned() else {
                return Err(CoreError::SessionNotFound(id));
            };
            if is_pending(&s) {
                return Ok(false);
            }
            g.require_shm()?;
            s.flags |= PENDING;
            g.commit(vec![Entry::PutSession { session: s }])?;
            Ok(true)
        })();
        if r != Ok(false) {
            let ids = json!({"session": id});
            self.audit
                .outcome("ice", "session.ice_expired", ids, 204, &r);
        }
        r.map(|_| ())
    }

    /// DTLS produced `keys` for `session`: write the negotiated profile and keys (the key
    /// epoch goes up by one); when ICE has nominated a peer no other session uses, the
    /// session is settled on it and leaves PENDING.
    pub fn set_keys(&self, session: u64, keys: &SrtpKeys) -> Result<(), CoreError> {
        let nominated = lock(&self.ice).nominated(session);
        let ids = json!({"session": session, "profile": keys.profile.name()});
        let r = (|| {
            let mut g = self.ledger();
            let Some(mut s) = g.store.state().sessions.get(&session).cloned() else {
                return Err(CoreError::SessionNotFound(session));
            };
            g.require_shm()?;
            s.profile = keys.profile;
            s.rx_key = keys.rx.as_bytes().to_vec();
            s.tx_key = keys.tx.as_bytes().to_vec();
            s.key_epoch = s.key_epoch.wrapping_add(1);
            if let Some(p) = nominated {
                let st = g.store.state();
                if !st.sessions.values().any(|o| o.id != session && o.peer == p) {
                    settle(&mut s, p, true);
                }
            }
            g.commit(vec![Entry::PutSession { session: s }])
        })();
        self.audit.outcome("dtls", "webrtc.dtls_keys", ids, 204, &r);
        r
    }

    /// A DTLS handshake failed (`reason` holds no peer data): audit it.
    pub fn dtls_failed(&self, session: u64, reason: &str) {
        self.audit.record(
            "dtls",
            "webrtc.dtls_failed",
            json!({"session": session}),
            401,
            reason,
        );
    }
}
