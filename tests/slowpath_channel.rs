//! The slow-path channel end to end: worker → control (SlowPathServer) with the peer address,
//! control's reply leaving from the relay's port, drop-and-count while control is absent, and
//! reconnection when it comes back. Also the io_uring buffer-exhaustion re-arm path.
//!
//! The slow-path connection is read on readiness, not by polling: a reply from control wakes
//! an idle worker whose poll interval is far longer than the bound the test allows, for each
//! backend, also after control restarted. And the io_uring backend's `stop_receiving` (socket
//! hand-over) leaves every later datagram in the socket for the next process.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use contract::slowpath::MAX_MESSAGE;
use control::relay_channel::{SlowPathConn, SlowPathServer};
use relay::batch::TxQueue;
use relay::io::uring::UringBackend;
use relay::io::{self, Backend, BackendChoice, BackendParams, SocketBuffers};
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

fn backends() -> Vec<BackendChoice> {
    let mut v = vec![BackendChoice::Mmsg];
    match io::probe_io_uring() {
        Ok(()) => v.push(BackendChoice::IoUring),
        Err(e) => sluice_tests::skip::skip(format!("io_uring unavailable: {e}")),
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
        let path = sock_path(b.name());
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
        // The listener first (its socket file goes with it), so the worker cannot reconnect
        // to it in between and count a connection the test does not expect.
        drop(server);
        drop(conn);
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
        backend: BackendChoice::Mmsg,
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
        sluice_tests::skip::skip(format!("io_uring unavailable: {e}"));
        return;
    }
    let cfg = WorkerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        workers: Some(1),
        backend: BackendChoice::IoUring,
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

/// The workers' poll interval here: a worker that woke only on it would miss every bound below.
const POLL: Duration = Duration::from_secs(10);
/// How long a reply may take to come back (generous for a loaded machine, far below `POLL`).
const BOUND: Duration = Duration::from_secs(2);

/// Control sends `what` down; the peer must get it from the relay's port within [`BOUND`].
fn reply_arrives(conn: &SlowPathConn, peer: &UdpSocket, relay: SocketAddr, what: &[u8], b: &str) {
    peer.set_read_timeout(Some(BOUND)).unwrap();
    conn.send_down(peer.local_addr().unwrap(), what).unwrap();
    let mut rb = [0u8; 256];
    let (n, from) = peer
        .recv_from(&mut rb)
        .unwrap_or_else(|e| panic!("{b}: reply {what:?} not delivered within {BOUND:?}: {e}"));
    assert_eq!(from, relay, "{b}: reply must leave from the relay's port");
    assert_eq!(&rb[..n], what, "{b}");
}

/// Stop without waiting for the long poll interval: set the flag, then wake the worker with
/// one echo datagram.
fn stop(w: Workers, peer: &UdpSocket) {
    let relay = w.local_addr();
    w.stop_flag().store(true, Ordering::Release);
    peer.send_to(&[0x80], relay).unwrap();
    w.join().unwrap();
}

#[test]
fn io_slowpath_reply_wakes_an_idle_worker() {
    for b in backends() {
        let path = sock_path(&format!("wake-{}", b.name()));
        let server = SlowPathServer::bind(&path).unwrap();
        let cfg = WorkerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            workers: Some(1),
            backend: b,
            pin: false,
            poll_interval: POLL,
            slow_path: Some(path.clone()),
            ..WorkerConfig::default()
        };
        let w = spawn_workers(cfg, |_| Demux).unwrap();
        assert_eq!(BackendChoice::from(w.backend()), b);
        let relay = w.local_addr();
        let mut conn = accept_within(&server, BOUND);
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = b.name();

        // No datagram has reached the media socket: only the slow-path fd can wake the worker.
        assert_eq!(w.total().rx_packets, 0);
        for i in 0..3u8 {
            // Let the worker go back to sleep between replies (the poll must fire again).
            std::thread::sleep(Duration::from_millis(100));
            reply_arrives(&conn, &peer, relay, &[b'r', i], b);
        }
        assert_eq!(w.total().rx_packets, 0, "{b}: nothing but replies");

        // Up and down once more with traffic, as before.
        peer.send_to(&[0, 1, 0xAB], relay).unwrap();
        let mut buf = vec![0u8; MAX_MESSAGE];
        let up = conn.recv(&mut buf).unwrap().expect("a datagram");
        assert_eq!(up.data, &[0, 1, 0xAB]);
        reply_arrives(&conn, &peer, relay, b"after-up", b);

        // Control restarts: the worker notices the hang-up without traffic, reconnects (backoff
        // ≤ 1 s, not the poll interval), and replies on the new connection wake it too.
        drop(conn);
        drop(server);
        std::thread::sleep(Duration::from_millis(200));
        let server = SlowPathServer::bind(&path).unwrap();
        let conn = accept_within(&server, Duration::from_secs(3));
        let deadline = Instant::now() + Duration::from_secs(3);
        while w.total().slow_connects < 2 {
            assert!(
                Instant::now() < deadline,
                "{b}: no reconnect: {:?}",
                w.total()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        reply_arrives(&conn, &peer, relay, b"after-restart", b);
        // Counters are published at the end of the turn that sent the reply.
        let deadline = Instant::now() + BOUND;
        while w.total().slow_down_sent < 5 {
            assert!(Instant::now() < deadline, "{b}: {:?}", w.total());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(w.total().slow_down_sent, 5, "{b}");
        stop(w, &peer);
    }
}

#[test]
fn io_uring_stop_receiving_leaves_later_datagrams_in_the_socket() {
    if let Err(e) = io::probe_io_uring() {
        sluice_tests::skip::skip(format!("io_uring unavailable: {e}"));
        return;
    }
    let (sock, _) = io::bind_udp(
        "127.0.0.1:0".parse().unwrap(),
        SocketBuffers { recv: 0, send: 0 },
    )
    .unwrap();
    let addr = sock.local_addr().unwrap();
    // What the next process would read: the same socket (file description).
    let next = sock.try_clone().unwrap();
    let mut be = UringBackend::new(sock, BackendParams::default()).unwrap();
    be.wait(Duration::ZERO).unwrap(); // arms the multishot receive
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..3u8 {
        client.send_to(&[0x80, i], addr).unwrap();
    }
    // Let the ring take all three (their CQEs wait in the CQ; no drain yet).
    let deadline = Instant::now() + BOUND;
    loop {
        be.wait(Duration::from_millis(50)).unwrap();
        let mut probe = [0u8; 4];
        match next.peek_from(&mut probe) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            _ => assert!(
                Instant::now() < deadline,
                "the ring did not take the datagrams"
            ),
        }
    }
    be.stop_receiving();
    for i in 3..6u8 {
        client.send_to(&[0x80, i], addr).unwrap();
    }
    // The old ring hands over exactly what it took, in order ...
    let mut got = Vec::new();
    for _ in 0..4 {
        be.drain(64, |_, buf, len, _| got.push(buf[..len].to_vec()));
    }
    assert_eq!(got, vec![vec![0x80, 0], vec![0x80, 1], vec![0x80, 2]]);
    // ... even if the loop waits again: the receive stays cancelled.
    be.wait(Duration::from_millis(50)).unwrap();
    assert_eq!(be.drain(64, |_, _, _, _| {}), 0);
    // ... and every later datagram is still in the socket for the next process.
    next.set_nonblocking(false).unwrap();
    next.set_read_timeout(Some(BOUND)).unwrap();
    let mut rb = [0u8; 16];
    for i in 3..6u8 {
        let (n, _) = next
            .recv_from(&mut rb)
            .expect("datagram left in the socket");
        assert_eq!(&rb[..n], &[0x80, i]);
    }
    be.shutdown();
}
