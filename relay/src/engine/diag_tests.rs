//! Per-session diagnostics with real SRTP (AES_CM_128_HMAC_SHA1_80) and a real shm file: a
//! publisher's stream with known losses, a replay, a forged packet and a paced arrival
//! pattern goes through an engine; the records the worker publishes (summed by
//! `ShmReader::diagnostics`) must show exactly those numbers, be written at most every
//! `PUBLISH_INTERVAL`, and be freed with their session.

use super::diag::{NO_SLOT, PUBLISH_INTERVAL};
use super::tests::{key, session};
use super::*;
use crate::batch::{TxQueue, MAX_DATAGRAM};
use contract::shm::{Capacity, Rewrite, Role, ShmWriter, StreamDir};
use contract::srtp::Context;
use std::net::SocketAddr;
use std::time::Duration;

const SSRC: u32 = 0x0A0B_0C0D;

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn peer(id: u64) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 1000 + id as u16))
}

/// A protected RTP packet with sequence number `seq` and a 48 kHz timestamp (10 ms frames).
fn rtp(sender: &mut Context, seq: u16) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut p = vec![0x80, 111];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 480).to_be_bytes());
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(&[seq as u8; 80]);
    buf[..p.len()].copy_from_slice(&p);
    let n = sender.protect_rtp(&mut buf, p.len()).unwrap();
    buf[..n].to_vec()
}

struct World {
    engine: Engine,
    tx: TxQueue,
    slow: TxQueue,
}

impl World {
    /// One batch at `now` with `pkt` from the publisher (none: an idle turn).
    fn batch(&mut self, now: Instant, pkt: Option<&[u8]>) {
        self.tx.clear();
        self.engine.begin_batch(now);
        if let Some(p) = pkt {
            let mut buf = [0u8; MAX_DATAGRAM];
            buf[..p.len()].copy_from_slice(p);
            self.engine
                .handle_datagram(peer(1), &mut buf, p.len(), &mut self.tx, &mut self.slow);
        }
        self.engine.end_batch(now);
    }
}

#[test]
fn counters_reception_and_publish_cadence() {
    let path = std::env::temp_dir().join(format!("sluice-diag-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let _guard = TempFile(path.clone());
    let cap = Capacity {
        sessions: 8,
        routes: 8,
        workers: 2,
    };
    let mut w = ShmWriter::create(&path, cap).unwrap();
    w.put_session(&session(1, Role::Trunk)).unwrap();
    w.put_session(&session(2, Role::Viewer)).unwrap();
    w.put_route(&RouteRecord {
        id: 1,
        from: 1,
        ssrc: None,
        to: 2,
        rewrite: Rewrite::default(),
    })
    .unwrap();
    let shm = Arc::new(ShmReader::open(&path).unwrap());
    let mut world = World {
        engine: Engine::new(
            shm.clone(),
            EngineConfig {
                worker: 1,
                ..EngineConfig::default()
            },
        ),
        tx: TxQueue::with_capacity(8),
        slow: TxQueue::with_capacity(8),
    };
    let t0 = Instant::now();
    world.engine.set_wall_clock(t0, 1_000_000);
    let mut sender = Context::new(key(1), ContextOptions::default()).unwrap();
    let lost = [50u16, 51, 120];
    let mut sent = 0u64;
    let mut at = t0;
    let mut kept = Vec::new();
    for seq in 1..=200u16 {
        let p = rtp(&mut sender, seq);
        if lost.contains(&seq) {
            continue;
        }
        // 10 ms frames; every even one arrives 2 ms late: |D| = 2 ms = 96 units at 48 kHz.
        at = t0 + Duration::from_millis(10 * u64::from(seq) + 2 * u64::from(seq % 2 == 0));
        world.batch(at, Some(&p));
        assert_eq!(world.tx.len(), 1, "seq {seq} forwarded");
        sent += 1;
        if seq == 10 {
            kept = p;
        }
    }
    // A replay of seq 10 and a packet with a broken tag.
    let t_bad = at + Duration::from_millis(5);
    world.batch(t_bad, Some(&kept));
    let mut forged = rtp(&mut sender, 201);
    let l = forged.len();
    forged[l - 1] ^= 1;
    world.batch(t_bad, Some(&forged));
    assert_eq!(world.tx.len(), 0);
    // Cadence: 200 batches over ~2 s, each ending with a due check.
    let d = world.engine.forwarder().diagnostics();
    let span = t_bad.duration_since(t0);
    let max = span.as_millis() as u64 / PUBLISH_INTERVAL.as_millis() as u64 + 1;
    assert!(
        d.publishes() <= max,
        "{} publishes in {span:?}",
        d.publishes()
    );
    assert!(
        d.publishes() >= max - 2,
        "{} publishes in {span:?}",
        d.publishes()
    );
    // Each round writes at most the two sessions and their two streams.
    assert!(d.writes() <= 4 * d.publishes());
    // An idle turn past the interval publishes what the last batches counted.
    let t_end = t_bad + PUBLISH_INTERVAL;
    world.batch(t_end, None);

    let (diag, rep) = shm.diagnostics();
    assert_eq!(rep.invalid + rep.busy, 0);
    let p = &diag.sessions[&1];
    assert_eq!(p.workers, [1]);
    assert_eq!(p.totals.packets_in, sent + 2);
    assert_eq!(p.totals.auth_failures, 1);
    assert_eq!(p.totals.replays, 1);
    assert_eq!(p.totals.packets_out, 0);
    assert_eq!(
        p.totals.last_in_unix_ms,
        1_000_000 + t_bad.duration_since(t0).as_millis() as u64
    );
    assert_eq!(p.streams.len(), 1);
    let s = &p.streams[0];
    assert_eq!((s.ssrc, s.dir, s.packets), (SSRC, StreamDir::In, sent));
    let rc = s.reception.expect("reception statistics");
    // RFC 3550 A.1: validated at its second packet, so expected counts from seq 2.
    assert_eq!(rc.extended_highest, 200);
    assert_eq!(rc.expected, 199);
    assert_eq!(rc.cumulative_lost, 3);
    assert_eq!(rc.clock_rate, 48_000);
    // A.8 converges to |D| = 96 units (2 ms); integer steps settle a little below it.
    assert!((88..=96).contains(&rc.jitter_rtp), "{}", rc.jitter_rtp);
    assert!((1_800..=2_000).contains(&rc.jitter_us), "{}", rc.jitter_us);
    let v = &diag.sessions[&2];
    assert_eq!(v.totals.packets_out, sent);
    assert_eq!(v.totals.packets_in, 0);
    assert_eq!(v.streams.len(), 1);
    assert_eq!(
        (v.streams[0].dir, v.streams[0].packets),
        (StreamDir::Out, sent)
    );
    assert!(v.streams[0].reception.is_none());
    assert!(v.totals.bytes_out > sent * 92, "protected length counted");

    // The viewer leaves: its records are freed at the next index rebuild.
    w.remove_session(2);
    world.batch(t_end + PUBLISH_INTERVAL, None);
    let (diag, _) = shm.diagnostics();
    assert!(!diag.sessions.contains_key(&2));
    assert!(diag.sessions.contains_key(&1));
    assert_eq!(world.engine.forwarder().diagnostics().unpublished(), 0);
    assert_ne!(NO_SLOT, 0);
}

#[test]
fn a_new_engine_clears_its_region_and_others_are_untouched() {
    let path = std::env::temp_dir().join(format!("sluice-diag2-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let _guard = TempFile(path.clone());
    let cap = Capacity {
        sessions: 8,
        routes: 8,
        workers: 2,
    };
    let mut w = ShmWriter::create(&path, cap).unwrap();
    w.put_session(&session(1, Role::Trunk)).unwrap();
    let shm = Arc::new(ShmReader::open(&path).unwrap());
    let stale = contract::shm::StatRecord::Session(contract::shm::SessionStats {
        session: 1,
        packets_in: 5,
        writer_pid: std::process::id(),
        ..Default::default()
    });
    assert!(shm.put_stat(0, 0, &stale));
    assert!(shm.put_stat(1, 7, &stale));
    let _e = <Engine>::new(
        shm.clone(),
        EngineConfig {
            worker: 1,
            ..EngineConfig::default()
        },
    );
    assert_eq!(shm.stat_slot(1, 7).unwrap(), None, "own region cleared");
    assert_eq!(
        shm.stat_slot(0, 0).unwrap(),
        Some(stale),
        "other worker kept"
    );
}

#[test]
fn a_full_region_skips_records_and_never_blocks_forwarding() {
    let path = std::env::temp_dir().join(format!("sluice-diag3-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let _guard = TempFile(path.clone());
    let cap = Capacity {
        sessions: 8,
        routes: 8,
        workers: 1,
    };
    // Two slots: the publisher's session and stream records fit, the viewer's do not.
    let mut w = ShmWriter::create_with_regions(&path, cap, 8, 2).unwrap();
    w.put_session(&session(1, Role::Trunk)).unwrap();
    w.put_session(&session(2, Role::Viewer)).unwrap();
    w.put_route(&RouteRecord {
        id: 1,
        from: 1,
        ssrc: None,
        to: 2,
        rewrite: Rewrite::default(),
    })
    .unwrap();
    let shm = Arc::new(ShmReader::open(&path).unwrap());
    let mut world = World {
        engine: Engine::new(shm.clone(), EngineConfig::default()),
        tx: TxQueue::with_capacity(8),
        slow: TxQueue::with_capacity(8),
    };
    let mut sender = Context::new(key(1), ContextOptions::default()).unwrap();
    let t0 = Instant::now();
    for seq in 1..=5u16 {
        let p = rtp(&mut sender, seq);
        world.batch(t0 + PUBLISH_INTERVAL * u32::from(seq), Some(&p));
        assert_eq!(world.tx.len(), 1, "forwarded whatever the region holds");
    }
    let d = world.engine.forwarder().diagnostics();
    assert!(d.unpublished() > 0);
    let (diag, _) = shm.diagnostics();
    // The publisher (first in the index) took both slots at the first publish.
    assert_eq!(diag.sessions.keys().copied().collect::<Vec<_>>(), [1]);
}

#[test]
fn stream_lists_grow_by_doubling_up_to_the_limit() {
    use super::diag::SessionDiag;
    let mut d = SessionDiag::default();
    let now = Some(Instant::now());
    d.on_rtp_out(&out(1, 100), now, 10);
    assert_eq!(d.tx.capacity(), 4, "one stream does not hold the limit");
    for ssrc in 2..=12 {
        d.on_rtp_out(&out(ssrc, 100), now, 10);
    }
    assert_eq!(d.tx.len(), 10, "streams past the limit are not tracked");
    assert_eq!(d.tx.capacity(), 10);
    // A known stream counts without growing anything.
    d.on_rtp_out(&out(3, 50), now, 10);
    assert_eq!((d.tx[2].packets, d.tx[2].bytes), (2, 150));
    d.on_rtp_in(7, 1, 0, 80, now, 2);
    d.on_rtp_in(8, 1, 0, 80, now, 2);
    d.on_rtp_in(9, 1, 0, 80, now, 2);
    assert_eq!((d.rx.len(), d.rx.capacity()), (2, 2));
}

fn out(ssrc: u32, len: usize) -> super::diag::RtpOut {
    super::diag::RtpOut {
        ssrc,
        len,
        payload: len.saturating_sub(12),
        src: (1, ssrc),
        ts_off: 0,
        layer: None,
    }
}
