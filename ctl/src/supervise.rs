//! `sluicectl up` once both daemons are ready: keep them running. A daemon that exits is
//! restarted with backoff while the other goes on (the relay forwards from shared memory while
//! control is away; a restarted relay maps the file and resumes), a relay that handed its
//! sockets to a new process (`sluicectl upgrade`) is replaced by that process, adopted by pid,
//! and `up` gives up, stopping everything, only when a daemon keeps exiting. What happened is
//! printed on stderr and published in `<runtime_dir>/up.json`, which `sluicectl status` shows.
//!
//! Owns: the restart policy and `up.json`. May not touch: the daemons' state, the admin API.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::child::{stop_all, Daemon, Exit};
use crate::discovery::alive;
use crate::error::{CtlError, Result};
use crate::upgrade_cmd;

/// A daemon that exits this many times within [`RESTART_WINDOW`] is not restarted again.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// The first restart waits this long; each further one within the window twice as long.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const POLL: Duration = Duration::from_millis(100);
/// How long a relay that exited cleanly gets for its successor to answer on the hand-over
/// socket before it counts as an exit.
const HANDOVER_WAIT: Duration = Duration::from_secs(2);
/// The file `sluicectl status` reads.
pub const STATE_FILE: &str = "up.json";

/// What `up.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpState {
    /// The `sluicectl up` process.
    pub pid: u32,
    pub control_pid: Option<u32>,
    pub control_restarts: u64,
    pub relay_pid: Option<u32>,
    pub relay_restarts: u64,
    /// Relays started by `sluicectl upgrade` that took over from ours and were adopted.
    pub relay_upgrades: u64,
}

impl UpState {
    /// The state of a running `up` in `runtime_dir`, if there is one.
    pub fn read(runtime_dir: &Path) -> Option<UpState> {
        let text = std::fs::read_to_string(runtime_dir.join(STATE_FILE)).ok()?;
        serde_json::from_str::<UpState>(&text)
            .ok()
            .filter(|s| alive(s.pid))
    }
}

/// One supervised daemon.
struct Slot {
    name: &'static str,
    bin: PathBuf,
    daemon: Option<Daemon>,
    /// When the next start is due, while it is down.
    restart_at: Option<Instant>,
    /// Start times of the restarts within the window.
    recent: VecDeque<Instant>,
    restarts: u64,
}

impl Slot {
    fn new(d: Daemon, bin: PathBuf) -> Slot {
        Slot {
            name: d.name,
            bin,
            daemon: Some(d),
            restart_at: None,
            recent: VecDeque::new(),
            restarts: 0,
        }
    }

    /// Plan a restart after `exit`, or give up.
    fn schedule(&mut self, now: Instant, exit: Exit, tail: &str) -> Result<()> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= MAX_RESTARTS {
            return Err(CtlError::Other(format!(
                "{} exited unexpectedly ({}) after {} restarts within {} s; giving up and \
                 stopping everything. Its last stderr lines:\n{}",
                self.name,
                exit.describe(),
                self.recent.len(),
                RESTART_WINDOW.as_secs(),
                tail.trim_end()
            )));
        }
        let delay = FIRST_BACKOFF * (1u32 << self.recent.len());
        self.recent.push_back(now);
        self.restarts += 1;
        self.restart_at = Some(now + delay);
        eprintln!(
            "sluicectl: {} exited unexpectedly ({}); restarting it in {} ms (restart {})",
            self.name,
            exit.describe(),
            delay.as_millis(),
            self.restarts
        );
        Ok(())
    }
}

/// Both daemons, control first.
pub struct Supervisor {
    slots: [Slot; 2],
    config: Option<PathBuf>,
    runtime_dir: PathBuf,
    upgrades: u64,
}

const CONTROL: usize = 0;
const RELAY: usize = 1;

impl Supervisor {
    pub fn new(
        control: (Daemon, PathBuf),
        relay: (Daemon, PathBuf),
        config: Option<&Path>,
        runtime_dir: &Path,
    ) -> Supervisor {
        Supervisor {
            slots: [Slot::new(control.0, control.1), Slot::new(relay.0, relay.1)],
            config: config.map(Path::to_path_buf),
            runtime_dir: runtime_dir.to_path_buf(),
            upgrades: 0,
        }
    }

    /// Keep both running until `stop` is set (then stop both and return 0) or a daemon keeps
    /// exiting (then stop both and return the error).
    pub fn run(mut self, stop: &AtomicBool) -> Result<i32> {
        self.publish();
        let outcome = loop {
            if stop.load(Ordering::Relaxed) {
                eprintln!("sluicectl: stopping");
                break Ok(0);
            }
            if let Err(e) = (0..self.slots.len()).try_for_each(|i| self.tend(i)) {
                break Err(e);
            }
            std::thread::sleep(POLL);
        };
        stop_all(
            self.slots
                .iter_mut()
                .filter_map(|s| s.daemon.as_mut())
                .collect(),
        );
        let _ = std::fs::remove_file(self.runtime_dir.join(STATE_FILE));
        outcome
    }

    /// Look after slot `i` once: notice an exit, adopt a successor, start a due restart.
    fn tend(&mut self, i: usize) -> Result<()> {
        let now = Instant::now();
        if let Some(d) = self.slots[i].daemon.as_mut() {
            let Some(exit) = d.poll() else {
                return Ok(());
            };
            let (old, tail) = (d.pid(), d.tail());
            self.slots[i].daemon = None;
            if i == RELAY && (exit.success() || exit == Exit::Gone) {
                if let Some(pid) = self.successor(old) {
                    eprintln!(
                        "sluicectl: relay pid {old} handed its sockets over to pid {pid} \
                         (sluicectl upgrade); adopted it"
                    );
                    self.slots[i].daemon = Some(Daemon::adopt(self.slots[i].name, pid));
                    self.upgrades += 1;
                    self.publish();
                    return Ok(());
                }
            }
            self.slots[i].schedule(now, exit, &tail)?;
            self.publish();
        } else if self.slots[i].restart_at.is_some_and(|at| now >= at) {
            let s = &mut self.slots[i];
            let d = Daemon::spawn(s.name, &s.bin, self.config.as_deref())?;
            eprintln!("sluicectl: {} restarted (pid {})", s.name, d.pid());
            s.daemon = Some(d);
            s.restart_at = None;
            self.publish();
        }
        Ok(())
    }

    /// The relay that now answers on the hand-over socket, when it is not `old` and runs.
    fn successor(&self, old: u32) -> Option<u32> {
        let socket = contract::handover::socket_path(&self.runtime_dir);
        let deadline = Instant::now() + HANDOVER_WAIT;
        while Instant::now() < deadline {
            if let Ok(d) = upgrade_cmd::query(&socket, Duration::from_millis(500)) {
                if d.pid != old && alive(d.pid) {
                    return Some(d.pid);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Write `up.json` (atomically: a reader never sees half a file).
    fn publish(&self) {
        let pid_of = |i: usize| self.slots[i].daemon.as_ref().map(Daemon::pid);
        let st = UpState {
            pid: std::process::id(),
            control_pid: pid_of(CONTROL),
            control_restarts: self.slots[CONTROL].restarts,
            relay_pid: pid_of(RELAY),
            relay_restarts: self.slots[RELAY].restarts,
            relay_upgrades: self.upgrades,
        };
        let path = self.runtime_dir.join(STATE_FILE);
        let tmp = self.runtime_dir.join(format!(".{STATE_FILE}.tmp"));
        let text = serde_json::to_string(&st).unwrap_or_default();
        if std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_err()
        {
            eprintln!("sluicectl: cannot write {}", path.display());
        }
    }
}
