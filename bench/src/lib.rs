//! `sluice-bench`: the Sluice load generator, as a library so its accounting can be tested.
//!
//! Layers: [`probe`] (packet layout) and [`seq`] (sequence accounting) are pure;
//! [`crypto`] wraps `contract::srtp`; [`sys`] holds the only `unsafe` (mmsg syscalls, rusage,
//! signals); [`gen`] runs the sockets and threads; [`target`] sets sessions up on the system
//! under test through [`http`] ([`rtpengine`]: the same over rtpengine's ng protocol);
//! [`tcp`] is the ICE-TCP transport of `run --transport tcp`; [`webrtc`] joins WHIP/WHEP
//! servers (and Janus) with real ICE and DTLS-SRTP on the generator's sockets; [`report`] and
//! [`plot`] present the results; [`cmd`] holds the
//! commands (`run`, `find-max`, `baseline`).
#![deny(unsafe_code)]

pub mod cmd;
pub mod crypto;
pub mod garbage;
pub mod gen;
pub mod http;
pub mod janus;
pub mod multi;
pub mod plot;
pub mod probe;
pub mod report;
pub mod rtpengine;
pub mod seq;
pub mod sys;
pub mod target;
pub mod tcp;
pub mod webrtc;

#[cfg(test)]
#[path = "../../tests/support/skip.rs"]
mod skip_report;
