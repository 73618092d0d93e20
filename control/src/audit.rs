//! The audit log: one JSON object per line for every admin action (mutations, rekeys, drain,
//! authentication failures), append-only.
//!
//! Line shape: `{"ts":"<RFC 3339 UTC>","actor":"admin"|"anonymous","action":"session.create",
//! "ids":{"session":5,"peer":"h:…"},"result":"ok"|"<error message>","status":201}`.
//! No keys, no tokens. Peer addresses are pseudonymized with a keyed hash (HMAC-SHA256 under a
//! random key kept in the state directory, first 16 hex digits) so the log correlates actions
//! on one peer without recording it; the key makes the hash useless to anyone holding only
//! the log (the IPv4 space is small enough to brute-force an unkeyed hash).
//!
//! Rotation: at the first write of a new UTC day, or when the file passes `max_bytes`, the log
//! is renamed to `<name>.<YYYY-MM-DD>[.N]` beside it. Rotated files older than the retention
//! are deleted. A failed write is logged with `tracing::error!` and counted; it never stops
//! the API.
//! May not touch: shm, the state journal.

use crate::{clock, files, secrets};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Keyed hash of peer addresses.
#[derive(Clone)]
pub struct PeerHasher {
    key: ring::hmac::Key,
}

impl PeerHasher {
    /// Load the key from `<state_dir>/audit.key`, creating it (0600) on first use.
    pub fn load_or_create(state_dir: &Path) -> std::io::Result<PeerHasher> {
        let p = state_dir.join("audit.key");
        let bytes = match std::fs::read(&p) {
            Ok(b) if b.len() == 32 => b,
            Ok(_) | Err(_) => {
                let b = secrets::random_bytes(32)?;
                files::write_private_atomic(&p, &b)?;
                b
            }
        };
        Ok(PeerHasher {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes),
        })
    }

    /// `h:` + the first 16 hex digits of HMAC-SHA256(key, text).
    pub fn hash(&self, text: &str) -> String {
        let tag = ring::hmac::sign(&self.key, text.as_bytes());
        format!("h:{}", crate::secrets::hex(&tag.as_ref()[..8]))
    }

    /// The pseudonym of an HTTP client (`tcp:IP:PORT` or a unix-socket peer): its address
    /// without the port, so one client's requests correlate across its connections.
    pub fn hash_client(&self, peer: &str) -> String {
        let addr = peer.strip_prefix("tcp:").unwrap_or(peer);
        match addr.parse::<std::net::SocketAddr>() {
            Ok(a) => self.hash(&a.ip().to_string()),
            Err(_) => self.hash(addr),
        }
    }
}

/// At most this many characters of a client's input are quoted in the audit log or an error
/// message.
pub const QUOTED_CHARS: usize = 64;

/// What the audit log and error messages may quote of a client's input: its first
/// [`QUOTED_CHARS`] characters, control characters replaced by `?`, `…` when cut. A client can
/// then neither grow a line nor forge one with what it sends.
pub fn quoted(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(QUOTED_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > QUOTED_CHARS {
        out.push('…');
    }
    out
}

/// The writer. Wrap it in a mutex; [`Audit::errors`] is readable without it.
pub struct Audit {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// UTC day of the current file's first line.
    day: i64,
    size: u64,
    max_bytes: u64,
    retention_days: u32,
    errors: AtomicU64,
}

impl Audit {
    /// Open (creating the directory 0700) the log at `path`. A failure here is reported and
    /// retried at the next write.
    pub fn open(path: &Path, max_bytes: u64, retention_days: u32) -> Audit {
        let mut a = Audit {
            path: path.to_path_buf(),
            file: None,
            day: clock::day_of(clock::unix_ms()),
            size: 0,
            max_bytes,
            retention_days,
            errors: AtomicU64::new(0),
        };
        if let Err(e) = a.reopen() {
            a.fail(&e);
        }
        a.enforce_retention(clock::unix_ms());
        a
    }

    /// Failed writes so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn fail(&self, e: &std::io::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(path = %self.path.display(), error = %e, "AUDIT LOG WRITE FAILED; admin actions are not being recorded");
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = self.path.parent() {
            if !dir.exists() {
                files::ensure_private_dir(dir)?;
            }
        }
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        let md = f.metadata()?;
        self.size = md.len();
        if md.len() > 0 {
            if let Ok(m) = md.modified() {
                let ms = m
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                self.day = clock::day_of(ms);
            }
        }
        self.file = Some(f);
        Ok(())
    }

    /// Append one record.
    pub fn record(
        &mut self,
        actor: &str,
        action: &str,
        ids: serde_json::Value,
        result: &str,
        status: u16,
    ) {
        let now = clock::unix_ms();
        let line = serde_json::json!({
            "ts": clock::rfc3339(now),
            "actor": actor,
            "action": action,
            "ids": ids,
            "result": result,
            "status": status,
        });
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        if let Err(e) = self.write_line(now, &bytes) {
            self.fail(&e);
        }
    }

    fn write_line(&mut self, now: u64, bytes: &[u8]) -> std::io::Result<()> {
        let today = clock::day_of(now);
        if self.file.is_some()
            && self.size > 0
            && (today != self.day || self.size + bytes.len() as u64 > self.max_bytes)
        {
            self.rotate(now)?;
        }
        if self.file.is_none() {
            self.reopen()?;
        }
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("audit log not open"))?;
        if self.size == 0 {
            self.day = today;
        }
        f.write_all(bytes)?;
        f.sync_data()?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Rename the current file to `<name>.<date>[.N]` and start a new one.
    fn rotate(&mut self, now: u64) -> std::io::Result<()> {
        self.file = None;
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let base = format!("{name}.{}", clock::date_string(self.day));
        let mut target = dir.join(&base);
        let mut n = 1;
        while target.exists() {
            target = dir.join(format!("{base}.{n}"));
            n += 1;
        }
        std::fs::rename(&self.path, &target)?;
        self.reopen()?;
        self.enforce_retention(now);
        Ok(())
    }

    /// Delete rotated files (`<name>.*`) last modified more than the retention ago.
    pub fn enforce_retention(&self, now: u64) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let Some(name) = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
        else {
            return;
        };
        let prefix = format!("{name}.");
        let cutoff = now.saturating_sub(u64::from(self.retention_days) * 86_400_000);
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for ent in rd.flatten() {
            let fname = ent.file_name().to_string_lossy().into_owned();
            if !fname.starts_with(&prefix) {
                continue;
            }
            let Ok(md) = ent.metadata() else { continue };
            let mtime = md
                .modified()
                .ok()
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(u64::MAX, |d| d.as_millis() as u64);
            if mtime < cutoff {
                match std::fs::remove_file(ent.path()) {
                    Ok(()) => tracing::info!(file = %fname, "deleted expired audit log"),
                    Err(e) => {
                        tracing::warn!(file = %fname, error = %e, "could not delete expired audit log")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_expires() {
        let d = std::env::temp_dir().join(format!("sluice-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let p = d.join("audit.log");
        let mut a = Audit::open(&p, 4096, 180);
        for i in 0..100 {
            a.record(
                "admin",
                "session.create",
                serde_json::json!({"session": i}),
                "ok",
                201,
            );
        }
        assert_eq!(a.errors(), 0);
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("audit.log.")),
            "{names:?}"
        );
        let mut lines = 0;
        for n in &names {
            let text = std::fs::read_to_string(d.join(n)).unwrap();
            for l in text.lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["action"], "session.create");
                lines += 1;
            }
            assert!(text.len() <= 4096, "{n} is {} bytes", text.len());
        }
        assert_eq!(lines, 100);
        // Retention 0 days from a far future "now" deletes every rotated file.
        a.retention_days = 1;
        a.enforce_retention(clock::unix_ms() + 3 * 86_400_000);
        let left: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
        assert_eq!(left.len(), 1, "only the live log remains");
    }

    #[test]
    fn failing_disk_is_counted_not_fatal() {
        let mut a = Audit::open(Path::new("/proc/sluice-no-such-dir/audit.log"), 4096, 1);
        a.record("admin", "drain", serde_json::json!({}), "ok", 202);
        assert!(a.errors() >= 1);
    }

    #[test]
    fn peer_hash_is_keyed_and_stable() {
        let d = std::env::temp_dir().join(format!("sluice-audit-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        files::ensure_private_dir(&d).unwrap();
        let h1 = PeerHasher::load_or_create(&d).unwrap();
        let h2 = PeerHasher::load_or_create(&d).unwrap();
        assert_eq!(h1.hash("192.0.2.1:5000"), h2.hash("192.0.2.1:5000"));
        assert_ne!(h1.hash("192.0.2.1:5000"), h1.hash("192.0.2.2:5000"));
        // `h:` and 16 hex digits: never the address (the key is random, so the digits may
        // contain "192" by chance; the address with its dots cannot appear).
        let h = h1.hash("192.0.2.1:5000");
        assert_eq!(h.len(), 18, "{h}");
        assert!(h.starts_with("h:") && h[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!h.contains("192.0"));
    }
}
