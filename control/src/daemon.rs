//! The `sluice-control` process: start-up order, the runtime discovery file, signals,
//! systemd notifications and the housekeeping loop.
//!
//! Start-up: config → admin token (configured, or generated into the runtime dir) → state
//! (journal replay) → shm (create or re-adopt, then reconcile) → TLS certificate (when
//! `[http.tls]` is set) → listeners on the HTTP runtime → slow-path socket
//! and thread (docs/ICE.md) → `control.json` → `READY=1`. Shutdown on SIGTERM/SIGINT:
//! `STOPPING=1`, stop listeners and the slow path, compact state, remove `control.json`. The shm file is left in place so a running relay keeps forwarding.
//! May not touch: request handling (api), the packet path.

use crate::api::{Control, Urls};
use crate::cluster::{spawn_heartbeat, Cluster, ClusterError};
use crate::http::tls::{CertStore, TlsError};
use crate::http::{AdminHandler, PublicHandler};
use crate::http::{Limits, Listener, Options, Runtime, Server};
use crate::slowpath::{SlowPath, SlowPathParams};
use crate::{clock, files, secrets};
use contract::config::{Config, ConfigError, ListenAddr, RuntimeInfo, Secret};
use sd_notify::NotifyState;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] crate::core::StartError),
    #[error("{what} {path}: {source}", path = path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Load the config named on the command line, or the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::embedded_default()),
    }
}

/// Replace an unspecified IP by something a client can dial.
fn dialable(a: SocketAddr, public: &[IpAddr]) -> SocketAddr {
    if !a.ip().is_unspecified() {
        return a;
    }
    let ip = public
        .iter()
        .find(|ip| ip.is_ipv4() == a.is_ipv4())
        .or(public.first())
        .copied()
        .unwrap_or(if a.is_ipv4() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        });
    SocketAddr::new(ip, a.port())
}

fn listener_url(l: &Listener, public: &[IpAddr], tls: bool) -> std::io::Result<String> {
    let scheme = if tls { "https" } else { "http" };
    match l {
        Listener::Tcp(t) => Ok(format!("{scheme}://{}", dialable(t.local_addr()?, public))),
        Listener::Unix(..) => l.url(),
    }
}

fn bind(addr: &ListenAddr) -> Result<Listener, DaemonError> {
    Listener::bind(addr).map_err(|source| DaemonError::Listen {
        addr: addr.to_string(),
        source,
    })
}

/// What a start checks beyond [`Config::check_for_start`], so that `--check-config` agrees:
/// the `[http.tls]` certificate and key load and belong together.
pub fn check_tls(cfg: &Config) -> Result<(), TlsError> {
    if let Some(t) = &cfg.http.tls {
        CertStore::open(t)?;
    }
    Ok(())
}

/// Run until SIGTERM/SIGINT. Readiness is signalled by `control.json` appearing in the runtime
/// directory and, under systemd, by `READY=1`.
pub fn run(cfg: Config, config_path: Option<&Path>) -> Result<(), DaemonError> {
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for (sig, flag) in [
        (signal_hook::consts::SIGTERM, &stop),
        (signal_hook::consts::SIGINT, &stop),
        (signal_hook::consts::SIGHUP, &hup),
    ] {
        signal_hook::flag::register(sig, flag.clone()).map_err(|source| DaemonError::Io {
            what: "signal handler",
            path: PathBuf::new(),
            source,
        })?;
    }
    let rd = cfg.runtime_dir.clone();
    if !rd.exists() {
        files::ensure_private_dir(&rd).map_err(io_err("runtime dir", &rd))?;
    }
    let (token, generated) = admin_token(&cfg, &rd)?;
    let ctl = Arc::new(Control::start(cfg.clone(), token.clone())?);

    // A certificate that does not load stops the start, before anything listens.
    let certs = cfg.http.tls.as_ref().map(CertStore::open).transpose()?;
    let rt = Runtime::new().map_err(io_err("HTTP runtime", Path::new("")))?;
    let (servers, admin_url, public_url) = start_listeners(&cfg, &ctl, &rt, certs.clone())?;
    let sp_path = cfg.control.slow_path.clone();
    let mut slow_path = SlowPath::bind(
        &sp_path,
        SlowPathParams::from_config(&cfg.control),
        ctl.ice.clone(),
        ctl.clone(),
        // WebRTC DTLS-SRTP handshakes (slowpath::dtls); keys go back through the core.
        Box::new(ctl.dtls_sink()),
        ctl.slow_path_stats.clone(),
    )
    .and_then(SlowPath::spawn)
    .map_err(|source| DaemonError::Listen {
        addr: sp_path.display().to_string(),
        source,
    })?;
    let urls = Urls {
        metrics_url: format!("{admin_url}/metrics"),
        admin_url,
        public_url,
        media_addr: dialable(cfg.relay.bind, &cfg.control.public_addresses).to_string(),
    };
    ctl.set_urls(urls.clone());
    let cluster_stop = Arc::new(AtomicBool::new(false));
    let heartbeat = match &cfg.cluster {
        Some(cc) => {
            let c = Arc::new(Cluster::new(cc, cfg.cluster_secret()?.as_ref())?);
            c.set_urls(&urls.public_url, &urls.media_addr);
            c.load_trunks(&ctl.core, &cfg.control.state_dir, crate::clock::unix_ms());
            // Set once, here, before any listener could have asked for it.
            let _ = ctl.core.room_gate.set(c.clone());
            let _ = ctl.cluster.set(c.clone());
            tracing::info!(node = %cc.node_id, region = %cc.region, "cluster: joining");
            Some(
                spawn_heartbeat(c, ctl.core.clone(), cluster_stop.clone()).map_err(|source| {
                    DaemonError::Io {
                        what: "cluster heartbeat thread",
                        path: PathBuf::new(),
                        source,
                    }
                })?,
            )
        }
        None => None,
    };

    let rt_file = write_runtime_file(&cfg, &rd, &token, &urls)?;
    tracing::info!(
        admin = %urls.admin_url,
        public = %urls.public_url,
        media = %urls.media_addr,
        shm = %cfg.shm.path.display(),
        runtime = %rt_file.display(),
        "sluice-control ready"
    );

    let reload = Reload {
        path: config_path,
        token_generated: generated,
        rd: &rd,
        urls: &urls,
        certs: certs.as_deref(),
    };
    serve_until_stopped(&ctl, &stop, &hup, &reload);

    tracing::info!("stopping");
    notify(&[NotifyState::Stopping]);
    let mut servers = servers;
    for s in &mut servers {
        s.shutdown();
    }
    drop(servers);
    // Leave the registry (and give the rooms up) once no new join can arrive.
    cluster_stop.store(true, Ordering::SeqCst);
    if let Some(h) = heartbeat {
        let _ = h.join();
    }
    // Requests under way get a moment to finish.
    rt.shutdown(Duration::from_secs(2));
    slow_path.shutdown();
    ctl.shutdown();
    // Remove the discovery file only if it is still ours (a newer instance may own it).
    if RuntimeInfo::path_in(&rd).exists() {
        let ours = std::fs::read(&rt_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<RuntimeInfo>(&b).ok())
            .is_some_and(|i| i.pid == std::process::id());
        if ours {
            let _ = std::fs::remove_file(&rt_file);
            if generated {
                let _ = std::fs::remove_file(rd.join("admin.token"));
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The configured admin token, or a generated one published in `<runtime_dir>/admin.token`
/// (true: generated, to be removed at exit).
fn admin_token(cfg: &Config, rd: &Path) -> Result<(Secret, bool), DaemonError> {
    Ok(match cfg.admin_token()? {
        Some(t) => (t, false),
        None => {
            let t =
                secrets::generate_token().map_err(io_err("random", Path::new("/dev/urandom")))?;
            let p = rd.join("admin.token");
            files::write_private_atomic(&p, format!("{t}\n").as_bytes())
                .map_err(io_err("token file", &p))?;
            tracing::info!(path = %p.display(), "generated an admin token");
            (Secret::new(t), true)
        }
    })
}

/// Bind the admin listener and (when it differs) the public one, and serve both on `rt`;
/// returns the servers with the admin and public URLs. HTTPS (`certs`) is served on the public
/// listener only (the configuration check makes sure there is one).
fn start_listeners(
    cfg: &Config,
    ctl: &Arc<Control>,
    rt: &Runtime,
    certs: Option<Arc<CertStore>>,
) -> Result<(Vec<Server>, String, String), DaemonError> {
    let public = &cfg.control.public_addresses;
    let limits = Limits::from_config(&cfg.http);
    let admin_l = bind(&cfg.control.admin_listen)?;
    let admin_url =
        listener_url(&admin_l, &[], false).map_err(io_err("admin listener", Path::new("")))?;
    let mut servers = Vec::new();
    let mut public_url = admin_url.clone();
    if let Some(pl) = cfg
        .control
        .public_listen
        .as_ref()
        .filter(|p| **p != cfg.control.admin_listen)
    {
        let l = bind(pl)?;
        public_url = listener_url(&l, public, certs.is_some())
            .map_err(io_err("public listener", Path::new("")))?;
        let opts = Options {
            limits,
            tls: certs,
            hsts_max_age_secs: cfg.http.tls.as_ref().map_or(0, |t| t.hsts_max_age_secs),
            stats: ctl.http_stats.public.clone(),
        };
        servers.push(
            Server::start(rt, l, Arc::new(PublicHandler(ctl.clone())), opts)
                .map_err(io_err("public listener", Path::new("")))?,
        );
    }
    let opts = Options {
        limits,
        tls: None,
        hsts_max_age_secs: 0,
        stats: ctl.http_stats.admin.clone(),
    };
    servers.push(
        Server::start(rt, admin_l, Arc::new(AdminHandler(ctl.clone())), opts)
            .map_err(io_err("admin listener", Path::new("")))?,
    );
    // After the admin listener: a second instance fails there before it could replace a
    // running instance's slow-path socket.
    Ok((servers, admin_url, public_url))
}

/// Publish `control.json` (URLs, token, pid) in the runtime directory; returns its path.
fn write_runtime_file(
    cfg: &Config,
    rd: &Path,
    token: &Secret,
    urls: &Urls,
) -> Result<PathBuf, DaemonError> {
    let info = RuntimeInfo {
        admin_url: urls.admin_url.clone(),
        admin_token: token.expose().to_string(),
        media_addr: urls.media_addr.clone(),
        public_url: urls.public_url.clone(),
        metrics_url: urls.metrics_url.clone(),
        pid: std::process::id(),
        shm_path: cfg.shm.path.display().to_string(),
    };
    let rt_file = RuntimeInfo::path_in(rd);
    let json = serde_json::to_vec_pretty(&info).map_err(|e| DaemonError::Io {
        what: "runtime file",
        path: rt_file.clone(),
        source: std::io::Error::other(e),
    })?;
    files::write_private_atomic(&rt_file, &json).map_err(io_err("runtime file", &rt_file))?;
    Ok(rt_file)
}

/// Signal readiness, then send watchdog pings and run housekeeping until SIGTERM/SIGINT;
/// reload the configuration on SIGHUP.
fn serve_until_stopped(ctl: &Control, stop: &AtomicBool, hup: &AtomicBool, reload: &Reload) {
    // Without `$NOTIFY_SOCKET` (not under systemd) these are no-ops.
    notify(&[
        NotifyState::Ready,
        NotifyState::Status("serving the admin API"),
    ]);
    let wd = watchdog_interval();
    let mut last_wd = Instant::now();
    let mut last_tick = Instant::now();
    let mut last_cert_check = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(every) = wd {
            if last_wd.elapsed() >= every {
                notify(&[NotifyState::Watchdog]);
                last_wd = Instant::now();
            }
        }
        if hup.swap(false, Ordering::SeqCst) {
            notify(&[NotifyState::Reloading]);
            reload.run(ctl);
            notify(&[NotifyState::Ready]);
        }
        if let Some(c) = reload.certs {
            if last_cert_check.elapsed() >= CERT_CHECK_EVERY {
                c.reload_if_changed(false);
                last_cert_check = Instant::now();
            }
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            ctl.tick(clock::unix_ms());
            last_tick = Instant::now();
        }
    }
}

/// How often the TLS certificate and key files are checked for a change.
const CERT_CHECK_EVERY: Duration = Duration::from_secs(2);

/// What SIGHUP needs: the file to read again, what to rewrite when the token changes, and the
/// TLS certificate to read again.
struct Reload<'a> {
    path: Option<&'a Path>,
    token_generated: bool,
    rd: &'a Path,
    urls: &'a Urls,
    certs: Option<&'a CertStore>,
}

impl Reload<'_> {
    /// Read the TLS certificate and key files again (they need no configuration change), then
    /// the configuration file, and apply what may change while running (see `core::reload`; a
    /// new admin token too, republished in `control.json`). A file that does not load changes
    /// nothing. Logged and audited; never fatal.
    fn run(&self, ctl: &Control) {
        if let Some(c) = self.certs {
            c.reload_if_changed(true);
        }
        let Some(path) = self.path else {
            tracing::info!("SIGHUP: running on the embedded default, no file to reload");
            return;
        };
        let (new, warnings) = match Config::load(path)
            .and_then(|c| c.check_for_start().map(|w| (c, w)))
        {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: configuration not reloaded; the running one stays");
                ctl.core
                    .audit
                    .record("signal", "config.reload", json!({}), 400, &e.to_string());
                return;
            }
        };
        for w in warnings {
            tracing::warn!("{w}");
        }
        let mut report = ctl.core.reload(&new);
        if !self.token_generated {
            if let Ok(Some(t)) = new.admin_token() {
                if t != ctl.admin_token() {
                    ctl.set_admin_token(t.clone());
                    report.applied.push("control.admin_token");
                    if let Err(e) = write_runtime_file(&new, self.rd, &t, self.urls) {
                        tracing::error!(error = %e, "SIGHUP: control.json not rewritten");
                    }
                }
            }
        }
        tracing::info!(
            applied = ?report.applied,
            needs_restart = ?report.needs_restart,
            "SIGHUP: configuration reloaded"
        );
        ctl.core.audit.record(
            "signal",
            "config.reload",
            json!({"applied": report.applied, "needs_restart": report.needs_restart}),
            200,
            "ok",
        );
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, which applies to us when
/// `$WATCHDOG_PID` is unset or names us (`sd_notify::watchdog_enabled` insists on the PID).
fn watchdog_interval() -> Option<Duration> {
    let for_us = std::env::var("WATCHDOG_PID")
        .ok()
        .is_none_or(|p| p.trim() == std::process::id().to_string());
    std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|u| u.trim().parse::<u64>().ok())
        .filter(|&u| u > 0 && for_us)
        .map(|u| Duration::from_micros(u) / 2)
}

/// One sd_notify message; a failure is logged, never fatal.
fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
