//! contract::shm through its public API: round trips, validation of foreign files, re-adoption,
//! capacity limits, counters and relay info. Files live under the temp dir, never /dev/shm/sluice.

use contract::shm::{
    Capacity, DropReason, Rewrite, Role, RouteRecord, SessionRecord, ShmError, ShmReader,
    ShmWriter, SlotError, Table, ABI_VERSION, MAX_MAPPINGS,
};
use contract::srtp::{MasterKey, Profile};
use std::fs::OpenOptions;
use std::net::{SocketAddr, SocketAddrV6};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A unique temp path, removed on drop.
struct TempPath(PathBuf);
impl TempPath {
    fn new(tag: &str) -> TempPath {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "sluice-shm-test-{}-{}-{}",
            std::process::id(),
            n,
            tag
        ));
        let _ = std::fs::remove_file(&p);
        TempPath(p)
    }
}
impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
impl AsRef<Path> for TempPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

const SMALL: Capacity = Capacity {
    sessions: 8,
    routes: 16,
    workers: 4,
};

fn key(p: Profile, seed: u8) -> MasterKey {
    let bytes: Vec<u8> = (0..p.key_material_len() as u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect();
    MasterKey::new(p, &bytes).unwrap()
}

fn session(id: u64, peer: SocketAddr, role: Role, rx: Profile, tx: Profile) -> SessionRecord {
    SessionRecord {
        id,
        peer,
        role,
        rx_key: key(rx, id as u8),
        tx_key: key(tx, !(id as u8)),
        key_epoch: 0x8000_0000 | id as u32,
        flags: 3,
        max_pps: 5000 + id as u32,
        ice: None,
    }
}

fn route(id: u64, from: u64, to: u64) -> RouteRecord {
    RouteRecord {
        id,
        from,
        ssrc: None,
        to,
        rewrite: Rewrite::default(),
    }
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

#[test]
fn every_session_field_round_trips() {
    let path = TempPath::new("sessions");
    let cap = Capacity {
        sessions: 2 * 5 * 6 * 6,
        ..SMALL
    };
    let mut w = ShmWriter::create(&path, cap).unwrap();
    let v6 = SocketAddr::V6(SocketAddrV6::new(
        "2001:db8::42".parse().unwrap(),
        443,
        0x0001_2345,
        3,
    ));
    let peers = ["203.0.113.9:50000".parse().unwrap(), v6];
    let mut written = Vec::new();
    let mut id = 1;
    for peer in peers {
        for role in Role::ALL {
            for rx in Profile::ALL {
                for tx in Profile::ALL {
                    let r = session(id, peer, role, rx, tx);
                    w.put_session(&r).unwrap();
                    written.push(r);
                    id += 1;
                }
            }
        }
    }
    let reader = ShmReader::open(&path).unwrap();
    let mut seen = Vec::new();
    let rep = reader.for_each_session(|r| seen.push(*r));
    assert_eq!(rep.records as usize, written.len());
    assert_eq!((rep.invalid, rep.busy), (0, 0));
    seen.sort_by_key(|r| r.id);
    assert_eq!(seen, written);
    assert_eq!(w.sessions(), written);
    // Slot access agrees with the scan.
    let mut via_slots = Vec::new();
    for i in 0..reader.capacity().sessions {
        if let Some(r) = reader.session_slot(i).unwrap() {
            via_slots.push(r);
        }
    }
    via_slots.sort_by_key(|r| r.id);
    assert_eq!(via_slots, written);
    assert!(matches!(
        reader.session_slot(cap.sessions),
        Err(ShmError::IndexOutOfRange {
            table: Table::Sessions,
            ..
        })
    ));
}

#[test]
fn every_route_field_round_trips() {
    let path = TempPath::new("routes");
    let mut w = ShmWriter::create(&path, SMALL).unwrap();
    let mut full = Rewrite {
        ssrc: Some(0xfeed_f00d),
        pt_map_len: MAX_MAPPINGS as u8,
        ext_map_len: 3,
        twcc_id: 7,
        ..Rewrite::default()
    };
    for i in 0..MAX_MAPPINGS {
        full.pt_map[i] = (96 + i as u8, 100 + i as u8);
        full.ext_map[i] = (1 + i as u8, 14 - i as u8);
    }
    let routes = [
        route(10, 1, 2),
        RouteRecord {
            id: u64::MAX,
            from: u64::MAX - 1,
            ssrc: Some(0),
            to: 7,
            rewrite: full,
        },
        RouteRecord {
            id: 12,
            from: 3,
            ssrc: Some(u32::MAX),
            to: 4,
            rewrite: Rewrite {
                ssrc: Some(0),
                ..Rewrite::default()
            },
        },
    ];
    for r in &routes {
        w.put_route(r).unwrap();
    }
    let reader = ShmReader::open(&path).unwrap();
    let mut seen = Vec::new();
    reader.for_each_route(|r| seen.push(*r));
    seen.sort_by_key(|r| r.id);
    let mut expected = routes.to_vec();
    expected.sort_by_key(|r| r.id);
    assert_eq!(seen, expected);
    assert_eq!(w.routes(), expected);

    // Invalid routes are refused before they reach the file.
    let mut bad = route(20, 1, 2);
    bad.rewrite.pt_map_len = MAX_MAPPINGS as u8 + 1;
    assert!(matches!(
        w.put_route(&bad),
        Err(ShmError::InvalidRoute(SlotError::MapTooLong(9)))
    ));
    assert!(matches!(
        w.put_route(&route(21, 0, 2)),
        Err(ShmError::InvalidRoute(SlotError::ZeroEndpoint))
    ));
    assert!(matches!(
        w.put_route(&route(0, 1, 2)),
        Err(ShmError::ZeroId {
            table: Table::Routes
        })
    ));
}

#[test]
fn update_in_place_remove_and_reuse_and_table_full() {
    let path = TempPath::new("full");
    let cap = Capacity {
        sessions: 2,
        routes: 1,
        workers: 1,
    };
    let mut w = ShmWriter::create(&path, cap).unwrap();
    let reader = ShmReader::open(&path).unwrap();
    let a = session(
        1,
        "10.0.0.1:1".parse().unwrap(),
        Role::Host,
        Profile::AeadAes128Gcm,
        Profile::AeadAes128Gcm,
    );
    let b = SessionRecord { id: 2, ..a };
    let c = SessionRecord { id: 3, ..a };
    w.put_session(&a).unwrap();
    w.put_session(&b).unwrap();
    let err = w.put_session(&c).unwrap_err();
    assert!(matches!(
        err,
        ShmError::TableFull {
            table: Table::Sessions,
            capacity: 2
        }
    ));
    assert_eq!(err.to_string(), "shm session table is full (2 slots)");
    // Updating an existing id needs no free slot.
    let a2 = SessionRecord { key_epoch: 9, ..a };
    w.put_session(&a2).unwrap();
    assert_eq!(w.session(1), Some(a2));
    assert_eq!(w.session_count(), 2);
    // Remove, then the slot is reused.
    assert!(w.remove_session(1));
    assert!(!w.remove_session(1));
    assert!(reader.session_slot(0).unwrap().is_none());
    w.put_session(&c).unwrap();
    assert_eq!(reader.session_slot(0).unwrap(), Some(c));
    let mut ids = Vec::new();
    reader.for_each_session(|r| ids.push(r.id));
    ids.sort_unstable();
    assert_eq!(ids, [2, 3]);

    w.put_route(&route(5, 2, 3)).unwrap();
    assert!(matches!(
        w.put_route(&route(6, 2, 3)),
        Err(ShmError::TableFull {
            table: Table::Routes,
            capacity: 1
        })
    ));
    assert!(w.remove_route(5));
    w.put_route(&route(6, 3, 2)).unwrap();
    assert_eq!(reader.route_slot(0).unwrap(), Some(route(6, 3, 2)));
    assert!(matches!(
        w.put_session(&SessionRecord { id: 0, ..a }),
        Err(ShmError::ZeroId {
            table: Table::Sessions
        })
    ));
}

#[test]
fn every_mutation_moves_the_generation() {
    let path = TempPath::new("gen");
    let mut w = ShmWriter::create(&path, SMALL).unwrap();
    let r = ShmReader::open(&path).unwrap();
    let s = session(
        1,
        "[::1]:9".parse().unwrap(),
        Role::Viewer,
        Profile::Aes128CmSha1_32,
        Profile::Aes256CmSha1_80,
    );
    let mut last = r.generation();
    let mut step = |r: &ShmReader| {
        let g = r.generation();
        assert!(g > last, "generation {g} did not move past {last}");
        last = g;
    };
    w.put_session(&s).unwrap();
    step(&r);
    w.put_session(&s).unwrap();
    step(&r);
    w.put_route(&route(1, 1, 1)).unwrap();
    step(&r);
    w.remove_route(1);
    step(&r);
    w.remove_session(1);
    step(&r);
    assert_eq!(w.generation(), r.generation());
}

#[test]
fn file_is_created_0600_and_create_refuses_an_existing_file() {
    let path = TempPath::new("mode");
    let w = ShmWriter::create(&path, SMALL).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.len(), SMALL.file_size().unwrap());
    assert_eq!(
        ShmReader::open(&path).unwrap().writer_pid(),
        std::process::id()
    );
    drop(w);
    assert!(matches!(
        ShmWriter::create(&path, SMALL),
        Err(ShmError::Exists { .. })
    ));
    // A file others can read is refused: it holds keys.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = ShmReader::open(&path).unwrap_err();
    assert!(matches!(err, ShmError::Mode { mode: 0o644, .. }), "{err}");
    assert!(err.to_string().contains("must be 0600"));
    assert!(matches!(
        ShmWriter::open_existing(&path),
        Err(ShmError::Mode { .. })
    ));
}

#[test]
fn default_capacity_file_size() {
    let c = Capacity::default();
    assert_eq!((c.sessions, c.routes, c.workers), (16_384, 65_536, 64));
    // 4096 header + 16384 × 320 + 65536 × 128 + 64 × 1216, page-aligned, + one page of
    // stream-state high-water marks + 64 workers × 2048 stream-state slots × 64, + one page of
    // session-stats high-water marks + 64 workers × 8192 session-stats slots × 128
    // (docs/SHM.md).
    assert_eq!(
        c.file_size().unwrap(),
        13_713_408 + 4096 + 8_388_608 + 4096 + 67_108_864
    );
}

#[test]
fn foreign_files_are_refused_with_the_difference_named() {
    let path = TempPath::new("foreign");
    drop(ShmWriter::create(&path, SMALL).unwrap());
    let pristine = std::fs::read(&path).unwrap();
    let restore = || std::fs::write(&path.0, &pristine).unwrap();

    // ABI version (offset 8).
    write_at(path.as_ref(), 8, &(ABI_VERSION + 2).to_le_bytes());
    let err = ShmReader::open(&path).unwrap_err();
    assert!(
        matches!(err, ShmError::Version { file, ours } if file == ABI_VERSION + 2 && ours == ABI_VERSION)
    );
    assert_eq!(
        err.to_string(),
        format!(
            "shm ABI version {}, this build speaks {}: restart both processes on the same release",
            ABI_VERSION + 2,
            ABI_VERSION
        )
    );
    assert!(matches!(
        ShmWriter::open_existing(&path),
        Err(ShmError::Version { .. })
    ));
    restore();

    // Magic (offset 0).
    write_at(path.as_ref(), 0, b"NOTSLUIC");
    assert!(matches!(
        ShmReader::open(&path),
        Err(ShmError::BadMagic { found, .. }) if found == u64::from_le_bytes(*b"NOTSLUIC")
    ));
    restore();

    // Slot size (offset 16).
    write_at(path.as_ref(), 16, &256u32.to_le_bytes());
    let err = ShmReader::open(&path).unwrap_err();
    assert!(matches!(
        err,
        ShmError::Layout {
            field: "session slot size",
            file: 256,
            ours: 320
        }
    ));
    assert!(err
        .to_string()
        .contains("session slot size is 256 in the file, this build uses 320"));
    restore();

    // Capacity that disagrees with the stored offsets (sessions capacity at offset 28).
    write_at(path.as_ref(), 28, &1000u32.to_le_bytes());
    assert!(matches!(
        ShmReader::open(&path),
        Err(ShmError::Layout {
            field: "routes offset",
            ..
        })
    ));
    restore();

    // Absurd capacity.
    write_at(path.as_ref(), 36, &0u32.to_le_bytes());
    assert!(matches!(
        ShmReader::open(&path),
        Err(ShmError::Capacity {
            what: "workers",
            ..
        })
    ));
    restore();
    assert!(ShmReader::open(&path).is_ok());
}

#[test]
fn truncated_and_uninitialised_files_are_refused() {
    let path = TempPath::new("trunc");
    drop(ShmWriter::create(&path, SMALL).unwrap());
    let size = SMALL.file_size().unwrap();
    let f = OpenOptions::new().write(true).open(&path.0).unwrap();
    f.set_len(size - 4096).unwrap();
    let err = ShmReader::open(&path).unwrap_err();
    assert!(
        matches!(err, ShmError::Truncated { len, expected, .. } if len == size - 4096 && expected == size),
        "{err}"
    );
    assert!(matches!(
        ShmWriter::open_existing(&path),
        Err(ShmError::Truncated { .. })
    ));
    f.set_len(100).unwrap();
    assert!(matches!(
        ShmReader::open(&path),
        Err(ShmError::Truncated {
            len: 100,
            expected: 4096,
            ..
        })
    ));
    f.set_len(0).unwrap();
    assert!(matches!(
        ShmReader::open(&path),
        Err(ShmError::NotInitialized { .. })
    ));
    // Right size, no magic yet: a control that is still creating it (or died doing so).
    f.set_len(size).unwrap();
    assert!(matches!(
        ShmReader::open(&path),
        Err(ShmError::NotInitialized { .. })
    ));

    let missing = TempPath::new("missing");
    assert!(matches!(
        ShmReader::open(&missing),
        Err(ShmError::Io { ref source, .. }) if source.kind() == std::io::ErrorKind::NotFound
    ));
    // A file that was never ours.
    let other = TempPath::new("other");
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&other.0)
        .unwrap()
        .write_all_at(&[0xAB; 8192], 0)
        .unwrap();
    assert!(matches!(
        ShmReader::open(&other),
        Err(ShmError::BadMagic { .. })
    ));
}

#[test]
fn control_restart_readopts_without_disturbing_readers() {
    let path = TempPath::new("adopt");
    let mut w = ShmWriter::create(&path, SMALL).unwrap();
    let reader = ShmReader::open(&path).unwrap();
    let sessions: Vec<SessionRecord> = (1..=5)
        .map(|id| {
            session(
                id * 100,
                format!("192.0.2.{id}:40{id}").parse().unwrap(),
                Role::Speaker,
                Profile::AeadAes256Gcm,
                Profile::Aes128CmSha1_80,
            )
        })
        .collect();
    for s in &sessions {
        w.put_session(s).unwrap();
    }
    w.remove_session(300);
    w.put_route(&route(7, 100, 200)).unwrap();
    w.put_route(&route(8, 200, 100)).unwrap();
    // A second writer is refused while the first lives.
    assert!(matches!(
        ShmWriter::open_existing(&path),
        Err(ShmError::WriterActive { .. })
    ));
    let before_sessions = w.sessions();
    let before_routes = w.routes();
    let g1 = reader.generation();
    drop(w); // control exits

    let (mut w2, adopted) = ShmWriter::open_or_create(&path, Capacity::default()).unwrap();
    assert!(adopted);
    assert_eq!(
        w2.capacity(),
        SMALL,
        "an adopted file keeps its own capacity"
    );
    assert_eq!(w2.sessions(), before_sessions);
    assert_eq!(w2.routes(), before_routes);
    let rep = w2.adopt_report();
    assert_eq!((rep.sessions, rep.routes, rep.repaired), (4, 2, 0));
    assert!(reader.generation() > g1);
    // The old reader mapping still sees everything.
    let mut n = 0;
    reader.for_each_session(|_| n += 1);
    assert_eq!(n, 4);
    // The adopted writer updates in place and reuses the freed slot.
    w2.put_session(&SessionRecord {
        max_pps: 1,
        ..sessions[0]
    })
    .unwrap();
    w2.put_session(&SessionRecord {
        id: 999,
        ..sessions[1]
    })
    .unwrap();
    assert_eq!(w2.session_count(), 5);
    assert_eq!(w2.session(100).unwrap().max_pps, 1);
    assert_eq!(reader.session_slot(2).unwrap().map(|r| r.id), Some(999));
}

#[test]
fn adoption_repairs_a_slot_left_mid_write_and_invalid_slots_are_reported() {
    let path = TempPath::new("repair");
    let mut w = ShmWriter::create(&path, SMALL).unwrap();
    for id in 1..=3 {
        w.put_session(&session(
            id,
            "10.1.1.1:1000".parse().unwrap(),
            Role::Trunk,
            Profile::AeadAes128Gcm,
            Profile::AeadAes128Gcm,
        ))
        .unwrap();
    }
    drop(w);
    // Session slots start at 4096 and are 320 bytes: word 0 is the sequence, word 1 the id,
    // word 2 holds family | role << 8 | profiles.
    let slot = |i: u64| 4096 + i * 320;
    write_at(path.as_ref(), slot(0), &7u64.to_le_bytes()); // writer died mid-write
    write_at(path.as_ref(), slot(1) + 16 + 1, &[42]); // role code 42
    let reader = ShmReader::open(&path).unwrap();
    let mut ids = Vec::new();
    let rep = reader.for_each_session(|r| ids.push(r.id));
    assert_eq!(ids, [3]);
    assert_eq!((rep.records, rep.invalid, rep.busy), (1, 1, 1));
    assert!(matches!(
        reader.session_slot(1),
        Err(ShmError::Slot {
            table: Table::Sessions,
            index: 1,
            error: SlotError::BadRole(42)
        })
    ));
    assert!(matches!(
        reader.session_slot(0),
        Err(ShmError::Slot {
            error: SlotError::Busy,
            ..
        })
    ));

    let w = ShmWriter::open_existing(&path).unwrap();
    assert_eq!(w.adopt_report().repaired, 2);
    assert_eq!(w.sessions().iter().map(|r| r.id).collect::<Vec<_>>(), [3]);
    let rep = reader.for_each_session(|_| {});
    assert_eq!((rep.records, rep.invalid, rep.busy), (1, 0, 0));
}

#[test]
fn open_or_create_creates_then_adopts() {
    let path = TempPath::new("ooc");
    let (w, adopted) = ShmWriter::open_or_create(&path, SMALL).unwrap();
    assert!(!adopted);
    assert_eq!(w.adopt_report(), Default::default());
    drop(w);
    let (_w, adopted) = ShmWriter::open_or_create(&path, SMALL).unwrap();
    assert!(adopted);
}

#[test]
fn counters_and_relay_info_are_shared_between_mappings() {
    let path = TempPath::new("counters");
    let _w = ShmWriter::create(&path, SMALL).unwrap();
    let relay = ShmReader::open(&path).unwrap();
    let ctl = ShmReader::open(&path).unwrap();
    assert_eq!(ctl.relay_info().pid, 0);

    relay.set_relay_info(4242, "io_uring", 2, 1_700_000_000_000);
    assert!(relay.heartbeat(0, 1_700_000_000_500));
    assert!(relay.heartbeat(1, 1_700_000_000_600));
    assert!(!relay.heartbeat(4, 1));
    let c0 = relay.worker_counters(0).unwrap();
    let c1 = relay.worker_counters(1).unwrap();
    assert!(relay.worker_counters(4).is_none());
    c0.add_rx(1200);
    c0.add_rx_n(2, 100);
    c0.add_tx(3, 3600);
    c0.drop(DropReason::AuthFailed);
    c0.drop_n(DropReason::NoRoute, 5);
    c0.slow_path_up();
    c0.slow_path_down(1);
    c0.record_batch(32, 1500);
    c0.loop_turn();
    c0.stall();
    c1.add_rx(10);
    c1.drop(DropReason::AuthFailed);
    c1.record_batch(1, 0);

    let info = ctl.relay_info();
    assert_eq!(info.pid, 4242);
    assert_eq!(info.backend, "io_uring");
    assert_eq!(info.workers, 2);
    assert_eq!(info.start_unix_ms, 1_700_000_000_000);
    assert_eq!(
        info.heartbeats_unix_ms,
        [1_700_000_000_500, 1_700_000_000_600]
    );

    let s0 = ctl.worker_counters(0).unwrap().snapshot();
    assert_eq!((s0.packets_in, s0.bytes_in), (3, 1300));
    assert_eq!((s0.packets_out, s0.bytes_out), (3, 3600));
    assert_eq!(s0.dropped(DropReason::AuthFailed), 1);
    assert_eq!(s0.dropped(DropReason::NoRoute), 5);
    assert_eq!(s0.dropped_total(), 6);
    assert_eq!((s0.slow_path_up, s0.slow_path_down), (1, 1));
    assert_eq!((s0.batches, s0.batch_nanos), (1, 1500));
    assert_eq!(s0.batch_hist[5], 1); // 32 = 2^5
    assert_eq!(s0.time_hist[10], 1); // 1024 ≤ 1500 < 2048
    assert_eq!((s0.loop_turns, s0.stalls), (1, 1));

    let mut total = s0;
    total.merge(&ctl.worker_counters(1).unwrap().snapshot());
    assert_eq!(total, ctl.totals());
    assert_eq!(total.packets_in, 4);
    assert_eq!(total.dropped(DropReason::AuthFailed), 2);
    assert_eq!(total.batch_hist[0], 1);
    assert_eq!(total.time_hist[0], 1);

    // Long backend names are cut at a character boundary.
    relay.set_relay_info(1, "mmsg-backend-ééééé", 1, 0);
    assert_eq!(ctl.relay_info().backend, "mmsg-backend-é");
}

#[test]
fn idle_reader_is_woken_by_the_writer() {
    let path = TempPath::new("wake");
    let mut w = ShmWriter::create(&path, SMALL).unwrap();
    let reader = ShmReader::open(&path).unwrap();
    let g0 = reader.generation();
    // Nothing changes: the wait times out and reports the same generation.
    assert_eq!(reader.wait_generation(g0, Duration::from_millis(20)), g0);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let start = Instant::now();
            let g = reader.wait_generation(g0, Duration::from_secs(60));
            (g, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        w.put_route(&route(1, 1, 2)).unwrap();
        let (g, waited) = waiter.join().unwrap();
        assert!(g > g0);
        // Functional check, not a timing benchmark: it was woken, not timed out.
        assert!(waited < Duration::from_secs(60));
    });
}
