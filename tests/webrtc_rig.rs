//! The appliance as the WebRTC end-to-end tests (aiortc, Chromium) need it: control and one
//! relay worker on loopback with the bootstrap `demo` application, WHIP/WHEP on control's
//! listener, and the admin calls those tests make (minting tokens, room state, metrics).
//! [`WebRtcRig::start_with`] puts the relay and the public (WHIP/WHEP) listener on another
//! address, e.g. a test bridge's (tests/netns.rs), with HTTPS, extra relay keys or ICE-TCP.

use crate::daemons::{bin, Proc};
use crate::{free_port_on, free_udp_port, TempDir};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "webrtc-e2e-admin-token-0123456789";

/// Running control + relay on a temporary config. Dropping it stops both and removes the shm
/// file.
pub struct WebRtcRig {
    // Field order is drop order: the daemons stop before their directory goes.
    relay: Option<Proc>,
    control: Option<Proc>,
    shm: PathBuf,
    dir: TempDir,
    /// `HOST:PORT` of control's admin (and, without [`RigOptions::public_ip`], also
    /// WHIP/WHEP) listener.
    pub admin: String,
    /// Base URL of WHIP/WHEP (`http://` or `https://`).
    public_url: String,
    /// The relay's media address (UDP, and TCP with [`RigOptions::ice_tcp`]).
    pub media: std::net::SocketAddr,
}

/// How [`WebRtcRig::start_with`] configures the appliance.
#[derive(Clone, Debug, Default)]
pub struct RigOptions {
    /// Address of the relay and of a public listener apart from the admin one (which stays
    /// on loopback); also the only address in the answers' candidates. None: all on 127.0.0.1,
    /// WHIP/WHEP on the admin listener.
    pub public_ip: Option<std::net::IpAddr>,
    /// `[http.tls]` certificate and key files (PEM) for the public listener.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Passive ICE-TCP on the relay's port (`relay.tcp.enabled`).
    pub ice_tcp: bool,
    /// More `[relay]` lines, e.g. `nack_cache_packets = 0`.
    pub relay_extra: String,
}

impl WebRtcRig {
    /// Start control, wait for its runtime file, then start the relay.
    pub fn start(tag: &str) -> WebRtcRig {
        WebRtcRig::start_with(tag, &RigOptions::default())
    }

    /// [`WebRtcRig::start`] configured by `opt`. One relay worker always: the tests' peers
    /// all meet the same worker, which ICE-TCP still requires (docs/IO.md "ICE-TCP").
    pub fn start_with(tag: &str, opt: &RigOptions) -> WebRtcRig {
        let dir = TempDir::new(tag);
        let d = dir.path();
        let shm = PathBuf::from(format!("/dev/shm/sluice-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&shm);
        let ip = opt
            .public_ip
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        let port = match opt.public_ip {
            Some(ip) => free_port_on(ip),
            None => free_udp_port(),
        };
        let public = match opt.public_ip {
            Some(ip) => format!("public_listen = \"{}\"\n", free_tcp_addr(ip)),
            None => String::new(),
        };
        let tls = opt.tls.as_ref().map_or(String::new(), |(cert, key)| {
            format!(
                "[http.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                cert.display(),
                key.display()
            )
        });
        let tcp = if opt.ice_tcp {
            "[relay.tcp]\nenabled = true\n"
        } else {
            ""
        };
        let cfg = d.join("sluice.toml");
        std::fs::write(
            &cfg,
            format!(
                "runtime_dir = \"{d}/run\"\n\
                 [relay]\nbind = \"{media}\"\nworkers = 1\n{extra}\n\
                 {tcp}\
                 [control]\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
                 {public}\
                 state_dir = \"{d}/state\"\naudit_log = \"{d}/log/audit.log\"\n\
                 bootstrap_app = \"demo\"\npublic_addresses = [\"{ip}\"]\n\
                 [shm]\npath = \"{s}\"\nsessions = 64\nroutes = 256\nworker_slots = 4\n\
                 {tls}",
                d = d.display(),
                media = std::net::SocketAddr::new(ip, port),
                extra = opt.relay_extra,
                s = shm.display()
            ),
        )
        .expect("config");
        // The config holds the admin token: control refuses it if others can read it.
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).expect("chmod");

        let mut cmd = Command::new(bin("sluice-control"));
        cmd.arg("--config").arg(&cfg).env_remove("NOTIFY_SOCKET");
        let control = Proc::spawn("sluice-control", cmd, d, Stdio::null());
        let rt = d.join("run/control.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        let info: serde_json::Value = loop {
            if let Some(v) = std::fs::read(&rt)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                break v;
            }
            assert!(
                Instant::now() < deadline,
                "control did not become ready:\n{}",
                control.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let admin = info["admin_url"]
            .as_str()
            .and_then(|u| u.strip_prefix("http://"))
            .expect("admin url")
            .to_string();
        let public_url = info["public_url"].as_str().expect("public url").to_string();
        let mut cmd = Command::new(bin("sluice-relay"));
        cmd.arg("--config").arg(&cfg);
        let relay = Proc::spawn("sluice-relay", cmd, d, Stdio::null());
        WebRtcRig {
            relay: Some(relay),
            control: Some(control),
            shm,
            dir,
            admin,
            public_url,
            media: std::net::SocketAddr::new(ip, port),
        }
    }

    /// The temporary directory (config, state, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PIDs of the relay and control processes (while they run).
    pub fn pids(&self) -> Vec<u32> {
        self.relay
            .iter()
            .chain(&self.control)
            .map(Proc::pid)
            .collect()
    }

    /// `http(s)://HOST:PORT` of the WHIP/WHEP endpoints.
    pub fn base(&self) -> String {
        self.public_url.clone()
    }

    /// One admin request with the admin token; returns status and body.
    pub fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.admin).expect("connect admin");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let status = out
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        (status, body)
    }

    /// A signed token of the `demo` application for `room` and `role` (`POST /v1/tokens`).
    pub fn mint(&self, room: &str, role: &str) -> String {
        let (st, body) = self.http(
            "POST",
            "/v1/tokens",
            &format!(r#"{{"app":"demo","room":"{room}","role":"{role}","ttl_secs":600}}"#),
        );
        assert_eq!(st, 201, "mint: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["token"].as_str().expect("token").to_string()
    }

    /// [`WebRtcRig::mint`] for subject `sub` (a subject may hold only a few sessions per
    /// room).
    pub fn mint_for(&self, room: &str, role: &str, sub: &str) -> String {
        let (st, body) = self.http(
            "POST",
            "/v1/tokens",
            &format!(
                r#"{{"app":"demo","room":"{room}","role":"{role}","ttl_secs":600,"sub":"{sub}"}}"#
            ),
        );
        assert_eq!(st, 201, "mint: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["token"].as_str().expect("token").to_string()
    }

    /// Control's stderr so far (for failure messages).
    pub fn control_log(&self) -> String {
        self.control
            .as_ref()
            .map(Proc::log_text)
            .unwrap_or_default()
    }

    /// Stop both daemons now (the metrics were read before).
    pub fn stop(&mut self) {
        self.relay.take();
        self.control.take();
    }
}

impl Drop for WebRtcRig {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.shm);
    }
}

/// `IP:PORT` with a TCP port free on `ip` now.
fn free_tcp_addr(ip: std::net::IpAddr) -> std::net::SocketAddr {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("free tcp port")
}

/// Where the browser driver (`browser.mjs`, playwright-core) lives.
pub fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("webrtc")
}

/// Why headless Chromium cannot run here, if it cannot: no browser, no node, or no
/// playwright-core.
pub fn unavailable() -> Option<String> {
    let chromium = std::env::var("SLUICE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).is_file() {
        return Some(format!(
            "{chromium} not installed (apt-get install chromium)"
        ));
    }
    let node = Command::new("node")
        .arg(script_dir().join("browser.mjs"))
        .arg("check")
        .current_dir(script_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match node {
        Err(e) => Some(format!("node not runnable: {e}")),
        Ok(s) if !s.success() => {
            Some("playwright-core not installed (npm ci --prefix tests/webrtc)".into())
        }
        Ok(_) => None,
    }
}

/// The `RESULT {json}` line the browser driver (`browser.mjs`) prints, read until the driver
/// exits or `timeout` passes, then its exit status (waited for up to 20 s more).
pub fn browser_result(
    browser: &mut Proc,
    timeout: Duration,
) -> (Option<serde_json::Value>, Option<std::process::ExitStatus>) {
    let mut result = None;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match browser.line(Duration::from_millis(200)) {
            Some(l) => {
                if let Some(json) = l.strip_prefix("RESULT ") {
                    result = serde_json::from_str::<serde_json::Value>(json).ok();
                }
            }
            None if browser.poll().is_some() => break,
            None => {}
        }
    }
    (result, browser.wait(Duration::from_secs(20)))
}

/// Run the browser driver's `session` command on `spec` (written to `dir`; see browser.mjs)
/// and return its `RESULT`, panicking with the driver's log when there is none. The driver may
/// take `spec.connectSecs + spec.seconds` plus start-up and teardown.
pub fn run_session(dir: &Path, name: &str, spec: &serde_json::Value) -> serde_json::Value {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, spec.to_string()).expect("write spec");
    let mut cmd = Command::new("node");
    cmd.arg(script_dir().join("browser.mjs"))
        .arg("session")
        .arg(&path)
        .current_dir(script_dir());
    let mut browser = Proc::spawn_lines(name, cmd, dir);
    let secs = spec["connectSecs"].as_u64().unwrap_or(30) + spec["seconds"].as_u64().unwrap_or(0);
    let (result, status) = browser_result(&mut browser, Duration::from_secs(secs + 90));
    let result = result.unwrap_or_else(|| {
        panic!(
            "{name}: no RESULT from the browser driver ({status:?}):\n{}",
            browser.log_text()
        )
    });
    if !status.is_some_and(|s| s.success()) {
        eprintln!(
            "{name}: driver exit {status:?} (not every viewer decoded):\n{}",
            browser.log_text()
        );
    }
    result
}

/// Per second of a `session` result, viewer `viewer`'s `frameWidth` (0 before its first
/// frame).
pub fn widths(r: &serde_json::Value, viewer: usize) -> Vec<u64> {
    r["series"]["viewerFrameWidth"][viewer]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
        .unwrap_or_default()
}

/// Per second of a simulcast `session` result, the frame width of the widest layer the
/// publisher sent in that second (its bytes grew), 0 when none did.
pub fn top_layer_widths(r: &serde_json::Value) -> Vec<u64> {
    let layers = r["series"]["publisherLayers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut prev: Option<&serde_json::Value> = None;
    let mut out = Vec::new();
    for l in &layers {
        let mut top = 0;
        for rid in ["q", "h", "f"] {
            let bytes = |v: Option<&serde_json::Value>| {
                v.and_then(|v| v[rid]["bytesSent"].as_u64()).unwrap_or(0)
            };
            if bytes(Some(l)) > bytes(prev) {
                top = top.max(l[rid]["frameWidth"].as_u64().unwrap_or(0));
            }
        }
        out.push(top);
        prev = Some(l);
    }
    out
}
