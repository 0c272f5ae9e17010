//! The reader: maps a counter file read-only and reads it as untrusted bytes.
//!
//! **Invariants.** [`CounterFile::open`] checks every offset, size, count, string and
//! counter slot before anything is read through them, with checked arithmetic; a file that
//! fails is refused with a [`FileError`] naming the file and the problem. Values are read
//! with 8-byte atomic loads from a read-only shared mapping (on x86-64 a plain `mov`,
//! which never writes). The instance table is read under the seqlock and retried a
//! bounded number of times. The mapping is guarded ([`crate::guard`]): a publisher that
//! shrinks its file cannot kill the reader with SIGBUS; the reader reads zeros, notices,
//! and refuses the file from then on. Files are opened without blocking and without
//! following a symlink, and refused unless they are regular files ([`open_untrusted`]).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use crate::format::{self, CounterType, HEADER_SIZE, Unit, header};
use crate::guard::GuardedMap;

/// How often the instance table is read again while its publisher changes it (after the
/// first hundred, yielding between tries). A publisher that changes its table without
/// pause can starve readers; they then report it instead of spinning for ever.
const SEQLOCK_TRIES: usize = 10_000;

/// How long an odd, unchanging generation is waited for before the file is refused: a
/// publisher stopped in the middle of an update costs a reader this, not the whole bound.
const STUCK_WRITER: std::time::Duration = std::time::Duration::from_millis(5);

/// A counter file that could not be read: which, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// What the file is: `counter file`, `PCP MMV file`.
    pub kind: &'static str,
    pub path: PathBuf,
    pub problem: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.path.display(), self.problem)
    }
}

impl std::error::Error for FileError {}

/// One counter, as the file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterDesc {
    pub name: String,
    pub help: String,
    pub kind: CounterType,
    pub unit: Unit,
    /// Its first slot in an instance block.
    pub slot: u32,
}

/// A mapped, checked counter file.
pub struct CounterFile {
    path: PathBuf,
    file: File,
    map: GuardedMap,
    pub name: String,
    pub help: String,
    pub counters: Vec<CounterDesc>,
    /// Whether the set has named instances (else one unnamed instance).
    pub keyed: bool,
    pub creator_pid: u32,
    pub creator_start: u64,
    /// Owner and mode of the file when it was opened (see [`CounterFile::access`]).
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    instances_offset: usize,
    capacity: u32,
    values_offset: usize,
    stride: usize,
    size: u64,
}

/// The values of one instance, in slot order (see [`CounterDesc::slot`]).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceValues {
    /// Empty for a set without instances.
    pub name: String,
    pub values: Vec<u64>,
}

/// Every live instance of a file at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub instances: Vec<InstanceValues>,
}

impl CounterFile {
    /// Maps and checks the file at `path`.
    pub fn open(path: &Path) -> Result<CounterFile, FileError> {
        let fail = |problem: String| FileError {
            kind: "counter file",
            path: path.to_path_buf(),
            problem,
        };
        let (file, meta) = open_untrusted(path).map_err(fail)?;
        let len = meta.len();
        if len < HEADER_SIZE as u64 {
            return Err(fail(format!(
                "truncated: {len} bytes, shorter than the {HEADER_SIZE}-byte header"
            )));
        }
        if len > format::MAX_FILE {
            return Err(fail(format!(
                "oversized: {len} bytes, more than the limit of {}",
                format::MAX_FILE
            )));
        }
        // The publisher may change the bytes at any time; they are only read with atomic
        // loads or copied out and checked; a shrink is caught (see the module's invariants).
        let map = GuardedMap::new(&file).map_err(fail)?;
        let b = map.bytes();
        if b[..8] != format::MAGIC {
            // The file's bytes are not quoted: it may be anything (a secret, through a link).
            return Err(fail(
                "not a counter file (its first 8 bytes are not the counter-file magic number)"
                    .into(),
            ));
        }
        let r32 = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let r64 = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let version = r32(header::VERSION);
        if version != format::VERSION {
            return Err(fail(format!(
                "format version {version}; this reader reads version {}",
                format::VERSION
            )));
        }
        if r32(header::HEADER_SIZE) as usize != HEADER_SIZE {
            return Err(fail(format!(
                "header size {} (expected {HEADER_SIZE})",
                r32(header::HEADER_SIZE)
            )));
        }
        let size = r64(header::FILE_SIZE);
        if size != len {
            return Err(fail(format!(
                "the header says {size} bytes but the file has {len}"
            )));
        }
        let region = |what: &str, offset: u32, bytes: u64| -> Result<usize, FileError> {
            let end = u64::from(offset) + bytes;
            if (offset as usize) < HEADER_SIZE || end > len {
                return Err(fail(format!(
                    "{what} ({bytes} bytes at offset {offset}) lies outside the file's {len} bytes after the header"
                )));
            }
            Ok(offset as usize)
        };
        let strings_size = r32(header::STRINGS_SIZE);
        let strings = region(
            "the string area",
            r32(header::STRINGS_OFFSET),
            u64::from(strings_size),
        )?;
        let strings = &b[strings..strings + strings_size as usize];
        let string = |what: &str, at: usize, max: usize| -> Result<String, FileError> {
            let (off, n) = (r32(at) as usize, r32(at + 4) as usize);
            if n > max {
                return Err(fail(format!("{what} is {n} bytes, longer than {max}")));
            }
            let bytes = strings
                .get(off..off.saturating_add(n))
                .ok_or_else(|| fail(format!("{what} lies outside the string area")))?;
            String::from_utf8(bytes.to_vec())
                .map_err(|_| fail(format!("{what} is not valid UTF-8")))
        };
        let name = string("the set's name", header::NAME_OFFSET, format::MAX_NAME)?;
        if !crate::valid_name(&name) {
            return Err(fail(format!(
                "invalid set name {name:?} (expected [a-z][a-z0-9_]*)"
            )));
        }
        let help = string("the set's help", header::HELP_OFFSET, format::MAX_HELP)?;
        let count = r32(header::COUNTER_COUNT);
        if count == 0 || count > format::MAX_COUNTERS {
            return Err(fail(format!(
                "{count} counters (allowed: 1 to {})",
                format::MAX_COUNTERS
            )));
        }
        let counters_at = region(
            "the counter table",
            r32(header::COUNTERS_OFFSET),
            u64::from(count) * format::COUNTER_SIZE as u64,
        )?;
        let stride = r32(header::SLOTS_PER_INSTANCE);
        if stride == 0 || stride % 8 != 0 || stride > 2 * format::MAX_COUNTERS {
            return Err(fail(format!(
                "{stride} slots per instance (expected a multiple of 8, at most {})",
                2 * format::MAX_COUNTERS
            )));
        }
        let mut counters = Vec::with_capacity(count as usize);
        let mut seen = std::collections::HashSet::new();
        for i in 0..count as usize {
            let at = counters_at + i * format::COUNTER_SIZE;
            let what = format!("counter {i}");
            let cname = string(
                &format!("the name of {what}"),
                at + format::counter::NAME_OFFSET,
                format::MAX_NAME,
            )?;
            if !crate::valid_name(&cname) || cname == "instance" {
                return Err(fail(format!(
                    "{what} has an invalid name {cname:?} (expected [a-z][a-z0-9_]*, not \"instance\")"
                )));
            }
            if !seen.insert(cname.clone()) {
                return Err(fail(format!("counter {cname} appears twice")));
            }
            let chelp = string(
                &format!("the help of counter {cname}"),
                at + format::counter::HELP_OFFSET,
                format::MAX_HELP,
            )?;
            let kind = CounterType::from_u8(b[at + format::counter::KIND]).ok_or_else(|| {
                fail(format!(
                    "counter {cname} has unknown type {}",
                    b[at + format::counter::KIND]
                ))
            })?;
            let unit = Unit::from_u8(b[at + format::counter::UNIT]).ok_or_else(|| {
                fail(format!(
                    "counter {cname} has unknown unit {}",
                    b[at + format::counter::UNIT]
                ))
            })?;
            let slot = r32(at + format::counter::SLOT);
            if u64::from(slot) + u64::from(kind.slots()) > u64::from(stride) {
                return Err(fail(format!(
                    "counter {cname} uses slot {slot}, past the {stride} slots of an instance"
                )));
            }
            counters.push(CounterDesc {
                name: cname,
                help: chelp,
                kind,
                unit,
                slot,
            });
        }
        let keyed = r32(header::FLAGS) & format::FLAG_INSTANCES != 0;
        let capacity = r32(header::INSTANCE_CAPACITY);
        if capacity == 0 || capacity > format::MAX_INSTANCES || (!keyed && capacity != 1) {
            return Err(fail(format!(
                "instance capacity {capacity} (allowed: 1 to {}, and 1 for a set without instances)",
                format::MAX_INSTANCES
            )));
        }
        let instances_offset = region(
            "the instance table",
            r32(header::INSTANCES_OFFSET),
            u64::from(capacity) * format::INSTANCE_SIZE as u64,
        )?;
        if instances_offset % 8 != 0 {
            return Err(fail(format!(
                "the instance table at offset {instances_offset} is not 8-byte aligned"
            )));
        }
        let values_offset = region(
            "the value area",
            r32(header::VALUES_OFFSET),
            u64::from(capacity) * u64::from(stride) * 8,
        )?;
        if values_offset % format::VALUES_ALIGN != 0 {
            return Err(fail(format!(
                "the value area at offset {values_offset} is not {}-byte aligned",
                format::VALUES_ALIGN
            )));
        }
        let creator_pid = r32(header::CREATOR_PID);
        let creator_start = r64(header::CREATOR_START);
        Ok(CounterFile {
            path: path.to_path_buf(),
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
            file,
            map,
            name,
            help,
            counters,
            keyed,
            creator_pid,
            creator_start,
            instances_offset,
            capacity,
            values_offset,
            stride: stride as usize,
            size: len,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the process that created the file has exited (its pid is gone, or now
    /// belongs to a process that started at another time).
    pub fn creator_gone(&self) -> bool {
        match crate::process_start(self.creator_pid) {
            None => true,
            Some(start) => self.creator_start != 0 && start != self.creator_start,
        }
    }

    /// The file's owner, group and permission bits now (they may change while mapped).
    pub fn access(&self) -> (u32, u32, u32) {
        self.file
            .metadata()
            .map(|m| (m.uid(), m.gid(), m.mode() & 0o7777))
            .unwrap_or((self.uid, self.gid, self.mode))
    }

    /// The file's identity (device, inode), to tell a replaced file from this one.
    pub fn identity(&self) -> (u64, u64) {
        self.file
            .metadata()
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or((0, 0))
    }

    fn fail(&self, problem: String) -> FileError {
        FileError {
            kind: "counter file",
            path: self.path.clone(),
            problem,
        }
    }

    fn u64_at(&self, at: usize) -> &AtomicU64 {
        // SAFETY: callers pass 8-aligned offsets checked to lie inside the mapping (the
        // mapping is page-aligned); the mapping lives as long as `self`.
        unsafe { &*self.map.as_ptr().add(at).cast::<AtomicU64>() }
    }

    fn u32_at(&self, at: usize) -> &AtomicU32 {
        // SAFETY: as `u64_at`, 4-aligned.
        unsafe { &*self.map.as_ptr().add(at).cast::<AtomicU32>() }
    }

    /// The refusal of a file a read found shrunk.
    fn shrank(&self) -> FileError {
        self.fail(
            "it shrank while mapped (a read went past its end); the file is no longer read".into(),
        )
    }

    /// Checks that the file still has the size it had when opened, and that no read
    /// touched a page past its end since.
    fn still_whole(&self) -> Result<(), FileError> {
        if self.map.faulted() {
            return Err(self.shrank());
        }
        match self.file.metadata() {
            Ok(m) if m.len() == self.size => Ok(()),
            Ok(m) => Err(self.fail(format!(
                "its size changed from {} to {} bytes while mapped; the file is no longer read",
                self.size,
                m.len()
            ))),
            Err(e) => Err(self.fail(format!("cannot stat: {e}"))),
        }
    }

    /// The live instances' record indexes and names, read consistently (seqlock).
    pub fn instances(&self) -> Result<Vec<(u32, String)>, FileError> {
        Ok(self
            .read_table(false)?
            .into_iter()
            .map(|(i, name, _)| (i, name))
            .collect())
    }

    /// The instance table, and each live instance's values when `values`, all read inside
    /// one seqlock section, so that no value belongs to an instance that was removed (and
    /// its slot reused) meanwhile.
    fn read_table(&self, values: bool) -> Result<Vec<(u32, String, Vec<u64>)>, FileError> {
        self.still_whole()?;
        let generation = self.u64_at(header::GENERATION);
        // A generation that stays odd and unchanged: a publisher stopped mid-update (or a
        // file made that way). A busy publisher changes the number; this one never will.
        let mut odd_since: Option<(u64, std::time::Instant)> = None;
        for attempt in 0..SEQLOCK_TRIES {
            if attempt >= 100 {
                // The writer is busy: give it time to finish a burst of changes. A yield
                // is not enough: it returns at once when the writer runs on the other core,
                // and a reader sharing a core with it is preempted mid-read by a writer
                // waking from a short sleep. Sleeping 1..50 µs bounds all tries to ~0.6 s.
                let backoff = (attempt - 99).min(50) as u64;
                std::thread::sleep(std::time::Duration::from_micros(backoff));
            }
            let before = generation.load(Ordering::Acquire);
            if before % 2 == 1 {
                match odd_since {
                    Some((seen, since)) if seen == before => {
                        if since.elapsed() >= STUCK_WRITER {
                            return Err(self.fail(format!(
                                "its publisher has been in the middle of an update (generation {before}) for more than {} ms; not read",
                                STUCK_WRITER.as_millis()
                            )));
                        }
                    }
                    _ => odd_since = Some((before, std::time::Instant::now())),
                }
                std::hint::spin_loop();
                continue;
            }
            let mut live = Vec::new();
            let mut bad = None;
            for i in 0..self.capacity {
                let rec = self.instances_offset + i as usize * format::INSTANCE_SIZE;
                let state = self
                    .u32_at(rec + format::instance::STATE)
                    .load(Ordering::Relaxed);
                if state != format::INSTANCE_LIVE {
                    continue;
                }
                let n = self
                    .u32_at(rec + format::instance::NAME_LEN)
                    .load(Ordering::Relaxed) as usize;
                if n > format::INSTANCE_NAME_MAX {
                    bad = Some(format!("instance record {i} has a name of {n} bytes"));
                    break;
                }
                let mut name = vec![0u8; n];
                for (k, byte) in name.iter_mut().enumerate() {
                    // SAFETY: inside the record, which is inside the mapping.
                    *byte = unsafe {
                        std::ptr::read_volatile(
                            self.map.as_ptr().add(rec + format::instance::NAME + k),
                        )
                    };
                }
                let mut vals = Vec::new();
                if values {
                    vals.reserve_exact(self.stride);
                    self.read_values(i, &mut vals);
                }
                live.push((i, name, vals));
            }
            fence(Ordering::Acquire);
            if generation.load(Ordering::Relaxed) != before {
                continue;
            }
            if let Some(problem) = bad {
                return Err(self.fail(problem));
            }
            let mut out = Vec::with_capacity(live.len());
            for (i, name, vals) in live {
                let name = String::from_utf8(name).map_err(|_| {
                    self.fail(format!("instance record {i} has a name that is not UTF-8"))
                })?;
                if self.keyed && (name.is_empty() || name.chars().any(char::is_control)) {
                    return Err(self.fail(format!(
                        "instance record {i} has an empty name or control characters"
                    )));
                }
                out.push((i, name, vals));
            }
            if !self.keyed && out.len() != 1 {
                return Err(self.fail(format!(
                    "a set without instances has {} live records (expected 1)",
                    out.len()
                )));
            }
            return Ok(out);
        }
        Err(self.fail(format!(
            "its instance table kept changing over {SEQLOCK_TRIES} reads"
        )))
    }

    /// Slots per instance block.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Copies the values of instance record `index` into `out` (one u64 per slot).
    pub fn read_values(&self, index: u32, out: &mut Vec<u64>) {
        assert!(index < self.capacity);
        let start = self.values_offset + index as usize * self.stride * 8;
        out.extend((0..self.stride).map(|s| self.u64_at(start + s * 8).load(Ordering::Relaxed)));
    }

    /// Every live instance with its values.
    pub fn snapshot(&self) -> Result<Snapshot, FileError> {
        let table = self.read_table(true)?;
        // What was read while the file shrank may be zeros: not served. (The size was
        // checked before the read; this is one atomic load, no system call.)
        if self.map.faulted() {
            return Err(self.shrank());
        }
        let instances = table
            .into_iter()
            .map(|(_, name, values)| InstanceValues { name, values })
            .collect();
        Ok(Snapshot { instances })
    }
}

/// Opens a file that someone else controls, for reading: without blocking (a FIFO would
/// block the open until a writer came), without following a symlink at its last
/// component, and only if it is a regular file. `Err` says what is wrong.
pub fn open_untrusted(path: &Path) -> Result<(File, std::fs::Metadata), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => "a symbolic link (only regular files are read)".to_string(),
            _ => format!("cannot open: {e}"),
        })?;
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "not a regular file (a {})",
            file_kind(&meta.file_type())
        ));
    }
    Ok((file, meta))
}

/// `FIFO`, `directory`, `character device`… for an error message.
fn file_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "FIFO"
    } else if kind.is_dir() {
        "directory"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}
