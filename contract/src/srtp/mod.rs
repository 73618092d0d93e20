//! SRTP and SRTCP (RFC 3711), AES-256 counter mode (RFC 6188) and AES-GCM (RFC 7714).
//!
//! Owns: profiles, master keys, key derivation, per-SSRC stream state (rollover counter,
//! replay window), the in-place `protect`/`unprotect` transforms and master-key rotation.
//! May not touch: sockets, threads, the clock, shared memory. Nothing here allocates per packet.
// Public API contract (other modules code against this; keep it stable):
//
//   Profile            — the six profiles; names as in the IANA registry ("AES_CM_128_HMAC_SHA1_80", ...)
//   MasterKey          — master key ‖ master salt for a profile (from raw bytes or SDES base64)
//   Error              — typed errors (authentication failed, replayed, too old, malformed,
//                        key expired, unsupported profile, buffer too small, ...)
//   ContextOptions     — replay window size, key derivation rate, max streams, rotation grace
//   Context            — one direction (inbound or outbound) of one session: a master key
//                        (plus an optional previous one during rotation) and per-SSRC streams.
//       protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error>
//       unprotect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error>
//       protect_rtp_batched(&mut self, buf, len, at, &mut MacBatch) — fan-out: tags deferred
//                          to MacBatch::finish(arena), multi-buffer HMAC-SHA1 (sha1mb)
//       protect_rtp_batched_from(&mut self, buf, len, rest, at, &mut MacBatch) — the same for
//                          the packet buf[..len] ‖ rest: the payload tail is encrypted from
//                          `rest` into `buf` (out of place), no copy first
//       protect_rtcp / unprotect_rtcp (same shape)
//       install_key(&mut self, key: MasterKey)  — rotation without loss
//       set_roc(&mut self, ssrc, roc) / roc(&self, ssrc) — ROC signalled out of band
//   self_test()        — one published vector per profile; call at start-up
//   `buf[..len]` is the packet; the result length is the new packet length in `buf`.
//   protect needs `buf.len() >= len + profile.srtp_overhead()` (resp. srtcp_overhead()).

mod batch;
mod context;
mod crypto;
mod keys;
mod profile;
pub mod sha1mb;
mod transform;
mod vectors;

pub use batch::{MacBatch, MAX_PENDING};
pub use context::{Context, ContextOptions, SRTCP_KEY_LIFETIME, SRTP_KEY_LIFETIME};
pub use profile::{KeyParseError, MasterKey, Profile};
pub use vectors::self_test;

/// Why a packet could not be protected or unprotected. One variant per drop reason;
/// the engine maps each to its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The authentication tag (HMAC-SHA1 or GCM tag) did not verify.
    #[error("authentication failed")]
    AuthFailed,
    /// The packet index was already received (RFC 3711 §3.3.2).
    #[error("replayed packet")]
    Replayed,
    /// The packet index is older than the replay window.
    #[error("packet too old for the replay window")]
    TooOld,
    /// The packet is too short or its header is inconsistent.
    #[error("malformed packet")]
    Malformed,
    /// The master key reached its lifetime (2^48 SRTP / 2^31 SRTCP packets); a new key is needed.
    #[error("master key expired")]
    KeyExpired,
    /// The profile name or id is not one Sluice implements.
    #[error("unsupported SRTP profile")]
    UnsupportedProfile,
    /// The key material has the wrong length for the profile.
    #[error("wrong key length for profile: expected {expected} bytes of key and salt, got {got}")]
    KeyLength { expected: usize, got: usize },
    /// The caller's buffer has no room for the authentication tag / trailer.
    #[error("buffer too small for the SRTP overhead")]
    BufferTooSmall,
    /// The context already tracks its maximum number of SSRCs.
    #[error("too many streams in this context")]
    TooManyStreams,
    /// `ContextOptions` out of range: kdr not 0 or a power of two ≤ 2^24, replay window above
    /// 2^15, or zero streams.
    #[error("invalid SRTP context options")]
    InvalidOptions,
}
