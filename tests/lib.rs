//! Helpers shared by the end-to-end tests: temp dirs, SRTP peers on loopback UDP sockets,
//! and a bare `sluice-relay` child process; [`daemons`] runs the whole appliance (control,
//! relay, sluicectl, sluice-bench) as real processes, and [`procs`] keeps the upgrade and
//! fault tests' names for it.
#![deny(unsafe_code)]

pub mod aiortc;
pub mod cluster_rig;
pub mod daemons;
pub mod ice_tcp_peer;
pub mod netns;
pub mod procs;
#[path = "support/skip.rs"]
pub mod skip;
pub mod webrtc_rig;

use contract::shm::{Role, SessionRecord, ShmReader};
use contract::srtp::{Context, ContextOptions, MasterKey, Profile};
use relay::batch::MAX_DATAGRAM;
use relay::engine::{Engine, EngineConfig, FeedbackHub, SlowGateRates};
use relay::worker::{spawn_workers, WorkerConfig, Workers};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// In-process relay workers on `cfg` (bind it to port 0 on loopback), each running the
/// production engine over `reader` (the worker passes it the time) and, when given, the relay's
/// slow-path gate.
pub fn relay_workers(
    reader: Arc<ShmReader>,
    cfg: WorkerConfig,
    slow_gate: Option<SlowGateRates>,
) -> Workers {
    // One feedback hub for all workers, as the daemon builds it (docs/ENGINE.md).
    let n = cfg.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let hub = Arc::new(FeedbackHub::new(n));
    spawn_workers(cfg, move |i| {
        let mut e = <Engine>::new(
            reader.clone(),
            EngineConfig {
                worker: i,
                slow_gate,
                ..EngineConfig::default()
            },
        );
        e.attach_hub(hub.clone());
        e
    })
    .expect("spawn workers")
}

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!(
            "sluice-e2e-{tag}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic, distinct key material (tests need no secrecy, only independence).
pub fn test_key(profile: Profile, seed: u64) -> MasterKey {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let bytes: Vec<u8> = (0..profile.key_material_len())
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    MasterKey::new(profile, &bytes).expect("length matches the profile")
}

pub fn srtp_options() -> ContextOptions {
    ContextOptions {
        max_streams: 64,
        ..ContextOptions::default()
    }
}

/// A media peer: a loopback UDP socket, the key it encrypts with and the key it decrypts with.
pub struct Peer {
    pub id: u64,
    pub role: Role,
    pub sock: UdpSocket,
    pub send_key: MasterKey,
    pub recv_key: MasterKey,
    pub send: Context,
    pub recv: Context,
}

impl Peer {
    pub fn new(id: u64, role: Role, profile: Profile) -> Peer {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind peer socket");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set timeout");
        // Room for a whole test burst while the reader thread waits for a core on a loaded
        // 2-core runner (loopback charges ~2 KiB of buffer per small datagram); the kernel caps
        // it at net.core.rmem_max, which is still several times the default.
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&sock, 4 << 20);
        let send_key = test_key(profile, id * 2);
        let recv_key = test_key(profile, id * 2 + 1);
        Peer {
            id,
            role,
            sock,
            send_key,
            recv_key,
            send: Context::new(send_key, srtp_options()).expect("context"),
            recv: Context::new(recv_key, srtp_options()).expect("context"),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    pub fn record(&self) -> SessionRecord {
        SessionRecord {
            id: self.id,
            peer: self.addr(),
            role: self.role,
            rx_key: self.send_key,
            tx_key: self.recv_key,
            key_epoch: 1,
            flags: 0,
            max_pps: 0,
            ice: None,
        }
    }

    /// Send one SRTP packet to `relay`.
    pub fn send_rtp(&mut self, relay: SocketAddr, ssrc: u32, seq: u16, payload: &[u8]) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut h = vec![0x80u8, 96];
        h.extend_from_slice(&seq.to_be_bytes());
        h.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
        h.extend_from_slice(&ssrc.to_be_bytes());
        buf[..12].copy_from_slice(&h);
        buf[12..12 + payload.len()].copy_from_slice(payload);
        let n = self
            .send
            .protect_rtp(&mut buf, 12 + payload.len())
            .expect("protect");
        self.sock.send_to(&buf[..n], relay).expect("send");
    }

    /// Receive and decrypt SRTP until `want` packets arrived or `idle` passed without any.
    /// Returns (ssrc, seq, payload) of each; panics on a packet that does not decrypt.
    pub fn recv_rtp(&mut self, want: usize, idle: Duration) -> Vec<(u32, u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut last = Instant::now();
        while out.len() < want && last.elapsed() < idle {
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    last = Instant::now();
                    let m = self
                        .recv
                        .unprotect_rtp(&mut buf, n)
                        .unwrap_or_else(|e| panic!("peer {}: undecryptable packet: {e}", self.id));
                    let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
                    let seq = u16::from_be_bytes([buf[2], buf[3]]);
                    out.push((ssrc, seq, buf[12..m].to_vec()));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
        out
    }
}

/// A free loopback UDP port (see [`free_port_on`]).
pub fn free_udp_port() -> u16 {
    free_port_on(std::net::IpAddr::from([127, 0, 0, 1]))
}

/// A port free now for both UDP and TCP on `ip` (a relay's media port: ICE-TCP listens on the
/// same number), chosen at random *below* the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`). A port the kernel picked for a bind to port 0 would sit
/// inside that range, where any socket that sends or connects without binding (a test's
/// client, a browser, a daemon's outgoing connection) may be given it between the moment the
/// test picks it and the moment the daemon binds it; below the range only an explicit bind
/// can take it.
pub fn free_port_on(ip: std::net::IpAddr) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    const FLOOR: u16 = 10_000;
    if low > FLOOR + 1000 {
        let span = u64::from(low - FLOOR);
        let keys = std::collections::hash_map::RandomState::new();
        for i in 0u64..500 {
            let mut h = keys.build_hasher();
            h.write_u64(i);
            let port = FLOOR + (h.finish() % span) as u16;
            let udp = UdpSocket::bind((ip, port));
            if udp.is_ok() && std::net::TcpListener::bind((ip, port)).is_ok() {
                return port;
            }
        }
    }
    // A machine whose ephemeral range starts low: the kernel's choice, checked for TCP too.
    for _ in 0..100 {
        let udp = UdpSocket::bind((ip, 0)).expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for UDP and TCP on {ip}");
}

/// A running `sluice-relay` (a [`daemons::Proc`], killed on drop) and what it reported.
pub struct RelayProcess {
    pub proc_: daemons::Proc,
    pub media: SocketAddr,
    pub backend: String,
}

impl std::ops::Deref for RelayProcess {
    type Target = daemons::Proc;
    fn deref(&self) -> &daemons::Proc {
        &self.proc_
    }
}

impl RelayProcess {
    /// Start the relay on `bind` with shared memory at `shm`, one worker, no slow path; its
    /// log goes beside the shm file.
    pub fn start(shm: &Path, bind: SocketAddr, backend: &str) -> RelayProcess {
        let mut cmd = Command::new(daemons::bin("sluice-relay"));
        cmd.arg("--shm")
            .arg(shm)
            .args(["--bind", &bind.to_string(), "--workers", "1"])
            .args(["--backend", backend, "--slow-path", "none", "--no-pin"])
            .args(["--shm-wait", "10"]);
        let dir = shm.parent().expect("shm file in a directory");
        let proc_ = daemons::Proc::spawn_lines("sluice-relay", cmd, dir);
        let line = proc_.wait_line("sluice-relay ", daemons::START_TIMEOUT);
        // "sluice-relay media=IP:PORT backend=NAME workers=N"
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("relay did not report {k}: {line:?}"))
                .to_string()
        };
        let media = field("media=").parse().expect("media address");
        let backend = field("backend=");
        RelayProcess {
            proc_,
            media,
            backend,
        }
    }

    /// SIGTERM and wait; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        self.proc_.signal(rustix::process::Signal::TERM);
        let clean = self
            .proc_
            .wait(Duration::from_secs(10))
            .is_some_and(|st| st.success());
        self.proc_.kill9();
        clean
    }
}
