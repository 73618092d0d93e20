//! `sluicectl upgrade`: replace the running relay with a new process without losing a packet.
//!
//! Asks the running relay to describe itself over its hand-over socket
//! ([`contract::handover`]), starts the relay binary (the one it runs from, which an upgrade
//! has just replaced on disk, or `--binary`) with the same arguments plus `--takeover`, and
//! waits until the new relay answers on the hand-over socket and the old one has exited.
//!
//! Owns: that sequence and what it prints. May not touch: the control daemon, the admin API.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use contract::handover::{self, HandoverError, RelayDescription};

use crate::discovery::{alive, Selector};
use crate::error::{CtlError, Result};

/// What `upgrade` was asked.
pub struct UpgradeArgs<'a> {
    /// The instance (`--config`, `--runtime-dir`, else the runtime directory candidates).
    pub sel: Selector<'a>,
    pub handover: Option<&'a Path>,
    pub binary: Option<&'a Path>,
    pub timeout: Duration,
    pub json: bool,
}

/// The hand-over socket: `--handover`, else `<runtime_dir>/relay-handover.sock` of
/// `--runtime-dir` or `--config`, else the first runtime directory candidate that has one.
fn socket_path(a: &UpgradeArgs) -> Result<PathBuf> {
    if let Some(p) = a.handover {
        return Ok(p.to_path_buf());
    }
    let dirs = a.sel.dirs()?;
    if let [only] = dirs.as_slice() {
        if a.sel.explicit() {
            return Ok(handover::socket_path(only));
        }
    }
    let candidates: Vec<PathBuf> = dirs.iter().map(|d| handover::socket_path(d)).collect();
    match candidates.iter().find(|p| p.exists()) {
        Some(p) => Ok(p.clone()),
        None => Err(CtlError::NotRunningRelay(candidates)),
    }
}

fn unreachable(path: &Path, e: HandoverError) -> CtlError {
    match e {
        HandoverError::NotListening(_) => CtlError::NotRunningRelay(vec![path.to_path_buf()]),
        e => CtlError::Other(format!("asking the relay at {}: {e}", path.display())),
    }
}

/// The new relay's arguments: the old ones, with the hand-over socket and shm file made
/// explicit (the new process may see another environment), plus `--takeover`.
fn new_args(old: &RelayDescription, socket: &Path) -> Vec<String> {
    let has = |flag: &str| {
        old.args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    let mut args = old.args.clone();
    if !has("--handover") {
        args.push("--handover".into());
        args.push(socket.display().to_string());
    }
    if !has("--shm") {
        args.push("--shm".into());
        args.push(old.shm.display().to_string());
    }
    args.push("--takeover".into());
    args
}

fn spawn(bin: &Path, args: &[String]) -> Result<Child> {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Its own process group: a Ctrl-C aimed at sluicectl must not reach the new relay.
        .process_group(0)
        .spawn()
        .map_err(|e| CtlError::Other(format!("starting {}: {e}", bin.display())))
}

/// Run the upgrade; returns the exit code.
pub fn run(a: &UpgradeArgs) -> Result<i32> {
    let start = Instant::now();
    let socket = socket_path(a)?;
    let old = query(&socket, Duration::from_secs(5)).map_err(|e| unreachable(&socket, e))?;
    let bin = a.binary.map_or_else(|| old.exe.clone(), Path::to_path_buf);
    if !bin.is_file() {
        return Err(CtlError::Other(format!(
            "relay binary {} not found (pass --binary PATH)",
            bin.display()
        )));
    }
    let args = new_args(&old, &socket);
    if !a.json {
        eprintln!(
            "sluicectl: upgrading relay pid {} ({} workers on {}) with {}",
            old.pid,
            old.workers,
            old.media,
            bin.display()
        );
    }
    let mut child = spawn(&bin, &args)?;
    let new_pid = child.id();
    let deadline = Instant::now() + a.timeout;
    let mut new = None;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(CtlError::Other(format!(
                "the new relay exited ({st}) before taking over; relay pid {} still serves",
                old.pid
            )));
        }
        if new.is_none() {
            if let Ok(d) = query(&socket, Duration::from_secs(1)) {
                if d.pid == new_pid {
                    new = Some(d);
                }
            }
        }
        if new.is_some() && !alive(old.pid) {
            break;
        }
        if Instant::now() >= deadline {
            let what = if new.is_none() {
                "the new relay did not take over"
            } else {
                "the old relay did not exit"
            };
            return Err(CtlError::Other(format!(
                "{what} within {} s (old pid {}, new pid {new_pid})",
                a.timeout.as_secs(),
                old.pid
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The new relay's readiness was checked above, so `new` is set here.
    let new = new.ok_or_else(|| CtlError::Other("internal: no new relay".into()))?;
    let took = start.elapsed().as_millis() as u64;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "old_pid": old.pid,
                "new_pid": new.pid,
                "media_addr": new.media.to_string(),
                "workers": new.workers,
                "backend": new.backend,
                "binary": bin.display().to_string(),
                "took_ms": took,
            })
        );
    } else {
        println!(
            "relay upgraded: pid {} -> {} (media {}, {} workers, {}) in {took} ms",
            old.pid, new.pid, new.media, new.workers, new.backend
        );
    }
    Ok(0)
}

/// Ask the relay listening on the hand-over socket at `path` to describe itself (`op=info`;
/// no hand-over). The messages are [`contract::handover`]'s; this is the only socket call
/// sluicectl makes on that socket.
pub(crate) fn query(path: &Path, timeout: Duration) -> Result<RelayDescription, HandoverError> {
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::io::{self, Read};
    let io_err = |context: &'static str| move |source| HandoverError::Io { context, source };
    let socket_err = |source| HandoverError::Socket {
        path: path.to_path_buf(),
        source,
    };
    let s = Socket::new(Domain::UNIX, Type::SEQPACKET, None)
        .map_err(io_err("socket(AF_UNIX, SOCK_SEQPACKET)"))?;
    s.connect(&SockAddr::unix(path).map_err(socket_err)?)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                HandoverError::NotListening(path.to_path_buf())
            }
            _ => socket_err(e),
        })?;
    s.set_read_timeout(Some(timeout))
        .map_err(io_err("timeout"))?;
    s.send(b"op=info\n").map_err(io_err("send"))?;
    let mut buf = vec![0u8; handover::MAX_MESSAGE];
    let n = (&s).read(&mut buf).map_err(io_err("recv"))?;
    if n == 0 {
        return Err(HandoverError::Protocol("closed before answering".into()));
    }
    let text = std::str::from_utf8(&buf[..n])
        .map_err(|_| HandoverError::Protocol("message is not UTF-8".into()))?;
    RelayDescription::decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_made_explicit_once() {
        let old = RelayDescription {
            pid: 1,
            exe: "/usr/bin/sluice-relay".into(),
            media: "127.0.0.1:5000".parse().unwrap(),
            backend: "mmsg".into(),
            workers: 2,
            shm: "/dev/shm/x".into(),
            args: vec![
                "--config".into(),
                "/etc/sluice.toml".into(),
                "--shm=/dev/shm/x".into(),
            ],
        };
        let a = new_args(&old, Path::new("/run/sluice/relay-handover.sock"));
        assert_eq!(
            a,
            [
                "--config",
                "/etc/sluice.toml",
                "--shm=/dev/shm/x",
                "--handover",
                "/run/sluice/relay-handover.sock",
                "--takeover"
            ]
        );
    }

    #[test]
    fn liveness_of_self_and_of_nothing() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }
}
