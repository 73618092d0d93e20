//! The control core: sessions, routes, rooms and WebRTC joins, and the PENDING → keyed state
//! machine, with no HTTP in sight. Callers (the HTTP layer for the admin API and WHIP/WHEP,
//! the slow path for ICE and DTLS) hand in parsed values and the time, and get typed results
//! ([`CoreError`]) back.
//!
//! Owns: the order of a mutation (validate → journal + fsync → shared memory → audit), the
//! persisted state and its shm mirror ([`commit::Ledger`]), reconciliation when control
//! (re)starts, the participants of rooms, the application registry, the per-session DTLS
//! table ([`dtls_state`]) and the ICE agent the slow path feeds, draining.
//! May not touch: sockets, HTTP requests and responses, the packet path.
//!
//! Lock order: `members` before `ledger`; the applications lock and the ICE and DTLS locks
//! are never held while the ledger lock is taken.

pub mod commit;
pub mod denials;
pub mod dtls_state;
pub mod error;
pub mod join;
pub mod pending;
pub mod reload;
pub mod rooms;
pub mod sessions;
pub mod simulcast;
pub mod trunks;

pub use error::CoreError;

use crate::audit::{Audit, PeerHasher};
use crate::ice::IceAgent;
use crate::state::{Store, StoreError};
use crate::webrtc::dtls::Certificate;
use commit::{reconcile, Ledger};
use contract::config::Config;
use contract::shm::{Capacity, ShmReader, ShmWriter};
use dtls_state::RtcTable;
use rooms::{Apps, Rooms};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// Compact the journal into a snapshot after this many entries.
pub const COMPACT_AFTER: usize = 1000;

/// Lock `m`. A panic while holding a core lock leaves consistent data (every mutation either
/// completes or returns early), so a poisoned lock is still usable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
    /// A private directory whose modes could not be made owner-only again.
    #[error("making {path} owner-only: {source}", path = path.display())]
    Permissions {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The audit log with its failure counter and the keyed hash of peer identities.
pub struct AuditTrail {
    log: Mutex<Audit>,
    errors_seen: AtomicU64,
    pub hasher: PeerHasher,
}

impl AuditTrail {
    /// Record one action: `status` and `result` ("ok" or the error message).
    pub fn record(&self, actor: &str, action: &str, ids: Value, status: u16, result: &str) {
        let mut a = lock(&self.log);
        a.record(actor, action, ids, result, status);
        let errs = a.errors();
        drop(a);
        self.errors_seen.store(errs, Ordering::Relaxed);
    }

    /// Record the outcome of a core operation (`ok` is the success status).
    pub fn outcome<T>(
        &self,
        actor: &str,
        action: &str,
        ids: Value,
        ok: u16,
        r: &Result<T, CoreError>,
    ) {
        match r {
            Ok(_) => self.record(actor, action, ids, ok, "ok"),
            Err(e) => self.record(actor, action, ids, e.status(), &e.to_string()),
        }
    }

    /// Audit write failures so far.
    pub fn errors(&self) -> u64 {
        self.errors_seen.load(Ordering::Relaxed)
    }
}

/// The control plane's state; one per process, shared by every thread.
pub struct Core {
    /// The running configuration; [`Core::reload`] swaps in a new one with the keys that may
    /// change while running.
    cfg: RwLock<Arc<Config>>,
    ledger: Mutex<Ledger>,
    /// Applications, rooms and their participants.
    rooms: Rooms,
    pub audit: AuditTrail,
    draining: AtomicBool,
    /// The ICE-lite agent (the slow path feeds it; joins register credentials).
    pub ice: Arc<Mutex<IceAgent>>,
    /// WebRTC sessions' DTLS state (shared with the slow path's DTLS sink).
    pub rtc: Arc<Mutex<RtcTable>>,
    /// Our DTLS certificate (its fingerprint goes into every SDP answer).
    pub cert: Arc<Certificate>,
    /// Refused joins by reason, and the rate limit of their audit entries.
    denied: Mutex<denials::DeniedLog>,
    /// Set once at start when `[cluster]` is configured: joins are admitted only for rooms
    /// placed on this node. A trait object, so the core does not depend on the cluster
    /// module (which builds on the core).
    pub room_gate: std::sync::OnceLock<Arc<dyn RoomGate>>,
}

/// Decides whether a room may be joined on this node (the cluster's placement).
pub trait RoomGate: Send + Sync {
    /// `Ok` when `app`/`room` may be joined here; the refusal otherwise.
    fn admit(&self, app: &str, room: &str) -> Result<(), CoreError>;
}

impl Core {
    /// Load state, open (or re-adopt) shm and reconcile it with the state, at `now_ms`. A
    /// shm failure is not fatal: what needs shm is refused and [`Core::tick`] retries.
    pub fn start(cfg: Config, now_ms: u64) -> Result<Core, StartError> {
        // Whatever loosened the state (keys!) and audit files while control was stopped is
        // undone before anything is read from them.
        fn perm(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StartError + '_ {
            move |source| StartError::Permissions {
                path: path.to_path_buf(),
                source,
            }
        }
        let state = &cfg.control.state_dir;
        crate::files::tighten_private_dir(state).map_err(perm(state))?;
        if let (Some(dir), Some(name)) = (
            cfg.control.audit_log.parent(),
            cfg.control.audit_log.file_name(),
        ) {
            // The log and its rotated files (`audit.log.2026-12-06[.n]`).
            let prefix = name.to_string_lossy().into_owned();
            crate::files::tighten_files(dir, |f| f.to_string_lossy().starts_with(&prefix))
                .map_err(perm(dir))?;
        }
        let store = Store::open(&cfg.control.state_dir)?;
        let hasher = PeerHasher::load_or_create(&cfg.control.state_dir).map_err(|source| {
            StartError::AuditKey {
                path: cfg.control.state_dir.clone(),
                source,
            }
        })?;
        let log = Audit::open(
            &cfg.control.audit_log,
            cfg.control.audit_max_bytes,
            cfg.control.audit_retention_days,
        );
        let apps = Apps::open(&cfg.control, now_ms)?;
        let cert = Certificate::generate().map_err(|e| StartError::Cert(e.to_string()))?;
        let ice = IceAgent::new(
            std::time::Duration::from_secs(u64::from(cfg.control.ice_consent_timeout_secs)),
            cfg.shm.sessions as usize,
        );
        let c = Core {
            ledger: Mutex::new(Ledger {
                store,
                shm: None,
                reader: None,
                shm_error: Some("not opened yet".into()),
            }),
            rooms: Rooms {
                members: Mutex::new(BTreeMap::new()),
                apps: Mutex::new(apps),
                expired: AtomicU64::new(0),
            },
            audit: AuditTrail {
                log: Mutex::new(log),
                errors_seen: AtomicU64::new(0),
                hasher,
            },
            draining: AtomicBool::new(false),
            ice: Arc::new(Mutex::new(ice)),
            rtc: Arc::new(Mutex::new(RtcTable::default())),
            cert: Arc::new(cert),
            denied: Mutex::new(denials::DeniedLog::default()),
            room_gate: std::sync::OnceLock::new(),
            cfg: RwLock::new(Arc::new(cfg)),
        };
        c.ensure_shm();
        c.drop_unbound_webrtc_sessions();
        c.restore_ice_credentials();
        Ok(c)
    }

    /// The running configuration.
    pub fn config(&self) -> Arc<Config> {
        self.cfg
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Apply `new` (a configuration file read again, on SIGHUP) as far as it can change while
    /// running: the join caps, the signaling timeout, the token checks, CORS and the demo
    /// token endpoint. Every other key that differs is named in the report and keeps its
    /// running value until a restart.
    pub fn reload(&self, new: &Config) -> reload::Report {
        let mut w = self
            .cfg
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (merged, report) = reload::merge(&w, new);
        *w = Arc::new(merged);
        report
    }

    /// The persisted state with shm, locked (see the lock order in the module notes).
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        lock(&self.ledger)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Refuse new sessions from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        tracing::warn!("draining: new sessions are refused from now on");
    }

    /// Accept new sessions again.
    pub fn undrain(&self) {
        if self.draining.swap(false, Ordering::SeqCst) {
            tracing::warn!("undrained: new sessions are accepted again");
        }
    }

    /// True when shm is open.
    pub fn shm_ready(&self) -> bool {
        self.ledger().shm.is_some()
    }

    /// Sessions removed so far because ICE never nominated a peer in time.
    pub fn expired_count(&self) -> u64 {
        self.rooms.expired.load(Ordering::Relaxed)
    }

    /// Open shm if it is not open, then reconcile it with the persisted state.
    pub fn ensure_shm(&self) {
        let mut g = self.ledger();
        if g.shm.is_some() {
            return;
        }
        let cfg = self.config();
        let s = &cfg.shm;
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

    /// Periodic housekeeping at `now_ms`: retry shm, expire WebRTC sessions ICE never bound,
    /// sum up suppressed denial entries, compact the journal, expire audit files.
    pub fn tick(&self, now_ms: u64) {
        self.ensure_shm();
        self.expire_unbound_sessions(now_ms);
        self.report_suppressed_denials(now_ms);
        let mut g = self.ledger();
        if g.store.pending() >= COMPACT_AFTER {
            if let Err(e) = g.store.compact() {
                tracing::error!(error = %e, "state compaction failed");
            }
        }
        drop(g);
        lock(&self.audit.log).enforce_retention(now_ms);
    }

    /// Compact on clean shutdown.
    pub fn shutdown(&self) {
        if let Err(e) = self.ledger().store.compact() {
            tracing::error!(error = %e, "state compaction at shutdown failed");
        }
    }
}
