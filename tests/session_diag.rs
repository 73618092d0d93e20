//! Per-session diagnostics end to end: control and a relay as processes, two static-key
//! sessions (a publisher and a viewer) with a route, and a publisher whose SRTP comes from
//! libsrtp (pylibsrtp, `contract/tests/peers/libsrtp_peer.py`). The publisher sends a paced
//! 48 kHz stream with four packets left out on purpose, two replays and three packets with a
//! broken authentication tag; the viewer's packets are checked with libsrtp too. Then
//! `sluicectl session show ID --json`, `session list`, `stats --streams` and the admin API
//! must report exactly those numbers: packets in/out, auth failures, replays, 4 lost of the
//! expected, a 48 kHz clock and a jitter.
//!
//! Without python3 or pylibsrtp the test prints `SKIP: <why>` and passes. `SLUICE_PYTHON`
//! names the interpreter (default `python3`).

use contract::srtp::Profile;
use serde_json::Value;
use sluice_tests::daemons::{http_get, Appliance, Setup};
use sluice_tests::skip::skip;
use sluice_tests::test_key;
use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PEER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../contract/tests/peers/libsrtp_peer.py"
);
const PROFILE: Profile = Profile::Aes128CmSha1_80;
const SSRC: u32 = 0x5EED_0001;
const FIRST_SEQ: u16 = 1000;
const PACKETS: u16 = 150;
/// Indexes (from `FIRST_SEQ`) never sent: the loss. Not among the first two, which validate
/// the source (RFC 3550 A.1).
const DROPPED: [u16; 4] = [40, 41, 90, 120];
const REPLAYED: usize = 2;
const FORGED: usize = 3;

fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex from the peer"))
        .collect()
}

/// A libsrtp session (protect or unprotect, per line) over a pipe.
struct Libsrtp {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Libsrtp {
    /// `Err(why)` when the peer cannot run here (the caller skips).
    fn start(key: &[u8]) -> Result<Libsrtp, String> {
        let mut child = Command::new(python())
            .arg(PEER)
            .arg(PROFILE.name())
            .arg(hex(key))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{} not runnable: {e}", python()))?;
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut p = Libsrtp { child, out };
        // One round trip proves pylibsrtp imports and the profile exists.
        if p.op("protect", &rtp(FIRST_SEQ.wrapping_sub(1))).is_none() {
            let mut why = String::new();
            if let Some(mut e) = p.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut why);
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
            return Err(format!("libsrtp peer unavailable: {}", why.trim()));
        }
        Ok(p)
    }

    /// One operation; `None` when the peer answered an error (or died).
    fn op(&mut self, op: &str, pkt: &[u8]) -> Option<Vec<u8>> {
        let stdin = self.child.stdin.as_mut()?;
        writeln!(stdin, "{op} {}", hex(pkt)).ok()?;
        stdin.flush().ok()?;
        let mut line = String::new();
        self.out.read_line(&mut line).ok()?;
        let line = line.trim();
        if line.is_empty() || line.starts_with("ERR") {
            return None;
        }
        Some(unhex(line))
    }
}

impl Drop for Libsrtp {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A plain RTP packet: PT 111, 48 kHz timestamps in 10 ms steps, 160 bytes of payload.
fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 111];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 480).to_be_bytes());
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(&[seq as u8; 160]);
    p
}

/// Poll `GET /v1/sessions/{id}/stats` until `done` holds (the workers publish every 100 ms).
fn wait_stats(url: &str, token: &str, id: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, body) = http_get(&format!("{url}/v1/sessions/{id}/stats"), Some(token));
        assert_eq!(st, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("stats JSON");
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn session_show_and_admin_api_report_exact_counts_and_loss() {
    let pub_key = test_key(PROFILE, 71);
    let sub_key = test_key(PROFILE, 72);
    let mut sender = match Libsrtp::start(pub_key.as_bytes()) {
        Ok(p) => p,
        Err(why) => return skip(why),
    };
    let mut viewer = match Libsrtp::start(sub_key.as_bytes()) {
        Ok(p) => p,
        Err(why) => return skip(why),
    };
    // Everything libsrtp protects up front, in order (dropped ones are lost "on the wire").
    let seqs: Vec<u16> = (0..PACKETS).map(|i| FIRST_SEQ + i).collect();
    let protected: Vec<Vec<u8>> = seqs
        .iter()
        .map(|&s| sender.op("protect", &rtp(s)).expect("libsrtp protects"))
        .collect();
    // Forged: fresh indexes (ahead of everything, so the replay check passes) with the last
    // tag byte flipped: authentication fails (RFC 3711 §3.3 step 7).
    let forged: Vec<Vec<u8>> = (0..FORGED as u16)
        .map(|i| {
            let mut p = sender
                .op("protect", &rtp(FIRST_SEQ + PACKETS + 50 + i))
                .expect("libsrtp protects");
            let l = p.len();
            p[l - 1] ^= 0x5A;
            p
        })
        .collect();

    let mut app = Appliance::setup("diag", "mmsg", &Setup::default());
    let info = app.start_control();
    app.start_relay();
    let pub_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sub_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sub_sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let unused = |seed| test_key(PROFILE, seed).to_base64();
    let a = app.add_session(
        &pub_sock.local_addr().unwrap().to_string(),
        PROFILE,
        &pub_key.to_base64(),
        &unused(9001),
        "speaker",
    );
    let b = app.add_session(
        &sub_sock.local_addr().unwrap().to_string(),
        PROFILE,
        &unused(9002),
        &sub_key.to_base64(),
        "viewer",
    );
    app.ctl_ok(&[
        "route",
        "add",
        "--from",
        &a.to_string(),
        "--to",
        &b.to_string(),
    ]);
    // The relay's index picks the sessions up at its next generation check.
    std::thread::sleep(Duration::from_millis(300));

    // Paced on an absolute schedule (10 ms per sequence number, gaps included), so the
    // timestamps advance at 48 kHz against arrival time however the sleeps overshoot.
    let receiver = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = sub_sock.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    });
    let start = Instant::now();
    let mut sent = 0u64;
    for (i, p) in protected.iter().enumerate() {
        let due = start + Duration::from_millis(10 * i as u64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        if DROPPED.contains(&(i as u16)) {
            continue;
        }
        pub_sock.send_to(p, app.media).unwrap();
        sent += 1;
        if i == 60 {
            for _ in 0..REPLAYED {
                pub_sock.send_to(&protected[10], app.media).unwrap();
            }
        }
        if i == 100 {
            for f in &forged {
                pub_sock.send_to(f, app.media).unwrap();
            }
        }
    }
    let got = receiver.join().unwrap();
    // The viewer decrypts every forwarded packet with libsrtp: exactly the ones sent.
    let mut plain_seqs = Vec::new();
    for d in &got {
        let p = viewer
            .op("unprotect", d)
            .expect("viewer's libsrtp decrypts");
        plain_seqs.push(u16::from_be_bytes([p[2], p[3]]));
    }
    let expect_seqs: Vec<u16> = (0..PACKETS)
        .filter(|i| !DROPPED.contains(i))
        .map(|i| FIRST_SEQ + i)
        .collect();
    assert_eq!(plain_seqs, expect_seqs, "forwarded once each, in order");

    let packets_in = sent + (REPLAYED + FORGED) as u64;
    let url = &info.admin_url;
    let token = &info.admin_token;
    let v = wait_stats(url, token, a, |v| {
        v["stats"]["packets_in"] == packets_in && v["streams"][0]["packets"] == sent
    });
    let st = &v["stats"];
    assert_eq!(st["packets_in"], packets_in, "{v:#}");
    assert_eq!(st["auth_failures"], FORGED, "{v:#}");
    assert_eq!(st["replays"], REPLAYED, "{v:#}");
    // What the relay sent the publisher: only its own NACKs for the 4 gaps (loss recovery,
    // at most `relay.nack_upstream_retries` = 3 tries each).
    let nacks_up = st["packets_out"].as_u64().unwrap();
    assert!(nacks_up <= 4 * 3, "{v:#}");
    assert_eq!(st["state"], "active", "{v:#}");
    assert!(st["last_in_age_ms"].as_u64().unwrap() < 5_000, "{v:#}");
    assert_eq!(v["profile"], PROFILE.name());
    assert_eq!(v["peer"], pub_sock.local_addr().unwrap().to_string());
    assert_eq!(v["streams"].as_array().unwrap().len(), 1, "{v:#}");
    let s = &v["streams"][0];
    assert_eq!(
        (s["ssrc"].as_u64(), &s["direction"]),
        (Some(u64::from(SSRC)), &Value::from("in"))
    );
    assert_eq!(s["packets"], sent);
    let r = &s["reception"];
    // Validated at its second packet (A.1): expected counts from FIRST_SEQ + 1.
    assert_eq!(
        r["extended_highest_seq"],
        u64::from(FIRST_SEQ + PACKETS - 1),
        "{v:#}"
    );
    assert_eq!(r["expected"], u64::from(PACKETS - 1), "{v:#}");
    assert_eq!(r["cumulative_lost"], DROPPED.len(), "{v:#}");
    let frac = r["loss_fraction"].as_f64().unwrap();
    let want = DROPPED.len() as f64 / f64::from(PACKETS - 1);
    assert!((frac - want).abs() < 1e-9, "{frac} vs {want}");
    assert_eq!(r["clock_rate"], 48_000, "{v:#}");
    let jitter = r["jitter_ms"]
        .as_f64()
        .expect("jitter known once the clock is");
    assert!((0.0..50.0).contains(&jitter), "{jitter} ms");

    // The viewer: what went out, per output SSRC.
    let w = wait_stats(url, token, b, |v| v["stats"]["packets_out"] == sent);
    assert_eq!(w["stats"]["packets_out"], sent, "{w:#}");
    assert_eq!(w["stats"]["packets_in"], 0);
    let out: u64 = got.iter().map(|d| d.len() as u64).sum();
    assert_eq!(w["stats"]["bytes_out"], out, "protected bytes as sent");
    assert_eq!(w["streams"][0]["direction"], "out");
    assert_eq!(w["streams"][0]["packets"], sent);
    assert!(w["streams"][0]["reception"].is_null());

    // sluicectl reads the same numbers.
    let j = app.ctl_json(&["session", "show", &a.to_string()]);
    assert_eq!(j["stats"]["packets_in"], packets_in);
    assert_eq!(j["stats"]["auth_failures"], FORGED);
    assert_eq!(j["stats"]["replays"], REPLAYED);
    assert_eq!(
        j["streams"][0]["reception"]["cumulative_lost"],
        DROPPED.len()
    );
    let human = app.ctl_ok(&["session", "show", &a.to_string()]);
    assert!(
        human.contains(&format!("auth_failures  {FORGED}\n")),
        "{human}"
    );
    assert!(
        human.contains(&format!("replays        {REPLAYED}\n")),
        "{human}"
    );
    assert!(
        human.contains(&format!("in             {packets_in} packets")),
        "{human}"
    );
    let list = app.ctl_ok(&["session", "list"]);
    assert!(list.starts_with("ID  APP/ROOM  PEER"), "{list}");
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.contains("active"), "{list}");
    let streams = app.ctl_json(&["stats", "--streams"]);
    let lost: Vec<i64> = streams
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["direction"] == "in")
        .map(|s| s["reception"]["cumulative_lost"].as_i64().unwrap())
        .collect();
    assert_eq!(lost, [DROPPED.len() as i64]);
    let (st, body) = http_get(&format!("{url}/v1/sessions"), Some(token));
    assert_eq!(st, 200);
    let all: Value = serde_json::from_str(&body).unwrap();
    let mine = all
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == a)
        .expect("publisher listed");
    assert_eq!(mine["stats"]["packets_in"], packets_in);
}
