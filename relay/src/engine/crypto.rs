//! The SRTP operations the engine needs from one direction of one session.
//!
//! The engine is generic over this trait so that its routing logic can also be driven by a
//! transparent test cipher; production uses [`contract::srtp::Context`]. Every method works in
//! place on the caller's buffer: `buf[..len]` is the packet, the result is the new length
//! (`protect_rtp_from` reads the payload's tail from a second, shared buffer).

use contract::shm::DropReason;
use contract::srtp::{ContextOptions, Error, MacBatch, MasterKey};

/// One direction (inbound or outbound) of one session's SRTP state.
pub trait SrtpOps: Sized {
    /// A context for `key`; per-SSRC state is preallocated per `opts`.
    fn create(key: MasterKey, opts: ContextOptions) -> Result<Self, Error>;
    /// Switch to a new master key of the same profile without losing in-flight packets
    /// (rollover counters and replay windows survive).
    fn rekey(&mut self, key: MasterKey) -> Result<(), Error>;
    fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error>;
    /// Protect one output of a fan-out whose slot starts at byte `at` of the transmit arena;
    /// a tag may be left to `batch` (see [`contract::srtp::MacBatch`]), written when the
    /// fan-out calls `batch.finish`. By default the packet is protected at once.
    #[inline]
    fn protect_rtp_batched(
        &mut self,
        buf: &mut [u8],
        len: usize,
        at: usize,
        batch: &mut MacBatch,
    ) -> Result<usize, Error> {
        let _ = (at, batch);
        self.protect_rtp(buf, len)
    }
    /// [`SrtpOps::protect_rtp_batched`] of the packet `buf[..len] ‖ rest`: `buf[..len]` holds
    /// at least the (rewritten) header, `rest` the remainder of the payload, which the
    /// production context encrypts straight into `buf` (no copy per output). The result is
    /// what copying `rest` to `buf[len..]` and protecting in place gives, which is what this
    /// default does.
    #[inline]
    fn protect_rtp_from(
        &mut self,
        buf: &mut [u8],
        len: usize,
        rest: &[u8],
        at: usize,
        batch: &mut MacBatch,
    ) -> Result<usize, Error> {
        let end = len + rest.len();
        buf.get_mut(len..end)
            .ok_or(Error::BufferTooSmall)?
            .copy_from_slice(rest);
        self.protect_rtp_batched(buf, end, at, batch)
    }
    fn unprotect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error>;
    fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error>;
    fn unprotect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error>;
    /// Start `ssrc`'s SRTP flow at rollover counter `roc` (RFC 3711 §3.3.1), for a stream
    /// whose state a previous relay process left in shm. Called only for SSRCs the context
    /// does not track yet.
    fn set_roc(&mut self, ssrc: u32, roc: u32) -> Result<(), Error>;
    /// The rollover counter of `ssrc`, `None` when the context does not track it.
    fn roc(&self, ssrc: u32) -> Option<u32>;
    /// Continue `ssrc`'s SRTP flow after packet index `highest` (ROC ‖ SEQ; everything up to
    /// it counts as seen), for state a previous relay process left in shm.
    fn resume_rtp(&mut self, ssrc: u32, highest: u64) -> Result<(), Error>;
    /// Continue `ssrc`'s SRTCP flow after index `highest` (everything up to it counts as used),
    /// for state a previous relay process left in shm.
    fn resume_rtcp(&mut self, ssrc: u32, highest: u64) -> Result<(), Error>;
    /// The highest SRTCP index sent or accepted for `ssrc`, `None` before the first.
    fn srtcp_index(&self, ssrc: u32) -> Option<u64>;
}

/// Production: the SRTP contexts of [`contract::srtp`].
impl SrtpOps for contract::srtp::Context {
    #[inline]
    fn create(key: MasterKey, opts: ContextOptions) -> Result<Self, Error> {
        contract::srtp::Context::new(key, opts)
    }
    #[inline]
    fn rekey(&mut self, key: MasterKey) -> Result<(), Error> {
        self.install_key(key)
    }
    #[inline]
    fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        contract::srtp::Context::protect_rtp(self, buf, len)
    }
    #[inline]
    fn protect_rtp_batched(
        &mut self,
        buf: &mut [u8],
        len: usize,
        at: usize,
        batch: &mut MacBatch,
    ) -> Result<usize, Error> {
        contract::srtp::Context::protect_rtp_batched(self, buf, len, at, batch)
    }
    #[inline]
    fn protect_rtp_from(
        &mut self,
        buf: &mut [u8],
        len: usize,
        rest: &[u8],
        at: usize,
        batch: &mut MacBatch,
    ) -> Result<usize, Error> {
        contract::srtp::Context::protect_rtp_batched_from(self, buf, len, rest, at, batch)
    }
    #[inline]
    fn unprotect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        contract::srtp::Context::unprotect_rtp(self, buf, len)
    }
    #[inline]
    fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        contract::srtp::Context::protect_rtcp(self, buf, len)
    }
    #[inline]
    fn unprotect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        contract::srtp::Context::unprotect_rtcp(self, buf, len)
    }
    #[inline]
    fn set_roc(&mut self, ssrc: u32, roc: u32) -> Result<(), Error> {
        contract::srtp::Context::set_roc(self, ssrc, roc)
    }
    #[inline]
    fn roc(&self, ssrc: u32) -> Option<u32> {
        contract::srtp::Context::roc(self, ssrc)
    }
    #[inline]
    fn resume_rtp(&mut self, ssrc: u32, highest: u64) -> Result<(), Error> {
        contract::srtp::Context::resume_rtp(self, ssrc, highest)
    }
    #[inline]
    fn resume_rtcp(&mut self, ssrc: u32, highest: u64) -> Result<(), Error> {
        contract::srtp::Context::resume_rtcp(self, ssrc, highest)
    }
    #[inline]
    fn srtcp_index(&self, ssrc: u32) -> Option<u64> {
        contract::srtp::Context::srtcp_index(self, ssrc)
    }
}

/// The drop counter for an SRTP failure on the receive side (RFC 3711 §3.3: replay check,
/// authentication, then decryption; each failure has its own counter).
pub fn rx_drop_reason(e: Error) -> DropReason {
    match e {
        Error::AuthFailed => DropReason::AuthFailed,
        Error::Replayed => DropReason::Replayed,
        Error::TooOld => DropReason::TooOld,
        Error::Malformed | Error::BufferTooSmall => DropReason::Malformed,
        Error::KeyExpired => DropReason::KeyExpired,
        // Set-up failures (profile, key length, stream table full, ...).
        #[allow(unreachable_patterns)]
        _ => DropReason::Crypto,
    }
}

/// The drop counter for an SRTP failure on the send side.
pub fn tx_drop_reason(e: Error) -> DropReason {
    match e {
        Error::KeyExpired => DropReason::KeyExpired,
        Error::Malformed => DropReason::Malformed,
        _ => DropReason::Crypto,
    }
}
