//! The mapping itself: creating, opening and validating the file, and typed access to the
//! header, slots and counter blocks. Every `unsafe` block of the shm module that touches the
//! mapping is here.

use super::counters::WorkerCounters;
use super::error::ShmError;
use super::layout::{
    Capacity, Header, Layout, RouteSlot, SessionSlot, StatSlot, StreamSlot, ABI_VERSION,
    COUNTER_BLOCK_SIZE, HEADER_SIZE, MAGIC, ROUTE_SLOT_SIZE, SESSION_SLOT_SIZE, STAT_SLOT_SIZE,
    STREAM_SLOT_SIZE,
};
use core::sync::atomic::{AtomicU32, Ordering};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file's required mode: it holds SRTP master keys.
pub(crate) const FILE_MODE: u32 = 0o600;

/// A validated mapping of the whole file. The mapping lives as long as this value; every
/// reference handed out borrows `&self`, so no reference outlives the mapping.
pub(crate) struct Mapping {
    raw: MmapRaw,
    /// Kept open so the writer's `flock` lasts as long as the writer.
    file: File,
    path: PathBuf,
    layout: Layout,
}

impl core::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mapping")
            .field("path", &self.path)
            .field("layout", &self.layout)
            .finish()
    }
}

fn mode_ok(path: &Path, file: &File, exact: bool) -> Result<(), ShmError> {
    let mode = file
        .metadata()
        .map_err(|e| ShmError::io(path, e))?
        .permissions()
        .mode()
        & 0o7777;
    let ok = if exact {
        mode == FILE_MODE
    } else {
        mode & 0o077 == 0
    };
    if ok {
        Ok(())
    } else {
        Err(ShmError::Mode {
            path: path.to_path_buf(),
            mode,
        })
    }
}

impl Mapping {
    /// Create a new file (fails if it exists), mode 0600, sized and initialised for `cap`,
    /// exclusively locked for the calling writer. The magic is stored last.
    pub(crate) fn create(
        path: &Path,
        cap: Capacity,
        streams: u32,
        stats: u32,
    ) -> Result<Mapping, ShmError> {
        let layout = Layout::with_regions(cap, streams, stats)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => ShmError::Exists {
                    path: path.to_path_buf(),
                },
                _ => ShmError::io(path, e),
            })?;
        let result = (|| {
            // The umask can only clear bits, but a filesystem might not honour modes at all.
            mode_ok(path, &file, true)?;
            lock_exclusive(path, &file)?;
            file.set_len(layout.file_size)
                .map_err(|e| ShmError::io(path, e))?;
            let raw = map(path, &file, layout.file_size)?;
            let m = Mapping {
                raw,
                file,
                path: path.to_path_buf(),
                layout,
            };
            m.init_header();
            Ok(m)
        })();
        if result.is_err() {
            // We created it, so it is ours to remove; a half-made file would block the next try.
            let _ = std::fs::remove_file(path);
        }
        result
    }

    fn init_header(&self) {
        let h = self.header();
        let l = &self.layout;
        let r = Ordering::Relaxed;
        h.abi_version.store(ABI_VERSION, r);
        h.header_size.store(HEADER_SIZE as u32, r);
        h.session_slot_size.store(SESSION_SLOT_SIZE as u32, r);
        h.route_slot_size.store(ROUTE_SLOT_SIZE as u32, r);
        h.counter_block_size.store(COUNTER_BLOCK_SIZE as u32, r);
        h.stream_slot_size.store(STREAM_SLOT_SIZE as u32, r);
        h.stream_capacity.store(l.streams, r);
        h.streams_offset.store(l.streams_offset, r);
        h.stat_slot_size.store(STAT_SLOT_SIZE as u32, r);
        h.stat_capacity.store(l.stats, r);
        h.stats_offset.store(l.stats_offset, r);
        h.session_capacity.store(l.capacity.sessions, r);
        h.route_capacity.store(l.capacity.routes, r);
        h.worker_capacity.store(l.capacity.workers, r);
        h.sessions_offset.store(l.sessions_offset, r);
        h.routes_offset.store(l.routes_offset, r);
        h.counters_offset.store(l.counters_offset, r);
        h.file_size.store(l.file_size, r);
        h.writer_pid.store(std::process::id(), r);
        // Publish: a reader that loads MAGIC with Acquire sees every store above.
        h.magic.store(MAGIC, Ordering::Release);
    }

    /// Open and validate an existing file (read-write: readers write counters and relay info).
    pub(crate) fn open(path: &Path) -> Result<Mapping, ShmError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| ShmError::io(path, e))?;
        mode_ok(path, &file, false)?;
        let len = file.metadata().map_err(|e| ShmError::io(path, e))?.len();
        check_len(len, path)?;
        let raw = map(path, &file, len)?;
        let mut m = Mapping {
            raw,
            file,
            path: path.to_path_buf(),
            // Provisional until validated below; nothing past the header is touched before.
            layout: Layout::for_capacity(Capacity::default())?,
        };
        m.layout = m.validate(len)?;
        Ok(m)
    }

    /// Check the header against this build and the file length; returns the file's layout.
    fn validate(&self, len: u64) -> Result<Layout, ShmError> {
        validate_fields(&HeaderFields::load(self.header()), len, &self.path)
    }

    /// Take the single-writer lock (`flock(LOCK_EX | LOCK_NB)`), held until the file closes.
    pub(crate) fn lock_exclusive(&self) -> Result<(), ShmError> {
        lock_exclusive(&self.path, &self.file)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn capacity(&self) -> Capacity {
        self.layout.capacity
    }

    /// Stream-state slots per worker.
    pub(crate) fn streams_per_worker(&self) -> u32 {
        self.layout.streams
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the mapping starts at a page boundary (mmap with offset 0), which satisfies
        // Header's 4096-byte alignment; every constructor checked `raw.len() >= HEADER_SIZE`
        // before calling this. Header consists only of atomics, so shared access from other
        // threads and processes is data-race free. The reference borrows `self`, which owns
        // the mapping, so it cannot outlive it.
        unsafe { &*(self.raw.as_ptr() as *const Header) }
    }

    /// Session slot `i`, or `None` past the capacity.
    pub(crate) fn session_slot(&self, i: u32) -> Option<&SessionSlot> {
        if i >= self.layout.capacity.sessions {
            return None;
        }
        let off = self.layout.sessions_offset as usize + i as usize * SESSION_SLOT_SIZE;
        // SAFETY: `i < capacity`, and validation checked the mapping covers
        // `sessions_offset + capacity × SESSION_SLOT_SIZE`; `sessions_offset` is page-aligned
        // and the slot size a multiple of 64, so the pointer is 64-byte aligned as SessionSlot
        // requires. The slot is all atomics (shared mutation is fine), and the reference
        // borrows `self`, which owns the mapping.
        Some(unsafe { &*(self.raw.as_ptr().add(off) as *const SessionSlot) })
    }

    /// Route slot `i`, or `None` past the capacity.
    pub(crate) fn route_slot(&self, i: u32) -> Option<&RouteSlot> {
        if i >= self.layout.capacity.routes {
            return None;
        }
        let off = self.layout.routes_offset as usize + i as usize * ROUTE_SLOT_SIZE;
        // SAFETY: as in `session_slot`: bounds checked against the validated capacity and file
        // length, 64-byte alignment from a page-aligned table start and a 64-multiple slot
        // size, atomics only, lifetime tied to `self`.
        Some(unsafe { &*(self.raw.as_ptr().add(off) as *const RouteSlot) })
    }

    /// Counter block of worker `w`, or `None` past the capacity.
    pub(crate) fn counters(&self, w: usize) -> Option<&WorkerCounters> {
        if w >= self.layout.capacity.workers as usize {
            return None;
        }
        let off = self.layout.counters_offset as usize + w * COUNTER_BLOCK_SIZE;
        // SAFETY: `w < workers capacity` and the validated file covers every block; the table
        // starts on a page and blocks are 64-byte multiples, matching WorkerCounters' alignment;
        // all fields are atomics; the reference borrows `self`, which owns the mapping.
        Some(unsafe { &*(self.raw.as_ptr().add(off) as *const WorkerCounters) })
    }
}

impl Mapping {
    /// Stream-state slot `i` of worker `w`, or `None` past either capacity.
    pub(crate) fn stream_slot(&self, w: u32, i: u32) -> Option<&StreamSlot> {
        if w >= self.layout.capacity.workers || i >= self.layout.streams {
            return None;
        }
        let n = u64::from(w) * u64::from(self.layout.streams) + u64::from(i);
        let off = self.layout.stream_slots_offset as usize + n as usize * STREAM_SLOT_SIZE;
        // SAFETY: `w` and `i` are below the validated capacities and the validated file covers
        // `streams_offset + workers × streams × STREAM_SLOT_SIZE`; the region starts on a page
        // and slots are 64 bytes, matching StreamSlot's alignment; atomics only; the reference
        // borrows `self`, which owns the mapping.
        Some(unsafe { &*(self.raw.as_ptr().add(off) as *const StreamSlot) })
    }

    /// Worker `w`'s stream-state high-water mark (one past its highest slot ever used), or
    /// `None` past the worker capacity.
    pub(crate) fn stream_high_water(&self, w: u32) -> Option<&AtomicU32> {
        if w >= self.layout.capacity.workers {
            return None;
        }
        let off = self.layout.streams_offset as usize + w as usize * 4;
        // SAFETY: `w < workers capacity` and the validated file covers the high-water array
        // (`workers × 4` bytes from the page-aligned `streams_offset`), so the pointer is in
        // bounds and 4-byte aligned; AtomicU32 may be shared across threads and processes;
        // the reference borrows `self`, which owns the mapping.
        Some(unsafe { &*(self.raw.as_ptr().add(off) as *const AtomicU32) })
    }
}

impl Mapping {
    /// Session-stats slots per worker.
    pub(crate) fn stats_per_worker(&self) -> u32 {
        self.layout.stats
    }

    /// Session-stats slot `i` of worker `w`, or `None` past either capacity.
    pub(crate) fn stat_slot(&self, w: u32, i: u32) -> Option<&StatSlot> {
        if w >= self.layout.capacity.workers || i >= self.layout.stats {
            return None;
        }
        let n = u64::from(w) * u64::from(self.layout.stats) + u64::from(i);
        let off = self.layout.stat_slots_offset as usize + n as usize * STAT_SLOT_SIZE;
        // SAFETY: `w` and `i` are below the validated capacities and the validated file covers
        // `stat_slots_offset + workers × stats × STAT_SLOT_SIZE`; the region starts on a page
        // and slots are 128 bytes, a multiple of StatSlot's 64-byte alignment; atomics only;
        // the reference borrows `self`, which owns the mapping.
        Some(unsafe { &*(self.raw.as_ptr().add(off) as *const StatSlot) })
    }

    /// Worker `w`'s session-stats high-water mark, or `None` past the worker capacity.
    pub(crate) fn stat_high_water(&self, w: u32) -> Option<&AtomicU32> {
        if w >= self.layout.capacity.workers {
            return None;
        }
        let off = self.layout.stats_offset as usize + w as usize * 4;
        // SAFETY: `w < workers capacity` and the validated file covers the high-water array
        // (`workers × 4` bytes from the page-aligned `stats_offset`), so the pointer is in
        // bounds and 4-byte aligned; AtomicU32 may be shared across threads and processes;
        // the reference borrows `self`, which owns the mapping.
        Some(unsafe { &*(self.raw.as_ptr().add(off) as *const AtomicU32) })
    }
}

/// The header fields [`validate_fields`] checks, as plain values: loaded from a mapping's
/// atomics ([`HeaderFields::load`]) or decoded from a byte image of the file
/// ([`HeaderFields::decode`]), so both paths run the same checks.
#[derive(Debug, Clone, Copy)]
struct HeaderFields {
    magic: u64,
    abi_version: u32,
    header_size: u32,
    session_slot_size: u32,
    route_slot_size: u32,
    counter_block_size: u32,
    stream_slot_size: u32,
    stat_slot_size: u32,
    session_capacity: u32,
    route_capacity: u32,
    worker_capacity: u32,
    stream_capacity: u32,
    stat_capacity: u32,
    sessions_offset: u64,
    routes_offset: u64,
    counters_offset: u64,
    streams_offset: u64,
    stats_offset: u64,
    file_size: u64,
}

impl HeaderFields {
    /// The magic first (Acquire: a reader that sees it sees every store before it), the rest
    /// Relaxed.
    fn load(h: &Header) -> HeaderFields {
        let magic = h.magic.load(Ordering::Acquire);
        let r = Ordering::Relaxed;
        HeaderFields {
            magic,
            abi_version: h.abi_version.load(r),
            header_size: h.header_size.load(r),
            session_slot_size: h.session_slot_size.load(r),
            route_slot_size: h.route_slot_size.load(r),
            counter_block_size: h.counter_block_size.load(r),
            stream_slot_size: h.stream_slot_size.load(r),
            stat_slot_size: h.stat_slot_size.load(r),
            session_capacity: h.session_capacity.load(r),
            route_capacity: h.route_capacity.load(r),
            worker_capacity: h.worker_capacity.load(r),
            stream_capacity: h.stream_capacity.load(r),
            stat_capacity: h.stat_capacity.load(r),
            sessions_offset: h.sessions_offset.load(r),
            routes_offset: h.routes_offset.load(r),
            counters_offset: h.counters_offset.load(r),
            streams_offset: h.streams_offset.load(r),
            stats_offset: h.stats_offset.load(r),
            file_size: h.file_size.load(r),
        }
    }

    /// Decode the fields from the first [`HEADER_SIZE`] bytes of a file image, at the offsets
    /// `Header` has, in native byte order (as the atomics of a mapping on this host hold them).
    /// `None` if `b` is shorter than the header.
    fn decode(b: &[u8]) -> Option<HeaderFields> {
        use core::mem::offset_of;
        let b = b.get(..HEADER_SIZE)?;
        let u32_at = |off: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[off..off + 4]);
            u32::from_ne_bytes(w)
        };
        let u64_at = |off: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[off..off + 8]);
            u64::from_ne_bytes(w)
        };
        Some(HeaderFields {
            magic: u64_at(offset_of!(Header, magic)),
            abi_version: u32_at(offset_of!(Header, abi_version)),
            header_size: u32_at(offset_of!(Header, header_size)),
            session_slot_size: u32_at(offset_of!(Header, session_slot_size)),
            route_slot_size: u32_at(offset_of!(Header, route_slot_size)),
            counter_block_size: u32_at(offset_of!(Header, counter_block_size)),
            stream_slot_size: u32_at(offset_of!(Header, stream_slot_size)),
            stat_slot_size: u32_at(offset_of!(Header, stat_slot_size)),
            session_capacity: u32_at(offset_of!(Header, session_capacity)),
            route_capacity: u32_at(offset_of!(Header, route_capacity)),
            worker_capacity: u32_at(offset_of!(Header, worker_capacity)),
            stream_capacity: u32_at(offset_of!(Header, stream_capacity)),
            stat_capacity: u32_at(offset_of!(Header, stat_capacity)),
            sessions_offset: u64_at(offset_of!(Header, sessions_offset)),
            routes_offset: u64_at(offset_of!(Header, routes_offset)),
            counters_offset: u64_at(offset_of!(Header, counters_offset)),
            streams_offset: u64_at(offset_of!(Header, streams_offset)),
            stats_offset: u64_at(offset_of!(Header, stats_offset)),
            file_size: u64_at(offset_of!(Header, file_size)),
        })
    }
}

/// The length checks [`Mapping::open`] makes before it maps the file.
fn check_len(len: u64, path: &Path) -> Result<(), ShmError> {
    if len == 0 {
        return Err(ShmError::NotInitialized {
            path: path.to_path_buf(),
        });
    }
    if len < HEADER_SIZE as u64 {
        return Err(ShmError::Truncated {
            path: path.to_path_buf(),
            len,
            expected: HEADER_SIZE as u64,
        });
    }
    Ok(())
}

/// Check a header against this build and the file length `len`; returns the file's layout.
/// Pure: [`Mapping::open`] and [`check_image`] both end here.
fn validate_fields(h: &HeaderFields, len: u64, path: &Path) -> Result<Layout, ShmError> {
    let magic = h.magic;
    if magic == 0 {
        return Err(ShmError::NotInitialized {
            path: path.to_path_buf(),
        });
    }
    if magic != MAGIC {
        return Err(ShmError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
        });
    }
    let version = h.abi_version;
    if version != ABI_VERSION {
        return Err(ShmError::Version {
            file: version,
            ours: ABI_VERSION,
        });
    }
    let sizes = [
        ("header size", h.header_size, HEADER_SIZE),
        ("session slot size", h.session_slot_size, SESSION_SLOT_SIZE),
        ("route slot size", h.route_slot_size, ROUTE_SLOT_SIZE),
        (
            "counter block size",
            h.counter_block_size,
            COUNTER_BLOCK_SIZE,
        ),
        ("stream slot size", h.stream_slot_size, STREAM_SLOT_SIZE),
        ("session-stats slot size", h.stat_slot_size, STAT_SLOT_SIZE),
    ];
    for (field, file, ours) in sizes {
        if file as usize != ours {
            return Err(ShmError::Layout {
                field,
                file: u64::from(file),
                ours: ours as u64,
            });
        }
    }
    let layout = Layout::with_regions(
        Capacity {
            sessions: h.session_capacity,
            routes: h.route_capacity,
            workers: h.worker_capacity,
        },
        h.stream_capacity,
        h.stat_capacity,
    )?;
    let offsets = [
        ("sessions offset", h.sessions_offset, layout.sessions_offset),
        ("routes offset", h.routes_offset, layout.routes_offset),
        ("counters offset", h.counters_offset, layout.counters_offset),
        ("streams offset", h.streams_offset, layout.streams_offset),
        ("session-stats offset", h.stats_offset, layout.stats_offset),
        ("file size", h.file_size, layout.file_size),
    ];
    for (field, file, ours) in offsets {
        if file != ours {
            return Err(ShmError::Layout { field, file, ours });
        }
    }
    if len < layout.file_size {
        return Err(ShmError::Truncated {
            path: path.to_path_buf(),
            len,
            expected: layout.file_size,
        });
    }
    Ok(layout)
}

/// Run the checks [`Mapping::open`] makes (length, magic, ABI version, slot sizes, capacities,
/// offsets, file size) on a byte image of a whole file, without a file or a mapping. `path`
/// only names the image in errors.
pub(crate) fn check_image(bytes: &[u8], path: &Path) -> Result<Layout, ShmError> {
    let len = bytes.len() as u64;
    check_len(len, path)?;
    let fields = HeaderFields::decode(bytes).ok_or(ShmError::Truncated {
        path: path.to_path_buf(),
        len,
        expected: HEADER_SIZE as u64,
    })?;
    validate_fields(&fields, len, path)
}

fn map(path: &Path, file: &File, len: u64) -> Result<MmapRaw, ShmError> {
    let len = usize::try_from(len).map_err(|_| ShmError::Truncated {
        path: path.to_path_buf(),
        len,
        expected: usize::MAX as u64,
    })?;
    MmapOptions::new()
        .len(len)
        .map_raw(file)
        .map_err(|e| ShmError::io(path, e))
}

fn lock_exclusive(path: &Path, file: &File) -> Result<(), ShmError> {
    // SAFETY: flock only reads the descriptor number, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.kind() == std::io::ErrorKind::WouldBlock {
        Err(ShmError::WriterActive {
            path: path.to_path_buf(),
        })
    } else {
        Err(ShmError::io(path, err))
    }
}

/// Sleep while `*word == expected`, at most `timeout` (a shared, not private, futex: the word
/// lives in a file mapping other processes share). Spurious wake-ups are fine for the caller.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, 4-byte-aligned AtomicU32 inside the mapping (borrowed for the
    // call); FUTEX_WAIT only reads it. `ts` outlives the call; the remaining arguments are
    // ignored by FUTEX_WAIT. Errors (EAGAIN: value changed, ETIMEDOUT, EINTR) all mean "go and
    // look again", which the caller does.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            core::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wake every thread sleeping in [`futex_wait`] on `word`, in any process.
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned AtomicU32 inside the mapping; FUTEX_WAKE does not
    // access memory beyond the futex word's address and ignores the trailing arguments.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            core::ptr::null::<libc::timespec>(),
            core::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::discriminant;

    /// `check_image` on a file's bytes and `Mapping::open` on the file agree: same verdict,
    /// same error variant, same layout.
    #[test]
    fn check_image_agrees_with_open() {
        let path = std::env::temp_dir().join(format!("sluice-shm-image-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let cap = Capacity {
            sessions: 4,
            routes: 8,
            workers: 2,
        };
        drop(Mapping::create(&path, cap, 3, 5).unwrap());
        let pristine = std::fs::read(&path).unwrap();
        let mut cases: Vec<Vec<u8>> = vec![pristine.clone(), Vec::new(), pristine[..100].to_vec()];
        cases.push(pristine[..pristine.len() - 4096].to_vec());
        cases.push(vec![0; pristine.len()]);
        // Magic, version, a slot size, a capacity, an offset, the file size, a non-header byte.
        for off in [0usize, 8, 16, 28, 36, 48, 64, 80, 88, 200, 5000] {
            let mut b = pristine.clone();
            b[off] ^= 0x5a;
            cases.push(b);
        }
        for bytes in &cases {
            std::fs::write(&path, bytes).unwrap();
            let image = check_image(bytes, Path::new("<image>"));
            match (Mapping::open(&path), image) {
                (Ok(m), Ok(l)) => assert_eq!(m.layout, l),
                (Err(a), Err(b)) => assert_eq!(discriminant(&a), discriminant(&b), "{a} / {b}"),
                (a, b) => panic!("open {a:?}, image {b:?}"),
            }
        }
        assert_eq!(
            check_image(&pristine, Path::new("x")).unwrap().capacity,
            cap
        );
        let _ = std::fs::remove_file(&path);
    }
}
