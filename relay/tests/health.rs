//! Worker health from outside the worker (relay::health): a worker blocked inside its handler
//! stops turning; the supervisor's samples then show it stuck (and its heartbeat stops), its
//! socket's receive queue filled and the kernel's drops at that socket, all in the worker's shm
//! counter block, from real sockets. Once released it drains, turns again and is no longer
//! stuck; every datagram sent is either handled or counted as a kernel drop.

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use contract::shm::{Capacity, CounterSnapshot, ShmReader, ShmWriter};
use relay::batch::TxQueue;
use relay::health::HealthMonitor;
use relay::io::{BackendChoice, SocketBuffers};
use relay::worker::{spawn_workers, Handler, WorkerConfig, Workers};

/// Blocks on the first datagram until the test releases it; counts what it handles.
struct Blocker {
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
    blocked_once: bool,
    handled: Arc<std::sync::atomic::AtomicU64>,
}

impl Handler for Blocker {
    fn on_datagram(
        &mut self,
        _src: SocketAddr,
        _buf: &mut [u8],
        _len: usize,
        _tx: &mut TxQueue,
        _slow: &mut TxQueue,
    ) {
        if !self.blocked_once {
            self.blocked_once = true;
            let _ = self.entered.send(());
            let _ = self.release.recv();
        }
        self.handled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Worker 0's heartbeat (unix ms).
fn hb(r: &ShmReader) -> u64 {
    r.worker_counters(0).expect("block 0").heartbeat()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Sample until `done` holds for worker 0's counters (or panic after 5 s); returns the
/// counters and what the last sample said about every worker turning.
fn sample_until(
    m: &mut HealthMonitor,
    w: &Workers,
    r: &ShmReader,
    what: &str,
    done: impl Fn(&CounterSnapshot) -> bool,
) -> (CounterSnapshot, bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let turning = m.sample(w, r, Instant::now(), unix_ms());
        let c = r.worker_counters(0).expect("block 0").snapshot();
        if done(&c) {
            return (c, turning);
        }
        assert!(Instant::now() < deadline, "{what}: {c:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// mmsg only. With io_uring this test did not see a filled socket queue within its 5 s: the
/// backend keeps a multishot receive armed over 1024 provided buffers, which presumably takes
/// the flood while the worker is blocked (not investigated; io_uring is not covered here).
#[test]
fn a_blocked_worker_shows_stuck_with_its_queue_full_and_kernel_drops() {
    blocked_worker(BackendChoice::Mmsg);
}

fn blocked_worker(backend: BackendChoice) {
    let dir = std::env::temp_dir().join(format!("sluice-health-{}-{backend}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let shm = dir.join("shm");
    let _ = std::fs::remove_file(&shm);
    let _w = ShmWriter::create(
        &shm,
        Capacity {
            sessions: 4,
            routes: 4,
            workers: 1,
        },
    )
    .expect("create shm");
    let reader = ShmReader::open(&shm).expect("open shm");

    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let handled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let blocker = std::sync::Mutex::new(Some(Blocker {
        entered: entered_tx,
        release: release_rx,
        blocked_once: false,
        handled: handled.clone(),
    }));
    let workers = spawn_workers(
        WorkerConfig {
            bind: "127.0.0.1:0".parse().expect("literal"),
            workers: Some(1),
            backend,
            pin: false,
            // A tiny receive buffer: a few datagrams fill it.
            socket_buffers: SocketBuffers {
                recv: 4096,
                send: 1 << 16,
            },
            ..WorkerConfig::default()
        },
        |_| blocker.lock().expect("lock").take().expect("one worker"),
    )
    .expect("spawn");
    // Dropped before `workers` (reverse declaration order), so a failed assertion releases
    // the blocked worker instead of joining it forever.
    let release_tx = release_tx;
    let addr = workers.local_addr();
    let stuck_after = Duration::from_millis(100);
    let mut m = HealthMonitor::new(1, stuck_after, Instant::now(), false);

    // Idle: turning, heartbeat written, nothing queued, nothing dropped.
    let (c, turning) = sample_until(&mut m, &workers, &reader, "first heartbeat", |c| {
        c.kernel_drops == 0 && hb(&reader) != 0
    });
    assert!(turning);
    assert_eq!(
        (c.stuck, c.stuck_since_unix_ms, c.kernel_drops),
        (0, 0, 0),
        "{c:?}"
    );

    // Block the worker in its handler, then flood its socket.
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    client.send_to(&[1u8; 1000], addr).expect("send");
    entered_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the worker took the first datagram");
    const FLOOD: u64 = 500;
    for _ in 0..FLOOD {
        client.send_to(&[2u8; 1000], addr).expect("send");
    }
    let (c, turning) = sample_until(&mut m, &workers, &reader, "stuck, full, dropping", |c| {
        c.stuck_since_unix_ms != 0 && c.rx_queue_bytes > 0 && c.kernel_drops > 0
    });
    assert!(!turning, "a stuck worker: not every worker is turning");
    assert_eq!(c.stuck, 1, "one episode: {c:?}");
    assert!(c.kernel_drops < FLOOD, "the queue kept some: {c:?}");
    // No heartbeat while stuck.
    let beat = hb(&reader);
    std::thread::sleep(Duration::from_millis(150));
    assert!(!m.sample(&workers, &reader, Instant::now(), unix_ms()));
    assert_eq!(hb(&reader), beat, "heartbeat stopped");

    // Released: it drains everything queued, turns again, and is no longer stuck; each
    // datagram was either handled or dropped by the kernel.
    release_tx.send(()).expect("release");
    let (c, turning) = sample_until(&mut m, &workers, &reader, "drained and turning", |c| {
        c.stuck_since_unix_ms == 0
            && c.rx_queue_bytes == 0
            && handled.load(std::sync::atomic::Ordering::Relaxed) + c.kernel_drops == FLOOD + 1
    });
    assert!(turning);
    assert_eq!(c.stuck, 1, "{c:?}");
    assert!(hb(&reader) > beat, "heartbeat again");
    assert!(c.io.syscalls > 0, "I/O statistics published: {c:?}");
    assert_eq!(c.io.rx_errors, 0, "{c:?}");
    workers.stop().expect("stop");
    let _ = std::fs::remove_dir_all(&dir);
}
