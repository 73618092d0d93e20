//! The bench's few system calls that std does not offer: `sendmmsg`/`recvmmsg` batches on
//! connected or unconnected UDP sockets, per-thread CPU time, and SIGINT/SIGTERM as a flag.
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

/// Reusable `sendmmsg` state for up to `cap` datagrams on a *connected* socket.
pub struct SendBatch {
    iov: Vec<libc::iovec>,
    hdr: Vec<libc::mmsghdr>,
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
        }
    }

    pub fn capacity(&self) -> usize {
        self.hdr.len()
    }

    /// Send `arena[i*slot .. i*slot + lens[i]]` for every `i` in one `sendmmsg` on the
    /// connected socket `fd`. Returns how many the kernel took (it may take fewer than asked).
    pub fn send(
        &mut self,
        fd: RawFd,
        arena: &[u8],
        slot: usize,
        lens: &[usize],
    ) -> io::Result<usize> {
        let n = lens.len().min(self.hdr.len());
        for i in 0..n {
            let start = i * slot;
            let data = &arena[start..start + lens[i]];
            self.iov[i] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
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
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: `hdr[..n]` point at `iov[..n]`, which point into `arena`; all three outlive
        // the call and the kernel only reads the datagrams. The sockets are connected, so no
        // address is needed.
        let rc = unsafe { libc::sendmmsg(fd, self.hdr.as_mut_ptr(), n as libc::c_uint, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }
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
    fn cpu_time_moves() {
        let a = thread_cpu();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu() > a);
        assert!(process_cpu() >= thread_cpu());
    }
}
