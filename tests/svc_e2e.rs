//! SVC on one SSRC with real browsers (issue 17, item 3): headless Chromium publishes its
//! fake camera at 1280x720 as one VP9 (profile 0) encoding in `scalabilityMode: "L3T3_KEY"`
//! (three spatial layers, 320, 640 and 1280 wide, three temporal layers, K-SVC), and
//! separately as AV1 in the same mode, through WHIP with the Dependency Descriptor
//! extension. Two Chromium viewers watch through WHEP, each in its own browser; one PATCHes
//! its WHEP resource with `{"max_layer": 0, "max_temporal": 0}` a few seconds in and lifts
//! both caps later; the other is free. The relay forwards each viewer the frames of the
//! decode target its caps select (docs/ENGINE.md "SVC").
//!
//! Asserted: the publisher's offer and the relay's answer carry the Dependency Descriptor
//! and the sender applied the mode; the capped viewer's `frameWidth` falls to at most 320
//! within [`CAP_WITHIN`] s of its request and stays there until it lifts the caps, and its
//! `framesPerSecond` falls below half the free viewer's (T0 alone is a quarter of the frames);
//! after the lift it climbs back to the publisher's widest layer; the free viewer reaches
//! the widest layer and keeps it while the other is capped; both keep decoding, with at most
//! [`MAX_FREEZES`] freezes; the relay counted frames not sent (`svc_not_present`) and
//! decode target switches. Figures are printed (docs/BENCHMARKS.md).
//!
//! A third test publishes H.264 in `L1T3` (temporal layers only, described by the same
//! extension): the capped viewer caps `max_temporal` to 0 and its frame rate falls below half
//! the free viewer's, and comes back after the lift.
//!
//! An encoder of this Chromium build without the codec or the mode skips that codec visibly
//! (`SKIP: ...`), as does a Chromium that does not offer the extension.
//!
//! Real processes: `sluice-control`, `sluice-relay` (one worker), three Chromium processes per
//! codec, the codecs one after the other; loopback only. Without Chromium, Node or
//! playwright-core the test prints `SKIP: <why>`.

use serde_json::{json, Value};
use sluice_tests::skip::skip;
use sluice_tests::webrtc_rig::{run_session, unavailable, WebRtcRig};
use std::sync::Mutex;

/// The publisher's uplink estimate, started and floored here, so that Chromium encodes every
/// spatial layer from the start (the three of L3T3 at 720p need about 1.5 Mbit/s).
const UPLINK_KBPS: u64 = 2500;
/// Seconds of `getStats()` (one sample a second).
const SECONDS: u64 = 55;
/// When the capped viewer asks for spatial and temporal layer 0, and when it lifts the caps.
const CAP_AT: u64 = 5;
const LIFT_AT: u64 = 35;
/// How long a cap or a lift may take to show in the viewer's frame width (a switch down is at
/// once in L3T3 modes but waits for a key frame in K-SVC ones, asked for with a PLI; plus the
/// receiver's own adaptation), generous for a loaded 2-core machine.
const CAP_WITHIN: u64 = 15;
/// Freezes (Chromium's `freezeCount`) a viewer may see over the run, switches included.
const MAX_FREEZES: u64 = 4;

/// One codec's browsers at a time: three Chromium processes are what the machine carries.
static BROWSERS: Mutex<()> = Mutex::new(());

fn series(r: &Value, key: &str, viewer: usize) -> Vec<f64> {
    r["series"][key][viewer]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect())
        .unwrap_or_default()
}

fn metric_sum(metrics: &str, family: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(family) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn svc_through_whip(codec: &str) {
    if let Some(why) = unavailable() {
        skip(&why);
        return;
    }
    let _one = BROWSERS.lock().unwrap_or_else(|e| e.into_inner());
    let tag = format!("svc-{}", codec.to_ascii_lowercase());
    let rig = WebRtcRig::start(&tag);
    let room = "svc";
    let chromium = std::env::var("SLUICE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let spec = json!({
        "mode": "relay", "base": rig.base(), "room": room, "seconds": SECONDS, "connectSecs": 40,
        "publisher": { "chromium": chromium, "token": rig.mint(room, "host"),
                       "svc": { "codec": codec, "scalabilityMode": "L3T3_KEY" },
                       "minBitrateKbps": UPLINK_KBPS },
        "viewers": [
            { "label": "free", "chromium": chromium, "token": rig.mint_for(room, "viewer", "free"),
              "dd": true },
            { "label": "capped", "chromium": chromium, "token": rig.mint_for(room, "viewer", "capped"),
              "dd": true,
              "layerPlan": [ { "at": CAP_AT, "max": 0, "temporal": 0 },
                             { "at": LIFT_AT, "max": null, "temporal": null } ] },
        ],
    });
    let r = run_session(rig.dir(), &tag, &spec);
    if let Some(why) = r["unsupported"].as_str() {
        skip(format!("{codec} L3T3_KEY: Chromium's encoder here: {why}"));
        return;
    }
    let info = &r["svc"];
    if info["ddOffered"] != json!(true) {
        skip(format!(
            "{codec}: Chromium did not offer the Dependency Descriptor extension ({info})"
        ));
        return;
    }
    let (_, metrics) = rig.http("GET", "/metrics", "");
    let (_, routes) = rig.http("GET", "/v1/routes", "");
    let feedback = |e: &str| {
        metric_sum(
            &metrics,
            "sluice_feedback_total{",
            &format!("event=\"{e}\""),
        )
    };
    let (not_present, unreferenced) = (feedback("svc_not_present"), feedback("svc_unreferenced"));
    let (no_dd, late) = (feedback("svc_no_descriptor"), feedback("svc_late"));
    let switches = feedback("layer_switch");
    let key_requests = feedback("layer_keyframe_request");
    let free_w = series(&r, "viewerFrameWidth", 0);
    let capped_w = series(&r, "viewerFrameWidth", 1);
    let free_fps = series(&r, "viewerFramesPerSecond", 0);
    let capped_fps = series(&r, "viewerFramesPerSecond", 1);
    let free_dec = series(&r, "viewerFramesDecoded", 0);
    let capped_dec = series(&r, "viewerFramesDecoded", 1);
    let pub_w: Vec<f64> = r["series"]["publisherFrameWidth"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect())
        .unwrap_or_default();
    let freezes = |v: usize| {
        r["end"]["viewers"][v]["stats"]["inbound"]["freezeCount"]
            .as_u64()
            .unwrap_or(0)
    };
    eprintln!(
        "svc_e2e {codec}: {info}; svc routes {}; layer requests {}",
        routes.matches("\"dd_id\":").count() - routes.matches("\"dd_id\":null").count(),
        r["series"]["layerRequests"]
    );
    eprintln!(
        "svc_e2e {codec}: not sent: not_present {not_present} unreferenced {unreferenced} \
         no_descriptor {no_dd} late {late}; switches {switches}, keyframe requests \
         {key_requests}; freezes free {} capped {}",
        freezes(0),
        freezes(1)
    );
    eprintln!("svc_e2e {codec}: publisher width/s {pub_w:?}");
    eprintln!("svc_e2e {codec}: free width/s      {free_w:?}");
    eprintln!("svc_e2e {codec}: capped width/s    {capped_w:?}");
    eprintln!("svc_e2e {codec}: free fps/s        {free_fps:?}");
    eprintln!("svc_e2e {codec}: capped fps/s      {capped_fps:?}");
    eprintln!("svc_e2e {codec}: decoded free {free_dec:?}");
    eprintln!("svc_e2e {codec}: decoded capped {capped_dec:?}");

    assert_eq!(
        info["ddAnswered"],
        json!(true),
        "the relay answered no DD: {info}"
    );
    assert_eq!(info["applied"], json!(["L3T3_KEY"]), "{info}");
    assert!(
        r["series"]["layerRequests"]
            .as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|x| x["status"] == 200)),
        "{}",
        r["series"]["layerRequests"]
    );
    let widest = pub_w.iter().copied().fold(0.0, f64::max);
    assert!(
        widest > 320.0,
        "the publisher sent one spatial layer only: {pub_w:?}"
    );
    // The free viewer reaches the widest layer and keeps it while the other is capped.
    assert_eq!(
        free_w.iter().copied().fold(0.0, f64::max),
        widest,
        "free viewer {free_w:?}"
    );
    let (cap_at, lift_at) = (CAP_AT as usize, LIFT_AT as usize);
    let settled = cap_at + CAP_WITHIN as usize;
    assert!(
        free_w[settled..lift_at].iter().all(|&w| w > 320.0),
        "free viewer fell to the capped one's layer: {free_w:?}"
    );
    // The capped viewer falls to the lowest spatial layer and stays there until the lift.
    let low_from = (cap_at..settled)
        .find(|&i| capped_w.get(i).is_some_and(|&w| w > 0.0 && w <= 320.0))
        .unwrap_or_else(|| panic!("capped viewer never at ≤ 320 after its cap: {capped_w:?}"));
    assert!(
        capped_w[low_from..=lift_at].iter().all(|&w| w <= 320.0),
        "capped viewer above 320 while capped: {capped_w:?}"
    );
    // And to the base temporal layer: well under half the free viewer's frame rate.
    let (cf, ff) = (
        mean(&capped_fps[settled..lift_at]),
        mean(&free_fps[settled..lift_at]),
    );
    assert!(
        ff > 0.0 && cf < ff / 2.0,
        "capped {cf:.1} fps vs free {ff:.1} fps"
    );
    // Both keep decoding while capped.
    for (name, d) in [("free", &free_dec), ("capped", &capped_dec)] {
        assert!(
            d[lift_at] > d[settled] + 10.0,
            "{name} viewer stalled while capped: {d:?}"
        );
    }
    // After the lift the capped viewer climbs back to the widest layer sent since then.
    let widest_after = pub_w[lift_at..].iter().copied().fold(0.0, f64::max);
    assert!(
        capped_w[lift_at..].contains(&widest_after),
        "capped viewer did not return to the top layer: {capped_w:?}, publisher {pub_w:?}"
    );
    assert!(freezes(0) <= MAX_FREEZES && freezes(1) <= MAX_FREEZES);
    assert!(
        not_present > 0.0,
        "the relay dropped no frame for the capped viewer"
    );
    assert!(switches >= 2.0, "decode target switches {switches}");
}

#[test]
fn chromium_vp9_l3t3_key_through_whip_one_viewer_capped_one_free() {
    svc_through_whip("VP9");
}

#[test]
fn chromium_av1_l3t3_key_through_whip_one_viewer_capped_one_free() {
    svc_through_whip("AV1");
}

/// Temporal layers only (`L1T3`): the capped viewer PATCHes `{"max_temporal": 0}` at
/// [`CAP_AT`] and lifts it at [`LIFT_AT`]; its frame rate falls below half the free viewer's
/// while capped and both keep decoding at the publisher's width.
fn temporal_through_whip(codec: &str) {
    if let Some(why) = unavailable() {
        skip(&why);
        return;
    }
    let _one = BROWSERS.lock().unwrap_or_else(|e| e.into_inner());
    let tag = format!("svc-t-{}", codec.to_ascii_lowercase());
    let rig = WebRtcRig::start(&tag);
    let room = "svct";
    let chromium = std::env::var("SLUICE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let spec = json!({
        "mode": "relay", "base": rig.base(), "room": room, "seconds": SECONDS, "connectSecs": 40,
        "publisher": { "chromium": chromium, "token": rig.mint(room, "host"),
                       "svc": { "codec": codec, "scalabilityMode": "L1T3" },
                       "minBitrateKbps": UPLINK_KBPS },
        "viewers": [
            { "label": "free", "chromium": chromium, "token": rig.mint_for(room, "viewer", "free"),
              "dd": true },
            { "label": "capped", "chromium": chromium, "token": rig.mint_for(room, "viewer", "capped"),
              "dd": true,
              "layerPlan": [ { "at": CAP_AT, "max": null, "temporal": 0 },
                             { "at": LIFT_AT, "max": null, "temporal": null } ] },
        ],
    });
    let r = run_session(rig.dir(), &tag, &spec);
    if let Some(why) = r["unsupported"].as_str() {
        skip(format!("{codec} L1T3: Chromium's encoder here: {why}"));
        return;
    }
    let info = &r["svc"];
    if info["ddOffered"] != json!(true) {
        skip(format!(
            "{codec}: Chromium did not offer the Dependency Descriptor extension ({info})"
        ));
        return;
    }
    let (_, metrics) = rig.http("GET", "/metrics", "");
    let feedback = |e: &str| {
        metric_sum(
            &metrics,
            "sluice_feedback_total{",
            &format!("event=\"{e}\""),
        )
    };
    let not_present = feedback("svc_not_present");
    let no_dd = feedback("svc_no_descriptor");
    let free_fps = series(&r, "viewerFramesPerSecond", 0);
    let capped_fps = series(&r, "viewerFramesPerSecond", 1);
    let free_dec = series(&r, "viewerFramesDecoded", 0);
    let capped_dec = series(&r, "viewerFramesDecoded", 1);
    eprintln!(
        "svc_e2e {codec} L1T3: {info}; not sent: not_present {not_present} no_descriptor {no_dd}"
    );
    eprintln!("svc_e2e {codec} L1T3: free fps/s   {free_fps:?}");
    eprintln!("svc_e2e {codec} L1T3: capped fps/s {capped_fps:?}");
    eprintln!("svc_e2e {codec} L1T3: decoded free {free_dec:?} capped {capped_dec:?}");
    assert_eq!(info["ddAnswered"], json!(true), "{info}");
    let (cap_at, lift_at) = (CAP_AT as usize, LIFT_AT as usize);
    let settled = cap_at + CAP_WITHIN as usize;
    let (cf, ff) = (
        mean(&capped_fps[settled..lift_at]),
        mean(&free_fps[settled..lift_at]),
    );
    assert!(
        ff > 0.0 && cf < ff / 2.0,
        "capped {cf:.1} fps vs free {ff:.1} fps"
    );
    for (name, d) in [("free", &free_dec), ("capped", &capped_dec)] {
        assert!(
            d[lift_at] > d[settled] + 10.0,
            "{name} viewer stalled while capped: {d:?}"
        );
    }
    let after = mean(&capped_fps[capped_fps.len() - 5..]);
    assert!(
        after > ff / 2.0,
        "capped viewer after the lift: {capped_fps:?}"
    );
    assert!(
        not_present > 0.0,
        "the relay dropped no frame for the capped viewer"
    );
}

#[test]
fn chromium_h264_l1t3_through_whip_one_viewer_temporally_capped() {
    temporal_through_whip("H264");
}
