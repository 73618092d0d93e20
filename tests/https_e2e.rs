//! HTTPS on the public listener (`[http.tls]`, a certificate this test makes with rcgen):
//!
//! - `chromium_publishes_and_watches_over_https`: headless Chromium, started with the
//!   certificate's SPKI hash in `--ignore-certificate-errors-spki-list` (no CA), publishes its
//!   fake camera through WHIP and watches it through WHEP at `https://127.0.0.1:PORT`; the
//!   watcher's `<video>` must present frames, and the WHIP POST must have travelled on HTTP/2.
//!   Needs `/usr/bin/chromium`, Node and `npm ci --prefix tests/webrtc` (see
//!   tests/chromium_e2e.rs); without them it prints `SKIP: <why>` and passes unless
//!   `SLUICE_REQUIRE_PEERS` is set.
//! - `tls_handshake_overhead_on_whip`: 200 WHIP POSTs (and 1000 `/healthz`, which write no
//!   journal), each on a new connection with a full TLS 1.3 handshake, to a plain and a TLS public listener in turn; prints p50/p99 of
//!   both and the difference (recorded in
//!   docs/BENCHMARKS.md). It checks the answers, and only a generous bound on the overhead
//!   (a loaded 2-core test machine is no place for a 5 ms assertion).
//! - `certificate_is_reloaded_when_its_files_change`: control serves a new certificate after
//!   its files are replaced, without a restart.

use rustls_pki_types::{CertificateDer, ServerName};
use sluice_tests::daemons::{bin, Proc};
use sluice_tests::webrtc_rig::{browser_result, script_dir, unavailable};
use sluice_tests::{free_udp_port, TempDir};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "https-e2e-admin-token-0123456789";
const FRAMES: u32 = 30;
const BROWSER_TIMEOUT_SECS: u64 = 40;
const FP: &str = "sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E";

/// A certificate for `localhost` and 127.0.0.1 written as PEM into `dir`.
struct TestCert {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
    /// Base64 SHA-256 of the SubjectPublicKeyInfo.
    spki: String,
}

fn make_cert(dir: &Path, name: &str) -> TestCert {
    use base64::Engine as _;
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, made.cert.pem()).expect("cert");
    std::fs::write(&key, made.key_pair.serialize_pem()).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let spki = base64::engine::general_purpose::STANDARD.encode(
        ring::digest::digest(&ring::digest::SHA256, &made.key_pair.public_key_der()).as_ref(),
    );
    TestCert {
        cert,
        key,
        der: made.cert.der().clone(),
        spki,
    }
}

/// A TCP port free on 127.0.0.1 now (the public listener must differ from the admin one's
/// `127.0.0.1:0`, which would name the same listener).
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Control (and, with `relay`, one relay worker) with a public listener, HTTPS when `tls`.
struct Rig {
    relay: Option<Proc>,
    control: Option<Proc>,
    shm: PathBuf,
    dir: TempDir,
    admin: SocketAddr,
    public: SocketAddr,
    public_url: String,
}

impl Rig {
    fn start(tag: &str, dir: TempDir, tls: Option<&TestCert>, relay: bool) -> Rig {
        let d = dir.path().to_path_buf();
        let shm = PathBuf::from(format!("/dev/shm/sluice-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&shm);
        let tls_section = tls.map_or(String::new(), |t| {
            format!(
                "[http.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                t.cert.display(),
                t.key.display()
            )
        });
        let cfg = d.join("sluice.toml");
        std::fs::write(
            &cfg,
            format!(
                "runtime_dir = \"{d}/run\"\n\
                 [relay]\nbind = \"127.0.0.1:{port}\"\nworkers = 1\n\
                 [control]\nadmin_listen = \"127.0.0.1:0\"\npublic_listen = \"127.0.0.1:{public_port}\"\n\
                 admin_token = \"{ADMIN_TOKEN}\"\n\
                 state_dir = \"{d}/state\"\naudit_log = \"{d}/log/audit.log\"\n\
                 bootstrap_app = \"demo\"\npublic_addresses = [\"127.0.0.1\"]\n\
                 [shm]\npath = \"{s}\"\nsessions = 2048\nroutes = 4096\nworker_slots = 4\n\
                 {tls_section}",
                d = d.display(),
                port = free_udp_port(),
                public_port = free_tcp_port(),
                s = shm.display()
            ),
        )
        .expect("config");
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        // SLUICE_HTTP_TEST_CONTROL: another build (the figures in docs/BENCHMARKS.md are from
        // a release build).
        let control_bin = std::env::var_os("SLUICE_HTTP_TEST_CONTROL")
            .map(PathBuf::from)
            .unwrap_or_else(|| bin("sluice-control"));
        let mut cmd = Command::new(control_bin);
        cmd.arg("--config").arg(&cfg).env_remove("NOTIFY_SOCKET");
        let control = Proc::spawn("sluice-control", cmd, &d, Stdio::null());
        let rt = d.join("run/control.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        let info: serde_json::Value = loop {
            if let Some(v) = std::fs::read(&rt)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                break v;
            }
            assert!(
                Instant::now() < deadline,
                "control did not become ready:\n{}",
                control.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let url = |k: &str| info[k].as_str().unwrap_or_default().to_string();
        let addr = |u: &str| -> SocketAddr {
            u.split_once("://")
                .and_then(|(_, a)| a.parse().ok())
                .unwrap_or_else(|| panic!("address in {u}"))
        };
        let public_url = url("public_url");
        assert_eq!(
            public_url.starts_with("https://"),
            tls.is_some(),
            "{public_url}"
        );
        let relay = relay.then(|| {
            let mut cmd = Command::new(bin("sluice-relay"));
            cmd.arg("--config").arg(&cfg);
            Proc::spawn("sluice-relay", cmd, &d, Stdio::null())
        });
        Rig {
            relay,
            control: Some(control),
            shm,
            admin: addr(&url("admin_url")),
            public: addr(&public_url),
            public_url,
            dir,
        }
    }

    /// One admin request; status and body.
    fn admin(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.admin).expect("connect admin");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        split(&out)
    }

    fn mint(&self, room: &str, role: &str) -> String {
        let (st, body) = self.admin(
            "POST",
            "/v1/tokens",
            &format!(r#"{{"app":"demo","room":"{room}","role":"{role}","ttl_secs":600}}"#),
        );
        assert_eq!(st, 201, "mint: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["token"].as_str().expect("token").to_string()
    }

    fn control_log(&self) -> String {
        self.control
            .as_ref()
            .map(Proc::log_text)
            .unwrap_or_default()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.relay.take();
        self.control.take();
        let _ = std::fs::remove_file(&self.shm);
    }
}

/// Status and body of a whole HTTP/1.1 answer.
fn split(out: &str) -> (u16, String) {
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// A TLS client that trusts exactly `certs`, with session resumption off: every connection
/// makes a full handshake and sees the certificate served now.
fn client_config(certs: &[&CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add((*c).clone()).expect("trust anchor");
    }
    // The provider control serves with (ring; see control::http::tls::provider).
    let provider = Arc::new(control::http::tls::provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// One request on a new connection (TLS when `tls` is given): the raw answer, the leaf
/// certificate the server showed, the negotiated TLS version.
fn request(
    to: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    raw: &str,
) -> (String, Option<Vec<u8>>, Option<rustls::ProtocolVersion>) {
    let mut tcp = TcpStream::connect(to).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = Vec::new();
    let Some(cfg) = tls else {
        tcp.write_all(raw.as_bytes()).expect("write");
        let _ = tcp.read_to_end(&mut out);
        return (String::from_utf8_lossy(&out).into_owned(), None, None);
    };
    let name = ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(cfg.clone(), name).expect("client");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(raw.as_bytes()).expect("write over TLS");
    let _ = s.read_to_end(&mut out);
    let leaf = s
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    let version = s.conn.protocol_version();
    (String::from_utf8_lossy(&out).into_owned(), leaf, version)
}

fn whip_request(room: &str, token: &str, ssrc: u32) -> String {
    let offer = format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:{FP}\r\n\
a=setup:actpass\r\na=rtcp-mux\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n\
a=ssrc:{ssrc} cname:x\r\n"
    );
    format!(
        "POST /whip/{room} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{offer}",
        offer.len()
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn tls_handshake_overhead_on_whip() {
    const N: usize = 200;
    let tls_dir = TempDir::new("https-bench-tls");
    let cert = make_cert(tls_dir.path(), "bench");
    let plain = Rig::start(
        "https-bench-plain",
        TempDir::new("https-bench-p"),
        None,
        false,
    );
    let secure = Rig::start("https-bench-tls", tls_dir, Some(&cert), false);
    let cfg = client_config(&[&cert.der]);
    let tokens: Vec<(String, String)> = (0..N)
        .map(|i| {
            (
                plain.mint(&format!("p{i}"), "host"),
                secure.mint(&format!("s{i}"), "host"),
            )
        })
        .collect();
    let (mut t_plain, mut t_tls) = (Vec::with_capacity(N), Vec::with_capacity(N));
    let (mut h_plain, mut h_tls) = (Vec::with_capacity(N * 5), Vec::with_capacity(N * 5));
    let health = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    for (i, (tp, ts)) in tokens.iter().enumerate() {
        // Alternate, so that both see the same machine load.
        let t = Instant::now();
        let (out, _, _) = request(
            plain.public,
            None,
            &whip_request(&format!("p{i}"), tp, 1000),
        );
        t_plain.push(t.elapsed());
        assert_eq!(split(&out).0, 201, "plain WHIP: {out}");
        let t = Instant::now();
        let (out, _, version) = request(
            secure.public,
            Some(&cfg),
            &whip_request(&format!("s{i}"), ts, 1000),
        );
        t_tls.push(t.elapsed());
        assert_eq!(split(&out).0, 201, "TLS WHIP: {out}");
        assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    }
    // /healthz: the handshake without the WHIP handler's journal write (fsync), whose spread
    // dominates the WHIP percentiles; more samples, since it is cheap.
    for _ in 0..N * 5 {
        let t = Instant::now();
        let (out, _, _) = request(plain.public, None, health);
        h_plain.push(t.elapsed());
        assert_eq!(split(&out).0, 200, "plain /healthz: {out}");
        let t = Instant::now();
        let (out, _, _) = request(secure.public, Some(&cfg), health);
        h_tls.push(t.elapsed());
        assert_eq!(split(&out).0, 200, "TLS /healthz: {out}");
    }
    for v in [&mut t_plain, &mut t_tls, &mut h_plain, &mut h_tls] {
        v.sort();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50p, p99p) = (percentile(&t_plain, 0.5), percentile(&t_plain, 0.99));
    let (p50t, p99t) = (percentile(&t_tls, 0.5), percentile(&t_tls, 0.99));
    eprintln!(
        "tls_handshake_overhead_on_whip: {N} WHIP POSTs each on a new connection; plain p50 \
         {:.2} ms p99 {:.2} ms; TLS 1.3 p50 {:.2} ms p99 {:.2} ms; added p50 {:.2} ms p99 \
         {:.2} ms (TLS/plain p99 ratio {:.2})",
        ms(p50p),
        ms(p99p),
        ms(p50t),
        ms(p99t),
        ms(p50t) - ms(p50p),
        ms(p99t) - ms(p99p),
        ms(p99t) / ms(p99p)
    );
    eprintln!(
        "tls_handshake_overhead_on_healthz ({} each): plain p50 {:.2} ms p99 {:.2} ms; TLS 1.3 p50 {:.2} \
         ms p99 {:.2} ms; added p50 {:.2} ms p99 {:.2} ms",
        h_plain.len(),
        ms(percentile(&h_plain, 0.5)),
        ms(percentile(&h_plain, 0.99)),
        ms(percentile(&h_tls, 0.5)),
        ms(percentile(&h_tls, 0.99)),
        ms(percentile(&h_tls, 0.5)) - ms(percentile(&h_plain, 0.5)),
        ms(percentile(&h_tls, 0.99)) - ms(percentile(&h_plain, 0.99)),
    );
    assert!(
        ms(p50t) - ms(p50p) < 50.0,
        "TLS adds {:.1} ms at the median",
        ms(p50t) - ms(p50p)
    );
}

#[test]
fn certificate_is_reloaded_when_its_files_change() {
    let tls_dir = TempDir::new("https-reload-tls");
    let first = make_cert(tls_dir.path(), "live");
    let rig = Rig::start("https-reload", tls_dir, Some(&first), false);
    let health = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let (out, leaf, version) = request(rig.public, Some(&client_config(&[&first.der])), health);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "HSTS: {out}"
    );
    assert_eq!(leaf.as_deref(), Some(first.der.as_ref()));
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    // Replace both files (a renewal); control notices within a few seconds.
    let scratch = TempDir::new("https-reload-new");
    let second = make_cert(scratch.path(), "next");
    std::fs::copy(&second.key, &first.key).expect("key");
    std::fs::copy(&second.cert, &first.cert).expect("cert");
    let deadline = Instant::now() + Duration::from_secs(15);
    // Trusts both: until the reload the old certificate is still served.
    let both = client_config(&[&first.der, &second.der]);
    loop {
        let (out, leaf, _) = request(rig.public, Some(&both), health);
        if leaf.as_deref() == Some(second.der.as_ref()) {
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served:\n{}",
            rig.control_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(rig.control_log().contains("TLS certificate reloaded"));
}

#[test]
fn chromium_publishes_and_watches_over_https() {
    if let Some(why) = unavailable() {
        sluice_tests::skip::skip(&why);
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
            "SLUICE_REQUIRE_PEERS is set but the browser cannot run: {why}"
        );
        return;
    }
    let dir = TempDir::new("https-chromium");
    let cert = make_cert(dir.path(), "browser");
    let rig = Rig::start("https-chromium", dir, Some(&cert), true);
    let room = "secure";
    let pub_token = rig.mint(room, "host");
    let view_token = rig.mint(room, "viewer");
    let mut cmd = Command::new("node");
    cmd.arg(script_dir().join("browser.mjs"))
        .args(["run", &rig.public_url, &pub_token, &view_token, room])
        .arg(FRAMES.to_string())
        .arg(BROWSER_TIMEOUT_SECS.to_string())
        .env(
            "SLUICE_CHROMIUM_ARGS",
            format!("--ignore-certificate-errors-spki-list={}", cert.spki),
        )
        .current_dir(script_dir());
    let mut browser = Proc::spawn_lines("chromium", cmd, rig.dir.path());
    let (result, status) = browser_result(
        &mut browser,
        Duration::from_secs(BROWSER_TIMEOUT_SECS * 2 + 30),
    );
    let context = || format!("\n{}\n{}", browser.log_text(), rig.control_log());
    let result = result.unwrap_or_else(|| panic!("no RESULT from the browser{}", context()));
    eprintln!("https_e2e: {result}");
    for side in ["publisher", "watcher"] {
        assert_eq!(
            result[side]["transport"]["dtlsState"],
            "connected",
            "{side}'s DTLS transport{}",
            context()
        );
    }
    let frames = result["frames"].as_u64().unwrap_or(0);
    assert!(
        frames >= u64::from(FRAMES),
        "the watcher's <video> presented only {frames} frames{}",
        context()
    );
    assert_eq!(
        result["whipProtocol"],
        "h2",
        "WHIP over HTTP/2{}",
        context()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "browser script: {status:?}{}",
        context()
    );
}

/// `sluicectl up` with the public listener on all addresses and no `[http.tls]`: it makes a
/// self-signed certificate in the state directory, prints its fingerprints, and control serves
/// HTTPS with it (this test connects to 127.0.0.1 only).
#[test]
fn up_on_a_public_address_serves_a_self_signed_certificate() {
    use rustls_pki_types::pem::PemObject;
    use sluice_tests::daemons::{Appliance, RuntimeDir, Up};
    let app = Appliance::new("https-up", "auto", RuntimeDir::InConfig);
    let port = free_tcp_port();
    let text = std::fs::read_to_string(&app.config).expect("config");
    let text = text.replace(
        "[control]\n",
        &format!(
            "[control]\npublic_listen = \"0.0.0.0:{port}\"\npublic_addresses = [\"127.0.0.1\"]\n"
        ),
    );
    std::fs::write(&app.config, text).expect("config");
    let up = Up::start(&app);
    let mut rows = up.endpoints.clone();
    while !rows.contains_key("tls_spki") {
        let l = up.proc_.wait_line("", Duration::from_secs(10));
        let mut w = l.split_whitespace();
        if let (Some(k), Some(v), None) = (w.next(), w.next(), w.next()) {
            rows.insert(k.to_string(), v.to_string());
        }
    }
    assert_eq!(
        rows["public_url"],
        format!("https://127.0.0.1:{port}"),
        "{rows:?}"
    );
    let cert_path = PathBuf::from(&rows["tls_cert"]);
    assert!(
        cert_path.starts_with(app.dir.path().join("state/tls")),
        "{rows:?}"
    );
    let der = CertificateDer::from_pem_file(&cert_path).expect("PEM certificate");
    let (out, leaf, version) = request(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Some(&client_config(&[&der])),
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    let leaf = leaf.expect("a certificate");
    let sha256: Vec<String> = ring::digest::digest(&ring::digest::SHA256, &leaf)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(rows["tls_sha256"], sha256.join(":"), "printed fingerprint");
    up.stop(rustix::process::Signal::TERM);
}
