//! The per-datagram path: demultiplex, find the session, unprotect, route, rewrite, protect,
//! queue (design.md "Packet path" steps 1–6). No allocation, lock, syscall or clock here.

use super::crypto::{rx_drop_reason, tx_drop_reason, SrtpOps};
use super::index::{claim, normalize, ClaimError, Index, RebuildReport, Upstream, NONE};
use super::state::{estimate_index, StreamState, Track, SKIP};
use super::stats::Stats;
use crate::batch::TxQueue;
use contract::ratelimit::{RateLimiter, Verdict};
use contract::shm::{
    DropReason, Rewrite, RouteRecord, SessionId, SessionRecord, ShmReader, StreamDir, StreamRecord,
};
use contract::srtp::ContextOptions;
use contract::wire::rtcp::{self, fmt, packet_type};
use contract::wire::rtp::{RtpMut, RtpPacket};
use contract::wire::stun::StunMessage;
use contract::wire::{classify, dtls, Kind};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// RFC 3550 §6.4.1: the sender report without report blocks is 28 bytes (7 words).
const SR_FIXED_LEN: usize = 28;
/// An outbound SRTCP flow's stored index is rewritten every this many packets, so it is at
/// most this far behind the true one (RTCP is a few packets per second per stream).
const RTCP_REFRESH: u64 = 16;
/// A new process continues an outbound SRTCP flow this far past the stored index: past
/// anything the previous process can have protected.
const RTCP_SKIP: u64 = 4 * RTCP_REFRESH;
/// Most RTCP packets of one compound the engine looks at; the rest is consumed.
const MAX_RTCP_PACKETS: usize = 16;

/// The forwarding logic of one worker over its [`Index`], with batch statistics.
pub struct Forwarder<C = contract::srtp::Context> {
    index: Index<C>,
    stats: Stats,
    now: Option<Instant>,
    state: StreamState,
    gate: SlowGate,
    /// The sender SSRC of the feedback this worker sends to publishers (see
    /// [`feedback_ssrc`]).
    feedback_ssrc: u32,
}

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

/// RFC 7983 §7 sends STUN and DTLS to control; only well-formed ones are worth its time: a
/// STUN message that parses whole (header, magic cookie, length, attributes; RFC 8489 §5,
/// §14) or a datagram of complete DTLS records (RFC 6347 §4.1).
#[inline]
fn slow_path_well_formed(kind: Kind, b: &[u8]) -> bool {
    match kind {
        Kind::Stun => StunMessage::parse(b).is_ok(),
        Kind::Dtls => !b.is_empty() && dtls::records(b).all(|r| r.is_ok()),
        _ => false,
    }
}

/// Account for one packet of a tracked stream (create the track at its first packet, with the
/// index its context started at) and persist the stream's index when [`Track::advance`] asks.
/// Integer compares, plus one seqlock slot write per rollover or `REFRESH` packets.
#[allow(clippy::too_many_arguments)]
#[inline]
fn note_stream(
    state: &mut StreamState,
    tracks: &mut Vec<Track>,
    ti: Option<usize>,
    limit: usize,
    session: u64,
    dir: StreamDir,
    ssrc: u32,
    seq: u16,
    first_index: u64,
    ts: u32,
    rewritten: bool,
) {
    let t = match ti {
        Some(i) => {
            let t = &mut tracks[i];
            if !t.advance(seq) {
                return;
            }
            *t
        }
        None => match open_track(state, tracks, limit, session, dir, ssrc, first_index) {
            Some(t) => t,
            None => return,
        },
    };
    state.write(
        t.slot,
        &StreamRecord {
            session,
            ssrc,
            dir,
            index: t.index,
            ts,
            rewritten,
        },
    );
}

/// Start tracking (session, dir, ssrc) at `index` in this worker's slot for it; `None` when
/// the session already tracks `limit` streams in that direction. The list is reserved whole
/// at its first entry (once per session and direction, like its SRTP context).
#[allow(clippy::too_many_arguments)]
#[inline]
fn open_track(
    state: &mut StreamState,
    tracks: &mut Vec<Track>,
    limit: usize,
    session: SessionId,
    dir: StreamDir,
    ssrc: u32,
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
            match open_track(state, tracks, limit, session, dir, ssrc, index) {
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

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(w) => u32::from_be_bytes([w[0], w[1], w[2], w[3]]),
        None => 0,
    }
}

#[inline]
fn put32(b: &mut [u8], at: usize, v: u32) {
    if let Some(w) = b.get_mut(at..at + 4) {
        w.copy_from_slice(&v.to_be_bytes());
    }
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

impl<C: SrtpOps> Forwarder<C> {
    pub fn new(opts: ContextOptions) -> Forwarder<C> {
        Forwarder {
            index: Index::new(opts),
            stats: Stats::default(),
            now: None,
            state: StreamState::default(),
            gate: SlowGate::Open,
            feedback_ssrc: feedback_ssrc(0),
        }
    }

    /// Persist every stream's SRTP index into worker `worker`'s stream-state region of `shm`,
    /// and seed new streams from all regions (docs/ENGINE.md "Stream state across restarts").
    /// Call before the first rebuild.
    pub fn attach_stream_state(&mut self, shm: Arc<ShmReader>, worker: usize) {
        self.state.attach(shm, worker);
        self.feedback_ssrc = feedback_ssrc(worker);
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
        let rep = self.index.rebuild(sessions, routes);
        let index = &self.index;
        self.state.rebuild(|id| index.has_session(id));
        rep
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
        if let SlowGate::Pending(r) = self.gate {
            // Once, outside the per-datagram path.
            self.gate = SlowGate::On(Box::new(RateLimiter::new(r.global, r.per_source, now)));
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The statistics since the last call, resetting them.
    pub fn take_stats(&mut self) -> Stats {
        core::mem::take(&mut self.stats)
    }

    pub fn index(&self) -> &Index<C> {
        &self.index
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
        let len = len.min(buf.len());
        self.stats.rx(len);
        let src = normalize(src);
        let kind = classify(&buf[..len]);
        // RFC 7983 §7: STUN and DTLS belong to control, known source or not; malformed ones
        // and a source (or this worker) over its rate stop here, before the slow-path socket.
        if matches!(kind, Kind::Stun | Kind::Dtls) {
            if !slow_path_well_formed(kind, &buf[..len]) {
                self.stats.drop(DropReason::Malformed);
                return;
            }
            if let (SlowGate::On(g), Some(now)) = (&mut self.gate, self.now) {
                if g.check(now, src.ip()) != Verdict::Allow {
                    self.stats.drop(DropReason::RateLimited);
                    return;
                }
            }
            if slow.push(src, &buf[..len]) {
                self.stats.slow_path += 1;
            } else {
                self.stats.drop(DropReason::SlowPathFull);
            }
            return;
        }
        let Some(idx) = self.index.session_of(&src) else {
            self.stats.drop(DropReason::UnknownSource);
            return;
        };
        match kind {
            Kind::Rtp => self.on_rtp(idx, buf, len, tx),
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

    fn on_rtp(&mut self, idx: u32, buf: &mut [u8], len: usize, tx: &mut TxQueue) {
        if self.rate_limited(idx) {
            self.stats.drop(DropReason::RateLimited);
            return;
        }
        let opts = self.index.opts;
        let publisher = &mut self.index.sessions[idx as usize];
        // The SSRC and sequence number are in the clear (RFC 3711 §3.1). A stream this process
        // has not seen yet may continue one a previous relay process handled: start its
        // context at the index closest to the stored one (RFC 3711 §3.3.1, Appendix A), so
        // it authenticates past any rollover.
        let in_ssrc = be32(buf, 8);
        let ti = Track::find(&publisher.rx_track, in_ssrc);
        let publisher_id = publisher.id;
        let Some(rx) = publisher.rx_ctx(opts) else {
            self.stats.drop(DropReason::Crypto);
            return;
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
                self.stats.drop(rx_drop_reason(e));
                return;
            }
        };
        // The accepted packet's ROC (it is the stream's highest when it is the first one here).
        let first_roc = u64::from(rx.roc(in_ssrc).unwrap_or(0));
        if !publisher.role.can_publish() {
            self.stats.drop(DropReason::NotPublisher);
            return;
        }
        let (ssrc, seq, ts) = match RtpPacket::parse(&buf[..n]) {
            Ok(p) => (p.ssrc(), p.sequence(), p.timestamp()),
            Err(_) => {
                self.stats.drop(DropReason::Malformed);
                return;
            }
        };
        publisher.note_ssrc(ssrc);
        let pub_id = publisher.id;
        if ssrc == in_ssrc {
            let limit = opts.max_streams;
            let tracks = &mut publisher.rx_track;
            let first = (first_roc << 16) | u64::from(seq);
            let state = &mut self.state;
            note_stream(
                state,
                tracks,
                ti,
                limit,
                pub_id,
                StreamDir::In,
                ssrc,
                seq,
                first,
                0,
                false,
            );
        }
        let Some((specific, any)) = self.index.outputs_of(idx, ssrc) else {
            self.stats.drop(DropReason::NoRoute);
            return;
        };
        let plain = &buf[..n];
        let limit = self.index.owned_limit();
        for oi in specific.clone().chain(any) {
            if !specific.is_empty() && !specific.contains(&oi) && self.index.shadowed(oi, &specific)
            {
                continue;
            }
            let Index {
                sessions,
                outputs,
                streams,
                opts,
                ..
            } = &mut self.index;
            let o = &outputs[oi as usize];
            let sub = &mut sessions[o.sub as usize];
            let out_ssrc = o.rewrite.ssrc.unwrap_or(ssrc);
            let rewritten = o.stream != NONE;
            let ti = Track::find(&sub.tx_track, out_ssrc);
            // A stream this process has not sent yet may continue one a previous relay process
            // sent under the same key: continue after its stored index (docs/ENGINE.md).
            let seed = match ti {
                None if self.state.has_seeds() => self.state.seed(sub.id, StreamDir::Out, out_ssrc),
                _ => None,
            };
            let (oseq, ots) = match streams.get_mut(o.stream as usize) {
                // Rewritten: the stream's continuity state owns the numbering.
                Some(c) if rewritten => {
                    if let Some(r) = seed.filter(|_| c.last().is_none()) {
                        // Past anything the previous process sent (it wrote at most REFRESH
                        // packets ago), RFC 3711 §9.1.
                        c.seed_after(r.seq().wrapping_add(SKIP), r.ts);
                    }
                    c.map((pub_id, ssrc), seq, ts)
                }
                _ => {
                    // Not rewritten: the output index is the source's, so the output stream
                    // must have one owner (RFC 3711 §9.1: never two packets under one index).
                    let window = opts.replay_window;
                    match claim(&mut sub.owned, limit, window, pub_id, ssrc, seq, ts) {
                        Ok(()) => (seq, ts),
                        Err(ClaimError::Collision) => {
                            self.stats.drop(DropReason::SsrcCollision);
                            continue;
                        }
                        Err(ClaimError::Full) => {
                            self.stats.drop(DropReason::Crypto);
                            continue;
                        }
                    }
                }
            };
            let peer = sub.peer;
            let sub_id = sub.id;
            let Some(ctx) = sub.tx_ctx(*opts) else {
                self.stats.drop(DropReason::Crypto);
                continue;
            };
            let mut first_index = u64::from(oseq);
            if let Some(r) = seed {
                if ctx.roc(out_ssrc).is_none() {
                    first_index = estimate_index(r.index, oseq);
                    let _ = ctx.set_roc(out_ssrc, (first_index >> 16) as u32);
                }
            }
            if tx.is_full() {
                self.stats.drop(DropReason::TxQueueFull);
                continue;
            }
            let mut err = DropReason::Malformed;
            let rw = &o.rewrite;
            let pushed = tx.push_with(peer, |slot| {
                let dst = slot.get_mut(..n)?;
                dst.copy_from_slice(plain);
                if !rewrite_rtp(dst, rw, oseq, ots) {
                    return None;
                }
                match ctx.protect_rtp(slot, n) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        err = tx_drop_reason(e);
                        None
                    }
                }
            });
            if pushed {
                self.stats
                    .tx(tx.metas().last().map_or(0, |m| m.len as usize));
                let limit = opts.max_streams;
                note_stream(
                    &mut self.state,
                    &mut sessions[o.sub as usize].tx_track,
                    ti,
                    limit,
                    sub_id,
                    StreamDir::Out,
                    out_ssrc,
                    oseq,
                    first_index,
                    if rewritten { ots } else { 0 },
                    rewritten,
                );
            } else {
                self.stats.drop(err);
            }
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
                self.stats.drop(rx_drop_reason(e));
                return;
            }
        };
        let publishes = session.role.can_publish();
        // Validate the whole compound first (RFC 3550 §6.1); remember packet boundaries.
        let mut spans = [(0usize, 0usize); MAX_RTCP_PACKETS];
        let mut count = 0;
        let mut off = 0;
        for p in rtcp::packets(&buf[..n]) {
            let Ok(p) = p else {
                self.stats.drop(DropReason::Malformed);
                return;
            };
            let l = p.as_bytes().len();
            if count < MAX_RTCP_PACKETS {
                spans[count] = (off, off + l);
                count += 1;
            }
            off += l;
        }
        if count == 0 {
            self.stats.drop(DropReason::Malformed);
            return;
        }
        let plain = &buf[..n];
        // Runs of consecutive SR/SDES/BYE about one SSRC go down together as one compound.
        let mut run: Option<(usize, usize, u32)> = None;
        for &(a, b) in &spans[..count] {
            let pt = plain[a + 1];
            let rc = plain[a] & 0x1F;
            let down = publishes
                && match pt {
                    packet_type::SR => b - a >= SR_FIXED_LEN,
                    packet_type::SDES | packet_type::BYE => rc > 0 && b - a >= 8,
                    _ => false,
                };
            if down {
                let ssrc = be32(plain, a + 4);
                match run {
                    Some((ra, _, rs)) if rs == ssrc => run = Some((ra, b, rs)),
                    Some(r) => {
                        self.send_down(idx, plain, r, tx);
                        run = Some((a, b, ssrc));
                    }
                    None => run = Some((a, b, ssrc)),
                }
                continue;
            }
            if let Some(r) = run.take() {
                self.send_down(idx, plain, r, tx);
            }
            if matches!(pt, packet_type::RTPFB | packet_type::PSFB) && b - a >= 12 {
                self.send_up(idx, &plain[a..b], tx);
            }
            // RR, APP, XR and anything else: consumed here.
        }
        if let Some(r) = run.take() {
            self.send_down(idx, plain, r, tx);
        }
    }

    /// Forward a publisher's SR/SDES/BYE run about `ssrc` to each subscriber of that stream,
    /// SSRC rewritten, the SR's RTP timestamp shifted like the stream's, report blocks removed
    /// (they describe what the publisher receives, RFC 3550 §6.4.1).
    fn send_down(&mut self, idx: u32, plain: &[u8], run: (usize, usize, u32), tx: &mut TxQueue) {
        let (a, b, ssrc) = run;
        let Some((specific, any)) = self.index.outputs_of(idx, ssrc) else {
            return;
        };
        let pub_id = self.index.sessions[idx as usize].id;
        for oi in specific.clone().chain(any) {
            if !specific.is_empty() && !specific.contains(&oi) && self.index.shadowed(oi, &specific)
            {
                continue;
            }
            let Index {
                sessions,
                outputs,
                streams,
                opts,
                ..
            } = &mut self.index;
            let o = &outputs[oi as usize];
            let ts_off = match streams.get(o.stream as usize) {
                Some(c) if o.stream != NONE => c.offsets_for((pub_id, ssrc)).map(|(_, t)| t),
                _ => None,
            };
            let out_ssrc = o.rewrite.ssrc;
            let sub = &mut sessions[o.sub as usize];
            // Reports about a stream another source owns would describe the wrong stream.
            if o.stream == NONE
                && sub
                    .owned
                    .iter()
                    .any(|e| e.ssrc == ssrc && e.owner != pub_id)
            {
                self.stats.drop(DropReason::SsrcCollision);
                continue;
            }
            let peer = sub.peer;
            let sub_id = sub.id;
            // The SRTCP flow is the compound's first SSRC (RFC 3711 §3.4), as rewritten.
            let rtcp_ssrc = out_ssrc.unwrap_or(ssrc);
            let Some((ctx, rtcp_track)) = sub.tx_rtcp(*opts) else {
                self.stats.drop(DropReason::Crypto);
                continue;
            };
            if tx.is_full() {
                self.stats.drop(DropReason::TxQueueFull);
                continue;
            }
            resume_srtcp(&mut self.state, rtcp_track, sub_id, ctx, rtcp_ssrc);
            let mut err = DropReason::Malformed;
            let pushed = tx.push_with(peer, |slot| {
                let w = copy_down(&plain[a..b], slot)?;
                for p in rtcp::packets_mut(&mut slot[..w]) {
                    let Ok(mut p) = p else { return None };
                    if let Some(x) = out_ssrc {
                        // SR/SDES/BYE carry the sender SSRC first (checked when copied).
                        let _ = p.set_sender_ssrc(x);
                    }
                }
                if let Some(off) = ts_off {
                    let mut at = 0;
                    while at + 4 <= w {
                        let l =
                            (usize::from(u16::from_be_bytes([slot[at + 2], slot[at + 3]])) + 1) * 4;
                        if slot[at + 1] == packet_type::SR && l >= SR_FIXED_LEN {
                            let t = be32(slot, at + 16).wrapping_add(off);
                            put32(slot, at + 16, t);
                        }
                        at += l;
                    }
                }
                match ctx.protect_rtcp(slot, w) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        err = tx_drop_reason(e);
                        None
                    }
                }
            });
            if pushed {
                self.stats
                    .tx(tx.metas().last().map_or(0, |m| m.len as usize));
                let limit = opts.max_streams;
                note_srtcp(&mut self.state, rtcp_track, limit, sub_id, ctx, rtcp_ssrc);
            } else {
                self.stats.drop(err);
            }
        }
    }

    /// Forward one feedback packet (RFC 4585 §6.1) from a subscriber to the publisher of the
    /// stream it names, with the media SSRC (and FIR entries, RFC 5104 §4.3.1) mapped back to
    /// the publisher's own SSRC and NACKed sequence numbers to its numbering.
    fn send_up(&mut self, idx: u32, p: &[u8], tx: &mut TxQueue) {
        let pt = p[1];
        let fmt_ = p[0] & 0x1F;
        let is_fir = pt == packet_type::PSFB && fmt_ == fmt::FIR;
        let is_remb = pt == packet_type::PSFB && fmt_ == fmt::AFB && p.get(12..16) == Some(b"REMB");
        let is_nack = pt == packet_type::RTPFB && fmt_ == fmt::NACK;
        // FIR (RFC 5104 §4.3.1.2) and REMB leave the media SSRC 0 and name streams in the FCI.
        let key = if is_fir {
            be32(p, 12)
        } else if is_remb {
            be32(p, 20)
        } else {
            be32(p, 8)
        };
        let Some(up) = self.index.upstream_of(idx, key) else {
            return;
        };
        let Upstream {
            publisher,
            ssrc: orig,
            seq_off,
        } = up;
        let opts = self.index.opts;
        let target = &mut self.index.sessions[publisher as usize];
        let peer = target.peer;
        let target_id = target.id;
        // Sent as this worker (see `feedback_ssrc`): that SSRC names the SRTCP flow.
        let rtcp_ssrc = self.feedback_ssrc;
        let Some((ctx, rtcp_track)) = target.tx_rtcp(opts) else {
            self.stats.drop(DropReason::Crypto);
            return;
        };
        if tx.is_full() {
            self.stats.drop(DropReason::TxQueueFull);
            return;
        }
        resume_srtcp(&mut self.state, rtcp_track, target_id, ctx, rtcp_ssrc);
        let l = p.len();
        let mut err = DropReason::Malformed;
        let pushed = tx.push_with(peer, |slot| {
            let dst = slot.get_mut(..l)?;
            dst.copy_from_slice(p);
            put32(dst, 4, rtcp_ssrc);
            if is_fir {
                if let Some(Ok(mut m)) = rtcp::packets_mut(dst).next() {
                    let _ = m.map_fir_ssrcs(|s| if s == key { orig } else { s });
                }
            } else if is_remb {
                let mut at = 20;
                while at + 4 <= l {
                    if be32(dst, at) == key {
                        put32(dst, at, orig);
                    }
                    at += 4;
                }
            } else {
                put32(dst, 8, orig);
            }
            if is_nack && seq_off != 0 {
                // Each FCI entry: PID (16 bits) + BLP; shift the PID back to input numbering.
                let mut at = 12;
                while at + 4 <= l {
                    let pid = u16::from_be_bytes([dst[at], dst[at + 1]]).wrapping_sub(seq_off);
                    dst[at..at + 2].copy_from_slice(&pid.to_be_bytes());
                    at += 4;
                }
            }
            match ctx.protect_rtcp(slot, l) {
                Ok(m) => Some(m),
                Err(e) => {
                    err = tx_drop_reason(e);
                    None
                }
            }
        });
        if pushed {
            self.stats
                .tx(tx.metas().last().map_or(0, |m| m.len as usize));
            let limit = opts.max_streams;
            note_srtcp(
                &mut self.state,
                rtcp_track,
                limit,
                target_id,
                ctx,
                rtcp_ssrc,
            );
        } else {
            self.stats.drop(err);
        }
    }
}

/// Copy an SR/SDES/BYE run into `slot`, cutting each SR to its fixed part (RC = 0).
/// Returns the bytes written. The run was validated by the compound iterator.
fn copy_down(run: &[u8], slot: &mut [u8]) -> Option<usize> {
    let mut w = 0;
    for p in rtcp::packets(run) {
        let p = p.ok()?;
        let bytes = p.as_bytes();
        if p.packet_type() == packet_type::SR {
            let dst = slot.get_mut(w..w + SR_FIXED_LEN)?;
            dst.copy_from_slice(bytes.get(..SR_FIXED_LEN)?);
            // V=2, P=0, RC=0; length 7 words − 1 (RFC 3550 §6.4.1).
            dst[0] = 0x80;
            dst[2..4].copy_from_slice(&((SR_FIXED_LEN / 4 - 1) as u16).to_be_bytes());
            w += SR_FIXED_LEN;
        } else {
            slot.get_mut(w..w + bytes.len())?.copy_from_slice(bytes);
            w += bytes.len();
        }
    }
    Some(w)
}
