//! One owner per media port: workers refuse to start on a UDP address any other socket holds
//! (with or without SO_REUSEPORT, on an overlapping wildcard or dual-stack address), while the
//! workers of one start share it.

use std::net::{SocketAddr, UdpSocket};

use relay::io::{self, BackendChoice, IoError};
use relay::worker::{spawn_workers, Echo, WorkerConfig, WorkerError};
use socket2::{Domain, Protocol, Socket, Type};

fn config(bind: SocketAddr, workers: usize) -> WorkerConfig {
    WorkerConfig {
        bind,
        workers: Some(workers),
        backend: BackendChoice::Mmsg,
        pin: false,
        socket_buffers: io::SocketBuffers {
            recv: 1 << 16,
            send: 1 << 16,
        },
        ..WorkerConfig::default()
    }
}

/// A socket another program might hold: bound to `addr`, with SO_REUSEPORT when asked, and
/// for an IPv6 wildcard dual-stack.
fn holder(addr: SocketAddr, reuseport: bool) -> Socket {
    let d = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(d, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    if addr.is_ipv6() {
        s.set_only_v6(false).unwrap();
    }
    s.set_reuse_port(reuseport).unwrap();
    s.bind(&addr.into()).unwrap();
    s
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn assert_in_use(r: Result<relay::worker::Workers, WorkerError>, addr: SocketAddr) {
    match r {
        Err(WorkerError::Setup(IoError::AddrInUse(a))) => {
            assert_eq!(a, addr);
            let msg = IoError::AddrInUse(a).to_string();
            assert!(msg.contains(&addr.to_string()), "{msg}");
            assert!(msg.contains("already in use"), "{msg}");
        }
        Err(e) => panic!("expected AddrInUse({addr}), got {e}"),
        Ok(w) => panic!(
            "workers started on {addr}, which another socket holds ({} workers)",
            w.len()
        ),
    }
}

#[test]
fn a_reuseport_socket_of_another_owner_is_refused() {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // Same user, SO_REUSEPORT: the kernel would let the workers join this group silently.
    let _h = holder(addr, true);
    assert_in_use(spawn_workers(config(addr, 2), |_| Echo::default()), addr);
}

#[test]
fn a_plain_socket_is_refused_naming_the_address() {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _h = holder(addr, false);
    assert_in_use(spawn_workers(config(addr, 1), |_| Echo::default()), addr);
}

#[test]
fn overlapping_wildcards_are_refused() {
    // A wildcard holder covers the loopback address.
    let port = free_port();
    let _h = holder(SocketAddr::from(([0, 0, 0, 0], port)), true);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert_in_use(spawn_workers(config(addr, 1), |_| Echo::default()), addr);

    // A dual-stack IPv6 wildcard relay covers an IPv4 holder.
    if UdpSocket::bind("[::]:0").is_ok() {
        let port = free_port();
        let _h = holder(SocketAddr::from(([127, 0, 0, 1], port)), true);
        let addr: SocketAddr = format!("[::]:{port}").parse().unwrap();
        assert_in_use(spawn_workers(config(addr, 1), |_| Echo::default()), addr);
    }
}

#[test]
fn a_second_start_on_a_running_group_is_refused_and_the_first_keeps_it() {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // One start's workers share the port.
    let first = spawn_workers(config(addr, 3), |_| Echo::default()).expect("first start");
    assert_eq!(first.len(), 3);
    assert_eq!(first.local_addr(), addr);
    assert_in_use(spawn_workers(config(addr, 2), |_| Echo::default()), addr);
    // The first group still answers.
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    c.send_to(b"still mine", addr).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = c.recv_from(&mut buf).expect("echo from the first group");
    assert_eq!(&buf[..n], b"still mine");
    first.stop().unwrap();
    // Once it stopped, the port is free again.
    spawn_workers(config(addr, 1), |_| Echo::default())
        .expect("the port is free after the first group stopped")
        .stop()
        .unwrap();
}

#[test]
fn port_zero_needs_no_probe() {
    let w = spawn_workers(config("127.0.0.1:0".parse().unwrap(), 2), |_| {
        Echo::default()
    })
    .unwrap();
    assert_ne!(w.local_addr().port(), 0);
    w.stop().unwrap();
}
