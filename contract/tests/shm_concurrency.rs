//! The per-slot sequence lock under fire: one writer rewrites the same slots as fast as it can,
//! every field of every record derived from one counter, while reader threads read in tight
//! loops. A torn read (words from two different writes) would decode to a record that does not
//! match its own counter; the test demands zero of those and zero invalid decodes.

use contract::shm::{
    Capacity, Rewrite, Role, RouteRecord, SessionRecord, ShmError, ShmReader, ShmWriter, SlotError,
    MAX_MAPPINGS,
};
use contract::srtp::{MasterKey, Profile};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SLOTS: u64 = 4;

/// Every field is a function of `n`; the slot's id is `n % SLOTS + 1`.
fn session_from(n: u64) -> SessionRecord {
    let b = n.to_le_bytes();
    let peer = if n % 2 == 0 {
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            n as u16,
        ))
    } else {
        let mut ip = [0u8; 16];
        ip[..8].copy_from_slice(&b);
        ip[8..].copy_from_slice(&(!n).to_le_bytes());
        SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            (n >> 3) as u16,
            n as u32 & 0x000f_ffff,
            (n >> 7) as u32,
        ))
    };
    let key = |p: Profile, salt: u8| {
        let bytes: Vec<u8> = (0..p.key_material_len() as u8)
            .map(|i| b[i as usize % 8] ^ i ^ salt)
            .collect();
        MasterKey::new(p, &bytes).unwrap()
    };
    SessionRecord {
        id: n % SLOTS + 1,
        peer,
        role: Role::ALL[(n % 5) as usize],
        rx_key: key(Profile::ALL[(n % 6) as usize], 0x5a),
        tx_key: key(Profile::ALL[((n / 6) % 6) as usize], 0xa5),
        key_epoch: n as u32,
        flags: (n >> 32) as u32,
        max_pps: !(n as u32),
        ice: None,
    }
}

fn counter_of_session(r: &SessionRecord) -> u64 {
    u64::from(r.key_epoch) | (u64::from(r.flags) << 32)
}

fn route_from(n: u64) -> RouteRecord {
    let b = n.to_le_bytes();
    let mut rw = Rewrite {
        ssrc: (n % 3 != 0).then_some(!(n as u32)),
        pt_map_len: (n % (MAX_MAPPINGS as u64 + 1)) as u8,
        ext_map_len: ((n / 9) % (MAX_MAPPINGS as u64 + 1)) as u8,
        ..Rewrite::default()
    };
    for i in 0..MAX_MAPPINGS {
        rw.pt_map[i] = (b[i], b[7 - i]);
        rw.ext_map[i] = (b[i] ^ 0xff, b[(i + 3) % 8]);
    }
    RouteRecord {
        id: n % SLOTS + 1,
        from: n | 1,
        ssrc: (n % 2 == 0).then_some(n as u32),
        to: (n >> 1) | 1,
        rewrite: rw,
    }
}

#[derive(Default)]
struct Tally {
    reads: u64,
    records: u64,
    torn: u64,
    invalid: u64,
    busy: u64,
    retries: u64,
}

fn check_session(res: Result<Option<SessionRecord>, ShmError>, t: &mut Tally) {
    t.reads += 1;
    match res {
        Ok(None) => {}
        Ok(Some(r)) => {
            t.records += 1;
            if r != session_from(counter_of_session(&r)) {
                t.torn += 1;
            }
        }
        Err(ShmError::Slot {
            error: SlotError::Busy,
            ..
        }) => t.busy += 1,
        Err(_) => t.invalid += 1,
    }
}

fn check_route(res: Result<Option<RouteRecord>, ShmError>, t: &mut Tally) {
    t.reads += 1;
    match res {
        Ok(None) => {}
        Ok(Some(r)) => {
            t.records += 1;
            // `from = n | 1` loses bit 0; `ssrc` presence restores it: Some ⇔ n even.
            let n = (r.from & !1) | u64::from(r.ssrc.is_none());
            if r != route_from(n) {
                t.torn += 1;
            }
        }
        Err(ShmError::Slot {
            error: SlotError::Busy,
            ..
        }) => t.busy += 1,
        Err(_) => t.invalid += 1,
    }
}

#[test]
fn readers_never_see_a_torn_record() {
    let path: PathBuf = std::env::temp_dir().join(format!(
        "sluice-shm-test-{}-concurrency",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let cap = Capacity {
        sessions: SLOTS as u32,
        routes: SLOTS as u32,
        workers: 1,
    };
    let mut writer = ShmWriter::create(&path, cap).unwrap();
    let shared = ShmReader::open(&path).unwrap();
    let stop = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    let run_for = Duration::from_millis(1000);

    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let stop = &stop;
        let writes = &writes;
        s.spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Large counters too, so the high halves of every word change.
                let m = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                writer.put_session(&session_from(m)).unwrap();
                writer.put_route(&route_from(m)).unwrap();
                if n % 64 == 63 {
                    // Exercise remove → re-insert of a slot under the readers' feet.
                    writer.remove_session(m % SLOTS + 1);
                    writer.remove_route(m % SLOTS + 1);
                }
                n += 1;
            }
            writes.store(n, Ordering::Relaxed);
        });
        let mut readers = Vec::new();
        // One thread shares a mapping with the test thread, one has its own.
        readers.push(s.spawn(|| {
            let mut t = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                for i in 0..SLOTS as u32 {
                    check_session(shared.session_slot(i), &mut t);
                    check_route(shared.route_slot(i), &mut t);
                }
            }
            t
        }));
        readers.push(s.spawn(|| {
            let own = ShmReader::open(&path).unwrap();
            let mut t = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let rep = own.for_each_session(|r| {
                    check_session(Ok(Some(*r)), &mut t);
                });
                t.invalid += u64::from(rep.invalid);
                t.busy += u64::from(rep.busy);
                t.retries += rep.retries;
                let rep = own.for_each_route(|r| check_route(Ok(Some(*r)), &mut t));
                t.invalid += u64::from(rep.invalid);
                t.busy += u64::from(rep.busy);
                t.retries += rep.retries;
            }
            t
        }));
        let start = Instant::now();
        while start.elapsed() < run_for {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        readers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let _ = std::fs::remove_file(&path);

    let total = tallies.iter().fold(Tally::default(), |a, t| Tally {
        reads: a.reads + t.reads,
        records: a.records + t.records,
        torn: a.torn + t.torn,
        invalid: a.invalid + t.invalid,
        busy: a.busy + t.busy,
        retries: a.retries + t.retries,
    });
    eprintln!(
        "seqlock stress: {} writes, {} reads, {} records, retries {}, busy {}, torn {}, invalid {}",
        writes.load(Ordering::Relaxed),
        total.reads,
        total.records,
        shared.torn_retries() + total.retries,
        total.busy,
        total.torn,
        total.invalid
    );
    assert!(writes.load(Ordering::Relaxed) > 0);
    assert!(total.records > 0, "readers saw no records at all");
    assert_eq!(total.torn, 0, "torn reads escaped the sequence lock");
    assert_eq!(total.invalid, 0, "a consistent read decoded as invalid");
}

#[test]
fn the_generators_cover_the_encoding() {
    // Guard against a generator that collapses fields: distinct counters give distinct records,
    // and the counter is recoverable from each record.
    for n in [0u64, 1, 2, 63, 1 << 40, u64::MAX] {
        let s = session_from(n);
        assert_eq!(counter_of_session(&s), n);
        let r = route_from(n);
        assert_eq!((r.from & !1) | u64::from(r.ssrc.is_none()), n);
    }
    assert_ne!(session_from(5), session_from(5 + SLOTS));
    assert_ne!(route_from(5), route_from(5 + SLOTS));
}
