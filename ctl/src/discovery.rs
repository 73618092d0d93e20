//! Finding a running control: the runtime directory, `control.json`, and the overrides.
//!
//! Owns: the order in which the admin URL and token are chosen (flags and environment first,
//! then `--runtime-dir`, then `--config`'s runtime directory, then the first running control
//! among `contract::config::runtime_dir_candidates`), and saying which instance was chosen when
//! several run. The record itself and the directories are `contract::config`'s. May not touch:
//! the network.

use std::path::{Path, PathBuf};

use contract::config::Config;
pub use contract::config::RuntimeInfo;

use crate::error::{CtlError, Result};

/// Which instance the operator asked for: `--runtime-dir` wins over `--config` (whose
/// `runtime_dir` is used); with neither, every directory of
/// `contract::config::runtime_dir_candidates` is a candidate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selector<'a> {
    pub config: Option<&'a Path>,
    pub runtime_dir: Option<&'a Path>,
}

impl Selector<'_> {
    /// The runtime directories to look in, in order.
    pub fn dirs(&self) -> Result<Vec<PathBuf>> {
        if let Some(d) = self.runtime_dir {
            return Ok(vec![d.to_path_buf()]);
        }
        if let Some(c) = self.config {
            let cfg = Config::load(c).map_err(|e| CtlError::usage(e.to_string()))?;
            return Ok(vec![cfg.runtime_dir]);
        }
        Ok(contract::config::runtime_dir_candidates())
    }

    /// Whether the operator named the instance.
    pub fn explicit(&self) -> bool {
        self.runtime_dir.is_some() || self.config.is_some()
    }
}

/// Where `control.json` is looked for, in order.
pub fn runtime_files(sel: &Selector) -> Result<Vec<PathBuf>> {
    Ok(sel
        .dirs()?
        .iter()
        .map(|d| RuntimeInfo::path_in(d))
        .collect())
}

/// Read and parse a runtime file. `Ok(None)` if it does not exist.
pub fn read_runtime_file(path: &Path) -> Result<Option<RuntimeInfo>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(CtlError::RuntimeFile {
                path: path.to_path_buf(),
                msg: format!(
                    "{e} (the instance runs as another user: run sluicectl as root or as that \
                     user, or pass --admin URL and --token TOKEN)"
                ),
            })
        }
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

/// A control instance found through its runtime file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Its runtime directory.
    pub dir: PathBuf,
    pub info: RuntimeInfo,
    /// Whether the pid in the runtime file is a running process (a killed control leaves a
    /// stale file behind).
    pub live: bool,
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// The instance to talk to: the first candidate whose control is running; else the first
/// runtime file there is (stale: its control will not answer, which the caller reports as
/// unreachable). A file that cannot be read or parsed is an error when it comes before any
/// usable one. When several controls run and none was selected, says on stderr which one is
/// used and how to pick another.
pub fn find(sel: &Selector) -> Result<Instance> {
    find_in(&sel.dirs()?, sel.explicit())
}

fn find_in(dirs: &[PathBuf], explicit: bool) -> Result<Instance> {
    let mut found: Vec<Result<Instance>> = Vec::new();
    for dir in dirs {
        match read_runtime_file(&RuntimeInfo::path_in(dir)) {
            Ok(None) => {}
            Ok(Some(info)) => found.push(Ok(Instance {
                dir: dir.clone(),
                live: alive(info.pid),
                info,
            })),
            Err(e) => found.push(Err(e)),
        }
    }
    let live: Vec<&Instance> = found
        .iter()
        .filter_map(|f| f.as_ref().ok())
        .filter(|i| i.live)
        .collect();
    if let Some(first) = live.first() {
        if live.len() > 1 && !explicit {
            let others: Vec<String> = live[1..]
                .iter()
                .map(|i| format!("{} (pid {})", i.dir.display(), i.info.pid))
                .collect();
            eprintln!(
                "sluicectl: {} instances are running; talking to {} (pid {}); also running: {}; \
                 choose with --runtime-dir DIR or --config FILE",
                live.len(),
                first.dir.display(),
                first.info.pid,
                others.join(", ")
            );
        }
        return Ok((*first).clone());
    }
    match found.into_iter().next() {
        Some(r) => r,
        None => Err(CtlError::NotRunning {
            paths: dirs.iter().map(|d| RuntimeInfo::path_in(d)).collect(),
        }),
    }
}

/// Where to send admin requests and with which token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub admin_url: String,
    pub token: Option<String>,
    /// The instance's runtime directory and control pid, when found through its runtime file.
    pub instance: Option<(PathBuf, u32)>,
}

/// Choose the endpoint: `--admin`/`SLUICE_ADMIN` and `--token`/`SLUICE_TOKEN` win; whatever
/// they leave open comes from the selected instance's runtime file ([`find`]). Without an
/// admin URL from anywhere, control is not running.
pub fn resolve(admin: Option<&str>, token: Option<&str>, sel: &Selector) -> Result<Endpoint> {
    if let (Some(a), Some(t)) = (admin, token) {
        return Ok(Endpoint {
            admin_url: a.to_string(),
            token: Some(t.to_string()),
            instance: None,
        });
    }
    let inst = match find(sel) {
        Ok(i) => Some(i),
        // An explicit URL without a token still works against a server that allows it.
        Err(_) if admin.is_some() => None,
        Err(e) => return Err(e),
    };
    match (admin, inst) {
        (Some(a), inst) => Ok(Endpoint {
            admin_url: a.to_string(),
            token: token
                .map(str::to_string)
                .or_else(|| inst.map(|i| i.info.admin_token)),
            instance: None,
        }),
        (None, Some(i)) => Ok(Endpoint {
            admin_url: i.info.admin_url,
            token: Some(token.map(str::to_string).unwrap_or(i.info.admin_token)),
            instance: Some((i.dir, i.info.pid)),
        }),
        (None, None) => Err(CtlError::NotRunning {
            paths: runtime_files(sel)?,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance_dir(tag: &str, pid: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluicectl-find-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            RuntimeInfo::path_in(&dir),
            format!(
                r#"{{"admin_url":"http://{tag}","admin_token":"t","media_addr":"127.0.0.1:2","public_url":"http://127.0.0.1:3","metrics_url":"http://127.0.0.1:3/metrics","pid":{pid},"shm_path":"/dev/shm/x"}}"#
            ),
        )
        .unwrap();
        dir
    }

    /// The pid of a process that has exited and been reaped.
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn running_instance_wins_over_stale_file_and_first_running_wins() {
        let me = std::process::id();
        let stale = instance_dir("stale", dead_pid());
        let a = instance_dir("a", me);
        let b = instance_dir("b", me);
        let empty = std::env::temp_dir().join(format!("sluicectl-find-none-{me}"));
        // A stale file before a running one: the running one.
        let i = find_in(&[empty.clone(), stale.clone(), a.clone(), b.clone()], false).unwrap();
        assert_eq!((i.dir.as_path(), i.live), (a.as_path(), true));
        // Two running: the first in order.
        let i = find_in(&[b.clone(), a.clone()], false).unwrap();
        assert_eq!(i.info.admin_url, "http://b");
        // Only a stale file: it is used (and its control will not answer).
        let i = find_in(std::slice::from_ref(&stale), false).unwrap();
        assert!(!i.live);
        // Nothing: not running, naming every place looked at.
        match find_in(std::slice::from_ref(&empty), false) {
            Err(CtlError::NotRunning { paths }) => {
                assert_eq!(paths, vec![RuntimeInfo::path_in(&empty)])
            }
            other => panic!("{other:?}"),
        }
        for d in [stale, a, b] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

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
