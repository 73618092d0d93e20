//! Loss recovery state (RFC 4585 generic NACK, RFC 4588 RTX): per publisher stream the
//! retransmission cache, the highest packet index received and the packets the relay is
//! asking the publisher for; per subscriber output stream the map from the sequence numbers
//! it was sent to the source packets. The forwarding path (`forward.rs`) fills them and
//! answers feedback from them.
//!
//! Owns: the per-stream bookkeeping and its rules (index extension across sequence-number
//! wraps, gap detection, bounded retries toward the publisher, key-frame request
//! aggregation). May not touch: SRTP, sockets, shm, the clock (`now` is passed in).
//!
//! Everything is allocated when a stream is first seen (a cache ring, a fixed array of
//! pending requests, a sent-map ring); the per-packet calls only index into them.

use super::rtx_cache::{Insert, SentFrom, SentMap, StreamCache};
use super::state::estimate_index;
use std::time::{Duration, Instant};

/// Loss-recovery settings (the `relay.nack_*` and `relay.pli_interval_ms` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NackConfig {
    /// Packets cached per publisher stream; 0 = no cache (NACKs go to the publisher as before).
    pub cache_packets: usize,
    /// Cached packets older than this are not resent.
    pub max_age: Duration,
    /// Publisher streams one worker caches at most.
    pub cache_streams: usize,
    /// One packet is resent to one subscriber at most once per this interval; the relay's own
    /// NACKs to a publisher for one packet are this far apart.
    pub rtt: Duration,
    /// NACKs the relay sends a publisher for one missing packet.
    pub retries: u8,
    /// PLIs for one publisher stream are forwarded at most once per this interval.
    pub pli_interval: Duration,
}

impl Default for NackConfig {
    fn default() -> Self {
        NackConfig {
            cache_packets: 512,
            max_age: Duration::from_secs(2),
            cache_streams: 256,
            rtt: Duration::from_millis(100),
            retries: 3,
            pli_interval: Duration::from_millis(250),
        }
    }
}

impl NackConfig {
    /// No cache: the relay forwards NACKs to publishers and detects no gaps itself.
    pub const OFF: NackConfig = NackConfig {
        cache_packets: 0,
        max_age: Duration::from_secs(2),
        cache_streams: 0,
        rtt: Duration::from_millis(100),
        retries: 0,
        pli_interval: Duration::ZERO,
    };

    pub fn enabled(&self) -> bool {
        self.cache_packets != 0 && self.cache_streams != 0
    }
}

/// Missing packets of one publisher stream the relay asks for at once, at most. A larger gap
/// (a source restart, a long outage) is not asked for: the packets would come too late.
pub const MAX_PENDING: usize = 64;

/// The ROC this bookkeeping gives a stream's first packet (see [`PubStream::receive`]).
const FIRST_ROC: u64 = 1 << 16;

#[derive(Debug, Clone, Copy)]
struct Pending {
    index: u64,
    /// When to ask (again).
    due: Instant,
    /// NACKs sent for it so far.
    tries: u8,
}

/// What [`PubStream::poll`] collected.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Sequence numbers written to the caller's array.
    pub asked: usize,
    /// Packets dropped from the list after their last retry.
    pub gave_up: usize,
}

/// One publisher stream, in the worker that receives it.
#[derive(Debug)]
pub struct PubStream {
    pub ssrc: u32,
    /// The highest packet index received (ROC ‖ SEQ as this stream counts it).
    highest: Option<u64>,
    cache: Option<StreamCache>,
    pending: [Option<Pending>; MAX_PENDING],
    pending_len: usize,
    last_key_request: Option<Instant>,
    /// The payload type of the last packet received on the stream itself (not through RTX):
    /// what a publisher RTX packet of this stream is restored to (see `forward.rs`).
    payload_type: Option<u8>,
}

impl PubStream {
    /// A stream with this cache (`None`: forwarded uncached).
    pub fn new(ssrc: u32, cache: Option<StreamCache>) -> PubStream {
        PubStream {
            ssrc,
            highest: None,
            cache,
            pending: [None; MAX_PENDING],
            pending_len: 0,
            last_key_request: None,
            payload_type: None,
        }
    }

    /// A packet of the stream itself arrived with payload type `pt`.
    #[inline]
    pub fn note_payload_type(&mut self, pt: u8) {
        self.payload_type = Some(pt);
    }

    /// The payload type of the last packet of the stream itself, if any arrived.
    pub fn payload_type(&self) -> Option<u8> {
        self.payload_type
    }

    pub fn cached(&self) -> bool {
        self.cache.is_some()
    }

    /// Packets the relay is waiting to ask for (or asked for and waits on).
    pub fn pending(&self) -> usize {
        self.pending_len
    }

    /// The index of a received packet with sequence number `seq` (RFC 3711 §3.3.1: the
    /// candidate closest to the highest so far), raising the highest. A cached stream that
    /// jumped forward by at most [`MAX_PENDING`] notes the skipped packets as missing, to be
    /// asked for at `now`; a packet that was missing is no longer.
    #[inline]
    pub fn receive(&mut self, seq: u16, now: Instant) -> u64 {
        let Some(h) = self.highest else {
            // Counted from ROC 1, so a late packet from before the first one still gets a
            // smaller index (ROC 0) instead of looking like a jump forward.
            let first = FIRST_ROC | u64::from(seq);
            self.highest = Some(first);
            return first;
        };
        let index = estimate_index(h, seq);
        if index > h {
            self.highest = Some(index);
            let gap = index - h - 1;
            if gap != 0 && self.cache.is_some() && gap as usize <= MAX_PENDING {
                for i in h + 1..index {
                    self.want(i, now);
                }
            }
        } else if self.pending_len != 0 {
            self.arrived(index);
        }
        index
    }

    /// The index of sequence number `seq` relative to the highest received (no update).
    pub fn index_of(&self, seq: u16) -> Option<u64> {
        self.highest.map(|h| estimate_index(h, seq))
    }

    /// Keep a received plain packet in the cache (if the stream has one).
    #[inline]
    pub fn store(&mut self, index: u64, now: Instant, packet: &[u8]) -> Option<Insert> {
        self.cache.as_mut().map(|c| c.insert(index, now, packet))
    }

    /// Packet `index`, if cached and at most `max_age` old.
    pub fn get(&self, index: u64, now: Instant, max_age: Duration) -> Option<&[u8]> {
        match self.cache.as_ref()?.get(index, now, max_age) {
            super::rtx_cache::Lookup::Hit(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the cache window still covers `index` (newer than the ring's oldest slot), so
    /// asking the publisher for it could still fill the cache.
    pub fn in_window(&self, index: u64) -> bool {
        match (&self.cache, self.highest) {
            (Some(c), Some(h)) => index <= h && h - index < c.capacity() as u64,
            _ => false,
        }
    }

    /// Ask the publisher for packet `index` at `now`, unless it is already asked for (one
    /// request however many subscribers miss it). False when it was already pending or the
    /// list is full.
    pub fn want(&mut self, index: u64, now: Instant) -> bool {
        let live = &self.pending[..self.pending_len];
        if live.iter().flatten().any(|p| p.index == index) || self.pending_len == MAX_PENDING {
            return false;
        }
        self.pending[self.pending_len] = Some(Pending {
            index,
            due: now,
            tries: 0,
        });
        self.pending_len += 1;
        true
    }

    fn arrived(&mut self, index: u64) {
        if let Some(i) = self.pending[..self.pending_len]
            .iter()
            .position(|p| p.is_some_and(|p| p.index == index))
        {
            self.remove(i);
        }
    }

    fn remove(&mut self, i: usize) {
        self.pending_len -= 1;
        self.pending[i] = self.pending[self.pending_len];
        self.pending[self.pending_len] = None;
    }

    /// The sequence numbers due at `now`, in index order, into `out`; each asked for again
    /// after `rtt`, dropped after `retries` NACKs.
    pub fn poll(&mut self, now: Instant, rtt: Duration, retries: u8, out: &mut [u16]) -> Due {
        let mut d = Due::default();
        let mut i = 0;
        while i < self.pending_len {
            let Some(p) = self.pending[i].as_mut() else {
                i += 1;
                continue;
            };
            if p.tries >= retries {
                self.remove(i);
                d.gave_up += 1;
                continue;
            }
            if p.due <= now && d.asked < out.len() {
                out[d.asked] = p.index as u16;
                d.asked += 1;
                p.tries += 1;
                p.due = now + rtt;
            }
            i += 1;
        }
        // RFC 4585 §6.2.1 pairs cover a PID and the 16 after it: sending order keeps them few.
        let asked = &mut out[..d.asked];
        if let Some(h) = self.highest {
            asked.sort_unstable_by_key(|&s| estimate_index(h, s));
        }
        d
    }

    /// A PLI for this stream at `now`: true when it should be forwarded (none was within
    /// `interval`).
    pub fn key_request(&mut self, now: Instant, interval: Duration) -> bool {
        if self
            .last_key_request
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
        {
            return false;
        }
        self.last_key_request = Some(now);
        true
    }
}

/// One subscriber output stream's sent map.
#[derive(Debug)]
pub struct SentStream {
    /// The SSRC the subscriber sees.
    pub ssrc: u32,
    pub map: SentMap,
    /// The next sequence number of the subscriber's RTX stream for this one (RFC 4588 §4),
    /// from its first RTX packet on.
    pub rtx_next: Option<u16>,
    /// The output sequence number of the key frame the stream last switched simulcast layer
    /// at: older packets are not resent (`resend_stale`). Forgotten once a quarter of the
    /// number space behind, so the serial comparison stays meaningful.
    pub layer_from: Option<u16>,
    /// The output sheds its layer after a sudden limit (`layer_shed`) and has sent nothing
    /// since: every packet sent is older than the key frame it waits for, none is resent.
    pub shedding: bool,
}

impl SentStream {
    pub fn new(ssrc: u32, capacity: usize) -> SentStream {
        SentStream {
            ssrc,
            map: SentMap::new(capacity),
            rtx_next: None,
            layer_from: None,
            shedding: false,
        }
    }

    /// Output stream `ssrc` (if it has a sent map) sheds its layer: what it sent is not
    /// resent until it sends again ([`SentStream::shedding`]).
    #[inline]
    pub fn shed(v: &mut [SentStream], ssrc: u32) {
        if let Some(i) = Self::find(v, ssrc) {
            v[i].shedding = true;
        }
    }

    /// Whether the packet sent as `out_seq` is older than the last layer switch.
    #[inline]
    pub fn before_switch(&self, out_seq: u16) -> bool {
        self.shedding
            || self
                .layer_from
                .is_some_and(|w| (w.wrapping_sub(out_seq) as i16) > 0)
    }

    #[inline]
    pub fn find(v: &[SentStream], ssrc: u32) -> Option<usize> {
        v.iter().position(|s| s.ssrc == ssrc)
    }

    #[inline]
    pub fn record(&mut self, out_seq: u16, from: SentFrom, switched: bool) {
        self.map.record(out_seq, from);
        self.shedding = false;
        if switched {
            self.layer_from = Some(out_seq);
        } else if self
            .layer_from
            .is_some_and(|w| out_seq.wrapping_sub(w) > 0x4000)
        {
            self.layer_from = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(100);
    const B: u64 = FIRST_ROC;

    #[test]
    fn index_extends_across_the_wrap_and_gaps_are_asked_once() {
        let t = Instant::now();
        let mut s = PubStream::new(1, Some(StreamCache::new(64)));
        assert_eq!(s.receive(65_534, t), B + 65_534);
        assert_eq!(s.receive(65_535, t), B + 65_535);
        // 0 and 1 lost across the wrap; 2 arrives with the next ROC.
        assert_eq!(s.receive(2, t), B + 65_538);
        assert_eq!(s.pending(), 2);
        assert!(!s.want(B + 65_536, t), "already asked");
        let mut out = [0u16; 8];
        let d = s.poll(t, RTT, 3, &mut out);
        assert_eq!((d.asked, &out[..2]), (2, &[0u16, 1][..]));
        // Not again within one round trip.
        assert_eq!(s.poll(t + RTT / 2, RTT, 3, &mut out).asked, 0);
        // 0 repaired: only 1 is asked again.
        assert_eq!(s.receive(0, t), B + 65_536);
        let d = s.poll(t + RTT, RTT, 3, &mut out);
        assert_eq!((d.asked, out[0]), (1, 1));
        // Bounded retries: a third NACK, then given up.
        assert_eq!(s.poll(t + RTT * 2, RTT, 3, &mut out).asked, 1);
        let d = s.poll(t + RTT * 3, RTT, 3, &mut out);
        assert_eq!((d.asked, d.gave_up), (0, 1));
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn nothing_is_resent_while_shedding_nor_from_before_a_switch() {
        let from = |index| super::super::rtx_cache::SentFrom {
            publisher: 1,
            ssrc: 2,
            index,
            out_ts: 0,
            as_sent: Default::default(),
        };
        let mut v = vec![SentStream::new(0x700, 64)];
        for seq in 10..20u16 {
            v[0].record(seq, from(u64::from(seq)), false);
        }
        assert!(!v[0].before_switch(15));
        // The output sheds its layer: all it sent waits for a key frame.
        SentStream::shed(&mut v, 0x700);
        SentStream::shed(&mut v, 0x999); // no such stream: nothing happens
        assert!(v[0].before_switch(15) && v[0].before_switch(19));
        // It sends the key frame it switched at: older packets stay stale, newer are not.
        v[0].record(20, from(30), true);
        assert!(v[0].before_switch(19));
        assert!(!v[0].before_switch(20));
        v[0].record(21, from(31), false);
        assert!(!v[0].before_switch(21));
        // Shedding ends with any packet sent, switch or not.
        SentStream::shed(&mut v, 0x700);
        v[0].record(22, from(32), false);
        assert!(!v[0].before_switch(21) && v[0].before_switch(19));
    }

    #[test]
    fn large_jumps_and_uncached_streams_ask_nothing() {
        let t = Instant::now();
        let mut s = PubStream::new(1, Some(StreamCache::new(64)));
        s.receive(10, t);
        s.receive(10 + MAX_PENDING as u16 + 2, t);
        assert_eq!(
            s.pending(),
            0,
            "a jump past MAX_PENDING is not a loss burst to repair"
        );
        let mut u = PubStream::new(1, None);
        u.receive(10, t);
        u.receive(12, t);
        assert_eq!(u.pending(), 0);
    }

    #[test]
    fn reordered_packets_keep_their_index() {
        let t = Instant::now();
        let mut s = PubStream::new(1, Some(StreamCache::new(64)));
        s.receive(65_535, t);
        s.receive(1, t); // ROC 1
        assert_eq!(s.receive(0, t), B + 65_536, "late, after the wrap");
        assert_eq!(s.receive(65_534, t), B + 65_534, "late, before the wrap");
        assert_eq!(s.pending(), 0);
        assert!(s.in_window(B + 65_500) && !s.in_window(B + 65_537 - 65));
        // A late packet from before the first one is older, not a jump forward.
        let mut f = PubStream::new(1, Some(StreamCache::new(64)));
        f.receive(5, t);
        assert_eq!(f.receive(65_530, t), 65_530);
    }

    #[test]
    fn key_requests_are_aggregated() {
        let t = Instant::now();
        let iv = Duration::from_millis(250);
        let mut s = PubStream::new(1, None);
        assert!(s.key_request(t, iv));
        assert!(!s.key_request(t + Duration::from_millis(100), iv));
        assert!(s.key_request(t + iv, iv));
    }
}
