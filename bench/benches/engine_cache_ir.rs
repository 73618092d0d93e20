//! The retransmission cache's cost on the forwarding path in instructions, which a loaded
//! machine does not disturb: the same workload as `benches/engine.rs` (1200-byte packets,
//! AES_CM_128_HMAC_SHA1_80 or AEAD_AES_128_GCM, batches of 256, fan-out 1 or 10, half the
//! routes rewriting), with the cache off or on, timed only inside [`forward`] so that packet
//! generation is left out. Run under callgrind, collecting only in `forward`:
//!
//! ```text
//! cargo bench -p sluice-bench --bench engine_cache_ir --no-run
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*engine_cache_ir*forward*' \
//!     target/release/deps/engine_cache_ir-<hash> FANOUT on|off [cm|gcm]
//! ```
//!
//! Instructions per input packet = the total ÷ (BATCHES × 256). Without valgrind it prints
//! the wall time of the measured part.

use contract::shm::{Rewrite, Role, RouteRecord, SessionRecord};
use contract::srtp::{Context, ContextOptions, MasterKey, Profile};
use relay::batch::{TxQueue, MAX_DATAGRAM};
use relay::engine::{Forwarder, NackConfig};
use std::net::SocketAddr;
use std::time::Instant;

const BATCH: usize = 256;
const BATCHES: usize = 40;
const PAYLOAD: usize = 1200 - 12;

fn key(profile: Profile, seed: u8) -> MasterKey {
    let bytes: Vec<u8> = (0..profile.key_material_len())
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    MasterKey::new(profile, &bytes).expect("length matches the profile")
}

fn opts() -> ContextOptions {
    ContextOptions {
        max_streams: 64,
        ..ContextOptions::default()
    }
}

fn peer(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 5000))
}

/// The measured part: every packet through the forwarder.
#[inline(never)]
fn forward(fwd: &mut Forwarder<Context>, pkts: &[Vec<u8>], tx: &mut TxQueue, fanout: usize) {
    let mut slow = TxQueue::with_capacity(16);
    let mut rx = vec![0u8; MAX_DATAGRAM];
    for batch in pkts.chunks(BATCH) {
        tx.clear();
        for p in batch {
            rx[..p.len()].copy_from_slice(p);
            fwd.handle(peer(0), &mut rx, p.len(), tx, &mut slow);
        }
        assert_eq!(tx.len(), batch.len() * fanout);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let fanout: u16 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let cache = args.next().as_deref() == Some("on");
    let profile = match args.next().as_deref() {
        Some("gcm") => Profile::AeadAes128Gcm,
        _ => Profile::Aes128CmSha1_80,
    };
    let mut sessions = vec![SessionRecord {
        id: 1,
        peer: peer(0),
        role: Role::Speaker,
        rx_key: key(profile, 1),
        tx_key: key(profile, 2),
        key_epoch: 1,
        flags: 0,
        max_pps: 0,
        ice: None,
    }];
    let mut routes = Vec::new();
    for j in 0..fanout {
        let id = 100 + u64::from(j);
        sessions.push(SessionRecord {
            id,
            peer: peer(100 + j),
            role: Role::Viewer,
            rx_key: key(profile, 10 + j as u8),
            tx_key: key(profile, 50 + j as u8),
            key_epoch: 1,
            flags: 0,
            max_pps: 0,
            ice: None,
        });
        routes.push(RouteRecord {
            id: id + 1000,
            from: 1,
            ssrc: None,
            to: id,
            rewrite: Rewrite {
                ssrc: (j % 2 == 0).then_some(0x5000 + u32::from(j)),
                ..Rewrite::default()
            },
        });
    }
    let mut fwd: Forwarder<Context> = Forwarder::new(opts());
    fwd.set_nack(if cache {
        NackConfig::default()
    } else {
        NackConfig::OFF
    });
    fwd.set_now(Instant::now());
    fwd.rebuild(&mut sessions, &mut routes);
    let mut publisher = Context::new(key(profile, 1), opts()).expect("context");
    let mut gen = |seq: u16| {
        let mut p = vec![0u8; MAX_DATAGRAM];
        p[0] = 0x80;
        p[1] = 96;
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
        p[8..12].copy_from_slice(&0x1234u32.to_be_bytes());
        let n = publisher
            .protect_rtp(&mut p, 12 + PAYLOAD)
            .expect("protect");
        p.truncate(n);
        p
    };
    let mut tx = TxQueue::with_capacity(BATCH * usize::from(fanout));
    // Warm-up outside the measured part: contexts, caches and sent maps allocated.
    let warm: Vec<Vec<u8>> = (0..BATCH as u16).map(&mut gen).collect();
    let mut slow = TxQueue::with_capacity(16);
    let mut rx = vec![0u8; MAX_DATAGRAM];
    for p in &warm {
        tx.clear();
        rx[..p.len()].copy_from_slice(p);
        fwd.handle(peer(0), &mut rx, p.len(), &mut tx, &mut slow);
    }
    let pkts: Vec<Vec<u8>> = (BATCH as u16..(BATCH * (BATCHES + 1)) as u16)
        .map(&mut gen)
        .collect();
    let t = Instant::now();
    forward(&mut fwd, &pkts, &mut tx, usize::from(fanout));
    let el = t.elapsed();
    println!(
        "{} fanout {fanout} cache {}: {} packets in {:?} ({:.0} ns/packet)",
        profile.name(),
        if cache { "on" } else { "off" },
        pkts.len(),
        el,
        el.as_nanos() as f64 / pkts.len() as f64
    );
}
