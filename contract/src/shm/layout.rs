//! The byte layout of the shared-memory file. `docs/SHM.md` has the same table for humans.
//!
//! ```text
//! offset 0                      header (4096 bytes, page-aligned, `Header`)
//! sessions_offset = 4096        session slots, capacity.sessions × SESSION_SLOT_SIZE
//! routes_offset  (page-aligned) route slots,   capacity.routes   × ROUTE_SLOT_SIZE
//! counters_offset(page-aligned) counter blocks, capacity.workers × COUNTER_BLOCK_SIZE
//! streams_offset (page-aligned) stream-state high-water marks, capacity.workers × u32
//! stream_slots_offset (page-aligned) stream-state slots, capacity.workers × streams × STREAM_SLOT_SIZE
//! stats_offset   (page-aligned) session-stats high-water marks, capacity.workers × u32
//! stat_slots_offset (page-aligned) session-stats slots, workers × stats × STAT_SLOT_SIZE
//! file_size      (page-aligned)
//! ```
//! Every field is an atomic: the header is written by control (layout, generation), by the
//! relay (relay info) and read by everyone, so plain fields would be data races.

use super::counters::WorkerCounters;
use super::error::ShmError;
use super::seqlock::Slot;
use core::sync::atomic::{AtomicU32, AtomicU64};
// Padding is atomic too: the whole header is shared with other processes, and a `&Header`
// must not cover plain bytes someone else may write.

/// `b"SLUICESH"` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SLUICESH");
/// Bumped on any change to the header, the slot encoding or the counter block. Both processes
/// must speak the same version; there is no in-place migration (see docs/SHM.md).
pub const ABI_VERSION: u32 = 8;
/// Where control creates the file unless configured otherwise.
pub const DEFAULT_PATH: &str = "/dev/shm/sluice";

pub(crate) const PAGE: u64 = 4096;

/// Payload words of a session slot (1 sequence word + 39 = 40 words = 320 bytes; ABI 6 grew
/// it from 192 bytes for the ICE credentials).
pub(crate) const SESSION_WORDS: usize = 39;
/// Payload words of a route slot (1 sequence word + 15 = 16 words = 128 bytes).
pub(crate) const ROUTE_WORDS: usize = 15;
pub(crate) type SessionSlot = Slot<SESSION_WORDS>;
pub(crate) type RouteSlot = Slot<ROUTE_WORDS>;
/// Payload words of a stream-state slot (1 sequence word + 7 = 8 words = 64 bytes).
pub(crate) const STREAM_WORDS: usize = 7;
pub(crate) type StreamSlot = Slot<STREAM_WORDS>;
/// Payload words of a session-stats slot (1 sequence word + 15 = 16 words = 128 bytes).
pub(crate) const STAT_WORDS: usize = 15;
pub(crate) type StatSlot = Slot<STAT_WORDS>;

pub(crate) const HEADER_SIZE: usize = core::mem::size_of::<Header>();
pub(crate) const SESSION_SLOT_SIZE: usize = core::mem::size_of::<SessionSlot>();
pub(crate) const ROUTE_SLOT_SIZE: usize = core::mem::size_of::<RouteSlot>();
pub(crate) const COUNTER_BLOCK_SIZE: usize = core::mem::size_of::<WorkerCounters>();
pub(crate) const STREAM_SLOT_SIZE: usize = core::mem::size_of::<StreamSlot>();
pub(crate) const STAT_SLOT_SIZE: usize = core::mem::size_of::<StatSlot>();

/// Largest capacities a file may declare (keeps every offset far from overflow and the file
/// under ~3 GiB).
pub(crate) const MAX_SESSIONS: u32 = 1 << 22;
pub(crate) const MAX_ROUTES: u32 = 1 << 24;
pub(crate) const MAX_WORKERS: u32 = 1024;
/// Largest number of stream-state slots per worker.
pub const MAX_STREAMS_PER_WORKER: u32 = 1 << 16;
/// Stream-state slots per worker when the creator does not choose (`shm.streams_per_worker`).
pub const DEFAULT_STREAMS_PER_WORKER: u32 = 2048;
/// Largest number of session-stats slots per worker.
pub const MAX_STATS_PER_WORKER: u32 = 1 << 16;
/// Session-stats slots per worker (one per session the worker handled plus one per stream of
/// it; docs/SHM.md "Session-stats slot").
pub const DEFAULT_STATS_PER_WORKER: u32 = 8192;

/// Table sizes, chosen by control when it creates the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capacity {
    pub sessions: u32,
    pub routes: u32,
    /// Counter blocks: the largest number of relay workers that get counters.
    pub workers: u32,
}

impl Default for Capacity {
    fn default() -> Capacity {
        Capacity {
            sessions: 16_384,
            routes: 65_536,
            workers: 64,
        }
    }
}

impl Capacity {
    /// Size in bytes of a file with these capacities.
    pub fn file_size(&self) -> Result<u64, ShmError> {
        Ok(Layout::for_capacity(*self)?.file_size)
    }
}

/// Payload words of the relay-info block: 0 pid | workers<<32 · 1 start unix ms ·
/// 2–3 backend name (16 bytes, NUL-padded UTF-8).
pub(crate) const RELAY_INFO_WORDS: usize = 4;
/// The relay's self-description, inside the header: written by the relay under its own
/// sequence lock, read by control and sluicectl. Worker heartbeats live in the counter blocks.
pub(crate) type RelayInfoSlot = Slot<RELAY_INFO_WORDS>;

/// The file header. `#[repr(C)]`, 4096-byte aligned and sized, so the tables start on a page.
#[repr(C, align(4096))]
pub(crate) struct Header {
    /// [`MAGIC`]; stored last at create time (Release), so a reader that sees it sees the rest.
    pub magic: AtomicU64,
    pub abi_version: AtomicU32,
    pub header_size: AtomicU32,
    pub session_slot_size: AtomicU32,
    pub route_slot_size: AtomicU32,
    pub counter_block_size: AtomicU32,
    pub session_capacity: AtomicU32,
    pub route_capacity: AtomicU32,
    pub worker_capacity: AtomicU32,
    pub sessions_offset: AtomicU64,
    pub routes_offset: AtomicU64,
    pub counters_offset: AtomicU64,
    pub file_size: AtomicU64,
    /// Pid of the control process that created or last adopted the file.
    pub writer_pid: AtomicU32,
    /// Size of one stream-state slot (ABI 3).
    pub stream_slot_size: AtomicU32,
    /// Stream-state slots per worker (ABI 3).
    pub stream_capacity: AtomicU32,
    _pad0a: AtomicU32,
    /// Offset of the stream-state region (ABI 3).
    pub streams_offset: AtomicU64,
    /// Offset of the session-stats region (ABI 6).
    pub stats_offset: AtomicU64,
    /// Size of one session-stats slot (ABI 6).
    pub stat_slot_size: AtomicU32,
    /// Session-stats slots per worker (ABI 6).
    pub stat_capacity: AtomicU32,
    _pad0: [AtomicU32; 4],
    // --- offset 128: written by control on every mutation ---
    /// Bumped (Release) after every slot write.
    pub generation: AtomicU64,
    /// Low 32 bits of `generation`, the futex word idle workers sleep on.
    pub generation_futex: AtomicU32,
    /// Number of threads sleeping in `wait_generation`; the writer only wakes when > 0.
    pub waiters: AtomicU32,
    /// One past the highest session slot ever used (readers scan `0..high_water`).
    pub session_high_water: AtomicU32,
    pub route_high_water: AtomicU32,
    _pad1: [AtomicU64; 5],
    // --- offset 192: written by the relay ---
    pub relay: RelayInfoSlot,
}

// Offsets documented in docs/SHM.md; a change here is an ABI change.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(Header, magic) == 0);
    assert!(offset_of!(Header, abi_version) == 8);
    assert!(offset_of!(Header, header_size) == 12);
    assert!(offset_of!(Header, session_slot_size) == 16);
    assert!(offset_of!(Header, route_slot_size) == 20);
    assert!(offset_of!(Header, counter_block_size) == 24);
    assert!(offset_of!(Header, session_capacity) == 28);
    assert!(offset_of!(Header, route_capacity) == 32);
    assert!(offset_of!(Header, worker_capacity) == 36);
    assert!(offset_of!(Header, sessions_offset) == 40);
    assert!(offset_of!(Header, routes_offset) == 48);
    assert!(offset_of!(Header, counters_offset) == 56);
    assert!(offset_of!(Header, file_size) == 64);
    assert!(offset_of!(Header, writer_pid) == 72);
    assert!(offset_of!(Header, stream_slot_size) == 76);
    assert!(offset_of!(Header, stream_capacity) == 80);
    assert!(offset_of!(Header, streams_offset) == 88);
    assert!(offset_of!(Header, stats_offset) == 96);
    assert!(offset_of!(Header, stat_slot_size) == 104);
    assert!(offset_of!(Header, stat_capacity) == 108);
    assert!(offset_of!(Header, generation) == 128);
    assert!(offset_of!(Header, generation_futex) == 136);
    assert!(offset_of!(Header, waiters) == 140);
    assert!(offset_of!(Header, session_high_water) == 144);
    assert!(offset_of!(Header, route_high_water) == 148);
    assert!(offset_of!(Header, relay) == 192);
    assert!(core::mem::size_of::<RelayInfoSlot>() == 64);
    assert!(core::mem::size_of::<Header>() == 4096);
    assert!(core::mem::size_of::<SessionSlot>() == 320);
    assert!(core::mem::size_of::<RouteSlot>() == 128);
    assert!(core::mem::size_of::<StreamSlot>() == 64);
    assert!(core::mem::size_of::<StatSlot>() == 128);
    assert!(core::mem::size_of::<WorkerCounters>() % 64 == 0);
};

/// Where everything is, for one capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub capacity: Capacity,
    pub sessions_offset: u64,
    pub routes_offset: u64,
    pub counters_offset: u64,
    /// Stream-state slots per worker.
    pub streams: u32,
    /// The per-worker stream-state high-water marks (u32 each), then, page-aligned, the slots.
    pub streams_offset: u64,
    pub stream_slots_offset: u64,
    /// Session-stats slots per worker.
    pub stats: u32,
    /// The per-worker session-stats high-water marks (u32 each), then, page-aligned, the slots.
    pub stats_offset: u64,
    pub stat_slots_offset: u64,
    pub file_size: u64,
}

fn page_up(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

fn check_range(what: &'static str, value: u32, max: u32) -> Result<(), ShmError> {
    if value == 0 || value > max {
        return Err(ShmError::Capacity {
            what,
            value: u64::from(value),
            max: u64::from(max),
        });
    }
    Ok(())
}

impl Layout {
    pub(crate) fn for_capacity(capacity: Capacity) -> Result<Layout, ShmError> {
        Layout::with_streams(capacity, DEFAULT_STREAMS_PER_WORKER)
    }

    pub(crate) fn with_streams(capacity: Capacity, streams: u32) -> Result<Layout, ShmError> {
        Layout::with_regions(capacity, streams, DEFAULT_STATS_PER_WORKER)
    }

    pub(crate) fn with_regions(
        capacity: Capacity,
        streams: u32,
        stats: u32,
    ) -> Result<Layout, ShmError> {
        check_range("sessions", capacity.sessions, MAX_SESSIONS)?;
        check_range("streams per worker", streams, MAX_STREAMS_PER_WORKER)?;
        check_range("session stats per worker", stats, MAX_STATS_PER_WORKER)?;
        check_range("routes", capacity.routes, MAX_ROUTES)?;
        check_range("workers", capacity.workers, MAX_WORKERS)?;
        // The bounds above keep every product below 2^32 × 320, far from u64 overflow.
        let sessions_offset = HEADER_SIZE as u64;
        let routes_offset =
            page_up(sessions_offset + u64::from(capacity.sessions) * SESSION_SLOT_SIZE as u64);
        let counters_offset =
            page_up(routes_offset + u64::from(capacity.routes) * ROUTE_SLOT_SIZE as u64);
        let streams_offset =
            page_up(counters_offset + u64::from(capacity.workers) * COUNTER_BLOCK_SIZE as u64);
        let stream_slots_offset = page_up(streams_offset + u64::from(capacity.workers) * 4);
        // ≤ 2^10 workers × 2^16 slots × 64 bytes = 4 GiB: no overflow in u64.
        let stats_offset = page_up(
            stream_slots_offset
                + u64::from(capacity.workers) * u64::from(streams) * STREAM_SLOT_SIZE as u64,
        );
        let stat_slots_offset = page_up(stats_offset + u64::from(capacity.workers) * 4);
        // ≤ 2^10 workers × 2^16 slots × 128 bytes = 8 GiB: no overflow in u64.
        let file_size = page_up(
            stat_slots_offset
                + u64::from(capacity.workers) * u64::from(stats) * STAT_SLOT_SIZE as u64,
        );
        Ok(Layout {
            capacity,
            sessions_offset,
            routes_offset,
            counters_offset,
            streams,
            streams_offset,
            stream_slots_offset,
            stats,
            stats_offset,
            stat_slots_offset,
            file_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout() {
        let l = Layout::for_capacity(Capacity::default()).unwrap();
        assert_eq!(l.sessions_offset, 4096);
        assert_eq!(l.routes_offset, 4096 + 16_384 * 320);
        assert_eq!(l.counters_offset, l.routes_offset + 65_536 * 128);
        assert_eq!(l.counters_offset % PAGE, 0);
        assert_eq!(
            l.streams_offset,
            page_up(l.counters_offset + 64 * COUNTER_BLOCK_SIZE as u64)
        );
        assert_eq!(l.streams, DEFAULT_STREAMS_PER_WORKER);
        assert_eq!(l.stream_slots_offset, l.streams_offset + 4096);
        assert_eq!(l.stats_offset, l.stream_slots_offset + 64 * 2048 * 64);
        assert_eq!(l.stats, DEFAULT_STATS_PER_WORKER);
        assert_eq!(l.stat_slots_offset, l.stats_offset + 4096);
        assert_eq!(l.file_size, l.stat_slots_offset + 64 * 8192 * 128);
    }

    #[test]
    fn capacity_bounds() {
        let bad = Capacity {
            sessions: 0,
            ..Capacity::default()
        };
        assert!(matches!(
            Layout::for_capacity(bad),
            Err(ShmError::Capacity {
                what: "sessions",
                ..
            })
        ));
        let bad = Capacity {
            workers: MAX_WORKERS + 1,
            ..Capacity::default()
        };
        assert!(matches!(
            Layout::for_capacity(bad),
            Err(ShmError::Capacity {
                what: "workers",
                ..
            })
        ));
    }
}
