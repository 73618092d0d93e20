//! `sluice-relay`: the data-plane daemon.
//!
//! Start-up: SRTP self-test (known-answer vectors), configuration (`--config FILE`, else the
//! embedded default; `--bind/--shm/--workers/--backend/--slow-path` override it), map the
//! shared-memory file control creates (waiting for it with a clear message), spawn one pinned
//! worker per core with the forwarding engine as handler, publish the relay's info, tell
//! systemd `READY=1`. Then every 50 ms ([`relay::health`]): a heartbeat for every worker whose
//! loop advanced, stuck workers (no turn for the stall threshold), each worker socket's
//! receive-queue depth and kernel drops, the workers' I/O statistics, all into shm;
//! `WATCHDOG=1` while every worker is turning. SIGTERM/SIGINT stop the workers cleanly.
//!
//! Zero-loss upgrade ([`relay::io::handover`]): the relay listens on
//! `<runtime_dir>/relay-handover.sock`. A new relay started with `--takeover` receives the
//! workers' sockets from it, starts its workers on them, and the old relay stops reading,
//! flushes and exits; datagrams queued in the kernel are read by the new process. The new
//! relay then tells systemd `MAINPID=` (its own pid) and `READY=1`.
//!
//! The relay keeps no state of its own: a restarted relay reads sessions, keys and routes
//! from shared memory and forwards at once.

use clap::Parser;
use contract::config::Config;
use contract::shm::{ShmError, ShmReader};
use relay::engine::{Engine, EngineConfig, FeedbackHub, NackConfig, SlowGateRates};
use relay::health::HealthMonitor;
use relay::io::handover::{self, HandoverListener, RelayDescription, Takeover};
use relay::io::{BackendChoice, SocketBuffers};
use relay::worker::{spawn_workers, spawn_workers_on, WorkerConfig, Workers};
use sd_notify::NotifyState;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Parser)]
#[command(name = "sluice-relay", version, about = "Sluice SRTP relay data plane")]
struct Cli {
    /// Configuration file (TOML). Without it, the embedded default configuration.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override `relay.bind` (the UDP media address).
    #[arg(long, value_name = "IP:PORT")]
    bind: Option<SocketAddr>,
    /// Override `shm.path`.
    #[arg(long, value_name = "PATH")]
    shm: Option<PathBuf>,
    /// Override `relay.workers` (0 = one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Override `relay.backend`: auto, io_uring, mmsg or xdp.
    #[arg(long)]
    backend: Option<BackendChoice>,
    /// Override `control.slow_path` (control's unix socket for STUN/DTLS); `none` disables.
    #[arg(long, value_name = "PATH")]
    slow_path: Option<PathBuf>,
    /// Do not pin workers to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// How long to wait for control to create the shared-memory file (seconds; 0 = forever).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    shm_wait: u64,
    /// The hand-over socket for zero-loss upgrades (default `<runtime_dir>/relay-handover.sock`;
    /// `none` disables).
    #[arg(long, value_name = "PATH")]
    handover: Option<PathBuf>,
    /// Take the media sockets over from the relay listening on the hand-over socket (an
    /// upgrade: that relay exits once this one forwards; no datagram is lost).
    #[arg(long)]
    takeover: bool,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Tell systemd (`$NOTIFY_SOCKET`, when set) about a state change; a failure is only logged.
fn notify_systemd(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Map the shm file, waiting for control to create it (a missing, uninitialised or short
/// file); a foreign, other-version or world-readable file is refused at once.
fn open_shm(path: &Path, wait: u64, stop: &AtomicBool) -> Result<ShmReader, String> {
    let start = Instant::now();
    let mut last_note: Option<Instant> = None;
    loop {
        match ShmReader::open(path) {
            Ok(r) => return Ok(r),
            // A file of another release, of another program, or readable by others is not
            // going to fix itself: refuse at once (control re-creating it is a restart away).
            Err(
                e @ (ShmError::BadMagic { .. }
                | ShmError::Version { .. }
                | ShmError::Layout { .. }
                | ShmError::Mode { .. }),
            ) => {
                return Err(format!("refusing shared memory {}: {e}", path.display()));
            }
            Err(e) => {
                if wait != 0 && start.elapsed() >= Duration::from_secs(wait) {
                    return Err(format!(
                        "shared memory {} not usable after {wait} s: {e}",
                        path.display()
                    ));
                }
                if last_note.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    tracing::warn!(
                        path = %path.display(), error = %e,
                        "waiting for sluice-control to create the shared-memory file"
                    );
                    last_note = Some(Instant::now());
                }
                if stop.load(Ordering::Relaxed) {
                    return Err("stopped while waiting for shared memory".into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Set by SIGHUP; the supervisor loop logs what a reload of the relay means.
static SIGHUP_SEEN: std::sync::LazyLock<Arc<AtomicBool>> =
    std::sync::LazyLock::new(|| Arc::new(AtomicBool::new(false)));

fn run(cli: Cli, cfg: Config) -> Result<(), String> {
    contract::srtp::self_test().map_err(|e| format!("SRTP self-test failed: {e}"))?;

    let shm_path = cli.shm.clone().unwrap_or_else(|| cfg.shm.path.clone());
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("installing signal handler: {e}"))?;
    }
    // SIGHUP must not kill the data plane (its default action). The relay reads its
    // configuration at start only; a reload is a zero-loss upgrade, which re-reads the file.
    signal_hook::flag::register(signal_hook::consts::SIGHUP, SIGHUP_SEEN.clone())
        .map_err(|e| format!("installing signal handler: {e}"))?;

    let handover_path = match &cli.handover {
        Some(p) if p.as_os_str() == "none" => None,
        Some(p) => Some(p.clone()),
        None => Some(handover::socket_path(&cfg.runtime_dir)),
    };
    let reader = Arc::new(open_shm(&shm_path, cli.shm_wait, &stop)?);
    tracing::info!(path = %shm_path.display(), generation = reader.generation(), "shared memory mapped");
    let slots = reader.capacity().workers as usize;

    let (wcfg, ecfg) = worker_settings(&cli, &cfg);
    // An idle worker turns once per poll interval: not finishing a turn for the stall
    // threshold (and at least two poll intervals) means it is stuck.
    let stuck_after = wcfg.stall_threshold.max(wcfg.poll_interval * 2);
    let r = reader.clone();
    // One feedback hub for all workers (cross-worker NACK/PLI/FIR, docs/ENGINE.md); sized
    // for every worker slot, so workers handed over later still have an inbox.
    let hub = Arc::new(FeedbackHub::new(slots.max(1)));
    let make_engine = move |i| {
        let mut e = <Engine>::new(r.clone(), EngineConfig { worker: i, ..ecfg });
        e.attach_hub(hub.clone());
        // The engine never reads the wall clock: published packet times count from here.
        e.set_wall_clock(Instant::now(), unix_ms());
        e
    };
    let (running, takeover_from) = if cli.takeover {
        let path = handover_path
            .as_deref()
            .ok_or("--takeover needs a hand-over socket (not --handover none)")?;
        take_over(path, &shm_path, wcfg, make_engine)?
    } else {
        let w = spawn_workers(wcfg, make_engine).map_err(|e| e.to_string())?;
        (w, None)
    };
    let n = running.len();
    if n > slots {
        tracing::warn!(
            workers = n,
            counter_slots = slots,
            "more workers than shared-memory counter blocks; the extra workers are not counted"
        );
    }
    reader.set_relay_info(
        std::process::id(),
        running.backend().as_str(),
        n as u32,
        unix_ms(),
    );
    tracing::info!(
        addr = %running.local_addr(), workers = n, backend = %running.backend(),
        fallback = running.fallback_reason().unwrap_or(""),
        "sluice-relay forwarding"
    );
    let listener = handover_path.as_deref().and_then(|p| {
        match HandoverListener::bind(p, takeover_from.is_some()) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "zero-loss upgrades of this relay are disabled");
                None
            }
        }
    });
    let me = RelayDescription {
        pid: std::process::id(),
        exe: handover::current_exe(),
        media: running.local_addr(),
        backend: running.backend().as_str().to_string(),
        workers: n,
        shm: shm_path.clone(),
        args: std::env::args()
            .skip(1)
            .filter(|a| a != "--takeover")
            .collect(),
    };
    // One machine-readable line for supervisors and tests.
    println!(
        "sluice-relay media={} backend={} workers={n}{}",
        running.local_addr(),
        running.backend(),
        takeover_from.map_or(String::new(), |p| format!(" takeover={p}"))
    );
    if takeover_from.is_some() {
        notify_systemd(&[NotifyState::MainPid(std::process::id()), NotifyState::Ready]);
    } else {
        notify_systemd(&[NotifyState::Ready]);
    }

    if let Some(req) = supervise(
        &running,
        &reader,
        &stop,
        listener.as_ref(),
        &me,
        stuck_after,
        takeover_from.is_some(),
    ) {
        return hand_over(running, req);
    }
    tracing::info!("stopping");
    notify_systemd(&[NotifyState::Stopping]);
    if let Some(l) = listener {
        l.remove();
    }
    running.stop().map_err(|e| e.to_string())?;
    Ok(())
}

/// The workers' and engines' settings: the configuration file with the command line's
/// overrides. The engine settings' `worker` is filled in per worker.
fn worker_settings(cli: &Cli, cfg: &Config) -> (WorkerConfig, EngineConfig) {
    let backend = cli.backend.unwrap_or(cfg.relay.backend);
    let workers = cli.workers.unwrap_or(cfg.relay.workers as usize);
    let slow_path = match &cli.slow_path {
        Some(p) if p.as_os_str() == "none" => None,
        Some(p) => Some(p.clone()),
        None if cfg.control.slow_path.as_os_str().is_empty() => None,
        None => Some(cfg.control.slow_path.clone()),
    };
    let wcfg = WorkerConfig {
        bind: cli.bind.unwrap_or(cfg.relay.bind),
        workers: (workers != 0).then_some(workers),
        backend,
        batch: cfg.relay.batch.max(1) as usize,
        tx_capacity: (cfg.relay.batch.max(1) as usize * 8).max(256),
        socket_buffers: SocketBuffers {
            recv: cfg.relay.recv_buffer_bytes as usize,
            send: cfg.relay.send_buffer_bytes as usize,
        },
        stall_threshold: Duration::from_millis(u64::from(cfg.relay.stall_threshold_ms)),
        max_datagram: cfg.relay.max_datagram_bytes as usize,
        pin: !cli.no_pin,
        slow_path,
        tcp: cfg.relay.tcp.enabled.then(|| {
            (
                cfg.relay
                    .tcp
                    .listen_addr(cli.bind.unwrap_or(cfg.relay.bind)),
                relay::io::tcp::TcpParams {
                    max_connections: cfg.relay.tcp.max_connections as usize,
                    handshake_timeout: Duration::from_millis(u64::from(
                        cfg.relay.tcp.handshake_timeout_ms,
                    )),
                    send_buffer: cfg.relay.tcp.send_buffer_bytes as usize,
                    forward_queue: cfg.relay.tcp.forward_queue_frames as usize,
                },
            )
        }),
        ..WorkerConfig::default()
    };
    // Control's slow-path limits, split over the workers (each worker gates its own share; a
    // source keeps its full per-source rate in the worker its packets hash to).
    let gate_workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let slow_gate = Some(SlowGateRates {
        global: cfg
            .control
            .slow_path_rate
            .div_ceil(u32::try_from(gate_workers).unwrap_or(u32::MAX).max(1)),
        per_source: cfg.control.slow_path_per_source_rate,
    });
    let r = &cfg.relay;
    let ms = |v: u32| Duration::from_millis(u64::from(v));
    let nack = NackConfig {
        cache_packets: r.nack_cache_packets as usize,
        max_age: ms(r.nack_cache_age_ms),
        cache_streams: r.nack_cache_streams as usize,
        rtt: ms(r.nack_rtt_ms),
        retries: u8::try_from(r.nack_upstream_retries).unwrap_or(u8::MAX),
        pli_interval: ms(r.pli_interval_ms),
    };
    let ecfg = EngineConfig {
        worker: 0,
        srtp: cfg.srtp.context_options(),
        slow_gate,
        nack,
    };
    (wcfg, ecfg)
}

/// `--takeover`: receive the running relay's media sockets, start the workers on them and
/// wait until the old relay stopped reading. Returns the workers and the old relay's pid.
fn take_over(
    path: &Path,
    shm_path: &Path,
    wcfg: WorkerConfig,
    make_engine: impl Fn(usize) -> Engine + Send + 'static,
) -> Result<(Workers, Option<u32>), String> {
    let mut t = Takeover::connect(path, shm_path, Duration::from_secs(10))
        .map_err(|e| format!("taking over: {e}"))?;
    tracing::info!(
        old_pid = t.old.pid, media = %t.old.media, workers = t.sockets.len(),
        "received the media sockets of the running relay"
    );
    let sockets = std::mem::take(&mut t.sockets);
    let tcp_addr = wcfg.tcp.map(|(addr, _)| addr);
    let running = spawn_workers_on(wcfg, sockets, make_engine).map_err(|e| e.to_string())?;
    let old_pid = t.old.pid;
    let mut tcp = t
        .ready_and_wait(Duration::from_secs(30))
        .map_err(|e| format!("waiting for the old relay to stop: {e}"))?;
    tracing::info!(
        old_pid,
        tcp_connections = tcp.conns.len(),
        "the old relay stopped reading; this relay owns the sockets"
    );
    match tcp_addr {
        Some(addr) => {
            if tcp.listener.is_none() {
                // The old relay ran no ICE-TCP: listen ourselves (its port may be held until
                // it has exited).
                tcp.listener = Some(listen_tcp_after(addr, Duration::from_secs(5))?.into());
            }
            running.adopt_tcp(tcp);
        }
        None if tcp.listener.is_some() || !tcp.conns.is_empty() => tracing::warn!(
            connections = tcp.conns.len(),
            "the old relay ran ICE-TCP and this one does not (relay.tcp.enabled): its \
             connections are closed"
        ),
        None => {}
    }
    Ok((running, Some(old_pid)))
}

/// Bind the ICE-TCP listener on `addr`, retrying while the port is still taken (for up to
/// `patience`).
fn listen_tcp_after(
    addr: std::net::SocketAddr,
    patience: Duration,
) -> Result<std::net::TcpListener, String> {
    let give_up = Instant::now() + patience;
    loop {
        match relay::io::tcp::bind_listener(addr) {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() >= give_up => {
                return Err(format!("ICE-TCP listener on {addr}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Until a stop signal or a hand-over: worker health sampled into shm ([`HealthMonitor`]:
/// heartbeats for every worker whose loop advanced, stuck workers, receive queues, kernel
/// drops, I/O statistics), `WATCHDOG=1` while every worker is turning its loop, and answers
/// on the hand-over socket. Returns the accepted hand-over request, if that is what ended it.
fn supervise(
    running: &Workers,
    reader: &ShmReader,
    stop: &AtomicBool,
    listener: Option<&HandoverListener>,
    me: &RelayDescription,
    stuck_after: Duration,
    inherited: bool,
) -> Option<handover::TakeoverRequest> {
    let n = running.len();
    let watchdog = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|us| Duration::from_micros(us / 2));
    let tick = watchdog
        .unwrap_or(Duration::from_secs(1))
        .min(Duration::from_secs(1));
    let mut health = HealthMonitor::new(n, stuck_after, Instant::now(), inherited);
    while !stop.load(Ordering::Relaxed) {
        // Short sleeps: a hand-over request waits at most this long for an answer.
        std::thread::sleep(tick.min(Duration::from_millis(50)));
        // Heartbeats for workers that turned, stuck workers, receive queues, kernel drops
        // and I/O statistics into shm (relay::health).
        let all_turning = health.sample(running, reader, Instant::now(), unix_ms());
        if SIGHUP_SEEN.swap(false, Ordering::Relaxed) {
            tracing::info!(
                "SIGHUP: the relay reads its configuration at start only; apply relay keys \
                 with `systemctl reload sluice-relay` (sluicectl upgrade: a new relay on the \
                 same sockets, no packet lost)"
            );
        }
        if watchdog.is_some() && all_turning {
            notify_systemd(&[NotifyState::Watchdog]);
        }
        if let Some(req) = listener.and_then(|l| l.poll(me)) {
            tracing::info!("a new relay asks for the media sockets");
            match req.offer(me, running.sockets(), Duration::from_secs(30)) {
                Ok(()) => return Some(req),
                Err(e) => tracing::warn!(error = %e, "hand-over abandoned; still serving"),
            }
        }
    }
    None
}

/// The new relay runs on our sockets: stop reading, finish what the workers hold, tell it,
/// exit. The hand-over socket path and the relay info in shared memory now belong to the new
/// relay (it rebinds the one and rewrites the other), so neither is touched here.
fn hand_over(running: Workers, req: handover::TakeoverRequest) -> Result<(), String> {
    let t = Instant::now();
    let r = match running.hand_over() {
        Ok(Some(tcp)) => {
            let n = tcp.conns.len();
            // Our copies of the descriptors close after sending; the new relay holds its own.
            match req.send_tcp(tcp) {
                Ok(()) => tracing::info!(connections = n, "ICE-TCP connections handed over"),
                Err(e) => tracing::warn!(error = %e, "ICE-TCP hand-over failed"),
            }
            Ok(())
        }
        other => other.map(|_| ()),
    };
    req.done();
    tracing::info!(
        took_ms = t.elapsed().as_millis() as u64,
        "media sockets handed over; exiting"
    );
    r.map_err(|e| e.to_string())
}

fn main() {
    let cli = Cli::parse();
    let cfg = match &cli.config {
        Some(p) => Config::load(p),
        None => Ok(Config::embedded_default()),
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice-relay: {e}");
            std::process::exit(1);
        }
    };
    cfg.log.format.init();
    if let Err(e) = run(cli, cfg) {
        tracing::error!("{e}");
        eprintln!("sluice-relay: {e}");
        std::process::exit(1);
    }
}
