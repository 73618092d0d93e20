//! The daemons `sluicectl up` runs: finding their binaries, starting one as a child in its own
//! process group with its stderr echoed (prefixed with its name) and its last lines kept for
//! error reports, and stopping them (SIGTERM, then SIGKILL after a grace period). A relay that
//! `sluicectl upgrade` started is not our child; [`Daemon::adopt`] tracks it by pid.
//!
//! Owns: the child processes' lifetimes. May not touch: their state, the admin API.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use crate::discovery::alive;
use crate::error::{CtlError, Result};

pub const CONTROL_BIN: &str = "sluice-control";
pub const RELAY_BIN: &str = "sluice-relay";
/// How long a child gets between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);
/// How many stderr lines of each child are kept for error reports.
const TAIL_LINES: usize = 20;

/// Find a daemon binary next to the running `sluicectl`, else on `PATH`.
pub fn find_binary(name: &str) -> Result<PathBuf> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    if let Some(dir) = &exe_dir {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let beside = exe_dir
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "(unknown)".to_string());
    Err(CtlError::Other(format!(
        "cannot find {name}: not in {beside} (next to sluicectl) and not on PATH"
    )))
}

/// How a daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Our child, with its status.
    Status(ExitStatus),
    /// An adopted process (not our child): only its disappearance is seen.
    Gone,
}

impl Exit {
    /// `exit code N`, `signal N`, or `exited` for an adopted process.
    pub fn describe(self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match self {
            Exit::Status(st) => match (st.code(), st.signal()) {
                (Some(c), _) => format!("exit code {c}"),
                (None, Some(s)) => format!("signal {s}"),
                _ => "unknown status".to_string(),
            },
            Exit::Gone => "exited".to_string(),
        }
    }

    /// Exit code 0 (a relay that handed its sockets over exits so).
    pub fn success(self) -> bool {
        matches!(self, Exit::Status(st) if st.success())
    }
}

/// The process behind a [`Daemon`].
enum Process {
    /// Started by us: its stderr is echoed and its last lines kept.
    Child {
        child: Child,
        tail: Arc<Mutex<VecDeque<String>>>,
        reader: Option<JoinHandle<()>>,
    },
    /// A relay that took over from our child (`sluicectl upgrade`), watched by pid.
    Adopted { pid: u32 },
}

/// A running daemon.
pub struct Daemon {
    pub name: &'static str,
    process: Process,
    exited: Option<Exit>,
}

impl Daemon {
    /// Start `bin [--config FILE]` in its own process group.
    pub fn spawn(name: &'static str, bin: &Path, config: Option<&Path>) -> Result<Daemon> {
        let mut cmd = Command::new(bin);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        // Own process group: a terminal Ctrl-C reaches only sluicectl, which then stops the
        // children in order instead of racing them.
        // The daemons' stdout goes to our stderr: sluicectl's stdout carries only its own
        // result (the endpoints, as JSON with --json).
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(std::io::stderr())
            .stderr(Stdio::piped());
        // ETXTBSY: the binary is still open for writing somewhere (just installed or copied);
        // it clears within moments.
        let mut attempts = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 20 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                r => {
                    break r.map_err(|e| {
                        CtlError::Other(format!("cannot start {}: {e}", bin.display()))
                    })?
                }
            }
        };
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let reader = child.stderr.take().map(|err| {
            let tail = Arc::clone(&tail);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("[{name}] {line}");
                    // A poisoned lock only means another reader panicked; keep going.
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            })
        });
        Ok(Daemon {
            name,
            process: Process::Child {
                child,
                tail,
                reader,
            },
            exited: None,
        })
    }

    /// Watch a process we did not start (a relay that took over from ours).
    pub fn adopt(name: &'static str, pid: u32) -> Daemon {
        Daemon {
            name,
            process: Process::Adopted { pid },
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Child { child, .. } => child.id(),
            Process::Adopted { pid } => *pid,
        }
    }

    /// `Some(how)` once the process has exited.
    pub fn poll(&mut self) -> Option<Exit> {
        if self.exited.is_none() {
            self.exited = match &mut self.process {
                Process::Child { child, .. } => child.try_wait().ok().flatten().map(Exit::Status),
                Process::Adopted { pid } => (!alive(*pid)).then_some(Exit::Gone),
            };
        }
        self.exited
    }

    /// The last stderr lines (of our own child; an adopted process's stderr is not ours).
    pub fn tail(&mut self) -> String {
        let (tail, reader) = match &mut self.process {
            Process::Child { tail, reader, .. } => (tail, reader),
            Process::Adopted { pid } => {
                return format!(
                    "  ({} pid {pid} was adopted; its stderr is not ours)\n",
                    self.name
                )
            }
        };
        // The reader ends when the child's stderr closes; give it a moment to drain.
        if self.exited.is_some() {
            if let Some(r) = reader.take() {
                let _ = r.join();
            }
        }
        let t = tail.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_empty() {
            format!("  ({} wrote nothing on stderr)\n", self.name)
        } else {
            t.iter().map(|l| format!("  {l}\n")).collect()
        }
    }

    pub fn signal_term(&mut self) {
        if self.poll().is_none() {
            let pid = rustix::process::Pid::from_raw(self.pid() as i32);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
    }

    /// Wait until `deadline`, then SIGKILL.
    pub fn reap(&mut self, deadline: Instant) {
        while self.poll().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.poll().is_none() {
            eprintln!("sluicectl: {} did not stop in time; killing it", self.name);
            match &mut self.process {
                Process::Child { child, .. } => {
                    let _ = child.kill();
                    self.exited = child.wait().ok().map(Exit::Status);
                }
                Process::Adopted { pid } => {
                    if let Some(p) = rustix::process::Pid::from_raw(*pid as i32) {
                        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                    }
                    self.exited = Some(Exit::Gone);
                }
            }
        }
    }
}

/// Stop every running daemon: SIGTERM to all (last started first), then SIGKILL after the
/// grace.
pub fn stop_all(mut daemons: Vec<&mut Daemon>) {
    for d in daemons.iter_mut().rev() {
        d.signal_term();
    }
    let deadline = Instant::now() + GRACE;
    for d in daemons.iter_mut().rev() {
        d.reap(deadline);
    }
}
