//! Worker threads: one per allowed CPU, pinned, each with its own socket in a SO_REUSEPORT
//! group and its own [`io::Backend`](crate::io::Backend); the loop that glues the backend to a
//! [`Handler`] (the forwarding engine, or [`Echo`]).
//!
//! Owns: threads, pinning, the clock (read at the start of each turn and after its drain, and
//! passed in), the stall detector, the stop flag, per-worker counters, the wake fds (`wake`:
//! one eventfd per worker, a few syscalls per cross-worker wake, none per packet). May not
//! touch: packet contents (the handler's job), other syscalls than through [`crate::io`].
//!
//! One loop turn:
//! 1. `wait` for datagrams (at most `poll_interval`, so a stop request is seen within it, and
//!    no later than the handler's [`Handler::next_deadline`];
//!    io_uring: this is the turn's one `io_uring_enter`, which also submits last turn's sends);
//! 2. read the clock once; `handler.begin_batch(now)`;
//! 3. `drain` up to `batch` datagrams into `handler.on_datagram(src, buf, len, tx, slow)`;
//! 4. `handler.end_batch(end, tx, slow)` with the clock read again (`end`, for the engine's
//!    batch-time histogram);
//! 5. pass `slow` (datagrams for control, `dst` = the peer they came from) to the slow-path
//!    client and queue control's replies in the backend's transmit queue — read only when the
//!    backend reported the connection readable (it watches the fd,
//!    [`Backend::watch_readable`]), so an idle turn makes no slow-path syscall and a reply
//!    wakes the worker at once;
//! 6. `flush` the transmit queue: media, engine-made RTCP and control's replies leave in one
//!    batch (GSO for runs);
//! 7. log and count the turn if it took longer than `stall_threshold`; publish counters.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::batch::TxQueue;
use crate::engine::{Engine, SrtpOps};
use crate::io::mmsg::MmsgBackend;
use crate::io::slowpath::SlowPathClient;
use crate::io::tcp::{self, TcpForwarder, TcpHandover, TcpHub, TcpParams, TcpRole, TcpSide};
use crate::io::uring::UringBackend;
use crate::io::xdp::{XdpBackend, XdpShared};
use crate::io::{
    self, Backend, BackendChoice, BackendParams, BufferGrant, IoError, RunningBackend,
    SocketBuffers,
};

mod stats;
pub mod wake;

pub use wake::Wakers;
use wake::WatchSet;

use stats::publish;

/// Counters of one worker, each written only by that worker (published once per turn).
pub type WorkerStats = io::SharedCounters;
/// A plain copy of [`WorkerStats`].
pub type StatsSnapshot = io::IoCounters;

/// What a worker drives: the forwarding engine implements this; [`Echo`] is the baseline.
///
/// All calls of one turn get the same `now` (from [`begin_batch`](Handler::begin_batch));
/// [`end_batch`](Handler::end_batch) also gets the time the drain ended.
/// `buf` in [`on_datagram`](Handler::on_datagram) is the whole receive buffer
/// ([`crate::batch::MAX_DATAGRAM`] bytes) with the datagram in `buf[..len]`; the handler may
/// decrypt or rewrite it in place. It fills `tx` with datagrams to send and `slow` with
/// datagrams for control (the `dst` of a slow entry is the peer it came from). A full queue
/// refuses pushes; when `tx` is full between datagrams the worker sends it and goes on.
pub trait Handler {
    /// Start of a loop turn.
    fn begin_batch(&mut self, now: Instant) {
        let _ = now;
    }
    /// One received datagram.
    fn on_datagram(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        tx: &mut TxQueue,
        slow: &mut TxQueue,
    );
    /// The last datagram filled `tx` before it reached all its outputs, and the worker has
    /// sent the queue: queue the rest (as much as fits). True while some is left.
    fn resume(&mut self, tx: &mut TxQueue) -> bool {
        let _ = tx;
        false
    }
    /// The queue could not be sent: give up what [`resume`](Handler::resume) would have
    /// queued (counted as dropped).
    fn abandon(&mut self) {}
    /// End of the turn's datagrams at `now` (the worker's clock, read once after the drain):
    /// flush per-subscriber trains, timers, ... into `tx` and `slow`.
    fn end_batch(&mut self, now: Instant, tx: &mut TxQueue, slow: &mut TxQueue) {
        let _ = (now, tx, slow);
    }
    /// `n` replies from control (STUN answers, DTLS flights) joined this turn's transmit
    /// queue; the engine counts them in shm (`slow_path_down`).
    fn slow_path_replies(&mut self, n: u64) {
        let _ = n;
    }
    /// The loop turn ended; `stalled` when it took longer than `stall_threshold`.
    fn end_turn(&mut self, stalled: bool) {
        let _ = stalled;
    }
    /// After [`end_batch`](Handler::end_batch): call `wake` with each worker this turn handed
    /// work to (feedback about a publisher that worker receives), once each.
    fn take_wakes(&mut self, wake: &mut dyn FnMut(usize)) {
        let _ = wake;
    }
    /// The latest time the next turn should start for the handler's timers (the engine paces
    /// a bandwidth probe at 5 ms); `None`: the poll interval is soon enough.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
    /// `n` datagrams larger than the receive buffers ([`WorkerConfig::max_datagram`]) arrived
    /// truncated since the last call and were dropped by the backend; the engine counts them
    /// in shm (drop reason `oversized`). Called at the end of a turn that saw any.
    fn oversized(&mut self, n: u64) {
        let _ = n;
    }
}

/// The forwarding engine as a worker's handler: the worker owns the loop and the clock and
/// calls the engine's sans-I/O API with the turn's time and the backend's queues.
impl<C: SrtpOps> Handler for Engine<C> {
    #[inline]
    fn begin_batch(&mut self, now: Instant) {
        Engine::begin_batch(self, now);
    }

    #[inline]
    fn on_datagram(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        tx: &mut TxQueue,
        slow: &mut TxQueue,
    ) {
        self.handle_datagram(src, buf, len, tx, slow);
    }

    #[inline]
    fn resume(&mut self, tx: &mut TxQueue) -> bool {
        self.resume_fan_out(tx)
    }

    fn abandon(&mut self) {
        self.abandon_fan_out();
    }

    #[inline]
    fn end_batch(&mut self, now: Instant, tx: &mut TxQueue, _slow: &mut TxQueue) {
        self.poll(now, tx);
        Engine::end_batch(self, now);
    }

    fn slow_path_replies(&mut self, n: u64) {
        self.handle_slow_path_replies(n);
    }

    fn next_deadline(&self) -> Option<Instant> {
        Engine::next_deadline(self)
    }

    fn end_turn(&mut self, stalled: bool) {
        self.handle_turn_end(stalled);
    }

    fn oversized(&mut self, n: u64) {
        self.handle_oversized(n);
    }

    fn take_wakes(&mut self, wake: &mut dyn FnMut(usize)) {
        Engine::take_wakes(self, wake);
    }
}

/// Plain UDP reflector: every datagram goes back to its sender unchanged. The "plain UDP
/// echo" baseline the benchmarks compare the relay against.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo {
    /// Datagrams queued back.
    pub echoed: u64,
    /// Datagrams that did not fit the transmit queue.
    pub dropped: u64,
}

impl Handler for Echo {
    #[inline]
    fn on_datagram(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        tx: &mut TxQueue,
        _slow: &mut TxQueue,
    ) {
        if tx.push(src, &buf[..len]) {
            self.echoed += 1;
        } else {
            self.dropped += 1;
        }
    }
}

/// Worker settings (the config file maps onto this).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Media address; port 0 picks one port shared by all workers.
    pub bind: SocketAddr,
    /// Worker count; `None` = one per CPU this process may run on.
    pub workers: Option<usize>,
    /// The configured backend (`auto` is resolved at start, [`Workers::backend`]).
    pub backend: BackendChoice,
    /// Datagrams per receive batch.
    pub batch: usize,
    /// Transmit queue capacity in datagrams (fan-out needs more than `batch`).
    pub tx_capacity: usize,
    /// io_uring provided receive buffers per worker.
    pub recv_buffers: usize,
    /// Largest datagram received (and sent): the receive buffers' size
    /// (`relay.max_datagram_bytes`, [`BackendParams::max_datagram`]).
    pub max_datagram: usize,
    pub socket_buffers: SocketBuffers,
    /// A loop turn longer than this is logged and counted.
    pub stall_threshold: Duration,
    /// Longest wait for datagrams; bounds how late a stop request is seen (at most
    /// [`MAX_POLL_INTERVAL`]). Slow-path replies and reconnect attempts do not wait for it.
    pub poll_interval: Duration,
    /// Pin worker `i` to allowed CPU `i mod n`.
    pub pin: bool,
    /// Control's slow-path socket; `None` = slow-path datagrams are dropped and counted.
    pub slow_path: Option<PathBuf>,
    /// Passive ICE-TCP: the listen address (port 0: the media port) and its bounds. Worker 0
    /// holds the listener and every connection; the other workers hand it datagrams for TCP
    /// peers ([`crate::io::tcp`]). Runs on the io_uring and mmsg backends (not xdp).
    pub tcp: Option<(SocketAddr, TcpParams)>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            workers: None,
            backend: BackendChoice::Auto,
            batch: 64,
            tx_capacity: 256,
            recv_buffers: 1024,
            max_datagram: crate::batch::MAX_DATAGRAM,
            socket_buffers: SocketBuffers::default(),
            stall_threshold: Duration::from_millis(50),
            poll_interval: Duration::from_millis(20),
            pin: true,
            slow_path: None,
            tcp: None,
        }
    }
}

/// Upper bound of [`WorkerConfig::poll_interval`].
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// Errors starting or running workers.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker {worker}: {source}")]
    Io {
        worker: usize,
        #[source]
        source: IoError,
    },
    #[error(transparent)]
    Setup(#[from] IoError),
    #[error("spawning worker thread: {0}")]
    Spawn(std::io::Error),
    #[error("worker {0} panicked")]
    Panicked(usize),
    #[error("invalid worker config: {0}")]
    Config(String),
}

/// Running workers.
pub struct Workers {
    local_addr: SocketAddr,
    backend: RunningBackend,
    fallback_reason: Option<String>,
    grant: BufferGrant,
    stop: Arc<AtomicBool>,
    /// Set with `stop` when the sockets go to a new process: workers finish what they hold.
    handover: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Result<(), IoError>>>,
    stats: Vec<Arc<WorkerStats>>,
    /// A duplicate of every worker's socket (same file description), in worker order, kept
    /// so the sockets can be handed to a new relay process.
    sockets: Vec<UdpSocket>,
    /// The ICE-TCP listen address, when ICE-TCP runs.
    tcp_addr: Option<SocketAddr>,
    /// The ICE-TCP hub, when ICE-TCP runs (adoption of a predecessor's connections).
    tcp_hub: Option<Arc<TcpHub>>,
    /// Where the TCP owner leaves its side when it stops for a hand-over.
    tcp_parked: Arc<Mutex<Option<Box<TcpSide>>>>,
}

impl Workers {
    /// The media address every worker is bound to (the chosen port when asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    /// The ICE-TCP address every worker listens on, when ICE-TCP runs.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }
    /// The backend running.
    pub fn backend(&self) -> RunningBackend {
        self.backend
    }
    /// Why `auto` did not pick io_uring, if it did not.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }
    /// Socket buffer sizes the kernel granted (first worker's socket).
    pub fn buffer_grant(&self) -> BufferGrant {
        self.grant
    }
    /// Worker count.
    pub fn len(&self) -> usize {
        self.stats.len()
    }
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }
    /// Per-worker counters.
    pub fn stats(&self) -> &[Arc<WorkerStats>] {
        &self.stats
    }
    /// Sum of every worker's counters.
    pub fn total(&self) -> StatsSnapshot {
        self.stats
            .iter()
            .map(|s| s.snapshot())
            .fold(StatsSnapshot::default(), |a, b| a + b)
    }
    /// The shared stop flag (set it from a signal handler, then call [`join`](Self::join)).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }
    /// The workers' sockets, in worker order (duplicates sharing each socket's file
    /// description and its queue of received datagrams).
    pub fn sockets(&self) -> &[UdpSocket] {
        &self.sockets
    }
    /// Stop for a socket hand-over: each worker ends after its current turn, hands what its
    /// backend already took from the socket to the handler ([`Backend::stop_receiving`], then
    /// drain), flushes its transmit queue and shuts the backend down. Datagrams still queued
    /// in the kernel stay there for the process that now shares the sockets. Returns the
    /// ICE-TCP listener and connections, when ICE-TCP runs, for the process that takes over
    /// ([`TcpSide::hand_over`]: what other workers queued for them is written first).
    pub fn hand_over(mut self) -> Result<Option<TcpHandover>, WorkerError> {
        self.handover.store(true, Ordering::Release);
        self.stop.store(true, Ordering::Release);
        let r = self.join_all();
        let side = self
            .tcp_parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut scratch = crate::io::IoCounters::default();
        let handed = side.map(|s| s.hand_over(&mut scratch));
        r.map(|()| handed)
    }
    /// Give the ICE-TCP owner the listener and connections of the relay this one took over
    /// from (or, when that relay had none, a listener of its own). False when this relay does
    /// not run ICE-TCP (the connections are then closed).
    pub fn adopt_tcp(&self, h: TcpHandover) -> bool {
        match &self.tcp_hub {
            Some(hub) => {
                hub.offer(h);
                true
            }
            None => false,
        }
    }
    /// Ask every worker to stop and wait for them.
    pub fn stop(mut self) -> Result<(), WorkerError> {
        self.stop.store(true, Ordering::Release);
        self.join_all()
    }
    /// Wait for the workers to end (after the stop flag is set).
    pub fn join(mut self) -> Result<(), WorkerError> {
        self.join_all()
    }

    fn join_all(&mut self) -> Result<(), WorkerError> {
        let mut first = Ok(());
        for (i, h) in self.handles.drain(..).enumerate() {
            let r = match h.join() {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(WorkerError::Io {
                    worker: i,
                    source: e,
                }),
                Err(_) => Err(WorkerError::Panicked(i)),
            };
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.join_all();
    }
}

fn check_config(cfg: &WorkerConfig) -> Result<(), WorkerError> {
    if cfg.batch == 0 || cfg.tx_capacity == 0 {
        return Err(WorkerError::Config(
            "batch and tx_capacity must be at least 1".into(),
        ));
    }
    if cfg.tcp.is_some() && cfg.backend == BackendChoice::Xdp {
        return Err(WorkerError::Config(
            "ICE-TCP (relay.tcp.enabled) runs on the io_uring and mmsg backends; set \
             relay.backend to \"auto\", \"io_uring\" or \"mmsg\""
                .into(),
        ));
    }
    Ok(())
}

fn allowed_cores(cfg: &WorkerConfig) -> Vec<core_affinity::CoreId> {
    if cfg.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    }
}

/// Start the workers: check that no other socket holds `cfg.bind` ([`io::check_port_free`];
/// [`IoError::AddrInUse`] otherwise), bind one SO_REUSEPORT socket each on one port, resolve
/// the backend (`auto` falls back to mmsg with the reason kept in
/// [`Workers::fallback_reason`]), spawn and pin the threads, and return once every worker has
/// set up its backend (or the first error).
pub fn spawn_workers<H, F>(cfg: WorkerConfig, make_handler: F) -> Result<Workers, WorkerError>
where
    H: Handler + Send + 'static,
    F: Fn(usize) -> H,
{
    check_config(&cfg)?;
    let cores = allowed_cores(&cfg);
    let n = match cfg.workers {
        Some(0) => return Err(WorkerError::Config("workers must be at least 1".into())),
        Some(n) => n,
        None if !cores.is_empty() => cores.len(),
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    // No other socket may hold the address (another instance would share our SO_REUSEPORT
    // group); then bind the first socket, then the rest to the port it got.
    io::check_port_free(cfg.bind)?;
    // With port 0 for both, the ICE-TCP listener takes the UDP port the kernel chose; a TCP
    // socket may already hold that number (an outgoing connection's, often in TIME_WAIT on a
    // busy host), so another UDP port is tried, a few times at most.
    const PORT_PAIR_ATTEMPTS: usize = 16;
    let mut attempt = 0;
    let (sockets, listeners, local_addr, grant) = loop {
        attempt += 1;
        let (first, grant) = io::bind_udp(cfg.bind, cfg.socket_buffers)?;
        let local_addr = first
            .local_addr()
            .map_err(|e| IoError::os("getsockname", e))?;
        let mut listeners = Vec::new();
        if let Some((addr, _)) = cfg.tcp {
            let chosen = addr.port() == 0 && cfg.bind.port() == 0;
            let addr = if addr.port() == 0 {
                SocketAddr::new(addr.ip(), local_addr.port())
            } else {
                addr
            };
            // One listener: worker 0 owns every ICE-TCP connection.
            match tcp::check_port_free(addr).and_then(|()| tcp::bind_listener(addr)) {
                Ok(l) => listeners.push(l),
                Err(IoError::AddrInUse(_)) if chosen && attempt < PORT_PAIR_ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
            tracing::info!(%addr, workers = n, "listening for ICE-TCP on worker 0");
        }
        tracing::info!(
            addr = %local_addr, workers = n,
            rcvbuf = grant.recv, sndbuf = grant.send, forced = grant.forced,
            "binding media sockets"
        );
        let mut sockets = vec![first];
        for _ in 1..n {
            let bind = SocketAddr::new(cfg.bind.ip(), local_addr.port());
            sockets.push(io::bind_udp(bind, cfg.socket_buffers)?.0);
        }
        break (sockets, listeners, local_addr, grant);
    };
    start(
        cfg,
        sockets,
        listeners,
        local_addr,
        grant,
        cores,
        make_handler,
    )
}

/// Start one worker per socket on sockets made elsewhere: the sockets a previous relay
/// process handed over ([`crate::io::handover`]). `cfg.bind` and `cfg.workers` are ignored
/// (the sockets decide); the sockets must be nonblocking UDP sockets bound to one address.
pub fn spawn_workers_on<H, F>(
    cfg: WorkerConfig,
    sockets: Vec<UdpSocket>,
    make_handler: F,
) -> Result<Workers, WorkerError>
where
    H: Handler + Send + 'static,
    F: Fn(usize) -> H,
{
    check_config(&cfg)?;
    let first = sockets
        .first()
        .ok_or_else(|| WorkerError::Config("no sockets to run workers on".into()))?;
    let local_addr = first
        .local_addr()
        .map_err(|e| IoError::os("getsockname", e))?;
    let sref = socket2::SockRef::from(first);
    let grant = BufferGrant {
        recv: sref.recv_buffer_size().unwrap_or(0),
        send: sref.send_buffer_size().unwrap_or(0),
        forced: false,
    };
    tracing::info!(
        addr = %local_addr, workers = sockets.len(),
        rcvbuf = grant.recv, sndbuf = grant.send,
        "running on media sockets handed over"
    );
    let cores = allowed_cores(&cfg);
    start(
        cfg,
        sockets,
        Vec::new(),
        local_addr,
        grant,
        cores,
        make_handler,
    )
}

fn start<H, F>(
    cfg: WorkerConfig,
    sockets: Vec<UdpSocket>,
    listeners: Vec<std::net::TcpListener>,
    local_addr: SocketAddr,
    grant: BufferGrant,
    cores: Vec<core_affinity::CoreId>,
    make_handler: F,
) -> Result<Workers, WorkerError>
where
    H: Handler + Send + 'static,
    F: Fn(usize) -> H,
{
    let n = sockets.len();
    // Without a listener (a take-over), worker 0 waits for the predecessor's
    // (`Workers::adopt_tcp`) on the configured address.
    let tcp_addr = match (listeners.first(), &cfg.tcp) {
        (Some(l), _) => Some(l.local_addr().map_err(|e| IoError::os("getsockname", e))?),
        (None, Some((addr, _))) => Some(*addr),
        (None, None) => None,
    };
    let (kind, fallback_reason) = io::resolve_backend(cfg.backend)?;
    // ICE-TCP: worker 0 owns the listener and the connections; the others forward to it.
    let hub = match &cfg.tcp {
        Some((_, tp)) => Some(TcpHub::new(
            tp.forward_queue,
            BackendParams {
                max_datagram: cfg.max_datagram,
                ..BackendParams::default()
            }
            .datagram_size(),
        )?),
        _ => None,
    };
    if let (Some(hub), true) = (&hub, listeners.is_empty()) {
        hub.await_handoff();
    }
    let mut listeners = listeners.into_iter();
    if let Some(r) = &fallback_reason {
        tracing::warn!(reason = %r, "io_uring refused; using the mmsg backend");
    }
    // xdp: one program for the interface holding the bind address, shared by every worker.
    let xdp = match kind {
        RunningBackend::Xdp => Some(XdpShared::setup(local_addr)?),
        _ => None,
    };
    let dups = sockets
        .iter()
        .map(|s| s.try_clone())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IoError::os("dup(media socket)", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let params = BackendParams {
        batch: cfg.batch,
        tx_capacity: cfg.tx_capacity,
        recv_buffers: cfg.recv_buffers,
        max_datagram: cfg.max_datagram,
    };
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<RunningBackend, IoError>)>();
    let mut workers = Workers {
        local_addr,
        backend: kind,
        fallback_reason,
        grant,
        stop: stop.clone(),
        handover: Arc::new(AtomicBool::new(false)),
        handles: Vec::with_capacity(n),
        stats: Vec::with_capacity(n),
        sockets: dups,
        tcp_addr,
        tcp_hub: hub.clone(),
        tcp_parked: Arc::new(Mutex::new(None)),
    };
    let wakers = Arc::new(Wakers::new(n).map_err(|e| IoError::os("eventfd", e))?);
    for (i, sock) in sockets.into_iter().enumerate() {
        let stats = Arc::new(WorkerStats::default());
        workers.stats.push(stats.clone());
        let handler = make_handler(i);
        let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
        let ready = ready_tx.clone();
        let stop = stop.clone();
        let handover = workers.handover.clone();
        let cfg = cfg.clone();
        let auto = cfg.backend == BackendChoice::Auto;
        let xdp = xdp.clone();
        let tcp = match (&hub, cfg.tcp) {
            (Some(hub), Some((_, tp))) if i == 0 => {
                Some(TcpPlan::Owner(listeners.next(), tp, hub.clone()))
            }
            (Some(hub), Some(_)) => Some(TcpPlan::Forwarder(hub.clone())),
            _ => None,
        };
        let wakers = wakers.clone();
        let tcp_parked = workers.tcp_parked.clone();
        let h = std::thread::Builder::new()
            .name(format!("sluice-w{i}"))
            .spawn(move || {
                if let Some(c) = core {
                    if !core_affinity::set_for_current(c) {
                        tracing::warn!(worker = i, core = c.id, "could not pin worker");
                    }
                }
                run_worker(
                    i,
                    sock,
                    tcp,
                    kind,
                    auto,
                    xdp,
                    params,
                    handler,
                    cfg,
                    stats,
                    Flags {
                        stop,
                        handover,
                        wakers,
                        tcp_parked,
                    },
                    ready,
                )
            })
            .map_err(WorkerError::Spawn)?;
        workers.handles.push(h);
    }
    drop(ready_tx);
    for _ in 0..n {
        match ready_rx.recv() {
            Ok((_, Ok(k))) => {
                if k != workers.backend {
                    workers.backend = k; // a worker fell back after the probe succeeded
                }
            }
            Ok((i, Err(e))) => {
                workers.stop.store(true, Ordering::Release);
                let _ = workers.join_all();
                return Err(WorkerError::Io {
                    worker: i,
                    source: e,
                });
            }
            Err(_) => {
                workers.stop.store(true, Ordering::Release);
                let r = workers.join_all();
                return Err(r.err().unwrap_or_else(|| {
                    WorkerError::Config("a worker ended during start-up".into())
                }));
            }
        }
    }
    Ok(workers)
}

#[allow(clippy::too_many_arguments)]
fn run_worker<H: Handler>(
    id: usize,
    sock: std::net::UdpSocket,
    tcp: Option<TcpPlan>,
    kind: RunningBackend,
    auto: bool,
    xdp: Option<Arc<XdpShared>>,
    params: BackendParams,
    mut handler: H,
    cfg: WorkerConfig,
    stats: Arc<WorkerStats>,
    flags: Flags,
    ready: mpsc::Sender<(usize, Result<RunningBackend, IoError>)>,
) -> Result<(), IoError> {
    let slow = match &cfg.slow_path {
        Some(p) => match sock
            .try_clone()
            .and_then(|dup| SlowPathClient::new(p, id as u16, dup, cfg.batch))
        {
            Ok(c) => Some(c),
            Err(e) => {
                let e = IoError::os("slow-path client", e);
                let _ = ready.send((id, Err(IoError::Invalid(e.to_string()))));
                return Err(e);
            }
        },
        None => None,
    };
    if let Some(shared) = xdp {
        return match XdpBackend::new(sock, params, shared, id) {
            Ok(mut b) => {
                let _ = ready.send((id, Ok(RunningBackend::Xdp)));
                run_loop(id, &mut b, &mut handler, slow, &cfg, &stats, &flags)
            }
            Err(e) => {
                let msg = e.to_string();
                let _ = ready.send((id, Err(e)));
                Err(IoError::Invalid(msg))
            }
        };
    }
    let mut tcp = match tcp.map(|p| p.build(params.datagram_size())).transpose() {
        Ok(t) => t,
        Err(e) => {
            let msg = e.to_string();
            let _ = ready.send((id, Err(e)));
            return Err(IoError::Invalid(msg));
        }
    };
    if kind == RunningBackend::IoUring {
        let dup = sock
            .try_clone()
            .map_err(|e| IoError::os("dup(media socket)", e));
        let uring = dup.and_then(|d| UringBackend::new(d, params));
        let uring = match (uring, tcp.take()) {
            (Ok(mut b), Some(role)) => b.attach_tcp(role).map(|()| b),
            (r, None) => r,
            (Err(e), Some(role)) => {
                tcp = Some(role);
                Err(e)
            }
        };
        match uring {
            Ok(mut b) => {
                let _ = ready.send((id, Ok(RunningBackend::IoUring)));
                drop(sock);
                return run_loop(id, &mut b, &mut handler, slow, &cfg, &stats, &flags);
            }
            Err(IoError::UringRefused(r)) if auto => {
                tracing::warn!(worker = id, reason = %r, "io_uring refused; this worker uses mmsg");
            }
            Err(e) => {
                let msg = e.to_string();
                let _ = ready.send((id, Err(e)));
                return Err(IoError::Invalid(msg));
            }
        }
    }
    let backend = MmsgBackend::new(sock, params).and_then(|mut b| {
        if let Some(role) = tcp {
            b.attach_tcp(role)?;
        }
        Ok(b)
    });
    match backend {
        Ok(mut b) => {
            let _ = ready.send((id, Ok(RunningBackend::Mmsg)));
            run_loop(id, &mut b, &mut handler, slow, &cfg, &stats, &flags)
        }
        Err(e) => {
            let msg = e.to_string();
            let _ = ready.send((id, Err(e)));
            Err(IoError::Invalid(msg))
        }
    }
}

fn run_loop<B: Backend, H: Handler>(
    id: usize,
    b: &mut B,
    h: &mut H,
    mut slow: Option<SlowPathClient>,
    cfg: &WorkerConfig,
    stats: &WorkerStats,
    flags: &Flags,
) -> Result<(), IoError> {
    let stop = &*flags.stop;
    let mut slow_q = TxQueue::with_capacity(cfg.batch);
    let mut slow_dropped_local = 0u64;
    let mut turns = 0u64;
    let mut stalls = 0u64;
    let mut oversized_seen = 0u64;
    let wait = cfg.poll_interval.min(MAX_POLL_INTERVAL);
    // The slow-path connection in the watch set (its id, see SlowPathClient::connection).
    let mut watched: Option<u64> = None;
    // The backend watches one fd: an epoll set holding this worker's wake fd and the
    // slow-path connection (worker/wake.rs).
    let wakers = &*flags.wakers;
    let mut watch = match WatchSet::new(wakers, id) {
        Ok(w) => w,
        Err(e) => return Err(IoError::os("epoll (wake set)", e)),
    };
    b.watch_readable(Some(watch.fd()))?;
    let result = loop {
        if stop.load(Ordering::Acquire) {
            break Ok(());
        }
        let timeout = match slow.as_ref() {
            Some(c) if c.read_pending() => Duration::ZERO,
            Some(c) => match c.next_connect() {
                Some(at) => at.saturating_duration_since(Instant::now()).min(wait),
                None => wait,
            },
            None => wait,
        };
        // The engine's timers (a bandwidth probe being paced) may want the turn sooner.
        let timeout = match h.next_deadline() {
            Some(at) => at.saturating_duration_since(Instant::now()).min(timeout),
            None => timeout,
        };
        if let Err(e) = b.wait(timeout) {
            break Err(e);
        }
        let conn_readable = b.take_readable() && watch.take(wakers);
        let now = Instant::now();
        h.begin_batch(now);
        let n = drain_turn(id, b, h, &mut slow_q, cfg.batch);
        h.end_batch(Instant::now(), b.tx(), &mut slow_q);
        h.take_wakes(&mut |w| wakers.wake(w));
        let pumped = pump_slow_path(
            b,
            h,
            slow.as_mut(),
            &mut slow_q,
            now,
            (conn_readable, &mut watch, &mut watched),
        );
        if let Err(e) = pumped {
            break Err(e);
        }
        if slow.is_none() {
            slow_dropped_local += slow_q.len() as u64;
            slow_q.clear();
        }
        if let Err(e) = b.flush() {
            break Err(e);
        }
        turns += 1;
        let oversized = b.counters().rx_oversized;
        if oversized != oversized_seen {
            h.oversized(oversized - oversized_seen);
            oversized_seen = oversized;
        }
        let took = now.elapsed();
        let stalled = took > cfg.stall_threshold;
        h.end_turn(stalled);
        if stalled {
            stalls += 1;
            tracing::warn!(
                worker = id,
                took_ms = took.as_millis() as u64,
                datagrams = n,
                "worker loop turn stalled"
            );
        }
        publish(
            stats,
            b.counters(),
            slow.as_ref(),
            slow_dropped_local,
            turns,
            stalls,
        );
    };
    if result.is_ok() && flags.handover.load(Ordering::Acquire) {
        // Enough passes to hand over everything an io_uring backend can hold (one datagram per
        // provided buffer), plus a margin.
        let passes = cfg.recv_buffers.clamp(2, 32768).next_power_of_two() / cfg.batch + 16;
        finish_for_handover(id, b, h, &mut slow_q, cfg.batch, passes);
    }
    b.shutdown();
    if flags.handover.load(Ordering::Acquire) {
        if let Some(TcpRole::Owner(side)) = b.take_tcp() {
            *flags.tcp_parked.lock().unwrap_or_else(|p| p.into_inner()) = Some(side);
        }
    }
    let oversized = b.counters().rx_oversized;
    if oversized != oversized_seen {
        h.oversized(oversized - oversized_seen);
    }
    publish(
        stats,
        b.counters(),
        slow.as_ref(),
        slow_dropped_local,
        turns,
        stalls,
    );
    if let Err(e) = &result {
        tracing::error!(worker = id, error = %e, "worker stopped on an I/O error");
    }
    result
}

/// Hand up to `max` received datagrams to the handler. The backend stops draining when its
/// transmit queue is full; the queue is then sent, the datagram that filled it goes on to the
/// outputs it had not reached (one send per queue's worth, however many subscribers), and
/// the drain goes on. So a fan-out larger than the queue costs extra sends, not datagrams.
/// Returns how many were handed over.
fn drain_turn<B: Backend, H: Handler>(
    id: usize,
    b: &mut B,
    h: &mut H,
    slow_q: &mut TxQueue,
    max: usize,
) -> usize {
    let mut n = 0;
    loop {
        n += b.drain(max - n, |src, buf, len, tx| {
            h.on_datagram(src, buf, len, tx, slow_q)
        });
        if !b.tx().is_full() {
            return n;
        }
        loop {
            if let Err(e) = b.flush() {
                // What is queued stays with the backend for the next turn; the rest of a
                // pending fan-out is dropped and counted.
                tracing::warn!(worker = id, error = %e, "flush of a full transmit queue failed");
                h.abandon();
                return n;
            }
            if !h.resume(b.tx()) {
                break;
            }
        }
        if n >= max {
            return n;
        }
    }
}

/// Pass the turn's slow-path datagrams to control and queue control's replies in the
/// backend's transmit queue (they leave with the turn's batch); keep the backend watching the
/// current connection's fd.
fn pump_slow_path<B: Backend, H: Handler>(
    b: &mut B,
    h: &mut H,
    slow: Option<&mut SlowPathClient>,
    slow_q: &mut TxQueue,
    now: Instant,
    (readable, watch, watched): (bool, &mut WatchSet, &mut Option<u64>),
) -> Result<(), IoError> {
    let Some(c) = slow else {
        return Ok(());
    };
    if readable {
        c.set_readable();
    }
    if b.tx().is_full() {
        // Room for replies: a full queue would leave them for the next turn.
        b.flush()?;
    }
    let before = c.counters().down_sent;
    c.pump_into(now, slow_q, b.tx());
    let replies = c.counters().down_sent - before;
    if replies > 0 {
        h.slow_path_replies(replies);
    }
    let conn = c.connection();
    if conn.map(|(id, _)| id) != *watched {
        // A new connection, or none: watch its fd instead of the old one (closed by now,
        // which took it out of the set).
        watch
            .set_connection(conn.map(|(_, fd)| fd))
            .map_err(|e| IoError::os("epoll_ctl (slow-path connection)", e))?;
        *watched = conn.map(|(id, _)| id);
    }
    Ok(())
}

/// A worker's part in ICE-TCP, handed to its thread.
enum TcpPlan {
    /// Worker 0: the listener (none while it waits for a predecessor's), its bounds and the
    /// hub the others fill.
    Owner(Option<std::net::TcpListener>, TcpParams, Arc<TcpHub>),
    /// The others: hand datagrams for TCP peers to worker 0.
    Forwarder(Arc<TcpHub>),
}

impl TcpPlan {
    fn build(self, max_frame: usize) -> Result<TcpRole, IoError> {
        Ok(match self {
            TcpPlan::Owner(l, tp, hub) => {
                TcpRole::Owner(Box::new(TcpSide::new(l, tp, max_frame, hub)?))
            }
            TcpPlan::Forwarder(hub) => TcpRole::Forwarder(TcpForwarder::new(hub)),
        })
    }
}

/// The stop flags a worker watches, and the wake fds of all workers.
struct Flags {
    stop: Arc<AtomicBool>,
    /// With `stop`: the sockets now belong to a new process as well.
    handover: Arc<AtomicBool>,
    wakers: Arc<Wakers>,
    /// Where the TCP owner leaves its side at a hand-over exit ([`Workers::hand_over`]).
    tcp_parked: Arc<Mutex<Option<Box<TcpSide>>>>,
}

/// Hand-over exit: no new receive, process what the backend already holds, flush. Slow-path
/// datagrams of this last pass are dropped (STUN and DTLS retransmit; the new process's
/// workers answer the retransmissions).
fn finish_for_handover<B: Backend, H: Handler>(
    id: usize,
    b: &mut B,
    h: &mut H,
    slow_q: &mut TxQueue,
    batch: usize,
    passes: usize,
) {
    b.stop_receiving();
    let now = Instant::now();
    h.begin_batch(now);
    let mut handed = 0;
    // Bounded: a backend that still receives (mmsg reads inside drain) must not keep this
    // worker alive under load; what it leaves in the socket goes to the new process. After
    // `stop_receiving` io_uring only hands over what it holds, so it ends with n == 0.
    for _ in 0..passes {
        let n = drain_turn(id, b, h, slow_q, batch);
        handed += n;
        if n == 0 {
            break;
        }
    }
    h.end_batch(Instant::now(), b.tx(), slow_q);
    if let Err(e) = b.flush() {
        tracing::warn!(worker = id, error = %e, "hand-over: final flush failed");
    }
    slow_q.clear();
    tracing::info!(
        worker = id,
        datagrams = handed,
        "worker handed its socket over"
    );
}
