//! The bench's few system calls that std does not offer: `sendmmsg`/`recvmmsg` batches on
//! connected or unconnected UDP sockets (optionally UDP GSO), UDP socket options,
//! per-thread CPU time, SIGINT/SIGTERM as a flag, and OpenSSL's DTLS retransmission timer
//! (for the WebRTC mode's handshakes).
//!
//! Owns: every `unsafe` block of the bench (each with a `// SAFETY:` comment). May not touch:
//! packet contents, the clock, the admin API.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Largest datagram the bench receives.
pub const RECV_SLOT: usize = 2048;

/// Most datagrams one UDP GSO send may carry (the kernel's `UDP_MAX_SEGMENTS` is 64 on older
/// kernels; later ones allow more, 64 is accepted by all that support GSO).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Largest UDP payload of one GSO send before segmentation (IPv4: 65535 − 20 − 8).
pub const GSO_MAX_BYTES: usize = 65_507;

/// Room for one `cmsghdr` carrying a `u16` (`CMSG_SPACE(2)`), as u64s for alignment.
const CMSG_WORDS: usize = 4;

/// Reusable `sendmmsg` state for up to `cap` datagrams on a *connected* socket.
///
/// Without GSO each datagram is one message. With GSO (UDP_SEGMENT, Linux ≥ 4.18) runs of
/// equal-size datagrams share one message: its iovecs are the datagrams and a `UDP_SEGMENT`
/// control message tells the kernel where to cut, so one `sendmmsg` carries several such
/// messages and the stack sees one large packet per message until segmentation.
pub struct SendBatch {
    iov: Vec<libc::iovec>,
    hdr: Vec<libc::mmsghdr>,
    /// Datagrams in each message of the last call.
    segs: Vec<usize>,
    cmsg: Vec<[u64; CMSG_WORDS]>,
    /// Messages the kernel took in the last call.
    last_messages: usize,
}

// SAFETY: the raw pointers inside `iov`/`hdr` are rewritten from borrowed slices on every
// `send` call and never dereferenced between calls, so moving the struct between threads
// cannot create a dangling access.
unsafe impl Send for SendBatch {}

impl SendBatch {
    pub fn new(cap: usize) -> SendBatch {
        let cap = cap.max(1);
        SendBatch {
            // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is valid
            // (null pointers, zero lengths).
            iov: vec![unsafe { mem::zeroed() }; cap],
            hdr: vec![unsafe { mem::zeroed() }; cap],
            segs: vec![0; cap],
            cmsg: vec![[0u64; CMSG_WORDS]; cap],
            last_messages: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.hdr.len()
    }

    /// Messages (with GSO: each carrying one or more datagrams) the last call sent.
    pub fn last_messages(&self) -> usize {
        self.last_messages
    }

    /// Send `arena[i*slot .. i*slot + lens[i]]` for every `i` in one `sendmmsg` on the
    /// connected socket `fd`, one message per datagram. Returns how many datagrams the kernel
    /// took (it may take fewer than asked).
    pub fn send(
        &mut self,
        fd: RawFd,
        arena: &[u8],
        slot: usize,
        lens: &[usize],
    ) -> io::Result<usize> {
        self.send_with(fd, arena, slot, lens, None)
    }

    /// As [`SendBatch::send`], with `gso = Some(seg)`: consecutive datagrams of exactly `seg`
    /// bytes are packed into GSO messages of at most [`gso_segments`]`(seg)` datagrams (one
    /// shorter datagram may end a message; a longer one goes alone, unsegmented). The kernel
    /// takes or refuses a GSO message whole; the count returned is in datagrams.
    pub fn send_with(
        &mut self,
        fd: RawFd,
        arena: &[u8],
        slot: usize,
        lens: &[usize],
        gso: Option<usize>,
    ) -> io::Result<usize> {
        self.last_messages = 0;
        let n = lens.len().min(self.iov.len());
        if n == 0 {
            return Ok(0);
        }
        for (i, &len) in lens[..n].iter().enumerate() {
            let data = &arena[i * slot..i * slot + len];
            self.iov[i] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
        }
        // Group datagrams into messages: (first iovec, count, GSO size or 0).
        let max_segs = gso.map_or(1, gso_segments);
        let mut msgs = 0;
        let mut i = 0;
        while i < n {
            let first = i;
            let mut seg = 0;
            if let Some(s) = gso.filter(|&s| lens[i] <= s && max_segs > 1) {
                seg = s;
                // Equal-size datagrams, then at most one shorter one to close the message.
                while i < n && i - first < max_segs {
                    let l = lens[i];
                    i += 1;
                    if l != s {
                        break;
                    }
                    if i < n && lens[i] > s {
                        break;
                    }
                }
            } else {
                i += 1;
            }
            let count = i - first;
            self.segs[msgs] = count;
            let h = &mut self.hdr[msgs];
            h.msg_hdr.msg_name = ptr::null_mut();
            h.msg_hdr.msg_namelen = 0;
            h.msg_hdr.msg_iov = &mut self.iov[first];
            h.msg_hdr.msg_iovlen = count as _;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
            if seg > 0 && count > 1 {
                let buf = &mut self.cmsg[msgs];
                *buf = [0; CMSG_WORDS];
                h.msg_hdr.msg_control = buf.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure size computation.
                h.msg_hdr.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
                // SAFETY: `msg_control` points at `buf`, which is CMSG_WORDS u64s (32 bytes,
                // 8-aligned) ≥ CMSG_SPACE(2) = 24 bytes, so the first header and its two data
                // bytes lie inside it; CMSG_FIRSTHDR is non-null because controllen ≥ the
                // header size.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
                }
            } else {
                h.msg_hdr.msg_control = ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
            }
            msgs += 1;
        }
        // SAFETY: `hdr[..msgs]` point at disjoint runs of `iov[..n]`, which point into
        // `arena`, and at their own `cmsg` buffers; all outlive the call and the kernel only
        // reads them. The sockets are connected, so no address is needed.
        let rc = unsafe { libc::sendmmsg(fd, self.hdr.as_mut_ptr(), msgs as libc::c_uint, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.last_messages = rc as usize;
        Ok(self.segs[..rc as usize].iter().sum())
    }
}

/// Datagrams of `seg` bytes one GSO message carries: bounded by [`GSO_MAX_SEGMENTS`] and by
/// the largest UDP payload.
pub fn gso_segments(seg: usize) -> usize {
    (GSO_MAX_BYTES / seg.max(1)).clamp(1, GSO_MAX_SEGMENTS)
}

fn set_udp_opt(fd: RawFd, opt: libc::c_int, val: libc::c_int) -> io::Result<()> {
    // SAFETY: `val` is a live c_int and its size is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            opt,
            (&val as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Let the kernel hand this socket coalesced GSO packets whole (UDP_GRO, Linux ≥ 5.0): a
/// sink that never reads then costs the sender no per-datagram segmentation on loopback.
pub fn set_udp_gro(fd: RawFd) -> io::Result<()> {
    set_udp_opt(fd, libc::UDP_GRO, 1)
}

/// Whether UDP GSO works from `ip`: sends two 8-byte datagrams as one GSO message between
/// two fresh sockets and checks both arrive as separate datagrams.
pub fn gso_works(ip: std::net::IpAddr) -> bool {
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;
    let probe = || -> io::Result<bool> {
        let rx = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        let tx = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        tx.connect(rx.local_addr()?)?;
        let arena = [7u8; 16];
        let mut sb = SendBatch::new(2);
        if sb.send_with(tx.as_raw_fd(), &arena, 8, &[8, 8], Some(8))? != 2 {
            return Ok(false);
        }
        let mut rb = RecvBatch::new(4);
        let mut got = Vec::new();
        for _ in 0..50 {
            let n = rb.recv(rx.as_raw_fd())?;
            for i in 0..n {
                got.push(rb.slot(i).1);
            }
            if got.len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(got == [8, 8])
    };
    probe().unwrap_or(false)
}

/// Reusable `recvmmsg` state: `cap` receive slots of [`RECV_SLOT`] bytes.
pub struct RecvBatch {
    arena: Box<[u8]>,
    iov: Vec<libc::iovec>,
    hdr: Vec<libc::mmsghdr>,
}

// SAFETY: as for `SendBatch`: pointers are rebuilt before every call from `self.arena`.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(cap: usize) -> RecvBatch {
        let cap = cap.max(1);
        RecvBatch {
            arena: vec![0u8; cap * RECV_SLOT].into_boxed_slice(),
            // SAFETY: all-zero iovec/mmsghdr are valid (see SendBatch::new).
            iov: vec![unsafe { mem::zeroed() }; cap],
            hdr: vec![unsafe { mem::zeroed() }; cap],
        }
    }

    /// Receive up to the capacity without blocking. `Ok(0)` means nothing was waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.hdr.len();
        let base = self.arena.as_mut_ptr();
        for i in 0..n {
            self.iov[i] = libc::iovec {
                // SAFETY: i * RECV_SLOT + RECV_SLOT <= arena.len() by construction.
                iov_base: unsafe { base.add(i * RECV_SLOT) }.cast(),
                iov_len: RECV_SLOT,
            };
            let h = &mut self.hdr[i];
            h.msg_hdr.msg_name = ptr::null_mut();
            h.msg_hdr.msg_namelen = 0;
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at its own iovec, which points at a disjoint
        // RECV_SLOT-byte region of `arena`; all outlive the call. MSG_DONTWAIT: never blocks.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.hdr.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(rc as usize)
    }

    /// Datagram `i` of the last `recv`: its whole slot (for in-place decryption) and length.
    pub fn slot(&mut self, i: usize) -> (&mut [u8], usize) {
        let len = (self.hdr[i].msg_len as usize).min(RECV_SLOT);
        (&mut self.arena[i * RECV_SLOT..(i + 1) * RECV_SLOT], len)
    }
}

fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: all-zero rusage is valid; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: `ru` is a live, writable rusage.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time (user + system) of the calling thread so far.
pub fn thread_cpu() -> Duration {
    rusage(libc::RUSAGE_THREAD)
}

/// CPU time (user + system) of the whole process so far.
pub fn process_cpu() -> Duration {
    rusage(libc::RUSAGE_SELF)
}

/// Why a process's CPU time could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcStatError {
    #[error("/proc/{pid}/stat: {source}")]
    Read { pid: u32, source: io::Error },
    #[error("/proc/{pid}/stat: {what}")]
    Malformed { pid: u32, what: &'static str },
}

/// Clock ticks per second of `/proc/PID/stat`'s times (`_SC_CLK_TCK`).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects; it returns -1 for an unknown name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `utime` and `stime` (fields 14 and 15) of a `/proc/PID/stat` line, in ticks. The command
/// name (field 2) is in parentheses and may hold spaces and parentheses itself, so fields are
/// counted after its last `)`.
pub fn parse_stat_times(stat: &str) -> Result<(u64, u64), &'static str> {
    let rest = stat
        .rsplit_once(')')
        .ok_or("no `)` after the command name")?
        .1;
    // After the name: state is field 3, so utime (14) is the 12th and stime (15) the 13th.
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let mut next = || -> Result<u64, &'static str> {
        fields
            .next()
            .ok_or("fewer than 15 fields")?
            .parse()
            .map_err(|_| "utime or stime is not a number")
    };
    Ok((next()?, next()?))
}

/// CPU seconds of a process or a set of processes, split as the kernel accounts them
/// (`utime` and `stime` of `/proc/PID/stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CpuTimes {
    pub user_s: f64,
    pub system_s: f64,
}

impl CpuTimes {
    pub fn total_s(&self) -> f64 {
        self.user_s + self.system_s
    }

    /// What was used between `earlier` and `self` (never negative).
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: (self.user_s - earlier.user_s).max(0.0),
            system_s: (self.system_s - earlier.system_s).max(0.0),
        }
    }

    pub fn add(&self, other: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: self.user_s + other.user_s,
            system_s: self.system_s + other.system_s,
        }
    }
}

/// CPU time of process `pid` so far (all its threads), from `/proc/PID/stat`.
pub fn pid_cpu(pid: u32) -> Result<CpuTimes, ProcStatError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| ProcStatError::Read { pid, source })?;
    let (user, system) =
        parse_stat_times(&stat).map_err(|what| ProcStatError::Malformed { pid, what })?;
    let hz = clock_ticks();
    Ok(CpuTimes {
        user_s: user as f64 / hz,
        system_s: system as f64 / hz,
    })
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Async-signal-safe: one atomic store.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Route SIGINT and SIGTERM to a flag read by [`interrupted`] (the run then stops its
/// threads and removes its sessions). A second signal still only sets the flag.
pub fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: all-zero sigaction is valid; we set the handler and an empty mask, and
        // `on_signal` only performs an atomic store (async-signal-safe).
        unsafe {
            let mut sa: libc::sigaction = mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, ptr::null_mut());
        }
    }
}

/// True once SIGINT or SIGTERM arrived (after [`catch_interrupts`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// `DTLS_CTRL_HANDLE_TIMEOUT` from `openssl/ssl.h` (`DTLSv1_handle_timeout` is a C macro the
/// `openssl` crate does not wrap).
const DTLS_CTRL_HANDLE_TIMEOUT: libc::c_int = 74;

/// `DTLSv1_handle_timeout`: retransmit the last flight if OpenSSL's timer has expired. Returns
/// 1 when a flight was retransmitted, 0 when nothing was due, negative on a fatal error.
pub fn dtls_handle_timeout(ssl: &openssl::ssl::SslRef) -> libc::c_long {
    use foreign_types::ForeignTypeRef;
    // SAFETY: `ssl.as_ptr()` is a live `SSL*` owned by the borrowed `SslRef`, which its owner
    // (`webrtc::dtls::Dtls`, through `&mut self`) does not use concurrently. The control
    // takes no argument (`parg` NULL) and may only write to the BIO the same `SSL` owns.
    unsafe { openssl_sys::SSL_ctrl(ssl.as_ptr(), DTLS_CTRL_HANDLE_TIMEOUT, 0, ptr::null_mut()) }
}

/// First DTLS retransmission timeout: 100 ms, as browsers use, instead of OpenSSL's 1 s (the
/// peer has already answered ICE checks; a first flight the server dropped because its own ICE
/// was not ready yet would otherwise cost a whole second of "handshake time").
const DTLS_INITIAL_RETRANSMIT_US: libc::c_uint = 100_000;
/// Upper bound of the doubling timer.
const DTLS_MAX_RETRANSMIT_US: libc::c_uint = 3_000_000;

type DtlsTimerCb =
    unsafe extern "C" fn(ssl: *mut openssl_sys::SSL, timer_us: libc::c_uint) -> libc::c_uint;

extern "C" {
    // void DTLS_set_timer_cb(SSL *s, DTLS_timer_cb cb); exported by libssl >= 1.1.1.
    fn DTLS_set_timer_cb(s: *mut openssl_sys::SSL, cb: Option<DtlsTimerCb>);
}

/// `timer_us` is 0 for a first flight, else the previous timeout: double it (RFC 6347
/// §4.2.4.1) up to the bound.
unsafe extern "C" fn dtls_timer_cb(
    _ssl: *mut openssl_sys::SSL,
    timer_us: libc::c_uint,
) -> libc::c_uint {
    if timer_us == 0 {
        DTLS_INITIAL_RETRANSMIT_US
    } else {
        timer_us.saturating_mul(2).min(DTLS_MAX_RETRANSMIT_US)
    }
}

/// Install the bench's DTLS retransmission timer policy on `ssl`.
pub fn dtls_install_timer(ssl: &mut openssl::ssl::SslRef) {
    use foreign_types::ForeignTypeRef;
    // SAFETY: `ssl.as_ptr()` is a live `SSL*` owned by the borrowed `SslRef`; the callback is a
    // plain function with the C signature libssl expects and reads nothing through the pointer.
    unsafe { DTLS_set_timer_cb(ssl.as_ptr(), Some(dtls_timer_cb)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn mmsg_round_trip() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let mut arena = vec![0u8; 4 * 100];
        for i in 0..4 {
            arena[i * 100..i * 100 + 10].fill(i as u8 + 1);
        }
        let mut sb = SendBatch::new(8);
        assert_eq!(
            sb.send(tx.as_raw_fd(), &arena, 100, &[10, 10, 10, 5])
                .unwrap(),
            4
        );
        let mut rb = RecvBatch::new(8);
        let mut got = Vec::new();
        for _ in 0..100 {
            let n = rb.recv(rx.as_raw_fd()).unwrap();
            for i in 0..n {
                let (buf, len) = rb.slot(i);
                got.push(buf[..len].to_vec());
            }
            if got.len() == 4 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], vec![1u8; 10]);
        assert_eq!(got[3], vec![4u8; 5]);
        assert_eq!(rb.recv(rx.as_raw_fd()).unwrap(), 0);
    }

    #[test]
    fn gso_batches_arrive_as_datagrams() {
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        if !gso_works(ip) {
            crate::skip_report::skip("UDP GSO not available on loopback");
            return;
        }
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        // 70 datagrams of 100 bytes (two GSO messages: 64 + 6), then a short one, then a
        // long one that must go alone.
        let slot = 300;
        let mut lens = vec![100usize; 70];
        lens.push(40);
        lens.push(250);
        let mut arena = vec![0u8; slot * lens.len()];
        for (i, &l) in lens.iter().enumerate() {
            arena[i * slot..i * slot + l].fill(i as u8);
        }
        let mut sb = SendBatch::new(lens.len());
        assert_eq!(
            sb.send_with(tx.as_raw_fd(), &arena, slot, &lens, Some(100))
                .unwrap(),
            lens.len()
        );
        assert_eq!(
            sb.last_messages(),
            3,
            "64, then 6 closed by the short one, then the long one"
        );
        let mut rb = RecvBatch::new(32);
        let mut got = Vec::new();
        for _ in 0..200 {
            let n = rb.recv(rx.as_raw_fd()).unwrap();
            for i in 0..n {
                let (buf, len) = rb.slot(i);
                got.push(buf[..len].to_vec());
            }
            if got.len() == lens.len() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got.len(), lens.len());
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d, &vec![i as u8; lens[i]], "datagram {i}");
        }
        assert_eq!(gso_segments(1200), 54);
        assert_eq!(gso_segments(100), GSO_MAX_SEGMENTS);
        assert_eq!(gso_segments(0), GSO_MAX_SEGMENTS);
    }

    #[test]
    fn stat_times_are_counted_after_the_command_name() {
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 3 0";
        assert_eq!(parse_stat_times(line), Ok((1234, 567)));
        assert!(parse_stat_times("4242 (x) S 1 2").is_err());
        assert!(parse_stat_times("4242 x S").is_err());
        let me = pid_cpu(std::process::id()).expect("our own stat");
        assert!(me.user_s >= 0.0 && me.system_s >= 0.0);
    }

    #[test]
    fn cpu_time_moves() {
        // Busy until the thread's CPU clock ticks (its granularity and a busy machine decide
        // how long that takes), within a generous bound.
        let a = thread_cpu();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while thread_cpu() <= a {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the thread CPU clock never moved"
            );
        }
        assert!(process_cpu() >= thread_cpu());
    }
}
