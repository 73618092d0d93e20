//! The rtpengine target against a real rtpengine in userspace mode on loopback: the bench's
//! SRTP probes must come out of rtpengine decryptable with the keys its SDP announced.
//! Skipped (with a reason on stderr) when no `rtpengine` binary is installed.

#[path = "../../tests/support/skip.rs"]
mod skip;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use contract::srtp::Profile;
use sluice_bench::cmd::{self, Output, RunOptions};
use sluice_bench::gen::RigSpec;
use sluice_bench::rtpengine::{Bencode, NgClient, RtpengineTarget};

fn find_rtpengine() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([std::path::PathBuf::from("/usr/sbin"), "/usr/bin".into()])
        .map(|d| d.join("rtpengine"))
        .find(|p| p.is_file())
}

/// Kills the daemon when the test ends, however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("loopback bind")
}

#[test]
fn rtpengine_forwards_bench_srtp() {
    let Some(bin) = find_rtpengine() else {
        skip::skip("no rtpengine binary (apt-get install rtpengine-daemon)");
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
            "SLUICE_REQUIRE_PEERS is set but rtpengine is not installed"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("sluice-rtpe-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // An empty config section keeps the system /etc/rtpengine config out of the way.
    let conf = dir.join("rtpengine.conf");
    std::fs::write(&conf, "[rtpengine]\ntable = -1\n").unwrap();
    let ng = free_udp_port();
    // Media ports: a window derived from the ng port, away from the ephemeral range's start.
    let port_min = 20000 + (ng % 200) * 50;
    let child = Command::new(&bin)
        .arg(format!("--config-file={}", conf.display()))
        .args([
            "--foreground",
            "--log-stderr",
            "--table=-1",
            "--num-threads=1",
        ])
        .arg("--interface=127.0.0.1")
        .arg(format!("--listen-ng=127.0.0.1:{ng}"))
        .arg(format!("--port-min={port_min}"))
        .arg(format!("--port-max={}", port_min + 49))
        .arg(format!("--pidfile={}", dir.join("pid").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let _daemon = match child {
        Ok(c) => Daemon(c),
        Err(e) => {
            skip::skip(format!("cannot start {}: {e}", bin.display()));
            return;
        }
    };
    let ng_addr = format!("127.0.0.1:{ng}").parse().unwrap();
    let mut target = None;
    for _ in 0..25 {
        match RtpengineTarget::connect(ng_addr) {
            Ok(t) => {
                target = Some(t);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let Some(mut target) = target else {
        skip::skip(format!(
            "rtpengine did not answer ng ping on {ng_addr} (refused here?)"
        ));
        return;
    };
    for profile in [Profile::Aes128CmSha1_80, Profile::AeadAes128Gcm] {
        let (opts, out) = load(profile, 1);
        let report = cmd::run(&mut target, &opts, &out).expect("run against rtpengine");
        let r = report.result.expect("a run result");
        assert!(
            r.offered.packets > 400,
            "{profile}: offered {}",
            r.offered.packets
        );
        assert_eq!(
            r.auth_failures, 0,
            "{profile}: packets failed authentication"
        );
        assert_eq!(r.misrouted, 0, "{profile}: misrouted packets");
        // rtpengine drops nothing at this rate on loopback; allow the first packets that
        // may arrive before its call state is complete.
        assert!(
            r.delivered.packets * 100 >= r.expected * 95,
            "{profile}: delivered {} of {}",
            r.delivered.packets,
            r.expected
        );
    }
    // Fan-out > 1: publish / subscribe request / subscribe answer; every subscriber gets
    // its own copy, encrypted with the key rtpengine announced for it.
    for profile in [Profile::Aes128CmSha1_80, Profile::AeadAes128Gcm] {
        let (opts, out) = load(profile, 3);
        let report = cmd::run(&mut target, &opts, &out).expect("fan-out run against rtpengine");
        let r = report.result.expect("a run result");
        assert_eq!(r.streams.len(), 2);
        for s in &r.streams {
            assert_eq!(s.subscribers, 3);
            assert_eq!(s.expected, s.sent * 3);
            assert!(
                s.delivered * 100 >= s.expected * 95,
                "{profile}: stream {} delivered {} of {}",
                s.stream,
                s.delivered,
                s.expected
            );
        }
        assert_eq!(
            (r.auth_failures, r.misrouted, r.duplicates),
            (0, 0, 0),
            "{profile}: auth failures, misrouted, duplicates"
        );
    }
    // Teardown removed every call.
    let mut ng = NgClient::new(ng_addr).unwrap();
    let list = ng
        .call(&Bencode::dict([("command", Bencode::str("list"))]))
        .expect("ng list");
    let calls = match list.get("calls") {
        Some(Bencode::List(v)) => v.len(),
        other => panic!("list reply without calls: {other:?}"),
    };
    assert_eq!(calls, 0, "calls left after teardown: {list:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two publishers of 300-byte packets at 400 packets/s for 1.5 s, `fanout` subscribers each.
fn load(profile: Profile, fanout: usize) -> (RunOptions, Output) {
    let opts = RunOptions {
        rig: RigSpec {
            publishers: 2,
            fanout,
            size: 300,
            profile: Some(profile),
            ..RigSpec::default()
        },
        rate: 400.0,
        duration: Duration::from_millis(1500),
        drain: Duration::from_millis(500),
    };
    let out = Output {
        quiet: true,
        ..Output::default()
    };
    (opts, out)
}
