//! One owner per media port, with the real binaries: a second Sluice instance (its own shm
//! file and hand-over socket) configured with a running instance's `relay.bind`, or a relay
//! whose port another program holds, exits non-zero naming the address — instead of joining
//! the SO_REUSEPORT group and taking part of the first instance's peers. The zero-loss
//! upgrade (`--takeover`, tests/upgrade.rs) still shares the sockets.

use sluice_tests::procs::{pid_alive, Instance, Setup};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::time::Duration;

fn assert_refused(inst: &Instance, p: &mut sluice_tests::procs::Proc) {
    let st = p
        .wait_exit(Duration::from_secs(30))
        .expect("the second relay exits");
    let log = p.log();
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(log.contains("already in use"), "{log}");
    assert!(
        log.contains(&format!("UDP address {}", inst.media)),
        "names the address: {log}"
    );
    assert!(
        !log.contains("sluice-relay media="),
        "never forwarded: {log}"
    );
}

#[test]
fn a_second_instance_on_the_same_bind_is_refused() {
    let inst = Instance::new("port-owner", "mmsg", 2, None);
    let _control = inst.start_control();
    let first = inst.spawn_relay(&[]);
    inst.wait_relay(&first);
    // Another instance: its own shm file and hand-over socket, the same relay.bind.
    let other_shm = inst.dir.path().join("other-shm");
    std::fs::copy(&inst.shm, &other_shm).expect("copy shm");
    let other_handover = inst.dir.path().join("other-handover.sock");
    let mut second = inst.spawn_relay(&[
        "--shm",
        other_shm.to_str().expect("utf-8"),
        "--handover",
        other_handover.to_str().expect("utf-8"),
    ]);
    assert_refused(&inst, &mut second);
    assert!(pid_alive(first.pid()), "the first relay keeps serving");
}

#[test]
fn a_port_held_by_another_program_is_refused() {
    for reuseport in [true, false] {
        // The holder binds first, on a port the kernel picks, and the instance is configured
        // with that port: nothing else can take it between choosing and holding it.
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
        s.set_reuse_port(reuseport).expect("SO_REUSEPORT");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        s.bind(&any.into()).expect("hold a port");
        let port = s
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("the held address")
            .port();
        let setup = Setup {
            media_port: port,
            ..Setup::default()
        };
        let inst = Instance::with_setup("port-held", "mmsg", &setup);
        let _control = inst.start_control();
        let mut relay = inst.spawn_relay(&["--handover", "none"]);
        assert_refused(&inst, &mut relay);
        drop(s);
    }
}
