//! Finding a running control: the runtime directory, `control.json`, and the overrides.
//!
//! Owns: the order in which the admin URL and token are chosen (flags and environment first,
//! then the first `control.json` among `contract::config::runtime_dir_candidates`). The record
//! itself and the directories are `contract::config`'s. May not touch: the network.

use std::path::{Path, PathBuf};

pub use contract::config::RuntimeInfo;

use crate::error::{CtlError, Result};

/// Where `control.json` is looked for, in order (`$SLUICE_RUNTIME_DIR`, then the default
/// runtime directory); see `contract::config::runtime_dir_candidates`.
pub fn runtime_files() -> Vec<PathBuf> {
    contract::config::runtime_dir_candidates()
        .iter()
        .map(|d| RuntimeInfo::path_in(d))
        .collect()
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
/// they leave open comes from the first runtime file found. Without an admin URL from
/// anywhere, control is not running.
pub fn resolve(admin: Option<&str>, token: Option<&str>) -> Result<Endpoint> {
    if let (Some(a), Some(t)) = (admin, token) {
        return Ok(Endpoint {
            admin_url: a.to_string(),
            token: Some(t.to_string()),
        });
    }
    let candidates = runtime_files();
    let found = candidates.iter().find(|p| p.is_file());
    let info = match found
        .map(|p| read_runtime_file(p))
        .transpose()
        .map(Option::flatten)
    {
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
        (None, None) => Err(CtlError::NotRunning { paths: candidates }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_runtime_file() {
        let dir = std::env::temp_dir().join(format!("sluicectl-disc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = RuntimeInfo::path_in(&dir);
        assert_eq!(read_runtime_file(&p).unwrap(), None);
        std::fs::write(
            &p,
            r#"{"admin_url":"http://127.0.0.1:1","admin_token":"t","media_addr":"127.0.0.1:2","public_url":"http://127.0.0.1:3","metrics_url":"http://127.0.0.1:3/metrics","pid":7,"shm_path":"/dev/shm/x"}"#,
        )
        .unwrap();
        let i = read_runtime_file(&p).unwrap().unwrap();
        assert_eq!(i.admin_url, "http://127.0.0.1:1");
        assert_eq!(i.media_addr, "127.0.0.1:2");
        assert_eq!(i.pid, 7);
        std::fs::write(&p, "{not json").unwrap();
        assert!(matches!(
            read_runtime_file(&p),
            Err(CtlError::RuntimeFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
