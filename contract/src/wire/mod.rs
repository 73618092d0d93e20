//! Zero-copy wire formats: RTP, RTCP, STUN, DTLS records and the RFC 7983 demultiplexer.
//!
//! Owns: parsing views over `&[u8]`, allocation-free iterators, in-place field rewrites on
//! `&mut [u8]` (the route rewrite the engine applies), and the STUN message writer with which
//! the relay and control's ICE-lite answer binding requests.
//! May not touch: sockets, threads, the clock, shared memory, SRTP keys. Nothing here
//! allocates, locks or panics on any input: every parser returns a typed, `Copy` error.
//!
//! Submodules:
//! - [`demux`]: first-byte classification of a datagram (RFC 7983 §7, RFC 5761 §4).
//! - [`rtp`]: RTP fixed header, CSRCs, padding, RFC 8285 header extensions; in-place rewrites.
//! - [`rtcp`]: compound RTCP iteration and typed views (SR, RR, SDES, BYE, APP, RTPFB, PSFB).
//! - [`rtcp_write`]: the RTCP packets the relay writes itself (SR, RR, PLI, FIR, generic NACK).
//! - [`rtx`]: the RTP retransmission payload format (RFC 4588), both directions.
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

pub mod demux;
pub mod dtls;
pub mod ice;
pub mod rtcp;
pub mod rtcp_write;
pub mod rtp;
pub mod rtx;
pub mod stun;
pub mod vp8;

pub use demux::{classify, Kind};
pub use rtcp::is_rtcp;

use std::net::SocketAddr;

/// Largest datagram any Sluice process receives, queues or frames (bytes).
pub const MAX_DATAGRAM: usize = 2048;

/// Turn an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) into plain IPv4; other addresses pass.
/// Every address that keys a table (shm sessions, the relay's index, slow-path messages) is
/// normalized first, so one peer has one key whichever socket family saw it.
#[inline]
pub fn normalize_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
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
