//! Faults with the real binaries (issue 6 part 4):
//! - `kill -9` of control mid-call: media keeps flowing while control is gone, and the
//!   restarted control comes back with every session and route;
//! - `kill -9` of the relay: a restarted relay forwards again from the shm file alone (the
//!   time from exec to the first forwarded packet is printed, not asserted);
//! - a corrupt or wrong-version shm file: the relay refuses it at once (exit 1, a message
//!   naming the problem); control refuses to adopt it and reports it (log, status API);
//! - audit log on a full disk (`/dev/full`): control keeps serving media and the admin API,
//!   logs the failure at error level and counts it (`sluice_audit_write_errors_total`).
//! - a relay frozen with SIGSTOP while a flood overruns its socket: the kernel's drops at the
//!   worker socket appear in the worker's shm counter block once it continues, and every
//!   datagram is either read or counted as a kernel drop.

use contract::shm::{Capacity, ShmWriter, ABI_VERSION};
use contract::srtp::Profile;
use sluice_tests::daemons::{http_get, parse_prometheus};
use sluice_tests::procs::{signal, Instance, Stream};
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

fn session_ids(inst: &Instance) -> Vec<u64> {
    let v: serde_json::Value =
        serde_json::from_str(&inst.ctl_ok(&["--json", "sessions"])).expect("sessions JSON");
    let list = v
        .as_array()
        .or_else(|| v["sessions"].as_array())
        .cloned()
        .unwrap_or_default();
    let mut ids: Vec<u64> = list.iter().filter_map(|s| s["id"].as_u64()).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn control_kill9_mid_call_media_keeps_flowing() {
    let inst = Instance::new("fault-control", "mmsg", 1, None);
    let mut control = inst.start_control();
    let relay = inst.spawn_relay(&[]);
    inst.wait_relay(&relay);
    let (p, s) = inst.pair(20, Profile::Aes128CmSha1_80);
    let (p2, s2) = inst.pair(30, Profile::AeadAes256Gcm);
    let before = session_ids(&inst);
    assert_eq!(before.len(), 4);
    let stream = Stream::start(p, s, inst.media, 1000);
    let stream2 = Stream::start(p2, s2, inst.media, 1000);
    std::thread::sleep(Duration::from_millis(500));

    control.kill9();
    let n0 = stream.received_count();
    std::thread::sleep(Duration::from_secs(1));
    let during = stream.received_count() - n0;
    assert!(
        during > 800,
        "media flows while control is dead: {during} packets in 1 s"
    );

    let _control = inst.start_control();
    assert_eq!(session_ids(&inst), before, "every session is back");
    let routes: serde_json::Value =
        serde_json::from_str(&inst.ctl_ok(&["--json", "routes"])).expect("routes JSON");
    let nroutes = routes
        .as_array()
        .or_else(|| routes["routes"].as_array())
        .map_or(0, Vec::len);
    assert_eq!(nroutes, 2, "every route is back: {routes}");
    // The restarted control takes new work.
    let (p3, s3) = inst.pair(40, Profile::AeadAes128Gcm);
    let stream3 = Stream::start(p3, s3, inst.media, 500);
    std::thread::sleep(Duration::from_millis(500));
    for (name, st) in [
        ("call 1", stream),
        ("call 2", stream2),
        ("new call", stream3),
    ] {
        let rep = st.finish();
        eprintln!(
            "{name}: sent {} received {} lost {} longest gap {:?}",
            rep.sent,
            rep.received.len(),
            rep.lost().len(),
            rep.longest_gap
        );
        assert!(rep.sent > 100);
        assert!(
            rep.lost().is_empty(),
            "{name}: {} lost across the control crash",
            rep.lost().len()
        );
    }
    assert!(!relay.log().contains("ERROR"), "{}", relay.log());
}

fn relay_kill9_restart(backend: &str) {
    let inst = Instance::new("fault-relay", backend, 1, None);
    let _control = inst.start_control();
    let mut relay = inst.spawn_relay(&[]);
    inst.wait_relay(&relay);
    let (p, s) = inst.pair(50, Profile::AeadAes128Gcm);
    let stream = Stream::start(p, s, inst.media, 2000);
    std::thread::sleep(Duration::from_millis(500));
    assert!(stream.received_count() > 0);

    relay.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let exec = Instant::now();
    let relay2 = inst.spawn_relay(&[]);
    let line = inst.wait_relay(&relay2);
    let ready = exec.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(t) = stream.first_arrival_after(exec) {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no packet forwarded after restart"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    eprintln!(
        "relay kill -9 restart ({backend}): ready line after {:.1} ms, first forwarded packet \
         {:.1} ms after exec ({line})",
        ready.as_secs_f64() * 1e3,
        (first - exec).as_secs_f64() * 1e3
    );
    std::thread::sleep(Duration::from_millis(300));
    let rep = stream.finish();
    // Everything sent after the restart arrived: the tail is continuous.
    let tail: Vec<u32> = rep
        .lost()
        .into_iter()
        .filter(|i| *i + 200 > rep.sent)
        .collect();
    assert!(tail.is_empty(), "lost after the restart: {tail:?}");
    assert!(!relay2.log().contains("ERROR"), "{}", relay2.log());
}

#[test]
fn relay_kill9_restarted_forwards_again_mmsg() {
    relay_kill9_restart("mmsg");
}

#[test]
fn relay_kill9_restarted_forwards_again_auto() {
    relay_kill9_restart("auto");
}

/// Start a relay on `inst`'s shm file and expect a refusal naming `want`.
fn relay_refuses(inst: &Instance, want: &str) {
    let mut r = inst.spawn_relay(&[]);
    let st = r
        .wait_exit(Duration::from_secs(5))
        .expect("the relay exits at once on a bad shm file");
    assert_eq!(st.code(), Some(1), "exit status: {}", r.log());
    let log = r.log();
    assert!(log.contains("refusing shared memory"), "{log}");
    assert!(log.contains(want), "{want:?} not in {log}");
}

/// Start control on `inst`'s bad shm file: it serves the API but does not adopt or overwrite
/// the file, logs the reason at error level and reports it in `status`.
fn control_refuses(inst: &Instance, want: &str, original: &[u8]) {
    let control = inst.start_control();
    // No relay runs: status exits 5 and still prints the document.
    let v = inst.status_json();
    assert_ne!(v["relay"]["up"], true, "{v}");
    assert_eq!(v["shm"]["ready"], false, "{v}");
    let err = v["shm"]["error"].as_str().unwrap_or_default();
    assert!(err.contains(want), "{want:?} not in status error {err:?}");
    let log = control.log();
    assert!(log.contains("ERROR") && log.contains(want), "{log}");
    assert_eq!(
        std::fs::read(&inst.shm).expect("read shm"),
        original,
        "control left the file alone"
    );
}

fn write_private(path: &std::path::Path, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("create shm file");
    f.write_all(bytes).expect("write");
}

#[test]
fn corrupt_shm_file_is_refused() {
    let inst = Instance::new("fault-corrupt", "mmsg", 1, None);
    std::fs::create_dir_all(&inst.runtime).expect("runtime dir");
    let garbage: Vec<u8> = (0..1 << 20).map(|i| (i * 7 + 3) as u8).collect();
    write_private(&inst.shm, &garbage);
    relay_refuses(&inst, "is not a Sluice shm file");
    control_refuses(&inst, "is not a Sluice shm file", &garbage);
}

#[test]
fn wrong_version_shm_file_is_refused() {
    let inst = Instance::new("fault-version", "mmsg", 1, None);
    std::fs::create_dir_all(&inst.runtime).expect("runtime dir");
    let cap = Capacity {
        sessions: 16,
        routes: 16,
        workers: 2,
    };
    drop(ShmWriter::create(&inst.shm, cap).expect("create shm"));
    // The ABI version is the u32 at offset 8 (docs/SHM.md).
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&inst.shm)
        .expect("open shm");
    f.seek(SeekFrom::Start(8)).expect("seek");
    f.write_all(&(ABI_VERSION + 1).to_le_bytes())
        .expect("patch version");
    let mut bytes = Vec::new();
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.read_to_end(&mut bytes).expect("read");
    drop(f);
    let want = format!("shm ABI version {}", ABI_VERSION + 1);
    relay_refuses(&inst, &want);
    control_refuses(&inst, &want, &bytes);
}

#[test]
fn audit_log_on_a_full_disk_keeps_media_and_api_up() {
    if !std::path::Path::new("/dev/full").exists() {
        sluice_tests::skip::skip("no /dev/full on this machine");
        return;
    }
    let dir = sluice_tests::TempDir::new("fault-audit-link");
    let audit = dir.path().join("audit.log");
    std::os::unix::fs::symlink("/dev/full", &audit).expect("symlink");
    let inst = Instance::new("fault-audit", "mmsg", 1, Some(&audit));
    let control = inst.start_control();
    let relay = inst.spawn_relay(&[]);
    inst.wait_relay(&relay);
    // Every admin mutation is audited: these writes all fail, the API still answers.
    let (p, s) = inst.pair(60, Profile::AeadAes128Gcm);
    let stream = Stream::start(p, s, inst.media, 1000);
    std::thread::sleep(Duration::from_millis(700));
    let (p2, s2) = inst.pair(70, Profile::AeadAes128Gcm);
    let stream2 = Stream::start(p2, s2, inst.media, 1000);
    std::thread::sleep(Duration::from_millis(500));
    let stats: serde_json::Value =
        serde_json::from_str(&inst.ctl_ok(&["--json", "stats"])).expect("stats JSON");
    let errors = stats["control"]["audit_errors"].as_u64().unwrap_or(0);
    assert!(errors >= 6, "audit write errors counted: {stats}");
    let log = control.log();
    assert!(
        log.contains("ERROR") && log.contains("AUDIT LOG WRITE FAILED"),
        "{log}"
    );
    // The Prometheus metric says so too.
    let rt: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(inst.runtime.join(contract::config::RUNTIME_FILE)).expect("rt"),
    )
    .expect("runtime JSON");
    let (_, metrics) = http_get(rt["metrics_url"].as_str().expect("metrics_url"), None);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("sluice_audit_write_errors_total"))
        .unwrap_or_else(|| panic!("no audit metric in {metrics}"));
    let n: f64 = line
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .expect("metric value");
    assert!(n >= 6.0, "{line}");
    for st in [stream, stream2] {
        let rep = st.finish();
        assert!(rep.sent > 100);
        assert!(rep.lost().is_empty(), "{} lost", rep.lost().len());
    }
}

/// A relay stopped with SIGSTOP (its workers and supervisor frozen) while a flood fills its
/// socket: once it continues, the worker's shm counter block shows the kernel's drops at that
/// socket (relay::health, sampled by the daemon's supervisor), next to the published I/O
/// statistics and a fresh heartbeat.
#[test]
fn stopped_relay_kernel_drops_show_in_shm() {
    let inst = Instance::new("fault-sigstop", "mmsg", 1, None);
    // The smallest receive buffer the config allows, so the flood overruns it.
    let text = std::fs::read_to_string(&inst.config).expect("config");
    assert!(text.contains("recv_buffer_bytes = 4194304"), "{text}");
    std::fs::write(
        &inst.config,
        text.replace("recv_buffer_bytes = 4194304", "recv_buffer_bytes = 65536"),
    )
    .expect("write config");
    let _control = inst.start_control();
    let relay = inst.spawn_relay(&[]);
    inst.wait_relay(&relay);
    let reader = contract::shm::ShmReader::open(&inst.shm).expect("open shm");
    let block = |r: &contract::shm::ShmReader| r.worker_counters(0).expect("block 0").snapshot();
    let deadline = Instant::now() + Duration::from_secs(10);
    while block(&reader).io.syscalls == 0 || reader.worker_counters(0).expect("b").heartbeat() == 0
    {
        assert!(
            Instant::now() < deadline,
            "no health sample: {:?}",
            block(&reader)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(block(&reader).kernel_drops, 0);

    signal(relay.pid(), "STOP");
    let flood = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    const N: u64 = 3000;
    for _ in 0..N {
        flood.send_to(&[0x80; 1000], inst.media).expect("send");
    }
    signal(relay.pid(), "CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = block(&reader);
        if c.kernel_drops > 0 {
            assert!(c.kernel_drops < N, "the queue kept some: {c:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no kernel drops in shm: {c:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Everything the kernel kept was read: received + kernel drops == sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = block(&reader);
        if c.packets_in + c.kernel_drops == N && c.rx_queue_bytes == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not all accounted: {c:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Control shows the same in `/v1/stats` and `/metrics`.
    let kernel = block(&reader).kernel_drops;
    let stats = inst.ctl_json(&["stats"]);
    assert_eq!(stats["workers"][0]["kernel_drops"], kernel, "{stats}");
    assert!(
        stats["totals"]["io"]["syscalls"].as_u64() > Some(0),
        "{stats}"
    );
    let url = inst.runtime_info().expect("control.json").metrics_url;
    let (code, body) = http_get(&url, None);
    assert_eq!(code, 200, "{body}");
    let m = parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert_eq!(
        m.value("sluice_kernel_drops_total", &[("worker", "0")]),
        Some(kernel as f64)
    );
    assert_eq!(
        m.value("sluice_worker_stuck", &[("worker", "0")]),
        Some(0.0)
    );
    assert!(m
        .value("sluice_rx_queue_bytes", &[("worker", "0")])
        .is_some());
    assert!(m.types.contains_key("sluice_io_events_total"), "{body}");
}
