//! Overload (docs/SECURITY.md): a publisher offers far more than the relay can send. One
//! publisher fans out to 24 subscribers that never read (slow consumers), through a worker
//! whose transmit queue holds 32 datagrams, less than one packet's fan-out. Asserted: the
//! worker reads less than it is offered (the kernel drops the rest at its socket); every
//! packet it read reaches every subscriber, its fan-out sent a queue's worth at a time
//! (docs/ENGINE.md "Large fan-outs"), so every routed copy is sent or counted and none is
//! lost to the queue; and the process's live heap does not grow while the overload lasts,
//! measured by a counting global allocator. Its own test binary, one test, so nothing else
//! allocates concurrently.

use contract::shm::{Capacity, DropReason, Rewrite, Role, RouteRecord, ShmReader, ShmWriter};
use contract::srtp::Profile;
use relay::io::BackendChoice;
use relay::worker::WorkerConfig;
use sluice_tests::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Counting;

/// Bytes currently allocated, and the most seen since the last [`reset_peak`].
static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

fn add(n: i64) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn reset_peak() -> i64 {
    let now = LIVE.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

// SAFETY: delegates every call to the system allocator unchanged; only counts bytes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            add(l.size() as i64);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        add(-(l.size() as i64));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let q = unsafe { System.realloc(p, l, n) };
        if !q.is_null() {
            add(n as i64 - l.size() as i64);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const FANOUT: u64 = 24;
const TX_CAPACITY: usize = 32;

#[test]
fn overload_drops_are_counted_and_memory_stays_flat() {
    let dir = TempDir::new("overload");
    let shm = dir.path().join("shm");
    let mut w = ShmWriter::create(
        &shm,
        Capacity {
            sessions: 64,
            routes: 64,
            workers: 1,
        },
    )
    .expect("create shm");
    let profile = Profile::AeadAes128Gcm;
    let mut publisher = Peer::new(1, Role::Speaker, profile);
    w.put_session(&publisher.record()).expect("session");
    let subs: Vec<Peer> = (0..FANOUT)
        .map(|j| Peer::new(100 + j, Role::Viewer, profile))
        .collect();
    for s in &subs {
        w.put_session(&s.record()).expect("session");
        w.put_route(&RouteRecord {
            id: s.id,
            from: publisher.id,
            ssrc: None,
            to: s.id,
            rewrite: Rewrite::default(),
        })
        .expect("route");
    }
    let reader = Arc::new(ShmReader::open(&shm).expect("open shm"));
    let workers = relay_workers(
        reader.clone(),
        WorkerConfig {
            bind: "127.0.0.1:0".parse().expect("literal address"),
            workers: Some(1),
            backend: BackendChoice::Mmsg,
            batch: 64,
            tx_capacity: TX_CAPACITY,
            pin: false,
            ..WorkerConfig::default()
        },
        None,
    );
    let relay = workers.local_addr();
    let payload = [0x5a; 1000];

    // Warm-up at a rate the worker can drain: every session's SRTP state exists afterwards.
    let mut seq = 0u16;
    for _ in 0..200 {
        publisher.send_rtp(relay, 0x1111, seq, &payload);
        seq = seq.wrapping_add(1);
        std::thread::sleep(Duration::from_micros(200));
    }
    let wait_settled = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        // Loop-turn and heartbeat counters move while idle; packet counters do not.
        let key = |t: &contract::shm::CounterSnapshot| (t.packets_in, t.packets_out, t.drops);
        let mut last = reader.totals();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let t = reader.totals();
            if key(&t) == key(&last) {
                return t;
            }
            assert!(Instant::now() < deadline, "{what}: counters never settled");
            last = t;
        }
    };
    let warm = wait_settled("warm-up");
    assert!(warm.packets_out > 0, "warm-up forwarded nothing: {warm:?}");
    let base = reset_peak();

    // Overload: 40,000 packets as fast as one thread can send, in bursts; each is worth 24
    // copies, and the subscribers never read.
    let offered = 40_000u32;
    for i in 0..offered {
        publisher.send_rtp(relay, 0x1111, seq, &payload);
        seq = seq.wrapping_add(1);
        if i % 2_000 == 1_999 {
            // Keep the kernel from dropping everything at the relay's socket, so the engine
            // itself sees the overload.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let after = wait_settled("overload");
    let peak = PEAK.load(Ordering::Relaxed);
    let end = LIVE.load(Ordering::Relaxed);
    workers.stop().expect("clean stop");

    let d = |t: &contract::shm::CounterSnapshot, r: DropReason| t.drops[r as usize];
    let routed = (after.packets_in - warm.packets_in)
        - (after.drops.iter().sum::<u64>()
            - warm.drops.iter().sum::<u64>()
            - (d(&after, DropReason::TxQueueFull) - d(&warm, DropReason::TxQueueFull))
            - (d(&after, DropReason::SendError) - d(&warm, DropReason::SendError)));
    let sent = after.packets_out - warm.packets_out;
    let full = d(&after, DropReason::TxQueueFull) - d(&warm, DropReason::TxQueueFull);
    let send_err = d(&after, DropReason::SendError) - d(&warm, DropReason::SendError);
    eprintln!(
        "overload: offered {offered}, received {}, routed {routed}, copies sent {sent}, \
         TxQueueFull {full}, SendError {send_err}; heap base {base} B, peak +{} B, end +{} B",
        after.packets_in - warm.packets_in,
        peak - base,
        end - base
    );
    // The kernel drops what the worker cannot read in time (not the relay's to count; a
    // debug build reads about a fifth of the offer); what it did read must still be plenty.
    assert!(
        after.packets_in - warm.packets_in >= 1_000,
        "the relay saw too little of the load to overload it"
    );
    let received = after.packets_in - warm.packets_in;
    assert!(
        received < u64::from(offered),
        "the relay read all {offered} packets: no overload"
    );
    // A fan-out larger than the queue resumes after each send instead of dropping.
    assert_eq!(full, 0, "copies lost to a full transmit queue");
    // Beside the copies, the relay sends packets of its own (here, now and then, a receiver
    // report to the publisher): the copies are `sent` less at most those.
    let own = |t: &contract::shm::CounterSnapshot| -> u64 {
        use contract::shm::Feedback as F;
        [
            F::SrSent,
            F::RrSent,
            F::Retransmitted,
            F::RtxSent,
            F::NackUpstream,
            F::TwccSent,
            F::RembSent,
            F::ProbePacket,
            F::LayerKeyframeRequest,
            F::PliOnJoin,
        ]
        .into_iter()
        .map(|f| t.feedback(f))
        .sum()
    };
    let generated = own(&after) - own(&warm);
    assert!(
        sent + full + send_err >= routed * FANOUT
            && sent + full + send_err <= routed * FANOUT + generated,
        "every routed copy is sent or counted: {sent} sent, {full} full, {send_err} send \
         errors for {routed} × {FANOUT} copies, {generated} packets of the relay's own"
    );
    // Bounded queues: no per-packet or per-drop allocation survives, and the peak during the
    // overload stays within a small constant of the warmed-up heap (log lines and thread
    // stacks of the test harness, not proportional to the 960,000 copies offered).
    assert!(
        peak - base < 256 * 1024,
        "heap grew by {} B under overload",
        peak - base
    );
    assert!(end - base < 64 * 1024, "heap kept {} B", end - base);
}
