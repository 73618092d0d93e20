//! A shaped viewer gets the layer its link carries, and the best layer again once the limit
//! is lifted (issue 17, Prove; docs/ENGINE.md "Probing"): headless Chromium publishes its
//! fake camera at 1280x720 as three VP8 simulcast encodings through WHIP; two Chromium
//! viewers watch through WHEP. Each browser runs in its own network namespace on a test bridge
//! (tests/netns.rs), the real `sluice-control` and `sluice-relay` (one worker) in the root
//! namespace on the bridge address. [`SHAPE_AT`] seconds into the measurement one viewer's
//! link is limited to [`SHAPED_KBIT`] kbit/s with `tbf` on both ends of its veth pair (its
//! downlink is the root end's egress, so the limit sits between the relay and the browser, as
//! a bottleneck on the viewer's access link would); [`LIFT_AT`] seconds in the limit is
//! removed. The other viewer's link stays free.
//!
//! The relay's estimate of the shaped viewer's downlink falls with its transport-cc feedback
//! and its layer selector moves to the lowest layer; after the lift the viewer acknowledges
//! only the low layer's rate, and only the relay's probes (padding on the viewer's RTX stream)
//! show the link carries more, so the viewer's return to the top layer is what probing buys.
//!
//! Asserted, generously for a loaded 2-core machine: the free viewer reaches the widest layer
//! the publisher sends, has it at the end and for [`FREE_AT_WIDEST_PCT`] % of the seconds from
//! the shaping on; the shaped viewer is at ≤ 320 pixels wide within [`DOWN_WITHIN`] s of the
//! shaping and back at the widest layer within [`UP_WITHIN`] s of the lift; the relay made
//! layer switches for it, none while the link stayed shaped after the drop, and once it had
//! been back at the top for 5 s at most one per 5 s (issue 17's target for a steady link;
//! the publisher's own layers may still move both viewers there);
//! it froze at most [`MAX_SHAPED_FREEZES`] times; after the lift at least one probe succeeded
//! (raised its estimate).
//! Recorded (printed; docs/BENCHMARKS.md): both viewers' widths
//! per second, the seconds to the low layer and back (issue 17's targets: 5 s and 15 s),
//! freezes, frames decoded, layer switches per viewer, probe counters, and the shaped
//! viewer's estimate and probe counters each second.
//!
//! On a kernel without netem the rate is still applied by `tbf` (no delay is asked for).
//! Without root, `ip`/`tc`/`nft`, Chromium, Node or playwright-core the test prints
//! `SKIP: <why>` and passes, unless `SLUICE_REQUIRE_PEERS` is set.

use serde_json::{json, Value};
use sluice_tests::netns::{self, Impairment, Net};
use sluice_tests::skip::skip;
use sluice_tests::webrtc_rig::{run_session, unavailable, RigOptions, WebRtcRig};
use sluice_tests::TempDir;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The publisher's uplink estimate floor (as in tests/simulcast_e2e.rs): Chromium then
/// encodes all three layers from the start.
const UPLINK_KBPS: u64 = 2500;
/// Seconds of `getStats()` (one sample a second).
const SECONDS: u64 = 90;
/// When the shaped viewer's link is limited, and when the limit is lifted (seconds of the
/// measurement).
const SHAPE_AT: u64 = 15;
const LIFT_AT: u64 = 40;
const SHAPED_KBIT: u32 = 300;
/// Asserted bounds (issue 17 targets 5 s and 15 s; 2–7 s and 4–11 s measured on a loaded
/// 2-core host, docs/BENCHMARKS.md runs 16–21; these leave room for a loaded CI box: a slow
/// feedback loop, a late key frame, the browser's own stats delay, a failed probe's back-off).
const DOWN_WITHIN: u64 = 10;
const UP_WITHIN: u64 = 20;
/// Most freezes of the shaped viewer over the run (issue 17 targets 2 over 60 s; 2–6 measured,
/// most in the seconds after the shaping; before the estimator's loss floor, up to 10).
const MAX_SHAPED_FREEZES: u64 = 8;
/// Share of the seconds from the shaping to the end the free viewer must spend at the widest
/// layer (percent): the shaped viewer must not cost it its resolution (100 % in runs 16–18, 20,
/// 21; 87 % in run 19, where the publisher's top layer faltered on the loaded host and both
/// viewers went to 640 for a few seconds).
const FREE_AT_WIDEST_PCT: usize = 75;

fn series(r: &Value, key: &str, viewer: usize) -> Vec<u64> {
    r["series"][key][viewer]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
        .unwrap_or_default()
}

fn widths(r: &Value, viewer: usize) -> Vec<u64> {
    series(r, "viewerFrameWidth", viewer)
}

/// The widest layer the publisher sent during the measurement (its bytes grew).
fn widest_sent(r: &Value) -> u64 {
    let layers = r["series"]["publisherLayers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let bytes = |v: &Value, rid: &str| v[rid]["bytesSent"].as_u64().unwrap_or(0);
    let mut widest = 0;
    for w in layers.windows(2) {
        for rid in ["q", "h", "f"] {
            if bytes(&w[1], rid) > bytes(&w[0], rid) {
                widest = widest.max(w[1][rid]["frameWidth"].as_u64().unwrap_or(0));
            }
        }
    }
    widest
}

fn metric_sum(metrics: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("sluice_feedback_total{") && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Layer switches the relay made for the session whose peer is at `ip`, and its downlink
/// estimate (from `/v1/sessions/{id}/stats`).
fn relay_view(rig: &WebRtcRig, ip: IpAddr) -> (u64, u64) {
    let (_, list) = rig.http("GET", "/v1/sessions", "");
    let list: Value = serde_json::from_str(&list).unwrap_or(Value::Null);
    let prefix = format!("{ip}:");
    let Some(id) = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["peer"].as_str().is_some_and(|p| p.starts_with(&prefix)))
        .and_then(|s| s["id"].as_u64())
    else {
        return (0, 0);
    };
    let (_, st) = rig.http("GET", &format!("/v1/sessions/{id}/stats"), "");
    let st: Value = serde_json::from_str(&st).unwrap_or(Value::Null);
    let streams = st["streams"].as_array().cloned().unwrap_or_default();
    let switches = streams
        .iter()
        .filter_map(|s| s["layer"]["switches"].as_u64())
        .sum();
    let downlink = st["stats"]["downlink_bps"].as_u64().unwrap_or(0);
    (switches, downlink)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The relay's view of the shaped viewer at one second of the measurement.
#[derive(Debug, Clone, Copy)]
struct Sample {
    second: u64,
    estimate_bps: u64,
    switches: u64,
    probe_clusters: f64,
    probe_successes: f64,
}

/// Waits for the driver's start mark (`startedFile`), then shapes the link at `SHAPE_AT` and
/// lifts it at `LIFT_AT`, sampling the relay's view of the shaped viewer (`sample`) once a
/// second from a second before the shaping to the end of the measurement; returns the seconds
/// at which the link was shaped and lifted, and the samples.
fn shape_on_schedule(
    net: &Net,
    host: &netns::Host,
    started: &Path,
    sample: &dyn Fn(u64) -> Sample,
) -> Option<(f64, f64, Vec<Sample>)> {
    let deadline = unix_ms() + 180_000;
    let t0 = loop {
        if let Some(t) = std::fs::read_to_string(started)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            break t;
        }
        if unix_ms() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let at = |s: u64| {
        let target = t0 + s * 1000;
        let now = unix_ms();
        if target > now {
            std::thread::sleep(Duration::from_millis(target - now));
        }
        (unix_ms() - t0) as f64 / 1000.0
    };
    let mut samples = Vec::new();
    let (mut shaped, mut lifted) = (0.0, 0.0);
    for s in SHAPE_AT - 1..=SECONDS {
        let t = at(s);
        if s == SHAPE_AT {
            shaped = t;
            let imp = Impairment {
                rate_kbit: Some(SHAPED_KBIT),
                ..Impairment::default()
            };
            let how = net.impair(host, imp).expect("shape");
            eprintln!(
                "simulcast_shaped: {SHAPED_KBIT} kbit/s on the shaped viewer by {}",
                how.by
            );
        }
        if s == LIFT_AT {
            lifted = t;
            net.lift(host).expect("lift");
        }
        samples.push(sample(s));
    }
    Some((shaped, lifted, samples))
}

#[test]
fn shaped_viewer_goes_down_a_layer_and_probing_brings_it_back() {
    if let Some(why) = unavailable().or_else(netns::unavailable) {
        skip(&why);
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
            "SLUICE_REQUIRE_PEERS is set but the test cannot run: {why}"
        );
        return;
    }
    let chromium = std::env::var("SLUICE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let dir = TempDir::new("simulcast-shaped");
    let mut net = Net::new().expect("bridge");
    let mut browser = || {
        let h = net.add_host().expect("namespace");
        let w = net.chromium_wrapper(&h, dir.path(), &chromium);
        (h, w.display().to_string())
    };
    let (_, pub_exe) = browser();
    let (free_host, free_exe) = browser();
    let (shaped_host, shaped_exe) = browser();
    let rig = WebRtcRig::start_with(
        "simulcast-shaped",
        &RigOptions {
            public_ip: Some(net.bridge_ip().into()),
            ..RigOptions::default()
        },
    );
    let room = "shaped";
    let started = dir.path().join("started");
    let spec = json!({
        "mode": "relay", "base": rig.base(), "room": room, "seconds": SECONDS, "connectSecs": 60,
        "startedFile": started,
        "publisher": { "chromium": pub_exe, "token": rig.mint(room, "host"), "simulcast": true,
                       "minBitrateKbps": UPLINK_KBPS },
        "viewers": [
            { "label": "free", "chromium": free_exe, "token": rig.mint_for(room, "viewer", "free") },
            { "label": "shaped", "chromium": shaped_exe,
              "token": rig.mint_for(room, "viewer", "shaped") },
        ],
    });
    let sample = |second| {
        let (switches, estimate_bps) = relay_view(&rig, shaped_host.ip.into());
        let (_, metrics) = rig.http("GET", "/metrics", "");
        Sample {
            second,
            estimate_bps,
            switches,
            probe_clusters: metric_sum(&metrics, "event=\"probe_cluster\""),
            probe_successes: metric_sum(&metrics, "event=\"probe_success\""),
        }
    };
    let (r, times, views) = std::thread::scope(|sc| {
        let dir = rig.dir();
        let session = sc.spawn(|| run_session(dir, "shaped", &spec));
        let times = shape_on_schedule(&net, &shaped_host, &started, &sample);
        let r = session.join().expect("session");
        let views = (
            relay_view(&rig, free_host.ip.into()),
            relay_view(&rig, shaped_host.ip.into()),
        );
        (r, times, views)
    });
    let (shaped_at, lifted_at, samples) = times.expect("the driver never started measuring");
    let (_, metrics) = rig.http("GET", "/metrics", "");
    let free = widths(&r, 0);
    let shaped = widths(&r, 1);
    let widest = widest_sent(&r);
    let inbound = |v: usize, k: &str| r["end"]["viewers"][v]["stats"]["inbound"][k].clone();
    let probes = [
        "probe_cluster",
        "probe_packet",
        "probe_bytes",
        "probe_success",
    ]
    .map(|e| metric_sum(&metrics, &format!("event=\"{e}\"")));
    // Sample j is taken at second j + 1 of the measurement.
    let (shape_i, lift_i) = (SHAPE_AT as usize, LIFT_AT as usize);
    let down = (shape_i..lift_i).find(|&j| shaped.get(j).is_some_and(|&w| w > 0 && w <= 320));
    let up =
        down.and((lift_i..shaped.len()).find(|&j| shaped.get(j).is_some_and(|&w| w >= widest)));
    let secs = |j: Option<usize>, from: u64| j.map(|j| j as u64 + 1 - from);
    eprintln!(
        "simulcast_shaped: shaped at {shaped_at:.1} s, lifted at {lifted_at:.1} s; widest layer \
         sent {widest}; shaped viewer at ≤ 320 after {:?} s, back at {widest} after {:?} s",
        secs(down, SHAPE_AT),
        secs(up, LIFT_AT)
    );
    eprintln!(
        "simulcast_shaped: free viewer: freezes {}, frames decoded {}, layer switches {}, \
         estimate {} bit/s at the end",
        inbound(0, "freezeCount"),
        inbound(0, "framesDecoded"),
        views.0 .0,
        views.0 .1
    );
    eprintln!(
        "simulcast_shaped: shaped viewer: freezes {}, frames decoded {}, layer switches {}, \
         estimate {} bit/s at the end",
        inbound(1, "freezeCount"),
        inbound(1, "framesDecoded"),
        views.1 .0,
        views.1 .1
    );
    eprintln!(
        "simulcast_shaped: probe clusters {}, packets {}, bytes {}, successes {}",
        probes[0], probes[1], probes[2], probes[3]
    );
    for x in &samples {
        eprintln!(
            "simulcast_shaped: second {:2}: shaped viewer estimate {:8} bit/s, switches {}, \
             probe clusters {}, successes {}",
            x.second, x.estimate_bps, x.switches, x.probe_clusters, x.probe_successes
        );
    }
    eprintln!("simulcast_shaped: free viewer width/s   {free:?}");
    eprintln!("simulcast_shaped: shaped viewer width/s {shaped:?}");
    let freezes = [0, 1].map(|v| series(&r, "viewerFreezeCount", v));
    eprintln!("simulcast_shaped: free viewer freezes/s   {:?}", freezes[0]);
    eprintln!("simulcast_shaped: shaped viewer freezes/s {:?}", freezes[1]);

    assert!(widest > 320, "the publisher sent only the low layer: {r}");
    assert_eq!(
        free.iter().copied().max(),
        Some(widest),
        "free viewer {free:?}"
    );
    assert_eq!(
        free.last().copied(),
        Some(widest),
        "free viewer not at the top at the end: {free:?}"
    );
    let down = down.unwrap_or_else(|| panic!("shaped viewer never at ≤ 320: {shaped:?}"));
    assert!(
        down as u64 + 1 - SHAPE_AT <= DOWN_WITHIN,
        "shaped viewer at ≤ 320 only {} s after the shaping: {shaped:?}",
        down as u64 + 1 - SHAPE_AT
    );
    let up = up.unwrap_or_else(|| panic!("shaped viewer never back at {widest}: {shaped:?}"));
    assert!(
        up as u64 + 1 - LIFT_AT <= UP_WITHIN,
        "shaped viewer back at {widest} only {} s after the lift: {shaped:?}",
        up as u64 + 1 - LIFT_AT
    );
    assert!(
        views.1 .0 >= 2,
        "layer switches for the shaped viewer: {views:?}"
    );
    let from_shaping = free.get(shape_i..).unwrap_or_default();
    let at_widest = from_shaping.iter().filter(|&&w| w == widest).count();
    assert!(
        at_widest * 100 >= from_shaping.len() * FREE_AT_WIDEST_PCT,
        "free viewer at {widest} only {at_widest} of {} s from the shaping on: {free:?}",
        from_shaping.len()
    );
    let freezes = inbound(1, "freezeCount").as_u64().unwrap_or(u64::MAX);
    assert!(
        freezes <= MAX_SHAPED_FREEZES,
        "shaped viewer froze {freezes} times: {:?}",
        series(&r, "viewerFreezeCount", 1)
    );
    // Steady links: no switch while the link stays shaped after the drop; at most one per 5 s
    // once the viewer has been back at the top for 5 s.
    let switches_at = |s: u64| {
        samples
            .iter()
            .find(|x| x.second == s)
            .map_or(0, |x| x.switches)
    };
    let (from, to) = (SHAPE_AT + DOWN_WITHIN, LIFT_AT);
    assert_eq!(
        switches_at(from),
        switches_at(to),
        "switches while shaped, seconds {from}–{to}: {samples:?}"
    );
    let (from, to) = ((up as u64 + 1 + 5).min(SECONDS), SECONDS);
    let made = switches_at(to).saturating_sub(switches_at(from));
    assert!(
        made <= (to - from) / 5,
        "{made} switches on the lifted link in seconds {from}–{to}: {samples:?}"
    );
    let successes_at = |s: u64| {
        samples
            .iter()
            .find(|x| x.second == s)
            .map_or(0.0, |x| x.probe_successes)
    };
    assert!(
        successes_at(SECONDS) > successes_at(LIFT_AT),
        "no probe raised an estimate after the lift: {samples:?}"
    );
}
