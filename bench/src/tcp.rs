//! The ICE-TCP transport of `sluice-bench run --transport tcp`: every publisher and every
//! subscriber is one TCP connection to the relay (RFC 6544 active side) carrying RFC 4571
//! frames, bound to its static session by an authenticated ICE check (docs/ICE.md "Static
//! sessions over ICE").
//!
//! Owns: the connections, their nomination and consent checks, framing, pacing and the raw
//! counts of a step, like [`crate::gen`] does for UDP; the probes, SRTP, sequence accounting,
//! sampling and reports are the UDP generator's. May not touch: the admin API (that is
//! [`crate::target`]).
//!
//! Per batch a publisher builds its due frames (length prefix, SRTP packet) back to back in one
//! buffer and writes them with one `write`; a receiver thread polls its subscribers'
//! connections (epoll via mio), reads what is there and takes whole frames out. The connections
//! are nonblocking: a publisher whose connection will not take a batch within
//! [`WRITE_STALL`] (the relay stopped reading) is counted as failed for the rest of the step,
//! since a partly written frame cannot be taken back.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use contract::srtp::MasterKey;
use contract::wire::stun::{self, Class, StunMessage, StunWriter, METHOD_BINDING};
use hdrhistogram::Histogram;
use rand::{Rng, RngCore};

use crate::crypto::{Crypto, RxReject};
use crate::gen::{
    drive, new_hist, random_key, stream_totals, GenError, Live, RigSpec, RxCounts, StepOutcome,
    StepSpec, StreamCounts, ThreadUsage,
};
use crate::probe::{self, Probe};
use crate::seq::{Arrival, SeqTracker};
use crate::target::{IceCredentials, IceWiring, Plan, SessionPlan};

/// How often every connection sends a consent check (browsers: every 2.5–6 s; control expires
/// a session after `control.ice_consent_timeout_secs`, at least 10 s, without one).
pub const CONSENT_EVERY: Duration = Duration::from_secs(2);
/// Longest a publisher waits for its connection to take a batch.
pub const WRITE_STALL: Duration = Duration::from_secs(2);
/// How long the connections may take to be nominated (all of them, one after another).
const NOMINATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Receive buffer per connection: several frames of the largest size.
const RX_BUF: usize = 64 * 1024;

/// One connection to the relay's ICE-TCP port.
struct Conn {
    stream: TcpStream,
    ice: IceCredentials,
    txid: u64,
    next_check: Instant,
    rbuf: Vec<u8>,
    rlen: usize,
}

impl Conn {
    /// A Binding request for this connection's session (`nominate`: with USE-CANDIDATE),
    /// framed.
    fn check_frame(&mut self, nominate: bool) -> Result<(Vec<u8>, [u8; 12]), GenError> {
        self.txid += 1;
        let mut txid = [0u8; 12];
        txid[..8].copy_from_slice(&self.txid.to_be_bytes());
        rand::thread_rng().fill_bytes(&mut txid[8..]);
        let mut buf = [0u8; 512];
        let user = format!("{}:{}", self.ice.ufrag, self.ice.remote_ufrag);
        let stun_err = |e: stun::StunError| GenError::Stun(e.to_string());
        let mut w = StunWriter::new(
            &mut buf[2..],
            stun::message_type(METHOD_BINDING, Class::Request),
            &txid,
        )
        .map_err(stun_err)?;
        w.username(user.as_bytes()).map_err(stun_err)?;
        w.priority(1_518_280_447).map_err(stun_err)?;
        w.ice_controlling(self.txid).map_err(stun_err)?;
        if nominate {
            w.use_candidate().map_err(stun_err)?;
        }
        w.message_integrity(self.ice.pwd.as_bytes())
            .map_err(stun_err)?;
        w.fingerprint().map_err(stun_err)?;
        let n = w.finish();
        // A STUN message of a few attributes is far below 64 KiB.
        buf[..2].copy_from_slice(&(n as u16).to_be_bytes());
        Ok((buf[..2 + n].to_vec(), txid))
    }

    /// Send a consent check when one is due; a connection that cannot take it now tries at
    /// the next turn.
    fn consent(&mut self, now: Instant) {
        if now < self.next_check {
            return;
        }
        if let Ok((f, _)) = self.check_frame(false) {
            if matches!(self.stream.write(&f), Ok(n) if n == f.len()) {
                self.next_check = now + CONSENT_EVERY;
            }
        }
    }

    /// Read what the socket holds into the receive buffer; false at end of stream or on an
    /// error.
    fn fill(&mut self) -> bool {
        loop {
            if self.rlen == self.rbuf.len() {
                return true;
            }
            match self.stream.read(&mut self.rbuf[self.rlen..]) {
                Ok(0) => return false,
                Ok(n) => self.rlen += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Whole frames in the receive buffer, each passed to `f` (mutable, to be unprotected in
    /// place); the rest moves to the front.
    fn frames(&mut self, mut f: impl FnMut(&mut [u8])) {
        let mut off = 0;
        while self.rlen - off >= 2 {
            let n = usize::from(u16::from_be_bytes([self.rbuf[off], self.rbuf[off + 1]]));
            if self.rlen - off < 2 + n {
                break;
            }
            f(&mut self.rbuf[off + 2..off + 2 + n]);
            off += 2 + n;
        }
        self.rbuf.copy_within(off..self.rlen, 0);
        self.rlen -= off;
    }
}

/// Connect to `to` and nominate the connection for `ice`'s session: a check with
/// USE-CANDIDATE every 500 ms until one is answered with a Binding success that verifies.
fn nominate(to: SocketAddr, ice: &IceCredentials, deadline: Instant) -> Result<Conn, GenError> {
    let stream = TcpStream::connect(to)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut c = Conn {
        stream,
        ice: ice.clone(),
        txid: 0,
        next_check: Instant::now() + CONSENT_EVERY,
        rbuf: vec![0u8; RX_BUF],
        rlen: 0,
    };
    while Instant::now() < deadline {
        let (f, txid) = c.check_frame(true)?;
        c.stream.write_all(&f)?;
        let retry = Instant::now() + Duration::from_millis(500);
        let mut answered = false;
        while !answered && Instant::now() < retry {
            match c.stream.read(&mut c.rbuf[c.rlen..]) {
                Ok(0) => return Err(GenError::Nomination("the relay closed the connection")),
                Ok(n) => c.rlen += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.into()),
            }
            let pwd = c.ice.pwd.clone();
            c.frames(|m| {
                if let Ok(m) = StunMessage::parse(m) {
                    answered |= m.transaction_id() == txid
                        && m.class() == Class::SuccessResponse
                        && m.verify_integrity(pwd.as_bytes()).is_ok();
                }
            });
        }
        if answered {
            c.stream.set_read_timeout(None)?;
            c.stream.set_nonblocking(true)?;
            return Ok(c);
        }
    }
    Err(GenError::Nomination(
        "no Binding success: is relay.tcp.enabled set, and the relay's ICE-TCP port the media port?",
    ))
}

struct Publisher {
    conn: Option<Conn>,
    keys: (MasterKey, MasterKey),
    crypto: Crypto,
    ssrc: u32,
    rtp_seq: u16,
    template: Vec<u8>,
    stream: u32,
    next_seq: u64,
    accepted: u64,
    skipped: u64,
    send_errors: u64,
    protect_errors: u64,
    /// The connection stalled or failed this step: the rest of its packets count as errors.
    failed: bool,
}

struct Subscriber {
    conn: Option<Conn>,
    keys: (MasterKey, MasterKey),
    crypto: Crypto,
    stream: u32,
    tracker: SeqTracker,
    rx: RxCounts,
}

/// The generator's ICE-TCP endpoints.
pub struct TcpRig {
    spec: RigSpec,
    pubs: Vec<Publisher>,
    subs: Vec<Subscriber>,
    epoch: Instant,
}

/// A random ICE ufrag (RFC 8839 §5.4 ice-chars), 8 characters.
fn random_ufrag() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..8)
        .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
        .collect()
}

impl TcpRig {
    /// Draw keys and ufrags; nothing is connected until [`TcpRig::wire`].
    pub fn new(spec: RigSpec) -> Result<TcpRig, GenError> {
        let profile = spec.profile.ok_or(GenError::NoProfile)?;
        for (v, name) in [
            (spec.publishers, "--publishers"),
            (spec.fanout, "--fanout"),
            (spec.senders, "--senders"),
            (spec.receivers, "--receivers"),
            (spec.batch, "--batch"),
        ] {
            if v == 0 {
                return Err(GenError::Zero(name));
            }
        }
        let overhead = profile.srtp_overhead();
        if spec.size < probe::MIN_RTP + overhead {
            return Err(GenError::TooSmall {
                size: spec.size,
                min: probe::MIN_RTP + overhead,
            });
        }
        if spec.size > crate::sys::RECV_SLOT {
            return Err(GenError::TooLarge {
                size: spec.size,
                max: crate::sys::RECV_SLOT,
            });
        }
        let rtp_len = spec.size - overhead;
        let mut rng = rand::thread_rng();
        let mut pubs = Vec::with_capacity(spec.publishers);
        for i in 0..spec.publishers {
            let ssrc = rng.next_u32();
            let mut template = vec![0u8; rtp_len];
            probe::template(&mut template, rtp_len, ssrc).expect("size checked");
            pubs.push(Publisher {
                conn: None,
                keys: (random_key(profile), random_key(profile)),
                crypto: Crypto::Null,
                ssrc,
                rtp_seq: rng.next_u32() as u16,
                template,
                stream: i as u32,
                next_seq: 0,
                accepted: 0,
                skipped: 0,
                send_errors: 0,
                protect_errors: 0,
                failed: false,
            });
        }
        let mut subs = Vec::with_capacity(spec.publishers * spec.fanout);
        for p in &pubs {
            for _ in 0..spec.fanout {
                subs.push(Subscriber {
                    conn: None,
                    keys: (random_key(profile), random_key(profile)),
                    crypto: Crypto::Null,
                    stream: p.stream,
                    tracker: SeqTracker::new(spec.window),
                    rx: RxCounts::default(),
                });
            }
        }
        Ok(TcpRig {
            spec,
            pubs,
            subs,
            epoch: Instant::now(),
        })
    }

    pub fn spec(&self) -> &RigSpec {
        &self.spec
    }

    /// The sessions and routes the target must create: peers unknown (their connections'
    /// ports are the kernel's choice), each with a fresh ufrag of ours.
    pub fn plan(&self) -> Result<(Plan, Vec<String>), GenError> {
        let profile = self.spec.profile.ok_or(GenError::NoProfile)?;
        let unbound = SocketAddr::from(([0, 0, 0, 0], 0));
        let s = |keys: (MasterKey, MasterKey)| SessionPlan {
            peer: unbound,
            rx_key: keys.0,
            tx_key: keys.1,
        };
        let plan = Plan {
            profile,
            publishers: self.pubs.iter().map(|p| s(p.keys)).collect(),
            subscribers: self
                .subs
                .iter()
                .map(|x| (s(x.keys), x.stream as usize))
                .collect(),
            publisher_ssrcs: self.pubs.iter().map(|p| p.ssrc).collect(),
        };
        let ufrags = (0..self.pubs.len() + self.subs.len())
            .map(|_| random_ufrag())
            .collect();
        Ok((plan, ufrags))
    }

    /// Connect every endpoint to the relay's ICE-TCP address, nominate each connection and
    /// build the SRTP contexts.
    pub fn wire(&mut self, w: &IceWiring) -> Result<(), GenError> {
        if w.publishers.len() != self.pubs.len() {
            return Err(GenError::Wiring("publisher count"));
        }
        if w.subscribers.len() != self.subs.len() {
            return Err(GenError::Wiring("subscriber count"));
        }
        let deadline = Instant::now() + NOMINATE_TIMEOUT;
        for (p, ice) in self.pubs.iter_mut().zip(&w.publishers) {
            p.conn = Some(nominate(w.tcp_addr, ice, deadline)?);
            p.crypto = Crypto::srtp(p.keys.0, false)?;
        }
        for ((s, ice), key) in self
            .subs
            .iter_mut()
            .zip(&w.subscribers)
            .zip(&w.subscriber_keys)
        {
            s.conn = Some(nominate(w.tcp_addr, ice, deadline)?);
            s.crypto = Crypto::srtp(*key, true)?;
        }
        Ok(())
    }

    /// Run one step of load. `live` is called once per tick from this thread.
    pub fn run_step(&mut self, spec: &StepSpec, mut live: impl FnMut(&Live)) -> StepOutcome {
        for p in &mut self.pubs {
            p.next_seq = 0;
            p.accepted = 0;
            p.skipped = 0;
            p.send_errors = 0;
            p.protect_errors = 0;
            p.failed = false;
        }
        for s in &mut self.subs {
            s.tracker = SeqTracker::new(self.spec.window);
            s.rx = RxCounts::default();
        }
        let n_pubs = self.pubs.len();
        let fanout = self.spec.fanout as u64;
        let per_pub_rate = spec.rate.max(0.0) / n_pubs as f64;
        let batch = self.spec.batch;
        let epoch = self.epoch;
        let senders = self.spec.senders.min(n_pubs);
        let receivers = self.spec.receivers.min(self.subs.len()).max(1);
        let driven = drive(
            spec,
            (&mut self.pubs, senders),
            (&mut self.subs, receivers),
            (fanout, 1),
            &mut live,
            |chunk, lane| {
                send_loop(
                    chunk,
                    SendCtx {
                        per_pub_rate,
                        n_pubs,
                        step: spec.step,
                        epoch,
                        t0: lane.t0,
                        end: lane.end,
                        stop: lane.stop,
                        sent: lane.count,
                        batch,
                    },
                )
            },
            |chunk, lane| {
                recv_loop(
                    chunk,
                    RecvCtx {
                        step: spec.step,
                        epoch,
                        stop: lane.stop,
                        received: lane.count,
                    },
                )
            },
        );
        let streams = stream_totals(
            self.pubs.iter().map(|p| StreamCounts {
                stream: p.stream,
                ssrc: p.ssrc,
                sent: p.accepted,
                messages: p.accepted,
                send_errors: p.send_errors + p.protect_errors,
                skipped: p.skipped,
                subscribers: 0,
                rx: RxCounts::default(),
            }),
            self.subs.iter().map(|s| (s.stream, s.rx, &s.tracker)),
        );
        // Time to first media is a WebRTC join figure (webrtc.rs); not measured here.
        driven.outcome(spec, self.spec.size, streams, Vec::new())
    }
}

struct SendCtx<'a> {
    per_pub_rate: f64,
    n_pubs: usize,
    step: u32,
    epoch: Instant,
    t0: Instant,
    end: Instant,
    stop: &'a AtomicBool,
    sent: &'a AtomicU64,
    batch: usize,
}

/// Write all of `data` to a nonblocking connection, waiting for room at most [`WRITE_STALL`].
fn write_frames(s: &mut TcpStream, mut data: &[u8]) -> bool {
    let give_up = Instant::now() + WRITE_STALL;
    while !data.is_empty() {
        match s.write(data) {
            Ok(0) => return false,
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= give_up {
                    return false;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

fn send_loop(pubs: &mut [Publisher], c: SendCtx<'_>) -> ThreadUsage {
    let cpu0 = crate::sys::thread_cpu();
    let wall0 = Instant::now();
    let slot = pubs
        .first()
        .map_or(0, |p| p.template.len() + p.crypto.overhead());
    let mut out = vec![0u8; (2 + slot) * c.batch];
    let mut discard = [0u8; 2048];
    let burst = (c.per_pub_rate * 0.02).max(c.batch as f64) as u64;
    let thread_rate = c.per_pub_rate * pubs.len() as f64;
    let idle = Duration::from_secs_f64((1.0 / thread_rate.max(1.0)).clamp(50e-6, 2e-3));
    let phases: Vec<f64> = pubs
        .iter()
        .map(|p| p.stream as f64 / c.n_pubs as f64)
        .collect();
    loop {
        let now = Instant::now();
        if now >= c.end || c.stop.load(Ordering::Relaxed) {
            break;
        }
        let t = now.duration_since(c.t0).as_secs_f64();
        let mut any = false;
        for (p, phase) in pubs.iter_mut().zip(&phases) {
            let Some(conn) = p.conn.as_mut() else {
                continue;
            };
            // Consent checks, and the relay's answers to them read and dropped.
            conn.consent(now);
            while matches!(conn.stream.read(&mut discard), Ok(n) if n > 0) {}
            let allowed = (t * c.per_pub_rate + phase) as u64;
            let mut due = allowed.saturating_sub(p.next_seq + p.skipped);
            if due > burst {
                p.skipped += due - burst;
                due = burst;
            }
            while due > 0 {
                any = true;
                let n = (due as usize).min(c.batch);
                let now = Instant::now();
                if now >= c.end {
                    break;
                }
                let send_ns = now.duration_since(c.epoch).as_nanos() as u64;
                let rtp_len = p.template.len();
                let (mut off, mut k) = (0, 0);
                for i in 0..n {
                    let seq = p.next_seq + i as u64;
                    let buf = &mut out[off + 2..off + 2 + slot];
                    buf[..rtp_len].copy_from_slice(&p.template);
                    let pr = Probe {
                        stream: p.stream,
                        step: c.step,
                        seq,
                        send_ns,
                    };
                    probe::stamp(buf, p.rtp_seq, (seq as u32).wrapping_mul(960), &pr);
                    p.rtp_seq = p.rtp_seq.wrapping_add(1);
                    match p.crypto.protect(buf, rtp_len) {
                        Ok(len) => {
                            // len ≤ slot ≤ RECV_SLOT, under 64 KiB.
                            out[off..off + 2].copy_from_slice(&(len as u16).to_be_bytes());
                            off += 2 + len;
                            k += 1;
                        }
                        Err(_) => p.protect_errors += 1,
                    }
                }
                p.next_seq += n as u64;
                due -= n as u64;
                if p.failed {
                    p.send_errors += k as u64;
                } else if write_frames(&mut conn.stream, &out[..off]) {
                    p.accepted += k as u64;
                    c.sent.fetch_add(k as u64, Ordering::Relaxed);
                } else {
                    p.failed = true;
                    p.send_errors += k as u64;
                }
            }
        }
        if !any {
            std::thread::sleep(idle);
        }
    }
    ThreadUsage::measure(cpu0, wall0)
}

struct RecvCtx<'a> {
    step: u32,
    epoch: Instant,
    stop: &'a AtomicBool,
    received: &'a AtomicU64,
}

/// One subscriber's whole frames: STUN (answers to its consent checks) is skipped, the rest
/// unprotected and accounted as the UDP receiver does.
fn take_frames(s: &mut Subscriber, c: &RecvCtx<'_>, hist: &mut Histogram<u64>) {
    let now_ns = c.epoch.elapsed().as_nanos() as u64;
    let Some(conn) = s.conn.as_mut() else {
        return;
    };
    let (crypto, tracker, rx) = (&mut s.crypto, &mut s.tracker, &mut s.rx);
    let mut n = 0u64;
    conn.frames(|buf| {
        if buf.first().is_some_and(|&b| b < 4) {
            return;
        }
        n += 1;
        rx.datagrams += 1;
        let len = buf.len();
        match crypto.unprotect(buf, len) {
            Err(RxReject::Auth) => rx.auth_failures += 1,
            Err(RxReject::Replayed) => rx.replayed += 1,
            Err(RxReject::TooOld) => rx.too_old += 1,
            Err(RxReject::Malformed) => rx.malformed += 1,
            Ok(plen) => match probe::parse(&buf[..plen]) {
                Err(_) => rx.malformed += 1,
                Ok(p) if p.step != c.step => rx.stale += 1,
                Ok(p) if p.stream != s.stream => rx.misrouted += 1,
                Ok(p) => match tracker.record(p.seq) {
                    Arrival::InOrder | Arrival::Reordered => {
                        rx.bytes += len as u64;
                        hist.saturating_record(now_ns.saturating_sub(p.send_ns).max(1));
                    }
                    Arrival::Duplicate | Arrival::Late => {}
                },
            },
        }
    });
    c.received.fetch_add(n, Ordering::Relaxed);
}

/// Receive until stopped; latency in one histogram (one group, [`drive`]).
fn recv_loop(subs: &mut [Subscriber], c: RecvCtx<'_>) -> (Vec<Histogram<u64>>, ThreadUsage) {
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    let cpu0 = crate::sys::thread_cpu();
    let wall0 = Instant::now();
    let mut hist = new_hist();
    let mut poll = Poll::new().ok();
    if let Some(p) = &poll {
        for (i, s) in subs.iter().enumerate() {
            let Some(conn) = &s.conn else { continue };
            let fd = conn.stream.as_raw_fd();
            if p.registry()
                .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
                .is_err()
            {
                poll = None;
                break;
            }
        }
    }
    let mut events = Events::with_capacity(256);
    let mut next_consent = Instant::now();
    loop {
        let stopping = c.stop.load(Ordering::Relaxed);
        let now = Instant::now();
        if now >= next_consent {
            for s in subs.iter_mut() {
                if let Some(conn) = s.conn.as_mut() {
                    conn.consent(now);
                }
            }
            next_consent = now + Duration::from_millis(200);
        }
        let visit = |s: &mut Subscriber, hist: &mut Histogram<u64>| {
            let open = s.conn.as_mut().is_some_and(Conn::fill);
            take_frames(s, &c, hist);
            if !open {
                s.conn = None;
            }
        };
        match &mut poll {
            Some(p) if !stopping => {
                if p.poll(&mut events, Some(Duration::from_millis(10)))
                    .is_err()
                {
                    events.clear();
                }
                for ev in events.iter() {
                    if let Some(s) = subs.get_mut(ev.token().0) {
                        visit(s, &mut hist);
                    }
                }
            }
            _ => {
                for s in subs.iter_mut() {
                    visit(s, &mut hist);
                }
                if !stopping {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        if stopping {
            break;
        }
    }
    (vec![hist], ThreadUsage::measure(cpu0, wall0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames split across reads come out whole and in order; a partial tail waits.
    #[test]
    fn frames_reassemble_across_reads() {
        let (a, _b) = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            (a, l.accept().unwrap().0)
        };
        let mut c = Conn {
            stream: a,
            ice: IceCredentials {
                ufrag: "u".into(),
                pwd: "p".into(),
                remote_ufrag: "r".into(),
            },
            txid: 0,
            next_check: Instant::now(),
            rbuf: vec![0u8; RX_BUF],
            rlen: 0,
        };
        let wire = [0u8, 3, 1, 2, 3, 0, 2, 9, 9, 0, 4, 7];
        c.rbuf[..wire.len()].copy_from_slice(&wire);
        c.rlen = wire.len();
        let mut got = Vec::new();
        c.frames(|f| got.push(f.to_vec()));
        assert_eq!(got, vec![vec![1, 2, 3], vec![9, 9]]);
        assert_eq!(&c.rbuf[..c.rlen], &[0, 4, 7]);
        c.rbuf[3..6].copy_from_slice(&[8, 8, 8]);
        c.rlen = 6;
        got.clear();
        c.frames(|f| got.push(f.to_vec()));
        assert_eq!(got, vec![vec![7, 8, 8, 8]]);
        assert_eq!(c.rlen, 0);
    }

    /// A consent check is a framed Binding request that verifies with the session's password.
    #[test]
    fn checks_are_framed_and_authenticated() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut c = Conn {
            stream: a,
            ice: IceCredentials {
                ufrag: "RelayUfr".into(),
                pwd: "p".repeat(32),
                remote_ufrag: "mine".into(),
            },
            txid: 0,
            next_check: Instant::now(),
            rbuf: vec![0u8; 16],
            rlen: 0,
        };
        let (f, txid) = c.check_frame(true).unwrap();
        let n = usize::from(u16::from_be_bytes([f[0], f[1]]));
        assert_eq!(n + 2, f.len());
        let m = StunMessage::parse(&f[2..]).unwrap();
        assert!(m.is_binding_request());
        assert!(m.use_candidate());
        assert_eq!(m.transaction_id(), txid);
        assert_eq!(m.username_str(), Some("RelayUfr:mine"));
        m.verify_integrity("p".repeat(32).as_bytes()).unwrap();
        m.verify_fingerprint().unwrap();
    }
}
