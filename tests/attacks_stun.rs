//! Spoofed STUN floods against ICE (docs/SECURITY.md "Spoofed STUN floods"), end to end in
//! one process over loopback: control's real slow-path thread and ICE agent behind the
//! relay's real worker and engine, at the default slow-path rates.
//!
//! A raw socket (IP_HDRINCL) floods the relay's port with well-formed STUN Binding requests
//! from a new random 127.0.0.0/8 source address and port per datagram, so per-source buckets
//! see every datagram as a first one: at 100 000/s (five times the default slow-path budget),
//! and as fast as one thread can send. Meanwhile a real peer,
//! bound to the session, sends its connectivity checks every 5 ms; the test counts the checks
//! answered with a success that verifies with the session's password. Two floods: checks
//! naming no session (no credentials at all), and checks naming the session's ufrag with a
//! wrong password (an attacker who read the SDP). Both must leave the real peer ≥ 99 % of
//! its checks answered, and neither may reach control. Unpaced, the kernel may drop at the
//! worker's socket (then flood and checks alike); every check the worker receives is answered.
//!
//! Needs CAP_NET_RAW (a raw socket); skips through `support/skip.rs` without it.

use contract::config::{Config, Secret};
use contract::shm::{DropReason, ShmReader};
use contract::srtp::{MasterKey, Profile};
use contract::wire::stun::{self, Class, StunMessage, StunWriter, METHOD_BINDING};
use control::api::Control;
use control::http::Request;
use control::slowpath::{DiscardDtls, SlowPath, SlowPathParams};
use relay::engine::SlowGateRates;
use relay::io::BackendChoice;
use relay::worker::WorkerConfig;
use sluice_tests::*;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashSet;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "stun-flood-test-admin-token-0123456789";
const L_UFRAG: &str = "SluI";
const L_PWD: &str = "sluicelocalpassword0123456789ab";
const R_UFRAG: &str = "BrWs";
/// How long each flood runs.
const FLOOD: Duration = Duration::from_secs(3);
/// The real peer's check interval.
const CHECK_EVERY: Duration = Duration::from_millis(5);
/// Answered share of the real peer's checks the test requires.
const REQUIRED: f64 = 0.99;
/// The paced floods' rate: five times the default slow-path budget
/// (`control.slow_path_rate`, 20 000/s), within what one relay worker receives here.
const FLOOD_RATE: u32 = 100_000;

fn admin(ctl: &Control, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    let req = Request {
        method: method.into(),
        path: path.into(),
        query: String::new(),
        headers: vec![("authorization".into(), format!("Bearer {TOKEN}"))],
        body: serde_json::to_vec(&body).expect("json"),
        peer: "test".into(),
    };
    let r = ctl.handle_admin(&req);
    assert!(r.status < 300, "{method} {path}: {}", r.status);
    serde_json::from_slice(&r.body).unwrap_or_default()
}

fn check(txid: [u8; 12], user: &[u8], key: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let mut w = StunWriter::new(
        &mut buf,
        stun::message_type(METHOD_BINDING, Class::Request),
        &txid,
    )
    .expect("writer");
    w.username(user).expect("username");
    w.priority(1_845_501_695).expect("priority");
    w.ice_controlling(0xfeed_beef).expect("controlling");
    w.message_integrity(key).expect("integrity");
    w.fingerprint().expect("fingerprint");
    let n = w.finish();
    buf[..n].to_vec()
}

/// xorshift64*: the flood's source addresses, ports and ufrags (no allocation, no syscall).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// IPv4 + UDP headers around `payload`, to `dst`; the source is written per datagram. The
/// kernel fills in the IP checksum, total length and id (raw(7)); a UDP checksum of 0 means
/// none (RFC 768).
fn datagram(dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 28 + payload.len()];
    p[0] = 0x45;
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 17;
    p[16..20].copy_from_slice(&dst.ip().octets());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// Flood `dst` from one thread with `payloads`, each datagram from a random 127/8 source
/// address and port, at `rate` datagrams per second (`None`: as fast as the thread can send)
/// until `stop`; returns the datagrams sent.
fn flood(
    raw: Socket,
    dst: SocketAddrV4,
    payloads: Vec<Vec<u8>>,
    rate: Option<u32>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut frames: Vec<Vec<u8>> = payloads.iter().map(|p| datagram(dst, p)).collect();
    let to = SockAddr::from(dst);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut sent = 0u64;
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64(sent as f64 / f64::from(r));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        for _ in 0..256 {
            let r = rng.next();
            let f = &mut frames[(r as usize >> 40) % payloads.len()];
            // 127.x.y.z with z ≠ 0, never 127.0.0.1 (the real peer's address).
            let src = [
                127,
                (r >> 8) as u8 | 1,
                (r >> 16) as u8,
                (r >> 24) as u8 | 1,
            ];
            f[12..16].copy_from_slice(&src);
            f[20..22].copy_from_slice(&((r >> 32) as u16 | 1024).to_be_bytes());
            if raw.send_to(f, &to).is_ok() {
                sent += 1;
            }
        }
    }
    sent
}

/// What one flood did to the real peer.
struct Outcome {
    flood_sent: u64,
    flood_secs: f64,
    checks_sent: u64,
    checks_answered: u64,
}

impl Outcome {
    fn answered(&self) -> f64 {
        self.checks_answered as f64 / self.checks_sent.max(1) as f64
    }
    fn rate(&self) -> f64 {
        self.flood_sent as f64 / self.flood_secs
    }
}

/// Run `payloads` as a flood at `rate` for [`FLOOD`] while `peer` sends checks to `relay`.
fn measure(
    raw: Socket,
    relay: SocketAddrV4,
    peer: &UdpSocket,
    payloads: Vec<Vec<u8>>,
    rate: Option<u32>,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || flood(raw, relay, payloads, rate, stop))
    };
    let answered = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (answered, done) = (answered.clone(), done.clone());
        let sock = peer.try_clone().expect("clone");
        let me = peer.local_addr().expect("peer address");
        std::thread::spawn(move || {
            sock.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            let mut seen = HashSet::new();
            let mut buf = [0u8; 2048];
            while !done.load(Ordering::Relaxed) {
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(m) = StunMessage::parse(&buf[..n]) else {
                    continue;
                };
                if m.class() == Class::SuccessResponse
                    && m.verify_integrity(L_PWD.as_bytes()).is_ok()
                    && m.xor_mapped_address() == Some(me)
                    && seen.insert(m.transaction_id())
                {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // Let the flood reach full rate first.
    std::thread::sleep(Duration::from_millis(200));
    let user = format!("{L_UFRAG}:{R_UFRAG}");
    let start = Instant::now();
    let mut checks_sent = 0u64;
    let mut next = start;
    while start.elapsed() < FLOOD {
        let mut txid = [0x5A; 12];
        txid[..8].copy_from_slice(&checks_sent.to_be_bytes());
        peer.send_to(&check(txid, user.as_bytes(), L_PWD.as_bytes()), relay)
            .expect("send check");
        checks_sent += 1;
        next += CHECK_EVERY;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    stop.store(true, Ordering::Relaxed);
    let flood_sent = flooder.join().expect("flooder");
    let flood_secs = start.elapsed().as_secs_f64() + 0.2;
    // Answers to the last checks are on their way.
    std::thread::sleep(Duration::from_millis(500));
    done.store(true, Ordering::Relaxed);
    receiver.join().expect("receiver");
    Outcome {
        flood_sent,
        flood_secs,
        checks_sent,
        checks_answered: answered.load(Ordering::Relaxed),
    }
}

#[test]
fn spoofed_stun_flood_leaves_real_checks_answered() {
    let raw = match Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .and_then(|s| s.set_header_included_v4(true).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => {
            sluice_tests::skip::skip(format!("no raw socket ({e}); needs CAP_NET_RAW"));
            return;
        }
    };
    let dir = TempDir::new("stun-flood");
    let d = dir.path();
    // The default slow-path rates (control.slow_path_rate 20000/s, per source 200/s).
    let text = format!(
        "runtime_dir = \"{d}/run\"\n[control]\nadmin_listen = \"127.0.0.1:0\"\nstate_dir = \"{d}/state\"\naudit_log = \"{d}/audit.log\"\n[shm]\npath = \"{d}/shm\"\nsessions = 16\nroutes = 16\nworker_slots = 2\n",
        d = d.display()
    );
    let cfg = Config::from_toml_str(&text, "attacks_stun").expect("config");
    std::fs::create_dir_all(&cfg.runtime_dir).expect("runtime dir");
    let ctl = Arc::new(Control::start(cfg.clone(), Secret::new(TOKEN)).expect("control"));
    let peer = UdpSocket::bind("127.0.0.1:0").expect("peer socket");
    let key = MasterKey::new(Profile::Aes128CmSha1_80, &[7u8; 30])
        .expect("key")
        .to_base64();
    // The real peer's session, bound to its address (as after nomination), with ICE
    // credentials: its checks are consent checks on the selected pair.
    let v = admin(
        &ctl,
        "POST",
        "/v1/sessions",
        serde_json::json!({"peer": peer.local_addr().expect("addr").to_string(),
            "profile": "AES_CM_128_HMAC_SHA1_80", "rx_key": key, "tx_key": key,
            "role": "speaker"}),
    );
    let sid = v["id"].as_u64().expect("id");
    ctl.core
        .set_ice_credentials(sid, L_UFRAG, L_PWD, R_UFRAG, None)
        .expect("credentials");

    let sock_path = cfg.control.slow_path.clone();
    let mut thread = SlowPath::bind(
        &sock_path,
        SlowPathParams::from_config(&cfg.control),
        ctl.ice.clone(),
        ctl.clone(),
        Box::new(DiscardDtls),
        ctl.slow_path_stats.clone(),
    )
    .expect("bind slow path")
    .spawn()
    .expect("slow-path thread");
    let reader = Arc::new(ShmReader::open(&cfg.shm.path).expect("open shm"));
    // One worker, gated at the configured rates as `sluice-relay` does.
    let gate = SlowGateRates {
        global: cfg.control.slow_path_rate,
        per_source: cfg.control.slow_path_per_source_rate,
    };
    let workers = relay_workers(
        reader.clone(),
        WorkerConfig {
            bind: "127.0.0.1:0".parse().expect("literal address"),
            workers: Some(1),
            backend: BackendChoice::Mmsg,
            pin: false,
            slow_path: Some(sock_path.clone()),
            ..WorkerConfig::default()
        },
        Some(gate),
    );
    let SocketAddr::V4(relay) = workers.local_addr() else {
        panic!("relay bound to IPv4 loopback");
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctl.slow_path_stats.snapshot().connections == 0 {
        assert!(
            Instant::now() < deadline,
            "relay never connected to control"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut rng = Rng(7);
    let mut ufrag = || -> String {
        (0..8)
            .map(|_| char::from(b'a' + (rng.next() % 26) as u8))
            .collect()
    };
    // No credentials: random ufrags, random passwords.
    let unknown: Vec<Vec<u8>> = (0..256u32)
        .map(|i| {
            let mut txid = [0u8; 12];
            txid[..4].copy_from_slice(&i.to_be_bytes());
            let user = format!("{}:{}", ufrag(), ufrag());
            check(
                txid,
                user.as_bytes(),
                format!("{}{}{}", ufrag(), ufrag(), ufrag()).as_bytes(),
            )
        })
        .collect();
    // The session's USERNAME, a wrong password.
    let user = format!("{L_UFRAG}:{R_UFRAG}");
    let forged: Vec<Vec<u8>> = (0..256u32)
        .map(|i| {
            let mut txid = [1u8; 12];
            txid[..4].copy_from_slice(&i.to_be_bytes());
            check(txid, user.as_bytes(), b"notthepasswordnotthepassword00")
        })
        .collect();

    let mut results = Vec::new();
    let runs = [
        ("unknown ufrag", unknown.clone(), Some(FLOOD_RATE)),
        ("known ufrag, bad integrity", forged, Some(FLOOD_RATE)),
        ("unknown ufrag, unpaced", unknown, None),
    ];
    for (name, payloads, rate) in runs {
        let raw = raw.try_clone().expect("clone raw socket");
        let before = reader.totals();
        let stun_before = ctl.slow_path_stats.snapshot().stun;
        let o = measure(raw, relay, &peer, payloads, rate);
        let after = reader.totals();
        let to_control = ctl.slow_path_stats.snapshot().stun - stun_before;
        let dropped = |r: DropReason| after.drops[r as usize] - before.drops[r as usize];
        eprintln!(
            "{name}: flood {} datagrams in {:.2} s ({:.0}/s) from random sources; worker received {}; real peer: {}/{} checks answered ({:.2} %); relay dropped {} unknown-ufrag, {} bad-integrity, {} rate-limited; {} STUN datagrams reached control",
            o.flood_sent,
            o.flood_secs,
            o.rate(),
            after.packets_in - before.packets_in,
            o.checks_answered,
            o.checks_sent,
            100.0 * o.answered(),
            dropped(DropReason::StunUnknownUfrag),
            dropped(DropReason::StunBadIntegrity),
            dropped(DropReason::RateLimited),
            to_control,
        );
        let received = after.packets_in - before.packets_in;
        results.push((name, rate, o, to_control, received));
    }
    workers.stop().expect("clean stop");
    thread.shutdown();

    let ice = ctl.ice.lock().expect("ice lock").counters();
    for (name, rate, o, to_control, received) in &results {
        assert!(
            o.rate() > 4.0 * 20_000.0,
            "{name}: the flood ran at {:.0}/s, not far above the slow-path budget",
            o.rate()
        );
        if rate.is_some() {
            assert!(
                o.answered() >= REQUIRED,
                "{name}: only {}/{} of the real peer's checks were answered during a {:.0}/s flood",
                o.checks_answered,
                o.checks_sent,
                o.rate()
            );
        } else {
            // As fast as one thread sends, a worker of this (unoptimised) build on a shared
            // machine may not receive every datagram: the kernel then drops at its socket,
            // flood and checks alike, so the checks answered follow the share received (within
            // the sampling error of 600 checks).
            let share = *received as f64 / (o.flood_sent + o.checks_sent) as f64;
            assert!(
                o.answered() >= share.min(1.0) - 0.05,
                "{name}: {}/{} answered, the worker received {:.1} % of all datagrams",
                o.checks_answered,
                o.checks_sent,
                100.0 * share
            );
        }
        // Only the real peer's consent refreshes reach control (one per 2 s).
        assert!(
            *to_control <= 4,
            "{name}: {to_control} STUN datagrams reached control"
        );
    }
    // Nothing forged was ever authenticated or even seen by the ICE agent.
    assert_eq!(
        ice.unauthenticated + ice.bad_request + ice.discarded,
        0,
        "{ice:?}"
    );
    assert_eq!(ice.nominations, 0);
    let t = reader.totals();
    assert!(t.drops[DropReason::StunUnknownUfrag as usize] > 0);
    assert!(t.drops[DropReason::StunBadIntegrity as usize] > 0);
}
