//! `sluice-bench webrtc`: the bench as N WHIP publishers and M WHEP viewers per publisher,
//! with real ICE and DTLS-SRTP, against Sluice, any WHIP/WHEP server, or Janus's videoroom
//! (through [`crate::janus`]).
//!
//! Owns: the [`WebRtcTarget`] (a [`Target`] whose sessions are WebRTC joins made on the
//! generator's own sockets), the handshake pool, consent refreshes while media flows, and the
//! handshake figures of the report. Layers below: [`sdp`], [`ice`], [`dtls`] (pure or
//! in-memory), [`peer`] (the per-endpoint loop on a socket), [`http`] (signalling transport).
//! May not touch: the media path (that stays the generator's, [`crate::gen`]).
//!
//! Publisher `i` joins room `<room>-<i>`; its viewers join the same room, so each viewer
//! receives exactly one publisher's stream. Publishers join first (a viewer's routes are made
//! from the publishers present when it joins).

pub mod dtls;
pub mod http;
pub mod ice;
pub mod peer;
pub mod sdp;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contract::srtp::{MasterKey, Profile};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::http::AdminClient;
use crate::sys::CpuTimes;
use crate::target::{Endpoints, Plan, Target, TargetError, TargetInfo, Wiring};
use dtls::Identity;
use ice::Credentials;
use sdp::{Direction, Remote};

/// Payload type of the probes' Opus codec line in our offers (the generator writes 96).
pub const PT: u8 = crate::probe::PAYLOAD_TYPE;
/// Period of consent refreshes (RFC 7675 §5.1: every 5 s on average; servers expire after 30).
const CONSENT_PERIOD: Duration = Duration::from_secs(2);

/// Errors of one join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{0}: the answer has no Location header")]
    NoLocation(String),
    #[error(transparent)]
    Sdp(#[from] sdp::SdpError),
    #[error(transparent)]
    Peer(#[from] peer::PeerError),
    #[error("{0}")]
    Signal(String),
}

/// Which side of a room an endpoint joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publisher `i` (room `i`).
    Publish(usize),
    /// A viewer of publisher `i`.
    Subscribe(usize),
}

impl Role {
    pub fn room(self) -> usize {
        match self {
            Role::Publish(i) | Role::Subscribe(i) => i,
        }
    }
}

/// Builds our SDP: the offer (`None`) or the answer to the server's offer.
pub type Describe<'a> = dyn Fn(Option<&Remote>) -> String + Sync + 'a;

/// How endpoints join and leave on a server: WHIP/WHEP, or a server's own API.
pub trait Signaling: Send + Sync {
    /// Facts for the report.
    fn info(&self) -> TargetInfo;
    /// Join as `role`; the server's description and a handle to leave with.
    fn join(&self, role: Role, describe: &Describe<'_>) -> Result<(Remote, String), JoinError>;
    /// Leave (the handle from [`Signaling::join`]).
    fn leave(&self, handle: &str) -> Result<(), JoinError>;
    /// Relay counters, if the server has them.
    fn stats(&self) -> Option<Value> {
        None
    }
    /// Keep a joined endpoint's signalling alive (called every [`REFRESH_PERIOD`] while media
    /// flows; Janus drops silent sessions).
    fn refresh(&self, _handle: &str) {}
}

/// Period of [`Signaling::refresh`].
pub const REFRESH_PERIOD: Duration = Duration::from_secs(20);

/// Per-request HTTP timeout.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// WHIP/WHEP (RFC 9725): POST the offer, 201 with the answer and a Location to DELETE.
pub struct Whip {
    /// URL templates; `{room}` becomes `<room>-<i>`.
    pub whip: String,
    pub whep: String,
    pub room: String,
    /// Bearer tokens, per role and room.
    pub tokens: Box<dyn Fn(Role) -> Result<Option<String>, JoinError> + Send + Sync>,
    pub kind: String,
    pub admin: Option<AdminClient>,
}

impl Whip {
    fn url(&self, role: Role) -> Result<http::Url, JoinError> {
        let t = match role {
            Role::Publish(_) => &self.whip,
            Role::Subscribe(_) => &self.whep,
        };
        let room = format!("{}-{}", self.room, role.room());
        Ok(http::Url::parse(&t.replace("{room}", &room))?)
    }
}

impl Signaling for Whip {
    fn info(&self) -> TargetInfo {
        let mut info = TargetInfo {
            kind: self.kind.clone(),
            ..TargetInfo::default()
        };
        if let Some(a) = &self.admin {
            if let Ok(r) = a.request("GET", "/v1/status", None) {
                let s = crate::http::json(&r);
                info.media_addr = s["media_addr"].as_str().map(str::to_string);
                info.admin_url = Some(a.url().to_string());
                info.backend = s["backend"].as_str().map(str::to_string);
                info.workers = s["workers"].as_u64();
                info.relay_pid = s["relay"]["pid"]
                    .as_u64()
                    .and_then(|p| u32::try_from(p).ok());
                info.version = s["version"].as_str().map(str::to_string);
            }
        }
        info
    }

    fn join(&self, role: Role, describe: &Describe<'_>) -> Result<(Remote, String), JoinError> {
        let url = self.url(role)?;
        let token = (self.tokens)(role)?;
        let offer = describe(None);
        let r = http::request(
            &url,
            "POST",
            Some("application/sdp"),
            token.as_deref(),
            offer.as_bytes(),
            HTTP_TIMEOUT,
        )?;
        if r.status != 201 && r.status != 200 {
            return Err(JoinError::Status {
                what: format!("POST {url}"),
                status: r.status,
                body: r.text(),
            });
        }
        let loc = r
            .location
            .clone()
            .ok_or_else(|| JoinError::NoLocation(url.to_string()))?;
        let resource = url.join(&loc)?.to_string();
        let remote = Remote::parse(&String::from_utf8_lossy(&r.body))?;
        Ok((remote, resource))
    }

    fn leave(&self, handle: &str) -> Result<(), JoinError> {
        let url = http::Url::parse(handle)?;
        let r = http::request(&url, "DELETE", None, None, b"", HTTP_TIMEOUT)?;
        if r.ok() || r.status == 404 {
            Ok(())
        } else {
            Err(JoinError::Status {
                what: format!("DELETE {url}"),
                status: r.status,
                body: r.text(),
            })
        }
    }

    fn stats(&self) -> Option<Value> {
        let a = self.admin.as_ref()?;
        let r = a.request("GET", "/v1/stats", None).ok()?;
        r.status.eq(&200).then(|| crate::http::json(&r))
    }
}

/// Sluice's WHIP/WHEP with tokens minted per room through the admin API (`POST /v1/tokens`).
pub fn sluice(
    api: Option<&str>,
    admin_token: Option<&str>,
    app: &str,
    room: &str,
) -> Result<Whip, TargetError> {
    let found = if api.is_none() || admin_token.is_none() {
        Some(crate::target::discover()?)
    } else {
        None
    };
    let url = api
        .map(str::to_string)
        .or_else(|| found.as_ref().map(|f| f.admin_url.clone()))
        .ok_or(TargetError::Missing("admin_url"))?;
    let token = admin_token
        .map(str::to_string)
        .or_else(|| found.as_ref().map(|f| f.admin_token.clone()))
        .ok_or(TargetError::Missing("admin_token"))?;
    let admin = AdminClient::new(&url, &token)?;
    let r = admin.request("GET", "/v1/status", None)?;
    let status = crate::http::json(&r);
    let public = status["public_url"]
        .as_str()
        .ok_or(TargetError::Missing("public_url"))?
        .trim_end_matches('/')
        .to_string();
    let minter = admin.clone();
    let (app_m, room_m) = (app.to_string(), room.to_string());
    let tokens = move |role: Role| -> Result<Option<String>, JoinError> {
        let (r, sub) = match role {
            Role::Publish(i) => ("speaker", format!("bench-pub-{i}")),
            Role::Subscribe(i) => (
                "viewer",
                format!("bench-view-{i}-{}", rand::random::<u32>()),
            ),
        };
        let body = json!({
            "app": app_m,
            "room": format!("{room_m}-{}", role.room()),
            "role": r,
            "sub": sub,
            "ttl_secs": 3600,
        });
        let resp = minter
            .request("POST", "/v1/tokens", Some(&body))
            .map_err(|e| JoinError::Signal(format!("minting a token: {e}")))?;
        if !(200..300).contains(&resp.status) {
            return Err(JoinError::Status {
                what: "POST /v1/tokens".into(),
                status: resp.status,
                body: crate::http::message(&resp),
            });
        }
        crate::http::json(&resp)["token"]
            .as_str()
            .map(|t| Some(t.to_string()))
            .ok_or_else(|| JoinError::Signal("POST /v1/tokens answered without a token".into()))
    };
    Ok(Whip {
        whip: format!("{public}/whip/{app}/{{room}}"),
        whep: format!("{public}/whep/{app}/{{room}}"),
        room: room.to_string(),
        tokens: Box::new(tokens),
        kind: "sluice (WHIP/WHEP)".into(),
        admin: Some(admin),
    })
}

/// Set-up options.
#[derive(Debug, Clone)]
pub struct WebRtcOptions {
    pub profile: Profile,
    /// Handshakes run at once.
    pub concurrency: usize,
    /// Longest join (signalling, ICE and DTLS) of one endpoint.
    pub handshake_timeout: Duration,
    /// The server's processes (on this host) whose CPU time the report splits into the joins
    /// and the media; empty: not read.
    pub server_pids: Vec<u32>,
}

/// Timings of one endpoint's join.
#[derive(Debug, Clone, Copy, Default)]
struct JoinTimes {
    signal: Duration,
    ice: Duration,
    dtls: Duration,
    total: Duration,
}

/// An endpoint after its join.
struct Joined {
    controlling: bool,
    remote: SocketAddr,
    rx: MasterKey,
    tx: MasterKey,
    local: Credentials,
    their: Credentials,
    handle: String,
    times: JoinTimes,
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Millis {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Millis {
    pub fn of(mut v: Vec<f64>) -> Millis {
        if v.is_empty() {
            return Millis::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Millis {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// The WebRTC part of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebRtcSummary {
    pub publishers: usize,
    pub viewers: usize,
    /// Joins that completed (signalling, ICE, DTLS).
    pub handshakes: usize,
    pub failed: usize,
    /// Wall time of all joins (publishers, then viewers).
    pub setup_s: f64,
    /// `handshakes / setup_s`.
    pub handshakes_per_s: f64,
    pub concurrency: usize,
    /// Per endpoint: POST (or the server's API) until its answer.
    pub signal_ms: Millis,
    pub ice_ms: Millis,
    pub dtls_ms: Millis,
    /// Whole join: signalling + ICE + DTLS.
    pub join_ms: Millis,
    /// Per viewer: from the first probe sent to the first probe this viewer decrypted.
    pub first_media_ms: Millis,
    /// Viewers that received no probe at all.
    pub viewers_without_media: usize,
    pub profile: String,
    /// The server processes whose CPU time is read (`--server-pid`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_pids: Vec<u32>,
    /// Their CPU time over the joins, before any media (the media's is the report's
    /// `server_cpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_cpu: Option<CpuTimes>,
}

impl WebRtcSummary {
    pub fn text(&self) -> String {
        let m = |x: &Millis| {
            format!(
                "p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} ms",
                x.p50, x.p90, x.p99, x.max
            )
        };
        format!(
            "webrtc     {} publishers + {} viewers: {} joins done, {} failed in {:.2} s \
             ({:.1} handshakes/s, {} at once), {}\n\
             join       {}\n  signal   {}\n  ice      {}\n  dtls     {}\n\
             1st media  {} ({} viewers without media)\n",
            self.publishers,
            self.viewers,
            self.handshakes,
            self.failed,
            self.setup_s,
            self.handshakes_per_s,
            self.concurrency,
            self.profile,
            m(&self.join_ms),
            m(&self.signal_ms),
            m(&self.ice_ms),
            m(&self.dtls_ms),
            m(&self.first_media_ms),
            self.viewers_without_media,
        ) + &self.join_cpu.map_or(String::new(), |c| {
            format!(
                "join CPU   {:.2} s (user {:.2}, system {:.2}) of the server, {:.2} ms per join\n",
                c.total_s(),
                c.user_s,
                c.system_s,
                c.total_s() * 1e3 / self.handshakes.max(1) as f64
            )
        })
    }
}

/// Consent refreshes on every joined endpoint while media flows.
struct Keepalive {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// A WebRTC server under test.
pub struct WebRtcTarget {
    signaling: Arc<dyn Signaling>,
    opts: WebRtcOptions,
    identity: Identity,
    endpoints: Option<Endpoints>,
    joined: Vec<String>,
    keepalive: Option<Keepalive>,
    summary: WebRtcSummary,
}

impl WebRtcTarget {
    pub fn new(
        signaling: Box<dyn Signaling>,
        opts: WebRtcOptions,
    ) -> Result<WebRtcTarget, TargetError> {
        let identity = Identity::new(opts.profile).map_err(|e| TargetError::Join(e.to_string()))?;
        Ok(WebRtcTarget {
            signaling: Arc::from(signaling),
            identity,
            summary: WebRtcSummary {
                concurrency: opts.concurrency,
                profile: opts.profile.name().to_string(),
                server_pids: opts.server_pids.clone(),
                ..WebRtcSummary::default()
            },
            opts,
            endpoints: None,
            joined: Vec::new(),
            keepalive: None,
        })
    }

    /// Handshake figures so far (first media is filled in by [`WebRtcTarget::first_media`]).
    pub fn summary(&self) -> &WebRtcSummary {
        &self.summary
    }

    /// Record each viewer's time to first media (ns after the step started; `None`: none).
    pub fn first_media(&mut self, first: &[Option<u64>]) {
        self.summary.first_media_ms =
            Millis::of(first.iter().flatten().map(|ns| *ns as f64 / 1e6).collect());
        self.summary.viewers_without_media = first.iter().filter(|f| f.is_none()).count();
    }

    /// The server processes' CPU time so far; `None` without `server_pids` or when one of
    /// them cannot be read (it exited).
    fn read_server_cpu(&self) -> Option<CpuTimes> {
        if self.opts.server_pids.is_empty() {
            return None;
        }
        let mut sum = CpuTimes::default();
        for &pid in &self.opts.server_pids {
            sum = sum.add(&crate::sys::pid_cpu(pid).ok()?);
        }
        Some(sum)
    }

    /// Join every endpoint of `role_of` over `socks`, `concurrency` at a time.
    fn join_all(
        &self,
        socks: &[UdpSocket],
        role_of: &(dyn Fn(usize) -> Role + Sync),
        ssrc_of: &(dyn Fn(usize) -> Option<u32> + Sync),
    ) -> Vec<Result<Joined, JoinError>> {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<Joined, JoinError>>>> =
            Mutex::new((0..socks.len()).map(|_| None).collect());
        let workers = self.opts.concurrency.clamp(1, socks.len().max(1));
        std::thread::scope(|sc| {
            for _ in 0..workers {
                sc.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= socks.len() || crate::sys::interrupted() {
                        break;
                    }
                    let r = self.join_one(&socks[i], role_of(i), ssrc_of(i));
                    // A poisoned lock means another join thread panicked: a bench bug.
                    results.lock().expect("join results")[i] = Some(r);
                });
            }
        });
        results
            .into_inner()
            .expect("join results")
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(JoinError::Signal("interrupted".into()))))
            .collect()
    }

    fn join_one(
        &self,
        sock: &UdpSocket,
        role: Role,
        ssrc: Option<u32>,
    ) -> Result<Joined, JoinError> {
        let t0 = Instant::now();
        let deadline = t0 + self.opts.handshake_timeout;
        let local = Credentials::random();
        let candidate = crate::target::reachable(sock.local_addr().map_err(peer::PeerError::Io)?);
        let fingerprint = self.identity.fingerprint().to_string();
        let direction = match role {
            Role::Publish(_) => Direction::SendOnly,
            Role::Subscribe(_) => Direction::RecvOnly,
        };
        // Set when the server offered (Janus subscriptions): it then controls ICE.
        let server_offered = AtomicBool::new(false);
        let describe = |offer: Option<&Remote>| {
            if offer.is_some() {
                server_offered.store(true, Ordering::Relaxed);
            }
            sdp::describe(&sdp::Local {
                direction,
                ufrag: &local.ufrag,
                pwd: &local.pwd,
                fingerprint: &fingerprint,
                setup: if offer.is_some() { "active" } else { "actpass" },
                candidate,
                ssrc,
                pt: offer.and_then(|o| o.opus_pt).unwrap_or(PT),
                mid: offer.and_then(|o| o.mid.as_deref()).unwrap_or("0"),
            })
        };
        let (remote, handle) = self.signaling.join(role, &describe)?;
        let signal = t0.elapsed();
        let controlling = !server_offered.load(Ordering::Relaxed);
        let c = match peer::connect(sock, &remote, &local, &self.identity, controlling, deadline) {
            Ok(c) => c,
            Err(e) => {
                // Best effort: the join failed; the handshake error is the one to report.
                let _ = self.signaling.leave(&handle);
                return Err(e.into());
            }
        };
        Ok(Joined {
            controlling,
            remote: c.remote,
            rx: c.keys.rx,
            tx: c.keys.tx,
            their: Credentials {
                ufrag: remote.ufrag.clone(),
                pwd: remote.pwd.clone(),
            },
            local,
            handle,
            times: JoinTimes {
                signal,
                ice: c.ice,
                dtls: c.dtls,
                total: t0.elapsed(),
            },
        })
    }
}

/// One joined endpoint as the keepalive thread sees it.
struct Live {
    sock: UdpSocket,
    remote: SocketAddr,
    local: Credentials,
    their: Credentials,
    controlling: bool,
    handle: String,
}

/// Send a consent refresh (a check without USE-CANDIDATE) from each endpoint every
/// [`CONSENT_PERIOD`], and refresh its signalling every [`REFRESH_PERIOD`], until stopped. The
/// answers arrive on the generator's sockets and are counted there as control traffic.
fn start_keepalive(signaling: Arc<dyn Signaling>, peers: Vec<Live>) -> Keepalive {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        let tie: u64 = rand::random();
        let mut out = [0u8; ice::MAX_STUN];
        let mut next = Instant::now() + CONSENT_PERIOD;
        let mut next_refresh = Instant::now() + REFRESH_PERIOD;
        while !stop2.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                for p in &peers {
                    let tid = ice::transaction_id();
                    let c = ice::check(
                        &mut out,
                        &tid,
                        &p.local,
                        &p.their,
                        tie,
                        p.controlling,
                        false,
                    );
                    if let Ok(n) = c {
                        // Best effort: a lost refresh is repeated in CONSENT_PERIOD.
                        let _ = p.sock.send_to(&out[..n], p.remote);
                    }
                }
                next += CONSENT_PERIOD;
            }
            if Instant::now() >= next_refresh {
                for p in &peers {
                    signaling.refresh(&p.handle);
                }
                next_refresh += REFRESH_PERIOD;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    Keepalive { stop, thread }
}

impl Target for WebRtcTarget {
    fn info(&mut self) -> Result<TargetInfo, TargetError> {
        Ok(self.signaling.info())
    }

    fn wants_endpoints(&self) -> bool {
        true
    }

    fn lend_endpoints(&mut self, e: Endpoints) {
        self.endpoints = Some(e);
    }

    fn create(&mut self, plan: &Plan) -> Result<Wiring, TargetError> {
        let e = self.endpoints.take().ok_or_else(|| {
            TargetError::Join("the generator's sockets were not lent (lend_endpoints)".into())
        })?;
        if plan.profile != self.opts.profile {
            return Err(TargetError::Join(format!(
                "the run's profile {} is not the negotiated {}",
                plan.profile.name(),
                self.opts.profile.name()
            )));
        }
        let cpu0 = self.read_server_cpu();
        let t0 = Instant::now();
        let pub_socks: Vec<UdpSocket> = e
            .publishers
            .iter()
            .map(|p| p.0.try_clone())
            .collect::<Result<_, _>>()
            .map_err(|e| TargetError::Join(format!("socket: {e}")))?;
        let ssrcs: Vec<u32> = e.publishers.iter().map(|p| p.1).collect();
        let pubs = self.join_all(&pub_socks, &Role::Publish, &|i| Some(ssrcs[i]));
        let streams: Vec<usize> = e.subscribers.iter().map(|s| s.1).collect();
        let sub_socks: Vec<UdpSocket> = e
            .subscribers
            .iter()
            .map(|s| s.0.try_clone())
            .collect::<Result<_, _>>()
            .map_err(|e| TargetError::Join(format!("socket: {e}")))?;
        // Viewers only once every publisher is in (so their routes exist).
        let subs = if pubs.iter().all(Result::is_ok) {
            self.join_all(&sub_socks, &|j| Role::Subscribe(streams[j]), &|_| None)
        } else {
            Vec::new()
        };
        self.summary.setup_s = t0.elapsed().as_secs_f64();
        self.summary.join_cpu = self
            .read_server_cpu()
            .zip(cpu0)
            .map(|(after, before)| after.since(&before));
        self.summary.publishers = pubs.len();
        self.summary.viewers = sub_socks.len();

        let mut first_err = None;
        let mut times = Vec::new();
        let mut wiring = Wiring::default();
        let mut peers = Vec::new();
        for (k, r) in pubs.into_iter().chain(subs).enumerate() {
            match r {
                Ok(j) => {
                    times.push(j.times);
                    self.joined.push(j.handle.clone());
                    let publisher = k < pub_socks.len();
                    let sock = if publisher {
                        &pub_socks[k]
                    } else {
                        &sub_socks[k - pub_socks.len()]
                    };
                    if let Ok(s) = sock.try_clone() {
                        peers.push(Live {
                            sock: s,
                            remote: j.remote,
                            local: j.local.clone(),
                            their: j.their.clone(),
                            controlling: j.controlling,
                            handle: j.handle.clone(),
                        });
                    }
                    if publisher {
                        wiring.publisher_dst.push(j.remote);
                        wiring.publisher_keys.push(j.tx);
                    } else {
                        wiring.subscriber_keys.push(j.rx);
                    }
                }
                Err(err) => {
                    self.summary.failed += 1;
                    first_err.get_or_insert_with(|| {
                        let who = if k < pub_socks.len() {
                            format!("publisher {k}")
                        } else {
                            format!("viewer {}", k - pub_socks.len())
                        };
                        format!("{who}: {err}")
                    });
                }
            }
        }
        self.summary.handshakes = times.len();
        self.summary.handshakes_per_s = times.len() as f64 / self.summary.setup_s.max(1e-9);
        let ms = |f: fn(&JoinTimes) -> Duration| {
            Millis::of(times.iter().map(|t| f(t).as_secs_f64() * 1e3).collect())
        };
        self.summary.signal_ms = ms(|t| t.signal);
        self.summary.ice_ms = ms(|t| t.ice);
        self.summary.dtls_ms = ms(|t| t.dtls);
        self.summary.join_ms = ms(|t| t.total);
        if let Some(e) = first_err {
            return Err(TargetError::Join(format!(
                "{} of {} joins failed; first: {e}",
                self.summary.failed,
                pub_socks.len() + sub_socks.len()
            )));
        }
        self.keepalive = Some(start_keepalive(self.signaling.clone(), peers));
        Ok(wiring)
    }

    fn teardown(&mut self) -> Result<usize, TargetError> {
        if let Some(k) = self.keepalive.take() {
            k.stop.store(true, Ordering::Relaxed);
            // The keepalive thread only sends; it cannot panic short of a bench bug.
            let _ = k.thread.join();
        }
        let mut removed = 0;
        let mut first_err = None;
        for h in std::mem::take(&mut self.joined).into_iter().rev() {
            match self.signaling.leave(&h) {
                Ok(()) => removed += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            None => Ok(removed),
            Some(e) => Err(TargetError::Join(format!("leaving: {e}"))),
        }
    }

    fn stats(&mut self) -> Option<Value> {
        self.signaling.stats()
    }

    fn observe_first_media(&mut self, first_media_ns: &[Option<u64>]) {
        self.first_media(first_media_ns);
    }

    fn server_cpu(&mut self) -> Option<CpuTimes> {
        self.read_server_cpu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let m = Millis::of((1..=100).map(f64::from).collect());
        assert_eq!(m.max, 100.0);
        assert!((m.p50 - 50.0).abs() <= 1.0);
        assert!((m.p99 - 99.0).abs() <= 1.0);
        assert_eq!(Millis::of(Vec::new()), Millis::default());
    }
}
