//! The real binaries as child processes, the one process layer of the end-to-end tests:
//! building them once, a temporary appliance configuration, guards that never leave a process
//! behind, running `sluicectl`, a paced SRTP stream with a receiver that records every packet,
//! an HTTP GET and a strict Prometheus text parser. [`crate::procs`] and
//! [`crate::RelayProcess`] are thin layers over it.
//!
//! Owns: process lifecycles of the end-to-end tests. May not touch: the daemons' code paths
//! (everything goes through their command lines, files, sockets and the admin API).

use crate::{srtp_options, test_key, Peer, TempDir};
use contract::config::RuntimeInfo;
use contract::srtp::{Context, ContextOptions, MasterKey, Profile};
use relay::batch::MAX_DATAGRAM;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Generous: the machine running the tests may be loaded.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `target/<profile>/`, the directory holding the workspace binaries (this test executable
/// lives in `target/<profile>/deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// Make sure `sluice-relay`, `sluice-control`, `sluicectl` and `sluice-bench` are built and
/// current: `cargo build` for them once per test process (a no-op when nothing changed), under
/// a file lock so test binaries running in parallel do not race. Returns the binary directory.
pub fn ensure_binaries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = bin_dir();
        if std::env::var_os("SLUICE_E2E_NO_BUILD").is_some() {
            eprintln!(
                "e2e: SLUICE_E2E_NO_BUILD set; using binaries in {}",
                dir.display()
            );
            return dir;
        }
        let target = dir.parent().expect("target dir").to_path_buf();
        let lock_path = target.join(".sluice-e2e-build.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .expect("open build lock file");
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .expect("lock the build lock file");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "sluice-relay", "-p", "sluice-control"])
            .args(["-p", "sluicectl", "-p", "sluice-bench", "--bins"])
            .arg("--target-dir")
            .arg(&target);
        // What cargo sets for the test process describes this package, not the build: a build
        // script that tracks one of them (ring tracks CARGO_MANIFEST_DIR) would otherwise be
        // re-run, and every binary rebuilt, on each alternation with a plain `cargo build`.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                    "OUT_DIR",
                ]
                .contains(&k.as_ref())
            {
                cmd.env_remove(k.as_ref());
            }
        }
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        eprintln!("e2e: building the daemons: {cmd:?}");
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the Sluice binaries failed");
        // Dropping the file releases the lock.
        drop(lock);
        dir
    })
}

/// Path of one workspace binary (built on demand).
pub fn bin(name: &str) -> PathBuf {
    let p = ensure_binaries().join(name);
    assert!(p.is_file(), "{} missing after the build", p.display());
    p
}

/// Is `pid` a live (not zombie) process?
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 (after the parenthesised name) is the state; Z = zombie, X = dead.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// Wait until `pid` is gone; false on timeout.
pub fn wait_pid_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !pid_alive(pid)
}

/// Live processes whose command line mentions `needle` (e.g. a test's unique config path),
/// after waiting up to `grace` for them to go away.
pub fn processes_mentioning(needle: &Path, grace: Duration) -> Vec<(u32, String)> {
    let needle = needle.display().to_string();
    let deadline = Instant::now() + grace;
    loop {
        let mut found = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                    continue;
                };
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(&needle) && pid_alive(pid) {
                    found.push((pid, cmd));
                }
            }
        }
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Send `sig` to `pid` (errors ignored: it may be gone already).
pub fn signal_pid(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// A child process with its stderr in a log file; SIGKILLed (with any `also_kill` pids) on
/// drop if still running.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    pub started: Instant,
    /// Grandchildren to kill too if this guard has to kill (e.g. the daemons `up` started).
    pub also_kill: Vec<u32>,
    exited: Option<ExitStatus>,
    /// Stdout lines, when spawned with [`Proc::spawn_lines`].
    lines: Option<mpsc::Receiver<String>>,
}

impl Proc {
    /// Spawn `cmd` with stdin null, stderr to `<log_dir>/<name>.<n>.log`; stdout as given.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path, stdout: Stdio) -> Proc {
        static N: AtomicU64 = AtomicU64::new(0);
        let log = log_dir.join(format!("{name}.{}.log", N.fetch_add(1, Ordering::Relaxed)));
        let f = std::fs::File::create(&log).expect("create log file");
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(f);
        let started = Instant::now();
        // ETXTBSY: a binary just written by cargo may still be open in a forked sibling.
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => break r.unwrap_or_else(|e| panic!("spawn {name}: {e}")),
            }
        };
        eprintln!("e2e: started {name} (pid {})", child.id());
        Proc {
            name: name.to_string(),
            child,
            log,
            started,
            also_kill: Vec::new(),
            exited: None,
            lines: None,
        }
    }

    /// [`Proc::spawn`] with stdout drained by a thread (so the child never blocks on a full
    /// pipe) into lines read with [`Proc::line`].
    pub fn spawn_lines(name: &str, cmd: Command, log_dir: &Path) -> Proc {
        let mut p = Proc::spawn(name, cmd, log_dir, Stdio::piped());
        let out = p.child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        p.lines = Some(rx);
        p
    }

    /// The next stdout line; None after `timeout` or once stdout is closed.
    pub fn line(&self, timeout: Duration) -> Option<String> {
        let rx = self.lines.as_ref().expect("spawned with Proc::spawn_lines");
        rx.recv_timeout(timeout).ok()
    }

    /// Wait up to `timeout` for a stdout line starting with `prefix` (other lines are
    /// skipped); panics, with the log, if the child exits or stays silent.
    pub fn wait_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self.line(Duration::from_millis(50)) {
                Some(l) if l.starts_with(prefix) => return l,
                Some(_) => {}
                None => {
                    assert!(
                        pid_alive(self.pid()),
                        "{} exited before printing {prefix:?}\n{}",
                        self.name,
                        self.log_text()
                    );
                    assert!(
                        Instant::now() < deadline,
                        "{} printed no {prefix:?}\n{}",
                        self.name,
                        self.log_text()
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once exited.
    pub fn poll(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(st);
            }
        }
        self.exited
    }

    pub fn signal(&mut self, sig: rustix::process::Signal) {
        if self.poll().is_none() {
            signal_pid(self.pid(), sig);
        }
    }

    /// Wait for the exit; `None` on timeout.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.poll() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.poll()
    }

    /// The name `procs`-style tests use for [`Proc::wait`].
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.wait(timeout)
    }

    /// SIGTERM and wait for a clean exit (asserted: exit status 0).
    pub fn terminate(&mut self) {
        self.signal(rustix::process::Signal::TERM);
        let st = self.wait(Duration::from_secs(15));
        assert!(
            st.is_some_and(|s| s.success()),
            "{} did not exit cleanly after SIGTERM: {st:?}\n{}",
            self.name,
            self.log_text()
        );
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if self.poll().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    /// Everything the child wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- last stderr lines of {} ---\n{}",
            self.name,
            lines[from..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let alive = self.poll().is_none();
        if alive {
            self.kill9();
        }
        for &p in &self.also_kill {
            signal_pid(p, rustix::process::Signal::KILL);
        }
        if alive && std::thread::panicking() {
            eprintln!("{}", self.log_text());
        }
    }
}

/// Everything one temporary Sluice needs: directories, a config file, the processes.
pub struct Appliance {
    pub dir: TempDir,
    pub config: PathBuf,
    pub runtime: PathBuf,
    pub shm: PathBuf,
    pub media: SocketAddr,
    pub control: Option<Proc>,
    pub relay: Option<Proc>,
}

/// How an [`Appliance`]'s config names its runtime directory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RuntimeDir {
    /// `runtime_dir = ".../run"` in the file; clients get `SLUICE_RUNTIME_DIR`.
    InConfig,
    /// No `runtime_dir` key: every process gets `XDG_RUNTIME_DIR=<tmp>` and nothing else, so
    /// the daemons and clients agree on `$XDG_RUNTIME_DIR/sluice` through the default rules.
    FromXdg,
}

/// The config choices of an [`Appliance`] beyond its backend.
#[derive(Clone)]
pub struct Setup {
    pub runtime_dir: RuntimeDir,
    /// The media address's IP (IPv4 or IPv6 loopback).
    pub media_ip: IpAddr,
    /// The media port; 0 picks a free one. A test that must hold the port itself binds it
    /// first and passes it here, so nothing else can take it in between.
    pub media_port: u16,
    /// The admin API on a unix socket in the temp dir instead of an OS-chosen TCP port.
    pub unix_admin: bool,
    pub workers: u32,
    /// The shm's session and route capacity (`shm.sessions`, `shm.routes`).
    pub sessions: u32,
    pub routes: u32,
    /// None: `audit/audit.log` in the temp dir.
    pub audit_log: Option<PathBuf>,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            runtime_dir: RuntimeDir::InConfig,
            media_ip: IpAddr::from([127, 0, 0, 1]),
            media_port: 0,
            unix_admin: false,
            workers: 1,
            sessions: 256,
            routes: 1024,
            audit_log: None,
        }
    }
}

impl Appliance {
    /// Write a config: loopback, a free UDP media port, admin API on an OS-chosen port,
    /// shm/state/runtime under a temp dir, one relay worker on `backend`.
    pub fn new(tag: &str, backend: &str, rd: RuntimeDir) -> Appliance {
        let setup = Setup {
            runtime_dir: rd,
            ..Setup::default()
        };
        Appliance::setup(tag, backend, &setup)
    }

    /// [`Appliance::new`] with the media address on `media_ip` (IPv4 or IPv6 loopback) and,
    /// with `unix_admin`, the admin API on a unix socket in the temp dir.
    pub fn with(
        tag: &str,
        backend: &str,
        rd: RuntimeDir,
        media_ip: IpAddr,
        unix_admin: bool,
    ) -> Appliance {
        let setup = Setup {
            runtime_dir: rd,
            media_ip,
            unix_admin,
            ..Setup::default()
        };
        Appliance::setup(tag, backend, &setup)
    }

    /// The general form of [`Appliance::new`].
    pub fn setup(tag: &str, backend: &str, s: &Setup) -> Appliance {
        let dir = TempDir::new(tag);
        let p = dir.path();
        let port = match s.media_port {
            0 => crate::free_port_on(s.media_ip),
            p => p,
        };
        let media = SocketAddr::new(s.media_ip, port);
        let admin = if s.unix_admin {
            format!("unix:{}", p.join("admin.sock").display())
        } else {
            "127.0.0.1:0".to_string()
        };
        let (runtime, rd_line) = match s.runtime_dir {
            RuntimeDir::InConfig => {
                let r = p.join("run");
                let line = format!("runtime_dir = \"{}\"\n", r.display());
                (r, line)
            }
            RuntimeDir::FromXdg => (p.join("sluice"), String::new()),
        };
        let audit = s.audit_log.clone().unwrap_or(p.join("audit/audit.log"));
        let shm = p.join("shm");
        let text = format!(
            "{rd_line}\n[relay]\nbind = \"{media}\"\nworkers = {}\nbackend = \"{backend}\"\n\
             recv_buffer_bytes = 4194304\n\n\
             [control]\nadmin_listen = \"{admin}\"\nstate_dir = \"{}\"\naudit_log = \"{}\"\n\n\
             [shm]\npath = \"{}\"\nsessions = {}\nroutes = {}\nworker_slots = 8\n",
            s.workers,
            p.join("state").display(),
            audit.display(),
            shm.display(),
            s.sessions,
            s.routes,
        );
        let config = p.join("sluice.toml");
        std::fs::write(&config, text).expect("write config");
        Appliance {
            dir,
            config,
            runtime,
            shm,
            media,
            control: None,
            relay: None,
        }
    }

    /// The environment every process of this appliance gets.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env_remove("SLUICE_ADMIN")
            .env_remove("SLUICE_TOKEN")
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env("SLUICE_LOG", "info");
        if self.runtime == self.dir.path().join("sluice") {
            cmd.env_remove("SLUICE_RUNTIME_DIR");
        } else {
            cmd.env("SLUICE_RUNTIME_DIR", &self.runtime);
        }
    }

    pub fn command(&self, name: &str) -> Command {
        let mut c = Command::new(bin(name));
        self.env(&mut c);
        c
    }

    /// `control.json`, if present and parseable.
    pub fn runtime_info(&self) -> Option<RuntimeInfo> {
        let text = std::fs::read_to_string(RuntimeInfo::path_in(&self.runtime)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Wait for `control.json` written by `pid` (and for the shm file).
    pub fn wait_runtime_info(&self, pid: u32, proc_: Option<&mut Proc>) -> RuntimeInfo {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut proc_ = proc_;
        loop {
            if let Some(i) = self.runtime_info().filter(|i| i.pid == pid) {
                if self.shm.exists() {
                    return i;
                }
            }
            if let Some(p) = proc_.as_deref_mut() {
                if let Some(st) = p.poll() {
                    panic!("{} exited early ({st})\n{}", p.name, p.log_text());
                }
            }
            assert!(
                Instant::now() < deadline,
                "no control.json from pid {pid} in {}",
                self.runtime.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start `sluice-control --config`, wait until it published `control.json`; the caller
    /// owns the process (see [`Appliance::start_control`]).
    pub fn spawn_control(&self) -> (Proc, RuntimeInfo) {
        let mut c = self.command("sluice-control");
        c.arg("--config").arg(&self.config);
        let mut p = Proc::spawn("sluice-control", c, self.dir.path(), Stdio::null());
        let info = self.wait_runtime_info(p.pid(), Some(&mut p));
        (p, info)
    }

    /// [`Appliance::spawn_control`], kept in `self.control`.
    pub fn start_control(&mut self) -> RuntimeInfo {
        let (p, info) = self.spawn_control();
        self.control = Some(p);
        info
    }

    /// Start `sluice-relay --config --no-pin EXTRA`; returns at once (see
    /// [`Appliance::wait_relay`]).
    pub fn spawn_relay(&self, extra: &[&str]) -> Proc {
        let mut c = self.command("sluice-relay");
        c.arg("--config")
            .arg(&self.config)
            .arg("--no-pin")
            .args(extra);
        Proc::spawn_lines("sluice-relay", c, self.dir.path())
    }

    /// Wait for the relay's readiness line (`sluice-relay media=...`).
    pub fn wait_relay(&self, p: &Proc) -> String {
        p.wait_line("sluice-relay media=", START_TIMEOUT)
    }

    /// Start a relay (kept in `self.relay`) and wait for its `media=` line naming our media
    /// address. Returns the spawn time.
    pub fn start_relay(&mut self) -> Instant {
        let p = self.spawn_relay(&[]);
        let line = self.wait_relay(&p);
        assert!(
            line.contains(&format!("media={}", self.media)),
            "relay bound elsewhere: {line}"
        );
        let started = p.started;
        self.relay = Some(p);
        started
    }

    /// Run `sluicectl ARGS` with this appliance's environment (discovery through the runtime
    /// directory, no overrides). Its stderr goes through a file, not a pipe: `sluicectl
    /// upgrade` hands its stderr to the new relay, which would hold a pipe open for as long
    /// as it runs.
    pub fn ctl(&self, args: &[&str]) -> Output {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let err_path = self.dir.path().join(format!("sluicectl-{n}.err"));
        let err = std::fs::File::create(&err_path).expect("sluicectl stderr file");
        let mut c = self.command("sluicectl");
        c.args(args).stdin(Stdio::null()).stderr(err);
        let mut o = c.output().expect("run sluicectl");
        o.stderr = std::fs::read(&err_path).unwrap_or_default();
        o
    }

    /// A publisher and a subscriber session for `st`'s two loopback peers (keys the peers do
    /// not use for the other direction), and a route between them, added with `sluicectl`:
    /// (publisher id, subscriber id, route id).
    pub fn route_stream(&self, st: &SrtpStream, profile: Profile) -> (u64, u64, u64) {
        let unused = |seed| test_key(profile, seed).to_base64();
        let a = self.add_session(
            &st.sender_addr.to_string(),
            profile,
            &st.pub_key.to_base64(),
            &unused(9001),
            "speaker",
        );
        let b = self.add_session(
            &st.receiver_addr.to_string(),
            profile,
            &unused(9002),
            &st.sub_key.to_base64(),
            "viewer",
        );
        let r = self
            .ctl_ok(&[
                "route",
                "add",
                "--from",
                &a.to_string(),
                "--to",
                &b.to_string(),
            ])
            .trim()
            .parse()
            .expect("route add prints the id");
        (a, b, r)
    }

    /// `sluicectl session add` with static keys (base64); the new session's id.
    pub fn add_session(&self, peer: &str, profile: Profile, rx: &str, tx: &str, role: &str) -> u64 {
        let out = self.ctl_ok(&[
            "session",
            "add",
            "--peer",
            peer,
            "--profile",
            profile.name(),
            "--rx-key",
            rx,
            "--tx-key",
            tx,
            "--role",
            role,
        ]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("session add printed {out:?}, not an id alone"))
    }

    /// `sluicectl ARGS`, asserting exit 0; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let o = self.ctl(args);
        assert!(
            o.status.success(),
            "sluicectl {args:?}: {:?}\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `sluicectl --json status` parsed, whether the relay is up (exit 0) or down (exit 5).
    pub fn status_json(&self) -> serde_json::Value {
        let o = self.ctl(&["--json", "status"]);
        assert!(
            matches!(o.status.code(), Some(0 | 5)),
            "sluicectl status: {:?}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8_lossy(&o.stdout);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("status: bad JSON {e}: {out}"));
        assert_eq!(
            o.status.code() == Some(0),
            v["relay"]["up"] == true,
            "exit code 5 exactly when the relay is down: {v}"
        );
        v
    }

    /// `sluicectl --json ARGS` parsed.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ctl_ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: bad JSON {e}: {out}"))
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        // Relay first, as an operator would; the Proc guards kill what is still running.
        self.relay.take();
        self.control.take();
    }
}

/// One received packet: the sender's counter and when it arrived.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub counter: u64,
    pub at: Instant,
}

/// What the receiver thread reports.
#[derive(Default)]
pub struct RxLog {
    pub arrivals: Vec<Arrival>,
    /// Packets that did not authenticate or parse.
    pub failures: u64,
}

/// A paced SRTP sender (one socket, one SSRC) and a receiver on another socket that decrypts
/// every packet and records its counter. Both threads stop on drop.
pub struct SrtpStream {
    pub profile: Profile,
    pub sender_addr: SocketAddr,
    pub receiver_addr: SocketAddr,
    /// The key the sender encrypts with (the relay's rx key for the publisher session).
    pub pub_key: MasterKey,
    /// The key the receiver decrypts with (the relay's tx key for the subscriber session).
    pub sub_key: MasterKey,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    log: Arc<Mutex<RxLog>>,
    in_grace: Arc<AtomicBool>,
    keys: mpsc::Sender<(MasterKey, mpsc::Sender<()>)>,
    threads: Vec<JoinHandle<()>>,
    sender_sock: Option<UdpSocket>,
    receiver: Option<(UdpSocket, Context)>,
    keys_rx: Option<mpsc::Receiver<(MasterKey, mpsc::Sender<()>)>>,
    send_keys: mpsc::Sender<(MasterKey, mpsc::Sender<u64>)>,
    send_keys_rx: Option<mpsc::Receiver<(MasterKey, mpsc::Sender<u64>)>>,
}

/// SSRC the stream's publisher uses.
pub const STREAM_SSRC: u32 = 0x5115_0001;

impl SrtpStream {
    /// Bind both sockets (loopback, OS ports) and make keys; nothing is sent yet.
    /// `rotation_grace` is the receiver's: after a key change, how many packets under the new
    /// key end the fallback to the old one.
    pub fn new(profile: Profile, seed: u64, rotation_grace: u32) -> SrtpStream {
        SrtpStream::on(IpAddr::from([127, 0, 0, 1]), profile, seed, rotation_grace)
    }

    /// [`SrtpStream::new`] with both sockets on `ip`.
    pub fn on(ip: IpAddr, profile: Profile, seed: u64, rotation_grace: u32) -> SrtpStream {
        let s = UdpSocket::bind((ip, 0)).expect("bind sender");
        let r = UdpSocket::bind((ip, 0)).expect("bind receiver");
        let keys = (test_key(profile, seed), test_key(profile, seed + 1));
        SrtpStream::from_sockets(s, r, keys, rotation_grace)
    }

    /// A stream from `publisher`'s socket and send key to `subscriber`'s socket and receive
    /// key (peers whose sessions and route already exist).
    pub fn from_peers(publisher: Peer, subscriber: Peer) -> SrtpStream {
        let keys = (publisher.send_key, subscriber.recv_key);
        let grace = srtp_options().rotation_grace;
        SrtpStream::from_sockets(publisher.sock, subscriber.sock, keys, grace)
    }

    fn from_sockets(
        s: UdpSocket,
        r: UdpSocket,
        (pub_key, sub_key): (MasterKey, MasterKey),
        rotation_grace: u32,
    ) -> SrtpStream {
        r.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let profile = pub_key.profile();
        let opts = ContextOptions {
            rotation_grace,
            ..srtp_options()
        };
        let ctx = Context::new(sub_key, opts).expect("receiver context");
        let (ktx, krx) = mpsc::channel();
        let (sktx, skrx) = mpsc::channel();
        SrtpStream {
            profile,
            sender_addr: s.local_addr().expect("addr"),
            receiver_addr: r.local_addr().expect("addr"),
            pub_key,
            sub_key,
            stop: Arc::new(AtomicBool::new(false)),
            sent: Arc::new(AtomicU64::new(0)),
            log: Arc::new(Mutex::new(RxLog::default())),
            in_grace: Arc::new(AtomicBool::new(false)),
            keys: ktx,
            threads: Vec::new(),
            sender_sock: Some(s),
            receiver: Some((r, ctx)),
            keys_rx: Some(krx),
            send_keys: sktx,
            send_keys_rx: Some(skrx),
        }
    }

    /// Start sending to `dst` every `period`, and receiving.
    pub fn start(&mut self, dst: SocketAddr, period: Duration) {
        let (rsock, mut rctx) = self.receiver.take().expect("started once");
        let keys = self.keys_rx.take().expect("started once");
        let (stop, log, in_grace) = (self.stop.clone(), self.log.clone(), self.in_grace.clone());
        self.threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let mut idle_since: Option<Instant> = None;
            loop {
                while let Ok((k, ack)) = keys.try_recv() {
                    rctx.install_key(k).expect("same profile");
                    let _ = ack.send(());
                }
                in_grace.store(rctx.in_rotation_grace(), Ordering::Relaxed);
                match rsock.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        idle_since = None;
                        let at = Instant::now();
                        let mut g = log.lock().unwrap_or_else(|p| p.into_inner());
                        match rctx.unprotect_rtp(&mut buf, n) {
                            Ok(m) if m >= 20 => {
                                let mut c = [0u8; 8];
                                c.copy_from_slice(&buf[12..20]);
                                g.arrivals.push(Arrival {
                                    counter: u64::from_be_bytes(c),
                                    at,
                                });
                            }
                            _ => g.failures += 1,
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        // After the sender stopped, quit once the socket stayed quiet a while.
                        if stop.load(Ordering::Relaxed) {
                            let t = *idle_since.get_or_insert_with(Instant::now);
                            if t.elapsed() > Duration::from_millis(300) {
                                return;
                            }
                        }
                    }
                    Err(e) => panic!("receiver: {e}"),
                }
            }
        }));
        let ssock = self.sender_sock.take().expect("started once");
        let (stop, sent, key) = (self.stop.clone(), self.sent.clone(), self.pub_key);
        let send_keys = self.send_keys_rx.take().expect("started once");
        self.threads.push(std::thread::spawn(move || {
            let mut ctx = Context::new(key, srtp_options()).expect("sender context");
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let mut next = Instant::now();
            let mut counter = 0u64;
            while !stop.load(Ordering::Relaxed) {
                while let Ok((k, ack)) = send_keys.try_recv() {
                    ctx.install_key(k).expect("same profile");
                    let _ = ack.send(counter);
                }
                let seq = counter as u16;
                buf[0] = 0x80;
                buf[1] = 96;
                buf[2..4].copy_from_slice(&seq.to_be_bytes());
                buf[4..8].copy_from_slice(&((counter as u32).wrapping_mul(960)).to_be_bytes());
                buf[8..12].copy_from_slice(&STREAM_SSRC.to_be_bytes());
                buf[12..20].copy_from_slice(&counter.to_be_bytes());
                buf[20..160].fill(0xa5);
                let n = ctx.protect_rtp(&mut buf, 160).expect("protect");
                ssock.send_to(&buf[..n], dst).expect("send to relay");
                counter += 1;
                sent.store(counter, Ordering::Relaxed);
                next += period;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else if now - next > Duration::from_millis(200) {
                    // Badly descheduled: do not burst to catch up.
                    next = now;
                }
            }
        }));
    }

    /// Packets sent so far (the next counter).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// A copy of what the receiver logged.
    pub fn snapshot(&self) -> (Vec<Arrival>, u64) {
        let g = self.log.lock().unwrap_or_else(|p| p.into_inner());
        (g.arrivals.clone(), g.failures)
    }

    pub fn received(&self) -> usize {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .arrivals
            .len()
    }

    /// The first arrival at or after `t`, if any.
    pub fn first_arrival_after(&self, t: Instant) -> Option<Instant> {
        let g = self.log.lock().unwrap_or_else(|p| p.into_inner());
        g.arrivals.iter().map(|a| a.at).find(|a| *a >= t)
    }

    /// Wait until the receiver has a packet with counter ≥ `counter`.
    pub fn wait_counter(&self, counter: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let hit = self
                .log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .arrivals
                .last()
                .is_some_and(|a| a.counter >= counter);
            if hit {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Have the receiver install `key` (it then tries it first and falls back to the old one
    /// during its rotation grace); returns once installed.
    pub fn receiver_install_key(&self, key: MasterKey) {
        let (ack, done) = mpsc::channel();
        self.keys.send((key, ack)).expect("receiver running");
        done.recv_timeout(Duration::from_secs(5))
            .expect("receiver installed the key");
    }

    /// Have the sender encrypt with `key` from its next packet on; returns the counter of
    /// the first packet under the new key.
    pub fn sender_install_key(&self, key: MasterKey) -> u64 {
        let (ack, done) = mpsc::channel();
        self.send_keys.send((key, ack)).expect("sender running");
        done.recv_timeout(Duration::from_secs(5))
            .expect("sender installed the key")
    }

    /// True while the receiver still falls back to its previous key.
    pub fn receiver_in_grace(&self) -> bool {
        self.in_grace.load(Ordering::Relaxed)
    }

    /// Stop sending, let the receiver drain, join both threads.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for SrtpStream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Check that `arrivals` restricted to counters in `[from, to]` holds each counter exactly
/// once. Returns the missing counters (empty = no gap) and the duplicates.
pub fn continuity(arrivals: &[Arrival], from: u64, to: u64) -> (Vec<u64>, Vec<u64>) {
    let mut seen = HashSet::new();
    let mut dups = Vec::new();
    for a in arrivals.iter().filter(|a| (from..=to).contains(&a.counter)) {
        if !seen.insert(a.counter) {
            dups.push(a.counter);
        }
    }
    let missing = (from..=to).filter(|c| !seen.contains(c)).collect();
    (missing, dups)
}

/// The longest time between consecutive arrivals within `[start, end]`.
pub fn max_gap(arrivals: &[Arrival], start: Instant, end: Instant) -> Duration {
    let ts: Vec<Instant> = arrivals
        .iter()
        .map(|a| a.at)
        .filter(|t| *t >= start && *t <= end)
        .collect();
    ts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// `GET url` (plain `http://HOST:PORT/path`), returning (status, body). `Connection: close`,
/// `Content-Length` bodies (what control sends).
pub fn http_get(url: &str, token: Option<&str>) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let len: Option<usize> = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    });
    if let Some(n) = len {
        assert_eq!(body.len(), n, "body length matches Content-Length");
    }
    (status, body.to_string())
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: metric families (name → type) and samples.
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub help: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include every pair in `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s.parse().map_err(|_| format!("bad sample value {s:?}")),
    }
}

/// The family a sample belongs to, given the declared types (`_bucket`/`_sum`/`_count` of a
/// histogram, `_sum`/`_count` of a summary).
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for (suffix, kinds) in [
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"][..]),
        ("_count", &["histogram", "summary"][..]),
    ] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| kinds.contains(&t.as_str())) {
                return base;
            }
        }
    }
    name
}

/// The sum over workers of `sluice_feedback_total` samples in the `/metrics` text `metrics`
/// whose labels contain `event` (e.g. `event="rtx_sent"`).
pub fn feedback_total(metrics: &str, event: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("sluice_feedback_total{") && l.contains(event))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Parse Prometheus text format 0.0.4 strictly: `# HELP` / `# TYPE` at most once per family
/// and before its samples, a known type, every sample's family declared with `# TYPE`, a
/// family's samples in one group, valid metric and label names, quoted label values with only
/// `\\`, `\"`, `\n` escapes, no repeated label, no duplicate series, a final newline.
pub fn parse_prometheus(text: &str) -> Result<Exposition, String> {
    if !text.ends_with('\n') {
        return Err("exposition does not end with a newline".into());
    }
    let mut ex = Exposition::default();
    let mut done: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series: HashSet<(String, Vec<(String, String)>)> = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let ln = i + 1;
        let err = |m: String| format!("line {ln}: {m}: {line:?}");
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            let mut parts = rest.splitn(3, ' ');
            let kw = parts.next().unwrap_or("");
            if kw != "HELP" && kw != "TYPE" {
                continue; // a plain comment
            }
            let name = parts.next().ok_or_else(|| err("no metric name".into()))?;
            if !is_metric_name(name) {
                return Err(err(format!("bad metric name {name:?}")));
            }
            if done.contains(name) || current.as_deref().is_some_and(|c| c != name) {
                // Starting a new family closes the current one.
                if let Some(c) = current.take() {
                    done.insert(c);
                }
                if done.contains(name) {
                    return Err(err(format!("{kw} for {name} after its group ended")));
                }
            }
            current = Some(name.to_string());
            let arg = parts.next().unwrap_or("");
            if kw == "TYPE" {
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                    return Err(err(format!("unknown type {arg:?}")));
                }
                if ex
                    .samples
                    .iter()
                    .any(|s| family_of(&s.name, &ex.types) == name)
                {
                    return Err(err(format!("TYPE for {name} after its samples")));
                }
                if ex.types.insert(name.to_string(), arg.to_string()).is_some() {
                    return Err(err(format!("second TYPE for {name}")));
                }
            } else if ex.help.insert(name.to_string(), arg.to_string()).is_some() {
                return Err(err(format!("second HELP for {name}")));
            }
            continue;
        }
        // name{labels} value [timestamp]
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(err(format!("bad metric name {name:?}")));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut r = r;
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    r = after;
                    break;
                }
                let eq = r.find('=').ok_or_else(|| err("label without =".into()))?;
                let lname = &r[..eq];
                if !is_label_name(lname) {
                    return Err(err(format!("bad label name {lname:?}")));
                }
                r = r[eq + 1..]
                    .strip_prefix('"')
                    .ok_or_else(|| err("label value not quoted".into()))?;
                let mut val = String::new();
                let mut chars = r.char_indices();
                let end = loop {
                    match chars.next() {
                        None => return Err(err("unterminated label value".into())),
                        Some((j, '"')) => break j,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => val.push('\\'),
                            Some((_, '"')) => val.push('"'),
                            Some((_, 'n')) => val.push('\n'),
                            _ => return Err(err("bad escape in label value".into())),
                        },
                        Some((_, c)) => val.push(c),
                    }
                };
                if labels.insert(lname.to_string(), val).is_some() {
                    return Err(err(format!("label {lname} repeated")));
                }
                r = &r[end + 1..];
                if let Some(after) = r.strip_prefix(',') {
                    r = after;
                } else if !r.starts_with('}') {
                    return Err(err("expected , or } after a label".into()));
                }
            }
            rest = r;
        }
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| err(format!("bad timestamp {ts:?}")))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing fields".into()));
        }
        let fam = family_of(name, &ex.types).to_string();
        if !ex.types.contains_key(&fam) {
            return Err(err(format!("sample of {fam} without a TYPE")));
        }
        if current.as_deref() != Some(fam.as_str()) {
            return Err(err(format!(
                "sample of {fam} outside its group (current: {current:?})"
            )));
        }
        let key = (
            name.to_string(),
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        );
        if !series.insert(key) {
            return Err(err("duplicate series".into()));
        }
        ex.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(ex)
}

/// A running `sluicectl up --config FILE` and the endpoints it printed.
pub struct Up {
    pub proc_: Proc,
    /// `admin_url`, `media_addr`, `public_url`, `metrics_url` as printed.
    pub endpoints: BTreeMap<String, String>,
    /// Everything `up` printed on stdout.
    pub stdout: String,
    /// The daemons `up` started (control from `control.json`, relay from `/v1/status`).
    pub control_pid: u32,
    pub relay_pid: u32,
    /// The config file every process of this instance names on its command line.
    pub config: PathBuf,
}

impl Up {
    /// Start `sluicectl up --config` for `app` and wait for the endpoint table.
    pub fn start(app: &Appliance) -> Up {
        let mut c = app.command("sluicectl");
        c.arg("up").arg("--config").arg(&app.config);
        let mut p = Proc::spawn_lines("sluicectl-up", c, app.dir.path());
        let mut stdout = String::new();
        let mut endpoints = BTreeMap::new();
        while !endpoints.contains_key("metrics_url") {
            let l = p.wait_line("", START_TIMEOUT.saturating_sub(p.started.elapsed()));
            stdout.push_str(&l);
            stdout.push('\n');
            let mut w = l.split_whitespace();
            if let (Some(k), Some(v), None) = (w.next(), w.next(), w.next()) {
                endpoints.insert(k.to_string(), v.to_string());
            }
        }
        let control_pid = app.runtime_info().expect("control.json").pid;
        p.also_kill.push(control_pid);
        let status = app.ctl_json(&["status"]);
        let relay_pid = status["relay"]["pid"]
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .unwrap_or_else(|| panic!("status names no relay pid: {status}"));
        p.also_kill.push(relay_pid);
        Up {
            proc_: p,
            endpoints,
            stdout,
            control_pid,
            relay_pid,
            config: app.config.clone(),
        }
    }

    /// Send `sig` to `up`; assert it exits 0 and that both daemons are gone (no orphans).
    pub fn stop(mut self, sig: rustix::process::Signal) {
        self.proc_.signal(sig);
        let st = self.proc_.wait(Duration::from_secs(20));
        assert!(
            st.is_some_and(|s| s.success()),
            "sluicectl up after {sig:?}: {st:?}\n{}",
            self.proc_.log_text()
        );
        for (name, pid) in [("control", self.control_pid), ("relay", self.relay_pid)] {
            assert!(
                wait_pid_gone(pid, Duration::from_secs(5)),
                "{name} (pid {pid}) still running after `up` stopped"
            );
        }
        let left = processes_mentioning(&self.config, Duration::from_secs(5));
        assert!(left.is_empty(), "left running after `up` stopped: {left:?}");
        let log = self.proc_.log();
        assert!(log.contains("sluicectl: stopping"), "{log}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP a_total Things.\n# TYPE a_total counter\na_total{worker=\"0\"} 1\n\
        a_total{worker=\"1\",reason=\"x\\\"y\\\\z\\n\"} 2 1700000000000\n\
        # TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n\
        # TYPE g gauge\ng NaN\n";

    #[test]
    fn accepts_valid_text() {
        let e = parse_prometheus(GOOD).unwrap();
        assert_eq!(e.types["h"], "histogram");
        assert_eq!(e.value("a_total", &[("worker", "0")]), Some(1.0));
        assert_eq!(
            e.samples[1].labels["reason"], "x\"y\\z\n",
            "escapes decoded"
        );
        assert_eq!(e.value("h_count", &[]), Some(2.0));
        assert!(e.value("g", &[]).unwrap().is_nan());
    }

    #[test]
    fn rejects_malformed_text() {
        let bad = [
            ("a 1", "newline"),
            ("a 1\n", "without a TYPE"),
            ("# TYPE a counter\n# TYPE a counter\na 1\n", "second TYPE"),
            ("# TYPE a blob\na 1\n", "unknown type"),
            ("# TYPE a counter\na{x=\"1\"} one\n", "bad sample value"),
            ("# TYPE a counter\na{x=1} 1\n", "not quoted"),
            ("# TYPE a counter\na{x=\"1\",x=\"2\"} 1\n", "repeated"),
            (
                "# TYPE a counter\na{x=\"1\"} 1\na{x=\"1\"} 2\n",
                "duplicate",
            ),
            ("# TYPE a counter\na{1x=\"1\"} 1\n", "bad label name"),
            ("# TYPE a counter\na{x=\"\\t\"} 1\n", "bad escape"),
            ("# TYPE a counter\na 1 2 3\n", "trailing"),
            ("# TYPE a counter\na  1\n", "bad sample value"),
            (
                "# TYPE a counter\n# TYPE b gauge\na 1\n",
                "outside its group",
            ),
            (
                "# TYPE a counter\na 1\n# TYPE b gauge\nb 1\n# HELP a late\n",
                "after its group ended",
            ),
            ("# TYPE 1a counter\n", "bad metric name"),
        ];
        for (text, want) in bad {
            let err = parse_prometheus(text).expect_err(text);
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
