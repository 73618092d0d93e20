//! A small blocking HTTP/1.1 server for the admin API (loopback TCP or a unix socket).
//!
//! Why not hyper + tokio: the admin API serves a handful of requests per second from one
//! operator or script on loopback; an async stack would add tens of crates to a build that
//! runs on 2-core machines, for no benefit here. This server is std-only: one thread per
//! connection (at most [`MAX_CONNECTIONS`]), one request per connection (`Connection: close`),
//! `Content-Length` bodies only, an overall deadline for reading the request (head and body,
//! counted from accept, so a client trickling bytes cannot hold one of the few connection
//! slots for long), a write timeout, and hard limits on head and body size.
//! Every malformed request gets a JSON error response; nothing here panics on input.
//! May not touch: application state (the [`Handler`] owns that).

use contract::config::ListenAddr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request head (request line + headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Concurrent connections; more are answered 503 at once.
pub const MAX_CONNECTIONS: usize = 64;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole request (head and body) must arrive this long after accept; 408 otherwise.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub query: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// `tcp:IP:PORT` or `unix`.
    pub peer: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: v.to_string().into_bytes(),
        }
    }
    /// `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error": message.into() }))
    }
    pub fn empty(status: u16) -> Response {
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
    pub fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }
}

/// What serves requests.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &Request) -> Response;
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Bind `addr`. A stale unix socket file is replaced; the socket is made 0600.
    pub fn bind(addr: &ListenAddr) -> std::io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a)?)),
            ListenAddr::Unix(p) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                if let Ok(md) = std::fs::symlink_metadata(p) {
                    if md.file_type().is_socket() {
                        std::fs::remove_file(p)?;
                    }
                }
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let l = UnixListener::bind(p)?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
                Ok(Listener::Unix(l, p.clone()))
            }
        }
    }

    /// `http://IP:PORT` (the bound port) or `unix:/path`.
    pub fn url(&self) -> std::io::Result<String> {
        match self {
            Listener::Tcp(l) => Ok(format!("http://{}", l.local_addr()?)),
            Listener::Unix(_, p) => Ok(format!("unix:{}", p.display())),
        }
    }
}

/// A running server.
pub struct Server {
    stop: Arc<AtomicBool>,
    wake: Wake,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Wake {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl Server {
    /// Serve `listener` on a background thread.
    pub fn spawn(listener: Listener, handler: Arc<dyn Handler>) -> std::io::Result<Server> {
        Server::spawn_with_deadline(listener, handler, REQUEST_DEADLINE)
    }

    /// [`Server::spawn`] with another request deadline (tests use a short one).
    pub fn spawn_with_deadline(
        listener: Listener,
        handler: Arc<dyn Handler>,
        deadline: Duration,
    ) -> std::io::Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let wake = match &listener {
            Listener::Tcp(l) => {
                let mut a = l.local_addr()?;
                if a.ip().is_unspecified() {
                    a.set_ip(if a.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                Wake::Tcp(a)
            }
            Listener::Unix(_, p) => Wake::Unix(p.clone()),
        };
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || accept_loop(listener, handler, st, active, deadline))?;
        Ok(Server {
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// Stop accepting and wait for the accept thread (in-flight requests finish on their own).
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a throwaway connection.
        match &self.wake {
            Wake::Tcp(a) => drop(TcpStream::connect_timeout(a, Duration::from_secs(1))),
            Wake::Unix(p) => drop(UnixStream::connect(p)),
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Wake::Unix(p) = &self.wake {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

fn accept_loop(
    listener: Listener,
    handler: Arc<dyn Handler>,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    deadline: Duration,
) {
    loop {
        let conn: std::io::Result<(Box<dyn Stream>, String)> = match &listener {
            Listener::Tcp(l) => l.accept().map(|(s, a)| {
                let _ = s.set_nodelay(true);
                (Box::new(s) as Box<dyn Stream>, format!("tcp:{a}"))
            }),
            Listener::Unix(l, _) => l
                .accept()
                .map(|(s, _)| (Box::new(s) as Box<dyn Stream>, "unix".to_string())),
        };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let accepted = Instant::now();
        let (mut stream, peer) = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let _ = stream.set_timeouts(IO_TIMEOUT);
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = write_response(
                &mut *stream,
                &Response::error(503, "too many concurrent connections"),
                false,
            );
            continue;
        }
        let h = handler.clone();
        // The slot is given back when the guard drops: after the connection, on a panic that
        // unwinds through it, or with the closure when the thread cannot be spawned.
        let slot = Slot(active.clone());
        let spawned = std::thread::Builder::new()
            .name("http-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve_one(stream, peer, &*h, accepted + deadline);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not spawn a connection thread");
        }
    }
}

/// One taken connection slot; dropping it gives the slot back.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connected stream of either kind.
trait Stream: Read + Write + Send {
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()>;
    fn set_read_timeout_to(&self, t: Duration) -> std::io::Result<()>;
}
impl Stream for TcpStream {
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
    fn set_read_timeout_to(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))
    }
}
impl Stream for UnixStream {
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
    fn set_read_timeout_to(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))
    }
}

/// One read that ends by `deadline`: the socket's read timeout is set to the time left, and
/// a read past the deadline is `TimedOut` without touching the socket.
fn read_by(stream: &mut dyn Stream, buf: &mut [u8], deadline: Instant) -> std::io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    // A zero timeout means "block for ever" to the kernel; `left` is not zero here.
    stream.set_read_timeout_to(left)?;
    stream.read(buf)
}

fn serve_one(mut stream: Box<dyn Stream>, peer: String, handler: &dyn Handler, deadline: Instant) {
    let (resp, head_only) = match read_request(&mut *stream, peer, deadline) {
        Ok(req) => {
            let head = req.method == "HEAD";
            // A handler bug answers 500 and keeps the server whole.
            let resp =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(&req)))
                    .unwrap_or_else(|_| {
                        tracing::error!(path = %req.path, "request handler panicked");
                        Response::error(500, "internal error")
                    });
            (resp, head)
        }
        Err(ReadError::Closed) => return,
        Err(ReadError::Respond(r)) => (r, false),
    };
    if let Err(e) = write_response(&mut *stream, &resp, head_only) {
        tracing::debug!(error = %e, "writing the response failed");
    }
}

enum ReadError {
    /// The peer went away before sending a request.
    Closed,
    Respond(Response),
}

fn read_request(
    stream: &mut dyn Stream,
    peer: String,
    deadline: Instant,
) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = read_head(stream, &mut buf, &mut chunk, deadline)?;
    if head_end > MAX_HEAD {
        return Err(ReadError::Respond(Response::error(
            431,
            format!("request head exceeds {MAX_HEAD} bytes"),
        )));
    }
    let bad = |m: &str| ReadError::Respond(Response::error(400, m.to_string()));
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && !t.is_empty() => (m, t, v),
        _ => return Err(bad("malformed request line")),
    };
    if !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad("malformed method"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(ReadError::Respond(Response::error(
            505,
            "only HTTP/1.0 and HTTP/1.1 are supported",
        )));
    }
    let mut headers = Vec::new();
    for l in lines {
        if l.is_empty() {
            continue;
        }
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| bad("malformed header line"))?;
        if n.is_empty() || n.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(bad("malformed header name"));
        }
        headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
    }
    if headers.iter().any(|(n, _)| n == "transfer-encoding") {
        return Err(ReadError::Respond(Response::error(
            411,
            "chunked bodies are not supported; send Content-Length",
        )));
    }
    let len = content_length(&headers)?;
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match read_by(stream, &mut chunk, deadline) {
            Ok(0) => return Err(bad("connection closed before the whole body arrived")),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(ReadError::Respond(Response::error(408, "request timeout"))),
        }
    }
    body.truncate(len);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body,
        peer,
    })
}

/// Read until the blank line that ends the request head; returns its offset in `buf`.
fn read_head(
    stream: &mut dyn Stream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    deadline: Instant,
) -> Result<usize, ReadError> {
    loop {
        if let Some(p) = find_head_end(buf) {
            return Ok(p);
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Respond(Response::error(
                431,
                format!("request head exceeds {MAX_HEAD} bytes"),
            )));
        }
        match read_by(stream, chunk, deadline) {
            Ok(0) if buf.is_empty() => return Err(ReadError::Closed),
            Ok(0) => {
                return Err(ReadError::Respond(Response::error(
                    400,
                    "connection closed mid-request",
                )))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Respond(Response::error(408, "request timeout")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(ReadError::Closed),
        }
    }
}

/// The body length a request announces (0 without `Content-Length`), within [`MAX_BODY`].
fn content_length(headers: &[(String, String)]) -> Result<usize, ReadError> {
    let bad = |m: &str| ReadError::Respond(Response::error(400, m.to_string()));
    let mut lens = headers.iter().filter(|(n, _)| n == "content-length");
    let len = match (lens.next(), lens.next()) {
        (None, _) => 0,
        (Some((_, v)), None) => {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("malformed Content-Length"));
            }
            v.parse::<u64>().unwrap_or(u64::MAX)
        }
        (Some(_), Some(_)) => return Err(bad("more than one Content-Length")),
    };
    if len > MAX_BODY as u64 {
        return Err(ReadError::Respond(Response::error(
            413,
            format!("body of {len} bytes exceeds the {MAX_BODY}-byte limit"),
        )));
    }
    Ok(len as usize)
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn write_response(stream: &mut dyn Stream, r: &Response, head_only: bool) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    if r.status != 204 {
        out.push_str(&format!(
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            r.content_type,
            r.body.len()
        ));
    }
    for (n, v) in &r.headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("Cache-Control: no-store\r\nConnection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    if !head_only && r.status != 204 {
        bytes.extend_from_slice(&r.body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Handler for Echo {
        fn handle(&self, req: &Request) -> Response {
            Response::json(
                200,
                &serde_json::json!({"method": req.method, "path": req.path, "len": req.body.len()}),
            )
        }
    }

    fn roundtrip(addr: std::net::SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(raw).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// A handler that panics on `/boom`.
    struct Boom;
    impl Handler for Boom {
        fn handle(&self, req: &Request) -> Response {
            assert!(req.path != "/boom", "a handler bug");
            Response::json(200, &serde_json::json!({"ok": true}))
        }
    }

    #[test]
    fn a_panicking_handler_answers_500_and_leaks_no_slot() {
        let l = Listener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let Listener::Tcp(t) = &l else {
            unreachable!("bound tcp")
        };
        let addr = t.local_addr().unwrap();
        let mut srv = Server::spawn(l, Arc::new(Boom)).unwrap();
        // More panics than there are slots: each must give its slot back.
        for _ in 0..MAX_CONNECTIONS + 10 {
            let r = roundtrip(addr, b"GET /boom HTTP/1.1\r\n\r\n");
            assert!(r.starts_with("HTTP/1.1 500"), "{r}");
        }
        let r = roundtrip(addr, b"GET /fine HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        srv.shutdown();
    }

    #[test]
    fn limits_and_malformed_requests() {
        let l = Listener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let Listener::Tcp(t) = &l else {
            unreachable!("bound tcp")
        };
        let addr = t.local_addr().unwrap();
        let mut srv = Server::spawn(l, Arc::new(Echo)).unwrap();
        let r = roundtrip(
            addr,
            b"POST /x?y=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(
            r.contains("\"path\":\"/x\"") && r.contains("\"len\":3"),
            "{r}"
        );
        let r = roundtrip(addr, b"POST / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 413"), "{r}");
        assert!(r.contains("{\"error\""), "{r}");
        let r = roundtrip(addr, b"GARBAGE\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let r = roundtrip(addr, b"GET / HTTP/2.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 505"), "{r}");
        let r = roundtrip(
            addr,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 411"), "{r}");
        let r = roundtrip(addr, b"POST / HTTP/1.1\r\nContent-Length: -4\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        big.extend_from_slice(b"\r\n\r\n");
        let r = roundtrip(addr, &big);
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");
        srv.shutdown();
    }

    /// A client trickling its head one byte at a time (each read well inside the per-read
    /// timeout) is cut off with 408 at the overall deadline; a normal client meanwhile is
    /// served.
    #[test]
    fn trickling_client_is_cut_off_at_the_deadline() {
        let l = Listener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let Listener::Tcp(t) = &l else {
            unreachable!("bound tcp")
        };
        let addr = t.local_addr().unwrap();
        let mut srv =
            Server::spawn_with_deadline(l, Arc::new(Echo), Duration::from_millis(800)).unwrap();
        let mut slow = TcpStream::connect(addr).unwrap();
        let mut reader = slow.try_clone().unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").unwrap();
        let writer = std::thread::spawn(move || {
            // Never ends the head; gives up when the server closed the connection (or
            // after 60 s, far past the deadline, so the test cannot hang).
            for _ in 0..600 {
                if slow.write_all(b"a").is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        });
        let r = roundtrip(addr, b"GET /fast HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(
            writer.join().unwrap(),
            "the server closed the trickling connection"
        );
        srv.shutdown();
    }
}
