//! Transport-cc feedback to a WHIP publisher, with real Chromium on both sides: the real
//! `sluice-control` and `sluice-relay`; headless Chromium publishes its fake camera and
//! microphone through WHIP (its answer keeps the transport-wide sequence extension and
//! `transport-cc`), another Chromium watches through WHEP. The relay records the publisher's
//! transport-wide numbers and sends it transport-cc feedback (docs/ENGINE.md "Bandwidth
//! estimation"), which Chromium's send-side estimator runs on. Before the relay wrote that
//! feedback, a publisher that negotiated the extension heard nothing back and throttled itself
//! to 59 kbit/s; here its estimate (`availableOutgoingBitrate` of the selected candidate pair)
//! must exceed 300 kbit/s and its video must leave at well above 59 kbit/s, while the viewer
//! decodes.
//!
//! Needs `/usr/bin/chromium`, Node and `npm ci --prefix tests/webrtc` (tests/chromium_e2e.rs);
//! without them the test prints `SKIP: <why>` and passes, unless `SLUICE_REQUIRE_PEERS` is
//! set.

use serde_json::{json, Value};
use sluice_tests::webrtc_rig::{run_session, unavailable, WebRtcRig};

/// Seconds of `getStats()` once the viewer decodes.
const SECONDS: u64 = 20;
/// The publisher's estimate must exceed this (bit/s).
const MIN_ESTIMATE: f64 = 300_000.0;
/// Its video must leave at more than this over the last 10 s (bit/s): four times the rate the
/// throttled publisher held.
const MIN_VIDEO_BPS: f64 = 240_000.0;

/// A per-worker feedback counter summed over the workers.
fn feedback_total(text: &str, event: &str) -> u64 {
    let tail = format!(",event=\"{event}\"}}");
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k.starts_with("sluice_feedback_total{") && k.ends_with(&tail))
                .then(|| v.parse::<f64>().ok())?
        })
        .map(|v| v as u64)
        .sum()
}

#[test]
fn chromium_publisher_gets_transport_cc_feedback() {
    if let Some(why) = unavailable() {
        sluice_tests::skip::skip(&why);
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
            "SLUICE_REQUIRE_PEERS is set but the browser cannot run: {why}"
        );
        return;
    }
    let chromium = std::env::var("SLUICE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut rig = WebRtcRig::start("chromium-twcc");
    let room = "twcc";
    let spec = json!({
        "mode": "relay", "base": rig.base(), "room": room, "seconds": SECONDS, "connectSecs": 30,
        "publisher": { "chromium": chromium, "token": rig.mint(room, "host") },
        "viewers": [{ "label": "viewer", "chromium": chromium, "pages": 1,
                      "tokens": [rig.mint_for(room, "viewer", "twcc-viewer")] }],
    });
    let r = run_session(rig.dir(), "chromium-twcc", &spec);
    let (_, metrics) = rig.http("GET", "/metrics", "");
    let twcc_sent = feedback_total(&metrics, "twcc_sent");
    let context = || {
        format!(
            "\nresult: {r}\n--- control log ---\n{}\n--- metrics (feedback) ---\n{}",
            rig.control_log(),
            metrics
                .lines()
                .filter(|l| l.contains("feedback_total") || l.contains("drops_total"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    };

    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let end = &r["end"];
    let estimate = f(&end["publisher"]["pair"]["availableOutgoingBitrate"]);
    let series: Vec<f64> = (r["series"]["publisherBytesSent"].as_array())
        .map(|a| a.iter().map(f).collect())
        .unwrap_or_default();
    let n = series.len();
    let video_bps = if n > 10 {
        (series[n - 1] - series[n - 11]) * 8.0 / 10.0
    } else {
        0.0
    };
    let decoded = |s: &Value| f(&s["viewers"][0]["stats"]["inbound"]["framesDecoded"]);
    let frames = decoded(end) - decoded(&r["start"]);
    eprintln!(
        "chromium_twcc: publisher availableOutgoingBitrate {estimate:.0} bit/s, video {video_bps:.0} bit/s over the last 10 s, viewer decoded {frames} frames, twcc_sent {twcc_sent}, publisher {}",
        end["publisher"]["outbound"]
    );
    assert!(
        r["ready"].as_bool() == Some(true),
        "the viewer never decoded{}",
        context()
    );
    assert!(
        twcc_sent > 0,
        "the relay sent the publisher no transport-cc feedback{}",
        context()
    );
    assert!(
        estimate > MIN_ESTIMATE,
        "publisher estimate {estimate} bit/s, want > {MIN_ESTIMATE}{}",
        context()
    );
    assert!(
        video_bps > MIN_VIDEO_BPS,
        "publisher video {video_bps} bit/s, want > {MIN_VIDEO_BPS}{}",
        context()
    );
    assert!(
        frames > 0.0,
        "the viewer decoded nothing while measured{}",
        context()
    );
    rig.stop();
}
