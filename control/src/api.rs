//! The assembled control plane: the [`Core`] with what only the listeners need (the admin
//! token, the published URLs and the slow path's counters). The HTTP layer ([`crate::http`])
//! serves requests on it; the slow path reaches the core through it or directly.
//!
//! Owns: that assembly and the hand-off to the slow path ([`Control::dtls_sink`], the
//! [`SessionBinder`] it is). May not touch: requests (that is [`crate::http`]), shm and the
//! journal (that is [`crate::core`]).

use crate::core::{lock, Core, CoreError};
use crate::ice::{IceAgent, SessionId};
use crate::slowpath::dtls::{DtlsLimits, WebRtcDtls};
use crate::slowpath::{SessionBinder, SlowPathStats};
use contract::config::{Config, Secret};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

pub use crate::core::rooms::Member;
pub use crate::core::StartError;

/// URLs and addresses published in `/v1/status` and `control.json`.
#[derive(Debug, Clone, Default)]
pub struct Urls {
    pub admin_url: String,
    pub public_url: String,
    pub metrics_url: String,
    pub media_addr: String,
}

/// The control plane; one per process, shared by every connection thread.
pub struct Control {
    pub core: Arc<Core>,
    /// The admin bearer token; replaced when a reload reads a new one.
    token: RwLock<Secret>,
    urls: Mutex<Urls>,
    /// The ICE-lite agent (the slow-path thread feeds it; joins register credentials).
    pub ice: Arc<Mutex<IceAgent>>,
    /// Slow-path counters (the slow-path thread counts; `/metrics` reads).
    pub slow_path_stats: Arc<SlowPathStats>,
    /// HTTP listener counters (the listeners count; `/metrics` reads).
    pub http_stats: Arc<crate::http::stats::HttpStats>,
    /// This node's cluster membership, set once at start when `[cluster]` is configured
    /// (WHIP/WHEP forwarding, `/v1/cluster`).
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

impl Control {
    /// Start the core (see [`Core::start`]).
    pub fn start(cfg: Config, token: Secret) -> Result<Control, StartError> {
        let core = Arc::new(Core::start(cfg, crate::clock::unix_ms())?);
        Ok(Control {
            ice: core.ice.clone(),
            core,
            token: RwLock::new(token),
            urls: Mutex::new(Urls::default()),
            slow_path_stats: Arc::new(SlowPathStats::default()),
            http_stats: Arc::default(),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// The running configuration (see [`Core::reload`]).
    pub fn config(&self) -> Arc<Config> {
        self.core.config()
    }

    /// The admin bearer token in force.
    pub fn admin_token(&self) -> Secret {
        self.token
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Put a new admin token in force (a reload read one).
    pub fn set_admin_token(&self, token: Secret) {
        *self
            .token
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = token;
    }

    pub fn set_urls(&self, u: Urls) {
        *lock(&self.urls) = u;
    }

    pub fn urls(&self) -> Urls {
        lock(&self.urls).clone()
    }

    /// WebRTC participants.
    pub fn members(&self) -> Vec<Member> {
        self.core.members()
    }

    /// The DTLS sink for the slow path (handshakes write keys back through the core).
    pub fn dtls_sink(&self) -> WebRtcDtls {
        WebRtcDtls::new(
            self.core.rtc.clone(),
            self.core.cert.clone(),
            self.core.clone(),
            DtlsLimits::from_config(&self.config().control),
        )
    }

    /// Periodic housekeeping at `now_ms` (see [`Core::tick`]).
    pub fn tick(&self, now_ms: u64) {
        self.core.tick(now_ms);
    }

    /// Compact on clean shutdown.
    pub fn shutdown(&self) {
        self.core.shutdown();
    }
}

impl SessionBinder for Control {
    fn bind_peer(&self, session: SessionId, peer: SocketAddr) -> Result<(), CoreError> {
        self.core.bind_peer(session, peer)
    }
    fn mark_pending(&self, session: SessionId) -> Result<(), CoreError> {
        self.core.mark_pending(session)
    }
    fn learn_stream(&self, peer: SocketAddr, header: &[u8]) -> Result<bool, CoreError> {
        SessionBinder::learn_stream(&*self.core, peer, header)
    }
}
