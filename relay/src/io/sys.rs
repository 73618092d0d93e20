//! Low-level helpers shared by both backends: socket options, sockaddr conversion, UDP GSO
//! runs and the `msghdr` slots that describe one send.

use std::mem;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use socket2::Socket;

use super::{normalize_addr, SocketBuffers};
use crate::batch::{TxMeta, TxQueue};

/// `UDP_SEGMENT` (linux/udp.h): the GSO segment size, as a socket option or a cmsg.
pub(crate) const UDP_SEGMENT: libc::c_int = 103;
/// Linux caps a GSO train at 64 segments (UDP_MAX_SEGMENTS).
pub(crate) const GSO_MAX_SEGMENTS: usize = 64;
/// Largest UDP payload of one train: 65535 minus the IPv4 and UDP headers.
pub(crate) const GSO_MAX_BYTES: usize = 65_535 - 20 - 8;
/// SO_SNDBUFFORCE / SO_RCVBUFFORCE (asm-generic/socket.h; the values on x86 and arm).
const SO_SNDBUFFORCE: libc::c_int = 32;
const SO_RCVBUFFORCE: libc::c_int = 33;

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    val: libc::c_int,
) -> bool {
    // SAFETY: `val` is a live c_int and we pass its exact size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&val as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// Ask for the socket buffer sizes: the *FORCE options first, then the plain ones.
/// Returns true when both forced requests were accepted.
pub(crate) fn set_buffers(sock: &Socket, bufs: SocketBuffers) -> bool {
    let fd = sock.as_raw_fd();
    let mut forced = true;
    for (size, force, plain) in [
        (bufs.recv, SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (bufs.send, SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if size == 0 {
            continue;
        }
        let v = size.min(i32::MAX as usize) as libc::c_int;
        if !setsockopt_int(fd, libc::SOL_SOCKET, force, v) {
            forced = false;
            // Capped by net.core.{r,w}mem_max; what was granted is reported by the caller.
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, v);
        }
    }
    forced
}

/// `getsockopt(SOL_SOCKET, SO_MEMINFO)`: the socket's `SK_MEMINFO_*` array.
pub(crate) fn meminfo(sock: &std::net::UdpSocket) -> std::io::Result<super::SocketMemInfo> {
    const VARS: usize = libc::SK_MEMINFO_DROPS as usize + 1;
    let mut v = [0u32; VARS];
    let mut len = mem::size_of_val(&v) as libc::socklen_t;
    // SAFETY: `v` is a live, writable array of `len` bytes; the kernel writes at most `len`
    // bytes into it and stores the length it wrote in `len`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            v.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if (len as usize) < mem::size_of_val(&v) {
        return Err(std::io::Error::other(
            "SO_MEMINFO: short answer (kernel < 4.6?)",
        ));
    }
    Ok(super::SocketMemInfo {
        rx_queue_bytes: v[libc::SK_MEMINFO_RMEM_ALLOC as usize],
        rcvbuf: v[libc::SK_MEMINFO_RCVBUF as usize],
        drops: v[libc::SK_MEMINFO_DROPS as usize],
    })
}

/// Whether this kernel accepts UDP GSO (probed once on a throw-away socket, because setting
/// UDP_SEGMENT on a real socket would make it the default for every send).
pub fn gso_supported() -> bool {
    static GSO: OnceLock<bool> = OnceLock::new();
    *GSO.get_or_init(|| {
        let Ok(s) = std::net::UdpSocket::bind("127.0.0.1:0") else {
            return false;
        };
        setsockopt_int(s.as_raw_fd(), libc::SOL_UDP, UDP_SEGMENT, 1200)
    })
}

/// Convert a kernel sockaddr into a `SocketAddr` (IPv4-mapped IPv6 becomes IPv4).
///
/// # Safety
/// `ptr` must point at `len` readable bytes of a sockaddr written by the kernel.
pub(crate) unsafe fn sockaddr_to_std(ptr: *const u8, len: usize) -> Option<SocketAddr> {
    if len < mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: the caller guarantees `len` readable bytes; we read at most `len` bytes and
    // use unaligned reads because provided buffers carry no alignment promise.
    unsafe {
        let family = (ptr as *const libc::sa_family_t).read_unaligned();
        match family as libc::c_int {
            libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
                let sin = (ptr as *const libc::sockaddr_in).read_unaligned();
                let ip = u32::from_be(sin.sin_addr.s_addr);
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip.into(),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
                let sin6 = (ptr as *const libc::sockaddr_in6).read_unaligned();
                let a = SocketAddr::V6(SocketAddrV6::new(
                    sin6.sin6_addr.s6_addr.into(),
                    u16::from_be(sin6.sin6_port),
                    // A datagram's source has no flow information (the kernel writes 0);
                    // forcing it keeps every UDP source apart from ICE-TCP peer keys.
                    0,
                    sin6.sin6_scope_id,
                ));
                Some(normalize_addr(a))
            }
            _ => None,
        }
    }
}

/// Write `addr` as a sockaddr for a socket of the given family. A v4 destination on a v6
/// socket becomes IPv4-mapped; a v6 destination on a v4 socket and an ICE-TCP peer key (its
/// connection is gone) cannot be sent as UDP (None).
pub(crate) fn std_to_sockaddr(
    addr: SocketAddr,
    socket_v6: bool,
    out: &mut libc::sockaddr_storage,
) -> Option<libc::socklen_t> {
    if contract::wire::is_tcp_peer(&addr) {
        return None;
    }
    let v6 = match (addr, socket_v6) {
        (SocketAddr::V4(a), false) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { (out as *mut libc::sockaddr_storage as *mut libc::sockaddr_in).write(sin) };
            return Some(mem::size_of::<libc::sockaddr_in>() as libc::socklen_t);
        }
        (SocketAddr::V6(_), false) => return None,
        (SocketAddr::V4(a), true) => SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
        (SocketAddr::V6(a), true) => a,
    };
    let sin6 = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: v6.port().to_be(),
        sin6_flowinfo: v6.flowinfo(),
        sin6_addr: libc::in6_addr {
            s6_addr: v6.ip().octets(),
        },
        sin6_scope_id: v6.scope_id(),
    };
    // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
    unsafe { (out as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6).write(sin6) };
    Some(mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
}

/// The end (exclusive) of the send run starting at position `start` of `order` (indices into
/// `metas`), and its segment size.
///
/// A run is datagrams to one destination, all of the first one's size except that the last
/// may be shorter (UDP GSO allows a short final segment); at most [`GSO_MAX_SEGMENTS`] and
/// [`GSO_MAX_BYTES`]. Without GSO every run is one datagram.
pub(crate) fn run_at(metas: &[TxMeta], order: &[u32], start: usize, gso: bool) -> (usize, u32) {
    let first = metas[order[start] as usize];
    let seg = first.len;
    let mut end = start + 1;
    if !gso || seg == 0 {
        return (end, seg);
    }
    let mut total = seg as usize;
    while end < order.len() && end - start < GSO_MAX_SEGMENTS {
        let m = metas[order[end] as usize];
        if m.dst != first.dst || m.len > seg || m.len == 0 || total + m.len as usize > GSO_MAX_BYTES
        {
            break;
        }
        total += m.len as usize;
        end += 1;
        if m.len < seg {
            break; // a short segment ends the train
        }
    }
    (end, seg)
}

/// A cheap sort key that keeps datagrams to one destination together. Distinct IPv6
/// destinations may share a key; [`run_at`] still compares the real address, so a shared key
/// only costs a shorter train.
#[inline]
fn dst_key(a: &SocketAddr) -> u64 {
    match a {
        SocketAddr::V4(v4) => (u32::from(*v4.ip()) as u64) << 16 | v4.port() as u64,
        SocketAddr::V6(v6) => {
            let o = u128::from(*v6.ip());
            let h = (o as u64) ^ ((o >> 64) as u64).rotate_left(17);
            (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ v6.port() as u64) | 1 << 63
        }
    }
}

/// The send descriptors for one transmit queue: datagrams grouped by destination (a stable
/// order, so each destination's datagrams keep their order), then cut into GSO runs, each run
/// one `msghdr` whose iovecs point into the queue's arena (no copy).
///
/// The engine queues a packet's copies for every subscriber one after the other, so the queue
/// interleaves destinations (A B C A B C ...). Grouping turns that into runs (A A B B C C) that
/// leave as one GSO send per subscriber instead of one send per datagram. The iovec array has
/// one entry per datagram at most (neighbours in the arena share an entry), so a run needs no
/// copy even when its datagrams are not adjacent. Everything is sized once for the queue's
/// capacity; building a plan does not allocate.
pub(crate) struct TxPlan {
    /// (destination key, datagram index), sorted.
    keys: Vec<(u64, u32)>,
    /// Datagram indices in send order.
    order: Vec<u32>,
    iovs: Box<[libc::iovec]>,
    /// One per send; `slots[..len]` are valid after [`build`](Self::build).
    pub slots: Box<[SendSlot]>,
    pub len: usize,
}

impl TxPlan {
    pub fn new(capacity: usize) -> TxPlan {
        TxPlan {
            keys: Vec::with_capacity(capacity),
            order: Vec::with_capacity(capacity),
            // SAFETY: iovec is a C struct for which all-zero bytes are valid.
            iovs: (0..capacity).map(|_| unsafe { mem::zeroed() }).collect(),
            slots: SendSlot::new_boxed(capacity),
            len: 0,
        }
    }

    /// Describe every datagram of `q` (at most the capacity given to [`new`](Self::new)).
    /// With `gso` the datagrams are grouped by destination and runs become GSO trains;
    /// without, they are sent one by one in queue order. Returns how many datagrams could not
    /// be addressed from this socket (an IPv6 destination on an IPv4 socket); they are skipped.
    pub fn build(&mut self, q: &TxQueue, gso: bool, socket_v6: bool) -> u64 {
        let metas = q.metas();
        let n = metas.len().min(self.iovs.len());
        self.order.clear();
        if gso && n > 1 {
            self.keys.clear();
            self.keys.extend(
                metas[..n]
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (dst_key(&m.dst), i as u32)),
            );
            // (key, index) pairs are distinct, so the unstable sort is stable per destination.
            self.keys.sort_unstable();
            self.order.extend(self.keys.iter().map(|&(_, i)| i));
        } else {
            self.order.extend(0..n as u32);
        }
        self.cut(q, gso, socket_v6)
    }

    /// Cut the current send order into sends again (after [`build`](Self::build)), e.g.
    /// singly after GSO was refused: then slot `k` is position `k` of the same order.
    pub fn cut(&mut self, q: &TxQueue, gso: bool, socket_v6: bool) -> u64 {
        let metas = q.metas();
        let n = self.order.len();
        let base = q.arena().as_ptr();
        let mut unroutable = 0u64;
        let mut iov_at = 0usize;
        let mut pos = 0usize;
        self.len = 0;
        while pos < n {
            let (end, seg) = run_at(metas, &self.order, pos, gso);
            let slot = &mut self.slots[self.len];
            let Some(alen) = std_to_sockaddr(
                metas[self.order[pos] as usize].dst,
                socket_v6,
                &mut slot.addr,
            ) else {
                unroutable += (end - pos) as u64;
                pos = end;
                continue;
            };
            // iovecs for the run, merging datagrams that are adjacent in the arena.
            let first_iov = iov_at;
            let mut bytes = 0usize;
            let mut next_off = u32::MAX;
            for &i in &self.order[pos..end] {
                let m = metas[i as usize];
                if m.offset == next_off {
                    self.iovs[iov_at - 1].iov_len += m.len as usize;
                } else {
                    // SAFETY: offset..offset+len lies inside the queue's arena (TxQueue
                    // invariant), so the pointer stays within `arena()`.
                    let ptr = unsafe { base.add(m.offset as usize) };
                    self.iovs[iov_at] = libc::iovec {
                        iov_base: ptr as *mut libc::c_void,
                        iov_len: m.len as usize,
                    };
                    iov_at += 1;
                }
                next_off = m.offset + m.len;
                bytes += m.len as usize;
            }
            slot.set(
                &mut self.iovs[first_iov..iov_at],
                alen,
                (end - pos) as u32,
                seg,
                bytes,
                pos as u32,
            );
            self.len += 1;
            pos = end;
        }
        unroutable
    }

    /// Send the datagrams of slot `k` (a GSO train the kernel refused) one `sendto` each, so
    /// the train is not lost. Blocking-free (the socket is nonblocking); returns (datagrams
    /// sent, bytes sent, datagrams failed). Only for the rare fallback, never the hot path.
    pub fn send_slot_singly(&self, fd: libc::c_int, q: &TxQueue, k: usize) -> (u64, u64, u64) {
        let Some(slot) = self.slots[..self.len].get(k) else {
            return (0, 0, 0);
        };
        let metas = q.metas();
        let (mut sent, mut bytes, mut failed) = (0u64, 0u64, 0u64);
        let first = slot.first as usize;
        let end = (first + slot.segs as usize).min(self.order.len());
        for &i in &self.order[first.min(end)..end] {
            let Some(m) = metas.get(i as usize) else {
                failed += 1;
                continue;
            };
            let data = &q.arena()[m.offset as usize..(m.offset + m.len) as usize];
            // SAFETY: `data` and the slot's sockaddr (msg_namelen bytes written by `cut`) are
            // live for this synchronous call; the kernel only reads them.
            let r = unsafe {
                libc::sendto(
                    fd,
                    data.as_ptr().cast(),
                    data.len(),
                    0,
                    (&slot.addr as *const libc::sockaddr_storage).cast(),
                    slot.hdr.msg_namelen,
                )
            };
            if r >= 0 {
                sent += 1;
                bytes += r as u64;
            } else {
                failed += 1;
            }
        }
        (sent, bytes, failed)
    }
}

/// Control buffer big enough for one `UDP_SEGMENT` cmsg, aligned like `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct CmsgBuf([u8; 32]);

/// Everything one `sendmsg` points at (the iovecs live in the owning [`TxPlan`]). Slots live
/// in a boxed slice that is never resized, so the self-pointers in `hdr` stay valid while the
/// slot is in flight.
#[repr(C)]
pub(crate) struct SendSlot {
    pub hdr: libc::msghdr,
    pub addr: libc::sockaddr_storage,
    pub cmsg: CmsgBuf,
    /// Datagrams in this send (GSO segments).
    pub segs: u32,
    /// Payload bytes in this send.
    pub bytes: usize,
    /// Position of the first datagram in the plan's send order.
    pub first: u32,
}

impl SendSlot {
    fn new_boxed(n: usize) -> Box<[SendSlot]> {
        (0..n)
            .map(|_| SendSlot {
                // SAFETY: msghdr and sockaddr_storage are plain C structs for which all-zero
                // bytes are valid values (null pointers, zero lengths).
                hdr: unsafe { mem::zeroed() },
                // SAFETY: as above.
                addr: unsafe { mem::zeroed() },
                cmsg: CmsgBuf([0; 32]),
                segs: 0,
                bytes: 0,
                first: 0,
            })
            .collect()
    }

    /// Point the header at `iovs`, the address already written (`alen` bytes) and, for more
    /// than one segment, a `UDP_SEGMENT` cmsg of `seg` bytes.
    fn set(
        &mut self,
        iovs: &mut [libc::iovec],
        alen: libc::socklen_t,
        segs: u32,
        seg: u32,
        bytes: usize,
        first: u32,
    ) {
        self.hdr.msg_name = (&mut self.addr as *mut libc::sockaddr_storage).cast();
        self.hdr.msg_namelen = alen;
        self.hdr.msg_iov = iovs.as_mut_ptr();
        self.hdr.msg_iovlen = iovs.len() as _;
        self.hdr.msg_flags = 0;
        self.segs = segs;
        self.bytes = bytes;
        self.first = first;
        if segs > 1 {
            // SAFETY: CMSG_SPACE(2) = 24 <= 32 bytes of an 8-aligned buffer; we build exactly
            // one cmsghdr through the libc macros, which stay within msg_controllen.
            unsafe {
                let space = libc::CMSG_SPACE(mem::size_of::<u16>() as u32) as usize;
                self.hdr.msg_control = self.cmsg.0.as_mut_ptr().cast();
                self.hdr.msg_controllen = space as _;
                let c = libc::CMSG_FIRSTHDR(&self.hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
                (libc::CMSG_DATA(c) as *mut u16).write_unaligned(seg as u16);
            }
        } else {
            self.hdr.msg_control = std::ptr::null_mut();
            self.hdr.msg_controllen = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut q = TxQueue::with_capacity(200);
        for _ in 0..3 {
            q.push(a, &[1; 100]);
        }
        q.push(a, &[1; 50]); // short last segment joins the train
        q.push(a, &[1; 100]);
        q.push(b, &[1; 100]);
        for _ in 0..70 {
            q.push(b, &[2; 10]);
        }
        let m = q.metas();
        let order: Vec<u32> = (0..m.len() as u32).collect();
        assert_eq!(run_at(m, &order, 0, true), (4, 100));
        assert_eq!(run_at(m, &order, 4, true), (5, 100));
        assert_eq!(run_at(m, &order, 5, true), (7, 100)); // one short segment ends the train
        assert_eq!(run_at(m, &order, 7, true), (7 + 64, 10)); // at most 64 segments
        assert_eq!(run_at(m, &order, 71, true), (76, 10));
        assert_eq!(run_at(m, &order, 0, false), (1, 100));
    }

    /// Interleaved destinations (the engine's fan-out order) become one train per
    /// destination, each destination's datagrams in queue order, with no copy.
    #[test]
    fn plan_groups_by_destination() {
        let subs: Vec<SocketAddr> = (1..=3)
            .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
            .collect();
        let mut q = TxQueue::with_capacity(64);
        for pkt in 0..5u8 {
            for (k, s) in subs.iter().enumerate() {
                q.push(*s, &[pkt * 10 + k as u8; 100]);
            }
        }
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        q.push(v6, &[0; 100]); // unroutable from an IPv4 socket
        let mut plan = TxPlan::new(64);
        assert_eq!(plan.build(&q, true, false), 1);
        assert_eq!(plan.len, 3);
        for (k, slot) in plan.slots[..3].iter().enumerate() {
            assert_eq!((slot.segs, slot.bytes), (5, 500));
            assert_eq!(slot.hdr.msg_iovlen, 5);
            assert!(!slot.hdr.msg_control.is_null());
            // SAFETY: build() pointed msg_iov at msg_iovlen iovecs over the live arena.
            let iovs = unsafe { std::slice::from_raw_parts(slot.hdr.msg_iov, 5) };
            for (pkt, iov) in iovs.iter().enumerate() {
                // SAFETY: each iovec covers one 100-byte datagram inside q's arena.
                let d =
                    unsafe { std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len) };
                assert_eq!(d, &[pkt as u8 * 10 + k as u8; 100][..]);
            }
        }
        // Cut singly (GSO refused): the grouped order is kept, one send per datagram.
        assert_eq!(plan.cut(&q, false, false), 1);
        assert_eq!(plan.len, 15);
        assert_eq!((plan.slots[1].first, plan.slots[1].segs), (1, 1));
        // SAFETY: one iovec over a live datagram of q.
        let d1 = unsafe { *(*plan.slots[1].hdr.msg_iov).iov_base.cast::<u8>() };
        assert_eq!(d1, 10); // packet 1 to subscriber 0
                            // Without GSO: one send per datagram, queue order kept.
        assert_eq!(plan.build(&q, false, false), 1);
        assert_eq!(plan.len, 15);
        assert_eq!(plan.slots[1].first, 1);
        assert!(plan.slots[1].hdr.msg_control.is_null());
        // Adjacent datagrams to one destination share one iovec.
        let mut q = TxQueue::with_capacity(8);
        for _ in 0..4 {
            q.push(subs[0], &[7; 100]);
        }
        plan.build(&q, true, false);
        assert_eq!((plan.len, plan.slots[0].hdr.msg_iovlen), (1, 1));
        assert_eq!(plan.slots[0].bytes, 400);
    }

    #[test]
    fn sockaddr_roundtrip() {
        let mut st: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let v4: SocketAddr = "10.0.0.1:99".parse().unwrap();
        let n = std_to_sockaddr(v4, true, &mut st).unwrap();
        // SAFETY: std_to_sockaddr wrote n bytes into st.
        let back =
            unsafe { sockaddr_to_std((&st as *const libc::sockaddr_storage).cast(), n as usize) };
        assert_eq!(back, Some(v4));
        let n = std_to_sockaddr(v4, false, &mut st).unwrap();
        // SAFETY: as above.
        let back =
            unsafe { sockaddr_to_std((&st as *const libc::sockaddr_storage).cast(), n as usize) };
        assert_eq!(back, Some(v4));
        let v6: SocketAddr = "[::1]:7".parse().unwrap();
        assert!(std_to_sockaddr(v6, false, &mut st).is_none());
    }
}
