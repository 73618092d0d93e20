//! A Sluice instance whose tests own the daemons they start ([`Instance`], an [`Appliance`]
//! that hands back its processes instead of keeping them), sessions made from [`Peer`]s, and
//! a steady SRTP stream between two peers with a loss report ([`Stream`]).
//!
//! Owns nothing of its own: binaries, processes, configs and the stream all come from
//! [`crate::daemons`]; this module only keeps the names the upgrade and fault tests use.

pub use crate::daemons::Setup;
pub use crate::daemons::{pid_alive, wait_pid_gone as wait_gone, Proc};
use crate::daemons::{signal_pid, Appliance, SrtpStream};
use crate::Peer;
use contract::shm::Role;
use contract::srtp::Profile;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// [`signal_pid`] with the signal by name ("TERM", "KILL", "INT", "HUP", "STOP", "CONT").
pub fn signal(pid: u32, sig: &str) {
    use rustix::process::Signal as S;
    let sig = match sig {
        "TERM" => S::TERM,
        "KILL" => S::KILL,
        "INT" => S::INT,
        "HUP" => S::HUP,
        "STOP" => S::STOP,
        "CONT" => S::CONT,
        _ => panic!("signal name {sig:?} not known to the tests"),
    };
    signal_pid(pid, sig);
}

/// One Sluice instance in a temp directory (config, runtime dir, shm file, media port); its
/// fields (`dir`, `config`, `runtime`, `shm`, `media`) are the [`Appliance`]'s.
pub struct Instance(Appliance);

impl Deref for Instance {
    type Target = Appliance;
    fn deref(&self) -> &Appliance {
        &self.0
    }
}

impl Instance {
    /// `backend`: "mmsg", "io_uring" or "auto". `audit_log`: None = the default path.
    pub fn new(tag: &str, backend: &str, workers: u32, audit_log: Option<&Path>) -> Instance {
        let setup = Setup {
            workers,
            audit_log: audit_log.map(Path::to_path_buf),
            ..Setup::default()
        };
        Instance(Appliance::setup(tag, backend, &setup))
    }

    /// [`Instance::new`] with every [`Setup`] choice open.
    pub fn with_setup(tag: &str, backend: &str, setup: &Setup) -> Instance {
        Instance(Appliance::setup(tag, backend, setup))
    }

    /// Start `sluice-control` and wait for its runtime file (control.json naming its pid).
    pub fn start_control(&self) -> Proc {
        self.0.spawn_control().0
    }

    /// Start `sluice-relay --shm-wait 20` with `extra` arguments; returns at once (see
    /// [`Appliance::wait_relay`]).
    pub fn spawn_relay(&self, extra: &[&str]) -> Proc {
        self.0.spawn_relay(&[&["--shm-wait", "20"], extra].concat())
    }

    /// `sluicectl ARGS` against this instance; (exit status, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let o = self.0.ctl(args);
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        (o.status, text(o.stdout), text(o.stderr))
    }

    /// Add `peer` as a static-key session through the admin API; its id.
    pub fn add_session(&self, peer: &Peer) -> u64 {
        let role = match peer.role {
            Role::Viewer => "viewer",
            _ => "host",
        };
        self.0.add_session(
            &peer.addr().to_string(),
            peer.send_key.profile(),
            &peer.send_key.to_base64(),
            &peer.recv_key.to_base64(),
            role,
        )
    }

    /// A publisher → subscriber pair with a route, created through the admin API.
    pub fn pair(&self, seed: u64, profile: Profile) -> (Peer, Peer) {
        let p = Peer::new(seed, Role::Host, profile);
        let s = Peer::new(seed + 1, Role::Viewer, profile);
        let pid = self.add_session(&p);
        let sid = self.add_session(&s);
        self.ctl_ok(&[
            "route",
            "add",
            "--from",
            &pid.to_string(),
            "--to",
            &sid.to_string(),
        ]);
        (p, s)
    }
}

/// What a receiver saw of a steady stream.
#[derive(Debug, Default, Clone)]
pub struct StreamReport {
    pub sent: u32,
    /// Distinct sequence indexes received.
    pub received: BTreeSet<u32>,
    pub duplicates: u32,
    /// Packets that arrived after a higher index.
    pub reordered: u32,
    /// Longest time without a packet while the sender was sending.
    pub longest_gap: Duration,
}

impl StreamReport {
    pub fn lost(&self) -> Vec<u32> {
        (0..self.sent)
            .filter(|i| !self.received.contains(i))
            .collect()
    }
}

/// A steady SRTP stream publisher → relay → subscriber at `pps` packets per second until
/// [`Stream::finish`]: an [`SrtpStream`] over the two peers' sockets and keys.
pub struct Stream(pub SrtpStream);

impl Stream {
    pub fn start(publisher: Peer, subscriber: Peer, relay: SocketAddr, pps: u32) -> Stream {
        let mut s = SrtpStream::from_peers(publisher, subscriber);
        s.start(relay, Duration::from_secs(1) / pps);
        Stream(s)
    }

    /// Packets received so far.
    pub fn received_count(&self) -> usize {
        self.0.received()
    }

    /// The first arrival at or after `t`, if any.
    pub fn first_arrival_after(&self, t: Instant) -> Option<Instant> {
        self.0.first_arrival_after(t)
    }

    /// Stop sending, wait for the tail, and report; every packet must have decrypted.
    pub fn finish(mut self) -> StreamReport {
        self.0.stop();
        let (arrivals, failures) = self.0.snapshot();
        assert_eq!(failures, 0, "subscriber: undecryptable packets");
        let mut rep = StreamReport {
            sent: u32::try_from(self.0.sent()).expect("fewer than 2^32 packets"),
            ..StreamReport::default()
        };
        let mut highest = None;
        for a in &arrivals {
            let i = u32::try_from(a.counter).expect("fewer than 2^32 packets");
            if !rep.received.insert(i) {
                rep.duplicates += 1;
            }
            if highest.is_some_and(|h| i < h) {
                rep.reordered += 1;
            }
            highest = highest.max(Some(i));
        }
        rep.longest_gap = arrivals
            .windows(2)
            .map(|w| w[1].at - w[0].at)
            .max()
            .unwrap_or_default();
        rep
    }
}
