//! The appliance end to end, with the real binaries: `sluice-control` and `sluice-relay` on a
//! temporary config, sessions and a route added with `sluicectl`, SRTP from one loopback peer
//! decrypted at another; control restarted (SIGTERM, then SIGKILL) while media flows without a
//! single packet lost; outbound and inbound rekeys with zero loss; the relay SIGKILLed and restarted,
//! forwarding again from the shared-memory file alone. And every `sluicectl` error path
//! against a real control.

use contract::srtp::Profile;
use rustix::process::Signal;
use sluice_tests::daemons::*;
use sluice_tests::test_key;
use std::time::{Duration, Instant};

/// 500 packets/s: steady, and light on a loaded two-core machine.
const PERIOD: Duration = Duration::from_millis(2);
const WAIT: Duration = Duration::from_secs(20);

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|s| s["id"].as_u64().expect("numeric id"))
        .collect()
}

/// Wait until control's `/metrics` shows the relay's slow-path connection (the relay
/// reconnects by itself after a control restart).
fn wait_slow_path(app: &Appliance, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let url = app.runtime_info().expect("control.json").metrics_url;
        let (code, body) = http_get(&url, None);
        assert_eq!(code, 200, "{body}");
        let m = parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        if m.value("sluice_control_slow_path_connections", &[]) >= Some(1.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the relay never reconnected its slow path to control"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until the receiver has everything sent so far, then assert that every counter in
/// `[from, sent)` arrived exactly once. Returns the last counter checked.
fn assert_no_gap(st: &SrtpStream, from: u64, what: &str) -> u64 {
    let to = st.sent() - 1;
    assert!(
        st.wait_counter(to, WAIT),
        "{what}: counter {to} never arrived"
    );
    let (arrivals, failures) = st.snapshot();
    let (missing, dups) = continuity(&arrivals, from, to);
    assert!(
        missing.is_empty(),
        "{what}: {} of {} packets lost (first missing: {:?})",
        missing.len(),
        to - from + 1,
        &missing[..missing.len().min(10)]
    );
    assert!(dups.is_empty(), "{what}: duplicates {dups:?}");
    assert_eq!(failures, 0, "{what}: packets failed to decrypt");
    to
}

#[test]
fn media_survives_control_restarts_rekey_and_relay_restart() {
    let mut app = Appliance::new("appliance", "mmsg", RuntimeDir::InConfig);
    app.start_control();
    app.start_relay();

    let profile = Profile::AeadAes128Gcm;
    let mut st = SrtpStream::new(profile, 4242, 16);
    let (a, b, r) = app.route_stream(&st, profile);
    assert_eq!(ids(&app.ctl_json(&["sessions"])), [a, b]);
    assert_eq!(ids(&app.ctl_json(&["routes"])), [r]);

    st.start(app.media, PERIOD);
    assert!(
        st.wait_counter(50, WAIT),
        "no media through the relay\n{}",
        app.relay.as_ref().map(Proc::log_text).unwrap_or_default()
    );
    let first = st.snapshot().0[0].counter;

    // The human tables, against the real API's documents.
    let table = app.ctl_ok(&["stats"]);
    let total: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("total"))
        .unwrap_or_else(|| panic!("no total row: {table}"))
        .split_whitespace()
        .collect();
    assert!(
        total[1..5]
            .iter()
            .all(|c| c.parse::<u64>().is_ok_and(|n| n > 0)),
        "RX/TX columns of `sluicectl stats`: {table}"
    );
    let table = app.ctl_ok(&["sessions"]);
    for (id, role) in [(a, "speaker"), (b, "viewer")] {
        assert!(
            table
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{id} "))
                    && l.contains(profile.name())
                    && l.contains(role)),
            "{table}"
        );
    }
    let table = app.ctl_ok(&["routes"]);
    assert!(
        table.lines().nth(1).is_some_and(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            c[..4] == [r.to_string(), a.to_string(), "-".into(), b.to_string()]
        }),
        "{table}"
    );

    // 1. Control restarts, clean and hard, while the sender keeps sending.
    for (how, sig) in [("SIGTERM", Signal::TERM), ("SIGKILL", Signal::KILL)] {
        let rx_before = app.ctl_json(&["stats"])["totals"]["packets_in"]
            .as_u64()
            .expect("stats totals");
        let t0 = Instant::now();
        let mut c = app.control.take().expect("control running");
        if sig == Signal::TERM {
            c.terminate();
        } else {
            c.kill9();
        }
        // While control is down, media keeps flowing.
        let down = st.sent();
        assert!(
            st.wait_counter(down + 50, WAIT),
            "media stopped while control was down ({how})"
        );
        app.start_control();
        assert_eq!(
            ids(&app.ctl_json(&["sessions"])),
            [a, b],
            "sessions after {how}"
        );
        assert_eq!(ids(&app.ctl_json(&["routes"])), [r], "routes after {how}");
        wait_slow_path(&app, how);
        // The relay's counters live in shm: a new control reads on from where they were.
        let rx_after = app.ctl_json(&["stats"])["totals"]["packets_in"]
            .as_u64()
            .expect("stats totals");
        assert!(
            rx_after > rx_before,
            "{how}: packets_in went from {rx_before} to {rx_after}"
        );
        let up = st.sent();
        assert!(st.wait_counter(up + 50, WAIT), "media after {how}");
        let (arrivals, _) = st.snapshot();
        eprintln!(
            "e2e: control restart ({how}): longest gap between packets at the receiver {:?} \
             (sender period {PERIOD:?})",
            max_gap(&arrivals, t0, Instant::now())
        );
    }
    let upto = assert_no_gap(&st, first, "control restarts");
    eprintln!(
        "e2e: control restarts: {} of {} packets delivered in order, none lost",
        upto - first + 1,
        upto - first + 1
    );

    // 2. Outbound rekey of the subscriber while media flows: the receiver learns the new key
    //    first (as a signalling peer would), then the relay switches; nothing is lost.
    let new_key = test_key(profile, 7777);
    st.receiver_install_key(new_key);
    let epoch0 = app.ctl_json(&["sessions"])[1]["key_epoch"]
        .as_u64()
        .expect("key_epoch");
    let out = app.ctl_ok(&["rekey", &b.to_string(), "--tx-key", &new_key.to_base64()]);
    assert!(out.contains(&format!("session {b} rekeyed")), "{out}");
    assert_eq!(
        app.ctl_json(&["sessions"])[1]["key_epoch"].as_u64(),
        Some(epoch0 + 1)
    );
    // The receiver drops its old key after 16 packets authenticated under the new one: proof
    // that the relay now encrypts with it.
    let deadline = Instant::now() + WAIT;
    while st.receiver_in_grace() {
        assert!(
            Instant::now() < deadline,
            "the relay never switched to the new key"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_no_gap(&st, first, "tx rekey");

    // 2b. Inbound rekey of the publisher: the relay learns the new key first and keeps
    //     accepting the old one for in-flight packets; then the sender switches.
    let pub_new = test_key(profile, 8888);
    let out = app.ctl_ok(&["rekey", &a.to_string(), "--rx-key", &pub_new.to_base64()]);
    assert!(out.contains(&format!("session {a} rekeyed")), "{out}");
    let switched = st.sender_install_key(pub_new);
    assert!(
        st.wait_counter(switched + 100, WAIT),
        "nothing forwarded after the publisher switched keys\n{}",
        app.relay.as_ref().map(Proc::log_text).unwrap_or_default()
    );
    let upto = assert_no_gap(&st, first, "rx rekey");
    let drops = app.ctl_json(&["stats"])["totals"]["drops_total"].clone();
    assert_eq!(drops, 0, "the relay dropped packets around the rekeys");

    // 3. The relay killed hard and restarted: it maps the file and forwards at once.
    let mut relay = app.relay.take().expect("relay running");
    relay.kill9();
    drop(relay);
    std::thread::sleep(Duration::from_millis(100));
    let spawned = app.start_relay();
    let at_spawn = st.sent();
    assert!(
        st.wait_counter(at_spawn + 100, WAIT),
        "forwarding did not resume after the relay restart\n{}",
        app.relay.as_ref().map(Proc::log_text).unwrap_or_default()
    );
    let (arrivals, _) = st.snapshot();
    let resumed = arrivals
        .iter()
        .find(|a| a.at > spawned && a.counter > upto)
        .expect("a packet after the restart");
    eprintln!(
        "e2e: relay restart (SIGKILL): first forwarded packet {:?} after spawning the new relay",
        resumed.at - spawned
    );
    // The restarted relay reports itself through shm.
    let deadline = Instant::now() + WAIT;
    let new_pid = app.relay.as_ref().expect("relay").pid();
    loop {
        let s = app.status_json();
        if s["relay"]["pid"].as_u64() == Some(u64::from(new_pid)) && s["relay"]["up"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed the new relay: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let upto = assert_no_gap(&st, resumed.counter, "after the relay restart");

    // 4. Both down: control killed, then the relay killed and restarted while control is
    //    still down. The relay needs only the shm file; control comes back to it later.
    app.control.take().expect("control").kill9();
    app.relay.take().expect("relay").kill9();
    let spawned = app.start_relay();
    let at_spawn = st.sent();
    assert!(
        st.wait_counter(at_spawn + 50, WAIT),
        "a relay restarted without control did not forward\n{}",
        app.relay.as_ref().map(Proc::log_text).unwrap_or_default()
    );
    let (arrivals, _) = st.snapshot();
    let resumed = arrivals
        .iter()
        .find(|a| a.at > spawned && a.counter > upto)
        .expect("a packet after the restart");
    eprintln!(
        "e2e: relay restart with control down: first forwarded packet {:?} after spawn",
        resumed.at - spawned
    );
    app.start_control();
    assert_eq!(ids(&app.ctl_json(&["sessions"])), [a, b]);
    wait_slow_path(&app, "control after relay");
    assert_no_gap(&st, resumed.counter, "relay and control restarted");
    st.stop();

    app.relay.as_mut().expect("relay").terminate();
    app.control.as_mut().expect("control").terminate();

    // The audit log kept every admin action across the restarts, one JSON line each, with
    // neither keys nor clear peer addresses.
    let audit = std::fs::read_to_string(app.dir.path().join("audit/audit.log")).expect("audit log");
    let actions: Vec<String> = audit
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}"));
            assert_eq!(v["actor"], "admin", "{l}");
            assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
            v["action"].as_str().expect("action").to_string()
        })
        .collect();
    assert_eq!(
        actions,
        [
            "session.create",
            "session.create",
            "route.create",
            "session.rekey",
            "session.rekey",
        ],
        "{audit}"
    );
    for secret in [
        st.pub_key.to_base64(),
        st.sub_key.to_base64(),
        new_key.to_base64(),
        pub_new.to_base64(),
        st.sender_addr.to_string(),
        st.receiver_addr.to_string(),
    ] {
        assert!(
            !audit.contains(&secret),
            "audit log holds {secret}: {audit}"
        );
    }
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `sluicectl ARGS` must fail with `code` and say `needle`, printing nothing on stdout.
fn expect_fail(app: &Appliance, args: &[&str], code: i32, needle: &str) {
    let o = app.ctl(args);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
    assert!(
        stderr(&o).contains(needle),
        "{args:?}: expected {needle:?} in {}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty(), "{args:?} printed on stdout");
}

#[test]
fn cli_error_paths_against_real_control() {
    let mut app = Appliance::new("cli-errors", "mmsg", RuntimeDir::InConfig);
    app.start_control();
    let gcm = test_key(Profile::AeadAes128Gcm, 1).to_base64();
    let cm = test_key(Profile::Aes128CmSha1_80, 2).to_base64();
    let add = |profile: &str, rx: &str, tx: &str| -> Vec<String> {
        [
            "session",
            "add",
            "--peer",
            "127.0.0.1:5000",
            "--profile",
            profile,
            "--rx-key",
            rx,
            "--tx-key",
            tx,
        ]
        .map(str::to_string)
        .to_vec()
    };
    let run = |app: &Appliance, args: Vec<String>, code: i32, needle: &str| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        expect_fail(app, &refs, code, needle);
    };

    // Refused locally, exit 2, and nothing reached control.
    run(
        &app,
        add("AEAD_AES_128_GCM", "not*base64", &gcm),
        2,
        "--rx-key: key is not valid base64",
    );
    run(
        &app,
        add("AEAD_AES_256_GCM", &gcm, &gcm),
        2,
        "key has 28 bytes but AEAD_AES_256_GCM needs 44",
    );
    run(
        &app,
        add("AES_CM_128_HMAC_SHA1_80", &gcm, &cm),
        2,
        "needs 30",
    );
    run(
        &app,
        add("NULL_HMAC_SHA1_80", &cm, &cm),
        2,
        "unknown SRTP profile \"NULL_HMAC_SHA1_80\"",
    );
    run(
        &app,
        ["rekey", "1", "--tx-key", "@@"]
            .map(str::to_string)
            .to_vec(),
        2,
        "--tx-key: key is not valid base64",
    );
    assert_eq!(ids(&app.ctl_json(&["sessions"])), Vec::<u64>::new());

    // Unknown ids: control answers 404, exit 4, with control's message.
    run(
        &app,
        ["session", "del", "424242"].map(str::to_string).to_vec(),
        4,
        "404",
    );
    run(
        &app,
        ["rekey", "424242", "--tx-key", &gcm]
            .map(str::to_string)
            .to_vec(),
        4,
        "session 424242 not found",
    );
    run(
        &app,
        ["route", "del", "424242"].map(str::to_string).to_vec(),
        4,
        "404",
    );
    let id: u64 = app
        .ctl_ok(
            &add("AEAD_AES_128_GCM", &gcm, &gcm)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .trim()
        .parse()
        .expect("id");
    let o = app.ctl(&["route", "add", "--from", &id.to_string(), "--to", "424242"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("424242"), "{}", stderr(&o));
    // A key of the wrong length for the session's profile, caught by control itself.
    run(
        &app,
        ["rekey", &id.to_string(), "--tx-key", &cm]
            .map(str::to_string)
            .to_vec(),
        4,
        "400",
    );
    app.ctl_ok(&["session", "del", &id.to_string()]);
    run(
        &app,
        ["session", "del", &id.to_string()]
            .map(str::to_string)
            .to_vec(),
        4,
        "404",
    );
    // A wrong token is refused by control (401, exit 4).
    let o = app.ctl(&["--token", "wrong", "sessions"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("401"), "{}", stderr(&o));

    // Draining: existing state stays, new sessions are refused with control's reason.
    let out = app.ctl_ok(&["drain"]);
    assert!(out.contains("draining"), "{out}");
    assert_eq!(app.status_json()["draining"], true);
    run(
        &app,
        add("AEAD_AES_128_GCM", &gcm, &gcm),
        4,
        "409 on POST /v1/sessions: control is draining",
    );

    // Control stopped cleanly: no runtime file, "not running", exit 3.
    app.control.as_mut().expect("control").terminate();
    run(
        &app,
        ["status"].map(str::to_string).to_vec(),
        3,
        "control is not running",
    );
    // Control killed: a stale runtime file pointing at nothing, exit 3.
    app.start_control();
    app.control.as_mut().expect("control").kill9();
    run(
        &app,
        ["sessions"].map(str::to_string).to_vec(),
        3,
        "control is not reachable",
    );
}

#[test]
fn ipv6_peers_and_unix_socket_admin() {
    let ip6: std::net::IpAddr = "::1".parse().expect("IPv6 loopback");
    let mut app = Appliance::with("ipv6-unix", "mmsg", RuntimeDir::InConfig, ip6, true);
    let info = app.start_control();
    assert!(info.admin_url.starts_with("unix:/"), "{}", info.admin_url);
    app.start_relay();
    let s = app.status_json();
    assert_eq!(
        s["media_addr"].as_str(),
        Some(app.media.to_string().as_str())
    );

    let profile = Profile::Aes256CmSha1_32;
    let mut st = SrtpStream::on(ip6, profile, 606, 16);
    let sender = st.sender_addr.to_string();
    assert!(sender.starts_with("[::1]:"), "{sender}");
    let (a, b, _) = app.route_stream(&st, profile);
    let sessions = app.ctl_json(&["sessions"]);
    assert_eq!(sessions[0]["peer"].as_str(), Some(sender.as_str()));
    st.start(app.media, PERIOD);
    assert!(
        st.wait_counter(100, WAIT),
        "no IPv6 media through the relay"
    );
    let first = st.snapshot().0[0].counter;
    assert_no_gap(&st, first, "IPv6");
    st.stop();

    // The bench, over the unix admin socket and IPv6 media, found by itself.
    let report = app.dir.path().join("bench.json");
    let mut c = app.command("sluice-bench");
    c.args(["run", "--publishers", "1", "--fanout", "2", "--rate", "200"])
        .args([
            "--duration",
            "1",
            "--bind",
            "::1",
            "--profile",
            "AEAD_AES_256_GCM",
        ])
        .args(["--quiet", "--drain-ms", "5000", "--json"])
        .arg(&report);
    let mut bench = Proc::spawn(
        "sluice-bench",
        c,
        app.dir.path(),
        std::process::Stdio::null(),
    );
    let code = bench.wait(Duration::from_secs(60));
    assert!(
        code.is_some_and(|c| c.success()),
        "sluice-bench: {code:?}\n{}",
        bench.log_text()
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    let r = &v["result"];
    assert!(r["expected"].as_u64().is_some_and(|n| n >= 200), "{r}");
    assert_eq!(r["delivered"]["packets"], r["expected"], "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    // Only the test's own sessions are left.
    assert_eq!(ids(&app.ctl_json(&["sessions"])), [a, b]);
}

/// `GET url` until its status is `want` (or `timeout`); the last answer.
fn wait_status(url: &str, want: u16, timeout: Duration) -> (u16, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let (code, body) = http_get(url, None);
        if code == want || Instant::now() >= deadline {
            return (code, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `/healthz` is liveness (200 while control answers, whatever the relay does); `/readyz` is
/// 200 only with shm open, every relay worker turning its loop and no drain, else 503 with the
/// reasons; `sluicectl undrain` ends a drain; `status` exits 5 once the relay is gone.
#[test]
fn health_readiness_drain_and_undrain() {
    let mut app = Appliance::new("health", "mmsg", RuntimeDir::InConfig);
    let info = app.start_control();
    let healthz = format!("{}/healthz", info.admin_url);
    let readyz = format!("{}/readyz", info.admin_url);
    assert_eq!(http_get(&healthz, None).0, 200);
    let (code, body) = http_get(&readyz, None);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no relay has attached"), "{body}");

    app.start_relay();
    let (code, body) = wait_status(&readyz, 200, WAIT);
    assert_eq!(code, 200, "{body}");
    let s = app.status_json();
    assert_eq!(s["relay"]["workers_up"], s["relay"]["workers"], "{s}");

    let out = app.ctl_ok(&["drain"]);
    assert!(out.contains("draining"), "{out}");
    let (code, body) = http_get(&readyz, None);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    let out = app.ctl_ok(&["undrain"]);
    assert!(out.contains("accepting new sessions"), "{out}");
    assert_eq!(http_get(&readyz, None).0, 200);
    assert_eq!(app.status_json()["draining"], false);
    let profile = Profile::AeadAes128Gcm;
    let key = test_key(profile, 1).to_base64();
    app.add_session("127.0.0.1:40999", profile, &key, &key, "viewer");

    // The relay gone: not ready within the heartbeat limit, still alive, status exits 5.
    app.relay.take().expect("relay").kill9();
    let (code, body) = wait_status(&readyz, 503, WAIT);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("relay down"), "{body}");
    assert_eq!(http_get(&healthz, None).0, 200);
    assert_eq!(app.ctl(&["status"]).status.code(), Some(5));
}

/// Both daemons with `log.format = "json"`: every line either writes is one JSON object, and
/// SIGHUP kills neither (control reloads; the relay says how relay keys are applied).
#[test]
fn json_logs_and_sighup_on_both_daemons() {
    let mut app = Appliance::new("jsonlog", "mmsg", RuntimeDir::InConfig);
    let mut text = std::fs::read_to_string(&app.config).expect("config");
    text.push_str("\n[log]\nformat = \"json\"\n");
    std::fs::write(&app.config, text).expect("write config");
    app.start_control();
    app.start_relay();
    let pids = [
        app.control.as_ref().expect("control").pid(),
        app.relay.as_ref().expect("relay").pid(),
    ];
    for pid in pids {
        signal_pid(pid, Signal::HUP);
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let (c, r) = (
            app.control.as_ref().expect("control").log(),
            app.relay.as_ref().expect("relay").log(),
        );
        if c.contains("SIGHUP: configuration reloaded") && r.contains("SIGHUP: the relay reads") {
            break;
        }
        assert!(Instant::now() < deadline, "no SIGHUP lines:\n{c}\n{r}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        app.control.as_mut().expect("control").poll().is_none(),
        "control died on SIGHUP"
    );
    assert!(
        app.relay.as_mut().expect("relay").poll().is_none(),
        "relay died on SIGHUP"
    );
    assert_eq!(app.status_json()["relay"]["up"], true);
    for (name, log) in [
        ("control", app.control.as_ref().expect("control").log()),
        ("relay", app.relay.as_ref().expect("relay").log()),
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{')).collect();
        assert!(lines.len() >= 2, "{name}: {log}");
        for l in lines {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {l}"));
            assert!(
                v["level"].is_string() && v["message"].is_string(),
                "{name}: {l}"
            );
        }
    }
}
