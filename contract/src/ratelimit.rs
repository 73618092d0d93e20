//! Global plus per-source token buckets, without allocation after construction: the one
//! rate limiter both sides of the slow path use. A relay worker applies it to STUN and DTLS
//! datagrams before they leave for control (a flood costs the relay a hash and a compare per
//! datagram, and control never sees more than the configured rate from it); control applies
//! it again to what all workers send, exactly (a source the kernel spreads over several
//! workers by port gets at most `workers ×` the per-source rate through the relay gates).
//!
//! Owns: the bucket arithmetic and the fixed source table ([`SOURCE_TABLE`] entries, 4-way
//! set-associative, keyed with a per-instance random hash so sources cannot aim at one set; a
//! new source evicts the least recently seen entry of its set). May not touch: clocks (the
//! caller passes `now`), sockets.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::time::Instant;

/// Per-source rate-limit table entries.
pub const SOURCE_TABLE: usize = 4096;
const WAYS: usize = 4;

/// A token bucket: `rate` tokens per second, holding at most one second's worth.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(rate: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: rate,
            last: now,
        }
    }

    fn take(&mut self, rate: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(rate);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the per-source rate.
    Source,
    /// Over the global rate.
    Global,
}

/// Source key: an IPv4 address, or the /64 of an IPv6 address (one host typically owns a
/// whole /64 and could otherwise rotate through it).
fn source_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) | (1u128 << 127),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)) | (1u128 << 127),
            None => u128::from(v6) & !((1u128 << 64) - 1),
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: u128,
    bucket: Bucket,
    used: bool,
}

/// Global plus per-source token buckets. Per-source is checked first, so a flooding source
/// spends only its own allowance of the global budget.
pub struct RateLimiter {
    global: Bucket,
    global_rate: f64,
    source_rate: f64,
    slots: Box<[Slot]>,
    hasher: RandomState,
    evictions: u64,
}

impl RateLimiter {
    /// `global_rate` and `per_source_rate` in datagrams per second (≥ 1), with one second of
    /// burst each.
    pub fn new(global_rate: u32, per_source_rate: u32, now: Instant) -> RateLimiter {
        let global_rate = f64::from(global_rate.max(1));
        let source_rate = f64::from(per_source_rate.max(1));
        RateLimiter {
            global: Bucket::full(global_rate, now),
            global_rate,
            source_rate,
            slots: vec![
                Slot {
                    key: 0,
                    bucket: Bucket::full(source_rate, now),
                    used: false,
                };
                SOURCE_TABLE
            ]
            .into_boxed_slice(),
            hasher: RandomState::new(),
            evictions: 0,
        }
    }

    /// Per-source entries evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Spend a token for a datagram from `ip`.
    pub fn check(&mut self, now: Instant, ip: IpAddr) -> Verdict {
        let key = source_key(ip);
        let sets = SOURCE_TABLE / WAYS;
        let set = (self.hasher.hash_one(key) as usize) % sets;
        let ways = &mut self.slots[set * WAYS..(set + 1) * WAYS];
        let idx = match ways.iter().position(|s| s.used && s.key == key) {
            Some(i) => i,
            None => {
                // A free way, else the least recently seen one.
                let i = ways.iter().position(|s| !s.used).unwrap_or_else(|| {
                    self.evictions += 1;
                    (0..WAYS).min_by_key(|&i| ways[i].bucket.last).unwrap_or(0)
                });
                ways[i] = Slot {
                    key,
                    bucket: Bucket::full(self.source_rate, now),
                    used: true,
                };
                i
            }
        };
        if !ways[idx].bucket.take(self.source_rate, now) {
            return Verdict::Source;
        }
        if !self.global.take(self.global_rate, now) {
            return Verdict::Global;
        }
        Verdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn per_source_then_global() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(100, 10, t0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let allowed = (0..50).filter(|_| r.check(t0, a) == Verdict::Allow).count();
        assert_eq!(allowed, 10, "one second of burst per source");
        assert_eq!(r.check(t0, a), Verdict::Source);
        assert_eq!(r.check(t0, b), Verdict::Allow, "other sources unaffected");
        // Refill: 10/s → one more after 100 ms.
        assert_eq!(r.check(t0 + Duration::from_millis(100), a), Verdict::Allow);
        assert_eq!(r.check(t0 + Duration::from_millis(100), a), Verdict::Source);
        // The global budget (100) runs out across many sources.
        let mut global = 0;
        for i in 0..200u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i));
            if r.check(t0 + Duration::from_millis(100), ip) == Verdict::Global {
                global += 1;
            }
        }
        assert!(global >= 100, "global limit applies: {global}");
    }

    #[test]
    fn ipv6_sources_share_their_64() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(1000, 2, t0);
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(r.check(t0, x), Verdict::Allow);
        assert_eq!(r.check(t0, y), Verdict::Allow);
        assert_eq!(r.check(t0, x), Verdict::Source);
        assert_eq!(r.check(t0, z), Verdict::Allow);
        // IPv4-mapped and plain IPv4 are one source.
        let m: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        let v: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(r.check(t0, m), Verdict::Allow);
        assert_eq!(r.check(t0, v), Verdict::Allow);
        assert_eq!(r.check(t0, m), Verdict::Source);
    }

    #[test]
    fn table_is_bounded_and_evicts() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(1_000_000, 5, t0);
        for i in 0..(SOURCE_TABLE as u32 * 3) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0B00_0000 + i));
            assert_eq!(
                r.check(t0 + Duration::from_micros(u64::from(i)), ip),
                Verdict::Allow
            );
        }
        assert_eq!(r.slots.len(), SOURCE_TABLE);
        assert!(r.evictions() >= SOURCE_TABLE as u64 * 2);
    }
}
