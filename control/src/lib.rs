//! Sluice control plane (`sluice-control`): sessions, keys, routes, the admin REST API,
//! persistence, audit log and systemd integration. It never touches media: it writes
//! sessions, keys and routes into the shared-memory file the relay reads (`contract::shm`).
//!
//! Modules (each says what it owns and may not touch), from the top down:
//! - [`daemon`]: process lifecycle, runtime file, signals, sd_notify, housekeeping loop.
//! - [`http`]: the HTTP layer — server, admin API, WHIP/WHEP and the demo, metrics rendering.
//! - [`api`]: the assembled control plane ([`api::Control`]: the core plus what the
//!   listeners need).
//! - [`slowpath`]: the slow-path layer — the relay channel, rate limits, dispatch, the DTLS
//!   sink, and the calls into the core for ICE and DTLS outcomes.
//! - [`core`]: sessions, routes, rooms, joins and the PENDING → keyed state machine, with a
//!   typed error; no HTTP.
//! - [`ice`]: the I/O-free ICE-lite agent (credentials, checks, nomination, consent).
//! - [`state`]: write-ahead journal and atomic snapshots of sessions, routes and id counters.
//! - [`audit`]: the append-only JSON-lines audit log with rotation and retention.
//! - [`webrtc`]: tokens, applications and rooms, SDP offers/answers, DTLS-SRTP over memory.
//! - [`clock`], [`files`], [`secrets`]: time, owner-only atomic files, random and secret bytes.
//! - [`ffi`]: FFI edges (the OpenSSL DTLS timer); the only module allowed `unsafe`.
#![deny(unsafe_code)]

pub mod api;
pub mod audit;
pub mod clock;
pub mod cluster;
pub mod core;
pub mod daemon;
pub mod ffi;
pub mod files;
pub mod http;
pub mod ice;
pub mod secrets;
pub mod slowpath;
pub mod state;
pub mod webrtc;

/// The relay's slow-path socket, listening end (kept at this path for existing callers).
pub use slowpath::relay_channel;
