//! Echo through real workers on loopback, for each backend (io_uring skipped, with a reason,
//! only where the kernel refuses it).

#[path = "../../tests/support/skip.rs"]
mod skip;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use relay::batch::TxQueue;
use relay::io::{self, BackendChoice, RunningBackend};
use relay::worker::{spawn_workers, Echo, Handler, WorkerConfig};

fn config(backend: BackendChoice, workers: usize, bind: SocketAddr) -> WorkerConfig {
    WorkerConfig {
        bind,
        workers: Some(workers),
        backend,
        batch: 32,
        tx_capacity: 64,
        recv_buffers: 256,
        socket_buffers: io::SocketBuffers {
            recv: 1 << 20,
            send: 1 << 20,
        },
        pin: workers > 1,
        ..WorkerConfig::default()
    }
}

/// The backends to test here; io_uring only when the kernel allows it.
fn backends() -> Vec<BackendChoice> {
    let mut v = vec![BackendChoice::Mmsg];
    match io::probe_io_uring() {
        Ok(()) => v.push(BackendChoice::IoUring),
        Err(e) => skip::skip(format!("io_uring unavailable: {e}")),
    }
    v
}

fn ipv6_loopback() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

fn payload(client: usize, seq: usize) -> Vec<u8> {
    let sizes = [1usize, 12, 100, 172, 500, 1200, 1400, 1500, 2048];
    let len = sizes[(client * 7 + seq) % sizes.len()];
    let mut p = vec![0u8; len];
    for (i, b) in p.iter_mut().enumerate() {
        *b = (client as u8).wrapping_mul(31) ^ (seq as u8) ^ (i as u8);
    }
    if len >= 3 {
        p[0] = client as u8;
        p[1..3].copy_from_slice(&(seq as u16).to_be_bytes());
    }
    p
}

/// Send `n` datagrams from each of `clients` sockets in windows, expect each back intact.
fn echo_roundtrip(backend: BackendChoice, workers: usize, ip: IpAddr, clients: usize, n: usize) {
    let w = spawn_workers(config(backend, workers, SocketAddr::new(ip, 0)), |_| {
        Echo::default()
    })
    .expect("spawn workers");
    assert_eq!(BackendChoice::from(w.backend()), backend);
    assert_eq!(w.len(), workers);
    let relay = w.local_addr();
    assert_ne!(relay.port(), 0);
    let socks: Vec<UdpSocket> = (0..clients)
        .map(|_| {
            let s = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s
        })
        .collect();
    let window = 16;
    let mut buf = [0u8; 4096];
    for (c, s) in socks.iter().enumerate() {
        let mut seq = 0;
        while seq < n {
            let end = (seq + window).min(n);
            let mut want: HashMap<Vec<u8>, usize> = HashMap::new();
            for k in seq..end {
                let p = payload(c, k);
                s.send_to(&p, relay).unwrap();
                *want.entry(p).or_default() += 1;
            }
            for _ in seq..end {
                let (len, from) = s.recv_from(&mut buf).unwrap_or_else(|e| {
                    panic!("{backend} x{workers}: client {c} lost a datagram near seq {seq}: {e}")
                });
                assert_eq!(from, relay, "reply must come from the relay's port");
                let got = buf[..len].to_vec();
                let cnt = want
                    .get_mut(&got)
                    .expect("echo returned bytes that were never sent");
                *cnt -= 1;
                if *cnt == 0 {
                    want.remove(&got);
                }
            }
            assert!(want.is_empty());
            seq = end;
        }
    }
    let total = (clients * n) as u64;
    // Counters are published at the end of each turn; stop() publishes the last ones.
    let stats = w.stats().to_vec();
    w.stop().expect("clean stop");
    let sum = stats
        .iter()
        .map(|s| s.snapshot())
        .fold(Default::default(), |a, b| a + b);
    let sum: relay::worker::StatsSnapshot = sum;
    assert_eq!(
        sum.rx_packets, total,
        "{backend} x{workers}: received count"
    );
    assert_eq!(sum.tx_packets, total, "{backend} x{workers}: sent count");
    assert_eq!(sum.tx_errors + sum.rx_errors + sum.rx_oversized, 0);
}

#[test]
fn io_echo_ipv4_one_and_two_workers() {
    for b in backends() {
        echo_roundtrip(b, 1, "127.0.0.1".parse().unwrap(), 3, 120);
        echo_roundtrip(b, 2, "127.0.0.1".parse().unwrap(), 4, 120);
    }
}

#[test]
fn io_echo_ipv6() {
    if !ipv6_loopback() {
        skip::skip("::1 unavailable");
        return;
    }
    for b in backends() {
        echo_roundtrip(b, 2, "::1".parse().unwrap(), 3, 60);
    }
}

/// Replies with the source address the handler saw, as text.
struct AddrEcho;
impl Handler for AddrEcho {
    fn on_datagram(
        &mut self,
        src: SocketAddr,
        _buf: &mut [u8],
        _len: usize,
        tx: &mut TxQueue,
        _slow: &mut TxQueue,
    ) {
        tx.push(src, src.to_string().as_bytes());
    }
}

#[test]
fn io_dual_stack_reports_plain_ipv4() {
    if !ipv6_loopback() {
        skip::skip("::1 unavailable");
        return;
    }
    for b in backends() {
        let w = spawn_workers(config(b, 1, "[::]:0".parse().unwrap()), |_| AddrEcho).unwrap();
        let port = w.local_addr().port();
        let c4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        c4.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c4.send_to(b"x", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 128];
        let (n, from) = c4.recv_from(&mut buf).unwrap();
        assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            c4.local_addr().unwrap().to_string()
        );
        let c6 = UdpSocket::bind("[::1]:0").unwrap();
        c6.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c6.send_to(b"y", ("::1", port)).unwrap();
        let (n, _) = c6.recv_from(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            c6.local_addr().unwrap().to_string()
        );
        w.stop().unwrap();
    }
}

/// On a datagram `[b'B', count, size_hi, size_lo]`, queue `count` equal-sized datagrams to
/// the sender in `end_batch` (one run: a GSO train where the kernel supports it).
#[derive(Default)]
struct Burst {
    pending: Option<(SocketAddr, usize, usize)>,
}
impl Handler for Burst {
    fn on_datagram(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        _tx: &mut TxQueue,
        _slow: &mut TxQueue,
    ) {
        if len == 4 && buf[0] == b'B' {
            self.pending = Some((
                src,
                buf[1] as usize,
                u16::from_be_bytes([buf[2], buf[3]]) as usize,
            ));
        }
    }
    fn end_batch(&mut self, _now: Instant, tx: &mut TxQueue, _slow: &mut TxQueue) {
        if let Some((dst, count, size)) = self.pending.take() {
            for i in 0..count {
                tx.push_with(dst, |slot| {
                    slot[..size].fill(i as u8);
                    slot[..2].copy_from_slice(&(i as u16).to_be_bytes());
                    Some(size)
                });
            }
        }
    }
}

#[test]
fn io_gso_train_delivered_in_order() {
    for b in backends() {
        let mut cfg = config(b, 1, "127.0.0.1:0".parse().unwrap());
        cfg.tx_capacity = 256;
        let w = spawn_workers(cfg, |_| Burst::default()).unwrap();
        let relay = w.local_addr();
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        let _ = c.set_recv_buffer_size(4 << 20);
        c.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let c: UdpSocket = c.into();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let (count, size) = (150usize, 1100usize);
        let mut buf = [0u8; 4096];
        for round in 0..3 {
            c.send_to(&[b'B', count as u8, (size >> 8) as u8, size as u8], relay)
                .unwrap();
            for i in 0..count {
                let (n, from) = c
                    .recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("{b}: round {round}: datagram {i} missing: {e}"));
                assert_eq!(from, relay);
                assert_eq!(n, size);
                assert_eq!(
                    u16::from_be_bytes([buf[0], buf[1]]) as usize,
                    i,
                    "{b}: out of order"
                );
                assert!(buf[2..n].iter().all(|&x| x == i as u8));
            }
        }
        let stats = w.stats()[0].clone();
        w.stop().unwrap();
        let s = stats.snapshot();
        assert_eq!(s.tx_packets, 3 * count as u64);
        if io::gso_supported() {
            assert!(
                s.tx_gso_trains >= 3,
                "{b}: expected GSO trains, got {}",
                s.tx_gso_trains
            );
            assert!(
                s.syscalls < 200,
                "{b}: batching should need few syscalls, saw {}",
                s.syscalls
            );
        } else {
            skip::skip("UDP GSO unsupported here; checked delivery only");
        }
    }
}

#[test]
fn io_stop_is_prompt_when_idle() {
    for b in backends() {
        let w = spawn_workers(config(b, 2, "127.0.0.1:0".parse().unwrap()), |_| {
            Echo::default()
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        w.stop().unwrap();
        // Generous bound (2 s) against a hang; the design bound is poll_interval (20 ms).
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}

#[test]
fn io_auto_resolves() {
    let (kind, reason) = io::resolve_backend(BackendChoice::Auto).unwrap();
    match io::probe_io_uring() {
        Ok(()) => assert_eq!((kind, reason), (RunningBackend::IoUring, None)),
        Err(_) => {
            assert_eq!(kind, RunningBackend::Mmsg);
            assert!(reason.is_some());
        }
    }
}

/// Sends every datagram back `COPIES` times: with a transmit queue smaller than a batch's
/// output, each drain stops at the full queue, the worker sends it and drains on.
#[derive(Default)]
struct Triple;
const COPIES: usize = 3;
impl Handler for Triple {
    fn on_datagram(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        tx: &mut TxQueue,
        _slow: &mut TxQueue,
    ) {
        for _ in 0..COPIES {
            tx.push(src, &buf[..len]);
        }
    }
}

#[test]
fn io_full_transmit_queue_is_sent_between_datagrams() {
    for b in backends() {
        let mut cfg = config(b, 1, "127.0.0.1:0".parse().unwrap());
        // Room for exactly one datagram's copies: a drain stops after every datagram.
        cfg.tx_capacity = COPIES;
        let w = spawn_workers(cfg, |_| Triple).unwrap();
        let relay = w.local_addr();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let n = 20usize;
        for i in 0..n {
            c.send_to(&(i as u32).to_be_bytes(), relay).unwrap();
        }
        let mut got: HashMap<u32, usize> = HashMap::new();
        let mut buf = [0u8; 64];
        for _ in 0..n * COPIES {
            let (l, _) = c.recv_from(&mut buf).expect("every copy comes back");
            assert_eq!(l, 4, "{b}");
            *got.entry(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]))
                .or_default() += 1;
        }
        assert_eq!(got.len(), n, "{b}: {got:?}");
        assert!(got.values().all(|&k| k == COPIES), "{b}: {got:?}");
        w.stop().unwrap();
    }
}
