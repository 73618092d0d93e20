//! One endpoint's transport set-up on its own UDP socket, after signalling: ICE checks until
//! the server's candidate is nominated (and, with a full-ICE server, until we answered one of
//! its checks), then the DTLS handshake, answering STUN all along. Blocking, bounded by a
//! deadline; the socket is the generator's (a clone of it), left as it was found.
//!
//! Owns: the handshake loop. May not touch: signalling, media.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::dtls::{Dtls, DtlsError, Identity, SrtpKeys};
use super::ice::{self, Credentials, IceError, Stun, MAX_STUN};
use super::sdp::{Remote, SdpError, Setup};

/// Period of check retransmissions, and the longest blocking read.
const TICK: Duration = Duration::from_millis(50);
/// DTLS datagrams kept while ICE is still running (a server may send its ClientHello first).
const MAX_EARLY: usize = 8;
/// Outstanding check transactions remembered.
const MAX_PENDING: usize = 16;

/// Why an endpoint's transport did not come up.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Sdp(#[from] SdpError),
    #[error(transparent)]
    Ice(#[from] IceError),
    #[error(transparent)]
    Dtls(#[from] DtlsError),
    #[error("timed out in {0}")]
    Timeout(&'static str),
}

/// A connected endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Connected {
    /// The server's nominated address (where media goes and comes from).
    pub remote: SocketAddr,
    pub keys: SrtpKeys,
    pub ice: Duration,
    pub dtls: Duration,
}

/// RFC 7983 demultiplexing by first byte.
fn is_stun(d: &[u8]) -> bool {
    d.first().is_some_and(|b| *b < 4)
}
fn is_dtls(d: &[u8]) -> bool {
    d.first().is_some_and(|b| (20..=63).contains(b))
}

/// Run ICE and DTLS on `sock` against the server described by `remote`. `controlling`: we
/// offered (the server answered); otherwise the server offered and nominates.
pub fn connect(
    sock: &UdpSocket,
    remote: &Remote,
    local: &Credentials,
    id: &Identity,
    controlling: bool,
    deadline: Instant,
) -> Result<Connected, PeerError> {
    sock.set_read_timeout(Some(TICK))?;
    let r = run(sock, remote, local, id, controlling, deadline);
    // The generator reads with MSG_DONTWAIT; restore blocking reads without a timeout anyway.
    let _ = sock.set_read_timeout(None);
    r
}

fn run(
    sock: &UdpSocket,
    remote: &Remote,
    local: &Credentials,
    id: &Identity,
    controlling: bool,
    deadline: Instant,
) -> Result<Connected, PeerError> {
    let v4 = sock.local_addr()?.is_ipv4();
    let target = remote.candidate_for(v4)?;
    let their = Credentials {
        ufrag: remote.ufrag.clone(),
        pwd: remote.pwd.clone(),
    };
    let tie_breaker: u64 = rand::random();
    let mut out = [0u8; MAX_STUN];
    let mut buf = [0u8; 2048];
    let mut pending: Vec<[u8; 12]> = Vec::with_capacity(MAX_PENDING);
    let mut early: Vec<Vec<u8>> = Vec::new();
    let (mut checked, mut nominated, mut answered) = (false, false, false);
    let mut next_check = Instant::now();
    let t0 = Instant::now();

    // ICE. Controlling: a check, then (once one succeeded) a nominating check (RFC 8445
    // §8.1.1), and with a full agent one of its checks answered. Controlled: our check
    // succeeded and the server nominated the pair.
    loop {
        let done = if controlling {
            nominated && (remote.lite || answered)
        } else {
            checked && nominated
        };
        if done {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(PeerError::Timeout("ICE"));
        }
        if now >= next_check && !(if controlling { nominated } else { checked }) {
            let tid = ice::transaction_id();
            let n = ice::check(
                &mut out,
                &tid,
                local,
                &their,
                tie_breaker,
                controlling,
                checked,
            )?;
            if pending.len() == MAX_PENDING {
                pending.remove(0);
            }
            pending.push(tid);
            sock.send_to(&out[..n], target)?;
            next_check = now + TICK * 2;
        }
        let Some((n, from)) = recv(sock, &mut buf)? else {
            continue;
        };
        let d = &buf[..n];
        if is_dtls(d) && from == target && early.len() < MAX_EARLY {
            early.push(d.to_vec());
            continue;
        }
        if !is_stun(d) {
            continue;
        }
        match ice::handle(d, from, local, &their, &mut out) {
            Stun::Answered(m, use_candidate) => {
                sock.send_to(&out[..m], from)?;
                answered = true;
                if !controlling && use_candidate && from == target {
                    nominated = true;
                }
            }
            Stun::Success(tid) if pending.contains(&tid) => {
                pending.clear();
                if checked && controlling {
                    nominated = true;
                } else {
                    checked = true;
                    next_check = Instant::now();
                }
            }
            Stun::Error(tid, code) if pending.contains(&tid) => {
                return Err(IceError::Refused(code).into())
            }
            _ => {}
        }
    }
    let t_ice = t0.elapsed();

    // DTLS.
    let t1 = Instant::now();
    let mut dtls = Dtls::new(
        id,
        remote.setup == Setup::Active,
        remote.fingerprint.clone(),
    )?;
    let mut keys = None;
    for d in early.drain(..) {
        keys = keys.or(dtls.handle(&d)?);
    }
    let mut last_rx = Instant::now();
    loop {
        for d in dtls.take_transmits() {
            sock.send_to(&d, target)?;
        }
        if let Some(k) = keys {
            return Ok(Connected {
                remote: target,
                keys: k,
                ice: t_ice,
                dtls: t1.elapsed(),
            });
        }
        if Instant::now() >= deadline {
            return Err(PeerError::Timeout("DTLS"));
        }
        match recv(sock, &mut buf)? {
            Some((n, from)) => {
                let d = &buf[..n];
                if is_dtls(d) && from == target {
                    last_rx = Instant::now();
                    keys = dtls.handle(d)?;
                } else if is_stun(d) {
                    if let Stun::Answered(m, _) = ice::handle(d, from, local, &their, &mut out) {
                        sock.send_to(&out[..m], from)?;
                    }
                }
            }
            None => {
                if last_rx.elapsed() >= TICK {
                    dtls.on_timer()?;
                }
            }
        }
    }
}

/// One datagram, or `None` after [`TICK`] without one.
fn recv(sock: &UdpSocket, buf: &mut [u8]) -> Result<Option<(usize, SocketAddr)>, PeerError> {
    match sock.recv_from(buf) {
        Ok(x) => Ok(Some(x)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        // A port unreachable from an earlier send (ICMP on loopback): keep going.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(None),
        Err(e) => Err(e.into()),
    }
}
