//! Zero-copy wire formats: RTP, RTCP, STUN, DTLS records and the RFC 7983 demultiplexer.
//!
//! Owns: parsing views over `&[u8]`, allocation-free iterators, in-place field rewrites on
//! `&mut [u8]` (the route rewrite the engine applies), and the STUN message writer with which
//! the relay and control's ICE-lite answer binding requests.
//! May not touch: sockets, threads, the clock, shared memory, SRTP keys. Nothing here
//! allocates, locks or panics on any input: every parser returns a typed, `Copy` error.
//!
//! Submodules:
//! - [`dd`]: the Dependency Descriptor header extension (AV1 RTP specification, appendix A):
//!   template structures, per-frame decode target indications, references and chains, and the
//!   active decode targets mask re-written for SVC forwarding.
//! - [`demux`]: first-byte classification of a datagram (RFC 7983 §7, RFC 5761 §4).
//! - [`rtp`]: RTP fixed header, CSRCs, padding, RFC 8285 header extensions; in-place rewrites.
//! - [`rtcp`]: compound RTCP iteration and typed views (SR, RR, SDES, BYE, APP, RTPFB, PSFB).
//! - [`rtcp_write`]: the RTCP packets the relay writes itself (SR, RR, PLI, FIR, generic NACK).
//! - [`rtx`]: the RTP retransmission payload format (RFC 4588), both directions.
//! - [`twcc`]: transport-wide congestion control: the sequence extension, transport-cc
//!   feedback read and written, REMB written.
//! - [`vp8`]: the VP8 RTP payload descriptor (RFC 7741 §4.2): key frames, temporal layers,
//!   picture ID / TL0PICIDX / key index rewritten in place for layer switching.
//! - [`stun`]: STUN messages (RFC 8489), ICE attributes (RFC 8445), integrity, fingerprint,
//!   and an allocation-free writer.
//! - [`ice`]: ICE-lite answers to connectivity checks (RFC 8445 §7.3), shared by the relay and
//!   control.
//! - [`dtls`]: DTLS 1.0/1.2 record and handshake headers (RFC 6347 §4.1, §4.2.2).
//!
//! Validation happens once, when a view is built; accessors and iterators on a built view are
//! then infallible. Offsets used after validation are proven in range by that validation.

pub mod dd;
pub mod demux;
pub mod dtls;
pub mod ice;
pub mod rtcp;
pub mod rtcp_write;
pub mod rtp;
pub mod rtx;
pub mod stun;
pub mod twcc;
pub mod vp8;

pub use demux::{classify, Kind};
pub use rtcp::is_rtcp;

use std::net::{SocketAddr, SocketAddrV6};

/// Largest datagram any Sluice process receives, queues or frames (bytes).
pub const MAX_DATAGRAM: usize = 2048;

/// Turn an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) into plain IPv4; other addresses pass,
/// ICE-TCP peers ([`tcp_peer`]) too. Every address that keys a table (shm sessions, the
/// relay's index, slow-path messages) is normalized first, so one peer has one key whichever
/// socket family saw it.
#[inline]
pub fn normalize_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) if v6.flowinfo() == TCP_MARK => addr,
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// The IPv6 flow information that marks an address as an ICE-TCP peer. Flow information is
/// 28 bits (traffic class and flow label) and the kernel reports 0 for every received
/// datagram, so no UDP source ever carries this value.
const TCP_MARK: u32 = 0x8000_0000;

/// The key of a peer reached over an ICE-TCP connection from `addr` (RFC 6544): its address
/// as IPv6 (IPv4 mapped) with [`TCP_MARK`] as flow information. A peer's UDP address and its
/// TCP connection may share IP and port; every table keyed by peer address (the relay's
/// index, its connection table, control's sessions and the shm record) keeps them apart by
/// this key, and a datagram queued to it leaves framed on the connection, never as UDP.
pub fn tcp_peer(addr: SocketAddr) -> SocketAddr {
    let addr = transport_addr(addr);
    let (ip, scope) = match addr {
        SocketAddr::V4(v4) => (v4.ip().to_ipv6_mapped(), 0),
        SocketAddr::V6(v6) => (*v6.ip(), v6.scope_id()),
    };
    SocketAddr::V6(SocketAddrV6::new(ip, addr.port(), TCP_MARK, scope))
}

/// True when `addr` is an ICE-TCP peer key ([`tcp_peer`]).
#[inline]
pub fn is_tcp_peer(addr: &SocketAddr) -> bool {
    matches!(addr, SocketAddr::V6(v6) if v6.flowinfo() == TCP_MARK)
}

/// The transport address behind a peer key: an ICE-TCP key loses its mark (IPv4 comes back
/// as IPv4); a UDP address is only normalized. This is what a peer is told it is
/// (XOR-MAPPED-ADDRESS) and what operators see.
pub fn transport_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) if v6.flowinfo() == TCP_MARK => normalize_addr(SocketAddr::V6(
            SocketAddrV6::new(*v6.ip(), v6.port(), 0, v6.scope_id()),
        )),
        a => normalize_addr(a),
    }
}

/// A peer key as text: `tcp:ADDR` for an ICE-TCP peer, the plain address otherwise
/// (parsed back by [`parse_peer`]).
pub fn peer_to_string(addr: &SocketAddr) -> String {
    if is_tcp_peer(addr) {
        format!("tcp:{}", transport_addr(*addr))
    } else {
        addr.to_string()
    }
}

/// Parse [`peer_to_string`]'s text: `tcp:ADDR`, `udp:ADDR` or a plain address (UDP).
pub fn parse_peer(s: &str) -> Result<SocketAddr, std::net::AddrParseError> {
    if let Some(rest) = s.strip_prefix("tcp:") {
        rest.parse().map(tcp_peer)
    } else {
        s.strip_prefix("udp:")
            .unwrap_or(s)
            .parse()
            .map(normalize_addr)
    }
}

/// Reads a big-endian u16 at `at`, or `None` when the slice is too short.
#[inline]
pub(crate) fn be16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// Reads a big-endian 24-bit unsigned integer at `at`, or `None` when the slice is too short.
#[inline]
pub(crate) fn be24(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(3)?)?;
    Some(u32::from_be_bytes([0, b[0], b[1], b[2]]))
}

/// Reads a big-endian u32 at `at`, or `None` when the slice is too short.
#[inline]
pub(crate) fn be32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Writes a big-endian u32 at `at`; returns `false` (and writes nothing) when out of range.
#[inline]
pub(crate) fn put32(buf: &mut [u8], at: usize, v: u32) -> bool {
    match at.checked_add(4).and_then(|end| buf.get_mut(at..end)) {
        Some(dst) => {
            dst.copy_from_slice(&v.to_be_bytes());
            true
        }
        None => false,
    }
}

/// Writes a big-endian u16 at `at`; returns `false` (and writes nothing) when out of range.
#[inline]
pub(crate) fn put16(buf: &mut [u8], at: usize, v: u16) -> bool {
    match at.checked_add(2).and_then(|end| buf.get_mut(at..end)) {
        Some(dst) => {
            dst.copy_from_slice(&v.to_be_bytes());
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_peer_keys_never_meet_udp_addresses() {
        for a in [
            "192.0.2.7:5004",
            "[2001:db8::1]:5004",
            "[::ffff:192.0.2.7]:5004",
        ] {
            let udp = normalize_addr(a.parse().unwrap());
            let tcp = tcp_peer(udp);
            assert_ne!(tcp, udp);
            assert!(is_tcp_peer(&tcp) && !is_tcp_peer(&udp));
            assert_eq!(normalize_addr(tcp), tcp, "normalizing keeps the mark");
            assert_eq!(transport_addr(tcp), udp);
            assert_eq!(tcp_peer(tcp), tcp);
            for key in [udp, tcp] {
                assert_eq!(parse_peer(&peer_to_string(&key)), Ok(key));
            }
        }
        assert_eq!(
            peer_to_string(&tcp_peer("192.0.2.7:5004".parse().unwrap())),
            "tcp:192.0.2.7:5004"
        );
        assert_eq!(parse_peer("udp:192.0.2.7:9"), "192.0.2.7:9".parse());
    }
}
