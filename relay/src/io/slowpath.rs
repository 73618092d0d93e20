//! The slow-path channel between relay and control (design.md "Slow-path datagrams").
//!
//! STUN, DTLS and datagrams from unknown sources go from a relay worker to control, and
//! control's replies come back to leave from the relay's media port. Transport: a
//! `SOCK_SEQPACKET` unix socket (message boundaries kept, reliable, ordered); control listens
//! ([`SlowPathServer`]), each relay worker connects ([`SlowPathClient`]).
//!
//! Message = a 28-byte header followed by the datagram bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version ([`VERSION`]) |
//! | 1 | 1 | kind: 1 hello, 2 datagram-up (relay → control), 3 datagram-down (control → relay) |
//! | 2 | 2 | worker id (big endian) |
//! | 4 | 1 | peer address family: 4, 6, or 0 (hello only) |
//! | 5 | 1 | reserved, 0 |
//! | 6 | 2 | peer port (big endian) |
//! | 8 | 2 | relay local port (big endian) |
//! | 10 | 2 | reserved, 0 |
//! | 12 | 16 | peer IP (IPv4 in the first 4 bytes, the rest 0) |
//!
//! A hello (no peer, no payload) is the first message of every client connection. Decoding a
//! malformed message is a [`DecodeError`], never a panic.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use super::normalize_addr;
use crate::batch::{TxQueue, MAX_DATAGRAM};

/// Protocol version in every header.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 28;
/// Largest message: header plus [`MAX_DATAGRAM`].
pub const MAX_MESSAGE: usize = HEADER_LEN + MAX_DATAGRAM;

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgKind {
    /// First message of a connection: who is talking (worker id, local port).
    Hello = 1,
    /// A datagram the relay received from `peer`, for control.
    DatagramUp = 2,
    /// A datagram control wants sent to `peer` from the relay's port.
    DatagramDown = 3,
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgHeader {
    pub kind: MsgKind,
    pub worker: u16,
    /// The remote peer (absent only in a hello).
    pub peer: Option<SocketAddr>,
    /// The relay's UDP port the datagram arrived on / should leave from.
    pub local_port: u16,
}

/// Why a message could not be decoded (or encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("slow-path message too short: {0} bytes, header is 28")]
    Short(usize),
    #[error("slow-path message version {0}, expected 1")]
    Version(u8),
    #[error("unknown slow-path message kind {0}")]
    Kind(u8),
    #[error("bad peer address family {0}")]
    Family(u8),
    #[error("datagram message without a peer address")]
    MissingPeer,
    #[error("slow-path payload of {0} bytes exceeds the 2048-byte datagram limit")]
    TooLong(usize),
    #[error("reserved header bytes are not zero")]
    Reserved,
    #[error("output buffer too small")]
    NoRoom,
}

/// Write header + payload into `out`; returns the message length.
pub fn encode(h: &MsgHeader, payload: &[u8], out: &mut [u8]) -> Result<usize, DecodeError> {
    if payload.len() > MAX_DATAGRAM {
        return Err(DecodeError::TooLong(payload.len()));
    }
    let total = HEADER_LEN + payload.len();
    if out.len() < total {
        return Err(DecodeError::NoRoom);
    }
    if h.kind != MsgKind::Hello && h.peer.is_none() {
        return Err(DecodeError::MissingPeer);
    }
    let hdr = &mut out[..HEADER_LEN];
    hdr.fill(0);
    hdr[0] = VERSION;
    hdr[1] = h.kind as u8;
    hdr[2..4].copy_from_slice(&h.worker.to_be_bytes());
    hdr[8..10].copy_from_slice(&h.local_port.to_be_bytes());
    if let Some(peer) = h.peer.map(normalize_addr) {
        hdr[6..8].copy_from_slice(&peer.port().to_be_bytes());
        match peer.ip() {
            IpAddr::V4(ip) => {
                hdr[4] = 4;
                hdr[12..16].copy_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                hdr[4] = 6;
                hdr[12..28].copy_from_slice(&ip.octets());
            }
        }
    }
    out[HEADER_LEN..total].copy_from_slice(payload);
    Ok(total)
}

/// Parse one message into its header and payload.
pub fn decode(msg: &[u8]) -> Result<(MsgHeader, &[u8]), DecodeError> {
    if msg.len() < HEADER_LEN {
        return Err(DecodeError::Short(msg.len()));
    }
    if msg[0] != VERSION {
        return Err(DecodeError::Version(msg[0]));
    }
    let kind = match msg[1] {
        1 => MsgKind::Hello,
        2 => MsgKind::DatagramUp,
        3 => MsgKind::DatagramDown,
        k => return Err(DecodeError::Kind(k)),
    };
    if msg[5] != 0 || msg[10] != 0 || msg[11] != 0 {
        return Err(DecodeError::Reserved);
    }
    let worker = u16::from_be_bytes([msg[2], msg[3]]);
    let port = u16::from_be_bytes([msg[6], msg[7]]);
    let local_port = u16::from_be_bytes([msg[8], msg[9]]);
    let peer = match msg[4] {
        0 => None,
        4 => {
            if msg[16..28].iter().any(|&b| b != 0) {
                return Err(DecodeError::Reserved);
            }
            let ip = Ipv4Addr::new(msg[12], msg[13], msg[14], msg[15]);
            Some(SocketAddr::new(ip.into(), port))
        }
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&msg[12..28]);
            Some(normalize_addr(SocketAddr::new(
                Ipv6Addr::from(o).into(),
                port,
            )))
        }
        f => return Err(DecodeError::Family(f)),
    };
    if kind != MsgKind::Hello && peer.is_none() {
        return Err(DecodeError::MissingPeer);
    }
    let payload = &msg[HEADER_LEN..];
    if payload.len() > MAX_DATAGRAM {
        return Err(DecodeError::TooLong(payload.len()));
    }
    Ok((
        MsgHeader {
            kind,
            worker,
            peer,
            local_port,
        },
        payload,
    ))
}

/// Errors of a slow-path connection.
#[derive(Debug, thiserror::Error)]
pub enum SlowPathError {
    #[error("slow-path socket: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

fn seqpacket() -> io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::SEQPACKET, None)
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
/// sent to peers through a duplicate of the worker's UDP socket (same local port). When
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
            self.forward_down(now);
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
                let h = MsgHeader {
                    kind: MsgKind::DatagramUp,
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
    fn forward_down(&mut self, now: Instant) {
        for _ in 0..DOWN_PER_PUMP {
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
                        let peer = match (peer, self.reply_is_v6()) {
                            (SocketAddr::V4(a), true) => {
                                SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port())
                            }
                            (p, _) => p,
                        };
                        match self.reply.send_to(data, peer) {
                            Ok(_) => self.counters.down_sent += 1,
                            Err(e) => {
                                tracing::debug!(error = %e, "slow path reply send");
                                self.counters.down_dropped += 1;
                            }
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

    fn reply_is_v6(&self) -> bool {
        self.reply
            .local_addr()
            .map(|a| a.is_ipv6())
            .unwrap_or(false)
    }
}

/// The control end: a listening `SOCK_SEQPACKET` socket at a path.
pub struct SlowPathServer {
    listener: Socket,
    path: PathBuf,
}

impl SlowPathServer {
    /// Listen at `path` (a stale socket file left by a previous run is removed first).
    pub fn bind(path: impl AsRef<Path>) -> io::Result<SlowPathServer> {
        let path = path.as_ref().to_path_buf();
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = seqpacket()?;
        listener.bind(&SockAddr::unix(&path)?)?;
        listener.listen(64)?;
        Ok(SlowPathServer { listener, path })
    }

    /// Wait for (or, when nonblocking, poll for) one relay worker's connection.
    pub fn accept(&self) -> io::Result<SlowPathConn> {
        let (sock, _) = self.listener.accept()?;
        Ok(SlowPathConn {
            sock,
            worker: None,
            local_port: None,
        })
    }

    /// Make `accept` nonblocking (WouldBlock when no relay is waiting).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.listener.set_nonblocking(nonblocking)
    }

    /// The listening fd, for an event loop.
    pub fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SlowPathServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A datagram a relay worker passed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpDatagram<'a> {
    pub peer: SocketAddr,
    pub worker: u16,
    pub local_port: u16,
    pub data: &'a [u8],
}

/// Control's side of one relay worker's connection.
pub struct SlowPathConn {
    sock: Socket,
    worker: Option<u16>,
    local_port: Option<u16>,
}

impl SlowPathConn {
    /// Worker id from the hello, once seen.
    pub fn worker(&self) -> Option<u16> {
        self.worker
    }

    /// Relay port from the hello, once seen.
    pub fn local_port(&self) -> Option<u16> {
        self.local_port
    }

    /// Receive the next datagram (hellos are absorbed). `Ok(None)`: the relay closed.
    /// `buf` should hold [`MAX_MESSAGE`] bytes; a malformed message is a `Decode` error and
    /// the connection stays usable.
    pub fn recv<'b>(&mut self, buf: &'b mut [u8]) -> Result<Option<UpDatagram<'b>>, SlowPathError> {
        let n = loop {
            // SAFETY: `buf` is initialised; reading into it as MaybeUninit is sound.
            let raw = unsafe {
                std::slice::from_raw_parts_mut(
                    buf.as_mut_ptr().cast::<mem::MaybeUninit<u8>>(),
                    buf.len(),
                )
            };
            let n = self.sock.recv(raw)?;
            if n == 0 {
                return Ok(None);
            }
            let (h, _) = decode(&buf[..n])?;
            match h.kind {
                MsgKind::Hello => {
                    self.worker = Some(h.worker);
                    self.local_port = Some(h.local_port);
                }
                MsgKind::DatagramUp => break n,
                MsgKind::DatagramDown => {
                    return Err(DecodeError::Kind(MsgKind::DatagramDown as u8).into())
                }
            }
        };
        let (h, data) = decode(&buf[..n])?;
        Ok(Some(UpDatagram {
            // decode guarantees a peer for datagram kinds
            peer: h.peer.ok_or(DecodeError::MissingPeer)?,
            worker: h.worker,
            local_port: h.local_port,
            data,
        }))
    }

    /// Ask the relay to send `data` to `peer` from its media port.
    pub fn send_down(&self, peer: SocketAddr, data: &[u8]) -> Result<(), SlowPathError> {
        let mut msg = [0u8; MAX_MESSAGE];
        let h = MsgHeader {
            kind: MsgKind::DatagramDown,
            worker: self.worker.unwrap_or(0),
            peer: Some(peer),
            local_port: self.local_port.unwrap_or(0),
        };
        let n = encode(&h, data, &mut msg)?;
        self.sock.send_with_flags(&msg[..n], libc::MSG_NOSIGNAL)?;
        Ok(())
    }

    /// Bound blocking receives (None = block forever).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(t)
    }

    /// Switch the connection to nonblocking mode.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.sock.set_nonblocking(nonblocking)
    }

    /// The connection fd, for an event loop.
    pub fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors() {
        let mut buf = [0u8; MAX_MESSAGE];
        for peer in ["192.0.2.1:4000", "[2001:db8::7]:5", "[::ffff:10.0.0.1]:9"] {
            let peer: SocketAddr = peer.parse().unwrap();
            let h = MsgHeader {
                kind: MsgKind::DatagramUp,
                worker: 3,
                peer: Some(peer),
                local_port: 3478,
            };
            let n = encode(&h, b"stun", &mut buf).unwrap();
            let (d, p) = decode(&buf[..n]).unwrap();
            assert_eq!(d.peer, Some(normalize_addr(peer)));
            assert_eq!(
                (d.worker, d.local_port, d.kind, p),
                (3, 3478, MsgKind::DatagramUp, &b"stun"[..])
            );
        }
        assert_eq!(decode(&buf[..5]), Err(DecodeError::Short(5)));
        let mut bad = buf;
        bad[0] = 9;
        assert_eq!(decode(&bad[..28]), Err(DecodeError::Version(9)));
        let mut bad = buf;
        bad[1] = 7;
        assert_eq!(decode(&bad[..28]), Err(DecodeError::Kind(7)));
        let mut bad = buf;
        bad[4] = 5;
        assert_eq!(decode(&bad[..28]), Err(DecodeError::Family(5)));
        let mut bad = buf;
        bad[4] = 0;
        assert_eq!(decode(&bad[..28]), Err(DecodeError::MissingPeer));
        let big = vec![0u8; MAX_MESSAGE + 1];
        let mut big2 = big.clone();
        big2[..28].copy_from_slice(&buf[..28]);
        assert_eq!(decode(&big2), Err(DecodeError::TooLong(MAX_DATAGRAM + 1)));
    }
}
