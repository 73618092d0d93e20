//! The bench's accounting against a test double relay that drops, duplicates, reorders and
//! corrupts known packets: the report must count exactly those.

#[path = "../../tests/support/skip.rs"]
mod skip;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use contract::srtp::{Context, ContextOptions, Profile};
use sluice_bench::cmd::{self, FindMaxOptions, Output, RunOptions};
use sluice_bench::gen::{Gso, RigSpec};
use sluice_bench::probe;
use sluice_bench::report::Report;
use sluice_bench::target::{Plan, Target, TargetError, TargetInfo, Wiring};

/// What the double does to a publisher's packet with probe sequence number `seq`.
#[derive(Clone, Copy)]
struct Faults {
    drop: u64,
    dup: u64,
    hold: u64,
    corrupt: u64,
}

impl Faults {
    const NONE: Faults = Faults {
        drop: u64::MAX,
        dup: u64::MAX,
        hold: u64::MAX,
        corrupt: u64::MAX,
    };
    const SOME: Faults = Faults {
        drop: 7,
        dup: 13,
        hold: 20,
        corrupt: 42,
    };
}

/// A relay in a thread: decrypts with the publisher's key, re-encrypts per subscriber.
struct DoubleRelay {
    sock: UdpSocket,
    faults: Faults,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    torn_down: usize,
}

/// A loopback UDP socket with room for bursts (GSO sends arrive a batch at a time) while its
/// thread is descheduled on a loaded runner; the kernel caps the size at net.core.rmem_max.
fn big_buffer_socket() -> UdpSocket {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    let _ = sock.set_recv_buffer_size(4 << 20);
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.into()
}

impl DoubleRelay {
    fn new(faults: Faults) -> DoubleRelay {
        let sock = big_buffer_socket();
        DoubleRelay {
            sock,
            faults,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            torn_down: 0,
        }
    }
}

struct Pub {
    rx: Context,
    subs: Vec<(SocketAddr, Context)>,
    /// Reordering: protected copies per subscriber, sent after the next packet.
    held: Vec<(SocketAddr, Vec<u8>)>,
}

fn forward(sock: UdpSocket, mut pubs: HashMap<SocketAddr, Pub>, f: Faults, stop: Arc<AtomicBool>) {
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let (len, src) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => {
                // Idle: nothing follows a held packet any more; let it go.
                for p in pubs.values_mut() {
                    for (dst, b) in p.held.drain(..) {
                        sock.send_to(&b, dst).unwrap();
                    }
                }
                continue;
            }
        };
        let Some(p) = pubs.get_mut(&src) else {
            continue;
        };
        let plen =
            p.rx.unprotect_rtp(&mut buf, len)
                .expect("publisher packet authenticates");
        let seq = probe::parse(&buf[..plen]).unwrap().seq;
        let m = seq % 100;
        if m == f.drop {
            continue;
        }
        let mut sent_now = Vec::new();
        for (dst, ctx) in &mut p.subs {
            let mut out = [0u8; 2048];
            out[..plen].copy_from_slice(&buf[..plen]);
            let n = ctx.protect_rtp(&mut out, plen).unwrap();
            let mut pkt = out[..n].to_vec();
            if m == f.corrupt {
                pkt[20] ^= 0x55;
            }
            if m == f.hold {
                sent_now.push((*dst, pkt, true));
            } else {
                sent_now.push((*dst, pkt, false));
            }
        }
        let held = std::mem::take(&mut p.held);
        for (dst, pkt, hold) in sent_now {
            if hold {
                p.held.push((dst, pkt));
                continue;
            }
            sock.send_to(&pkt, dst).unwrap();
            if m == f.dup {
                sock.send_to(&pkt, dst).unwrap();
            }
        }
        for (dst, b) in held {
            sock.send_to(&b, dst).unwrap();
        }
    }
}

impl Target for DoubleRelay {
    fn info(&mut self) -> Result<TargetInfo, TargetError> {
        Ok(TargetInfo {
            kind: "test-double".into(),
            media_addr: Some(self.sock.local_addr().unwrap().to_string()),
            ..TargetInfo::default()
        })
    }

    fn create(&mut self, plan: &Plan) -> Result<Wiring, TargetError> {
        let opts = ContextOptions::default();
        let mut pubs: HashMap<SocketAddr, Pub> = HashMap::new();
        let mut by_index = Vec::new();
        for p in &plan.publishers {
            by_index.push(p.peer);
            pubs.insert(
                p.peer,
                Pub {
                    rx: Context::new(p.rx_key, opts).unwrap(),
                    subs: Vec::new(),
                    held: Vec::new(),
                },
            );
        }
        for (s, from) in &plan.subscribers {
            pubs.get_mut(&by_index[*from])
                .unwrap()
                .subs
                .push((s.peer, Context::new(s.tx_key, opts).unwrap()));
        }
        let sock = self.sock.try_clone().unwrap();
        let (faults, stop) = (self.faults, self.stop.clone());
        self.thread = Some(std::thread::spawn(move || {
            forward(sock, pubs, faults, stop)
        }));
        let media = self.sock.local_addr().unwrap();
        Ok(Wiring {
            publisher_dst: vec![media; plan.publishers.len()],
            subscriber_keys: plan.subscribers.iter().map(|(s, _)| s.tx_key).collect(),
            publisher_keys: Vec::new(),
        })
    }

    fn teardown(&mut self) -> Result<usize, TargetError> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
            self.torn_down += 1;
        }
        Ok(self.torn_down)
    }
}

fn options(profile: Profile, publishers: usize, fanout: usize, rate: f64) -> RunOptions {
    RunOptions {
        rig: RigSpec {
            publishers,
            fanout,
            size: 300,
            profile: Some(profile),
            ..RigSpec::default()
        },
        rate,
        duration: Duration::from_millis(1500),
        drain: Duration::from_millis(500),
    }
}

fn quiet() -> Output {
    Output {
        quiet: true,
        ..Output::default()
    }
}

/// Probe sequence numbers below `sent` with `seq % 100 == m`.
fn count(sent: u64, m: u64) -> u64 {
    (0..sent).filter(|s| s % 100 == m).count() as u64
}

#[test]
fn counts_exactly_the_injected_faults() {
    let mut relay = DoubleRelay::new(Faults::SOME);
    let opts = options(Profile::AeadAes128Gcm, 2, 2, 1000.0);
    let report = cmd::run(&mut relay, &opts, &quiet()).unwrap();
    assert_eq!(relay.torn_down, 1, "teardown ran once");
    let r = report.result.as_ref().unwrap();
    assert_eq!(r.streams.len(), 2);
    let (mut lost, mut dup, mut reo, mut auth) = (0, 0, 0, 0);
    for s in &r.streams {
        assert_eq!(s.subscribers, 2);
        assert!(s.sent > 400, "stream {} sent only {}", s.stream, s.sent);
        let m = s.subscribers;
        // The last held packet has nothing after it when it is the last one sent.
        let reorders = (0..s.sent)
            .filter(|x| x % 100 == 20 && x + 1 < s.sent)
            .count() as u64;
        assert_eq!(
            s.lost,
            (count(s.sent, 7) + count(s.sent, 42)) * m,
            "lost, stream {}",
            s.stream
        );
        assert_eq!(s.duplicates, count(s.sent, 13) * m, "duplicates");
        assert_eq!(s.reordered, reorders * m, "reordered");
        assert_eq!(s.auth_failures, count(s.sent, 42) * m, "auth failures");
        assert_eq!(s.expected, s.sent * m);
        assert_eq!(s.delivered + s.lost, s.expected);
        assert_eq!((s.late, s.malformed, s.misrouted, s.stale), (0, 0, 0, 0));
        lost += s.lost;
        dup += s.duplicates;
        reo += s.reordered;
        auth += s.auth_failures;
    }
    assert_eq!(
        (r.lost, r.duplicates, r.reordered, r.auth_failures),
        (lost, dup, reo, auth)
    );
    assert!(lost > 0 && dup > 0 && reo > 0 && auth > 0);
    assert_eq!(
        r.latency.count, r.delivered.packets,
        "one latency sample per delivered packet"
    );
    assert!(r.latency.p50_us > 0.0 && r.latency.max_us >= r.latency.p99_us);
    assert!((r.loss_ratio - lost as f64 / r.expected as f64).abs() < 1e-12);
    assert!(r.offered.mbps > 0.0);
    let g = report.generator.as_ref().unwrap();
    assert_eq!(g.senders.len(), 1);
}

#[test]
fn clean_relay_loses_nothing_and_report_round_trips() {
    let mut relay = DoubleRelay::new(Faults::NONE);
    let mut opts = options(Profile::Aes128CmSha1_80, 3, 1, 900.0);
    opts.rig.senders = 2;
    opts.rig.receivers = 2;
    let report = cmd::run(&mut relay, &opts, &quiet()).unwrap();
    let r = report.result.as_ref().unwrap();
    assert_eq!(r.streams.len(), 3);
    assert_eq!(
        (r.lost, r.duplicates, r.reordered, r.auth_failures),
        (0, 0, 0, 0)
    );
    assert_eq!(r.delivered.packets, r.expected);
    // 900 pps for 1.5 s, paced: within a few packets of 1350.
    assert!(
        (1250..=1400).contains(&r.offered.packets),
        "offered {}",
        r.offered.packets
    );
    assert!(!r.per_second.is_empty());

    // JSON: well formed, round trips.
    let json = report.to_json();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["command"], "run");
    assert_eq!(v["config"]["profile"], "AES_CM_128_HMAC_SHA1_80");
    assert!(v["result"]["latency"]["p99_us"].is_number());
    let back: Report = serde_json::from_str(&json).unwrap();
    // Exact, floats included (serde_json's float_roundtrip feature).
    assert_eq!(back, report);

    // Files: JSON and SVG.
    let dir = std::env::temp_dir().join(format!("sluice-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Output {
        quiet: true,
        json: Some(dir.join("r.json")),
        plot: Some(dir.join("r.svg")),
    };
    out.write(&report, "test").unwrap();
    let text = std::fs::read_to_string(dir.join("r.json")).unwrap();
    let back: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(back, report);
    let svg = std::fs::read_to_string(dir.join("r.svg")).unwrap();
    assert!(
        svg.trim_start().starts_with("<svg"),
        "{}",
        &svg[..80.min(svg.len())]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<polyline"), "line series drawn");
    for label in ["latency", "offered", "delivered", "percentile"] {
        assert!(svg.contains(label), "svg lacks {label}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gso_sends_are_verified_packet_by_packet() {
    if !sluice_bench::sys::gso_works(std::net::IpAddr::from([127, 0, 0, 1])) {
        skip::skip("UDP GSO not available on loopback");
        return;
    }
    for profile in [Profile::Aes128CmSha1_80, Profile::AeadAes128Gcm] {
        let mut relay = DoubleRelay::new(Faults::NONE);
        // Fast enough that each pacing pass has several packets due, so GSO messages carry
        // more than one datagram; the double relay receives them as separate datagrams.
        let mut opts = options(profile, 1, 2, 5000.0);
        opts.duration = Duration::from_millis(1000);
        opts.drain = Duration::from_millis(1500);
        opts.rig.gso = Gso::On;
        opts.rig.batch = 64;
        let report = cmd::run(&mut relay, &opts, &quiet()).unwrap();
        assert!(report.config.as_ref().unwrap().gso, "GSO was used");
        let r = report.result.as_ref().unwrap();
        let s = &r.streams[0];
        assert!(s.sent > 1000, "sent only {}", s.sent);
        assert!(
            s.messages < s.sent,
            "{} datagrams in {} messages: no GSO message carried more than one",
            s.sent,
            s.messages
        );
        // Every datagram authenticated, in order, exactly once, at each subscriber.
        assert_eq!(s.expected, s.sent * 2);
        assert_eq!(
            (s.lost, s.duplicates, s.reordered, s.late),
            (0, 0, 0, 0),
            "{}",
            profile.name()
        );
        assert_eq!(
            (s.auth_failures, s.malformed, s.misrouted, s.stale),
            (0, 0, 0, 0)
        );
        assert_eq!(s.send_errors, 0);
        assert_eq!(s.delivered, s.expected);
        assert_eq!(r.latency.count, r.delivered.packets);
    }
}

#[test]
fn sink_baseline_measures_the_senders_alone() {
    let o = cmd::GeneratorOptions {
        rig: RigSpec {
            size: 1200,
            batch: 64,
            ..RigSpec::default()
        },
        profiles: vec![None, Some(Profile::AeadAes128Gcm)],
        gso: vec![false],
        rate: 20_000.0,
        duration: Duration::from_millis(300),
        sink_gro: true,
    };
    let rows = cmd::generator_baseline(&o, &quiet()).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].profile, "none");
    assert_eq!(rows[1].profile, "AEAD_AES_128_GCM");
    for r in &rows {
        assert!(!r.gso);
        // Paced at 20 000 pps for 0.3 s: at most about 6000 tokens, each either sent (and
        // taken by the kernel) or skipped when the thread was descheduled too long.
        assert!(r.packets > 0, "{r:?}");
        assert!(r.packets + r.skipped <= 6100, "{r:?}");
        assert_eq!(r.send_errors, 0);
        assert!(r.sender_cpu_s >= 0.0);
    }
    if rows[0].pps_per_sender_cpu_s > 0.0 {
        assert_eq!(rows[0].vs_plain, Some(1.0));
    }
}

#[test]
fn find_max_brackets_a_lossy_relay() {
    // Loses 1 % of packets: every step fails a 0.1 % threshold, passes a loose one.
    let lossy = Faults {
        drop: 7,
        ..Faults::NONE
    };
    let mut relay = DoubleRelay::new(lossy);
    let mut run = options(Profile::AeadAes128Gcm, 1, 1, 500.0);
    run.duration = Duration::from_millis(300);
    // Generous drain: on a loaded runner late packets must not count as loss.
    run.drain = Duration::from_millis(1000);
    let o = FindMaxOptions {
        run: run.clone(),
        loss: 0.001,
        start: 500.0,
        max: 2000.0,
        precision: 0.3,
        max_steps: 3,
    };
    let report = cmd::find_max(&mut relay, &o, &quiet()).unwrap();
    let fm = report.find_max.unwrap();
    assert!(fm.steps.iter().all(|s| !s.passed));
    assert_eq!(fm.max_offered_pps, 0.0);
    assert!(report.result.is_none());

    let mut relay = DoubleRelay::new(lossy);
    // 1 % designed loss passes a 20 % threshold even with some scheduling loss on top.
    let o = FindMaxOptions { loss: 0.2, ..o };
    let report = cmd::find_max(&mut relay, &o, &quiet()).unwrap();
    let fm = report.find_max.unwrap();
    // Ramp 500 → 1000 → 2000 (the cap): all pass.
    assert_eq!(fm.steps.len(), 3);
    assert!(fm.steps.iter().all(|s| s.passed));
    assert!(fm.max_offered_pps > 1500.0);
    assert!(fm.latency_at_max.is_some());
    assert!(report.result.is_some());
}

#[test]
fn echo_baseline_against_a_reflector() {
    let refl = big_buffer_socket();
    let addr = refl.local_addr().unwrap();
    refl.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let t = std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        while !s2.load(Ordering::Relaxed) {
            if let Ok((n, src)) = refl.recv_from(&mut b) {
                refl.send_to(&b[..n], src).unwrap();
            }
        }
    });
    let mut run = options(Profile::AeadAes128Gcm, 2, 3, 2000.0);
    run.duration = Duration::from_millis(500);
    let o = FindMaxOptions {
        run,
        loss: 0.001,
        start: 1000.0,
        max: 1000.0,
        precision: 0.1,
        max_steps: 1,
    };
    let (echo, report) = cmd::echo_at(addr, "test", &o, false, &quiet()).unwrap();
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    let r = report.result.unwrap();
    let c = report.config.unwrap();
    assert_eq!((c.fanout, c.profile.as_str()), (1, "none"));
    assert_eq!(r.lost, 0);
    assert_eq!(r.delivered.packets, r.offered.packets);
    assert!(echo.pps > 0.0);
    assert_eq!(echo.reflector, "test");
}
