//! Simulcast layer selection for one subscriber's video output (docs/ENGINE.md "Simulcast").
//!
//! A publisher sends up to [`MAX_LAYERS`] spatial layers of one video source, each on its own
//! SSRC; the subscriber receives one of them at a time on one output SSRC. Per output the
//! selector keeps a *target* layer (the highest layer that is eligible, allowed by the
//! subscriber's cap and, once an estimate is fed in with [`Selector::set_estimate`], carried by
//! the subscriber's link) and a *current* layer (the one being forwarded). It switches only on
//! a key frame of the target layer, asking for one at most every [`KEYFRAME_INTERVAL`]; until
//! then the current layer keeps flowing.
//!
//! At a switch the output numbering is re-based so the subscriber sees one stream: sequence
//! numbers continue after the last one sent (one more is skipped when the last packet sent
//! ended mid-frame, so the receiver sees a loss instead of a frame glued from two layers),
//! the timestamp is mapped onto the old layer's timeline through both layers' Sender Reports
//! ([`map_through_reports`]; before both have reported, it advances by the time elapsed since
//! the last packet sent), and the VP8 picture ID, TL0PICIDX and key index continue after the
//! last ones sent (RFC 7741 §4.2).
//!
//! Temporal layers (VP8, RFC 7741 §4.2 TID): per output a highest temporal layer
//! ([`Selector::set_temporal_cap`]); packets of the current layer with a higher TID are not
//! sent, and the output numbering closes over them (the next packet sent continues the
//! sequence numbers, [`Rebase`] with `new_layer` false) and the picture ID skips none. A lower
//! cap takes effect at once; a higher TID is sent again only from a frame that starts with the
//! layer-sync bit (Y) or a key frame, which references nothing that was dropped.
//!
//! A layer is eligible once it has been sending for [`ELIGIBLE_AFTER`] and has not been
//! silent for [`LAYER_IDLE`]; while no layer within the cap is that mature, the highest active
//! one is used, so a new subscriber gets a picture at once. Whether a layer sends, since when,
//! and at what rate is a property of the source, not of a subscriber: it is kept once per
//! publisher stream ([`LayerActivity`], noted once per input packet) and every selector fed by
//! that stream reads it.
//!
//! Owns: that state, fixed size, no heap. May not touch: packets (the caller rewrites them
//! with the numbers returned), the clock (time is passed in), SRTP.

use contract::wire::vp8::{Vp8Descriptor, PICTURE_ID_MASK};
use std::time::{Duration, Instant};

/// Most spatial layers of one simulcast source.
pub const MAX_LAYERS: usize = 3;
/// A layer must have been sending this long before a subscriber may switch to it.
pub const ELIGIBLE_AFTER: Duration = Duration::from_millis(1000);
/// A layer silent this long is inactive.
pub const LAYER_IDLE: Duration = Duration::from_millis(1000);
/// At most one key-frame request per output in this interval.
pub const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);
/// A layer's bit rate is measured over windows this long.
pub const RATE_WINDOW: Duration = Duration::from_millis(1000);
/// Going up needs an estimate this much above the higher layer's rate (percent) ...
pub const UP_MARGIN_PCT: u64 = 115;
/// ... held for this long.
pub const UP_HOLD: Duration = Duration::from_millis(2000);
/// No switch up sooner than this after a switch down: the estimate that fell with loss or
/// queuing delay must carry the higher layer for a while before the link is trusted with it
/// again (issue 17: at most one switch per 5 s on a steady link).
pub const UP_AFTER_DOWN: Duration = Duration::from_millis(5000);
/// No probing for an output sooner than this after its last switch down: the selector goes up
/// no sooner than [`UP_AFTER_DOWN`] after it, and needs [`UP_HOLD`] of an estimate that
/// carries the layer first, so a probe earlier than their difference buys nothing, and into a
/// link that just proved too narrow it costs media (a cluster 2 s after the drop froze a
/// shaped viewer's picture, docs/BENCHMARKS.md).
pub const PROBE_AFTER_DOWN: Duration = UP_AFTER_DOWN.saturating_sub(UP_HOLD);
/// RTP clock rate of video (RFC 7741 §6.1: VP8 always uses 90 kHz).
pub const VIDEO_CLOCK: u64 = 90_000;

/// A timestamp mapping through Sender Reports that moves the output further than this
/// (ticks, either way) is not believed: the reports disagree (a publisher that restarted a
/// layer's clock, a stale report) and the elapsed-time rule is used instead.
pub const MAX_MAPPED_ADVANCE: u32 = 10 * VIDEO_CLOCK as u32;

/// How far (sequence numbers) the switch point trails the newest forwarded packet; older
/// packets of the current layer are late.
const SWITCH_TRAIL: u16 = 0x4000;

/// The cap meaning "no cap".
pub const NO_CAP: u8 = u8::MAX;

/// What a packet of one layer carries that the selector needs: worked out once per input
/// packet (its VP8 descriptor parsed once) and read by every output's selector.
#[derive(Debug, Clone, Copy)]
pub struct LayerPacket {
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
    /// RTP payload bytes (for the layer's bit rate).
    pub bytes: usize,
    /// The VP8 payload descriptor, when the payload is VP8 and it parsed.
    pub vp8: Option<Vp8Descriptor>,
    /// The packet starts a key frame (from the descriptor or the codec's own header).
    pub keyframe: bool,
    /// The publisher's last Sender Report about this packet's stream, as its NTP timestamp
    /// (64-bit, RFC 3550 §4) and the RTP timestamp of the same instant; `None` before one.
    pub sr: Option<(u64, u32)>,
}

/// How far after the last packet sent the first packet of a new layer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebase {
    pub gap: u16,
    pub ts_advance: u32,
    /// A new spatial layer (a switch), not the numbering closed over dropped temporal layers.
    pub new_layer: bool,
}

/// What to do with one packet of one layer for this output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it; `switch` when it is the first packet of a new layer: the output stream's
    /// numbering is to be re-based ([`crate::engine::Continuity::rebase`]) so that it continues
    /// `gap` sequence numbers and `ts_advance` timestamp ticks after the last packet sent;
    /// `vp8` (picture ID, TL0PICIDX, key index) to write into its descriptor.
    Forward {
        switch: Option<Rebase>,
        vp8: Option<(u16, u8, u8)>,
    },
    /// Not the current layer: not sent.
    Skip,
    /// A packet of the current layer not sent after a sudden limit: the estimate carries less
    /// than half its rate while the switch down waits for the lower layer's key frame.
    Shed,
    /// Not sent; ask the publisher for a key frame of this layer (a switch waits for one).
    SkipRequestKeyframe,
    /// A packet of the current layer from before the last switch, or older than what was sent.
    Late,
}

/// What the selectors of one source layer (one publisher stream) measure: since when it sends,
/// whether it is still active, its bit rate, its last Sender Report. Kept once per publisher
/// stream ([`crate::engine::Index`]) and noted once per input packet, before the fan-out; every
/// output's [`Selector`] reads it. Instants rather than durations, so that the per-output
/// tests are comparisons and the only clock arithmetic is in [`LayerActivity::note`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerActivity {
    /// When the layer becomes eligible: [`ELIGIBLE_AFTER`] after it started sending.
    mature_at: Option<Instant>,
    /// When the layer becomes inactive: [`LAYER_IDLE`] after its last media packet.
    idle_at: Option<Instant>,
    window_start: Option<Instant>,
    /// [`RATE_WINDOW`] after `window_start`.
    window_end: Option<Instant>,
    window_bytes: u64,
    bps: u64,
    /// The layer's last Sender Report (NTP, RTP), forgotten when the layer restarts.
    sr: Option<(u64, u32)>,
}

impl LayerActivity {
    /// One media packet of the layer (`bytes` of RTP payload, at least one) at `now`, with the
    /// publisher's last Sender Report about the stream when it has sent one.
    pub fn note(&mut self, now: Instant, bytes: usize, sr: Option<(u64, u32)>) {
        match self.idle_at {
            Some(i) if now < i => {}
            _ => {
                self.mature_at = now.checked_add(ELIGIBLE_AFTER);
                self.window_start = Some(now);
                self.window_end = now.checked_add(RATE_WINDOW);
                self.window_bytes = 0;
                // A restarted layer may run on a new RTP clock offset: its old report no
                // longer maps it.
                self.sr = None;
            }
        }
        if sr.is_some() {
            self.sr = sr;
        }
        self.idle_at = now.checked_add(LAYER_IDLE);
        if self.window_end.is_some_and(|e| now >= e) {
            let span = now.saturating_duration_since(self.window_start.unwrap_or(now));
            let ms = span.as_millis().max(1) as u64;
            self.bps = self.window_bytes.saturating_mul(8000) / ms;
            self.window_start = Some(now);
            self.window_end = now.checked_add(RATE_WINDOW);
            self.window_bytes = 0;
        }
        self.window_bytes = self.window_bytes.saturating_add(bytes as u64);
    }

    /// Sent media within the last [`LAYER_IDLE`].
    #[inline]
    pub fn active(&self, now: Instant) -> bool {
        self.idle_at.is_some_and(|i| now < i)
    }

    /// Sending since [`ELIGIBLE_AFTER`] or longer (mature when also [`LayerActivity::active`]).
    #[inline]
    pub fn eligible(&self, now: Instant) -> bool {
        self.mature_at.is_some_and(|m| now >= m)
    }

    /// The bit rate measured over the last complete window.
    pub fn bps(&self) -> u64 {
        self.bps
    }
}

/// No source layer behind a selector's layer (no route of that layer into the output).
pub const NO_FEED: u32 = u32::MAX;

/// Output numbering of the VP8 descriptor fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Vp8Numbers {
    pid_off: u16,
    tl0_off: u8,
    key_off: u8,
    last_pid: u16,
    last_tl0: u8,
    last_key: u8,
    seen: bool,
    /// Input picture ID of the newest picture forwarded, and of the last picture dropped for
    /// its temporal layer (counted once in `pid_off`).
    last_in_pid: u16,
    dropped_pid: Option<u16>,
}

/// Switch latency of one output (docs/ENGINE.md "Switch latency"): since when its selector
/// has wanted a layer other than the one it forwards, and how long its last and longest
/// switches took from then to the first packet of the new layer forwarded. Fixed size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchClock {
    wanted_since: Option<Instant>,
    last_ms: u32,
    max_ms: u32,
}

impl SwitchClock {
    /// A decision at `now`; `differs`: the target is not the layer being forwarded.
    #[inline]
    pub fn track(&mut self, now: Instant, differs: bool) {
        if differs {
            self.wanted_since.get_or_insert(now);
        } else {
            self.wanted_since = None;
        }
    }

    /// A switch was made at `now`.
    pub fn switched(&mut self, now: Instant) {
        let ms = self.wanted_since.take().map_or(0, |t| {
            u32::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u32::MAX)
        });
        self.last_ms = ms;
        self.max_ms = self.max_ms.max(ms);
    }

    /// (last, longest) switch latency in milliseconds; 0 before a switch.
    pub fn ms(&self) -> (u32, u32) {
        (self.last_ms, self.max_ms)
    }
}

/// The layer state of one output: what is per subscriber (cap, estimate, target and current
/// layer, numbering). What is per source layer lives in [`LayerActivity`], which the selector
/// reads through `feeds`. Fixed size, no heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selector {
    /// Per layer, the index of its source stream's [`LayerActivity`] in the table the caller
    /// passes in ([`NO_FEED`]: no route of that layer feeds this output).
    feeds: [u32; MAX_LAYERS],
    count: u8,
    cap: u8,
    estimate: Option<u64>,
    /// Since when the estimate has carried the next layer up.
    up_since: Option<Instant>,
    /// When the last switch down was made.
    last_down: Option<Instant>,
    current: Option<u8>,
    target: u8,
    /// Input sequence number of the first packet forwarded after the last switch: earlier
    /// ones of the current layer are late.
    switch_in_seq: u16,
    /// Highest input sequence number forwarded of the current layer, its timestamp, whether
    /// that packet ended its frame, and when it arrived.
    high_seq: u16,
    high_ts: u32,
    last_marker: bool,
    last_at: Option<Instant>,
    vp8: Vp8Numbers,
    /// The last key-frame request: when, and for which layer.
    last_request: Option<(Instant, u8)>,
    switches: u32,
    clock: SwitchClock,
    /// Highest temporal layer this output may receive ([`NO_CAP`]: any), the highest one
    /// being sent now (raised only at a layer-sync frame), and whether packets were dropped
    /// for it since the last one sent (the next one closes the numbering).
    temporal_cap: u8,
    temporal_open: u8,
    temporal_gap: bool,
}

/// The RTP timestamp `ts` of a layer whose last Sender Report is `new` (NTP, RTP), expressed on
/// the timeline of the layer whose last report is `old` (RFC 3550 §6.4.1: a report pairs the
/// sender's wall clock with the stream's RTP clock; the layers of one source share the wall
/// clock). `None` when the reports are more than a day apart (not one sender's clock).
pub fn map_through_reports(old: (u64, u32), new: (u64, u32), ts: u32) -> Option<u32> {
    // NTP difference in 32.32 fixed point, signed: new report minus old report.
    let d = new.0.wrapping_sub(old.0) as i64;
    if d.unsigned_abs() > 86_400u64 << 32 {
        return None;
    }
    // Whole ticks at 90 kHz, rounded to nearest; |d| < 2^49 and 90_000 < 2^17, so the
    // product needs more than 64 bits but fits i128.
    let ticks = (i128::from(d) * i128::from(VIDEO_CLOCK) + (1 << 31)) >> 32;
    // ts on the new timeline is ts - new.rtp after the new report, which is `ticks` after the
    // old report: old.rtp + ticks + (ts - new.rtp).
    Some(
        old.1
            .wrapping_add(ticks as i64 as u32)
            .wrapping_add(ts.wrapping_sub(new.1)),
    )
}

/// How far `next` lies after `last` on one timeline, at least one tick: a frame mapped onto or
/// before the last one sent (the layers carry the same capture instants) still goes out after
/// it, so the receiver never sees two frames with one timestamp.
fn advance_after(last: u32, next: u32) -> u32 {
    match next.wrapping_sub(last) as i32 {
        a if a >= 1 => a as u32,
        a if a.unsigned_abs() <= MAX_MAPPED_ADVANCE => 1,
        // Far before: the reports disagree; refused by the caller's bound.
        _ => u32::MAX,
    }
}

/// RFC 1982 serial-number comparison: is `a` after `b`?
#[inline]
fn seq_newer(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

impl Selector {
    /// A selector over `count` layers (clamped to 1..=[`MAX_LAYERS`]), ordered lowest first,
    /// capped at layer `cap` ([`NO_CAP`]: none).
    pub fn new(count: usize, cap: u8) -> Selector {
        Selector {
            feeds: [NO_FEED; MAX_LAYERS],
            count: count.clamp(1, MAX_LAYERS) as u8,
            cap,
            estimate: None,
            up_since: None,
            last_down: None,
            current: None,
            target: 0,
            switch_in_seq: 0,
            high_seq: 0,
            high_ts: 0,
            last_marker: true,
            last_at: None,
            vp8: Vp8Numbers::default(),
            last_request: None,
            switches: 0,
            clock: SwitchClock::default(),
            temporal_cap: NO_CAP,
            temporal_open: NO_CAP,
            temporal_gap: false,
        }
    }

    /// Highest VP8 temporal layer (TID) this output may receive ([`NO_CAP`]: any).
    pub fn set_temporal_cap(&mut self, cap: u8) {
        self.temporal_cap = cap;
    }

    pub fn temporal_cap(&self) -> u8 {
        self.temporal_cap
    }

    /// Whether a packet of the current layer is within the temporal cap; opens a higher
    /// temporal layer at a layer-sync frame start or a key frame.
    fn temporal_ok(&mut self, p: &LayerPacket) -> bool {
        self.temporal_open = self.temporal_open.min(self.temporal_cap);
        let Some(d) = p.vp8.as_ref() else {
            return true;
        };
        let Some(t) = d.temporal_id else { return true };
        if t <= self.temporal_open {
            return true;
        }
        let frame_start = d.start_of_partition && d.partition_index == 0;
        if t <= self.temporal_cap && (p.keyframe || (d.layer_sync && frame_start)) {
            self.temporal_open = t;
            return true;
        }
        false
    }

    /// Drop packet `p` of the current layer for its temporal layer: the next packet sent
    /// closes the sequence numbers over it, and its picture (once) leaves the picture IDs.
    fn drop_temporal(&mut self, p: &LayerPacket) -> Decision {
        if seq_newer(p.seq, self.high_seq) {
            self.temporal_gap = true;
            if let Some((pid, _)) = p.vp8.as_ref().and_then(|d| d.picture_id) {
                let v = &mut self.vp8;
                let newer = (pid.wrapping_sub(v.last_in_pid) & PICTURE_ID_MASK) < 0x4000
                    && pid != v.last_in_pid;
                if v.dropped_pid != Some(pid) && newer {
                    v.pid_off = v.pid_off.wrapping_sub(1) & PICTURE_ID_MASK;
                    v.dropped_pid = Some(pid);
                }
            }
        }
        Decision::Skip
    }

    /// Highest layer this output may receive ([`NO_CAP`]: any).
    pub fn set_cap(&mut self, cap: u8) {
        self.cap = cap;
    }

    /// Layers of the source (a route update may change it).
    pub fn set_count(&mut self, count: usize) {
        self.count = count.clamp(1, MAX_LAYERS) as u8;
    }

    pub fn count(&self) -> usize {
        usize::from(self.count)
    }

    pub fn cap(&self) -> u8 {
        self.cap
    }

    /// The subscriber's downlink estimate (bits/s), `None` when there is none: the target is
    /// then the highest eligible layer within the cap. Going down happens as soon as the
    /// current layer's rate exceeds the estimate; going up needs [`UP_MARGIN_PCT`] of the
    /// higher layer's rate held for [`UP_HOLD`], and no switch down in the last
    /// [`UP_AFTER_DOWN`], so layers do not flap.
    pub fn set_estimate(&mut self, bps: Option<u64>) {
        self.estimate = bps;
    }

    /// The layer being forwarded, if any.
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// The layer the selector is heading for.
    pub fn target(&self) -> u8 {
        self.target
    }

    /// Whether probing for this output's better layers is worth it at `now`
    /// ([`PROBE_AFTER_DOWN`]).
    pub fn may_probe(&self, now: Instant) -> bool {
        self.last_down
            .is_none_or(|d| now.saturating_duration_since(d) >= PROBE_AFTER_DOWN)
    }

    /// Layer switches made (the first layer chosen is not a switch).
    pub fn switches(&self) -> u32 {
        self.switches
    }

    /// What the session statistics publish (docs/SHM.md).
    pub fn stats(&self) -> contract::shm::LayerStats {
        contract::shm::LayerStats {
            current: self.current,
            target: self.target,
            count: self.count,
            switches: self.switches,
            switch_ms_last: self.clock.ms().0,
            switch_ms_max: self.clock.ms().1,
        }
    }

    /// Layer `layer` of this output is fed by the source stream whose activity is
    /// `acts[feed]` in the table passed to [`Selector::on_packet`].
    pub fn set_feed(&mut self, layer: u8, feed: u32) {
        if let Some(f) = self.feeds.get_mut(usize::from(layer)) {
            *f = feed;
        }
    }

    /// Forget which source streams feed the layers (a rebuild sets them again).
    pub fn clear_feeds(&mut self) {
        self.feeds = [NO_FEED; MAX_LAYERS];
    }

    /// The activity of `layer`'s source stream in `acts`, when a route of it feeds this output.
    #[inline]
    fn activity<'a>(&self, acts: &'a [LayerActivity], layer: usize) -> Option<&'a LayerActivity> {
        let f = *self.feeds.get(layer)?;
        acts.get(f as usize)
    }

    /// Measured bit rate of `layer` over the last window.
    pub fn layer_bps(&self, layer: usize, acts: &[LayerActivity]) -> u64 {
        self.activity(acts, layer).map_or(0, |a| a.bps)
    }

    fn top(&self) -> u8 {
        (self.count - 1).min(self.cap)
    }

    /// Recompute the target layer at `now` from the layers' activity `acts`.
    fn choose(&mut self, now: Instant, acts: &[LayerActivity]) -> u8 {
        let top = self.top();
        // Each layer's state at `now`, worked out once: this runs for every media packet of
        // every output.
        let mut active = [false; MAX_LAYERS];
        let mut mature = [false; MAX_LAYERS];
        let mut bps = [0u64; MAX_LAYERS];
        for l in 0..=usize::from(top) {
            if let Some(a) = self.activity(acts, l) {
                active[l] = a.active(now);
                mature[l] = active[l] && a.eligible(now);
                bps[l] = a.bps;
            }
        }
        let any_mature = mature.iter().any(|&m| m);
        let eligible = if any_mature { mature } else { active };
        let ok = |l: u8| eligible[usize::from(l)];
        let Some(best) = (0..=top).rev().find(|&l| ok(l)) else {
            // Nothing within the cap sends: keep what there is.
            return self.current.unwrap_or(self.target);
        };
        let Some(est) = self.estimate else {
            self.up_since = None;
            return best;
        };
        let cur = self.current.unwrap_or(0);
        // Highest eligible layer the estimate carries: the current one and below at their
        // rate, higher ones with a margin.
        let fits = (0..=best).rev().find(|&l| {
            if !ok(l) {
                return false;
            }
            let bps = bps[usize::from(l)];
            if l > cur {
                bps.saturating_mul(UP_MARGIN_PCT) / 100 <= est
            } else {
                bps <= est
            }
        });
        let lowest = (0..=best).find(|&l| ok(l)).unwrap_or(best);
        let want = fits.unwrap_or(lowest);
        if want > cur && self.current.is_some() {
            let since = *self.up_since.get_or_insert(now);
            if now.saturating_duration_since(since) < UP_HOLD {
                return cur;
            }
            if self
                .last_down
                .is_some_and(|d| now.saturating_duration_since(d) < UP_AFTER_DOWN)
            {
                return cur;
            }
        } else {
            self.up_since = None;
        }
        want
    }

    /// Decide for one packet of `layer` arriving at `now`; `acts`: the source layers'
    /// activity, in which the caller has already noted this packet when it carries media
    /// ([`LayerActivity::note`], once per input packet for all outputs).
    pub fn on_packet(
        &mut self,
        now: Instant,
        layer: usize,
        p: &LayerPacket,
        acts: &[LayerActivity],
    ) -> Decision {
        if layer >= usize::from(self.count) {
            return Decision::Skip;
        }
        // A padding-only packet (no payload after padding removal, RFC 3550 §5.1) carries no
        // media: a sender probes its uplink with them, on layers it does not encode too, so
        // they neither make a layer active nor start a switch; on the current layer they pass
        // (the receiver's sequence numbers stay whole).
        let media = p.bytes > 0;
        if media {
            self.target = self.choose(now, acts);
            self.clock
                .track(now, self.current.is_some_and(|c| c != self.target));
        }
        let l = layer as u8;
        let mut switch = None;
        if media && self.current != Some(self.target) && l == self.target {
            if !p.keyframe {
                return self.request(now, l);
            }
            switch = self.switch_to(now, l, p, acts);
        }
        if self.current != Some(l) {
            return Decision::Skip;
        }
        if media && switch.is_none() && self.target < l && self.sudden_drop(l, acts) {
            // Going down because the link fell under half of what the current layer needs:
            // its packets are not sent while the lower layer's key frame is awaited. On that
            // link they only queue ahead of the key frame (and break into partial frames the
            // viewer shows between stalls, each stall a freeze).
            return Decision::Shed;
        }
        if switch.is_none() && !seq_newer(p.seq, self.switch_in_seq) && p.seq != self.switch_in_seq
        {
            return Decision::Late;
        }
        if media && switch.is_none() && !self.temporal_ok(p) {
            return self.drop_temporal(p);
        }
        if switch.is_none() && self.temporal_gap && seq_newer(p.seq, self.high_seq) {
            // The first packet after dropped temporal-layer packets: continue right after the
            // last one sent, on the same timeline.
            self.temporal_gap = false;
            self.switch_in_seq = p.seq;
            switch = Some(Rebase {
                gap: 1,
                ts_advance: p.ts.wrapping_sub(self.high_ts),
                new_layer: false,
            });
        }
        // The first packet ever sent starts the bookkeeping whatever its number.
        if switch.is_some() || self.last_at.is_none() || seq_newer(p.seq, self.high_seq) {
            self.high_seq = p.seq;
            self.high_ts = p.ts;
            self.last_marker = p.marker;
            self.last_at = Some(now);
            // The switch point trails the newest packet by at most a quarter of the number
            // space, so the serial comparison above stays meaningful on a long-lived layer.
            if self.high_seq.wrapping_sub(self.switch_in_seq) > SWITCH_TRAIL {
                self.switch_in_seq = self.high_seq.wrapping_sub(SWITCH_TRAIL);
            }
        }
        let vp8 = p.vp8.as_ref().map(|d| self.vp8_numbers(d));
        Decision::Forward { switch, vp8 }
    }

    /// The estimate carries less than half of `layer`'s measured rate.
    #[inline]
    fn sudden_drop(&self, layer: u8, acts: &[LayerActivity]) -> bool {
        self.estimate
            .is_some_and(|e| e.saturating_mul(2) < self.layer_bps(usize::from(layer), acts))
    }

    /// Ask for a key frame of layer `l`, at most every [`KEYFRAME_INTERVAL`] for the same
    /// layer: a target that moved on (the estimate fell further while the first switch
    /// waited, 1280 → 640 → 320) asks for its own layer's at once instead of waiting out the
    /// interval of a request to another layer's stream.
    fn request(&mut self, now: Instant, l: u8) -> Decision {
        match self.last_request {
            Some((t, r)) if r == l && now.saturating_duration_since(t) < KEYFRAME_INTERVAL => {
                Decision::Skip
            }
            _ => {
                self.last_request = Some((now, l));
                Decision::SkipRequestKeyframe
            }
        }
    }

    /// Make `l` current from its key frame `p`; the re-basing of the output numbering when
    /// something was sent before.
    fn switch_to(
        &mut self,
        now: Instant,
        l: u8,
        p: &LayerPacket,
        acts: &[LayerActivity],
    ) -> Option<Rebase> {
        self.switch_in_seq = p.seq;
        let sr = |l: u8| self.activity(acts, usize::from(l)).and_then(|a| a.sr);
        let old = self.current.and_then(sr);
        let new = sr(l);
        let rebase = self.last_at.map(|at| {
            self.switches = self.switches.saturating_add(1);
            self.clock.switched(now);
            let mapped = match (old, new) {
                (Some(o), Some(n)) => map_through_reports(o, n, p.ts)
                    .map(|on_old| advance_after(self.high_ts, on_old))
                    .filter(|&a| a <= MAX_MAPPED_ADVANCE),
                _ => None,
            };
            let ts_advance = mapped.unwrap_or_else(|| {
                let elapsed = now.saturating_duration_since(at).as_micros() as u64;
                (elapsed.saturating_mul(VIDEO_CLOCK) / 1_000_000).clamp(1, 1 << 30) as u32
            });
            Rebase {
                // Skip one when the last packet sent ended mid-frame: the receiver then sees
                // that frame incomplete instead of one glued from two layers.
                gap: if self.last_marker { 1 } else { 2 },
                ts_advance,
                new_layer: true,
            }
        });
        if let Some(d) = p.vp8.as_ref() {
            let v = &mut self.vp8;
            let (pid, tl0, key) = (
                d.picture_id.map_or(0, |(p, _)| p),
                d.tl0_pic_idx.unwrap_or(0),
                d.key_idx.unwrap_or(0),
            );
            if v.seen {
                v.pid_off = v.last_pid.wrapping_add(1).wrapping_sub(pid) & PICTURE_ID_MASK;
                v.tl0_off = v.last_tl0.wrapping_add(1).wrapping_sub(tl0);
                if d.key_idx.is_some() {
                    // The switch is a key frame: the key index moves on by one.
                    v.key_off = v.last_key.wrapping_add(1).wrapping_sub(key) & 0x1F;
                }
            } else {
                *v = Vp8Numbers::default();
            }
        }
        self.vp8.dropped_pid = None;
        self.temporal_gap = false;
        if self.current.is_some_and(|c| l < c) {
            self.last_down = Some(now);
        }
        self.current = Some(l);
        self.up_since = None;
        rebase
    }

    fn vp8_numbers(&mut self, d: &Vp8Descriptor) -> (u16, u8, u8) {
        let v = &mut self.vp8;
        let pid = d
            .picture_id
            .map_or(0, |(p, _)| p.wrapping_add(v.pid_off) & PICTURE_ID_MASK);
        let tl0 = d.tl0_pic_idx.unwrap_or(0).wrapping_add(v.tl0_off);
        let key = d.key_idx.map_or(0, |k| k.wrapping_add(v.key_off) & 0x1F);
        if !v.seen || (pid.wrapping_sub(v.last_pid) & PICTURE_ID_MASK) < 0x4000 {
            v.last_in_pid = d.picture_id.map_or(0, |(p, _)| p);
            v.last_pid = pid;
            v.last_tl0 = tl0;
            v.last_key = key;
            v.seen = true;
        }
        (pid, tl0, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Continuity;

    /// A layer's packet stream: one frame of `per_frame` packets every 1/30 s, VP8 with
    /// 15-bit picture IDs, key frame when asked.
    struct Layer {
        seq: u16,
        ts: u32,
        pid: u16,
        tl0: u8,
        /// The publisher's last Sender Report about this layer, as packets carry it.
        sr: Option<(u64, u32)>,
        /// Temporal layer id and layer-sync bit of the next frame's packets.
        tid: u8,
        sync: bool,
    }

    impl Layer {
        /// A layer whose next packet has these sequence number, timestamp, picture ID and
        /// TL0PICIDX.
        fn at(seq: u16, ts: u32, pid: u16, tl0: u8) -> Layer {
            Layer {
                seq,
                ts,
                pid,
                tl0,
                sr: None,
                tid: 0,
                sync: false,
            }
        }

        fn packet(&mut self, first: bool, last: bool, key: bool) -> LayerPacket {
            let pid = self.pid | 0x8000;
            let b = [
                0x80 | if first { 0x10 } else { 0 },
                0xE0,
                (pid >> 8) as u8,
                pid as u8,
                self.tl0,
                (self.tid << 6) | if self.sync { 0x20 } else { 0 },
                if key { 0x10 } else { 0x11 },
            ];
            let d = Vp8Descriptor::parse(&b).unwrap();
            let p = LayerPacket {
                seq: self.seq,
                ts: self.ts,
                marker: last,
                bytes: 1000,
                vp8: Some(d),
                keyframe: d.keyframe,
                sr: self.sr,
            };
            self.seq = self.seq.wrapping_add(1);
            p
        }
        fn next_frame(&mut self) {
            self.ts = self.ts.wrapping_add(3000);
            self.pid = (self.pid + 1) & PICTURE_ID_MASK;
            self.tl0 = self.tl0.wrapping_add(1);
        }
    }

    fn ms(t0: Instant, m: u64) -> Instant {
        t0 + Duration::from_millis(m)
    }

    /// A selector, its source layers' activity (layer `l` fed by `acts[l]`) and the output
    /// stream's numbering, as the engine drives them.
    struct Out {
        s: Selector,
        c: Continuity,
        acts: [LayerActivity; MAX_LAYERS],
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        Sent(u16, u32, (u16, u8, u8)),
        Not(Decision),
    }

    impl Out {
        fn new(count: usize, cap: u8) -> Out {
            let mut s = Selector::new(count, cap);
            for l in 0..MAX_LAYERS as u8 {
                s.set_feed(l, u32::from(l));
            }
            Out {
                s,
                c: Continuity::default(),
                acts: [LayerActivity::default(); MAX_LAYERS],
            }
        }

        /// The packet noted in its layer's activity (media only), then decided for.
        fn on_packet(&mut self, now: Instant, layer: usize, p: &LayerPacket) -> Got {
            if p.bytes > 0 && layer < self.s.count() {
                self.acts[layer].note(now, p.bytes, p.sr);
            }
            match self.s.on_packet(now, layer, p, &self.acts) {
                Decision::Forward { switch, vp8 } => {
                    let src = (1, layer as u32);
                    if let Some(r) = switch {
                        self.c.rebase(src, p.seq, p.ts, r.gap, r.ts_advance);
                    }
                    let (seq, ts) = self.c.map(src, p.seq, p.ts);
                    Got::Sent(seq, ts, vp8.unwrap_or_default())
                }
                d => Got::Not(d),
            }
        }
    }

    impl core::ops::Deref for Out {
        type Target = Selector;
        fn deref(&self) -> &Selector {
            &self.s
        }
    }

    impl core::ops::DerefMut for Out {
        fn deref_mut(&mut self) -> &mut Selector {
            &mut self.s
        }
    }

    fn fwd(g: Got) -> (u16, u32, (u16, u8, u8)) {
        match g {
            Got::Sent(seq, ts, vp8) => (seq, ts, vp8),
            other => panic!("expected a forward, got {other:?}"),
        }
    }

    #[test]
    fn starts_on_the_first_keyframe_then_climbs_on_a_keyframe_with_continuous_numbers() {
        let t0 = Instant::now();
        let mut s = Out::new(3, NO_CAP);
        let mut lo = Layer::at(65530, 0xFFFF_F000, 0x7FFD, 254);
        let mut hi = Layer::at(100, 777, 3, 9);
        // Only the low layer sends at first: it becomes the target; a delta frame waits for a
        // key frame (and asks for one), the key frame starts it.
        assert_eq!(
            s.on_packet(t0, 0, &lo.packet(true, true, false)),
            Got::Not(Decision::SkipRequestKeyframe)
        );
        lo.next_frame();
        let (seq, ts, vp8) = fwd(s.on_packet(ms(t0, 33), 0, &lo.packet(true, false, true)));
        assert_eq!((seq, ts), (65531, 0xFFFF_F000 + 3000));
        assert_eq!(vp8, (0x7FFE, 255, 0));
        assert_eq!(s.current(), Some(0));
        assert_eq!(s.switches(), 0);
        // The low layer runs for 1.2 s across the sequence-number wrap.
        let mut t = 33;
        for _ in 0..36 {
            fwd(s.on_packet(ms(t0, t), 0, &lo.packet(false, true, false)));
            lo.next_frame();
            t += 33;
            fwd(s.on_packet(ms(t0, t), 0, &lo.packet(true, false, false)));
        }
        // Last low packet sent ended mid-frame (no marker).
        let (last_seq, last_ts, last_vp8) = (lo.seq.wrapping_sub(1), lo.ts, (lo.pid, lo.tl0));
        assert_eq!(s.current(), Some(0));
        // The high layer appears: active but not yet mature, the low layer is; it stays.
        let mut at = t + 10;
        assert_eq!(
            s.on_packet(ms(t0, at), 2, &hi.packet(true, true, true)),
            Got::Not(Decision::Skip)
        );
        assert_eq!(s.target(), 0);
        // Both run; the high layer's delta frames are skipped while it matures.
        while at < t + 1000 {
            at += 33;
            hi.next_frame();
            assert_eq!(
                s.on_packet(ms(t0, at), 2, &hi.packet(true, true, false)),
                Got::Not(Decision::Skip)
            );
            fwd(s.on_packet(ms(t0, at), 0, &lo.packet(false, true, false)));
            lo.next_frame();
            fwd(s.on_packet(ms(t0, at), 0, &lo.packet(true, false, false)));
        }
        assert!(seq_newer(lo.seq, last_seq) && lo.ts != last_ts && lo.pid != last_vp8.0);
        // Mature now: the high layer is the target; its delta frames ask (throttled) ...
        at += 33;
        hi.next_frame();
        assert_eq!(
            s.on_packet(ms(t0, at + 1), 2, &hi.packet(true, true, false)),
            Got::Not(Decision::SkipRequestKeyframe)
        );
        assert_eq!(s.target(), 2);
        hi.next_frame();
        assert_eq!(
            s.on_packet(ms(t0, at + 34), 2, &hi.packet(true, true, false)),
            Got::Not(Decision::Skip)
        );
        // ... and the low layer keeps flowing meanwhile (this one ends its frame).
        let (lseq, lts, lvp8) =
            fwd(s.on_packet(ms(t0, at + 40), 0, &lo.packet(false, true, false)));
        assert_eq!(lseq, lo.seq.wrapping_sub(1));
        // The key frame switches: the sequence continues at +1 (the last packet ended its
        // frame), the timestamp advances by the 50 ms elapsed, picture ID and TL0PICIDX by 1.
        hi.next_frame();
        let (seq, ts, vp8) = fwd(s.on_packet(ms(t0, at + 90), 2, &hi.packet(true, false, true)));
        assert_eq!(seq, lseq.wrapping_add(1));
        assert_eq!(ts, lts.wrapping_add(4500));
        assert_eq!(
            vp8,
            (
                (lvp8.0 + 1) & PICTURE_ID_MASK,
                lvp8.1.wrapping_add(1),
                lvp8.2
            )
        );
        assert_eq!(s.current(), Some(2));
        assert_eq!(s.switches(), 1);
        // Switch latency: from the packet that made the high layer the target (and asked for
        // its key frame) to its key frame forwarded.
        let st = s.stats();
        assert_eq!((st.switch_ms_last, st.switch_ms_max), (89, 89));
        // The rest of the high layer follows on the new numbering; the low layer is skipped.
        let (seq2, ts2, vp82) =
            fwd(s.on_packet(ms(t0, at + 91), 2, &hi.packet(false, true, false)));
        assert_eq!((seq2, ts2, vp82), (seq.wrapping_add(1), ts, vp8));
        assert_eq!(
            s.on_packet(ms(t0, at + 92), 0, &lo.packet(true, true, false)),
            Got::Not(Decision::Skip)
        );
        hi.next_frame();
        let (seq3, ts3, vp83) =
            fwd(s.on_packet(ms(t0, at + 120), 2, &hi.packet(true, true, false)));
        assert_eq!(seq3, seq2.wrapping_add(1));
        assert_eq!(ts3, ts.wrapping_add(3000));
        assert_eq!(vp83.0, (vp8.0 + 1) & PICTURE_ID_MASK);
        assert_eq!(vp83.1, vp8.1.wrapping_add(1));
    }

    /// Run layers 0 and 2 for `ms_total` from `start`, 30 frames a second with a key frame
    /// every tenth; return the time reached.
    fn warm(
        s: &mut Out,
        t0: Instant,
        lo: &mut Layer,
        hi: &mut Layer,
        start: u64,
        ms_total: u64,
    ) -> u64 {
        let mut t = start;
        while t < start + ms_total {
            let key = (t - start) % 330 == 0;
            let _ = s.on_packet(ms(t0, t), 0, &lo.packet(true, true, key));
            let _ = s.on_packet(ms(t0, t), 2, &hi.packet(true, true, key));
            lo.next_frame();
            hi.next_frame();
            t += 33;
        }
        t
    }

    #[test]
    fn cap_holds_the_low_layer_and_lifting_it_climbs_mid_frame_skip() {
        let t0 = Instant::now();
        let mut s = Out::new(3, 0);
        let mut lo = Layer::at(10, 10, 10, 10);
        let mut hi = Layer::at(60000, 5, 0x7FFF, 0);
        let t = warm(&mut s, t0, &mut lo, &mut hi, 0, 1500);
        assert_eq!(s.current(), Some(0));
        assert_eq!(s.target(), 0);
        // A low packet that ends mid-frame, then the cap is lifted.
        let (lseq, _, _) = fwd(s.on_packet(ms(t0, t), 0, &lo.packet(true, false, false)));
        s.set_cap(NO_CAP);
        assert_eq!(
            s.on_packet(ms(t0, t + 1), 2, &hi.packet(true, true, false)),
            Got::Not(Decision::SkipRequestKeyframe)
        );
        hi.next_frame();
        let (seq, _, vp8) = fwd(s.on_packet(ms(t0, t + 30), 2, &hi.packet(true, true, true)));
        // One sequence number skipped: the receiver sees the low layer's frame incomplete.
        assert_eq!(seq, lseq.wrapping_add(2));
        assert_eq!(s.current(), Some(2));
        assert_eq!(s.switches(), 1);
        // Capping again goes down on the next low key frame.
        s.set_cap(0);
        lo.next_frame();
        assert_eq!(
            s.on_packet(ms(t0, t + 600), 0, &lo.packet(true, true, false)),
            Got::Not(Decision::SkipRequestKeyframe)
        );
        // The high layer still flows until then.
        hi.next_frame();
        let (hseq, _, hvp8) = fwd(s.on_packet(ms(t0, t + 620), 2, &hi.packet(true, true, false)));
        assert_eq!(hseq, seq.wrapping_add(1));
        assert_eq!(hvp8.0, (vp8.0 + 1) & PICTURE_ID_MASK);
        lo.next_frame();
        let (dseq, _, dvp8) = fwd(s.on_packet(ms(t0, t + 630), 0, &lo.packet(true, true, true)));
        assert_eq!(dseq, hseq.wrapping_add(1));
        assert_eq!(dvp8.0, (hvp8.0 + 1) & PICTURE_ID_MASK);
        assert_eq!(s.switches(), 2);
    }

    /// NTP timestamp (32.32) `ms` milliseconds after an arbitrary wall-clock origin.
    fn ntp_ms(ms: u64) -> u64 {
        (0xE000_0000u64 << 32) + (ms << 32) / 1000
    }

    #[test]
    fn reports_map_one_timeline_onto_another_across_wraps_and_either_order() {
        // Old layer: RTP 1000 at wall 10 s. New layer: RTP 0xFFFF_FF00 at wall 10.5 s.
        let old = (ntp_ms(10_000), 1000);
        let new = (ntp_ms(10_500), 0xFFFF_FF00);
        // The new layer's report instant is 45 000 ticks after the old one's.
        assert_eq!(map_through_reports(old, new, 0xFFFF_FF00), Some(46_000));
        // 100 ticks later on the new timeline (across its wrap) is 100 later on the old.
        assert_eq!(map_through_reports(old, new, 0xA0), Some(46_416));
        // The old report may be the later one.
        assert_eq!(
            map_through_reports(new, old, 1000),
            Some(0xFFFF_FF00u32.wrapping_sub(45_000))
        );
        // A fraction of a tick rounds to the nearest.
        let half = (ntp_ms(0) + (1u64 << 32) / 180_000 + 1, 0);
        assert_eq!(map_through_reports((ntp_ms(0), 0), half, 0), Some(1));
        // Reports days apart are not one sender's clock.
        assert_eq!(
            map_through_reports((ntp_ms(0), 0), (ntp_ms(0) + ((2 * 86_400u64) << 32), 0), 0),
            None
        );
    }

    #[test]
    fn a_switch_maps_timestamps_through_sender_reports_whatever_the_arrival_time() {
        let t0 = Instant::now();
        let mut s = Out::new(3, 0);
        // Both layers encode the same frames (30 per second) on unrelated RTP offsets; each
        // has reported once, at different wall-clock instants.
        let mut lo = Layer::at(10, 0x1000, 10, 10);
        let mut hi = Layer::at(60000, 0xFFFF_0000, 0x7FFF, 0);
        lo.sr = Some((ntp_ms(50_000), 0x1000));
        // The high layer's report 200 ms later, i.e. 6 frames on.
        hi.sr = Some((ntp_ms(50_200), 0xFFFF_0000u32.wrapping_add(18_000)));
        let t = warm(&mut s, t0, &mut lo, &mut hi, 0, 1500);
        assert_eq!(s.current(), Some(0));
        // The last low frame sent, ending its frame.
        let (_, lts, _) = fwd(s.on_packet(ms(t0, t), 0, &lo.packet(true, true, false)));
        s.set_cap(NO_CAP);
        // The high layer's next frame is a key frame, delivered 140 ms late (the arrival
        // clock would say 12 600 ticks): the reports say it is the next frame, 3000 ticks on.
        lo.next_frame();
        hi.next_frame();
        let (_, ts, _) = fwd(s.on_packet(ms(t0, t + 140), 2, &hi.packet(true, true, true)));
        assert_eq!(s.current(), Some(2));
        assert_eq!(ts, lts.wrapping_add(3000));
        // And back down: the low layer's key frame two frames later is 6000 ticks on.
        s.set_cap(0);
        hi.next_frame();
        lo.next_frame();
        let (_, hts, _) = fwd(s.on_packet(ms(t0, t + 150), 2, &hi.packet(true, true, false)));
        hi.next_frame();
        lo.next_frame();
        let (_, lts2, _) = fwd(s.on_packet(ms(t0, t + 400), 0, &lo.packet(true, true, true)));
        assert_eq!(lts2, hts.wrapping_add(3000));
        assert_eq!(s.switches(), 2);
    }

    #[test]
    fn a_switch_onto_the_same_instant_moves_one_tick_and_without_reports_uses_arrival() {
        let t0 = Instant::now();
        let mut s = Out::new(3, 0);
        let mut lo = Layer::at(10, 500, 10, 10);
        let mut hi = Layer::at(900, 7_000_000, 1, 0);
        lo.sr = Some((ntp_ms(1_000), 500));
        hi.sr = Some((ntp_ms(1_000), 7_000_000));
        let t = warm(&mut s, t0, &mut lo, &mut hi, 0, 1500);
        // The low frame is sent; the high layer's key frame of the same capture instant
        // follows: it goes one tick after, not onto the same timestamp.
        let (_, lts, _) = fwd(s.on_packet(ms(t0, t), 0, &lo.packet(true, true, false)));
        s.set_cap(NO_CAP);
        let (_, ts, _) = fwd(s.on_packet(ms(t0, t + 5), 2, &hi.packet(true, true, true)));
        assert_eq!(ts, lts.wrapping_add(1));
        // Reports that disagree wildly (a restarted clock) are not believed: arrival time.
        let mut s = Out::new(3, 0);
        let mut lo = Layer::at(10, 500, 10, 10);
        let mut hi = Layer::at(900, 7_000_000, 1, 0);
        lo.sr = Some((ntp_ms(1_000), 500));
        hi.sr = Some((ntp_ms(1_000), 7_000_000u32.wrapping_add(90_000 * 60)));
        let t = warm(&mut s, t0, &mut lo, &mut hi, 0, 1500);
        let (_, lts, _) = fwd(s.on_packet(ms(t0, t), 0, &lo.packet(true, true, false)));
        s.set_cap(NO_CAP);
        let (_, ts, _) = fwd(s.on_packet(ms(t0, t + 50), 2, &hi.packet(true, true, true)));
        assert_eq!(ts, lts.wrapping_add(4500));
        // Only one layer has reported: arrival time too.
        let mut s = Out::new(3, 0);
        let mut lo = Layer::at(10, 500, 10, 10);
        let mut hi = Layer::at(900, 7_000_000, 1, 0);
        lo.sr = Some((ntp_ms(1_000), 500));
        let t = warm(&mut s, t0, &mut lo, &mut hi, 0, 1500);
        let (_, lts, _) = fwd(s.on_packet(ms(t0, t), 0, &lo.packet(true, true, false)));
        s.set_cap(NO_CAP);
        let (_, ts, _) = fwd(s.on_packet(ms(t0, t + 20), 2, &hi.packet(true, true, true)));
        assert_eq!(ts, lts.wrapping_add(1800));
    }

    #[test]
    fn padding_only_packets_neither_activate_a_layer_nor_start_a_switch() {
        let t0 = Instant::now();
        let mut s = Out::new(3, NO_CAP);
        let mut lo = Layer::at(1, 1, 1, 1);
        let mut hi = Layer::at(500, 1, 1, 1);
        fwd(s.on_packet(t0, 0, &lo.packet(true, true, true)));
        // The high layer sends only padding (a paused encoding the sender probes on) for
        // two seconds: never the target, no key frame asked for, nothing of it forwarded.
        let mut t = 0;
        while t < 2000 {
            t += 33;
            let mut pad = hi.packet(false, false, false);
            pad.bytes = 0;
            pad.vp8 = None;
            pad.keyframe = false;
            assert_eq!(s.on_packet(ms(t0, t), 2, &pad), Got::Not(Decision::Skip));
            lo.next_frame();
            fwd(s.on_packet(ms(t0, t), 0, &lo.packet(true, true, false)));
        }
        assert_eq!((s.target(), s.current()), (0, Some(0)));
        // Padding on the current layer is forwarded in sequence.
        let mut pad = lo.packet(false, false, false);
        pad.bytes = 0;
        pad.vp8 = None;
        let (seq, _, _) = fwd(s.on_packet(ms(t0, t + 1), 0, &pad));
        let (next, _, _) = fwd(s.on_packet(ms(t0, t + 2), 0, &lo.packet(true, true, false)));
        assert_eq!(next, seq.wrapping_add(1));
    }

    #[test]
    fn temporal_cap_drops_higher_tids_with_numbering_closed_and_opens_at_layer_sync() {
        let t0 = Instant::now();
        let mut s = Out::new(1, NO_CAP);
        let mut l = Layer::at(65534, 1000, 0x7FFE, 200);
        // L1T3: TID 0, 2, 1, 2, 0, ... one packet per frame; TL0PICIDX moves on at TID 0.
        let pattern = [0u8, 2, 1, 2];
        let mut frame = 0usize;
        let mut send = |s: &mut Out, l: &mut Layer, key: bool, sync: bool, at: u64| {
            if frame > 0 {
                l.ts = l.ts.wrapping_add(3000);
                l.pid = (l.pid + 1) & PICTURE_ID_MASK;
            }
            l.tid = pattern[frame % 4];
            if frame > 0 && l.tid == 0 {
                l.tl0 = l.tl0.wrapping_add(1);
            }
            l.sync = sync;
            frame += 1;
            let tid = l.tid;
            (tid, s.on_packet(ms(t0, at), 0, &l.packet(true, true, key)))
        };
        let (_, first) = send(&mut s, &mut l, true, false, 0);
        let (seq0, ts0, vp80) = fwd(first);
        s.set_temporal_cap(0);
        // Three cycles capped at TID 0: only every fourth frame, numbered without holes.
        let mut out = vec![(seq0, ts0, vp80)];
        for i in 1..12u64 {
            match send(&mut s, &mut l, false, false, i * 33) {
                (0, g) => out.push(fwd(g)),
                (_, g) => assert_eq!(g, Got::Not(Decision::Skip)),
            }
        }
        assert_eq!(out.len(), 3);
        for w in out.windows(2) {
            let ((s1, t1, v1), (s2, t2, v2)) = (w[0], w[1]);
            assert_eq!(
                s2,
                s1.wrapping_add(1),
                "sequence closed over dropped packets"
            );
            assert_eq!(
                t2,
                t1.wrapping_add(12_000),
                "timestamps keep their timeline"
            );
            assert_eq!(
                v2.0,
                (v1.0 + 1) & PICTURE_ID_MASK,
                "picture IDs skip no dropped picture"
            );
            assert_eq!(v2.1, v1.1.wrapping_add(1), "TL0PICIDX as sent");
        }
        assert_eq!(s.switches(), 0, "closing the numbering is no layer switch");
        // Cap lifted: a TID 2 frame without layer sync still waits; the TID 1 frame with Y
        // opens TID 1, the next TID 2 frame with Y opens TID 2.
        s.set_temporal_cap(NO_CAP);
        let (last_seq, _, last_vp8) = out[2];
        let (t, g) = send(&mut s, &mut l, false, false, 400);
        assert_eq!(t, 0);
        let (seq, _, vp8) = fwd(g);
        assert_eq!(
            (seq, vp8.0),
            (last_seq.wrapping_add(1), (last_vp8.0 + 1) & PICTURE_ID_MASK)
        );
        let (t, g) = send(&mut s, &mut l, false, false, 433);
        assert_eq!((t, g), (2, Got::Not(Decision::Skip)));
        let (t, g) = send(&mut s, &mut l, false, true, 466);
        assert_eq!(t, 1);
        let (seq1, _, vp81) = fwd(g);
        assert_eq!(seq1, seq.wrapping_add(1));
        assert_eq!(vp81.0, (vp8.0 + 1) & PICTURE_ID_MASK);
        let (t, g) = send(&mut s, &mut l, false, true, 500);
        assert_eq!(t, 2);
        let (seq2, _, vp82) = fwd(g);
        assert_eq!(
            (seq2, vp82.0),
            (seq1.wrapping_add(1), (vp81.0 + 1) & PICTURE_ID_MASK)
        );
    }

    #[test]
    fn late_packets_of_the_old_layer_and_before_the_switch_are_not_sent() {
        let t0 = Instant::now();
        let mut s = Out::new(2, NO_CAP);
        let mut lo = Layer::at(1, 1, 1, 1);
        let first = lo.packet(true, true, true);
        fwd(s.on_packet(t0, 0, &first));
        let mut early = first;
        early.seq = 0;
        early.keyframe = false;
        assert_eq!(s.on_packet(ms(t0, 1), 0, &early), Got::Not(Decision::Late));
        // A layer index past the count is never forwarded.
        assert_eq!(s.on_packet(ms(t0, 2), 2, &first), Got::Not(Decision::Skip));
    }

    #[test]
    fn a_long_lived_layer_is_never_late_across_wraps() {
        let t0 = Instant::now();
        let mut s = Out::new(1, NO_CAP);
        let mut lo = Layer::at(100, 0, 0, 0);
        let (first, _, _) = fwd(s.on_packet(t0, 0, &lo.packet(true, true, true)));
        for i in 1..70_000u32 {
            let (seq, _, _) = fwd(s.on_packet(t0, 0, &lo.packet(true, true, false)));
            assert_eq!(seq, first.wrapping_add(i as u16));
        }
        // A packet from long ago is late; a recently reordered one is still sent.
        let mut old = lo.packet(true, true, false);
        old.seq = lo.seq.wrapping_sub(0x5000);
        assert_eq!(s.on_packet(t0, 0, &old), Got::Not(Decision::Late));
        old.seq = lo.seq.wrapping_sub(5);
        fwd(s.on_packet(t0, 0, &old));
    }

    #[test]
    fn a_target_that_moves_on_asks_for_its_own_key_frame_at_once() {
        let t0 = Instant::now();
        let mut s = Out::new(3, NO_CAP);
        let mut lo = Layer::at(1, 1, 1, 1);
        let mut mid = Layer::at(300, 1, 1, 1);
        let mut hi = Layer::at(500, 1, 1, 1);
        let mut t = 0;
        while t < 1300 {
            let key = t % 330 == 0;
            for (i, l) in [(0, &mut lo), (1, &mut mid), (2, &mut hi)] {
                let _ = s.on_packet(ms(t0, t), i, &l.packet(true, true, key));
                l.next_frame();
            }
            t += 33;
        }
        let _ = s.on_packet(ms(t0, t), 2, &hi.packet(true, true, true));
        assert_eq!(s.current(), Some(2));
        // The cap falls to the middle layer: its key frame is asked for.
        s.set_cap(1);
        assert_eq!(
            s.on_packet(ms(t0, t + 1), 1, &mid.packet(true, true, false)),
            Got::Not(Decision::SkipRequestKeyframe)
        );
        // 100 ms on, before that key frame came, to the low layer: its own request goes out
        // at once, not after the 500 ms of the middle layer's (same layer again: throttled).
        s.set_cap(0);
        assert_eq!(
            s.on_packet(ms(t0, t + 100), 0, &lo.packet(true, true, false)),
            Got::Not(Decision::SkipRequestKeyframe)
        );
        assert_eq!(
            s.on_packet(ms(t0, t + 133), 0, &lo.packet(true, true, false)),
            Got::Not(Decision::Skip)
        );
    }

    #[test]
    fn a_silent_layer_is_left_for_an_active_one() {
        let t0 = Instant::now();
        let mut s = Out::new(3, NO_CAP);
        let mut lo = Layer::at(1, 1, 1, 1);
        let mut hi = Layer::at(500, 1, 1, 1);
        let t = warm(&mut s, t0, &mut lo, &mut hi, 0, 1200);
        // Next high key frame after maturity.
        let _ = s.on_packet(ms(t0, t), 2, &hi.packet(true, true, true));
        assert_eq!(s.current(), Some(2));
        // The high layer stops (the publisher's uplink dropped it); after LAYER_IDLE the low
        // layer is the target again and its next key frame switches.
        let t = t + 1100;
        assert_eq!(
            s.on_packet(ms(t0, t), 0, &lo.packet(true, true, false)),
            Got::Not(Decision::SkipRequestKeyframe)
        );
        assert_eq!(s.target(), 0);
        fwd(s.on_packet(ms(t0, t + 33), 0, &lo.packet(true, true, true)));
        assert_eq!(s.current(), Some(0));
    }

    #[test]
    fn estimate_goes_down_at_once_and_up_only_with_margin_held() {
        let t0 = Instant::now();
        let mut s = Out::new(3, NO_CAP);
        let mut lo = Layer::at(1, 1, 1, 1);
        let mut hi = Layer::at(500, 1, 1, 1);
        // Both layers send 1000 bytes per 33 ms: about 242 kbit/s each.
        let t = warm(&mut s, t0, &mut lo, &mut hi, 0, 2500);
        let _ = s.on_packet(ms(t0, t), 2, &hi.packet(true, true, true));
        assert_eq!(s.current(), Some(2));
        let rate = s.layer_bps(2, &s.acts);
        assert!((200_000..300_000).contains(&rate), "{rate}");
        // An estimate below the high layer's rate: the target drops at once; the high layer
        // keeps flowing until the low layer's key frame (the estimate carries more than half).
        s.set_estimate(Some(rate - 1));
        let _ = s.on_packet(ms(t0, t + 1), 0, &lo.packet(true, true, false));
        assert_eq!(s.target(), 0);
        assert!(matches!(
            s.on_packet(ms(t0, t + 1), 2, &hi.packet(true, true, false)),
            Got::Sent(..)
        ));
        let _ = s.on_packet(ms(t0, t + 2), 0, &lo.packet(true, true, true));
        assert_eq!(s.current(), Some(0));
        // Back to exactly the rate: not enough margin to go up.
        s.set_estimate(Some(rate));
        let t = warm(&mut s, t0, &mut lo, &mut hi, t + 33, 300);
        assert_eq!(s.target(), 0);
        // With margin: only after UP_HOLD, and UP_AFTER_DOWN after the switch down.
        s.set_estimate(Some(rate * 2));
        let t = warm(&mut s, t0, &mut lo, &mut hi, t, 1000);
        assert_eq!(s.target(), 0);
        let t = warm(&mut s, t0, &mut lo, &mut hi, t, 1100);
        assert_eq!(s.target(), 0, "held UP_AFTER_DOWN");
        let t = warm(&mut s, t0, &mut lo, &mut hi, t, 2700);
        assert_eq!(s.target(), 2);
        assert_eq!(s.current(), Some(2));
        assert_eq!(s.switches(), 3);
        // A sudden limit, under half the high layer's rate: its packets stop at once while
        // the low layer's key frame is awaited, then the key frame switches.
        // (600 ms on: past the throttle of the switch up's key-frame requests.)
        s.set_estimate(Some(rate / 5));
        assert_eq!(
            s.on_packet(ms(t0, t + 600), 0, &lo.packet(true, true, false)),
            Got::Not(Decision::SkipRequestKeyframe)
        );
        assert_eq!(
            s.on_packet(ms(t0, t + 601), 2, &hi.packet(true, true, false)),
            Got::Not(Decision::Shed)
        );
        assert!(matches!(
            s.on_packet(ms(t0, t + 602), 0, &lo.packet(true, true, true)),
            Got::Sent(..)
        ));
        assert_eq!(s.current(), Some(0));
        // No estimate: straight to the best layer.
        s.set_estimate(None);
        let _ = s.on_packet(ms(t0, t + 603), 0, &lo.packet(true, true, false));
        assert_eq!(s.target(), 2);
    }
}
