//! The systemd integration: unit files verify, and the daemon speaks the sd_notify protocol.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

#[test]
fn units_verify() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../systemd/verify.sh");
    let out = Command::new("bash").arg(&script).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    assert!(out.status.success(), "verify.sh failed: {stderr}");
}

/// `sluice-control --check-config` on the shipped configuration with `admin_token_file`
/// pointing at `token` (written with `mode` when given); its exit code and stderr.
fn check_shipped_config(tag: &str, token: Option<(&str, u32)>) -> (Option<i32>, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("sluice-check-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tok = dir.join("admin.token");
    if let Some((text, mode)) = token {
        std::fs::write(&tok, text).unwrap();
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../systemd/sluice.toml");
    let text = std::fs::read_to_string(shipped).unwrap().replace(
        "admin_token_file = \"/etc/sluice/admin.token\"",
        &format!("admin_token_file = \"{}\"", tok.display()),
    );
    let cfg = dir.join("sluice.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-control"))
        .arg("--config")
        .arg(&cfg)
        .arg("--check-config")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn example_config_checks_as_the_start_does() {
    let token = "0123456789abcdefghijklmnopqrstuvwxyzABCDEF\n";
    // With its admin token in place the shipped file passes, with a loud warning: it binds
    // 0.0.0.0 and names no public address, so browsers elsewhere would get 127.0.0.1.
    let (code, err) = check_shipped_config("ok", Some((token, 0o600)));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: relay.bind is 0.0.0.0:4443 and control.public_addresses is empty"),
        "{err}"
    );
    // What the real start refuses, --check-config refuses too.
    let (code, err) = check_shipped_config("missing", None);
    assert_eq!(code, Some(2), "a missing admin_token_file: {err}");
    assert!(err.contains("admin.token"), "{err}");
    let (code, err) = check_shipped_config("world", Some((token, 0o644)));
    assert_eq!(code, Some(2), "a world-readable admin_token_file: {err}");
    assert!(err.contains("chmod"), "{err}");
    let (code, err) = check_shipped_config("short", Some(("short\n", 0o600)));
    assert_eq!(code, Some(2), "a token too short: {err}");
}

#[test]
fn ready_and_watchdog_notifications() {
    let dir = std::env::temp_dir().join(format!("sluice-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let shm = format!("/dev/shm/sluice-notify-{}", std::process::id());
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "runtime_dir = \"{d}/run\"\n[control]\nadmin_listen = \"127.0.0.1:0\"\n[shm]\npath = \"{shm}\"\nsessions = 8\nroutes = 8\nworker_slots = 2\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-control"))
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    while !(got.iter().any(|m: &String| m.contains("READY=1"))
        && got.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        let n = sock.recv(&mut buf).expect("notification within 20 s");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // With no token configured, one was generated and published with the runtime file.
    let token = std::fs::read_to_string(dir.join("run/admin.token")).unwrap();
    assert!(token.trim().len() >= 32);
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let n = sock.recv(&mut buf).unwrap();
    let mut last = String::from_utf8_lossy(&buf[..n]).into_owned();
    while last.contains("WATCHDOG=1") {
        let n = sock.recv(&mut buf).unwrap();
        last = String::from_utf8_lossy(&buf[..n]).into_owned();
    }
    assert!(last.contains("STOPPING=1"), "{last}");
    assert!(child.wait().unwrap().success());
    assert!(
        !dir.join("run/admin.token").exists(),
        "generated token removed on exit"
    );
    let _ = std::fs::remove_file(&shm);
    let _ = std::fs::remove_dir_all(&dir);
}
