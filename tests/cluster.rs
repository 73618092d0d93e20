//! A Sluice cluster on one Redis (docs/CLUSTER.md): control nodes as real processes on
//! loopback, a `redis-server` the test starts on a free loopback port. Checks the registry
//! (nodes appear with their URLs and load, and leave by themselves when they die), room
//! placement (two nodes racing for one room: one owner; a join sent to any node lands on the
//! owner, forwarded with its bearer token), failure (a dead owner's room is placed again; a
//! Redis outage keeps owned rooms joinable and refuses new ones with a reason; the cluster
//! heals when Redis returns), the `sluice_cluster_*` metrics, the placement audit and
//! `sluicectl cluster status`.

use sluice_tests::cluster_rig::*;
use sluice_tests::daemons::*;
use std::time::{Duration, Instant};

/// Registry, placement by region, forwarding with the bearer token, `Location` on the owner,
/// `DELETE` through it, metrics, audit and `sluicectl cluster status`.
#[test]
fn registry_placement_and_forwarding() {
    ensure_binaries();
    let tmp = sluice_tests::TempDir::new("cluster-redis-1");
    let Some(mut redis) = Redis::start(tmp.path()) else {
        return;
    };
    let url = redis.url();
    let a = Node::start("a", "eu", &url, "t1");
    let b = Node::start("b", "eu", &url, "t1");
    let c = Node::start("c", "us", &url, "t1");
    eventually("three nodes registered", Duration::from_secs(10), || {
        node_ids(&a.cluster().1) == ["a", "b", "c"]
    });
    let (_, v) = c.cluster();
    let na = &v["nodes"][0];
    assert_eq!(na["region"], "eu");
    assert_eq!(na["public_url"], a.url.as_str());
    assert!(na["load"]["free_sessions"].as_u64().unwrap() > 0, "{na}");
    assert_eq!(v["node_id"], "c");

    // A publisher sent to b: the room is placed on b (equal load, the receiving node wins).
    let tok_pub = a.mint("r1", "speaker");
    let (st, loc, body) = join(&b.url, true, "r1", &tok_pub);
    assert_eq!(st, 201, "{body}\n{}", b.log());
    assert!(loc.unwrap().starts_with("/whip/resource/"));
    assert_eq!(owner(&a.cluster().1, "r1").as_deref(), Some("b"));
    // Viewers sent to a and c are forwarded to b, token and all; the answer is b's.
    let tok_view = c.mint("r1", "viewer");
    let mut locs = Vec::new();
    for n in [&a, &c, &a] {
        let (st, loc, body) = join(&n.url, false, "r1", &tok_view);
        assert_eq!(st, 201, "{body}\n{}", n.log());
        assert!(body.starts_with("v=0"), "{body}");
        let loc = loc.expect("Location");
        assert!(
            loc.starts_with(&format!("{}/whep/resource/", b.url)),
            "{loc}"
        );
        locs.push(loc);
    }
    assert_eq!((a.sessions(), b.sessions(), c.sessions()), (0, 4, 0));
    // A bad token is refused at the receiving node, never forwarded.
    let (st, _, body) = join(&a.url, false, "r1", "x.y.z");
    assert_eq!(st, 401, "{body}");
    // The client's DELETE goes to the absolute Location, on the owner.
    let l = locs.pop().unwrap();
    let path = &l[b.url.len()..];
    let (st, _, _) = request(&b.url, "DELETE", path, &[], "").unwrap();
    assert_eq!(st, 200);
    assert_eq!(b.sessions(), 3);

    // A room first joined through c (region us) is placed in us, on c, although the eu
    // nodes are as free.
    let (st, _, body) = join(&c.url, true, "r2", &a.mint("r2", "speaker"));
    assert_eq!(st, 201, "{body}");
    assert_eq!(owner(&a.cluster().1, "r2").as_deref(), Some("c"));

    let m = a.metrics();
    assert_eq!(metric(&m, "sluice_cluster_redis_up "), 1.0, "{m}");
    eventually("a sees three nodes", Duration::from_secs(10), || {
        metric(&a.metrics(), "sluice_cluster_nodes ") == 3.0
    });
    assert_eq!(
        metric(&m, "sluice_cluster_forwarded_total{result=\"ok\"} "),
        2.0
    );
    assert_eq!(metric(&b.metrics(), "sluice_cluster_rooms_owned "), 1.0);
    let audit = b.audit();
    assert!(
        audit.lines().any(|l| l.contains("cluster.place")
            && l.contains("\"owner\":\"b\"")
            && l.contains("\"placed\":true")),
        "{audit}"
    );

    let out = a.app.ctl_ok(&["cluster", "status"]);
    assert!(out.contains("r1") && out.contains("NODE"), "{out}");
    for id in ["a", "b", "c"] {
        assert!(out.lines().any(|l| l.starts_with(id)), "{out}");
    }
    let v = a.app.ctl_json(&["cluster", "status"]);
    assert_eq!(owner(&v, "r1").as_deref(), Some("b"));
    redis.kill();
}

/// Joins for one new room sent to two nodes at the same moment: exactly one owner, and
/// every session of the room on it.
#[test]
fn racing_placements_have_one_owner() {
    ensure_binaries();
    let tmp = sluice_tests::TempDir::new("cluster-redis-2");
    let Some(mut redis) = Redis::start(tmp.path()) else {
        return;
    };
    let url = redis.url();
    let a = Node::start("a", "eu", &url, "t2");
    let b = Node::start("b", "eu", &url, "t2");
    eventually("two nodes registered", Duration::from_secs(10), || {
        node_ids(&b.cluster().1).len() == 2
    });
    const ROOMS: usize = 12;
    for i in 0..ROOMS {
        let room = format!("race{i}");
        let tok = a.mint(&room, "viewer");
        let (ua, ub) = (a.url.clone(), b.url.clone());
        let (ra, tb) = (room.clone(), tok.clone());
        let t = std::thread::spawn(move || join(&ua, false, &ra, &tb).0);
        let sb = join(&ub, false, &room, &tok).0;
        let sa = t.join().unwrap();
        assert_eq!((sa, sb), (201, 201), "room {room}");
    }
    let v = a.cluster().1;
    let rooms = v["rooms"].as_array().expect("rooms");
    assert_eq!(rooms.len(), ROOMS, "{v}");
    let on_a = rooms.iter().filter(|r| r["owner"] == "a").count();
    assert_eq!(a.sessions(), 2 * on_a, "{v}");
    assert_eq!(b.sessions(), 2 * (ROOMS - on_a), "{v}");
    redis.kill();
}

/// A dead node leaves the registry and its room is placed again; Redis killed and restarted:
/// owned rooms stay joinable, new rooms are refused with a reason, the cluster heals.
#[test]
fn node_death_and_redis_outage() {
    ensure_binaries();
    let tmp = sluice_tests::TempDir::new("cluster-redis-3");
    let Some(mut redis) = Redis::start(tmp.path()) else {
        return;
    };
    let url = redis.url();
    let a = Node::start("a", "eu", &url, "t3");
    let mut b = Node::start("b", "eu", &url, "t3");
    let c = Node::start("c", "eu", &url, "t3");
    eventually("three nodes registered", Duration::from_secs(10), || {
        node_ids(&a.cluster().1).len() == 3
    });
    let tok = a.mint("show", "viewer");
    let (st, _, body) = join(&b.url, false, "show", &tok);
    assert_eq!(st, 201, "{body}");
    assert_eq!(owner(&a.cluster().1, "show").as_deref(), Some("b"));

    // b dies: a viewer that tries b cannot connect and rejoins through c, which places the
    // room again once b's entry has expired.
    b.kill();
    let (st, _, _) = join(&b.url, false, "show", &tok);
    assert_eq!(st, 0, "a dead node answers nothing");
    let (st, _, body) = join(&c.url, false, "show", &tok);
    assert!(
        st == 201 || (st == 502 && reason(&body) == "owner_unreachable"),
        "{st} {body}"
    );
    eventually("b leaves the registry", Duration::from_secs(15), || {
        !node_ids(&a.cluster().1).contains(&"b".to_string())
    });
    let (st, _, body) = join(&c.url, false, "show", &tok);
    assert_eq!(st, 201, "{body}");
    let new_owner = owner(&a.cluster().1, "show").expect("placed again");
    assert_ne!(new_owner, "b");
    let (owner_node, other) = if new_owner == "a" { (&a, &c) } else { (&c, &a) };

    // Redis dies mid-call.
    redis.kill();
    eventually("nodes see Redis down", Duration::from_secs(5), || {
        metric(&owner_node.metrics(), "sluice_cluster_redis_up ") == 0.0
    });
    // The owner keeps serving its room: a join there needs no Redis.
    let (st, _, body) = join(&owner_node.url, false, "show", &tok);
    assert_eq!(st, 201, "{body}");
    // A new room cannot be placed: refused with a reason (and Retry-After).
    let tok2 = a.mint("fresh", "speaker");
    for n in [&a, &c] {
        let (st, _, body) = join(&n.url, true, "fresh", &tok2);
        assert_eq!(
            (st, reason(&body).as_str()),
            (503, "cluster_unavailable"),
            "{body}"
        );
    }
    // The other node cannot look the owner up: refused the same way, never served locally.
    let (st, _, body) = join(&other.url, false, "show", &tok);
    assert_eq!(
        (st, reason(&body).as_str()),
        (503, "cluster_unavailable"),
        "{body}"
    );
    let (st, v) = a.cluster();
    assert_eq!(
        (st, v["reason"].as_str()),
        (503, Some("cluster_unavailable"))
    );
    assert!(owner_node.audit().contains("cluster.redis"));

    // Redis returns, empty: the nodes register again and the owner writes its room back.
    redis.restart();
    eventually("the cluster heals", Duration::from_secs(10), || {
        let v = a.cluster().1;
        node_ids(&v) == ["a", "c"] && owner(&v, "show").as_deref() == Some(new_owner.as_str())
    });
    let (st, _, body) = join(&other.url, false, "show", &tok);
    assert_eq!(st, 201, "{body}");
    let (st, _, body) = join(&c.url, true, "fresh", &tok2);
    assert_eq!(st, 201, "{body}");
    let m = owner_node.metrics();
    assert!(metric(&m, "sluice_cluster_heartbeats_total{result=\"failed\"} ") >= 1.0);
    assert!(
        metric(
            &a.metrics(),
            "sluice_cluster_joins_total{placement=\"refused\"} "
        ) >= 1.0
    );
    drop(b);
    redis.kill();
}

/// Real WebRTC across two nodes: an aiortc publisher on node a (with its relay), an aiortc
/// viewer whose WHEP goes to node b and is forwarded to a; Redis is killed while the viewer
/// decodes, and the frames keep coming (media never touches Redis); the viewer's DELETE goes
/// to the absolute Location on a.
#[test]
fn media_continues_through_a_redis_outage() {
    if !sluice_tests::aiortc::available() {
        return;
    }
    ensure_binaries();
    let tmp = sluice_tests::TempDir::new("cluster-redis-4");
    let Some(mut redis) = Redis::start(tmp.path()) else {
        return;
    };
    let url = redis.url();
    let mut a = Node::start("a", "eu", &url, "t4");
    a.app.start_relay();
    let b = Node::start("b", "eu", &url, "t4");
    eventually("two nodes registered", Duration::from_secs(10), || {
        node_ids(&b.cluster().1).len() == 2
    });
    let pub_token = a.mint("m1", "host");
    let (mut publisher, pub_rx) = sluice_tests::aiortc::spawn(
        &[
            "publish",
            &format!("{}/whip/live/m1", a.url),
            &pub_token,
            "40",
        ],
        "whip",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pub_rx
        .recv_timeout(Duration::from_millis(200))
        .is_ok_and(|l| l.starts_with("answer"))
    {
        assert!(
            Instant::now() < deadline,
            "publisher got no answer\n{}",
            a.log()
        );
    }
    assert_eq!(owner(&b.cluster().1, "m1").as_deref(), Some("a"));
    // 150 frames at 30 fps: about five seconds, most of them after Redis is gone.
    let (mut watcher, view_rx) = sluice_tests::aiortc::spawn(
        &[
            "watch",
            &format!("{}/whep/live/m1", b.url),
            &b.mint("m1", "viewer"),
            "150",
            "30",
        ],
        "whep",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !view_rx
        .recv_timeout(Duration::from_millis(200))
        .is_ok_and(|l| l.starts_with("frames=20 "))
    {
        assert!(
            Instant::now() < deadline,
            "the viewer decodes nothing\n{}",
            a.log()
        );
    }
    redis.kill();
    let killed = Instant::now();
    // Meanwhile a new room cannot be placed.
    let (st, _, body) = join(&b.url, true, "other", &b.mint("other", "host"));
    assert_eq!(
        (st, reason(&body).as_str()),
        (503, "cluster_unavailable"),
        "{body}"
    );
    let status = watcher.wait().expect("wait watcher");
    let frames: u64 = view_rx
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("frames="))
                .and_then(|n| n.parse().ok())
        })
        .last()
        .unwrap_or(0);
    assert!(
        status.success(),
        "viewer: {status}, {frames} frames\n{}",
        a.log()
    );
    assert!(frames >= 150, "{frames} frames");
    assert!(
        killed.elapsed() > Duration::from_secs(2),
        "the frames came after Redis died"
    );
    assert_eq!(metric(&a.metrics(), "sluice_cluster_redis_up "), 0.0);
    let _ = publisher.kill();
    let _ = publisher.wait();
}

/// Three nodes, each in its own network namespace joined by veth links, and one Redis: a
/// publisher placed on a; viewers sent to b and c are forwarded over the veth links to a;
/// b is killed: a viewer that tries it cannot connect, and rejoins through c.
#[test]
fn three_nodes_in_network_namespaces() {
    ensure_binaries();
    let Some(ns) = Namespaces::create() else {
        return;
    };
    let tmp = sluice_tests::TempDir::new("cluster-redis-5");
    let Some(mut redis) = Redis::start_on(tmp.path(), &ns.host(), Some("cluster-test-pw")) else {
        return;
    };
    let url = redis.url();
    let ids = ["a", "b", "c"];
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let addr = ns.addr(i);
            Node::start_in(ids[i], "eu", &url, "t5", Some((&ns.names[i], &addr)))
        })
        .collect();
    eventually("three nodes registered", Duration::from_secs(10), || {
        node_ids(&nodes[0].cluster().1) == ids
    });
    let v = nodes[2].cluster().1;
    assert_eq!(
        v["nodes"][0]["public_url"],
        format!("http://{}:8080", ns.addr(0))
    );
    let (st, _, body) = join(&nodes[0].url, true, "wide", &nodes[0].mint("wide", "host"));
    assert_eq!(st, 201, "{body}");
    let tok = nodes[1].mint("wide", "viewer");
    for i in [1, 2, 1, 2, 1, 2] {
        let (st, loc, body) = join(&nodes[i].url, false, "wide", &tok);
        assert_eq!(st, 201, "{body}");
        assert!(loc.unwrap().starts_with(&nodes[0].url));
    }
    assert_eq!(
        (
            nodes[0].sessions(),
            nodes[1].sessions(),
            nodes[2].sessions()
        ),
        (7, 0, 0)
    );
    nodes[1].kill();
    let (st, _, _) = join(&nodes[1].url, false, "wide", &tok);
    assert_eq!(st, 0, "a dead node answers nothing");
    let (st, _, body) = join(&nodes[2].url, false, "wide", &tok);
    assert_eq!(st, 201, "{body}");
    assert_eq!(nodes[0].sessions(), 8);
    eventually("b leaves the registry", Duration::from_secs(15), || {
        node_ids(&nodes[0].cluster().1) == ["a", "c"]
    });
    // The Redis password is in no log and no audit entry.
    for n in [&nodes[0], &nodes[2]] {
        assert!(!n.log().contains("cluster-test-pw") && !n.audit().contains("cluster-test-pw"));
        assert!(n.audit().contains("cluster.redis"));
    }
    drop(nodes);
    redis.kill();
}
