//! sluicectl against a fake admin API: happy paths, API errors, discovery.

mod common;

use common::*;
use serde_json::Value;

const SESSION: &str = r#"{"id":4294967297,"peer":"127.0.0.1:5000","profile":"AEAD_AES_128_GCM","role":"trunk","key_epoch":0,"flags":0,"max_pps":0,"created_unix_ms":1709251199000}"#;

fn write_runtime(dir: &std::path::Path, url: &str, token: &str) {
    std::fs::write(
        dir.join("control.json"),
        format!(
            r#"{{"admin_url":"{url}","admin_token":"{token}","media_addr":"127.0.0.1:3478","public_url":"http://127.0.0.1:8080","metrics_url":"http://127.0.0.1:8080/metrics","pid":1,"shm_path":"/dev/shm/sluice"}}"#
        ),
    )
    .unwrap();
}

#[test]
fn session_add_prints_id_alone_and_sends_validated_body() {
    let fake = FakeControl::start(|_| (201, SESSION.to_string()));
    let dir = temp_dir("add");
    write_runtime(&dir, &fake.url, "sekrit");
    let key = b64(28, 7);
    let o = run(
        &[
            "session",
            "add",
            "--peer",
            "127.0.0.1:5000",
            "--profile",
            "aead_aes_128_gcm",
            "--rx-key",
            &key,
            "--tx-key",
            &key,
            "--role",
            "trunk",
            "--max-pps",
            "500",
        ],
        &dir,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "4294967297\n");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/v1/sessions");
    assert_eq!(reqs[0].auth.as_deref(), Some("Bearer sekrit"));
    let body: Value = serde_json::from_str(&reqs[0].body).unwrap();
    assert_eq!(body["profile"], "AEAD_AES_128_GCM");
    assert_eq!(body["peer"], "127.0.0.1:5000");
    assert_eq!(body["rx_key"], key.as_str());
    assert_eq!(body["role"], "trunk");
    assert_eq!(body["max_pps"], 500);
}

#[test]
fn session_add_over_ice_sends_credentials_and_prints_the_relays() {
    let answer = r#"{"id":7,"peer":"0.0.0.0:0","profile":"AEAD_AES_128_GCM","role":"trunk","ice":{"ufrag":"relayU","remote_ufrag":"peerU","pwd":"relayPasswordOfThirtyTwoCharsXX"}}"#;
    let fake = FakeControl::start(move |_| (201, answer.to_string()));
    let dir = temp_dir("addice");
    write_runtime(&dir, &fake.url, "t");
    let key = b64(28, 3);
    let base = [
        "session",
        "add",
        "--profile",
        "AEAD_AES_128_GCM",
        "--rx-key",
        &key,
        "--tx-key",
        &key,
    ];
    // No peer: the relay's credentials are generated and printed after the id.
    let o = run(
        &[&base[..], &["--ice-remote-ufrag", "peerU"]].concat(),
        &dir,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "7\nice-ufrag relayU\nice-pwd relayPasswordOfThirtyTwoCharsXX\n"
    );
    let body: Value = serde_json::from_str(&fake.requests()[0].body).unwrap();
    assert!(body.get("peer").is_none(), "{body}");
    assert_eq!(body["ice"], serde_json::json!({"remote_ufrag": "peerU"}));
    // Both of the relay's credentials given: sent as they are.
    let o = run(
        &[
            &base[..],
            &[
                "--ice-remote-ufrag",
                "peerU",
                "--ice-ufrag",
                "mine",
                "--ice-pwd",
                "minePasswordOfTwentyTwo",
            ],
        ]
        .concat(),
        &dir,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let body: Value = serde_json::from_str(&fake.requests()[1].body).unwrap();
    assert_eq!(body["ice"]["ufrag"], "mine");
    assert_eq!(body["ice"]["pwd"], "minePasswordOfTwentyTwo");
    // Neither a peer nor ICE, or one relay credential alone: usage errors, nothing sent.
    for extra in [
        &[][..],
        &["--ice-remote-ufrag", "peerU", "--ice-ufrag", "mine"][..],
    ] {
        let o = run(&[&base[..], extra].concat(), &dir);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
    }
    assert_eq!(fake.requests().len(), 2);
}

#[test]
fn session_layer_states_both_caps() {
    let answer = r#"{"session":2,"max":null,"max_temporal":0,"routes":[{},{},{}]}"#;
    let fake = FakeControl::start(move |_| (200, answer.to_string()));
    let dir = temp_dir("layer");
    write_runtime(&dir, &fake.url, "t");
    let o = run(
        &[
            "session",
            "layer",
            "2",
            "--max",
            "none",
            "--max-temporal",
            "0",
        ],
        &dir,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "session 2: no cap, temporal layer 0 on 3 layered route(s)\n"
    );
    let o = run(&["session", "layer", "2", "--max", "1"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let reqs = fake.requests();
    assert_eq!(reqs[0].method, "PUT");
    assert_eq!(reqs[0].path, "/v1/sessions/2/layer");
    let body: Value = serde_json::from_str(&reqs[0].body).unwrap();
    assert_eq!(body, serde_json::json!({"max": null, "max_temporal": 0}));
    // Without --max-temporal the request lifts the temporal cap.
    let body: Value = serde_json::from_str(&reqs[1].body).unwrap();
    assert_eq!(body, serde_json::json!({"max": 1, "max_temporal": null}));
    for bad in [
        &["--max", "3"][..],
        &["--max", "0", "--max-temporal", "4"][..],
    ] {
        let o = run(&[&["session", "layer", "2"][..], bad].concat(), &dir);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("is not a layer"), "{}", stderr(&o));
    }
    assert_eq!(fake.requests().len(), 2);
}

#[test]
fn session_add_json_parses() {
    let fake = FakeControl::start(|_| (201, SESSION.to_string()));
    let dir = temp_dir("addjson");
    let key = b64(30, 1);
    let o = run(
        &[
            "--json",
            "--admin",
            &fake.url,
            "--token",
            "t",
            "session",
            "add",
            "--peer",
            "[::1]:7000",
            "--profile",
            "AES_CM_128_HMAC_SHA1_80",
            "--rx-key",
            &key,
            "--tx-key",
            &key,
        ],
        &dir,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["id"], 4294967297u64);
    let body: Value = serde_json::from_str(&fake.requests()[0].body).unwrap();
    assert_eq!(body["peer"], "[::1]:7000");
}

#[test]
fn tables_render() {
    let fake = FakeControl::start(|s| {
        match s.path.as_str() {
        "/v1/sessions" => (200, format!("[{SESSION}]")),
        "/v1/routes" => (
            200,
            r#"[{"id":2,"from":1,"ssrc":null,"to":3,"rewrite":{"ssrc":42,"pt_map":[[96,100]]}}]"#.into(),
        ),
        "/v1/stats" => (
            200,
            r#"{"workers":[{"worker":0,"packets_in":5,"bytes_in":500,"packets_out":4,"bytes_out":400,"drops":{"auth_failed":1}}],
                "totals":{"packets_in":5,"bytes_in":500,"packets_out":4,"bytes_out":400,"drops":{"auth_failed":1}}}"#.into(),
        ),
        "/v1/status" => (
            200,
            r#"{"version":"0.1.0","media_addr":"127.0.0.1:3478","admin_url":"http://127.0.0.1:1","public_url":"http://127.0.0.1:8080","metrics_url":"http://127.0.0.1:8080/metrics","backend":"mmsg","workers":2,
                "relay":{"pid":9,"up":true,"backend":"mmsg","workers":2,"heartbeat_age_ms":12},"sessions":1,"routes":1,"draining":false,"generation":7}"#.into(),
        ),
        _ => (404, r#"{"error":"no such endpoint"}"#.into()),
    }
    });
    let dir = temp_dir("tables");
    write_runtime(&dir, &fake.url, "t");

    let o = run(&["sessions"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("ID          PEER"), "{out}");
    assert!(
        lines[1].contains("4294967297  127.0.0.1:5000  AEAD_AES_128_GCM  trunk"),
        "{out}"
    );
    assert!(lines[1].ends_with("2024-02-29T23:59:59Z"), "{out}");
    // Columns line up: PEER starts at the same offset in header and row.
    assert_eq!(lines[0].find("PEER"), lines[1].find("127.0.0.1"));

    let o = run(&["routes"], &dir);
    assert_eq!(
        stdout(&o),
        "ID  FROM  SSRC  TO  REWRITE\n 2     1     -   3  ssrc=42 pt=96:100\n"
    );

    let o = run(&["stats"], &dir);
    let out = stdout(&o);
    assert!(out.contains("WORKER  RX_PKTS  RX_BYTES"), "{out}");
    assert!(out.contains("total"), "{out}");
    assert!(
        out.contains("DROP_REASON  COUNT\nauth_failed      1\n"),
        "{out}"
    );

    let o = run(&["status"], &dir);
    let out = stdout(&o);
    assert!(out.contains("media_addr   127.0.0.1:3478"), "{out}");
    assert!(
        out.contains("relay        up (pid 9, backend mmsg, 2 workers"),
        "{out}"
    );

    let o = run(&["status", "--json"], &dir);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["media_addr"], "127.0.0.1:3478");
    assert_eq!(v["workers"], 2);
}

const STREAM_IN: &str = r#"{"session":7,"ssrc":168496141,"direction":"in","packets":197,"bytes":18124,"last_unix_ms":1709251199000,"last_age_ms":180,
    "reception":{"extended_highest_seq":200,"expected":199,"received":196,"cumulative_lost":3,"loss_fraction":0.0150753,"fraction_lost_recent":0.0,"clock_rate":48000,"jitter_rtp":94,"jitter_ms":1.958}}"#;
const STREAM_OUT: &str = r#"{"session":7,"ssrc":1287,"direction":"out","packets":12,"bytes":1400,"last_unix_ms":null,"last_age_ms":null,"reception":null,
    "downlink_bps":312500,"layer":{"current":0,"target":2,"count":3,"switches":4,
    "switch_ms_last":180,"switch_ms_max":950}}"#;

#[test]
fn session_list_show_and_stream_stats() {
    let fake = FakeControl::start(|s| {
        match s.path.as_str() {
        "/v1/sessions" => (
            200,
            r#"[{"id":7,"peer":"127.0.0.1:5000","profile":"AEAD_AES_128_GCM","role":"trunk","app":"demo","room":"blue",
                "stats":{"state":"active","packets_in":200,"packets_out":12,"last_in_age_ms":180,"last_out_age_ms":65000}},
               {"id":8,"peer":"[::1]:9","profile":"AES_CM_128_HMAC_SHA1_80","role":"viewer","app":null,"room":null,
                "stats":{"state":"new","packets_in":0,"packets_out":0,"last_in_age_ms":null,"last_out_age_ms":null}}]"#
                .into(),
        ),
        "/v1/sessions/7/stats" => (
            200,
            format!(
                r#"{{"id":7,"peer":"127.0.0.1:5000","profile":"AEAD_AES_128_GCM","role":"trunk","key_epoch":0,"created_unix_ms":1709251199000,"app":null,"room":null,
                "stats":{{"state":"active","packets_in":200,"bytes_in":20000,"packets_out":12,"bytes_out":1400,"auth_failures":1,"replays":2,
                  "last_in_unix_ms":1709251199000,"last_in_age_ms":180,"last_out_unix_ms":null,"last_out_age_ms":null}},
                "workers":[0,1],"streams":[{STREAM_IN},{STREAM_OUT}]}}"#
            ),
        ),
        "/v1/streams" => (200, format!("[{STREAM_IN},{STREAM_OUT}]")),
        _ => (404, r#"{"error":"no such session"}"#.into()),
    }
    });
    let dir = temp_dir("diag");
    write_runtime(&dir, &fake.url, "t");

    let o = run(&["session", "list"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "ID  APP/ROOM   PEER            PROFILE                  PKTS_IN  PKTS_OUT  LAST   STATE\n \
          7  demo/blue  127.0.0.1:5000  AEAD_AES_128_GCM             200        12  180ms  active\n \
          8  -          [::1]:9         AES_CM_128_HMAC_SHA1_80        0         0  -      new\n"
    );

    let o = run(&["session", "show", "7"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for line in [
        "state          active\n",
        "peer           127.0.0.1:5000\n",
        "profile        AEAD_AES_128_GCM\n",
        "in             200 packets, 20000 bytes\n",
        "auth_failures  1\n",
        "replays        2\n",
        "last_in        2024-02-29T23:59:59Z (180ms ago)\n",
        "last_out       never\n",
        "workers        0,1\n",
    ] {
        assert!(out.contains(line), "{line:?} missing from\n{out}");
    }
    assert!(
        out.contains(
            "DIR  SSRC       PKTS  BYTES  EXPECTED  LOST  LOSS_%  JITTER_MS  CLOCK  LAST   EST_KBPS  LAYER     SWITCHES  SWITCH_MS\n"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "in   168496141   197  18124       199     3  1.51    1.96       48000  180ms         -  -                -  -\n"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "out       1287    12   1400         -     -  -       -              -  -           312  0/2 of 3         4  180/950\n"
        ),
        "the estimate, current/target layer, switches and switch latency of a simulcast output: {out}"
    );

    let o = run(&["session", "show", "7", "--json"], &dir);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["streams"][0]["reception"]["cumulative_lost"], 3);

    let o = run(&["stats", "--streams"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("SESSION  DIR  SSRC"), "{out}");
    assert!(out.contains("      7  out       1287"), "{out}");

    let o = run(&["session", "show", "99"], &dir);
    assert_eq!(o.status.code(), Some(4), "API error: {}", stderr(&o));
}

#[test]
fn route_add_del_drain_rekey() {
    let fake = FakeControl::start(|s| match (s.method.as_str(), s.path.as_str()) {
        ("POST", "/v1/routes") => (201, r#"{"id":9,"from":1,"to":2}"#.into()),
        ("DELETE", _) => (204, String::new()),
        ("POST", "/v1/drain") => (202, String::new()),
        ("POST", "/v1/sessions/5/rekey") => (200, r#"{"id":5,"key_epoch":3}"#.into()),
        _ => (404, r#"{"error":"not found"}"#.into()),
    });
    let dir = temp_dir("routes");
    write_runtime(&dir, &fake.url, "t");
    let o = run(
        &[
            "route",
            "add",
            "--from",
            "1",
            "--ssrc",
            "1234",
            "--to",
            "2",
            "--rewrite-ssrc",
            "77",
            "--pt",
            "96:100",
            "--pt",
            "97:101",
            "--rtx-pt",
            "98",
            "--rtx-ssrc",
            "4321",
        ],
        &dir,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "9\n");
    let body: Value = serde_json::from_str(&fake.requests()[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"from":1,"ssrc":1234,"to":2,"rewrite":{"ssrc":77,"pt_map":[[96,100],[97,101]],"rtx":{"payload_type":98,"ssrc":4321}}})
    );

    let o = run(&["route", "del", "9"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&["--json", "session", "del", "5"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["deleted"], true);
    let o = run(&["drain"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let key = b64(44, 3);
    let o = run(&["rekey", "5", "--tx-key", &key], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "session 5 rekeyed (key epoch 3)\n");

    let reqs = fake.requests();
    let seen: Vec<(String, String)> = reqs
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("POST", "/v1/routes"),
            ("DELETE", "/v1/routes/9"),
            ("DELETE", "/v1/sessions/5"),
            ("POST", "/v1/drain"),
            ("POST", "/v1/sessions/5/rekey"),
        ]
        .map(|(m, p)| (m.to_string(), p.to_string()))
    );
    let body: Value = serde_json::from_str(&reqs[4].body).unwrap();
    assert_eq!(body, serde_json::json!({"tx_key": key}));
}

#[test]
fn unknown_session_is_api_error_exit_4() {
    let fake = FakeControl::start(|_| (404, r#"{"error":"no session 77"}"#.into()));
    let dir = temp_dir("404");
    write_runtime(&dir, &fake.url, "t");
    let o = run(&["session", "del", "77"], &dir);
    assert_eq!(o.status.code(), Some(4));
    let err = stderr(&o);
    assert!(err.contains("404"), "{err}");
    assert!(err.contains("no session 77"), "{err}");
    assert!(stdout(&o).is_empty());
}

#[test]
fn unauthorized_is_api_error_exit_4() {
    let fake = FakeControl::start(|s| {
        if s.auth.as_deref() == Some("Bearer right") {
            (200, "[]".into())
        } else {
            (401, r#"{"error":"bad admin token"}"#.into())
        }
    });
    let dir = temp_dir("401");
    write_runtime(&dir, &fake.url, "right");
    let o = run(&["--token", "wrong", "sessions"], &dir);
    assert_eq!(o.status.code(), Some(4));
    let err = stderr(&o);
    assert!(
        err.contains("401") && err.contains("bad admin token"),
        "{err}"
    );
    // The runtime file's token works.
    let o = run(&["sessions"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn control_not_running_exit_3() {
    let dir = temp_dir("notrunning");
    let o = run(&["status"], &dir);
    assert_eq!(o.status.code(), Some(3));
    let err = stderr(&o);
    assert!(err.contains("control is not running"), "{err}");
    assert!(
        err.contains(&dir.join("control.json").display().to_string()),
        "{err}"
    );
}

#[test]
fn stale_runtime_file_is_unreachable_exit_3() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = temp_dir("stale");
    write_runtime(&dir, &format!("http://127.0.0.1:{port}"), "t");
    let o = run(&["sessions"], &dir);
    assert_eq!(o.status.code(), Some(3));
    let err = stderr(&o);
    assert!(err.contains("not reachable"), "{err}");
    assert!(err.contains(&port.to_string()), "{err}");
}

#[test]
fn env_overrides_runtime_file() {
    let fake = FakeControl::start(|_| (200, "[]".into()));
    let dir = temp_dir("env");
    let o = std::process::Command::new(BIN)
        .args(["routes"])
        .env("SLUICE_RUNTIME_DIR", &dir)
        .env("XDG_RUNTIME_DIR", &dir)
        .env("SLUICE_ADMIN", &fake.url)
        .env("SLUICE_TOKEN", "from-env")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "ID  FROM  SSRC  TO  REWRITE\n");
    assert_eq!(fake.requests()[0].auth.as_deref(), Some("Bearer from-env"));
}

#[test]
fn unix_socket_admin_url() {
    let dir = temp_dir("unix");
    let fake = FakeControl::start_unix(&dir.join("admin.sock"), |_| (200, "[]".into()));
    write_runtime(&dir, &fake.url, "t");
    let o = run(&["sessions", "--json"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "[]");
    assert_eq!(fake.requests()[0].path, "/v1/sessions");
}

/// A fake control whose `/v1/status` names it and reports the relay `up` or not.
fn status_control(name: &'static str, up: bool) -> FakeControl {
    FakeControl::start(move |s| match s.path.as_str() {
        "/v1/status" => (
            200,
            format!(
                r#"{{"version":"{name}","relay":{{"pid":9,"up":{up},"backend":"mmsg","workers":1,"heartbeat_age_ms":3}}}}"#
            ),
        ),
        _ => (404, r#"{"error":"no such endpoint"}"#.into()),
    })
}

/// sluicectl with no `SLUICE_RUNTIME_DIR`, its per-user default runtime directory under `xdg`.
fn run_unselected(args: &[&str], xdg: &std::path::Path) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .env_remove("SLUICE_ADMIN")
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_RUNTIME_DIR")
        .env("XDG_RUNTIME_DIR", xdg)
        .output()
        .unwrap()
}

#[test]
fn status_exits_5_when_the_relay_is_down_and_names_the_instance() {
    let down = status_control("down", false);
    let dir = temp_dir("status-down");
    write_runtime(&dir, &down.url, "t");
    let o = run(&["status"], &dir);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("relay        DOWN (pid 9"), "{out}");
    assert!(
        out.starts_with(&format!("instance     {} (control pid 1)", dir.display())),
        "{out}"
    );
    let o = run(&["status", "--json"], &dir);
    assert_eq!(o.status.code(), Some(5));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["instance"]["runtime_dir"], dir.display().to_string());

    let up = status_control("up", true);
    write_runtime(&dir, &up.url, "t");
    let o = run(&["status"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn runtime_dir_and_config_select_the_instance() {
    let user = status_control("user-instance", true);
    let other = status_control("other-instance", true);
    let xdg = temp_dir("select");
    let user_dir = xdg.join("sluice");
    std::fs::create_dir_all(&user_dir).unwrap();
    write_runtime(&user_dir, &user.url, "t");
    let other_dir = temp_dir("select-other");
    write_runtime(&other_dir, &other.url, "t");
    let version = |o: &std::process::Output| -> String {
        assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
        let v: Value = serde_json::from_str(&stdout(o)).unwrap();
        v["version"].as_str().unwrap().to_string()
    };
    // Nothing named: the per-user default runtime directory.
    assert_eq!(
        version(&run_unselected(&["status", "--json"], &xdg)),
        "user-instance"
    );
    // --runtime-dir names another.
    let dir = other_dir.display().to_string();
    assert_eq!(
        version(&run_unselected(
            &["--runtime-dir", &dir, "status", "--json"],
            &xdg
        )),
        "other-instance"
    );
    // --config: its runtime_dir.
    let cfg = xdg.join("sluice.toml");
    std::fs::write(&cfg, format!("runtime_dir = \"{dir}\"\n")).unwrap();
    let cfg = cfg.display().to_string();
    assert_eq!(
        version(&run_unselected(
            &["status", "--json", "--config", &cfg],
            &xdg
        )),
        "other-instance"
    );
    // Both at once is a usage error.
    let o = run_unselected(&["status", "--config", &cfg, "--runtime-dir", &dir], &xdg);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn taken_peer_on_session_add_hints_at_ephemeral() {
    let fake = FakeControl::start(|_| {
        (
            409,
            r#"{"error":"session 4 already uses this peer address"}"#.into(),
        )
    });
    let dir = temp_dir("taken");
    write_runtime(&dir, &fake.url, "t");
    let key = b64(28, 7);
    let args = session_add("127.0.0.1:5000", "AEAD_AES_128_GCM", &key, &key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&args, &dir);
    assert_eq!(o.status.code(), Some(4));
    let err = stderr(&o);
    assert!(
        err.contains("already uses this peer address") && err.contains("up --ephemeral"),
        "{err}"
    );
    assert!(stdout(&o).is_empty());
}
