//! WebRTC end to end with a real browser: the real `sluice-control` and `sluice-relay` on a
//! temporary config; headless Chromium (driven by tests/webrtc/browser.mjs through
//! playwright-core) publishes its fake camera and microphone through WHIP from one page and
//! watches the room through WHEP from another, whose `<video>` must present 30 frames.
//! Chromium's own ICE, DTLS (its BoringSSL ClientHello, fragmented or not) and SRTP stack
//! meet control's ICE-lite agent and DTLS endpoint on the slow path; the media crosses the
//! relay's fast path, which the relay's counters must show (datagrams sent beyond the
//! slow-path replies, no SRTP authentication failures).
//!
//! Needs `/usr/bin/chromium` (`apt-get install chromium`; `SLUICE_CHROMIUM` names another
//! binary), Node and `npm ci --prefix tests/webrtc` (playwright-core only, no browser
//! download). Without them the test prints `SKIP: <why>` and passes, unless
//! `SLUICE_REQUIRE_PEERS` is set. Two runs: Chromium's default handshake and one with the
//! post-quantum key share whose ClientHello spans two datagrams (see [`CASES`]).

use sluice_tests::daemons::Proc;
use sluice_tests::webrtc_rig::{browser_result, script_dir, unavailable, WebRtcRig};
use std::process::Command;
use std::time::{Duration, Instant};

/// Frames the watcher's `<video>` must present.
const FRAMES: u32 = 30;
/// Seconds the browser script may wait for the publisher to connect and for the frames.
const BROWSER_TIMEOUT_SECS: u64 = 40;
/// Browser runs, each in its own room, with the Chromium field trials they set.
/// - `default`: Chromium 148 offers DTLS 1.3 and 1.2 (`supported_versions` fefc, fefd) with an
///   X25519 key share, a 191-byte ClientHello in one datagram; Sluice answers DTLS 1.2.
/// - `pq-fragmented`: with `WebRTC-EnableDtlsPqc` it adds an X25519MLKEM768 key share, and
///   its 1413-byte ClientHello is fragmented over two datagrams (1175 + 238 bytes of
///   fragment, RFC 6347 §4.2.3), as later Chromium releases send by default (issue 5): control
///   must reassemble it and fall back to DTLS 1.2.
///
/// (Datagram sizes and offered versions as captured on loopback with Chromium 148.)
const CASES: [(&str, Option<&str>); 2] = [
    ("default", None),
    ("pq-fragmented", Some("WebRTC-EnableDtlsPqc/Enabled/")),
];

/// The value of an unlabelled (or exactly labelled) Prometheus sample.
fn metric(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name_and_labels).then(|| v.parse::<f64>().ok())?
        })
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("metric {name_and_labels} missing"))
}

#[test]
fn chromium_publishes_through_whip_and_watches_through_whep() {
    if let Some(why) = unavailable() {
        sluice_tests::skip::skip(&why);
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
            "SLUICE_REQUIRE_PEERS is set but the browser cannot run: {why}"
        );
        return;
    }
    let started = Instant::now();
    let mut rig = WebRtcRig::start("chromium-e2e");
    let admin = rig.admin.clone();

    // Control has no separate public listener here: WHIP/WHEP are on the admin one.
    let base = format!("http://{admin}");
    let mut summaries = Vec::new();
    for (i, (case, trials)) in CASES.iter().enumerate() {
        let room = format!("chromium{i}");
        let pub_token = rig.mint(&room, "host");
        let view_token = rig.mint(&room, "viewer");
        let mut cmd = Command::new("node");
        cmd.arg(script_dir().join("browser.mjs"))
            .args(["run", &base, &pub_token, &view_token, &room])
            .arg(FRAMES.to_string())
            .arg(BROWSER_TIMEOUT_SECS.to_string())
            .current_dir(script_dir());
        if let Some(t) = trials {
            cmd.arg(t);
        }
        let case_started = Instant::now();
        let mut browser = Proc::spawn_lines("chromium", cmd, rig.dir());
        let (result, status) = browser_result(
            &mut browser,
            Duration::from_secs(BROWSER_TIMEOUT_SECS * 2 + 30),
        );
        let context = || {
            let (_, metrics) = rig.http("GET", "/metrics", "");
            format!(
                "\n[case {case}]\n{}\n{}\n--- metrics ---\n{}",
                browser.log_text(),
                rig.control_log(),
                metrics
                    .lines()
                    .filter(|l| !l.starts_with('#')
                        && (l.contains("dtls") || l.contains("ice") || l.contains("relay_")))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        };
        let result = result.unwrap_or_else(|| panic!("no RESULT from the browser{}", context()));
        eprintln!("chromium_e2e [{case}]: {result}");
        for side in ["publisher", "watcher"] {
            assert_eq!(
                result[side]["transport"]["dtlsState"],
                "connected",
                "{side}'s DTLS transport{}",
                context()
            );
        }
        let frames = result["frames"].as_u64().unwrap_or(0);
        assert!(
            frames >= u64::from(FRAMES),
            "the watcher's <video> presented only {frames} frames{}",
            context()
        );
        // Opus crossed too, on its own route in the same bundle.
        let audio = result["watcher"]["inbound"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["kind"] == "audio"))
            .and_then(|s| s["packetsReceived"].as_u64())
            .unwrap_or(0);
        assert!(
            audio > 0,
            "no Opus packets reached the watcher{}",
            context()
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "browser script: {status:?}{}",
            context()
        );
        let t = &result["watcher"]["transport"];
        summaries.push(format!(
            "[{case}] {frames} frames in {:.1} s, DTLS {} {}, SRTP {}",
            case_started.elapsed().as_secs_f64(),
            t["tlsVersion"].as_str().unwrap_or("?"),
            t["dtlsCipher"].as_str().unwrap_or("?"),
            t["srtpCipher"].as_str().unwrap_or("?"),
        ));
        summaries.push(format!("  {}", result["userAgent"]));
    }
    let (_, metrics) = rig.http("GET", "/metrics", "");
    rig.stop();

    // The media took the fast path: the relay's engine forwarded SRTP (its tx counter counts
    // forwarded datagrams; slow-path replies are counted apart), and no SRTP packet failed
    // authentication (the keys control exported match Chromium's).
    let tx = metric(&metrics, "sluice_relay_tx_packets_total");
    let slow_down = metric(&metrics, "sluice_relay_slow_path_down_total");
    let auth_failed = metric(&metrics, "sluice_relay_drops_total{reason=\"auth_failed\"}");
    assert!(
        tx > slow_down,
        "relay sent {tx} datagrams, {slow_down} of them slow-path replies"
    );
    assert_eq!(auth_failed, 0, "SRTP authentication failures");
    assert!(
        slow_down > 0,
        "control's ICE and DTLS answers left through the relay and were counted"
    );
    eprintln!(
        "chromium_e2e: WHIP → relay → WHEP with Chromium in {:.1} s; relay tx {tx}\n{}",
        started.elapsed().as_secs_f64(),
        summaries.join("\n")
    );
}

/// Watcher layouts (kinds of their recvonly transceivers in m-line order) that each must
/// decode the same publisher: RFC 8843 §15 MID values differ from the publisher's whenever
/// the m-line orders differ, and receivers pick the transceiver by MID (issue: video
/// delivered to the audio receiver and back, 0 frames, no error).
const LAYOUTS: &str = "video+audio,audio+video,video,audio";

#[test]
fn chromium_watchers_in_any_m_line_order_decode() {
    if let Some(why) = unavailable() {
        sluice_tests::skip::skip(&why);
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
            "SLUICE_REQUIRE_PEERS is set but the browser cannot run: {why}"
        );
        return;
    }
    let mut rig = WebRtcRig::start("chromium-layouts");
    let base = format!("http://{}", rig.admin);
    let room = "layouts";
    let pub_token = rig.mint(room, "host");
    let view_token = rig.mint(room, "viewer");
    let mut cmd = Command::new("node");
    cmd.arg(script_dir().join("browser.mjs"))
        .args(["layouts", &base, &pub_token, &view_token, room])
        .arg(FRAMES.to_string())
        .arg(BROWSER_TIMEOUT_SECS.to_string())
        .arg(LAYOUTS)
        .current_dir(script_dir());
    let mut browser = Proc::spawn_lines("chromium", cmd, rig.dir());
    let (result, status) = browser_result(
        &mut browser,
        Duration::from_secs(BROWSER_TIMEOUT_SECS * 2 + 30),
    );
    let context = format!("\n{}\n{}", browser.log_text(), rig.control_log());
    rig.stop();
    let result = result.unwrap_or_else(|| panic!("no RESULT from the browser{context}"));
    let watchers = result["watchers"].as_array().cloned().unwrap_or_default();
    assert_eq!(watchers.len(), 4, "{result}{context}");
    for w in &watchers {
        let layout = w["layout"].as_str().unwrap_or("?");
        if layout.contains("video") {
            let frames = w["frames"].as_u64().unwrap_or(0);
            assert!(
                frames >= u64::from(FRAMES),
                "watcher {layout}: {frames} video frames\n{w}{context}"
            );
        }
        if layout.contains("audio") {
            let samples = w["samples"].as_f64().unwrap_or(0.0);
            assert!(
                samples > 0.0,
                "watcher {layout}: no audio samples decoded\n{w}{context}"
            );
        }
        eprintln!(
            "chromium layouts [{layout}]: {} frames, {} audio samples",
            w["frames"], w["samples"]
        );
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "browser: {status:?}{context}"
    );
}

/// The routes the admin API lists, polled while the browser driver runs; the last non-empty
/// listing is kept (the driver leaves, and its routes go, once the watcher is done).
fn run_polling_routes(
    rig: &WebRtcRig,
    browser: &mut Proc,
    timeout: Duration,
) -> (Option<serde_json::Value>, Vec<serde_json::Value>) {
    let mut result = None;
    let mut routes = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut next_poll = Instant::now();
    while Instant::now() < deadline {
        if Instant::now() >= next_poll {
            let (st, body) = rig.http("GET", "/v1/routes", "");
            if st == 200 {
                let listed: Vec<serde_json::Value> =
                    serde_json::from_str(&body).unwrap_or_default();
                if !listed.is_empty() {
                    routes = listed;
                }
            }
            next_poll = Instant::now() + Duration::from_millis(500);
        }
        match browser.line(Duration::from_millis(100)) {
            Some(l) => {
                if let Some(json) = l.strip_prefix("RESULT ") {
                    result = serde_json::from_str::<serde_json::Value>(json).ok();
                }
            }
            None if browser.poll().is_some() => break,
            None => {}
        }
    }
    (result, routes)
}

/// A Chromium publisher and viewer negotiate RTX (RFC 4588) with the relay: the publisher's
/// video route carries its RTX stream (`source_rtx`, the FID partner of its SSRC) and the
/// viewer's RTX stream (`rtx`, the relay's RTX SSRC and the viewer's `apt`-bound payload
/// type); every route numbers transport-wide sequence numbers under the viewer's id (both
/// sides negotiated the extension); audio has no RTX; and the viewer decodes.
#[test]
fn chromium_negotiates_rtx_and_transport_cc() {
    if let Some(why) = unavailable() {
        sluice_tests::skip::skip(&why);
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
            "SLUICE_REQUIRE_PEERS is set but the browser cannot run: {why}"
        );
        return;
    }
    let mut rig = WebRtcRig::start("chromium-rtx");
    let base = format!("http://{}", rig.admin);
    let room = "rtx";
    let pub_token = rig.mint(room, "host");
    let view_token = rig.mint(room, "viewer");
    let mut cmd = Command::new("node");
    cmd.arg(script_dir().join("browser.mjs"))
        .args(["run", &base, &pub_token, &view_token, room])
        .arg(FRAMES.to_string())
        .arg(BROWSER_TIMEOUT_SECS.to_string())
        .current_dir(script_dir());
    let mut browser = Proc::spawn_lines("chromium", cmd, rig.dir());
    let (result, routes) = run_polling_routes(
        &rig,
        &mut browser,
        Duration::from_secs(BROWSER_TIMEOUT_SECS * 2 + 30),
    );
    let status = browser.wait(Duration::from_secs(20));
    let context = format!(
        "\nroutes: {}\n{}\n{}",
        serde_json::Value::Array(routes.clone()),
        browser.log_text(),
        rig.control_log()
    );
    rig.stop();
    let result = result.unwrap_or_else(|| panic!("no RESULT from the browser{context}"));
    let frames = result["frames"].as_u64().unwrap_or(0);
    assert!(
        frames >= u64::from(FRAMES),
        "the watcher decoded only {frames} frames{context}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "browser: {status:?}{context}"
    );
    assert_eq!(routes.len(), 2, "one audio and one video route{context}");
    let rtx_of = |r: &serde_json::Value, k: &str| -> Option<(u64, u64)> {
        let x = &r["rewrite"][k];
        Some((x["payload_type"].as_u64()?, x["ssrc"].as_u64()?))
    };
    let video: Vec<&serde_json::Value> = routes
        .iter()
        .filter(|r| !r["rewrite"]["source_rtx"].is_null())
        .collect();
    assert_eq!(
        video.len(),
        1,
        "the video route names the publisher's RTX{context}"
    );
    let v = video[0];
    let (src_pt, src_ssrc) = rtx_of(v, "source_rtx").expect("source_rtx");
    assert_ne!(
        Some(src_ssrc),
        v["ssrc"].as_u64(),
        "RTX on its own SSRC{context}"
    );
    assert!(src_pt <= 127);
    let (rtx_pt, rtx_ssrc) = rtx_of(v, "rtx").unwrap_or_else(|| panic!("no rtx{context}"));
    assert!(rtx_pt <= 127);
    assert_ne!(Some(rtx_ssrc), v["rewrite"]["ssrc"].as_u64(), "{context}");
    let mapped: Vec<u64> = v["rewrite"]["pt_map"]
        .as_array()
        .map(|m| m.iter().filter_map(|p| p[1].as_u64()).collect())
        .unwrap_or_default();
    assert!(
        !mapped.contains(&rtx_pt),
        "the viewer's RTX type is not a media type{context}"
    );
    // Both sides negotiated the transport-wide extension (the relay sends the publisher
    // transport-cc feedback, tests/chromium_twcc.rs): every route numbers the viewer's
    // packets under the viewer's id.
    for r in &routes {
        assert!(
            r["rewrite"]["twcc_id"]
                .as_u64()
                .is_some_and(|id| (1..=14).contains(&id)),
            "transport-wide numbering towards the viewer: {r}{context}"
        );
    }
    let audio = routes
        .iter()
        .find(|r| r["rewrite"]["source_rtx"].is_null())
        .expect("audio route");
    assert!(
        audio["rewrite"]["rtx"].is_null(),
        "no RTX for Opus{context}"
    );
    eprintln!(
        "chromium rtx: {frames} frames; video route source_rtx {src_pt}/{src_ssrc}, \
         rtx {rtx_pt}/{rtx_ssrc}, twcc {}",
        v["rewrite"]["twcc_id"]
    );
}
