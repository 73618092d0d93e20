//! `sluice-bench webrtc` end to end: the bench joins as WHIP publishers and WHEP viewers with
//! real ICE and DTLS-SRTP, then sends SRTP through the server and accounts for every packet.
//!
//! - against the real `sluice-control` and `sluice-relay` (tests/webrtc_rig.rs): 2 publishers
//!   × 3 viewers; every join completes, media flows with at most 1 % loss, and the report
//!   carries the handshake, first-media, throughput, loss and latency fields; then
//!   `--find-max` over one set of joins: a short search at low rates finds a passing rate,
//!   and the report splits the server's CPU time into the joins and the media;
//! - against Janus's videoroom (Debian's `janus`, started here with its HTTP transport on
//!   loopback): the same load through `--target-kind janus`. Janus (libnice) gathers no
//!   loopback candidates, so its ICE runs on the address of a bridge the test creates
//!   (tests/netns.rs), where the bench binds too. Without `janus`, or without the rights to
//!   create the bridge, the test prints `SKIP: …` and passes (it fails instead when
//!   `SLUICE_REQUIRE_PEERS` is set: CI installs Janus, .ci/run). The same short `--find-max`
//!   follows against the same Janus.

use sluice_tests::daemons::{bin, Proc};
use sluice_tests::netns::Net;
use sluice_tests::skip::skip;
use sluice_tests::webrtc_rig::WebRtcRig;
use sluice_tests::TempDir;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The fixed-rate run: 2 publishers × 3 viewers at 300 pps for 4 s, at most 1 % loss.
const RUN: &[&str] = &[
    "--publishers",
    "2",
    "--fanout",
    "3",
    "--rate",
    "300",
    "--size",
    "400",
    "--duration",
    "4",
    "--max-loss",
    "1",
    "--drain-ms",
    "2000",
];

/// A short search over the same joins: 100, 200, then 400 pps, 2 s each, 1 % loss passes.
const FIND_MAX: &[&str] = &[
    "--find-max",
    "--publishers",
    "2",
    "--fanout",
    "3",
    "--size",
    "400",
    "--start-rate",
    "100",
    "--max-rate",
    "400",
    "--max-steps",
    "3",
    "--step-duration",
    "2",
    "--loss",
    "1",
    "--drain-ms",
    "2000",
];

/// Run `sluice-bench webrtc LOAD ARGS` with a JSON report; the report.
fn bench(dir: &Path, env: &[(&str, &Path)], load: &[&str], args: &[&str]) -> serde_json::Value {
    let json = dir.join("bench-report.json");
    let _ = std::fs::remove_file(&json);
    let mut cmd = Command::new(bin("sluice-bench"));
    cmd.arg("webrtc")
        .args(load)
        .arg("--quiet")
        .args(args)
        .arg("--json")
        .arg(&json);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run sluice-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sluice-bench webrtc failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{stdout}");
    let text = std::fs::read(&json).expect("the JSON report");
    serde_json::from_slice(&text).expect("report is JSON")
}

/// What every run must show: all 8 joins done, every viewer got media, ≤ 1 % loss, and the
/// report's fields present.
fn check_report(r: &serde_json::Value) {
    check_joins(r);
    check_result(&r["result"]);
}

/// All 8 joins done, every viewer got media, the join figures present.
fn check_joins(r: &serde_json::Value) {
    let w = &r["webrtc"];
    assert_eq!(w["publishers"], 2, "{w}");
    assert_eq!(w["viewers"], 6, "{w}");
    assert_eq!(w["handshakes"], 8, "every join completed: {w}");
    assert_eq!(w["failed"], 0, "{w}");
    assert_eq!(w["viewers_without_media"], 0, "{w}");
    assert!(w["handshakes_per_s"].as_f64().unwrap() > 0.0, "{w}");
    for k in [
        "join_ms",
        "signal_ms",
        "ice_ms",
        "dtls_ms",
        "first_media_ms",
    ] {
        for q in ["p50", "p90", "p99", "max"] {
            assert!(w[k][q].as_f64().is_some(), "{k}.{q} missing: {w}");
        }
        assert!(w[k]["max"].as_f64().unwrap() > 0.0, "{k}: {w}");
    }
}

/// The measured step (a find-max's best): ≤ 1 % loss, nothing forged or misrouted, every
/// viewer's share accounted.
fn check_result(res: &serde_json::Value) {
    let loss = res["loss_ratio"].as_f64().expect("loss_ratio");
    assert!(loss <= 0.01, "loss {loss}: {res}");
    assert_eq!(res["auth_failures"], 0, "{res}");
    assert_eq!(res["misrouted"], 0, "{res}");
    let sent = res["offered"]["packets"].as_u64().expect("offered packets");
    let expected = res["expected"].as_u64().expect("expected");
    let delivered = res["delivered"]["packets"]
        .as_u64()
        .expect("delivered packets");
    assert!(sent > 100, "{res}");
    assert_eq!(expected, sent * 3, "{res}");
    assert!(delivered as f64 >= 0.99 * expected as f64, "{res}");
    for k in ["p50_us", "p99_us", "max_us"] {
        assert!(res["latency"][k].as_f64().is_some(), "latency.{k}: {res}");
    }
}

#[test]
fn bench_joins_sluice_through_whip_and_whep() {
    let rig = WebRtcRig::start("bench-webrtc");
    let run = rig.dir().join("run");
    let report = bench(rig.dir(), &[("SLUICE_RUNTIME_DIR", &run)], RUN, &[]);
    assert_eq!(report["command"], "webrtc");
    check_report(&report);

    let pids = rig
        .pids()
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let report = bench(
        rig.dir(),
        &[("SLUICE_RUNTIME_DIR", &run)],
        FIND_MAX,
        &["--server-pid", &pids],
    );
    check_find_max(&report, 2);
}

/// A `--find-max` report over one set of joins at rates every server carries: each step
/// passed, the best is the last (400 pps, the top), the search says the ceiling was not
/// reached, and with `server_pids` PIDs the server's CPU is split into joins and media.
fn check_find_max(r: &serde_json::Value, server_pids: usize) {
    assert_eq!(r["command"], "webrtc find-max");
    check_joins(r);
    let fm = &r["find_max"];
    let steps = fm["steps"].as_array().expect("find_max.steps");
    assert_eq!(steps.len(), 3, "100, 200 and 400 pps: {fm}");
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s["passed"], true, "step {i}: {fm}");
        if server_pids > 0 {
            let c = &s["server_cpu"];
            assert!(c["user_s"].as_f64().is_some(), "step {i}: {fm}");
            assert!(c["system_s"].as_f64().is_some(), "step {i}: {fm}");
        }
    }
    let best = fm["max_offered_pps"].as_f64().expect("max_offered_pps");
    assert!(best > 0.0, "a passing rate: {fm}");
    assert!(best >= 0.97 * 400.0, "the top step passed: {fm}");
    assert!(fm["max_delivered_pps"].as_f64().unwrap() > 0.0, "{fm}");
    assert_eq!(fm["ceiling_found"], false, "{fm}");
    let warnings = r["warnings"].to_string();
    assert!(
        warnings.contains("the ceiling was not reached"),
        "the search says its rate is a lower bound: {warnings}"
    );
    let res = &r["result"];
    check_result(res);
    assert_eq!(res["target_pps"].as_f64(), Some(400.0), "{res}");
    let w = &r["webrtc"];
    if server_pids == 0 {
        return;
    }
    assert_eq!(
        w["server_pids"].as_array().map(Vec::len),
        Some(server_pids),
        "{w}"
    );
    // The joins took the server some CPU (DTLS at least), and the media's share is there.
    assert!(w["join_cpu"]["user_s"].as_f64().is_some(), "{w}");
    let c = &r["server_cpu"];
    let delivered = res["delivered"]["packets"].as_u64().unwrap();
    assert_eq!(c["delivered"].as_u64(), Some(delivered), "{c}");
    assert!(c["cpu"]["user_s"].as_f64().is_some(), "{c}");
    assert!(c["cpu"]["system_s"].as_f64().is_some(), "{c}");
    assert!(c["delivered_per_cpu_s"].as_f64().is_some(), "{c}");
}

/// Where Debian's janus package keeps its modules.
const JANUS_LIB: &str = "/usr/lib/x86_64-linux-gnu/janus";

/// Why Janus cannot run here, if it cannot.
fn janus_unavailable() -> Option<String> {
    // `janus --version` prints its version and exits 1.
    let ok = Command::new("janus")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Janus version"));
    if !ok {
        return Some("janus not installed (apt-get install janus)".into());
    }
    if !Path::new(JANUS_LIB)
        .join("plugins/libjanus_videoroom.so")
        .is_file()
    {
        return Some(format!("no videoroom plugin in {JANUS_LIB}/plugins"));
    }
    sluice_tests::netns::unavailable()
}

/// Janus with only the videoroom plugin and the HTTP transport (on loopback, `port`), ICE on
/// `ice_ip` alone. Its configuration files are written to `dir`.
fn janus_config(dir: &Path, port: u16, ice_ip: IpAddr) -> PathBuf {
    let plugins = [
        "audiobridge",
        "duktape",
        "echotest",
        "lua",
        "nosip",
        "recordplay",
        "sip",
        "streaming",
        "textroom",
        "videocall",
        "voicemail",
    ]
    .map(|p| format!("libjanus_{p}.so"))
    .join(",");
    let transports = ["mqtt", "nanomsg", "pfunix", "rabbitmq", "websockets"]
        .map(|p| format!("libjanus_{p}.so"))
        .join(",");
    let events = [
        "gelfevh",
        "mqttevh",
        "nanomsgevh",
        "rabbitmqevh",
        "sampleevh",
        "wsevh",
    ]
    .map(|p| format!("libjanus_{p}.so"))
    .join(",");
    let main = dir.join("janus.jcfg");
    std::fs::write(
        &main,
        format!(
            "general: {{\n configs_folder = \"{d}\"\n plugins_folder = \"{JANUS_LIB}/plugins\"\n \
             transports_folder = \"{JANUS_LIB}/transports\"\n events_folder = \"{JANUS_LIB}/events\"\n \
             loggers_folder = \"{JANUS_LIB}/loggers\"\n debug_level = 4\n}}\n\
             plugins: {{ disable = \"{plugins}\" }}\n\
             transports: {{ disable = \"{transports}\" }}\n\
             loggers: {{ disable = \"libjanus_jsonlog.so\" }}\n\
             events: {{ broadcast = false\n disable = \"{events}\" }}\n\
             nat: {{ ice_enforce_list = \"{ice_ip}\"\n ignore_mdns = true }}\n",
            d = dir.display()
        ),
    )
    .expect("janus.jcfg");
    std::fs::write(
        dir.join("janus.transport.http.jcfg"),
        format!(
            "general: {{ base_path = \"/janus\"\n http = true\n port = {port}\n ip = \"127.0.0.1\"\n https = false }}\n\
             admin: {{ admin_http = false }}\n"
        ),
    )
    .expect("http config");
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")
        .expect("videoroom config");
    main
}

/// Whether `GET /janus/info` on loopback `port` answers 200.
fn janus_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /janus/info HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

/// Start Janus; its process and HTTP API base once `GET /janus/info` answers.
fn start_janus(dir: &Path, ice_ip: IpAddr) -> (Proc, String) {
    // The port is free when chosen; if Janus loses it to another process meanwhile, its
    // info endpoint never answers and a new port is tried.
    for _ in 0..3 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free TCP port")
            .port();
        let cfg = janus_config(dir, port, ice_ip);
        let mut cmd = Command::new("janus");
        cmd.arg("-C").arg(&cfg).arg("-F").arg(dir);
        let log = std::fs::File::create(dir.join("janus.stdout.log")).expect("janus log");
        let mut janus = Proc::spawn("janus", cmd, dir, Stdio::from(log));
        let base = format!("http://127.0.0.1:{port}/janus");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && janus.poll().is_none() {
            if janus_answers(port) {
                return (janus, base);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        janus.terminate();
    }
    panic!(
        "janus did not start; log:\n{}",
        std::fs::read_to_string(dir.join("janus.stdout.log")).unwrap_or_default()
    );
}

#[test]
fn bench_joins_janus_videoroom() {
    if let Some(why) = janus_unavailable() {
        skip(&why);
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
            "SLUICE_REQUIRE_PEERS is set but the Janus test cannot run: {why}"
        );
        return;
    }
    let mut net = Net::new().expect("test bridge");
    // A namespace on the bridge gives it a carrier, so libnice lists its address.
    net.add_host().expect("bridge host");
    let ip = IpAddr::V4(net.bridge_ip());
    let dir = TempDir::new("bench-janus");
    let (janus, base) = start_janus(dir.path(), ip);
    let ip_s = ip.to_string();
    let janus_args = [
        "--target-kind",
        "janus",
        "--janus-url",
        &base,
        "--bind",
        &ip_s,
    ];
    let report = bench(dir.path(), &[], RUN, &janus_args);
    assert_eq!(report["target"]["kind"], "janus (videoroom)");
    check_report(&report);

    let pid = janus.pid().to_string();
    let mut args = janus_args.to_vec();
    args.extend(["--server-pid", &pid]);
    let report = bench(dir.path(), &[], FIND_MAX, &args);
    assert_eq!(report["target"]["kind"], "janus (videoroom)");
    check_find_max(&report, 1);
}
