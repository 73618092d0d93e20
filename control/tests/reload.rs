//! SIGHUP reloads what may change while running, names what needs a restart, survives a
//! broken file, and never exits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const TOKEN_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn config(dir: &Path, shm: &Path, workers: u32) -> String {
    format!(
        "runtime_dir = \"{d}/run\"\n[relay]\nworkers = {workers}\n[control]\n\
         admin_listen = \"127.0.0.1:0\"\nadmin_token_file = \"{d}/token\"\n\
         state_dir = \"{d}/state\"\naudit_log = \"{d}/audit.log\"\n[shm]\npath = \"{s}\"\n\
         sessions = 16\nroutes = 16\nworker_slots = 2\n",
        d = dir.display(),
        s = shm.display()
    )
}

fn write_private(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `GET /v1/status` with `token`: the HTTP status.
fn status_code(addr: &str, token: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn hup(child: &Child) {
    let st = Command::new("kill")
        .arg("-HUP")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reloads_the_token_names_restart_keys_and_survives_a_broken_file() {
    let dir = std::env::temp_dir().join(format!("sluice-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let shm = PathBuf::from(format!("/dev/shm/sluice-reload-{}", std::process::id()));
    let cfg = dir.join("sluice.toml");
    write_private(&cfg, &config(&dir, &shm, 1));
    write_private(&dir.join("token"), TOKEN_A);
    let log = dir.join("control.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-control"))
        .arg("--config")
        .arg(&cfg)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let rt = dir.join("run/control.json");
    wait_for("control.json", || rt.exists());
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(&rt).unwrap()).unwrap();
    let addr = info["admin_url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://")
        .unwrap()
        .to_string();
    assert_eq!(status_code(&addr, TOKEN_A), 200);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // A new token and a relay key: the token applies at once, the relay key is named.
    write_private(&dir.join("token"), TOKEN_B);
    write_private(&cfg, &config(&dir, &shm, 2));
    hup(&child);
    wait_for("the reload", || {
        log_text().contains("SIGHUP: configuration reloaded")
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "control exited on SIGHUP"
    );
    assert_eq!(status_code(&addr, TOKEN_B), 200);
    assert_eq!(status_code(&addr, TOKEN_A), 401);
    let l = log_text();
    assert!(l.contains("control.admin_token"), "{l}");
    assert!(l.contains("[relay]"), "{l}");
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(&rt).unwrap()).unwrap();
    assert_eq!(info["admin_token"], TOKEN_B, "control.json republished");

    // A broken file: nothing changes, control stays.
    write_private(&cfg, "[relay]\nnonsense = 1\n");
    hup(&child);
    wait_for("the refusal", || {
        log_text().contains("configuration not reloaded")
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "control exited on a broken reload"
    );
    assert_eq!(status_code(&addr, TOKEN_B), 200);

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
    let audit = std::fs::read_to_string(dir.join("audit.log")).unwrap();
    assert_eq!(audit.matches("config.reload").count(), 2, "{audit}");
    let _ = std::fs::remove_file(&shm);
    let _ = std::fs::remove_dir_all(&dir);
}
