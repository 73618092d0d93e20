//! A Sluice cluster on one Redis (docs/CLUSTER.md): control nodes as real processes on
//! loopback, a `redis-server` the test starts on a free loopback port. Checks the registry
//! (nodes appear with their URLs and load, and leave by themselves when they die), room
//! placement (two nodes racing for one room: one owner; a join sent to any node lands on the
//! owner, forwarded with its bearer token), failure (a dead owner's room is placed again; a
//! Redis outage keeps owned rooms joinable and refuses new ones with a reason; the cluster
//! heals when Redis returns), the `sluice_cluster_*` metrics, the placement audit and
//! `sluicectl cluster status`.

use serde_json::Value;
use sluice_tests::daemons::*;
use sluice_tests::skip::skip;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HEARTBEAT_MS: u32 = 200;
/// Long enough that a heartbeat delayed by a loaded machine does not drop a live node.
const TTL_MS: u32 = 2_000;
/// The signing key every node of the test cluster holds (base64 of 32 bytes).
const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const FP: &str = "sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E";

fn free_port() -> u16 {
    sluice_tests::free_port_on(std::net::IpAddr::from([127, 0, 0, 1]))
}

/// `redis-server` on a loopback port, no persistence; `None` (skipped) when not installed.
struct Redis {
    bind: String,
    password: Option<String>,
    port: u16,
    proc_: Option<Proc>,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start(dir: &Path) -> Option<Redis> {
        Redis::start_on(dir, "127.0.0.1", None)
    }

    /// On `bind`; with a password (required off loopback: Redis's protected mode refuses
    /// clients from elsewhere when there is none).
    fn start_on(dir: &Path, bind: &str, password: Option<&str>) -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            skip("redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let mut r = Redis {
            bind: bind.to_string(),
            password: password.map(str::to_string),
            port: free_port(),
            proc_: None,
            dir: dir.to_path_buf(),
        };
        r.restart();
        Some(r)
    }

    fn url(&self) -> String {
        let auth = self
            .password
            .as_ref()
            .map_or(String::new(), |p| format!(":{p}@"));
        format!("redis://{auth}{}:{}", self.bind, self.port)
    }

    /// Start (again) on the same port.
    fn restart(&mut self) {
        let mut c = Command::new("redis-server");
        c.args(["--bind", &self.bind, "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir);
        if let Some(p) = &self.password {
            c.args(["--requirepass", p]);
        }
        self.proc_ = Some(Proc::spawn("redis-server", c, &self.dir, Stdio::null()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((self.bind.as_str(), self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc_.take() {
            p.kill9();
        }
    }
}

/// One control node of the cluster (no relay: placement and signalling only).
struct Node {
    app: Appliance,
    /// `http://IP:PORT` or `unix:PATH`.
    admin_url: String,
    url: String,
    admin_token: String,
}

impl Node {
    fn start(id: &str, region: &str, redis: &str, prefix: &str) -> Node {
        Node::start_in(id, region, redis, prefix, None)
    }

    /// [`Node::start`]; with `netns = (namespace, address)`, control runs in that network
    /// namespace and listens (and binds the relay's address) on `address`.
    fn start_in(
        id: &str,
        region: &str,
        redis: &str,
        prefix: &str,
        netns: Option<(&str, &str)>,
    ) -> Node {
        // In a namespace the admin API is on a unix socket the test reaches through the
        // file system (it listens only on loopback or a socket).
        let setup = Setup {
            unix_admin: netns.is_some(),
            ..Setup::default()
        };
        let mut app = Appliance::setup(&format!("cluster-{id}"), "mmsg", &setup);
        let mut text = std::fs::read_to_string(&app.config).expect("config");
        if let Some((_, ip)) = netns {
            text = text
                .replace(
                    "[control]\n",
                    &format!(
                        "[control]\npublic_listen = \"{ip}:8080\"\npublic_addresses = [\"{ip}\"]\n"
                    ),
                )
                .replace("bind = \"127.0.0.1:", &format!("bind = \"{ip}:"));
        }
        text.push_str(&format!(
            "\n[cluster]\nredis_url = \"{redis}\"\nnode_id = \"{id}\"\nregion = \"{region}\"\n\
             heartbeat_ms = {HEARTBEAT_MS}\nentry_ttl_ms = {TTL_MS}\nkey_prefix = \"{prefix}\"\n"
        ));
        std::fs::write(&app.config, text).expect("write config");
        let info = match netns {
            None => app.start_control(),
            Some((ns, _)) => {
                // `ip netns exec` execs control: the pid is control's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("sluice-control"));
                app.env(&mut c);
                c.arg("--config").arg(&app.config);
                let mut p = Proc::spawn("sluice-control", c, app.dir.path(), Stdio::null());
                let info = app.wait_runtime_info(p.pid(), Some(&mut p));
                app.control = Some(p);
                info
            }
        };
        let n = Node {
            admin_url: info.admin_url.clone(),
            url: info.public_url.clone(),
            admin_token: info.admin_token.clone(),
            app,
        };
        let (st, b) = n.admin("POST", "/v1/apps", r#"{"id":"live"}"#);
        assert_eq!(st, 201, "create app: {b}");
        let (st, b) = n.admin(
            "POST",
            "/v1/apps/live/keys",
            &format!(r#"{{"kid":"shared","secret":"{KEY_B64}"}}"#),
        );
        assert_eq!(st, 201, "add key: {b}");
        // Only the shared key signs and verifies (the one made with the app is per node).
        let (st, b) = n.admin("DELETE", "/v1/apps/live/keys/k1", "");
        assert!(st < 300, "delete key: {b}");
        n
    }

    fn admin(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let (st, _, b) = request(
            &self.admin_url,
            method,
            path,
            &[
                ("Authorization", format!("Bearer {}", self.admin_token)),
                ("Content-Type", "application/json".into()),
            ],
            body,
        )
        .expect("admin request");
        (st, b)
    }

    fn cluster(&self) -> (u16, Value) {
        let (st, b) = self.admin("GET", "/v1/cluster", "");
        (st, serde_json::from_str(&b).unwrap_or(Value::Null))
    }

    fn sessions(&self) -> usize {
        let (st, b) = self.admin("GET", "/v1/sessions", "");
        assert_eq!(st, 200, "{b}");
        let v: Value = serde_json::from_str(&b).expect("json");
        v.as_array()
            .or_else(|| v["sessions"].as_array())
            .map_or(0, Vec::len)
    }

    fn mint(&self, room: &str, role: &str) -> String {
        let (st, b) = self.admin(
            "POST",
            "/v1/tokens",
            &format!(r#"{{"app":"live","room":"{room}","role":"{role}","ttl_secs":600}}"#),
        );
        assert_eq!(st, 201, "mint: {b}");
        let v: Value = serde_json::from_str(&b).expect("json");
        v["token"].as_str().expect("token").to_string()
    }

    fn metrics(&self) -> String {
        self.admin("GET", "/metrics", "").1
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.app.dir.path().join("audit/audit.log")).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.app.control.take() {
            p.kill9();
        }
    }

    fn log(&self) -> String {
        self.app
            .control
            .as_ref()
            .map(Proc::log_text)
            .unwrap_or_default()
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// An answer: status, headers (names lowercased), body.
type Answer = (u16, Vec<(String, String)>, String);

/// One HTTP/1.1 exchange: status, headers (names lowercased), body. `Err` when the node
/// cannot be reached.
fn request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> std::io::Result<Answer> {
    let (host, mut s): (&str, Box<dyn ReadWrite>) = match base.strip_prefix("unix:") {
        Some(path) => {
            let s = std::os::unix::net::UnixStream::connect(path)?;
            s.set_read_timeout(Some(Duration::from_secs(15)))?;
            ("localhost", Box::new(s))
        }
        None => {
            let host = base.strip_prefix("http://").expect("http URL");
            let addr: SocketAddr = host.parse().expect("IP:PORT");
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(15)))?;
            (host, Box::new(s))
        }
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (h, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = h.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let hs = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, hs, b.to_string()))
}

fn offer(dir: &str, ssrc: u32) -> String {
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:{FP}\r\n\
a=setup:actpass\r\na=rtcp-mux\r\na={dir}\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\na=ssrc-group:FID {ssrc} {r}\r\na=ssrc:{ssrc} cname:x\r\na=ssrc:{r} cname:x\r\n",
        r = ssrc + 1
    )
}

/// A WHIP (publish) or WHEP (watch) join sent to `base`: status, `Location`, body.
fn join(base: &str, publish: bool, room: &str, token: &str) -> (u16, Option<String>, String) {
    let (kind, dir) = if publish {
        ("whip", "sendonly")
    } else {
        ("whep", "recvonly")
    };
    match request(
        base,
        "POST",
        &format!("/{kind}/live/{room}"),
        &[
            ("Authorization", format!("Bearer {token}")),
            ("Content-Type", "application/sdp".into()),
        ],
        &offer(dir, 1000 + room.len() as u32),
    ) {
        Ok((st, h, b)) => {
            let loc = h
                .iter()
                .find(|(k, _)| k == "location")
                .map(|(_, v)| v.clone());
            (st, loc, b)
        }
        Err(e) => (0, None, e.to_string()),
    }
}

fn reason(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Wait until `f` holds, or fail with `what`.
fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn node_ids(v: &Value) -> Vec<String> {
    v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["node_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn owner(v: &Value, room: &str) -> Option<String> {
    v["rooms"].as_array()?.iter().find_map(|r| {
        (r["room"] == room)
            .then(|| r["owner"].as_str().map(str::to_string))
            .flatten()
    })
}

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

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

/// Three network namespaces on one bridge in the test's namespace (which runs Redis and the
/// clients): `10.{net}.0.1` the bridge, `10.{net}.0.11..=13` the namespaces.
struct Namespaces {
    names: Vec<String>,
    bridge: String,
    net: u32,
}

impl Namespaces {
    fn create() -> Option<Namespaces> {
        let id = std::process::id();
        let net = 100 + id % 150;
        let mut n = Namespaces {
            names: Vec::new(),
            bridge: format!("slcb{}", id % 100_000),
            net,
        };
        let run = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !run(&["link", "add", &n.bridge, "type", "bridge"]) {
            skip("cannot create a bridge (needs root and iproute2)");
            return None;
        }
        let br = n.bridge.clone();
        assert!(run(&[
            "addr",
            "add",
            &format!("10.{net}.0.1/24"),
            "dev",
            &br
        ]));
        assert!(run(&["link", "set", &br, "up"]));
        for i in 1..=3 {
            let ns = format!("slc{}n{i}", id % 100_000);
            let (host, inner) = (
                format!("slch{}{i}", id % 100_000),
                format!("slci{}{i}", id % 100_000),
            );
            assert!(run(&["netns", "add", &ns]), "netns add {ns}");
            n.names.push(ns.clone());
            assert!(run(&[
                "link", "add", &host, "type", "veth", "peer", "name", &inner
            ]));
            assert!(run(&["link", "set", &inner, "netns", &ns]));
            assert!(run(&["link", "set", &host, "master", &br, "up"]));
            let addr = format!("10.{net}.0.1{i}/24");
            assert!(run(&["-n", &ns, "addr", "add", &addr, "dev", &inner]));
            assert!(run(&["-n", &ns, "link", "set", &inner, "up"]));
            assert!(run(&["-n", &ns, "link", "set", "lo", "up"]));
        }
        Some(n)
    }

    fn host(&self) -> String {
        format!("10.{}.0.1", self.net)
    }

    fn addr(&self, i: usize) -> String {
        format!("10.{}.0.1{}", self.net, i + 1)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
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
