//! Attack tests, end to end in one process over loopback (docs/SECURITY.md "Defences"):
//! the relay's real workers and engine read a shared-memory file; where the slow path matters,
//! control's real `SlowPath` thread and ICE agent sit behind them on the unix socket.
//!
//! - replayed, forged, wrong-key and truncated SRTP/SRTCP from a known peer, for all six
//!   profiles: dropped before routing and counted by reason; the subscriber sees only the
//!   genuine packets;
//! - a flood of media from unknown sources, forged STUN (bad MESSAGE-INTEGRITY) and DTLS
//!   ClientHello-shaped datagrams: the media never reaches control, and what reaches the ICE
//!   agent and the DTLS hook from one source never exceeds the configured per-source rate,
//!   while a legitimate peer from another address is still answered;
//! - forged, expired, cross-application and wrong-role tokens at the token-verification API;
//! - least privilege: the shm file is 0600, the slow-path socket 0660, the state directory
//!   0700.

use contract::config::{Config, Secret};
use contract::shm::{
    Capacity, DropReason, Feedback, Rewrite, Role, RouteRecord, ShmReader, ShmWriter,
};
use contract::srtp::{Context, Profile};
use contract::wire::stun::{self, Class, StunMessage, StunWriter, METHOD_BINDING};
use control::api::Control;
use control::http::Request;
use control::slowpath::{DiscardDtls, SlowPath, SlowPathParams};
use control::webrtc::token::{
    authorize, mint, mint_stream, Claims, Credential, DevKey, Intent, Limits, Role as TokenRole,
    RoomPolicy, Target, TokenError, TokenKind,
};
use relay::engine::SlowGateRates;
use relay::io::BackendChoice;
use relay::worker::{WorkerConfig, Workers};
use sluice_tests::*;
use std::net::UdpSocket;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn workers_over(
    reader: Arc<ShmReader>,
    slow_path: Option<&Path>,
    slow_gate: Option<SlowGateRates>,
) -> Workers {
    relay_workers(
        reader,
        WorkerConfig {
            bind: "127.0.0.1:0".parse().expect("literal address"),
            workers: Some(1),
            backend: BackendChoice::Mmsg,
            pin: false,
            slow_path: slow_path.map(Path::to_path_buf),
            ..WorkerConfig::default()
        },
        slow_gate,
    )
}

/// Poll the shm counters until `done` holds (the worker publishes them per loop turn).
fn wait_for(
    reader: &ShmReader,
    what: &str,
    done: impl Fn(&contract::shm::CounterSnapshot) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = reader.totals();
        if done(&t) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: counters {t:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn rtp_packet(ctx: &mut Context, ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 1500];
    buf[0] = 0x80;
    buf[1] = 96;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buf[12..12 + payload.len()].copy_from_slice(payload);
    let n = ctx
        .protect_rtp(&mut buf, 12 + payload.len())
        .expect("protect");
    buf.truncate(n);
    buf
}

fn rtcp_sr(ctx: &mut Context, ssrc: u32) -> Vec<u8> {
    let mut buf = vec![0u8; 1500];
    buf[..4].copy_from_slice(&[0x80, 200, 0, 6]);
    buf[4..8].copy_from_slice(&ssrc.to_be_bytes());
    let n = ctx.protect_rtcp(&mut buf, 28).expect("protect rtcp");
    buf.truncate(n);
    buf
}

/// For every profile, a publisher sends one genuine packet, then replays of it, packets with a
/// flipped tag or payload bit, packets under an attacker's key from the publisher's own
/// address, truncations, and a forged SRTCP report; then a second genuine packet. The
/// subscriber receives exactly the two genuine packets; every attack is counted under
/// Replayed, AuthFailed, Malformed or Demux, and none reaches routing (NoRoute stays 0).
#[test]
fn srtp_attacks_dropped_before_routing_and_counted() {
    let dir = TempDir::new("attack-srtp");
    let shm = dir.path().join("shm");
    let mut w = ShmWriter::create(
        &shm,
        Capacity {
            sessions: 16,
            routes: 16,
            workers: 1,
        },
    )
    .expect("create shm");
    let mut pairs = Vec::new();
    for (i, profile) in Profile::ALL.into_iter().enumerate() {
        let p = Peer::new(10 + 2 * i as u64, Role::Speaker, profile);
        let s = Peer::new(11 + 2 * i as u64, Role::Viewer, profile);
        w.put_session(&p.record()).expect("session");
        w.put_session(&s.record()).expect("session");
        w.put_route(&RouteRecord {
            id: 1 + i as u64,
            from: p.id,
            ssrc: None,
            to: s.id,
            rewrite: Rewrite::default(),
        })
        .expect("route");
        pairs.push((profile, p, s));
    }
    let reader = Arc::new(ShmReader::open(&shm).expect("open shm"));
    let workers = workers_over(reader.clone(), None, None);
    let relay = workers.local_addr();

    let mut replays = 0u64;
    let mut rejected = 0u64;
    for (profile, p, s) in &mut pairs {
        let ssrc = 0xA000 + profile.code() as u32;
        let good = rtp_packet(&mut p.send, ssrc, 1, &[1; 160]);
        p.sock.send_to(&good, relay).expect("send");
        let got = s.recv_rtp(1, Duration::from_secs(2));
        assert_eq!(got.len(), 1, "{profile}: genuine packet forwarded");

        let mut attacks: Vec<Vec<u8>> = Vec::new();
        // Replays of the accepted packet (RFC 3711 §3.3.2).
        for _ in 0..5 {
            attacks.push(good.clone());
        }
        replays += 5;
        // Forged tag / flipped payload bit on fresh sequence numbers (RFC 3711 §3.4).
        for i in 0..6u16 {
            let mut f = rtp_packet(&mut p.send, ssrc, 100 + i, &[2; 160]);
            let at = if i % 2 == 0 { f.len() - 1 } else { 20 };
            f[at] ^= 0x40;
            attacks.push(f);
        }
        // An attacker's key, from the publisher's address and with its SSRC.
        let mut mallory = Context::new(test_key(*profile, 9_999), srtp_options()).expect("ctx");
        for i in 0..5u16 {
            attacks.push(rtp_packet(&mut mallory, ssrc, 200 + i, &[3; 160]));
        }
        // Truncations: inside the fixed header, header only, minus part of the tag.
        let whole = rtp_packet(&mut p.send, ssrc, 300, &[4; 160]);
        for cut in [1usize, 8, 11, 12, 14, whole.len() - 4, whole.len() - 1] {
            attacks.push(whole[..cut].to_vec());
        }
        // Forged and truncated SRTCP.
        let mut sr = rtcp_sr(&mut p.send, ssrc);
        let l = sr.len();
        sr[l - 1] ^= 1;
        attacks.push(sr.clone());
        attacks.push(sr[..10].to_vec());
        rejected += attacks.len() as u64 - 5;
        for a in &attacks {
            p.sock.send_to(a, relay).expect("send");
        }
        let next = rtp_packet(&mut p.send, ssrc, 2, &[5; 160]);
        p.sock.send_to(&next, relay).expect("send");
        let got = s.recv_rtp(2, Duration::from_millis(500));
        assert_eq!(
            got.len(),
            1,
            "{profile}: only the second genuine packet follows"
        );
        assert_eq!((got[0].1, &got[0].2), (2, &vec![5u8; 160]), "{profile}");
    }
    let total_in = replays + rejected + 2 * pairs.len() as u64;
    wait_for(&reader, "all datagrams accounted", |t| {
        t.packets_in >= total_in
    });
    workers.stop().expect("clean stop");
    let t = reader.totals();
    let d = |r: DropReason| t.drops[r as usize];
    assert_eq!(t.packets_in, total_in);
    assert_eq!(d(DropReason::Replayed), replays, "{:?}", t.drops);
    // A one-byte truncation cannot even be classified (RFC 7983 needs two bytes): Demux.
    assert_eq!(
        d(DropReason::AuthFailed) + d(DropReason::Malformed) + d(DropReason::Demux),
        rejected,
        "{:?}",
        t.drops
    );
    assert!(
        d(DropReason::AuthFailed) >= 11 * pairs.len() as u64,
        "{:?}",
        t.drops
    );
    assert_eq!(d(DropReason::NoRoute), 0, "nothing reached routing");
    assert_eq!(d(DropReason::UnknownSource), 0);
    // Besides the forwarded media, the relay's own reports and keyframe requests leave.
    let own = [Feedback::SrSent, Feedback::RrSent, Feedback::PliOnJoin]
        .iter()
        .map(|&f| t.feedback(f))
        .sum::<u64>();
    assert_eq!(
        t.packets_out - own,
        2 * pairs.len() as u64,
        "only genuine packets left ({own} of the relay's own RTCP beside them)"
    );
}

const TOKEN: &str = "attack-test-admin-token-0123456789";
const L_UFRAG: &str = "SluI";
const L_PWD: &str = "sluicelocalpassword0123456789ab";
const R_UFRAG: &str = "BrWs";

/// An SRTP packet of `total` bytes on the wire (payload sized to fit), from `ctx`.
fn rtp_packet_of(ctx: &mut Context, ssrc: u32, seq: u16, total: usize) -> Vec<u8> {
    let tag = rtp_packet(ctx, ssrc, 0, &[]).len() - 12; // a throw-away packet's tag length
    let payload = big_payload(total - 12 - tag);
    let mut buf = vec![0u8; total + 64];
    buf[0] = 0x80;
    buf[1] = 96;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buf[12..12 + payload.len()].copy_from_slice(&payload);
    let n = ctx
        .protect_rtp(&mut buf, 12 + payload.len())
        .expect("protect");
    buf.truncate(n);
    assert_eq!(n, total);
    buf
}

/// Datagrams larger than the workers' receive buffers (`relay.max_datagram_bytes`, default
/// 2048) are dropped and counted under `Oversized` (they used to vanish uncounted); with
/// the buffers raised to 4096 the same 3000-byte SRTP packet is received and forwarded.
/// Both backends.
#[test]
fn oversized_datagrams_counted_and_forwarded_with_larger_buffers() {
    let mut backends = vec![BackendChoice::Mmsg];
    match relay::io::probe_io_uring() {
        Ok(()) => backends.push(BackendChoice::IoUring),
        Err(e) => sluice_tests::skip::skip(format!("io_uring refused here: {e}")),
    }
    for backend in backends {
        let dir = TempDir::new("attack-oversized");
        let shm = dir.path().join("shm");
        let mut w = ShmWriter::create(
            &shm,
            Capacity {
                sessions: 4,
                routes: 4,
                workers: 1,
            },
        )
        .expect("create shm");
        let profile = Profile::Aes128CmSha1_80;
        let mut p = Peer::new(40, Role::Speaker, profile);
        let mut s = Peer::new(41, Role::Viewer, profile);
        w.put_session(&p.record()).expect("session");
        w.put_session(&s.record()).expect("session");
        w.put_route(&RouteRecord {
            id: 1,
            from: p.id,
            ssrc: None,
            to: s.id,
            rewrite: Rewrite::default(),
        })
        .expect("route");
        let reader = Arc::new(ShmReader::open(&shm).expect("open shm"));
        let cfg = |max_datagram| WorkerConfig {
            bind: "127.0.0.1:0".parse().expect("literal address"),
            workers: Some(1),
            backend,
            pin: false,
            max_datagram,
            ..WorkerConfig::default()
        };
        let oversized = |r: &ShmReader| r.totals().drops[DropReason::Oversized as usize];
        s.sock
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut rx = vec![0u8; 16_384];
        let ssrc = 0x5EED;

        // Default buffers: a 3000-byte datagram is dropped and counted, from a stranger and
        // from the publisher alike; normal packets still flow.
        let workers = relay_workers(reader.clone(), cfg(2048), None);
        let relay = workers.local_addr();
        let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind");
        stranger.send_to(&[0x80; 3000], relay).expect("send");
        let big = rtp_packet_of(&mut p.send, ssrc, 1, 3000);
        p.sock.send_to(&big, relay).expect("send");
        p.sock.send_to(&[0x80; 2049], relay).expect("send");
        wait_for(&reader, "oversized counted", |t| {
            t.drops[DropReason::Oversized as usize] >= 3
        });
        let small = rtp_packet_of(&mut p.send, ssrc, 2, 200);
        p.sock.send_to(&small, relay).expect("send");
        let (n, _) = s
            .sock
            .recv_from(&mut rx)
            .expect("the small packet forwarded");
        assert_eq!(n, 200, "{backend}");
        workers.stop().expect("clean stop");
        assert_eq!(oversized(&reader), 3, "{backend}: {:?}", reader.totals());
        assert_eq!(
            reader.totals().packets_in,
            1,
            "{backend}: only the small one read"
        );

        // Buffers of 4096: the 3000-byte packet is received, decrypted and forwarded intact;
        // a 5000-byte one is still counted.
        let workers = relay_workers(reader.clone(), cfg(4096), None);
        let relay = workers.local_addr();
        let big = rtp_packet_of(&mut p.send, ssrc, 3, 3000);
        p.sock.send_to(&big, relay).expect("send");
        let (n, _) = s
            .sock
            .recv_from(&mut rx)
            .expect("the 3000-byte packet forwarded");
        assert_eq!(n, 3000, "{backend}");
        let m = s.recv.unprotect_rtp(&mut rx, n).expect("decrypts");
        assert_eq!(rx[12..m], big_payload(m - 12)[..], "{backend}");
        p.sock.send_to(&[0x80; 5000], relay).expect("send");
        wait_for(&reader, "5000 bytes counted", |t| {
            t.drops[DropReason::Oversized as usize] >= 4
        });
        workers.stop().expect("clean stop");
        assert_eq!(oversized(&reader), 4, "{backend}");
        assert_eq!(reader.totals().packets_in, 2, "{backend}");
    }
}

fn big_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

fn admin(
    ctl: &Control,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let req = Request {
        method: method.into(),
        path: path.into(),
        query: String::new(),
        headers: vec![("authorization".into(), format!("Bearer {TOKEN}"))],
        body: serde_json::to_vec(&body).expect("json"),
        peer: "test".into(),
    };
    let r = ctl.handle_admin(&req);
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or_default(),
    )
}

fn binding_request(txid: u8, user: &str, key: &str) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let mut w = StunWriter::new(
        &mut buf,
        stun::message_type(METHOD_BINDING, Class::Request),
        &[txid; 12],
    )
    .expect("writer");
    w.username(user.as_bytes()).expect("username");
    w.priority(1_845_501_695).expect("priority");
    w.ice_controlling(0xfeed_beef).expect("controlling");
    w.message_integrity(key.as_bytes()).expect("integrity");
    w.fingerprint().expect("fingerprint");
    let n = w.finish();
    buf[..n].to_vec()
}

/// A DTLS 1.2 ClientHello-shaped record (content type 22, RFC 6347 §4.1; RFC 7983 range).
fn client_hello(n: u32) -> Vec<u8> {
    let mut v = vec![22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 60, 1, 0, 0, 48];
    v.extend_from_slice(&n.to_be_bytes());
    v.resize(73, 0xA5);
    v
}

/// The whole stack: relay worker → slow path → control. A source floods forged STUN checks
/// (right USERNAME, wrong MESSAGE-INTEGRITY key) and another DTLS ClientHello-shaped records,
/// both far above `slow_path_per_source_rate`; a third floods SRTP-looking media. Media from
/// an unknown source is dropped by the relay (UnknownSource) and never reaches control; the
/// forged checks are dropped by the relay (`stun_bad_integrity`) and never reach control;
/// from the DTLS flooder control hands the DTLS hook at most the per-source rate (with its
/// one-second burst) and counts the rest as `rate_source`; a legitimate check from a fourth
/// address is answered by the relay during the flood. No check from the forger succeeds.
///
/// The whip helper's DTLS sink is not on main yet: DTLS goes to `DiscardDtls`, so this tests
/// the per-source limit in front of whatever sink is installed, not the handshake code.
#[test]
fn floods_and_forged_stun_rate_limited_towards_control() {
    const RATE: u32 = 40;
    let socks: Vec<UdpSocket> = match (2..=5)
        .map(|i| UdpSocket::bind(format!("127.0.0.{i}:0")))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(s) => s,
        Err(e) => {
            sluice_tests::skip::skip(format!("cannot bind 127.0.0.2..5 ({e})"));
            return;
        }
    };
    let (forger, dtls_flooder, media_flooder, good) = (&socks[0], &socks[1], &socks[2], &socks[3]);
    let dir = TempDir::new("attack-slow");
    let d = dir.path();
    let text = format!(
        "runtime_dir = \"{d}/run\"\n[control]\nadmin_listen = \"127.0.0.1:0\"\nstate_dir = \"{d}/state\"\naudit_log = \"{d}/audit.log\"\nslow_path_rate = 100000\nslow_path_per_source_rate = {RATE}\n[shm]\npath = \"{d}/shm\"\nsessions = 16\nroutes = 16\nworker_slots = 2\n",
        d = d.display()
    );
    let cfg = Config::from_toml_str(&text, "attacks").expect("config");
    std::fs::create_dir_all(&cfg.runtime_dir).expect("runtime dir");
    let ctl = Arc::new(Control::start(cfg.clone(), Secret::new(TOKEN)).expect("control"));
    let key = contract::srtp::MasterKey::new(Profile::Aes128CmSha1_80, &[7u8; 30])
        .expect("key")
        .to_base64();
    let (st, v) = admin(
        &ctl,
        "POST",
        "/v1/sessions",
        serde_json::json!({"peer": "192.0.2.1:9", "profile": "AES_CM_128_HMAC_SHA1_80",
            "rx_key": key, "tx_key": key, "role": "speaker"}),
    );
    assert_eq!(st, 201, "{v}");
    let sid = v["id"].as_u64().expect("id");
    ctl.core
        .set_ice_credentials(sid, L_UFRAG, L_PWD, R_UFRAG, None)
        .expect("credentials");

    let sock_path = cfg.control.slow_path.clone();
    let sp = SlowPath::bind(
        &sock_path,
        SlowPathParams::from_config(&cfg.control),
        ctl.ice.clone(),
        ctl.clone(),
        Box::new(DiscardDtls),
        ctl.slow_path_stats.clone(),
    )
    .expect("bind slow path");
    // Least privilege (issue 6 part 7): socket 0660, shm 0600, state directory 0700.
    let md = std::fs::metadata(&sock_path).expect("socket");
    assert!(md.file_type().is_socket());
    assert_eq!(
        md.permissions().mode() & 0o777,
        0o660,
        "slow-path socket mode"
    );
    let md = std::fs::metadata(&cfg.shm.path).expect("shm");
    assert_eq!(md.permissions().mode() & 0o777, 0o600, "shm file mode");
    let md = std::fs::metadata(&cfg.control.state_dir).expect("state dir");
    assert_eq!(md.permissions().mode() & 0o777, 0o700, "state dir mode");
    let mut thread = sp.spawn().expect("slow-path thread");

    let reader = Arc::new(ShmReader::open(&cfg.shm.path).expect("open shm"));
    // The relay gates at the configured rates (one worker: all of the global rate), as
    // `sluice-relay` does from the same config.
    let gate = SlowGateRates {
        global: cfg.control.slow_path_rate,
        per_source: cfg.control.slow_path_per_source_rate,
    };
    let workers = workers_over(reader.clone(), Some(&sock_path), Some(gate));
    let relay = workers.local_addr();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctl.slow_path_stats.snapshot().connections == 0 {
        assert!(
            Instant::now() < deadline,
            "relay never connected to control"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let user = format!("{L_UFRAG}:{R_UFRAG}");
    let forged: Vec<Vec<u8>> = (0..=255u8)
        .map(|i| binding_request(i, &user, "notthepasswordnotthepassword00"))
        .collect();
    let mut junk = Peer::new(99, Role::Speaker, Profile::Aes128CmSha1_80);
    let media: Vec<Vec<u8>> = (0..64u16)
        .map(|i| rtp_packet(&mut junk.send, 0x5555, i, &[9; 200]))
        .collect();
    let start = Instant::now();
    let mut sent = [0u64; 3];
    let mut answered = false;
    good.set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    // About 1.5 s of flooding, at roughly 40x the per-source rate per source.
    for round in 0..30u32 {
        for i in 0..50u32 {
            let n = (round * 50 + i) as usize;
            forger
                .send_to(&forged[n % forged.len()], relay)
                .expect("send");
            dtls_flooder
                .send_to(&client_hello(n as u32), relay)
                .expect("send");
            media_flooder
                .send_to(&media[n % media.len()], relay)
                .expect("send");
            sent[0] += 1;
            sent[1] += 1;
            sent[2] += 1;
        }
        if !answered {
            good.send_to(&binding_request(200, &user, L_PWD), relay)
                .expect("send");
            if let Ok((n, _)) = good.recv_from(&mut buf) {
                let m = StunMessage::parse(&buf[..n]).expect("reply parses");
                assert_eq!(m.class(), Class::SuccessResponse);
                m.verify_integrity(L_PWD.as_bytes())
                    .expect("reply integrity");
                answered = true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the last datagrams drain through the relay and control.
    std::thread::sleep(Duration::from_millis(300));
    let elapsed = start.elapsed().as_secs_f64();
    workers.stop().expect("clean stop");
    thread.shutdown();

    assert!(answered, "the legitimate peer was served during the flood");
    let t = reader.totals();
    let snap = ctl.slow_path_stats.snapshot();
    let ice = ctl.ice.lock().expect("ice lock").counters();
    // Media from an unknown source: dropped in the relay, never sent to control.
    assert!(
        t.drops[DropReason::UnknownSource as usize] > sent[2] / 2,
        "{:?} of {}",
        t.drops,
        sent[2]
    );
    assert_eq!(snap.other, 0, "no media reached control");
    // Forged checks: dropped in the relay (one HMAC each), none reached the ICE agent.
    assert!(
        t.drops[DropReason::StunBadIntegrity as usize] > sent[0] / 2,
        "forged checks dropped in the relay: {:?} of {}",
        t.drops,
        sent[0]
    );
    let forged_seen = ice.unauthenticated + ice.bad_request + ice.discarded;
    assert_eq!(forged_seen, 0, "no forged check reached control: {ice:?}");
    // The legitimate plain check (no USE-CANDIDATE, from an address that is not the
    // session's peer) changes no state: the relay answered it, control never saw it.
    assert_eq!(snap.stun, 0, "{snap:?}");
    assert_eq!(ice.success, 0);
    // Per-source bound on the DTLS flood: one second of burst plus the rate over the run.
    let bound = (f64::from(RATE) * (elapsed + 1.0)).ceil() as u64;
    assert!(
        snap.dtls_unhandled <= bound,
        "DTLS hook saw {} datagrams, more than {bound}",
        snap.dtls_unhandled
    );
    assert!(snap.dtls_unhandled >= u64::from(RATE));
    assert_eq!(
        snap.dtls,
        snap.dtls_unhandled + snap.rate_source,
        "every slow-path datagram is accounted for: {snap:?}"
    );
    // Most of the DTLS flood stopped in the relay, before the socket to control.
    let gated = t.drops[DropReason::RateLimited as usize];
    assert!(
        gated > sent[1] / 2,
        "the relay's gate dropped the DTLS flood: {gated} of {}",
        sent[1]
    );
    assert!(
        t.slow_path_up <= 2 * bound,
        "the relay sent {} datagrams up, more than 2 × {bound}",
        t.slow_path_up
    );
    assert_eq!(snap.rate_global, 0);
    assert_eq!(ice.nominations, 0);
}

const NOW: u64 = 1_700_000_000;

fn claims(app: &str, room: &str, role: TokenRole, exp: u64) -> Claims {
    Claims {
        sub: "mallory".into(),
        app: app.into(),
        room: room.into(),
        role,
        exp,
        nbf: NOW - 60,
        iat: NOW - 60,
        email: None,
    }
}

/// Forged, expired, cross-application and wrong-role credentials at `authorize`, the entry
/// point WHIP/WHEP use. Application A and application B both have a room "blue".
#[test]
fn token_forgery_expiry_and_cross_application_refused() {
    let key_a = DevKey::new("ka", b"application-a-developer-secret-0123456789").expect("key");
    let key_b = DevKey::new("kb", b"application-b-developer-secret-0123456789").expect("key");
    let lookup = |app: &str, _kid: Option<&str>| match app {
        "app-a" => Some(key_a.clone()),
        "app-b" => Some(key_b.clone()),
        _ => None,
    };
    let policy = RoomPolicy::default();
    let limits = Limits::default();
    let blue_a = Target {
        app: "app-a",
        room: "blue",
        intent: Intent::Publish,
    };
    let blue_b = Target {
        app: "app-b",
        ..blue_a
    };
    let check = |tok: &str, target: &Target<'_>, policy: &RoomPolicy| {
        authorize(
            Credential::Signed(tok),
            lookup,
            NOW,
            None,
            target,
            policy,
            &limits,
        )
    };
    let ok = mint(&key_a, &claims("app-a", "blue", TokenRole::Host, NOW + 300));
    assert_eq!(
        check(&ok, &blue_a, &policy).expect("genuine").role,
        TokenRole::Host
    );

    // Cross-application: A's genuine token for A's room "blue" at B's room "blue".
    assert!(
        check(&ok, &blue_b, &policy).is_err(),
        "A's token opens B's room"
    );
    // A token claiming app B but signed with A's key.
    let forged_app = mint(&key_a, &claims("app-b", "blue", TokenRole::Host, NOW + 300));
    assert_eq!(
        check(&forged_app, &blue_b, &policy),
        Err(TokenError::BadSignature)
    );
    // Forged signature: claims edited after signing (viewer → host), and a random signature.
    let viewer = mint(
        &key_a,
        &claims("app-a", "blue", TokenRole::Viewer, NOW + 300),
    );
    let parts: Vec<&str> = viewer.split('.').collect();
    let host_claims = ok.split('.').nth(1).expect("payload");
    let spliced = format!("{}.{}.{}", parts[0], host_claims, parts[2]);
    assert_eq!(
        check(&spliced, &blue_a, &policy),
        Err(TokenError::BadSignature)
    );
    let mut sig = parts[2].to_string();
    let c = if sig.starts_with('A') { "B" } else { "A" };
    sig.replace_range(0..1, c);
    let resigned = format!("{}.{}.{}", parts[0], parts[1], sig);
    assert_eq!(
        check(&resigned, &blue_a, &policy),
        Err(TokenError::BadSignature)
    );
    // alg=none and a header naming another algorithm are refused before any claim is read.
    let none = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        host_claims
    );
    assert!(check(&none, &blue_a, &policy).is_err());
    // Expired (beyond the leeway), and not yet valid.
    let mut old = claims("app-a", "blue", TokenRole::Host, NOW - 120);
    (old.nbf, old.iat) = (NOW - 700, NOW - 700);
    let expired = mint(&key_a, &old);
    assert_eq!(check(&expired, &blue_a, &policy), Err(TokenError::Expired));
    let mut future = claims("app-a", "blue", TokenRole::Host, NOW + 7200);
    future.nbf = NOW + 3600;
    assert_eq!(
        check(&mint(&key_a, &future), &blue_a, &policy),
        Err(TokenError::NotYetValid)
    );
    // Wrong room of the same application, and a viewer trying to publish.
    let red = mint(&key_a, &claims("app-a", "red", TokenRole::Host, NOW + 300));
    assert_eq!(check(&red, &blue_a, &policy), Err(TokenError::WrongRoom));
    assert_eq!(
        check(&viewer, &blue_a, &policy),
        Err(TokenError::RoleCannotPublish)
    );
    // Unknown application.
    let ghost = DevKey::new("kg", b"ghost-application-secret-0123456789abcd").expect("key");
    let t = mint(&ghost, &claims("app-x", "blue", TokenRole::Host, NOW + 300));
    let blue_x = Target {
        app: "app-x",
        ..blue_a
    };
    assert_eq!(check(&t, &blue_x, &policy), Err(TokenError::UnknownKey));

    // Storm stream tokens: right password only, not after the timeout, never to publish,
    // and bound to the viewer's address when the room says so.
    let stream_policy = RoomPolicy {
        accepted_token_kinds: vec![TokenKind::Signed, TokenKind::Stream],
        stream_password: Some("storm-secret".into()),
        stream_timeout_minutes: 5,
        bind_ip: true,
        ..RoomPolicy::default()
    };
    let ip = "198.51.100.7".parse().ok();
    let sub = Target {
        intent: Intent::Subscribe,
        ..blue_a
    };
    let stream = |tok: &str, ip, target: &Target<'_>| {
        authorize(
            Credential::Stream(tok),
            lookup,
            NOW,
            ip,
            target,
            &stream_policy,
            &limits,
        )
    };
    let good = mint_stream("storm-secret", NOW, ip);
    assert_eq!(
        stream(&good, ip, &sub).expect("genuine").role,
        TokenRole::Viewer
    );
    assert!(stream(&mint_stream("guessed", NOW, ip), ip, &sub).is_err());
    assert!(stream(&mint_stream("storm-secret", NOW - 600, ip), ip, &sub).is_err());
    assert!(stream(&good, "198.51.100.8".parse().ok(), &sub).is_err());
    assert!(
        stream(&good, ip, &blue_a).is_err(),
        "stream token used to publish"
    );
    // The default policy accepts no stream tokens at all.
    assert_eq!(
        authorize(
            Credential::Stream(&good),
            lookup,
            NOW,
            ip,
            &sub,
            &policy,
            &limits
        ),
        Err(TokenError::KindNotAccepted)
    );
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
