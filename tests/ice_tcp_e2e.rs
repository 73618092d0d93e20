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

/// A static-key session reached over ICE-TCP (docs/ICE.md "Static sessions over ICE"): the
/// session is created with `ice` and no peer (PENDING), a TCP connection nominates itself with
/// an authenticated check, and SRTP from a UDP publisher reaches it framed. Before that, a
/// connection with the session's ufrag but a wrong password and one with no credentials at all
/// get no answer and bind nothing, so a connection cannot take a session without its password.
#[test]
fn static_session_over_ice_tcp() {
    use contract::shm::Role;
    use contract::srtp::Profile;
    use sluice_tests::daemons::http_get;
    use sluice_tests::ice_tcp_peer::{admin_post, IceCreds, IceTcpPeer};
    use sluice_tests::procs::Instance;
    use sluice_tests::Peer;
    use std::time::Duration;

    let inst = Instance::new("ice-tcp-static", "mmsg", 1, None);
    let mut cfg = std::fs::read_to_string(&inst.config).expect("config");
    cfg.push_str("\n[relay.tcp]\nenabled = true\nhandshake_timeout_ms = 3000\n");
    std::fs::write(&inst.config, cfg).expect("config");
    let _control = inst.start_control();
    let relay = inst.spawn_relay(&[]);
    inst.wait_relay(&relay);
    let info = inst.runtime_info().expect("control.json");

    let profile = Profile::AeadAes128Gcm;
    let mut publisher = Peer::new(40, Role::Host, profile);
    let mut viewer = Peer::new(41, Role::Viewer, profile);
    let pid = inst.add_session(&publisher);
    let (st, created) = admin_post(
        &info.admin_url,
        &info.admin_token,
        "/v1/sessions",
        &json!({"profile": profile.name(), "rx_key": viewer.send_key.to_base64(),
                "tx_key": viewer.recv_key.to_base64(), "role": "viewer",
                "ice": {"remote_ufrag": "tcpV"}}),
    );
    assert_eq!(st, 201, "{created}");
    let sid = created["id"].as_u64().expect("id");
    let creds = IceCreds::from_created(&created);
    assert_eq!(creds.pwd.len(), 32, "a generated 192-bit password");
    inst.ctl_ok(&[
        "route",
        "add",
        "--from",
        &pid.to_string(),
        "--to",
        &sid.to_string(),
    ]);
    let session = || {
        let (st, body) = http_get(
            &format!("{}/v1/sessions/{sid}", info.admin_url),
            Some(&info.admin_token),
        );
        assert_eq!(st, 200, "{body}");
        serde_json::from_str::<Value>(&body).expect("session JSON")
    };
    let s = session();
    let pending = |s: &Value| s["flags"].as_u64().expect("flags") & 2 != 0;
    assert!(pending(&s), "created PENDING: {s}");
    assert!(
        s["ice"]["pwd"].is_null(),
        "the password is shown only at creation: {s}"
    );
    assert_eq!(s["ice"]["ufrag"], creds.ufrag.as_str());

    // Without the password: a wrong MESSAGE-INTEGRITY, then a check with no credentials.
    let mut intruder = IceTcpPeer::connect(inst.media);
    let wrong = "x".repeat(32);
    for _ in 0..3 {
        assert_eq!(
            intruder.check(&creds, &wrong, true, Duration::from_millis(700)),
            None,
            "a check with a wrong password is not answered"
        );
    }
    let mut anonymous = IceTcpPeer::connect(inst.media);
    let bare = sluice_tests::ice_tcp_peer::binding_check([9; 12], "", "", false);
    let _ = anonymous.send_frame(&bare[..20]);
    assert_eq!(anonymous.recv_frame(Duration::from_secs(1)), None);
    assert_eq!(session()["peer"], "0.0.0.0:0", "nothing bound the session");

    // The peer with the password binds its connection.
    let mut tcp = IceTcpPeer::connect(inst.media);
    let mapped = tcp.nominate(&creds, Duration::from_secs(20));
    assert_eq!(
        mapped,
        tcp.stream.local_addr().expect("local"),
        "XOR-MAPPED-ADDRESS"
    );
    let want = format!("tcp:{mapped}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while session()["peer"] != want.as_str() {
        assert!(std::time::Instant::now() < deadline, "bound: {}", session());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!pending(&session()), "bound and no longer PENDING");

    const N: u16 = 300;
    let payload = [0x5au8; 400];
    let mut got = std::collections::BTreeSet::new();
    for seq in 0..N {
        publisher.send_rtp(inst.media, 0x7c9, seq, &payload);
        if seq % 50 == 49 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    while got.len() < usize::from(N) {
        let Some(mut f) = tcp.recv_frame(Duration::from_secs(10)) else {
            break;
        };
        if f.first().is_some_and(|b| b >> 6 == 2) {
            let n = f.len();
            let m = viewer.recv.unprotect_rtp(&mut f, n).expect("decrypts");
            assert_eq!(&f[12..m], &payload[..]);
            got.insert(u16::from_be_bytes([f[2], f[3]]));
        }
    }
    assert_eq!(
        got.len(),
        usize::from(N),
        "every packet arrived over ICE-TCP"
    );
    // The intruder's connection never got a binding success: closed at the handshake timeout.
    assert_eq!(intruder.recv_frame(Duration::from_secs(6)), None);
    assert_eq!(
        session()["peer"],
        want.as_str(),
        "still bound to the real peer"
    );
}

/// `sluice-bench run --transport tcp` against the real daemons (two workers, so datagrams for
/// the subscribers' connections also cross from the other worker through the hub): every
/// publisher and subscriber is an ICE-TCP connection bound to its static session, and every
/// packet sent arrives, decrypted, at every subscriber.
#[test]
fn bench_runs_over_ice_tcp() {
    use sluice_tests::daemons::Proc;
    use sluice_tests::procs::Instance;
    use std::time::Duration;

    let inst = Instance::new("ice-tcp-bench", "mmsg", 2, None);
    let mut cfg = std::fs::read_to_string(&inst.config).expect("config");
    cfg.push_str("\n[relay.tcp]\nenabled = true\n");
    std::fs::write(&inst.config, cfg).expect("config");
    let _control = inst.start_control();
    let relay = inst.spawn_relay(&[]);
    inst.wait_relay(&relay);
    let report = inst.dir.path().join("bench.json");
    let mut c = inst.command("sluice-bench");
    c.args([
        "run",
        "--transport",
        "tcp",
        "--publishers",
        "2",
        "--fanout",
        "3",
    ])
    .args(["--rate", "400", "--duration", "2", "--size", "1000"])
    .args(["--quiet", "--drain-ms", "5000", "--json"])
    .arg(&report);
    let mut bench = Proc::spawn(
        "sluice-bench",
        c,
        inst.dir.path(),
        std::process::Stdio::null(),
    );
    let code = bench.wait(Duration::from_secs(120));
    assert!(
        code.is_some_and(|c| c.success()),
        "sluice-bench: {code:?}\n{}",
        bench.log_text()
    );
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    let r = &v["result"];
    eprintln!("ice_tcp_e2e: bench over ICE-TCP: {r}");
    assert_eq!(v["config"]["transport"], "tcp");
    assert!(r["expected"].as_u64().is_some_and(|n| n >= 2000), "{r}");
    assert_eq!(r["delivered"]["packets"], r["expected"], "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["auth_failures"], 0, "{r}");
    assert_eq!(r["misrouted"], 0, "{r}");
    assert!(
        r["latency"]["p99_us"].as_f64().is_some_and(|us| us > 0.0),
        "{r}"
    );
}
