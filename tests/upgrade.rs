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
