//! Applications, rooms and their participants: the application registry with its master
//! secret ([`Apps`], `<state_dir>/apps.json`), the table of WebRTC participants
//! ([`Member`]), and their removal (leave, moderator or application removal, expiry of
//! sessions ICE never bound, clean-up after a restart).

use super::commit::Ledger;
use super::{lock, Core, CoreError, StartError};
use crate::files;
use crate::state::{Entry, State};
use crate::webrtc::apps::{MasterSecret, Registry};
use crate::webrtc::sdp::NegotiatedMedia;
use crate::webrtc::token::DevKey;
use contract::config::ControlConfig;
use contract::shm::{session_flags, Role};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

/// The peer address of a WebRTC session before ICE nominated one.
pub const UNBOUND_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// Applications and developer keys, sealed under the master secret, persisted atomically.
pub struct Apps {
    pub reg: Registry,
    pub master: MasterSecret,
    path: PathBuf,
}

impl Apps {
    /// Load (or create) the master secret and the registry; bootstrap the configured
    /// application with one generated key (created at `now_ms`) when no application exists.
    pub fn open(c: &ControlConfig, now_ms: u64) -> Result<Apps, StartError> {
        let err = |e: String| StartError::Apps(e);
        let master = locate_master(c).map_err(err)?;
        let path = c.state_dir.join("apps.json");
        let mut reg = Registry::load(&path).map_err(|e| err(e.to_string()))?;
        if reg.apps.is_empty() {
            if let Some(app) = &c.bootstrap_app {
                let now = now_ms / 1000;
                reg.add_app(app, now).map_err(|e| err(e.to_string()))?;
                reg.generate_key(app, "dev", &master, now)
                    .map_err(|e| err(e.to_string()))?;
                reg.save(&path).map_err(|e| err(e.to_string()))?;
                tracing::info!(app = %app, "created the bootstrap application with a generated developer key");
            }
        }
        Ok(Apps { reg, master, path })
    }

    pub fn save(&self) -> Result<(), CoreError> {
        self.reg
            .save(&self.path)
            .map_err(|e| CoreError::Internal(format!("could not persist applications: {e}")))
    }

    /// The developer key `kid` (or the only one) of `app`.
    pub fn key(&self, app: &str, kid: Option<&str>) -> Option<DevKey> {
        self.reg.dev_key(app, kid, &self.master).ok().flatten()
    }
}

fn locate_master(c: &ControlConfig) -> Result<MasterSecret, String> {
    if let Some(p) = &c.master_key_file {
        return MasterSecret::load(p).map_err(|e| e.to_string());
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let p = Path::new(&dir).join("sluice-master-key");
        if p.exists() {
            return MasterSecret::load(&p).map_err(|e| e.to_string());
        }
    }
    let p = c.state_dir.join("master.key");
    if p.exists() {
        return MasterSecret::load(&p).map_err(|e| e.to_string());
    }
    let m = MasterSecret::generate().map_err(|e| e.to_string())?;
    files::ensure_private_dir(&c.state_dir).map_err(|e| e.to_string())?;
    files::write_private_atomic(&p, format!("{}\n", m.to_base64()).as_bytes())
        .map_err(|e| format!("{}: {e}", p.display()))?;
    tracing::info!(path = %p.display(), "generated the master secret for developer keys");
    Ok(m)
}

/// Applications with their rooms, and the participants in them. Lock order: `members`
/// before the ledger; `apps` is never held while the ledger lock is taken.
pub struct Rooms {
    /// WebRTC participants by session id.
    pub(super) members: Mutex<BTreeMap<u64, Member>>,
    /// Applications, developer keys and rooms (persisted in `<state_dir>/apps.json`).
    pub(super) apps: Mutex<Apps>,
    /// Sessions removed because ICE never nominated a peer in time.
    pub(super) expired: AtomicU64,
}

/// One WebRTC participant (a WHIP publisher or a WHEP viewer).
#[derive(Debug, Clone)]
pub struct Member {
    pub session: u64,
    pub app: String,
    pub room: String,
    /// The role granted by the token.
    pub role: Role,
    /// WHIP (true) or WHEP (false).
    pub publishes: bool,
    /// The negotiated media sections (codecs, extensions, SSRCs).
    pub media: Vec<NegotiatedMedia>,
    /// Per media section: the offerer's primary SSRCs (repair/FEC SSRCs of groups left out).
    pub primary_ssrcs: Vec<Vec<u32>>,
    /// WHIP simulcast: the layer SSRCs learned from the RIDs of the publisher's packets
    /// (core/simulcast.rs), at most one per layer of each simulcast section.
    pub learned: Vec<LearnedLayer>,
    /// Secret part of the resource URL (DELETE must present it).
    pub(crate) secret: String,
    /// Who holds the session, for the per-subject cap: the hashed token subject, or the
    /// hashed source address for stream tokens (which carry no subject).
    pub(crate) subject: String,
    /// When the offer was answered (Unix ms); an unbound session expires from here.
    pub(crate) created_ms: u64,
}

/// A simulcast layer's SSRC, learned from a packet's RID (RFC 8852 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnedLayer {
    /// The publisher's media section.
    pub section: usize,
    /// Layer index, 0 = lowest resolution (`sdp::Simulcast::layers`).
    pub layer: u8,
    pub ssrc: u32,
    /// The layer's RTX stream (RFC 4588), learned from its repaired RID (RFC 8852 §3.2).
    pub rtx_ssrc: Option<u32>,
}

impl Member {
    /// The resource URL path.
    pub fn location(&self) -> String {
        let kind = if self.publishes { "whip" } else { "whep" };
        format!("/{kind}/resource/{}/{}", self.session, self.secret)
    }
}

impl Core {
    /// The application registry, locked (never while the ledger lock is held).
    pub fn apps(&self) -> MutexGuard<'_, Apps> {
        lock(&self.rooms.apps)
    }

    /// WebRTC participants.
    pub fn members(&self) -> Vec<Member> {
        lock(&self.rooms.members).values().cloned().collect()
    }

    /// Participants of `app` (and of `room`, when given).
    pub fn members_of(&self, app: &str, room: Option<&str>) -> Vec<Member> {
        lock(&self.rooms.members)
            .values()
            .filter(|m| m.app == app && room.is_none_or(|r| m.room == r))
            .cloned()
            .collect()
    }

    /// Remove every participant of `app` (of `room`, when given), after the application or
    /// room went.
    pub fn remove_members_of(&self, app: &str, room: Option<&str>) {
        for m in self.members_of(app, room) {
            let _ = self.remove_member(m.session, false);
        }
    }

    /// The session whose resource secret is `secret` (compared in constant time).
    pub fn member_with_secret(&self, id: u64, secret: &str) -> bool {
        lock(&self.rooms.members)
            .get(&id)
            .is_some_and(|m| crate::secrets::ct_eq(m.secret.as_bytes(), secret.as_bytes()))
    }

    /// The application `/whip/{room}` means: the bootstrap application when it exists, else
    /// the only application.
    pub fn default_app(&self) -> Option<String> {
        let a = self.apps();
        if let Some(b) = &self.config().control.bootstrap_app {
            if a.reg.app(b).is_some() {
                return Some(b.clone());
            }
        }
        (a.reg.apps.len() == 1)
            .then(|| a.reg.apps.keys().next().cloned())
            .flatten()
    }

    /// The application the demo page mints tokens for (the bootstrap application, when it
    /// exists and has a key).
    pub fn demo_app(&self) -> Option<String> {
        let cfg = self.config();
        let b = cfg.control.bootstrap_app.as_ref()?;
        let a = self.apps();
        a.reg
            .app(b)
            .is_some_and(|app| !app.keys.is_empty())
            .then(|| b.clone())
    }

    /// Forget a session's ICE and DTLS state after it was deleted.
    pub(crate) fn forget_rtc(&self, id: u64) {
        lock(&self.ice).remove(id);
        lock(&self.rtc).remove(id);
    }

    /// Delete a participant's session with its routes, then forget its WebRTC state. With
    /// `only_unbound`, nothing happens (409) unless the session is still pending without a
    /// peer. Locks are taken in the order a join takes them (`members`, then the ledger)
    /// and the member leaves `members` before the deletion commits, so a concurrent join
    /// never routes to a session that is gone.
    pub fn remove_member(&self, id: u64, only_unbound: bool) -> Result<(), CoreError> {
        let members = lock(&self.rooms.members);
        let g = self.ledger();
        g.require_shm()?;
        let st = g.store.state();
        if only_unbound
            && st
                .sessions
                .get(&id)
                .is_some_and(|s| s.peer != UNBOUND_PEER || s.flags & session_flags::PENDING == 0)
        {
            return Err(CoreError::Conflict(format!("session {id} is bound")));
        }
        let (_, entries) = removal(st, id);
        self.commit_removal(members, g, id, entries)
    }

    /// Commit `entries` (a session's removal) with the member out of `members` (so no
    /// concurrent join routes to it; it comes back when the commit fails), then release the
    /// locks and forget the session's ICE and DTLS state.
    pub(super) fn commit_removal(
        &self,
        mut members: MutexGuard<'_, BTreeMap<u64, Member>>,
        mut g: MutexGuard<'_, Ledger>,
        id: u64,
        entries: Vec<Entry>,
    ) -> Result<(), CoreError> {
        let removed = members.remove(&id);
        if let Err(e) = g.commit(entries) {
            if let Some(m) = removed {
                members.insert(id, m);
            }
            return Err(e);
        }
        drop(g);
        drop(members);
        self.forget_rtc(id);
        Ok(())
    }

    /// Remove the WebRTC sessions whose peer ICE has not nominated within
    /// `control.signaling_timeout_secs` of the answer (a client that never sends a
    /// connectivity check would otherwise hold its session and routes for ever). Each is
    /// audited `webrtc.expired` and counted. Returns how many went.
    pub fn expire_unbound_sessions(&self, now_ms: u64) -> usize {
        let timeout_ms = u64::from(self.config().control.signaling_timeout_secs) * 1000;
        let old: Vec<u64> = lock(&self.rooms.members)
            .values()
            .filter(|m| now_ms.saturating_sub(m.created_ms) >= timeout_ms)
            .map(|m| m.session)
            .collect();
        let mut n = 0;
        for id in old {
            // Checked again under the locks: ICE may have bound the peer meanwhile.
            if self.remove_member(id, true).is_ok() {
                n += 1;
                self.rooms.expired.fetch_add(1, Ordering::Relaxed);
                self.audit.record(
                    "webrtc",
                    "webrtc.expired",
                    json!({"session": id, "after_secs": self.config().control.signaling_timeout_secs}),
                    200,
                    "ok",
                );
            }
        }
        n
    }

    /// At start: WebRTC sessions that never got a peer (signaling state is in memory only,
    /// so their ICE and DTLS cannot complete any more) are removed with their routes.
    pub(super) fn drop_unbound_webrtc_sessions(&self) {
        let mut g = self.ledger();
        if g.shm.is_none() {
            return;
        }
        let st = g.store.state();
        let dead: Vec<u64> = st
            .sessions
            .values()
            .filter(|s| s.peer == UNBOUND_PEER && s.flags & session_flags::PENDING != 0)
            .filter(|s| !s.ice.as_ref().is_some_and(|i| i.admin))
            .map(|s| s.id)
            .collect();
        if dead.is_empty() {
            return;
        }
        let mut entries: Vec<Entry> = st
            .routes
            .values()
            .filter(|r| dead.contains(&r.from) || dead.contains(&r.to))
            .map(|r| Entry::DelRoute { id: r.id })
            .collect();
        entries.extend(dead.iter().map(|&id| Entry::DelSession { id }));
        match g.commit(entries) {
            Ok(()) => tracing::info!(
                sessions = dead.len(),
                "removed WebRTC sessions left unbound by a restart"
            ),
            Err(_) => tracing::warn!("could not remove WebRTC sessions left unbound by a restart"),
        }
    }
}

/// What removing session `id` deletes: the ids of the routes to or from it, and the journal
/// entries (those routes, then the session when it exists).
pub(super) fn removal(st: &State, id: u64) -> (Vec<u64>, Vec<Entry>) {
    let routes: Vec<u64> = st
        .routes
        .values()
        .filter(|r| r.from == id || r.to == id)
        .map(|r| r.id)
        .collect();
    let mut entries: Vec<Entry> = routes.iter().map(|&id| Entry::DelRoute { id }).collect();
    if st.sessions.contains_key(&id) {
        entries.push(Entry::DelSession { id });
    }
    (routes, entries)
}
