//! Shared memory: the header checks of `ShmReader::open` on every input, and the full file
//! path (map, scan, adopt) on every input the checks accept.
//!
//! The image: either the raw input (byte 0 even; with bit 2 set, zero-extended to the file
//! size its header declares, at most 1 MiB, so that crafted headers reach every field check),
//! or (byte 0 odd) a valid file written by `ShmWriter` with one session, one route, one
//! stream-state entry, two session-stats entries and relay info, patched at offsets the input
//! chooses, which reaches the slot decoders past the header checks.
//!
//! 1. `ShmReader::check_image` (the same checks `open` runs, on the bytes; no file, no map).
//! 2. When it accepts the image, and for one refused image in 16 (byte 0 ≥ 0xf0): the image is
//!    written as a shm file (tmpfs when there is one; one file per process, rewritten in place) and opened with `ShmReader::open`, which
//!    must agree with step 1 (same verdict, same error variant, same capacity); then every
//!    session, route, stream-state and session-stats slot, the counters and the relay info are
//!    read (and the per-session diagnostics summed), and
//!    (byte 0 bit 1) the writer's adopt path `ShmWriter::open_existing` runs on it.
//!
//! Nothing may panic or read outside the mapping.
#![no_main]
#![deny(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use contract::shm::{
    Capacity, ReceptionStats, Rewrite, RouteRecord, SessionRecord, SessionStats, ShmReader,
    ShmWriter, StatRecord, StreamDir, StreamRecord, StreamStats,
};
use contract::srtp::{MasterKey, Profile};
use std::fs::File;
use std::mem::discriminant;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Largest zero-extended raw image (mode bit 2).
const MAX_IMAGE: u64 = 1 << 20;

fn path(tag: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("sluice-fuzz-shm-{}-{tag}", std::process::id()))
}

/// A small valid file: 4 sessions, 4 routes, 1 worker with 4 stream-state and 4 session-stats
/// slots; one session, one route, one stream-state entry and two session-stats entries
/// written, relay info and a heartbeat set. Small enough (about 32 KiB) that the u16 patch
/// offsets reach every byte of it.
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
        let mut w = ShmWriter::create_with_regions(&p, cap, 4, 4).expect("template shm file");
        let key = MasterKey::new(Profile::Aes128CmSha1_80, &[7u8; 30]).expect("30-byte key");
        w.put_session(&SessionRecord {
            id: 1,
            peer: "192.0.2.1:5000".parse().expect("literal address"),
            role: contract::shm::Role::Host,
            rx_key: key,
            tx_key: key,
            key_epoch: 1,
            flags: 0,
            max_pps: 0,
            ice: None,
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
        let r = ShmReader::open(&p).expect("template opens");
        r.set_relay_info(1, "mmsg", 1, 1_700_000_000_000);
        r.heartbeat(0, 1_700_000_000_500);
        assert!(r.put_stream(
            0,
            0,
            &StreamRecord {
                session: 1,
                ssrc: 0x1234,
                dir: StreamDir::In,
                index: 0x1_0005,
                ts: 0,
                rewritten: false,
            },
        ));
        assert!(r.put_stat(
            0,
            0,
            &StatRecord::Session(SessionStats {
                session: 1,
                packets_in: 10,
                auth_failures: 1,
                writer_pid: 1,
                ..SessionStats::default()
            }),
        ));
        assert!(r.put_stat(
            0,
            1,
            &StatRecord::Stream(StreamStats {
                session: 1,
                ssrc: 0x1234,
                dir: StreamDir::In,
                packets: 9,
                bytes: 900,
                last_unix_ms: 1_700_000_000_400,
                published_unix_ms: 1_700_000_000_450,
                writer_pid: 1,
                reception: Some(ReceptionStats {
                    extended_highest: 9,
                    expected: 9,
                    received: 9,
                    clock_rate: 48_000,
                    ..ReceptionStats::default()
                }),
                layer: None,
            }),
        ));
        drop(r);
        drop(w);
        let bytes = std::fs::read(&p).expect("read template");
        let _ = std::fs::remove_file(&p);
        assert!(
            bytes.len() <= usize::from(u16::MAX) + 1,
            "patch offsets reach every byte"
        );
        bytes
    })
}

const PREFIX: &str = "sluice-fuzz-shm-";

/// Remove the files of earlier fuzz processes that have exited.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The input file: created once (mode 0600) and rewritten in place for every input, so an
/// input costs a write and the open under test, not a create and an unlink.
fn input_file() -> &'static (PathBuf, File) {
    static F: OnceLock<(PathBuf, File)> = OnceLock::new();
    F.get_or_init(|| {
        let p = path("input");
        if let Some(dir) = p.parent() {
            remove_stale(dir);
        }
        let _ = std::fs::remove_file(&p);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .expect("create fuzz shm file");
        (p, f)
    })
}

fn write_file(bytes: &[u8]) -> &'static Path {
    let (p, f) = input_file();
    if f.metadata().map(|m| m.len()).ok() != Some(bytes.len() as u64) {
        f.set_len(bytes.len() as u64).expect("size fuzz shm file");
    }
    f.write_all_at(bytes, 0).expect("write fuzz shm file");
    p
}

fn scan(r: &ShmReader) {
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
    let per = r.streams_per_worker();
    for w in 0..cap.workers.min(4) + 1 {
        let _ = r.stream_high_water(w);
        for i in 0..per.min(16) + 1 {
            let _ = r.stream_slot(w, i);
        }
    }
    let st = r.for_each_stream(|_, _, _| {});
    assert!(
        u64::from(st.records + st.invalid + st.busy) <= u64::from(cap.workers) * u64::from(per)
    );
    let per = r.stats_per_worker();
    for w in 0..cap.workers.min(4) + 1 {
        let _ = r.stat_high_water(w);
        for i in 0..per.min(16) + 1 {
            let _ = r.stat_slot(w, i);
        }
    }
    let (d, st) = r.diagnostics();
    assert!(
        u64::from(st.records + st.invalid + st.busy) <= u64::from(cap.workers) * u64::from(per)
    );
    assert!(d.sessions.len() as u64 + u64::from(d.stale) <= u64::from(st.records));
    for w in 0..cap.workers as usize + 1 {
        let _ = r.worker_counters(w);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 0 {
        let mut b = rest.to_vec();
        if mode & 4 != 0 {
            // Zero-extend to the declared file size (header offset 64), within bounds.
            let declared = rest
                .get(64..72)
                .map_or(0, |w| u64::from_ne_bytes(w.try_into().expect("8 bytes")));
            let want = declared.clamp(4096, MAX_IMAGE) as usize;
            if b.len() < want {
                b.resize(want, 0);
            }
        }
        b
    } else {
        let mut t = template().to_vec();
        // Patches: (offset u16 LE, xor byte) triples.
        for c in rest.chunks_exact(3) {
            let off = usize::from(u16::from_le_bytes([c[0], c[1]])) % t.len();
            t[off] ^= c[2];
        }
        t
    };

    // 1. The header checks on the bytes.
    let image = ShmReader::check_image(&bytes);
    if image.is_err() && mode < 0xf0 {
        return;
    }

    // 2. The same image as a file.
    let p = write_file(&bytes);
    match (ShmReader::open(p), &image) {
        (Ok(r), Ok(cap)) => {
            assert_eq!(
                r.capacity(),
                *cap,
                "open and check_image see the same header"
            );
            scan(&r);
        }
        (Err(a), Err(b)) => assert_eq!(
            discriminant(&a),
            discriminant(b),
            "open and check_image refuse alike: {a} / {b}"
        ),
        (a, b) => panic!("open {a:?} but check_image {b:?}"),
    }
    if mode & 2 != 0 {
        // The writer's adopt path repairs what it can; it must not panic either.
        if let Ok(w) = ShmWriter::open_existing(p) {
            let _ = (w.sessions(), w.route(1), w.session(1));
        }
    }
});
