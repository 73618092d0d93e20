//! The per-datagram path: demultiplex, find the session, unprotect, route, rewrite, protect,
//! queue (design.md "Packet path" steps 1–6). No allocation, lock, syscall or clock here.

use super::bwe::{layer_budget, Bwe, BweConfig};
use super::continuity::{Continuity, Source};
use super::crypto::{rx_drop_reason, tx_drop_reason, SrtpOps};
use super::diag::{DiagState, RtpOut, SrSeen};
use super::hub::{FeedbackHub, HandError};
use super::index::{
    claim, normalize, ClaimError, Index, OutputMut, Owned, RebuildReport, Session, Upstream,
    MAX_CNAME, NONE,
};
use super::layers::{Decision, LayerActivity, LayerPacket, UP_MARGIN_PCT};
use super::nack::{NackConfig, PubStream, SentStream, MAX_PENDING};
use super::probe::{PADDING, TICK_US};
use super::remb_rx::UplinkRemb;
use super::rtx_cache::{AsSent, Insert, Resend, SentFrom, StreamCache, SLOT_BYTES};
use super::state::{estimate_index, StreamState, Track, SKIP};
use super::stun::{IceResponder, StunVerdict};
use super::svc::{self, SvcDecision};
use super::twcc_rx::{UplinkTwcc, FEEDBACK_INTERVAL_US};
use crate::batch::TxQueue;
use contract::ratelimit::{RateLimiter, Verdict};
use contract::shm::{
    session_flags, CounterSnapshot, DropReason, Feedback, Rewrite, RouteRecord, SessionId,
    SessionRecord, ShmReader, StreamDir, StreamRecord,
};
use contract::srtp::{ContextOptions, MacBatch, Profile};
use contract::wire::rtcp::{self, fmt, packet_type, Rtcp};
use contract::wire::rtp::{self, RtpMut, RtpPacket};
use contract::wire::vp8::{self as vp8_wire, Vp8Descriptor};
use contract::wire::{classify, dd, dtls, Kind};
use contract::wire::{rtcp_write, rtx, twcc};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An outbound SRTCP flow's stored index is rewritten every this many packets, so it is at
/// most this far behind the true one (RTCP is a few packets per second per stream).
const RTCP_REFRESH: u64 = 16;
/// A new process continues an outbound SRTCP flow this far past the stored index: past
/// anything the previous process can have protected.
const RTCP_SKIP: u64 = 4 * RTCP_REFRESH;
/// Most lost packets of one generic NACK the relay acts on (64 FCI entries with every bit
/// set); the rest are counted `resend_suppressed`.
const MAX_LOST_PER_NACK: usize = 1088;
/// Most RTCP packets of one compound the engine looks at; the rest is consumed.
const MAX_RTCP_PACKETS: usize = 16;

/// The forwarding logic of one worker over its [`Index`], with batch statistics.
pub struct Forwarder<C = contract::srtp::Context> {
    index: Index<C>,
    stats: CounterSnapshot,
    now: Option<Instant>,
    state: StreamState,
    diag: DiagState,
    gate: SlowGate,
    /// ICE checks answered here from the sessions' credentials (docs/ICE.md).
    ice: IceResponder,
    /// The sender SSRC of the feedback this worker sends to publishers (see
    /// [`feedback_ssrc`]).
    feedback_ssrc: u32,
    /// Loss recovery (engine/nack.rs).
    nack: NackConfig,
    /// Retransmission caches this worker may still allocate (`nack.cache_streams` minus the
    /// streams that have one and the rings in `cache_pool`).
    cache_left: usize,
    /// Rings allocated at the last rebuild for streams that have not started yet (two per
    /// routed publisher: audio and video), so a stream's first packet takes one instead of
    /// allocating (a ring is large enough for the allocator to map pages: a syscall).
    cache_pool: Vec<StreamCache>,
    /// Some publisher stream has packets to ask for: [`Forwarder::poll`] walks the streams.
    poll_needed: bool,
    /// A cached packet on its way to a resend (the cache and the subscriber's context live in
    /// two sessions of the same index).
    scratch: Box<[u8]>,
    /// Cross-worker feedback (see `hub.rs`) and this worker's index in it.
    hub: Option<Arc<FeedbackHub>>,
    worker: usize,
    /// Rebuild scratch: publishers this worker announced in the hub.
    claimed_scratch: Vec<SessionId>,
    /// Origin of the microsecond clock the bandwidth estimators run on (the first `now`).
    epoch: Option<Instant>,
    /// HMAC-SHA1 tags of the current RTP fan-out, computed together (multi-buffer SHA-1).
    macs: MacBatch,
    /// A fan-out the transmit queue could not take at once, resumed after the worker sent the
    /// queue ([`Forwarder::resume`]); its plain packet waits in `spill_buf`.
    spill: Option<Spill>,
    spill_buf: Box<[u8]>,
    /// The earliest time a report of the relay's own (SR to a subscriber, RR to a
    /// publisher) may be due: [`Forwarder::poll`] walks the sessions only from then on.
    rtcp_due: Option<Instant>,
    /// State of the generator that randomises report intervals (xorshift64).
    rng: u64,
    /// Workers this one handed feedback to since the last [`Forwarder::take_wakes`] (bit
    /// `w % 64` of word `w / 64`; `relay.workers` is at most 1024).
    wake_mask: [u64; 16],
    /// Rebuild scratch: every output (publisher, SSRC filter, subscriber) before and after.
    edges_before: Vec<Edge>,
    edges_after: Vec<Edge>,
    /// Video streams of publishers this worker receives that gained a subscriber at the
    /// last rebuild: a keyframe is asked for at the next [`Forwarder::poll`].
    join_keyframes: Vec<Upstream>,
    /// When the layer budgets are next refreshed from the estimates on the timer path
    /// ([`Forwarder::poll`]).
    budgets_due: Option<Instant>,
    /// When [`Forwarder::probes`] next walks the subscribers: every [`BUDGET_INTERVAL`] to
    /// start clusters, every [`TICK_US`] while one is being sent (engine/probe.rs).
    probe_due: Option<Instant>,
    /// A probe cluster is being sent: the worker should not sleep past `probe_due`.
    probe_sending: bool,
    /// When all estimated subscribers are next walked for probing (clusters start there).
    probe_walk_due: Option<Instant>,
    /// When publishers are next sent transport-cc feedback or REMB (`None`: no publisher
    /// here carries the transport-wide or the abs-send-time extension yet).
    uplink_due: Option<Instant>,
}

/// One output as seen across a rebuild: publisher, SSRC filter (`None`: any), subscriber,
/// the route's keyframe bits.
type Edge = (SessionId, Option<u32>, SessionId, u8);

/// Most transport-cc messages one publisher is sent per feedback turn.
const UPLINK_MESSAGES_PER_TURN: usize = 4;

/// How often [`Forwarder::poll`] refreshes the layer budgets from the estimates (feedback
/// refreshes its subscriber's at once).
const BUDGET_INTERVAL: Duration = Duration::from_millis(100);

/// Subscriber `s`'s layer budget from its estimate at `now_us` ([`layer_budget`]); the
/// selectors of its simulcast outputs take it at their next packet.
fn refresh_budget<C>(s: &mut Session<C>, now_us: u64) {
    let Some(bwe) = s.bwe.as_deref() else {
        return;
    };
    let est = bwe.estimate_at(Some(now_us));
    let other = s.other_rate.bps(now_us);
    s.layer_budget = layer_budget(est, other, usize::from(s.layered));
    s.diag.set_downlink(est);
}

/// The RTP clock rate of every video payload format (RFC 3551 §5) and of no audio one.
const VIDEO_CLOCK: u32 = 90_000;

/// Feedback (RFC 4585) the relay forwards to a publisher is protected under the publisher's
/// key as one SRTCP flow per sender SSRC (RFC 3711 §3.4). Subscribers' own sender SSRCs are
/// not unique: a receive-only libwebrtc peer always uses 0xFA17FA17, so two viewers handled
/// by two workers would each start an SRTCP index space for the same (key, SSRC), reusing
/// keystream (§9.1). The relay therefore sends feedback as itself, from one SSRC per worker:
/// each worker owns its flow, and its index survives restarts like any other (`RtcpOut`).
/// RFC 4585 §6.1 receivers match feedback by the *media source* SSRC, which is kept.
pub fn feedback_ssrc(worker: usize) -> u32 {
    FEEDBACK_SSRC_BASE.wrapping_add(worker as u32)
}

/// See [`feedback_ssrc`]; `relay.workers` is at most 1024, so the range stays below 0x51CF_0000.
const FEEDBACK_SSRC_BASE: u32 = 0x51CE_0000;

/// The slow-path gate's rates (datagrams per second, one second of burst); see
/// [`Forwarder::set_slow_gate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowGateRates {
    /// All STUN/DTLS this worker passes to control.
    pub global: u32,
    /// Per source address (IPv4, or IPv6 /64).
    pub per_source: u32,
}

/// The relay side of the slow-path limit: built at the first batch after the rates are set
/// (it needs a time), so the per-datagram path never allocates.
#[derive(Default)]
enum SlowGate {
    #[default]
    Open,
    Pending(SlowGateRates),
    On(Box<RateLimiter>),
}

/// RFC 7983 §7 sends DTLS to control; only well-formed datagrams are worth its time: complete
/// DTLS records (RFC 6347 §4.1). STUN is checked by the ICE responder (`stun`).
#[inline]
fn slow_path_well_formed(kind: Kind, b: &[u8]) -> bool {
    match kind {
        Kind::Dtls => !b.is_empty() && dtls::records(b).all(|r| r.is_ok()),
        _ => false,
    }
}

/// The mean interval of the relay's own reports per stream (SR) and per publisher (RR),
/// randomised ±50 % ([`Forwarder::report_interval`]). RFC 3550 §6.2 scales the interval with
/// the session's RTCP bandwidth; one report per stream and second is what WebRTC endpoints
/// send for video, and stays far below 5 % of any media stream's rate.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The CNAME of the relay's receiver reports (RFC 3550 §6.5.1: one per endpoint; every worker
/// is the same endpoint).
const RELAY_CNAME: &[u8] = b"sluice-relay";

/// A CNAME for a publisher that sent none: `sluice-` and its session id in hex, written into
/// `out`; returns its length.
fn derived_cname(id: SessionId, out: &mut [u8; MAX_CNAME]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out[..7].copy_from_slice(b"sluice-");
    for i in 0..16 {
        out[7 + i] = HEX[((id >> (60 - 4 * i)) & 0xF) as usize];
    }
    23
}

/// Every output of `index` as (publisher, SSRC filter, subscriber, keyframe bits), sorted.
fn edges<C>(index: &Index<C>, out: &mut Vec<Edge>) {
    out.clear();
    for s in &index.sessions {
        let specific = (s.groups.start..s.groups.end).map(|g| (g, true));
        let any = (s.any_group != NONE).then_some((s.any_group, false));
        for (g, filtered) in specific.chain(any) {
            let g = &index.groups[g as usize];
            let filter = filtered.then_some(g.ssrc);
            for o in &index.outputs[g.outputs.start as usize..g.outputs.end as usize] {
                let sub = index.sessions[o.sub as usize].id;
                out.push((s.id, filter, sub, o.rewrite.keyframe));
            }
        }
    }
    out.sort_unstable();
}

/// One packet of a tracked stream, for [`note_stream`].
#[derive(Debug, Clone, Copy)]
struct StreamNote {
    session: SessionId,
    dir: StreamDir,
    ssrc: u32,
    seq: u16,
    /// The index its context started at (the track's first index, if this packet opens it).
    first_index: u64,
    ts: u32,
    rewritten: bool,
}

impl StreamNote {
    /// A packet of a stream sent or received as it is (no timestamp rewrite to persist).
    fn plain(session: SessionId, dir: StreamDir, ssrc: u32, seq: u16, first_index: u64) -> Self {
        StreamNote {
            session,
            dir,
            ssrc,
            seq,
            first_index,
            ts: 0,
            rewritten: false,
        }
    }
}

/// A stream this process has not sent yet (`ti` is `None`) may continue one a previous relay
/// process sent under the same key: its stored record (docs/ENGINE.md).
#[inline]
fn out_seed(
    state: &mut StreamState,
    ti: Option<usize>,
    session: SessionId,
    ssrc: u32,
) -> Option<StreamRecord> {
    match ti {
        None if state.has_seeds() => state.seed(session, StreamDir::Out, ssrc),
        _ => None,
    }
}

/// The SRTP index of packet `seq` on output stream `ssrc`: with a stored record of the stream
/// and no rollover counter yet, the index closest to the stored one (RFC 3711 §3.3.1), whose
/// ROC the context takes; else the sequence number itself.
#[inline]
fn continue_index<C: SrtpOps>(ctx: &mut C, ssrc: u32, seq: u16, seed: Option<StreamRecord>) -> u64 {
    match seed {
        Some(r) if ctx.roc(ssrc).is_none() => {
            let index = estimate_index(r.index, seq);
            let _ = ctx.set_roc(ssrc, (index >> 16) as u32);
            index
        }
        _ => u64::from(seq),
    }
}

/// Account for one packet of a tracked stream (create the track at its first packet, with the
/// index its context started at) and persist the stream's index when [`Track::advance`] asks.
/// Integer compares, plus one seqlock slot write per rollover or `REFRESH` packets.
#[inline]
fn note_stream(
    state: &mut StreamState,
    tracks: &mut Vec<Track>,
    ti: Option<usize>,
    limit: usize,
    n: &StreamNote,
) {
    let t = match ti {
        Some(i) => {
            let t = &mut tracks[i];
            if !t.advance(n.seq) {
                return;
            }
            *t
        }
        None => match open_track(
            state,
            tracks,
            limit,
            (n.session, n.dir, n.ssrc),
            n.first_index,
        ) {
            Some(t) => t,
            None => return,
        },
    };
    state.write(
        t.slot,
        &StreamRecord {
            session: n.session,
            ssrc: n.ssrc,
            dir: n.dir,
            index: t.index,
            ts: n.ts,
            rewritten: n.rewritten,
        },
    );
}

/// Start tracking `(session, dir, ssrc)` at `index` in this worker's slot for it; `None` when
/// the session already tracks `limit` streams in that direction. The list is reserved whole
/// at its first entry (once per session and direction, like its SRTP context).
#[inline]
fn open_track(
    state: &mut StreamState,
    tracks: &mut Vec<Track>,
    limit: usize,
    (session, dir, ssrc): (SessionId, StreamDir, u32),
    index: u64,
) -> Option<Track> {
    if tracks.len() >= limit {
        return None;
    }
    if tracks.capacity() < limit {
        tracks.reserve_exact(limit - tracks.len());
    }
    let t = Track {
        ssrc,
        index,
        slot: state.open(session, dir, ssrc),
    };
    tracks.push(t);
    Some(t)
}

/// Before the first SRTCP packet this process protects for (`session`, `ssrc`): continue after
/// the index a previous relay process stored, plus [`RTCP_SKIP`] (RFC 3711 §9.1: an SRTCP
/// index used twice under one key reuses keystream; the receiver would also refuse it as a
/// replay). One slice search and a context lookup per outbound RTCP packet.
#[inline]
fn resume_srtcp<C: SrtpOps>(
    state: &mut StreamState,
    tracks: &[Track],
    session: SessionId,
    ctx: &mut C,
    ssrc: u32,
) {
    if !state.has_seeds() || Track::find(tracks, ssrc).is_some() || ctx.srtcp_index(ssrc).is_some()
    {
        return;
    }
    if let Some(r) = state.seed(session, StreamDir::RtcpOut, ssrc) {
        // An index past 2^31 − 1 is refused: the flow then needs a new key (§3.4).
        let _ = ctx.resume_rtcp(ssrc, r.index.saturating_add(RTCP_SKIP));
    }
}

/// After an SRTCP packet was protected: persist the flow's index at its first packet and
/// whenever it moved [`RTCP_REFRESH`] past the last write (or went back: a replaced context).
#[inline]
fn note_srtcp<C: SrtpOps>(
    state: &mut StreamState,
    tracks: &mut Vec<Track>,
    limit: usize,
    session: SessionId,
    ctx: &C,
    ssrc: u32,
) {
    let Some(index) = ctx.srtcp_index(ssrc) else {
        return;
    };
    let t = match Track::find(tracks, ssrc) {
        Some(i) => {
            let t = &mut tracks[i];
            let last = t.index;
            if last != Track::RESTART && index >= last && index - last < RTCP_REFRESH {
                return;
            }
            t.index = index;
            *t
        }
        None => {
            let dir = StreamDir::RtcpOut;
            match open_track(state, tracks, limit, (session, dir, ssrc), index) {
                Some(t) => t,
                None => return,
            }
        }
    };
    state.write(
        t.slot,
        &StreamRecord {
            session,
            ssrc,
            dir: StreamDir::RtcpOut,
            index: t.index,
            ts: 0,
            rewritten: false,
        },
    );
}

/// Apply a route's rewrite to a copied, plain RTP packet: SSRC, payload type (through the
/// map), RFC 8285 extension ids (through the map), sequence number and timestamp.
#[inline]
fn rewrite_rtp(pkt: &mut [u8], rw: &Rewrite, seq: u16, ts: u32) -> bool {
    let Ok(mut p) = RtpMut::parse(pkt) else {
        return false;
    };
    if let Some(ssrc) = rw.ssrc {
        p.set_ssrc(ssrc);
    }
    p.set_sequence(seq);
    p.set_timestamp(ts);
    let pt_map = &rw.pt_map[..usize::from(rw.pt_map_len).min(rw.pt_map.len())];
    if !pt_map.is_empty() {
        let pt = p.packet().payload_type();
        if let Some(&(_, to)) = pt_map.iter().find(|(from, _)| *from == pt) {
            // A mapping to an invalid type (>127) is refused by the view: keep the original.
            let _ = p.set_payload_type(to);
        }
    }
    let ext_map = &rw.ext_map[..usize::from(rw.ext_map_len).min(rw.ext_map.len())];
    if !ext_map.is_empty() {
        // No extension block, or a mapping the block's form cannot carry: unchanged.
        let _ = p.remap_extension_ids(ext_map);
    }
    true
}

/// Write the per-subscriber transport-wide sequence number into the packet's element `id`
/// in place; `false` (packet unchanged) when it carries no such element of two bytes.
#[inline]
fn stamp_twcc(pkt: &mut [u8], id: u8, seq: u16) -> bool {
    let Ok(mut p) = RtpMut::parse(pkt) else {
        return false;
    };
    p.extension_value_mut(id)
        .is_some_and(|v| twcc::write_seq(v, seq).is_ok())
}

/// Write the subscriber's MID into the packet's MID element (RFC 8843 §15), growing or
/// shrinking it in place within `slot` less `tag` bytes kept for SRTP. Returns the new
/// length; a packet without a MID element, or one whose block cannot take the value, goes
/// unchanged (the receiver then demuxes by SSRC). On the stack: nothing allocated.
/// Room a resent packet keeps when its MID is rewritten in the scratch buffer: the RTX
/// original sequence number (RFC 4588 §4) and the largest SRTP tag.
const RTX_ROOM: usize = 2 + Profile::MAX_SRTP_OVERHEAD;

#[inline]
fn write_mid(slot: &mut [u8], n: usize, rw: &Rewrite, tag: usize) -> usize {
    let Some((id, value)) = rw.mid() else {
        return n;
    };
    let room = slot.len().saturating_sub(tag);
    match slot.get_mut(..room) {
        Some(buf) => rtp::set_extension_value(buf, n, id, value).unwrap_or(n),
        None => n,
    }
}

/// The layer decision for packet `p` (of input `inp`) of simulcast layer `layer` on output
/// stream `c`, the source layers' activity being `acts`; at a switch the stream's numbering is
/// re-based so the new layer continues it.
#[inline]
fn select_layer(
    c: &mut Continuity,
    now: Instant,
    layer: u8,
    p: &LayerPacket,
    acts: &[LayerActivity],
    inp: &RtpIn,
) -> Decision {
    let Some(s) = c.layers_mut() else {
        return Decision::Skip;
    };
    let d = s.on_packet(now, usize::from(layer), p, acts);
    if let Decision::Forward {
        switch: Some(r), ..
    } = d
    {
        c.rebase((inp.pub_id, inp.ssrc), inp.seq, inp.ts, r.gap, r.ts_advance);
    }
    d
}

/// Where an input packet's Dependency Descriptor element lies ([`dd_of`]): (element id,
/// start, end in the plain packet; an empty range when it has none), once looked up.
type DdAt = Cell<Option<(u8, u16, u16)>>;

/// The publisher's Dependency Descriptor element `dd_id` of the input packet `plain`, found
/// once per fan-out and remembered in `cached` (the outputs of one publisher stream share the
/// publisher's id); empty when the packet has none.
#[inline]
fn dd_of<'a>(plain: &'a [u8], dd_id: u8, cached: &DdAt) -> &'a [u8] {
    if let Some((id, a, b)) = cached.get() {
        if id == dd_id {
            return plain.get(usize::from(a)..usize::from(b)).unwrap_or(&[]);
        }
    }
    let dd = RtpPacket::parse(plain)
        .ok()
        .and_then(|p| p.extension_by_id(dd_id))
        .unwrap_or(&[]);
    // The element's place in `plain` (a sub-slice of it, or the empty slice).
    let start = (dd.as_ptr() as usize).wrapping_sub(plain.as_ptr() as usize);
    let range = match (u16::try_from(start), u16::try_from(start + dd.len())) {
        (Ok(a), Ok(b)) if !dd.is_empty() && usize::from(b) <= plain.len() => (a, b),
        _ => (0, 0),
    };
    cached.set(Some((dd_id, range.0, range.1)));
    dd
}

/// The SVC decision for one packet (`plain`, its RTP payload `payload_len` bytes long, input
/// numbers `seq`/`ts` of source `src`) on output stream `c`, whose route names the
/// publisher's Dependency Descriptor id `dd_id` (its element found once per fan-out,
/// `cached`, [`dd_of`], and its parse shared by the fan-out's outputs, `shared`); `budget`:
/// the subscriber's share of its estimate. A re-basing is applied to the stream's numbering
/// here.
#[allow(clippy::too_many_arguments)]
#[inline]
fn select_svc(
    c: &mut Continuity,
    now: Instant,
    budget: Option<u64>,
    plain: &[u8],
    payload_len: usize,
    (seq, ts): (u16, u32),
    src: Source,
    (dd_id, cached, shared): (u8, &DdAt, &svc::Shared),
) -> Option<SvcDecision> {
    let s = c.svc_mut()?;
    let dd = dd_of(plain, dd_id, cached);
    s.set_estimate(budget);
    let d = s.on_packet(
        now,
        &svc::SvcPacket {
            seq,
            ts,
            bytes: payload_len,
            dd,
            shared: Some(shared),
        },
    );
    if let SvcDecision::Forward {
        rebase: Some(r), ..
    } = d
    {
        c.rebase(src, seq, ts, r.gap, r.ts_advance);
    }
    Some(d)
}

/// What a copy was rewritten with beyond its numbering (its sent-map entry): the VP8 ids of a
/// simulcast layer's output, the transport-wide number `tw` it carries, and an SVC output's
/// marker and active decode targets ([`svc::rewrite`]: a mask where the selector gives one and
/// the subscriber negotiated the descriptor).
fn as_sent(
    vp8: Option<(u16, u8, u8)>,
    tw: Option<u16>,
    out: Option<&svc::SvcOut>,
    rw: &Rewrite,
) -> AsSent {
    let mask = out
        .and_then(|o| o.mask)
        .and_then(|(m, _)| rw.dd_out().map(|_| m));
    AsSent::new(vp8, tw, out.is_some_and(|o| o.marker)).with_svc_mask(mask)
}

/// The frame of the cached packet `pkt` as output stream `c`'s SVC selector parses its
/// Dependency Descriptor (element `dd_id`, the publisher's) now, for rewriting a resend's
/// active decode targets as the first copy had them.
fn resend_frame(c: Option<&mut Continuity>, pkt: &[u8], dd_id: u8) -> Option<dd::Frame> {
    let dd = RtpPacket::parse(pkt).ok()?.extension_by_id(dd_id)?;
    c?.svc_mut()?.frame_of(dd)
}

/// Rewrite a cached packet `pkt` (already renumbered) as its first copy was beyond the
/// numbering: the VP8 descriptor of a simulcast layer's output and an SVC output's marker.
/// Resends only, so the descriptor is parsed here.
fn rewrite_as_sent(pkt: &mut [u8], from: &SentFrom) {
    if from.as_sent.marker() {
        if let Ok(mut p) = RtpMut::parse(pkt) {
            p.set_marker(true);
        }
    }
    if let Some((pid, tl0, key)) = from.as_sent.vp8() {
        if let Ok(range) = RtpPacket::parse(pkt).map(|p| p.payload_range()) {
            if let Some(p) = pkt.get_mut(range) {
                if let Ok(d) = Vp8Descriptor::parse(p) {
                    d.rewrite(p, pid, tl0, key);
                }
            }
        }
    }
}

/// Write the layer-continuous VP8 picture ID, TL0PICIDX and key index into the copied packet
/// `pkt` of input `inp` (RFC 7741 §4.2), at the offsets of the descriptor parsed once for all
/// outputs ([`RtpIn::layer`]); a payload that is no VP8 descriptor stays as it is.
#[inline]
fn rewrite_vp8(pkt: &mut [u8], inp: &RtpIn, pid: u16, tl0: u8, key: u8) {
    let d = inp.layer.as_ref().and_then(|l| l.vp8.as_ref());
    // `pkt` may hold only the start of the payload (the descriptor): the rest is encrypted
    // from the shared packet straight into the slot.
    if let (Some(d), Some(p)) = (d, pkt.get_mut(inp.payload.start..)) {
        d.rewrite(p, pid, tl0, key);
    }
}

/// Copy `head`, the start of a plain RTP packet (its whole header, perhaps the first payload
/// bytes), into `buf` for an output's rewrites, with the P bit cleared: without the payload's
/// tail, the last byte is no padding count, so the header alone must parse as a packet without
/// padding. Returns whether P was set; the caller sets it again once the rewrites are done
/// (none of them depends on the padding, and the whole packet was validated on input).
#[inline]
fn copy_head(buf: &mut [u8], head: &[u8]) -> Option<bool> {
    let dst = buf.get_mut(..head.len())?;
    dst.copy_from_slice(head);
    let first = dst.first_mut()?;
    let padded = *first & rtp::PADDING_BIT != 0;
    *first &= !rtp::PADDING_BIT;
    Some(padded)
}

impl<C: SrtpOps> Forwarder<C> {
    pub fn new(opts: ContextOptions) -> Forwarder<C> {
        Forwarder {
            index: Index::new(opts),
            stats: CounterSnapshot::default(),
            now: None,
            epoch: None,
            state: StreamState::default(),
            diag: DiagState::default(),
            gate: SlowGate::Open,
            ice: IceResponder::default(),
            feedback_ssrc: feedback_ssrc(0),
            nack: NackConfig::OFF,
            cache_left: 0,
            cache_pool: Vec::new(),
            poll_needed: false,
            scratch: vec![0u8; SLOT_BYTES].into_boxed_slice(),
            spill: None,
            spill_buf: vec![0u8; crate::batch::MAX_DATAGRAM].into_boxed_slice(),
            hub: None,
            worker: 0,
            claimed_scratch: Vec::new(),
            macs: MacBatch::new(),
            rtcp_due: None,
            rng: 0x9E37_79B9_7F4A_7C15,
            wake_mask: [0; 16],
            edges_before: Vec::new(),
            edges_after: Vec::new(),
            join_keyframes: Vec::new(),
            budgets_due: None,
            probe_due: None,
            probe_sending: false,
            probe_walk_due: None,
            uplink_due: None,
        }
    }

    /// Authenticate fan-out copies one at a time (`false`: the single-buffer path, the
    /// baseline of the engine bench) or across subscribers with multi-buffer HMAC-SHA1 on the
    /// widest SIMD unit this CPU has (`true`, the default).
    pub fn set_multi_buffer_mac(&mut self, on: bool) {
        self.macs = if on {
            MacBatch::new()
        } else {
            MacBatch::single_buffer()
        };
    }

    /// Loss-recovery settings ([`NackConfig::OFF`] until set). Call before the first packet.
    pub fn set_nack(&mut self, cfg: NackConfig) {
        self.nack = cfg;
        self.cache_left = if cfg.enabled() { cfg.cache_streams } else { 0 };
    }

    /// Hand feedback about publishers another worker receives to that worker, and take
    /// feedback handed to this one (`worker`), through `hub` (docs/ENGINE.md "Feedback
    /// across workers").
    pub fn attach_hub(&mut self, hub: Arc<FeedbackHub>, worker: usize) {
        self.hub = Some(hub);
        self.worker = worker;
    }

    /// Persist every stream's SRTP index into worker `worker`'s stream-state region of `shm`,
    /// and seed new streams from all regions (docs/ENGINE.md "Stream state across restarts").
    /// Call before the first rebuild.
    pub fn attach_stream_state(&mut self, shm: Arc<ShmReader>, worker: usize) {
        self.state.attach(shm, worker);
        self.feedback_ssrc = feedback_ssrc(worker);
        self.rng ^= (worker as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    }

    /// The stream-state bookkeeping (writes, seeds used).
    pub fn stream_state(&self) -> &StreamState {
        &self.state
    }

    /// Replace the routing state with these records (contexts of surviving sessions kept).
    pub fn rebuild(
        &mut self,
        sessions: &mut [SessionRecord],
        routes: &mut [RouteRecord],
    ) -> RebuildReport {
        self.claimed_scratch.clear();
        let claimed = self
            .index
            .sessions
            .iter()
            .filter(|s| s.claimed)
            .map(|s| s.id);
        self.claimed_scratch.extend(claimed);
        self.ice.rebuild(sessions);
        let mut before = core::mem::take(&mut self.edges_before);
        edges(&self.index, &mut before);
        let rep = self.index.rebuild(sessions, routes);
        let mut after = core::mem::take(&mut self.edges_after);
        edges(&self.index, &mut after);
        self.note_joins(&before, &after);
        self.edges_before = before;
        self.edges_after = after;
        let index = &self.index;
        self.state.rebuild(|id| index.has_session(id));
        // Sessions that went away: their caches return to the budget, their hub entries go.
        if let Some(hub) = &self.hub {
            for &id in &self.claimed_scratch {
                if !index.has_session(id) {
                    hub.release(id, self.worker);
                }
            }
        }
        if self.nack.enabled() {
            let used: usize = (index.sessions.iter())
                .map(|s| s.pubs.iter().filter(|p| p.cached()).count())
                .sum();
            // Routed publishers whose streams may still start here (not those another worker
            // is known to receive).
            let hub = self.hub.as_deref();
            let me = self.worker;
            let publishers = (index.sessions.iter())
                .filter(|s| s.groups.start != s.groups.end || s.any_group != NONE)
                .filter(|s| s.pubs.iter().filter(|p| p.cached()).count() < 2)
                .filter(|s| hub.is_none_or(|h| h.owner(s.id).is_none_or(|w| w == me)))
                .count();
            let free = self.nack.cache_streams.saturating_sub(used);
            let target = (2 * publishers).min(free);
            self.cache_pool.truncate(target);
            while self.cache_pool.len() < target {
                self.cache_pool
                    .push(StreamCache::new(self.nack.cache_packets));
            }
            self.cache_left = free - self.cache_pool.len();
        }
        self.diag.rebuild(|id| index.has_session(id));
        rep
    }

    /// Call `wake` once for each worker this one handed feedback to since the last call (the
    /// worker wakes them at the end of its turn: one wake per target and turn, not per packet).
    pub fn take_wakes(&mut self, wake: &mut dyn FnMut(usize)) {
        for (i, m) in self.wake_mask.iter_mut().enumerate() {
            while *m != 0 {
                let b = m.trailing_zeros() as usize;
                *m &= *m - 1;
                wake(i * 64 + b);
            }
        }
    }

    /// Outputs in `after` that `before` did not have: for each video stream this worker
    /// receives from that publisher, a keyframe request at the next poll (docs/ENGINE.md
    /// "Keyframe on join"). Rebuild time only.
    fn note_joins(&mut self, before: &[Edge], after: &[Edge]) {
        self.join_keyframes.clear();
        for e in after {
            if before.binary_search(e).is_ok() {
                continue;
            }
            let (pub_id, filter, _, keyframe) = *e;
            let Some(pi) = self.index.session_index(pub_id) else {
                continue;
            };
            let p = &self.index.sessions[pi as usize];
            for ps in &p.pubs {
                if filter.is_some_and(|f| f != ps.ssrc) {
                    continue;
                }
                let clock = p.diag.rx.iter().find(|r| r.ssrc == ps.ssrc);
                let video = (filter.is_some() && keyframe != 0)
                    || clock.is_some_and(|r| r.clock_rate == VIDEO_CLOCK);
                let up = Upstream {
                    publisher: pi,
                    ssrc: ps.ssrc,
                    seq_off: 0,
                    keyframe,
                };
                if video && !self.join_keyframes.contains(&up) {
                    self.join_keyframes.push(up);
                }
            }
        }
    }

    /// Publish per-session diagnostics into worker `worker`'s session-stats region of `shm`
    /// as relay process `pid` (docs/SHM.md "Session-stats slot"); the region is cleared.
    pub fn attach_diagnostics(&mut self, shm: Arc<ShmReader>, worker: usize, pid: u32) {
        self.diag.attach(shm, worker, pid);
    }

    /// The wall clock read at `at` was `unix_ms` (published times are derived from it).
    pub fn set_wall_clock(&mut self, at: Instant, unix_ms: u64) {
        self.diag.set_wall_clock(at, unix_ms);
    }

    /// Publish the diagnostics of sessions with traffic since the last publish, if
    /// [`super::diag::PUBLISH_INTERVAL`] passed since then. True when it published.
    /// Microseconds since this forwarder's first `now`: the bandwidth estimators' clock.
    fn now_us(&self) -> u64 {
        match (self.now, self.epoch) {
            (Some(n), Some(e)) => n.saturating_duration_since(e).as_micros() as u64,
            _ => 0,
        }
    }

    /// The downlink bandwidth estimate (bit/s) towards `subscriber`, when this worker
    /// stamps its packets and has heard from it (engine/bwe.rs). For the layer selector and
    /// the session statistics.
    pub fn estimate(&self, subscriber: SessionId) -> Option<u64> {
        let now = self.now_us();
        self.index
            .sessions
            .iter()
            .find(|s| s.id == subscriber)
            .and_then(|s| s.bwe.as_deref())
            .map(|b| b.estimate_at(Some(now)))
    }

    /// Transport-cc feedback messages the estimator of `subscriber` took.
    #[cfg(test)]
    pub(super) fn bwe_feedbacks(&self, subscriber: SessionId) -> Option<u64> {
        self.index
            .sessions
            .iter()
            .find(|s| s.id == subscriber)
            .and_then(|s| s.bwe.as_deref())
            .map(|b| b.stats().feedbacks)
    }

    pub fn publish_diagnostics(&mut self, now: Instant) -> bool {
        if !self.diag.due(now) {
            return false;
        }
        let sessions = self.index.sessions.iter_mut().map(|s| (s.id, &mut s.diag));
        self.diag.publish(now, sessions);
        true
    }

    /// The diagnostics bookkeeping (slot writes, publishes).
    pub fn diagnostics(&self) -> &DiagState {
        &self.diag
    }

    /// Rate-limit the STUN and DTLS datagrams this worker passes to control, per source and
    /// in total (excess dropped and counted as [`DropReason::RateLimited`]); `None` passes all
    /// well-formed ones. Takes effect at the next [`Forwarder::set_now`].
    pub fn set_slow_gate(&mut self, rates: Option<SlowGateRates>) {
        self.gate = match rates {
            Some(r) => SlowGate::Pending(r),
            None => SlowGate::Open,
        };
    }

    /// The batch clock (used for rate limits only).
    pub fn set_now(&mut self, now: Instant) {
        self.now = Some(now);
        self.epoch.get_or_insert(now);
        if let SlowGate::Pending(r) = self.gate {
            // Once, outside the per-datagram path.
            self.gate = SlowGate::On(Box::new(RateLimiter::new(r.global, r.per_source, now)));
        }
    }

    pub fn stats(&self) -> &CounterSnapshot {
        &self.stats
    }

    /// The statistics since the last call, resetting them.
    pub fn take_stats(&mut self) -> CounterSnapshot {
        core::mem::take(&mut self.stats)
    }

    pub fn index(&self) -> &Index<C> {
        &self.index
    }

    /// The ICE credential index (checks answered in this worker).
    pub fn ice(&self) -> &IceResponder {
        &self.ice
    }

    /// Handle one received datagram `buf[..len]` from `src`. `buf` is the receive buffer
    /// (decrypted in place). Forwarded packets go to `tx`, slow-path datagrams (STUN, DTLS,
    /// addressed by the peer) to `slow`.
    pub fn handle(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        tx: &mut TxQueue,
        slow: &mut TxQueue,
    ) {
        // A fan-out still pending here was not resumed (a caller that does not send the
        // queue when it fills): what it did not reach is dropped and counted.
        if self.spill.is_some() {
            self.abandon();
        }
        let len = len.min(buf.len());
        self.stats.rx(len);
        let src = normalize(src);
        let kind = classify(&buf[..len]);
        // RFC 7983 §7: STUN and DTLS belong to control, known source or not; malformed ones,
        // STUN that is no authenticated ICE check or that the relay answers itself, and a
        // source (or this worker) over its rate stop here, before the slow-path socket.
        if matches!(kind, Kind::Stun | Kind::Dtls) {
            if kind == Kind::Stun {
                // ICE checks are answered here (malformed STUN is dropped there); only those
                // that change state go on to control.
                let v = self
                    .ice
                    .handle(self.now, src, &buf[..len], tx, &mut self.stats);
                if v == StunVerdict::Done {
                    return;
                }
            } else if !slow_path_well_formed(kind, &buf[..len]) {
                self.stats.drop(DropReason::Malformed);
                return;
            }
            if let (SlowGate::On(g), Some(now)) = (&mut self.gate, self.now) {
                if g.check(now, contract::wire::transport_addr(src).ip()) != Verdict::Allow {
                    self.stats.drop(DropReason::RateLimited);
                    return;
                }
            }
            if slow.push(src, &buf[..len]) {
                self.stats.slow_path_up += 1;
            } else {
                self.stats.drop(DropReason::SlowPathFull);
            }
            return;
        }
        let Some(idx) = self.index.session_of(&src) else {
            self.stats.drop(DropReason::UnknownSource);
            return;
        };
        self.index.sessions[idx as usize].diag.on_in(len, self.now);
        match kind {
            Kind::Rtp => self.on_rtp(idx, buf, len, tx, slow),
            Kind::Rtcp => self.on_rtcp(idx, buf, len, tx),
            _ => self.stats.drop(DropReason::Demux),
        }
    }

    /// Per-session packet-rate cap over one-second windows of batch time.
    #[inline]
    fn rate_limited(&mut self, idx: u32) -> bool {
        let s = &mut self.index.sessions[idx as usize];
        if s.max_pps == 0 {
            return false;
        }
        let Some(now) = self.now else { return false };
        match s.rate_window {
            Some(t) if now.saturating_duration_since(t) < Duration::from_secs(1) => {}
            _ => {
                s.rate_window = Some(now);
                s.rate_count = 0;
            }
        }
        s.rate_count = s.rate_count.saturating_add(1);
        s.rate_count > s.max_pps
    }

    /// Call `each` for every output of publisher `idx`'s stream `ssrc`: the SSRC-specific
    /// routes, then the any-SSRC routes of subscribers no specific route already serves.
    /// False when the stream has no route. The one per-subscriber loop of the engine.
    #[inline]
    /// Call `each` with the outputs of publisher `idx`'s stream `ssrc`, from position `from`
    /// of the output list on, while it returns true. [`Fanout::Stopped`] carries the position
    /// of the output `each` declined, to go on from there.
    fn for_each_output(
        &mut self,
        idx: u32,
        ssrc: u32,
        from: usize,
        mut each: impl FnMut(&mut Self, u32) -> bool,
    ) -> Fanout {
        let Some((specific, any)) = self.index.outputs_of(idx, ssrc) else {
            return Fanout::NoRoute;
        };
        for (at, oi) in specific.clone().chain(any).enumerate().skip(from) {
            if !specific.is_empty() && !specific.contains(&oi) && self.index.shadowed(oi, &specific)
            {
                continue;
            }
            if !each(self, oi) {
                return Fanout::Stopped(at);
            }
        }
        Fanout::Done
    }

    /// Send packet `inp` (plain text `plain`) of publisher `idx` to its outputs from position
    /// `from` on, until the transmit queue is full.
    fn fan_out(
        &mut self,
        idx: u32,
        plain: &[u8],
        inp: &RtpIn,
        from: usize,
        tx: &mut TxQueue,
    ) -> Fanout {
        let r = self.for_each_output(idx, inp.ssrc, from, |this, oi| {
            if tx.is_full() {
                return false;
            }
            this.rtp_to(oi, plain, inp, tx);
            true
        });
        // The tags rtp_to left to the batch, all outputs at once, before anything else
        // touches the queue.
        if !self.macs.is_empty() {
            self.macs.finish(tx.arena_mut());
        }
        r
    }

    /// Go on with a fan-out the transmit queue could not hold (the worker has just sent the
    /// queue). True while some of it is still left for the next call.
    pub fn resume(&mut self, tx: &mut TxQueue) -> bool {
        let Some(Spill { idx, inp, next }) = self.spill.take() else {
            return false;
        };
        let buf = core::mem::take(&mut self.spill_buf);
        let plain = buf.get(..inp.len).unwrap_or(&[]);
        let r = self.fan_out(idx, plain, &inp, next, tx);
        self.spill_buf = buf;
        if let Fanout::Stopped(next) = r {
            self.spill = Some(Spill { idx, inp, next });
        }
        self.spill.is_some()
    }

    /// Give up a pending fan-out (its queue could not be sent): every output it did not reach
    /// counts as a `tx_queue_full` drop.
    pub fn abandon(&mut self) {
        if let Some(Spill { idx, inp, next }) = self.spill.take() {
            self.abandon_from(idx, inp.ssrc, next);
        }
    }

    fn abandon_from(&mut self, idx: u32, ssrc: u32, next: usize) {
        self.for_each_output(idx, ssrc, next, |this, _| {
            this.stats.drop(DropReason::TxQueueFull);
            true
        });
    }

    fn on_rtp(
        &mut self,
        idx: u32,
        buf: &mut [u8],
        len: usize,
        tx: &mut TxQueue,
        slow: &mut TxQueue,
    ) {
        let Some(mut inp) = self.accept_rtp(idx, buf, len) else {
            return;
        };
        let plain = &buf[..inp.len];
        self.note_layer(idx, plain, &mut inp);
        match self.fan_out(idx, plain, &inp, 0, tx) {
            Fanout::Done => {}
            Fanout::NoRoute => {
                self.stats.drop(DropReason::NoRoute);
                let header = &plain[..inp.payload.start.min(plain.len())];
                self.report_stream(idx, header, &inp, slow);
            }
            Fanout::Stopped(next) => {
                // More outputs than the queue holds: the rest go out after the worker sent
                // it (resume). One copy per queue's worth of outputs, into a buffer made at
                // start.
                if let Some(dst) = self.spill_buf.get_mut(..plain.len()) {
                    dst.copy_from_slice(plain);
                    self.spill = Some(Spill { idx, inp, next });
                } else {
                    self.abandon_from(idx, inp.ssrc, next);
                }
            }
        }
    }

    /// When simulcast layer routes carry publisher `idx`'s stream `inp.ssrc`: what every
    /// output's layer selector reads of the packet (`plain`), its VP8 descriptor parsed once,
    /// into `inp.layer`, and the packet noted in the stream's layer activity, once for all
    /// outputs (layers.rs).
    #[inline]
    fn note_layer(&mut self, idx: u32, plain: &[u8], inp: &mut RtpIn) {
        let (Some(a), Some(now)) = (self.index.activity_of(idx, inp.ssrc), self.now) else {
            return;
        };
        let payload = plain.get(inp.payload.clone()).unwrap_or(&[]);
        let vp8 = Vp8Descriptor::parse(payload).ok();
        let p = LayerPacket {
            seq: inp.seq,
            ts: inp.ts,
            marker: inp.marker,
            bytes: payload.len(),
            vp8,
            keyframe: vp8.is_some_and(|d| d.keyframe),
            sr: inp.sr,
        };
        // Padding carries no media: it neither starts nor keeps a layer active.
        if p.bytes > 0 {
            if let Some(act) = self.index.activity.get_mut(a as usize) {
                act.note(now, p.bytes, p.sr);
            }
        }
        inp.layer = Some(p);
    }

    /// Tell control about publisher `idx`'s unrouted stream `inp.ssrc` (a stream-up message
    /// with the plain RTP `header`, contract::slowpath), so that it can learn a simulcast
    /// layer's SSRC from the RID extension (docs/ENGINE.md "Simulcast"). Only packets with a
    /// header extension, from a session that may publish, and within the session's
    /// [`STREAM_REPORTS`](super::index::STREAM_REPORTS) budget; the rest stay counted as `no_route` only.
    fn report_stream(&mut self, idx: u32, header: &[u8], inp: &RtpIn, slow: &mut TxQueue) {
        let Some(now) = self.now else { return };
        let s = &mut self.index.sessions[idx as usize];
        let has_extension = header.first().is_some_and(|b| b & 0x10 != 0);
        if inp.repaired || !has_extension || !s.role.can_publish() {
            return;
        }
        if !s.stream_report_due(inp.ssrc, now) {
            return;
        }
        if slow.push(s.peer, header) {
            self.stats.slow_path_up += 1;
        } else {
            self.stats.drop(DropReason::SlowPathFull);
        }
    }

    /// Rate check, unprotect (in place) and account for one RTP packet of publisher `idx`;
    /// `None` when it was dropped (and counted).
    fn accept_rtp(&mut self, idx: u32, buf: &mut [u8], len: usize) -> Option<RtpIn> {
        if self.rate_limited(idx) {
            self.stats.drop(DropReason::RateLimited);
            return None;
        }
        let opts = self.index.opts;
        let now_us = self.now_us();
        let publisher = &mut self.index.sessions[idx as usize];
        // The SSRC and sequence number are in the clear (RFC 3711 §3.1). A stream this process
        // has not seen yet may continue one a previous relay process handled: start its
        // context at the index closest to the stored one (RFC 3711 §3.3.1, Appendix A), so
        // it authenticates past any rollover.
        let in_ssrc = rtp::header_ssrc(&buf[..len.min(buf.len())]).unwrap_or(0);
        let ti = Track::find(&publisher.rx_track, in_ssrc);
        let publisher_id = publisher.id;
        let Some(rx) = publisher.rx_ctx(opts) else {
            self.stats.drop(DropReason::Crypto);
            return None;
        };
        if ti.is_none() && len >= 12 && self.state.has_seeds() && rx.roc(in_ssrc).is_none() {
            if let Some(r) = self.state.seed(publisher_id, StreamDir::In, in_ssrc) {
                // Continue after the stored index: each packet's index is estimated from it
                // (RFC 3711 Appendix A), not from what this first, not yet authenticated,
                // packet claims; replays of anything up to it are refused.
                let _ = rx.resume_rtp(in_ssrc, r.index);
            }
        }
        // RFC 3711 §3.3: replay check, authenticate, decrypt, then record.
        let n = match rx.unprotect_rtp(buf, len) {
            Ok(n) => n,
            Err(e) => {
                let reason = rx_drop_reason(e);
                publisher.diag.on_rx_drop(reason);
                self.stats.drop(reason);
                return None;
            }
        };
        // The accepted packet's ROC (it is the stream's highest when it is the first one here).
        let first_roc = u64::from(rx.roc(in_ssrc).unwrap_or(0));
        if !publisher.role.can_publish() {
            self.stats.drop(DropReason::NotPublisher);
            return None;
        }
        let Ok(p) = RtpPacket::parse(&buf[..n]) else {
            self.stats.drop(DropReason::Malformed);
            return None;
        };
        let (in_seq, in_pt) = (p.sequence(), p.payload_type());
        // Its transport-wide number (RTX and padding probes included: the sender's estimator
        // counts them) for the feedback the relay sends the publisher (twcc_rx.rs).
        if let Some(id) = session_flags::twcc_id(publisher.flags) {
            if let Some(tw) = p.extension_by_id(id).and_then(|v| twcc::read_seq(v).ok()) {
                let u = (publisher.uplink).get_or_insert_with(|| Box::new(UplinkTwcc::new()));
                u.on_packet(tw, in_ssrc, now_us);
                if let (None, Some(now)) = (self.uplink_due, self.now) {
                    self.uplink_due = Some(now + Duration::from_micros(FEEDBACK_INTERVAL_US));
                }
            }
        } else if let Some(id) = session_flags::abs_send_time_id(publisher.flags) {
            // A publisher that takes REMB: its send time for the receive-side estimate
            // (remb_rx.rs), RTX included (it shares the path and the sender's clock).
            let ast = p.extension_by_id(id).map(twcc::read_abs_send_time);
            if let Some(Ok(ast)) = ast {
                let r = (publisher.remb)
                    .get_or_insert_with(|| Box::new(UplinkRemb::new(BweConfig::default())));
                r.on_packet(ast, in_ssrc, in_seq, len, now_us);
                if let (None, Some(now)) = (self.uplink_due, self.now) {
                    self.uplink_due = Some(now + Duration::from_micros(FEEDBACK_INTERVAL_US));
                }
            }
        }
        // The SRTP stream as received (an RTX stream has its own index, RFC 3711 §3.3.1).
        let first_index = (first_roc << 16) | u64::from(in_seq);
        let note = StreamNote::plain(publisher.id, StreamDir::In, in_ssrc, in_seq, first_index);
        let tracks = &mut publisher.rx_track;
        note_stream(&mut self.state, tracks, ti, opts.max_streams, &note);
        let mut n = n;
        let mut repaired = false;
        if let Some(x) = publisher.rtx_in.iter().find(|x| x.rtx_ssrc == in_ssrc) {
            // RFC 4588 §4: the publisher's retransmission of a packet of stream `x.ssrc`,
            // restored to that packet (its sequence number from the first two payload bytes,
            // the stream's SSRC and payload type; `apt` binds them in the publisher's SDP, the
            // relay takes the type of the stream's last packet).
            let orig_pt = (publisher.pubs.iter())
                .find(|s| s.ssrc == x.ssrc)
                .and_then(PubStream::payload_type);
            if in_pt != x.rtx_pt {
                // On the RTX SSRC but not the RTX payload type: nothing RFC 4588 describes.
                self.stats.drop(DropReason::Malformed);
                return None;
            }
            let Some(orig_pt) = orig_pt else {
                self.stats.count(Feedback::RtxDropped, 1);
                return None;
            };
            match rtx::decapsulate_in_place(buf, n, orig_pt, x.ssrc) {
                Ok(rtx::Unwrapped::Original { len, .. }) => {
                    n = len;
                    repaired = true;
                    self.stats.count(Feedback::RtxUnwrapped, 1);
                }
                Ok(rtx::Unwrapped::Padding) => {
                    self.stats.count(Feedback::RtxDropped, 1);
                    return None;
                }
                Err(_) => {
                    self.stats.drop(DropReason::Malformed);
                    return None;
                }
            }
        }
        let Ok(p) = RtpPacket::parse(&buf[..n]) else {
            self.stats.drop(DropReason::Malformed);
            return None;
        };
        let mut inp = RtpIn {
            pub_id: publisher.id,
            pub_idx: idx,
            ssrc: p.ssrc(),
            seq: p.sequence(),
            ts: p.timestamp(),
            marker: p.marker(),
            payload: p.payload_range(),
            pt: p.payload_type(),
            len: n,
            payload_len: p.payload().len(),
            cached: None,
            repaired,
            sr: None,
            layer: None,
            dd: Cell::new(None),
            svc: svc::Shared::default(),
        };
        publisher.note_ssrc(inp.ssrc);
        if !publisher.claimed {
            // Once per publisher and process: feedback about it arriving on other workers
            // comes here (hub.rs).
            publisher.claimed = true;
            if let Some(h) = &self.hub {
                h.claim(inp.pub_id, self.worker);
            }
        }
        if let Some(now) = self.now {
            let pubs = &mut publisher.pubs;
            let mut budget = CacheBudget {
                cfg: &self.nack,
                left: &mut self.cache_left,
                pool: &mut self.cache_pool,
                stats: &mut self.stats,
                poll_needed: &mut self.poll_needed,
            };
            inp.cached = note_pub(pubs, opts.max_streams, &mut budget, &inp, now, &buf[..n]);
        }
        let now = self.now;
        let d = &mut publisher.diag;
        if let (None, Some(t)) = (d.next_rr, now) {
            // The first packet from this publisher here: its first receiver report at the
            // next turn that is one interval on.
            let due = t + REPORT_INTERVAL;
            d.next_rr = Some(due);
            self.rtcp_due = Some(self.rtcp_due.map_or(due, |x| x.min(due)));
        }
        if repaired {
            // A late copy: counted in the stream's sequence bookkeeping (the loss it
            // repairs), not as a jitter sample (RFC 3550 A.8 measures the first copy).
            d.on_rtp_repaired(inp.ssrc, inp.seq, n, now);
        } else {
            inp.sr = d
                .on_rtp_in(inp.ssrc, inp.seq, inp.ts, n, now, opts.max_streams)
                .map(|sr| (sr.ntp, sr.rtp));
        }
        Some(inp)
    }

    /// Forward the plain RTP packet `plain` (described by `inp`) to output `oi`: number it,
    /// rewrite it, protect it under the subscriber's key and queue it.
    #[inline]
    fn rtp_to(&mut self, oi: u32, plain: &[u8], inp: &RtpIn, tx: &mut TxQueue) {
        let limit = self.index.owned_limit();
        let now_us = self.now_us();
        let OutputMut {
            out: o,
            sub,
            stream,
            activity,
            opts,
        } = self.index.output_mut(oi);
        let out_ssrc = o.rewrite.ssrc.unwrap_or(inp.ssrc);
        let mut stream = stream;
        // A simulcast layer: sent only while it is the subscriber's current layer.
        let mut vp8 = None;
        let mut layer = None;
        // An SVC stream: frames of the subscriber's decode target only (svc.rs).
        let mut svc_out = None;
        let mut want_key = false;
        // This packet is the key frame of a simulcast layer, or of an SVC decode target,
        // switched to: older packets are not resent.
        let mut new_layer = false;
        let svc = match (o.rewrite.dd_id, stream.as_deref_mut(), self.now) {
            (1.., Some(c), Some(now)) => {
                let (n, src) = ((inp.seq, inp.ts), (inp.pub_id, inp.ssrc));
                let (budget, len) = (sub.layer_budget, inp.payload_len);
                let dd = (o.rewrite.dd_id, &inp.dd, &inp.svc);
                select_svc(c, now, budget, plain, len, n, src, dd)
            }
            _ => None,
        };
        if let Some(d) = svc {
            match d {
                SvcDecision::Forward {
                    out,
                    switched,
                    restart,
                    keyframe,
                    decided,
                    ..
                } => {
                    self.stats.count(Feedback::LayerSwitch, u64::from(switched));
                    (svc_out, want_key, new_layer) = (Some(out), keyframe, restart);
                    // Only a frame's first packet can change what the statistics show (the
                    // diagnostics keep the last ones given).
                    if decided {
                        layer = stream.as_deref().and_then(|c| c.svc()).map(|s| s.stats());
                    }
                }
                SvcDecision::Drop { reason, keyframe } => {
                    self.stats.count(svc::counter(reason), 1);
                    if reason == svc::SvcDrop::Shed {
                        SentStream::shed(&mut sub.sent, out_ssrc);
                    }
                    if keyframe {
                        self.layer_keyframe(inp.pub_idx, inp.ssrc, tx);
                    }
                    return;
                }
            }
        } else if let Some(l) = o.rewrite.layer {
            let decision = match (stream.as_deref_mut(), self.now, &inp.layer) {
                (Some(c), Some(now), Some(p)) => {
                    if let Some(s) = c.layers_mut() {
                        s.set_estimate(sub.layer_budget);
                    }
                    select_layer(c, now, l.index, p, activity, inp)
                }
                _ => Decision::Skip,
            };
            match decision {
                Decision::Forward { switch, vp8: v } => {
                    if switch.is_some_and(|r| r.new_layer) {
                        self.stats.count(Feedback::LayerSwitch, 1);
                        new_layer = true;
                    }
                    vp8 = v;
                    layer = stream
                        .as_deref()
                        .and_then(|c| c.layers())
                        .map(|s| s.stats());
                }
                Decision::SkipRequestKeyframe => {
                    self.stats.count(Feedback::LayerSkipped, 1);
                    self.layer_keyframe(inp.pub_idx, inp.ssrc, tx);
                    return;
                }
                Decision::Skip | Decision::Late => {
                    self.stats.count(Feedback::LayerSkipped, 1);
                    return;
                }
                Decision::Shed => {
                    self.stats.count(Feedback::LayerShed, 1);
                    SentStream::shed(&mut sub.sent, out_ssrc);
                    return;
                }
            }
        }
        let rewritten = stream.is_some();
        let ti = Track::find(&sub.tx_track, out_ssrc);
        // A stream this process has not sent yet may continue one a previous relay process
        // sent under the same key: continue after its stored index (docs/ENGINE.md).
        let seed = out_seed(&mut self.state, ti, sub.id, out_ssrc);
        let window = opts.replay_window;
        let (oseq, ots) = match number_output(stream, &mut sub.owned, limit, window, seed, inp) {
            Ok(n) => n,
            Err(reason) => {
                self.stats.drop(reason);
                return;
            }
        };
        if let (true, Some(_), Some(index)) = (inp.repaired, o.rewrite.rtx, inp.cached) {
            // A repair from the publisher goes to a subscriber that negotiated RTX as RTX
            // (RFC 4588: its receiver expects retransmissions there), exactly like a resend
            // from the cache: the output stream's own numbering first, then the RTX stream's.
            let from = SentFrom {
                publisher: inp.pub_id,
                ssrc: inp.ssrc,
                index,
                out_ts: ots,
                as_sent: as_sent(vp8, None, svc_out.as_ref(), &o.rewrite),
            };
            let (cap, streams) = (self.nack.cache_packets, opts.max_streams);
            note_sent(&mut sub.sent, streams, cap, out_ssrc, oseq, from, false);
            let to = o.sub;
            if !self.resend(to, oseq, from, tx) {
                self.stats.count(Feedback::CacheMiss, 1);
            }
            return;
        }
        let (peer, sub_id) = (sub.peer, sub.id);
        // The transport-wide number this packet gets if it carries the element (bwe.rs).
        let tw_seq = match (&sub.bwe, o.rewrite.twcc_id) {
            (_, 0) => None,
            (Some(b), _) => Some(b.peek_seq()),
            (None, _) => Some(0),
        };
        let Some(ctx) = sub.tx_ctx(opts) else {
            self.stats.drop(DropReason::Crypto);
            return;
        };
        let first_index = continue_index(ctx, out_ssrc, oseq, seed);
        if !room(&mut self.stats, tx) {
            return;
        }
        let rw = &o.rewrite;
        let mut stamped = false;
        // The slot starts where the queued datagrams end; its tag may come from the batch.
        let (at, macs) = (tx.arena().len(), &mut self.macs);
        // Only the header, and a VP8 descriptor to rewrite, is copied into the slot; the rest
        // of the payload is encrypted from `plain` straight into the slot (docs/ENGINE.md).
        // The copied part of the payload is one AES block, not just the descriptor's
        // `vp8_wire::MAX_LEN` bytes: the shared rest then starts on a block boundary of the
        // keystream, which both transforms encrypt in bulk (a 6-byte prefix cost the GCM seal
        // about 200 instructions per output in partial-block handling).
        const PREFIX: usize = 16;
        const _: () = assert!(PREFIX >= vp8_wire::MAX_LEN);
        let descriptor = vp8.map_or(0, |_| inp.payload.len().min(PREFIX));
        let split = inp.payload.start + descriptor;
        let pushed = emit(&mut self.stats, tx, peer, |slot| {
            let (head, rest) = plain.split_at_checked(split).ok_or(DropReason::Malformed)?;
            // The slot less the tail's room: a header that grows must leave room for it.
            let room = slot.len().checked_sub(rest.len());
            let buf = room.and_then(|r| slot.get_mut(..r));
            let buf = buf.ok_or(DropReason::Malformed)?;
            let padded = copy_head(buf, head).ok_or(DropReason::Malformed)?;
            let dst = &mut buf[..head.len()];
            if !rewrite_rtp(dst, rw, oseq, ots) {
                return Err(DropReason::Malformed);
            }
            if let Some(seq) = tw_seq {
                stamped = stamp_twcc(dst, rw.twcc_id, seq);
            }
            if let Some((pid, tl0, key)) = vp8 {
                rewrite_vp8(dst, inp, pid, tl0, key);
            }
            let n = head.len();
            let n = match &svc_out {
                Some(out) => svc::rewrite(buf, n, rw.dd_out(), out, Profile::MAX_SRTP_OVERHEAD),
                None => n,
            };
            let n = write_mid(buf, n, rw, Profile::MAX_SRTP_OVERHEAD);
            if padded {
                buf[0] |= rtp::PADDING_BIT;
            }
            ctx.protect_rtp_from(slot, n, rest, at, macs)
                .map_err(tx_drop_reason)
        });
        if pushed && stamped {
            let sent = tx.metas().last().map_or(0, |m| m.len as usize);
            let bwe = sub
                .bwe
                .get_or_insert_with(|| Box::new(Bwe::new(BweConfig::default())));
            bwe.on_send(now_us, sent);
        }
        if pushed && o.rewrite.layer.is_none() && sub.bwe.is_some() {
            // What the layer selectors cannot scale (bwe::layer_budget).
            let sent = tx.metas().last().map_or(0, |m| m.len as usize);
            sub.other_rate.add(now_us, sent);
        }
        if pushed {
            if let Some(index) = inp.cached {
                let from = SentFrom {
                    publisher: inp.pub_id,
                    ssrc: inp.ssrc,
                    index,
                    out_ts: ots,
                    as_sent: as_sent(
                        vp8,
                        tw_seq.filter(|_| stamped),
                        svc_out.as_ref(),
                        &o.rewrite,
                    ),
                };
                let cap = self.nack.cache_packets;
                let (streams, switched) = (opts.max_streams, new_layer);
                note_sent(&mut sub.sent, streams, cap, out_ssrc, oseq, from, switched);
            }
            let sent = tx.metas().last().map_or(0, |m| m.len as usize);
            sub.diag.on_out(sent, self.now);
            let out = RtpOut {
                ssrc: out_ssrc,
                len: sent,
                payload: inp.payload_len,
                src: (inp.pub_id, inp.ssrc),
                ts_off: ots.wrapping_sub(inp.ts),
                layer,
            };
            if sub.diag.on_rtp_out(&out, self.now, opts.max_streams) {
                // A new output stream: its first sender report at the next turn.
                if let Some(now) = self.now {
                    self.rtcp_due = Some(self.rtcp_due.map_or(now, |d| d.min(now)));
                }
            }
            let note = StreamNote {
                session: sub_id,
                dir: StreamDir::Out,
                ssrc: out_ssrc,
                seq: oseq,
                first_index,
                ts: if rewritten { ots } else { 0 },
                rewritten,
            };
            let tracks = &mut sub.tx_track;
            note_stream(&mut self.state, tracks, ti, opts.max_streams, &note);
        }
        if want_key {
            self.layer_keyframe(inp.pub_idx, inp.ssrc, tx);
        }
    }

    fn on_rtcp(&mut self, idx: u32, buf: &mut [u8], len: usize, tx: &mut TxQueue) {
        if self.rate_limited(idx) {
            self.stats.drop(DropReason::RateLimited);
            return;
        }
        let opts = self.index.opts;
        let session = &mut self.index.sessions[idx as usize];
        let Some(rx) = session.rx_ctx(opts) else {
            self.stats.drop(DropReason::Crypto);
            return;
        };
        let n = match rx.unprotect_rtcp(buf, len) {
            Ok(n) => n,
            Err(e) => {
                let reason = rx_drop_reason(e);
                session.diag.on_rx_drop(reason);
                self.stats.drop(reason);
                return;
            }
        };
        let publishes = session.role.can_publish();
        // Validate the whole compound first (RFC 3550 §6.1); remember packet boundaries.
        let plain = &buf[..n];
        let Some((spans, count)) = compound_spans(plain) else {
            self.stats.drop(DropReason::Malformed);
            return;
        };
        // Runs of consecutive SR/SDES/BYE about one SSRC go down together as one compound.
        let mut run: Option<(usize, usize, u32)> = None;
        for s in &spans[..count] {
            if publishes {
                self.note_publisher_rtcp(idx, &plain[s.at..s.end], s);
            }
            if publishes && s.goes_down() {
                match run {
                    Some((ra, _, rs)) if rs == s.ssrc => run = Some((ra, s.end, rs)),
                    Some(r) => {
                        self.send_down(idx, plain, r, tx);
                        run = Some((s.at, s.end, s.ssrc));
                    }
                    None => run = Some((s.at, s.end, s.ssrc)),
                }
                continue;
            }
            if let Some(r) = run.take() {
                self.send_down(idx, plain, r, tx);
            }
            if matches!(s.pt, packet_type::RTPFB | packet_type::PSFB) && s.end - s.at >= 12 {
                self.feedback(idx, &plain[s.at..s.end], tx, true);
            }
            // RR, APP, XR and anything else: consumed here.
        }
        if let Some(r) = run.take() {
            self.send_down(idx, plain, r, tx);
        }
    }

    /// What the relay keeps from a publisher's own RTCP: each SR's NTP↔RTP mapping (the
    /// relay's SRs and RRs derive from it; the SR itself is replaced, `sr_replaced`), and the
    /// CNAME of its SDES (the relay's SRs carry it).
    fn note_publisher_rtcp(&mut self, idx: u32, p: &[u8], s: &Span) {
        let Ok((pkt, _)) = rtcp::RtcpPacket::parse(p) else {
            return;
        };
        let now = self.now;
        let session = &mut self.index.sessions[idx as usize];
        match pkt.typed() {
            Ok(Rtcp::SenderReport(sr)) => {
                let rx = session.diag.rx.iter_mut().find(|r| r.ssrc == sr.ssrc());
                if let (Some(rx), Some(at)) = (rx, now) {
                    rx.last_sr = Some(SrSeen {
                        ntp: sr.ntp_timestamp(),
                        rtp: sr.rtp_timestamp(),
                        at,
                    });
                }
                self.stats.count(Feedback::SrReplaced, 1);
            }
            Ok(Rtcp::Sdes(sdes)) if s.count > 0 => {
                let cname = (sdes.chunks().next())
                    .and_then(|c| c.items().find(|(t, _)| *t == 1).map(|(_, v)| v));
                if let Some(v) = cname.filter(|v| !v.is_empty() && v.len() <= MAX_CNAME) {
                    session.cname[..v.len()].copy_from_slice(v);
                    session.cname_len = v.len() as u8;
                }
            }
            _ => {}
        }
    }

    /// The next report interval: [`REPORT_INTERVAL`] randomised over ±50 % (RFC 3550 §6.2:
    /// reports of many streams must not synchronise), from a xorshift64 generator.
    fn report_interval(&mut self) -> Duration {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        let half = REPORT_INTERVAL.as_micros() as u64 / 2;
        Duration::from_micros(half + x % (2 * half + 1))
    }

    /// The relay's own reports due at `now`: a receiver report to each publisher about the
    /// streams this worker receives from it, a sender report (with SDES CNAME: a compound,
    /// RFC 3550 §6.1) on each output stream this worker sends a subscriber. Each stream or
    /// session is reported once per [`Forwarder::report_interval`]. Walks the sessions only
    /// when the earliest due time passed. Allocates nothing.
    fn reports(&mut self, now: Instant, tx: &mut TxQueue) {
        if self.rtcp_due.is_none_or(|d| now < d) {
            return;
        }
        let mut next: Option<Instant> = None;
        let earliest = |n: &mut Option<Instant>, t: Instant| {
            *n = Some(n.map_or(t, |m| m.min(t)));
        };
        for si in 0..self.index.sessions.len() {
            if let Some(due) = self.index.sessions[si].diag.next_rr {
                let due = if now >= due {
                    self.receiver_report(si as u32, now, tx);
                    let d = now + self.report_interval();
                    self.index.sessions[si].diag.next_rr = Some(d);
                    d
                } else {
                    due
                };
                earliest(&mut next, due);
            }
            for k in 0..self.index.sessions[si].diag.tx.len() {
                let due = match self.index.sessions[si].diag.tx[k].next_sr {
                    Some(due) if now < due => due,
                    Some(_) => {
                        self.sender_report(si as u32, k, now, tx);
                        now + self.report_interval()
                    }
                    // A new stream: its first report soon (a viewer syncs from it), then at
                    // the interval.
                    None => now + self.report_interval() / 4,
                };
                self.index.sessions[si].diag.tx[k].next_sr = Some(due);
                earliest(&mut next, due);
            }
        }
        self.rtcp_due = next;
    }

    /// A receiver report (RFC 3550 §6.4.2) to publisher `pi` about every stream this worker
    /// receives from it (at most 31, the packet's limit), with SDES CNAME, as this worker's
    /// feedback SSRC.
    fn receiver_report(&mut self, pi: u32, now: Instant, tx: &mut TxQueue) {
        let mut blocks = [rtcp::ReportBlock::default(); rtcp_write::MAX_REPORT_BLOCKS];
        let mut n = 0;
        for rx in self.index.sessions[pi as usize].diag.rx.iter_mut() {
            if n == blocks.len() {
                break;
            }
            blocks[n] = rx.report_block(now);
            n += 1;
        }
        if n == 0 {
            return;
        }
        let rtcp_ssrc = self.feedback_ssrc;
        let blocks = &blocks[..n];
        let before = tx.len();
        self.send_rtcp(pi, rtcp_ssrc, tx, |slot| {
            let w = rtcp_write::receiver_report(slot, rtcp_ssrc, blocks)
                .map_err(|_| DropReason::Malformed)?;
            let c = rtcp_write::sdes_cname(&mut slot[w..], rtcp_ssrc, RELAY_CNAME)
                .map_err(|_| DropReason::Malformed)?;
            Ok(w + c)
        });
        if tx.len() > before {
            self.stats.count(Feedback::RrSent, 1);
        }
    }

    /// A sender report on output stream `k` of subscriber `si` (RFC 3550 §6.4.1): the
    /// publisher's NTP↔RTP mapping from its last SR about the source stream, extrapolated to
    /// `now` and carried through the route's timestamp rewriting; the output stream's own
    /// packet and octet counts; then SDES with the publisher's CNAME. Nothing is sent before
    /// the publisher's first SR and the source's clock rate are known (no mapping to give).
    fn sender_report(&mut self, si: u32, k: usize, now: Instant, tx: &mut TxQueue) {
        let t = self.index.sessions[si as usize].diag.tx[k];
        let (pub_id, src_ssrc) = t.src;
        let Some(pi) = self.index.session_index(pub_id) else {
            return;
        };
        let publisher = &self.index.sessions[pi as usize];
        let Some(rx) = publisher.diag.rx.iter().find(|r| r.ssrc == src_ssrc) else {
            return;
        };
        let (Some(sr), rate) = (rx.last_sr, rx.clock_rate) else {
            return;
        };
        if rate == 0 {
            return;
        }
        let (ntp, rtp) = sr.at_time(now, rate);
        let info = rtcp_write::SenderInfo {
            ssrc: t.ssrc,
            ntp,
            rtp_timestamp: rtp.wrapping_add(t.ts_off),
            // RFC 3550 §6.4.1: both wrap.
            packet_count: t.packets as u32,
            octet_count: t.octets as u32,
        };
        let mut cname = [0u8; MAX_CNAME];
        let cl = match usize::from(publisher.cname_len) {
            0 => derived_cname(pub_id, &mut cname),
            l => {
                cname[..l].copy_from_slice(&publisher.cname[..l]);
                l
            }
        };
        let before = tx.len();
        self.send_rtcp(si, t.ssrc, tx, |slot| {
            let w =
                rtcp_write::sender_report(slot, &info, &[]).map_err(|_| DropReason::Malformed)?;
            let c = rtcp_write::sdes_cname(&mut slot[w..], t.ssrc, &cname[..cl])
                .map_err(|_| DropReason::Malformed)?;
            Ok(w + c)
        });
        if tx.len() > before {
            self.stats.count(Feedback::SrSent, 1);
        }
    }

    /// Forward a publisher's SR/SDES/BYE run about `ssrc` to each subscriber of that stream,
    /// SSRC rewritten, the SR's RTP timestamp shifted like the stream's, report blocks removed
    /// (they describe what the publisher receives, RFC 3550 §6.4.1).
    fn send_down(&mut self, idx: u32, plain: &[u8], run: (usize, usize, u32), tx: &mut TxQueue) {
        let (a, b, ssrc) = run;
        let pub_id = self.index.sessions[idx as usize].id;
        let run = &plain[a..b];
        self.for_each_output(idx, ssrc, 0, |this, oi| {
            this.rtcp_down_to(oi, run, ssrc, pub_id, tx);
            true
        });
    }

    /// Send one SR/SDES/BYE run about the publisher's stream `ssrc` to output `oi`.
    fn rtcp_down_to(
        &mut self,
        oi: u32,
        run: &[u8],
        ssrc: u32,
        pub_id: SessionId,
        tx: &mut TxQueue,
    ) {
        let OutputMut {
            out: o,
            sub,
            stream,
            ..
        } = self.index.output_mut(oi);
        let ts_off = stream.and_then(|c| c.offsets_for((pub_id, ssrc)).map(|(_, t)| t));
        let out_ssrc = o.rewrite.ssrc;
        // Reports about a stream another source owns would describe the wrong stream.
        if o.stream == NONE
            && sub
                .owned
                .iter()
                .any(|e| e.ssrc == ssrc && e.owner != pub_id)
        {
            self.stats.drop(DropReason::SsrcCollision);
            return;
        }
        let to = o.sub;
        // The SRTCP flow is the compound's first SSRC (RFC 3711 §3.4), as rewritten.
        let rtcp_ssrc = out_ssrc.unwrap_or(ssrc);
        self.send_rtcp(to, rtcp_ssrc, tx, |slot| {
            let w = copy_down(run, slot).ok_or(DropReason::Malformed)?;
            for p in rtcp::packets_mut(&mut slot[..w]) {
                let mut p = p.map_err(|_| DropReason::Malformed)?;
                if let Some(x) = out_ssrc {
                    // SR/SDES/BYE carry the sender SSRC first (checked when copied).
                    let _ = p.set_sender_ssrc(x);
                }
                if let Some(off) = ts_off {
                    // Not an SR: nothing to shift.
                    let _ = p.map_sr_rtp_timestamp(|t| t.wrapping_add(off));
                }
            }
            Ok(w)
        });
    }

    /// One feedback packet (RFC 4585 §6.1, plain) from subscriber `sub`: handed to the worker
    /// that receives its publisher when that is another one (`arrived_here`: not handed over
    /// already); else NACKs are answered from the cache, PLIs aggregated (one per stream and
    /// `pli_interval`), and the rest forwarded to the publisher. Every packet that goes
    /// nowhere is counted.
    fn feedback(&mut self, sub: u32, p: &[u8], tx: &mut TxQueue, arrived_here: bool) {
        let Ok((pkt, _)) = rtcp::RtcpPacket::parse(p) else {
            self.stats.count(Feedback::Unroutable, 1);
            return;
        };
        let key = pkt.feedback_target();
        let up = self.index.upstream_of(sub, key);
        if arrived_here && self.hand_over(sub, key, up, p) {
            return;
        }
        // Congestion feedback about what this worker sends the subscriber feeds its estimate;
        // transport-cc is hop-by-hop and stops here, REMB also goes on to the publisher.
        // Taken before the upstream is looked at: transport-cc names whatever SSRC the
        // receiver saw last (libwebrtc: the last packet's, often an RTX probe or resend).
        let now_us = self.now_us();
        if let Some(bwe) = self.index.sessions[sub as usize].bwe.as_deref_mut() {
            match pkt.typed() {
                Ok(Rtcp::TransportCc(fb)) => {
                    if let Ok(f) = twcc::Feedback::parse(fb.fci()) {
                        bwe.on_feedback(now_us, &f);
                    }
                    refresh_budget(&mut self.index.sessions[sub as usize], now_us);
                    return;
                }
                Ok(Rtcp::Remb(r)) => bwe.on_remb(now_us, r.bitrate()),
                _ => {}
            }
            refresh_budget(&mut self.index.sessions[sub as usize], now_us);
        }
        let Some(up) = up else {
            self.stats.count(Feedback::Unroutable, 1);
            return;
        };
        match pkt.typed() {
            Ok(Rtcp::Nack(n)) if self.nack.enabled() && self.now.is_some() => {
                self.on_nack(sub, n, up, tx);
                return;
            }
            Ok(Rtcp::Pli(_)) => return self.key_request(up, key, false, tx),
            Ok(Rtcp::Fir(_)) => return self.key_request(up, key, true, tx),
            // A publisher the relay sends its own REMB (remb_rx.rs): the subscriber's caps it
            // rather than contending with it at the publisher.
            Ok(Rtcp::Remb(r)) => {
                let publisher = &mut self.index.sessions[up.publisher as usize];
                if let Some(u) = publisher.remb.as_deref_mut() {
                    u.on_subscriber_remb(now_us, r.bitrate());
                    self.stats.count(Feedback::RembFolded, 1);
                    return;
                }
            }
            _ => {}
        }
        self.send_up(up, key, p, tx);
    }

    /// A subscriber's keyframe request (PLI, or FIR when `fir`) about the stream it sees as
    /// `key`: aggregated (at most one per publisher stream and `pli_interval`), then sent to
    /// the publisher in the kind it negotiated — a PLI as a FIR to a publisher that only takes
    /// FIR, a FIR as a PLI to one that only takes PLI (unknown: as asked). A FIR is written
    /// with this worker's own command sequence number for the publisher, one per request
    /// sent (RFC 5104 §4.3.1.2): subscribers' numbers would collide with each other's.
    fn key_request(&mut self, up: Upstream, key: u32, fir: bool, tx: &mut TxQueue) {
        use contract::shm::keyframe::{FIR, PLI};
        if let Some(now) = self.now {
            let interval = self.nack.pli_interval;
            let pubs = &mut self.index.sessions[up.publisher as usize].pubs;
            if let Some(ps) = pubs.iter_mut().find(|s| s.ssrc == up.ssrc) {
                if !ps.key_request(now, interval) {
                    self.stats.count(Feedback::PliAggregated, 1);
                    return;
                }
            }
        }
        let send_fir = match (fir, up.keyframe) {
            (false, k) => k == FIR,
            (true, k) => k & FIR != 0 || k & PLI == 0,
        };
        if send_fir != fir {
            self.stats.count(Feedback::KeyframeTranslated, 1);
        }
        let mut b = [0u8; 20];
        let written = if send_fir {
            let publisher = &mut self.index.sessions[up.publisher as usize];
            let seq_nr = publisher.fir_seq;
            publisher.fir_seq = seq_nr.wrapping_add(1);
            rtcp_write::fir(&mut b, 0, &[rtcp::FirEntry { ssrc: key, seq_nr }])
        } else {
            rtcp_write::pli(&mut b, 0, key)
        };
        match written {
            Ok(n) => self.send_up(up, key, &b[..n], tx),
            Err(_) => self.stats.count(Feedback::Unroutable, 1),
        }
    }

    /// Hand `p` to the worker that receives the publisher it is about, if that is not this
    /// one; true when it left (or was dropped trying, counted). A stream this worker cannot
    /// place (`up` = `None`: for example an any-SSRC route whose publisher sends elsewhere) goes
    /// to the receiving workers of every publisher that may send it.
    fn hand_over(&mut self, sub: u32, key: u32, up: Option<Upstream>, p: &[u8]) -> bool {
        let Some(hub) = self.hub.as_deref() else {
            return false;
        };
        let sessions = &self.index.sessions;
        let sub_id = sessions[sub as usize].id;
        let stats = &mut self.stats;
        let mask = &mut self.wake_mask;
        let mut hand = |w: usize| match hub.hand(w, sub_id, p) {
            Ok(()) => {
                stats.count(Feedback::HandedOver, 1);
                if let Some(m) = mask.get_mut(w / 64) {
                    *m |= 1 << (w % 64);
                }
            }
            Err(HandError::Full) => stats.count(Feedback::HandOverFull, 1),
            // Longer than an inbox entry, or no such worker: it can go nowhere.
            Err(HandError::TooBig | HandError::NoWorker) => stats.count(Feedback::Unroutable, 1),
        };
        if let Some(u) = up {
            return match hub.owner(sessions[u.publisher as usize].id) {
                Some(w) if w != self.worker => {
                    hand(w);
                    true
                }
                _ => false,
            };
        }
        let mut seen = 0u64;
        let mut handed = false;
        for pi in self.index.feed_publishers(sub, key) {
            let Some(w) = hub.owner(sessions[pi as usize].id) else {
                continue;
            };
            let bit = 1u64 << (w % 64);
            if w == self.worker || seen & bit != 0 {
                continue;
            }
            seen |= bit;
            hand(w);
            handed = true;
        }
        handed
    }

    /// A generic NACK (RFC 4585 §6.2.1) from subscriber `sub` about the stream `up` names:
    /// each lost packet this subscriber was sent is resent from the cache exactly as first
    /// sent (at most once per round trip); the ones the cache does not hold are asked of the
    /// publisher, once however many subscribers miss them ([`Forwarder::poll`] sends it).
    fn on_nack(&mut self, sub: u32, n: rtcp::Nack<'_>, up: Upstream, tx: &mut TxQueue) {
        let Some(now) = self.now else { return };
        let key = n.0.media_ssrc();
        let rtt = self.nack.rtt;
        // A NACK is small and a resend is a whole packet: each subscriber may pull at most
        // one cache's worth of packets per second (RFC 4585 §3.4 leaves the limit to the
        // sender), and one NACK packet names at most MAX_LOST_PER_NACK of them.
        let budget = u32::try_from(self.nack.cache_packets).unwrap_or(u32::MAX);
        for (k, out_seq) in n.lost().enumerate() {
            self.stats.count(Feedback::NackReceived, 1);
            let s = &mut self.index.sessions[sub as usize];
            if k >= MAX_LOST_PER_NACK || !s.resend_budget(now, budget) {
                self.stats.count(Feedback::ResendSuppressed, 1);
                continue;
            }
            let sent = &mut s.sent;
            let r = match SentStream::find(sent, key) {
                // Sent before the output switched layer at a key frame: the decoder starts
                // again from that key frame, and on a link that made the relay switch down
                // a resend only takes room from the new layer (docs/ENGINE.md "Loss
                // recovery").
                Some(i) if sent[i].before_switch(out_seq) => {
                    self.stats.count(Feedback::ResendStale, 1);
                    continue;
                }
                Some(i) => sent[i].map.resend(out_seq, now, rtt),
                None => Err(Resend::Unknown),
            };
            match r {
                Ok(from) => {
                    if !self.resend(sub, out_seq, from, tx) {
                        self.stats.count(Feedback::CacheMiss, 1);
                    }
                }
                Err(Resend::TooSoon) => self.stats.count(Feedback::ResendSuppressed, 1),
                Err(Resend::Unknown) => {
                    // Never sent to this subscriber: lost before the relay (the relay is
                    // probably asking for it already), or older than the sent map.
                    self.stats.count(Feedback::CacheMiss, 1);
                    let seq = out_seq.wrapping_sub(up.seq_off);
                    self.ask_missing(up.publisher, up.ssrc, seq, now);
                }
            }
        }
    }

    /// Ask publisher `publisher` for its packet `seq` of stream `ssrc`, unless already asked
    /// for, no longer worth it (outside the cache window) or held.
    fn ask_missing(&mut self, publisher: u32, ssrc: u32, seq: u16, now: Instant) {
        let pubs = &mut self.index.sessions[publisher as usize].pubs;
        let Some(ps) = pubs.iter_mut().find(|s| s.ssrc == ssrc) else {
            return;
        };
        let Some(index) = ps.index_of(seq) else {
            return;
        };
        if ps.in_window(index)
            && ps.get(index, now, self.nack.max_age).is_none()
            && ps.want(index, now)
        {
            self.poll_needed = true;
        }
    }

    /// Resend the cached packet `from` to subscriber `sub` as `out_seq`, rewritten and
    /// protected exactly as it was first sent. False when the cache no longer holds it.
    fn resend(&mut self, sub: u32, out_seq: u16, from: SentFrom, tx: &mut TxQueue) -> bool {
        let Some(now) = self.now else { return false };
        let Some(pi) = self.index.session_index(from.publisher) else {
            return false;
        };
        let pubs = &self.index.sessions[pi as usize].pubs;
        let Some(ps) = pubs.iter().find(|s| s.ssrc == from.ssrc) else {
            return false;
        };
        let Some(b) = ps.get(from.index, now, self.nack.max_age) else {
            return false;
        };
        let mut len = b.len();
        self.scratch[..len].copy_from_slice(b);
        let Some(oi) = self.index.output_to(pi, from.ssrc, sub) else {
            // The route went away since: the subscriber no longer gets this stream.
            self.stats.count(Feedback::Unroutable, 1);
            return true;
        };
        let rw = self.index.outputs[oi as usize].rewrite;
        // An SVC output's first copy got the subscriber's active decode targets: the resend
        // gets them again, or is not sent (a plain resend has the first copy's SRTP index, so
        // it must carry the same plaintext).
        let mask = match (from.as_sent.svc_mask(), rw.dd_out()) {
            (Some(m), Some(id)) => {
                let stream = self.index.outputs[oi as usize].stream;
                let c = self.index.streams.get_mut(stream as usize);
                match resend_frame(c, &self.scratch[..len], rw.dd_id) {
                    Some(f) => Some((m, f, id)),
                    None => {
                        self.stats.count(Feedback::ResendFailed, 1);
                        return true;
                    }
                }
            }
            _ => None,
        };
        let opts = self.index.opts;
        let now_us = self.now_us();
        let s = &mut self.index.sessions[sub as usize];
        let (peer, sub_id) = (s.peer, s.id);
        // The RTX copy is a new packet on the transport: it takes the subscriber's next
        // transport-wide number (bwe.rs), as libwebrtc numbers retransmissions; left as cached
        // it would carry the publisher's number into the subscriber's feedback.
        let mut tw_stamped = false;
        // RTX (RFC 4588 §4): the original rewritten as first sent, then carried on the
        // subscriber's RTX stream with that stream's own sequence number (and so its own
        // SRTP index and ROC, RFC 3711 §3.3.1).
        let mut rtx = None;
        if let Some(x) = rw.rtx {
            let out_ssrc = rw.ssrc.unwrap_or(from.ssrc);
            let ti = Track::find(&s.tx_track, x.ssrc);
            let seed = out_seed(&mut self.state, ti, sub_id, x.ssrc);
            let Some(k) = SentStream::find(&s.sent, out_ssrc) else {
                return false;
            };
            // A stream a previous relay process sent continues past its stored index.
            let next = s.sent[k]
                .rtx_next
                .unwrap_or_else(|| seed.map_or(1, |r| r.seq().wrapping_add(SKIP)));
            s.sent[k].rtx_next = Some(next.wrapping_add(1));
            if !rewrite_rtp(&mut self.scratch[..len], &rw, out_seq, from.out_ts) {
                self.stats.drop(DropReason::Malformed);
                self.stats.count(Feedback::ResendFailed, 1);
                return true;
            }
            rewrite_as_sent(&mut self.scratch[..len], &from);
            if let Some((m, f, id)) = &mask {
                len = svc::write_mask(&mut self.scratch, len, *id, f.mask_spot(), *m, RTX_ROOM);
            }
            // The viewer's MID, as in the first copy; room kept for the RTX header and tag.
            len = write_mid(&mut self.scratch, len, &rw, RTX_ROOM);
            if let Some(b) = s.bwe.as_deref().filter(|_| rw.twcc_id != 0) {
                tw_stamped = stamp_twcc(&mut self.scratch[..len], rw.twcc_id, b.peek_seq());
            }
            rtx = Some((x, next, ti, seed));
        }
        let Some(ctx) = s.tx_ctx(opts) else {
            self.stats.drop(DropReason::Crypto);
            self.stats.count(Feedback::ResendFailed, 1);
            return true;
        };
        if !room(&mut self.stats, tx) {
            self.stats.count(Feedback::ResendFailed, 1);
            return true;
        }
        let plain = &self.scratch[..len];
        let mut first_index = 0;
        let pushed = match rtx {
            Some((x, seq, _, seed)) => {
                first_index = continue_index(ctx, x.ssrc, seq, seed);
                let h = rtx::RtxHeader {
                    payload_type: x.payload_type,
                    ssrc: x.ssrc,
                    sequence: seq,
                };
                emit(&mut self.stats, tx, peer, |slot| {
                    let n = rtx::encapsulate(plain, h, slot).map_err(|_| DropReason::Malformed)?;
                    ctx.protect_rtp(slot, n).map_err(tx_drop_reason)
                })
            }
            None => emit(&mut self.stats, tx, peer, |slot| {
                let dst = slot.get_mut(..len).ok_or(DropReason::Malformed)?;
                dst.copy_from_slice(plain);
                if !rewrite_rtp(dst, &rw, out_seq, from.out_ts) {
                    return Err(DropReason::Malformed);
                }
                // Same SSRC, sequence number and key: the same SRTP index as the first copy
                // (RFC 3711 §3.3.1), so the same keystream over the same plaintext: the VP8
                // descriptor, marker, transport-wide number and MID are written exactly as in
                // the first copy.
                rewrite_as_sent(dst, &from);
                if let (Some(n), 1..) = (from.as_sent.tw(), rw.twcc_id) {
                    stamp_twcc(dst, rw.twcc_id, n);
                }
                let n = match &mask {
                    Some((m, f, id)) => {
                        let spot = f.mask_spot();
                        svc::write_mask(slot, len, *id, spot, *m, Profile::MAX_SRTP_OVERHEAD)
                    }
                    None => len,
                };
                let n = write_mid(slot, n, &rw, Profile::MAX_SRTP_OVERHEAD);
                ctx.protect_rtp(slot, n).map_err(tx_drop_reason)
            }),
        };
        if pushed && tw_stamped {
            let sent = tx.metas().last().map_or(0, |m| m.len as usize);
            if let Some(b) = s.bwe.as_deref_mut() {
                b.on_send(now_us, sent);
            }
        }
        let f = match (pushed, rtx) {
            (false, _) => Feedback::ResendFailed,
            (true, None) => Feedback::Retransmitted,
            (true, Some((x, seq, ti, _))) => {
                let note = StreamNote::plain(sub_id, StreamDir::Out, x.ssrc, seq, first_index);
                note_stream(
                    &mut self.state,
                    &mut s.tx_track,
                    ti,
                    opts.max_streams,
                    &note,
                );
                Feedback::RtxSent
            }
        };
        self.stats.count(f, 1);
        true
    }

    /// Timers and hand-overs, once per loop turn at `now`: the feedback other workers handed
    /// to this one, then the NACKs this worker owes its publishers (gaps it saw, packets
    /// subscribers missed), at most one per stream and round trip per packet, bounded
    /// retries. Allocates nothing.
    pub fn poll(&mut self, now: Instant, tx: &mut TxQueue) {
        self.now = Some(now);
        self.epoch.get_or_insert(now);
        if let Some(hub) = self.hub.take() {
            for _ in 0..super::hub::INBOX {
                let Some(h) = hub.take(self.worker) else {
                    break;
                };
                match self.index.session_index(h.sub) {
                    Some(sub) => self.feedback(sub, h.packet(), tx, false),
                    None => self.stats.count(Feedback::Unroutable, 1),
                }
            }
            self.hub = Some(hub);
        }
        for k in 0..self.join_keyframes.len() {
            let up = self.join_keyframes[k];
            let before = tx.len();
            self.key_request(up, up.ssrc, false, tx);
            if tx.len() > before {
                self.stats.count(Feedback::PliOnJoin, 1);
            }
        }
        self.join_keyframes.clear();
        self.reports(now, tx);
        self.refresh_budgets(now);
        self.probes(now, tx);
        self.uplink_feedback(now, tx);
        if !self.poll_needed {
            return;
        }
        self.poll_needed = false;
        let (rtt, retries) = (self.nack.rtt, self.nack.retries);
        let mut lost = [0u16; MAX_PENDING];
        for pi in 0..self.index.sessions.len() {
            for k in 0..self.index.sessions[pi].pubs.len() {
                let ps = &mut self.index.sessions[pi].pubs[k];
                if ps.pending() == 0 {
                    continue;
                }
                let d = ps.poll(now, rtt, retries, &mut lost);
                let ssrc = ps.ssrc;
                if ps.pending() != 0 {
                    self.poll_needed = true;
                }
                self.stats.count(Feedback::UpstreamGiveUp, d.gave_up as u64);
                if d.asked != 0 {
                    self.stats.count(Feedback::NackUpstream, d.asked as u64);
                    self.nack_up(pi as u32, ssrc, &lost[..d.asked], tx);
                }
            }
        }
    }

    /// Every [`FEEDBACK_INTERVAL_US`]: transport-cc feedback (RTPFB FMT 15) to each publisher
    /// whose packets carry the transport-wide sequence extension, about what arrived since
    /// the last message, as this worker's feedback SSRC through the same SRTCP path as its
    /// receiver reports (twcc_rx.rs). Walks the sessions only when due; allocates nothing.
    fn uplink_feedback(&mut self, now: Instant, tx: &mut TxQueue) {
        if self.uplink_due.is_none_or(|d| now < d) {
            return;
        }
        self.uplink_due = Some(now + Duration::from_micros(FEEDBACK_INTERVAL_US));
        let rtcp_ssrc = self.feedback_ssrc;
        let mut buf = core::mem::take(&mut self.scratch);
        let now_us = self.now_us();
        for pi in 0..self.index.sessions.len() {
            self.uplink_remb(pi, now_us, rtcp_ssrc, &mut buf, tx);
            let Some(mut u) = self.index.sessions[pi].uplink.take() else {
                continue;
            };
            // A burst longer than one message takes a few; the rest waits for the next turn.
            for _ in 0..UPLINK_MESSAGES_PER_TURN {
                let Some(n) = u.write(&mut buf, rtcp_ssrc) else {
                    break;
                };
                let msg = &buf[..n];
                let before = tx.len();
                self.send_rtcp(pi as u32, rtcp_ssrc, tx, |slot| {
                    let d = slot.get_mut(..n).ok_or(DropReason::Malformed)?;
                    d.copy_from_slice(msg);
                    Ok(n)
                });
                if tx.len() > before {
                    self.stats.count(Feedback::TwccSent, 1);
                }
            }
            self.index.sessions[pi].uplink = Some(u);
        }
        self.scratch = buf;
    }

    /// At the feedback tick: the receive-side estimate of publisher `pi` if it takes REMB,
    /// and a REMB (PSFB FMT 15) naming its SSRCs when one is due (remb_rx.rs), through the
    /// same SRTCP path as its receiver reports.
    fn uplink_remb(
        &mut self,
        pi: usize,
        now_us: u64,
        rtcp_ssrc: u32,
        buf: &mut [u8],
        tx: &mut TxQueue,
    ) {
        let Some(r) = self.index.sessions[pi].remb.as_mut() else {
            return;
        };
        let Some(bps) = r.tick(now_us) else {
            return;
        };
        let Some(n) = r.write(buf, rtcp_ssrc, bps) else {
            return;
        };
        let msg = &buf[..n];
        let before = tx.len();
        self.send_rtcp(pi as u32, rtcp_ssrc, tx, |slot| {
            let d = slot.get_mut(..n).ok_or(DropReason::Malformed)?;
            d.copy_from_slice(msg);
            Ok(n)
        });
        if tx.len() > before {
            self.stats.count(Feedback::RembSent, 1);
        }
    }

    /// Every [`BUDGET_INTERVAL`]: the layer budget of each subscriber this worker estimates
    /// for, from its estimate at `now` (which moves without feedback too: a REMB ceiling
    /// expires, a silent subscriber's estimate holds). Walks the sessions only when due.
    fn refresh_budgets(&mut self, now: Instant) {
        if self.budgets_due.is_some_and(|d| now < d) {
            return;
        }
        self.budgets_due = Some(now + BUDGET_INTERVAL);
        let now_us = self.now_us();
        for s in self.index.sessions.iter_mut() {
            if s.bwe.is_some() {
                refresh_budget(s, now_us);
            }
        }
        self.probe_needs(now_us);
    }

    /// What each estimated subscriber's best eligible layers need, for its prober
    /// (engine/probe.rs): per simulcast source (its layer-0 route stands for the source),
    /// the rate of the highest layer within the cap that sends, with the selector's margin
    /// for going up, and whether the subscriber is below it; per SVC output, the same of its
    /// best decode target within the caps ([`svc::Svc::probe_need`]). Runs with the budgets.
    fn probe_needs(&mut self, now_us: u64) {
        let Some(now) = self.now else { return };
        for s in self.index.sessions.iter_mut() {
            if let Some(b) = s.bwe.as_deref_mut() {
                b.prober_mut().begin_need();
            }
        }
        for o in &self.index.outputs {
            if o.rewrite.layer.is_none_or(|l| l.index != 0) {
                continue;
            }
            let Some(c) = self.index.streams.get(o.stream as usize) else {
                continue;
            };
            // An SVC output: its best decode target within the caps (svc.rs).
            if let Some((need, below)) = c.svc().and_then(|s| s.probe_need(now)) {
                let sub = &mut self.index.sessions[o.sub as usize];
                if let Some(b) = sub.bwe.as_deref_mut() {
                    b.prober_mut().add_need(need, below);
                }
                continue;
            }
            let Some(sel) = c.layers() else {
                continue;
            };
            let count = sel.count();
            if count == 0 {
                continue;
            }
            let top = (count - 1).min(usize::from(sel.cap()));
            let acts = &self.index.activity;
            let Some(best) = (0..=top).rev().find(|&l| sel.layer_bps(l, acts) > 0) else {
                continue;
            };
            let below = sel.current().is_some_and(|c| usize::from(c) < best) && sel.may_probe(now);
            let need = sel.layer_bps(best, acts).saturating_mul(UP_MARGIN_PCT) / 100;
            let sub = &mut self.index.sessions[o.sub as usize];
            if let Some(b) = sub.bwe.as_deref_mut() {
                b.prober_mut().add_need(need, below);
            }
        }
        for s in self.index.sessions.iter_mut() {
            let other = s.other_rate.bps(now_us);
            let layered = s.layered;
            if let Some(b) = s.bwe.as_deref_mut() {
                b.prober_mut().end_need(other, layered);
            }
        }
    }

    /// The time the worker should wake at the latest for probing: set while a probe cluster
    /// is being paced (every [`TICK_US`]), `None` otherwise (the ordinary poll interval
    /// serves the [`BUDGET_INTERVAL`] checks).
    pub fn probe_deadline(&self) -> Option<Instant> {
        self.probe_due.filter(|_| self.probe_sending)
    }

    /// Bandwidth probing (engine/probe.rs, docs/ENGINE.md "Probing"): each estimated
    /// subscriber's prober decides whether a cluster starts and how many of its packets are
    /// due; they go out as padding-only RTX packets ([`Forwarder::send_probe`]). Walks the
    /// sessions every [`BUDGET_INTERVAL`], or every [`TICK_US`] while a cluster is being
    /// sent. Allocates nothing.
    fn probes(&mut self, now: Instant, tx: &mut TxQueue) {
        if self.probe_due.is_some_and(|d| now < d) {
            return;
        }
        let now_us = self.now_us();
        // Every BUDGET_INTERVAL all estimated subscribers (clusters start, results time out);
        // on the 5 ms ticks between, only those with a cluster being sent.
        let full = self.probe_walk_due.is_none_or(|d| now >= d);
        if full {
            self.probe_walk_due = Some(now + BUDGET_INTERVAL);
        }
        let mut sending = false;
        for si in 0..self.index.sessions.len() {
            match self.index.sessions[si].bwe.as_deref() {
                None => continue,
                Some(b) if !full && !b.prober().sending() => continue,
                Some(_) => {}
            }
            // A subscriber with no RTX stream to carry probes is not probed at all.
            let Some(carrier) = self.probe_carrier(si as u32) else {
                continue;
            };
            let Some(b) = self.index.sessions[si].bwe.as_deref_mut() else {
                continue;
            };
            let due = b.probe_poll(now_us);
            if due > 0 {
                for _ in 0..due {
                    if !self.send_probe(si as u32, carrier, now_us, tx) {
                        if let Some(b) = self.index.sessions[si].bwe.as_deref_mut() {
                            b.probe_abort(now_us);
                        }
                        break;
                    }
                }
            }
            let Some(b) = self.index.sessions[si].bwe.as_deref_mut() else {
                continue;
            };
            sending |= b.prober().sending();
            let c = b.take_probe_counts();
            self.stats.count(Feedback::ProbeCluster, c.clusters);
            self.stats.count(Feedback::ProbePacket, c.packets);
            self.stats.count(Feedback::ProbeBytes, c.bytes);
            self.stats.count(Feedback::ProbeSuccess, c.successes);
        }
        self.probe_sending = sending;
        self.probe_due = if sending {
            Some(now + Duration::from_micros(TICK_US))
        } else {
            self.probe_walk_due
        };
    }

    /// The output whose RTX stream carries subscriber `sub`'s probes: a simulcast route with
    /// an RTX stream and the transport-wide extension, one of whose packets the subscriber
    /// has been sent. `None`: the subscriber has no RTX stream, and is not probed (a
    /// padding packet on the media SSRC would take a number in the media sequence).
    fn probe_carrier(&self, sub: u32) -> Option<u32> {
        let s = &self.index.sessions[sub as usize];
        let feeds = &self.index.feeds[s.feeds.start as usize..s.feeds.end as usize];
        feeds.iter().find_map(|f| {
            let oi = self.index.output_to(f.publisher, f.src_ssrc?, sub)?;
            let rw = &self.index.outputs[oi as usize].rewrite;
            let ok = rw.layer.is_some()
                && rw.rtx.is_some()
                && rw.twcc_id != 0
                && rw
                    .ssrc
                    .is_some_and(|x| SentStream::find(&s.sent, x).is_some());
            ok.then_some(oi)
        })
    }

    /// One probe packet to subscriber `sub` on output `oi`'s RTX stream (RFC 4588): padding
    /// only ([`PADDING`] bytes, RFC 3550 §5.1), the next RTX sequence number, the
    /// subscriber's transport-wide number and MID, protected under its key. libwebrtc counts
    /// such a packet in its transport-cc feedback and drops it after that (an RTX packet with
    /// no original inside). False when it could not be queued.
    fn send_probe(&mut self, sub: u32, oi: u32, now_us: u64, tx: &mut TxQueue) -> bool {
        let rw = self.index.outputs[oi as usize].rewrite;
        let (Some(x), Some(out_ssrc)) = (rw.rtx, rw.ssrc) else {
            return false;
        };
        let opts = self.index.opts;
        let s = &mut self.index.sessions[sub as usize];
        let (peer, sub_id) = (s.peer, s.id);
        let Some(k) = SentStream::find(&s.sent, out_ssrc) else {
            return false;
        };
        let Some(tw) = s.bwe.as_deref().map(|b| b.peek_seq()) else {
            return false;
        };
        let ti = Track::find(&s.tx_track, x.ssrc);
        let seed = out_seed(&mut self.state, ti, sub_id, x.ssrc);
        let seq = s.sent[k]
            .rtx_next
            .unwrap_or_else(|| seed.map_or(1, |r| r.seq().wrapping_add(SKIP)));
        let Some(ctx) = s.tx_ctx(opts) else {
            self.stats.drop(DropReason::Crypto);
            return false;
        };
        if !room(&mut self.stats, tx) {
            return false;
        }
        let first_index = continue_index(ctx, x.ssrc, seq, seed);
        let tw = tw.to_be_bytes();
        let mut elements: [(u8, &[u8]); 2] = [(rw.twcc_id, &tw), (0, &[])];
        let n_el = match rw.mid() {
            Some(m) => {
                elements[1] = m;
                2
            }
            None => 1,
        };
        let p = rtp::PaddingPacket {
            payload_type: x.payload_type,
            sequence: seq,
            // 90 kHz; a padding-only RTX packet is never played out.
            timestamp: (now_us.wrapping_mul(9) / 100) as u32,
            ssrc: x.ssrc,
            padding: PADDING as u8,
            elements: &elements[..n_el],
        };
        let pushed = emit(&mut self.stats, tx, peer, |slot| {
            let n = rtp::write_padding_only(slot, &p).map_err(|_| DropReason::Malformed)?;
            ctx.protect_rtp(slot, n).map_err(tx_drop_reason)
        });
        if !pushed {
            return false;
        }
        s.sent[k].rtx_next = Some(seq.wrapping_add(1));
        let sent = tx.metas().last().map_or(0, |m| m.len as usize);
        if let Some(b) = s.bwe.as_deref_mut() {
            b.on_probe_send(now_us, sent);
        }
        let note = StreamNote::plain(sub_id, StreamDir::Out, x.ssrc, seq, first_index);
        note_stream(
            &mut self.state,
            &mut s.tx_track,
            ti,
            opts.max_streams,
            &note,
        );
        true
    }

    /// Ask publisher `publisher` for a key frame of its stream `ssrc` (a PLI, RFC 4585
    /// §6.3.1) so that a subscriber can switch to that simulcast layer; aggregated with the
    /// subscribers' own PLIs (one per stream and `relay.pli_interval_ms`).
    fn layer_keyframe(&mut self, publisher: u32, ssrc: u32, tx: &mut TxQueue) {
        if let Some(now) = self.now {
            let interval = self.nack.pli_interval;
            let pubs = &mut self.index.sessions[publisher as usize].pubs;
            if let Some(ps) = pubs.iter_mut().find(|s| s.ssrc == ssrc) {
                if !ps.key_request(now, interval) {
                    self.stats.count(Feedback::PliAggregated, 1);
                    return;
                }
            }
        }
        self.stats.count(Feedback::LayerKeyframeRequest, 1);
        let rtcp_ssrc = self.feedback_ssrc;
        self.send_rtcp(publisher, rtcp_ssrc, tx, |slot| {
            rtcp_write::pli(slot, rtcp_ssrc, ssrc).map_err(|_| DropReason::Malformed)
        });
    }

    /// Send publisher `publisher` a generic NACK for `lost` of its stream `ssrc` (RFC 4585
    /// §6.2.1), as this worker (see [`feedback_ssrc`]).
    fn nack_up(&mut self, publisher: u32, ssrc: u32, lost: &[u16], tx: &mut TxQueue) {
        let rtcp_ssrc = self.feedback_ssrc;
        self.send_rtcp(publisher, rtcp_ssrc, tx, |slot| {
            match rtcp_write::nack(slot, rtcp_ssrc, ssrc, lost) {
                Ok((len, _)) => Ok(len),
                Err(_) => Err(DropReason::Malformed),
            }
        });
    }

    /// Forward one feedback packet (RFC 4585 §6.1) from a subscriber to the publisher of the
    /// stream it names, with the media SSRC (and FIR entries, RFC 5104 §4.3.1) mapped back to
    /// the publisher's own SSRC and NACKed sequence numbers to its numbering.
    fn send_up(&mut self, up: Upstream, key: u32, p: &[u8], tx: &mut TxQueue) {
        // Sent as this worker (see `feedback_ssrc`): that SSRC names the SRTCP flow.
        let rtcp_ssrc = self.feedback_ssrc;
        let l = p.len();
        self.send_rtcp(up.publisher, rtcp_ssrc, tx, |slot| {
            let dst = slot.get_mut(..l).ok_or(DropReason::Malformed)?;
            dst.copy_from_slice(p);
            if let Some(Ok(mut m)) = rtcp::packets_mut(dst).next() {
                map_feedback_up(&mut m, rtcp_ssrc, key, &up);
            }
            Ok(l)
        });
    }

    /// Queue one RTCP packet for session `to` on its outbound SRTCP flow `rtcp_ssrc`: `fill`
    /// writes the plain packet into the slot and returns its length; it is then protected,
    /// queued and counted. Before the flow's first packet in this process its index resumes
    /// after a previous process's; after each packet it is persisted when due.
    fn send_rtcp(
        &mut self,
        to: u32,
        rtcp_ssrc: u32,
        tx: &mut TxQueue,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, DropReason>,
    ) {
        let opts = self.index.opts;
        let target = &mut self.index.sessions[to as usize];
        let (peer, target_id) = (target.peer, target.id);
        let Some((ctx, rtcp_track)) = target.tx_rtcp(opts) else {
            self.stats.drop(DropReason::Crypto);
            return;
        };
        if !room(&mut self.stats, tx) {
            return;
        }
        resume_srtcp(&mut self.state, rtcp_track, target_id, ctx, rtcp_ssrc);
        let pushed = emit(&mut self.stats, tx, peer, |slot| {
            let w = fill(slot)?;
            ctx.protect_rtcp(slot, w).map_err(tx_drop_reason)
        });
        if pushed {
            let limit = opts.max_streams;
            note_srtcp(
                &mut self.state,
                rtcp_track,
                limit,
                target_id,
                ctx,
                rtcp_ssrc,
            );
            let sent = tx.metas().last().map_or(0, |m| m.len as usize);
            self.index.sessions[to as usize].diag.on_out(sent, self.now);
        }
    }
}

/// A publisher's RTP packet accepted for forwarding (decrypted in the receive buffer).
/// How far [`Forwarder::for_each_output`] went.
enum Fanout {
    /// The stream has no route.
    NoRoute,
    Done,
    /// Stopped before the output at this position.
    Stopped(usize),
}

/// The rest of a fan-out, for [`Forwarder::resume`].
struct Spill {
    idx: u32,
    inp: RtpIn,
    next: usize,
}

struct RtpIn {
    pub_id: SessionId,
    /// The publisher's session index.
    pub_idx: u32,
    ssrc: u32,
    seq: u16,
    ts: u32,
    marker: bool,
    /// Where the payload lies in the plain packet (padding excluded).
    payload: core::ops::Range<usize>,
    pt: u8,
    /// Plain packet length, and its payload length (padding excluded).
    len: usize,
    payload_len: usize,
    /// The packet's index in its stream's retransmission cache, when it was cached.
    cached: Option<u64>,
    /// Restored from the publisher's RTX stream (a repair, not a first copy).
    repaired: bool,
    /// The publisher's last Sender Report about this stream (NTP, RTP): simulcast layer
    /// switches map timestamps through it (layers.rs).
    sr: Option<(u64, u32)>,
    /// What the layer selectors read, when simulcast layer routes carry the stream
    /// ([`Forwarder::note_layer`]).
    layer: Option<LayerPacket>,
    /// Where the Dependency Descriptor element lies in the plain packet, found by the first
    /// SVC output of the fan-out and read by the rest ([`dd_of`]): (element id, range; empty
    /// when the packet has no such element).
    dd: DdAt,
    /// Its descriptor's parse, shared by the SVC outputs of the fan-out ([`svc::Shared`]).
    svc: svc::Shared,
}

/// What [`note_pub`] may use to give a new publisher stream a cache.
struct CacheBudget<'a> {
    cfg: &'a NackConfig,
    left: &'a mut usize,
    pool: &'a mut Vec<StreamCache>,
    stats: &'a mut CounterSnapshot,
    poll_needed: &'a mut bool,
}

/// Account for a received publisher packet (`plain`, described by `inp`) in its stream's
/// loss-recovery state, created at the stream's first packet (with a cache while the worker's
/// budget lasts): extend its index, note gaps to ask for, cache it. Returns the cache index
/// when it was cached. One slice search, integer compares and one packet copy.
#[inline]
fn note_pub(
    pubs: &mut Vec<PubStream>,
    limit: usize,
    b: &mut CacheBudget<'_>,
    inp: &RtpIn,
    now: Instant,
    plain: &[u8],
) -> Option<u64> {
    let i = match pubs.iter().position(|p| p.ssrc == inp.ssrc) {
        Some(i) => i,
        None => {
            if pubs.len() >= limit {
                return None;
            }
            if pubs.capacity() < limit {
                pubs.reserve_exact(limit - pubs.len());
            }
            let cache = if !b.cfg.enabled() {
                None
            } else if let Some(c) = b.pool.pop() {
                Some(c)
            } else if *b.left == 0 {
                b.stats.count(Feedback::CacheFull, 1);
                None
            } else {
                // More streams than the rebuild foresaw: allocated here, once per stream.
                *b.left -= 1;
                Some(StreamCache::new(b.cfg.cache_packets))
            };
            pubs.push(PubStream::new(inp.ssrc, cache));
            pubs.len() - 1
        }
    };
    let p = &mut pubs[i];
    if !inp.repaired {
        p.note_payload_type(inp.pt);
    }
    let index = p.receive(inp.seq, now);
    if p.pending() != 0 {
        *b.poll_needed = true;
    }
    match p.store(index, now, plain) {
        Some(Insert::Stored) => Some(index),
        _ => None,
    }
}

/// Record that output stream `out_ssrc` of a subscriber sent `from` as `out_seq` (its sent
/// map created at the stream's first cached packet, sized like the caches).
#[inline]
fn note_sent(
    sent: &mut Vec<SentStream>,
    limit: usize,
    cap: usize,
    out_ssrc: u32,
    out_seq: u16,
    from: SentFrom,
    switched: bool,
) {
    let i = match SentStream::find(sent, out_ssrc) {
        Some(i) => i,
        None => {
            if sent.len() >= limit {
                return;
            }
            if sent.capacity() < limit {
                sent.reserve_exact(limit - sent.len());
            }
            sent.push(SentStream::new(out_ssrc, cap));
            sent.len() - 1
        }
    };
    sent[i].record(out_seq, from, switched);
}

/// The sequence number and timestamp an output sends `inp` with. Rewritten (`continuity`
/// given): the stream's continuity state owns the numbering, continued past a previous
/// process's stored index (`seed`). Not rewritten: the output index is the source's, so the
/// output stream must have one owner (RFC 3711 §9.1: never two packets under one index).
#[inline]
fn number_output(
    continuity: Option<&mut Continuity>,
    owned: &mut Vec<Owned>,
    limit: usize,
    window: u32,
    seed: Option<StreamRecord>,
    inp: &RtpIn,
) -> Result<(u16, u32), DropReason> {
    if let Some(c) = continuity {
        if let Some(r) = seed.filter(|_| c.last().is_none()) {
            // Past anything the previous process sent (it wrote at most REFRESH packets ago),
            // RFC 3711 §9.1.
            c.seed_after(r.seq().wrapping_add(SKIP), r.ts);
        }
        return Ok(c.map((inp.pub_id, inp.ssrc), inp.seq, inp.ts));
    }
    match claim(owned, limit, window, inp.pub_id, inp.ssrc, inp.seq, inp.ts) {
        Ok(()) => Ok((inp.seq, inp.ts)),
        Err(ClaimError::Collision) => Err(DropReason::SsrcCollision),
        Err(ClaimError::Full) => Err(DropReason::Crypto),
    }
}

/// Rewrite a subscriber's feedback packet for the publisher: sent as `rtcp_ssrc`, about the
/// publisher's own SSRC instead of the output one (`key`), NACKs in the publisher's numbering.
fn map_feedback_up(m: &mut rtcp::RtcpPacketMut<'_>, rtcp_ssrc: u32, key: u32, up: &Upstream) {
    let orig = up.ssrc;
    let _ = m.set_sender_ssrc(rtcp_ssrc);
    let p = m.packet();
    if p.packet_type() == packet_type::PSFB && p.count() == fmt::FIR {
        let _ = m.map_fir_ssrcs(|s| if s == key { orig } else { s });
    } else if p.is_remb() {
        let _ = m.map_remb_ssrcs(|s| if s == key { orig } else { s });
    } else {
        let _ = m.set_media_ssrc(orig);
    }
    if up.seq_off != 0 {
        // Each FCI entry: PID (16 bits) + BLP; shift the PID back to input numbering.
        let _ = m.map_nack_pids(|pid| pid.wrapping_sub(up.seq_off));
    }
}

/// True when `tx` can take another datagram; counts [`DropReason::TxQueueFull`] otherwise.
#[inline]
fn room(stats: &mut CounterSnapshot, tx: &TxQueue) -> bool {
    if tx.is_full() {
        stats.drop(DropReason::TxQueueFull);
        return false;
    }
    true
}

/// Queue one datagram for `peer` and count it: `fill` writes it into the slot (copy, rewrite,
/// protect) and returns its length, or why it was dropped. Every forwarded packet is pushed
/// and counted here.
#[inline]
fn emit(
    stats: &mut CounterSnapshot,
    tx: &mut TxQueue,
    peer: SocketAddr,
    fill: impl FnOnce(&mut [u8]) -> Result<usize, DropReason>,
) -> bool {
    let mut err = DropReason::Malformed;
    let pushed = tx.push_with(peer, |slot| fill(slot).map_err(|e| err = e).ok());
    if pushed {
        stats.tx(tx.metas().last().map_or(0, |m| m.len as usize));
    } else {
        stats.drop(err);
    }
    pushed
}

/// One packet of a validated compound: where it is and what [`Forwarder`] routes by.
#[derive(Clone, Copy, Default)]
struct Span {
    at: usize,
    end: usize,
    pt: u8,
    count: u8,
    /// The sender SSRC (first body word; 0 when absent).
    ssrc: u32,
}

impl Span {
    /// SDES and BYE about a stream go down to its subscribers. SRs do not: the relay writes
    /// its own for each output stream (`Forwarder::reports`), with that stream's counts.
    fn goes_down(&self) -> bool {
        let len = self.end - self.at;
        match self.pt {
            packet_type::SDES | packet_type::BYE => self.count > 0 && len >= 8,
            _ => false,
        }
    }
}

/// Validate a whole compound (RFC 3550 §6.1) and note its first [`MAX_RTCP_PACKETS`]
/// packets; `None` when any packet is malformed or there is none.
fn compound_spans(plain: &[u8]) -> Option<([Span; MAX_RTCP_PACKETS], usize)> {
    let mut spans = [Span::default(); MAX_RTCP_PACKETS];
    let mut count = 0;
    let mut off = 0;
    for p in rtcp::packets(plain) {
        let p = p.ok()?;
        let l = p.as_bytes().len();
        if count < MAX_RTCP_PACKETS {
            spans[count] = Span {
                at: off,
                end: off + l,
                pt: p.packet_type(),
                count: p.count(),
                ssrc: p.sender_ssrc().unwrap_or(0),
            };
            count += 1;
        }
        off += l;
    }
    (count > 0).then_some((spans, count))
}

/// Copy an SR/SDES/BYE run into `slot`, cutting each SR to its fixed part (RC = 0).
/// Returns the bytes written. The run was validated by the compound iterator.
fn copy_down(run: &[u8], slot: &mut [u8]) -> Option<usize> {
    let mut w = 0;
    for p in rtcp::packets(run) {
        w += rtcp::copy_without_reports(&p.ok()?, slot.get_mut(w..)?)?;
    }
    Some(w)
}
