//! Control's end of the slow-path channel to the relay's workers (design.md "Slow-path
//! datagrams"): a listening `SOCK_SEQPACKET` unix socket, one connection per relay worker. The
//! messages are [`contract::slowpath`]'s. Owns: the listening socket and the connections; may
//! not touch: what the datagrams mean (that is [`crate::slowpath`]).

use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use contract::slowpath::SlowPathError;
use contract::slowpath::{decode, encode, DecodeError, MsgHeader, MsgKind, MAX_MESSAGE};
use socket2::{Domain, SockAddr, Socket, Type};

/// The control end: a listening `SOCK_SEQPACKET` socket at a path.
pub struct SlowPathServer {
    listener: Socket,
    path: PathBuf,
}

fn seqpacket() -> io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::SEQPACKET, None)
}

impl SlowPathServer {
    /// Listen at `path` (a stale socket file left by a previous run is removed first).
    pub fn bind(path: impl AsRef<Path>) -> io::Result<SlowPathServer> {
        let path = path.as_ref().to_path_buf();
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = seqpacket()?;
        listener.bind(&SockAddr::unix(&path)?)?;
        listener.listen(64)?;
        Ok(SlowPathServer { listener, path })
    }

    /// Wait for (or, when nonblocking, poll for) one relay worker's connection.
    pub fn accept(&self) -> io::Result<SlowPathConn> {
        let (sock, _) = self.listener.accept()?;
        Ok(SlowPathConn {
            sock,
            worker: None,
            local_port: None,
        })
    }

    /// Make `accept` nonblocking (WouldBlock when no relay is waiting).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.listener.set_nonblocking(nonblocking)
    }

    /// The listening fd, for an event loop.
    pub fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SlowPathServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A datagram a relay worker passed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpDatagram<'a> {
    /// [`MsgKind::DatagramUp`] (a peer's STUN or DTLS) or [`MsgKind::StreamUp`] (the plain
    /// RTP header of a publisher's unrouted stream).
    pub kind: MsgKind,
    pub peer: SocketAddr,
    pub worker: u16,
    pub local_port: u16,
    pub data: &'a [u8],
}

/// Control's side of one relay worker's connection.
pub struct SlowPathConn {
    sock: Socket,
    worker: Option<u16>,
    local_port: Option<u16>,
}

impl SlowPathConn {
    /// Worker id from the hello, once seen.
    pub fn worker(&self) -> Option<u16> {
        self.worker
    }

    /// Relay port from the hello, once seen.
    pub fn local_port(&self) -> Option<u16> {
        self.local_port
    }

    /// Receive the next datagram (hellos are absorbed). `Ok(None)`: the relay closed.
    /// `buf` should hold [`MAX_MESSAGE`] bytes; a malformed message is a `Decode` error and
    /// the connection stays usable.
    pub fn recv<'b>(&mut self, buf: &'b mut [u8]) -> Result<Option<UpDatagram<'b>>, SlowPathError> {
        let n = loop {
            // A SOCK_SEQPACKET read is one whole message (truncated to `buf`).
            let n = (&self.sock).read(buf)?;
            if n == 0 {
                return Ok(None);
            }
            let (h, _) = decode(&buf[..n])?;
            match h.kind {
                MsgKind::Hello => {
                    self.worker = Some(h.worker);
                    self.local_port = Some(h.local_port);
                }
                MsgKind::DatagramUp | MsgKind::StreamUp => break n,
                MsgKind::DatagramDown => {
                    return Err(DecodeError::Kind(MsgKind::DatagramDown as u8).into())
                }
            }
        };
        let (h, data) = decode(&buf[..n])?;
        Ok(Some(UpDatagram {
            kind: h.kind,
            // decode guarantees a peer for datagram kinds
            peer: h.peer.ok_or(DecodeError::MissingPeer)?,
            worker: h.worker,
            local_port: h.local_port,
            data,
        }))
    }

    /// Ask the relay to send `data` to `peer` from its media port.
    pub fn send_down(&self, peer: SocketAddr, data: &[u8]) -> Result<(), SlowPathError> {
        let mut msg = [0u8; MAX_MESSAGE];
        let h = MsgHeader {
            kind: MsgKind::DatagramDown,
            worker: self.worker.unwrap_or(0),
            peer: Some(peer),
            local_port: self.local_port.unwrap_or(0),
        };
        let n = encode(&h, data, &mut msg)?;
        self.sock.send_with_flags(&msg[..n], libc::MSG_NOSIGNAL)?;
        Ok(())
    }

    /// Bound blocking receives (None = block forever).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(t)
    }

    /// Switch the connection to nonblocking mode.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.sock.set_nonblocking(nonblocking)
    }

    /// The connection fd, for an event loop.
    pub fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
