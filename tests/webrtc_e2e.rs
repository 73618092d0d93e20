//! WebRTC end to end with an independent implementation: the real `sluice-relay` and
//! `sluice-control` binaries on a temporary config; an aiortc peer (tests/webrtc/peer.py)
//! publishes a synthetic VP8 track and an Opus track through WHIP and another watches
//! through WHEP and must decode video and audio frames; then a moderator removes the
//! publisher through the admin API and a second watcher's media stops. The media crosses the relay's fast path (DTLS-SRTP keys exported by
//! control into shm); ICE and DTLS cross the slow path.
//!
//! Needs Python with aiortc (`pip install aiortc`); without it the test prints
//! `SKIP: aiortc not installed (pip install aiortc)` and passes. `SLUICE_PYTHON` names the
//! interpreter (default `python3`).

use sluice_tests::daemons::{bin, Proc};
use sluice_tests::{free_udp_port, TempDir};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "webrtc-e2e-admin-token-0123456789";
/// Frames the watcher must decode.
const FRAMES: u32 = 30;

fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("webrtc/peer.py")
}

fn aiortc_available() -> bool {
    Command::new(python())
        .arg(peer_script())
        .arg("check")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

fn mint(admin: &str, room: &str, role: &str) -> String {
    let (st, body) = http(
        admin,
        "POST",
        "/v1/tokens",
        &format!(r#"{{"app":"demo","room":"{room}","role":"{role}","ttl_secs":600}}"#),
    );
    assert_eq!(st, 201, "mint: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["token"].as_str().expect("token").to_string()
}

fn spawn_peer(args: &[&str], tag: &'static str) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(python())
        .arg(peer_script())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn python peer");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

#[test]
fn aiortc_publishes_through_whip_and_watches_through_whep() {
    if !aiortc_available() {
        eprintln!("SKIP: aiortc not installed (pip install aiortc)");
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
            "SLUICE_REQUIRE_PEERS is set but aiortc is not importable"
        );
        return;
    }
    let started = Instant::now();
    let dir = TempDir::new("webrtc");
    let d = dir.path();
    let shm = PathBuf::from(format!("/dev/shm/sluice-webrtc-e2e-{}", std::process::id()));
    let _ = std::fs::remove_file(&shm);
    let port = free_udp_port();
    let cfg = d.join("sluice.toml");
    std::fs::write(
        &cfg,
        format!(
            "runtime_dir = \"{d}/run\"\n\
             [relay]\nbind = \"127.0.0.1:{port}\"\nworkers = 1\n\
             [control]\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
             state_dir = \"{d}/state\"\naudit_log = \"{d}/log/audit.log\"\n\
             bootstrap_app = \"demo\"\npublic_addresses = [\"127.0.0.1\"]\n\
             [shm]\npath = \"{s}\"\nsessions = 16\nroutes = 64\nworker_slots = 4\n",
            d = d.display(),
            s = shm.display()
        ),
    )
    .expect("config");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let mut cmd = Command::new(bin("sluice-control"));
    cmd.arg("--config").arg(&cfg).env_remove("NOTIFY_SOCKET");
    let control = Proc::spawn("sluice-control", cmd, d, Stdio::null());
    let rt = d.join("run/control.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    let info: serde_json::Value = loop {
        if let Some(v) = std::fs::read(&rt)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            break v;
        }
        assert!(Instant::now() < deadline, "control did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    };
    let admin = info["admin_url"]
        .as_str()
        .and_then(|u| u.strip_prefix("http://"))
        .expect("admin url")
        .to_string();
    let mut cmd = Command::new(bin("sluice-relay"));
    cmd.arg("--config").arg(&cfg);
    let relay = Proc::spawn("sluice-relay", cmd, d, Stdio::null());

    let base = format!("http://{admin}");
    let pub_token = mint(&admin, "e2e", "host");
    let view_token = mint(&admin, "e2e", "viewer");
    let (mut publisher, pub_rx) = spawn_peer(
        &["publish", &format!("{base}/whip/e2e"), &pub_token, "40"],
        "whip",
    );
    // Publish first, so the viewer's routes are created with the publisher's SSRCs known.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match pub_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) if l.starts_with("answer") => break,
            _ => {}
        }
        assert!(Instant::now() < deadline, "publisher got no answer");
    }
    let (mut watcher, view_rx) = spawn_peer(
        &[
            "watch",
            &format!("{base}/whep/e2e"),
            &view_token,
            &FRAMES.to_string(),
            "30",
        ],
        "whep",
    );
    let status = watcher.wait().expect("wait watcher");
    // "frames=N audio_frames=M": Opus rode the same bundle with its own route.
    let audio_frames: u64 = view_rx
        .iter() // ends when the reader thread sees EOF
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("audio_frames="))
                .and_then(|n| n.parse().ok())
        })
        .last()
        .unwrap_or(0);
    let (st, rooms) = http(&admin, "GET", "/v1/rooms/demo/e2e", "");

    // A moderator removes the publisher through the admin API: a second watcher that was
    // receiving stops receiving.
    let view_token2 = mint(&admin, "e2e", "viewer");
    let (mut watcher2, view2_rx) = spawn_peer(
        &[
            "watch",
            &format!("{base}/whep/e2e"),
            &view_token2,
            "10",
            "25",
            "2",
        ],
        "whep2",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready = false;
    while Instant::now() < deadline && !ready {
        if let Ok(l) = view2_rx.recv_timeout(Duration::from_millis(200)) {
            ready = l == "ready";
        }
    }
    let room: serde_json::Value =
        serde_json::from_str(&http(&admin, "GET", "/v1/rooms/demo/e2e", "").1).expect("room json");
    let publisher_session = room["members"]
        .as_array()
        .and_then(|m| m.iter().find(|x| x["kind"] == "whip"))
        .and_then(|x| x["session"].as_u64())
        .expect("the publisher is a member");
    let (del, del_body) = http(
        &admin,
        "DELETE",
        &format!("/v1/sessions/{publisher_session}"),
        "",
    );
    let stalled = watcher2.wait().expect("wait watcher 2");
    let _ = publisher.kill();
    let _ = publisher.wait();
    let (_, metrics) = http(&admin, "GET", "/metrics", "");
    drop(relay);
    drop(control);
    let _ = std::fs::remove_file(&shm);
    assert_eq!(st, 200, "{rooms}");
    assert!(ready, "the second watcher never decoded frames");
    assert!(
        audio_frames >= 10,
        "only {audio_frames} Opus frames decoded"
    );
    assert_eq!(del, 204, "{del_body}");
    assert!(
        stalled.success(),
        "media kept flowing after the publisher was removed ({stalled})"
    );
    assert!(
        status.success(),
        "the WHEP watcher did not decode {FRAMES} frames ({status}); rooms: {rooms}\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("dtls") || l.contains("ice"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "webrtc_e2e: {FRAMES} frames decoded through WHIP → relay → WHEP in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
