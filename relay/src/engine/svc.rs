//! SVC forwarding on one SSRC by the Dependency Descriptor (docs/ENGINE.md "SVC").
//!
//! A VP9 or AV1 publisher encoding several spatial and temporal layers on one SSRC (and an
//! H.264 or VP8 one with temporal layers) describes every frame in the Dependency Descriptor
//! header extension ([`contract::wire::dd`]): its template, its decode target indications
//! (DTIs), the frames it references and the chains. Per output the selector keeps the last
//! template structure (from the key frame that carried it), a *target* decode target (the
//! highest one within the subscriber's spatial cap (`max_layer`) and temporal cap
//! (`max_temporal`) that is active and, once an estimate is fed in, whose spatial layers'
//! measured rate fits it; above the lowest spatial layer only at a layer's full frame rate)
//! and a *current* one (the one being forwarded).
//!
//! A frame is forwarded when its DTI for the current decode target is not "not present" and
//! every frame it references was forwarded (a ring of the last [`WINDOW`] frame numbers);
//! any other frame is dropped, and the output's sequence numbers close over the dropped
//! packets ([`Rebase`] with `new_layer` false, as for VP8 temporal layers). The current
//! decode target becomes the target at a frame whose references were all forwarded and that
//! is a switch point of the target (DTI "switch") or whose chain for the target is intact;
//! until then the current one keeps flowing, and while the target differs in its spatial
//! layer a key frame is asked for at most every [`KEYFRAME_INTERVAL`]. A frame whose chain
//! for the current decode target lost a frame (never received, or dropped) also asks for one.
//!
//! The subscriber's active decode targets (those at or below the current one, among the
//! publisher's active ones) are written into the descriptor of forwarded packets that carry
//! a structure or a mask, and into every frame's first packet while they differ from the
//! publisher's, so the receiver does not wait for frames it will never get.
//!
//! Owns: that state, fixed size (one allocation per output when its route is set up, none per
//! packet). May not touch: packets (the caller rewrites them), the clock, SRTP.

use super::layers::{
    Rebase, SwitchClock, KEYFRAME_INTERVAL, PROBE_AFTER_DOWN, RATE_WINDOW, UP_AFTER_DOWN, UP_HOLD,
    UP_MARGIN_PCT,
};
use contract::shm::{Feedback, LayerStats};

use contract::wire::dd::{self, DdError, Dti, Frame, Structure};
use contract::wire::rtp::{self, RtpMut, RtpPacket};
use std::cell::{Cell, OnceCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Frame numbers remembered as forwarded or decided.
pub const WINDOW: usize = 1024;
const WORDS: usize = WINDOW / 64;

/// Longest wait after a switch down before going up again, reached by doubling
/// [`UP_AFTER_DOWN`] each time a switch up is followed by a switch down within it: a K-SVC
/// decode target of a lower frame rate can fit an estimate by its measured rate and still not
/// fit the link (its key frames, the estimator's noise), and a shaped VP9/AV1 viewer went up
/// and down every 5–7 s with a fixed wait. Bounded so that a lifted link is climbed within
/// issue 17's 15 s.
const MAX_UP_WAIT: Duration = Duration::from_secs(10);

/// How far (sequence numbers) the switch point trails the newest forwarded packet.
const SWITCH_TRAIL: u16 = 0x4000;

/// What a packet carries that the selector needs.
#[derive(Debug, Clone, Copy)]
pub struct SvcPacket<'a> {
    pub seq: u16,
    pub ts: u32,
    /// RTP payload bytes (for the layer rates).
    pub bytes: usize,
    /// The Dependency Descriptor element's value; empty when the packet has none.
    pub dd: &'a [u8],
    /// What the outputs of one fan-out share of this packet's parse ([`Shared`]); `None`:
    /// nothing is shared.
    pub shared: Option<&'a Shared>,
}

/// One input packet's descriptor parse, shared by the SVC outputs of its fan-out: outputs
/// that took their template structure from the same packet resolve a descriptor without a
/// structure to the same frame, so the first such output parses it and the rest copy the
/// frame. A structure is identified by a tag given out when the first output of a fan-out
/// takes it from its packet ([`next_structure_tag`]); the outputs that take it from the same
/// packet get the same tag, any other packet a new one, so equal tags mean the same
/// structure. No allocation; a relaxed atomic increment per key frame only.
#[derive(Debug, Default)]
pub struct Shared {
    /// The tag of the structure this packet carries, once an output took it.
    tag: Cell<Option<u64>>,
    /// The frame this packet resolves to under the structure of the tag (set by the first
    /// output that parsed it with a tagged structure, borrowed by the others).
    frame: OnceCell<(u64, Frame)>,
}

/// A tag for a structure taken from a packet: unique within the process.
fn next_structure_tag() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Why a packet was not forwarded (one counter each, docs/ENGINE.md "SVC").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvcDrop {
    /// Its frame is not part of the current decode target, or no decode target can be
    /// forwarded yet (waiting for a switch point).
    NotPresent,
    /// Its frame references a frame that was not forwarded.
    Unreferenced,
    /// No descriptor, one that does not parse, or none with a known structure yet.
    NoStructure,
    /// Older than the last re-basing of the output numbering, or than the frame window.
    Late,
    /// A frame of the current decode target not sent after a sudden limit: the estimate
    /// carries less than half its rate while a switch to a lower spatial layer waits for its
    /// key frame.
    Shed,
}

/// What a forwarded packet's copy gets written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvcOut {
    /// The active decode targets to write into its descriptor (parsed as the frame given).
    pub mask: Option<(u32, dd::MaskSpot)>,
    /// Set the RTP marker: the packet ends the last frame of its picture this output gets
    /// (the highest spatial layer of its decode target), where the publisher set it on the
    /// picture's last frame, which this output does not get; the receiver completes the
    /// picture by it.
    pub marker: bool,
}

/// What to do with one packet for this output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvcDecision {
    /// Send it; `rebase` closes the output numbering over dropped packets; `out`: what to
    /// write into the copy ([`rewrite`]).
    Forward {
        rebase: Option<Rebase>,
        out: SvcOut,
        /// The current decode target changed with this packet.
        switched: bool,
        /// It changed at a frame that references none (a key frame): the viewer's decoder
        /// starts again here, so what was sent before is not worth resending
        /// (`resend_stale`, docs/ENGINE.md "Loss recovery").
        restart: bool,
        /// Ask the publisher for a key frame (a spatial switch waits, or a chain broke).
        keyframe: bool,
        /// The packet was the first seen of its frame, whose decision may have moved the
        /// target, the current decode target or the switch latency ([`Svc::stats`]); the
        /// frame's other packets change none of them.
        decided: bool,
    },
    /// Not sent; `keyframe`: ask the publisher for a key frame.
    Drop { reason: SvcDrop, keyframe: bool },
}

/// The measured rate of every decode target, over windows of [`RATE_WINDOW`] shared by all
/// of them: per packet one comparison of instants and an addition per decode target the
/// frame belongs to (a window per decode target cost a clock subtraction each, per packet and
/// output). A decode target that sent nothing in a window keeps its last rate, as with a
/// window of its own: a layer the publisher paused without saying so in its active decode
/// targets must not measure 0 and fit any estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rates {
    /// Counts the windows closed: the measured rates change only when it does.
    epoch: u32,
    window_start: Option<Instant>,
    /// [`RATE_WINDOW`] after `window_start`.
    window_end: Option<Instant>,
    bytes: [u64; dd::MAX_DECODE_TARGETS],
    bps: [u64; dd::MAX_DECODE_TARGETS],
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            epoch: 0,
            window_start: None,
            window_end: None,
            bytes: [0; dd::MAX_DECODE_TARGETS],
            bps: [0; dd::MAX_DECODE_TARGETS],
        }
    }
}

impl Rates {
    /// `bytes` at `now` for the decode targets in `targets` (bit per decode target).
    #[inline]
    fn note(&mut self, now: Instant, mut targets: u32, bytes: usize) {
        match (self.window_start, self.window_end) {
            (Some(start), Some(end)) if now >= end => {
                let ms = now.saturating_duration_since(start).as_millis().max(1) as u64;
                for (bps, b) in self.bps.iter_mut().zip(self.bytes.iter_mut()) {
                    if *b > 0 {
                        *bps = b.saturating_mul(8000) / ms;
                        *b = 0;
                    }
                }
                self.window_start = Some(now);
                self.window_end = now.checked_add(RATE_WINDOW);
                self.epoch = self.epoch.wrapping_add(1);
            }
            (Some(_), Some(_)) => {}
            _ => {
                self.window_start = Some(now);
                self.window_end = now.checked_add(RATE_WINDOW);
            }
        }
        while targets != 0 {
            let dt = targets.trailing_zeros() as usize;
            targets &= targets - 1;
            if let Some(b) = self.bytes.get_mut(dt) {
                *b = b.saturating_add(bytes as u64);
            }
        }
    }

    fn bps(&self, dt: u8) -> u64 {
        self.bps.get(usize::from(dt)).copied().unwrap_or(0)
    }
}

/// The last decode target [`Svc::choose`] picked and what it picked it from. The choice is a
/// function of these (with the structure and caps, whose changes clear it) except while it
/// heads up and holds, which depends on the time: it is kept only outside that. A frame
/// whose inputs match takes it without the two passes over the decode targets (nine in
/// Chromium's `L3T3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Choice {
    estimate: Option<u64>,
    active_in: u32,
    current: Option<u8>,
    rates_epoch: u32,
    pick: Option<u8>,
}

/// The SVC state of one output. Fixed size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svc {
    structure: Structure,
    has_structure: bool,
    /// The tag of the structure kept ([`Shared`]); `None` when it was taken without one.
    structure_tag: Option<u64>,
    /// Where a packet's structure is parsed; swapped in when it is valid.
    scratch: Structure,
    /// The publisher's active decode targets.
    active_in: u32,
    cap_spatial: u8,
    cap_temporal: u8,
    estimate: Option<u64>,
    up_since: Option<Instant>,
    /// When the last switch to a lower decode target was made, and to a higher one.
    last_down: Option<Instant>,
    last_up: Option<Instant>,
    /// How long after a switch down the selector waits before it goes up again:
    /// [`UP_AFTER_DOWN`], doubled (up to [`MAX_UP_WAIT`]) when a switch up failed (a switch
    /// down came within [`MAX_UP_WAIT`] of it).
    up_wait: Duration,
    /// Measured rate of each decode target: the bytes of the frames it includes (its DTI is
    /// not "not present"), so a K-SVC target costs its own layer, a full-SVC one its layer and
    /// those below.
    rates: Rates,
    /// The last choice, while it stands ([`Choice`]).
    choice: Option<Choice>,
    current: Option<u8>,
    target: Option<u8>,
    forwarded: [u64; WORDS],
    decided: [u64; WORDS],
    newest: Option<u16>,
    /// Output numbering: as in the simulcast selector (layers.rs).
    high_seq: u16,
    high_ts: u32,
    switch_in_seq: u16,
    gap: bool,
    started: bool,
    last_request: Option<Instant>,
    switches: u32,
    clock: SwitchClock,
}

#[inline]
fn seq_newer(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

impl Svc {
    /// An SVC selector capped at spatial layer `cap_spatial` and temporal layer
    /// `cap_temporal` ([`contract::shm::Layer::NO_CAP`]: none).
    pub fn new(cap_spatial: u8, cap_temporal: u8) -> Svc {
        Svc {
            structure: Structure::default(),
            has_structure: false,
            structure_tag: None,
            scratch: Structure::default(),
            active_in: 0,
            cap_spatial,
            cap_temporal,
            estimate: None,
            up_since: None,
            last_down: None,
            last_up: None,
            up_wait: UP_AFTER_DOWN,
            rates: Rates::default(),
            choice: None,
            current: None,
            target: None,
            forwarded: [0; WORDS],
            decided: [0; WORDS],
            newest: None,
            high_seq: 0,
            high_ts: 0,
            switch_in_seq: 0,
            gap: false,
            started: false,
            last_request: None,
            switches: 0,
            clock: SwitchClock::default(),
        }
    }

    pub fn set_caps(&mut self, cap_spatial: u8, cap_temporal: u8) {
        if (cap_spatial, cap_temporal) != (self.cap_spatial, self.cap_temporal) {
            self.choice = None;
        }
        self.cap_spatial = cap_spatial;
        self.cap_temporal = cap_temporal;
    }

    pub fn caps(&self) -> (u8, u8) {
        (self.cap_spatial, self.cap_temporal)
    }

    /// The subscriber's share of its downlink estimate for this output (bits/s); `None`:
    /// caps only.
    pub fn set_estimate(&mut self, bps: Option<u64>) {
        self.estimate = bps;
    }

    /// The decode target being forwarded and its (spatial, temporal) layers.
    pub fn current(&self) -> Option<(u8, u8, u8)> {
        let c = self.current?;
        Some((c, self.dt_spatial(c), self.dt_temporal(c)))
    }

    /// The decode target the selector is heading for.
    pub fn target(&self) -> Option<u8> {
        self.target
    }

    /// Decode target switches made (the first one chosen is not a switch).
    pub fn switches(&self) -> u32 {
        self.switches
    }

    /// Measured bit rate of decode target `dt` over the last window.
    pub fn target_bps(&self, dt: u8) -> u64 {
        self.rates.bps(dt)
    }

    /// The frame the Dependency Descriptor value `dd` describes, parsed with the structure
    /// known now (a resend rewrites the active decode targets its first copy got with it,
    /// [`write_mask`]). `None` when it does not parse.
    pub fn frame_of(&mut self, dd: &[u8]) -> Option<Frame> {
        let known = self.has_structure.then_some(&self.structure);
        dd::parse(dd, known, &mut self.scratch).ok()
    }

    /// What this output's prober needs (engine/probe.rs): the measured rate of the best
    /// decode target within the caps that the publisher sends, with the margin for going up
    /// ([`UP_MARGIN_PCT`]), and whether the output is below it (in spatial or temporal
    /// layer) and may be probed for it at `now` (not within [`PROBE_AFTER_DOWN`] of a switch
    /// down). `None` before a structure, or when no decode target within the caps sends.
    pub fn probe_need(&self, now: Instant) -> Option<(u64, bool)> {
        if !self.has_structure {
            return None;
        }
        let s = &self.structure;
        let cap_s = self.cap_spatial.min(s.max_spatial);
        let cap_t = self.cap_temporal.min(s.max_temporal);
        let mut best = None::<(u8, u8, u64)>;
        for d in 0..s.decode_targets.min(32) {
            let (ds, dt) = (self.dt_spatial(d), self.dt_temporal(d));
            let bps = self.rates.bps(d);
            if self.active_in & (1 << d) == 0 || ds > cap_s || dt > cap_t || bps == 0 {
                continue;
            }
            if best.is_none_or(|(bs, bt, _)| (ds, dt) > (bs, bt)) {
                best = Some((ds, dt, bps));
            }
        }
        let (bs, bt, bps) = best?;
        let below = self
            .current
            .is_some_and(|c| (self.dt_spatial(c), self.dt_temporal(c)) < (bs, bt))
            && self
                .last_down
                .is_none_or(|d| now.saturating_duration_since(d) >= PROBE_AFTER_DOWN);
        Some((bps.saturating_mul(UP_MARGIN_PCT) / 100, below))
    }

    /// What the session statistics publish (docs/SHM.md): spatial layers as layers.
    pub fn stats(&self) -> LayerStats {
        LayerStats {
            current: self.current.map(|c| self.dt_spatial(c)),
            target: self.target.map_or(0, |t| self.dt_spatial(t)),
            count: if self.has_structure {
                self.structure.max_spatial + 1
            } else {
                0
            },
            switches: self.switches,
            switch_ms_last: self.clock.ms().0,
            switch_ms_max: self.clock.ms().1,
        }
    }

    fn dt_spatial(&self, dt: u8) -> u8 {
        self.structure.target_spatial[usize::from(dt) % dd::MAX_DECODE_TARGETS]
    }

    fn dt_temporal(&self, dt: u8) -> u8 {
        self.structure.target_temporal[usize::from(dt) % dd::MAX_DECODE_TARGETS]
    }

    fn bit(ring: &[u64; WORDS], n: u16) -> bool {
        let i = usize::from(n) % WINDOW;
        ring[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(ring: &mut [u64; WORDS], n: u16, on: bool) {
        let i = usize::from(n) % WINDOW;
        if on {
            ring[i / 64] |= 1 << (i % 64);
        } else {
            ring[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Is frame `n` within the window behind the newest frame?
    fn in_window(&self, n: u16) -> bool {
        self.newest
            .is_some_and(|h| usize::from(h.wrapping_sub(n)) < WINDOW && !seq_newer(n, h))
    }

    fn was_forwarded(&self, n: u16) -> bool {
        self.in_window(n) && Self::bit(&self.forwarded, n)
    }

    /// Advance the window to frame `n` (newer than the newest), forgetting what falls out.
    fn advance(&mut self, n: u16) {
        match self.newest {
            Some(h) if seq_newer(n, h) => {
                let steps = usize::from(n.wrapping_sub(h));
                if steps >= WINDOW {
                    self.forwarded = [0; WORDS];
                    self.decided = [0; WORDS];
                } else {
                    for k in 1..=steps {
                        let f = h.wrapping_add(k as u16);
                        Self::set(&mut self.forwarded, f, false);
                        Self::set(&mut self.decided, f, false);
                    }
                }
                self.newest = Some(n);
            }
            Some(_) => {}
            None => self.newest = Some(n),
        }
    }

    /// The decode targets active for this output when `c` is forwarded: those at or below
    /// it, among the publisher's active ones.
    fn mask_for(&self, c: u8) -> u32 {
        let (s, t) = (self.dt_spatial(c), self.dt_temporal(c));
        let mut m = 0u32;
        for d in 0..self.structure.decode_targets.min(32) {
            if self.dt_spatial(d) <= s && self.dt_temporal(d) <= t {
                m |= 1 << d;
            }
        }
        m & self.active_in
    }

    /// The highest active decode target (by spatial, then temporal layer) within the caps,
    /// above the lowest spatial layer only at the layer's full frame rate, and, with an
    /// estimate, whose measured rate it carries (one above the current one with
    /// [`UP_MARGIN_PCT`], held for [`UP_HOLD`] and no sooner than [`UP_AFTER_DOWN`] after a
    /// switch down, as for simulcast layers: measured rates move by the frame, and without
    /// the hold a shaped viewer went up and down between temporal layers every second or
    /// two); the lowest one within the caps when none fits.
    fn choose(&mut self, now: Instant) -> Option<u8> {
        let inputs = Choice {
            estimate: self.estimate,
            active_in: self.active_in,
            current: self.current,
            rates_epoch: self.rates.epoch,
            pick: None,
        };
        if let Some(c) = self
            .choice
            .filter(|c| Choice { pick: None, ..*c } == inputs)
        {
            return c.pick;
        }
        let s = &self.structure;
        let cap_s = self.cap_spatial.min(s.max_spatial);
        let cap_t = self.cap_temporal.min(s.max_temporal);
        let cur = self
            .current
            .map(|c| (self.dt_spatial(c), self.dt_temporal(c)));
        // Above the lowest spatial layer, only a spatial layer's full frame rate (its highest
        // active temporal layer within the caps) is a candidate, as simulcast layers are:
        // 640 wide at 7.5 frames/s is not a better picture than 320 at 30, and a K-SVC
        // target at a lower frame rate fitted the estimate by its measured rate while its key
        // frames did not fit the link (the viewer went up and down). Jitsi's bridge narrows
        // its layers the same way.
        let mut top_t = [None::<u8>; dd::MAX_SPATIAL];
        let mut low_s = None::<u8>;
        for d in 0..s.decode_targets.min(32) {
            let (ds, dt) = (self.dt_spatial(d), self.dt_temporal(d));
            if self.active_in & (1 << d) == 0 || ds > cap_s || dt > cap_t {
                continue;
            }
            let t = &mut top_t[usize::from(ds) % dd::MAX_SPATIAL];
            *t = Some(t.map_or(dt, |t| t.max(dt)));
            low_s = Some(low_s.map_or(ds, |l| l.min(ds)));
        }
        // (spatial, temporal, decode target) of: the best that fits, the best that fits at or
        // below the current one, the lowest within the caps.
        let (mut best, mut here, mut lowest) = (None::<(u8, u8, u8)>, None, None);
        for d in 0..s.decode_targets.min(32) {
            let (ds, dt) = (self.dt_spatial(d), self.dt_temporal(d));
            if self.active_in & (1 << d) == 0 || ds > cap_s || dt > cap_t {
                continue;
            }
            if Some(ds) != low_s && top_t[usize::from(ds) % dd::MAX_SPATIAL] != Some(dt) {
                continue;
            }
            if lowest.is_none_or(|(ls, lt, _)| (ds, dt) < (ls, lt)) {
                lowest = Some((ds, dt, d));
            }
            let up = cur.is_some_and(|c| (ds, dt) > c);
            let fits = self.estimate.is_none_or(|est| {
                let bps = self.rates.bps(d);
                let need = if up {
                    bps.saturating_mul(UP_MARGIN_PCT) / 100
                } else {
                    bps
                };
                need <= est
            });
            if !fits {
                continue;
            }
            if best.is_none_or(|(bs, bt, _)| (ds, dt) > (bs, bt)) {
                best = Some((ds, dt, d));
            }
            if !up && here.is_none_or(|(hs, ht, _)| (ds, dt) > (hs, ht)) {
                here = Some((ds, dt, d));
            }
        }
        let going_up = self.estimate.is_some()
            && matches!((best, cur), (Some((bs, bt, _)), Some(c)) if (bs, bt) > c);
        // Kept for the next frame unless heading up (the hold depends on the time).
        self.choice = (!going_up).then_some(Choice {
            pick: best.or(lowest).map(|(_, _, d)| d),
            ..inputs
        });
        let pick = if going_up {
            let since = *self.up_since.get_or_insert(now);
            let held = now.saturating_duration_since(since) >= UP_HOLD;
            let after_down = self
                .last_down
                .is_none_or(|d| now.saturating_duration_since(d) >= self.up_wait);
            if held && after_down {
                best
            } else {
                here
            }
        } else {
            self.up_since = None;
            best
        };
        pick.or(lowest).map(|(_, _, d)| d)
    }

    /// Is the switch from `current` to `target` one down in spatial layer after a sudden
    /// limit: the estimate carries less than half of the current decode target's rate?
    #[inline]
    fn sudden_drop(&self, current: u8, target: u8) -> bool {
        self.dt_spatial(target) < self.dt_spatial(current)
            && self
                .estimate
                .is_some_and(|e| e.saturating_mul(2) < self.rates.bps(current))
    }

    fn refs_forwarded(&self, f: &Frame) -> bool {
        f.references().all(|r| self.was_forwarded(r))
    }

    /// Is the chain protecting decode target `dt` intact at frame `f`?
    fn chain_intact(&self, f: &Frame, dt: u8) -> bool {
        if self.structure.chain_count == 0 {
            return true;
        }
        let chain = self.structure.protected_by[usize::from(dt) % dd::MAX_CHAINS];
        match f.chain_previous(chain) {
            None => true,
            Some(p) => !self.in_window(p) || Self::bit(&self.forwarded, p),
        }
    }

    fn request(&mut self, now: Instant) -> bool {
        match self.last_request {
            Some(t) if now.saturating_duration_since(t) < KEYFRAME_INTERVAL => false,
            _ => {
                self.last_request = Some(now);
                true
            }
        }
    }

    fn drop(&mut self, p: &SvcPacket<'_>, reason: SvcDrop, keyframe: bool) -> SvcDecision {
        if self.started && seq_newer(p.seq, self.high_seq) {
            self.gap = true;
        }
        SvcDecision::Drop { reason, keyframe }
    }

    /// Decide whether frame `f` (first packet seen) is forwarded.
    fn decide(&mut self, now: Instant, f: &Frame) -> Result<bool, (SvcDrop, bool)> {
        self.target = self.choose(now);
        let Some(target) = self.target else {
            return Err((SvcDrop::NotPresent, false));
        };
        self.clock
            .track(now, self.current.is_some_and(|c| c != target));
        let refs_ok = self.refs_forwarded(f);
        let mut switched = false;
        if self.current != Some(target)
            && refs_ok
            && f.dti(target) != Dti::NotPresent
            && (f.dti(target) == Dti::Switch || self.chain_intact(f, target))
        {
            if let Some(c) = self.current {
                self.switches = self.switches.saturating_add(1);
                self.clock.switched(now);
                let key = |d: u8| (self.dt_spatial(d), self.dt_temporal(d));
                if key(target) < key(c) {
                    let failed = self
                        .last_up
                        .is_some_and(|u| now.saturating_duration_since(u) < MAX_UP_WAIT);
                    self.up_wait = if failed {
                        (self.up_wait * 2).min(MAX_UP_WAIT)
                    } else {
                        UP_AFTER_DOWN
                    };
                    self.last_down = Some(now);
                } else {
                    self.last_up = Some(now);
                }
            }
            self.current = Some(target);
            switched = true;
        }
        let pending_spatial = self
            .current
            .is_none_or(|c| self.dt_spatial(c) != self.dt_spatial(target));
        let Some(c) = self.current else {
            let k = self.request(now);
            return Err((SvcDrop::NotPresent, k));
        };
        let wants_key = |s: &mut Svc| pending_spatial && s.request(now);
        if !switched && self.sudden_drop(c, target) {
            // Going down a spatial layer because the link fell under half of what the current
            // decode target needs: its frames are not sent while the lower layer's key frame
            // is awaited. On that link they only queue ahead of the key frame (as for
            // simulcast, layers.rs `Selector::on_packet`).
            let k = wants_key(self);
            return Err((SvcDrop::Shed, k));
        }
        if f.dti(c) == Dti::NotPresent {
            let k = wants_key(self);
            return Err((SvcDrop::NotPresent, k));
        }
        if !refs_ok {
            let broken = !self.chain_intact(f, c);
            let k = (broken || pending_spatial) && self.request(now);
            return Err((SvcDrop::Unreferenced, k));
        }
        // Forwarded; a key frame is still wanted while the chain is broken or a spatial
        // switch waits.
        Ok(!switched && (!self.chain_intact(f, c) || pending_spatial) && self.request(now))
    }

    /// Decide for one packet at `now`.
    pub fn on_packet(&mut self, now: Instant, p: &SvcPacket<'_>) -> SvcDecision {
        // The structure is parsed into the scratch copy and kept only when the whole
        // descriptor is valid.
        let known = self.has_structure.then_some(&self.structure);
        let cached = match (p.shared, self.structure_tag) {
            (Some(sh), Some(tag)) if self.has_structure => match sh.frame.get() {
                Some((t, f)) if *t == tag => Some(f),
                _ => None,
            },
            _ => None,
        };
        let own;
        let f: &Frame = match cached {
            Some(f) => f,
            None => match dd::parse(p.dd, known, &mut self.scratch) {
                Ok(f) => {
                    own = f;
                    if let (Some(sh), Some(tag)) = (p.shared, self.structure_tag) {
                        if !own.structure && self.has_structure {
                            let _ = sh.frame.set((tag, own));
                        }
                    }
                    &own
                }
                // No descriptor (a padding-only probe, RFC 3550 §5.1): nothing to decide by.
                Err(_) if p.dd.is_empty() => return self.drop(p, SvcDrop::NoStructure, false),
                Err(e) => {
                    let k = matches!(e, DdError::NoStructure) && self.request(now);
                    return self.drop(p, SvcDrop::NoStructure, k);
                }
            },
        };
        let mut reset = false;
        if f.structure {
            core::mem::swap(&mut self.structure, &mut self.scratch);
            self.has_structure = true;
            self.structure_tag = p.shared.map(|sh| match sh.tag.get() {
                Some(t) => t,
                None => {
                    let t = next_structure_tag();
                    sh.tag.set(Some(t));
                    t
                }
            });
            // A structure can renumber decode targets: choose again from this key frame.
            if self.structure != self.scratch {
                self.current = None;
                self.target = None;
                self.rates = Rates::default();
            }
            self.choice = None;
            reset = f.fdiff_count == 0;
        }
        if let Some(m) = f.active_targets {
            self.active_in = m;
        }
        if p.bytes > 0 {
            let present = f.present_targets() & self.structure.all_targets();
            self.rates.note(now, present, p.bytes);
        }
        let n = f.frame_number;
        // A key frame far from the window (a restarted encoder) starts it afresh.
        if reset && !self.in_window(n) {
            self.newest = None;
            self.forwarded = [0; WORDS];
            self.decided = [0; WORDS];
        }
        if self
            .newest
            .is_some_and(|h| !seq_newer(n, h) && !self.in_window(n))
        {
            return self.drop(p, SvcDrop::Late, false);
        }
        self.advance(n);
        let before = self.current;
        let mut keyframe = false;
        let decided = !Self::bit(&self.decided, n);
        if decided {
            Self::set(&mut self.decided, n, true);
            match self.decide(now, f) {
                Ok(k) => {
                    Self::set(&mut self.forwarded, n, true);
                    keyframe = k;
                }
                Err((reason, k)) => {
                    Self::set(&mut self.forwarded, n, false);
                    return self.drop(p, reason, k);
                }
            }
        } else if !Self::bit(&self.forwarded, n) {
            return self.drop(p, SvcDrop::NotPresent, false);
        }
        self.forward(p, f, before, (keyframe, decided))
    }

    fn forward(
        &mut self,
        p: &SvcPacket<'_>,
        f: &Frame,
        before: Option<u8>,
        (keyframe, decided): (bool, bool),
    ) -> SvcDecision {
        if self.started && !seq_newer(p.seq, self.switch_in_seq) && p.seq != self.switch_in_seq {
            return SvcDecision::Drop {
                reason: SvcDrop::Late,
                keyframe: false,
            };
        }
        let mut rebase = None;
        if self.started && self.gap && seq_newer(p.seq, self.high_seq) {
            self.gap = false;
            self.switch_in_seq = p.seq;
            rebase = Some(Rebase {
                gap: 1,
                ts_advance: p.ts.wrapping_sub(self.high_ts),
                new_layer: false,
            });
        }
        if !self.started || seq_newer(p.seq, self.high_seq) {
            if !self.started {
                self.switch_in_seq = p.seq;
            }
            self.started = true;
            self.high_seq = p.seq;
            self.high_ts = p.ts;
            if self.high_seq.wrapping_sub(self.switch_in_seq) > SWITCH_TRAIL {
                self.switch_in_seq = self.high_seq.wrapping_sub(SWITCH_TRAIL);
            }
        }
        let switched = self.current != before;
        // Only a packet that states a mask or starts a frame may get one (the mask is worked
        // out for those alone).
        let says = f.structure || f.active_targets.is_some();
        let mask = self
            .current
            .filter(|_| says || f.start_of_frame)
            .and_then(|c| {
                let m = self.mask_for(c);
                (says || m != self.active_in).then_some((m, f.mask_spot()))
            });
        let marker = f.end_of_frame
            && self
                .current
                .is_some_and(|c| f.spatial == self.dt_spatial(c));
        SvcDecision::Forward {
            rebase,
            out: SvcOut { mask, marker },
            switched,
            restart: switched && f.fdiff_count == 0,
            keyframe,
            decided,
        }
    }
}

#[cfg(test)]
#[path = "svc_tests.rs"]
mod tests;

/// The counter of a drop reason.
pub(super) fn counter(r: SvcDrop) -> Feedback {
    match r {
        SvcDrop::NotPresent => Feedback::SvcNotPresent,
        SvcDrop::Unreferenced => Feedback::SvcUnreferenced,
        SvcDrop::NoStructure => Feedback::SvcNoDescriptor,
        SvcDrop::Late => Feedback::SvcLate,
        SvcDrop::Shed => Feedback::LayerShed,
    }
}

/// Apply `out` to the copied RTP packet `slot[..n]` whose Dependency Descriptor element is
/// `id` (the subscriber's; `None`: it did not negotiate one, only the marker is written),
/// keeping `tag` bytes of `slot` free for SRTP. Returns the new length.
#[inline]
pub(super) fn rewrite(
    slot: &mut [u8],
    n: usize,
    id: Option<u8>,
    out: &SvcOut,
    tag: usize,
) -> usize {
    if out.marker {
        if let Some(mut p) = slot.get_mut(..n).and_then(|b| RtpMut::parse(b).ok()) {
            p.set_marker(true);
        }
    }
    match (out.mask, id) {
        (Some((mask, f)), Some(id)) => write_mask(slot, n, id, f, mask, tag),
        _ => n,
    }
}

/// Write the active decode targets `mask` into the Dependency Descriptor element `id` of the
/// RTP packet `slot[..n]` whose descriptor was parsed as `f`, keeping `tag` bytes of `slot`
/// free for SRTP. Returns the new length; a packet whose element is missing or whose block
/// cannot take the new value goes unchanged. On the stack.
#[inline]
pub(super) fn write_mask(
    slot: &mut [u8],
    n: usize,
    id: u8,
    f: dd::MaskSpot,
    mask: u32,
    tag: usize,
) -> usize {
    let mut src = [0u8; dd::MAX_LEN];
    let len = match RtpPacket::parse(&slot[..n.min(slot.len())])
        .ok()
        .and_then(|p| p.extension_by_id(id))
    {
        Some(v) if v.len() <= src.len() => {
            src[..v.len()].copy_from_slice(v);
            v.len()
        }
        _ => return n,
    };
    let mut out = [0u8; dd::MAX_LEN];
    let Ok(w) = dd::write_active_targets_at(&src[..len], f, mask, &mut out) else {
        return n;
    };
    let room = slot.len().saturating_sub(tag);
    match slot.get_mut(..room) {
        Some(buf) => rtp::set_extension_value(buf, n, id, &out[..w]).unwrap_or(n),
        None => n,
    }
}
