//! Zero-loss relay upgrade: the running relay hands its media sockets to a new relay process
//! over a unix socket (`SCM_RIGHTS`, unix(7)), so datagrams already queued in the kernel's
//! socket buffers are read by the new process and none is lost.
//!
//! Owns: the hand-over socket (`<runtime_dir>/relay-handover.sock`, mode 0600), its message
//! format, and the `sendmsg`/`recvmsg` calls that move file descriptors (the only `unsafe`
//! here, each block with a `// SAFETY:` comment). May not touch: workers (the caller stops and
//! starts them), shared memory, packet contents.
//!
//! Transport: one `SOCK_SEQPACKET` connection per hand-over (message boundaries kept). Every
//! message is UTF-8 text, one `key=value` per line:
//!
//! 1. new → old: `op=takeover` (with `shm=PATH`), or `op=info` (a query: old answers and closes).
//! 2. old → new: `pid=`, `exe=`, `media=`, `backend=`, `workers=N`, `shm=`, `arg=` (repeated, the
//!    old process's arguments); on a takeover the message also carries N file descriptors, the
//!    workers' UDP sockets in worker order.
//! 3. new → old: `op=ready` once its workers run on those sockets (both processes now read the
//!    same sockets; each datagram is read by exactly one of them).
//! 4. old: stops its workers after their current turn (they hand what they already received to
//!    the engine and flush their transmit queues). With ICE-TCP it then sends its TCP
//!    listener and connections: one or more `op=tcp` messages, each with `listener=1` (the
//!    first message only, when there is a listener; its fd comes first) and one
//!    `conn=PEER GREETED ANSWERED RX TX` line per connection (the peer's address, two 0/1 flags,
//!    the unframed received bytes and the unwritten tail of a partly written frame, each in
//!    hex or `-`), the descriptors in line order. The TCP streams are read by one process at
//!    a time: the old one until here, the new one from its adoption on. Then `op=done`, and
//!    it exits.
//!
//! A failure before step 3 (the new process dies, a time-out) leaves the old relay serving: it
//! closes the connection and keeps going.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use super::tcp::{HandedConn, TcpHandover};

pub use contract::handover::*;

fn ioe(context: &'static str) -> impl FnOnce(io::Error) -> HandoverError {
    move |source| HandoverError::Io { context, source }
}

/// This process's executable, without the ` (deleted)` the kernel appends once the file was
/// replaced on disk (which is exactly the upgrade case).
pub fn current_exe() -> PathBuf {
    let p = std::env::current_exe().unwrap_or_default();
    let s = p.to_string_lossy();
    match s.strip_suffix(" (deleted)") {
        Some(t) => PathBuf::from(t),
        None => p,
    }
}

fn seqpacket() -> io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
}

fn connect(path: &Path) -> Result<Socket, HandoverError> {
    let s = seqpacket().map_err(ioe("socket(AF_UNIX, SOCK_SEQPACKET)"))?;
    let addr = SockAddr::unix(path).map_err(|e| HandoverError::Socket {
        path: path.to_path_buf(),
        source: e,
    })?;
    match s.connect(&addr) {
        Ok(()) => Ok(s),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(HandoverError::NotListening(path.to_path_buf()))
        }
        Err(e) => Err(HandoverError::Socket {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn send_text(s: &Socket, text: &str) -> Result<(), HandoverError> {
    s.send(text.as_bytes()).map_err(ioe("send"))?;
    Ok(())
}

/// Receive one message: its text and any descriptors it carried (close-on-exec set).
/// `Ok(None)` on end of stream.
fn recv_message(s: &Socket) -> Result<Option<(String, Vec<OwnedFd>)>, HandoverError> {
    recv_message_of(s, MAX_MESSAGE)
}

/// [`recv_message`] for messages of up to `max` bytes.
fn recv_message_of(
    s: &Socket,
    max: usize,
) -> Result<Option<(String, Vec<OwnedFd>)>, HandoverError> {
    let mut buf = vec![0u8; max];
    let mut cmsg = vec![0u64; cmsg_space_words(MAX_FDS)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid value (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.len() * 8;
    let n = loop {
        // SAFETY: `msg` points at `iov` (→ `buf`) and `cmsg`, all alive and writable for the
        // lengths given; the kernel writes at most those lengths.
        let r = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(HandoverError::Io {
                context: "recvmsg",
                source: e,
            });
        }
    };
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled by a successful recvmsg; CMSG_FIRSTHDR/NXTHDR walk only the
    // `msg_controllen` bytes the kernel reported inside `cmsg`.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` is non-null and points at a complete cmsghdr inside `cmsg` (above).
        let hdr = unsafe { &*c };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure size computation.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (hdr.cmsg_len as usize).saturating_sub(header) / size_of::<RawFd>();
            // SAFETY: an SCM_RIGHTS payload is `count` ints right after the header.
            let data = unsafe { libc::CMSG_DATA(c) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: `i < count` stays inside this cmsg's payload; the read is unaligned
                // because CMSG_DATA only guarantees the platform's cmsg alignment.
                let fd = unsafe { data.add(i).read_unaligned() };
                // SAFETY: the kernel installed `fd` in our table for this message; nothing else
                // owns it, so the OwnedFd becomes its only owner (and closes it on drop).
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR; returns null after the last header.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(HandoverError::Protocol(
            "descriptors truncated (too many sockets in one message)".into(),
        ));
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(HandoverError::Protocol(format!(
            "a message longer than {max} bytes"
        )));
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    let text = String::from_utf8(buf[..n].to_vec())
        .map_err(|_| HandoverError::Protocol("message is not UTF-8".into()))?;
    Ok(Some((text, fds)))
}

/// Control-buffer size for `n` descriptors, in u64 words (u64 keeps cmsghdr alignment).
fn cmsg_space_words(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    let bytes = unsafe { libc::CMSG_SPACE((n * size_of::<RawFd>()) as u32) } as usize;
    bytes.div_ceil(8)
}

/// Send `text` with `fds` attached (`SCM_RIGHTS`).
fn send_with_fds(s: &Socket, text: &str, fds: &[RawFd]) -> Result<(), HandoverError> {
    if fds.len() > MAX_FDS {
        return Err(HandoverError::Protocol(format!(
            "{} sockets exceed the {MAX_FDS} one message can carry",
            fds.len()
        )));
    }
    let mut cmsg = vec![0u64; cmsg_space_words(fds.len().max(1))];
    let mut iov = libc::iovec {
        iov_base: text.as_ptr().cast_mut().cast(),
        iov_len: text.len(),
    };
    // SAFETY: an all-zero msghdr is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cmsg.as_mut_ptr().cast();
        // SAFETY: pure size computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of_val(fds) as u32) } as usize;
        // SAFETY: msg_control points at `cmsg`, at least CMSG_SPACE bytes, zeroed, so the first
        // header exists and is writable.
        let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        // SAFETY: `c` is non-null (msg_controllen ≥ one header) and inside `cmsg`.
        unsafe {
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(size_of_val(fds) as u32) as _;
            let data = libc::CMSG_DATA(c).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(*fd);
            }
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` (→ `text`, only read) and `cmsg`, alive for the call;
        // the descriptors in it are open (borrowed from the caller for the duration).
        let r = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(HandoverError::Io {
                context: "sendmsg(SCM_RIGHTS)",
                source: e,
            });
        }
    }
}

/// Ask the relay listening at `path` to describe itself (no hand-over).
pub fn query(path: &Path, timeout: Duration) -> Result<RelayDescription, HandoverError> {
    let s = connect(path)?;
    s.set_read_timeout(Some(timeout)).map_err(ioe("timeout"))?;
    send_text(&s, "op=info\n")?;
    match recv_message(&s)? {
        Some((text, _)) => RelayDescription::decode(&text),
        None => Err(HandoverError::Protocol("closed before answering".into())),
    }
}

/// The old relay's end: a listening socket polled by the relay's main loop.
pub struct HandoverListener {
    sock: Socket,
    path: PathBuf,
}

impl HandoverListener {
    /// Listen at `path` (mode 0600). A stale socket file (nobody listening) is replaced; a
    /// live one is [`HandoverError::InUse`] unless `replace` (a relay that just took over
    /// replaces the listener of the relay it replaced, which accepts nothing any more).
    pub fn bind(path: &Path, replace: bool) -> Result<HandoverListener, HandoverError> {
        let sock_err = |e| HandoverError::Socket {
            path: path.to_path_buf(),
            source: e,
        };
        if replace {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(sock_err(e)),
            }
        } else if path.exists() {
            match connect(path) {
                Ok(_) => return Err(HandoverError::InUse(path.to_path_buf())),
                Err(HandoverError::NotListening(_)) => {
                    std::fs::remove_file(path).map_err(sock_err)?;
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(dir) = path.parent() {
            // Owner-only, like the runtime directory control creates.
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(sock_err)?;
        }
        let sock = seqpacket().map_err(sock_err)?;
        sock.bind(&SockAddr::unix(path).map_err(sock_err)?)
            .map_err(sock_err)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(sock_err)?;
        sock.listen(4).map_err(sock_err)?;
        sock.set_nonblocking(true).map_err(sock_err)?;
        Ok(HandoverListener {
            sock,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A waiting request, if any (never blocks). `op=info` queries are answered here with
    /// `me`; a takeover request is returned for the caller to carry out.
    pub fn poll(&self, me: &RelayDescription) -> Option<TakeoverRequest> {
        loop {
            let conn = match self.sock.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "hand-over accept failed");
                    return None;
                }
            };
            if let Some(r) = serve(conn, me) {
                return Some(r);
            }
        }
    }

    /// Remove the socket file (on a normal stop; not after a hand-over, when the new relay
    /// owns the path).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(conn: Socket, me: &RelayDescription) -> Option<TakeoverRequest> {
    let setup = conn
        .set_nonblocking(false)
        .and_then(|()| conn.set_read_timeout(Some(Duration::from_secs(2))));
    if let Err(e) = setup {
        tracing::warn!(error = %e, "hand-over connection setup failed");
        return None;
    }
    let text = match recv_message(&conn) {
        Ok(Some((t, _))) => t,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "hand-over request unreadable");
            return None;
        }
    };
    match op_of(&text) {
        Some("info") => {
            if let Err(e) = send_text(&conn, &me.encode()) {
                tracing::warn!(error = %e, "hand-over info reply failed");
            }
            None
        }
        Some("takeover") => {
            let shm = value_of(&text, "shm").map(PathBuf::from);
            if shm.as_deref() != Some(me.shm.as_path()) {
                let why = format!(
                    "shared memory differs (this relay maps {}, the new one {})",
                    me.shm.display(),
                    shm.as_deref().unwrap_or(Path::new("?")).display()
                );
                tracing::warn!(reason = %why, "hand-over refused");
                let _ = send_text(&conn, &format!("error={why}\n"));
                return None;
            }
            Some(TakeoverRequest { conn })
        }
        other => {
            tracing::warn!(op = ?other, "unknown hand-over request");
            None
        }
    }
}

/// A new relay asking for the sockets (old side).
pub struct TakeoverRequest {
    conn: Socket,
}

impl TakeoverRequest {
    /// Send our description and the workers' sockets, then wait (up to `timeout`) for the new
    /// relay to say its workers run. `Ok(())` = stop now and call [`Self::done`].
    pub fn offer(
        &self,
        me: &RelayDescription,
        sockets: &[UdpSocket],
        timeout: Duration,
    ) -> Result<(), HandoverError> {
        let fds: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
        send_with_fds(&self.conn, &me.encode(), &fds)?;
        self.conn
            .set_read_timeout(Some(timeout))
            .map_err(ioe("timeout"))?;
        match recv_message(&self.conn)? {
            Some((t, _)) if op_of(&t) == Some("ready") => Ok(()),
            Some((t, _)) => Err(HandoverError::Protocol(format!(
                "expected op=ready, got {t:?}"
            ))),
            None => Err(HandoverError::Protocol(
                "the new relay closed the connection before it was ready".into(),
            )),
        }
    }

    /// Send our ICE-TCP listener and connections (step 4, after the workers stopped): as many
    /// `op=tcp` messages as the descriptors and the bytes in flight need.
    pub fn send_tcp(&self, h: TcpHandover) -> Result<(), HandoverError> {
        let mut text = String::from("op=tcp\n");
        let mut fds: Vec<RawFd> = Vec::new();
        if let Some(l) = &h.listener {
            text.push_str("listener=1\n");
            fds.push(l.as_raw_fd());
        }
        for c in &h.conns {
            let line = encode_conn(c);
            if fds.len() >= TCP_FDS_PER_MESSAGE || text.len() + line.len() > TCP_MESSAGE_TEXT {
                send_with_fds(&self.conn, &text, &fds)?;
                text = String::from("op=tcp\n");
                fds.clear();
            }
            text.push_str(&line);
            fds.push(c.fd.as_raw_fd());
        }
        if !fds.is_empty() {
            send_with_fds(&self.conn, &text, &fds)?;
        }
        Ok(())
    }

    /// Tell the new relay our workers stopped (step 4).
    pub fn done(self) {
        if let Err(e) = send_text(&self.conn, "op=done\n") {
            tracing::warn!(error = %e, "hand-over done message failed");
        }
    }
}

/// The new relay's end: the old relay's sockets, received.
pub struct Takeover {
    conn: Socket,
    /// What the old relay said about itself.
    pub old: RelayDescription,
    /// One UDP socket per old worker, in worker order (nonblocking, close-on-exec).
    pub sockets: Vec<UdpSocket>,
}

impl Takeover {
    /// Connect to the relay at `path` and receive its sockets. `shm` must be the file the old
    /// relay maps (a relay never takes over a relay of another instance).
    pub fn connect(path: &Path, shm: &Path, timeout: Duration) -> Result<Takeover, HandoverError> {
        let conn = connect(path)?;
        conn.set_read_timeout(Some(timeout))
            .map_err(ioe("timeout"))?;
        send_text(
            &conn,
            &format!(
                "op=takeover\nshm={}\npid={}\n",
                shm.display(),
                std::process::id()
            ),
        )?;
        let (text, fds) = recv_message(&conn)?
            .ok_or_else(|| HandoverError::Protocol("closed before sending sockets".into()))?;
        let old = RelayDescription::decode(&text)?;
        if fds.len() != old.workers || fds.is_empty() {
            return Err(HandoverError::Protocol(format!(
                "expected {} sockets, received {}",
                old.workers,
                fds.len()
            )));
        }
        let mut sockets = Vec::with_capacity(fds.len());
        for fd in fds {
            let s = Socket::from(fd);
            match s.r#type() {
                Ok(t) if t == Type::DGRAM => {}
                Ok(_) => {
                    return Err(HandoverError::Protocol(
                        "a received socket is not UDP".into(),
                    ))
                }
                Err(e) => {
                    return Err(HandoverError::Io {
                        context: "getsockopt(SO_TYPE)",
                        source: e,
                    })
                }
            }
            s.set_nonblocking(true).map_err(ioe("fcntl(O_NONBLOCK)"))?;
            sockets.push(UdpSocket::from(s));
        }
        Ok(Takeover { conn, old, sockets })
    }

    /// Tell the old relay our workers run on its sockets, then wait (up to `timeout`) until
    /// its workers stopped. End of stream counts as done (the old process is gone). Returns
    /// the old relay's ICE-TCP listener and connections (empty when it ran none).
    pub fn ready_and_wait(self, timeout: Duration) -> Result<TcpHandover, HandoverError> {
        send_text(&self.conn, "op=ready\n")?;
        self.conn
            .set_read_timeout(Some(timeout))
            .map_err(ioe("timeout"))?;
        let mut tcp = TcpHandover::default();
        loop {
            match recv_message_of(&self.conn, TCP_MESSAGE_MAX)? {
                Some((t, fds)) if op_of(&t) == Some("tcp") => decode_tcp(&t, fds, &mut tcp)?,
                Some((t, _)) if op_of(&t) == Some("done") => return Ok(tcp),
                Some((t, _)) => {
                    return Err(HandoverError::Protocol(format!(
                        "expected op=tcp or op=done, got {t:?}"
                    )))
                }
                None => return Ok(tcp),
            }
        }
    }
}

/// Descriptors per `op=tcp` message (below [`MAX_FDS`]).
const TCP_FDS_PER_MESSAGE: usize = 128;
/// Text per `op=tcp` message before another starts (one connection line can take up to
/// 4 × (9,216 + 2) bytes of hex with jumbo datagrams).
const TCP_MESSAGE_TEXT: usize = 48 * 1024;
/// Largest `op=tcp` message taken: the text limit plus one whole connection line.
const TCP_MESSAGE_MAX: usize = TCP_MESSAGE_TEXT + 40 * 1024;

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "-".into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, HandoverError> {
    if s == "-" {
        return Ok(Vec::new());
    }
    let bad = || HandoverError::Protocol("bad hex in an op=tcp connection line".into());
    if s.len() % 2 != 0 {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

fn encode_conn(c: &HandedConn) -> String {
    format!(
        "conn={} {} {} {} {}\n",
        // The transport address: the key's ICE-TCP mark (flow info) has no text form.
        contract::wire::transport_addr(c.peer),
        u8::from(c.greeted),
        u8::from(c.answered),
        hex(&c.rx),
        hex(&c.tx)
    )
}

/// Take one `op=tcp` message's listener and connections into `into`; every descriptor must
/// be a stream socket and match one line.
fn decode_tcp(text: &str, fds: Vec<OwnedFd>, into: &mut TcpHandover) -> Result<(), HandoverError> {
    let proto = |m: &str| HandoverError::Protocol(format!("op=tcp: {m}"));
    for fd in &fds {
        match socket2::SockRef::from(fd).r#type() {
            Ok(t) if t == Type::STREAM => {}
            Ok(_) => return Err(proto("a received descriptor is not a TCP socket")),
            Err(e) => {
                return Err(HandoverError::Io {
                    context: "getsockopt(SO_TYPE)",
                    source: e,
                })
            }
        }
    }
    let mut fds = fds.into_iter();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "listener" if value == "1" => {
                if into.listener.is_some() {
                    return Err(proto("a second listener"));
                }
                into.listener = Some(fds.next().ok_or_else(|| proto("listener without fd"))?);
            }
            "conn" => {
                let mut f = value.split(' ');
                let mut next = || f.next().ok_or_else(|| proto("short connection line"));
                let peer = contract::wire::tcp_peer(
                    next()?
                        .parse::<std::net::SocketAddr>()
                        .map_err(|_| proto("bad peer"))?,
                );
                let flag = |v: &str| match v {
                    "0" => Ok(false),
                    "1" => Ok(true),
                    _ => Err(proto("bad flag")),
                };
                let greeted = flag(next()?)?;
                let answered = flag(next()?)?;
                let rx = unhex(next()?)?;
                let tx = unhex(next()?)?;
                let fd = fds.next().ok_or_else(|| proto("connection without fd"))?;
                into.conns.push(HandedConn {
                    fd,
                    peer,
                    greeted,
                    answered,
                    rx,
                    tx,
                });
            }
            _ => {}
        }
    }
    if fds.next().is_some() {
        return Err(proto("more descriptors than lines"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::net::SocketAddr;

    /// Connection lines keep the ICE-TCP peer key (whose mark has no text form), the flags
    /// and the bytes in flight; descriptors must be stream sockets, one per line.
    #[test]
    fn tcp_connection_lines_round_trip() {
        use std::net::{TcpListener, TcpStream};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let peer = contract::wire::tcp_peer("192.0.2.7:40000".parse().unwrap());
        let c = HandedConn {
            fd: OwnedFd::from(a),
            peer,
            greeted: true,
            answered: false,
            rx: vec![0, 20, 1, 2],
            tx: Vec::new(),
        };
        let text = format!("op=tcp\nlistener=1\n{}", encode_conn(&c));
        let fds = vec![OwnedFd::from(l), c.fd];
        let mut h = TcpHandover::default();
        decode_tcp(&text, fds, &mut h).unwrap();
        assert!(h.listener.is_some());
        let got = &h.conns[0];
        assert_eq!(got.peer, peer);
        assert!(contract::wire::is_tcp_peer(&got.peer));
        assert!(got.greeted && !got.answered);
        assert_eq!(got.rx, vec![0, 20, 1, 2]);
        assert!(got.tx.is_empty());

        // A line without its descriptor, a descriptor without its line, a UDP socket, bad hex.
        let udp = || OwnedFd::from(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        let stream = || {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            OwnedFd::from(TcpStream::connect(l.local_addr().unwrap()).unwrap())
        };
        let line = "op=tcp\nconn=192.0.2.7:1 1 1 - -\n";
        let mut h = TcpHandover::default();
        assert!(decode_tcp(line, Vec::new(), &mut h).is_err());
        assert!(decode_tcp("op=tcp\n", vec![stream()], &mut h).is_err());
        assert!(decode_tcp(line, vec![udp()], &mut h).is_err());
        let bad = "op=tcp\nconn=192.0.2.7:1 1 1 0g -\n";
        assert!(decode_tcp(bad, vec![stream()], &mut h).is_err());
        let odd = "op=tcp\nconn=192.0.2.7:1 1 2 - -\n";
        assert!(decode_tcp(odd, vec![stream()], &mut h).is_err());
    }

    fn me(shm: &Path, workers: usize, media: SocketAddr) -> RelayDescription {
        RelayDescription {
            pid: std::process::id(),
            exe: current_exe(),
            media,
            backend: "mmsg".into(),
            workers,
            shm: shm.to_path_buf(),
            args: vec!["--bind".into(), media.to_string(), "--x=a=b".into()],
        }
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-ho-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn description_roundtrip_and_errors() {
        let d = me(
            Path::new("/dev/shm/x"),
            3,
            "127.0.0.1:5000".parse().unwrap(),
        );
        assert_eq!(RelayDescription::decode(&d.encode()).unwrap(), d);
        assert!(matches!(
            RelayDescription::decode("pid=1\n"),
            Err(HandoverError::Protocol(_))
        ));
        assert!(matches!(
            RelayDescription::decode("pid=x\n"),
            Err(HandoverError::Protocol(_))
        ));
        assert!(matches!(
            RelayDescription::decode("error=no\n"),
            Err(HandoverError::Refused(_))
        ));
        assert!(RelayDescription::decode("garbage").is_err());
    }

    /// Two sockets cross the unix socket; a datagram queued in the kernel before the
    /// hand-over is read from the received descriptor.
    #[test]
    fn sockets_pass_with_queued_datagrams() {
        let dir = tmp("pass");
        let path = socket_path(&dir);
        let shm = dir.join("shm");
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let desc = me(&shm, 2, a.local_addr().unwrap());
        let listener = HandoverListener::bind(&path, false).unwrap();
        // A second listener on a live path is refused.
        assert!(matches!(
            HandoverListener::bind(&path, false),
            Err(HandoverError::InUse(_))
        ));
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(b"queued", a.local_addr().unwrap()).unwrap();

        let desc2 = desc.clone();
        let shm2 = shm.clone();
        let path2 = path.clone();
        let newer = std::thread::spawn(move || {
            let info = query(&path2, Duration::from_secs(2)).unwrap();
            assert_eq!(info, desc2);
            let t = Takeover::connect(&path2, &shm2, Duration::from_secs(5)).unwrap();
            assert_eq!(t.sockets.len(), 2);
            let mut buf = [0u8; 16];
            t.sockets[0]
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            // The received socket shares the file description (nonblocking): poll it.
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            let n = loop {
                match t.sockets[0].recv_from(&mut buf) {
                    Ok((n, _)) => break n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        assert!(std::time::Instant::now() < deadline);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            assert_eq!(&buf[..n], b"queued");
            let local = t.sockets[1].local_addr().unwrap();
            t.ready_and_wait(Duration::from_secs(5)).unwrap();
            local
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let req = loop {
            if let Some(r) = listener.poll(&desc) {
                break r;
            }
            assert!(std::time::Instant::now() < deadline, "no takeover request");
            std::thread::sleep(Duration::from_millis(5));
        };
        req.offer(&desc, &[a, b.try_clone().unwrap()], Duration::from_secs(5))
            .unwrap();
        req.done();
        assert_eq!(newer.join().unwrap(), b.local_addr().unwrap());
        listener.remove();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn takeover_of_another_instance_is_refused() {
        let dir = tmp("refuse");
        let path = socket_path(&dir);
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let desc = me(&dir.join("shm-a"), 1, a.local_addr().unwrap());
        let listener = HandoverListener::bind(&path, false).unwrap();
        let path2 = path.clone();
        let other = dir.join("shm-b");
        let newer =
            std::thread::spawn(move || Takeover::connect(&path2, &other, Duration::from_secs(5)));
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            assert!(listener.poll(&desc).is_none());
            std::thread::sleep(Duration::from_millis(5));
            if newer.is_finished() {
                break;
            }
        }
        assert!(matches!(
            newer.join().unwrap(),
            Err(HandoverError::Refused(_))
        ));
        // Nobody listening: a clear error.
        drop(listener);
        assert!(matches!(
            Takeover::connect(&path, &dir.join("shm-a"), Duration::from_secs(1)),
            Err(HandoverError::NotListening(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
