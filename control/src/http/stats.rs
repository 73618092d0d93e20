//! Counters of the HTTP listeners: connections accepted, open, and refused or closed early by
//! reason, exported in `/metrics` as `sluice_control_http_*{listener}`; and the rate-limited
//! warning that names them when connections are refused.
//!
//! Owns: the counters and their Prometheus text. May not touch: sockets (the server counts).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a connection was refused at accept or closed before it completed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener already had `http.max_connections` open.
    ConnectionLimit,
    /// The source address already had `http.max_connections_per_address` open.
    PerAddressLimit,
    /// A request head did not complete within `http.header_timeout_ms`.
    HeaderTimeout,
    /// A request body did not complete within `http.body_timeout_ms`.
    BodyTimeout,
    /// The TLS handshake did not finish within `http.header_timeout_ms`.
    TlsHandshakeTimeout,
    /// The TLS handshake failed (no common version or cipher, bad record, peer abort).
    TlsHandshakeFailed,
    /// The request could not be parsed (hyper answered 400 or 431 and closed).
    Malformed,
}

impl Refused {
    pub const ALL: [Refused; 7] = [
        Refused::ConnectionLimit,
        Refused::PerAddressLimit,
        Refused::HeaderTimeout,
        Refused::BodyTimeout,
        Refused::TlsHandshakeTimeout,
        Refused::TlsHandshakeFailed,
        Refused::Malformed,
    ];

    /// The `reason` label.
    pub const fn name(self) -> &'static str {
        match self {
            Refused::ConnectionLimit => "connection_limit",
            Refused::PerAddressLimit => "per_address_limit",
            Refused::HeaderTimeout => "header_timeout",
            Refused::BodyTimeout => "body_timeout",
            Refused::TlsHandshakeTimeout => "tls_handshake_timeout",
            Refused::TlsHandshakeFailed => "tls_handshake_failed",
            Refused::Malformed => "malformed",
        }
    }
}

/// How often at most one listener logs that it refused connections.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One listener's counters.
#[derive(Debug)]
pub struct ListenerStats {
    name: &'static str,
    accepted: AtomicU64,
    open: AtomicU64,
    requests: AtomicU64,
    refused: [AtomicU64; Refused::ALL.len()],
    /// Milliseconds after `epoch` of the last refusal warning, plus one (0: never).
    last_log_ms: AtomicU64,
    epoch: Instant,
}

impl ListenerStats {
    fn new(name: &'static str) -> ListenerStats {
        ListenerStats {
            name,
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            last_log_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The `listener` label.
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a refusal and, at most every [`LOG_EVERY`], warn with the totals so far.
    pub(crate) fn refuse(&self, why: Refused, peer: &str) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_log_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if due
            && self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let totals: Vec<String> = Refused::ALL
                .iter()
                .map(|r| format!("{}={}", r.name(), self.refused_count(*r)))
                .collect();
            tracing::warn!(
                listener = self.name,
                reason = why.name(),
                peer,
                totals = %totals.join(" "),
                "HTTP connection refused or closed early (logged at most every 10 s)"
            );
        }
    }

    pub fn refused_count(&self, why: Refused) -> u64 {
        self.refused[why as usize].load(Ordering::Relaxed)
    }

    pub fn open_count(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
}

/// Both listeners' counters (the public one stays zero when WHIP/WHEP share the admin
/// listener).
#[derive(Debug)]
pub struct HttpStats {
    pub admin: Arc<ListenerStats>,
    pub public: Arc<ListenerStats>,
}

impl Default for HttpStats {
    fn default() -> HttpStats {
        HttpStats {
            admin: Arc::new(ListenerStats::new("admin")),
            public: Arc::new(ListenerStats::new("public")),
        }
    }
}

impl HttpStats {
    /// The Prometheus text of the `sluice_control_http_*` families.
    pub fn render(&self) -> String {
        let both = [&self.admin, &self.public];
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = writeln!(
            s,
            "# HELP sluice_control_http_connections_total HTTP connections accepted.\n\
             # TYPE sluice_control_http_connections_total counter"
        );
        for l in both {
            let _ = writeln!(
                s,
                "sluice_control_http_connections_total{{listener=\"{}\"}} {}",
                l.name,
                l.accepted.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP sluice_control_http_open_connections HTTP connections open now.\n\
             # TYPE sluice_control_http_open_connections gauge"
        );
        for l in both {
            let _ = writeln!(
                s,
                "sluice_control_http_open_connections{{listener=\"{}\"}} {}",
                l.name,
                l.open_count()
            );
        }
        let _ = writeln!(
            s,
            "# HELP sluice_control_http_requests_total HTTP requests handed to a handler.\n\
             # TYPE sluice_control_http_requests_total counter"
        );
        for l in both {
            let _ = writeln!(
                s,
                "sluice_control_http_requests_total{{listener=\"{}\"}} {}",
                l.name,
                l.requests.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP sluice_control_http_refused_total HTTP connections refused at accept or closed before a complete request, by reason.\n\
             # TYPE sluice_control_http_refused_total counter"
        );
        for l in both {
            for r in Refused::ALL {
                let _ = writeln!(
                    s,
                    "sluice_control_http_refused_total{{listener=\"{}\",reason=\"{}\"}} {}",
                    l.name,
                    r.name(),
                    l.refused_count(r)
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_reason_and_rendered() {
        let s = HttpStats::default();
        s.public.refuse(Refused::PerAddressLimit, "tcp:127.0.0.2:1");
        s.public.refuse(Refused::PerAddressLimit, "tcp:127.0.0.2:2");
        s.admin.refuse(Refused::HeaderTimeout, "tcp:127.0.0.1:3");
        let text = s.render();
        assert!(text.contains(
            "sluice_control_http_refused_total{listener=\"public\",reason=\"per_address_limit\"} 2"
        ));
        assert!(text.contains(
            "sluice_control_http_refused_total{listener=\"admin\",reason=\"header_timeout\"} 1"
        ));
        assert!(text.contains(
            "sluice_control_http_refused_total{listener=\"admin\",reason=\"tls_handshake_failed\"} 0"
        ));
    }
}
