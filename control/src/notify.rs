//! systemd readiness and watchdog notifications (`sd_notify(3)` protocol) without libsystemd:
//! one datagram per message to the unix socket named by `$NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`).
//! May not touch: anything else.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// The notification socket, when running under systemd with `Type=notify`.
#[derive(Debug)]
pub struct Notifier {
    addr: std::os::unix::net::SocketAddr,
    sock: UnixDatagram,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment; `None` when `NOTIFY_SOCKET` is unset or unusable.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let path = path.to_string_lossy().into_owned();
        let addr = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
        } else {
            std::os::unix::net::SocketAddr::from_pathname(&path).ok()?
        };
        let sock = UnixDatagram::unbound().ok()?;
        // WATCHDOG_USEC applies to us only if WATCHDOG_PID is unset or names us.
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|p| p.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(Duration::from_micros);
        Some(Notifier {
            addr,
            sock,
            watchdog,
        })
    }

    /// Send one state string, e.g. `READY=1`.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.sock.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::warn!(error = %e, state, "sd_notify failed");
        }
    }

    /// How often to send `WATCHDOG=1` (half the configured watchdog period), if enabled.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }
}
