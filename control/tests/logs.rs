//! `log.format`: JSON lines for log shippers, plain text without colour codes in a pipe.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Start control on a private loopback config with `extra` appended, wait until it is ready,
/// stop it with SIGTERM and return what it wrote on stderr.
fn run_control(tag: &str, extra: &str) -> String {
    let dir = std::env::temp_dir().join(format!("sluice-logs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let shm = PathBuf::from(format!("/dev/shm/sluice-logs-{tag}-{}", std::process::id()));
    let cfg = dir.join("sluice.toml");
    std::fs::write(
        &cfg,
        format!(
            "runtime_dir = \"{d}/run\"\n[control]\nadmin_listen = \"127.0.0.1:0\"\n\
             state_dir = \"{d}/state\"\naudit_log = \"{d}/audit.log\"\n[shm]\npath = \"{s}\"\n\
             sessions = 16\nroutes = 16\nworker_slots = 2\n{extra}",
            d = dir.display(),
            s = shm.display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice-control"))
        .arg("--config")
        .arg(&cfg)
        .env("SLUICE_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("run/control.json").exists() {
        assert!(Instant::now() < deadline, "control did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "control exit: {}", out.status);
    let _ = std::fs::remove_file(&shm);
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn json_format_writes_one_object_per_line() {
    let err = run_control("json", "[log]\nformat = \"json\"\n");
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 3, "{err}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        for k in ["timestamp", "level", "target", "message"] {
            assert!(v.get(k).is_some(), "no {k} in {l}");
        }
    }
    assert!(
        lines.iter().any(|l| l.contains("sluice-control ready")),
        "{err}"
    );
}

#[test]
fn text_format_in_a_pipe_has_no_colour_codes() {
    let err = run_control("text", "");
    assert!(err.contains("sluice-control ready"), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI escape in a pipe: {err:?}");
}

#[test]
fn unknown_format_is_a_config_error() {
    let dir = std::env::temp_dir().join(format!("sluice-logs-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("sluice.toml");
    std::fs::write(&cfg, "[log]\nformat = \"yaml\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-control"))
        .arg("--config")
        .arg(&cfg)
        .arg("--check-config")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("log.format"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
