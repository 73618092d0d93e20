//! The AF_XDP backend (`relay.backend = "xdp"`): the relay's UDP port bypasses the kernel's
//! IP and UDP stack.
//!
//! An XDP program ([`xdp_bpf`]) on the interface holding `relay.bind` redirects the frames of
//! the relay's port to one AF_XDP socket per worker and receive queue; everything else goes to
//! the kernel as before. A worker reads frames from its socket's RX ring, checks the Ethernet,
//! IPv4 and UDP headers and hands the payload to the engine in place (the UMEM frame is the
//! receive buffer). For sends it builds Ethernet, IPv4 and UDP headers itself, with the next
//! hop's MAC address from the kernel's route and neighbour tables ([`xdp_route`], cached per
//! worker and invalidated on every change), and fills the TX ring with a whole loop turn's
//! datagrams before one `sendto` kick.
//!
//! Each worker keeps its ordinary UDP socket (bound as for the other backends, so the port
//! stays owned and the port probe works) as the kernel path: datagrams the program passes to
//! the kernel (IPv6, fragments, IPv4 options, a queue without a socket) are read from it, and
//! datagrams to a destination the worker cannot address itself (IPv6, no route through this
//! interface, no neighbour entry yet) leave through it, which also makes the kernel resolve
//! the neighbour. That part is the [`MmsgBackend`] unchanged.
//!
//! Zero-copy mode is used where the driver supports it, copy mode elsewhere (veth, loopback
//! and drivers without AF_XDP support; generic XDP where the driver has no native XDP).
//! Needs `CAP_NET_ADMIN` (attach the program, create the XSKMAP), `CAP_NET_RAW` (AF_XDP
//! sockets) and `CAP_BPF` (load the program), or root; without them start-up fails with
//! [`IoError::XdpRefused`] saying so.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::mmsg::MmsgBackend;
use super::xdp_bpf::{self, AttachMode, XdpProgram};
use super::xdp_route::{self, RouteCache, Via, Watcher};
use super::{Backend, BackendParams, IoCounters, IoError, RunningBackend};
use crate::batch::TxQueue;

const AF_XDP: libc::c_int = 44;
const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_TX_RING: libc::c_int = 3;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_PGOFF_RX_RING: libc::off_t = 0;
const XDP_PGOFF_TX_RING: libc::off_t = 0x8000_0000;
const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;
const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
const XDP_RING_NEED_WAKEUP: u32 = 1;

/// UMEM chunk size (one frame per chunk).
const FRAME: usize = 4096;
/// Frames for receiving (all of them sit in the fill ring while free; 4096 hold about as many
/// 1200-byte datagrams as the other backends' 8 MiB socket buffer) and for sending.
const RX_FRAMES: usize = 4096;
const TX_FRAMES: usize = 2048;
/// Ethernet + IPv4 (no options) + UDP.
const HDR: usize = 14 + 20 + 8;
/// While frames keep arriving, look at the kernel path every this many turns.
const KERNEL_EVERY: u32 = 16;
/// Read the kernel's drop counters of the socket (`XDP_STATISTICS`) every this many turns.
const STATS_EVERY: u32 = 256;
/// Kicks per flush while the kernel still has frames of ours in the TX ring.
const MAX_KICKS: usize = 256;

/// Why a frame from the RX ring was not handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame shorter than its headers")]
    Short,
    #[error("not IPv4 without options")]
    NotIpv4,
    #[error("not UDP")]
    NotUdp,
    #[error("IPv4 fragment")]
    Fragment,
    #[error("bad IPv4 header checksum")]
    Checksum,
    #[error("IPv4 or UDP length inconsistent with the frame")]
    Length,
}

/// Parse one received frame: the source address and the UDP payload's range in `f`.
pub fn parse_frame(f: &[u8]) -> Result<(SocketAddrV4, usize, usize), FrameError> {
    if f.len() < HDR {
        return Err(FrameError::Short);
    }
    if f[12..14] != [0x08, 0x00] || f[14] != 0x45 {
        return Err(FrameError::NotIpv4);
    }
    if f[23] != 17 {
        return Err(FrameError::NotUdp);
    }
    if u16::from_be_bytes([f[20], f[21]]) & 0x3fff != 0 {
        return Err(FrameError::Fragment);
    }
    if checksum(0, &f[14..34]) != 0 {
        return Err(FrameError::Checksum);
    }
    let ip_len = u16::from_be_bytes([f[16], f[17]]) as usize;
    let udp_len = u16::from_be_bytes([f[38], f[39]]) as usize;
    // Ethernet pads short frames, so the frame may be longer than the IPv4 packet.
    if ip_len < 28 || 14 + ip_len > f.len() || udp_len < 8 || udp_len > ip_len - 20 {
        return Err(FrameError::Length);
    }
    let src = SocketAddrV4::new(
        Ipv4Addr::new(f[26], f[27], f[28], f[29]),
        u16::from_be_bytes([f[34], f[35]]),
    );
    Ok((src, HDR, udp_len - 8))
}

/// Ones' complement sum of `data` added to `acc`, folded and inverted (the Internet checksum;
/// 0 over a header that carries a correct checksum).
fn checksum(acc: u64, data: &[u8]) -> u16 {
    let mut s = acc;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let (r, carry) = s.overflowing_add(v);
        s = r + carry as u64;
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    let (r, carry) = s.overflowing_add(u64::from_be_bytes(tail));
    s = r + carry as u64;
    let mut s = (s >> 32) + (s & 0xffff_ffff);
    s = (s >> 32) + (s & 0xffff_ffff);
    let mut s = (s >> 16) + (s & 0xffff);
    s = (s >> 16) + (s & 0xffff);
    s = (s >> 16) + (s & 0xffff);
    !(s as u16)
}

/// Write Ethernet, IPv4 and UDP headers for `payload_len` bytes into `f[..HDR]`.
#[allow(clippy::too_many_arguments)]
fn write_headers(
    f: &mut [u8],
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    id: u16,
    payload_len: usize,
) {
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (20 + 8 + payload_len) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = checksum(0, ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp_len = (8 + payload_len) as u16;
    let u = &mut f[34..42];
    u[0..2].copy_from_slice(&src.port().to_be_bytes());
    u[2..4].copy_from_slice(&dst.port().to_be_bytes());
    u[4..6].copy_from_slice(&udp_len.to_be_bytes());
    u[6..8].copy_from_slice(&[0, 0]);
    // Pseudo-header: addresses, protocol, UDP length; then header and payload.
    let pseudo =
        (u32::from(*src.ip()) as u64) + (u32::from(*dst.ip()) as u64) + 17 + udp_len as u64;
    let mut c = checksum(pseudo, &f[34..HDR + payload_len]);
    if c == 0 {
        c = 0xffff; // 0 means "no checksum" in IPv4 UDP
    }
    f[40..42].copy_from_slice(&c.to_be_bytes());
}

/// What every worker of one relay shares: the attached program and the route watcher.
pub struct XdpShared {
    program: XdpProgram,
    watcher: Watcher,
    ifname: String,
    ifindex: u32,
    mac: [u8; 6],
    queues: u32,
    bound: Ipv4Addr,
    port: u16,
}

impl std::fmt::Debug for XdpShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpShared")
            .field("ifname", &self.ifname)
            .field("queues", &self.queues)
            .field("mode", &self.program.mode())
            .finish()
    }
}

/// Turn a refusal of the kernel into the message the operator needs.
fn refused(what: &str, e: io::Error) -> IoError {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => IoError::XdpRefused(format!(
            "{what}: {e}; the xdp backend needs CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF \
             (systemd: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF, see the drop-in \
             systemd/sluice-relay.service.d/xdp.conf), or choose relay.backend = \"mmsg\""
        )),
        Some(libc::EAFNOSUPPORT) | Some(libc::ENOSYS) => IoError::XdpRefused(format!(
            "{what}: {e}; this kernel has no AF_XDP or BPF support"
        )),
        _ => IoError::XdpRefused(format!("{what}: {e}")),
    }
}

impl XdpShared {
    /// Find the interface holding `bind` (a specific IPv4 address), load and attach the
    /// program for `bind`'s address and port, and start the route watcher.
    pub fn setup(bind: SocketAddr) -> Result<Arc<XdpShared>, IoError> {
        let SocketAddr::V4(b) = bind else {
            return Err(IoError::XdpRefused(
                "the xdp backend needs relay.bind to be an IPv4 address".into(),
            ));
        };
        if b.ip().is_unspecified() || b.ip().is_loopback() {
            return Err(IoError::XdpRefused(format!(
                "the xdp backend needs relay.bind to be the IPv4 address of one network \
                 interface (not {}), to know where to attach",
                b.ip()
            )));
        }
        let ifname = xdp_route::interface_of(*b.ip())
            .map_err(|e| IoError::XdpRefused(format!("relay.bind {}: {e}", b.ip())))?;
        let (ifindex, mac) = xdp_route::link(&ifname)
            .map_err(|e| IoError::XdpRefused(format!("interface {ifname}: {e}")))?;
        let queues = xdp_bpf::rx_queues(&ifname) as u32;
        let program = XdpProgram::load(ifindex, queues, b.port(), *b.ip())
            .map_err(|e| refused(&format!("attaching the XDP program to {ifname}"), e))?;
        let watcher = Watcher::start().map_err(|e| IoError::os("netlink route watcher", e))?;
        tracing::info!(
            interface = %ifname, queues, mode = program.mode().as_str(),
            "XDP program attached"
        );
        Ok(Arc::new(XdpShared {
            program,
            watcher,
            ifname,
            ifindex,
            mac,
            queues,
            bound: *b.ip(),
            port: b.port(),
        }))
    }

    /// The interface the program is attached to.
    pub fn interface(&self) -> &str {
        &self.ifname
    }

    /// How many receive queues it has (workers beyond that many get no AF_XDP socket).
    pub fn queues(&self) -> u32 {
        self.queues
    }

    /// The XDP attach mode.
    pub fn mode(&self) -> AttachMode {
        self.program.mode()
    }
}

/// One mmap'ed ring of an AF_XDP socket.
struct Ring {
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    desc: *mut u8,
    mask: u32,
    size: u32,
    /// Our copy of the side we do not own, and of the side we do.
    cached_other: u32,
    cached_own: u32,
    map: *mut libc::c_void,
    map_len: usize,
}

/// `struct xdp_ring_offset`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

/// `struct xdp_mmap_offsets`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

/// `struct xdp_desc`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    options: u32,
}

impl Ring {
    fn map(
        fd: RawFd,
        off: &RingOffset,
        pgoff: libc::off_t,
        size: u32,
        elem: usize,
    ) -> io::Result<Ring> {
        let len = off.desc as usize + size as usize * elem;
        // SAFETY: mapping the ring the kernel created for this socket at its documented page
        // offset; the mapping is unmapped in Drop.
        let m = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff,
            )
        };
        if m == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let b = m.cast::<u8>();
        // SAFETY: the offsets come from XDP_MMAP_OFFSETS and lie inside the mapping.
        unsafe {
            Ok(Ring {
                producer: b.add(off.producer as usize).cast(),
                consumer: b.add(off.consumer as usize).cast(),
                flags: b.add(off.flags as usize).cast(),
                desc: b.add(off.desc as usize),
                mask: size - 1,
                size,
                cached_other: 0,
                cached_own: 0,
                map: m,
                map_len: len,
            })
        }
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping; the kernel and we access it atomically.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as in `producer`.
        unsafe { &*self.consumer }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as in `producer`.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }

    /// Consumer side: entries available.
    fn available(&mut self) -> u32 {
        if self.cached_other == self.cached_own {
            self.cached_other = self.producer().load(Ordering::Acquire);
        }
        self.cached_other.wrapping_sub(self.cached_own)
    }

    /// Consumer side: release `n` entries.
    fn release(&mut self, n: u32) {
        self.cached_own = self.cached_own.wrapping_add(n);
        self.consumer().store(self.cached_own, Ordering::Release);
    }

    /// Producer side: free slots. The producer never runs more than `size` ahead of the
    /// consumer (`send_all` writes a descriptor only into a free slot), so the subtraction
    /// cannot wrap; should it, the ring reads as full rather than as 4 billion free slots.
    fn free(&mut self) -> u32 {
        let f = self
            .size
            .saturating_sub(self.cached_own.wrapping_sub(self.cached_other));
        if f > 0 {
            return f;
        }
        self.cached_other = self.consumer().load(Ordering::Acquire);
        self.size
            .saturating_sub(self.cached_own.wrapping_sub(self.cached_other))
    }

    /// Producer side: publish `n` entries written since the last submit.
    fn submit(&mut self, n: u32) {
        self.cached_own = self.cached_own.wrapping_add(n);
        self.producer().store(self.cached_own, Ordering::Release);
    }

    /// Producer side: entries published and not yet consumed by the kernel.
    fn outstanding(&self) -> u32 {
        self.cached_own
            .wrapping_sub(self.consumer().load(Ordering::Acquire))
    }

    fn desc_at(&self, i: u32) -> *mut Desc {
        // SAFETY: index masked into the ring of 16-byte descriptors.
        unsafe { self.desc.cast::<Desc>().add((i & self.mask) as usize) }
    }

    fn addr_at(&self, i: u32) -> *mut u64 {
        // SAFETY: index masked into the ring of 8-byte addresses.
        unsafe { self.desc.cast::<u64>().add((i & self.mask) as usize) }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// One worker's AF_XDP socket with its UMEM and rings.
struct Xsk {
    // Field order: the rings are unmapped before the socket closes, the UMEM last.
    rx: Ring,
    tx: Ring,
    fill: Ring,
    comp: Ring,
    fd: OwnedFd,
    umem: UmemOwner,
    zerocopy: bool,
}

fn setsockopt_int(fd: RawFd, opt: libc::c_int, v: u32) -> io::Result<()> {
    // SAFETY: v is a live u32 of the size passed.
    let r = unsafe { libc::setsockopt(fd, SOL_XDP, opt, (&v as *const u32).cast(), 4) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Xsk {
    fn new(ifindex: u32, queue: u32) -> io::Result<Xsk> {
        // SAFETY: plain socket(2) call; the fd is owned below.
        let fd = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        let umem_len = (RX_FRAMES + TX_FRAMES) * FRAME;
        // SAFETY: anonymous private mapping of umem_len bytes, unmapped in Drop.
        let umem = unsafe {
            libc::mmap(
                ptr::null_mut(),
                umem_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if umem == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Declared before the rings and the socket's fd, so dropped after them.
        let umem = UmemOwner(umem.cast(), umem_len);
        // struct xdp_umem_reg { addr, len, chunk_size, headroom, flags, tx_metadata_len }.
        #[repr(C)]
        struct UmemReg {
            addr: u64,
            len: u64,
            chunk_size: u32,
            headroom: u32,
            flags: u32,
            tx_metadata_len: u32,
        }
        let reg = UmemReg {
            addr: umem.0 as u64,
            len: umem_len as u64,
            chunk_size: FRAME as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        // SAFETY: reg is a live xdp_umem_reg of the size passed.
        if unsafe {
            libc::setsockopt(
                raw,
                SOL_XDP,
                XDP_UMEM_REG,
                (&reg as *const UmemReg).cast(),
                mem::size_of::<UmemReg>() as u32,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        setsockopt_int(raw, XDP_UMEM_FILL_RING, RX_FRAMES as u32)?;
        setsockopt_int(raw, XDP_UMEM_COMPLETION_RING, TX_FRAMES as u32)?;
        setsockopt_int(raw, XDP_RX_RING, RX_FRAMES as u32)?;
        setsockopt_int(raw, XDP_TX_RING, TX_FRAMES as u32)?;
        let mut off = MmapOffsets::default();
        let mut optlen = mem::size_of::<MmapOffsets>() as libc::socklen_t;
        // SAFETY: off is a live xdp_mmap_offsets of the size passed.
        if unsafe {
            libc::getsockopt(
                raw,
                SOL_XDP,
                XDP_MMAP_OFFSETS,
                (&mut off as *mut MmapOffsets).cast(),
                &mut optlen,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        let rx = Ring::map(raw, &off.rx, XDP_PGOFF_RX_RING, RX_FRAMES as u32, 16)?;
        let tx = Ring::map(raw, &off.tx, XDP_PGOFF_TX_RING, TX_FRAMES as u32, 16)?;
        let mut fill = Ring::map(raw, &off.fr, XDP_UMEM_PGOFF_FILL_RING, RX_FRAMES as u32, 8)?;
        let comp = Ring::map(
            raw,
            &off.cr,
            XDP_UMEM_PGOFF_COMPLETION_RING,
            TX_FRAMES as u32,
            8,
        )?;
        // Every receive frame starts in the fill ring.
        for i in 0..RX_FRAMES as u32 {
            // SAFETY: i < ring size; we own the producer side of the fill ring.
            unsafe { *fill.addr_at(fill.cached_own.wrapping_add(i)) = i as u64 * FRAME as u64 };
        }
        fill.submit(RX_FRAMES as u32);
        // struct sockaddr_xdp { family, flags, ifindex, queue_id, shared_umem_fd }.
        #[repr(C)]
        struct SockaddrXdp {
            family: u16,
            flags: u16,
            ifindex: u32,
            queue_id: u32,
            shared_umem_fd: u32,
        }
        let mut zerocopy = true;
        let mut result = Err(io::Error::from(io::ErrorKind::Unsupported));
        for mode in [XDP_ZEROCOPY, XDP_COPY] {
            let sa = SockaddrXdp {
                family: AF_XDP as u16,
                flags: mode | XDP_USE_NEED_WAKEUP,
                ifindex,
                queue_id: queue,
                shared_umem_fd: 0,
            };
            // SAFETY: sa is a live sockaddr_xdp of the size passed.
            let r = unsafe {
                libc::bind(
                    raw,
                    (&sa as *const SockaddrXdp).cast(),
                    mem::size_of::<SockaddrXdp>() as u32,
                )
            };
            if r == 0 {
                zerocopy = mode == XDP_ZEROCOPY;
                result = Ok(());
                break;
            }
            result = Err(io::Error::last_os_error());
        }
        result?;
        Ok(Xsk {
            rx,
            tx,
            fill,
            comp,
            fd,
            umem,
            zerocopy,
        })
    }
}

/// The UMEM mapping; the last field of [`Xsk`], so unmapped after the socket and its rings.
struct UmemOwner(*mut u8, usize);

impl Drop for UmemOwner {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once, after the socket using it closed.
        unsafe { libc::munmap(self.0.cast(), self.1) };
    }
}

/// The `xdp` backend of one worker.
pub struct XdpBackend {
    xsk: Option<Xsk>,
    shared: Arc<XdpShared>,
    queue: Option<u32>,
    kernel: MmsgBackend,
    kernel_poll: RawFd,
    routes: RouteCache,
    tx: TxQueue,
    /// Free transmit frames (UMEM addresses).
    tx_free: Vec<u64>,
    stride: usize,
    /// A receive buffer for frames whose chunk cannot hold a whole `stride` after the payload.
    scratch: Box<[u8]>,
    ip_id: u16,
    turns: u32,
    /// This backend's own counts (the AF_XDP path).
    own: IoCounters,
    /// `own` plus the kernel path's, what [`Backend::counters`] returns (refreshed at the
    /// end of every drain and flush).
    merged: IoCounters,
}

impl XdpBackend {
    /// The backend of worker `id` on its UDP socket `sock`: an AF_XDP socket on receive queue
    /// `id` of the shared program's interface (none when the interface has fewer queues;
    /// the worker then runs on the kernel path alone).
    pub fn new(
        sock: UdpSocket,
        params: BackendParams,
        shared: Arc<XdpShared>,
        id: usize,
    ) -> Result<XdpBackend, IoError> {
        let stride = params.datagram_size();
        let kernel = MmsgBackend::new(sock, params)?;
        let kernel_poll = kernel.poll_fd();
        let routes = RouteCache::new(shared.watcher.gen.clone(), shared.ifindex, shared.bound)
            .map_err(|e| IoError::os("netlink route socket", e))?;
        let (xsk, queue) = if (id as u32) < shared.queues {
            let q = id as u32;
            let x = Xsk::new(shared.ifindex, q).map_err(|e| {
                refused(&format!("AF_XDP socket on {} queue {q}", shared.ifname), e)
            })?;
            shared
                .program
                .insert(q, x.fd.as_raw_fd())
                .map_err(|e| refused("inserting the AF_XDP socket into the XSKMAP", e))?;
            tracing::info!(
                worker = id, interface = %shared.ifname, queue = q,
                zerocopy = x.zerocopy, "AF_XDP socket bound"
            );
            (Some(x), Some(q))
        } else {
            tracing::warn!(
                worker = id, interface = %shared.ifname, queues = shared.queues,
                "more workers than receive queues: this worker runs on the kernel path only"
            );
            (None, None)
        };
        let tx_free = (0..TX_FRAMES as u64)
            .map(|i| (RX_FRAMES as u64 + i) * FRAME as u64)
            .collect();
        Ok(XdpBackend {
            xsk,
            shared,
            queue,
            kernel,
            kernel_poll,
            routes,
            tx: TxQueue::new(params.tx_capacity.max(1), stride),
            tx_free,
            stride,
            scratch: vec![0u8; stride].into_boxed_slice(),
            ip_id: 0,
            turns: 0,
            own: IoCounters::default(),
            merged: IoCounters::default(),
        })
    }

    /// Whether the socket runs in zero-copy mode (false: copy mode or no socket).
    pub fn zerocopy(&self) -> bool {
        self.xsk.as_ref().is_some_and(|x| x.zerocopy)
    }

    /// Move completed transmit frames back to the free list.
    fn reap(&mut self) {
        let Some(x) = &mut self.xsk else { return };
        let n = x.comp.available();
        for i in 0..n {
            // SAFETY: i < available entries of the completion ring, which we consume.
            let a = unsafe { *x.comp.addr_at(x.comp.cached_own.wrapping_add(i)) };
            self.tx_free.push(a);
        }
        if n > 0 {
            x.comp.release(n);
        }
    }

    /// Make the kernel transmit what the TX ring holds (copy mode sends inside this call, a
    /// bounded batch per call).
    fn kick(&mut self) {
        let Some(x) = &self.xsk else { return };
        if !x.zerocopy || x.tx.needs_wakeup() {
            self.own.syscalls += 1;
            // SAFETY: a zero-length sendto on our own AF_XDP socket only wakes its TX path.
            let r = unsafe {
                libc::sendto(
                    x.fd.as_raw_fd(),
                    ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    ptr::null(),
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS)
                    | Some(libc::EINTR) => {}
                    _ => tracing::debug!(error = %e, "AF_XDP kick"),
                }
            }
        }
    }

    /// Send everything in `self.tx`: frames built here into the TX ring, the rest through the
    /// kernel socket.
    fn send_all(&mut self) {
        self.reap();
        let mut queued = 0u32;
        for i in 0..self.tx.len() {
            let m = self.tx.metas()[i];
            let data_len = m.len as usize;
            let via = match (m.dst, &self.xsk) {
                (SocketAddr::V4(d), Some(_)) => (self.routes.via(*d.ip()), d),
                _ => (Via::Kernel, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            };
            let (Via::Frame { mac, src }, d) = via else {
                self.via_kernel(m.dst, i);
                continue;
            };
            if HDR + data_len > FRAME {
                self.via_kernel(m.dst, i);
                continue;
            }
            let Some(x) = self.xsk.as_mut() else { continue };
            if x.tx.free() <= queued {
                // Ring full: push what we have and let the kernel drain some.
                x.tx.submit(queued);
                queued = 0;
                self.kick();
                self.reap();
                // Still full (the kernel took nothing): writing a descriptor now would
                // overwrite one it has not read yet. This datagram is dropped, counted.
                if self.xsk.as_mut().is_some_and(|x| x.tx.free() == 0) {
                    self.own.xdp_tx_ring_full += 1;
                    continue;
                }
            }
            let Some(addr) = self.tx_free.pop() else {
                self.own.xdp_tx_ring_full += 1;
                continue;
            };
            let Some(x) = self.xsk.as_mut() else { continue };
            // SAFETY: `addr` is a free transmit frame of FRAME bytes inside the UMEM, which
            // the kernel does not touch until we publish it in the TX ring.
            let frame = unsafe {
                std::slice::from_raw_parts_mut(x.umem.0.add(addr as usize), HDR + data_len)
            };
            frame[HDR..].copy_from_slice(self.tx.datagram(i));
            self.ip_id = self.ip_id.wrapping_add(1);
            write_headers(
                frame,
                mac,
                self.shared.mac,
                SocketAddrV4::new(src, self.shared.port),
                d,
                self.ip_id,
                data_len,
            );
            // SAFETY: the slot `queued` past our producer index is free (checked above).
            unsafe {
                *x.tx.desc_at(x.tx.cached_own.wrapping_add(queued)) = Desc {
                    addr,
                    len: (HDR + data_len) as u32,
                    options: 0,
                };
            }
            queued += 1;
            self.own.tx_packets += 1;
            self.own.xdp_tx_frames += 1;
            self.own.tx_bytes += data_len as u64;
        }
        if let Some(x) = self.xsk.as_mut() {
            x.tx.submit(queued);
        }
        // Copy mode transmits a bounded batch per kick: kick until the kernel took everything.
        for _ in 0..MAX_KICKS {
            match &self.xsk {
                Some(x) if x.tx.outstanding() > 0 => {}
                _ => break,
            }
            self.kick();
            if self.xsk.as_ref().is_some_and(|x| x.zerocopy) {
                break;
            }
        }
        self.reap();
        self.tx.clear();
        let _ = self.kernel.flush();
    }

    /// The kernel's drop counters for this socket (one `getsockopt`, every [`STATS_EVERY`]
    /// turns and at shutdown).
    fn read_kernel_drops(&mut self) {
        let Some(x) = &self.xsk else { return };
        /// `struct xdp_statistics`.
        #[repr(C)]
        #[derive(Default)]
        struct XdpStatistics {
            rx_dropped: u64,
            rx_invalid_descs: u64,
            tx_invalid_descs: u64,
            rx_ring_full: u64,
            rx_fill_ring_empty_descs: u64,
            tx_ring_empty_descs: u64,
        }
        let mut st = XdpStatistics::default();
        let mut len = mem::size_of::<XdpStatistics>() as libc::socklen_t;
        self.own.syscalls += 1;
        // SAFETY: st is a live xdp_statistics of the size passed; the kernel writes at most
        // `len` bytes.
        let r = unsafe {
            libc::getsockopt(
                x.fd.as_raw_fd(),
                SOL_XDP,
                XDP_STATISTICS,
                (&mut st as *mut XdpStatistics).cast(),
                &mut len,
            )
        };
        if r == 0 {
            self.own.xdp_rx_ring_full = st.rx_ring_full;
            self.own.xdp_rx_dropped = st.rx_dropped + st.rx_fill_ring_empty_descs;
        }
    }

    fn merge_counters(&mut self) {
        self.own.xdp_route_lookups = self.routes.lookups;
        self.merged = self.own + *self.kernel.counters();
    }

    /// Queue datagram `i` of `self.tx` on the kernel socket.
    fn via_kernel(&mut self, dst: SocketAddr, i: usize) {
        self.own.xdp_tx_kernel += 1;
        if self.kernel.tx().is_full() {
            let _ = self.kernel.flush();
        }
        if !self.kernel.tx().push(dst, self.tx.datagram(i)) {
            self.own.tx_errors += 1;
        }
    }
}

impl Backend for XdpBackend {
    fn kind(&self) -> RunningBackend {
        RunningBackend::Xdp
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), IoError> {
        self.turns = self.turns.wrapping_add(1);
        if self.turns % STATS_EVERY == 0 {
            self.read_kernel_drops();
        }
        let frames = match &mut self.xsk {
            Some(x) => x.rx.available() > 0,
            None => false,
        };
        if frames {
            if self.turns % KERNEL_EVERY == 0 {
                self.kernel.wait(Duration::ZERO)?;
            }
            return Ok(());
        }
        let Some(x) = &self.xsk else {
            return self.kernel.wait(timeout);
        };
        if self.kernel.pending() {
            // Datagrams left on the kernel path: no blocking (its epoll is edge-triggered and
            // would not report them again).
            return self.kernel.wait(Duration::ZERO);
        }
        let mut fds = [
            libc::pollfd {
                fd: x.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.kernel_poll,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        self.own.syscalls += 1;
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: fds is a live array of two pollfd of the count passed.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(IoError::os("poll(AF_XDP)", e));
            }
        }
        if fds[1].revents != 0 {
            self.kernel.wait(Duration::ZERO)?;
        }
        Ok(())
    }

    fn drain<F>(&mut self, max: usize, mut f: F) -> usize
    where
        F: FnMut(SocketAddr, &mut [u8], usize, &mut TxQueue),
    {
        let mut handed = 0;
        if let Some(x) = &mut self.xsk {
            let avail = x.rx.available().min(max as u32);
            let mut taken = 0u32;
            while taken < avail && !self.tx.is_full() {
                // SAFETY: taken < available entries of the RX ring, which we consume.
                let d = unsafe { *x.rx.desc_at(x.rx.cached_own.wrapping_add(taken)) };
                taken += 1;
                let chunk = d.addr & !(FRAME as u64 - 1);
                let in_chunk = (d.addr - chunk) as usize;
                let ok = in_chunk + d.len as usize <= FRAME;
                // SAFETY: the kernel wrote `len` bytes at `addr` inside one chunk of the
                // UMEM (checked), which is ours until we return it to the fill ring below.
                let frame = ok.then(|| unsafe {
                    std::slice::from_raw_parts_mut(x.umem.0.add(d.addr as usize), FRAME - in_chunk)
                });
                match frame.map(|fr| (parse_frame(&fr[..d.len as usize]), fr)) {
                    Some((Ok((src, off, len)), fr)) => {
                        if len > self.stride {
                            // As on the kernel path: dropped and counted, not received.
                            self.own.rx_oversized += 1;
                        } else {
                            self.own.rx_packets += 1;
                            self.own.xdp_rx_frames += 1;
                            self.own.rx_bytes += len as u64;
                            let src = SocketAddr::V4(src);
                            if fr.len() - off >= self.stride {
                                f(src, &mut fr[off..off + self.stride], len, &mut self.tx);
                            } else {
                                self.scratch[..len].copy_from_slice(&fr[off..off + len]);
                                f(src, &mut self.scratch, len, &mut self.tx);
                            }
                            handed += 1;
                        }
                    }
                    Some((Err(e), _)) => {
                        self.own.xdp_rx_invalid += 1;
                        tracing::trace!(error = %e, "AF_XDP frame dropped");
                    }
                    None => self.own.xdp_rx_invalid += 1,
                }
                // The frame goes back to the fill ring (published below with the others; the
                // fill ring holds every receive frame, so there is always room).
                // SAFETY: we own the fill ring's producer side; a slot is free for each frame
                // the RX ring handed us.
                unsafe { *x.fill.addr_at(x.fill.cached_own.wrapping_add(taken - 1)) = chunk };
            }
            x.fill.submit(taken);
            x.rx.release(taken);
            if taken > 0 && x.fill.needs_wakeup() {
                self.own.syscalls += 1;
                // SAFETY: a zero-length, nonblocking recvfrom on our own AF_XDP socket only
                // wakes its fill path (drivers in need-wakeup mode).
                unsafe {
                    libc::recvfrom(
                        x.fd.as_raw_fd(),
                        ptr::null_mut(),
                        0,
                        libc::MSG_DONTWAIT,
                        ptr::null_mut(),
                        ptr::null_mut(),
                    )
                };
            }
        }
        if handed < max && !self.tx.is_full() {
            handed += self.kernel.drain(max - handed, f);
        }
        self.merge_counters();
        handed
    }

    fn tx(&mut self) -> &mut TxQueue {
        &mut self.tx
    }

    fn flush(&mut self) -> Result<(), IoError> {
        if !self.tx.is_empty() {
            self.send_all();
        } else {
            self.kernel.flush()?;
        }
        self.merge_counters();
        Ok(())
    }

    fn counters(&self) -> &IoCounters {
        &self.merged
    }

    fn shutdown(&mut self) {
        self.read_kernel_drops();
        self.merge_counters();
        let c = &self.merged;
        tracing::info!(
            queue = ?self.queue,
            rx_frames = c.xdp_rx_frames,
            tx_frames = c.xdp_tx_frames,
            tx_kernel = c.xdp_tx_kernel,
            rx_ring_full = c.xdp_rx_ring_full,
            rx_dropped = c.xdp_rx_dropped,
            rx_invalid = c.xdp_rx_invalid,
            tx_ring_full = c.xdp_tx_ring_full,
            route_lookups = c.xdp_route_lookups,
            "AF_XDP socket closing"
        );
        if let Some(q) = self.queue.take() {
            self.shared.program.remove(q);
        }
        // Wait (bounded) for the kernel to finish transmitting our frames.
        for _ in 0..100 {
            match &self.xsk {
                Some(x) if x.tx.outstanding() > 0 => {}
                _ => break,
            }
            self.kick();
            std::thread::sleep(Duration::from_millis(1));
        }
        self.xsk = None;
        self.kernel.shutdown();
    }

    fn watch_readable(&mut self, fd: Option<RawFd>) -> Result<(), IoError> {
        self.kernel.watch_readable(fd)
    }

    fn take_readable(&mut self) -> bool {
        self.kernel.take_readable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let mut f = vec![0u8; HDR + 5];
        f[HDR..].copy_from_slice(b"hello");
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 4443);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 5000);
        write_headers(&mut f, [2; 6], [4; 6], src, dst, 7, 5);
        assert_eq!(parse_frame(&f), Ok((src, HDR, 5)));
        // The UDP checksum verifies over pseudo-header, header and payload.
        let pseudo = u32::from(*src.ip()) as u64 + u32::from(*dst.ip()) as u64 + 17 + 13;
        assert_eq!(checksum(pseudo, &f[34..]), 0);
        f[20] = 0x20; // MF
        assert_eq!(parse_frame(&f), Err(FrameError::Fragment));
    }

    #[test]
    fn bad_frames_are_typed() {
        assert_eq!(parse_frame(&[0; 10]), Err(FrameError::Short));
        let mut f = vec![0u8; HDR + 4];
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 1);
        write_headers(&mut f, [0; 6], [0; 6], src, src, 1, 4);
        let mut g = f.clone();
        g[12] = 0x86;
        assert_eq!(parse_frame(&g), Err(FrameError::NotIpv4));
        let mut g = f.clone();
        g[22] ^= 1; // TTL changes: header checksum no longer matches
        assert_eq!(parse_frame(&g), Err(FrameError::Checksum));
        let mut g = f.clone();
        g[38..40].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(parse_frame(&g), Err(FrameError::Length));
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2 (checksum 220d).
        assert_eq!(
            checksum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }
}
