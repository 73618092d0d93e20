//! SRTP/SRTCP crypto contexts. (Implementation in progress; the signatures are the contract.)

use super::{Error, MasterKey};

/// Tunables for a [`Context`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextOptions {
    /// Replay window size in packets (RFC 3711 §3.3.2); default 1024. Rounded up to a multiple of 64.
    pub replay_window: u32,
    /// Key derivation rate (RFC 3711 §4.3.1): 0 = derive session keys once; otherwise a power of two
    /// between 1 and 2^24; session keys are re-derived every `kdr` packets of the index.
    pub kdr: u64,
    /// Maximum number of SSRCs tracked by one context (state is preallocated).
    pub max_streams: usize,
    /// After `install_key`, how many packets authenticated under the new key end the grace window
    /// during which the previous key is still tried for in-flight packets.
    pub rotation_grace: u32,
}

impl Default for ContextOptions {
    fn default() -> Self {
        ContextOptions {
            replay_window: 1024,
            kdr: 0,
            max_streams: 16,
            rotation_grace: 1024,
        }
    }
}

/// One direction of one SRTP session.
pub struct Context {
    _key: MasterKey,
    _opts: ContextOptions,
}

impl Context {
    pub fn new(key: MasterKey, opts: ContextOptions) -> Result<Context, Error> {
        Ok(Context {
            _key: key,
            _opts: opts,
        })
    }
}
