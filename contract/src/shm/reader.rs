//! The readers: relay workers (index rebuild, counters, heartbeats), sluicectl and metrics.
//! Reading never blocks or slows the writer.

use super::codec::{decode_route, decode_session};
use super::counters::{CounterSnapshot, WorkerCounters};
use super::error::{ShmError, SlotError, Table};
use super::layout::{Capacity, RELAY_INFO_WORDS, STAT_WORDS, STREAM_WORDS};
use super::map::{check_image, futex_wait, Mapping};
use super::seqlock::{Read, Slot};
use super::stats::{decode_stat, encode_stat, Diagnostics, StatRecord};
use super::streams::{decode_stream, encode_stream, StreamRecord};
use super::{RouteRecord, SessionRecord};
use core::sync::atomic::{AtomicU64, Ordering};
use std::path::Path;
use std::time::Duration;

/// Longest backend name stored in the relay-info block (bytes of UTF-8); longer names are cut.
pub const BACKEND_NAME_LEN: usize = 16;

/// What a table scan saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Records handed to the callback.
    pub records: u32,
    /// Slots whose content did not decode (skipped).
    pub invalid: u32,
    /// Slots the writer kept locked for the whole retry budget (skipped).
    pub busy: u32,
    /// Torn or in-progress reads retried during the scan.
    pub retries: u64,
    /// The first skipped slot and why.
    pub first_error: Option<(Table, u32, SlotError)>,
}

impl ScanReport {
    /// Add `other` (a scan of another region) to this report; the first error stays first.
    fn absorb(&mut self, other: ScanReport) {
        self.records += other.records;
        self.invalid += other.invalid;
        self.busy += other.busy;
        self.retries += other.retries;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// The first skipped slot as a typed error, if any.
    pub fn error(&self) -> Option<ShmError> {
        self.first_error
            .map(|(table, index, error)| ShmError::Slot {
                table,
                index,
                error,
            })
    }
}

/// The relay's self-description plus each worker's last heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayInfo {
    /// 0 when no relay ever wrote its info.
    pub pid: u32,
    pub backend: String,
    pub workers: u32,
    pub start_unix_ms: u64,
    /// One entry per worker (up to the counter capacity); 0 = never.
    pub heartbeats_unix_ms: Vec<u64>,
}

/// A read-side mapping. `Send + Sync`: share one per process (e.g. in an `Arc`) or open one
/// per thread; both are fine.
#[derive(Debug)]
pub struct ShmReader {
    map: Mapping,
    retries: AtomicU64,
}

impl ShmReader {
    /// Map and validate the file control created. The file is mapped read-write because the
    /// relay writes its counters and relay info into it.
    pub fn open(path: impl AsRef<Path>) -> Result<ShmReader, ShmError> {
        Ok(ShmReader {
            map: Mapping::open(path.as_ref())?,
            retries: AtomicU64::new(0),
        })
    }

    /// Run the checks [`ShmReader::open`] makes on the file (length, magic, ABI version, slot
    /// sizes, capacities, offsets, file size) on a byte image of the whole file instead, with
    /// no file and no mapping; returns the capacity the header declares. Accepts exactly the
    /// images `open` would accept as a file (file permissions aside). For tools and fuzzing.
    pub fn check_image(bytes: &[u8]) -> Result<Capacity, ShmError> {
        check_image(bytes, Path::new("<image>")).map(|l| l.capacity)
    }

    pub fn path(&self) -> &Path {
        self.map.path()
    }

    /// The global generation (Acquire): when it differs from the one a worker indexed, the
    /// worker rebuilds its index. One load per loop turn.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.map.header().generation.load(Ordering::Acquire)
    }

    /// Sleep until the generation differs from `seen` or `timeout` passes; returns the current
    /// generation. For idle workers: a shared futex on the header, woken by the writer. This is
    /// a syscall: never call it on the packet path.
    pub fn wait_generation(&self, seen: u64, timeout: Duration) -> u64 {
        let h = self.map.header();
        let g = h.generation.load(Ordering::Acquire);
        if g != seen {
            return g;
        }
        h.waiters.fetch_add(1, Ordering::SeqCst);
        // SeqCst pairs with the writer's generation store / waiters load: either the writer
        // sees us waiting and wakes us, or we see its new generation here and do not sleep.
        if h.generation.load(Ordering::SeqCst) == seen {
            futex_wait(&h.generation_futex, seen as u32, timeout);
        }
        h.waiters.fetch_sub(1, Ordering::SeqCst);
        h.generation.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> Capacity {
        self.map.capacity()
    }

    /// Pid of the control process that created or last adopted the file.
    pub fn writer_pid(&self) -> u32 {
        self.map.header().writer_pid.load(Ordering::Relaxed)
    }

    /// Torn or in-progress slot reads retried by this reader so far (all threads).
    pub fn torn_retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    fn note_retries(&self, n: u64) {
        if n != 0 {
            self.retries.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn read_slot<const N: usize, R>(
        &self,
        table: Table,
        index: u32,
        slot: &Slot<N>,
        decode: impl Fn(&[u64; N]) -> Result<R, SlotError>,
        retries: &mut u64,
    ) -> Result<Option<R>, ShmError> {
        let err = |error| ShmError::Slot {
            table,
            index,
            error,
        };
        match slot.read(retries) {
            Ok(Read::Empty) => Ok(None),
            Ok(Read::Full(w)) => decode(&w).map(Some).map_err(err),
            Err(()) => Err(err(SlotError::Busy)),
        }
    }

    /// Session slot `i` (`0..capacity().sessions`): `None` if free, an error if it does not
    /// decode or stays locked.
    pub fn session_slot(&self, i: u32) -> Result<Option<SessionRecord>, ShmError> {
        let slot = self.map.session_slot(i).ok_or(ShmError::IndexOutOfRange {
            table: Table::Sessions,
            index: i,
            capacity: self.capacity().sessions,
        })?;
        let mut retries = 0;
        let r = self.read_slot(Table::Sessions, i, slot, decode_session, &mut retries);
        self.note_retries(retries);
        r
    }

    /// Route slot `i` (`0..capacity().routes`), like [`ShmReader::session_slot`].
    pub fn route_slot(&self, i: u32) -> Result<Option<RouteRecord>, ShmError> {
        let slot = self.map.route_slot(i).ok_or(ShmError::IndexOutOfRange {
            table: Table::Routes,
            index: i,
            capacity: self.capacity().routes,
        })?;
        let mut retries = 0;
        let r = self.read_slot(Table::Routes, i, slot, decode_route, &mut retries);
        self.note_retries(retries);
        r
    }

    fn scan<'m, const N: usize, R>(
        &self,
        table: Table,
        high_water: u32,
        slot: impl Fn(u32) -> Option<&'m Slot<N>>,
        decode: impl Fn(&[u64; N]) -> Result<R, SlotError>,
        mut f: impl FnMut(u32, &R),
    ) -> ScanReport {
        let mut rep = ScanReport::default();
        for i in 0..high_water {
            let Some(s) = slot(i) else { break };
            match self.read_slot(table, i, s, &decode, &mut rep.retries) {
                Ok(None) => {}
                Ok(Some(r)) => {
                    rep.records += 1;
                    f(i, &r);
                }
                Err(ShmError::Slot { error, .. }) => {
                    if error == SlotError::Busy {
                        rep.busy += 1;
                    } else {
                        rep.invalid += 1;
                    }
                    rep.first_error.get_or_insert((table, i, error));
                }
                // read_slot only returns ShmError::Slot.
                Err(_) => rep.invalid += 1,
            }
        }
        self.note_retries(rep.retries);
        rep
    }

    /// Call `f` with every session, without allocating (a worker's index rebuild). Slots that
    /// do not decode are skipped and reported; the rest of the table is still delivered.
    /// Read [`ShmReader::generation`] *before* scanning and index under that generation.
    pub fn for_each_session(&self, mut f: impl FnMut(&SessionRecord)) -> ScanReport {
        let hw = self.map.header().session_high_water.load(Ordering::Acquire);
        self.scan(
            Table::Sessions,
            hw,
            |i| self.map.session_slot(i),
            decode_session,
            |_, r| f(r),
        )
    }

    /// Call `f` with every route, without allocating; like [`ShmReader::for_each_session`].
    pub fn for_each_route(&self, mut f: impl FnMut(&RouteRecord)) -> ScanReport {
        let hw = self.map.header().route_high_water.load(Ordering::Acquire);
        self.scan(
            Table::Routes,
            hw,
            |i| self.map.route_slot(i),
            decode_route,
            |_, r| f(r),
        )
    }

    /// Stream-state slots per worker (each worker has its own region of this many slots).
    pub fn streams_per_worker(&self) -> u32 {
        self.map.streams_per_worker()
    }

    /// Stream-state slot `i` of worker `worker`: `None` if free, an error if it does not decode,
    /// stays locked or is out of range. One consistent read, no allocation.
    pub fn stream_slot(&self, worker: u32, i: u32) -> Result<Option<StreamRecord>, ShmError> {
        let slot = self
            .map
            .stream_slot(worker, i)
            .ok_or(ShmError::IndexOutOfRange {
                table: Table::Streams,
                index: i,
                capacity: self.streams_per_worker(),
            })?;
        let mut retries = 0;
        let r = self.read_slot(Table::Streams, i, slot, decode_stream, &mut retries);
        self.note_retries(retries);
        r
    }

    /// Call `f(worker, slot, record)` for every stream-state entry of every worker region
    /// (a relay worker's rebuild: it seeds SRTP contexts from all of them). No allocation;
    /// slots that do not decode or stay locked are skipped and reported.
    pub fn for_each_stream(&self, mut f: impl FnMut(u32, u32, &StreamRecord)) -> ScanReport {
        let mut total = ScanReport::default();
        for w in 0..self.capacity().workers {
            // Only `0..high_water`: untouched slots stay unmapped pages of the tmpfs file.
            let hw = self.stream_high_water(w).min(self.streams_per_worker());
            let rep = self.scan(
                Table::Streams,
                hw,
                |i| self.map.stream_slot(w, i),
                decode_stream,
                |i, r: &StreamRecord| f(w, i, r),
            );
            total.absorb(rep);
        }
        total
    }

    /// Write stream-state slot `i` of worker `worker`. **Only worker `worker` may call this**
    /// (single writer per region, like the counter blocks); false when out of range.
    pub fn put_stream(&self, worker: u32, i: u32, rec: &StreamRecord) -> bool {
        match self.map.stream_slot(worker, i) {
            Some(s) => {
                if let Some(hw) = self.map.stream_high_water(worker) {
                    // Raised before the slot write (Release), like the tables' marks.
                    if hw.load(Ordering::Relaxed) <= i {
                        hw.store(i + 1, Ordering::Release);
                    }
                }
                s.write(&encode_stream(rec));
                true
            }
            None => false,
        }
    }

    /// One past the highest stream-state slot worker `worker` ever used (0 past the capacity).
    pub fn stream_high_water(&self, worker: u32) -> u32 {
        self.map
            .stream_high_water(worker)
            .map_or(0, |h| h.load(Ordering::Acquire))
    }

    /// Free stream-state slot `i` of worker `worker` (same single-writer rule).
    pub fn clear_stream(&self, worker: u32, i: u32) -> bool {
        match self.map.stream_slot(worker, i) {
            Some(s) => {
                s.write(&[0; STREAM_WORDS]);
                true
            }
            None => false,
        }
    }

    /// Session-stats slots per worker (each worker has its own region of this many slots).
    pub fn stats_per_worker(&self) -> u32 {
        self.map.stats_per_worker()
    }

    /// Session-stats slot `i` of worker `worker`, like [`ShmReader::stream_slot`].
    pub fn stat_slot(&self, worker: u32, i: u32) -> Result<Option<StatRecord>, ShmError> {
        let slot = self
            .map
            .stat_slot(worker, i)
            .ok_or(ShmError::IndexOutOfRange {
                table: Table::Stats,
                index: i,
                capacity: self.stats_per_worker(),
            })?;
        let mut retries = 0;
        let r = self.read_slot(Table::Stats, i, slot, decode_stat, &mut retries);
        self.note_retries(retries);
        r
    }

    /// Call `f(worker, slot, record)` for every session-stats entry of every worker region
    /// (`0..high_water` of each). No allocation; slots that do not decode or stay locked are
    /// skipped and reported.
    pub fn for_each_stat(&self, mut f: impl FnMut(u32, u32, &StatRecord)) -> ScanReport {
        let mut total = ScanReport::default();
        for w in 0..self.capacity().workers {
            let hw = self.stat_high_water(w).min(self.stats_per_worker());
            let rep = self.scan(
                Table::Stats,
                hw,
                |i| self.map.stat_slot(w, i),
                decode_stat,
                |i, r: &StatRecord| f(w, i, r),
            );
            total.absorb(rep);
        }
        total
    }

    /// Every session's statistics summed over the workers, counting only records of the relay
    /// process the relay-info block names (all records when no relay wrote its info). For
    /// control and tools: allocates, reads every worker's region once.
    pub fn diagnostics(&self) -> (Diagnostics, ScanReport) {
        let pid = self.relay_info().pid;
        let mut d = Diagnostics::default();
        let rep = self.for_each_stat(|w, _, r| d.add(w, r, pid));
        (d, rep)
    }

    /// Write session-stats slot `i` of worker `worker`. **Only worker `worker` may call this**
    /// (single writer per region); false when out of range.
    pub fn put_stat(&self, worker: u32, i: u32, rec: &StatRecord) -> bool {
        match self.map.stat_slot(worker, i) {
            Some(s) => {
                if let Some(hw) = self.map.stat_high_water(worker) {
                    // Raised before the slot write (Release), like the tables' marks.
                    if hw.load(Ordering::Relaxed) <= i {
                        hw.store(i + 1, Ordering::Release);
                    }
                }
                s.write(&encode_stat(rec));
                true
            }
            None => false,
        }
    }

    /// Free session-stats slot `i` of worker `worker` (same single-writer rule).
    pub fn clear_stat(&self, worker: u32, i: u32) -> bool {
        match self.map.stat_slot(worker, i) {
            Some(s) => {
                s.write(&[0; STAT_WORDS]);
                true
            }
            None => false,
        }
    }

    /// One past the highest session-stats slot worker `worker` ever used (0 past the
    /// capacity).
    pub fn stat_high_water(&self, worker: u32) -> u32 {
        self.map
            .stat_high_water(worker)
            .map_or(0, |h| h.load(Ordering::Acquire))
    }

    /// Worker `w`'s counter block (`w < capacity().workers`). Only worker `w` may write it.
    #[inline]
    pub fn worker_counters(&self, w: usize) -> Option<&WorkerCounters> {
        self.map.counters(w)
    }

    /// Sum of every worker's counters.
    pub fn totals(&self) -> CounterSnapshot {
        let mut t = CounterSnapshot::default();
        for w in 0..self.capacity().workers as usize {
            if let Some(c) = self.map.counters(w) {
                t.merge(&c.snapshot());
            }
        }
        t
    }

    /// Publish the relay's self-description. One writer: the relay's main thread, at start-up.
    /// `backend` is cut to [`BACKEND_NAME_LEN`] bytes (at a character boundary).
    pub fn set_relay_info(&self, pid: u32, backend: &str, workers: u32, start_unix_ms: u64) {
        let mut end = backend.len().min(BACKEND_NAME_LEN);
        while !backend.is_char_boundary(end) {
            end -= 1;
        }
        let mut name = [0u8; BACKEND_NAME_LEN];
        name[..end].copy_from_slice(&backend.as_bytes()[..end]);
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&name[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let words: [u64; RELAY_INFO_WORDS] = [
            u64::from(pid) | (u64::from(workers) << 32),
            start_unix_ms,
            word(0),
            word(1),
        ];
        self.map.header().relay.write(&words);
    }

    /// Worker `worker` is alive at `unix_ms`. False if `worker` is past the counter capacity.
    #[inline]
    pub fn heartbeat(&self, worker: usize, unix_ms: u64) -> bool {
        match self.map.counters(worker) {
            Some(c) => {
                c.set_heartbeat(unix_ms);
                true
            }
            None => false,
        }
    }

    /// The relay's self-description; `pid == 0` when no relay has written it (or the writing
    /// relay died mid-write).
    pub fn relay_info(&self) -> RelayInfo {
        let mut retries = 0;
        let Ok(Read::Full(w)) = self.map.header().relay.read(&mut retries) else {
            return RelayInfo::default();
        };
        let mut name = [0u8; BACKEND_NAME_LEN];
        name[..8].copy_from_slice(&w[2].to_le_bytes());
        name[8..].copy_from_slice(&w[3].to_le_bytes());
        let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let backend = String::from_utf8_lossy(&name[..len]).into_owned();
        let workers = (w[0] >> 32) as u32;
        let shown = workers.min(self.capacity().workers) as usize;
        RelayInfo {
            pid: w[0] as u32,
            backend,
            workers,
            start_unix_ms: w[1],
            heartbeats_unix_ms: (0..shown)
                .map(|i| self.map.counters(i).map_or(0, WorkerCounters::heartbeat))
                .collect(),
        }
    }
}
