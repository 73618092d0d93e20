//! Stream state across restarts, with real SRTP (AES_CM_128_HMAC_SHA1_80) and a real shm file:
//! a stream wraps its sequence number, the engine is dropped (a relay killed) and a new one is
//! built from the same file (on another worker index, as SO_REUSEPORT may decide after a
//! restart). The publisher's next packets must authenticate, and both subscribers (one keeps
//! the publisher's numbering, one gets a rewritten SSRC) must decrypt everything with no
//! output index used twice (RFC 3711 §9.1).

use super::tests::{key, session};
use super::*;
use crate::batch::{TxQueue, MAX_DATAGRAM};
use contract::shm::{Capacity, DropReason, Rewrite, Role, ShmWriter, StreamDir};
use contract::srtp::Context;
use std::collections::HashSet;
use std::net::SocketAddr;

const PUB_SSRC: u32 = 0x1111_2222;
const OUT_SSRC: u32 = 0x5555;

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn peer(id: u64) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 1000 + id as u16))
}

struct Receiver {
    ctx: Context,
    /// (SSRC, packet index) of everything decrypted.
    seen: HashSet<(u32, u64)>,
    max_before: u64,
}

impl Receiver {
    fn take(&mut self, d: &[u8]) -> (u32, u16) {
        let mut b = d.to_vec();
        let l = b.len();
        let n = self
            .ctx
            .unprotect_rtp(&mut b, l)
            .expect("subscriber decrypts");
        assert!(n >= 12);
        let seq = u16::from_be_bytes([b[2], b[3]]);
        let ssrc = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        let index = (u64::from(self.ctx.roc(ssrc).unwrap()) << 16) | u64::from(seq);
        assert!(
            self.seen.insert((ssrc, index)),
            "index {index:#x} of {ssrc:#x} used twice"
        );
        (ssrc, seq)
    }
}

struct World {
    sender: Context,
    subs: [Receiver; 2],
    tx: TxQueue,
    slow: TxQueue,
    now: Instant,
}

/// A protected RTP packet of the publisher's stream with sequence number `seq`.
fn rtp(sender: &mut Context, seq: u16) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    p.extend_from_slice(&PUB_SSRC.to_be_bytes());
    p.extend_from_slice(&[seq as u8; 100]);
    buf[..p.len()].copy_from_slice(&p);
    let n = sender.protect_rtp(&mut buf, p.len()).unwrap();
    buf[..n].to_vec()
}

impl World {
    /// `pkt` from the publisher through `engine` as one batch; returns how many copies left.
    fn deliver(&mut self, engine: &mut Engine, pkt: &[u8]) -> usize {
        let mut buf = [0u8; MAX_DATAGRAM];
        buf[..pkt.len()].copy_from_slice(pkt);
        self.tx.clear();
        engine.begin_batch(self.now);
        engine.handle_datagram(peer(1), &mut buf, pkt.len(), &mut self.tx, &mut self.slow);
        engine.end_batch(self.now);
        self.tx.len()
    }

    /// One packet through `engine`; each subscriber decrypts what it got. Returns the count.
    fn send(&mut self, engine: &mut Engine, seq: u16) -> usize {
        let p = rtp(&mut self.sender, seq);
        let got = self.deliver(engine, &p);
        for i in 0..got {
            let dst = self.tx.metas()[i].dst;
            let r = if dst == peer(2) { 0 } else { 1 };
            let d = self.tx.datagram(i).to_vec();
            self.subs[r].take(&d);
        }
        got
    }
}

/// A shm file with `workers` stream-state regions of `streams` slots, a trunk publisher (1)
/// and two viewers (2, 3), the routes `(route id, subscriber, output SSRC)` from session 1
/// (for its SSRC `from_ssrc`, or any),
/// and a world of one sender and the two subscribers' receivers. The file is removed when the
/// returned guard drops.
fn setup(
    tag: &str,
    workers: u32,
    streams: u32,
    from_ssrc: Option<u32>,
    routes: &[(u64, u64, Option<u32>)],
) -> (TempFile, std::path::PathBuf, World) {
    let path = std::env::temp_dir().join(format!("sluice-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let guard = TempFile(path.clone());
    let mut w = ShmWriter::create_with_streams(
        &path,
        Capacity {
            sessions: 16,
            routes: 16,
            workers,
        },
        streams,
    )
    .unwrap();
    w.put_session(&session(1, Role::Trunk)).unwrap();
    w.put_session(&session(2, Role::Viewer)).unwrap();
    w.put_session(&session(3, Role::Viewer)).unwrap();
    for &(id, to, ssrc) in routes {
        w.put_route(&RouteRecord {
            id,
            from: 1,
            ssrc: from_ssrc,
            to,
            rewrite: Rewrite {
                ssrc,
                ..Rewrite::default()
            },
        })
        .unwrap();
    }
    let rx = |k| Receiver {
        ctx: Context::new(k, ContextOptions::default()).unwrap(),
        seen: HashSet::new(),
        max_before: 0,
    };
    let world = World {
        sender: Context::new(key(1), ContextOptions::default()).unwrap(),
        subs: [rx(key(102)), rx(key(103))],
        tx: TxQueue::with_capacity(8),
        slow: TxQueue::with_capacity(8),
        now: Instant::now(),
    };
    (guard, path, world)
}

/// A fresh engine (a new relay process's worker `worker`) over the shm file at `path`.
fn engine_on(path: &std::path::Path, worker: usize) -> Engine {
    <Engine>::new(
        Arc::new(ShmReader::open(path).unwrap()),
        EngineConfig {
            worker,
            ..EngineConfig::default()
        },
    )
}

#[test]
fn restart_after_a_wrap_continues_every_stream() {
    let (_guard, path, mut world) =
        setup("roc", 4, 64, None, &[(1, 2, None), (2, 3, Some(OUT_SSRC))]);

    // First process: 65000 → wraps after 536 packets, 1600 packets in all (ends at ROC 1).
    let mut engine = engine_on(&path, 0);
    let mut seq: u16 = 65_000;
    for _ in 0..1600 {
        assert_eq!(world.send(&mut engine, seq), 2);
        seq = seq.wrapping_add(1);
    }
    assert_eq!(engine.totals().dropped(DropReason::AuthFailed), 0);
    // Writes: first sight + one rollover + a refresh per REFRESH packets, per stream; never
    // per packet.
    let writes = engine.forwarder().stream_state().writes();
    assert!((3..=12).contains(&writes), "{writes} stream-state writes");
    for r in &mut world.subs {
        r.max_before = r.seen.iter().map(|&(_, i)| i).max().unwrap();
        assert_eq!(r.max_before >> 16, 1, "wrapped once");
    }
    drop(engine);

    // The publisher went on while the relay was down (50 packets lost), and the new process
    // handles it on another worker.
    seq = seq.wrapping_add(50);
    let reader = Arc::new(ShmReader::open(&path).unwrap());
    let stored: Vec<_> = {
        let mut v = Vec::new();
        reader.for_each_stream(|wk, _, r| v.push((wk, r.dir, r.ssrc, r.roc())));
        v
    };
    assert!(
        stored.contains(&(0, StreamDir::In, PUB_SSRC, 1)),
        "{stored:?}"
    );
    let mut engine = engine_on(&path, 1);
    for _ in 0..600 {
        assert_eq!(
            world.send(&mut engine, seq),
            2,
            "forwarded after the restart"
        );
        seq = seq.wrapping_add(1);
    }
    assert_eq!(engine.totals().dropped(DropReason::AuthFailed), 0);
    assert!(engine.forwarder().stream_state().seeded() >= 3);
    for r in &world.subs {
        let after: Vec<u64> = r
            .seen
            .iter()
            .map(|&(_, i)| i)
            .filter(|&i| i > r.max_before)
            .collect();
        assert_eq!(after.len(), 600, "every packet after the restart is newer");
    }
    // Not rewritten: the index follows the publisher's (ROC 1, the sequence number).
    assert_eq!(world.subs[0].ctx.roc(PUB_SSRC), Some(1));
    // Rewritten: skipped ahead past what the first process may have sent.
    let max_after = world.subs[1].seen.iter().map(|&(_, i)| i).max().unwrap();
    assert!(max_after > world.subs[1].max_before + u64::from(SKIP));
    // The new worker persists into its own region; the old entries stay for other workers.
    let mut by_worker = [0u32; 4];
    ShmReader::open(&path)
        .unwrap()
        .for_each_stream(|wk, _, _| by_worker[wk as usize] += 1);
    assert_eq!(by_worker, [3, 3, 0, 0]);
}

#[test]
fn a_second_restart_before_any_refresh_still_skips_ahead() {
    // Stored state alone (no packets since) must seed correctly again: the second process
    // writes its own entries at first sight, so a third one sees the newest index.
    let (_guard, path, mut world) =
        setup("roc2", 2, 16, None, &[(1, 2, None), (2, 3, Some(OUT_SSRC))]);
    let mut seq: u16 = 65_530;
    for round in 0..3 {
        let mut engine = engine_on(&path, round % 2);
        for _ in 0..20 {
            assert_eq!(world.send(&mut engine, seq), 2, "round {round}");
            seq = seq.wrapping_add(1);
        }
        assert_eq!(engine.totals().dropped(DropReason::AuthFailed), 0);
    }
    assert_eq!(world.subs[0].seen.len(), 60);
    assert_eq!(world.subs[1].seen.len(), 60);
}

#[test]
fn srtcp_index_continues_across_restarts() {
    // The relay protects the publisher's source descriptions for each subscriber under the
    // subscriber's key with its own SRTCP index (RFC 3711 §3.4). A new process must continue
    // after the previous one's index (§9.1: never twice under one key); the subscribers'
    // SRTCP replay windows would refuse a reused one anyway.
    let (_guard, path, mut world) = setup(
        "srtcp",
        2,
        16,
        None,
        &[(1, 2, None), (2, 3, Some(OUT_SSRC))],
    );
    // The SRTCP indices each subscriber received, in order.
    let mut indices: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let mut seq: u16 = 100;
    let mut reports = 0u32;
    for round in 0..3 {
        let mut engine = engine_on(&path, round % 2);
        // Fewer reports than RTCP_REFRESH in some rounds, more in others.
        let n = [5, 40, 3][round];
        for _ in 0..n {
            assert_eq!(world.send(&mut engine, seq), 2);
            seq = seq.wrapping_add(1);
            // A source description (RFC 3550 §6.5), which goes down to every subscriber
            // (sender reports do not: the relay writes its own).
            let mut buf = [0u8; MAX_DATAGRAM];
            buf[..4].copy_from_slice(&[0x81, 202, 0, 2]);
            buf[4..8].copy_from_slice(&PUB_SSRC.to_be_bytes());
            reports += 1;
            buf[8..12].copy_from_slice(&[1, 1, b'a' + (reports % 26) as u8, 0]);
            let l = world.sender.protect_rtcp(&mut buf, 12).unwrap();
            world.tx.clear();
            engine.begin_batch(world.now);
            engine.handle_datagram(peer(1), &mut buf, l, &mut world.tx, &mut world.slow);
            engine.end_batch(world.now);
            assert_eq!(world.tx.len(), 2, "round {round}: the report reaches both");
            for i in 0..2 {
                let r = if world.tx.metas()[i].dst == peer(2) {
                    0
                } else {
                    1
                };
                let mut d = world.tx.datagram(i).to_vec();
                let dl = d.len();
                let ctx = &mut world.subs[r].ctx;
                ctx.unprotect_rtcp(&mut d, dl)
                    .unwrap_or_else(|e| panic!("round {round}: subscriber {r}: {e:?}"));
                let ssrc = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
                indices[r].push(ctx.srtcp_index(ssrc).unwrap());
            }
        }
        assert_eq!(engine.totals().dropped(DropReason::AuthFailed), 0);
    }
    for (r, ix) in indices.iter().enumerate() {
        assert_eq!(ix.len(), 48);
        assert!(
            ix.windows(2).all(|w| w[1] > w[0]),
            "subscriber {r}: SRTCP indices not increasing: {ix:?}"
        );
    }
    let stored = {
        let mut v = Vec::new();
        ShmReader::open(&path)
            .unwrap()
            .for_each_stream(|_, _, r| v.push((r.dir, r.session, r.ssrc)));
        v
    };
    assert!(
        stored.contains(&(StreamDir::RtcpOut, 2, PUB_SSRC)),
        "{stored:?}"
    );
    assert!(
        stored.contains(&(StreamDir::RtcpOut, 3, OUT_SSRC)),
        "{stored:?}"
    );
}

#[test]
fn after_a_restart_old_packets_are_replays_and_a_forged_first_packet_sets_nothing() {
    // RFC 3711 §3.3.2 across a restart: the new process continues the inbound flow after the
    // stored index with everything up to it counted as seen, so a replay of an old packet is
    // refused; and the index of each packet is estimated from the stored one, so a forged first
    // packet (sequence number far off, bad tag) cannot move the rollover counter.
    let (_guard, path, mut world) = setup("replay", 2, 16, None, &[(1, 2, None), (2, 3, None)]);
    // First process: 2000 packets from 64000 (wraps to ROC 1); keep an early and a late one.
    let mut engine = engine_on(&path, 0);
    let mut seq: u16 = 64_000;
    let mut kept = Vec::new();
    for i in 0..2000 {
        let p = rtp(&mut world.sender, seq);
        assert_eq!(world.deliver(&mut engine, &p), 2);
        if i == 1500 {
            kept.push(p);
        }
        seq = seq.wrapping_add(1);
    }
    drop(engine);

    let mut engine = engine_on(&path, 0);
    // A forged first packet: sequence number 2^15 away from the stream, bad tag.
    let mut forged = rtp(
        &mut Context::new(key(9), ContextOptions::default()).unwrap(),
        seq.wrapping_add(0x8000),
    );
    let l = forged.len();
    forged[l - 1] ^= 0xFF;
    assert_eq!(world.deliver(&mut engine, &forged), 0);
    // The replayed packet (accepted by the first process, below the stored index): refused.
    assert_eq!(world.deliver(&mut engine, &kept[0]), 0);
    // Both are refused before authentication: the forged one's estimated index is a rollover
    // behind the stored one, the replay is at or below it.
    let t = engine.totals();
    assert_eq!(
        t.dropped(DropReason::Replayed) + t.dropped(DropReason::TooOld),
        2,
        "{t:?}"
    );
    // The stream goes on: every new packet authenticates (ROC 1 kept despite the forgery).
    for _ in 0..100 {
        let p = rtp(&mut world.sender, seq);
        assert_eq!(world.deliver(&mut engine, &p), 2);
        seq = seq.wrapping_add(1);
    }
    assert_eq!(engine.totals().dropped(DropReason::AuthFailed), 0);
}

#[test]
fn feedback_from_two_workers_uses_two_srtcp_flows() {
    // Two viewers with the same RTCP sender SSRC (a receive-only libwebrtc peer always uses
    // 0xFA17FA17) on two workers send PLIs to one publisher. Each worker protects them under
    // the publisher's key; if both used the viewers' SSRC, both would start SRTCP index 0 for
    // the same (key, SSRC) (RFC 3711 §9.1) and the publisher would refuse the second as a
    // replay. Each worker sends as its own SSRC instead.
    const VIEWER_SSRC: u32 = 0xFA17_FA17;
    let (_guard, path, _) = setup("fb", 2, 16, Some(PUB_SSRC), &[(1, 2, None), (2, 3, None)]);
    let engines: Vec<Engine> = (0..2).map(|worker| engine_on(&path, worker)).collect();
    let mut engines = engines;
    // The viewers' contexts (towards the relay) and the publisher's receiving context.
    let mut viewer = [
        Context::new(key(2), ContextOptions::default()).unwrap(),
        Context::new(key(3), ContextOptions::default()).unwrap(),
    ];
    let mut publisher_rx = Context::new(key(101), ContextOptions::default()).unwrap();
    let mut tx = TxQueue::with_capacity(8);
    let mut slow = TxQueue::with_capacity(8);
    let now = Instant::now();
    let mut got = Vec::new();
    // More rounds than the SRTCP resume skip (64): with one shared flow the workers' index
    // sequences would meet even after one seeded itself from the other's stored entry.
    for round in 0..100 {
        for (v, engine) in engines.iter_mut().enumerate() {
            // PLI (RFC 4585 §6.3.1): sender SSRC, media source SSRC.
            let mut buf = [0u8; MAX_DATAGRAM];
            buf[..4].copy_from_slice(&[0x81, 206, 0, 2]);
            buf[4..8].copy_from_slice(&VIEWER_SSRC.to_be_bytes());
            buf[8..12].copy_from_slice(&PUB_SSRC.to_be_bytes());
            let l = viewer[v].protect_rtcp(&mut buf, 12).unwrap();
            tx.clear();
            engine.begin_batch(now);
            engine.handle_datagram(peer(2 + v as u64), &mut buf, l, &mut tx, &mut slow);
            engine.end_batch(now);
            assert_eq!(tx.len(), 1, "round {round}, viewer {v}: PLI forwarded");
            assert_eq!(tx.metas()[0].dst, peer(1));
            let mut d = tx.datagram(0).to_vec();
            let dl = d.len();
            let n = publisher_rx
                .unprotect_rtcp(&mut d, dl)
                .unwrap_or_else(|e| panic!("round {round}, viewer {v}: {e:?}"));
            assert_eq!(n, 12);
            let word = |at: usize| u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]);
            assert_eq!(word(8), PUB_SSRC, "media source kept");
            got.push(word(4));
        }
    }
    assert_eq!(got.len(), 200);
    assert!(got.iter().step_by(2).all(|&s| s == feedback_ssrc(0)));
    assert!(got
        .iter()
        .skip(1)
        .step_by(2)
        .all(|&s| s == feedback_ssrc(1)));
}
