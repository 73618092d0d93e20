//! The report: what a run measured, derived from the raw counts, as JSON (serde) and as text.
//!
//! Owns: the report schema and the derived figures (rates, loss ratio, percentiles). Pure:
//! no I/O except [`Report::write_json`].

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::gen::{RxCounts, Second, StepOutcome, StreamCounts, ThreadUsage};
use crate::target::TargetInfo;

/// Sender threads busier than this are reported as saturated.
pub const SATURATED: f64 = 0.9;

/// The whole report of one `sluice-bench` invocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `sluice-bench <version>`.
    pub tool: String,
    /// `run`, `find-max`, `baseline echo` or `baseline crypto`.
    pub command: String,
    pub started_unix_ms: u64,
    pub config: Option<LoadConfig>,
    pub target: Option<TargetInfo>,
    /// The measured run (for find-max: the fastest step within the loss threshold).
    pub result: Option<RunResult>,
    pub find_max: Option<FindMax>,
    pub baselines: Baselines,
    /// Present when a result and a baseline are both in this report.
    pub ratios: Option<Ratios>,
    pub generator: Option<GeneratorUsage>,
    /// The target's own counters (`GET /v1/stats`) before and after, when it has them.
    pub target_stats: Option<TargetStats>,
    /// `webrtc`: joins, handshakes per second, time to first media.
    #[serde(default)]
    pub webrtc: Option<crate::webrtc::WebRtcSummary>,
    /// `--targets`: each node's share of the measured run ([`crate::multi::per_node`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeFigures>,
    /// The server's own CPU time over the measured step (find-max: the best step), when the
    /// target reads it (`webrtc --server-pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu: Option<ServerCpu>,
    pub warnings: Vec<String>,
}

pub use crate::sys::CpuTimes;

/// The server's CPU over a measured media step, against the packets it delivered then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerCpu {
    pub cpu: CpuTimes,
    /// Datagrams the subscribers received in the step.
    pub delivered: u64,
    /// `delivered` ÷ the step's CPU seconds: packets out per server CPU-second.
    pub delivered_per_cpu_s: f64,
    /// The step's CPU ÷ `delivered`, in nanoseconds.
    pub ns_per_delivered: f64,
}

impl ServerCpu {
    /// CPU readings before and after a step that delivered `delivered` datagrams; `None`
    /// when either reading is missing.
    pub fn of(
        before: Option<CpuTimes>,
        after: Option<CpuTimes>,
        delivered: u64,
    ) -> Option<ServerCpu> {
        let cpu = after?.since(&before?);
        let t = cpu.total_s();
        Some(ServerCpu {
            cpu,
            delivered,
            delivered_per_cpu_s: if t > 0.0 { delivered as f64 / t } else { 0.0 },
            ns_per_delivered: if delivered > 0 {
                t * 1e9 / delivered as f64
            } else {
                0.0
            },
        })
    }
}

/// One node's share of a run over several nodes (`--targets`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeFigures {
    /// The node's admin URL.
    pub node: String,
    pub publishers: u64,
    pub subscribers: u64,
    /// Datagrams the publishers sent to this node.
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Delivered datagrams per second of the send window.
    pub delivered_pps: f64,
    pub loss_ratio: f64,
    /// Latency of the datagrams this node's subscribers received.
    pub latency: Latency,
    /// The node's relay CPU seconds (user + system) over the measured step, from its
    /// control's `process_cpu_seconds_total{process="relay"}` before and after; `None`
    /// when either reading is missing.
    pub relay_cpu_s: Option<f64>,
    /// `relay_cpu_s` ÷ `delivered`, in nanoseconds: the relay's CPU per packet it delivered.
    pub relay_cpu_ns_per_delivered: Option<f64>,
}

/// The load asked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadConfig {
    pub publishers: usize,
    pub fanout: usize,
    /// Total publisher packets per second asked for.
    pub rate: f64,
    /// Datagram size on the wire (bytes of UDP payload).
    pub size: usize,
    /// SRTP profile, or `none` for plain RTP.
    pub profile: String,
    pub duration_s: f64,
    pub senders: usize,
    pub receivers: usize,
    pub batch: usize,
    /// The publishers packed batches into UDP GSO sends.
    #[serde(default)]
    pub gso: bool,
    /// `udp`, or `tcp` for ICE-TCP connections (`run --transport tcp`).
    #[serde(default = "udp")]
    pub transport: String,
}

fn udp() -> String {
    "udp".into()
}

/// Packets, packets per second and Mbit/s (UDP payload bits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    pub packets: u64,
    pub pps: f64,
    pub mbps: f64,
}

/// Latency percentiles in microseconds (receive time − send timestamp).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// One point of the latency distribution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Percentile, 0..=100.
    pub percentile: f64,
    pub latency_us: f64,
}

/// Per-publisher-stream figures (its subscribers summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamReport {
    pub stream: u32,
    pub ssrc: u32,
    pub subscribers: u64,
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub late: u64,
    pub auth_failures: u64,
    pub malformed: u64,
    pub misrouted: u64,
    pub stale: u64,
    pub send_errors: u64,
    /// Send messages the datagrams took (fewer than `sent` with UDP GSO).
    #[serde(default)]
    pub messages: u64,
}

/// The figures of one run (or one find-max step).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub target_pps: f64,
    /// Length of the send window.
    pub duration_s: f64,
    pub interrupted: bool,
    /// What the publishers sent (kernel-accepted datagrams).
    pub offered: Throughput,
    /// sent × subscribers per stream.
    pub expected: u64,
    /// Distinct probes received intact by the subscribers.
    pub delivered: Throughput,
    pub lost: u64,
    /// lost / expected.
    pub loss_ratio: f64,
    pub duplicates: u64,
    pub reordered: u64,
    pub late: u64,
    pub auth_failures: u64,
    pub malformed: u64,
    pub misrouted: u64,
    pub stale: u64,
    pub send_errors: u64,
    /// Tokens skipped because a sender thread fell behind its schedule.
    pub skipped: u64,
    pub latency: Latency,
    pub latency_curve: Vec<CurvePoint>,
    pub per_second: Vec<Second>,
    pub streams: Vec<StreamReport>,
    /// Latency per group of streams ([`crate::gen::RigSpec::latency_groups`]; with
    /// `--targets`, per node), when there is more than one group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_latency: Vec<Latency>,
}

/// One step of a find-max search.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StepSummary {
    pub target_pps: f64,
    pub offered_pps: f64,
    pub delivered_pps: f64,
    pub loss_ratio: f64,
    pub p99_us: f64,
    pub passed: bool,
    /// The server's CPU seconds over this step, when the target reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu: Option<CpuTimes>,
}

/// The find-max outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FindMax {
    /// Largest loss ratio a passing step may have.
    pub loss_threshold: f64,
    /// Highest offered publisher rate that passed (0 if none did).
    pub max_offered_pps: f64,
    /// Delivered (fanned-out) rate at that step.
    pub max_delivered_pps: f64,
    pub latency_at_max: Option<Latency>,
    pub steps: Vec<StepSummary>,
    /// Whether some step failed above the best passing one, so the ceiling lies between them.
    /// False when every step passed up to `--max-rate` or `--max-steps`: the result is then
    /// only a lower bound of the relay's ceiling.
    #[serde(default)]
    pub ceiling_found: bool,
}

/// The ceilings the relay is compared with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    pub echo: Option<EchoBaseline>,
    pub crypto: Option<CryptoBaseline>,
    /// `baseline generator`: the senders alone, per profile and send mode.
    #[serde(default)]
    pub generator: Vec<GeneratorBaseline>,
}

/// The generator's senders alone, sending at full speed to a sink nobody reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GeneratorBaseline {
    /// SRTP profile, or `none` for plain UDP (same packets, no crypto).
    pub profile: String,
    /// UDP GSO sends (else one `sendmmsg` message per datagram).
    pub gso: bool,
    pub size: usize,
    pub batch: usize,
    pub senders: usize,
    /// Datagrams the kernel accepted.
    pub packets: u64,
    pub seconds: f64,
    pub pps: f64,
    /// CPU seconds (user + system, `RUSAGE_THREAD`) of the sender threads together.
    pub sender_cpu_s: f64,
    /// packets ÷ sender CPU seconds: the rate one fully busy sender core sustains.
    pub pps_per_sender_cpu_s: f64,
    /// pps per sender CPU-s ÷ the plain-UDP row with the same send mode, same run.
    pub vs_plain: Option<f64>,
    /// Datagrams lost to send errors or failed protection.
    pub send_errors: u64,
    /// Tokens the pacer skipped because the senders were behind (large when flat out).
    pub skipped: u64,
}

/// Plain-UDP reflector driven by the same generator without crypto.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EchoBaseline {
    /// `relay-workers` (in-process `relay::worker::Echo`) or `external`.
    pub reflector: String,
    pub backend: Option<String>,
    pub workers: Option<usize>,
    /// Packets per second reflected (delivered back to the generator).
    pub pps: f64,
    pub loss_ratio: f64,
    pub latency: Latency,
    pub find_max: Option<FindMax>,
}

/// The SRTP transforms alone on one core.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CryptoBaseline {
    pub profile: String,
    pub size: usize,
    pub packets: u64,
    pub seconds: f64,
    /// Packets per second, each one unprotect plus one protect.
    pub pps: f64,
    pub ns_per_packet: f64,
}

/// The run stated against the baselines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    /// delivered pps ÷ echo pps.
    pub delivered_vs_echo: Option<f64>,
    /// delivered pps ÷ single-core unprotect+protect pps.
    pub delivered_vs_crypto: Option<f64>,
}

/// The generator's own CPU use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GeneratorUsage {
    pub senders: Vec<ThreadUsage>,
    pub receivers: Vec<ThreadUsage>,
    /// Whole-process CPU seconds during the measured part.
    pub process_cpu_s: f64,
    /// A sender thread was busier than 90 %: the numbers may measure the bench.
    pub saturated: bool,
    /// Datagrams sent ÷ CPU seconds of the sender threads (user + system).
    #[serde(default)]
    pub pps_per_sender_cpu_s: f64,
}

/// Raw target counters around the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetStats {
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Percentiles of a latency histogram in ns.
pub fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    Latency {
        count: h.len(),
        min_us: us(h.min()),
        mean_us: h.mean() / 1000.0,
        p50_us: us(h.value_at_quantile(0.50)),
        p90_us: us(h.value_at_quantile(0.90)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}

/// The latency distribution as (percentile, µs) points, dense towards the tail.
pub fn latency_curve(h: &Histogram<u64>) -> Vec<CurvePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut v: Vec<CurvePoint> = h
        .iter_quantiles(4)
        .map(|it| CurvePoint {
            percentile: it.quantile_iterated_to() * 100.0,
            latency_us: us(it.value_iterated_to()),
        })
        .collect();
    v.dedup_by(|a, b| a.percentile == b.percentile);
    v
}

fn throughput(packets: u64, bytes: u64, secs: f64) -> Throughput {
    let secs = secs.max(1e-9);
    Throughput {
        packets,
        pps: packets as f64 / secs,
        mbps: bytes as f64 * 8.0 / secs / 1e6,
    }
}

fn stream_report(s: &StreamCounts) -> StreamReport {
    StreamReport {
        stream: s.stream,
        ssrc: s.ssrc,
        subscribers: s.subscribers,
        sent: s.sent,
        expected: s.expected(),
        delivered: s.rx.seq.delivered,
        lost: s.lost(),
        duplicates: s.rx.duplicates(),
        reordered: s.rx.seq.reordered,
        late: s.rx.seq.late + s.rx.too_old,
        auth_failures: s.rx.auth_failures,
        malformed: s.rx.malformed,
        misrouted: s.rx.misrouted,
        stale: s.rx.stale,
        send_errors: s.send_errors,
        messages: s.messages,
    }
}

impl RunResult {
    /// Derive the figures of one step.
    pub fn from_step(o: &StepOutcome) -> RunResult {
        let mut rx = RxCounts::default();
        let (mut sent, mut expected, mut lost, mut send_errors, mut skipped) = (0, 0, 0, 0, 0);
        for s in &o.streams {
            rx.add(&s.rx);
            sent += s.sent;
            expected += s.expected();
            lost += s.lost();
            send_errors += s.send_errors;
            skipped += s.skipped;
        }
        RunResult {
            target_pps: o.target_pps,
            duration_s: o.send_s,
            interrupted: o.interrupted,
            offered: throughput(sent, sent * o.size as u64, o.send_s),
            expected,
            delivered: throughput(rx.seq.delivered, rx.bytes, o.send_s),
            lost,
            loss_ratio: if expected == 0 {
                0.0
            } else {
                lost as f64 / expected as f64
            },
            duplicates: rx.duplicates(),
            reordered: rx.seq.reordered,
            late: rx.seq.late + rx.too_old,
            auth_failures: rx.auth_failures,
            malformed: rx.malformed,
            misrouted: rx.misrouted,
            stale: rx.stale,
            send_errors,
            skipped,
            latency: latency(&o.hist),
            latency_curve: latency_curve(&o.hist),
            per_second: o.seconds.clone(),
            streams: o.streams.iter().map(stream_report).collect(),
            group_latency: o.group_hists.iter().map(latency).collect(),
        }
    }

    pub fn summary(&self) -> StepSummary {
        StepSummary {
            target_pps: self.target_pps,
            offered_pps: self.offered.pps,
            delivered_pps: self.delivered.pps,
            loss_ratio: self.loss_ratio,
            p99_us: self.latency.p99_us,
            passed: false,
            server_cpu: None,
        }
    }
}

impl GeneratorUsage {
    pub fn from_step(o: &StepOutcome, process_cpu_s: f64) -> GeneratorUsage {
        let sent: u64 = o.streams.iter().map(|s| s.sent).sum();
        let cpu: f64 = o.senders.iter().map(|u| u.cpu_s).sum();
        GeneratorUsage {
            pps_per_sender_cpu_s: if cpu > 0.0 { sent as f64 / cpu } else { 0.0 },
            saturated: o.senders.iter().any(|u| u.busy > SATURATED),
            senders: o.senders.clone(),
            receivers: o.receivers.clone(),
            process_cpu_s,
        }
    }

    /// Warnings about the generator itself.
    pub fn warnings(&self, r: &RunResult) -> Vec<String> {
        let mut w = Vec::new();
        for (i, u) in self.senders.iter().enumerate() {
            if u.busy > SATURATED {
                w.push(format!(
                    "sender thread {i} was {:.0}% busy: the generator may be the bottleneck (add --senders)",
                    u.busy * 100.0
                ));
            }
        }
        for (i, u) in self.receivers.iter().enumerate() {
            if u.busy > SATURATED {
                w.push(format!(
                    "receiver thread {i} was {:.0}% busy: losses may be the bench's (add --receivers)",
                    u.busy * 100.0
                ));
            }
        }
        if r.skipped > 0 {
            w.push(format!(
                "the senders fell behind and skipped {} packets: offered {:.0} pps of {:.0} asked",
                r.skipped, r.offered.pps, r.target_pps
            ));
        }
        w
    }
}

impl Report {
    pub fn new(command: &str) -> Report {
        Report {
            tool: format!("sluice-bench {}", env!("CARGO_PKG_VERSION")),
            command: command.to_string(),
            started_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            ..Report::default()
        }
    }

    /// Fill [`Report::ratios`] from the result and baselines present.
    pub fn compute_ratios(&mut self) {
        let Some(r) = &self.result else {
            return;
        };
        let d = r.delivered.pps;
        let vs_echo = self
            .baselines
            .echo
            .as_ref()
            .filter(|e| e.pps > 0.0)
            .map(|e| d / e.pps);
        let vs_crypto = self
            .baselines
            .crypto
            .as_ref()
            .filter(|c| c.pps > 0.0)
            .map(|c| d / c.pps);
        if vs_echo.is_some() || vs_crypto.is_some() {
            self.ratios = Some(Ratios {
                delivered_vs_echo: vs_echo,
                delivered_vs_crypto: vs_crypto,
            });
        }
    }

    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_json() + "\n")
    }

    /// The human summary: target and load, the result, the search, the ceilings, the
    /// generator's own costs, then the warnings.
    pub fn text(&self) -> String {
        let mut s = String::new();
        self.text_run(&mut s);
        if let Some(w) = &self.webrtc {
            s.push_str(&w.text());
        }
        self.text_baselines(&mut s);
        self.text_generator(&mut s);
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }

    fn text_run(&self, s: &mut String) {
        if let Some(t) = &self.target {
            let _ = writeln!(
                *s,
                "target     {} media {} backend {} workers {}",
                t.kind,
                t.media_addr.as_deref().unwrap_or("?"),
                t.backend.as_deref().unwrap_or("?"),
                t.workers.map_or("?".into(), |w| w.to_string())
            );
        }
        if let Some(c) = &self.config {
            let _ = writeln!(
                *s,
                "load       {} publishers × {} subscribers, {:.0} pps asked, {} B, {}, {:.1} s",
                c.publishers, c.fanout, c.rate, c.size, c.profile, c.duration_s
            );
        }
        if let Some(r) = &self.result {
            let _ = writeln!(
                *s,
                "offered    {:>12.0} pps {:>9.1} Mbit/s  ({} packets)",
                r.offered.pps, r.offered.mbps, r.offered.packets
            );
            let _ = writeln!(
                *s,
                "delivered  {:>12.0} pps {:>9.1} Mbit/s  ({} of {} expected)",
                r.delivered.pps, r.delivered.mbps, r.delivered.packets, r.expected
            );
            let _ = writeln!(
                *s,
                "loss       {} ({:.4}%)  duplicates {}  reordered {}  late {}  auth failures {}  malformed {}  misrouted {}",
                r.lost,
                r.loss_ratio * 100.0,
                r.duplicates,
                r.reordered,
                r.late,
                r.auth_failures,
                r.malformed,
                r.misrouted
            );
            let l = &r.latency;
            let _ = writeln!(
                *s,
                "latency µs p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (mean {:.1}, n {})",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us, l.count
            );
        }
        if let Some(f) = &self.find_max {
            let _ = writeln!(
                *s,
                "find-max   {:.0} pps offered ({:.0} delivered) with loss ≤ {:.3}% over {} steps{}",
                f.max_offered_pps,
                f.max_delivered_pps,
                f.loss_threshold * 100.0,
                f.steps.len(),
                if f.ceiling_found {
                    ""
                } else {
                    " (no step failed: a lower bound, the ceiling was not reached)"
                }
            );
        }
        if let Some(c) = &self.server_cpu {
            let _ = writeln!(
                *s,
                "server CPU {:.2} s (user {:.2}, system {:.2}) for {} delivered: {:.0} packets out per CPU-s, {:.0} ns each",
                c.cpu.total_s(),
                c.cpu.user_s,
                c.cpu.system_s,
                c.delivered,
                c.delivered_per_cpu_s,
                c.ns_per_delivered
            );
        }
    }

    fn text_baselines(&self, s: &mut String) {
        if let Some(e) = &self.baselines.echo {
            let _ = writeln!(
                *s,
                "echo       {:.0} pps reflected ({}{}), loss {:.4}%, p99 {:.1} µs",
                e.pps,
                e.reflector,
                e.backend.as_ref().map_or(String::new(), |b| format!(
                    ", {b} × {}",
                    e.workers.unwrap_or(0)
                )),
                e.loss_ratio * 100.0,
                e.latency.p99_us
            );
        }
        if let Some(c) = &self.baselines.crypto {
            let _ = writeln!(
                *s,
                "crypto     {:.0} pps unprotect+protect on one core ({}, {} B, {:.0} ns/packet)",
                c.pps, c.profile, c.size, c.ns_per_packet
            );
        }
        if !self.baselines.generator.is_empty() {
            let _ = writeln!(
                *s,
                "{:<24} {:<5} {:>10} {:>9} {:>12} {:>9}",
                "generator profile", "send", "pps", "CPU-s", "pps/CPU-s", "vs plain"
            );
        }
        for g in &self.baselines.generator {
            let _ = writeln!(
                *s,
                "{:<24} {:<5} {:>10.0} {:>9.3} {:>12.0} {:>9}{}",
                g.profile,
                if g.gso { "gso" } else { "mmsg" },
                g.pps,
                g.sender_cpu_s,
                g.pps_per_sender_cpu_s,
                g.vs_plain.map_or("-".to_string(), |v| format!("{v:.3}")),
                if g.send_errors > 0 {
                    format!("  ({} send errors)", g.send_errors)
                } else {
                    String::new()
                }
            );
        }
        if let Some(r) = &self.ratios {
            if let Some(e) = r.delivered_vs_echo {
                let _ = writeln!(*s, "ratio      delivered / echo = {e:.3}");
            }
            if let Some(c) = r.delivered_vs_crypto {
                let _ = writeln!(*s, "ratio      delivered / one-core crypto = {c:.3}");
            }
        }
    }

    fn text_generator(&self, s: &mut String) {
        if let Some(g) = &self.generator {
            let busy: Vec<String> = g
                .senders
                .iter()
                .map(|u| format!("{:.0}%", u.busy * 100.0))
                .collect();
            let rbusy: Vec<String> = g
                .receivers
                .iter()
                .map(|u| format!("{:.0}%", u.busy * 100.0))
                .collect();
            let _ = writeln!(
                *s,
                "generator  senders busy [{}]  receivers busy [{}]  process CPU {:.2} s  {:.0} pps per sender CPU-s",
                busy.join(" "),
                rbusy.join(" "),
                g.process_cpu_s,
                g.pps_per_sender_cpu_s
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_cpu_is_the_difference_over_the_step() {
        let before = CpuTimes {
            user_s: 1.0,
            system_s: 2.0,
        };
        let after = CpuTimes {
            user_s: 1.5,
            system_s: 2.5,
        };
        let c = ServerCpu::of(Some(before), Some(after), 2000).expect("both readings");
        assert_eq!(
            c.cpu,
            CpuTimes {
                user_s: 0.5,
                system_s: 0.5
            }
        );
        assert_eq!(c.delivered_per_cpu_s, 2000.0);
        assert_eq!(c.ns_per_delivered, 500_000.0);
        // A missing reading (the process exited) gives no figure rather than a wrong one.
        assert_eq!(ServerCpu::of(None, Some(after), 2000), None);
        assert_eq!(ServerCpu::of(Some(before), None, 2000), None);
        // Nothing used, nothing delivered: zeros, not infinities.
        let z = ServerCpu::of(Some(before), Some(before), 0).expect("both readings");
        assert_eq!((z.delivered_per_cpu_s, z.ns_per_delivered), (0.0, 0.0));
        // A counter that went back (another process with a reused PID) never goes negative.
        assert_eq!(
            after
                .since(&CpuTimes {
                    user_s: 9.0,
                    system_s: 0.0
                })
                .user_s,
            0.0
        );
    }
}
