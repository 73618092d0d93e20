//! Keyframe requests follow what the publisher takes (issue: "any WHEP player, any
//! publisher"): an aiortc publisher that only understands PLI (its FIR handling switched
//! off, as in stacks without `ccm fir`) publishes through WHIP; an aiortc viewer that asks for
//! every keyframe with a FIR and never a PLI (as GStreamer's webrtcbin does when FIR is
//! offered) watches through WHEP. The relay turns each FIR into a PLI for this publisher, so
//! the viewer starts decoding at all, and each later FIR brings a keyframe within a second.
//! Real processes: `sluice-relay`, `sluice-control`, two aiortc peers; loopback only.

use sluice_tests::aiortc;
use sluice_tests::webrtc_rig::WebRtcRig;

/// FIRs the viewer sends once it decodes, each timed to the next keyframe's arrival.
const REQUESTS: usize = 3;

#[test]
fn fir_from_the_viewer_reaches_a_pli_only_publisher_as_pli() {
    if !aiortc::available() {
        return;
    }
    let mut rig = WebRtcRig::start("keyframe-e2e");
    let base = format!("http://{}", rig.admin);
    let pub_token = rig.mint("kf", "host");
    let view_token = rig.mint("kf", "viewer");
    let (mut publisher, pub_rx) = aiortc::spawn(
        &[
            "publish-pli-only",
            &format!("{base}/whip/kf"),
            &pub_token,
            "40",
        ],
        "whip",
    );
    assert!(
        pub_rx
            .iter()
            .take_while(|l| !l.starts_with("answer"))
            .all(|l| !l.is_empty()),
        "publisher got no answer"
    );
    let (mut watcher, view_rx) = aiortc::spawn(
        &[
            "watch-fir",
            &format!("{base}/whep/kf"),
            &view_token,
            &REQUESTS.to_string(),
            "25",
        ],
        "whep",
    );
    let status = watcher.wait().expect("wait watcher");
    let view_lines: Vec<String> = view_rx.iter().collect();
    let (_, metrics) = rig.http("GET", "/metrics", "");
    let _ = publisher.kill();
    let _ = publisher.wait();
    rig.stop();
    let requests: Vec<String> = pub_rx.try_iter().collect();
    let latencies: Vec<f64> = view_lines
        .iter()
        .filter_map(|l| l.strip_prefix("keyframe_after_ms="))
        .filter_map(|v| v.parse().ok())
        .collect();
    let translated: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("sluice_feedback_total{") && l.contains("event=\"keyframe_translated\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!(
        "keyframe_e2e: FIR→keyframe latencies {latencies:?} ms; publisher saw {requests:?}; \
         keyframe_translated {translated}"
    );
    assert!(
        status.success(),
        "the FIR-preferring viewer did not get its keyframes ({status}): {view_lines:?}"
    );
    assert_eq!(latencies.len(), REQUESTS, "{view_lines:?}");
    assert!(
        latencies.iter().all(|&ms| ms < 1000.0),
        "a keyframe came later than 1 s after its FIR: {latencies:?}"
    );
    assert!(
        requests.iter().any(|l| l == "keyframe_request=pli"),
        "the publisher never got a PLI: {requests:?}"
    );
    assert!(
        !requests.iter().any(|l| l == "keyframe_request=fir"),
        "a FIR reached the PLI-only publisher: {requests:?}"
    );
    assert!(
        translated >= REQUESTS as f64,
        "keyframe_translated = {translated}"
    );
}
