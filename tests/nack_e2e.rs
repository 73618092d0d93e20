//! Loss recovery end to end with an independent SRTP implementation: a publisher sends one
//! stream (crossing a sequence-number wrap) through in-process relay workers (real sockets,
//! two workers, static sessions in shared memory) to a libsrtp viewer (pylibsrtp,
//! tests/nack/viewer.py) that drops 5 % of the packets on purpose before decrypting them and
//! NACKs them. The relay must answer from its retransmission cache: at least 99 % of the
//! dropped packets recovered, decrypting under libsrtp (so the retransmission carries the
//! right SRTP index and ROC), and the publisher must never be asked for a packet the relay
//! had forwarded (so it was in the cache). Once with the original packet resent, once as
//! RFC 4588 RTX on the subscriber's RTX SSRC. And loss on the publisher's leg: the relay
//! notices the gaps and NACKs the publisher itself, before fan-out (Rust SRTP peers).
//!
//! The libsrtp cases need Python with pylibsrtp; without it they print `SKIP: ...` and
//! pass. `SLUICE_PYTHON` names the interpreter (default `python3`).

use contract::shm::{Capacity, Feedback, Rewrite, Role, RouteRecord, RtxOut, ShmReader, ShmWriter};
use contract::srtp::Profile;
use contract::wire::rtcp::{self, Rtcp};
use relay::io::BackendChoice;
use relay::worker::WorkerConfig;
use sluice_tests::*;
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MEDIA_SSRC: u32 = 0x00AB_CDEF;
const RTX_SSRC: u32 = 0x00BB_0001;
const COUNT: u16 = 2000;
const FIRST_SEQ: u16 = 64_536;

fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn pylibsrtp_available() -> bool {
    Command::new(python())
        .args(["-c", "import pylibsrtp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The sequence numbers of every generic NACK the publisher receives (SRTCP, decrypted with
/// its key), until `stop` is set.
fn publisher_nacks(p: &mut Peer, until: Instant) -> Vec<u16> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    while Instant::now() < until {
        let Ok((n, _)) = p.sock.recv_from(&mut buf) else {
            continue;
        };
        let Ok(m) = p.recv.unprotect_rtcp(&mut buf, n) else {
            continue;
        };
        for pkt in rtcp::packets(&buf[..m]).flatten() {
            if let Ok(Rtcp::Nack(nk)) = pkt.typed() {
                out.extend(nk.lost());
            }
        }
    }
    out
}

fn run(rtx: bool, workers: usize) -> f64 {
    if !pylibsrtp_available() {
        sluice_tests::skip::skip("pylibsrtp not installed (pip install pylibsrtp)");
        return 0.0;
    }
    let profile = Profile::Aes128CmSha1_80;
    let dir = TempDir::new("nack");
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
    let mut publisher = Peer::new(1, Role::Speaker, profile);
    // The viewer's identity; its socket is closed and the libsrtp peer binds the port.
    let v = Peer::new(2, Role::Viewer, profile);
    let viewer = v.record();
    drop(v);
    w.put_session(&publisher.record()).expect("session");
    w.put_session(&viewer).expect("session");
    w.put_route(&RouteRecord {
        id: 1,
        from: 1,
        ssrc: Some(MEDIA_SSRC),
        to: 2,
        rewrite: Rewrite {
            rtx: rtx.then_some(RtxOut {
                payload_type: 97,
                ssrc: RTX_SSRC,
            }),
            ..Rewrite::default()
        },
    })
    .expect("route");
    let reader = Arc::new(ShmReader::open(&shm).expect("open shm"));
    let workers = relay_workers(
        reader.clone(),
        WorkerConfig {
            bind: "127.0.0.1:0".parse().expect("addr"),
            workers: Some(workers),
            backend: BackendChoice::Mmsg,
            pin: false,
            ..WorkerConfig::default()
        },
        None,
    );
    let relay_addr = workers.local_addr();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("nack/viewer.py");
    let mut child = Command::new(python())
        .arg(script)
        .args([
            relay_addr.port().to_string(),
            viewer.peer.port().to_string(),
            hex(viewer.tx_key.as_bytes()),
            hex(viewer.rx_key.as_bytes()),
            COUNT.to_string(),
            "0.05".into(),
            "7".into(),
            MEDIA_SSRC.to_string(),
            if rtx {
                RTX_SSRC.to_string()
            } else {
                "0".into()
            },
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the libsrtp viewer");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));
    // The publisher sends about one packet per millisecond and then listens for NACKs.
    let nacked = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            for i in 0..COUNT {
                let seq = FIRST_SEQ.wrapping_add(i);
                publisher.send_rtp(relay_addr, MEDIA_SSRC, seq, &[i as u8; 600]);
                if i % 10 == 9 {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            publisher_nacks(&mut publisher, Instant::now() + Duration::from_secs(2))
        });
        h.join().expect("publisher")
    });
    let report = lines
        .next()
        .and_then(Result::ok)
        .expect("the viewer's report");
    let _ = child.wait();
    eprintln!("viewer: {report}");
    let r: serde_json::Value = serde_json::from_str(&report).expect("json report");
    let dropped: Vec<u16> = r["dropped"]
        .as_array()
        .expect("dropped")
        .iter()
        .map(|x| x.as_u64().expect("seq") as u16)
        .collect();
    let recovered = r["recovered"].as_u64().expect("recovered") as usize;
    let totals = reader.totals();
    workers.stop().expect("clean stop");
    eprintln!(
        "relay: nack_received {} retransmitted {} rtx_sent {} cache_miss {} nack_upstream {} \
         resend_suppressed {} handed_over {}",
        totals.feedback(Feedback::NackReceived),
        totals.feedback(Feedback::Retransmitted),
        totals.feedback(Feedback::RtxSent),
        totals.feedback(Feedback::CacheMiss),
        totals.feedback(Feedback::NackUpstream),
        totals.feedback(Feedback::ResendSuppressed),
        totals.feedback(Feedback::HandedOver),
    );
    // Relay side: a NACK is answered inside the loop turn that received it, so its time in
    // the relay is at most that turn's processing time; the p99 of those (the workers' own
    // clock, counter block histogram, bucket upper bounds) bounds the relay's part.
    let turns: u64 = totals.time_hist.iter().sum();
    let mut seen = 0;
    let p99_bucket = totals
        .time_hist
        .iter()
        .position(|&c| {
            seen += c;
            seen * 100 >= turns * 99
        })
        .unwrap_or(0);
    eprintln!(
        "relay: p99 batch processing time < {} µs over {turns} batches",
        (1u64 << (p99_bucket + 1)) / 1000
    );
    assert_eq!(r["errors"], 0, "every packet decrypts under libsrtp");
    assert!(
        dropped.len() >= 50,
        "the viewer dropped {} of {COUNT}",
        dropped.len()
    );
    assert!(
        recovered * 100 >= dropped.len() * 99,
        "recovered {recovered} of {}",
        dropped.len()
    );
    assert_eq!(
        r["received"].as_u64(),
        Some(u64::from(COUNT)),
        "the viewer ends with every packet"
    );
    // Every packet the viewer dropped had been forwarded by the relay, so it was cached: the
    // publisher must not have been asked for any of them.
    let dropped: HashSet<u16> = dropped.into_iter().collect();
    let asked: Vec<u16> = nacked
        .iter()
        .filter(|s| dropped.contains(s))
        .copied()
        .collect();
    assert!(
        asked.is_empty(),
        "publisher asked for cached packets {asked:?}"
    );
    let resent = if rtx {
        totals.feedback(Feedback::RtxSent)
    } else {
        totals.feedback(Feedback::Retransmitted)
    };
    assert!(resent as usize >= recovered, "{resent} resends");
    if rtx {
        // The RTX stream's own numbering: consecutive from its first packet.
        let seqs: Vec<u64> = r["rtx_seqs"]
            .as_array()
            .expect("rtx_seqs")
            .iter()
            .filter_map(|x| x.as_u64())
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    }
    r["p99_ms"].as_f64().unwrap_or(0.0)
}

/// One worker: the NACK is answered in the loop turn that received it. The viewer's p99
/// from sending a NACK to decrypting the resend (Python's clock, so an upper bound of the
/// relay's part) is printed for docs/BENCHMARKS.md.
#[test]
fn viewer_nacks_are_answered_from_the_cache() {
    let p99 = run(false, 1);
    eprintln!("NACK to resend at the viewer, p99: {p99:.2} ms");
}

/// Two workers (the viewer's feedback often lands on the worker without the publisher, and
/// is handed over), RTX.
#[test]
fn viewer_nacks_are_answered_as_rtx() {
    run(true, 2);
}

/// Loss on the publisher's leg is repaired by the relay before fan-out: the publisher leaves
/// out every 20th packet, the relay notices each gap and NACKs it (the publisher answers with
/// the packet), and each of three viewers ends with every packet exactly once, without any
/// viewer asking. Rust SRTP peers on both sides (no Python needed).
#[test]
fn publisher_leg_loss_is_repaired_before_fan_out() {
    let profile = Profile::AeadAes128Gcm;
    let dir = TempDir::new("nack-up");
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
    let mut publisher = Peer::new(11, Role::Speaker, profile);
    let mut viewers: Vec<Peer> = (0..3)
        .map(|i| Peer::new(20 + i, Role::Viewer, profile))
        .collect();
    w.put_session(&publisher.record()).expect("session");
    for (i, v) in viewers.iter().enumerate() {
        w.put_session(&v.record()).expect("session");
        w.put_route(&RouteRecord {
            id: 1 + i as u64,
            from: publisher.id,
            ssrc: None,
            to: v.id,
            rewrite: Rewrite::default(),
        })
        .expect("route");
    }
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
    const N: u16 = 1000;
    let skipped: HashSet<u16> = (0..N).filter(|s| s % 20 == 10).collect();
    publisher.sock.set_nonblocking(true).expect("nonblocking");
    let (asked, got) = std::thread::scope(|sc| {
        let readers: Vec<_> = viewers
            .iter_mut()
            .map(|v| sc.spawn(move || v.recv_rtp(usize::from(N), Duration::from_secs(3))))
            .collect();
        // Send, and answer the relay's NACKs between packets (and for a while after).
        let mut asked: Vec<u16> = Vec::new();
        let mut buf = vec![0u8; 2048];
        let mut answer = |p: &mut Peer, asked: &mut Vec<u16>| {
            while let Ok((n, _)) = p.sock.recv_from(&mut buf) {
                let Ok(m) = p.recv.unprotect_rtcp(&mut buf, n) else {
                    continue;
                };
                let mut lost = Vec::new();
                for pkt in rtcp::packets(&buf[..m]).flatten() {
                    if let Ok(Rtcp::Nack(nk)) = pkt.typed() {
                        lost.extend(nk.lost());
                    }
                }
                for s in lost {
                    asked.push(s);
                    p.send_rtp(relay_addr, MEDIA_SSRC, s, &[s as u8; 500]);
                }
            }
        };
        for seq in 0..N {
            if !skipped.contains(&seq) {
                publisher.send_rtp(relay_addr, MEDIA_SSRC, seq, &[seq as u8; 500]);
            }
            answer(&mut publisher, &mut asked);
            if seq % 10 == 9 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            answer(&mut publisher, &mut asked);
            std::thread::sleep(Duration::from_millis(1));
        }
        let got: Vec<_> = readers
            .into_iter()
            .map(|h| h.join().expect("viewer"))
            .collect();
        (asked, got)
    });
    let totals = reader.totals();
    workers.stop().expect("clean stop");
    for (i, g) in got.iter().enumerate() {
        let seqs: HashSet<u16> = g.iter().map(|(_, s, _)| *s).collect();
        assert_eq!(g.len(), usize::from(N), "viewer {i}: {} packets", g.len());
        assert_eq!(seqs.len(), usize::from(N), "viewer {i}: duplicates");
        assert!(g.iter().all(|(_, s, p)| p == &vec![*s as u8; 500]));
    }
    let asked_set: HashSet<u16> = asked.iter().copied().collect();
    assert_eq!(asked_set, skipped, "the relay asked for exactly the gaps");
    // Once per gap when the repair arrives within a round trip (relay.nack_rtt_ms), again
    // only after one: at most the retry budget (3) however loaded the machine is.
    for s in &skipped {
        let n = asked.iter().filter(|a| *a == s).count();
        assert!((1..=3).contains(&n), "seq {s} asked {n} times");
    }
    eprintln!(
        "{} gaps, {} NACKed sequence numbers",
        skipped.len(),
        asked.len()
    );
    assert_eq!(totals.feedback(Feedback::NackUpstream), asked.len() as u64);
    assert_eq!(
        totals.feedback(Feedback::NackReceived),
        0,
        "no viewer had to ask"
    );
}

/// The relay's own RTCP on both legs (Rust SRTP peers): a publisher sends 90 kHz video with a
/// sender report every 500 ms; the viewer, on a route that rewrites the SSRC, receives the
/// relay's SRs on its rewritten SSRC, each with the publisher's NTP↔RTP mapping carried
/// through the rewrite (so lip sync survives) and its own stream's counts; the publisher
/// receives the relay's RRs about its stream, with LSR naming one of its SRs.
#[test]
fn relay_reports_on_both_legs() {
    const OUT_SSRC: u32 = 0x00FE_ED00;
    const NTP_BASE: u64 = 0xE7A0_0000_0000_0000;
    let profile = Profile::AeadAes128Gcm;
    let dir = TempDir::new("rtcp-legs");
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
    let mut publisher = Peer::new(31, Role::Speaker, profile);
    let mut viewer = Peer::new(32, Role::Viewer, profile);
    w.put_session(&publisher.record()).expect("session");
    w.put_session(&viewer.record()).expect("session");
    w.put_route(&RouteRecord {
        id: 1,
        from: publisher.id,
        ssrc: Some(MEDIA_SSRC),
        to: viewer.id,
        rewrite: Rewrite {
            ssrc: Some(OUT_SSRC),
            ..Rewrite::default()
        },
    })
    .expect("route");
    let reader = Arc::new(ShmReader::open(&shm).expect("open shm"));
    let workers = relay_workers(
        reader.clone(),
        WorkerConfig {
            bind: "127.0.0.1:0".parse().expect("addr"),
            workers: Some(1),
            backend: BackendChoice::Mmsg,
            pin: false,
            ..WorkerConfig::default()
        },
        None,
    );
    let relay_addr = workers.local_addr();
    // The publisher's clocks: packet `seq` is sampled at seq / 30 s (RTP seq × 3000 at 90 kHz,
    // `Peer::send_rtp`), NTP_BASE + that time on its wall clock.
    let ntp_of = |seq: u16| NTP_BASE + ((u64::from(seq) << 32) / 30);
    publisher.sock.set_nonblocking(true).expect("nonblocking");
    let mut sr_ntp = Vec::new();
    let (viewer_got, rrs) = std::thread::scope(|sc| {
        let v = sc.spawn(|| {
            // (RTP timestamp offset seen on media, relay SRs as (NTP, RTP, packets, octets)).
            let mut off = None;
            let mut srs = Vec::new();
            let mut buf = vec![0u8; 2048];
            let until = Instant::now() + Duration::from_millis(4500);
            while Instant::now() < until {
                let Ok((n, _)) = viewer.sock.recv_from(&mut buf) else {
                    continue;
                };
                if (192..=223).contains(&buf[1]) {
                    let m = viewer.recv.unprotect_rtcp(&mut buf, n).expect("SRTCP");
                    for p in rtcp::packets(&buf[..m]).flatten() {
                        if let Ok(Rtcp::SenderReport(sr)) = p.typed() {
                            assert_eq!(sr.ssrc(), OUT_SSRC, "the rewritten SSRC");
                            srs.push((
                                sr.ntp_timestamp(),
                                sr.rtp_timestamp(),
                                sr.packet_count(),
                                sr.octet_count(),
                            ));
                        }
                    }
                } else {
                    viewer.recv.unprotect_rtp(&mut buf, n).expect("SRTP");
                    let seq = u16::from_be_bytes([buf[2], buf[3]]);
                    let ts = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                    off.get_or_insert(ts.wrapping_sub(u32::from(seq) * 3000));
                }
            }
            (off, srs)
        });
        let mut rrs = Vec::new();
        let mut buf = vec![0u8; 2048];
        let start = Instant::now();
        for seq in 0..110u16 {
            publisher.send_rtp(relay_addr, MEDIA_SSRC, seq, &[seq as u8; 400]);
            if seq % 15 == 14 {
                // RFC 3550 §6.4.1: NTP and RTP timestamps of the same instant.
                let mut sr = [0u8; 128];
                sr[..4].copy_from_slice(&[0x80, 200, 0, 6]);
                sr[4..8].copy_from_slice(&MEDIA_SSRC.to_be_bytes());
                sr[8..16].copy_from_slice(&ntp_of(seq).to_be_bytes());
                sr[16..20].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
                sr[20..24].copy_from_slice(&u32::from(seq + 1).to_be_bytes());
                let n = publisher.send.protect_rtcp(&mut sr, 28).expect("protect");
                publisher.sock.send_to(&sr[..n], relay_addr).expect("send");
                sr_ntp.push(ntp_of(seq));
            }
            while let Ok((n, _)) = publisher.sock.recv_from(&mut buf) {
                let Ok(m) = publisher.recv.unprotect_rtcp(&mut buf, n) else {
                    continue;
                };
                for p in rtcp::packets(&buf[..m]).flatten() {
                    if let Ok(Rtcp::ReceiverReport(rr)) = p.typed() {
                        rrs.extend(rr.report_blocks());
                    }
                }
            }
            // 30 packets per second of the test's clock.
            let next = start + Duration::from_micros(33_333 * (u64::from(seq) + 1));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        (v.join().expect("viewer"), rrs)
    });
    let totals = reader.totals();
    workers.stop().expect("clean stop");
    let (off, srs) = viewer_got;
    let off = off.expect("media reached the viewer");
    eprintln!(
        "viewer: {} relay SRs; publisher: {} RR blocks; sr_sent {} sr_replaced {} rr_sent {}",
        srs.len(),
        rrs.len(),
        totals.feedback(Feedback::SrSent),
        totals.feedback(Feedback::SrReplaced),
        totals.feedback(Feedback::RrSent),
    );
    assert!(srs.len() >= 2, "{srs:?}");
    for &(ntp, rtp, packets, octets) in &srs {
        // The publisher's mapping, through the rewrite: RTP = 90 kHz × (NTP − base) + offset.
        let secs = (ntp - NTP_BASE) as f64 / 4_294_967_296.0;
        let want = ((secs * 90_000.0).round() as u64 as u32).wrapping_add(off);
        let diff = rtp.wrapping_sub(want) as i32;
        assert!(
            diff.abs() <= 2,
            "SR NTP {ntp:#x} RTP {rtp}: {diff} ticks off"
        );
        assert!((1..=110).contains(&packets), "{packets}");
        assert_eq!(octets, packets * 400, "payload octets of the stream sent");
    }
    assert!(!rrs.is_empty(), "the publisher got receiver reports");
    let b = rrs.last().expect("a block");
    assert_eq!(b.ssrc, MEDIA_SSRC);
    assert!(b.highest_sequence >= 30, "{b:?}");
    assert_eq!(b.cumulative_lost, 0, "{b:?}");
    let lsrs: Vec<u32> = sr_ntp.iter().map(|n| (n >> 16) as u32).collect();
    assert!(
        rrs.iter().any(|b| lsrs.contains(&b.last_sr)),
        "LSR names one of the publisher's SRs: {rrs:?}"
    );
    assert_eq!(totals.feedback(Feedback::SrReplaced), sr_ntp.len() as u64);
}
