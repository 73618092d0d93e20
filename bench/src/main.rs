//! `sluice-bench`: load generator for Sluice. See docs/BENCH.md.
#![deny(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use contract::srtp::Profile;
use sluice_bench::cmd::{
    self, CmdError, FindMaxOptions, GeneratorOptions, Output, Reflector, RunOptions,
};
use sluice_bench::gen::{Gso, RigSpec};
use sluice_bench::report::Report;
use sluice_bench::rtpengine::RtpengineTarget;
use sluice_bench::sys;
use sluice_bench::target::{SluiceTarget, Target};

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "Load generator for the Sluice SRTP relay"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send SRTP through a running relay at a fixed rate and report what came out.
    Run(RunArgs),
    /// Search the highest publisher rate whose loss stays below a threshold.
    FindMax {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        search: SearchArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Join a WebRTC server as publishers and viewers (real ICE and DTLS-SRTP), then send
    /// SRTP through it at a fixed rate (or search the highest rate within a loss threshold
    /// with --find-max) and report handshakes and what came out.
    Webrtc(WebrtcArgs),
    /// The ceilings: a plain UDP reflector, or the SRTP transforms alone.
    Baseline {
        #[command(subcommand)]
        which: Baseline,
    },
}

// Parsed once per process; boxing the bigger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Baseline {
    /// Plain UDP reflector driven by the same generator without crypto.
    Echo {
        /// An external reflector (every datagram is sent back to its source); default: the
        /// relay's own workers running `relay::worker::Echo` in this process.
        #[arg(long, value_name = "IP:PORT")]
        target: Option<SocketAddr>,
        /// Relay workers for the in-process reflector.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// I/O backend for the in-process reflector: auto, io_uring or mmsg.
        #[arg(long, default_value = "auto")]
        backend: contract::config::Backend,
        #[command(flatten)]
        load: LoadArgs,
        /// Fixed offered rate (ignored with --find-max).
        #[arg(long, default_value_t = 10000.0)]
        rate: f64,
        /// Search the reflector's maximum instead of running one rate.
        #[arg(long)]
        find_max: bool,
        #[command(flatten)]
        search: SearchArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// The generator's senders alone, flat out to a UDP sink nobody reads: packets per
    /// sender CPU-second for plain UDP and each SRTP profile, with and without UDP GSO.
    Generator {
        /// Publisher sockets (split over --senders threads).
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Datagram size on the wire, SRTP tag included.
        #[arg(long, default_value_t = 1200)]
        size: usize,
        /// Profiles to measure (comma-separated; `none` is plain UDP, the ratio's base).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "none,AES_CM_128_HMAC_SHA1_80,AEAD_AES_128_GCM",
            value_parser = parse_profile_or_none
        )]
        profiles: Vec<Option<Profile>>,
        /// Send modes to measure.
        #[arg(long, value_enum, default_value = "both")]
        send: SendModes,
        /// Sender threads.
        #[arg(long, default_value_t = 1)]
        senders: usize,
        /// Datagrams per send call (with GSO: split into messages of up to 64 datagrams and
        /// 65507 bytes).
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Total pps asked; above what the senders manage they run flat out.
        #[arg(long, default_value_t = 50_000_000.0)]
        rate: f64,
        /// Seconds per row.
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
        /// Do not set UDP_GRO on the sink (loopback then segments every GSO packet again, on
        /// the sender's CPU, before dropping it at the sink).
        #[arg(long)]
        no_sink_gro: bool,
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// unprotect + protect per packet on one core.
    Crypto {
        #[arg(long, default_value = "AES_CM_128_HMAC_SHA1_80", value_parser = parse_profile)]
        profile: Profile,
        /// Datagram size on the wire, SRTP tag included.
        #[arg(long, default_value_t = 1200)]
        size: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 2.0)]
        duration: f64,
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SendModes {
    /// `sendmmsg` one message per datagram, then UDP GSO.
    Both,
    Mmsg,
    Gso,
}

#[derive(Clone, Copy, ValueEnum)]
enum GsoArg {
    /// When a probe at start shows UDP GSO works.
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum TargetKind {
    /// A Sluice instance, through its admin REST API.
    Sluice,
    /// rtpengine in userspace forwarding mode, through its ng control port (`--ng`): fan-out
    /// 1 as offer/answer calls, fan-out > 1 with publish / subscribe request / subscribe answer.
    Rtpengine,
}

#[derive(Args)]
struct TargetArgs {
    /// Kind of system under test.
    #[arg(long, value_enum, default_value = "sluice")]
    target_kind: TargetKind,
    /// Admin API base URL (http://HOST:PORT or unix:/path); default: from control.json.
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// Admin token; default: from control.json.
    #[arg(long, value_name = "T")]
    token: Option<String>,
    /// Relay media address to send to; default: what the admin API reports.
    #[arg(long, value_name = "IP:PORT")]
    target: Option<SocketAddr>,
    /// rtpengine's ng control address (with --target-kind rtpengine).
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:2223")]
    ng: SocketAddr,
    /// Several Sluice nodes' admin API URLs, comma-separated: publisher i and its
    /// subscribers go to node i mod N, and the report adds figures per node.
    #[arg(long, value_name = "URL,URL,...", value_delimiter = ',')]
    targets: Vec<String>,
    /// The admin tokens of --targets, comma-separated, in the same order (or one for all).
    #[arg(long, value_name = "T,T,...", value_delimiter = ',')]
    tokens: Vec<String>,
    /// With --targets: every publisher on the first node (the origin); the subscribers of
    /// publisher i on node i mod N, the other nodes fed from the origin over one static
    /// relay-to-relay trunk each.
    #[arg(long, requires = "targets")]
    cascade: bool,
}

#[derive(Args)]
struct LoadArgs {
    /// Publisher sessions (one UDP socket each).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribers per publisher (one UDP socket and session each).
    #[arg(long, default_value_t = 1)]
    fanout: usize,
    /// Datagram size on the wire in bytes (UDP payload, SRTP tag included).
    #[arg(long, default_value_t = 1200)]
    size: usize,
    /// SRTP profile.
    #[arg(long, default_value = "AES_CM_128_HMAC_SHA1_80", value_parser = parse_profile)]
    profile: Profile,
    /// Seconds of sending (find-max uses --step-duration instead).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Sender threads.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Receiver threads.
    #[arg(long, default_value_t = 1)]
    receivers: usize,
    /// Datagrams per sendmmsg/recvmmsg.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Publishers send each batch as UDP GSO messages (UDP_SEGMENT, up to 64 datagrams per
    /// message): several times cheaper per packet for the bench. `auto` probes at start and
    /// falls back to one message per datagram. Off by default: the load's shape (and so
    /// results) stays comparable with runs recorded before GSO existed.
    #[arg(long, value_enum, default_value = "off")]
    gso: GsoArg,
    /// Longest wait for in-flight packets after sending stops, in ms.
    #[arg(long, default_value_t = 500)]
    drain_ms: u64,
    /// Local address the bench's sockets bind to.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Sequence window per subscriber (duplicates are recognised within it).
    #[arg(long, default_value_t = 8192)]
    window: usize,
}

#[derive(Args)]
struct SearchArgs {
    /// Loss threshold in percent.
    #[arg(long, default_value_t = 0.1)]
    loss: f64,
    /// First rate tried (total publisher pps).
    #[arg(long, default_value_t = 1000.0)]
    start_rate: f64,
    /// Highest rate tried.
    #[arg(long, default_value_t = 10_000_000.0)]
    max_rate: f64,
    /// Stop when the bracket is narrower than this percentage of its top.
    #[arg(long, default_value_t = 5.0)]
    precision: f64,
    /// Most steps run.
    #[arg(long, default_value_t = 20)]
    max_steps: usize,
    /// Seconds of sending per step.
    #[arg(long, default_value_t = 3.0)]
    step_duration: f64,
}

#[derive(Args)]
struct OutArgs {
    /// Write the full report as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw latency distribution and per-second throughput as SVG.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// No progress display or step lines (the summary is still printed).
    #[arg(long)]
    quiet: bool,
}

fn parse_profile(s: &str) -> Result<Profile, String> {
    Profile::from_name(s).map_err(|_| {
        let names: Vec<&str> = Profile::ALL.iter().map(|p| p.name()).collect();
        format!("unknown SRTP profile `{s}` (one of {})", names.join(", "))
    })
}

fn parse_profile_or_none(s: &str) -> Result<Option<Profile>, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    parse_profile(s).map(Some)
}

fn secs(s: f64, what: &str) -> Result<Duration, CmdError> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| CmdError::Usage(format!("{what} must be a positive number of seconds")))
}

impl LoadArgs {
    fn run_options(&self, rate: f64) -> Result<RunOptions, CmdError> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(CmdError::Usage("--rate must be positive".into()));
        }
        Ok(RunOptions {
            rig: RigSpec {
                publishers: self.publishers,
                fanout: self.fanout,
                size: self.size,
                profile: Some(self.profile),
                reflect: false,
                senders: self.senders,
                receivers: self.receivers,
                batch: self.batch,
                window: self.window,
                bind_ip: self.bind,
                gso: match self.gso {
                    GsoArg::Auto => Gso::Auto,
                    GsoArg::On => Gso::On,
                    GsoArg::Off => Gso::Off,
                },
                ..RigSpec::default()
            },
            rate,
            duration: secs(self.duration, "--duration")?,
            drain: Duration::from_millis(self.drain_ms),
        })
    }
}

impl SearchArgs {
    /// `run` holds the load; with `search`, each step lasts --step-duration.
    fn options(&self, mut run: RunOptions, search: bool) -> Result<FindMaxOptions, CmdError> {
        if search {
            run.duration = secs(self.step_duration, "--step-duration")?;
        }
        if !(self.loss >= 0.0 && self.loss < 100.0) {
            return Err(CmdError::Usage(
                "--loss must be a percentage in [0, 100)".into(),
            ));
        }
        if !(self.start_rate > 0.0 && self.max_rate >= self.start_rate) {
            return Err(CmdError::Usage(
                "--start-rate must be positive and at most --max-rate".into(),
            ));
        }
        Ok(FindMaxOptions {
            run,
            loss: self.loss / 100.0,
            start: self.start_rate,
            max: self.max_rate,
            precision: (self.precision / 100.0).clamp(0.001, 0.5),
            max_steps: self.max_steps.max(1),
        })
    }
}

impl OutArgs {
    fn output(&self) -> Output {
        Output {
            quiet: self.quiet,
            json: self.json.clone(),
            plot: self.plot.clone(),
        }
    }
}

fn connect(t: &TargetArgs) -> Result<Box<dyn Target>, CmdError> {
    if !t.targets.is_empty() {
        if t.tokens.is_empty() {
            return Err(CmdError::Usage("--targets needs --tokens".into()));
        }
        return Ok(Box::new(sluice_bench::multi::MultiTarget::connect(
            &t.targets, &t.tokens, t.cascade,
        )?));
    }
    match t.target_kind {
        TargetKind::Sluice => Ok(Box::new(SluiceTarget::connect(
            t.api.as_deref(),
            t.token.as_deref(),
            t.target,
        )?)),
        TargetKind::Rtpengine => Ok(Box::new(RtpengineTarget::connect(t.ng)?)),
    }
}

/// `--garbage-rate`: garbage to the target's media address while the run measures.
fn start_garbage(
    t: &mut dyn Target,
    bind: IpAddr,
    pps: f64,
) -> Result<sluice_bench::garbage::Garbage, CmdError> {
    let media = t
        .info()?
        .media_addr
        .and_then(|m| m.parse::<SocketAddr>().ok())
        .ok_or_else(|| {
            CmdError::Usage("--garbage-rate: the target reports no media address".into())
        })?;
    let media = sluice_bench::target::reachable(media);
    Ok(sluice_bench::garbage::Garbage::start(media, bind, pps)?)
}

fn finish(report: &Report, out: &Output, title: &str) -> Result<(), CmdError> {
    print!("{}", report.text());
    out.write(report, title)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sys::catch_interrupts();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice-bench: {e}");
            if matches!(e, CmdError::Usage(_)) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode, CmdError> {
    match cli.cmd {
        Command::Run(args) => {
            if let Some(code) = run_command(args)? {
                return Ok(code);
            }
        }
        Command::FindMax {
            target,
            load,
            search,
            out,
        } => {
            let mut opts = search.options(load.run_options(search.start_rate)?, true)?;
            opts.run.rig.latency_groups = target.targets.len().max(1);
            let output = out.output();
            let mut t = connect(&target)?;
            let mut report = cmd::find_max(t.as_mut(), &opts, &output)?;
            if !target.targets.is_empty() {
                report.nodes = sluice_bench::multi::per_node(&report, &target.targets);
            }
            finish(&report, &output, "sluice-bench find-max")?;
            if !target.targets.is_empty() {
                print!("{}", sluice_bench::multi::per_node_text(&report));
            }
        }
        Command::Baseline { which } => baseline_command(which)?,
        Command::Webrtc(args) => {
            if let Some(code) = webrtc_command(args)? {
                return Ok(code);
            }
        }
    }
    if sys::interrupted() {
        // The partial report was printed and written; say it was cut short (128 + SIGINT).
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

/// What `run` is given.
#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    load: LoadArgs,
    /// Total publisher packets per second (all publishers together).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Also measure the one-core crypto baseline and report the ratio.
    #[arg(long)]
    baselines: bool,
    /// Exit with status 3 when loss exceeds this percentage or any packet failed
    /// authentication or reached the wrong subscriber.
    #[arg(long, value_name = "PCT")]
    max_loss: Option<f64>,
    /// Also send this many datagrams per second of garbage the relay must refuse
    /// (bench/src/garbage.rs).
    #[arg(long, value_name = "PPS")]
    garbage_rate: Option<f64>,
    /// `udp`, or `tcp`: every publisher and subscriber is an ICE-TCP connection to the relay
    /// (static sessions reached by ICE; the relay needs `relay.tcp.enabled`).
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    transport: Transport,
    /// The relay's ICE-TCP port, when `relay.tcp.port` is not the media port.
    #[arg(long, value_name = "PORT")]
    tcp_port: Option<u16>,
    #[command(flatten)]
    out: OutArgs,
}

/// How `run` reaches the relay.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    Udp,
    Tcp,
}

/// `sluice-bench run`; `Some(3)` when the `--max-loss` check fails.
fn run_command(a: RunArgs) -> Result<Option<ExitCode>, CmdError> {
    let RunArgs {
        target,
        load,
        rate,
        baselines,
        max_loss,
        garbage_rate,
        transport,
        tcp_port,
        out,
    } = a;
    let mut opts = load.run_options(rate)?;
    opts.rig.latency_groups = target.targets.len().max(1);
    let output = out.output();
    let crypto = if baselines {
        Some(cmd::crypto_baseline(
            load.profile,
            load.size,
            Duration::from_secs(1),
        )?)
    } else {
        None
    };
    let mut t = connect(&target)?;
    let garbage = match garbage_rate {
        Some(pps) => Some(start_garbage(t.as_mut(), load.bind, pps)?),
        None => None,
    };
    let mut report = match transport {
        Transport::Udp => cmd::run(t.as_mut(), &opts, &output)?,
        Transport::Tcp => cmd::run_tcp(t.as_mut(), &opts, tcp_port, &output)?,
    };
    if let Some(g) = garbage {
        let s = g.stop();
        eprintln!(
            "garbage: {} datagrams in {:.1} s ({:.0}/s), {} send errors",
            s.sent,
            s.elapsed.as_secs_f64(),
            s.rate(),
            s.send_errors
        );
    }
    report.baselines.crypto = crypto;
    report.compute_ratios();
    if !target.targets.is_empty() {
        report.nodes = sluice_bench::multi::per_node(&report, &target.targets);
    }
    finish(&report, &output, "sluice-bench run")?;
    if !target.targets.is_empty() {
        print!("{}", sluice_bench::multi::per_node_text(&report));
    }
    if let (Some(max), Some(r)) = (max_loss, &report.result) {
        if r.loss_ratio * 100.0 > max || r.auth_failures > 0 || r.misrouted > 0 {
            eprintln!(
                "sluice-bench: check failed: loss {:.4}% (max {max}%), {} auth failures, {} misrouted",
                r.loss_ratio * 100.0,
                r.auth_failures,
                r.misrouted
            );
            return Ok(Some(ExitCode::from(3)));
        }
    }
    Ok(None)
}

/// `sluice-bench baseline echo|generator|crypto`.
fn baseline_command(which: Baseline) -> Result<(), CmdError> {
    match which {
        Baseline::Echo {
            target,
            workers,
            backend,
            load,
            rate,
            find_max,
            search,
            out,
        } => {
            let opts = search.options(load.run_options(rate)?, find_max)?;
            let output = out.output();
            let reflector = match target {
                Some(addr) => Reflector::External(addr),
                None => Reflector::Workers { workers, backend },
            };
            let (echo, mut report) = cmd::echo(reflector, &opts, find_max, &output)?;
            report.baselines.echo = Some(echo);
            finish(&report, &output, "sluice-bench baseline echo")?;
        }
        Baseline::Generator {
            publishers,
            size,
            profiles,
            send,
            senders,
            batch,
            rate,
            duration,
            no_sink_gro,
            bind,
            json,
        } => {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(CmdError::Usage("--rate must be positive".into()));
            }
            let opts = GeneratorOptions {
                rig: RigSpec {
                    publishers,
                    size,
                    senders,
                    batch,
                    bind_ip: bind,
                    ..RigSpec::default()
                },
                profiles,
                gso: match send {
                    SendModes::Both => vec![false, true],
                    SendModes::Mmsg => vec![false],
                    SendModes::Gso => vec![true],
                },
                rate,
                duration: secs(duration, "--duration")?,
                sink_gro: !no_sink_gro,
            };
            let output = Output {
                json,
                ..Output::default()
            };
            let mut report = Report::new("baseline generator");
            report.baselines.generator = cmd::generator_baseline(&opts, &output)?;
            finish(&report, &output, "sluice-bench baseline generator")?;
        }
        Baseline::Crypto {
            profile,
            size,
            duration,
            json,
        } => {
            let c = cmd::crypto_baseline(profile, size, secs(duration, "--duration")?)?;
            let mut report = Report::new("baseline crypto");
            report.baselines.crypto = Some(c);
            finish(
                &report,
                &Output {
                    json,
                    ..Output::default()
                },
                "sluice-bench baseline crypto",
            )?;
        }
    }
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
enum WebrtcServer {
    /// A Sluice instance: WHIP/WHEP on its public URL, tokens minted per room through its admin
    /// API (`--api`/`--token`, default: the running instance's control.json).
    Sluice,
    /// Any WHIP/WHEP server: `--whip-url` and `--whep-url`, `--bearer`.
    Whip,
    /// Janus's videoroom plugin over Janus's HTTP API (`--janus-url`).
    Janus,
}

/// What `webrtc` is given.
#[derive(Args)]
struct WebrtcArgs {
    /// Kind of server under test.
    #[arg(long, value_enum, default_value = "sluice")]
    target_kind: WebrtcServer,
    /// Sluice admin API base URL (http://HOST:PORT or unix:/path); default: from control.json.
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// Sluice admin token; default: from control.json.
    #[arg(long, value_name = "T")]
    token: Option<String>,
    /// Sluice application the rooms belong to.
    #[arg(long, default_value = "demo")]
    app: String,
    /// Room name prefix: publisher i and its viewers meet in room `<ROOM>-<i>`.
    #[arg(long, default_value = "bench")]
    room: String,
    /// WHIP endpoint (with --target-kind whip); `{room}` is replaced by the room name.
    #[arg(long, value_name = "URL")]
    whip_url: Option<String>,
    /// WHEP endpoint (with --target-kind whip); `{room}` is replaced by the room name.
    #[arg(long, value_name = "URL")]
    whep_url: Option<String>,
    /// Bearer token sent with every WHIP/WHEP request (with --target-kind whip).
    #[arg(long, value_name = "T")]
    bearer: Option<String>,
    /// Janus HTTP API base (with --target-kind janus).
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:8088/janus"
    )]
    janus_url: String,
    /// Handshakes (signalling + ICE + DTLS) run at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Longest join of one endpoint, in seconds.
    #[arg(long, default_value_t = 20.0)]
    handshake_timeout: f64,
    /// The server's processes on this host (comma-separated PIDs): their CPU time from
    /// /proc/PID/stat is reported for the joins and for the media separately, with packets
    /// out per server CPU-second of the media.
    #[arg(long, value_name = "PID,PID,...", value_delimiter = ',')]
    server_pid: Vec<u32>,
    #[command(flatten)]
    load: LoadArgs,
    /// Total publisher packets per second (all publishers together).
    #[arg(long, default_value_t = 1000.0, conflicts_with = "find_max")]
    rate: f64,
    /// Exit with status 3 when loss exceeds this percentage, any packet failed
    /// authentication or reached the wrong viewer, or a join failed.
    #[arg(long, value_name = "PCT", conflicts_with = "find_max")]
    max_loss: Option<f64>,
    /// Join once, then search the highest publisher rate whose loss stays below --loss over
    /// the established sessions (the steps and rules of `find-max`).
    #[arg(long)]
    find_max: bool,
    #[command(flatten)]
    search: SearchArgs,
    #[command(flatten)]
    out: OutArgs,
}

/// `sluice-bench webrtc`; `Some(3)` when the `--max-loss` check fails.
fn webrtc_command(a: WebrtcArgs) -> Result<Option<ExitCode>, CmdError> {
    use sluice_bench::webrtc::{self, WebRtcOptions, WebRtcTarget};
    let search = if a.find_max {
        Some(
            a.search
                .options(a.load.run_options(a.search.start_rate)?, true)?,
        )
    } else {
        None
    };
    let opts = a.load.run_options(if a.find_max {
        a.search.start_rate
    } else {
        a.rate
    })?;
    let output = a.out.output();
    let signaling: Box<dyn webrtc::Signaling> = match a.target_kind {
        WebrtcServer::Sluice => Box::new(webrtc::sluice(
            a.api.as_deref(),
            a.token.as_deref(),
            &a.app,
            &a.room,
        )?),
        WebrtcServer::Whip => {
            let (Some(whip), Some(whep)) = (a.whip_url.clone(), a.whep_url.clone()) else {
                return Err(CmdError::Usage(
                    "--target-kind whip needs --whip-url and --whep-url".into(),
                ));
            };
            let bearer = a.bearer.clone();
            Box::new(webrtc::Whip {
                whip,
                whep,
                room: a.room.clone(),
                tokens: Box::new(move |_| Ok(bearer.clone())),
                kind: "whip".into(),
                admin: None,
            })
        }
        WebrtcServer::Janus => Box::new(
            sluice_bench::janus::Janus::new(&a.janus_url)
                .map_err(|e| CmdError::Usage(format!("--janus-url: {e}")))?,
        ),
    };
    if a.concurrency == 0 {
        return Err(CmdError::Usage("--concurrency must be at least 1".into()));
    }
    let mut t = WebRtcTarget::new(
        signaling,
        WebRtcOptions {
            profile: a.load.profile,
            concurrency: a.concurrency,
            handshake_timeout: secs(a.handshake_timeout, "--handshake-timeout")?,
            server_pids: a.server_pid.clone(),
        },
    )?;
    let run = match &search {
        Some(s) => cmd::find_max(&mut t, s, &output),
        None => cmd::run(&mut t, &opts, &output),
    };
    let summary = t.summary().clone();
    let mut report = match run {
        Ok(r) => r,
        Err(e) => {
            // The joins are the measurement too: say how far they got.
            eprint!("{}", summary.text());
            return Err(e);
        }
    };
    report.command = if a.find_max {
        "webrtc find-max"
    } else {
        "webrtc"
    }
    .into();
    report.webrtc = Some(summary);
    finish(&report, &output, "sluice-bench webrtc")?;
    if let (Some(max), Some(r)) = (a.max_loss, &report.result) {
        let w = report.webrtc.as_ref();
        let failed = w.map_or(0, |w| w.failed + w.viewers_without_media);
        if r.loss_ratio * 100.0 > max || r.auth_failures > 0 || r.misrouted > 0 || failed > 0 {
            eprintln!(
                "sluice-bench: check failed: loss {:.4}% (max {max}%), {} auth failures, {} misrouted, {failed} failed joins or viewers without media",
                r.loss_ratio * 100.0,
                r.auth_failures,
                r.misrouted
            );
            return Ok(Some(ExitCode::from(3)));
        }
    }
    Ok(None)
}
