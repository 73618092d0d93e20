//! The admin REST API (docs/API.md) and the state it mutates.
//!
//! Owns: request routing and validation, bearer-token authentication, the order of a
//! mutation (validate → journal + fsync → shared memory → audit → answer), reconciliation of
//! shm with the persisted state when control (re)starts, and draining.
//! May not touch: sockets (the [`crate::http`] server hands requests in), the packet path.
//! The WebRTC endpoints (WHIP/WHEP, `/demo`, `/v1/apps|rooms|tokens`) live in the `rtc`
//! submodule (control/src/api/rtc.rs), which shares this module's state and mutation order.

use crate::audit::{Audit, PeerHasher};
use crate::http::{Handler, Request, Response};
use crate::ice::IceAgent;
use crate::metrics;
use crate::slowpath::SlowPathStats;
use crate::state::{Entry, RewriteSpec, Store, StoreError, StoredRoute, StoredSession};
use crate::util;
use contract::config::{Config, Secret};
use contract::shm::{session_flags, Capacity, Role, ShmReader, ShmWriter, MAX_MAPPINGS};
use contract::srtp::{MasterKey, Profile};
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

mod rtc;
pub use rtc::Member;

/// A relay whose newest heartbeat is older than this is reported down.
pub const RELAY_UP_MS: u64 = 2000;
/// Compact the journal into a snapshot after this many entries.
pub const COMPACT_AFTER: usize = 1000;

/// URLs and addresses published in `/v1/status` and `control.json`.
#[derive(Debug, Clone, Default)]
pub struct Urls {
    pub admin_url: String,
    pub public_url: String,
    pub metrics_url: String,
    pub media_addr: String,
}

struct Inner {
    store: Store,
    shm: Option<ShmWriter>,
    reader: Option<ShmReader>,
    /// Why shm is unavailable (when it is).
    shm_error: Option<String>,
}

/// The control plane's shared state; one per process, shared by every connection thread.
pub struct Control {
    cfg: Config,
    token: Secret,
    urls: Mutex<Urls>,
    inner: Mutex<Inner>,
    audit: Mutex<Audit>,
    audit_errors_seen: AtomicU64,
    hasher: PeerHasher,
    draining: AtomicBool,
    /// The ICE-lite agent (the slow-path thread feeds it; WHIP/WHEP register credentials).
    pub ice: Arc<Mutex<IceAgent>>,
    /// Slow-path counters (the slow-path thread counts; `/metrics` reads).
    pub slow_path_stats: Arc<SlowPathStats>,
    /// WebRTC sessions' DTLS state (shared with the slow path's [`crate::rtc::WebRtcDtls`]).
    pub rtc: Arc<Mutex<crate::rtc::RtcTable>>,
    /// Our DTLS certificate (its fingerprint goes into every SDP answer).
    pub cert: Arc<crate::webrtc::dtls::Certificate>,
    /// Applications, developer keys and rooms (persisted in `<state_dir>/apps.json`).
    apps: Mutex<rtc::Apps>,
    /// WebRTC participants by session id. Lock order: `members` before `inner`.
    members: Mutex<std::collections::BTreeMap<u64, Member>>,
    /// WebRTC signaling counters.
    webrtc_stats: rtc::WebRtcStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data here (every mutation either
    // completes or returns early), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why control could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("state: {0}")]
    Store(#[from] StoreError),
    #[error("audit key in {path}: {source}", path = path.display())]
    AuditKey {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("applications: {0}")]
    Apps(String),
    #[error("DTLS certificate: {0}")]
    Cert(String),
}

impl Control {
    /// Load state, open (or re-adopt) shm and reconcile it with the state. A shm failure is
    /// not fatal: the API answers 503 for what needs it and [`Control::tick`] retries.
    pub fn start(cfg: Config, token: Secret) -> Result<Control, StartError> {
        let store = Store::open(&cfg.control.state_dir)?;
        let hasher = PeerHasher::load_or_create(&cfg.control.state_dir).map_err(|source| {
            StartError::AuditKey {
                path: cfg.control.state_dir.clone(),
                source,
            }
        })?;
        let audit = Audit::open(
            &cfg.control.audit_log,
            cfg.control.audit_max_bytes,
            cfg.control.audit_retention_days,
        );
        let apps = rtc::Apps::open(&cfg.control)?;
        let cert = crate::webrtc::dtls::Certificate::generate()
            .map_err(|e| StartError::Cert(e.to_string()))?;
        let c = Control {
            rtc: Arc::new(Mutex::new(crate::rtc::RtcTable::default())),
            cert: Arc::new(cert),
            apps: Mutex::new(apps),
            members: Mutex::new(std::collections::BTreeMap::new()),
            webrtc_stats: rtc::WebRtcStats::default(),
            token,
            urls: Mutex::new(Urls::default()),
            inner: Mutex::new(Inner {
                store,
                shm: None,
                reader: None,
                shm_error: Some("not opened yet".into()),
            }),
            audit: Mutex::new(audit),
            audit_errors_seen: AtomicU64::new(0),
            hasher,
            draining: AtomicBool::new(false),
            ice: Arc::new(Mutex::new(IceAgent::new(
                std::time::Duration::from_secs(u64::from(cfg.control.ice_consent_timeout_secs)),
                cfg.shm.sessions as usize,
            ))),
            slow_path_stats: Arc::new(SlowPathStats::default()),
            cfg,
        };
        c.ensure_shm();
        c.drop_unbound_webrtc_sessions();
        Ok(c)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn set_urls(&self, u: Urls) {
        *lock(&self.urls) = u;
    }

    pub fn urls(&self) -> Urls {
        lock(&self.urls).clone()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// True when shm is open.
    pub fn shm_ready(&self) -> bool {
        lock(&self.inner).shm.is_some()
    }

    /// Open shm if it is not open, then reconcile it with the persisted state.
    pub fn ensure_shm(&self) {
        let mut g = lock(&self.inner);
        if g.shm.is_some() {
            return;
        }
        let s = &self.cfg.shm;
        let cap = Capacity {
            sessions: s.sessions,
            routes: s.routes,
            workers: s.worker_slots,
        };
        match ShmWriter::open_or_create_with_streams(&s.path, cap, s.streams_per_worker) {
            Ok((mut w, adopted)) => {
                if adopted {
                    let r = w.adopt_report();
                    tracing::info!(path = %s.path.display(), sessions = r.sessions, routes = r.routes, repaired = r.repaired, generation = w.generation(), "re-adopted shm file");
                    if w.capacity() != cap {
                        tracing::warn!(file = ?w.capacity(), config = ?cap, "the existing shm file keeps its own capacity; remove it while the relay is stopped to apply the configured one");
                    }
                } else {
                    tracing::info!(path = %s.path.display(), "created shm file");
                }
                reconcile(&mut w, &g.store);
                match ShmReader::open(&s.path) {
                    Ok(r) => g.reader = Some(r),
                    Err(e) => tracing::error!(error = %e, "shm reader"),
                }
                g.shm = Some(w);
                g.shm_error = None;
            }
            Err(e) => {
                let msg = e.to_string();
                if g.shm_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!(path = %s.path.display(), error = %msg, "shared memory unavailable; retrying");
                }
                g.shm_error = Some(msg);
            }
        }
    }

    /// Periodic housekeeping: retry shm, expire WebRTC sessions ICE never bound, compact
    /// the journal, expire audit files.
    pub fn tick(&self) {
        self.ensure_shm();
        self.expire_unbound_sessions(util::unix_ms());
        self.report_suppressed_denials(util::unix_ms());
        let mut g = lock(&self.inner);
        if g.store.pending() >= COMPACT_AFTER {
            if let Err(e) = g.store.compact() {
                tracing::error!(error = %e, "state compaction failed");
            }
        }
        drop(g);
        lock(&self.audit).enforce_retention(util::unix_ms());
    }

    /// Compact on clean shutdown.
    pub fn shutdown(&self) {
        if let Err(e) = lock(&self.inner).store.compact() {
            tracing::error!(error = %e, "state compaction at shutdown failed");
        }
    }

    fn audit(&self, actor: &str, action: &str, ids: Value, resp: &Response) {
        let result = if resp.status < 300 {
            "ok".to_string()
        } else {
            serde_json::from_slice::<Value>(&resp.body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("status {}", resp.status))
        };
        let mut a = lock(&self.audit);
        a.record(actor, action, ids, &result, resp.status);
        let errs = a.errors();
        drop(a);
        self.audit_errors_seen.store(errs, Ordering::Relaxed);
    }

    /// Audit write failures so far.
    pub fn audit_errors(&self) -> u64 {
        self.audit_errors_seen.load(Ordering::Relaxed)
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(h) = req.header("authorization") else {
            return false;
        };
        let Some(tok) = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
        else {
            return false;
        };
        util::ct_eq(tok.trim().as_bytes(), self.token.expose().as_bytes())
    }

    /// Serve one admin request.
    pub fn handle_admin(&self, req: &Request) -> Response {
        let path = req.path.trim_end_matches('/');
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let m = req.method.as_str();
        if self.public_on_admin() {
            if let Some(r) = self.handle_webrtc(req) {
                return r;
            }
        }
        match segs.as_slice() {
            ["healthz"] => return only_get(m, || self.healthz()),
            ["metrics"] => return only_get(m, || self.metrics()),
            ["v1", ..] => {}
            _ => return Response::error(404, format!("no such endpoint: {}", req.path)),
        }
        if !self.authorized(req) {
            let mut r = Response::error(401, "missing or invalid admin token");
            r.headers.push(("WWW-Authenticate", "Bearer".into()));
            self.audit(
                "anonymous",
                "auth.failed",
                json!({"method": req.method, "path": req.path, "from": self.hasher.hash(&req.peer)}),
                &r,
            );
            return r;
        }
        match (m, &segs[1..]) {
            ("GET" | "HEAD", ["status"]) => self.status(),
            ("GET" | "HEAD", ["stats"]) => self.stats(),
            ("GET" | "HEAD", ["sessions"]) => self.list_sessions(),
            ("POST", ["sessions"]) => self.create_session(req),
            ("GET" | "HEAD", ["sessions", id]) => self.get_session(id),
            ("DELETE", ["sessions", id]) => self.delete_session(id),
            ("POST", ["sessions", id, "rekey"]) => self.rekey(req, id),
            ("GET" | "HEAD", ["routes"]) => self.list_routes(),
            ("POST", ["routes"]) => self.create_route(req),
            ("GET" | "HEAD", ["routes", id]) => self.get_route(id),
            ("DELETE", ["routes", id]) => self.delete_route(id),
            ("POST", ["drain"]) => self.drain(),
            (_, ["apps" | "rooms" | "tokens", ..]) => self.handle_apps_api(m, &segs[1..], req),
            (_, ["status" | "stats"]) => method_not_allowed("GET"),
            (_, ["sessions" | "routes"]) => method_not_allowed("GET, POST"),
            (_, ["sessions" | "routes", _]) => method_not_allowed("GET, DELETE"),
            (_, ["sessions", _, "rekey"] | ["drain"]) => method_not_allowed("POST"),
            _ => Response::error(404, format!("no such endpoint: {}", req.path)),
        }
    }

    /// Serve one request on the public listener (when it differs from the admin one).
    pub fn handle_public(&self, req: &Request) -> Response {
        if let Some(r) = self.handle_webrtc(req) {
            return r;
        }
        match req.path.trim_end_matches('/') {
            "/healthz" => only_get(&req.method, || self.healthz()),
            _ => Response::error(404, format!("no such endpoint: {}", req.path)),
        }
    }

    fn healthz(&self) -> Response {
        let ready = self.shm_ready();
        Response::json(
            if ready { 200 } else { 503 },
            &json!({"ok": ready, "draining": self.is_draining()}),
        )
    }

    fn relay_view(&self, reader: Option<&ShmReader>) -> Value {
        let now = util::unix_ms();
        let Some(r) = reader else {
            return json!({"pid": null, "up": false, "backend": null, "workers": null, "heartbeat_age_ms": null});
        };
        let info = r.relay_info();
        let newest = info.heartbeats_unix_ms.iter().copied().max().unwrap_or(0);
        let age = (newest > 0).then(|| now.saturating_sub(newest));
        let up = info.pid != 0 && age.is_some_and(|a| a <= RELAY_UP_MS);
        json!({
            "pid": (info.pid != 0).then_some(info.pid),
            "up": up,
            "backend": (info.pid != 0).then_some(info.backend),
            "workers": (info.pid != 0).then_some(info.workers),
            "heartbeat_age_ms": age,
        })
    }

    fn status(&self) -> Response {
        // The applications lock is never taken while the state lock is held.
        let demo = self.demo_app().is_some();
        let g = lock(&self.inner);
        let relay = self.relay_view(g.reader.as_ref());
        let u = self.urls();
        let backend = relay["backend"]
            .as_str()
            .map_or_else(|| self.cfg.relay.backend.name().to_string(), str::to_string);
        let workers = relay["workers"]
            .as_u64()
            .unwrap_or(u64::from(self.cfg.relay.workers));
        Response::json(
            200,
            &json!({
                "version": env!("CARGO_PKG_VERSION"),
                "media_addr": u.media_addr,
                "admin_url": u.admin_url,
                "public_url": u.public_url,
                "metrics_url": u.metrics_url,
                "backend": backend,
                "workers": workers,
                "relay": relay,
                "sessions": g.store.state().sessions.len(),
                "routes": g.store.state().routes.len(),
                "draining": self.is_draining(),
                "demo": demo,
                "generation": g.shm.as_ref().map(ShmWriter::generation),
                "shm": {"path": self.cfg.shm.path.display().to_string(), "ready": g.shm.is_some(), "error": g.shm_error},
            }),
        )
    }

    fn stats(&self) -> Response {
        let g = lock(&self.inner);
        let Some(r) = g.reader.as_ref() else {
            return shm_unavailable(&g);
        };
        Response::json(
            200,
            &metrics::stats_json(
                r,
                self.slow_path_stats.snapshot().datagrams(),
                self.audit_errors(),
            ),
        )
    }

    fn metrics(&self) -> Response {
        // The agent's lock is never held together with the state lock.
        let (ice, ice_sessions) = {
            let a = lock(&self.ice);
            (a.counters(), a.len() as u64)
        };
        let g = lock(&self.inner);
        let info = metrics::ControlGauges {
            sessions: g.store.state().sessions.len() as u64,
            routes: g.store.state().routes.len() as u64,
            draining: self.is_draining(),
            shm_ready: g.shm.is_some(),
            generation: g.shm.as_ref().map_or(0, ShmWriter::generation),
            audit_errors: self.audit_errors(),
            slow_path: self.slow_path_stats.snapshot(),
            ice,
            ice_sessions,
            now_unix_ms: util::unix_ms(),
        };
        let mut text = metrics::render(g.reader.as_ref(), &info);
        drop(g);
        text.push_str(&self.webrtc_metrics());
        Response::text(200, "text/plain; version=0.0.4; charset=utf-8", text)
    }

    fn list_sessions(&self) -> Response {
        let g = lock(&self.inner);
        let v: Vec<Value> = g
            .store
            .state()
            .sessions
            .values()
            .map(session_json)
            .collect();
        Response::json(200, &Value::Array(v))
    }

    fn get_session(&self, id: &str) -> Response {
        let id = match parse_id(id, "session") {
            Ok(i) => i,
            Err(r) => return r,
        };
        let g = lock(&self.inner);
        match g.store.state().sessions.get(&id) {
            Some(s) => Response::json(200, &session_json(s)),
            None => Response::error(404, format!("session {id} not found")),
        }
    }

    fn list_routes(&self) -> Response {
        let g = lock(&self.inner);
        let v: Vec<Value> = g.store.state().routes.values().map(route_json).collect();
        Response::json(200, &Value::Array(v))
    }

    fn get_route(&self, id: &str) -> Response {
        let id = match parse_id(id, "route") {
            Ok(i) => i,
            Err(r) => return r,
        };
        let g = lock(&self.inner);
        match g.store.state().routes.get(&id) {
            Some(r) => Response::json(200, &route_json(r)),
            None => Response::error(404, format!("route {id} not found")),
        }
    }

    fn create_session(&self, req: &Request) -> Response {
        let (resp, ids) = self.create_session_inner(req);
        self.audit("admin", "session.create", ids, &resp);
        resp
    }

    fn create_session_inner(&self, req: &Request) -> (Response, Value) {
        let mut ids = json!({});
        let r = (|| -> Result<Response, Response> {
            let b = Body::parse(
                &req.body,
                &["peer", "profile", "rx_key", "tx_key", "role", "max_pps"],
            )?;
            let peer = parse_peer(b.req_str("peer")?)?;
            ids["peer"] = Value::String(self.hasher.hash(&peer.to_string()));
            let profile_name = b.req_str("profile")?;
            let profile = Profile::from_name(profile_name).map_err(|_| {
                bad_field("profile", format!("unknown SRTP profile `{profile_name}`"))
            })?;
            let rx_key = parse_key(profile, &b, "rx_key")?;
            let tx_key = parse_key(profile, &b, "tx_key")?;
            let role = match b.opt_str("role")? {
                None => Role::Trunk,
                Some(s) => Role::from_name(s)
                    .ok_or_else(|| bad_field("role", format!("unknown role `{s}`")))?,
            };
            let max_pps = b.opt_u32("max_pps")?.unwrap_or(0);
            if self.is_draining() {
                return Err(Response::error(
                    409,
                    "control is draining: no new sessions are accepted",
                ));
            }
            let mut g = lock(&self.inner);
            let shm = g.shm.as_ref().ok_or_else(|| shm_unavailable(&g))?;
            if shm.session_count() >= shm.capacity().sessions as usize {
                return Err(Response::error(
                    503,
                    format!("session table is full ({} slots)", shm.capacity().sessions),
                ));
            }
            if let Some(other) = g.store.state().sessions.values().find(|s| s.peer == peer) {
                return Err(Response::error(
                    409,
                    format!("session {} already uses this peer address", other.id),
                ));
            }
            let s = StoredSession {
                id: g.store.state().next_session_id,
                peer,
                profile: profile.name().to_string(),
                role: role.name().to_string(),
                rx_key: rx_key.to_base64(),
                tx_key: tx_key.to_base64(),
                key_epoch: 0,
                flags: 0,
                max_pps,
                created_unix_ms: util::unix_ms(),
            };
            ids["session"] = json!(s.id);
            commit(&mut g, vec![Entry::PutSession { session: s.clone() }])?;
            Ok(Response::json(201, &session_json(&s)))
        })();
        (r.unwrap_or_else(|e| e), ids)
    }

    fn delete_session(&self, id: &str) -> Response {
        let mut ids = json!({});
        let r = (|| -> Result<Response, Response> {
            let id = parse_id(id, "session")?;
            ids["session"] = json!(id);
            // Lock order of the WebRTC join: `members`, then `inner`; a WebRTC member leaves
            // `members` before its session is deleted so no join routes to it meanwhile.
            let mut members = lock(&self.members);
            let mut g = lock(&self.inner);
            if !g.store.state().sessions.contains_key(&id) {
                return Err(Response::error(404, format!("session {id} not found")));
            }
            if g.shm.is_none() {
                return Err(shm_unavailable(&g));
            }
            let mut entries: Vec<Entry> = g
                .store
                .state()
                .routes
                .values()
                .filter(|r| r.from == id || r.to == id)
                .map(|r| Entry::DelRoute { id: r.id })
                .collect();
            ids["routes"] = json!(entries
                .iter()
                .filter_map(|e| match e {
                    Entry::DelRoute { id } => Some(*id),
                    _ => None,
                })
                .collect::<Vec<_>>());
            entries.push(Entry::DelSession { id });
            let member = members.remove(&id);
            if let Err(e) = commit(&mut g, entries) {
                if let Some(m) = member {
                    members.insert(id, m);
                }
                return Err(e);
            }
            Ok(Response::empty(204))
        })();
        let resp = r.unwrap_or_else(|e| e);
        if resp.status < 300 {
            if let Some(id) = ids["session"].as_u64() {
                self.forget_rtc(id);
            }
        }
        self.audit("admin", "session.delete", ids, &resp);
        resp
    }

    fn rekey(&self, req: &Request, id: &str) -> Response {
        let mut ids = json!({});
        let r = (|| -> Result<Response, Response> {
            let id = parse_id(id, "session")?;
            ids["session"] = json!(id);
            let b = Body::parse(&req.body, &["tx_key", "rx_key"])?;
            let mut g = lock(&self.inner);
            let Some(old) = g.store.state().sessions.get(&id).cloned() else {
                return Err(Response::error(404, format!("session {id} not found")));
            };
            let profile = Profile::from_name(&old.profile)
                .map_err(|_| Response::error(500, "stored session has an unknown profile"))?;
            let tx = b
                .has("tx_key")
                .then(|| parse_key(profile, &b, "tx_key"))
                .transpose()?;
            let rx = b
                .has("rx_key")
                .then(|| parse_key(profile, &b, "rx_key"))
                .transpose()?;
            if tx.is_none() && rx.is_none() {
                return Err(bad_field("tx_key", "give tx_key, rx_key or both"));
            }
            if g.shm.is_none() {
                return Err(shm_unavailable(&g));
            }
            let mut s = old;
            if let Some(k) = tx {
                s.tx_key = k.to_base64();
            }
            if let Some(k) = rx {
                s.rx_key = k.to_base64();
            }
            s.key_epoch = s.key_epoch.wrapping_add(1);
            ids["key_epoch"] = json!(s.key_epoch);
            commit(&mut g, vec![Entry::PutSession { session: s.clone() }])?;
            Ok(Response::json(200, &session_json(&s)))
        })();
        let resp = r.unwrap_or_else(|e| e);
        self.audit("admin", "session.rekey", ids, &resp);
        resp
    }

    fn create_route(&self, req: &Request) -> Response {
        let mut ids = json!({});
        let r = (|| -> Result<Response, Response> {
            let b = Body::parse(&req.body, &["from", "ssrc", "to", "rewrite"])?;
            let from = b.req_u64("from")?;
            let to = b.req_u64("to")?;
            ids["from"] = json!(from);
            ids["to"] = json!(to);
            let ssrc = b.opt_u32("ssrc")?;
            let rewrite = match b.0.get("rewrite") {
                None | Some(Value::Null) => RewriteSpec::default(),
                Some(v) => parse_rewrite(v)?,
            };
            let mut g = lock(&self.inner);
            let st = g.store.state();
            let Some(pubs) = st.sessions.get(&from) else {
                return Err(Response::error(
                    404,
                    format!("from: session {from} not found"),
                ));
            };
            if !st.sessions.contains_key(&to) {
                return Err(Response::error(404, format!("to: session {to} not found")));
            }
            if Role::from_name(&pubs.role).is_some_and(|r| !r.can_publish()) {
                return Err(Response::error(
                    409,
                    format!(
                        "from: session {from} has role {} and may not publish",
                        pubs.role
                    ),
                ));
            }
            if let Some(dup) = st
                .routes
                .values()
                .find(|r| r.from == from && r.to == to && r.ssrc == ssrc)
            {
                return Err(Response::error(
                    409,
                    format!("route {} already connects these sessions", dup.id),
                ));
            }
            let shm = g.shm.as_ref().ok_or_else(|| shm_unavailable(&g))?;
            if shm.route_count() >= shm.capacity().routes as usize {
                return Err(Response::error(
                    503,
                    format!("route table is full ({} slots)", shm.capacity().routes),
                ));
            }
            let route = StoredRoute {
                id: g.store.state().next_route_id,
                from,
                ssrc,
                to,
                rewrite,
            };
            ids["route"] = json!(route.id);
            commit(
                &mut g,
                vec![Entry::PutRoute {
                    route: route.clone(),
                }],
            )?;
            Ok(Response::json(201, &route_json(&route)))
        })();
        let resp = r.unwrap_or_else(|e| e);
        self.audit("admin", "route.create", ids, &resp);
        resp
    }

    fn delete_route(&self, id: &str) -> Response {
        let mut ids = json!({});
        let r = (|| -> Result<Response, Response> {
            let id = parse_id(id, "route")?;
            ids["route"] = json!(id);
            let mut g = lock(&self.inner);
            if !g.store.state().routes.contains_key(&id) {
                return Err(Response::error(404, format!("route {id} not found")));
            }
            if g.shm.is_none() {
                return Err(shm_unavailable(&g));
            }
            commit(&mut g, vec![Entry::DelRoute { id }])?;
            Ok(Response::empty(204))
        })();
        let resp = r.unwrap_or_else(|e| e);
        self.audit("admin", "route.delete", ids, &resp);
        resp
    }

    /// ICE nominated `peer` for session `id` (called by the slow path): persist and publish
    /// the session with this peer and PENDING cleared (journal → shm → audit, like the API).
    /// Nothing is written when the session already has this peer and is not pending. Refused
    /// when another session already uses the address (peers stay unique).
    pub fn ice_bind_peer(&self, id: u64, peer: SocketAddr) -> Result<(), String> {
        let ids = json!({"session": id, "peer": self.hasher.hash(&peer.to_string())});
        // A WebRTC session stays PENDING until DTLS has produced its keys.
        let keys_ready = lock(&self.rtc).keys_ready(id);
        let r = (|| -> Result<Option<Response>, Response> {
            let mut g = lock(&self.inner);
            let Some(old) = g.store.state().sessions.get(&id).cloned() else {
                return Err(Response::error(404, format!("session {id} not found")));
            };
            let want_pending = !keys_ready;
            if old.peer == peer && (old.flags & session_flags::PENDING != 0) == want_pending {
                return Ok(None);
            }
            if let Some(other) = g
                .store
                .state()
                .sessions
                .values()
                .find(|s| s.id != id && s.peer == peer)
            {
                return Err(Response::error(
                    409,
                    format!("session {} already uses this peer address", other.id),
                ));
            }
            if g.shm.is_none() {
                return Err(shm_unavailable(&g));
            }
            let mut s = old;
            s.peer = peer;
            if want_pending {
                s.flags |= session_flags::PENDING;
            } else {
                s.flags &= !session_flags::PENDING;
            }
            commit(&mut g, vec![Entry::PutSession { session: s }])?;
            Ok(Some(Response::empty(204)))
        })();
        let resp = match r {
            Ok(None) => return Ok(()),
            Ok(Some(r)) | Err(r) => r,
        };
        self.audit("ice", "session.ice_bind", ids, &resp);
        response_result(&resp)
    }

    /// ICE consent for session `id` expired (called by the slow path): set PENDING so the
    /// relay stops forwarding its media (journal → shm → audit). No-op when already pending.
    pub fn ice_mark_pending(&self, id: u64) -> Result<(), String> {
        let ids = json!({"session": id});
        let r = (|| -> Result<Option<Response>, Response> {
            let mut g = lock(&self.inner);
            let Some(old) = g.store.state().sessions.get(&id).cloned() else {
                return Err(Response::error(404, format!("session {id} not found")));
            };
            if old.flags & session_flags::PENDING != 0 {
                return Ok(None);
            }
            if g.shm.is_none() {
                return Err(shm_unavailable(&g));
            }
            let mut s = old;
            s.flags |= session_flags::PENDING;
            commit(&mut g, vec![Entry::PutSession { session: s }])?;
            Ok(Some(Response::empty(204)))
        })();
        let resp = match r {
            Ok(None) => return Ok(()),
            Ok(Some(r)) | Err(r) => r,
        };
        self.audit("ice", "session.ice_expired", ids, &resp);
        response_result(&resp)
    }

    fn drain(&self) -> Response {
        self.draining.store(true, Ordering::SeqCst);
        tracing::warn!("draining: new sessions are refused from now on");
        let resp = Response::json(202, &json!({"draining": true}));
        self.audit("admin", "drain", json!({}), &resp);
        resp
    }
}

/// Journal the entries (fsync), then apply them to shm. The caller checked shm is open.
fn commit(g: &mut Inner, entries: Vec<Entry>) -> Result<(), Response> {
    g.store.commit(&entries).map_err(|e| {
        if let StoreError::Route(c) = &e {
            return Response::error(409, c.to_string());
        }
        tracing::error!(error = %e, "state journal write failed; mutation refused");
        Response::error(500, format!("could not persist the change: {e}"))
    })?;
    let Some(shm) = g.shm.as_mut() else {
        return Err(Response::error(503, "shared memory unavailable"));
    };
    for e in &entries {
        let res = match e {
            Entry::PutSession { session } => match session.to_record() {
                Ok(rec) => shm.put_session(&rec).map_err(|e| e.to_string()),
                Err(m) => Err(m),
            },
            Entry::DelSession { id } => {
                shm.remove_session(*id);
                Ok(())
            }
            Entry::PutRoute { route } => {
                shm.put_route(&route.to_record()).map_err(|e| e.to_string())
            }
            Entry::DelRoute { id } => {
                shm.remove_route(*id);
                Ok(())
            }
        };
        if let Err(m) = res {
            // Validation and capacity checks run before the journal write, so this means shm
            // itself misbehaves. The state keeps the change; the next reconcile retries it.
            tracing::error!(error = %m, "shm write failed after the journal commit");
            return Err(Response::error(
                500,
                format!("shared memory write failed: {m}"),
            ));
        }
    }
    Ok(())
}

/// Make shm hold exactly the persisted state, touching only slots that differ (a running
/// relay keeps forwarding; unchanged sessions keep their SRTP contexts).
fn reconcile(w: &mut ShmWriter, store: &Store) {
    let st = store.state();
    let (mut put, mut removed) = (0u32, 0u32);
    for r in w.routes() {
        if !st.routes.contains_key(&r.id) {
            w.remove_route(r.id);
            removed += 1;
        }
    }
    for s in w.sessions() {
        if !st.sessions.contains_key(&s.id) {
            w.remove_session(s.id);
            removed += 1;
        }
    }
    for s in st.sessions.values() {
        match s.to_record() {
            Ok(rec) => {
                if w.session(s.id) != Some(rec) {
                    match w.put_session(&rec) {
                        Ok(()) => put += 1,
                        Err(e) => {
                            tracing::error!(session = s.id, error = %e, "reconcile: session not restored")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(session = s.id, error = %e, "reconcile: persisted session is invalid")
            }
        }
    }
    for r in st.routes.values() {
        let rec = r.to_record();
        if w.route(r.id) != Some(rec) {
            match w.put_route(&rec) {
                Ok(()) => put += 1,
                Err(e) => {
                    tracing::error!(route = r.id, error = %e, "reconcile: route not restored")
                }
            }
        }
    }
    tracing::info!(
        sessions = st.sessions.len(),
        routes = st.routes.len(),
        written = put,
        removed,
        generation = w.generation(),
        "shm reconciled with persisted state"
    );
}

/// `Ok` for a success status, else the response's error message.
fn response_result(resp: &Response) -> Result<(), String> {
    if resp.status < 300 {
        return Ok(());
    }
    Err(serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("status {}", resp.status)))
}

fn shm_unavailable(g: &Inner) -> Response {
    Response::error(
        503,
        format!(
            "shared memory unavailable: {}",
            g.shm_error.as_deref().unwrap_or("not open")
        ),
    )
}

fn only_get(method: &str, f: impl FnOnce() -> Response) -> Response {
    if method == "GET" || method == "HEAD" {
        f()
    } else {
        method_not_allowed("GET")
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = Response::error(405, format!("method not allowed (allowed: {allow})"));
    r.headers.push(("Allow", allow.to_string()));
    r
}

fn bad_field(field: &str, msg: impl std::fmt::Display) -> Response {
    Response::error(400, format!("{field}: {msg}"))
}

fn parse_id(s: &str, what: &str) -> Result<u64, Response> {
    s.parse::<u64>().ok().filter(|&i| i != 0).ok_or_else(|| {
        Response::error(
            404,
            format!("{what} {s} not found (ids are positive integers)"),
        )
    })
}

/// Error messages never echo the address: they are copied into the audit log (no peer IPs).
fn parse_peer(s: &str) -> Result<SocketAddr, Response> {
    let a: SocketAddr = s.parse().map_err(|_| {
        bad_field(
            "peer",
            format!("`{s}` is not IP:PORT (IPv6 as [addr]:port)"),
        )
    })?;
    if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
        return Err(bad_field(
            "peer",
            format!("`{s}` is not a unicast address with a port"),
        ));
    }
    Ok(a)
}

fn parse_key(profile: Profile, b: &Body, field: &str) -> Result<MasterKey, Response> {
    let s = b.req_str(field)?;
    MasterKey::from_base64(profile, s).map_err(|e| bad_field(field, e))
}

fn parse_rewrite(v: &Value) -> Result<RewriteSpec, Response> {
    let Value::Object(o) = v else {
        return Err(bad_field("rewrite", "must be an object"));
    };
    for k in o.keys() {
        if !["ssrc", "pt_map", "ext_map"].contains(&k.as_str()) {
            return Err(bad_field(&format!("rewrite.{k}"), "unknown field"));
        }
    }
    let ssrc = match o.get("ssrc") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            as_u32(v)
                .ok_or_else(|| bad_field("rewrite.ssrc", "must be an integer 0..=4294967295"))?,
        ),
    };
    // RFC 3550 §5.1: payload types are 7 bits. RFC 8285 §4.2/§4.3: extension ids 1..=14
    // (one-byte form) or 1..=255 (two-byte form).
    let pt_map = parse_map(o.get("pt_map"), "rewrite.pt_map", 0, 127)?;
    let ext_map = parse_map(o.get("ext_map"), "rewrite.ext_map", 1, 255)?;
    Ok(RewriteSpec {
        ssrc,
        pt_map,
        ext_map,
    })
}

fn parse_map(v: Option<&Value>, field: &str, lo: u64, hi: u64) -> Result<Vec<[u8; 2]>, Response> {
    let arr = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad_field(field, "must be an array of [from, to] pairs")),
    };
    if arr.len() > MAX_MAPPINGS {
        return Err(bad_field(field, format!("at most {MAX_MAPPINGS} mappings")));
    }
    let mut out: Vec<[u8; 2]> = Vec::new();
    for pair in arr {
        let p = pair
            .as_array()
            .filter(|p| p.len() == 2)
            .ok_or_else(|| bad_field(field, "each entry must be a [from, to] pair"))?;
        let mut two = [0u8; 2];
        for (i, x) in p.iter().enumerate() {
            let n = x
                .as_u64()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| bad_field(field, format!("values must be integers {lo}..={hi}")))?;
            two[i] = n as u8;
        }
        if out.iter().any(|q| q[0] == two[0]) {
            return Err(bad_field(field, format!("{} is mapped twice", two[0])));
        }
        out.push(two);
    }
    Ok(out)
}

fn as_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// A JSON object request body with field-naming accessors.
struct Body(Map<String, Value>);

impl Body {
    fn parse(bytes: &[u8], allowed: &[&str]) -> Result<Body, Response> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| Response::error(400, format!("body is not valid JSON: {e}")))?;
        let Value::Object(m) = v else {
            return Err(Response::error(400, "body must be a JSON object"));
        };
        if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad_field(
                k,
                format!("unknown field (expected one of: {})", allowed.join(", ")),
            ));
        }
        Ok(Body(m))
    }

    fn has(&self, k: &str) -> bool {
        !matches!(self.0.get(k), None | Some(Value::Null))
    }

    fn req_str(&self, k: &str) -> Result<&str, Response> {
        match self.0.get(k) {
            None | Some(Value::Null) => Err(bad_field(k, "is required")),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(bad_field(k, "must be a string")),
        }
    }

    fn opt_str(&self, k: &str) -> Result<Option<&str>, Response> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad_field(k, "must be a string")),
        }
    }

    fn opt_u32(&self, k: &str) -> Result<Option<u32>, Response> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => as_u32(v)
                .map(Some)
                .ok_or_else(|| bad_field(k, "must be an integer 0..=4294967295")),
        }
    }

    fn req_u64(&self, k: &str) -> Result<u64, Response> {
        match self.0.get(k) {
            None | Some(Value::Null) => Err(bad_field(k, "is required")),
            Some(v) => v
                .as_u64()
                .filter(|&n| n != 0)
                .ok_or_else(|| bad_field(k, "must be a session id (positive integer)")),
        }
    }
}

fn session_json(s: &StoredSession) -> Value {
    json!({
        "id": s.id,
        "peer": s.peer.to_string(),
        "profile": s.profile,
        "role": s.role,
        "key_epoch": s.key_epoch,
        "flags": s.flags,
        "max_pps": s.max_pps,
        "created_unix_ms": s.created_unix_ms,
    })
}

fn route_json(r: &StoredRoute) -> Value {
    json!({
        "id": r.id,
        "from": r.from,
        "ssrc": r.ssrc,
        "to": r.to,
        "rewrite": {
            "ssrc": r.rewrite.ssrc,
            "pt_map": r.rewrite.pt_map,
            "ext_map": r.rewrite.ext_map,
        },
    })
}

/// The admin listener's handler.
pub struct AdminHandler(pub std::sync::Arc<Control>);
impl Handler for AdminHandler {
    fn handle(&self, req: &Request) -> Response {
        self.0.handle_admin(req)
    }
}

/// The public listener's handler.
pub struct PublicHandler(pub std::sync::Arc<Control>);
impl Handler for PublicHandler {
    fn handle(&self, req: &Request) -> Response {
        self.0.handle_public(req)
    }
}
