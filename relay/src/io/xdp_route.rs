//! Where a frame built by the `xdp` backend goes: route and neighbour lookups in the kernel's
//! own tables over rtnetlink, a per-worker cache of the answers, and a watcher that
//! invalidates every cache when the kernel announces a change to links, addresses, routes or
//! neighbours.
//!
//! The cache is direct-mapped and fixed in size ([`CACHE_SLOTS`]): a destination costs one
//! pair of netlink round trips on its first frame (and after every change), then nothing. A
//! destination the kernel cannot resolve for us (no route, another interface, a local
//! address, no neighbour entry yet) is cached as [`Via::Kernel`]: its datagrams leave through
//! the worker's UDP socket, which lets the kernel resolve the neighbour (ARP) as usual; the
//! next change notification makes the worker look again.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Entries of the per-worker destination cache (a power of two).
pub const CACHE_SLOTS: usize = 4096;

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const RTN_UNICAST: u8 = 1;
/// NUD states in which the entry's link-layer address may be used.
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;
/// RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE.
const WATCH_GROUPS: u32 = 0x1 | 0x4 | 0x10 | 0x40;

/// How a datagram to one IPv4 destination leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Built here: Ethernet to `mac`, IPv4 from `src`.
    Frame { mac: [u8; 6], src: Ipv4Addr },
    /// Through the worker's UDP socket (the kernel resolves it).
    Kernel,
}

/// A netlink route socket for lookups (blocking, with a receive timeout).
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Box<[u8]>,
}

fn nl_socket(groups: u32, timeout: Duration) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is a C struct for which all-zero bytes are valid.
    let mut sa: libc::sockaddr_nl = unsafe { mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = groups;
    // SAFETY: sa is a valid sockaddr_nl of the size passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: tv is a valid timeval of the size passed.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as u32,
        )
    };
    Ok(fd)
}

/// The attributes after a fixed header of `fixed` bytes in one netlink message body.
fn attrs(body: &[u8], fixed: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = body.get(fixed..).unwrap_or(&[]);
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let data = &rest[4..len];
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((ty, data))
    })
}

fn ipv4(d: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(d).ok().map(Ipv4Addr::from)
}

impl Netlink {
    pub fn new() -> io::Result<Netlink> {
        Ok(Netlink {
            fd: nl_socket(0, Duration::from_millis(200))?,
            seq: 0,
            buf: vec![0u8; 16 * 1024].into_boxed_slice(),
        })
    }

    /// Send one request (`ty`, fixed header `head`, attributes `attrs`) and return the body
    /// of the reply of type `want` (`Ok(None)` for a netlink error reply such as ENOENT).
    fn request(
        &mut self,
        ty: u16,
        head: &[u8; 12],
        dst: (u16, [u8; 4]),
        want: u16,
    ) -> io::Result<Option<usize>> {
        self.seq = self.seq.wrapping_add(1);
        // nlmsghdr (16) + fixed header (12) + one 8-byte rtattr holding an IPv4 address.
        let mut msg = [0u8; 36];
        msg[16..28].copy_from_slice(head);
        msg[28..30].copy_from_slice(&8u16.to_ne_bytes());
        msg[30..32].copy_from_slice(&dst.0.to_ne_bytes());
        msg[32..36].copy_from_slice(&dst.1);
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&ty.to_ne_bytes());
        msg[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        // SAFETY: msg is a live buffer of the length passed; the kernel address is implied.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            // SAFETY: buf is a live, writable buffer of the length passed.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let b = &self.buf[..n as usize];
            if b.len() < 16 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "short netlink reply",
                ));
            }
            let mlen = (u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize).min(b.len());
            let mty = u16::from_ne_bytes([b[4], b[5]]);
            let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
            if seq != self.seq {
                continue; // a late reply to an earlier, timed-out request
            }
            if mty == NLMSG_ERROR {
                return Ok(None);
            }
            if mty == want {
                return Ok(Some(mlen));
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected netlink reply",
            ));
        }
    }

    /// How a datagram to `dst` leaves when the relay's frames go out on `ifindex` with source
    /// `bound` (unspecified: the route's preferred source).
    pub fn resolve(&mut self, dst: Ipv4Addr, ifindex: u32, bound: Ipv4Addr) -> io::Result<Via> {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut rt = [0u8; 12];
        rt[0] = libc::AF_INET as u8;
        rt[1] = 32;
        let Some(len) = self.request(RTM_GETROUTE, &rt, (RTA_DST, dst.octets()), RTM_NEWROUTE)?
        else {
            return Ok(Via::Kernel);
        };
        let body = &self.buf[16..len];
        if body.len() < 12 || body[7] != RTN_UNICAST {
            return Ok(Via::Kernel);
        }
        let (mut oif, mut gw, mut pref) = (0u32, None, None);
        for (ty, d) in attrs(body, 12) {
            match ty {
                RTA_OIF => oif = <[u8; 4]>::try_from(d).map(u32::from_ne_bytes).unwrap_or(0),
                RTA_GATEWAY => gw = ipv4(d),
                RTA_PREFSRC => pref = ipv4(d),
                _ => {}
            }
        }
        if oif != ifindex {
            return Ok(Via::Kernel);
        }
        let src = if bound.is_unspecified() {
            match pref {
                Some(p) => p,
                None => return Ok(Via::Kernel),
            }
        } else {
            bound
        };
        let hop = gw.unwrap_or(dst);
        // struct ndmsg: family, pad, pad16, ifindex, state, flags, type.
        let mut nd = [0u8; 12];
        nd[0] = libc::AF_INET as u8;
        nd[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        let Some(len) = self.request(RTM_GETNEIGH, &nd, (NDA_DST, hop.octets()), RTM_NEWNEIGH)?
        else {
            return Ok(Via::Kernel);
        };
        let body = &self.buf[16..len];
        if body.len() < 12 {
            return Ok(Via::Kernel);
        }
        let state = u16::from_ne_bytes([body[8], body[9]]);
        if state & NUD_USABLE == 0 {
            return Ok(Via::Kernel);
        }
        for (ty, d) in attrs(body, 12) {
            if ty == NDA_LLADDR {
                if let Ok(mac) = <[u8; 6]>::try_from(d) {
                    return Ok(Via::Frame { mac, src });
                }
            }
        }
        Ok(Via::Kernel)
    }
}

/// One cached answer.
#[derive(Debug, Clone, Copy)]
struct Slot {
    dst: u32,
    /// Generation it was resolved in; 0 = empty (generations start at 1).
    gen: u32,
    via: Via,
}

/// A worker's destination cache.
pub struct RouteCache {
    slots: Box<[Slot]>,
    gen: Arc<Generation>,
    nl: Netlink,
    ifindex: u32,
    bound: Ipv4Addr,
    /// Netlink lookups made (cache misses).
    pub lookups: u64,
    /// Lookups that failed (netlink error or timeout); the datagram goes through the kernel.
    pub lookup_errors: u64,
}

impl RouteCache {
    pub fn new(gen: Arc<Generation>, ifindex: u32, bound: Ipv4Addr) -> io::Result<RouteCache> {
        Ok(RouteCache {
            slots: vec![
                Slot {
                    dst: 0,
                    gen: 0,
                    via: Via::Kernel
                };
                CACHE_SLOTS
            ]
            .into_boxed_slice(),
            gen,
            nl: Netlink::new()?,
            ifindex,
            bound,
            lookups: 0,
            lookup_errors: 0,
        })
    }

    /// How a datagram to `dst` leaves: from the cache, else one lookup.
    #[inline]
    pub fn via(&mut self, dst: Ipv4Addr) -> Via {
        let key = u32::from(dst);
        let gen = self.gen.current();
        let i = (key.wrapping_mul(0x9e37_79b1) >> 20) as usize & (CACHE_SLOTS - 1);
        let s = self.slots[i];
        if s.gen == gen && s.dst == key {
            return s.via;
        }
        self.lookups += 1;
        let via = match self.nl.resolve(dst, self.ifindex, self.bound) {
            Ok(v) => v,
            Err(e) => {
                self.lookup_errors += 1;
                tracing::debug!(error = %e, %dst, "route lookup");
                Via::Kernel
            }
        };
        self.slots[i] = Slot { dst: key, gen, via };
        via
    }
}

/// The generation of the kernel's tables as the workers see it: bumped by the watcher thread
/// on every change notification; a worker's cached answers from older generations are stale.
#[derive(Debug)]
pub struct Generation {
    gen: AtomicU32,
    stop: AtomicBool,
}

impl Generation {
    #[inline]
    pub fn current(&self) -> u32 {
        self.gen.load(Ordering::Acquire)
    }

    fn bump(&self) {
        // Skip 0, the cache's "empty" mark.
        let g = self.gen.load(Ordering::Relaxed).wrapping_add(1).max(1);
        self.gen.store(g, Ordering::Release);
    }
}

/// The watcher thread; dropping it stops the thread (within its 250 ms receive timeout).
pub struct Watcher {
    pub gen: Arc<Generation>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Subscribe to link, address, route and neighbour changes and start the thread.
    pub fn start() -> io::Result<Watcher> {
        let fd = nl_socket(WATCH_GROUPS, Duration::from_millis(250))?;
        let gen = Arc::new(Generation {
            gen: AtomicU32::new(1),
            stop: AtomicBool::new(false),
        });
        let g = gen.clone();
        let handle = std::thread::Builder::new()
            .name("sluice-xdp-routes".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !g.stop.load(Ordering::Acquire) {
                    // SAFETY: buf is a live, writable buffer of the length passed.
                    let n = unsafe {
                        libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                    };
                    if n > 0 {
                        g.bump();
                    } else if n < 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() == Some(libc::ENOBUFS) {
                            // Notifications were lost: everything may have changed.
                            g.bump();
                        }
                    }
                }
            })?;
        Ok(Watcher {
            gen,
            handle: Some(handle),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.gen.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The MAC address and index of interface `ifname`.
pub fn link(ifname: &str) -> io::Result<(u32, [u8; 6])> {
    let c = std::ffi::CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name"))?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is a C struct for which all-zero bytes are valid.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(ifname.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    // SAFETY: req is a valid ifreq the kernel fills in for SIOCGIFHWADDR.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the ifru_hwaddr member.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok((idx, mac))
}

/// The interface holding IPv4 address `addr`.
pub fn interface_of(addr: Ipv4Addr) -> io::Result<String> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills ifap with a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut p = ifap;
    while !p.is_null() {
        // SAFETY: p is a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
        if unsafe { (*ifa.ifa_addr).sa_family } as i32 != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        if Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) == addr {
            // SAFETY: ifa_name is a NUL-terminated string alive until freeifaddrs.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            found = Some(name.to_string_lossy().into_owned());
            break;
        }
    }
    // SAFETY: ifap came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(ifap) };
    found.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface holds {addr}"),
        )
    })
}
