//! `sluicectl up`: run sluice-control and sluice-relay in the foreground.
//!
//! Owns: starting them (control first, since it creates the shared-memory file and the runtime
//! file), waiting until control's runtime file appears and `/v1/status` reports the relay up,
//! and printing the endpoints; then [`crate::supervise`] keeps both running until SIGINT or
//! SIGTERM. A daemon that dies before it is ready stops everything. The configuration file is
//! loaded only to validate it and to learn the runtime and state directories; the daemons get
//! it as given. A public listener on an address other than loopback with no `[http.tls]` gets
//! a self-signed certificate ([`self_signed`]), handed to control through
//! `SLUICE_TLS_CERT_FILE` and `SLUICE_TLS_KEY_FILE`.
//! May not touch: the daemons' state.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api::Client;
use contract::config::{Config, ListenAddr, RuntimeInfo, TLS_CERT_ENV, TLS_KEY_ENV};

use crate::child::{find_binary, stop_all, Daemon, CONTROL_BIN, RELAY_BIN};
use crate::discovery::{self, Endpoint};
use crate::error::{CtlError, Result};
use crate::supervise::Supervisor;

const POLL: Duration = Duration::from_millis(100);

/// Why waiting for readiness stopped.
enum Wait {
    Ready,
    Signalled,
}

/// A throw-away configuration for `up --ephemeral`: the embedded default with control's
/// state and audit log in a fresh private directory, removed when `up` returns.
struct Ephemeral {
    dir: PathBuf,
    config: PathBuf,
}

impl Ephemeral {
    fn create() -> Result<Ephemeral> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("sluice-ephemeral-{}", std::process::id()));
        let io = |e: std::io::Error| {
            CtlError::Other(format!("--ephemeral: cannot create {}: {e}", dir.display()))
        };
        // A leftover of an earlier process with this pid holds nothing we need.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        // JSON string escapes are valid TOML basic-string escapes.
        let quote = |p: PathBuf| serde_json::Value::String(p.display().to_string()).to_string();
        let text = format!(
            "# written by `sluicectl up --ephemeral`; removed when it stops\n\
             [control]\nstate_dir = {}\naudit_log = {}\nbootstrap_app = \"demo\"\n",
            quote(dir.join("state")),
            quote(dir.join("audit").join("audit.log")),
        );
        let config = dir.join("sluice.toml");
        std::fs::write(&config, text).map_err(io)?;
        Ok(Ephemeral { dir, config })
    }
}

impl Drop for Ephemeral {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run `up`. Returns the process exit code on a clean stop.
pub fn run(config: Option<&Path>, ephemeral: bool, timeout: Duration, json: bool) -> Result<i32> {
    let scratch = match (ephemeral, config) {
        (true, Some(_)) => {
            return Err(CtlError::usage(
                "--ephemeral runs the embedded configuration; with --config FILE, point \
                 control.state_dir at a scratch directory instead",
            ))
        }
        (true, None) => Some(Ephemeral::create()?),
        (false, _) => None,
    };
    let config = scratch.as_ref().map(|e| e.config.as_path()).or(config);
    // The daemons read the same file; loading it here reports a bad key before anything
    // starts and tells where control will write its runtime file.
    let cfg = match config {
        Some(c) => Config::load(c).map_err(|e| CtlError::usage(format!("--config: {e}")))?,
        None => Config::embedded_default(),
    };
    let runtime_file = RuntimeInfo::path_in(&cfg.runtime_dir);
    let control_bin = find_binary(CONTROL_BIN)?;
    let tls = self_signed(&cfg)?;
    if let Some(t) = &tls {
        // Before any thread or child exists: the daemons (and their restarts) inherit them.
        std::env::set_var(TLS_CERT_ENV, &t.cert);
        std::env::set_var(TLS_KEY_ENV, &t.key);
    }
    let relay_bin = find_binary(RELAY_BIN)?;
    if let Ok(Some(info)) = discovery::read_runtime_file(&runtime_file) {
        if discovery::alive(info.pid) {
            return Err(CtlError::Other(format!(
                "control is already running (pid {}, admin {}); see {}",
                info.pid,
                info.admin_url,
                runtime_file.display()
            )));
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| CtlError::Other(format!("cannot install signal handler: {e}")))?;
    }

    let deadline = Instant::now() + timeout;
    let mut daemons = vec![Daemon::spawn(CONTROL_BIN, &control_bin, config)?];

    let outcome = (|| -> Result<(Wait, Option<RuntimeInfo>, Option<Value>)> {
        // 1. Control's runtime file, written after this start.
        let info = loop {
            if stop.load(Ordering::Relaxed) {
                return Ok((Wait::Signalled, None, None));
            }
            check_children(&mut daemons, "before it was ready")?;
            if let Some(info) = fresh_runtime_info(&runtime_file, daemons[0].pid()) {
                break info;
            }
            if Instant::now() >= deadline {
                return Err(timeout_error(
                    &mut daemons,
                    &format!(
                        "control did not write {} within {}s",
                        runtime_file.display(),
                        timeout.as_secs()
                    ),
                ));
            }
            std::thread::sleep(POLL);
        };
        // 2. The relay, then its heartbeat in /v1/status.
        daemons.push(Daemon::spawn(RELAY_BIN, &relay_bin, config)?);
        let client = Client::new(&Endpoint {
            admin_url: info.admin_url.clone(),
            token: Some(info.admin_token.clone()),
            instance: None,
        })?;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok((Wait::Signalled, Some(info), None));
            }
            check_children(&mut daemons, "before it was ready")?;
            let last = match client.get("/v1/status") {
                Ok(st) if relay_up(&st) => return Ok((Wait::Ready, Some(info), Some(st))),
                Ok(_) => "status says the relay is not up".to_string(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(timeout_error(
                    &mut daemons,
                    &format!(
                        "the relay did not come up within {}s ({last})",
                        timeout.as_secs()
                    ),
                ));
            }
            std::thread::sleep(POLL);
        }
    })();

    let (wait, info, status) = match outcome {
        Ok(o) => o,
        Err(e) => {
            stop_all(daemons.iter_mut().collect());
            return Err(e);
        }
    };
    if let Wait::Signalled = wait {
        stop_all(daemons.iter_mut().collect());
        return Ok(0);
    }
    print_endpoints(info.as_ref(), status.as_ref(), tls.as_ref(), json);

    // 3. Foreground until a signal; daemons that exit are restarted.
    let (Some(relay), Some(control)) = (daemons.pop(), daemons.pop()) else {
        return Err(CtlError::Other("internal: both daemons should run".into()));
    };
    Supervisor::new(
        (control, control_bin),
        (relay, relay_bin),
        config,
        &cfg.runtime_dir,
    )
    .run(&stop)
}

/// Error out if any child has exited, naming it and showing its stderr tail.
fn check_children(daemons: &mut [Daemon], when: &str) -> Result<()> {
    for d in daemons.iter_mut() {
        if let Some(st) = d.poll() {
            let (name, tail) = (d.name, d.tail());
            return Err(CtlError::Other(format!(
                "{name} exited {when} ({}); its last stderr lines:\n{}",
                st.describe(),
                tail.trim_end()
            )));
        }
    }
    Ok(())
}

fn timeout_error(daemons: &mut [Daemon], what: &str) -> CtlError {
    stop_all(daemons.iter_mut().collect());
    let mut msg = format!("timed out: {what}");
    for d in daemons.iter_mut() {
        let (name, tail) = (d.name, d.tail());
        msg.push_str(&format!("\n{name} stderr (last lines):\n{tail}"));
    }
    CtlError::Other(msg.trim_end().to_string())
}

/// The runtime file, if it was written by the control we started (it carries its pid; a
/// stale file from an earlier run carries another).
fn fresh_runtime_info(path: &Path, pid: u32) -> Option<RuntimeInfo> {
    discovery::read_runtime_file(path)
        .ok()
        .flatten()
        .filter(|info| info.pid == pid)
}

/// `relay.up` in a status document.
pub fn relay_up(status: &Value) -> bool {
    status
        .get("relay")
        .and_then(|r| r.get("up"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn print_endpoints(
    info: Option<&RuntimeInfo>,
    status: Option<&Value>,
    tls: Option<&SelfSigned>,
    json: bool,
) {
    let pick = |key: &str, from_info: Option<&String>| -> String {
        status
            .and_then(|s| s.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| from_info.cloned())
            .unwrap_or_else(|| "-".to_string())
    };
    let mut rows = vec![
        ("admin_url", pick("admin_url", info.map(|i| &i.admin_url))),
        (
            "media_addr",
            pick("media_addr", info.map(|i| &i.media_addr)),
        ),
        (
            "public_url",
            pick("public_url", info.map(|i| &i.public_url)),
        ),
        (
            "metrics_url",
            pick("metrics_url", info.map(|i| &i.metrics_url)),
        ),
    ];
    // Only when control says the demo page is served (a bootstrap application with a key).
    if status.and_then(|s| s.get("demo")).and_then(Value::as_bool) == Some(true) {
        rows.push((
            "demo_url",
            format!("{}/demo", pick("public_url", info.map(|i| &i.public_url))),
        ));
    }
    if let Some(t) = tls {
        rows.push(("tls_cert", t.cert.display().to_string()));
        rows.push(("tls_sha256", t.sha256.clone()));
        rows.push(("tls_spki", t.spki_sha256.clone()));
    }
    if json {
        let obj: serde_json::Map<String, Value> = rows
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
            .collect();
        println!("{}", Value::Object(obj));
    } else {
        println!("sluice is up (Ctrl-C stops it)");
        for (k, v) in rows {
            println!("  {k:<12} {v}");
        }
    }
}

/// A self-signed certificate `up` made (or found from an earlier run) for the public listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfSigned {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SHA-256 of the certificate, `AA:BB:…` (what browsers show).
    pub sha256: String,
    /// Base64 SHA-256 of its SubjectPublicKeyInfo (Chromium's
    /// `--ignore-certificate-errors-spki-list`, HPKP-style pins).
    pub spki_sha256: String,
}

/// When the public listener is a TCP address other than loopback and the configuration names
/// no certificate: `<state_dir>/tls/self-signed.{crt,key}`, created on the first such run
/// (names: `localhost`, the listen address when specified, `control.public_addresses`) and
/// kept for later runs, so that a browser's exception stays valid.
pub fn self_signed(cfg: &Config) -> Result<Option<SelfSigned>> {
    let Some(ListenAddr::Tcp(public)) = &cfg.control.public_listen else {
        return Ok(None);
    };
    if cfg.http.tls.is_some()
        || public.ip().is_loopback()
        || cfg.control.public_listen.as_ref() == Some(&cfg.control.admin_listen)
    {
        return Ok(None);
    }
    let dir = cfg.control.state_dir.join("tls");
    let (cert, key) = (dir.join("self-signed.crt"), dir.join("self-signed.key"));
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |e: std::io::Error| CtlError::Other(format!("self-signed certificate: {what}: {e}"))
    };
    if !(cert.is_file() && key.is_file()) {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        let mut names = vec!["localhost".to_string()];
        if !public.ip().is_unspecified() {
            names.push(public.ip().to_string());
        }
        names.extend(cfg.control.public_addresses.iter().map(|a| a.to_string()));
        names.dedup();
        let made = rcgen::generate_simple_self_signed(names)
            .map_err(|e| CtlError::Other(format!("self-signed certificate: {e}")))?;
        for (path, text) in [
            (&key, made.key_pair.serialize_pem()),
            (&cert, made.cert.pem()),
        ] {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .map_err(io(path))?;
            std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io(path))?;
        }
    }
    let (sha256, spki_sha256) = fingerprints(&cert, &key)?;
    Ok(Some(SelfSigned {
        cert,
        key,
        sha256,
        spki_sha256,
    }))
}

/// The certificate's SHA-256 (`AA:BB:…`) and the SHA-256 of its key's SubjectPublicKeyInfo
/// (base64).
fn fingerprints(cert: &Path, key: &Path) -> Result<(String, String)> {
    use base64::Engine as _;
    use rustls_pki_types::pem::PemObject;
    let bad = |p: &Path, m: String| CtlError::Other(format!("{}: {m}", p.display()));
    let der = rustls_pki_types::CertificateDer::from_pem_file(cert)
        .map_err(|e| bad(cert, e.to_string()))?;
    let sha256 = ring::digest::digest(&ring::digest::SHA256, &der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let key_pem = std::fs::read_to_string(key).map_err(|e| bad(key, e.to_string()))?;
    let pair = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| bad(key, e.to_string()))?;
    let pin = ring::digest::digest(&ring::digest::SHA256, &pair.public_key_der());
    Ok((
        sha256,
        base64::engine::general_purpose::STANDARD.encode(pin.as_ref()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_only_for_a_public_non_loopback_listener_and_kept() {
        let dir = std::env::temp_dir().join(format!("sluice-up-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = Config::embedded_default();
        cfg.control.state_dir = dir.join("state");
        assert_eq!(self_signed(&cfg).unwrap(), None, "no public listener");
        cfg.control.public_listen = Some("127.0.0.1:8443".parse().unwrap());
        assert_eq!(self_signed(&cfg).unwrap(), None, "loopback");
        cfg.control.public_listen = Some("0.0.0.0:8443".parse().unwrap());
        cfg.control.public_addresses = vec!["192.0.2.10".parse().unwrap()];
        let made = self_signed(&cfg).unwrap().expect("made");
        assert!(made.cert.starts_with(dir.join("state/tls")));
        assert_eq!(made.sha256.len(), 32 * 3 - 1);
        assert_eq!(made.spki_sha256.len(), 44);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&made.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key is private");
        assert_eq!(
            self_signed(&cfg).unwrap(),
            Some(made),
            "kept for the next run"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
