//! The packet transform a generator endpoint applies: real SRTP through `contract::srtp`, or
//! none (the plain-UDP echo baseline).
//!
//! Owns: the mapping from SRTP errors to the bench's receive verdicts. May not touch: sockets.

use contract::srtp::{Context, ContextOptions, Error, MasterKey};

/// Replay window of the subscribers' inbound contexts: wide, so that reordering by a relay is
/// measured by the bench instead of being dropped by the replay check.
pub const RX_REPLAY_WINDOW: u32 = 8192;

/// Why a received datagram was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxReject {
    /// The authentication tag did not verify (or the key was wrong).
    Auth,
    /// The SRTP index was already received: a duplicate.
    Replayed,
    /// Older than the replay window.
    TooOld,
    /// Too short or otherwise not SRTP.
    Malformed,
}

/// One endpoint's transform.
pub enum Crypto {
    /// Plain RTP (echo baseline).
    Null,
    /// SRTP with one context (outbound for a publisher, inbound for a subscriber).
    Srtp(Box<Context>),
}

impl Crypto {
    /// An SRTP context for `key` (`inbound` gets the wide replay window).
    pub fn srtp(key: MasterKey, inbound: bool) -> Result<Crypto, Error> {
        let mut opts = ContextOptions::default();
        if inbound {
            opts.replay_window = RX_REPLAY_WINDOW;
        }
        Ok(Crypto::Srtp(Box::new(Context::new(key, opts)?)))
    }

    /// Bytes `protect` adds.
    pub fn overhead(&self) -> usize {
        match self {
            Crypto::Null => 0,
            Crypto::Srtp(c) => c.profile().srtp_overhead(),
        }
    }

    /// Protect `buf[..len]` in place; the new length.
    #[inline]
    pub fn protect(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        match self {
            Crypto::Null => Ok(len),
            Crypto::Srtp(c) => c.protect_rtp(buf, len),
        }
    }

    /// Unprotect `buf[..len]` in place; the plaintext length.
    #[inline]
    pub fn unprotect(&mut self, buf: &mut [u8], len: usize) -> Result<usize, RxReject> {
        match self {
            Crypto::Null => Ok(len),
            Crypto::Srtp(c) => c.unprotect_rtp(buf, len).map_err(|e| match e {
                Error::AuthFailed => RxReject::Auth,
                Error::Replayed => RxReject::Replayed,
                Error::TooOld => RxReject::TooOld,
                _ => RxReject::Malformed,
            }),
        }
    }
}
