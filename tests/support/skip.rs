//! How a test says it could not check something here (no io_uring, no peer installed, no
//! IPv6): `SKIP: <why>` on stderr, which cargo shows only with `--nocapture` or on failure,
//! and, when `SLUICE_SKIP_LOG` names a file, one line `<test binary>::<test>: <why>` appended
//! to it. `scripts/test.sh` sets that variable and prints the file at the end of the run, so
//! every skip is visible in the summary. Shared by the test crates of the workspace (included
//! with `#[path]`, since it must not become part of any product crate).

use std::io::Write;

/// Report a skipped check; the caller then returns (or goes on with what it can check).
pub fn skip(why: impl std::fmt::Display) {
    eprintln!("SKIP: {why}");
    let Some(log) = std::env::var_os("SLUICE_SKIP_LOG").filter(|p| !p.is_empty()) else {
        return;
    };
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            // cargo names test binaries <name>-<hash>.
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
            _ => s,
        })
        .unwrap_or_default();
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    // One write per line with O_APPEND: lines from parallel tests never interleave.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
    {
        let _ = f.write_all(format!("{binary}::{test}: {why}\n").as_bytes());
    }
}
