//! The relay's end of the slow-path channel (design.md "Slow-path datagrams").
//!
//! STUN, DTLS and datagrams from unknown sources go from a relay worker to control, and
//! control's replies come back to leave from the relay's media port. Transport: a
//! `SOCK_SEQPACKET` unix socket (message boundaries kept, reliable, ordered); control listens,
//! each relay worker connects ([`SlowPathClient`]). The messages are
//! [`contract::slowpath`]'s; this module owns the client socket and its batching.

use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

pub use contract::slowpath::*;

use crate::batch::TxQueue;

fn seqpacket() -> io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::SEQPACKET, None)
}

/// Where control's replies go: sent at once from the media socket's duplicate, or queued
/// in the worker's transmit queue.
enum Down<'a> {
    Send,
    Queue(&'a mut TxQueue),
}

/// Counters of one [`SlowPathClient`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlowPathCounters {
    /// Datagrams handed to control.
    pub up_sent: u64,
    /// Datagrams dropped because control was absent or its socket was full.
    pub up_dropped: u64,
    /// Replies from control sent to peers.
    pub down_sent: u64,
    /// Replies that could not be sent (bad message, unroutable, socket error).
    pub down_dropped: u64,
    /// Successful (re)connections to control.
    pub connects: u64,
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Replies forwarded per pump, so a chatty control cannot stall a worker.
const DOWN_PER_PUMP: usize = 64;

/// The relay end: nonblocking, batched sends of slow-path datagrams to control; replies are
/// queued in the worker's transmit queue ([`pump_into`](Self::pump_into)) or, for callers
/// without one, sent to peers through a duplicate of the worker's UDP socket (same local port). When
/// control is absent or its socket is full the datagrams are dropped and counted; the client
/// reconnects with exponential backoff (50 ms … 1 s).
pub struct SlowPathClient {
    path: PathBuf,
    worker: u16,
    local_port: u16,
    sock: Option<Socket>,
    reply: UdpSocket,
    next_attempt: Instant,
    backoff: Duration,
    out: Box<[u8]>,
    iov: Box<[libc::iovec]>,
    hdr: Box<[libc::mmsghdr]>,
    inbuf: Box<[u8]>,
    /// Control's replies may be waiting: set on connect, by [`set_readable`](Self::set_readable)
    /// and by the polling [`pump`](Self::pump); cleared when a read finds the socket empty.
    down_ready: bool,
    counters: SlowPathCounters,
}

impl SlowPathClient {
    /// A client for control's socket at `path`. `reply` is a duplicate (`try_clone`) of the
    /// worker's media socket; `batch` bounds the datagrams sent per `sendmmsg`.
    pub fn new(
        path: impl Into<PathBuf>,
        worker: u16,
        reply: UdpSocket,
        batch: usize,
    ) -> io::Result<Self> {
        let local_port = reply.local_addr()?.port();
        let batch = batch.clamp(1, 1024);
        Ok(SlowPathClient {
            path: path.into(),
            worker,
            local_port,
            sock: None,
            reply,
            next_attempt: Instant::now(),
            backoff: BACKOFF_MIN,
            out: vec![0u8; batch * MAX_MESSAGE].into_boxed_slice(),
            // SAFETY: iovec and mmsghdr are C structs for which all-zero bytes are valid.
            iov: (0..batch).map(|_| unsafe { mem::zeroed() }).collect(),
            // SAFETY: as above.
            hdr: (0..batch).map(|_| unsafe { mem::zeroed() }).collect(),
            inbuf: vec![0u8; MAX_MESSAGE + 1].into_boxed_slice(),
            down_ready: false,
            counters: SlowPathCounters::default(),
        })
    }

    /// Counters so far.
    pub fn counters(&self) -> SlowPathCounters {
        self.counters
    }

    /// True while connected to control.
    pub fn is_connected(&self) -> bool {
        self.sock.is_some()
    }

    /// The connection's fd (to wait for replies), if connected.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.sock.as_ref().map(|s| s.as_raw_fd())
    }

    /// The current connection as `(id, fd)`: `id` changes with every new connection (it is
    /// the `connects` counter), so a caller watching `fd` for readability knows when to watch
    /// a new one even if the kernel reused the fd number. `None` while disconnected.
    pub fn connection(&self) -> Option<(u64, RawFd)> {
        self.raw_fd().map(|fd| (self.counters.connects, fd))
    }

    /// When the next connection attempt is due, while disconnected (an event loop should not
    /// sleep past it).
    pub fn next_connect(&self) -> Option<Instant> {
        self.sock.is_none().then_some(self.next_attempt)
    }

    /// The connection became readable (an event loop saw it): the next
    /// [`pump_ready`](Self::pump_ready) reads control's replies.
    pub fn set_readable(&mut self) {
        self.down_ready = true;
    }

    /// True when replies may still be waiting without a new readiness event (a read stopped
    /// at its per-turn limit, or a fresh connection not read yet): the caller should turn
    /// again without blocking.
    pub fn read_pending(&self) -> bool {
        self.down_ready && self.sock.is_some()
    }

    fn try_connect(&mut self, now: Instant) {
        if self.sock.is_some() || now < self.next_attempt {
            return;
        }
        let attempt = || -> io::Result<Socket> {
            let s = seqpacket()?;
            s.set_nonblocking(true)?;
            s.connect(&SockAddr::unix(&self.path)?)?;
            let mut hello = [0u8; HEADER_LEN];
            let h = MsgHeader {
                kind: MsgKind::Hello,
                worker: self.worker,
                peer: None,
                local_port: self.local_port,
            };
            encode(&h, &[], &mut hello)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            s.send_with_flags(&hello, libc::MSG_NOSIGNAL)?;
            Ok(s)
        };
        match attempt() {
            Ok(s) => {
                tracing::info!(worker = self.worker, path = %self.path.display(), "slow path connected");
                self.sock = Some(s);
                self.backoff = BACKOFF_MIN;
                self.counters.connects += 1;
                // Replies may arrive before the caller watches the new fd.
                self.down_ready = true;
            }
            Err(e) => {
                tracing::debug!(worker = self.worker, error = %e, "slow path connect");
                self.next_attempt = now + self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    fn disconnect(&mut self, now: Instant, why: &io::Error) {
        tracing::warn!(worker = self.worker, error = %why, "slow path lost; reconnecting");
        self.sock = None;
        self.next_attempt = now;
        self.backoff = BACKOFF_MIN;
    }

    /// One turn: (re)connect if due, send the queued datagrams `up` (their `dst` is the peer
    /// they came from) to control, forward control's replies to peers. Clears `up`. Polls:
    /// always tries to read replies (one `recv` that usually finds nothing); an event loop
    /// that watches [`connection`](Self::connection) uses [`pump_ready`](Self::pump_ready).
    pub fn pump(&mut self, now: Instant, up: &mut TxQueue) {
        self.down_ready = true;
        self.pump_ready(now, up);
    }

    /// Like [`pump`](Self::pump), but reads control's replies only when they may be there:
    /// after [`set_readable`](Self::set_readable), on a new connection, or when the previous
    /// read stopped at its limit. Readiness is edge-style: once set, replies are read until
    /// the socket is empty, so every arrival after that raises a new event.
    pub fn pump_ready(&mut self, now: Instant, up: &mut TxQueue) {
        self.try_connect(now);
        self.send_up(now, up);
        up.clear();
        if self.down_ready {
            self.forward_down(now, &mut Down::Send);
        }
    }

    /// Like [`pump_ready`](Self::pump_ready), but control's replies are queued in `tx` (the
    /// worker's transmit queue, so they leave with the turn's batch, GSO included) instead of
    /// being sent one by one. Reading stops while `tx` is full; `down_ready` stays set, so
    /// the rest is read at the next turn (see [`read_pending`](Self::read_pending)).
    pub fn pump_into(&mut self, now: Instant, up: &mut TxQueue, tx: &mut TxQueue) {
        self.try_connect(now);
        self.send_up(now, up);
        up.clear();
        if self.down_ready {
            self.forward_down(now, &mut Down::Queue(tx));
        }
    }

    fn send_up(&mut self, now: Instant, up: &TxQueue) {
        if up.is_empty() {
            return;
        }
        let Some(fd) = self.raw_fd() else {
            self.counters.up_dropped += up.len() as u64;
            return;
        };
        let batch = self.hdr.len();
        let mut i = 0;
        while i < up.len() {
            let n = (up.len() - i).min(batch);
            for k in 0..n {
                let m = up.metas()[i + k];
                // The engine queues RTP here only as reports of unrouted publisher streams
                // (plain headers); peers' RTP and RTCP never go to control.
                let kind = match contract::wire::classify(up.datagram(i + k)) {
                    contract::wire::Kind::Rtp | contract::wire::Kind::Rtcp => MsgKind::StreamUp,
                    _ => MsgKind::DatagramUp,
                };
                let h = MsgHeader {
                    kind,
                    worker: self.worker,
                    peer: Some(m.dst),
                    local_port: self.local_port,
                };
                let slot = &mut self.out[k * MAX_MESSAGE..(k + 1) * MAX_MESSAGE];
                // Cannot fail: the slot holds MAX_MESSAGE bytes and TxQueue datagrams are at
                // most MAX_DATAGRAM; a failure would only cost this datagram.
                let len = encode(&h, up.datagram(i + k), slot).unwrap_or(0);
                self.iov[k] = libc::iovec {
                    iov_base: slot.as_mut_ptr().cast(),
                    iov_len: len,
                };
                // SAFETY: mmsghdr is a C struct for which all-zero bytes are valid.
                self.hdr[k] = unsafe { mem::zeroed() };
                self.hdr[k].msg_hdr.msg_iov = &mut self.iov[k];
                self.hdr[k].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: hdr[..n] point at iov[..n] and `out`, all owned by self and unmoved
            // during this synchronous call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdr.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                self.counters.up_dropped += (up.len() - i) as u64;
                if e.kind() != io::ErrorKind::WouldBlock {
                    self.disconnect(now, &e);
                }
                return;
            }
            self.counters.up_sent += r as u64;
            i += r as usize;
            if (r as usize) < n {
                // Control's receive queue is full: drop the rest of this turn's datagrams.
                self.counters.up_dropped += (up.len() - i) as u64;
                return;
            }
        }
    }

    /// Forward up to [`DOWN_PER_PUMP`] replies; `down_ready` stays set only when the limit
    /// (not an empty socket) ended the read.
    fn forward_down(&mut self, now: Instant, down: &mut Down<'_>) {
        for _ in 0..DOWN_PER_PUMP {
            if let Down::Queue(tx) = down {
                if tx.is_full() {
                    // Read no reply that could not be queued; the next turn goes on.
                    return;
                }
            }
            let Some(sock) = self.sock.as_ref() else {
                self.down_ready = false;
                return;
            };
            // SAFETY: `inbuf` is initialised memory; viewing it as MaybeUninit<u8> for the
            // read is sound (we never write uninitialised bytes into it).
            let buf = unsafe {
                std::slice::from_raw_parts_mut(
                    self.inbuf.as_mut_ptr().cast::<mem::MaybeUninit<u8>>(),
                    self.inbuf.len(),
                )
            };
            match sock.recv_with_flags(buf, libc::MSG_DONTWAIT) {
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "control closed the slow path",
                    );
                    self.disconnect(now, &e);
                    return;
                }
                Ok(n) => match decode(&self.inbuf[..n]) {
                    Ok((h, data)) if h.kind == MsgKind::DatagramDown => {
                        // decode guarantees a peer for datagram kinds.
                        let Some(peer) = h.peer else { continue };
                        let sent = match down {
                            // The backend maps an IPv4 peer for an IPv6 socket itself.
                            Down::Queue(tx) => tx.push(peer, data),
                            Down::Send => self.send_reply(peer, data),
                        };
                        if sent {
                            self.counters.down_sent += 1;
                        } else {
                            self.counters.down_dropped += 1;
                        }
                    }
                    Ok(_) => self.counters.down_dropped += 1,
                    Err(e) => {
                        tracing::debug!(error = %e, "bad slow path message from control");
                        self.counters.down_dropped += 1;
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.down_ready = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.disconnect(now, &e);
                    return;
                }
            }
        }
    }

    /// Send one reply from the duplicate of the media socket ([`pump`](Self::pump)).
    fn send_reply(&self, peer: SocketAddr, data: &[u8]) -> bool {
        let peer = match (peer, self.reply_is_v6()) {
            (SocketAddr::V4(a), true) => SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port()),
            (p, _) => p,
        };
        match self.reply.send_to(data, peer) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(error = %e, "slow path reply send");
                false
            }
        }
    }

    fn reply_is_v6(&self) -> bool {
        self.reply
            .local_addr()
            .map(|a| a.is_ipv6())
            .unwrap_or(false)
    }
}
