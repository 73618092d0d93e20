#![allow(unsafe_code)]
//! Waking another worker: one `eventfd` per worker, written by a worker that handed feedback
//! to it (at most once per handing turn and target, and not again while the target has not
//! taken the last wake), watched by the target's backend through a per-worker `epoll` set that
//! also holds the slow-path connection (a backend watches one fd, [`Backend::watch_readable`]).
//!
//! Owns: these fds and their three syscalls (`write` to wake, `epoll_wait` with no timeout and
//! `read` to take a wake), none of them per packet. The forwarding engine only reports which
//! workers it handed feedback to (`Engine::take_wakes`); docs/ENGINE.md "Feedback across
//! workers" has the latency this buys.
//!
//! [`Backend::watch_readable`]: crate::io::Backend::watch_readable

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// One eventfd per worker, shared by all workers.
pub struct Wakers {
    fds: Box<[OwnedFd]>,
    /// Set by the first wake after the target took the last one: later wakes skip the write.
    signalled: Box<[AtomicBool]>,
}

impl Wakers {
    /// One non-blocking eventfd for each of `n` workers.
    pub fn new(n: usize) -> io::Result<Wakers> {
        let mut fds = Vec::with_capacity(n);
        for _ in 0..n {
            // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just returned by eventfd and is owned by nothing else.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        Ok(Wakers {
            fds: fds.into_boxed_slice(),
            signalled: (0..n).map(|_| AtomicBool::new(false)).collect(),
        })
    }

    /// Wake worker `w` (no-op when it is already signalled or out of range).
    pub fn wake(&self, w: usize) {
        let (Some(fd), Some(s)) = (self.fds.get(w), self.signalled.get(w)) else {
            return;
        };
        if s.swap(true, Ordering::AcqRel) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. EAGAIN (counter full)
        // means a wake is pending anyway.
        let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Worker `w` takes its wake: the counter is reset and later wakes write again.
    fn take(&self, w: usize) {
        let (Some(fd), Some(s)) = (self.fds.get(w), self.signalled.get(w)) else {
            return;
        };
        s.store(false, Ordering::Release);
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from an eventfd we own; EAGAIN: nothing to take.
        let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    fn fd(&self, w: usize) -> Option<RawFd> {
        self.fds.get(w).map(AsRawFd::as_raw_fd)
    }
}

/// One worker's watch set: its wake fd and the slow-path connection (when there is one) in
/// one epoll instance, whose fd the backend watches.
pub struct WatchSet {
    ep: OwnedFd,
    conn: Option<RawFd>,
    me: usize,
}

impl WatchSet {
    /// The watch set of worker `me`, holding its wake fd.
    pub fn new(wakers: &Wakers, me: usize) -> io::Result<WatchSet> {
        // SAFETY: no pointers; a non-negative result is a new fd we own.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `ep` was just returned by epoll_create1 and is owned by nothing else.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        let set = WatchSet { ep, conn: None, me };
        if let Some(fd) = wakers.fd(me) {
            set.ctl(libc::EPOLL_CTL_ADD, fd)?;
        }
        Ok(set)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: `ev` is a live epoll_event; the fds are ours or the caller's open fd.
        let r = unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The fd the backend watches.
    pub fn fd(&self) -> RawFd {
        self.ep.as_raw_fd()
    }

    /// Watch `conn` (the slow-path connection) instead of the one watched before. A replaced
    /// connection is already closed, which removed it from the set.
    pub fn set_connection(&mut self, conn: Option<RawFd>) -> io::Result<()> {
        if let Some(old) = self.conn.take() {
            // Closed fds leave the set by themselves; a still-open one is removed here.
            let _ = self.ctl(libc::EPOLL_CTL_DEL, old);
        }
        if let Some(fd) = conn {
            self.ctl(libc::EPOLL_CTL_ADD, fd)?;
            self.conn = Some(fd);
        }
        Ok(())
    }

    /// The backend reported the set readable: take this worker's wake and collect the set's
    /// events (so it reports the next one again). True when the slow-path connection is
    /// readable.
    pub fn take(&self, wakers: &Wakers) -> bool {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 2];
        // SAFETY: `evs` is a live array of 2 epoll_events; timeout 0 never blocks.
        let n = unsafe { libc::epoll_wait(self.ep.as_raw_fd(), evs.as_mut_ptr(), 2, 0) };
        let mut conn = false;
        for e in evs.iter().take(n.max(0) as usize) {
            if Some(e.u64 as RawFd) == self.conn {
                conn = true;
            } else {
                wakers.take(self.me);
            }
        }
        conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::TxQueue;
    use crate::engine::FeedbackHub;
    use crate::io::BackendChoice;
    use crate::worker::{spawn_workers, Handler, WorkerConfig};
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, timeout 0.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn a_wake_makes_the_watch_set_readable_once() {
        let w = Wakers::new(2).unwrap();
        let set = WatchSet::new(&w, 1).unwrap();
        assert!(!readable(set.fd()));
        w.wake(1);
        w.wake(1);
        assert!(readable(set.fd()));
        assert!(!set.take(&w), "the wake, not the connection");
        assert!(!readable(set.fd()), "taken");
        w.wake(0);
        assert!(!readable(set.fd()), "another worker's wake");
        w.wake(1);
        assert!(readable(set.fd()), "woken again after the take");
    }

    /// Two real workers on one SO_REUSEPORT port. Each datagram a worker receives stands for
    /// a NACK about a publisher the other worker receives: it is handed over through the
    /// [`FeedbackHub`] (with its arrival time), and the other worker takes it in its next
    /// `end_batch`, where the engine answers from its cache; that time minus the arrival is
    /// the relay-side latency of a cross-worker NACK.
    struct Crossing {
        me: usize,
        hub: Arc<FeedbackHub>,
        epoch: Instant,
        wake: bool,
        handed: bool,
        seen: Arc<Mutex<Vec<Duration>>>,
    }

    impl Handler for Crossing {
        fn on_datagram(
            &mut self,
            _: SocketAddr,
            _: &mut [u8],
            _: usize,
            _: &mut TxQueue,
            _: &mut TxQueue,
        ) {
            let at = self.epoch.elapsed().as_nanos() as u64;
            let _ = self.hub.hand(1 - self.me, 0, &at.to_be_bytes());
            self.handed = true;
        }
        fn end_batch(&mut self, _: Instant, _: &mut TxQueue, _: &mut TxQueue) {
            let now = self.epoch.elapsed().as_nanos() as u64;
            while let Some(h) = self.hub.take(self.me) {
                let mut b = [0u8; 8];
                b.copy_from_slice(h.packet());
                let at = u64::from_be_bytes(b);
                self.seen
                    .lock()
                    .unwrap()
                    .push(Duration::from_nanos(now.saturating_sub(at)));
            }
        }
        fn take_wakes(&mut self, wake: &mut dyn FnMut(usize)) {
            if self.handed && self.wake {
                wake(1 - self.me);
            }
            self.handed = false;
        }
    }

    /// p50 and p99 of the hand-over latency over `n` datagrams sent 2 ms apart (the workers
    /// idle in between), with or without the wake.
    fn crossing(wake: bool, n: usize) -> (Duration, Duration) {
        let hub = Arc::new(FeedbackHub::new(2));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let epoch = Instant::now();
        let (h, s) = (hub.clone(), seen.clone());
        let workers = spawn_workers(
            WorkerConfig {
                bind: "127.0.0.1:0".parse().unwrap(),
                workers: Some(2),
                backend: BackendChoice::Mmsg,
                pin: false,
                ..WorkerConfig::default()
            },
            move |me| Crossing {
                me,
                hub: h.clone(),
                epoch,
                wake,
                handed: false,
                seen: s.clone(),
            },
        )
        .expect("workers");
        let to = workers.local_addr();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..n {
            client.send_to(&[0x80, 205, 0, 0], to).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(100));
        workers.stop().expect("stop");
        let mut v = seen.lock().unwrap().clone();
        assert_eq!(v.len(), n, "every hand-over taken");
        v.sort_unstable();
        (v[n / 2], v[n * 99 / 100])
    }

    /// docs/BENCHMARKS.md "Cross-worker NACK latency": the wake against the baseline without
    /// it (the owner takes its inbox at its next poll timeout), same run.
    #[test]
    fn a_wake_brings_cross_worker_feedback_under_a_millisecond() {
        let (base50, base99) = crossing(false, 300);
        let (w50, w99) = crossing(true, 300);
        eprintln!(
            "cross-worker hand-over to resend: without wake p50 {base50:?} p99 {base99:?}; \
             with wake p50 {w50:?} p99 {w99:?}; p99 ratio {:.1}x",
            base99.as_secs_f64() / w99.as_secs_f64().max(1e-9)
        );
        // The figures depend on how busy the machine's cores are; the wake must beat the
        // poll timeout by far at the median and clearly at the tail.
        assert!(w50 < Duration::from_millis(1), "{w50:?}");
        assert!(w99 < base99 / 2, "{w99:?} vs {base99:?}");
    }
}
