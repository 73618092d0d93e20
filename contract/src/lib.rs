//! The Sluice contract: what every Sluice process shares, and nothing that opens a socket.
//!
//! `sluice-relay`, `sluice-control`, `sluicectl` and `sluice-bench` all depend on this crate;
//! none of them depends on another's internals (control cannot name the relay's I/O, engine
//! or workers: they are private to the relay crate). Modules, each with what it owns and may
//! not touch in its own doc:
//! - [`wire`]: zero-copy parsers and in-place editors for RTP, RTCP, STUN, DTLS records and
//!   the RFC 7983 demux.
//! - [`srtp`]: SRTP/SRTCP transforms and crypto contexts (RFC 3711, 6188, 7714); its
//!   multi-buffer SHA-1 kernels (`srtp::sha1mb`) are the other place `unsafe` lives.
//! - [`shm`]: the control ↔ relay shared-memory layout, its writer and reader. `unsafe` lives
//!   here.
//! - [`slowpath`]: the messages of the relay ↔ control slow-path channel.
//! - [`handover`]: the messages of the zero-loss relay upgrade.
//! - [`ratelimit`]: the token-bucket limiter both ends of the slow path apply.
//! - [`config`]: the one TOML configuration file shared by every Sluice process.
#![deny(unsafe_code)]

pub mod config;
pub mod handover;
pub mod ratelimit;
pub mod shm;
pub mod slowpath;
pub mod srtp;
pub mod wire;
