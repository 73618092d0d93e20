//! SRTP/SRTCP crypto contexts: one direction of one session.
//!
//! Owns: per-SSRC stream state (rollover counter and highest index, SRTCP index, replay
//! windows), the key derivation rate cache, master-key lifetime and rotation. Per packet it
//! neither allocates nor locks: every stream slot, replay bitmap and key cache is allocated in
//! [`Context::new`].

use super::batch::MacBatch;
use super::keys::{KeySet, SessionKeys};
use super::transform::{self, Protected, RTCP_HEADER};
use super::{Error, MasterKey, Profile};

/// Master-key lifetime for SRTP packets (RFC 3711 §9.2).
pub const SRTP_KEY_LIFETIME: u64 = 1 << 48;
/// Master-key lifetime for SRTCP packets (RFC 3711 §9.2).
pub const SRTCP_KEY_LIFETIME: u64 = 1 << 31;
/// Largest SRTCP index (31 bits, RFC 3711 §3.4).
const SRTCP_INDEX_MAX: u64 = (1 << 31) - 1;
/// Largest replay window accepted: beyond half the sequence space the ROC estimate
/// (RFC 3711 §3.3.1) and the window would disagree.
const MAX_WINDOW: u32 = 1 << 15;
/// Scratch halves for GCM (rotation retry, unencrypted SRTCP). Longer packets skip the retry.
const SCRATCH_LEN: usize = 2048;

/// Tunables for a [`Context`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextOptions {
    /// Replay window size in packets (RFC 3711 §3.3.2); default 1024. Rounded up to a multiple of 64.
    pub replay_window: u32,
    /// Key derivation rate (RFC 3711 §4.3.1): 0 = derive session keys once; otherwise a power of two
    /// between 1 and 2^24; session keys are re-derived every `kdr` packets of the index.
    pub kdr: u64,
    /// Maximum number of SSRCs tracked by one context (state is preallocated).
    pub max_streams: usize,
    /// After `install_key`, how many packets authenticated under the new key end the grace window
    /// during which the previous key is still tried for in-flight packets.
    pub rotation_grace: u32,
}

impl Default for ContextOptions {
    fn default() -> Self {
        ContextOptions {
            replay_window: 1024,
            kdr: 0,
            max_streams: 16,
            rotation_grace: 1024,
        }
    }
}

/// Index state of one SRTP or SRTCP flow of one SSRC.
#[derive(Clone, Copy, Default)]
struct Flow {
    /// A packet was accepted (or sent); `highest` is meaningful.
    started: bool,
    /// Highest accepted (or sent) index: ROC ‖ SEQ for SRTP, the SRTCP index for SRTCP.
    highest: u64,
    /// ROC to assume for the first packet (set by [`Context::set_roc`]).
    initial_roc: u32,
}

/// Session keys cached for the current epoch r = index DIV kdr (only with kdr ≠ 0).
struct Cached {
    r: u64,
    generation: u32,
    keys: SessionKeys,
}

struct Stream {
    ssrc: u32,
    rtp: Flow,
    rtcp: Flow,
    /// `[SRTP, SRTCP]` key caches; allocated in `Context::new` only when kdr ≠ 0.
    cache: Option<Box<[Option<Cached>; 2]>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Current,
    Previous,
}

/// One direction of one SRTP session.
pub struct Context {
    profile: Profile,
    opts: ContextOptions,
    window_bits: u64,
    words: usize,
    current: KeySet,
    previous: Option<KeySet>,
    grace_left: u32,
    streams: Vec<Stream>,
    used: usize,
    /// Replay bitmaps: per stream slot, `words` u64 for SRTP then `words` for SRTCP. Bit
    /// `i mod window_bits` is set when index `i` (within the window) was accepted.
    bitmaps: Vec<u64>,
    scratch: Vec<u8>,
}

impl Context {
    pub fn new(key: MasterKey, opts: ContextOptions) -> Result<Context, Error> {
        if opts.kdr != 0 && (!opts.kdr.is_power_of_two() || opts.kdr > 1 << 24) {
            return Err(Error::InvalidOptions);
        }
        if opts.max_streams == 0 || opts.replay_window > MAX_WINDOW {
            return Err(Error::InvalidOptions);
        }
        let window_bits = u64::from(opts.replay_window.max(1).div_ceil(64) * 64);
        let words = (window_bits / 64) as usize;
        let streams = (0..opts.max_streams)
            .map(|_| Stream {
                ssrc: 0,
                rtp: Flow::default(),
                rtcp: Flow::default(),
                cache: (opts.kdr != 0).then(|| Box::new([None, None])),
            })
            .collect();
        let profile = key.profile();
        Ok(Context {
            profile,
            opts,
            window_bits,
            words,
            current: KeySet::new(key, 0),
            previous: None,
            grace_left: 0,
            streams,
            used: 0,
            bitmaps: vec![0; opts.max_streams * 2 * words],
            scratch: if profile.is_aead() {
                vec![0; 2 * SCRATCH_LEN]
            } else {
                Vec::new()
            },
        })
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    pub fn options(&self) -> ContextOptions {
        self.opts
    }

    /// Number of SSRCs this context tracks.
    pub fn streams(&self) -> usize {
        self.used
    }

    /// True while a previous master key is still tried for in-flight packets.
    pub fn in_rotation_grace(&self) -> bool {
        self.previous.is_some()
    }

    /// Install a new master key (same profile). Protect uses it at once; unprotect tries it
    /// first and falls back to the old key until `rotation_grace` packets have authenticated
    /// under the new one. ROC, SRTCP index and replay state are per SSRC and continue.
    pub fn install_key(&mut self, key: MasterKey) -> Result<(), Error> {
        if key.profile() != self.profile {
            return Err(Error::UnsupportedProfile);
        }
        let generation = self.current.generation.wrapping_add(1);
        let old = core::mem::replace(&mut self.current, KeySet::new(key, generation));
        if self.opts.rotation_grace > 0 {
            self.previous = Some(old);
            self.grace_left = self.opts.rotation_grace;
        } else {
            self.previous = None;
        }
        Ok(())
    }

    /// Set the rollover counter of `ssrc` (RFC 3711 §3.3.1; e.g. signalled out of band, or
    /// `sluicectl srtp --roc N`). A new SSRC takes a stream slot. The replay window restarts.
    pub fn set_roc(&mut self, ssrc: u32, roc: u32) -> Result<(), Error> {
        let slot = match self.find(ssrc) {
            Some(s) => s,
            None => self.alloc(ssrc)?,
        };
        let st = &mut self.streams[slot];
        st.rtp.initial_roc = roc;
        if st.rtp.started {
            st.rtp.highest = (u64::from(roc) << 16) | (st.rtp.highest & 0xffff);
        }
        let words = self.words;
        self.bitmaps[slot * 2 * words..slot * 2 * words + words].fill(0);
        Ok(())
    }

    /// Continue `ssrc`'s SRTP flow after packet index `highest` (ROC ‖ SEQ, RFC 3711 §3.3.1),
    /// for state a previous relay process left in shm: the flow counts as started at
    /// `highest` with every index at or below it already seen. Inbound, the next packets'
    /// indices are estimated from it (Appendix A) whatever the first one claims, and replays
    /// of anything up to it are refused (§3.3.2). A new SSRC takes a stream slot.
    pub fn resume_rtp(&mut self, ssrc: u32, highest: u64) -> Result<(), Error> {
        if highest >= 1 << 48 {
            return Err(Error::KeyExpired);
        }
        self.resume(ssrc, false, highest)
    }

    /// Continue `ssrc`'s SRTCP flow after `highest` (RFC 3711 §3.4), like
    /// [`Context::resume_rtp`]: [`Context::protect_rtcp`] continues at `highest + 1` (no SRTCP
    /// index, hence no keystream, used twice under one key, §9.1) and
    /// [`Context::unprotect_rtcp`] refuses anything up to it.
    pub fn resume_rtcp(&mut self, ssrc: u32, highest: u64) -> Result<(), Error> {
        if highest > SRTCP_INDEX_MAX {
            return Err(Error::KeyExpired);
        }
        self.resume(ssrc, true, highest)
    }

    fn resume(&mut self, ssrc: u32, rtcp: bool, highest: u64) -> Result<(), Error> {
        let slot = match self.find(ssrc) {
            Some(s) => s,
            None => self.alloc(ssrc)?,
        };
        let st = &mut self.streams[slot];
        let flow = if rtcp { &mut st.rtcp } else { &mut st.rtp };
        if flow.started && flow.highest >= highest {
            return Ok(());
        }
        flow.started = true;
        flow.highest = highest;
        if !rtcp {
            flow.initial_roc = (highest >> 16) as u32;
        }
        self.bitmap(slot, rtcp).fill(u64::MAX);
        Ok(())
    }

    /// The highest SRTCP index sent or accepted for `ssrc`, `None` before the first.
    pub fn srtcp_index(&self, ssrc: u32) -> Option<u64> {
        self.find(ssrc)
            .map(|s| self.streams[s].rtcp)
            .filter(|f| f.started)
            .map(|f| f.highest)
    }

    /// The rollover counter of `ssrc`, if the context tracks it.
    pub fn roc(&self, ssrc: u32) -> Option<u32> {
        self.find(ssrc).map(|s| {
            let f = &self.streams[s].rtp;
            if f.started {
                (f.highest >> 16) as u32
            } else {
                f.initial_roc
            }
        })
    }

    /// Test hook: pretend the current master key has already protected or unprotected this
    /// many SRTP and SRTCP packets (RFC 3711 §9.2 lifetime).
    #[cfg(test)]
    pub(crate) fn set_key_usage(&mut self, srtp: u64, srtcp: u64) {
        self.current.srtp_packets = srtp;
        self.current.srtcp_packets = srtcp;
    }

    fn find(&self, ssrc: u32) -> Option<usize> {
        self.streams[..self.used]
            .iter()
            .position(|s| s.ssrc == ssrc)
    }

    fn alloc(&mut self, ssrc: u32) -> Result<usize, Error> {
        if self.used == self.streams.len() {
            return Err(Error::TooManyStreams);
        }
        let slot = self.used;
        self.used += 1;
        let st = &mut self.streams[slot];
        st.ssrc = ssrc;
        st.rtp = Flow::default();
        st.rtcp = Flow::default();
        if let Some(c) = st.cache.as_mut() {
            c[0] = None;
            c[1] = None;
        }
        let w = self.words;
        self.bitmaps[slot * 2 * w..(slot + 1) * 2 * w].fill(0);
        Ok(slot)
    }

    fn keyset(&self, which: Which) -> &KeySet {
        match (which, &self.previous) {
            (Which::Previous, Some(p)) => p,
            _ => &self.current,
        }
    }

    /// Run `f` with the session keys for `index` (RFC 3711 §4.3.1: r = index DIV kdr). Keys for
    /// the current key and the stream's current epoch come from the cache; a newer epoch
    /// replaces the cache; an older epoch (reordered packet) or the previous key derives on the fly.
    fn with_keys<R>(
        &mut self,
        which: Which,
        slot: Option<usize>,
        rtcp: bool,
        index: u64,
        f: impl FnOnce(&SessionKeys) -> R,
    ) -> R {
        let r = index.checked_div(self.opts.kdr).unwrap_or(0);
        let ks = self.keyset(which);
        if r == 0 {
            return f(if rtcp { &ks.rtcp } else { &ks.rtp });
        }
        let generation = ks.generation;
        let cacheable = which == Which::Current && slot.is_some();
        if cacheable {
            // `slot` is Some and kdr ≠ 0, so the stream has a cache (allocated in `new`).
            if let Some(cache) = slot.and_then(|s| self.streams[s].cache.as_mut()) {
                let entry = &mut cache[usize::from(rtcp)];
                let stale = match entry {
                    Some(c) => c.generation != generation || r > c.r,
                    None => true,
                };
                if stale {
                    *entry = Some(Cached {
                        r,
                        generation,
                        keys: self.current.derive(rtcp, r),
                    });
                }
                if let Some(c) = entry.as_ref().filter(|c| c.r == r) {
                    return f(&c.keys);
                }
            }
        }
        let keys = self.keyset(which).derive(rtcp, r);
        f(&keys)
    }

    fn bitmap(&mut self, slot: usize, rtcp: bool) -> &mut [u64] {
        let w = self.words;
        let start = slot * 2 * w + if rtcp { w } else { 0 };
        &mut self.bitmaps[start..start + w]
    }

    /// RFC 3711 §3.3.2: reject an index already seen or older than the window.
    fn replay_check(&self, slot: Option<usize>, rtcp: bool, index: u64) -> Result<(), Error> {
        let Some(slot) = slot else { return Ok(()) };
        let flow = if rtcp {
            &self.streams[slot].rtcp
        } else {
            &self.streams[slot].rtp
        };
        if !flow.started || index > flow.highest {
            return Ok(());
        }
        if flow.highest - index >= self.window_bits {
            return Err(Error::TooOld);
        }
        let w = self.words;
        let start = slot * 2 * w + if rtcp { w } else { 0 };
        let pos = index % self.window_bits;
        if self.bitmaps[start + (pos / 64) as usize] >> (pos % 64) & 1 == 1 {
            return Err(Error::Replayed);
        }
        Ok(())
    }

    /// Record an authenticated index in the replay window and advance the highest index.
    fn replay_record(&mut self, slot: usize, rtcp: bool, index: u64) {
        let wb = self.window_bits;
        let flow = if rtcp {
            self.streams[slot].rtcp
        } else {
            self.streams[slot].rtp
        };
        let bits = self.bitmap(slot, rtcp);
        if !flow.started || index >= flow.highest + wb {
            bits.fill(0);
        } else if index > flow.highest {
            for i in flow.highest + 1..index {
                let p = i % wb;
                bits[(p / 64) as usize] &= !(1u64 << (p % 64));
            }
        }
        let p = index % wb;
        bits[(p / 64) as usize] |= 1u64 << (p % 64);
        let flow = if rtcp {
            &mut self.streams[slot].rtcp
        } else {
            &mut self.streams[slot].rtp
        };
        if !flow.started || index > flow.highest {
            flow.highest = index;
        }
        flow.started = true;
    }

    /// After a successful unprotect under `which`: count the packet and advance the rotation.
    fn after_auth(&mut self, which: Which, rtcp: bool) {
        let ks = match (which, self.previous.as_mut()) {
            (Which::Previous, Some(p)) => p,
            _ => &mut self.current,
        };
        if rtcp {
            ks.srtcp_packets += 1;
        } else {
            ks.srtp_packets += 1;
        }
        if which == Which::Current && self.previous.is_some() {
            self.grace_left = self.grace_left.saturating_sub(1);
            if self.grace_left == 0 {
                self.previous = None;
            }
        }
    }

    fn expired(&self, which: Which, rtcp: bool) -> bool {
        let ks = self.keyset(which);
        if rtcp {
            ks.srtcp_packets >= SRTCP_KEY_LIFETIME
        } else {
            ks.srtp_packets >= SRTP_KEY_LIFETIME
        }
    }

    /// Protect the RTP packet `buf[..len]` in place; returns the SRTP length.
    /// Needs `buf.len() >= len + profile().srtp_overhead()`.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        self.protect_rtp_with(buf, len, |k, tag_len, buf, len, hdr, ssrc, index| {
            transform::protect_rtp(k, tag_len, buf, len, hdr, ssrc, index)
        })
    }

    /// [`Context::protect_rtp`] for one packet of a fan-out: `buf` is the packet's slot, which
    /// starts at byte `at` of the transmit arena later handed to [`MacBatch::finish`]. With a
    /// multi-buffer `batch` an AES-CM packet is encrypted here and its HMAC-SHA1 tag is left to
    /// the batch (the returned length already counts it); everything else, and every packet
    /// once the batch is full, is protected at once. The packet is not valid SRTP until
    /// `finish` has run over the arena.
    pub fn protect_rtp_batched(
        &mut self,
        buf: &mut [u8],
        len: usize,
        at: usize,
        batch: &mut MacBatch,
    ) -> Result<usize, Error> {
        if !batch.has_room() {
            return self.protect_rtp(buf, len);
        }
        let p = self.protect_rtp_with(buf, len, |k, tag_len, buf, len, hdr, ssrc, index| {
            (
                transform::protect_rtp_deferred(k, tag_len, buf, len, hdr, ssrc, index),
                tag_len,
            )
        })?;
        Ok(match p {
            (Protected::Done(n), _) => n,
            (Protected::Mac { len, key, roc }, tag_len) => {
                batch.push(key, at, len, roc, tag_len);
                len + tag_len
            }
        })
    }

    /// [`Context::protect_rtp_batched`] of the RTP packet `buf[..len] ‖ rest`, written into
    /// `buf` without first copying `rest` there (a fan-out's outputs share one decrypted
    /// payload): `buf[..len]` is the packet's start, at least its whole header (already
    /// rewritten for this output), and `rest` the remainder of its payload, padding included.
    /// The payload is encrypted from `rest` straight into `buf[len..]`; header, ciphertext
    /// and tag are byte for byte what `protect_rtp_batched` writes after copying `rest` to
    /// `buf[len..]`. Needs `buf.len() >= len + rest.len() + profile().srtp_overhead()`.
    pub fn protect_rtp_batched_from(
        &mut self,
        buf: &mut [u8],
        len: usize,
        rest: &[u8],
        at: usize,
        batch: &mut MacBatch,
    ) -> Result<usize, Error> {
        let defer = batch.has_room();
        let extra = rest.len();
        let p =
            self.protect_rtp_extra(buf, len, extra, |k, tag_len, buf, len, hdr, ssrc, index| {
                let p = transform::protect_rtp_from(
                    k,
                    tag_len,
                    buf,
                    len,
                    rest,
                    hdr,
                    (ssrc, index),
                    defer,
                );
                (p, tag_len)
            })?;
        Ok(match p {
            (Protected::Done(n), _) => n,
            (Protected::Mac { len, key, roc }, tag_len) => {
                batch.push(key, at, len, roc, tag_len);
                len + tag_len
            }
        })
    }

    /// The stream bookkeeping of RTP protect around the transform `f`.
    #[inline]
    #[allow(clippy::type_complexity)]
    fn protect_rtp_with<R>(
        &mut self,
        buf: &mut [u8],
        len: usize,
        f: impl FnOnce(&SessionKeys, usize, &mut [u8], usize, usize, u32, u64) -> R,
    ) -> Result<R, Error> {
        self.protect_rtp_extra(buf, len, 0, f)
    }

    /// [`Context::protect_rtp_with`] for a packet that continues `extra` bytes beyond
    /// `buf[..len]` (elsewhere, see [`Context::protect_rtp_batched_from`]); `buf` needs room
    /// for them and the tag.
    #[inline]
    #[allow(clippy::type_complexity)]
    fn protect_rtp_extra<R>(
        &mut self,
        buf: &mut [u8],
        len: usize,
        extra: usize,
        f: impl FnOnce(&SessionKeys, usize, &mut [u8], usize, usize, u32, u64) -> R,
    ) -> Result<R, Error> {
        let tag_len = self.profile.srtp_overhead();
        if len > buf.len() {
            return Err(Error::Malformed);
        }
        let h = transform::rtp_header(&buf[..len])?;
        if buf.len() < len + extra + tag_len {
            return Err(Error::BufferTooSmall);
        }
        if self.expired(Which::Current, false) {
            return Err(Error::KeyExpired);
        }
        let slot = match self.find(h.ssrc) {
            Some(s) => s,
            None => self.alloc(h.ssrc)?,
        };
        let flow = self.streams[slot].rtp;
        // The sender estimates its own index the same way (RFC 3711 §3.3.1): a sequence number
        // that wrapped since the highest sent one bumps the ROC.
        let index = if flow.started {
            estimate_index(flow.highest, h.seq)?
        } else {
            (u64::from(flow.initial_roc) << 16) | u64::from(h.seq)
        };
        let out = self.with_keys(Which::Current, Some(slot), false, index, |k| {
            f(k, tag_len, buf, len, h.len, h.ssrc, index)
        });
        let flow = &mut self.streams[slot].rtp;
        if !flow.started || index > flow.highest {
            flow.highest = index;
        }
        flow.started = true;
        self.current.srtp_packets += 1;
        Ok(out)
    }

    /// Unprotect the SRTP packet `buf[..len]` in place; returns the RTP length.
    /// Order (RFC 3711 §3.3): replay check, authenticate, decrypt, then record.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        let tag_len = self.profile.srtp_overhead();
        if len > buf.len() {
            return Err(Error::Malformed);
        }
        let h = transform::rtp_header(&buf[..len])?;
        if len < h.len + tag_len {
            return Err(Error::Malformed);
        }
        let slot = self.find(h.ssrc);
        if slot.is_none() && self.used == self.streams.len() {
            return Err(Error::TooManyStreams);
        }
        let index = match slot.map(|s| self.streams[s].rtp) {
            Some(f) if f.started => estimate_index(f.highest, h.seq)?,
            Some(f) => (u64::from(f.initial_roc) << 16) | u64::from(h.seq),
            None => u64::from(h.seq),
        };
        self.replay_check(slot, false, index)?;
        let which = self.authenticate(buf, len, |ctx, which, buf| {
            if ctx.expired(which, false) {
                return Err(Error::KeyExpired);
            }
            ctx.with_keys(which, slot, false, index, |k| {
                transform::unprotect_rtp(k, tag_len, buf, len, h.len, h.ssrc, index)
            })
        })?;
        let slot = match slot {
            Some(s) => s,
            None => self.alloc(h.ssrc)?,
        };
        self.replay_record(slot, false, index);
        self.after_auth(which, false);
        Ok(len - tag_len)
    }

    /// Protect the RTCP packet `buf[..len]` in place (E = 1); returns the SRTCP length.
    /// Needs `buf.len() >= len + profile().srtcp_overhead()`.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        if len > buf.len() {
            return Err(Error::Malformed);
        }
        let ssrc = transform::rtcp_ssrc(&buf[..len])?;
        if buf.len() < len + self.profile.srtcp_overhead() {
            return Err(Error::BufferTooSmall);
        }
        if self.expired(Which::Current, true) {
            return Err(Error::KeyExpired);
        }
        let slot = match self.find(ssrc) {
            Some(s) => s,
            None => self.alloc(ssrc)?,
        };
        let flow = self.streams[slot].rtcp;
        let index = if flow.started { flow.highest + 1 } else { 0 };
        if index > SRTCP_INDEX_MAX {
            // The 31-bit SRTCP index must not wrap under one master key (RFC 3711 §3.4, §9.2).
            return Err(Error::KeyExpired);
        }
        let out = self.with_keys(Which::Current, Some(slot), true, index, |k| {
            transform::protect_rtcp(k, buf, len, ssrc, index as u32)
        });
        let flow = &mut self.streams[slot].rtcp;
        flow.highest = index;
        flow.started = true;
        self.current.srtcp_packets += 1;
        Ok(out)
    }

    /// Unprotect the SRTCP packet `buf[..len]` in place; returns the RTCP length.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        if len > buf.len() {
            return Err(Error::Malformed);
        }
        let ssrc = transform::rtcp_ssrc(&buf[..len])?;
        if len < RTCP_HEADER + self.profile.srtcp_overhead() {
            return Err(Error::Malformed);
        }
        let slot = self.find(ssrc);
        if slot.is_none() && self.used == self.streams.len() {
            return Err(Error::TooManyStreams);
        }
        let index =
            u64::from(transform::srtcp_eidx(&self.current.rtcp, buf, len) & !transform::E_FLAG);
        self.replay_check(slot, true, index)?;
        let which = self.authenticate(buf, len, |ctx, which, buf| {
            if ctx.expired(which, true) {
                return Err(Error::KeyExpired);
            }
            let mut scratch = core::mem::take(&mut ctx.scratch);
            let res = ctx.with_keys(which, slot, true, index, |k| {
                transform::unprotect_rtcp(
                    k,
                    buf,
                    len,
                    ssrc,
                    scratch.get_mut(SCRATCH_LEN..).unwrap_or(&mut []),
                )
            });
            ctx.scratch = scratch;
            res
        })?;
        let slot = match slot {
            Some(s) => s,
            None => self.alloc(ssrc)?,
        };
        self.replay_record(slot, true, index);
        self.after_auth(which, true);
        Ok(len - self.profile.srtcp_overhead())
    }

    /// Try the current key, then (during the rotation grace) the previous one. A failed GCM
    /// open may overwrite the payload, so the packet is saved to the scratch buffer first and
    /// restored before the second try; counter mode authenticates before decrypting and needs no copy.
    /// (The first half of the scratch holds the saved packet; the second half is the SRTCP
    /// unencrypted-AAD buffer.)
    fn authenticate(
        &mut self,
        buf: &mut [u8],
        len: usize,
        mut attempt: impl FnMut(&mut Context, Which, &mut [u8]) -> Result<usize, Error>,
    ) -> Result<Which, Error> {
        let retry = self.previous.is_some();
        let saved = retry && self.profile.is_aead() && len <= SCRATCH_LEN;
        if saved {
            self.scratch[..len].copy_from_slice(&buf[..len]);
        }
        match attempt(self, Which::Current, buf) {
            Ok(_) => Ok(Which::Current),
            Err(Error::AuthFailed) if retry && (saved || !self.profile.is_aead()) => {
                if saved {
                    buf[..len].copy_from_slice(&self.scratch[..len]);
                }
                attempt(self, Which::Previous, buf).map(|_| Which::Previous)
            }
            Err(e) => Err(e),
        }
    }
}

/// RFC 3711 §3.3.1 / Appendix A: the packet index for `seq` given the highest index seen.
fn estimate_index(highest: u64, seq: u16) -> Result<u64, Error> {
    let roc = highest >> 16;
    let s_l = (highest & 0xffff) as u32;
    let seq32 = u32::from(seq);
    let v = if s_l < 0x8000 {
        if seq32 > s_l + 0x8000 {
            // From before ROC 0: older than anything this stream can accept.
            roc.checked_sub(1).ok_or(Error::TooOld)?
        } else {
            roc
        }
    } else if seq32 + 0x8000 < s_l {
        roc + 1
    } else {
        roc
    };
    if v > u64::from(u32::MAX) {
        // The 48-bit index would wrap: the master key is spent (RFC 3711 §3.3.1, §9.2).
        return Err(Error::KeyExpired);
    }
    Ok((v << 16) | u64::from(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_follows_appendix_a() {
        assert_eq!(estimate_index(0xfff0, 5).unwrap(), 0x1_0005);
        assert_eq!(estimate_index(0x1_0005, 0xfff0).unwrap(), 0xfff0);
        assert_eq!(estimate_index(0x10, 0xfff0), Err(Error::TooOld));
        assert_eq!(estimate_index(0x3_1234, 0x1235).unwrap(), 0x3_1235);
        assert_eq!(estimate_index(0xffff_ffff_fff0, 3), Err(Error::KeyExpired));
    }

    fn rtp(ssrc: u32, seq: u16, room: usize) -> (Vec<u8>, usize) {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0x42; 20]);
        let n = p.len();
        p.resize(n + room, 0);
        (p, n)
    }

    fn rtcp(ssrc: u32, room: usize) -> (Vec<u8>, usize) {
        let mut p = vec![0x80, 200, 0, 6];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0x17; 20]);
        let n = p.len();
        p.resize(n + room, 0);
        (p, n)
    }

    #[test]
    fn master_key_lifetime_is_enforced() {
        for profile in Profile::ALL {
            let km = vec![5u8; profile.key_material_len()];
            let key = MasterKey::new(profile, &km).unwrap();
            let mut tx = Context::new(key, ContextOptions::default()).unwrap();
            let mut rx = Context::new(key, ContextOptions::default()).unwrap();
            tx.set_key_usage(SRTP_KEY_LIFETIME - 1, SRTCP_KEY_LIFETIME - 1);
            rx.set_key_usage(SRTP_KEY_LIFETIME - 1, SRTCP_KEY_LIFETIME - 1);
            // The last packet under the key goes through, the next one does not.
            let (mut b, n) = rtp(1, 1, 16);
            let s = tx.protect_rtp(&mut b, n).unwrap();
            rx.unprotect_rtp(&mut b, s).unwrap();
            let (mut b, n) = rtp(1, 2, 16);
            assert_eq!(tx.protect_rtp(&mut b, n), Err(Error::KeyExpired));
            let (mut c, m) = rtcp(1, 20);
            let s = tx.protect_rtcp(&mut c, m).unwrap();
            rx.unprotect_rtcp(&mut c, s).unwrap();
            let (mut c, m) = rtcp(1, 20);
            assert_eq!(tx.protect_rtcp(&mut c, m), Err(Error::KeyExpired));
            // The receiver refuses too.
            let mut tx2 = Context::new(key, ContextOptions::default()).unwrap();
            let (mut b, n) = rtp(1, 3, 16);
            let s = tx2.protect_rtp(&mut b, n).unwrap();
            assert_eq!(rx.unprotect_rtp(&mut b, s), Err(Error::KeyExpired));
            // A new master key restores service; stream state carries on.
            let key2 = MasterKey::new(profile, &vec![6u8; profile.key_material_len()]).unwrap();
            tx.install_key(key2).unwrap();
            let (mut b, n) = rtp(1, 2, 16);
            tx.protect_rtp(&mut b, n).unwrap();
            assert_eq!(tx.roc(1), Some(0));
        }
    }

    #[test]
    fn srtcp_index_does_not_wrap() {
        let key = MasterKey::new(Profile::AeadAes128Gcm, &[1u8; 28]).unwrap();
        let mut tx = Context::new(key, ContextOptions::default()).unwrap();
        let (mut c, m) = rtcp(9, 20);
        tx.protect_rtcp(&mut c, m).unwrap();
        tx.streams[0].rtcp.highest = SRTCP_INDEX_MAX - 1;
        let (mut c, m) = rtcp(9, 20);
        tx.protect_rtcp(&mut c, m).unwrap();
        let (mut c, m) = rtcp(9, 20);
        assert_eq!(tx.protect_rtcp(&mut c, m), Err(Error::KeyExpired));
    }

    #[test]
    fn kdr_cache_follows_epochs() {
        let key = MasterKey::new(Profile::Aes128CmSha1_80, &[3u8; 30]).unwrap();
        let opts = ContextOptions {
            kdr: 16,
            ..ContextOptions::default()
        };
        let mut tx = Context::new(key, opts).unwrap();
        let mut rx = Context::new(key, opts).unwrap();
        let mut wire = Vec::new();
        for seq in 0..64u16 {
            let (mut b, n) = rtp(7, seq, 10);
            let s = tx.protect_rtp(&mut b, n).unwrap();
            b.truncate(s);
            wire.push(b);
        }
        // In order up to epoch 3, then a late packet from epoch 1 (derived on the fly).
        for w in &wire[..50] {
            let mut b = w.clone();
            rx.unprotect_rtp(&mut b, w.len()).unwrap();
        }
        let cached = |c: &Context| c.streams[0].cache.as_ref().unwrap()[0].as_ref().unwrap().r;
        assert_eq!(cached(&rx), 3);
        let mut late = wire[50].clone();
        let mut b = wire[20].clone();
        assert_eq!(
            rx.unprotect_rtp(&mut b, wire[20].len()),
            Err(Error::Replayed)
        );
        rx.unprotect_rtp(&mut late, wire[50].len()).unwrap();
        assert_eq!(cached(&rx), 3);
    }
}
