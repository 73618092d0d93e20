//! The slow-path message framing between relay and control (design.md "Slow-path datagrams").
//!
//! STUN, DTLS and datagrams from unknown sources go from a relay worker to control, and
//! control's replies come back to leave from the relay's media port. Transport: a
//! `SOCK_SEQPACKET` unix socket (message boundaries kept, reliable, ordered); control listens
//! (`control::slowpath`), each relay worker connects (the relay's slow-path client). This module
//! owns only the messages: it opens no socket.
//!
//! Message = a 28-byte header followed by the datagram bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version ([`VERSION`]) |
//! | 1 | 1 | kind: 1 hello, 2 datagram-up (relay → control), 3 datagram-down (control → relay), 4 stream-up (relay → control) |
//! | 2 | 2 | worker id (big endian) |
//! | 4 | 1 | peer address family: 4, 6, or 0 (hello only) |
//! | 5 | 1 | peer transport: 0 UDP, 1 ICE-TCP (the peer key is `wire::tcp_peer`) |
//! | 6 | 2 | peer port (big endian) |
//! | 8 | 2 | relay local port (big endian) |
//! | 10 | 2 | reserved, 0 |
//! | 12 | 16 | peer IP (IPv4 in the first 4 bytes, the rest 0) |
//!
//! A hello (no peer, no payload) is the first message of every client connection. A
//! stream-up carries the plain RTP header (fixed header, CSRCs and header extension; no
//! payload) of an authenticated packet from a publisher session `peer` on an SSRC no route
//! carries: control may learn a simulcast layer's SSRC from its RID (RFC 8852). Decoding a
//! malformed message is a [`DecodeError`], never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::wire::{is_tcp_peer, normalize_addr, tcp_peer, transport_addr, MAX_DATAGRAM};

/// Protocol version in every header.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 28;
/// Largest message: header plus [`MAX_DATAGRAM`].
pub const MAX_MESSAGE: usize = HEADER_LEN + MAX_DATAGRAM;

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgKind {
    /// First message of a connection: who is talking (worker id, local port).
    Hello = 1,
    /// A datagram the relay received from `peer`, for control.
    DatagramUp = 2,
    /// A datagram control wants sent to `peer` from the relay's port.
    DatagramDown = 3,
    /// The plain RTP header of an authenticated packet from publisher `peer` on an SSRC no
    /// route carries, for control.
    StreamUp = 4,
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgHeader {
    pub kind: MsgKind,
    pub worker: u16,
    /// The remote peer (absent only in a hello).
    pub peer: Option<SocketAddr>,
    /// The relay's UDP port the datagram arrived on / should leave from.
    pub local_port: u16,
}

/// Why a message could not be decoded (or encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("slow-path message too short: {0} bytes, header is 28")]
    Short(usize),
    #[error("slow-path message version {0}, expected 1")]
    Version(u8),
    #[error("unknown slow-path message kind {0}")]
    Kind(u8),
    #[error("bad peer address family {0}")]
    Family(u8),
    #[error("datagram message without a peer address")]
    MissingPeer,
    #[error("slow-path payload of {0} bytes exceeds the 2048-byte datagram limit")]
    TooLong(usize),
    #[error("reserved header bytes are not zero")]
    Reserved,
    #[error("output buffer too small")]
    NoRoom,
}

/// Errors of a slow-path connection, at either end: the socket, or a message that does not
/// decode.
#[derive(Debug, thiserror::Error)]
pub enum SlowPathError {
    #[error("slow-path socket: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Write header + payload into `out`; returns the message length.
pub fn encode(h: &MsgHeader, payload: &[u8], out: &mut [u8]) -> Result<usize, DecodeError> {
    if payload.len() > MAX_DATAGRAM {
        return Err(DecodeError::TooLong(payload.len()));
    }
    let total = HEADER_LEN + payload.len();
    if out.len() < total {
        return Err(DecodeError::NoRoom);
    }
    if h.kind != MsgKind::Hello && h.peer.is_none() {
        return Err(DecodeError::MissingPeer);
    }
    let hdr = &mut out[..HEADER_LEN];
    hdr.fill(0);
    hdr[0] = VERSION;
    hdr[1] = h.kind as u8;
    hdr[2..4].copy_from_slice(&h.worker.to_be_bytes());
    hdr[8..10].copy_from_slice(&h.local_port.to_be_bytes());
    if let Some(key) = h.peer.map(normalize_addr) {
        // Byte 5: the peer's transport (0 UDP, 1 ICE-TCP, see `wire::tcp_peer`).
        hdr[5] = u8::from(is_tcp_peer(&key));
        let peer = transport_addr(key);
        hdr[6..8].copy_from_slice(&peer.port().to_be_bytes());
        match peer.ip() {
            IpAddr::V4(ip) => {
                hdr[4] = 4;
                hdr[12..16].copy_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                hdr[4] = 6;
                hdr[12..28].copy_from_slice(&ip.octets());
            }
        }
    }
    out[HEADER_LEN..total].copy_from_slice(payload);
    Ok(total)
}

/// Parse one message into its header and payload.
pub fn decode(msg: &[u8]) -> Result<(MsgHeader, &[u8]), DecodeError> {
    if msg.len() < HEADER_LEN {
        return Err(DecodeError::Short(msg.len()));
    }
    if msg[0] != VERSION {
        return Err(DecodeError::Version(msg[0]));
    }
    let kind = match msg[1] {
        1 => MsgKind::Hello,
        2 => MsgKind::DatagramUp,
        3 => MsgKind::DatagramDown,
        4 => MsgKind::StreamUp,
        k => return Err(DecodeError::Kind(k)),
    };
    if msg[5] > 1 || msg[10] != 0 || msg[11] != 0 {
        return Err(DecodeError::Reserved);
    }
    let worker = u16::from_be_bytes([msg[2], msg[3]]);
    let port = u16::from_be_bytes([msg[6], msg[7]]);
    let local_port = u16::from_be_bytes([msg[8], msg[9]]);
    let peer = match msg[4] {
        0 => None,
        4 => {
            if msg[16..28].iter().any(|&b| b != 0) {
                return Err(DecodeError::Reserved);
            }
            let ip = Ipv4Addr::new(msg[12], msg[13], msg[14], msg[15]);
            Some(SocketAddr::new(ip.into(), port))
        }
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&msg[12..28]);
            Some(normalize_addr(SocketAddr::new(
                Ipv6Addr::from(o).into(),
                port,
            )))
        }
        f => return Err(DecodeError::Family(f)),
    };
    if kind != MsgKind::Hello && peer.is_none() {
        return Err(DecodeError::MissingPeer);
    }
    let peer = match (peer, msg[5]) {
        (Some(p), 1) => Some(tcp_peer(p)),
        (None, 1) => return Err(DecodeError::Reserved),
        (p, _) => p,
    };
    let payload = &msg[HEADER_LEN..];
    if payload.len() > MAX_DATAGRAM {
        return Err(DecodeError::TooLong(payload.len()));
    }
    Ok((
        MsgHeader {
            kind,
            worker,
            peer,
            local_port,
        },
        payload,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors() {
        let mut buf = [0u8; MAX_MESSAGE];
        let plain = ["192.0.2.1:4000", "[2001:db8::7]:5", "[::ffff:10.0.0.1]:9"];
        let plain = plain.map(|p| p.parse::<SocketAddr>().unwrap());
        for peer in plain.into_iter().chain(plain.map(tcp_peer)) {
            let h = MsgHeader {
                kind: MsgKind::DatagramUp,
                worker: 3,
                peer: Some(peer),
                local_port: 3478,
            };
            let n = encode(&h, b"stun", &mut buf).unwrap();
            let (d, p) = decode(&buf[..n]).unwrap();
            assert_eq!(d.peer, Some(normalize_addr(peer)));
            assert_eq!(
                (d.worker, d.local_port, d.kind, p),
                (3, 3478, MsgKind::DatagramUp, &b"stun"[..])
            );
        }
        let h = MsgHeader {
            kind: MsgKind::StreamUp,
            worker: 1,
            peer: Some(plain[0]),
            local_port: 9,
        };
        let n = encode(&h, &[0x90, 96, 0, 1], &mut buf).unwrap();
        assert_eq!(decode(&buf[..n]).unwrap(), (h, &[0x90, 96, 0, 1][..]));
        assert_eq!(decode(&buf[..5]), Err(DecodeError::Short(5)));
        let mut bad = buf;
        bad[0] = 9;
        assert_eq!(decode(&bad[..28]), Err(DecodeError::Version(9)));
        let mut bad = buf;
        bad[1] = 7;
        assert_eq!(decode(&bad[..28]), Err(DecodeError::Kind(7)));
        let mut bad = buf;
        bad[4] = 5;
        assert_eq!(decode(&bad[..28]), Err(DecodeError::Family(5)));
        let mut bad = buf;
        bad[4] = 0;
        assert_eq!(decode(&bad[..28]), Err(DecodeError::MissingPeer));
        let big = vec![0u8; MAX_MESSAGE + 1];
        let mut big2 = big.clone();
        big2[..28].copy_from_slice(&buf[..28]);
        assert_eq!(decode(&big2), Err(DecodeError::TooLong(MAX_DATAGRAM + 1)));
    }
}
