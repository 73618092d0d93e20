//! Passive ICE-TCP (RFC 6544) with RFC 4571 framing, terminated in a worker.
//!
//! One worker, the *TCP owner* (worker 0), holds the TCP listener on the relay's TCP port and
//! every connection accepted on it ([`TcpSide`]). A connection's frames are handed to that
//! worker's engine exactly like UDP datagrams, with the connection's peer key as the source:
//! its remote address marked as ICE-TCP ([`contract::wire::tcp_peer`]), so a peer's UDP
//! address and its TCP connection never share a key even when IP and port match. A datagram
//! the owner's engine queues for a key that names one of its connections is written to it
//! framed instead of sent as UDP ([`TcpSide::take_frames`]): a turn's frames for one connection
//! leave with one `sendmsg` of up to [`MAX_RUN`] frames (two iovecs each).
//!
//! Any other worker may queue a datagram for a TCP peer key too (the peer subscribes to a
//! publisher that worker receives). Such a datagram is taken out of that worker's transmit
//! queue ([`TcpForwarder::forward`]) and copied into the [`TcpHub`]: a fixed set of frame
//! slots moved between two lock-free bounded queues (`free` and `full`, crossbeam
//! `ArrayQueue`s), so the fast path takes no lock and allocates nothing. The owner drains the
//! hub every turn and is woken through an eventfd in its readiness set, written only while the
//! owner may be about to block (it clears an "awake" flag right before its last check for work
//! and sets it again each turn; see [`TcpHub`]) and at most once per owner drain (a flag tells
//! producers a wake-up is already pending). A full hub drops
//! the datagram and counts it (`tcp_forward_full`), as a full socket buffer would. A datagram
//! for a TCP peer key that no connection holds (closed meanwhile) is dropped and counted
//! (`tcp_unroutable`), never sent as UDP.
//!
//! The owner's listener and connections live in an epoll set of their own; the backend
//! watches that set's fd beside its socket (mmsg: nested in its epoll set; io_uring: a
//! multishot poll in its ring) and lets the side collect the events
//! ([`TcpSide::service`]) when it signals, so both backends carry ICE-TCP the same way.
//!
//! Bounds, all fixed per connection: one receive buffer of `2 + max_datagram` bytes (at
//! accept) and one send remainder of the same size (at the first partial write), at most `max_connections` connections per
//! worker. A frame announcing more than `max_datagram` bytes closes the connection. A first
//! frame that is no STUN binding request closes it; so does a connection the engine has not
//! answered a binding request on (a success response written to it) within the handshake
//! timeout. A frame that finds the connection's send buffer full is dropped (counted) and a
//! connection that keeps its buffer full for [`SLOW_READER_DROPS`] frames in a row is closed.

use std::cell::UnsafeCell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use contract::wire::{is_tcp_peer, tcp_peer};

use super::{IoCounters, IoError};
use crate::batch::TxQueue;

/// Frames dropped in a row on a full send buffer before the connection is closed.
pub const SLOW_READER_DROPS: u32 = 256;

/// Frames written to one connection with one `sendmsg` (a length prefix and a datagram each:
/// twice as many iovecs, well under `IOV_MAX`).
pub const MAX_RUN: usize = 32;

/// STUN magic cookie (RFC 5389 §6).
const STUN_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// Settings of a worker's ICE-TCP side.
#[derive(Debug, Clone, Copy)]
pub struct TcpParams {
    /// Open connections per worker; more are accepted and closed at once.
    pub max_connections: usize,
    /// Time from accept to the first answered STUN binding request.
    pub handshake_timeout: Duration,
    /// SO_SNDBUF of each connection.
    pub send_buffer: usize,
    /// Frames other workers may have queued for the owner at once ([`TcpHub`]).
    pub forward_queue: usize,
}

/// Why a connection's byte stream cannot be framed any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RFC 4571 length larger than the largest datagram the relay takes.
    #[error("frame of {0} bytes is larger than the largest datagram")]
    TooLarge(usize),
}

/// RFC 4571 reassembly into a fixed buffer: a 16-bit big-endian length, then that many bytes.
#[derive(Debug)]
pub struct Deframer {
    buf: Box<[u8]>,
    /// Bytes of `buf` holding data.
    end: usize,
    /// Start of the first unconsumed byte.
    start: usize,
}

impl Deframer {
    /// A deframer for frames of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Deframer {
        Deframer {
            buf: vec![0u8; max_frame + 2].into_boxed_slice(),
            end: 0,
            start: 0,
        }
    }

    /// Largest frame taken.
    pub fn max_frame(&self) -> usize {
        self.buf.len() - 2
    }

    /// Where the next read goes (moves buffered bytes to the front first). Empty only when a
    /// whole frame is buffered (take it with [`next_frame`](Self::next_frame) first).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`spare`](Self::spare).
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let have = self.end - self.start;
        if have < 2 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([
            self.buf[self.start],
            self.buf[self.start + 1],
        ]));
        if len > self.max_frame() {
            return Err(FrameError::TooLarge(len));
        }
        if have < 2 + len {
            return Ok(None);
        }
        let from = self.start + 2;
        self.start = from + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            return Ok(Some(&self.buf[from..from + len]));
        }
        Ok(Some(&self.buf[from..from + len]))
    }
}

/// True for a well-formed STUN binding request header whose length matches the frame.
pub fn is_binding_request(frame: &[u8]) -> bool {
    frame.len() >= 20
        && frame[0..2] == [0x00, 0x01]
        && frame[4..8] == STUN_COOKIE
        && usize::from(u16::from_be_bytes([frame[2], frame[3]])) + 20 == frame.len()
}

/// True for a STUN binding success response header.
fn is_binding_success(datagram: &[u8]) -> bool {
    datagram.len() >= 20 && datagram[0..2] == [0x01, 0x01] && datagram[4..8] == STUN_COOKIE
}

/// Bind a nonblocking TCP listener with SO_REUSEPORT at `addr` (an IPv6 wildcard is
/// dual-stack, as for UDP).
pub fn bind_listener(addr: SocketAddr) -> Result<TcpListener, IoError> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| IoError::os("socket(AF_INET*, SOCK_STREAM)", e))?;
    if addr.is_ipv6() {
        sock.set_only_v6(!addr.ip().is_unspecified())
            .map_err(|e| IoError::os("setsockopt(IPV6_V6ONLY)", e))?;
    }
    sock.set_reuse_address(true)
        .map_err(|e| IoError::os("setsockopt(SO_REUSEADDR)", e))?;
    sock.set_reuse_port(true)
        .map_err(|e| IoError::os("setsockopt(SO_REUSEPORT)", e))?;
    sock.set_nonblocking(true)
        .map_err(|e| IoError::os("fcntl(O_NONBLOCK)", e))?;
    sock.bind(&addr.into()).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse if addr.port() != 0 => IoError::AddrInUse(addr),
        _ => IoError::os("bind(ICE-TCP address)", e),
    })?;
    sock.listen(1024)
        .map_err(|e| IoError::os("listen(ICE-TCP)", e))?;
    Ok(sock.into())
}

/// Like [`super::check_port_free`] for the TCP port: no other listener may hold `addr`.
pub fn check_port_free(addr: SocketAddr) -> Result<(), IoError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let probe = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| IoError::os("socket(AF_INET*, SOCK_STREAM)", e))?;
    if addr.is_ipv6() {
        probe
            .set_only_v6(!addr.ip().is_unspecified())
            .map_err(|e| IoError::os("setsockopt(IPV6_V6ONLY)", e))?;
    }
    // SO_REUSEADDR so a listener's own TIME_WAIT leftovers do not count as "in use".
    probe
        .set_reuse_address(true)
        .map_err(|e| IoError::os("setsockopt(SO_REUSEADDR)", e))?;
    match probe.bind(&addr.into()).and_then(|()| probe.listen(1)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(IoError::AddrInUse(addr)),
        Err(e) => Err(IoError::os("bind(ICE-TCP address probe)", e)),
    }
}

/// One frame slot of the [`TcpHub`].
struct HubSlot {
    dst: SocketAddr,
    len: usize,
    buf: Box<[u8]>,
}

/// Datagrams for TCP peers handed from other workers to the TCP owner (see the module doc):
/// `capacity` fixed slots, each held by exactly one party at a time. A slot index is in `free`
/// (nobody touches the slot), or popped from `free` by one producer (who fills it), or in
/// `full` (nobody touches it), or popped from `full` by the owner (who reads it and returns
/// it to `free`).
pub struct TcpHub {
    slots: Box<[UnsafeCell<HubSlot>]>,
    free: ArrayQueue<u32>,
    full: ArrayQueue<u32>,
    /// The owner's wake-up: readable while a producer pushed since the owner last drained.
    wake: OwnedFd,
    /// A wake-up was written and the owner has not drained since.
    wake_pending: AtomicBool,
    /// The owner runs its loop and drains the hub before it next blocks: producers need not
    /// write the eventfd. Set at each turn's upkeep, cleared right before the owner's last
    /// check for work ahead of a blocking wait. Producer (push, fence, load) and owner
    /// (clear, fence, check `full`) order their steps with `SeqCst` fences, so either the
    /// producer sees the flag clear and wakes the owner, or the owner sees the frame and does
    /// not block: no wake-up is lost.
    owner_awake: AtomicBool,
    /// The owner's open connections (producers skip the scan of their queue while 0).
    connections: AtomicUsize,
    /// The owner waits for its predecessor's listener and connections (zero-loss upgrade):
    /// producers queue frames for TCP peers even while no connection is open, and the owner
    /// keeps them queued until it adopted the connections.
    adopting: AtomicBool,
    /// The predecessor's listener and connections, put here for the owner
    /// ([`TcpHub::offer`]); `handoff_ready` says it is there.
    handoff: Mutex<Option<TcpHandover>>,
    handoff_ready: AtomicBool,
}

// SAFETY: a slot is accessed only by the party that popped its index from `free` (a
// producer) or from `full` (the owner), never by two at once (see the type doc). ArrayQueue's
// push (release) and pop (acquire) order a producer's writes before the owner's reads and the
// owner's reads before the next producer's writes.
unsafe impl Sync for TcpHub {}
// SAFETY: as above; the slots own their buffers.
unsafe impl Send for TcpHub {}

impl TcpHub {
    /// A hub of `capacity` frames of at most `max_frame` bytes each (both at least 1).
    pub fn new(capacity: usize, max_frame: usize) -> Result<Arc<TcpHub>, IoError> {
        let capacity = capacity.clamp(1, u32::MAX as usize);
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(IoError::os(
                "eventfd(ICE-TCP hub)",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd is a fresh eventfd nobody else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let free = ArrayQueue::new(capacity);
        for i in 0..capacity {
            // Cannot fail: the queue has exactly `capacity` places.
            let _ = free.push(i as u32);
        }
        Ok(Arc::new(TcpHub {
            slots: (0..capacity)
                .map(|_| {
                    UnsafeCell::new(HubSlot {
                        dst: SocketAddr::from(([0, 0, 0, 0], 0)),
                        len: 0,
                        buf: vec![0u8; max_frame.max(1)].into_boxed_slice(),
                    })
                })
                .collect(),
            free,
            full: ArrayQueue::new(capacity),
            wake,
            wake_pending: AtomicBool::new(false),
            owner_awake: AtomicBool::new(true),
            connections: AtomicUsize::new(0),
            adopting: AtomicBool::new(false),
            handoff: Mutex::new(None),
            handoff_ready: AtomicBool::new(false),
        }))
    }

    /// Frames the hub holds at once.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// From now until [`offer`](Self::offer): frames for TCP peers wait in the hub for the
    /// predecessor's connections (call before any worker runs).
    pub fn await_handoff(&self) {
        self.adopting.store(true, Ordering::Release);
    }

    /// Give the owner its predecessor's listener and connections (zero-loss upgrade) and wake
    /// it; it adopts them at its next turn. Called once, by the thread that received them.
    pub fn offer(&self, h: TcpHandover) {
        // A poisoned lock only means a panicking thread held it; the slot is still valid.
        *self.handoff.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
        self.handoff_ready.store(true, Ordering::Release);
        self.wake();
    }

    /// Copy `data` for `dst` into a free slot; false when every slot is taken (or the datagram
    /// is larger than a slot).
    fn push(&self, dst: SocketAddr, data: &[u8]) -> bool {
        let Some(i) = self.free.pop() else {
            return false;
        };
        // SAFETY: index `i` was popped from `free`, so this thread alone holds the slot.
        let slot = unsafe { &mut *self.slots[i as usize].get() };
        if data.len() > slot.buf.len() {
            // Cannot fail: the index just came out of `free`, which has room for all.
            let _ = self.free.push(i);
            return false;
        }
        slot.dst = dst;
        slot.len = data.len();
        slot.buf[..data.len()].copy_from_slice(data);
        // Cannot fail: `full` has room for every slot and this index is in neither queue.
        let _ = self.full.push(i);
        true
    }

    /// Producer, after pushing: wake the owner unless it is awake (it drains the hub before it
    /// next blocks) or a wake-up is pending already.
    fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.owner_awake.load(Ordering::SeqCst) {
            return;
        }
        self.wake();
    }

    /// Owner, each turn: awake, so producers skip the eventfd.
    fn mark_awake(&self) {
        self.owner_awake.store(true, Ordering::SeqCst);
    }

    /// Owner, right before a wait that may block: producers wake it from now on. True when
    /// frames are queued (then it must not block).
    fn about_to_block(&self) -> bool {
        self.owner_awake.store(false, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        !self.full.is_empty()
    }

    /// The slot at index `i`.
    ///
    /// # Safety
    /// The caller holds `i`: popped from `full` by the owner and not yet returned to `free`.
    unsafe fn held(&self, i: u32) -> &HubSlot {
        // SAFETY: the caller holds the index, so no producer writes this slot meanwhile.
        unsafe { &*self.slots[i as usize].get() }
    }

    /// Wake the owner unless a wake-up is pending already (one `write` per owner drain).
    fn wake(&self) {
        if self.wake_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local buffer to our eventfd.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Owner: clear the wake-up (read the eventfd) so producers write it again.
    fn rearm(&self) {
        let mut v = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live local buffer; nonblocking eventfd.
        let _ = unsafe { libc::read(self.wake.as_raw_fd(), v.as_mut_ptr().cast(), v.len()) };
        self.wake_pending.store(false, Ordering::SeqCst);
    }
}

/// A non-owner worker's side of ICE-TCP: hands datagrams for TCP peers to the owner.
pub struct TcpForwarder {
    hub: Arc<TcpHub>,
}

impl TcpForwarder {
    /// A forwarder into `hub`.
    pub fn new(hub: Arc<TcpHub>) -> TcpForwarder {
        TcpForwarder { hub }
    }

    /// Move every datagram of `tx` addressed to a TCP peer key into the hub (the rest leave as
    /// UDP); wake the owner if any went. Scans `tx` only while the owner holds connections.
    pub fn forward(&self, tx: &mut TxQueue, c: &mut IoCounters) {
        if self.hub.connections.load(Ordering::Relaxed) == 0
            && !self.hub.adopting.load(Ordering::Relaxed)
        {
            // No connection: nothing to reach; a stale TCP key must still not leave as UDP.
            if tx.metas().iter().any(|m| is_tcp_peer(&m.dst)) {
                tx.retain(|m, _| {
                    let tcp = is_tcp_peer(&m.dst);
                    c.tcp_unroutable += u64::from(tcp);
                    !tcp
                });
            }
            return;
        }
        let mut pushed = false;
        tx.retain(|m, data| {
            if !is_tcp_peer(&m.dst) {
                return true;
            }
            if self.hub.push(m.dst, data) {
                c.tcp_forwarded += 1;
                pushed = true;
            } else {
                c.tcp_forward_full += 1;
            }
            false
        });
        if pushed {
            self.hub.notify();
        }
    }
}

/// What a worker does with ICE-TCP: the owner serves the connections, every other worker
/// forwards datagrams for them.
pub enum TcpRole {
    /// Worker 0: the listener and every connection.
    Owner(Box<TcpSide>),
    /// Any other worker.
    Forwarder(TcpForwarder),
}

impl TcpRole {
    /// The fd the backend watches for readability (the owner's epoll set), if any.
    pub fn fd(&self) -> Option<RawFd> {
        match self {
            TcpRole::Owner(s) => Some(s.fd()),
            TcpRole::Forwarder(_) => None,
        }
    }

    /// True when the owner has frames or connections waiting (the backend should not block).
    pub fn has_work(&self) -> bool {
        match self {
            TcpRole::Owner(s) => s.has_work(),
            TcpRole::Forwarder(_) => false,
        }
    }

    /// Collect events (when `signalled`), accept and expire connections (owner only).
    pub fn service(&mut self, signalled: bool, c: &mut IoCounters) {
        if let TcpRole::Owner(s) = self {
            s.service(signalled, Instant::now(), c);
        }
    }

    /// Hand received frames to `f` (owner only; see [`TcpSide::drain`]).
    pub fn drain<F>(&mut self, max: usize, tx: &mut TxQueue, c: &mut IoCounters, f: &mut F) -> usize
    where
        F: FnMut(SocketAddr, &mut [u8], usize, &mut TxQueue),
    {
        match self {
            TcpRole::Owner(s) => s.drain(max, tx, c, f),
            TcpRole::Forwarder(_) => 0,
        }
    }

    /// Before a send: take every datagram for a TCP peer out of `tx` (owner: write it to its
    /// connection; forwarder: hand it to the owner).
    pub fn route(&mut self, tx: &mut TxQueue, c: &mut IoCounters) {
        match self {
            TcpRole::Owner(s) => s.take_frames(tx, c),
            TcpRole::Forwarder(f) => f.forward(tx, c),
        }
    }

    /// Open connections (0 on a forwarder).
    pub fn connections(&self) -> usize {
        match self {
            TcpRole::Owner(s) => s.connections(),
            TcpRole::Forwarder(_) => 0,
        }
    }
}

/// Token of the listener in the side's epoll set.
const LISTENER: Token = Token(0);
/// Token of the hub's wake-up eventfd.
const HUB_WAKE: Token = Token(1);
/// Tokens of connections: this plus the connection's slot.
const CONN_BASE: usize = 2;
/// Events collected per `epoll_wait` of the side's own set.
const EVENTS: usize = 256;

/// One accepted connection.
struct Conn {
    stream: TcpStream,
    /// The peer key ([`tcp_peer`]) the engine sees as the source.
    peer: SocketAddr,
    rx: Deframer,
    /// The unwritten tail of a partially written frame (`tx_buf[tx_off..tx_end]`).
    tx_buf: Box<[u8]>,
    tx_off: usize,
    tx_end: usize,
    /// A binding success response was written: the connection is a candidate pair.
    answered: bool,
    /// The first frame was a binding request.
    greeted: bool,
    /// Frames dropped in a row on a full send buffer.
    dropped_in_row: u32,
    /// Bumped on reuse of the slot, so stale deadlines are ignored.
    generation: u32,
    /// The socket may have more to read (edge-triggered readiness).
    readable: bool,
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy)]
enum Close {
    Garbage,
    Oversized,
    Timeout,
    SlowReader,
    Peer,
}

/// The TCP owner's listener and connections (see the module doc). The backend watches
/// [`fd`](Self::fd) and calls [`service`](Self::service) each turn (with `signalled` when the
/// fd was reported readable).
pub struct TcpSide {
    /// `None` while the side waits for its predecessor's (zero-loss upgrade).
    listener: Option<TcpListener>,
    params: TcpParams,
    max_frame: usize,
    /// The listener, the hub's wake-up and every connection, edge-triggered.
    poll: Poll,
    events: Events,
    /// The last `epoll_wait` filled `events`: more may be waiting.
    more_events: bool,
    /// Datagrams other workers queued for these connections.
    hub: Arc<TcpHub>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    by_peer: HashMap<SocketAddr, usize>,
    /// (deadline, slot, generation) in accept order; the timeout is constant, so deadlines
    /// are too.
    deadlines: VecDeque<(Instant, usize, u32)>,
    /// Slots with unread bytes or buffered frames.
    ready: VecDeque<usize>,
    listener_ready: bool,
    /// Scratch buffer a frame is copied into for the engine (which may rewrite it in place
    /// and needs a whole receive buffer).
    scratch: Box<[u8]>,
    generation: u32,
    /// A turn's frames for connections, as (connection slot << 32 | arrival, source), sorted
    /// so each connection's frames are adjacent and in order ([`TcpSide::take_frames`]).
    gather: Vec<(u64, FrameSrc)>,
    /// Hub slots taken this turn (returned to the hub after the writes), at most its capacity.
    held: Vec<u32>,
}

/// Where a frame [`TcpSide::take_frames`] writes sits: a datagram of the transmit queue or a
/// hub slot the owner holds.
#[derive(Debug, Clone, Copy)]
enum FrameSrc {
    Tx(u32),
    Hub(u32),
}

/// A TCP owner's listener and connections on their way to the relay that takes over (zero-loss
/// upgrade, [`crate::io::handover`]): the descriptors, and per connection what was in flight.
#[derive(Debug, Default)]
pub struct TcpHandover {
    pub listener: Option<OwnedFd>,
    pub conns: Vec<HandedConn>,
}

/// One connection of a [`TcpHandover`].
#[derive(Debug)]
pub struct HandedConn {
    pub fd: OwnedFd,
    /// The peer key ([`tcp_peer`]) the engine knows the connection by.
    pub peer: SocketAddr,
    /// The first frame was a binding request.
    pub greeted: bool,
    /// A binding success response was written on it.
    pub answered: bool,
    /// Bytes received and not yet framed (the start of a frame), at most a whole frame.
    pub rx: Vec<u8>,
    /// The unwritten tail of a partly written frame: it goes out before anything else.
    pub tx: Vec<u8>,
}

impl TcpSide {
    /// A side on `listener` (from [`bind_listener`]) taking frames up to `max_frame` bytes,
    /// serving what other workers queue in `hub`. Without a listener the side waits for its
    /// predecessor's ([`TcpHub::offer`]) and keeps frames for TCP peers queued until then.
    pub fn new(
        listener: Option<TcpListener>,
        params: TcpParams,
        max_frame: usize,
        hub: Arc<TcpHub>,
    ) -> Result<TcpSide, IoError> {
        let poll = Poll::new().map_err(|e| IoError::os("epoll_create(ICE-TCP)", e))?;
        if let Some(l) = &listener {
            poll.registry()
                .register(&mut SourceFd(&l.as_raw_fd()), LISTENER, Interest::READABLE)
                .map_err(|e| IoError::os("epoll_ctl(ADD, ICE-TCP listener)", e))?;
        } else {
            hub.await_handoff();
        }
        poll.registry()
            .register(
                &mut SourceFd(&hub.wake.as_raw_fd()),
                HUB_WAKE,
                Interest::READABLE,
            )
            .map_err(|e| IoError::os("epoll_ctl(ADD, ICE-TCP hub)", e))?;
        Ok(TcpSide {
            listener,
            params,
            max_frame,
            poll,
            events: Events::with_capacity(EVENTS),
            more_events: true,
            conns: Vec::new(),
            free: Vec::new(),
            by_peer: HashMap::new(),
            deadlines: VecDeque::new(),
            ready: VecDeque::new(),
            listener_ready: true,
            scratch: vec![0u8; max_frame.max(crate::batch::MAX_DATAGRAM)].into_boxed_slice(),
            generation: 0,
            gather: Vec::with_capacity(2 * hub.capacity()),
            held: Vec::with_capacity(hub.capacity()),
            hub,
        })
    }

    /// The side's epoll fd: readable when the listener, a connection or the hub has an event.
    pub fn fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }

    /// The local address of the listener.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Some(l) => l.local_addr(),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "waiting for the listener of the relay it takes over from",
            )),
        }
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.by_peer.len()
    }

    /// True when `dst` names one of this worker's connections.
    #[inline]
    pub fn owns(&self, dst: &SocketAddr) -> bool {
        !self.by_peer.is_empty() && self.by_peer.contains_key(dst)
    }

    /// One turn's upkeep at `now`: when `signalled` (the fd was readable) or the last collection
    /// was cut short, collect the side's events (one `epoll_wait` with a zero timeout); then
    /// accept pending connections and close those past their handshake deadline.
    pub fn service(&mut self, signalled: bool, now: Instant, c: &mut IoCounters) {
        self.hub.mark_awake();
        if self.hub.handoff_ready.load(Ordering::Acquire) {
            self.adopt(now, c);
        }
        if signalled || self.more_events {
            self.collect(c);
        }
        self.maintain(now, c);
    }

    fn collect(&mut self, c: &mut IoCounters) {
        c.syscalls += 1;
        if let Err(e) = self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
            if e.kind() != io::ErrorKind::Interrupted {
                c.rx_errors += 1;
                tracing::debug!(error = %e, "epoll_wait(ICE-TCP)");
            }
            self.more_events = true;
            return;
        }
        let mut n = 0;
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for ev in events.iter() {
            n += 1;
            match ev.token() {
                LISTENER => self.listener_ready = true,
                HUB_WAKE => {} // drained every turn by take_frames
                Token(t) => self.on_event(
                    t - CONN_BASE,
                    ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                    ev.is_writable(),
                    c,
                ),
            }
        }
        events.clear();
        self.events = events;
        self.more_events = n >= EVENTS;
    }

    /// Connection `slot` became readable and/or writable.
    fn on_event(&mut self, slot: usize, readable: bool, writable: bool, c: &mut IoCounters) {
        if writable {
            self.flush_tail(slot, c);
        }
        if readable {
            if let Some(Some(conn)) = self.conns.get_mut(slot) {
                if !conn.readable {
                    conn.readable = true;
                    self.ready.push_back(slot);
                }
            }
        }
    }

    /// True when frames, events or connections may be waiting. The backend asks right before
    /// a wait that may block, so this also tells producers to wake the owner from now on
    /// (until the next [`service`](Self::service)).
    pub fn has_work(&self) -> bool {
        // While adopting, queued frames wait for the connections: they are no work yet.
        let hub = self.hub.about_to_block() && !self.hub.adopting.load(Ordering::Relaxed);
        hub || self.hub.handoff_ready.load(Ordering::Acquire)
            || self.listener_ready
            || self.more_events
            || !self.ready.is_empty()
    }

    /// Accept pending connections and close those past their handshake deadline.
    fn maintain(&mut self, now: Instant, c: &mut IoCounters) {
        while let Some(&(deadline, slot, gen)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let expired =
                matches!(&self.conns[slot], Some(k) if k.generation == gen && !k.answered);
            if expired {
                self.close(slot, Close::Timeout, c);
            }
        }
        loop {
            let accepted = match &self.listener {
                Some(l) if self.listener_ready => l.accept(),
                _ => return,
            };
            match accepted {
                Ok((stream, peer)) => self.admit(stream, tcp_peer(peer), now, c),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listener_ready = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS: try again next turn.
                    c.rx_errors += 1;
                    tracing::debug!(error = %e, "accept(ICE-TCP)");
                    return;
                }
            }
        }
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr, now: Instant, c: &mut IoCounters) {
        c.tcp_accepted += 1;
        if self.by_peer.len() >= self.params.max_connections || self.by_peer.contains_key(&peer) {
            c.tcp_refused_full += 1;
            return; // dropping the stream closes it
        }
        let setup = stream
            .set_nonblocking(true)
            .and_then(|()| stream.set_nodelay(true))
            .and_then(|()| {
                socket2::SockRef::from(&stream).set_send_buffer_size(self.params.send_buffer)
            });
        if let Err(e) = setup {
            c.rx_errors += 1;
            tracing::debug!(error = %e, "ICE-TCP socket setup");
            return;
        }
        let conn = Conn {
            peer,
            rx: Deframer::new(self.max_frame),
            // Allocated at the first partial write only (most connections never have one).
            tx_buf: Box::default(),
            tx_off: 0,
            tx_end: 0,
            answered: false,
            greeted: false,
            dropped_in_row: 0,
            generation: 0,
            readable: true,
            stream,
        };
        self.insert(conn, now, c);
    }

    /// Give `conn` a slot, watch it, and (until it is answered) a handshake deadline.
    fn insert(&mut self, mut conn: Conn, now: Instant, c: &mut IoCounters) {
        self.generation = self.generation.wrapping_add(1);
        conn.generation = self.generation;
        let (peer, answered) = (conn.peer, conn.answered);
        let fd = conn.stream.as_raw_fd();
        let slot = match self.free.pop() {
            Some(s) => {
                self.conns[s] = Some(conn);
                s
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&fd),
            Token(CONN_BASE + slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            c.rx_errors += 1;
            tracing::debug!(error = %e, "epoll_ctl(ADD, ICE-TCP connection)");
            self.conns[slot] = None;
            self.free.push(slot);
            return;
        }
        self.by_peer.insert(peer, slot);
        self.hub
            .connections
            .store(self.by_peer.len(), Ordering::Relaxed);
        if !answered {
            self.deadlines
                .push_back((now + self.params.handshake_timeout, slot, self.generation));
        }
        self.ready.push_back(slot);
    }

    /// Take over the predecessor's listener and connections ([`TcpHub::offer`]), each with
    /// the bytes it had in flight, then write the frames queued meanwhile. A connection whose
    /// state does not fit this side's bounds (a smaller `max_datagram`) or whose peer key is
    /// taken is closed (counted as `garbage`).
    fn adopt(&mut self, now: Instant, c: &mut IoCounters) {
        self.hub.handoff_ready.store(false, Ordering::Release);
        let taken = self
            .hub
            .handoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(h) = taken else {
            return;
        };
        if let Some(fd) = h.listener {
            let l = TcpListener::from(fd);
            match self.poll.registry().register(
                &mut SourceFd(&l.as_raw_fd()),
                LISTENER,
                Interest::READABLE,
            ) {
                Ok(()) => {
                    self.listener = Some(l);
                    self.listener_ready = true;
                }
                Err(e) => {
                    c.rx_errors += 1;
                    tracing::warn!(error = %e, "epoll_ctl(ADD, adopted ICE-TCP listener)");
                }
            }
        }
        let adopted = h.conns.len();
        for hc in h.conns {
            let stream = TcpStream::from(hc.fd);
            let mut rx = Deframer::new(self.max_frame);
            let fits = hc.rx.len() <= rx.buf.len() && hc.tx.len() <= self.max_frame + 2;
            if !fits
                || self.by_peer.contains_key(&hc.peer)
                || self.by_peer.len() >= self.params.max_connections
                || stream.set_nonblocking(true).is_err()
            {
                c.tcp_closed_garbage += 1;
                continue;
            }
            rx.spare()[..hc.rx.len()].copy_from_slice(&hc.rx);
            rx.filled(hc.rx.len());
            let mut tx_buf = Box::default();
            if !hc.tx.is_empty() {
                let mut b = vec![0u8; self.max_frame + 2].into_boxed_slice();
                b[..hc.tx.len()].copy_from_slice(&hc.tx);
                tx_buf = b;
            }
            let conn = Conn {
                peer: hc.peer,
                rx,
                tx_buf,
                tx_off: 0,
                tx_end: hc.tx.len(),
                answered: hc.answered,
                greeted: hc.greeted,
                dropped_in_row: 0,
                generation: 0,
                readable: true,
                stream,
            };
            self.insert(conn, now, c);
        }
        self.hub.adopting.store(false, Ordering::Release);
        tracing::info!(
            connections = self.by_peer.len(),
            handed = adopted,
            listening = self.listener.is_some(),
            "adopted the ICE-TCP listener and connections of the relay taken over"
        );
        // Each connection's unwritten tail first, then what was queued while adopting.
        for slot in 0..self.conns.len() {
            self.flush_tail(slot, c);
        }
    }

    /// Zero-loss upgrade, after every worker stopped: write what other workers queued in the
    /// hub, then give up the listener and every connection with the bytes in flight, for the
    /// relay that takes over. Nothing is read from the connections any more.
    pub fn hand_over(mut self, c: &mut IoCounters) -> TcpHandover {
        let mut none = TxQueue::with_capacity(1);
        for _ in 0..self.hub.capacity().div_ceil(self.held.capacity().max(1)) + 1 {
            if self.hub.full.is_empty() {
                break;
            }
            self.take_frames(&mut none, c);
        }
        let mut h = TcpHandover {
            listener: self.listener.take().map(OwnedFd::from),
            conns: Vec::with_capacity(self.by_peer.len()),
        };
        for conn in self.conns.drain(..).flatten() {
            h.conns.push(HandedConn {
                peer: conn.peer,
                greeted: conn.greeted,
                answered: conn.answered,
                rx: conn.rx.buf[conn.rx.start..conn.rx.end].to_vec(),
                tx: conn.tx_buf[conn.tx_off..conn.tx_end].to_vec(),
                fd: OwnedFd::from(conn.stream),
            });
        }
        self.by_peer.clear();
        h
    }

    fn close(&mut self, slot: usize, why: Close, c: &mut IoCounters) {
        let Some(conn) = self.conns[slot].take() else {
            return;
        };
        match why {
            Close::Garbage => c.tcp_closed_garbage += 1,
            Close::Oversized => c.tcp_closed_oversized += 1,
            Close::Timeout => c.tcp_closed_timeout += 1,
            Close::SlowReader => c.tcp_closed_slow_reader += 1,
            Close::Peer => c.tcp_closed_peer += 1,
        }
        self.by_peer.remove(&conn.peer);
        self.hub
            .connections
            .store(self.by_peer.len(), Ordering::Relaxed);
        self.free.push(slot);
        // Dropping the stream closes the fd, which removes it from the readiness set. An
        // event already collected for the slot reaches its next tenant as a spurious wake-up.
        drop(conn);
    }

    /// Hand up to `max` received frames to `f(src, buf, len, tx)` (as
    /// [`super::Backend::drain`]); stops early when `tx` is full. Returns how many.
    pub fn drain<F>(&mut self, max: usize, tx: &mut TxQueue, c: &mut IoCounters, f: &mut F) -> usize
    where
        F: FnMut(SocketAddr, &mut [u8], usize, &mut TxQueue),
    {
        let mut handed = 0;
        while handed < max && !tx.is_full() {
            let Some(&slot) = self.ready.front() else {
                break;
            };
            let Some(conn) = self.conns[slot].as_mut() else {
                self.ready.pop_front();
                continue;
            };
            let mut close = None;
            let mut done = false;
            while handed < max && !tx.is_full() {
                match conn.rx.next_frame() {
                    Ok(Some(frame)) => {
                        if !conn.greeted {
                            if !is_binding_request(frame) {
                                close = Some(Close::Garbage);
                                break;
                            }
                            conn.greeted = true;
                        }
                        let len = frame.len();
                        self.scratch[..len].copy_from_slice(frame);
                        c.tcp_rx_frames += 1;
                        c.rx_bytes += len as u64;
                        f(conn.peer, &mut self.scratch, len, tx);
                        handed += 1;
                        continue;
                    }
                    Ok(None) => {}
                    Err(FrameError::TooLarge(_)) => {
                        close = Some(Close::Oversized);
                        break;
                    }
                }
                if !conn.readable {
                    done = true;
                    break;
                }
                let spare = conn.rx.spare();
                match conn.stream.read(spare) {
                    Ok(0) => {
                        close = Some(Close::Peer);
                        break;
                    }
                    Ok(n) => conn.rx.filled(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        close = Some(Close::Peer);
                        break;
                    }
                }
            }
            if let Some(why) = close {
                self.ready.pop_front();
                self.close(slot, why, c);
            } else if done {
                self.ready.pop_front();
            }
        }
        handed
    }

    /// Write every datagram of `tx` addressed to one of this worker's connections framed to
    /// it and remove it from `tx` (the rest leave as UDP), and what other workers queued in
    /// the hub; a datagram for a TCP peer key no connection holds is dropped
    /// (`tcp_unroutable`). Each connection's frames of the turn, in order, leave with one
    /// `sendmsg` per [`MAX_RUN`] frames.
    pub fn take_frames(&mut self, tx: &mut TxQueue, c: &mut IoCounters) {
        if self.hub.adopting.load(Ordering::Acquire) {
            self.queue_while_adopting(tx, c);
            return;
        }
        self.gather.clear();
        self.held.clear();
        let from_tx = tx.metas().iter().any(|m| is_tcp_peer(&m.dst));
        if from_tx {
            for (i, m) in tx.metas().iter().enumerate() {
                if !is_tcp_peer(&m.dst) {
                    continue;
                }
                match self.by_peer.get(&m.dst) {
                    Some(&slot) => {
                        let key = (slot as u64) << 32 | self.gather.len() as u64;
                        self.gather.push((key, FrameSrc::Tx(i as u32)));
                    }
                    None => c.tcp_unroutable += 1,
                }
            }
        }
        if self.hub.wake_pending.load(Ordering::SeqCst) {
            self.hub.rearm();
        }
        while self.held.len() < self.held.capacity() {
            let Some(i) = self.hub.full.pop() else {
                break;
            };
            self.held.push(i);
            // SAFETY: `i` was just popped from `full`; it goes back to `free` below.
            let dst = unsafe { self.hub.held(i) }.dst;
            match self.by_peer.get(&dst) {
                Some(&slot) => {
                    let key = (slot as u64) << 32 | self.gather.len() as u64;
                    self.gather.push((key, FrameSrc::Hub(i)));
                }
                None => c.tcp_unroutable += 1,
            }
        }
        // Keys are unique (arrival order in the low half), so the unstable sort (which
        // allocates nothing) keeps each connection's frames in order.
        self.gather.sort_unstable_by_key(|e| e.0);
        let mut slow = 0usize;
        let mut slow_slots = [0usize; 8];
        let mut start = 0;
        while start < self.gather.len() {
            let slot = (self.gather[start].0 >> 32) as usize;
            let mut end = start + 1;
            while end < self.gather.len()
                && end - start < MAX_RUN
                && (self.gather[end].0 >> 32) as usize == slot
            {
                end += 1;
            }
            let mut frames: [&[u8]; MAX_RUN] = [&[]; MAX_RUN];
            for (f, e) in frames.iter_mut().zip(&self.gather[start..end]) {
                *f = match e.1 {
                    FrameSrc::Tx(i) => tx.datagram(i as usize),
                    // SAFETY: hub indices in `gather` are in `held`, returned after the writes.
                    FrameSrc::Hub(i) => {
                        let h = unsafe { self.hub.held(i) };
                        &h.buf[..h.len]
                    }
                };
            }
            if let Some(conn) = self.conns[slot].as_mut() {
                if write_frames(conn, &frames[..end - start], c) == Written::SlowReader
                    && slow < slow_slots.len()
                    && !slow_slots[..slow].contains(&slot)
                {
                    slow_slots[slow] = slot;
                    slow += 1;
                }
            }
            start = end;
        }
        for &i in &self.held {
            // Cannot fail: `free` has room for every slot and this index is in neither queue.
            let _ = self.hub.free.push(i);
        }
        if from_tx {
            tx.retain(|m, _| !is_tcp_peer(&m.dst));
        }
        for &slot in &slow_slots[..slow] {
            self.close(slot, Close::SlowReader, c);
        }
    }

    /// While the side waits for its predecessor's connections: datagrams for TCP peers wait in
    /// the hub with the other workers' (a full hub drops and counts, `tcp_forward_full`).
    fn queue_while_adopting(&mut self, tx: &mut TxQueue, c: &mut IoCounters) {
        if self.hub.wake_pending.load(Ordering::SeqCst) {
            self.hub.rearm();
        }
        if !tx.metas().iter().any(|m| is_tcp_peer(&m.dst)) {
            return;
        }
        let hub = &self.hub;
        tx.retain(|m, data| {
            if !is_tcp_peer(&m.dst) {
                return true;
            }
            if hub.push(m.dst, data) {
                c.tcp_forwarded += 1;
            } else {
                c.tcp_forward_full += 1;
            }
            false
        });
    }

    /// The connection became writable: send what is left of a partially written frame.
    fn flush_tail(&mut self, slot: usize, c: &mut IoCounters) {
        let Some(Some(conn)) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.tx_off == conn.tx_end {
            return;
        }
        match send(&conn.stream, &[&conn.tx_buf[conn.tx_off..conn.tx_end]]) {
            Ok(n) => conn.tx_off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.close(slot, Close::Peer, c),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Written {
    Ok,
    Dropped,
    SlowReader,
}

/// Write `frames` (at most [`MAX_RUN`]; each a length prefix and the datagram) to `conn`
/// with one `sendmsg`. A frame cut by a partial write keeps its tail for the next write (it
/// goes out before anything else on the connection); frames after it, and every frame when
/// the socket buffer is full, are dropped (counted).
fn write_frames(conn: &mut Conn, frames: &[&[u8]], c: &mut IoCounters) -> Written {
    let frames = &frames[..frames.len().min(MAX_RUN)];
    if frames.iter().any(|f| is_binding_success(f)) {
        conn.answered = true;
    }
    let drop_all = |conn: &mut Conn, c: &mut IoCounters, from: usize| {
        let mut w = Written::Dropped;
        for _ in from..frames.len() {
            if dropped(conn, c) == Written::SlowReader {
                w = Written::SlowReader;
            }
        }
        w
    };
    if conn.tx_off < conn.tx_end {
        // Finish the previous frame first, or the stream loses its framing.
        match send(&conn.stream, &[&conn.tx_buf[conn.tx_off..conn.tx_end]]) {
            Ok(n) => conn.tx_off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                c.tcp_tx_dropped += frames.len() as u64;
                return Written::Dropped;
            }
        }
        if conn.tx_off < conn.tx_end {
            return drop_all(conn, c, 0);
        }
    }
    let mut heads = [[0u8; 2]; MAX_RUN];
    let mut parts: [&[u8]; 2 * MAX_RUN] = [&[]; 2 * MAX_RUN];
    let mut n_parts = 0;
    for (f, h) in frames.iter().zip(heads.iter_mut()) {
        // A datagram over 64 KiB cannot be framed; the relay never builds one (max_frame is
        // at most that), so this only guards the length prefix.
        *h = u16::try_from(f.len()).unwrap_or(0).to_be_bytes();
    }
    for (f, h) in frames.iter().zip(heads.iter()) {
        if u16::from_be_bytes(*h) as usize != f.len() {
            continue;
        }
        parts[n_parts] = h;
        parts[n_parts + 1] = f;
        n_parts += 2;
    }
    let oversized = frames.len() - n_parts / 2;
    c.tcp_tx_dropped += oversized as u64;
    if n_parts == 0 {
        return Written::Dropped;
    }
    match send(&conn.stream, &parts[..n_parts]) {
        Ok(mut n) => {
            let mut w = Written::Ok;
            for pair in parts[..n_parts].chunks_exact(2) {
                let (head, data) = (pair[0], pair[1]);
                let total = data.len() + 2;
                if n >= total {
                    n -= total;
                    c.tcp_tx_frames += 1;
                    c.tx_bytes += data.len() as u64;
                    conn.dropped_in_row = 0;
                    continue;
                }
                if n > 0 {
                    // Keep the tail: it goes out before anything else on this connection.
                    if conn.tx_buf.len() < total {
                        conn.tx_buf = vec![0u8; conn.rx.max_frame() + 2].into_boxed_slice();
                    }
                    conn.tx_buf[..2].copy_from_slice(head);
                    conn.tx_buf[2..total].copy_from_slice(data);
                    conn.tx_off = n;
                    conn.tx_end = total;
                    n = 0;
                    c.tcp_tx_frames += 1;
                    c.tx_bytes += data.len() as u64;
                    continue;
                }
                if dropped(conn, c) == Written::SlowReader {
                    w = Written::SlowReader;
                } else if w == Written::Ok {
                    w = Written::Dropped;
                }
            }
            w
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => drop_all(conn, c, oversized),
        Err(_) => {
            c.tcp_tx_dropped += (n_parts / 2) as u64;
            Written::Dropped
        }
    }
}

fn dropped(conn: &mut Conn, c: &mut IoCounters) -> Written {
    c.tcp_tx_dropped += 1;
    conn.dropped_in_row += 1;
    if conn.dropped_in_row >= SLOW_READER_DROPS {
        Written::SlowReader
    } else {
        Written::Dropped
    }
}

/// One nonblocking `sendmsg` of `parts` (at most `2 * MAX_RUN`; no SIGPIPE).
fn send(stream: &TcpStream, parts: &[&[u8]]) -> io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 2 * MAX_RUN];
    let n = parts.len().min(2 * MAX_RUN);
    for (v, p) in iov.iter_mut().zip(parts) {
        v.iov_base = p.as_ptr() as *mut libc::c_void;
        v.iov_len = p.len();
    }
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = n as _;
    // SAFETY: msg points at `n` iovecs describing live slices borrowed for this call; the
    // kernel only reads them.
    let r = unsafe {
        libc::sendmsg(
            stream.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            v.extend_from_slice(&(p.len() as u16).to_be_bytes());
            v.extend_from_slice(p);
        }
        v
    }

    fn feed(d: &mut Deframer, bytes: &[u8]) {
        let s = d.spare();
        s[..bytes.len()].copy_from_slice(bytes);
        d.filled(bytes.len());
    }

    #[test]
    fn deframes_split_and_joined_frames() {
        let mut d = Deframer::new(2048);
        let bytes = framed(&[b"hello", b"", b"world!"]);
        feed(&mut d, &bytes[..3]);
        assert_eq!(d.next_frame().unwrap(), None);
        feed(&mut d, &bytes[3..]);
        assert_eq!(d.next_frame().unwrap(), Some(&b"hello"[..]));
        assert_eq!(d.next_frame().unwrap(), Some(&b""[..]));
        assert_eq!(d.next_frame().unwrap(), Some(&b"world!"[..]));
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.spare().len(), 2050, "empty again");
    }

    #[test]
    fn a_full_size_frame_fits_and_a_larger_one_is_refused() {
        let mut d = Deframer::new(2048);
        let big = vec![7u8; 2048];
        feed(&mut d, &framed(&[&big]));
        assert_eq!(d.next_frame().unwrap().map(<[u8]>::len), Some(2048));
        feed(&mut d, &[0xff, 0xff]);
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(65_535)));
    }

    #[test]
    fn binding_request_recognised() {
        let mut req = vec![0x00, 0x01, 0x00, 0x04, 0x21, 0x12, 0xa4, 0x42];
        req.extend_from_slice(&[0u8; 12]);
        req.extend_from_slice(&[0u8; 4]);
        assert!(is_binding_request(&req));
        assert!(!is_binding_request(&req[..20]), "length mismatch");
        req[1] = 0x11;
        assert!(!is_binding_request(&req));
        assert!(!is_binding_request(b"GET / HTTP/1.1\r\n\r\n...."));
    }

    /// Producers push frames while the owner runs its loop the way the backends drive it:
    /// each turn marks it awake and drains, and before blocking it asks `has_work`'s question
    /// ([`TcpHub::about_to_block`]) and then waits on the eventfd. Producers skip the eventfd
    /// while the owner is awake. A lost wake-up would leave frames queued while the owner
    /// sleeps: its wait would time out with work pending. Every frame must arrive with no such
    /// timeout, across many sleep/wake cycles.
    #[test]
    fn no_wake_up_is_lost_when_producers_skip_it() {
        const PER_PRODUCER: u64 = 40_000;
        const PRODUCERS: u64 = 2;
        let hub = TcpHub::new(64, 16).unwrap();
        let dst = SocketAddr::from(([127, 0, 0, 1], 9));
        let owner = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                let (mut got, mut sleeps, mut blocks, mut writes_seen) = (0u64, 0u64, 0u64, 0u64);
                while got < PER_PRODUCER * PRODUCERS {
                    hub.mark_awake();
                    if hub.wake_pending.load(Ordering::SeqCst) {
                        hub.rearm();
                        writes_seen += 1;
                    }
                    while let Some(i) = hub.full.pop() {
                        got += 1;
                        let _ = hub.free.push(i);
                    }
                    if got == PER_PRODUCER * PRODUCERS {
                        break;
                    }
                    blocks += 1;
                    if hub.about_to_block() {
                        continue;
                    }
                    sleeps += 1;
                    let mut pfd = libc::pollfd {
                        fd: hub.wake.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one live pollfd for the duration of the call.
                    let r = unsafe { libc::poll(&mut pfd, 1, 10_000) };
                    assert!(
                        r > 0,
                        "lost wake-up: the owner slept 10 s with {} frames queued ({got} of {} taken, wake pending {})",
                        hub.full.len(),
                        PER_PRODUCER * PRODUCERS,
                        hub.wake_pending.load(Ordering::SeqCst)
                    );
                }
                (sleeps, blocks, writes_seen)
            })
        };
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let hub = hub.clone();
                std::thread::spawn(move || {
                    for k in 0..PER_PRODUCER {
                        while !hub.push(dst, &k.to_be_bytes()) {
                            std::thread::yield_now();
                        }
                        hub.notify();
                        // Bursts and pauses, so the owner both stays awake and goes to sleep.
                        if (k + p) % 512 == 0 {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let (sleeps, blocks, writes) = owner.join().unwrap();
        assert!(sleeps > 0, "the owner went to sleep at least once");
        // Producers write the eventfd only while the owner is past `about_to_block`: each such
        // window can see at most one write per producer (one that read "asleep" just before
        // the owner woke may land after it), so the writes are bounded by the windows, not by
        // the 80,000 frames. (How many windows end in a real sleep depends on scheduling.)
        assert!(
            writes <= PRODUCERS * blocks + 1,
            "wake-ups written outside the owner's sleep windows: {writes} > {PRODUCERS} x {blocks}"
        );
    }

    /// A connection pair: the relay's side (nonblocking, small send buffer) and the peer.
    fn conn_pair() -> (Conn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (stream, from) = l.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        socket2::SockRef::from(&stream)
            .set_send_buffer_size(16 * 1024)
            .unwrap();
        let conn = Conn {
            peer: tcp_peer(from),
            rx: Deframer::new(2048),
            tx_buf: Box::default(),
            tx_off: 0,
            tx_end: 0,
            answered: false,
            greeted: true,
            dropped_in_row: 0,
            generation: 0,
            readable: false,
            stream,
        };
        (conn, peer)
    }

    /// Runs of frames go out whole and in order with one `sendmsg` each; when the peer stops
    /// reading, a run is cut: the cut frame's tail is kept and written first next time, the
    /// frames after it are dropped and counted, and the byte stream never loses its framing.
    #[test]
    fn runs_of_frames_keep_framing_across_partial_writes() {
        use std::io::Read as _;
        let (mut conn, mut peer) = conn_pair();
        let mut c = IoCounters::default();
        let payloads: Vec<Vec<u8>> = (0..4000u32)
            .map(|i| {
                let mut v = vec![(i % 251) as u8; 900 + (i % 7) as usize];
                v[..4].copy_from_slice(&i.to_be_bytes());
                v
            })
            .collect();
        let mut slow = false;
        for run in payloads.chunks(MAX_RUN) {
            let frames: Vec<&[u8]> = run.iter().map(Vec::as_slice).collect();
            slow |= write_frames(&mut conn, &frames, &mut c) == Written::SlowReader;
        }
        assert!(
            c.tcp_tx_dropped > 0,
            "the peer did not read: frames dropped"
        );
        assert!(
            slow,
            "a connection that never reads is reported as a slow reader"
        );
        // Now read everything: whole frames, increasing ids, payload intact.
        let mut bytes = Vec::new();
        let mut buf = [0u8; 65536];
        peer.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        loop {
            if conn.tx_off < conn.tx_end {
                let _ = send(&conn.stream, &[&conn.tx_buf[conn.tx_off..conn.tx_end]])
                    .map(|n| conn.tx_off += n);
            }
            match peer.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
        let mut d = &bytes[..];
        let mut last = None;
        let mut frames = 0u64;
        while d.len() >= 2 {
            let n = usize::from(u16::from_be_bytes([d[0], d[1]]));
            assert!(d.len() >= 2 + n, "a whole frame");
            let f = &d[2..2 + n];
            let id = u32::from_be_bytes([f[0], f[1], f[2], f[3]]);
            assert_eq!(f, &payloads[id as usize][..], "frame {id} intact");
            assert!(last.is_none_or(|l| id > l), "in order");
            last = Some(id);
            frames += 1;
            d = &d[2 + n..];
        }
        assert!(d.is_empty(), "no partial frame left");
        assert_eq!(
            frames, c.tcp_tx_frames,
            "every frame counted as written arrived"
        );
        assert_eq!(frames + c.tcp_tx_dropped, payloads.len() as u64);
    }
}
