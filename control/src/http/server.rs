//! The HTTP transport of control's listeners (public WHIP/WHEP/demo, admin API), on tokio and
//! hyper: HTTP/1.1 with keep-alive, HTTP/2 over TLS (ALPN), HTTPS with rustls on the public
//! listener ([`super::tls`]). Handlers stay synchronous ([`Handler`]); each request runs on
//! the runtime's bounded blocking pool, so an idle or slow connection costs a task and a
//! buffer, never a thread.
//!
//! Limits, each counted by reason when it refuses or closes a connection
//! ([`super::stats::Refused`]): open connections per listener and per source address
//! ([`super::limits`]), a deadline for each request head (`http.header_timeout_ms`; it also
//! ends an idle HTTP/1.1 keep-alive connection and bounds the TLS handshake), one for each
//! body (`http.body_timeout_ms`), an idle timeout (nothing received: an HTTP/2 connection
//! left open, a client that stopped reading its answer), and hard limits on
//! head ([`MAX_HEAD`]) and body ([`MAX_BODY`]) size. A handler that panics answers 500.
//! May not touch: application state (the [`Handler`] owns that).

use super::limits::{ConnTable, Slot, Source};
use super::stats::{ListenerStats, Refused};
use super::tls::CertStore;
use contract::config::{HttpConfig, ListenAddr};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// Largest request head (request line + headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Threads that run handlers at once (both listeners); further requests wait for one.
pub const HANDLER_THREADS: usize = 16;
/// Concurrent requests on one HTTP/2 connection.
pub const H2_STREAMS: u32 = 16;
/// Answer written (best effort, without waiting) to a plain-HTTP connection refused at accept;
/// the body is `{"error":"too many connections"}` (32 bytes).
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Content-Length: 32\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n\
{\"error\":\"too many connections\"}";

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

/// The limits one listener enforces (from `[http]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_address: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    pub fn from_config(h: &HttpConfig) -> Limits {
        Limits {
            max_connections: h.max_connections as usize,
            max_per_address: h.max_connections_per_address as usize,
            header_timeout: Duration::from_millis(u64::from(h.header_timeout_ms)),
            body_timeout: Duration::from_millis(u64::from(h.body_timeout_ms)),
            idle_timeout: Duration::from_secs(u64::from(h.idle_timeout_secs)),
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::from_config(&HttpConfig::default())
    }
}

/// The runtime both listeners share: two worker threads for I/O and timers, and at most
/// [`HANDLER_THREADS`] threads running handlers.
pub struct Runtime(tokio::runtime::Runtime);

impl Runtime {
    pub fn new() -> std::io::Result<Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(HANDLER_THREADS)
            .thread_name("http")
            .enable_io()
            .enable_time()
            .build()
            .map(Runtime)
    }

    /// Stop the runtime: connections still open are dropped after at most `grace`.
    pub fn shutdown(self, grace: Duration) {
        self.0.shutdown_timeout(grace);
    }
}

/// How one listener serves.
pub struct Options {
    pub limits: Limits,
    /// HTTPS with this certificate store; `None`: plain HTTP.
    pub tls: Option<Arc<CertStore>>,
    /// `Strict-Transport-Security: max-age` on HTTPS answers (0: none).
    pub hsts_max_age_secs: u64,
    pub stats: Arc<ListenerStats>,
}

/// What every connection of one listener shares.
struct Shared {
    handler: Arc<dyn Handler>,
    limits: Limits,
    table: Arc<ConnTable>,
    stats: Arc<ListenerStats>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    hsts: Option<HeaderValue>,
}

/// A running listener.
pub struct Server {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    rt: tokio::runtime::Handle,
    unix_path: Option<PathBuf>,
    table: Arc<ConnTable>,
}

impl Server {
    /// Serve `listener` on `rt`.
    pub fn start(
        rt: &Runtime,
        listener: Listener,
        handler: Arc<dyn Handler>,
        opts: Options,
    ) -> std::io::Result<Server> {
        let tls = match &opts.tls {
            Some(store) => Some(tokio_rustls::TlsAcceptor::from(
                store.server_config().map_err(std::io::Error::other)?,
            )),
            None => None,
        };
        let hsts = (tls.is_some() && opts.hsts_max_age_secs > 0)
            .then(|| HeaderValue::from_str(&format!("max-age={}", opts.hsts_max_age_secs)))
            .and_then(Result::ok);
        let table = ConnTable::new(opts.limits.max_connections, opts.limits.max_per_address);
        let shared = Arc::new(Shared {
            handler,
            limits: opts.limits,
            table: table.clone(),
            stats: opts.stats,
            tls,
            hsts,
        });
        let (stop, stop_rx) = watch::channel(false);
        let _entered = rt.0.enter();
        let (task, unix_path) = match listener {
            Listener::Tcp(l) => {
                l.set_nonblocking(true)?;
                let l = tokio::net::TcpListener::from_std(l)?;
                (tokio::spawn(accept_tcp(l, shared, stop_rx)), None)
            }
            Listener::Unix(l, p) => {
                if shared.tls.is_some() {
                    return Err(std::io::Error::other("TLS is served on TCP listeners only"));
                }
                l.set_nonblocking(true)?;
                let l = tokio::net::UnixListener::from_std(l)?;
                (tokio::spawn(accept_unix(l, shared, stop_rx)), Some(p))
            }
        };
        Ok(Server {
            stop,
            task: Some(task),
            rt: rt.0.handle().clone(),
            unix_path,
            table,
        })
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.table.open()
    }

    /// Stop accepting (connections already open are served until the runtime stops).
    pub fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = self.rt.block_on(t);
        }
        if let Some(p) = self.unix_path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.shutdown();
        }
    }
}

/// A connected stream of either kind.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Back off after an accept error (EMFILE, ENFILE, ENOBUFS): the socket stays in the
/// backlog; spinning would not help.
async fn accept_failed(e: &std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn accept_tcp(l: tokio::net::TcpListener, sh: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            r = l.accept() => r,
        };
        let (sock, addr) = match accepted {
            Ok(c) => c,
            Err(e) => {
                accept_failed(&e).await;
                continue;
            }
        };
        let peer = format!("tcp:{addr}");
        match sh.table.admit(Source::of(addr.ip())) {
            Ok(slot) => {
                let _ = sock.set_nodelay(true);
                tokio::spawn(serve_conn(sock, peer, slot, sh.clone()));
            }
            Err(why) => {
                sh.stats.refuse(why, &peer);
                if sh.tls.is_none() {
                    // Best effort: a full send buffer just drops the answer.
                    let _ = sock.try_write(BUSY);
                }
            }
        }
    }
}

async fn accept_unix(
    l: tokio::net::UnixListener,
    sh: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            r = l.accept() => r,
        };
        let sock = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                accept_failed(&e).await;
                continue;
            }
        };
        match sh.table.admit(Source::Local) {
            Ok(slot) => {
                tokio::spawn(serve_conn(sock, "unix".to_string(), slot, sh.clone()));
            }
            Err(why) => {
                sh.stats.refuse(why, "unix");
                let _ = sock.try_write(BUSY);
            }
        }
    }
}

/// Gives the `open` gauge back when the connection task ends, however it ends.
struct OpenGuard(Arc<ListenerStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.closed();
    }
}

async fn serve_conn<S: Io>(sock: S, peer: String, slot: Slot, sh: Arc<Shared>) {
    let _slot = slot;
    sh.stats.accepted();
    let _open = OpenGuard(sh.stats.clone());
    let peer: Arc<str> = peer.into();
    let Some(acceptor) = &sh.tls else {
        serve_http1(sock, peer, &sh).await;
        return;
    };
    let tls = match tokio::time::timeout(sh.limits.header_timeout, acceptor.accept(sock)).await {
        Err(_) => return sh.stats.refuse(Refused::TlsHandshakeTimeout, &peer),
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
            return sh.stats.refuse(Refused::TlsHandshakeFailed, &peer);
        }
        Ok(Ok(s)) => s,
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        serve_http2(tls, peer, &sh).await;
    } else {
        serve_http1(tls, peer, &sh).await;
    }
}

/// What a connection has done, seen from its socket.
struct Activity {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last read that returned data.
    last_read_ms: AtomicU64,
    /// Data arrived since the last response bytes left: a request is under way.
    reading_request: AtomicBool,
    /// Requests handed to the handler on this connection.
    requests: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            reading_request: AtomicBool::new(false),
            requests: AtomicU64::new(0),
        })
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// A stream that records its [`Activity`].
struct Tracked<S> {
    inner: S,
    act: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = self.act.epoch.elapsed().as_millis() as u64;
            self.act.last_read_ms.store(now, Ordering::Relaxed);
            self.act.reading_request.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.act.reading_request.store(false, Ordering::Relaxed);
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.act.reading_request.store(false, Ordering::Relaxed);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Drive a hyper connection future to its end. One that received nothing for
/// `idle_timeout` (an HTTP/2 connection left open, or a client that stopped reading an
/// answer) is shut down gracefully, and dropped if it has not finished `header_timeout`
/// later. `None`: dropped that way.
macro_rules! drive {
    ($conn:expr, $act:expr, $limits:expr) => {{
        let mut conn = std::pin::pin!($conn);
        let tick = $limits.idle_timeout.min(Duration::from_secs(1));
        let mut closing: Option<Instant> = None;
        loop {
            tokio::select! {
                r = conn.as_mut() => break Some(r),
                _ = tokio::time::sleep(tick) => match closing {
                    None if $act.idle_for() >= $limits.idle_timeout => {
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now());
                    }
                    Some(t) if t.elapsed() >= $limits.header_timeout => break None,
                    _ => {}
                },
            }
        }
    }};
}

async fn serve_http1<S: Io>(sock: S, peer: Arc<str>, sh: &Arc<Shared>) {
    let act = Activity::new();
    let io = TokioIo::new(Tracked {
        inner: sock,
        act: act.clone(),
    });
    let svc = service(peer.clone(), sh.clone(), act.clone());
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(sh.limits.header_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD);
    let Some(Err(e)) = drive!(b.serve_connection(io, svc), act, sh.limits) else {
        return;
    };
    if e.is_timeout() {
        // The head deadline also ends idle keep-alive connections: only a connection that
        // never completed a request, or was part-way through one, is counted.
        if act.requests.load(Ordering::Relaxed) == 0 || act.reading_request.load(Ordering::Relaxed)
        {
            sh.stats.refuse(Refused::HeaderTimeout, &peer);
        }
    } else if e.is_parse() || e.is_parse_too_large() {
        sh.stats.refuse(Refused::Malformed, &peer);
    } else {
        tracing::debug!(peer = %peer, error = %e, "HTTP/1 connection ended with an error");
    }
}

async fn serve_http2<S: Io>(sock: S, peer: Arc<str>, sh: &Arc<Shared>) {
    let act = Activity::new();
    let io = TokioIo::new(Tracked {
        inner: sock,
        act: act.clone(),
    });
    let svc = service(peer.clone(), sh.clone(), act.clone());
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(H2_STREAMS)
        .max_header_list_size(MAX_HEAD as u32)
        .max_send_buf_size(MAX_BODY * 4);
    if let Some(Err(e)) = drive!(b.serve_connection(io, svc), act, sh.limits) {
        tracing::debug!(peer = %peer, error = %e, "HTTP/2 connection ended with an error");
    }
}

type Reply = hyper::Response<Full<Bytes>>;

fn service(
    peer: Arc<str>,
    sh: Arc<Shared>,
    act: Arc<Activity>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = Reply,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Reply, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req| {
        let (peer, sh, act) = (peer.clone(), sh.clone(), act.clone());
        async move { Ok::<_, Infallible>(answer(req, peer, sh, act).await) }
    })
}

/// Read the body, run the handler on the blocking pool, and turn its answer into hyper's.
async fn answer(
    req: hyper::Request<Incoming>,
    peer: Arc<str>,
    sh: Arc<Shared>,
    act: Arc<Activity>,
) -> Reply {
    act.requests.fetch_add(1, Ordering::Relaxed);
    sh.stats.request();
    let (parts, body) = req.into_parts();
    let http1 = parts.version < hyper::Version::HTTP_2;
    let hsts = sh.hsts.as_ref();
    let fail = |status: u16, msg: &str, close: bool| {
        let mut r = reply(Response::error(status, msg.to_string()), hsts);
        if close && http1 {
            r.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    };
    // An announced length over the limit is refused before anything is read.
    if hyper::body::Body::size_hint(&body).lower() > MAX_BODY as u64 {
        return fail(
            413,
            &format!("body exceeds the {MAX_BODY}-byte limit"),
            true,
        );
    }
    let collected = tokio::time::timeout(
        sh.limits.body_timeout,
        Limited::new(body, MAX_BODY).collect(),
    )
    .await;
    let body = match collected {
        Err(_) => {
            sh.stats.refuse(Refused::BodyTimeout, &peer);
            return fail(408, "request body timeout", true);
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return fail(
                413,
                &format!("body exceeds the {MAX_BODY}-byte limit"),
                true,
            );
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "request body not read");
            return fail(400, "request body could not be read", true);
        }
        Ok(Ok(b)) => b.to_bytes(),
    };
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (n, v) in &parts.headers {
        let Ok(v) = std::str::from_utf8(v.as_bytes()) else {
            return fail(400, "header value is not UTF-8", false);
        };
        headers.push((n.as_str().to_string(), v.trim().to_string()));
    }
    let request = Request {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        body: body.to_vec(),
        peer: peer.to_string(),
    };
    let handler = sh.handler.clone();
    let path = request.path.clone();
    let ran = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(&request)))
    })
    .await;
    match ran {
        Ok(Ok(r)) => reply(r, hsts),
        _ => {
            // A handler bug answers 500 and keeps the server whole.
            tracing::error!(path = %path, "request handler panicked");
            fail(500, "internal error", false)
        }
    }
}

fn reply(r: Response, hsts: Option<&HeaderValue>) -> Reply {
    let mut out = hyper::Response::new(Full::new(if r.status == 204 {
        Bytes::new()
    } else {
        Bytes::from(r.body)
    }));
    *out.status_mut() =
        hyper::StatusCode::from_u16(r.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = out.headers_mut();
    if r.status != 204 {
        match HeaderValue::from_str(r.content_type) {
            Ok(v) => {
                h.insert(hyper::header::CONTENT_TYPE, v);
            }
            Err(_) => tracing::error!(
                content_type = r.content_type,
                "a handler set a content type HTTP cannot carry"
            ),
        }
    }
    for (n, v) in r.headers {
        match (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            (Ok(n), Ok(v)) => {
                h.append(n, v);
            }
            _ => tracing::error!(header = n, "a handler set a header HTTP cannot carry"),
        }
    }
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    if let Some(v) = hsts {
        h.insert(hyper::header::STRICT_TRANSPORT_SECURITY, v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    struct Echo;
    impl Handler for Echo {
        fn handle(&self, req: &Request) -> Response {
            Response::json(
                200,
                &serde_json::json!({"method": req.method, "path": req.path, "len": req.body.len(), "peer": req.peer}),
            )
        }
    }

    /// A handler that panics on `/boom`.
    struct Boom;
    impl Handler for Boom {
        fn handle(&self, req: &Request) -> Response {
            assert!(req.path != "/boom", "a handler bug");
            Response::json(200, &serde_json::json!({"ok": true}))
        }
    }

    fn serve(
        handler: Arc<dyn Handler>,
        limits: Limits,
    ) -> (Runtime, Server, SocketAddr, Arc<ListenerStats>) {
        let rt = Runtime::new().unwrap();
        let l = Listener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let Listener::Tcp(t) = &l else {
            unreachable!("bound tcp")
        };
        let addr = t.local_addr().unwrap();
        let stats = super::super::stats::HttpStats::default().public;
        let opts = Options {
            limits,
            tls: None,
            hsts_max_age_secs: 0,
            stats: stats.clone(),
        };
        let srv = Server::start(&rt, l, handler, opts).unwrap();
        (rt, srv, addr, stats)
    }

    /// One request on a fresh connection that asks to be closed; the whole answer.
    fn roundtrip(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn a_panicking_handler_answers_500_and_leaks_no_slot() {
        let limits = Limits {
            max_connections: 8,
            ..Limits::default()
        };
        let (_rt, mut srv, addr, _) = serve(Arc::new(Boom), limits);
        // More panics than there are slots: each must give its slot back.
        for _ in 0..20 {
            let r = roundtrip(addr, b"GET /boom HTTP/1.1\r\nConnection: close\r\n\r\n");
            assert!(r.starts_with("HTTP/1.1 500"), "{r}");
        }
        let r = roundtrip(addr, b"GET /fine HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        srv.shutdown();
    }

    #[test]
    fn limits_and_malformed_requests() {
        let (_rt, mut srv, addr, stats) = serve(Arc::new(Echo), Limits::default());
        let r = roundtrip(
            addr,
            b"POST /x?y=1 HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(
            r.contains("\"path\":\"/x\"") && r.contains("\"len\":3"),
            "{r}"
        );
        assert!(
            r.to_ascii_lowercase().contains("cache-control: no-store"),
            "{r}"
        );
        let r = roundtrip(addr, b"POST / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 413"), "{r}");
        assert!(r.contains("{\"error\""), "{r}");
        let r = roundtrip(addr, b"GARBAGE\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        // Chunked bodies are read (within the same limit).
        let r = roundtrip(
            addr,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        );
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("\"len\":3"),
            "{r}"
        );
        let r = roundtrip(addr, b"POST / HTTP/1.1\r\nContent-Length: -4\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        big.extend_from_slice(b"\r\n\r\n");
        let r = roundtrip(addr, &big);
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");
        // Counted once the connection task has seen hyper's error, just after the close.
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.refused_count(Refused::Malformed) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(stats.refused_count(Refused::Malformed) >= 3);
        srv.shutdown();
    }

    /// Two requests on one connection: HTTP/1.1 keep-alive.
    #[test]
    fn keep_alive_serves_several_requests_on_one_connection() {
        let (_rt, mut srv, addr, _) = serve(Arc::new(Echo), Limits::default());
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        let first = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            first.starts_with("HTTP/1.1 200") && first.contains("/one"),
            "{first}"
        );
        s.write_all(b"GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        let second = String::from_utf8_lossy(&rest);
        assert!(
            second.starts_with("HTTP/1.1 200") && second.contains("/two"),
            "{second}"
        );
        srv.shutdown();
    }

    /// A client trickling its head one byte at a time is cut off at the head deadline and
    /// counted; a normal client meanwhile is served.
    #[test]
    fn trickling_client_is_cut_off_at_the_head_deadline() {
        let limits = Limits {
            header_timeout: Duration::from_millis(800),
            ..Limits::default()
        };
        let (_rt, mut srv, addr, stats) = serve(Arc::new(Echo), limits);
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").unwrap();
        let started = Instant::now();
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
        let r = roundtrip(addr, b"GET /fast HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(
            writer.join().unwrap(),
            "the server closed the trickling connection"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.refused_count(Refused::HeaderTimeout) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(stats.refused_count(Refused::HeaderTimeout), 1);
        srv.shutdown();
    }

    /// An idle keep-alive connection is closed at the head deadline without being counted as
    /// refused.
    #[test]
    fn idle_keep_alive_is_closed_uncounted() {
        let limits = Limits {
            header_timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        let (_rt, mut srv, addr, stats) = serve(Arc::new(Echo), limits);
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
        assert_eq!(stats.refused_count(Refused::HeaderTimeout), 0);
        srv.shutdown();
    }

    /// A client that asks for a large answer and never reads it is dropped after the idle
    /// timeout (plus the grace for a graceful close), giving its slot back.
    #[test]
    fn a_client_that_stops_reading_is_dropped() {
        struct Big;
        impl Handler for Big {
            fn handle(&self, _req: &Request) -> Response {
                Response::text(200, "text/plain", "x".repeat(32 << 20))
            }
        }
        let limits = Limits {
            idle_timeout: Duration::from_secs(1),
            header_timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        let (_rt, mut srv, addr, _) = serve(Arc::new(Big), limits);
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(srv.open_connections(), 1);
        while srv.open_connections() > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the stalled connection is still open"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(started.elapsed() >= Duration::from_secs(1));
        drop(s);
        srv.shutdown();
    }

    /// Connections over the per-address cap are refused with 503 and counted; the listener's
    /// other sources are unaffected, and a closed connection gives its slot back.
    #[test]
    fn per_address_cap_refuses_and_counts() {
        let limits = Limits {
            max_per_address: 3,
            ..Limits::default()
        };
        let (_rt, mut srv, addr, stats) = serve(Arc::new(Echo), limits);
        let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while srv.open_connections() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let r = roundtrip(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        let body = r.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        assert_eq!(body, r#"{"error":"too many connections"}"#);
        assert!(
            r.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{r}"
        );
        assert_eq!(stats.refused_count(Refused::PerAddressLimit), 1);
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(5);
        while srv.open_connections() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let r = roundtrip(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        srv.shutdown();
    }
}
