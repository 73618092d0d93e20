//! Static sessions and routes, as the admin API manages them: create, rekey and delete, each
//! validated against the persisted state and shm capacity, then committed (journal → shm).
//! The caller audits; `ids` collects what the audit entry names.

use super::rooms::removal;
use super::rooms::UNBOUND_PEER;
use super::{lock, Core, CoreError};
use crate::state::{Entry, LayerSpec, RewriteSpec, State, StoredIce, StoredRoute, StoredSession};
use contract::shm::{session_flags, Role};
use contract::srtp::{MasterKey, Profile};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// A session the admin API asks for (fields already parsed).
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The peer's media address; `None` only with `ice`: the session waits, PENDING, for
    /// the peer to be nominated by an authenticated check (over UDP or ICE-TCP).
    pub peer: Option<SocketAddr>,
    pub profile: Profile,
    pub rx_key: MasterKey,
    pub tx_key: MasterKey,
    pub role: Role,
    pub max_pps: u32,
    /// ICE credentials: the peer reaches the session by ICE connectivity checks (docs/ICE.md
    /// "Static sessions over ICE").
    pub ice: Option<NewIce>,
}

/// The ICE credentials of a static session: the peer's ufrag, and the relay's ufrag and
/// password (generated when not given).
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewIce {
    pub remote_ufrag: String,
    #[serde(default)]
    pub ufrag: Option<String>,
    #[serde(default)]
    pub pwd: Option<String>,
}

impl std::fmt::Debug for NewIce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewIce")
            .field("remote_ufrag", &self.remote_ufrag)
            .field("ufrag", &self.ufrag)
            .field("pwd", &self.pwd.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A route the admin API asks for.
#[derive(Debug, Clone)]
pub struct NewRoute {
    pub from: u64,
    pub to: u64,
    pub ssrc: Option<u32>,
    pub rewrite: RewriteSpec,
}

impl Core {
    /// A copy of the persisted sessions and routes.
    pub fn state(&self) -> State {
        self.ledger().store.state().clone()
    }

    pub fn session(&self, id: u64) -> Result<StoredSession, CoreError> {
        let g = self.ledger();
        let s = g.store.state().sessions.get(&id).cloned();
        s.ok_or(CoreError::SessionNotFound(id))
    }

    pub fn route(&self, id: u64) -> Result<StoredRoute, CoreError> {
        let g = self.ledger();
        let r = g.store.state().routes.get(&id).cloned();
        r.ok_or(CoreError::RouteNotFound(id))
    }

    /// Create a session with the next id. Peers are unique; draining refuses.
    pub fn create_session(
        &self,
        n: NewSession,
        now_ms: u64,
        ids: &mut Value,
    ) -> Result<StoredSession, CoreError> {
        if self.is_draining() {
            return Err(CoreError::Draining);
        }
        let mut g = self.ledger();
        let shm = g.shm()?;
        if shm.session_count() >= shm.capacity().sessions as usize {
            return Err(CoreError::Unavailable(format!(
                "session table is full ({} slots)",
                shm.capacity().sessions
            )));
        }
        if let Some(p) = n.peer {
            if let Some(other) = g.store.state().sessions.values().find(|s| s.peer == p) {
                return Err(CoreError::PeerInUse(other.id));
            }
        }
        let ice = match n.ice {
            None => None,
            Some(i) => Some(static_ice(i)?),
        };
        let s = StoredSession {
            id: g.store.state().next_session_id,
            peer: n.peer.unwrap_or(UNBOUND_PEER),
            profile: n.profile,
            role: n.role,
            rx_key: n.rx_key.as_bytes().to_vec(),
            tx_key: n.tx_key.as_bytes().to_vec(),
            key_epoch: 0,
            flags: if n.peer.is_none() {
                session_flags::PENDING
            } else {
                0
            },
            max_pps: n.max_pps,
            created_unix_ms: now_ms,
            ice,
        };
        ids["session"] = json!(s.id);
        if let Some(c) = &s.ice {
            lock(&self.ice)
                .add_credentials(s.id, &c.ufrag, &c.pwd, &c.remote_ufrag, None)
                .map_err(|e| CoreError::invalid("ice", e.to_string()))?;
        }
        if let Err(e) = g.commit(vec![Entry::PutSession { session: s.clone() }]) {
            if s.ice.is_some() {
                lock(&self.ice).remove(s.id);
            }
            return Err(e);
        }
        Ok(s)
    }

    /// Delete a session with every route to or from it. A WebRTC member leaves the room
    /// before the deletion commits (so no join routes to it meanwhile), then its ICE and
    /// DTLS state is forgotten.
    pub fn delete_session(&self, id: u64, ids: &mut Value) -> Result<(), CoreError> {
        let members = lock(&self.rooms.members);
        let g = self.ledger();
        if !g.store.state().sessions.contains_key(&id) {
            return Err(CoreError::SessionNotFound(id));
        }
        g.require_shm()?;
        let (routes, entries) = removal(g.store.state(), id);
        ids["routes"] = json!(routes);
        self.commit_removal(members, g, id, entries)
    }

    /// New keys (in the session's profile) for one or both directions; the key epoch goes
    /// up by one.
    pub fn rekey(
        &self,
        id: u64,
        tx: Option<MasterKey>,
        rx: Option<MasterKey>,
        ids: &mut Value,
    ) -> Result<StoredSession, CoreError> {
        let mut g = self.ledger();
        let Some(old) = g.store.state().sessions.get(&id).cloned() else {
            return Err(CoreError::SessionNotFound(id));
        };
        if tx.is_none() && rx.is_none() {
            return Err(CoreError::invalid("tx_key", "give tx_key, rx_key or both"));
        }
        if [tx, rx]
            .iter()
            .flatten()
            .any(|k| k.profile() != old.profile)
        {
            return Err(CoreError::Conflict(format!(
                "session {id} changed its SRTP profile meanwhile; send the keys again"
            )));
        }
        g.require_shm()?;
        let mut s = old;
        if let Some(k) = tx {
            s.tx_key = k.as_bytes().to_vec();
        }
        if let Some(k) = rx {
            s.rx_key = k.as_bytes().to_vec();
        }
        s.key_epoch = s.key_epoch.wrapping_add(1);
        ids["key_epoch"] = json!(s.key_epoch);
        g.commit(vec![Entry::PutSession { session: s.clone() }])?;
        Ok(s)
    }

    /// Create a route with the next id: both sessions exist, the sender may publish, no
    /// identical route exists, the route table has room.
    pub fn create_route(&self, n: NewRoute, ids: &mut Value) -> Result<StoredRoute, CoreError> {
        let (from, to) = (n.from, n.to);
        let mut g = self.ledger();
        let st = g.store.state();
        let Some(pubs) = st.sessions.get(&from) else {
            return Err(CoreError::NotFound(format!(
                "from: session {from} not found"
            )));
        };
        if !st.sessions.contains_key(&to) {
            return Err(CoreError::NotFound(format!("to: session {to} not found")));
        }
        if !pubs.role.can_publish() {
            return Err(CoreError::Conflict(format!(
                "from: session {from} has role {} and may not publish",
                pubs.role
            )));
        }
        if let Some(dup) = st
            .routes
            .values()
            .find(|r| r.from == from && r.to == to && r.ssrc == n.ssrc)
        {
            return Err(CoreError::Conflict(format!(
                "route {} already connects these sessions",
                dup.id
            )));
        }
        let shm = g.shm()?;
        if shm.route_count() >= shm.capacity().routes as usize {
            return Err(CoreError::Unavailable(format!(
                "route table is full ({} slots)",
                shm.capacity().routes
            )));
        }
        let route = StoredRoute {
            id: g.store.state().next_route_id,
            from,
            ssrc: n.ssrc,
            to,
            rewrite: n.rewrite,
        };
        ids["route"] = json!(route.id);
        g.commit(vec![Entry::PutRoute {
            route: route.clone(),
        }])?;
        Ok(route)
    }

    /// Cap the simulcast layer and the VP8 temporal layer session `to` receives (`None`: no
    /// cap) on every layered route into it (docs/ENGINE.md "Simulcast"); returns the routes
    /// changed. The relay applies it at its next rebuild: a lower cap switches down at the next
    /// key frame of that layer, a lower temporal cap at once.
    pub fn set_max_layer(
        &self,
        to: u64,
        max: Option<u8>,
        max_temporal: Option<u8>,
    ) -> Result<Vec<StoredRoute>, CoreError> {
        let mut g = self.ledger();
        let st = g.store.state();
        if !st.sessions.contains_key(&to) {
            return Err(CoreError::SessionNotFound(to));
        }
        let changed: Vec<StoredRoute> = st
            .routes
            .values()
            .filter(|r| r.to == to)
            .filter_map(|r| {
                let l = r.rewrite.layer?;
                let mut r = r.clone();
                r.rewrite.layer = Some(LayerSpec {
                    max,
                    max_temporal,
                    ..l
                });
                Some(r)
            })
            .collect();
        if changed.is_empty() {
            return Err(CoreError::Conflict(format!(
                "session {to} receives no simulcast source (no layered route into it)"
            )));
        }
        g.require_shm()?;
        let entries = changed
            .iter()
            .map(|r| Entry::PutRoute { route: r.clone() })
            .collect();
        g.commit(entries)?;
        Ok(changed)
    }

    pub fn delete_route(&self, id: u64) -> Result<(), CoreError> {
        let mut g = self.ledger();
        if !g.store.state().routes.contains_key(&id) {
            return Err(CoreError::RouteNotFound(id));
        }
        g.require_shm()?;
        g.commit(vec![Entry::DelRoute { id }])
    }
}

/// A static session's ICE credentials as stored: the relay's ufrag and password as given
/// (both or neither) or drawn from the system CSPRNG. The ICE agent validates them when they
/// are registered.
fn static_ice(i: NewIce) -> Result<StoredIce, CoreError> {
    let (ufrag, pwd) = match (i.ufrag, i.pwd) {
        (Some(u), Some(p)) => (u, p),
        (None, None) => {
            let c = crate::ice::generate_credentials()
                .map_err(|e| CoreError::Internal(e.to_string()))?;
            (c.ufrag, c.pwd)
        }
        _ => {
            return Err(CoreError::invalid(
                "ice",
                "give both ufrag and pwd, or neither (then they are generated)",
            ))
        }
    };
    Ok(StoredIce {
        ufrag,
        pwd,
        remote_ufrag: i.remote_ufrag,
        admin: true,
    })
}
