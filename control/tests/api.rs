//! End-to-end tests of the `sluice-control` binary: every admin endpoint with its error
//! statuses, the shm contents behind the API, persistence across a restart, `/metrics` as
//! strict Prometheus text, and the audit log.

use contract::shm::{DropReason, ShmReader};
use contract::srtp::{MasterKey, Profile};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "test-admin-token-0123456789";

struct Env {
    dir: PathBuf,
    cfg: PathBuf,
    shm: PathBuf,
}

impl Env {
    fn new(name: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("sluice-ctl-it-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shm = PathBuf::from(format!("/dev/shm/sluice-it-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&shm);
        let cfg = dir.join("sluice.toml");
        std::fs::write(
            &cfg,
            format!(
                "runtime_dir = \"{d}/run\"\n[control]\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{TOKEN}\"\nstate_dir = \"{d}/state\"\naudit_log = \"{d}/log/audit.log\"\n[shm]\npath = \"{s}\"\nsessions = 32\nroutes = 64\nworker_slots = 4\n",
                d = dir.display(),
                s = shm.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
        Env { dir, cfg, shm }
    }

    fn runtime_file(&self) -> PathBuf {
        self.dir.join("run/control.json")
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
    addr: String,
}

impl Daemon {
    fn start(env: &Env) -> Daemon {
        let _ = std::fs::remove_file(env.runtime_file());
        let child = Command::new(env!("CARGO_BIN_EXE_sluice-control"))
            .arg("--config")
            .arg(&env.cfg)
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let info = loop {
            if let Ok(b) = std::fs::read(env.runtime_file()) {
                if let Ok(v) = serde_json::from_slice::<contract::config::RuntimeInfo>(&b) {
                    break v;
                }
            }
            assert!(Instant::now() < deadline, "control did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(info.pid, child.id());
        assert_eq!(info.admin_token, TOKEN);
        assert_eq!(info.shm_path, env.shm.display().to_string());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(env.runtime_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "control.json must be owner-only");
        let addr = info.admin_url.strip_prefix("http://").unwrap().to_string();
        Daemon { child, addr }
    }

    /// SIGTERM and wait for a clean exit.
    fn stop(mut self, env: &Env) {
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
                break;
            }
            assert!(Instant::now() < deadline, "control did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !env.runtime_file().exists(),
            "control.json is removed on clean exit"
        );
    }

    fn raw(&self, raw: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.write_all(raw).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status: u16 = out[9..12].parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_string();
        (status, body)
    }

    fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut r = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(t) = token {
            r.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let b = body.unwrap_or("");
        r.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
        let (st, body) = self.raw(r.as_bytes());
        let v = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).unwrap_or(Value::String(body))
        };
        (st, v)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.req("GET", path, Some(TOKEN), None)
    }
    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.req("POST", path, Some(TOKEN), Some(&body.to_string()))
    }
    fn delete(&self, path: &str) -> (u16, Value) {
        self.req("DELETE", path, Some(TOKEN), None)
    }
    fn metrics(&self) -> String {
        let (st, body) = self.raw(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!(st, 200);
        body
    }
}

fn key(profile: Profile, fill: u8) -> String {
    MasterKey::new(profile, &vec![fill; profile.key_material_len()])
        .unwrap()
        .to_base64()
}

fn assert_error(res: (u16, Value), status: u16, needle: &str) {
    assert_eq!(res.0, status, "{:?}", res.1);
    let msg = res.1["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {:?}", res.1));
    assert!(
        msg.contains(needle),
        "error {msg:?} should mention {needle:?}"
    );
}

fn shm_sessions(path: &Path) -> BTreeMap<u64, contract::shm::SessionRecord> {
    let r = ShmReader::open(path).unwrap();
    let mut m = BTreeMap::new();
    let rep = r.for_each_session(|s| {
        m.insert(s.id, *s);
    });
    assert!(rep.error().is_none());
    m
}

fn shm_routes(path: &Path) -> BTreeMap<u64, contract::shm::RouteRecord> {
    let r = ShmReader::open(path).unwrap();
    let mut m = BTreeMap::new();
    r.for_each_route(|x| {
        m.insert(x.id, *x);
    });
    m
}

// ---- a strict parser for the Prometheus text exposition format 0.0.4 ----

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn valid_metric_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn parse_value(s: &str) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s
            .parse()
            .unwrap_or_else(|_| panic!("bad sample value {s:?}")),
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i] != '=' {
            i += 1;
        }
        let name: String = b[start..i].iter().collect();
        assert!(
            valid_metric_name(&name) && !name.contains(':'),
            "bad label name {name:?}"
        );
        assert_eq!(
            b.get(i + 1),
            Some(&'"'),
            "label value must be quoted in {s:?}"
        );
        i += 2;
        let mut v = String::new();
        loop {
            match b.get(i) {
                Some('\\') => {
                    match b.get(i + 1) {
                        Some('\\') => v.push('\\'),
                        Some('"') => v.push('"'),
                        Some('n') => v.push('\n'),
                        other => panic!("bad escape {other:?} in {s:?}"),
                    }
                    i += 2;
                }
                Some('"') => {
                    i += 1;
                    break;
                }
                Some(c) => {
                    v.push(*c);
                    i += 1;
                }
                None => panic!("unterminated label value in {s:?}"),
            }
        }
        assert!(out.insert(name, v).is_none(), "duplicate label in {s:?}");
        match b.get(i) {
            Some(',') => i += 1,
            None => {}
            other => panic!("unexpected {other:?} after label value in {s:?}"),
        }
    }
    out
}

/// Parse the whole exposition; panics on any deviation. Returns samples and family types.
fn parse_prometheus(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    let mut seen_series = HashSet::new();
    let mut finished_families: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        assert!(!line.is_empty(), "empty line in exposition");
        if let Some(rest) = line.strip_prefix("# ") {
            let mut p = rest.splitn(3, ' ');
            let kw = p.next().unwrap();
            let name = p.next().expect("comment needs a metric name").to_string();
            let arg = p.next().expect("comment needs an argument");
            assert!(valid_metric_name(&name), "bad metric name {name:?}");
            match kw {
                "HELP" => assert!(helps.insert(name.clone()), "second HELP for {name}"),
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg),
                        "bad type {arg}"
                    );
                    assert!(
                        types.insert(name.clone(), arg.to_string()).is_none(),
                        "second TYPE for {name}"
                    );
                    assert!(
                        !samples
                            .iter()
                            .any(|s: &Sample| family_of(&s.name, &types) == name),
                        "TYPE for {name} after its samples"
                    );
                }
                other => panic!("unknown comment keyword {other}"),
            }
            if current.as_deref() != Some(name.as_str()) {
                if let Some(c) = current.take() {
                    finished_families.insert(c);
                }
                assert!(!finished_families.contains(&name), "family {name} is split");
                current = Some(name);
            }
            continue;
        }
        assert!(!line.starts_with('#'), "bad comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("sample needs a value");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                parse_labels(l.strip_suffix('}').expect("unclosed labels")),
            ),
            None => (series, BTreeMap::new()),
        };
        assert!(valid_metric_name(name), "bad metric name {name:?}");
        let fam = family_of(name, &types);
        assert!(
            types.contains_key(&fam),
            "sample {name} without a TYPE line"
        );
        assert_eq!(
            current.as_deref(),
            Some(fam.as_str()),
            "sample {name} outside its family block"
        );
        assert!(
            seen_series.insert(series.to_string()),
            "duplicate series {series}"
        );
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value: parse_value(value),
        });
    }
    (samples, types)
}

fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

/// Check every histogram: cumulative buckets, increasing `le`, `+Inf` equal to `_count`.
fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) {
    for (fam, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: HashMap<String, f64> = HashMap::new();
        for s in samples {
            let mut key_labels = s.labels.clone();
            key_labels.remove("le");
            let key = format!("{key_labels:?}");
            if s.name == format!("{fam}_bucket") {
                let le = parse_value(s.labels.get("le").expect("bucket without le"));
                groups.entry(key).or_default().push((le, s.value));
            } else if s.name == format!("{fam}_count") {
                counts.insert(key, s.value);
            }
        }
        assert!(!groups.is_empty(), "histogram {fam} has no buckets");
        for (k, buckets) in groups {
            for w in buckets.windows(2) {
                assert!(w[0].0 < w[1].0, "{fam}{k}: le not increasing");
                assert!(w[0].1 <= w[1].1, "{fam}{k}: buckets not cumulative");
            }
            let last = buckets.last().unwrap();
            assert!(last.0.is_infinite(), "{fam}{k}: no +Inf bucket");
            assert_eq!(Some(&last.1), counts.get(&k), "{fam}{k}: +Inf != _count");
        }
    }
}

fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
        .value
}

#[test]
fn admin_api_end_to_end_with_restart() {
    let env = Env::new("e2e");
    let d = Daemon::start(&env);
    let p80 = Profile::Aes128CmSha1_80;

    // Unauthenticated endpoints.
    let (st, v) = d.req("GET", "/healthz", None, None);
    assert_eq!((st, &v["ok"]), (200, &json!(true)));
    // Authentication.
    assert_error(d.req("GET", "/v1/status", None, None), 401, "token");
    assert_error(
        d.req("GET", "/v1/sessions", Some("wrong-token-wrong-token"), None),
        401,
        "token",
    );
    assert_error(d.get("/v1/nope"), 404, "no such endpoint");
    assert_error(
        d.req("PUT", "/v1/sessions", Some(TOKEN), None),
        405,
        "not allowed",
    );

    // Status before any relay.
    let (st, s) = d.get("/v1/status");
    assert_eq!(st, 200);
    for k in [
        "version",
        "media_addr",
        "admin_url",
        "public_url",
        "metrics_url",
        "backend",
        "workers",
        "relay",
        "sessions",
        "routes",
        "draining",
        "generation",
    ] {
        assert!(s.get(k).is_some(), "status lacks {k}: {s}");
    }
    assert_eq!(s["relay"]["up"], json!(false));
    assert_eq!(s["media_addr"], json!("127.0.0.1:4443"));

    // Sessions: validation errors name the field.
    let good = json!({"peer": "127.0.0.1:6000", "profile": "AES_CM_128_HMAC_SHA1_80", "rx_key": key(p80, 1), "tx_key": key(p80, 2)});
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    assert_error(
        d.post("/v1/sessions", &with("peer", json!("nonsense"))),
        400,
        "peer",
    );
    assert_error(
        d.post("/v1/sessions", &with("profile", json!("ROT13"))),
        400,
        "profile",
    );
    assert_error(
        d.post("/v1/sessions", &with("rx_key", json!("!!!"))),
        400,
        "rx_key",
    );
    assert_error(
        d.post(
            "/v1/sessions",
            &with("tx_key", json!(key(Profile::AeadAes256Gcm, 3))),
        ),
        400,
        "tx_key",
    );
    assert_error(
        d.post("/v1/sessions", &with("role", json!("king"))),
        400,
        "role",
    );
    assert_error(
        d.post("/v1/sessions", &with("max_pps", json!(-1))),
        400,
        "max_pps",
    );
    assert_error(
        d.post("/v1/sessions", &with("bogus", json!(1))),
        400,
        "bogus",
    );
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("rx_key");
    assert_error(d.post("/v1/sessions", &missing), 400, "rx_key");
    assert_error(
        d.req("POST", "/v1/sessions", Some(TOKEN), Some("{not json")),
        400,
        "JSON",
    );
    assert_error(
        d.req("POST", "/v1/sessions", Some(TOKEN), Some("[1,2]")),
        400,
        "object",
    );
    let (st, _) = d.raw(format!("POST /v1/sessions HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 10000000\r\n\r\n").as_bytes());
    assert_eq!(st, 413);

    // Create three sessions (one viewer, one IPv6 GCM).
    let (st, a) = d.post("/v1/sessions", &good);
    assert_eq!(st, 201, "{a}");
    assert!(a["id"].is_u64());
    for k in [
        "id",
        "peer",
        "profile",
        "role",
        "key_epoch",
        "flags",
        "max_pps",
        "created_unix_ms",
    ] {
        assert!(a.get(k).is_some(), "session lacks {k}");
    }
    assert!(
        a.get("rx_key").is_none() && a.get("tx_key").is_none(),
        "keys never leave control"
    );
    assert_eq!(a["role"], json!("trunk"));
    let gcm = Profile::AeadAes128Gcm;
    let (st, b) = d.post("/v1/sessions", &json!({"peer": "[::1]:6001", "profile": "AEAD_AES_128_GCM", "rx_key": key(gcm, 4), "tx_key": key(gcm, 5), "max_pps": 5000}));
    assert_eq!(st, 201, "{b}");
    let (st, viewer) = d.post("/v1/sessions", &json!({"peer": "127.0.0.1:6002", "profile": "AES_CM_128_HMAC_SHA1_80", "rx_key": key(p80, 6), "tx_key": key(p80, 7), "role": "viewer"}));
    assert_eq!(st, 201);
    assert_error(d.post("/v1/sessions", &good), 409, "peer address");
    let (ida, idb, idv) = (
        a["id"].as_u64().unwrap(),
        b["id"].as_u64().unwrap(),
        viewer["id"].as_u64().unwrap(),
    );

    let (st, list) = d.get("/v1/sessions");
    assert_eq!((st, list.as_array().unwrap().len()), (200, 3));
    // No relay has counted anything yet: zero counters, state "new", no room.
    assert_eq!(list[0]["stats"]["state"], json!("new"), "{list}");
    assert_eq!(list[0]["stats"]["packets_in"], json!(0));
    assert_eq!(list[0]["app"], Value::Null);
    let (st, one) = d.get(&format!("/v1/sessions/{ida}/stats"));
    assert_eq!(st, 200, "{one}");
    assert_eq!(
        (one["id"].as_u64(), &one["streams"]),
        (Some(ida), &json!([]))
    );
    assert_eq!(one["stats"]["last_in_unix_ms"], Value::Null);
    assert_error(d.get("/v1/sessions/999/stats"), 404, "999");
    assert_eq!(d.get("/v1/streams"), (200, json!([])));
    assert_eq!(
        d.req("POST", "/v1/streams", Some(TOKEN), None).0,
        405,
        "GET only"
    );
    assert_eq!(
        d.get(&format!("/v1/sessions/{idb}")).1["max_pps"],
        json!(5000)
    );
    assert_error(d.get("/v1/sessions/999"), 404, "999");
    assert_error(
        d.get("/v1/sessions/abc"),
        400,
        "id: `abc` is not a session id",
    );

    // The shm file holds what the API says, keys included.
    let m = shm_sessions(&env.shm);
    assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![ida, idb, idv]);
    assert_eq!(m[&ida].peer, "127.0.0.1:6000".parse().unwrap());
    assert_eq!(
        m[&ida].rx_key,
        MasterKey::from_base64(p80, &key(p80, 1)).unwrap()
    );
    assert_eq!(
        m[&ida].tx_key,
        MasterKey::from_base64(p80, &key(p80, 2)).unwrap()
    );
    assert_eq!(m[&idb].rx_key.profile(), gcm);
    assert_eq!(m[&idb].max_pps, 5000);
    assert_eq!(m[&idv].role, contract::shm::Role::Viewer);

    // Rekey.
    assert_error(
        d.post(&format!("/v1/sessions/{ida}/rekey"), &json!({})),
        400,
        "tx_key",
    );
    assert_error(
        d.post(
            &format!("/v1/sessions/{ida}/rekey"),
            &json!({"tx_key": "AAAA"}),
        ),
        400,
        "tx_key",
    );
    assert_error(
        d.post("/v1/sessions/999/rekey", &json!({"tx_key": key(p80, 9)})),
        404,
        "999",
    );
    let (st, rk) = d.post(
        &format!("/v1/sessions/{ida}/rekey"),
        &json!({"tx_key": key(p80, 9)}),
    );
    assert_eq!((st, &rk["key_epoch"]), (200, &json!(1)));
    let m = shm_sessions(&env.shm);
    assert_eq!(m[&ida].key_epoch, 1);
    assert_eq!(
        m[&ida].tx_key,
        MasterKey::from_base64(p80, &key(p80, 9)).unwrap()
    );
    assert_eq!(
        m[&ida].rx_key,
        MasterKey::from_base64(p80, &key(p80, 1)).unwrap()
    );

    // Routes.
    assert_error(
        d.post("/v1/routes", &json!({"from": 999, "to": ida})),
        404,
        "999",
    );
    assert_error(
        d.post("/v1/routes", &json!({"from": ida, "to": 998})),
        404,
        "998",
    );
    assert_error(
        d.post("/v1/routes", &json!({"from": idv, "to": ida})),
        409,
        "publish",
    );
    assert_error(
        d.post(
            "/v1/routes",
            &json!({"from": ida, "to": idb, "rewrite": {"pt_map": [[200, 1]]}}),
        ),
        400,
        "rewrite.pt_map",
    );
    assert_error(
        d.post(
            "/v1/routes",
            &json!({"from": ida, "to": idb, "rewrite": {"ext_map": [[0, 1]]}}),
        ),
        400,
        "rewrite.ext_map",
    );
    assert_error(
        d.post(
            "/v1/routes",
            &json!({"from": ida, "to": idb, "rewrite": {"zzz": 1}}),
        ),
        400,
        "rewrite.zzz",
    );
    assert_error(
        d.post("/v1/routes", &json!({"from": "x", "to": idb})),
        400,
        "from",
    );
    assert_error(
        d.post(
            "/v1/routes",
            &json!({"from": ida, "to": idb, "ssrc": 1u64 << 33}),
        ),
        400,
        "ssrc",
    );
    // RTX output: a payload type up to 127, on a single-stream route only.
    assert_error(
        d.post(
            "/v1/routes",
            &json!({"from": ida, "to": idb, "rewrite": {"rtx": {"payload_type": 97, "ssrc": 7}}}),
        ),
        400,
        "rewrite.rtx",
    );
    assert_error(
        d.post(
            "/v1/routes",
            &json!({"from": ida, "to": idb, "ssrc": 1, "rewrite": {"rtx": {"payload_type": 200, "ssrc": 7}}}),
        ),
        400,
        "rewrite.rtx.payload_type",
    );
    let (st, r1) = d.post("/v1/routes", &json!({"from": ida, "to": idb, "ssrc": 1234, "rewrite": {"ssrc": 99, "pt_map": [[96, 111]], "ext_map": [[3, 5]], "rtx": {"payload_type": 97, "ssrc": 4321}}}));
    assert_eq!(st, 201, "{r1}");
    assert_eq!(r1["rewrite"]["pt_map"], json!([[96, 111]]));
    assert_eq!(
        r1["rewrite"]["rtx"],
        json!({"payload_type": 97, "ssrc": 4321})
    );
    let (st, r2) = d.post("/v1/routes", &json!({"from": idb, "to": idv}));
    assert_eq!(st, 201);
    let (st, r3) = d.post("/v1/routes", &json!({"from": idb, "to": ida}));
    assert_eq!(st, 201);
    assert_error(
        d.post("/v1/routes", &json!({"from": idb, "to": ida})),
        409,
        "already",
    );
    assert_error(
        d.post(
            "/v1/routes",
            &json!({"from": idb, "to": idb, "ssrc": 5, "rewrite": {"ssrc": 99}}),
        ),
        409,
        "RFC 3711",
    );
    assert_error(
        d.post("/v1/routes", &json!({"from": idb, "to": idb, "ssrc": 99})),
        409,
        "SSRC",
    );
    let (r1id, r2id, r3id) = (
        r1["id"].as_u64().unwrap(),
        r2["id"].as_u64().unwrap(),
        r3["id"].as_u64().unwrap(),
    );
    assert_eq!(d.get("/v1/routes").1.as_array().unwrap().len(), 3);
    let rm = shm_routes(&env.shm);
    assert_eq!(rm.len(), 3);
    assert_eq!(rm[&r1id].ssrc, Some(1234));
    assert_eq!(rm[&r1id].rewrite.ssrc, Some(99));
    assert_eq!(rm[&r1id].rewrite.pt_map[..1], [(96, 111)]);
    assert_eq!(rm[&r1id].rewrite.ext_map_len, 1);
    assert_eq!(d.delete(&format!("/v1/routes/{r3id}")).0, 204);
    assert_error(d.delete(&format!("/v1/routes/{r3id}")), 404, "route");
    assert!(!shm_routes(&env.shm).contains_key(&r3id));

    // Simulate a relay: relay info, heartbeats and counters in the shm file.
    let reader = ShmReader::open(&env.shm).unwrap();
    let now = control::clock::unix_ms();
    reader.set_relay_info(4242, "mmsg", 2, now);
    reader.heartbeat(0, now);
    reader.heartbeat(1, now);
    let c0 = reader.worker_counters(0).unwrap();
    for _ in 0..10 {
        c0.add_rx(100);
    }
    c0.add_tx(7, 700);
    c0.drop(DropReason::AuthFailed);
    c0.drop(DropReason::AuthFailed);
    c0.record_batch(5, 3000);
    c0.record_batch(40, 900_000);
    let mut fb = contract::shm::CounterSnapshot::default();
    fb.count(contract::shm::Feedback::Retransmitted, 3);
    c0.add(&fb);
    reader.worker_counters(1).unwrap().add_rx(50);
    let (_, s) = d.get("/v1/status");
    assert_eq!(s["relay"]["up"], json!(true), "{s}");
    assert_eq!(s["relay"]["pid"], json!(4242));
    assert_eq!(
        (s["backend"].clone(), s["workers"].clone()),
        (json!("mmsg"), json!(2))
    );
    assert_eq!(
        (s["sessions"].clone(), s["routes"].clone()),
        (json!(3), json!(2))
    );
    let (st, stats) = d.get("/v1/stats");
    assert_eq!(st, 200);
    assert_eq!(stats["workers"].as_array().unwrap().len(), 2);
    assert_eq!(stats["workers"][0]["packets_in"], json!(10));
    assert_eq!(stats["workers"][0]["drops"]["auth_failed"], json!(2));
    assert_eq!(stats["workers"][0]["feedback"]["retransmitted"], json!(3));
    assert_eq!(stats["totals"]["packets_in"], json!(11));
    assert_eq!(stats["totals"]["bytes_in"], json!(1050));

    // Metrics: strict parse and values.
    let text = d.metrics();
    let (samples, types) = parse_prometheus(&text);
    check_histograms(&samples, &types);
    assert_eq!(types["sluice_rx_packets_total"], "counter");
    assert_eq!(types["sluice_batch_size"], "histogram");
    assert_eq!(types["sluice_batch_seconds"], "histogram");
    assert_eq!(
        value_of(&samples, "sluice_rx_packets_total", &[("worker", "0")]),
        10.0
    );
    assert_eq!(
        value_of(&samples, "sluice_rx_packets_total", &[("worker", "1")]),
        1.0
    );
    assert_eq!(
        value_of(&samples, "sluice_tx_bytes_total", &[("worker", "0")]),
        700.0
    );
    assert_eq!(
        value_of(
            &samples,
            "sluice_drops_total",
            &[("worker", "0"), ("reason", "auth_failed")]
        ),
        2.0
    );
    assert_eq!(types["sluice_feedback_total"], "counter");
    assert_eq!(
        value_of(
            &samples,
            "sluice_feedback_total",
            &[("worker", "0"), ("event", "retransmitted")]
        ),
        3.0
    );
    assert_eq!(
        value_of(&samples, "sluice_relay_rx_packets_total", &[]),
        11.0
    );
    assert_eq!(value_of(&samples, "sluice_sessions", &[]), 3.0);
    assert_eq!(value_of(&samples, "sluice_routes", &[]), 2.0);
    assert_eq!(value_of(&samples, "sluice_relay_up", &[]), 1.0);
    assert_eq!(
        value_of(&samples, "sluice_batch_size_count", &[("worker", "0")]),
        2.0
    );
    assert_eq!(
        value_of(
            &samples,
            "sluice_batch_size_bucket",
            &[("worker", "0"), ("le", "7")]
        ),
        1.0
    );
    assert_eq!(
        value_of(
            &samples,
            "sluice_batch_size_bucket",
            &[("worker", "0"), ("le", "63")]
        ),
        2.0
    );
    let sum = value_of(&samples, "sluice_batch_seconds_sum", &[("worker", "0")]);
    assert!((sum - 903e-6).abs() < 1e-12, "{sum}");

    // Delete a session: its routes go with it.
    assert_eq!(d.delete(&format!("/v1/sessions/{idv}")).0, 204);
    assert_error(d.delete(&format!("/v1/sessions/{idv}")), 404, "session");
    assert!(!shm_routes(&env.shm).contains_key(&r2id));
    assert!(!shm_sessions(&env.shm).contains_key(&idv));
    assert_eq!(d.get("/v1/routes").1.as_array().unwrap().len(), 1);

    let gen_before = d.get("/v1/status").1["generation"].as_u64().unwrap();
    let sessions_before = d.get("/v1/sessions").1;
    let routes_before = d.get("/v1/routes").1;
    d.stop(&env);

    // Restart: same sessions, routes, ids; shm re-adopted (generation not reset); ids not reused.
    let d = Daemon::start(&env);
    assert_eq!(d.get("/v1/sessions").1, sessions_before);
    assert_eq!(d.get("/v1/routes").1, routes_before);
    let (_, s) = d.get("/v1/status");
    assert!(
        s["generation"].as_u64().unwrap() >= gen_before,
        "{s} vs {gen_before}"
    );
    assert_eq!(
        shm_sessions(&env.shm).keys().copied().collect::<Vec<_>>(),
        vec![ida, idb]
    );
    assert_eq!(shm_sessions(&env.shm)[&ida].key_epoch, 1);
    assert_eq!(
        shm_routes(&env.shm).keys().copied().collect::<Vec<_>>(),
        vec![r1id]
    );
    let (st, c) = d.post("/v1/sessions", &with("peer", json!("127.0.0.1:6100")));
    assert_eq!(st, 201);
    assert!(c["id"].as_u64().unwrap() > idv, "ids are never reused");

    // Drain.
    let (st, dr) = d.post("/v1/drain", &json!({}));
    assert_eq!((st, &dr["draining"]), (202, &json!(true)));
    assert_eq!(d.get("/v1/status").1["draining"], json!(true));
    assert_error(
        d.post("/v1/sessions", &with("peer", json!("127.0.0.1:6200"))),
        409,
        "draining",
    );
    let (samples, _) = parse_prometheus(&d.metrics());
    assert_eq!(value_of(&samples, "sluice_draining", &[]), 1.0);
    d.stop(&env);

    // Audit log: one JSON object per line, every action present, no secrets or peer IPs.
    let mut text = String::new();
    for e in std::fs::read_dir(env.dir.join("log")).unwrap() {
        text.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    let mut actions = HashSet::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        for k in ["ts", "actor", "action", "ids", "result"] {
            assert!(v.get(k).is_some(), "audit line lacks {k}: {line}");
        }
        actions.insert(v["action"].as_str().unwrap().to_string());
        if v["action"] == "auth.failed" {
            let from = v["ids"]["from"].as_str().unwrap_or_default();
            assert!(from.starts_with("h:"), "hashed source: {line}");
        }
    }
    for a in [
        "auth.failed",
        "session.create",
        "session.rekey",
        "session.delete",
        "route.create",
        "route.delete",
        "drain",
    ] {
        assert!(actions.contains(a), "audit log lacks {a}: {actions:?}");
    }
    for secret in [
        TOKEN.to_string(),
        key(p80, 1),
        key(p80, 9),
        key(gcm, 4),
        "127.0.0.1:6000".into(),
        "::1".into(),
        // The connecting socket of a failed admin login.
        "tcp:127.0.0.1".into(),
    ] {
        assert!(!text.contains(&secret), "audit log leaks {secret}");
    }
    assert!(
        text.contains("\"status\":409"),
        "failed actions are audited too"
    );
}

#[test]
fn bad_config_is_refused_with_key_and_line() {
    let env = Env::new("badcfg");
    std::fs::write(&env.cfg, "[relay]\nworkers = 1\nfrobnicate = true\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-control"))
        .arg("--config")
        .arg(&env.cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":3:") && err.contains("frobnicate"), "{err}");
}

/// A flood of bad admin tokens with long paths costs the audit log a bounded number of short
/// lines, all naming the same client (the address without its port).
#[test]
fn auth_failures_are_rate_limited_short_and_correlated_in_the_audit_log() {
    let env = Env::new("authflood");
    let d = Daemon::start(&env);
    let long = format!("/v1/{}", "x".repeat(4000));
    for _ in 0..200 {
        let (st, _) = d.req("GET", &long, Some("wrong-token-wrong-token"), None);
        assert_eq!(st, 401);
    }
    let mut text = String::new();
    for e in std::fs::read_dir(env.dir.join("log")).unwrap() {
        text.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["action"] == "auth.failed")
        .collect();
    // A burst of 20 and 10/s after it; the run takes well under a few seconds.
    assert!(
        (20..=60).contains(&lines.len()),
        "{} auth.failed lines for 200 failures",
        lines.len()
    );
    let from: HashSet<&str> = lines
        .iter()
        .map(|v| v["ids"]["from"].as_str().unwrap())
        .collect();
    assert_eq!(from.len(), 1, "one client, one pseudonym: {from:?}");
    for v in &lines {
        let line = v.to_string();
        assert!(line.len() < 600, "{} bytes: {line}", line.len());
    }
    d.stop(&env);
}

/// Files and directories someone loosened while control was stopped (state with keys, the
/// application registry, the audit key and log) are owner-only again once it starts.
#[test]
fn loosened_private_files_are_tightened_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new("perms");
    let d = Daemon::start(&env);
    d.stop(&env);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let set = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let state = env.dir.join("state");
    let mut loosened = Vec::new();
    for e in std::fs::read_dir(&state).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            set(&p, 0o644);
            loosened.push(p);
        }
    }
    assert!(loosened.len() >= 2, "state files: {loosened:?}");
    set(&state, 0o755);
    let audit = env.dir.join("log/audit.log");
    set(&audit, 0o644);
    let d = Daemon::start(&env);
    assert_eq!(mode(&state), 0o700);
    for p in loosened.iter().chain([&audit]) {
        assert_eq!(mode(p), 0o600, "{}", p.display());
    }
    d.stop(&env);
}

/// Static sessions reached by ICE (docs/ICE.md "Static sessions over ICE"): created without a
/// peer they are PENDING and unbound with their credentials in shm; the password is shown only
/// in the 201; bad combinations are 400 naming the field; and an unbound one survives a
/// restart of control (unbound WebRTC sessions do not).
#[test]
fn static_sessions_with_ice_credentials() {
    let env = Env::new("static-ice");
    let d = Daemon::start(&env);
    let p = Profile::AeadAes128Gcm;
    let base = |ice: Value| json!({"profile": "AEAD_AES_128_GCM", "rx_key": key(p, 1), "tx_key": key(p, 2), "ice": ice});
    let (st, v) = d.post("/v1/sessions", &base(json!({"remote_ufrag": "peer"})));
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_u64().unwrap();
    assert_eq!(v["peer"], "0.0.0.0:0");
    assert_ne!(v["flags"].as_u64().unwrap() & 2, 0, "PENDING: {v}");
    let (ufrag, pwd) = (
        v["ice"]["ufrag"].as_str().unwrap().to_string(),
        v["ice"]["pwd"].as_str().unwrap().to_string(),
    );
    assert_eq!((ufrag.len(), pwd.len()), (8, 32), "{v}");
    let rec = &shm_sessions(&env.shm)[&id];
    let ice = rec.ice.as_ref().expect("credentials in shm");
    assert_eq!(ice.ufrag(), ufrag.as_bytes());
    assert_eq!(ice.pwd(), pwd.as_bytes());
    assert_eq!(ice.remote_ufrag(), b"peer");
    let (st, g) = d.get(&format!("/v1/sessions/{id}"));
    assert_eq!(st, 200);
    assert!(g["ice"]["pwd"].is_null(), "no password after creation: {g}");

    // Given credentials; a second unbound session; then the refusals.
    let given = json!({"remote_ufrag": "peer2", "ufrag": "OpsUfrag", "pwd": "o".repeat(24)});
    let (st, v2) = d.post("/v1/sessions", &base(given));
    assert_eq!(st, 201, "{v2}");
    assert_eq!(v2["ice"]["ufrag"], "OpsUfrag");
    let id2 = v2["id"].as_u64().unwrap();
    assert_error(
        d.post(
            "/v1/sessions",
            &base(json!({"remote_ufrag": "x", "ufrag": "OnlyUfrag"})),
        ),
        400,
        "ice",
    );
    assert_error(
        d.post(
            "/v1/sessions",
            &base(json!({"remote_ufrag": "x", "ufrag": "OpsUfrag", "pwd": "p".repeat(24)})),
        ),
        400,
        "ice",
    );
    assert_error(
        d.post(
            "/v1/sessions",
            &base(json!({"remote_ufrag": "x", "nope": 1})),
        ),
        400,
        "ice",
    );
    let mut no_peer = base(Value::Null);
    no_peer.as_object_mut().unwrap().remove("ice");
    assert_error(d.post("/v1/sessions", &no_peer), 400, "peer");

    d.stop(&env);
    let d = Daemon::start(&env);
    for (i, u) in [(id, ufrag.as_str()), (id2, "OpsUfrag")] {
        let (st, g) = d.get(&format!("/v1/sessions/{i}"));
        assert_eq!(
            st, 200,
            "unbound static ICE session {i} kept across a restart: {g}"
        );
        assert_eq!(g["ice"]["ufrag"], u);
    }
    d.stop(&env);
}
