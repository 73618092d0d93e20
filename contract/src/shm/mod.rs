//! The control ↔ relay shared-memory contract (design.md "Shared memory").
//!
//! Owns: the file layout (header, session table, route table, per-worker counter blocks,
//! per-worker stream-state regions, per-worker session-stats regions),
//! the single writer (control, [`ShmWriter`]) and the lock-free readers (relay workers,
//! sluicectl, metrics: [`ShmReader`]). `unsafe` is allowed here and only here besides
//! [`crate::io`]; every block has a `// SAFETY:` note.
//! May not touch: sockets, SRTP state, the clock (callers pass timestamps in).
//!
//! Records below are the stable, typed view. The byte layout lives in `layout`, the per-slot
//! sequence lock in `seqlock`, the slot encoding in `codec`, the counters in `counters`;
//! `docs/SHM.md` describes all of it for operators and other implementations.
//!
//! Slot indexes are internal to this module: everything outside names sessions and routes by
//! the ids control assigns.
#![allow(unsafe_code)]

mod codec;
mod counters;
mod error;
mod layout;
mod map;
mod reader;
mod seqlock;
mod stats;
mod streams;
mod writer;

pub use counters::{
    batch_bucket, time_bucket, CounterSnapshot, Feedback, IoTotals, TcpTotals, WorkerCounters,
    BATCH_BUCKETS, COUNTER_TCP_OFFSET, IO_COUNTERS, TCP_COUNTERS, TCP_COUNTERS_USED, TIME_BUCKETS,
};
pub use error::{ShmError, SlotError, Table};
pub use layout::{
    Capacity, ABI_VERSION, DEFAULT_PATH, DEFAULT_STATS_PER_WORKER, DEFAULT_STREAMS_PER_WORKER,
    MAGIC, MAX_STATS_PER_WORKER, MAX_STREAMS_PER_WORKER,
};
pub use reader::{RelayInfo, ScanReport, ShmReader, BACKEND_NAME_LEN};
pub use stats::{
    Diagnostics, LayerStats, ReceptionStats, SessionDiagnostics, SessionStats, StatRecord,
    StreamStats,
};
pub use streams::{StreamDir, StreamRecord};
pub use writer::{AdoptReport, ShmWriter};

use crate::srtp::MasterKey;
use std::net::SocketAddr;

/// A session id, assigned by control: a monotonic `u64` counter that control persists, so an id
/// is never 0 and never reused (not even across control restarts). Stored in the slot; which
/// slot holds a session is internal to this module.
pub type SessionId = u64;
/// A route id, assigned by control like [`SessionId`] (its own counter; never 0, never reused).
pub type RouteId = u64;

/// What a session may do. Viewers only receive; the others may publish (design.md "Access control").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    Host = 1,
    Speaker = 2,
    Moderator = 3,
    Viewer = 4,
    /// Static relay-to-relay or load-test session: publishes and subscribes.
    Trunk = 5,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Host,
        Role::Speaker,
        Role::Moderator,
        Role::Viewer,
        Role::Trunk,
    ];
    pub const fn can_publish(self) -> bool {
        !matches!(self, Role::Viewer)
    }
    pub const fn name(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Speaker => "speaker",
            Role::Moderator => "moderator",
            Role::Viewer => "viewer",
            Role::Trunk => "trunk",
        }
    }
    pub fn from_name(s: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s))
    }
    pub fn from_code(c: u8) -> Option<Role> {
        Role::ALL.into_iter().find(|r| *r as u8 == c)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A role name that is none of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}`")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    /// The name, in any case (as [`Role::from_name`]).
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::from_name(s).ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// Serialized as its lowercase name; only the exact lowercase name deserializes.
impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                serde::de::Error::unknown_variant(
                    &s,
                    &["host", "speaker", "moderator", "viewer", "trunk"],
                )
            })
    }
}

/// Session flags (bit set).
pub mod session_flags {
    /// The session is being drained: no new routes to it; existing media still flows.
    pub const DRAINING: u32 = 1 << 0;
    /// The peer address is not confirmed yet (ICE pending); media from it is not forwarded.
    pub const PENDING: u32 = 1 << 1;
    /// Bits 8–11: the id (1–14, RFC 8285 one-byte form) of the transport-wide sequence
    /// extension the peer's RTP carries, 0 = none. The relay then sends the peer
    /// transport-cc feedback about its packets (docs/ENGINE.md "Bandwidth estimation").
    pub const TWCC_ID_SHIFT: u32 = 8;
    pub const TWCC_ID_MASK: u32 = 0xF << TWCC_ID_SHIFT;

    /// The transport-wide sequence extension id in `flags` (`None`: 0, or 15, which the
    /// one-byte form reserves).
    pub const fn twcc_id(flags: u32) -> Option<u8> {
        match ((flags & TWCC_ID_MASK) >> TWCC_ID_SHIFT) as u8 {
            0 | 15 => None,
            id => Some(id),
        }
    }

    /// `flags` with the transport-wide sequence extension id set to `id` (`None` or an id
    /// outside 1–14: cleared).
    pub const fn with_twcc_id(flags: u32, id: Option<u8>) -> u32 {
        let bits = match id {
            Some(i) if i >= 1 && i <= 14 => (i as u32) << TWCC_ID_SHIFT,
            _ => 0,
        };
        (flags & !TWCC_ID_MASK) | bits
    }

    /// Bits 12–15: the id (1–14) of the abs-send-time extension the peer's RTP carries when
    /// the peer takes REMB (`goog-remb`) and not transport-cc, 0 = none. The relay then runs a
    /// receive-side estimator on the peer's packets and sends it REMB (docs/ENGINE.md "REMB
    /// to publishers"). Ignored while bits 8–11 name a transport-wide extension.
    pub const ABS_SEND_TIME_ID_SHIFT: u32 = 12;
    pub const ABS_SEND_TIME_ID_MASK: u32 = 0xF << ABS_SEND_TIME_ID_SHIFT;

    /// The abs-send-time extension id in `flags` for REMB (`None`: 0, or 15).
    pub const fn abs_send_time_id(flags: u32) -> Option<u8> {
        match ((flags & ABS_SEND_TIME_ID_MASK) >> ABS_SEND_TIME_ID_SHIFT) as u8 {
            0 | 15 => None,
            id => Some(id),
        }
    }

    /// `flags` with the abs-send-time extension id set to `id` (`None` or an id outside
    /// 1–14: cleared).
    pub const fn with_abs_send_time_id(flags: u32, id: Option<u8>) -> u32 {
        let bits = match id {
            Some(i) if i >= 1 && i <= 14 => (i as u32) << ABS_SEND_TIME_ID_SHIFT,
            _ => 0,
        };
        (flags & !ABS_SEND_TIME_ID_MASK) | bits
    }
}

/// One session as control writes it and workers read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: SessionId,
    /// The peer's media address (IPv4 or IPv6).
    pub peer: SocketAddr,
    pub role: Role,
    /// What the peer encrypts with; the relay decrypts with it.
    pub rx_key: MasterKey,
    /// What the relay encrypts with towards the peer.
    pub tx_key: MasterKey,
    /// Bumped on every key change, so workers know to rebuild the session's contexts.
    pub key_epoch: u32,
    /// See [`session_flags`].
    pub flags: u32,
    /// Inbound packet-rate cap (packets per second), 0 = unlimited.
    pub max_pps: u32,
    /// The session's ICE-lite credentials (WebRTC sessions), from which the relay answers
    /// connectivity checks itself; `None` for static sessions.
    pub ice: Option<IceCredentials>,
}

/// Longest local ufrag a session slot carries (bytes).
pub const MAX_ICE_UFRAG: usize = 32;
/// Longest local password a session slot carries (bytes).
pub const MAX_ICE_PWD: usize = 64;
/// Longest remote ufrag a session slot carries (bytes).
pub const MAX_ICE_REMOTE_UFRAG: usize = 32;

/// A WebRTC session's ICE credentials as control publishes them (docs/ICE.md "Checks
/// answered in the relay"): the relay answers a Binding request whose USERNAME is
/// `ufrag:remote_ufrag` and whose MESSAGE-INTEGRITY verifies with `pwd` (RFC 8445 §7.2.2).
/// Fixed-size, so a record stays `Copy` and the relay's index rebuild copies no heap data.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IceCredentials {
    ufrag: [u8; MAX_ICE_UFRAG],
    ufrag_len: u8,
    pwd: [u8; MAX_ICE_PWD],
    pwd_len: u8,
    remote_ufrag: [u8; MAX_ICE_REMOTE_UFRAG],
    remote_ufrag_len: u8,
}

/// Credentials that do not fit a session slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IceCredentialsError {
    #[error("{what} is {len} bytes, a session slot carries 1..={max}")]
    Length {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

fn fixed<const N: usize>(
    what: &'static str,
    v: &[u8],
) -> Result<([u8; N], u8), IceCredentialsError> {
    if v.is_empty() || v.len() > N {
        return Err(IceCredentialsError::Length {
            what,
            len: v.len(),
            max: N,
        });
    }
    let mut b = [0u8; N];
    b[..v.len()].copy_from_slice(v);
    // N ≤ 64, so the length fits a byte.
    Ok((b, v.len() as u8))
}

impl IceCredentials {
    /// Local ufrag and password (what our SDP announced) and the peer's ufrag.
    pub fn new(
        ufrag: &[u8],
        pwd: &[u8],
        remote_ufrag: &[u8],
    ) -> Result<IceCredentials, IceCredentialsError> {
        let (ufrag, ufrag_len) = fixed("local ufrag", ufrag)?;
        let (pwd, pwd_len) = fixed("local pwd", pwd)?;
        let (remote_ufrag, remote_ufrag_len) = fixed("remote ufrag", remote_ufrag)?;
        Ok(IceCredentials {
            ufrag,
            ufrag_len,
            pwd,
            pwd_len,
            remote_ufrag,
            remote_ufrag_len,
        })
    }

    /// The local ufrag (the first half of a check's USERNAME).
    pub fn ufrag(&self) -> &[u8] {
        &self.ufrag[..usize::from(self.ufrag_len)]
    }

    /// The local password: the MESSAGE-INTEGRITY key of checks and answers.
    pub fn pwd(&self) -> &[u8] {
        &self.pwd[..usize::from(self.pwd_len)]
    }

    /// The peer's ufrag (the second half of a check's USERNAME).
    pub fn remote_ufrag(&self) -> &[u8] {
        &self.remote_ufrag[..usize::from(self.remote_ufrag_len)]
    }
}

/// The password stays out of logs.
impl std::fmt::Debug for IceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceCredentials")
            .field("ufrag", &String::from_utf8_lossy(self.ufrag()))
            .field("pwd", &"<redacted>")
            .field(
                "remote_ufrag",
                &String::from_utf8_lossy(self.remote_ufrag()),
            )
            .finish()
    }
}

/// How many payload-type or header-extension mappings one route may carry.
pub const MAX_MAPPINGS: usize = 8;

/// Per-route rewrite rules applied to each forwarded packet (design.md "Packet path" step 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rewrite {
    /// Outgoing SSRC; `None` keeps the publisher's.
    pub ssrc: Option<u32>,
    /// Payload-type mapping `(from, to)`; unmapped types pass unchanged.
    pub pt_map: [(u8, u8); MAX_MAPPINGS],
    pub pt_map_len: u8,
    /// RFC 8285 header-extension id mapping `(from, to)`; unmapped ids pass unchanged.
    pub ext_map: [(u8, u8); MAX_MAPPINGS],
    pub ext_map_len: u8,
    /// The subscriber's MID (RFC 8843 §15): the value written into the extension element
    /// `mid_id` (the subscriber's id, after `ext_map`) of every forwarded packet that carries
    /// one, so the receiver demuxes it into its own media section. `mid_len` 0: no rewrite.
    pub mid: [u8; MAX_MID_LEN],
    pub mid_len: u8,
    pub mid_id: u8,
    /// The subscriber's id for the transport-wide sequence number extension
    /// (draft-holmer-rmcat-transport-wide-cc-extensions-01), after `ext_map`: a forwarded
    /// packet carrying that element gets the relay's own per-subscriber number, and the
    /// subscriber's transport-cc feedback drives its bandwidth estimate. 0: no stamping.
    pub twcc_id: u8,
    /// The subscriber's RTX stream for this route (RFC 4588): packets the relay resends on a
    /// NACK go out as RTX on this SSRC and payload type; `None` resends the original packet.
    /// Only on a route that carries one stream (an SSRC filter or a rewritten SSRC).
    pub rtx: Option<RtxOut>,
    /// The publisher's RTX stream for the route's source stream (RFC 4588, its `a=ssrc-group:FID`
    /// partner and `apt` payload type): the relay unwraps a packet the publisher sends on it
    /// (original sequence number restored, SSRC and payload type of the original stream) and
    /// forwards it as the repaired original. Only on a route with an SSRC filter.
    pub source_rtx: Option<RtxOut>,
    /// The keyframe requests the publisher understands ([`keyframe`] bits; 0: unknown, pass
    /// requests through as they come). A viewer's PLI goes up as a FIR when the publisher only
    /// takes FIR, a FIR as a PLI when it only takes PLI (RFC 4585 §6.3.1, RFC 5104 §4.3.1).
    pub keyframe: u8,
    /// This route carries one spatial layer of a simulcast source (docs/ENGINE.md
    /// "Simulcast"): the routes of a source's layers to one subscriber rewrite to the same
    /// output SSRC and the relay forwards one layer at a time on it. Only on a route with an
    /// SSRC filter and a rewritten SSRC.
    pub layer: Option<Layer>,
    /// The publisher's id of the Dependency Descriptor extension (AV1 RTP specification,
    /// appendix A) on an SVC route: the relay forwards the frames of the decode target the
    /// subscriber's caps and estimate select and re-writes the active decode targets mask
    /// (docs/ENGINE.md "SVC"). Only with a [`Layer`] of count 1 (its `max` and
    /// `max_temporal` cap the spatial and temporal layer). 0: none.
    pub dd_id: u8,
}

/// Bits of [`Rewrite::keyframe`].
pub mod keyframe {
    /// The publisher negotiated `nack pli`.
    pub const PLI: u8 = 1;
    /// The publisher negotiated `ccm fir`.
    pub const FIR: u8 = 2;
}

/// Most spatial layers of one simulcast source.
pub const MAX_LAYERS: u8 = 3;

/// A route's place in a simulcast source (see [`Rewrite::layer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer {
    /// 0 = the lowest resolution.
    pub index: u8,
    /// Layers of the source (1..=[`MAX_LAYERS`]).
    pub count: u8,
    /// Highest layer this subscriber may receive; [`Layer::NO_CAP`]: any.
    pub max: u8,
    /// Highest VP8 temporal layer (TID, 0..=[`Layer::MAX_TEMPORAL`]) this subscriber may
    /// receive; [`Layer::NO_CAP`]: any.
    pub max_temporal: u8,
}

impl Layer {
    pub const NO_CAP: u8 = u8::MAX;
    /// Highest VP8 temporal layer id (RFC 7741 §4.2: TID is two bits).
    pub const MAX_TEMPORAL: u8 = 3;
}

/// Longest MID value a route rewrites to (the one-byte header form's limit, RFC 8285 §4.2).
pub const MAX_MID_LEN: usize = 16;

impl Rewrite {
    /// The subscriber's id of the Dependency Descriptor element on an SVC route: the
    /// publisher's [`Rewrite::dd_id`] through `ext_map` (unchanged when the route maps no
    /// ids); `None` when the route has none or maps it nowhere (the subscriber did not
    /// negotiate the extension).
    pub fn dd_out(&self) -> Option<u8> {
        if self.dd_id == 0 {
            return None;
        }
        let map = &self.ext_map[..usize::from(self.ext_map_len).min(MAX_MAPPINGS)];
        if map.is_empty() {
            return Some(self.dd_id);
        }
        map.iter()
            .find(|(from, _)| *from == self.dd_id)
            .map(|&(_, to)| to)
    }

    /// The MID value this route writes, if any.
    pub fn mid(&self) -> Option<(u8, &[u8])> {
        let n = usize::from(self.mid_len);
        (n > 0 && n <= MAX_MID_LEN).then(|| (self.mid_id, &self.mid[..n]))
    }

    /// Set the MID rewrite: the subscriber's extension id and value (1–16 bytes; a longer
    /// or empty value clears it).
    pub fn set_mid(&mut self, id: u8, value: &[u8]) {
        if value.is_empty() || value.len() > MAX_MID_LEN || id == 0 {
            self.mid_len = 0;
            self.mid_id = 0;
            return;
        }
        self.mid = [0; MAX_MID_LEN];
        self.mid[..value.len()].copy_from_slice(value);
        self.mid_len = value.len() as u8;
        self.mid_id = id;
    }
}

/// An RTX stream (RFC 4588 §8: its own SSRC, a payload type bound to the original one by `apt`
/// in the SDP): a subscriber's ([`Rewrite::rtx`]) or a publisher's ([`Rewrite::source_rtx`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtxOut {
    pub payload_type: u8,
    pub ssrc: u32,
}

/// One edge publisher (+ SSRC) → subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRecord {
    pub id: RouteId,
    pub from: SessionId,
    /// `None`: every SSRC the publisher sends.
    pub ssrc: Option<u32>,
    pub to: SessionId,
    pub rewrite: Rewrite,
}

/// Why the relay dropped a datagram. One counter per reason in every worker's counter block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// First byte matches no RFC 7983 range.
    Demux = 0,
    /// Too short or inconsistent header.
    Malformed = 1,
    /// SRTP/SRTCP authentication failed.
    AuthFailed = 2,
    Replayed = 3,
    TooOld = 4,
    KeyExpired = 5,
    /// Authenticated, but nobody subscribes to it.
    NoRoute = 6,
    /// A session whose role may not publish sent media.
    NotPublisher = 7,
    /// Transmit queue full (overload).
    TxQueueFull = 8,
    /// Slow-path channel to control full or absent.
    SlowPathFull = 9,
    /// Per-source or per-session rate limit.
    RateLimited = 10,
    /// A datagram for an unknown source that is not STUN/DTLS.
    UnknownSource = 11,
    /// Send failed in the kernel.
    SendError = 12,
    /// The session's SRTP state could not be set up (bad key, too many streams).
    Crypto = 13,
    /// The packet would be encrypted into an output stream (subscriber, SSRC) that another
    /// source owns in this worker, or behind the index its previous owner reached: sending it
    /// would reuse SRTP keystream (RFC 3711 §9.1). See docs/ENGINE.md "One owner per output stream".
    SsrcCollision = 14,
    /// Larger than the worker's receive buffers (`relay.max_datagram_bytes`): the kernel
    /// truncated it, so it is dropped unread.
    Oversized = 15,
    /// A STUN message that is no ICE connectivity check (no valid FINGERPRINT, not a Binding
    /// request, or without USERNAME or MESSAGE-INTEGRITY): dropped in the relay, unanswered.
    StunNotCheck = 16,
    /// A connectivity check whose USERNAME names no ufrag (with its peer's ufrag) of any
    /// session: dropped in the relay before any HMAC.
    StunUnknownUfrag = 17,
    /// A connectivity check whose MESSAGE-INTEGRITY does not verify with the session's
    /// password: dropped in the relay.
    StunBadIntegrity = 18,
}

impl DropReason {
    pub const COUNT: usize = 19;
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Demux,
        DropReason::Malformed,
        DropReason::AuthFailed,
        DropReason::Replayed,
        DropReason::TooOld,
        DropReason::KeyExpired,
        DropReason::NoRoute,
        DropReason::NotPublisher,
        DropReason::TxQueueFull,
        DropReason::SlowPathFull,
        DropReason::RateLimited,
        DropReason::UnknownSource,
        DropReason::SendError,
        DropReason::Crypto,
        DropReason::SsrcCollision,
        DropReason::Oversized,
        DropReason::StunNotCheck,
        DropReason::StunUnknownUfrag,
        DropReason::StunBadIntegrity,
    ];
    /// Prometheus label value.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Demux => "demux",
            DropReason::Malformed => "malformed",
            DropReason::AuthFailed => "auth_failed",
            DropReason::Replayed => "replayed",
            DropReason::TooOld => "too_old",
            DropReason::KeyExpired => "key_expired",
            DropReason::NoRoute => "no_route",
            DropReason::NotPublisher => "not_publisher",
            DropReason::TxQueueFull => "tx_queue_full",
            DropReason::SlowPathFull => "slow_path_full",
            DropReason::RateLimited => "rate_limited",
            DropReason::UnknownSource => "unknown_source",
            DropReason::SendError => "send_error",
            DropReason::Crypto => "crypto",
            DropReason::SsrcCollision => "ssrc_collision",
            DropReason::Oversized => "oversized",
            DropReason::StunNotCheck => "stun_not_check",
            DropReason::StunUnknownUfrag => "stun_unknown_ufrag",
            DropReason::StunBadIntegrity => "stun_bad_integrity",
        }
    }
}
