//! Passive ICE-TCP through real workers on loopback (mmsg backend): RFC 4571 framing both
//! ways, IPv4 and IPv6 on a dual-stack listener, and hostile connections (10,000 idle ones,
//! garbage, a 64 KiB frame length, a peer that never reads) while UDP peers keep being
//! served with no loss.

#[path = "../../tests/support/skip.rs"]
mod skip;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use relay::batch::TxQueue;
use relay::io::tcp::TcpParams;
use relay::io::{self, BackendChoice};
use relay::worker::{spawn_workers, Handler, WorkerConfig, Workers};

/// Answers a STUN binding request with a binding success (same transaction), echoes the rest.
#[derive(Default)]
struct StunEcho;

impl Handler for StunEcho {
    fn on_datagram(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        tx: &mut TxQueue,
        _slow: &mut TxQueue,
    ) {
        if len >= 20 && buf[0..2] == [0x00, 0x01] && buf[4..8] == [0x21, 0x12, 0xa4, 0x42] {
            buf[0..2].copy_from_slice(&[0x01, 0x01]);
        }
        tx.push(src, &buf[..len]);
    }
}

/// The tests run one at a time: the idle-connection test measures the process's RSS and holds
/// 10,000 ephemeral ports, which the others would disturb and collide with.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn binding_request(tid: u8) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&[tid; 12]);
    m
}

fn frame(data: &[u8]) -> Vec<u8> {
    let mut v = (data.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(data);
    v
}

fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("frame length");
    let mut v = vec![0u8; usize::from(u16::from_be_bytes(h))];
    s.read_exact(&mut v).expect("frame body");
    v
}

/// Workers on `bind` with ICE-TCP on the media port. The kernel picks the UDP port; the same
/// TCP port may be some local client's ephemeral port, so try a few times.
fn start(bind: SocketAddr, timeout: Duration, max_connections: usize) -> Workers {
    for _ in 0..9 {
        if let Ok(w) = try_start(bind, timeout, max_connections) {
            return w;
        }
    }
    try_start(bind, timeout, max_connections).expect("spawn workers")
}

fn try_start(
    bind: SocketAddr,
    timeout: Duration,
    max_connections: usize,
) -> Result<Workers, relay::worker::WorkerError> {
    spawn_workers(
        WorkerConfig {
            bind,
            workers: Some(1),
            backend: BackendChoice::Mmsg,
            batch: 32,
            tx_capacity: 64,
            socket_buffers: io::SocketBuffers {
                recv: 1 << 20,
                send: 1 << 20,
            },
            pin: false,
            tcp: Some((
                SocketAddr::new(bind.ip(), 0),
                TcpParams {
                    max_connections,
                    handshake_timeout: timeout,
                    send_buffer: 16_384,
                },
            )),
            ..WorkerConfig::default()
        },
        |_| StunEcho,
    )
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// Binding request, success, then `n` frames echoed intact and in order.
fn tcp_roundtrip(addr: SocketAddr, n: usize) {
    let mut s = connect(addr);
    s.write_all(&frame(&binding_request(7))).unwrap();
    let resp = read_frame(&mut s);
    assert_eq!(resp[0..2], [0x01, 0x01], "binding success");
    for i in 0..n {
        let p: Vec<u8> = (0..(i % 1400) + 1).map(|j| (i ^ j) as u8).collect();
        s.write_all(&frame(&p)).unwrap();
        assert_eq!(read_frame(&mut s), p, "frame {i}");
    }
}

/// `n` UDP datagrams in windows of 16, each echoed: no loss.
fn udp_roundtrip(relay: SocketAddr, n: usize) {
    let ip = if relay.is_ipv4() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    };
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 2048];
    for w in 0..n / 16 {
        for i in 0..16u16 {
            s.send_to(&(w as u16 * 16 + i).to_be_bytes(), relay)
                .unwrap();
        }
        for _ in 0..16 {
            let (len, _) = s.recv_from(&mut buf).expect("UDP echo (no loss)");
            assert_eq!(len, 2);
        }
    }
}

fn closed_by_relay(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn frames_both_ways_ipv4_and_dual_stack() {
    let _serial = serial();
    let w = start("127.0.0.1:0".parse().unwrap(), Duration::from_secs(5), 64);
    let addr = w.tcp_addr().expect("ICE-TCP listening");
    assert_eq!(
        addr.port(),
        w.local_addr().port(),
        "port 0 = the media port"
    );
    tcp_roundtrip(addr, 300);
    udp_roundtrip(w.local_addr(), 160);
    let t = w.total();
    assert_eq!(t.tcp_accepted, 1);
    assert_eq!(t.tcp_rx_frames, 301);
    w.stop().unwrap();

    if UdpSocket::bind("[::1]:0").is_err() {
        skip::skip("no IPv6 loopback: dual-stack ICE-TCP not tested");
        return;
    }
    let w = start("[::]:0".parse().unwrap(), Duration::from_secs(5), 64);
    let port = w.tcp_addr().unwrap().port();
    tcp_roundtrip(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port), 50);
    tcp_roundtrip(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port), 50);
    w.stop().unwrap();
}

/// A peer's UDP socket and its TCP connection on the same IP and port are two peers: each
/// echo returns on the transport its datagram came in on (with 10,000 TCP connections the
/// kernel hands out a UDP port some connection already uses as often as not).
#[test]
fn udp_and_tcp_peers_on_one_address_stay_apart() {
    let _serial = serial();
    let w = start("127.0.0.1:0".parse().unwrap(), Duration::from_secs(5), 64);
    let addr = w.tcp_addr().unwrap();
    // A UDP port whose TCP twin is free (some other process may hold it).
    let (udp, tcp) = (0..50)
        .find_map(|_| {
            let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
            let tcp =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            tcp.bind(&udp.local_addr().ok()?.into()).ok()?;
            Some((udp, tcp))
        })
        .expect("a UDP port whose TCP twin is free");
    udp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    tcp.connect(&addr.into()).unwrap();
    let mut tcp = TcpStream::from(tcp);
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert_eq!(tcp.local_addr().unwrap(), udp.local_addr().unwrap());
    tcp.write_all(&frame(&binding_request(9))).unwrap();
    assert_eq!(read_frame(&mut tcp)[0..2], [0x01, 0x01], "binding success");
    let mut buf = [0u8; 64];
    for i in 0..50u8 {
        udp.send_to(&[b'u', i], w.local_addr()).unwrap();
        tcp.write_all(&frame(&[b't', i])).unwrap();
        let (n, _) = udp.recv_from(&mut buf).expect("UDP echo over UDP");
        assert_eq!(buf[..n], [b'u', i]);
        assert_eq!(read_frame(&mut tcp), [b't', i], "TCP echo over TCP");
    }
    // The totals are published by the worker loop: wait for its next turn.
    let deadline = Instant::now() + Duration::from_secs(2);
    while w.total().tcp_rx_frames < 51 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = w.total();
    assert_eq!((t.tcp_rx_frames, t.tcp_accepted), (51, 1));
    w.stop().unwrap();
}

#[test]
fn hostile_connections_are_closed_and_udp_keeps_flowing() {
    let _serial = serial();
    let w = start(
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(500),
        64,
    );
    let addr = w.tcp_addr().unwrap();
    let relay = w.local_addr();

    let mut garbage = connect(addr);
    garbage.write_all(&frame(&[0xa5u8; 100])).unwrap();
    // Plain HTTP reads as a frame length of 0x4745 bytes: oversized.
    let mut http = connect(addr);
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut huge = connect(addr);
    huge.write_all(&[0xff, 0xff, 1, 2, 3]).unwrap();
    let mut idle = connect(addr);
    // A validated peer that never reads: the relay's answers fill its window.
    let mut deaf = connect(addr);
    deaf.write_all(&frame(&binding_request(1))).unwrap();
    let blob = frame(&[0x55u8; 1200]);
    let deaf_writer = {
        let mut d = deaf.try_clone().unwrap();
        std::thread::spawn(move || {
            d.set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            for _ in 0..20_000 {
                if d.write_all(&blob).is_err() {
                    break;
                }
            }
        })
    };
    udp_roundtrip(relay, 2_000);
    assert!(closed_by_relay(&mut garbage), "garbage closed");
    assert!(closed_by_relay(&mut huge), "64 KiB frame length closed");
    assert!(closed_by_relay(&mut http), "HTTP closed");
    let t0 = Instant::now();
    assert!(closed_by_relay(&mut idle), "idle closed");
    assert!(t0.elapsed() < Duration::from_secs(2));
    deaf_writer.join().unwrap();
    udp_roundtrip(relay, 2_000);
    let t = w.total();
    assert_eq!(t.tcp_closed_garbage, 1, "{t:?}");
    assert_eq!(t.tcp_closed_oversized, 2, "{t:?}");
    assert!(t.tcp_closed_timeout >= 1, "{t:?}");
    assert_eq!(t.tcp_closed_slow_reader, 1, "{t:?}");
    assert!(t.tcp_tx_dropped >= 256, "{t:?}");
    drop(deaf);
    w.stop().unwrap();
}

/// Holds `n` idle connections to `addr` from a child process (a process of its own, so the
/// file-descriptor limit covers the relay's side only here); dropped: they close.
struct IdleClients(std::process::Child);

impl IdleClients {
    fn open(addr: SocketAddr, n: usize) -> Option<IdleClients> {
        use std::io::BufRead;
        let script = format!(
            "import socket,sys\nk=[socket.create_connection(('{}',{})) for _ in range({})]\n\
             print('ok',flush=True)\nsys.stdin.read()\n",
            addr.ip(),
            addr.port(),
            n
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take()?)
            .read_line(&mut line)
            .ok()?;
        (line.trim() == "ok").then_some(IdleClients(child))
    }
}

impl Drop for IdleClients {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

fn raise_nofile(want: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the one struct passed.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if lim.rlim_cur >= want {
        return true;
    }
    lim.rlim_cur = want.min(lim.rlim_max.max(want));
    lim.rlim_max = lim.rlim_max.max(want);
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 }
}

#[test]
fn ten_thousand_idle_connections() {
    let _serial = serial();
    if !raise_nofile(12_000) {
        skip::skip("cannot raise RLIMIT_NOFILE to 12000: 10,000 connections not tested");
        return;
    }
    let w = start(
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(30),
        11_000,
    );
    let addr = w.tcp_addr().unwrap();
    udp_roundtrip(w.local_addr(), 320);
    let before = rss_kib();
    let Some(idle) = IdleClients::open(addr, 10_000) else {
        skip::skip("python3 could not hold 10,000 connections: not tested");
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.total().tcp_accepted < 10_000 && Instant::now() < deadline {
        udp_roundtrip(w.local_addr(), 16);
    }
    assert_eq!(w.total().tcp_accepted, 10_000);
    assert_eq!(w.total().tcp_refused_full, 0);
    udp_roundtrip(w.local_addr(), 2_000);
    tcp_roundtrip(addr, 20);
    let grown = rss_kib().saturating_sub(before);
    // Per idle connection: a 2050-byte receive buffer, the socket and the table entry.
    assert!(
        grown < 40 * 1024,
        "RSS grew {grown} KiB for 10,000 connections"
    );
    println!("10,000 idle ICE-TCP connections: relay RSS +{grown} KiB");
    drop(idle);
    w.stop().unwrap();
}
