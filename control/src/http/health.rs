//! Health as load balancers and supervisors read it: `/healthz` (liveness: control answers)
//! and `/readyz` (ready to take calls: shared memory open, the relay up on every worker, not
//! draining), and the one rule for "the relay is up" that `/v1/status`, `/readyz` and
//! `sluice_relay_up` share.
//!
//! Owns: those answers and that rule. May not touch: shm (it reads the relay info it is
//! given), the core's state beyond its flags.

use contract::shm::{RelayInfo, ShmReader};
use serde_json::{json, Value};

use super::server::Response;

/// A worker whose heartbeat is older than this is not turning its loop.
pub const RELAY_UP_MS: u64 = 2000;

/// The relay as its shm heartbeats show it at `now_unix_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayHealth {
    /// Whether a relay ever reported itself.
    pub reported: bool,
    /// Workers the relay reported.
    pub workers: u32,
    /// Workers whose heartbeat is fresh.
    pub workers_up: u32,
    /// Workers whose heartbeat is missing or older than [`RELAY_UP_MS`], or that the relay
    /// marked stuck (no loop turn finished within its stall threshold).
    pub stale_workers: Vec<u32>,
    /// Age of the newest heartbeat, ms (None before any).
    pub newest_age_ms: Option<u64>,
}

impl RelayHealth {
    /// The relay as `r` shows it: its info block, and each worker's stuck mark.
    pub fn read(r: &ShmReader, now_unix_ms: u64) -> RelayHealth {
        let info = r.relay_info();
        let stuck: Vec<u32> = (0..info.workers)
            .filter(|&w| {
                r.worker_counters(w as usize)
                    .is_some_and(|c| c.snapshot().stuck_since_unix_ms != 0)
            })
            .collect();
        RelayHealth::of(&info, &stuck, now_unix_ms)
    }

    /// From the relay info, the workers marked stuck, and the time.
    pub fn of(info: &RelayInfo, stuck: &[u32], now_unix_ms: u64) -> RelayHealth {
        let reported = info.pid != 0;
        let fresh = |hb: u64| hb > 0 && now_unix_ms.saturating_sub(hb) <= RELAY_UP_MS;
        let stale_workers: Vec<u32> = (0..info.workers)
            .filter(|&w| {
                stuck.contains(&w)
                    || !fresh(
                        info.heartbeats_unix_ms
                            .get(w as usize)
                            .copied()
                            .unwrap_or(0),
                    )
            })
            .collect();
        let newest = info.heartbeats_unix_ms.iter().copied().max().unwrap_or(0);
        RelayHealth {
            reported,
            workers: info.workers,
            workers_up: info.workers - stale_workers.len() as u32,
            stale_workers,
            newest_age_ms: (newest > 0).then(|| now_unix_ms.saturating_sub(newest)),
        }
    }

    /// Up: a relay reported itself and every one of its workers is turning its loop.
    pub fn up(&self) -> bool {
        self.reported && self.workers > 0 && self.stale_workers.is_empty()
    }
}

/// `/healthz`: control is alive and answering (200 whatever the relay does), with what it
/// knows for humans.
pub fn healthz(shm_ready: bool, draining: bool) -> Response {
    Response::json(
        200,
        &json!({"ok": true, "shm": shm_ready, "draining": draining}),
    )
}

/// `/readyz`: 200 when the appliance takes calls, else 503 with the reasons.
pub fn readyz(shm_ready: bool, relay: Option<&RelayHealth>, draining: bool) -> Response {
    let mut reasons: Vec<Value> = Vec::new();
    if !shm_ready {
        reasons.push("shm unavailable".into());
    }
    match relay {
        None => reasons.push("relay down: no relay has attached".into()),
        Some(r) if !r.reported => reasons.push("relay down: no relay has attached".into()),
        Some(r) if !r.up() => reasons.push(
            format!(
                "relay down: workers {:?} of {} are stuck or have not turned their loop in {} ms",
                r.stale_workers, r.workers, RELAY_UP_MS
            )
            .into(),
        ),
        Some(_) => {}
    }
    if draining {
        reasons.push("draining".into());
    }
    let ready = reasons.is_empty();
    Response::json(
        if ready { 200 } else { 503 },
        &json!({"ready": ready, "reasons": reasons}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: u32, hbs: &[u64]) -> RelayInfo {
        RelayInfo {
            pid,
            workers: hbs.len() as u32,
            heartbeats_unix_ms: hbs.to_vec(),
            ..RelayInfo::default()
        }
    }

    #[test]
    fn up_means_every_worker_turns() {
        let now = 100_000;
        assert!(RelayHealth::of(&info(7, &[now - 10, now - 1500]), &[], now).up());
        let h = RelayHealth::of(&info(7, &[now - 10, now - 2500]), &[], now);
        assert!(!h.up());
        assert_eq!((h.workers_up, h.stale_workers.clone()), (1, vec![1]));
        assert_eq!(h.newest_age_ms, Some(10));
        let h = RelayHealth::of(&info(7, &[now - 10, 0]), &[], now);
        assert_eq!(h.stale_workers, vec![1], "a worker that never beat");
        assert!(!RelayHealth::of(&info(0, &[]), &[], now).up(), "no relay");
        // Fresh heartbeats, but the relay marked worker 0 stuck.
        let h = RelayHealth::of(&info(7, &[now, now]), &[0], now);
        assert_eq!((h.up(), h.stale_workers.clone()), (false, vec![0]));
    }

    #[test]
    fn readyz_names_every_reason() {
        let now = 100_000;
        let good = RelayHealth::of(&info(7, &[now]), &[], now);
        assert_eq!(readyz(true, Some(&good), false).status, 200);
        let r = readyz(false, None, true);
        assert_eq!(r.status, 503);
        let body = String::from_utf8_lossy(&r.body).into_owned();
        for want in ["shm unavailable", "no relay has attached", "draining"] {
            assert!(body.contains(want), "{body}");
        }
        let stale = RelayHealth::of(&info(7, &[now, now - 5000]), &[], now);
        let body = String::from_utf8_lossy(&readyz(true, Some(&stale), false).body).into_owned();
        assert!(body.contains("workers [1] of 2 are stuck or"), "{body}");
        assert_eq!(
            healthz(false, true).status,
            200,
            "liveness ignores the relay"
        );
    }
}
