//! The `sluice-control` binary's slow-path socket, driven by the relay's own
//! `SlowPathClient`: the socket is created 0660, a STUN check with an unknown ufrag is
//! answered 401 through the relay to the peer (RFC 8489 §9.1.3), DTLS and other datagrams are
//! counted and dropped, `/metrics` shows it all, and after a control restart the relay's
//! client reconnects and is served again; so is a restarted relay.

use contract::config::RuntimeInfo;
use contract::wire::stun::{self, Class, StunMessage, StunWriter, METHOD_BINDING};
use relay::batch::TxQueue;
use relay::io::slowpath::SlowPathClient;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Env {
    dir: PathBuf,
    cfg: PathBuf,
    shm: PathBuf,
}

impl Env {
    fn new(name: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("sluice-spd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shm = PathBuf::from(format!("/dev/shm/sluice-spd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&shm);
        let cfg = dir.join("sluice.toml");
        std::fs::write(
            &cfg,
            format!(
                "runtime_dir = \"{d}/run\"\n[control]\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"test-admin-token-0123456789\"\nstate_dir = \"{d}/state\"\naudit_log = \"{d}/log/audit.log\"\n[shm]\npath = \"{s}\"\nsessions = 8\nroutes = 8\nworker_slots = 2\n",
                d = dir.display(),
                s = shm.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
        Env { dir, cfg, shm }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("run/slow-path.sock")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.shm);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Daemon {
    child: Child,
    admin: String,
}

impl Daemon {
    fn start(env: &Env) -> Daemon {
        let rt = env.dir.join("run/control.json");
        let _ = std::fs::remove_file(&rt);
        let child = Command::new(sluice_tests::daemons::bin("sluice-control"))
            .arg("--config")
            .arg(&env.cfg)
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let info = loop {
            if let Ok(b) = std::fs::read(&rt) {
                if let Ok(v) = serde_json::from_slice::<RuntimeInfo>(&b) {
                    break v;
                }
            }
            assert!(Instant::now() < deadline, "control did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        };
        Daemon {
            child,
            admin: info.admin_url.strip_prefix("http://").unwrap().to_string(),
        }
    }

    fn metrics(&self) -> String {
        let mut s = TcpStream::connect(&self.admin).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    }

    fn stop(mut self) {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "control exited with {st}");
                return;
            }
            assert!(Instant::now() < deadline, "control did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unknown_check(txid: u8) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let mut w = StunWriter::new(
        &mut buf,
        stun::message_type(METHOD_BINDING, Class::Request),
        &[txid; 12],
    )
    .unwrap();
    w.username(b"nobody:knows").unwrap();
    w.ice_controlling(1).unwrap();
    w.message_integrity(b"whatever-password-0123456789")
        .unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    buf[..n].to_vec()
}

struct FakeRelay {
    client: SlowPathClient,
    up: TxQueue,
}

impl FakeRelay {
    fn wait_connects(&mut self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(self.client.is_connected() && self.client.counters().connects >= n) {
            assert!(Instant::now() < deadline, "relay client did not connect");
            self.client.pump(Instant::now(), &mut self.up);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send `data` up as if from `peer`, pump until the peer gets an answer.
    fn exchange(&mut self, peer: &UdpSocket, data: &[u8]) -> Vec<u8> {
        assert!(self.up.push(peer.local_addr().unwrap(), data));
        peer.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.client.pump(Instant::now(), &mut self.up);
            if let Ok((n, _)) = peer.recv_from(&mut buf) {
                return buf[..n].to_vec();
            }
            assert!(Instant::now() < deadline, "no answer reached the peer");
        }
    }

    fn send(&mut self, peer: &UdpSocket, data: &[u8]) {
        assert!(self.up.push(peer.local_addr().unwrap(), data));
        self.client.pump(Instant::now(), &mut self.up);
    }
}

fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn daemon_serves_slow_path_and_survives_restart() {
    let env = Env::new("daemon");
    let d = Daemon::start(&env);
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let md = std::fs::metadata(env.socket()).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o660);

    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut relay = FakeRelay {
        client: SlowPathClient::new(env.socket(), 0, media.try_clone().unwrap(), 16).unwrap(),
        up: TxQueue::with_capacity(16),
    };
    relay.wait_connects(1);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();

    let resp = relay.exchange(&peer, &unknown_check(1));
    let m = StunMessage::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::ErrorResponse);
    assert_eq!(m.error_code().unwrap().code, 401);
    assert_eq!(m.transaction_id(), [1; 12]);
    assert!(m.message_integrity().is_none());
    m.verify_fingerprint().unwrap();

    // A DTLS ClientHello-looking record and a datagram of no RFC 7983 kind: counted, dropped.
    // An RTP header goes up as a report of an unrouted publisher stream (simulcast learning),
    // and from a peer that is no publisher it is ignored and counted. A second STUN answer
    // proves all three were processed (the channel is ordered).
    relay.send(&peer, &[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    relay.send(&peer, &[0xf0, 1, 2, 3]);
    relay.send(&peer, &[0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2]);
    relay.exchange(&peer, &unknown_check(2));
    let text = d.metrics();
    assert_eq!(
        sample(
            &text,
            "sluice_control_slow_path_datagrams_total{kind=\"stun\"}"
        ),
        2
    );
    assert_eq!(
        sample(
            &text,
            "sluice_control_slow_path_datagrams_total{kind=\"dtls\"}"
        ),
        1
    );
    assert_eq!(
        sample(
            &text,
            "sluice_control_slow_path_datagrams_total{kind=\"other\"}"
        ),
        1
    );
    assert_eq!(
        sample(
            &text,
            "sluice_control_slow_path_drops_total{reason=\"dtls_unhandled\"}"
        ),
        1
    );
    assert_eq!(
        sample(
            &text,
            "sluice_control_slow_path_drops_total{reason=\"unhandled_kind\"}"
        ),
        1
    );
    assert_eq!(
        sample(
            &text,
            "sluice_control_slow_path_drops_total{reason=\"stream_ignored\"}"
        ),
        1
    );
    assert_eq!(
        sample(
            &text,
            "sluice_control_slow_path_stream_reports_total{result=\"received\"}"
        ),
        1
    );
    assert_eq!(
        sample(
            &text,
            "sluice_control_slow_path_stream_reports_total{result=\"learned\"}"
        ),
        0
    );
    assert_eq!(
        sample(
            &text,
            "sluice_control_ice_checks_total{result=\"unauthenticated\"}"
        ),
        2
    );
    assert_eq!(sample(&text, "sluice_control_slow_path_connections"), 1);

    // Control restarts; the relay's client notices, reconnects and is served again.
    d.stop();
    assert!(!env.socket().exists(), "socket removed on clean exit");
    let d = Daemon::start(&env);
    relay.wait_connects(2);
    let resp = relay.exchange(&peer, &unknown_check(3));
    assert_eq!(
        StunMessage::parse(&resp)
            .unwrap()
            .error_code()
            .unwrap()
            .code,
        401
    );
    let text = d.metrics();
    assert_eq!(sample(&text, "sluice_control_slow_path_connects_total"), 1);

    // The relay restarts: its old connection closes, the new one is served.
    drop(relay);
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut relay = FakeRelay {
        client: SlowPathClient::new(env.socket(), 0, media.try_clone().unwrap(), 16).unwrap(),
        up: TxQueue::with_capacity(16),
    };
    relay.wait_connects(1);
    let resp = relay.exchange(&peer, &unknown_check(4));
    assert_eq!(
        StunMessage::parse(&resp)
            .unwrap()
            .error_code()
            .unwrap()
            .code,
        401
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = d.metrics();
        if sample(&text, "sluice_control_slow_path_connections") == 1 {
            assert_eq!(sample(&text, "sluice_control_slow_path_connects_total"), 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old relay connection never closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.stop();
}
