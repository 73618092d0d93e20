//! The io_uring backend: multishot `RecvMsgMulti` into a provided-buffer ring, batched
//! `SendMsg` SQEs with UDP GSO, one `io_uring_enter` per loop turn.
//!
//! Buffer ownership (style.md #5): a receive buffer belongs to the kernel from the moment it
//! is in the buffer ring until its CQE arrives; it is then ours until the handler has run,
//! after which it goes back into the ring. A transmit queue ([`TxSet`]) with its `msghdr`,
//! `iovec`, sockaddr and cmsg storage belongs to the kernel from its flush until every one of
//! its send CQEs came back; meanwhile the handler fills another set. When every set is in
//! flight, flush waits for send completions (receive completions seen meanwhile are stashed,
//! in order, for the next drain). Shutdown cancels the receive and waits for all CQEs; if the
//! kernel does not answer in time the buffers are leaked rather than freed under it.
//!
//! A second fd (the slow-path connection, [`Backend::watch_readable`]) is watched with a
//! one-shot `IORING_OP_POLL_ADD` (re-armed by each wait after it fired) in the same ring: its
//! readiness is one more CQE reaped with the datagrams, so neither polling it nor waking for it costs a syscall. The poll's
//! `user_data` carries a watch generation, so CQEs of a poll replaced or cancelled meanwhile
//! are recognised and ignored. A poll references no memory of ours.
//!
//! [`Backend::stop_receiving`] (socket hand-over) cancels the multishot receive with
//! `IORING_OP_ASYNC_CANCEL` and waits for its final CQE, stashing every receive completion
//! posted before it, so after it returns this ring takes no more datagrams from the socket.

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

use super::sys::{sockaddr_to_std, TxPlan};
use super::tcp::TcpRole;
use super::{Backend, BackendParams, IoCounters, IoError, RunningBackend, SocketBuffers};
use crate::batch::TxQueue;

/// Bytes io_uring writes before the name in each provided buffer (`io_uring_recvmsg_out`).
const OUT_HDR: usize = 16;
/// Room reserved for the peer address (a `sockaddr_in6`; IPv4 names are shorter).
const NAME_LEN: usize = mem::size_of::<libc::sockaddr_in6>();
/// Where the payload starts in a provided buffer (no control data is requested).
const PREFIX: usize = OUT_HDR + NAME_LEN;
/// Buffer group id of our provided-buffer ring.
const BGID: u16 = 0;
/// Transmit sets per worker (one filling, the rest may be in flight).
const TX_SETS: usize = 4;

const TAG_SHIFT: u32 = 56;
const TAG_RECV: u64 = 1 << TAG_SHIFT;
const TAG_SEND: u64 = 2 << TAG_SHIFT;
const TAG_CANCEL: u64 = 3 << TAG_SHIFT;
const TAG_POLL: u64 = 4 << TAG_SHIFT;
const TAG_TCP: u64 = 5 << TAG_SHIFT;
const TAG_MASK: u64 = 0xff << TAG_SHIFT;

/// The provided-buffer ring: `entries` ring slots (page-aligned, shared with the kernel) and
/// `entries` receive buffers of `stride` bytes each: the prefix plus a whole
/// [`BackendParams::max_datagram`] for the handler.
struct BufRing {
    ring: *mut BufRingEntry,
    layout: Layout,
    entries: u16,
    stride: usize,
    tail: u16,
    data: Box<[u8]>,
    /// Set when the kernel may still reference the memory: then it is leaked, not freed.
    leak: bool,
}

impl BufRing {
    fn new(entries: u16, max_datagram: usize) -> Result<BufRing, IoError> {
        let stride = PREFIX + max_datagram;
        let layout =
            Layout::from_size_align(entries as usize * mem::size_of::<BufRingEntry>(), 4096)
                .map_err(|e| IoError::Invalid(format!("buffer ring layout: {e}")))?;
        // SAFETY: the layout has a non-zero size (entries >= 1).
        let ring = unsafe { alloc::alloc_zeroed(layout) } as *mut BufRingEntry;
        if ring.is_null() {
            alloc::handle_alloc_error(layout);
        }
        Ok(BufRing {
            ring,
            layout,
            entries,
            stride,
            tail: 0,
            data: vec![0u8; entries as usize * stride].into_boxed_slice(),
            leak: false,
        })
    }

    /// Put buffer `bid` back in the ring (visible to the kernel after [`publish`](Self::publish)).
    #[inline]
    fn recycle(&mut self, bid: u16) {
        let idx = self.tail & (self.entries - 1);
        // SAFETY: idx < entries, inside the ring allocation; the kernel only reads slots
        // between its head and the published tail, and this slot is beyond the published tail.
        let e = unsafe { &mut *self.ring.add(idx as usize) };
        let addr = self.data[bid as usize * self.stride..].as_ptr() as u64;
        e.set_addr(addr);
        e.set_len(self.stride as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make recycled buffers visible to the kernel.
    #[inline]
    fn publish(&self) {
        // SAFETY: `ring` is the page-aligned base of the ring; the tail is the `resv` field of
        // entry 0, a u16 the kernel reads atomically; we are its only writer.
        let tail = unsafe { AtomicU16::from_ptr(BufRingEntry::tail(self.ring) as *mut u16) };
        tail.store(self.tail, Ordering::Release);
    }

    #[inline]
    fn buf(&mut self, bid: u16) -> &mut [u8] {
        &mut self.data[bid as usize * self.stride..(bid as usize + 1) * self.stride]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak {
            mem::forget(mem::take(&mut self.data));
            return;
        }
        // SAFETY: allocated in `new` with this layout; the ring was unregistered (or the
        // io_uring instance closed) before, so the kernel no longer uses it.
        unsafe { alloc::dealloc(self.ring.cast(), self.layout) };
    }
}

/// One transmit queue with the send descriptors pointing into it.
struct TxSet {
    q: TxQueue,
    plan: TxPlan,
    /// Send SQEs whose CQE has not come back.
    inflight: u32,
}

/// io_uring backend for one worker socket. Create it on the worker thread.
pub struct UringBackend {
    // Field order matters for Drop: the ring closes before the memory it points at goes.
    ring: IoUring,
    bufs: BufRing,
    sets: Box<[TxSet]>,
    recv_hdr: Box<libc::msghdr>,
    sock: UdpSocket,
    fd: RawFd,
    v6: bool,
    armed: bool,
    stash: VecDeque<(i32, u32)>,
    scratch: Vec<(u64, i32, u32)>,
    filling: usize,
    gso: bool,
    quiesced: bool,
    /// After [`Backend::stop_receiving`]: the receive is never re-armed.
    recv_stopped: bool,
    /// The fd watched for readability, its generation (in the poll's `user_data`), whether
    /// the poll is in the kernel, and whether it fired since `take_readable`.
    watch_fd: Option<RawFd>,
    watch_gen: u32,
    poll_armed: bool,
    watch_ready: bool,
    /// Passive ICE-TCP ([`UringBackend::attach_tcp`]); its fd's one-shot poll is in the
    /// ring (`tcp_armed`) and fired since the last service (`tcp_signalled`).
    tcp: Option<TcpRole>,
    tcp_armed: bool,
    tcp_signalled: bool,
    counters: IoCounters,
}

fn refused(what: &str, e: io::Error) -> IoError {
    IoError::UringRefused(format!("{what}: {e}"))
}

/// Ring set-up flavours. The default starts at `coop`; `SLUICE_URING_SETUP` (`defer`,
/// `coop` or `plain`) picks where the list starts, for A/B measurements (docs/IO.md); each
/// flavour the kernel refuses falls through to the next. `defer` is not the default because
/// it measured no faster here and made more `io_uring_enter` calls per packet (0.28 against
/// 0.20 with 8 datagrams in flight; docs/BENCHMARKS.md).
///
/// - `defer`: `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` (Linux 6.1): completion
///   work runs only inside our `io_uring_enter(GETEVENTS)`, in one go, instead of
///   interrupting the worker whenever a datagram lands.
/// - `coop`: `SINGLE_ISSUER | COOP_TASKRUN` (5.19): no IPI to tell us about task work.
/// - `plain`: neither.
fn build_ring(sq: u32, cq: u32) -> Result<(IoUring, &'static str), IoError> {
    let start = match std::env::var("SLUICE_URING_SETUP").as_deref() {
        Ok("plain") => 2,
        Ok("defer") => 0,
        _ => 1,
    };
    let mut last = None;
    for (i, name) in ["defer", "coop", "plain"]
        .into_iter()
        .enumerate()
        .skip(start)
    {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq);
        match i {
            0 => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
            1 => {
                b.setup_single_issuer().setup_coop_taskrun();
            }
            _ => {}
        }
        match b.build(sq) {
            Ok(r) => return Ok((r, name)),
            Err(e) => last = Some(e),
        }
    }
    Err(refused(
        "io_uring_setup",
        last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::ENOSYS)),
    ))
}

impl UringBackend {
    /// Set up a ring for `sock` (nonblocking UDP from [`super::bind_udp`]). Refusals by the
    /// kernel or a sandbox come back as [`IoError::UringRefused`].
    pub fn new(sock: UdpSocket, params: BackendParams) -> Result<UringBackend, IoError> {
        let fd = sock.as_raw_fd();
        let v6 = sock
            .local_addr()
            .map_err(|e| IoError::os("getsockname", e))?
            .is_ipv6();
        let cap = params.tx_capacity.max(1);
        let entries = params.recv_buffers.clamp(2, 32768).next_power_of_two() as u16;
        let sq = (cap + 8).next_power_of_two() as u32;
        let cq = (sq * 4).max(entries as u32 * 2);
        let (ring, setup) = build_ring(sq, cq)?;
        tracing::debug!(setup, sq, cq, entries, "io_uring ring");
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| refused("IORING_REGISTER_PROBE", e))?;
        for (op, name) in [
            (opcode::RecvMsgMulti::CODE, "RECVMSG"),
            (opcode::SendMsg::CODE, "SENDMSG"),
            (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
            (opcode::PollAdd::CODE, "POLL_ADD"),
        ] {
            if !probe.is_supported(op) {
                return Err(IoError::UringRefused(format!(
                    "opcode {name} not supported"
                )));
            }
        }
        let mut bufs = BufRing::new(entries, params.datagram_size())?;
        // SAFETY: the ring memory is page aligned, `entries` slots long, and stays allocated
        // until after the io_uring instance is closed (field order) or is leaked.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.ring as u64, entries, BGID, 0)
                .map_err(|e| {
                    refused(
                        "IORING_REGISTER_PBUF_RING (provided buffer rings, Linux 5.19+)",
                        e,
                    )
                })?;
        }
        for bid in 0..entries {
            bufs.recycle(bid);
        }
        bufs.publish();
        // SAFETY: msghdr is a C struct for which all-zero bytes are valid.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
        recv_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
        let sets = (0..TX_SETS)
            .map(|_| TxSet {
                q: TxQueue::new(cap, params.datagram_size()),
                plan: TxPlan::new(cap),
                inflight: 0,
            })
            .collect();
        Ok(UringBackend {
            ring,
            bufs,
            sets,
            recv_hdr,
            sock,
            fd,
            v6,
            armed: false,
            stash: VecDeque::with_capacity(entries as usize + cq as usize),
            scratch: Vec::with_capacity(64),
            filling: 0,
            gso: super::gso_supported(),
            quiesced: true,
            recv_stopped: false,
            watch_fd: None,
            watch_gen: 0,
            poll_armed: false,
            watch_ready: false,
            tcp: None,
            tcp_armed: false,
            tcp_signalled: false,
            counters: IoCounters::default(),
        })
    }

    /// Also carry passive ICE-TCP: the owner's epoll set is watched with a one-shot poll in
    /// this ring (its readiness is one more CQE), its connections' frames are drained before
    /// the datagrams and datagrams queued for them are written to them framed; a forwarder
    /// hands datagrams for TCP peers to the owner at each flush.
    pub fn attach_tcp(&mut self, role: TcpRole) -> Result<(), IoError> {
        self.tcp = Some(role);
        self.arm_tcp_poll()
    }

    /// Open ICE-TCP connections.
    pub fn tcp_connections(&self) -> usize {
        self.tcp.as_ref().map_or(0, TcpRole::connections)
    }

    /// Arm the one-shot poll on the ICE-TCP side's fd (owner only).
    fn arm_tcp_poll(&mut self) -> Result<(), IoError> {
        let Some(fd) = self.tcp.as_ref().and_then(TcpRole::fd) else {
            return Ok(());
        };
        // One-shot, re-armed by the next wait, as the watched fd's poll (`arm_poll`).
        let e = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(TAG_TCP);
        // SAFETY: a poll SQE points at no memory of ours; the side's epoll fd lives as long
        // as the backend (shutdown cancels the poll before the side is dropped).
        unsafe { Self::push(&mut self.ring, &mut self.counters, &e)? };
        self.tcp_armed = true;
        self.quiesced = false;
        Ok(())
    }

    /// A completion of the ICE-TCP poll.
    fn on_tcp_poll(&mut self, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.tcp_armed = false; // re-armed by the next wait
        }
        if res != -libc::ECANCELED {
            self.tcp_signalled = true;
        }
    }

    /// The socket this backend drives.
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// Queue an SQE, submitting first if the SQ is full.
    ///
    /// # Safety
    /// Everything `e` points at must stay alive and unmoved until its CQE is reaped.
    unsafe fn push(
        ring: &mut IoUring,
        counters: &mut IoCounters,
        e: &squeue::Entry,
    ) -> Result<(), IoError> {
        loop {
            // SAFETY: forwarded from the caller.
            if unsafe { ring.submission().push(e) }.is_ok() {
                return Ok(());
            }
            counters.syscalls += 1;
            match ring.submit() {
                Ok(_) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        || e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(IoError::os("io_uring_enter(submit)", e)),
            }
        }
    }

    fn arm_recv(&mut self) -> Result<(), IoError> {
        let e = opcode::RecvMsgMulti::new(Fd(self.fd), &*self.recv_hdr, BGID)
            .build()
            .user_data(TAG_RECV);
        // SAFETY: recv_hdr is boxed and lives as long as the ring; the buffers come from the
        // registered ring, which outlives the op (see the module doc).
        unsafe { Self::push(&mut self.ring, &mut self.counters, &e)? };
        self.armed = true;
        self.quiesced = false;
        self.counters.rx_rearms += 1;
        Ok(())
    }

    /// Arm a one-shot poll on the watched fd (its SQE goes out with the next submit; the next
    /// wait re-arms it after its completion). Not multishot: the watched fd is an epoll set
    /// (worker/wake.rs), and a multishot poll on it missed the slow-path replies that should
    /// have woken an idle worker (`slowpath_channel::io_slowpath_reply_wakes_an_idle_worker`);
    /// one SQE per wake-up costs nothing on the packet path.
    fn arm_poll(&mut self) -> Result<(), IoError> {
        let Some(fd) = self.watch_fd else {
            return Ok(());
        };
        let e = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(TAG_POLL | self.watch_gen as u64);
        // SAFETY: a poll SQE points at no memory of ours; the kernel holds its own reference
        // to the file until the poll ends.
        unsafe { Self::push(&mut self.ring, &mut self.counters, &e)? };
        self.poll_armed = true;
        Ok(())
    }

    /// A poll completion: readiness of the watched fd, unless it belongs to a poll of an
    /// earlier generation (replaced or cancelled).
    fn on_poll(&mut self, ud: u64, res: i32, flags: u32) {
        if (ud & 0xffff_ffff) as u32 != self.watch_gen || self.watch_fd.is_none() {
            return;
        }
        if !cqueue::more(flags) {
            self.poll_armed = false; // ended (error, overflow): re-armed by the next wait
        }
        if res >= 0 {
            self.watch_ready = true;
        } else if res != -libc::ECANCELED {
            tracing::debug!(errno = -res, "io_uring poll on the slow-path fd");
            // Read anyway: the read finds out what is wrong with the connection.
            self.watch_ready = true;
        }
    }

    /// Cancel the receive (if armed) and reap until its final CQE, stashing every receive
    /// completion before it for the next drain. Bounded by `deadline`; returns false if the
    /// kernel did not answer in time.
    fn cancel_recv_and_reap(&mut self, deadline: Instant) -> bool {
        if self.armed {
            let e = opcode::AsyncCancel::new(TAG_RECV)
                .build()
                .user_data(TAG_CANCEL);
            // SAFETY: a cancel SQE points at no memory of ours.
            let _ = unsafe { Self::push(&mut self.ring, &mut self.counters, &e) };
        }
        // Completions already posted (and those the submit below flushes) are stashed.
        self.reap_no_handler();
        while self.armed {
            if Instant::now() >= deadline {
                return false;
            }
            let ts = Timespec::new().nsec(50_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            self.counters.syscalls += 1;
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap_no_handler();
        }
        true
    }

    /// Handle one receive completion; returns 1 when a datagram went to `f`.
    fn on_recv<F>(&mut self, res: i32, flags: u32, f: &mut F) -> usize
    where
        F: FnMut(SocketAddr, &mut [u8], usize, &mut TxQueue),
    {
        if !cqueue::more(flags) {
            self.armed = false; // the multishot op ended (ENOBUFS, error, cancel): re-arm in wait
        }
        let bid = cqueue::buffer_select(flags);
        if res < 0 {
            match -res {
                libc::ECANCELED => {}
                libc::ENOBUFS => self.counters.rx_nobufs += 1,
                errno => {
                    self.counters.rx_errors += 1;
                    tracing::debug!(errno, "io_uring recvmsg");
                }
            }
            if let Some(b) = bid {
                self.bufs.recycle(b);
            }
            return 0;
        }
        let Some(bid) = bid else {
            self.counters.rx_errors += 1;
            return 0;
        };
        let parsed = {
            let buf = self.bufs.buf(bid);
            let buf = &buf[..(res as usize).min(buf.len())];
            match RecvMsgOut::parse(buf, &self.recv_hdr) {
                Ok(out) if out.is_payload_truncated() => Err(true),
                Ok(out) => {
                    let name = out.name_data();
                    // SAFETY: `name` is a slice of the kernel-written address bytes.
                    match unsafe { sockaddr_to_std(name.as_ptr(), name.len()) } {
                        Some(src) => Ok((src, out.payload_data().len())),
                        None => Err(false),
                    }
                }
                Err(()) => Err(false),
            }
        };
        let handed = match parsed {
            Ok((src, len)) => {
                self.counters.rx_packets += 1;
                self.counters.rx_bytes += len as u64;
                let set = &mut self.sets[self.filling];
                let buf = &mut self.bufs.buf(bid)[PREFIX..];
                f(src, buf, len, &mut set.q);
                1
            }
            Err(true) => {
                self.counters.rx_oversized += 1;
                0
            }
            Err(false) => {
                self.counters.rx_errors += 1;
                0
            }
        };
        self.bufs.recycle(bid);
        handed
    }

    fn on_send(&mut self, ud: u64, res: i32) {
        let si = ((ud >> 32) & 0xffff) as usize;
        let slot = (ud & 0xffff_ffff) as usize;
        let Some(set) = self.sets.get_mut(si) else {
            return;
        };
        let Some(s) = set.plan.slots[..set.plan.len].get(slot) else {
            return;
        };
        if res >= 0 {
            self.counters.tx_packets += s.segs as u64;
            self.counters.tx_bytes += res as u64;
            if s.segs > 1 {
                self.counters.tx_gso_trains += 1;
            }
        } else {
            let errno = -res;
            if (errno == libc::EIO || errno == libc::EINVAL) && s.segs > 1 {
                if self.gso {
                    tracing::warn!(
                        errno,
                        "UDP GSO refused; sending datagrams singly from now on"
                    );
                    self.gso = false;
                }
                // Resend this train singly rather than lose it (the set is still ours to
                // read: its queue is cleared only after the last CQE below).
                let (sent, bytes, failed) = set.plan.send_slot_singly(self.fd, &set.q, slot);
                self.counters.syscalls += sent + failed;
                self.counters.tx_packets += sent;
                self.counters.tx_bytes += bytes;
                self.counters.tx_errors += failed;
            } else {
                tracing::debug!(errno, "io_uring sendmsg");
                self.counters.tx_errors += s.segs as u64;
            }
        }
        set.inflight = set.inflight.saturating_sub(1);
        if set.inflight == 0 {
            set.q.clear();
        }
    }

    /// Reap everything in the CQ without running the handler: sends complete, receives are
    /// stashed in order for the next drain.
    fn reap_no_handler(&mut self) {
        let mut scratch = mem::take(&mut self.scratch);
        loop {
            scratch.clear();
            scratch.extend(
                self.ring
                    .completion()
                    .take(64)
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if scratch.is_empty() {
                break;
            }
            for &(ud, res, flags) in &scratch {
                match ud & TAG_MASK {
                    TAG_RECV => {
                        if !cqueue::more(flags) {
                            self.armed = false;
                        }
                        self.stash.push_back((res, flags));
                    }
                    TAG_SEND => self.on_send(ud, res),
                    TAG_POLL => self.on_poll(ud, res, flags),
                    TAG_TCP => self.on_tcp_poll(res, flags),
                    _ => {}
                }
            }
        }
        self.scratch = scratch;
    }

    /// True when the set being filled can take no further datagram.
    fn tx_full(&self) -> bool {
        self.sets[self.filling].q.is_full()
    }

    /// Turn the filling set into send SQEs (submitted by the next `io_uring_enter`), then
    /// switch to a free set, waiting for send completions if all are in flight.
    fn flush_filling(&mut self) -> Result<(), IoError> {
        let si = self.filling;
        if self.sets[si].q.is_empty() {
            return Ok(());
        }
        let set = &mut self.sets[si];
        self.counters.tx_unroutable += set.plan.build(&set.q, self.gso, self.v6);
        let n = set.plan.len as u32;
        for (k, slot) in set.plan.slots[..set.plan.len].iter().enumerate() {
            let e = opcode::SendMsg::new(Fd(self.fd), &slot.hdr)
                .build()
                .user_data(TAG_SEND | ((si as u64) << 32) | k as u64);
            // SAFETY: the slot, the plan's iovecs and the queue's arena belong to this set,
            // which is not touched again until all of its `inflight` CQEs are reaped (on_send).
            unsafe { Self::push(&mut self.ring, &mut self.counters, &e)? };
        }
        set.inflight = n;
        if n == 0 {
            set.q.clear();
            return Ok(());
        }
        self.quiesced = false;
        loop {
            for k in 1..=self.sets.len() {
                let c = (si + k) % self.sets.len();
                if self.sets[c].inflight == 0 {
                    self.filling = c;
                    return Ok(());
                }
            }
            self.counters.syscalls += 1;
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
                Err(e) => return Err(IoError::os("io_uring_enter(wait for sends)", e)),
            }
            self.reap_no_handler();
        }
    }
}

impl Backend for UringBackend {
    fn kind(&self) -> RunningBackend {
        RunningBackend::IoUring
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), IoError> {
        if !self.armed && !self.recv_stopped {
            self.arm_recv()?;
        }
        if !self.poll_armed && self.watch_fd.is_some() {
            self.arm_poll()?;
        }
        if !self.tcp_armed && self.tcp.is_some() {
            self.arm_tcp_poll()?;
        }
        let busy = !self.stash.is_empty()
            || self.tcp_signalled
            || self.tcp.as_ref().is_some_and(TcpRole::has_work);
        let want = if busy { 0 } else { 1 };
        let ts = Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = SubmitArgs::new().timespec(&ts);
        self.counters.syscalls += 1;
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(IoError::os("io_uring_enter", e)),
        }
    }

    fn drain<F>(&mut self, max: usize, mut f: F) -> usize
    where
        F: FnMut(SocketAddr, &mut [u8], usize, &mut TxQueue),
    {
        let mut handed = 0;
        if let Some(tcp) = self.tcp.as_mut() {
            tcp.service(mem::take(&mut self.tcp_signalled), &mut self.counters);
            let q = &mut self.sets[self.filling].q;
            handed += tcp.drain(max, q, &mut self.counters, &mut f);
        }
        // A full transmit queue ends the drain (the caller flushes it and drains again);
        // receive completions already taken from the ring wait in the stash, in order.
        while handed < max && !self.tx_full() {
            let Some((res, flags)) = self.stash.pop_front() else {
                break;
            };
            handed += self.on_recv(res, flags, &mut f);
        }
        let mut scratch = mem::take(&mut self.scratch);
        while handed < max && !self.tx_full() {
            scratch.clear();
            let room = (max - handed).min(64);
            scratch.extend(
                self.ring
                    .completion()
                    .take(room)
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if scratch.is_empty() {
                break;
            }
            for &(ud, res, flags) in &scratch {
                match ud & TAG_MASK {
                    TAG_RECV if self.tx_full() => self.stash.push_back((res, flags)),
                    TAG_RECV => handed += self.on_recv(res, flags, &mut f),
                    TAG_SEND => self.on_send(ud, res),
                    TAG_POLL => self.on_poll(ud, res, flags),
                    TAG_TCP => self.on_tcp_poll(res, flags),
                    _ => {}
                }
            }
        }
        self.scratch = scratch;
        self.bufs.publish();
        handed
    }

    fn tx(&mut self) -> &mut TxQueue {
        &mut self.sets[self.filling].q
    }

    fn flush(&mut self) -> Result<(), IoError> {
        if let Some(tcp) = self.tcp.as_mut() {
            tcp.route(&mut self.sets[self.filling].q, &mut self.counters);
        }
        self.flush_filling()
    }

    fn counters(&self) -> &IoCounters {
        &self.counters
    }

    fn shutdown(&mut self) {
        if self.quiesced {
            return;
        }
        let _ = self.watch_readable(None);
        if self.tcp_armed {
            let e = opcode::AsyncCancel::new(TAG_TCP)
                .build()
                .user_data(TAG_CANCEL);
            // SAFETY: a cancel SQE points at no memory of ours.
            let _ = unsafe { Self::push(&mut self.ring, &mut self.counters, &e) };
        }
        if self.armed {
            let e = opcode::AsyncCancel::new(TAG_RECV)
                .build()
                .user_data(TAG_CANCEL);
            // SAFETY: a cancel SQE points at no memory of ours.
            let _ = unsafe { Self::push(&mut self.ring, &mut self.counters, &e) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            // Receives seen now go nowhere; their buffers return to the ring.
            while let Some((_, flags)) = self.stash.pop_front() {
                if let Some(b) = cqueue::buffer_select(flags) {
                    self.bufs.recycle(b);
                }
            }
            if !self.armed && !self.tcp_armed && self.sets.iter().all(|s| s.inflight == 0) {
                self.quiesced = true;
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!("io_uring shutdown: kernel still holds buffers; leaking them");
                break;
            }
            let ts = Timespec::new().nsec(50_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap_no_handler();
        }
        if self.quiesced {
            let _ = self.ring.submitter().unregister_buf_ring(BGID);
        }
    }

    fn stop_receiving(&mut self) {
        self.recv_stopped = true;
        if !self.cancel_recv_and_reap(Instant::now() + Duration::from_secs(2)) {
            tracing::warn!("io_uring: the receive was not cancelled within 2 s");
        }
    }

    fn watch_readable(&mut self, fd: Option<RawFd>) -> Result<(), IoError> {
        if self.poll_armed {
            let e = opcode::AsyncCancel::new(TAG_POLL | self.watch_gen as u64)
                .build()
                .user_data(TAG_CANCEL);
            // SAFETY: a cancel SQE points at no memory of ours.
            unsafe { Self::push(&mut self.ring, &mut self.counters, &e)? };
            self.poll_armed = false;
        }
        // CQEs of the old poll still in flight carry the old generation and are ignored.
        self.watch_gen = self.watch_gen.wrapping_add(1);
        self.watch_fd = fd;
        if fd.is_some() {
            self.arm_poll()?;
        }
        Ok(())
    }

    fn take_readable(&mut self) -> bool {
        mem::take(&mut self.watch_ready)
    }
    fn take_tcp(&mut self) -> Option<TcpRole> {
        self.tcp.take()
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        self.shutdown();
        if !self.quiesced {
            self.bufs.leak = true;
            mem::forget(mem::take(&mut self.sets));
        }
    }
}

/// One-shot check that io_uring can run our receive path here (see [`super::probe_io_uring`]).
pub(crate) fn probe() -> Result<(), IoError> {
    let (sock, _) = super::bind_udp(
        "127.0.0.1:0".parse().expect("literal address"),
        SocketBuffers { recv: 0, send: 0 },
    )?;
    let addr = sock
        .local_addr()
        .map_err(|e| IoError::os("getsockname", e))?;
    let mut b = UringBackend::new(
        sock,
        BackendParams {
            batch: 4,
            tx_capacity: 4,
            recv_buffers: 8,
            ..BackendParams::default()
        },
    )?;
    b.wait(Duration::ZERO)?; // arms the multishot receive
    let client = UdpSocket::bind("127.0.0.1:0").map_err(|e| IoError::os("probe socket", e))?;
    client
        .send_to(b"sluice-probe", addr)
        .map_err(|e| IoError::os("probe send", e))?;
    for _ in 0..20 {
        b.wait(Duration::from_millis(50))?;
        let mut got = false;
        b.drain(4, |_, buf, len, _| got |= &buf[..len] == b"sluice-probe");
        if got {
            return Ok(());
        }
    }
    Err(IoError::UringRefused(
        "multishot RecvMsgMulti delivered nothing (kernel older than 6.0?)".into(),
    ))
}
