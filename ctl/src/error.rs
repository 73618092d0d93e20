//! The one error type of `sluicectl` and its mapping to exit codes.
//!
//! Owns: the exit-code contract (documented in `docs/CLI.md`). May not touch: I/O.

use std::path::PathBuf;

/// Exit code for a usage error (bad flag, bad value); clap uses 2 as well.
pub const EXIT_USAGE: i32 = 2;
/// Exit code when control is not running or cannot be reached.
pub const EXIT_UNREACHABLE: i32 = 3;
/// Exit code when the admin API answered with an error status.
pub const EXIT_API: i32 = 4;
/// Exit code of `status` when control answers but the relay is down.
pub const EXIT_DOWN: i32 = 5;
/// Exit code for anything else (I/O failure, a child process died, SRTP transform failed).
pub const EXIT_OTHER: i32 = 1;

/// Everything that can make a `sluicectl` command fail.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A value given on the command line is not acceptable; caught before any request.
    #[error("{0}")]
    Usage(String),
    /// No runtime file was found and no `--admin` was given.
    #[error(
        "control is not running: no runtime file at {} (start it with `sluicectl up`, or pass --admin URL and --token TOKEN)",
        join_paths(.paths)
    )]
    NotRunning { paths: Vec<PathBuf> },
    /// No relay answers on a hand-over socket (`sluicectl upgrade`).
    #[error(
        "no running relay: nothing answers on {} (pass --handover PATH or --config FILE)",
        join_paths(.0)
    )]
    NotRunningRelay(Vec<PathBuf>),
    /// The runtime file exists but cannot be read or parsed.
    #[error("cannot read control's runtime file {}: {msg}", .path.display())]
    RuntimeFile { path: PathBuf, msg: String },
    /// The admin endpoint did not answer (connection refused, timeout, broken reply).
    #[error("control is not reachable at {url}: {msg}")]
    Unreachable { url: String, msg: String },
    /// The admin API answered with a non-success status.
    #[error("API error {status} on {method} {path}: {msg}")]
    Api {
        status: u16,
        method: &'static str,
        path: String,
        msg: String,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

fn join_paths(paths: &[PathBuf]) -> String {
    let v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    v.join(" or ")
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Usage(_) => EXIT_USAGE,
            CtlError::NotRunning { .. } | CtlError::Unreachable { .. } => EXIT_UNREACHABLE,
            CtlError::NotRunningRelay(_) => EXIT_UNREACHABLE,
            CtlError::RuntimeFile { .. } => EXIT_UNREACHABLE,
            CtlError::Api { .. } => EXIT_API,
            CtlError::Other(_) => EXIT_OTHER,
        }
    }

    pub fn usage(msg: impl Into<String>) -> CtlError {
        CtlError::Usage(msg.into())
    }
}

pub type Result<T, E = CtlError> = std::result::Result<T, E>;
