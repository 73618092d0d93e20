//! Sluice control plane (`sluice-control`): sessions, keys, routes, the admin REST API,
//! persistence, audit log and systemd integration. It never touches media: it writes
//! sessions, keys and routes into the shared-memory file the relay reads (`contract::shm`).
//!
//! Modules (each says what it owns and may not touch):
//! - [`daemon`]: process lifecycle, runtime file, signals, sd_notify, housekeeping loop.
//! - [`api`]: REST routing, validation, authentication, mutation order, reconciliation.
//! - [`http`]: a small std-only HTTP/1.1 server (loopback TCP or unix socket).
//! - [`ice`]: the I/O-free ICE-lite agent (credentials, checks, nomination, consent).
//! - [`rtc`]: WebRTC sessions between signaling and media; the slow path's DTLS sink.
//! - [`relay_channel`]: the listening end of the relay's slow-path socket.
//! - [`slowpath`]: slow-path rate limits, dispatch, the DTLS hook.
//! - [`state`]: write-ahead journal and atomic snapshots of sessions, routes and id counters.
//! - [`audit`]: the append-only JSON-lines audit log with rotation and retention.
//! - [`metrics`]: Prometheus text and `/v1/stats` from the relay's counter blocks.
//! - [`notify`]: systemd readiness and watchdog datagrams.
//! - [`util`]: time formatting, random bytes, private file writes.
//! - [`webrtc`]: tokens, applications and rooms, SDP offers/answers, DTLS-SRTP over memory.
//! - [`io`]: FFI edges (the OpenSSL DTLS timer); the only module allowed `unsafe`.
#![deny(unsafe_code)]

pub mod api;
pub mod audit;
pub mod daemon;
pub mod http;
pub mod ice;
pub mod io;
pub mod metrics;
pub mod notify;
pub mod relay_channel;
pub mod rtc;
pub mod slowpath;
pub mod state;
pub mod util;
pub mod webrtc;
