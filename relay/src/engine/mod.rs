//! Per-worker forwarding: demultiplex, session lookup, SRTP, routing, rewrite, re-protect.
//!
//! Owns: the worker-local index rebuilt from shared memory (source address → session, SRTP
//! contexts per session and direction, routes grouped by publisher and SSRC, output-stream
//! continuity), the per-datagram path, the batch statistics written to the worker's counter
//! block, the ICE checks it answers itself from the sessions' credentials (`stun`), this
//! worker's stream-state slots in shm (each stream's SRTP index, so a restarted relay
//! continues it; `state`) and its session-stats slots (per-session and per-stream counters
//! and reception statistics; `diag`). May not touch: sockets and the [`crate::io`]
//! backends, the worker (nothing here imports [`crate::worker`]; the worker calls this API),
//! the clock (every call that needs the time is given `now`), threads. Nothing on the
//! per-datagram path allocates, locks or makes a syscall. `docs/ENGINE.md` describes the path
//! as built.
//!
//! The API is sans-I/O: [`Engine::begin_batch`]`(now)`, [`Engine::handle_datagram`] once per
//! received datagram (what it emits goes into the transmit queue the caller hands it, what
//! belongs to control into the slow-path queue), [`Engine::poll`]`(now, tx)` (feedback handed
//! over by other workers, NACKs due to publishers), [`Engine::end_batch`]`(now)`.
//!
//! Loss recovery (`nack`, `rtx_cache`) and feedback between workers (`hub`) are described in
//! docs/ENGINE.md "Loss recovery" and "Feedback across workers".
//!
//! Layers inside: [`Forwarder`] is the pure logic over records (what tests and benches drive
//! directly); [`Engine`] adds the shared-memory reader (generation check once per batch) and
//! counter flushing.

pub mod bwe;
mod continuity;
mod crypto;
pub mod diag;
mod forward;
pub mod hub;
mod index;
pub mod layers;
pub mod nack;
pub mod probe;
pub mod reception;
pub mod remb_rx;
pub mod rtx_cache;
mod state;
pub mod stun;
pub mod svc;
pub mod twcc_rx;

pub use continuity::Continuity;
pub use crypto::{rx_drop_reason, tx_drop_reason, SrtpOps};
pub use forward::{feedback_ssrc, Forwarder, SlowGateRates};
pub use hub::FeedbackHub;
pub use index::{normalize, Owned, RebuildReport, OWNER_NONE, OWNER_REWRITE};
pub use nack::NackConfig;
pub use state::{estimate_index, StreamState, Track, REFRESH, SKIP};

use crate::batch::TxQueue;
use contract::shm::{CounterSnapshot, DropReason, RouteRecord, SessionRecord, ShmReader};
use contract::srtp::ContextOptions;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Engine tunables.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// This worker's index (its counter block in shared memory).
    pub worker: usize,
    /// Options for every SRTP context. `max_streams` bounds the SSRCs one session direction
    /// tracks: an outbound context carries one stream per SSRC the subscriber receives.
    pub srtp: ContextOptions,
    /// The relay-side slow-path limit (see [`Forwarder::set_slow_gate`]); `None` = only
    /// malformed STUN/DTLS is dropped before control.
    pub slow_gate: Option<SlowGateRates>,
    /// Loss recovery: retransmission cache, NACK handling, key-frame request aggregation.
    pub nack: NackConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            worker: 0,
            srtp: ContextOptions {
                max_streams: 64,
                ..ContextOptions::default()
            },
            slow_gate: None,
            nack: NackConfig::default(),
        }
    }
}

/// One worker's engine: a [`Forwarder`] fed from shared memory.
pub struct Engine<C: SrtpOps = contract::srtp::Context> {
    shm: Arc<ShmReader>,
    worker: usize,
    /// The generation the index was built from; `None` forces a rebuild.
    indexed: Option<u64>,
    fwd: Forwarder<C>,
    session_buf: Vec<SessionRecord>,
    route_buf: Vec<RouteRecord>,
    batch_start: Option<Instant>,
    totals: CounterSnapshot,
    last_rebuild: RebuildReport,
    rebuilds: u64,
}

impl<C: SrtpOps> Engine<C> {
    /// An engine reading `shm`; the index is built at the first [`Engine::begin_batch`].
    pub fn new(shm: Arc<ShmReader>, cfg: EngineConfig) -> Engine<C> {
        let mut fwd = Forwarder::new(cfg.srtp);
        fwd.set_slow_gate(cfg.slow_gate);
        fwd.set_nack(cfg.nack);
        fwd.attach_stream_state(shm.clone(), cfg.worker);
        fwd.attach_diagnostics(shm.clone(), cfg.worker, std::process::id());
        Engine {
            shm,
            worker: cfg.worker,
            indexed: None,
            fwd,
            session_buf: Vec::new(),
            route_buf: Vec::new(),
            batch_start: None,
            totals: CounterSnapshot::default(),
            last_rebuild: RebuildReport::default(),
            rebuilds: 0,
        }
    }

    /// Start a batch at `now`: one generation load; a rebuild when control changed anything.
    pub fn begin_batch(&mut self, now: Instant) {
        self.batch_start = Some(now);
        self.fwd.set_now(now);
        self.refresh();
    }

    /// Rebuild the index if the shared-memory generation moved. Returns true if it rebuilt.
    pub fn refresh(&mut self) -> bool {
        // Read the generation before scanning (ShmReader contract): a change during the scan
        // leaves a newer generation behind and the next batch rebuilds again.
        let g = self.shm.generation();
        if self.indexed == Some(g) {
            return false;
        }
        self.session_buf.clear();
        self.route_buf.clear();
        let sessions = &mut self.session_buf;
        let rs = self.shm.for_each_session(|s| sessions.push(*s));
        let routes = &mut self.route_buf;
        let rr = self.shm.for_each_route(|r| routes.push(*r));
        // A slot the writer held locked through the retry budget: index what we have, and try
        // again at the next batch.
        self.indexed = if rs.busy == 0 && rr.busy == 0 {
            Some(g)
        } else {
            None
        };
        self.last_rebuild = self.fwd.rebuild(&mut self.session_buf, &mut self.route_buf);
        self.rebuilds += 1;
        tracing::debug!(
            worker = self.worker,
            generation = g,
            sessions = self.last_rebuild.sessions,
            routes = self.last_rebuild.routes,
            "index rebuilt"
        );
        true
    }

    /// Handle one received datagram `buf[..len]` from `src` (see [`Forwarder::handle`]):
    /// what it forwards is queued in `tx`, what belongs to control in `slow` (the `dst` of a
    /// slow entry is the peer it came from). `buf` is the whole receive buffer; the datagram
    /// is decrypted and rewritten in place.
    #[inline]
    pub fn handle_datagram(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        tx: &mut TxQueue,
        slow: &mut TxQueue,
    ) {
        self.fwd.handle(src, buf, len, tx, slow);
    }

    /// Go on with a fan-out larger than what was left of the transmit queue, after the worker
    /// sent the queue; true while some of it is left for another call (docs/ENGINE.md
    /// "Large fan-outs").
    pub fn resume_fan_out(&mut self, tx: &mut TxQueue) -> bool {
        self.fwd.resume(tx)
    }

    /// The queue of a pending fan-out could not be sent: count the rest as dropped.
    pub fn abandon_fan_out(&mut self) {
        self.fwd.abandon();
    }

    /// `n` replies from control (STUN answers, DTLS flights) were queued for sending this
    /// turn; counted in shm (`slow_path_down`).
    pub fn handle_slow_path_replies(&mut self, n: u64) {
        if let Some(c) = self.shm.worker_counters(self.worker) {
            c.slow_path_down(n);
        }
    }

    /// Exchange feedback with the other workers through `hub` (one hub per process, every
    /// worker attached with its own index).
    pub fn attach_hub(&mut self, hub: Arc<FeedbackHub>) {
        self.fwd.attach_hub(hub, self.worker);
    }

    /// After [`Engine::poll`]: the workers this one handed feedback to this turn, each once
    /// (the worker wakes them, see [`Forwarder::take_wakes`]).
    pub fn take_wakes(&mut self, wake: &mut dyn FnMut(usize)) {
        self.fwd.take_wakes(wake);
    }

    /// Once per loop turn, before [`Engine::end_batch`]: handle the feedback other workers
    /// handed over and send the NACKs due to publishers, into `tx` (see [`Forwarder::poll`]).
    pub fn poll(&mut self, now: Instant, tx: &mut TxQueue) {
        self.fwd.poll(now, tx);
    }

    /// The latest time the worker should run its next turn (and so [`Engine::poll`]) for the
    /// engine's timers to keep their pace: set only while a bandwidth probe is being paced
    /// (every 5 ms, docs/ENGINE.md "Probing"); `None` leaves the worker's poll interval.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.fwd.probe_deadline()
    }

    /// End the batch at `now` (the caller's clock): add its statistics and processing time
    /// (`now` minus the [`Engine::begin_batch`] time) to this worker's counter block.
    pub fn end_batch(&mut self, now: Instant) {
        let s = self.fwd.take_stats();
        if let Some(c) = self.shm.worker_counters(self.worker) {
            c.add(&s);
            if s.packets_in != 0 {
                let nanos = self
                    .batch_start
                    .map_or(0, |t| now.saturating_duration_since(t).as_nanos() as u64);
                c.record_batch(s.packets_in, nanos);
            }
        }
        self.totals.merge(&s);
        self.batch_start = None;
        // At most every PUBLISH_INTERVAL, never per packet; an idle worker still ends a batch
        // every poll interval, so the records stay fresh.
        self.fwd.publish_diagnostics(now);
    }

    /// The wall clock read at `at` was `unix_ms`: the published packet times (unix ms) are
    /// derived from it, so the engine never reads the wall clock. The worker sets it once.
    pub fn set_wall_clock(&mut self, at: Instant, unix_ms: u64) {
        self.fwd.set_wall_clock(at, unix_ms);
    }

    /// The worker's loop turn ended (`stalled`: it took longer than the stall threshold);
    /// counted in shm (`loop_turns`, `stalls`).
    pub fn handle_turn_end(&mut self, stalled: bool) {
        if let Some(c) = self.shm.worker_counters(self.worker) {
            c.loop_turn();
            if stalled {
                c.stall();
            }
        }
    }

    /// `n` datagrams larger than the worker's receive buffers were dropped by its backend;
    /// counted in shm as drop reason `oversized`.
    pub fn handle_oversized(&mut self, n: u64) {
        if let Some(c) = self.shm.worker_counters(self.worker) {
            c.drop_n(DropReason::Oversized, n);
        }
        let r = DropReason::Oversized as usize;
        self.totals.drops[r] = self.totals.drops[r].wrapping_add(n);
    }

    /// Everything counted since the engine started (flushed batches only).
    pub fn totals(&self) -> &CounterSnapshot {
        &self.totals
    }

    /// What the last rebuild found.
    pub fn last_rebuild(&self) -> RebuildReport {
        self.last_rebuild
    }

    /// How many times the index was rebuilt.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    pub fn forwarder(&self) -> &Forwarder<C> {
        &self.fwd
    }

    /// See [`Forwarder::set_multi_buffer_mac`].
    pub fn set_multi_buffer_mac(&mut self, on: bool) {
        self.fwd.set_multi_buffer_mac(on);
    }

    pub fn worker(&self) -> usize {
        self.worker
    }
}

#[cfg(test)]
mod diag_tests;
#[cfg(test)]
mod layer_tests;
#[cfg(test)]
mod probe_tests;
#[cfg(test)]
mod roc_tests;
#[cfg(test)]
mod tests;
