//! The worker-local index: sessions with their SRTP contexts, the source-address map, routes
//! grouped by (publisher, SSRC), per-subscriber feeds (for feedback going back up), the
//! continuity state of rewritten output streams and the activity of simulcast source layers.
//!
//! Rebuilt from shared-memory records when the generation changes. A rebuild may allocate
//! (it reuses the capacity of the previous one); lookups never do. SRTP contexts and
//! continuity states are carried over by id, so rollover counters, replay windows and output
//! numbering survive every rebuild that does not change the session's keys.

use super::bwe::{Bwe, RateMeter};
use super::continuity::Continuity;
use super::crypto::SrtpOps;
use super::diag::SessionDiag;
use super::layers::LayerActivity;
use super::nack::{PubStream, SentStream};
use super::remb_rx::UplinkRemb;
use super::state::Track;
use super::twcc_rx::UplinkTwcc;
use contract::shm::{session_flags, Rewrite, Role, RouteRecord, SessionId, SessionRecord};
use contract::srtp::{ContextOptions, MasterKey};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

/// "No entry" in the u32 index fields.
pub const NONE: u32 = u32::MAX;

/// How many distinct SSRCs a publisher's session remembers (for mapping feedback on routes
/// that keep the publisher's SSRC and match any SSRC).
const SEEN_SSRCS: usize = 8;

/// Unrouted SSRCs one publisher session may report to control per worker (stream-up, so that
/// control learns simulcast layers by RID): three layers and their RTX streams. Further
/// unrouted SSRCs are only counted (`no_route`), so random SSRCs cost control nothing.
pub const STREAM_REPORTS: usize = 6;
/// An unrouted SSRC is reported again at most this often while it stays unrouted (its first
/// packets may carry no RID, or control may have been away).
pub const STREAM_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Maps an IPv4-mapped IPv6 address to plain IPv4, so that a dual-stack socket's
/// `::ffff:a.b.c.d` and the `a.b.c.d` control wrote meet (RFC 4291 §2.5.5.2); ICE-TCP peer
/// keys pass unchanged.
pub use contract::wire::normalize_addr as normalize;

/// A multiply-rotate hasher (FxHash style) with a per-process random seed: cheap for the
/// 6- or 18-byte socket addresses looked up once per datagram.
#[derive(Clone, Copy)]
pub struct SeededHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for SeededHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(K);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // Final avalanche so the low bits (the table index) depend on every input bit.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^ (x >> 33)
    }
}

/// Builds [`SeededHasher`]s from one random seed.
#[derive(Clone, Copy)]
pub struct SeededState(u64);

impl SeededState {
    pub fn new() -> SeededState {
        // RandomState draws its keys once per thread from the OS; this runs at construction
        // only, never per packet.
        SeededState(RandomState::new().hash_one(0x5eed_u64))
    }
}

impl Default for SeededState {
    fn default() -> Self {
        SeededState::new()
    }
}

impl BuildHasher for SeededState {
    type Hasher = SeededHasher;
    #[inline]
    fn build_hasher(&self) -> SeededHasher {
        SeededHasher(self.0)
    }
}

/// [`Owned::owner`] of an output stream fed by SSRC-rewriting routes (its [`Continuity`]
/// numbers every source). Session ids are never 0.
pub const OWNER_REWRITE: SessionId = 0;
/// [`Owned::owner`] of an output stream whose owner's route went away: the next claimant
/// takes it over behind a fence (session ids never reach `u64::MAX`).
pub const OWNER_NONE: SessionId = SessionId::MAX;

/// The owner of one output stream (subscriber, output SSRC) in this worker.
///
/// RFC 3711 §9.1: the subscriber's outbound SRTP context encrypts every packet of one SSRC
/// under one key with the index ROC‖SEQ of the output stream, so two different packets must
/// never be sent with the same index. Without an SSRC rewrite the output index follows the
/// source's sequence numbers, so only one source (publisher session; its SSRC is the output
/// SSRC) may feed the stream; a second one is dropped as `SsrcCollision`. When the owner
/// changes (its route went away), the new owner must continue after the last sequence number
/// sent (`fence`), so that the outbound context never goes back to indices it already used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owned {
    /// The output SSRC.
    pub ssrc: u32,
    /// Publisher session id, [`OWNER_REWRITE`] or [`OWNER_NONE`].
    pub owner: SessionId,
    /// Highest output sequence number and timestamp sent by a non-rewritten owner (for a
    /// rewritten stream they are read from its continuity state when it is released).
    pub last_seq: u16,
    pub last_ts: u32,
    /// Set at a hand-over: packets of the new owner must be newer than this (RFC 1982 order).
    pub fence: Option<u16>,
    /// How far the owner advanced past the fence; once beyond the replay window, anything
    /// at or behind the fence is refused by the inbound replay check (RFC 3711 §3.3.2) and
    /// the fence is lifted.
    pub since_fence: u32,
}

/// RFC 1982 serial-number comparison: is `a` after `b`?
#[inline]
fn seq_newer(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

/// Why an output stream refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimError {
    /// Another source owns it, or the packet is behind the hand-over fence.
    Collision,
    /// The subscriber already has as many output streams as its SRTP context can hold.
    Full,
}

/// Claim output stream `ssrc` of a subscriber (whose owners are `owned`, at most `limit`) for
/// a non-rewritten packet of `publisher` with sequence number `seq`. Integer compares over a
/// short array; allocates only for a subscriber's first output stream in this worker (see
/// [`reserve_owned`]).
#[inline]
pub fn claim(
    owned: &mut Vec<Owned>,
    limit: usize,
    window: u32,
    publisher: SessionId,
    ssrc: u32,
    seq: u16,
    ts: u32,
) -> Result<(), ClaimError> {
    let Some(e) = owned.iter_mut().find(|e| e.ssrc == ssrc) else {
        if owned.len() >= limit {
            return Err(ClaimError::Full);
        }
        reserve_owned(owned, limit);
        owned.push(Owned {
            ssrc,
            owner: publisher,
            last_seq: seq,
            last_ts: ts,
            fence: None,
            since_fence: 0,
        });
        return Ok(());
    };
    if e.owner != publisher {
        if e.owner != OWNER_NONE {
            return Err(ClaimError::Collision);
        }
        // Hand-over: continue after what the previous owner sent.
        e.owner = publisher;
        e.fence = Some(e.last_seq);
        e.since_fence = 0;
    }
    if let Some(f) = e.fence {
        if !seq_newer(seq, f) {
            return Err(ClaimError::Collision);
        }
    }
    if seq_newer(seq, e.last_seq) {
        if e.fence.is_some() {
            e.since_fence = e
                .since_fence
                .saturating_add(u32::from(seq.wrapping_sub(e.last_seq)));
            if e.since_fence > window {
                e.fence = None;
            }
        }
        e.last_seq = seq;
        e.last_ts = ts;
    }
    Ok(())
}

/// Reserve a subscriber's whole owner array at its first output stream, like its outbound SRTP
/// context (created at the first packet to the peer, with all its stream slots): one
/// allocation per subscriber and worker, none after. Sessions that receive nothing in this
/// worker hold none.
#[inline]
fn reserve_owned(owned: &mut Vec<Owned>, limit: usize) {
    if owned.capacity() < limit {
        owned.reserve_exact(limit - owned.len());
    }
}

/// One session as a worker holds it.
pub struct Session<C> {
    pub id: SessionId,
    pub peer: SocketAddr,
    pub role: Role,
    pub flags: u32,
    pub key_epoch: u32,
    pub max_pps: u32,
    rx_key: MasterKey,
    tx_key: MasterKey,
    /// Inbound context (the peer's key), created at the first packet from the peer.
    rx: Lazy<C>,
    /// Outbound context (the relay's key towards the peer), created at the first packet to it.
    tx: Lazy<C>,
    /// Rate-limit window start and packets in it.
    pub rate_window: Option<Instant>,
    pub rate_count: u32,
    /// SSRC-specific route groups of this publisher, sorted by SSRC: `groups[range]`.
    pub groups: Range<u32>,
    /// The any-SSRC group, or [`NONE`].
    pub any_group: u32,
    /// Some group in `groups` carries a simulcast layer stream (so the other streams of a
    /// publisher without one skip the layer lookup).
    pub layer_groups: bool,
    /// Routes into this session as a subscriber: `feeds[range]`.
    pub feeds: Range<u32>,
    seen: [u32; SEEN_SSRCS],
    seen_len: u8,
    seen_next: u8,
    /// Owners of this session's output streams as a subscriber (never shrinks while the
    /// session lives: a released stream keeps its fence). Reserved at the first entry.
    pub owned: Vec<Owned>,
    /// Streams received from the peer (by SSRC) and sent to it (by output SSRC), with the
    /// index last persisted (engine/state.rs). Each reserved whole at its first entry.
    pub rx_track: Vec<Track>,
    pub tx_track: Vec<Track>,
    /// Outbound SRTCP flows (by the compound's first SSRC), same bookkeeping (`index` is the
    /// SRTCP index).
    pub rtcp_track: Vec<Track>,
    /// Streams received from this session as a publisher (loss recovery; engine/nack.rs).
    /// Reserved whole at the first entry.
    pub pubs: Vec<PubStream>,
    /// Output streams sent to this session as a subscriber: sequence number → source packet.
    /// Reserved whole at the first entry.
    pub sent: Vec<SentStream>,
    /// This worker announced itself as the session's receiver (see `hub.rs`).
    pub claimed: bool,
    /// Resends to this session in the current one-second window (NACK answers), and when
    /// the window started.
    resend_window: Option<Instant>,
    resend_count: u32,
    /// What this worker counted for the session (engine/diag.rs).
    pub diag: SessionDiag,
    /// Command sequence number of the next FIR this worker sends the session as a
    /// publisher (RFC 5104 §4.3.1.2: one per new request, whoever asked).
    pub fir_seq: u8,
    /// Downlink bandwidth estimate towards this session as a subscriber (engine/bwe.rs),
    /// created at the first packet stamped with a transport-wide sequence number.
    pub bwe: Option<Box<Bwe>>,
    /// Simulcast output streams this session receives as a subscriber (rebuilt with the
    /// routes), the share of the estimate each may use ([`super::bwe::layer_budget`]), and
    /// the measured rate of what it receives outside them.
    pub layered: u16,
    pub layer_budget: Option<u64>,
    pub other_rate: RateMeter,
    /// Transport-wide arrivals of this session's packets as a publisher, for the
    /// transport-cc feedback the relay sends it (engine/twcc_rx.rs); created at its first
    /// packet carrying the extension its flags name.
    pub uplink: Option<Box<UplinkTwcc>>,
    /// The receive-side estimate of this session's packets as a publisher that takes REMB
    /// and not transport-cc (engine/remb_rx.rs); created at its first packet carrying the
    /// abs-send-time extension its flags name.
    pub remb: Option<Box<UplinkRemb>>,
    /// The publisher's RTX streams its routes name ([`Rewrite::source_rtx`]), rebuilt with
    /// the routes: a packet on one of these SSRCs is unwrapped into its original stream.
    pub rtx_in: Vec<RtxIn>,
    /// The CNAME the peer gave in its last SDES (RFC 3550 §6.5.1), when it fits: the relay's
    /// sender reports about this publisher's streams carry it, so a viewer groups the
    /// rewritten streams of one publisher for lip sync as the publisher grouped them.
    pub cname: [u8; MAX_CNAME],
    pub cname_len: u8,
    /// Unrouted SSRCs reported to control and when ([`STREAM_REPORTS`] at most, for the
    /// session's lifetime on this worker).
    stream_reports: [(u32, Instant); STREAM_REPORTS],
    stream_reports_len: u8,
}

/// Longest peer CNAME kept (libwebrtc's are 16 characters); a longer one is replaced by a name
/// the relay derives from the session id.
pub const MAX_CNAME: usize = 64;

/// A publisher's RTX stream (RFC 4588) and the stream it repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtxIn {
    /// The RTX stream's SSRC and payload type.
    pub rtx_ssrc: u32,
    pub rtx_pt: u8,
    /// The original stream's SSRC.
    pub ssrc: u32,
}

impl<C: SrtpOps> Session<C> {
    fn new(rec: &SessionRecord) -> Session<C> {
        Session {
            id: rec.id,
            peer: normalize(rec.peer),
            role: rec.role,
            flags: rec.flags,
            key_epoch: rec.key_epoch,
            max_pps: rec.max_pps,
            rx_key: rec.rx_key,
            tx_key: rec.tx_key,
            rx: Lazy::Idle,
            tx: Lazy::Idle,
            rate_window: None,
            rate_count: 0,
            groups: 0..0,
            any_group: NONE,
            layer_groups: false,
            feeds: 0..0,
            seen: [0; SEEN_SSRCS],
            seen_len: 0,
            seen_next: 0,
            owned: Vec::new(),
            rx_track: Vec::new(),
            tx_track: Vec::new(),
            rtcp_track: Vec::new(),
            pubs: Vec::new(),
            sent: Vec::new(),
            claimed: false,
            resend_window: None,
            resend_count: 0,
            diag: SessionDiag::default(),
            fir_seq: 0,
            bwe: None,
            layered: 0,
            layer_budget: None,
            other_rate: RateMeter::default(),
            uplink: None,
            remb: None,
            rtx_in: Vec::new(),
            cname: [0; MAX_CNAME],
            cname_len: 0,
            stream_reports: [(0, Instant::now()); STREAM_REPORTS],
            stream_reports_len: 0,
        }
    }

    /// Carry the session over to a new generation: only a key change touches SRTP state, and
    /// a key of the same profile is installed into the existing context (rotation without
    /// loss); a profile change starts a fresh context.
    fn update(&mut self, rec: &SessionRecord) {
        self.peer = normalize(rec.peer);
        self.role = rec.role;
        self.flags = rec.flags;
        self.max_pps = rec.max_pps;
        // Only a key change (announced by a new key_epoch) touches SRTP state.
        // A replaced context (profile change) starts every stream at ROC 0 again.
        if rec.rx_key != self.rx_key {
            if !self.rx.rekey(rec.rx_key) {
                restart(&mut self.rx_track);
            }
            self.rx_key = rec.rx_key;
        }
        if rec.tx_key != self.tx_key {
            if !self.tx.rekey(rec.tx_key) {
                restart(&mut self.tx_track);
                restart(&mut self.rtcp_track);
            }
            self.tx_key = rec.tx_key;
        }
        self.key_epoch = rec.key_epoch;
        self.groups = 0..0;
        self.any_group = NONE;
        self.layer_groups = false;
        self.feeds = 0..0;
        self.layered = 0;
        self.rtx_in.clear();
    }

    /// Remember an SSRC this session sent (cheap when it repeats the last one).
    #[inline]
    pub fn note_ssrc(&mut self, ssrc: u32) {
        let n = usize::from(self.seen_len);
        if n > 0 {
            let last = (usize::from(self.seen_next) + SEEN_SSRCS - 1) % SEEN_SSRCS;
            if self.seen[last] == ssrc || self.seen[..n].contains(&ssrc) {
                return;
            }
        }
        self.seen[usize::from(self.seen_next)] = ssrc;
        self.seen_next = ((usize::from(self.seen_next) + 1) % SEEN_SSRCS) as u8;
        if n < SEEN_SSRCS {
            self.seen_len += 1;
        }
    }

    /// Whether unrouted SSRC `ssrc` is to be reported to control at `now`: the first time for
    /// each of up to [`STREAM_REPORTS`] SSRCs, then at most every [`STREAM_REPORT_INTERVAL`];
    /// never for more SSRCs than that.
    pub fn stream_report_due(&mut self, ssrc: u32, now: Instant) -> bool {
        let n = usize::from(self.stream_reports_len);
        if let Some(e) = self.stream_reports[..n].iter_mut().find(|e| e.0 == ssrc) {
            if now.saturating_duration_since(e.1) < STREAM_REPORT_INTERVAL {
                return false;
            }
            e.1 = now;
            return true;
        }
        if n == STREAM_REPORTS {
            return false;
        }
        self.stream_reports[n] = (ssrc, now);
        self.stream_reports_len += 1;
        true
    }

    pub fn has_sent(&self, ssrc: u32) -> bool {
        self.seen[..usize::from(self.seen_len)].contains(&ssrc)
    }

    /// One more resend to this session at `now`, if fewer than `per_second` were made in the
    /// current one-second window.
    #[inline]
    pub fn resend_budget(&mut self, now: Instant, per_second: u32) -> bool {
        match self.resend_window {
            Some(t) if now.saturating_duration_since(t) < std::time::Duration::from_secs(1) => {}
            _ => {
                self.resend_window = Some(now);
                self.resend_count = 0;
            }
        }
        if self.resend_count >= per_second {
            return false;
        }
        self.resend_count += 1;
        true
    }

    pub fn pending(&self) -> bool {
        self.flags & session_flags::PENDING != 0
    }
}

fn restart(tracks: &mut [Track]) {
    for t in tracks {
        t.index = Track::RESTART;
    }
}

/// An SRTP context created on first use: a worker only pays for the sessions whose packets
/// it actually handles (SO_REUSEPORT spreads peers over workers).
enum Lazy<C> {
    Idle,
    Ready(C),
    /// Creation failed for this key (drop `Crypto` until the key changes).
    Failed,
}

impl<C: SrtpOps> Lazy<C> {
    #[inline]
    fn get(&mut self, key: &MasterKey, opts: ContextOptions) -> Option<&mut C> {
        if let Lazy::Idle = self {
            *self = match C::create(*key, opts) {
                Ok(c) => Lazy::Ready(c),
                Err(_) => Lazy::Failed,
            };
        }
        match self {
            Lazy::Ready(c) => Some(c),
            _ => None,
        }
    }

    /// Install a new key: into the live context when the profile is the same (rotation
    /// without loss; true), else start over lazily with the new key (false).
    fn rekey(&mut self, new: MasterKey) -> bool {
        if let Lazy::Ready(c) = self {
            if c.rekey(new).is_ok() {
                return true;
            }
        }
        *self = Lazy::Idle;
        false
    }
}

impl<C: SrtpOps> Session<C> {
    /// The inbound context (created now if this is the first packet from the peer).
    #[inline]
    pub fn rx_ctx(&mut self, opts: ContextOptions) -> Option<&mut C> {
        self.rx.get(&self.rx_key, opts)
    }

    /// The outbound context (created now if this is the first packet to the peer).
    #[inline]
    pub fn tx_ctx(&mut self, opts: ContextOptions) -> Option<&mut C> {
        self.tx.get(&self.tx_key, opts)
    }

    /// The outbound context with the outbound SRTCP tracks (both needed per RTCP packet).
    #[inline]
    pub fn tx_rtcp(&mut self, opts: ContextOptions) -> Option<(&mut C, &mut Vec<Track>)> {
        let ctx = self.tx.get(&self.tx_key, opts)?;
        Some((ctx, &mut self.rtcp_track))
    }
}

/// All routes from one publisher for one SSRC (or for any SSRC).
#[derive(Debug, Clone)]
pub struct Group {
    pub ssrc: u32,
    pub outputs: Range<u32>,
    /// The stream's [`LayerActivity`] in [`Index::activity`] when a simulcast layer route
    /// carries it, else [`NONE`].
    pub activity: u32,
}

/// One subscriber of a group.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Subscriber session index.
    pub sub: u32,
    pub rewrite: Rewrite,
    /// Continuity state index (only when the route rewrites the SSRC), or [`NONE`].
    pub stream: u32,
}

/// The end of the run of elements from `start` on whose `key` equals `v[start]`'s.
fn run_end<T, K: PartialEq>(v: &[T], start: usize, key: impl Fn(&T) -> K) -> usize {
    let k = key(&v[start]);
    start + v[start..].iter().take_while(|e| key(e) == k).count()
}

/// See [`Index::output_mut`].
pub struct OutputMut<'a, C> {
    pub out: &'a Output,
    pub sub: &'a mut Session<C>,
    pub stream: Option<&'a mut Continuity>,
    /// The simulcast source layers' activity ([`Index::activity`]).
    pub activity: &'a [LayerActivity],
    pub opts: ContextOptions,
}

/// One route into a subscriber, seen from the subscriber (to send its feedback upstream).
#[derive(Debug, Clone, Copy)]
pub struct Feed {
    /// Publisher session index.
    pub publisher: u32,
    /// The route's SSRC filter.
    pub src_ssrc: Option<u32>,
    /// The SSRC the subscriber sees, when rewritten.
    pub out_ssrc: Option<u32>,
    pub stream: u32,
    /// The keyframe requests the publisher understands (`contract::shm::keyframe` bits).
    pub keyframe: u8,
}

/// Where a feedback packet about `out_ssrc` seen by a subscriber goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    pub publisher: u32,
    /// The publisher's own SSRC for that stream.
    pub ssrc: u32,
    /// Output minus input sequence number (to map NACKed sequence numbers back).
    pub seq_off: u16,
    /// The keyframe requests the publisher understands (`contract::shm::keyframe` bits).
    pub keyframe: u8,
}

/// What a rebuild found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub sessions: usize,
    pub routes: usize,
    /// Routes skipped: unknown session, non-publishing source, or pending subscriber.
    pub skipped_routes: usize,
    /// Sessions not reachable by address because another session has the same peer.
    pub address_conflicts: usize,
}

/// The whole worker-local index.
pub struct Index<C> {
    pub sessions: Vec<Session<C>>,
    pub by_addr: HashMap<SocketAddr, u32, SeededState>,
    pub groups: Vec<Group>,
    pub outputs: Vec<Output>,
    pub feeds: Vec<Feed>,
    pub streams: Vec<Continuity>,
    stream_keys: Vec<(SessionId, u32)>,
    /// Per publisher stream that a simulcast layer route carries, what every output's layer
    /// selector reads (layers.rs), noted once per input packet; kept across rebuilds while a
    /// layer route carries the stream, by (publisher, SSRC).
    pub activity: Vec<LayerActivity>,
    activity_keys: Vec<(SessionId, u32)>,
    pub opts: ContextOptions,
    // Rebuild scratch, kept for its capacity.
    old: HashMap<SessionId, Session<C>>,
    by_id: HashMap<SessionId, u32>,
    old_streams: HashMap<(SessionId, u32), Continuity>,
    stream_ids: HashMap<(SessionId, u32), u32>,
    old_activity: HashMap<(SessionId, u32), LayerActivity>,
    activity_ids: HashMap<(SessionId, u32), u32>,
    edges: Vec<(u32, u32, RouteRecord)>,
    feed_scratch: Vec<(u32, Feed)>,
}

impl<C: SrtpOps> Index<C> {
    pub fn new(opts: ContextOptions) -> Index<C> {
        Index {
            sessions: Vec::new(),
            by_addr: HashMap::with_hasher(SeededState::new()),
            groups: Vec::new(),
            outputs: Vec::new(),
            feeds: Vec::new(),
            streams: Vec::new(),
            stream_keys: Vec::new(),
            activity: Vec::new(),
            activity_keys: Vec::new(),
            opts,
            old: HashMap::new(),
            by_id: HashMap::new(),
            old_streams: HashMap::new(),
            stream_ids: HashMap::new(),
            old_activity: HashMap::new(),
            activity_ids: HashMap::new(),
            edges: Vec::new(),
            feed_scratch: Vec::new(),
        }
    }

    /// How many output streams one subscriber may have owners for: its outbound SRTP context
    /// holds `max_streams` SSRCs; twice that leaves room for rewritten streams declared by
    /// routes that carry no traffic yet.
    #[inline]
    pub fn owned_limit(&self) -> usize {
        self.opts.max_streams.saturating_mul(2)
    }

    /// True when a session with this id is indexed.
    #[inline]
    pub fn has_session(&self, id: SessionId) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Session index of a source address (already normalized).
    #[inline]
    pub fn session_of(&self, src: &SocketAddr) -> Option<u32> {
        self.by_addr.get(src).copied()
    }

    /// The subscribers of (publisher, SSRC): the routes for that SSRC and the routes for any
    /// SSRC of the publisher (design.md "Packet path" step 4). `None` when there are none.
    /// A subscriber on both lists gets the packet once (from the SSRC-specific route).
    #[inline]
    pub fn outputs_of(&self, publisher: u32, ssrc: u32) -> Option<(Range<u32>, Range<u32>)> {
        let s = &self.sessions[publisher as usize];
        let groups = &self.groups[s.groups.start as usize..s.groups.end as usize];
        let specific = match groups.binary_search_by_key(&ssrc, |g| g.ssrc) {
            Ok(i) => groups[i].outputs.clone(),
            Err(_) => 0..0,
        };
        let any = match self.groups.get(s.any_group as usize) {
            Some(g) => g.outputs.clone(),
            None => 0..0,
        };
        if specific.is_empty() && any.is_empty() {
            None
        } else {
            Some((specific, any))
        }
    }

    /// The index in [`Index::activity`] of publisher `publisher`'s stream `ssrc`, when a
    /// simulcast layer route carries it.
    #[inline]
    pub fn activity_of(&self, publisher: u32, ssrc: u32) -> Option<u32> {
        let s = &self.sessions[publisher as usize];
        if !s.layer_groups {
            return None;
        }
        let groups = &self.groups[s.groups.start as usize..s.groups.end as usize];
        let i = groups.binary_search_by_key(&ssrc, |g| g.ssrc).ok()?;
        Some(groups[i].activity).filter(|&a| a != NONE)
    }

    /// True when output `oi` of an any-SSRC group is shadowed by an SSRC-specific route to
    /// the same subscriber.
    #[inline]
    pub fn shadowed(&self, oi: u32, specific: &Range<u32>) -> bool {
        let sub = self.outputs[oi as usize].sub;
        self.outputs[specific.start as usize..specific.end as usize]
            .iter()
            .any(|o| o.sub == sub)
    }

    /// Output `oi` with what sending on it needs: the route's output, its subscriber, and the
    /// output stream's continuity state (rewriting routes only).
    #[inline]
    pub fn output_mut(&mut self, oi: u32) -> OutputMut<'_, C> {
        let out = &self.outputs[oi as usize];
        OutputMut {
            out,
            sub: &mut self.sessions[out.sub as usize],
            stream: match out.stream {
                NONE => None,
                s => self.streams.get_mut(s as usize),
            },
            activity: &self.activity,
            opts: self.opts,
        }
    }

    /// Index of the session with this id.
    #[inline]
    pub fn session_index(&self, id: SessionId) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    /// The output that sends publisher `publisher`'s stream `ssrc` to subscriber `sub` (the
    /// SSRC-specific route first, as [`Index::outputs_of`] serves them).
    pub fn output_to(&self, publisher: u32, ssrc: u32, sub: u32) -> Option<u32> {
        let (specific, any) = self.outputs_of(publisher, ssrc)?;
        specific
            .chain(any)
            .find(|&oi| self.outputs[oi as usize].sub == sub)
    }

    /// The publishers (session indices) whose routes into subscriber `sub` can carry a stream
    /// the subscriber sees as `out_ssrc`: the routes rewriting to it and those passing the
    /// publisher's SSRC through (any SSRC, or that one).
    pub fn feed_publishers(&self, sub: u32, out_ssrc: u32) -> impl Iterator<Item = u32> + '_ {
        let s = &self.sessions[sub as usize];
        self.feeds[s.feeds.start as usize..s.feeds.end as usize]
            .iter()
            .filter(move |f| match f.out_ssrc {
                Some(x) => x == out_ssrc,
                None => f.src_ssrc.is_none_or(|x| x == out_ssrc),
            })
            .map(|f| f.publisher)
    }

    /// Where a subscriber's feedback about `out_ssrc` goes.
    pub fn upstream_of(&self, sub: u32, out_ssrc: u32) -> Option<Upstream> {
        let s = &self.sessions[sub as usize];
        let mut fallback = None;
        for f in &self.feeds[s.feeds.start as usize..s.feeds.end as usize] {
            match f.out_ssrc {
                Some(x) if x == out_ssrc => {
                    let pub_id = self.sessions[f.publisher as usize].id;
                    let cur = self
                        .streams
                        .get(f.stream as usize)
                        .and_then(Continuity::current);
                    match cur {
                        Some(((id, ssrc), seq_off, _)) if id == pub_id => {
                            return Some(Upstream {
                                publisher: f.publisher,
                                ssrc,
                                seq_off,
                                keyframe: f.keyframe,
                            })
                        }
                        _ => {
                            if let Some(ssrc) = f.src_ssrc {
                                fallback.get_or_insert(Upstream {
                                    publisher: f.publisher,
                                    ssrc,
                                    seq_off: 0,
                                    keyframe: f.keyframe,
                                });
                            }
                        }
                    }
                }
                Some(_) => {}
                None => {
                    let hit = match f.src_ssrc {
                        Some(s) => s == out_ssrc,
                        None => self.sessions[f.publisher as usize].has_sent(out_ssrc),
                    };
                    if hit {
                        return Some(Upstream {
                            publisher: f.publisher,
                            ssrc: out_ssrc,
                            seq_off: 0,
                            keyframe: f.keyframe,
                        });
                    }
                }
            }
        }
        fallback
    }

    /// Rebuild from a consistent set of records (sorted in place). Keeps SRTP contexts and
    /// continuity states of sessions that are still there.
    pub fn rebuild(
        &mut self,
        sessions: &mut [SessionRecord],
        routes: &mut [RouteRecord],
    ) -> RebuildReport {
        let mut rep = RebuildReport::default();
        sessions.sort_unstable_by_key(|s| s.id);
        routes.sort_unstable_by_key(|r| r.id);
        self.rebuild_sessions(sessions, &mut rep);

        // Continuity states: park the old ones by key (their layer selectors learn again
        // which source streams feed them), and the layer activity likewise.
        self.old_streams.clear();
        for (k, mut c) in self.stream_keys.drain(..).zip(self.streams.drain(..)) {
            if let Some(s) = c.layers_mut() {
                s.clear_feeds();
            }
            self.old_streams.insert(k, c);
        }
        self.stream_ids.clear();
        self.old_activity.clear();
        for (k, a) in self.activity_keys.drain(..).zip(self.activity.drain(..)) {
            self.old_activity.insert(k, a);
        }
        self.activity_ids.clear();

        self.collect_edges(routes, &mut rep);
        self.build_groups();
        self.build_feeds();

        // Keep the continuity of output streams whose subscriber still exists, so a route that
        // comes back later continues the numbering the subscriber last saw.
        for (k, c) in self.old_streams.drain() {
            if self.by_id.contains_key(&k.0) {
                self.stream_ids.insert(k, self.streams.len() as u32);
                self.streams.push(c);
                self.stream_keys.push(k);
            }
        }
        // A stream no layer route carries any more starts afresh if one comes back.
        self.old_activity.clear();
        self.update_owners();
        rep
    }

    /// Sessions: carry the surviving ones over by id (their SRTP contexts with them), index
    /// the new ones, and map peer addresses.
    fn rebuild_sessions(&mut self, sessions: &[SessionRecord], rep: &mut RebuildReport) {
        self.old.clear();
        for s in self.sessions.drain(..) {
            self.old.insert(s.id, s);
        }
        self.by_id.clear();
        self.by_addr.clear();
        for rec in sessions.iter() {
            if self.by_id.contains_key(&rec.id) {
                continue;
            }
            let s = match self.old.remove(&rec.id) {
                Some(mut s) => {
                    s.update(rec);
                    s
                }
                None => Session::new(rec),
            };
            let idx = self.sessions.len() as u32;
            self.by_id.insert(s.id, idx);
            if !s.pending() {
                // Ids ascend, so a later session with the same peer (the newer one) wins.
                if self.by_addr.insert(s.peer, idx).is_some() {
                    rep.address_conflicts += 1;
                }
            }
            self.sessions.push(s);
        }
        self.old.clear();
        rep.sessions = self.sessions.len();
    }

    /// Routes → edges (publisher index, subscriber index, record), sorted so each publisher's
    /// SSRC-specific groups come first (ascending SSRC), then its any-SSRC group.
    fn collect_edges(&mut self, routes: &[RouteRecord], rep: &mut RebuildReport) {
        self.edges.clear();
        for r in routes.iter() {
            let (Some(&from), Some(&to)) = (self.by_id.get(&r.from), self.by_id.get(&r.to)) else {
                rep.skipped_routes += 1;
                continue;
            };
            // A non-publishing role is never routed; a pending peer is not sent to.
            if !self.sessions[from as usize].role.can_publish()
                || self.sessions[to as usize].pending()
            {
                rep.skipped_routes += 1;
                continue;
            }
            self.edges.push((from, to, *r));
        }
        rep.routes = self.edges.len();
        self.edges.sort_unstable_by_key(|(from, to, r)| {
            (*from, r.ssrc.is_none(), r.ssrc.unwrap_or(0), *to, r.id)
        });
    }

    /// Edges → groups of outputs per publisher and SSRC, each output with its continuity
    /// state; the feeds each output implies are collected in `feed_scratch`.
    fn build_groups(&mut self) {
        self.groups.clear();
        self.outputs.clear();
        self.feed_scratch.clear();
        let mut i = 0;
        while i < self.edges.len() {
            let from = self.edges[i].0;
            let publisher_end = run_end(&self.edges, i, |e| e.0);
            let start_group = self.groups.len() as u32;
            while i < publisher_end {
                // One group: this publisher's routes for one SSRC (or for any).
                let key = self.edges[i].2.ssrc;
                let group_end = run_end(&self.edges[..publisher_end], i, |e| e.2.ssrc);
                let out_start = self.outputs.len() as u32;
                let mut activity = NONE;
                for k in i..group_end {
                    let (_, to, r) = self.edges[k];
                    if let Some(a) = self.push_output(from, to, &r) {
                        activity = a;
                    }
                }
                i = group_end;
                let outputs = out_start..self.outputs.len() as u32;
                match key {
                    Some(ssrc) => self.groups.push(Group {
                        ssrc,
                        outputs,
                        activity,
                    }),
                    None => {
                        self.sessions[from as usize].any_group = self.groups.len() as u32;
                        self.groups.push(Group {
                            ssrc: 0,
                            outputs,
                            activity: NONE,
                        });
                    }
                }
            }
            let s = &mut self.sessions[from as usize];
            let end = if s.any_group != NONE {
                s.any_group
            } else {
                self.groups.len() as u32
            };
            s.groups = start_group..end;
            s.layer_groups = self.groups[start_group as usize..end as usize]
                .iter()
                .any(|g| g.activity != NONE);
        }
    }

    /// One output of route `r` from publisher `from` to subscriber `to`, and its feed.
    /// Returns the index of the stream's layer activity when `r` is a simulcast layer route.
    fn push_output(&mut self, from: u32, to: u32, r: &RouteRecord) -> Option<u32> {
        let stream = match r.rewrite.ssrc {
            Some(x) => {
                let k = (self.sessions[to as usize].id, x);
                match self.stream_ids.get(&k) {
                    Some(&s) => s,
                    None => {
                        if r.rewrite.layer.is_some() {
                            let sub = &mut self.sessions[to as usize];
                            sub.layered = sub.layered.saturating_add(1);
                        }
                        let s = self.streams.len() as u32;
                        let c = self.old_streams.remove(&k).unwrap_or_default();
                        self.streams.push(c);
                        self.stream_keys.push(k);
                        self.stream_ids.insert(k, s);
                        s
                    }
                }
            }
            None => NONE,
        };
        let mut activity = None;
        if let (Some(l), Some(c)) = (r.rewrite.layer, self.streams.get_mut(stream as usize)) {
            if r.rewrite.dd_id != 0 {
                // An SVC route (svc.rs): the layer caps are its spatial and temporal caps.
                c.set_svc(l.max, l.max_temporal);
            } else {
                c.set_layers(l.count, l.max, l.max_temporal);
            }
            if let (0, Some(ssrc), Some(s)) = (r.rewrite.dd_id, r.ssrc, c.layers_mut()) {
                let k = (self.sessions[from as usize].id, ssrc);
                let a = match self.activity_ids.get(&k) {
                    Some(&a) => a,
                    None => {
                        let a = self.activity.len() as u32;
                        let kept = self.old_activity.remove(&k).unwrap_or_default();
                        self.activity.push(kept);
                        self.activity_keys.push(k);
                        self.activity_ids.insert(k, a);
                        a
                    }
                };
                s.set_feed(l.index, a);
                activity = Some(a);
            }
        }
        if let (Some(x), Some(ssrc)) = (r.rewrite.source_rtx, r.ssrc) {
            let rtx_in = &mut self.sessions[from as usize].rtx_in;
            if !rtx_in.iter().any(|e| e.rtx_ssrc == x.ssrc) {
                rtx_in.push(RtxIn {
                    rtx_ssrc: x.ssrc,
                    rtx_pt: x.payload_type,
                    ssrc,
                });
            }
        }
        self.outputs.push(Output {
            sub: to,
            rewrite: r.rewrite,
            stream,
        });
        self.feed_scratch.push((
            to,
            Feed {
                publisher: from,
                src_ssrc: r.ssrc,
                out_ssrc: r.rewrite.ssrc,
                stream,
                keyframe: r.rewrite.keyframe,
            },
        ));
        activity
    }

    /// Feeds, grouped by subscriber.
    fn build_feeds(&mut self) {
        self.feed_scratch.sort_by_key(|(to, _)| *to);
        self.feeds.clear();
        let mut j = 0;
        while j < self.feed_scratch.len() {
            let to = self.feed_scratch[j].0;
            let end = run_end(&self.feed_scratch, j, |(to, _)| *to);
            let start = self.feeds.len() as u32;
            self.feeds
                .extend(self.feed_scratch[j..end].iter().map(|(_, f)| *f));
            self.sessions[to as usize].feeds = start..self.feeds.len() as u32;
            j = end;
        }
    }

    /// Release the owners whose routes went away and let rewriting routes claim their output
    /// SSRCs (design: one owner per output stream; see [`Owned`]).
    fn update_owners(&mut self) {
        // Marks entries to remove (never a session id: ids are far below).
        const UNUSED: SessionId = SessionId::MAX - 1;
        let limit = self.owned_limit();
        for si in 0..self.sessions.len() {
            let feeds = self.sessions[si].feeds.clone();
            let feeds = &self.feeds[feeds.start as usize..feeds.end as usize];
            let sub_id = self.sessions[si].id;
            let mut owned = core::mem::take(&mut self.sessions[si].owned);
            for e in owned.iter_mut() {
                let keep = match e.owner {
                    OWNER_NONE => true,
                    OWNER_REWRITE => feeds.iter().any(|f| f.out_ssrc == Some(e.ssrc)),
                    p => feeds.iter().any(|f| {
                        f.out_ssrc.is_none()
                            && f.src_ssrc.is_none_or(|x| x == e.ssrc)
                            && self.sessions[f.publisher as usize].id == p
                    }),
                };
                if keep {
                    continue;
                }
                if e.owner == OWNER_REWRITE {
                    let last = self
                        .stream_ids
                        .get(&(sub_id, e.ssrc))
                        .and_then(|&i| self.streams.get(i as usize))
                        .and_then(Continuity::last);
                    match last {
                        Some((seq, ts)) => {
                            e.last_seq = seq;
                            e.last_ts = ts;
                        }
                        // Declared but never used: nothing was sent on this SSRC, so the
                        // entry goes away (no fence needed).
                        None => {
                            e.owner = UNUSED;
                            continue;
                        }
                    }
                }
                e.owner = OWNER_NONE;
                e.fence = None;
            }
            owned.retain(|e| e.owner != UNUSED);
            for f in feeds {
                let Some(x) = f.out_ssrc else { continue };
                match owned.iter().position(|e| e.ssrc == x) {
                    Some(i) if owned[i].owner == OWNER_REWRITE => {}
                    Some(i) => {
                        let e = &mut owned[i];
                        // Taken over from a non-rewritten owner (or released): the continuity
                        // state continues after what was sent on this SSRC.
                        e.owner = OWNER_REWRITE;
                        e.fence = None;
                        if let Some(c) = self.streams.get_mut(f.stream as usize) {
                            c.seed_after(e.last_seq, e.last_ts);
                        }
                    }
                    None if owned.len() < limit => {
                        reserve_owned(&mut owned, limit);
                        owned.push(Owned {
                            ssrc: x,
                            owner: OWNER_REWRITE,
                            last_seq: 0,
                            last_ts: 0,
                            fence: None,
                            since_fence: 0,
                        });
                    }
                    // Full: a non-rewritten packet with this SSRC finds no entry and no room,
                    // and is refused as well.
                    None => {}
                }
            }
            self.sessions[si].owned = owned;
        }
    }
}
