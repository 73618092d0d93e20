//! Feedback reaches the publisher whichever worker receives it. Two relay workers share one
//! SO_REUSEPORT port; the test finds, by probing, a publisher address the kernel steers to one
//! worker and a viewer address it steers to the other, so every piece of the viewer's
//! feedback arrives on the worker that does not receive the publisher. On an any-SSRC route
//! (no explicit SSRC: that worker never saw the publisher's SSRCs) 50 of 50 FIRs must reach
//! the publisher and 50 of 50 NACKs must be answered (from the other worker's cache), with
//! nothing dropped uncounted.

use contract::shm::{
    Capacity, DropReason, Feedback, Rewrite, Role, RouteRecord, ShmReader, ShmWriter,
};
use contract::srtp::Profile;
use contract::wire::rtcp::{self, Rtcp};
use contract::wire::rtcp_write;
use relay::io::BackendChoice;
use relay::worker::WorkerConfig;
use sluice_tests::*;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SSRC: u32 = 0x0C0F_FEE0;

/// The worker whose `unknown_source` drop counter moved after `p` sent one stray RTP-looking
/// datagram (the relay knows no session at that address yet).
fn worker_of(p: &Peer, relay: SocketAddr, reader: &ShmReader) -> usize {
    let before: Vec<u64> = (0..2)
        .map(|w| {
            let c = reader.worker_counters(w).expect("counters").snapshot();
            c.dropped(DropReason::UnknownSource)
        })
        .collect();
    p.sock
        .send_to(&[0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], relay)
        .expect("probe");
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        for (w, b) in before.iter().enumerate() {
            let c = reader.worker_counters(w).expect("counters").snapshot();
            if c.dropped(DropReason::UnknownSource) > *b {
                return w;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no worker counted the probe");
}

/// Receive SRTP until `want` packets decrypted or `idle` passed; the first copy of each
/// sequence number in `lose` is thrown away undecrypted (lost on the way, so the later
/// retransmission is no replay). Returns the sequence numbers decrypted, in arrival order.
fn recv_losing(p: &mut Peer, want: usize, idle: Duration, lose: &mut HashSet<u16>) -> Vec<u16> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    let mut last = Instant::now();
    while out.len() < want && last.elapsed() < idle {
        let Ok((n, _)) = p.sock.recv_from(&mut buf) else {
            continue;
        };
        last = Instant::now();
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        if lose.remove(&seq) {
            continue;
        }
        p.recv.unprotect_rtp(&mut buf, n).expect("decrypts");
        out.push(seq);
    }
    out
}

/// Every RTCP packet `p` receives until `until`, decrypted: (packet type, FMT, media SSRC).
fn rtcp_received(p: &mut Peer, until: Instant) -> Vec<(u8, u8, u32)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    while Instant::now() < until {
        let Ok((n, _)) = p.sock.recv_from(&mut buf) else {
            continue;
        };
        if !(192..=223).contains(&buf[1]) {
            continue;
        }
        let Ok(m) = p.recv.unprotect_rtcp(&mut buf, n) else {
            continue;
        };
        for pkt in rtcp::packets(&buf[..m]).flatten() {
            let media = match pkt.typed() {
                Ok(Rtcp::Fir(f)) => f.entries().next().map_or(0, |e| e.ssrc),
                _ => pkt.feedback_target(),
            };
            out.push((pkt.packet_type(), pkt.count(), media));
        }
    }
    out
}

#[test]
fn feedback_reaches_the_publisher_from_another_worker() {
    let profile = Profile::Aes128CmSha1_80;
    let dir = TempDir::new("xworker");
    let shm = dir.path().join("shm");
    let mut w = ShmWriter::create(
        &shm,
        Capacity {
            sessions: 16,
            routes: 16,
            workers: 4,
        },
    )
    .expect("create shm");
    let reader = Arc::new(ShmReader::open(&shm).expect("open shm"));
    let workers = relay_workers(
        reader.clone(),
        WorkerConfig {
            bind: "127.0.0.1:0".parse().expect("addr"),
            workers: Some(2),
            backend: BackendChoice::Mmsg,
            pin: false,
            ..WorkerConfig::default()
        },
        None,
    );
    let relay_addr = workers.local_addr();
    // Place the peers: a publisher on one worker, a viewer on the other.
    let mut publisher = Peer::new(1, Role::Speaker, profile);
    let pub_worker = worker_of(&publisher, relay_addr, &reader);
    let mut viewer = None;
    for id in 2..200 {
        let v = Peer::new(id, Role::Viewer, profile);
        if worker_of(&v, relay_addr, &reader) != pub_worker {
            viewer = Some(v);
            break;
        }
    }
    let Some(mut viewer) = viewer else {
        panic!("no viewer address landed on the other worker in 198 tries");
    };
    w.put_session(&publisher.record()).expect("session");
    w.put_session(&viewer.record()).expect("session");
    w.put_route(&RouteRecord {
        id: 1,
        from: 1,
        ssrc: None,
        to: viewer.id,
        rewrite: Rewrite::default(),
    })
    .expect("route");
    // Media first (the publisher's worker learns its SSRC and caches the packets).
    std::thread::sleep(Duration::from_millis(100));
    for seq in 0..100u16 {
        publisher.send_rtp(relay_addr, SSRC, seq, &[seq as u8; 300]);
    }
    let mut lose: HashSet<u16> = (10..60).collect();
    let got = recv_losing(&mut viewer, 50, Duration::from_secs(2), &mut lose);
    assert_eq!(got.len(), 50, "media through, 50 lost on purpose");
    // 50 FIRs and 50 NACKs (each for a different cached packet), from the viewer's worker.
    for i in 0..50u8 {
        let mut b = [0u8; 64];
        let e = rtcp::FirEntry {
            ssrc: SSRC,
            seq_nr: i,
        };
        let n = rtcp_write::fir(&mut b, 0x5EE5, &[e]).expect("fir");
        let mut buf = vec![0u8; 256];
        buf[..n].copy_from_slice(&b[..n]);
        let m = viewer.send.protect_rtcp(&mut buf, n).expect("protect");
        viewer.sock.send_to(&buf[..m], relay_addr).expect("send");
        let (n, _) = rtcp_write::nack(&mut b, 0x5EE5, SSRC, &[10 + u16::from(i)]).expect("nack");
        buf[..n].copy_from_slice(&b[..n]);
        let m = viewer.send.protect_rtcp(&mut buf, n).expect("protect");
        viewer.sock.send_to(&buf[..m], relay_addr).expect("send");
        std::thread::sleep(Duration::from_millis(2));
    }
    let resent = recv_losing(&mut viewer, 50, Duration::from_secs(2), &mut lose);
    let firs = rtcp_received(&mut publisher, Instant::now() + Duration::from_millis(500));
    let totals = reader.totals();
    workers.stop().expect("clean stop");
    let fir_count = firs
        .iter()
        .filter(|(pt, fmt, media)| *pt == 206 && *fmt == 4 && *media == SSRC)
        .count();
    // Keyframe requests are aggregated (one per stream and `relay.pli_interval_ms`): every
    // FIR crossed to the publisher's worker; those within the interval of the first were
    // folded into it there.
    assert!(fir_count >= 1, "FIRs at the publisher: {firs:?}");
    assert_eq!(
        fir_count as u64 + totals.feedback(Feedback::PliAggregated),
        50,
        "FIRs at the publisher: {firs:?}"
    );
    let seqs: HashSet<u16> = resent.into_iter().collect();
    assert_eq!(
        seqs,
        (10..60).collect::<HashSet<u16>>(),
        "NACKed packets resent"
    );
    assert!(
        !firs.iter().any(|(pt, fmt, _)| *pt == 205 && *fmt == 1),
        "no NACK reached the publisher: every packet was cached"
    );
    assert_eq!(totals.feedback(Feedback::HandedOver), 100);
    assert_eq!(totals.feedback(Feedback::Retransmitted), 50);
    assert_eq!(totals.feedback(Feedback::Unroutable), 0);
    assert_eq!(totals.feedback(Feedback::HandOverFull), 0);
    // Only the placement probes were dropped.
    assert_eq!(
        totals.dropped_total(),
        totals.dropped(DropReason::UnknownSource)
    );
}
