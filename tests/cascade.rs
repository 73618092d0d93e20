//! Relay-to-relay cascade between cluster nodes (docs/CLUSTER.md "Cascade"): the signed
//! node-to-node trunk request (bad MAC, stale timestamp, replay: refused and counted), and
//! three nodes in three network namespaces with one Redis, where a publisher on node a is
//! watched by 30 aiortc viewers whose WHEP went to b and c, each edge taking one copy of the
//! streams over a trunk; an edge viewer's FIR yields keyframes through the trunk; a killed
//! edge is dropped by the origin (`edge_lost`) and its viewers rejoin through c; a killed
//! origin drops c's trunk and its viewers (`origin_lost`). And `sluice-bench --targets`
//! spreading static sessions over three nodes with figures per node.

use serde_json::Value;
use sluice_tests::cluster_rig::*;
use sluice_tests::daemons::ensure_binaries;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

const SECRET: &str = "cascade-test-secret-0123456789abcdef";

/// A cluster secret file (mode 0600) under `dir`, and the `[cluster]` lines that use it.
fn secret_config(dir: &Path, extra: &str) -> String {
    let p = dir.join("cluster.secret");
    std::fs::write(&p, format!("{SECRET}\n")).expect("write secret");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    format!("secret_file = \"{}\"\ncascade = true\n{extra}", p.display())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The `Sluice-Cluster-Auth` header for a request, computed here independently of control
/// (HMAC-SHA256 over the documented signing text, docs/CLUSTER.md).
fn sign(
    secret: &str,
    node: &str,
    method: &str,
    path: &str,
    body: &[u8],
    ts_ms: u64,
    nonce: [u8; 16],
) -> String {
    let body_hash = ring::digest::digest(&ring::digest::SHA256, body);
    let text = format!(
        "sluice-cluster-v1\n{method}\n{path}\n{node}\n{ts_ms}\n{}\n{}",
        hex(&nonce),
        hex(body_hash.as_ref())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mac = ring::hmac::sign(&key, text.as_bytes());
    format!(
        "v1 node={node} ts={ts_ms} nonce={} mac={}",
        hex(&nonce),
        hex(mac.as_ref())
    )
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Unsigned, wrongly signed, stale and replayed trunk requests are refused with their
/// reason and counted; a well-signed one is authenticated (and then refused for what it
/// asks: the room is not this node's). Nothing of the secret reaches the log or the audit.
#[test]
fn trunk_requests_are_authenticated() {
    ensure_binaries();
    let tmp = sluice_tests::TempDir::new("cascade-auth");
    let Some(redis) = Redis::start(tmp.path()) else {
        return;
    };
    let extra = secret_config(tmp.path(), "");
    let a = Node::start_with("a", "eu", &redis.url(), "ca1", None, &extra);
    let path = "/cluster/v1/trunks";
    let body = br#"{"edge":"b","media_addr":"127.0.0.1:1","app":"live","room":"r"}"#;
    let send = |auth: Option<String>| {
        let mut h = vec![("Content-Type", "application/json".to_string())];
        if let Some(a) = auth {
            h.push(("Sluice-Cluster-Auth", a));
        }
        let (st, _, b) = request(&a.url, "POST", path, &h, std::str::from_utf8(body).unwrap())
            .expect("trunk request");
        (st, reason(&b))
    };
    assert_eq!(send(None), (401, "missing".into()));
    let now = unix_ms();
    let forged = sign(
        "another-secret-of-32-characters!!",
        "b",
        "POST",
        path,
        body,
        now,
        [1; 16],
    );
    assert_eq!(send(Some(forged)), (401, "bad_mac".into()));
    let tampered = sign(
        SECRET,
        "b",
        "POST",
        "/cluster/v1/trunks/x",
        body,
        now,
        [2; 16],
    );
    assert_eq!(send(Some(tampered)), (401, "bad_mac".into()));
    let stale = sign(SECRET, "b", "POST", path, body, now - 60_000, [3; 16]);
    assert_eq!(send(Some(stale)), (401, "stale".into()));
    assert_eq!(send(Some("v1 node=b".into())), (401, "malformed".into()));
    let good = sign(SECRET, "b", "POST", path, body, unix_ms(), [4; 16]);
    // Authenticated; the room is not placed on a, so no trunk.
    let (st, why) = send(Some(good.clone()));
    assert_eq!((st, why.as_str()), (409, "not_owner"));
    assert_eq!(send(Some(good)), (401, "replay".into()));
    let m = a.metrics();
    for (result, n) in [
        ("accepted", 1.0),
        ("missing", 1.0),
        ("bad_mac", 2.0),
        ("stale", 1.0),
        ("replay", 1.0),
        ("malformed", 1.0),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("sluice_cluster_auth_total{{result=\"{result}\"}} ")
            ),
            n,
            "{result}"
        );
    }
    let audit = a.audit();
    assert!(audit.contains("cluster.denied") && audit.contains("cluster_auth_bad_mac"));
    assert!(!audit.contains(SECRET) && !a.log().contains(SECRET));
}

/// Lines from `rx` until one satisfies `f` (returned), or fail after `timeout`.
fn wait_line(
    rx: &Receiver<String>,
    timeout: Duration,
    what: &str,
    f: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}");
        match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(l) if f(&l) => return l,
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the peer exited before {what}")
            }
        }
    }
}

/// The trunk entries of a node's `GET /v1/cluster`.
fn trunks(n: &Node) -> Vec<Value> {
    n.cluster().1["trunks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn trunk_to<'a>(t: &'a [Value], node: &str) -> Option<&'a Value> {
    t.iter().find(|x| x["node"] == node)
}

fn session_packets_in(n: &Node, id: u64) -> u64 {
    let (st, b) = n.admin("GET", &format!("/v1/sessions/{id}/stats"), "");
    assert_eq!(st, 200, "{b}");
    let v: Value = serde_json::from_str(&b).expect("json");
    v["stats"]["packets_in"].as_u64().unwrap_or(0)
}

/// Three nodes in three namespaces, one Redis; the publisher on a; 30 viewers sent to b and
/// c are served by b's and c's relays over one trunk each from a.
#[test]
fn cascade_across_three_nodes() {
    ensure_binaries();
    if !sluice_tests::aiortc::available() {
        return;
    }
    let Some(ns) = Namespaces::create() else {
        return;
    };
    let tmp = sluice_tests::TempDir::new("cascade-3");
    let Some(mut redis) = Redis::start_on(tmp.path(), &ns.host(), Some("cascade-pw")) else {
        return;
    };
    let url = redis.url();
    let extra = secret_config(tmp.path(), "");
    let ids = ["a", "b", "c"];
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let addr = ns.addr(i);
            Node::start_with(
                ids[i],
                "eu",
                &url,
                "c3",
                Some((&ns.names[i], &addr)),
                &extra,
            )
        })
        .collect();
    for n in &mut nodes {
        n.start_relay();
    }
    eventually("three nodes registered", Duration::from_secs(15), || {
        node_ids(&nodes[0].cluster().1) == ids
    });
    let host = ns.host();
    let (mut publisher, pub_rx) = publish(&host, "publish-pli-only", &nodes[0], "big", "240");
    // 30 viewers, alternately through b and c, in one process.
    let urls: Vec<String> = (0..30)
        .map(|i| format!("{}/whep/live/big", nodes[1 + i % 2].url))
        .collect();
    // One token (one subject) per viewer: a subject may hold only a few sessions.
    let view_token = nodes[1].mint("big", "viewer");
    let tokens: Vec<String> = (0..30).map(|_| nodes[1].mint("big", "viewer")).collect();
    let (mut many, many_rx) = sluice_tests::aiortc::spawn_with_host(
        &host,
        &[
            "watch-many",
            &urls.join(","),
            &tokens.join(","),
            "30",
            "150",
        ],
        "whep-many",
    );
    let publisher_session = nodes[0]
        .admin("GET", "/v1/sessions", "")
        .1
        .parse::<Value>()
        .ok()
        .and_then(|v| {
            let list = v
                .as_array()
                .cloned()
                .or_else(|| v["sessions"].as_array().cloned())?;
            list.iter()
                .find(|s| s["role"] == "host")
                .and_then(|s| s["id"].as_u64())
        })
        .expect("the publisher's session");
    // What the publisher had sent when b's first viewer was answered (b's trunk opened for
    // that join): a trunk carries only what is published after it opened.
    let mut published_before_b = None;
    let mut joined = Vec::new();
    let done = loop {
        let l = wait_line(&many_rx, Duration::from_secs(180), "the viewers", |_| true);
        if let Some(loc) = l.split("location=").nth(1) {
            if published_before_b.is_none() && loc.starts_with(&nodes[1].url) {
                published_before_b = Some(session_packets_in(&nodes[0], publisher_session));
            }
            joined.push(loc.to_string());
        }
        if l.starts_with("decoded_all=") {
            break l;
        }
    };
    // Right away, before the viewers' DELETEs make the edges idle: the trunks and counters.
    let origin_trunks = trunks(&nodes[0]);
    let b_trunks = trunks(&nodes[1]);
    let a_sessions = nodes[0].sessions();
    let status_text = nodes[0].app.ctl(&["cluster", "status"]);
    let status_text = String::from_utf8_lossy(&status_text.stdout).into_owned();
    let status = many.wait().expect("wait viewers");
    assert!(
        status.success() && done == "decoded_all=30/30",
        "{done}\n{}",
        nodes[1].log()
    );
    // Every viewer was answered by the edge it asked, not by the origin.
    assert_eq!(joined.len(), 30);
    for (i, loc) in joined.iter().enumerate() {
        assert!(
            loc.starts_with(&nodes[1].url) || loc.starts_with(&nodes[2].url),
            "viewer {i} joined at {loc}"
        );
    }
    assert!(
        status_text.contains("TRUNK") && status_text.contains("live/big"),
        "{status_text}"
    );
    // The origin holds the publisher and one trunk per edge: no viewer session at all.
    assert_eq!(a_sessions, 3, "{origin_trunks:?}");
    let (to_b, to_c) = (
        trunk_to(&origin_trunks, "b").expect("a trunk to b"),
        trunk_to(&origin_trunks, "c").expect("a trunk to c"),
    );
    assert_eq!(
        (to_b["side"].as_str(), to_c["side"].as_str()),
        (Some("origin"), Some("origin"))
    );
    // One copy per edge: what a sends on the trunk to b is what the publisher sent (plus
    // RTCP), not 15 copies for b's 15 viewers.
    let published = session_packets_in(&nodes[0], publisher_session);
    let to_b_out = to_b["counters"]["packets_out"].as_u64().expect("counters");
    eprintln!("cascade: publisher sent {published} packets; trunk a→b carried {to_b_out}");
    assert!(published > 50, "publisher packets {published}");
    assert!(
        to_b_out <= published + published / 5 + 200,
        "the trunk to b carried {to_b_out} packets for {published} published"
    );
    let since_b = published.saturating_sub(published_before_b.unwrap_or(0));
    assert!(
        to_b_out >= since_b / 2,
        "the trunk to b carried only {to_b_out} of the {since_b} packets published since it opened"
    );
    let edge_b = trunk_to(&b_trunks, "a").expect("b's trunk from a");
    assert_eq!(edge_b["side"], "edge");
    assert!(edge_b["counters"]["packets_in"].as_u64().unwrap_or(0) >= published / 2);

    // Feedback over the trunk: a viewer on c that asks for keyframes with FIRs gets them,
    // from a publisher that only understands PLI.
    let (mut fir, fir_rx) = sluice_tests::aiortc::spawn_with_host(
        &host,
        &[
            "watch-fir",
            &format!("{}/whep/live/big", nodes[2].url),
            &view_token,
            "3",
            "40",
        ],
        "whep-fir",
    );
    let status = fir.wait().expect("wait fir viewer");
    let lines: Vec<String> = fir_rx.iter().collect();
    assert!(status.success(), "FIR viewer through the edge: {lines:?}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("keyframe_after_ms="))
            .count(),
        3,
        "{lines:?}"
    );
    assert!(pub_rx.try_iter().any(|l| l == "keyframe_request=pli"));

    // Kill b while it serves a viewer: the viewer's media stops, a drops its trunk to b
    // once b leaves the registry (`edge_lost`), and the viewer rejoins through c.
    let (mut on_b, on_b_rx) = sluice_tests::aiortc::spawn_with_host(
        &host,
        &[
            "watch",
            &format!("{}/whep/live/big", nodes[1].url),
            &view_token,
            "100000",
            "120",
        ],
        "whep-b",
    );
    wait_line(&on_b_rx, Duration::from_secs(60), "frames on b", |l| {
        l.starts_with("frames=20 ")
    });
    assert!(trunk_to(&trunks(&nodes[0]), "b").is_some());
    nodes[1].kill_all();
    let _ = on_b.kill();
    let _ = on_b.wait();
    let (st, _, _) = join(&nodes[1].url, false, "big", &view_token);
    assert_eq!(st, 0, "a dead node answers nothing");
    let again: Vec<String> = (0..5)
        .map(|_| format!("{}/whep/live/big", nodes[2].url))
        .collect();
    let (mut rejoin, rejoin_rx) = sluice_tests::aiortc::spawn_with_host(
        &host,
        &["watch-many", &again.join(","), &view_token, "20", "90"],
        "whep-rejoin",
    );
    let status = rejoin.wait().expect("wait rejoin");
    let lines: Vec<String> = rejoin_rx.iter().collect();
    assert!(status.success(), "rejoin through c: {lines:?}");
    eventually(
        "a closes the trunk to b (edge_lost)",
        Duration::from_secs(20),
        || {
            metric(
                &nodes[0].metrics(),
                "sluice_cluster_trunk_closed_total{reason=\"edge_lost\"} ",
            ) >= 1.0
        },
    );
    assert!(trunk_to(&trunks(&nodes[0]), "b").is_none());
    assert!(nodes[0].audit().contains("edge_lost"));

    // Kill the origin while c serves a viewer: c drops the room and the viewer with
    // `origin_lost`.
    let (mut last, last_rx) = sluice_tests::aiortc::spawn_with_host(
        &host,
        &[
            "watch",
            &format!("{}/whep/live/big", nodes[2].url),
            &view_token,
            "100000",
            "120",
        ],
        "whep-last",
    );
    wait_line(&last_rx, Duration::from_secs(60), "frames on c", |l| {
        l.starts_with("frames=20 ")
    });
    let before = nodes[2].sessions();
    assert!(before >= 2, "c holds its trunk and the viewer: {before}");
    // The origin's control restarts: the trunk is kept (its session and routes are in the
    // journal, the trunk in state_dir), the room stays placed on a, c's viewer decodes on.
    nodes[0].restart_control();
    wait_line(
        &last_rx,
        Duration::from_secs(30),
        "frames after a's restart",
        |l| l.starts_with("frames="),
    );
    std::thread::sleep(Duration::from_millis(3 * 2_000));
    let n = wait_line(
        &last_rx,
        Duration::from_secs(30),
        "frames long after a's restart",
        |l| l.starts_with("frames="),
    );
    assert!(
        trunk_to(&trunks(&nodes[0]), "c").is_some(),
        "{}",
        nodes[0].log()
    );
    assert_eq!(owner(&nodes[2].cluster().1, "big").as_deref(), Some("a"));
    assert!(
        trunk_to(&trunks(&nodes[2]), "a").is_some(),
        "c still takes the room: {n}"
    );
    nodes[0].kill_all();
    eventually(
        "c drops the trunk (origin_lost)",
        Duration::from_secs(30),
        || {
            metric(
                &nodes[2].metrics(),
                "sluice_cluster_trunk_closed_total{reason=\"origin_lost\"} ",
            ) >= 1.0
        },
    );
    assert_eq!(nodes[2].sessions(), 0, "the trunk and its viewer are gone");
    let audit = nodes[2].audit();
    assert!(audit.contains("cluster.trunk") && audit.contains("origin_lost"));
    // Keys stay out of logs and audit; so do the secret and the Redis password.
    for n in [&nodes[0], &nodes[2]] {
        for s in [SECRET, "cascade-pw"] {
            assert!(!n.log().contains(s) && !n.audit().contains(s));
        }
    }
    let _ = last.kill();
    let _ = last.wait();
    let _ = publisher.kill();
    let _ = publisher.wait();
    drop(nodes);
    redis.kill();
}

/// Two cascading nodes, a and b, in network namespaces with their relays and one Redis,
/// and an aiortc publisher on a in room `live/r`: (namespaces, redis, nodes, publisher,
/// the publisher's lines, the temporary directory). `None` when something is missing (the
/// SKIP line is printed).
#[allow(clippy::type_complexity)]
fn two_cascading_nodes(
    tag: &str,
    extra: &str,
) -> Option<(
    Namespaces,
    Redis,
    Vec<Node>,
    std::process::Child,
    Receiver<String>,
    sluice_tests::TempDir,
)> {
    ensure_binaries();
    if !sluice_tests::aiortc::available() {
        return None;
    }
    let (ns, redis, nodes, tmp) = two_nodes(tag, extra)?;
    let (publisher, pub_rx) = publish(&ns.host(), "publish", &nodes[0], "r", "600");
    Some((ns, redis, nodes, publisher, pub_rx, tmp))
}

/// An aiortc publisher (`mode`: `publish` or `publish-pli-only`) on `host` into room `room` of
/// `node` for `secs` seconds, once it has its WHIP answer: the process and its output lines.
fn publish(
    host: &str,
    mode: &str,
    node: &Node,
    room: &str,
    secs: &str,
) -> (std::process::Child, Receiver<String>) {
    let (publisher, pub_rx) = sluice_tests::aiortc::spawn_with_host(
        host,
        &[
            mode,
            &format!("{}/whip/live/{room}", node.url),
            &node.mint(room, "host"),
            secs,
        ],
        "whip",
    );
    wait_line(
        &pub_rx,
        Duration::from_secs(30),
        "the publisher's answer",
        |l| l.starts_with("answer"),
    );
    (publisher, pub_rx)
}

/// Nodes `a` and `b` in namespaces of their own, with their relays, registered in one Redis.
fn two_nodes(
    tag: &str,
    extra: &str,
) -> Option<(Namespaces, Redis, Vec<Node>, sluice_tests::TempDir)> {
    let ns = Namespaces::create()?;
    let tmp = sluice_tests::TempDir::new(tag);
    let redis = Redis::start_on(tmp.path(), &ns.host(), Some("cascade-pw"))?;
    let extra = secret_config(tmp.path(), extra);
    let ids = ["a", "b"];
    let mut nodes: Vec<Node> = (0..2)
        .map(|i| {
            let addr = ns.addr(i);
            Node::start_with(
                ids[i],
                "eu",
                &redis.url(),
                tag,
                Some((&ns.names[i], &addr)),
                &extra,
            )
        })
        .collect();
    for n in &mut nodes {
        n.start_relay();
    }
    eventually("two nodes registered", Duration::from_secs(15), || {
        node_ids(&nodes[0].cluster().1) == ids
    });
    Some((ns, redis, nodes, tmp))
}

/// A simulcast publisher on the origin, watched through an edge (issue 17 across a cascade):
/// Chromium publishes three VP8 layers by RID through WHIP to node a; two Chromium viewers
/// watch through WHEP on node b, which takes the room over a trunk. The origin carries every
/// layer it learned as a stream of its own; the edge puts them back into one simulcast source
/// and selects per viewer. One viewer caps itself to the lowest layer (PATCH on its edge
/// resource) and lifts the cap; the other is free.
///
/// Asserted: the edge has one layered route per layer into each viewer, all into one output
/// SSRC per viewer; the free viewer reaches the widest layer the publisher sends; the capped
/// one falls to ≤ 320 wide while capped and returns above it after the lift; the edge counted
/// layer switches. Without Chromium (or namespaces) the test prints `SKIP: <why>`.
/// The layered routes (a `rewrite.layer`) in a `GET /v1/routes` answer.
fn layered_routes(routes: &Value) -> Vec<&Value> {
    routes
        .as_array()
        .or_else(|| routes["routes"].as_array())
        .into_iter()
        .flatten()
        .filter(|x| !x["rewrite"]["layer"].is_null())
        .collect()
}

#[test]
fn simulcast_publisher_watched_through_an_edge() {
    use sluice_tests::webrtc_rig::{run_session, top_layer_widths, unavailable, widths};
    const SECONDS: u64 = 50;
    const CAP_AT: u64 = 5;
    const LIFT_AT: u64 = 30;
    ensure_binaries();
    if let Some(why) = unavailable() {
        sluice_tests::skip::skip(&why);
        return;
    }
    let Some((_ns, mut redis, mut nodes, tmp)) = two_nodes("csim", "") else {
        return;
    };
    let chromium = std::env::var("SLUICE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let (origin, edge) = (&nodes[0], &nodes[1]);
    let spec = serde_json::json!({
        "mode": "relay", "base": origin.url, "room": "live/sim", "seconds": SECONDS,
        "connectSecs": 60,
        "publisher": { "chromium": chromium, "token": origin.mint("sim", "host"),
                       "simulcast": true, "minBitrateKbps": 2500 },
        "viewers": [
            { "label": "free", "chromium": chromium, "base": edge.url,
              "token": edge.mint("sim", "viewer") },
            { "label": "capped", "chromium": chromium, "base": edge.url,
              "token": edge.mint("sim", "viewer"),
              "layerPlan": [ { "at": CAP_AT, "max": 0 }, { "at": LIFT_AT, "max": null } ] },
        ],
    });
    // The edge's routes are read while the viewers are connected: when the driver closes its
    // browsers, a viewer's routes may go before a read after the session could see them.
    let (r, routes) = std::thread::scope(|sc| {
        let session = sc.spawn(|| run_session(tmp.path(), "cascade-simulcast", &spec));
        let mut best = (0, Value::Null);
        while !session.is_finished() {
            std::thread::sleep(Duration::from_secs(2));
            let (st, body) = edge.admin("GET", "/v1/routes", "");
            let Ok(routes) = serde_json::from_str::<Value>(&body) else {
                continue;
            };
            let n = layered_routes(&routes).len();
            if st == 200 && n > best.0 {
                best = (n, routes);
            }
        }
        (session.join().expect("session"), best.1)
    });
    let metrics = edge.metrics();
    let switches: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_feedback_total{") && l.contains("event=\"layer_switch\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let (free, capped, top) = (widths(&r, 0), widths(&r, 1), top_layer_widths(&r));
    eprintln!("cascade simulcast: publisher top layer width/s {top:?}");
    eprintln!("cascade simulcast: free viewer (edge) width/s   {free:?}");
    eprintln!("cascade simulcast: capped viewer (edge) width/s {capped:?}");
    eprintln!("cascade simulcast: edge layer switches {switches}");
    // Per viewer on the edge: one layered route per layer, one output SSRC.
    let layered = layered_routes(&routes);
    let mut by_viewer: std::collections::BTreeMap<u64, Vec<&Value>> = Default::default();
    for x in &layered {
        by_viewer
            .entry(x["to"].as_u64().expect("to"))
            .or_default()
            .push(x);
    }
    assert_eq!(
        by_viewer.len(),
        2,
        "layered routes on the edge: {layered:?}"
    );
    for (v, rs) in &by_viewer {
        assert_eq!(rs.len(), 3, "viewer {v}: {rs:?}");
        let out: std::collections::BTreeSet<_> = rs
            .iter()
            .map(|x| x["rewrite"]["ssrc"].to_string())
            .collect();
        assert_eq!(out.len(), 1, "viewer {v}: one output SSRC: {rs:?}");
    }
    let widest = top.iter().copied().max().unwrap_or(0);
    assert!(
        widest > 320,
        "the publisher sent only the low layer: {top:?}"
    );
    assert_eq!(
        free.iter().copied().max(),
        Some(widest),
        "free viewer {free:?}, publisher {top:?}"
    );
    let (cap_at, lift_at) = (CAP_AT as usize, LIFT_AT as usize);
    let low_from = (cap_at..lift_at)
        .find(|&i| capped.get(i).is_some_and(|&w| w > 0 && w <= 320))
        .unwrap_or_else(|| panic!("capped viewer never at ≤ 320 after its cap: {capped:?}"));
    assert!(
        capped[low_from..=lift_at].iter().all(|&w| w <= 320),
        "capped viewer above 320 while capped: {capped:?}"
    );
    assert!(
        capped[lift_at..].iter().any(|&w| w > 320),
        "capped viewer did not climb after the lift: {capped:?}, publisher {top:?}"
    );
    assert!(switches >= 2.0, "edge layer switches {switches}");
    for n in &mut nodes {
        n.kill_all();
    }
    redis.kill();
}

/// An edge whose trunk stops carrying media while the origin keeps sending on it (here an
/// nftables rule in the edge's namespace drops UDP from the origin; HTTP between the
/// controls goes on) closes the room and its viewers' sessions with `trunk_silent` within
/// `cluster.trunk_silence_ms`, tells the origin (which closes its side, `edge_closed`),
/// counts and audits it. While media flows, the watch never fires.
#[test]
fn edge_closes_a_silent_trunk() {
    let Some((ns, mut redis, mut nodes, mut publisher, _pub_rx, _tmp)) =
        two_cascading_nodes("csil", "trunk_silence_ms = 2000\n")
    else {
        return;
    };
    let view_token = nodes[1].mint("r", "viewer");
    let (mut viewer, viewer_rx) = sluice_tests::aiortc::spawn_with_host(
        &ns.host(),
        &[
            "watch",
            &format!("{}/whep/live/r", nodes[1].url),
            &view_token,
            "100000",
            "300",
        ],
        "whep-b",
    );
    wait_line(&viewer_rx, Duration::from_secs(60), "frames on b", |l| {
        l.starts_with("frames=20 ")
    });
    assert!(
        trunk_to(&trunks(&nodes[1]), "a").is_some(),
        "b serves the viewer over a trunk"
    );
    // Twice the window with media flowing: nothing closes.
    std::thread::sleep(Duration::from_millis(4_000));
    wait_line(
        &viewer_rx,
        Duration::from_secs(30),
        "frames still on b",
        |l| l.starts_with("frames="),
    );
    let silent = "sluice_cluster_trunk_closed_total{reason=\"trunk_silent\"} ";
    assert_eq!(metric(&nodes[1].metrics(), silent), 0.0);
    assert!(nodes[1].sessions() >= 2, "the trunk and the viewer");

    if !ns.drop_udp_from(1, &ns.addr(0)) {
        return;
    }
    eventually(
        "b closes the silent trunk (trunk_silent)",
        Duration::from_secs(30),
        || metric(&nodes[1].metrics(), silent) >= 1.0,
    );
    assert_eq!(
        nodes[1].sessions(),
        0,
        "the trunk and the viewer's session are gone"
    );
    assert!(trunk_to(&trunks(&nodes[1]), "a").is_none());
    let audit = nodes[1].audit();
    assert!(
        audit.contains("cluster.trunk") && audit.contains("trunk_silent"),
        "{audit}"
    );
    eventually(
        "a closes its side (edge_closed)",
        Duration::from_secs(20),
        || trunk_to(&trunks(&nodes[0]), "b").is_none(),
    );
    assert!(
        metric(
            &nodes[0].metrics(),
            "sluice_cluster_trunk_closed_total{reason=\"edge_closed\"} "
        ) >= 1.0
    );
    let _ = viewer.kill();
    let _ = viewer.wait();
    let _ = publisher.kill();
    let _ = publisher.wait();
    for n in &mut nodes {
        n.kill_all();
    }
    redis.kill();
}

/// The median of `v` (not empty).
fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// A viewer's first decoded frame, timed from its WHEP POST, through the origin and through
/// an edge that must first open a trunk (the previous one closed after its last viewer
/// left), alternately. Prints the figures (docs/BENCHMARKS.md "Cascade and scale-out across
/// nodes"); asserts that every viewer decodes and that every edge viewer came over a new
/// trunk.
#[test]
fn first_frame_through_a_new_trunk() {
    let Some((ns, mut redis, mut nodes, mut publisher, _pub_rx, _tmp)) =
        two_cascading_nodes("cff", "")
    else {
        return;
    };
    let rounds = 3;
    let (mut origin, mut edge): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
    let first_frame = |node: &Node, tag: &'static str| -> u64 {
        let token = node.mint("r", "viewer");
        let (mut v, rx) = sluice_tests::aiortc::spawn_with_host(
            &ns.host(),
            &[
                "watch",
                &format!("{}/whep/live/r", node.url),
                &token,
                "1",
                "60",
            ],
            tag,
        );
        let line = wait_line(&rx, Duration::from_secs(90), "a first frame", |l| {
            l.starts_with("first_frame_ms=")
        });
        let status = v.wait().expect("wait viewer");
        assert!(status.success(), "{tag}: {line}");
        line["first_frame_ms=".len()..].parse().expect("ms")
    };
    let opened = "sluice_cluster_trunks_opened_total{side=\"edge\"} ";
    let failed = "sluice_cluster_trunk_joins_total{result=\"failed\"} ";
    // A join whose trunk could not be opened is forwarded to the origin (counted `failed`):
    // on a loaded machine the edge's call to the origin can time out. Such a round measured
    // no trunk, so it is repeated, a few times at most.
    let mut retries = 0;
    while edge.len() < rounds {
        origin.push(first_frame(&nodes[0], "whep-origin"));
        eventually(
            "b holds no trunk (the last one went idle)",
            Duration::from_secs(30),
            || trunks(&nodes[1]).is_empty(),
        );
        let (opened_before, failed_before) = {
            let m = nodes[1].metrics();
            (metric(&m, opened), metric(&m, failed))
        };
        let ms = first_frame(&nodes[1], "whep-edge");
        let m = nodes[1].metrics();
        if metric(&m, opened) == opened_before + 1.0 {
            edge.push(ms);
            continue;
        }
        assert!(
            metric(&m, failed) > failed_before && retries < 3,
            "the edge viewer neither opened a new trunk nor failed to open one (retries {retries}):\n{}",
            m.lines()
                .filter(|l| l.starts_with("sluice_cluster_trunk"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        retries += 1;
        eprintln!("first_frame_through_a_new_trunk: the edge could not open its trunk (loaded machine); round repeated");
    }
    eprintln!(
        "first frame from the WHEP POST: origin {origin:?} ms, edge with a new trunk {edge:?} ms; \
         medians {} and {} ms",
        median(&mut origin.clone()),
        median(&mut edge.clone())
    );
    let _ = publisher.kill();
    let _ = publisher.wait();
    for n in &mut nodes {
        n.kill_all();
    }
    redis.kill();
}

/// Three loopback nodes with their relays: (appliances, admin URLs, admin tokens).
fn three_static_nodes(
    tag: &str,
) -> (
    Vec<sluice_tests::daemons::Appliance>,
    Vec<String>,
    Vec<String>,
) {
    use sluice_tests::daemons::{Appliance, Setup};
    let mut apps: Vec<Appliance> = (0..3)
        .map(|i| Appliance::setup(&format!("{tag}-{i}"), "mmsg", &Setup::default()))
        .collect();
    let mut urls = Vec::new();
    let mut tokens = Vec::new();
    for a in &mut apps {
        let info = a.start_control();
        a.start_relay();
        urls.push(info.admin_url.clone());
        tokens.push(info.admin_token.clone());
    }
    (apps, urls, tokens)
}

/// `sluice-bench run --targets URLS --tokens TOKENS ARGS`: its stdout; fails on an error.
fn bench_across(urls: &[String], tokens: &[String], args: &[&str]) -> String {
    let out = std::process::Command::new(sluice_tests::daemons::bin("sluice-bench"))
        // `--tokens=`: a generated token may begin with `-`.
        .arg("run")
        .arg(format!("--targets={}", urls.join(",")))
        .arg(format!("--tokens={}", tokens.join(",")))
        .args(args)
        .output()
        .expect("run sluice-bench");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The per-node rows of a `--targets` report, split into columns.
fn node_rows(text: &str, urls: &[String]) -> Vec<Vec<String>> {
    text.lines()
        .skip_while(|l| !l.starts_with("per node:"))
        .filter(|l| urls.iter().any(|u| l.starts_with(u.as_str())))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// `sluice-bench run --targets`: static publishers and subscribers spread over three nodes
/// (publisher i and its subscribers on node i mod 3), real SRTP, figures per node.
#[test]
fn bench_spreads_static_subscribers_over_nodes() {
    ensure_binaries();
    let (_apps, urls, tokens) = three_static_nodes("cascade-bench");
    let text = bench_across(
        &urls,
        &tokens,
        &[
            "--publishers",
            "3",
            "--fanout",
            "10",
            "--rate",
            "300",
            "--duration",
            "2",
            "--quiet",
        ],
    );
    let rows = node_rows(&text, &urls);
    assert_eq!(rows.len(), 3, "{text}");
    for cols in rows {
        // NODE PUBS SUBS SENT DELIVERED PPS LOSS%
        assert_eq!(
            (cols[1].as_str(), cols[2].as_str()),
            ("1", "10"),
            "{cols:?}"
        );
        let delivered: u64 = cols[4].parse().expect("delivered");
        assert!(delivered > 0, "{cols:?}");
    }
}

/// `sluice-bench run --targets --cascade`: both publishers on the first node, the second
/// node's subscribers fed over a static trunk from it; the JSON report has every node's
/// delivered packets, loss, latency and relay CPU per delivered packet.
#[test]
fn bench_cascades_static_subscribers_over_a_trunk() {
    ensure_binaries();
    let (apps, urls, tokens) = three_static_nodes("cascade-trunk");
    let urls = &urls[..2];
    let tokens = &tokens[..2];
    let json = apps[0].dir.path().join("cascade-report.json");
    bench_across(
        urls,
        tokens,
        &[
            "--cascade",
            "--publishers",
            "2",
            "--fanout",
            "10",
            "--rate",
            "100",
            "--duration",
            "3",
            "--quiet",
            "--json",
            json.to_str().expect("path"),
        ],
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("json");
    let nodes = report["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{report}");
    for (n, url) in nodes.iter().zip(urls) {
        assert_eq!(n["node"], url.as_str());
        assert_eq!(
            (n["publishers"].as_u64(), n["subscribers"].as_u64()),
            (Some(1), Some(10))
        );
        let (delivered, expected) = (
            n["delivered"].as_u64().expect("delivered"),
            n["expected"].as_u64().expect("expected"),
        );
        // A loaded CI machine may drop a few; most must arrive, through the trunk too.
        assert!(delivered * 10 >= expected * 9, "{}", report["nodes"]);
        assert!(n["latency"]["p50_us"].as_f64().expect("p50") > 0.0, "{n}");
        assert!(n["relay_cpu_s"].as_f64().is_some(), "{n}");
        assert!(n["relay_cpu_ns_per_delivered"].as_f64().is_some(), "{n}");
    }
    // Each node's statistics carry its relay's CPU time, read from its control.
    let stats = &report["target_stats"]["before"];
    assert!(
        stats[urls[0].as_str()]["relay_cpu_seconds"].is_number(),
        "{stats}"
    );
}
