//! The slow-path channel end to end: worker → control (SlowPathServer) with the peer address,
//! control's reply leaving from the relay's port, drop-and-count while control is absent, and
//! reconnection when it comes back. Also the io_uring buffer-exhaustion re-arm path.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use relay::batch::TxQueue;
use relay::io::slowpath::{SlowPathConn, SlowPathServer, MAX_MESSAGE};
use relay::io::{self, BackendKind};
use relay::worker::{spawn_workers, Echo, Handler, WorkerConfig, Workers};

/// Datagrams whose first byte is 0..=3 (STUN range, RFC 7983) go to control; others echo.
struct Demux;
impl Handler for Demux {
    fn on_datagram(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        tx: &mut TxQueue,
        slow: &mut TxQueue,
    ) {
        if len > 0 && buf[0] <= 3 {
            slow.push(src, &buf[..len]);
        } else {
            tx.push(src, &buf[..len]);
        }
    }
}

fn backends() -> Vec<BackendKind> {
    let mut v = vec![BackendKind::Mmsg];
    match io::probe_io_uring() {
        Ok(()) => v.push(BackendKind::IoUring),
        Err(e) => eprintln!("SKIP: io_uring unavailable: {e}"),
    }
    v
}

fn sock_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sluice-io-test-{}-{tag}.sock", std::process::id()))
}

fn accept_within(server: &SlowPathServer, d: Duration) -> SlowPathConn {
    server.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + d;
    loop {
        match server.accept() {
            Ok(c) => {
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                return c;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("no relay connection: {e}"),
        }
    }
}

fn wait_for(w: &Workers, what: &str, f: impl Fn(&relay::worker::StatsSnapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f(&w.total()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            w.total()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn io_slowpath_roundtrip_drop_and_reconnect() {
    for b in backends() {
        let path = sock_path(b.as_str());
        let server = SlowPathServer::bind(&path).unwrap();
        let cfg = WorkerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            workers: Some(1),
            backend: b,
            pin: false,
            slow_path: Some(path.clone()),
            ..WorkerConfig::default()
        };
        let w = spawn_workers(cfg, |_| Demux).unwrap();
        let relay = w.local_addr();
        let mut conn = accept_within(&server, Duration::from_secs(3));
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = vec![0u8; MAX_MESSAGE];

        // Up: the datagram reaches control with the peer's address and the relay's port.
        peer.send_to(&[0, 1, 0xAA, 0xBB], relay).unwrap();
        let up = conn.recv(&mut buf).unwrap().expect("a datagram");
        assert_eq!(up.peer, peer.local_addr().unwrap());
        assert_eq!(up.local_port, relay.port());
        assert_eq!(up.worker, 0);
        assert_eq!(up.data, &[0, 1, 0xAA, 0xBB]);
        assert_eq!(conn.worker(), Some(0));
        assert_eq!(conn.local_port(), Some(relay.port()));

        // Down: control's reply leaves from the relay's port.
        conn.send_down(peer.local_addr().unwrap(), b"binding-success")
            .unwrap();
        let mut rb = [0u8; 64];
        let (n, from) = peer.recv_from(&mut rb).unwrap();
        assert_eq!(from, relay);
        assert_eq!(&rb[..n], b"binding-success");

        // Fast path still echoes meanwhile.
        peer.send_to(&[0x80, 1, 2], relay).unwrap();
        let (n, _) = peer.recv_from(&mut rb).unwrap();
        assert_eq!(&rb[..n], &[0x80, 1, 2]);
        wait_for(&w, "down counter", |s| {
            s.slow_down_sent == 1 && s.slow_up_sent == 1
        });

        // Control goes away: slow datagrams are dropped and counted, the fast path goes on.
        drop(conn);
        drop(server);
        let before = w.total().slow_up_dropped;
        for _ in 0..5 {
            peer.send_to(&[1, 0, 0, 0], relay).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        wait_for(&w, "slow drops", |s| s.slow_up_dropped >= before + 4);
        peer.send_to(&[0x80, 9], relay).unwrap();
        let (n, _) = peer.recv_from(&mut rb).unwrap();
        assert_eq!(&rb[..n], &[0x80, 9]);

        // Control comes back: the worker reconnects (backoff ≤ 1 s) and traffic flows again.
        let server = SlowPathServer::bind(&path).unwrap();
        let mut conn = accept_within(&server, Duration::from_secs(5));
        wait_for(&w, "reconnect", |s| s.slow_connects == 2);
        peer.send_to(&[0, 1, 0xCC], relay).unwrap();
        let up = conn
            .recv(&mut buf)
            .unwrap()
            .expect("a datagram after reconnect");
        assert_eq!(up.data, &[0, 1, 0xCC]);
        assert_eq!(up.peer, peer.local_addr().unwrap());
        w.stop().unwrap();
        // The relay closed its end: control sees EOF.
        assert!(conn.recv(&mut buf).unwrap().is_none());
    }
}

#[test]
fn io_slowpath_without_control_counts_drops() {
    let cfg = WorkerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        workers: Some(1),
        backend: BackendKind::Mmsg,
        pin: false,
        slow_path: None,
        ..WorkerConfig::default()
    };
    let w = spawn_workers(cfg, |_| Demux).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..3 {
        peer.send_to(&[0, 0], w.local_addr()).unwrap();
    }
    wait_for(&w, "drops", |s| s.slow_up_dropped == 3);
    w.stop().unwrap();
}

#[test]
fn io_uring_rearms_when_buffers_run_out() {
    if let Err(e) = io::probe_io_uring() {
        eprintln!("SKIP: io_uring unavailable: {e}");
        return;
    }
    let cfg = WorkerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        workers: Some(1),
        backend: BackendKind::IoUring,
        recv_buffers: 4,
        batch: 64,
        pin: false,
        ..WorkerConfig::default()
    };
    let w = spawn_workers(cfg, |_| Echo::default()).unwrap();
    let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = c.set_recv_buffer_size(4 << 20);
    c.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let c: UdpSocket = c.into();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let n = 300u16;
    for i in 0..n {
        c.send_to(&i.to_be_bytes(), w.local_addr()).unwrap();
    }
    let mut seen = vec![false; n as usize];
    let mut buf = [0u8; 16];
    for _ in 0..n {
        let (len, _) = c.recv_from(&mut buf).expect("every datagram comes back");
        assert_eq!(len, 2);
        seen[u16::from_be_bytes([buf[0], buf[1]]) as usize] = true;
    }
    assert!(seen.iter().all(|&s| s));
    let s = w.total();
    w.stop().unwrap();
    assert_eq!(s.rx_packets, n as u64);
    eprintln!(
        "buffer ring ran dry {} times, receive armed {} times",
        s.rx_nobufs, s.rx_rearms
    );
}
