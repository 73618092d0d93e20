//! The aiortc peer (tests/webrtc/peer.py) as a child process: availability check and a spawn
//! that echoes and forwards its status lines. `SLUICE_PYTHON` names the interpreter (default
//! `python3`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;

fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("webrtc/peer.py")
}

/// True when the peer script imports aiortc. When it does not, the caller skips visibly
/// (and fails if `SLUICE_REQUIRE_PEERS` is set: CI installs aiortc).
pub fn available() -> bool {
    let ok = Command::new(python())
        .arg(peer_script())
        .arg("check")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::skip::skip("aiortc not installed (pip install aiortc)");
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
            "SLUICE_REQUIRE_PEERS is set but aiortc is not importable"
        );
    }
    ok
}

/// Start `peer.py ARGS`; its stdout lines are printed with `tag` and sent on the receiver
/// (which ends when the peer exits).
pub fn spawn(args: &[&str], tag: &'static str) -> (Child, Receiver<String>) {
    spawn_cmd(Command::new(python()), args, tag)
}

/// [`spawn`] inside network namespace `ns`, gathering only `host` (its address there), with
/// NACK counting on (`nacks_received=N` / `nacks_sent=N` at the end).
pub fn spawn_in(
    ns: &str,
    host: std::net::Ipv4Addr,
    args: &[&str],
    tag: &'static str,
) -> (Child, Receiver<String>) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(python())
        .env("SLUICE_AIORTC_HOST", host.to_string())
        .env("SLUICE_AIORTC_COUNT_NACKS", "1");
    spawn_cmd(cmd, args, tag)
}

/// [`spawn`] gathering only `host` (an address the peers of a test network reach this
/// namespace on).
pub fn spawn_with_host(host: &str, args: &[&str], tag: &'static str) -> (Child, Receiver<String>) {
    let mut cmd = Command::new(python());
    cmd.env("SLUICE_AIORTC_HOST", host);
    spawn_cmd(cmd, args, tag)
}

fn spawn_cmd(mut cmd: Command, args: &[&str], tag: &'static str) -> (Child, Receiver<String>) {
    let mut child = cmd
        .arg(peer_script())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn python peer");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
            let _ = tx.send(line);
        }
    });
    (child, rx)
}
