//! Owner-only files: private directories and the one atomic file write every persisted file
//! of control goes through (state snapshots, applications, the master secret, the audit key,
//! the runtime file and the generated admin token).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Create `dir` (and parents) and set it to mode 0700.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Make `dir` and every file directly in it owner-only again (0700 and 0600), naming what was
/// loosened in a warning: control's state and keys must not be readable by others even if
/// someone changed their modes while control was stopped. Symbolic links are not followed (a
/// link could aim the chmod at any file of ours) and are reported.
pub fn tighten_private_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    tighten(dir, &std::fs::symlink_metadata(dir)?, 0o700)?;
    tighten_files(dir, |_| true)
}

/// Make the files directly in `dir` that `wanted` names owner-only again (0600), as
/// [`tighten_private_dir`] does, leaving `dir` itself alone (the audit log may live in a shared
/// directory).
pub fn tighten_files(dir: &Path, wanted: impl Fn(&std::ffi::OsStr) -> bool) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if !wanted(&e.file_name()) {
            continue;
        }
        let md = std::fs::symlink_metadata(e.path())?;
        if md.file_type().is_symlink() {
            tracing::warn!(path = %e.path().display(), "a symbolic link among private files; left alone");
        } else if md.is_file() {
            tighten(&e.path(), &md, 0o600)?;
        } else if md.is_dir() {
            tighten(&e.path(), &md, 0o700)?;
        }
    }
    Ok(())
}

fn tighten(p: &Path, md: &std::fs::Metadata, want: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(path = %p.display(), mode = format!("{mode:o}"), "was open to others; made owner-only");
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(want))?;
    }
    Ok(())
}

/// Replace `path` with `data` atomically, mode 0600: temp file in the same directory, fsync,
/// rename, fsync the directory. On failure the temp file is removed.
pub fn write_private_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        // The temp file may not exist; either way there is nothing more to do.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// fsync a directory so a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
