//! `sluicectl up`: run sluice-control and sluice-relay in the foreground.
//!
//! Owns: finding the daemon binaries, starting them (control first, since it creates the
//! shared-memory file and the runtime file), waiting until control's runtime file appears and
//! `/v1/status` reports the relay up, printing the endpoints, and stopping both children on
//! SIGINT/SIGTERM (SIGTERM, then SIGKILL after a grace period). The configuration file is
//! loaded only to validate it and to learn the runtime directory; the daemons get it as given.
//! May not touch: the daemons' state.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use serde_json::Value;

use crate::api::Client;
use contract::config::{Config, RuntimeInfo};

use crate::discovery::{self, Endpoint};
use crate::error::{CtlError, Result};

pub const CONTROL_BIN: &str = "sluice-control";
pub const RELAY_BIN: &str = "sluice-relay";
/// How long a child gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);
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

/// A running daemon with its stderr being echoed and remembered.
struct Daemon {
    name: &'static str,
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
    reader: Option<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl Daemon {
    fn spawn(name: &'static str, bin: &Path, config: Option<&Path>) -> Result<Daemon> {
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
            child,
            tail,
            reader,
            exited: None,
        })
    }

    /// `Some(status)` once the child has exited.
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(st);
            }
        }
        self.exited
    }

    fn tail(&mut self) -> String {
        // The reader ends when the child's stderr closes; give it a moment to drain.
        if self.exited.is_some() {
            if let Some(r) = self.reader.take() {
                let _ = r.join();
            }
        }
        let t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_empty() {
            format!("  ({} wrote nothing on stderr)\n", self.name)
        } else {
            t.iter().map(|l| format!("  {l}\n")).collect()
        }
    }

    fn signal_term(&mut self) {
        if self.poll().is_none() {
            let pid = rustix::process::Pid::from_child(&self.child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }

    /// Wait until `deadline`, then SIGKILL.
    fn reap(&mut self, deadline: Instant) {
        while self.poll().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.poll().is_none() {
            eprintln!("sluicectl: {} did not stop in time; killing it", self.name);
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

/// Stop every running daemon: SIGTERM to all (relay first), then SIGKILL after the grace.
fn stop_all(daemons: &mut [Daemon]) {
    for d in daemons.iter_mut().rev() {
        d.signal_term();
    }
    let deadline = Instant::now() + GRACE;
    for d in daemons.iter_mut().rev() {
        d.reap(deadline);
    }
}

fn describe(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".to_string(),
    }
}

/// Why waiting for readiness stopped.
enum Wait {
    Ready,
    Signalled,
}

/// A throw-away configuration for `up --ephemeral`: the embedded default with control's
/// state and audit log in a fresh private directory, removed when `up` returns.
struct Ephemeral {
    dir: PathBuf,
    config: PathBuf,
}

impl Ephemeral {
    fn create() -> Result<Ephemeral> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("sluice-ephemeral-{}", std::process::id()));
        let io = |e: std::io::Error| {
            CtlError::Other(format!("--ephemeral: cannot create {}: {e}", dir.display()))
        };
        // A leftover of an earlier process with this pid holds nothing we need.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        // JSON string escapes are valid TOML basic-string escapes.
        let quote = |p: PathBuf| serde_json::Value::String(p.display().to_string()).to_string();
        let text = format!(
            "# written by `sluicectl up --ephemeral`; removed when it stops\n\
             [control]\nstate_dir = {}\naudit_log = {}\nbootstrap_app = \"demo\"\n",
            quote(dir.join("state")),
            quote(dir.join("audit").join("audit.log")),
        );
        let config = dir.join("sluice.toml");
        std::fs::write(&config, text).map_err(io)?;
        Ok(Ephemeral { dir, config })
    }
}

impl Drop for Ephemeral {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run `up`. Returns the process exit code on a clean stop.
pub fn run(config: Option<&Path>, ephemeral: bool, timeout: Duration, json: bool) -> Result<i32> {
    let scratch = match (ephemeral, config) {
        (true, Some(_)) => {
            return Err(CtlError::usage(
                "--ephemeral runs the embedded configuration; with --config FILE, point \
                 control.state_dir at a scratch directory instead",
            ))
        }
        (true, None) => Some(Ephemeral::create()?),
        (false, _) => None,
    };
    let config = scratch.as_ref().map(|e| e.config.as_path()).or(config);
    // The daemons read the same file; loading it here reports a bad key before anything
    // starts and tells where control will write its runtime file.
    let cfg = match config {
        Some(c) => Config::load(c).map_err(|e| CtlError::usage(format!("--config: {e}")))?,
        None => Config::embedded_default(),
    };
    let runtime_file = RuntimeInfo::path_in(&cfg.runtime_dir);
    let control_bin = find_binary(CONTROL_BIN)?;
    let relay_bin = find_binary(RELAY_BIN)?;
    if let Ok(Some(info)) = discovery::read_runtime_file(&runtime_file) {
        if discovery::alive(info.pid) {
            return Err(CtlError::Other(format!(
                "control is already running (pid {}, admin {}); see {}",
                info.pid,
                info.admin_url,
                runtime_file.display()
            )));
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| CtlError::Other(format!("cannot install signal handler: {e}")))?;
    }

    let deadline = Instant::now() + timeout;
    let mut daemons = vec![Daemon::spawn(CONTROL_BIN, &control_bin, config)?];

    let outcome = (|| -> Result<(Wait, Option<RuntimeInfo>, Option<Value>)> {
        // 1. Control's runtime file, written after this start.
        let info = loop {
            if stop.load(Ordering::Relaxed) {
                return Ok((Wait::Signalled, None, None));
            }
            check_children(&mut daemons, "before it was ready")?;
            if let Some(info) = fresh_runtime_info(&runtime_file, daemons[0].child.id()) {
                break info;
            }
            if Instant::now() >= deadline {
                return Err(timeout_error(
                    &mut daemons,
                    &format!(
                        "control did not write {} within {}s",
                        runtime_file.display(),
                        timeout.as_secs()
                    ),
                ));
            }
            std::thread::sleep(POLL);
        };
        // 2. The relay, then its heartbeat in /v1/status.
        daemons.push(Daemon::spawn(RELAY_BIN, &relay_bin, config)?);
        let client = Client::new(&Endpoint {
            admin_url: info.admin_url.clone(),
            token: Some(info.admin_token.clone()),
            instance: None,
        })?;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok((Wait::Signalled, Some(info), None));
            }
            check_children(&mut daemons, "before it was ready")?;
            let last = match client.get("/v1/status") {
                Ok(st) if relay_up(&st) => return Ok((Wait::Ready, Some(info), Some(st))),
                Ok(_) => "status says the relay is not up".to_string(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(timeout_error(
                    &mut daemons,
                    &format!(
                        "the relay did not come up within {}s ({last})",
                        timeout.as_secs()
                    ),
                ));
            }
            std::thread::sleep(POLL);
        }
    })();

    let (wait, info, status) = match outcome {
        Ok(o) => o,
        Err(e) => {
            stop_all(&mut daemons);
            return Err(e);
        }
    };
    if let Wait::Signalled = wait {
        stop_all(&mut daemons);
        return Ok(0);
    }
    print_endpoints(info.as_ref(), status.as_ref(), json);

    // 3. Foreground until a signal or a child's death.
    loop {
        if stop.load(Ordering::Relaxed) {
            eprintln!("sluicectl: stopping");
            stop_all(&mut daemons);
            return Ok(0);
        }
        if let Err(e) = check_children(&mut daemons, "unexpectedly") {
            stop_all(&mut daemons);
            return Err(e);
        }
        std::thread::sleep(POLL);
    }
}

/// Error out if any child has exited, naming it and showing its stderr tail.
fn check_children(daemons: &mut [Daemon], when: &str) -> Result<()> {
    for d in daemons.iter_mut() {
        if let Some(st) = d.poll() {
            let (name, tail) = (d.name, d.tail());
            return Err(CtlError::Other(format!(
                "{name} exited {when} ({}); its last stderr lines:\n{}",
                describe(st),
                tail.trim_end()
            )));
        }
    }
    Ok(())
}

fn timeout_error(daemons: &mut [Daemon], what: &str) -> CtlError {
    stop_all(daemons);
    let mut msg = format!("timed out: {what}");
    for d in daemons.iter_mut() {
        let (name, tail) = (d.name, d.tail());
        msg.push_str(&format!("\n{name} stderr (last lines):\n{tail}"));
    }
    CtlError::Other(msg.trim_end().to_string())
}

/// The runtime file, if it was written by the control we started (it carries its pid; a
/// stale file from an earlier run carries another).
fn fresh_runtime_info(path: &Path, pid: u32) -> Option<RuntimeInfo> {
    discovery::read_runtime_file(path)
        .ok()
        .flatten()
        .filter(|info| info.pid == pid)
}

/// `relay.up` in a status document.
pub fn relay_up(status: &Value) -> bool {
    status
        .get("relay")
        .and_then(|r| r.get("up"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn print_endpoints(info: Option<&RuntimeInfo>, status: Option<&Value>, json: bool) {
    let pick = |key: &str, from_info: Option<&String>| -> String {
        status
            .and_then(|s| s.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| from_info.cloned())
            .unwrap_or_else(|| "-".to_string())
    };
    let mut rows = vec![
        ("admin_url", pick("admin_url", info.map(|i| &i.admin_url))),
        (
            "media_addr",
            pick("media_addr", info.map(|i| &i.media_addr)),
        ),
        (
            "public_url",
            pick("public_url", info.map(|i| &i.public_url)),
        ),
        (
            "metrics_url",
            pick("metrics_url", info.map(|i| &i.metrics_url)),
        ),
    ];
    // Only when control says the demo page is served (a bootstrap application with a key).
    if status.and_then(|s| s.get("demo")).and_then(Value::as_bool) == Some(true) {
        rows.push((
            "demo_url",
            format!("{}/demo", pick("public_url", info.map(|i| &i.public_url))),
        ));
    }
    if json {
        let obj: serde_json::Map<String, Value> = rows
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
            .collect();
        println!("{}", Value::Object(obj));
    } else {
        println!("sluice is up (Ctrl-C stops it)");
        for (k, v) in rows {
            println!("  {k:<12} {v}");
        }
    }
}
