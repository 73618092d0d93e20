//! aiortc on a lossy link (issue 16: "aiortc too; it NACKs, it sends no RTX"): an aiortc
//! publisher and an aiortc viewer, each in its own network namespace on a test bridge
//! (tests/netns.rs), the real `sluice-control` and `sluice-relay` in the root namespace on the
//! bridge address. The viewer's link drops 5 % of packets each way (netem, or nftables where
//! the kernel has no netem). The viewer NACKs what it misses; the relay answers from its
//! retransmission cache, so the publisher, whose own link is clean, is asked for almost
//! nothing, and the viewer keeps decoding.

use sluice_tests::aiortc;
use sluice_tests::daemons::feedback_total as feedback;
use sluice_tests::netns::{self, Impairment, Net};
use sluice_tests::skip::skip;
use sluice_tests::webrtc_rig::{RigOptions, WebRtcRig};
use std::time::Duration;

/// Seconds the publisher sends. The viewer has all but 5 of them to decode its 300 frames
/// (10 s at 30 fps): aiortc decodes in Python, and on a loaded 2-vCPU machine it has run at
/// 11 fps, so the window is four times the 10 s the frames take at full speed.
const SECONDS: u64 = 45;

fn count(lines: &[String], key: &str) -> u64 {
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn aiortc_viewer_on_a_lossy_link_is_repaired_by_the_relay() {
    if !aiortc::available() {
        return;
    }
    if let Some(why) = netns::unavailable() {
        skip(&why);
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
            "SLUICE_REQUIRE_PEERS is set but the test cannot run: {why}"
        );
        return;
    }
    let mut net = Net::new().expect("bridge");
    let pub_host = net.add_host().expect("publisher namespace");
    let view_host = net.add_host().expect("viewer namespace");
    let imp = Impairment {
        loss_percent: 5.0,
        delay_ms: 40,
        rate_kbit: None,
    };
    let how = net.impair(&view_host, imp).expect("impair");
    if !how.delay_applied {
        skip("no netem in this kernel: the 40 ms delay was not added (aiortc_lossy)");
    }
    let mut rig = WebRtcRig::start_with(
        "aiortc-lossy",
        &RigOptions {
            public_ip: Some(net.bridge_ip().into()),
            ..RigOptions::default()
        },
    );
    let base = rig.base();
    let pub_token = rig.mint("lossy", "host");
    let view_token = rig.mint("lossy", "viewer");
    let (mut publisher, pub_rx) = aiortc::spawn_in(
        &pub_host.ns,
        pub_host.ip,
        &[
            "publish",
            &format!("{base}/whip/lossy"),
            &pub_token,
            &SECONDS.to_string(),
        ],
        "whip",
    );
    let mut pub_lines = Vec::new();
    while let Ok(l) = pub_rx.recv_timeout(Duration::from_secs(20)) {
        let answered = l.starts_with("answer");
        pub_lines.push(l);
        if answered {
            break;
        }
    }
    // Decode 300 frames (10 s at 30 fps) through the lossy link.
    let (mut watcher, view_rx) = aiortc::spawn_in(
        &view_host.ns,
        view_host.ip,
        &[
            "watch",
            &format!("{base}/whep/lossy"),
            &view_token,
            "300",
            &(SECONDS - 5).to_string(),
        ],
        "whep",
    );
    let status = watcher.wait().expect("wait watcher");
    let view_lines: Vec<String> = view_rx.iter().collect();
    let (_, metrics) = rig.http("GET", "/metrics", "");
    let _ = publisher.wait();
    pub_lines.extend(pub_rx.iter());
    rig.stop();
    drop(net);

    let sent = count(&view_lines, "nacks_sent=");
    let received = count(&pub_lines, "nacks_received=");
    let retransmitted = feedback(&metrics, "event=\"retransmitted\"");
    let rtx = feedback(&metrics, "event=\"rtx_sent\"");
    eprintln!(
        "aiortc_lossy: viewer NACKed {sent} packets, the relay resent {retransmitted} \
         (+{rtx} as RTX), the publisher was asked for {received}; {view_lines:?}"
    );
    assert!(
        status.success(),
        "the aiortc viewer did not decode 300 frames through 5 % loss: {view_lines:?}"
    );
    assert!(sent > 0, "no NACK from the viewer: was the loss applied?");
    assert!(
        retransmitted + rtx >= sent as f64 * 0.5,
        "the relay resent {retransmitted}+{rtx} of {sent} NACKed packets"
    );
    assert!(
        received * 4 <= sent,
        "the publisher was asked for {received} of the viewer's {sent} NACKed packets"
    );
}
