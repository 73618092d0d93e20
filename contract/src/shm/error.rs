//! Typed errors of the shared-memory layer.

use std::path::PathBuf;

/// Which table a slot belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Sessions,
    Routes,
    /// The relay workers' stream-state slots (per-stream SRTP rollover state).
    Streams,
    /// The relay workers' session-stats slots (per-session and per-stream diagnostics).
    Stats,
}

impl core::fmt::Display for Table {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Table::Sessions => "session",
            Table::Routes => "route",
            Table::Streams => "stream-state",
            Table::Stats => "session-stats",
        })
    }
}

/// Why one slot could not be decoded. The slot is skipped; the rest of the table is still usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// The address family byte is neither 4 nor 6.
    #[error("bad address family code {0}")]
    BadFamily(u8),
    /// The role byte names no [`super::Role`].
    #[error("bad role code {0}")]
    BadRole(u8),
    /// A profile byte names no [`crate::srtp::Profile`].
    #[error("bad SRTP profile code {0}")]
    BadProfile(u8),
    /// A presence flag byte is neither 0 nor 1.
    #[error("bad presence flag {0}")]
    BadFlag(u8),
    /// A payload-type or extension map claims more than [`super::MAX_MAPPINGS`] entries.
    #[error("mapping length {0} exceeds the maximum")]
    MapTooLong(u8),
    #[error("MID rewrite of {0} bytes, or without an extension id")]
    BadMid(u8),
    /// A stream-state slot names a direction other than in (1) or out (2).
    #[error("bad stream direction code {0}")]
    BadDirection(u8),
    /// An RTX payload type above 127, or RTX on a route that carries several streams (no
    /// SSRC filter and no rewritten SSRC: one RTX stream pairs with one media stream).
    #[error("bad RTX output: payload type {0} (0..=127, on a single-stream route)")]
    BadRtx(u8),
    /// A simulcast layer (index, count) outside 0..count, 1..=3, or on a route without an
    /// SSRC filter and a rewritten SSRC.
    #[error("bad simulcast layer {0} of {1} (up to 3 layers, on a single-stream rewriting route)")]
    BadLayer(u8, u8),
    /// A session-stats slot names a record kind other than session (1) or stream (2).
    #[error("bad session-stats record kind {0}")]
    BadStatKind(u8),
    /// A route names session id 0 as publisher or subscriber.
    #[error("route endpoint is session id 0")]
    ZeroEndpoint,
    /// A session slot's ICE credential lengths are out of range (a length of 0 with others
    /// non-zero, or over the field).
    #[error("bad ICE credential lengths (ufrag {0}, pwd {1}, remote ufrag {2})")]
    BadIce(u8, u8, u8),
    /// The writer kept the slot locked for the whole retry budget (it may have died mid-write;
    /// the next writer to adopt the file repairs the slot).
    #[error("slot stayed locked by the writer")]
    Busy,
}

/// Errors of the shared-memory layer. Every message says what differs and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("shm file {path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("shm file {path} already exists", path = path.display())]
    Exists { path: PathBuf },
    #[error("shm file {path} has mode {mode:04o}; it holds SRTP keys and must be 0600 (owner only)", path = path.display())]
    Mode { path: PathBuf, mode: u32 },
    #[error("shm file {path} is not initialized yet (control may still be creating it)", path = path.display())]
    NotInitialized { path: PathBuf },
    #[error("{path} is not a Sluice shm file (magic {found:#018x})", path = path.display())]
    BadMagic { path: PathBuf, found: u64 },
    #[error("shm ABI version {file}, this build speaks {ours}: restart both processes on the same release")]
    Version { file: u32, ours: u32 },
    #[error("shm layout differs: {field} is {file} in the file, this build uses {ours}: restart both processes on the same release")]
    Layout {
        field: &'static str,
        file: u64,
        ours: u64,
    },
    #[error("shm file {path} is truncated or corrupt: {len} bytes, the header needs {expected}", path = path.display())]
    Truncated {
        path: PathBuf,
        len: u64,
        expected: u64,
    },
    #[error("shm capacity: {what} = {value} is out of range 1..={max}")]
    Capacity {
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error("shm file {path} is already held by another writer (is another sluice-control running?)", path = path.display())]
    WriterActive { path: PathBuf },
    #[error("shm {table} table is full ({capacity} slots)")]
    TableFull { table: Table, capacity: u32 },
    #[error("shm {table} record has id 0 (ids start at 1)")]
    ZeroId { table: Table },
    #[error("shm route record is invalid: {0}")]
    InvalidRoute(SlotError),
    #[error("shm {table} slot {index} is out of range ({capacity} slots)")]
    IndexOutOfRange {
        table: Table,
        index: u32,
        capacity: u32,
    },
    #[error("shm {table} slot {index}: {error}")]
    Slot {
        table: Table,
        index: u32,
        error: SlotError,
    },
}

impl ShmError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> ShmError {
        ShmError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
