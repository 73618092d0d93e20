//! Real daemons for end-to-end tests: the workspace binaries (built on demand, once per test
//! process, under a lock file), a Sluice instance in a temp directory (its own config, runtime
//! directory, shm file and ports), `sluicectl` calls against it, and steady SRTP streams.
//!
//! Every child is started with its stderr in a log file inside the instance directory (read it
//! with [`Proc::log`]) and is killed on drop.

use crate::{free_udp_port, Peer, TempDir};
use relay::shm::Role;
use relay::srtp::Profile;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// `target/<profile>/`, the directory the test executable's `deps/` sits in.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A workspace binary (`sluice-relay`, `sluice-control`, `sluicectl`). The first call of a test
/// process runs `cargo build` for all three (a no-op when they are fresh, so a stale binary is
/// never tested), serialised with other test processes by a lock file.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = target_dir();
    BUILT.get_or_init(|| {
        let lock = dir.join(".sluice-tests-build.lock");
        let _guard = LockFile::acquire(&lock);
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "sluice-relay",
            "-p",
            "sluice-control",
        ])
        .args(["-p", "sluicectl", "--bins"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build");
        assert!(st.success(), "building the daemons failed");
    });
    let p = dir.join(name);
    assert!(p.is_file(), "{} missing after the build", p.display());
    p
}

/// A lock file made with `create_new` (atomic); a lock older than 20 minutes is stale.
struct LockFile(PathBuf);

impl LockFile {
    fn acquire(path: &Path) -> LockFile {
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(_) => return LockFile(path.to_path_buf()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(1200));
                    if stale {
                        let _ = std::fs::remove_file(path);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("lock file {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// Send `sig` (e.g. "TERM", "KILL") to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// Wait until `pid` is gone (or a zombie); false on time-out.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A child process: stdout lines arrive on a channel, stderr goes to a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: &Path) -> Proc {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open child log");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            log: log.to_path_buf(),
            lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, or None after `timeout` (or at end of output).
    pub fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Everything the child wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Exit status once it exited, waiting up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9`, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; the exit status (SIGKILL after 10 s).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        signal(self.pid(), "TERM");
        let st = self.wait_exit(Duration::from_secs(10));
        if st.is_none() {
            self.kill9();
        }
        st
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// One Sluice instance in a temp directory: config, runtime dir, shm file, media port.
pub struct Instance {
    pub dir: TempDir,
    pub config: PathBuf,
    pub runtime: PathBuf,
    pub shm: PathBuf,
    pub media: SocketAddr,
}

impl Instance {
    /// `backend`: "mmsg", "io_uring" or "auto". `audit_log`: None = the default path.
    pub fn new(tag: &str, backend: &str, workers: u32, audit_log: Option<&Path>) -> Instance {
        let dir = TempDir::new(tag);
        let runtime = dir.path().join("run");
        let shm = dir.path().join("shm");
        let media: SocketAddr = format!("127.0.0.1:{}", free_udp_port())
            .parse()
            .expect("addr");
        let audit = audit_log.map_or(String::new(), |p| {
            format!("audit_log = \"{}\"\n", p.display())
        });
        let text = format!(
            "runtime_dir = \"{rt}\"\n\n[relay]\nbind = \"{media}\"\nworkers = {workers}\n\
             backend = \"{backend}\"\nrecv_buffer_bytes = 4194304\n\n\
             [control]\nadmin_listen = \"127.0.0.1:0\"\n{audit}\n\
             [shm]\npath = \"{shm}\"\nsessions = 256\nroutes = 1024\nworker_slots = 8\n",
            rt = runtime.display(),
            shm = shm.display(),
        );
        let config = dir.path().join("sluice.toml");
        std::fs::write(&config, text).expect("write config");
        Instance {
            dir,
            config,
            runtime,
            shm,
            media,
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Start `sluice-control` and wait for its runtime file (control.json naming its pid).
    pub fn start_control(&self) -> Proc {
        let mut cmd = Command::new(binary("sluice-control"));
        cmd.arg("--config").arg(&self.config);
        let p = Proc::spawn(cmd, &self.log_path("control"));
        let rt = self.runtime.join(relay::config::RUNTIME_FILE);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ours = std::fs::read_to_string(&rt)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["pid"].as_u64() == Some(u64::from(p.pid())));
            if ours && self.shm.exists() {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "control did not come up: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start `sluice-relay` with `extra` arguments; returns at once (see [`Self::wait_relay`]).
    pub fn spawn_relay(&self, extra: &[&str]) -> Proc {
        let mut cmd = Command::new(binary("sluice-relay"));
        cmd.arg("--config")
            .arg(&self.config)
            .args(["--no-pin", "--shm-wait", "20"])
            .args(extra);
        Proc::spawn(cmd, &self.log_path("relay"))
    }

    /// Wait for the relay's readiness line (`sluice-relay media=...`).
    pub fn wait_relay(&self, p: &Proc) -> String {
        let line = p
            .line(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("relay did not come up: {}", p.log()));
        assert!(line.starts_with("sluice-relay media="), "{line}");
        line
    }

    /// `sluicectl ARGS` against this instance; (exit status, stdout, stderr). Its stderr goes
    /// through a file, not a pipe: `sluicectl upgrade` hands its stderr to the new relay, which
    /// would hold a pipe open for as long as it runs.
    pub fn ctl(&self, args: &[&str]) -> (ExitStatus, String, String) {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let err_path = self.dir.path().join(format!(
            "sluicectl-{}.err",
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let err = std::fs::File::create(&err_path).expect("sluicectl stderr file");
        let out = Command::new(binary("sluicectl"))
            .args(args)
            .env(relay::config::RUNTIME_DIR_ENV, &self.runtime)
            .env_remove("SLUICE_ADMIN")
            .env_remove("SLUICE_TOKEN")
            .stdin(Stdio::null())
            .stderr(err)
            .output()
            .expect("run sluicectl");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            std::fs::read_to_string(&err_path).unwrap_or_default(),
        )
    }

    /// `sluicectl` that must succeed; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let (st, out, err) = self.ctl(args);
        assert!(st.success(), "sluicectl {args:?} failed ({st}): {err}");
        out
    }

    /// Add `peer` as a static-key session through the admin API; its id.
    pub fn add_session(&self, peer: &Peer) -> u64 {
        let role = match peer.role {
            Role::Viewer => "viewer",
            _ => "host",
        };
        let out = self.ctl_ok(&[
            "session",
            "add",
            "--peer",
            &peer.addr().to_string(),
            "--profile",
            peer.send_key.profile().name(),
            "--rx-key",
            &peer.send_key.to_base64(),
            "--tx-key",
            &peer.recv_key.to_base64(),
            "--role",
            role,
        ]);
        out.trim().parse().expect("session id")
    }

    /// A publisher → subscriber pair with a route, created through the admin API.
    pub fn pair(&self, seed: u64, profile: Profile) -> (Peer, Peer) {
        let p = Peer::new(seed, Role::Host, profile);
        let s = Peer::new(seed + 1, Role::Viewer, profile);
        let pid = self.add_session(&p);
        let sid = self.add_session(&s);
        self.ctl_ok(&[
            "route",
            "add",
            "--from",
            &pid.to_string(),
            "--to",
            &sid.to_string(),
        ]);
        (p, s)
    }
}

/// What a receiver saw of a steady stream.
#[derive(Debug, Default, Clone)]
pub struct StreamReport {
    pub sent: u32,
    /// Distinct sequence indexes received.
    pub received: BTreeSet<u32>,
    pub duplicates: u32,
    /// Packets that arrived after a higher index.
    pub reordered: u32,
    /// Longest time without a packet while the sender was sending.
    pub longest_gap: Duration,
}

impl StreamReport {
    pub fn lost(&self) -> Vec<u32> {
        (0..self.sent)
            .filter(|i| !self.received.contains(i))
            .collect()
    }
}

/// A steady SRTP stream publisher → relay → subscriber on two threads: `pps` packets per
/// second until [`Stream::finish`]. Packet `i` carries sequence number `i mod 2^16` and `i`
/// in its payload. Arrival times are kept so tests can measure gaps.
pub struct Stream {
    stop: Arc<AtomicBool>,
    sender: Option<std::thread::JoinHandle<u32>>,
    receiver: Option<std::thread::JoinHandle<StreamReport>>,
    /// Arrival time of every received packet (for gap measurements), in order.
    pub arrivals: Arc<Mutex<Vec<(Instant, u32)>>>,
    pub started: Instant,
}

impl Stream {
    pub fn start(mut publisher: Peer, mut subscriber: Peer, relay: SocketAddr, pps: u32) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let st = stop.clone();
        let sender = std::thread::spawn(move || {
            let start = Instant::now();
            let mut i = 0u32;
            while !st.load(Ordering::Relaxed) {
                // Pace by the clock, not by sleeps, so the rate holds on a loaded machine.
                let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(pps));
                let now = Instant::now();
                if due > now {
                    std::thread::sleep((due - now).min(Duration::from_millis(5)));
                    continue;
                }
                let mut payload = [0u8; 160];
                payload[..4].copy_from_slice(&i.to_be_bytes());
                publisher.send_rtp(relay, 0x5EED, i as u16, &payload);
                i += 1;
            }
            i
        });
        let st = stop.clone();
        let arr = arrivals.clone();
        let receiver = std::thread::spawn(move || {
            let mut rep = StreamReport::default();
            let mut buf = vec![0u8; relay::batch::MAX_DATAGRAM];
            let mut idle_since: Option<Instant> = None;
            let mut highest: Option<u32> = None;
            loop {
                match subscriber.sock.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        idle_since = None;
                        let m = subscriber
                            .recv
                            .unprotect_rtp(&mut buf, n)
                            .expect("subscriber: undecryptable packet");
                        assert!(m >= 16, "short payload");
                        let i = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]);
                        arr.lock().expect("arrivals").push((Instant::now(), i));
                        if !rep.received.insert(i) {
                            rep.duplicates += 1;
                        }
                        if highest.is_some_and(|h| i < h) {
                            rep.reordered += 1;
                        }
                        highest = highest.max(Some(i));
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if st.load(Ordering::Relaxed) {
                            // After the sender stopped: 1 s of silence ends the stream.
                            let t = *idle_since.get_or_insert_with(Instant::now);
                            if t.elapsed() > Duration::from_secs(1) {
                                break;
                            }
                        }
                    }
                    Err(e) => panic!("subscriber recv: {e}"),
                }
            }
            rep
        });
        Stream {
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
            arrivals,
            started: Instant::now(),
        }
    }

    /// Packets received so far.
    pub fn received_count(&self) -> usize {
        self.arrivals.lock().expect("arrivals").len()
    }

    /// The first arrival at or after `t`, if any.
    pub fn first_arrival_after(&self, t: Instant) -> Option<Instant> {
        self.arrivals
            .lock()
            .expect("arrivals")
            .iter()
            .map(|(a, _)| *a)
            .find(|a| *a >= t)
    }

    /// Stop sending, wait for the tail, and report.
    pub fn finish(mut self) -> StreamReport {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self
            .sender
            .take()
            .expect("finish once")
            .join()
            .expect("sender thread");
        let mut rep = self
            .receiver
            .take()
            .expect("finish once")
            .join()
            .expect("receiver thread");
        rep.sent = sent;
        let arr = self.arrivals.lock().expect("arrivals");
        rep.longest_gap = arr
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .max()
            .unwrap_or_default();
        rep
    }
}
