//! Garbage traffic beside a measurement (`sluice-bench run --garbage-rate PPS`): one to four
//! threads (one per 200 000/s asked) send datagrams the relay must refuse, at a paced rate, to the relay's media address,
//! while the normal run measures legitimate throughput (docs/SECURITY.md "Garbage under
//! load").
//!
//! The mix, in rotation, from [`SOURCES`] sockets (distinct source addresses on loopback, else
//! distinct ports on the bench's bind address), in `sendmmsg` batches: SRTP-looking RTP from
//! unknown sources (dropped as `UnknownSource`), bytes outside every RFC 7983 range (`Demux`),
//! STUN Binding requests with a bogus MESSAGE-INTEGRITY and DTLS ClientHello-shaped records
//! (well-formed, so the relay's slow-path gate rate-limits them per source before control's
//! own limit). Owns only its sockets and thread; no session is created.

use crate::sys::{gso_works, SendBatch};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Sockets garbage is sent from.
pub const SOURCES: usize = 16;

/// What the garbage thread did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GarbageStats {
    pub sent: u64,
    pub send_errors: u64,
    pub elapsed: Duration,
}

impl GarbageStats {
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.sent as f64 / s
        } else {
            0.0
        }
    }
}

/// A running garbage sender; [`stop`](Self::stop) ends it.
pub struct Garbage {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<GarbageStats>>,
}

/// Every garbage datagram is this long, so a run of them can leave as one UDP GSO message.
pub const LEN: usize = 200;

/// Datagram `n` of the rotation (deterministic, cheap to build), [`LEN`] bytes.
pub fn datagram(n: u64, out: &mut [u8; LEN]) -> usize {
    let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for (i, b) in out.iter_mut().enumerate() {
        *b = (x >> ((i % 8) * 8)) as u8 ^ i as u8;
    }
    match n % 4 {
        0 => {
            // RTP version 2, random SSRC and "tag": an unknown source's media.
            out[0] = 0x80;
            out[1] = 96;
        }
        1 => {
            // First byte 64..=127: no RFC 7983 range.
            out[0] = 64 + (x as u8 & 63);
        }
        2 => {
            // STUN Binding request (RFC 8489 §5): USERNAME, a SOFTWARE attribute that fills
            // the datagram, and a MESSAGE-INTEGRITY that no password verifies.
            let body = &mut out[20..];
            body.fill(0);
            body[..4].copy_from_slice(&[0x00, 0x06, 0x00, 0x09]);
            body[4..13].copy_from_slice(b"SluI:BrWs");
            let sw = LEN - 20 - 16 - 24 - 4;
            body[16..18].copy_from_slice(&0x8022u16.to_be_bytes());
            body[18..20].copy_from_slice(&(sw as u16).to_be_bytes());
            body[20..20 + sw].fill(b'g');
            let mi = 20 + sw;
            body[mi..mi + 4].copy_from_slice(&[0x00, 0x08, 0x00, 0x14]);
            out[..4].copy_from_slice(&[0x00, 0x01, 0x00, (LEN - 20) as u8]);
            out[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
        }
        _ => {
            // DTLS 1.2 handshake record, ClientHello (RFC 6347 §4.1, §4.2.2), one whole record.
            out[..3].copy_from_slice(&[22, 0xFE, 0xFD]);
            out[11..13].copy_from_slice(&((LEN - 13) as u16).to_be_bytes());
            out[13] = 1;
        }
    }
    LEN
}

impl Garbage {
    /// Start sending to `dst` at `pps` datagrams per second from sockets on `bind_ip`. With a
    /// loopback IPv4 `bind_ip` the sockets take [`SOURCES`] distinct addresses of 127.0.0.0/8
    /// (127.66.0.1, 127.66.0.2, ...), so the flood comes from many sources, as a real one does.
    pub fn start(dst: SocketAddr, bind_ip: IpAddr, pps: f64) -> io::Result<Garbage> {
        if !(pps.is_finite() && pps > 0.0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--garbage-rate must be positive",
            ));
        }
        let socks = (0..SOURCES)
            .map(|i| {
                let ip = match bind_ip {
                    IpAddr::V4(v4) if v4.is_loopback() => {
                        IpAddr::V4(Ipv4Addr::new(127, 66, 0, i as u8 + 1))
                    }
                    ip => ip,
                };
                let s = UdpSocket::bind(SocketAddr::new(ip, 0))?;
                s.set_nonblocking(true)?;
                s.connect(dst)?;
                Ok(s)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        // One sender thread manages a few hundred thousand datagrams a second on loopback
        // (the kernel's receive path runs in the sending call); split higher rates.
        let n = ((pps / PER_THREAD).ceil() as usize).clamp(1, MAX_THREADS);
        let mut socks = socks;
        let per = SOURCES / n;
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let mine: Vec<UdpSocket> = socks
                .drain(..if i + 1 == n { socks.len() } else { per })
                .collect();
            let flag = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("garbage-{i}"))
                    .spawn(move || run(&mine, pps / n as f64, i as u64, &flag))?,
            );
        }
        Ok(Garbage { stop, threads })
    }

    pub fn stop(self) -> GarbageStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = GarbageStats::default();
        for t in self.threads {
            // The threads only send and sleep; a panic there is a bug worth surfacing.
            let s = t.join().unwrap_or_default();
            total.sent += s.sent;
            total.send_errors += s.send_errors;
            total.elapsed = total.elapsed.max(s.elapsed);
        }
        total
    }
}

/// Garbage rate one sender thread is given at most.
const PER_THREAD: f64 = 200_000.0;
/// Most garbage sender threads.
const MAX_THREADS: usize = 4;

/// Datagrams per `sendmmsg` (one source socket per batch, the next batch from the next).
const BATCH: usize = 64;
const SLOT: usize = LEN;

/// One sender thread: `pps` datagrams per second from `socks`, rotation offset by `lane` so
/// threads do not send identical datagrams.
fn run(socks: &[UdpSocket], pps: f64, lane: u64, stop: &AtomicBool) -> GarbageStats {
    let start = Instant::now();
    let mut st = GarbageStats::default();
    let mut arena = vec![0u8; BATCH * SLOT];
    let mut lens = [0usize; BATCH];
    let mut batch = SendBatch::new(BATCH);
    // One GSO message per batch where the kernel offers it (one send, 64 datagrams).
    let gso = socks
        .first()
        .and_then(|s| s.local_addr().ok())
        .filter(|a| gso_works(a.ip()))
        .map(|_| SLOT);
    let mut n = 0u64;
    let mut sock = 0usize;
    let base = lane << 40;
    while !stop.load(Ordering::Relaxed) {
        // Paced: catch up to where the rate says we should be, then sleep a millisecond.
        let due = (start.elapsed().as_secs_f64() * pps) as u64;
        while n < due && !stop.load(Ordering::Relaxed) {
            let b = (due - n).min(BATCH as u64) as usize;
            for (k, len) in lens[..b].iter_mut().enumerate() {
                let slot: &mut [u8; SLOT] = (&mut arena[k * SLOT..(k + 1) * SLOT])
                    .try_into()
                    .expect("SLOT-sized chunk");
                *len = datagram(base + n + k as u64, slot);
            }
            let s = &socks[sock % socks.len()];
            sock += 1;
            match batch.send_with(s.as_raw_fd(), &arena, SLOT, &lens[..b], gso) {
                Ok(r) => {
                    st.sent += r as u64;
                    st.send_errors += (b - r) as u64;
                }
                Err(_) => st.send_errors += b as u64,
            }
            n += b as u64;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    st.elapsed = start.elapsed();
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::wire::{classify, Kind};

    #[test]
    fn rotation_covers_each_kind() {
        let mut buf = [0u8; LEN];
        let kinds: Vec<Kind> = (0..4)
            .map(|n| {
                let len = datagram(n, &mut buf);
                classify(&buf[..len])
            })
            .collect();
        assert_eq!(kinds[0], Kind::Rtp);
        assert!(!matches!(
            kinds[1],
            Kind::Rtp | Kind::Rtcp | Kind::Stun | Kind::Dtls
        ));
        assert_eq!(kinds[2], Kind::Stun);
        assert_eq!(kinds[3], Kind::Dtls);
        let len = datagram(3, &mut buf);
        assert!(contract::wire::dtls::records(&buf[..len]).all(|r| r.is_ok()));
        let len = datagram(2, &mut buf);
        let m = contract::wire::stun::StunMessage::parse(&buf[..len]).expect("STUN parses");
        assert!(m.verify_integrity(b"anything").is_err());
    }

    #[test]
    fn paced_and_stoppable() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let g = Garbage::start(
            rx.local_addr().expect("addr"),
            "127.0.0.1".parse().expect("ip"),
            2000.0,
        )
        .expect("start");
        std::thread::sleep(Duration::from_millis(300));
        let s = g.stop();
        assert!(s.sent > 200 && s.sent < 2000, "{s:?}");
    }
}
