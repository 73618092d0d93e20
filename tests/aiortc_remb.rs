//! REMB to a publisher that takes nothing else (issue 17, "Uplink"): aiortc negotiates
//! `goog-remb` and abs-send-time but not transport-cc, and sets its VP8 encoder's target
//! bitrate from the REMB it receives. Two aiortc publishers send video of random blocks (VP8
//! spends about its target bitrate on them) through WHIP into two rooms, each from its own
//! network namespace on a test bridge (tests/netns.rs), to the real `sluice-control` and
//! `sluice-relay` on the bridge address; one link is shaped to 500 kbit/s (tbf), the other is
//! free. The relay's receive-side estimate (relay/src/engine/remb_rx.rs) must bring the shaped
//! publisher's REMB down towards the link rate and keep the free one's high, and aiortc's
//! encoder and what it sends must follow: the REMB values are the ones aiortc decoded off the
//! wire, the rates its own counters.

use sluice_tests::aiortc;
use sluice_tests::daemons::feedback_total as feedback;
use sluice_tests::netns::{self, Impairment, Net};
use sluice_tests::skip::skip;
use sluice_tests::webrtc_rig::{RigOptions, WebRtcRig};
use std::sync::mpsc::Receiver;

/// Seconds each publisher sends.
const SECONDS: u64 = 40;
/// The shaped link, kbit/s each way.
const LINK_KBIT: u32 = 500;
/// The last seconds the rates are averaged over.
const TAIL: usize = 12;

/// One `remb=B rembs=N target=T sent_bps=S` line of `peer.py publish-remb`.
#[derive(Debug, Clone, Copy)]
struct Second {
    remb: u64,
    rembs: u64,
    target: u64,
    sent_bps: u64,
}

fn parse(line: &str) -> Option<Second> {
    let mut f = line.split_whitespace().map(|kv| kv.split_once('='));
    let mut next = |key: &str| -> Option<u64> {
        let (k, v) = f.next()??;
        (k == key).then_some(())?;
        v.parse().ok()
    };
    Some(Second {
        remb: next("remb")?,
        rembs: next("rembs")?,
        target: next("target")?,
        sent_bps: next("sent_bps")?,
    })
}

fn seconds(rx: &Receiver<String>) -> Vec<Second> {
    rx.iter().filter_map(|l| parse(&l)).collect()
}

fn tail_mean(s: &[Second], f: impl Fn(&Second) -> u64) -> u64 {
    let t = &s[s.len().saturating_sub(TAIL)..];
    t.iter().map(f).sum::<u64>() / t.len().max(1) as u64
}

#[test]
fn aiortc_follows_the_relays_remb_on_a_shaped_link() {
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
    let shaped_host = net.add_host().expect("shaped publisher namespace");
    let free_host = net.add_host().expect("free publisher namespace");
    let imp = Impairment {
        loss_percent: 0.0,
        delay_ms: 0,
        rate_kbit: Some(LINK_KBIT),
    };
    net.impair(&shaped_host, imp).expect("shape");
    let mut rig = WebRtcRig::start_with(
        "aiortc-remb",
        &RigOptions {
            public_ip: Some(net.bridge_ip().into()),
            ..RigOptions::default()
        },
    );
    let base = rig.base();
    let shaped_token = rig.mint("remb-shaped", "host");
    let free_token = rig.mint("remb-free", "host");
    let secs = SECONDS.to_string();
    let (mut shaped, shaped_rx) = aiortc::spawn_in(
        &shaped_host.ns,
        shaped_host.ip,
        &[
            "publish-remb",
            &format!("{base}/whip/remb-shaped"),
            &shaped_token,
            &secs,
        ],
        "shaped",
    );
    let (mut free, free_rx) = aiortc::spawn_in(
        &free_host.ns,
        free_host.ip,
        &[
            "publish-remb",
            &format!("{base}/whip/remb-free"),
            &free_token,
            &secs,
        ],
        "free",
    );
    let shaped_status = shaped.wait().expect("wait shaped publisher");
    let free_status = free.wait().expect("wait free publisher");
    let (_, metrics) = rig.http("GET", "/metrics", "");
    rig.stop();
    drop(net);
    let s = seconds(&shaped_rx);
    let f = seconds(&free_rx);
    let remb_sent = feedback(&metrics, "event=\"remb_sent\"");
    let twcc_sent = feedback(&metrics, "event=\"twcc_sent\"");
    let (s_remb, s_target, s_sent) = (
        tail_mean(&s, |x| x.remb),
        tail_mean(&s, |x| x.target),
        tail_mean(&s, |x| x.sent_bps),
    );
    let (f_remb, f_target, f_sent) = (
        tail_mean(&f, |x| x.remb),
        tail_mean(&f, |x| x.target),
        tail_mean(&f, |x| x.sent_bps),
    );
    eprintln!(
        "aiortc_remb: over the last {TAIL} s, shaped ({LINK_KBIT} kbit/s): REMB {s_remb}, \
         encoder target {s_target}, video sent {s_sent} bit/s; free: REMB {f_remb}, target \
         {f_target}, sent {f_sent} bit/s; relay remb_sent {remb_sent}, twcc_sent {twcc_sent}"
    );
    assert!(
        shaped_status.success() && free_status.success(),
        "a publisher failed: shaped {shaped_status:?} {s:?}, free {free_status:?} {f:?}"
    );
    assert!(
        s.len() as u64 >= SECONDS - 2 && f.len() as u64 >= SECONDS - 2,
        "a report per second: {} and {}",
        s.len(),
        f.len()
    );
    assert!(remb_sent > 0.0, "the relay counted no REMB");
    assert_eq!(twcc_sent, 0.0, "aiortc negotiates no transport-cc");
    let (last_s, last_f) = (s[s.len() - 1], f[f.len() - 1]);
    assert!(
        last_s.rembs >= 10 && last_f.rembs >= 10,
        "REMBs reached aiortc: shaped {last_s:?}, free {last_f:?}"
    );
    // The relay's estimate: towards the link rate when shaped, high when free.
    assert!(
        s_remb <= u64::from(LINK_KBIT) * 1000 * 13 / 10,
        "shaped REMB {s_remb} bit/s, link {LINK_KBIT} kbit/s: {s:?}"
    );
    assert!(
        f_remb >= 1_000_000,
        "free REMB {f_remb} bit/s stayed high: {f:?}"
    );
    // aiortc follows: its encoder's target is the REMB (within its 250 k–1.5 M clamp), and
    // what it sends on the shaped link fits it and is well below the free one's.
    assert!(
        s_target <= u64::from(LINK_KBIT) * 1000 * 13 / 10,
        "shaped encoder target {s_target}"
    );
    assert!(
        s_sent <= u64::from(LINK_KBIT) * 1000 * 13 / 10,
        "shaped publisher sent {s_sent} bit/s through a {LINK_KBIT} kbit/s link"
    );
    assert!(
        f_target >= 1_000_000 && f_sent >= s_sent * 3 / 2,
        "free publisher: target {f_target}, sent {f_sent} vs shaped {s_sent}"
    );
}
