//! `sluicectl`: the Sluice operator CLI. See `docs/CLI.md` for every command and exit code.
#![deny(unsafe_code)]

mod api;
mod child;
mod cli;
mod commands;
mod discovery;
mod docs_gen;
mod error;
mod output;
// The admin API client lives in this crate's library so sluice-bench uses the same one.
use sluicectl::admin_http as http;
mod srtp_cmd;
mod supervise;
mod table;
mod up;
mod upgrade_cmd;
mod validate;
mod webrtc_cmd;

use std::time::Duration;

use clap::Parser;

use crate::cli::{Cli, Command, SrtpCmd};
use crate::error::Result;
use crate::output::Output;

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluicectl: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    let out = if cli.json {
        Output::Json
    } else {
        Output::Human
    };
    let sel = discovery::Selector {
        config: cli.config.as_deref(),
        runtime_dir: cli.runtime_dir.as_deref(),
    };
    match &cli.command {
        Command::Up { ephemeral, timeout } => {
            if cli.runtime_dir.is_some() {
                return Err(error::CtlError::usage(
                    "up takes --config FILE (its runtime_dir), not --runtime-dir",
                ));
            }
            up::run(
                cli.config.as_deref(),
                *ephemeral,
                Duration::from_secs(*timeout),
                cli.json,
            )
        }
        Command::Upgrade {
            handover,
            binary,
            timeout,
        } => upgrade_cmd::run(&upgrade_cmd::UpgradeArgs {
            sel,
            handover: handover.as_deref(),
            binary: binary.as_deref(),
            timeout: Duration::from_secs(*timeout),
            json: cli.json,
        }),
        Command::Completions { shell } => {
            docs_gen::completions(*shell);
            Ok(0)
        }
        Command::Man { out: dir } => {
            let n = docs_gen::man_pages(dir)?;
            if !cli.json {
                eprintln!("wrote {n} man pages to {}", dir.display());
            }
            Ok(0)
        }
        Command::Srtp(sub) => {
            let (args, protect) = match sub {
                SrtpCmd::Protect(a) => (a, true),
                SrtpCmd::Unprotect(a) => (a, false),
            };
            let packet = srtp_cmd::run(args, protect)?;
            let hex = validate::to_hex(&packet);
            match out {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({
                        "profile": validate::profile(&args.profile)?.name(),
                        "len": packet.len(),
                        "hex": hex,
                    })
                ),
                Output::Human => println!("{hex}"),
            }
            Ok(0)
        }
        Command::App(_) | Command::Key(_) | Command::Room(_) | Command::Token(_) => {
            use webrtc_cmd::WebRtcCommand as W;
            let w = match &cli.command {
                Command::App(c) => W::App(c),
                Command::Key(c) => W::Key(c),
                Command::Room(c) => W::Room(c),
                Command::Token(c) => W::Token(c),
                _ => {
                    return Err(error::CtlError::Other(
                        "internal: not a WebRTC command".into(),
                    ))
                }
            };
            let req = webrtc_cmd::prepare(w)?;
            let ep = discovery::resolve(cli.admin.as_deref(), cli.token.as_deref(), &sel)?;
            let client = api::Client::new(&ep)?;
            webrtc_cmd::execute(&client, req, out)?;
            Ok(0)
        }
        cmd => {
            let req = commands::prepare(cmd)?;
            let ep = discovery::resolve(cli.admin.as_deref(), cli.token.as_deref(), &sel)?;
            let client = api::Client::new(&ep)?;
            commands::execute(&client, &ep, req, out)
        }
    }
}
