//! Shared memory: hand `ShmReader::open` (and the writer's adopt path,
//! `ShmWriter::open_existing`) a file whose bytes come from the input, then scan every
//! session and route slot, the counters and the relay info. Either the raw input is the file
//! (byte 0 even), or (byte 0 odd) a valid file written by `ShmWriter` with one session and one
//! route is patched at offsets the input chooses, which reaches the slot decoders past the
//! header checks. Nothing may panic or read outside the mapping.
#![no_main]
#![deny(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use relay::shm::{Capacity, Rewrite, RouteRecord, SessionRecord, ShmReader, ShmWriter};
use relay::srtp::{MasterKey, Profile};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;

fn path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sluice-fuzz-shm-{}-{tag}", std::process::id()))
}

/// A small valid file: 4 sessions, 4 routes, 1 worker; one session and one route written.
fn template() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let p = path("template");
        let _ = std::fs::remove_file(&p);
        let cap = Capacity {
            sessions: 4,
            routes: 4,
            workers: 1,
        };
        let mut w = ShmWriter::create(&p, cap).expect("template shm file");
        let key = MasterKey::new(Profile::Aes128CmSha1_80, &[7u8; 30]).expect("30-byte key");
        w.put_session(&SessionRecord {
            id: 1,
            peer: "192.0.2.1:5000".parse().expect("literal address"),
            role: relay::shm::Role::Host,
            rx_key: key,
            tx_key: key,
            key_epoch: 1,
            flags: 0,
            max_pps: 0,
        })
        .expect("session fits");
        w.put_route(&RouteRecord {
            id: 1,
            from: 1,
            ssrc: Some(0x1234),
            to: 1,
            rewrite: Rewrite::default(),
        })
        .expect("route fits");
        drop(w);
        let bytes = std::fs::read(&p).expect("read template");
        let _ = std::fs::remove_file(&p);
        bytes
    })
}

fn write_file(p: &PathBuf, bytes: &[u8]) {
    let _ = std::fs::remove_file(p);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .expect("create fuzz shm file");
    f.write_all(bytes).expect("write fuzz shm file");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut t = template().to_vec();
        // Patches: (offset u16 LE, xor byte) triples.
        for c in rest.chunks_exact(3) {
            let off = usize::from(u16::from_le_bytes([c[0], c[1]])) % t.len();
            t[off] ^= c[2];
        }
        t
    };
    let p = path("input");
    write_file(&p, &bytes);
    if let Ok(r) = ShmReader::open(&p) {
        let cap = r.capacity();
        let _ = (r.generation(), r.writer_pid(), r.relay_info(), r.totals());
        for i in 0..cap.sessions.min(64) + 1 {
            let _ = r.session_slot(i);
        }
        for i in 0..cap.routes.min(64) + 1 {
            let _ = r.route_slot(i);
        }
        let s = r.for_each_session(|_| {});
        let t = r.for_each_route(|_| {});
        assert!(s.records + s.invalid + s.busy <= cap.sessions);
        assert!(t.records + t.invalid + t.busy <= cap.routes);
        for w in 0..cap.workers as usize + 1 {
            let _ = r.worker_counters(w);
        }
    }
    if mode & 2 != 0 {
        // The writer's adopt path repairs what it can; it must not panic either.
        if let Ok(w) = ShmWriter::open_existing(&p) {
            let _ = (w.sessions(), w.route(1), w.session(1));
        }
    }
    let _ = std::fs::remove_file(&p);
});
