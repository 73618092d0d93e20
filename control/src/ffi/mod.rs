//! Foreign-function edges of the control process. Like `relay::io` and `contract::shm`, this is
//! the only place in the crate where `unsafe` is allowed, each block with a `// SAFETY:` note.
//!
//! Owns: the OpenSSL DTLS retransmission-timer calls the `openssl` crate does not wrap.
//! May not touch: protocol state (that is `webrtc::dtls`).

pub mod dtls_ffi;
