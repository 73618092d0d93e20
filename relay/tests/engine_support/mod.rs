//! Deterministic in-memory harness for the engine (style.md #8): a shared-memory file written
//! by `ShmWriter` in a temp dir, peers with real SRTP keys, and the engine driven directly with
//! datagrams (no sockets, simulated time).
#![allow(dead_code)]

use contract::shm::{
    Capacity, Rewrite, Role, RouteRecord, SessionRecord, ShmReader, ShmWriter, MAX_MAPPINGS,
};
use contract::srtp::{Context, ContextOptions, MasterKey, Profile};
use relay::batch::{TxQueue, MAX_DATAGRAM};
use relay::engine::{Engine, EngineConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "sluice-engine-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn random_key(profile: Profile) -> MasterKey {
    let bytes: Vec<u8> = (0..profile.key_material_len())
        .map(|_| rand::random::<u8>())
        .collect();
    MasterKey::new(profile, &bytes).unwrap()
}

pub fn opts() -> ContextOptions {
    ContextOptions {
        max_streams: 64,
        ..ContextOptions::default()
    }
}

/// One peer: what it encrypts with (the session's rx key) and decrypts with (its tx key).
pub struct Peer {
    pub id: u64,
    pub addr: SocketAddr,
    pub role: Role,
    pub send_key: MasterKey,
    pub recv_key: MasterKey,
    pub send: Context,
    pub recv: Context,
    pub epoch: u32,
}

impl Peer {
    pub fn new(id: u64, addr: SocketAddr, role: Role, profile: Profile) -> Peer {
        let send_key = random_key(profile);
        let recv_key = random_key(profile);
        Peer {
            id,
            addr,
            role,
            send_key,
            recv_key,
            send: Context::new(send_key, opts()).unwrap(),
            recv: Context::new(recv_key, opts()).unwrap(),
            epoch: 1,
        }
    }

    pub fn record(&self) -> SessionRecord {
        SessionRecord {
            id: self.id,
            peer: self.addr,
            role: self.role,
            rx_key: self.send_key,
            tx_key: self.recv_key,
            key_epoch: self.epoch,
            flags: 0,
            max_pps: 0,
            ice: None,
        }
    }

    /// An SRTP packet from this peer.
    pub fn rtp(&mut self, ssrc: u32, seq: u16, ts: u32, pt: u8, payload: &[u8]) -> Vec<u8> {
        let plain = rtp(ssrc, seq, ts, pt, payload);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        buf[..plain.len()].copy_from_slice(&plain);
        let n = self.send.protect_rtp(&mut buf, plain.len()).unwrap();
        buf.truncate(n);
        buf
    }

    /// An SRTCP packet from this peer.
    pub fn rtcp(&mut self, plain: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        buf[..plain.len()].copy_from_slice(plain);
        let n = self.send.protect_rtcp(&mut buf, plain.len()).unwrap();
        buf.truncate(n);
        buf
    }

    pub fn open_rtp(&mut self, d: &[u8]) -> Result<Vec<u8>, contract::srtp::Error> {
        let mut b = d.to_vec();
        b.resize(MAX_DATAGRAM, 0);
        let n = self.recv.unprotect_rtp(&mut b, d.len())?;
        b.truncate(n);
        Ok(b)
    }

    pub fn open_rtcp(&mut self, d: &[u8]) -> Result<Vec<u8>, contract::srtp::Error> {
        let mut b = d.to_vec();
        b.resize(MAX_DATAGRAM, 0);
        let n = self.recv.unprotect_rtcp(&mut b, d.len())?;
        b.truncate(n);
        Ok(b)
    }
}

pub fn rtp(ssrc: u32, seq: u16, ts: u32, pt: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, pt];
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&ssrc.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

pub fn addr(i: u16) -> SocketAddr {
    if i % 2 == 0 {
        SocketAddr::from(([127, 0, 0, 1], 20_000 + i))
    } else {
        format!("[::1]:{}", 20_000 + i).parse().unwrap()
    }
}

pub fn rewrite(ssrc: Option<u32>, pt: Option<(u8, u8)>) -> Rewrite {
    let mut pt_map = [(0u8, 0u8); MAX_MAPPINGS];
    let mut pt_map_len = 0;
    if let Some(m) = pt {
        pt_map[0] = m;
        pt_map_len = 1;
    }
    Rewrite {
        ssrc,
        pt_map,
        pt_map_len,
        ..Rewrite::default()
    }
}

/// Engine + shm writer + transmit queues + simulated clock.
pub struct Rig {
    pub dir: TempDir,
    pub writer: ShmWriter,
    pub reader: Arc<ShmReader>,
    pub engine: Engine,
    pub tx: TxQueue,
    pub slow: TxQueue,
    pub now: Instant,
    next_route: u64,
}

impl Rig {
    pub fn new(tag: &str) -> Rig {
        Rig::with_config(tag, |_| {})
    }

    /// A rig whose engine settings `f` adjusts (from the defaults with [`opts`]).
    pub fn with_config(tag: &str, f: impl FnOnce(&mut EngineConfig)) -> Rig {
        let mut cfg = EngineConfig {
            srtp: opts(),
            ..EngineConfig::default()
        };
        f(&mut cfg);
        let dir = TempDir::new(tag);
        let path = dir.0.join("shm");
        let writer = ShmWriter::create(
            &path,
            Capacity {
                sessions: 256,
                routes: 1024,
                workers: 4,
            },
        )
        .unwrap();
        let reader = Arc::new(ShmReader::open(&path).unwrap());
        let engine = <Engine>::new(reader.clone(), cfg);
        Rig {
            dir,
            writer,
            reader,
            engine,
            tx: TxQueue::with_capacity(1024),
            slow: TxQueue::with_capacity(64),
            now: Instant::now(),
            next_route: 1,
        }
    }

    pub fn add(&mut self, p: &Peer) {
        self.writer.put_session(&p.record()).unwrap();
    }

    pub fn route(&mut self, from: u64, ssrc: Option<u32>, to: u64, rw: Rewrite) -> u64 {
        let id = self.next_route;
        self.next_route += 1;
        self.writer
            .put_route(&RouteRecord {
                id,
                from,
                ssrc,
                to,
                rewrite: rw,
            })
            .unwrap();
        id
    }

    /// One batch: every datagram in, returns what the engine queued (dst, bytes).
    pub fn batch(&mut self, input: &[(SocketAddr, Vec<u8>)]) -> Vec<(SocketAddr, Vec<u8>)> {
        self.now += Duration::from_millis(20);
        self.tx.clear();
        self.slow.clear();
        self.engine.begin_batch(self.now);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        for (src, d) in input {
            let n = d.len().min(MAX_DATAGRAM);
            buf[..n].copy_from_slice(&d[..n]);
            self.engine
                .handle_datagram(*src, &mut buf, n, &mut self.tx, &mut self.slow);
        }
        self.engine.end_batch(self.now);
        (0..self.tx.len())
            .map(|i| (self.tx.metas()[i].dst, self.tx.datagram(i).to_vec()))
            .collect()
    }

    pub fn counters(&self) -> contract::shm::CounterSnapshot {
        self.reader.worker_counters(0).unwrap().snapshot()
    }
}
