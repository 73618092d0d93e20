//! Control's end of the slow path: the relay's STUN, DTLS and unknown-source datagrams come
//! in over `control.slow_path` (a `SOCK_SEQPACKET` unix socket, framing in
//! `contract::slowpath`), are rate limited, dispatched by first byte (RFC 7983 §7), and
//! answered through the relay so replies leave from the media port.
//!
//! Owns: the listening socket (mode 0660; a stale file is replaced) and the relay's
//! connections (one per worker, each reconnecting by itself), the slow-path thread, the
//! global and per-source rate limits, dispatch (STUN → [`IceAgent`], DTLS → a [`DtlsSink`],
//! anything else counted and dropped), applying ICE events through a [`SessionBinder`], and
//! the slow-path counters.
//! May not touch: the packet fast path, shm directly (the binder does), DTLS itself
//! ([`DtlsSink`] is the hook the WebRTC integration implements).
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections; at most [`RECV_BUDGET`] datagrams per
//! connection per loop turn (fairness between workers); a fixed [`SOURCE_TABLE`](contract::ratelimit::SOURCE_TABLE)-entry
//! per-source table (4-way set-associative, keyed with a per-process random hash so sources
//! cannot aim at one set; a new source evicts the least recently seen entry of its set); at
//! most [`OUTBOX_CAP`] replies per input. Every dropped datagram is counted by reason.

pub mod binding;
pub mod dtls;
pub mod relay_channel;

use crate::core::CoreError;
use crate::ice::{IceAgent, IceEvent, SessionId};
use contract::ratelimit::{RateLimiter, Verdict};
use contract::slowpath::{MsgKind, MAX_MESSAGE};
use contract::wire::{classify, Kind};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use relay_channel::{SlowPathConn, SlowPathError, SlowPathServer};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most simultaneous relay connections (one per worker; `relay.workers` ≤ 1024).
pub const MAX_CONNECTIONS: usize = 1024;
/// Datagrams read from one connection per loop turn.
pub const RECV_BUDGET: usize = 256;
/// Most replies one input (or one timer tick) may queue.
pub const OUTBOX_CAP: usize = 64;
/// How often ICE consent and the DTLS sink's timers are checked.
pub const TICK: Duration = Duration::from_millis(250);

const LISTENER: Token = Token(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The agent's state stays consistent across a panic in a caller (each call completes
    // its mutation before returning), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Datagrams a handler wants sent to peers through the relay, bounded.
#[derive(Debug, Default)]
pub struct Outbox {
    items: Vec<(SocketAddr, Vec<u8>)>,
}

impl Outbox {
    /// Queue `data` for `peer`; false (nothing queued) when [`OUTBOX_CAP`] is reached.
    pub fn push(&mut self, peer: SocketAddr, data: &[u8]) -> bool {
        if self.items.len() >= OUTBOX_CAP {
            return false;
        }
        self.items.push((peer, data.to_vec()));
        true
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Take the queued datagrams, oldest first.
    pub fn drain(&mut self) -> std::vec::Drain<'_, (SocketAddr, Vec<u8>)> {
        self.items.drain(..)
    }
}

/// The hook for DTLS: the WebRTC integration implements it (handshakes, then keys into the
/// session). Until then [`DiscardDtls`] counts and drops.
pub trait DtlsSink: Send {
    /// A DTLS datagram (first byte 20–63, RFC 7983 §7) from `peer`. Replies go into `out`.
    /// Return false when the datagram was not used (counted as `dtls_unhandled`).
    fn datagram(&mut self, now: Instant, peer: SocketAddr, data: &[u8], out: &mut Outbox) -> bool;
    /// Called every [`TICK`] (retransmission timers).
    fn timeout(&mut self, _now: Instant, _out: &mut Outbox) {}
    /// Every ICE event, after the session binder applied it (a handshake may start only
    /// from a nominated address).
    fn ice_event(&mut self, _ev: &IceEvent) {}
}

/// The DTLS sink used until WebRTC is wired in: uses nothing, so every DTLS datagram is
/// counted as dropped (`reason="dtls_unhandled"`).
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardDtls;

impl DtlsSink for DiscardDtls {
    fn datagram(&mut self, _: Instant, _: SocketAddr, _: &[u8], _: &mut Outbox) -> bool {
        false
    }
}

/// Applies ICE outcomes to sessions (persisted state and shm). The core implements it.
pub trait SessionBinder: Send + Sync {
    /// `peer` was nominated for `session`: bind it and clear PENDING.
    fn bind_peer(&self, session: SessionId, peer: SocketAddr) -> Result<(), CoreError>;
    /// Consent for `session` expired: set PENDING (media stops on the fast path).
    fn mark_pending(&self, session: SessionId) -> Result<(), CoreError>;
    /// The relay reports publisher `peer`'s packet on an unrouted SSRC (its plain RTP
    /// `header`): learn a simulcast layer from its RID (core/simulcast.rs). True when a layer
    /// was learned.
    fn learn_stream(&self, _peer: SocketAddr, _header: &[u8]) -> Result<bool, CoreError> {
        Ok(false)
    }
}

/// Slow-path counters (shared with `/metrics`).
#[derive(Debug, Default)]
pub struct SlowPathStats {
    stun: AtomicU64,
    dtls: AtomicU64,
    other: AtomicU64,
    rate_global: AtomicU64,
    rate_source: AtomicU64,
    stun_discarded: AtomicU64,
    dtls_unhandled: AtomicU64,
    unhandled_kind: AtomicU64,
    reply_failed: AtomicU64,
    bad_message: AtomicU64,
    streams: AtomicU64,
    streams_learned: AtomicU64,
    stream_ignored: AtomicU64,
    connections: AtomicU64,
    connects: AtomicU64,
    refused: AtomicU64,
    evictions: AtomicU64,
    bind_errors: AtomicU64,
}

/// A copy of [`SlowPathStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlowPathSnapshot {
    /// Datagrams received, by RFC 7983 kind.
    pub stun: u64,
    pub dtls: u64,
    pub other: u64,
    /// Drops: over the global rate.
    pub rate_global: u64,
    /// Drops: over the per-source rate.
    pub rate_source: u64,
    /// Drops: STUN the ICE agent silently discarded.
    pub stun_discarded: u64,
    /// Drops: DTLS the sink did not use.
    pub dtls_unhandled: u64,
    /// Drops: neither STUN nor DTLS (e.g. media from an unknown source).
    pub unhandled_kind: u64,
    /// Drops: replies the relay connection would not take.
    pub reply_failed: u64,
    /// Drops: malformed slow-path messages.
    pub bad_message: u64,
    /// Reports of publishers' unrouted streams (stream-up), and those that taught a
    /// simulcast layer's SSRC.
    pub streams: u64,
    pub streams_learned: u64,
    /// Drops: stream reports with nothing to learn (no simulcast, no or unknown RID, layer
    /// already known).
    pub stream_ignored: u64,
    /// Relay connections open now.
    pub connections: u64,
    /// Relay connections accepted so far.
    pub connects: u64,
    /// Connections refused (over [`MAX_CONNECTIONS`]).
    pub refused: u64,
    /// Per-source table evictions.
    pub evictions: u64,
    /// ICE events the binder could not apply.
    pub bind_errors: u64,
}

impl SlowPathSnapshot {
    /// All datagrams received.
    pub fn datagrams(&self) -> u64 {
        self.stun + self.dtls + self.other
    }

    /// Drops as `(reason label, count)`.
    pub fn drops(&self) -> [(&'static str, u64); 8] {
        [
            ("rate_global", self.rate_global),
            ("rate_source", self.rate_source),
            ("stun_discarded", self.stun_discarded),
            ("dtls_unhandled", self.dtls_unhandled),
            ("unhandled_kind", self.unhandled_kind),
            ("reply_failed", self.reply_failed),
            ("bad_message", self.bad_message),
            ("stream_ignored", self.stream_ignored),
        ]
    }
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

impl SlowPathStats {
    pub fn snapshot(&self) -> SlowPathSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SlowPathSnapshot {
            stun: g(&self.stun),
            dtls: g(&self.dtls),
            other: g(&self.other),
            rate_global: g(&self.rate_global),
            rate_source: g(&self.rate_source),
            stun_discarded: g(&self.stun_discarded),
            dtls_unhandled: g(&self.dtls_unhandled),
            unhandled_kind: g(&self.unhandled_kind),
            reply_failed: g(&self.reply_failed),
            bad_message: g(&self.bad_message),
            streams: g(&self.streams),
            streams_learned: g(&self.streams_learned),
            stream_ignored: g(&self.stream_ignored),
            connections: g(&self.connections),
            connects: g(&self.connects),
            refused: g(&self.refused),
            evictions: g(&self.evictions),
            bind_errors: g(&self.bind_errors),
        }
    }
}

/// Rates for [`SlowPath::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowPathParams {
    /// `control.slow_path_rate`.
    pub global_rate: u32,
    /// `control.slow_path_per_source_rate`.
    pub per_source_rate: u32,
}

impl SlowPathParams {
    pub fn from_config(c: &contract::config::ControlConfig) -> SlowPathParams {
        SlowPathParams {
            global_rate: c.slow_path_rate,
            per_source_rate: c.slow_path_per_source_rate,
        }
    }
}

/// Rate limiting and dispatch of one datagram, without I/O.
pub struct Dispatcher {
    ice: Arc<Mutex<IceAgent>>,
    dtls: Box<dyn DtlsSink>,
    binder: Arc<dyn SessionBinder>,
    limiter: RateLimiter,
    stats: Arc<SlowPathStats>,
    scratch: Box<[u8]>,
    events: Vec<IceEvent>,
}

impl Dispatcher {
    pub fn new(
        params: SlowPathParams,
        ice: Arc<Mutex<IceAgent>>,
        binder: Arc<dyn SessionBinder>,
        dtls: Box<dyn DtlsSink>,
        stats: Arc<SlowPathStats>,
    ) -> Dispatcher {
        Dispatcher {
            ice,
            dtls,
            binder,
            limiter: RateLimiter::new(params.global_rate, params.per_source_rate, Instant::now()),
            stats,
            scratch: vec![0u8; MAX_MESSAGE].into_boxed_slice(),
            events: Vec::new(),
        }
    }

    /// One datagram from `peer`: count by kind, rate limit, dispatch; replies into `out`.
    pub fn handle(&mut self, now: Instant, peer: SocketAddr, data: &[u8], out: &mut Outbox) {
        let kind = classify(data);
        inc(match kind {
            Kind::Stun => &self.stats.stun,
            Kind::Dtls => &self.stats.dtls,
            _ => &self.stats.other,
        });
        let verdict = self
            .limiter
            .check(now, contract::wire::transport_addr(peer).ip());
        self.stats
            .evictions
            .store(self.limiter.evictions(), Ordering::Relaxed);
        match verdict {
            Verdict::Allow => {}
            Verdict::Source => return inc(&self.stats.rate_source),
            Verdict::Global => return inc(&self.stats.rate_global),
        }
        match kind {
            Kind::Stun => {
                let n = lock(&self.ice).handle_stun(now, peer, data, &mut self.scratch);
                match n {
                    Some(n) => {
                        if !out.push(peer, &self.scratch[..n]) {
                            inc(&self.stats.reply_failed);
                        }
                    }
                    None => inc(&self.stats.stun_discarded),
                }
                self.apply_events();
            }
            Kind::Dtls => {
                if !self.dtls.datagram(now, peer, data, out) {
                    inc(&self.stats.dtls_unhandled);
                }
            }
            _ => inc(&self.stats.unhandled_kind),
        }
    }

    /// A stream report from the relay (publisher `peer`'s packet on an unrouted SSRC, its
    /// plain RTP `header`): rate limited per source like datagrams, then handed to the binder.
    pub fn stream(&mut self, now: Instant, peer: SocketAddr, header: &[u8]) {
        inc(&self.stats.streams);
        match self
            .limiter
            .check(now, contract::wire::transport_addr(peer).ip())
        {
            Verdict::Allow => {}
            Verdict::Source => return inc(&self.stats.rate_source),
            Verdict::Global => return inc(&self.stats.rate_global),
        }
        match self.binder.learn_stream(peer, header) {
            Ok(true) => inc(&self.stats.streams_learned),
            Ok(false) => inc(&self.stats.stream_ignored),
            Err(e) => {
                inc(&self.stats.bind_errors);
                tracing::warn!(error = %e, "stream report not applied");
            }
        }
    }

    /// Timers: ICE consent (RFC 7675 §5.1) and the DTLS sink's.
    pub fn tick(&mut self, now: Instant, out: &mut Outbox) {
        lock(&self.ice).handle_timeout(now);
        self.apply_events();
        self.dtls.timeout(now, out);
    }

    /// Drain the agent's events (under its lock), then apply them (without it: the binder
    /// takes control's state lock, and an HTTP thread may hold that while calling the agent).
    fn apply_events(&mut self) {
        {
            let mut ice = lock(&self.ice);
            while let Some(ev) = ice.poll_event() {
                self.events.push(ev);
            }
        }
        for ev in self.events.drain(..) {
            let r = match ev {
                IceEvent::Nominated { session, peer } => self.binder.bind_peer(session, peer),
                IceEvent::Expired { session } => self.binder.mark_pending(session),
            };
            if let Err(e) = r {
                inc(&self.stats.bind_errors);
                tracing::warn!(event = ?IceEventLog(ev), error = %e, "ICE event not applied");
            }
            self.dtls.ice_event(&ev);
        }
    }
}

/// Logs an event without the peer address (logs carry no peer IPs).
struct IceEventLog(IceEvent);

impl std::fmt::Debug for IceEventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IceEvent::Nominated { session, .. } => write!(f, "nominated(session {session})"),
            IceEvent::Expired { session } => write!(f, "expired(session {session})"),
        }
    }
}

struct Conn {
    conn: SlowPathConn,
    /// Edge-triggered readiness seen and not yet drained to WouldBlock.
    readable: bool,
}

/// The slow-path endpoint: listener, connections and dispatcher, driven by
/// [`turn`](Self::turn) (or [`spawn`](Self::spawn) for a thread).
pub struct SlowPath {
    server: SlowPathServer,
    poll: Poll,
    events: Events,
    conns: Vec<Option<Conn>>,
    accept_pending: bool,
    buf: Box<[u8]>,
    outbox: Outbox,
    dispatcher: Dispatcher,
    stats: Arc<SlowPathStats>,
    next_tick: Instant,
}

impl SlowPath {
    /// Listen at `path` (a stale socket file is replaced; the new one is mode 0660 so a relay
    /// running as another user of the group can connect).
    pub fn bind(
        path: &Path,
        params: SlowPathParams,
        ice: Arc<Mutex<IceAgent>>,
        binder: Arc<dyn SessionBinder>,
        dtls: Box<dyn DtlsSink>,
        stats: Arc<SlowPathStats>,
    ) -> io::Result<SlowPath> {
        use std::os::unix::fs::PermissionsExt;
        let server = SlowPathServer::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        server.set_nonblocking(true)?;
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&server.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        Ok(SlowPath {
            server,
            poll,
            events: Events::with_capacity(64),
            conns: Vec::new(),
            accept_pending: true,
            buf: vec![0u8; MAX_MESSAGE].into_boxed_slice(),
            outbox: Outbox::default(),
            dispatcher: Dispatcher::new(params, ice, binder, dtls, stats.clone()),
            stats,
            next_tick: Instant::now(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.server.path()
    }

    /// Relay connections open now.
    pub fn connections(&self) -> usize {
        self.conns.iter().flatten().count()
    }

    /// One loop turn: wait up to `max_wait` for readiness (not at all while a connection
    /// still has unread datagrams), accept relays, read and dispatch up to [`RECV_BUDGET`]
    /// datagrams per connection, send the replies, run timers every [`TICK`].
    pub fn turn(&mut self, max_wait: Duration) -> io::Result<()> {
        let busy = self.accept_pending || self.conns.iter().flatten().any(|c| c.readable);
        let wait = if busy {
            Duration::ZERO
        } else {
            max_wait.min(self.next_tick.saturating_duration_since(Instant::now()))
        };
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for ev in self.events.iter() {
            match ev.token() {
                LISTENER => self.accept_pending = true,
                Token(i) => {
                    if let Some(Some(c)) = self.conns.get_mut(i - 1) {
                        c.readable = true;
                    }
                }
            }
        }
        if self.accept_pending {
            self.accept_all();
        }
        let now = Instant::now();
        for i in 0..self.conns.len() {
            if self.conns[i].as_ref().is_some_and(|c| c.readable) {
                self.read_conn(i, now);
            }
        }
        if now >= self.next_tick {
            self.dispatcher.tick(now, &mut self.outbox);
            self.flush_async();
            self.next_tick = now + TICK;
        }
        Ok(())
    }

    fn accept_all(&mut self) {
        loop {
            match self.server.accept() {
                Ok(conn) => {
                    if let Err(e) = conn.set_nonblocking(true) {
                        tracing::warn!(error = %e, "slow path: connection setup");
                        continue;
                    }
                    let slot = match self.conns.iter().position(Option::is_none) {
                        Some(i) => i,
                        None if self.conns.len() < MAX_CONNECTIONS => {
                            self.conns.push(None);
                            self.conns.len() - 1
                        }
                        None => {
                            inc(&self.stats.refused);
                            tracing::warn!(
                                max = MAX_CONNECTIONS,
                                "slow path: too many relay connections; refused one"
                            );
                            continue;
                        }
                    };
                    let fd = conn.as_raw_fd();
                    if let Err(e) = self.poll.registry().register(
                        &mut SourceFd(&fd),
                        Token(slot + 1),
                        Interest::READABLE,
                    ) {
                        tracing::warn!(error = %e, "slow path: cannot watch a connection");
                        continue;
                    }
                    // Data may already be queued: read before waiting for an edge.
                    self.conns[slot] = Some(Conn {
                        conn,
                        readable: true,
                    });
                    inc(&self.stats.connects);
                    self.stats
                        .connections
                        .store(self.connections() as u64, Ordering::Relaxed);
                    tracing::info!("slow path: relay connected");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "slow path: accept");
                    self.accept_pending = false;
                    return;
                }
            }
        }
    }

    fn close(&mut self, i: usize) {
        if let Some(c) = self.conns[i].take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&c.conn.as_raw_fd()));
            tracing::info!(worker = ?c.conn.worker(), "slow path: relay connection closed");
        }
        self.stats
            .connections
            .store(self.connections() as u64, Ordering::Relaxed);
    }

    fn read_conn(&mut self, i: usize, now: Instant) {
        let SlowPath {
            conns,
            buf,
            outbox,
            dispatcher,
            stats,
            ..
        } = self;
        let mut closed = false;
        if let Some(c) = conns[i].as_mut() {
            for _ in 0..RECV_BUDGET {
                match c.conn.recv(buf) {
                    Ok(Some(d)) if d.kind == MsgKind::StreamUp => {
                        dispatcher.stream(now, d.peer, d.data);
                    }
                    Ok(Some(d)) => {
                        dispatcher.handle(now, d.peer, d.data, outbox);
                        for (peer, data) in outbox.drain() {
                            if c.conn.send_down(peer, &data).is_err() {
                                inc(&stats.reply_failed);
                            }
                        }
                    }
                    Ok(None) => {
                        closed = true;
                        break;
                    }
                    Err(SlowPathError::Decode(e)) => {
                        inc(&stats.bad_message);
                        tracing::debug!(error = %e, "slow path: malformed message");
                    }
                    Err(SlowPathError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        c.readable = false;
                        break;
                    }
                    Err(SlowPathError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(SlowPathError::Io(e)) => {
                        tracing::warn!(error = %e, "slow path: connection error");
                        closed = true;
                        break;
                    }
                }
            }
        }
        if closed {
            self.close(i);
        }
    }

    /// Send timer-driven output through any live connection: every worker's socket is bound
    /// to the same media port, so any of them sends from the right address.
    fn flush_async(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let conn = self.conns.iter().flatten().next();
        for (peer, data) in self.outbox.drain() {
            let sent = conn.is_some_and(|c| c.conn.send_down(peer, &data).is_ok());
            if !sent {
                inc(&self.stats.reply_failed);
            }
        }
    }

    /// Run turns until `stop` is set.
    pub fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self.turn(Duration::from_millis(100)) {
                tracing::error!(error = %e, "slow path poll failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Run on a thread named `slow-path`.
    pub fn spawn(self) -> io::Result<SlowPathThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("slow-path".into())
            .spawn(move || self.run(&s2))?;
        Ok(SlowPathThread {
            stop,
            handle: Some(handle),
        })
    }
}

/// A running slow-path thread; stopped (and its socket file removed) on
/// [`shutdown`](Self::shutdown) or drop.
pub struct SlowPathThread {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl SlowPathThread {
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for SlowPathThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}
