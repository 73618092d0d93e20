//! The single writer: control. Owns the id → slot maps and the free lists; every mutation is a
//! sequence-locked slot write followed by a generation bump.

use super::codec::{decode_route, decode_session, encode_route, encode_session, validate_route};
use super::error::{ShmError, Table};
use super::layout::{
    Capacity, DEFAULT_STATS_PER_WORKER, DEFAULT_STREAMS_PER_WORKER, ROUTE_WORDS, SESSION_WORDS,
};
use super::map::{futex_wake, Mapping};
use super::seqlock::{Read, Slot};
use super::{RouteId, RouteRecord, SessionId, SessionRecord};
use core::sync::atomic::{AtomicU32, Ordering};
use std::collections::HashMap;
use std::path::Path;

/// What [`ShmWriter::open_existing`] found in the file it adopted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// Sessions kept.
    pub sessions: u32,
    /// Routes kept.
    pub routes: u32,
    /// Slots cleared because a previous writer died mid-write, their content did not decode,
    /// or they repeated an id already seen. Control re-puts those records from its own state.
    pub repaired: u32,
}

/// The writer side of the shared memory (sluice-control). Exactly one per file: it holds an
/// exclusive `flock` on the file for its lifetime.
#[derive(Debug)]
pub struct ShmWriter {
    map: Mapping,
    sessions: HashMap<SessionId, u32>,
    routes: HashMap<RouteId, u32>,
    /// Free slot indexes; `pop` yields the lowest index first on a fresh table.
    free_sessions: Vec<u32>,
    free_routes: Vec<u32>,
    adopt: AdoptReport,
}

impl ShmWriter {
    /// Create a new file at `path` with `capacity`. Fails with [`ShmError::Exists`] if the
    /// file exists (use [`ShmWriter::open_existing`] to adopt it).
    pub fn create(path: impl AsRef<Path>, capacity: Capacity) -> Result<ShmWriter, ShmError> {
        ShmWriter::create_with_streams(path, capacity, DEFAULT_STREAMS_PER_WORKER)
    }

    /// [`ShmWriter::create`] with `streams` stream-state slots per worker (the relay's
    /// per-stream SRTP state, `shm.streams_per_worker`; docs/SHM.md "Stream-state slot").
    pub fn create_with_streams(
        path: impl AsRef<Path>,
        capacity: Capacity,
        streams: u32,
    ) -> Result<ShmWriter, ShmError> {
        ShmWriter::create_with_regions(path, capacity, streams, DEFAULT_STATS_PER_WORKER)
    }

    /// [`ShmWriter::create_with_streams`] with `stats` session-stats slots per worker too
    /// (docs/SHM.md "Session-stats slot"; small files for tools and fuzzing).
    pub fn create_with_regions(
        path: impl AsRef<Path>,
        capacity: Capacity,
        streams: u32,
        stats: u32,
    ) -> Result<ShmWriter, ShmError> {
        let map = Mapping::create(path.as_ref(), capacity, streams, stats)?;
        Ok(ShmWriter {
            free_sessions: (0..capacity.sessions).rev().collect(),
            free_routes: (0..capacity.routes).rev().collect(),
            sessions: HashMap::new(),
            routes: HashMap::new(),
            adopt: AdoptReport::default(),
            map,
        })
    }

    /// Adopt an existing file after a control restart: validate it, keep its contents (readers
    /// keep forwarding undisturbed), rebuild the id → slot maps, repair slots a dead writer
    /// left half-written, and bump the generation once.
    pub fn open_existing(path: impl AsRef<Path>) -> Result<ShmWriter, ShmError> {
        let map = Mapping::open(path.as_ref())?;
        map.lock_exclusive()?;
        let cap = map.capacity();
        let mut adopt = AdoptReport::default();
        let mut sessions = HashMap::new();
        let mut routes = HashMap::new();
        let (free_sessions, shw) = scan_sessions(&map, cap, &mut sessions, &mut adopt.repaired);
        let (free_routes, rhw) = scan_routes(&map, cap, &mut routes, &mut adopt.repaired);
        adopt.sessions = sessions.len() as u32;
        adopt.routes = routes.len() as u32;
        let h = map.header();
        h.session_high_water.store(shw, Ordering::Release);
        h.route_high_water.store(rhw, Ordering::Release);
        h.writer_pid.store(std::process::id(), Ordering::Relaxed);
        let w = ShmWriter {
            map,
            sessions,
            routes,
            free_sessions,
            free_routes,
            adopt,
        };
        w.bump_generation();
        Ok(w)
    }

    /// Adopt the file if it exists, else create it with `capacity`. Returns the writer and
    /// whether it adopted an existing file (whose own capacity then applies; see
    /// [`ShmWriter::capacity`]).
    pub fn open_or_create(
        path: impl AsRef<Path>,
        capacity: Capacity,
    ) -> Result<(ShmWriter, bool), ShmError> {
        ShmWriter::open_or_create_with_streams(path, capacity, DEFAULT_STREAMS_PER_WORKER)
    }

    /// [`ShmWriter::open_or_create`] with `streams` stream-state slots per worker when it
    /// creates the file (an adopted file keeps its own).
    pub fn open_or_create_with_streams(
        path: impl AsRef<Path>,
        capacity: Capacity,
        streams: u32,
    ) -> Result<(ShmWriter, bool), ShmError> {
        let path = path.as_ref();
        match ShmWriter::open_existing(path) {
            Ok(w) => Ok((w, true)),
            Err(ShmError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                match ShmWriter::create_with_streams(path, capacity, streams) {
                    Ok(w) => Ok((w, false)),
                    // Someone created it between our two calls: adopt theirs.
                    Err(ShmError::Exists { .. }) => Ok((ShmWriter::open_existing(path)?, true)),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Insert the session, or update it in place if its id is already present.
    pub fn put_session(&mut self, rec: &SessionRecord) -> Result<(), ShmError> {
        if rec.id == 0 {
            return Err(ShmError::ZeroId {
                table: Table::Sessions,
            });
        }
        let (idx, new) = slot_for(
            &self.sessions,
            &self.free_sessions,
            rec.id,
            Table::Sessions,
            self.map.capacity().sessions,
        )?;
        let h = self.map.header();
        raise_high_water(&h.session_high_water, idx);
        // The index came from our map or free list, both bounded by the capacity.
        if let Some(slot) = self.map.session_slot(idx) {
            slot.write(&encode_session(rec));
        }
        if new {
            self.free_sessions.pop();
            self.sessions.insert(rec.id, idx);
        }
        self.bump_generation();
        Ok(())
    }

    /// Remove a session; its slot is zeroed (key material included). False if unknown.
    pub fn remove_session(&mut self, id: SessionId) -> bool {
        let Some(idx) = self.sessions.remove(&id) else {
            return false;
        };
        if let Some(slot) = self.map.session_slot(idx) {
            slot.write(&[0u64; SESSION_WORDS]);
        }
        self.free_sessions.push(idx);
        self.bump_generation();
        true
    }

    /// Insert the route, or update it in place if its id is already present.
    pub fn put_route(&mut self, rec: &RouteRecord) -> Result<(), ShmError> {
        if rec.id == 0 {
            return Err(ShmError::ZeroId {
                table: Table::Routes,
            });
        }
        validate_route(rec).map_err(ShmError::InvalidRoute)?;
        let (idx, new) = slot_for(
            &self.routes,
            &self.free_routes,
            rec.id,
            Table::Routes,
            self.map.capacity().routes,
        )?;
        let h = self.map.header();
        raise_high_water(&h.route_high_water, idx);
        if let Some(slot) = self.map.route_slot(idx) {
            slot.write(&encode_route(rec));
        }
        if new {
            self.free_routes.pop();
            self.routes.insert(rec.id, idx);
        }
        self.bump_generation();
        Ok(())
    }

    /// Remove a route. False if unknown.
    pub fn remove_route(&mut self, id: RouteId) -> bool {
        let Some(idx) = self.routes.remove(&id) else {
            return false;
        };
        if let Some(slot) = self.map.route_slot(idx) {
            slot.write(&[0u64; ROUTE_WORDS]);
        }
        self.free_routes.push(idx);
        self.bump_generation();
        true
    }

    /// One session by id.
    pub fn session(&self, id: SessionId) -> Option<SessionRecord> {
        let idx = *self.sessions.get(&id)?;
        let mut retries = 0;
        match self.map.session_slot(idx)?.read(&mut retries) {
            Ok(Read::Full(w)) => decode_session(&w).ok(),
            _ => None,
        }
    }

    /// One route by id.
    pub fn route(&self, id: RouteId) -> Option<RouteRecord> {
        let idx = *self.routes.get(&id)?;
        let mut retries = 0;
        match self.map.route_slot(idx)?.read(&mut retries) {
            Ok(Read::Full(w)) => decode_route(&w).ok(),
            _ => None,
        }
    }

    /// Every session, ordered by id (for re-adoption and listings).
    pub fn sessions(&self) -> Vec<SessionRecord> {
        let mut ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.session(id)).collect()
    }

    /// Every route, ordered by id.
    pub fn routes(&self) -> Vec<RouteRecord> {
        let mut ids: Vec<RouteId> = self.routes.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.route(id)).collect()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// The file's capacity (for an adopted file, the one it was created with).
    pub fn capacity(&self) -> Capacity {
        self.map.capacity()
    }

    /// Stream-state slots per worker in this file.
    pub fn streams_per_worker(&self) -> u32 {
        self.map.streams_per_worker()
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.map.header().generation.load(Ordering::Acquire)
    }

    /// What `open_existing` found (all zero for a created file).
    pub fn adopt_report(&self) -> AdoptReport {
        self.adopt
    }

    pub fn path(&self) -> &Path {
        self.map.path()
    }

    /// Publish a change: bump the generation after the slot write, then wake idle readers.
    fn bump_generation(&self) {
        let h = self.map.header();
        let g = h.generation.load(Ordering::Relaxed).wrapping_add(1);
        // SeqCst (stronger than the Release the readers need) orders these stores before the
        // `waiters` load, pairing with `ShmReader::wait_generation` (see docs/SHM.md).
        h.generation.store(g, Ordering::SeqCst);
        h.generation_futex.store(g as u32, Ordering::SeqCst);
        if h.waiters.load(Ordering::SeqCst) != 0 {
            futex_wake(&h.generation_futex);
        }
    }
}

fn raise_high_water(hw: &AtomicU32, idx: u32) {
    if hw.load(Ordering::Relaxed) <= idx {
        // Release: a reader that sees the new generation (Acquire) also sees this.
        hw.store(idx + 1, Ordering::Release);
    }
}

fn scan_sessions(
    m: &Mapping,
    cap: Capacity,
    ids: &mut HashMap<u64, u32>,
    repaired: &mut u32,
) -> (Vec<u32>, u32) {
    scan(
        cap.sessions,
        |i| m.session_slot(i),
        |w| decode_session(w).ok().map(|r| r.id),
        ids,
        repaired,
    )
}

fn scan_routes(
    m: &Mapping,
    cap: Capacity,
    ids: &mut HashMap<u64, u32>,
    repaired: &mut u32,
) -> (Vec<u32>, u32) {
    scan(
        cap.routes,
        |i| m.route_slot(i),
        |w| decode_route(w).ok().map(|r| r.id),
        ids,
        repaired,
    )
}

/// Scan one table of a file being adopted: keep valid records (first occurrence of an id,
/// lowest slot), clear everything else. Returns the free list (lowest index popped first)
/// and the new high-water mark.
fn scan<'m, const N: usize>(
    capacity: u32,
    slot: impl Fn(u32) -> Option<&'m Slot<N>>,
    id_of: impl Fn(&[u64; N]) -> Option<u64>,
    ids: &mut HashMap<u64, u32>,
    repaired: &mut u32,
) -> (Vec<u32>, u32) {
    let mut keep: Vec<Option<u64>> = Vec::with_capacity(capacity as usize);
    for i in 0..capacity {
        let Some(s) = slot(i) else {
            keep.push(None);
            continue;
        };
        let mut retries = 0;
        // We hold the flock, so the previous writer is gone: an odd sequence is a write it never
        // finished; nobody will complete it and a read would only time out.
        let id = if s.is_locked() {
            Some(None)
        } else {
            match s.read(&mut retries) {
                Ok(Read::Empty) => None,
                Ok(Read::Full(w)) => Some(id_of(&w).filter(|id| *id != 0 && !ids.contains_key(id))),
                Err(()) => Some(None),
            }
        };
        match id {
            None => keep.push(None),
            Some(Some(id)) => {
                ids.insert(id, i);
                keep.push(Some(id));
            }
            Some(None) => {
                s.write(&[0u64; N]);
                *repaired += 1;
                keep.push(None);
            }
        }
    }
    let high_water = keep
        .iter()
        .rposition(Option::is_some)
        .map_or(0, |i| i as u32 + 1);
    let free = (0..capacity)
        .rev()
        .filter(|&i| keep[i as usize].is_none())
        .collect();
    (free, high_water)
}

/// The slot of `id` in a table: its current one (`false`), or the next free one (`true`; the
/// caller pops it from `free` once the record is written).
fn slot_for(
    index: &HashMap<u64, u32>,
    free: &[u32],
    id: u64,
    table: Table,
    capacity: u32,
) -> Result<(u32, bool), ShmError> {
    match index.get(&id) {
        Some(&i) => Ok((i, false)),
        None => free
            .last()
            .map(|&i| (i, true))
            .ok_or(ShmError::TableFull { table, capacity }),
    }
}
