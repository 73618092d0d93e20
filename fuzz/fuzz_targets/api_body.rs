//! Admin API request bodies: a real `Control` (state, audit log and shm in a temporary
//! directory) serves `handle_admin` requests whose body is the input, on the endpoint the
//! first byte selects (create session, rekey, create route). Two sessions (ids in the seeds)
//! exist from the start so that route bodies can name them. Every answer must be a status
//! the API documents with a JSON body; whatever gets created is deleted again so the tables
//! never fill up. Nothing may panic.
//!
//! One `Control` serves every input (it is built once; created objects are deleted again, so
//! the tables look the same to every input). Its directory lives on tmpfs (`/dev/shm`) when
//! there is one: the audit log and the state journal still write and `fdatasync` every
//! record, but a sync on tmpfs does not wait for a disk, which on ext4 took most of each
//! input's time. The audit log rotates at 1 MiB and rotated files are deleted every 65,536
//! inputs, so a long run does not fill memory.
#![no_main]
#![deny(unsafe_code)]

use control::api::Control;
use control::http::Request;
use libfuzzer_sys::fuzz_target;
use contract::config::{Config, Secret};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

const TOKEN: &str = "fuzz-admin-token-0123456789";

fn request(method: &str, path: &str, body: &[u8]) -> Request {
    Request {
        method: method.into(),
        path: path.into(),
        query: String::new(),
        headers: vec![
            ("authorization".into(), format!("Bearer {TOKEN}")),
            ("content-type".into(), "application/json".into()),
        ],
        body: body.to_vec(),
        peer: "tcp:127.0.0.1:1".into(),
    }
}

/// Where the fuzz directories live: tmpfs when there is one.
fn base_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

const PREFIX: &str = "sluice-fuzz-api-";

/// Remove the directories of earlier fuzz processes that have exited.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let base = base_dir();
        remove_stale(&base);
        base.join(format!("{PREFIX}{}", std::process::id()))
    })
}

/// Delete rotated audit files (`audit.log.*`) every 65,536 inputs.
fn trim_audit() {
    static N: AtomicU32 = AtomicU32::new(0);
    if N.fetch_add(1, Ordering::Relaxed) % 65_536 != 65_535 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir()) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("audit.log.") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn control() -> &'static Control {
    static C: OnceLock<Control> = OnceLock::new();
    C.get_or_init(|| {
        let dir = dir();
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).expect("temp dir");
        let toml = format!(
            "runtime_dir = \"{d}/run\"\n[control]\nstate_dir = \"{d}/state\"\naudit_log = \"{d}/audit.log\"\naudit_max_bytes = 1048576\n[shm]\npath = \"{d}/shm\"\nsessions = 16\nroutes = 16\nworker_slots = 1\n",
            d = dir.display()
        );
        let cfg = Config::from_toml_str(&toml, "<fuzz>").expect("fuzz config is valid");
        let c = Control::start(cfg, Secret::new(TOKEN)).expect("control starts");
        for (peer, k) in [("127.0.0.1:6000", 'A'), ("127.0.0.1:6001", 'B')] {
            let key: String = std::iter::repeat(k).take(40).collect();
            let body = format!(
                "{{\"peer\":\"{peer}\",\"profile\":\"AES_CM_128_HMAC_SHA1_80\",\"rx_key\":\"{key}\",\"tx_key\":\"{key}\"}}"
            );
            let r = c.handle_admin(&request("POST", "/v1/sessions", body.as_bytes()));
            assert!(r.status == 201 || r.status == 200, "fixture session: {}", r.status);
        }
        c
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let c = control();
    let (path, kind) = match sel % 3 {
        0 => ("/v1/sessions", "sessions"),
        1 => ("/v1/sessions/1/rekey", ""),
        _ => ("/v1/routes", "routes"),
    };
    let r = c.handle_admin(&request("POST", path, body));
    assert!(
        matches!(
            r.status,
            200 | 201 | 400 | 404 | 409 | 413 | 422 | 503 | 507
        ),
        "undocumented status {}",
        r.status
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("answers are JSON");
    if (200..300).contains(&r.status) && !kind.is_empty() {
        if let Some(id) = v.get("id").and_then(|i| i.as_u64()) {
            let d = c.handle_admin(&request("DELETE", &format!("/v1/{kind}/{id}"), b""));
            assert!(d.status < 300, "delete of a created {kind}: {}", d.status);
        }
    }
    trim_audit();
});
