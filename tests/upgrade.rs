//! Zero-loss relay upgrade with the real binaries: control and a relay run, a steady SRTP
//! stream flows publisher → relay → subscriber, and `sluicectl upgrade` replaces the relay
//! twice mid-stream. Every packet must arrive (sequence continuity at the receiver), the old
//! relays must have exited, and shared memory must name the last relay.

use contract::shm::ShmReader;
use contract::srtp::Profile;
use sluice_tests::procs::{pid_alive, signal, wait_gone, Instance, Stream};
use std::time::{Duration, Instant};

const PPS: u32 = 2000;

fn upgrade_mid_stream(backend: &str) {
    let inst = Instance::new("upgrade", backend, 2, None);
    let _control = inst.start_control();
    let mut relay = inst.spawn_relay(&[]);
    inst.wait_relay(&relay);
    let (p, s) = inst.pair(10, Profile::AeadAes128Gcm);
    let handover = inst.runtime.join("relay-handover.sock");
    let stream = Stream::start(p, s, inst.media, PPS);
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        stream.received_count() > 0,
        "media flows before the upgrade"
    );

    let mut pids = vec![relay.pid()];
    for round in 0..2 {
        let t = Instant::now();
        let out = inst.ctl_ok(&[
            "upgrade",
            "--json",
            "--handover",
            handover.to_str().expect("utf-8 path"),
        ]);
        let took = t.elapsed();
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("upgrade JSON");
        let old = v["old_pid"].as_u64().expect("old_pid") as u32;
        let new = v["new_pid"].as_u64().expect("new_pid") as u32;
        assert_eq!(
            old,
            *pids.last().expect("a relay"),
            "upgraded the running relay"
        );
        assert_ne!(old, new);
        assert!(!pid_alive(old), "round {round}: the old relay exited");
        assert!(pid_alive(new), "round {round}: the new relay runs");
        assert_eq!(v["media_addr"], inst.media.to_string());
        eprintln!("upgrade round {round} ({backend}): pid {old} -> {new} in {took:?}");
        pids.push(new);
        std::thread::sleep(Duration::from_millis(500));
    }
    // The first relay was our child: it exited by itself, cleanly.
    let st = relay
        .wait_exit(Duration::from_secs(5))
        .expect("old relay exited");
    assert!(st.success(), "old relay exit status {st}");
    assert!(relay.log().contains("media sockets handed over"));

    let rep = stream.finish();
    let lost = rep.lost();
    eprintln!(
        "{backend}: sent {} received {} lost {} duplicates {} reordered {} longest gap {:?}",
        rep.sent,
        rep.received.len(),
        lost.len(),
        rep.duplicates,
        rep.reordered,
        rep.longest_gap
    );
    assert!(rep.sent > PPS, "the stream ran ({} packets)", rep.sent);
    assert!(
        lost.is_empty(),
        "{} packets lost across the upgrades: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert_eq!(rep.duplicates, 0);

    let last = *pids.last().expect("a relay");
    let info = ShmReader::open(&inst.shm).expect("open shm").relay_info();
    assert_eq!(info.pid, last, "shared memory names the new relay");
    signal(last, "TERM");
    assert!(
        wait_gone(last, Duration::from_secs(10)),
        "new relay stops on SIGTERM"
    );
    assert!(
        !handover.exists(),
        "a clean stop removes the hand-over socket"
    );
}

#[test]
fn upgrade_loses_no_packet_mmsg() {
    upgrade_mid_stream("mmsg");
}

#[test]
fn upgrade_without_a_relay_is_a_clear_error() {
    let inst = Instance::new("upgrade-none", "mmsg", 1, None);
    let path = inst.runtime.join("relay-handover.sock");
    let (st, _, err) = inst.ctl(&["upgrade", "--handover", path.to_str().expect("utf-8")]);
    assert_eq!(st.code(), Some(3), "exit code 3 = not running: {err}");
    assert!(err.contains("no running relay"), "{err}");
}

/// A takeover request from a relay mapping another shm file is refused; the running relay
/// keeps serving.
#[test]
fn takeover_of_another_instance_is_refused() {
    let inst = Instance::new("upgrade-refuse", "mmsg", 1, None);
    let _control = inst.start_control();
    let relay = inst.spawn_relay(&[]);
    inst.wait_relay(&relay);
    let other = inst.dir.path().join("other-shm");
    std::fs::copy(&inst.shm, &other).expect("copy shm");
    let mut intruder = inst.spawn_relay(&["--takeover", "--shm", other.to_str().expect("utf-8")]);
    let st = intruder
        .wait_exit(Duration::from_secs(20))
        .expect("refused takeover exits");
    assert_eq!(st.code(), Some(1));
    assert!(
        intruder.log().contains("shared memory differs"),
        "{}",
        intruder.log()
    );
    assert!(pid_alive(relay.pid()), "the running relay keeps serving");
}

#[test]
fn upgrade_loses_no_packet_io_uring() {
    if let Err(e) = relay::io::probe_io_uring() {
        sluice_tests::skip::skip(format!("io_uring refused here: {e}"));
        return;
    }
    upgrade_mid_stream("io_uring");
}

/// ICE-TCP across an upgrade (docs/OPERATIONS.md "Upgrades"): a static viewer session bound to
/// a TCP connection receives a publisher's stream while `sluicectl upgrade` replaces the relay
/// twice. The connection stays open, every packet arrives over it exactly once, a consent
/// check whose frame was cut in two by the upgrade is answered (the unframed bytes moved with
/// the connection), and the last relay accepts new connections on the listener it adopted.
fn ice_tcp_across_upgrades(backend: &str) {
    use serde_json::json;
    use sluice_tests::ice_tcp_peer::{admin_post, binding_check, IceCreds, IceTcpPeer};
    use sluice_tests::Peer;
    use std::io::Write;

    let inst = Instance::new("upgrade-tcp", backend, 2, None);
    let mut cfg = std::fs::read_to_string(&inst.config).expect("config");
    cfg.push_str("\n[relay.tcp]\nenabled = true\n");
    std::fs::write(&inst.config, cfg).expect("config");
    let _control = inst.start_control();
    let mut relay = inst.spawn_relay(&[]);
    inst.wait_relay(&relay);
    let info = inst.runtime_info().expect("control.json");
    let profile = Profile::AeadAes128Gcm;
    let mut publisher = Peer::new(50, contract::shm::Role::Host, profile);
    let mut viewer = Peer::new(51, contract::shm::Role::Viewer, profile);
    let pid = inst.add_session(&publisher);
    let (st, created) = admin_post(
        &info.admin_url,
        &info.admin_token,
        "/v1/sessions",
        &json!({"profile": profile.name(), "rx_key": viewer.send_key.to_base64(),
                "tx_key": viewer.recv_key.to_base64(), "role": "viewer",
                "ice": {"remote_ufrag": "upgV"}}),
    );
    assert_eq!(st, 201, "{created}");
    let sid = created["id"].as_u64().expect("id");
    let creds = IceCreds::from_created(&created);
    inst.ctl_ok(&[
        "route",
        "add",
        "--from",
        &pid.to_string(),
        "--to",
        &sid.to_string(),
    ]);
    let mut tcp = IceTcpPeer::connect(inst.media);
    tcp.nominate(&creds, Duration::from_secs(20));
    let mut writer = tcp.stream.try_clone().expect("clone the connection");

    // The viewer reads on its own thread, so the connection never backs up during upgrades.
    const N: u16 = 3000;
    let split_txid = [0x5b; 12];
    let reader = std::thread::spawn(move || {
        let mut seqs = Vec::new();
        let mut split_answered = false;
        let mut idle_since = Instant::now();
        while idle_since.elapsed() < Duration::from_secs(8) {
            let Some(mut f) = tcp.recv_frame(Duration::from_millis(200)) else {
                continue;
            };
            idle_since = Instant::now();
            if f.first().is_some_and(|b| b >> 6 == 2) {
                let n = f.len();
                let m = viewer.recv.unprotect_rtp(&mut f, n).expect("decrypts");
                assert_eq!(m, 12 + 400, "whole payload");
                seqs.push(u16::from_be_bytes([f[2], f[3]]));
            } else if f.len() >= 20 && f[8..20] == split_txid {
                split_answered = true;
            }
        }
        (seqs, split_answered)
    });
    let media = inst.media;
    let sender = std::thread::spawn(move || {
        let payload = [0x3cu8; 400];
        let t0 = Instant::now();
        for seq in 0..N {
            publisher.send_rtp(media, 0x5e1, seq, &payload);
            // 1,000 packets per second.
            let due = t0 + Duration::from_millis(u64::from(seq) + 1);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    });

    std::thread::sleep(Duration::from_millis(600));
    let handover = inst.runtime.join("relay-handover.sock");
    let check = binding_check(split_txid, &creds.username(), &creds.pwd, false);
    let mut frame = (check.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&check);
    for round in 0..2 {
        if round == 0 {
            // Half a frame now, the rest after the upgrade.
            writer.write_all(&frame[..9]).expect("first half");
        }
        let out = inst.ctl_ok(&[
            "upgrade",
            "--json",
            "--handover",
            handover.to_str().expect("utf-8 path"),
        ]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("upgrade JSON");
        eprintln!("ICE-TCP upgrade round {round} ({backend}): {v}");
        if round == 0 {
            writer.write_all(&frame[9..]).expect("second half");
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    sender.join().expect("sender");
    let (seqs, split_answered) = reader.join().expect("reader");
    let mut unique = seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    eprintln!(
        "ICE-TCP across upgrades ({backend}): {} frames of {N}, {} distinct, split check answered: {split_answered}",
        seqs.len(),
        unique.len()
    );
    assert_eq!(unique.len(), seqs.len(), "no packet twice");
    assert_eq!(
        unique.len(),
        usize::from(N),
        "every packet over the same connection; missing: {:?}",
        (0..N)
            .filter(|s| unique.binary_search(s).is_err())
            .take(20)
            .collect::<Vec<_>>()
    );
    assert!(
        split_answered,
        "the consent check cut by the upgrade was answered"
    );
    // The last relay listens on the adopted listener: a new connection is answered.
    let mut late = IceTcpPeer::connect(inst.media);
    late.nominate(&creds, Duration::from_secs(20));
    assert!(relay
        .wait_exit(Duration::from_secs(5))
        .expect("first relay exited")
        .success());
    assert!(
        relay.log().contains("ICE-TCP connections handed over"),
        "{}",
        relay.log()
    );
}

#[test]
fn ice_tcp_survives_upgrades_mmsg() {
    ice_tcp_across_upgrades("mmsg");
}

#[test]
fn ice_tcp_survives_upgrades_io_uring() {
    if let Err(e) = relay::io::probe_io_uring() {
        sluice_tests::skip::skip(format!("io_uring refused here: {e}"));
        return;
    }
    ice_tcp_across_upgrades("io_uring");
}
