//! The Sluice target against a fake admin API: request shapes, bearer token, ids, teardown
//! order, error reporting.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use contract::srtp::{MasterKey, Profile};
use serde_json::{json, Value};
use sluice_bench::gen::{Rig, RigSpec};
use sluice_bench::target::{SluiceTarget, Target, TargetError};

#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    auth: String,
    body: Value,
}

/// Serve until the test ends; fail route creation number `fail_route` (1-based) if set.
fn fake_api(fail_route: Option<usize>) -> (String, Arc<Mutex<Vec<Req>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        let (mut next_id, mut routes) = (1u64, 0usize);
        for conn in l.incoming() {
            let mut s = conn.unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap().to_string();
            let path = parts.next().unwrap().to_string();
            let (mut len, mut auth) = (0usize, String::new());
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h == "\r\n" {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
                if k.eq_ignore_ascii_case("authorization") {
                    auth = v.trim().to_string();
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            log2.lock().unwrap().push(Req {
                method: method.clone(),
                path: path.clone(),
                auth,
                body,
            });
            let (status, reply) = match (method.as_str(), path.as_str()) {
                ("GET", "/v1/status") => (
                    200,
                    json!({"media_addr": "0.0.0.0:7000", "backend": "mmsg", "workers": 2, "relay": {"pid": 42}, "version": "0.1.0"}),
                ),
                ("GET", "/v1/stats") => (200, json!({"packets_in": 5})),
                ("POST", "/v1/routes") => {
                    routes += 1;
                    if Some(routes) == fail_route {
                        (503, json!({"error": "route table is full (1 slots)"}))
                    } else {
                        next_id += 1;
                        (201, json!({"id": next_id}))
                    }
                }
                ("POST", _) => {
                    next_id += 1;
                    (201, json!({"id": next_id}))
                }
                ("DELETE", _) => (204, Value::Null),
                _ => (404, json!({"error": "no"})),
            };
            let body = if reply.is_null() {
                String::new()
            } else {
                reply.to_string()
            };
            write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
    });
    (url, log)
}

fn rig() -> Rig {
    Rig::new(RigSpec {
        publishers: 2,
        fanout: 2,
        profile: Some(Profile::AeadAes256Gcm),
        ..RigSpec::default()
    })
    .unwrap()
}

#[test]
fn creates_sessions_and_routes_then_removes_them() {
    let (url, log) = fake_api(None);
    let mut t = SluiceTarget::connect(Some(&url), Some("s3cret"), None).unwrap();
    let info = t.info().unwrap();
    assert_eq!(info.backend.as_deref(), Some("mmsg"));
    assert_eq!(info.workers, Some(2));
    assert_eq!(info.relay_pid, Some(42));
    let rig = rig();
    let plan = rig.plan().unwrap();
    let w = t.setup(&plan).unwrap();
    // 0.0.0.0 is sent to as loopback.
    assert!(w
        .publisher_dst
        .iter()
        .all(|d| d.to_string() == "127.0.0.1:7000"));
    assert_eq!(w.subscriber_keys.len(), 4);
    assert_eq!(t.stats().unwrap()["packets_in"], 5);
    let removed = t.teardown().unwrap();
    assert_eq!(removed, 4 + 6, "4 routes and 6 sessions");
    assert_eq!(t.teardown().unwrap(), 0, "idempotent");

    let log = log.lock().unwrap();
    assert!(log.iter().all(|r| r.auth == "Bearer s3cret"));
    let posts: Vec<&Req> = log.iter().filter(|r| r.method == "POST").collect();
    let sessions: Vec<&&Req> = posts.iter().filter(|r| r.path == "/v1/sessions").collect();
    assert_eq!(sessions.len(), 6);
    for (r, p) in sessions.iter().zip(&plan.publishers) {
        assert_eq!(r.body["peer"], p.peer.to_string());
        assert_eq!(r.body["profile"], "AEAD_AES_256_GCM");
        let rx = MasterKey::from_base64(Profile::AeadAes256Gcm, r.body["rx_key"].as_str().unwrap());
        assert_eq!(rx.unwrap(), p.rx_key);
        assert!(
            r.body.get("role").is_none(),
            "default role (trunk) may publish"
        );
    }
    let routes: Vec<&&Req> = posts.iter().filter(|r| r.path == "/v1/routes").collect();
    assert_eq!(routes.len(), 4);
    // Publishers got ids 2 and 3; each route goes from one of them to a new subscriber id.
    for r in &routes {
        let from = r.body["from"].as_u64().unwrap();
        assert!(from == 2 || from == 3, "{:?}", r.body);
        assert!(r.body["to"].as_u64().unwrap() > 3);
    }
    // Teardown: routes first (newest first), then sessions.
    let dels: Vec<&str> = log
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(dels.len(), 10);
    assert!(dels[..4].iter().all(|p| p.starts_with("/v1/routes/")));
    assert!(dels[4..].iter().all(|p| p.starts_with("/v1/sessions/")));
}

#[test]
fn a_failed_setup_removes_what_it_created_and_names_the_error() {
    let (url, log) = fake_api(Some(2));
    let mut t = SluiceTarget::connect(Some(&url), Some("t"), "127.0.0.1:9".parse().ok()).unwrap();
    let rig = rig();
    let err = t.setup(&rig.plan().unwrap()).unwrap_err();
    match &err {
        TargetError::Api {
            status, message, ..
        } => {
            assert_eq!(*status, 503);
            assert!(message.contains("route table is full"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let log = log.lock().unwrap();
    let created_sessions = log
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/sessions")
        .count();
    let deleted_sessions = log
        .iter()
        .filter(|r| r.method == "DELETE" && r.path.starts_with("/v1/sessions/"))
        .count();
    assert_eq!(created_sessions, deleted_sessions);
    assert_eq!(
        log.iter()
            .filter(|r| r.method == "DELETE" && r.path.starts_with("/v1/routes/"))
            .count(),
        1
    );
    // --target given: no status call was needed.
    assert!(!log.iter().any(|r| r.path == "/v1/status"));
}

#[test]
fn unreachable_api_is_a_clear_error() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let mut t = SluiceTarget::connect(Some(&url), Some("t"), None).unwrap();
    let e = t.info().unwrap_err().to_string();
    assert!(e.contains("cannot reach the admin API"), "{e}");
}
