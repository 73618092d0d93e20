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

use sluice_tests::aiortc;
use sluice_tests::webrtc_rig::WebRtcRig;
use std::time::{Duration, Instant};

/// Frames the watcher must decode.
const FRAMES: u32 = 30;

#[test]
fn aiortc_publishes_through_whip_and_watches_through_whep() {
    if !aiortc::available() {
        return;
    }
    let started = Instant::now();
    let mut rig = WebRtcRig::start("webrtc-e2e");
    let admin = rig.admin.clone();

    let base = format!("http://{admin}");
    let pub_token = rig.mint("e2e", "host");
    let view_token = rig.mint("e2e", "viewer");
    let (mut publisher, pub_rx) = aiortc::spawn(
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
    let (mut watcher, view_rx) = aiortc::spawn(
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
    let (st, rooms) = rig.http("GET", "/v1/rooms/demo/e2e", "");

    // A moderator removes the publisher through the admin API: a second watcher that was
    // receiving stops receiving.
    let view_token2 = rig.mint("e2e", "viewer");
    let (mut watcher2, view2_rx) = aiortc::spawn(
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
    // aiortc offers no transport-wide extension: no numbering. Its watcher offers RTX (with
    // its default codecs), so the second watcher's video route names the relay's RTX stream
    // towards it; the publisher (codec preferences: VP8 alone) offers none, so no route names
    // a publisher RTX stream.
    let (_, routes) = rig.http("GET", "/v1/routes", "");
    let routes: Vec<serde_json::Value> = serde_json::from_str(&routes).expect("routes json");
    let room: serde_json::Value =
        serde_json::from_str(&rig.http("GET", "/v1/rooms/demo/e2e", "").1).expect("room json");
    let publisher_session = room["members"]
        .as_array()
        .and_then(|m| m.iter().find(|x| x["kind"] == "whip"))
        .and_then(|x| x["session"].as_u64())
        .expect("the publisher is a member");
    let (del, del_body) = rig.http("DELETE", &format!("/v1/sessions/{publisher_session}"), "");
    let stalled = watcher2.wait().expect("wait watcher 2");
    let _ = publisher.kill();
    let _ = publisher.wait();
    let (_, metrics) = rig.http("GET", "/metrics", "");
    rig.stop();
    assert_eq!(st, 200, "{rooms}");
    assert!(!routes.is_empty(), "the watcher's routes are listed");
    assert!(
        routes.iter().all(|r| r["rewrite"]["twcc_id"].is_null()),
        "aiortc negotiated no transport-wide numbering: {routes:?}"
    );
    let video: Vec<&serde_json::Value> = routes
        .iter()
        .filter(|r| !r["rewrite"]["rtx"].is_null())
        .collect();
    assert!(
        !video.is_empty(),
        "the viewer's RTX on the video route: {routes:?}"
    );
    assert!(
        routes.iter().all(|r| r["rewrite"]["source_rtx"].is_null()),
        "the publisher offered no RTX: {routes:?}"
    );
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
