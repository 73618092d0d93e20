//! Quick loopback echo throughput of one backend (not the real benchmark, which is
//! `sluice-bench`): an mmsg-driven client keeps `window` datagrams in flight against
//! `worker::Echo` and counts what comes back.
//!
//! cargo run --release -p sluice-relay --example io_echo_bench -- <mmsg|io_uring> [secs] [size] [window]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay::io::mmsg::MmsgBackend;
use relay::io::{self, Backend, BackendChoice, BackendParams, SocketBuffers};
use relay::worker::{spawn_workers, Echo, WorkerConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backend: BackendChoice = args
        .get(1)
        .map(|s| s.as_str())
        .unwrap_or("mmsg")
        .parse()
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(2)
        });
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let secs = num(2, 3);
    let size = num(3, 1200) as usize;
    let window = num(4, 128) as usize;

    let cfg = WorkerConfig {
        bind: "127.0.0.1:0".parse().expect("literal"),
        workers: Some(1),
        backend,
        pin: true,
        ..WorkerConfig::default()
    };
    let w = spawn_workers(cfg, |_| Echo::default()).unwrap_or_else(|e| {
        eprintln!("cannot start {backend}: {e}");
        std::process::exit(1)
    });
    let relay: SocketAddr = w.local_addr();
    let (sock, _) = io::bind_udp(
        "127.0.0.1:0".parse().expect("literal"),
        SocketBuffers::default(),
    )
    .expect("client socket");
    let mut c = MmsgBackend::new(
        sock,
        BackendParams {
            batch: 64,
            tx_capacity: window.max(1),
            recv_buffers: 0,
            ..BackendParams::default()
        },
    )
    .expect("client backend");
    let payload = vec![0x80u8; size];
    let (mut inflight, mut got, mut lost) = (0usize, 0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut last_progress = start;
    while Instant::now() < end {
        while inflight < window && c.tx().push(relay, &payload) {
            inflight += 1;
        }
        c.flush().expect("client send");
        c.wait(Duration::from_millis(1)).expect("client wait");
        let n = c.drain(64, |_, _, _, _| {});
        if n > 0 {
            got += n as u64;
            inflight = inflight.saturating_sub(n);
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_millis(50) {
            lost += inflight as u64;
            inflight = 0;
            last_progress = Instant::now();
        }
    }
    let el = start.elapsed().as_secs_f64();
    let s = w.total();
    w.stop().expect("stop");
    println!(
        "backend={backend} size={size} window={window} secs={el:.1} echoed_pps={:.0} Mbit/s={:.0} lost~{lost} relay_syscalls_per_pkt={:.3} gso_trains={}",
        got as f64 / el,
        got as f64 * size as f64 * 8.0 / el / 1e6,
        s.syscalls as f64 / s.rx_packets.max(1) as f64,
        s.tx_gso_trains
    );
}
