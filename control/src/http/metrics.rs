//! `/metrics` (Prometheus text exposition format 0.0.4) and `/v1/stats` (JSON), both read
//! from the relay's per-worker counter blocks in shm plus control's own gauges.
//!
//! Per-worker families carry a `worker` label; `sluice_relay_*` families are the sums over all
//! counter blocks (so `sum(sluice_rx_packets_total)` and `sluice_relay_rx_packets_total`
//! agree, and neither double counts).
//! May not touch: shm writes, the state.

use super::health::RelayHealth;
use crate::ice::IceCounters;
use crate::slowpath::SlowPathSnapshot;
use contract::shm::{
    CounterSnapshot, Diagnostics, DropReason, Feedback, IoTotals, ShmReader, TcpTotals,
    BATCH_BUCKETS, TIME_BUCKETS,
};
use serde_json::{json, Value};
use std::fmt::Write;

/// Control-side values exported next to the relay counters.
#[derive(Debug, Clone, Default)]
pub struct ControlGauges {
    pub sessions: u64,
    pub routes: u64,
    pub draining: bool,
    pub shm_ready: bool,
    pub generation: u64,
    pub audit_errors: u64,
    /// Slow-path counters (docs/ICE.md).
    pub slow_path: SlowPathSnapshot,
    /// ICE-lite agent counters.
    pub ice: IceCounters,
    /// Sessions with ICE credentials.
    pub ice_sessions: u64,
    pub now_unix_ms: u64,
}

/// Workers to list individually: the relay's own count when it published one, else every
/// counter block that ever counted anything.
fn worker_snapshots(r: &ShmReader) -> Vec<(usize, u64, CounterSnapshot)> {
    let info = r.relay_info();
    let cap = r.capacity().workers as usize;
    let mut out = Vec::new();
    for w in 0..cap {
        let Some(c) = r.worker_counters(w) else { break };
        let snap = c.snapshot();
        let listed = if info.pid != 0 {
            w < info.workers as usize
        } else {
            snap != CounterSnapshot::default()
        };
        if listed {
            out.push((w, c.heartbeat(), snap));
        }
    }
    out
}

fn snapshot_json(s: &CounterSnapshot) -> Value {
    let mut drops = serde_json::Map::new();
    for r in DropReason::ALL {
        drops.insert(r.name().to_string(), json!(s.dropped(r)));
    }
    let mut feedback = serde_json::Map::new();
    for f in Feedback::ALL {
        feedback.insert(f.name().to_string(), json!(s.feedback(f)));
    }
    json!({
        "packets_in": s.packets_in,
        "bytes_in": s.bytes_in,
        "packets_out": s.packets_out,
        "bytes_out": s.bytes_out,
        "drops": drops,
        "feedback": feedback,
        "drops_total": s.dropped_total(),
        "slow_path_up": s.slow_path_up,
        "slow_path_down": s.slow_path_down,
        "batches": s.batches,
        "batch_nanos": s.batch_nanos,
        "batch_hist": s.batch_hist.to_vec(),
        "time_hist": s.time_hist.to_vec(),
        "loop_turns": s.loop_turns,
        "stalls": s.stalls,
        "rx_queue_bytes": s.rx_queue_bytes,
        "kernel_drops": s.kernel_drops,
        "stuck_since_unix_ms": s.stuck_since_unix_ms,
        "stuck": s.stuck,
        "io": IoTotals::NAMES
            .iter()
            .zip(s.io.to_array())
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect::<serde_json::Map<String, Value>>(),
        "tcp": TcpTotals::NAMES
            .iter()
            .zip(s.tcp.to_array())
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect::<serde_json::Map<String, Value>>(),
    })
}

/// The `/v1/stats` body.
pub fn stats_json(r: &ShmReader, slow_path_datagrams: u64, audit_errors: u64) -> Value {
    let workers: Vec<Value> = worker_snapshots(r)
        .into_iter()
        .map(|(w, hb, s)| {
            let mut v = snapshot_json(&s);
            v["worker"] = json!(w);
            v["heartbeat_unix_ms"] = json!(hb);
            v
        })
        .collect();
    json!({
        "workers": workers,
        "totals": snapshot_json(&r.totals()),
        "control": {
            "slow_path_datagrams": slow_path_datagrams,
            "audit_errors": audit_errors,
        },
    })
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {v}");
        }
    }
}

/// Seconds as a Prometheus float from nanoseconds.
fn secs(nanos: u64) -> String {
    format!("{:e}", nanos as f64 / 1e9)
}

/// Emit one histogram's samples. Bucket `i` of the shm histograms counts values in
/// `2^i ..= 2^(i+1) - 1` (bucket 0 also counts 0; the last bucket is open-ended), so the
/// cumulative `le` bound of bucket `i` is `2^(i+1) - 1`, and the last is `+Inf`.
fn histogram(
    o: &mut Out,
    name: &str,
    labels: &str,
    hist: &[u64],
    le: impl Fn(u64) -> String,
    sum: Option<String>,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cum = 0u64;
    for (i, n) in hist.iter().enumerate() {
        cum = cum.wrapping_add(*n);
        if i + 1 < hist.len() {
            let bound = le((1u64 << (i + 1)) - 1);
            o.sample(
                &format!("{name}_bucket"),
                &format!("{labels}{sep}le=\"{bound}\""),
                cum,
            );
        }
    }
    o.sample(
        &format!("{name}_bucket"),
        &format!("{labels}{sep}le=\"+Inf\""),
        cum,
    );
    if let Some(s) = sum {
        o.sample(&format!("{name}_sum"), labels, s);
    }
    // Each batch lands in exactly one bucket, so the count is the +Inf bucket (reading
    // `batches` separately could disagree by a batch: the counters are not one snapshot).
    o.sample(&format!("{name}_count"), labels, cum);
}

/// Slow-path and ICE families (docs/ICE.md).
fn slow_path_and_ice(o: &mut Out, g: &ControlGauges) {
    let sp = &g.slow_path;
    o.family(
        "sluice_control_slow_path_datagrams_total",
        "counter",
        "Datagrams control received from the relay over the slow path, by RFC 7983 kind.",
    );
    for (kind, v) in [("stun", sp.stun), ("dtls", sp.dtls), ("other", sp.other)] {
        o.sample(
            "sluice_control_slow_path_datagrams_total",
            &format!("kind=\"{kind}\""),
            v,
        );
    }
    o.family(
        "sluice_control_slow_path_stream_reports_total",
        "counter",
        "Reports of publishers' packets on unrouted SSRCs from the relay (simulcast layer \
         learning), by outcome; ignored ones are also in the drops.",
    );
    for (result, v) in [("learned", sp.streams_learned), ("received", sp.streams)] {
        o.sample(
            "sluice_control_slow_path_stream_reports_total",
            &format!("result=\"{result}\""),
            v,
        );
    }
    o.family(
        "sluice_control_slow_path_drops_total",
        "counter",
        "Slow-path datagrams dropped by control, by reason.",
    );
    for (reason, v) in sp.drops() {
        o.sample(
            "sluice_control_slow_path_drops_total",
            &format!("reason=\"{reason}\""),
            v,
        );
    }
    let plain: [(&str, &str, &str, u64); 8] = [
        (
            "sluice_control_slow_path_connections",
            "gauge",
            "Relay slow-path connections open now.",
            sp.connections,
        ),
        (
            "sluice_control_slow_path_connects_total",
            "counter",
            "Relay slow-path connections accepted.",
            sp.connects,
        ),
        (
            "sluice_control_slow_path_connections_refused_total",
            "counter",
            "Relay slow-path connections refused (connection limit).",
            sp.refused,
        ),
        (
            "sluice_control_slow_path_source_evictions_total",
            "counter",
            "Per-source rate-limit table entries evicted for new sources.",
            sp.evictions,
        ),
        (
            "sluice_control_ice_sessions",
            "gauge",
            "Sessions with ICE credentials.",
            g.ice_sessions,
        ),
        (
            "sluice_control_ice_nominations_total",
            "counter",
            "ICE nominations (first, or a move to a new address).",
            g.ice.nominations,
        ),
        (
            "sluice_control_ice_consent_expiries_total",
            "counter",
            "ICE sessions expired for lack of consent (RFC 7675).",
            g.ice.expiries,
        ),
        (
            "sluice_control_ice_bind_errors_total",
            "counter",
            "ICE events that could not be applied to a session.",
            sp.bind_errors,
        ),
    ];
    for (name, kind, help, v) in plain {
        o.family(name, kind, help);
        o.sample(name, "", v);
    }
    o.family(
        "sluice_control_ice_checks_total",
        "counter",
        "STUN datagrams the ICE-lite agent processed, by outcome.",
    );
    let ice = &g.ice;
    for (result, v) in [
        ("success", ice.success),
        ("bad_request", ice.bad_request),
        ("unauthenticated", ice.unauthenticated),
        ("unknown_attribute", ice.unknown_attribute),
        ("role_conflict", ice.role_conflict),
        ("discarded", ice.discarded),
    ] {
        o.sample(
            "sluice_control_ice_checks_total",
            &format!("result=\"{result}\""),
            v,
        );
    }
}

/// The `/metrics` body. With no shm reader only control's own gauges are exported.
pub fn render(r: Option<&ShmReader>, g: &ControlGauges) -> String {
    let mut o = Out(String::with_capacity(16 * 1024));
    control_families(&mut o, g);
    slow_path_and_ice(&mut o, g);
    let relay_pid = r.map(|r| r.relay_info().pid).filter(|&p| p != 0);
    build_and_process_families(&mut o, relay_pid);
    if let Some(r) = r {
        relay_families(&mut o, r, g);
    }
    o.0
}

/// A `process_*` family: name, type, help, and the value of one sample.
type ProcessFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&super::process::ProcessSample) -> String,
);

/// `sluice_build_info` and the `process_*` families of both daemons (label `process`).
fn build_and_process_families(o: &mut Out, relay_pid: Option<u32>) {
    o.family(
        "sluice_build_info",
        "gauge",
        "Always 1; the labels name the running control's version.",
    );
    o.sample(
        "sluice_build_info",
        &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        1,
    );
    let mut procs = vec![("control", super::process::sample(std::process::id()))];
    if let Some(pid) = relay_pid {
        procs.push(("relay", super::process::sample(pid)));
    }
    let fams: [ProcessFamily; 4] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time, seconds.",
            |p| format!("{:e}", p.cpu_seconds),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory, bytes.",
            |p| p.resident_bytes.to_string(),
        ),
        ("process_open_fds", "gauge", "Open file descriptors.", |p| {
            p.open_fds.to_string()
        }),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time, seconds since the Unix epoch.",
            |p| format!("{:e}", p.start_time_seconds),
        ),
    ];
    for (name, kind, help, get) in fams {
        o.family(name, kind, help);
        for (who, s) in &procs {
            if let Some(s) = s {
                o.sample(name, &format!("process=\"{who}\""), get(s));
            }
        }
    }
}

/// Control's own gauges and counters.
fn control_families(o: &mut Out, g: &ControlGauges) {
    o.family(
        "sluice_sessions",
        "gauge",
        "Sessions configured in control.",
    );
    o.sample("sluice_sessions", "", g.sessions);
    o.family("sluice_routes", "gauge", "Routes configured in control.");
    o.sample("sluice_routes", "", g.routes);
    o.family(
        "sluice_draining",
        "gauge",
        "1 while control refuses new sessions.",
    );
    o.sample("sluice_draining", "", u8::from(g.draining));
    o.family(
        "sluice_shm_up",
        "gauge",
        "1 when control has the shared-memory file open.",
    );
    o.sample("sluice_shm_up", "", u8::from(g.shm_ready));
    o.family(
        "sluice_shm_generation",
        "gauge",
        "Shared-memory generation counter.",
    );
    o.sample("sluice_shm_generation", "", g.generation);
    o.family(
        "sluice_audit_write_errors_total",
        "counter",
        "Audit log writes that failed.",
    );
    o.sample("sluice_audit_write_errors_total", "", g.audit_errors);
}

type Get = fn(&CounterSnapshot) -> u64;

/// The plain counters of a counter block: (name, help, getter).
fn simple_counters() -> [(&'static str, &'static str, Get); 10] {
    [
        ("rx_packets", "Datagrams received.", |s| s.packets_in),
        ("rx_bytes", "Bytes received.", |s| s.bytes_in),
        ("tx_packets", "Datagrams sent.", |s| s.packets_out),
        ("tx_bytes", "Bytes sent.", |s| s.bytes_out),
        (
            "slow_path_up",
            "Datagrams handed to control over the slow path.",
            |s| s.slow_path_up,
        ),
        (
            "slow_path_down",
            "Datagrams from control sent out through the relay.",
            |s| s.slow_path_down,
        ),
        ("loop_turns", "Worker loop turns.", |s| s.loop_turns),
        (
            "stalls",
            "Loop turns longer than relay.stall_threshold_ms.",
            |s| s.stalls,
        ),
        (
            "kernel_drops",
            "Datagrams the kernel dropped at the worker's socket (receive queue full).",
            |s| s.kernel_drops,
        ),
        (
            "stuck",
            "Times the worker finished no loop turn within relay.stall_threshold_ms.",
            |s| s.stuck,
        ),
    ]
}

/// The relay's families: liveness, per worker, and summed over all workers.
fn relay_families(o: &mut Out, r: &ShmReader, g: &ControlGauges) {
    let info = r.relay_info();
    let health = RelayHealth::read(r, g.now_unix_ms);
    o.family(
        "sluice_relay_up",
        "gauge",
        "1 when every relay worker's heartbeat is under 2 s old (each worker turns its loop).",
    );
    o.sample("sluice_relay_up", "", u8::from(health.up()));
    o.family(
        "sluice_relay_workers_up",
        "gauge",
        "Relay workers whose heartbeat is under 2 s old.",
    );
    o.sample("sluice_relay_workers_up", "", health.workers_up);
    o.family(
        "sluice_relay_workers",
        "gauge",
        "Worker threads the relay reported.",
    );
    o.sample("sluice_relay_workers", "", info.workers);

    let workers = worker_snapshots(r);
    per_worker_families(o, &workers, g.now_unix_ms);
    let t = r.totals();
    relay_total_families(o, &t);
    session_families(o, &r.diagnostics().0);
    debug_assert_eq!(BATCH_BUCKETS, t.batch_hist.len());
    debug_assert_eq!(TIME_BUCKETS, t.time_hist.len());
}

/// Most sessions `/metrics` gives series of their own: the lowest session ids with an
/// estimate (a session's series stay put while it lives); the others are counted in
/// `sluice_sessions_estimated` only, so a scrape never grows with the audience.
pub const MAX_SESSION_SERIES: usize = 256;

/// Per-session families from the session statistics: the downlink estimate of each
/// subscriber the relay estimates for, and the layer switches made on its simulcast outputs,
/// for at most [`MAX_SESSION_SERIES`] sessions.
fn session_families(o: &mut Out, d: &Diagnostics) {
    let estimated = d.sessions.values().filter(|s| s.totals.downlink_bps != 0);
    let total = estimated.clone().count();
    o.family(
        "sluice_sessions_estimated",
        "gauge",
        "Subscribers with a downlink bandwidth estimate (all of them, series or not).",
    );
    o.sample("sluice_sessions_estimated", "", total);
    o.family(
        "sluice_session_downlink_estimate_bps",
        "gauge",
        "The relay's downlink bandwidth estimate towards a subscriber, bit/s (lowest session ids first, at most 256 sessions).",
    );
    for s in estimated.clone().take(MAX_SESSION_SERIES) {
        let labels = format!("session=\"{}\"", s.totals.session);
        o.sample(
            "sluice_session_downlink_estimate_bps",
            &labels,
            s.totals.downlink_bps,
        );
    }
    o.family(
        "sluice_session_layer_switches_total",
        "counter",
        "Simulcast layer switches made on a subscriber's outputs (the sessions of sluice_session_downlink_estimate_bps).",
    );
    for s in estimated.clone().take(MAX_SESSION_SERIES) {
        let switches: u64 = (s.streams.iter())
            .filter_map(|st| st.layer.map(|l| u64::from(l.switches)))
            .sum();
        let labels = format!("session=\"{}\"", s.totals.session);
        o.sample("sluice_session_layer_switches_total", &labels, switches);
    }
    o.family(
        "sluice_session_layer_switch_latency_max_seconds",
        "gauge",
        "Longest layer switch on a subscriber's outputs, from the selector wanting the layer to its first packet forwarded (the sessions of sluice_session_downlink_estimate_bps).",
    );
    for s in estimated.take(MAX_SESSION_SERIES) {
        let ms = (s.streams.iter())
            .filter_map(|st| st.layer.map(|l| l.switch_ms_max))
            .max()
            .unwrap_or(0);
        let labels = format!("session=\"{}\"", s.totals.session);
        o.sample(
            "sluice_session_layer_switch_latency_max_seconds",
            &labels,
            f64::from(ms) / 1000.0,
        );
    }
}

fn per_worker_families(o: &mut Out, workers: &[(usize, u64, CounterSnapshot)], now_unix_ms: u64) {
    let simple = simple_counters();
    for (name, help, get) in simple {
        let fam = format!("sluice_{name}_total");
        o.family(&fam, "counter", &format!("{help} Per worker."));
        for (w, _, s) in workers {
            o.sample(&fam, &format!("worker=\"{w}\""), get(s));
        }
    }
    worker_health_families(o, workers);
    o.family(
        "sluice_drops_total",
        "counter",
        "Datagrams dropped, by reason. Per worker.",
    );
    for (w, _, s) in workers {
        for d in DropReason::ALL {
            o.sample(
                "sluice_drops_total",
                &format!("worker=\"{w}\",reason=\"{}\"", d.name()),
                s.dropped(d),
            );
        }
    }
    o.family(
        "sluice_feedback_total",
        "counter",
        "Loss recovery and feedback handled by the relay (NACKs received, packets resent from \
         the cache or as RTX, NACKs sent to publishers, cache misses, PLIs aggregated, \
         hand-overs between workers and their drops) and simulcast layer selection (packets \
         of a layer not sent, layer switches, key frames asked for a switch), transport-cc \
         feedback written to publishers, bandwidth probes sent to subscribers (clusters, \
         packets, bytes, successes), by event. Per worker.",
    );
    for (w, _, s) in workers {
        for f in Feedback::ALL {
            o.sample(
                "sluice_feedback_total",
                &format!("worker=\"{w}\",event=\"{}\"", f.name()),
                s.feedback(f),
            );
        }
    }
    o.family(
        "sluice_batch_size",
        "histogram",
        "Datagrams per processed batch. Per worker.",
    );
    for (w, _, s) in workers {
        histogram(
            o,
            "sluice_batch_size",
            &format!("worker=\"{w}\""),
            &s.batch_hist,
            |b| b.to_string(),
            None,
        );
    }
    o.family(
        "sluice_batch_seconds",
        "histogram",
        "Processing time per batch in seconds. Per worker.",
    );
    for (w, _, s) in workers {
        histogram(
            o,
            "sluice_batch_seconds",
            &format!("worker=\"{w}\""),
            &s.time_hist,
            secs,
            Some(secs(s.batch_nanos)),
        );
    }
    o.family(
        "sluice_worker_heartbeat_age_seconds",
        "gauge",
        "Seconds since the worker's last heartbeat.",
    );
    for (w, hb, _) in workers {
        if *hb > 0 {
            let age = now_unix_ms.saturating_sub(*hb);
            o.sample(
                "sluice_worker_heartbeat_age_seconds",
                &format!("worker=\"{w}\""),
                format!("{:e}", age as f64 / 1e3),
            );
        }
    }
}

/// What the relay samples from outside each worker: its socket's receive queue, whether it is
/// stuck, and its backend's I/O statistics.
fn worker_health_families(o: &mut Out, workers: &[(usize, u64, CounterSnapshot)]) {
    o.family(
        "sluice_rx_queue_bytes",
        "gauge",
        "Bytes waiting in the worker's socket receive queue (sampled every 50 ms).",
    );
    for (w, _, s) in workers {
        o.sample(
            "sluice_rx_queue_bytes",
            &format!("worker=\"{w}\""),
            s.rx_queue_bytes,
        );
    }
    o.family(
        "sluice_worker_stuck",
        "gauge",
        "1 while the worker has finished no loop turn within relay.stall_threshold_ms.",
    );
    for (w, _, s) in workers {
        o.sample(
            "sluice_worker_stuck",
            &format!("worker=\"{w}\""),
            u8::from(s.stuck_since_unix_ms != 0),
        );
    }
    o.family(
        "sluice_io_events_total",
        "counter",
        "The worker's I/O backend events, by kind (syscalls, errors, re-arms, GSO trains).",
    );
    for (w, _, s) in workers {
        for (name, v) in IoTotals::NAMES.iter().zip(s.io.to_array()) {
            o.sample(
                "sluice_io_events_total",
                &format!("worker=\"{w}\",event=\"{name}\""),
                v,
            );
        }
    }
}

fn relay_total_families(o: &mut Out, t: &CounterSnapshot) {
    let simple = simple_counters();
    for (name, help, get) in simple {
        let fam = format!("sluice_relay_{name}_total");
        o.family(&fam, "counter", &format!("{help} All workers."));
        o.sample(&fam, "", get(t));
    }
    o.family(
        "sluice_relay_drops_total",
        "counter",
        "Datagrams dropped, by reason. All workers.",
    );
    for d in DropReason::ALL {
        o.sample(
            "sluice_relay_drops_total",
            &format!("reason=\"{}\"", d.name()),
            t.dropped(d),
        );
    }
    o.family(
        "sluice_relay_batch_size",
        "histogram",
        "Datagrams per processed batch. All workers.",
    );
    histogram(
        o,
        "sluice_relay_batch_size",
        "",
        &t.batch_hist,
        |b| b.to_string(),
        None,
    );
    o.family(
        "sluice_relay_batch_seconds",
        "histogram",
        "Processing time per batch in seconds. All workers.",
    );
    histogram(
        o,
        "sluice_relay_batch_seconds",
        "",
        &t.time_hist,
        secs,
        Some(secs(t.batch_nanos)),
    );
    tcp_families(o, &t.tcp);
}

/// One `/metrics` family of the ICE-TCP section: name, help, label name, (label value, value).
type TcpFamily<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, u64)]);

/// The relay's ICE-TCP counters (the counter blocks' TCP section), summed over workers.
fn tcp_families(o: &mut Out, t: &TcpTotals) {
    let families: [TcpFamily; 5] = [
        (
            "sluice_relay_tcp_connections_total",
            "ICE-TCP connections accepted, and those closed at once because relay.tcp.max_connections were open.",
            "event",
            &[("accepted", t.accepted), ("refused_full", t.refused_full)],
        ),
        (
            "sluice_relay_tcp_closed_total",
            "ICE-TCP connections closed, by reason.",
            "reason",
            &[
                ("garbage", t.closed_garbage),
                ("oversized", t.closed_oversized),
                ("timeout", t.closed_timeout),
                ("slow_reader", t.closed_slow_reader),
                ("peer", t.closed_peer),
            ],
        ),
        (
            "sluice_relay_tcp_frames_total",
            "RFC 4571 frames received from and written to ICE-TCP connections.",
            "direction",
            &[("rx", t.rx_frames), ("tx", t.tx_frames)],
        ),
        (
            "sluice_relay_tcp_dropped_total",
            "Datagrams for ICE-TCP peers dropped, by reason: the connection's send buffer was full, the hand-over queue to worker 0 was full, or no connection held the peer.",
            "reason",
            &[
                ("send_buffer_full", t.tx_dropped),
                ("forward_queue_full", t.forward_full),
                ("unroutable", t.unroutable),
            ],
        ),
        (
            "sluice_relay_tcp_forwarded_total",
            "Datagrams for ICE-TCP peers handed to worker 0 (which holds every connection) by the other workers.",
            "",
            &[("", t.forwarded)],
        ),
    ];
    for (fam, help, label, samples) in families {
        o.family(fam, "counter", &format!("{help} All workers."));
        for &(value, v) in samples {
            if label.is_empty() {
                o.sample(fam, "", v);
            } else {
                o.sample(fam, &format!("{label}=\"{value}\""), v);
            }
        }
    }
}

/// Prometheus text for the WebRTC families (DTLS handshakes, participants, expiries,
/// denials).
pub fn render_webrtc(core: &crate::core::Core) -> String {
    let c = crate::core::lock(&core.rtc).counters();
    let members = core.members();
    let pubs = members.iter().filter(|x| x.publishes).count();
    let views = members.len() - pubs;
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = write!(
        s,
        "# HELP sluice_control_dtls_handshakes_total DTLS-SRTP handshakes by outcome.\n\
         # TYPE sluice_control_dtls_handshakes_total counter\n\
         sluice_control_dtls_handshakes_total{{result=\"started\"}} {}\n\
         sluice_control_dtls_handshakes_total{{result=\"completed\"}} {}\n\
         sluice_control_dtls_handshakes_total{{result=\"failed\"}} {}\n\
         # HELP sluice_control_dtls_refused_total DTLS datagrams not used, by reason.\n\
         # TYPE sluice_control_dtls_refused_total counter\n\
         sluice_control_dtls_refused_total{{reason=\"handshake_cap\"}} {}\n\
         sluice_control_dtls_refused_total{{reason=\"unknown_peer\"}} {}\n\
         # HELP sluice_control_webrtc_participants WHIP publishers and WHEP viewers.\n\
         # TYPE sluice_control_webrtc_participants gauge\n\
         sluice_control_webrtc_participants{{kind=\"whip\"}} {pubs}\n\
         sluice_control_webrtc_participants{{kind=\"whep\"}} {views}\n\
         # HELP sluice_control_webrtc_expired_total WebRTC sessions removed because ICE never nominated a peer in time.\n\
         # TYPE sluice_control_webrtc_expired_total counter\n\
         sluice_control_webrtc_expired_total {}\n\
         # HELP sluice_control_webrtc_denied_total WHIP/WHEP requests refused at the token check, by reason.\n\
         # TYPE sluice_control_webrtc_denied_total counter\n",
        c.handshakes_started,
        c.handshakes_completed,
        c.handshakes_failed,
        c.refused_cap,
        c.unknown_peer,
        core.expired_count(),
    );
    for (reason, n) in core.denials() {
        let _ = writeln!(
            s,
            "sluice_control_webrtc_denied_total{{reason=\"{reason}\"}} {n}"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::shm::{LayerStats, SessionDiagnostics, SessionStats, StreamDir, StreamStats};

    #[test]
    fn estimates_are_one_series_per_session_and_bounded() {
        let mut d = Diagnostics::default();
        for id in 1..=(2 * MAX_SESSION_SERIES as u64 + 10) {
            let mut s = SessionDiagnostics {
                totals: SessionStats {
                    session: id,
                    // Odd sessions are viewers the relay estimates for.
                    downlink_bps: if id % 2 == 1 { 300_000 + id } else { 0 },
                    ..SessionStats::default()
                },
                ..SessionDiagnostics::default()
            };
            s.streams.push(StreamStats {
                session: id,
                ssrc: 7,
                dir: StreamDir::Out,
                packets: 1,
                bytes: 1,
                last_unix_ms: 0,
                published_unix_ms: 0,
                writer_pid: 1,
                reception: None,
                layer: Some(LayerStats {
                    current: Some(0),
                    target: 0,
                    count: 3,
                    switches: 4,
                    switch_ms_last: 250,
                    switch_ms_max: 1500,
                }),
            });
            d.sessions.insert(id, s);
        }
        let mut o = Out(String::new());
        session_families(&mut o, &d);
        let total = MAX_SESSION_SERIES + 5;
        for line in [
            format!("sluice_sessions_estimated {total}"),
            "sluice_session_downlink_estimate_bps{session=\"1\"} 300001".to_string(),
            "sluice_session_layer_switches_total{session=\"3\"} 4".to_string(),
            "sluice_session_layer_switch_latency_max_seconds{session=\"3\"} 1.5".to_string(),
            "# TYPE sluice_session_downlink_estimate_bps gauge".to_string(),
        ] {
            assert!(o.0.lines().any(|l| l == line), "{line} missing in\n{}", o.0);
        }
        let series = |name: &str| o.0.lines().filter(|l| l.starts_with(name)).count();
        assert_eq!(
            series("sluice_session_downlink_estimate_bps{"),
            MAX_SESSION_SERIES
        );
        for name in [
            "sluice_session_layer_switches_total{",
            "sluice_session_layer_switch_latency_max_seconds{",
        ] {
            assert_eq!(series(name), MAX_SESSION_SERIES, "{name}");
        }
        assert!(
            !o.0.contains("session=\"2\""),
            "no series without an estimate"
        );
    }

    #[test]
    fn tcp_section_rendered_by_reason() {
        let mut t = TcpTotals::from_array(core::array::from_fn(|i| i as u64 + 1));
        t.forwarded = 40;
        let mut o = Out(String::new());
        tcp_families(&mut o, &t);
        for line in [
            "sluice_relay_tcp_connections_total{event=\"accepted\"} 1",
            "sluice_relay_tcp_connections_total{event=\"refused_full\"} 2",
            "sluice_relay_tcp_closed_total{reason=\"garbage\"} 3",
            "sluice_relay_tcp_closed_total{reason=\"peer\"} 7",
            "sluice_relay_tcp_frames_total{direction=\"rx\"} 8",
            "sluice_relay_tcp_frames_total{direction=\"tx\"} 9",
            "sluice_relay_tcp_dropped_total{reason=\"send_buffer_full\"} 10",
            "sluice_relay_tcp_dropped_total{reason=\"forward_queue_full\"} 12",
            "sluice_relay_tcp_dropped_total{reason=\"unroutable\"} 13",
            "sluice_relay_tcp_forwarded_total 40",
            "# TYPE sluice_relay_tcp_closed_total counter",
        ] {
            assert!(o.0.lines().any(|l| l == line), "{line} missing in\n{}", o.0);
        }
    }
}
