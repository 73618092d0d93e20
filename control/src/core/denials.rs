//! Refused joins: every denial is counted by reason (for `/metrics`); `*.denied` audit entries
//! are rate limited, so unauthenticated clients cannot grow the audit log at will, and what
//! the limit left out is summed in a periodic `webrtc.denied_suppressed` line.

use super::{lock, Core};
use crate::audit::quoted;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// `*.denied` audit entries per second, and their burst.
pub const DENIED_AUDIT_RATE: u64 = 10;
pub const DENIED_AUDIT_BURST: u64 = 20;
/// How often a "denied entries suppressed" audit line is written (when some were).
pub const DENIED_SUPPRESSED_EVERY_MS: u64 = 10_000;

/// Token bucket (in thousandths of an entry) for `*.denied` audit entries.
#[derive(Debug, Default)]
pub struct DeniedLog {
    pub(crate) by_reason: BTreeMap<&'static str, u64>,
    milli_tokens: u64,
    last_ms: u64,
    pub(crate) suppressed: u64,
    last_report_ms: u64,
}

impl DeniedLog {
    /// Count a denial; true when it may be audited.
    pub fn admit(&mut self, reason: &'static str, now_ms: u64) -> bool {
        *self.by_reason.entry(reason).or_default() += 1;
        if self.last_ms == 0 {
            self.milli_tokens = DENIED_AUDIT_BURST * 1000;
            self.last_ms = now_ms;
            self.last_report_ms = now_ms;
        }
        let refill = now_ms.saturating_sub(self.last_ms) * DENIED_AUDIT_RATE;
        self.milli_tokens = (self.milli_tokens + refill).min(DENIED_AUDIT_BURST * 1000);
        self.last_ms = self.last_ms.max(now_ms);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// One refused request, as the audit entry names it.
#[derive(Debug, Clone)]
pub struct Denial<'a> {
    /// The audit action: `whip.denied`, `whep.denied`, or `auth.failed` (admin API).
    pub action: &'a str,
    /// What was asked for (for joins: `app` and `room`; for the admin API: `method` and
    /// `path`), as the client sent it: quoted short before it is logged.
    pub target: [(&'static str, &'a str); 2],
    /// The stable reason code.
    pub reason: &'static str,
    /// The hashed source.
    pub from: String,
    pub status: u16,
    pub message: String,
}

impl Core {
    /// Count a denial at `now_ms` and audit it unless the rate limit says otherwise.
    pub fn record_denial(&self, d: Denial<'_>, now_ms: u64) {
        let audited = lock(&self.denied).admit(d.reason, now_ms);
        if audited {
            // The target comes from the URL: quoted short, never whole.
            let mut ids = serde_json::Map::new();
            for (k, v) in d.target {
                ids.insert(k.into(), quoted(v).into());
            }
            ids.insert("reason".into(), d.reason.into());
            ids.insert("from".into(), d.from.into());
            self.audit.record(
                "anonymous",
                d.action,
                Value::Object(ids),
                d.status,
                &quoted(&d.message),
            );
        }
    }

    /// Denials so far, by reason.
    pub fn denials(&self) -> Vec<(&'static str, u64)> {
        let d = lock(&self.denied);
        d.by_reason.iter().map(|(r, n)| (*r, *n)).collect()
    }

    /// Write one `webrtc.denied_suppressed` audit line with the number of `*.denied` entries
    /// the rate limit left out since the last one, at most every
    /// [`DENIED_SUPPRESSED_EVERY_MS`]. Returns that number (0: nothing written).
    pub fn report_suppressed_denials(&self, now_ms: u64) -> u64 {
        let n = {
            let mut d = lock(&self.denied);
            if d.suppressed == 0
                || now_ms.saturating_sub(d.last_report_ms) < DENIED_SUPPRESSED_EVERY_MS
            {
                return 0;
            }
            d.last_report_ms = now_ms;
            std::mem::take(&mut d.suppressed)
        };
        let ids: Value = json!({"count": n});
        self.audit
            .record("anonymous", "webrtc.denied_suppressed", ids, 200, "ok");
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token bucket: a burst, then the configured rate; every denial is counted.
    #[test]
    fn denied_audit_bucket() {
        let mut d = DeniedLog::default();
        let t = 1_000_000;
        let first: usize = (0..100).filter(|_| d.admit("expired", t)).count();
        assert_eq!(first as u64, DENIED_AUDIT_BURST);
        assert!(!d.admit("expired", t + 50), "half an entry refilled");
        assert!(d.admit("expired", t + 100));
        let later: usize = (0..100).filter(|_| d.admit("malformed", t + 1100)).count();
        assert_eq!(later as u64, DENIED_AUDIT_RATE);
        assert_eq!(d.by_reason["expired"], 102);
        assert_eq!(d.by_reason["malformed"], 100);
        assert_eq!(d.suppressed, 202 - 20 - 1 - 10);
    }
}
