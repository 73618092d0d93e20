//! Shell completions and man pages, generated from the clap definition in [`crate::cli`], so
//! they never disagree with what the parser accepts.
//!
//! Owns: `sluicectl completions SHELL` and `sluicectl man --out DIR`. May not touch: the
//! network, control.

use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::{CtlError, Result};

/// Print the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "sluicectl", &mut std::io::stdout());
}

/// Write `sluicectl.1` and `sluicectl-<command>.1` for every command (and nested command)
/// into `out`; returns how many pages were written.
pub fn man_pages(out: &Path) -> Result<usize> {
    let io =
        |e: std::io::Error| CtlError::Other(format!("writing man pages to {}: {e}", out.display()));
    std::fs::create_dir_all(out).map_err(io)?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = 0;
    write_tree(&cmd, "sluicectl", out, &mut written).map_err(io)?;
    Ok(written)
}

fn write_tree(
    cmd: &clap::Command,
    name: &str,
    out: &Path,
    written: &mut usize,
) -> std::io::Result<()> {
    let page = cmd.clone().name(name.to_string());
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    std::fs::write(out.join(format!("{name}.1")), buf)?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_tree(sub, &format!("{name}-{}", sub.get_name()), out, written)?;
    }
    Ok(())
}
