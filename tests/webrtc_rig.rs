//! The appliance as the WebRTC end-to-end tests (aiortc, Chromium) need it: control and one
//! relay worker on loopback with the bootstrap `demo` application, WHIP/WHEP on control's
//! listener, and the admin calls those tests make (minting tokens, room state, metrics).

use crate::daemons::{bin, Proc};
use crate::{free_udp_port, TempDir};
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
    /// `HOST:PORT` of control's admin (and here also WHIP/WHEP) listener.
    pub admin: String,
}

impl WebRtcRig {
    /// Start control, wait for its runtime file, then start the relay.
    pub fn start(tag: &str) -> WebRtcRig {
        let dir = TempDir::new(tag);
        let d = dir.path();
        let shm = PathBuf::from(format!("/dev/shm/sluice-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&shm);
        let port = free_udp_port();
        let cfg = d.join("sluice.toml");
        std::fs::write(
            &cfg,
            format!(
                "runtime_dir = \"{d}/run\"\n\
                 [relay]\nbind = \"127.0.0.1:{port}\"\nworkers = 1\n\
                 [control]\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
                 state_dir = \"{d}/state\"\naudit_log = \"{d}/log/audit.log\"\n\
                 bootstrap_app = \"demo\"\npublic_addresses = [\"127.0.0.1\"]\n\
                 [shm]\npath = \"{s}\"\nsessions = 16\nroutes = 64\nworker_slots = 4\n",
                d = d.display(),
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
            assert!(Instant::now() < deadline, "control did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        };
        let admin = info["admin_url"]
            .as_str()
            .and_then(|u| u.strip_prefix("http://"))
            .expect("admin url")
            .to_string();
        let mut cmd = Command::new(bin("sluice-relay"));
        cmd.arg("--config").arg(&cfg);
        let relay = Proc::spawn("sluice-relay", cmd, d, Stdio::null());
        WebRtcRig {
            relay: Some(relay),
            control: Some(control),
            shm,
            dir,
            admin,
        }
    }

    /// The temporary directory (config, state, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://HOST:PORT` of the WHIP/WHEP endpoints.
    pub fn base(&self) -> String {
        format!("http://{}", self.admin)
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
