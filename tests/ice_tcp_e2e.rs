//! A network without UDP (issue 18): headless Chromium publishes through WHIP and another
//! watches through WHEP over HTTPS (a certificate this test makes with rcgen, for the bridge
//! address; Chromium trusts it by `--ignore-certificate-errors-spki-list`), each browser in its
//! own network namespace on a test bridge (tests/netns.rs), the real `sluice-control` and
//! `sluice-relay` (passive ICE-TCP on, one worker) in the root namespace on the bridge address.
//!
//! - `media_flows_over_ice_tcp_when_udp_is_blocked`: nftables in both browsers' namespaces drops
//!   every UDP datagram to the relay's address; media must flow over ICE-TCP: the viewer decodes
//!   frames and both peers' selected candidate pairs have protocol `tcp` at both ends (and the
//!   drop rule did drop the UDP checks). A second run in fresh namespaces without the rule must
//!   select `udp`.
//!
//! The relay runs one worker: ICE-TCP peers on different workers is work in progress
//! (docs/IO.md "ICE-TCP"). Without root, `ip`/`tc`/`nft`, Chromium, Node or playwright-core the
//! test prints `SKIP: <why>` and passes, unless `SLUICE_REQUIRE_PEERS` is set.

use serde_json::{json, Value};
use sluice_tests::netns::{self, Net};
use sluice_tests::skip::skip;
use sluice_tests::webrtc_rig::{run_session, unavailable, RigOptions, WebRtcRig};
use sluice_tests::TempDir;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Seconds of media measured per run.
const SECONDS: u64 = 10;

/// A self-signed certificate for `ip` (PEM files in `dir`) and the base64 SHA-256 of its
/// SubjectPublicKeyInfo.
fn make_cert(dir: &Path, ip: &str) -> (PathBuf, PathBuf, String) {
    use base64::Engine as _;
    let made = rcgen::generate_simple_self_signed(vec![ip.to_string()]).expect("rcgen");
    let cert = dir.join("public.crt");
    let key = dir.join("public.key");
    std::fs::write(&cert, made.cert.pem()).expect("cert");
    std::fs::write(&key, made.key_pair.serialize_pem()).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let spki = base64::engine::general_purpose::STANDARD.encode(
        ring::digest::digest(&ring::digest::SHA256, &made.key_pair.public_key_der()).as_ref(),
    );
    (cert, key, spki)
}

/// The `(local, remote)` candidate protocols of a selected pair in a `videoStats` summary.
fn protocols(stats: &Value) -> (String, String) {
    let p = &stats["pair"];
    let s = |k: &str| p[k].as_str().unwrap_or("none").to_string();
    (s("localProtocol"), s("remoteProtocol"))
}

#[test]
fn media_flows_over_ice_tcp_when_udp_is_blocked() {
    if let Some(why) = unavailable().or_else(netns::unavailable) {
        skip(&why);
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
            "SLUICE_REQUIRE_PEERS is set but the test cannot run: {why}"
        );
        return;
    }
    let chromium = std::env::var("SLUICE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let dir = TempDir::new("ice-tcp");
    let mut net = Net::new().expect("bridge");
    let bridge = net.bridge_ip();
    let (cert, key, spki) = make_cert(dir.path(), &bridge.to_string());
    let rig = WebRtcRig::start_with(
        "ice-tcp",
        &RigOptions {
            public_ip: Some(bridge.into()),
            tls: Some((cert, key)),
            ice_tcp: true,
            relay_extra: String::new(),
        },
    );
    assert!(rig.base().starts_with("https://"), "{}", rig.base());
    for (blocked, expect) in [(true, "tcp"), (false, "udp")] {
        let hosts = [
            net.add_host().expect("namespace"),
            net.add_host().expect("namespace"),
        ];
        if blocked {
            for h in &hosts {
                net.drop_udp_to(h, bridge).expect("nftables");
            }
        }
        let room = if blocked { "no-udp" } else { "udp" };
        let spec = json!({
            "mode": "relay", "base": rig.base(), "room": room, "seconds": SECONDS,
            "connectSecs": 40,
            "args": [format!("--ignore-certificate-errors-spki-list={spki}")],
            "publisher": {
                "chromium": net.chromium_wrapper(&hosts[0], dir.path(), &chromium),
                "token": rig.mint(room, "host"),
            },
            "viewers": [{
                "label": "viewer", "pages": 1,
                "chromium": net.chromium_wrapper(&hosts[1], dir.path(), &chromium),
                "token": rig.mint(room, "viewer"),
            }],
        });
        let r = run_session(dir.path(), room, &spec);
        let publisher = &r["end"]["publisher"];
        let viewer = &r["end"]["viewers"][0]["stats"];
        let frames = viewer["inbound"]["framesDecoded"].as_u64().unwrap_or(0);
        let dropped: Vec<u64> = if blocked {
            hosts
                .iter()
                .map(|h| net.udp_dropped(h).expect("counter"))
                .collect()
        } else {
            Vec::new()
        };
        eprintln!(
            "ice_tcp_e2e: UDP to the relay {}: viewer decoded {frames} frames; publisher pair \
             {}; viewer pair {}; UDP datagrams dropped per namespace {dropped:?}",
            if blocked { "blocked" } else { "open" },
            publisher["pair"],
            viewer["pair"]
        );
        let context = || format!("\n{r}\n{}", rig.control_log());
        assert!(
            frames >= SECONDS * 5,
            "viewer decoded {frames} frames{}",
            context()
        );
        for (side, stats) in [("publisher", publisher), ("viewer", viewer)] {
            assert_eq!(
                protocols(stats),
                (expect.to_string(), expect.to_string()),
                "{side}'s selected candidate pair{}",
                context()
            );
        }
        if blocked {
            assert!(
                dropped.iter().all(|&n| n > 0),
                "the UDP drop rule dropped nothing: {dropped:?}"
            );
        }
    }
}
