//! WebRTC building blocks of the control plane: tokens, applications and rooms, SDP
//! offer/answer, and DTLS-SRTP. Pure logic; the daemon wires them to HTTP and the slow path.
//!
//! Owns: the modules below. May not touch: sockets, shared memory, the HTTP server, the clock
//! (time is passed in), global state.

pub mod apps;
pub mod dtls;
pub mod sdp;
pub mod token;
