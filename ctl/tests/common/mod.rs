//! Test helpers: run the binary, and a tiny fake admin API on loopback.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub const BIN: &str = env!("CARGO_BIN_EXE_sluicectl");

/// One request as the fake server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub auth: Option<String>,
    pub body: String,
}

/// A fake control: answers each request with `handler(&seen) -> (status, body)`.
pub struct FakeControl {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    _thread: JoinHandle<()>,
}

type Handler = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

impl FakeControl {
    pub fn start(handler: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static) -> FakeControl {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        let handler: Box<Handler> = Box::new(handler);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                serve_one(stream, &*handler, &seen2);
            }
        });
        FakeControl {
            url,
            seen,
            _thread: thread,
        }
    }

    /// The same fake, listening on a unix socket (`unix:PATH` admin URL).
    pub fn start_unix(
        path: &std::path::Path,
        handler: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static,
    ) -> FakeControl {
        let listener = UnixListener::bind(path).expect("bind unix socket");
        let url = format!("unix:{}", path.display());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        let handler: Box<Handler> = Box::new(handler);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                serve_one(stream, &*handler, &seen2);
            }
        });
        FakeControl {
            url,
            seen,
            _thread: thread,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Read one request, answer it, close.
fn serve_one(mut stream: impl Read + Write, handler: &Handler, seen: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(&mut stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let (mut len, mut auth) = (0usize, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
            if k.eq_ignore_ascii_case("authorization") {
                auth = Some(v.trim().to_string());
            }
        }
    }
    let mut body = vec![0u8; len];
    let _ = reader.read_exact(&mut body);
    drop(reader);
    let s = Seen {
        method,
        path,
        auth,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let (status, resp) = handler(&s);
    seen.lock().unwrap().push(s);
    let msg = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{resp}",
        resp.len()
    );
    let _ = stream.write_all(msg.as_bytes());
}

/// A fresh empty directory under the system temp dir, removed when dropped (it may hold a
/// copy of the sluicectl binary: tens of MB per test).
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn temp_dir(tag: &str) -> TempDir {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "sluicectl-test-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// Run sluicectl with a clean environment (no discovery from the real runtime dir).
pub fn run(args: &[&str], runtime_dir: &std::path::Path) -> Output {
    run_stdin(args, runtime_dir, None)
}

pub fn run_stdin(args: &[&str], runtime_dir: &std::path::Path, stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("SLUICE_ADMIN")
        .env_remove("SLUICE_TOKEN")
        .env("SLUICE_RUNTIME_DIR", runtime_dir)
        // Keep a real instance's default runtime directory out of reach.
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn sluicectl");
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A valid base64 key for a profile with `n` bytes of key material.
pub fn b64(n: usize, fill: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(vec![fill; n])
}

/// The arguments of `sluicectl session add`.
pub fn session_add(peer: &str, profile: &str, rx: &str, tx: &str) -> Vec<String> {
    [
        "session",
        "add",
        "--peer",
        peer,
        "--profile",
        profile,
        "--rx-key",
        rx,
        "--tx-key",
        tx,
    ]
    .map(str::to_string)
    .to_vec()
}
