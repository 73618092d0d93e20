//! The relay hand-over protocol's messages (zero-loss upgrade; the relay's `io::handover` owns
//! the socket and the `SCM_RIGHTS` calls, `sluicectl upgrade` queries it).
//!
//! Transport: one `SOCK_SEQPACKET` connection per hand-over (message boundaries kept). Every
//! message is UTF-8 text, one `key=value` per line:
//!
//! 1. new → old: `op=takeover` (with `shm=PATH`), or `op=info` (a query: old answers and closes).
//! 2. old → new: `pid=`, `exe=`, `media=`, `backend=`, `workers=N`, `shm=`, `arg=` (repeated, the
//!    old process's arguments); on a takeover the message also carries N file descriptors, the
//!    workers' UDP sockets in worker order.
//! 3. new → old: `op=ready` once its workers run on those sockets.
//! 4. old: stops its workers after their current turn, then `op=done`, and exits.
//!
//! Owns: the socket's name, the message texts and their limits. Opens nothing.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// File name of the hand-over socket inside the runtime directory.
pub const SOCKET_NAME: &str = "relay-handover.sock";
/// Largest hand-over message (text part).
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Most descriptors one `SCM_RIGHTS` message may carry (`SCM_MAX_FD` in the kernel).
pub const MAX_FDS: usize = 253;

/// The hand-over socket path for a runtime directory.
pub fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(SOCKET_NAME)
}

/// Errors of the hand-over protocol.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("hand-over socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no relay is listening on the hand-over socket {0} (is sluice-relay running with the same runtime directory?)")]
    NotListening(PathBuf),
    #[error("hand-over socket {0} is in use by another live relay")]
    InUse(PathBuf),
    #[error("hand-over {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("hand-over protocol: {0}")]
    Protocol(String),
    #[error("the old relay refused the hand-over: {0}")]
    Refused(String),
}

/// What a relay says about itself (step 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayDescription {
    pub pid: u32,
    /// The executable the relay runs from (for `sluicectl upgrade`; ` (deleted)` stripped).
    pub exe: PathBuf,
    pub media: SocketAddr,
    pub backend: String,
    pub workers: usize,
    pub shm: PathBuf,
    /// The relay's command-line arguments (without the program name).
    pub args: Vec<String>,
}

impl RelayDescription {
    /// The message text (one `key=value` per line).
    pub fn encode(&self) -> String {
        let mut s = format!(
            "pid={}\nexe={}\nmedia={}\nbackend={}\nworkers={}\nshm={}\n",
            self.pid,
            self.exe.display(),
            self.media,
            self.backend,
            self.workers,
            self.shm.display()
        );
        for a in &self.args {
            // Arguments with a newline cannot be carried; they never occur in relay options.
            if !a.contains('\n') {
                s.push_str("arg=");
                s.push_str(a);
                s.push('\n');
            }
        }
        s
    }

    /// Parse a description; an `error=` line is the old relay's refusal.
    pub fn decode(text: &str) -> Result<RelayDescription, HandoverError> {
        let bad = |m: String| HandoverError::Protocol(m);
        let mut pid = None;
        let mut exe = None;
        let mut media = None;
        let mut backend = None;
        let mut workers = None;
        let mut shm = None;
        let mut args = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line without `=`: {line:?}")))?;
            match k {
                "pid" => pid = Some(v.parse().map_err(|_| bad(format!("bad pid {v:?}")))?),
                "exe" => exe = Some(PathBuf::from(v)),
                "media" => media = Some(v.parse().map_err(|_| bad(format!("bad media {v:?}")))?),
                "backend" => backend = Some(v.to_string()),
                "workers" => {
                    workers = Some(v.parse().map_err(|_| bad(format!("bad workers {v:?}")))?)
                }
                "shm" => shm = Some(PathBuf::from(v)),
                "arg" => args.push(v.to_string()),
                "error" => return Err(HandoverError::Refused(v.to_string())),
                _ => {} // later versions may add keys
            }
        }
        let need = |k: &str| bad(format!("missing `{k}`"));
        Ok(RelayDescription {
            pid: pid.ok_or_else(|| need("pid"))?,
            exe: exe.ok_or_else(|| need("exe"))?,
            media: media.ok_or_else(|| need("media"))?,
            backend: backend.ok_or_else(|| need("backend"))?,
            workers: workers.ok_or_else(|| need("workers"))?,
            shm: shm.ok_or_else(|| need("shm"))?,
            args,
        })
    }
}

/// The `op=` of a message.
pub fn op_of(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("op="))
}

/// The value of `key=` in a message.
pub fn value_of<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}
