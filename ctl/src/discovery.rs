//! Finding a running control: the runtime directory, `control.json`, and the overrides.
//!
//! Owns: the order in which the admin URL and token are chosen (flags and environment first,
//! then `<runtime_dir>/control.json`). May not touch: the network.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{CtlError, Result};

/// Name of the file control writes into the runtime directory.
pub const RUNTIME_FILE: &str = "control.json";

/// What control publishes about itself in `<runtime_dir>/control.json`.
/// Only the admin URL and token are required; the rest is shown by `up`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct RuntimeInfo {
    pub admin_url: String,
    pub admin_token: String,
    #[serde(default)]
    pub media_addr: Option<String>,
    #[serde(default)]
    pub public_url: Option<String>,
    #[serde(default)]
    pub metrics_url: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub shm_path: Option<String>,
}

/// The runtime directory: `$SLUICE_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/sluice`,
/// else `/tmp/sluice-<uid>`. Mirrors the relay config's default so both sides agree.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = non_empty_env("SLUICE_RUNTIME_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = non_empty_env("XDG_RUNTIME_DIR") {
        return Path::new(&d).join("sluice");
    }
    PathBuf::from(format!(
        "/tmp/sluice-{}",
        rustix::process::getuid().as_raw()
    ))
}

/// The path of control's runtime file.
pub fn runtime_file() -> PathBuf {
    runtime_dir().join(RUNTIME_FILE)
}

/// Read and parse a runtime file. `Ok(None)` if it does not exist.
pub fn read_runtime_file(path: &Path) -> Result<Option<RuntimeInfo>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CtlError::RuntimeFile {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| CtlError::RuntimeFile {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
}

/// Where to send admin requests and with which token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub admin_url: String,
    pub token: Option<String>,
}

/// Choose the endpoint: `--admin`/`SLUICE_ADMIN` and `--token`/`SLUICE_TOKEN` win; whatever
/// they leave open comes from the runtime file. Without an admin URL from anywhere, control
/// is not running.
pub fn resolve(admin: Option<&str>, token: Option<&str>) -> Result<Endpoint> {
    let path = runtime_file();
    if let (Some(a), Some(t)) = (admin, token) {
        return Ok(Endpoint {
            admin_url: a.to_string(),
            token: Some(t.to_string()),
        });
    }
    let info = match read_runtime_file(&path) {
        Ok(i) => i,
        // An explicit URL without a token still works against a server that allows it.
        Err(_) if admin.is_some() => None,
        Err(e) => return Err(e),
    };
    match (admin, info) {
        (Some(a), info) => Ok(Endpoint {
            admin_url: a.to_string(),
            token: token
                .map(str::to_string)
                .or_else(|| info.map(|i| i.admin_token)),
        }),
        (None, Some(info)) => Ok(Endpoint {
            admin_url: info.admin_url,
            token: Some(token.map(str::to_string).unwrap_or(info.admin_token)),
        }),
        (None, None) => Err(CtlError::NotRunning { path }),
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_runtime_file() {
        let dir = std::env::temp_dir().join(format!("sluicectl-disc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(RUNTIME_FILE);
        assert_eq!(read_runtime_file(&p).unwrap(), None);
        std::fs::write(
            &p,
            r#"{"admin_url":"http://127.0.0.1:1","admin_token":"t","media_addr":"127.0.0.1:2","pid":7,"extra":1}"#,
        )
        .unwrap();
        let i = read_runtime_file(&p).unwrap().unwrap();
        assert_eq!(i.admin_url, "http://127.0.0.1:1");
        assert_eq!(i.media_addr.as_deref(), Some("127.0.0.1:2"));
        assert_eq!(i.pid, Some(7));
        std::fs::write(&p, "{not json").unwrap();
        assert!(matches!(
            read_runtime_file(&p),
            Err(CtlError::RuntimeFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
