//! Passive ICE-TCP (RFC 6544) with RFC 4571 framing, terminated in a worker.
//!
//! Each worker owns a TCP listener on the relay's TCP port (SO_REUSEPORT, so the kernel
//! spreads connections over the workers as it spreads UDP peers) and the connections it
//! accepted. A connection's frames are handed to the engine exactly like UDP datagrams, with
//! the connection's peer key as the source: its remote address marked as ICE-TCP
//! ([`contract::wire::tcp_peer`]), so a peer's UDP address and its TCP connection never share
//! a key even when IP and port match. A datagram the engine queues for a key that names one
//! of this worker's connections is written to it framed instead of sent as UDP
//! ([`TcpSide::take_frames`]); one for a closed connection's key is unroutable as UDP.
//!
//! Bounds, all fixed per connection: one receive buffer of `2 + max_datagram` bytes (at
//! accept) and one send remainder of the same size (at the first partial write), at most `max_connections` connections per
//! worker. A frame announcing more than `max_datagram` bytes closes the connection. A first
//! frame that is no STUN binding request closes it; so does a connection the engine has not
//! answered a binding request on (a success response written to it) within the handshake
//! timeout. A frame that finds the connection's send buffer full is dropped (counted) and a
//! connection that keeps its buffer full for [`SLOW_READER_DROPS`] frames in a row is closed.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use contract::wire::tcp_peer;

use super::{IoCounters, IoError};
use crate::batch::TxQueue;

/// Frames dropped in a row on a full send buffer before the connection is closed.
pub const SLOW_READER_DROPS: u32 = 256;

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

/// A worker's ICE-TCP listener and connections. The owner (a backend) registers the fds it
/// is told about in its readiness set with the token [`TcpSide::token_of`] gives, and calls
/// [`on_event`](Self::on_event) for their events.
pub struct TcpSide {
    listener: TcpListener,
    params: TcpParams,
    max_frame: usize,
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
    /// Accepted connections the owner must register: (fd, slot).
    changes: Vec<(RawFd, usize)>,
}

impl TcpSide {
    /// A side on `listener` (from [`bind_listener`]) taking frames up to `max_frame` bytes.
    pub fn new(listener: TcpListener, params: TcpParams, max_frame: usize) -> TcpSide {
        let cap = params.max_connections.max(1);
        TcpSide {
            listener,
            params,
            max_frame,
            conns: Vec::new(),
            free: Vec::new(),
            by_peer: HashMap::new(),
            deadlines: VecDeque::new(),
            ready: VecDeque::new(),
            listener_ready: true,
            scratch: vec![0u8; max_frame.max(crate::batch::MAX_DATAGRAM)].into_boxed_slice(),
            generation: 0,
            changes: Vec::with_capacity(cap.min(1024)),
        }
    }

    /// The listener's fd (register it readable).
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
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

    /// Connections accepted since the last call: `(fd, slot)`; the owner registers the fd
    /// (readable and writable, edge-triggered). A closed fd leaves the set by itself.
    pub fn take_accepted(&mut self, mut f: impl FnMut(RawFd, usize)) {
        for (fd, slot) in self.changes.drain(..) {
            f(fd, slot);
        }
    }

    /// The listener became readable.
    pub fn on_listener_event(&mut self) {
        self.listener_ready = true;
    }

    /// Connection `slot` became readable and/or writable.
    pub fn on_event(&mut self, slot: usize, readable: bool, writable: bool, c: &mut IoCounters) {
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

    /// True when frames or connections may be waiting.
    pub fn has_work(&self) -> bool {
        self.listener_ready || !self.ready.is_empty()
    }

    /// Accept pending connections and close those past their handshake deadline.
    pub fn maintain(&mut self, now: Instant, c: &mut IoCounters) {
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
        if !self.listener_ready {
            return;
        }
        loop {
            match self.listener.accept() {
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
        self.generation = self.generation.wrapping_add(1);
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
            generation: self.generation,
            readable: true,
            stream,
        };
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
        self.by_peer.insert(peer, slot);
        self.deadlines
            .push_back((now + self.params.handshake_timeout, slot, self.generation));
        self.ready.push_back(slot);
        self.changes.push((fd, slot));
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
    /// it and remove it from `tx` (the rest leave as UDP).
    pub fn take_frames(&mut self, tx: &mut TxQueue, c: &mut IoCounters) {
        if self.by_peer.is_empty() {
            return;
        }
        let mut slow = 0usize;
        let mut slow_slots = [0usize; 8];
        tx.retain(|m, data| {
            let Some(&slot) = self.by_peer.get(&m.dst) else {
                return true;
            };
            if let Some(conn) = self.conns[slot].as_mut() {
                if write_frame(conn, data, c) == Written::SlowReader && slow < slow_slots.len() {
                    slow_slots[slow] = slot;
                    slow += 1;
                }
            }
            false
        });
        for &slot in &slow_slots[..slow] {
            self.close(slot, Close::SlowReader, c);
        }
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

/// Write one frame (length prefix and `data`) to `conn`, keeping a partially written tail.
fn write_frame(conn: &mut Conn, data: &[u8], c: &mut IoCounters) -> Written {
    if is_binding_success(data) {
        conn.answered = true;
    }
    if conn.tx_off < conn.tx_end {
        // Finish the previous frame first, or the stream loses its framing.
        match send(&conn.stream, &[&conn.tx_buf[conn.tx_off..conn.tx_end]]) {
            Ok(n) => conn.tx_off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Written::Dropped,
        }
        if conn.tx_off < conn.tx_end {
            return dropped(conn, c);
        }
    }
    let Ok(len) = u16::try_from(data.len()) else {
        c.tcp_tx_dropped += 1;
        return Written::Dropped;
    };
    let head = len.to_be_bytes();
    match send(&conn.stream, &[&head, data]) {
        Ok(n) if n == data.len() + 2 => {
            c.tcp_tx_frames += 1;
            c.tx_bytes += data.len() as u64;
            conn.dropped_in_row = 0;
            Written::Ok
        }
        Ok(n) => {
            // Keep the tail: it goes out before anything else on this connection.
            let total = data.len() + 2;
            if conn.tx_buf.len() < total {
                conn.tx_buf = vec![0u8; conn.rx.max_frame() + 2].into_boxed_slice();
            }
            conn.tx_buf[..2].copy_from_slice(&head);
            conn.tx_buf[2..total].copy_from_slice(data);
            conn.tx_off = n;
            conn.tx_end = total;
            c.tcp_tx_frames += 1;
            c.tx_bytes += data.len() as u64;
            Written::Ok
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => dropped(conn, c),
        Err(_) => {
            c.tcp_tx_dropped += 1;
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

/// One nonblocking `sendmsg` of `parts` (no SIGPIPE).
fn send(stream: &TcpStream, parts: &[&[u8]]) -> io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 2];
    let n = parts.len().min(2);
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
}
