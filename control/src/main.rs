//! `sluice-control --config FILE`: the control-plane daemon (no flag: the embedded default).
#![deny(unsafe_code)]

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-control",
    version,
    about = "Sluice control plane: sessions, keys, routes, admin API"
)]
struct Args {
    /// Configuration file (TOML); without it the embedded loopback default is used.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let cfg = match control::daemon::load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice-control: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    cfg.log.format.init();
    // The same checks a start makes, so that --check-config and the start agree.
    let warnings = match cfg.check_for_start() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("sluice-control: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(e) = control::daemon::check_tls(&cfg) {
        eprintln!("sluice-control: TLS: {e}");
        return std::process::ExitCode::from(2);
    }
    for w in &warnings {
        if args.check_config {
            eprintln!("sluice-control: warning: {w}");
        } else {
            tracing::warn!("{w}");
        }
    }
    if args.check_config {
        println!("configuration OK");
        return std::process::ExitCode::SUCCESS;
    }
    match control::daemon::run(cfg, args.config.as_deref()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("sluice-control: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
