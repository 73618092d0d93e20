//! Sluice data plane library.
//!
//! Layers, top to bottom (each module doc says what it owns and what it may not touch):
//! - [`worker`]: threads, pinning, the loop that glues [`io`] to [`engine`]; the only place that reads the clock.
//! - [`engine`]: per-worker forwarding (demux, session lookup, SRTP, routing, rewrite), a sans-I/O
//!   API the worker calls with `now`. No I/O, no clock; imports neither `worker` nor `io`.
//! - [`io`]: the io_uring and mmsg socket backends. `unsafe` lives here.
//! - [`batch`]: fixed-capacity transmit queues the engine fills and the backends drain.
//!
//! Wire formats, SRTP, the shared-memory contract, framing and config come from the
//! [`contract`] crate, which every Sluice process shares.
#![deny(unsafe_code)]

pub mod batch;
pub mod engine;
pub mod health;
pub mod io;
pub mod worker;
