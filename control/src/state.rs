//! Persisted control state: sessions (with their keys), routes and the id counters.
//!
//! Owns: the write-ahead journal (`journal.jsonl`, one JSON entry per line, fsynced before a
//! mutation is acknowledged) and the snapshot (`state.json`, written to a temp file, fsynced
//! and renamed atomically by [`Store::compact`]). Replay is idempotent (puts are upserts,
//! deletes ignore unknown ids, counters only grow), so a crash between the snapshot rename and
//! the journal truncation loses nothing. A torn final journal line (a write that never
//! completed, so was never acknowledged) is dropped; a bad line anywhere else refuses start-up.
//! The directory is 0700 and the files 0600: they hold SRTP master keys.
//! May not touch: shared memory, HTTP. The API layer applies each entry here first, then to shm.

use contract::shm::{
    IceCredentials, IceCredentialsError, Layer, Rewrite, Role, RouteRecord, RtxOut, SessionRecord,
    MAX_MAPPINGS,
};
use contract::srtp::{MasterKey, Profile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

const SNAPSHOT: &str = "state.json";
const JOURNAL: &str = "journal.jsonl";
const FORMAT_VERSION: u32 = 1;

/// Why the state could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: corrupt state entry: {message}", path = path.display())]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: state format version {found}, this build reads {FORMAT_VERSION}", path = path.display())]
    Version { path: PathBuf, found: u32 },
    /// A route refused before anything was written (see [`route_conflict`]).
    #[error(transparent)]
    Route(#[from] RouteConflict),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Route rewrite rules in their JSON form (API and persistence).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    #[serde(default)]
    pub ssrc: Option<u32>,
    #[serde(default)]
    pub pt_map: Vec<[u8; 2]>,
    #[serde(default)]
    pub ext_map: Vec<[u8; 2]>,
    /// Write the subscriber's own MID into its MID extension element (RFC 8843 §15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<MidSpec>,
    /// The subscriber's RTX stream (RFC 4588): NACKed packets are resent on it; absent, the
    /// relay resends the original packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtx: Option<RtxSpec>,
    /// The publisher's RTX stream for the route's source SSRC (its `a=ssrc-group:FID` partner
    /// and the RTX payload type, RFC 4588): packets on it are unwrapped into the source stream.
    /// Only on a route with an SSRC filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_rtx: Option<RtxSpec>,
    /// The subscriber's id (after `ext_map`) for the transport-wide sequence number extension:
    /// the relay numbers the route's packets that carry it and reads the subscriber's
    /// transport-cc feedback. `None`: no numbering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twcc_id: Option<u8>,
    /// The keyframe requests the publisher understands; empty: unknown (requests pass as
    /// they come). A viewer's PLI reaches a FIR-only publisher as a FIR and back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keyframe: Vec<KeyframeKind>,
    /// This route carries one spatial layer of a simulcast source; the routes of all its
    /// layers into one subscriber rewrite to one SSRC, and the relay forwards one layer at a
    /// time on it (docs/ENGINE.md "Simulcast").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<LayerSpec>,
    /// The publisher's id of the Dependency Descriptor extension: an SVC route (one stream
    /// carrying spatial and temporal layers; `layer` of count 1 caps them) forwarded frame by
    /// frame for the subscriber's decode target (docs/ENGINE.md "SVC").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dd_id: Option<u8>,
}

/// A keyframe request kind, as negotiated in `a=rtcp-fb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyframeKind {
    /// `nack pli` (RFC 4585 §6.3.1).
    Pli,
    /// `ccm fir` (RFC 5104 §4.3.1).
    Fir,
}

/// A route's simulcast layer: `index` of `count` (lowest resolution 0), and the highest
/// layer (`max`) and temporal layer (`max_temporal`) the subscriber may receive (absent: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    pub index: u8,
    pub count: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u8>,
    /// The highest VP8 temporal layer (TID 0..=3) the subscriber may receive (absent: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_temporal: Option<u8>,
}

/// A MID rewrite: the subscriber's extension id for `urn:ietf:params:rtp-hdrext:sdes:mid`
/// (after the id map) and its `a=mid` value, 1–16 token characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MidSpec {
    pub id: u8,
    pub value: String,
}

impl MidSpec {
    /// A MID value the route can carry: 1–[`contract::shm::MAX_MID_LEN`] RFC 8866 token
    /// characters (RFC 8843 §5: `mid-value = token`).
    pub fn valid_value(v: &str) -> bool {
        (1..=contract::shm::MAX_MID_LEN).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`{|}~".contains(&b))
    }
}

/// A route's RTX output in its JSON form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtxSpec {
    pub payload_type: u8,
    pub ssrc: u32,
}

impl RewriteSpec {
    /// The shm form. Lengths were validated by the API (at most [`MAX_MAPPINGS`]); longer
    /// lists are cut rather than panicking.
    pub fn to_rewrite(&self) -> Rewrite {
        let mut r = Rewrite {
            ssrc: self.ssrc,
            rtx: self.rtx.map(|x| RtxOut {
                payload_type: x.payload_type,
                ssrc: x.ssrc,
            }),
            source_rtx: self.source_rtx.map(|x| RtxOut {
                payload_type: x.payload_type,
                ssrc: x.ssrc,
            }),
            twcc_id: self.twcc_id.unwrap_or(0),
            dd_id: self.dd_id.unwrap_or(0),
            layer: self.layer.map(|l| Layer {
                index: l.index,
                count: l.count,
                max: l.max.unwrap_or(Layer::NO_CAP),
                max_temporal: l.max_temporal.unwrap_or(Layer::NO_CAP),
            }),
            ..Rewrite::default()
        };
        for (i, [a, b]) in self.pt_map.iter().take(MAX_MAPPINGS).enumerate() {
            r.pt_map[i] = (*a, *b);
            r.pt_map_len = i as u8 + 1;
        }
        for (i, [a, b]) in self.ext_map.iter().take(MAX_MAPPINGS).enumerate() {
            r.ext_map[i] = (*a, *b);
            r.ext_map_len = i as u8 + 1;
        }
        if let Some(m) = &self.mid {
            r.set_mid(m.id, m.value.as_bytes());
        }
        for k in &self.keyframe {
            r.keyframe |= match k {
                KeyframeKind::Pli => contract::shm::keyframe::PLI,
                KeyframeKind::Fir => contract::shm::keyframe::FIR,
            };
        }
        r
    }
}

/// Why a route may not be added (the admin API answers 409 with this text): it would let two sources feed one output stream
/// (subscriber, SSRC) of the relay, which can make two packets leave under the same SRTP key
/// and index — keystream reuse, RFC 3711 §9.1 (docs/ENGINE.md "One owner per output stream").
/// Each relay worker refuses such packets by itself, but publishers handled by different
/// workers each keep their own numbering and outbound SRTP state, so only control, which sees
/// every route, can prevent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteConflict {
    /// Two publishers rewriting to the same SSRC for one subscriber.
    #[error(
        "route {existing} already feeds publisher {from}'s media into session {to} as SSRC {ssrc}; \
         a second publisher rewritten to the same SSRC could reuse SRTP keystream (RFC 3711 §9.1)"
    )]
    RewrittenSsrc {
        existing: u64,
        from: u64,
        to: u64,
        ssrc: u32,
    },
    /// The output SSRC is already sent to the subscriber by another route that numbers it
    /// differently (another publisher's stream with that SSRC, or a rewritten stream mixed
    /// with a non-rewritten one).
    #[error(
        "route {existing} already sends SSRC {ssrc} to session {to} (from publisher {from}); \
         two sources in one SRTP stream could reuse keystream (RFC 3711 §9.1)"
    )]
    SameSsrc {
        existing: u64,
        from: u64,
        to: u64,
        ssrc: u32,
    },
}

/// The SSRC a route's packets carry towards the subscriber, when known in advance: the
/// rewritten SSRC, else the route's SSRC filter (`None` for an any-SSRC route that keeps the
/// publisher's SSRCs, which control cannot know).
pub fn output_ssrc(r: &StoredRoute) -> Option<u32> {
    r.rewrite.ssrc.or(r.ssrc)
}

/// Check `new` against the routes that exist (`new.id` itself is ignored, so an update is
/// checked against the others). Allowed into one subscriber with the same output SSRC: only
/// routes of the same publisher that all rewrite the SSRC (one worker handles one publisher
/// address, and that worker's continuity state renumbers its sources into one stream).
/// Any-SSRC routes without rewrite have no known output SSRC and are not checked here; the
/// relay's per-worker owner check still refuses a second source (docs/ENGINE.md).
pub fn route_conflict<'a>(
    existing: impl IntoIterator<Item = &'a StoredRoute>,
    new: &StoredRoute,
) -> Result<(), RouteConflict> {
    let Some(ssrc) = output_ssrc(new) else {
        return Ok(());
    };
    for r in existing {
        if r.id == new.id || r.to != new.to || output_ssrc(r) != Some(ssrc) {
            continue;
        }
        let both_rewritten = r.rewrite.ssrc.is_some() && new.rewrite.ssrc.is_some();
        if both_rewritten && r.from == new.from {
            continue;
        }
        return Err(if both_rewritten {
            RouteConflict::RewrittenSsrc {
                existing: r.id,
                from: r.from,
                to: r.to,
                ssrc,
            }
        } else {
            RouteConflict::SameSsrc {
                existing: r.id,
                from: r.from,
                to: r.to,
                ssrc,
            }
        });
    }
    Ok(())
}

/// A session as control persists it, keys included. On disk (journal and snapshot) the
/// profile is its name, the role its lowercase name and each key the base64 of master key ‖
/// salt, so state files written before these fields were typed load unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredSession {
    pub id: u64,
    #[serde(with = "peer_key")]
    pub peer: SocketAddr,
    #[serde(with = "profile_name")]
    pub profile: Profile,
    pub role: Role,
    /// Master key ‖ salt the peer encrypts with (`profile.key_material_len()` bytes).
    #[serde(with = "key_base64")]
    pub rx_key: Vec<u8>,
    /// Master key ‖ salt the relay encrypts with towards the peer.
    #[serde(with = "key_base64")]
    pub tx_key: Vec<u8>,
    pub key_epoch: u32,
    pub flags: u32,
    pub max_pps: u32,
    pub created_unix_ms: u64,
    /// A WebRTC session's ICE credentials, published in its shm slot so the relay answers
    /// connectivity checks itself (docs/ICE.md); absent for static sessions and in state
    /// written before they were published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice: Option<StoredIce>,
}

/// The ICE credentials of a session: our ufrag and password (from our SDP answer, or given
/// to or generated by the admin API for a static session) and the peer's ufrag.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredIce {
    pub ufrag: String,
    pub pwd: String,
    pub remote_ufrag: String,
    /// Set through the admin API (a static session reached by ICE), not by a WHIP/WHEP join:
    /// such a session keeps its keys across a restart of control, so it survives unbound.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

impl std::fmt::Debug for StoredIce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredIce")
            .field("ufrag", &self.ufrag)
            .field("pwd", &"<redacted>")
            .field("remote_ufrag", &self.remote_ufrag)
            .field("admin", &self.admin)
            .finish()
    }
}

impl StoredSession {
    /// The shm record. Fails only if the persisted keys do not fit the profile.
    pub fn to_record(&self) -> Result<SessionRecord, RecordError> {
        let rx_key = MasterKey::new(self.profile, &self.rx_key).map_err(RecordError::RxKey)?;
        let tx_key = MasterKey::new(self.profile, &self.tx_key).map_err(RecordError::TxKey)?;
        Ok(SessionRecord {
            id: self.id,
            peer: self.peer,
            role: self.role,
            rx_key,
            tx_key,
            key_epoch: self.key_epoch,
            flags: self.flags,
            max_pps: self.max_pps,
            ice: self
                .ice
                .as_ref()
                .map(|i| {
                    IceCredentials::new(
                        i.ufrag.as_bytes(),
                        i.pwd.as_bytes(),
                        i.remote_ufrag.as_bytes(),
                    )
                })
                .transpose()
                .map_err(RecordError::Ice)?,
        })
    }
}

/// Why a persisted session makes no shm record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("rx_key: {0}")]
    RxKey(contract::srtp::Error),
    #[error("tx_key: {0}")]
    TxKey(contract::srtp::Error),
    #[error("ICE credentials: {0}")]
    Ice(IceCredentialsError),
}

/// A peer key as text: `tcp:ADDR` for an ICE-TCP peer, the plain address for UDP (what
/// state files always held).
mod peer_key {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::SocketAddr;

    pub fn serialize<S: Serializer>(p: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&contract::wire::peer_to_string(p))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        contract::wire::parse_peer(&text)
            .map_err(|_| serde::de::Error::custom(format!("bad peer address `{text}`")))
    }
}

/// An SRTP profile as its name (e.g. `AEAD_AES_128_GCM`).
mod profile_name {
    use contract::srtp::Profile;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Profile, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Profile, D::Error> {
        let name = String::deserialize(d)?;
        Profile::from_name(&name)
            .map_err(|_| serde::de::Error::custom(format!("unknown profile `{name}`")))
    }
}

/// Key bytes as standard base64 (padding optional when read).
mod key_base64 {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(k))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD_NO_PAD
            .decode(text.trim().trim_end_matches('='))
            .map_err(|_| serde::de::Error::custom("key is not base64"))
    }
}

/// A route as control persists it (and as the API shows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredRoute {
    pub id: u64,
    pub from: u64,
    pub ssrc: Option<u32>,
    pub to: u64,
    pub rewrite: RewriteSpec,
}

impl StoredRoute {
    pub fn to_record(&self) -> RouteRecord {
        RouteRecord {
            id: self.id,
            from: self.from,
            ssrc: self.ssrc,
            to: self.to,
            rewrite: self.rewrite.to_rewrite(),
        }
    }
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    PutSession { session: StoredSession },
    DelSession { id: u64 },
    PutRoute { route: StoredRoute },
    DelRoute { id: u64 },
}

/// The in-memory state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// Next session id to hand out; ids are never reused.
    pub next_session_id: u64,
    pub next_route_id: u64,
    pub sessions: BTreeMap<u64, StoredSession>,
    pub routes: BTreeMap<u64, StoredRoute>,
}

impl Default for State {
    fn default() -> State {
        State {
            version: FORMAT_VERSION,
            next_session_id: 1,
            next_route_id: 1,
            sessions: BTreeMap::new(),
            routes: BTreeMap::new(),
        }
    }
}

impl State {
    /// Apply one entry (idempotent).
    pub fn apply(&mut self, e: &Entry) {
        match e {
            Entry::PutSession { session } => {
                self.next_session_id = self.next_session_id.max(session.id + 1);
                self.sessions.insert(session.id, session.clone());
            }
            Entry::DelSession { id } => {
                self.sessions.remove(id);
            }
            Entry::PutRoute { route } => {
                self.next_route_id = self.next_route_id.max(route.id + 1);
                self.routes.insert(route.id, route.clone());
            }
            Entry::DelRoute { id } => {
                self.routes.remove(id);
            }
        }
    }
}

/// The state plus its files.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    journal: std::fs::File,
    state: State,
    /// Entries appended since the last compaction.
    pending: usize,
}

impl Store {
    /// Open (creating) `dir`, load the snapshot, replay the journal, then compact.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        crate::files::ensure_private_dir(dir).map_err(io_err(dir))?;
        let snap = dir.join(SNAPSHOT);
        let mut state = match std::fs::read(&snap) {
            Ok(bytes) => {
                let s: State = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    path: snap.clone(),
                    line: e.line(),
                    message: e.to_string(),
                })?;
                if s.version != FORMAT_VERSION {
                    return Err(StoreError::Version {
                        path: snap,
                        found: s.version,
                    });
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_err(&snap)(e)),
        };
        let jpath = dir.join(JOURNAL);
        let replayed = replay(&jpath, &mut state)?;
        let journal = open_journal(&jpath)?;
        let mut store = Store {
            dir: dir.to_path_buf(),
            journal,
            state,
            pending: replayed,
        };
        store.compact()?;
        Ok(store)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Entries appended since the last compaction.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Append `entries` to the journal, fsync, then apply them in memory. Nothing is applied
    /// if the write fails. A route that conflicts with the routes in force (after the earlier
    /// entries of the batch) refuses the whole batch before anything is written
    /// ([`StoreError::Route`]; [`route_conflict`]). Replay at start-up does not check: state
    /// written by an older build loads as it was.
    pub fn commit(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        self.check_routes(entries)?;
        let mut buf = Vec::new();
        for e in entries {
            // Serializing plain data structures to JSON cannot fail.
            serde_json::to_writer(&mut buf, e).map_err(|e| StoreError::Io {
                path: self.dir.join(JOURNAL),
                source: std::io::Error::other(e),
            })?;
            buf.push(b'\n');
        }
        let path = self.dir.join(JOURNAL);
        self.journal.write_all(&buf).map_err(io_err(&path))?;
        self.journal.sync_data().map_err(io_err(&path))?;
        for e in entries {
            self.state.apply(e);
        }
        self.pending += entries.len();
        Ok(())
    }

    /// [`route_conflict`] for every route the batch puts, against the state as the batch's
    /// earlier entries leave it.
    fn check_routes(&self, entries: &[Entry]) -> Result<(), StoreError> {
        // The batch is replayed in order over an index of the routes by (subscriber, output
        // SSRC), so each put is checked against the routes in effect at its place in the
        // batch (stored ones it did not remove or replace, and earlier puts, the last put of
        // an id winning) in time linear in the state plus the batch: an offer with many
        // SSRCs, times the viewers of a room, must not cost quadratic work under the lock.
        let mut by_id: std::collections::HashMap<u64, &StoredRoute> =
            self.state.routes.values().map(|r| (r.id, r)).collect();
        let mut by_out: std::collections::HashMap<(u64, u32), Vec<u64>> =
            std::collections::HashMap::new();
        for r in by_id.values() {
            if let Some(ssrc) = output_ssrc(r) {
                by_out.entry((r.to, ssrc)).or_default().push(r.id);
            }
        }
        let unindex = |by_out: &mut std::collections::HashMap<(u64, u32), Vec<u64>>,
                       r: &StoredRoute| {
            if let Some(ssrc) = output_ssrc(r) {
                if let Some(v) = by_out.get_mut(&(r.to, ssrc)) {
                    v.retain(|&id| id != r.id);
                }
            }
        };
        for e in entries {
            match e {
                Entry::DelRoute { id } => {
                    if let Some(old) = by_id.remove(id) {
                        unindex(&mut by_out, old);
                    }
                }
                Entry::PutRoute { route } => {
                    if let Some(ssrc) = output_ssrc(route) {
                        let same_out = by_out.get(&(route.to, ssrc)).into_iter().flatten();
                        route_conflict(same_out.filter_map(|id| by_id.get(id).copied()), route)?;
                    }
                    if let Some(old) = by_id.insert(route.id, route) {
                        unindex(&mut by_out, old);
                    }
                    if let Some(ssrc) = output_ssrc(route) {
                        by_out.entry((route.to, ssrc)).or_default().push(route.id);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Write the snapshot atomically, then truncate the journal.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        let snap = self.dir.join(SNAPSHOT);
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|e| StoreError::Io {
            path: snap.clone(),
            source: std::io::Error::other(e),
        })?;
        crate::files::write_private_atomic(&snap, &bytes).map_err(io_err(&snap))?;
        let jpath = self.dir.join(JOURNAL);
        self.journal.set_len(0).map_err(io_err(&jpath))?;
        self.journal.sync_all().map_err(io_err(&jpath))?;
        self.pending = 0;
        Ok(())
    }
}

fn open_journal(path: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))
}

/// Replay the journal into `state`; returns the number of entries applied. Truncates a torn
/// final line.
fn replay(path: &Path, state: &mut State) -> Result<usize, StoreError> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut reader = std::io::BufReader::new(f);
    let mut n = 0;
    let mut good_len: u64 = 0;
    let mut line_no = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let got = reader.read_until(b'\n', &mut line).map_err(io_err(path))?;
        if got == 0 {
            break;
        }
        line_no += 1;
        if line.last() != Some(&b'\n') {
            tracing::warn!(
                path = %path.display(),
                line = line_no,
                "dropping a torn final journal entry (never acknowledged)"
            );
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_err(path))?;
            f.set_len(good_len).map_err(io_err(path))?;
            f.sync_all().map_err(io_err(path))?;
            break;
        }
        let e = serde_json::from_slice::<Entry>(&line).map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            line: line_no,
            message: e.to_string(),
        })?;
        state.apply(&e);
        n += 1;
        good_len += got as u64;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn session(id: u64) -> StoredSession {
        StoredSession {
            id,
            peer: format!("127.0.0.1:{}", 5000 + id).parse().unwrap(),
            profile: Profile::Aes128CmSha1_80,
            role: Role::Trunk,
            rx_key: vec![1; 30],
            tx_key: vec![2; 30],
            key_epoch: 0,
            flags: 0,
            max_pps: 0,
            created_unix_ms: 1,
            ice: None,
        }
    }

    /// The on-disk shape of a session is the one written before its fields were typed:
    /// profile and role by name, keys as padded base64; such a line still loads.
    #[test]
    fn session_on_disk_format_is_unchanged() {
        let old = r#"{"id":3,"peer":"127.0.0.1:5003","profile":"AES_CM_128_HMAC_SHA1_80","role":"trunk","rx_key":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB","tx_key":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgIC","key_epoch":0,"flags":0,"max_pps":0,"created_unix_ms":1}"#;
        let s: StoredSession = serde_json::from_str(old).unwrap();
        assert_eq!(s, session(3));
        assert_eq!(serde_json::to_string(&s).unwrap(), old);
        assert!(s.to_record().is_ok());
        let bad = old.replace("\"trunk\"", "\"king\"");
        assert!(serde_json::from_str::<StoredSession>(&bad).is_err());
        // An ICE-TCP peer persists as `tcp:ADDR` and comes back as the same key.
        let tcp = StoredSession {
            peer: contract::wire::tcp_peer(s.peer),
            ..s
        };
        let line = serde_json::to_string(&tcp).unwrap();
        assert!(line.contains(r#""peer":"tcp:127.0.0.1:5003""#), "{line}");
        assert_eq!(serde_json::from_str::<StoredSession>(&line).unwrap(), tcp);
    }

    /// A WebRTC session's ICE credentials round-trip through the journal line and reach the
    /// shm record; ones that do not fit a slot make no record.
    #[test]
    fn ice_credentials_persist_and_publish() {
        let ice = StoredIce {
            ufrag: "LoCaLuFr".into(),
            pwd: "p".repeat(32),
            remote_ufrag: "ReMo".into(),
            admin: false,
        };
        let s = StoredSession {
            ice: Some(ice.clone()),
            ..session(4)
        };
        let line = serde_json::to_string(&s).unwrap();
        assert!(line.ends_with(r#""ice":{"ufrag":"LoCaLuFr","pwd":"pppppppppppppppppppppppppppppppp","remote_ufrag":"ReMo"}}"#));
        assert_eq!(serde_json::from_str::<StoredSession>(&line).unwrap(), s);
        let rec = s.to_record().unwrap().ice.unwrap();
        assert_eq!(rec.ufrag(), b"LoCaLuFr");
        assert_eq!(rec.pwd(), "p".repeat(32).as_bytes());
        assert_eq!(rec.remote_ufrag(), b"ReMo");
        assert!(!format!("{s:?}").contains("pppp"), "password redacted");
        let long = StoredSession {
            ice: Some(StoredIce {
                remote_ufrag: "r".repeat(33),
                ..ice
            }),
            ..session(5)
        };
        assert!(matches!(long.to_record(), Err(RecordError::Ice(_))));
    }

    #[test]
    fn journal_replay_and_compaction() {
        let d = tmpdir("replay");
        {
            let mut s = Store::open(&d).unwrap();
            s.commit(&[Entry::PutSession {
                session: session(1),
            }])
            .unwrap();
            s.commit(&[Entry::PutSession {
                session: session(2),
            }])
            .unwrap();
            s.commit(&[Entry::DelSession { id: 2 }]).unwrap();
            assert_eq!(s.pending(), 3);
        }
        let s = Store::open(&d).unwrap();
        assert_eq!(s.state().sessions.len(), 1);
        assert_eq!(s.state().next_session_id, 3, "deleted ids are not reused");
        assert!(s.state().sessions[&1].to_record().is_ok());
        // Compacted at open: the journal is empty and the snapshot holds everything.
        assert_eq!(std::fs::metadata(d.join(JOURNAL)).unwrap().len(), 0);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join(SNAPSHOT))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(&d).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn torn_tail_dropped_corrupt_middle_refused() {
        let d = tmpdir("torn");
        drop(Store::open(&d).unwrap());
        let e = serde_json::to_string(&Entry::PutSession {
            session: session(7),
        })
        .unwrap();
        std::fs::write(d.join(JOURNAL), format!("{e}\n{{\"op\":\"put_ses")).unwrap();
        let s = Store::open(&d).unwrap();
        assert_eq!(s.state().sessions.len(), 1);
        assert_eq!(s.state().next_session_id, 8);
        drop(s);
        std::fs::write(d.join(JOURNAL), format!("garbage\n{e}\n")).unwrap();
        match Store::open(&d) {
            Err(StoreError::Corrupt { line: 1, .. }) => {}
            other => panic!("expected corrupt line 1, got {other:?}"),
        }
    }

    fn rt(id: u64, from: u64, ssrc: Option<u32>, to: u64, out: Option<u32>) -> StoredRoute {
        StoredRoute {
            id,
            from,
            ssrc,
            to,
            rewrite: RewriteSpec {
                ssrc: out,
                ..RewriteSpec::default()
            },
        }
    }

    #[test]
    fn conflicting_routes_refused() {
        let base = [
            rt(1, 10, Some(5), 30, Some(77)),
            rt(2, 10, Some(42), 30, None),
        ];
        // Another publisher rewritten to the same SSRC into the same subscriber.
        let e = route_conflict(&base, &rt(3, 11, Some(6), 30, Some(77))).unwrap_err();
        assert!(matches!(
            e,
            RouteConflict::RewrittenSsrc {
                existing: 1,
                ssrc: 77,
                ..
            }
        ));
        assert!(e.to_string().contains("RFC 3711"));
        assert!(e.to_string().contains("SSRC 77"));
        // Another publisher's explicit SSRC without rewrite, same SSRC, same subscriber.
        assert!(matches!(
            route_conflict(&base, &rt(3, 11, Some(42), 30, None)),
            Err(RouteConflict::SameSsrc { existing: 2, .. })
        ));
        // A non-rewritten stream into an SSRC a rewritten route writes (even same publisher).
        assert!(matches!(
            route_conflict(&base, &rt(3, 10, Some(77), 30, None)),
            Err(RouteConflict::SameSsrc { existing: 1, .. })
        ));
        assert!(route_conflict(&base, &rt(3, 10, Some(9), 30, Some(42))).is_err());
        // Allowed: the same publisher's other SSRC rewritten into the same output (one
        // worker renumbers them), another subscriber, another SSRC, any-SSRC without rewrite,
        // and an update of the conflicting route itself.
        assert!(route_conflict(&base, &rt(3, 10, Some(6), 30, Some(77))).is_ok());
        assert!(route_conflict(&base, &rt(3, 11, Some(6), 31, Some(77))).is_ok());
        assert!(route_conflict(&base, &rt(3, 11, Some(43), 30, None)).is_ok());
        assert!(route_conflict(&base, &rt(3, 11, None, 30, None)).is_ok());
        assert!(route_conflict(&base, &rt(1, 11, Some(5), 30, Some(77))).is_ok());
    }

    #[test]
    fn store_refuses_conflicting_route_batches() {
        let d = tmpdir("conflict");
        let mut s = Store::open(&d).unwrap();
        s.commit(&[Entry::PutRoute {
            route: rt(1, 10, None, 30, Some(77)),
        }])
        .unwrap();
        let before = std::fs::metadata(d.join(JOURNAL)).unwrap().len();
        // Refused whole, nothing written or applied.
        let err = s
            .commit(&[
                Entry::PutRoute {
                    route: rt(2, 10, Some(1), 31, None),
                },
                Entry::PutRoute {
                    route: rt(3, 11, None, 30, Some(77)),
                },
            ])
            .unwrap_err();
        assert!(matches!(err, StoreError::Route(_)));
        assert_eq!(s.state().routes.len(), 1);
        assert_eq!(std::fs::metadata(d.join(JOURNAL)).unwrap().len(), before);
        // Two new publishers into one output SSRC in one batch: refused too.
        assert!(s
            .commit(&[
                Entry::PutRoute {
                    route: rt(2, 12, Some(1), 32, Some(5)),
                },
                Entry::PutRoute {
                    route: rt(3, 13, Some(1), 32, Some(5)),
                },
            ])
            .is_err());
        // A speaker switch: delete the old route and add the new one in one batch.
        s.commit(&[
            Entry::DelRoute { id: 1 },
            Entry::PutRoute {
                route: rt(2, 11, None, 30, Some(77)),
            },
        ])
        .unwrap();
        assert_eq!(
            s.state().routes.keys().copied().collect::<Vec<_>>(),
            vec![2]
        );
    }

    #[test]
    fn replay_is_idempotent_after_snapshot() {
        let d = tmpdir("idem");
        let mut s = Store::open(&d).unwrap();
        let entries = [
            Entry::PutSession {
                session: session(1),
            },
            Entry::DelSession { id: 1 },
            Entry::PutSession {
                session: session(3),
            },
        ];
        s.commit(&entries).unwrap();
        s.compact().unwrap();
        drop(s);
        // Simulate a crash after the snapshot rename but before the journal truncation.
        let mut text = String::new();
        for e in &entries {
            text.push_str(&serde_json::to_string(e).unwrap());
            text.push('\n');
        }
        std::fs::write(d.join(JOURNAL), text).unwrap();
        let s = Store::open(&d).unwrap();
        assert_eq!(
            s.state().sessions.keys().copied().collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(s.state().next_session_id, 4);
    }
}
