//! The commands: `run`, `find-max`, `baseline echo|crypto`, as functions over a [`Target`]
//! so tests can drive them against a test double.
//!
//! Owns: the order of things (set up, measure, always tear down), the find-max search, the
//! baselines and the progress display. May not touch: socket syscalls (that is [`crate::gen`]).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use contract::srtp::{Context, ContextOptions, MasterKey, Profile};

use crate::gen::{GenError, Gso, Live, Rig, RigSpec, StepOutcome, StepSpec};
use crate::plot::{self, PlotError};
use crate::probe::{self, Probe};
use crate::report::{
    CpuTimes, CryptoBaseline, EchoBaseline, FindMax, GeneratorBaseline, GeneratorUsage, LoadConfig,
    Report, RunResult, ServerCpu, TargetStats,
};
use crate::sys;
use crate::target::{Target, TargetError};

/// Errors of a command.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error(transparent)]
    Gen(#[from] GenError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Usage(String),
    #[error("echo reflector: {0}")]
    Workers(#[from] relay::worker::WorkerError),
}

/// How to present progress and where to write outputs.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// No progress display or per-step lines.
    pub quiet: bool,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
}

impl Output {
    fn live(&self) -> bool {
        !self.quiet && std::io::stdout().is_terminal()
    }

    fn say(&self, s: &str) {
        if !self.quiet {
            println!("{s}");
        }
    }

    /// Write the JSON and plot files that were asked for.
    pub fn write(&self, report: &Report, title: &str) -> Result<(), CmdError> {
        if let Some(p) = &self.json {
            report.write_json(p)?;
        }
        if let Some(p) = &self.plot {
            let empty = RunResult::default();
            let r = report.result.as_ref().unwrap_or(&empty);
            plot::write_svg(r, title, p)?;
        }
        Ok(())
    }
}

/// Load and timing of `run` (and of each find-max step).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub rig: RigSpec,
    /// Total publisher packets per second.
    pub rate: f64,
    pub duration: Duration,
    /// Longest wait for stragglers after sending stops.
    pub drain: Duration,
}

impl RunOptions {
    fn config(&self) -> LoadConfig {
        LoadConfig {
            publishers: self.rig.publishers,
            fanout: if self.rig.reflect { 1 } else { self.rig.fanout },
            rate: self.rate,
            size: self.rig.size,
            profile: self
                .rig
                .profile
                .map_or_else(|| "none".to_string(), |p| p.name().to_string()),
            duration_s: self.duration.as_secs_f64(),
            senders: self.rig.senders,
            receivers: self.rig.receivers,
            batch: self.rig.batch,
            gso: false,
            transport: "udp".into(),
        }
    }
}

fn progress_bar(out: &Output, duration: Duration) -> indicatif::ProgressBar {
    if !out.live() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(duration.as_millis() as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {elapsed:>4}/{duration:4} {msg}")
    {
        pb.set_style(style);
    }
    pb
}

fn live_msg(l: &Live) -> String {
    format!(
        "offered {:>9.0} pps  delivered {:>9.0} pps  loss {:.3}%",
        l.offered_pps,
        l.delivered_pps,
        l.loss * 100.0
    )
}

/// One measured step with a progress bar.
fn measured_step(rig: &mut Rig, spec: &StepSpec, out: &Output) -> (StepOutcome, f64) {
    let pb = progress_bar(out, spec.duration);
    let cpu0 = sys::process_cpu();
    let o = rig.run_step(spec, |l| {
        pb.set_position(l.elapsed.as_millis() as u64);
        pb.set_message(live_msg(l));
    });
    pb.finish_and_clear();
    (o, sys::process_cpu().saturating_sub(cpu0).as_secs_f64())
}

/// Build the rig, let `target` create its sessions, run `body`, and always tear down.
fn with_sessions<T>(
    target: &mut dyn Target,
    spec: RigSpec,
    out: &Output,
    body: impl FnOnce(&mut Rig, &mut dyn Target) -> Result<T, CmdError>,
) -> Result<T, CmdError> {
    let mut rig = Rig::new(spec)?;
    let plan = rig.plan()?;
    let t = Instant::now();
    if target.wants_endpoints() {
        target.lend_endpoints(rig.endpoints()?);
    }
    let wiring = target.setup(&plan)?;
    out.say(&format!(
        "set up {} sessions and {} routes in {:.2} s",
        plan.publishers.len() + plan.subscribers.len(),
        plan.subscribers.len(),
        t.elapsed().as_secs_f64()
    ));
    let r = if sys::interrupted() {
        Err(CmdError::Interrupted)
    } else {
        rig.wire(&wiring)
            .map_err(CmdError::from)
            .and_then(|()| body(&mut rig, target))
    };
    match target.teardown() {
        Ok(n) => out.say(&format!("removed {n} sessions and routes")),
        Err(e) => eprintln!("warning: teardown incomplete: {e}"),
    }
    r
}

/// `sluice-bench run`.
pub fn run(target: &mut dyn Target, opts: &RunOptions, out: &Output) -> Result<Report, CmdError> {
    let mut report = Report::new("run");
    report.config = Some(opts.config());
    report.target = target.info().ok();
    let step = StepSpec {
        step: 0,
        rate: opts.rate,
        duration: opts.duration,
        drain: opts.drain,
        tick: Duration::from_millis(200),
    };
    let (o, cpu, server) = with_sessions(target, opts.rig.clone(), out, |rig, target| {
        if let Some(c) = report.config.as_mut() {
            c.gso = rig.gso();
        }
        let before = target.stats();
        let cpu0 = target.server_cpu();
        let (o, cpu) = measured_step(rig, &step, out);
        let cpu1 = target.server_cpu();
        target.observe_first_media(&o.first_media_ns);
        let after = target.stats();
        if before.is_some() || after.is_some() {
            report.target_stats = Some(TargetStats { before, after });
        }
        Ok((o, cpu, (cpu0, cpu1)))
    })?;
    finish(&mut report, &o, cpu);
    let delivered = report.result.as_ref().map_or(0, |r| r.delivered.packets);
    report.server_cpu = ServerCpu::of(server.0, server.1, delivered);
    Ok(report)
}

/// `sluice-bench run --transport tcp`: the same step and report as [`run`], with every
/// publisher and subscriber an ICE-TCP connection (static sessions reached by ICE;
/// [`crate::tcp`]). `tcp_port`: the relay's ICE-TCP port when it is not the media port.
pub fn run_tcp(
    target: &mut dyn Target,
    opts: &RunOptions,
    tcp_port: Option<u16>,
    out: &Output,
) -> Result<Report, CmdError> {
    let mut report = Report::new("run");
    let mut config = opts.config();
    config.transport = "tcp".into();
    report.config = Some(config);
    report.target = target.info().ok();
    let step = StepSpec {
        step: 0,
        rate: opts.rate,
        duration: opts.duration,
        drain: opts.drain,
        tick: Duration::from_millis(200),
    };
    let mut rig = crate::tcp::TcpRig::new(opts.rig.clone())?;
    let (plan, ufrags) = rig.plan()?;
    let t = Instant::now();
    let wiring = target.setup_ice(&plan, &ufrags, tcp_port)?;
    let r = if sys::interrupted() {
        Err(CmdError::Interrupted)
    } else {
        rig.wire(&wiring).map_err(CmdError::from).map(|()| {
            out.say(&format!(
                "set up {} sessions and {} routes, connected and nominated over ICE-TCP in {:.2} s",
                plan.publishers.len() + plan.subscribers.len(),
                plan.subscribers.len(),
                t.elapsed().as_secs_f64()
            ));
            let before = target.stats();
            let pb = progress_bar(out, step.duration);
            let cpu0 = sys::process_cpu();
            let o = rig.run_step(&step, |l| {
                pb.set_position(l.elapsed.as_millis() as u64);
                pb.set_message(live_msg(l));
            });
            pb.finish_and_clear();
            let cpu = sys::process_cpu().saturating_sub(cpu0).as_secs_f64();
            let after = target.stats();
            if before.is_some() || after.is_some() {
                report.target_stats = Some(TargetStats { before, after });
            }
            (o, cpu)
        })
    };
    drop(rig);
    match target.teardown() {
        Ok(n) => out.say(&format!("removed {n} sessions and routes")),
        Err(e) => eprintln!("warning: teardown incomplete: {e}"),
    }
    let (o, cpu) = r?;
    finish(&mut report, &o, cpu);
    Ok(report)
}

fn finish(report: &mut Report, o: &StepOutcome, cpu: f64) {
    let r = RunResult::from_step(o);
    let g = GeneratorUsage::from_step(o, cpu);
    report.warnings.extend(g.warnings(&r));
    if o.interrupted {
        report.warnings.push("interrupted: partial run".into());
    }
    report.generator = Some(g);
    report.result = Some(r);
    report.compute_ratios();
}

/// find-max search settings.
#[derive(Debug, Clone)]
pub struct FindMaxOptions {
    pub run: RunOptions,
    /// Largest loss ratio that passes (0.001 = 0.1 %).
    pub loss: f64,
    /// First rate tried (total publisher pps).
    pub start: f64,
    /// Never try above this.
    pub max: f64,
    /// Stop bisecting when (high − low) / high is below this.
    pub precision: f64,
    pub max_steps: usize,
}

/// The best step of a search: its outcome, the generator's CPU seconds, the target's
/// statistics before and after it, and the server's CPU readings before and after it.
pub type BestStep = (
    StepOutcome,
    f64,
    Option<TargetStats>,
    (Option<CpuTimes>, Option<CpuTimes>),
);

/// Exponential ramp from `start` until a step fails, then bisection between the last pass and
/// the first failure. A step fails on loss above the threshold or when the generator could
/// not offer what was asked (it then bounds the search, with a warning).
///
/// With a `target`, its statistics (and the server's CPU time, when it reads it) are taken
/// before and after every step and kept with the best one, and the first step's time to first
/// media goes to [`Target::observe_first_media`]: the sessions are set up once, before the
/// search, so the first step is the one that starts the media.
pub fn search(
    rig: &mut Rig,
    o: &FindMaxOptions,
    out: &Output,
    warnings: &mut Vec<String>,
    mut target: Option<&mut dyn Target>,
) -> (FindMax, Option<BestStep>) {
    let mut fm = FindMax {
        loss_threshold: o.loss,
        ..FindMax::default()
    };
    let mut best: Option<BestStep> = None;
    let (mut lo, mut hi) = (0.0f64, f64::INFINITY);
    let mut rate = o.start.min(o.max);
    let mut step_id = 1u32;
    while fm.steps.len() < o.max_steps && !sys::interrupted() {
        let spec = StepSpec {
            step: step_id,
            rate,
            duration: o.run.duration,
            drain: o.run.drain,
            tick: Duration::from_millis(200),
        };
        step_id += 1;
        let before = target.as_deref_mut().and_then(Target::stats);
        let cpu0 = target.as_deref_mut().and_then(Target::server_cpu);
        let (outcome, cpu) = measured_step(rig, &spec, out);
        let cpu1 = target.as_deref_mut().and_then(Target::server_cpu);
        let after = target.as_deref_mut().and_then(Target::stats);
        if outcome.interrupted {
            break;
        }
        if fm.steps.is_empty() {
            if let Some(t) = target.as_deref_mut() {
                t.observe_first_media(&outcome.first_media_ns);
            }
        }
        let r = RunResult::from_step(&outcome);
        let short = r.offered.pps < 0.97 * rate;
        let passed = r.loss_ratio <= o.loss && !short;
        let mut s = r.summary();
        s.passed = passed;
        s.server_cpu = cpu1.zip(cpu0).map(|(b, a)| b.since(&a));
        fm.steps.push(s);
        out.say(&format!(
            "step {:>2}: {:>10.0} pps asked, {:>10.0} offered, {:>10.0} delivered, loss {:.4}%, p99 {:.1} µs  {}",
            fm.steps.len(),
            rate,
            r.offered.pps,
            r.delivered.pps,
            r.loss_ratio * 100.0,
            r.latency.p99_us,
            if passed { "pass" } else if short { "generator-limited" } else { "FAIL" }
        ));
        if short {
            warnings.push(format!(
                "generator offered only {:.0} of {:.0} pps asked: the search is bounded by the bench (add --senders)",
                r.offered.pps, rate
            ));
        }
        if passed {
            lo = rate;
            if r.offered.pps >= fm.max_offered_pps {
                fm.max_offered_pps = r.offered.pps;
                fm.max_delivered_pps = r.delivered.pps;
                fm.latency_at_max = Some(r.latency);
                let stats =
                    (before.is_some() || after.is_some()).then_some(TargetStats { before, after });
                best = Some((outcome, cpu, stats, (cpu0, cpu1)));
            }
        } else {
            hi = rate;
        }
        let next = if hi.is_infinite() {
            if rate >= o.max {
                break;
            }
            (rate * 2.0).min(o.max)
        } else {
            if (hi - lo) / hi <= o.precision {
                break;
            }
            (lo + hi) / 2.0
        };
        rate = next;
        // Let the target settle between steps.
        std::thread::sleep(Duration::from_millis(200));
    }
    fm.ceiling_found = hi.is_finite() && best.is_some();
    if let Some(w) = ceiling_warning(&fm, o.start.min(o.max), o.max, o.max_steps) {
        warnings.push(w);
    }
    (fm, best)
}

/// What a find-max result does not say by itself: that no step failed (the rate found is only
/// a lower bound), or that none passed.
fn ceiling_warning(fm: &FindMax, start: f64, max: f64, max_steps: usize) -> Option<String> {
    let last = fm.steps.last()?;
    if fm.steps.iter().all(|s| !s.passed) {
        return Some(format!(
            "no step passed (the first, at {start:.0} pps, already lost more than {:.3}% or was \
             generator-limited): lower --start-rate",
            fm.loss_threshold * 100.0
        ));
    }
    (!fm.ceiling_found).then(|| {
        let why = if fm.steps.len() >= max_steps {
            format!("--max-steps {max_steps} ran out")
        } else {
            format!("--max-rate {max:.0} pps was reached")
        };
        format!(
            "the ceiling was not reached: every step passed up to {:.0} pps and {why}; \
             {:.0} pps is a lower bound (raise --max-rate or --max-steps)",
            last.offered_pps.max(fm.max_offered_pps),
            fm.max_offered_pps
        )
    })
}

/// `sluice-bench find-max`.
pub fn find_max(
    target: &mut dyn Target,
    o: &FindMaxOptions,
    out: &Output,
) -> Result<Report, CmdError> {
    let mut report = Report::new("find-max");
    report.config = Some(o.run.config());
    report.target = target.info().ok();
    let mut warnings = Vec::new();
    let (fm, best) = with_sessions(target, o.run.rig.clone(), out, |rig, target| {
        if let Some(c) = report.config.as_mut() {
            c.gso = rig.gso();
        }
        Ok(search(rig, o, out, &mut warnings, Some(target)))
    })?;
    report.warnings = warnings;
    if let Some((outcome, cpu, stats, (cpu0, cpu1))) = best {
        finish(&mut report, &outcome, cpu);
        report.target_stats = stats;
        let delivered = report.result.as_ref().map_or(0, |r| r.delivered.packets);
        report.server_cpu = ServerCpu::of(cpu0, cpu1, delivered);
    }
    report.find_max = Some(fm);
    Ok(report)
}

/// Echo baseline against a reflector at `addr` (every datagram comes back to its sender):
/// the same generator, plain RTP. With `search`, a find-max over the reflector.
pub fn echo_at(
    addr: SocketAddr,
    reflector: &str,
    opts: &FindMaxOptions,
    search_max: bool,
    out: &Output,
) -> Result<(EchoBaseline, Report), CmdError> {
    let mut rig_spec = opts.run.rig.clone();
    rig_spec.reflect = true;
    rig_spec.profile = None;
    let mut rig = Rig::new(rig_spec)?;
    rig.wire_direct(addr)?;
    let mut report = Report::new("baseline echo");
    let mut run_opts = opts.run.clone();
    run_opts.rig = rig.spec().clone();
    let mut config = run_opts.config();
    config.gso = rig.gso();
    report.config = Some(config);
    let mut echo = EchoBaseline {
        reflector: reflector.to_string(),
        ..EchoBaseline::default()
    };
    if search_max {
        let mut warnings = Vec::new();
        let (fm, best) = search(&mut rig, opts, out, &mut warnings, None);
        report.warnings = warnings;
        if let Some((o, cpu, _, _)) = &best {
            finish(&mut report, o, *cpu);
        }
        echo.find_max = Some(fm);
    } else {
        let step = StepSpec {
            step: 0,
            rate: opts.run.rate,
            duration: opts.run.duration,
            drain: opts.run.drain,
            tick: Duration::from_millis(200),
        };
        let (o, cpu) = measured_step(&mut rig, &step, out);
        finish(&mut report, &o, cpu);
    }
    if let Some(r) = &report.result {
        echo.pps = r.delivered.pps;
        echo.loss_ratio = r.loss_ratio;
        echo.latency = r.latency;
    }
    Ok((echo, report))
}

/// Which reflector the echo baseline drives.
#[derive(Debug, Clone, Copy)]
pub enum Reflector {
    /// `relay::worker::Echo` on the relay's own workers, in this process, on 127.0.0.1.
    Workers {
        workers: usize,
        backend: contract::config::Backend,
    },
    /// A reflector already listening at this address.
    External(SocketAddr),
}

/// `sluice-bench baseline echo`: the plain-UDP ceiling.
pub fn echo(
    reflector: Reflector,
    opts: &FindMaxOptions,
    search_max: bool,
    out: &Output,
) -> Result<(EchoBaseline, Report), CmdError> {
    match reflector {
        Reflector::External(addr) => echo_at(addr, "external", opts, search_max, out),
        Reflector::Workers { workers, backend } => {
            let cfg = relay::worker::WorkerConfig {
                bind: SocketAddr::from(([127, 0, 0, 1], 0)),
                workers: Some(workers),
                backend,
                ..relay::worker::WorkerConfig::default()
            };
            let w = relay::worker::spawn_workers(cfg, |_| relay::worker::Echo::default())?;
            let addr = w.local_addr();
            let kind = w.backend().as_str().to_string();
            let n = w.len();
            out.say(&format!(
                "echo reflector: {n} relay worker(s), {kind} backend, on {addr}"
            ));
            let r = echo_at(addr, "relay-workers", opts, search_max, out);
            w.stop()?;
            let (mut e, mut report) = r?;
            e.backend = Some(kind);
            e.workers = Some(n);
            report.baselines.echo = Some(e.clone());
            Ok((e, report))
        }
    }
}

/// `sluice-bench baseline crypto`: one unprotect plus one protect per packet on this thread,
/// for `duration`.
pub fn crypto_baseline(
    profile: Profile,
    size: usize,
    duration: Duration,
) -> Result<CryptoBaseline, CmdError> {
    let overhead = profile.srtp_overhead();
    if size < probe::MIN_RTP + overhead || size > sys::RECV_SLOT {
        return Err(GenError::TooSmall {
            size,
            min: probe::MIN_RTP + overhead,
        }
        .into());
    }
    let rtp_len = size - overhead;
    let mut raw = [0u8; MasterKey::MAX_LEN];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut raw);
    let key =
        MasterKey::new(profile, &raw[..profile.key_material_len()]).map_err(GenError::Srtp)?;
    let mut tx = Context::new(key, ContextOptions::default()).map_err(GenError::Srtp)?;
    let mut rx = Context::new(key, ContextOptions::default()).map_err(GenError::Srtp)?;
    let mut buf = vec![0u8; size + 64];
    let mut template = vec![0u8; rtp_len];
    probe::template(&mut template, rtp_len, 0x5eed).map_err(|_| GenError::TooSmall {
        size,
        min: probe::MIN_RTP + overhead,
    })?;
    // Protect once ahead so the loop measures the relay's work: unprotect the inbound
    // packet, then protect it again for a subscriber.
    let mut seq: u64 = 0;
    let mut packets = 0u64;
    let mut errors = 0u64;
    let t0 = Instant::now();
    let end = t0 + duration;
    loop {
        for _ in 0..1024 {
            buf[..rtp_len].copy_from_slice(&template);
            probe::stamp(
                &mut buf,
                seq as u16,
                seq as u32,
                &Probe {
                    stream: 0,
                    step: 0,
                    seq,
                    send_ns: 0,
                },
            );
            seq += 1;
            let ok = tx
                .protect_rtp(&mut buf, rtp_len)
                .and_then(|n| rx.unprotect_rtp(&mut buf, n))
                .is_ok();
            if ok {
                packets += 1;
            } else {
                errors += 1;
            }
        }
        if Instant::now() >= end {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if errors > 0 {
        return Err(CmdError::Usage(format!(
            "{errors} packets failed the protect/unprotect round trip"
        )));
    }
    Ok(CryptoBaseline {
        profile: profile.name().to_string(),
        size,
        packets,
        seconds: secs,
        pps: packets as f64 / secs,
        ns_per_packet: secs * 1e9 / packets.max(1) as f64,
    })
}

/// Options of `baseline generator`.
#[derive(Debug, Clone)]
pub struct GeneratorOptions {
    /// Publishers, size, senders, batch and bind address; profile and GSO are set per row.
    pub rig: RigSpec,
    /// One row per profile and send mode; `None` is plain UDP (the same packets, no crypto).
    pub profiles: Vec<Option<Profile>>,
    /// Send modes to measure: `false` one `sendmmsg` message per datagram, `true` UDP GSO.
    pub gso: Vec<bool>,
    /// Total publisher pps asked for; above what the senders can do, they run flat out.
    pub rate: f64,
    pub duration: Duration,
    /// Let the sink take GSO packets whole (UDP_GRO), so loopback does not segment them on
    /// the sender's CPU for a socket nobody reads.
    pub sink_gro: bool,
}

/// `sluice-bench baseline generator`: the senders alone, flat out, to a UDP socket nobody
/// reads, for every profile × send mode asked. The sender threads' own CPU time
/// (`RUSAGE_THREAD`) gives packets per sender CPU-second; the plain-UDP row of the same send
/// mode in the same run gives the ratio.
///
/// On loopback the kernel's receive path up to the sink's socket queue runs in the sender's
/// system call (softirq time is charged to the running thread unless the kernel accounts IRQ
/// time separately), so that share is in the figures; the sink being full, datagrams are
/// dropped at its queue, which is the cheapest end of that path.
pub fn generator_baseline(
    o: &GeneratorOptions,
    out: &Output,
) -> Result<Vec<GeneratorBaseline>, CmdError> {
    let mut rows: Vec<GeneratorBaseline> = Vec::new();
    for &gso in &o.gso {
        for &profile in &o.profiles {
            if sys::interrupted() {
                return Err(CmdError::Interrupted);
            }
            let spec = RigSpec {
                profile,
                sink: true,
                reflect: false,
                gso: if gso { Gso::On } else { Gso::Off },
                ..o.rig.clone()
            };
            let mut rig = Rig::new(spec)?;
            let sink = std::net::UdpSocket::bind(SocketAddr::new(o.rig.bind_ip, 0))?;
            if o.sink_gro {
                use std::os::fd::AsRawFd;
                sys::set_udp_gro(sink.as_raw_fd())?;
            }
            rig.wire_sink(sink.local_addr()?)?;
            let step = StepSpec {
                step: 0,
                rate: o.rate,
                duration: o.duration,
                drain: Duration::ZERO,
                tick: Duration::from_millis(200),
            };
            let (outcome, _) = measured_step(&mut rig, &step, out);
            drop(sink);
            let packets: u64 = outcome.streams.iter().map(|s| s.sent).sum();
            let send_errors: u64 = outcome.streams.iter().map(|s| s.send_errors).sum();
            let cpu: f64 = outcome.senders.iter().map(|u| u.cpu_s).sum();
            let wall = outcome
                .senders
                .iter()
                .map(|u| u.wall_s)
                .fold(0.0f64, f64::max)
                .max(1e-9);
            let row = GeneratorBaseline {
                profile: profile.map_or_else(|| "none".to_string(), |p| p.name().to_string()),
                gso,
                size: o.rig.size,
                batch: o.rig.batch,
                senders: outcome.senders.len(),
                packets,
                seconds: wall,
                pps: packets as f64 / wall,
                sender_cpu_s: cpu,
                pps_per_sender_cpu_s: if cpu > 0.0 { packets as f64 / cpu } else { 0.0 },
                vs_plain: None,
                send_errors,
                skipped: outcome.streams.iter().map(|s| s.skipped).sum(),
            };
            out.say(&format!(
                "{:<24} {:<5} {:>10.0} pps, {:.3} sender CPU-s, {:>10.0} pps per sender CPU-s",
                row.profile,
                if gso { "gso" } else { "mmsg" },
                row.pps,
                row.sender_cpu_s,
                row.pps_per_sender_cpu_s
            ));
            rows.push(row);
        }
    }
    let plain: Vec<(bool, f64)> = rows
        .iter()
        .filter(|r| r.profile == "none")
        .map(|r| (r.gso, r.pps_per_sender_cpu_s))
        .collect();
    for r in &mut rows {
        if let Some((_, p)) = plain.iter().find(|(g, p)| *g == r.gso && *p > 0.0) {
            r.vs_plain = Some(r.pps_per_sender_cpu_s / p);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::StepSummary;

    fn step(pps: f64, passed: bool) -> StepSummary {
        StepSummary {
            target_pps: pps,
            offered_pps: pps,
            delivered_pps: pps,
            loss_ratio: 0.0,
            p99_us: 1.0,
            passed,
            server_cpu: None,
        }
    }

    #[test]
    fn find_max_says_when_the_ceiling_was_not_reached() {
        let mut fm = FindMax {
            loss_threshold: 0.001,
            max_offered_pps: 4000.0,
            steps: vec![step(1000.0, true), step(2000.0, true), step(4000.0, true)],
            ..FindMax::default()
        };
        let w = ceiling_warning(&fm, 1000.0, 4000.0, 20).expect("a warning");
        assert!(w.contains("--max-rate 4000 pps was reached"), "{w}");
        assert!(w.contains("4000 pps is a lower bound"), "{w}");
        let w = ceiling_warning(&fm, 1000.0, 1e9, 3).expect("a warning");
        assert!(w.contains("--max-steps 3 ran out"), "{w}");
        // A failing step above the best: the ceiling is bracketed, nothing to say.
        fm.steps.push(step(8000.0, false));
        fm.ceiling_found = true;
        assert_eq!(ceiling_warning(&fm, 1000.0, 1e9, 20), None);
        // Nothing passed.
        let none = FindMax {
            steps: vec![step(1000.0, false)],
            ..FindMax::default()
        };
        let w = ceiling_warning(&none, 1000.0, 1e9, 20).expect("a warning");
        assert!(w.contains("no step passed"), "{w}");
    }
}
