//! The portable backend: mio readiness, `recvmmsg` and `sendmmsg` batches, UDP GSO for runs.
//!
//! Receive: one `epoll_wait` only when the previous `recvmmsg` emptied the socket (epoll is
//! edge-triggered, and every new datagram raises a new edge), then one `recvmmsg` of up to a
//! batch. Send: one `sendmmsg` per flush (more only after a partial send).
//!
//! A second fd (the slow-path connection, [`Backend::watch_readable`]) joins the same epoll
//! set, so its readiness wakes `wait` without a syscall of its own. While the UDP socket stays
//! readable `epoll_wait` is skipped; then every [`AUX_EVERY`]th turn polls with a zero timeout
//! so the other fd is not starved under sustained load.

use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::sys::{sockaddr_to_std, TxPlan};
use super::tcp::TcpRole;
use super::{Backend, BackendParams, IoCounters, IoError, RunningBackend};
use crate::batch::TxQueue;

/// Token of the media socket in the epoll set.
const MEDIA: Token = Token(0);
/// Token of the watched fd ([`Backend::watch_readable`]).
const AUX: Token = Token(1);
/// Token of the ICE-TCP side's own epoll set ([`super::tcp::TcpSide::fd`]).
const TCP: Token = Token(2);
/// While the media socket stays readable, look at the watched fd every this many turns.
const AUX_EVERY: u32 = 32;

/// mio + recvmmsg/sendmmsg backend for one worker socket.
pub struct MmsgBackend {
    sock: UdpSocket,
    fd: RawFd,
    v6: bool,
    poll: Poll,
    /// A dup of `sock` registered with mio (mio needs an owned source).
    watched: mio::net::UdpSocket,
    events: Events,
    /// The socket may still hold datagrams (skip `epoll_wait`).
    readable: bool,
    /// The watched fd, if any, and whether it signalled readability.
    aux: Option<RawFd>,
    aux_ready: bool,
    /// Turns `epoll_wait` was skipped since the last one.
    skipped: u32,
    batch: usize,
    /// Bytes per receive buffer ([`BackendParams::datagram_size`]).
    stride: usize,
    rx_data: Box<[u8]>,
    rx_iov: Box<[libc::iovec]>,
    rx_addr: Box<[libc::sockaddr_storage]>,
    rx_hdr: Box<[libc::mmsghdr]>,
    /// Received by the last `recvmmsg` and not yet handed over: `rx_hdr[rx_next..rx_count]`
    /// (a drain stops at a full transmit queue and the next one goes on here).
    rx_next: usize,
    rx_count: usize,
    tx: TxQueue,
    plan: TxPlan,
    tx_hdr: Box<[libc::mmsghdr]>,
    gso: bool,
    counters: IoCounters,
    /// Passive ICE-TCP ([`MmsgBackend::attach_tcp`]) and whether its fd signalled.
    tcp: Option<TcpRole>,
    tcp_signalled: bool,
}

impl MmsgBackend {
    /// Wrap a nonblocking UDP socket (from [`super::bind_udp`]).
    pub fn new(sock: UdpSocket, params: BackendParams) -> Result<MmsgBackend, IoError> {
        let fd = sock.as_raw_fd();
        let v6 = sock
            .local_addr()
            .map_err(|e| IoError::os("getsockname", e))?
            .is_ipv6();
        let poll = Poll::new().map_err(|e| IoError::os("epoll_create", e))?;
        let dup = sock
            .try_clone()
            .map_err(|e| IoError::os("dup(media socket)", e))?;
        let mut watched = mio::net::UdpSocket::from_std(dup);
        poll.registry()
            .register(&mut watched, MEDIA, Interest::READABLE)
            .map_err(|e| IoError::os("epoll_ctl(ADD)", e))?;
        let batch = params.batch.clamp(1, 1024);
        let cap = params.tx_capacity.max(1);
        let stride = params.datagram_size();
        let mut b = MmsgBackend {
            sock,
            fd,
            v6,
            poll,
            watched,
            events: Events::with_capacity(4),
            readable: true,
            aux: None,
            aux_ready: false,
            skipped: 0,
            batch,
            stride,
            rx_data: vec![0u8; batch * stride].into_boxed_slice(),
            // SAFETY: iovec, sockaddr_storage and mmsghdr are C structs for which all-zero
            // bytes are valid (null pointers, zero lengths).
            rx_iov: (0..batch).map(|_| unsafe { mem::zeroed() }).collect(),
            // SAFETY: as above.
            rx_addr: (0..batch).map(|_| unsafe { mem::zeroed() }).collect(),
            // SAFETY: as above.
            rx_hdr: (0..batch).map(|_| unsafe { mem::zeroed() }).collect(),
            rx_next: 0,
            rx_count: 0,
            tx: TxQueue::new(cap, stride),
            plan: TxPlan::new(cap),
            // SAFETY: as above.
            tx_hdr: (0..cap).map(|_| unsafe { mem::zeroed() }).collect(),
            gso: super::gso_supported(),
            counters: IoCounters::default(),
            tcp: None,
            tcp_signalled: false,
        };
        // Point each receive header at its buffer and address slot. The boxed slices are
        // never resized, so these pointers stay valid for the backend's lifetime.
        for i in 0..batch {
            b.rx_iov[i] = libc::iovec {
                iov_base: b.rx_data[i * stride..].as_mut_ptr().cast(),
                iov_len: stride,
            };
            let h = &mut b.rx_hdr[i].msg_hdr;
            h.msg_name = (&mut b.rx_addr[i] as *mut libc::sockaddr_storage).cast();
            h.msg_iov = &mut b.rx_iov[i];
            h.msg_iovlen = 1;
        }
        Ok(b)
    }

    /// Also carry passive ICE-TCP: the owner's epoll set joins the readiness set (its
    /// connections' frames are drained before the UDP datagrams and datagrams queued for
    /// them are written to them framed); a forwarder hands datagrams for TCP peers to the
    /// owner at each flush.
    pub fn attach_tcp(&mut self, role: TcpRole) -> Result<(), IoError> {
        if let Some(fd) = role.fd() {
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), TCP, Interest::READABLE)
                .map_err(|e| IoError::os("epoll_ctl(ADD, ICE-TCP)", e))?;
        }
        self.tcp = Some(role);
        Ok(())
    }

    /// Open ICE-TCP connections.
    pub fn tcp_connections(&self) -> usize {
        self.tcp.as_ref().map_or(0, TcpRole::connections)
    }

    /// The socket this backend drives.
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// The epoll fd: readable when the socket or the watched fd has an event, so another
    /// backend can block on it beside its own fds and then call [`Backend::wait`] with a zero
    /// timeout.
    pub(crate) fn poll_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }

    /// True when the socket may still hold datagrams or some were received and not yet
    /// handed over ([`Backend::wait`] then returns without a syscall).
    pub(crate) fn pending(&self) -> bool {
        self.readable || self.rx_next < self.rx_count
    }

    fn recv_batch(&mut self, max: usize) -> usize {
        let n = max.min(self.batch);
        for h in &mut self.rx_hdr[..n] {
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        self.counters.syscalls += 1;
        // SAFETY: rx_hdr[..n] point at live buffers owned by self (set up in `new`); the
        // kernel writes at most iov_len bytes and msg_namelen address bytes into each.
        let r = unsafe {
            libc::recvmmsg(
                self.fd,
                self.rx_hdr.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                self.counters.rx_errors += 1;
                tracing::debug!(error = %e, "recvmmsg");
            }
            self.readable = false;
            return 0;
        }
        let r = r as usize;
        if r < n {
            self.readable = false;
        }
        r
    }

    /// Send everything queued (grouped into GSO trains per destination, see [`TxPlan`]); on
    /// a GSO refusal switch GSO off and resend the rest singly.
    fn send_all(&mut self) {
        self.counters.tx_unroutable += self.plan.build(&self.tx, self.gso, self.v6);
        let mut off = 0usize;
        let mut n = self.plan.len;
        for (h, s) in self.tx_hdr.iter_mut().zip(&self.plan.slots[..n]) {
            h.msg_hdr = s.hdr;
            h.msg_len = 0;
        }
        while off < n {
            self.counters.syscalls += 1;
            // SAFETY: tx_hdr[off..n] describe plan slots, iovecs and arena bytes that stay
            // alive and unmoved for the duration of this synchronous call.
            let r = unsafe {
                libc::sendmmsg(
                    self.fd,
                    self.tx_hdr[off..].as_mut_ptr(),
                    (n - off) as libc::c_uint,
                    0,
                )
            };
            if r > 0 {
                for s in &self.plan.slots[off..off + r as usize] {
                    self.counters.tx_packets += s.segs as u64;
                    self.counters.tx_bytes += s.bytes as u64;
                    if s.segs > 1 {
                        self.counters.tx_gso_trains += 1;
                    }
                }
                off += r as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            let slot = &self.plan.slots[off];
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => {
                    // Socket buffer full: drop the rest of this batch (UDP semantics).
                    let lost: u64 = self.plan.slots[off..n].iter().map(|s| s.segs as u64).sum();
                    self.counters.tx_errors += lost;
                    off = n;
                }
                Some(libc::EIO) | Some(libc::EINVAL) if slot.segs > 1 && self.gso => {
                    tracing::warn!(error = %e, "UDP GSO refused; sending datagrams singly from now on");
                    self.gso = false;
                    // Cut the same (grouped) order singly and resume at the refused
                    // train's first datagram (slots carry their position in the order).
                    let from = slot.first;
                    self.plan.cut(&self.tx, false, self.v6);
                    n = self.plan.len;
                    for (h, s) in self.tx_hdr.iter_mut().zip(&self.plan.slots[..n]) {
                        h.msg_hdr = s.hdr;
                        h.msg_len = 0;
                    }
                    off = self.plan.slots[..n]
                        .iter()
                        .position(|s| s.first >= from)
                        .unwrap_or(n);
                }
                _ => {
                    tracing::debug!(error = %e, "sendmmsg");
                    self.counters.tx_errors += slot.segs as u64;
                    off += 1;
                }
            }
        }
        self.tx.clear();
    }
}

impl Backend for MmsgBackend {
    fn kind(&self) -> RunningBackend {
        RunningBackend::Mmsg
    }

    fn wait(&mut self, mut timeout: Duration) -> Result<(), IoError> {
        if self.readable || self.rx_next < self.rx_count {
            self.skipped += 1;
            let tcp_fd = self.tcp.as_ref().and_then(TcpRole::fd);
            if (self.aux.is_none() && tcp_fd.is_none()) || self.skipped < AUX_EVERY {
                return Ok(());
            }
            timeout = Duration::ZERO;
        }
        if self.tcp.as_ref().is_some_and(TcpRole::has_work) {
            timeout = Duration::ZERO;
        }
        self.skipped = 0;
        self.counters.syscalls += 1;
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {
                for ev in self.events.iter() {
                    match ev.token() {
                        MEDIA => self.readable = true,
                        AUX => self.aux_ready = true,
                        TCP => self.tcp_signalled = true,
                        Token(_) => {}
                    }
                }
                if let Some(t) = self.tcp.as_mut() {
                    t.service(mem::take(&mut self.tcp_signalled), &mut self.counters);
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(IoError::os("epoll_wait", e)),
        }
    }

    fn drain<F>(&mut self, max: usize, mut f: F) -> usize
    where
        F: FnMut(SocketAddr, &mut [u8], usize, &mut TxQueue),
    {
        if max == 0 {
            return 0;
        }
        let mut handed = 0;
        if let Some(tcp) = self.tcp.as_mut() {
            handed += tcp.drain(max, &mut self.tx, &mut self.counters, &mut f);
        }
        if self.rx_next == self.rx_count {
            if !self.readable || handed >= max {
                return handed;
            }
            self.rx_count = self.recv_batch(max - handed);
            self.rx_next = 0;
        }
        // A full transmit queue ends the drain: the caller flushes it and drains again.
        while self.rx_next < self.rx_count && handed < max && !self.tx.is_full() {
            let i = self.rx_next;
            self.rx_next += 1;
            let h = &self.rx_hdr[i];
            let len = h.msg_len as usize;
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.counters.rx_oversized += 1;
                continue;
            }
            // SAFETY: the kernel wrote msg_namelen bytes of address into rx_addr[i].
            let src = unsafe {
                sockaddr_to_std(
                    (&self.rx_addr[i] as *const libc::sockaddr_storage).cast(),
                    h.msg_hdr.msg_namelen as usize,
                )
            };
            let Some(src) = src else {
                self.counters.rx_errors += 1;
                continue;
            };
            self.counters.rx_packets += 1;
            self.counters.rx_bytes += len as u64;
            let buf = &mut self.rx_data[i * self.stride..(i + 1) * self.stride];
            f(src, buf, len, &mut self.tx);
            handed += 1;
        }
        handed
    }

    fn tx(&mut self) -> &mut TxQueue {
        &mut self.tx
    }

    fn flush(&mut self) -> Result<(), IoError> {
        if let Some(tcp) = self.tcp.as_mut() {
            tcp.route(&mut self.tx, &mut self.counters);
        }
        if !self.tx.is_empty() {
            self.send_all();
        }
        Ok(())
    }

    fn counters(&self) -> &IoCounters {
        &self.counters
    }

    fn shutdown(&mut self) {
        // Synchronous syscalls only: nothing of ours is referenced by the kernel.
        let _ = self.poll.registry().deregister(&mut self.watched);
        let _ = self.watch_readable(None);
    }

    fn watch_readable(&mut self, fd: Option<RawFd>) -> Result<(), IoError> {
        if let Some(old) = self.aux.take() {
            // Fails harmlessly (ENOENT/EBADF) when the fd was closed already: closing its
            // last reference removed it from the epoll set.
            let _ = self.poll.registry().deregister(&mut SourceFd(&old));
        }
        if let Some(fd) = fd {
            // Edge-triggered (mio): registering an fd that is readable already reports it.
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), AUX, Interest::READABLE)
                .map_err(|e| IoError::os("epoll_ctl(ADD, slow path)", e))?;
            self.aux = Some(fd);
        }
        Ok(())
    }

    fn take_readable(&mut self) -> bool {
        mem::take(&mut self.aux_ready)
    }
    fn take_tcp(&mut self) -> Option<TcpRole> {
        self.tcp.take()
    }
}
