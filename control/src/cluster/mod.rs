//! Several control nodes sharing one Redis (or Valkey): a registry of live nodes and the
//! placement of each room on one node (docs/CLUSTER.md).
//!
//! Each node writes its [`NodeInfo`] (id, region, URLs, media address, load) with a TTL on
//! every heartbeat. The first join of a room places it atomically ([`registry::PLACE`]): on
//! the node chosen by region and load, or on the owner already recorded when that node is
//! still alive. The owner refreshes its rooms on every heartbeat; a node that dies stops
//! refreshing, its entries expire, and the next join places the room again. WHIP/WHEP for a
//! room owned elsewhere is forwarded by the receiving node ([`forward`]), `Authorization`
//! included, since browsers drop it on a cross-origin redirect.
//!
//! Redis unreachable: rooms this node owns keep being served (their joins need no Redis);
//! a join that needs a placement is refused with `cluster_unavailable`; the heartbeat keeps
//! trying and, when Redis answers again, writes the node and its rooms back.
//!
//! Redis is spoken through the `redis` crate on a small tokio runtime of the cluster's own
//! (one worker), so that a slow or absent Redis never holds the HTTP listeners' workers;
//! handlers, which run on blocking threads, wait on it with a bounded timeout.
//!
//! May not touch: shm and the journal (the core does), the packet path.

pub mod auth;
pub mod forward;
pub mod registry;
pub mod trunk;

use crate::core::{Core, CoreError};
use crate::http::process;
use contract::config::{ClusterConfig, Secret};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, AsyncConnectionConfig, Script};
use registry::{Keys, Load, NodeInfo};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long connecting to Redis, or one command, may take before the node treats Redis as
/// unavailable.
const REDIS_TIMEOUT: Duration = Duration::from_millis(1_000);
/// At most this many keys are read from one scan of the registry (nodes or rooms).
const MAX_SCAN_KEYS: usize = 100_000;

/// Why a cluster operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("the cluster registry (Redis) is unreachable: {0}")]
    Unavailable(String),
    #[error("node {0} owns the room but is not in the registry")]
    OwnerUnknown(String),
    #[error("the registry holds a malformed entry {key}: {message}")]
    Malformed { key: String, message: String },
    #[error("forwarding to node {node} failed: {message}")]
    Forward { node: String, message: String },
}

impl ClusterError {
    /// A stable name for the JSON `reason` of a refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            ClusterError::Unavailable(_) => "cluster_unavailable",
            ClusterError::OwnerUnknown(_) => "owner_unknown",
            ClusterError::Malformed { .. } => "registry_malformed",
            ClusterError::Forward { .. } => "owner_unreachable",
        }
    }
}

fn redis_err(e: redis::RedisError) -> ClusterError {
    ClusterError::Unavailable(e.to_string())
}

/// Where a join goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// This node owns the room; `placed` when this call made it the owner.
    Local { placed: bool },
    /// Another node owns it.
    Remote(NodeInfo),
}

/// A room this node owns.
#[derive(Debug, Clone)]
struct Owned {
    app: String,
    room: String,
    /// When it was placed here (a room with no participant yet is kept this long).
    placed_ms: u64,
}

/// The cluster's counters (`/metrics`: `sluice_cluster_*`).
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub heartbeats_ok: AtomicU64,
    pub heartbeats_failed: AtomicU64,
    /// Joins for a room this node already owned.
    pub joins_owned: AtomicU64,
    /// Rooms placed on this node by a join it received.
    pub placed_here: AtomicU64,
    /// Rooms a join this node received placed (or found) on another node.
    pub placed_remote: AtomicU64,
    /// Joins refused because no placement could be made.
    pub placements_refused: AtomicU64,
    pub forwarded_ok: AtomicU64,
    pub forwarded_failed: AtomicU64,
    /// Rooms this node believed it owned and found owned by another node.
    pub ownership_conflicts: AtomicU64,
    /// Rooms given up because they stayed empty.
    pub rooms_released: AtomicU64,
}

/// A point-in-time view of the cluster for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ClusterGauges {
    pub redis_up: bool,
    pub nodes: u64,
    pub rooms_owned: u64,
}

/// One node's membership in a cluster.
pub struct Cluster {
    cfg: ClusterConfig,
    keys: Keys,
    rt: tokio::runtime::Runtime,
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    owned: Mutex<BTreeMap<String, Owned>>,
    /// The live nodes the last heartbeat read.
    nodes: Mutex<Vec<NodeInfo>>,
    /// This node's entry as the last heartbeat wrote it.
    me: Mutex<NodeInfo>,
    redis_up: AtomicBool,
    pub stats: ClusterStats,
    place: Script,
    refresh: Script,
    release: Script,
    /// Signs and verifies node-to-node requests; `None` without `cluster.secret_file`.
    pub auth: Option<auth::Authenticator>,
    /// Trunks on both sides ([`trunk`]).
    book: Mutex<trunk::Book>,
    /// Held while an edge opens a trunk room (one request per room, whatever the viewers).
    opening: Mutex<()>,
    pub trunk_stats: trunk::TrunkStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    crate::core::lock(m)
}

impl Cluster {
    /// Set up this node's membership; makes no connection yet (the first heartbeat does).
    pub fn new(cfg: &ClusterConfig, secret: Option<&Secret>) -> Result<Cluster, ClusterError> {
        let client = redis::Client::open(cfg.redis_url.expose()).map_err(|e| {
            // The URL may hold a password: only the error's kind is shown.
            ClusterError::Unavailable(format!("cluster.redis_url: {:?}", e.kind()))
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cluster")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| ClusterError::Unavailable(format!("runtime: {e}")))?;
        Ok(Cluster {
            keys: Keys::new(&cfg.key_prefix),
            rt,
            client,
            conn: Mutex::new(None),
            owned: Mutex::new(BTreeMap::new()),
            nodes: Mutex::new(Vec::new()),
            me: Mutex::new(NodeInfo {
                node_id: cfg.node_id.clone(),
                region: cfg.region.clone(),
                public_url: String::new(),
                advertise_url: cfg.advertise_url.clone(),
                media_addr: String::new(),
                load: Load::default(),
                heartbeat_ms: 0,
            }),
            redis_up: AtomicBool::new(false),
            stats: ClusterStats::default(),
            place: Script::new(registry::PLACE),
            refresh: Script::new(registry::REFRESH),
            release: Script::new(registry::RELEASE),
            auth: secret.map(|s| {
                auth::Authenticator::new(
                    s.expose().as_bytes(),
                    &cfg.node_id,
                    u64::from(cfg.auth_window_ms),
                )
            }),
            book: Mutex::new(trunk::Book::default()),
            opening: Mutex::new(()),
            trunk_stats: trunk::TrunkStats::default(),
            cfg: cfg.clone(),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    /// The URLs this node announces; the advertise URL defaults to the public one.
    pub fn set_urls(&self, public_url: &str, media_addr: &str) {
        let mut me = lock(&self.me);
        me.public_url = public_url.to_string();
        me.media_addr = media_addr.to_string();
        if me.advertise_url.is_empty() {
            me.advertise_url = public_url.to_string();
        }
    }

    fn ttl_ms(&self) -> u64 {
        u64::from(self.cfg.entry_ttl_ms)
    }

    /// Run `f` on the cluster's runtime and wait for it (from any thread that is not one of
    /// that runtime's workers).
    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// A connection to Redis: the one open, or a new one.
    async fn conn(&self) -> Result<MultiplexedConnection, ClusterError> {
        if let Some(c) = lock(&self.conn).clone() {
            return Ok(c);
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT);
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(redis_err)?;
        *lock(&self.conn) = Some(c.clone());
        Ok(c)
    }

    /// Note the outcome of a Redis operation: a failure drops the connection (the next
    /// operation connects again) and marks Redis down.
    fn seen<T>(&self, r: Result<T, ClusterError>) -> Result<T, ClusterError> {
        if let Err(ClusterError::Unavailable(_)) = &r {
            *lock(&self.conn) = None;
            self.redis_up.store(false, Ordering::Relaxed);
        }
        r
    }

    /// Where a join for `app`/`room` goes, at `now_ms`: here when this node owns the room
    /// (no Redis needed, so owned rooms are served while Redis is away), else the owner
    /// Redis records, or the node placement chooses now.
    pub fn place(&self, app: &str, room: &str, now_ms: u64) -> Result<Placement, ClusterError> {
        let key = self.keys.room(app, room);
        if lock(&self.owned).contains_key(&key) {
            self.stats.joins_owned.fetch_add(1, Ordering::Relaxed);
            return Ok(Placement::Local { placed: false });
        }
        let r = self.block_on(self.place_in_redis(&key));
        let (owner, placed) = match self.seen(r) {
            Ok(v) => v,
            Err(e) => {
                self.stats
                    .placements_refused
                    .fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        if owner == self.cfg.node_id {
            lock(&self.owned).insert(
                key,
                Owned {
                    app: app.to_string(),
                    room: room.to_string(),
                    placed_ms: now_ms,
                },
            );
            self.stats.placed_here.fetch_add(1, Ordering::Relaxed);
            return Ok(Placement::Local { placed });
        }
        let info = self.block_on(self.node_info(&owner));
        match self.seen(info) {
            Ok(n) => {
                self.stats.placed_remote.fetch_add(1, Ordering::Relaxed);
                Ok(Placement::Remote(n))
            }
            Err(e) => {
                self.stats
                    .placements_refused
                    .fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Run [`registry::PLACE`] for a room with the candidate [`registry::choose`] names.
    async fn place_in_redis(&self, key: &str) -> Result<(String, bool), ClusterError> {
        let mut c = self.conn().await?;
        let candidate = {
            let mut nodes = lock(&self.nodes).clone();
            let me = lock(&self.me).clone();
            if !nodes.iter().any(|n| n.node_id == me.node_id) {
                nodes.push(me);
            }
            registry::choose(&nodes, &self.cfg.node_id, &self.cfg.region)
                .map_or_else(|| self.cfg.node_id.clone(), |n| n.node_id.clone())
        };
        let (owner, placed): (String, i64) = self
            .place
            .key(key)
            .arg(&candidate)
            .arg(self.ttl_ms())
            .arg(self.keys.node_prefix())
            .invoke_async(&mut c)
            .await
            .map_err(redis_err)?;
        Ok((owner, placed == 1))
    }

    /// A node's registry entry (the heartbeat's copy when it has one).
    async fn node_info(&self, id: &str) -> Result<NodeInfo, ClusterError> {
        if let Some(n) = lock(&self.nodes).iter().find(|n| n.node_id == id) {
            return Ok(n.clone());
        }
        let mut c = self.conn().await?;
        let key = self.keys.node(id);
        let v: Option<String> = c.get(&key).await.map_err(redis_err)?;
        let v = v.ok_or_else(|| ClusterError::OwnerUnknown(id.to_string()))?;
        parse_node(&key, &v)
    }

    /// Whether this node owns `app`/`room` (the core admits joins only for those).
    pub fn owns(&self, app: &str, room: &str) -> bool {
        lock(&self.owned).contains_key(&self.keys.room(app, room))
    }

    /// One heartbeat at `now_ms`: write this node's entry with `load`, keep the rooms it
    /// owns (`live`: rooms with a participant here), give up those that stayed empty, and
    /// read the live nodes. Returns the rooms found owned by another node (conflicts).
    pub fn heartbeat(
        &self,
        load: Load,
        live: &BTreeSet<(String, String)>,
        now_ms: u64,
    ) -> Result<Vec<(String, String, String)>, ClusterError> {
        {
            let mut owned = lock(&self.owned);
            for (app, room) in live {
                owned
                    .entry(self.keys.room(app, room))
                    .or_insert_with(|| Owned {
                        app: app.clone(),
                        room: room.clone(),
                        placed_ms: now_ms,
                    });
            }
        }
        let me = {
            let mut me = lock(&self.me);
            me.load = load;
            me.heartbeat_ms = now_ms;
            me.clone()
        };
        let r = self.block_on(self.beat(&me, live, now_ms));
        let r = self.seen(r);
        match &r {
            Ok(_) => {
                self.stats.heartbeats_ok.fetch_add(1, Ordering::Relaxed);
                self.redis_up.store(true, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    async fn beat(
        &self,
        me: &NodeInfo,
        live: &BTreeSet<(String, String)>,
        now_ms: u64,
    ) -> Result<Vec<(String, String, String)>, ClusterError> {
        let mut c = self.conn().await?;
        let ttl = self.ttl_ms();
        let body = serde_json::to_string(me)
            .map_err(|e| ClusterError::Unavailable(format!("node entry: {e}")))?;
        let _: () = redis::cmd("SET")
            .arg(self.keys.node(&me.node_id))
            .arg(body)
            .arg("PX")
            .arg(ttl)
            .query_async(&mut c)
            .await
            .map_err(redis_err)?;
        let owned: Vec<(String, Owned)> = lock(&self.owned)
            .iter()
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        let mut conflicts = Vec::new();
        for (key, o) in owned {
            let in_use = live.contains(&(o.app.clone(), o.room.clone()));
            if !in_use && now_ms.saturating_sub(o.placed_ms) >= ttl {
                let _: i64 = self
                    .release
                    .key(&key)
                    .arg(&me.node_id)
                    .invoke_async(&mut c)
                    .await
                    .map_err(redis_err)?;
                lock(&self.owned).remove(&key);
                self.stats.rooms_released.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let owner: String = self
                .refresh
                .key(&key)
                .arg(&me.node_id)
                .arg(ttl)
                .invoke_async(&mut c)
                .await
                .map_err(redis_err)?;
            if owner != me.node_id {
                lock(&self.owned).remove(&key);
                self.stats
                    .ownership_conflicts
                    .fetch_add(1, Ordering::Relaxed);
                conflicts.push((o.app, o.room, owner));
            }
        }
        let nodes = self.scan_nodes(&mut c).await?;
        *lock(&self.nodes) = nodes;
        Ok(conflicts)
    }

    /// Every live node's entry.
    async fn scan_nodes(
        &self,
        c: &mut MultiplexedConnection,
    ) -> Result<Vec<NodeInfo>, ClusterError> {
        let keys = scan(c, &self.keys.node_pattern()).await?;
        let values = mget(c, &keys).await?;
        let mut nodes = Vec::with_capacity(keys.len());
        for (k, v) in keys.iter().zip(values) {
            // A key that expired between SCAN and MGET is simply gone.
            if let Some(v) = v {
                nodes.push(parse_node(k, &v)?);
            }
        }
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    /// Leave the cluster: this node's entry and the rooms it owns are removed, so the next
    /// join places them elsewhere at once instead of after the TTL.
    pub fn leave(&self) {
        let owned: Vec<String> = std::mem::take(&mut *lock(&self.owned))
            .into_keys()
            .collect();
        let r = self.block_on(async {
            let mut c = self.conn().await?;
            for key in &owned {
                let _: i64 = self
                    .release
                    .key(key)
                    .arg(&self.cfg.node_id)
                    .invoke_async(&mut c)
                    .await
                    .map_err(redis_err)?;
            }
            let _: i64 = c
                .del(self.keys.node(&self.cfg.node_id))
                .await
                .map_err(redis_err)?;
            Ok::<(), ClusterError>(())
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "cluster: could not leave the registry; its entries expire");
        }
    }

    /// `GET /v1/cluster`: this node, the live nodes and every placed room with its owner,
    /// read from Redis now.
    pub fn status(&self) -> Result<Value, ClusterError> {
        let r = self.block_on(async {
            let mut c = self.conn().await?;
            let nodes = self.scan_nodes(&mut c).await?;
            let keys = scan(&mut c, &self.keys.room_pattern()).await?;
            let owners = mget(&mut c, &keys).await?;
            let mut rooms = Vec::new();
            for (k, o) in keys.iter().zip(owners) {
                if let (Some((app, room)), Some(owner)) = (self.keys.parse_room(k), o) {
                    rooms.push(json!({"app": app, "room": room, "owner": owner}));
                }
            }
            rooms.sort_by(|a, b| {
                (a["app"].as_str(), a["room"].as_str())
                    .cmp(&(b["app"].as_str(), b["room"].as_str()))
            });
            Ok::<_, ClusterError>((nodes, rooms))
        });
        let (nodes, rooms) = self.seen(r)?;
        Ok(json!({
            "node_id": self.cfg.node_id,
            "region": self.cfg.region,
            "redis": "up",
            "nodes": nodes,
            "rooms": rooms,
        }))
    }

    pub fn gauges(&self) -> ClusterGauges {
        ClusterGauges {
            redis_up: self.redis_up.load(Ordering::Relaxed),
            nodes: lock(&self.nodes).len() as u64,
            rooms_owned: lock(&self.owned).len() as u64,
        }
    }

    pub fn redis_up(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
    }
}

fn parse_node(key: &str, v: &str) -> Result<NodeInfo, ClusterError> {
    serde_json::from_str(v).map_err(|e| ClusterError::Malformed {
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// Every key matching `pattern` (SCAN, at most [`MAX_SCAN_KEYS`]).
async fn scan(c: &mut MultiplexedConnection, pattern: &str) -> Result<Vec<String>, ClusterError> {
    let mut cursor: u64 = 0;
    let mut out = BTreeSet::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(512)
            .query_async(c)
            .await
            .map_err(redis_err)?;
        out.extend(keys);
        if next == 0 || out.len() >= MAX_SCAN_KEYS {
            break;
        }
        cursor = next;
    }
    Ok(out.into_iter().take(MAX_SCAN_KEYS).collect())
}

async fn mget(
    c: &mut MultiplexedConnection,
    keys: &[String],
) -> Result<Vec<Option<String>>, ClusterError> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(512) {
        let v: Vec<Option<String>> = redis::cmd("MGET")
            .arg(chunk)
            .query_async(c)
            .await
            .map_err(redis_err)?;
        out.extend(v);
    }
    Ok(out)
}

/// The heartbeat thread: every `cluster.heartbeat_ms`, the node's load and live rooms go
/// to [`Cluster::heartbeat`]; Redis going away and coming back is logged and audited once
/// per change. Stops when `stop` is set, then leaves the registry. Trunk upkeep
/// ([`Cluster::trunk_tick`], which waits on other nodes' controls) runs on a thread of its
/// own at the same pace, so a slow or silent origin never delays the registry heartbeat.
pub fn spawn_heartbeat(
    cluster: Arc<Cluster>,
    core: Arc<Core>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let trunks = {
        let (cluster, core, stop) = (cluster.clone(), core.clone(), stop.clone());
        std::thread::Builder::new()
            .name("cluster-trunks".into())
            .spawn(move || {
                let every = Duration::from_millis(u64::from(cluster.cfg.heartbeat_ms));
                while !stop.load(Ordering::SeqCst) {
                    cluster.trunk_tick(&core, crate::clock::unix_ms());
                    let until = std::time::Instant::now() + every;
                    while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(50).min(every));
                    }
                }
            })?
    };
    std::thread::Builder::new()
        .name("cluster-heartbeat".into())
        .spawn(move || {
            let every = Duration::from_millis(u64::from(cluster.cfg.heartbeat_ms));
            let mut meter = LoadMeter::default();
            let mut was_up: Option<bool> = None;
            while !stop.load(Ordering::SeqCst) {
                let now = crate::clock::unix_ms();
                let load = meter.sample(&core, now);
                // Rooms served here from a trunk are the origin's, not this node's.
                // Rooms this node carries to edges stay placed here.
                let live: BTreeSet<(String, String)> = core
                    .members()
                    .into_iter()
                    .filter(|m| !cluster.edge_serves(&m.app, &m.room))
                    .map(|m| (m.app, m.room))
                    .chain(cluster.origin_rooms())
                    .collect();
                let r = cluster.heartbeat(load, &live, now);
                let up = r.is_ok();
                match r {
                    Ok(conflicts) => {
                        for (app, room, owner) in conflicts {
                            tracing::warn!(%app, %room, %owner, "cluster: a room this node served is owned by another node");
                            core.audit.record(
                                "cluster",
                                "cluster.conflict",
                                json!({"app": app, "room": room, "owner": owner}),
                                409,
                                "room owned by another node",
                            );
                        }
                    }
                    Err(e) if was_up != Some(false) => {
                        tracing::error!(error = %e, "cluster: registry unreachable; serving owned rooms, refusing new placements");
                        core.audit.record("cluster", "cluster.redis", json!({"up": false}), 503, &e.to_string());
                    }
                    Err(_) => {}
                }
                if up && was_up != Some(true) {
                    tracing::info!(node = %cluster.cfg.node_id, "cluster: registered");
                    core.audit.record("cluster", "cluster.redis", json!({"up": true, "node": cluster.cfg.node_id}), 200, "ok");
                }
                was_up = Some(up);
                let until = std::time::Instant::now() + every;
                while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50).min(every));
                }
            }
            // Trunk upkeep ends before the node leaves (its last call is bounded).
            let _ = trunks.join();
            cluster.leave();
        })
}

/// Turns the core's counters into a [`Load`]: rates over the interval since the last sample.
#[derive(Default)]
struct LoadMeter {
    last_ms: u64,
    last_packets: u64,
    last_cpu: f64,
}

impl LoadMeter {
    fn sample(&mut self, core: &Core, now_ms: u64) -> Load {
        let (sessions, capacity, packets) = {
            let g = core.ledger();
            let sessions = g.store.state().sessions.len() as u64;
            let capacity = g
                .shm
                .as_ref()
                .map_or(0, |s| u64::from(s.capacity().sessions));
            let packets = g.reader.as_ref().map_or(0, |r| r.totals().packets_out);
            (sessions, capacity, packets)
        };
        let rooms = core
            .members()
            .into_iter()
            .map(|m| (m.app, m.room))
            .collect::<BTreeSet<_>>()
            .len() as u64;
        let cpu = process::sample(std::process::id()).map_or(0.0, |s| s.cpu_seconds);
        let dt_ms = now_ms.saturating_sub(self.last_ms);
        let (pps, cpu_percent) = if self.last_ms == 0 || dt_ms == 0 {
            (0, 0)
        } else {
            let pps = packets.saturating_sub(self.last_packets) * 1000 / dt_ms;
            let busy = (cpu - self.last_cpu).max(0.0) * 1000.0 / dt_ms as f64;
            (pps, (busy * 100.0).round() as u32)
        };
        self.last_ms = now_ms;
        self.last_packets = packets;
        self.last_cpu = cpu;
        Load {
            sessions,
            free_sessions: capacity.saturating_sub(sessions),
            rooms,
            packets_per_sec: pps,
            cpu_percent,
        }
    }
}

impl Cluster {
    /// Prometheus text for the `sluice_cluster_*` families.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let g = self.gauges();
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut o = String::new();
        // Writing into a String cannot fail.
        let _ = write!(
            o,
            "# HELP sluice_cluster_redis_up 1 when the last exchange with the cluster registry succeeded.\n\
             # TYPE sluice_cluster_redis_up gauge\n\
             sluice_cluster_redis_up {}\n\
             # HELP sluice_cluster_nodes Live nodes the last heartbeat read from the registry.\n\
             # TYPE sluice_cluster_nodes gauge\n\
             sluice_cluster_nodes {}\n\
             # HELP sluice_cluster_rooms_owned Rooms placed on this node.\n\
             # TYPE sluice_cluster_rooms_owned gauge\n\
             sluice_cluster_rooms_owned {}\n\
             # HELP sluice_cluster_heartbeats_total Registry heartbeats by outcome.\n\
             # TYPE sluice_cluster_heartbeats_total counter\n\
             sluice_cluster_heartbeats_total{{result=\"ok\"}} {}\n\
             sluice_cluster_heartbeats_total{{result=\"failed\"}} {}\n\
             # HELP sluice_cluster_joins_total WHIP/WHEP joins this node received, by where the room was.\n\
             # TYPE sluice_cluster_joins_total counter\n\
             sluice_cluster_joins_total{{placement=\"owned\"}} {}\n\
             sluice_cluster_joins_total{{placement=\"placed_here\"}} {}\n\
             sluice_cluster_joins_total{{placement=\"remote\"}} {}\n\
             sluice_cluster_joins_total{{placement=\"refused\"}} {}\n\
             # HELP sluice_cluster_forwarded_total Joins forwarded to the owning node, by outcome.\n\
             # TYPE sluice_cluster_forwarded_total counter\n\
             sluice_cluster_forwarded_total{{result=\"ok\"}} {}\n\
             sluice_cluster_forwarded_total{{result=\"failed\"}} {}\n\
             # HELP sluice_cluster_ownership_conflicts_total Rooms served here found owned by another node.\n\
             # TYPE sluice_cluster_ownership_conflicts_total counter\n\
             sluice_cluster_ownership_conflicts_total {}\n\
             # HELP sluice_cluster_rooms_released_total Rooms given up because they stayed empty.\n\
             # TYPE sluice_cluster_rooms_released_total counter\n\
             sluice_cluster_rooms_released_total {}\n\
             # HELP sluice_cluster_auth_total Node-to-node requests checked against the cluster secret, by outcome.\n\
             # TYPE sluice_cluster_auth_total counter\n",
            u8::from(g.redis_up),
            g.nodes,
            g.rooms_owned,
            n(&s.heartbeats_ok),
            n(&s.heartbeats_failed),
            n(&s.joins_owned),
            n(&s.placed_here),
            n(&s.placed_remote),
            n(&s.placements_refused),
            n(&s.forwarded_ok),
            n(&s.forwarded_failed),
            n(&s.ownership_conflicts),
            n(&s.rooms_released),
        );
        let (origin, edge) = self.trunk_counts();
        let t = &self.trunk_stats;
        let _ = write!(
            o,
            "# HELP sluice_cluster_trunks Relay-to-relay trunks, by this node's side.\n\
             # TYPE sluice_cluster_trunks gauge\n\
             sluice_cluster_trunks{{side=\"origin\"}} {origin}\n\
             sluice_cluster_trunks{{side=\"edge\"}} {edge}\n\
             # HELP sluice_cluster_trunks_opened_total Trunks opened, by this node's side.\n\
             # TYPE sluice_cluster_trunks_opened_total counter\n\
             sluice_cluster_trunks_opened_total{{side=\"origin\"}} {}\n\
             sluice_cluster_trunks_opened_total{{side=\"edge\"}} {}\n\
             # HELP sluice_cluster_trunk_joins_total WHEP joins for rooms owned elsewhere, by how the edge handled them.\n\
             # TYPE sluice_cluster_trunk_joins_total counter\n\
             sluice_cluster_trunk_joins_total{{result=\"served\"}} {}\n\
             sluice_cluster_trunk_joins_total{{result=\"declined\"}} {}\n\
             sluice_cluster_trunk_joins_total{{result=\"failed\"}} {}\n\
             # HELP sluice_cluster_trunk_closed_total Trunk rooms closed, by reason.\n\
             # TYPE sluice_cluster_trunk_closed_total counter\n",
            n(&t.opened_origin),
            n(&t.opened_edge),
            n(&t.viewers_served),
            n(&t.declined),
            n(&t.open_failed),
        );
        for (reason, c) in trunk::CLOSE_REASONS.iter().zip(&t.closed) {
            let _ = writeln!(
                o,
                "sluice_cluster_trunk_closed_total{{reason=\"{reason}\"}} {}",
                n(c)
            );
        }
        let (accepted, refused) = self.auth.as_ref().map_or_else(
            || (0, auth::AuthStats::default().refused()),
            |a| (n(&a.stats.accepted), a.stats.refused()),
        );
        let _ = writeln!(
            o,
            "sluice_cluster_auth_total{{result=\"accepted\"}} {accepted}"
        );
        for (reason, count) in refused {
            let _ = writeln!(
                o,
                "sluice_cluster_auth_total{{result=\"{reason}\"}} {count}"
            );
        }
        o
    }
}

/// The gate at the entry of a join: a room this node does not own is refused.
impl crate::core::RoomGate for Cluster {
    fn admit(&self, app: &str, room: &str) -> Result<(), CoreError> {
        if self.owns(app, room) || self.edge_serves(app, room) {
            Ok(())
        } else {
            Err(CoreError::Unavailable(format!(
                "room {app}/{room} is not placed on this node"
            )))
        }
    }
}
