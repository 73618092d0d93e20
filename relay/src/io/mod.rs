//! Socket I/O: the io_uring and mmsg backends, socket setup and the slow-path channel.
//!
//! Owns: every syscall of the data plane and all `unsafe` of the packet path (each block has a
//! `// SAFETY:` comment). Two backends sit behind one small interface, [`Backend`]:
//! - [`uring::UringBackend`]: multishot `RecvMsgMulti` into a provided-buffer ring, batched
//!   `SendMsg` SQEs (UDP GSO for runs), one `io_uring_enter` per loop turn;
//! - [`mmsg::MmsgBackend`]: mio readiness + `recvmmsg`/`sendmmsg` batches (UDP GSO as well);
//! - [`xdp::XdpBackend`]: AF_XDP rings fed by an XDP program on the interface, headers built
//!   here, with the mmsg backend on the same socket as its kernel path.
//!
//! [`slowpath`] carries STUN/DTLS/unknown-source datagrams between relay and control over a
//! `SOCK_SEQPACKET` unix socket.
//!
//! May not touch: packet contents (the engine's job), the clock (the worker reads it), shared
//! memory. Nothing here allocates per packet.
#![allow(unsafe_code)]

mod counters;
pub mod handover;
pub mod mmsg;
pub mod slowpath;
pub mod tcp;
pub mod uring;
pub mod xdp;
pub mod xdp_bpf;
pub mod xdp_route;

mod sys;

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::RawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::batch::TxQueue;

pub use counters::{IoCounters, SharedCounters};
pub use sys::gso_supported;

pub use contract::config::{Backend as BackendChoice, UnknownBackend};

/// The backend a worker actually runs: the configured [`BackendChoice`] with `auto` resolved
/// ([`resolve_backend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunningBackend {
    /// Multishot receive into a provided-buffer ring ([`uring::UringBackend`]).
    IoUring,
    /// mio + recvmmsg/sendmmsg ([`mmsg::MmsgBackend`]).
    Mmsg,
    /// AF_XDP sockets fed by an XDP program ([`xdp::XdpBackend`]).
    Xdp,
}

impl RunningBackend {
    /// The configuration spelling: `io_uring` or `mmsg`.
    pub fn as_str(self) -> &'static str {
        BackendChoice::from(self).name()
    }
}

impl fmt::Display for RunningBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<RunningBackend> for BackendChoice {
    fn from(b: RunningBackend) -> BackendChoice {
        match b {
            RunningBackend::IoUring => BackendChoice::IoUring,
            RunningBackend::Mmsg => BackendChoice::Mmsg,
            RunningBackend::Xdp => BackendChoice::Xdp,
        }
    }
}

/// Errors of the I/O layer.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The kernel (or a sandbox) refused io_uring or one of the features we need
    /// (provided-buffer rings, multishot receive). `auto` falls back to mmsg on this.
    #[error("io_uring unavailable: {0}")]
    UringRefused(String),
    /// The xdp backend cannot run here: missing capabilities (CAP_NET_ADMIN, CAP_NET_RAW,
    /// CAP_BPF), no
    /// AF_XDP or BPF in the kernel, or a `relay.bind` it cannot attach for. The message says
    /// which and what to do.
    #[error("xdp backend refused: {0}")]
    XdpRefused(String),
    /// A syscall failed.
    #[error("{context}: {source}")]
    Os {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    /// An IPv6 bind address was asked for on a host without IPv6, or similar misuse.
    #[error("invalid socket setup: {0}")]
    Invalid(String),
    /// The media address is held by a socket that is not ours: another Sluice instance
    /// (which would otherwise share its SO_REUSEPORT group with us) or another program.
    #[error(
        "UDP address {0} is already in use by another socket (another Sluice instance or another \
         program); stop it or choose another relay.bind"
    )]
    AddrInUse(SocketAddr),
}

impl IoError {
    pub(crate) fn os(context: &'static str, source: io::Error) -> IoError {
        IoError::Os { context, source }
    }
}

/// Socket buffer sizes to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    /// SO_RCVBUF request in bytes (0 = leave the kernel default).
    pub recv: usize,
    /// SO_SNDBUF request in bytes (0 = leave the kernel default).
    pub send: usize,
}

impl Default for SocketBuffers {
    fn default() -> Self {
        SocketBuffers {
            recv: 8 << 20,
            send: 8 << 20,
        }
    }
}

/// What the kernel granted for the socket buffers (the values `getsockopt` reports, which on
/// Linux are twice the usable payload because they include bookkeeping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferGrant {
    pub recv: usize,
    pub send: usize,
    /// True when SO_RCVBUFFORCE/SO_SNDBUFFORCE were accepted (needs CAP_NET_ADMIN), so the
    /// request was not capped by `net.core.rmem_max`/`wmem_max`.
    pub forced: bool,
}

/// A UDP socket for `addr` (not bound yet): an IPv6 wildcard is dual-stack (IPV6_V6ONLY
/// off), any other IPv6 address IPv6-only.
fn udp_socket(addr: SocketAddr) -> Result<Socket, IoError> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| IoError::os("socket(AF_INET*, SOCK_DGRAM)", e))?;
    if addr.is_ipv6() {
        let only_v6 = !addr.ip().is_unspecified();
        sock.set_only_v6(only_v6)
            .map_err(|e| IoError::os("setsockopt(IPV6_V6ONLY)", e))?;
    }
    Ok(sock)
}

/// Make sure no other socket holds `addr` before this process creates its SO_REUSEPORT group
/// there: bind a probe socket *without* SO_REUSEPORT (and without SO_REUSEADDR) to exactly
/// the address the workers will bind, with the same dual-stack setting, and close it again.
/// The kernel refuses that bind (EADDRINUSE) when any socket holds the port on an overlapping
/// address — a specific address inside a wildcard, an IPv4 address inside a dual-stack IPv6
/// wildcard, with or without SO_REUSEPORT/SO_REUSEADDR — which is then reported as
/// [`IoError::AddrInUse`] naming `addr`. Without the probe a second Sluice instance of the
/// same user would silently join the first one's SO_REUSEPORT group and the kernel would
/// spread the first instance's peers over both.
///
/// Port 0 needs no probe (the kernel picks a free port). A zero-loss upgrade (`--takeover`)
/// does not bind at all: it runs on the sockets handed over.
///
/// Two instances starting at the same instant can both pass the probe before either binds;
/// the probe protects against a port already in use, which is the operator mistake.
pub fn check_port_free(addr: SocketAddr) -> Result<(), IoError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = udp_socket(addr)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(IoError::AddrInUse(addr)),
        Err(e) => Err(IoError::os("bind(media address probe)", e)),
    }
}

/// Bind one nonblocking UDP socket with SO_REUSEPORT at `addr`.
///
/// An IPv6 wildcard address binds dual-stack (IPV6_V6ONLY off); received IPv4 peers are
/// reported as plain IPv4. Buffers are requested with the *FORCE options first (root or
/// CAP_NET_ADMIN), then with the plain options, which the kernel caps at `rmem_max`/`wmem_max`.
pub fn bind_udp(
    addr: SocketAddr,
    bufs: SocketBuffers,
) -> Result<(UdpSocket, BufferGrant), IoError> {
    let sock = udp_socket(addr)?;
    sock.set_reuse_port(true)
        .map_err(|e| IoError::os("setsockopt(SO_REUSEPORT)", e))?;
    sock.set_nonblocking(true)
        .map_err(|e| IoError::os("fcntl(O_NONBLOCK)", e))?;
    let forced = sys::set_buffers(&sock, bufs);
    sock.bind(&addr.into()).map_err(|e| match e.kind() {
        // Held by another user's SO_REUSEPORT socket, or taken between probe and bind.
        io::ErrorKind::AddrInUse if addr.port() != 0 => IoError::AddrInUse(addr),
        _ => IoError::os("bind(media address)", e),
    })?;
    let grant = BufferGrant {
        recv: sock.recv_buffer_size().unwrap_or(0),
        send: sock.send_buffer_size().unwrap_or(0),
        forced,
    };
    Ok((sock.into(), grant))
}

/// What the kernel holds for one socket's receive side, from `getsockopt(SO_MEMINFO)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SocketMemInfo {
    /// Bytes of kernel memory the receive queue holds (`SK_MEMINFO_RMEM_ALLOC`: datagrams
    /// waiting to be read, with their bookkeeping; compared against `rcvbuf`).
    pub rx_queue_bytes: u32,
    /// The receive buffer limit (`SK_MEMINFO_RCVBUF`, the doubled `SO_RCVBUF`).
    pub rcvbuf: u32,
    /// Datagrams the kernel dropped at this socket since it was created (`SK_MEMINFO_DROPS`:
    /// receive queue full, mostly); wraps at 2^32.
    pub drops: u32,
}

/// One `getsockopt(SO_MEMINFO)` on `sock`: its receive-queue depth and kernel drops. For the
/// relay's supervisor, which samples every worker socket a few times a second from outside the
/// workers (never per packet, and never on a worker thread).
pub fn socket_meminfo(sock: &UdpSocket) -> Result<SocketMemInfo, IoError> {
    sys::meminfo(sock).map_err(|e| IoError::os("getsockopt(SO_MEMINFO)", e))
}

pub use contract::wire::normalize_addr;

/// The interface both backends implement. One instance per worker thread, created on that
/// thread (backends hold raw pointers into their own buffers and are not `Send`).
///
/// A loop turn is: [`wait`](Backend::wait) (io_uring: the one `io_uring_enter`, which also
/// submits the sends queued by the previous turn), [`drain`](Backend::drain) (calls the
/// closure once per received datagram), then [`flush`](Backend::flush) (io_uring: queue send
/// SQEs; mmsg: `sendmmsg`).
pub trait Backend {
    /// The backend actually running.
    fn kind(&self) -> RunningBackend;
    /// Block until datagrams are ready or `timeout` passes. Returns at once when a previous
    /// [`drain`](Backend::drain) left datagrams behind.
    fn wait(&mut self, timeout: Duration) -> Result<(), IoError>;
    /// Hand up to `max` received datagrams to `f(src, buf, len, tx)`: `buf` is a whole
    /// receive buffer of [`BackendParams::datagram_size`] bytes with the datagram in
    /// `buf[..len]` (the handler may rewrite it in place); `tx` is the queue to fill. The
    /// drain stops when `tx` is full (datagrams already taken from the socket stay with the
    /// backend): the caller [`flush`](Backend::flush)es and drains again. The backend never
    /// flushes inside a drain. Returns how many datagrams were handed over.
    fn drain<F>(&mut self, max: usize, f: F) -> usize
    where
        F: FnMut(SocketAddr, &mut [u8], usize, &mut TxQueue);
    /// The transmit queue to fill outside [`drain`](Backend::drain) (e.g. in `end_batch`).
    fn tx(&mut self) -> &mut TxQueue;
    /// Send (mmsg) or queue for the next submit (io_uring) everything in [`tx`](Backend::tx).
    fn flush(&mut self) -> Result<(), IoError>;
    /// Counters so far.
    fn counters(&self) -> &IoCounters;
    /// Stop receiving and wait (bounded) until the kernel no longer references our buffers.
    fn shutdown(&mut self);
    /// Before a socket hand-over ([`handover`]): stop taking datagrams from the socket but
    /// keep those already taken for [`drain`](Backend::drain), so the new process reads
    /// everything after them. The default does nothing, which is right for a backend that
    /// reads only inside `drain` (mmsg). A backend with receives in flight in the kernel
    /// (io_uring multishot) should cancel them here and stash what completes.
    fn stop_receiving(&mut self) {}
    /// Also wake [`wait`](Backend::wait) when `fd` becomes readable (the slow-path
    /// connection to control), replacing any fd watched before; `None` stops watching. The
    /// caller keeps `fd` open while it is watched and calls this again (with the new fd or
    /// `None`) when it closes or replaces it. io_uring: a multishot `IORING_OP_POLL_ADD` in
    /// the same ring, so readiness arrives as a CQE with no syscall of its own; mmsg: the fd
    /// joins the epoll set.
    fn watch_readable(&mut self, fd: Option<RawFd>) -> Result<(), IoError>;
    /// True once after the watched fd became readable (the flag is cleared). Edge-style: the
    /// caller reads until `WouldBlock`; every later arrival raises the flag again.
    fn take_readable(&mut self) -> bool;
    /// After [`shutdown`](Backend::shutdown): give back the ICE-TCP role attached to this
    /// backend, if any (a hand-over passes the owner's connections on). The default has none.
    fn take_tcp(&mut self) -> Option<tcp::TcpRole> {
        None
    }
}

/// Settings a backend needs.
#[derive(Debug, Clone, Copy)]
pub struct BackendParams {
    /// Datagrams per receive batch (mmsg: recvmmsg vector length; io_uring: CQEs per drain).
    pub batch: usize,
    /// Capacity of each transmit queue, in datagrams.
    pub tx_capacity: usize,
    /// io_uring: provided receive buffers (rounded up to a power of two, at most 32768).
    pub recv_buffers: usize,
    /// Largest datagram received and sent (`relay.max_datagram_bytes`): the size of every
    /// receive buffer and transmit-queue slot. A larger datagram arrives truncated and is
    /// dropped and counted ([`IoCounters::rx_oversized`]). Clamped to
    /// [`crate::batch::MAX_DATAGRAM`]`..=`[`MAX_DATAGRAM_LIMIT`] by [`BackendParams::datagram_size`].
    pub max_datagram: usize,
}

/// Largest receive buffer a worker may have (a 9216-byte jumbo frame).
pub const MAX_DATAGRAM_LIMIT: usize = contract::config::MAX_MAX_DATAGRAM_BYTES as usize;

impl BackendParams {
    /// [`max_datagram`](Self::max_datagram) within its bounds.
    pub fn datagram_size(&self) -> usize {
        self.max_datagram
            .clamp(crate::batch::MAX_DATAGRAM, MAX_DATAGRAM_LIMIT)
    }
}

impl Default for BackendParams {
    fn default() -> Self {
        BackendParams {
            batch: 64,
            tx_capacity: 256,
            recv_buffers: 1024,
            max_datagram: crate::batch::MAX_DATAGRAM,
        }
    }
}

/// Check once (per process) whether io_uring can run our receive path here: ring setup,
/// a provided-buffer ring, and a multishot `RecvMsgMulti` that delivers a datagram.
/// The error says why not (EPERM from a seccomp filter, ENOSYS, an old kernel, ...).
pub fn probe_io_uring() -> Result<(), IoError> {
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            // On a throw-away thread: io_uring task work left behind by the probe ring must
            // not interrupt (EINTR) later blocking calls of the caller's thread.
            std::thread::Builder::new()
                .name("sluice-uring-probe".into())
                .spawn(|| uring::probe().map_err(|e| e.to_string()))
                .map_err(|e| format!("spawning the probe thread: {e}"))
                .and_then(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("the io_uring probe panicked".into()))
                })
        })
        .clone()
        .map_err(IoError::UringRefused)
}

/// Resolve the configured choice to a concrete backend: `auto` probes io_uring and falls back
/// to mmsg, returning the refusal reason alongside so the caller can log it.
pub fn resolve_backend(choice: BackendChoice) -> Result<(RunningBackend, Option<String>), IoError> {
    match choice {
        BackendChoice::Mmsg => Ok((RunningBackend::Mmsg, None)),
        // Checked when the workers set up the program ([`xdp::XdpShared::setup`]).
        BackendChoice::Xdp => Ok((RunningBackend::Xdp, None)),
        BackendChoice::IoUring => probe_io_uring().map(|()| (RunningBackend::IoUring, None)),
        BackendChoice::Auto => match probe_io_uring() {
            Ok(()) => Ok((RunningBackend::IoUring, None)),
            Err(e) => Ok((RunningBackend::Mmsg, Some(e.to_string()))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_backend_names() {
        assert_eq!(RunningBackend::IoUring.to_string(), "io_uring");
        assert_eq!(RunningBackend::Mmsg.as_str(), "mmsg");
        assert_eq!(
            RunningBackend::Mmsg
                .as_str()
                .parse::<BackendChoice>()
                .unwrap(),
            BackendChoice::Mmsg
        );
    }

    #[test]
    fn normalize_mapped() {
        let m: SocketAddr = "[::ffff:10.1.2.3]:5".parse().unwrap();
        assert_eq!(
            normalize_addr(m),
            "10.1.2.3:5".parse::<SocketAddr>().unwrap()
        );
        let v6: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        assert_eq!(normalize_addr(v6), v6);
    }
}
