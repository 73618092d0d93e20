//! Sluice data plane library.
//!
//! Layers, top to bottom (each module doc says what it owns and what it may not touch):
//! - [`worker`]: threads, pinning, the loop that glues [`io`] to [`engine`]; the only place that reads the clock.
//! - [`engine`]: per-worker forwarding (demux, session lookup, SRTP, routing, rewrite). No I/O, no clock.
//! - [`io`]: the io_uring and mmsg socket backends. `unsafe` lives here.
//! - [`shm`]: the control ↔ relay shared-memory contract. `unsafe` lives here.
//! - [`srtp`]: SRTP/SRTCP transforms and crypto contexts (RFC 3711, 6188, 7714).
//! - [`wire`]: zero-copy parsers for RTP, RTCP, STUN, DTLS records and the RFC 7983 demux.
//! - [`batch`]: fixed-capacity transmit queues the engine fills and the backends drain.
//! - [`config`]: the one TOML configuration file shared by every Sluice process.
#![deny(unsafe_code)]

pub mod admin_http;
pub mod batch;
pub mod config;
pub mod engine;
pub mod io;
pub mod ratelimit;
pub mod shm;
pub mod srtp;
pub mod wire;
pub mod worker;
