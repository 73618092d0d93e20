//! Attack tests for the data plane (docs/SECURITY.md): replayed, forged, wrong-key and
//! truncated SRTP from a known peer is dropped before routing and counted by reason; a flood
//! from unknown sources costs no crypto work; STUN/DTLS from anywhere is bounded per batch on
//! the slow path. The engine runs over a counting `SrtpOps` (the real SRTP contexts, with every
//! call counted) so "no crypto work" is checked, not assumed.

mod engine_support;

use contract::shm::{DropReason, Role, ShmReader};
use contract::srtp::{Context, ContextOptions, Error, MasterKey, Profile};
use engine_support::*;
use relay::batch::{TxQueue, MAX_DATAGRAM};
use relay::engine::{Engine, EngineConfig, SrtpOps};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

thread_local! {
    /// SRTP calls made on this thread: `[unprotect, protect]`. Tests run one per thread.
    static CALLS: Cell<[u64; 2]> = const { Cell::new([0; 2]) };
}

fn bump(i: usize) {
    CALLS.with(|c| {
        let mut v = c.get();
        v[i] += 1;
        c.set(v);
    });
}

fn calls() -> [u64; 2] {
    CALLS.with(Cell::get)
}

/// The production SRTP context with every protect/unprotect counted.
struct Counting(Context);

impl SrtpOps for Counting {
    fn create(key: MasterKey, opts: ContextOptions) -> Result<Self, Error> {
        Context::new(key, opts).map(Counting)
    }
    fn rekey(&mut self, key: MasterKey) -> Result<(), Error> {
        self.0.install_key(key)
    }
    fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        bump(1);
        self.0.protect_rtp(buf, len)
    }
    fn unprotect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        bump(0);
        self.0.unprotect_rtp(buf, len)
    }
    fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        bump(1);
        self.0.protect_rtcp(buf, len)
    }
    fn unprotect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        bump(0);
        self.0.unprotect_rtcp(buf, len)
    }
    fn set_roc(&mut self, ssrc: u32, roc: u32) -> Result<(), Error> {
        self.0.set_roc(ssrc, roc)
    }
    fn roc(&self, ssrc: u32) -> Option<u32> {
        self.0.roc(ssrc)
    }
    fn resume_rtp(&mut self, ssrc: u32, highest: u64) -> Result<(), Error> {
        self.0.resume_rtp(ssrc, highest)
    }
    fn resume_rtcp(&mut self, ssrc: u32, highest: u64) -> Result<(), Error> {
        self.0.resume_rtcp(ssrc, highest)
    }
    fn srtcp_index(&self, ssrc: u32) -> Option<u64> {
        self.0.srtcp_index(ssrc)
    }
}

/// The shared harness's shm file and peers, with an engine over [`Counting`].
struct Attack {
    rig: Rig,
    engine: Engine<Counting>,
    slow_cap: usize,
}

impl Attack {
    fn new(tag: &str, slow_cap: usize) -> Attack {
        let rig = Rig::new(tag);
        let reader: Arc<ShmReader> = rig.reader.clone();
        let engine = Engine::<Counting>::new(
            reader,
            EngineConfig {
                srtp: opts(),
                ..EngineConfig::default()
            },
        );
        Attack {
            rig,
            engine,
            slow_cap,
        }
    }

    /// One batch; returns (forwarded datagrams, slow-path datagrams).
    fn batch(&mut self, input: &[(SocketAddr, Vec<u8>)]) -> (usize, usize) {
        self.rig.now += Duration::from_millis(20);
        let mut tx = TxQueue::with_capacity(1024);
        let mut slow = TxQueue::with_capacity(self.slow_cap);
        self.engine.begin_batch(self.rig.now);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        for (src, d) in input {
            let n = d.len().min(MAX_DATAGRAM);
            buf[..n].copy_from_slice(&d[..n]);
            self.engine
                .handle_datagram(*src, &mut buf, n, &mut tx, &mut slow);
        }
        self.engine.end_batch(self.rig.now);
        (tx.len(), slow.len())
    }
}

fn pair(a: &mut Attack, profile: Profile) -> (Peer, Peer) {
    let p = Peer::new(1, addr(0), Role::Speaker, profile);
    let s = Peer::new(2, addr(1), Role::Viewer, profile);
    a.rig.add(&p);
    a.rig.add(&s);
    a.rig.route(1, None, 2, rewrite(None, None));
    (p, s)
}

/// Replays, forged tags, a wrong key and truncations from the publisher's own address: each is
/// dropped at authentication (or parsing), counted under its reason, and never reaches routing
/// (NoRoute stays 0) or the transmit side (no protect call, nothing queued).
#[test]
fn forged_replayed_wrong_key_truncated_never_routed() {
    for profile in Profile::ALL {
        let mut a = Attack::new("attack-srtp", 64);
        let (mut p, _s) = pair(&mut a, profile);
        let good = p.rtp(0x1000, 1, 1, 96, &[7; 120]);
        let (fwd, _) = a.batch(&[(p.addr, good.clone())]);
        assert_eq!(fwd, 1, "{profile}: the genuine packet is forwarded");
        let base = a.rig.counters();
        let before = calls();

        let mut input = Vec::new();
        // 10 replays of the accepted packet (RFC 3711 §3.3.2).
        for _ in 0..10 {
            input.push((p.addr, good.clone()));
        }
        // 10 forged tags / flipped payload bits on fresh sequence numbers.
        for i in 0..10u16 {
            let mut f = p.rtp(0x1000, 100 + i, 1, 96, &[7; 120]);
            let at = if i % 2 == 0 { f.len() - 1 } else { 20 };
            f[at] ^= 0x40;
            input.push((p.addr, f));
        }
        // 10 packets protected under an attacker's key, sent from the publisher's address.
        let mut mallory = Peer::new(9, p.addr, Role::Speaker, profile);
        for i in 0..10u16 {
            input.push((p.addr, mallory.rtp(0x1000, 200 + i, 1, 96, &[7; 120])));
        }
        // Truncations of a valid packet: header only, header + a few bytes, minus the tag.
        let whole = p.rtp(0x1000, 300, 1, 96, &[7; 120]);
        let cuts = [
            2usize,
            11,
            12,
            13,
            16,
            20,
            whole.len() - 10,
            whole.len() - 1,
        ];
        for &cut in &cuts {
            input.push((p.addr, whole[..cut].to_vec()));
        }
        // Forged SRTCP (an SR with a flipped tag) and a truncated one.
        let mut sr = vec![0x80, 200, 0, 6];
        sr.extend_from_slice(&0x1000u32.to_be_bytes());
        sr.extend_from_slice(&[0; 20]);
        let mut rtcp = p.rtcp(&sr);
        let l = rtcp.len();
        rtcp[l - 1] ^= 1;
        input.push((p.addr, rtcp.clone()));
        input.push((p.addr, rtcp[..10].to_vec()));
        let attacks = input.len() as u64;

        let (fwd, slow) = a.batch(&input);
        let c = a.rig.counters();
        let d = |r: DropReason| c.drops[r as usize] - base.drops[r as usize];
        assert_eq!((fwd, slow), (0, 0), "{profile}: nothing forwarded");
        assert_eq!(d(DropReason::Replayed), 10, "{profile}");
        assert_eq!(
            d(DropReason::NoRoute),
            0,
            "{profile}: dropped before routing"
        );
        assert_eq!(d(DropReason::UnknownSource), 0, "{profile}");
        assert_eq!(
            d(DropReason::AuthFailed) + d(DropReason::Malformed),
            attacks - 10,
            "{profile}: {:?}",
            c.drops
        );
        assert!(
            d(DropReason::AuthFailed) > 20,
            "{profile}: forged tags, wrong key and the forged SRTCP"
        );
        assert_eq!(c.packets_out, base.packets_out, "{profile}: tx unchanged");
        assert_eq!(c.packets_in - base.packets_in, attacks);
        let after = calls();
        assert_eq!(
            after[1], before[1],
            "{profile}: no protect call for dropped packets"
        );

        // The session still works afterwards: the next genuine packet is forwarded.
        let next = p.rtp(0x1000, 2, 1, 96, &[7; 120]);
        assert_eq!(
            a.batch(&[(p.addr, next)]).0,
            1,
            "{profile}: still forwarding"
        );
    }
}

/// A flood of SRTP-looking datagrams from 5,000 unknown source addresses (spoofed or not) is
/// dropped as UnknownSource by the address lookup alone: zero SRTP calls, nothing queued.
#[test]
fn unknown_source_flood_costs_no_crypto() {
    let mut a = Attack::new("attack-flood", 64);
    let (mut p, _s) = pair(&mut a, Profile::AeadAes128Gcm);
    // Real packets of the publisher (valid tags), replayed from other addresses, plus junk.
    let genuine: Vec<Vec<u8>> = (0..50u16)
        .map(|i| p.rtp(0x1000, i, 1, 96, &[1; 200]))
        .collect();
    let before = calls();
    let base = a.rig.counters();
    let mut sent = 0u64;
    for round in 0..10u32 {
        let input: Vec<(SocketAddr, Vec<u8>)> = (0..500u32)
            .map(|i| {
                let n = round * 500 + i;
                let src = if n % 2 == 0 {
                    SocketAddr::from(([198, 51, 100, (n % 250) as u8], 1024 + (n / 250) as u16))
                } else {
                    format!("[2001:db8::{:x}]:{}", n, 40_000 + (n % 1000))
                        .parse()
                        .expect("literal address")
                };
                let d = if n % 3 == 0 {
                    // RTCP-range junk.
                    let mut v = vec![0x80, 200 + (n % 5) as u8, 0, 6];
                    v.resize(40, n as u8);
                    v
                } else {
                    genuine[n as usize % genuine.len()].clone()
                };
                (src, d)
            })
            .collect();
        sent += input.len() as u64;
        let (fwd, slow) = a.batch(&input);
        assert_eq!((fwd, slow), (0, 0));
    }
    let c = a.rig.counters();
    assert_eq!(
        c.drops[DropReason::UnknownSource as usize]
            - base.drops[DropReason::UnknownSource as usize],
        sent
    );
    assert_eq!(
        c.drops.iter().sum::<u64>() - base.drops.iter().sum::<u64>(),
        sent
    );
    assert_eq!(calls(), before, "no SRTP work for unknown sources");
    assert_eq!(c.packets_out, base.packets_out);
}

/// DTLS from unknown sources goes to control (RFC 7983), but at most the slow-path queue's
/// capacity per batch: the excess is dropped and counted as SlowPathFull; STUN that is no ICE
/// check stops in the relay (StunNotCheck). No SRTP work and no forwarding for either.
#[test]
fn stun_and_dtls_from_unknown_sources_bounded_per_batch() {
    const CAP: usize = 32;
    let mut a = Attack::new("attack-stun", CAP);
    let _ = pair(&mut a, Profile::Aes128CmSha1_80);
    let before = calls();
    let base = a.rig.counters();
    let mut total_slow = 0u64;
    let mut sent = 0u64;
    let mut dtls_sent = 0u64;
    for round in 0..5u32 {
        let input: Vec<(SocketAddr, Vec<u8>)> = (0..400u32)
            .map(|i| {
                let src = SocketAddr::from(([203, 0, 113, (i % 200) as u8], 2000 + round as u16));
                let d = if i % 4 == 0 {
                    // DTLS ClientHello-looking record (content type 22, RFC 7983 range 20..=63).
                    let mut v = vec![22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 40, 1];
                    v.resize(53, 0);
                    v
                } else {
                    // STUN Binding request header with the magic cookie.
                    let mut v = vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
                    v.extend_from_slice(&i.to_be_bytes());
                    v.resize(20, round as u8);
                    v
                };
                (src, d)
            })
            .collect();
        sent += input.len() as u64;
        dtls_sent += input.iter().filter(|(_, d)| d[0] == 22).count() as u64;
        let (fwd, slow) = a.batch(&input);
        assert_eq!(fwd, 0);
        assert_eq!(slow, CAP, "slow path takes at most its capacity per batch");
        total_slow += slow as u64;
    }
    let c = a.rig.counters();
    let d = |r: DropReason| c.drops[r as usize] - base.drops[r as usize];
    assert_eq!(c.slow_path_up - base.slow_path_up, total_slow);
    assert_eq!(d(DropReason::SlowPathFull), dtls_sent - total_slow);
    assert_eq!(d(DropReason::StunNotCheck), sent - dtls_sent);
    assert_eq!(d(DropReason::UnknownSource), 0);
    assert_eq!(calls(), before, "no SRTP work for STUN/DTLS");
}

/// A session's `max_pps` cap: from a burst of 200 packets in one second of batch time only
/// 50 are unprotected and forwarded; the rest are counted as RateLimited before any SRTP
/// work. The next one-second window admits packets again.
#[test]
fn per_session_rate_cap_drops_before_crypto() {
    let mut a = Attack::new("attack-rate", 64);
    let (mut p, _s) = pair(&mut a, Profile::AeadAes128Gcm);
    let mut rec = p.record();
    rec.max_pps = 50;
    a.rig.writer.put_session(&rec).expect("session update");
    let burst: Vec<(SocketAddr, Vec<u8>)> = (0..200u16)
        .map(|i| (p.addr, p.rtp(0x2000, i, 1, 96, &[3; 100])))
        .collect();
    let base = a.rig.counters();
    let before = calls();
    let (fwd, _) = a.batch(&burst);
    let c = a.rig.counters();
    let limited =
        c.drops[DropReason::RateLimited as usize] - base.drops[DropReason::RateLimited as usize];
    assert_eq!(fwd, 50, "only max_pps packets forwarded");
    assert_eq!(limited, 150);
    assert_eq!(
        calls()[0] - before[0],
        50,
        "no unprotect for rate-limited packets"
    );
    // One second of (simulated) batch time later the cap admits packets again.
    for _ in 0..50 {
        a.batch(&[]);
    }
    let next = p.rtp(0x2000, 500, 1, 96, &[3; 100]);
    assert_eq!(a.batch(&[(p.addr, next)]).0, 1);
}
