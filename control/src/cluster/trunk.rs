//! Relay-to-relay cascade (docs/CLUSTER.md "Cascade"): an edge node serves WHEP viewers of a
//! room owned by another node (the origin) from its own relay, fed by one SRTP trunk between
//! the two relays.
//!
//! A trunk is one static session on each side, built from the same machinery as any static
//! session (journal → shm; the relay sees nothing new): on the origin a `trunk`-role session
//! whose peer is the edge relay's media address, with one route per publisher stream of each
//! room the edge serves (SSRC rewritten to one unique within the trunk, everything else as
//! the publisher sent it, the publisher's RTX unwrapped); on the edge a `trunk`-role session
//! whose peer is the origin relay's media address, and per room a publisher-like member
//! ([`crate::core::trunks`]) that local viewers are routed from as from a local publisher.
//! Since the relay tells sessions apart by peer address, one trunk carries every room an
//! edge takes from one origin: one copy of each stream per edge, whatever its viewers.
//! Feedback needs nothing more: the edge relay answers its viewers' NACKs from its cache and
//! sends misses and keyframe requests to its "publisher", the trunk, where the origin relay
//! handles them as any viewer's.
//!
//! Keys never touch Redis: the edge asks the origin's control directly (`POST
//! /cluster/v1/trunks` on its advertised URL), signed with the cluster secret
//! ([`super::auth`]); the origin makes fresh keys and answers them sealed under the
//! secret, bound to the request's nonce.
//!
//! Failure: the edge asks the origin for each room's streams on every heartbeat; a trunk the
//! origin no longer has (404), or an origin that does not answer and has left the registry,
//! drops the room's viewers with reason `origin_lost`; a trunk on which nothing arrives for
//! `cluster.trunk_silence_ms` while the origin reports sending on it (the path between the
//! relays is cut) is given back and its viewers dropped with `trunk_silent`. The origin
//! drops a trunk whose edge left the registry (`edge_lost`), and a room the edge gives up
//! (`DELETE`, after it stayed without viewers for `cluster.entry_ttl_ms`). Both sides keep
//! their trunks in
//! `<state_dir>/cluster-trunks.json` (ids and addresses; the keys are in the journal with
//! every session's), so a restart of control keeps them.

use super::auth::{AuthError, Signature, AUTH_HEADER};
use super::registry::NodeInfo;
use super::{lock, Cluster, ClusterError};
use crate::core::join::publisher_keyframe;
use crate::core::rooms::LearnedLayer;
use crate::core::sessions::{NewRoute, NewSession};
use crate::core::trunks::{TrunkMedia, TRUNK_MEMBER_BASE};
use crate::core::{Core, CoreError};
use crate::state::{RewriteSpec, RtxSpec};
use crate::webrtc::sdp::{
    Codec, Direction, Extmap, MediaKind, NegotiatedMedia, RtxCodec, Simulcast,
};
use base64::Engine as _;
use contract::shm::{Role, StatRecord};
use contract::srtp::{MasterKey, Profile};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where trunks are asked for, on a node's advertised URL.
pub const TRUNKS_PATH: &str = "/cluster/v1/trunks";
/// The profile of every trunk (the cheapest transform, docs/BENCHMARKS.md).
const TRUNK_PROFILE: Profile = Profile::AeadAes128Gcm;
/// One exchange with another node's control (connect, request, answer).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The file both sides keep their trunks in, under `control.state_dir`.
const BOOK_FILE: &str = "cluster-trunks.json";
/// At most this many rooms per trunk, and trunks per side (an origin serves at most one
/// trunk per live node anyway).
const MAX_ROOMS_PER_TRUNK: usize = 4_096;
const MAX_TRUNKS: usize = 1_024;
/// The largest answer read from another node's control (a grant lists at most a few
/// streams per publisher; the same bound as a request body on the listeners).
pub const MAX_ANSWER: usize = 64 * 1024;

/// `POST /cluster/v1/trunks`: an edge asks for a room over its trunk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    pub edge: String,
    /// The edge relay's media address (must match its registry entry).
    pub media_addr: String,
    pub app: String,
    pub room: String,
}

/// The origin's answer to an [`OpenRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    /// The origin's trunk session (changes only when the origin made a new trunk).
    pub session: u64,
    pub profile: String,
    /// [`TrunkKeys`] as JSON, sealed under the cluster secret with the request's nonce.
    pub keys: String,
    /// The origin relay's media address: the trunk's peer on the edge.
    pub origin_media_addr: String,
    pub streams: Vec<Stream>,
}

/// A trunk's keys, base64 of master key ‖ salt as in SDES.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrunkKeys {
    /// What the origin relay encrypts with (the edge decrypts with it).
    origin_tx: String,
    /// What the edge relay encrypts with (its RTCP towards the origin).
    origin_rx: String,
}

/// One stream on a trunk: a publisher's media section as the origin negotiated it, carried
/// on `ssrc` (unique within the trunk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    /// `audio` or `video`.
    pub kind: String,
    pub ssrc: u32,
    pub codecs: Vec<StreamCodec>,
    pub extmaps: Vec<(u8, String)>,
    /// RTX payload types `(rtx, apt)` the publisher negotiated (the trunk carries no RTX:
    /// the origin unwraps it; edge viewers get their own).
    pub rtx: Vec<(u8, u8)>,
    /// The simulcast layer this stream is, when the publisher's section is simulcast by RID
    /// (absent in answers of nodes that carry no layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<StreamLayer>,
}

/// A simulcast layer on a trunk: the origin learned its SSRC from the publisher's RID and
/// carries every layer as a stream of its own; the edge puts the layers of one publisher
/// section back into one simulcast section, so that each local viewer gets the layer its
/// caps and its estimate allow (docs/CLUSTER.md "Cascade").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamLayer {
    /// The origin's publisher session and media section: the layers of one section share
    /// both.
    pub publisher: u64,
    pub section: u16,
    /// 0 = lowest resolution.
    pub index: u8,
    /// The section's number of layers.
    pub count: u8,
}

/// The most layers a trunk section takes (WHIP simulcast offers at most three).
const MAX_TRUNK_LAYERS: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCodec {
    pub pt: u8,
    pub name: String,
    pub clock_rate: u32,
    pub channels: Option<u16>,
    pub fmtp: Option<String>,
    pub rtcp_fb: Vec<String>,
}

impl Stream {
    fn of(pm: &NegotiatedMedia, ssrc: u32) -> Stream {
        Stream {
            kind: pm.kind.name().to_string(),
            ssrc,
            codecs: pm
                .codecs
                .iter()
                .map(|c| StreamCodec {
                    pt: c.pt,
                    name: c.name.clone(),
                    clock_rate: c.clock_rate,
                    channels: c.channels,
                    fmtp: c.fmtp.clone(),
                    rtcp_fb: c.rtcp_fb.clone(),
                })
                .collect(),
            extmaps: pm.extmaps.iter().map(|e| (e.id, e.uri.clone())).collect(),
            rtx: pm.rtx.iter().map(|r| (r.pt, r.apt)).collect(),
            layer: None,
        }
    }

    /// The media section an edge's trunk member announces for this stream; `None` for a
    /// kind other than audio or video.
    fn media(&self, index: usize) -> Option<NegotiatedMedia> {
        let kind = match self.kind.as_str() {
            "audio" => MediaKind::Audio,
            "video" => MediaKind::Video,
            _ => return None,
        };
        Some(NegotiatedMedia {
            mid: format!("t{index}"),
            kind,
            accepted: true,
            direction: Direction::RecvOnly,
            codecs: self
                .codecs
                .iter()
                .map(|c| Codec {
                    pt: c.pt,
                    name: c.name.clone(),
                    clock_rate: c.clock_rate,
                    channels: c.channels,
                    fmtp: c.fmtp.clone(),
                    rtcp_fb: c.rtcp_fb.clone(),
                })
                .collect(),
            extmaps: self
                .extmaps
                .iter()
                .map(|(id, uri)| Extmap {
                    id: *id,
                    direction: None,
                    uri: uri.clone(),
                })
                .collect(),
            // A layer's SSRC is learned, not announced: the section is simulcast.
            remote_ssrcs: if self.layer.is_some() {
                Vec::new()
            } else {
                vec![self.ssrc]
            },
            send_ssrc: None,
            rtx: self
                .rtx
                .iter()
                .map(|&(pt, apt)| RtxCodec { pt, apt })
                .collect(),
            rtx_ssrcs: Vec::new(),
            send_rtx_ssrc: None,
            simulcast: self.layer.map(|l| {
                let rids: Vec<String> = (0..l.count).map(|i| format!("l{i}")).collect();
                Simulcast {
                    offered: rids.clone(),
                    layers: rids,
                }
            }),
        })
    }
}

/// The origin's answer to an edge's check of one room: the trunk session, the room's
/// streams, and the packets the origin relay has sent on the trunk (`None` when the relay's
/// statistics are not readable), which lets the edge tell a silent trunk from a silent room.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomStreams {
    pub session: u64,
    pub streams: Vec<Stream>,
    #[serde(default)]
    pub packets_out: Option<u64>,
}

/// The relay's `(packets_in, packets_out)` of `session`, summed over its workers; `None`
/// without readable statistics or before the relay published any for it. One pass over the
/// statistics slots, keeping only the session's own records of the running relay.
fn session_packets(core: &Core, session: u64) -> Option<(u64, u64)> {
    let g = core.ledger();
    let r = g.reader.as_ref()?;
    let pid = r.relay_info().pid;
    let mut found: Option<(u64, u64)> = None;
    r.for_each_stat(|_, _, rec| {
        if let StatRecord::Session(s) = rec {
            if s.session == session && (pid == 0 || s.writer_pid == pid) {
                let (i, o) = found.get_or_insert((0, 0));
                *i = i.wrapping_add(s.packets_in);
                *o = o.wrapping_add(s.packets_out);
            }
        }
    });
    found
}

/// The edge member's sections, SSRCs and simulcast layers for `streams`: one section per
/// stream, except that the layers of one publisher section become one simulcast section
/// whose layers are the streams' SSRCs. A layer outside its count, beyond
/// [`MAX_TRUNK_LAYERS`], or given twice is left out.
pub(crate) fn member_media(streams: &[Stream]) -> TrunkMedia {
    let mut m = TrunkMedia::default();
    // (publisher, section) of each simulcast section made so far, and its index.
    let mut groups: Vec<((u64, u16), usize)> = Vec::new();
    for (i, s) in streams.iter().enumerate() {
        let Some(l) = s.layer else {
            if let Some(media) = s.media(i) {
                m.media.push(media);
                m.primary_ssrcs.push(vec![s.ssrc]);
            }
            continue;
        };
        if l.index >= l.count || l.count > MAX_TRUNK_LAYERS {
            continue;
        }
        let section = match groups.iter().find(|(g, _)| *g == (l.publisher, l.section)) {
            Some(&(_, at)) => at,
            None => {
                let Some(media) = s.media(i) else {
                    continue;
                };
                m.media.push(media);
                m.primary_ssrcs.push(Vec::new());
                groups.push(((l.publisher, l.section), m.media.len() - 1));
                m.media.len() - 1
            }
        };
        let count = m.media[section]
            .simulcast
            .as_ref()
            .map_or(0, |sc| sc.layers.len());
        let taken = m
            .learned
            .iter()
            .any(|x| x.section == section && (x.layer == l.index || x.ssrc == s.ssrc));
        if usize::from(l.index) >= count || taken {
            continue;
        }
        m.learned.push(LearnedLayer {
            section,
            layer: l.index,
            ssrc: s.ssrc,
            rtx_ssrc: None,
        });
    }
    m
}

/// The origin's record of one route into a trunk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OriginRoute {
    publisher: u64,
    source_ssrc: u32,
    route: u64,
    stream: Stream,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OriginRoom {
    app: String,
    room: String,
    routes: Vec<OriginRoute>,
}

/// A trunk this node serves as origin, to one edge.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OriginTrunk {
    session: u64,
    edge_media_addr: String,
    rooms: BTreeMap<String, OriginRoom>,
    opened_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EdgeRoom {
    app: String,
    room: String,
    /// The member key of the room's trunk member.
    key: u64,
    streams: Vec<Stream>,
    /// Since when the room has had no local viewer.
    idle_since_ms: Option<u64>,
}

/// The edge's watch on a trunk's media: the relay's count of packets received on the trunk
/// session at the last check, and since when (with the origin's count of packets sent on
/// its side then) it has not moved.
#[derive(Debug, Clone, Copy, Default)]
struct SilenceWatch {
    packets_in: u64,
    still_since: Option<(u64, u64)>,
}

impl SilenceWatch {
    /// One check: `packets_in` received here so far, `origin_out` sent by the origin so far.
    /// True when nothing arrived for `window_ms` while the origin sent.
    fn silent(&mut self, packets_in: u64, origin_out: u64, now_ms: u64, window_ms: u64) -> bool {
        if packets_in != self.packets_in {
            self.packets_in = packets_in;
            self.still_since = None;
            return false;
        }
        match self.still_since {
            None => {
                self.still_since = Some((now_ms, origin_out));
                false
            }
            Some((since, out)) => now_ms.saturating_sub(since) >= window_ms && origin_out > out,
        }
    }
}

/// A trunk this node takes from one origin.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EdgeTrunk {
    session: u64,
    /// The origin's session id (a new one means the origin made a new trunk).
    origin_session: u64,
    origin_media_addr: String,
    rooms: BTreeMap<String, EdgeRoom>,
    /// Since when the origin's control has not answered.
    unreachable_since_ms: Option<u64>,
    opened_ms: u64,
    #[serde(skip)]
    watch: SilenceWatch,
}

/// Both sides' trunks, persisted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Book {
    /// By edge node id.
    origin: BTreeMap<String, OriginTrunk>,
    /// By origin node id.
    edge: BTreeMap<String, EdgeTrunk>,
    next_key: u64,
    #[serde(skip)]
    path: Option<PathBuf>,
}

/// Trunk counters (`sluice_cluster_trunk*`).
#[derive(Debug, Default)]
pub struct TrunkStats {
    pub opened_origin: AtomicU64,
    pub opened_edge: AtomicU64,
    /// Edge: a WHEP join served from a trunk.
    pub viewers_served: AtomicU64,
    /// Edge: trunks refused by the origin (below its threshold, not the owner), so the join
    /// was forwarded.
    pub declined: AtomicU64,
    /// Edge: a trunk could not be opened (origin unreachable, bad answer).
    pub open_failed: AtomicU64,
    pub closed: [AtomicU64; CLOSE_REASONS.len()],
}

/// Why a trunk (or one of its rooms) closed.
pub const CLOSE_REASONS: [&str; 7] = [
    "origin_lost",
    "trunk_silent",
    "edge_lost",
    "edge_closed",
    "idle",
    "origin_restarted",
    "session_gone",
];

fn room_key(app: &str, room: &str) -> String {
    format!("{app}/{room}")
}

fn b64(k: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

fn key_of(b: &str) -> Result<MasterKey, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b)
        .map_err(|_| "a trunk key is not base64".to_string())?;
    MasterKey::new(TRUNK_PROFILE, &raw).map_err(|e| format!("a trunk key: {e}"))
}

fn fresh_key() -> Result<MasterKey, CoreError> {
    let raw = crate::secrets::random_bytes(TRUNK_PROFILE.key_material_len())
        .map_err(|e| CoreError::Internal(format!("random: {e}")))?;
    MasterKey::new(TRUNK_PROFILE, &raw).map_err(|e| CoreError::Internal(e.to_string()))
}

/// Why the origin refused a node's trunk request: answered as `{"error", "reason"}` with
/// `status`, or as the core's own refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrunkRefusal {
    #[error("{message}")]
    Refused {
        status: u16,
        reason: &'static str,
        message: String,
    },
    #[error(transparent)]
    Core(#[from] CoreError),
}

fn refusal(status: u16, reason: &'static str, message: &str) -> TrunkRefusal {
    TrunkRefusal::Refused {
        status,
        reason,
        message: message.to_string(),
    }
}

impl Book {
    fn save(&self) {
        let Some(p) = &self.path else {
            return;
        };
        let r = serde_json::to_vec_pretty(self)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::files::write_private_atomic(p, &b));
        if let Err(e) = r {
            tracing::error!(error = %e, path = %p.display(), "cluster: could not persist trunks");
        }
    }
}

impl Cluster {
    /// Load the trunks persisted under `state_dir` and put the edge rooms' members back
    /// into the core (their sessions and routes are in the journal already). Sessions that
    /// are gone are forgotten.
    pub fn load_trunks(&self, core: &Core, state_dir: &std::path::Path, now_ms: u64) {
        let path = state_dir.join(BOOK_FILE);
        let mut book: Book = match std::fs::read(&path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(book) => book,
                Err(e) => {
                    tracing::error!(error = %e, path = %path.display(), "cluster: unreadable trunk file; starting without trunks");
                    Book::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Book::default(),
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "cluster: cannot read the trunk file; starting without trunks");
                Book::default()
            }
        };
        book.path = Some(path);
        let state = core.state();
        book.origin
            .retain(|_, t| state.sessions.contains_key(&t.session));
        book.edge
            .retain(|_, t| state.sessions.contains_key(&t.session));
        for t in book.edge.values() {
            for r in t.rooms.values() {
                let m = member_media(&r.streams);
                if let Err(e) =
                    core.put_trunk_member(r.key, t.session, (&r.app, &r.room), m, now_ms)
                {
                    tracing::warn!(error = %e, app = %r.app, room = %r.room, "cluster: could not restore a trunk room");
                }
            }
        }
        book.save();
        *lock(&self.book) = book;
    }

    /// Whether this node serves `app`/`room` from a trunk (the core admits joins for it).
    pub fn edge_serves(&self, app: &str, room: &str) -> bool {
        let k = room_key(app, room);
        lock(&self.book)
            .edge
            .values()
            .any(|t| t.rooms.contains_key(&k))
    }

    /// The rooms this node serves to edges over trunks: the origin keeps them placed here
    /// while a trunk carries them, even with no participant of its own (after a control
    /// restart the participant table is empty while media flows on).
    pub fn origin_rooms(&self) -> Vec<(String, String)> {
        lock(&self.book)
            .origin
            .values()
            .flat_map(|t| t.rooms.values().map(|r| (r.app.clone(), r.room.clone())))
            .collect()
    }

    /// The number of trunks on each side: `(origin, edge)`.
    pub fn trunk_counts(&self) -> (u64, u64) {
        let b = lock(&self.book);
        (b.origin.len() as u64, b.edge.len() as u64)
    }

    fn count_close(&self, reason: &str) {
        if let Some(i) = CLOSE_REASONS.iter().position(|r| *r == reason) {
            self.trunk_stats.closed[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    // ------------------------------------------------------------------ origin side

    /// Check a node-to-node request's signature (`path` with its query, as signed).
    pub fn verify_node(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        header: Option<&str>,
        now_ms: u64,
    ) -> Result<Signature, AuthError> {
        let Some(a) = &self.auth else {
            return Err(AuthError::NoSecret);
        };
        a.verify(method, path, body, header, now_ms)
    }

    /// `POST /cluster/v1/trunks`: open (or extend) the trunk to the signing edge with a
    /// room this node owns, when the cascade rule allows it.
    pub fn open_origin(
        &self,
        core: &Core,
        o: &OpenRequest,
        sig: &Signature,
        now_ms: u64,
    ) -> Result<Grant, TrunkRefusal> {
        if o.edge != sig.node {
            return Err(refusal(
                403,
                "wrong_node",
                "the request names another node than its signer",
            ));
        }
        if !self.cfg.cascade {
            return Err(refusal(
                409,
                "cascade_off",
                "this node grants no trunks (cluster.cascade)",
            ));
        }
        if !self.owns(&o.app, &o.room) {
            return Err(refusal(409, "not_owner", "this node does not own the room"));
        }
        let Some(edge) = lock(&self.nodes)
            .iter()
            .find(|n| n.node_id == o.edge)
            .cloned()
        else {
            return Err(refusal(
                409,
                "edge_unknown",
                "the edge is not in the registry",
            ));
        };
        if edge.media_addr != o.media_addr {
            return Err(refusal(
                409,
                "edge_mismatch",
                "the media address differs from the edge's registry entry",
            ));
        }
        let Ok(peer) = o.media_addr.parse::<SocketAddr>() else {
            return Err(refusal(400, "bad_request", "media_addr is not IP:PORT"));
        };
        let viewers = core.viewers_of(&o.app, &o.room).len();
        let other_region = edge.region != self.cfg.region;
        let threshold = self.cfg.cascade_after_viewers as usize;
        let k = room_key(&o.app, &o.room);
        let mut book = lock(&self.book);
        let has_room = book
            .origin
            .get(&o.edge)
            .is_some_and(|t| t.rooms.contains_key(&k));
        if !has_room && !other_region && viewers < threshold {
            return Err(refusal(
                409,
                "below_threshold",
                &format!("the room has {viewers} viewers here; trunks open from {threshold}"),
            ));
        }
        let (opened, session) = match book.origin.get(&o.edge) {
            Some(t) => (false, t.session),
            None => {
                if book.origin.len() >= MAX_TRUNKS {
                    return Err(refusal(
                        503,
                        "too_many_trunks",
                        "this node serves too many trunks",
                    ));
                }
                let keys = match (fresh_key(), fresh_key()) {
                    (Ok(a), Ok(b)) => (a, b),
                    (Err(e), _) | (_, Err(e)) => return Err(e.into()),
                };
                let mut ids = json!({});
                let s = core.create_session(
                    NewSession {
                        peer: Some(peer),
                        profile: TRUNK_PROFILE,
                        rx_key: keys.1,
                        tx_key: keys.0,
                        role: Role::Trunk,
                        max_pps: 0,
                        ice: None,
                    },
                    now_ms,
                    &mut ids,
                )?;
                book.origin.insert(
                    o.edge.clone(),
                    OriginTrunk {
                        session: s.id,
                        edge_media_addr: o.media_addr.clone(),
                        rooms: BTreeMap::new(),
                        opened_ms: now_ms,
                    },
                );
                (true, s.id)
            }
        };
        let Some(t) = book.origin.get_mut(&o.edge) else {
            return Err(refusal(500, "internal", "the trunk vanished"));
        };
        if !t.rooms.contains_key(&k) && t.rooms.len() >= MAX_ROOMS_PER_TRUNK {
            return Err(refusal(
                503,
                "too_many_rooms",
                "the trunk carries too many rooms",
            ));
        }
        let room = t.rooms.entry(k).or_insert_with(|| OriginRoom {
            app: o.app.clone(),
            room: o.room.clone(),
            routes: Vec::new(),
        });
        reconcile_room(core, session, room);
        let streams: Vec<Stream> = room.routes.iter().map(|r| r.stream.clone()).collect();
        book.save();
        drop(book);
        if opened {
            self.trunk_stats
                .opened_origin
                .fetch_add(1, Ordering::Relaxed);
        }
        core.audit.record(
            "cluster",
            "cluster.trunk",
            json!({"side": "origin", "event": "open", "edge": o.edge, "app": o.app,
                "room": o.room, "session": session, "new_trunk": opened}),
            201,
            "ok",
        );
        tracing::info!(edge = %o.edge, app = %o.app, room = %o.room, session, "cluster: trunk room opened (origin)");
        let stored = core.session(session)?;
        let keys = TrunkKeys {
            origin_tx: b64(&stored.tx_key),
            origin_rx: b64(&stored.rx_key),
        };
        let sealed = match serde_json::to_vec(&keys)
            .map_err(|e| e.to_string())
            .and_then(|k| {
                self.auth
                    .as_ref()
                    .ok_or_else(|| "no cluster secret".to_string())?
                    .seal(&k, &sig.nonce)
                    .map_err(|e| e.to_string())
            }) {
            Ok(s) => s,
            Err(m) => return Err(refusal(500, "internal", &m)),
        };
        let me = lock(&self.me).media_addr.clone();
        let grant = Grant {
            session,
            profile: TRUNK_PROFILE.to_string(),
            keys: sealed,
            origin_media_addr: me,
            streams,
        };
        Ok(grant)
    }

    /// `GET …/{edge}/rooms/{app}/{room}`: the room's current streams on the trunk (the edge
    /// asks every heartbeat: new publishers join, and a 404 tells it the trunk is gone).
    pub fn origin_streams(
        &self,
        core: &Core,
        sig: &Signature,
        edge: &str,
        app: &str,
        room: &str,
    ) -> Result<RoomStreams, TrunkRefusal> {
        if sig.node != edge {
            return Err(refusal(
                403,
                "wrong_node",
                "the request names another node than its signer",
            ));
        }
        let mut book = lock(&self.book);
        let Some(t) = book.origin.get_mut(edge) else {
            return Err(refusal(404, "trunk_gone", "no trunk to this edge"));
        };
        let session = t.session;
        let Some(r) = t.rooms.get_mut(&room_key(app, room)) else {
            return Err(refusal(404, "trunk_gone", "the trunk carries no such room"));
        };
        if !self.owns(app, room) {
            return Err(refusal(
                404,
                "trunk_gone",
                "this node no longer owns the room",
            ));
        }
        let before = r.routes.len();
        reconcile_room(core, session, r);
        let streams: Vec<Stream> = r.routes.iter().map(|x| x.stream.clone()).collect();
        if r.routes.len() != before {
            book.save();
        }
        drop(book);
        Ok(RoomStreams {
            session,
            streams,
            packets_out: session_packets(core, session).map(|(_, out)| out),
        })
    }

    /// `DELETE …/{edge}/rooms/{app}/{room}`: the edge gives a room up.
    pub fn origin_close_room(
        &self,
        core: &Core,
        sig: &Signature,
        edge: &str,
        app: &str,
        room: &str,
    ) -> Result<(), TrunkRefusal> {
        if sig.node != edge {
            return Err(refusal(
                403,
                "wrong_node",
                "the request names another node than its signer",
            ));
        }
        let mut book = lock(&self.book);
        let Some(t) = book.origin.get_mut(edge) else {
            return Err(refusal(404, "trunk_gone", "no trunk to this edge"));
        };
        let Some(r) = t.rooms.remove(&room_key(app, room)) else {
            return Err(refusal(404, "trunk_gone", "the trunk carries no such room"));
        };
        for x in &r.routes {
            // A route already gone (its publisher left) needs nothing.
            let _ = core.delete_route(x.route);
        }
        let empty = t.rooms.is_empty();
        if empty {
            let session = t.session;
            book.origin.remove(edge);
            let _ = core.delete_session(session, &mut json!({}));
        }
        book.save();
        drop(book);
        self.count_close("edge_closed");
        core.audit.record(
            "cluster",
            "cluster.trunk",
            json!({"side": "origin", "event": "close", "edge": edge, "app": app, "room": room,
                "reason": "edge_closed", "trunk_closed": empty}),
            200,
            "edge_closed",
        );
        Ok(())
    }

    /// Origin upkeep on each heartbeat: every trunk room gets routes from new publisher
    /// streams; a trunk whose edge left the registry (or whose session an operator deleted)
    /// is closed.
    fn origin_tick(&self, core: &Core, redis_up: bool) {
        let live: Vec<String> = lock(&self.nodes)
            .iter()
            .map(|n| n.node_id.clone())
            .collect();
        let state = core.state();
        let mut closed = Vec::new();
        {
            let mut book = lock(&self.book);
            let gone: Vec<(String, &'static str)> = book
                .origin
                .iter()
                .filter_map(|(edge, t)| {
                    if !state.sessions.contains_key(&t.session) {
                        Some((edge.clone(), "session_gone"))
                    } else if redis_up && !live.contains(edge) {
                        Some((edge.clone(), "edge_lost"))
                    } else {
                        None
                    }
                })
                .collect();
            for (edge, reason) in gone {
                if let Some(t) = book.origin.remove(&edge) {
                    // Already gone when an operator deleted it.
                    let _ = core.delete_session(t.session, &mut json!({}));
                    closed.push((edge, reason, t.rooms.len()));
                }
            }
            for t in book.origin.values_mut() {
                let session = t.session;
                for r in t.rooms.values_mut() {
                    reconcile_room(core, session, r);
                }
            }
            book.save();
        }
        for (edge, reason, rooms) in closed {
            self.count_close(reason);
            tracing::warn!(%edge, reason, "cluster: trunk closed (origin)");
            core.audit.record(
                "cluster",
                "cluster.trunk",
                json!({"side": "origin", "event": "close", "edge": edge, "reason": reason,
                    "rooms": rooms, "trunk_closed": true}),
                200,
                reason,
            );
        }
    }

    // ------------------------------------------------------------------ edge side

    /// A WHEP join for `app`/`room`, owned by `owner`, reached this node: serve it from a
    /// trunk when cascading applies. `Ok(true)`: the room is on a trunk here and the join
    /// runs locally; `Ok(false)`: forward it as usual (cascade off here, or the origin
    /// declined).
    pub fn serve_from_trunk(
        &self,
        core: &Core,
        app: &str,
        room: &str,
        owner: &NodeInfo,
    ) -> Result<bool, ClusterError> {
        if !self.cfg.cascade || self.auth.is_none() {
            return Ok(false);
        }
        if self.edge_serves(app, room) {
            self.trunk_stats
                .viewers_served
                .fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
        // One open at a time: concurrent viewers of a new room make one trunk request.
        let _opening = lock(&self.opening);
        if self.edge_serves(app, room) {
            self.trunk_stats
                .viewers_served
                .fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
        match self.open_edge(core, app, room, owner) {
            Ok(true) => {
                self.trunk_stats
                    .viewers_served
                    .fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Ok(false) => {
                self.trunk_stats.declined.fetch_add(1, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => {
                self.trunk_stats.open_failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn open_edge(
        &self,
        core: &Core,
        app: &str,
        room: &str,
        owner: &NodeInfo,
    ) -> Result<bool, ClusterError> {
        let fail = |message: String| ClusterError::Forward {
            node: owner.node_id.clone(),
            message,
        };
        let me = lock(&self.me).media_addr.clone();
        let body = serde_json::to_vec(&OpenRequest {
            edge: self.cfg.node_id.clone(),
            media_addr: me,
            app: app.to_string(),
            room: room.to_string(),
        })
        .map_err(|e| fail(e.to_string()))?;
        let (status, answer, nonce) = self.call(owner, "POST", TRUNKS_PATH, body)?;
        if status == 409 {
            return Ok(false);
        }
        if status != 201 {
            return Err(fail(format!(
                "trunk refused: {status} {}",
                String::from_utf8_lossy(&answer)
            )));
        }
        let grant: Grant =
            serde_json::from_slice(&answer).map_err(|e| fail(format!("trunk answer: {e}")))?;
        let auth = self
            .auth
            .as_ref()
            .ok_or_else(|| fail("no cluster secret".into()))?;
        let keys = auth
            .open(&grant.keys, &nonce)
            .map_err(|e| fail(format!("trunk keys: {e}")))?;
        let keys: TrunkKeys =
            serde_json::from_slice(&keys).map_err(|e| fail(format!("trunk keys: {e}")))?;
        if grant.profile != TRUNK_PROFILE.to_string() {
            return Err(fail(format!("unexpected trunk profile {}", grant.profile)));
        }
        let origin_addr: SocketAddr = grant
            .origin_media_addr
            .parse()
            .map_err(|_| fail("origin_media_addr is not IP:PORT".into()))?;
        let rx = key_of(&keys.origin_tx).map_err(fail)?;
        let tx = key_of(&keys.origin_rx).map_err(fail)?;
        let now = crate::clock::unix_ms();
        // A trunk the origin made anew (it lost the old one) replaces ours and its rooms.
        let stale = lock(&self.book)
            .edge
            .get(&owner.node_id)
            .is_some_and(|t| t.origin_session != grant.session);
        if stale {
            self.close_edge_trunk(core, &owner.node_id, "origin_restarted");
        }
        let mut book = lock(&self.book);
        let session = match book.edge.get(&owner.node_id) {
            Some(t) => t.session,
            None => {
                if book.edge.len() >= MAX_TRUNKS {
                    return Err(fail("this node takes too many trunks".into()));
                }
                let s = core
                    .create_session(
                        NewSession {
                            peer: Some(origin_addr),
                            profile: TRUNK_PROFILE,
                            rx_key: rx,
                            tx_key: tx,
                            role: Role::Trunk,
                            max_pps: 0,
                            ice: None,
                        },
                        now,
                        &mut json!({}),
                    )
                    .map_err(|e| fail(format!("trunk session: {e}")))?;
                book.edge.insert(
                    owner.node_id.clone(),
                    EdgeTrunk {
                        session: s.id,
                        origin_session: grant.session,
                        origin_media_addr: grant.origin_media_addr.clone(),
                        rooms: BTreeMap::new(),
                        unreachable_since_ms: None,
                        opened_ms: now,
                        watch: SilenceWatch::default(),
                    },
                );
                self.trunk_stats.opened_edge.fetch_add(1, Ordering::Relaxed);
                s.id
            }
        };
        let key = TRUNK_MEMBER_BASE + book.next_key;
        book.next_key += 1;
        core.put_trunk_member(key, session, (app, room), member_media(&grant.streams), now)
            .map_err(|e| fail(format!("trunk room: {e}")))?;
        if let Some(t) = book.edge.get_mut(&owner.node_id) {
            t.rooms.insert(
                room_key(app, room),
                EdgeRoom {
                    app: app.to_string(),
                    room: room.to_string(),
                    key,
                    streams: grant.streams,
                    idle_since_ms: None,
                },
            );
        }
        book.save();
        drop(book);
        core.audit.record(
            "cluster",
            "cluster.trunk",
            json!({"side": "edge", "event": "open", "origin": owner.node_id, "app": app,
                "room": room, "session": session}),
            201,
            "ok",
        );
        tracing::info!(origin = %owner.node_id, %app, %room, session, "cluster: trunk room opened (edge)");
        Ok(true)
    }

    /// Drop the room `k` of the trunk from `origin`: its viewers lose their sessions, the
    /// trunk member goes, and the trunk with it when it was the last room.
    fn close_edge_room(&self, core: &Core, origin: &str, k: &str, reason: &str) {
        let (r, session, last) = {
            let mut book = lock(&self.book);
            let Some(t) = book.edge.get_mut(origin) else {
                return;
            };
            let Some(r) = t.rooms.remove(k) else {
                return;
            };
            let last = t.rooms.is_empty();
            let session = t.session;
            if last {
                book.edge.remove(origin);
            }
            book.save();
            (r, session, last)
        };
        let viewers = core.viewers_of(&r.app, &r.room);
        core.remove_trunk_member(r.key);
        for v in &viewers {
            // A viewer that left meanwhile needs nothing.
            let _ = core.remove_member(*v, false);
        }
        if last {
            let _ = core.delete_session(session, &mut json!({}));
        }
        self.count_close(reason);
        tracing::warn!(%origin, app = %r.app, room = %r.room, reason, viewers = viewers.len(), "cluster: trunk room closed (edge)");
        core.audit.record(
            "cluster",
            "cluster.trunk",
            json!({"side": "edge", "event": "close", "origin": origin, "app": r.app,
                "room": r.room, "reason": reason, "viewers_dropped": viewers.len(),
                "trunk_closed": last}),
            200,
            reason,
        );
    }

    fn close_edge_trunk(&self, core: &Core, origin: &str, reason: &str) {
        let rooms: Vec<String> = lock(&self.book)
            .edge
            .get(origin)
            .map(|t| t.rooms.keys().cloned().collect())
            .unwrap_or_default();
        for k in rooms {
            self.close_edge_room(core, origin, &k, reason);
        }
    }

    /// Edge upkeep on each heartbeat: per room, ask the origin for its streams (new ones are
    /// routed to the viewers; a 404 closes the room, `origin_lost`); an origin that does not
    /// answer and has left the registry closes the trunk (`origin_lost`); a room without
    /// viewers for `entry_ttl_ms` is given back to the origin (`idle`).
    fn edge_tick(&self, core: &Core, redis_up: bool, now_ms: u64) {
        let ttl = u64::from(self.cfg.entry_ttl_ms);
        let trunks: Vec<(String, EdgeTrunk)> = lock(&self.book)
            .edge
            .iter()
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        let nodes = lock(&self.nodes).clone();
        for (origin, t) in trunks {
            if !core.state().sessions.contains_key(&t.session) {
                self.close_edge_trunk(core, &origin, "session_gone");
                continue;
            }
            let info = nodes.iter().find(|n| n.node_id == origin).cloned();
            let Some(info) = info else {
                // Not in the registry: the origin is gone when its control is silent too.
                let silent_since = t.unreachable_since_ms.unwrap_or(now_ms);
                if redis_up && now_ms.saturating_sub(silent_since) >= ttl {
                    self.close_edge_trunk(core, &origin, "origin_lost");
                } else if t.unreachable_since_ms.is_none() {
                    if let Some(x) = lock(&self.book).edge.get_mut(&origin) {
                        x.unreachable_since_ms = Some(now_ms);
                    }
                }
                continue;
            };
            let mut reachable = true;
            // The most the origin reported sending on the trunk this round.
            let mut origin_out: Option<u64> = None;
            for (k, r) in &t.rooms {
                let idle = core.viewers_of(&r.app, &r.room).is_empty();
                let idle_since = if idle {
                    Some(r.idle_since_ms.unwrap_or(now_ms))
                } else {
                    None
                };
                let path = format!(
                    "{TRUNKS_PATH}/{}/rooms/{}/{}",
                    self.cfg.node_id, r.app, r.room
                );
                if idle_since.is_some_and(|s| now_ms.saturating_sub(s) >= ttl) {
                    // The origin forgets the room too; if it cannot be told, its own upkeep
                    // drops the trunk once this node leaves, and a later open replaces it.
                    let _ = self.call(&info, "DELETE", &path, Vec::new());
                    self.close_edge_room(core, &origin, k, "idle");
                    continue;
                }
                match self.call(&info, "GET", &path, Vec::new()) {
                    Ok((200, body, _)) => {
                        let answer = serde_json::from_slice::<RoomStreams>(&body).ok();
                        if let Some(out) = answer.as_ref().and_then(|a| a.packets_out) {
                            origin_out = Some(origin_out.map_or(out, |o| o.max(out)));
                        }
                        if let Some(streams) = answer.map(|a| a.streams) {
                            if streams != r.streams {
                                let m = member_media(&streams);
                                if let Err(e) = core.put_trunk_member(
                                    r.key,
                                    t.session,
                                    (&r.app, &r.room),
                                    m,
                                    now_ms,
                                ) {
                                    tracing::warn!(error = %e, app = %r.app, room = %r.room, "cluster: could not update a trunk room");
                                    continue;
                                }
                            }
                            let mut book = lock(&self.book);
                            if let Some(x) =
                                book.edge.get_mut(&origin).and_then(|x| x.rooms.get_mut(k))
                            {
                                x.streams = streams;
                                x.idle_since_ms = idle_since;
                            }
                            book.save();
                        }
                    }
                    Ok((404, _, _)) => self.close_edge_room(core, &origin, k, "origin_lost"),
                    Ok((status, _, _)) => {
                        tracing::warn!(%origin, status, "cluster: the origin answered a trunk check oddly");
                    }
                    Err(_) => reachable = false,
                }
            }
            let silent = {
                let mut book = lock(&self.book);
                let Some(x) = book.edge.get_mut(&origin) else {
                    continue;
                };
                x.unreachable_since_ms = if reachable {
                    None
                } else {
                    Some(x.unreachable_since_ms.unwrap_or(now_ms))
                };
                match (origin_out, session_packets(core, t.session)) {
                    (Some(out), Some((packets_in, _))) => x.watch.silent(
                        packets_in,
                        out,
                        now_ms,
                        u64::from(self.cfg.trunk_silence_ms),
                    ),
                    // Without both counts there is nothing to compare: the watch restarts.
                    _ => {
                        x.watch.still_since = None;
                        false
                    }
                }
            };
            if silent {
                self.close_silent_trunk(core, &info, &origin);
            }
        }
    }

    /// The origin sends on the trunk and nothing arrives here (the path between the relays
    /// is cut): give every room of the trunk back to the origin, so that it stops sending
    /// into the void, and close them here with `trunk_silent`; the viewers lose their
    /// sessions and reconnect.
    fn close_silent_trunk(&self, core: &Core, info: &NodeInfo, origin: &str) {
        let rooms: Vec<(String, String, String)> = lock(&self.book)
            .edge
            .get(origin)
            .map(|t| {
                t.rooms
                    .iter()
                    .map(|(k, r)| (k.clone(), r.app.clone(), r.room.clone()))
                    .collect()
            })
            .unwrap_or_default();
        tracing::warn!(%origin, rooms = rooms.len(), window_ms = self.cfg.trunk_silence_ms, "cluster: no media on the trunk while the origin sends");
        for (k, app, room) in rooms {
            let path = format!("{TRUNKS_PATH}/{}/rooms/{app}/{room}", self.cfg.node_id);
            // Best effort: an origin that cannot be told drops the routes when the trunk
            // goes (edge_lost) or a later open replaces it.
            let _ = self.call(info, "DELETE", &path, Vec::new());
            self.close_edge_room(core, origin, &k, "trunk_silent");
        }
    }

    /// Trunk upkeep, from the heartbeat thread.
    pub fn trunk_tick(&self, core: &Core, now_ms: u64) {
        let up = self.redis_up();
        self.origin_tick(core, up);
        self.edge_tick(core, up, now_ms);
    }

    /// One signed exchange with `node`'s control: status, body and the request's nonce.
    fn call(
        &self,
        node: &NodeInfo,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>, Vec<u8>), ClusterError> {
        let fail = |message: String| ClusterError::Forward {
            node: node.node_id.clone(),
            message,
        };
        let authority = node
            .advertise_url
            .strip_prefix("http://")
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| {
                fail(format!(
                    "advertised URL `{}` is not http://HOST:PORT",
                    node.advertise_url
                ))
            })?
            .to_string();
        let auth = self
            .auth
            .as_ref()
            .ok_or_else(|| fail("no cluster secret".into()))?;
        let sig = auth
            .sign(method, path, &body, crate::clock::unix_ms())
            .map_err(|e| fail(format!("random: {e}")))?;
        let header = sig.render();
        let r = self.block_on(async {
            tokio::time::timeout(
                CALL_TIMEOUT,
                exchange(&authority, method, path, &header, body),
            )
            .await
            .map_err(|_| format!("no answer within {} s", CALL_TIMEOUT.as_secs()))?
        });
        let (status, answer) = r.map_err(fail)?;
        Ok((status, answer, sig.nonce.to_vec()))
    }

    /// The trunks for `GET /v1/cluster`: per trunk its side, the other node, its session,
    /// rooms, the viewers it serves here (edge) and the relay's counters for the session.
    pub fn trunks_status(&self, core: &Core) -> Value {
        let book = lock(&self.book).clone();
        let diag = {
            let g = core.ledger();
            g.reader.as_ref().map(|r| r.diagnostics().0)
        };
        let counters = |session: u64| {
            let t = diag
                .as_ref()
                .and_then(|d| d.sessions.get(&session))
                .map(|d| d.totals);
            t.map_or(json!(null), |t| {
                json!({"packets_in": t.packets_in, "bytes_in": t.bytes_in,
                    "packets_out": t.packets_out, "bytes_out": t.bytes_out})
            })
        };
        let mut out = Vec::new();
        for (edge, t) in &book.origin {
            let rooms: Vec<Value> = t
                .rooms
                .values()
                .map(|r| json!({"app": r.app, "room": r.room, "streams": r.routes.len()}))
                .collect();
            out.push(json!({"side": "origin", "node": edge, "session": t.session,
                "peer": t.edge_media_addr, "opened_ms": t.opened_ms, "rooms": rooms,
                "counters": counters(t.session)}));
        }
        for (origin, t) in &book.edge {
            let mut viewers = 0;
            let rooms: Vec<Value> = t
                .rooms
                .values()
                .map(|r| {
                    let v = core.viewers_of(&r.app, &r.room).len();
                    viewers += v;
                    json!({"app": r.app, "room": r.room, "streams": r.streams.len(),
                        "viewers": v})
                })
                .collect();
            out.push(json!({"side": "edge", "node": origin, "session": t.session,
                "peer": t.origin_media_addr, "opened_ms": t.opened_ms, "rooms": rooms,
                "viewers": viewers, "counters": counters(t.session)}));
        }
        Value::Array(out)
    }
}

/// Make `r`'s routes match the room's publishers: a route into the trunk for every primary
/// SSRC of every accepted audio or video section of every publisher member (new streams
/// get an SSRC unique in the trunk); records of routes that are gone (their publisher left)
/// are dropped. Sections without announced SSRCs are not carried.
fn reconcile_room(core: &Core, trunk: u64, r: &mut OriginRoom) {
    let state = core.state();
    r.routes.retain(|x| state.routes.contains_key(&x.route));
    let members = core.members_of(&r.app, Some(&r.room));
    let mut taken: Vec<u32> = r.routes.iter().map(|x| x.stream.ssrc).collect();
    for p in members.iter().filter(|m| m.publishes) {
        for (i, pm) in p.media.iter().enumerate() {
            if !pm.accepted || !matches!(pm.kind, MediaKind::Audio | MediaKind::Video) {
                continue;
            }
            // The section's streams: its primary SSRCs, or the simulcast layers learned
            // from its RIDs so far (each its own stream on the trunk).
            let sources: Vec<(u32, Option<RtxSpec>, Option<StreamLayer>)> = match &pm.simulcast {
                Some(sc) => {
                    let rtx_pt = pm.codecs.iter().find_map(|c| pm.rtx_for(c.pt));
                    p.learned
                        .iter()
                        .filter(|l| l.section == i)
                        .map(|l| {
                            let rtx = l
                                .rtx_ssrc
                                .zip(rtx_pt)
                                .map(|(ssrc, payload_type)| RtxSpec { payload_type, ssrc });
                            let layer = StreamLayer {
                                publisher: p.session,
                                section: u16::try_from(i).unwrap_or(u16::MAX),
                                index: l.layer,
                                count: u8::try_from(sc.layers.len()).unwrap_or(u8::MAX),
                            };
                            (l.ssrc, rtx, Some(layer))
                        })
                        .collect()
                }
                None => p
                    .primary_ssrcs
                    .get(i)
                    .map_or(&[][..], |v| &v[..])
                    .iter()
                    .map(|&s| {
                        let rtx = pm
                            .source_rtx_of(s)
                            .map(|(payload_type, ssrc)| RtxSpec { payload_type, ssrc });
                        (s, rtx, None)
                    })
                    .collect(),
            };
            for (s, source_rtx, layer) in sources {
                if r.routes
                    .iter()
                    .any(|x| x.publisher == p.session && x.source_ssrc == s)
                {
                    continue;
                }
                let Some(ssrc) = fresh_ssrc(&mut taken) else {
                    return;
                };
                let rewrite = RewriteSpec {
                    ssrc: Some(ssrc),
                    pt_map: Vec::new(),
                    ext_map: Vec::new(),
                    mid: None,
                    rtx: None,
                    source_rtx,
                    twcc_id: None,
                    dd_id: None,
                    keyframe: publisher_keyframe(pm),
                    layer: None,
                };
                match core.create_route(
                    NewRoute {
                        from: p.session,
                        to: trunk,
                        ssrc: Some(s),
                        rewrite,
                    },
                    &mut json!({}),
                ) {
                    Ok(route) => r.routes.push(OriginRoute {
                        publisher: p.session,
                        source_ssrc: s,
                        route: route.id,
                        stream: Stream {
                            layer,
                            ..Stream::of(pm, ssrc)
                        },
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e, app = %r.app, room = %r.room, "cluster: could not route a stream into a trunk");
                    }
                }
            }
        }
    }
}

/// A random SSRC not in `taken`, then added to it; `None` when randomness fails.
fn fresh_ssrc(taken: &mut Vec<u32>) -> Option<u32> {
    loop {
        let b = crate::secrets::random_bytes(4).ok()?;
        let s = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) | 1;
        if !taken.contains(&s) {
            taken.push(s);
            return Some(s);
        }
    }
}

/// One HTTP/1.1 exchange with `authority`, signed with `auth_header`.
async fn exchange(
    authority: &str,
    method: &str,
    path: &str,
    auth_header: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let out = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .header("content-type", "application/json")
        .header(AUTH_HEADER, auth_header)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("request: {e}"))?;
    let resp = send
        .send_request(out)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("answer body: {e}"))?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video() -> NegotiatedMedia {
        NegotiatedMedia {
            mid: "1".into(),
            kind: MediaKind::Video,
            accepted: true,
            direction: Direction::RecvOnly,
            codecs: vec![Codec {
                pt: 96,
                name: "VP8".into(),
                clock_rate: 90_000,
                channels: None,
                fmtp: None,
                rtcp_fb: vec!["nack".into(), "nack pli".into()],
            }],
            extmaps: vec![Extmap {
                id: 4,
                direction: None,
                uri: "urn:ietf:params:rtp-hdrext:sdes:mid".into(),
            }],
            remote_ssrcs: vec![1111, 2222],
            send_ssrc: None,
            rtx: vec![RtxCodec { pt: 97, apt: 96 }],
            rtx_ssrcs: vec![(1111, 2222)],
            send_rtx_ssrc: None,
            simulcast: None,
        }
    }

    #[test]
    fn a_stream_becomes_an_edge_section_with_the_trunk_ssrc() {
        let s = Stream::of(&video(), 0xdead_beef);
        // Through JSON, as the origin answers it.
        let s: Stream = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        let m = s.media(3).unwrap();
        assert_eq!(m.kind, MediaKind::Video);
        assert_eq!(m.mid, "t3");
        assert_eq!(m.codecs, video().codecs);
        assert_eq!(
            (m.extmaps[0].id, m.extmaps[0].uri.as_str()),
            (4, "urn:ietf:params:rtp-hdrext:sdes:mid")
        );
        assert_eq!(m.remote_ssrcs, vec![0xdead_beef]);
        assert_eq!(m.rtx, video().rtx);
        // The trunk carries no RTX stream: the origin unwraps it.
        assert!(m.rtx_ssrcs.is_empty() && m.source_rtx_of(0xdead_beef).is_none());
        let m = member_media(&[
            s.clone(),
            Stream {
                kind: "application".into(),
                ..s
            },
        ]);
        assert_eq!(
            (m.media.len(), m.primary_ssrcs),
            (1, vec![vec![0xdead_beef]])
        );
        assert!(m.learned.is_empty() && m.media[0].simulcast.is_none());
    }

    #[test]
    fn fresh_ssrcs_are_unique_and_odd() {
        let mut taken = vec![1, 3];
        for _ in 0..100 {
            let s = fresh_ssrc(&mut taken).unwrap();
            assert_eq!(s & 1, 1);
        }
        let mut sorted = taken.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), taken.len());
    }

    #[test]
    fn a_trunk_is_silent_only_when_the_origin_sends_and_nothing_arrives() {
        let mut w = SilenceWatch::default();
        // Media arrives: never silent.
        assert!(!w.silent(10, 10, 0, 1_000));
        assert!(!w.silent(20, 20, 2_000, 1_000));
        // Nothing arrives from t=3000, the origin keeps sending: silent once the window is over.
        assert!(!w.silent(20, 30, 3_000, 1_000));
        assert!(!w.silent(20, 40, 3_500, 1_000));
        assert!(w.silent(20, 50, 4_000, 1_000));
        // A paused publisher: the origin sends nothing either, never silent.
        let mut p = SilenceWatch::default();
        assert!(!p.silent(5, 5, 0, 1_000));
        assert!(!p.silent(5, 5, 1_000, 1_000));
        assert!(!p.silent(5, 5, 60_000, 1_000));
        // Something arrives again: the watch starts over.
        assert!(!w.silent(21, 60, 5_000, 1_000));
        assert!(!w.silent(21, 70, 5_500, 1_000));
    }
}
