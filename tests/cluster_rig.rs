//! A Sluice cluster for tests (docs/CLUSTER.md): a `redis-server` the test starts, control
//! nodes (optionally each with its relay, optionally each in its own network namespace on a
//! bridge), and the HTTP, WHIP/WHEP and metrics helpers the cluster tests share
//! (tests/cluster.rs, tests/cascade.rs).

use crate::daemons::*;
use crate::skip::skip;
use contract::config::RuntimeInfo;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const HEARTBEAT_MS: u32 = 200;
/// Long enough that a heartbeat delayed by a loaded machine does not drop a live node.
pub const TTL_MS: u32 = 2_000;
/// The signing key every node of the test cluster holds (base64 of 32 bytes).
pub const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub const FP: &str = "sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E";

pub fn free_port() -> u16 {
    crate::free_port_on(std::net::IpAddr::from([127, 0, 0, 1]))
}

/// `redis-server` on a loopback port, no persistence; `None` (skipped) when not installed.
pub struct Redis {
    pub bind: String,
    pub password: Option<String>,
    pub port: u16,
    pub proc_: Option<Proc>,
    pub dir: std::path::PathBuf,
}

impl Redis {
    pub fn start(dir: &Path) -> Option<Redis> {
        Redis::start_on(dir, "127.0.0.1", None)
    }

    /// On `bind`; with a password (required off loopback: Redis's protected mode refuses
    /// clients from elsewhere when there is none).
    pub fn start_on(dir: &Path, bind: &str, password: Option<&str>) -> Option<Redis> {
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

    pub fn url(&self) -> String {
        let auth = self
            .password
            .as_ref()
            .map_or(String::new(), |p| format!(":{p}@"));
        format!("redis://{auth}{}:{}", self.bind, self.port)
    }

    /// Start (again) on the same port.
    pub fn restart(&mut self) {
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

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc_.take() {
            p.kill9();
        }
    }
}

/// One control node of the cluster (no relay: placement and signalling only).
pub struct Node {
    /// The network namespace control (and its relay) runs in.
    pub netns: Option<String>,
    pub app: Appliance,
    /// `http://IP:PORT` or `unix:PATH`.
    pub admin_url: String,
    pub url: String,
    pub admin_token: String,
}

impl Node {
    pub fn start(id: &str, region: &str, redis: &str, prefix: &str) -> Node {
        Node::start_in(id, region, redis, prefix, None)
    }

    /// [`Node::start`]; with `netns = (namespace, address)`, control runs in that network
    /// namespace and listens (and binds the relay's address) on `address`.
    pub fn start_in(
        id: &str,
        region: &str,
        redis: &str,
        prefix: &str,
        netns: Option<(&str, &str)>,
    ) -> Node {
        Node::start_with(id, region, redis, prefix, netns, "")
    }

    /// [`Node::start_in`] with `extra` appended to its `[cluster]` section.
    pub fn start_with(
        id: &str,
        region: &str,
        redis: &str,
        prefix: &str,
        netns: Option<(&str, &str)>,
        extra: &str,
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
             heartbeat_ms = {HEARTBEAT_MS}\nentry_ttl_ms = {TTL_MS}\nkey_prefix = \"{prefix}\"\n{extra}"
        ));
        std::fs::write(&app.config, text).expect("write config");
        let info = spawn_control(&mut app, netns.map(|(ns, _)| ns));
        let n = Node {
            netns: netns.map(|(ns, _)| ns.to_string()),
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

    /// Kill control (SIGKILL) and start it again on the same state; the relay runs on.
    pub fn restart_control(&mut self) {
        self.kill();
        let ns = self.netns.clone();
        let info = spawn_control(&mut self.app, ns.as_deref());
        self.admin_url = info.admin_url;
        self.admin_token = info.admin_token;
    }

    /// Start this node's relay (in its namespace, if any) and wait until it serves.
    pub fn start_relay(&mut self) {
        let Some(ns) = self.netns.clone() else {
            self.app.start_relay();
            return;
        };
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns]).arg(bin("sluice-relay"));
        self.app.env(&mut c);
        c.arg("--config").arg(&self.app.config).arg("--no-pin");
        let p = Proc::spawn_lines("sluice-relay", c, self.app.dir.path());
        self.app.wait_relay(&p);
        self.app.relay = Some(p);
    }

    /// Kill control and relay (SIGKILL): the node dies without leaving the registry.
    pub fn kill_all(&mut self) {
        self.kill();
        if let Some(mut p) = self.app.relay.take() {
            p.kill9();
        }
    }

    pub fn admin(&self, method: &str, path: &str, body: &str) -> (u16, String) {
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

    pub fn cluster(&self) -> (u16, Value) {
        let (st, b) = self.admin("GET", "/v1/cluster", "");
        (st, serde_json::from_str(&b).unwrap_or(Value::Null))
    }

    pub fn sessions(&self) -> usize {
        let (st, b) = self.admin("GET", "/v1/sessions", "");
        assert_eq!(st, 200, "{b}");
        let v: Value = serde_json::from_str(&b).expect("json");
        v.as_array()
            .or_else(|| v["sessions"].as_array())
            .map_or(0, Vec::len)
    }

    pub fn mint(&self, room: &str, role: &str) -> String {
        let (st, b) = self.admin(
            "POST",
            "/v1/tokens",
            &format!(r#"{{"app":"live","room":"{room}","role":"{role}","ttl_secs":600}}"#),
        );
        assert_eq!(st, 201, "mint: {b}");
        let v: Value = serde_json::from_str(&b).expect("json");
        v["token"].as_str().expect("token").to_string()
    }

    pub fn metrics(&self) -> String {
        self.admin("GET", "/metrics", "").1
    }

    pub fn audit(&self) -> String {
        std::fs::read_to_string(self.app.dir.path().join("audit/audit.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.app.control.take() {
            p.kill9();
        }
    }

    pub fn log(&self) -> String {
        self.app
            .control
            .as_ref()
            .map(Proc::log_text)
            .unwrap_or_default()
    }
}

/// Start `app`'s control (in network namespace `ns`, if any) and wait for its runtime file.
fn spawn_control(app: &mut Appliance, ns: Option<&str>) -> RuntimeInfo {
    match ns {
        None => app.start_control(),
        Some(ns) => {
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
    }
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// An answer: status, headers (names lowercased), body.
pub type Answer = (u16, Vec<(String, String)>, String);

/// One HTTP/1.1 exchange: status, headers (names lowercased), body. `Err` when the node
/// cannot be reached.
pub fn request(
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

pub fn offer(dir: &str, ssrc: u32) -> String {
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
pub fn join(base: &str, publish: bool, room: &str, token: &str) -> (u16, Option<String>, String) {
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

pub fn reason(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Wait until `f` holds, or fail with `what`.
pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn node_ids(v: &Value) -> Vec<String> {
    v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["node_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn owner(v: &Value, room: &str) -> Option<String> {
    v["rooms"].as_array()?.iter().find_map(|r| {
        (r["room"] == room)
            .then(|| r["owner"].as_str().map(str::to_string))
            .flatten()
    })
}

pub fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

/// Three network namespaces on one bridge in the test's namespace (which runs Redis and the
/// clients): `10.{net}.0.1` the bridge, `10.{net}.0.11..=13` the namespaces.
pub struct Namespaces {
    pub names: Vec<String>,
    pub bridge: String,
    pub net: u32,
}

impl Namespaces {
    pub fn create() -> Option<Namespaces> {
        // Unique per test of this process too: tests of one binary run in parallel.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = (std::process::id() % 10_000) * 10 + seq % 10;
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

    pub fn host(&self) -> String {
        format!("10.{}.0.1", self.net)
    }

    pub fn addr(&self, i: usize) -> String {
        format!("10.{}.0.1{}", self.net, i + 1)
    }

    /// Drop every UDP datagram from `from` arriving in namespace `i` (an nftables rule in
    /// the namespace's own table, gone with the namespace): media between relays stops,
    /// HTTP between controls goes on. False (and a SKIP line) when `nft` cannot do it.
    pub fn drop_udp_from(&self, i: usize, from: &str) -> bool {
        let ns = &self.names[i];
        let rules = format!(
            "table inet sluice_cut {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  ip saddr {from} meta l4proto udp drop\n }}\n}}\n"
        );
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped());
        let ok = c.spawn().ok().and_then(|mut child| {
            child.stdin.take()?.write_all(rules.as_bytes()).ok()?;
            child.wait().ok()
        });
        if !ok.is_some_and(|s| s.success()) {
            skip("nft cannot add a rule in a network namespace (apt-get install nftables)");
            return false;
        }
        true
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
