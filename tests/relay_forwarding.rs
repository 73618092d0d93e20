//! End to end over loopback UDP: publishers → relay (real workers and sockets, both backends,
//! every SRTP profile) → subscribers; and a relay process restarted mid-stream that resumes
//! forwarding from the shared-memory file alone.

use contract::shm::{Capacity, Rewrite, Role, RouteRecord, ShmReader, ShmWriter};
use contract::srtp::Profile;
use relay::io::BackendChoice;
use relay::worker::WorkerConfig;
use sluice_tests::*;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// (SSRC, sequence number, payload) of one decrypted packet.
type Received = (u32, u16, Vec<u8>);

fn capacity() -> Capacity {
    Capacity {
        sessions: 64,
        routes: 256,
        workers: 8,
    }
}

fn route(id: u64, from: u64, to: u64) -> RouteRecord {
    RouteRecord {
        id,
        from,
        ssrc: None,
        to,
        rewrite: Rewrite::default(),
    }
}

/// 2 publishers × 3 subscribers for one profile through in-process workers.
fn fan_out(backend: BackendChoice, profile: Profile) {
    let dir = TempDir::new("fanout");
    let shm = dir.path().join("shm");
    let mut w = ShmWriter::create(&shm, capacity()).expect("create shm");
    let base = 100 * (profile.code() as u64);
    let mut pubs: Vec<Peer> = (0..2)
        .map(|i| Peer::new(base + i, Role::Speaker, profile))
        .collect();
    let mut subs: Vec<Peer> = (0..3)
        .map(|j| Peer::new(base + 10 + j, Role::Viewer, profile))
        .collect();
    let mut rid = 1;
    for p in pubs.iter().chain(subs.iter()) {
        w.put_session(&p.record()).expect("session");
    }
    for p in &pubs {
        for s in &subs {
            w.put_route(&route(rid, p.id, s.id)).expect("route");
            rid += 1;
        }
    }
    let reader = Arc::new(ShmReader::open(&shm).expect("open shm"));
    let workers = relay_workers(
        reader.clone(),
        WorkerConfig {
            bind: "127.0.0.1:0".parse().expect("addr"),
            workers: Some(2),
            backend,
            pin: false,
            ..WorkerConfig::default()
        },
        None,
    );
    assert_eq!(BackendChoice::from(workers.backend()), backend);
    let relay_addr = workers.local_addr();
    let per_pub = 60u16;
    let want = 2 * per_pub as usize;
    // Subscribers read while the publishers send (loopback socket buffers are small).
    let results: Vec<(u64, Vec<Received>)> = std::thread::scope(|sc| {
        let readers: Vec<_> = subs
            .iter_mut()
            .map(|s| sc.spawn(move || (s.id, s.recv_rtp(want, Duration::from_secs(10)))))
            .collect();
        for seq in 0..per_pub {
            for (i, p) in pubs.iter_mut().enumerate() {
                p.send_rtp(relay_addr, 0x1000 + i as u32, seq, &[seq as u8; 800]);
            }
            if seq % 10 == 9 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        readers
            .into_iter()
            .map(|h| h.join().expect("reader thread"))
            .collect()
    });
    for (id, got) in results {
        let mut seen = HashSet::new();
        for (ssrc, seq, payload) in &got {
            assert!(seen.insert((*ssrc, *seq)), "{profile}: duplicate");
            assert_eq!(payload, &vec![*seq as u8; 800]);
        }
        assert_eq!(
            got.len(),
            want,
            "{profile} over {backend}: subscriber {id} got {} of {want}",
            got.len()
        );
    }
    let workers_total = workers.total();
    workers.stop().expect("clean stop");
    let totals = reader.totals();
    assert_eq!(totals.packets_in, want as u64);
    assert_eq!(totals.packets_out, 3 * want as u64);
    // The workers publish their loop turns (and stalls) through the same counter blocks.
    let turns = workers_total.turns;
    assert!(
        totals.loop_turns >= turns && turns > 0,
        "shm loop_turns {} against the workers' {turns}",
        totals.loop_turns
    );
    assert!(totals.stalls <= totals.loop_turns);
}

#[test]
fn every_profile_mmsg() {
    for p in Profile::ALL {
        fan_out(BackendChoice::Mmsg, p);
    }
}

#[test]
fn every_profile_io_uring() {
    if let Err(e) = relay::io::probe_io_uring() {
        sluice_tests::skip::skip(format!("io_uring refused here: {e}"));
        return;
    }
    for p in Profile::ALL {
        fan_out(BackendChoice::IoUring, p);
    }
}

/// Stop the relay process mid-stream and start a new one: it maps the same file and forwards
/// at once, with no writer action in between.
#[test]
fn relay_restart_resumes_from_shm() {
    let dir = TempDir::new("restart");
    let shm = dir.path().join("shm");
    let mut w = ShmWriter::create(&shm, capacity()).expect("create shm");
    let profile = Profile::AeadAes128Gcm;
    let mut p = Peer::new(1, Role::Host, profile);
    let mut s = Peer::new(2, Role::Viewer, profile);
    w.put_session(&p.record()).expect("session");
    w.put_session(&s.record()).expect("session");
    w.put_route(&route(1, 1, 2)).expect("route");

    let port = free_udp_port();
    let bind: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let backend = if relay::io::probe_io_uring().is_ok() {
        "io_uring"
    } else {
        "mmsg"
    };
    let mut relay = RelayProcess::start(&shm, bind, backend);
    assert_eq!(relay.media, bind);
    for seq in 0..30u16 {
        p.send_rtp(relay.media, 0xCAFE, seq, b"before restart");
    }
    let got = s.recv_rtp(30, Duration::from_secs(3));
    assert_eq!(got.len(), 30);
    assert!(relay.stop(), "relay exits cleanly on SIGTERM");

    let generation = w.generation();
    let relay = RelayProcess::start(&shm, bind, backend);
    for seq in 30..60u16 {
        p.send_rtp(relay.media, 0xCAFE, seq, b"after restart");
    }
    let got = s.recv_rtp(30, Duration::from_secs(3));
    assert_eq!(got.len(), 30, "forwarding resumed after restart");
    assert!(got
        .iter()
        .all(|(_, seq, pl)| *seq >= 30 && pl == b"after restart"));
    assert_eq!(w.generation(), generation, "no writer action");
    let info = ShmReader::open(&shm).expect("open").relay_info();
    assert_eq!(info.pid, relay.child.id());
    assert_eq!(info.workers, 1);
}
