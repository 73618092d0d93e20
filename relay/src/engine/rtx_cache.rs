//! Retransmission cache: the packets a publisher stream sent lately, kept once (decrypted, as
//! received) so that a subscriber's NACK (RFC 4585 §6.2.1) can be answered by the relay, and
//! per subscriber output stream the map from the sequence numbers it was sent to the source
//! packets (the shape LiveKit uses: one shared payload, per-subscriber metadata).
//!
//! Both are rings allocated once, when a stream is set up; inserting and looking up never
//! allocate, lock or read the clock (`now` is passed in). Packets are addressed by their SRTP
//! packet index (ROC ‖ SEQ, RFC 3711 §3.3.1), which keeps counting across sequence-number
//! wraps, so a slot is never confused with the packet 65 536 before it.
//!
//! Owns: the two ring structures and their rules (eviction by count and age, late packets,
//! one resend per packet and subscriber per round trip). May not touch: SRTP, sockets, shm.
//!
//! The forwarding path fills one [`StreamCache`] per publisher stream after unprotect (once per
//! packet, whatever the fan-out) and records one [`SentMap`] entry per forwarded copy; the
//! feedback path (`nack.rs`) answers NACKs from them.

use std::time::{Duration, Instant};

/// The largest packet the cache keeps: an IPv4 Ethernet MTU's UDP payload. WebRTC senders stay
/// well below it (about 1200 bytes); larger packets are not cached ([`Insert::TooBig`]).
pub const SLOT_BYTES: usize = 1472;

const EMPTY: u64 = u64::MAX;

#[derive(Debug, Clone, Copy)]
struct Meta {
    index: u64,
    len: u16,
    at: Option<Instant>,
}

const NO_META: Meta = Meta {
    index: EMPTY,
    len: 0,
    at: None,
};

/// What [`StreamCache::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    Stored,
    /// Longer than [`SLOT_BYTES`].
    TooBig,
    /// Older than every packet the ring can still hold (or its slot already holds a newer
    /// packet): a late arrival from before the window.
    TooOld,
}

/// What [`StreamCache::get`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    Hit(&'a [u8]),
    /// Cached, but older than the age limit.
    Expired,
    /// Never received, or overwritten by newer packets.
    Missing,
}

/// The last packets of one publisher stream, by packet index.
#[derive(Debug)]
pub struct StreamCache {
    data: Box<[u8]>,
    meta: Box<[Meta]>,
    mask: u64,
    newest: Option<u64>,
}

impl StreamCache {
    /// A ring for `capacity` packets (rounded up to a power of two, at least 16).
    pub fn new(capacity: usize) -> StreamCache {
        let cap = capacity.max(16).next_power_of_two();
        StreamCache {
            data: vec![0u8; cap * SLOT_BYTES].into_boxed_slice(),
            meta: vec![NO_META; cap].into_boxed_slice(),
            mask: cap as u64 - 1,
            newest: None,
        }
    }

    /// Packets the ring holds at most.
    pub fn capacity(&self) -> usize {
        self.meta.len()
    }

    /// The highest index stored.
    pub fn newest(&self) -> Option<u64> {
        self.newest
    }

    /// Keep `packet` (a plain RTP packet) as packet `index`, received at `now`.
    pub fn insert(&mut self, index: u64, now: Instant, packet: &[u8]) -> Insert {
        if packet.len() > SLOT_BYTES {
            return Insert::TooBig;
        }
        let cap = self.meta.len() as u64;
        if self.newest.is_some_and(|n| index.saturating_add(cap) <= n) {
            return Insert::TooOld;
        }
        let slot = (index & self.mask) as usize;
        let m = &mut self.meta[slot];
        if m.index != EMPTY && m.index > index {
            return Insert::TooOld;
        }
        *m = Meta {
            index,
            len: packet.len() as u16,
            at: Some(now),
        };
        self.data[slot * SLOT_BYTES..slot * SLOT_BYTES + packet.len()].copy_from_slice(packet);
        if self.newest.is_none_or(|n| index > n) {
            self.newest = Some(index);
        }
        Insert::Stored
    }

    /// Packet `index`, if the ring still holds it and it is at most `max_age` old at `now`.
    pub fn get(&self, index: u64, now: Instant, max_age: Duration) -> Lookup<'_> {
        let slot = (index & self.mask) as usize;
        let m = self.meta[slot];
        if m.index != index {
            return Lookup::Missing;
        }
        match m.at {
            Some(at) if now.saturating_duration_since(at) <= max_age => {
                let start = slot * SLOT_BYTES;
                Lookup::Hit(&self.data[start..start + usize::from(m.len)])
            }
            _ => Lookup::Expired,
        }
    }

    /// Forget every packet (a new key or a new source on this stream).
    pub fn clear(&mut self) {
        self.meta.fill(NO_META);
        self.newest = None;
    }
}

/// Where a packet sent to a subscriber came from, and how it was numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentFrom {
    /// The publisher session.
    pub publisher: u64,
    /// The publisher's SSRC for the stream.
    pub ssrc: u32,
    /// The source packet's index in that stream (its key in the [`StreamCache`]).
    pub index: u64,
    /// The RTP timestamp the subscriber was sent.
    pub out_ts: u32,
    /// What else the first copy was rewritten with, so that a resend is the same packet.
    pub as_sent: AsSent,
}

/// How a subscriber's first copy of a packet was rewritten beyond its numbering, packed into
/// 7 bytes (the sent map keeps one per packet sent): its VP8 picture ID, TL0PICIDX and key
/// index (a simulcast layer's output), its transport-wide sequence number (a resend on the
/// stream itself, not as RTX, has the same SRTP index and so must carry the same plaintext),
/// and the marker and active decode targets an SVC output set on it (the end of the last
/// frame of its picture the subscriber gets; the mask in its Dependency Descriptor). An SVC
/// output has no VP8 descriptor to rewrite, so its mask takes the VP8 fields' four bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AsSent {
    pid: u16,
    tw: u16,
    tl0: u8,
    key: u8,
    flags: u8,
}

impl AsSent {
    const VP8: u8 = 1;
    const TW: u8 = 2;
    const MARKER: u8 = 4;
    const SVC_MASK: u8 = 8;

    pub fn new(vp8: Option<(u16, u8, u8)>, tw: Option<u16>, marker: bool) -> AsSent {
        let (pid, tl0, key) = vp8.unwrap_or_default();
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        let flags = flag(vp8.is_some(), AsSent::VP8)
            | flag(tw.is_some(), AsSent::TW)
            | flag(marker, AsSent::MARKER);
        AsSent {
            pid,
            tw: tw.unwrap_or_default(),
            tl0,
            key,
            flags,
        }
    }

    /// The same, with the active decode targets `mask` an SVC output wrote into the first
    /// copy's Dependency Descriptor. Ignored where a VP8 descriptor was rewritten (simulcast
    /// outputs have no SVC selector).
    pub fn with_svc_mask(self, mask: Option<u32>) -> AsSent {
        match mask {
            Some(m) if self.flags & AsSent::VP8 == 0 => AsSent {
                pid: m as u16,
                tl0: (m >> 16) as u8,
                key: (m >> 24) as u8,
                flags: self.flags | AsSent::SVC_MASK,
                ..self
            },
            _ => self,
        }
    }

    /// The active decode targets written into the first copy's Dependency Descriptor.
    pub fn svc_mask(&self) -> Option<u32> {
        (self.flags & AsSent::SVC_MASK != 0).then(|| {
            u32::from(self.pid) | (u32::from(self.tl0) << 16) | (u32::from(self.key) << 24)
        })
    }

    /// The VP8 picture ID, TL0PICIDX and key index written into the first copy.
    pub fn vp8(&self) -> Option<(u16, u8, u8)> {
        (self.flags & AsSent::VP8 != 0).then_some((self.pid, self.tl0, self.key))
    }

    /// The transport-wide sequence number the first copy carried.
    pub fn tw(&self) -> Option<u16> {
        (self.flags & AsSent::TW != 0).then_some(self.tw)
    }

    /// Whether the first copy's marker was set by the relay.
    pub fn marker(&self) -> bool {
        self.flags & AsSent::MARKER != 0
    }
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    out_seq: u16,
    valid: bool,
    from: SentFrom,
    resent_at: Option<Instant>,
}

const NO_SENT: Sent = Sent {
    out_seq: 0,
    valid: false,
    from: SentFrom {
        publisher: 0,
        ssrc: 0,
        index: 0,
        out_ts: 0,
        as_sent: AsSent {
            pid: 0,
            tw: 0,
            tl0: 0,
            key: 0,
            flags: 0,
        },
    },
    resent_at: None,
};

/// Why [`SentMap::resend`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Not sent lately (never, or the entry was reused by a later send).
    Unknown,
    /// Resent less than one round trip ago.
    TooSoon,
}

/// One subscriber output stream's recent sends: its sequence number → the source packet, and
/// when it was last resent.
#[derive(Debug)]
pub struct SentMap {
    entries: Box<[Sent]>,
    mask: usize,
}

impl SentMap {
    /// Room for the last `capacity` sends (a power of two from 16 to 32 768, so that an entry
    /// is never mistaken for the send 65 536 sequence numbers earlier).
    pub fn new(capacity: usize) -> SentMap {
        let cap = capacity.clamp(16, 32_768).next_power_of_two();
        SentMap {
            entries: vec![NO_SENT; cap].into_boxed_slice(),
            mask: cap - 1,
        }
    }

    /// Sequence number `out_seq` was sent to the subscriber from `from`.
    #[inline]
    pub fn record(&mut self, out_seq: u16, from: SentFrom) {
        self.entries[usize::from(out_seq) & self.mask] = Sent {
            out_seq,
            valid: true,
            from,
            resent_at: None,
        };
    }

    /// The source packet behind `out_seq`, while the map still holds it.
    pub fn source(&self, out_seq: u16) -> Option<SentFrom> {
        let e = self.entries[usize::from(out_seq) & self.mask];
        (e.valid && e.out_seq == out_seq).then_some(e.from)
    }

    /// The source of `out_seq` if it may be resent at `now`: it is known and was not resent
    /// within `rtt` (a second NACK for it inside one round trip was sent before the first
    /// resend could arrive). Marks it resent when the answer is yes.
    pub fn resend(
        &mut self,
        out_seq: u16,
        now: Instant,
        rtt: Duration,
    ) -> Result<SentFrom, Resend> {
        let e = &mut self.entries[usize::from(out_seq) & self.mask];
        if !e.valid || e.out_seq != out_seq {
            return Err(Resend::Unknown);
        }
        if e.resent_at
            .is_some_and(|t| now.saturating_duration_since(t) < rtt)
        {
            return Err(Resend::TooSoon);
        }
        e.resent_at = Some(now);
        Ok(e.from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pkt(index: u64) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&(index as u16).to_be_bytes());
        p.extend_from_slice(&index.to_be_bytes());
        p.resize(100 + (index % 50) as usize, index as u8);
        p
    }

    const AGE: Duration = Duration::from_secs(2);

    #[test]
    fn hits_across_the_sequence_wrap_and_misses_the_packet_65536_before() {
        let t = Instant::now();
        let mut c = StreamCache::new(64);
        // Indices 65_480 ..= 65_560: the 16-bit sequence wraps at 65_536 (ROC 0 -> 1).
        for i in 65_480..=65_560u64 {
            assert_eq!(c.insert(i, t, &pkt(i)), Insert::Stored);
        }
        assert_eq!(c.get(65_535, t, AGE), Lookup::Hit(&pkt(65_535)));
        assert_eq!(c.get(65_536, t, AGE), Lookup::Hit(&pkt(65_536)));
        assert_eq!(c.get(65_560, t, AGE), Lookup::Hit(&pkt(65_560)));
        // Same slot and same 16-bit sequence, one ROC earlier: not confused.
        assert_eq!(c.get(65_560 - 65_536, t, AGE), Lookup::Missing);
        // Overwritten by the packet 64 later.
        assert_eq!(c.get(65_490, t, AGE), Lookup::Missing);
    }

    #[test]
    fn late_packets_inside_the_window_are_kept_older_ones_refused() {
        let t = Instant::now();
        let mut c = StreamCache::new(16);
        for i in [10u64, 12, 13] {
            c.insert(i, t, &pkt(i));
        }
        assert_eq!(c.get(11, t, AGE), Lookup::Missing);
        assert_eq!(c.insert(11, t, &pkt(11)), Insert::Stored, "reordered");
        assert_eq!(c.get(11, t, AGE), Lookup::Hit(&pkt(11)));
        c.insert(40, t, &pkt(40));
        assert_eq!(c.insert(20, t, &pkt(20)), Insert::TooOld, "40 - 20 >= 16");
        assert_eq!(c.insert(30, t, &pkt(30)), Insert::Stored);
    }

    #[test]
    fn age_limit_and_size_limit() {
        let t = Instant::now();
        let mut c = StreamCache::new(16);
        c.insert(1, t, &pkt(1));
        assert!(matches!(c.get(1, t + AGE, AGE), Lookup::Hit(_)));
        assert_eq!(
            c.get(1, t + AGE + Duration::from_millis(1), AGE),
            Lookup::Expired
        );
        assert_eq!(c.insert(2, t, &[0u8; SLOT_BYTES + 1]), Insert::TooBig);
        assert_eq!(c.insert(3, t, &[7u8; SLOT_BYTES]), Insert::Stored);
        c.clear();
        assert_eq!(c.get(3, t, AGE), Lookup::Missing);
    }

    fn from(index: u64) -> SentFrom {
        SentFrom {
            publisher: 7,
            ssrc: 0x1234,
            index,
            out_ts: index as u32 * 90,
            as_sent: AsSent::default(),
        }
    }

    #[test]
    fn sent_entry_size() {
        // docs/CONFIG.md quotes the sent map's memory per entry.
        assert_eq!(core::mem::size_of::<Sent>(), 56);
    }

    #[test]
    fn as_sent_keeps_what_it_was_given() {
        let a = AsSent::new(Some((0x7FFF, 255, 31)), Some(65_535), true);
        assert_eq!(
            (a.vp8(), a.tw(), a.marker()),
            (Some((0x7FFF, 255, 31)), Some(65_535), true)
        );
        let b = AsSent::new(None, Some(0), false);
        assert_eq!((b.vp8(), b.tw(), b.marker()), (None, Some(0), false));
        assert_eq!(AsSent::new(None, None, false), AsSent::default());
        let m = AsSent::new(None, Some(9), true).with_svc_mask(Some(0xDEAD_BEEF));
        assert_eq!(
            (m.svc_mask(), m.vp8(), m.tw(), m.marker()),
            (Some(0xDEAD_BEEF), None, Some(9), true)
        );
        assert_eq!(b.with_svc_mask(None).svc_mask(), None);
        assert_eq!(
            a.with_svc_mask(Some(7)),
            a,
            "a VP8 output keeps its descriptor"
        );
    }

    #[test]
    fn sent_map_maps_and_throttles_resends_per_rtt() {
        let t = Instant::now();
        let rtt = Duration::from_millis(100);
        let mut m = SentMap::new(64);
        m.record(65_535, from(1_000));
        m.record(0, from(1_001));
        assert_eq!(m.source(65_535), Some(from(1_000)));
        assert_eq!(m.source(0), Some(from(1_001)));
        assert_eq!(m.source(1), None);
        assert_eq!(m.resend(0, t, rtt), Ok(from(1_001)));
        assert_eq!(
            m.resend(0, t + Duration::from_millis(50), rtt),
            Err(Resend::TooSoon),
            "within one RTT"
        );
        assert!(m.resend(0, t + rtt, rtt).is_ok(), "after one RTT");
        assert_eq!(m.resend(1, t, rtt), Err(Resend::Unknown), "never sent");
        // 64 sends later the slot belongs to another sequence number.
        m.record(64, from(2_000));
        assert_eq!(m.source(0), None);
        assert_eq!(m.source(64), Some(from(2_000)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Packets arriving in any order: a lookup hits exactly the packets that were stored and
        /// whose slot no newer packet has taken since.
        #[test]
        fn lookups_match_a_model(order in proptest::collection::vec(0u64..300, 1..400)) {
            let t = Instant::now();
            let base = 65_400u64; // cross a wrap
            let mut c = StreamCache::new(64);
            let mut stored = std::collections::BTreeSet::new();
            for i in order {
                let idx = base + i;
                if c.insert(idx, t, &pkt(idx)) == Insert::Stored {
                    stored.insert(idx);
                }
            }
            for idx in base..base + 300 {
                let expect = stored.contains(&idx)
                    && !stored.iter().any(|s| *s > idx && (s - idx) % 64 == 0);
                match c.get(idx, t, AGE) {
                    Lookup::Hit(p) => {
                        prop_assert!(expect, "hit {idx} not expected");
                        prop_assert_eq!(p, &pkt(idx)[..]);
                    }
                    _ => prop_assert!(!expect, "missed {idx}"),
                }
            }
        }
    }
}
