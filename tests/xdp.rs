//! The AF_XDP backend end to end: the relay's workers in one network namespace, libsrtp peers
//! (pylibsrtp) in another, one veth pair between them (copy mode; generic or native XDP as
//! veth offers). Every SRTP profile at fan-out 1 and 3, byte-exact and lossless; then a
//! garbage flood (random datagrams to the port, and raw frames with broken IPv4/UDP headers)
//! that the relay survives, counting every drop.
//!
//! Skips (through `support/skip.rs`) without `ip`, without AF_XDP or BPF in the kernel, without
//! the privileges to create namespaces and load XDP programs, or without pylibsrtp.
#![allow(unsafe_code)]

use contract::shm::{
    Capacity, DropReason, Rewrite, Role, RouteRecord, SessionRecord, ShmReader, ShmWriter,
};
use contract::srtp::{MasterKey, Profile};
use relay::io::BackendChoice;
use relay::worker::{WorkerConfig, Workers};
use sluice_tests::*;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PEER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../contract/tests/peers/libsrtp_peer.py"
);

fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces joined by a veth pair: the relay's end `10.201.N.1/24`, the peers'
/// `10.201.N.2/24`. Removed on drop.
struct Pair {
    tag: String,
    relay_ns: String,
    peers_ns: String,
    relay_ip: Ipv4Addr,
    peers_ip: Ipv4Addr,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Pair {
    fn new() -> Result<Pair, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let sub = (std::process::id() % 200 + n) % 250;
        let p = Pair {
            tag: tag.clone(),
            relay_ns: format!("sxr{tag}"),
            peers_ns: format!("sxp{tag}"),
            relay_ip: Ipv4Addr::new(10, 201, sub as u8, 1),
            peers_ip: Ipv4Addr::new(10, 201, sub as u8, 2),
        };
        let (vr, vp) = (format!("vr{tag}"), format!("vp{tag}"));
        sh(&["ip", "netns", "add", &p.relay_ns])?;
        sh(&["ip", "netns", "add", &p.peers_ns])?;
        sh(&[
            "ip",
            "link",
            "add",
            &vr,
            "netns",
            &p.relay_ns,
            "type",
            "veth",
            "peer",
            "name",
            &vp,
            "netns",
            &p.peers_ns,
        ])?;
        for (ns, dev, ip) in [
            (&p.relay_ns, &vr, p.relay_ip),
            (&p.peers_ns, &vp, p.peers_ip),
        ] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(p)
    }
}

impl Pair {
    fn tag(&self) -> &str {
        &self.tag
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.relay_ns]);
        let _ = sh(&["ip", "netns", "del", &self.peers_ns]);
    }
}

/// Run `f` on a thread that entered network namespace `ns` (threads and sockets it creates
/// live there).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread in namespace")
}

/// The profiles the libsrtp peer supports, or why this host cannot run the test.
fn available() -> Result<Vec<Profile>, String> {
    // SAFETY: plain socket(2) probe; the fd is closed at once.
    let fd = unsafe { libc::socket(44, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(format!(
            "no AF_XDP socket here: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: closing the fd just opened.
    unsafe { libc::close(fd) };
    if let Err(e) = sh(&["ip", "netns", "list"]) {
        return Err(format!("no iproute2: {e}"));
    }
    let out = Command::new(python()).arg(PEER).arg("--profiles").output();
    match out {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|n| Profile::from_name(n).ok())
            .collect()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(format!("{} not runnable: {e}", python())),
    }
}

/// One pass of lines through the libsrtp peer (`protect`/`unprotect` with `key`).
fn libsrtp(profile: Profile, key: &MasterKey, lines: Vec<String>) -> Vec<String> {
    let mut child = Command::new(python())
        .arg(PEER)
        .arg(profile.name())
        .arg(hex(key.as_bytes()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn libsrtp peer");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = lines.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("peer output");
    writer.join().expect("writer").expect("write peer stdin");
    assert!(
        out.status.success(),
        "libsrtp peer failed: {:?}",
        out.status
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(str::to_string)
        .collect()
}

/// RTP packet `seq` of the publisher: 12-byte header, payload sizes 40..1240 bytes.
fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80u8, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    let len = 40 + (seq as usize * 37) % 1200;
    p.extend((0..len).map(|i| (i as u8) ^ (seq as u8)));
    p
}

fn session(id: u64, peer: SocketAddr, role: Role, rx: MasterKey, tx: MasterKey) -> SessionRecord {
    SessionRecord {
        id,
        peer,
        role,
        rx_key: rx,
        tx_key: tx,
        key_epoch: 1,
        flags: 0,
        max_pps: 0,
        ice: None,
    }
}

/// A relay in `pair`'s relay namespace with the xdp backend over `shm`.
fn start_relay(pair: &Pair, reader: Arc<ShmReader>) -> Workers {
    let bind = SocketAddr::from((pair.relay_ip, 0));
    in_ns(&pair.relay_ns, move || {
        relay_workers(
            reader,
            WorkerConfig {
                bind,
                workers: Some(1),
                backend: BackendChoice::Xdp,
                pin: false,
                ..WorkerConfig::default()
            },
            None,
        )
    })
}

fn peer_socket(pair: &Pair) -> UdpSocket {
    let ip = pair.peers_ip;
    in_ns(&pair.peers_ns, move || {
        let s = UdpSocket::bind((ip, 0)).expect("bind peer");
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&s, 4 << 20);
        s
    })
}

/// One publisher → `fan_out` subscribers through the xdp relay; libsrtp protects and
/// unprotects on the peers' side.
fn forward(profile: Profile, fan_out: usize) {
    let pair = Pair::new().expect("namespaces");
    let dir = TempDir::new("xdp");
    let shm = dir.path().join("shm");
    let mut w = ShmWriter::create(
        &shm,
        Capacity {
            sessions: 16,
            routes: 16,
            workers: 2,
        },
    )
    .expect("shm");
    let base = 1000 * profile.code() as u64 + 10 * fan_out as u64;
    let pub_sock = peer_socket(&pair);
    let pub_key = test_key(profile, base * 2);
    w.put_session(&session(
        base,
        pub_sock.local_addr().expect("addr"),
        Role::Speaker,
        pub_key,
        test_key(profile, base * 2 + 1),
    ))
    .expect("session");
    let mut subs = Vec::new();
    for j in 0..fan_out as u64 {
        let id = base + 1 + j;
        let sock = peer_socket(&pair);
        let key = test_key(profile, id * 2 + 1);
        w.put_session(&session(
            id,
            sock.local_addr().expect("addr"),
            Role::Viewer,
            test_key(profile, id * 2),
            key,
        ))
        .expect("session");
        w.put_route(&RouteRecord {
            id: j + 1,
            from: base,
            ssrc: None,
            to: id,
            rewrite: Rewrite::default(),
        })
        .expect("route");
        subs.push((sock, key));
    }
    let reader = Arc::new(ShmReader::open(&shm).expect("open shm"));
    let workers = start_relay(&pair, reader.clone());
    assert_eq!(BackendChoice::from(workers.backend()), BackendChoice::Xdp);
    let relay_addr = workers.local_addr();

    let n = 300u16;
    let ssrc = 0x5100 + fan_out as u32;
    let plain: Vec<Vec<u8>> = (0..n).map(|s| rtp(ssrc, s.wrapping_add(65_500))).collect();
    let protected: Vec<Vec<u8>> = libsrtp(
        profile,
        &pub_key,
        plain
            .iter()
            .map(|p| format!("protect {}", hex(p)))
            .collect(),
    )
    .iter()
    .map(|l| {
        assert!(!l.starts_with("ERR"), "libsrtp protect: {l}");
        unhex(l)
    })
    .collect();

    let got: Vec<Vec<Vec<u8>>> = std::thread::scope(|sc| {
        let readers: Vec<_> = subs
            .iter()
            .map(|(s, _)| {
                sc.spawn(move || {
                    let mut out = Vec::new();
                    let mut buf = vec![0u8; 2048];
                    let mut last = Instant::now();
                    while out.len() < n as usize && last.elapsed() < Duration::from_secs(5) {
                        if let Ok((len, from)) = s.recv_from(&mut buf) {
                            assert_eq!(from, relay_addr, "datagram from elsewhere");
                            out.push(buf[..len].to_vec());
                            last = Instant::now();
                        }
                    }
                    out
                })
            })
            .collect();
        for (i, p) in protected.iter().enumerate() {
            pub_sock.send_to(p, relay_addr).expect("send");
            if i % 20 == 19 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        readers
            .into_iter()
            .map(|h| h.join().expect("reader"))
            .collect()
    });
    // Counters are published once per loop turn: wait for the turn that sent the last frame.
    let deadline = Instant::now() + Duration::from_secs(2);
    while workers.total().tx_packets < n as u64 * fan_out as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let io = workers.total();
    workers.stop().expect("clean stop");
    for ((_, key), got) in subs.iter().zip(&got) {
        assert_eq!(
            got.len(),
            n as usize,
            "{profile} fan-out {fan_out}: a subscriber got {} of {n} (io {io:?})",
            got.len()
        );
        let clear = libsrtp(
            profile,
            key,
            got.iter()
                .map(|c| format!("unprotect {}", hex(c)))
                .collect(),
        );
        for (i, (c, want)) in clear.iter().zip(&plain).enumerate() {
            assert_eq!(
                &unhex(c),
                want,
                "{profile} fan-out {fan_out}: packet {i} differs"
            );
        }
    }
    let totals = reader.totals();
    assert_eq!(totals.packets_in, n as u64);
    assert_eq!(totals.packets_out, n as u64 * fan_out as u64);
    // The datagrams came and went through the AF_XDP socket, not the kernel's UDP stack
    // (the first ones may leave through the kernel while the neighbour is resolved).
    assert_eq!(io.xdp_rx_frames, n as u64, "{io:?}");
    assert_eq!(
        io.xdp_tx_frames + io.xdp_tx_kernel,
        n as u64 * fan_out as u64,
        "{io:?}"
    );
    assert_eq!(
        (io.xdp_rx_invalid, io.xdp_tx_ring_full, io.tx_errors),
        (0, 0, 0),
        "{io:?}"
    );
    assert!(
        io.xdp_tx_kernel < 10,
        "{profile}: {} datagrams left through the kernel: {io:?}",
        io.xdp_tx_kernel
    );
}

#[test]
fn every_profile_fan_out_1_and_3() {
    let profiles = match available() {
        Ok(p) => p,
        Err(why) => {
            skip::skip(why);
            return;
        }
    };
    for profile in Profile::ALL {
        if !profiles.contains(&profile) {
            skip::skip(format!("the libsrtp peer has no {profile}"));
            continue;
        }
        for fan_out in [1, 3] {
            forward(profile, fan_out);
        }
    }
}

/// The MAC address of `dev` in namespace `ns`.
fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "dev", dev])
        .output()
        .expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {text:?}"));
    let mut mac = [0u8; 6];
    for (m, h) in mac.iter_mut().zip(hex.split(':')) {
        *m = u8::from_str_radix(h, 16).expect("mac");
    }
    mac
}

/// An Ethernet/IPv4/UDP frame from `src` to `dst` carrying `payload`, header checksum right.
fn frame(dst_mac: [u8; 6], src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 only")
    };
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_len = (28 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&ip_len.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&s.ip().octets());
    ip.extend_from_slice(&d.ip().octets());
    let mut sum = 0u32;
    for w in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum >> 16) + (sum & 0xffff);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&s.port().to_be_bytes());
    f.extend_from_slice(&d.port().to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum
    f.extend_from_slice(payload);
    f
}

/// Send raw Ethernet frames out of `dev` in namespace `ns` (AF_PACKET).
fn send_frames(ns: &str, dev: &str, frames: Vec<Vec<u8>>) {
    let dev = std::ffi::CString::new(dev).expect("name");
    in_ns(ns, move || {
        // SAFETY: plain socket(2) call; closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: dev is a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) };
        assert!(ifindex > 0);
        // SAFETY: sockaddr_ll is a C struct for which all-zero bytes are valid.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = ifindex as i32;
        sa.sll_halen = 6;
        for f in &frames {
            // SAFETY: f and sa are live for the call, with the lengths passed.
            let r = unsafe {
                libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&sa as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(r, f.len() as isize, "{}", std::io::Error::last_os_error());
            std::thread::sleep(Duration::from_micros(200));
        }
        // SAFETY: closing our own fd.
        unsafe { libc::close(fd) };
    })
}

/// A garbage flood at the xdp relay: random datagrams from unknown sources, forged SRTP from
/// the known publisher, raw frames with a broken IPv4 checksum or inconsistent lengths, and
/// datagrams too large for one frame (fragments, which the program leaves to the kernel). The
/// relay keeps running, counts each drop by reason, and still forwards the publisher's media.
#[test]
fn garbage_flood_dropped_and_counted() {
    if let Err(why) = available() {
        skip::skip(why);
        return;
    }
    let profile = Profile::Aes128CmSha1_80;
    let pair = Pair::new().expect("namespaces");
    let dir = TempDir::new("xdp-flood");
    let shm = dir.path().join("shm");
    let mut w = ShmWriter::create(
        &shm,
        Capacity {
            sessions: 8,
            routes: 8,
            workers: 2,
        },
    )
    .expect("shm");
    let pub_ = peer_socket(&pair);
    let sub = peer_socket(&pair);
    let attacker = peer_socket(&pair);
    let mut pub_peer = Peer::new(1, Role::Speaker, profile);
    let mut sub_peer = Peer::new(2, Role::Viewer, profile);
    // The peers' keys and contexts, on the namespace's sockets.
    pub_peer.sock = pub_.try_clone().expect("dup");
    sub_peer.sock = sub.try_clone().expect("dup");
    w.put_session(&pub_peer.record()).expect("session");
    w.put_session(&sub_peer.record()).expect("session");
    w.put_route(&RouteRecord {
        id: 1,
        from: 1,
        ssrc: None,
        to: 2,
        rewrite: Rewrite::default(),
    })
    .expect("route");
    let reader = Arc::new(ShmReader::open(&shm).expect("open shm"));
    let workers = start_relay(&pair, reader.clone());
    let relay = workers.local_addr();

    // Random datagrams from an unknown source, and forged SRTP (a flipped tag byte) from the
    // publisher's own address.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let garbage = 2000u64;
    for i in 0..garbage {
        let len = 1 + (rnd() % 1400) as usize;
        let d: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        attacker.send_to(&d, relay).expect("send");
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let forged = 200u64;
    let mut buf = vec![0u8; 2048];
    for seq in 0..forged as u16 {
        let mut rtp = vec![0x80u8, 96];
        rtp.extend_from_slice(&seq.to_be_bytes());
        rtp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x11, 0x11]);
        rtp.extend_from_slice(&[7u8; 200]);
        buf[..rtp.len()].copy_from_slice(&rtp);
        let n = pub_peer
            .send
            .protect_rtp(&mut buf, rtp.len())
            .expect("protect");
        buf[n - 1] ^= 0xff;
        pub_.send_to(&buf[..n], relay).expect("send");
    }
    // Frames the program hands to the socket but that do not parse.
    let relay_mac = mac_of(&pair.relay_ns, &format!("vr{}", pair.tag()));
    let from = SocketAddr::from((pair.peers_ip, 40_000));
    let mut bad = Vec::new();
    for i in 0..50u8 {
        let mut f = frame(relay_mac, from, relay, &[i; 100]);
        f[24] ^= 0x5a; // IPv4 header checksum
        bad.push(f);
        let mut f = frame(relay_mac, from, relay, &[i; 100]);
        f[38..40].copy_from_slice(&500u16.to_be_bytes()); // UDP length beyond the packet
        bad.push(f);
    }
    let bad_frames = bad.len() as u64;
    send_frames(&pair.peers_ns, &format!("vp{}", pair.tag()), bad);
    // Datagrams larger than one frame and than the relay's receive buffers: IPv4 fragments,
    // which reach the kernel, are reassembled there and dropped as oversized.
    let big = 3u64;
    for _ in 0..big {
        attacker.send_to(&[9u8; 3000], relay).expect("send big");
    }

    // The publisher's media still flows.
    let n = 100u16;
    let got = std::thread::scope(|sc| {
        let r = sc.spawn(|| sub_peer.recv_rtp(n as usize, Duration::from_secs(5)));
        for seq in 0..n {
            pub_peer.send_rtp(relay, 0x2222, 1000 + seq, &[seq as u8; 600]);
            if seq % 20 == 19 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        r.join().expect("reader")
    });
    // Counters settle within a turn or two.
    std::thread::sleep(Duration::from_millis(200));
    let io = workers.total();
    workers.stop().expect("clean stop after the flood");
    assert_eq!(got.len(), n as usize, "media after the flood: {io:?}");
    for (ssrc, seq, payload) in &got {
        assert_eq!(*ssrc, 0x2222);
        assert_eq!(payload, &vec![(*seq - 1000) as u8; 600]);
    }
    assert_eq!(io.xdp_rx_invalid, bad_frames, "{io:?}");
    assert_eq!(io.rx_oversized, big, "{io:?}");
    let t = reader.totals();
    let drops: u64 = t.drops.iter().sum();
    assert_eq!(t.drops[DropReason::AuthFailed as usize], forged, "{t:?}");
    assert_eq!(
        drops,
        garbage + forged + big,
        "every garbage datagram dropped and counted: {t:?}"
    );
    assert_eq!(t.packets_out, n as u64);
}

/// Drop `caps` from this thread's effective and permitted sets (capabilities are per thread;
/// threads it spawns inherit the reduced sets).
fn drop_caps(caps: &[u32]) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: h and d are the header and the two data words capget expects for version 3.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
    assert_eq!(r, 0, "capget: {}", std::io::Error::last_os_error());
    for &c in caps {
        let (i, bit) = ((c / 32) as usize, 1u32 << (c % 32));
        d[i].effective &= !bit;
        d[i].permitted &= !bit;
    }
    // SAFETY: as above; capset on pid 0 changes only the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", std::io::Error::last_os_error());
}

/// Without CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF (and CAP_SYS_ADMIN, which would stand in for
/// CAP_BPF) the relay refuses the xdp backend with a message naming them.
#[test]
fn refused_without_capabilities() {
    if let Err(why) = available() {
        skip::skip(why);
        return;
    }
    let pair = Pair::new().expect("namespaces");
    let dir = TempDir::new("xdp-caps");
    let shm = dir.path().join("shm");
    let _w = ShmWriter::create(
        &shm,
        Capacity {
            sessions: 4,
            routes: 4,
            workers: 1,
        },
    )
    .expect("shm");
    let reader = Arc::new(ShmReader::open(&shm).expect("open shm"));
    let bind = SocketAddr::from((pair.relay_ip, 0));
    let err = in_ns(&pair.relay_ns, move || {
        // CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_SYS_ADMIN 21, CAP_PERFMON 38, CAP_BPF 39.
        drop_caps(&[12, 13, 21, 38, 39]);
        relay::worker::spawn_workers(
            WorkerConfig {
                bind,
                workers: Some(1),
                backend: BackendChoice::Xdp,
                pin: false,
                ..WorkerConfig::default()
            },
            move |i| {
                <relay::engine::Engine>::new(
                    reader.clone(),
                    relay::engine::EngineConfig {
                        worker: i,
                        ..Default::default()
                    },
                )
            },
        )
        .err()
        .map(|e| e.to_string())
    })
    .expect("the xdp backend must be refused without capabilities");
    assert!(
        err.contains("CAP_NET_ADMIN") && err.contains("CAP_BPF") && err.contains("mmsg"),
        "{err}"
    );
}

/// The relay follows a neighbour change: the peers' interface gets a new MAC address and the
/// relay's neighbour entry is replaced; the change notification makes the worker look the
/// destination up again, so the next frames go to the new address (with the old one the
/// peers' kernel would drop them as addressed to another host).
#[test]
fn neighbour_change_followed() {
    if let Err(why) = available() {
        skip::skip(why);
        return;
    }
    let profile = Profile::Aes128CmSha1_80;
    let pair = Pair::new().expect("namespaces");
    let dir = TempDir::new("xdp-neigh");
    let shm = dir.path().join("shm");
    let mut w = ShmWriter::create(
        &shm,
        Capacity {
            sessions: 4,
            routes: 4,
            workers: 2,
        },
    )
    .expect("shm");
    let mut pub_peer = Peer::new(1, Role::Speaker, profile);
    let mut sub_peer = Peer::new(2, Role::Viewer, profile);
    pub_peer.sock = peer_socket(&pair);
    sub_peer.sock = peer_socket(&pair);
    w.put_session(&pub_peer.record()).expect("session");
    w.put_session(&sub_peer.record()).expect("session");
    w.put_route(&RouteRecord {
        id: 1,
        from: 1,
        ssrc: None,
        to: 2,
        rewrite: Rewrite::default(),
    })
    .expect("route");
    let reader = Arc::new(ShmReader::open(&shm).expect("open shm"));
    let workers = start_relay(&pair, reader);
    let relay = workers.local_addr();
    let mut burst = |first: u16| {
        let n = 50u16;
        std::thread::scope(|sc| {
            let sub = &mut sub_peer;
            let r = sc.spawn(move || sub.recv_rtp(n as usize, Duration::from_secs(3)));
            for seq in first..first + n {
                pub_peer.send_rtp(relay, 0x3333, seq, &[seq as u8; 300]);
            }
            r.join().expect("reader").len()
        })
    };
    assert_eq!(burst(0), 50);
    // Counters are published once per loop turn: wait for the turn that sent the last frame.
    let settled = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(2);
        while workers.total().tx_packets < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        workers.total()
    };
    let before = settled(50);
    assert_eq!(before.tx_packets, 50, "{before:?}");
    let vp = format!("vp{}", pair.tag());
    let vr = format!("vr{}", pair.tag());
    sh(&[
        "ip",
        "-n",
        &pair.peers_ns,
        "link",
        "set",
        &vp,
        "address",
        "02:5a:11:ce:00:02",
    ])
    .expect("new MAC");
    sh(&[
        "ip",
        "-n",
        &pair.relay_ns,
        "neigh",
        "replace",
        &pair.peers_ip.to_string(),
        "lladdr",
        "02:5a:11:ce:00:02",
        "dev",
        &vr,
        "nud",
        "reachable",
    ])
    .expect("neighbour entry");
    // The watcher thread sees the notification within its receive loop.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        burst(100),
        50,
        "after the MAC change: {:?}",
        workers.total()
    );
    let after = settled(100);
    workers.stop().expect("clean stop");
    assert!(
        after.xdp_route_lookups > before.xdp_route_lookups,
        "no new lookup after the change: {before:?} -> {after:?}"
    );
    // The 50 forwarded packets, plus at most a couple of the relay's own RTCP packets (loss
    // recovery NACKs a gap it saw in the publisher's stream), all as frames.
    let frames = after.xdp_tx_frames - before.xdp_tx_frames;
    assert!(
        (50..=52).contains(&frames),
        "the second burst left as frames ({frames}): {after:?}"
    );
    assert_eq!(
        after.xdp_tx_kernel, before.xdp_tx_kernel,
        "none through the kernel"
    );
}
