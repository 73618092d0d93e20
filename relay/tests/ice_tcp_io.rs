//! Passive ICE-TCP through real workers on loopback: RFC 4571 framing both ways, IPv4 and
//! IPv6 on a dual-stack listener, hostile connections (10,000 idle ones, garbage, a 64 KiB
//! frame length, a peer that never reads) while UDP peers keep being served with no loss
//! (mmsg backend), and with two workers on each backend a UDP publisher on worker 1 feeding a
//! TCP viewer whose connection worker 0 holds (the cross-worker hand-over).

#[path = "../../tests/support/skip.rs"]
mod skip;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use relay::batch::TxQueue;
use relay::io::tcp::TcpParams;
use relay::io::RunningBackend;
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
    try_start_with(
        bind,
        timeout,
        max_connections,
        BackendChoice::Mmsg,
        1,
        16_384,
        |_| StunEcho,
    )
}

fn try_start_with<H, F>(
    bind: SocketAddr,
    timeout: Duration,
    max_connections: usize,
    backend: BackendChoice,
    workers: usize,
    send_buffer: usize,
    make: F,
) -> Result<Workers, relay::worker::WorkerError>
where
    H: Handler + Send + 'static,
    F: Fn(usize) -> H,
{
    spawn_workers(
        WorkerConfig {
            bind,
            workers: Some(workers),
            backend,
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
                    send_buffer,
                    forward_queue: 256,
                },
            )),
            ..WorkerConfig::default()
        },
        make,
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

/// The workers' summed counters once `done` holds for them (at most 2 s: counters are
/// published at the end of each loop turn, just after the turn's sends).
fn settled(w: &Workers, done: impl Fn(&relay::io::IoCounters) -> bool) -> relay::io::IoCounters {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let t = w.total();
        if done(&t) || Instant::now() > deadline {
            return t;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Held by the tests that must not overlap the 10,000-connection test: it measures the test
/// process's memory, and its connections take local ports another test binds on purpose.
static EXCLUSIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner())
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
    let _one = exclusive();
    let w = start("127.0.0.1:0".parse().unwrap(), Duration::from_secs(5), 64);
    let addr = w.tcp_addr().expect("ICE-TCP listening");
    assert_eq!(
        addr.port(),
        w.local_addr().port(),
        "port 0 = the media port"
    );
    tcp_roundtrip(addr, 300);
    udp_roundtrip(w.local_addr(), 160);
    let t = settled(&w, |t| t.tcp_rx_frames >= 301);
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
    let _one = exclusive();
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
    // Counters are published at the end of the turn that sent the last echo.
    let t = settled(&w, |t| t.tcp_rx_frames >= 51);
    assert_eq!((t.tcp_rx_frames, t.tcp_accepted), (51, 1));
    w.stop().unwrap();
}

#[test]
fn hostile_connections_are_closed_and_udp_keeps_flowing() {
    let _one = exclusive();
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
    let _one = exclusive();
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

/// STUN binding requests are answered; a UDP datagram starting with `F` is forwarded to the
/// TCP peer on 127.0.0.1 whose port follows (big-endian), one starting with `U` to the UDP
/// peer there; the rest are echoed to their sender.
#[derive(Default)]
struct FanToTcp;

impl Handler for FanToTcp {
    fn on_datagram(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        tx: &mut TxQueue,
        slow: &mut TxQueue,
    ) {
        if !contract::wire::is_tcp_peer(&src) && len >= 3 && (buf[0] == b'F' || buf[0] == b'U') {
            let port = u16::from_be_bytes([buf[1], buf[2]]);
            let to = SocketAddr::from(([127, 0, 0, 1], port));
            let dst = if buf[0] == b'F' {
                contract::wire::tcp_peer(to)
            } else {
                to
            };
            tx.push(dst, &buf[..len]);
            return;
        }
        StunEcho.on_datagram(src, buf, len, tx, slow);
    }
}

/// Which worker received `sock`'s datagrams: send probes until the echo returns and see
/// whose receive counter moved.
fn worker_of(w: &Workers, sock: &UdpSocket) -> usize {
    let before: Vec<u64> = w.stats().iter().map(|s| s.snapshot().rx_packets).collect();
    let mut buf = [0u8; 64];
    sock.send_to(b"probe", w.local_addr()).unwrap();
    sock.recv_from(&mut buf).expect("probe echo");
    // Counters are published at the end of the turn that echoed the probe.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let moved = w
            .stats()
            .iter()
            .zip(&before)
            .position(|(s, b)| s.snapshot().rx_packets > *b);
        if let Some(i) = moved {
            return i;
        }
        assert!(Instant::now() < deadline, "no worker counted the probe");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Two workers on `backend`: the TCP viewer's connection is held by worker 0 (which owns
/// every ICE-TCP connection), the UDP publisher is placed on worker 1 (a source port is
/// chosen until the kernel's SO_REUSEPORT hash gives it to worker 1). 2,000 datagrams at
/// about 2,000 per second all arrive, framed, in order.
fn tcp_viewer_fed_by_another_worker(backend: BackendChoice, expect: RunningBackend) {
    let _one = exclusive();
    let mut w = None;
    for _ in 0..10 {
        if let Ok(x) = try_start_with(
            "127.0.0.1:0".parse().unwrap(),
            Duration::from_secs(5),
            64,
            backend,
            2,
            // Room for a burst of 20 datagrams of up to 1 KB (a smaller buffer drops frames
            // the viewer is slow to read, as the hostile-peer test shows).
            262_144,
            |_| FanToTcp,
        ) {
            w = Some(x);
            break;
        }
    }
    let w = w.expect("spawn two workers");
    assert_eq!(w.backend(), expect);
    let addr = w.tcp_addr().unwrap();
    let mut viewer = connect(addr);
    viewer.write_all(&frame(&binding_request(3))).unwrap();
    assert_eq!(
        read_frame(&mut viewer)[0..2],
        [0x01, 0x01],
        "binding success"
    );
    let port = viewer.local_addr().unwrap().port();

    let publisher = (0..256)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s
        })
        .find(|s| worker_of(&w, s) == 1)
        .expect("a UDP source port the kernel hands to worker 1");

    const N: u32 = 2_000;
    let reader = std::thread::spawn(move || {
        let mut next = 0u32;
        while next < N {
            let f = read_frame(&mut viewer);
            assert_eq!(f[0], b'F');
            let seq = u32::from_be_bytes([f[3], f[4], f[5], f[6]]);
            if seq != next || f.len() != 7 + (seq as usize % 1000) {
                return Err((next, seq, f.len()));
            }
            next += 1;
        }
        Ok(viewer)
    });
    let start = Instant::now();
    for seq in 0..N {
        let mut p = vec![b'F'];
        p.extend_from_slice(&port.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.resize(7 + (seq as usize % 1000), 0x5a);
        publisher.send_to(&p, w.local_addr()).unwrap();
        if seq % 20 == 19 {
            // About 2,000 datagrams per second.
            let due = start + Duration::from_millis(u64::from(seq + 1) / 2);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
    let mut viewer = match reader.join().expect("reader") {
        Ok(v) => v,
        Err((want, got, len)) => panic!(
            "frame {want} expected, {got} ({len} bytes) arrived: {:?} {:?}",
            w.stats()[0].snapshot(),
            w.stats()[1].snapshot()
        ),
    };
    // The TCP connection still works both ways afterwards.
    viewer.write_all(&frame(b"after")).unwrap();
    assert_eq!(read_frame(&mut viewer), b"after");
    let deadline = Instant::now() + Duration::from_secs(2);
    while w.stats()[1].snapshot().tcp_forwarded < u64::from(N) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (w0, w1) = (w.stats()[0].snapshot(), w.stats()[1].snapshot());
    assert_eq!(w1.tcp_forwarded, u64::from(N), "{w1:?}");
    assert_eq!(w1.tcp_forward_full + w1.tcp_unroutable, 0, "{w1:?}");
    assert_eq!(w0.tcp_accepted, 1, "{w0:?}");
    assert!(w0.tcp_tx_frames > u64::from(N), "{w0:?}");
    assert_eq!(w0.tcp_tx_dropped + w0.tcp_unroutable, 0, "{w0:?}");
    w.stop().unwrap();
}

#[test]
fn tcp_viewer_fed_by_another_worker_mmsg() {
    tcp_viewer_fed_by_another_worker(BackendChoice::Mmsg, RunningBackend::Mmsg);
}

#[test]
fn tcp_viewer_fed_by_another_worker_io_uring() {
    if let Err(e) = io::probe_io_uring() {
        skip::skip(format!(
            "io_uring unavailable ({e}): ICE-TCP on io_uring not tested"
        ));
        return;
    }
    tcp_viewer_fed_by_another_worker(BackendChoice::IoUring, RunningBackend::IoUring);
}

/// The single-worker checks of framing and hostile peers, on io_uring.
#[test]
fn io_uring_carries_ice_tcp() {
    if let Err(e) = io::probe_io_uring() {
        skip::skip(format!(
            "io_uring unavailable ({e}): ICE-TCP on io_uring not tested"
        ));
        return;
    }
    let w = try_start_with(
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(500),
        64,
        BackendChoice::IoUring,
        1,
        16_384,
        |_| StunEcho,
    )
    .expect("io_uring workers with ICE-TCP");
    assert_eq!(w.backend(), RunningBackend::IoUring);
    let addr = w.tcp_addr().unwrap();
    tcp_roundtrip(addr, 300);
    udp_roundtrip(w.local_addr(), 320);
    let mut huge = connect(addr);
    huge.write_all(&[0xff, 0xff, 1, 2, 3]).unwrap();
    let mut idle = connect(addr);
    assert!(closed_by_relay(&mut huge), "64 KiB frame length closed");
    assert!(
        closed_by_relay(&mut idle),
        "idle closed after the handshake timeout"
    );
    udp_roundtrip(w.local_addr(), 320);
    let t = settled(&w, |t| t.tcp_closed_timeout >= 1);
    assert_eq!(t.tcp_rx_frames, 301, "{t:?}");
    assert_eq!(t.tcp_closed_oversized, 1, "{t:?}");
    assert!(t.tcp_closed_timeout >= 1, "{t:?}");
    w.stop().unwrap();
}

/// Nanoseconds the worker thread named `name` has run (`/proc/self/task/*/schedstat`).
fn thread_cpu_ns(name: &str) -> u64 {
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap();
            return s.split_whitespace().next().unwrap().parse().unwrap();
        }
    }
    panic!("no thread {name}");
}

/// `n` datagrams of `size` bytes echoed over UDP, in windows of 32.
fn udp_windows(relay: SocketAddr, n: usize, size: usize) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let p = vec![0x80u8; size];
    let mut buf = [0u8; 2048];
    for _ in 0..n / 32 {
        for _ in 0..32 {
            s.send_to(&p, relay).unwrap();
        }
        for _ in 0..32 {
            s.recv_from(&mut buf).expect("UDP echo");
        }
    }
}

/// `n` frames of `size` bytes echoed over one ICE-TCP connection, in windows of 32.
fn tcp_windows(addr: SocketAddr, n: usize, size: usize) {
    let mut s = connect(addr);
    s.write_all(&frame(&binding_request(5))).unwrap();
    read_frame(&mut s);
    let window: Vec<u8> = (0..32).flat_map(|_| frame(&vec![0x80u8; size])).collect();
    let mut back = vec![0u8; window.len()];
    for _ in 0..n / 32 {
        s.write_all(&window).unwrap();
        s.read_exact(&mut back).expect("TCP echo");
    }
}

/// The relay worker's CPU time per echoed 1200-byte packet over ICE-TCP against UDP, in the
/// same run on the same worker (docs/BENCHMARKS.md "ICE-TCP against UDP"). A measurement, not
/// a check: run it in release, alone:
/// `cargo test --release -p sluice-relay --test ice_tcp_io -- --ignored --nocapture cost`.
#[test]
#[ignore = "a measurement, not a check: run with --release --ignored on an idle machine (docs/BENCHMARKS.md \"ICE-TCP against UDP\" gives the command and the figures)"]
fn cost_per_packet_tcp_against_udp() {
    let _one = exclusive();
    let mut backends = vec![(BackendChoice::Mmsg, "mmsg")];
    match io::probe_io_uring() {
        Ok(()) => backends.push((BackendChoice::IoUring, "io_uring")),
        Err(e) => skip::skip(format!("io_uring unavailable ({e}): measured on mmsg only")),
    }
    const N: usize = 100_000;
    for (backend, name) in backends {
        // The TCP port is the kernel's pick for UDP: it may be some client's; try again then.
        let w = (0..10)
            .find_map(|_| {
                try_start_with(
                    "127.0.0.1:0".parse().unwrap(),
                    Duration::from_secs(5),
                    64,
                    backend,
                    1,
                    262_144,
                    |_| StunEcho,
                )
                .ok()
            })
            .expect("workers");
        let (mut udp_ns, mut tcp_ns) = (0u64, 0u64);
        udp_windows(w.local_addr(), 3_200, 1200);
        tcp_windows(w.tcp_addr().unwrap(), 3_200, 1200);
        for _ in 0..3 {
            let t0 = thread_cpu_ns("sluice-w0");
            udp_windows(w.local_addr(), N, 1200);
            let t1 = thread_cpu_ns("sluice-w0");
            tcp_windows(w.tcp_addr().unwrap(), N, 1200);
            let t2 = thread_cpu_ns("sluice-w0");
            udp_ns += t1 - t0;
            tcp_ns += t2 - t1;
        }
        let per = |ns: u64| ns as f64 / (3 * N) as f64;
        println!(
            "{name}: worker CPU per echoed packet: UDP {:.0} ns, ICE-TCP {:.0} ns, TCP/UDP {:.2}",
            per(udp_ns),
            per(tcp_ns),
            tcp_ns as f64 / udp_ns as f64
        );
        w.stop().unwrap();
    }
}

/// The two workers' CPU time per packet a UDP publisher on worker 1 sends to a viewer: over
/// ICE-TCP (handed to worker 0, which holds the connection) against over UDP (sent by worker 1
/// itself), in the same run (docs/BENCHMARKS.md "ICE-TCP against UDP"). Run like
/// [`cost_per_packet_tcp_against_udp`].
#[test]
#[ignore = "a measurement, not a check: run with --release --ignored on an idle machine (docs/BENCHMARKS.md \"ICE-TCP against UDP\" gives the command and the figures)"]
fn cost_per_packet_across_workers() {
    let _one = exclusive();
    let w = (0..10)
        .find_map(|_| {
            try_start_with(
                "127.0.0.1:0".parse().unwrap(),
                Duration::from_secs(5),
                64,
                BackendChoice::Mmsg,
                2,
                1 << 20,
                |_| FanToTcp,
            )
            .ok()
        })
        .expect("workers");
    let mut tcp_viewer = connect(w.tcp_addr().unwrap());
    tcp_viewer.write_all(&frame(&binding_request(3))).unwrap();
    read_frame(&mut tcp_viewer);
    let udp_viewer = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp_viewer
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let publisher = (0..256)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s
        })
        .find(|s| worker_of(&w, s) == 1)
        .expect("a UDP source port the kernel hands to worker 1");
    let cpu = || thread_cpu_ns("sluice-w0") + thread_cpu_ns("sluice-w1");
    const N: usize = 100_000;
    let mut run = |tcp: bool, n: usize| {
        let port = if tcp {
            tcp_viewer.local_addr().unwrap().port()
        } else {
            udp_viewer.local_addr().unwrap().port()
        };
        let mut p = vec![if tcp { b'F' } else { b'U' }];
        p.extend_from_slice(&port.to_be_bytes());
        p.resize(1200, 0x80);
        let mut back = vec![0u8; 32 * 1202];
        let mut buf = [0u8; 2048];
        let t0 = cpu();
        for _ in 0..n / 32 {
            for _ in 0..32 {
                publisher.send_to(&p, w.local_addr()).unwrap();
            }
            if tcp {
                tcp_viewer.read_exact(&mut back).expect("frames");
            } else {
                for _ in 0..32 {
                    udp_viewer.recv_from(&mut buf).expect("datagram");
                }
            }
        }
        cpu() - t0
    };
    run(false, 3_200);
    run(true, 3_200);
    let (mut udp_ns, mut tcp_ns) = (0, 0);
    for _ in 0..3 {
        udp_ns += run(false, N);
        tcp_ns += run(true, N);
    }
    let per = |ns: u64| ns as f64 / (3 * N) as f64;
    println!(
        "mmsg, publisher on worker 1: both workers' CPU per packet: to a UDP viewer {:.0} ns, to \
         an ICE-TCP viewer on worker 0 {:.0} ns, TCP/UDP {:.2}",
        per(udp_ns),
        per(tcp_ns),
        tcp_ns as f64 / udp_ns as f64
    );
    w.stop().unwrap();
}
