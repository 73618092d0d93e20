//! The slow path in process, over real sockets: control's [`SlowPath`] thread on its unix
//! socket, the relay's own `SlowPathClient` on the other end (with a UDP "media" socket),
//! and UDP peers on loopback. A STUN check for a session whose ICE credentials are
//! registered is answered to the right peer, and its nomination binds the peer in shm; a
//! flood from one source is rate limited and counted while another source is still served;
//! consent expiry marks the session pending in shm.

use contract::config::{Config, Secret};
use contract::shm::{session_flags, ShmReader};
use contract::srtp::{MasterKey, Profile};
use contract::wire::stun::{self, Class, StunMessage, StunWriter, METHOD_BINDING};
use control::api::Control;
use control::http::Request;
use control::ice::IceEvent;
use control::slowpath::{DiscardDtls, Dispatcher, Outbox, SlowPath, SlowPathParams};
use relay::batch::TxQueue;
use relay::io::slowpath::SlowPathClient;
use serde_json::{json, Value};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "test-admin-token-0123456789";
const L_UFRAG: &str = "SluI";
const L_PWD: &str = "sluicelocalpassword0123456789ab";
const R_UFRAG: &str = "BrWs";

struct Env {
    dir: PathBuf,
    shm: PathBuf,
    cfg: Config,
}

impl Env {
    fn new(name: &str, per_source: u32) -> Env {
        let dir = std::env::temp_dir().join(format!("sluice-sp-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shm = PathBuf::from(format!("/dev/shm/sluice-sp-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&shm);
        let text = format!(
            "runtime_dir = \"{d}/run\"\n[control]\nadmin_listen = \"127.0.0.1:0\"\nstate_dir = \"{d}/state\"\naudit_log = \"{d}/log/audit.log\"\nslow_path_rate = 100000\nslow_path_per_source_rate = {per_source}\n[shm]\npath = \"{s}\"\nsessions = 16\nroutes = 16\nworker_slots = 2\n",
            d = dir.display(),
            s = shm.display()
        );
        let cfg = Config::from_toml_str(&text, "test").unwrap();
        std::fs::create_dir_all(&cfg.runtime_dir).unwrap();
        Env { dir, shm, cfg }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.shm);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn key(fill: u8) -> String {
    let p = Profile::Aes128CmSha1_80;
    MasterKey::new(p, &vec![fill; p.key_material_len()])
        .unwrap()
        .to_base64()
}

fn admin(ctl: &Control, method: &str, path: &str, body: Value) -> (u16, Value) {
    let req = Request {
        method: method.into(),
        path: path.into(),
        query: String::new(),
        headers: vec![("authorization".into(), format!("Bearer {TOKEN}"))],
        body: if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body).unwrap()
        },
        peer: "test".into(),
    };
    let r = ctl.handle_admin(&req);
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

/// A session with a provisional peer address, as the WebRTC integration would create before ICE.
fn new_session(ctl: &Control, provisional: &str) -> u64 {
    let (st, v) = admin(
        ctl,
        "POST",
        "/v1/sessions",
        json!({"peer": provisional, "profile": "AES_CM_128_HMAC_SHA1_80", "rx_key": key(1), "tx_key": key(2), "role": "speaker"}),
    );
    assert_eq!(st, 201, "{v}");
    v["id"].as_u64().unwrap()
}

fn check(txid: u8, user: &str, use_candidate: bool) -> Vec<u8> {
    check_with_key(txid, user, use_candidate, L_PWD)
}

fn check_with_key(txid: u8, user: &str, use_candidate: bool, key: &str) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let mut w = StunWriter::new(
        &mut buf,
        stun::message_type(METHOD_BINDING, Class::Request),
        &[txid; 12],
    )
    .unwrap();
    w.username(user.as_bytes()).unwrap();
    w.priority(1_845_501_695).unwrap();
    w.ice_controlling(0xfeed_beef).unwrap();
    if use_candidate {
        w.use_candidate().unwrap();
    }
    w.message_integrity(key.as_bytes()).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    buf[..n].to_vec()
}

/// The relay side: a media socket and the relay's slow-path client.
struct FakeRelay {
    client: SlowPathClient,
    up: TxQueue,
}

impl FakeRelay {
    fn new(path: &std::path::Path) -> FakeRelay {
        let media = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = SlowPathClient::new(path, 0, media.try_clone().unwrap(), 64).unwrap();
        FakeRelay {
            client,
            up: TxQueue::with_capacity(256),
        }
    }

    fn connect(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.client.is_connected() {
            assert!(Instant::now() < deadline, "relay client never connected");
            self.client.pump(Instant::now(), &mut self.up);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Pass datagrams "received from" `from` up to control.
    fn up(&mut self, from: SocketAddr, datagrams: &[Vec<u8>]) {
        for d in datagrams {
            assert!(self.up.push(from, d));
        }
        self.client.pump(Instant::now(), &mut self.up);
    }

    /// Pump until `peer` receives a datagram; return it.
    fn reply_to(&mut self, peer: &UdpSocket) -> Vec<u8> {
        peer.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        loop {
            self.client.pump(Instant::now(), &mut self.up);
            if let Ok((n, _)) = peer.recv_from(&mut buf) {
                return buf[..n].to_vec();
            }
            assert!(Instant::now() < deadline, "no reply reached the peer");
        }
    }
}

#[test]
fn check_answered_and_nomination_binds_peer_in_shm() {
    let env = Env::new("bind", 200);
    let ctl = Arc::new(Control::start(env.cfg.clone(), Secret::new(TOKEN)).unwrap());
    let sid = new_session(&ctl, "192.0.2.200:9");
    ctl.ice
        .lock()
        .unwrap()
        .add_credentials(sid, L_UFRAG, L_PWD, R_UFRAG, None)
        .unwrap();

    let path = env.cfg.control.slow_path.clone();
    let sp = SlowPath::bind(
        &path,
        SlowPathParams::from_config(&env.cfg.control),
        ctl.ice.clone(),
        ctl.clone(),
        Box::new(DiscardDtls),
        ctl.slow_path_stats.clone(),
    )
    .unwrap();
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let md = std::fs::metadata(&path).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o660);
    let mut thread = sp.spawn().unwrap();

    let mut relay = FakeRelay::new(&path);
    relay.connect();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let user = format!("{L_UFRAG}:{R_UFRAG}");

    // A plain check: answered with a success that verifies with our password; the pair is
    // valid but nothing is bound yet.
    relay.up(peer_addr, &[check(1, &user, false)]);
    let resp = relay.reply_to(&peer);
    let m = StunMessage::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::SuccessResponse);
    assert_eq!(m.transaction_id(), [1; 12]);
    assert_eq!(m.xor_mapped_address(), Some(peer_addr));
    m.verify_integrity(L_PWD.as_bytes()).unwrap();
    m.verify_fingerprint().unwrap();
    let reader = ShmReader::open(&env.shm).unwrap();
    let shm_session = |id| {
        let mut found = None;
        reader.for_each_session(|s| {
            if s.id == id {
                found = Some(*s);
            }
        });
        found.unwrap()
    };
    assert_eq!(shm_session(sid).peer, "192.0.2.200:9".parse().unwrap());

    // USE-CANDIDATE nominates: the peer is bound in shm (and in the API) before the answer.
    relay.up(peer_addr, &[check(2, &user, true)]);
    let resp = relay.reply_to(&peer);
    assert_eq!(
        StunMessage::parse(&resp).unwrap().class(),
        Class::SuccessResponse
    );
    let rec = shm_session(sid);
    assert_eq!(rec.peer, peer_addr);
    assert_eq!(rec.flags & session_flags::PENDING, 0);
    let (st, v) = admin(&ctl, "GET", &format!("/v1/sessions/{sid}"), Value::Null);
    assert_eq!(st, 200);
    assert_eq!(v["peer"], json!(peer_addr.to_string()));

    // Network change: a nomination from a new address re-binds the session.
    let moved = UdpSocket::bind("127.0.0.1:0").unwrap();
    let moved_addr = moved.local_addr().unwrap();
    relay.up(moved_addr, &[check(3, &user, true)]);
    let resp = relay.reply_to(&moved);
    assert_eq!(
        StunMessage::parse(&resp).unwrap().xor_mapped_address(),
        Some(moved_addr)
    );
    assert_eq!(shm_session(sid).peer, moved_addr);

    // A wrong password from the old address: 401, nothing moves.
    let bad = check_with_key(4, &user, true, "notourpasswordnotourpassword");
    relay.up(peer_addr, &[bad]);
    let resp = relay.reply_to(&peer);
    let m = StunMessage::parse(&resp).unwrap();
    assert_eq!(m.error_code().unwrap().code, 401);
    assert_eq!(shm_session(sid).peer, moved_addr);

    let snap = ctl.slow_path_stats.snapshot();
    assert_eq!(snap.stun, 4);
    assert_eq!(snap.connections, 1);
    let c = ctl.ice.lock().unwrap().counters();
    assert_eq!((c.success, c.unauthenticated, c.nominations), (3, 1, 2));
    let audit = std::fs::read_to_string(&env.cfg.control.audit_log).unwrap();
    assert_eq!(audit.matches("\"session.ice_bind\"").count(), 2);
    assert!(
        !audit.contains("127.0.0.1"),
        "no peer addresses in the audit log"
    );

    // Consent expiry (simulated time, through the same dispatcher code): PENDING in shm.
    let mut d = Dispatcher::new(
        SlowPathParams::from_config(&env.cfg.control),
        ctl.ice.clone(),
        ctl.clone(),
        Box::new(DiscardDtls),
        ctl.slow_path_stats.clone(),
    );
    thread.shutdown();
    let mut out = Outbox::default();
    d.tick(Instant::now() + Duration::from_secs(31), &mut out);
    assert_ne!(shm_session(sid).flags & session_flags::PENDING, 0);
    assert_eq!(shm_session(sid).peer, moved_addr);
    assert_eq!(ctl.ice.lock().unwrap().nominated(sid), None);
    assert_eq!(ctl.ice.lock().unwrap().poll_event(), None::<IceEvent>);
    let audit = std::fs::read_to_string(&env.cfg.control.audit_log).unwrap();
    assert!(audit.contains("\"session.ice_expired\""));
    // A fresh nomination clears PENDING again.
    let mut out = Outbox::default();
    d.handle(Instant::now(), moved_addr, &check(5, &user, true), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(shm_session(sid).flags & session_flags::PENDING, 0);

    // Deleting the session forgets its credentials.
    let (st, _) = admin(&ctl, "DELETE", &format!("/v1/sessions/{sid}"), Value::Null);
    assert_eq!(st, 204);
    assert!(ctl.ice.lock().unwrap().is_empty());
}

#[test]
fn flood_from_one_source_is_limited_others_served() {
    let env = Env::new("flood", 10);
    let ctl = Arc::new(Control::start(env.cfg.clone(), Secret::new(TOKEN)).unwrap());
    let sid = new_session(&ctl, "192.0.2.201:9");
    ctl.ice
        .lock()
        .unwrap()
        .add_credentials(sid, L_UFRAG, L_PWD, R_UFRAG, None)
        .unwrap();
    let path = env.cfg.control.slow_path.clone();
    let mut thread = SlowPath::bind(
        &path,
        SlowPathParams::from_config(&env.cfg.control),
        ctl.ice.clone(),
        ctl.clone(),
        Box::new(DiscardDtls),
        ctl.slow_path_stats.clone(),
    )
    .unwrap()
    .spawn()
    .unwrap();
    let mut relay = FakeRelay::new(&path);
    relay.connect();
    // 127.0.0.0/8 is all loopback on Linux: two distinct source IPs without leaving the host.
    let (flooder, good) = match (
        UdpSocket::bind("127.0.0.2:0"),
        UdpSocket::bind("127.0.0.3:0"),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            sluice_tests::skip::skip("cannot bind 127.0.0.2/127.0.0.3");
            return;
        }
    };
    let user = format!("{L_UFRAG}:{R_UFRAG}");
    let flood: Vec<Vec<u8>> = (0..50).map(|i| check(i as u8, &user, false)).collect();
    let mut sent = 0;
    for _ in 0..6 {
        relay.up(flooder.local_addr().unwrap(), &flood);
        sent += flood.len();
        std::thread::sleep(Duration::from_millis(5));
    }
    let up_dropped = relay.client.counters().up_dropped;
    // The other source is still served.
    relay.up(good.local_addr().unwrap(), &[check(200, &user, false)]);
    let resp = relay.reply_to(&good);
    let m = StunMessage::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::SuccessResponse);
    assert_eq!(m.transaction_id(), [200; 12]);
    let snap = ctl.slow_path_stats.snapshot();
    let delivered = sent as u64 - up_dropped;
    assert!(
        delivered >= 100,
        "only {delivered} datagrams reached control"
    );
    // 10/s with a 10-datagram burst: all but a handful of the flood is dropped.
    assert!(
        snap.rate_source + 30 >= delivered,
        "rate_source {} of {delivered}",
        snap.rate_source
    );
    assert_eq!(snap.rate_global, 0);
    let c = ctl.ice.lock().unwrap().counters();
    assert_eq!(c.success, delivered - snap.rate_source + 1);
    // The drops are visible in /metrics.
    let (st, _) = admin(&ctl, "GET", "/v1/status", Value::Null);
    assert_eq!(st, 200);
    let req = Request {
        method: "GET".into(),
        path: "/metrics".into(),
        query: String::new(),
        headers: vec![],
        body: vec![],
        peer: "test".into(),
    };
    let text = String::from_utf8(ctl.handle_admin(&req).body).unwrap();
    let line = format!(
        "sluice_control_slow_path_drops_total{{reason=\"rate_source\"}} {}",
        snap.rate_source
    );
    assert!(text.contains(&line), "{text}");
    thread.shutdown();
    assert!(
        !path.exists(),
        "the socket file is removed when the thread stops"
    );
}

/// `Core::set_ice_credentials` publishes the credentials in the session's shm slot (where the
/// relay answers checks from) and in the journal; a restarted control registers them in its
/// agent again, so the checks the relay passes up are answered, not refused 401.
#[test]
fn ice_credentials_published_in_shm_and_restored_after_restart() {
    let env = Env::new("restore", 200);
    let ctl = Control::start(env.cfg.clone(), Secret::new(TOKEN)).unwrap();
    let sid = new_session(&ctl, "192.0.2.202:9");
    assert!(ctl
        .core
        .set_ice_credentials(sid, L_UFRAG, L_PWD, &"r".repeat(33), None)
        .is_err());
    ctl.core
        .set_ice_credentials(sid, L_UFRAG, L_PWD, R_UFRAG, None)
        .unwrap();
    let reader = ShmReader::open(&env.shm).unwrap();
    let mut ice = None;
    reader.for_each_session(|s| {
        if s.id == sid {
            ice = s.ice;
        }
    });
    let ice = ice.expect("credentials in the shm slot");
    assert_eq!(ice.ufrag(), L_UFRAG.as_bytes());
    assert_eq!(ice.pwd(), L_PWD.as_bytes());
    assert_eq!(ice.remote_ufrag(), R_UFRAG.as_bytes());
    ctl.shutdown();
    drop(ctl);

    let ctl = Control::start(env.cfg.clone(), Secret::new(TOKEN)).unwrap();
    assert_eq!(ctl.ice.lock().unwrap().len(), 1);
    let peer: SocketAddr = "192.0.2.202:9".parse().unwrap();
    let user = format!("{L_UFRAG}:{R_UFRAG}");
    let mut out = [0u8; 256];
    let n = ctl
        .ice
        .lock()
        .unwrap()
        .handle_stun(Instant::now(), peer, &check(1, &user, false), &mut out)
        .expect("answered");
    let m = StunMessage::parse(&out[..n]).unwrap();
    assert_eq!(m.class(), Class::SuccessResponse);
    m.verify_integrity(L_PWD.as_bytes()).unwrap();
}
