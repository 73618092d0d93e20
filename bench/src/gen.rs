//! The load generator: publisher sockets that send paced, batched, real SRTP probes and
//! subscriber sockets whose receiver threads decrypt and account for every packet.
//!
//! Owns: the bench's sockets, SRTP contexts and threads, pacing, and the raw counts of a step.
//! May not touch: the admin API (that is [`crate::target`]); report formatting.
//!
//! Threads per step (scoped, so they borrow the endpoints): `senders` sender threads, each
//! pacing its share of the publishers with a per-publisher token bucket and sending each
//! publisher's due packets with one `sendmmsg`; `receivers` receiver threads, each polling its
//! share of the subscriber sockets (epoll via mio) and draining them with `recvmmsg`. The
//! calling thread samples the counters once per `tick` for the progress display and the
//! per-second series. Per packet the sender only copies the template, stamps the sequence
//! number and time and protects; the receiver only unprotects, parses and records.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use contract::srtp::{MasterKey, Profile};
use hdrhistogram::Histogram;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::crypto::{Crypto, RxReject};
use crate::probe::{self, Probe};
use crate::seq::{Arrival, SeqCounts, SeqTracker};
use crate::sys::{self, RecvBatch, SendBatch};
use crate::target::{Endpoints, Plan, SessionPlan, Wiring};

/// Highest latency the histogram records (larger values saturate): 60 s in ns.
const HIST_MAX_NS: u64 = 60_000_000_000;

/// Errors building or wiring the generator.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("--size {size} is too small: the probe needs {min} bytes with this profile")]
    TooSmall { size: usize, min: usize },
    #[error("--size {size} is larger than {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("SRTP: {0}")]
    Srtp(#[from] contract::srtp::Error),
    #[error("the target's wiring does not match the plan ({0})")]
    Wiring(&'static str),
    #[error("this generator sends plain RTP; a session plan needs an SRTP profile")]
    NoProfile,
    #[error("--gso on: UDP GSO (UDP_SEGMENT) does not work on {0}")]
    NoGso(IpAddr),
    #[error("STUN check: {0}")]
    Stun(String),
    #[error("ICE-TCP nomination failed: {0}")]
    Nomination(&'static str),
}

/// Shape of the load.
#[derive(Debug, Clone)]
pub struct RigSpec {
    pub publishers: usize,
    /// Subscribers per publisher (forced to 1 with `reflect`).
    pub fanout: usize,
    /// Datagram size on the wire (UDP payload, SRTP tag included).
    pub size: usize,
    /// `None`: plain RTP (the echo baseline).
    pub profile: Option<Profile>,
    /// Subscribers are the publishers' own sockets (a reflector sends packets back).
    pub reflect: bool,
    pub senders: usize,
    pub receivers: usize,
    /// Datagrams per `sendmmsg` / `recvmmsg`.
    pub batch: usize,
    /// Sequence tracker window per subscriber.
    pub window: usize,
    /// Local address the bench's sockets bind to.
    pub bind_ip: IpAddr,
    /// Requested SO_SNDBUF / SO_RCVBUF per socket.
    pub socket_buffer: usize,
    /// Whether publishers pack their batches into UDP GSO sends.
    pub gso: Gso,
    /// No subscribers: the publishers send to a sink (see [`Rig::wire_sink`]) and the step
    /// measures the senders alone.
    pub sink: bool,
    /// Latency is also kept per group of publisher streams, stream `i` in group
    /// `i mod latency_groups` (the node of `--targets` it was placed on); 1: one histogram.
    pub latency_groups: usize,
}

/// UDP GSO use by the publishers (Linux ≥ 4.18, `UDP_SEGMENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gso {
    /// Use it when a probe at start shows it works, else `sendmmsg` one datagram per message.
    Auto,
    /// Require it (an error when the probe fails).
    On,
    /// Never: one message per datagram (the default: the load keeps the shape it had before
    /// GSO, so results stay comparable).
    #[default]
    Off,
}

impl Default for RigSpec {
    fn default() -> Self {
        RigSpec {
            publishers: 1,
            fanout: 1,
            size: 1200,
            profile: Some(Profile::Aes128CmSha1_80),
            reflect: false,
            senders: 1,
            receivers: 1,
            batch: 32,
            window: 8192,
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            socket_buffer: 4 << 20,
            gso: Gso::Off,
            sink: false,
            latency_groups: 1,
        }
    }
}

struct Publisher {
    sock: UdpSocket,
    local: SocketAddr,
    keys: (MasterKey, MasterKey),
    crypto: Crypto,
    ssrc: u32,
    rtp_seq: u16,
    template: Vec<u8>,
    stream: u32,
    /// Per step: probe sequence numbers used, datagrams the kernel took, tokens skipped.
    next_seq: u64,
    accepted: u64,
    /// Messages those datagrams took (fewer than datagrams with GSO).
    messages: u64,
    skipped: u64,
    send_errors: u64,
    protect_errors: u64,
}

/// Raw receive counts of one subscriber (or a sum).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RxCounts {
    pub seq: SeqCounts,
    /// Datagrams received (any verdict).
    pub datagrams: u64,
    /// Bytes of the delivered datagrams as received.
    pub bytes: u64,
    pub auth_failures: u64,
    /// Rejected by the SRTP replay check: the same packet index again (duplicates).
    pub replayed: u64,
    /// Older than the SRTP replay window.
    pub too_old: u64,
    /// Not SRTP / not a probe.
    pub malformed: u64,
    /// A probe from another find-max step.
    pub stale: u64,
    /// A probe of another publisher's stream.
    pub misrouted: u64,
    /// STUN, DTLS and RTCP datagrams (RFC 7983, RFC 5761): a WebRTC server's consent
    /// answers, retransmitted flights and reports, not media.
    #[serde(default)]
    pub control: u64,
}

impl RxCounts {
    pub fn add(&mut self, o: &RxCounts) {
        self.seq.add(&o.seq);
        self.datagrams += o.datagrams;
        self.bytes += o.bytes;
        self.auth_failures += o.auth_failures;
        self.replayed += o.replayed;
        self.too_old += o.too_old;
        self.malformed += o.malformed;
        self.stale += o.stale;
        self.misrouted += o.misrouted;
        self.control += o.control;
    }

    /// Duplicates from both detectors (replay check before decryption, tracker after).
    pub fn duplicates(&self) -> u64 {
        self.seq.duplicates + self.replayed
    }
}

struct Subscriber {
    sock: UdpSocket,
    local: SocketAddr,
    keys: (MasterKey, MasterKey),
    crypto: Crypto,
    stream: u32,
    tracker: SeqTracker,
    rx: RxCounts,
    /// When this step's first probe arrived (ns since the rig's epoch).
    first_ns: Option<u64>,
}

/// CPU use of one generator thread during a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ThreadUsage {
    pub cpu_s: f64,
    pub wall_s: f64,
    /// cpu / wall.
    pub busy: f64,
}

impl ThreadUsage {
    pub(crate) fn measure(cpu0: Duration, wall0: Instant) -> ThreadUsage {
        let cpu_s = sys::thread_cpu().saturating_sub(cpu0).as_secs_f64();
        let wall_s = wall0.elapsed().as_secs_f64();
        ThreadUsage {
            cpu_s,
            wall_s,
            busy: if wall_s > 0.0 { cpu_s / wall_s } else { 0.0 },
        }
    }
}

/// One step of load.
#[derive(Debug, Clone, Copy)]
pub struct StepSpec {
    /// Step id carried in every probe.
    pub step: u32,
    /// Total publisher packets per second (all publishers together).
    pub rate: f64,
    pub duration: Duration,
    /// Longest wait for stragglers after the senders stop.
    pub drain: Duration,
    /// Progress/sampling period.
    pub tick: Duration,
}

/// A live sample for the progress display.
#[derive(Debug, Clone, Copy, Default)]
pub struct Live {
    pub elapsed: Duration,
    pub duration: Duration,
    pub offered_pps: f64,
    pub delivered_pps: f64,
    /// 1 − delivered/expected over the step so far (packets in flight count as missing).
    pub loss: f64,
}

/// Totals per second of the send window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    pub t: f64,
    pub offered_pps: f64,
    pub delivered_pps: f64,
}

/// Per-publisher-stream totals (the stream's subscribers summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCounts {
    pub stream: u32,
    pub ssrc: u32,
    /// Datagrams the kernel accepted from this publisher.
    pub sent: u64,
    /// Send messages they took (with GSO one message carries several datagrams).
    #[serde(default)]
    pub messages: u64,
    pub send_errors: u64,
    /// Tokens the pacer had to skip because the sender thread fell behind.
    pub skipped: u64,
    pub subscribers: u64,
    pub rx: RxCounts,
}

impl StreamCounts {
    /// What the subscribers should have received.
    pub fn expected(&self) -> u64 {
        self.sent * self.subscribers
    }
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.rx.seq.delivered)
    }
}

/// Everything one step measured.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub target_pps: f64,
    /// Length of the send window actually run.
    pub send_s: f64,
    pub size: usize,
    pub streams: Vec<StreamCounts>,
    /// Latency in ns.
    pub hist: Histogram<u64>,
    /// Latency in ns per group of streams ([`RigSpec::latency_groups`] of them when more
    /// than one; empty otherwise).
    pub group_hists: Vec<Histogram<u64>>,
    pub seconds: Vec<Second>,
    pub senders: Vec<ThreadUsage>,
    pub receivers: Vec<ThreadUsage>,
    pub interrupted: bool,
    /// Per subscriber: ns from the step's start to its first probe (`None`: none came).
    pub first_media_ns: Vec<Option<u64>>,
}

/// The generator's endpoints.
pub struct Rig {
    spec: RigSpec,
    pubs: Vec<Publisher>,
    subs: Vec<Subscriber>,
    epoch: Instant,
    /// GSO as resolved at start.
    gso: bool,
}

fn bind(ip: IpAddr, buf: usize) -> Result<(UdpSocket, SocketAddr), GenError> {
    let domain = if ip.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{w,r}mem_max.
    let _ = s.set_send_buffer_size(buf);
    let _ = s.set_recv_buffer_size(buf);
    s.bind(&SocketAddr::new(ip, 0).into())?;
    let s: UdpSocket = s.into();
    let local = s.local_addr()?;
    Ok((s, local))
}

pub(crate) fn random_key(profile: Profile) -> MasterKey {
    let mut b = [0u8; MasterKey::MAX_LEN];
    rand::thread_rng().fill_bytes(&mut b);
    // The slice has exactly the profile's key material length, so this cannot fail.
    MasterKey::new(profile, &b[..profile.key_material_len()]).expect("length matches profile")
}

impl Rig {
    /// Bind every socket and draw random keys.
    pub fn new(spec: RigSpec) -> Result<Rig, GenError> {
        let mut spec = spec;
        if spec.reflect {
            spec.fanout = 1;
        }
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
        let overhead = spec.profile.map_or(0, |p| p.srtp_overhead());
        if spec.size < probe::MIN_RTP + overhead {
            return Err(GenError::TooSmall {
                size: spec.size,
                min: probe::MIN_RTP + overhead,
            });
        }
        if spec.size > sys::RECV_SLOT {
            return Err(GenError::TooLarge {
                size: spec.size,
                max: sys::RECV_SLOT,
            });
        }
        let rtp_len = spec.size - overhead;
        let dummy = random_key(Profile::Aes128CmSha1_80);
        let key = |p: Option<Profile>| p.map_or(dummy, random_key);
        let mut rng = rand::thread_rng();
        let mut pubs = Vec::with_capacity(spec.publishers);
        for i in 0..spec.publishers {
            let (sock, local) = bind(spec.bind_ip, spec.socket_buffer)?;
            let ssrc = rng.next_u32();
            let mut template = vec![0u8; rtp_len];
            // rtp_len >= MIN_RTP was checked above.
            probe::template(&mut template, rtp_len, ssrc).expect("size checked");
            pubs.push(Publisher {
                sock,
                local,
                keys: (key(spec.profile), key(spec.profile)),
                crypto: Crypto::Null,
                ssrc,
                rtp_seq: rng.next_u32() as u16,
                template,
                stream: i as u32,
                next_seq: 0,
                accepted: 0,
                messages: 0,
                skipped: 0,
                send_errors: 0,
                protect_errors: 0,
            });
        }
        let gso = match spec.gso {
            Gso::Off => false,
            Gso::Auto => sys::gso_works(spec.bind_ip),
            Gso::On => {
                if !sys::gso_works(spec.bind_ip) {
                    return Err(GenError::NoGso(spec.bind_ip));
                }
                true
            }
        };
        let per_pub = if spec.sink { 0 } else { spec.fanout };
        let mut subs = Vec::with_capacity(spec.publishers * per_pub);
        for p in &pubs {
            for _ in 0..per_pub {
                let (sock, local) = if spec.reflect {
                    (p.sock.try_clone()?, p.local)
                } else {
                    bind(spec.bind_ip, spec.socket_buffer)?
                };
                subs.push(Subscriber {
                    sock,
                    local,
                    keys: (key(spec.profile), key(spec.profile)),
                    crypto: Crypto::Null,
                    stream: p.stream,
                    tracker: SeqTracker::new(spec.window),
                    rx: RxCounts::default(),
                    first_ns: None,
                });
            }
        }
        Ok(Rig {
            spec,
            pubs,
            subs,
            epoch: Instant::now(),
            gso,
        })
    }

    pub fn spec(&self) -> &RigSpec {
        &self.spec
    }

    /// Whether the publishers send with UDP GSO.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// The sessions and routes the target must create.
    pub fn plan(&self) -> Result<Plan, GenError> {
        let profile = self.spec.profile.ok_or(GenError::NoProfile)?;
        let s = |local, keys: (MasterKey, MasterKey)| SessionPlan {
            peer: local,
            rx_key: keys.0,
            tx_key: keys.1,
        };
        Ok(Plan {
            profile,
            publishers: self.pubs.iter().map(|p| s(p.local, p.keys)).collect(),
            subscribers: self
                .subs
                .iter()
                .map(|x| (s(x.local, x.keys), x.stream as usize))
                .collect(),
            publisher_ssrcs: self.pubs.iter().map(|p| p.ssrc).collect(),
        })
    }

    /// Clones of every socket, for a target that handshakes on them (WebRTC).
    pub fn endpoints(&self) -> Result<Endpoints, GenError> {
        Ok(Endpoints {
            publishers: self
                .pubs
                .iter()
                .map(|p| Ok((p.sock.try_clone()?, p.ssrc)))
                .collect::<Result<_, std::io::Error>>()?,
            subscribers: self
                .subs
                .iter()
                .map(|s| Ok((s.sock.try_clone()?, s.stream as usize)))
                .collect::<Result<_, std::io::Error>>()?,
        })
    }

    /// Connect the publishers and build the SRTP contexts from the target's answer.
    pub fn wire(&mut self, w: &Wiring) -> Result<(), GenError> {
        if w.publisher_dst.len() != self.pubs.len() {
            return Err(GenError::Wiring("publisher count"));
        }
        if w.subscriber_keys.len() != self.subs.len() {
            return Err(GenError::Wiring("subscriber count"));
        }
        if !w.publisher_keys.is_empty() && w.publisher_keys.len() != self.pubs.len() {
            return Err(GenError::Wiring("publisher key count"));
        }
        for (i, (p, dst)) in self.pubs.iter_mut().zip(&w.publisher_dst).enumerate() {
            p.sock.connect(dst)?;
            if let Some(k) = w.publisher_keys.get(i) {
                p.keys.0 = *k;
            }
            if self.spec.profile.is_some() {
                p.crypto = Crypto::srtp(p.keys.0, false)?;
            }
        }
        for (s, key) in self.subs.iter_mut().zip(&w.subscriber_keys) {
            if self.spec.profile.is_some() {
                s.crypto = Crypto::srtp(*key, true)?;
            }
        }
        Ok(())
    }

    /// Send every publisher to `dst` without a target (a reflector): with `reflect`, each
    /// subscriber decrypts with its publisher's own key.
    pub fn wire_direct(&mut self, dst: SocketAddr) -> Result<(), GenError> {
        let keys: Vec<MasterKey> = if self.spec.reflect {
            self.subs
                .iter()
                .map(|s| self.pubs[s.stream as usize].keys.0)
                .collect()
        } else {
            self.subs.iter().map(|s| s.keys.1).collect()
        };
        self.wire(&Wiring {
            publisher_dst: vec![dst; self.pubs.len()],
            subscriber_keys: keys,
            publisher_keys: Vec::new(),
        })
    }

    /// Sink mode: every publisher sends to `dst` (a socket nobody reads) with its own key.
    pub fn wire_sink(&mut self, dst: SocketAddr) -> Result<(), GenError> {
        if !self.spec.sink {
            return Err(GenError::Wiring("wire_sink needs a sink rig"));
        }
        self.wire(&Wiring {
            publisher_dst: vec![dst; self.pubs.len()],
            subscriber_keys: Vec::new(),
            publisher_keys: Vec::new(),
        })
    }

    /// Nanoseconds since the rig was built (the probes' clock).
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Run one step of load. `live` is called once per tick from this thread.
    pub fn run_step(&mut self, spec: &StepSpec, mut live: impl FnMut(&Live)) -> StepOutcome {
        self.reset_counts();
        let n_pubs = self.pubs.len();
        let fanout = if self.spec.sink {
            0
        } else {
            self.spec.fanout as u64
        };
        let gso = self.gso.then_some(self.spec.size);
        let per_pub_rate = spec.rate.max(0.0) / n_pubs as f64;
        let batch = self.spec.batch;
        let size = self.spec.size;
        let epoch = self.epoch;

        let senders = self.spec.senders.min(n_pubs);
        let receivers = self.spec.receivers.min(self.subs.len());
        let groups = self.spec.latency_groups.max(1);
        let driven = drive(
            spec,
            (&mut self.pubs, senders),
            (&mut self.subs, receivers),
            (fanout, groups),
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
                        gso,
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
                        batch,
                    },
                    groups,
                )
            },
        );

        let streams = self.stream_counts();
        let t0_ns = driven.t0.duration_since(epoch).as_nanos() as u64;
        let first_media_ns = self
            .subs
            .iter()
            .map(|s| s.first_ns.map(|f| f.saturating_sub(t0_ns)))
            .collect();
        driven.outcome(spec, size, streams, first_media_ns)
    }
}

impl Rig {
    /// Zero every publisher's and subscriber's counts before a step.
    fn reset_counts(&mut self) {
        for p in &mut self.pubs {
            p.next_seq = 0;
            p.accepted = 0;
            p.messages = 0;
            p.skipped = 0;
            p.send_errors = 0;
            p.protect_errors = 0;
        }
        for s in &mut self.subs {
            s.tracker = SeqTracker::new(self.spec.window);
            s.rx = RxCounts::default();
            s.first_ns = None;
        }
    }

    /// Per publisher stream: what it sent and what its subscribers received.
    fn stream_counts(&self) -> Vec<StreamCounts> {
        stream_totals(
            self.pubs.iter().map(|p| StreamCounts {
                stream: p.stream,
                ssrc: p.ssrc,
                sent: p.accepted,
                messages: p.messages,
                send_errors: p.send_errors + p.protect_errors,
                skipped: p.skipped,
                subscribers: 0,
                rx: RxCounts::default(),
            }),
            self.subs.iter().map(|s| (s.stream, s.rx, &s.tracker)),
        )
    }
}

/// Per publisher stream (`pubs`, their receive counts zero), with each subscriber's counts
/// (its stream, its receive counts, its sequence tracker) added to its stream's.
pub(crate) fn stream_totals<'a>(
    pubs: impl Iterator<Item = StreamCounts>,
    subs: impl Iterator<Item = (u32, RxCounts, &'a SeqTracker)>,
) -> Vec<StreamCounts> {
    let mut streams: Vec<StreamCounts> = pubs.collect();
    for (stream, mut rx, tracker) in subs {
        rx.seq = tracker.counts();
        let st = &mut streams[stream as usize];
        st.subscribers += 1;
        st.rx.add(&rx);
    }
    streams
}

/// What a step's threads measured, before the per-stream counts.
pub(crate) struct Driven {
    /// When the send window began.
    pub(crate) t0: Instant,
    send_s: f64,
    hist: Histogram<u64>,
    /// Per group of streams (see [`drive`]).
    group_hists: Vec<Histogram<u64>>,
    seconds: Vec<Second>,
    senders: Vec<ThreadUsage>,
    receivers: Vec<ThreadUsage>,
    interrupted: bool,
}

impl Driven {
    pub(crate) fn outcome(
        self,
        spec: &StepSpec,
        size: usize,
        streams: Vec<StreamCounts>,
        first_media_ns: Vec<Option<u64>>,
    ) -> StepOutcome {
        StepOutcome {
            target_pps: spec.rate,
            send_s: self.send_s,
            size,
            streams,
            hist: self.hist,
            // One group is the whole step's histogram: not repeated.
            group_hists: if self.group_hists.len() > 1 {
                self.group_hists
            } else {
                Vec::new()
            },
            seconds: self.seconds,
            senders: self.senders,
            receivers: self.receivers,
            interrupted: self.interrupted,
            first_media_ns,
        }
    }
}

/// What one sender or receiver thread of a step is given.
pub(crate) struct Lane<'a> {
    pub(crate) t0: Instant,
    /// End of the send window.
    pub(crate) end: Instant,
    pub(crate) stop: &'a AtomicBool,
    /// The thread's count of packets sent (senders) or received (receivers).
    pub(crate) count: &'a AtomicU64,
}

/// Run one step's threads, the same for every transport: `senders` threads each run `send`
/// on a share of `pubs` until the window ends (or Ctrl-C), `receivers` threads each run
/// `recv` on a share of `subs`, this thread samples the counts for `live` and the per-second
/// series, then waits for stragglers ([`drain`]) before stopping the receivers.
///
/// Every receiver returns its latency histograms per group of streams (`groups` ≥ 1 of
/// them, [`RigSpec::latency_groups`]); the step keeps their sum and each group's.
pub(crate) fn drive<P: Send, S: Send>(
    spec: &StepSpec,
    (pubs, senders): (&mut [P], usize),
    (subs, receivers): (&mut [S], usize),
    (fanout, groups): (u64, usize),
    live: &mut impl FnMut(&Live),
    send: impl Fn(&mut [P], Lane<'_>) -> ThreadUsage + Sync,
    recv: impl Fn(&mut [S], Lane<'_>) -> (Vec<Histogram<u64>>, ThreadUsage) + Sync,
) -> Driven {
    let stop_send = AtomicBool::new(false);
    let stop_recv = AtomicBool::new(false);
    let sent_ctr: Vec<AtomicU64> = (0..senders).map(|_| AtomicU64::new(0)).collect();
    let recv_ctr: Vec<AtomicU64> = (0..receivers).map(|_| AtomicU64::new(0)).collect();
    let t0 = Instant::now();
    let end = t0 + spec.duration;
    let mut driven = Driven {
        t0,
        send_s: spec.duration.as_secs_f64(),
        hist: new_hist(),
        group_hists: (0..groups.max(1)).map(|_| new_hist()).collect(),
        seconds: Vec::new(),
        senders: Vec::new(),
        receivers: Vec::new(),
        interrupted: false,
    };
    let pub_chunk = pubs.len().div_ceil(senders.max(1)).max(1);
    let sub_chunk = subs.len().div_ceil(receivers.max(1)).max(1);
    let (send, recv) = (&send, &recv);
    std::thread::scope(|sc| {
        let mut sh = Vec::new();
        for (chunk, count) in pubs.chunks_mut(pub_chunk).zip(&sent_ctr) {
            let (stop, end) = (&stop_send, end);
            sh.push(sc.spawn(move || {
                send(
                    chunk,
                    Lane {
                        t0,
                        end,
                        stop,
                        count,
                    },
                )
            }));
        }
        let mut rh = Vec::new();
        for (chunk, count) in subs.chunks_mut(sub_chunk).zip(&recv_ctr) {
            let stop = &stop_recv;
            rh.push(sc.spawn(move || {
                recv(
                    chunk,
                    Lane {
                        t0,
                        end,
                        stop,
                        count,
                    },
                )
            }));
        }

        let sampled = sample_while_sending(spec, (t0, end), (&sent_ctr, &recv_ctr), fanout, live);
        driven.seconds = sampled.seconds;
        if let Some(stopped) = sampled.interrupted_at {
            driven.interrupted = true;
            driven.send_s = stopped;
        }
        stop_send.store(true, Ordering::Relaxed);
        for h in sh {
            // A panicking sender is a bench bug; surface it.
            driven
                .senders
                .push(h.join().expect("sender thread panicked"));
        }
        drain(spec.drain, total(&sent_ctr) * fanout, &recv_ctr);
        stop_recv.store(true, Ordering::Relaxed);
        for h in rh {
            let (hists, usage) = h.join().expect("receiver thread panicked");
            for (sum, h2) in driven.group_hists.iter_mut().zip(&hists) {
                // All histograms have the same bounds, so adding cannot fail.
                sum.add(h2).expect("same bounds");
                driven.hist.add(h2).expect("same bounds");
            }
            driven.receivers.push(usage);
        }
    });
    driven
}

fn total(c: &[AtomicU64]) -> u64 {
    c.iter().map(|a| a.load(Ordering::Relaxed)).sum()
}

/// What the sampler saw while the senders ran.
pub(crate) struct Sampled {
    pub(crate) seconds: Vec<Second>,
    /// Seconds into the step when Ctrl-C stopped it.
    pub(crate) interrupted_at: Option<f64>,
}

/// Until `end` (or Ctrl-C): every tick, the live rates for the progress line; every second,
/// one point of the per-second series.
pub(crate) fn sample_while_sending(
    spec: &StepSpec,
    (t0, end): (Instant, Instant),
    (sent_ctr, recv_ctr): (&[AtomicU64], &[AtomicU64]),
    fanout: u64,
    live: &mut impl FnMut(&Live),
) -> Sampled {
    let mut seconds = Vec::new();
    let (mut last_t, mut last_sent, mut last_recv) = (0.0f64, 0u64, 0u64);
    let mut next_second = 1.0f64;
    let (mut sec_sent, mut sec_recv) = (0u64, 0u64);
    loop {
        let now = Instant::now();
        if now >= end {
            return Sampled {
                seconds,
                interrupted_at: None,
            };
        }
        if sys::interrupted() {
            return Sampled {
                seconds,
                interrupted_at: Some(now.duration_since(t0).as_secs_f64()),
            };
        }
        std::thread::sleep(spec.tick.min(end - now));
        let t = t0.elapsed().as_secs_f64();
        let (sent, recv) = (total(sent_ctr), total(recv_ctr));
        let dt = (t - last_t).max(1e-9);
        live(&Live {
            elapsed: t0.elapsed(),
            duration: spec.duration,
            offered_pps: (sent - last_sent) as f64 / dt,
            delivered_pps: (recv - last_recv) as f64 / dt,
            loss: if sent * fanout == 0 {
                0.0
            } else {
                1.0 - (recv as f64 / (sent * fanout) as f64).min(1.0)
            },
        });
        (last_t, last_sent, last_recv) = (t, sent, recv);
        while t >= next_second {
            seconds.push(Second {
                t: next_second,
                offered_pps: (sent - sec_sent) as f64,
                delivered_pps: (recv - sec_recv) as f64,
            });
            (sec_sent, sec_recv) = (sent, recv);
            next_second += 1.0;
        }
    }
}

/// After the senders stopped: wait until `expected` datagrams arrived, or nothing arrived for
/// a quarter of `limit`, or `limit` is up.
pub(crate) fn drain(limit: Duration, expected: u64, recv_ctr: &[AtomicU64]) {
    let drain_end = Instant::now() + limit;
    let mut last = total(recv_ctr);
    let mut quiet_since = Instant::now();
    while Instant::now() < drain_end && last < expected {
        std::thread::sleep(Duration::from_millis(5));
        let r = total(recv_ctr);
        if r != last {
            last = r;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > limit / 4 {
            break;
        }
    }
}

/// A fresh latency histogram (ns, 3 significant digits).
pub fn new_hist() -> Histogram<u64> {
    // Constant, valid bounds (low ≥ 1, high ≥ 2·low, sigfig ≤ 5).
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid bounds")
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
    /// `Some(datagram size)`: pack batches into UDP GSO messages.
    gso: Option<usize>,
}

fn send_loop(pubs: &mut [Publisher], c: SendCtx<'_>) -> ThreadUsage {
    let cpu0 = sys::thread_cpu();
    let wall0 = Instant::now();
    let slot = pubs
        .first()
        .map_or(0, |p| p.template.len() + p.crypto.overhead());
    let mut arena = vec![0u8; slot * c.batch];
    // Plain RTP is sent as it is built, so the slots keep the template between batches and a
    // packet only needs its SSRC and per-packet fields written. SRTP encrypts the slot in
    // place, so each packet starts from a fresh copy of the template.
    let plain = pubs.iter().all(|p| matches!(p.crypto, Crypto::Null));
    if let Some(p) = pubs.first() {
        for s in arena.chunks_exact_mut(slot) {
            s[..p.template.len()].copy_from_slice(&p.template);
        }
    }
    let mut lens = vec![0usize; c.batch];
    let mut sb = SendBatch::new(c.batch);
    // A sender that falls more than 20 ms (or one batch) behind skips the excess tokens
    // instead of bursting: the offered rate then shows the shortfall.
    let burst = (c.per_pub_rate * 0.02).max(c.batch as f64) as u64;
    let thread_rate = c.per_pub_rate * pubs.len() as f64;
    let idle = Duration::from_secs_f64((1.0 / thread_rate.max(1.0)).clamp(50e-6, 2e-3));
    // Spread publishers' send instants over one packet interval.
    let phases: Vec<f64> = pubs
        .iter()
        .map(|p| p.stream as f64 / c.n_pubs as f64)
        .collect();
    loop {
        // One clock read per pass over the publishers for pacing, one per batch for its send
        // time (every packet of a batch carries the time taken just before it is built).
        let now = Instant::now();
        if now >= c.end || c.stop.load(Ordering::Relaxed) {
            break;
        }
        let t = now.duration_since(c.t0).as_secs_f64();
        let mut any = false;
        for (p, phase) in pubs.iter_mut().zip(&phases) {
            let allowed = (t * c.per_pub_rate + phase) as u64;
            let mut due = allowed.saturating_sub(p.next_seq + p.skipped);
            if due > burst {
                p.skipped += due - burst;
                due = burst;
            }
            while due > 0 {
                any = true;
                let n = (due as usize).min(c.batch);
                // One clock read per batch: its send time, and the end check (a sender far
                // behind would otherwise overrun the window by a whole burst).
                let now = Instant::now();
                if now >= c.end {
                    break;
                }
                let send_ns = now.duration_since(c.epoch).as_nanos() as u64;
                let rtp_len = p.template.len();
                let ssrc = p.ssrc.to_be_bytes();
                let mut k = 0;
                for i in 0..n {
                    let buf = &mut arena[k * slot..(k + 1) * slot];
                    let seq = p.next_seq + i as u64;
                    if plain {
                        buf[8..12].copy_from_slice(&ssrc);
                    } else {
                        buf[..rtp_len].copy_from_slice(&p.template);
                    }
                    // RTP timestamp: a 48 kHz clock at 20 ms per packet (cosmetic).
                    let ts = (seq as u32).wrapping_mul(960);
                    let pr = Probe {
                        stream: p.stream,
                        step: c.step,
                        seq,
                        send_ns,
                    };
                    probe::stamp(buf, p.rtp_seq, ts, &pr);
                    p.rtp_seq = p.rtp_seq.wrapping_add(1);
                    match p.crypto.protect(buf, rtp_len) {
                        Ok(len) => {
                            lens[k] = len;
                            k += 1;
                        }
                        Err(_) => p.protect_errors += 1,
                    }
                }
                p.next_seq += n as u64;
                due -= n as u64;
                let mut off = 0;
                while off < k {
                    match sb.send_with(
                        p.sock.as_raw_fd(),
                        &arena[off * slot..],
                        slot,
                        &lens[off..k],
                        c.gso,
                    ) {
                        Ok(0) => {
                            p.send_errors += (k - off) as u64;
                            break;
                        }
                        Ok(m) => {
                            p.accepted += m as u64;
                            p.messages += sb.last_messages() as u64;
                            c.sent.fetch_add(m as u64, Ordering::Relaxed);
                            off += m;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            // The first datagram is counted lost; the rest are retried.
                            p.send_errors += 1;
                            off += 1;
                        }
                    }
                }
            }
        }
        if !any {
            std::thread::sleep(idle);
        }
    }
    ThreadUsage::measure(cpu0, wall0)
}

/// Not media: STUN (first byte 0–3) or DTLS (20–63) by RFC 7983, or RTCP muxed with RTP
/// (RFC 5761 §4: packet types 192–223 in the second byte).
#[inline]
fn is_control(d: &[u8]) -> bool {
    match d {
        [b, ..] if *b < 4 || (20..=63).contains(b) => true,
        [b, pt, ..] if (128..=191).contains(b) => (192..=223).contains(pt),
        _ => false,
    }
}

struct RecvCtx<'a> {
    step: u32,
    epoch: Instant,
    stop: &'a AtomicBool,
    received: &'a AtomicU64,
    batch: usize,
}

/// Receive until stopped; latency per group of streams (`groups` ≥ 1 histograms, stream `i`
/// in group `i mod groups`).
fn recv_loop(
    subs: &mut [Subscriber],
    c: RecvCtx<'_>,
    groups: usize,
) -> (Vec<Histogram<u64>>, ThreadUsage) {
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    let cpu0 = sys::thread_cpu();
    let wall0 = Instant::now();
    let mut hist: Vec<Histogram<u64>> = (0..groups.max(1)).map(|_| new_hist()).collect();
    let mut rb = RecvBatch::new(c.batch);
    let mut poll = Poll::new().ok();
    if let Some(p) = &poll {
        for (i, s) in subs.iter().enumerate() {
            let fd = s.sock.as_raw_fd();
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
    let drain = |s: &mut Subscriber, rb: &mut RecvBatch, hist: &mut [Histogram<u64>]| loop {
        let group = s.stream as usize % hist.len();
        let n = match rb.recv(s.sock.as_raw_fd()) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now_ns = c.epoch.elapsed().as_nanos() as u64;
        for i in 0..n {
            let (buf, len) = rb.slot(i);
            s.rx.datagrams += 1;
            if is_control(&buf[..len]) {
                s.rx.control += 1;
                continue;
            }
            match s.crypto.unprotect(buf, len) {
                Err(RxReject::Auth) => s.rx.auth_failures += 1,
                Err(RxReject::Replayed) => s.rx.replayed += 1,
                Err(RxReject::TooOld) => s.rx.too_old += 1,
                Err(RxReject::Malformed) => s.rx.malformed += 1,
                Ok(plen) => match probe::parse(&buf[..plen]) {
                    Err(_) => s.rx.malformed += 1,
                    Ok(p) if p.step != c.step => s.rx.stale += 1,
                    Ok(p) if p.stream != s.stream => s.rx.misrouted += 1,
                    Ok(p) => match s.tracker.record(p.seq) {
                        Arrival::InOrder | Arrival::Reordered => {
                            s.first_ns.get_or_insert(now_ns);
                            s.rx.bytes += len as u64;
                            hist[group].saturating_record(now_ns.saturating_sub(p.send_ns).max(1));
                        }
                        Arrival::Duplicate | Arrival::Late => {}
                    },
                },
            }
        }
        c.received.fetch_add(n as u64, Ordering::Relaxed);
    };
    loop {
        let stopping = c.stop.load(Ordering::Relaxed);
        match &mut poll {
            Some(p) if !stopping => {
                if p.poll(&mut events, Some(Duration::from_millis(10)))
                    .is_err()
                {
                    events.clear();
                }
                for ev in events.iter() {
                    if let Some(s) = subs.get_mut(ev.token().0) {
                        drain(s, &mut rb, hist.as_mut_slice());
                    }
                }
            }
            _ => {
                // Final pass (or no epoll): visit every socket.
                for s in subs.iter_mut() {
                    drain(s, &mut rb, hist.as_mut_slice());
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
    if let Some(p) = &poll {
        for s in subs.iter() {
            let fd = s.sock.as_raw_fd();
            let _ = p.registry().deregister(&mut SourceFd(&fd));
        }
    }
    (hist, ThreadUsage::measure(cpu0, wall0))
}
