//! `sluicectl up` end to end with the real daemons: endpoints printed, `sluicectl status`
//! from another process finding the instance by itself, `/metrics` parsed strictly as
//! Prometheus text, a short `sluice-bench run` against it (zero loss, well-formed report, its
//! sessions removed afterwards), SIGTERM/SIGINT stopping everything with no orphan, `up`
//! restarting a daemon that dies and adopting an upgraded relay, and cleaning up after a
//! daemon that cannot start.

use contract::srtp::Profile;
use rustix::process::Signal;
use sluice_tests::daemons::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn up_status_metrics_and_sigterm() {
    let app = Appliance::new("up", "auto", RuntimeDir::FromXdg);
    let up = Up::start(&app);
    let e = &up.endpoints;
    for k in ["admin_url", "media_addr", "public_url", "metrics_url"] {
        assert!(e.contains_key(k), "`up` did not print {k}: {}", up.stdout);
    }
    assert_eq!(e["media_addr"], app.media.to_string(), "{}", up.stdout);
    assert!(
        e["admin_url"].starts_with("http://127.0.0.1:"),
        "{}",
        up.stdout
    );
    assert_eq!(e["metrics_url"], format!("{}/metrics", e["admin_url"]));

    // Another process, told nothing but XDG_RUNTIME_DIR, finds the instance.
    let s = app.ctl_json(&["status"]);
    for k in ["media_addr", "admin_url", "public_url", "metrics_url"] {
        assert_eq!(s[k].as_str(), Some(e[k].as_str()), "status {k}: {s}");
    }
    let backend = s["backend"].as_str().expect("backend");
    assert!(["io_uring", "mmsg"].contains(&backend), "{s}");
    assert_eq!(s["workers"].as_u64(), Some(1), "{s}");
    assert_eq!(s["relay"]["up"], true, "{s}");
    assert_eq!(
        s["relay"]["pid"].as_u64(),
        Some(u64::from(up.relay_pid)),
        "{s}"
    );
    let human = app.ctl_ok(&["status"]);
    assert!(
        human.contains(&format!("media_addr   {}", app.media)),
        "{human}"
    );

    // Prometheus text, parsed strictly.
    let (code, body) = http_get(&e["metrics_url"], None);
    assert_eq!(code, 200, "{body}");
    let m = parse_prometheus(&body).unwrap_or_else(|err| panic!("{err}\n{body}"));
    for (fam, ty) in [
        ("sluice_relay_up", "gauge"),
        ("sluice_sessions", "gauge"),
        ("sluice_rx_packets_total", "counter"),
        ("sluice_drops_total", "counter"),
    ] {
        assert_eq!(m.types.get(fam).map(String::as_str), Some(ty), "{fam}");
        assert!(m.help.contains_key(fam), "{fam} has no HELP");
    }
    assert_eq!(m.value("sluice_relay_up", &[]), Some(1.0));
    assert_eq!(m.value("sluice_sessions", &[]), Some(0.0));
    assert!(
        m.value("sluice_rx_packets_total", &[("worker", "0")])
            .is_some(),
        "no per-worker sample"
    );
    eprintln!(
        "e2e: /metrics: {} families, {} samples",
        m.types.len(),
        m.samples.len()
    );

    // A second `up` on the same runtime directory refuses to start.
    let o = app.ctl(&["up", "--config", app.config.to_str().expect("UTF-8 path")]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("control is already running"), "{err}");

    up.stop(Signal::TERM);
    assert!(
        app.runtime_info().is_none(),
        "control.json left behind after a clean stop"
    );
    // With nothing running, discovery says so.
    let o = app.ctl(&["status"]);
    assert_eq!(o.status.code(), Some(3));
}

#[test]
fn bench_smoke_against_up_then_sigint() {
    let app = Appliance::new("bench", "auto", RuntimeDir::FromXdg);
    let up = Up::start(&app);
    let report = app.dir.path().join("report.json");
    let mut c = app.command("sluice-bench");
    c.args(["run", "--publishers", "2", "--fanout", "2", "--rate", "500"])
        .args([
            "--duration",
            "3",
            "--profile",
            "AEAD_AES_128_GCM",
            "--quiet",
        ])
        // Wait out a scheduler stall of the loaded test machine at the end of the send
        // window instead of counting in-flight packets as lost (it ends early once all arrived).
        .args(["--drain-ms", "5000", "--json"])
        .arg(&report);
    let mut bench = Proc::spawn("sluice-bench", c, app.dir.path(), Stdio::piped());
    let st = bench.wait(Duration::from_secs(60));
    let mut out = String::new();
    if let Some(mut so) = bench.child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut so, &mut out);
    }
    assert!(
        st.is_some_and(|s| s.success()),
        "sluice-bench: {st:?}\n{out}\n{}",
        bench.log_text()
    );
    eprintln!("e2e: sluice-bench summary:\n{out}");

    let text = std::fs::read_to_string(&report).expect("JSON report written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("report is JSON");
    let r = &v["result"];
    let num = |p: &serde_json::Value, what: &str| -> f64 {
        p.as_f64()
            .unwrap_or_else(|| panic!("report has no numeric {what}: {text}"))
    };
    let offered = num(&r["offered"]["packets"], "offered.packets") as u64;
    let delivered = num(&r["delivered"]["packets"], "delivered.packets") as u64;
    let expected = num(&r["expected"], "expected") as u64;
    // 2 publishers at 500 pps in total for 3 s; a loaded machine may send a little less.
    assert!(offered >= 1000, "offered {offered}");
    assert_eq!(expected, offered * 2, "fan-out 2");
    assert_eq!(delivered, expected, "every packet delivered");
    assert_eq!(num(&r["lost"], "lost"), 0.0);
    assert_eq!(num(&r["loss_ratio"], "loss_ratio"), 0.0);
    for k in ["duplicates", "auth_failures", "misrouted", "malformed"] {
        assert_eq!(num(&r[k], k), 0.0, "{k}");
    }
    let l = &r["latency"];
    assert_eq!(num(&l["count"], "latency.count") as u64, delivered);
    let ps: Vec<f64> = ["min_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"]
        .iter()
        .map(|k| num(&l[k], k))
        .collect();
    assert!(ps[0] > 0.0, "latency min {ps:?}");
    assert!(
        ps.windows(2).all(|w| w[0] <= w[1]),
        "percentiles not ordered: {ps:?}"
    );
    assert_eq!(v["config"]["publishers"], 2);
    assert_eq!(v["config"]["fanout"], 2);
    assert_eq!(v["target"]["kind"], "sluice");
    assert_eq!(
        v["target"]["media_addr"].as_str(),
        Some(app.media.to_string().as_str())
    );

    // The bench removed what it created.
    let s = app.ctl_json(&["sessions"]);
    assert_eq!(s.as_array().map(Vec::len), Some(0), "{s}");
    let rt = app.ctl_json(&["routes"]);
    assert_eq!(rt.as_array().map(Vec::len), Some(0), "{rt}");

    up.stop(Signal::INT);
}

/// Poll `f` every 20 ms until it gives a value; panic with `what` after `timeout`.
fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every counter in `[from, to]` arrived exactly once? Returns the missing ones.
fn missing_between(st: &SrtpStream, from: u64, to: u64, what: &str) -> Vec<u64> {
    assert!(
        st.wait_counter(to, Duration::from_secs(20)),
        "{what}: counter {to} never arrived"
    );
    let (arrivals, failures) = st.snapshot();
    let (missing, dups) = continuity(&arrivals, from, to);
    assert!(dups.is_empty(), "{what}: duplicates {dups:?}");
    assert_eq!(failures, 0, "{what}: packets failed to decrypt");
    missing
}

/// The relay pid shm reports, once it is not `old` and the relay is up.
fn new_relay_pid(app: &Appliance, old: u32) -> u32 {
    wait_for(Duration::from_secs(20), "a new relay in status", || {
        let s = app.status_json();
        let pid = s["relay"]["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())?;
        (pid != old && s["relay"]["up"] == true).then_some(pid)
    })
}

/// `up` is a supervisor: control SIGKILLed under it is back within 2 s while the relay keeps
/// forwarding a 500 packets/s stream (≥ 99.9 % of it after the kill arrives); a SIGKILLed relay
/// is restarted and forwards again; a relay replaced by `sluicectl upgrade` is adopted, with no
/// packet lost; `status` counts all of it; SIGTERM then stops whatever runs, no orphan left.
#[test]
fn up_restarts_daemons_and_adopts_an_upgraded_relay() {
    let app = Appliance::new("up-supervise", "mmsg", RuntimeDir::FromXdg);
    let mut up = Up::start(&app);
    let profile = Profile::AeadAes128Gcm;
    let mut st = SrtpStream::new(profile, 4711, 16);
    app.route_stream(&st, profile);
    st.start(app.media, Duration::from_millis(2));
    assert!(st.wait_counter(50, Duration::from_secs(20)), "no media");

    // 1. Control killed: restarted, media unaffected.
    let from = st.sent();
    let t0 = Instant::now();
    signal_pid(up.control_pid, Signal::KILL);
    let old_control = up.control_pid;
    up.control_pid = wait_for(Duration::from_secs(20), "control back", || {
        let info = app.runtime_info()?;
        let o = app.ctl(&["--json", "status"]);
        (info.pid != old_control && matches!(o.status.code(), Some(0 | 5))).then_some(info.pid)
    });
    let back = t0.elapsed();
    eprintln!("e2e: up: control SIGKILLed, answering again after {back:?}");
    assert!(
        back < Duration::from_secs(2),
        "control back only after {back:?}"
    );
    assert_eq!(
        app.ctl_json(&["sessions"]).as_array().map(Vec::len),
        Some(2),
        "sessions after the restart"
    );
    let (code, body) = http_get(&app.runtime_info().expect("control.json").metrics_url, None);
    assert_eq!(code, 200, "{body}");
    let to = from + 1000; // two more seconds of media
    let missing = missing_between(&st, from, to, "control restart");
    assert!(
        missing.len() * 1000 <= (to - from + 1) as usize,
        "{} of {} packets lost after control was killed: {:?}",
        missing.len(),
        to - from + 1,
        &missing[..missing.len().min(10)]
    );
    let s = app.status_json();
    assert_eq!(s["supervisor"]["control_restarts"], 1, "{s}");
    assert_eq!(s["supervisor"]["relay_restarts"], 0, "{s}");

    // 2. Relay killed: restarted, and it forwards again (it resumes from shm).
    signal_pid(up.relay_pid, Signal::KILL);
    up.relay_pid = new_relay_pid(&app, up.relay_pid);
    let now = st.sent();
    assert!(
        st.wait_counter(now + 100, Duration::from_secs(20)),
        "nothing forwarded after the relay restart"
    );
    assert_eq!(app.status_json()["supervisor"]["relay_restarts"], 1);

    // 3. `sluicectl upgrade` replaces the relay: `up` adopts the new one; nothing is lost.
    let from = st.sent();
    let cfg = app.config.to_str().expect("UTF-8 path");
    let o = app.ctl(&["upgrade", "--config", cfg]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "upgrade: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    up.relay_pid = new_relay_pid(&app, up.relay_pid);
    up.proc_.also_kill.push(up.relay_pid);
    let adopted = wait_for(Duration::from_secs(20), "up adopts the new relay", || {
        let s = app.status_json();
        (s["supervisor"]["relay_upgrades"] == 1).then_some(s)
    });
    assert_eq!(
        adopted["supervisor"]["relay_pid"], up.relay_pid,
        "{adopted}"
    );
    assert_eq!(adopted["supervisor"]["relay_restarts"], 1, "{adopted}");
    let missing = missing_between(&st, from, st.sent() + 500, "upgrade under up");
    assert!(missing.is_empty(), "lost across the upgrade: {missing:?}");
    assert!(up.proc_.log().contains("adopted it"), "{}", up.proc_.log());
    st.stop();

    // 4. SIGTERM stops control and the adopted relay; nothing is left running.
    up.stop(Signal::TERM);
}

#[test]
fn up_reports_a_relay_that_cannot_bind_and_stops_control() {
    // Someone else holds the media port (no SO_REUSEPORT, so the relay cannot join it). The
    // squatter binds first and the appliance is configured onto its port: choosing a free port
    // and binding it afterwards raced with every other test on the machine.
    let squatter = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind the squatter");
    let setup = Setup {
        runtime_dir: RuntimeDir::FromXdg,
        media_port: squatter.local_addr().expect("squatter address").port(),
        ..Setup::default()
    };
    let app = Appliance::setup("up-busy", "mmsg", &setup);
    let mut c = app.command("sluicectl");
    c.arg("up").arg("--config").arg(&app.config);
    let mut p = Proc::spawn("sluicectl-up", c, app.dir.path(), Stdio::null());
    let st = p.wait(START_TIMEOUT);
    let log = p.log();
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{log}");
    assert!(
        log.contains("sluice-relay exited before it was ready"),
        "{log}"
    );
    assert!(
        log.contains(&app.media.to_string()),
        "names the address: {log}"
    );
    // Control was started first; `up` must not leave it (or anything else) behind.
    let left = processes_mentioning(&app.config, Duration::from_secs(5));
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(
        app.runtime_info().is_none(),
        "control.json left behind: {log}"
    );
    let o = app.ctl(&["status"]);
    assert_eq!(o.status.code(), Some(3), "nothing answers any more");
}

/// One worker, one publisher, 1,000 static subscribers: every packet fans out to more
/// datagrams than the worker's transmit queue holds (8 × `relay.batch`, 512 by default). The
/// worker sends the queue and the engine goes on where it stopped, so every subscriber gets
/// every packet, on both backends (docs/ENGINE.md "Large fan-outs").
fn thousand_subscribers_on_one_worker(backend: &str) {
    let setup = Setup {
        runtime_dir: RuntimeDir::FromXdg,
        sessions: 1100,
        routes: 1100,
        ..Setup::default()
    };
    let app = Appliance::setup(&format!("fanout-{backend}"), backend, &setup);
    let up = Up::start(&app);
    let report = app.dir.path().join("report.json");
    let mut c = app.command("sluice-bench");
    c.args([
        "run",
        "--publishers",
        "1",
        "--fanout",
        "1000",
        "--rate",
        "5",
    ])
    .args(["--duration", "3", "--quiet", "--drain-ms", "5000", "--json"])
    .arg(&report);
    let mut bench = Proc::spawn("sluice-bench", c, app.dir.path(), Stdio::piped());
    let st = bench.wait(Duration::from_secs(180));
    assert!(
        st.is_some_and(|s| s.success()),
        "sluice-bench: {st:?}\n{}",
        bench.log_text()
    );
    let text = std::fs::read_to_string(&report).expect("JSON report written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("report is JSON");
    let r = &v["result"];
    let offered = r["offered"]["packets"].as_u64().expect("offered");
    let delivered = r["delivered"]["packets"].as_u64().expect("delivered");
    assert!(offered >= 10, "offered {offered}");
    assert_eq!(r["expected"].as_u64(), Some(offered * 1000), "fan-out 1000");
    assert_eq!(
        delivered,
        offered * 1000,
        "every subscriber, every packet: {r}"
    );

    let (code, body) = http_get(&up.endpoints["metrics_url"], None);
    assert_eq!(code, 200, "{body}");
    let m = parse_prometheus(&body).unwrap_or_else(|err| panic!("{err}\n{body}"));
    let full = m
        .value(
            "sluice_drops_total",
            &[("worker", "0"), ("reason", "tx_queue_full")],
        )
        .unwrap_or(0.0);
    assert_eq!(full, 0.0, "tx_queue_full drops");
    eprintln!("e2e: {backend}: {delivered} of {offered} × 1000 delivered");
    up.stop(Signal::TERM);
}

#[test]
fn thousand_subscribers_on_one_mmsg_worker() {
    thousand_subscribers_on_one_worker("mmsg");
}

#[test]
fn thousand_subscribers_on_one_io_uring_worker() {
    if let Err(e) = relay::io::probe_io_uring() {
        sluice_tests::skip::skip(format!("io_uring refused here: {e}"));
        return;
    }
    thousand_subscribers_on_one_worker("io_uring");
}
